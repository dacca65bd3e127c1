//! CA-GAN networks (DESIGN.md section 4.1).
