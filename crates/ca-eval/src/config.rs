//! The `[eval]` table of a run's config: how many images `ca eval` evaluates and how.

use serde::{Deserialize, Serialize};

/// Evaluation settings used by `ca eval`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EvalConfig {
    /// At most this many held-out images are evaluated. Default 2,000.
    pub max_images: usize,
    /// Cross-validation folds of the probes. Default 5.
    pub folds: usize,
    /// L2 strength of the logistic probes (sklearn's C = 1 / l2). Default 1.
    pub l2: f64,
    /// Batch size of encoding/decoding during evaluation. Default 100.
    pub batch_size: usize,
    /// At most this many real and this many generated images go through the FID Inception
    /// network (0 = all evaluated images). Default 500: a 299x299 Inception pass costs about
    /// on a CPU as much as everything else of a 32x32 evaluation together; measured on 2 cores:
    /// 0.11 s per image, so 500 (1,000 passes) keeps a 2,000-image evaluation near 2 minutes.
    pub fid_images: usize,
}

impl Default for EvalConfig {
    fn default() -> Self {
        EvalConfig {
            max_images: 2000,
            folds: 5,
            l2: 1.0,
            batch_size: 100,
            fid_images: 500,
        }
    }
}
