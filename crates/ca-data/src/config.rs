//! The `[data]` section of a run config, one-to-one with TOML.
//!
//! ```toml
//! [data]
//! kind = "synthetic"        # or "folder" / "npy"
//! difficulty = "standard"   # synthetic only
//! size = 32
//! seed = 0
//! ```
//!
//! Keys shared by all kinds (`size`, `channels`, `eval_fraction`, `seed`, `cache_mb`, `hflip`,
//! `skip_bad_images`, `target_fraction`, `workers`, `prefetch`) sit beside the kind's own keys;
//! an unknown key is an error naming it.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::error::{DataError, Result};

/// Synthetic-benchmark difficulty preset: sets the overlay area, the occlusion of the main
/// object and the pixel noise, unless the raw knobs override them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Difficulty {
    /// Overlay 12-18 % of the image, occlusion 0.25, no noise.
    Easy,
    /// Overlay 8-15 % of the image, occlusion 0.5, noise 0.02 (the default).
    #[default]
    Standard,
    /// Overlay 3-6 % of the image, occlusion 0.75, noise 0.05.
    Hard,
}

/// Per-image intensity normalisation of `.npy` slices.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum NpyNorm {
    /// Map [min, max] of each image to [0, 255].
    #[default]
    MinMax,
    /// Clip each image at its `percentile_low`/`percentile_high` percentiles, then min-max.
    Percentile,
}

macro_rules! with_shared_keys {
    ($(#[$m:meta])* pub struct $name:ident { $($body:tt)* }) => {
        $(#[$m])*
        pub struct $name {
            $($body)*
            /// Side of the square images fed to models, in pixels (resize shorter side + centre
            /// crop). Default: 32 for `synthetic`, 64 for `folder` and `npy`.
            #[serde(default)]
            pub size: Option<usize>,
            /// Channels fed to models: 1 (grey) or 3 (RGB). Default: 3, except 1 for `npy`.
            #[serde(default)]
            pub channels: Option<usize>,
            /// Fraction of each set held out for evaluation, chosen per image from `seed`
            /// (stable: independent of batch size and worker count). Default 0.1.
            #[serde(default = "default_eval_fraction")]
            pub eval_fraction: f64,
            /// Seed of the train/eval split, the shuffles, the flips and the synthetic images.
            /// Default 0.
            #[serde(default)]
            pub seed: u64,
            /// Budget of the in-memory cache of decoded u8 images, in MiB. Default 1024.
            #[serde(default = "default_cache_mb")]
            pub cache_mb: usize,
            /// Random horizontal flip of training images. Default false.
            #[serde(default)]
            pub hflip: bool,
            /// Skip unreadable images (reporting their count and first paths) instead of
            /// failing. Default false.
            #[serde(default)]
            pub skip_bad_images: bool,
            /// Fraction of each training batch drawn from the target set, in [0, 1]. Default 0.5.
            #[serde(default = "default_target_fraction")]
            pub target_fraction: f64,
            /// Decoder threads of the training loader. Default 2.
            #[serde(default = "default_workers")]
            pub workers: usize,
            /// Batches decoded ahead of the training loop. Default 4.
            #[serde(default = "default_prefetch")]
            pub prefetch: usize,
        }
    };
}

fn default_eval_fraction() -> f64 {
    0.1
}
fn default_cache_mb() -> usize {
    1024
}
fn default_target_fraction() -> f64 {
    0.5
}
fn default_workers() -> usize {
    2
}
fn default_prefetch() -> usize {
    4
}
fn default_n() -> usize {
    20_000
}
fn default_p_low() -> f64 {
    0.5
}
fn default_p_high() -> f64 {
    99.5
}

with_shared_keys! {
    /// `kind = "synthetic"`: the procedurally rendered benchmark (no files).
    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
    #[serde(deny_unknown_fields)]
    pub struct SyntheticConfig {
        /// Number of background images (index space; rendered on demand). Default 20000.
        #[serde(default = "default_n")]
        pub n_background: usize,
        /// Number of target images. Default 20000.
        #[serde(default = "default_n")]
        pub n_target: usize,
        /// Difficulty preset. Default "standard".
        #[serde(default)]
        pub difficulty: Difficulty,
        /// Raw knob: overlay area as a fraction of the image, `[min, max]`, drawn uniformly.
        /// Default from `difficulty`.
        #[serde(default)]
        pub overlay_area: Option<[f64; 2]>,
        /// Raw knob: probability in [0, 1] that the overlay is centred on the main object
        /// (occluding it) rather than anywhere. Default from `difficulty`.
        #[serde(default)]
        pub occlusion: Option<f64>,
        /// Raw knob: standard deviation of the per-pixel noise, in units of the [0, 1] intensity
        /// range. Default from `difficulty`.
        #[serde(default)]
        pub noise: Option<f64>,
    }
}

with_shared_keys! {
    /// `kind = "folder"`: `ROOT/background/**` and `ROOT/target/**` image folders.
    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
    #[serde(deny_unknown_fields)]
    pub struct FolderConfig {
        /// Dataset root holding `background/`, `target/` and optionally `labels.csv`,
        /// `target_counterfactual/`, `target_mask/`. Required.
        pub root: PathBuf,
    }
}

with_shared_keys! {
    /// `kind = "npy"`: `ROOT/background/*.npy` and `ROOT/target/*.npy` slices.
    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
    #[serde(deny_unknown_fields)]
    pub struct NpyConfig {
        /// Dataset root holding `background/` and `target/`. Required.
        pub root: PathBuf,
        /// Per-image normalisation. Default "min-max".
        #[serde(default)]
        pub norm: NpyNorm,
        /// Lower clip percentile for `norm = "percentile"`, in [0, 100). Default 0.5.
        #[serde(default = "default_p_low")]
        pub percentile_low: f64,
        /// Upper clip percentile for `norm = "percentile"`, in (0, 100]. Default 99.5.
        #[serde(default = "default_p_high")]
        pub percentile_high: f64,
    }
}

/// The `[data]` section: which dataset, and how to batch it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case", deny_unknown_fields)]
pub enum DataConfig {
    /// The synthetic benchmark (the default).
    Synthetic(SyntheticConfig),
    /// Folder pairs of images.
    Folder(FolderConfig),
    /// `.npy` slices.
    Npy(NpyConfig),
}

impl Default for SyntheticConfig {
    fn default() -> Self {
        Self {
            n_background: default_n(),
            n_target: default_n(),
            difficulty: Difficulty::Standard,
            overlay_area: None,
            occlusion: None,
            noise: None,
            size: None,
            channels: None,
            eval_fraction: default_eval_fraction(),
            seed: 0,
            cache_mb: default_cache_mb(),
            hflip: false,
            skip_bad_images: false,
            target_fraction: default_target_fraction(),
            workers: default_workers(),
            prefetch: default_prefetch(),
        }
    }
}

impl Default for DataConfig {
    fn default() -> Self {
        DataConfig::Synthetic(SyntheticConfig::default())
    }
}

/// The shared keys, resolved (defaults filled, ranges checked).
#[derive(Debug, Clone, PartialEq)]
pub struct Common {
    /// Image side in pixels.
    pub size: usize,
    /// Channels (1 or 3).
    pub channels: usize,
    /// Evaluation fraction in [0, 1).
    pub eval_fraction: f64,
    /// Seed.
    pub seed: u64,
    /// Cache budget in bytes.
    pub cache_bytes: usize,
    /// Horizontal flip of training images.
    pub hflip: bool,
    /// Skip unreadable images.
    pub skip_bad_images: bool,
    /// Target fraction of a training batch.
    pub target_fraction: f64,
    /// Loader worker threads (>= 1).
    pub workers: usize,
    /// Batches prefetched (>= 1).
    pub prefetch: usize,
}

impl Default for Common {
    fn default() -> Self {
        DataConfig::default()
            .common()
            .expect("default config is valid")
    }
}

macro_rules! resolve_common {
    ($c:expr, $size:expr, $ch:expr) => {
        Common {
            size: $c.size.unwrap_or($size),
            channels: $c.channels.unwrap_or($ch),
            eval_fraction: $c.eval_fraction,
            seed: $c.seed,
            cache_bytes: $c.cache_mb.saturating_mul(1 << 20),
            hflip: $c.hflip,
            skip_bad_images: $c.skip_bad_images,
            target_fraction: $c.target_fraction,
            workers: $c.workers,
            prefetch: $c.prefetch,
        }
    };
}

impl DataConfig {
    /// The shared keys with defaults filled in, validated.
    pub fn common(&self) -> Result<Common> {
        let c = match self {
            DataConfig::Synthetic(c) => resolve_common!(c, 32, 3),
            DataConfig::Folder(c) => resolve_common!(c, 64, 3),
            DataConfig::Npy(c) => resolve_common!(c, 64, 1),
        };
        if !(4..=4096).contains(&c.size) {
            return Err(DataError::config(format!(
                "data.size = {} (expected 4..=4096 pixels)",
                c.size
            )));
        }
        if c.channels != 1 && c.channels != 3 {
            return Err(DataError::config(format!(
                "data.channels = {} (expected 1 or 3)",
                c.channels
            )));
        }
        if !(0.0..1.0).contains(&c.eval_fraction) {
            return Err(DataError::config(format!(
                "data.eval_fraction = {} (expected 0 <= f < 1)",
                c.eval_fraction
            )));
        }
        if !(0.0..=1.0).contains(&c.target_fraction) {
            return Err(DataError::config(format!(
                "data.target_fraction = {} (expected 0..=1)",
                c.target_fraction
            )));
        }
        if c.workers == 0 || c.prefetch == 0 {
            return Err(DataError::config(
                "data.workers and data.prefetch must be >= 1",
            ));
        }
        Ok(c)
    }

    /// Open the dataset this config describes (folders are scanned, headers checked; images
    /// are decoded lazily by the loader).
    pub fn open(&self) -> Result<Box<dyn crate::Dataset>> {
        let common = self.common()?;
        Ok(match self {
            DataConfig::Synthetic(c) => {
                Box::new(crate::synthetic::SyntheticDataset::new(c, common)?)
            }
            DataConfig::Folder(c) => Box::new(crate::folder::FolderDataset::open(&c.root, common)?),
            DataConfig::Npy(c) => Box::new(crate::npy::NpyDataset::open(c, common)?),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_each_kind_and_rejects_unknown_keys() {
        let c: DataConfig =
            toml::from_str("kind = \"synthetic\"\ndifficulty = \"hard\"\nsize = 64").unwrap();
        let DataConfig::Synthetic(s) = &c else {
            panic!("not synthetic")
        };
        assert_eq!(s.difficulty, Difficulty::Hard);
        assert_eq!(c.common().unwrap().size, 64);
        let c: DataConfig =
            toml::from_str("kind = \"folder\"\nroot = \"x\"\nhflip = true").unwrap();
        assert_eq!(c.common().unwrap().size, 64);
        assert!(c.common().unwrap().hflip);
        let c: DataConfig =
            toml::from_str("kind = \"npy\"\nroot = \"x\"\nnorm = \"percentile\"").unwrap();
        assert_eq!(c.common().unwrap().channels, 1);
        let e =
            toml::from_str::<DataConfig>("kind = \"folder\"\nroot = \"x\"\nsise = 3").unwrap_err();
        assert!(e.to_string().contains("sise"), "{e}");
        let e = toml::from_str::<DataConfig>("kind = \"synthetic\"\nroot = \"x\"").unwrap_err();
        assert!(e.to_string().contains("root"), "{e}");
    }

    #[test]
    fn default_is_synthetic_32_rgb_and_validates() {
        let c = DataConfig::default().common().unwrap();
        assert_eq!((c.size, c.channels), (32, 3));
        let bad = DataConfig::Synthetic(SyntheticConfig {
            channels: Some(2),
            ..Default::default()
        });
        assert!(bad.common().unwrap_err().to_string().contains("channels"));
    }
}
