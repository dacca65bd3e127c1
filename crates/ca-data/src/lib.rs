//! Datasets for contrastive analysis: pairs of image collections (background and target).
//!
//! Siblings: `ca-models`, `ca-losses`, `ca-train`, `ca-cli`.
#![warn(missing_docs)]
