//! Training of contrastive-analysis models: the loop, the optimiser, EMA, checkpoints, and the
//! model families behind one registry.
//!
//! * [`run`] — the training loop shared by every family, run directories, [`run::load_run`];
//! * [`step`] — what the loop sees of a family ([`step::TrainStep`]) and the errors of a run;
//! * [`family`] — the registry: `model.family` -> the family's config tables, training step and
//!   inference model ([`family::gan`], [`family::diffusion`]);
//! * [`ca_terms`] — the code-level contrastive-analysis terms every family trains with;
//! * [`config`] — the run TOML; [`overrides`] — `--set`;
//! * [`adam`], [`ema`], [`checkpoint`], [`malloc`].
//!
//! Builds on `ca-data` (datasets), `ca-models` (networks, the `CaModel` trait), `ca-losses`
//! (loss terms) and `ca-eval` (the `[eval]` table); used by `ca-cli` (the `ca` binary).
#![warn(missing_docs)]

pub mod adam;
pub mod ca_terms;
pub mod checkpoint;
pub mod config;
pub mod ema;
pub mod family;
pub mod malloc;
pub mod overrides;
pub mod run;
pub mod step;
