//! Layers shared by the GAN and diffusion families.
//!
//! * [`equalized`] — linear and convolution layers with the equalised learning rate of
//!   Karras et al. (ProGAN, ICLR 2018, arXiv:1710.10196), and the fused leaky ReLU of StyleGAN2;
//! * [`modulated`] — the modulated / demodulated convolution of StyleGAN2 (Karras et al.,
//!   "Analyzing and Improving the Image Quality of StyleGAN", CVPR 2020, arXiv:1912.04958);
//! * [`native`] — ATen activations that tch does not bind with their arguments (C++ shim).

pub mod equalized;
pub mod modulated;
pub mod native;

pub use equalized::{EqualConv2d, EqualLinear, LayerInit, fused_leaky_relu, leaky_relu};
pub use modulated::{ModConvMode, ModulatedConv2d};
