//! `cargo xtask ci`: exactly what CI runs — setup if needed, format check, clippy, tests.

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
        eprintln!(
            "xtask ci: all checks passed in {:.0} s",
            start.elapsed().as_secs_f64()
        );
        Ok(())
    }
}
