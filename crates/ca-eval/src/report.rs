//! Writing an evaluation: `metrics.json`, `report.md`, `report.html` (grids inline as base64 PNG
//! data URIs) and the grid PNGs, into `RUN/eval/`; reading another run's `metrics.json` for the
//! side-by-side comparison.

use std::path::{Path, PathBuf};

use crate::evaluate::{EvalError, Evaluation, Result};
use crate::schema::{Metrics, Probe, ProbeEntry, SeparationReport};

/// The report's cell for the swap rates when no swap was made (`null` in `metrics.json`).
pub const NO_SWAPS: &str = "null: no swaps (no background rows evaluated)";

/// The files `ca eval` writes besides the grid PNGs.
pub const REPORT_FILES: [&str; 3] = ["metrics.json", "report.md", "report.html"];

fn io<'a>(what: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> EvalError + 'a {
    move |source| EvalError::Io {
        what,
        path: path.to_path_buf(),
        source,
    }
}

/// The folder an evaluation of `run_dir` writes to: `RUN/eval/` for the checkpoint the run
/// serves (its latest), `RUN/eval-ckpt-NNNNNNN/` for one picked by step with `ca eval
/// --checkpoint`, so an earlier checkpoint's numbers never mix with the latest's; other edit
/// settings (`ca eval --set apply.KEY=VALUE`) add `-KEY=VALUE` per setting
/// (`RUN/eval-diffusion_guidance=0.5/`), so they never mix with the run's own either.
pub fn eval_dir(run_dir: &Path, checkpoint: Option<&str>, apply_sets: &[String]) -> PathBuf {
    let mut name = match checkpoint {
        None => "eval".to_string(),
        Some(folder) => format!("eval-{folder}"),
    };
    for set in apply_sets {
        name.push('-');
        name.push_str(&set_slug(set));
    }
    run_dir.join(name)
}

/// A `--set apply.KEY=VALUE` as a folder-name part: `KEY=VALUE` without `apply.` and quotes,
/// characters other than letters, digits, `.`, `_`, `-` and `=` replaced by `_`
/// (`apply.diffusion_edit="inpaint"` -> `diffusion_edit=inpaint`).
fn set_slug(set: &str) -> String {
    let (key, value) = set.split_once('=').unwrap_or((set, ""));
    let key = key.trim();
    let key = key.strip_prefix("apply.").unwrap_or(key);
    let value = value.trim().trim_matches(|c| c == '"' || c == '\'');
    format!("{key}={value}")
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | '=') {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// The evaluation folder `dir` (from [`eval_dir`]), created if absent. An existing folder with
/// files other than `separation.json` is refused unless `force` (then only the files the
/// evaluation writes are overwritten).
pub fn prepare_eval_dir(dir: &Path, force: bool) -> Result<PathBuf> {
    let dir = dir.to_path_buf();
    if dir.exists() && !force {
        let entries = std::fs::read_dir(&dir).map_err(io("cannot read", &dir))?;
        // `separation.json` of `ca eval --separation-only` is not this evaluation's file: a
        // quick check first does not block the full evaluation.
        let mut others = entries
            .filter_map(|e| e.ok())
            .filter(|e| e.file_name() != SEPARATION_FILE);
        if others.next().is_some() {
            return Err(EvalError::Invalid(format!(
                "'{}' exists and is not empty; refusing to overwrite a previous evaluation. Pass --force to overwrite the files ca eval writes there (other files are kept)",
                dir.display()
            )));
        }
    }
    std::fs::create_dir_all(&dir).map_err(io("cannot create", &dir))?;
    Ok(dir)
}

/// The file `ca eval --separation-only` writes into the evaluation folder ([`eval_dir`]).
pub const SEPARATION_FILE: &str = "separation.json";

/// The path of `separation.json` in the evaluation folder `dir` (from [`eval_dir`]), the folder
/// created if absent. An existing file is refused unless `force`; called before the probes, so a
/// refusal costs no work. The rest of the folder is never touched.
pub fn prepare_separation_file(dir: &Path, force: bool) -> Result<PathBuf> {
    let path = dir.join(SEPARATION_FILE);
    if path.exists() && !force {
        return Err(EvalError::Invalid(format!(
            "'{}' exists; refusing to overwrite a previous evaluation. Pass --force to replace it",
            path.display()
        )));
    }
    std::fs::create_dir_all(dir).map_err(io("cannot create", dir))?;
    Ok(path)
}

/// Write `report` to `path` (from [`prepare_separation_file`]).
pub fn write_separation(path: &Path, report: &SeparationReport) -> Result<()> {
    write_json(path, report)
}

/// `value` as pretty JSON with a final newline.
fn write_json<T: serde::Serialize>(path: &Path, value: &T) -> Result<()> {
    let json = serde_json::to_string_pretty(value).map_err(|source| EvalError::Json {
        path: path.to_path_buf(),
        source,
    })?;
    std::fs::write(path, json + "\n").map_err(io("cannot write", path))
}

/// Whether `dir` is an evaluation folder (`RUN/eval/`, `RUN/eval-ckpt-.../`, an `ca eval --out`
/// folder: it holds a `metrics.json`) rather than a run directory.
pub fn is_eval_folder(dir: &Path) -> bool {
    dir.join("metrics.json").exists()
}

/// Read another evaluation's `metrics.json`: `DIR/metrics.json` when `DIR` is an evaluation
/// folder, else `DIR/eval/metrics.json` of a run directory (a missing file is an error naming
/// it).
pub fn read_metrics(run_dir: &Path) -> Result<Metrics> {
    let path = if is_eval_folder(run_dir) {
        run_dir.join("metrics.json")
    } else {
        run_dir.join("eval").join("metrics.json")
    };
    if !path.exists() {
        return Err(EvalError::Invalid(format!(
            "'{}' does not exist: run `ca eval --run {}` first (or name an evaluation folder holding a metrics.json)",
            path.display(),
            run_dir.display()
        )));
    }
    let text = std::fs::read_to_string(&path).map_err(io("cannot read", &path))?;
    serde_json::from_str(&text).map_err(|source| EvalError::Json { path, source })
}

/// Write the evaluation into `dir` (see [`prepare_eval_dir`]): `metrics.json`, the grid PNGs,
/// `report.md` and `report.html`, with `compare` (name, metrics) as extra columns of the tables.
/// `name` labels this run's column. Returns the written paths.
pub fn write_eval(
    dir: &Path,
    name: &str,
    ev: &Evaluation,
    compare: &[(String, Metrics)],
) -> Result<Vec<PathBuf>> {
    let mut written = Vec::new();
    let p = dir.join("metrics.json");
    write_json(&p, &ev.metrics)?;
    written.push(p);
    let mut figures = Vec::new();
    for g in &ev.grids {
        let p = dir.join(format!("{}.png", g.name));
        ca_data::grid::save_grid(&g.images, g.ncol, &p)?;
        let bytes = std::fs::read(&p).map_err(io("cannot read", &p))?;
        figures.push((g.name.clone(), g.caption.clone(), base64(&bytes)));
        written.push(p);
    }
    let mut runs: Vec<(&str, &Metrics)> = vec![(name, &ev.metrics)];
    runs.extend(compare.iter().map(|(n, m)| (n.as_str(), m)));
    let sections = tables(&runs);

    let mut md = format!("# Evaluation of {name}\n\n");
    md.push_str(
        "Metrics of docs/design.md section 6; `metrics.json` holds the same numbers. Probes: k-fold logistic regression (accuracy ± std over folds, chance = majority class) or ridge R².\n\n",
    );
    for s in &sections {
        md.push_str(&format!("## {}\n\n{}\n\n", s.title, s.note));
        md.push_str(&format!(
            "| metric | {} |\n|---|{}\n",
            runs.iter().map(|r| r.0).collect::<Vec<_>>().join(" | "),
            "---|".repeat(runs.len())
        ));
        for (label, vals) in &s.rows {
            md.push_str(&format!("| {label} | {} |\n", vals.join(" | ")));
        }
        md.push('\n');
    }
    md.push_str("## Grids\n\n");
    for g in &ev.grids {
        md.push_str(&format!(
            "![{}]({}.png)\n\n*{}*\n\n",
            g.name, g.name, g.caption
        ));
    }
    let p = dir.join("report.md");
    std::fs::write(&p, md).map_err(io("cannot write", &p))?;
    written.push(p);

    let mut html = format!(
        "<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>Evaluation of {}</title>\n<style>body{{font-family:sans-serif;max-width:1100px;margin:auto}}table{{border-collapse:collapse;margin-bottom:1em}}td,th{{border:1px solid #ccc;padding:3px 8px;text-align:right}}td:first-child{{text-align:left}}img{{image-rendering:pixelated;max-width:100%}}figure{{margin:1em 0}}</style></head><body>\n<h1>Evaluation of {}</h1>\n",
        esc(name),
        esc(name)
    );
    for s in &sections {
        html.push_str(&format!(
            "<h2>{}</h2>\n<p>{}</p>\n<table><tr><th>metric</th>",
            esc(&s.title),
            esc(&s.note)
        ));
        for r in &runs {
            html.push_str(&format!("<th>{}</th>", esc(r.0)));
        }
        html.push_str("</tr>\n");
        for (label, vals) in &s.rows {
            html.push_str(&format!("<tr><td>{}</td>", esc(label)));
            for v in vals {
                html.push_str(&format!("<td>{}</td>", esc(v)));
            }
            html.push_str("</tr>\n");
        }
        html.push_str("</table>\n");
    }
    html.push_str("<h2>Grids</h2>\n");
    for (name, caption, b64) in &figures {
        html.push_str(&format!(
            "<figure><img alt=\"{}\" style=\"zoom:3\" src=\"data:image/png;base64,{}\"><figcaption>{}</figcaption></figure>\n",
            esc(name),
            b64,
            esc(caption)
        ));
    }
    html.push_str("</body></html>\n");
    let p = dir.join("report.html");
    std::fs::write(&p, html).map_err(io("cannot write", &p))?;
    written.push(p);
    Ok(written)
}

struct Section {
    title: String,
    note: String,
    rows: Vec<(String, Vec<String>)>,
}

fn f3(v: f64) -> String {
    if v.is_finite() {
        format!("{v:.3}")
    } else {
        "—".into()
    }
}

fn opt(v: Option<f64>) -> String {
    v.map_or_else(|| "—".into(), f3)
}

fn probe(p: Option<&Probe>) -> String {
    p.map_or_else(
        || "—".into(),
        |p| {
            format!(
                "{} ± {} (chance {})",
                f3(p.accuracy),
                f3(p.std),
                f3(p.chance)
            )
        },
    )
}

fn entry(e: Option<&ProbeEntry>) -> String {
    match e {
        None => "—".into(),
        Some(ProbeEntry::Classifier(p)) => format!("acc {}", probe(Some(p))),
        Some(ProbeEntry::Regression { r2, std }) => format!("R² {} ± {}", f3(*r2), f3(*std)),
    }
}

/// The report tables: one row per metric, one column per run.
fn tables(runs: &[(&str, &Metrics)]) -> Vec<Section> {
    let mut out = vec![
        run_section(runs),
        separation_section(runs),
        ground_truth_section(runs),
    ];
    out.extend(probe_matrix_sections(runs));
    out.push(reconstruction_section(runs));
    out.push(quality_section(runs));
    out
}

/// One table row: `label` and `f` of each run.
fn row(
    runs: &[(&str, &Metrics)],
    label: &str,
    f: &dyn Fn(&Metrics) -> String,
) -> (String, Vec<String>) {
    (label.to_string(), runs.iter().map(|(_, m)| f(m)).collect())
}

fn run_section(runs: &[(&str, &Metrics)]) -> Section {
    let row = |label: &str, f: &dyn Fn(&Metrics) -> String| row(runs, label, f);
    Section {
        title: "Run".into(),
        note: "The evaluated checkpoint and data.".into(),
        rows: vec![
            row("model", &|m| m.model.clone()),
            row("dataset", &|m| m.dataset.clone()),
            row("training steps", &|m| m.steps.to_string()),
            row("training wall clock (s)", &|m| {
                format!("{:.1}", m.wall_clock_s)
            }),
            row("images (background / target)", &|m| {
                m.eval.as_ref().map_or("—".into(), |e| {
                    format!("{} / {} ({} split)", e.n_background, e.n_target, e.split)
                })
            }),
            row("edit settings ([apply])", &|m| {
                m.eval
                    .as_ref()
                    .and_then(|e| e.apply.as_ref())
                    .map_or("—".into(), |a| a.describe(&m.model))
            }),
            row("environment overrides", &|m| {
                m.eval
                    .as_ref()
                    .filter(|e| !e.env_overrides.is_empty())
                    .map_or("none".into(), |e| e.env_overrides.join(", "))
            }),
            row("evaluation time (s)", &|m| {
                m.eval
                    .as_ref()
                    .map_or("—".into(), |e| format!("{:.1}", e.seconds))
            }),
        ],
    }
}

fn separation_section(runs: &[(&str, &Metrics)]) -> Section {
    let row = |label: &str, f: &dyn Fn(&Metrics) -> String| row(runs, label, f);
    let label = |m: &Metrics, salient: bool| {
        let l = if salient {
            &m.separation.salient_label
        } else {
            &m.separation.common_label
        };
        l.clone().unwrap_or_else(|| "—".into())
    };
    Section {
        title: "Separation probes".into(),
        note: "Salient labels should be predictable from s and near chance from z; background vs target near chance from z; common labels predictable from z.".into(),
        rows: vec![
            row("salient label", &|m| label(m, true)),
            row("salient from s (target rows)", &|m| probe(m.separation.salient_from_s.as_ref())),
            row("salient from z (target rows)", &|m| probe(m.separation.salient_from_z.as_ref())),
            row("dataset from z", &|m| probe(m.separation.dataset_from_z.as_ref())),
            row("dataset from s", &|m| probe(m.separation.dataset_from_s.as_ref())),
            row("common label", &|m| label(m, false)),
            row("common from z", &|m| probe(m.separation.common_from_z.as_ref())),
            row("common from s", &|m| probe(m.separation.common_from_s.as_ref())),
        ],
    }
}

fn ground_truth_section(runs: &[(&str, &Metrics)]) -> Section {
    let row = |label: &str, f: &dyn Fn(&Metrics) -> String| row(runs, label, f);
    type Get = fn(&crate::schema::GroundTruth) -> f64;
    let gt_rows: [(&str, Get); 17] = [
        ("counterfactual PSNR (dB)", |g| {
            g.counterfactual.counterfactual_psnr_db
        }),
        ("identity baseline PSNR (dB)", |g| {
            g.counterfactual.identity_psnr_db
        }),
        ("flat baseline PSNR (dB)", |g| g.counterfactual.flat_psnr_db),
        ("counterfactual gain (dB)", |g| {
            g.counterfactual.counterfactual_gain_db
        }),
        ("counterfactual SSIM", |g| {
            g.counterfactual.counterfactual_ssim
        }),
        ("model error inside mask", |g| {
            g.counterfactual.mask_error_inside
        }),
        ("model error outside mask", |g| {
            g.counterfactual.mask_error_outside
        }),
        ("identity error inside mask", |g| {
            g.counterfactual.identity_error_inside
        }),
        ("identity error outside mask", |g| {
            g.counterfactual.identity_error_outside
        }),
        ("flat error inside mask", |g| {
            g.counterfactual.flat_error_inside
        }),
        ("flat error outside mask", |g| {
            g.counterfactual.flat_error_outside
        }),
        ("saliency IoU", |g| g.saliency_iou),
        ("saliency threshold", |g| g.saliency_threshold),
        ("swap success", |g| g.swap_success.unwrap_or(f64::NAN)),
        ("swaps judged target", |g| {
            g.swap_target_rate.unwrap_or(f64::NAN)
        }),
        ("counterparts judged background", |g| {
            g.counterpart_background_rate
        }),
        ("probe matrix factors", |g| {
            g.probe_matrix.values().map(|r| r.len()).max().unwrap_or(0) as f64
        }),
    ];
    Section {
        title: "Ground truth".into(),
        note: "Against the exact background counterparts and salient masks (target rows). Gain = model PSNR minus the better trivial baseline (unchanged input, flat median colour); errors are mean absolute errors on a 0-1 scale; the saliency threshold is chosen on the first half of the target rows, IoU reported on the second half; swap success = mean of the two rates, judged by the domain classifier.".into(),
        rows: gt_rows
            .iter()
            .map(|(l, get)| {
                row(l, &|m| {
                    m.ground_truth.as_ref().map_or("—".into(), |g| {
                        let v = get(g);
                        if l.starts_with("probe matrix") {
                            format!("{v}")
                        } else if l.starts_with("swap") && v.is_nan() {
                            NO_SWAPS.into()
                        } else {
                            f3(v)
                        }
                    })
                })
            })
            .collect(),
    }
}

fn probe_matrix_sections(runs: &[(&str, &Metrics)]) -> Vec<Section> {
    let row = |label: &str, f: &dyn Fn(&Metrics) -> String| row(runs, label, f);
    let mut out = Vec::new();
    for (lat, title) in [("z", "Probe matrix: from z"), ("s", "Probe matrix: from s")] {
        let mut factors: Vec<String> = Vec::new();
        for (_, m) in runs {
            if let Some(r) = m
                .ground_truth
                .as_ref()
                .and_then(|g| g.probe_matrix.get(lat))
            {
                for k in r.keys() {
                    if !factors.contains(k) {
                        factors.push(k.clone());
                    }
                }
            }
        }
        if factors.is_empty() {
            continue;
        }
        out.push(Section {
            title: title.into(),
            note: format!(
                "Each factor probed from {lat} (categorical: logistic accuracy; continuous: ridge R²), salient factors on target rows only."
            ),
            rows: factors
                .iter()
                .map(|f| {
                    row(f, &|m| {
                        entry(
                            m.ground_truth
                                .as_ref()
                                .and_then(|g| g.probe_matrix.get(lat))
                                .and_then(|r| r.get(f)),
                        )
                    })
                })
                .collect(),
        });
    }
    out
}

fn reconstruction_section(runs: &[(&str, &Metrics)]) -> Section {
    let row = |label: &str, f: &dyn Fn(&Metrics) -> String| row(runs, label, f);
    Section {
        title: "Reconstruction".into(),
        note: "PSNR (dB, 0-1 scale) of reconstructions: background rows with s = 0, target rows with their own s.".into(),
        rows: vec![
            row("background PSNR (dB)", &|m| opt(m.reconstruction.background_psnr_db)),
            row("target PSNR (dB)", &|m| opt(m.reconstruction.target_psnr_db)),
        ],
    }
}

fn quality_section(runs: &[(&str, &Metrics)]) -> Section {
    let row = |label: &str, f: &dyn Fn(&Metrics) -> String| row(runs, label, f);
    Section {
        title: "Image quality".into(),
        note: format!(
            "{} dfd / dkd: Fréchet and kernel distances between samples of both sets and the real images in the features of a background-vs-target CNN trained on the real evaluation images (domain distances, not FID).",
            if runs.first().is_some_and(|(_, m)| m.quality.fid.is_some()) {
                "FID / KID: Fréchet and kernel (unbiased cubic-polynomial MMD², mean of 100 subsets) distances between samples of both sets and the real images in the 2048-d pool3 features of the FID Inception-v3 (pt_inception-2015-12-05 weights)."
            } else {
                "FID / KID: not computed — the Inception weights are not installed; run `cargo xtask fetch-weights` (it writes them to $CA_WEIGHTS_DIR, default ~/.cache/ca/weights) and evaluate again."
            }
        ),
        rows: vec![
            row("FID", &|m| opt(m.quality.fid)),
            row("KID", &|m| opt(m.quality.kid)),
            row("dfd", &|m| opt(m.quality.dfd)),
            row("dkd", &|m| opt(m.quality.dkd)),
            row("domain classifier held-out accuracy", &|m| {
                opt(m.quality.domain_classifier_accuracy)
            }),
        ],
    }
}

/// HTML-escape text.
fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// Standard base64 (RFC 4648, with `=` padding).
pub fn base64(bytes: &[u8]) -> String {
    const A: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let v = (b[0] as u32) << 16 | (b[1] as u32) << 8 | b[2] as u32;
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(A[(v >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_matches_rfc4648_vectors() {
        for (i, o) in [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg=="),
            ("fooba", "Zm9vYmE="),
            ("foobar", "Zm9vYmFy"),
        ] {
            assert_eq!(base64(i.as_bytes()), o, "{i}");
        }
    }

    #[test]
    fn eval_dir_is_never_overwritten_silently() {
        let tmp = tempfile::tempdir().unwrap();
        let latest = eval_dir(tmp.path(), None, &[]);
        let dir = prepare_eval_dir(&latest, false).unwrap();
        assert_eq!(dir, tmp.path().join("eval"));
        // Empty: fine again.
        prepare_eval_dir(&latest, false).unwrap();
        std::fs::write(dir.join("metrics.json"), "{}").unwrap();
        std::fs::write(dir.join("notes.txt"), "mine").unwrap();
        let err = prepare_eval_dir(&latest, false).unwrap_err();
        assert!(err.to_string().contains("--force"), "{err}");
        // An earlier checkpoint's evaluation has its own folder.
        let earlier = eval_dir(tmp.path(), Some("ckpt-0004000"), &[]);
        assert_eq!(earlier, tmp.path().join("eval-ckpt-0004000"));
        // Other edit settings (`ca eval --set`) too, named after them in the order given.
        let sets = [
            "apply.diffusion_edit=\"inpaint\"".to_string(),
            " apply.diffusion_guidance = 0.5".to_string(),
            "apply.mask_scale=1/2 x".to_string(),
        ];
        assert_eq!(
            eval_dir(tmp.path(), None, &sets),
            tmp.path()
                .join("eval-diffusion_edit=inpaint-diffusion_guidance=0.5-mask_scale=1_2_x")
        );
        assert_eq!(
            eval_dir(tmp.path(), Some("ckpt-0004000"), &sets[1..2]),
            tmp.path().join("eval-ckpt-0004000-diffusion_guidance=0.5")
        );
        prepare_eval_dir(&earlier, false).unwrap();
        prepare_eval_dir(&latest, true).unwrap();
        assert!(dir.join("notes.txt").exists());
        // A missing comparison file is a clear error.
        let err = read_metrics(&tmp.path().join("nope")).unwrap_err();
        assert!(err.to_string().contains("metrics.json"), "{err}");
    }
}
