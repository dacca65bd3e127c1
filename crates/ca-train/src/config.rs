//! The run configuration: one struct per TOML table, nested as ownership goes.
//!
//! ```toml
//! [data]      # ca_data::DataConfig   (kind = "synthetic" | "folder" | "npy")
//! [model]     # family = "gan" | "diffusion", then that family's network config
//! [loss]      # the family's loss weights (0 skips the term's computation)
//! [optim]     # the family's learning rates, betas, schedule
//! [train]     # batch, length, logging, checkpoints, seed
//! [eval]      # evaluation sizes (ca_eval::EvalConfig)
//! [apply]     # how a trained model edits real images (ca_models::ApplyConfig)
//! ```
//! Every table denies unknown keys, so a typo is an error naming the key (with a "did you mean");
//! `[loss]` and `[optim]` are the family's own ([`crate::family`]), so a key of another family is
//! an error that says whose key it is.
//! The resolved config is written to `<run>/config.toml` before step 0 and re-read by every
//! command that loads the run.

use std::path::Path;

use ca_data::DataConfig;
use serde::{Deserialize, Serialize};

pub use ca_eval::EvalConfig;
pub use ca_models::apply::{ApplyConfig, DiffusionEdit, GanEdit};

use crate::ca_terms::CodeTerms;
pub use crate::family::{LossConfig, ModelConfig, OptimConfig};
pub use crate::overrides::ConfigError;
use crate::overrides::{apply_overrides, closest, with_suggestion};

/// A whole run: what `ca train --config FILE` reads (through [`RunConfig::from_toml`]).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RunConfig {
    /// The dataset (`[data]`).
    pub data: DataConfig,
    /// The model family and its networks (`[model]`).
    pub model: ModelConfig,
    /// The family's loss weights (`[loss]`).
    pub loss: LossConfig,
    /// The family's optimiser settings (`[optim]`).
    pub optim: OptimConfig,
    /// Training loop (`[train]`).
    pub train: TrainConfig,
    /// Evaluation (`[eval]`).
    pub eval: EvalConfig,
    /// How a trained model edits real images (`[apply]`): read by `ca counterfactual`, `ca swap`
    /// and `ca eval`, never by training, so it can be changed in a run's `config.toml`.
    pub apply: ApplyConfig,
}

/// The tables as read, `[loss]` and `[optim]` still raw: which keys they may hold depends on
/// `model.family`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRunConfig {
    #[serde(default)]
    data: DataConfig,
    model: ModelConfig,
    #[serde(default)]
    loss: toml::Table,
    #[serde(default)]
    optim: toml::Table,
    #[serde(default)]
    train: TrainConfig,
    #[serde(default)]
    eval: EvalConfig,
    #[serde(default)]
    apply: ApplyConfig,
}

/// The learning-rate schedule of a family's optimisers (`optim.schedule`, `optim.warmup_steps`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LrSchedule {
    /// Constant or cosine after warm-up.
    pub schedule: Schedule,
    /// Linear warm-up steps.
    pub warmup_steps: u64,
}

impl LrSchedule {
    /// The learning-rate multiplier at `step` (0-based) of `total` steps.
    pub fn lr_factor(&self, step: u64, total: u64) -> f64 {
        let warm = if self.warmup_steps > 0 && step < self.warmup_steps {
            (step + 1) as f64 / self.warmup_steps as f64
        } else {
            1.0
        };
        let decay = match self.schedule {
            Schedule::Constant => 1.0,
            Schedule::Cosine => {
                let span = total.saturating_sub(self.warmup_steps).max(1) as f64;
                let t = (step.saturating_sub(self.warmup_steps) as f64 / span).min(1.0);
                0.1 + 0.9 * 0.5 * (1.0 + (std::f64::consts::PI * t).cos())
            }
        };
        warm * decay
    }
}

/// A [`ConfigError::Value`] for `key`.
pub fn bad_value(key: &str, value: &str, msg: &str) -> ConfigError {
    ConfigError::Value {
        key: key.into(),
        value: value.into(),
        msg: msg.into(),
    }
}

/// Every loss weight (the shared ones of `ca` and the family's `own`) must be finite and >= 0;
/// `loss.salient_nce_temperature` > 0.
pub fn check_weights(ca: &CodeTerms, own: &[(&str, f64)]) -> Result<(), ConfigError> {
    for (k, v) in ca.weights().iter().copied().chain(own.iter().copied()) {
        if !(v >= 0.0 && v.is_finite()) {
            return Err(bad_value(
                k,
                &v.to_string(),
                "loss weights must be finite and >= 0",
            ));
        }
    }
    let t = ca.salient_nce_temperature;
    if !(t > 0.0 && t.is_finite()) {
        return Err(bad_value(
            "loss.salient_nce_temperature",
            &t.to_string(),
            "must be finite and > 0 (typical: 0.1-0.5)",
        ));
    }
    Ok(())
}

/// Learning rates in (0, 1), Adam betas in [0, 1).
pub fn check_adam(lrs: &[(&str, f64)], beta1: f64, beta2: f64) -> Result<(), ConfigError> {
    for &(k, v) in lrs {
        if !(v > 0.0 && v < 1.0) {
            return Err(bad_value(
                k,
                &v.to_string(),
                "learning rates must be in (0, 1)",
            ));
        }
    }
    for (k, v) in [("optim.beta1", beta1), ("optim.beta2", beta2)] {
        if !(0.0..1.0).contains(&v) {
            return Err(bad_value(k, &v.to_string(), "Adam betas must be in [0, 1)"));
        }
    }
    Ok(())
}

/// Every key of `table` (the `[section]` of a `family` config) must be one of `allowed`; one
/// that another family has is named with that family, any other with the closest allowed key.
pub fn check_keys(
    table: &toml::Table,
    section: &str,
    family: &str,
    allowed: &[String],
    others: &[(&str, &[String])],
    origin: &str,
) -> Result<(), ConfigError> {
    for key in table.keys() {
        if allowed.contains(key) {
            continue;
        }
        let mut msg = match others.iter().find(|(_, keys)| keys.contains(key)) {
            Some((other, _)) => format!(
                "`{section}.{key}` is a key of the {other} family, but this config's model.family is \"{family}\"; remove it (the {family} family's [{section}] keys: {})",
                allowed.join(", ")
            ),
            None => format!(
                "unknown key `{section}.{key}` for model.family = \"{family}\" (its [{section}] keys: {})",
                allowed.join(", ")
            ),
        };
        if let Some(best) = closest(key, allowed.iter().map(String::as_str)) {
            msg.push_str(&format!("\n  did you mean `{best}`?"));
        }
        return Err(ConfigError::Invalid {
            origin: origin.into(),
            msg,
        });
    }
    Ok(())
}

/// `--set` overrides for a trained run: each must be an `apply.KEY=VALUE` (the `[apply]` table
/// is the only part of a run's config that can change without retraining).
pub fn check_apply_sets(sets: &[String]) -> Result<(), ConfigError> {
    for set in sets {
        let key = set.split_once('=').map_or(set.as_str(), |(k, _)| k).trim();
        if !key.starts_with("apply.") || key.len() == "apply.".len() {
            return Err(ConfigError::Invalid {
                origin: "--set".into(),
                msg: format!(
                    "`{set}`: only the edit settings (`apply.KEY=VALUE`, e.g. apply.diffusion_guidance=0.5) can be changed on a trained run; its model, data and training settings are fixed by its checkpoint"
                ),
            });
        }
    }
    Ok(())
}

/// The learning-rate schedule.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum Schedule {
    /// Constant after warm-up.
    #[default]
    Constant,
    /// Cosine decay to 10% over `train.max_steps` after warm-up.
    Cosine,
}

/// The training loop.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TrainConfig {
    /// Images per step. Default 64.
    pub batch_size: usize,
    /// Steps to train (the learning-rate schedule spans them). Default 10,000.
    pub max_steps: u64,
    /// Stop cleanly (with a final checkpoint) after this many minutes (0 = no limit).
    pub max_minutes: f64,
    /// EMA half-life of the generator/encoder weights, in images seen. Default 10,000
    /// (StyleGAN2 uses 10k images for small runs).
    pub ema_half_life_images: f64,
    /// Log the loss terms every this many steps (one host sync per log). Default 50.
    pub log_every: u64,
    /// Write a sample grid every this many steps (0 = only at the end). Default 1,000.
    pub sample_every: u64,
    /// Write a checkpoint every this many steps (0 = only at the end). Default 1,000.
    pub checkpoint_every: u64,
    /// Keep this many newest checkpoints. Default 2.
    pub keep_last: usize,
    /// Run seed (network init, latent draws, data order). Default 0.
    pub seed: u64,
    /// libtorch intra-op threads (0 = libtorch's default). Default 0.
    pub threads: usize,
    /// On a NaN/Inf loss or weight, reload the last good checkpoint, multiply the learning
    /// rates by `rollback_lr_factor` and continue, instead of stopping. Default false.
    pub nan_rollback: bool,
    /// Learning-rate multiplier applied at each NaN rollback, in (0, 1). Default 0.5.
    pub rollback_lr_factor: f64,
    /// Stop (as without rollback) after this many rollbacks in a run. Default 3.
    pub max_rollbacks: u32,
    /// Arithmetic of the training forward passes: `fp32` (default) or `bf16` (autocast:
    /// convolutions and matrix products in bfloat16, reductions and losses in fp32, weights,
    /// gradients and optimiser state in fp32), on the CPU and on CUDA.
    pub precision: Precision,
}

/// The arithmetic of the training forward passes (`train.precision`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum Precision {
    /// Everything in float32.
    #[default]
    Fp32,
    /// bfloat16 autocast (no loss scaling needed: bfloat16 has fp32's exponent range).
    Bf16,
}

impl Precision {
    /// The autocast type of the training forward passes (`None`: fp32, no autocast region).
    pub fn autocast_dtype(self) -> Option<ca_models::blocks::native::AutocastDtype> {
        match self {
            Precision::Fp32 => None,
            Precision::Bf16 => Some(ca_models::blocks::native::AutocastDtype::BFloat16),
        }
    }
}

impl TrainConfig {
    /// Range checks of `[train]`.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let bad = |key: &str, value: String, msg: &str| bad_value(key, &value, msg);
        let t = self;
        if t.batch_size < 2 {
            return Err(bad(
                "train.batch_size",
                t.batch_size.to_string(),
                "must be at least 2",
            ));
        }
        if t.max_steps == 0 {
            return Err(bad("train.max_steps", "0".into(), "must be at least 1"));
        }
        if t.max_minutes < 0.0 || !t.max_minutes.is_finite() {
            return Err(bad(
                "train.max_minutes",
                t.max_minutes.to_string(),
                "must be >= 0",
            ));
        }
        if !(t.rollback_lr_factor > 0.0 && t.rollback_lr_factor < 1.0) {
            return Err(bad(
                "train.rollback_lr_factor",
                t.rollback_lr_factor.to_string(),
                "must be in (0, 1): each NaN rollback lowers the learning rates",
            ));
        }
        if t.log_every == 0 {
            return Err(bad("train.log_every", "0".into(), "must be at least 1"));
        }
        Ok(())
    }
}

/// Range checks of `[apply]`.
fn validate_apply(a: &ApplyConfig) -> Result<(), ConfigError> {
    let bad = |key: &str, value: String, msg: &str| bad_value(key, &value, msg);
    if !(a.mask_scale > 0.0 && a.mask_scale <= 1.0) {
        return Err(bad(
            "apply.mask_scale",
            a.mask_scale.to_string(),
            "must be in (0, 1] (a change of the rendering on a 0-1 scale; typical 0.05-0.2)",
        ));
    }
    if !(0.0..=1.0).contains(&a.diffusion_renoise) {
        return Err(bad(
            "apply.diffusion_renoise",
            a.diffusion_renoise.to_string(),
            "must be in [0, 1] (the share of fresh noise in the inverted x_T; 0 = none)",
        ));
    }
    if !(0.0..=10.0).contains(&a.diffusion_guidance) {
        return Err(bad(
            "apply.diffusion_guidance",
            a.diffusion_guidance.to_string(),
            "must be in [0, 10] (how many times more the new codes' change is applied, less 1; 0 = none)",
        ));
    }
    if !(0..=8).contains(&a.mask_dilate) {
        return Err(bad(
            "apply.mask_dilate",
            a.mask_dilate.to_string(),
            "must be 0-8 pixels",
        ));
    }
    for (k, v) in [
        ("apply.diffusion_ddim_steps", a.diffusion_ddim_steps),
        ("apply.diffusion_invert_steps", a.diffusion_invert_steps),
        ("apply.diffusion_prior_steps", a.diffusion_prior_steps),
    ] {
        if v == 0 {
            return Err(bad(
                k,
                "0".into(),
                "must be at least 1 (DDIM steps; capped at the schedule's T)",
            ));
        }
    }
    Ok(())
}

impl Default for TrainConfig {
    fn default() -> Self {
        TrainConfig {
            batch_size: 64,
            max_steps: 10_000,
            max_minutes: 0.0,
            ema_half_life_images: 10_000.0,
            log_every: 50,
            sample_every: 1_000,
            checkpoint_every: 1_000,
            keep_last: 2,
            seed: 0,
            threads: 0,
            nan_rollback: false,
            rollback_lr_factor: 0.5,
            max_rollbacks: 3,
            precision: Precision::Fp32,
        }
    }
}

impl RunConfig {
    /// Parse TOML text (with overrides applied first). `origin` names the file in errors.
    pub fn from_toml(text: &str, origin: &str, sets: &[String]) -> Result<Self, ConfigError> {
        Self::from_table(parse_table(text, origin)?, origin, sets)
    }

    /// Parse the `config.toml` of a run directory. Runs trained before `[loss]` and `[optim]`
    /// became per-family wrote every family's keys there; those a run's family never read are
    /// dropped (diffusion: the GAN's loss keys, `lr_d`, `lr_e`, and `lr_g` read as `lr`; GAN:
    /// `denoise`, `grad_clip`, `grad_clip_groups`), so such a run still loads.
    pub fn from_saved_toml(text: &str, origin: &str, sets: &[String]) -> Result<Self, ConfigError> {
        let mut table = parse_table(text, origin)?;
        migrate_saved(&mut table);
        Self::from_table(table, origin, sets)
    }

    fn from_table(
        mut table: toml::Table,
        origin: &str,
        sets: &[String],
    ) -> Result<Self, ConfigError> {
        apply_overrides(&mut table, sets)?;
        let raw: RawRunConfig =
            toml::Value::Table(table)
                .try_into()
                .map_err(|e: toml::de::Error| ConfigError::Invalid {
                    origin: origin.into(),
                    msg: with_suggestion(&e.to_string()),
                })?;
        let (loss, optim) = crate::family::parse_sections(&raw.model, raw.loss, raw.optim, origin)?;
        let cfg = RunConfig {
            data: raw.data,
            model: raw.model,
            loss,
            optim,
            train: raw.train,
            eval: raw.eval,
            apply: raw.apply,
        };
        cfg.validate()?;
        Ok(cfg)
    }

    /// Read a TOML file with overrides.
    pub fn load(path: &Path, sets: &[String]) -> Result<Self, ConfigError> {
        Self::from_toml(&read(path)?, &path.display().to_string(), sets)
    }

    /// Read a run directory's `config.toml` with overrides ([`RunConfig::from_saved_toml`]).
    pub fn load_saved(path: &Path, sets: &[String]) -> Result<Self, ConfigError> {
        Self::from_saved_toml(&read(path)?, &path.display().to_string(), sets)
    }

    /// The config as TOML text (what is saved in the run directory).
    pub fn to_toml(&self) -> String {
        toml::to_string_pretty(self).expect("config serialises")
    }

    /// Range checks of the keys owned by ca-train (data and model validate themselves when
    /// opened/built), the family's `[loss]` / `[optim]`, `[eval]` and `[apply]`.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.train.validate()?;
        self.optim.validate()?;
        self.loss.validate()?;
        validate_apply(&self.apply)?;
        let bad = |key: &str, value: String, msg: &str| bad_value(key, &value, msg);
        if self.eval.folds < 2 {
            return Err(bad(
                "eval.folds",
                self.eval.folds.to_string(),
                "must be at least 2",
            ));
        }
        let (dz, ds) = self.model.dims();
        if dz < 1 || ds < 1 {
            return Err(bad(
                "model.dz / model.ds",
                format!("{dz} / {ds}"),
                "both must be >= 1",
            ));
        }
        Ok(())
    }

    /// A short digest of the model section: checkpoints record it, and a run refuses to load a
    /// checkpoint written under another model config.
    pub fn model_digest(&self) -> String {
        let text = toml::to_string(&self.model).expect("model config serialises");
        // FNV-1a 64: stable across platforms and Rust versions.
        format!("{:016x}", ca_data::digest::fnv1a64(text.as_bytes()))
    }
}

fn read(path: &Path) -> Result<String, ConfigError> {
    std::fs::read_to_string(path).map_err(|source| ConfigError::Io {
        path: path.to_path_buf(),
        source,
    })
}

fn parse_table(text: &str, origin: &str) -> Result<toml::Table, ConfigError> {
    text.parse()
        .map_err(|e: toml::de::Error| ConfigError::Invalid {
            origin: origin.into(),
            msg: e.to_string(),
        })
}

/// See [`RunConfig::from_saved_toml`].
fn migrate_saved(table: &mut toml::Table) {
    let family = table
        .get("model")
        .and_then(|m| m.get("family"))
        .and_then(|f| f.as_str())
        .unwrap_or_default()
        .to_string();
    let (loss_drop, optim_drop): (&[&str], &[&str]) = match family.as_str() {
        "diffusion" => (
            &[
                "adversarial",
                "adversarial_kind",
                "r1_gamma",
                "r1_every",
                "info_z",
                "info_s",
                "salient_class",
                "recon_pixel",
                "recon_features",
                "swap",
                "prior",
                "salient_warmup_steps",
            ],
            &["lr_d", "lr_e"],
        ),
        "gan" => (&["denoise"], &["grad_clip", "grad_clip_groups"]),
        _ => return,
    };
    if let Some(toml::Value::Table(loss)) = table.get_mut("loss") {
        for k in loss_drop {
            loss.remove(*k);
        }
    }
    if let Some(toml::Value::Table(optim)) = table.get_mut("optim") {
        for k in optim_drop {
            optim.remove(*k);
        }
        if family == "diffusion"
            && !optim.contains_key("lr")
            && let Some(lr) = optim.remove("lr_g")
        {
            optim.insert("lr".into(), lr);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINIMAL: &str = "[model]\nfamily = \"gan\"\n";

    #[test]
    fn minimal_config_uses_defaults() {
        let c = RunConfig::from_toml(MINIMAL, "t.toml", &[]).unwrap();
        assert_eq!(c.train.batch_size, 64);
        assert_eq!(c.model.family(), "gan");
        assert!(matches!(c.data, DataConfig::Synthetic(_)));
    }

    #[test]
    fn typo_is_rejected_with_suggestion() {
        let e = RunConfig::from_toml(
            &format!("{MINIMAL}[train]\nbatch_sise = 3\n"),
            "t.toml",
            &[],
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("batch_sise") && e.contains("did you mean `batch_size`"),
            "{e}"
        );
    }

    #[test]
    fn overrides_are_typed() {
        let c = RunConfig::from_toml(MINIMAL, "t.toml", &["train.batch_size=16".into()]).unwrap();
        assert_eq!(c.train.batch_size, 16);
        let e = RunConfig::from_toml(MINIMAL, "t.toml", &["train.batch_size=abc".into()])
            .unwrap_err()
            .to_string();
        assert!(e.contains("batch_size"), "{e}");
    }

    #[test]
    fn out_of_range_values_name_the_key() {
        let e = RunConfig::from_toml(MINIMAL, "t.toml", &["optim.lr_g=2".into()])
            .unwrap_err()
            .to_string();
        assert!(e.contains("optim.lr_g"), "{e}");
        let e = RunConfig::from_toml(MINIMAL, "t.toml", &["loss.swap=-1".into()])
            .unwrap_err()
            .to_string();
        assert!(e.contains("loss.swap"), "{e}");
        for set in [
            "apply.mask_scale=0",
            "apply.mask_scale=1.5",
            "apply.mask_dilate=-1",
            "apply.mask_dilate=9",
            "apply.diffusion_renoise=-0.1",
            "apply.diffusion_renoise=1.5",
            "apply.diffusion_guidance=-1",
            "apply.diffusion_guidance=11",
        ] {
            let e = RunConfig::from_toml(MINIMAL, "t.toml", &[set.into()])
                .unwrap_err()
                .to_string();
            let key = set.split('=').next().unwrap();
            assert!(e.contains(key), "{set}: {e}");
        }
        let c =
            RunConfig::from_toml(MINIMAL, "t.toml", &["apply.gan_edit=\"masked\"".into()]).unwrap();
        assert_eq!(c.apply.gan_edit, GanEdit::Masked);
        assert_eq!(c.apply.diffusion_edit, DiffusionEdit::Invert);
        assert_eq!((c.apply.mask_scale, c.apply.mask_dilate), (0.1, 3));
        // Run configs written before the diffusion edit name the mask settings `gan_mask_*`.
        let old = RunConfig::from_toml(
            MINIMAL,
            "t.toml",
            &[
                "apply.gan_mask_scale=0.2".into(),
                "apply.gan_mask_dilate=1".into(),
                "apply.diffusion_edit=\"masked\"".into(),
            ],
        )
        .unwrap();
        assert_eq!((old.apply.mask_scale, old.apply.mask_dilate), (0.2, 1));
        assert_eq!(old.apply.diffusion_edit, DiffusionEdit::Masked);
        let c = RunConfig::from_toml(
            MINIMAL,
            "t.toml",
            &["apply.diffusion_edit=\"inpaint\"".into()],
        )
        .unwrap();
        assert_eq!(c.apply.diffusion_edit, DiffusionEdit::Inpaint);
        let e = RunConfig::from_toml(
            MINIMAL,
            "t.toml",
            &["apply.diffusion_edit=\"paint\"".into()],
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("inpaint") && e.contains("diffusion_edit"), "{e}");
        let e = RunConfig::from_toml(MINIMAL, "t.toml", &["apply.gan_mask_scale=0".into()])
            .unwrap_err()
            .to_string();
        assert!(e.contains("apply.mask_scale"), "{e}");
    }

    #[test]
    fn salient_nce_and_decorrelation_keys_default_off_and_are_validated() {
        let c = RunConfig::from_toml(MINIMAL, "t.toml", &[]).unwrap();
        let LossConfig::Gan(l) = &c.loss else {
            panic!("a gan config")
        };
        assert_eq!(l.ca.salient_nce, 0.0);
        assert_eq!(l.ca.salient_decorrelation, 0.0);
        for (set, key) in [
            (
                "loss.salient_nce_temperature=0",
                "loss.salient_nce_temperature",
            ),
            ("loss.salient_nce=-1", "loss.salient_nce"),
            (
                "loss.salient_decorrelation=-0.5",
                "loss.salient_decorrelation",
            ),
        ] {
            let e = RunConfig::from_toml(MINIMAL, "t.toml", &[set.into()])
                .unwrap_err()
                .to_string();
            assert!(e.contains(key), "{set}: {e}");
        }
    }

    #[test]
    fn nan_rollback_keys_default_off_and_are_validated() {
        let c = RunConfig::from_toml(MINIMAL, "t.toml", &[]).unwrap();
        assert!(!c.train.nan_rollback);
        assert_eq!(
            (c.train.rollback_lr_factor, c.train.max_rollbacks),
            (0.5, 3)
        );
        let e = RunConfig::from_toml(
            MINIMAL,
            "t.toml",
            &[
                "train.nan_rollback=true".into(),
                "train.rollback_lr_factor=1.5".into(),
            ],
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("train.rollback_lr_factor") && e.contains("(0, 1)"),
            "{e}"
        );
    }

    #[test]
    fn round_trips_through_toml() {
        let c = RunConfig::from_toml(MINIMAL, "t.toml", &[]).unwrap();
        let back = RunConfig::from_toml(&c.to_toml(), "saved", &[]).unwrap();
        assert_eq!(c, back);
        assert_eq!(c.model_digest(), back.model_digest());
    }

    #[test]
    fn cosine_schedule_endpoints() {
        let o = LrSchedule {
            schedule: Schedule::Cosine,
            warmup_steps: 10,
        };
        assert!(
            (o.lr_factor(0, 110) - 0.1).abs() < 1e-12,
            "warm-up starts at 1/10"
        );
        assert!((o.lr_factor(10, 110) - 1.0).abs() < 1e-12);
        assert!((o.lr_factor(110, 110) - 0.1).abs() < 1e-9);
    }

    const DIFFUSION: &str = "[model]\nfamily = \"diffusion\"\n";

    /// `[loss]` and `[optim]` are the family's own: another family's key is refused by name,
    /// with whose key it is; a typo gets the closest key of the family.
    #[test]
    fn loss_and_optim_keys_are_the_familys_own() {
        for (base, set, named, whose) in [
            (DIFFUSION, "loss.adversarial=1", "`loss.adversarial`", "gan"),
            (DIFFUSION, "optim.lr_g=0.001", "`optim.lr_g`", "gan"),
            (MINIMAL, "loss.denoise=1", "`loss.denoise`", "diffusion"),
            (
                MINIMAL,
                "optim.grad_clip=1",
                "`optim.grad_clip`",
                "diffusion",
            ),
            (MINIMAL, "optim.lr=0.001", "`optim.lr`", "diffusion"),
        ] {
            let e = RunConfig::from_toml(base, "t.toml", &[set.into()])
                .unwrap_err()
                .to_string();
            assert!(
                e.contains(named) && e.contains(&format!("a key of the {whose} family")),
                "{set}: {e}"
            );
        }
        let e = RunConfig::from_toml(DIFFUSION, "t.toml", &["loss.denoize=1".into()])
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("`loss.denoize`") && e.contains("did you mean `denoise`"),
            "{e}"
        );
        let c = RunConfig::from_toml(
            DIFFUSION,
            "t.toml",
            &["optim.lr=0.0005".into(), "loss.mmd=2".into()],
        )
        .unwrap();
        let (LossConfig::Diffusion(l), OptimConfig::Diffusion(o)) = (&c.loss, &c.optim) else {
            panic!("diffusion tables: {c:?}")
        };
        assert_eq!((o.lr, l.ca.mmd, l.denoise), (0.0005, 2.0, 1.0));
        let e = RunConfig::from_toml(DIFFUSION, "t.toml", &["optim.lr=2".into()])
            .unwrap_err()
            .to_string();
        assert!(e.contains("optim.lr"), "{e}");
        let back = RunConfig::from_toml(&c.to_toml(), "saved", &[]).unwrap();
        assert_eq!(c, back);
    }

    /// A run directory's config.toml written before the tables were per-family (every key of
    /// both families, the diffusion learning rate as `lr_g`) still loads, to the same values.
    #[test]
    fn saved_configs_of_the_old_form_still_load() {
        let old = format!(
            "{DIFFUSION}[loss]\nadversarial = 0.0\nrecon_pixel = 0.0\nsalient_warmup_steps = 0\ndenoise = 1.0\nmmd = 1.0\n[optim]\nlr_g = 0.0005\nlr_d = 0.0002\nlr_e = 0.0002\ngrad_clip = 1.0\n"
        );
        assert!(RunConfig::from_toml(&old, "t.toml", &[]).is_err());
        let c = RunConfig::from_saved_toml(&old, "config.toml", &[]).unwrap();
        let (LossConfig::Diffusion(l), OptimConfig::Diffusion(o)) = (&c.loss, &c.optim) else {
            panic!("diffusion tables: {c:?}")
        };
        assert_eq!((o.lr, o.grad_clip, l.ca.mmd), (0.0005, 1.0, 1.0));
        let gan = format!(
            "{MINIMAL}[loss]\ndenoise = 1.0\nswap = 1.0\n[optim]\nlr_g = 0.001\ngrad_clip = 0.0\ngrad_clip_groups = false\n"
        );
        let c = RunConfig::from_saved_toml(&gan, "config.toml", &[]).unwrap();
        let (LossConfig::Gan(l), OptimConfig::Gan(o)) = (&c.loss, &c.optim) else {
            panic!("gan tables: {c:?}")
        };
        assert_eq!((o.lr_g, l.swap), (0.001, 1.0));
        // A saved config of the current form is read unchanged.
        assert_eq!(
            RunConfig::from_saved_toml(&c.to_toml(), "c", &[]).unwrap(),
            c
        );
    }

    #[test]
    fn sampling_step_counts_are_apply_keys() {
        let c = RunConfig::from_toml(DIFFUSION, "t.toml", &[]).unwrap();
        assert_eq!(
            (
                c.apply.diffusion_ddim_steps,
                c.apply.diffusion_invert_steps,
                c.apply.diffusion_prior_steps
            ),
            (50, 100, 50)
        );
        for key in [
            "apply.diffusion_ddim_steps",
            "apply.diffusion_invert_steps",
            "apply.diffusion_prior_steps",
        ] {
            let e = RunConfig::from_toml(DIFFUSION, "t.toml", &[format!("{key}=0")])
                .unwrap_err()
                .to_string();
            assert!(e.contains(key), "{e}");
        }
        assert!(
            RunConfig::from_toml(
                DIFFUSION,
                "t.toml",
                &["apply.diffusion_invert_steps=20".into()]
            )
            .unwrap()
            .to_toml()
            .contains("diffusion_invert_steps = 20")
        );
    }
}
