//! Networks for contrastive analysis (CA) on tch / libtorch.
//!
//! * [`code`] — [`CaCode`], the `(z, s)` code every model speaks;
//! * [`gan`] — CA-GAN: `dcgan` and `style` generators, the four-headed discriminator, encoders;
//! * [`diffusion`] — CA-diffusion: conditional UNet, semantic encoder, noise schedules, DDIM;
//! * [`blocks`] — layers shared by both families.
//!
//! Models know nothing of datasets: they are built from their config and the image geometry.
//! Siblings: `ca-data` (datasets), `ca-losses` (loss terms), `ca-train` (training, evaluation),
//! `ca-cli` (the `ca` binary).
#![warn(missing_docs)]

pub mod blocks;
pub mod code;
pub mod diffusion;
pub mod gan;

pub use code::CaCode;

/// The image geometry a network is built for: channels and side length (square images).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ImageGeometry {
    /// Number of channels (1 = grey, 3 = RGB).
    pub channels: i64,
    /// Side length in pixels.
    pub size: i64,
}
