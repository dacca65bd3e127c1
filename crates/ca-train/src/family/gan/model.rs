//! The trained CA-GAN used for inference.

use std::collections::HashMap;
use std::path::Path;

use ca_models::apply::{ApplyConfig, GanEdit};
use ca_models::gan::{self, Discriminator, Encoder, GanModelConfig, Generator};
use ca_models::inference::masked_edit;
use ca_models::{CaCode, CaModel, ImageGeometry};
use tch::nn::VarStore;
use tch::{Device, Kind, Tensor};

use super::GanError;
use crate::checkpoint;

/// A trained CA-GAN for inference: EMA generator and the encoder (EMA encoder or the
/// discriminator's heads).
pub struct GanModel {
    g_vs: VarStore,
    g: Box<dyn Generator>,
    enc: GanEncoder,
    dz: i64,
    ds: i64,
    geom: ImageGeometry,
    /// How real images are edited (`[apply]`: `gan_edit` and the masked edit's settings).
    apply: ApplyConfig,
}

/// The encoder of a trained GAN, with the var store that owns its weights (kept alive).
enum GanEncoder {
    Separate(#[allow(dead_code)] VarStore, Encoder),
    Heads(#[allow(dead_code)] VarStore, Discriminator),
}

impl GanModel {
    /// Build the inference networks and fill them from `model.safetensors` tensors.
    pub fn load(
        cfg: &GanModelConfig,
        geom: ImageGeometry,
        tensors: &HashMap<String, Tensor>,
        file: &Path,
        device: Device,
    ) -> Result<Self, GanError> {
        let g_vs = VarStore::new(device);
        let g = gan::build_generator(&g_vs.root(), cfg, geom)?;
        checkpoint::load_var_store(&g_vs, tensors, "g.", file)?;
        let enc_vs = VarStore::new(device);
        let enc = match gan::build_encoder(&enc_vs.root(), cfg, geom)? {
            Some(e) => {
                checkpoint::load_var_store(&enc_vs, tensors, "e.", file)?;
                GanEncoder::Separate(enc_vs, e)
            }
            None => {
                let d = gan::build_discriminator(&enc_vs.root(), cfg, geom)?;
                checkpoint::load_var_store(&enc_vs, tensors, "d.", file)?;
                GanEncoder::Heads(enc_vs, d)
            }
        };
        Ok(GanModel {
            g_vs,
            g,
            enc,
            dz: cfg.dz,
            ds: cfg.ds,
            geom,
            apply: ApplyConfig::default(),
        })
    }

    /// The same model editing real images the given way (`[apply]`).
    pub fn with_edit(mut self, apply: &ApplyConfig) -> Self {
        self.apply = *apply;
        self
    }
}

impl CaModel for GanModel {
    fn family(&self) -> &'static str {
        "gan"
    }
    fn geometry(&self) -> ImageGeometry {
        self.geom
    }
    fn device(&self) -> Device {
        self.g_vs.device()
    }
    fn dz(&self) -> i64 {
        self.dz
    }
    fn ds(&self) -> i64 {
        self.ds
    }
    fn encode(&self, x: &Tensor) -> CaCode {
        let _g = tch::no_grad_guard();
        match &self.enc {
            GanEncoder::Separate(_, e) => e.forward_t(x, false),
            GanEncoder::Heads(_, d) => d.encode(x),
        }
    }
    fn decode(&self, code: &CaCode, _seed: u64) -> Tensor {
        let _g = tch::no_grad_guard();
        self.g.forward_t(code, false)
    }
    fn edit(&self, x: &Tensor, own: &CaCode, new: &CaCode) -> Tensor {
        match self.apply.gan_edit {
            GanEdit::Decode => self.decode(new, 0),
            GanEdit::Residual => {
                let _g = tch::no_grad_guard();
                let new_img = self.decode(new, 0);
                (x.to_kind(new_img.kind()) + new_img - self.decode(own, 0)).clamp(-1.0, 1.0)
            }
            GanEdit::Masked => {
                let _g = tch::no_grad_guard();
                masked_edit(x, &self.decode(new, 0), &self.decode(own, 0), &self.apply)
            }
        }
    }
    fn render(&self, _x: &Tensor, code: &CaCode) -> Tensor {
        self.decode(code, 0)
    }
    fn sample_codes(&self, n: i64, target: bool, seed: u64) -> CaCode {
        let dev = self.device();
        let mut gen_seed = seed;
        let mut next = || {
            gen_seed = gen_seed.wrapping_add(0x9e3779b97f4a7c15);
            gen_seed
        };
        tch::manual_seed(next() as i64);
        let z = Tensor::randn([n, self.dz], (Kind::Float, dev));
        if target {
            let s = Tensor::randn([n, self.ds], (Kind::Float, dev));
            CaCode::with_salient(z, s)
        } else {
            CaCode::background(z, self.ds)
        }
    }
}
