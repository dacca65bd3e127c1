//! CA-diffusion networks (DESIGN.md section 4.2).
