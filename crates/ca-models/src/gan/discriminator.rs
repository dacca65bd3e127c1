//! The four-headed CA-GAN discriminator (after Double InfoGAN, Carton, Louiset, Gori,
//! AISTATS 2024): one convolutional trunk, then
//! * an **adversarial** head (real vs fake logit), fed with the minibatch standard-deviation
//!   feature of ProGAN (Karras et al., ICLR 2018, arXiv:1710.10196);
//! * an **encoder** branch without that feature, so that each image is encoded on its own:
//!   the **dataset** logit (background 0 vs target 1) and the **`z`** and **`s`** heads, which
//!   double as the encoder of real images.
//!
//! The trunk: `from_rgb` (1x1 conv) at the input resolution, then per resolution a block
//! `conv0` (3x3) and `conv1` (4x4, stride 2) with `LeakyReLU(0.2)`, down to `4x4`. Channels
//! double per halving from `base_channels` up to `max_channels`. No normalisation layers: batch
//! norm would make an image's code depend on its batch and interacts badly with the R1 penalty;
//! the equalised learning rate (as StyleGAN2) keeps the layers' learning speeds balanced
//! instead. The output of every block is returned as a feature map for multi-scale
//! feature-matching reconstruction.
//!
//! Parameters: `from_rgb.*`, `blocks.{i}.conv{0,1}.*`, `adv_conv.*`, `adv_fc.*`, `adv_out.*`,
//! `enc_conv.*`, `enc_fc.*`, `dataset_out.*`, `z_out.*`, `s_out.*`.

use tch::{Tensor, nn};

use super::DiscriminatorConfig;
use super::config::channels_at;
use crate::blocks::{EqualConv2d, EqualLinear, LayerInit, leaky_relu};
use crate::{CaCode, ImageGeometry};

/// What the discriminator says about a batch `x [B, C, H, W]`.
#[derive(Debug)]
pub struct DiscOutput {
    /// Real-vs-fake logit, `[B]`.
    pub adv: Tensor,
    /// Dataset logit (target vs background), `[B]`.
    pub dataset: Tensor,
    /// Predicted common factors, `[B, dz]`.
    pub z: Tensor,
    /// Predicted salient factors, `[B, ds]`.
    pub s: Tensor,
    /// Trunk feature maps from fine to coarse: `[B, C_i, H/2^i, W/2^i]` for `i = 1 ..`, the last
    /// at `4x4`.
    pub features: Vec<Tensor>,
}

impl DiscOutput {
    /// The `z` and `s` heads as a code (shallow copies).
    pub fn code(&self) -> CaCode {
        CaCode::new(self.z.shallow_clone(), self.s.shallow_clone())
    }
}

/// The minibatch standard deviation of ProGAN/StyleGAN2: split the batch into groups of
/// `group` (the largest divisor of `B` not above it; sample `i` is grouped with
/// `i + B/group`, ...), take the standard deviation of each feature over the group, average
/// it, and append it as one constant channel. `x [B, C, H, W] -> [B, C + 1, H, W]`.
pub fn minibatch_stddev(x: &Tensor, group: i64) -> Tensor {
    let [b, c, h, w] = x.size()[..] else {
        panic!("minibatch_stddev needs [B, C, H, W], got {:?}", x.size())
    };
    let g = (1..=group.min(b)).rev().find(|g| b % g == 0).unwrap_or(1);
    let y = x.view([g, b / g, c, h, w]);
    let y = (y.var_dim(0, false, false) + 1e-8).sqrt(); // [B/g, C, H, W]
    let y = y.mean_dim([1i64, 2, 3].as_slice(), false, tch::Kind::Float); // [B/g]
    let y = y
        .view([1, b / g, 1, 1, 1])
        .expand([g, b / g, 1, h, w], false)
        .reshape([b, 1, h, w]);
    Tensor::cat(&[x, &y], 1)
}

/// The shared convolutional trunk down to `4x4`.
#[derive(Debug)]
pub(crate) struct Trunk {
    from_rgb: EqualConv2d,
    blocks: Vec<(EqualConv2d, EqualConv2d)>,
    /// Channels at `4x4`.
    pub out_channels: i64,
}

impl Trunk {
    pub fn new(p: &nn::Path, base: i64, max: i64, eq: bool, geom: ImageGeometry) -> Self {
        assert!(
            geom.size >= 8 && geom.size.count_ones() == 1,
            "discriminator needs a power-of-two size >= 8, got {}",
            geom.size
        );
        let init = LayerInit {
            equalized: eq,
            ..LayerInit::default()
        };
        let ch = |res: i64| channels_at(base, max, geom.size, res);
        let from_rgb = EqualConv2d::new(
            &(p / "from_rgb"),
            geom.channels,
            ch(geom.size),
            1,
            1,
            0,
            init,
        );
        let mut blocks = Vec::new();
        let mut res = geom.size;
        while res > 4 {
            let bp = p / "blocks" / blocks.len();
            let c0 = EqualConv2d::new(&(&bp / "conv0"), ch(res), ch(res), 3, 1, 1, init);
            let c1 = EqualConv2d::new(&(&bp / "conv1"), ch(res), ch(res / 2), 4, 2, 1, init);
            blocks.push((c0, c1));
            res /= 2;
        }
        Trunk {
            from_rgb,
            blocks,
            out_channels: ch(4),
        }
    }

    /// The feature maps after each block (the last is the `4x4` output).
    pub fn forward(&self, x: &Tensor) -> Vec<Tensor> {
        let mut h = self.from_rgb.forward_lrelu(x);
        let mut feats = Vec::with_capacity(self.blocks.len());
        for (c0, c1) in &self.blocks {
            h = c1.forward_lrelu(&c0.forward_lrelu(&h));
            feats.push(h.shallow_clone());
        }
        feats
    }
}

/// 3x3 conv + flatten + linear + leaky ReLU: `[B, C, 4, 4] -> [B, hidden]`.
#[derive(Debug)]
pub(crate) struct Head {
    conv: EqualConv2d,
    fc: EqualLinear,
}

impl Head {
    pub fn new(p: &nn::Path, prefix: &str, cin: i64, c: i64, hidden: i64, eq: bool) -> Self {
        let init = LayerInit {
            equalized: eq,
            ..LayerInit::default()
        };
        let conv = EqualConv2d::new(&(p / format!("{prefix}_conv")), cin, c, 3, 1, 1, init);
        let fc = EqualLinear::new(&(p / format!("{prefix}_fc")), c * 16, hidden, init);
        Head { conv, fc }
    }

    pub fn forward(&self, h: &Tensor) -> Tensor {
        leaky_relu(
            &self.fc.forward(&self.conv.forward_lrelu(h).flatten(1, -1)),
            0.2,
        )
    }
}

/// The four-headed discriminator; see the module documentation.
#[derive(Debug)]
pub struct Discriminator {
    trunk: Trunk,
    mbstd_group: i64,
    adv: Head,
    adv_out: EqualLinear,
    enc: Head,
    dataset_out: EqualLinear,
    z_out: EqualLinear,
    s_out: EqualLinear,
}

impl Discriminator {
    /// Build under `p` for codes with `dz` and `ds` factors and the given geometry.
    pub fn new(
        p: &nn::Path,
        cfg: &DiscriminatorConfig,
        dz: i64,
        ds: i64,
        geom: ImageGeometry,
    ) -> Self {
        let eq = cfg.equalized_lr;
        let init = LayerInit {
            equalized: eq,
            ..LayerInit::default()
        };
        let trunk = Trunk::new(p, cfg.base_channels, cfg.max_channels, eq, geom);
        let c = trunk.out_channels;
        let extra = i64::from(cfg.mbstd_group > 0);
        let adv = Head::new(p, "adv", c + extra, c, cfg.hidden, eq);
        let enc = Head::new(p, "enc", c, c, cfg.hidden, eq);
        Discriminator {
            trunk,
            mbstd_group: cfg.mbstd_group,
            adv,
            adv_out: EqualLinear::new(&(p / "adv_out"), cfg.hidden, 1, init),
            enc,
            dataset_out: EqualLinear::new(&(p / "dataset_out"), cfg.hidden, 1, init),
            z_out: EqualLinear::new(&(p / "z_out"), cfg.hidden, dz, init),
            s_out: EqualLinear::new(&(p / "s_out"), cfg.hidden, ds, init),
        }
    }

    /// All heads and the feature maps for `x [B, C, H, W]` in `[-1, 1]`. The network has no
    /// train/eval-dependent layer; `_train` is kept for a uniform interface.
    pub fn forward_t(&self, x: &Tensor, _train: bool) -> DiscOutput {
        let features = self.trunk.forward(x);
        let h = features.last().expect("the trunk has at least one block");
        let ha = if self.mbstd_group > 0 {
            minibatch_stddev(h, self.mbstd_group)
        } else {
            h.shallow_clone()
        };
        let adv = self.adv_out.forward(&self.adv.forward(&ha)).squeeze_dim(1);
        let e = self.enc.forward(h);
        DiscOutput {
            adv,
            dataset: self.dataset_out.forward(&e).squeeze_dim(1),
            z: self.z_out.forward(&e),
            s: self.s_out.forward(&e),
            features,
        }
    }

    /// The encoder heads only: the code of each image (independent of the rest of the batch).
    pub fn encode(&self, x: &Tensor) -> CaCode {
        let features = self.trunk.forward(x);
        let e = self
            .enc
            .forward(features.last().expect("the trunk has at least one block"));
        CaCode::new(self.z_out.forward(&e), self.s_out.forward(&e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gan::test_util::dead_parameters;
    use tch::{Device, Kind};

    fn small() -> DiscriminatorConfig {
        DiscriminatorConfig {
            base_channels: 4,
            max_channels: 16,
            hidden: 8,
            ..DiscriminatorConfig::default()
        }
    }

    #[test]
    fn shapes_for_32_64_128() {
        tch::manual_seed(0);
        for (size, ch, n_feat) in [(32, 3, 3), (64, 1, 4), (128, 3, 5)] {
            let vs = nn::VarStore::new(Device::Cpu);
            let d = Discriminator::new(
                &vs.root(),
                &small(),
                7,
                2,
                ImageGeometry { channels: ch, size },
            );
            let o = d.forward_t(
                &Tensor::randn([6, ch, size, size], (Kind::Float, Device::Cpu)),
                true,
            );
            assert_eq!(o.adv.size(), vec![6]);
            assert_eq!(o.dataset.size(), vec![6]);
            assert_eq!(o.z.size(), vec![6, 7]);
            assert_eq!(o.s.size(), vec![6, 2]);
            assert_eq!(o.features.len(), n_feat);
            assert_eq!(o.features[0].size()[2], size / 2);
            assert_eq!(o.features.last().unwrap().size()[2..], [4, 4]);
        }
    }

    #[test]
    fn gradients_reach_every_parameter() {
        tch::manual_seed(0);
        let vs = nn::VarStore::new(Device::Cpu);
        let d = Discriminator::new(
            &vs.root(),
            &small(),
            7,
            2,
            ImageGeometry {
                channels: 3,
                size: 32,
            },
        );
        let o = d.forward_t(
            &Tensor::randn([4, 3, 32, 32], (Kind::Float, Device::Cpu)),
            true,
        );
        let f: Tensor = o.features.iter().map(|f| f.mean(Kind::Float)).sum();
        let loss = o.adv.sum(Kind::Float)
            + o.dataset.sum(Kind::Float)
            + o.z.sum(Kind::Float)
            + o.s.sum(Kind::Float)
            + f;
        loss.backward();
        assert_eq!(dead_parameters(&vs), Vec::<String>::new());
    }

    #[test]
    fn encoding_is_per_image_and_matches_the_heads() {
        tch::manual_seed(0);
        let vs = nn::VarStore::new(Device::Cpu);
        let d = Discriminator::new(
            &vs.root(),
            &small(),
            7,
            2,
            ImageGeometry {
                channels: 3,
                size: 32,
            },
        );
        let x = Tensor::randn([4, 3, 32, 32], (Kind::Float, Device::Cpu));
        let full = d.forward_t(&x, false);
        let one = d.encode(&x.narrow(0, 1, 1));
        assert!(one.z.allclose(&full.z.narrow(0, 1, 1), 1e-5, 1e-6, false));
        assert!(one.s.allclose(&full.s.narrow(0, 1, 1), 1e-5, 1e-6, false));
    }

    #[test]
    fn r1_double_backward_reaches_the_trunk() {
        // R1 = |d adv / d x|^2 needs a differentiable input gradient through every layer.
        tch::manual_seed(0);
        let vs = nn::VarStore::new(Device::Cpu);
        let d = Discriminator::new(
            &vs.root(),
            &small(),
            7,
            2,
            ImageGeometry {
                channels: 3,
                size: 32,
            },
        );
        let x = Tensor::randn([4, 3, 32, 32], (Kind::Float, Device::Cpu)).set_requires_grad(true);
        let adv = d.forward_t(&x, true).adv;
        let g = Tensor::run_backward(&[adv.sum(Kind::Float)], &[&x], true, true).remove(0);
        g.square().sum(Kind::Float).backward();
        let grad = vs.variables()["blocks.0.conv0.weight"].grad();
        assert!(grad.defined() && grad.abs().sum(Kind::Float).double_value(&[]) > 0.0);
    }

    #[test]
    fn networks_are_send() {
        fn send<T: Send>() {}
        send::<Discriminator>();
        send::<crate::gan::Encoder>();
        send::<Box<dyn crate::gan::Generator>>();
    }

    #[test]
    fn minibatch_stddev_is_hand_computable() {
        // B = 2, group 2: samples 0 and 1 differ by 2 everywhere, so the (biased) std is 1.
        let x = Tensor::cat(
            &[
                Tensor::zeros([1, 2, 2, 2], (Kind::Float, Device::Cpu)),
                Tensor::full([1, 2, 2, 2], 2.0, (Kind::Float, Device::Cpu)),
            ],
            0,
        );
        let y = minibatch_stddev(&x, 4);
        assert_eq!(y.size(), vec![2, 3, 2, 2]);
        let extra = y.narrow(1, 2, 1);
        assert!((extra - 1.0).abs().max().double_value(&[]) < 1e-3);
        // B = 3 with group 4: the largest divisor is 3.
        assert_eq!(
            minibatch_stddev(&Tensor::randn([3, 2, 4, 4], (Kind::Float, Device::Cpu)), 4).size(),
            vec![3, 3, 4, 4]
        );
    }
}
