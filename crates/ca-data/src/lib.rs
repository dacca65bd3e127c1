//! Datasets for contrastive analysis (CA): pairs of image collections, a **background** set and
//! a **target** set, delivered as u8 batches with a group label (0 = background, 1 = target).
//!
//! * [`synthetic`]: the procedurally rendered benchmark with known common and salient factors,
//!   exact background counterparts and overlay masks (the default dataset, no files).
//! * [`folder`]: `ROOT/background/**` and `ROOT/target/**` images, optional `labels.csv` and
//!   ground-truth folders; [`npy`]: `.npy` slices with per-image normalisation.
//! * [`loader`]: the prefetching training loader and the sequential evaluation pass;
//!   [`eval`]: a whole split as tensors for the metrics; [`export`]: the synthetic benchmark
//!   written to the folder layout.
//! * [`config`]: the `[data]` TOML section; [`DataConfig::open`] gives a `Box<dyn Dataset>`.
//!
//! Siblings: `ca-models`, `ca-losses`, `ca-train`, `ca-cli`.
#![warn(missing_docs)]

pub mod config;
pub mod dataset;
pub mod digest;
pub mod error;
pub mod eval;
pub mod export;
pub mod folder;
pub mod grid;
pub mod imageio;
pub mod labels;
pub mod loader;
pub mod npy;
pub mod synthetic;

pub use config::{
    Common, DataConfig, Difficulty, FolderConfig, NpyConfig, NpyNorm, SyntheticConfig,
};
pub use dataset::{Dataset, Group, LabelColumn, LabelKind, LabelScope};
pub use error::{DataError, DataErrorKind, Result};
pub use eval::{EvalSet, image_digests, load_eval_set, tensor_digests};
pub use export::{ExportSummary, export_synthetic};
pub use loader::{EvalBatches, LoaderOptions, PairBatch, Split, TrainLoader, split_indices};
