//! Reconstruction of real images through the encoder and the generator.
//!
//! * Pixel reconstruction of real images `x ≈ G(D_z(x), D_s(x))` (with `s := 0` for background
//!   images): Double InfoGAN (Carton, Louiset, Gori, "Double InfoGAN for Contrastive Analysis",
//!   AISTATS 2024) uses the L1 form.
//! * Feature matching on discriminator features: Salimans et al., "Improved Techniques for
//!   Training GANs", NeurIPS 2016, arXiv:1606.03498; the multi-scale form (one L1 term per
//!   discriminator layer, averaged) follows Wang et al., "pix2pixHD", CVPR 2018,
//!   arXiv:1711.11585.
//!
//! PSNR is an evaluation metric and lives with the evaluation code, not here.

use tch::Tensor;

/// Mean over every dimension but the first: `[B, ..] -> [B]` (a `[B]` tensor is returned as is).
pub(crate) fn batch_mean(x: &Tensor) -> Tensor {
    let size = x.size();
    assert!(
        !size.is_empty(),
        "expected a batched tensor [B, ..], got a scalar"
    );
    if size.len() == 1 {
        return x.shallow_clone();
    }
    x.reshape([size[0], -1]).mean_dim(1, false, None)
}

fn assert_same_shape(x: &Tensor, y: &Tensor, what: &str) {
    assert_eq!(
        x.size(),
        y.size(),
        "{what}: shapes differ: {:?} vs {:?}",
        x.size(),
        y.size()
    );
}

/// Mean absolute error per sample: `mean_{c,h,w} |x - y|`.
///
/// # Shapes
/// * `x`, `y`: `[B, ..]` (e.g. `[B, C, H, W]`), the same shape
/// * returns `[B]`
pub fn pixel_l1(x: &Tensor, y: &Tensor) -> Tensor {
    assert_same_shape(x, y, "pixel_l1");
    batch_mean(&(x - y).abs())
}

/// Mean squared error per sample: `mean_{c,h,w} (x - y)²`.
///
/// # Shapes
/// * `x`, `y`: `[B, ..]` (e.g. `[B, C, H, W]`), the same shape
/// * returns `[B]`
pub fn pixel_mse(x: &Tensor, y: &Tensor) -> Tensor {
    assert_same_shape(x, y, "pixel_mse");
    batch_mean(&(x - y).square())
}

/// Multi-scale feature matching: the mean L1 distance between real and fake features at each
/// scale, averaged over the scales (each scale counts equally, whatever its size).
///
/// Gradients flow into both lists; detach `feats_real` when only the generator side should
/// move (the usual reconstruction setting).
///
/// # Shapes
/// * `feats_real`, `feats_fake`: the same number `L ≥ 1` of tensors, scale `l` of shape
///   `[B, C_l, H_l, W_l]` (any `[B, ..]`) in both lists
/// * returns `[B]`
pub fn feature_matching(feats_real: &[Tensor], feats_fake: &[Tensor]) -> Tensor {
    let weights = vec![1.0 / feats_real.len().max(1) as f64; feats_real.len()];
    feature_matching_weighted(feats_real, feats_fake, &weights)
}

/// Weighted multi-scale feature matching: `Σ_l weights[l] · mean |real_l - fake_l|` per sample.
/// [`feature_matching`] is this with `weights[l] = 1 / L`.
///
/// # Shapes
/// * `feats_real`, `feats_fake`: `L ≥ 1` tensors each, scale `l` of shape `[B, ..]` in both
/// * `weights`: `L` values
/// * returns `[B]`
pub fn feature_matching_weighted(
    feats_real: &[Tensor],
    feats_fake: &[Tensor],
    weights: &[f64],
) -> Tensor {
    assert!(
        !feats_real.is_empty(),
        "feature_matching: no feature scales given"
    );
    assert!(
        feats_real.len() == feats_fake.len() && feats_real.len() == weights.len(),
        "feature_matching: {} real scales, {} fake scales, {} weights",
        feats_real.len(),
        feats_fake.len(),
        weights.len()
    );
    feats_real
        .iter()
        .zip(feats_fake)
        .zip(weights)
        .map(|((r, f), &w)| {
            assert_same_shape(r, f, "feature_matching");
            batch_mean(&(r - f).abs()) * w
        })
        .reduce(|a, b| a + b)
        .expect("at least one scale")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn values(x: &Tensor) -> Vec<f32> {
        Vec::<f32>::try_from(&x.detach().reshape([-1])).unwrap()
    }

    fn assert_close(got: &[f32], want: &[f32], tol: f32) {
        assert_eq!(got.len(), want.len(), "got {got:?}, want {want:?}");
        for (g, w) in got.iter().zip(want) {
            assert!((g - w).abs() <= tol, "got {got:?}, want {want:?}");
        }
    }

    fn images() -> (Tensor, Tensor) {
        let x =
            Tensor::from_slice(&[1.0f32, -1.0, 0.5, 0.0, 0.0, 0.0, 0.0, 0.0]).view([2, 1, 2, 2]);
        let y =
            Tensor::from_slice(&[0.0f32, 1.0, 0.5, 1.0, 0.5, -0.5, 0.5, -0.5]).view([2, 1, 2, 2]);
        (x, y)
    }

    #[test]
    fn pixel_losses_known_values() {
        let (x, y) = images();
        // sample 0: |x - y| = (1, 2, 0, 1) → mean 1;   (x - y)² = (1, 4, 0, 1) → mean 1.5
        // sample 1: |x - y| = (0.5 ×4)     → mean 0.5; (x - y)² = (0.25 ×4)    → mean 0.25
        assert_close(&values(&pixel_l1(&x, &y)), &[1.0, 0.5], 1e-6);
        assert_close(&values(&pixel_mse(&x, &y)), &[1.5, 0.25], 1e-6);
        assert_close(&values(&pixel_l1(&x, &x)), &[0.0, 0.0], 0.0);
    }

    #[test]
    fn feature_matching_averages_scales() {
        let (x, y) = images();
        let real = [
            x,
            Tensor::from_slice(&[1.0f32, 2.0, 3.0, 4.0, 5.0, 6.0]).view([2, 3]),
        ];
        let fake = [
            y,
            Tensor::from_slice(&[1.0f32, 2.0, 6.0, 4.0, 5.0, 6.0]).view([2, 3]),
        ];
        // scale 0 (images above): (1, 0.5); scale 1: sample 0 |(0, 0, -3)| → 1, sample 1 → 0
        // mean over scales: ((1 + 1) / 2, (0.5 + 0) / 2) = (1, 0.25)
        assert_close(&values(&feature_matching(&real, &fake)), &[1.0, 0.25], 1e-6);
        // weights (2, 0.5): (2·1 + 0.5·1, 2·0.5 + 0.5·0) = (2.5, 1)
        let weighted = feature_matching_weighted(&real, &fake, &[2.0, 0.5]);
        assert_close(&values(&weighted), &[2.5, 1.0], 1e-6);
    }
}
