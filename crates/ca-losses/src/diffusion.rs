//! Diffusion losses (to be written).
