//! `cargo xtask gpu-check`: prepare the CUDA check for the GPU machine.
//!
//! The GPU machine has python3 with PyTorch 2.11.0+cu130 and no Rust toolchain, so this builds
//! here the release `ca` binary and the `steps` bench (the step timer of `cargo xtask bench`),
//! strips their debug info into `target/gpu-check/` (a few MB, cheap to carry), and prints the
//! command to run there: `benches/gpu/gpu_check.sh`, which points `LD_LIBRARY_PATH` at that
//! PyTorch's `lib/` folder, runs a 50-step CUDA smoke training of each model kind and the bench
//! rows on CUDA (Rust and the PyTorch references), within about 5 minutes, and writes
//! `gpu_check.txt` and `bench.jsonl` into `$OUT`.

use std::path::Path;

use anyhow::{Context, bail};
use clap::Args;

use crate::util::{cargo, run};

/// Options of `cargo xtask gpu-check`.
#[derive(Args)]
pub struct GpuCheck {}

/// Where the carried binaries go, relative to the workspace root (ignored by git).
pub const BIN_DIR: &str = "target/gpu-check";

/// The instructions printed for the GPU machine.
pub fn instructions(bin_dir: &str) -> String {
    format!(
        "On the GPU machine, from the repository root (device tool: `run` with\n  carry = [\"{bin_dir}\"], timeout_s = 330):\n\n    bash benches/gpu/gpu_check.sh {bin_dir}\n\nIt sets LD_LIBRARY_PATH to the lib/ folder of python3's torch, trains each model kind for\n50 steps with --device cuda, runs every row of benches/rows.toml on CUDA (Rust, then\nbenches/reference/steps.py), and writes $OUT/gpu_check.txt and $OUT/bench.jsonl\n(benches/gpu/results/ when $OUT is unset).\n\nLonger synthetic trainings and their evaluation (timeout_s = 590; RUNS, TRAIN_MINUTES\nand EVAL_SECONDS in the script's header):\n\n    bash benches/gpu/trials.sh {bin_dir}\n"
    )
}

impl GpuCheck {
    /// Build, strip and copy the binaries; print the instructions.
    pub fn run(&self, root: &Path) -> anyhow::Result<()> {
        let mut b = cargo();
        b.args(["build", "--release", "-p", "ca-cli", "--bin", "ca"]);
        run(&mut b, root)?;
        let steps = crate::bench::build_steps(root)?;
        // `ca` sits next to the bench's deps folder: <target>/release/{ca, deps/steps-*}.
        let release = steps
            .parent()
            .and_then(Path::parent)
            .context("unexpected bench executable path")?;
        let ca = release.join("ca");
        if !ca.is_file() {
            bail!("built `ca` not found at {}", ca.display());
        }
        let dir = root.join(BIN_DIR);
        std::fs::create_dir_all(&dir)?;
        for (src, name) in [(&ca, "ca"), (&steps, "steps")] {
            let dst = dir.join(name);
            std::fs::copy(src, &dst)
                .with_context(|| format!("cannot copy {} to {}", src.display(), dst.display()))?;
            // Debug info is most of the size (about 90 MB -> a few MB); carrying is size-limited.
            let mut strip = std::process::Command::new("strip");
            strip.arg("--strip-debug").arg(&dst);
            if let Err(e) = run(&mut strip, root) {
                eprintln!(
                    "xtask gpu-check: could not strip {} ({e}); carrying it as is",
                    dst.display()
                );
            }
        }
        let script = root.join("benches/gpu/gpu_check.sh");
        if !script.is_file() {
            bail!("{} is missing", script.display());
        }
        println!("{}", instructions(BIN_DIR));
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn instructions_name_the_script_the_carry_and_the_library_path() {
        let t = instructions(BIN_DIR);
        assert!(t.contains("bash benches/gpu/gpu_check.sh target/gpu-check"));
        assert!(t.contains("carry = [\"target/gpu-check\"]"));
        assert!(t.contains("bash benches/gpu/trials.sh target/gpu-check"));
        assert!(t.contains("LD_LIBRARY_PATH"));
    }
}
