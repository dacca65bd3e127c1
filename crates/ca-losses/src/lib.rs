//! Loss terms for contrastive analysis, as pure functions over `tch::Tensor`.
//!
//! No parameters, no IO, no config types: each function takes tensors and returns a per-sample
//! `[B]` tensor (or a scalar where a term is not per-sample, documented in its `# Shapes`), so
//! the trainer can mask rows and weight terms.
//! Siblings: `ca-models`, `ca-data`, `ca-train`, `ca-cli`.
#![warn(missing_docs)]
