//! Training loops, checkpoints, EMA, evaluation metrics and reports for contrastive analysis.
//!
//! Builds on `ca-data` (datasets), `ca-models` (networks) and `ca-losses` (loss terms); used by
//! `ca-cli` (the `ca` binary).
#![warn(missing_docs)]

pub mod metrics;
