//! Evaluation metrics of contrastive analysis (docs/design.md section 6), as pure functions over
//! `tch::Tensor`s.
//!
//! * [`probe`]: separation probes — k-fold cross-validated multinomial logistic regression
//!   (accuracy, its spread over folds, the majority-class chance level) and ridge regression R²,
//!   the main metric of the prior CA work (Double InfoGAN, Carton, Louiset, Gori, AISTATS 2024).
//! * [`image`]: ground-truth image metrics — PSNR, SSIM, error inside/outside the salient mask,
//!   saliency IoU with a held-out threshold, and the two trivial counterfactual baselines
//!   (identity and flat median colour) with the counterfactual gain in dB.
//! * [`fid`]: image-quality distances between two feature sets — Fréchet distance (FID when the
//!   features are Inception-v3's) and the kernel distance KID.
//!
//! Every function works on CPU and CUDA tensors (computation happens on the input's device) and
//! accumulates in `f64`. Nothing here owns a network, reads files or depends on the data or model
//! crates: the evaluation driver encodes images and passes tensors in.

use tch::Tensor;

pub mod fid;
pub mod image;
pub mod inception;
pub mod probe;

pub use fid::{
    FeatureStats, KidResult, frechet_distance, frechet_distance_from_stats, kid,
    mmd2_unbiased_polynomial, sqrtm_psd,
};
pub use image::{
    BestThreshold, CounterfactualMetrics, SaliencyIou, best_threshold_iou, counterfactual_gain,
    counterfactual_metrics, flat_median_baseline, identity_baseline, iou, masked_mae, psnr,
    saliency_iou, saliency_map, ssim, unit_range,
};
pub use probe::{
    ClassifierProbe, LogisticRegression, RegressionProbe, RidgeRegression, Standardizer,
    kfold_assignment, logistic_probe, logistic_probe_with_folds, r2_score, ridge_probe,
    ridge_probe_with_folds, stratified_fold_assignment,
};

/// Errors of the metric functions: bad shapes or arguments (named in the message), or a libtorch
/// failure.
#[derive(Debug, thiserror::Error)]
pub enum MetricsError {
    /// A tensor does not have the shape a metric needs.
    #[error("{what}: expected {expected}, got shape {got:?}")]
    Shape {
        /// Which argument.
        what: &'static str,
        /// The expected shape, in words (e.g. `[N, d]`).
        expected: String,
        /// The shape received.
        got: Vec<i64>,
    },
    /// An argument is out of its valid range (too few samples, folds, an empty mask, ...).
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    /// libtorch reported an error.
    #[error(transparent)]
    Torch(#[from] tch::TchError),
}

/// Result type of this module.
pub type Result<T> = std::result::Result<T, MetricsError>;

/// Copies a 1-d tensor to a `Vec<f64>` on the CPU.
pub(crate) fn to_vec_f64(t: &Tensor) -> Result<Vec<f64>> {
    let flat = t
        .to_device(tch::Device::Cpu)
        .to_kind(tch::Kind::Double)
        .contiguous()
        .view([-1]);
    Ok(Vec::<f64>::try_from(&flat)?)
}
