//! An optional separate encoder `E(x) -> (z, s)` for the CA-GAN (DESIGN.md 4.1, "option of a
//! separate encoder network"): the discriminator's trunk and encoder branch (see
//! [`super::discriminator`]) with only the `z` and `s` heads.
//!
//! Parameters: `from_rgb.*`, `blocks.{i}.conv{0,1}.*`, `enc_conv.*`, `enc_fc.*`, `z_out.*`,
//! `s_out.*` (the same names as in the discriminator, so weights can be copied across).

use tch::{Tensor, nn};

use super::EncoderConfig;
use super::discriminator::{Head, Trunk};
use crate::blocks::{EqualLinear, LayerInit};
use crate::{CaCode, ImageGeometry};

/// A convolutional encoder from images to CA codes.
#[derive(Debug)]
pub struct Encoder {
    trunk: Trunk,
    enc: Head,
    z_out: EqualLinear,
    s_out: EqualLinear,
}

impl Encoder {
    /// Build under `p` for `dz` common and `ds` salient factors and the given geometry.
    pub fn new(p: &nn::Path, cfg: &EncoderConfig, dz: i64, ds: i64, geom: ImageGeometry) -> Self {
        let eq = cfg.equalized_lr;
        let init = LayerInit {
            equalized: eq,
            ..LayerInit::default()
        };
        let trunk = Trunk::new(p, cfg.base_channels, cfg.max_channels, eq, geom);
        let c = trunk.out_channels;
        Encoder {
            enc: Head::new(p, "enc", c, c, cfg.hidden, eq),
            trunk,
            z_out: EqualLinear::new(&(p / "z_out"), cfg.hidden, dz, init),
            s_out: EqualLinear::new(&(p / "s_out"), cfg.hidden, ds, init),
        }
    }

    /// Encode `x [B, C, H, W]` in `[-1, 1]`. Each image is encoded independently; the network
    /// has no train/eval-dependent layer (`_train` is kept for a uniform interface).
    pub fn forward_t(&self, x: &Tensor, _train: bool) -> CaCode {
        self.forward_with_features(x).0
    }

    /// The code and the shared features `[B, hidden]` that both heads read.
    pub fn forward_with_features(&self, x: &Tensor) -> (CaCode, Tensor) {
        let feats = self.trunk.forward(x);
        let e = self
            .enc
            .forward(feats.last().expect("the trunk has at least one block"));
        let code = CaCode::new(self.z_out.forward(&e), self.s_out.forward(&e));
        (code, e)
    }

    /// The `z` head alone on given shared features (from [`Self::forward_with_features`]).
    pub fn z_from_features(&self, e: &Tensor) -> Tensor {
        self.z_out.forward(e)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gan::test_util::dead_parameters;
    use tch::{Device, Kind};

    #[test]
    fn encodes_to_the_code_shapes_and_trains_every_parameter() {
        tch::manual_seed(0);
        for size in [32, 64] {
            let vs = nn::VarStore::new(Device::Cpu);
            let cfg = EncoderConfig {
                base_channels: 4,
                max_channels: 16,
                hidden: 8,
                equalized_lr: false,
            };
            let e = Encoder::new(&vs.root(), &cfg, 7, 2, ImageGeometry { channels: 3, size });
            let c = e.forward_t(
                &Tensor::randn([3, 3, size, size], (Kind::Float, Device::Cpu)),
                true,
            );
            assert_eq!((c.z.size(), c.s.size()), (vec![3, 7], vec![3, 2]));
            (c.z.sum(Kind::Float) + c.s.sum(Kind::Float)).backward();
            assert_eq!(dead_parameters(&vs), Vec::<String>::new());
        }
    }
}
