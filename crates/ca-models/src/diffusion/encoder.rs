//! The semantic encoder `E(x) -> (z, s)` of CA-diffusion.
//!
//! DiffAE's semantic encoder (Preechakul et al. 2022, arXiv 2111.15640) is the down half of the
//! UNet ending in group norm, SiLU, global average pooling and a projection. Here the projection
//! is two linear heads, one for the common factors `z` and one for the salient factors `s`
//! (docs/design.md section 4.2). The encoder does not apply the background convention itself: the
//! trainer conditions background images on [`CaCode::without_salient`] /
//! [`CaCode::masked_by_group`] and pushes their predicted `s` to 0 with a loss.

use super::unet::{ResBlock, conv3, group_norm, linear};
use super::{DiffusionError, DiffusionModelConfig};
use crate::{CaCode, ImageGeometry};
use tch::nn::{self, Module};
use tch::{Kind, Tensor};

/// `E(x) -> (z, s)`: residual conv stack, GN, SiLU, global pool, linear heads.
#[derive(Debug)]
pub struct SemanticEncoder {
    geom: ImageGeometry,
    trunk: Trunk,
    /// `s`'s own conv stack (`EncoderConfig::separate_salient`).
    salient: Option<Trunk>,
    z_head: nn::Linear,
    s_head: nn::Linear,
}

/// The conv stack to pooled features: input conv, residual blocks with downsampling, norm.
#[derive(Debug)]
struct Trunk {
    input_conv: nn::Conv2D,
    blocks: Vec<(ResBlock, Option<nn::Conv2D>)>,
    out_norm: nn::GroupNorm,
    out_channels: i64,
}

impl Trunk {
    fn new(p: &nn::Path, cfg: &DiffusionModelConfig, geom: ImageGeometry) -> Self {
        let e = &cfg.encoder;
        let mut ch = e.base_channels;
        let mut blocks = Vec::new();
        let bp = p / "blocks";
        let levels = e.channel_mult.len();
        for (level, m) in e.channel_mult.iter().enumerate() {
            let out = e.base_channels * m;
            for r in 0..e.res_blocks {
                let ip = &bp / blocks.len();
                let res = ResBlock::new(&(&ip / "res"), ch, out, cfg.norm_groups, None, 0.0);
                ch = out;
                let last = r + 1 == e.res_blocks && level + 1 < levels;
                let down = last.then(|| conv3(&ip / "down", ch, ch, 2));
                blocks.push((res, down));
            }
        }
        Trunk {
            input_conv: conv3(p / "input_conv", geom.channels, e.base_channels, 1),
            blocks,
            out_norm: group_norm(p / "out_norm", cfg.norm_groups, ch),
            out_channels: ch,
        }
    }

    fn forward(&self, x: &Tensor, train: bool) -> Tensor {
        let mut h = self.input_conv.forward(x);
        for (res, down) in &self.blocks {
            h = res.forward(&h, None, train);
            if let Some(d) = down {
                h = d.forward(&h);
            }
        }
        self.out_norm
            .forward(&h)
            .silu()
            .mean_dim([2i64, 3].as_slice(), false, Kind::Float)
    }
}

impl SemanticEncoder {
    /// Build under `p` (names: `input_conv`, `blocks/<i>/{res,down}`, `out_norm`, `z_head`,
    /// `s_head`, and with `separate_salient` the same stack again under `salient/`) from
    /// `cfg.encoder`, `cfg.dz`, `cfg.ds`, `cfg.norm_groups`. Validates `cfg` and `geom`.
    pub fn new(
        p: &nn::Path,
        cfg: &DiffusionModelConfig,
        geom: ImageGeometry,
    ) -> Result<Self, DiffusionError> {
        cfg.validate()?;
        cfg.validate_geometry(geom)?;
        let trunk = Trunk::new(p, cfg, geom);
        let ch = trunk.out_channels;
        let salient = cfg
            .encoder
            .separate_salient
            .then(|| Trunk::new(&(p / "salient"), cfg, geom));
        Ok(SemanticEncoder {
            geom,
            trunk,
            salient,
            z_head: linear(p / "z_head", ch, cfg.dz),
            s_head: linear(p / "s_head", ch, cfg.ds),
        })
    }

    /// The pooled features the `z` head reads, `[B, C_last]` (the `s` head reads them too
    /// unless `separate_salient`).
    pub fn features(&self, x: &Tensor, train: bool) -> Tensor {
        self.check_input(x);
        self.trunk.forward(x, train)
    }

    fn check_input(&self, x: &Tensor) {
        let (_, c, _, _) = x.size4().expect("encoder input must be [B, C, H, W]");
        assert_eq!(
            c, self.geom.channels,
            "encoder input has {c} channels, expected {}",
            self.geom.channels
        );
    }

    /// Encode images `[B, C, H, W]` in `[-1, 1]` to their code (`z: [B, dz]`, `s: [B, ds]`).
    pub fn forward_t(&self, x: &Tensor, train: bool) -> CaCode {
        self.forward_with_features(x, train).0
    }

    /// The code and the pooled features `[B, C_last]` that the `z` head reads.
    pub fn forward_with_features(&self, x: &Tensor, train: bool) -> (CaCode, Tensor) {
        let f = self.features(x, train);
        let s = match &self.salient {
            Some(t) => self.s_head.forward(&t.forward(x, train)),
            None => self.s_head.forward(&f),
        };
        (CaCode::new(self.z_head.forward(&f), s), f)
    }

    /// The salient code alone, `[B, ds]` (with `separate_salient` the shared trunk and the `z`
    /// head are not run; otherwise the same as `forward_t(x, train).s`).
    pub fn salient(&self, x: &Tensor, train: bool) -> Tensor {
        self.check_input(x);
        match &self.salient {
            Some(t) => self.s_head.forward(&t.forward(x, train)),
            None => self.s_head.forward(&self.trunk.forward(x, train)),
        }
    }

    /// The `z` head alone on given pooled features (from [`Self::features`]).
    pub fn z_from_features(&self, f: &Tensor) -> Tensor {
        self.z_head.forward(f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::diffusion::unet::tests::{assert_all_grads_nonzero, perturb, tiny_config};
    use crate::gan::test_util::parameters_reached_by;
    use tch::Device;

    #[test]
    fn encodes_to_code_shapes_for_32_and_64() {
        tch::manual_seed(0);
        let cfg = tiny_config();
        for size in [8, 32, 64] {
            let vs = nn::VarStore::new(Device::Cpu);
            let enc = SemanticEncoder::new(&vs.root(), &cfg, ImageGeometry { channels: 3, size })
                .unwrap();
            let x = Tensor::rand([2, 3, size, size], (Kind::Float, Device::Cpu));
            let c = enc.forward_t(&x, false);
            assert_eq!(c.z.size(), vec![2, cfg.dz]);
            assert_eq!(c.s.size(), vec![2, cfg.ds]);
        }
    }

    /// `salient` gives the same `s` as the full forward pass, with and without a separate stack.
    #[test]
    fn salient_alone_matches_forward() {
        tch::manual_seed(4);
        for separate in [false, true] {
            let mut cfg = tiny_config();
            cfg.encoder.separate_salient = separate;
            let vs = nn::VarStore::new(Device::Cpu);
            let geom = ImageGeometry {
                channels: 3,
                size: 8,
            };
            let enc = SemanticEncoder::new(&vs.root(), &cfg, geom).unwrap();
            let x = Tensor::rand([3, 3, 8, 8], (Kind::Float, Device::Cpu)) * 2.0 - 1.0;
            let d = (enc.salient(&x, false) - enc.forward_t(&x, false).s)
                .abs()
                .max()
                .double_value(&[]);
            assert_eq!(d, 0.0, "separate_salient = {separate}");
        }
    }

    /// With `separate_salient`, a loss on `z` leaves `s`'s weights without gradient and one on
    /// `s` leaves `z`'s without.
    #[test]
    fn separate_salient_stack_is_independent_of_z() {
        tch::manual_seed(2);
        let mut cfg = tiny_config();
        cfg.encoder.separate_salient = true;
        let vs = nn::VarStore::new(Device::Cpu);
        let geom = ImageGeometry {
            channels: 1,
            size: 8,
        };
        let enc = SemanticEncoder::new(&vs.root(), &cfg, geom).unwrap();
        perturb(&vs);
        let x = Tensor::rand([3, 1, 8, 8], (Kind::Float, Device::Cpu));
        let with_grad = |pick_z: bool| {
            let c = enc.forward_t(&x, true);
            let t = if pick_z { &c.z } else { &c.s };
            parameters_reached_by(&vs, &t.square().sum(Kind::Float))
        };
        let own_s = |n: &String| n.starts_with("salient") || n.starts_with("s_head");
        let from_z = with_grad(true);
        assert!(
            !from_z.is_empty() && !from_z.iter().any(own_s),
            "{from_z:?}"
        );
        let from_s = with_grad(false);
        assert!(!from_s.is_empty() && from_s.iter().all(own_s), "{from_s:?}");
    }

    #[test]
    fn gradients_reach_every_encoder_parameter() {
        tch::manual_seed(1);
        let cfg = tiny_config();
        let vs = nn::VarStore::new(Device::Cpu);
        let enc = SemanticEncoder::new(
            &vs.root(),
            &cfg,
            ImageGeometry {
                channels: 1,
                size: 8,
            },
        )
        .unwrap();
        perturb(&vs);
        let x = Tensor::rand([3, 1, 8, 8], (Kind::Float, Device::Cpu));
        let c = enc.forward_t(&x, true);
        (c.z.square().sum(Kind::Float) + c.s.square().sum(Kind::Float)).backward();
        assert_all_grads_nonzero(&vs);
    }
}
