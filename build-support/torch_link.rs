//! Shared build script for every crate that produces a binary, test, bench or example linking
//! libtorch.
//!
//! Two facts about tch 0.24 with the PyPI wheel (see ARCHITECTURE.md, "libtorch"):
//! * torch-sys passes `-Wl,-rpath` only to its own targets, so our binaries would not find
//!   `libtorch.so` at run time. We add the rpath of the libtorch `lib/` folder that torch-sys
//!   linked against (exported to us as `DEP_TCH_LIBTORCH_LIB` because we depend on torch-sys).
//! * `--as-needed` (the default of most linkers) drops `libtorch_cuda.so`, whose symbols are never
//!   referenced directly, so CUDA would silently be unavailable. `--no-as-needed` keeps it.
//!
//! It also records the libtorch version (from the wheel's `version.py`) as `CA_LIBTORCH_VERSION`
//! for `ca doctor`.

use std::path::Path;

pub fn main() {
    println!("cargo:rerun-if-env-changed=DEP_TCH_LIBTORCH_LIB");
    let Ok(dir) = std::env::var("DEP_TCH_LIBTORCH_LIB") else {
        println!("cargo:rustc-env=CA_LIBTORCH_VERSION=unknown");
        return;
    };
    println!("cargo:rustc-link-arg=-Wl,-rpath,{dir}");
    println!("cargo:rustc-link-arg=-Wl,--no-as-needed");
    println!("cargo:rustc-link-arg=-ltorch");
    if Path::new(&dir).join("libtorch_cuda.so").exists() {
        println!("cargo:rustc-link-arg=-ltorch_cuda");
    }
    println!("cargo:rustc-link-arg=-Wl,--as-needed");

    let version_py = Path::new(&dir).join("..").join("version.py");
    let version = std::fs::read_to_string(&version_py)
        .ok()
        .and_then(|text| {
            text.lines()
                .find_map(|l| l.strip_prefix("__version__ = "))
                .map(|v| v.trim().trim_matches('\'').trim_matches('"').to_string())
        })
        .unwrap_or_else(|| "unknown".to_string());
    println!("cargo:rustc-env=CA_LIBTORCH_VERSION={version}");
    println!("cargo:rustc-env=CA_LIBTORCH_LIB={dir}");
}
