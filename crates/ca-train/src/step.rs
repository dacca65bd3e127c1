//! What the training loop sees of a model family: one step ([`TrainStep`]), its logged values
//! ([`StepStats`]), the errors of a run ([`TrainError`]) and the per-step seed ([`mix`]).
//! The loop (`run`) and every family (`family/`) import these; neither imports the other.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use ca_models::CaCode;
use tch::{Device, Kind, Tensor};

use crate::checkpoint::CheckpointError;

/// Named loss values of one step (0-d tensors on the device, detached).
pub type StepStats = Vec<(&'static str, Tensor)>;

/// One model family's training step, as the loop sees it.
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
    /// The networks' parameter counts on one line, printed at the start of a run
    /// (`generator 313,923 + discriminator 764,214 parameters`).
    fn summary(&self) -> String;
}

/// Errors of a training run.
#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    /// Config problem.
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    /// Data problem.
    #[error(transparent)]
    Data(#[from] ca_data::DataError),
    /// A model family's own problem (building its networks, a failed autograd call).
    #[error(transparent)]
    Family(Box<dyn std::error::Error + Send + Sync>),
    /// Checkpoint problem.
    #[error(transparent)]
    Checkpoint(#[from] CheckpointError),
    /// Image output problem.
    #[error(transparent)]
    Image(#[from] ca_data::grid::ImageWriteError),
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
        "loss term `{term}` became {value} by step {step}; the last good checkpoint is kept in '{run}'. Lower the learning rate (optim.lr_*) or the term's weight, then resume with --resume (or set train.nan_rollback = true)"
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

/// SplitMix64: the per-step seed.
pub fn mix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9e3779b97f4a7c15);
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58476d1ce4e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d049bb133111eb);
    x ^ (x >> 31)
}

/// The group of each row of a batch whose first `n_bg` of `b` rows are background: `[b]`
/// float, 0 for background, 1 for target.
pub fn is_target(b: i64, n_bg: i64, dev: Device) -> Tensor {
    Tensor::cat(
        &[
            Tensor::zeros([n_bg], (Kind::Float, dev)),
            Tensor::ones([b - n_bg], (Kind::Float, dev)),
        ],
        0,
    )
}

/// The logged values in fp32 (terms computed in an autocast region may be bfloat16).
pub fn stats_in_fp32(stats: StepStats) -> StepStats {
    stats
        .into_iter()
        .map(|(n, t)| (n, t.to_kind(Kind::Float)))
        .collect()
}

/// The optimiser-state tensors of a checkpoint that start with `prefix`, the prefix stripped
/// (`opt_g.m.3` -> `m.3` for `opt_g.`).
fn with_prefix(t: &HashMap<String, Tensor>, prefix: &str) -> HashMap<String, Tensor> {
    t.iter()
        .filter_map(|(k, v)| {
            k.strip_prefix(prefix)
                .map(|r| (r.to_string(), v.shallow_clone()))
        })
        .collect()
}

/// Every optimiser's state under its prefix (`opt_g.`, ...), for `state.safetensors`.
pub fn optimizer_state<'a>(
    optimizers: impl IntoIterator<Item = (&'a str, &'a crate::adam::Adam)>,
) -> Vec<(String, Tensor)> {
    let mut v = Vec::new();
    for (prefix, o) in optimizers {
        v.extend(
            o.state()
                .into_iter()
                .map(|(n, t)| (format!("{prefix}{n}"), t)),
        );
    }
    v
}

/// Restore every optimiser from the tensors under its prefix; an error names `file`.
pub fn load_optimizer_state<'a>(
    optimizers: impl IntoIterator<Item = (&'a str, &'a mut crate::adam::Adam)>,
    t: &HashMap<String, Tensor>,
    file: &Path,
) -> Result<(), CheckpointError> {
    for (prefix, o) in optimizers {
        o.load_state(&with_prefix(t, prefix))
            .map_err(|msg| CheckpointError::Meta {
                path: file.to_path_buf(),
                msg,
            })?;
    }
    Ok(())
}

/// The trainable parameters of a var store.
pub fn param_count(vs: &tch::nn::VarStore) -> i64 {
    vs.trainable_variables()
        .iter()
        .map(|t| t.size().iter().product::<i64>())
        .sum()
}

/// `(name, var store)` pairs as `name 1,234 + name 5,678 parameters`.
pub fn param_summary(parts: &[(&str, &tch::nn::VarStore)]) -> String {
    let with_commas = |n: i64| {
        let digits = n.to_string();
        let mut out = String::new();
        for (i, c) in digits.chars().enumerate() {
            if i > 0 && (digits.len() - i).is_multiple_of(3) {
                out.push(',');
            }
            out.push(c);
        }
        out
    };
    let parts: Vec<String> = parts
        .iter()
        .map(|(name, vs)| format!("{name} {}", with_commas(param_count(vs))))
        .collect();
    format!("{} parameters", parts.join(" + "))
}
