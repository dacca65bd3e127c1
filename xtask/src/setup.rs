//! `cargo xtask setup`: provision libtorch for tch 0.24.
//!
//! tch 0.24 expects PyTorch 2.11.0. The PyPI wheel `torch==2.11.0` carries a complete libtorch
//! (CPU and CUDA 13), so setup makes a Python venv in `.libtorch/venv` (git-ignored), pip-installs
//! that exact version, checks it, and points the symlink `.libtorch/torch` at the installed
//! package. `.cargo/config.toml` sets `LIBTORCH=.libtorch/torch` (not forced), and the shared build
//! script `build-support/torch_link.rs` gives every binary a runpath to its `lib/` folder, so
//! plain `cargo build/test/run` work in a new shell with nothing exported.
//!
//! A user who exports `LIBTORCH` or `LIBTORCH_USE_PYTORCH` keeps their own libtorch: setup then
//! only reports what it found. A second run is a few file reads and touches no network.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, bail};
use clap::Args;

/// The PyTorch version tch 0.24 is built for.
pub const TORCH_VERSION: &str = "2.11.0";

/// Options of `cargo xtask setup`.
#[derive(Args)]
pub struct Setup {
    /// Python interpreter used to create the venv.
    #[arg(long, default_value = "python3")]
    python: String,
}

impl Default for Setup {
    /// What `cargo xtask setup` does with no options (used by `ci` and `quickstart`).
    fn default() -> Self {
        Setup {
            python: "python3".to_string(),
        }
    }
}

/// Where setup installs things, relative to the workspace root.
pub struct Layout {
    pub dir: PathBuf,
    pub venv: PathBuf,
    pub link: PathBuf,
}

impl Layout {
    pub fn new(root: &Path) -> Self {
        let dir = root.join(".libtorch");
        Layout {
            venv: dir.join("venv"),
            link: dir.join("torch"),
            dir,
        }
    }

    /// The venv's python interpreter.
    pub fn python(&self) -> PathBuf {
        self.venv.join("bin").join("python")
    }
}

impl Setup {
    pub fn run(&self, root: &Path) -> anyhow::Result<()> {
        let layout = Layout::new(root);
        if let Some(own) = user_libtorch(&layout) {
            eprintln!("xtask setup: using your own libtorch ({own}); nothing to install.");
            return Ok(());
        }
        if let Some(version) = installed_version(&layout.link) {
            if version.starts_with(TORCH_VERSION) {
                eprintln!(
                    "xtask setup: libtorch {version} ready at {}",
                    layout.link.display()
                );
                return Ok(());
            }
            eprintln!(
                "xtask setup: found PyTorch {version} in {}, tch 0.24 needs {TORCH_VERSION}; installing {TORCH_VERSION} into the same venv",
                layout.venv.display()
            );
        }
        self.install(&layout)
    }

    fn install(&self, layout: &Layout) -> anyhow::Result<()> {
        std::fs::create_dir_all(&layout.dir)
            .with_context(|| format!("cannot create {}", layout.dir.display()))?;
        if !layout.python().exists() {
            let probe = Command::new(&self.python).arg("--version").output();
            if !matches!(&probe, Ok(o) if o.status.success()) {
                bail!(
                    "`{}` was not found. Install Python 3.10+ with venv and pip \
                     (Debian/Ubuntu: `apt-get install python3 python3-venv python3-pip`), \
                     or export LIBTORCH=/path/to/a/libtorch-2.11.0 to use your own libtorch.",
                    self.python
                );
            }
            eprintln!("xtask setup: creating venv {}", layout.venv.display());
            let status = Command::new(&self.python)
                .args(["-m", "venv"])
                .arg(&layout.venv)
                .status()
                .with_context(|| format!("could not run {} -m venv", self.python))?;
            if !status.success() {
                bail!(
                    "`{} -m venv {}` failed. Install the venv module \
                     (Debian/Ubuntu: `apt-get install python3-venv`) and run `cargo xtask setup` again.",
                    self.python,
                    layout.venv.display()
                );
            }
        }
        eprintln!(
            "xtask setup: pip install torch=={TORCH_VERSION} (about 4.6 GB with its CUDA libraries; a few minutes)"
        );
        let status = Command::new(layout.python())
            .args(["-m", "pip", "install", "--disable-pip-version-check"])
            .arg(format!("torch=={TORCH_VERSION}"))
            .status()
            .context("could not run pip in the venv")?;
        if !status.success() {
            bail!(
                "pip could not install torch=={TORCH_VERSION} (see its output above). Check the \
                 network or proxy settings (pip honours HTTPS_PROXY and PIP_INDEX_URL) and run \
                 `cargo xtask setup` again; or export LIBTORCH=/path/to/a/libtorch-{TORCH_VERSION}."
            );
        }
        let out = Command::new(layout.python())
            .args([
                "-c",
                "import os, torch; print(torch.__version__); print(os.path.dirname(torch.__file__))",
            ])
            .output()
            .context("could not run the venv's python to check torch")?;
        let text = String::from_utf8_lossy(&out.stdout);
        let mut lines = text.lines();
        let (Some(version), Some(torch_dir)) = (lines.next(), lines.next()) else {
            bail!(
                "`import torch` failed in {} after installing it:\n{}\nRemove .libtorch/ and run `cargo xtask setup` again.",
                layout.venv.display(),
                String::from_utf8_lossy(&out.stderr)
            );
        };
        if !version.starts_with(TORCH_VERSION) {
            bail!(
                "pip installed PyTorch {version}, but tch 0.24 needs {TORCH_VERSION}. \
                 Check PIP_INDEX_URL / PIP_FIND_LINKS, remove .libtorch/ and run `cargo xtask setup` again."
            );
        }
        let torch_dir = PathBuf::from(torch_dir);
        let target = torch_dir
            .strip_prefix(&layout.dir)
            .map(Path::to_path_buf)
            .unwrap_or(torch_dir.clone());
        // Replace the symlink atomically: make it under a temporary name, then rename.
        let tmp = layout.dir.join("torch.tmp-link");
        let _ = std::fs::remove_file(&tmp);
        std::os::unix::fs::symlink(&target, &tmp)
            .with_context(|| format!("cannot create symlink {}", tmp.display()))?;
        std::fs::rename(&tmp, &layout.link)
            .with_context(|| format!("cannot create {}", layout.link.display()))?;
        eprintln!(
            "xtask setup: libtorch {version} ready at {} -> {}",
            layout.link.display(),
            torch_dir.display()
        );
        Ok(())
    }
}

/// A libtorch chosen by the user: `LIBTORCH_USE_PYTORCH`, or a `LIBTORCH` that is not ours.
/// (cargo's `[env]` sets LIBTORCH to our symlink for processes it runs, xtask included.)
fn user_libtorch(layout: &Layout) -> Option<String> {
    if std::env::var_os("LIBTORCH_USE_PYTORCH").is_some() {
        return Some("LIBTORCH_USE_PYTORCH is set".into());
    }
    let value = std::env::var_os("LIBTORCH")?;
    let path = PathBuf::from(&value);
    let ours = path == layout.link
        || (path.is_relative() && path.ends_with(".libtorch/torch"))
        || path.parent().and_then(|p| p.canonicalize().ok()) == layout.dir.canonicalize().ok();
    (!ours).then(|| format!("LIBTORCH={}", path.display()))
}

/// The version recorded in `<torch>/version.py`, if libtorch is installed there.
pub fn installed_version(torch: &Path) -> Option<String> {
    if !torch.join("lib").join("libtorch_cpu.so").exists() {
        return None;
    }
    let text = std::fs::read_to_string(torch.join("version.py")).ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix("__version__ = "))
        .map(|v| v.trim().trim_matches('\'').trim_matches('"').to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_setup_uses_python3() {
        // `ci` and `quickstart` call `Setup::default()`, which must match the CLI default.
        assert_eq!(Setup::default().python, "python3");
    }

    #[test]
    fn installed_version_needs_the_library_and_reads_version_py() {
        let dir = tempfile::tempdir().unwrap();
        let torch = dir.path().join("torch");
        std::fs::create_dir_all(torch.join("lib")).unwrap();
        std::fs::write(torch.join("version.py"), "__version__ = '2.11.0+cu130'\n").unwrap();
        assert_eq!(installed_version(&torch), None, "no libtorch_cpu.so yet");
        std::fs::write(torch.join("lib").join("libtorch_cpu.so"), b"").unwrap();
        assert_eq!(installed_version(&torch).as_deref(), Some("2.11.0+cu130"));
    }
}
