//! `ca`: train, evaluate and apply contrastive-analysis (CA) models.
//!
//! This binary only parses arguments and dispatches to the library crates (`ca-train`,
//! `ca-data`, `ca-models`); it maps errors to a printed chain and an exit code.

mod doctor;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

const EXAMPLES: &str = "\
Examples:
  ca doctor
  ca data export-synthetic --out /tmp/synth --n-background 500 --n-target 500
  ca train --config configs/ca-gan-synthetic.toml --max-minutes 45
  ca eval --run runs/00001-synthetic-ca-gan
  ca counterfactual --run runs/00001-synthetic-ca-gan --images scan1.png scan2.png --out cf/";

/// Contrastive analysis of two image datasets: separate what a background set and a target set
/// share (common factors z) from what only the target set has (salient factors s).
#[derive(Parser)]
#[command(name = "ca", version, after_help = EXAMPLES, propagate_version = true)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Check the installation: libtorch, CUDA devices, cuDNN, threads, a matmul on each device.
    ///
    /// Example: ca doctor
    Doctor(doctor::Doctor),
    /// Dataset utilities (export the synthetic benchmark to a folder, ...).
    ///
    /// Example: ca data export-synthetic --out /tmp/synth
    #[command(subcommand)]
    Data(DataCmd),
}

#[derive(Subcommand)]
enum DataCmd {
    /// Render the synthetic CA benchmark into the folder layout (with ground truth).
    ///
    /// Example: ca data export-synthetic --out /tmp/synth --n-background 500 --n-target 500
    ExportSynthetic(ExportSynthetic),
}

#[derive(clap::Args)]
struct ExportSynthetic {
    /// Output folder (must not exist or be empty).
    #[arg(long)]
    out: std::path::PathBuf,
    /// Number of background images.
    #[arg(long, default_value_t = 1000)]
    n_background: usize,
    /// Number of target images.
    #[arg(long, default_value_t = 1000)]
    n_target: usize,
    /// Image side in pixels (32 or 64).
    #[arg(long, default_value_t = 32)]
    size: usize,
    /// Seed: the same seed gives bit-identical images.
    #[arg(long, default_value_t = 0)]
    seed: u64,
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let result = match cli.cmd {
        Cmd::Doctor(d) => d.run(),
        Cmd::Data(DataCmd::ExportSynthetic(_e)) => Err(anyhow::anyhow!(
            "export-synthetic is not built yet (issue #3)"
        )),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(1)
        }
    }
}
