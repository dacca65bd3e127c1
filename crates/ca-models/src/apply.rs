//! How a trained model edits real images: the `[apply]` table of a run's config. Read by the
//! inference verbs and by evaluation, never by training, so it can change on a trained run.

use serde::{Deserialize, Serialize};

/// How a trained model edits real images (`[apply]`).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ApplyConfig {
    /// How a GAN re-renders a real image `x` (codes `own`) with new codes (counterfactual,
    /// swap).
    pub gan_edit: GanEdit,
    /// How a diffusion model re-renders a real image `x` with new codes: always through the
    /// DDIM inversion `x_T` of `x` under `own`, then decoded under the new codes (`invert`),
    /// blended into `x` where that decoding differs from the decoding under `own` (`masked`), or
    /// regenerated there against the rest of `x` (`inpaint`).
    pub diffusion_edit: DiffusionEdit,
    /// Diffusion edits: before decoding under the new codes, the inverted `x_T` is mixed with
    /// fresh noise, `sqrt(1 - r) x_T + sqrt(r) eps` (fixed seed), so less of what the new codes
    /// remove survives in `x_T` (0 = none, the default; 1 = a fresh `x_T`, keeping only what the
    /// codes describe). `inpaint` mixes only the start of the regenerated region (its mask is
    /// taken before mixing). Reconstruction (`render`) never mixes.
    pub diffusion_renoise: f64,
    /// Diffusion edits: the decoding under the new codes is guided away from the image's own
    /// codes, denoiser output `(1 + w) f(new) - w f(own)` at every step, so what the change of
    /// codes changes is changed `1 + w` times as much (0 = plain decoding, the default; each
    /// step then costs two UNet evaluations). Reconstruction (`render`) is never guided.
    pub diffusion_guidance: f64,
    /// The masked edits (`gan_edit` / `diffusion_edit = "masked"`): a pixel whose rendering
    /// changes by this much (mean absolute difference over channels, 0-1 scale) between the two
    /// codes takes the new rendering fully; smaller changes blend linearly towards `x`
    /// (default 0.1). Read as `gan_mask_scale` too (run configs written before the diffusion
    /// edit had it).
    #[serde(alias = "gan_mask_scale")]
    pub mask_scale: f64,
    /// The masked edits: the mask is widened by this many pixels (a max filter), so the soft
    /// edges drawn around an edited object are covered (default 3). Read as
    /// `gan_mask_dilate` too.
    #[serde(alias = "gan_mask_dilate")]
    pub mask_dilate: i64,
    /// Diffusion: deterministic DDIM steps when decoding new codes from noise (`ca generate`,
    /// the image-quality samples of `ca eval`). Default 50. Environment override:
    /// `CA_DDIM_STEPS` ([`ApplyConfig::with_env_overrides`]). Capped at the schedule's `T`.
    pub diffusion_ddim_steps: usize,
    /// Diffusion: DDIM steps of the inversion of a real image and of its re-decoding
    /// (reconstruct, counterfactual, swap, traverse and their metrics). Default 100 (DiffAE
    /// inverts with about 250). Environment override: `CA_INVERT_STEPS`. Capped at `T`.
    pub diffusion_invert_steps: usize,
    /// Diffusion: DDIM steps when drawing codes from the latent prior (`ca generate`, the
    /// samples of `ca eval`). Default 50. Environment override: `CA_PRIOR_STEPS`. Capped at the
    /// prior's `T`.
    pub diffusion_prior_steps: usize,
}

/// The environment variables that override the sampling step counts of [`ApplyConfig`], with
/// the key each overrides.
pub const STEP_OVERRIDES: [(&str, &str); 3] = [
    ("CA_DDIM_STEPS", "diffusion_ddim_steps"),
    ("CA_INVERT_STEPS", "diffusion_invert_steps"),
    ("CA_PRIOR_STEPS", "diffusion_prior_steps"),
];

impl Default for ApplyConfig {
    fn default() -> Self {
        ApplyConfig {
            gan_edit: GanEdit::default(),
            diffusion_edit: DiffusionEdit::default(),
            diffusion_renoise: 0.0,
            diffusion_guidance: 0.0,
            mask_scale: 0.1,
            mask_dilate: 3,
            diffusion_ddim_steps: 50,
            diffusion_invert_steps: 100,
            diffusion_prior_steps: 50,
        }
    }
}

/// The value of an environment variable, `None` when unset or empty: the `lookup` of
/// [`ApplyConfig::with_env_overrides`] in the tool.
pub fn env_var(var: &str) -> Option<String> {
    std::env::var(var).ok().filter(|v| !v.trim().is_empty())
}

impl ApplyConfig {
    /// These settings with the step counts overridden by the environment variables of
    /// [`STEP_OVERRIDES`] that are set (`lookup` reads one: `std::env::var` in the tool), and the
    /// overrides used as `VAR=VALUE` (recorded by `ca eval`). A value that is not a positive
    /// integer is an error naming the variable.
    pub fn with_env_overrides(
        mut self,
        lookup: impl Fn(&str) -> Option<String>,
    ) -> Result<(Self, Vec<String>), String> {
        let mut used = Vec::new();
        // In the order of STEP_OVERRIDES.
        let fields = [
            &mut self.diffusion_ddim_steps,
            &mut self.diffusion_invert_steps,
            &mut self.diffusion_prior_steps,
        ];
        for ((var, key), field) in STEP_OVERRIDES.into_iter().zip(fields) {
            let Some(raw) = lookup(var) else { continue };
            let n = raw.trim().parse::<usize>().ok().filter(|&n| n > 0).ok_or_else(|| {
                format!("environment variable {var}={raw:?}: must be a positive integer (it overrides apply.{key}); unset it to use the run's config")
            })?;
            *field = n;
            used.push(format!("{var}={n}"));
        }
        Ok((self, used))
    }

    /// The settings that act on a model of `family` (`gan` / `diffusion`), as TOML key-value
    /// pairs on one line (`diffusion_edit = "masked", diffusion_guidance = 1, ...`): what
    /// `ca eval` records beside its numbers and the inference verbs write in their captions.
    pub fn describe(&self, family: &str) -> String {
        let mask = format!(
            "mask_scale = {}, mask_dilate = {}",
            self.mask_scale, self.mask_dilate
        );
        match family {
            "gan" => {
                let edit = match self.gan_edit {
                    GanEdit::Decode => "decode",
                    GanEdit::Residual => "residual",
                    GanEdit::Masked => "masked",
                };
                if self.gan_edit == GanEdit::Masked {
                    format!("gan_edit = \"{edit}\", {mask}")
                } else {
                    format!("gan_edit = \"{edit}\"")
                }
            }
            "diffusion" => {
                let edit = match self.diffusion_edit {
                    DiffusionEdit::Invert => "invert",
                    DiffusionEdit::Masked => "masked",
                    DiffusionEdit::Inpaint => "inpaint",
                };
                let base = format!(
                    "diffusion_edit = \"{edit}\", diffusion_guidance = {}, diffusion_renoise = {}, diffusion_invert_steps = {}",
                    self.diffusion_guidance, self.diffusion_renoise, self.diffusion_invert_steps
                );
                if self.diffusion_edit == DiffusionEdit::Invert {
                    base
                } else {
                    format!("{base}, {mask}")
                }
            }
            _ => format!("{self:?}"),
        }
    }
}

/// How a GAN edits a real image (`apply.gan_edit`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum GanEdit {
    /// `G(new)`: the edit is the generator's rendering, details G cannot reconstruct are lost.
    #[default]
    Decode,
    /// `x + G(new) - G(own)`: only what the change of codes changes in G's output is applied
    /// to `x`, so what G renders badly (fine detail, blur) is kept from `x`, as DDIM inversion
    /// keeps it for a diffusion model.
    Residual,
    /// `x + m * (G(new) - x)`, `m` a soft mask of where G's output changes between the two
    /// codes (`mask_scale`, `mask_dilate`): the new rendering where the codes change the
    /// image, `x` itself elsewhere.
    Masked,
}

/// How a diffusion model edits a real image (`apply.diffusion_edit`). Both start from the DDIM
/// inversion `x_T` of `x` under its own codes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum DiffusionEdit {
    /// `D(x_T, new)`: the deterministic DDIM decoding of `x_T` under the new codes (DiffAE's
    /// edit).
    #[default]
    Invert,
    /// `x + m * (D(x_T, new) - x)`, `m` a soft mask of where `D(x_T, new)` differs from
    /// `D(x_T, own)` (`mask_scale`, `mask_dilate`): what the inverted `x_T` still carries of the
    /// removed content is not spread over the rest of the image, which stays `x` itself. One
    /// more decoding than `invert`.
    Masked,
    /// The masked edit's region regenerated: DDIM decoding under the new codes where, at every
    /// level, the latent outside the mask is held to the inversion path of `x` (inpainting), so
    /// the region is drawn to fit its surroundings, and what `x_T` carries of the removed content
    /// inside it can be replaced by fresh noise (`diffusion_renoise`, there only). Outside the
    /// mask the result is `x`. One more decoding than `masked`.
    Inpaint,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn environment_overrides_replace_the_step_counts_and_are_listed() {
        let env = |var: &str| match var {
            "CA_INVERT_STEPS" => Some("20".to_string()),
            "CA_PRIOR_STEPS" => Some(" 7 ".to_string()),
            _ => None,
        };
        let (a, used) = ApplyConfig::default().with_env_overrides(env).unwrap();
        assert_eq!(
            (
                a.diffusion_ddim_steps,
                a.diffusion_invert_steps,
                a.diffusion_prior_steps
            ),
            (50, 20, 7)
        );
        assert_eq!(used, ["CA_INVERT_STEPS=20", "CA_PRIOR_STEPS=7"]);
        let (same, none) = ApplyConfig::default().with_env_overrides(|_| None).unwrap();
        assert_eq!((same, none.len()), (ApplyConfig::default(), 0));
        for bad in ["0", "-3", "many"] {
            let e = ApplyConfig::default()
                .with_env_overrides(|v| (v == "CA_DDIM_STEPS").then(|| bad.to_string()))
                .unwrap_err();
            assert!(
                e.contains("CA_DDIM_STEPS") && e.contains("apply.diffusion_ddim_steps"),
                "{e}"
            );
        }
    }
}
