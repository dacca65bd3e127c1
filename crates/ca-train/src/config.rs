//! The run configuration: one struct per TOML table, nested as ownership goes.
//!
//! ```toml
//! [data]      # ca_data::DataConfig   (kind = "synthetic" | "folder" | "npy")
//! [model]     # family = "gan" | "diffusion", then that family's network config
//! [loss]      # one weight per loss term (0 skips the term's computation)
//! [optim]     # learning rates, betas, schedule
//! [train]     # batch, length, logging, checkpoints, seed
//! [eval]      # evaluation sizes
//! ```
//! Every table denies unknown keys, so a typo is an error naming the key (with a "did you mean").
//! The resolved config is written to `<run>/config.toml` before step 0 and re-read by every
//! command that loads the run.

use std::path::Path;

use ca_data::DataConfig;
use ca_models::diffusion::DiffusionModelConfig;
use ca_models::gan::GanModelConfig;
use serde::{Deserialize, Serialize};

pub use crate::overrides::ConfigError;
use crate::overrides::{apply_overrides, with_suggestion};

/// A whole run: what `ca train --config FILE` reads.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RunConfig {
    /// The dataset (`[data]`).
    #[serde(default)]
    pub data: DataConfig,
    /// The model family and its networks (`[model]`).
    pub model: ModelConfig,
    /// Loss weights (`[loss]`).
    #[serde(default)]
    pub loss: LossConfig,
    /// Optimiser (`[optim]`).
    #[serde(default)]
    pub optim: OptimConfig,
    /// Training loop (`[train]`).
    #[serde(default)]
    pub train: TrainConfig,
    /// Evaluation (`[eval]`).
    #[serde(default)]
    pub eval: EvalConfig,
    /// How a trained model edits real images (`[apply]`): read by `ca counterfactual`, `ca swap`
    /// and `ca eval`, never by training, so it can be changed in a run's `config.toml`.
    #[serde(default)]
    pub apply: ApplyConfig,
}

/// How a trained model edits real images (`[apply]`).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ApplyConfig {
    /// How a GAN re-renders a real image `x` (codes `own`) with new codes (counterfactual,
    /// swap).
    pub gan_edit: GanEdit,
    /// How a diffusion model re-renders a real image `x` with new codes: always through the
    /// DDIM inversion `x_T` of `x` under `own`, then decoded under the new codes (`invert`),
    /// blended into `x` where that decoding differs from the decoding under `own` (`masked`), or
    /// regenerated there against the rest of `x` (`inpaint`).
    pub diffusion_edit: DiffusionEdit,
    /// Diffusion edits: before decoding under the new codes, the inverted `x_T` is mixed with
    /// fresh noise, `sqrt(1 - r) x_T + sqrt(r) eps` (fixed seed), so less of what the new codes
    /// remove survives in `x_T` (0 = none, the default; 1 = a fresh `x_T`, keeping only what the
    /// codes describe). `inpaint` mixes only the start of the regenerated region (its mask is
    /// taken before mixing). Reconstruction (`render`) never mixes.
    pub diffusion_renoise: f64,
    /// Diffusion edits: the decoding under the new codes is guided away from the image's own
    /// codes, denoiser output `(1 + w) f(new) - w f(own)` at every step, so what the change of
    /// codes changes is changed `1 + w` times as much (0 = plain decoding, the default; each
    /// step then costs two UNet evaluations). Reconstruction (`render`) is never guided.
    pub diffusion_guidance: f64,
    /// The masked edits (`gan_edit` / `diffusion_edit = "masked"`): a pixel whose rendering
    /// changes by this much (mean absolute difference over channels, 0-1 scale) between the two
    /// codes takes the new rendering fully; smaller changes blend linearly towards `x`
    /// (default 0.1). Read as `gan_mask_scale` too (run configs written before the diffusion
    /// edit had it).
    #[serde(alias = "gan_mask_scale")]
    pub mask_scale: f64,
    /// The masked edits: the mask is widened by this many pixels (a max filter), so the soft
    /// edges drawn around an edited object are covered (default 3). Read as
    /// `gan_mask_dilate` too.
    #[serde(alias = "gan_mask_dilate")]
    pub mask_dilate: i64,
}

impl Default for ApplyConfig {
    fn default() -> Self {
        ApplyConfig {
            gan_edit: GanEdit::default(),
            diffusion_edit: DiffusionEdit::default(),
            diffusion_renoise: 0.0,
            diffusion_guidance: 0.0,
            mask_scale: 0.1,
            mask_dilate: 3,
        }
    }
}

impl ApplyConfig {
    /// The settings that act on a model of `family` (`gan` / `diffusion`), as TOML key-value
    /// pairs on one line (`diffusion_edit = "masked", diffusion_guidance = 1, ...`): what
    /// `ca eval` records beside its numbers and the inference verbs write in their captions.
    pub fn describe(&self, family: &str) -> String {
        let mask = format!(
            "mask_scale = {}, mask_dilate = {}",
            self.mask_scale, self.mask_dilate
        );
        match family {
            "gan" => {
                let edit = match self.gan_edit {
                    GanEdit::Decode => "decode",
                    GanEdit::Residual => "residual",
                    GanEdit::Masked => "masked",
                };
                if self.gan_edit == GanEdit::Masked {
                    format!("gan_edit = \"{edit}\", {mask}")
                } else {
                    format!("gan_edit = \"{edit}\"")
                }
            }
            "diffusion" => {
                let edit = match self.diffusion_edit {
                    DiffusionEdit::Invert => "invert",
                    DiffusionEdit::Masked => "masked",
                    DiffusionEdit::Inpaint => "inpaint",
                };
                let base = format!(
                    "diffusion_edit = \"{edit}\", diffusion_guidance = {}, diffusion_renoise = {}",
                    self.diffusion_guidance, self.diffusion_renoise
                );
                if self.diffusion_edit == DiffusionEdit::Invert {
                    base
                } else {
                    format!("{base}, {mask}")
                }
            }
            _ => format!("{self:?}"),
        }
    }
}

/// `--set` overrides for a trained run: each must be an `apply.KEY=VALUE` (the `[apply]` table
/// is the only part of a run's config that can change without retraining).
pub fn check_apply_sets(sets: &[String]) -> Result<(), ConfigError> {
    for set in sets {
        let key = set.split_once('=').map_or(set.as_str(), |(k, _)| k).trim();
        if !key.starts_with("apply.") || key.len() == "apply.".len() {
            return Err(ConfigError::Invalid {
                origin: "--set".into(),
                msg: format!(
                    "`{set}`: only the edit settings (`apply.KEY=VALUE`, e.g. apply.diffusion_guidance=0.5) can be changed on a trained run; its model, data and training settings are fixed by its checkpoint"
                ),
            });
        }
    }
    Ok(())
}

/// How a GAN edits a real image (`apply.gan_edit`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum GanEdit {
    /// `G(new)`: the edit is the generator's rendering, details G cannot reconstruct are lost.
    #[default]
    Decode,
    /// `x + G(new) - G(own)`: only what the change of codes changes in G's output is applied
    /// to `x`, so what G renders badly (fine detail, blur) is kept from `x`, as DDIM inversion
    /// keeps it for a diffusion model.
    Residual,
    /// `x + m * (G(new) - x)`, `m` a soft mask of where G's output changes between the two
    /// codes (`mask_scale`, `mask_dilate`): the new rendering where the codes change the
    /// image, `x` itself elsewhere.
    Masked,
}

/// How a diffusion model edits a real image (`apply.diffusion_edit`). Both start from the DDIM
/// inversion `x_T` of `x` under its own codes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum DiffusionEdit {
    /// `D(x_T, new)`: the deterministic DDIM decoding of `x_T` under the new codes (DiffAE's
    /// edit).
    #[default]
    Invert,
    /// `x + m * (D(x_T, new) - x)`, `m` a soft mask of where `D(x_T, new)` differs from
    /// `D(x_T, own)` (`mask_scale`, `mask_dilate`): what the inverted `x_T` still carries of the
    /// removed content is not spread over the rest of the image, which stays `x` itself. One
    /// more decoding than `invert`.
    Masked,
    /// The masked edit's region regenerated: DDIM decoding under the new codes where, at every
    /// level, the latent outside the mask is held to the inversion path of `x` (inpainting), so
    /// the region is drawn to fit its surroundings, and what `x_T` carries of the removed content
    /// inside it can be replaced by fresh noise (`diffusion_renoise`, there only). Outside the
    /// mask the result is `x`. One more decoding than `masked`.
    Inpaint,
}

/// The model family, chosen by `family = "gan" | "diffusion"` in `[model]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "family", rename_all = "kebab-case")]
pub enum ModelConfig {
    /// CA-GAN (DESIGN.md 4.1).
    Gan(GanModelConfig),
    /// CA-diffusion (DESIGN.md 4.2).
    Diffusion(DiffusionModelConfig),
}

impl ModelConfig {
    /// `gan` or `diffusion`.
    pub fn family(&self) -> &'static str {
        match self {
            ModelConfig::Gan(_) => "gan",
            ModelConfig::Diffusion(_) => "diffusion",
        }
    }

    /// Common and salient code sizes.
    pub fn dims(&self) -> (i64, i64) {
        match self {
            ModelConfig::Gan(c) => (c.dz, c.ds),
            ModelConfig::Diffusion(c) => (c.dz, c.ds),
        }
    }
}

/// The adversarial loss form.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum AdversarialKind {
    /// Non-saturating logistic loss (Goodfellow et al. 2014); Double InfoGAN and StyleGAN2.
    #[default]
    Nonsaturating,
    /// Hinge loss (Lim & Ye 2017).
    Hinge,
}

/// Loss weights. A weight of 0 skips the term (it is not computed).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LossConfig {
    /// GAN: weight of the adversarial term (D and G). Default 1.
    pub adversarial: f64,
    /// GAN: `nonsaturating` (default) or `hinge`.
    pub adversarial_kind: AdversarialKind,
    /// GAN: R1 penalty weight gamma (the penalty is gamma/2 * ||grad D(x)||^2 on real images).
    /// Default 0.1 (StyleGAN2 uses 0.01-10 depending on resolution; small images want small gamma).
    pub r1_gamma: f64,
    /// GAN: lazy R1 — apply it every this many D steps, scaled by the interval (StyleGAN2: 16).
    pub r1_every: u64,
    /// Dataset classification (background vs target): D on real images and G on its fakes.
    /// Default 1 (Double InfoGAN's class loss).
    pub class: f64,
    /// Info loss on the common code of fakes: L1 between sampled and predicted `z`. Default 1.
    pub info_z: f64,
    /// Info loss on the salient code of fakes: L1 between sampled and predicted `s`. Default 1.
    pub info_s: f64,
    /// Salient-zero: the predicted `s` of real background images is pushed to 0. Default 1.
    pub salient_zero: f64,
    /// GAN: dataset classification from the encoder's `s` of real images — a head
    /// `w . [s, s²] + b` trained with the encoder, BCE against background/target (the square
    /// terms because background `s` is pushed to 0 and target `s` to mean 0: no linear function
    /// of `s` alone tells them apart; see `ca_train::gan::salient_class_features`) — so that target
    /// codes must differ from the background's `s = 0` in a readable way (the diffusion model's
    /// `class` term; for the GAN, `class` is the discriminator's dataset head). Default 0.
    pub salient_class: f64,
    /// Reconstruction of real images through `G(E(x))`, pixel L1. Default 1.
    pub recon_pixel: f64,
    /// Reconstruction: multi-scale discriminator-feature matching. Default 0 (on in ca-gan).
    pub recon_features: f64,
    /// Swap consistency: `G(z_bg, s_tgt)` judged target and encoding back to both codes;
    /// `G(z_tgt, 0)` judged background. Default 0 (on in ca-gan).
    pub swap: f64,
    /// Common-code invariance: MMD between the `z` of background and target images (scale-free:
    /// codes divided by their detached pooled std). Default 0.
    pub mmd: f64,
    /// Latent prior matching (GAN): batch-moment KL to `N(0, I)` of the encoder's codes of real
    /// images — `z` of every row, `s` of target rows — so reconstructions, swaps and
    /// counterfactuals decode codes from the region the generator is trained on with random
    /// codes (see `ca_losses::prior`). Default 0.
    pub prior: f64,
    /// Common-code invariance: a dataset classifier on `z` that the encoder opposes (how:
    /// `z_adversary_kind`). Default 0.
    pub z_adversary: f64,
    /// What the common-code invariance terms (`mmd`, `z_adversary`) train: `encoder` (default:
    /// their gradient reaches the whole encoder) or `head` (only the linear `z` head: `z` is
    /// recomputed from the encoder's shared features with the gradient stopped there). The
    /// encoder's `z` and `s` heads read the same features, so with `encoder` the pressure to
    /// hide the dataset from `z` also erases it from the features `s` needs: measured with the
    /// CA-GAN (300 steps, `salient_class` only: its loss fell 0.69 -> 0.36; with `z_adversary`
    /// added it rose to 1.0 and was back at 0.68 at step 200). `head` needs a separate encoder
    /// (the diffusion encoder, or `[model.encoder]` for the GAN); a GAN that encodes with its
    /// discriminator's heads keeps `encoder`.
    pub invariance_scope: InvarianceScope,
    /// How the encoder opposes the `z` adversary: `reversal` (default; gradient reversal, the
    /// encoder maximises the classifier's loss, which also rewards flipped labels) or
    /// `confusion` (the encoder pushes the classifier's logit to 0; see
    /// `ca_train::gan::z_adversary_terms`).
    pub z_adversary_kind: ZAdversaryKind,
    /// GAN: steps over which the salient conventions — `salient_zero` and the `prior` on target
    /// `s` — ramp linearly from 0 to their weights (the `prior` on `z` is never ramped).
    /// Default 0 (full weight from the first step). Measured with the CA-GAN (300-step screens,
    /// `salient_class` = 1, separate encoder): with both conventions at full weight from step 0
    /// the encoder never learns background-vs-target from `s` (BCE 0.69 -> 0.69: the prior fills
    /// `s` with whatever image variance is at hand, the L1 of `salient_zero` squeezes it to 0 for
    /// every image); without them BCE 0.69 -> 0.50.
    pub salient_warmup_steps: u64,
    /// Diffusion: weight of the denoising loss. Default 1.
    pub denoise: f64,
    /// Use the background convention `s = 0` when decoding real background images. Default
    /// true; the plain-autoencoder baseline sets it false (no dataset signal at all).
    pub salient_masking: bool,
    /// Weight of a contrastive term on the salient code of target images (both model kinds; the
    /// GAN's encoder codes of real images, or its discriminator heads without an encoder) —
    /// symmetric InfoNCE ([`ca_losses::contrastive::info_nce`]) between the raw `s` of each
    /// target image and the `s` of a randomly shifted and mirrored copy of it (an extra pass of
    /// the `s` path on the target rows), other target images of the batch as negatives — so `s`
    /// keeps what tells target images apart beyond what the decoder and the dataset head ask of
    /// it (SepCLR's salient term). Codes are centred on the batch's mean target code;
    /// similarities are cosines with a norm floor of 1 ([`crate::salient_terms`]). Default 0
    /// (off; measured on the synthetic presets in `configs/TRIALS.md`).
    pub salient_nce: f64,
    /// Temperature of `salient_nce` (> 0). Default 0.2.
    pub salient_nce_temperature: f64,
    /// Largest shift, in pixels along each axis, of the `salient_nce` view (border
    /// pixels repeated; `0`: mirroring only). Default 4.
    pub salient_nce_shift: u32,
    /// Weight of a decorrelation term between the codes of target images (both model kinds; the
    /// GAN's encoder codes of real images) — the mean squared correlation between every column
    /// of the (detached) common code `z` and every column of the salient code `s` over the
    /// batch's target rows, `s` columns shorter than 1 counted by their covariance
    /// ([`ca_losses::invariance::cross_correlation_sq`]), so `s` carries nothing linearly
    /// readable from `z` (the background colour that `salient_nce` lets into `s`, say). Only `s`
    /// is moved. Default 0 (off).
    pub salient_decorrelation: f64,
}

impl Default for LossConfig {
    fn default() -> Self {
        LossConfig {
            adversarial: 1.0,
            adversarial_kind: AdversarialKind::Nonsaturating,
            r1_gamma: 0.1,
            r1_every: 16,
            class: 1.0,
            info_z: 1.0,
            info_s: 1.0,
            salient_zero: 1.0,
            salient_class: 0.0,
            recon_pixel: 1.0,
            recon_features: 0.0,
            swap: 0.0,
            mmd: 0.0,
            prior: 0.0,
            z_adversary: 0.0,
            invariance_scope: InvarianceScope::Encoder,
            z_adversary_kind: ZAdversaryKind::Reversal,
            salient_warmup_steps: 0,
            denoise: 1.0,
            salient_masking: true,
            salient_nce: 0.0,
            salient_nce_temperature: 0.2,
            salient_nce_shift: 4,
            salient_decorrelation: 0.0,
        }
    }
}

/// How the encoder opposes the `z` adversary (`loss.z_adversary_kind`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum ZAdversaryKind {
    /// Gradient reversal (Ganin & Lempitsky).
    #[default]
    Reversal,
    /// Dataset confusion against a classifier trained on detached codes.
    Confusion,
}

/// What the common-code invariance terms train (`loss.invariance_scope`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum InvarianceScope {
    /// The whole encoder.
    #[default]
    Encoder,
    /// Only the linear `z` head (the shared features are detached for these terms).
    Head,
}

/// The learning-rate schedule.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum Schedule {
    /// Constant after warm-up.
    #[default]
    Constant,
    /// Cosine decay to 10% over `train.max_steps` after warm-up.
    Cosine,
}

/// Optimiser settings (Adam for every network).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct OptimConfig {
    /// Generator (or UNet) learning rate. Default 2e-4 (Double InfoGAN).
    pub lr_g: f64,
    /// Discriminator learning rate. Default 2e-4 (Double InfoGAN).
    pub lr_d: f64,
    /// Separate encoder learning rate. Default 2e-4.
    pub lr_e: f64,
    /// Adam beta1. Default 0.5 (Double InfoGAN, DCGAN).
    pub beta1: f64,
    /// Adam beta2. Default 0.999.
    pub beta2: f64,
    /// Learning-rate schedule. Default constant.
    pub schedule: Schedule,
    /// Linear warm-up steps. Default 0.
    pub warmup_steps: u64,
    /// Clip the global gradient norm of each network (0 = off). Default 0.
    pub grad_clip: f64,
    /// Diffusion: clip groups of parameters each to `grad_clip` instead of all together — the
    /// UNet; the encoder's salient stack and `s` head; the rest of the encoder (trunk and `z`
    /// head); the training heads. One global clip lets the largest group set every group's
    /// step: on the synthetic preset's seed 1 the `z` head's gradient norm is 280-550 at steps
    /// 100-300, so the `s` stack's gradient is scaled by ~1/400 and its dataset head stays at
    /// ln 2 for 400 steps (`configs/TRIALS.md`). Default false.
    pub grad_clip_groups: bool,
}

impl Default for OptimConfig {
    fn default() -> Self {
        OptimConfig {
            lr_g: 2e-4,
            lr_d: 2e-4,
            lr_e: 2e-4,
            beta1: 0.5,
            beta2: 0.999,
            schedule: Schedule::Constant,
            warmup_steps: 0,
            grad_clip: 0.0,
            grad_clip_groups: false,
        }
    }
}

impl OptimConfig {
    /// The learning-rate multiplier at `step` (0-based) of `total` steps.
    pub fn lr_factor(&self, step: u64, total: u64) -> f64 {
        let warm = if self.warmup_steps > 0 && step < self.warmup_steps {
            (step + 1) as f64 / self.warmup_steps as f64
        } else {
            1.0
        };
        let decay = match self.schedule {
            Schedule::Constant => 1.0,
            Schedule::Cosine => {
                let span = total.saturating_sub(self.warmup_steps).max(1) as f64;
                let t = (step.saturating_sub(self.warmup_steps) as f64 / span).min(1.0);
                0.1 + 0.9 * 0.5 * (1.0 + (std::f64::consts::PI * t).cos())
            }
        };
        warm * decay
    }
}

/// The training loop.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TrainConfig {
    /// Images per step. Default 64.
    pub batch_size: usize,
    /// Steps to train (the learning-rate schedule spans them). Default 10,000.
    pub max_steps: u64,
    /// Stop cleanly (with a final checkpoint) after this many minutes (0 = no limit).
    pub max_minutes: f64,
    /// EMA half-life of the generator/encoder weights, in images seen. Default 10,000
    /// (StyleGAN2 uses 10k images for small runs).
    pub ema_half_life_images: f64,
    /// Log the loss terms every this many steps (one host sync per log). Default 50.
    pub log_every: u64,
    /// Write a sample grid every this many steps (0 = only at the end). Default 1,000.
    pub sample_every: u64,
    /// Write a checkpoint every this many steps (0 = only at the end). Default 1,000.
    pub checkpoint_every: u64,
    /// Keep this many newest checkpoints. Default 2.
    pub keep_last: usize,
    /// Run seed (network init, latent draws, data order). Default 0.
    pub seed: u64,
    /// libtorch intra-op threads (0 = libtorch's default). Default 0.
    pub threads: usize,
    /// On a NaN/Inf loss or weight, reload the last good checkpoint, multiply the learning
    /// rates by `rollback_lr_factor` and continue, instead of stopping. Default false.
    pub nan_rollback: bool,
    /// Learning-rate multiplier applied at each NaN rollback, in (0, 1). Default 0.5.
    pub rollback_lr_factor: f64,
    /// Stop (as without rollback) after this many rollbacks in a run. Default 3.
    pub max_rollbacks: u32,
    /// Arithmetic of the training forward passes: `fp32` (default) or `bf16` (autocast:
    /// convolutions and matrix products in bfloat16, reductions and losses in fp32, weights,
    /// gradients and optimiser state in fp32), on the CPU and on CUDA.
    pub precision: Precision,
}

/// The arithmetic of the training forward passes (`train.precision`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum Precision {
    /// Everything in float32.
    #[default]
    Fp32,
    /// bfloat16 autocast (no loss scaling needed: bfloat16 has fp32's exponent range).
    Bf16,
}

impl Precision {
    /// The autocast type of the training forward passes (`None`: fp32, no autocast region).
    pub fn autocast_dtype(self) -> Option<ca_models::blocks::native::AutocastDtype> {
        match self {
            Precision::Fp32 => None,
            Precision::Bf16 => Some(ca_models::blocks::native::AutocastDtype::BFloat16),
        }
    }
}

impl Default for TrainConfig {
    fn default() -> Self {
        TrainConfig {
            batch_size: 64,
            max_steps: 10_000,
            max_minutes: 0.0,
            ema_half_life_images: 10_000.0,
            log_every: 50,
            sample_every: 1_000,
            checkpoint_every: 1_000,
            keep_last: 2,
            seed: 0,
            threads: 0,
            nan_rollback: false,
            rollback_lr_factor: 0.5,
            max_rollbacks: 3,
            precision: Precision::Fp32,
        }
    }
}

/// Evaluation settings used by `ca eval`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EvalConfig {
    /// At most this many held-out images are evaluated. Default 2,000.
    pub max_images: usize,
    /// Cross-validation folds of the probes. Default 5.
    pub folds: usize,
    /// L2 strength of the logistic probes (sklearn's C = 1 / l2). Default 1.
    pub l2: f64,
    /// Batch size of encoding/decoding during evaluation. Default 100.
    pub batch_size: usize,
    /// At most this many real and this many generated images go through the FID Inception
    /// network (0 = all evaluated images). Default 500: a 299x299 Inception pass costs about
    /// on a CPU as much as everything else of a 32x32 evaluation together; measured on 2 cores:
    /// 0.11 s per image, so 500 (1,000 passes) keeps a 2,000-image evaluation near 2 minutes.
    pub fid_images: usize,
}

impl Default for EvalConfig {
    fn default() -> Self {
        EvalConfig {
            max_images: 2000,
            folds: 5,
            l2: 1.0,
            batch_size: 100,
            fid_images: 500,
        }
    }
}

impl RunConfig {
    /// Parse TOML text (with overrides applied first). `origin` names the file in errors.
    pub fn from_toml(text: &str, origin: &str, sets: &[String]) -> Result<Self, ConfigError> {
        let mut table: toml::Table =
            text.parse()
                .map_err(|e: toml::de::Error| ConfigError::Invalid {
                    origin: origin.into(),
                    msg: e.to_string(),
                })?;
        apply_overrides(&mut table, sets)?;
        let cfg: RunConfig =
            toml::Value::Table(table)
                .try_into()
                .map_err(|e: toml::de::Error| ConfigError::Invalid {
                    origin: origin.into(),
                    msg: with_suggestion(&e.to_string()),
                })?;
        cfg.validate()?;
        Ok(cfg)
    }

    /// Read a TOML file with overrides.
    pub fn load(path: &Path, sets: &[String]) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        Self::from_toml(&text, &path.display().to_string(), sets)
    }

    /// The config as TOML text (what is saved in the run directory).
    pub fn to_toml(&self) -> String {
        toml::to_string_pretty(self).expect("config serialises")
    }

    /// Range checks of the keys owned by ca-train (data and model validate themselves when
    /// opened/built).
    pub fn validate(&self) -> Result<(), ConfigError> {
        let bad = |key: &str, value: String, msg: &str| ConfigError::Value {
            key: key.into(),
            value,
            msg: msg.into(),
        };
        let t = &self.train;
        if t.batch_size < 2 {
            return Err(bad(
                "train.batch_size",
                t.batch_size.to_string(),
                "must be at least 2",
            ));
        }
        if t.max_steps == 0 {
            return Err(bad("train.max_steps", "0".into(), "must be at least 1"));
        }
        if t.max_minutes < 0.0 || !t.max_minutes.is_finite() {
            return Err(bad(
                "train.max_minutes",
                t.max_minutes.to_string(),
                "must be >= 0",
            ));
        }
        if !(t.rollback_lr_factor > 0.0 && t.rollback_lr_factor < 1.0) {
            return Err(bad(
                "train.rollback_lr_factor",
                t.rollback_lr_factor.to_string(),
                "must be in (0, 1): each NaN rollback lowers the learning rates",
            ));
        }
        if t.log_every == 0 {
            return Err(bad("train.log_every", "0".into(), "must be at least 1"));
        }
        let o = &self.optim;
        for (k, v) in [
            ("optim.lr_g", o.lr_g),
            ("optim.lr_d", o.lr_d),
            ("optim.lr_e", o.lr_e),
        ] {
            if !(v > 0.0 && v < 1.0) {
                return Err(bad(k, v.to_string(), "learning rates must be in (0, 1)"));
            }
        }
        for (k, v) in [("optim.beta1", o.beta1), ("optim.beta2", o.beta2)] {
            if !(0.0..1.0).contains(&v) {
                return Err(bad(k, v.to_string(), "Adam betas must be in [0, 1)"));
            }
        }
        let l = &self.loss;
        for (k, v) in [
            ("loss.adversarial", l.adversarial),
            ("loss.r1_gamma", l.r1_gamma),
            ("loss.class", l.class),
            ("loss.info_z", l.info_z),
            ("loss.info_s", l.info_s),
            ("loss.salient_zero", l.salient_zero),
            ("loss.salient_class", l.salient_class),
            ("loss.recon_pixel", l.recon_pixel),
            ("loss.recon_features", l.recon_features),
            ("loss.swap", l.swap),
            ("loss.mmd", l.mmd),
            ("loss.z_adversary", l.z_adversary),
            ("loss.prior", l.prior),
            ("loss.denoise", l.denoise),
            ("loss.salient_nce", l.salient_nce),
            ("loss.salient_decorrelation", l.salient_decorrelation),
        ] {
            if !(v >= 0.0 && v.is_finite()) {
                return Err(bad(
                    k,
                    v.to_string(),
                    "loss weights must be finite and >= 0",
                ));
            }
        }
        if !(l.salient_nce_temperature > 0.0 && l.salient_nce_temperature.is_finite()) {
            return Err(bad(
                "loss.salient_nce_temperature",
                l.salient_nce_temperature.to_string(),
                "must be finite and > 0 (typical: 0.1-0.5)",
            ));
        }
        if l.r1_every == 0 {
            return Err(bad("loss.r1_every", "0".into(), "must be at least 1"));
        }
        let a = &self.apply;
        if !(a.mask_scale > 0.0 && a.mask_scale <= 1.0) {
            return Err(bad(
                "apply.mask_scale",
                a.mask_scale.to_string(),
                "must be in (0, 1] (a change of the rendering on a 0-1 scale; typical 0.05-0.2)",
            ));
        }
        if !(0.0..=1.0).contains(&a.diffusion_renoise) {
            return Err(bad(
                "apply.diffusion_renoise",
                a.diffusion_renoise.to_string(),
                "must be in [0, 1] (the share of fresh noise in the inverted x_T; 0 = none)",
            ));
        }
        if !(0.0..=10.0).contains(&a.diffusion_guidance) {
            return Err(bad(
                "apply.diffusion_guidance",
                a.diffusion_guidance.to_string(),
                "must be in [0, 10] (how many times more the new codes' change is applied, less 1; 0 = none)",
            ));
        }
        if !(0..=8).contains(&a.mask_dilate) {
            return Err(bad(
                "apply.mask_dilate",
                a.mask_dilate.to_string(),
                "must be 0-8 pixels",
            ));
        }
        if self.eval.folds < 2 {
            return Err(bad(
                "eval.folds",
                self.eval.folds.to_string(),
                "must be at least 2",
            ));
        }
        let (dz, ds) = self.model.dims();
        if dz < 1 || ds < 1 {
            return Err(bad(
                "model.dz / model.ds",
                format!("{dz} / {ds}"),
                "both must be >= 1",
            ));
        }
        Ok(())
    }

    /// A short digest of the model section: checkpoints record it, and a run refuses to load a
    /// checkpoint written under another model config.
    pub fn model_digest(&self) -> String {
        let text = toml::to_string(&self.model).expect("model config serialises");
        // FNV-1a 64: stable across platforms and Rust versions.
        let mut h: u64 = 0xcbf29ce484222325;
        for b in text.bytes() {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x100000001b3);
        }
        format!("{h:016x}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINIMAL: &str = "[model]\nfamily = \"gan\"\n";

    #[test]
    fn minimal_config_uses_defaults() {
        let c = RunConfig::from_toml(MINIMAL, "t.toml", &[]).unwrap();
        assert_eq!(c.train.batch_size, 64);
        assert_eq!(c.model.family(), "gan");
        assert!(matches!(c.data, DataConfig::Synthetic(_)));
    }

    #[test]
    fn typo_is_rejected_with_suggestion() {
        let e = RunConfig::from_toml(
            &format!("{MINIMAL}[train]\nbatch_sise = 3\n"),
            "t.toml",
            &[],
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("batch_sise") && e.contains("did you mean `batch_size`"),
            "{e}"
        );
    }

    #[test]
    fn overrides_are_typed() {
        let c = RunConfig::from_toml(MINIMAL, "t.toml", &["train.batch_size=16".into()]).unwrap();
        assert_eq!(c.train.batch_size, 16);
        let e = RunConfig::from_toml(MINIMAL, "t.toml", &["train.batch_size=abc".into()])
            .unwrap_err()
            .to_string();
        assert!(e.contains("batch_size"), "{e}");
    }

    #[test]
    fn out_of_range_values_name_the_key() {
        let e = RunConfig::from_toml(MINIMAL, "t.toml", &["optim.lr_g=2".into()])
            .unwrap_err()
            .to_string();
        assert!(e.contains("optim.lr_g"), "{e}");
        let e = RunConfig::from_toml(MINIMAL, "t.toml", &["loss.swap=-1".into()])
            .unwrap_err()
            .to_string();
        assert!(e.contains("loss.swap"), "{e}");
        for set in [
            "apply.mask_scale=0",
            "apply.mask_scale=1.5",
            "apply.mask_dilate=-1",
            "apply.mask_dilate=9",
            "apply.diffusion_renoise=-0.1",
            "apply.diffusion_renoise=1.5",
            "apply.diffusion_guidance=-1",
            "apply.diffusion_guidance=11",
        ] {
            let e = RunConfig::from_toml(MINIMAL, "t.toml", &[set.into()])
                .unwrap_err()
                .to_string();
            let key = set.split('=').next().unwrap();
            assert!(e.contains(key), "{set}: {e}");
        }
        let c =
            RunConfig::from_toml(MINIMAL, "t.toml", &["apply.gan_edit=\"masked\"".into()]).unwrap();
        assert_eq!(c.apply.gan_edit, GanEdit::Masked);
        assert_eq!(c.apply.diffusion_edit, DiffusionEdit::Invert);
        assert_eq!((c.apply.mask_scale, c.apply.mask_dilate), (0.1, 3));
        // Run configs written before the diffusion edit name the mask settings `gan_mask_*`.
        let old = RunConfig::from_toml(
            MINIMAL,
            "t.toml",
            &[
                "apply.gan_mask_scale=0.2".into(),
                "apply.gan_mask_dilate=1".into(),
                "apply.diffusion_edit=\"masked\"".into(),
            ],
        )
        .unwrap();
        assert_eq!((old.apply.mask_scale, old.apply.mask_dilate), (0.2, 1));
        assert_eq!(old.apply.diffusion_edit, DiffusionEdit::Masked);
        let c = RunConfig::from_toml(
            MINIMAL,
            "t.toml",
            &["apply.diffusion_edit=\"inpaint\"".into()],
        )
        .unwrap();
        assert_eq!(c.apply.diffusion_edit, DiffusionEdit::Inpaint);
        let e = RunConfig::from_toml(
            MINIMAL,
            "t.toml",
            &["apply.diffusion_edit=\"paint\"".into()],
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("inpaint") && e.contains("diffusion_edit"), "{e}");
        let e = RunConfig::from_toml(MINIMAL, "t.toml", &["apply.gan_mask_scale=0".into()])
            .unwrap_err()
            .to_string();
        assert!(e.contains("apply.mask_scale"), "{e}");
    }

    #[test]
    fn salient_nce_and_decorrelation_keys_default_off_and_are_validated() {
        let c = RunConfig::from_toml(MINIMAL, "t.toml", &[]).unwrap();
        assert_eq!(c.loss.salient_nce, 0.0);
        assert_eq!(c.loss.salient_decorrelation, 0.0);
        for (set, key) in [
            (
                "loss.salient_nce_temperature=0",
                "loss.salient_nce_temperature",
            ),
            ("loss.salient_nce=-1", "loss.salient_nce"),
            (
                "loss.salient_decorrelation=-0.5",
                "loss.salient_decorrelation",
            ),
        ] {
            let e = RunConfig::from_toml(MINIMAL, "t.toml", &[set.into()])
                .unwrap_err()
                .to_string();
            assert!(e.contains(key), "{set}: {e}");
        }
    }

    #[test]
    fn nan_rollback_keys_default_off_and_are_validated() {
        let c = RunConfig::from_toml(MINIMAL, "t.toml", &[]).unwrap();
        assert!(!c.train.nan_rollback);
        assert_eq!(
            (c.train.rollback_lr_factor, c.train.max_rollbacks),
            (0.5, 3)
        );
        let e = RunConfig::from_toml(
            MINIMAL,
            "t.toml",
            &[
                "train.nan_rollback=true".into(),
                "train.rollback_lr_factor=1.5".into(),
            ],
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("train.rollback_lr_factor") && e.contains("(0, 1)"),
            "{e}"
        );
    }

    #[test]
    fn round_trips_through_toml() {
        let c = RunConfig::from_toml(MINIMAL, "t.toml", &[]).unwrap();
        let back = RunConfig::from_toml(&c.to_toml(), "saved", &[]).unwrap();
        assert_eq!(c, back);
        assert_eq!(c.model_digest(), back.model_digest());
    }

    #[test]
    fn cosine_schedule_endpoints() {
        let o = OptimConfig {
            schedule: Schedule::Cosine,
            warmup_steps: 10,
            ..Default::default()
        };
        assert!(
            (o.lr_factor(0, 110) - 0.1).abs() < 1e-12,
            "warm-up starts at 1/10"
        );
        assert!((o.lr_factor(10, 110) - 1.0).abs() < 1e-12);
        assert!((o.lr_factor(110, 110) - 0.1).abs() < 1e-9);
    }
}
