//! [`CaModel`]: what every trained CA model offers, whatever its family. `ca encode`,
//! `generate`, `swap`, `counterfactual`, `traverse` and `eval` speak only this trait, so a
//! diffusion run and a GAN run are used the same way. The families implement it (in `ca-train`);
//! evaluation (`ca-eval`) and the verbs use it.
//!
//! Images are float `[B, C, H, W]` in `[-1, 1]` on the model's device.

use crate::{CaCode, ImageGeometry};
use tch::{Device, Kind, Tensor};

use crate::apply::ApplyConfig;

/// A trained contrastive-analysis model, ready for inference (EMA weights, eval mode).
pub trait CaModel {
    /// Family name (`gan`, `diffusion`).
    fn family(&self) -> &'static str;
    /// Image geometry.
    fn geometry(&self) -> ImageGeometry;
    /// Device of the networks.
    fn device(&self) -> Device;
    /// Common code size.
    fn dz(&self) -> i64;
    /// Salient code size.
    fn ds(&self) -> i64;
    /// Encode images to their `(z, s)` codes (raw: `s` is whatever the encoder predicts, also
    /// for background images).
    fn encode(&self, x: &Tensor) -> CaCode;
    /// Decode codes to new images (the stochastic part, if any, drawn from `seed`).
    fn decode(&self, code: &CaCode, seed: u64) -> Tensor;
    /// Re-render the images `x`, whose codes are `own`, with the codes `new` — keeping what the
    /// codes do not describe where the model can (diffusion: DDIM inversion of `x` under `own`,
    /// then, per `apply.diffusion_edit`, decoding under `new`, blending that decoding into `x`
    /// where it differs from the decoding under `own`, or regenerating that region against the
    /// rest of `x`, each decoding under `new` guided away from `own` by
    /// `apply.diffusion_guidance`; GAN: `apply.gan_edit`, decoding `new`,
    /// adding `G(new) - G(own)` to `x`, or blending `G(new)` into `x` where it differs from
    /// `G(own)`).
    fn edit(&self, x: &Tensor, own: &CaCode, new: &CaCode) -> Tensor;
    /// The model's own rendering of `x` from its codes `code` (what `reconstruct` and the
    /// reconstruction PSNR measure). Default: `edit(x, code, code)`. A model whose edit could
    /// return `x` unchanged overrides it (both families do: the masked edits return `x` for
    /// unchanged codes).
    fn render(&self, x: &Tensor, code: &CaCode) -> Tensor {
        self.edit(x, code, code)
    }
    /// Draw new codes: background codes (`s = 0`) when `target` is false.
    fn sample_codes(&self, n: i64, target: bool, seed: u64) -> CaCode;
}

/// The masked edits' blend weight `[N, 1, H, W]`: `mean_c |a - b| / 2` (images in `[-1, 1]`,
/// so a 0-1 scale) divided by `scale` and clamped to `[0, 1]`, then widened by a
/// `(2 * dilate + 1)`-pixel max filter.
pub fn edit_mask(a: &Tensor, b: &Tensor, scale: f64, dilate: i64) -> Tensor {
    let d = ((a - b).abs().mean_dim(1, true, Kind::Float) * (0.5 / scale)).clamp(0.0, 1.0);
    if dilate > 0 {
        let k = 2 * dilate + 1;
        d.max_pool2d([k, k], [1, 1], [dilate, dilate], [1, 1], false)
    } else {
        d
    }
}

/// The masked edit of `x` (both families): `x + m * (new_img - x)`, `m` = [`edit_mask`] of
/// `new_img` against `own_img` (the model's renderings of `x` under the new and its own codes,
/// `apply.mask_scale`, `apply.mask_dilate`). Where the change of codes changes nothing, `x` is
/// returned unchanged; where it changes the rendering by `mask_scale` or more, the new rendering.
pub fn masked_edit(x: &Tensor, new_img: &Tensor, own_img: &Tensor, apply: &ApplyConfig) -> Tensor {
    let m =
        edit_mask(new_img, own_img, apply.mask_scale, apply.mask_dilate).to_kind(new_img.kind());
    let x = x.to_kind(new_img.kind());
    &x + m * (new_img - &x)
}

/// The codes used to reconstruct images of known groups: `s := 0` for background rows
/// (`is_target` is `[B]`, 0/1).
pub fn group_code(code: &CaCode, is_target: &Tensor) -> CaCode {
    code.masked_by_group(is_target)
}

/// Reconstruct images of known groups.
pub fn reconstruct(m: &dyn CaModel, x: &Tensor, is_target: &Tensor) -> Tensor {
    let own = m.encode(x);
    let c = group_code(&own, is_target);
    m.render(x, &c)
}

/// Background counterpart: the same images with their salient factors removed (`s := 0`).
pub fn counterpart(m: &dyn CaModel, x: &Tensor) -> Tensor {
    let own = m.encode(x);
    m.edit(x, &own, &own.without_salient())
}

/// Salient transfer: the images `x_bg` with the salient factors of `x_tgt` (row by row).
pub fn swap(m: &dyn CaModel, x_bg: &Tensor, x_tgt: &Tensor) -> Tensor {
    let own = m.encode(x_bg);
    let donor = m.encode(x_tgt);
    let own_bg = own.without_salient();
    let new = CaCode::with_salient(own.z.shallow_clone(), donor.s);
    m.edit(x_bg, &own_bg, &new)
}

/// Saliency map: per-pixel `|x - counterpart(x)|` averaged over channels, in `[0, 1]`
/// (`[B, 1, H, W]`).
pub fn saliency(x: &Tensor, cf: &Tensor) -> Tensor {
    ((x - cf)
        .abs()
        .mean_dim(Some([1i64].as_slice()), true, tch::Kind::Float)
        / 2.0)
        .clamp(0.0, 1.0)
}

/// Run `f` over `x` in chunks of `batch` rows and concatenate the results (bounded memory).
pub fn batched(x: &Tensor, batch: i64, mut f: impl FnMut(&Tensor) -> Tensor) -> Tensor {
    let n = x.size()[0];
    let mut out = Vec::new();
    let mut i = 0;
    while i < n {
        let len = batch.min(n - i);
        out.push(f(&x.narrow(0, i, len)));
        i += len;
    }
    Tensor::cat(&out, 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The mask on hand-computed values: mean over channels of |a - b| / 2, over the scale,
    /// clamped, then a max filter of the dilation's width.
    #[test]
    fn edit_mask_by_hand() {
        // One image, 2 channels, 1 x 4: differences per pixel (c0, c1) = (0, 0), (0.1, 0.1),
        // (0.4, 0), (1.0, 1.0); mean/2 = 0, 0.05, 0.1, 0.5; over scale 0.1: 0, 0.5, 1, 5 -> clamp.
        let a = Tensor::from_slice(&[0.0f32, 0.1, 0.4, 1.0, 0.0, 0.1, 0.0, 1.0]).view([1, 2, 1, 4]);
        let b = Tensor::zeros([1, 2, 1, 4], (Kind::Float, Device::Cpu));
        let m = edit_mask(&a, &b, 0.1, 0);
        assert_eq!(m.size(), [1, 1, 1, 4]);
        let got: Vec<f32> = m.flatten(0, -1).try_into().unwrap();
        for (g, w) in got.iter().zip([0.0f32, 0.5, 1.0, 1.0]) {
            assert!((g - w).abs() < 1e-6, "{got:?}");
        }
        // Dilation 1 on the same row: each pixel takes the max of itself and its neighbours.
        let a = Tensor::from_slice(&[0.0f32, 0.0, 0.1, 0.0, 0.0, 0.0, 0.1, 0.0]).view([1, 2, 1, 4]);
        let got: Vec<f32> = edit_mask(&a, &b, 0.1, 1).flatten(0, -1).try_into().unwrap();
        for (g, w) in got.iter().zip([0.0f32, 0.5, 0.5, 0.5]) {
            assert!((g - w).abs() < 1e-6, "{got:?}");
        }
    }
}
