//! The trained CA-diffusion model used for inference: EMA UNet, EMA encoder, latent prior, and
//! the edits of real images through DDIM inversion.

use std::collections::HashMap;
use std::path::Path;

use ca_models::apply::{ApplyConfig, DiffusionEdit};
use ca_models::diffusion::{
    self as dm, CodeGroup, CondUnet, DdimOptions, Denoiser, DiffusionModelConfig, Guided,
    GuidedCond, LatentPrior, NoiseSchedule, SemanticEncoder, TorchNoise, ddim,
};
use ca_models::inference::{edit_mask, masked_edit};
use ca_models::{CaCode, CaModel, ImageGeometry};
use tch::nn::VarStore;
use tch::{Device, Tensor};

use super::{DiffusionTrainError, ddim_decode, seeded_noise};
use crate::checkpoint;

/// A trained CA-diffusion model for inference: EMA UNet, EMA encoder, latent prior.
pub struct DiffusionModel {
    pub(super) unet_vs: VarStore,
    pub(super) unet: CondUnet,
    #[allow(dead_code)]
    enc_vs: VarStore,
    pub(super) enc: SemanticEncoder,
    #[allow(dead_code)]
    prior_vs: VarStore,
    pub(super) prior: LatentPrior,
    pub(super) schedule: NoiseSchedule,
    pub(super) prior_schedule: NoiseSchedule,
    dz: i64,
    ds: i64,
    geom: ImageGeometry,
    /// How real images are edited (`[apply]`: `diffusion_edit`, `diffusion_renoise` and the
    /// masked edit's settings).
    apply: ApplyConfig,
}

/// Seed of the fresh noise that `apply.diffusion_renoise` mixes into an inverted `x_T`.
pub const RENOISE_SEED: u64 = 0x02E4_015E;

impl DiffusionModel {
    /// Build the inference networks and fill them from `model.safetensors` tensors.
    pub fn load(
        cfg: &DiffusionModelConfig,
        geom: ImageGeometry,
        tensors: &HashMap<String, Tensor>,
        file: &Path,
        device: Device,
    ) -> Result<Self, DiffusionTrainError> {
        let unet_vs = VarStore::new(device);
        let unet = dm::build_unet(&unet_vs.root(), cfg, geom)?;
        checkpoint::load_var_store(&unet_vs, tensors, "unet.", file)?;
        let enc_vs = VarStore::new(device);
        let enc = dm::build_encoder(&enc_vs.root(), cfg, geom)?;
        checkpoint::load_var_store(&enc_vs, tensors, "enc.", file)?;
        let prior_vs = VarStore::new(device);
        let prior = dm::build_latent_prior(&prior_vs.root(), cfg)?;
        checkpoint::load_var_store(&prior_vs, tensors, "prior.", file)?;
        Ok(DiffusionModel {
            unet_vs,
            unet,
            enc_vs,
            enc,
            prior_vs,
            prior,
            schedule: NoiseSchedule::new(&cfg.schedule, device)?,
            prior_schedule: NoiseSchedule::new(&cfg.latent_prior.schedule, device)?,
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

    /// DDIM inversion of images `x` under their codes `own`: the `x_T` that
    /// [`DiffusionModel::decode_from`] maps back to `x` (`apply.diffusion_invert_steps` steps).
    pub fn invert(&self, x: &Tensor, own: &CaCode) -> Tensor {
        let steps = self.invert_steps();
        ddim::invert(&self.unet, &self.schedule, x, own, steps).expect("steps are capped at T")
    }

    pub(super) fn invert_steps(&self) -> usize {
        capped(self.apply.diffusion_invert_steps, &self.schedule)
    }

    /// `x_T` mixed with the fixed-seed noise by `apply.diffusion_renoise` (unchanged at 0).
    fn renoised(&self, x_t: Tensor) -> Tensor {
        let r = self.apply.diffusion_renoise;
        if r > 0.0 {
            let eps = seeded_noise(&x_t.size(), RENOISE_SEED, x_t.device());
            x_t * (1.0 - r).sqrt() + eps * r.sqrt()
        } else {
            x_t
        }
    }

    /// `apply.diffusion_edit = "inpaint"`: the masked edit's mask (decodings of the inverted
    /// `x_T` under `new` and `own`), then DDIM decoding under `new` (guided) from the renoised
    /// `x_T` with everything outside the mask held to the inversion path of `x`.
    fn inpaint(&self, x: &Tensor, own: &CaCode, new: &CaCode) -> Tensor {
        let steps = self.invert_steps();
        let path = ddim::invert_path(&self.unet, &self.schedule, x, own, steps)
            .expect("steps are capped at T");
        let x_t = path.last().expect("at least one step");
        let mask = edit_mask(
            &self.decode_edit(x_t, new, own),
            &self.decode_from(x_t, own),
            self.apply.mask_scale,
            self.apply.mask_dilate,
        );
        ddim::sample_inpaint(
            &self.guided(),
            &self.schedule,
            &GuidedCond {
                toward: new,
                away: own,
            },
            &self.renoised(x_t.shallow_clone()),
            &path,
            x,
            &mask,
            &DdimOptions::deterministic(steps),
            &mut TorchNoise,
        )
        .expect("the path has the steps' length")
        .clamp(-1.0, 1.0)
    }

    /// The UNet guided by `apply.diffusion_guidance`.
    fn guided(&self) -> Guided<'_, CondUnet> {
        Guided {
            denoiser: &self.unet,
            weight: self.apply.diffusion_guidance,
        }
    }

    /// [`DiffusionModel::decode_from`] under the new codes `new` of an edit, guided away from
    /// the image's own codes `own` by `apply.diffusion_guidance`.
    pub fn decode_edit(&self, x_t: &Tensor, new: &CaCode, own: &CaCode) -> Tensor {
        let cond = GuidedCond {
            toward: new,
            away: own,
        };
        self.decode_with(&self.guided(), &cond, x_t)
    }

    /// Deterministic DDIM decoding of `code` from a given `x_T` (`apply.diffusion_invert_steps` steps, the
    /// inversion's), output clamped to `[-1, 1]`.
    pub fn decode_from(&self, x_t: &Tensor, code: &CaCode) -> Tensor {
        self.decode_with(&self.unet, code, x_t)
    }

    /// The deterministic decoding both of the above run: the inversion's steps, clamped.
    fn decode_with<C: ?Sized, D: Denoiser<C>>(
        &self,
        denoiser: &D,
        cond: &C,
        x_t: &Tensor,
    ) -> Tensor {
        ddim::sample(
            denoiser,
            &self.schedule,
            cond,
            x_t,
            &DdimOptions::deterministic(self.invert_steps()),
            &mut TorchNoise,
        )
        .expect("steps are capped at T")
        .clamp(-1.0, 1.0)
    }
}

impl CaModel for DiffusionModel {
    fn family(&self) -> &'static str {
        "diffusion"
    }
    fn geometry(&self) -> ImageGeometry {
        self.geom
    }
    fn device(&self) -> Device {
        self.unet_vs.device()
    }
    fn dz(&self) -> i64 {
        self.dz
    }
    fn ds(&self) -> i64 {
        self.ds
    }
    fn encode(&self, x: &Tensor) -> CaCode {
        let _g = tch::no_grad_guard();
        self.enc.forward_t(x, false)
    }
    fn decode(&self, code: &CaCode, seed: u64) -> Tensor {
        let steps = capped(self.apply.diffusion_ddim_steps, &self.schedule);
        let code = code.to_device(self.device()).to_float();
        ddim_decode(&self.unet, &self.schedule, &code, seed, steps).expect("steps are capped at T")
    }
    fn edit(&self, x: &Tensor, own: &CaCode, new: &CaCode) -> Tensor {
        let _g = tch::no_grad_guard();
        match self.apply.diffusion_edit {
            DiffusionEdit::Invert => {
                self.decode_edit(&self.renoised(self.invert(x, own)), new, own)
            }
            DiffusionEdit::Masked => {
                let x_t = self.renoised(self.invert(x, own));
                let new_img = self.decode_edit(&x_t, new, own);
                masked_edit(x, &new_img, &self.decode_from(&x_t, own), &self.apply)
            }
            DiffusionEdit::Inpaint => self.inpaint(x, own, new),
        }
    }
    fn render(&self, x: &Tensor, code: &CaCode) -> Tensor {
        let _g = tch::no_grad_guard();
        self.decode_from(&self.invert(x, code), code)
    }
    fn sample_codes(&self, n: i64, target: bool, seed: u64) -> CaCode {
        let steps = capped(self.apply.diffusion_prior_steps, &self.prior_schedule);
        tch::manual_seed(crate::step::mix(seed ^ 0xC0DE) as i64);
        let group = if target {
            CodeGroup::Target
        } else {
            CodeGroup::Background
        };
        self.prior
            .sample(
                &self.prior_schedule,
                n,
                group,
                &DdimOptions::deterministic(steps),
                &mut TorchNoise,
            )
            .expect("steps are capped at T")
    }
}

/// A step count capped at the schedule's `T`.
fn capped(steps: usize, schedule: &NoiseSchedule) -> usize {
    steps.min(schedule.timesteps().max(1) as usize)
}
