//! The semantic encoder `E(x) -> (z, s)` of CA-diffusion.
//!
//! DiffAE's semantic encoder (Preechakul et al. 2022, arXiv 2111.15640) is the down half of the
//! UNet ending in group norm, SiLU, global average pooling and a projection. Here the projection
//! is two linear heads, one for the common factors `z` and one for the salient factors `s`
//! (DESIGN.md section 4.2). The encoder does not apply the background convention itself: the
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
    input_conv: nn::Conv2D,
    blocks: Vec<(ResBlock, Option<nn::Conv2D>)>,
    out_norm: nn::GroupNorm,
    z_head: nn::Linear,
    s_head: nn::Linear,
}

impl SemanticEncoder {
    /// Build under `p` (names: `input_conv`, `blocks/<i>/{res,down}`, `out_norm`, `z_head`,
    /// `s_head`) from `cfg.encoder`, `cfg.dz`, `cfg.ds`, `cfg.norm_groups`. Validates `cfg` and
    /// `geom`.
    pub fn new(
        p: &nn::Path,
        cfg: &DiffusionModelConfig,
        geom: ImageGeometry,
    ) -> Result<Self, DiffusionError> {
        cfg.validate()?;
        cfg.validate_geometry(geom)?;
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
        Ok(SemanticEncoder {
            geom,
            input_conv: conv3(p / "input_conv", geom.channels, e.base_channels, 1),
            blocks,
            out_norm: group_norm(p / "out_norm", cfg.norm_groups, ch),
            z_head: linear(p / "z_head", ch, cfg.dz),
            s_head: linear(p / "s_head", ch, cfg.ds),
        })
    }

    /// The pooled features before the heads, `[B, C_last]`.
    pub fn features(&self, x: &Tensor, train: bool) -> Tensor {
        let (_, c, _, _) = x.size4().expect("encoder input must be [B, C, H, W]");
        assert_eq!(
            c, self.geom.channels,
            "encoder input has {c} channels, expected {}",
            self.geom.channels
        );
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

    /// Encode images `[B, C, H, W]` in `[-1, 1]` to their code (`z: [B, dz]`, `s: [B, ds]`).
    pub fn forward_t(&self, x: &Tensor, train: bool) -> CaCode {
        self.forward_with_features(x, train).0
    }

    /// The code and the pooled features `[B, C_last]` that both heads read.
    pub fn forward_with_features(&self, x: &Tensor, train: bool) -> (CaCode, Tensor) {
        let f = self.features(x, train);
        let code = CaCode::new(self.z_head.forward(&f), self.s_head.forward(&f));
        (code, f)
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
