//! `ca eval`: evaluate a run on held-out images (separation probes, ground-truth metrics,
//! reconstruction, image quality) and write `RUN/eval/{metrics.json, report.md, report.html}`
//! with the grid PNGs. The work is done by `ca_eval`; this file only resolves the data,
//! the options and the comparison runs.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, bail};
use ca_data::Split;
use ca_eval::{self as eval, EvalOptions, RunInfo, report};
use ca_train::run;

use crate::apply;

/// Arguments of `ca eval`.
#[derive(clap::Args)]
pub struct EvalArgs {
    /// A run directory written by `ca train`.
    #[arg(long)]
    run: PathBuf,
    /// Evaluate this folder dataset ROOT/{background,target} (at the run's size and channels)
    /// instead of the run's own data; ground truth from ROOT/target_counterfactual and
    /// ROOT/target_mask when present.
    #[arg(long)]
    data: Option<PathBuf>,
    /// Other evaluations shown side by side in the report: run directories (their RUN/eval/)
    /// or evaluation folders (RUN/eval-diffusion_guidance=0.5/, an --out folder).
    #[arg(long, num_args = 1..)]
    compare: Vec<PathBuf>,
    /// Write the evaluation to this folder instead of RUN/eval/ (or the folder --checkpoint and
    /// --set name), e.g. one per dataset given with --data. Refused if it holds an earlier
    /// evaluation, unless --force.
    #[arg(long)]
    out: Option<PathBuf>,
    /// auto | cpu | cuda | cuda:N
    #[arg(long, default_value = "auto")]
    device: String,
    /// At most this many images, balanced between background and target (default: the run's
    /// eval.max_images).
    #[arg(long)]
    max_images: Option<usize>,
    /// At most this many real and generated images for FID/KID, 0 = all (default: the run's
    /// eval.fid_images, 500 if the run predates it). FID grows as the set shrinks: compare
    /// runs at the same value.
    #[arg(long)]
    fid_images: Option<usize>,
    /// Salient label columns to probe (comma-separated); default: every categorical column
    /// that varies only within the target set.
    #[arg(long, value_delimiter = ',')]
    salient_labels: Vec<String>,
    /// Evaluate every image of the dataset, not only its held-out split. Only for data the
    /// model never trained on (e.g. a separate --data export).
    #[arg(long)]
    all_images: bool,
    /// Overwrite the files of a previous evaluation in its folder (other files are kept).
    #[arg(long)]
    force: bool,
    /// Only the separation probes and the probe matrix: one encoder pass, no decoding (seconds
    /// instead of minutes; the same numbers as the full evaluation for the same images and
    /// seed). Writes separation.json into RUN/eval/ (or the --checkpoint / --out folder); metrics.json and
    /// the report are left alone.
    #[arg(long, conflicts_with = "compare")]
    separation_only: bool,
    /// Evaluate this checkpoint instead of the latest: a folder name in RUN/checkpoints/
    /// (ckpt-0004000) or its step (4000). Written to RUN/eval-ckpt-NNNNNNN/ (the latest's
    /// RUN/eval/ is left alone); a damaged or unknown checkpoint is an error, never replaced by
    /// another.
    #[arg(long, value_name = "NAME|STEP")]
    checkpoint: Option<String>,
    /// Evaluate with other edit settings than the run's `[apply]` (repeatable), e.g.
    /// `--set apply.diffusion_guidance=0.5`: written to RUN/eval-KEY=VALUE/ (after any
    /// -ckpt-NNNNNNN), so the run's config.toml and its own RUN/eval/ are left alone. Only
    /// `apply.*` keys: everything else is fixed by the checkpoint.
    #[arg(
        long = "set",
        value_name = "apply.KEY=VALUE",
        conflicts_with = "separation_only"
    )]
    sets: Vec<String>,
    /// Seed of the probe folds, the domain classifier and the samples.
    #[arg(long, default_value_t = 0)]
    seed: u64,
}

/// `ca eval`.
pub fn eval(a: &EvalArgs) -> anyhow::Result<()> {
    let t0 = Instant::now();
    let device = apply::parse_device(&a.device)?;
    let (cfg, m, meta) = run::load_run_edited(&a.run, device, a.checkpoint.as_deref(), &a.sets)
        .with_context(|| format!("cannot load run '{}'", a.run.display()))?;
    let mut compare = Vec::new();
    for dir in &a.compare {
        let metrics =
            report::read_metrics(dir).with_context(|| format!("--compare '{}'", dir.display()))?;
        compare.push((eval_name(dir), metrics));
    }
    // Refused before the long part: an earlier evaluation is only overwritten with --force.
    // `out`: the separation.json path with --separation-only, else the evaluation folder
    // (RUN/eval/, or RUN/eval-ckpt-NNNNNNN/ with --checkpoint, then -KEY=VALUE per --set).
    let dir = match &a.out {
        Some(out) => out.clone(),
        None => report::eval_dir(
            &a.run,
            a.checkpoint
                .as_ref()
                .map(|_| ca_train::checkpoint::folder_name(meta.step))
                .as_deref(),
            &a.sets,
        ),
    };
    let out = if a.separation_only {
        report::prepare_separation_file(&dir, a.force)?
    } else {
        report::prepare_eval_dir(&dir, a.force)?
    };
    let ds = apply::dataset_for(&cfg, a.data.as_deref())?;
    let split = if a.all_images {
        Split::All
    } else {
        Split::Eval
    };
    let full =
        ca_data::load_eval_set(ds.as_ref(), split).context("loading the evaluation images")?;
    if a.all_images {
        refuse_training_images(&cfg, a.data.as_deref(), &full)?;
    }
    if full.is_empty() {
        bail!(
            "the {} split of the data is empty: nothing to evaluate (with a separate --data export, pass --all-images)",
            if a.all_images { "whole" } else { "held-out" }
        );
    }
    let max = a.max_images.unwrap_or(cfg.eval.max_images).max(1);
    let group: Vec<i64> = Vec::<i64>::try_from(&full.group)?;
    let rows = eval::select_balanced(&group, max, a.seed);
    let set = if rows.len() == full.len() {
        full
    } else {
        eval::subset(&full, &rows)
    };
    let mut opts = EvalOptions::from_config(&cfg.eval);
    opts.seed = a.seed;
    if let Some(k) = a.fid_images {
        opts.fid_images = k;
    }
    if !a.salient_labels.is_empty() {
        opts.salient_labels = Some(a.salient_labels.clone());
    }
    let dataset = match &a.data {
        Some(root) => format!("folder:{}", root.display()),
        None => match &cfg.data {
            ca_data::DataConfig::Synthetic(_) => "synthetic".to_string(),
            ca_data::DataConfig::Folder(f) => format!("folder:{}", f.root.display()),
            ca_data::DataConfig::Npy(n) => format!("npy:{}", n.root.display()),
        },
    };
    let info = RunInfo {
        model: meta.model_kind.clone(),
        dataset,
        steps: meta.step,
        wall_clock_s: meta.wall_clock_s,
        split: if a.all_images { "all" } else { "eval" }.into(),
        apply: Some(cfg.apply),
        // The loaded `cfg.apply` already holds the overridden values; this lists the overrides.
        env_overrides: cfg
            .apply
            .with_env_overrides(ca_models::apply::env_var)
            .map(|(_, used)| used)
            .unwrap_or_default(),
    };
    eprintln!(
        "evaluating {} ({} at step {}) on {} images{} ...",
        a.run.display(),
        m.family(),
        meta.step,
        set.len(),
        if a.separation_only {
            ", separation probes only".to_string()
        } else {
            format!("; editing with {}", cfg.apply.describe(m.family()))
        }
    );
    if a.separation_only {
        let rep = eval::evaluate_separation(m.as_ref(), &set, &info, &opts)?;
        report::write_separation(&out, &rep)?;
        print_separation(&rep.separation);
        println!(
            "wrote {} ({} images, {:.1} s)",
            out.display(),
            set.len(),
            t0.elapsed().as_secs_f64()
        );
        return Ok(());
    }
    let ev = eval::evaluate(m.as_ref(), &set, &info, &opts)?;
    report::write_eval(&out, &run_name(&a.run), &ev, &compare)?;
    let mt = &ev.metrics;
    print_separation(&mt.separation);
    if let Some(g) = &mt.ground_truth {
        println!(
            "counterfactual {:.2} dB (gain {:+.2} dB), saliency IoU {:.3}, swap success {}",
            g.counterfactual.counterfactual_psnr_db,
            g.counterfactual.counterfactual_gain_db,
            g.saliency_iou,
            g.swap_success
                .map_or(ca_eval::report::NO_SWAPS.to_string(), |v| format!("{v:.3}"))
        );
    }
    println!(
        "wrote {} ({} images, {:.1} s)",
        out.display(),
        set.len(),
        t0.elapsed().as_secs_f64()
    );
    Ok(())
}

/// The separation line of the summary.
/// `--all-images` evaluates every image of `--data`, so none may be one the run trained on:
/// without `--data` (the run's own data holds its training split) it is refused, and otherwise
/// the pixels of every image are compared with those of the run's training split (content
/// digests at the run's geometry), so a copy or an export of the same images is refused too.
fn refuse_training_images(
    cfg: &ca_train::config::RunConfig,
    data: Option<&Path>,
    set: &ca_data::EvalSet,
) -> anyhow::Result<()> {
    let Some(root) = data else {
        bail!(
            "--all-images evaluates every image, and the run's own data holds its training split: give --data ROOT with images the run never trained on, or drop --all-images to evaluate the held-out split"
        );
    };
    let own = cfg.data.open().context(
        "--all-images checks that --data holds none of the run's training images, and the run's own data (its config.toml [data]) cannot be opened",
    )?;
    let trained: std::collections::HashSet<u64> =
        ca_data::image_digests(own.as_ref(), Split::Train)?
            .into_iter()
            .collect();
    let seen: Vec<usize> = ca_data::tensor_digests(&set.images)?
        .iter()
        .enumerate()
        .filter(|(_, d)| trained.contains(d))
        .map(|(i, _)| i)
        .collect();
    if let Some(&first) = seen.first() {
        let hint = match &cfg.data {
            ca_data::DataConfig::Synthetic(s) => format!(
                " (the run trained on the synthetic benchmark of data.seed = {}: export it with another --seed)",
                s.seed
            ),
            _ => String::new(),
        };
        bail!(
            "--all-images: {} of the {} images of '{}' are images the run trained on (e.g. '{}'), so they are not held out{hint}; evaluate images the run never saw, or drop --all-images",
            seen.len(),
            set.len(),
            root.display(),
            set.files[first]
        );
    }
    Ok(())
}

fn print_separation(sep: &eval::Separation) {
    let acc = |p: Option<eval::Probe>| p.map_or("-".to_string(), |p| format!("{:.3}", p.accuracy));
    println!(
        "salient from s {} / from z {}; dataset from z {}; common from z {}",
        acc(sep.salient_from_s),
        acc(sep.salient_from_z),
        acc(sep.dataset_from_z),
        acc(sep.common_from_z)
    );
}

/// The name of a `--compare` folder in the report's columns: a run directory's own name, or
/// `RUN/FOLDER` for an evaluation folder (`run-a/eval-diffusion_guidance=0.5`).
fn eval_name(dir: &std::path::Path) -> String {
    if report::is_eval_folder(dir)
        && let Some(parent) = dir.parent().filter(|p| p.file_name().is_some())
    {
        return format!("{}/{}", run_name(parent), run_name(dir));
    }
    run_name(dir)
}

/// The last component of a run directory (its name in the report's columns).
fn run_name(dir: &std::path::Path) -> String {
    dir.file_name().map_or_else(
        || dir.display().to_string(),
        |n| n.to_string_lossy().to_string(),
    )
}
