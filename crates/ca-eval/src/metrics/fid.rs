//! Distances between two sets of image features: Fréchet distance and kernel distance.
//!
//! * **Fréchet distance** (FID when the features are the standard Inception-v3 pool features;
//!   Heusel, Ramsauer, Unterthiner, Nessler, Hochreiter, "GANs trained by a two time-scale update
//!   rule converge to a local Nash equilibrium", NeurIPS 2017, arXiv 1706.08500):
//!   `||μ1 - μ2||² + tr(C1) + tr(C2) - 2 tr((C1 C2)^{1/2})` between Gaussians fitted to the two
//!   sets (unbiased covariances, as `numpy.cov`). The trace of the matrix square root is computed
//!   without SVD (unavailable on CPU in tch 0.24) as `Σ sqrt(eigvalsh(S1 C2 S1))` with
//!   `S1 = C1^{1/2}` from `eigh`, since `S1 C2 S1` is similar to `C1 C2`; all in `f64`, tiny
//!   negative eigenvalues from rounding clamped to 0.
//! * **KID** (Bińkowski, Sutherland, Arbel, Gretton, "Demystifying MMD GANs", ICLR 2018,
//!   arXiv 1801.01401): the unbiased MMD² with the cubic polynomial kernel
//!   `k(x, y) = (x·y / d + 1)³`, averaged over random subsets (mean and population std over
//!   subsets).
//!
//! Feature extraction is not here: callers pass `[N, D]` feature tensors. Results are only called
//! FID/KID when the features are Inception-v3's (docs/design.md section 6).

use rand::SeedableRng;
use rand::seq::index::sample;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};
use tch::{Kind, Tensor};

use super::{MetricsError, Result};

/// Mean and covariance of a feature set (cacheable for the real images).
#[derive(Debug)]
pub struct FeatureStats {
    /// Mean feature, `[D]`, `f64`.
    pub mean: Tensor,
    /// Unbiased covariance (`N - 1` denominator), `[D, D]`, `f64`.
    pub cov: Tensor,
    /// Number of feature vectors.
    pub count: i64,
}

impl FeatureStats {
    /// Statistics of `features: [N, D]` with `N >= 2`.
    pub fn from_features(features: &Tensor) -> Result<Self> {
        let f = check_features(features, "FeatureStats features", 2)?;
        let n = f.size()[0];
        let mean = f.mean_dim(0, false, Kind::Double);
        let c = &f - &mean;
        let cov = c.transpose(0, 1).matmul(&c) / (n - 1) as f64;
        Ok(Self {
            mean,
            cov,
            count: n,
        })
    }
}

/// Symmetric positive semi-definite square root of `c: [D, D]` through `eigh`, in `f64`
/// (negative eigenvalues from rounding are clamped to 0).
pub fn sqrtm_psd(c: &Tensor) -> Result<Tensor> {
    let c = c.to_kind(Kind::Double);
    let sym = (&c + c.transpose(0, 1)) * 0.5;
    let (vals, vecs) = sym.f_linalg_eigh("L")?;
    let root = vals.clamp_min(0.0).sqrt();
    Ok((&vecs * root.unsqueeze(0)).matmul(&vecs.transpose(0, 1)))
}

/// Fréchet distance between two Gaussians given by their statistics.
pub fn frechet_distance_from_stats(a: &FeatureStats, b: &FeatureStats) -> Result<f64> {
    let d = a.mean.size();
    if b.mean.size() != d || a.cov.size() != [d[0], d[0]] || b.cov.size() != [d[0], d[0]] {
        return Err(MetricsError::Shape {
            what: "frechet_distance second statistics",
            expected: format!("mean {d:?} and covariance [{0}, {0}]", d[0]),
            got: b.cov.size(),
        });
    }
    let device = a.mean.device();
    let mb = b.mean.to_device(device).to_kind(Kind::Double);
    let cb = b.cov.to_device(device).to_kind(Kind::Double);
    let ca = a.cov.to_kind(Kind::Double);
    let diff = (a.mean.to_kind(Kind::Double) - mb)
        .square()
        .sum(Kind::Double);
    let s1 = sqrtm_psd(&ca)?;
    let m = s1.matmul(&cb).matmul(&s1);
    let m = (&m + m.transpose(0, 1)) * 0.5;
    let tr_sqrt = m
        .f_linalg_eigvalsh("L")?
        .clamp_min(0.0)
        .sqrt()
        .sum(Kind::Double);
    let total = diff + ca.trace() + cb.trace() - tr_sqrt * 2.0;
    // Rounding can leave a tiny negative number for identical sets.
    Ok(total.double_value(&[]).max(0.0))
}

/// Fréchet distance between feature sets `a: [N1, D]` and `b: [N2, D]` (`N1, N2 >= 2`).
pub fn frechet_distance(a: &Tensor, b: &Tensor) -> Result<f64> {
    let sa = FeatureStats::from_features(a)?;
    let sb = FeatureStats::from_features(b)?;
    frechet_distance_from_stats(&sa, &sb)
}

/// KID estimate: mean and population standard deviation of the unbiased MMD² over subsets.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct KidResult {
    /// Mean unbiased MMD² over the subsets (can be slightly negative).
    pub mean: f64,
    /// Population standard deviation over the subsets.
    pub std: f64,
}

/// Unbiased MMD² between `x: [m, D]` and `y: [n, D]` (`m, n >= 2`) with the cubic polynomial
/// kernel `(x·y / D + 1)³`:
/// `Σ_{i≠j} k(x_i, x_j) / (m(m-1)) + Σ_{i≠j} k(y_i, y_j) / (n(n-1)) - 2 Σ_{i,j} k(x_i, y_j) / (mn)`.
pub fn mmd2_unbiased_polynomial(x: &Tensor, y: &Tensor) -> Result<f64> {
    let x = check_features(x, "mmd2 x", 2)?;
    let y = check_features(y, "mmd2 y", 2)?;
    let d = x.size()[1];
    if y.size()[1] != d {
        return Err(MetricsError::Shape {
            what: "mmd2 y",
            expected: format!("[n, {d}]"),
            got: y.size(),
        });
    }
    let y = y.to_device(x.device());
    let (m, n) = (x.size()[0] as f64, y.size()[0] as f64);
    let k = |a: &Tensor, b: &Tensor| {
        (a.matmul(&b.transpose(0, 1)) / d as f64 + 1.0).pow_tensor_scalar(3)
    };
    let kxx = k(&x, &x);
    let kyy = k(&y, &y);
    let kxy = k(&x, &y);
    let off = |t: &Tensor| (t.sum(Kind::Double) - t.trace()).double_value(&[]);
    let v = off(&kxx) / (m * (m - 1.0)) + off(&kyy) / (n * (n - 1.0))
        - 2.0 * kxy.sum(Kind::Double).double_value(&[]) / (m * n);
    Ok(v)
}

/// KID between feature sets `a: [N1, D]` and `b: [N2, D]`: `subsets` draws of
/// `min(subset_size, N1, N2)` rows from each set without replacement (ChaCha8 seeded with
/// `seed`), the unbiased polynomial MMD² of each, then mean and std. The usual setting is 100
/// subsets of 1000. Sets of at most 4096 rows have their kernel matrices computed once (2,000 x
/// 512 features, 100 subsets: about a second on 2 CPU cores).
pub fn kid(
    a: &Tensor,
    b: &Tensor,
    subsets: usize,
    subset_size: usize,
    seed: u64,
) -> Result<KidResult> {
    let a = check_features(a, "kid a", 2)?;
    let b = check_features(b, "kid b", 2)?.to_device(a.device());
    let (na, nb) = (a.size()[0] as usize, b.size()[0] as usize);
    let m = subset_size.min(na).min(nb);
    if subsets == 0 || m < 2 {
        return Err(MetricsError::InvalidArgument(format!(
            "kid: need subsets >= 1 and subset size >= 2, got {subsets} subsets of {m}"
        )));
    }
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let d = a.size()[1] as f64;
    let kernel =
        |x: &Tensor, y: &Tensor| (x.matmul(&y.transpose(0, 1)) / d + 1.0).pow_tensor_scalar(3);
    // Moderate sets: compute the three kernel matrices once and read each subset's blocks out of
    // them (same numbers as `mmd2_unbiased_polynomial` on the subsets, far fewer flops).
    let full = (na <= KID_FULL_KERNEL_MAX && nb <= KID_FULL_KERNEL_MAX)
        .then(|| (kernel(&a, &a), kernel(&b, &b), kernel(&a, &b)));
    let mf = m as f64;
    let dev = a.device();
    let mut draws = Vec::with_capacity(subsets);
    for _ in 0..subsets {
        let ia: Vec<i64> = sample(&mut rng, na, m)
            .into_iter()
            .map(|i| i as i64)
            .collect();
        let ib: Vec<i64> = sample(&mut rng, nb, m)
            .into_iter()
            .map(|i| i as i64)
            .collect();
        draws.push((ia, ib));
    }
    let vals = match &full {
        Some((kaa, kbb, kab)) => {
            // Subsets as 0/1 indicator rows w: a block sum is w K wᵀ, its diagonal w·diag(K).
            let indicator = |n: usize, second: bool| {
                let mut w = vec![0.0f64; subsets * n];
                for (s, (ia, ib)) in draws.iter().enumerate() {
                    let idx = if second { ib } else { ia };
                    idx.iter().for_each(|&i| w[s * n + i as usize] = 1.0);
                }
                Tensor::from_slice(&w)
                    .view([subsets as i64, n as i64])
                    .to_device(dev)
            };
            let wa = indicator(na, false);
            let wb = indicator(nb, true);
            let quad = |w1: &Tensor, k: &Tensor, w2: &Tensor| {
                (w1.matmul(k) * w2).sum_dim_intlist(1, false, Kind::Double)
            };
            let xx = quad(&wa, kaa, &wa) - wa.matmul(&kaa.diagonal(0, 0, 1));
            let yy = quad(&wb, kbb, &wb) - wb.matmul(&kbb.diagonal(0, 0, 1));
            let xy = quad(&wa, kab, &wb);
            let v = (xx + yy) / (mf * (mf - 1.0)) - xy * (2.0 / (mf * mf));
            super::to_vec_f64(&v)?
        }
        None => {
            let mut vals = Vec::with_capacity(subsets);
            for (ia, ib) in &draws {
                let ia = Tensor::from_slice(ia).to_device(dev);
                let ib = Tensor::from_slice(ib).to_device(dev);
                vals.push(mmd2_unbiased_polynomial(
                    &a.index_select(0, &ia),
                    &b.index_select(0, &ib),
                )?);
            }
            vals
        }
    };
    let mean = vals.iter().sum::<f64>() / vals.len() as f64;
    let var = vals.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / vals.len() as f64;
    Ok(KidResult {
        mean,
        std: var.sqrt(),
    })
}

/// Largest set size for which [`kid`] precomputes the full kernel matrices (`N²` `f64` each).
const KID_FULL_KERNEL_MAX: usize = 4096;

/// Checks `[N, D]` with `N >= min_rows` and converts to `f64`.
fn check_features(f: &Tensor, what: &'static str, min_rows: i64) -> Result<Tensor> {
    if f.dim() != 2 || f.size()[0] < min_rows || f.size()[1] == 0 {
        return Err(MetricsError::Shape {
            what,
            expected: format!("[N, D] with N >= {min_rows}, D >= 1"),
            got: f.size(),
        });
    }
    Ok(f.to_kind(Kind::Double))
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::Device;

    /// `2D` points `μ ± a_i e_i` whose mean is exactly `μ` and whose unbiased covariance is exactly
    /// `diag(c)`: with `N = 2D`, `cov_ii = 2 a_i² / (N - 1)`, so `a_i = sqrt(c_i (N - 1) / 2)`.
    fn exact_gaussian_points(mu: &[f64], c: &[f64]) -> Tensor {
        let d = mu.len();
        let n = 2 * d;
        let mut v = Vec::with_capacity(n * d);
        for (i, ci) in c.iter().enumerate() {
            for sign in [1.0, -1.0] {
                let a = (ci * (n as f64 - 1.0) / 2.0).sqrt();
                for (j, mj) in mu.iter().enumerate() {
                    v.push(mj + if i == j { sign * a } else { 0.0 });
                }
            }
        }
        Tensor::from_slice(&v).view([n as i64, d as i64])
    }

    /// Standard normal `[n, d]` from a seeded ChaCha8 stream (Box-Muller), independent of
    /// libtorch's global generator, which parallel tests share.
    fn gaussian(n: i64, d: i64, seed: u64) -> Tensor {
        use rand::RngExt;
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let v: Vec<f64> = (0..n * d)
            .map(|_| {
                let u1: f64 = 1.0 - rng.random::<f64>();
                let u2: f64 = rng.random();
                (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()
            })
            .collect();
        Tensor::from_slice(&v).view([n, d])
    }

    #[test]
    fn identical_sets_give_zero() {
        let f = gaussian(200, 16, 9);
        let fd = frechet_distance(&f, &f).unwrap();
        assert!(fd.abs() < 1e-8, "{fd}");
    }

    #[test]
    fn diagonal_gaussians_match_closed_form() {
        // ||μ1-μ2||² + Σ (c1 + c2 - 2 sqrt(c1 c2)) = (1 + 4 + 0) + (1+4-4) + (9+1-6) + (2+2-4)
        let (mu1, c1) = ([0.0, 1.0, 2.0], [1.0, 9.0, 2.0]);
        let (mu2, c2) = ([1.0, -1.0, 2.0], [4.0, 1.0, 2.0]);
        let expected = 5.0 + 1.0 + 4.0 + 0.0;
        let a = exact_gaussian_points(&mu1, &c1);
        let b = exact_gaussian_points(&mu2, &c2);
        let fd = frechet_distance(&a, &b).unwrap();
        assert!((fd - expected).abs() < 1e-9, "{fd} vs {expected}");
        let fd_f32 = frechet_distance(&a.to_kind(Kind::Float), &b.to_kind(Kind::Float)).unwrap();
        assert!((fd_f32 - expected).abs() < 1e-4);
    }

    #[test]
    fn non_commuting_covariances_match_hand_computation() {
        // C1 = [[2,1],[1,2]], C2 = diag(1,4): C1 C2 = [[2,4],[1,8]], trace 10, det 12, so its
        // eigenvalues are 5 ± √13 and tr (C1 C2)^{1/2} = sqrt(5+√13) + sqrt(5-√13).
        // FD (equal means) = tr C1 + tr C2 - 2 tr (C1 C2)^{1/2} = 4 + 5 - 2 (...).
        let s13 = 13f64.sqrt();
        let expected = 9.0 - 2.0 * ((5.0 + s13).sqrt() + (5.0 - s13).sqrt());
        let stats = |c: &[f64]| FeatureStats {
            mean: Tensor::zeros([2], (Kind::Double, Device::Cpu)),
            cov: Tensor::from_slice(c).view([2, 2]),
            count: 10,
        };
        let fd = frechet_distance_from_stats(
            &stats(&[2.0, 1.0, 1.0, 2.0]),
            &stats(&[1.0, 0.0, 0.0, 4.0]),
        )
        .unwrap();
        assert!((fd - expected).abs() < 1e-12, "{fd} vs {expected}");
        let r = sqrtm_psd(&Tensor::from_slice(&[2.0f64, 1.0, 1.0, 2.0]).view([2, 2])).unwrap();
        let back = r.matmul(&r);
        let want = Tensor::from_slice(&[2.0f64, 1.0, 1.0, 2.0]).view([2, 2]);
        assert!(back.allclose(&want, 1e-12, 1e-12, false));
    }

    #[test]
    fn mmd2_matches_explicit_sum() {
        // x = {[1,0],[0,1]}, y = {[1,1],[0,0]}, D = 2, k = (x·y/2 + 1)^3.
        // k(x1,x2) = 1; k(y1,y2) = 1; cross: k(x1,y1) = k(x2,y1) = 1.5³ = 3.375, k(·,y2) = 1.
        // MMD² = 2·1/2 + 2·1/2 - 2 (2·3.375 + 2·1)/4 = 2 - 4.375 = -2.375.
        let x = Tensor::from_slice(&[1.0f64, 0.0, 0.0, 1.0]).view([2, 2]);
        let y = Tensor::from_slice(&[1.0f64, 1.0, 0.0, 0.0]).view([2, 2]);
        let v = mmd2_unbiased_polynomial(&x, &y).unwrap();
        assert!((v + 2.375).abs() < 1e-12, "{v}");
    }

    #[test]
    fn kid_near_zero_for_same_distribution_and_positive_otherwise() {
        let a = gaussian(400, 8, 1);
        let b = gaussian(400, 8, 2);
        let c = gaussian(400, 8, 3) * 1.5 + 0.5;
        let same = kid(&a, &b, 20, 200, 0).unwrap();
        let diff = kid(&a, &c, 20, 200, 0).unwrap();
        assert!(same.mean.abs() < 0.05, "{same:?}");
        assert!(
            diff.mean > 10.0 * same.mean.abs().max(0.01),
            "{diff:?} vs {same:?}"
        );
        assert_eq!(same, kid(&a, &b, 20, 200, 0).unwrap());
        assert!(kid(&a, &b, 0, 200, 0).is_err());
        // A subset of every row is a permutation: the precomputed-kernel path must equal the
        // direct estimator (which is permutation invariant), with zero spread.
        let (a50, c50) = (a.narrow(0, 0, 50), c.narrow(0, 0, 50));
        let all = kid(&a50, &c50, 3, 1000, 1).unwrap();
        let direct = mmd2_unbiased_polynomial(&a50, &c50).unwrap();
        assert!(
            (all.mean - direct).abs() < 1e-9 * direct.abs().max(1.0),
            "{all:?} vs {direct}"
        );
        assert!(all.std < 1e-9);
        assert!(frechet_distance(&a.narrow(0, 0, 1), &b).is_err());
    }
}
