//! Noise schedules of the DDPM forward process and the conversions between parametrisations.
//!
//! `q(x_t | x0) = N(sqrt(a_t) x0, (1 - a_t) I)` with `a_t = alpha_bar(t) = prod_{i<=t} (1 - beta_i)`
//! (Ho, Jain & Abbeel 2020, "Denoising Diffusion Probabilistic Models", arXiv 2006.11239).
//! Linear betas (DDPM) and the cosine schedule of Nichol & Dhariwal 2021 ("Improved Denoising
//! Diffusion Probabilistic Models", arXiv 2102.09672), computed in `f64` (the ratio `t / T` in
//! floating point: other Rust ports divide integers and get all-zero betas). The
//! v-parametrisation `v = sqrt(a) eps - sqrt(1 - a) x0` is from Salimans & Ho 2022
//! (arXiv 2202.00512).
//!
//! [`NoiseSchedule`] is numbers only: it owns no network. Timesteps are per-sample `[B]` tensors
//! (int64, or float holding integral values); the broadcast works for images `[B, C, H, W]` and
//! for vectors `[B, d]` alike.

use super::{DiffusionError, ScheduleConfig};
use tch::{Device, Kind, Tensor};

/// Betas and cumulative alphas of a `T`-step forward process, on the host (`f64`) and on a device
/// (`f32` tensors of `sqrt(a_t)` and `sqrt(1 - a_t)` for batched indexing).
#[derive(Debug)]
pub struct NoiseSchedule {
    betas: Vec<f64>,
    alphas_cumprod: Vec<f64>,
    sqrt_ac: Tensor,
    sqrt_one_minus_ac: Tensor,
}

impl NoiseSchedule {
    /// The schedule described by `cfg`, with its device tensors on `device`.
    pub fn new(cfg: &ScheduleConfig, device: Device) -> Result<Self, DiffusionError> {
        cfg.validate("schedule")?;
        Ok(match *cfg {
            ScheduleConfig::Linear {
                timesteps,
                beta_start,
                beta_end,
            } => Self::linear(timesteps, beta_start, beta_end, device),
            ScheduleConfig::Cosine {
                timesteps,
                offset,
                max_beta,
            } => Self::cosine(timesteps, offset, max_beta, device),
        })
    }

    /// Linear betas from `beta_start` (t = 0) to `beta_end` (t = T - 1), `T >= 2`.
    pub fn linear(timesteps: i64, beta_start: f64, beta_end: f64, device: Device) -> Self {
        assert!(
            timesteps >= 2,
            "linear schedule needs T >= 2, got {timesteps}"
        );
        let n = timesteps as usize;
        let betas: Vec<f64> = (0..n)
            .map(|i| beta_start + (beta_end - beta_start) * i as f64 / (n - 1) as f64)
            .collect();
        Self::from_betas(betas, device)
    }

    /// Cosine schedule: `f(t) = cos^2(((t / T + s) / (1 + s)) pi / 2)`,
    /// `beta_t = min(1 - f(t + 1) / f(t), max_beta)` for `t = 0..T` (Nichol & Dhariwal 2021).
    pub fn cosine(timesteps: i64, offset: f64, max_beta: f64, device: Device) -> Self {
        assert!(
            timesteps >= 2,
            "cosine schedule needs T >= 2, got {timesteps}"
        );
        let n = timesteps as usize;
        let f = |t: usize| {
            let u = (t as f64 / n as f64 + offset) / (1.0 + offset);
            (u * std::f64::consts::FRAC_PI_2).cos().powi(2)
        };
        let betas = (0..n)
            .map(|t| (1.0 - f(t + 1) / f(t)).min(max_beta))
            .collect();
        Self::from_betas(betas, device)
    }

    /// A schedule from explicit betas, each in `(0, 1)`.
    pub fn from_betas(betas: Vec<f64>, device: Device) -> Self {
        assert!(
            betas.iter().all(|b| *b > 0.0 && *b < 1.0),
            "every beta must be in (0, 1)"
        );
        let mut acc = 1.0;
        let alphas_cumprod: Vec<f64> = betas
            .iter()
            .map(|b| {
                acc *= 1.0 - b;
                acc
            })
            .collect();
        let sa: Vec<f32> = alphas_cumprod.iter().map(|a| a.sqrt() as f32).collect();
        let s1a: Vec<f32> = alphas_cumprod
            .iter()
            .map(|a| (1.0 - a).sqrt() as f32)
            .collect();
        NoiseSchedule {
            betas,
            alphas_cumprod,
            sqrt_ac: Tensor::from_slice(&sa).to_device(device),
            sqrt_one_minus_ac: Tensor::from_slice(&s1a).to_device(device),
        }
    }

    /// The same schedule with its tensors on `device`.
    pub fn to_device(&self, device: Device) -> Self {
        NoiseSchedule {
            betas: self.betas.clone(),
            alphas_cumprod: self.alphas_cumprod.clone(),
            sqrt_ac: self.sqrt_ac.to_device(device),
            sqrt_one_minus_ac: self.sqrt_one_minus_ac.to_device(device),
        }
    }

    /// Number of training timesteps `T`.
    pub fn timesteps(&self) -> i64 {
        self.betas.len() as i64
    }

    /// The betas, `t = 0..T`.
    pub fn betas(&self) -> &[f64] {
        &self.betas
    }

    /// `alpha_bar(t)` for `t = 0..T`.
    pub fn alphas_cumprod(&self) -> &[f64] {
        &self.alphas_cumprod
    }

    /// `alpha_bar(t)` of one timestep (host value). Panics if `t` is not in `0..T`.
    pub fn alpha_bar(&self, t: i64) -> f64 {
        self.alphas_cumprod[usize::try_from(t).expect("timestep must be >= 0")]
    }

    /// Signal-to-noise ratio `a_t / (1 - a_t)` per sample, `[B]` float32.
    pub fn snr(&self, t: &Tensor) -> Tensor {
        let idx = self.index(t);
        let sa = self.sqrt_ac.to_device(t.device()).index_select(0, &idx);
        let s1 = self
            .sqrt_one_minus_ac
            .to_device(t.device())
            .index_select(0, &idx);
        (&sa * &sa) / (&s1 * &s1)
    }

    /// Uniform random training timesteps in `0..T`, `[batch]` int64 (torch's global RNG).
    pub fn random_timesteps(&self, batch: i64, device: Device) -> Tensor {
        Tensor::randint(self.timesteps(), [batch], (Kind::Int64, device))
    }

    fn index(&self, t: &Tensor) -> Tensor {
        assert_eq!(t.dim(), 1, "timesteps must be [B], got {:?}", t.size());
        let idx = if t.is_floating_point() {
            t.round()
        } else {
            t.shallow_clone()
        };
        idx.to_kind(Kind::Int64)
    }

    /// `(sqrt(a_t), sqrt(1 - a_t))` per sample, shaped `[B, 1, ...]` to broadcast against `like`,
    /// in `like`'s kind and device.
    pub fn coefficients(&self, t: &Tensor, like: &Tensor) -> (Tensor, Tensor) {
        let b = like.size()[0];
        assert_eq!(
            t.size(),
            vec![b],
            "timesteps must be [B = {b}], got {:?}",
            t.size()
        );
        let mut shape = vec![b];
        shape.extend(std::iter::repeat_n(1, like.dim() - 1));
        let idx = self.index(t).to_device(self.sqrt_ac.device());
        let pick = |table: &Tensor| {
            table
                .index_select(0, &idx)
                .to_device(like.device())
                .to_kind(like.kind())
                .view(shape.as_slice())
        };
        (pick(&self.sqrt_ac), pick(&self.sqrt_one_minus_ac))
    }

    /// Forward diffusion `x_t = sqrt(a_t) x0 + sqrt(1 - a_t) noise`, per-sample `t` of shape `[B]`.
    pub fn q_sample(&self, x0: &Tensor, t: &Tensor, noise: &Tensor) -> Tensor {
        let (sa, s1) = self.coefficients(t, x0);
        sa * x0 + s1 * noise
    }

    /// The v-prediction target `v = sqrt(a_t) noise - sqrt(1 - a_t) x0`.
    pub fn v_target(&self, x0: &Tensor, t: &Tensor, noise: &Tensor) -> Tensor {
        let (sa, s1) = self.coefficients(t, x0);
        sa * noise - s1 * x0
    }

    /// `x0 = (x_t - sqrt(1 - a_t) eps) / sqrt(a_t)`.
    pub fn x0_from_eps(&self, x_t: &Tensor, t: &Tensor, eps: &Tensor) -> Tensor {
        let (sa, s1) = self.coefficients(t, x_t);
        (x_t - s1 * eps) / sa
    }

    /// `eps = (x_t - sqrt(a_t) x0) / sqrt(1 - a_t)`.
    pub fn eps_from_x0(&self, x_t: &Tensor, t: &Tensor, x0: &Tensor) -> Tensor {
        let (sa, s1) = self.coefficients(t, x_t);
        (x_t - sa * x0) / s1
    }

    /// `x0 = sqrt(a_t) x_t - sqrt(1 - a_t) v`.
    pub fn x0_from_v(&self, x_t: &Tensor, t: &Tensor, v: &Tensor) -> Tensor {
        let (sa, s1) = self.coefficients(t, x_t);
        sa * x_t - s1 * v
    }

    /// `eps = sqrt(1 - a_t) x_t + sqrt(a_t) v`.
    pub fn eps_from_v(&self, x_t: &Tensor, t: &Tensor, v: &Tensor) -> Tensor {
        let (sa, s1) = self.coefficients(t, x_t);
        s1 * x_t + sa * v
    }

    /// `v = (sqrt(a_t) x_t - x0) / sqrt(1 - a_t)` (equivalently `sqrt(a) eps - sqrt(1 - a) x0`).
    pub fn v_from_eps(&self, x_t: &Tensor, t: &Tensor, eps: &Tensor) -> Tensor {
        let (sa, s1) = self.coefficients(t, x_t);
        let x0 = (x_t - &s1 * eps) / &sa;
        sa * eps - s1 * x0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn max_abs(a: &Tensor, b: &Tensor) -> f64 {
        (a - b).abs().max().double_value(&[])
    }

    #[test]
    fn linear_endpoints_and_alpha_bar() {
        let s = NoiseSchedule::linear(1000, 1e-4, 0.02, Device::Cpu);
        assert_eq!(s.timesteps(), 1000);
        assert!((s.betas()[0] - 1e-4).abs() < 1e-15);
        assert!((s.betas()[999] - 0.02).abs() < 1e-15);
        assert!((s.alpha_bar(0) - (1.0 - 1e-4)).abs() < 1e-15);
        // Known value of DDPM's schedule: alpha_bar(999) = prod (1 - beta_i) ≈ 4.036e-5.
        assert!(
            (s.alpha_bar(999) - 4.036e-5).abs() < 1e-7,
            "{}",
            s.alpha_bar(999)
        );
    }

    #[test]
    fn cosine_alpha_bar_is_monotone_without_spurious_zeros() {
        let s = NoiseSchedule::cosine(1000, 0.008, 0.999, Device::Cpu);
        let ab = s.alphas_cumprod();
        assert!((ab[0] - 1.0).abs() < 1e-4, "alpha_bar(0) = {}", ab[0]);
        assert!(
            ab.windows(2).all(|w| w[1] < w[0]),
            "alpha_bar must decrease strictly"
        );
        assert!(ab.iter().all(|a| *a > 0.0), "no alpha_bar may be 0");
        assert!(s.betas().iter().all(|b| *b > 0.0 && *b <= 0.999));
        // Closed form at t = 499 (after 500 steps): f(500) / f(0) with u = (0.5 + s) / (1 + s).
        let f = |t: f64| {
            (((t / 1000.0 + 0.008) / 1.008) * std::f64::consts::FRAC_PI_2)
                .cos()
                .powi(2)
        };
        assert!((ab[499] - f(500.0) / f(0.0)).abs() < 1e-12);
        assert!(ab[999] < 1e-6);
    }

    #[test]
    fn q_sample_at_t0_is_nearly_identity_and_uses_per_sample_t() {
        let s = NoiseSchedule::linear(1000, 1e-4, 0.02, Device::Cpu);
        tch::manual_seed(0);
        let x0 = Tensor::rand([2, 3, 4, 4], (Kind::Float, Device::Cpu)) * 2 - 1;
        let noise = Tensor::randn([2, 3, 4, 4], (Kind::Float, Device::Cpu));
        let t0 = Tensor::from_slice(&[0i64, 0]);
        assert!(max_abs(&s.q_sample(&x0, &t0, &noise), &x0) < 0.05);
        // Per-sample t: row 1 at t = 999 is nearly pure noise; float t works as well.
        let t = Tensor::from_slice(&[0.0f32, 999.0]);
        let xt = s.q_sample(&x0, &t, &noise);
        assert!(max_abs(&xt.get(0), &x0.get(0)) < 0.05);
        assert!(max_abs(&xt.get(1), &noise.get(1)) < 0.02);
    }

    #[test]
    fn eps_v_x0_round_trips() {
        let s = NoiseSchedule::cosine(1000, 0.008, 0.999, Device::Cpu);
        tch::manual_seed(1);
        let x0 = Tensor::rand([3, 5], (Kind::Float, Device::Cpu)) * 2 - 1;
        let eps = Tensor::randn([3, 5], (Kind::Float, Device::Cpu));
        let t = Tensor::from_slice(&[3i64, 400, 900]);
        let xt = s.q_sample(&x0, &t, &eps);
        let v = s.v_target(&x0, &t, &eps);
        assert!(max_abs(&s.eps_from_v(&xt, &t, &v), &eps) < 1e-5);
        assert!(max_abs(&s.x0_from_v(&xt, &t, &v), &x0) < 1e-5);
        assert!(max_abs(&s.v_from_eps(&xt, &t, &eps), &v) < 1e-4);
        assert!(max_abs(&s.x0_from_eps(&xt, &t, &eps), &x0) < 1e-4);
        assert!(max_abs(&s.eps_from_x0(&xt, &t, &x0), &eps) < 1e-4);
    }

    #[test]
    fn snr_matches_host_values() {
        let s = NoiseSchedule::linear(10, 0.1, 0.2, Device::Cpu);
        let snr = s.snr(&Tensor::from_slice(&[0i64, 9]));
        let want0 = s.alpha_bar(0) / (1.0 - s.alpha_bar(0));
        assert!((snr.double_value(&[0]) - want0).abs() / want0 < 1e-5);
        assert!((s.alpha_bar(0) - 0.9).abs() < 1e-12);
    }
}
