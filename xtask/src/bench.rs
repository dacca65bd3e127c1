//! `cargo xtask bench`: Rust against PyTorch, side by side.
//!
//! For each row of `benches/rows.toml` it runs the Rust step timer (the `steps` bench of
//! ca-train, built here with `cargo build --release -p ca-train --bench steps`) and the PyTorch
//! reference (`benches/reference/steps.py` under the provisioned interpreter), alternating
//! A B A B for `--rounds` rounds, each run a fresh process printing one JSON line. The table shows
//! the median step time of each side over all its timed steps, the ratio Rust / PyTorch, the
//! throughput and the peak RSS. A row whose parameter counts differ between the two sides is
//! refused (no ratio): that check is what shows both sides run the same architecture.
//! Then it runs the criterion benches of the data loader and the losses, checks that the loader
//! sustains at least 5x the images/s of the 64x64 training steps, and writes
//! `benches/RESULTS.md` (machine, date, threads, commit, load average).
//!
//! xtask links no libtorch: everything torch-related runs in subprocesses.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, bail};
use clap::Args;

use crate::util::cargo;

/// glibc's mmap threshold as the `ca` binary sets it (`ca_train::malloc::MMAP_THRESHOLD`; xtask
/// links no libtorch crate, so it is repeated here).
pub const MMAP_THRESHOLD: usize = 32 << 20;
/// glibc's trim threshold as the `ca` binary sets it (`ca_train::malloc::TRIM_THRESHOLD`).
pub const TRIM_THRESHOLD: usize = 256 << 20;

/// The allocator settings a pair of runs shares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Malloc {
    /// The `ca` binary's thresholds, given to both processes through glibc's environment
    /// variables (the Rust timer then leaves malloc alone, as `ca` does when they are set).
    Tuned,
    /// glibc's defaults on both sides.
    GlibcDefaults,
}

impl Malloc {
    /// Set up `cmd`'s environment for these settings (`rust`: the step timer, which tunes
    /// malloc itself unless told not to).
    pub fn apply(self, cmd: &mut Command, rust: bool) {
        for var in [
            "GLIBC_TUNABLES",
            "MALLOC_MMAP_THRESHOLD_",
            "MALLOC_TRIM_THRESHOLD_",
        ] {
            cmd.env_remove(var);
        }
        match self {
            Malloc::Tuned => {
                cmd.env("MALLOC_MMAP_THRESHOLD_", MMAP_THRESHOLD.to_string())
                    .env("MALLOC_TRIM_THRESHOLD_", TRIM_THRESHOLD.to_string());
            }
            Malloc::GlibcDefaults if rust => {
                cmd.env("CA_MALLOC_TUNING", "0");
            }
            Malloc::GlibcDefaults => {}
        }
    }
}

/// Options of `cargo xtask bench`.
#[derive(Args)]
pub struct Bench {
    /// Comma-separated rows of benches/rows.toml (default: all).
    #[arg(long, value_delimiter = ',')]
    pub rows: Vec<String>,
    /// Intra-op threads of both sides (torch.set_num_threads / tch::set_num_threads).
    #[arg(long, default_value_t = 2)]
    pub threads: usize,
    /// A B rounds per row (each side runs `rounds` times, alternating).
    #[arg(long, default_value_t = 2)]
    pub rounds: usize,
    /// Half the timed steps of every row and one round (a quick look, noisier).
    #[arg(long)]
    pub quick: bool,
    /// Device of both sides (`cuda` on a GPU machine, see `cargo xtask gpu-check`).
    #[arg(long, default_value = "cpu")]
    pub device: String,
    /// Python interpreter with PyTorch 2.11.
    #[arg(long, default_value = ".libtorch/venv/bin/python")]
    pub python: PathBuf,
    /// A prebuilt step timer (skip the cargo build; used on machines without Rust).
    #[arg(long)]
    pub steps_bin: Option<PathBuf>,
    /// Only the pair with the `ca` binary's malloc settings (skip the glibc-defaults pair).
    #[arg(long)]
    pub tuned_only: bool,
    /// Skip the criterion benches (loader, losses).
    #[arg(long)]
    pub no_criterion: bool,
    /// Print the table only; do not write the results file.
    #[arg(long)]
    pub no_write: bool,
    /// Results file.
    #[arg(long, default_value = "benches/RESULTS.md")]
    pub out: PathBuf,
}

/// A minimal JSON value: enough for the one-line reports of the step timers.
#[derive(Debug, Clone, PartialEq)]
pub enum Json {
    /// `null`.
    Null,
    /// `true` / `false`.
    Bool(bool),
    /// Any number.
    Num(f64),
    /// A string.
    Str(String),
    /// An array.
    Arr(Vec<Json>),
    /// An object, keys in order.
    Obj(Vec<(String, Json)>),
}

impl Json {
    /// Parse one JSON document (surrounding whitespace allowed).
    pub fn parse(text: &str) -> anyhow::Result<Json> {
        let b = text.as_bytes();
        let mut i = 0;
        let v = parse_value(b, &mut i)?;
        skip_ws(b, &mut i);
        if i != b.len() {
            bail!("trailing characters at byte {i}");
        }
        Ok(v)
    }

    /// The member `key` of an object.
    pub fn get(&self, key: &str) -> Option<&Json> {
        match self {
            Json::Obj(m) => m.iter().find(|(k, _)| k == key).map(|(_, v)| v),
            _ => None,
        }
    }

    /// The number, if this is one.
    pub fn num(&self) -> Option<f64> {
        match self {
            Json::Num(n) => Some(*n),
            _ => None,
        }
    }

    /// The string, if this is one.
    pub fn str(&self) -> Option<&str> {
        match self {
            Json::Str(s) => Some(s),
            _ => None,
        }
    }
}

fn skip_ws(b: &[u8], i: &mut usize) {
    while *i < b.len() && b[*i].is_ascii_whitespace() {
        *i += 1;
    }
}

fn parse_value(b: &[u8], i: &mut usize) -> anyhow::Result<Json> {
    skip_ws(b, i);
    let Some(&c) = b.get(*i) else {
        bail!("unexpected end of JSON");
    };
    match c {
        b'{' => {
            *i += 1;
            let mut m = Vec::new();
            skip_ws(b, i);
            if b.get(*i) == Some(&b'}') {
                *i += 1;
                return Ok(Json::Obj(m));
            }
            loop {
                skip_ws(b, i);
                let Json::Str(k) = parse_value(b, i)? else {
                    bail!("object key is not a string at byte {i}");
                };
                skip_ws(b, i);
                if b.get(*i) != Some(&b':') {
                    bail!("expected ':' at byte {i}");
                }
                *i += 1;
                m.push((k, parse_value(b, i)?));
                skip_ws(b, i);
                match b.get(*i) {
                    Some(b',') => *i += 1,
                    Some(b'}') => {
                        *i += 1;
                        return Ok(Json::Obj(m));
                    }
                    _ => bail!("expected ',' or '}}' at byte {i}"),
                }
            }
        }
        b'[' => {
            *i += 1;
            let mut v = Vec::new();
            skip_ws(b, i);
            if b.get(*i) == Some(&b']') {
                *i += 1;
                return Ok(Json::Arr(v));
            }
            loop {
                v.push(parse_value(b, i)?);
                skip_ws(b, i);
                match b.get(*i) {
                    Some(b',') => *i += 1,
                    Some(b']') => {
                        *i += 1;
                        return Ok(Json::Arr(v));
                    }
                    _ => bail!("expected ',' or ']' at byte {i}"),
                }
            }
        }
        b'"' => {
            *i += 1;
            let mut s = String::new();
            loop {
                let Some(&c) = b.get(*i) else {
                    bail!("unterminated string");
                };
                *i += 1;
                match c {
                    b'"' => return Ok(Json::Str(s)),
                    b'\\' => {
                        let Some(&e) = b.get(*i) else {
                            bail!("unterminated escape");
                        };
                        *i += 1;
                        match e {
                            b'n' => s.push('\n'),
                            b't' => s.push('\t'),
                            b'r' => s.push('\r'),
                            b'b' => s.push('\u{8}'),
                            b'f' => s.push('\u{c}'),
                            b'u' => {
                                let hex = std::str::from_utf8(b.get(*i..*i + 4).unwrap_or(&[]))?;
                                let code = u32::from_str_radix(hex, 16)?;
                                s.push(char::from_u32(code).unwrap_or('\u{fffd}'));
                                *i += 4;
                            }
                            other => s.push(other as char),
                        }
                    }
                    _ => {
                        // Copy a whole UTF-8 sequence.
                        let start = *i - 1;
                        let len = match c {
                            0x00..=0x7f => 1,
                            0xc0..=0xdf => 2,
                            0xe0..=0xef => 3,
                            _ => 4,
                        };
                        let end = (start + len).min(b.len());
                        s.push_str(std::str::from_utf8(&b[start..end])?);
                        *i = end;
                    }
                }
            }
        }
        b't' if b[*i..].starts_with(b"true") => {
            *i += 4;
            Ok(Json::Bool(true))
        }
        b'f' if b[*i..].starts_with(b"false") => {
            *i += 5;
            Ok(Json::Bool(false))
        }
        b'n' if b[*i..].starts_with(b"null") => {
            *i += 4;
            Ok(Json::Null)
        }
        _ => {
            let start = *i;
            while *i < b.len() && matches!(b[*i], b'-' | b'+' | b'.' | b'e' | b'E' | b'0'..=b'9') {
                *i += 1;
            }
            let t = std::str::from_utf8(&b[start..*i])?;
            Ok(Json::Num(t.parse().with_context(|| {
                format!("bad JSON value at byte {start}")
            })?))
        }
    }
}

/// One run of one side, as its JSON line reports it.
#[derive(Debug, Clone, PartialEq)]
pub struct RunReport {
    /// Row name.
    pub row: String,
    /// `rust` or `pytorch`.
    pub imp: String,
    /// Items per timed repetition (images or samples).
    pub batch: f64,
    /// What one repetition is (`step`, `sample`, `batch`).
    pub unit: String,
    /// Timed repetitions, seconds.
    pub times: Vec<f64>,
    /// Peak RSS, MiB.
    pub peak_rss_mb: f64,
    /// Peak GPU memory, MiB, where measured.
    pub peak_gpu_mb: Option<f64>,
    /// Trainable parameters per network.
    pub params: BTreeMap<String, i64>,
    /// DDIM steps per sample (`ddim` rows), as the side reports it.
    pub ddim_steps: Option<i64>,
}

impl RunReport {
    /// Read the last JSON line of a step timer's stdout.
    pub fn from_output(stdout: &str) -> anyhow::Result<RunReport> {
        let line = stdout
            .lines()
            .rev()
            .find(|l| l.trim_start().starts_with('{'))
            .context("no JSON line in the output")?;
        let j = Json::parse(line)?;
        let s = |k: &str| -> anyhow::Result<String> {
            Ok(j.get(k)
                .and_then(Json::str)
                .with_context(|| format!("`{k}` missing"))?
                .to_string())
        };
        let n = |k: &str| -> anyhow::Result<f64> {
            j.get(k)
                .and_then(Json::num)
                .with_context(|| format!("`{k}` missing"))
        };
        let times = match j.get("times_s") {
            Some(Json::Arr(v)) => v.iter().filter_map(Json::num).collect(),
            _ => bail!("`times_s` missing"),
        };
        let params = match j.get("params") {
            Some(Json::Obj(m)) => m
                .iter()
                .filter_map(|(k, v)| v.num().map(|n| (k.clone(), n as i64)))
                .collect(),
            _ => bail!("`params` missing"),
        };
        Ok(RunReport {
            row: s("row")?,
            imp: s("impl")?,
            batch: n("batch")?,
            unit: s("unit")?,
            times,
            peak_rss_mb: n("peak_rss_mb")?,
            peak_gpu_mb: j.get("peak_gpu_mb").and_then(Json::num),
            params,
            ddim_steps: j.get("ddim_steps").and_then(Json::num).map(|n| n as i64),
        })
    }
}

/// Median of a sample (NaN when empty).
pub fn median(v: &[f64]) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    match s.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => s[n / 2],
        n => (s[n / 2 - 1] + s[n / 2]) / 2.0,
    }
}

/// Both sides of one row, over all rounds.
#[derive(Debug, Clone)]
pub struct RowResult {
    /// Row name.
    pub row: String,
    /// The Rust runs.
    pub rust: Vec<RunReport>,
    /// The PyTorch runs.
    pub torch: Vec<RunReport>,
}

impl RowResult {
    fn all_times(runs: &[RunReport]) -> Vec<f64> {
        runs.iter().flat_map(|r| r.times.iter().copied()).collect()
    }
    /// Median step time of the Rust side.
    pub fn rust_median(&self) -> f64 {
        median(&Self::all_times(&self.rust))
    }
    /// Median step time of the PyTorch side.
    pub fn torch_median(&self) -> f64 {
        median(&Self::all_times(&self.torch))
    }
    /// `None` when both sides did the same work: the same parameter counts, batch size and
    /// DDIM step count (in every run); otherwise why the row is refused.
    pub fn mismatch(&self) -> Option<String> {
        let (a, b) = (self.rust.first()?, self.torch.first()?);
        if a.params != b.params {
            return Some(format!(
                "parameter counts differ: rust {} vs pytorch {}",
                fmt_params(&a.params),
                fmt_params(&b.params)
            ));
        }
        let all = || self.rust.iter().chain(&self.torch);
        if let Some(r) = all().find(|r| r.batch != a.batch) {
            return Some(format!(
                "batch sizes differ: {} {} vs rust {}",
                r.imp, r.batch, a.batch
            ));
        }
        if let Some(r) = all().find(|r| r.ddim_steps != a.ddim_steps) {
            return Some(format!(
                "DDIM step counts differ: {} {:?} vs rust {:?}",
                r.imp, r.ddim_steps, a.ddim_steps
            ));
        }
        None
    }
    /// Rust / PyTorch median time, unless refused.
    pub fn ratio(&self) -> Option<f64> {
        if self.mismatch().is_some() || self.rust.is_empty() || self.torch.is_empty() {
            return None;
        }
        Some(self.rust_median() / self.torch_median())
    }
    /// Items per second of the Rust side.
    pub fn rust_items_per_s(&self) -> f64 {
        self.rust.first().map_or(f64::NAN, |r| r.batch) / self.rust_median()
    }
}

fn fmt_params(p: &BTreeMap<String, i64>) -> String {
    p.iter()
        .map(|(k, v)| format!("{k} {v}"))
        .collect::<Vec<_>>()
        .join(", ")
}

fn max_of(runs: &[RunReport], f: impl Fn(&RunReport) -> Option<f64>) -> Option<f64> {
    runs.iter().filter_map(f).reduce(f64::max)
}

/// The markdown table of the rows: both sides with the same malloc settings (`rows`), and the
/// Rust / PyTorch ratio of the same rows under glibc's defaults on both sides (`untuned`, by
/// row name; "-" where not run).
pub fn markdown_table(rows: &[RowResult], untuned: &[RowResult]) -> String {
    let mut t = String::from(
        "| row | batch | Rust median | PyTorch median | Rust / PyTorch | same, glibc defaults | Rust items/s | PyTorch items/s | Rust peak RSS | PyTorch peak RSS | parameters (both) |\n|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|\n",
    );
    for r in rows {
        let plain = untuned
            .iter()
            .find(|u| u.row == r.row)
            .map_or("-".to_string(), |u| {
                u.ratio()
                    .map_or("refused".to_string(), |q| format!("{q:.2}"))
            });
        let (Some(a), Some(b)) = (r.rust.first(), r.torch.first()) else {
            continue;
        };
        let (rm, tm) = (r.rust_median(), r.torch_median());
        let gpu = |runs: &[RunReport]| {
            max_of(runs, |x| x.peak_gpu_mb)
                .map(|g| format!(" (GPU {g:.0} MiB)"))
                .unwrap_or_default()
        };
        let (ratio, params) = match (r.mismatch(), r.ratio()) {
            (Some(_), _) | (None, None) => ("refused".to_string(), why_or_missing(r)),
            (None, Some(q)) => (
                format!("**{q:.2}**"),
                format!(
                    "{} (total {})",
                    fmt_params(&a.params),
                    a.params.values().sum::<i64>()
                ),
            ),
        };
        let batch = match a.ddim_steps {
            Some(n) => format!("{} ({n} DDIM steps)", a.batch),
            None => a.batch.to_string(),
        };
        let _ = writeln!(
            t,
            "| {} | {} | {} | {} | {} | {} | {:.1} | {:.1} | {:.0} MiB{} | {:.0} MiB{} | {} |",
            r.row,
            batch,
            fmt_time(rm, &a.unit),
            fmt_time(tm, &b.unit),
            ratio,
            plain,
            a.batch / rm,
            b.batch / tm,
            max_of(&r.rust, |x| Some(x.peak_rss_mb)).unwrap_or(f64::NAN),
            gpu(&r.rust),
            max_of(&r.torch, |x| Some(x.peak_rss_mb)).unwrap_or(f64::NAN),
            gpu(&r.torch),
            params
        );
    }
    t
}

fn why_or_missing(r: &RowResult) -> String {
    r.mismatch()
        .unwrap_or_else(|| "a side has no result".to_string())
}

fn fmt_time(s: f64, unit: &str) -> String {
    if s >= 1.0 {
        format!("{s:.2} s/{unit}")
    } else {
        format!("{:.1} ms/{unit}", s * 1e3)
    }
}

/// A criterion result: benchmark id and throughput in elements per second (middle estimate).
#[derive(Debug, Clone, PartialEq)]
pub struct CriterionLine {
    /// `group/function`.
    pub name: String,
    /// Middle time estimate, as printed.
    pub time: String,
    /// Elements per second, when the bench declares a throughput.
    pub elems_per_s: Option<f64>,
}

/// Parse criterion's text report (`name  time: [lo mid hi]`, optional `thrpt: [..]`).
pub fn parse_criterion(text: &str) -> Vec<CriterionLine> {
    let mut out: Vec<CriterionLine> = Vec::new();
    let mut prev = "";
    for line in text.lines() {
        let mid = |rest: &str| -> Option<(f64, String)> {
            let inner = rest.split('[').nth(1)?.split(']').next()?;
            let toks: Vec<&str> = inner.split_whitespace().collect();
            if toks.len() != 6 {
                return None;
            }
            Some((toks[2].parse().ok()?, toks[3].to_string()))
        };
        if let Some(pos) = line.find("time:") {
            let name = line[..pos].trim();
            let name = if name.is_empty() { prev.trim() } else { name };
            if let Some((v, u)) = mid(&line[pos..]) {
                out.push(CriterionLine {
                    name: name.to_string(),
                    time: format!("{v} {u}"),
                    elems_per_s: None,
                });
            }
        } else if let Some(pos) = line.find("thrpt:")
            && let Some((v, u)) = mid(&line[pos..])
            && let Some(last) = out.last_mut()
        {
            let scale = match u.as_str() {
                "elem/s" => 1.0,
                "Kelem/s" => 1e3,
                "Melem/s" => 1e6,
                "Gelem/s" => 1e9,
                _ => f64::NAN,
            };
            last.elems_per_s = Some(v * scale);
        }
        if !line.trim().is_empty() {
            prev = line;
        }
    }
    out
}

/// The loader check: the slowest loader rate against 5x the fastest 64x64 training step
/// consumption. `None` when either side is missing.
pub fn loader_check(loader: &[CriterionLine], rows: &[RowResult]) -> Option<(f64, f64, bool)> {
    let load = loader
        .iter()
        .filter(|c| c.name.starts_with("folder_loader"))
        .filter_map(|c| c.elems_per_s)
        .reduce(f64::min)?;
    let need = rows
        .iter()
        .filter(|r| r.row.ends_with("-64") && r.rust.first().is_some_and(|a| a.unit == "step"))
        .map(RowResult::rust_items_per_s)
        .reduce(f64::max)?;
    Some((load, need, load >= 5.0 * need))
}

fn sh(cmd: &str, args: &[&str]) -> String {
    Command::new(cmd)
        .args(args)
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default()
}

/// CPU model from /proc/cpuinfo.
fn cpu_model() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|m| m.trim().to_string())
        })
        .unwrap_or_else(|| "unknown CPU".into())
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

/// Row names of benches/rows.toml, in file order.
fn row_names(root: &Path) -> anyhow::Result<Vec<String>> {
    let path = root.join("benches/rows.toml");
    let t: toml::Table = std::fs::read_to_string(&path)
        .with_context(|| format!("cannot read {}", path.display()))?
        .parse()?;
    Ok(t.get("row")
        .and_then(|r| r.as_array())
        .map(|a| {
            a.iter()
                .filter_map(|r| r.get("name").and_then(|n| n.as_str()).map(String::from))
                .collect()
        })
        .unwrap_or_default())
}

/// Build the Rust step timer; its executable path (from cargo's JSON messages).
pub fn build_steps(root: &Path) -> anyhow::Result<PathBuf> {
    let out = cargo()
        .args([
            "build",
            "--release",
            "-p",
            "ca-train",
            "--bench",
            "steps",
            "--message-format=json-render-diagnostics",
        ])
        .current_dir(root)
        .stderr(std::process::Stdio::inherit())
        .output()
        .context("could not run cargo build")?;
    if !out.status.success() {
        bail!("cargo build --release -p ca-train --bench steps failed");
    }
    executable_from_messages(&String::from_utf8_lossy(&out.stdout), "steps")
        .context("cargo did not report the `steps` bench executable")
}

/// The `executable` of the compiler artifact whose target is named `name`.
pub fn executable_from_messages(messages: &str, name: &str) -> Option<PathBuf> {
    messages.lines().rev().find_map(|l| {
        let j = Json::parse(l).ok()?;
        if j.get("reason")?.str()? != "compiler-artifact" {
            return None;
        }
        if j.get("target")?.get("name")?.str()? != name {
            return None;
        }
        Some(PathBuf::from(j.get("executable")?.str()?))
    })
}

fn run_side(mut cmd: Command, what: &str) -> anyhow::Result<RunReport> {
    let shown = format!("{cmd:?}");
    eprintln!("$ {shown}");
    let out = cmd
        .output()
        .with_context(|| format!("could not start {what}"))?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        bail!(
            "{what} failed ({}):\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    RunReport::from_output(&stdout).with_context(|| format!("{what}: {stdout}"))
}

impl Bench {
    /// Run the benchmark.
    pub fn run(&self, root: &Path) -> anyhow::Result<()> {
        let steps_bin = match &self.steps_bin {
            Some(p) => p.clone(),
            None => build_steps(root)?,
        };
        let all = row_names(root)?;
        let rows: Vec<String> = if self.rows.is_empty() {
            all.clone()
        } else {
            for r in &self.rows {
                if !all.contains(r) {
                    bail!(
                        "no row `{r}` in benches/rows.toml (rows: {})",
                        all.join(", ")
                    );
                }
            }
            self.rows.clone()
        };
        let rounds = if self.quick { 1 } else { self.rounds.max(1) };
        let load_before = loadavg();
        let started = std::time::Instant::now();
        let mut results = Vec::new();
        let mut untuned = Vec::new();
        for row in &rows {
            let mut res = RowResult {
                row: row.clone(),
                rust: vec![],
                torch: vec![],
            };
            let mut plain = res.clone();
            for _ in 0..rounds {
                let mut common: Vec<String> = vec![
                    "--row".into(),
                    row.clone(),
                    "--threads".into(),
                    self.threads.to_string(),
                    "--device".into(),
                    self.device.clone(),
                    "--json".into(),
                ];
                if self.quick {
                    common.extend(["--steps".into(), "2".into(), "--warmup".into(), "1".into()]);
                }
                let settings: &[Malloc] = if self.tuned_only {
                    &[Malloc::Tuned]
                } else {
                    &[Malloc::Tuned, Malloc::GlibcDefaults]
                };
                for &m in settings {
                    let into = if m == Malloc::Tuned {
                        &mut res
                    } else {
                        &mut plain
                    };
                    let mut a = Command::new(&steps_bin);
                    a.args(&common).current_dir(root);
                    m.apply(&mut a, true);
                    into.rust.push(run_side(a, "the Rust step timer")?);
                    let mut b = Command::new(&self.python);
                    b.arg("benches/reference/steps.py")
                        .args(&common)
                        .current_dir(root);
                    m.apply(&mut b, false);
                    into.torch.push(run_side(b, "the PyTorch reference")?);
                }
            }
            if let Some(why) = res.mismatch() {
                eprintln!("xtask bench: row {row} refused: {why}");
            }
            results.push(res);
            if !plain.rust.is_empty() {
                untuned.push(plain);
            }
        }
        let table = markdown_table(&results, &untuned);
        println!("{table}");
        let mut criterion = Vec::new();
        let mut criterion_text = String::new();
        if !self.no_criterion {
            for (pkg, bench, filter) in [
                ("ca-data", "data", "folder_loader|synthetic_render/64"),
                ("ca-losses", "losses", ""),
            ] {
                let mut c = cargo();
                c.args([
                    "bench",
                    "-p",
                    pkg,
                    "--bench",
                    bench,
                    "--",
                    "--warm-up-time",
                    "1",
                ])
                .args(["--measurement-time", "2"]);
                if !filter.is_empty() {
                    c.arg(filter);
                }
                eprintln!("$ {c:?}");
                let out = c.current_dir(root).output().context("cargo bench")?;
                let text = String::from_utf8_lossy(&out.stdout).to_string();
                if !out.status.success() {
                    eprintln!(
                        "xtask bench: {pkg} criterion bench failed:\n{}",
                        String::from_utf8_lossy(&out.stderr)
                    );
                }
                criterion.extend(parse_criterion(&text));
                criterion_text.push_str(&text);
            }
        }
        let load_after = loadavg();
        let mut md = String::new();
        let _ = writeln!(md, "# Benchmarks: Rust (tch 0.24) against PyTorch 2.11\n");
        let _ = writeln!(
            md,
            "Written by `cargo xtask bench{}`. Each side runs in its own process per round; rounds alternate Rust, PyTorch ({rounds} round(s) per row); medians are over all timed repetitions of all rounds. Ratio < 1: Rust faster. Both sides run with the same glibc malloc settings: the `ca` binary's (`MALLOC_MMAP_THRESHOLD_={MMAP_THRESHOLD}`, `MALLOC_TRIM_THRESHOLD_={TRIM_THRESHOLD}` in both environments), and, in the column \"same, glibc defaults\", glibc's own on both (`CA_MALLOC_TUNING=0` for Rust). A row whose parameter counts, batch sizes or DDIM step counts differ between the sides is refused.\n",
            if self.quick { " --quick" } else { "" }
        );
        let _ = writeln!(
            md,
            "* machine: {} ({} logical CPUs)",
            cpu_model(),
            std::thread::available_parallelism().map_or(0, |n| n.get())
        );
        let _ = writeln!(md, "* date: {}", sh("date", &["-u", "+%Y-%m-%d %H:%M UTC"]));
        let _ = writeln!(
            md,
            "* commit: {}{}",
            sh("git", &["rev-parse", "--short", "HEAD"]),
            if sh("git", &["status", "--porcelain"]).is_empty() {
                ""
            } else {
                " (with uncommitted changes)"
            }
        );
        let _ = writeln!(
            md,
            "* device: {}, threads: {} (both sides)",
            self.device, self.threads
        );
        let _ = writeln!(
            md,
            "* load average (1, 5, 15 min) before: {load_before}; after: {load_after}"
        );
        let _ = writeln!(
            md,
            "* wall time of the step rows: {:.0} s\n",
            started.elapsed().as_secs_f64()
        );
        md.push_str(&table);
        if !criterion.is_empty() {
            md.push_str("\n## Criterion benches (data loader, losses)\n\n| bench | time | throughput |\n|---|---:|---:|\n");
            for c in &criterion {
                let _ = writeln!(
                    md,
                    "| {} | {} | {} |",
                    c.name,
                    c.time,
                    c.elems_per_s
                        .map_or(String::new(), |e| format!("{e:.0} elem/s"))
                );
            }
            match loader_check(&criterion, &results) {
                Some((load, need, ok)) => {
                    let _ = writeln!(
                        md,
                        "\nLoader check: the folder loader (64x64, slowest format) sustains {load:.0} images/s; the fastest 64x64 training step consumes {need:.1} images/s, so the loader gives {:.0}x — {} the 5x goal.",
                        load / need,
                        if ok { "meets" } else { "MISSES" }
                    );
                }
                None => md.push_str("\nLoader check: not computed (no 64x64 training row or no loader bench in this run).\n"),
            }
        }
        if !self.no_write {
            let path = root.join(&self.out);
            let prev = std::fs::read_to_string(&path).unwrap_or_default();
            // Keep a hand-written analysis section below the generated part.
            let notes = prev
                .find("\n## Notes")
                .map(|i| prev[i..].to_string())
                .unwrap_or_default();
            std::fs::write(&path, format!("{md}{notes}"))
                .with_context(|| format!("cannot write {}", path.display()))?;
            eprintln!("xtask bench: wrote {}", path.display());
        }
        let _ = criterion_text;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const RUST: &str = r#"noise
{"row":"gan-style-32","impl":"rust","device":"cpu","threads":2,"batch":64,"unit":"step","steps":3,"warmup":1,"median_s":0.400000,"items_per_s":160.0,"peak_rss_mb":900.5,"params":{"d":764214,"e":463796,"g":313923},"times_s":[0.5,0.4,0.3]}"#;
    const TORCH: &str = r#"{"row":"gan-style-32","impl":"pytorch","device":"cpu","threads":2,"batch":64,"unit":"step","steps":2,"warmup":1,"median_s":0.5,"peak_rss_mb":1085.8,"params":{"g":313923,"d":764214,"e":463796},"times_s":[0.5, 0.5]}"#;

    #[test]
    fn json_parses_nested_values_and_escapes() {
        let j = Json::parse(r#" {"a":[1, -2.5e1, true, null], "b":{"c":"x\"y\u00e9"}} "#).unwrap();
        assert_eq!(
            j.get("a"),
            Some(&Json::Arr(vec![
                Json::Num(1.0),
                Json::Num(-25.0),
                Json::Bool(true),
                Json::Null
            ]))
        );
        assert_eq!(j.get("b").unwrap().get("c").unwrap().str(), Some("x\"yé"));
        assert!(Json::parse("{\"a\":1} x").is_err());
        assert!(Json::parse("{\"a\" 1}").is_err());
    }

    #[test]
    fn reports_parse_and_ratio_uses_the_medians() {
        let a = RunReport::from_output(RUST).unwrap();
        assert_eq!(a.imp, "rust");
        assert_eq!(a.times, vec![0.5, 0.4, 0.3]);
        assert_eq!(a.params["g"], 313923);
        let b = RunReport::from_output(TORCH).unwrap();
        let r = RowResult {
            row: a.row.clone(),
            rust: vec![a.clone()],
            torch: vec![b.clone()],
        };
        assert!(r.mismatch().is_none());
        assert!((r.ratio().unwrap() - 0.8).abs() < 1e-12);
        // The glibc-defaults pair of the same row: its ratio in its own column.
        let mut slow = a.clone();
        slow.times = vec![0.6, 0.6];
        let plain = RowResult {
            row: a.row.clone(),
            rust: vec![slow],
            torch: vec![b.clone()],
        };
        let table = markdown_table(std::slice::from_ref(&r), &[plain]);
        assert!(
            table.contains(
                "| gan-style-32 | 64 | 400.0 ms/step | 500.0 ms/step | **0.80** | 1.20 |"
            ),
            "{table}"
        );
        assert!(table.contains("total 1541933"), "{table}");
        assert!(markdown_table(&[r], &[]).contains("| **0.80** | - |"));
    }

    /// Both sides must have done the same work: batch size and DDIM steps too, in every run.
    #[test]
    fn a_row_with_other_batch_or_ddim_steps_is_refused() {
        let a = RunReport::from_output(RUST).unwrap();
        let b = RunReport::from_output(TORCH).unwrap();
        let row = |rust: Vec<RunReport>, torch: Vec<RunReport>| RowResult {
            row: a.row.clone(),
            rust,
            torch,
        };
        let mut other_batch = b.clone();
        other_batch.batch = 32.0;
        let r = row(vec![a.clone()], vec![b.clone(), other_batch]);
        assert!(r.ratio().is_none());
        assert!(
            r.mismatch().unwrap().contains("batch sizes differ"),
            "{:?}",
            r.mismatch()
        );
        let (mut a50, mut b20) = (a.clone(), b.clone());
        a50.ddim_steps = Some(50);
        b20.ddim_steps = Some(20);
        let r = row(vec![a50.clone()], vec![b20]);
        assert!(r.mismatch().unwrap().contains("DDIM step counts differ"));
        let mut b50 = b.clone();
        b50.ddim_steps = Some(50);
        let r = row(vec![a50], vec![b50]);
        assert!(r.mismatch().is_none());
        assert!(markdown_table(&[r], &[]).contains("| 64 (50 DDIM steps) |"));
    }

    #[test]
    fn malloc_settings_are_the_same_on_both_sides() {
        let env = |m: Malloc, rust: bool| {
            let mut c = Command::new("true");
            m.apply(&mut c, rust);
            c.get_envs()
                .filter_map(|(k, v)| Some((k.to_str()?.to_string(), v?.to_str()?.to_string())))
                .collect::<BTreeMap<String, String>>()
        };
        assert_eq!(env(Malloc::Tuned, true), env(Malloc::Tuned, false));
        assert_eq!(
            env(Malloc::Tuned, true)["MALLOC_MMAP_THRESHOLD_"],
            "33554432"
        );
        assert_eq!(env(Malloc::GlibcDefaults, false).len(), 0);
        assert_eq!(env(Malloc::GlibcDefaults, true)["CA_MALLOC_TUNING"], "0");
    }

    #[test]
    fn a_row_with_different_parameter_counts_is_refused() {
        let a = RunReport::from_output(RUST).unwrap();
        let mut b = RunReport::from_output(TORCH).unwrap();
        b.params.insert("g".into(), 1);
        let r = RowResult {
            row: a.row.clone(),
            rust: vec![a],
            torch: vec![b],
        };
        assert!(r.ratio().is_none());
        assert!(r.mismatch().unwrap().contains("g 1"));
        assert!(markdown_table(&[r], &[]).contains("| refused |"));
    }

    #[test]
    fn median_of_even_and_odd_samples() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&[4.0, 1.0, 2.0, 3.0]), 2.5);
        assert!(median(&[]).is_nan());
    }

    #[test]
    fn criterion_text_and_loader_check() {
        let text = "folder_loader_64px/png_batch64_2workers\n                        time:   [10.0 ms 12.8 ms 13.0 ms]\n                        thrpt:  [4.9 Kelem/s 5.0000 Kelem/s 5.1 Kelem/s]\nlosses/mmd_rbf_64x32    time:   [1.0 µs 2.0 µs 3.0 µs]\n";
        let c = parse_criterion(text);
        assert_eq!(c.len(), 2);
        assert_eq!(c[0].name, "folder_loader_64px/png_batch64_2workers");
        assert_eq!(c[0].elems_per_s, Some(5000.0));
        assert_eq!(c[1].name, "losses/mmd_rbf_64x32");
        assert_eq!(c[1].time, "2 µs");
        let mut a = RunReport::from_output(RUST).unwrap();
        a.row = "gan-style-64".into();
        let rows = [RowResult {
            row: a.row.clone(),
            rust: vec![a],
            torch: vec![],
        }];
        // 64 images / 0.4 s = 160 images/s; 5000 >= 5 * 160.
        let (load, need, ok) = loader_check(&c, &rows).unwrap();
        assert_eq!((load, need, ok), (5000.0, 160.0, true));
    }

    #[test]
    fn executable_is_found_in_cargo_messages() {
        let msgs = "{\"reason\":\"compiler-artifact\",\"target\":{\"name\":\"ca_train\"},\"executable\":null}\n{\"reason\":\"compiler-artifact\",\"target\":{\"name\":\"steps\",\"kind\":[\"bench\"]},\"executable\":\"/t/release/deps/steps-abc\"}\n{\"reason\":\"build-finished\",\"success\":true}";
        assert_eq!(
            executable_from_messages(msgs, "steps"),
            Some(PathBuf::from("/t/release/deps/steps-abc"))
        );
        assert_eq!(executable_from_messages(msgs, "other"), None);
    }
}
