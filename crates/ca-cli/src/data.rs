//! `ca data ...` subcommands.

use std::path::Path;

/// `ca data export-synthetic`: render the synthetic benchmark into the folder layout.
pub fn export_synthetic(
    out: &Path,
    n_background: usize,
    n_target: usize,
    size: usize,
    seed: u64,
) -> anyhow::Result<()> {
    let cfg = ca_data::SyntheticConfig {
        size: Some(size),
        ..Default::default()
    };
    let summary = ca_data::export_synthetic(&cfg, out, n_background, n_target, seed)?;
    println!(
        "wrote {} background and {} target images ({}x{}, {} channels, with counterparts and masks) to {}",
        summary.n_background,
        summary.n_target,
        summary.size,
        summary.size,
        summary.channels,
        out.display()
    );
    Ok(())
}
