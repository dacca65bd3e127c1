//! Info losses on codes, the salient-zero term, the dataset (class) loss and swap consistency.
//!
//! * Info loss (predict the latent code a fake was made from): Chen et al., "InfoGAN", NeurIPS
//!   2016, arXiv:1606.03657; used on both codes `z` and `s` by Double InfoGAN (Carton, Louiset,
//!   Gori, "Double InfoGAN for Contrastive Analysis", AISTATS 2024), with an L1 or Gaussian
//!   negative log-likelihood form.
//! * Salient-zero and the background-vs-target class loss: Double InfoGAN (the `s`-head of real
//!   background images is pushed to 0; a dataset head is trained with BCE).
//! * Swap consistency: this project's term (docs/design.md 4.1): fakes made from swapped codes must be
//!   judged in the right group and give back the codes they were made from.
//!
//! Convention: background images have `s = 0`; a "target" label is `1`, "background" `0`.

use tch::Tensor;

use crate::adversarial::logits_per_sample;
use crate::reconstruction::batch_mean;

/// `½·ln(2π)`, the constant of the Gaussian log-density per dimension.
const HALF_LN_2PI: f64 = 0.918_938_533_204_672_7;

fn assert_same_shape(x: &Tensor, y: &Tensor, what: &str) {
    assert_eq!(
        x.size(),
        y.size(),
        "{what}: shapes differ: {:?} vs {:?}",
        x.size(),
        y.size()
    );
}

/// L1 info loss: `mean_d |pred - target|` per sample.
///
/// # Shapes
/// * `pred`, `target`: `[B, d]` (any `[B, ..]`), the same shape
/// * returns `[B]`
pub fn info_l1(pred: &Tensor, target: &Tensor) -> Tensor {
    assert_same_shape(pred, target, "info_l1");
    batch_mean(&(pred - target).abs())
}

/// Gaussian negative log-likelihood of `target` under `N(pred_mean, exp(pred_logvar))`, averaged
/// over the code dimensions:
/// `mean_d ½·(ln 2π + logvar + (target - mean)² · exp(-logvar))`.
///
/// The `½·ln 2π` constant is included, so the value is a true NLL (it can be negative when the
/// predicted variance is small).
///
/// # Shapes
/// * `pred_mean`, `pred_logvar`, `target`: `[B, d]` (any `[B, ..]`), the same shape
/// * returns `[B]`
pub fn info_gaussian_nll(pred_mean: &Tensor, pred_logvar: &Tensor, target: &Tensor) -> Tensor {
    assert_same_shape(pred_mean, target, "info_gaussian_nll mean/target");
    assert_same_shape(pred_logvar, target, "info_gaussian_nll logvar/target");
    let sq = (target - pred_mean).square();
    let nll = (pred_logvar + sq * (-pred_logvar).exp()) * 0.5 + HALF_LN_2PI;
    batch_mean(&nll)
}

/// Salient-zero loss: `mean_d |s|` per sample, applied to the `s` predicted for real background
/// images (which have `s = 0` by convention).
///
/// The L1 form is chosen: it is the L1 info loss against the target `0` (the same form as
/// [`info_l1`], so the two terms share a scale), and its gradient does not vanish near 0, so the
/// background `s` is driven to (nearly) exactly zero rather than to "small".
///
/// # Shapes
/// * `pred_s`: `[B, ds]` (any `[B, ..]`)
/// * returns `[B]`
pub fn salient_zero(pred_s: &Tensor) -> Tensor {
    batch_mean(&pred_s.abs())
}

/// Binary cross-entropy with logits for the dataset (background-vs-target) head:
/// `y·softplus(-l) + (1 - y)·softplus(l)` with `y = 1` for target rows. Stable for any logit.
///
/// # Shapes
/// * `logits`: `[B]` or `[B, 1]`
/// * `is_target`: `[B]`, bool or 0/1 of any kind (soft labels in `[0, 1]` also work)
/// * returns `[B]`
pub fn class_bce(logits: &Tensor, is_target: &Tensor) -> Tensor {
    let l = logits_per_sample(logits, "class_bce logits");
    let y = is_target.to_kind(l.kind()).to_device(l.device());
    assert_eq!(
        y.size(),
        l.size(),
        "class_bce: is_target must be [B] = {:?}, got {:?}",
        l.size(),
        y.size()
    );
    &y * (-&l).softplus() + (-&y + 1.0) * l.softplus()
}

/// The three parts of [`swap_consistency`], each `[B]`, kept apart so the trainer can log them
/// (and weight them) separately.
#[derive(Debug)]
pub struct SwapConsistency {
    /// [`class_bce`] of the dataset logits against the expected group.
    pub class: Tensor,
    /// [`info_l1`] between the predicted and the used common code `z`.
    pub common: Tensor,
    /// [`info_l1`] between the predicted and the used salient code `s` (0 for background fakes).
    pub salient: Tensor,
}

impl SwapConsistency {
    /// `class + common + salient`, shape `[B]`.
    pub fn total(&self) -> Tensor {
        &self.class + &self.common + &self.salient
    }
}

/// Swap consistency: a fake made from swapped codes must be judged in the expected group and
/// give back both codes it was made from.
///
/// The trainer builds the swapped fakes and runs the discriminator on them; this function only
/// scores the outputs. Two uses (docs/design.md 4.1), possibly concatenated in one batch:
/// * `G(z_background, s_target)`: `z`, `s` are those codes, `expected_target = 1`;
/// * `G(z_target, 0)` (built with `CaCode::background`): `s` is the zero code,
///   `expected_target = 0`, so the `s`-head is also pushed to 0 as in [`salient_zero`].
///
/// Detach `z` and `s` if they come from the encoder and should act as fixed targets.
///
/// # Shapes
/// * `dataset_logits`: `[B]` or `[B, 1]`, the dataset head on the swapped fakes
/// * `pred_z`, `z`: `[B, dz]`, predicted and used common code
/// * `pred_s`, `s`: `[B, ds]`, predicted and used salient code
/// * `expected_target`: `[B]`, bool or 0/1
/// * returns a [`SwapConsistency`] of three `[B]` tensors
pub fn swap_consistency(
    dataset_logits: &Tensor,
    pred_z: &Tensor,
    pred_s: &Tensor,
    z: &Tensor,
    s: &Tensor,
    expected_target: &Tensor,
) -> SwapConsistency {
    SwapConsistency {
        class: class_bce(dataset_logits, expected_target),
        common: info_l1(pred_z, z),
        salient: info_l1(pred_s, s),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::f32::consts::LN_2;

    fn t(v: &[f32]) -> Tensor {
        Tensor::from_slice(v)
    }

    fn values(x: &Tensor) -> Vec<f32> {
        Vec::<f32>::try_from(&x.detach().reshape([-1])).unwrap()
    }

    fn assert_close(got: &[f32], want: &[f32], tol: f32) {
        assert_eq!(got.len(), want.len(), "got {got:?}, want {want:?}");
        for (g, w) in got.iter().zip(want) {
            assert!((g - w).abs() <= tol, "got {got:?}, want {want:?}");
        }
    }

    #[test]
    fn info_l1_known_values() {
        let pred = t(&[1.0, 2.0, 0.0, -1.0]).view([2, 2]);
        let target = t(&[0.0, 0.0, 0.5, 0.5]).view([2, 2]);
        // row 0: (|1| + |2|) / 2 = 1.5; row 1: (0.5 + 1.5) / 2 = 1
        assert_close(&values(&info_l1(&pred, &target)), &[1.5, 1.0], 1e-6);
    }

    #[test]
    fn info_gaussian_nll_known_values() {
        let ln4 = 4f32.ln();
        let mean = t(&[0.0, 0.0, 1.0, 1.0]).view([2, 2]);
        let logvar = t(&[0.0, ln4, 0.0, 0.0]).view([2, 2]);
        let target = t(&[1.0, 2.0, 1.0, 1.0]).view([2, 2]);
        // ½ln2π = 0.918939
        // row 0, dim 0: var 1, err 1: ½(ln2π + 0 + 1)        = 0.918939 + 0.5          = 1.418939
        // row 0, dim 1: var 4, err 2: ½(ln2π + ln4 + 4/4)     = 0.918939 + 0.693147 + 0.5 = 2.112086
        //   mean = 1.765512
        // row 1: var 1, err 0: ½ln2π = 0.918939 in both dims
        assert_close(
            &values(&info_gaussian_nll(&mean, &logvar, &target)),
            &[1.765512, 0.918939],
            1e-5,
        );
    }

    #[test]
    fn salient_zero_known_values() {
        let s = t(&[0.5, -1.5, 0.0, 0.0]).view([2, 2]);
        // row 0: (0.5 + 1.5) / 2 = 1; row 1: 0
        assert_close(&values(&salient_zero(&s)), &[1.0, 0.0], 0.0);
        // Its gradient pulls s towards 0: sign(s) / ds = (0.5, -0.5).
        let s = t(&[0.5, -1.5]).view([1, 2]).set_requires_grad(true);
        salient_zero(&s).sum(None).backward();
        assert_close(&values(&s.grad()), &[0.5, -0.5], 0.0);
    }

    #[test]
    fn class_bce_known_values_and_direction() {
        let logits = t(&[0.0, 2.0, 2.0, 0.0]);
        let is_target = Tensor::from_slice(&[true, true, false, false]);
        // (0, y=1): ln 2 = 0.693147; (2, y=1): ln(1 + e^-2) = 0.126928;
        // (2, y=0): ln(1 + e^2) = 2.126928; (0, y=0): ln 2
        assert_close(
            &values(&class_bce(&logits, &is_target)),
            &[LN_2, 0.126928, 2.126928, LN_2],
            1e-5,
        );
        // Gradient σ(l) - y: negative for target rows (logit pushed up), positive for background.
        let l = t(&[0.0, 0.0]).set_requires_grad(true);
        class_bce(&l, &t(&[1.0, 0.0])).sum(None).backward();
        assert_close(&values(&l.grad()), &[-0.5, 0.5], 1e-6);
        // Large logits stay finite: (1e4, y=0) → 1e4, (-1e4, y=1) → 1e4, (1e4, y=1) → 0.
        let big = class_bce(&t(&[1e4, -1e4, 1e4]), &t(&[0.0, 1.0, 1.0]));
        assert_close(&values(&big), &[1e4, 1e4, 0.0], 0.0);
    }

    #[test]
    fn swap_consistency_known_values() {
        // Row 0: G(z_bg, s_tgt), expected target; row 1: G(z_tgt, 0), expected background.
        let dataset_logits = t(&[0.0, 2.0]).view([2, 1]);
        let pred_z = t(&[1.0, 2.0, 1.0, 1.0]).view([2, 2]);
        let z = t(&[0.0, 0.0, 1.0, 1.0]).view([2, 2]);
        let pred_s = t(&[0.5, -0.25]).view([2, 1]);
        let s = t(&[1.0, 0.0]).view([2, 1]);
        let expected = t(&[1.0, 0.0]);
        let out = swap_consistency(&dataset_logits, &pred_z, &pred_s, &z, &s, &expected);
        // class:   row 0 ln 2 = 0.693147; row 1 ln(1 + e^2) = 2.126928
        // common:  row 0 (1 + 2) / 2 = 1.5; row 1 0
        // salient: row 0 |0.5 - 1| = 0.5;   row 1 |-0.25| = 0.25
        // total:   row 0 2.693147;          row 1 2.376928
        assert_close(&values(&out.class), &[LN_2, 2.126928], 1e-5);
        assert_close(&values(&out.common), &[1.5, 0.0], 1e-6);
        assert_close(&values(&out.salient), &[0.5, 0.25], 1e-6);
        assert_close(&values(&out.total()), &[2.693147, 2.376928], 1e-5);
    }
}
