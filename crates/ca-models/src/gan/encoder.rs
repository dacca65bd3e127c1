//! An optional separate encoder `E(x) -> (z, s)` for the CA-GAN (docs/design.md 4.1, "option of a
//! separate encoder network"): the discriminator's trunk and encoder branch (see
//! [`super::discriminator`]) with only the `z` and `s` heads.
//!
//! Parameters: `from_rgb.*`, `blocks.{i}.conv{0,1}.*`, `enc_conv.*`, `enc_fc.*`, `z_out.*`,
//! `s_out.*` (the same names as in the discriminator, so weights can be copied across), and with
//! `separate_salient` `salient.from_rgb.*`, `salient.blocks.*`, `salient.enc_*` for `s`'s own trunk.

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
    /// `s`'s own trunk and hidden layer (`EncoderConfig::separate_salient`).
    salient: Option<(Trunk, Head)>,
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
        let salient = cfg.separate_salient.then(|| {
            let q = p / "salient";
            let t = Trunk::new(&q, cfg.base_channels, cfg.max_channels, eq, geom);
            let h = Head::new(&q, "enc", t.out_channels, t.out_channels, cfg.hidden, eq);
            (t, h)
        });
        Encoder {
            enc: Head::new(p, "enc", c, c, cfg.hidden, eq),
            trunk,
            salient,
            z_out: EqualLinear::new(&(p / "z_out"), cfg.hidden, dz, init),
            s_out: EqualLinear::new(&(p / "s_out"), cfg.hidden, ds, init),
        }
    }

    /// Encode `x [B, C, H, W]` in `[-1, 1]`. Each image is encoded independently; the network
    /// has no train/eval-dependent layer (`_train` is kept for a uniform interface).
    pub fn forward_t(&self, x: &Tensor, _train: bool) -> CaCode {
        self.forward_with_features(x).0
    }

    /// The code and the features `[B, hidden]` that the `z` head reads (shared with the `s`
    /// head unless `separate_salient`).
    pub fn forward_with_features(&self, x: &Tensor) -> (CaCode, Tensor) {
        let hidden = |trunk: &Trunk, head: &Head| {
            let feats = trunk.forward(x);
            head.forward(feats.last().expect("the trunk has at least one block"))
        };
        let e = hidden(&self.trunk, &self.enc);
        let s = match &self.salient {
            Some((t, h)) => self.s_out.forward(&hidden(t, h)),
            None => self.s_out.forward(&e),
        };
        (CaCode::new(self.z_out.forward(&e), s), e)
    }

    /// The salient code alone, `[B, ds]`: with `separate_salient` only `s`'s own trunk runs;
    /// otherwise the same as `forward_t(x, _).s`.
    pub fn salient(&self, x: &Tensor) -> Tensor {
        match &self.salient {
            Some((t, h)) => {
                let feats = t.forward(x);
                self.s_out
                    .forward(&h.forward(feats.last().expect("the trunk has at least one block")))
            }
            None => self.forward_with_features(x).0.s,
        }
    }

    /// The `z` head alone on given shared features (from [`Self::forward_with_features`]).
    pub fn z_from_features(&self, e: &Tensor) -> Tensor {
        self.z_out.forward(e)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gan::test_util::{dead_parameters, parameters_reached_by};
    use tch::{Device, Kind};

    #[test]
    fn encodes_to_the_code_shapes_and_trains_every_parameter() {
        tch::manual_seed(0);
        for (size, separate_salient) in [(32, false), (64, false), (32, true)] {
            let vs = nn::VarStore::new(Device::Cpu);
            let cfg = EncoderConfig {
                base_channels: 4,
                max_channels: 16,
                hidden: 8,
                equalized_lr: false,
                separate_salient,
            };
            let e = Encoder::new(&vs.root(), &cfg, 7, 2, ImageGeometry { channels: 3, size });
            let c = e.forward_t(
                &Tensor::randn([3, 3, size, size], (Kind::Float, Device::Cpu)),
                true,
            );
            assert_eq!((c.z.size(), c.s.size()), (vec![3, 7], vec![3, 2]));
            // `salient` alone gives the same `s` (it skips `z`'s trunk when it can).
            let x = Tensor::randn([3, 3, size, size], (Kind::Float, Device::Cpu));
            let diff = (e.salient(&x) - e.forward_t(&x, false).s).abs().max();
            assert_eq!(
                diff.double_value(&[]),
                0.0,
                "size {size}, {separate_salient}"
            );
            (c.z.sum(Kind::Float) + c.s.sum(Kind::Float)).backward();
            assert_eq!(dead_parameters(&vs), Vec::<String>::new());
        }
    }

    /// With `separate_salient`, `s` does not depend on `z`'s weights: a loss on `z` alone leaves
    /// no gradient on `s`'s trunk, and one on `s` none on `z`'s.
    #[test]
    fn separate_salient_trunk_is_independent_of_z() {
        tch::manual_seed(0);
        let vs = nn::VarStore::new(Device::Cpu);
        let cfg = EncoderConfig {
            base_channels: 4,
            max_channels: 8,
            hidden: 8,
            equalized_lr: true,
            separate_salient: true,
        };
        let geom = ImageGeometry {
            channels: 3,
            size: 32,
        };
        let e = Encoder::new(&vs.root(), &cfg, 5, 2, geom);
        let x = Tensor::randn([2, 3, 32, 32], (Kind::Float, Device::Cpu));
        let (c, _) = e.forward_with_features(&x);
        let from_z = parameters_reached_by(&vs, &c.z.square().sum(Kind::Float));
        assert!(!from_z.is_empty());
        assert!(
            from_z
                .iter()
                .all(|n| !n.starts_with("salient") && !n.starts_with("s_out")),
            "{from_z:?}"
        );
        let (c, _) = e.forward_with_features(&x);
        let from_s = parameters_reached_by(&vs, &c.s.square().sum(Kind::Float));
        assert!(!from_s.is_empty());
        assert!(
            from_s
                .iter()
                .all(|n| n.starts_with("salient") || n.starts_with("s_out")),
            "{from_s:?}"
        );
    }
}
