//! The diffusion family's `[loss]` and `[optim]` tables.

use serde::{Deserialize, Serialize};

use crate::ca_terms::CodeTerms;
use crate::config::{ConfigError, LrSchedule, Schedule, check_weights};

/// The diffusion model's loss weights (`[loss]`): the code-level terms every family has, then
/// the denoising loss. A weight of 0 skips the term (it is not computed).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct DiffusionLossConfig {
    /// The keys every family has (salient-zero, class, invariance, `salient_nce`, ...).
    #[serde(flatten)]
    pub ca: CodeTerms,
    /// Weight of the denoising loss (eps or v, per `model.prediction`). Default 1.
    pub denoise: f64,
}

impl Default for DiffusionLossConfig {
    fn default() -> Self {
        DiffusionLossConfig {
            ca: CodeTerms::default(),
            denoise: 1.0,
        }
    }
}

impl DiffusionLossConfig {
    /// Range checks.
    pub fn validate(&self) -> Result<(), ConfigError> {
        check_weights(&self.ca, &[("loss.denoise", self.denoise)])
    }
}

/// The diffusion model's optimiser (`[optim]`): one Adam over UNet + encoder + training heads,
/// and one of the same settings for the latent prior.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DiffusionOptimConfig {
    /// Learning rate of UNet + encoder + training heads and of the latent prior. Default 2e-4.
    pub lr: f64,
    /// Adam beta1. Default 0.5.
    pub beta1: f64,
    /// Adam beta2. Default 0.999.
    pub beta2: f64,
    /// Learning-rate schedule. Default constant.
    pub schedule: Schedule,
    /// Linear warm-up steps. Default 0.
    pub warmup_steps: u64,
    /// Clip the global gradient norm of UNet + encoder + heads (0 = off; DiffAE: 1). Default 0.
    pub grad_clip: f64,
    /// Clip groups of parameters each to `grad_clip` instead of all together — the
    /// UNet; the encoder's salient stack and `s` head; the rest of the encoder (trunk and `z`
    /// head); the training heads. One global clip lets the largest group set every group's
    /// step: on the synthetic preset's seed 1 the `z` head's gradient norm is 280-550 at steps
    /// 100-300, so the `s` stack's gradient is scaled by ~1/400 and its dataset head stays at
    /// ln 2 for 400 steps (`docs/trials.md`). Default false.
    pub grad_clip_groups: bool,
}

impl Default for DiffusionOptimConfig {
    fn default() -> Self {
        DiffusionOptimConfig {
            lr: 2e-4,
            beta1: 0.5,
            beta2: 0.999,
            schedule: Schedule::Constant,
            warmup_steps: 0,
            grad_clip: 0.0,
            grad_clip_groups: false,
        }
    }
}

impl DiffusionOptimConfig {
    /// The schedule of the learning rate.
    pub fn lr_schedule(&self) -> LrSchedule {
        LrSchedule {
            schedule: self.schedule,
            warmup_steps: self.warmup_steps,
        }
    }

    /// Range checks.
    pub fn validate(&self) -> Result<(), ConfigError> {
        crate::config::check_adam(&[("optim.lr", self.lr)], self.beta1, self.beta2)?;
        if !(self.grad_clip >= 0.0 && self.grad_clip.is_finite()) {
            return Err(crate::config::bad_value(
                "optim.grad_clip",
                &self.grad_clip.to_string(),
                "must be finite and >= 0 (0 = no clipping)",
            ));
        }
        Ok(())
    }
}
