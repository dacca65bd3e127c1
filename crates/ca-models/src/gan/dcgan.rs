//! The DCGAN generator of the Double InfoGAN baseline (Carton, Louiset, Gori, "Double InfoGAN
//! for Contrastive Analysis", AISTATS 2024; architecture of Radford, Metz, Chintala, "Unsupervised
//! Representation Learning with Deep Convolutional GANs", ICLR 2016, arXiv:1511.06434).
//!
//! `[z, s]` (as a `1x1` image) -> `ConvTranspose2d(4, 1, 0)` to `4x4` -> `(ConvTranspose2d(4, 2, 1)
//! + BatchNorm + ReLU)` per doubling -> `ConvTranspose2d(4, 2, 1)` to the image channels -> `tanh`.
//! Channels: `base_channels * 2^(n-1)` at `4x4`, halving at each doubling, `base_channels` before
//! the last layer. Convolutions have no bias (each is followed by batch norm), as in DCGAN.
//! Parameters are `main.{i}.*` with the indices of PyTorch's `nn.Sequential` (ReLUs included:
//! `main.0` conv, `main.1` batch norm, `main.2` ReLU, `main.3` conv, ...). Initialisation as
//! DCGAN: conv weights `N(0, 0.02)`, batch-norm weights `N(1, 0.02)`, biases 0.

use tch::{Tensor, nn, nn::ModuleT};

use super::{DcganConfig, Generator};
use crate::{CaCode, ImageGeometry};

/// The DCGAN generator `G(z, s)` for 32x32 or 64x64 images.
#[derive(Debug)]
pub struct DcganGenerator {
    layers: Vec<(nn::ConvTranspose2D, Option<nn::BatchNorm>)>,
}

impl DcganGenerator {
    /// Build under `p` for `dz + ds` inputs and the given geometry (size 32 or 64; checked by
    /// [`super::GanModelConfig::validate`]).
    pub fn new(p: &nn::Path, cfg: &DcganConfig, dz: i64, ds: i64, geom: ImageGeometry) -> Self {
        assert!(
            geom.size >= 8 && geom.size.count_ones() == 1,
            "DCGAN needs a power-of-two size >= 8, got {}",
            geom.size
        );
        let n_up = geom.size.trailing_zeros() as i64 - 2; // doublings after 4x4
        let conv_cfg = |stride, padding| nn::ConvTransposeConfig {
            stride,
            padding,
            bias: false,
            ws_init: nn::Init::Randn {
                mean: 0.0,
                stdev: 0.02,
            },
            ..Default::default()
        };
        let bn_cfg = nn::BatchNormConfig {
            ws_init: nn::Init::Randn {
                mean: 1.0,
                stdev: 0.02,
            },
            bs_init: nn::Init::Const(0.0),
            ..Default::default()
        };
        let main = p / "main";
        let mut layers = Vec::new();
        let mut c = cfg.base_channels << (n_up - 1);
        let mut idx = 0;
        let first = nn::conv_transpose2d(&main / idx, dz + ds, c, 4, conv_cfg(1, 0));
        layers.push((first, Some(nn::batch_norm2d(&main / (idx + 1), c, bn_cfg))));
        idx += 3;
        for _ in 0..n_up - 1 {
            let conv = nn::conv_transpose2d(&main / idx, c, c / 2, 4, conv_cfg(2, 1));
            layers.push((
                conv,
                Some(nn::batch_norm2d(&main / (idx + 1), c / 2, bn_cfg)),
            ));
            c /= 2;
            idx += 3;
        }
        let last = nn::conv_transpose2d(&main / idx, c, geom.channels, 4, conv_cfg(2, 1));
        layers.push((last, None));
        DcganGenerator { layers }
    }
}

impl Generator for DcganGenerator {
    fn forward_t(&self, code: &CaCode, train: bool) -> Tensor {
        let b = code.batch();
        let mut x = code.concat().view([b, -1, 1, 1]);
        for (conv, bn) in &self.layers {
            x = conv.forward_t(&x, train);
            x = match bn {
                Some(bn) => bn.forward_t(&x, train).relu(),
                None => x.tanh(),
            };
        }
        x
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gan::test_util::{code, dead_parameters};
    use tch::{Device, Kind};

    #[test]
    fn shapes_for_32_and_64() {
        tch::manual_seed(0);
        for (size, ch) in [(32, 3), (64, 1)] {
            let vs = nn::VarStore::new(Device::Cpu);
            let cfg = DcganConfig { base_channels: 8 };
            let g =
                DcganGenerator::new(&vs.root(), &cfg, 6, 2, ImageGeometry { channels: ch, size });
            let y = g.forward_t(&code(3, 6, 2), true);
            assert_eq!(y.size(), vec![3, ch, size, size]);
            assert!(y.abs().max().double_value(&[]) <= 1.0);
        }
    }

    #[test]
    fn parameter_names_follow_the_pytorch_sequential() {
        let vs = nn::VarStore::new(Device::Cpu);
        let cfg = DcganConfig { base_channels: 8 };
        let _g = DcganGenerator::new(
            &vs.root(),
            &cfg,
            6,
            2,
            ImageGeometry {
                channels: 3,
                size: 32,
            },
        );
        let v = vs.variables();
        assert_eq!(v["main.0.weight"].size(), vec![8, 32, 4, 4]); // ConvTranspose: [in, out, k, k]
        assert_eq!(v["main.1.weight"].size(), vec![32]);
        assert_eq!(v["main.9.weight"].size(), vec![8, 3, 4, 4]);
        assert!(!v.contains_key("main.0.bias"));
        let w = &v["main.3.weight"];
        let std = w.std(true).double_value(&[]);
        assert!((std - 0.02).abs() < 0.003, "DCGAN init std {std}");
    }

    #[test]
    fn gradients_reach_every_parameter_and_eval_is_deterministic() {
        tch::manual_seed(0);
        let vs = nn::VarStore::new(Device::Cpu);
        let g = DcganGenerator::new(
            &vs.root(),
            &DcganConfig { base_channels: 8 },
            6,
            2,
            ImageGeometry {
                channels: 3,
                size: 32,
            },
        );
        let c = code(4, 6, 2);
        let y = g.forward_t(&c, true);
        (y * Tensor::randn([4, 3, 32, 32], (Kind::Float, Device::Cpu)))
            .sum(Kind::Float)
            .backward();
        assert_eq!(dead_parameters(&vs), Vec::<String>::new());
        let a = g.forward_t(&c, false);
        let b = g.forward_t(&c, false);
        assert!(a.equal(&b));
    }
}
