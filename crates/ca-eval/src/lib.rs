//! Evaluation of contrastive-analysis models, whatever their family.
//!
//! * [`metrics`] — the metrics as pure functions over tensors (probes, image metrics, FID/KID)
//!   and the FID Inception-v3 network ([`metrics::inception`]);
//! * [`evaluate()`] / [`evaluate_separation`] — `ca eval`: a trained model (any
//!   [`ca_models::CaModel`]) on a held-out split, with the domain classifier of [`classifier`];
//! * [`schema`] — `metrics.json`; [`report`] — writing it with `report.md` / `report.html` and
//!   the grids, and reading it back;
//! * [`EvalConfig`] — the `[eval]` table of a run's config.
//!
//! Speaks only `CaModel` (from `ca-models`) and `EvalSet` (from `ca-data`): nothing here knows
//! how a model was trained.
#![warn(missing_docs)]

pub mod classifier;
mod config;
mod evaluate;
pub mod metrics;
pub mod report;
pub mod schema;

pub use config::EvalConfig;
pub use evaluate::*;
