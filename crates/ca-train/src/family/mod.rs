//! The model families behind one registry. A config's `[model] family = "..."` picks the
//! family; this module maps it to the family's `[loss]` / `[optim]` tables, its training step
//! and its inference model. The training loop sees only `Box<dyn TrainStep>`, the verbs and
//! evaluation only `Box<dyn CaModel>`. Adding a family touches this file and the family's own
//! folder, nothing else.
//!
//! * `gan` — CA-GAN (docs/design.md section 4.1), and with other presets Double InfoGAN and
//!   the plain autoencoder;
//! * `diffusion` — CA-diffusion (docs/design.md section 4.2).

pub mod diffusion;
pub mod gan;

use std::collections::HashMap;
use std::path::Path;

use ca_models::diffusion::DiffusionModelConfig;
use ca_models::gan::GanModelConfig;
use ca_models::{CaModel, ImageGeometry};
use serde::{Deserialize, Serialize};
use tch::{Device, Tensor};

use crate::config::{ConfigError, LrSchedule, RunConfig, check_keys};
use crate::step::{TrainError, TrainStep};
use diffusion::{DiffusionLossConfig, DiffusionOptimConfig};
use gan::{GanLossConfig, GanOptimConfig};

/// The model family and its networks (`[model]`, `family = "gan" | "diffusion"`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "family", rename_all = "kebab-case")]
pub enum ModelConfig {
    /// CA-GAN (docs/design.md 4.1).
    Gan(GanModelConfig),
    /// CA-diffusion (docs/design.md 4.2).
    Diffusion(DiffusionModelConfig),
}

/// The family's loss weights (`[loss]`); written as the family's own table.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(untagged)]
pub enum LossConfig {
    /// The GAN's.
    Gan(GanLossConfig),
    /// The diffusion model's.
    Diffusion(DiffusionLossConfig),
}

/// The family's optimiser settings (`[optim]`); written as the family's own table.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(untagged)]
pub enum OptimConfig {
    /// The GAN's: one learning rate per network.
    Gan(GanOptimConfig),
    /// The diffusion model's: one learning rate.
    Diffusion(DiffusionOptimConfig),
}

/// Every family's name, as `model.family` spells it.
pub const FAMILIES: [&str; 2] = ["gan", "diffusion"];

impl ModelConfig {
    /// `gan` or `diffusion`.
    pub fn family(&self) -> &'static str {
        match self {
            ModelConfig::Gan(_) => "gan",
            ModelConfig::Diffusion(_) => "diffusion",
        }
    }

    /// Common and salient code sizes.
    pub fn dims(&self) -> (i64, i64) {
        match self {
            ModelConfig::Gan(c) => (c.dz, c.ds),
            ModelConfig::Diffusion(c) => (c.dz, c.ds),
        }
    }

    /// The networks' part of a run directory's name (`gan-style`, `diffusion`).
    pub fn short_name(&self) -> &'static str {
        match self {
            ModelConfig::Gan(g) => match g.generator {
                ca_models::gan::GeneratorConfig::Dcgan(_) => "gan-dcgan",
                ca_models::gan::GeneratorConfig::Style(_) => "gan-style",
            },
            ModelConfig::Diffusion(_) => "diffusion",
        }
    }
}

/// The keys of a table as its type writes them (every field of these configs is written).
fn keys_of<T: Serialize>(value: &T) -> Vec<String> {
    toml::Table::try_from(value)
        .map(|t| t.keys().cloned().collect())
        .unwrap_or_default()
}

/// The `[loss]` and `[optim]` keys of a family (one of [`FAMILIES`]), as its tables write them.
fn section_keys(family: &str) -> [Vec<String>; 2] {
    match family {
        "gan" => [
            keys_of(&GanLossConfig::default()),
            keys_of(&GanOptimConfig::default()),
        ],
        _ => [
            keys_of(&DiffusionLossConfig::default()),
            keys_of(&DiffusionOptimConfig::default()),
        ],
    }
}

/// Read `[loss]` and `[optim]` as the tables of `model`'s family. A key of another family, or
/// no family's, is an error naming it (and the family that has it, or the closest key).
pub fn parse_sections(
    model: &ModelConfig,
    loss: toml::Table,
    optim: toml::Table,
    origin: &str,
) -> Result<(LossConfig, OptimConfig), ConfigError> {
    let family = model.family();
    let keys: Vec<(&str, [Vec<String>; 2])> =
        FAMILIES.iter().map(|f| (*f, section_keys(f))).collect();
    for (i, (section, table)) in [("loss", &loss), ("optim", &optim)].into_iter().enumerate() {
        let own = keys.iter().find(|(f, _)| *f == family).map(|(_, k)| &k[i]);
        let others: Vec<(&str, &[String])> = keys
            .iter()
            .filter(|(f, _)| *f != family)
            .map(|(f, k)| (*f, k[i].as_slice()))
            .collect();
        check_keys(
            table,
            section,
            family,
            own.map_or(&[], Vec::as_slice),
            &others,
            origin,
        )?;
    }
    let invalid = |e: toml::de::Error| ConfigError::Invalid {
        origin: origin.into(),
        msg: e.to_string(),
    };
    let (loss, optim) = (toml::Value::Table(loss), toml::Value::Table(optim));
    Ok(match model {
        ModelConfig::Gan(_) => (
            LossConfig::Gan(loss.try_into().map_err(invalid)?),
            OptimConfig::Gan(optim.try_into().map_err(invalid)?),
        ),
        ModelConfig::Diffusion(_) => (
            LossConfig::Diffusion(loss.try_into().map_err(invalid)?),
            OptimConfig::Diffusion(optim.try_into().map_err(invalid)?),
        ),
    })
}

impl LossConfig {
    /// Range checks of the family's keys.
    pub fn validate(&self) -> Result<(), ConfigError> {
        match self {
            LossConfig::Gan(l) => l.validate(),
            LossConfig::Diffusion(l) => l.validate(),
        }
    }
}

impl OptimConfig {
    /// Range checks of the family's keys.
    pub fn validate(&self) -> Result<(), ConfigError> {
        match self {
            OptimConfig::Gan(o) => o.validate(),
            OptimConfig::Diffusion(o) => o.validate(),
        }
    }

    /// The learning-rate schedule.
    pub fn lr_schedule(&self) -> LrSchedule {
        match self {
            OptimConfig::Gan(o) => o.lr_schedule(),
            OptimConfig::Diffusion(o) => o.lr_schedule(),
        }
    }

    /// The learning-rate multiplier at `step` (0-based) of `total` steps.
    pub fn lr_factor(&self, step: u64, total: u64) -> f64 {
        self.lr_schedule().lr_factor(step, total)
    }
}

fn mismatch(cfg: &RunConfig) -> TrainError {
    TrainError::Unsupported(format!(
        "the [loss] / [optim] tables are not those of model.family = \"{}\"",
        cfg.model.family()
    ))
}

/// Build the training step of the configured family (weights drawn after seeding libtorch
/// from `train.seed`).
pub fn build_step(
    cfg: &RunConfig,
    geom: ImageGeometry,
    device: Device,
) -> Result<Box<dyn TrainStep>, TrainError> {
    tch::manual_seed(crate::step::mix(cfg.train.seed) as i64);
    let autocast = cfg.train.precision.autocast_dtype();
    match (&cfg.model, &cfg.loss, &cfg.optim) {
        (ModelConfig::Gan(m), LossConfig::Gan(l), OptimConfig::Gan(o)) => {
            Ok(Box::new(gan::build_step(m, l, o, geom, autocast, device)?))
        }
        (ModelConfig::Diffusion(m), LossConfig::Diffusion(l), OptimConfig::Diffusion(o)) => Ok(
            Box::new(diffusion::build_step(m, l, o, geom, autocast, device)?),
        ),
        _ => Err(mismatch(cfg)),
    }
}

/// The trained model of a run for inference, from its `model.safetensors` tensors (read from
/// `file`), editing real images as `cfg.apply` says.
pub fn load_model(
    cfg: &RunConfig,
    geom: ImageGeometry,
    tensors: &HashMap<String, Tensor>,
    file: &Path,
    device: Device,
) -> Result<Box<dyn CaModel>, TrainError> {
    Ok(match &cfg.model {
        ModelConfig::Gan(g) => {
            Box::new(gan::GanModel::load(g, geom, tensors, file, device)?.with_edit(&cfg.apply))
        }
        ModelConfig::Diffusion(d) => Box::new(
            diffusion::DiffusionModel::load(d, geom, tensors, file, device)?.with_edit(&cfg.apply),
        ),
    })
}
