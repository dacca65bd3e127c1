//! Contrastive (InfoNCE) loss between two views of the same images.
//!
//! InfoNCE (van den Oord, Li & Vinyals 2018, arXiv:1807.03748) in the symmetric, cosine-similarity
//! form of SimCLR (Chen, Kornblith, Norouzi & Hinton 2020, arXiv:2002.05709) and CLIP: row `i` of
//! `a` and row `i` of `b` are a positive pair, every other row of the other view is a negative.
//! In contrastive analysis, SepCLR (Louiset, Duchesnay, Grigis, Dufumier & Gori, "Separating
//! common from salient patterns with contrastive representation learning", ICLR 2024) applies such a term to the salient space of target images, so that the
//! salient code keeps what tells target instances apart.

use tch::{Kind, Tensor};

/// Smallest `norm_floor` [`info_nce`] uses: an all-zero code gives a zero direction
/// (similarity 0 to everything) instead of NaN.
const NORM_EPS: f64 = 1e-8;

/// Symmetric InfoNCE with (floored) cosine similarity and temperature `tau`, per sample:
///
/// `l_i = ½ [ -ln softmax_j(sim(a_i, b_j) / τ)_i  -  ln softmax_j(sim(a_j, b_i) / τ)_i ]`,
/// `sim(u, v) = u·v / (max(|u|, r) · max(|v|, r))` with `r = norm_floor`.
///
/// Rows with norm `>= r` are compared by cosine (only directions count); shorter rows by their
/// dot product scaled by `1/r`. The floor bounds the gradient, which for a pure cosine grows as
/// `1 / |u|`: codes of a freshly initialised encoder are short, and the term would swamp every
/// other gradient through them (measured on the CA-diffusion synthetic preset, two seeds: with
/// the plain cosine the dataset head on `s` was still at ln 2 after 300 steps; with a floor of 1
/// it learned at the pace of runs without the term, `configs/TRIALS.md`). `norm_floor = 0` is
/// the plain cosine. Small `τ` sharpens the softmax.
///
/// # Shapes
/// * `a`, `b`: `[B, d]`, the same shape, `B >= 1`
/// * returns `[B]`
///
/// # Panics
/// If the shapes differ or are not 2-D, `tau <= 0` or `norm_floor < 0`.
pub fn info_nce(a: &Tensor, b: &Tensor, tau: f64, norm_floor: f64) -> Tensor {
    assert_eq!(a.dim(), 2, "info_nce: a must be [B, d], got {:?}", a.size());
    assert_eq!(
        a.size(),
        b.size(),
        "info_nce: shapes differ: {:?} vs {:?}",
        a.size(),
        b.size()
    );
    assert!(tau > 0.0, "info_nce: temperature must be > 0, got {tau}");
    assert!(
        norm_floor >= 0.0,
        "info_nce: norm floor must be >= 0, got {norm_floor}"
    );
    let floor = norm_floor.max(NORM_EPS);
    let unit = |x: &Tensor| {
        let x = x.to_kind(Kind::Float);
        let n = x
            .norm_scalaropt_dim(2, [1i64].as_slice(), true)
            .clamp_min(floor);
        x / n
    };
    let logits = unit(a).matmul(&unit(b).transpose(0, 1)) / tau;
    let diag = logits.diagonal(0, 0, 1);
    let rows = logits.logsumexp([1i64].as_slice(), false) - &diag;
    let cols = logits.logsumexp([0i64].as_slice(), false) - &diag;
    (rows + cols) * 0.5
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(v: &[f32], shape: [i64; 2]) -> Tensor {
        Tensor::from_slice(v).view(shape)
    }

    fn values(x: &Tensor) -> Vec<f64> {
        Vec::<f64>::try_from(x.to_kind(Kind::Double)).unwrap()
    }

    /// Two orthogonal unit rows matched with themselves, tau = 1: logits = identity, so each
    /// row's and column's loss is ln(e + 1) - 1 = ln(1 + 1/e) = 0.313262.
    #[test]
    fn orthogonal_pairs_by_hand() {
        let a = t(&[1.0, 0.0, 0.0, 1.0], [2, 2]);
        let l = values(&info_nce(&a, &a, 1.0, 0.0));
        let want = (1.0 + (-1.0f64).exp()).ln();
        for v in l {
            assert!((v - want).abs() < 1e-6, "{v} vs {want}");
        }
    }

    /// Asymmetric case by hand: a = [(1,0), (0,1)], b = [(1,0), (1,0)], tau = 0.5.
    /// Cosines: [[1, 1], [0, 0]] -> logits [[2, 2], [0, 0]].
    /// Row 0: lse(2, 2) - 2 = ln 2; row 1: lse(0, 0) - 0 = ln 2.
    /// Column 0: lse(2, 0) - 2 = ln(1 + e^-2); column 1: lse(2, 0) - 0 = ln(e^2 + 1).
    #[test]
    fn asymmetric_pairs_by_hand() {
        let a = t(&[1.0, 0.0, 0.0, 1.0], [2, 2]);
        let b = t(&[1.0, 0.0, 1.0, 0.0], [2, 2]);
        let l = values(&info_nce(&a, &b, 0.5, 0.0));
        let ln2 = 2f64.ln();
        let want0 = 0.5 * (ln2 + (1.0 + (-2f64).exp()).ln());
        let want1 = 0.5 * (ln2 + (2f64.exp() + 1.0).ln());
        assert!((l[0] - want0).abs() < 1e-6, "{} vs {want0}", l[0]);
        assert!((l[1] - want1).abs() < 1e-6, "{} vs {want1}", l[1]);
    }

    /// Only directions count; a zero row gives a finite loss (similarity 0), not NaN.
    #[test]
    fn scale_free_and_finite_on_zero_rows() {
        let a = t(&[1.0, 2.0, -1.0, 0.5, 0.0, 0.0], [3, 2]);
        let b = t(&[0.9, 2.1, -1.2, 0.4, 0.3, -0.2], [3, 2]);
        let l1 = values(&info_nce(&a, &b, 0.2, 0.0));
        let l2 = values(&info_nce(&(&a * 7.0), &(&b * 0.1), 0.2, 0.0));
        for (x, y) in l1.iter().zip(&l2) {
            assert!(x.is_finite());
            assert!((x - y).abs() < 1e-5, "{x} vs {y}");
        }
    }

    /// The floor: rows at least `r` long are compared by cosine (scale-free); shorter rows by
    /// dot product / r². By hand: a = [(0.5, 0), (0, 0.5)], b = a, r = 1, tau = 1: sim = 0.25 I,
    /// so each row loses ln(e^0.25 + 1) - 0.25 = ln(1 + e^-0.25) = 0.575939; scaled by 4 (norm 2
    /// >= r) it is the cosine case, ln(1 + e^-1). The gradient stays bounded for tiny codes.
    #[test]
    fn norm_floor_by_hand_and_bounded_gradient() {
        let a = t(&[0.5, 0.0, 0.0, 0.5], [2, 2]);
        let short = values(&info_nce(&a, &a, 1.0, 1.0));
        let long = values(&info_nce(&(&a * 4.0), &(&a * 4.0), 1.0, 1.0));
        let (ws, wl) = ((1.0 + (-0.25f64).exp()).ln(), (1.0 + (-1.0f64).exp()).ln());
        for (s, l) in short.iter().zip(&long) {
            assert!((s - ws).abs() < 1e-6, "{s} vs {ws}");
            assert!((l - wl).abs() < 1e-6, "{l} vs {wl}");
        }
        // Tiny codes: with the floor the gradient is at most ~1/(r·tau) per element; without it
        // it grows as 1/|u| (here |u| = 1e-3).
        let grad_norm = |floor: f64| {
            let x = (t(&[1.0, 0.3, -0.2, 1.0, 0.5, -1.0], [3, 2]) * 1e-3).set_requires_grad(true);
            let y = t(&[0.8, 0.1, -0.1, 0.9, 0.4, -0.7], [3, 2]) * 1e-3;
            info_nce(&x, &y, 0.2, floor).sum(Kind::Float).backward();
            x.grad().norm().double_value(&[])
        };
        let (with, without) = (grad_norm(1.0), grad_norm(0.0));
        assert!(with < 1e-2, "floored gradient {with}");
        assert!(without > 100.0, "plain cosine gradient {without}");
    }

    /// Gradient direction: one descent step on the loss raises the cosine of each positive pair
    /// and lowers the cosine between the two negatives (a sign error would do the opposite).
    #[test]
    fn descent_pulls_positives_together_and_pushes_negatives_apart() {
        let cos = |x: &Tensor, y: &Tensor| {
            (x * y).sum(Kind::Float).double_value(&[])
                / (x.norm().double_value(&[]) * y.norm().double_value(&[]))
        };
        let a = t(&[1.0, 0.2, 0.6, 0.8], [2, 2]).set_requires_grad(true);
        let b = t(&[0.3, 1.0, 1.0, -0.1], [2, 2]);
        let before_pos = cos(&a.get(0), &b.get(0));
        let before_neg = cos(&a.get(0), &b.get(1));
        info_nce(&a, &b, 0.5, 0.0).sum(Kind::Float).backward();
        let a2 = tch::no_grad(|| &a - a.grad() * 0.1);
        assert!(cos(&a2.get(0), &b.get(0)) > before_pos);
        assert!(cos(&a2.get(0), &b.get(1)) < before_neg);
    }
}
