//! Small helpers shared by the xtask commands: running processes with a clear error.

use std::path::Path;
use std::process::Command;

use anyhow::{Context, bail};

/// The cargo that invoked us (`$CARGO`), or `cargo` from `PATH`.
pub fn cargo() -> Command {
    Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()))
}

/// Run `cmd` in `dir`, inheriting stdio; fail with the command line if it does not exit 0.
pub fn run(cmd: &mut Command, dir: &Path) -> anyhow::Result<()> {
    let shown = format!("{cmd:?}");
    eprintln!("$ {shown}");
    let status = cmd
        .current_dir(dir)
        .status()
        .with_context(|| format!("could not start {shown}"))?;
    if !status.success() {
        bail!("{shown} failed ({status})");
    }
    Ok(())
}
