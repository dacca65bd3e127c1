//! `cargo xtask quickstart`: everything a new user needs, in one command — set up libtorch,
//! build the `ca` binary, check the machine (`ca doctor`), train the default model (CA-GAN) on
//! the built-in synthetic benchmark for a few minutes, evaluate it, and print where the report
//! and images are.
//!
//! It only runs what exists, and never fakes a result: the numbers in the report are those of
//! a short CPU run (the acceptance runs train for 45 minutes: see the README).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use anyhow::{Context, bail};
use clap::Args;

use crate::util::{cargo, run};

/// Options of `cargo xtask quickstart`.
#[derive(Args)]
pub struct Quickstart {
    /// Minutes of training.
    #[arg(long, default_value_t = 10.0)]
    minutes: f64,
    /// The model preset to train.
    #[arg(long, default_value = "configs/ca-gan-synthetic.toml")]
    config: String,
}

impl Quickstart {
    pub fn run(&self, root: &Path) -> anyhow::Result<()> {
        let start = Instant::now();
        crate::setup::Setup::default().run(root)?;
        let mut build = cargo();
        build.args(["build", "--release", "-p", "ca-cli"]);
        run(&mut build, root)?;
        let ca = root.join("target").join("release").join("ca");
        run(Command::new(&ca).arg("doctor"), root)?;

        eprintln!(
            "\nquickstart: training {} for {} minutes on the synthetic benchmark",
            self.config, self.minutes
        );
        let out = Command::new(&ca)
            .args(["train", "--config", &self.config, "--max-minutes"])
            .arg(self.minutes.to_string())
            .current_dir(root)
            .stderr(std::process::Stdio::inherit())
            .output()
            .context("could not start ca train")?;
        let stdout = String::from_utf8_lossy(&out.stdout);
        print!("{stdout}");
        if !out.status.success() {
            bail!("ca train failed ({})", out.status);
        }
        let run_dir = stdout
            .lines()
            .find_map(|l| l.split("run directory: ").nth(1))
            .map(|s| root.join(s.trim()))
            .context("ca train did not print its run directory")?;
        let evaluated = evaluate(&ca, root, &run_dir)?;
        eprintln!(
            "\nquickstart done in {:.0} s.",
            start.elapsed().as_secs_f64()
        );
        eprintln!("  run directory:   {}", run_dir.display());
        eprintln!("  sample grids:    {}", run_dir.join("samples").display());
        eprintln!(
            "  loss curves:     {}",
            run_dir.join("loss_curves.png").display()
        );
        if let Some(report) = evaluated {
            eprintln!("  report:          {}", report.display());
            eprintln!(
                "  metrics:         {}",
                run_dir.join("eval").join("metrics.json").display()
            );
        }
        eprintln!(
            "  try: {} counterfactual --run {} --images <a target image> --out cf/",
            ca.display(),
            run_dir.display()
        );
        Ok(())
    }
}

/// Run `ca eval` when this build has it; returns the report path.
fn evaluate(ca: &Path, root: &Path, run_dir: &Path) -> anyhow::Result<Option<PathBuf>> {
    let help = Command::new(ca)
        .arg("--help")
        .output()
        .context("could not run ca --help")?;
    if !String::from_utf8_lossy(&help.stdout).contains("\n  eval ") {
        eprintln!("quickstart: `ca eval` is not built yet; skipping evaluation");
        return Ok(None);
    }
    run(Command::new(ca).arg("eval").arg("--run").arg(run_dir), root)?;
    Ok(Some(run_dir.join("eval").join("report.html")))
}
