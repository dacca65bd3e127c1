//! Step timer for `cargo xtask bench`: times one row of `benches/rows.toml` — a
//! training step, DDIM decoding or encoding — exactly as the library runs it, and prints one
//! JSON line (median / mean / min step time, peak RSS, parameter count of every network).
//!
//! The PyTorch references in `benches/reference/` read the same `rows.toml` and print the same
//! line, so `cargo xtask bench` can put both side by side (it refuses a row whose parameter
//! counts differ).
//!
//! ```text
//! cargo bench -p ca-train --bench steps -- --row gan-style-32 --threads 2 --steps 10 --warmup 2
//! target/release/deps/steps-* --row diffusion-32 --device cuda --json
//! ```
//!
//! Flags: `--row NAME` (required; `--list` prints the rows), `--threads N` (0 = libtorch's
//! default), `--steps N` / `--warmup N` (default: the row's), `--device cpu|cuda`,
//! `--rows FILE` (default `benches/rows.toml`, found from the current directory upwards, then
//! from this crate's source folder), `--json` (accepted for symmetry: the output is always JSON).
//! Training steps run `TrainStep::train_step` then `TrainStep::update_ema` (what
//! `ca_train::run::train` does per step, minus data loading and logging), on a fixed random
//! batch of the preset's batch size (background rows first, as the loader orders them).

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::time::Instant;

use ca_models::{CaCode, ImageGeometry};
use ca_train::config::RunConfig;
use ca_train::run::build_step;
use serde::Deserialize;
use tch::{Device, Kind, Tensor};

/// One row of `benches/rows.toml`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct Row {
    name: String,
    kind: String,
    config: String,
    #[serde(default)]
    set: Vec<String>,
    steps: usize,
    warmup: usize,
}

#[derive(Debug, Deserialize)]
struct RowsFile {
    row: Vec<Row>,
}

/// Command-line options.
#[derive(Debug)]
struct Args {
    row: Option<String>,
    list: bool,
    threads: i32,
    steps: Option<usize>,
    warmup: Option<usize>,
    device: String,
    rows: Option<PathBuf>,
}

fn parse_args(argv: &[String]) -> Result<Args, String> {
    let mut a = Args {
        row: None,
        list: false,
        threads: 0,
        steps: None,
        warmup: None,
        device: "cpu".into(),
        rows: None,
    };
    let mut it = argv.iter();
    while let Some(flag) = it.next() {
        let mut value = |name: &str| {
            it.next()
                .cloned()
                .ok_or_else(|| format!("{name} needs a value"))
        };
        let num = |name: &str, v: String| {
            v.parse::<usize>()
                .map_err(|_| format!("{name}: `{v}` is not a non-negative integer"))
        };
        match flag.as_str() {
            "--row" => a.row = Some(value("--row")?),
            "--threads" => a.threads = num("--threads", value("--threads")?)? as i32,
            "--steps" => a.steps = Some(num("--steps", value("--steps")?)?),
            "--warmup" => a.warmup = Some(num("--warmup", value("--warmup")?)?),
            "--device" => a.device = value("--device")?,
            "--rows" => a.rows = Some(PathBuf::from(value("--rows")?)),
            "--list" => a.list = true,
            // `cargo bench` passes `--bench`; `--json` is the only output format.
            "--json" | "--bench" => {}
            other => return Err(format!("unknown argument `{other}` (see the module docs)")),
        }
    }
    Ok(a)
}

/// `benches/rows.toml`: from the current directory upwards, then from this crate's sources.
fn find_rows(given: Option<&Path>) -> Result<PathBuf, String> {
    if let Some(p) = given {
        return Ok(p.to_path_buf());
    }
    let mut dir = std::env::current_dir().map_err(|e| e.to_string())?;
    loop {
        let cand = dir.join("benches/rows.toml");
        if cand.is_file() {
            return Ok(cand);
        }
        if !dir.pop() {
            break;
        }
    }
    let fallback = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../benches/rows.toml");
    if fallback.is_file() {
        return Ok(fallback);
    }
    Err("benches/rows.toml not found; pass --rows FILE".into())
}

/// Peak resident set size of this process in MiB (`VmHWM`), 0 if unknown.
fn peak_rss_mb() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<f64>().ok())
        })
        .map_or(0.0, |kb| kb / 1024.0)
}

/// Reset the peak RSS to the current RSS (Linux >= 4.0), so setup transients do not count.
fn reset_peak_rss() {
    let _ = std::fs::write("/proc/self/clear_refs", "5");
}

/// Trainable parameter counts grouped by the first component of the name (`g.`, `d.`, `e.`,
/// `unet.`, ...), leaving out EMA copies.
fn param_counts(tensors: &[(String, Tensor)]) -> BTreeMap<String, i64> {
    let mut out = BTreeMap::new();
    for (name, t) in tensors {
        let net = name.split('.').next().unwrap_or(name);
        if net.ends_with("_ema") || net.starts_with("opt") || !t.requires_grad() {
            continue;
        }
        *out.entry(net.to_string()).or_insert(0) += t.numel() as i64;
    }
    out
}

fn median(v: &[f64]) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    let n = s.len();
    if n == 0 {
        return f64::NAN;
    }
    if n % 2 == 1 {
        s[n / 2]
    } else {
        (s[n / 2 - 1] + s[n / 2]) / 2.0
    }
}

fn sync(device: Device) {
    if let Device::Cuda(i) = device {
        tch::Cuda::synchronize(i as i64);
    }
}

/// Run `f` `warmup + steps` times; the step times (seconds) of the last `steps`.
fn time_it(device: Device, warmup: usize, steps: usize, mut f: impl FnMut(u64)) -> Vec<f64> {
    for k in 0..warmup {
        f(k as u64);
    }
    sync(device);
    (0..steps)
        .map(|k| {
            let t0 = Instant::now();
            f((warmup + k) as u64);
            sync(device);
            t0.elapsed().as_secs_f64()
        })
        .collect()
}

fn main() {
    // The same allocator settings as the `ca` binary (ca_train::malloc).
    ca_train::malloc::tune_for_training();
    if let Err(e) = real_main() {
        eprintln!("steps: {e}");
        std::process::exit(2);
    }
}

fn real_main() -> Result<(), String> {
    let argv: Vec<String> = std::env::args().skip(1).collect();
    let args = parse_args(&argv)?;
    let rows_path = find_rows(args.rows.as_deref())?;
    let text = std::fs::read_to_string(&rows_path)
        .map_err(|e| format!("cannot read '{}': {e}", rows_path.display()))?;
    let rows: RowsFile =
        toml::from_str(&text).map_err(|e| format!("'{}': {e}", rows_path.display()))?;
    if args.list {
        for r in &rows.row {
            println!("{}", r.name);
        }
        return Ok(());
    }
    let name = args.row.as_deref().ok_or("--row NAME is required")?;
    let row = rows
        .row
        .iter()
        .find(|r| r.name == name)
        .ok_or_else(|| format!("no row `{name}` in '{}'", rows_path.display()))?
        .clone();
    // Config paths are relative to the workspace root (the folder holding `benches/`).
    let root = rows_path
        .parent()
        .and_then(Path::parent)
        .unwrap_or(Path::new("."));
    let cfg = RunConfig::load(&root.join(&row.config), &row.set).map_err(|e| e.to_string())?;
    let device = match args.device.as_str() {
        "cpu" => Device::Cpu,
        "cuda" => {
            if !tch::Cuda::is_available() {
                return Err("--device cuda: CUDA is not available to libtorch".into());
            }
            tch::Cuda::cudnn_set_benchmark(true);
            Device::Cuda(0)
        }
        other => return Err(format!("--device `{other}`: expected cpu or cuda")),
    };
    if args.threads > 0 {
        tch::set_num_threads(args.threads);
    }
    let common = cfg.data.common().map_err(|e| e.to_string())?;
    let geom = ImageGeometry {
        channels: common.channels as i64,
        size: common.size as i64,
    };
    let steps = args.steps.unwrap_or(row.steps).max(1);
    let warmup = args.warmup.unwrap_or(row.warmup);
    let mut step_fn = build_step(&cfg, geom, device).map_err(|e| e.to_string())?;

    tch::manual_seed(1234);
    let (times, batch, unit, params) = match row.kind.as_str() {
        "train" => {
            let b = cfg.train.batch_size as i64;
            let n_t = (b as f64 * common.target_fraction).round() as i64;
            let n_bg = b - n_t;
            let x = Tensor::rand(
                [b, geom.channels, geom.size, geom.size],
                (Kind::Float, device),
            ) * 2.0
                - 1.0;
            let decay = ca_train::ema::decay_for_half_life(
                cfg.train.ema_half_life_images,
                cfg.train.batch_size,
            );
            let params = param_counts(&step_fn.state_tensors());
            reset_peak_rss();
            let times = time_it(device, warmup, steps, |k| {
                let stats = step_fn.train_step(&x, n_bg, k).expect("training step");
                step_fn.update_ema(decay);
                drop(stats);
            });
            (times, b, "step", params)
        }
        "ddim" | "encode" => {
            let tensors = step_fn.model_tensors();
            let all = param_counts(&tensors);
            let map: HashMap<String, Tensor> = tensors.into_iter().collect();
            drop(step_fn);
            let file = Path::new("<bench>");
            let model = ca_train::family::load_model(&cfg, geom, &map, file, device)
                .map_err(|e| e.to_string())?;
            drop(map);
            // The networks a row runs: the decoder for DDIM, the encoder for encoding.
            let keep: &[&str] = if row.kind == "ddim" {
                &["unet"]
            } else {
                &["e", "enc", "d"]
            };
            let params: BTreeMap<String, i64> = all
                .into_iter()
                .filter(|(k, _)| keep.contains(&k.as_str()))
                .collect();
            if row.kind == "ddim" {
                // CaModel::decode: apply.diffusion_ddim_steps (default 50) deterministic steps, x0 clipped.
                let b = 16;
                let code = CaCode::new(
                    Tensor::randn([b, model.dz()], (Kind::Float, device)),
                    Tensor::randn([b, model.ds()], (Kind::Float, device)),
                );
                reset_peak_rss();
                let times = time_it(device, warmup, steps, |k| {
                    let _ = model.decode(&code, k);
                });
                (times, b, "sample", params)
            } else {
                let b = cfg.eval.batch_size as i64;
                let x = Tensor::rand(
                    [b, geom.channels, geom.size, geom.size],
                    (Kind::Float, device),
                ) * 2.0
                    - 1.0;
                reset_peak_rss();
                let times = time_it(device, warmup, steps, |_| {
                    let _ = model.encode(&x);
                });
                (times, b, "batch", params)
            }
        }
        other => return Err(format!("row `{}`: unknown kind `{other}`", row.name)),
    };
    // What a `ddim` row's sample costs depends on its step count: both sides report it.
    let ddim_steps = if row.kind == "ddim" {
        cfg.apply.diffusion_ddim_steps.to_string()
    } else {
        "null".to_string()
    };
    let med = median(&times);
    let mean = times.iter().sum::<f64>() / times.len() as f64;
    let min = times.iter().copied().fold(f64::INFINITY, f64::min);
    let params_json: Vec<String> = params.iter().map(|(k, v)| format!("\"{k}\":{v}")).collect();
    let times_json: Vec<String> = times.iter().map(|t| format!("{t:.6}")).collect();
    println!(
        "{{\"row\":\"{}\",\"impl\":\"rust\",\"device\":\"{}\",\"threads\":{},\"batch\":{},\"ddim_steps\":{ddim_steps},\"unit\":\"{unit}\",\"steps\":{},\"warmup\":{warmup},\"median_s\":{med:.6},\"mean_s\":{mean:.6},\"min_s\":{min:.6},\"items_per_s\":{:.3},\"peak_rss_mb\":{:.1},\"params\":{{{}}},\"times_s\":[{}]}}",
        row.name,
        args.device,
        tch::get_num_threads(),
        batch,
        times.len(),
        batch as f64 / med,
        peak_rss_mb(),
        params_json.join(","),
        times_json.join(",")
    );
    Ok(())
}
