//! Common-code invariance: the common codes `z` of background and target images must not reveal
//! the dataset.
//!
//! * Maximum mean discrepancy with an RBF kernel: Gretton et al., "A Kernel Two-Sample Test",
//!   JMLR 2012; used between the common codes of the two sets by MM-cVAE (Weinberger, Lin, Lee,
//!   "Moment Matching Deep Contrastive Latent Variable Models", AISTATS 2022, arXiv:2202.10560).
//! * Gradient reversal for an adversarial dataset classifier on `z`: Ganin & Lempitsky,
//!   "Unsupervised Domain Adaptation by Backpropagation", ICML 2015, arXiv:1409.7495.

use tch::Tensor;

use crate::adversarial::logits_per_sample;

/// Multi-bandwidth RBF kernel matrix `K[i, j] = Σ_σ exp(-‖a_i - b_j‖² / (2σ²))`, `[N, M]`.
fn rbf_kernel(a: &Tensor, b: &Tensor, bandwidths: &[f64]) -> Tensor {
    // Exact differences (not ‖a‖² + ‖b‖² - 2a·b): no negative distances from cancellation and a
    // well-defined gradient at zero distance. Codes are small ([B ≤ a few hundred, d ≤ 128]).
    let sq = (a.unsqueeze(1) - b.unsqueeze(0))
        .square()
        .sum_dim_intlist(-1, false, None);
    bandwidths
        .iter()
        .map(|&sigma| (&sq * (-0.5 / (sigma * sigma))).exp())
        .reduce(|x, y| x + y)
        .expect("at least one bandwidth")
}

fn check_mmd_inputs(x: &Tensor, y: &Tensor, bandwidths: &[f64]) {
    let (xs, ys) = (x.size(), y.size());
    assert!(
        xs.len() == 2 && ys.len() == 2 && xs[1] == ys[1],
        "mmd_rbf: expected x [N, d] and y [M, d], got {xs:?} and {ys:?}"
    );
    assert!(
        !bandwidths.is_empty() && bandwidths.iter().all(|&s| s > 0.0 && s.is_finite()),
        "mmd_rbf: bandwidths must be non-empty and positive, got {bandwidths:?}"
    );
}

/// Squared MMD between two sets of codes, **biased** (V-statistic) estimator:
/// `mean K(x, x) + mean K(y, y) - 2 mean K(x, y)`, all pairs including `i = j`, with the kernel
/// `k(a, b) = Σ_σ exp(-‖a - b‖² / (2σ²))` summed over `bandwidths`.
///
/// The biased estimator is chosen as the training loss: it is never negative, it is exactly 0
/// for identical sets, and it works with a single sample per set (the trainer may see few
/// background or target rows in a batch). [`mmd_rbf_unbiased`] is the unbiased alternative.
/// Not per-sample: MMD compares two distributions.
///
/// # Shapes
/// * `x`: `[N, d]`, `N ≥ 1` (e.g. common codes of background images)
/// * `y`: `[M, d]`, `M ≥ 1` (e.g. common codes of target images)
/// * `bandwidths`: the `σ` values, at least one, all positive
/// * returns a scalar (0-dim) tensor
pub fn mmd_rbf(x: &Tensor, y: &Tensor, bandwidths: &[f64]) -> Tensor {
    check_mmd_inputs(x, y, bandwidths);
    rbf_kernel(x, x, bandwidths).mean(None) + rbf_kernel(y, y, bandwidths).mean(None)
        - rbf_kernel(x, y, bandwidths).mean(None) * 2.0
}

/// [`mmd_rbf`] of the two sets divided by one common, **detached** scale: the standard
/// deviation of all entries of both sets together (plus `1e-6`).
///
/// Why: an encoder trained to make the raw MMD small can shrink its codes until every kernel
/// value is ~1 and the MMD ~0 without making the two sets alike — observed in this project
/// with both model families (GAN: common codes of std 0.02 and MMD 0.007 after 2,000 steps;
/// diffusion: 2e-5 after 600 steps) when the decoder reads the codes scale-free (the style
/// generator pixel-normalises `z`; a linear layer rescales it). Dividing by the detached pooled
/// scale makes the value invariant to a common rescaling, so only a change of the two
/// distributions' shapes lowers it.
///
/// # Shapes
/// * `x`: `[N, d]`, `y`: `[M, d]`, `N, M ≥ 1`, `N + M ≥ 2`
/// * returns a scalar (0-dim) tensor
pub fn mmd_rbf_scale_free(x: &Tensor, y: &Tensor, bandwidths: &[f64]) -> Tensor {
    check_mmd_inputs(x, y, bandwidths);
    let scale = Tensor::cat(&[x.detach(), y.detach()], 0).std(true) + 1e-6;
    mmd_rbf(&(x / &scale), &(y / &scale), bandwidths)
}

/// Squared MMD, **unbiased** (U-statistic) estimator: like [`mmd_rbf`] but the within-set means
/// leave out the `i = j` pairs, `Σ_{i≠j} K(x_i, x_j) / (N(N-1))`. Its expectation is 0 when both
/// sets come from the same distribution; single estimates can be negative.
///
/// # Shapes
/// * `x`: `[N, d]`, `N ≥ 2`
/// * `y`: `[M, d]`, `M ≥ 2`
/// * `bandwidths`: the `σ` values, at least one, all positive
/// * returns a scalar (0-dim) tensor
pub fn mmd_rbf_unbiased(x: &Tensor, y: &Tensor, bandwidths: &[f64]) -> Tensor {
    check_mmd_inputs(x, y, bandwidths);
    let (n, m) = (x.size()[0], y.size()[0]);
    assert!(
        n >= 2 && m >= 2,
        "mmd_rbf_unbiased: needs at least 2 rows per set, got {n} and {m}"
    );
    let off_diagonal_mean =
        |k: Tensor, n: i64| (k.sum(None) - k.diagonal(0, 0, 1).sum(None)) / ((n * (n - 1)) as f64);
    off_diagonal_mean(rbf_kernel(x, x, bandwidths), n)
        + off_diagonal_mean(rbf_kernel(y, y, bandwidths), m)
        - rbf_kernel(x, y, bandwidths).mean(None) * 2.0
}

/// Gradient reversal layer: the identity in the forward pass, `-lambda · grad` in the backward
/// pass.
///
/// Put it between the encoder's `z` and a dataset classifier: minimising the classifier's
/// [`class_bce`](crate::info::class_bce) then trains the classifier to find the dataset in `z`
/// and the encoder to hide it. Built without a custom autograd function as
/// `x.detach() + (x - x.detach()) · (-lambda)`: the second term is exactly 0 forward (so the
/// output equals `x` bit for bit, for finite `x`) and has derivative `-lambda`.
///
/// # Shapes
/// * `x`: any shape; returns the same shape
pub fn gradient_reversal(x: &Tensor, lambda: f64) -> Tensor {
    let fixed = x.detach();
    (x - &fixed) * (-lambda) + fixed
}

/// Standardise each column of `x [N, d]` by its batch mean and standard deviation, both
/// **detached**: `(x - mean) / max(std, floor)`, with `floor = 1e-2 · mean(std) + 1e-6`.
///
/// Why: a dataset classifier on `z` (see [`gradient_reversal`]) is a linear layer trained with
/// Adam; when the encoder's `z` columns differ in scale by orders of magnitude it cannot find the
/// direction that separates the sets (observed with CA-diffusion: its loss stayed at `ln 2` for
/// 3,000 steps while the held-out probe, which standardises its features, separated background
/// from target `z` at 100%). On standardised columns the adversary sees what the probe sees.
/// The statistics are detached, so the encoder's gradient is the classifier's scaled per column
/// by `1 / std`; the floor keeps a nearly constant column from amplifying it without bound.
///
/// # Shapes
/// * `x`: `[N, d]`, `N ≥ 2`; returns `[N, d]`
pub fn standardize_columns(x: &Tensor) -> Tensor {
    assert!(
        x.dim() == 2 && x.size()[0] >= 2,
        "standardize_columns: x must be [N >= 2, d], got {:?}",
        x.size()
    );
    let fixed = x.detach();
    let mean = fixed.mean_dim(0, true, tch::Kind::Float);
    let std = fixed.std_dim(0, true, true);
    let floor = std.mean(tch::Kind::Float) * 1e-2 + 1e-6;
    (x - mean) / std.clamp_min_tensor(&floor)
}

/// Mean squared cross-correlation between the columns of a reference code `a` and the columns
/// of a code `b` over the batch: `mean_{i,j} r_ij²` with
/// `r_ij = cov(a_i, b_j) / (sd(a_i) · max(sd(b_j), f))`, population statistics, `f = b_std_floor`.
///
/// With `f = 0` this is Pearson's correlation: 0 when no column of `b` is linearly related to a
/// column of `a`, 1 when every pair is perfectly (anti-)correlated, and invariant to the scale of
/// either code, so it cannot be lowered by shrinking a code. The floor on `b` bounds the gradient,
/// which for a pure correlation grows as `1 / sd(b_j)`: columns shorter than `f` count with their
/// covariance scaled by `1 / f`. Measured on the CA-diffusion synthetic preset (seed 0,
/// `configs/TRIALS.md`): with `f` ~0 the freshly initialised salient code, whose columns are short,
/// was held by the noise of this term and the dataset head on it stayed at ln 2 for 800 steps —
/// the same failure, and the same cure, as [`crate::contrastive::info_nce`]'s norm floor. A
/// constant column of `a` counts as uncorrelated.
///
/// In contrastive analysis: with `a` the (detached) common codes and `b` the salient codes of
/// target images it pushes `s` to carry nothing linearly readable from `z`. SepCLR (Louiset et
/// al., ICLR 2024) pairs its salient InfoNCE with a term that keeps common information out of the
/// salient space; this is a linear, decorrelation form of that idea (VICReg's covariance term,
/// Bardes, Ponce & LeCun, ICLR 2022, applied across two codes instead of within one).
///
/// With `N` rows, independent codes still give about `1 / N` (sampling noise), not 0.
///
/// # Shapes
/// * `a`: `[N, p]`, `b`: `[N, q]`, `N >= 2`
/// * returns a scalar (0-dim) tensor
///
/// # Panics
/// If the inputs are not 2-D with the same `N >= 2`, or `b_std_floor` is negative or not finite.
pub fn cross_correlation_sq(a: &Tensor, b: &Tensor, b_std_floor: f64) -> Tensor {
    let (sa, sb) = (a.size(), b.size());
    assert!(
        sa.len() == 2 && sb.len() == 2 && sa[0] == sb[0] && sa[0] >= 2,
        "cross_correlation_sq: expected a [N >= 2, p] and b [N, q], got {sa:?} and {sb:?}"
    );
    assert!(
        b_std_floor >= 0.0 && b_std_floor.is_finite(),
        "cross_correlation_sq: b_std_floor must be finite and >= 0, got {b_std_floor}"
    );
    let n = sa[0] as f64;
    let centre = |x: &Tensor| {
        let x = x.to_kind(tch::Kind::Float);
        let m = x.mean_dim(0, true, tch::Kind::Float);
        x - m
    };
    let (ca, cb) = (centre(a), centre(b));
    let sd = |c: &Tensor| (c.square().sum_dim_intlist(0, false, None) / n + 1e-12).sqrt();
    let cov = ca.transpose(0, 1).matmul(&cb) / n;
    let r = cov / sd(&ca).unsqueeze(1) / sd(&cb).clamp_min(b_std_floor).unsqueeze(0);
    r.square().mean(tch::Kind::Float)
}

/// Dataset-confusion loss for an encoder facing a dataset classifier on `z` (the alternative to
/// [`gradient_reversal`] with alternating updates): binary cross-entropy of the classifier's
/// logits against the label `½`, `½·softplus(l) + ½·softplus(-l)`, per sample.
///
/// Its minimum, `ln 2`, is reached at `l = 0`, where the classifier cannot tell background from
/// target; unlike maximising the classifier's own loss it does not reward flipping the labels.
///
/// # Shapes
/// * `logits`: `[B]` or `[B, 1]`
/// * returns `[B]`
pub fn dataset_confusion(logits: &Tensor) -> Tensor {
    let l = logits_per_sample(logits, "dataset_confusion logits");
    ((-&l).softplus() + l.softplus()) * 0.5
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

    fn scalar(x: &Tensor) -> f64 {
        f64::try_from(&x.detach()).unwrap()
    }

    #[test]
    fn mmd_one_dimensional_two_points() {
        let x = t(&[0.0, 1.0]).view([2, 1]);
        let y = t(&[0.0, 2.0]).view([2, 1]);
        // σ = 1, k(d) = exp(-d²/2):
        // mean Kxx = (1 + e^-½ + e^-½ + 1) / 4 = (1 + e^-½) / 2
        // mean Kyy = (1 + e^-2) / 2
        // mean Kxy = (k(0) + k(2) + k(1) + k(1)) / 4 = (1 + e^-2 + 2e^-½) / 4
        // biased MMD² = (1 + e^-½)/2 + (1 + e^-2)/2 - (1 + e^-2 + 2e^-½)/2 = (1 - e^-½)/2
        let want = (1.0 - (-0.5f64).exp()) / 2.0; // 0.196735
        let got = mmd_rbf(&x, &y, &[1.0]);
        assert_eq!(got.size(), Vec::<i64>::new());
        assert!((scalar(&got) - want).abs() < 1e-6, "{}", scalar(&got));
        // Two bandwidths (1, 2): the kernel is a sum, so MMD² adds; σ = 2 gives
        // k(d) = exp(-d²/8) and (1 - e^-⅛)/2.
        let want2 = want + (1.0 - (-0.125f64).exp()) / 2.0;
        let got2 = scalar(&mmd_rbf(&x, &y, &[1.0, 2.0]));
        assert!((got2 - want2).abs() < 1e-6, "{got2} vs {want2}");
        // Unbiased: within-set means over i ≠ j only: e^-½ + e^-2 - (1 + e^-2 + 2e^-½)/2
        //         = (e^-2 - 1) / 2 = -0.432332
        let want_u = ((-2.0f64).exp() - 1.0) / 2.0;
        let got_u = scalar(&mmd_rbf_unbiased(&x, &y, &[1.0]));
        assert!((got_u - want_u).abs() < 1e-6, "{got_u} vs {want_u}");
    }

    #[test]
    fn mmd_of_identical_sets_is_zero_and_grows_with_a_shift() {
        let x = t(&[0.1, -0.3, 0.7, 1.2, -0.5, 0.4]).view([3, 2]);
        let same = scalar(&mmd_rbf(&x, &x.copy(), &[0.5, 1.0, 2.0]));
        assert!(same.abs() < 1e-6, "{same}");
        let near = scalar(&mmd_rbf(&x, &(&x + 0.5), &[0.5, 1.0, 2.0]));
        let far = scalar(&mmd_rbf(&x, &(&x + 3.0), &[0.5, 1.0, 2.0]));
        assert!(0.0 < near && near < far, "near {near}, far {far}");
        // The gradient is finite at zero distance (identical rows).
        let z = x.copy().set_requires_grad(true);
        mmd_rbf(&z, &x, &[1.0]).backward();
        assert!(values(&z.grad()).iter().all(|g| g.is_finite()));
    }

    #[test]
    fn standardize_columns_known_values_and_detached_gradient() {
        // Columns [0, 2] and [1, 5]: means 1 and 3, sample stds sqrt(2) and sqrt(8); both
        // become [-1/sqrt(2), 1/sqrt(2)].
        let x = Tensor::from_slice(&[0.0f32, 1.0, 2.0, 5.0])
            .reshape([2, 2])
            .set_requires_grad(true);
        let y = standardize_columns(&x);
        let h = std::f32::consts::FRAC_1_SQRT_2;
        let got: Vec<f32> = Vec::try_from(y.flatten(0, -1)).unwrap();
        for (a, w) in got.iter().zip([-h, -h, h, h]) {
            assert!((a - w).abs() < 1e-6, "{got:?}");
        }
        // Statistics detached: d(sum(y * w))/dx = w / std per column.
        let w = Tensor::from_slice(&[1.0f32, 1.0, 3.0, 1.0]).reshape([2, 2]);
        (&y * &w).sum(tch::Kind::Float).backward();
        let g: Vec<f32> = Vec::try_from(x.grad().flatten(0, -1)).unwrap();
        let (s0, s1) = (2f32.sqrt(), 8f32.sqrt());
        for (a, w) in g.iter().zip([1.0 / s0, 1.0 / s1, 3.0 / s0, 1.0 / s1]) {
            assert!((a - w).abs() < 1e-6, "{g:?}");
        }
    }

    #[test]
    fn standardize_columns_floors_a_constant_column() {
        // Column 1 is constant: its std 0 is replaced by the floor 1e-2 * mean(std) + 1e-6,
        // so it maps to 0 with a bounded gradient.
        let x = Tensor::from_slice(&[0.0f32, 7.0, 4.0, 7.0])
            .reshape([2, 2])
            .set_requires_grad(true);
        let y = standardize_columns(&x);
        let got: Vec<f32> = Vec::try_from(y.flatten(0, -1)).unwrap();
        assert_eq!((got[1], got[3]), (0.0, 0.0));
        y.sum(tch::Kind::Float).backward();
        let g: Vec<f32> = Vec::try_from(x.grad().flatten(0, -1)).unwrap();
        let floor = 1e-2 * (8f32.sqrt() / 2.0) + 1e-6;
        assert!((g[1] - 1.0 / floor).abs() < 1e-2 * (1.0 / floor), "{g:?}");
    }

    #[test]
    fn scale_free_mmd_ignores_a_common_rescaling_but_not_a_shift() {
        let x = Tensor::from_slice(&[0.0f32, 1.0, 2.0, 0.5]).reshape([2, 2]);
        let y = Tensor::from_slice(&[1.0f32, 1.0, 3.0, 0.0]).reshape([2, 2]);
        let bw = [0.5, 1.0, 2.0];
        let a = scalar(&mmd_rbf_scale_free(&x, &y, &bw));
        // The same sets shrunk 100x: the raw MMD collapses, the scale-free one does not move.
        let (xs, ys) = (&x * 0.01, &y * 0.01);
        assert!(scalar(&mmd_rbf(&xs, &ys, &bw)) < 1e-3 * scalar(&mmd_rbf(&x, &y, &bw)));
        assert!((scalar(&mmd_rbf_scale_free(&xs, &ys, &bw)) - a).abs() < 1e-3 * a);
        // Equal to the raw MMD of the sets divided by the pooled std (by hand: entries
        // 0,1,2,0.5,1,1,3,0 have mean 1.0625 and sample std 1.0155...).
        let std = {
            let v = [0.0f64, 1.0, 2.0, 0.5, 1.0, 1.0, 3.0, 0.0];
            let m = v.iter().sum::<f64>() / 8.0;
            (v.iter().map(|e| (e - m).powi(2)).sum::<f64>() / 7.0).sqrt()
        };
        let manual = scalar(&mmd_rbf(&(&x / std), &(&y / std), &bw));
        assert!((a - manual).abs() < 1e-5, "{a} vs {manual}");
        assert!(a > 0.05);
        // Identical sets: 0.
        assert!(scalar(&mmd_rbf_scale_free(&x, &x, &bw)).abs() < 1e-6);
        // The gradient flows to the codes (the scale is detached, the codes are not).
        let xg = x.set_requires_grad(true);
        mmd_rbf_scale_free(&xg, &y, &bw).backward();
        assert!(scalar(&xg.grad().abs().sum(tch::Kind::Float)) > 0.0);
    }

    #[test]
    fn gradient_reversal_is_identity_forward_and_flips_gradient() {
        let x = t(&[0.3, -1.7, 2.5]).set_requires_grad(true);
        let y = gradient_reversal(&x, 0.5);
        assert!(
            y.detach().equal(&x.detach()),
            "forward must be the identity"
        );
        // loss = Σ c·y with c = (1, 2, 3): without reversal ∂loss/∂x = c;
        // with it, -0.5·c = (-0.5, -1, -1.5).
        (&y * t(&[1.0, 2.0, 3.0])).sum(None).backward();
        assert_eq!(values(&x.grad()), vec![-0.5, -1.0, -1.5]);
        // The reversed gradient reaches the encoder while the head after it trains normally:
        // loss = w·GRL(x), x = 2, w = 3: ∂/∂w = x = 2, ∂/∂x = -λ·w = -1·3 = -3.
        let x = t(&[2.0]).set_requires_grad(true);
        let w = t(&[3.0]).set_requires_grad(true);
        (&w * gradient_reversal(&x, 1.0)).sum(None).backward();
        assert_eq!(values(&w.grad()), vec![2.0]);
        assert_eq!(values(&x.grad()), vec![-3.0]);
    }

    #[test]
    fn dataset_confusion_known_values() {
        // l = 0: ½(ln 2 + ln 2) = ln 2 = 0.693147
        // l = 2: ½(ln(1 + e^-2) + ln(1 + e^2)) = ½(0.126928 + 2.126928) = 1.126928
        let got = values(&dataset_confusion(&t(&[0.0, 2.0, -2.0])));
        let want = [LN_2, 1.126928, 1.126928];
        for (g, w) in got.iter().zip(want) {
            assert!((g - w).abs() < 1e-5, "{got:?}");
        }
        // Gradient σ(l) - ½: pulls a confident logit back towards 0.
        let l = t(&[2.0, -2.0]).set_requires_grad(true);
        dataset_confusion(&l).sum(None).backward();
        let g = values(&l.grad());
        assert!(g[0] > 0.0 && g[1] < 0.0, "{g:?}");
    }
    #[test]
    fn cross_correlation_sq_by_hand() {
        // a = [0, 1, 2] (centred [-1, 0, 1], population variance 2/3).
        let a = t(&[0.0, 1.0, 2.0]).view([3, 1]);
        // b's first column is a + 1 (r = 1); its second, [0, 1, 0] (centred [-1/3, 2/3, -1/3]),
        // has covariance (1/3 + 0 - 1/3) / 3 = 0 with a (r = 0): mean r² = (1 + 0) / 2.
        let b = t(&[1.0, 0.0, 2.0, 1.0, 3.0, 0.0]).view([3, 2]);
        let got = scalar(&cross_correlation_sq(&a, &b, 0.0));
        assert!((got - 0.5).abs() < 1e-6, "{got}");
        // [2, 0, 1] (centred [1, -1, 0], variance 2/3): cov = (-1 + 0 + 0) / 3 = -1/3,
        // r = (-1/3) / (2/3) = -1/2, r² = 1/4.
        let c = t(&[2.0, 0.0, 1.0]).view([3, 1]);
        let got = scalar(&cross_correlation_sq(&a, &c, 0.0));
        assert!((got - 0.25).abs() < 1e-6, "{got}");
        // Without a floor the scale of either code does not matter.
        let scaled = scalar(&cross_correlation_sq(&(&a * 7.0), &(&c * 0.01), 0.0));
        assert!((scaled - 0.25).abs() < 1e-5, "{scaled}");
        // b's sd sqrt(2/3) = 0.816 under a floor of 1: r = (-1/3) / (sqrt(2/3) · 1), r² = 1/6;
        // a floor below the sd changes nothing; a's scale still does not matter.
        let floored = scalar(&cross_correlation_sq(&a, &c, 1.0));
        assert!((floored - 1.0 / 6.0).abs() < 1e-6, "{floored}");
        let under = scalar(&cross_correlation_sq(&(&a * 0.001), &c, 0.5));
        assert!((under - 0.25).abs() < 1e-5, "{under}");
    }

    #[test]
    fn cross_correlation_sq_descent_decorrelates_b_only() {
        // A gradient step on b (a detached) lowers the penalty; a is left untouched.
        let a = t(&[0.0, 1.0, 2.0, 3.0, 0.5, -1.0, 0.2, 0.9]).view([4, 2]);
        let b = t(&[0.1, 1.1, 1.9, 3.2])
            .view([4, 1])
            .set_requires_grad(true);
        let before = cross_correlation_sq(&a, &b, 0.0);
        before.backward();
        let g = b.grad();
        assert!(values(&g).iter().all(|v| v.is_finite()));
        let stepped = (&b.detach() - &g * 0.5).detach();
        let after = scalar(&cross_correlation_sq(&a, &stepped, 0.0));
        assert!(
            after < scalar(&before) - 1e-3,
            "{} -> {after}",
            scalar(&before)
        );
        // A constant column of b (zero variance) gives r = 0 and, with a floor, a finite gradient.
        let flat =
            Tensor::ones([4, 1], (tch::Kind::Float, tch::Device::Cpu)).set_requires_grad(true);
        let p = cross_correlation_sq(&a, &flat, 1.0);
        assert!(scalar(&p).abs() < 1e-9, "{}", scalar(&p));
        p.backward();
        assert!(values(&flat.grad()).iter().all(|v| v.is_finite()));
    }
}
