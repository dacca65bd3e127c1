//! A prior over CA codes for `ca generate`: a small MLP diffusion model over normalised `[z, s]`.
//!
//! After DiffAE's latent DDPM (Preechakul et al. 2022, arXiv 2111.15640: a 10-layer, 2048-wide
//! MLP with skip connections from the input, trained on normalised semantic codes), much
//! smaller here ([`LatentPriorConfig`]: 4 x 256 by default). Each hidden layer is
//! `Linear([h, x]) -> LayerNorm -> h (1 + scale) + shift -> SiLU -> dropout`, where
//! `(scale, shift)` come from the sum of a sinusoidal time embedding MLP and a learned embedding
//! of the group (background / target). Sampling uses the same DDIM functions as images
//! ([`super::ddim`]), on `[B, dz + ds]` vectors.
//!
//! **Background vs target codes.** One network serves both groups, conditioned on a group flag
//! (`0` = background, `1` = target):
//! * training rows are `[z, s]` normalised with statistics from [`LatentPrior::set_statistics`]
//!   (`z` statistics over all rows, `s` statistics over target rows only); in background rows
//!   the normalised `s` part is replaced by 0 ([`LatentPrior::training_pair`]), so for them the
//!   network just learns a constant `s` part;
//! * sampling [`CodeGroup::Target`] returns the sampled `[z, s]`; sampling
//!   [`CodeGroup::Background`] samples with flag 0, keeps `z` and rebuilds the code with
//!   [`CaCode::background`] (`s := 0` exactly, whatever the network produced for `s`).
//!
//! The normalisation statistics are non-trainable variables of the `VarStore` (`mean`, `std`),
//! so they are saved and loaded with the weights.

use super::config::LatentPriorConfig;
use super::ddim::{self, DdimOptions, Denoiser, NoiseSource};
use super::schedule::NoiseSchedule;
use super::unet::{linear, timestep_embedding};
use super::{DiffusionError, Prediction};
use crate::CaCode;
use tch::nn::{self, Module};
use tch::{Device, Kind, Tensor};

/// Which kind of code to draw.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CodeGroup {
    /// Background codes: `z` sampled, `s = 0`.
    Background,
    /// Target codes: `[z, s]` sampled jointly.
    Target,
}

impl CodeGroup {
    fn flag(self) -> i64 {
        match self {
            CodeGroup::Background => 0,
            CodeGroup::Target => 1,
        }
    }
}

#[derive(Debug)]
struct Layer {
    fc: nn::Linear,
    norm: nn::LayerNorm,
    modulation: nn::Linear,
}

/// The MLP denoiser over normalised codes, with its normalisation statistics.
#[derive(Debug)]
pub struct LatentPrior {
    dz: i64,
    ds: i64,
    width: i64,
    time_dim: i64,
    dropout: f64,
    prediction: Prediction,
    time_fc1: nn::Linear,
    time_fc2: nn::Linear,
    group_embed: nn::Embedding,
    layers: Vec<Layer>,
    out: nn::Linear,
    mean: Tensor,
    std: Tensor,
}

impl LatentPrior {
    /// Build under `p` (names: `time_embed/{0,2}`, `group_embed`, `layers/<i>/{fc,norm,mod}`,
    /// `out`, and the statistics `mean`, `std`).
    pub fn new(
        p: &nn::Path,
        cfg: &LatentPriorConfig,
        dz: i64,
        ds: i64,
    ) -> Result<Self, DiffusionError> {
        let bad = |k: &str, r: String| DiffusionError::InvalidConfig {
            key: format!("model.{k}"),
            reason: r,
        };
        if dz < 1 || ds < 1 {
            return Err(bad(
                "dz",
                format!("latent prior needs dz, ds >= 1, got {dz}, {ds}"),
            ));
        }
        if cfg.layers < 1 || cfg.width < 1 {
            return Err(bad(
                "latent_prior.layers",
                "layers and width must be >= 1".into(),
            ));
        }
        if cfg.time_embed_dim < 2 || cfg.time_embed_dim % 2 != 0 {
            return Err(bad(
                "latent_prior.time_embed_dim",
                "must be even and >= 2".into(),
            ));
        }
        if !(0.0..1.0).contains(&cfg.dropout) {
            return Err(bad(
                "latent_prior.dropout",
                format!("{} is not in [0, 1)", cfg.dropout),
            ));
        }
        let d = dz + ds;
        let w = cfg.width;
        let te = p / "time_embed";
        let lp = p / "layers";
        let layers = (0..cfg.layers)
            .map(|i| {
                let inp = if i == 0 { d } else { w + d };
                Layer {
                    fc: linear(&lp / i / "fc", inp, w),
                    norm: nn::layer_norm(&lp / i / "norm", vec![w], Default::default()),
                    modulation: linear(&lp / i / "mod", w, 2 * w),
                }
            })
            .collect();
        Ok(LatentPrior {
            dz,
            ds,
            width: w,
            time_dim: cfg.time_embed_dim,
            dropout: cfg.dropout,
            prediction: cfg.prediction,
            time_fc1: linear(&te / "0", cfg.time_embed_dim, w),
            time_fc2: linear(&te / "2", w, w),
            group_embed: nn::embedding(p / "group_embed", 2, w, Default::default()),
            layers,
            out: linear(p / "out", w, d),
            mean: p.zeros_no_train("mean", &[d]),
            std: p.ones_no_train("std", &[d]),
        })
    }

    /// Code width `dz + ds`.
    pub fn dim(&self) -> i64 {
        self.dz + self.ds
    }

    /// The parametrisation of the output.
    pub fn prediction(&self) -> Prediction {
        self.prediction
    }

    /// Model output for noisy normalised codes `x_t` `[B, dz + ds]` at timesteps `t` `[B]`,
    /// with group flags `is_target` `[B]` (0/1, any kind). `train` enables dropout.
    pub fn forward_t(&self, x_t: &Tensor, t: &Tensor, is_target: &Tensor, train: bool) -> Tensor {
        let b = x_t.size()[0];
        assert_eq!(
            x_t.size(),
            vec![b, self.dim()],
            "x_t must be [B, dz + ds = {}]",
            self.dim()
        );
        assert_eq!(is_target.size(), vec![b], "is_target must be [B = {b}]");
        let temb = timestep_embedding(t, self.time_dim).to_kind(x_t.kind());
        let temb = self.time_fc2.forward(&self.time_fc1.forward(&temb).silu());
        let emb = (temb + self.group_embed.forward(&is_target.to_kind(Kind::Int64))).silu();
        let mut h = x_t.shallow_clone();
        for (i, layer) in self.layers.iter().enumerate() {
            let inp = if i == 0 {
                h
            } else {
                Tensor::cat(&[&h, x_t], 1)
            };
            let hh = layer.norm.forward(&layer.fc.forward(&inp));
            let m = layer.modulation.forward(&emb).split(self.width, 1);
            h = (hh * (&m[0] + 1.0) + &m[1])
                .silu()
                .dropout(self.dropout, train);
        }
        self.out.forward(&h)
    }

    /// Set the normalisation statistics from training codes: `z` columns over all rows, `s`
    /// columns over the rows where `is_target` is 1 (mean 0, std 1 if there are none). Standard
    /// deviations are population ones (defined for one row), floored at 1e-6.
    pub fn set_statistics(&self, codes: &CaCode, is_target: &Tensor) {
        let _g = tch::no_grad_guard();
        let z = codes.z.to_kind(Kind::Float);
        let s = codes.s.to_kind(Kind::Float);
        let dims = [0i64].as_slice();
        let (zm, zs) = (
            z.mean_dim(dims, false, Kind::Float),
            z.std_dim(dims, false, false),
        );
        let mask = is_target.to_device(s.device()).to_kind(Kind::Bool);
        let st = s.index_select(0, &mask.nonzero().view([-1]));
        let (sm, ss) = if st.size()[0] > 0 {
            (
                st.mean_dim(dims, false, Kind::Float),
                st.std_dim(dims, false, false),
            )
        } else {
            (
                s.zeros_like().narrow(0, 0, 1).view([-1]) * 0.0,
                s.ones_like().get(0),
            )
        };
        let mean = Tensor::cat(&[zm, sm], 0).to_device(self.mean.device());
        let std = Tensor::cat(&[zs, ss], 0)
            .clamp_min(1e-6)
            .to_device(self.std.device());
        self.mean.shallow_clone().copy_(&mean);
        self.std.shallow_clone().copy_(&std);
    }

    /// `([z, s] - mean) / std`, `[B, dz + ds]`.
    pub fn normalise(&self, code: &CaCode) -> Tensor {
        (code.concat() - &self.mean) / &self.std
    }

    /// Inverse of [`LatentPrior::normalise`].
    pub fn denormalise(&self, x: &Tensor) -> CaCode {
        CaCode::split(&(x * &self.std + &self.mean), self.dz)
    }

    /// `(prediction, target)` of one training step, for the trainer's loss (`[B, dz + ds]`
    /// each): codes are normalised (the `s` part of background rows, `is_target = 0`, is set to
    /// 0 after normalisation), noised with `noise` at timesteps `t`, and the target is `noise`
    /// (eps) or `v`.
    pub fn training_pair(
        &self,
        schedule: &NoiseSchedule,
        codes: &CaCode,
        is_target: &Tensor,
        t: &Tensor,
        noise: &Tensor,
    ) -> (Tensor, Tensor) {
        let x0 = self.normalise(codes);
        // Background rows: the normalised s part is set to 0 (not `(0 - mean) / std`, which can
        // be large when the target s statistics are narrow).
        let flags = is_target
            .to_device(x0.device())
            .to_kind(x0.kind())
            .view([-1, 1]);
        let x0 = Tensor::cat(
            &[
                x0.narrow(1, 0, self.dz),
                x0.narrow(1, self.dz, self.ds) * flags,
            ],
            1,
        );
        let x_t = schedule.q_sample(&x0, t, noise);
        let pred = self.forward_t(&x_t, t, is_target, true);
        let target = match self.prediction {
            Prediction::Eps => noise.shallow_clone(),
            Prediction::V => schedule.v_target(&x0, t, noise),
        };
        (pred, target)
    }

    /// Draw `n` codes of `group` with DDIM (`opts`; no clipping is applied to codes unless asked).
    /// Background codes have `s = 0` exactly.
    pub fn sample(
        &self,
        schedule: &NoiseSchedule,
        n: i64,
        group: CodeGroup,
        opts: &DdimOptions,
        noise: &mut dyn NoiseSource,
    ) -> Result<CaCode, DiffusionError> {
        let device: Device = self.mean.device();
        let x_t = noise.standard_normal(&[n, self.dim()], (Kind::Float, device));
        let flags = Tensor::full([n], group.flag(), (Kind::Int64, device));
        let x0 = ddim::sample(self, schedule, &flags, &x_t, opts, noise)?;
        let code = self.denormalise(&x0);
        Ok(match group {
            CodeGroup::Target => code,
            CodeGroup::Background => CaCode::background(code.z, self.ds),
        })
    }
}

impl Denoiser<Tensor> for LatentPrior {
    fn predict(&self, x_t: &Tensor, t: &Tensor, is_target: &Tensor) -> Tensor {
        self.forward_t(x_t, t, is_target, false)
    }

    fn prediction(&self) -> Prediction {
        self.prediction
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::diffusion::ddim::TorchNoise;

    fn prior(vs: &nn::VarStore) -> LatentPrior {
        let cfg = LatentPriorConfig {
            layers: 3,
            width: 16,
            time_embed_dim: 8,
            ..Default::default()
        };
        LatentPrior::new(&vs.root(), &cfg, 3, 2).unwrap()
    }

    #[test]
    fn statistics_normalise_and_round_trip() {
        let vs = nn::VarStore::new(Device::Cpu);
        let p = prior(&vs);
        let z = Tensor::from_slice(&[1.0f32, 2.0, 3.0, 3.0, 4.0, 5.0]).view([2, 3]);
        let s = Tensor::from_slice(&[0.0f32, 0.0, 2.0, 6.0]).view([2, 2]);
        let codes = CaCode::new(z, s);
        let is_target = Tensor::from_slice(&[0i64, 1]);
        p.set_statistics(&codes, &is_target);
        // z: mean [2, 3, 4], population std 1; s: target row only -> mean [2, 6], std floored.
        let mean: Vec<f32> = Vec::try_from(&p.mean).unwrap();
        assert_eq!(mean, vec![2.0, 3.0, 4.0, 2.0, 6.0]);
        let x = p.normalise(&codes);
        assert!((x.double_value(&[1, 0]) - 1.0).abs() < 1e-5);
        let std: Vec<f32> = Vec::try_from(&p.std).unwrap();
        assert_eq!(std, vec![1.0, 1.0, 1.0, 1e-6, 1e-6]);
        let back = p.denormalise(&x);
        assert!(
            (back.concat() - codes.concat())
                .abs()
                .max()
                .double_value(&[])
                < 1e-5
        );
        // The statistics are saved with the weights.
        let names: Vec<String> = vs.variables().into_keys().collect();
        assert!(names.contains(&"mean".to_string()) && names.contains(&"std".to_string()));
        assert!(vs.trainable_variables().len() + 2 == names.len());
    }

    #[test]
    fn samples_have_code_shapes_and_background_has_zero_s() {
        tch::manual_seed(0);
        let vs = nn::VarStore::new(Device::Cpu);
        let p = prior(&vs);
        let schedule = NoiseSchedule::linear(100, 1e-4, 0.02, Device::Cpu);
        let opts = DdimOptions::deterministic(5);
        let bg = p
            .sample(&schedule, 4, CodeGroup::Background, &opts, &mut TorchNoise)
            .unwrap();
        assert_eq!((bg.z.size(), bg.s.size()), (vec![4, 3], vec![4, 2]));
        assert_eq!(bg.s.abs().sum(Kind::Float).double_value(&[]), 0.0);
        let tg = p
            .sample(&schedule, 4, CodeGroup::Target, &opts, &mut TorchNoise)
            .unwrap();
        assert!(tg.s.abs().sum(Kind::Float).double_value(&[]) > 0.0);
        assert!(tg.concat().isfinite().all().int64_value(&[]) == 1);
    }

    #[test]
    fn training_pair_reaches_every_trainable_parameter() {
        tch::manual_seed(1);
        let vs = nn::VarStore::new(Device::Cpu);
        let p = prior(&vs);
        let schedule = NoiseSchedule::linear(100, 1e-4, 0.02, Device::Cpu);
        let codes = CaCode::new(
            Tensor::randn([4, 3], (Kind::Float, Device::Cpu)),
            Tensor::randn([4, 2], (Kind::Float, Device::Cpu)),
        );
        let flags = Tensor::from_slice(&[0i64, 1, 0, 1]);
        let t = Tensor::from_slice(&[0i64, 10, 50, 99]);
        let noise = Tensor::randn([4, 5], (Kind::Float, Device::Cpu));
        let (pred, target) = p.training_pair(&schedule, &codes, &flags, &t, &noise);
        assert_eq!(pred.size(), target.size());
        (pred - target).square().mean(Kind::Float).backward();
        for (name, v) in vs.variables() {
            if name == "mean" || name == "std" {
                assert!(!v.requires_grad());
                continue;
            }
            let g = v.grad();
            assert!(
                g.defined() && g.abs().sum(Kind::Float).double_value(&[]) > 0.0,
                "{name}"
            );
        }
    }
}
