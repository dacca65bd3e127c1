//! The code-level contrastive-analysis terms that every model family trains its encoder with,
//! their weights (the `[loss]` keys the families share, [`CodeTerms`]) and the helpers they use.
//! Each term lives here once; a family calls the ones it uses, in its own order (the order of
//! the random draws and of the loss sum is part of a family's numbers).
//!
//! * `loss.salient_zero` — the raw `s` of background images pushed to 0 ([`salient_zero`]);
//! * `loss.mmd` — common-code invariance: MMD between the `z` of background and target images,
//!   scale-free ([`mmd`]);
//! * `loss.z_adversary` — a dataset classifier on `z` that the encoder opposes
//!   ([`z_adversary_terms`]);
//! * `loss.salient_nce` — InfoNCE between the `s` of each target image and of a shifted,
//!   mirrored copy of it ([`shift_mirror`]), the batch's other targets as negatives (SepCLR's
//!   salient term): a reason of `s`'s own to tell target images apart by their salient content,
//!   beyond the dataset head's "is there any".
//! * `loss.salient_decorrelation` — the mean squared correlation between the columns of the
//!   detached common code and of the salient code over the target rows: keeps what `z` carries
//!   (e.g. the background colour that InfoNCE's negatives differ by) out of `s`.
//!
//! Rows are ordered background first, then target (`n_bg` and `n_t` known on the host).

use ca_losses::{contrastive, info, invariance};
use serde::{Deserialize, Serialize};
use tch::nn::{self, Module};
use tch::{Device, Kind, Tensor};

use crate::step::StepStats;

/// Norm floor of the `loss.salient_nce` similarities ([`contrastive::info_nce`]): trained
/// salient codes have norms of ~4 (the diffusion synthetic preset, seed 3, all images), so at 1
/// the term is a cosine once the codes have grown and a bounded dot product before.
pub const SALIENT_NCE_NORM_FLOOR: f64 = 1.0;

/// Floor on the standard deviation of each `s` column in `loss.salient_decorrelation`
/// ([`invariance::cross_correlation_sq`]): bounds the term's gradient while the codes are short
/// (without it, seed 0 of the diffusion preset kept the dataset head on `s` at ln 2 for 800
/// steps).
pub const DECORRELATION_STD_FLOOR: f64 = 1.0;

/// `loss.salient_decorrelation`: the mean squared correlation between the columns of the
/// detached common code `z` and of the salient code `s` over the target rows
/// `n_bg..n_bg + n_t` (background codes have `s = 0` by convention), so only `s` is moved.
pub fn salient_decorrelation(z: &Tensor, s: &Tensor, n_bg: i64, n_t: i64) -> Tensor {
    invariance::cross_correlation_sq(
        &z.narrow(0, n_bg, n_t).detach(),
        &s.narrow(0, n_bg, n_t),
        DECORRELATION_STD_FLOOR,
    )
}

/// `loss.salient_nce` (a scalar): InfoNCE between the salient codes `s` (`[N, ds]`) of `N`
/// target images and `s_view` of their second views, row `i` of each a positive pair and every
/// other row a negative. Both are centred on the mean of the two views' mean codes, so an offset
/// shared by all targets (the direction a dataset head reads) does not dilute the cosines.
/// Computed in fp32 (the codes may come from a bfloat16 autocast region).
pub fn salient_nce(s: &Tensor, s_view: &Tensor, temperature: f64) -> Tensor {
    let (a, b) = (s.to_kind(Kind::Float), s_view.to_kind(Kind::Float));
    let centre = (a.mean_dim([0i64].as_slice(), true, Kind::Float)
        + b.mean_dim([0i64].as_slice(), true, Kind::Float))
        * 0.5;
    contrastive::info_nce(
        &(a - &centre),
        &(b - &centre),
        temperature,
        SALIENT_NCE_NORM_FLOOR,
    )
    .mean(Kind::Float)
}

/// Shifted and mirrored copies of images, per row, in one differentiable resampling: row `i` of
/// the result at pixel `(y, x)` is `x[i]` at `(y + dy_i, x' + dx_i)` with `x' = x` (mirror `1`) or
/// `W - 1 - x` (mirror `-1`); positions outside the image repeat the border pixels.
///
/// # Shapes
/// * `x`: `[N, C, H, W]` float
/// * `aug`: `[N, 3]`, columns `dx`, `dy` (integer pixel shifts) and the mirror sign
/// * returns `[N, C, H, W]`
pub fn shift_mirror(x: &Tensor, aug: &Tensor) -> Tensor {
    let size = x.size();
    let (n, h, w) = (size[0], size[2], size[3]);
    let aug = aug.to_kind(x.kind()).to_device(x.device());
    let dx = aug.select(1, 0) * (2.0 / w as f64);
    let dy = aug.select(1, 1) * (2.0 / h as f64);
    let mirror = aug.select(1, 2);
    let zeros = Tensor::zeros_like(&dx);
    let ones = Tensor::ones_like(&dx);
    let theta =
        Tensor::stack(&[mirror, zeros.shallow_clone(), dx, zeros, ones, dy], 1).view([n, 2, 3]);
    let grid = Tensor::affine_grid_generator(&theta, size.as_slice(), false);
    // interpolation 1 = nearest (the shifts are whole pixels), padding 1 = border
    x.grid_sampler(&grid, 1, 1, false)
}

/// Random [`shift_mirror`] parameters for `b` rows (`[b, 3]` float on `dev`): shifts uniform in
/// `[-max_shift, max_shift]`, mirror with probability ½. Drawn from torch's generator.
pub fn random_aug(b: i64, max_shift: u32, dev: Device) -> Tensor {
    let m = max_shift as i64;
    let shifts = Tensor::randint_low(-m, m + 1, [b, 2], (Kind::Float, dev));
    let mirror = Tensor::randint(2, [b, 1], (Kind::Float, dev)) * 2.0 - 1.0;
    Tensor::cat(&[shifts, mirror], 1)
}

/// How the encoder opposes the `z` adversary (`loss.z_adversary_kind`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum ZAdversaryKind {
    /// Gradient reversal (Ganin & Lempitsky).
    #[default]
    Reversal,
    /// Dataset confusion against a classifier trained on detached codes.
    Confusion,
}

/// What the common-code invariance terms train (`loss.invariance_scope`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum InvarianceScope {
    /// The whole encoder.
    #[default]
    Encoder,
    /// Only the linear `z` head (the shared features are detached for these terms).
    Head,
}

/// The `[loss]` keys every model family has: the weights and settings of the code-level terms.
/// A weight of 0 skips the term (it is not computed).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct CodeTerms {
    /// Dataset classification (background vs target). GAN: the discriminator's dataset head
    /// on real images and the generator on its fakes (Double InfoGAN's class loss); diffusion:
    /// a linear head on the raw `s` of real images, trained with the encoder. Default 1.
    pub class: f64,
    /// Salient-zero: the predicted `s` of real background images is pushed to 0. Default 1.
    pub salient_zero: f64,
    /// Common-code invariance: MMD between the `z` of background and target images (scale-free:
    /// codes divided by their detached pooled std). Default 0.
    pub mmd: f64,
    /// Common-code invariance: a dataset classifier on `z` that the encoder opposes (how:
    /// `z_adversary_kind`). Default 0.
    pub z_adversary: f64,
    /// What the common-code invariance terms (`mmd`, `z_adversary`) train: `encoder` (default:
    /// their gradient reaches the whole encoder) or `head` (only the linear `z` head: `z` is
    /// recomputed from the encoder's shared features with the gradient stopped there). The
    /// encoder's `z` and `s` heads read the same features, so with `encoder` the pressure to
    /// hide the dataset from `z` also erases it from the features `s` needs: measured with the
    /// CA-GAN (300 steps, `salient_class` only: its loss fell 0.69 -> 0.36; with `z_adversary`
    /// added it rose to 1.0 and was back at 0.68 at step 200). `head` needs a separate encoder
    /// (the diffusion encoder, or `[model.encoder]` for the GAN); a GAN that encodes with its
    /// discriminator's heads keeps `encoder`.
    pub invariance_scope: InvarianceScope,
    /// How the encoder opposes the `z` adversary: `reversal` (default; gradient reversal, the
    /// encoder maximises the classifier's loss, which also rewards flipped labels) or
    /// `confusion` (the encoder pushes the classifier's logit to 0; see [`z_adversary_terms`]).
    pub z_adversary_kind: ZAdversaryKind,
    /// Use the background convention `s = 0` when decoding real background images. Default
    /// true; the plain-autoencoder baseline sets it false (no dataset signal at all).
    pub salient_masking: bool,
    /// Weight of a contrastive term on the salient code of target images (the GAN's encoder
    /// codes of real images, or its discriminator heads without an encoder) — symmetric
    /// InfoNCE ([`ca_losses::contrastive::info_nce`]) between the raw `s` of each target image
    /// and the `s` of a randomly shifted and mirrored copy of it (an extra pass of the `s` path
    /// on the target rows), other target images of the batch as negatives — so `s` keeps what
    /// tells target images apart beyond what the decoder and the dataset head ask of it
    /// (SepCLR's salient term). Codes are centred on the batch's mean target code;
    /// similarities are cosines with a norm floor of 1 ([`SALIENT_NCE_NORM_FLOOR`]). Default 0
    /// (off; measured on the synthetic presets in `docs/trials.md`).
    pub salient_nce: f64,
    /// Temperature of `salient_nce` (> 0). Default 0.2.
    pub salient_nce_temperature: f64,
    /// Largest shift, in pixels along each axis, of the `salient_nce` view (border
    /// pixels repeated; `0`: mirroring only). Default 4.
    pub salient_nce_shift: u32,
    /// Weight of a decorrelation term between the codes of target images (the GAN's encoder
    /// codes of real images) — the mean squared correlation between every column of the
    /// (detached) common code `z` and every column of the salient code `s` over the batch's
    /// target rows, `s` columns shorter than 1 counted by their covariance
    /// ([`ca_losses::invariance::cross_correlation_sq`]), so `s` carries nothing linearly
    /// readable from `z` (the background colour that `salient_nce` lets into `s`, say). Only `s`
    /// is moved. Default 0 (off).
    pub salient_decorrelation: f64,
}

impl Default for CodeTerms {
    fn default() -> Self {
        CodeTerms {
            class: 1.0,
            salient_zero: 1.0,
            mmd: 0.0,
            z_adversary: 0.0,
            invariance_scope: InvarianceScope::Encoder,
            z_adversary_kind: ZAdversaryKind::Reversal,
            salient_masking: true,
            salient_nce: 0.0,
            salient_nce_temperature: 0.2,
            salient_nce_shift: 4,
            salient_decorrelation: 0.0,
        }
    }
}

impl CodeTerms {
    /// The weights as `(key, value)` for range checks.
    pub fn weights(&self) -> [(&'static str, f64); 6] {
        [
            ("loss.class", self.class),
            ("loss.salient_zero", self.salient_zero),
            ("loss.mmd", self.mmd),
            ("loss.z_adversary", self.z_adversary),
            ("loss.salient_nce", self.salient_nce),
            ("loss.salient_decorrelation", self.salient_decorrelation),
        ]
    }
}

/// Add `weight * term` to `loss` and log the unweighted term under `name`.
pub fn add(loss: &mut Tensor, stats: &mut StepStats, name: &'static str, t: &Tensor, weight: f64) {
    *loss += t * weight;
    stats.push((name, t.detach()));
}

/// RBF bandwidths of the MMD terms (codes are compared at unit scale).
pub const MMD_BANDWIDTHS: [f64; 5] = [0.5, 1.0, 2.0, 4.0, 8.0];

/// Mean of a per-sample loss over the rows where `weight` (0/1, `[B]`) is 1 (0 when none).
pub fn masked_mean(per_sample: &Tensor, weight: &Tensor) -> Tensor {
    (per_sample * weight).sum(Kind::Float) / weight.sum(Kind::Float).clamp_min(1.0)
}

/// `loss.salient_zero`: the mean L1 of the raw salient codes `s` of the background rows
/// (`is_bg` 0/1), `None` when its weight is 0 or the convention is off (`salient_masking`).
pub fn salient_zero(w: &CodeTerms, s: &Tensor, is_bg: &Tensor) -> Option<Tensor> {
    (w.salient_zero > 0.0 && w.salient_masking).then(|| masked_mean(&info::salient_zero(s), is_bg))
}

/// `loss.mmd`: the scale-free MMD between the `z` of the background rows `0..n_bg` and of the
/// target rows, `None` when its weight is 0 or a group has fewer than 2 rows.
pub fn mmd(w: &CodeTerms, z: &Tensor, n_bg: i64, n_t: i64) -> Option<Tensor> {
    (w.mmd > 0.0 && n_bg >= 2 && n_t >= 2).then(|| {
        invariance::mmd_rbf_scale_free(
            &z.narrow(0, 0, n_bg),
            &z.narrow(0, n_bg, n_t),
            &MMD_BANDWIDTHS,
        )
    })
}

/// `loss.salient_decorrelation` of the target rows, `None` when its weight is 0 or there are
/// fewer than 2 target rows.
pub fn decorrelation(w: &CodeTerms, z: &Tensor, s: &Tensor, n_bg: i64, n_t: i64) -> Option<Tensor> {
    (w.salient_decorrelation > 0.0 && n_t >= 2).then(|| salient_decorrelation(z, s, n_bg, n_t))
}

/// `loss.salient_nce` of the target rows of `x` (whose raw salient codes are `s`): the view of
/// each target image by `aug` ([`shift_mirror`]; drawn here by [`random_aug`] when `None`),
/// encoded by `salient_of`. `None` when its weight is 0 or there are fewer than 2 target rows.
pub fn nce(
    w: &CodeTerms,
    x: &Tensor,
    s: &Tensor,
    n_bg: i64,
    aug: Option<&Tensor>,
    salient_of: impl FnOnce(&Tensor) -> Tensor,
) -> Option<Tensor> {
    let n_t = x.size()[0] - n_bg;
    if !(w.salient_nce > 0.0 && n_t >= 2) {
        return None;
    }
    let aug = match aug {
        Some(a) => a.narrow(0, n_bg, n_t),
        None => random_aug(n_t, w.salient_nce_shift, x.device()),
    };
    let view = shift_mirror(&x.narrow(0, n_bg, n_t), &aug);
    Some(salient_nce(
        &s.narrow(0, n_bg, n_t),
        &salient_of(&view),
        w.salient_nce_temperature,
    ))
}

/// The dataset adversary on `z` (`loss.z_adversary`): the linear classifier `lin` on
/// column-standardised `z` (see [`invariance::standardize_columns`]) and the encoder's opposing
/// term, per `kind`. Returns `(loss to add before weighting, classifier BCE for the log)`.
///
/// * `reversal`: one BCE through gradient reversal — the classifier minimises it, the encoder
///   maximises it. Maximising rewards a confidently *wrong* classifier (labels flipped, the
///   dataset still in `z`): measured with CA-diffusion, the logged BCE went up to 2.1-7.2
///   before settling near ln 2 while the held-out probe still read the dataset from `z` at
///   99.5%.
/// * `confusion`: the classifier minimises its BCE on detached codes; the encoder minimises
///   [`invariance::dataset_confusion`] of the same classifier with its weights detached, whose
///   optimum is a logit of 0 (the classifier unable to tell), not a flipped one.
pub fn z_adversary_terms(
    lin: &nn::Linear,
    z: &Tensor,
    is_target: &Tensor,
    kind: ZAdversaryKind,
) -> (Tensor, Tensor) {
    let zs = invariance::standardize_columns(z);
    match kind {
        ZAdversaryKind::Reversal => {
            let logits = lin
                .forward(&invariance::gradient_reversal(&zs, 1.0))
                .squeeze_dim(1);
            let t = info::class_bce(&logits, is_target).mean(Kind::Float);
            let logged = t.detach();
            (t, logged)
        }
        ZAdversaryKind::Confusion => {
            let logits_c = lin.forward(&zs.detach()).squeeze_dim(1);
            let classifier = info::class_bce(&logits_c, is_target).mean(Kind::Float);
            let mut logits_e = zs.matmul(&lin.ws.detach().tr());
            if let Some(b) = &lin.bs {
                logits_e += b.detach();
            }
            let encoder = invariance::dataset_confusion(&logits_e.squeeze_dim(1)).mean(Kind::Float);
            let logged = classifier.detach();
            (classifier + encoder, logged)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One bright pixel moves where the shift and the mirror say; off-image samples repeat the
    /// border; the flag columns act per row.
    #[test]
    fn shift_mirror_moves_pixels_per_row() {
        let mut img = vec![0f32; 2 * 8 * 8];
        img[3 * 8 + 2] = 1.0; // row 0: (y 3, x 2)
        img[64 + 3 * 8 + 2] = 1.0; // row 1: the same
        let x = Tensor::from_slice(&img).view([2, 1, 8, 8]);
        // row 0: shift (dx 1, dy -2): out(y, x) = in(y - 2, x + 1), the pixel lands at (5, 1).
        // row 1: mirror only: out(y, x) = in(y, 7 - x), the pixel lands at (3, 5).
        let aug = Tensor::from_slice(&[1.0f32, -2.0, 1.0, 0.0, 0.0, -1.0]).view([2, 3]);
        let out = shift_mirror(&x, &aug);
        let at = |r: i64, y: i64, xx: i64| out.double_value(&[r, 0, y, xx]);
        assert_eq!(at(0, 5, 1), 1.0);
        assert_eq!(at(1, 3, 5), 1.0);
        assert_eq!(out.sum(Kind::Float).double_value(&[]), 2.0);
        // Border repeat: a ramp along x shifted right by 3 keeps its first column 3 times.
        let ramp = Tensor::arange(8, (Kind::Float, Device::Cpu))
            .view([1, 1, 1, 8])
            .expand([1, 1, 8, 8], false)
            .contiguous();
        let out = shift_mirror(
            &ramp,
            &Tensor::from_slice(&[-3.0f32, 0.0, 1.0]).view([1, 3]),
        );
        let row: Vec<f64> = Vec::try_from(out.get(0).get(0).get(4).to_kind(Kind::Double)).unwrap();
        assert_eq!(row, vec![0.0, 0.0, 0.0, 0.0, 1.0, 2.0, 3.0, 4.0]);
    }

    /// The draws: integer shifts within the bound, mirror signs ±1.
    #[test]
    fn random_aug_stays_in_range() {
        tch::manual_seed(3);
        let a = random_aug(500, 2, Device::Cpu);
        assert_eq!(a.size(), vec![500, 3]);
        let shifts = a.narrow(1, 0, 2);
        assert_eq!(shifts.abs().max().double_value(&[]), 2.0);
        assert!(shifts.eq_tensor(&shifts.round()).all().int64_value(&[]) == 1);
        let m = a.select(1, 2);
        assert!(m.abs().eq(1.0).all().int64_value(&[]) == 1);
        // Both signs occur.
        assert_eq!(m.min().double_value(&[]), -1.0);
        assert_eq!(m.max().double_value(&[]), 1.0);
    }

    /// A shared offset does not change the term (centring), and positives that match their
    /// views score lower than shuffled ones.
    #[test]
    fn salient_nce_ignores_a_shared_offset_and_rewards_matching_views() {
        let s = Tensor::from_slice(&[3.0f32, 0.0, 0.0, 3.0, -3.0, 0.0, 0.0, -3.0]).view([4, 2]);
        let t = 0.5;
        let base = salient_nce(&s, &s, t).double_value(&[]);
        let shifted = salient_nce(&(&s + 10.0), &(&s + 10.0), t).double_value(&[]);
        assert!((base - shifted).abs() < 1e-5, "{base} vs {shifted}");
        let rolled = s.roll([1], [0]);
        let wrong = salient_nce(&s, &rolled, t).double_value(&[]);
        assert!(base < wrong, "matched {base}, rolled {wrong}");
    }
}
