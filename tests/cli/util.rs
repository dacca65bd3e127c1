//! Helpers: run the `ca` binary, read run directories.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// The workspace root (configs live there).
pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// A `ca` command with libtorch limited to one thread (tests run in parallel on 2 cores).
pub fn ca() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_ca"));
    c.env("OMP_NUM_THREADS", "1")
        .env("RUST_LOG", "warn")
        // No weights a user installed (FID Inception in ~/.cache/ca/weights) may change a
        // test's outcome: the weights folder is an empty one of the tests' own (a test that
        // wants weights sets its own).
        .env("CA_WEIGHTS_DIR", no_weights_dir())
        .env_remove("CA_DDIM_STEPS")
        .env_remove("CA_INVERT_STEPS")
        .env_remove("CA_PRIOR_STEPS");
    c
}

/// An empty folder: `CA_WEIGHTS_DIR` of every `ca` the tests run.
pub fn no_weights_dir() -> PathBuf {
    let d = std::env::temp_dir().join(format!("ca-cli-tests-no-weights-{}", std::process::id()));
    std::fs::create_dir_all(&d).expect("temp folder");
    d
}

/// Run and require success; returns stdout.
pub fn ok(cmd: &mut Command) -> String {
    let out: Output = cmd.output().expect("ca runs");
    assert!(
        out.status.success(),
        "{cmd:?} failed ({}):\nstdout:\n{}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).to_string()
}

/// Run and require failure; returns stderr.
pub fn err(cmd: &mut Command) -> String {
    let out: Output = cmd.output().expect("ca runs");
    assert!(!out.status.success(), "{cmd:?} unexpectedly succeeded");
    String::from_utf8_lossy(&out.stderr).to_string()
}

/// The rows of a run's losses.csv as (header, rows of fields).
pub fn losses(run: &Path) -> (Vec<String>, Vec<Vec<String>>) {
    let text = std::fs::read_to_string(run.join("losses.csv")).expect("losses.csv exists");
    let mut lines = text.lines();
    let header = lines
        .next()
        .expect("header")
        .split(',')
        .map(str::to_string)
        .collect();
    let rows = lines
        .map(|l| l.split(',').map(str::to_string).collect())
        .collect();
    (header, rows)
}

/// `ca train` on the CPU into `out` with `--set` overrides: a new run of `config` (relative to
/// the workspace root), or `--resume` of `out`. Not yet run (tests spawn it or wait on it).
pub fn train_cmd(config: &str, out: &Path, sets: &[String], resume: bool) -> Command {
    let mut c = ca();
    c.arg("train")
        .arg("--device")
        .arg("cpu")
        .arg("--out")
        .arg(out);
    if resume {
        c.arg("--resume");
    } else {
        c.arg("--config").arg(root().join(config));
    }
    for s in sets {
        c.arg("--set").arg(s);
    }
    c
}

/// [`train_cmd`] run to success. Returns stdout.
pub fn train(config: &str, out: &Path, sets: &[String], resume: bool) -> String {
    ok(&mut train_cmd(config, out, sets, resume))
}

/// Overrides that make the ca-gan preset tiny: 8-16-channel nets, 48+48 images, batch 8, a
/// loss row every step, one thread.
pub fn tiny_gan(steps: u64, checkpoint_every: u64) -> Vec<String> {
    let mut v: Vec<String> = [
        "data.n_background=48",
        "data.n_target=48",
        "data.workers=1",
        "model.dz=6",
        "model.ds=2",
        "model.generator.base_channels=8",
        "model.generator.max_channels=16",
        "model.generator.w_dim=16",
        "model.generator.mapping_layers=2",
        "model.discriminator.base_channels=8",
        "model.discriminator.max_channels=16",
        "model.discriminator.hidden=16",
        "model.encoder.base_channels=8",
        "model.encoder.max_channels=16",
        "model.encoder.hidden=16",
        "loss.r1_every=2",
        "train.batch_size=8",
        "train.log_every=1",
        "train.sample_every=0",
        "train.threads=1",
        "eval.folds=2",
        "eval.batch_size=16",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    v.push(format!("train.max_steps={steps}"));
    v.push(format!("train.checkpoint_every={checkpoint_every}"));
    v
}
