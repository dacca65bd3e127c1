//! The conditional UNet denoiser `eps(x_t, t, z, s)` of CA-diffusion.
//!
//! Architecture after DiffAE (Preechakul, Chatthee, Wizadwongsa & Suwajanakorn 2022,
//! "Diffusion Autoencoders: Toward a Meaningful and Decodable Representation", arXiv 2111.15640),
//! itself the ADM UNet of Dhariwal & Nichol 2021 (arXiv 2105.05233): residual blocks with group
//! norm, SiLU and dropout; a sinusoidal time embedding (Vaswani et al. 2017, as in DDPM);
//! self-attention at low resolutions; strided-conv downsampling, nearest + conv upsampling, skip
//! connections between the two paths; zero-initialised output convolutions.
//!
//! Conditioning is DiffAE's adaptive group norm, with the semantic code replaced by the CA code:
//! in every residual block
//! `h = GN(h); h = h * (1 + t_scale) + t_shift; h = h * (1 + c_scale)`, where
//! `(t_scale, t_shift)` come from the time embedding and `c_scale` from an MLP of `[z, s]`.
//! Background images are conditioned with `s = 0` ([`CaCode::background`]).

use super::ddim::Denoiser;
use super::{DiffusionError, DiffusionModelConfig, Prediction};
use crate::{CaCode, ImageGeometry};
use tch::nn::{self, Module};
use tch::{Kind, Tensor};

/// Sinusoidal embedding of (possibly fractional) timesteps: `[B] -> [B, dim]`, the first half
/// `cos(t w_i)`, the second `sin(t w_i)`, `w_i = 10000^(-i / (dim / 2))`. `dim` must be even.
pub fn timestep_embedding(t: &Tensor, dim: i64) -> Tensor {
    assert!(
        dim % 2 == 0 && dim > 0,
        "timestep embedding dim must be even, got {dim}"
    );
    assert_eq!(t.dim(), 1, "timesteps must be [B], got {:?}", t.size());
    let half = dim / 2;
    let freqs =
        (Tensor::arange(half, (Kind::Float, t.device())) * (-(10000f64.ln()) / half as f64)).exp();
    let args = t.to_kind(Kind::Float).unsqueeze(1) * freqs.unsqueeze(0);
    Tensor::cat(&[args.cos(), args.sin()], 1)
}

/// PyTorch's default conv/linear weight init (`kaiming_uniform(a = sqrt(5))`, i.e. uniform in
/// `+-1/sqrt(fan_in)`), instead of tch's ReLU-gain default.
pub(crate) const TORCH_DEFAULT_INIT: nn::Init = nn::Init::Kaiming {
    dist: nn::init::NormalOrUniform::Uniform,
    fan: nn::init::FanInOut::FanIn,
    non_linearity: nn::init::NonLinearity::ExplicitGain(0.577_350_269_189_625_8),
};

pub(crate) fn conv3(p: nn::Path, cin: i64, cout: i64, stride: i64) -> nn::Conv2D {
    let cfg = nn::ConvConfig {
        stride,
        padding: 1,
        ws_init: TORCH_DEFAULT_INIT,
        ..Default::default()
    };
    nn::conv2d(p, cin, cout, 3, cfg)
}

fn conv1(p: nn::Path, cin: i64, cout: i64, zero: bool) -> nn::Conv2D {
    let ws_init = if zero {
        nn::Init::Const(0.0)
    } else {
        TORCH_DEFAULT_INIT
    };
    nn::conv2d(
        p,
        cin,
        cout,
        1,
        nn::ConvConfig {
            ws_init,
            ..Default::default()
        },
    )
}

pub(crate) fn zero_conv3(p: nn::Path, cin: i64, cout: i64) -> nn::Conv2D {
    let cfg = nn::ConvConfig {
        padding: 1,
        ws_init: nn::Init::Const(0.0),
        ..Default::default()
    };
    nn::conv2d(p, cin, cout, 3, cfg)
}

pub(crate) fn linear(p: nn::Path, i: i64, o: i64) -> nn::Linear {
    nn::linear(
        p,
        i,
        o,
        nn::LinearConfig {
            ws_init: TORCH_DEFAULT_INIT,
            ..Default::default()
        },
    )
}

pub(crate) fn group_norm(p: nn::Path, groups: i64, ch: i64) -> nn::GroupNorm {
    nn::group_norm(p, groups, ch, Default::default())
}

/// A residual block; with embeddings it applies DiffAE's adaptive group norm.
#[derive(Debug)]
pub(crate) struct ResBlock {
    in_norm: nn::GroupNorm,
    in_conv: nn::Conv2D,
    time: Option<nn::Linear>,
    cond: Option<nn::Linear>,
    out_norm: nn::GroupNorm,
    dropout: f64,
    out_conv: nn::Conv2D,
    skip: Option<nn::Conv2D>,
    out_ch: i64,
}

/// Embedding widths a residual block is conditioned on (`None`: unconditioned, as in the
/// encoder).
#[derive(Debug, Clone, Copy)]
pub(crate) struct EmbDims {
    pub time: i64,
    pub cond: i64,
}

impl ResBlock {
    pub(crate) fn new(
        p: &nn::Path,
        cin: i64,
        cout: i64,
        groups: i64,
        emb: Option<EmbDims>,
        dropout: f64,
    ) -> Self {
        ResBlock {
            in_norm: group_norm(p / "in_norm", groups, cin),
            in_conv: conv3(p / "in_conv", cin, cout, 1),
            time: emb.map(|e| linear(p / "time_emb", e.time, 2 * cout)),
            cond: emb.map(|e| linear(p / "cond_emb", e.cond, cout)),
            out_norm: group_norm(p / "out_norm", groups, cout),
            dropout,
            out_conv: zero_conv3(p / "out_conv", cout, cout),
            skip: (cin != cout).then(|| conv1(p / "skip", cin, cout, false)),
            out_ch: cout,
        }
    }

    /// `temb` and `cemb` are the (already SiLU-free) embeddings `[B, time]`, `[B, cond]`.
    pub(crate) fn forward(
        &self,
        x: &Tensor,
        emb: Option<(&Tensor, &Tensor)>,
        train: bool,
    ) -> Tensor {
        let h = self.in_conv.forward(&self.in_norm.forward(x).silu());
        let mut h = self.out_norm.forward(&h);
        if let (Some(tl), Some(cl), Some((temb, cemb))) = (&self.time, &self.cond, emb) {
            let ts = tl.forward(&temb.silu()).unsqueeze(-1).unsqueeze(-1);
            let parts = ts.split(self.out_ch, 1);
            let c_scale = cl.forward(&cemb.silu()).unsqueeze(-1).unsqueeze(-1);
            h = (h * (&parts[0] + 1.0) + &parts[1]) * (c_scale + 1.0);
        }
        let h = self
            .out_conv
            .forward(&h.silu().dropout(self.dropout, train));
        match &self.skip {
            Some(s) => s.forward(x) + h,
            None => x + h,
        }
    }
}

/// Multi-head self-attention over the pixels of a feature map, residual, zero-initialised output.
#[derive(Debug)]
pub(crate) struct AttnBlock {
    norm: nn::GroupNorm,
    qkv: nn::Conv2D,
    proj: nn::Conv2D,
    heads: i64,
}

impl AttnBlock {
    pub(crate) fn new(p: &nn::Path, ch: i64, groups: i64, heads: i64) -> Self {
        assert!(
            ch % heads == 0,
            "attention: {heads} heads do not divide {ch} channels"
        );
        AttnBlock {
            norm: group_norm(p / "norm", groups, ch),
            qkv: conv1(p / "qkv", ch, 3 * ch, false),
            proj: conv1(p / "proj", ch, ch, true),
            heads,
        }
    }

    pub(crate) fn forward(&self, x: &Tensor) -> Tensor {
        let (b, c, h, w) = x.size4().expect("attention input must be [B, C, H, W]");
        let d = c / self.heads;
        // [B, 3, heads, d, L] -> three [B, heads, L, d]
        let qkv = self
            .qkv
            .forward(&self.norm.forward(x))
            .view([b, 3, self.heads, d, h * w]);
        let part = |i: i64| qkv.select(1, i).transpose(-1, -2);
        // softmax(q k^T / sqrt(d)) v with plain matmuls (maps here are at most 16x16 = 256
        // tokens, so the [L, L] matrix is small).
        let (q, k, v) = (part(0), part(1), part(2));
        let attn =
            (q.matmul(&k.transpose(-1, -2)) * (1.0 / (d as f64).sqrt())).softmax(-1, q.kind());
        let out = attn.matmul(&v);
        let out = out.transpose(-1, -2).reshape([b, c, h, w]);
        x + self.proj.forward(&out)
    }
}

#[derive(Debug)]
enum DownItem {
    Res(Box<ResBlock>, Option<Box<AttnBlock>>),
    Down(nn::Conv2D),
}

#[derive(Debug)]
struct UpItem {
    res: ResBlock,
    attn: Option<AttnBlock>,
    up: Option<nn::Conv2D>,
}

/// The conditional UNet `eps(x_t, t, z, s)` (or `v(...)`, see [`Prediction`]).
#[derive(Debug)]
pub struct CondUnet {
    geom: ImageGeometry,
    dz: i64,
    ds: i64,
    time_dim: i64,
    prediction: Prediction,
    down_factor: i64,
    time_fc1: nn::Linear,
    time_fc2: nn::Linear,
    cond_fc1: nn::Linear,
    cond_fc2: nn::Linear,
    input_conv: nn::Conv2D,
    down: Vec<DownItem>,
    mid1: ResBlock,
    mid_attn: Option<AttnBlock>,
    mid2: ResBlock,
    up: Vec<UpItem>,
    out_norm: nn::GroupNorm,
    out_conv: nn::Conv2D,
}

impl CondUnet {
    /// Build the UNet under `p` (parameter names: `time_embed`, `cond_embed`, `input_conv`,
    /// `down/<i>`, `middle`, `up/<i>`, `out_norm`, `out_conv`). Validates `cfg` and `geom`.
    pub fn new(
        p: &nn::Path,
        cfg: &DiffusionModelConfig,
        geom: ImageGeometry,
    ) -> Result<Self, DiffusionError> {
        cfg.validate()?;
        cfg.validate_geometry(geom)?;
        let g = cfg.norm_groups;
        let emb = Some(EmbDims {
            time: cfg.time_embed_dim,
            cond: cfg.cond_embed_dim,
        });
        let te = p / "time_embed";
        let ce = p / "cond_embed";
        let base = cfg.base_channels;
        let attn_at = |res: i64| cfg.attention_resolutions.contains(&res);
        let mk_attn = |pp: nn::Path, ch: i64| AttnBlock::new(&pp, ch, g, cfg.attention_heads);

        let mut ch = base;
        let mut skips = vec![ch];
        let mut res = geom.size;
        let mut down = Vec::new();
        let dp = p / "down";
        let levels = cfg.channel_mult.len();
        for (level, m) in cfg.channel_mult.iter().enumerate() {
            let out = base * m;
            for _ in 0..cfg.res_blocks {
                let ip = &dp / down.len();
                let block = ResBlock::new(&(&ip / "res"), ch, out, g, emb, cfg.dropout);
                let attn = attn_at(res).then(|| mk_attn(&ip / "attn", out));
                down.push(DownItem::Res(Box::new(block), attn.map(Box::new)));
                ch = out;
                skips.push(ch);
            }
            if level + 1 < levels {
                down.push(DownItem::Down(conv3(&dp / down.len() / "down", ch, ch, 2)));
                skips.push(ch);
                res /= 2;
            }
        }
        let mp = p / "middle";
        let mid1 = ResBlock::new(&(&mp / "res1"), ch, ch, g, emb, cfg.dropout);
        let mid_attn = attn_at(res).then(|| mk_attn(&mp / "attn", ch));
        let mid2 = ResBlock::new(&(&mp / "res2"), ch, ch, g, emb, cfg.dropout);

        let mut up = Vec::new();
        let upp = p / "up";
        for (level, m) in cfg.channel_mult.iter().enumerate().rev() {
            let out = base * m;
            for i in 0..=cfg.res_blocks {
                let ip = &upp / up.len();
                let skip = skips.pop().expect("one skip per down item");
                let block = ResBlock::new(&(&ip / "res"), ch + skip, out, g, emb, cfg.dropout);
                ch = out;
                let attn = attn_at(res).then(|| mk_attn(&ip / "attn", ch));
                let upc = (level > 0 && i == cfg.res_blocks).then(|| conv3(&ip / "up", ch, ch, 1));
                up.push(UpItem {
                    res: block,
                    attn,
                    up: upc,
                });
            }
            if level > 0 {
                res *= 2;
            }
        }
        debug_assert!(skips.is_empty());
        Ok(CondUnet {
            geom,
            dz: cfg.dz,
            ds: cfg.ds,
            time_dim: cfg.time_embed_dim,
            prediction: cfg.prediction,
            down_factor: 1 << (levels - 1),
            time_fc1: linear(&te / "0", cfg.time_embed_dim, cfg.time_embed_dim),
            time_fc2: linear(&te / "2", cfg.time_embed_dim, cfg.time_embed_dim),
            cond_fc1: linear(&ce / "0", cfg.dz + cfg.ds, cfg.cond_embed_dim),
            cond_fc2: linear(&ce / "2", cfg.cond_embed_dim, cfg.cond_embed_dim),
            input_conv: conv3(p / "input_conv", geom.channels, base, 1),
            down,
            mid1,
            mid_attn,
            mid2,
            up,
            out_norm: group_norm(p / "out_norm", g, ch),
            out_conv: zero_conv3(p / "out_conv", ch, geom.channels),
        })
    }

    /// The parametrisation of the output.
    pub fn prediction(&self) -> Prediction {
        self.prediction
    }

    /// The image geometry the net was built for.
    pub fn geometry(&self) -> ImageGeometry {
        self.geom
    }

    /// The model output for noisy images `x_t` `[B, C, H, W]` at per-sample timesteps `t` `[B]`
    /// (int64 or float), conditioned on `code` (`z: [B, dz]`, `s: [B, ds]`). `train` enables
    /// dropout. Output shape = input shape.
    pub fn forward_t(&self, x_t: &Tensor, t: &Tensor, code: &CaCode, train: bool) -> Tensor {
        let (b, c, h, w) = x_t.size4().expect("x_t must be [B, C, H, W]");
        assert!(
            c == self.geom.channels && h % self.down_factor == 0 && w % self.down_factor == 0,
            "x_t is {:?}; expected {} channels and sides divisible by {}",
            x_t.size(),
            self.geom.channels,
            self.down_factor
        );
        assert_eq!(t.size(), vec![b], "t must be [B = {b}], got {:?}", t.size());
        assert!(
            code.batch() == b && code.dz() == self.dz && code.ds() == self.ds,
            "code is z {:?} s {:?}; expected [{b}, {}] and [{b}, {}]",
            code.z.size(),
            code.s.size(),
            self.dz,
            self.ds
        );
        let temb = timestep_embedding(t, self.time_dim).to_kind(x_t.kind());
        let temb = self.time_fc2.forward(&self.time_fc1.forward(&temb).silu());
        let cemb = self
            .cond_fc2
            .forward(&self.cond_fc1.forward(&code.concat()).silu());
        let emb = Some((&temb, &cemb));

        let mut h = self.input_conv.forward(x_t);
        let mut skips = vec![h.shallow_clone()];
        for item in &self.down {
            h = match item {
                DownItem::Res(block, attn) => {
                    let h = block.forward(&h, emb, train);
                    match attn {
                        Some(a) => a.forward(&h),
                        None => h,
                    }
                }
                DownItem::Down(conv) => conv.forward(&h),
            };
            skips.push(h.shallow_clone());
        }
        h = self.mid1.forward(&h, emb, train);
        if let Some(a) = &self.mid_attn {
            h = a.forward(&h);
        }
        h = self.mid2.forward(&h, emb, train);
        for item in &self.up {
            let skip = skips.pop().expect("one skip per up block");
            h = item.res.forward(&Tensor::cat(&[&h, &skip], 1), emb, train);
            if let Some(a) = &item.attn {
                h = a.forward(&h);
            }
            if let Some(conv) = &item.up {
                let (_, _, hh, ww) = h.size4().expect("4-D");
                h = conv.forward(&h.upsample_nearest2d([2 * hh, 2 * ww], None, None));
            }
        }
        self.out_conv.forward(&self.out_norm.forward(&h).silu())
    }
}

impl Denoiser<CaCode> for CondUnet {
    fn predict(&self, x_t: &Tensor, t: &Tensor, code: &CaCode) -> Tensor {
        self.forward_t(x_t, t, code, false)
    }

    fn prediction(&self) -> Prediction {
        self.prediction
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::diffusion::EncoderConfig;
    use tch::Device;

    /// A tiny config for quick tests.
    pub(crate) fn tiny_config() -> DiffusionModelConfig {
        DiffusionModelConfig {
            dz: 3,
            ds: 2,
            base_channels: 8,
            channel_mult: vec![1, 2],
            res_blocks: 1,
            attention_resolutions: vec![4],
            attention_heads: 2,
            norm_groups: 4,
            dropout: 0.1,
            time_embed_dim: 16,
            cond_embed_dim: 16,
            encoder: EncoderConfig {
                base_channels: 8,
                channel_mult: vec![1, 2],
                res_blocks: 1,
                separate_salient: false,
            },
            ..Default::default()
        }
    }

    /// Give every variable (zero-initialised output convs included) small random values.
    pub(crate) fn perturb(vs: &nn::VarStore) {
        let _g = tch::no_grad_guard();
        for (_, mut v) in vs.variables() {
            let noise = v.randn_like() * 0.1;
            let _ = v.g_add_(&noise);
        }
    }

    pub(crate) fn assert_all_grads_nonzero(vs: &nn::VarStore) {
        for (name, v) in vs.variables() {
            let g = v.grad();
            assert!(g.defined(), "{name}: undefined gradient");
            let n = g.abs().sum(Kind::Float).double_value(&[]);
            assert!(n.is_finite() && n > 0.0, "{name}: gradient norm {n}");
        }
    }

    fn code(b: i64, cfg: &DiffusionModelConfig) -> CaCode {
        CaCode::new(
            Tensor::randn([b, cfg.dz], (Kind::Float, Device::Cpu)),
            Tensor::randn([b, cfg.ds], (Kind::Float, Device::Cpu)),
        )
    }

    #[test]
    fn timestep_embedding_known_values() {
        let e = timestep_embedding(&Tensor::from_slice(&[0i64, 2]), 4);
        // w = [1, 1e-2]; t = 0 -> [1, 1, 0, 0]; t = 2 -> [cos 2, cos .02, sin 2, sin .02].
        let v: Vec<f32> = Vec::try_from(e.flatten(0, -1)).unwrap();
        let want = [
            1.0,
            1.0,
            0.0,
            0.0,
            2f32.cos(),
            0.02f32.cos(),
            2f32.sin(),
            0.02f32.sin(),
        ];
        for (a, b) in v.iter().zip(want) {
            assert!((a - b).abs() < 1e-5, "{v:?}");
        }
    }

    #[test]
    fn output_shape_matches_input_and_starts_at_zero() {
        tch::manual_seed(0);
        let cfg = tiny_config();
        let vs = nn::VarStore::new(Device::Cpu);
        let net = CondUnet::new(
            &vs.root(),
            &cfg,
            ImageGeometry {
                channels: 3,
                size: 16,
            },
        )
        .unwrap();
        let x = Tensor::randn([2, 3, 16, 16], (Kind::Float, Device::Cpu));
        let t = Tensor::from_slice(&[1i64, 500]);
        let y = net.forward_t(&x, &t, &code(2, &cfg), true);
        assert_eq!(y.size(), vec![2, 3, 16, 16]);
        // Zero-initialised output conv: the untrained net predicts 0.
        assert_eq!(y.abs().max().double_value(&[]), 0.0);
        // 64x64 (with attention at 4x4 absent) and a float t also work.
        let vs = nn::VarStore::new(Device::Cpu);
        let net = CondUnet::new(
            &vs.root(),
            &cfg,
            ImageGeometry {
                channels: 1,
                size: 64,
            },
        )
        .unwrap();
        let x = Tensor::randn([1, 1, 64, 64], (Kind::Float, Device::Cpu));
        let y = net.forward_t(&x, &Tensor::from_slice(&[3.5f32]), &code(1, &cfg), false);
        assert_eq!(y.size(), vec![1, 1, 64, 64]);
    }

    #[test]
    fn gradients_reach_every_parameter_and_code() {
        tch::manual_seed(1);
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
        let x = Tensor::randn([2, 3, 8, 8], (Kind::Float, Device::Cpu));
        let c = code(2, &cfg);
        let z = c.z.set_requires_grad(true);
        let s = c.s.set_requires_grad(true);
        let c = CaCode::new(z.shallow_clone(), s.shallow_clone());
        let y = net.forward_t(&x, &Tensor::from_slice(&[10i64, 900]), &c, false);
        y.square().mean(Kind::Float).backward();
        assert_all_grads_nonzero(&vs);
        assert!(
            s.grad().abs().sum(Kind::Float).double_value(&[]) > 0.0,
            "no gradient to s"
        );
        assert!(
            z.grad().abs().sum(Kind::Float).double_value(&[]) > 0.0,
            "no gradient to z"
        );
    }

    #[test]
    fn salient_code_changes_the_output() {
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
        let x = Tensor::randn([1, 3, 8, 8], (Kind::Float, Device::Cpu));
        let t = Tensor::from_slice(&[100i64]);
        let c = code(1, &cfg);
        let a = net.predict(&x, &t, &c);
        let b = net.predict(&x, &t, &c.without_salient());
        assert!((a - b).abs().max().double_value(&[]) > 1e-4);
    }

    #[test]
    fn default_config_builds_for_32_64_128() {
        tch::manual_seed(3);
        let cfg = DiffusionModelConfig::default();
        for size in [32, 64, 128] {
            let vs = nn::VarStore::new(Device::Cpu);
            let net = CondUnet::new(&vs.root(), &cfg, ImageGeometry { channels: 3, size });
            assert!(net.is_ok(), "{size}: {net:?}");
            let n = vs.variables().len();
            assert!(n > 50, "{size}: only {n} tensors");
        }
        let vs = nn::VarStore::new(Device::Cpu);
        let net = CondUnet::new(
            &vs.root(),
            &cfg,
            ImageGeometry {
                channels: 3,
                size: 32,
            },
        )
        .unwrap();
        let x = Tensor::randn([1, 3, 32, 32], (Kind::Float, Device::Cpu));
        let y = net.forward_t(&x, &Tensor::from_slice(&[7i64]), &code(1, &cfg), false);
        assert_eq!(y.size(), vec![1, 3, 32, 32]);
    }

    #[test]
    fn eval_is_deterministic_and_train_uses_dropout() {
        tch::manual_seed(4);
        let cfg = DiffusionModelConfig {
            dropout: 0.5,
            ..tiny_config()
        };
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
        let x = Tensor::randn([2, 3, 8, 8], (Kind::Float, Device::Cpu));
        let t = Tensor::from_slice(&[5i64, 50]);
        let c = code(2, &cfg);
        let diff = |a: Tensor, b: Tensor| (a - b).abs().max().double_value(&[]);
        let e = diff(
            net.forward_t(&x, &t, &c, false),
            net.forward_t(&x, &t, &c, false),
        );
        assert_eq!(e, 0.0);
        assert!(
            diff(
                net.forward_t(&x, &t, &c, true),
                net.forward_t(&x, &t, &c, true)
            ) > 1e-4
        );
    }

    #[test]
    fn invalid_geometry_is_an_error() {
        let vs = nn::VarStore::new(Device::Cpu);
        let r = CondUnet::new(
            &vs.root(),
            &tiny_config(),
            ImageGeometry {
                channels: 3,
                size: 7,
            },
        );
        assert!(matches!(r, Err(DiffusionError::Geometry { size: 7, .. })));
    }
}
