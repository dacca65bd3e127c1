//! `cargo xtask ci`: exactly what CI runs — setup if needed, format check, clippy, tests, and
//! the fuzz targets (their own workspace, `fuzz/`) built and each run for a few hundred inputs
//! from its seeds, so a change that breaks or crashes them is seen. Long fuzzing runs are
//! `fuzz/run-all.sh` (nightly, cargo-fuzz).

use std::path::Path;
use std::time::Instant;

use clap::Args;

use crate::util::{cargo, run};

/// Options of `cargo xtask ci`.
#[derive(Args)]
pub struct Ci {}

impl Ci {
    pub fn run(&self, root: &Path) -> anyhow::Result<()> {
        let start = Instant::now();
        crate::setup::Setup::default().run(root)?;
        let mut fmt = cargo();
        fmt.args(["fmt", "--all", "--", "--check"]);
        run(&mut fmt, root)?;
        let mut clippy = cargo();
        clippy.args([
            "clippy",
            "--workspace",
            "--all-targets",
            "--",
            "-D",
            "warnings",
        ]);
        run(&mut clippy, root)?;
        let mut test = cargo();
        // Library, binary and integration tests (the workspace has no doc tests; leaving them
        // out keeps the last runner line a real count).
        test.args(["test", "--workspace", "--lib", "--bins", "--tests"]);
        run(&mut test, root)?;
        fuzz_smoke(root)?;
        eprintln!(
            "xtask ci: all checks passed in {:.0} s",
            start.elapsed().as_secs_f64()
        );
        Ok(())
    }
}

/// The fuzz targets and how many inputs each smoke run tries (its seeds first).
const FUZZ_TARGETS: [&str; 5] = [
    "image_decode",
    "npy_parse",
    "labels_csv",
    "config_toml",
    "checkpoint_load",
];
const FUZZ_RUNS: &str = "-runs=300";

/// Build the fuzz targets on the stable toolchain (plain libFuzzer binaries, without coverage
/// instrumentation, in the workspace's target folder) and run each over its seed inputs and a
/// few hundred mutations of them. A crash or a build failure fails CI.
fn fuzz_smoke(root: &Path) -> anyhow::Result<()> {
    let target_dir = root.join("target");
    let mut build = cargo();
    build
        .args(["build", "--manifest-path", "fuzz/Cargo.toml", "--bins"])
        .env("CARGO_TARGET_DIR", &target_dir);
    run(&mut build, root)?;
    let empty = target_dir.join("fuzz-empty-corpus");
    std::fs::create_dir_all(&empty)?;
    for t in FUZZ_TARGETS {
        let seeds = root.join("fuzz/seeds").join(t);
        let corpus = if seeds.is_dir() { seeds } else { empty.clone() };
        let mut smoke = std::process::Command::new(target_dir.join("debug").join(t));
        smoke
            .args([FUZZ_RUNS, "-max_len=65536", "-rss_limit_mb=2048"])
            .arg(format!("-artifact_prefix={}/", target_dir.display()))
            .arg(&corpus)
            .env("OMP_NUM_THREADS", "1");
        run(&mut smoke, root)?;
    }
    Ok(())
}
