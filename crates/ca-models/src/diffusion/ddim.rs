//! DDIM sampling and deterministic DDIM inversion (Song, Meng & Ermon 2020, "Denoising Diffusion
//! Implicit Models", arXiv 2010.02502), as used for encoding `x_T` in DiffAE (Preechakul et al.
//! 2022, arXiv 2111.15640).
//!
//! Free functions over any [`Denoiser`]: the sampler never owns a network. The denoiser's output
//! is turned into `(eps, x0)` by a thin parametrisation wrapper ([`eps_and_x0`]), separate from
//! the architecture. The functions work for any tensor rank `[B, ...]`: images `[B, C, H, W]`
//! and code vectors `[B, d]` (the [latent prior](super::latent_prior)).
//!
//! With `n` steps the timesteps are `tau_0 < ... < tau_{n-1}`, evenly spaced over `0..T` with
//! `tau_{n-1} = T - 1`. Sampling steps from `tau_i` down to `tau_{i-1}` and finally to `x0`
//! (`alpha_bar = 1`):
//! `x_prev = sqrt(a_prev) x0 + sqrt(1 - a_prev - sigma^2) eps + sigma z`,
//! `sigma = eta sqrt((1 - a_prev) / (1 - a_t)) sqrt(1 - a_t / a_prev)`.
//! Inversion (`eta = 0`) runs the same levels upwards, evaluating the denoiser at the current
//! level (the clean image is evaluated at `tau_0`):
//! `x_next = sqrt(a_next) x0 + sqrt(1 - a_next) eps`.

use super::schedule::NoiseSchedule;
use super::{DiffusionError, Prediction};
use tch::{Device, Kind, Tensor};

/// A network usable by the samplers: its raw output at `(x_t, t)` given a condition `C`
/// (a [`CaCode`](crate::CaCode) for the UNet, a group flag for the latent prior).
pub trait Denoiser<C: ?Sized> {
    /// Model output in its own parametrisation, same shape as `x_t`; `t` is `[B]`. Inference
    /// mode (no dropout).
    fn predict(&self, x_t: &Tensor, t: &Tensor, cond: &C) -> Tensor;

    /// What [`Denoiser::predict`] returns.
    fn prediction(&self) -> Prediction;
}

/// The two conditions of a [`Guided`] denoiser.
#[derive(Debug, Clone, Copy)]
pub struct GuidedCond<'c, C: ?Sized> {
    /// The condition sampled under.
    pub toward: &'c C,
    /// The condition its output is pushed away from.
    pub away: &'c C,
}

/// A denoiser guided from one condition to another (classifier-free guidance with a second
/// condition in place of the unconditional one; Ho & Salimans 2022, arXiv 2207.12598): output
/// `(1 + w) f(x_t, t, toward) - w f(x_t, t, away)`, so what changing the condition changes is
/// changed `1 + w` times as much. `w = 0` is the denoiser under `toward` (one evaluation;
/// otherwise two). The combination is taken on the raw output: eps and v are both linear in it
/// for a given `x_t`, so either parametrisation guides the same way.
#[derive(Debug, Clone, Copy)]
pub struct Guided<'a, D: ?Sized> {
    /// The guided network.
    pub denoiser: &'a D,
    /// Guidance weight `w >= 0`.
    pub weight: f64,
}

impl<'c, C: ?Sized, D: Denoiser<C> + ?Sized> Denoiser<GuidedCond<'c, C>> for Guided<'_, D> {
    fn predict(&self, x_t: &Tensor, t: &Tensor, cond: &GuidedCond<'c, C>) -> Tensor {
        let toward = self.denoiser.predict(x_t, t, cond.toward);
        if self.weight == 0.0 {
            return toward;
        }
        let away = self.denoiser.predict(x_t, t, cond.away);
        toward * (1.0 + self.weight) - away * self.weight
    }

    fn prediction(&self) -> Prediction {
        self.denoiser.prediction()
    }
}

/// Source of standard normal noise for stochastic sampling (`eta > 0`).
pub trait NoiseSource {
    /// A tensor of independent `N(0, 1)` values of the given shape, kind and device.
    fn standard_normal(&mut self, shape: &[i64], options: (Kind, Device)) -> Tensor;
}

/// Noise from torch's global generator (seed it with `tch::manual_seed`).
#[derive(Debug, Clone, Copy, Default)]
pub struct TorchNoise;

impl NoiseSource for TorchNoise {
    fn standard_normal(&mut self, shape: &[i64], options: (Kind, Device)) -> Tensor {
        Tensor::randn(shape, options)
    }
}

impl<F: FnMut(&[i64], (Kind, Device)) -> Tensor> NoiseSource for F {
    fn standard_normal(&mut self, shape: &[i64], options: (Kind, Device)) -> Tensor {
        self(shape, options)
    }
}

/// Options of DDIM sampling.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct DdimOptions {
    /// Number of denoiser evaluations, `1..=T` (DiffAE: 20 for samples, ~250 for inversion).
    pub steps: usize,
    /// Stochasticity: 0 = deterministic DDIM, 1 = DDPM-like ancestral noise.
    pub eta: f64,
    /// Clamp the predicted `x0` to `[-c, c]` at each step (images: `Some(1.0)`; codes: `None`).
    pub clip_x0: Option<f64>,
}

impl DdimOptions {
    /// Deterministic DDIM with `steps` steps and no clipping (what inversion pairs with).
    pub fn deterministic(steps: usize) -> Self {
        DdimOptions {
            steps,
            eta: 0.0,
            clip_x0: None,
        }
    }
}

/// The `steps` timesteps used by DDIM: evenly spaced over `0..T`, ascending, first 0 and last
/// `T - 1` (for `steps = 1`: only `T - 1`).
pub fn ddim_timesteps(schedule: &NoiseSchedule, steps: usize) -> Result<Vec<i64>, DiffusionError> {
    let t = schedule.timesteps();
    if steps == 0 || steps as i64 > t {
        return Err(DiffusionError::Sampler {
            arg: "steps",
            reason: format!("{steps} is not in 1..={t}"),
        });
    }
    if steps == 1 {
        return Ok(vec![t - 1]);
    }
    let n = steps as i64;
    // round(i (T - 1) / (n - 1)) in integers; strictly increasing because n <= T.
    Ok((0..n)
        .map(|i| (2 * i * (t - 1) + (n - 1)) / (2 * (n - 1)))
        .collect())
}

/// Thin parametrisation wrapper: the denoiser's `(eps, x0)` predictions at `(x_t, t)`.
pub fn eps_and_x0<C: ?Sized, D: Denoiser<C> + ?Sized>(
    denoiser: &D,
    schedule: &NoiseSchedule,
    x_t: &Tensor,
    t: &Tensor,
    cond: &C,
) -> (Tensor, Tensor) {
    let out = denoiser.predict(x_t, t, cond);
    assert_eq!(
        out.size(),
        x_t.size(),
        "denoiser output shape differs from its input"
    );
    match denoiser.prediction() {
        Prediction::Eps => {
            let x0 = schedule.x0_from_eps(x_t, t, &out);
            (out, x0)
        }
        Prediction::V => (
            schedule.eps_from_v(x_t, t, &out),
            schedule.x0_from_v(x_t, t, &out),
        ),
    }
}

fn full_t(t: i64, like: &Tensor) -> Tensor {
    Tensor::full([like.size()[0]], t, (Kind::Int64, like.device()))
}

fn check_eta(opts: &DdimOptions) -> Result<(), DiffusionError> {
    if !(0.0..=1.0).contains(&opts.eta) {
        return Err(DiffusionError::Sampler {
            arg: "eta",
            reason: format!("{} is not in [0, 1]", opts.eta),
        });
    }
    Ok(())
}

/// One DDIM step from level `ts[i]` down to `ts[i - 1]` (to the clean image for `i = 0`).
#[allow(clippy::too_many_arguments)]
fn step_down<C: ?Sized, D: Denoiser<C> + ?Sized>(
    denoiser: &D,
    schedule: &NoiseSchedule,
    cond: &C,
    x: &Tensor,
    ts: &[i64],
    i: usize,
    opts: &DdimOptions,
    noise: &mut dyn NoiseSource,
) -> Tensor {
    let t = full_t(ts[i], x);
    let a_t = schedule.alpha_bar(ts[i]);
    let a_prev = if i > 0 {
        schedule.alpha_bar(ts[i - 1])
    } else {
        1.0
    };
    let (mut eps, mut x0) = eps_and_x0(denoiser, schedule, x, &t, cond);
    if let Some(c) = opts.clip_x0 {
        x0 = x0.clamp(-c, c);
        eps = schedule.eps_from_x0(x, &t, &x0);
    }
    let sigma =
        opts.eta * ((1.0 - a_prev) / (1.0 - a_t)).sqrt() * (1.0 - a_t / a_prev).max(0.0).sqrt();
    let dir = (1.0 - a_prev - sigma * sigma).max(0.0).sqrt();
    let mut x = x0 * a_prev.sqrt() + eps * dir;
    if sigma > 0.0 {
        x += noise.standard_normal(&x.size(), (x.kind(), x.device())) * sigma;
    }
    x
}

/// DDIM sampling from `x_t` (noise at `t = T - 1`, any shape `[B, ...]`) to `x0`, conditioned on
/// `cond`. Runs without gradients.
pub fn sample<C: ?Sized, D: Denoiser<C> + ?Sized>(
    denoiser: &D,
    schedule: &NoiseSchedule,
    cond: &C,
    x_t: &Tensor,
    opts: &DdimOptions,
    noise: &mut dyn NoiseSource,
) -> Result<Tensor, DiffusionError> {
    check_eta(opts)?;
    let ts = ddim_timesteps(schedule, opts.steps)?;
    let _guard = tch::no_grad_guard();
    let mut x = x_t.shallow_clone();
    for i in (0..ts.len()).rev() {
        x = step_down(denoiser, schedule, cond, &x, &ts, i, opts, noise);
    }
    Ok(x)
}

/// Deterministic DDIM inversion (`eta = 0`): the `x_T` (at `t = T - 1`) that [`sample`] with
/// [`DdimOptions::deterministic`]`(steps)` maps back to (approximately) `x0`. Runs without
/// gradients. Holds only the current level.
pub fn invert<C: ?Sized, D: Denoiser<C> + ?Sized>(
    denoiser: &D,
    schedule: &NoiseSchedule,
    x0: &Tensor,
    cond: &C,
    steps: usize,
) -> Result<Tensor, DiffusionError> {
    invert_levels(denoiser, schedule, x0, cond, steps, |_| {})
}

/// Deterministic DDIM inversion keeping every level: element `i` is the latent at level `tau_i`
/// (the last one is [`invert`]'s `x_T`); `steps` elements. What [`sample_inpaint`] holds the
/// unedited region to.
pub fn invert_path<C: ?Sized, D: Denoiser<C> + ?Sized>(
    denoiser: &D,
    schedule: &NoiseSchedule,
    x0: &Tensor,
    cond: &C,
    steps: usize,
) -> Result<Vec<Tensor>, DiffusionError> {
    let mut path = Vec::with_capacity(steps);
    // The returned x_T is the path's last element.
    let _ = invert_levels(denoiser, schedule, x0, cond, steps, |x| {
        path.push(x.shallow_clone())
    })?;
    Ok(path)
}

/// The inversion loop of [`invert`] and [`invert_path`]: `level` sees the latent of every level
/// `tau_0 ..= tau_{n-1}` in turn; the last is returned.
fn invert_levels<C: ?Sized, D: Denoiser<C> + ?Sized>(
    denoiser: &D,
    schedule: &NoiseSchedule,
    x0: &Tensor,
    cond: &C,
    steps: usize,
    mut level: impl FnMut(&Tensor),
) -> Result<Tensor, DiffusionError> {
    let ts = ddim_timesteps(schedule, steps)?;
    let _guard = tch::no_grad_guard();
    let mut x = x0.shallow_clone();
    for i in 0..ts.len() {
        // Evaluate at the current level: the clean input at tau_0, then tau_{i-1}.
        let t_cur = ts[i.saturating_sub(1)];
        let (eps, x0_pred) = eps_and_x0(denoiser, schedule, &x, &full_t(t_cur, &x), cond);
        let a_next = schedule.alpha_bar(ts[i]);
        x = x0_pred * a_next.sqrt() + eps * (1.0 - a_next).sqrt();
        level(&x);
    }
    Ok(x)
}

/// DDIM inpainting against a known trajectory: [`sample`] from `x_t`, where after every step
/// (and before the first) the latent is `m x + (1 - m) known`, `known` the latent of the same
/// level in `path` (from [`invert_path`] of `x0` with `opts.steps` steps) and `x0` itself after
/// the last step. So where `mask` is 0 the result is `x0` exactly, where it is 1 the region is
/// generated under `cond`, seeing the known surroundings at every level (RePaint, Lugmayr et al.
/// 2022, arXiv 2201.09865, without its resampling). `mask` broadcasts against the latents
/// (images: `[B, 1, H, W]` in `[0, 1]`; soft values blend). Runs without gradients.
#[allow(clippy::too_many_arguments)]
pub fn sample_inpaint<C: ?Sized, D: Denoiser<C> + ?Sized>(
    denoiser: &D,
    schedule: &NoiseSchedule,
    cond: &C,
    x_t: &Tensor,
    path: &[Tensor],
    x0: &Tensor,
    mask: &Tensor,
    opts: &DdimOptions,
    noise: &mut dyn NoiseSource,
) -> Result<Tensor, DiffusionError> {
    check_eta(opts)?;
    let ts = ddim_timesteps(schedule, opts.steps)?;
    if path.len() != ts.len() {
        return Err(DiffusionError::Sampler {
            arg: "path",
            reason: format!(
                "{} levels given for {} steps (invert with the same steps)",
                path.len(),
                ts.len()
            ),
        });
    }
    let _guard = tch::no_grad_guard();
    let keep = mask.ones_like() - mask;
    let blend = |x: &Tensor, known: &Tensor| x * mask + known * &keep;
    let mut x = blend(x_t, &path[ts.len() - 1]);
    for i in (0..ts.len()).rev() {
        x = step_down(denoiser, schedule, cond, &x, &ts, i, opts, noise);
        x = blend(&x, if i > 0 { &path[i - 1] } else { x0 });
    }
    Ok(x)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::diffusion::unet::CondUnet;
    use crate::diffusion::unet::tests::{perturb, tiny_config};
    use crate::{CaCode, ImageGeometry};
    use tch::nn;

    /// Knows the clean sample: returns the exact eps (or v) for `x0` at `(x_t, t)`.
    struct Oracle {
        x0: Tensor,
        schedule: NoiseSchedule,
        prediction: Prediction,
    }

    impl Denoiser<()> for Oracle {
        fn predict(&self, x_t: &Tensor, t: &Tensor, _: &()) -> Tensor {
            let (x_t, x0) = (x_t.to_kind(Kind::Double), self.x0.to_kind(Kind::Double));
            let eps = self.schedule.eps_from_x0(&x_t, t, &x0);
            let out = match self.prediction {
                Prediction::Eps => eps,
                Prediction::V => self.schedule.v_from_eps(&x_t, t, &eps),
            };
            out.to_kind(Kind::Float)
        }
        fn prediction(&self) -> Prediction {
            self.prediction
        }
    }

    fn max_abs(a: &Tensor, b: &Tensor) -> f64 {
        (a - b).abs().max().double_value(&[])
    }

    #[test]
    fn timesteps_are_even_and_cover_the_ends() {
        let s = NoiseSchedule::linear(1000, 1e-4, 0.02, Device::Cpu);
        let ts = ddim_timesteps(&s, 4).unwrap();
        assert_eq!(ts, vec![0, 333, 666, 999]);
        assert_eq!(
            ddim_timesteps(&s, 1000).unwrap(),
            (0..1000).collect::<Vec<_>>()
        );
        assert_eq!(ddim_timesteps(&s, 1).unwrap(), vec![999]);
        assert!(matches!(
            ddim_timesteps(&s, 1001),
            Err(DiffusionError::Sampler { arg: "steps", .. })
        ));
        assert!(matches!(
            ddim_timesteps(&s, 0),
            Err(DiffusionError::Sampler { .. })
        ));
    }

    #[test]
    fn oracle_sampling_returns_x0_for_images_and_vectors_eps_and_v() {
        tch::manual_seed(0);
        for prediction in [Prediction::Eps, Prediction::V] {
            for shape in [vec![2i64, 3, 4, 4], vec![5, 7]] {
                let schedule = NoiseSchedule::linear(1000, 1e-4, 0.02, Device::Cpu);
                let x0 = Tensor::rand(shape.as_slice(), (Kind::Float, Device::Cpu)) * 2 - 1;
                let oracle = Oracle {
                    x0: x0.copy(),
                    schedule: schedule.to_device(Device::Cpu),
                    prediction,
                };
                let xt = Tensor::randn(shape.as_slice(), (Kind::Float, Device::Cpu));
                for (steps, eta) in [(10, 0.0), (7, 1.0)] {
                    let opts = DdimOptions {
                        steps,
                        eta,
                        clip_x0: None,
                    };
                    let out = sample(&oracle, &schedule, &(), &xt, &opts, &mut TorchNoise).unwrap();
                    assert_eq!(out.size(), shape);
                    assert!(
                        max_abs(&out, &x0) < 1e-4,
                        "{prediction:?} {shape:?} {steps} {eta}"
                    );
                }
            }
        }
    }

    #[test]
    fn oracle_invert_then_sample_round_trips() {
        tch::manual_seed(1);
        for schedule in [
            NoiseSchedule::linear(1000, 1e-4, 0.02, Device::Cpu),
            NoiseSchedule::cosine(200, 0.008, 0.999, Device::Cpu),
        ] {
            let x0 = Tensor::rand([2, 1, 4, 4], (Kind::Float, Device::Cpu)) * 2 - 1;
            let oracle = Oracle {
                x0: x0.copy(),
                schedule: schedule.to_device(Device::Cpu),
                prediction: Prediction::Eps,
            };
            let xt = invert(&oracle, &schedule, &x0, &(), 20).unwrap();
            // x_T is noise-like, not the image.
            assert!(max_abs(&xt, &x0) > 0.1);
            let back = sample(
                &oracle,
                &schedule,
                &(),
                &xt,
                &DdimOptions::deterministic(20),
                &mut TorchNoise,
            )
            .unwrap();
            assert!(max_abs(&back, &x0) < 1e-4, "{}", max_abs(&back, &x0));
        }
    }

    /// Inpainting with an oracle that knows image `a`, holding the rest to the inversion path of
    /// image `b`: the oracle acts per pixel, so the masked pixels end exactly at `a`, the others
    /// are `b` itself; the path's last level is `invert`'s `x_T`; a path of the wrong length is
    /// refused.
    #[test]
    fn oracle_inpaint_takes_the_mask_from_the_model_and_the_rest_from_x0() {
        tch::manual_seed(3);
        let schedule = NoiseSchedule::linear(1000, 1e-4, 0.02, Device::Cpu);
        let a = Tensor::rand([2, 3, 4, 4], (Kind::Float, Device::Cpu)) * 2 - 1;
        let b = Tensor::rand([2, 3, 4, 4], (Kind::Float, Device::Cpu)) * 2 - 1;
        let knows = |x0: &Tensor| Oracle {
            x0: x0.copy(),
            schedule: schedule.to_device(Device::Cpu),
            prediction: Prediction::Eps,
        };
        let path = invert_path(&knows(&b), &schedule, &b, &(), 12).unwrap();
        assert_eq!(path.len(), 12);
        let xt = invert(&knows(&b), &schedule, &b, &(), 12).unwrap();
        assert!(max_abs(&path[11], &xt) < 1e-6);
        // Left half of every image is generated, right half kept.
        let mask = Tensor::cat(
            &[
                Tensor::ones([2, 1, 4, 2], (Kind::Float, Device::Cpu)),
                Tensor::zeros([2, 1, 4, 2], (Kind::Float, Device::Cpu)),
            ],
            3,
        );
        let noise = Tensor::randn([2, 3, 4, 4], (Kind::Float, Device::Cpu));
        let opts = DdimOptions::deterministic(12);
        let inpaint = |path: &[Tensor], mask: &Tensor| {
            let oracle = knows(&a);
            sample_inpaint(
                &oracle,
                &schedule,
                &(),
                &noise,
                path,
                &b,
                mask,
                &opts,
                &mut TorchNoise,
            )
        };
        let out = inpaint(&path, &mask).unwrap();
        let left = |t: &Tensor| t.narrow(3, 0, 2);
        let right = |t: &Tensor| t.narrow(3, 2, 2);
        let err = max_abs(&left(&out), &left(&a));
        assert!(err < 1e-4, "{err}");
        assert_eq!(max_abs(&right(&out), &right(&b)), 0.0);
        // All zeros: x0 itself; all ones: plain sampling from the given start.
        let kept = inpaint(&path, &mask.zeros_like()).unwrap();
        assert_eq!(max_abs(&kept, &b), 0.0);
        let free = inpaint(&path, &mask.ones_like()).unwrap();
        let plain = sample(&knows(&a), &schedule, &(), &noise, &opts, &mut TorchNoise).unwrap();
        assert!(max_abs(&free, &plain) < 1e-6);
        assert!(matches!(
            inpaint(&path[1..], &mask),
            Err(DiffusionError::Sampler { arg: "path", .. })
        ));
    }

    /// Output `cond * x_t`: lets the guided combination be checked by hand.
    struct Times;
    impl Denoiser<f64> for Times {
        fn predict(&self, x_t: &Tensor, _: &Tensor, cond: &f64) -> Tensor {
            x_t * *cond
        }
        fn prediction(&self) -> Prediction {
            Prediction::V
        }
    }

    #[test]
    fn guidance_combines_the_two_conditions_by_hand() {
        let x = Tensor::from_slice(&[1.0f32, -2.0]).view([1, 2]);
        let t = Tensor::from_slice(&[5i64]);
        let cond = GuidedCond {
            toward: &3.0,
            away: &1.0,
        };
        // (1 + 2) * 3x - 2 * 1x = 7x.
        let g = Guided {
            denoiser: &Times,
            weight: 2.0,
        };
        assert!(max_abs(&g.predict(&x, &t, &cond), &(&x * 7.0)) < 1e-6);
        assert_eq!(g.prediction(), Prediction::V);
        let plain = Guided {
            denoiser: &Times,
            weight: 0.0,
        };
        assert!(max_abs(&plain.predict(&x, &t, &cond), &(&x * 3.0)) < 1e-6);
    }

    #[test]
    fn eta_noise_comes_from_the_given_source() {
        let schedule = NoiseSchedule::linear(100, 1e-4, 0.02, Device::Cpu);
        let x0 = Tensor::zeros([1, 3], (Kind::Float, Device::Cpu));
        let oracle = Oracle {
            x0: x0.copy(),
            schedule: schedule.to_device(Device::Cpu),
            prediction: Prediction::Eps,
        };
        let mut calls = 0;
        let mut src = |shape: &[i64], o: (Kind, Device)| {
            calls += 1;
            Tensor::zeros(shape, o)
        };
        let opts = DdimOptions {
            steps: 5,
            eta: 1.0,
            clip_x0: None,
        };
        let xt = Tensor::ones([1, 3], (Kind::Float, Device::Cpu));
        let _ = sample(&oracle, &schedule, &(), &xt, &opts, &mut src).unwrap();
        // sigma > 0 on the 4 steps to a noisy level; the last (to x0) has sigma = 0.
        assert_eq!(calls, 4);
        let bad = DdimOptions { eta: 2.0, ..opts };
        assert!(matches!(
            sample(&oracle, &schedule, &(), &xt, &bad, &mut TorchNoise),
            Err(DiffusionError::Sampler { arg: "eta", .. })
        ));
    }

    #[test]
    fn unet_sampling_and_inversion_have_the_right_shapes() {
        tch::manual_seed(2);
        let cfg = tiny_config();
        let vs = nn::VarStore::new(Device::Cpu);
        let net = CondUnet::new(
            &vs.root(),
            &cfg,
            ImageGeometry {
                channels: 3,
                size: 8,
            },
        )
        .unwrap();
        perturb(&vs);
        let schedule = NoiseSchedule::new(&cfg.schedule, Device::Cpu).unwrap();
        let code = CaCode::background(
            Tensor::randn([2, cfg.dz], (Kind::Float, Device::Cpu)),
            cfg.ds,
        );
        let x0 = Tensor::rand([2, 3, 8, 8], (Kind::Float, Device::Cpu)) * 2 - 1;
        let xt = invert(&net, &schedule, &x0, &code, 5).unwrap();
        assert_eq!(xt.size(), vec![2, 3, 8, 8]);
        let opts = DdimOptions {
            steps: 5,
            eta: 0.5,
            clip_x0: Some(1.0),
        };
        let out = sample(&net, &schedule, &code, &xt, &opts, &mut TorchNoise).unwrap();
        assert_eq!(out.size(), vec![2, 3, 8, 8]);
        assert!(out.abs().max().double_value(&[]) <= 1.0 + 1e-6);
        assert!(!out.requires_grad());
    }
}
