//! Denoising losses of diffusion models, per sample.
//!
//! * [`eps_mse`] — the simple DDPM loss `||eps - eps_hat||^2` (Ho, Jain & Abbeel 2020,
//!   arXiv 2006.11239), averaged over the non-batch dimensions;
//! * [`v_mse`] — the same for the v-parametrisation `v = sqrt(a) eps - sqrt(1 - a) x0`
//!   (Salimans & Ho 2022, arXiv 2202.00512);
//! * [`l1_per_sample`] — mean absolute error (DiffAE's latent DDPM uses L1, Preechakul et al.
//!   2022, arXiv 2111.15640);
//! * [`min_snr_weight`] — Min-SNR-gamma loss weights (Hang et al. 2023, arXiv 2303.09556).
//!
//! Inputs of any rank `[B, ...]` (images `[B, C, H, W]` or codes `[B, d]`); outputs `[B]`, so
//! the trainer can mask and weight rows.

use tch::{Kind, Tensor};

fn check_same(pred: &Tensor, target: &Tensor) {
    assert_eq!(
        pred.size(),
        target.size(),
        "prediction {:?} and target {:?} must have the same shape",
        pred.size(),
        target.size()
    );
    assert!(pred.dim() >= 1, "inputs need a batch dimension");
}

fn per_sample_mean(x: &Tensor) -> Tensor {
    if x.dim() == 1 {
        return x.to_kind(Kind::Float);
    }
    x.flatten(1, -1)
        .mean_dim([1i64].as_slice(), false, Kind::Float)
}

/// Mean squared error per sample between predicted and true noise.
///
/// # Shapes
/// `pred`, `target`: `[B, ...]` (same shape); output `[B]` float32.
pub fn eps_mse(pred: &Tensor, target: &Tensor) -> Tensor {
    check_same(pred, target);
    per_sample_mean(&(pred - target).square())
}

/// Mean squared error per sample between predicted and true velocity `v`
/// (numerically the same as [`eps_mse`]; named for the parametrisation it trains).
///
/// # Shapes
/// `pred`, `target`: `[B, ...]` (same shape); output `[B]` float32.
pub fn v_mse(pred: &Tensor, target: &Tensor) -> Tensor {
    eps_mse(pred, target)
}

/// Mean absolute error per sample.
///
/// # Shapes
/// `pred`, `target`: `[B, ...]` (same shape); output `[B]` float32.
pub fn l1_per_sample(pred: &Tensor, target: &Tensor) -> Tensor {
    check_same(pred, target);
    per_sample_mean(&(pred - target).abs())
}

/// Min-SNR-gamma weights `min(snr, gamma) / snr` for eps-prediction and
/// `min(snr, gamma) / (snr + 1)` for v-prediction (`v_prediction = true`); multiply the per-sample
/// loss by them. Hang et al. recommend `gamma = 5`.
///
/// # Shapes
/// `snr`: `[B]` (signal-to-noise ratio `a_t / (1 - a_t)`, > 0); output `[B]`.
pub fn min_snr_weight(snr: &Tensor, gamma: f64, v_prediction: bool) -> Tensor {
    assert_eq!(snr.dim(), 1, "snr must be [B], got {:?}", snr.size());
    let clipped = snr.clamp_max(gamma);
    if v_prediction {
        clipped / (snr + 1.0)
    } else {
        clipped / snr
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t2(v: [f32; 4]) -> Tensor {
        Tensor::from_slice(&v).view([2, 2])
    }

    fn vals(t: &Tensor) -> Vec<f32> {
        Vec::try_from(t.flatten(0, -1)).unwrap()
    }

    #[test]
    fn eps_mse_on_hand_computed_values() {
        // Row 0: ((1-0)^2 + (2-0)^2) / 2 = 2.5; row 1: ((3-1)^2 + (4-4)^2) / 2 = 2.
        let l = eps_mse(&t2([1.0, 2.0, 3.0, 4.0]), &t2([0.0, 0.0, 1.0, 4.0]));
        assert_eq!(vals(&l), vec![2.5, 2.0]);
        assert_eq!(
            vals(&v_mse(&t2([1.0, 2.0, 3.0, 4.0]), &t2([0.0, 0.0, 1.0, 4.0]))),
            vec![2.5, 2.0]
        );
    }

    #[test]
    fn eps_mse_averages_image_dims() {
        // [2, 1, 2, 2]: row 0 all errors 1 -> 1; row 1 one error of 2 -> 4 / 4 = 1; and zeros.
        let pred =
            Tensor::from_slice(&[1.0f32, 1.0, 1.0, 1.0, 2.0, 0.0, 0.0, 0.0]).view([2, 1, 2, 2]);
        let l = eps_mse(&pred, &pred.zeros_like());
        assert_eq!(vals(&l), vec![1.0, 1.0]);
        assert_eq!(vals(&eps_mse(&pred, &pred)), vec![0.0, 0.0]);
    }

    #[test]
    fn l1_on_hand_computed_values() {
        // Row 0: (1 + 2) / 2 = 1.5; row 1: (2 + 0) / 2 = 1.
        let l = l1_per_sample(&t2([1.0, -2.0, 3.0, 4.0]), &t2([0.0, 0.0, 1.0, 4.0]));
        assert_eq!(vals(&l), vec![1.5, 1.0]);
    }

    #[test]
    fn min_snr_weights() {
        let snr = Tensor::from_slice(&[10.0f32, 1.0]);
        // eps: min(10, 5) / 10 = 0.5, min(1, 5) / 1 = 1. v: 5 / 11, 1 / 2.
        assert_eq!(vals(&min_snr_weight(&snr, 5.0, false)), vec![0.5, 1.0]);
        let v = vals(&min_snr_weight(&snr, 5.0, true));
        assert!((v[0] - 5.0 / 11.0).abs() < 1e-6 && (v[1] - 0.5).abs() < 1e-6);
    }
}
