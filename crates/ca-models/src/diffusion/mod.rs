//! CA-diffusion: a diffusion autoencoder whose semantic code is split into common factors `z`
//! and salient factors `s` (docs/design.md section 4.2).
//!
//! The pieces, one file per paper term:
//!
//! * [`config`] — [`DiffusionModelConfig`], the `[model]` table of a diffusion run;
//! * [`schedule`] — [`NoiseSchedule`]: betas and `alpha_bar` (linear, and cosine of
//!   Nichol & Dhariwal 2021, arXiv 2102.09672), `q_sample`, eps / v / x0 conversions
//!   (DDPM: Ho, Jain & Abbeel 2020, arXiv 2006.11239; v-prediction: Salimans & Ho 2022,
//!   arXiv 2202.00512);
//! * [`unet`] — [`CondUnet`], the denoiser `eps(x_t, t, z, s)` with adaptive group norm
//!   conditioned on the time embedding and on the CA code, as in DiffAE
//!   (Preechakul, Chatthee, Wizadwongsa & Suwajanakorn 2022, arXiv 2111.15640);
//! * [`encoder`] — [`SemanticEncoder`], `E(x) -> (z, s)` (DiffAE's semantic encoder with two
//!   heads);
//! * [`ddim`] — DDIM sampling and deterministic inversion (Song, Meng & Ermon 2020,
//!   arXiv 2010.02502) as free functions over any [`Denoiser`]: samplers never own a network;
//! * [`latent_prior`] — [`LatentPrior`], a small MLP diffusion model over normalised `[z, s]`
//!   codes (DiffAE's latent DDPM, smaller), so new background and target codes can be drawn.
//!
//! Images are float NCHW in `[-1, 1]`; timesteps are per-sample `[B]` tensors.

pub mod config;
pub mod ddim;
pub mod encoder;
pub mod latent_prior;
pub mod schedule;
pub mod unet;

pub use config::{
    DiffusionModelConfig, EncoderConfig, LatentPriorConfig, Prediction, ScheduleConfig,
};
pub use ddim::{DdimOptions, Denoiser, Guided, GuidedCond, NoiseSource, TorchNoise};
pub use encoder::SemanticEncoder;
pub use latent_prior::{CodeGroup, LatentPrior};
pub use schedule::NoiseSchedule;
pub use unet::CondUnet;

use crate::ImageGeometry;
use tch::nn;

/// Errors of the diffusion family: invalid configuration values (naming the key) and invalid
/// sampler arguments.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum DiffusionError {
    /// A configuration value is out of its allowed range; `key` is its dotted TOML path.
    #[error("invalid value for `{key}`: {reason}")]
    InvalidConfig {
        /// Dotted key, e.g. `model.channel_mult`.
        key: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The image geometry does not fit the network (e.g. the size is not divisible by the
    /// total downsampling factor).
    #[error("image geometry {channels}x{size}x{size} does not fit the network: {reason}")]
    Geometry {
        /// Image channels.
        channels: i64,
        /// Image side length.
        size: i64,
        /// Why it does not fit.
        reason: String,
    },
    /// A sampler argument is invalid (e.g. more DDIM steps than training timesteps).
    #[error("invalid sampler argument `{arg}`: {reason}")]
    Sampler {
        /// Argument name.
        arg: &'static str,
        /// What is wrong with it.
        reason: String,
    },
}

/// Build the conditional UNet denoiser under `p` for images of geometry `geom`.
/// The configuration and geometry are validated first.
pub fn build_unet(
    p: &nn::Path,
    cfg: &DiffusionModelConfig,
    geom: ImageGeometry,
) -> Result<CondUnet, DiffusionError> {
    CondUnet::new(p, cfg, geom)
}

/// Build the semantic encoder `E(x) -> (z, s)` under `p` for images of geometry `geom`.
/// The configuration and geometry are validated first.
pub fn build_encoder(
    p: &nn::Path,
    cfg: &DiffusionModelConfig,
    geom: ImageGeometry,
) -> Result<SemanticEncoder, DiffusionError> {
    SemanticEncoder::new(p, cfg, geom)
}

/// Build the latent prior over `[z, s]` codes under `p`.
pub fn build_latent_prior(
    p: &nn::Path,
    cfg: &DiffusionModelConfig,
) -> Result<LatentPrior, DiffusionError> {
    LatentPrior::new(p, &cfg.latent_prior, cfg.dz, cfg.ds)
}
