//! Networks for contrastive analysis (CA) on tch / libtorch.
//!
//! * [`code`] — [`CaCode`], the `(z, s)` code every model speaks;
//! * [`gan`] — CA-GAN: `dcgan` and `style` generators, the four-headed discriminator, encoders;
//! * [`diffusion`] — CA-diffusion: conditional UNet, semantic encoder, noise schedules, DDIM;
//! * [`blocks`] — layers shared by both families;
//! * [`inference`] — [`CaModel`], what every trained model offers, and the edits built on it
//!   (reconstruct, counterpart, swap, saliency);
//! * [`apply`] — [`ApplyConfig`], how a trained model edits real images and how many sampling
//!   steps it takes.
//!
//! Models know nothing of datasets: they are built from their config and the image geometry.
//! Siblings: `ca-data` (datasets), `ca-losses` (loss terms), `ca-eval` (metrics, evaluation),
//! `ca-train` (training, the model families),
//! `ca-cli` (the `ca` binary).
#![warn(missing_docs)]

pub mod apply;
pub mod blocks;
pub mod code;
pub mod diffusion;
pub mod gan;
pub mod inference;

pub use apply::ApplyConfig;
pub use code::CaCode;
pub use inference::CaModel;

/// The image geometry a network is built for: channels and side length (square images).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ImageGeometry {
    /// Number of channels (1 = grey, 3 = RGB).
    pub channels: i64,
    /// Side length in pixels.
    pub size: i64,
}
