//! `ca`: train, evaluate and apply contrastive-analysis (CA) models.
//!
//! This binary only parses arguments and dispatches to the library crates (`ca-train`,
//! `ca-data`, `ca-models`); it prints the error chain and maps errors to an exit code.

mod apply;
mod data;
mod doctor;
mod eval;
mod train;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

const EXAMPLES: &str = "\
Examples:
  ca doctor
  ca data export-synthetic --out /tmp/synth --n-background 500 --n-target 500
  ca train --config configs/ca-gan-synthetic.toml --max-minutes 45
  ca encode --run runs/00001-synthetic-gan-style-bs64 --data /tmp/synth --out codes.csv
  ca counterfactual --run runs/00001-synthetic-gan-style-bs64 --images a.png b.png --out cf/";

/// Contrastive analysis of two image datasets: separate what a background set and a target set
/// share (common factors z) from what only the target set has (salient factors s).
#[derive(Parser)]
#[command(name = "ca", version, after_help = EXAMPLES, propagate_version = true)]
struct Cli {
    /// CPU threads for libtorch (default: libtorch's own choice, all cores). On a shared machine
    /// give each process its share: oversubscribed OpenMP threads spin and slow every process
    /// down. For `ca train` this is `--set train.threads=N`.
    #[arg(long, global = true, value_name = "N")]
    threads: Option<u16>,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Check the installation: libtorch, CUDA devices, cuDNN, threads, a matmul on each device.
    ///
    /// Example: ca doctor
    Doctor(doctor::Doctor),
    /// Train a model from a config. Example: ca train --config configs/ca-gan-synthetic.toml --max-minutes 45
    Train(train::Train),
    /// Evaluate a run: separation probes, ground-truth metrics, image quality; writes metrics.json and report.md/html. Example: ca eval --run RUN
    Eval(eval::EvalArgs),
    /// Encode images to (z, s) codes, one CSV row per image. Example: ca encode --run RUN --data ROOT --out codes.csv
    Encode(EncodeArgs),
    /// Sample new background (s = 0) and target images. Example: ca generate --run RUN --n 8 --out gen/
    Generate(GenerateArgs),
    /// Transfer the salient factors of target images onto background images. Example: ca swap --run RUN --background a.png --target b.png --out swap/
    Swap(SwapArgs),
    /// Background counterpart (s := 0) and saliency map of images. Example: ca counterfactual --run RUN --images x.png --out cf/
    Counterfactual(ImagesArgs),
    /// Traverse the salient dimensions of images. Example: ca traverse --run RUN --images x.png --out trav/
    Traverse(TraverseArgs),
    /// Dataset utilities. Example: ca data export-synthetic --out /tmp/synth
    #[command(subcommand)]
    Data(DataCmd),
}

#[derive(clap::Args)]
struct RunArgs {
    /// A run directory written by `ca train`.
    #[arg(long)]
    run: PathBuf,
    /// auto | cpu | cuda | cuda:N
    #[arg(long, default_value = "auto")]
    device: String,
}

/// `--set` for the verbs that edit real images.
#[derive(clap::Args)]
struct EditArgs {
    /// Edit with other settings than the run's `[apply]` (repeatable), e.g.
    /// `--set apply.diffusion_guidance=0.5` or `--set apply.gan_edit=decode`; the run is not
    /// changed. Only `apply.*` keys: everything else is fixed by the checkpoint.
    #[arg(long = "set", value_name = "apply.KEY=VALUE")]
    sets: Vec<String>,
}

#[derive(clap::Args)]
struct EncodeArgs {
    #[command(flatten)]
    run: RunArgs,
    /// A folder pair ROOT/{background,target}; default: the run's own dataset.
    #[arg(long)]
    data: Option<PathBuf>,
    /// Output CSV (must not exist).
    #[arg(long)]
    out: PathBuf,
}

#[derive(clap::Args)]
struct GenerateArgs {
    #[command(flatten)]
    run: RunArgs,
    /// Samples per set.
    #[arg(long, default_value_t = 8)]
    n: i64,
    /// Seed of the codes.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Output folder.
    #[arg(long)]
    out: PathBuf,
}

#[derive(clap::Args)]
struct SwapArgs {
    #[command(flatten)]
    run: RunArgs,
    /// Background images (receive the salient factors).
    #[arg(long, num_args = 1.., required = true)]
    background: Vec<PathBuf>,
    /// Target images (give their salient factors).
    #[arg(long, num_args = 1.., required = true)]
    target: Vec<PathBuf>,
    /// Output folder.
    #[arg(long)]
    out: PathBuf,
    #[command(flatten)]
    edit: EditArgs,
}

#[derive(clap::Args)]
struct ImagesArgs {
    #[command(flatten)]
    run: RunArgs,
    /// Input images.
    #[arg(long, num_args = 1.., required = true)]
    images: Vec<PathBuf>,
    /// Output folder.
    #[arg(long)]
    out: PathBuf,
    #[command(flatten)]
    edit: EditArgs,
}

#[derive(clap::Args)]
struct TraverseArgs {
    #[command(flatten)]
    inner: ImagesArgs,
    /// Values per dimension.
    #[arg(long, default_value_t = 7)]
    steps: i64,
    /// Traverse s_k over [-range, range].
    #[arg(long, default_value_t = 3.0)]
    range: f64,
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
    out: PathBuf,
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
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    // glibc keeps freed activations mapped instead of faulting them in again every step
    // (ca_train::malloc: 5-10% of a training step on 2 CPU threads); the user's own settings win.
    let tuning = ca_train::malloc::tune_for_training();
    tracing::debug!("malloc thresholds: {tuning:?}");
    let cli = Cli::parse();
    if let Some(n) = cli.threads.filter(|&n| n > 0) {
        tch::set_num_threads(i32::from(n));
    }
    let result = match cli.cmd {
        Cmd::Doctor(d) => d.run(),
        Cmd::Train(mut t) => {
            if let Some(n) = cli.threads.filter(|&n| n > 0) {
                t.sets.push(format!("train.threads={n}"));
            }
            t.run()
        }
        Cmd::Eval(a) => eval::eval(&a),
        Cmd::Encode(a) => apply::encode(&a.run.run, a.data.as_deref(), &a.out, &a.run.device),
        Cmd::Generate(a) => apply::generate(&a.run.run, a.n, a.seed, &a.out, &a.run.device),
        Cmd::Swap(a) => apply::swap(
            &a.run.run,
            &a.background,
            &a.target,
            &a.out,
            &a.run.device,
            &a.edit.sets,
        ),
        Cmd::Counterfactual(a) => {
            apply::counterfactual(&a.run.run, &a.images, &a.out, &a.run.device, &a.edit.sets)
        }
        Cmd::Traverse(a) => apply::traverse(
            &a.inner.run.run,
            &a.inner.images,
            a.steps,
            a.range,
            &a.inner.out,
            &a.inner.run.device,
            &a.inner.edit.sets,
        ),
        Cmd::Data(DataCmd::ExportSynthetic(e)) => {
            data::export_synthetic(&e.out, e.n_background, e.n_target, e.size, e.seed)
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {}", error_text(&e));
            ExitCode::from(1)
        }
    }
}

/// The error and its causes on one line, each cause added only when the text before does not
/// already say it (our errors often name their cause in their own message).
fn error_text(e: &anyhow::Error) -> String {
    let mut text = String::new();
    for cause in e.chain() {
        let c = cause.to_string();
        if text.contains(&c) {
            continue;
        }
        if !text.is_empty() {
            text.push_str(": ");
        }
        text.push_str(&c);
    }
    text
}
