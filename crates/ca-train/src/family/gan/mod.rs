//! The CA-GAN training step and the trained CA-GAN used for inference.
//!
//! One step is a discriminator update followed by a generator (and encoder) update, each
//! loss term weighted from `[loss]` and skipped when its weight is 0:
//!
//! * **D step** — adversarial (real vs detached fakes), dataset class of real images, lazy R1.
//!   When the discriminator's heads are the encoder (Double InfoGAN; no `[model.encoder]`),
//!   it also carries the encoder terms: info loss on fakes, salient-zero on real background
//!   images, pixel reconstruction of real images through `G` (gradient into the heads only),
//!   MMD / dataset-adversary on the common codes.
//! * **G step** — adversarial, dataset class of fakes, info loss on fakes (through `E` or the
//!   frozen heads), reconstruction of real images (pixel L1 and multi-scale discriminator-feature
//!   matching), swap consistency, and — with a separate encoder — salient-zero, common-code
//!   invariance, and the optional salient InfoNCE and `z`-`s` decorrelation of target codes
//!   ([`crate::ca_terms`]) on `E`.
//!
//! Rows of a batch are ordered background first, then target (the loader tells the counts on
//! the host), so swaps and per-group terms need no host sync. Loss values stay on the device
//! until the trainer logs them.

use ca_losses::{adversarial, info, prior, reconstruction};
use ca_models::blocks::native::{AutocastDtype, AutocastGuard};
use ca_models::gan::{self, Discriminator, Encoder, GanModelConfig, Generator};
use ca_models::{CaCode, ImageGeometry};
use tch::nn::{self, Module, VarStore};
use tch::{Device, Kind, Tensor};

use std::collections::HashMap;
use std::path::Path;

use crate::adam::{Adam, AdamConfig};
use crate::ca_terms::{self, InvarianceScope, add, z_adversary_terms};
use crate::checkpoint::{self, CheckpointError};
use crate::ema;
use crate::step::{
    StepStats, TrainError, TrainStep, load_optimizer_state, optimizer_state, param_summary,
    stats_in_fp32,
};

mod config;
mod model;

pub use config::{AdversarialKind, GanLossConfig, GanOptimConfig};
pub use model::GanModel;

/// Errors of building or loading a GAN.
#[derive(Debug, thiserror::Error)]
pub enum GanError {
    /// The model config is invalid.
    #[error(transparent)]
    Model(#[from] gan::ModelError),
    /// A checkpoint could not be read.
    #[error(transparent)]
    Checkpoint(#[from] CheckpointError),
    /// Autograd failure (R1).
    #[error("R1 penalty: {0}")]
    R1(String),
}

/// The networks of a CA-GAN run, each in its own `VarStore`.
pub struct GanNets {
    /// Generator weights.
    pub g_vs: VarStore,
    /// Generator.
    pub g: Box<dyn Generator>,
    /// EMA generator weights.
    pub g_ema_vs: VarStore,
    /// EMA generator (used for evaluation and inference).
    pub g_ema: Box<dyn Generator>,
    /// Discriminator weights.
    pub d_vs: VarStore,
    /// Discriminator (its z/s heads encode when there is no separate encoder).
    pub d: Discriminator,
    /// Separate encoder, live and EMA, with its var stores.
    pub e: Option<EncoderPair>,
    /// Linear heads on the codes of real images, trained with the encoder: the dataset
    /// adversary on `z` (`loss.z_adversary`, see [`z_adversary_terms`]) and the dataset classifier
    /// on `s` (`loss.salient_class`). `None` when both weights are 0.
    pub zc: Option<CodeHeads>,
    /// Code sizes.
    pub dz: i64,
    /// Salient code size.
    pub ds: i64,
    /// Image geometry.
    pub geom: ImageGeometry,
}

/// The training-only linear heads on real codes (checkpoint prefix `zc.`).
pub struct CodeHeads {
    /// Their weights.
    pub vs: VarStore,
    /// `z -> dataset logit` (`zc.z_adversary.*`), the adversary of [`z_adversary_terms`].
    pub z_adversary: Option<nn::Linear>,
    /// `[s, s²] -> dataset logit` (`zc.salient_class.*`, input width `2·ds`): see
    /// [`salient_class_features`].
    pub salient_class: Option<nn::Linear>,
}

/// A separate encoder and its EMA copy.
pub struct EncoderPair {
    /// Live weights.
    pub vs: VarStore,
    /// Live encoder.
    pub net: Encoder,
    /// EMA weights.
    pub ema_vs: VarStore,
    /// EMA encoder.
    pub ema: Encoder,
}

impl GanNets {
    /// Build all networks on `device` (weights drawn from libtorch's global RNG: seed it first).
    pub fn build(
        cfg: &GanModelConfig,
        geom: ImageGeometry,
        heads: (bool, bool),
        device: Device,
    ) -> Result<Self, GanError> {
        let g_vs = VarStore::new(device);
        let g = gan::build_generator(&g_vs.root(), cfg, geom)?;
        let g_ema_vs = VarStore::new(device);
        let g_ema = gan::build_generator(&g_ema_vs.root(), cfg, geom)?;
        ema::copy_all(&g_ema_vs, &g_vs).expect("same architecture");
        let d_vs = VarStore::new(device);
        let d = gan::build_discriminator(&d_vs.root(), cfg, geom)?;
        let e = match &cfg.encoder {
            None => None,
            Some(_) => {
                let vs = VarStore::new(device);
                let net = gan::build_encoder(&vs.root(), cfg, geom)?.expect("encoder configured");
                let ema_vs = VarStore::new(device);
                let ema =
                    gan::build_encoder(&ema_vs.root(), cfg, geom)?.expect("encoder configured");
                ema::copy_all(&ema_vs, &vs).expect("same architecture");
                Some(EncoderPair {
                    vs,
                    net,
                    ema_vs,
                    ema,
                })
            }
        };
        let (with_z_adversary, with_salient_class) = heads;
        let zc = (with_z_adversary || with_salient_class).then(|| {
            let vs = VarStore::new(device);
            let z_adversary = with_z_adversary
                .then(|| nn::linear(vs.root() / "z_adversary", cfg.dz, 1, Default::default()));
            let salient_class = with_salient_class.then(|| {
                nn::linear(
                    vs.root() / "salient_class",
                    2 * cfg.ds,
                    1,
                    Default::default(),
                )
            });
            CodeHeads {
                vs,
                z_adversary,
                salient_class,
            }
        });
        Ok(GanNets {
            g_vs,
            g,
            g_ema_vs,
            g_ema,
            d_vs,
            d,
            e,
            zc,
            dz: cfg.dz,
            ds: cfg.ds,
            geom,
        })
    }

    /// The live code of real images and the `z` the invariance terms see: with
    /// `invariance_scope = head` and a separate encoder, `z` recomputed from the detached shared
    /// features; otherwise the code's own `z`.
    fn encode_real(&self, x: &Tensor, scope: InvarianceScope) -> (CaCode, Tensor) {
        match (&self.e, scope) {
            (Some(e), InvarianceScope::Head) => {
                let (code, feats) = e.net.forward_with_features(x);
                let z_inv = e.net.z_from_features(&feats.detach());
                (code, z_inv)
            }
            _ => {
                let code = self.encode_live(x);
                let z = code.z.shallow_clone();
                (code, z)
            }
        }
    }

    /// Encode with the live encoder (separate encoder, or the discriminator's heads).
    fn encode_live(&self, x: &Tensor) -> CaCode {
        match &self.e {
            Some(e) => e.net.forward_t(x, true),
            None => self.d.encode(x),
        }
    }

    /// The salient code of `x` from the live encoder: with a separate encoder only its `s`
    /// path runs (`separate_salient`); otherwise the discriminator's heads.
    fn salient_live(&self, x: &Tensor) -> Tensor {
        match &self.e {
            Some(e) => e.net.salient(x),
            None => self.d.encode(x).s,
        }
    }

    /// Named tensors for inference (`model.safetensors`): the EMA generator, and the EMA encoder
    /// or the discriminator.
    pub fn model_tensors(&self) -> Vec<(String, Tensor)> {
        let mut v = checkpoint::named(&self.g_ema_vs, "g.");
        match &self.e {
            Some(e) => v.extend(checkpoint::named(&e.ema_vs, "e.")),
            None => v.extend(checkpoint::named(&self.d_vs, "d.")),
        }
        v
    }

    /// All network weights for resuming (`state.safetensors`, without optimiser moments).
    pub fn state_tensors(&self) -> Vec<(String, Tensor)> {
        let mut v = checkpoint::named(&self.g_vs, "g.");
        v.extend(checkpoint::named(&self.g_ema_vs, "g_ema."));
        v.extend(checkpoint::named(&self.d_vs, "d."));
        if let Some(e) = &self.e {
            v.extend(checkpoint::named(&e.vs, "e."));
            v.extend(checkpoint::named(&e.ema_vs, "e_ema."));
        }
        if let Some(h) = &self.zc {
            v.extend(checkpoint::named(&h.vs, "zc."));
        }
        v
    }

    /// Restore from `state.safetensors` tensors.
    pub fn load_state(
        &self,
        t: &HashMap<String, Tensor>,
        file: &Path,
    ) -> Result<(), CheckpointError> {
        checkpoint::load_var_store(&self.g_vs, t, "g.", file)?;
        checkpoint::load_var_store(&self.g_ema_vs, t, "g_ema.", file)?;
        checkpoint::load_var_store(&self.d_vs, t, "d.", file)?;
        if let Some(e) = &self.e {
            checkpoint::load_var_store(&e.vs, t, "e.", file)?;
            checkpoint::load_var_store(&e.ema_vs, t, "e_ema.", file)?;
        }
        if let Some(h) = &self.zc {
            checkpoint::load_var_store(&h.vs, t, "zc.", file)?;
        }
        Ok(())
    }
}

/// Factor on the salient conventions (`salient_zero`, the prior on target `s`) at 0-based
/// `step`: a linear ramp from 0 to 1 over `warmup` steps (`loss.salient_warmup_steps`; 0 = 1
/// from the start).
pub fn salient_ramp(step: u64, warmup: u64) -> f64 {
    if warmup == 0 {
        1.0
    } else {
        (step as f64 / warmup as f64).min(1.0)
    }
}

/// Input of the `salient_class` head: `[s, s²]` (`[B, 2·ds]`). The CA convention puts background
/// `s` at 0 (`salient_zero`) and target `s` at mean 0, variance 1 (`prior`); those two sets are
/// not linearly separable in `s` (a linear logit sees the same mean for both), but they are in
/// `s²`. Measured on the synthetic preset with a linear head on `s` alone: with `prior` on,
/// its BCE stayed at 0.68 for 300 steps; without `prior` it fell to 0.46.
pub fn salient_class_features(s: &Tensor) -> Tensor {
    Tensor::cat(&[s.shallow_clone(), s.square()], 1)
}

/// The GAN training step: networks, optimisers, loss weights.
pub struct GanStep {
    /// The networks.
    pub nets: GanNets,
    /// Generator optimiser.
    pub opt_g: Adam,
    /// Discriminator optimiser (also the z-adversary when the discriminator encodes).
    pub opt_d: Adam,
    /// Encoder optimiser (encoder + z-adversary) when a separate encoder exists.
    pub opt_e: Option<Adam>,
    opt_zc: Option<Adam>,
    /// Lower-precision type of the forward passes (`train.precision`), `None` for fp32.
    pub autocast: Option<AutocastDtype>,
    loss: GanLossConfig,
    base_lr: (f64, f64, f64),
    /// Factor on the salient conventions this step (`loss.salient_warmup_steps`).
    salient_ramp: f64,
}

/// The rows of one batch: background first (`n_bg`), then target (`n_t`).
struct Rows {
    is_target: Tensor,
    is_bg: Tensor,
    n_bg: i64,
    n_t: i64,
}

/// What the encoder terms see of a step: real and fake codes, and the `z` of the invariance
/// terms.
struct EncoderInputs<'a> {
    real: &'a CaCode,
    z_inv: &'a Tensor,
    fake_pred: &'a CaCode,
    fake_code: &'a CaCode,
    in_d_step: bool,
}

impl GanStep {
    /// Optimisers over the networks, from `[optim]`.
    pub fn new(nets: GanNets, loss: &GanLossConfig, optim: &GanOptimConfig) -> Self {
        let cfg = |lr| AdamConfig {
            lr,
            beta1: optim.beta1,
            beta2: optim.beta2,
            eps: 1e-8,
            weight_decay: 0.0,
        };
        let opt_g = Adam::for_var_store(&nets.g_vs, cfg(optim.lr_g));
        let opt_d = Adam::for_var_store(&nets.d_vs, cfg(optim.lr_d));
        let opt_e = nets
            .e
            .as_ref()
            .map(|e| Adam::for_var_store(&e.vs, cfg(optim.lr_e)));
        let opt_zc = nets
            .zc
            .as_ref()
            .map(|h| Adam::for_var_store(&h.vs, cfg(optim.lr_d)));
        GanStep {
            nets,
            opt_g,
            opt_d,
            opt_e,
            opt_zc,
            autocast: None,
            loss: loss.clone(),
            base_lr: (optim.lr_g, optim.lr_d, optim.lr_e),
            salient_ramp: 1.0,
        }
    }

    /// Scale all learning rates by `factor` (the schedule).
    pub fn set_lr_factor(&mut self, factor: f64) {
        self.opt_g.config.lr = self.base_lr.0 * factor;
        self.opt_d.config.lr = self.base_lr.1 * factor;
        if let Some(o) = &mut self.opt_zc {
            o.config.lr = self.base_lr.1 * factor;
        }
        if let Some(o) = &mut self.opt_e {
            o.config.lr = self.base_lr.2 * factor;
        }
    }

    fn masked(&self, code: &CaCode, is_target: &Tensor) -> CaCode {
        if self.loss.ca.salient_masking {
            code.masked_by_group(is_target)
        } else {
            code.shallow_clone()
        }
    }

    fn sample_code(&self, is_target: &Tensor) -> CaCode {
        let b = is_target.size()[0];
        let dev = is_target.device();
        let z = Tensor::randn([b, self.nets.dz], (Kind::Float, dev));
        let s = Tensor::randn([b, self.nets.ds], (Kind::Float, dev));
        CaCode::new(z, s).masked_by_group(is_target)
    }

    /// One D step and one G step on real images `x` (`[B, C, H, W]` in [-1, 1]) whose first
    /// `n_bg` rows are background and the rest target. `step` is the 0-based step index (lazy
    /// R1 schedule).
    pub fn step(&mut self, x: &Tensor, n_bg: i64, step: u64) -> Result<StepStats, GanError> {
        self.salient_ramp = salient_ramp(step, self.loss.salient_warmup_steps);
        let b = x.size()[0];
        let is_target = crate::step::is_target(b, n_bg, x.device());
        let rows = Rows {
            is_bg: 1.0 - &is_target,
            is_target,
            n_bg,
            n_t: b - n_bg,
        };
        let mut stats: StepStats = Vec::new();
        let (loss_d, real_feats) = self.d_step(x, &rows, step, &mut stats)?;
        let loss_g = self.g_step(x, &rows, &real_feats, &mut stats);
        stats.push(("loss_d", loss_d.detach()));
        stats.push(("loss_g", loss_g.detach()));
        Ok(stats_in_fp32(stats))
    }

    /// The discriminator step: adversarial, dataset class of real images, lazy R1 and, when the
    /// discriminator's heads encode, the encoder terms. Returns its loss and the real images'
    /// discriminator features (detached; `recon_features` of the G step reuses them).
    fn d_step(
        &mut self,
        x: &Tensor,
        rows: &Rows,
        step: u64,
        stats: &mut StepStats,
    ) -> Result<(Tensor, Vec<Tensor>), GanError> {
        let l = self.loss.clone();
        let dev = x.device();
        let heads_encode = self.nets.e.is_none();
        self.opt_d.zero_grad();
        if let Some(o) = &mut self.opt_zc {
            o.zero_grad();
        }
        // Forward passes and losses in the autocast region (train.precision); backward, R1's
        // gradient and the optimiser steps in fp32 outside it.
        let region = self.autocast.and_then(|d| AutocastGuard::enter(dev, d));
        let code_f = self.sample_code(&rows.is_target);
        let x_f = tch::no_grad(|| self.nets.g.forward_t(&code_f, true));
        let r1_now = l.r1_gamma > 0.0 && step.is_multiple_of(l.r1_every);
        let x_r = if r1_now {
            x.detach().set_requires_grad(true)
        } else {
            x.shallow_clone()
        };
        let out_r = self.nets.d.forward_t(&x_r, true);
        let real_feats: Vec<Tensor> = if l.recon_features > 0.0 {
            out_r.features.iter().map(Tensor::detach).collect()
        } else {
            Vec::new()
        };
        let out_f = self.nets.d.forward_t(&x_f, true);
        let mut loss_d = Tensor::zeros([], (Kind::Float, dev));
        if l.adversarial > 0.0 {
            let t = match l.adversarial_kind {
                AdversarialKind::Nonsaturating => {
                    adversarial::d_nonsaturating(&out_r.adv, &out_f.adv)
                }
                AdversarialKind::Hinge => adversarial::d_hinge(&out_r.adv, &out_f.adv),
            }
            .mean(Kind::Float);
            add(&mut loss_d, stats, "d_adv", &t, l.adversarial);
        }
        if l.ca.class > 0.0 {
            let t = info::class_bce(&out_r.dataset, &rows.is_target).mean(Kind::Float);
            add(&mut loss_d, stats, "d_class", &t, l.ca.class);
        }
        if heads_encode {
            let real = out_r.code();
            let inputs = EncoderInputs {
                real: &real,
                z_inv: &real.z,
                fake_pred: &out_f.code(),
                fake_code: &code_f,
                in_d_step: true,
            };
            loss_d += self.encoder_terms(&inputs, x, rows, stats);
        }
        drop(region);
        if r1_now {
            let r1 = adversarial::r1_penalty(&out_r.adv, &x_r)
                .map_err(|e| GanError::R1(e.to_string()))?
                .mean(Kind::Float);
            add(
                &mut loss_d,
                stats,
                "r1",
                &r1,
                l.r1_gamma * 0.5 * l.r1_every as f64,
            );
        }
        // A configuration may leave a step without any term (e.g. the autoencoder's D step).
        if loss_d.requires_grad() {
            loss_d.backward();
            self.opt_d.step();
        }
        if heads_encode && let Some(o) = &mut self.opt_zc {
            o.step();
        }
        Ok((loss_d, real_feats))
    }

    /// The generator (and encoder) step: adversarial, dataset class and info loss of fakes, the
    /// encoder terms, reconstruction of real images and swap consistency. Returns its loss.
    fn g_step(
        &mut self,
        x: &Tensor,
        rows: &Rows,
        real_feats: &[Tensor],
        stats: &mut StepStats,
    ) -> Tensor {
        let l = self.loss.clone();
        let dev = x.device();
        let heads_encode = self.nets.e.is_none();
        self.opt_g.zero_grad();
        if let Some(o) = &mut self.opt_e {
            o.zero_grad();
        }
        if let Some(o) = &mut self.opt_zc {
            o.zero_grad();
        }
        let region = self.autocast.and_then(|d| AutocastGuard::enter(dev, d));
        let code_f = self.sample_code(&rows.is_target);
        let x_f = self.nets.g.forward_t(&code_f, true);
        let out_f = self.nets.d.forward_t(&x_f, true);
        let mut loss_g = Tensor::zeros([], (Kind::Float, dev));
        if l.adversarial > 0.0 {
            let t = match l.adversarial_kind {
                AdversarialKind::Nonsaturating => adversarial::g_nonsaturating(&out_f.adv),
                AdversarialKind::Hinge => adversarial::g_hinge(&out_f.adv),
            }
            .mean(Kind::Float);
            add(&mut loss_g, stats, "g_adv", &t, l.adversarial);
        }
        if l.ca.class > 0.0 {
            let t = info::class_bce(&out_f.dataset, &rows.is_target).mean(Kind::Float);
            add(&mut loss_g, stats, "g_class", &t, l.ca.class);
        }
        // Codes of real images: through E (trained here) or the discriminator heads (frozen here).
        let (real_code, z_inv) = if heads_encode {
            let c = tch::no_grad(|| self.nets.d.encode(x));
            let z = c.z.shallow_clone();
            (c, z)
        } else {
            self.nets.encode_real(x, l.ca.invariance_scope)
        };
        if heads_encode {
            // Info loss through the (frozen) heads trains G to make codes readable.
            if l.info_z > 0.0 || l.info_s > 0.0 {
                let t = info::info_l1(&out_f.z, &code_f.z).mean(Kind::Float) * l.info_z
                    + info::info_l1(&out_f.s, &code_f.s).mean(Kind::Float) * l.info_s;
                loss_g += &t;
                stats.push(("g_info", t.detach()));
            }
        } else {
            let inputs = EncoderInputs {
                real: &real_code,
                z_inv: &z_inv,
                fake_pred: &self.nets.encode_live(&x_f),
                fake_code: &code_f,
                in_d_step: false,
            };
            loss_g += self.encoder_terms(&inputs, x, rows, stats);
        }
        // Added to `loss_g` term by term (the order of the sum is part of the logged numbers).
        self.reconstruction_terms(&mut loss_g, x, &real_code, rows, real_feats, stats);
        self.swap_term(&mut loss_g, &real_code, rows, stats);
        drop(region);
        if loss_g.requires_grad() {
            loss_g.backward();
        }
        self.opt_g.step();
        if let Some(o) = &mut self.opt_e {
            o.step();
        }
        if !heads_encode && let Some(o) = &mut self.opt_zc {
            o.step();
        }
        loss_g
    }

    /// Reconstruction of real images through `G` (pixel L1, discriminator-feature matching
    /// against the D step's detached features of the real images: one D pass saved).
    fn reconstruction_terms(
        &self,
        loss: &mut Tensor,
        x: &Tensor,
        real_code: &CaCode,
        rows: &Rows,
        real_feats: &[Tensor],
        stats: &mut StepStats,
    ) {
        let l = &self.loss;
        if l.recon_pixel > 0.0 || l.recon_features > 0.0 {
            let code_r = self.masked(real_code, &rows.is_target);
            let x_rec = self.nets.g.forward_t(&code_r, true);
            if l.recon_pixel > 0.0 {
                let t = reconstruction::pixel_l1(&x_rec, x).mean(Kind::Float);
                add(loss, stats, "recon_pixel", &t, l.recon_pixel);
            }
            if l.recon_features > 0.0 {
                let feats_real: Vec<Tensor> = real_feats.iter().map(Tensor::detach).collect();
                let feats_rec = self.nets.d.forward_t(&x_rec, true).features;
                let t = reconstruction::feature_matching(&feats_real, &feats_rec).mean(Kind::Float);
                add(loss, stats, "recon_features", &t, l.recon_features);
            }
        }
    }

    /// Swap consistency on a quarter of the batch in each direction (the cost is 3 passes over
    /// 2k images): `G(z_bg, s_tgt)` judged target and encoding back to both codes, `G(z_tgt, 0)`
    /// judged background.
    fn swap_term(&self, loss: &mut Tensor, real_code: &CaCode, rows: &Rows, stats: &mut StepStats) {
        let l = &self.loss;
        let dev = real_code.z.device();
        let (n_bg, n_t) = (rows.n_bg, rows.n_t);
        let k = n_bg.min(n_t).min(((n_bg + n_t) / 4).max(1));
        if !(l.swap > 0.0 && k > 0) {
            return;
        }
        let rc = real_code.detach();
        let to_target = CaCode::with_salient(rc.z.narrow(0, 0, k), rc.s.narrow(0, n_bg, k));
        let to_bg = CaCode::background(rc.z.narrow(0, n_bg, k), self.nets.ds);
        let codes = CaCode::cat(&[&to_target, &to_bg]);
        let x_sw = self.nets.g.forward_t(&codes, true);
        let out_sw = self.nets.d.forward_t(&x_sw, true);
        let pred = if self.nets.e.is_none() {
            out_sw.code()
        } else {
            self.nets.encode_live(&x_sw)
        };
        let expected = Tensor::cat(
            &[
                Tensor::ones([k], (Kind::Float, dev)),
                Tensor::zeros([k], (Kind::Float, dev)),
            ],
            0,
        );
        let t = info::swap_consistency(
            &out_sw.dataset,
            &pred.z,
            &pred.s,
            &codes.z,
            &codes.s,
            &expected,
        )
        .total()
        .mean(Kind::Float);
        add(loss, stats, "swap", &t, l.swap);
    }

    /// The encoder's terms: info on fakes, salient-zero on real background images, (D-heads
    /// only) pixel reconstruction through `G`, and the code-level terms of [`crate::ca_terms`].
    fn encoder_terms(
        &self,
        e: &EncoderInputs<'_>,
        x: &Tensor,
        rows: &Rows,
        stats: &mut StepStats,
    ) -> Tensor {
        let l = &self.loss;
        let (real, z_inv) = (e.real, e.z_inv);
        let (n_bg, n_t) = (rows.n_bg, rows.n_t);
        let mut loss = Tensor::zeros([], (Kind::Float, x.device()));
        if l.info_z > 0.0 || l.info_s > 0.0 {
            let t = info::info_l1(&e.fake_pred.z, &e.fake_code.z).mean(Kind::Float) * l.info_z
                + info::info_l1(&e.fake_pred.s, &e.fake_code.s).mean(Kind::Float) * l.info_s;
            loss += &t;
            stats.push(("e_info", t.detach()));
        }
        if let Some(t) = ca_terms::salient_zero(&l.ca, &real.s, &rows.is_bg) {
            let w = l.ca.salient_zero * self.salient_ramp;
            add(&mut loss, stats, "salient_zero", &t, w);
        }
        if e.in_d_step && l.recon_pixel > 0.0 {
            // Gradient reaches the heads through G; G's own gradient is discarded (zeroed
            // before the G step).
            let code_r = self.masked(real, &rows.is_target);
            let x_rec = self.nets.g.forward_t(&code_r, true);
            let t = reconstruction::pixel_l1(&x_rec, x).mean(Kind::Float);
            add(&mut loss, stats, "e_recon", &t, l.recon_pixel);
        }
        if let Some(t) = ca_terms::mmd(&l.ca, z_inv, n_bg, n_t) {
            add(&mut loss, stats, "mmd", &t, l.ca.mmd);
        }
        if l.prior > 0.0 {
            let tz = prior::moment_kl(&real.z);
            let mut t = tz.shallow_clone() * l.prior;
            let mut logged = tz;
            if n_t >= 2 {
                let ts = prior::moment_kl(&real.s.narrow(0, n_bg, n_t));
                t += &ts * (l.prior * self.salient_ramp);
                logged += ts;
            }
            loss += t;
            stats.push(("prior", logged.detach()));
        }
        let salient_of = |view: &Tensor| self.nets.salient_live(view);
        if let Some(t) = ca_terms::nce(&l.ca, x, &real.s, n_bg, None, salient_of) {
            add(&mut loss, stats, "salient_nce", &t, l.ca.salient_nce);
        }
        if let Some(t) = ca_terms::decorrelation(&l.ca, &real.z, &real.s, n_bg, n_t) {
            add(
                &mut loss,
                stats,
                "salient_decorrelation",
                &t,
                l.ca.salient_decorrelation,
            );
        }
        if l.salient_class > 0.0
            && let Some(lin) = self.nets.zc.as_ref().and_then(|h| h.salient_class.as_ref())
        {
            let logits = lin.forward(&salient_class_features(&real.s)).squeeze_dim(1);
            let t = info::class_bce(&logits, &rows.is_target).mean(Kind::Float);
            add(&mut loss, stats, "salient_class", &t, l.salient_class);
        }
        if l.ca.z_adversary > 0.0
            && let Some(lin) = self.nets.zc.as_ref().and_then(|h| h.z_adversary.as_ref())
        {
            let (total, classifier) =
                z_adversary_terms(lin, z_inv, &rows.is_target, l.ca.z_adversary_kind);
            loss += total * l.ca.z_adversary;
            stats.push(("z_adversary", classifier));
        }
        loss
    }

    /// EMA update of the generator (and encoder) towards the live weights.
    pub fn update_ema(&self, decay: f64) {
        ema::update(&self.nets.g_ema_vs, &self.nets.g_vs, decay).expect("same architecture");
        if let Some(e) = &self.nets.e {
            ema::update(&e.ema_vs, &e.vs, decay).expect("same architecture");
        }
    }

    /// Optimiser states for the checkpoint.
    pub fn optimizer_tensors(&self) -> Vec<(String, Tensor)> {
        let mut opts = vec![("opt_g.", &self.opt_g), ("opt_d.", &self.opt_d)];
        opts.extend(self.opt_e.as_ref().map(|o| ("opt_e.", o)));
        opts.extend(self.opt_zc.as_ref().map(|o| ("opt_zc.", o)));
        optimizer_state(opts)
    }

    /// Restore optimiser states.
    pub fn load_optimizers(
        &mut self,
        t: &HashMap<String, Tensor>,
        file: &Path,
    ) -> Result<(), CheckpointError> {
        let mut opts = vec![("opt_g.", &mut self.opt_g), ("opt_d.", &mut self.opt_d)];
        opts.extend(self.opt_e.as_mut().map(|o| ("opt_e.", o)));
        opts.extend(self.opt_zc.as_mut().map(|o| ("opt_zc.", o)));
        load_optimizer_state(opts, t, file)
    }
}

impl TrainStep for GanStep {
    fn train_step(&mut self, x: &Tensor, n_bg: i64, step: u64) -> Result<StepStats, TrainError> {
        Ok(self.step(x, n_bg, step)?)
    }
    fn set_lr_factor(&mut self, factor: f64) {
        GanStep::set_lr_factor(self, factor)
    }
    fn update_ema(&self, decay: f64) {
        GanStep::update_ema(self, decay)
    }
    fn model_tensors(&self) -> Vec<(String, Tensor)> {
        self.nets.model_tensors()
    }
    fn state_tensors(&self) -> Vec<(String, Tensor)> {
        let mut v = self.nets.state_tensors();
        v.extend(self.optimizer_tensors());
        v
    }
    fn load_state(
        &mut self,
        tensors: &HashMap<String, Tensor>,
        file: &Path,
    ) -> Result<(), CheckpointError> {
        self.nets.load_state(tensors, file)?;
        self.load_optimizers(tensors, file)
    }
    fn samples(&self, codes: &CaCode) -> Tensor {
        tch::no_grad(|| self.nets.g_ema.forward_t(codes, false))
    }
    fn summary(&self) -> String {
        let mut parts = vec![
            ("generator", &self.nets.g_vs),
            ("discriminator", &self.nets.d_vs),
        ];
        parts.extend(self.nets.e.as_ref().map(|e| ("encoder", &e.vs)));
        param_summary(&parts)
    }
}

/// The GAN training step of a run: networks drawn from libtorch's generator (seeded by the
/// caller), optimisers, forward passes in `autocast`'s type (`None`: fp32).
pub fn build_step(
    model: &GanModelConfig,
    loss: &GanLossConfig,
    optim: &GanOptimConfig,
    geom: ImageGeometry,
    autocast: Option<AutocastDtype>,
    device: Device,
) -> Result<GanStep, GanError> {
    let heads = (loss.ca.z_adversary > 0.0, loss.salient_class > 0.0);
    let nets = GanNets::build(model, geom, heads, device)?;
    let mut step = GanStep::new(nets, loss, optim);
    step.autocast = autocast;
    Ok(step)
}

impl From<GanError> for TrainError {
    fn from(e: GanError) -> Self {
        match e {
            GanError::Checkpoint(c) => TrainError::Checkpoint(c),
            other => TrainError::Family(Box::new(other)),
        }
    }
}

/// Shared by the trainers' tests (unit tests and `tests/bf16_gan.rs`).
#[doc(hidden)]
pub mod test_support {
    use super::StepStats;
    use ca_models::ImageGeometry;
    use std::collections::HashMap;
    use tch::Kind;

    /// The default loss set with every term that is on by default turned off (adversarial, R1,
    /// class, info, salient-zero, pixel reconstruction), to test one term alone.
    pub fn no_default_terms() -> super::GanLossConfig {
        super::GanLossConfig {
            ca: crate::ca_terms::CodeTerms {
                class: 0.0,
                salient_zero: 0.0,
                ..Default::default()
            },
            adversarial: 0.0,
            r1_gamma: 0.0,
            info_z: 0.0,
            info_s: 0.0,
            recon_pixel: 0.0,
            ..Default::default()
        }
    }

    /// 32x32 RGB, the geometry of the unit tests.
    pub const GEOM32: ImageGeometry = ImageGeometry {
        channels: 3,
        size: 32,
    };

    /// Run `steps` steps and collect every logged value per name (checking it is fp32).
    pub fn record_curves(
        steps: u64,
        mut step: impl FnMut(u64) -> StepStats,
    ) -> HashMap<&'static str, Vec<f64>> {
        let mut curve: HashMap<&'static str, Vec<f64>> = HashMap::new();
        for k in 0..steps {
            for (n, t) in step(k) {
                assert_eq!(t.kind(), Kind::Float, "{n} logged in {:?}", t.kind());
                curve.entry(n).or_default().push(t.double_value(&[]));
            }
        }
        curve
    }

    /// StyleGAN2's Adam settings at a small-run learning rate.
    pub fn test_optim() -> super::GanOptimConfig {
        super::GanOptimConfig {
            lr_g: 2e-3,
            lr_d: 2e-3,
            lr_e: 2e-3,
            beta1: 0.0,
            beta2: 0.99,
            ..super::GanOptimConfig::default()
        }
    }

    /// A tiny style GAN (dz 4, ds 2, 8-16 channels), with a separate encoder when `encoder`.
    pub fn tiny_cfg(encoder: bool) -> super::GanModelConfig {
        let text = format!(
            "dz = 4\nds = 2\n[generator]\nkind = \"style\"\nbase_channels = 8\nmax_channels = 16\nw_dim = 16\nmapping_layers = 2\n[discriminator]\nbase_channels = 8\nmax_channels = 16\nhidden = 32\n{}",
            if encoder {
                "[encoder]\nbase_channels = 8\nmax_channels = 16\nhidden = 32\n"
            } else {
                ""
            }
        );
        toml::from_str(&text).unwrap()
    }

    /// Mean of the last `n` values.
    pub fn tail_mean(v: &[f64], n: usize) -> f64 {
        v[v.len() - n..].iter().sum::<f64>() / n as f64
    }
}

#[cfg(test)]
mod tests {
    use super::test_support::{GEOM32, no_default_terms, test_optim, tiny_cfg};
    use super::*;
    use crate::ca_terms::{CodeTerms, ZAdversaryKind};
    use ca_losses::invariance;
    use ca_models::CaModel;
    use ca_models::apply::{ApplyConfig, GanEdit};
    use ca_models::inference::edit_mask;

    /// `apply.gan_edit`: `decode` re-renders from the new codes; `residual` adds G's change
    /// between the codes to the input (so equal codes return the input); both reconstruct by
    /// decoding.
    #[test]
    fn residual_edit_applies_only_the_change_of_the_codes() {
        tch::manual_seed(0);
        let cfg = tiny_cfg(true);
        let geom = GEOM32;
        let nets = GanNets::build(&cfg, geom, (false, false), Device::Cpu).unwrap();
        let tensors: std::collections::HashMap<_, _> = nets.model_tensors().into_iter().collect();
        let file = std::path::Path::new("in-memory");
        let m = GanModel::load(&cfg, geom, &tensors, file, Device::Cpu).unwrap();
        let x = Tensor::rand([3, 3, 32, 32], (Kind::Float, Device::Cpu)) * 1.6 - 0.8;
        let own = m.encode(&x);
        let new = own.without_salient();
        let max_diff = |a: &Tensor, b: &Tensor| (a - b).abs().max().double_value(&[]);
        let (g_own, g_new) = (m.decode(&own, 0), m.decode(&new, 0));
        assert!(
            max_diff(&g_own, &g_new) > 1e-4,
            "the codes change G's output"
        );
        assert_eq!(max_diff(&m.edit(&x, &own, &new), &g_new), 0.0, "decode");
        assert_eq!(max_diff(&m.render(&x, &own), &g_own), 0.0);

        let m = m.with_edit(&ApplyConfig {
            gan_edit: GanEdit::Residual,
            ..Default::default()
        });
        assert!(
            max_diff(&m.edit(&x, &own, &own), &x) < 1e-6,
            "same codes: the input"
        );
        let want = (&x + &g_new - &g_own).clamp(-1.0, 1.0);
        assert!(max_diff(&m.edit(&x, &own, &new), &want) < 1e-6);
        assert!(
            max_diff(&m.edit(&x, &own, &new), &g_new) > 1e-3,
            "not a decode"
        );
        assert_eq!(max_diff(&m.render(&x, &own), &g_own), 0.0, "render decodes");
    }

    /// `apply.gan_edit = "masked"`: the input where G's output does not change, G's new
    /// rendering where it changes by `mask_scale` or more, a linear blend between.
    #[test]
    fn masked_edit_keeps_the_input_where_the_codes_change_nothing() {
        tch::manual_seed(0);
        let cfg = tiny_cfg(false);
        let nets = GanNets::build(&cfg, GEOM32, (false, false), Device::Cpu).unwrap();
        let tensors: std::collections::HashMap<_, _> = nets.model_tensors().into_iter().collect();
        let file = std::path::Path::new("in-memory");
        let apply = ApplyConfig {
            gan_edit: GanEdit::Masked,
            mask_scale: 0.05,
            mask_dilate: 0,
            ..Default::default()
        };
        let m = GanModel::load(&cfg, GEOM32, &tensors, file, Device::Cpu)
            .unwrap()
            .with_edit(&apply);
        let x = Tensor::rand([2, 3, 32, 32], (Kind::Float, Device::Cpu)) * 1.6 - 0.8;
        let own = m.encode(&x);
        let new = own.without_salient();
        let max_diff = |a: &Tensor, b: &Tensor| (a - b).abs().max().double_value(&[]);
        assert_eq!(
            max_diff(&m.edit(&x, &own, &own), &x),
            0.0,
            "same codes: the input"
        );
        let (g_own, g_new) = (m.decode(&own, 0), m.decode(&new, 0));
        let w = edit_mask(&g_new, &g_own, 0.05, 0);
        let want = &x + &w * (&g_new - &x);
        let edited = m.edit(&x, &own, &new);
        assert!(max_diff(&edited, &want) < 1e-6);
        let full = w.eq(1.0).to_kind(Kind::Float);
        let none = w.eq(0.0).to_kind(Kind::Float);
        assert!(
            full.sum(Kind::Float).double_value(&[]) > 0.0 && w.lt(1.0).any().int64_value(&[]) == 1,
            "the test needs pixels fully and partly edited: {w:?}"
        );
        assert!(
            max_diff(&(&edited * &full), &(&g_new * &full)) < 1e-6,
            "new rendering where w = 1"
        );
        assert!(
            max_diff(&(&edited * &none), &(&x * &none)) < 1e-6,
            "input where w = 0"
        );
    }

    /// The value of the term `name` in one step's stats (a panic if it is not logged).
    fn logged(stats: &StepStats, name: &str) -> f64 {
        let (_, v) = stats
            .iter()
            .find(|(n, _)| *n == name)
            .unwrap_or_else(|| panic!("{name} is not logged"));
        v.double_value(&[])
    }

    fn zero_grads(vs: &nn::VarStore) {
        for mut t in vs.trainable_variables() {
            t.zero_grad();
        }
    }

    /// With a classifier that has the labels flipped (target logits negative), a descent step
    /// on the encoder's side moves the logits further from 0 under `reversal` (keeping the
    /// dataset in z) and towards 0 under `confusion`; under `confusion` the classifier's weight
    /// gradient is that of its own BCE alone.
    #[test]
    fn z_adversary_confusion_does_not_reward_flipped_labels() {
        let vs = nn::VarStore::new(Device::Cpu);
        let lin = nn::linear(vs.root() / "a", 2, 1, Default::default());
        tch::no_grad(|| {
            lin.ws
                .shallow_clone()
                .copy_(&Tensor::from_slice(&[-2.0f32, 0.0]).view([1, 2]));
            let _ = lin.bs.as_ref().unwrap().shallow_clone().zero_();
        });
        let is_target = Tensor::from_slice(&[0.0f32, 0.0, 1.0, 1.0]);
        let z0 = Tensor::from_slice(&[-1.0f32, 0.3, -1.2, -0.2, 1.1, 0.1, 0.9, -0.4]).view([4, 2]);
        // The affine standardisation of z0 (fixed), to read the logits after a step.
        let (m, sd) = (z0.mean_dim(0, true, Kind::Float), z0.std_dim(0, true, true));
        let logits_of = |z: &Tensor| ((z - &m) / &sd).matmul(&lin.ws.tr()).squeeze_dim(1);
        let target_abs = |l: &Tensor| l.narrow(0, 2, 2).abs().sum(Kind::Float).double_value(&[]);
        let before = target_abs(&logits_of(&z0));
        let after = |kind| {
            zero_grads(&vs);
            let z = z0.copy().set_requires_grad(true);
            let (total, logged) = z_adversary_terms(&lin, &z, &is_target, kind);
            assert!(
                logged.double_value(&[]) > std::f64::consts::LN_2,
                "flipped: BCE > ln 2"
            );
            total.backward();
            let z1 = tch::no_grad(|| &z0 - z.grad() * 0.05);
            (target_abs(&logits_of(&z1)), lin.ws.grad().copy())
        };
        let (rev, _) = after(ZAdversaryKind::Reversal);
        let (conf, w_grad) = after(ZAdversaryKind::Confusion);
        assert!(rev > before, "reversal: |logits| {before} -> {rev}");
        assert!(conf < before, "confusion: |logits| {before} -> {conf}");
        // The classifier's gradient under `confusion` is its BCE's alone.
        zero_grads(&vs);
        let zs = invariance::standardize_columns(&z0);
        info::class_bce(&lin.forward(&zs).squeeze_dim(1), &is_target)
            .mean(Kind::Float)
            .backward();
        let diff = (w_grad - lin.ws.grad()).abs().max().double_value(&[]);
        assert!(diff < 1e-6, "classifier gradient differs by {diff}");
    }

    /// Regression test: with only the info loss on, the encoder learns to read the codes of
    /// fakes back (the loss falls clearly below the "predict 0" level).
    fn info_is_learnable(encoder: bool) {
        tch::manual_seed(0);
        let geom = GEOM32;
        let cfg = tiny_cfg(encoder);
        let nets = GanNets::build(&cfg, geom, (false, false), Device::Cpu).unwrap();
        let loss = GanLossConfig {
            ca: CodeTerms {
                class: 0.0,
                salient_zero: 0.0,
                ..CodeTerms::default()
            },
            adversarial: 0.0,
            r1_gamma: 0.0,
            recon_pixel: 0.0,
            ..GanLossConfig::default()
        };
        let optim = test_optim();
        let mut step = GanStep::new(nets, &loss, &optim);
        let x = Tensor::rand([8, 3, 32, 32], (Kind::Float, Device::Cpu)) * 2.0 - 1.0;
        let info = |stats: &StepStats| {
            stats
                .iter()
                .filter(|(n, _)| *n == "e_info" || *n == "g_info")
                .map(|(_, t)| t.double_value(&[]))
                .sum::<f64>()
        };
        // Single-step values are noisy (fresh codes every step): compare window means.
        let values: Vec<f64> = (0..400)
            .map(|k| info(&step.step(&x, 4, k).unwrap()))
            .collect();
        let first = values[..5].iter().sum::<f64>() / 5.0;
        let last = values[390..].iter().sum::<f64>() / 10.0;
        assert!(
            last < 0.8 * first,
            "info loss {first} -> {last}: the codes of fakes are not being learned"
        );
    }

    #[test]
    fn info_is_learnable_with_discriminator_heads() {
        info_is_learnable(false);
    }

    // Measured while writing this test: the info loss falls slowly (window means 2.46 -> 1.13
    // over 400 steps with the heads; with a separate encoder about 5% in 60 steps, not
    // reliably). Slow info learning is an open problem of the CA-GAN; only the heads case is
    // asserted here.

    #[test]
    fn salient_ramp_is_linear_then_one() {
        assert_eq!(salient_ramp(0, 0), 1.0);
        assert_eq!(salient_ramp(5, 0), 1.0);
        assert_eq!(salient_ramp(0, 4), 0.0);
        assert_eq!(salient_ramp(1, 4), 0.25);
        assert_eq!(salient_ramp(4, 4), 1.0);
        assert_eq!(salient_ramp(400, 4), 1.0);
    }

    /// `[s, s²]`: a background row at 0 and target rows at ±1 differ only in the second half.
    #[test]
    fn salient_class_features_append_squares() {
        let s = Tensor::from_slice(&[0.0f32, 0.0, 1.0, -1.0, -2.0, 0.5]).reshape([3, 2]);
        let f = salient_class_features(&s);
        assert_eq!(f.size(), vec![3, 4]);
        let got: Vec<f32> = Vec::try_from(f.reshape([-1])).unwrap();
        assert_eq!(
            got,
            vec![
                0.0, 0.0, 0.0, 0.0, 1.0, -1.0, 1.0, 1.0, -2.0, 0.5, 4.0, 0.25
            ]
        );
    }

    /// `loss.salient_decorrelation` on the GAN: logged only when on, and descent on it moves
    /// the encoder's target `s` away from the (detached) `z`.
    #[test]
    fn salient_decorrelation_is_logged_and_descends() {
        tch::manual_seed(0);
        tch::set_num_threads(1);
        let geom = GEOM32;
        let only = |w: f64| {
            let base = no_default_terms();
            GanLossConfig {
                ca: CodeTerms {
                    salient_decorrelation: w,
                    ..base.ca.clone()
                },
                ..base
            }
        };
        let x = Tensor::rand([16, 3, 32, 32], (Kind::Float, Device::Cpu)) * 2.0 - 1.0;
        let nets = GanNets::build(&tiny_cfg(true), geom, (false, false), Device::Cpu).unwrap();
        let mut off = GanStep::new(nets, &only(0.0), &test_optim());
        let stats = off.step(&x, 4, 0).unwrap();
        assert!(stats.iter().all(|(n, _)| *n != "salient_decorrelation"));
        let nets = GanNets::build(&tiny_cfg(true), geom, (false, false), Device::Cpu).unwrap();
        let mut on = GanStep::new(nets, &only(1.0), &test_optim());
        // The correlation itself (no floor: fresh codes are short) on the 12 target rows.
        let corr = |st: &GanStep| {
            let _g = tch::no_grad_guard();
            let c = st.nets.e.as_ref().unwrap().net.forward_t(&x, false);
            let t = |v: &Tensor| v.narrow(0, 4, 12);
            invariance::cross_correlation_sq(&t(&c.z), &t(&c.s), 0.0).double_value(&[])
        };
        let before = corr(&on);
        for k in 0..40 {
            let v = logged(&on.step(&x, 4, k).unwrap(), "salient_decorrelation");
            assert!(v.is_finite() && v >= 0.0, "step {k}: {v}");
        }
        let after = corr(&on);
        assert!(
            after < before * 0.5,
            "squared z-s correlation {before} -> {after}"
        );
    }

    /// `loss.salient_nce` on the GAN, with a separate encoder (trained in the G step) and with
    /// the discriminator's heads (D step): logged only when on, and 40 steps of it (beside the
    /// prior) make the target rows' `s` tell their own views from the other rows' (the term on
    /// fixed views falls).
    #[test]
    fn salient_nce_is_logged_and_descends() {
        tch::set_num_threads(1);
        // With the prior on the codes, as in the presets: a fresh encoder's codes are short
        // and, under the norm floor of 1, InfoNCE alone moves them only slowly.
        let only = |w: f64| {
            let base = no_default_terms();
            GanLossConfig {
                ca: CodeTerms {
                    salient_nce: w,
                    salient_nce_shift: 2,
                    ..base.ca.clone()
                },
                prior: 1.0,
                salient_warmup_steps: 0,
                ..base
            }
        };
        for encoder in [true, false] {
            tch::manual_seed(0);
            // Each row a flat colour: its shifted, mirrored view is the same image, and the
            // rows differ only by colour, which `s` must come to tell apart.
            let x = (Tensor::rand([16, 3, 1, 1], (Kind::Float, Device::Cpu)) * 2.0 - 1.0)
                .expand([16, 3, 32, 32], false)
                .contiguous();
            let nets = GanNets::build(&tiny_cfg(encoder), GEOM32, (false, false), Device::Cpu);
            let mut off = GanStep::new(nets.unwrap(), &only(0.0), &test_optim());
            let stats = off.step(&x, 4, 0).unwrap();
            assert!(stats.iter().all(|(n, _)| *n != "salient_nce"));
            let nets = GanNets::build(&tiny_cfg(encoder), GEOM32, (false, false), Device::Cpu);
            let mut on = GanStep::new(nets.unwrap(), &only(1.0), &test_optim());
            let targets = x.narrow(0, 4, 12);
            let aug = ca_terms::random_aug(12, 2, Device::Cpu);
            let view = ca_terms::shift_mirror(&targets, &aug);
            let nce = |st: &GanStep| {
                let _g = tch::no_grad_guard();
                let (a, b) = (st.nets.salient_live(&targets), st.nets.salient_live(&view));
                ca_terms::salient_nce(&a, &b, 0.2).double_value(&[])
            };
            let before = nce(&on);
            for k in 0..40 {
                let v = logged(&on.step(&x, 4, k).unwrap(), "salient_nce");
                assert!(v.is_finite(), "step {k}: {v}");
            }
            let after = nce(&on);
            eprintln!("encoder {encoder}: salient_nce {before:.3} -> {after:.3} (ln 12 = 2.485)");
            assert!(
                after < before - 0.3,
                "encoder {encoder}: {before} -> {after}"
            );
        }
    }

    /// The salient-class head and the encoder learn together to tell target rows (a bright
    /// patch) from background rows by their `s`, and the heads are checkpointed under `zc.`.
    #[test]
    fn salient_class_separates_the_sets_through_s() {
        tch::manual_seed(0);
        tch::set_num_threads(1);
        let geom = GEOM32;
        let nets = GanNets::build(&tiny_cfg(true), geom, (true, true), Device::Cpu).unwrap();
        let names: Vec<String> = nets.state_tensors().into_iter().map(|(n, _)| n).collect();
        for n in ["zc.salient_class.weight", "zc.z_adversary.weight"] {
            assert!(names.iter().any(|m| m == n), "{n} not in {names:?}");
        }
        let loss = GanLossConfig {
            salient_class: 1.0,
            ..no_default_terms()
        };
        let optim = test_optim();
        let mut step = GanStep::new(nets, &loss, &optim);
        let x = Tensor::rand([8, 3, 32, 32], (Kind::Float, Device::Cpu)) * 0.5 - 0.25;
        // Target rows 4..8 get a bright 8x8 patch at a different place each.
        for (i, (r, c)) in [(2, 3), (15, 20), (22, 5), (9, 12)].into_iter().enumerate() {
            let _ = x
                .get(4 + i as i64)
                .narrow(1, r, 8)
                .narrow(2, c, 8)
                .fill_(1.0);
        }
        let values: Vec<f64> = (0..60)
            .map(|k| logged(&step.step(&x, 4, k).unwrap(), "salient_class"))
            .collect();
        assert!(
            (values[0] - std::f64::consts::LN_2).abs() < 0.2,
            "starts near ln 2: {values:?}"
        );
        let last = values[55..].iter().sum::<f64>() / 5.0;
        assert!(last < 0.2, "salient_class {} -> {last}", values[0]);
    }

    /// A checkpoint written and read back gives the same tensors, bit for bit, and the loaded
    /// model decodes and encodes exactly as the trained EMA networks (tensors compared, not
    /// 8-bit images).
    #[test]
    fn checkpoint_round_trip_is_exact_on_tensors() {
        tch::set_num_threads(1);
        tch::manual_seed(4);
        let cfg = tiny_cfg(true);
        let nets = GanNets::build(&cfg, GEOM32, (false, false), Device::Cpu).unwrap();
        let mut step = GanStep::new(nets, &no_default_terms(), &test_optim());
        let x = Tensor::rand([4, 3, 32, 32], (Kind::Float, Device::Cpu)) * 2.0 - 1.0;
        for k in 0..2 {
            step.step(&x, 2, k).unwrap();
            step.update_ema(0.5);
        }
        let tmp = tempfile::tempdir().unwrap();
        let meta = crate::checkpoint::CheckpointMeta {
            step: 2,
            images_seen: 8,
            wall_clock_s: 0.0,
            model_kind: "gan".into(),
            model_digest: "d".into(),
            seed: 0,
            files: Default::default(),
            lr_scale: 1.0,
            rollbacks: 0,
        };
        let written = step.nets.model_tensors();
        let ck = crate::checkpoint::write(tmp.path(), &meta, &written, &step.state_tensors(), 1)
            .unwrap();
        let read = crate::checkpoint::read_tensors(&ck, "model").unwrap();
        assert_eq!(read.len(), written.len());
        for (name, t) in &written {
            assert!(read[name].equal(t), "{name} differs after save/load");
        }
        let m = GanModel::load(&cfg, GEOM32, &read, &ck, Device::Cpu).unwrap();
        let codes = crate::run::fixed_grid_codes(cfg.dz, cfg.ds, 0, Device::Cpu);
        assert!(m.decode(&codes, 0).equal(&step.samples(&codes)));
        let e = step.nets.e.as_ref().unwrap();
        let live = tch::no_grad(|| e.ema.forward_t(&x, false));
        let loaded = m.encode(&x);
        assert!(loaded.z.equal(&live.z) && loaded.s.equal(&live.s));
    }
}
