//! `cargo xtask`: the project's automation, in Rust, with no dependency on libtorch.
//!
//! Subcommands (each in its own module):
//! * `setup` — install PyTorch 2.11.0 (which carries libtorch) into `.libtorch/` and wire cargo to it;
//! * `ci` — setup, then fmt, clippy and the whole test suite (what CI runs);
//! * `quickstart` — setup, build, and run the main job on the built-in synthetic benchmark.
//!
//! xtask must build before libtorch exists, so it depends on no crate that links tch; it calls
//! cargo through `$CARGO`.

mod bench;
mod ci;
mod fetch;
mod fetch_weights;
mod gpu_check;
mod quickstart;
mod setup;
mod tidy;
mod util;

use std::path::PathBuf;

use clap::{Parser, Subcommand};

/// Project automation for the contrastive-analysis workspace.
#[derive(Parser)]
#[command(name = "cargo xtask", version)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Install libtorch (PyTorch 2.11.0 from PyPI) into .libtorch/ and wire cargo to it. Idempotent.
    Setup(setup::Setup),
    /// Setup if needed, then `cargo fmt --check`, clippy with -D warnings and all tests.
    Ci(ci::Ci),
    /// Setup, build, and run the main job on the built-in synthetic benchmark.
    Quickstart(quickstart::Quickstart),
    /// Download, verify and preprocess the real datasets of datasets/manifest.toml (see --list).
    FetchDatasets(fetch::FetchDatasets),
    /// Download the FID Inception-v3 weights, check their sha256, convert them to safetensors.
    FetchWeights(fetch_weights::FetchWeights),
    /// Time Rust against the PyTorch references (benches/rows.toml); write benches/RESULTS.md.
    Bench(bench::Bench),
    /// Build the release binaries and write the CUDA check script for the GPU machine.
    GpuCheck(gpu_check::GpuCheck),
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let root = workspace_root();
    match cli.cmd {
        Cmd::Setup(c) => c.run(&root),
        Cmd::Ci(c) => c.run(&root),
        Cmd::Quickstart(c) => c.run(&root),
        Cmd::FetchDatasets(c) => c.run(&root),
        Cmd::FetchWeights(c) => c.run(&root),
        Cmd::Bench(c) => c.run(&root),
        Cmd::GpuCheck(c) => c.run(&root),
    }
}

/// The workspace root: the parent of this crate's manifest folder.
fn workspace_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives one level below the workspace root")
        .to_path_buf()
}
