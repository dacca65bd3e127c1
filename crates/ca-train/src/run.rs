//! The training loop, shared by every model family: run directory, data, per-step seeding,
//! learning-rate schedule, EMA, logging without per-step host syncs, sample grids,
//! checkpoints, stopping, resume.
//!
//! Determinism: step `k` reseeds libtorch's RNG from `(seed, k)` and the loader's order is a
//! pure function of `(seed, batch index)`, so a run resumed from a checkpoint at step `k`
//! replays exactly the steps an uninterrupted run would have taken (on CPU). On resume the rows
//! of `losses.csv` after the checkpoint's step (written before a kill) are dropped, so the log
//! has one row per logged step, without gaps or duplicates.
//!
//! Reliability: the run directory is probed (write, fsync, remove) and its free space compared
//! with what the kept checkpoints need before step 0. Before every checkpoint the pending loss
//! sums and all state tensors are checked for NaN/Inf, so a checkpoint is never written from a
//! diverged state; a non-finite value stops the run, or, with `train.nan_rollback`, reloads
//! the last good checkpoint and continues with lower learning rates.

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use ca_data::{Dataset, LoaderOptions, TrainLoader};
use ca_models::{CaCode, ImageGeometry};
use tch::{Device, Kind, Tensor};

use ca_data::grid as images;
use ca_models::CaModel;

use crate::checkpoint::{self, CheckpointMeta, CheckpointPolicy};
use crate::config::{Precision, RunConfig};
use crate::ema;
pub use crate::family::build_step;
pub use crate::step::{StepStats, TrainError, TrainStep, mix};

fn io<'a>(what: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> TrainError + 'a {
    move |source| TrainError::Io {
        what,
        path: path.to_path_buf(),
        source,
    }
}

/// Where the run goes and how it starts.
#[derive(Debug, Clone)]
pub struct RunOptions {
    /// The run directory: created (must be absent or empty) unless resuming.
    pub run_dir: PathBuf,
    /// Continue from the run directory's latest checkpoint.
    pub resume: bool,
    /// Device.
    pub device: Device,
}

/// What the loop tells its caller (the CLI draws a progress bar from it).
pub trait Progress {
    /// Called after every step with the step count and, every `log_every` steps, the logged
    /// values (name, mean since the last log).
    fn on_step(&mut self, step: u64, total: u64, logged: Option<&[(String, f64)]>);
    /// A message for the user (checkpoint written, stop requested, ...).
    fn message(&mut self, msg: &str);
}

/// A progress sink that prints nothing.
pub struct Quiet;
impl Progress for Quiet {
    fn on_step(&mut self, _: u64, _: u64, _: Option<&[(String, f64)]>) {}
    fn message(&mut self, _: &str) {}
}

/// The summary of a finished (or stopped) run.
#[derive(Debug, Clone)]
pub struct RunSummary {
    /// The run directory.
    pub run_dir: PathBuf,
    /// Steps done in total.
    pub steps: u64,
    /// Training wall clock, seconds (all segments).
    pub wall_clock_s: f64,
    /// Why it stopped.
    pub stopped_because: String,
}

/// A stop request shared with signal handlers: the loop finishes its step, writes a checkpoint
/// and returns.
pub fn stop_flag() -> Arc<AtomicBool> {
    static FLAG: std::sync::OnceLock<Arc<AtomicBool>> = std::sync::OnceLock::new();
    FLAG.get_or_init(|| Arc::new(AtomicBool::new(false)))
        .clone()
}

/// Create the run directory, lock it ([`lock_run_dir`]) and write `config.toml`; refuses a
/// non-empty folder and one that cannot be written ([`probe_writable`]). Returns the lock, to be
/// held while training.
pub fn prepare_run_dir(dir: &Path, cfg: &RunConfig) -> Result<RunLock, TrainError> {
    refuse_used(dir)?;
    std::fs::create_dir_all(dir).map_err(|e| {
        TrainError::RunDir(
            dir.to_path_buf(),
            format!("cannot be created ({e}); choose another --out"),
        )
    })?;
    // Locked before anything is written, then looked at again: another `ca train` given the
    // same new folder at the same moment passed the check above too; only the lock holder goes
    // on, and its config.toml is never replaced by the other's.
    let lock = lock_run_dir(dir)?;
    refuse_used(dir)?;
    probe_writable(dir)?;
    checkpoint::write_atomic(&dir.join("config.toml"), cfg.to_toml().as_bytes())?;
    Ok(lock)
}

/// Refuse an existing run directory holding anything but its lock file.
fn refuse_used(dir: &Path) -> Result<(), TrainError> {
    if dir.exists() {
        let entries = std::fs::read_dir(dir).map_err(io("cannot read run directory", dir))?;
        let mut others = entries
            .filter_map(|e| e.ok())
            .filter(|e| e.file_name() != LOCK_FILE);
        if others.next().is_some() {
            return Err(TrainError::RunDir(
                dir.to_path_buf(),
                "exists and is not empty; a run directory is never reused. Pass --resume to continue it, or choose another --out".into(),
            ));
        }
    }
    Ok(())
}

/// The file [`lock_run_dir`] locks inside a run directory.
pub const LOCK_FILE: &str = "train.lock";

/// An exclusive lock on a run directory, held while `ca train` writes to it; released on drop and
/// by the OS when the process ends, however it ends (kill -9 included), so it never goes stale.
#[derive(Debug)]
pub struct RunLock {
    _file: std::fs::File,
}

/// Lock `dir` (which must exist) for one trainer: a second `ca train` on the same run, new or
/// `--resume`, is refused instead of interleaving its checkpoints and log rows with the first's.
/// An OS file lock on `RUN/train.lock`, which holds the holder's process id for the message.
pub fn lock_run_dir(dir: &Path) -> Result<RunLock, TrainError> {
    use std::fs::TryLockError;
    use std::io::{Read, Seek};
    let path = dir.join(LOCK_FILE);
    let mut file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .map_err(io("cannot open the run lock", &path))?;
    match file.try_lock() {
        Ok(()) => {
            file.set_len(0)
                .and_then(|()| file.rewind())
                .and_then(|()| writeln!(file, "{}", std::process::id()))
                .map_err(io("cannot write the run lock", &path))?;
            Ok(RunLock { _file: file })
        }
        Err(TryLockError::WouldBlock) => {
            let mut pid = String::new();
            let _ = file.read_to_string(&mut pid);
            let who = match pid.trim() {
                "" => String::new(),
                p => format!(" (process {p})"),
            };
            Err(TrainError::RunDir(
                dir.to_path_buf(),
                format!(
                    "another `ca train`{who} is writing to it; wait for it to end (Ctrl-C ends it cleanly with a checkpoint), then --resume"
                ),
            ))
        }
        Err(TryLockError::Error(e)) => Err(TrainError::Io {
            what: "cannot lock the run directory",
            path,
            source: e,
        }),
    }
}

/// Check before training that `dir` takes a file: write 64 KiB, fsync, remove.
pub fn probe_writable(dir: &Path) -> Result<(), TrainError> {
    let probe = dir.join(".ca-write-probe");
    let written = (|| {
        let mut f = std::fs::File::create(&probe)?;
        f.write_all(&[0u8; 64 << 10])?;
        f.sync_all()?;
        std::fs::remove_file(&probe)
    })();
    written.map_err(|e| {
        let _ = std::fs::remove_file(&probe);
        TrainError::RunDir(
            dir.to_path_buf(),
            format!(
                "is not writable ({e}); fix its permissions or free space, or choose another --out"
            ),
        )
    })
}

/// Bytes the tensors take once written (safetensors stores them raw).
pub fn tensor_bytes(tensors: &[(String, Tensor)]) -> u64 {
    tensors
        .iter()
        .map(|(_, t)| (t.numel() * t.kind().elt_size_in_bytes()) as u64)
        .sum()
}

/// Refuse to start when the file system of `dir` has less than `need` bytes free.
pub fn check_space(dir: &Path, free: u64, need: u64, what: &str) -> Result<(), TrainError> {
    if free < need {
        let mib = |b: u64| b.div_ceil(1 << 20);
        return Err(TrainError::RunDir(
            dir.to_path_buf(),
            format!(
                "only {} MiB free on its file system, {what} need about {} MiB; free space, lower train.keep_last, or choose another --out",
                mib(free),
                mib(need)
            ),
        ));
    }
    Ok(())
}

/// Free bytes (for unprivileged users) on the file system holding `path` or its nearest
/// existing ancestor; `None` where the system cannot tell.
pub fn free_bytes(path: &Path) -> Option<u64> {
    let existing = path
        .ancestors()
        .find(|q| !q.as_os_str().is_empty() && q.exists())
        .unwrap_or(Path::new("."));
    statvfs_free(existing)
}

#[cfg(unix)]
fn statvfs_free(path: &Path) -> Option<u64> {
    let st = rustix::fs::statvfs(path).ok()?;
    Some(st.f_bavail.saturating_mul(st.f_frsize))
}

#[cfg(not(unix))]
fn statvfs_free(_: &Path) -> Option<u64> {
    None
}

/// Rewrite `losses.csv` keeping the header and the complete rows of steps `<= step` (a run
/// killed after its last checkpoint logged steps that the resumed run will log again).
/// Returns the number of rows dropped.
pub fn truncate_log(path: &Path, step: u64) -> Result<usize, TrainError> {
    let Ok(text) = std::fs::read_to_string(path) else {
        return Ok(0);
    };
    let mut out = String::new();
    let mut dropped = 0;
    let mut lines = text.split_inclusive('\n');
    let mut fields = 0;
    if let Some(h) = lines.next().filter(|h| h.ends_with('\n')) {
        fields = h.split(',').count();
        out.push_str(h);
    }
    for line in lines {
        let keep = line.ends_with('\n')
            && line.split(',').count() == fields
            && line
                .split(',')
                .next()
                .and_then(|s| s.parse::<u64>().ok())
                .is_some_and(|s| s <= step);
        if keep {
            out.push_str(line);
        } else {
            dropped += 1;
        }
    }
    if dropped > 0 || out.len() != text.len() {
        checkpoint::write_atomic(path, out.as_bytes())?;
    }
    Ok(dropped)
}

/// The first floating-point tensor holding a NaN or Inf (one host sync for all of them). If the
/// flags cannot be read back, the check fails closed: the answer names the failure, so no
/// checkpoint is written from a state that was not checked.
pub fn first_non_finite(tensors: &[(String, Tensor)]) -> Option<String> {
    let _guard = tch::no_grad_guard();
    let float: Vec<&(String, Tensor)> = tensors
        .iter()
        .filter(|(_, t)| {
            matches!(
                t.kind(),
                Kind::Float | Kind::Double | Kind::Half | Kind::BFloat16
            ) && t.numel() > 0
        })
        .collect();
    if float.is_empty() {
        return None;
    }
    let flags = Tensor::stack(
        &float
            .iter()
            .map(|(_, t)| t.isfinite().all().to_device(float[0].1.device()))
            .collect::<Vec<_>>(),
        0,
    );
    let names: Vec<&str> = float.iter().map(|(n, _)| n.as_str()).collect();
    first_flagged(
        &names,
        Vec::<u8>::try_from(flags.to_kind(Kind::Uint8).to_device(Device::Cpu))
            .map_err(|e| e.to_string()),
    )
}

/// The first name whose flag is 0 (not finite); when the flags could not be read (`Err`) or
/// are fewer than the names, a description of that failure (fail closed).
fn first_flagged(names: &[&str], flags: Result<Vec<u8>, String>) -> Option<String> {
    match flags {
        Ok(f) if f.len() == names.len() => names
            .iter()
            .zip(f)
            .find(|(_, ok)| *ok == 0)
            .map(|(n, _)| n.to_string()),
        Ok(f) => Some(format!(
            "(finiteness check: {} flags for {} tensors)",
            f.len(),
            names.len()
        )),
        Err(e) => Some(format!("(finiteness check failed: {e})")),
    }
}

/// Loss means read back from the device: one value per name, or the failure (fail closed).
fn read_back(names: &[&'static str], stacked: &Tensor) -> Result<Vec<f64>, (String, f64)> {
    match Vec::<f64>::try_from(stacked.to_kind(Kind::Double)) {
        Ok(v) if v.len() == names.len() => Ok(v),
        Ok(v) => Err((
            format!(
                "(loss read-back: {} values for {} terms)",
                v.len(),
                names.len()
            ),
            f64::NAN,
        )),
        Err(e) => Err((format!("(loss read-back failed: {e})"), f64::NAN)),
    }
}

/// The next free numbered run directory under `root`: `root/00003-<desc>`.
pub fn next_run_dir(root: &Path, desc: &str) -> PathBuf {
    let mut max = 0u32;
    if let Ok(rd) = std::fs::read_dir(root) {
        for e in rd.flatten() {
            let name = e.file_name().to_string_lossy().to_string();
            if let Some(n) = name.split('-').next().and_then(|p| p.parse::<u32>().ok()) {
                max = max.max(n);
            }
        }
    }
    root.join(format!("{:05}-{desc}", max + 1))
}

/// A short description of a config for run directory names: `synthetic-gan-style-bs64`.
pub fn describe(cfg: &RunConfig) -> String {
    let net = cfg.model.short_name();
    format!("{}-{net}-bs{}", data_kind(cfg), cfg.train.batch_size)
}

/// The kind of a run's data: `synthetic`, `folder` or `npy`.
fn data_kind(cfg: &RunConfig) -> &'static str {
    match &cfg.data {
        ca_data::DataConfig::Synthetic(_) => "synthetic",
        ca_data::DataConfig::Folder(_) => "folder",
        ca_data::DataConfig::Npy(_) => "npy",
    }
}

/// Geometry of a dataset.
pub fn geometry(ds: &dyn Dataset) -> ImageGeometry {
    ImageGeometry {
        channels: ds.channels() as i64,
        size: ds.size() as i64,
    }
}

struct Logger {
    file: std::fs::File,
    columns: Vec<String>,
    sums: HashMap<&'static str, (Tensor, u32)>,
    history: Vec<(f64, HashMap<String, f64>)>,
}

impl Logger {
    fn open(run_dir: &Path) -> Result<Self, TrainError> {
        let path = run_dir.join("losses.csv");
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .map_err(io("cannot open", &path))?;
        let mut columns = Vec::new();
        let mut history = Vec::new();
        if let Ok(text) = std::fs::read_to_string(&path) {
            let mut lines = text.lines();
            if let Some(h) = lines.next() {
                columns = h.split(',').skip(3).map(str::to_string).collect();
            }
            for line in lines {
                let f: Vec<&str> = line.split(',').collect();
                if let Some(step) = f.first().and_then(|s| s.parse::<f64>().ok()) {
                    let vals = columns
                        .iter()
                        .zip(f.iter().skip(3))
                        .filter_map(|(c, v)| v.parse::<f64>().ok().map(|v| (c.clone(), v)))
                        .collect();
                    history.push((step, vals));
                }
            }
        }
        Ok(Logger {
            file,
            columns,
            sums: HashMap::new(),
            history,
        })
    }

    fn add(&mut self, stats: StepStats) {
        for (name, t) in stats {
            let e = self
                .sums
                .entry(name)
                .or_insert_with(|| (Tensor::zeros([], (Kind::Float, t.device())), 0));
            e.0 += t;
            e.1 += 1;
        }
    }

    /// The pending sums, by name in order, read back in one host sync (all sums to the CPU at
    /// once); a read-back that fails is the fault it reports (fail closed).
    fn read_sums(&self) -> Result<Vec<(&'static str, f64)>, (String, f64)> {
        let mut names: Vec<&'static str> = self.sums.keys().copied().collect();
        names.sort();
        if names.is_empty() {
            return Ok(vec![]);
        }
        let stacked = Tensor::stack(
            &names
                .iter()
                .map(|n| self.sums[n].0.to_device(Device::Cpu))
                .collect::<Vec<_>>(),
            0,
        );
        let vals = read_back(&names, &stacked)?;
        Ok(names.into_iter().zip(vals).collect())
    }

    /// The first pending (not yet logged) term whose sum is NaN or Inf (one host sync).
    fn pending_non_finite(&self) -> Option<(String, f64)> {
        match self.read_sums() {
            Err(fault) => Some(fault),
            Ok(sums) => sums
                .into_iter()
                .find(|(_, v)| !v.is_finite())
                .map(|(n, v)| (n.to_string(), v)),
        }
    }

    /// One host sync: all sums to the CPU at once. Returns the means.
    fn flush(
        &mut self,
        step: u64,
        images: u64,
        wall: f64,
    ) -> Result<Vec<(String, f64)>, TrainError> {
        let sums = match self.read_sums() {
            Ok(sums) if sums.is_empty() => return Ok(vec![]),
            Ok(sums) => sums,
            // A failed read-back is logged as a non-finite term, which stops the run.
            Err((what, _)) => return Ok(vec![(what, f64::NAN)]),
        };
        let means: Vec<(String, f64)> = sums
            .into_iter()
            .map(|(n, v)| (n.to_string(), v / self.sums[n].1 as f64))
            .collect();
        if self.columns.is_empty() {
            self.columns = means.iter().map(|(n, _)| n.clone()).collect();
            writeln!(
                self.file,
                "step,images,wall_clock_s,{}",
                self.columns.join(",")
            )
            .map_err(io("cannot write", Path::new("losses.csv")))?;
        }
        let map: HashMap<String, f64> = means.iter().cloned().collect();
        let row: Vec<String> = self
            .columns
            .iter()
            .map(|c| map.get(c).map_or(String::new(), |v| format!("{v:.6}")))
            .collect();
        writeln!(self.file, "{step},{images},{wall:.2},{}", row.join(","))
            .map_err(io("cannot write", Path::new("losses.csv")))?;
        self.history.push((step as f64, map));
        self.sums.clear();
        Ok(means)
    }

    fn plot(&self, path: &Path) -> Result<(), TrainError> {
        if self.history.is_empty() {
            return Ok(());
        }
        let steps: Vec<f64> = self.history.iter().map(|(s, _)| *s).collect();
        let series: Vec<(String, Vec<f64>)> = self
            .columns
            .iter()
            .map(|c| {
                (
                    c.clone(),
                    self.history
                        .iter()
                        .map(|(_, m)| m.get(c).copied().unwrap_or(f64::NAN))
                        .collect(),
                )
            })
            .collect();
        images::save_loss_curves(&steps, &series, path)?;
        Ok(())
    }
}

/// Fixed codes for sample grids: 8 common codes, each shown as background (s = 0) and with
/// 3 salient codes.
pub fn fixed_grid_codes(dz: i64, ds: i64, seed: u64, device: Device) -> CaCode {
    tch::manual_seed(mix(seed ^ 0xF1ED) as i64);
    let z = Tensor::randn([8, dz], (Kind::Float, device));
    let s = Tensor::randn([3, ds], (Kind::Float, device));
    let mut rows = Vec::new();
    for j in 0..4 {
        let sj = if j == 0 {
            Tensor::zeros([8, ds], (Kind::Float, device))
        } else {
            s.get(j - 1).unsqueeze(0).repeat([8, 1])
        };
        rows.push(CaCode::with_salient(z.shallow_clone(), sj));
    }
    CaCode::cat(&rows.iter().collect::<Vec<_>>())
}

/// Train a model as configured. Returns when `max_steps` or `max_minutes` is reached or a
/// stop is requested (a final checkpoint is written in every case).
pub fn train(
    cfg: &RunConfig,
    opts: &RunOptions,
    progress: &mut dyn Progress,
) -> Result<RunSummary, TrainError> {
    if cfg.train.threads > 0 {
        tch::set_num_threads(cfg.train.threads as i32);
    }
    if cfg.train.precision == Precision::Bf16 && opts.device == Device::Cpu && !cpu_has_bf16() {
        tracing::warn!(
            "train.precision = \"bf16\" on a CPU without AVX512-BF16: libtorch's bfloat16 \
             convolutions fall back to a slow path here (on a 2-core AVX2 EPYC, fewer than 50 \
             steps in 10 minutes against ~0.5 steps/s in fp32). Use --set 'train.precision=\"fp32\"'"
        );
    }
    let ds: Arc<dyn Dataset> = Arc::from(cfg.data.open()?);
    let step_fn = build_step(cfg, geometry(ds.as_ref()), opts.device)?;
    progress.message(&start_summary(cfg, opts, ds.as_ref(), step_fn.as_ref()));
    train_with(cfg, opts, ds, step_fn, progress)
}

/// What a run is about to do, in a few lines: model, data, length, where it goes (the whole
/// config is in `RUN/config.toml`).
pub fn start_summary(
    cfg: &RunConfig,
    opts: &RunOptions,
    ds: &dyn Dataset,
    step_fn: &dyn TrainStep,
) -> String {
    let t = &cfg.train;
    let (dz, ds_dim) = cfg.model.dims();
    let n_bg = ds.n_background();
    let limit = if t.max_minutes > 0.0 {
        format!(" or {} minutes", t.max_minutes)
    } else {
        String::new()
    };
    let verb = if opts.resume { "resuming" } else { "training" };
    format!(
        "{verb} {} (dz {dz}, ds {ds_dim}; {}) on {} data: {n_bg} background + {} target images, {}x{}x{}\n\
         up to {} steps{limit}, batch {}, seed {}, {:?} on {:?}; a checkpoint every {} steps\n\
         run directory {} (config: {})",
        cfg.model.short_name(),
        step_fn.summary(),
        data_kind(cfg),
        ds.len() - n_bg,
        ds.channels(),
        ds.size(),
        ds.size(),
        t.max_steps,
        t.batch_size,
        t.seed,
        t.precision,
        opts.device,
        t.checkpoint_every,
        opts.run_dir.display(),
        opts.run_dir.join("config.toml").display(),
    )
}

/// Whether this CPU has native bfloat16 arithmetic (AVX512-BF16, which AMX CPUs have too).
pub fn cpu_has_bf16() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::arch::is_x86_feature_detected!("avx512bf16")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        true
    }
}

/// Rollback bookkeeping carried in every checkpoint's meta.json.
#[derive(Debug, Clone, Copy)]
struct Rollback {
    lr_scale: f64,
    count: u32,
}

/// Where a run starts: step, wall clock and rollbacks so far (all 0 for a new run).
struct Start {
    step: u64,
    wall_before: f64,
    rb: Rollback,
}

/// Open the run directory for training: a new run is created and locked ([`prepare_run_dir`]);
/// a resumed one is locked and its state restored from the latest checkpoint (the rows of
/// `losses.csv` after it dropped). Free space for the kept checkpoints is checked first.
fn open_run(
    cfg: &RunConfig,
    opts: &RunOptions,
    step_fn: &mut dyn TrainStep,
    policy: &CheckpointPolicy,
    progress: &mut dyn Progress,
) -> Result<(RunLock, Start), TrainError> {
    let run_dir = &opts.run_dir;
    // The kept checkpoints plus the one being written, and 16 MiB for logs and grids.
    let one_ckpt = tensor_bytes(&step_fn.model_tensors()) + tensor_bytes(&step_fn.state_tensors());
    let need = one_ckpt * (policy.keep_last.max(1) as u64 + 1) + (16 << 20);
    let what = format!(
        "{} checkpoints of {} MiB",
        policy.keep_last.max(1) + 1,
        one_ckpt.div_ceil(1 << 20)
    );
    let mut start = Start {
        step: 0,
        wall_before: 0.0,
        rb: Rollback {
            lr_scale: 1.0,
            count: 0,
        },
    };
    if !opts.resume {
        if let Some(free) = free_bytes(run_dir) {
            check_space(run_dir, free, need, &what)?;
        }
        return Ok((prepare_run_dir(run_dir, cfg)?, start));
    }
    probe_writable(run_dir)?;
    let lock = lock_run_dir(run_dir)?;
    if let Some(free) = free_bytes(run_dir) {
        check_space(run_dir, free, need, &what)?;
    }
    let (ck, meta) = checkpoint::open(run_dir, cfg.model.family(), &cfg.model_digest())?;
    let state = checkpoint::read_tensors(&ck, "state")?;
    step_fn.load_state(&state, &ck.join("state.safetensors"))?;
    start = Start {
        step: meta.step,
        wall_before: meta.wall_clock_s,
        rb: Rollback {
            lr_scale: meta.lr_scale,
            count: meta.rollbacks,
        },
    };
    let dropped = truncate_log(&run_dir.join("losses.csv"), meta.step)?;
    let note = if dropped > 0 {
        format!(" (dropped {dropped} losses.csv rows logged after it)")
    } else {
        String::new()
    };
    progress.message(&format!(
        "resumed from {} at step {}{note}",
        ck.display(),
        meta.step
    ));
    Ok((lock, start))
}

/// The state of the training loop between steps.
struct Loop<'a> {
    cfg: &'a RunConfig,
    run_dir: PathBuf,
    ds: Arc<dyn Dataset>,
    policy: CheckpointPolicy,
    step_fn: Box<dyn TrainStep>,
    loader: TrainLoader,
    logger: Logger,
    grid_codes: CaCode,
    n_bg: i64,
    decay: f64,
    step: u64,
    wall_before: f64,
    rb: Rollback,
    t0: Instant,
}

impl Loop<'_> {
    fn loader_at(&self, start: u64) -> Result<TrainLoader, TrainError> {
        make_loader(&self.ds, self.cfg.train.batch_size, start)
    }

    fn wall(&self) -> f64 {
        self.wall_before + self.t0.elapsed().as_secs_f64()
    }

    fn write_ckpt(&self, step: u64, wall: f64) -> Result<PathBuf, TrainError> {
        let meta = CheckpointMeta {
            step,
            images_seen: step * self.cfg.train.batch_size as u64,
            wall_clock_s: wall,
            model_kind: self.cfg.model.family().into(),
            model_digest: self.cfg.model_digest(),
            seed: self.cfg.train.seed,
            files: Default::default(),
            lr_scale: self.rb.lr_scale,
            rollbacks: self.rb.count,
        };
        Ok(checkpoint::write(
            &self.run_dir,
            &meta,
            &self.step_fn.model_tensors(),
            &self.step_fn.state_tensors(),
            self.policy.keep_last,
        )?)
    }

    /// Why the loop stops before the next step, if it does.
    fn stop_reason(&self, stop: &AtomicBool) -> Option<String> {
        let max_minutes = self.cfg.train.max_minutes;
        if stop.load(Ordering::SeqCst) {
            Some("stop requested (signal)".into())
        } else if max_minutes > 0.0 && self.t0.elapsed().as_secs_f64() >= max_minutes * 60.0 {
            Some(format!("reached train.max_minutes = {max_minutes}"))
        } else {
            None
        }
    }

    /// One optimisation step with its logging. Returns the logged means (every `log_every`
    /// steps), whether a checkpoint is due, and the first non-finite term or weight, if any.
    #[allow(clippy::type_complexity)]
    fn one_step(
        &mut self,
        device: Device,
    ) -> Result<(Option<Vec<(String, f64)>>, bool, Option<(String, f64)>), TrainError> {
        let (cfg, total, batch) = (
            self.cfg,
            self.cfg.train.max_steps,
            self.cfg.train.batch_size,
        );
        let batch_data = self
            .loader
            .next()
            .expect("the training loader is infinite")?;
        let x = batch_data.images_f32(device);
        tch::manual_seed(mix(cfg.train.seed ^ mix(self.step + 1)) as i64);
        let step = self.step;
        self.step_fn
            .set_lr_factor(cfg.optim.lr_factor(step, total) * self.rb.lr_scale);
        let stats = self.step_fn.train_step(&x, self.n_bg, step)?;
        self.step_fn.update_ema(self.decay);
        self.logger.add(stats);
        self.step += 1;
        let step = self.step;
        let ckpt_due = step < total && checkpoint::is_due(step, false, &self.policy);
        let mut logged = None;
        let mut fault = None;
        if step.is_multiple_of(cfg.train.log_every) || step == total {
            let means = self.logger.flush(step, step * batch as u64, self.wall())?;
            fault = means.iter().find(|(_, v)| !v.is_finite()).cloned();
            logged = Some(means);
        } else if ckpt_due {
            fault = self.logger.pending_non_finite();
        }
        if fault.is_none() && (ckpt_due || step == total) {
            // Never checkpoint a diverged state: NaN weights or moments with finite losses.
            fault = first_non_finite(&self.step_fn.state_tensors())
                .map(|name| (format!("weights `{name}`"), f64::NAN));
        }
        Ok((logged, ckpt_due, fault))
    }

    /// A non-finite `term`: stop (no rollback, or none left), or reload the last checkpoint
    /// with lower learning rates and go on from its step.
    fn roll_back(
        &mut self,
        term: String,
        value: f64,
        progress: &mut dyn Progress,
    ) -> Result<(), TrainError> {
        let t = &self.cfg.train;
        if !t.nan_rollback || self.rb.count >= t.max_rollbacks {
            if t.nan_rollback {
                progress.message(&format!(
                    "train.max_rollbacks = {} rollbacks used up",
                    t.max_rollbacks
                ));
            }
            return Err(TrainError::NonFinite {
                term,
                value,
                step: self.step,
                run: self.run_dir.clone(),
            });
        }
        let (ck, meta) = checkpoint::open(
            &self.run_dir,
            self.cfg.model.family(),
            &self.cfg.model_digest(),
        )?;
        let state = checkpoint::read_tensors(&ck, "state")?;
        self.step_fn
            .load_state(&state, &ck.join("state.safetensors"))?;
        self.rb = Rollback {
            lr_scale: self.rb.lr_scale * t.rollback_lr_factor,
            count: self.rb.count + 1,
        };
        progress.message(&format!(
            "loss term `{term}` became {value} by step {}: rolled back to the checkpoint at step {} with learning rates x{} (rollback {} of {})",
            self.step, meta.step, self.rb.lr_scale, self.rb.count, t.max_rollbacks
        ));
        self.step = meta.step;
        truncate_log(&self.run_dir.join("losses.csv"), self.step)?;
        self.logger = Logger::open(&self.run_dir)?;
        self.loader = self.loader_at(self.step)?;
        Ok(())
    }

    /// The end of a run: the partial log window flushed, a final checkpoint, grid and plot.
    fn finish(
        mut self,
        reason: String,
        progress: &mut dyn Progress,
    ) -> Result<RunSummary, TrainError> {
        let step = self.step;
        let wall = self.wall();
        if !self.logger.sums.is_empty() {
            let means = self
                .logger
                .flush(step, step * self.cfg.train.batch_size as u64, wall)?;
            if let Some((term, value)) = means.iter().find(|(_, v)| !v.is_finite()) {
                return Err(TrainError::NonFinite {
                    term: term.clone(),
                    value: *value,
                    step,
                    run: self.run_dir.clone(),
                });
            }
        }
        let p = self.write_ckpt(step, wall)?;
        write_samples(self.step_fn.as_ref(), &self.grid_codes, &self.run_dir, step)?;
        self.logger.plot(&self.run_dir.join("loss_curves.png"))?;
        progress.message(&format!("final checkpoint {} ({reason})", p.display()));
        Ok(RunSummary {
            run_dir: self.run_dir,
            steps: step,
            wall_clock_s: wall,
            stopped_because: reason,
        })
    }
}

/// The training loader from batch `start` on.
fn make_loader(ds: &Arc<dyn Dataset>, batch: usize, start: u64) -> Result<TrainLoader, TrainError> {
    let lopts = LoaderOptions {
        start_batch: start as usize,
        ..LoaderOptions::from_dataset(ds.as_ref(), batch)
    };
    Ok(TrainLoader::new(ds.clone(), lopts)?)
}

/// [`train`] with the dataset and the training step given (tests plug in their own step).
pub fn train_with(
    cfg: &RunConfig,
    opts: &RunOptions,
    ds: Arc<dyn Dataset>,
    mut step_fn: Box<dyn TrainStep>,
    progress: &mut dyn Progress,
) -> Result<RunSummary, TrainError> {
    let (dz, ds_dim) = cfg.model.dims();
    let policy = CheckpointPolicy {
        every_steps: cfg.train.checkpoint_every,
        keep_last: cfg.train.keep_last,
    };
    // Held until training returns: one trainer per run directory.
    let (_lock, start) = open_run(cfg, opts, step_fn.as_mut(), &policy, progress)?;
    let batch = cfg.train.batch_size;
    let target_fraction = LoaderOptions::from_dataset(ds.as_ref(), batch).target_fraction;
    let n_t = ((batch as f64) * target_fraction).round() as i64;
    let mut lp = Loop {
        cfg,
        run_dir: opts.run_dir.clone(),
        loader: make_loader(&ds, batch, start.step)?,
        ds,
        policy,
        step_fn,
        logger: Logger::open(&opts.run_dir)?,
        grid_codes: fixed_grid_codes(dz, ds_dim, cfg.train.seed, opts.device),
        n_bg: batch as i64 - n_t,
        decay: ema::decay_for_half_life(cfg.train.ema_half_life_images, batch),
        step: start.step,
        wall_before: start.wall_before,
        rb: start.rb,
        t0: Instant::now(),
    };
    let stop = stop_flag();
    let total = cfg.train.max_steps;
    let mut reason = "reached train.max_steps".to_string();
    if cfg.train.nan_rollback && !opts.resume {
        // A rollback target before the first periodic checkpoint.
        lp.write_ckpt(0, 0.0)?;
    }
    while lp.step < total {
        if let Some(why) = lp.stop_reason(&stop) {
            reason = why;
            break;
        }
        let (logged, ckpt_due, fault) = lp.one_step(opts.device)?;
        if let Some((term, value)) = fault {
            lp.roll_back(term, value, progress)?;
            continue;
        }
        let step = lp.step;
        progress.on_step(step, total, logged.as_deref());
        if cfg.train.sample_every > 0 && step.is_multiple_of(cfg.train.sample_every) {
            write_samples(lp.step_fn.as_ref(), &lp.grid_codes, &lp.run_dir, step)?;
        }
        if ckpt_due {
            let p = lp.write_ckpt(step, lp.wall())?;
            lp.logger.plot(&lp.run_dir.join("loss_curves.png"))?;
            progress.message(&format!("checkpoint {}", p.display()));
        }
    }
    lp.finish(reason, progress)
}

fn write_samples(
    step_fn: &dyn TrainStep,
    codes: &CaCode,
    run_dir: &Path,
    step: u64,
) -> Result<(), TrainError> {
    let x = step_fn.samples(codes);
    let path = run_dir.join("samples").join(format!("step-{step:07}.png"));
    images::save_grid(&x, 8, &path)?;
    std::fs::write(
        path.with_extension("txt"),
        "Samples of the EMA networks. Columns: 8 fixed common codes z. Rows: s = 0 (background), then three fixed salient codes s (target).\n",
    )
    .map_err(io("cannot write", &path))?;
    Ok(())
}

/// Load a trained run for inference: its config and the model of its latest checkpoint, or of
/// the checkpoint named by `checkpoint` (a folder name in `checkpoints/` or a step; see
/// [`checkpoint::open_named`]).
pub fn load_run(
    run_dir: &Path,
    device: Device,
    checkpoint: Option<&str>,
) -> Result<(RunConfig, Box<dyn CaModel>, CheckpointMeta), TrainError> {
    load_run_edited(run_dir, device, checkpoint, &[])
}

/// [`load_run`] with the run's `[apply]` settings overridden by `apply_sets`
/// (`apply.KEY=VALUE`, parsed and validated as `ca train --set`): how `ca eval --set` and the
/// inference verbs try another edit on a trained model without touching its `config.toml`. Any
/// key outside `[apply]` is refused (the checkpoint fixes everything else). The sampling step
/// counts are then overridden by the environment variables of
/// [`ca_models::apply::STEP_OVERRIDES`] that are set.
pub fn load_run_edited(
    run_dir: &Path,
    device: Device,
    checkpoint: Option<&str>,
    apply_sets: &[String],
) -> Result<(RunConfig, Box<dyn CaModel>, CheckpointMeta), TrainError> {
    crate::config::check_apply_sets(apply_sets)?;
    let cfg_path = run_dir.join("config.toml");
    if !cfg_path.exists() {
        return Err(TrainError::RunDir(
            run_dir.to_path_buf(),
            "has no config.toml: is this a run directory written by `ca train`?".into(),
        ));
    }
    let mut cfg = RunConfig::load_saved(&cfg_path, apply_sets)?;
    cfg.apply = cfg
        .apply
        .with_env_overrides(ca_models::apply::env_var)
        .map_err(|msg| crate::config::ConfigError::Invalid {
            origin: "environment".into(),
            msg,
        })?
        .0;
    let (kind, digest) = (cfg.model.family(), cfg.model_digest());
    let (ck, meta) = match checkpoint {
        None => checkpoint::open(run_dir, kind, &digest)?,
        Some(name) => checkpoint::open_named(run_dir, name, kind, &digest)?,
    };
    let tensors = checkpoint::read_tensors(&ck, "model")?;
    let file = ck.join("model.safetensors");
    let common = cfg.data.common()?;
    let geom = ImageGeometry {
        channels: common.channels as i64,
        size: common.size as i64,
    };
    let model = crate::family::load_model(&cfg, geom, &tensors, &file, device)?;
    Ok((cfg, model, meta))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::checkpoint::CheckpointError;

    #[test]
    fn a_run_directory_takes_one_trainer_at_a_time() {
        let dir = tempfile::tempdir().unwrap();
        let first = lock_run_dir(dir.path()).unwrap();
        let pid = std::fs::read_to_string(dir.path().join(LOCK_FILE)).unwrap();
        assert_eq!(pid.trim(), std::process::id().to_string());
        // A second lock (another open file, as another process would have) is refused, naming
        // the holder.
        let err = lock_run_dir(dir.path()).unwrap_err().to_string();
        assert!(
            err.contains("another `ca train`")
                && err.contains(&format!("process {}", std::process::id())),
            "{err}"
        );
        drop(first);
        let again = lock_run_dir(dir.path()).unwrap();
        drop(again);
        let err = lock_run_dir(&dir.path().join("missing")).unwrap_err();
        assert!(err.to_string().contains("train.lock"), "{err}");
    }

    /// The NaN/Inf guard before a checkpoint fails closed: flags that cannot be read back, or
    /// too few of them, are a fault, never "all finite".
    #[test]
    fn the_non_finite_guard_fails_closed() {
        let names = ["a", "b"];
        assert_eq!(first_flagged(&names, Ok(vec![1, 1])), None);
        assert_eq!(first_flagged(&names, Ok(vec![1, 0])).as_deref(), Some("b"));
        let e = first_flagged(&names, Err("device lost".into())).unwrap();
        assert!(e.contains("device lost"), "{e}");
        assert!(first_flagged(&names, Ok(vec![])).is_some());
        let t = |v: f32| Tensor::from_slice(&[v, 1.0]);
        let ok = [("w".to_string(), t(0.5))];
        assert_eq!(first_non_finite(&ok), None);
        let bad = [("w".to_string(), t(0.5)), ("m".to_string(), t(f32::NAN))];
        assert_eq!(first_non_finite(&bad).as_deref(), Some("m"));
        let stacked = Tensor::from_slice(&[1.0f64]);
        assert!(read_back(&["x", "y"], &stacked).is_err());
        assert_eq!(read_back(&["x"], &stacked).unwrap(), vec![1.0]);
    }

    #[test]
    fn truncate_log_drops_rows_after_the_checkpoint_and_a_torn_row() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("losses.csv");
        let text = "step,images,wall_clock_s,loss\n1,8,0.1,0.5\n2,16,0.2,0.4\n3,24,0.3,0.3\n4,3";
        std::fs::write(&p, text).unwrap();
        assert_eq!(truncate_log(&p, 10).unwrap(), 1, "only the torn row");
        assert_eq!(truncate_log(&p, 2).unwrap(), 1);
        assert_eq!(
            std::fs::read_to_string(&p).unwrap(),
            "step,images,wall_clock_s,loss\n1,8,0.1,0.5\n2,16,0.2,0.4\n"
        );
        assert_eq!(truncate_log(&dir.path().join("none.csv"), 2).unwrap(), 0);
    }

    #[test]
    fn unwritable_and_full_output_folders_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        // Tests run as root, which ignores permissions: a folder below a regular file cannot
        // exist for anyone.
        let file = dir.path().join("plain-file");
        std::fs::write(&file, "x").unwrap();
        let cfg = RunConfig::from_toml("[model]\nfamily = \"gan\"\n", "t", &[]).unwrap();
        let e = prepare_run_dir(&file.join("run"), &cfg)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("plain-file/run") && e.contains("cannot be created"),
            "{e}"
        );
        let e = probe_writable(&file).unwrap_err().to_string();
        assert!(e.contains("is not writable") && e.contains("--out"), "{e}");
        probe_writable(dir.path()).unwrap();
        assert!(
            std::fs::read_dir(dir.path()).unwrap().count() == 1,
            "probe removed"
        );
        // Free space: the rule, and that the real file system reports something.
        let e = check_space(dir.path(), 10 << 20, 300 << 20, "3 checkpoints of 100 MiB")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("only 10 MiB free")
                && e.contains("about 300 MiB")
                && e.contains("keep_last"),
            "{e}"
        );
        check_space(dir.path(), 300 << 20, 300 << 20, "x").unwrap();
        assert!(free_bytes(&dir.path().join("not/yet/created")).is_some_and(|b| b > 0));
    }

    #[test]
    fn first_non_finite_names_the_tensor() {
        let ok = Tensor::from_slice(&[1.0f32, 2.0]);
        let bad = Tensor::from_slice(&[1.0f32, f32::INFINITY]);
        let ints = Tensor::from_slice(&[1i64]);
        let v = vec![
            ("a".to_string(), ok.shallow_clone()),
            ("i".to_string(), ints),
        ];
        assert_eq!(first_non_finite(&v), None);
        let v = vec![("a".to_string(), ok), ("b".to_string(), bad)];
        assert_eq!(first_non_finite(&v).as_deref(), Some("b"));
    }

    /// A one-weight "model": each step adds the learning rate to `w`; from step `nan_from` on,
    /// a learning rate above `nan_above` makes the loss (and, with `poison`, `w`) NaN.
    struct Toy {
        w: Tensor,
        lr: f64,
        nan_from: u64,
        nan_above: f64,
        loss_stays_finite: bool,
    }

    impl TrainStep for Toy {
        fn train_step(&mut self, _: &Tensor, _: i64, step: u64) -> Result<StepStats, TrainError> {
            let _guard = tch::no_grad_guard();
            if step >= self.nan_from && self.lr > self.nan_above {
                let _ = self.w.fill_(f64::NAN);
            } else {
                self.w += self.lr;
            }
            let loss = if self.loss_stays_finite {
                Tensor::from(1.0f32)
            } else {
                self.w.sum(Kind::Float)
            };
            Ok(vec![("loss", loss)])
        }
        fn set_lr_factor(&mut self, factor: f64) {
            self.lr = factor;
        }
        fn update_ema(&self, _: f64) {}
        fn model_tensors(&self) -> Vec<(String, Tensor)> {
            vec![("w".into(), self.w.shallow_clone())]
        }
        fn state_tensors(&self) -> Vec<(String, Tensor)> {
            self.model_tensors()
        }
        fn load_state(
            &mut self,
            tensors: &HashMap<String, Tensor>,
            _: &Path,
        ) -> Result<(), CheckpointError> {
            let _guard = tch::no_grad_guard();
            self.w.copy_(&tensors["w"]);
            Ok(())
        }
        fn samples(&self, codes: &CaCode) -> Tensor {
            Tensor::zeros([codes.z.size()[0], 3, 8, 8], (Kind::Float, Device::Cpu))
        }
        fn summary(&self) -> String {
            "toy".into()
        }
    }

    fn toy_run(
        dir: &Path,
        sets: &[&str],
        nan_from: u64,
        loss_stays_finite: bool,
    ) -> (Result<RunSummary, TrainError>, Vec<String>) {
        let text = "[data]\nkind = \"synthetic\"\nn_background = 16\nn_target = 16\nworkers = 1\n[model]\nfamily = \"gan\"\n[train]\nbatch_size = 4\nmax_steps = 8\nlog_every = 1\ncheckpoint_every = 3\nsample_every = 0\nkeep_last = 5\n";
        let sets: Vec<String> = sets.iter().map(|s| s.to_string()).collect();
        let cfg = RunConfig::from_toml(text, "toy", &sets).unwrap();
        let ds: Arc<dyn Dataset> = Arc::from(cfg.data.open().unwrap());
        let toy = Toy {
            w: Tensor::zeros([2], (Kind::Float, Device::Cpu)),
            lr: 1.0,
            nan_from,
            nan_above: 0.6,
            loss_stays_finite,
        };
        struct Collect(Vec<String>);
        impl Progress for Collect {
            fn on_step(&mut self, _: u64, _: u64, _: Option<&[(String, f64)]>) {}
            fn message(&mut self, msg: &str) {
                self.0.push(msg.to_string());
            }
        }
        let mut msgs = Collect(Vec::new());
        let opts = RunOptions {
            run_dir: dir.to_path_buf(),
            resume: false,
            device: Device::Cpu,
        };
        let r = train_with(&cfg, &opts, ds, Box::new(toy), &mut msgs);
        (r, msgs.0)
    }

    #[test]
    fn nan_stops_the_run_and_keeps_the_last_good_checkpoint() {
        let dir = tempfile::tempdir().unwrap();
        let run = dir.path().join("run");
        let (r, _) = toy_run(&run, &[], 5, false);
        let e = r.unwrap_err();
        assert!(matches!(e, TrainError::NonFinite { step: 6, .. }), "{e}");
        let e = e.to_string();
        assert!(
            e.contains("`loss` became NaN by step 6") && e.contains("nan_rollback"),
            "{e}"
        );
        let ck = checkpoint::latest(&run).unwrap();
        assert_eq!(checkpoint::read_meta(&ck).unwrap().step, 3);

        // NaN weights with a finite loss: caught before the checkpoint at step 3 is written.
        let run = dir.path().join("weights");
        let (r, _) = toy_run(&run, &["train.log_every=4"], 1, true);
        let e = r.unwrap_err().to_string();
        assert!(e.contains("weights `w`") && e.contains("by step 3"), "{e}");
        assert!(
            checkpoint::latest(&run).is_err(),
            "no checkpoint of a NaN state"
        );
    }

    #[test]
    fn nan_rollback_reloads_the_last_good_checkpoint_with_a_lower_learning_rate() {
        let dir = tempfile::tempdir().unwrap();
        let run = dir.path().join("run");
        let (r, msgs) = toy_run(&run, &["train.nan_rollback=true"], 5, false);
        let summary = r.unwrap();
        assert_eq!(summary.steps, 8);
        assert!(
            msgs.iter().any(|m| m.contains(
                "rolled back to the checkpoint at step 3 with learning rates x0.5 (rollback 1 of 3)"
            )),
            "{msgs:?}"
        );
        // Steps 1-3 at lr 1, then 4-8 at lr 0.5: w = 3 + 2.5 per element, loss = 2 w.
        let ck = checkpoint::latest(&run).unwrap();
        let meta = checkpoint::read_meta(&ck).unwrap();
        assert_eq!((meta.step, meta.lr_scale, meta.rollbacks), (8, 0.5, 1));
        let w = &checkpoint::read_tensors(&ck, "model").unwrap()["w"];
        assert_eq!(Vec::<f32>::try_from(w).unwrap(), vec![5.5, 5.5]);
        let log = std::fs::read_to_string(run.join("losses.csv")).unwrap();
        let rows: Vec<Vec<&str>> = log
            .lines()
            .skip(1)
            .map(|l| l.split(',').collect())
            .collect();
        let steps: Vec<&str> = rows.iter().map(|r| r[0]).collect();
        assert_eq!(steps, ["1", "2", "3", "4", "5", "6", "7", "8"]);
        assert_eq!(rows[5][3], "9.000000", "step 6 replayed at lr 0.5: 2 * 4.5");

        // A fault that lower rates do not cure: stops after max_rollbacks.
        let run = dir.path().join("stubborn");
        let (r, msgs) = toy_run(
            &run,
            &[
                "train.nan_rollback=true",
                "train.max_rollbacks=2",
                "train.rollback_lr_factor=0.9",
            ],
            5,
            false,
        );
        assert!(matches!(r, Err(TrainError::NonFinite { .. })));
        assert!(
            msgs.iter().any(|m| m.contains("max_rollbacks = 2")),
            "{msgs:?}"
        );
    }
}
