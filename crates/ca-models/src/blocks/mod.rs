//! Layers shared by the GAN and diffusion families.
