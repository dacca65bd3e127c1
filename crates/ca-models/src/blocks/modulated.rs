//! The modulated / demodulated convolution of StyleGAN2 (Karras, Laine, Aittala, Hellsten,
//! Lehtinen, Aila, "Analyzing and Improving the Image Quality of StyleGAN", CVPR 2020,
//! arXiv:1912.04958, section 2.2).
//!
//! For a sample with style `s [Cin]` the kernel is `w'[o,i,k] = w[o,i,k] * s[i]`, and with
//! demodulation `w''[o,i,k] = w'[o,i,k] / sqrt(sum_{i,k} w'[o,i,k]^2 + 1e-8)`.
//! Two equivalent ways to apply a per-sample kernel are offered ([`ModConvMode`]):
//! * `Grouped`: build the `B` kernels and run one grouped convolution over `[1, B*Cin, H, W]`
//!   (StyleGAN2's "fused" path);
//! * `Scaled`: scale the input channels by `s`, run one ordinary batched convolution with the
//!   shared weight, and scale the output channels by the demodulation factors
//!   (StyleGAN2's `fused_modconv = False` path). On CPU this is 1.1x to 7x faster
//!   (measured here with PyTorch 2.11 on 2 cores, batch 64: 14.6 ms against 104 ms for
//!   128 channels at 8x8, forward + backward), so it is the default.

use tch::{Kind, Tensor, nn};

use super::equalized::{EqualLinear, LayerInit};

/// How the per-sample kernels are applied (the result is the same up to rounding).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ModConvMode {
    /// One grouped convolution over `[1, B*Cin, H, W]` with `B` modulated kernels.
    Grouped,
    /// Input scaled by the style, shared-weight convolution, output scaled by demodulation.
    #[default]
    Scaled,
}

/// A modulated convolution: parameters `weight [out, in, k, k]` and the style affine
/// `modulation.{weight [in, w_dim], bias [in]}` (bias initialised to 1, as StyleGAN2).
#[derive(Debug)]
pub struct ModulatedConv2d {
    /// Stored weight `[out, in, k, k]` (`N(0, 1)`, scaled by `1/sqrt(in*k*k)` at run time).
    pub weight: Tensor,
    /// The affine layer from `w` to the per-input-channel style.
    pub modulation: EqualLinear,
    scale: f64,
    demodulate: bool,
    upsample: bool,
    /// How per-sample kernels are applied.
    pub mode: ModConvMode,
}

impl ModulatedConv2d {
    /// A `k x k` modulated convolution under `p` (odd `k`, same padding). With `upsample`, a
    /// stride-2 transposed convolution that doubles the resolution instead (use `k = 4`, padding
    /// 1: each output pixel sees 2x2 taps; the demodulation is scaled by 2 to keep unit variance). `equalized` is the equalised learning
    /// rate of the convolution and modulation weights.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        p: &nn::Path,
        in_ch: i64,
        out_ch: i64,
        k: i64,
        w_dim: i64,
        demodulate: bool,
        upsample: bool,
        equalized: bool,
    ) -> Self {
        let fan_in = (in_ch * k * k) as f64;
        let (std, scale) = if equalized {
            (1.0, 1.0 / fan_in.sqrt())
        } else {
            (1.0 / fan_in.sqrt(), 1.0)
        };
        let weight = p.var(
            "weight",
            &[out_ch, in_ch, k, k],
            nn::Init::Randn {
                mean: 0.0,
                stdev: std,
            },
        );
        let init = LayerInit {
            equalized,
            lr_mul: 1.0,
            bias_init: 1.0,
            bias: true,
        };
        let modulation = EqualLinear::new(&(p / "modulation"), w_dim, in_ch, init);
        ModulatedConv2d {
            weight,
            modulation,
            scale,
            demodulate,
            upsample,
            mode: ModConvMode::default(),
        }
    }

    /// Number of output channels.
    pub fn out_channels(&self) -> i64 {
        self.weight.size()[0]
    }

    /// `x [B, in, H, W]`, `w [B, w_dim]` -> `[B, out, H', W']` (`H' = 2H` with upsampling).
    pub fn forward(&self, x: &Tensor, w: &Tensor) -> Tensor {
        let style = self.modulation.forward(w);
        self.forward_with_style(x, &style)
    }

    /// The same with the per-input-channel style `[B, in]` given directly.
    pub fn forward_with_style(&self, x: &Tensor, style: &Tensor) -> Tensor {
        match self.mode {
            ModConvMode::Grouped => self.grouped(x, style),
            ModConvMode::Scaled => self.scaled(x, style),
        }
    }

    /// The demodulation gain: 1, or 2 for the stride-2 transposed convolution, where each output
    /// pixel sees only a quarter of the kernel taps (keeps unit output variance).
    fn demod_gain(&self) -> f64 {
        if self.upsample { 2.0 } else { 1.0 }
    }

    /// Ordinary or stride-2 transposed convolution of `x` with `w [out, in, k, k]`, `groups`.
    fn apply(&self, x: &Tensor, w: &Tensor, groups: i64) -> Tensor {
        let k = w.size()[2];
        if self.upsample {
            // conv_transpose2d wants [in, out/groups, k, k]: swap per group.
            let [o, i, _, _] = w.size()[..] else {
                unreachable!()
            };
            let wt = w
                .view([groups, o / groups, i, k, k])
                .transpose(1, 2)
                .reshape([groups * i, o / groups, k, k]);
            x.conv_transpose2d::<Tensor>(&wt, None, [2], [(k - 1) / 2], [0], groups, [1])
        } else {
            x.conv2d::<Tensor>(w, None, [1], [k / 2], [1], groups)
        }
    }

    fn grouped(&self, x: &Tensor, style: &Tensor) -> Tensor {
        let [b, cin, h, wd] = x.size()[..] else {
            panic!("ModulatedConv2d: x must be 4-D, got {:?}", x.size())
        };
        let [cout, _, k, _] = self.weight.size()[..] else {
            unreachable!()
        };
        // [B, out, in, k, k]
        let wk = (&self.weight * self.scale).unsqueeze(0) * style.view([b, 1, cin, 1, 1]);
        let wk = if self.demodulate {
            let d = (wk
                .square()
                .sum_dim_intlist([2i64, 3, 4].as_slice(), true, Kind::Float)
                + 1e-8)
                .rsqrt();
            wk * (d * self.demod_gain())
        } else {
            wk
        };
        let y = self.apply(
            &x.reshape([1, b * cin, h, wd]),
            &wk.reshape([b * cout, cin, k, k]),
            b,
        );
        let (ho, wo) = (y.size()[2], y.size()[3]);
        y.view([b, cout, ho, wo])
    }

    fn scaled(&self, x: &Tensor, style: &Tensor) -> Tensor {
        let [b, cin, _, _] = x.size()[..] else {
            panic!("ModulatedConv2d: x must be 4-D, got {:?}", x.size())
        };
        let w = &self.weight * self.scale;
        let y = self.apply(&(x * style.view([b, cin, 1, 1])), &w, 1);
        if self.demodulate {
            // d[b, o] = 1 / sqrt(sum_i s[b,i]^2 * sum_k w[o,i,k]^2 + 1e-8)
            let w2 = w
                .square()
                .sum_dim_intlist([2i64, 3].as_slice(), false, Kind::Float); // [out, in]
            let d = (style.square().matmul(&w2.tr()) + 1e-8).rsqrt() * self.demod_gain(); // [B, out]
            let cout = d.size()[1];
            y * d.view([b, cout, 1, 1])
        } else {
            y
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::Device;

    /// The reference: one ordinary convolution per sample with its own modulated kernel.
    fn per_sample(m: &ModulatedConv2d, x: &Tensor, w: &Tensor) -> Tensor {
        let style = m.modulation.forward(w);
        let b = x.size()[0];
        let outs: Vec<Tensor> = (0..b)
            .map(|i| {
                let mut wk = &m.weight * m.scale * style.get(i).view([1, -1, 1, 1]);
                if m.demodulate {
                    let d =
                        (wk.square()
                            .sum_dim_intlist([1i64, 2, 3].as_slice(), true, Kind::Float)
                            + 1e-8)
                            .rsqrt();
                    wk = &wk * d;
                }
                let xi = x.narrow(0, i, 1);
                if m.upsample {
                    // Transposed convolution: the kernel as [in, out, k, k].
                    let gain = if m.demodulate { 2.0 } else { 1.0 };
                    let wt = wk.transpose(0, 1).contiguous() * gain;
                    xi.conv_transpose2d::<Tensor>(&wt, None, [2], [1], [0], 1, [1])
                } else {
                    xi.conv2d::<Tensor>(&wk, None, [1], [m.weight.size()[2] / 2], [1], 1)
                }
            })
            .collect();
        Tensor::cat(&outs, 0)
    }

    #[test]
    fn both_modes_match_a_per_sample_loop() {
        tch::manual_seed(1);
        for (demodulate, upsample, k) in [(true, false, 3), (true, true, 4), (false, false, 1)] {
            let vs = nn::VarStore::new(Device::Cpu);
            let mut m = ModulatedConv2d::new(&vs.root(), 5, 7, k, 6, demodulate, upsample, true);
            let x = Tensor::randn([3, 5, 4, 4], (Kind::Float, Device::Cpu));
            let w = Tensor::randn([3, 6], (Kind::Float, Device::Cpu));
            let want = per_sample(&m, &x, &w);
            for mode in [ModConvMode::Grouped, ModConvMode::Scaled] {
                m.mode = mode;
                let got = m.forward(&x, &w);
                assert_eq!(got.size(), want.size());
                let err = (&got - &want).abs().max().double_value(&[]);
                assert!(
                    err < 1e-4,
                    "{mode:?} demod={demodulate} up={upsample} k={k}: max err {err}"
                );
            }
        }
    }

    #[test]
    fn demodulation_gives_unit_output_variance() {
        tch::manual_seed(2);
        let vs = nn::VarStore::new(Device::Cpu);
        let m = ModulatedConv2d::new(&vs.root(), 64, 64, 3, 16, true, false, true);
        let x = Tensor::randn([8, 64, 8, 8], (Kind::Float, Device::Cpu));
        let w = Tensor::randn([8, 16], (Kind::Float, Device::Cpu)) * 3.0;
        // Each output channel's kernel has unit L2 norm, so with unit-variance i.i.d. inputs the
        // output variance is 1 (interior pixels; zero padding lowers the border a little).
        let y = m.forward(&x, &w).narrow(2, 1, 6).narrow(3, 1, 6);
        let std = y.std(true).double_value(&[]);
        assert!((std - 1.0).abs() < 0.1, "std {std}");
    }
}
