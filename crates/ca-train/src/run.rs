//! The training loop, shared by every model family: run directory, data, per-step seeding,
//! learning-rate schedule, EMA, logging without per-step host syncs, sample grids,
//! checkpoints, stopping, resume.
//!
//! Determinism: step `k` reseeds libtorch's RNG from `(seed, k)` and the loader's order is a
//! pure function of `(seed, batch index)`, so a run resumed from a checkpoint at step `k`
//! replays exactly the steps an uninterrupted run would have taken (on CPU).

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use ca_data::{Dataset, LoaderOptions, TrainLoader};
use ca_models::{CaCode, ImageGeometry};
use tch::{Device, Kind, Tensor};

use crate::checkpoint::{self, CheckpointError, CheckpointMeta, CheckpointPolicy};
use crate::config::{ModelConfig, RunConfig};
use crate::gan::{GanError, GanModel, GanNets, GanStep, StepStats};
use crate::model::CaModel;
use crate::{ema, images};

/// Errors of a training run.
#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    /// Config problem.
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    /// Data problem.
    #[error(transparent)]
    Data(#[from] ca_data::DataError),
    /// GAN problem.
    #[error(transparent)]
    Gan(#[from] GanError),
    /// Checkpoint problem.
    #[error(transparent)]
    Checkpoint(#[from] CheckpointError),
    /// Image output problem.
    #[error(transparent)]
    Image(#[from] images::ImageWriteError),
    /// Filesystem problem outside checkpoints.
    #[error("{what} '{path}': {source}")]
    Io {
        /// What was being done.
        what: &'static str,
        /// The path.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// The run directory cannot be used.
    #[error("run directory '{0}': {1}")]
    RunDir(PathBuf, String),
    /// A loss became NaN or infinite.
    #[error(
        "loss term `{term}` became {value} at step {step}; the last good checkpoint is kept in '{run}'. Lower the learning rate (optim.lr_*) or the term's weight, then resume with --resume"
    )]
    NonFinite {
        /// The term.
        term: String,
        /// Its value.
        value: f64,
        /// The step.
        step: u64,
        /// The run directory.
        run: PathBuf,
    },
    /// Not supported yet.
    #[error("{0}")]
    Unsupported(String),
}

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

/// One model family's training step, as the loop sees it. `GanStep` implements it; the
/// diffusion family plugs in the same way.
pub trait TrainStep {
    /// One optimisation step on real images `x` (`[B, C, H, W]` in [-1, 1], background rows
    /// first: `n_bg` of them). `step` is the 0-based step index.
    fn train_step(&mut self, x: &Tensor, n_bg: i64, step: u64) -> Result<StepStats, TrainError>;
    /// Scale the learning rates by `factor` (the schedule).
    fn set_lr_factor(&mut self, factor: f64);
    /// Move the EMA weights towards the live ones.
    fn update_ema(&self, decay: f64);
    /// Tensors for inference (`model.safetensors`).
    fn model_tensors(&self) -> Vec<(String, Tensor)>;
    /// Everything needed to resume (`state.safetensors`): networks and optimiser moments.
    fn state_tensors(&self) -> Vec<(String, Tensor)>;
    /// Restore from `state.safetensors` tensors.
    fn load_state(
        &mut self,
        tensors: &HashMap<String, Tensor>,
        file: &Path,
    ) -> Result<(), CheckpointError>;
    /// Images decoded from fixed codes by the EMA networks, for the sample grids.
    fn samples(&self, codes: &CaCode) -> Tensor;
    /// A parameter summary printed at the start of a run.
    fn summary(&self) -> String;
}

impl TrainStep for GanStep {
    fn train_step(&mut self, x: &Tensor, n_bg: i64, step: u64) -> Result<StepStats, TrainError> {
        Ok(self.step(x, n_bg, step)?)
    }
    fn set_lr_factor(&mut self, factor: f64) {
        GanStep::set_lr_factor(self, factor)
    }
    fn update_ema(&self, decay: f64) {
        GanStep::update_ema(self, decay)
    }
    fn model_tensors(&self) -> Vec<(String, Tensor)> {
        self.nets.model_tensors()
    }
    fn state_tensors(&self) -> Vec<(String, Tensor)> {
        let mut v = self.nets.state_tensors();
        v.extend(self.optimizer_tensors());
        v
    }
    fn load_state(
        &mut self,
        tensors: &HashMap<String, Tensor>,
        file: &Path,
    ) -> Result<(), CheckpointError> {
        self.nets.load_state(tensors, file)?;
        self.load_optimizers(tensors, file)
    }
    fn samples(&self, codes: &CaCode) -> Tensor {
        tch::no_grad(|| self.nets.g_ema.forward_t(codes, false))
    }
    fn summary(&self) -> String {
        format!(
            "generator:\n{}discriminator:\n{}",
            ca_models::gan::summary(&self.nets.g_vs),
            ca_models::gan::summary(&self.nets.d_vs)
        )
    }
}

/// Build the training step of the configured model family (weights drawn after seeding).
pub fn build_step(
    cfg: &RunConfig,
    geom: ImageGeometry,
    device: Device,
) -> Result<Box<dyn TrainStep>, TrainError> {
    tch::manual_seed(mix(cfg.train.seed) as i64);
    match &cfg.model {
        ModelConfig::Gan(g) => {
            let nets = GanNets::build(g, geom, cfg.loss.z_adversary > 0.0, device)?;
            Ok(Box::new(GanStep::new(nets, &cfg.loss, &cfg.optim)))
        }
        ModelConfig::Diffusion(d) => Ok(Box::new(crate::diffusion::build_step(
            d, geom, &cfg.loss, &cfg.optim, device,
        )?)),
    }
}

/// A stop request shared with signal handlers: the loop finishes its step, writes a checkpoint
/// and returns.
pub fn stop_flag() -> Arc<AtomicBool> {
    static FLAG: std::sync::OnceLock<Arc<AtomicBool>> = std::sync::OnceLock::new();
    FLAG.get_or_init(|| Arc::new(AtomicBool::new(false)))
        .clone()
}

/// SplitMix64: the per-step seed.
pub fn mix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9e3779b97f4a7c15);
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58476d1ce4e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d049bb133111eb);
    x ^ (x >> 31)
}

/// Create the run directory and write `config.toml`; refuses a non-empty folder.
pub fn prepare_run_dir(dir: &Path, cfg: &RunConfig) -> Result<(), TrainError> {
    if dir.exists() {
        let mut entries = std::fs::read_dir(dir).map_err(io("cannot read run directory", dir))?;
        if entries.next().is_some() {
            return Err(TrainError::RunDir(
                dir.to_path_buf(),
                "exists and is not empty; a run directory is never reused. Pass --resume to continue it, or choose another --out".into(),
            ));
        }
    }
    std::fs::create_dir_all(dir).map_err(io("cannot create run directory", dir))?;
    // Writability check before any training starts.
    checkpoint::write_atomic(&dir.join("config.toml"), cfg.to_toml().as_bytes())?;
    Ok(())
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
    let data = match &cfg.data {
        ca_data::DataConfig::Synthetic(_) => "synthetic",
        ca_data::DataConfig::Folder(_) => "folder",
        ca_data::DataConfig::Npy(_) => "npy",
    };
    let net = match &cfg.model {
        ModelConfig::Gan(g) => match g.generator {
            ca_models::gan::GeneratorConfig::Dcgan(_) => "gan-dcgan",
            ca_models::gan::GeneratorConfig::Style(_) => "gan-style",
        },
        ModelConfig::Diffusion(_) => "diffusion",
    };
    format!("{data}-{net}-bs{}", cfg.train.batch_size)
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

    /// One host sync: all sums to the CPU at once. Returns the means.
    fn flush(
        &mut self,
        step: u64,
        images: u64,
        wall: f64,
        lr: f64,
    ) -> Result<Vec<(String, f64)>, TrainError> {
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
        let vals: Vec<f64> =
            Vec::<f64>::try_from(stacked.to_kind(Kind::Double)).unwrap_or_default();
        let means: Vec<(String, f64)> = names
            .iter()
            .zip(vals)
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
        let _ = lr;
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
    let run_dir = opts.run_dir.clone();
    if cfg.train.threads > 0 {
        tch::set_num_threads(cfg.train.threads as i32);
    }
    let ds: Arc<dyn Dataset> = Arc::from(cfg.data.open()?);
    let geom = geometry(ds.as_ref());
    let (dz, ds_dim) = cfg.model.dims();

    let mut start_step = 0u64;
    let mut wall_before = 0.0;
    let mut step_fn = build_step(cfg, geom, opts.device)?;

    if opts.resume {
        let ck = checkpoint::latest(&run_dir)?;
        let meta = checkpoint::read_meta(&ck)?;
        if meta.model_kind != cfg.model.family() || meta.model_digest != cfg.model_digest() {
            return Err(CheckpointError::Mismatch {
                path: ck,
                found: format!(
                    "a {} model (config digest {})",
                    meta.model_kind, meta.model_digest
                ),
                expected: format!(
                    "a {} model (config digest {})",
                    cfg.model.family(),
                    cfg.model_digest()
                ),
            }
            .into());
        }
        let state = checkpoint::read_tensors(&ck, "state")?;
        step_fn.load_state(&state, &ck.join("state.safetensors"))?;
        start_step = meta.step;
        wall_before = meta.wall_clock_s;
        progress.message(&format!(
            "resumed from {} at step {}",
            ck.display(),
            meta.step
        ));
    } else {
        prepare_run_dir(&run_dir, cfg)?;
        progress.message(&format!(
            "run directory {}\n{}",
            run_dir.display(),
            step_fn.summary()
        ));
    }

    let batch = cfg.train.batch_size;
    let mut lopts = LoaderOptions::from_dataset(ds.as_ref(), batch);
    lopts.start_batch = start_step as usize;
    let n_t = ((batch as f64) * lopts.target_fraction).round() as i64;
    let n_bg = batch as i64 - n_t;
    let mut loader = TrainLoader::new(ds.clone(), lopts)?;
    let mut logger = Logger::open(&run_dir)?;
    let policy = CheckpointPolicy {
        every_steps: cfg.train.checkpoint_every,
        keep_last: cfg.train.keep_last,
    };
    let decay = ema::decay_for_half_life(cfg.train.ema_half_life_images, batch);
    let grid_codes = fixed_grid_codes(dz, ds_dim, cfg.train.seed, opts.device);
    let stop = stop_flag();
    let t0 = Instant::now();
    let total = cfg.train.max_steps;
    let mut step = start_step;
    let mut reason = "reached train.max_steps".to_string();
    let write_ckpt =
        |step_fn: &dyn TrainStep, step: u64, wall: f64| -> Result<PathBuf, TrainError> {
            let meta = CheckpointMeta {
                step,
                images_seen: step * batch as u64,
                wall_clock_s: wall,
                model_kind: cfg.model.family().into(),
                model_digest: cfg.model_digest(),
                seed: cfg.train.seed,
            };
            Ok(checkpoint::write(
                &run_dir,
                &meta,
                &step_fn.model_tensors(),
                &step_fn.state_tensors(),
                policy.keep_last,
            )?)
        };
    while step < total {
        if stop.load(Ordering::SeqCst) {
            reason = "stop requested (signal)".into();
            break;
        }
        if cfg.train.max_minutes > 0.0 && t0.elapsed().as_secs_f64() >= cfg.train.max_minutes * 60.0
        {
            reason = format!("reached train.max_minutes = {}", cfg.train.max_minutes);
            break;
        }
        let batch_data = loader.next().expect("the training loader is infinite")?;
        let x = batch_data.images_f32(opts.device);
        tch::manual_seed(mix(cfg.train.seed ^ mix(step + 1)) as i64);
        step_fn.set_lr_factor(cfg.optim.lr_factor(step, total));
        let stats = step_fn.train_step(&x, n_bg, step)?;
        step_fn.update_ema(decay);
        logger.add(stats);
        step += 1;
        let wall = wall_before + t0.elapsed().as_secs_f64();
        let mut logged = None;
        if step.is_multiple_of(cfg.train.log_every) || step == total {
            let means = logger.flush(
                step,
                step * batch as u64,
                wall,
                cfg.optim.lr_factor(step, total),
            )?;
            if let Some((term, v)) = means.iter().find(|(_, v)| !v.is_finite()) {
                return Err(TrainError::NonFinite {
                    term: term.clone(),
                    value: *v,
                    step,
                    run: run_dir.clone(),
                });
            }
            logged = Some(means);
        }
        progress.on_step(step, total, logged.as_deref());
        if cfg.train.sample_every > 0 && step.is_multiple_of(cfg.train.sample_every) {
            write_samples(step_fn.as_ref(), &grid_codes, &run_dir, step)?;
        }
        if step < total && checkpoint::is_due(step, false, &policy) {
            let p = write_ckpt(step_fn.as_ref(), step, wall)?;
            logger.plot(&run_dir.join("loss_curves.png"))?;
            progress.message(&format!("checkpoint {}", p.display()));
        }
    }
    let wall = wall_before + t0.elapsed().as_secs_f64();
    // A partial log window is flushed so the CSV covers the last step.
    if !logger.sums.is_empty() {
        logger.flush(step, step * batch as u64, wall, 1.0)?;
    }
    let p = write_ckpt(step_fn.as_ref(), step, wall)?;
    write_samples(step_fn.as_ref(), &grid_codes, &run_dir, step)?;
    logger.plot(&run_dir.join("loss_curves.png"))?;
    progress.message(&format!("final checkpoint {} ({reason})", p.display()));
    Ok(RunSummary {
        run_dir,
        steps: step,
        wall_clock_s: wall,
        stopped_because: reason,
    })
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

/// Load a trained run for inference: its config and the model of its latest checkpoint.
pub fn load_run(
    run_dir: &Path,
    device: Device,
) -> Result<(RunConfig, Box<dyn CaModel>, CheckpointMeta), TrainError> {
    let cfg_path = run_dir.join("config.toml");
    if !cfg_path.exists() {
        return Err(TrainError::RunDir(
            run_dir.to_path_buf(),
            "has no config.toml: is this a run directory written by `ca train`?".into(),
        ));
    }
    let cfg = RunConfig::load(&cfg_path, &[])?;
    let ck = checkpoint::latest(run_dir)?;
    let meta = checkpoint::read_meta(&ck)?;
    if meta.model_digest != cfg.model_digest() {
        return Err(CheckpointError::Mismatch {
            path: ck,
            found: format!("config digest {}", meta.model_digest),
            expected: format!(
                "config digest {} (from {})",
                cfg.model_digest(),
                cfg_path.display()
            ),
        }
        .into());
    }
    let tensors = checkpoint::read_tensors(&ck, "model")?;
    let file = ck.join("model.safetensors");
    let common = cfg.data.common()?;
    let geom = ImageGeometry {
        channels: common.channels as i64,
        size: common.size as i64,
    };
    let model: Box<dyn CaModel> = match &cfg.model {
        ModelConfig::Gan(g) => Box::new(GanModel::load(g, geom, &tensors, &file, device)?),
        ModelConfig::Diffusion(d) => Box::new(crate::diffusion::DiffusionModel::load(
            d, geom, &tensors, &file, device,
        )?),
    };
    Ok((cfg, model, meta))
}
