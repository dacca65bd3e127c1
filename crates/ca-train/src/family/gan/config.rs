//! The GAN family's `[loss]` and `[optim]` tables.

use serde::{Deserialize, Serialize};

use crate::ca_terms::CodeTerms;
use crate::config::{ConfigError, LrSchedule, Schedule, bad_value, check_weights};

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

/// The GAN's loss weights (`[loss]`): the code-level terms every family has, then the GAN's
/// own. A weight of 0 skips the term (it is not computed).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct GanLossConfig {
    /// The keys every family has (salient-zero, class, invariance, `salient_nce`, ...).
    #[serde(flatten)]
    pub ca: CodeTerms,
    /// Weight of the adversarial term (D and G). Default 1.
    pub adversarial: f64,
    /// `nonsaturating` (default) or `hinge`.
    pub adversarial_kind: AdversarialKind,
    /// R1 penalty weight gamma (the penalty is gamma/2 * ||grad D(x)||^2 on real images).
    /// Default 0.1 (StyleGAN2 uses 0.01-10 depending on resolution; small images want small gamma).
    pub r1_gamma: f64,
    /// Lazy R1 — apply it every this many D steps, scaled by the interval (StyleGAN2: 16).
    pub r1_every: u64,
    /// Info loss on the common code of fakes: L1 between sampled and predicted `z`. Default 1.
    pub info_z: f64,
    /// Info loss on the salient code of fakes: L1 between sampled and predicted `s`. Default 1.
    pub info_s: f64,
    /// Dataset classification from the encoder's `s` of real images — a head
    /// `w . [s, s²] + b` trained with the encoder, BCE against background/target (the square
    /// terms because background `s` is pushed to 0 and target `s` to mean 0: no linear function
    /// of `s` alone tells them apart; see `family::gan::salient_class_features`) — so that
    /// target codes must differ from the background's `s = 0` in a readable way (the diffusion
    /// model's `class` term; for the GAN, `class` is the discriminator's dataset head).
    /// Default 0.
    pub salient_class: f64,
    /// Reconstruction of real images through `G(E(x))`, pixel L1. Default 1.
    pub recon_pixel: f64,
    /// Reconstruction: multi-scale discriminator-feature matching. Default 0 (on in ca-gan).
    pub recon_features: f64,
    /// Swap consistency: `G(z_bg, s_tgt)` judged target and encoding back to both codes;
    /// `G(z_tgt, 0)` judged background. Default 0 (on in ca-gan).
    pub swap: f64,
    /// Latent prior matching: batch-moment KL to `N(0, I)` of the encoder's codes of real
    /// images — `z` of every row, `s` of target rows — so reconstructions, swaps and
    /// counterfactuals decode codes from the region the generator is trained on with random
    /// codes (see `ca_losses::prior`). Default 0.
    pub prior: f64,
    /// Steps over which the salient conventions — `salient_zero` and the `prior` on target
    /// `s` — ramp linearly from 0 to their weights (the `prior` on `z` is never ramped).
    /// Default 0 (full weight from the first step). Measured with the CA-GAN (300-step screens,
    /// `salient_class` = 1, separate encoder): with both conventions at full weight from step 0
    /// the encoder never learns background-vs-target from `s` (BCE 0.69 -> 0.69: the prior fills
    /// `s` with whatever image variance is at hand, the L1 of `salient_zero` squeezes it to 0 for
    /// every image); without them BCE 0.69 -> 0.50.
    pub salient_warmup_steps: u64,
}

impl Default for GanLossConfig {
    fn default() -> Self {
        GanLossConfig {
            ca: CodeTerms::default(),
            adversarial: 1.0,
            adversarial_kind: AdversarialKind::Nonsaturating,
            r1_gamma: 0.1,
            r1_every: 16,
            info_z: 1.0,
            info_s: 1.0,
            salient_class: 0.0,
            recon_pixel: 1.0,
            recon_features: 0.0,
            swap: 0.0,
            prior: 0.0,
            salient_warmup_steps: 0,
        }
    }
}

impl GanLossConfig {
    /// Range checks.
    pub fn validate(&self) -> Result<(), ConfigError> {
        check_weights(
            &self.ca,
            &[
                ("loss.adversarial", self.adversarial),
                ("loss.r1_gamma", self.r1_gamma),
                ("loss.info_z", self.info_z),
                ("loss.info_s", self.info_s),
                ("loss.salient_class", self.salient_class),
                ("loss.recon_pixel", self.recon_pixel),
                ("loss.recon_features", self.recon_features),
                ("loss.swap", self.swap),
                ("loss.prior", self.prior),
            ],
        )?;
        if self.r1_every == 0 {
            return Err(bad_value("loss.r1_every", "0", "must be at least 1"));
        }
        Ok(())
    }
}

/// The GAN's optimisers (`[optim]`): one Adam per network, with its own learning rate.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct GanOptimConfig {
    /// Generator learning rate. Default 2e-4 (Double InfoGAN).
    pub lr_g: f64,
    /// Discriminator learning rate (and the training heads on real codes). Default 2e-4
    /// (Double InfoGAN).
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
}

impl Default for GanOptimConfig {
    fn default() -> Self {
        GanOptimConfig {
            lr_g: 2e-4,
            lr_d: 2e-4,
            lr_e: 2e-4,
            beta1: 0.5,
            beta2: 0.999,
            schedule: Schedule::Constant,
            warmup_steps: 0,
        }
    }
}

impl GanOptimConfig {
    /// The schedule of every learning rate.
    pub fn lr_schedule(&self) -> LrSchedule {
        LrSchedule {
            schedule: self.schedule,
            warmup_steps: self.warmup_steps,
        }
    }

    /// Range checks.
    pub fn validate(&self) -> Result<(), ConfigError> {
        crate::config::check_adam(
            &[
                ("optim.lr_g", self.lr_g),
                ("optim.lr_d", self.lr_d),
                ("optim.lr_e", self.lr_e),
            ],
            self.beta1,
            self.beta2,
        )
    }
}
