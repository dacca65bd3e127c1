//! Ground-truth image metrics for counterfactuals and saliency maps.
//!
//! **Convention:** unless a function says otherwise, images are float `[N, C, H, W]` tensors with
//! values in `[0, 1]` (use [`unit_range`] on the models' `[-1, 1]` images), masks are
//! `[N, H, W]` or `[N, 1, H, W]` tensors (bool, or numbers where `> 0.5` means inside).
//! All results are computed in `f64` on the inputs' device.
//!
//! * PSNR, `10 log10(R² / MSE)` per image, capped at `10 log10(R² / (1e-10 R²)) = 100` dB so
//!   identical images give a finite number.
//! * SSIM (Wang, Bovik, Sheikh, Simoncelli, "Image quality assessment: from error visibility to
//!   structural similarity", IEEE TIP 2004): Gaussian window 11x11, σ = 1.5, `K1 = 0.01`,
//!   `K2 = 0.03`, population (not sample) covariances, averaged over the "valid" positions (the
//!   window entirely inside the image) and over channels — the same number as scikit-image's
//!   `structural_similarity(gaussian_weights=True, sigma=1.5, use_sample_covariance=False,
//!   channel_axis=0)`.
//! * The two trivial counterfactual baselines of docs/design.md section 6 — the unchanged input and a
//!   flat image of the input's per-channel median colour — and the counterfactual gain in dB
//!   over the better of them.
//! * Mean absolute error inside and outside the salient mask, pooled over the batch.
//! * Saliency maps `|x - counterpart(x)|` and their IoU with the true mask at a threshold chosen
//!   on a held-out part of the images.

use serde::{Deserialize, Serialize};
use tch::{Kind, Tensor};

use super::{MetricsError, Result};

/// Maps a model image in `[-1, 1]` to `[0, 1]` (clamped), as `f64`.
pub fn unit_range(x: &Tensor) -> Tensor {
    ((x.to_kind(Kind::Double) + 1.0) * 0.5).clamp(0.0, 1.0)
}

/// Per-image PSNR in dB between `a` and `b` (`[N, C, H, W]`, same shape), for images whose
/// values span `data_range` (1 for `[0, 1]`, 2 for `[-1, 1]`). Returns `[N]` `f64`, capped at
/// 100 dB.
pub fn psnr(a: &Tensor, b: &Tensor, data_range: f64) -> Result<Tensor> {
    check_pair(a, b)?;
    let mse = (a.to_kind(Kind::Double) - b.to_kind(Kind::Double))
        .square()
        .flatten(1, -1)
        .mean_dim(1, false, Kind::Double);
    let r2 = data_range * data_range;
    Ok((mse.clamp_min(1e-10 * r2).reciprocal() * r2).log10() * 10.0)
}

/// Per-image SSIM between `a` and `b` (`[N, C, H, W]`, `H, W >= 11`) whose values span
/// `data_range`; `[N]` `f64` (see the module docs for the exact definition).
pub fn ssim(a: &Tensor, b: &Tensor, data_range: f64) -> Result<Tensor> {
    check_pair(a, b)?;
    let (h, w) = (a.size()[2], a.size()[3]);
    if h < WIN || w < WIN {
        return Err(MetricsError::Shape {
            what: "ssim images",
            expected: format!("[N, C, H, W] with H, W >= {WIN}"),
            got: a.size(),
        });
    }
    let device = a.device();
    let g: Vec<f64> = (0..WIN)
        .map(|i| {
            let x = (i - WIN / 2) as f64;
            (-x * x / (2.0 * 1.5 * 1.5)).exp()
        })
        .collect();
    let sum: f64 = g.iter().sum();
    // The separable "valid" Gaussian filter as two banded matrices (BLAS matmuls are much faster
    // than a depthwise f64 convolution): band[j + k, j] = g[k], shape [L, L - WIN + 1].
    let band = |len: i64| {
        let out = len - WIN + 1;
        let mut m = vec![0.0f64; (len * out) as usize];
        for j in 0..out {
            for (k, gk) in g.iter().enumerate() {
                m[((j + k as i64) * out + j) as usize] = gk / sum;
            }
        }
        Tensor::from_slice(&m).view([len, out]).to_device(device)
    };
    let bw = band(w);
    let bh_t = band(h).transpose(0, 1).contiguous();
    let filter = |t: &Tensor| bh_t.matmul(&t.matmul(&bw));
    let c1 = (0.01 * data_range).powi(2);
    let c2 = (0.03 * data_range).powi(2);
    let n = a.size()[0];
    let mut out = Vec::new();
    // Chunks bound the memory of the five filtered f64 stacks.
    let chunk = 256;
    let mut start = 0;
    while start < n {
        let len = chunk.min(n - start);
        let x = a.narrow(0, start, len).to_kind(Kind::Double);
        let y = b.narrow(0, start, len).to_kind(Kind::Double);
        let stack = Tensor::cat(&[&x, &y, &(&x * &x), &(&y * &y), &(&x * &y)], 0);
        let f = filter(&stack).chunk(5, 0);
        let (ux, uy) = (&f[0], &f[1]);
        let vx = &f[2] - ux * ux;
        let vy = &f[3] - uy * uy;
        let vxy = &f[4] - ux * uy;
        let num = (ux * uy * 2.0 + c1) * (vxy * 2.0 + c2);
        let den = (ux * ux + uy * uy + c1) * (vx + vy + c2);
        out.push((num / den).flatten(1, -1).mean_dim(1, false, Kind::Double));
        start += len;
    }
    Ok(Tensor::cat(&out, 0))
}

const WIN: i64 = 11;

/// The identity counterfactual baseline: the input itself.
pub fn identity_baseline(x: &Tensor) -> Tensor {
    x.shallow_clone()
}

/// The flat counterfactual baseline: for each image of `x: [N, C, H, W]`, a flat image filled
/// with its per-channel median (torch's lower median for an even pixel count). Same kind as `x`.
pub fn flat_median_baseline(x: &Tensor) -> Result<Tensor> {
    check_images(x, "flat_median_baseline x")?;
    let s = x.size();
    let (med, _) = x.flatten(2, 3).median_dim(2, true);
    Ok(med
        .unsqueeze(-1)
        .expand([s[0], s[1], s[2], s[3]], false)
        .contiguous())
}

/// Counterfactual gain in dB: the model's PSNR minus the better of the two trivial baselines.
pub fn counterfactual_gain(model_psnr: f64, identity_psnr: f64, flat_psnr: f64) -> f64 {
    model_psnr - identity_psnr.max(flat_psnr)
}

/// Mean absolute error `(inside, outside)` the mask between `a` and `b` (`[N, C, H, W]` in
/// `[0, 1]`), pooled over all images, pixels and channels of each region. An empty region (no
/// mask pixel in the whole batch, or no pixel outside) is an error.
pub fn masked_mae(a: &Tensor, b: &Tensor, mask: &Tensor) -> Result<(f64, f64)> {
    check_pair(a, b)?;
    let m = mask_f64(mask, a)?;
    let c = a.size()[1] as f64;
    let err = (a.to_kind(Kind::Double) - b.to_kind(Kind::Double)).abs();
    let inside_n = m.sum(Kind::Double).double_value(&[]) * c;
    let total = err.numel() as f64;
    let outside_n = total - inside_n;
    if inside_n <= 0.0 || outside_n <= 0.0 {
        return Err(MetricsError::InvalidArgument(format!(
            "masked_mae: {inside_n} values inside and {outside_n} outside the mask; both must be > 0"
        )));
    }
    let inside = (&err * &m).sum(Kind::Double).double_value(&[]);
    let all = err.sum(Kind::Double).double_value(&[]);
    Ok((inside / inside_n, (all - inside) / outside_n))
}

/// Intersection over union of two boolean masks of the same shape, pooled over the batch
/// (`Σ |P ∩ T| / Σ |P ∪ T|`); two empty masks give 1.
pub fn iou(pred: &Tensor, truth: &Tensor) -> Result<f64> {
    if pred.size() != truth.size() {
        return Err(MetricsError::Shape {
            what: "iou pred",
            expected: format!("{:?} (the true mask's shape)", truth.size()),
            got: pred.size(),
        });
    }
    let p = pred.to_kind(Kind::Bool);
    let t = truth.to_kind(Kind::Bool);
    let inter = p.logical_and(&t).sum(Kind::Double).double_value(&[]);
    let union = p.logical_or(&t).sum(Kind::Double).double_value(&[]);
    Ok(if union == 0.0 { 1.0 } else { inter / union })
}

/// Saliency map `mean_c |x - counterpart|`, `[N, H, W]` `f64`.
pub fn saliency_map(x: &Tensor, counterpart: &Tensor) -> Result<Tensor> {
    check_pair(x, counterpart)?;
    Ok(
        (x.to_kind(Kind::Double) - counterpart.to_kind(Kind::Double))
            .abs()
            .mean_dim(1, false, Kind::Double),
    )
}

/// A threshold on saliency scores and the IoU it reaches on the images it was chosen on.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct BestThreshold {
    /// Predicted mask = `score >= threshold`.
    pub threshold: f64,
    /// Pooled IoU of that prediction on the images used to choose it.
    pub iou: f64,
}

/// The threshold maximising the pooled IoU of `scores >= threshold` against `masks` (same
/// shape, e.g. `[N, H, W]`), searched exactly over every distinct score value.
pub fn best_threshold_iou(scores: &Tensor, masks: &Tensor) -> Result<BestThreshold> {
    if scores.size() != masks.size() || scores.numel() == 0 {
        return Err(MetricsError::Shape {
            what: "best_threshold_iou scores",
            expected: format!("non-empty, the masks' shape {:?}", masks.size()),
            got: scores.size(),
        });
    }
    let s = scores.to_kind(Kind::Double).flatten(0, -1);
    let t = masks
        .to_kind(Kind::Bool)
        .flatten(0, -1)
        .to_kind(Kind::Double);
    let (v, order) = s.sort(0, true);
    let tp = t.index_select(0, &order).cumsum(0, Kind::Double);
    let m = v.size()[0];
    let positives = t.sum(Kind::Double);
    let predicted = Tensor::arange_start(1, m + 1, (Kind::Double, s.device()));
    let iou = &tp / (predicted + &positives - &tp).clamp_min(1e-300);
    // Only a cut after the last element of a run of equal scores is realisable by a threshold.
    let last_of_run = Tensor::cat(
        &[
            v.narrow(0, 0, m - 1).gt_tensor(&v.narrow(0, 1, m - 1)),
            Tensor::ones([1], (Kind::Bool, s.device())),
        ],
        0,
    );
    let masked = iou.where_self(&last_of_run, &iou.full_like(-1.0));
    let k = masked.argmax(0, false).int64_value(&[]);
    Ok(BestThreshold {
        threshold: v.double_value(&[k]),
        iou: masked.double_value(&[k]),
    })
}

/// Saliency IoU with a held-out threshold.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct SaliencyIou {
    /// Threshold chosen on the held-out images.
    pub threshold: f64,
    /// IoU on the held-out images at that threshold.
    pub heldout_iou: f64,
    /// Pooled IoU on the remaining images at that threshold (the reported number).
    pub iou: f64,
}

/// Chooses the threshold on the first `heldout` images of `scores`/`masks` (`[N, H, W]` or
/// `[N, 1, H, W]`, same shape) with [`best_threshold_iou`] and reports the IoU of
/// `scores >= threshold` on the other `N - heldout` images. Needs `0 < heldout < N`.
pub fn saliency_iou(scores: &Tensor, masks: &Tensor, heldout: i64) -> Result<SaliencyIou> {
    if scores.size() != masks.size() || scores.dim() < 2 {
        return Err(MetricsError::Shape {
            what: "saliency_iou scores",
            expected: format!("[N, ...] equal to the masks' shape {:?}", masks.size()),
            got: scores.size(),
        });
    }
    let n = scores.size()[0];
    if heldout <= 0 || heldout >= n {
        return Err(MetricsError::InvalidArgument(format!(
            "saliency_iou: need 0 < heldout < {n}, got {heldout}"
        )));
    }
    let best = best_threshold_iou(&scores.narrow(0, 0, heldout), &masks.narrow(0, 0, heldout))?;
    let rest = scores.narrow(0, heldout, n - heldout);
    let pred = rest.to_kind(Kind::Double).ge(best.threshold);
    let iou = iou(
        &pred,
        &masks.narrow(0, heldout, n - heldout).to_kind(Kind::Bool),
    )?;
    Ok(SaliencyIou {
        threshold: best.threshold,
        heldout_iou: best.iou,
        iou,
    })
}

/// Counterfactual quality of a model next to the two trivial baselines (the `ground_truth`
/// fields of `metrics.json`). PSNR and SSIM are means over images; errors are pooled MAEs.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct CounterfactualMetrics {
    /// Mean PSNR (dB) of the model's counterpart against the true counterpart.
    pub counterfactual_psnr_db: f64,
    /// Mean PSNR (dB) of the unchanged input against the true counterpart.
    pub identity_psnr_db: f64,
    /// Mean PSNR (dB) of the flat median-colour image against the true counterpart.
    pub flat_psnr_db: f64,
    /// `counterfactual_psnr_db - max(identity_psnr_db, flat_psnr_db)`.
    pub counterfactual_gain_db: f64,
    /// Mean SSIM of the model's counterpart against the true counterpart.
    pub counterfactual_ssim: f64,
    /// Model MAE inside the salient mask.
    pub mask_error_inside: f64,
    /// Model MAE outside the salient mask.
    pub mask_error_outside: f64,
    /// Identity-baseline MAE inside the mask.
    pub identity_error_inside: f64,
    /// Identity-baseline MAE outside the mask (0 when the renderer only adds the overlay).
    pub identity_error_outside: f64,
    /// Flat-baseline MAE inside the mask.
    pub flat_error_inside: f64,
    /// Flat-baseline MAE outside the mask.
    pub flat_error_outside: f64,
}

/// Computes [`CounterfactualMetrics`] for target images `x`, the model's counterparts
/// `model_cf` and the exact counterparts `true_cf` (all `[N, C, H, W]` in `[0, 1]`, `H, W >= 11`)
/// with the salient `mask` (`[N, H, W]` or `[N, 1, H, W]`).
pub fn counterfactual_metrics(
    x: &Tensor,
    model_cf: &Tensor,
    true_cf: &Tensor,
    mask: &Tensor,
) -> Result<CounterfactualMetrics> {
    check_pair(x, model_cf)?;
    check_pair(x, true_cf)?;
    let flat = flat_median_baseline(x)?;
    let mean = |t: Tensor| t.mean(Kind::Double).double_value(&[]);
    let model_psnr = mean(psnr(model_cf, true_cf, 1.0)?);
    let identity_psnr = mean(psnr(x, true_cf, 1.0)?);
    let flat_psnr = mean(psnr(&flat, true_cf, 1.0)?);
    let (mi, mo) = masked_mae(model_cf, true_cf, mask)?;
    let (ii, io) = masked_mae(x, true_cf, mask)?;
    let (fi, fo) = masked_mae(&flat, true_cf, mask)?;
    Ok(CounterfactualMetrics {
        counterfactual_psnr_db: model_psnr,
        identity_psnr_db: identity_psnr,
        flat_psnr_db: flat_psnr,
        counterfactual_gain_db: counterfactual_gain(model_psnr, identity_psnr, flat_psnr),
        counterfactual_ssim: mean(ssim(model_cf, true_cf, 1.0)?),
        mask_error_inside: mi,
        mask_error_outside: mo,
        identity_error_inside: ii,
        identity_error_outside: io,
        flat_error_inside: fi,
        flat_error_outside: fo,
    })
}

fn check_images(x: &Tensor, what: &'static str) -> Result<()> {
    if x.dim() != 4 {
        return Err(MetricsError::Shape {
            what,
            expected: "[N, C, H, W]".into(),
            got: x.size(),
        });
    }
    Ok(())
}

fn check_pair(a: &Tensor, b: &Tensor) -> Result<()> {
    check_images(a, "image a")?;
    if a.size() != b.size() {
        return Err(MetricsError::Shape {
            what: "image b",
            expected: format!("{:?} (the shape of a)", a.size()),
            got: b.size(),
        });
    }
    Ok(())
}

/// Mask as `[N, 1, H, W]` `f64` of 0/1 matching images `x: [N, C, H, W]`.
fn mask_f64(mask: &Tensor, x: &Tensor) -> Result<Tensor> {
    let s = x.size();
    let m = match mask.dim() {
        3 => mask.unsqueeze(1),
        4 => mask.shallow_clone(),
        _ => Tensor::new(),
    };
    if !m.defined() || m.size() != [s[0], 1, s[2], s[3]] {
        return Err(MetricsError::Shape {
            what: "mask",
            expected: format!(
                "[{}, {}, {}] or [{}, 1, {}, {}]",
                s[0], s[2], s[3], s[0], s[2], s[3]
            ),
            got: mask.size(),
        });
    }
    Ok(if m.kind() == Kind::Bool {
        m.to_kind(Kind::Double)
    } else {
        m.to_kind(Kind::Double).gt(0.5).to_kind(Kind::Double)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::Device;

    /// Deterministic smooth test image `[1, C, H, W]` in [0, 1].
    fn pattern(c: i64, h: i64, w: i64, phase: f64) -> Tensor {
        let mut v = Vec::new();
        for ch in 0..c {
            for y in 0..h {
                for x in 0..w {
                    let (fc, fy, fx) = (ch as f64, y as f64, x as f64);
                    v.push(
                        0.5 + 0.4
                            * (0.3 * fx + 0.2 * fy + phase + fc).sin()
                            * (0.17 * fy * (fc + 1.0)).cos(),
                    );
                }
            }
        }
        Tensor::from_slice(&v).view([1, c, h, w])
    }

    #[test]
    fn psnr_known_values() {
        let a = Tensor::zeros([2, 1, 4, 4], (Kind::Float, Device::Cpu));
        let b = Tensor::cat(&[a.narrow(0, 0, 1).full_like(0.1), a.narrow(0, 0, 1)], 0);
        let p = psnr(&a, &b, 1.0).unwrap();
        // MSE 0.01 -> 20 dB; identical -> the 100 dB cap.
        assert!((p.double_value(&[0]) - 20.0).abs() < 1e-5);
        assert!((p.double_value(&[1]) - 100.0).abs() < 1e-9);
        // [-1, 1] images: range 2, same MSE 0.01 -> 10 log10(4 / 0.01).
        let q = psnr(&a, &b, 2.0).unwrap().double_value(&[0]);
        assert!((q - 10.0 * 400f64.log10()).abs() < 1e-5);
        assert!(psnr(&a, &a.view([2, 16]), 1.0).is_err());
    }

    #[test]
    fn ssim_identity_and_scikit_image_reference() {
        let a = pattern(3, 16, 14, 0.0);
        let b = (pattern(3, 16, 14, 0.4) * 0.8 + 0.05).clamp(0.0, 1.0);
        let same = ssim(&a, &a, 1.0).unwrap().double_value(&[0]);
        assert!((same - 1.0).abs() < 1e-12);
        // Reference, scikit-image 0.26.0 with numpy 2.4.6 (same pattern formula):
        //
        //   import numpy as np; from skimage.metrics import structural_similarity
        //   def pattern(c, h, w, ph):
        //       ch, y, x = np.meshgrid(np.arange(c), np.arange(h), np.arange(w), indexing='ij')
        //       return 0.5 + 0.4*np.sin(0.3*x + 0.2*y + ph + ch)*np.cos(0.17*y*(ch + 1))
        //   a = pattern(3, 16, 14, 0.0); b = np.clip(pattern(3, 16, 14, 0.4)*0.8 + 0.05, 0, 1)
        //   print(structural_similarity(a, b, channel_axis=0, gaussian_weights=True, sigma=1.5,
        //         use_sample_covariance=False, data_range=1))
        let s = ssim(&a, &b, 1.0).unwrap().double_value(&[0]);
        assert!(
            (s - SKIMAGE_SSIM).abs() < 1e-6,
            "ssim {s} vs {SKIMAGE_SSIM}"
        );
        assert!(ssim(&a.narrow(2, 0, 10), &b.narrow(2, 0, 10), 1.0).is_err());
    }

    const SKIMAGE_SSIM: f64 = 0.8726575983320984;

    #[test]
    fn ssim_is_per_image() {
        let a = Tensor::cat(&[pattern(1, 12, 12, 0.0), pattern(1, 12, 12, 1.0)], 0);
        let b = Tensor::cat(&[pattern(1, 12, 12, 0.0), pattern(1, 12, 12, 2.0)], 0);
        let s = ssim(&a, &b, 1.0).unwrap();
        assert_eq!(s.size(), [2]);
        assert!((s.double_value(&[0]) - 1.0).abs() < 1e-12);
        assert!(s.double_value(&[1]) < 0.9);
    }

    #[test]
    fn baselines_and_gain() {
        // One 1x2x2 image with channel values [0.1, 0.2, 0.9, 0.3]: lower median 0.2.
        let x = Tensor::from_slice(&[0.1f32, 0.2, 0.9, 0.3]).view([1, 1, 2, 2]);
        let flat = flat_median_baseline(&x).unwrap();
        assert_eq!(
            Vec::<f32>::try_from(&flat.view([-1])).unwrap(),
            vec![0.2; 4]
        );
        assert!(identity_baseline(&x).equal(&x));
        assert_eq!(counterfactual_gain(30.0, 25.0, 27.5), 2.5);
    }

    #[test]
    fn masked_mae_inside_outside() {
        // 2 channels, 2x2; mask covers pixel (0,0). |a-b| = 0.5 there in both channels, 0.1 elsewhere.
        let a = Tensor::zeros([1, 2, 2, 2], (Kind::Double, Device::Cpu));
        let mut d = vec![0.1f64; 8];
        d[0] = 0.5;
        d[4] = 0.5;
        let b = Tensor::from_slice(&d).view([1, 2, 2, 2]);
        let mask = Tensor::from_slice(&[true, false, false, false]).view([1, 2, 2]);
        let (inside, outside) = masked_mae(&a, &b, &mask).unwrap();
        assert!((inside - 0.5).abs() < 1e-12 && (outside - 0.1).abs() < 1e-12);
        let empty = mask.zeros_like();
        assert!(masked_mae(&a, &b, &empty).is_err());
        assert!(masked_mae(&a, &b, &mask.view([1, 4])).is_err());
    }

    #[test]
    fn iou_and_threshold_choice() {
        let p = Tensor::from_slice(&[true, true, false, false]);
        let t = Tensor::from_slice(&[true, false, true, false]);
        assert!((iou(&p, &t).unwrap() - 1.0 / 3.0).abs() < 1e-12);
        assert_eq!(iou(&p.zeros_like(), &t.zeros_like()).unwrap(), 1.0);
        // Scores with ties, 3 positives. Realisable cuts: `>= 0.9` (tp 1, predicted 1: IoU 1/3),
        // `>= 0.7` (tp 2, predicted 3: 2/4), `>= 0.2` (tp 3, predicted 6: 3/6). The tie between
        // the last two goes to the first, the higher threshold.
        let scores = Tensor::from_slice(&[0.9f64, 0.7, 0.7, 0.2, 0.2, 0.2]).view([1, 2, 3]);
        let masks = Tensor::from_slice(&[true, true, false, true, false, false]).view([1, 2, 3]);
        let b = best_threshold_iou(&scores, &masks).unwrap();
        assert_eq!(b.threshold, 0.7);
        assert!((b.iou - 0.5).abs() < 1e-12);
        let pred = scores.ge(b.threshold);
        assert!((iou(&pred, &masks).unwrap() - b.iou).abs() < 1e-12);
    }

    #[test]
    fn saliency_iou_uses_heldout_threshold() {
        // 4 images of 4x4; the true mask is the left column; saliency = 0.8 on the mask, 0.1
        // elsewhere, plus a 0.5 distractor pixel.
        let mut s = vec![0.1f64; 64];
        let mut m = vec![false; 64];
        for n in 0..4 {
            for y in 0..4 {
                s[n * 16 + y * 4] = 0.8;
                m[n * 16 + y * 4] = true;
            }
            s[n * 16 + 5] = 0.5;
        }
        let scores = Tensor::from_slice(&s).view([4, 4, 4]);
        let masks = Tensor::from_slice(&m).view([4, 4, 4]);
        let r = saliency_iou(&scores, &masks, 2).unwrap();
        assert!(r.threshold > 0.5 && r.threshold <= 0.8, "{r:?}");
        assert_eq!(r.iou, 1.0);
        assert!(saliency_iou(&scores, &masks, 4).is_err());
        let map = saliency_map(&pattern(3, 4, 4, 0.0), &pattern(3, 4, 4, 0.0)).unwrap();
        assert_eq!(map.size(), [1, 4, 4]);
        assert_eq!(map.abs().sum(Kind::Double).double_value(&[]), 0.0);
    }

    #[test]
    fn counterfactual_metrics_on_a_pasted_square() {
        // True counterpart: a smooth pattern; input: the same with a white 4x4 square pasted.
        let cf = pattern(3, 16, 16, 0.0);
        let mask = Tensor::zeros([1, 16, 16], (Kind::Bool, Device::Cpu));
        let _ = mask.narrow(1, 2, 4).narrow(2, 3, 4).fill_(1);
        let x = cf.where_self(&mask.unsqueeze(1).logical_not(), &cf.ones_like());
        // A perfect model scores 100 dB and beats both baselines; the identity baseline is
        // exact outside the mask.
        let m = counterfactual_metrics(&x, &cf, &cf, &mask).unwrap();
        assert!((m.counterfactual_psnr_db - 100.0).abs() < 1e-9);
        assert!(m.counterfactual_gain_db > 50.0);
        assert!((m.counterfactual_ssim - 1.0).abs() < 1e-12);
        assert_eq!(m.identity_error_outside, 0.0);
        assert!(m.identity_error_inside > 0.1);
        assert!(m.identity_psnr_db > m.flat_psnr_db);
        // The "do nothing" model has zero gain by construction.
        let m0 = counterfactual_metrics(&x, &x, &cf, &mask).unwrap();
        assert!(m0.counterfactual_gain_db.abs() < 1e-12);
    }
}
