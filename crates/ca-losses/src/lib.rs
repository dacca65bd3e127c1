//! Loss terms for contrastive analysis, as pure functions over `tch::Tensor`.
//!
//! No parameters, no IO, no config types: each function takes tensors and returns a per-sample
//! `[B]` tensor (or a scalar where a term is not per-sample, documented in its `# Shapes`), so
//! the trainer can mask rows and weight terms.
//!
//! * [`adversarial`] — non-saturating and hinge GAN losses, R1 penalty;
//! * [`info`] — info losses on codes, salient-zero, class (dataset) BCE, swap consistency;
//! * [`reconstruction`] — pixel and multi-scale feature-matching reconstruction;
//! * [`invariance`] — common-code invariance: MMD, gradient reversal;
//! * [`prior`] — prior matching of encoder codes (batch-moment KL to `N(0, I)`);
//! * [`diffusion`] — denoising losses (epsilon / v prediction);
//! * [`contrastive`] — InfoNCE between two views of the same images.
//!
//! Siblings: `ca-models`, `ca-data`, `ca-train`, `ca-cli`.
#![warn(missing_docs)]

pub mod adversarial;
pub mod contrastive;
pub mod diffusion;
pub mod info;
pub mod invariance;
pub mod prior;
pub mod reconstruction;
