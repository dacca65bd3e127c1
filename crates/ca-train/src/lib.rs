//! Training loops, checkpoints, EMA, evaluation metrics and reports for contrastive analysis.
//!
//! Builds on `ca-data` (datasets), `ca-models` (networks) and `ca-losses` (loss terms); used by
//! `ca-cli` (the `ca` binary).
#![warn(missing_docs)]

pub mod adam;
pub mod checkpoint;
pub mod config;
pub mod diffusion;
pub mod ema;
pub mod eval;
pub mod gan;
pub mod images;
pub mod malloc;
pub mod metrics;
pub mod model;
pub mod overrides;
pub mod run;
pub mod salient_terms;
