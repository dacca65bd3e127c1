//! A compact StyleGAN2 generator (Karras, Laine, Aittala, Hellsten, Lehtinen, Aila, "Analyzing
//! and Improving the Image Quality of StyleGAN", CVPR 2020, arXiv:1912.04958), decoding a CA code.
//!
//! * **Mapping network**: `[pixel_norm(z), s]` -> `mapping_layers` equalised linear layers with
//!   fused leaky ReLU (learning-rate multiplier 0.01) -> `w`. Only `z` is pixel-normalised: `s = 0`
//!   must stay the background and `a * s` must traverse the salient direction, which a
//!   normalisation of `s` would erase. No style mixing: every layer receives the same `w`.
//! * **Synthesis**: a learned constant `4x4` input; per resolution, a modulated 4x4 transposed
//!   convolution of stride 2 that doubles the resolution and a modulated 3x3 convolution (the
//!   first resolution has one 3x3 convolution), each followed
//!   by noise with a learned per-layer strength (initialised to 0) and a fused leaky ReLU; each
//!   layer's style comes from its own affine layer of `w` (`modulation`).
//! * **Skip toRGB**: at each resolution a modulated 1x1 convolution (no demodulation) to the
//!   image channels, added to the bilinearly upsampled image of the resolution below.
//! * **Equalised learning rate** everywhere (switchable: `equalized_lr`): weights are stored
//!   `N(0, 1)` and scaled by `1/sqrt(fan_in)` at run time.
//! * **Output**: linear (StyleGAN2), or `tanh` (config `output`).
//!
//! Simplifications against StyleGAN2: a 4x4 transposed convolution without the blur filter
//! instead of a 3x3 one with blur (measured 3-5x cheaper than nearest upsampling + 3x3
//! convolution on CPU, forward + backward), bilinear instead of FIR upsampling on the skip
//! path, no style mixing, no truncation, no path-length regulariser (a loss, not part of the
//! network).
//!
//! Parameter names follow rosinality's stylegan2-pytorch where it applies: `mapping.{i}`,
//! `input.input`, `conv1.*`, `to_rgb1.*`, `convs.{i}.{conv.weight, conv.modulation.*,
//! noise.weight, activate.bias}`, `to_rgbs.{i}.{conv.*, bias}`, and the fixed evaluation noise
//! `noises.noise_{j}` (not trained). Modulated conv weights are 4-D `[out, in, k, k]`.

use tch::{Device, Kind, Tensor, nn};

use super::config::channels_at;
use super::{Generator, OutputActivation, StyleConfig};
use crate::blocks::{EqualLinear, LayerInit, ModulatedConv2d, fused_leaky_relu};
use crate::{CaCode, ImageGeometry};

/// A modulated 3x3 convolution + noise + fused leaky ReLU.
#[derive(Debug)]
struct StyledConv {
    conv: ModulatedConv2d,
    noise_weight: Option<Tensor>,
    act_bias: Tensor,
}

impl StyledConv {
    #[allow(clippy::too_many_arguments)]
    fn new(
        p: &nn::Path,
        cin: i64,
        cout: i64,
        w_dim: i64,
        up: bool,
        noise: bool,
        eq: bool,
        mode: crate::blocks::ModConvMode,
    ) -> Self {
        let k = if up { 4 } else { 3 };
        let mut conv = ModulatedConv2d::new(&(p / "conv"), cin, cout, k, w_dim, true, up, eq);
        conv.mode = mode;
        let noise_weight = noise.then(|| (p / "noise").var("weight", &[1], nn::Init::Const(0.0)));
        let act_bias = (p / "activate").var("bias", &[cout], nn::Init::Const(0.0));
        StyledConv {
            conv,
            noise_weight,
            act_bias,
        }
    }

    /// `fixed`: the stored noise image `[1, 1, H, W]` for evaluation; `None` draws fresh noise.
    fn forward(&self, x: &Tensor, w: &Tensor, fixed: Option<&Tensor>) -> Tensor {
        let mut y = self.conv.forward(x, w);
        if let Some(nw) = &self.noise_weight {
            let n = match fixed {
                Some(f) => f.shallow_clone(),
                None => {
                    let s = y.size();
                    Tensor::randn([s[0], 1, s[2], s[3]], (y.kind(), y.device()))
                }
            };
            y = &y + n * nw;
        }
        fused_leaky_relu(&y, &self.act_bias)
    }
}

/// Modulated 1x1 convolution to the image channels, no demodulation, plus a bias.
#[derive(Debug)]
struct ToRgb {
    conv: ModulatedConv2d,
    bias: Tensor,
}

impl ToRgb {
    fn new(
        p: &nn::Path,
        cin: i64,
        channels: i64,
        w_dim: i64,
        eq: bool,
        mode: crate::blocks::ModConvMode,
    ) -> Self {
        let mut conv =
            ModulatedConv2d::new(&(p / "conv"), cin, channels, 1, w_dim, false, false, eq);
        conv.mode = mode;
        let bias = p.var("bias", &[channels], nn::Init::Const(0.0));
        ToRgb { conv, bias }
    }

    fn forward(&self, x: &Tensor, w: &Tensor, skip: Option<&Tensor>) -> Tensor {
        let y = self.conv.forward(x, w) + self.bias.view([1, -1, 1, 1]);
        match skip {
            Some(s) => {
                let (h, wd) = (s.size()[2], s.size()[3]);
                y + s.upsample_bilinear2d([2 * h, 2 * wd], false, None, None)
            }
            None => y,
        }
    }
}

/// The compact StyleGAN2 generator `G(z, s)`; see the module documentation.
#[derive(Debug)]
pub struct StyleGenerator {
    mapping: Vec<EqualLinear>,
    input: Tensor,
    conv1: StyledConv,
    to_rgb1: ToRgb,
    convs: Vec<StyledConv>,
    to_rgbs: Vec<ToRgb>,
    noises: Vec<Tensor>,
    normalize_z: bool,
    output: OutputActivation,
    dz: i64,
    ds: i64,
}

impl StyleGenerator {
    /// Build under `p` for codes with `dz` common and `ds` salient factors and the given geometry
    /// (a power-of-two size >= 8; the config validation allows 32, 64, 128).
    pub fn new(p: &nn::Path, cfg: &StyleConfig, dz: i64, ds: i64, geom: ImageGeometry) -> Self {
        assert!(
            geom.size >= 8 && geom.size.count_ones() == 1,
            "style generator needs a power-of-two size >= 8, got {}",
            geom.size
        );
        let eq = cfg.equalized_lr;
        let ch = |res: i64| channels_at(cfg.base_channels, cfg.max_channels, geom.size, res);
        let map_p = p / "mapping";
        let mapping = (0..cfg.mapping_layers)
            .map(|i| {
                let din = if i == 0 { dz + ds } else { cfg.w_dim };
                let init = LayerInit {
                    equalized: eq,
                    lr_mul: cfg.mapping_lr_mul,
                    bias_init: 0.0,
                    bias: true,
                };
                EqualLinear::new(&(&map_p / i), din, cfg.w_dim, init)
            })
            .collect();
        let input = (p / "input").var(
            "input",
            &[1, ch(4), 4, 4],
            nn::Init::Randn {
                mean: 0.0,
                stdev: 1.0,
            },
        );
        let mode = cfg.mod_conv;
        let conv1 = StyledConv::new(
            &(p / "conv1"),
            ch(4),
            ch(4),
            cfg.w_dim,
            false,
            cfg.noise,
            eq,
            mode,
        );
        let to_rgb1 = ToRgb::new(&(p / "to_rgb1"), ch(4), geom.channels, cfg.w_dim, eq, mode);
        let (mut convs, mut to_rgbs) = (Vec::new(), Vec::new());
        let mut noise_res = vec![4];
        let mut res = 8;
        while res <= geom.size {
            let (cin, cout) = (ch(res / 2), ch(res));
            let i = convs.len() as i64;
            convs.push(StyledConv::new(
                &(p / "convs" / i),
                cin,
                cout,
                cfg.w_dim,
                true,
                cfg.noise,
                eq,
                mode,
            ));
            convs.push(StyledConv::new(
                &(p / "convs" / (i + 1)),
                cout,
                cout,
                cfg.w_dim,
                false,
                cfg.noise,
                eq,
                mode,
            ));
            to_rgbs.push(ToRgb::new(
                &(p / "to_rgbs" / (i / 2)),
                cout,
                geom.channels,
                cfg.w_dim,
                eq,
                mode,
            ));
            noise_res.extend([res, res]);
            res *= 2;
        }
        let noises = if cfg.noise {
            let np = p / "noises";
            noise_res
                .iter()
                .enumerate()
                .map(|(j, &r)| {
                    let mut t = np.zeros_no_train(&format!("noise_{j}"), &[1, 1, r, r]);
                    tch::no_grad(|| {
                        let _ = t.normal_(0.0, 1.0);
                    });
                    t
                })
                .collect()
        } else {
            Vec::new()
        };
        StyleGenerator {
            mapping,
            input,
            conv1,
            to_rgb1,
            convs,
            to_rgbs,
            noises,
            normalize_z: cfg.normalize_z,
            output: cfg.output,
            dz,
            ds,
        }
    }

    /// The mapping network: a code `[B, dz + ds]` -> `w [B, w_dim]`.
    pub fn mapping(&self, code: &CaCode) -> Tensor {
        assert!(
            code.dz() == self.dz && code.ds() == self.ds,
            "style generator built for dz={} ds={}, got a code with dz={} ds={}",
            self.dz,
            self.ds,
            code.dz(),
            code.ds()
        );
        let z = if self.normalize_z {
            &code.z * (code.z.square().mean_dim(1, true, Kind::Float) + 1e-8).rsqrt()
        } else {
            code.z.shallow_clone()
        };
        let mut w = Tensor::cat(&[&z, &code.s], 1);
        for l in &self.mapping {
            w = l.forward_lrelu(&w);
        }
        w
    }

    /// The synthesis network from `w [B, w_dim]`.
    pub fn synthesis(&self, w: &Tensor, train: bool) -> Tensor {
        let b = w.size()[0];
        let fixed = |j: usize| if train { None } else { self.noises.get(j) };
        let x = self.input.expand([b, -1, -1, -1], false);
        let mut x = self.conv1.forward(&x, w, fixed(0));
        let mut skip = self.to_rgb1.forward(&x, w, None);
        for (i, rgb) in self.to_rgbs.iter().enumerate() {
            x = self.convs[2 * i].forward(&x, w, fixed(2 * i + 1));
            x = self.convs[2 * i + 1].forward(&x, w, fixed(2 * i + 2));
            skip = rgb.forward(&x, w, Some(&skip));
        }
        match self.output {
            OutputActivation::Linear => skip,
            OutputActivation::Tanh => skip.tanh(),
        }
    }

    /// The device of the parameters.
    pub fn device(&self) -> Device {
        self.input.device()
    }
}

impl Generator for StyleGenerator {
    fn forward_t(&self, code: &CaCode, train: bool) -> Tensor {
        self.synthesis(&self.mapping(code), train)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gan::test_util::{code, dead_parameters};

    fn small() -> StyleConfig {
        StyleConfig {
            w_dim: 16,
            base_channels: 4,
            max_channels: 16,
            mapping_layers: 2,
            ..StyleConfig::default()
        }
    }

    #[test]
    fn shapes_for_32_64_128() {
        tch::manual_seed(0);
        for (size, ch) in [(32, 3), (64, 1), (128, 3)] {
            let vs = nn::VarStore::new(Device::Cpu);
            let g = StyleGenerator::new(
                &vs.root(),
                &small(),
                5,
                2,
                ImageGeometry { channels: ch, size },
            );
            let y = g.forward_t(&code(2, 5, 2), true);
            assert_eq!(y.size(), vec![2, ch, size, size]);
            assert!(bool::try_from(y.isfinite().all()).unwrap());
        }
    }

    #[test]
    fn gradients_reach_every_parameter() {
        tch::manual_seed(0);
        for noise in [true, false] {
            let vs = nn::VarStore::new(Device::Cpu);
            let cfg = StyleConfig {
                noise,
                output: OutputActivation::Tanh,
                ..small()
            };
            let g = StyleGenerator::new(
                &vs.root(),
                &cfg,
                5,
                2,
                ImageGeometry {
                    channels: 3,
                    size: 32,
                },
            );
            let y = g.forward_t(&code(3, 5, 2), true);
            (y * Tensor::randn([3, 3, 32, 32], (Kind::Float, Device::Cpu)))
                .sum(Kind::Float)
                .backward();
            assert_eq!(dead_parameters(&vs), Vec::<String>::new(), "noise={noise}");
        }
    }

    #[test]
    fn eval_is_deterministic_and_train_is_noisy() {
        tch::manual_seed(0);
        let vs = nn::VarStore::new(Device::Cpu);
        let g = StyleGenerator::new(
            &vs.root(),
            &small(),
            5,
            2,
            ImageGeometry {
                channels: 3,
                size: 32,
            },
        );
        tch::no_grad(|| {
            for (name, mut v) in vs.variables() {
                if name.ends_with("noise.weight") {
                    let _ = v.fill_(0.5);
                }
            }
        });
        let c = code(2, 5, 2);
        assert!(g.forward_t(&c, false).equal(&g.forward_t(&c, false)));
        assert!(!g.forward_t(&c, true).equal(&g.forward_t(&c, true)));
    }

    #[test]
    fn background_code_is_not_renormalised() {
        // s = 0 and s = 0 scaled give the same w; s and 2s give different w.
        tch::manual_seed(0);
        let vs = nn::VarStore::new(Device::Cpu);
        let g = StyleGenerator::new(
            &vs.root(),
            &small(),
            5,
            2,
            ImageGeometry {
                channels: 3,
                size: 32,
            },
        );
        let c = code(2, 5, 2);
        let twice = CaCode::new(c.z.shallow_clone(), &c.s * 2.0);
        assert!(
            !g.mapping(&c)
                .allclose(&g.mapping(&twice), 1e-5, 1e-6, false)
        );
        let zscaled = CaCode::background(&c.z * 3.0, 2);
        let bg = c.without_salient();
        assert!(
            g.mapping(&bg)
                .allclose(&g.mapping(&zscaled), 1e-4, 1e-5, false)
        );
    }

    /// `(name, shape)` of the default 32x32 RGB style generator with dz = 95, ds = 5.
    /// To refresh after a deliberate change: run
    /// `CA_SNAPSHOT_PRINT=1 cargo test -p ca-models default_style_snapshot -- --nocapture`
    /// and paste the printed block here (one `name [shape]` per line, sorted by name).
    const DEFAULT_STYLE_32: &str = "
conv1.activate.bias [64]
conv1.conv.modulation.bias [64]
conv1.conv.modulation.weight [64, 128]
conv1.conv.weight [64, 64, 3, 3]
conv1.noise.weight [1]
convs.0.activate.bias [64]
convs.0.conv.modulation.bias [64]
convs.0.conv.modulation.weight [64, 128]
convs.0.conv.weight [64, 64, 4, 4]
convs.0.noise.weight [1]
convs.1.activate.bias [64]
convs.1.conv.modulation.bias [64]
convs.1.conv.modulation.weight [64, 128]
convs.1.conv.weight [64, 64, 3, 3]
convs.1.noise.weight [1]
convs.2.activate.bias [32]
convs.2.conv.modulation.bias [64]
convs.2.conv.modulation.weight [64, 128]
convs.2.conv.weight [32, 64, 4, 4]
convs.2.noise.weight [1]
convs.3.activate.bias [32]
convs.3.conv.modulation.bias [32]
convs.3.conv.modulation.weight [32, 128]
convs.3.conv.weight [32, 32, 3, 3]
convs.3.noise.weight [1]
convs.4.activate.bias [16]
convs.4.conv.modulation.bias [32]
convs.4.conv.modulation.weight [32, 128]
convs.4.conv.weight [16, 32, 4, 4]
convs.4.noise.weight [1]
convs.5.activate.bias [16]
convs.5.conv.modulation.bias [16]
convs.5.conv.modulation.weight [16, 128]
convs.5.conv.weight [16, 16, 3, 3]
convs.5.noise.weight [1]
input.input [1, 64, 4, 4]
mapping.0.bias [128]
mapping.0.weight [128, 100]
mapping.1.bias [128]
mapping.1.weight [128, 128]
mapping.2.bias [128]
mapping.2.weight [128, 128]
mapping.3.bias [128]
mapping.3.weight [128, 128]
noises.noise_0 [1, 1, 4, 4]
noises.noise_1 [1, 1, 8, 8]
noises.noise_2 [1, 1, 8, 8]
noises.noise_3 [1, 1, 16, 16]
noises.noise_4 [1, 1, 16, 16]
noises.noise_5 [1, 1, 32, 32]
noises.noise_6 [1, 1, 32, 32]
to_rgb1.bias [3]
to_rgb1.conv.modulation.bias [64]
to_rgb1.conv.modulation.weight [64, 128]
to_rgb1.conv.weight [3, 64, 1, 1]
to_rgbs.0.bias [3]
to_rgbs.0.conv.modulation.bias [64]
to_rgbs.0.conv.modulation.weight [64, 128]
to_rgbs.0.conv.weight [3, 64, 1, 1]
to_rgbs.1.bias [3]
to_rgbs.1.conv.modulation.bias [32]
to_rgbs.1.conv.modulation.weight [32, 128]
to_rgbs.1.conv.weight [3, 32, 1, 1]
to_rgbs.2.bias [3]
to_rgbs.2.conv.modulation.bias [16]
to_rgbs.2.conv.modulation.weight [16, 128]
to_rgbs.2.conv.weight [3, 16, 1, 1]
";

    #[test]
    fn default_style_snapshot() {
        let vs = nn::VarStore::new(Device::Cpu);
        let _g = StyleGenerator::new(
            &vs.root(),
            &StyleConfig::default(),
            95,
            5,
            ImageGeometry {
                channels: 3,
                size: 32,
            },
        );
        let mut rows: Vec<(String, Vec<i64>)> = vs
            .variables()
            .into_iter()
            .map(|(n, t)| (n, t.size()))
            .collect();
        rows.sort();
        let got: String = rows.iter().map(|(n, s)| format!("{n} {s:?}\n")).collect();
        if std::env::var_os("CA_SNAPSHOT_PRINT").is_some() {
            println!("{got}");
        }
        assert_eq!(
            got.trim(),
            DEFAULT_STYLE_32.trim(),
            "parameter names or shapes changed; see the doc comment to refresh"
        );
    }
}
