//! The `metrics.json` schema written by `ca eval`: serde structs that scripts can rely on.
//!
//! ```text
//! { "model": str, "dataset": str, "steps": int, "wall_clock_s": float,
//!   "separation": {
//!     "salient_from_s": {"accuracy": f, "std": f, "chance": f} | null,
//!     "salient_from_z": {...} | null, "dataset_from_z": {...}, "dataset_from_s": {...},
//!     "common_from_z": {...} | null, "common_from_s": {...} | null,
//!     "salient_label": str | null, "common_label": str | null },
//!   "ground_truth": { "counterfactual_psnr_db": f, "identity_psnr_db": f,
//!                     "flat_psnr_db": f, "counterfactual_gain_db": f, "counterfactual_ssim": f,
//!                     "mask_error_inside": f, "mask_error_outside": f,
//!                     "identity_error_inside": f, "identity_error_outside": f,
//!                     "flat_error_inside": f, "flat_error_outside": f,
//!                     "saliency_iou": f, "saliency_threshold": f,
//!                     "swap_success": f|null, "swap_target_rate": f|null, "counterpart_background_rate": f,
//!                     "probe_matrix": { "z": {FACTOR: ENTRY, ...}, "s": {FACTOR: ENTRY, ...} } }
//!                   | null,
//!   "reconstruction": { "background_psnr_db": f, "target_psnr_db": f },
//!   "quality": { "fid": f|null, "kid": f|null, "dfd": f|null, "dkd": f|null,
//!                "domain_classifier_accuracy": f|null },
//!   "eval": { "n_images": int, "n_background": int, "n_target": int, "split": str,
//!             "folds": int, "l2": f, "seed": int, "seconds": f,
//!             "apply": {"gan_edit": str, "diffusion_edit": str, "diffusion_guidance": f, ...} } }
//! ```
//!
//! `ca eval --separation-only` writes `separation.json` instead ([`SeparationReport`]): `model`,
//! `dataset`, `steps`, `wall_clock_s`, `separation`, `probe_matrix` and `eval` as above.
//!
//! `ENTRY` is `{"accuracy", "std", "chance"}` for a categorical factor (logistic probe) or
//! `{"r2", "std"}` for a continuous one (ridge probe). The keys of docs/design.md section 6 are always
//! present; the extra keys (`salient_label`, `saliency_threshold`, `eval`, ...) are additions and
//! are optional when reading (older files still parse).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::metrics::{ClassifierProbe, CounterfactualMetrics, RegressionProbe};

/// The whole `metrics.json` file.
///
/// * `model`: the model family (`gan`, `diffusion`, ...).
/// * `dataset`: which data was evaluated (`synthetic`, `folder:/path`, ...).
/// * `steps`, `wall_clock_s`: training steps and training wall clock of the checkpoint.
/// * `separation`: linear probes of labels from the codes (see [`Separation`]).
/// * `ground_truth`: counterfactual, saliency and swap metrics against the exact counterparts
///   and masks; `null` when the data has none (see [`GroundTruth`]).
/// * `reconstruction`: PSNR of reconstructions (see [`Reconstruction`]).
/// * `quality`: distances between generated and real images (see [`Quality`]).
/// * `eval`: how the evaluation was run (see [`EvalInfo`]).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Metrics {
    /// Model family.
    pub model: String,
    /// Dataset description.
    pub dataset: String,
    /// Training steps of the evaluated checkpoint.
    pub steps: u64,
    /// Training wall clock of the evaluated checkpoint, seconds.
    pub wall_clock_s: f64,
    /// Separation probes.
    pub separation: Separation,
    /// Ground-truth metrics, or `null` without counterparts and masks.
    pub ground_truth: Option<GroundTruth>,
    /// Reconstruction PSNR.
    pub reconstruction: Reconstruction,
    /// Image quality.
    pub quality: Quality,
    /// Evaluation settings and size (an addition to the schema of docs/design.md).
    #[serde(default)]
    pub eval: Option<EvalInfo>,
}

/// The `separation.json` file written by `ca eval --separation-only`: the separation probes and
/// the probe matrix of [`Metrics`] (same definitions, same numbers for the same images and
/// options) without the metrics that decode images.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SeparationReport {
    /// Model family.
    pub model: String,
    /// Dataset description.
    pub dataset: String,
    /// Training steps of the evaluated checkpoint.
    pub steps: u64,
    /// Training wall clock of the evaluated checkpoint, seconds.
    pub wall_clock_s: f64,
    /// Separation probes.
    pub separation: Separation,
    /// Every label column from `z` and from `s` (as [`GroundTruth::probe_matrix`], here also for
    /// data without counterparts and masks).
    pub probe_matrix: ProbeMatrix,
    /// Evaluation settings and size.
    pub eval: EvalInfo,
}

/// A cross-validated classification probe: mean accuracy over folds, its population std, and the
/// majority-class chance level.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Probe {
    /// Mean test accuracy over folds, in `[0, 1]`.
    pub accuracy: f64,
    /// Population std of the fold accuracies.
    pub std: f64,
    /// Majority-class rate.
    pub chance: f64,
}

impl From<&ClassifierProbe> for Probe {
    fn from(p: &ClassifierProbe) -> Self {
        Probe {
            accuracy: p.accuracy,
            std: p.std,
            chance: p.chance,
        }
    }
}

/// Separation probes (k-fold logistic regression from a code to a label).
///
/// * `salient_from_s` / `salient_from_z`: the first target-only categorical label
///   (`salient_label`; synthetic: `overlay_type`) on target rows — should be high from `s`, near
///   chance from `z`.
/// * `dataset_from_z` / `dataset_from_s`: background vs target on all rows — near chance from `z`.
/// * `common_from_z` / `common_from_s`: the first categorical label present in both sets
///   (`common_label`; synthetic: `shape`) on all rows — high from `z`.
///
/// An entry is `null` when the data has no such label.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Separation {
    /// Salient label from `s` (target rows).
    pub salient_from_s: Option<Probe>,
    /// Salient label from `z` (target rows).
    pub salient_from_z: Option<Probe>,
    /// Background vs target from `z` (all rows).
    pub dataset_from_z: Option<Probe>,
    /// Background vs target from `s` (all rows).
    pub dataset_from_s: Option<Probe>,
    /// Common label from `z` (all rows).
    pub common_from_z: Option<Probe>,
    /// Common label from `s` (all rows).
    pub common_from_s: Option<Probe>,
    /// Name of the salient label used above.
    #[serde(default)]
    pub salient_label: Option<String>,
    /// Name of the common label used above.
    #[serde(default)]
    pub common_label: Option<String>,
}

/// One cell of the probe matrix: a classification probe (categorical factor) or a ridge R²
/// probe (continuous factor).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum ProbeEntry {
    /// Categorical factor.
    Classifier(Probe),
    /// Continuous factor: mean test R² over folds and its population std.
    Regression {
        /// Mean test R².
        r2: f64,
        /// Population std over folds.
        std: f64,
    },
}

impl From<&RegressionProbe> for ProbeEntry {
    fn from(p: &RegressionProbe) -> Self {
        ProbeEntry::Regression {
            r2: p.r2,
            std: p.std,
        }
    }
}

/// The probe matrix: latent group (`z`, `s`) x factor name -> probe. Each factor is probed on
/// the rows where it is defined (salient factors: target rows).
pub type ProbeMatrix = BTreeMap<String, BTreeMap<String, ProbeEntry>>;

/// Ground-truth metrics, on the target rows, against the exact background counterparts and
/// salient masks (the synthetic benchmark, or folder data with `target_counterfactual/` and
/// `target_mask/`).
///
/// The counterfactual fields (PSNR in dB, SSIM, MAE on a 0-1 scale inside/outside the mask, for
/// the model and the two trivial baselines: the unchanged input and a flat median-colour image)
/// are flattened from [`CounterfactualMetrics`]. `counterfactual_gain_db` is the model's PSNR
/// minus the better baseline's.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GroundTruth {
    /// Counterfactual PSNR/SSIM/mask errors.
    #[serde(flatten)]
    pub counterfactual: CounterfactualMetrics,
    /// IoU of `saliency >= saliency_threshold` with the true mask, on the second half of the
    /// target rows.
    pub saliency_iou: f64,
    /// Saliency threshold (mean absolute difference on a 0-1 scale) chosen on the first half of
    /// the target rows.
    pub saliency_threshold: f64,
    /// Mean of `swap_target_rate` and `counterpart_background_rate`; `null` when no swap was
    /// made (no background rows evaluated), as a mean of one rate would read as both.
    #[serde(default)]
    pub swap_success: Option<f64>,
    /// Fraction of `(z_background, s_target)` images the domain classifier calls target;
    /// `null` when no swap was made (no background rows evaluated).
    #[serde(default)]
    pub swap_target_rate: Option<f64>,
    /// Fraction of `(z_target, 0)` images the domain classifier calls background.
    pub counterpart_background_rate: f64,
    /// Probe matrix (latent group x factor).
    pub probe_matrix: ProbeMatrix,
}

/// Reconstruction PSNR (dB, images on a 0-1 scale): background rows with `s = 0`, target rows
/// with their own `s`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Reconstruction {
    /// Mean PSNR over background rows (`null`/NaN-free: 0 rows give `null`).
    pub background_psnr_db: Option<f64>,
    /// Mean PSNR over target rows.
    pub target_psnr_db: Option<f64>,
}

/// Image quality of samples (both sets, `sample_codes` + `decode`) against the real evaluation
/// images. `fid`/`kid` (Inception-v3 features) stay `null` until Inception weights are
/// installed; `dfd`/`dkd` are the Fréchet and kernel (KID, unbiased MMD² with the cubic kernel)
/// distances in the penultimate features of a small background-vs-target CNN trained on the real
/// evaluation images — domain distances, not comparable with published FID/KID numbers.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Quality {
    /// Fréchet Inception distance.
    pub fid: Option<f64>,
    /// Kernel Inception distance.
    pub kid: Option<f64>,
    /// Fréchet domain distance.
    pub dfd: Option<f64>,
    /// Kernel domain distance.
    pub dkd: Option<f64>,
    /// Held-out accuracy of the domain classifier on real images.
    #[serde(default)]
    pub domain_classifier_accuracy: Option<f64>,
    /// Real images (and as many generated ones) behind `fid`/`kid` (`eval.fid_images`); null
    /// without FID.
    #[serde(default)]
    pub fid_images: Option<usize>,
}

/// How the evaluation was run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EvalInfo {
    /// Images evaluated.
    pub n_images: usize,
    /// Background rows.
    pub n_background: usize,
    /// Target rows.
    pub n_target: usize,
    /// Split evaluated (`eval` or `all`).
    pub split: String,
    /// Probe folds.
    pub folds: usize,
    /// Probe L2 strength (scikit-learn `C = 1 / l2`).
    pub l2: f64,
    /// Seed of folds, classifier and samples.
    pub seed: u64,
    /// Evaluation wall clock, seconds.
    pub seconds: f64,
    /// The `[apply]` settings the model edited with (counterfactuals, swaps): the run's own, or
    /// those of `ca eval --set apply.KEY=VALUE`. Absent in files written before it was recorded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub apply: Option<ca_models::apply::ApplyConfig>,
    /// The environment variables that overrode `apply`'s sampling step counts
    /// (`CA_INVERT_STEPS=50`, ...; the values in `apply` are the ones used). Empty when none.
    #[serde(default)]
    pub env_overrides: Vec<String>,
}
