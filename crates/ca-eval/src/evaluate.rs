//! `ca eval`: the evaluation of a trained CA model on a held-out split (docs/design.md section 6).
//!
//! [`evaluate`] takes any [`CaModel`] and an [`EvalSet`] and computes
//!
//! * **separation probes** — k-fold logistic regression from `s` and from `z` to the salient
//!   labels, to background-vs-target, and to a common label (the main metric of Double InfoGAN,
//!   Carton, Louiset, Gori, AISTATS 2024), and the probe matrix latent group x factor;
//! * **ground truth** (when the data carries exact counterparts and masks) — counterfactual PSNR
//!   and SSIM next to the identity and flat-colour baselines, errors inside/outside the mask,
//!   saliency IoU at a threshold chosen on the first half of the target rows, swap success
//!   judged by a [`DomainClassifier`] trained on the real images;
//! * **reconstruction** PSNR of background and target rows;
//! * **image quality** — `dfd`/`dkd`, Fréchet and kernel distances in the domain classifier's
//!   features between samples and real images; `fid`/`kid`, the same in the FID Inception-v3
//!   features ([`crate::metrics::inception`]) when its weights are installed (`cargo xtask
//!   fetch-weights`), else `null`;
//!
//! and the image grids of the report. [`report`] writes `metrics.json` (schema in [`schema`]),
//! `report.md`, `report.html` and the grid PNGs into `RUN/eval/`.
//!
//! Everything is deterministic for a given seed on the CPU; the model runs in batches without
//! gradients.

use std::collections::BTreeMap;
use std::time::Instant;

use ca_data::{EvalSet, LabelKind, LabelScope};
use ca_models::CaCode;
use rand::SeedableRng;
use rand::seq::SliceRandom;
use rand_chacha::ChaCha8Rng;
use tch::{Device, Kind, Tensor};

pub use crate::classifier::{ClassifierOptions, DomainClassifier};
pub use crate::schema::{
    EvalInfo, GroundTruth, Metrics, Probe, ProbeEntry, ProbeMatrix, Quality, Reconstruction,
    Separation, SeparationReport,
};

use crate::config::EvalConfig;
use crate::metrics::{self, MetricsError};
use ca_models::inference::{self as model, CaModel};

/// Errors of the evaluation.
#[derive(Debug, thiserror::Error)]
pub enum EvalError {
    /// A metric failed.
    #[error(transparent)]
    Metrics(#[from] MetricsError),
    /// The data or options cannot be evaluated.
    #[error("{0}")]
    Invalid(String),
    /// Writing a grid image failed.
    #[error(transparent)]
    Image(#[from] ca_data::grid::ImageWriteError),
    /// A file could not be read or written.
    #[error("{what} '{path}': {source}")]
    Io {
        /// What was being done.
        what: &'static str,
        /// The path.
        path: std::path::PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// The FID Inception weights are installed but do not load.
    #[error(transparent)]
    Inception(#[from] metrics::inception::InceptionError),
    /// `metrics.json` could not be parsed.
    #[error("cannot parse '{path}': {source}")]
    Json {
        /// The file.
        path: std::path::PathBuf,
        /// The cause.
        source: serde_json::Error,
    },
}

/// Result type of the evaluation.
pub type Result<T> = std::result::Result<T, EvalError>;

/// How to evaluate.
#[derive(Debug, Clone)]
pub struct EvalOptions {
    /// Probe folds (`k`).
    pub folds: usize,
    /// Probe L2 strength in scikit-learn's convention (`C = 1 / l2`; ridge `alpha = l2`).
    pub l2: f64,
    /// Images per model call.
    pub batch_size: i64,
    /// Seed of folds, the domain classifier and the samples.
    pub seed: u64,
    /// Salient label columns to probe; `None`: every categorical column of salient scope.
    pub salient_labels: Option<Vec<String>>,
    /// Domain classifier training.
    pub classifier: ClassifierOptions,
    /// FID Inception weights (safetensors). `None` or a file that does not exist: `quality.fid`
    /// and `quality.kid` are `null`; a file that exists but does not load is an error.
    /// [`EvalOptions::from_config`] sets [`metrics::inception::default_weights_path`].
    pub inception_weights: Option<std::path::PathBuf>,
    /// At most this many real and generated images for FID/KID (0 = all).
    pub fid_images: usize,
}

impl EvalOptions {
    /// Options from the run's `[eval]` section (seed 0, all salient labels).
    pub fn from_config(c: &EvalConfig) -> Self {
        EvalOptions {
            folds: c.folds,
            l2: c.l2,
            batch_size: c.batch_size.max(1) as i64,
            seed: 0,
            salient_labels: None,
            classifier: ClassifierOptions::default(),
            inception_weights: metrics::inception::default_weights_path(),
            fid_images: c.fid_images,
        }
    }
}

/// What the metrics file says about the run (not computed by the evaluation).
#[derive(Debug, Clone)]
pub struct RunInfo {
    /// Model family.
    pub model: String,
    /// Dataset description.
    pub dataset: String,
    /// Training steps of the checkpoint.
    pub steps: u64,
    /// Training wall clock, seconds.
    pub wall_clock_s: f64,
    /// The split evaluated (`eval`, `all`).
    pub split: String,
    /// The `[apply]` settings the model was loaded with (recorded in `metrics.json`; `None` when
    /// the caller does not know them).
    pub apply: Option<ca_models::apply::ApplyConfig>,
    /// The environment overrides of `apply`'s step counts in force (`CA_INVERT_STEPS=50`).
    pub env_overrides: Vec<String>,
}

/// One image grid of the report.
#[derive(Debug)]
pub struct Grid {
    /// File stem (`reconstructions` -> `reconstructions.png`).
    pub name: String,
    /// Caption: what the rows and columns show.
    pub caption: String,
    /// Images, float `[N, C, H, W]` in [-1, 1] on the CPU, row-major.
    pub images: Tensor,
    /// Columns.
    pub ncol: usize,
}

/// The result of [`evaluate`].
#[derive(Debug)]
pub struct Evaluation {
    /// The metrics (`metrics.json`).
    pub metrics: Metrics,
    /// The report's grids.
    pub grids: Vec<Grid>,
}

/// At most `max` rows, balanced between background and target where possible: half each, the
/// smaller set topped up by the larger. Chosen by a ChaCha8 shuffle of each group (seeded with
/// `seed`) and returned in increasing order.
pub fn select_balanced(group: &[i64], max: usize, seed: u64) -> Vec<usize> {
    let mut bg: Vec<usize> = (0..group.len()).filter(|&i| group[i] == 0).collect();
    let mut tg: Vec<usize> = (0..group.len()).filter(|&i| group[i] != 0).collect();
    let nt = tg
        .len()
        .min(max / 2)
        .max(max.saturating_sub(bg.len()))
        .min(tg.len());
    let nb = bg.len().min(max - nt);
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    bg.shuffle(&mut rng);
    tg.shuffle(&mut rng);
    let mut rows: Vec<usize> = bg[..nb].iter().chain(&tg[..nt]).copied().collect();
    rows.sort_unstable();
    rows
}

/// The rows `rows` of an evaluation set (images, groups, labels and ground truth).
pub fn subset(set: &EvalSet, rows: &[usize]) -> EvalSet {
    let idx = Tensor::from_slice(&rows.iter().map(|&r| r as i64).collect::<Vec<_>>());
    EvalSet {
        images: set.images.index_select(0, &idx),
        group: set.group.index_select(0, &idx),
        indices: rows.iter().map(|&r| set.indices[r]).collect(),
        files: rows.iter().map(|&r| set.files[r].clone()).collect(),
        labels: set.labels.iter().map(|c| c.select(rows)).collect(),
        counterpart: set.counterpart.as_ref().map(|t| t.index_select(0, &idx)),
        mask: set.mask.as_ref().map(|t| t.index_select(0, &idx)),
    }
}

fn rows_tensor(rows: &[usize]) -> Tensor {
    Tensor::from_slice(&rows.iter().map(|&r| r as i64).collect::<Vec<_>>())
}

/// Encode `x` (CPU, [-1, 1]) in batches; codes on the CPU.
fn encode_all(m: &dyn CaModel, x: &Tensor, bs: i64) -> CaCode {
    let dev = m.device();
    let n = x.size()[0];
    let mut parts = Vec::new();
    let mut i = 0;
    while i < n {
        let len = bs.min(n - i);
        parts.push(
            m.encode(&x.narrow(0, i, len).to_device(dev))
                .to_float()
                .to_device(Device::Cpu),
        );
        i += len;
    }
    if parts.is_empty() {
        return CaCode::new(
            Tensor::zeros([0, m.dz()], (Kind::Float, Device::Cpu)),
            Tensor::zeros([0, m.ds()], (Kind::Float, Device::Cpu)),
        );
    }
    CaCode::cat(&parts.iter().collect::<Vec<_>>())
}

/// `m.edit(x, own, new)` in batches; images on the CPU.
fn edit_all(m: &dyn CaModel, x: &Tensor, own: &CaCode, new: &CaCode, bs: i64) -> Tensor {
    in_batches(m, x, own, new, bs, |x, own, new| m.edit(x, own, new))
}

/// `m.render(x, code)` (the model's reconstruction) in batches; images on the CPU.
fn render_all(m: &dyn CaModel, x: &Tensor, code: &CaCode, bs: i64) -> Tensor {
    in_batches(m, x, code, code, bs, |x, code, _| m.render(x, code))
}

fn in_batches(
    m: &dyn CaModel,
    x: &Tensor,
    own: &CaCode,
    new: &CaCode,
    bs: i64,
    f: impl Fn(&Tensor, &CaCode, &CaCode) -> Tensor,
) -> Tensor {
    let dev = m.device();
    let n = x.size()[0];
    let mut parts = Vec::new();
    let mut i = 0;
    while i < n {
        let len = bs.min(n - i);
        let e = f(
            &x.narrow(0, i, len).to_device(dev),
            &own.narrow(i, len).to_device(dev),
            &new.narrow(i, len).to_device(dev),
        );
        parts.push(e.to_kind(Kind::Float).to_device(Device::Cpu));
        i += len;
    }
    if parts.is_empty() {
        return x.zeros_like();
    }
    Tensor::cat(&parts, 0)
}

/// Sample `n` codes of one set and decode them in batches; images on the CPU.
fn sample_all(m: &dyn CaModel, n: i64, target: bool, seed: u64, bs: i64) -> Tensor {
    let g = m.geometry();
    if n == 0 {
        return Tensor::zeros([0, g.channels, g.size, g.size], (Kind::Float, Device::Cpu));
    }
    let codes = m.sample_codes(n, target, seed);
    let mut parts = Vec::new();
    let mut i = 0;
    while i < n {
        let len = bs.min(n - i);
        parts.push(
            m.decode(&codes.narrow(i, len), seed.wrapping_add(i as u64 + 1))
                .to_kind(Kind::Float)
                .to_device(Device::Cpu),
        );
        i += len;
    }
    Tensor::cat(&parts, 0)
}

/// Probe settings shared by every probe of one evaluation.
struct Prober {
    folds: usize,
    l2: f64,
    seed: u64,
}

impl Prober {
    fn new(opts: &EvalOptions) -> Self {
        Prober {
            folds: opts.folds,
            l2: opts.l2,
            seed: opts.seed,
        }
    }

    /// Logistic probe of categorical `y` (NaN = missing) from `x` on `rows`; `None` when fewer
    /// than `2 k` rows carry the label.
    fn classify(&self, x: &Tensor, y: &[f64], rows: &[usize]) -> Result<Option<Probe>> {
        let rows: Vec<usize> = rows.iter().copied().filter(|&r| !y[r].is_nan()).collect();
        if rows.len() < 2 * self.folds.max(1) {
            return Ok(None);
        }
        let labels: Vec<i64> = rows.iter().map(|&r| y[r].round() as i64).collect();
        let xs = x.index_select(0, &rows_tensor(&rows));
        // scikit-learn's C = 1 / l2 on a summed loss == λ = l2 / n_train on the mean loss.
        let n_train = rows.len() as f64 * (self.folds as f64 - 1.0) / self.folds as f64;
        let lam = self.l2 / n_train.max(1.0);
        let p = metrics::logistic_probe(&xs, &labels, self.folds, lam, self.seed)?;
        Ok(Some(Probe::from(&p)))
    }

    /// Ridge R² probe of continuous `y` from `x` on `rows` (`alpha = l2`).
    fn regress(&self, x: &Tensor, y: &[f64], rows: &[usize]) -> Result<Option<ProbeEntry>> {
        let rows: Vec<usize> = rows.iter().copied().filter(|&r| !y[r].is_nan()).collect();
        if rows.len() < 2 * self.folds.max(1) {
            return Ok(None);
        }
        let ys: Vec<f64> = rows.iter().map(|&r| y[r]).collect();
        let xs = x.index_select(0, &rows_tensor(&rows));
        let p = metrics::ridge_probe(&xs, &ys, self.folds, self.l2, self.seed)?;
        Ok(Some(ProbeEntry::from(&p)))
    }
}

fn mean_psnr(a: &Tensor, b: &Tensor) -> Result<Option<f64>> {
    if a.size()[0] == 0 {
        return Ok(None);
    }
    let p = metrics::psnr(&metrics::unit_range(a), &metrics::unit_range(b), 1.0)?;
    Ok(Some(p.mean(Kind::Double).double_value(&[])))
}

/// Grey-level `[N, 1, H, W]` maps in [0, 1] as `[N, C, H, W]` images in [-1, 1].
fn map_as_image(m: &Tensor, c: i64) -> Tensor {
    (m.to_kind(Kind::Float) * 2.0 - 1.0).repeat([1, c, 1, 1])
}

/// Pad `rows` (each `[k, C, H, W]`, `k <= ncol`) with mid-grey tiles to `ncol` and stack them.
fn grid_rows(rows: &[Tensor], ncol: i64) -> Tensor {
    let padded: Vec<Tensor> = rows
        .iter()
        .map(|r| {
            let k = r.size()[0];
            if k >= ncol {
                r.narrow(0, 0, ncol)
            } else {
                let s = r.size();
                Tensor::cat(
                    &[
                        r.shallow_clone(),
                        Tensor::zeros([ncol - k, s[1], s[2], s[3]], (Kind::Float, r.device())),
                    ],
                    0,
                )
            }
        })
        .collect();
    Tensor::cat(&padded, 0)
}

/// The evaluation rows by group.
struct Rows {
    background: Vec<usize>,
    target: Vec<usize>,
    all: Vec<usize>,
}

impl Rows {
    fn of(group: &[i64]) -> Self {
        let n = group.len();
        Rows {
            background: (0..n).filter(|&i| group[i] == 0).collect(),
            target: (0..n).filter(|&i| group[i] != 0).collect(),
            all: (0..n).collect(),
        }
    }
}

/// The checks every evaluation makes before any model call.
fn check_inputs(m: &dyn CaModel, set: &EvalSet, opts: &EvalOptions) -> Result<()> {
    if set.is_empty() {
        return Err(EvalError::Invalid(
            "the evaluation split is empty: nothing to evaluate".into(),
        ));
    }
    let geom = m.geometry();
    let isz = set.images.size();
    if isz[1] != geom.channels || isz[2] != geom.size || isz[3] != geom.size {
        return Err(EvalError::Invalid(format!(
            "the evaluation images are {:?} but the model expects {} channel(s) of {}x{}",
            &isz[1..],
            geom.channels,
            geom.size,
            geom.size
        )));
    }
    if opts.folds < 2 {
        return Err(EvalError::Invalid(format!(
            "eval.folds must be at least 2, got {}",
            opts.folds
        )));
    }
    Ok(())
}

/// The label columns probed as salient: `opts.salient_labels` (each must exist and be
/// categorical) or every categorical column of salient scope.
fn salient_columns<'a>(
    set: &'a EvalSet,
    opts: &EvalOptions,
) -> Result<Vec<&'a ca_data::LabelColumn>> {
    let Some(names) = &opts.salient_labels else {
        return Ok(set
            .labels
            .iter()
            .filter(|c| c.kind == LabelKind::Categorical && c.scope == LabelScope::Salient)
            .collect());
    };
    let mut v = Vec::new();
    for name in names {
        let col = set.labels.iter().find(|c| &c.name == name).ok_or_else(|| {
            EvalError::Invalid(format!(
                "--salient-labels: no label column `{name}` (columns: {})",
                set.labels
                    .iter()
                    .map(|c| c.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ))
        })?;
        if col.kind != LabelKind::Categorical {
            return Err(EvalError::Invalid(format!(
                "--salient-labels: column `{name}` is continuous; salient probes need a categorical label"
            )));
        }
        v.push(col);
    }
    Ok(v)
}

/// The separation probes of `codes` (rows of `set`).
fn separation_probes(
    set: &EvalSet,
    codes: &CaCode,
    group: &[i64],
    rows: &Rows,
    prober: &Prober,
    opts: &EvalOptions,
) -> Result<Separation> {
    let salient_cols = salient_columns(set, opts)?;
    let common_col = set
        .labels
        .iter()
        .find(|c| c.kind == LabelKind::Categorical && c.scope == LabelScope::Common);
    let group_f: Vec<f64> = group.iter().map(|&g| g as f64).collect();
    let (salient_from_s, salient_from_z) = match salient_cols.first() {
        Some(c) => (
            prober.classify(&codes.s, &c.values, &rows.target)?,
            prober.classify(&codes.z, &c.values, &rows.target)?,
        ),
        None => (None, None),
    };
    let (common_from_z, common_from_s) = match common_col {
        Some(c) => (
            prober.classify(&codes.z, &c.values, &rows.all)?,
            prober.classify(&codes.s, &c.values, &rows.all)?,
        ),
        None => (None, None),
    };
    Ok(Separation {
        salient_from_s,
        salient_from_z,
        dataset_from_z: prober.classify(&codes.z, &group_f, &rows.all)?,
        dataset_from_s: prober.classify(&codes.s, &group_f, &rows.all)?,
        common_from_z,
        common_from_s,
        salient_label: salient_cols.first().map(|c| c.name.clone()),
        common_label: common_col.map(|c| c.name.clone()),
    })
}

/// The probe matrix: every label column from `z` and from `s` (salient-scope labels on the
/// target rows, the others on all rows).
fn probe_matrix(
    set: &EvalSet,
    codes: &CaCode,
    rows: &Rows,
    prober: &Prober,
) -> Result<ProbeMatrix> {
    let mut matrix: ProbeMatrix = BTreeMap::new();
    for (name, lat) in [("z", &codes.z), ("s", &codes.s)] {
        let mut row = BTreeMap::new();
        for col in &set.labels {
            let on = if col.scope == LabelScope::Salient {
                &rows.target
            } else {
                &rows.all
            };
            let entry = match col.kind {
                LabelKind::Categorical => prober
                    .classify(lat, &col.values, on)?
                    .map(ProbeEntry::Classifier),
                LabelKind::Continuous => prober.regress(lat, &col.values, on)?,
            };
            if let Some(e) = entry {
                row.insert(col.name.clone(), e);
            }
        }
        matrix.insert(name.to_string(), row);
    }
    Ok(matrix)
}

/// The separation probes and the probe matrix of `m` on `set` only: one encoder pass and the
/// probes, no decoding (seconds where [`evaluate`] takes minutes). The numbers are the same as
/// [`evaluate`]'s for the same set and options.
pub fn evaluate_separation(
    m: &dyn CaModel,
    set: &EvalSet,
    info: &RunInfo,
    opts: &EvalOptions,
) -> Result<SeparationReport> {
    let t0 = Instant::now();
    check_inputs(m, set, opts)?;
    let group: Vec<i64> = Vec::<i64>::try_from(&set.group).map_err(MetricsError::from)?;
    let rows = Rows::of(&group);
    let _guard = tch::no_grad_guard();
    let x = ca_data::loader::u8_to_unit(&set.images);
    let codes = encode_all(m, &x, opts.batch_size.max(1));
    let prober = Prober::new(opts);
    let separation = separation_probes(set, &codes, &group, &rows, &prober, opts)?;
    let probe_matrix = probe_matrix(set, &codes, &rows, &prober)?;
    Ok(SeparationReport {
        model: info.model.clone(),
        dataset: info.dataset.clone(),
        steps: info.steps,
        wall_clock_s: info.wall_clock_s,
        separation,
        probe_matrix,
        eval: eval_info(&rows, info, opts, t0),
    })
}

/// How the evaluation of `rows` was run, timed from `t0`.
fn eval_info(rows: &Rows, info: &RunInfo, opts: &EvalOptions, t0: Instant) -> EvalInfo {
    EvalInfo {
        n_images: rows.all.len(),
        n_background: rows.background.len(),
        n_target: rows.target.len(),
        split: info.split.clone(),
        folds: opts.folds,
        l2: opts.l2,
        seed: opts.seed,
        seconds: t0.elapsed().as_secs_f64(),
        apply: info.apply,
        env_overrides: info.env_overrides.clone(),
    }
}

/// Evaluate model `m` on `set` (see the module docs). `set` rows are used as given (select them
/// first with [`select_balanced`] + [`subset`]).
pub fn evaluate(
    m: &dyn CaModel,
    set: &EvalSet,
    info: &RunInfo,
    opts: &EvalOptions,
) -> Result<Evaluation> {
    let t0 = Instant::now();
    check_inputs(m, set, opts)?;
    let bs = opts.batch_size.max(1);
    // Loaded first, so that broken weights fail before the long part.
    let inception = match &opts.inception_weights {
        Some(p) if p.is_file() => Some(metrics::inception::InceptionFeatures::load(p, m.device())?),
        _ => None,
    };
    let group: Vec<i64> = Vec::<i64>::try_from(&set.group).map_err(MetricsError::from)?;
    let rows = Rows::of(&group);
    let (bg_rows, tg_rows) = (&rows.background, &rows.target);
    let _guard = tch::no_grad_guard();

    let x = ca_data::loader::u8_to_unit(&set.images);
    let codes = encode_all(m, &x, bs);
    let prober = Prober::new(opts);
    let separation = separation_probes(set, &codes, &group, &rows, &prober, opts)?;

    // Reconstruction, counterparts.
    let is_target = Tensor::from_slice(&group).ne(0);
    let own_grouped = model::group_code(&codes, &is_target);
    let rec = render_all(m, &x, &own_grouped, bs);
    let bg_t = rows_tensor(bg_rows);
    let tg_t = rows_tensor(tg_rows);
    let x_bg = x.index_select(0, &bg_t);
    let x_t = x.index_select(0, &tg_t);
    let reconstruction = Reconstruction {
        background_psnr_db: mean_psnr(&rec.index_select(0, &bg_t), &x_bg)?,
        target_psnr_db: mean_psnr(&rec.index_select(0, &tg_t), &x_t)?,
    };
    let code_bg = CaCode::new(
        codes.z.index_select(0, &bg_t),
        codes.s.index_select(0, &bg_t),
    );
    let code_t = CaCode::new(
        codes.z.index_select(0, &tg_t),
        codes.s.index_select(0, &tg_t),
    );
    let cf_t = edit_all(m, &x_t, &code_t, &code_t.without_salient(), bs);

    // Domain classifier on the real images (needs gradients).
    let mut copts = opts.classifier;
    copts.seed ^= opts.seed;
    let classifier = tch::with_grad(|| DomainClassifier::train(&x, &set.group, m.device(), copts));

    let images = EvalImages {
        x: &x,
        x_bg: &x_bg,
        x_t: &x_t,
        tg_t: &tg_t,
        code_bg: &code_bg,
        code_t: &code_t,
        cf_t: &cf_t,
    };
    let ground_truth = ground_truth(m, set, &images, &codes, &rows, &prober, &classifier, opts)?;
    let (quality, gen_bg, gen_t) =
        quality(m, &images, &rows, inception.as_ref(), &classifier, opts)?;

    let grids = make_grids(
        m,
        set,
        &GridInputs {
            x_bg: &x_bg,
            x_t: &x_t,
            rec: &rec,
            bg_t: &bg_t,
            tg_t: &tg_t,
            cf_t: &cf_t,
            code_bg: &code_bg,
            code_t: &code_t,
            gen_bg: &gen_bg,
            gen_t: &gen_t,
        },
    );

    let metrics = Metrics {
        model: info.model.clone(),
        dataset: info.dataset.clone(),
        steps: info.steps,
        wall_clock_s: info.wall_clock_s,
        separation,
        ground_truth,
        reconstruction,
        quality,
        eval: Some(eval_info(&rows, info, opts, t0)),
    };
    Ok(Evaluation { metrics, grids })
}

/// The images and codes of one evaluation that the ground-truth and quality metrics share.
struct EvalImages<'a> {
    /// Every evaluated image, in `[-1, 1]`.
    x: &'a Tensor,
    x_bg: &'a Tensor,
    x_t: &'a Tensor,
    /// Row indices of the target images in `x`.
    tg_t: &'a Tensor,
    code_bg: &'a CaCode,
    code_t: &'a CaCode,
    /// The background counterparts of `x_t`.
    cf_t: &'a Tensor,
}

/// The ground-truth metrics (counterfactual, saliency, swaps, probe matrix), when the data has
/// exact counterparts and masks and at least 2 target rows.
#[allow(clippy::too_many_arguments)]
fn ground_truth(
    m: &dyn CaModel,
    set: &EvalSet,
    sp: &EvalImages<'_>,
    codes: &CaCode,
    rows: &Rows,
    prober: &Prober,
    classifier: &DomainClassifier,
    opts: &EvalOptions,
) -> Result<Option<GroundTruth>> {
    let (x_bg, x_t, tg_t) = (sp.x_bg, sp.x_t, sp.tg_t);
    let (nb, nt) = (rows.background.len() as i64, rows.target.len() as i64);
    let bs = opts.batch_size.max(1);
    Ok(match (&set.counterpart, &set.mask) {
        (Some(cp), Some(mask)) if nt >= 2 => {
            let true_cf = ca_data::loader::u8_to_unit(&cp.index_select(0, tg_t));
            let mask_t = mask.index_select(0, tg_t).to_kind(Kind::Float);
            let (ux, ucf, utrue) = (
                metrics::unit_range(x_t),
                metrics::unit_range(sp.cf_t),
                metrics::unit_range(&true_cf),
            );
            let counterfactual = metrics::counterfactual_metrics(&ux, &ucf, &utrue, &mask_t)?;
            let scores = metrics::saliency_map(&ux, &ucf)?;
            let truth = mask_t.squeeze_dim(1).gt(0.5);
            let sal = metrics::saliency_iou(&scores, &truth, nt / 2)?;
            let k = nb.min(nt);
            let swaps = swap_images(m, x_bg, sp.code_bg, sp.code_t, k, bs);
            // No background rows, no swaps: their rate (and the mean with it) is not computed.
            let swap_target_rate = (k > 0).then(|| classifier.target_rate(&swaps, bs));
            let counterpart_background_rate = 1.0 - classifier.target_rate(sp.cf_t, bs);
            let swap_success = swap_target_rate.map(|r| 0.5 * (r + counterpart_background_rate));
            let probe_matrix = probe_matrix(set, codes, rows, prober)?;
            Some(GroundTruth {
                counterfactual,
                saliency_iou: sal.iou,
                saliency_threshold: sal.threshold,
                swap_success,
                swap_target_rate,
                counterpart_background_rate,
                probe_matrix,
            })
        }
        _ => None,
    })
}

/// Image quality: samples of both sets against the real images, in the domain classifier's
/// features and, with its weights, the FID Inception's. Returns the samples too (the grids
/// show them).
fn quality(
    m: &dyn CaModel,
    sp: &EvalImages<'_>,
    rows: &Rows,
    inception: Option<&metrics::inception::InceptionFeatures>,
    classifier: &DomainClassifier,
    opts: &EvalOptions,
) -> Result<(Quality, Tensor, Tensor)> {
    let (nb, nt) = (rows.background.len() as i64, rows.target.len() as i64);
    let bs = opts.batch_size.max(1);
    let gen_bg = sample_all(m, nb, false, opts.seed ^ 0x5A1, bs);
    let gen_t = sample_all(m, nt, true, opts.seed ^ 0x5A2, bs);
    let generated = Tensor::cat(&[&gen_bg, &gen_t], 0);
    let n = sp.x.size()[0];
    let (dfd, dkd) = if n >= 2 {
        let fr = classifier.features(sp.x, bs);
        let fg = classifier.features(&generated, bs);
        let dfd = metrics::frechet_distance(&fr, &fg)?;
        let dkd = metrics::kid(&fr, &fg, 100, 1000, opts.seed)?.mean;
        (Some(dfd), Some(dkd))
    } else {
        (None, None)
    };
    let (fid, kid, fid_images) = match inception {
        Some(net) if n >= 2 => {
            let (real, fake) = fid_subset(
                sp.x,
                &gen_bg,
                &gen_t,
                &rows.background,
                &rows.target,
                opts.fid_images,
            );
            let k = real.size()[0];
            tracing::info!("FID/KID: Inception features of {k} real and {k} generated images");
            let fr = net.features(&real, bs)?;
            let fg = net.features(&fake, bs)?;
            let fid = metrics::frechet_distance(&fr, &fg)?;
            let kid = metrics::kid(&fr, &fg, 100, 1000, opts.seed)?.mean;
            (Some(fid), Some(kid), Some(k as usize))
        }
        _ => (None, None, None),
    };
    let quality = Quality {
        fid,
        kid,
        dfd,
        dkd,
        domain_classifier_accuracy: Some(classifier.heldout_accuracy).filter(|a| a.is_finite()),
        fid_images,
    };
    Ok((quality, gen_bg, gen_t))
}

/// `(z of background row i, s of target row i)` for `i < k`, re-rendered from the background
/// images.
fn swap_images(
    m: &dyn CaModel,
    x_bg: &Tensor,
    code_bg: &CaCode,
    code_t: &CaCode,
    k: i64,
    bs: i64,
) -> Tensor {
    if k == 0 {
        return x_bg.narrow(0, 0, 0);
    }
    let own = code_bg.narrow(0, k).without_salient();
    let new = CaCode::with_salient(own.z.shallow_clone(), code_t.s.narrow(0, 0, k));
    edit_all(m, &x_bg.narrow(0, 0, k), &own, &new, bs)
}

struct GridInputs<'a> {
    x_bg: &'a Tensor,
    x_t: &'a Tensor,
    rec: &'a Tensor,
    bg_t: &'a Tensor,
    tg_t: &'a Tensor,
    cf_t: &'a Tensor,
    code_bg: &'a CaCode,
    code_t: &'a CaCode,
    gen_bg: &'a Tensor,
    gen_t: &'a Tensor,
}

fn make_grids(m: &dyn CaModel, set: &EvalSet, g: &GridInputs) -> Vec<Grid> {
    let mut grids = vec![reconstruction_grid(g)];
    grids.extend(counterpart_grid(m, set, g));
    grids.extend(swap_grid(m, g));
    grids.extend(traversal_grid(m, g));
    grids.extend(samples_grid(g));
    grids
}

/// The first `k` rows of `t` (fewer when it has fewer).
fn first(t: &Tensor, k: i64) -> Tensor {
    t.narrow(0, 0, k.min(t.size()[0]))
}

/// Background and target inputs above their reconstructions.
fn reconstruction_grid(g: &GridInputs) -> Grid {
    let (nb, nt) = (g.x_bg.size()[0], g.x_t.size()[0]);
    let (kb, kt) = (nb.min(8), nt.min(8));
    let ncol = kb.max(kt).max(1);
    let rec_bg = g.rec.index_select(0, g.bg_t);
    let rec_t = g.rec.index_select(0, g.tg_t);
    Grid {
        name: "reconstructions".into(),
        caption: format!(
            "Reconstructions. Rows: {kb} background inputs, their reconstructions (s = 0), {kt} target inputs, their reconstructions (own s)."
        ),
        images: grid_rows(
            &[
                first(g.x_bg, kb),
                first(&rec_bg, kb),
                first(g.x_t, kt),
                first(&rec_t, kt),
            ],
            ncol,
        ),
        ncol: ncol as usize,
    }
}

/// Target images, their counterparts and saliency maps (and the truth, when known).
fn counterpart_grid(m: &dyn CaModel, set: &EvalSet, g: &GridInputs) -> Option<Grid> {
    let c = m.geometry().channels;
    let nt = g.x_t.size()[0];
    if nt == 0 {
        return None;
    }
    {
        let k = nt.min(8);
        let x = first(g.x_t, k);
        let cf = first(g.cf_t, k);
        let sal = map_as_image(&model::saliency(&x, &cf), c);
        let tg_first = g.tg_t.narrow(0, 0, k);
        let truth = match (&set.counterpart, &set.mask) {
            (Some(cp), Some(mask)) => Some((
                ca_data::loader::u8_to_unit(&cp.index_select(0, &tg_first)),
                map_as_image(&mask.index_select(0, &tg_first), c),
            )),
            _ => None,
        };
        let mut rows = Vec::new();
        for i in 0..k {
            let mut row = vec![x.get(i), cf.get(i)];
            if let Some((tcf, tm)) = &truth {
                row.push(tcf.get(i));
                row.push(sal.get(i));
                row.push(tm.get(i));
            } else {
                row.push(sal.get(i));
            }
            rows.push(Tensor::stack(&row, 0));
        }
        let ncol = rows[0].size()[0];
        let caption = if truth.is_some() {
            "Background counterparts of target images. Columns: input | counterpart (z, 0) | true counterpart | saliency map |x - counterpart| | true salient mask."
        } else {
            "Background counterparts of target images. Columns: input | counterpart (z, 0) | saliency map |x - counterpart|."
        };
        Some(Grid {
            name: "counterparts".into(),
            caption: caption.into(),
            images: Tensor::cat(&rows, 0),
            ncol: ncol as usize,
        })
    }
}

/// Background images (rows) with the salient codes of target images (columns).
fn swap_grid(m: &dyn CaModel, g: &GridInputs) -> Option<Grid> {
    let (nb, nt) = (g.x_bg.size()[0], g.x_t.size()[0]);
    if nb == 0 || nt == 0 {
        return None;
    }
    {
        let (kb, kt) = (nb.min(6), nt.min(6));
        let donors = first(g.x_t, kt);
        let mut rows = vec![Tensor::cat(
            &[donors.zeros_like().narrow(0, 0, 1), donors],
            0,
        )];
        for i in 0..kb {
            let own = g.code_bg.narrow(i, 1);
            let own_rep =
                CaCode::new(own.z.repeat([kt, 1]), own.s.repeat([kt, 1])).without_salient();
            let new = CaCode::with_salient(own_rep.z.shallow_clone(), g.code_t.s.narrow(0, 0, kt));
            let xi = g.x_bg.narrow(0, i, 1).repeat([kt, 1, 1, 1]);
            let sw = edit_all(m, &xi, &own_rep, &new, kt);
            rows.push(Tensor::cat(&[g.x_bg.narrow(0, i, 1), sw], 0));
        }
        Some(Grid {
            name: "swaps".into(),
            caption: format!(
                "Salient transfer. First row: {kt} target images (donors of s). First column: {kb} background images (give z). Cell (i, j): (z of background i, s of target j)."
            ),
            images: Tensor::cat(&rows, 0),
            ncol: (kt + 1) as usize,
        })
    }
}

/// Each salient dimension of a few target images swept over `[-3, 3]`.
fn traversal_grid(m: &dyn CaModel, g: &GridInputs) -> Option<Grid> {
    let nt = g.x_t.size()[0];
    if nt == 0 || m.ds() == 0 {
        return None;
    }
    {
        let (k, dims, steps, range) = (nt.min(4), m.ds().min(8), 7i64, 3.0);
        let values = Tensor::linspace(-range, range, steps, (Kind::Float, Device::Cpu));
        let mut rows = Vec::new();
        for i in 0..k {
            let oi = g.code_t.narrow(i, 1);
            let own = CaCode::new(oi.z.repeat([steps, 1]), oi.s.repeat([steps, 1]));
            let xi = g.x_t.narrow(0, i, 1).repeat([steps, 1, 1, 1]);
            for d in 0..dims {
                let s = own.s.copy();
                s.narrow(1, d, 1).copy_(&values.view([steps, 1]));
                let new = CaCode::with_salient(own.z.shallow_clone(), s);
                rows.push(edit_all(m, &xi, &own, &new, steps));
            }
        }
        Some(Grid {
            name: "traversals".into(),
            caption: format!(
                "Salient traversals. {k} target images x {dims} salient dimensions (rows, image-major: image 0 s_0..s_{}, image 1 ...); columns: s_k from -{range} to {range} in {steps} steps, other coordinates from the image's own code.",
                dims - 1
            ),
            images: Tensor::cat(&rows, 0),
            ncol: steps as usize,
        })
    }
}

/// Samples of both sets.
fn samples_grid(g: &GridInputs) -> Option<Grid> {
    let (kb, kt) = (g.gen_bg.size()[0].min(16), g.gen_t.size()[0].min(16));
    if kb + kt == 0 {
        return None;
    }
    {
        Some(Grid {
            name: "samples".into(),
            caption: format!(
                "Random samples. First {kb} images: background (z ~ prior, s = 0); then {kt} target (z, s ~ prior). 8 per row."
            ),
            images: Tensor::cat(&[first(g.gen_bg, kb), first(g.gen_t, kt)], 0),
            ncol: 8,
        })
    }
}

/// The images behind FID/KID: at most `cap` real rows (0 = all) in the evaluated background /
/// target proportions, evenly spaced over each group's rows, and as many generated images of
/// each set (`gen_bg`, `gen_t`: one per background / target row).
fn fid_subset(
    x: &Tensor,
    gen_bg: &Tensor,
    gen_t: &Tensor,
    bg_rows: &[usize],
    tg_rows: &[usize],
    cap: usize,
) -> (Tensor, Tensor) {
    let n = bg_rows.len() + tg_rows.len();
    if cap == 0 || cap >= n {
        return (x.shallow_clone(), Tensor::cat(&[gen_bg, gen_t], 0));
    }
    let kb = ((cap * bg_rows.len()) as f64 / n as f64).round() as usize;
    let kt = cap - kb;
    let pick = |rows: &[usize], k: usize| -> Vec<i64> {
        (0..k).map(|i| rows[i * rows.len() / k] as i64).collect()
    };
    let idx = [pick(bg_rows, kb), pick(tg_rows, kt)].concat();
    let real = x.index_select(0, &Tensor::from_slice(&idx).to_device(x.device()));
    let fake = Tensor::cat(
        &[
            gen_bg.narrow(0, 0, kb as i64),
            gen_t.narrow(0, 0, kt as i64),
        ],
        0,
    );
    (real, fake)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report;
    use ca_data::{DataConfig, Split, SyntheticConfig, load_eval_set};
    use ca_models::ImageGeometry;

    /// A fake model that looks images up in a table: `z = [row index, 0]`, `s = [is_target,
    /// one-hot overlay type]`. Decoding `(z, s)` gives the table image when `s != 0`, and the
    /// exact counterpart (an oracle) or the image again (`identity`) when `s = 0`.
    struct LookupModel {
        images: Tensor,
        counterparts: Tensor,
        salient: Tensor,
        identity: bool,
    }

    impl LookupModel {
        fn new(set: &EvalSet, identity: bool) -> Self {
            let group: Vec<i64> = Vec::<i64>::try_from(&set.group).unwrap();
            let types = &set
                .labels
                .iter()
                .find(|c| c.name == "overlay_type")
                .unwrap()
                .values;
            let mut s = Vec::new();
            for (i, g) in group.iter().enumerate() {
                s.push(*g as f32);
                for k in 0..3 {
                    s.push(if *g != 0 && types[i] as i64 == k {
                        1.0
                    } else {
                        0.0
                    });
                }
            }
            LookupModel {
                images: ca_data::loader::u8_to_unit(&set.images),
                counterparts: ca_data::loader::u8_to_unit(set.counterpart.as_ref().unwrap()),
                salient: Tensor::from_slice(&s).view([-1, 4]),
                identity,
            }
        }
    }

    impl CaModel for LookupModel {
        fn family(&self) -> &'static str {
            "lookup"
        }
        fn geometry(&self) -> ImageGeometry {
            ImageGeometry {
                channels: 3,
                size: 32,
            }
        }
        fn device(&self) -> Device {
            Device::Cpu
        }
        fn dz(&self) -> i64 {
            2
        }
        fn ds(&self) -> i64 {
            4
        }
        fn encode(&self, x: &Tensor) -> CaCode {
            let (a, b) = (
                x.flatten(1, -1).to_kind(Kind::Double),
                self.images.flatten(1, -1).to_kind(Kind::Double),
            );
            let d = b
                .square()
                .sum_dim_intlist(1, false, Kind::Double)
                .unsqueeze(0)
                - a.matmul(&b.transpose(0, 1)) * 2.0;
            let idx = d.argmin(1, false);
            let z = Tensor::stack(
                &[
                    idx.to_kind(Kind::Float),
                    idx.zeros_like().to_kind(Kind::Float),
                ],
                1,
            );
            CaCode::new(z, self.salient.index_select(0, &idx))
        }
        fn decode(&self, code: &CaCode, _seed: u64) -> Tensor {
            let idx = code.z.select(1, 0).round().to_kind(Kind::Int64);
            let img = self.images.index_select(0, &idx);
            if self.identity {
                return img;
            }
            let zero = code.s.abs().sum_dim_intlist(1, false, Kind::Float).eq(0.0);
            self.counterparts
                .index_select(0, &idx)
                .where_self(&zero.view([-1, 1, 1, 1]), &img)
        }
        fn edit(&self, _x: &Tensor, _own: &CaCode, new: &CaCode) -> Tensor {
            self.decode(new, 0)
        }
        fn sample_codes(&self, n: i64, target: bool, _seed: u64) -> CaCode {
            let m = self.images.size()[0];
            let idx = Tensor::arange(n, (Kind::Int64, Device::Cpu)).remainder(m);
            let z = Tensor::stack(
                &[
                    idx.to_kind(Kind::Float),
                    idx.zeros_like().to_kind(Kind::Float),
                ],
                1,
            );
            let s = if target {
                Tensor::ones([n, 4], (Kind::Float, Device::Cpu))
            } else {
                Tensor::zeros([n, 4], (Kind::Float, Device::Cpu))
            };
            CaCode::new(z, s)
        }
    }

    fn small_set() -> EvalSet {
        let cfg = DataConfig::Synthetic(SyntheticConfig {
            n_background: 60,
            n_target: 60,
            size: Some(32),
            ..Default::default()
        });
        let ds = cfg.open().unwrap();
        load_eval_set(ds.as_ref(), Split::All).unwrap()
    }

    fn options() -> EvalOptions {
        EvalOptions {
            folds: 3,
            l2: 1.0,
            batch_size: 50,
            seed: 0,
            salient_labels: None,
            classifier: ClassifierOptions {
                steps: 20,
                ..Default::default()
            },
            inception_weights: None,
            fid_images: 0,
        }
    }

    #[test]
    fn fid_subset_keeps_the_group_proportions_and_caps_both_sets() {
        // 6 background rows (0..6), 4 target rows (6..10); generated: 6 + 4, marked by value.
        let x = Tensor::arange(10, (Kind::Float, Device::Cpu));
        let gen_bg = Tensor::full([6], 100.0, (Kind::Float, Device::Cpu));
        let gen_t = Tensor::full([4], 200.0, (Kind::Float, Device::Cpu));
        let (bg, tg): (Vec<usize>, Vec<usize>) = ((0..6).collect(), (6..10).collect());
        let (r, f) = fid_subset(&x, &gen_bg, &gen_t, &bg, &tg, 5);
        // 5 of 10: round(5 * 6 / 10) = 3 background rows (0, 2, 4), 2 target rows (6, 8).
        assert_eq!(Vec::<f32>::try_from(&r).unwrap(), [0.0, 2.0, 4.0, 6.0, 8.0]);
        assert_eq!(
            Vec::<f32>::try_from(&f).unwrap(),
            [100.0, 100.0, 100.0, 200.0, 200.0]
        );
        for cap in [0, 10, 50] {
            let (r, f) = fid_subset(&x, &gen_bg, &gen_t, &bg, &tg, cap);
            assert_eq!((r.size()[0], f.size()[0]), (10, 10), "cap {cap}: all");
        }
    }

    fn info() -> RunInfo {
        RunInfo {
            model: "lookup".into(),
            dataset: "synthetic".into(),
            steps: 7,
            wall_clock_s: 1.5,
            split: "all".into(),
            apply: None,
            env_overrides: Vec::new(),
        }
    }

    #[test]
    fn select_balanced_is_balanced_deterministic_and_tops_up() {
        let group: Vec<i64> = (0..100).map(|i| i64::from(i % 4 == 0)).collect(); // 25 target
        let a = select_balanced(&group, 20, 3);
        assert_eq!(a, select_balanced(&group, 20, 3));
        assert_eq!(a.len(), 20);
        assert_eq!(a.iter().filter(|&&i| group[i] == 1).count(), 10);
        assert!(a.windows(2).all(|w| w[0] < w[1]));
        // Only 25 target rows: the background set tops up.
        let b = select_balanced(&group, 60, 3);
        assert_eq!(b.iter().filter(|&&i| group[i] == 1).count(), 25);
        assert_eq!(b.len(), 60);
        // More than there is: everything.
        assert_eq!(select_balanced(&group, 1000, 0).len(), 100);
    }

    #[test]
    fn oracle_beats_baselines_identity_does_not_and_schema_holds() {
        let set = small_set();
        let oracle = LookupModel::new(&set, false);
        let ev = evaluate(&oracle, &set, &info(), &options()).unwrap();
        let gt = ev.metrics.ground_truth.as_ref().unwrap();
        assert!(gt.counterfactual.counterfactual_gain_db > 10.0, "{gt:?}");
        assert!(gt.counterfactual.counterfactual_ssim > 0.99, "{gt:?}");
        assert!(gt.counterfactual.mask_error_inside < 1e-6, "{gt:?}");
        assert!(gt.saliency_iou > 0.7, "{gt:?}");
        let sep = &ev.metrics.separation;
        assert_eq!(sep.salient_label.as_deref(), Some("overlay_type"));
        assert_eq!(sep.common_label.as_deref(), Some("shape"));
        assert!(sep.salient_from_s.unwrap().accuracy > 0.95, "{sep:?}");
        assert!(sep.dataset_from_s.unwrap().accuracy > 0.95, "{sep:?}");
        assert_eq!(gt.probe_matrix["z"].len(), 17);
        assert_eq!(gt.probe_matrix["s"].len(), 17);
        assert!(ev.metrics.reconstruction.target_psnr_db.unwrap() > 90.0);
        assert!(ev.metrics.quality.dfd.unwrap().is_finite());
        assert!(ev.metrics.quality.fid.is_none());
        let names: Vec<&str> = ev.grids.iter().map(|g| g.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "reconstructions",
                "counterparts",
                "swaps",
                "traversals",
                "samples"
            ]
        );
        for g in &ev.grids {
            assert_eq!(g.images.size()[0] % g.ncol as i64, 0, "{}", g.name);
        }

        check_schema_and_report(&ev);

        let identity = LookupModel::new(&set, true);
        let ev = evaluate(&identity, &set, &info(), &options()).unwrap();
        let gt = ev.metrics.ground_truth.unwrap();
        assert!(gt.counterfactual.counterfactual_gain_db <= 0.0, "{gt:?}");
        assert!(
            (gt.counterfactual.counterfactual_psnr_db - gt.counterfactual.identity_psnr_db).abs()
                < 1e-9
        );
    }

    /// Without background rows no swap is made: both swap numbers are `null` in metrics.json
    /// (not 0, and not the counterpart rate alone under the swap-success name), and the report
    /// says why.
    #[test]
    fn swap_numbers_are_null_when_no_swap_was_made() {
        let full = small_set();
        let group: Vec<i64> = Vec::try_from(&full.group).unwrap();
        let targets: Vec<usize> = (0..group.len()).filter(|&i| group[i] == 1).collect();
        let set = subset(&full, &targets);
        let oracle = LookupModel::new(&full, false);
        let ev = evaluate(&oracle, &set, &info(), &options()).unwrap();
        let gt = ev.metrics.ground_truth.as_ref().unwrap();
        assert_eq!((gt.swap_target_rate, gt.swap_success), (None, None));
        assert!(gt.counterpart_background_rate.is_finite());
        let json = serde_json::to_value(&ev.metrics).unwrap();
        assert!(json["ground_truth"]["swap_success"].is_null(), "{json}");
        assert!(json["ground_truth"]["swap_target_rate"].is_null(), "{json}");
        let tmp = tempfile::tempdir().unwrap();
        crate::report::write_eval(tmp.path(), "run", &ev, &[]).unwrap();
        let md = std::fs::read_to_string(tmp.path().join("report.md")).unwrap();
        assert!(md.contains(crate::report::NO_SWAPS), "{md}");
        // With both groups the rates are numbers.
        let ev = evaluate(&oracle, &full, &info(), &options()).unwrap();
        let gt = ev.metrics.ground_truth.unwrap();
        assert!(gt.swap_target_rate.is_some() && gt.swap_success.is_some());
    }

    #[test]
    fn separation_only_matches_the_full_evaluation_and_keeps_files() {
        let set = small_set();
        let oracle = LookupModel::new(&set, false);
        let full = evaluate(&oracle, &set, &info(), &options()).unwrap();
        let quick = evaluate_separation(&oracle, &set, &info(), &options()).unwrap();
        assert_eq!(quick.separation, full.metrics.separation);
        assert_eq!(
            quick.probe_matrix,
            full.metrics.ground_truth.as_ref().unwrap().probe_matrix
        );
        assert_eq!((quick.eval.n_background, quick.eval.n_target), (60, 60));
        assert_eq!(quick.steps, 7);

        let tmp = tempfile::tempdir().unwrap();
        let dir = report::eval_dir(tmp.path(), None, &[]);
        let path = report::prepare_separation_file(&dir, false).unwrap();
        report::write_separation(&path, &quick).unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        assert_eq!(text, serde_json::to_string_pretty(&quick).unwrap() + "\n");
        // It reads back (serde_json's default float parsing may move the last bit).
        let back: SeparationReport = serde_json::from_str(&text).unwrap();
        let acc = |r: &SeparationReport| r.separation.salient_from_s.unwrap().accuracy;
        assert!((acc(&back) - acc(&quick)).abs() < 1e-12);
        assert_eq!(back.probe_matrix.len(), 2);
        // A second quick check needs --force; the full evaluation is not blocked by it.
        let err = report::prepare_separation_file(&dir, false).unwrap_err();
        assert!(err.to_string().contains("--force"), "{err}");
        report::prepare_separation_file(&dir, true).unwrap();
        report::prepare_eval_dir(&dir, false).unwrap();
    }

    #[test]
    fn subset_keeps_rows_and_ground_truth() {
        let set = small_set();
        let rows = select_balanced(&Vec::<i64>::try_from(&set.group).unwrap(), 20, 0);
        let sub = subset(&set, &rows);
        assert_eq!(sub.len(), 20);
        assert_eq!(sub.labels[3].values.len(), 20);
        assert_eq!(
            sub.indices,
            rows.iter().map(|&r| set.indices[r]).collect::<Vec<_>>()
        );
        assert!(
            sub.counterpart
                .unwrap()
                .get(5)
                .equal(&set.counterpart.unwrap().get(rows[5] as i64))
        );
        assert_eq!(sub.group.sum(Kind::Int64).int64_value(&[]), 10);
    }

    /// The schema of `metrics.json`: every key of the documented schema exists, the file is
    /// written with the report and reads back.
    fn check_schema_and_report(ev: &Evaluation) {
        let v = serde_json::to_value(&ev.metrics).unwrap();
        for k in [
            "model",
            "dataset",
            "steps",
            "wall_clock_s",
            "separation",
            "ground_truth",
            "reconstruction",
            "quality",
        ] {
            assert!(v.get(k).is_some(), "missing {k}");
        }
        for k in [
            "salient_from_s",
            "salient_from_z",
            "dataset_from_z",
            "dataset_from_s",
            "common_from_z",
            "common_from_s",
        ] {
            let p = &v["separation"][k];
            for f in ["accuracy", "std", "chance"] {
                assert!(p[f].is_f64(), "separation.{k}.{f}");
            }
        }
        for k in [
            "counterfactual_psnr_db",
            "identity_psnr_db",
            "flat_psnr_db",
            "counterfactual_gain_db",
            "counterfactual_ssim",
            "mask_error_inside",
            "mask_error_outside",
            "identity_error_inside",
            "flat_error_outside",
            "saliency_iou",
            "swap_success",
        ] {
            assert!(v["ground_truth"][k].is_f64(), "ground_truth.{k}");
        }
        assert!(v["ground_truth"]["probe_matrix"]["z"]["shape"]["accuracy"].is_f64());
        assert!(v["ground_truth"]["probe_matrix"]["s"]["obj_x"]["r2"].is_f64());
        for k in ["background_psnr_db", "target_psnr_db"] {
            assert!(v["reconstruction"][k].is_f64(), "reconstruction.{k}");
        }
        for k in ["fid", "kid", "dfd", "dkd"] {
            assert!(v["quality"].get(k).is_some(), "quality.{k}");
        }
        assert!(v["quality"]["fid"].is_null() && v["quality"]["dfd"].is_f64());

        // Written and read back, compared with itself.
        let tmp = tempfile::tempdir().unwrap();
        let dir =
            report::prepare_eval_dir(&report::eval_dir(tmp.path(), None, &[]), false).unwrap();
        let other = ev.metrics.clone();
        let files = report::write_eval(&dir, "run", ev, &[("other".into(), other)]).unwrap();
        assert!(files.iter().all(|f| f.exists()));
        let back = report::read_metrics(tmp.path()).unwrap();
        // (floats may differ in the last bit: serde_json's default float parser)
        assert_eq!(
            back.separation.salient_label,
            ev.metrics.separation.salient_label
        );
        assert_eq!(back.steps, 7);
        let (a, b) = (
            back.ground_truth
                .unwrap()
                .counterfactual
                .counterfactual_gain_db,
            ev.metrics
                .ground_truth
                .as_ref()
                .unwrap()
                .counterfactual
                .counterfactual_gain_db,
        );
        assert!((a - b).abs() < 1e-9);
        let md = std::fs::read_to_string(dir.join("report.md")).unwrap();
        assert!(md.contains("| metric | run | other |"), "{md}");
        assert!(md.contains("counterfactual gain (dB)"));
        let html = std::fs::read_to_string(dir.join("report.html")).unwrap();
        assert_eq!(html.matches("data:image/png;base64,").count(), 5);
    }
}
