//! End-to-end tests of the `ca` binary (one test binary: every test binary links libtorch).
//! Tests never reach the internet and use no GPU.

mod diffusion;
mod gan;
mod reliability;
mod util;
