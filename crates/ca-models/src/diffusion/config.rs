//! The `[model]` table of a CA-diffusion run: UNet, semantic encoder, noise schedule,
//! parametrisation and latent prior.
//!
//! Every field mirrors a TOML key one-to-one (`deny_unknown_fields`, so a typo is an error naming
//! the key). Defaults are sized for 32x32 training on a 2-core CPU; the DiffAE 64x64 reference
//! values (Preechakul et al. 2022, arXiv 2111.15640) are quoted beside each field for comparison.

use super::DiffusionError;
use crate::ImageGeometry;
use serde::{Deserialize, Serialize};

/// What the denoiser predicts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Prediction {
    /// The added noise `eps` (DDPM, Ho et al. 2020).
    #[default]
    Eps,
    /// The velocity `v = sqrt(a) eps - sqrt(1 - a) x0` (Salimans & Ho 2022, arXiv 2202.00512).
    V,
}

/// The beta schedule of the forward process (`kind = "linear"` or `kind = "cosine"`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase", deny_unknown_fields)]
pub enum ScheduleConfig {
    /// Betas linear in `t` from `beta_start` to `beta_end` (Ho et al. 2020).
    Linear {
        /// Number of training timesteps `T` (DDPM and DiffAE: 1000).
        timesteps: i64,
        /// First beta (DDPM: 1e-4).
        beta_start: f64,
        /// Last beta (DDPM: 0.02).
        beta_end: f64,
    },
    /// `alpha_bar(t) = cos^2(((t/T + s) / (1 + s)) pi/2)` normalised to 1 at `t = 0`, betas
    /// clipped at `max_beta` (Nichol & Dhariwal 2021, arXiv 2102.09672).
    Cosine {
        /// Number of training timesteps `T` (1000 in the paper).
        timesteps: i64,
        /// Offset `s` (paper: 0.008).
        offset: f64,
        /// Upper clip of the betas (paper: 0.999).
        max_beta: f64,
    },
}

impl Default for ScheduleConfig {
    /// DDPM's linear schedule, `T = 1000`, betas `1e-4 .. 0.02` (also DiffAE's).
    fn default() -> Self {
        ScheduleConfig::Linear {
            timesteps: 1000,
            beta_start: 1e-4,
            beta_end: 0.02,
        }
    }
}

impl ScheduleConfig {
    /// The cosine schedule with the paper's constants (`s = 0.008`, max beta 0.999).
    pub fn cosine(timesteps: i64) -> Self {
        ScheduleConfig::Cosine {
            timesteps,
            offset: 0.008,
            max_beta: 0.999,
        }
    }

    /// Number of training timesteps `T`.
    pub fn timesteps(&self) -> i64 {
        match self {
            ScheduleConfig::Linear { timesteps, .. } | ScheduleConfig::Cosine { timesteps, .. } => {
                *timesteps
            }
        }
    }

    /// Check the values; `prefix` is the dotted key of this table (e.g. `model.schedule`).
    pub fn validate(&self, prefix: &str) -> Result<(), DiffusionError> {
        let err = |k: &str, reason: String| DiffusionError::InvalidConfig {
            key: format!("{prefix}.{k}"),
            reason,
        };
        let t = self.timesteps();
        if !(2..=100_000).contains(&t) {
            return Err(err("timesteps", format!("{t} is not in 2..=100000")));
        }
        match *self {
            ScheduleConfig::Linear {
                beta_start,
                beta_end,
                ..
            } => {
                if !(beta_start > 0.0 && beta_start < 1.0) {
                    return Err(err("beta_start", format!("{beta_start} is not in (0, 1)")));
                }
                if !(beta_end >= beta_start && beta_end < 1.0) {
                    return Err(err(
                        "beta_end",
                        format!("{beta_end} is not in [beta_start = {beta_start}, 1)"),
                    ));
                }
            }
            ScheduleConfig::Cosine {
                offset, max_beta, ..
            } => {
                if !(0.0..1.0).contains(&offset) {
                    return Err(err("offset", format!("{offset} is not in [0, 1)")));
                }
                if !(max_beta > 0.0 && max_beta < 1.0) {
                    return Err(err("max_beta", format!("{max_beta} is not in (0, 1)")));
                }
            }
        }
        Ok(())
    }
}

/// The semantic encoder `E(x) -> (z, s)`: a conv stack of residual blocks (a half-UNet).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EncoderConfig {
    /// Channels of the first level (default 32; DiffAE: 64).
    pub base_channels: i64,
    /// Channel multiplier per level; every level but the last halves the resolution
    /// (default `[1, 2, 2, 2]`: 32x32 -> 4x4; DiffAE: `[1, 2, 4, 8, 8]`).
    pub channel_mult: Vec<i64>,
    /// Residual blocks per level (default 1; DiffAE: 2).
    pub res_blocks: i64,
    /// Give `s` its own conv stack (same shape, weights under `salient/`) instead of sharing
    /// `z`'s: the invariance terms on `z` then cannot empty `s` even with
    /// `loss.invariance_scope = "encoder"`. Default false.
    pub separate_salient: bool,
}

impl Default for EncoderConfig {
    fn default() -> Self {
        EncoderConfig {
            base_channels: 32,
            channel_mult: vec![1, 2, 2, 2],
            res_blocks: 1,
            separate_salient: false,
        }
    }
}

/// The latent prior: a small MLP diffusion model over normalised `[z, s]` codes
/// (DiffAE's latent DDPM: 10 layers x 2048 wide; here much smaller).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LatentPriorConfig {
    /// Number of hidden layers (default 4; DiffAE: 10).
    pub layers: i64,
    /// Hidden width (default 256; DiffAE: 2048).
    pub width: i64,
    /// Time-embedding width (default 64).
    pub time_embed_dim: i64,
    /// Dropout inside the MLP during training (default 0.0, as DiffAE's latent net).
    pub dropout: f64,
    /// Noise schedule of the latent model (default: linear, `T = 1000`, `1e-4 .. 0.02`).
    pub schedule: ScheduleConfig,
    /// Parametrisation of the latent model (default `eps`).
    pub prediction: Prediction,
}

impl Default for LatentPriorConfig {
    fn default() -> Self {
        LatentPriorConfig {
            layers: 4,
            width: 256,
            time_embed_dim: 64,
            dropout: 0.0,
            schedule: ScheduleConfig::default(),
            prediction: Prediction::Eps,
        }
    }
}

/// Configuration of a CA-diffusion model (the `[model]` table with `kind = "diffusion"`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DiffusionModelConfig {
    /// Number of common factors `z` (default 32; chosen for the 32x32 synthetic benchmark).
    pub dz: i64,
    /// Number of salient factors `s` (default 8; small, as in Double InfoGAN's `ds = 5`).
    pub ds: i64,
    /// UNet channels at full resolution (default 16, sized for 2-core CPU training at 32x32;
    /// DiffAE 64x64: 64).
    pub base_channels: i64,
    /// UNet channel multiplier per level; every level but the last halves the resolution
    /// (default `[1, 2, 4]`: 16 ch at 32x32, 32 at 16x16, 64 at 8x8; DiffAE 64x64: `[1, 2, 4, 8]`).
    pub channel_mult: Vec<i64>,
    /// Residual blocks per UNet level (default 1; DiffAE: 2).
    pub res_blocks: i64,
    /// Feature-map side lengths (pixels) where self-attention is applied, each <= 16
    /// (default `[16, 8]`, i.e. 16x16 and 8x8 maps at any image size; DiffAE 64x64: `[16]`).
    /// Also applied in the middle block when its side is listed.
    pub attention_resolutions: Vec<i64>,
    /// Attention heads; must divide the channels at every attention level (default 1).
    pub attention_heads: i64,
    /// Groups of every group norm; must divide every channel count (default 8; DiffAE: 32).
    pub norm_groups: i64,
    /// Dropout probability in the residual blocks during training (default 0.1, DiffAE).
    pub dropout: f64,
    /// Width of the time embedding MLP (default 128; DiffAE: 512).
    pub time_embed_dim: i64,
    /// Width of the code embedding MLP on `[z, s]` (default 128; DiffAE: 512).
    pub cond_embed_dim: i64,
    /// Forward-process noise schedule (default linear, `T = 1000`, `1e-4 .. 0.02`, DDPM/DiffAE).
    pub schedule: ScheduleConfig,
    /// What the UNet predicts: `"eps"` (default, DiffAE) or `"v"`.
    pub prediction: Prediction,
    /// The semantic encoder.
    pub encoder: EncoderConfig,
    /// The latent prior over codes used by `ca generate`.
    pub latent_prior: LatentPriorConfig,
}

impl Default for DiffusionModelConfig {
    fn default() -> Self {
        DiffusionModelConfig {
            dz: 32,
            ds: 8,
            base_channels: 16,
            channel_mult: vec![1, 2, 4],
            res_blocks: 1,
            attention_resolutions: vec![16, 8],
            attention_heads: 1,
            norm_groups: 8,
            dropout: 0.1,
            time_embed_dim: 128,
            cond_embed_dim: 128,
            schedule: ScheduleConfig::default(),
            prediction: Prediction::Eps,
            encoder: EncoderConfig::default(),
            latent_prior: LatentPriorConfig::default(),
        }
    }
}

fn invalid(key: &str, reason: impl Into<String>) -> DiffusionError {
    DiffusionError::InvalidConfig {
        key: format!("model.{key}"),
        reason: reason.into(),
    }
}

fn check_positive(key: &str, v: i64) -> Result<(), DiffusionError> {
    if v < 1 {
        return Err(invalid(key, format!("{v} must be >= 1")));
    }
    Ok(())
}

fn check_mult(key: &str, mult: &[i64]) -> Result<(), DiffusionError> {
    if mult.is_empty() || mult.len() > 8 {
        return Err(invalid(
            key,
            format!("needs 1 to 8 levels, got {}", mult.len()),
        ));
    }
    if let Some(m) = mult.iter().find(|m| **m < 1) {
        return Err(invalid(key, format!("multiplier {m} must be >= 1")));
    }
    Ok(())
}

impl DiffusionModelConfig {
    /// Check every value, independent of the images; errors name the key (`model.<key>`).
    pub fn validate(&self) -> Result<(), DiffusionError> {
        check_positive("dz", self.dz)?;
        check_positive("ds", self.ds)?;
        check_positive("base_channels", self.base_channels)?;
        check_mult("channel_mult", &self.channel_mult)?;
        check_positive("res_blocks", self.res_blocks)?;
        check_positive("attention_heads", self.attention_heads)?;
        check_positive("norm_groups", self.norm_groups)?;
        check_positive("time_embed_dim", self.time_embed_dim)?;
        check_positive("cond_embed_dim", self.cond_embed_dim)?;
        if self.time_embed_dim % 2 != 0 {
            return Err(invalid(
                "time_embed_dim",
                "must be even (sin and cos halves)",
            ));
        }
        if !(0.0..1.0).contains(&self.dropout) {
            return Err(invalid(
                "dropout",
                format!("{} is not in [0, 1)", self.dropout),
            ));
        }
        for &r in &self.attention_resolutions {
            if !(1..=16).contains(&r) {
                return Err(invalid(
                    "attention_resolutions",
                    format!("{r}: attention is only allowed at resolutions 1..=16"),
                ));
            }
        }
        let attn_levels: Vec<i64> = self
            .channel_mult
            .iter()
            .map(|m| m * self.base_channels)
            .collect();
        for &c in &attn_levels {
            if c % self.norm_groups != 0 {
                return Err(invalid(
                    "norm_groups",
                    format!("{} does not divide UNet width {c}", self.norm_groups),
                ));
            }
            if c % self.attention_heads != 0 {
                return Err(invalid(
                    "attention_heads",
                    format!("{} does not divide UNet width {c}", self.attention_heads),
                ));
            }
        }
        self.schedule.validate("model.schedule")?;
        let e = &self.encoder;
        check_positive("encoder.base_channels", e.base_channels)?;
        check_mult("encoder.channel_mult", &e.channel_mult)?;
        check_positive("encoder.res_blocks", e.res_blocks)?;
        for c in e.channel_mult.iter().map(|m| m * e.base_channels) {
            if c % self.norm_groups != 0 {
                return Err(invalid(
                    "norm_groups",
                    format!("{} does not divide encoder width {c}", self.norm_groups),
                ));
            }
        }
        let l = &self.latent_prior;
        check_positive("latent_prior.layers", l.layers)?;
        check_positive("latent_prior.width", l.width)?;
        check_positive("latent_prior.time_embed_dim", l.time_embed_dim)?;
        if l.time_embed_dim % 2 != 0 {
            return Err(invalid("latent_prior.time_embed_dim", "must be even"));
        }
        if !(0.0..1.0).contains(&l.dropout) {
            return Err(invalid(
                "latent_prior.dropout",
                format!("{} is not in [0, 1)", l.dropout),
            ));
        }
        l.schedule.validate("model.latent_prior.schedule")?;
        Ok(())
    }

    /// Check that images of geometry `geom` fit the UNet and the encoder: the side must be
    /// divisible by both downsampling factors.
    pub fn validate_geometry(&self, geom: ImageGeometry) -> Result<(), DiffusionError> {
        let bad = |reason: String| DiffusionError::Geometry {
            channels: geom.channels,
            size: geom.size,
            reason,
        };
        if geom.channels < 1 || geom.size < 1 {
            return Err(bad("channels and size must be >= 1".into()));
        }
        for (name, levels) in [
            ("UNet", self.channel_mult.len()),
            ("encoder", self.encoder.channel_mult.len()),
        ] {
            let f = 1i64 << (levels - 1);
            if geom.size % f != 0 {
                return Err(bad(format!(
                    "the {name} has {levels} levels, so the size must be divisible by {f}"
                )));
            }
        }
        Ok(())
    }

    /// Number of UNet levels (resolutions).
    pub fn levels(&self) -> usize {
        self.channel_mult.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_config_is_valid_and_fits_32_64_128() {
        let c = DiffusionModelConfig::default();
        assert_eq!(c.validate(), Ok(()));
        for size in [32, 64, 128] {
            assert_eq!(
                c.validate_geometry(ImageGeometry { channels: 3, size }),
                Ok(())
            );
        }
    }

    #[test]
    fn invalid_values_name_their_key() {
        let c = DiffusionModelConfig {
            attention_resolutions: vec![32],
            ..Default::default()
        };
        match c.validate() {
            Err(DiffusionError::InvalidConfig { key, .. }) => {
                assert_eq!(key, "model.attention_resolutions")
            }
            other => panic!("expected InvalidConfig, got {other:?}"),
        }
        let c = DiffusionModelConfig {
            norm_groups: 7,
            ..Default::default()
        };
        assert!(
            matches!(c.validate(), Err(DiffusionError::InvalidConfig { key, .. }) if key == "model.norm_groups")
        );
        let c = DiffusionModelConfig {
            schedule: ScheduleConfig::Linear {
                timesteps: 1000,
                beta_start: 0.02,
                beta_end: 1e-4,
            },
            ..Default::default()
        };
        assert!(
            matches!(c.validate(), Err(DiffusionError::InvalidConfig { key, .. }) if key == "model.schedule.beta_end")
        );
        let c = DiffusionModelConfig {
            dropout: 1.0,
            ..Default::default()
        };
        assert!(
            matches!(c.validate(), Err(DiffusionError::InvalidConfig { key, .. }) if key == "model.dropout")
        );
    }

    #[test]
    fn geometry_must_divide_downsampling() {
        let c = DiffusionModelConfig::default();
        let e = c.validate_geometry(ImageGeometry {
            channels: 1,
            size: 30,
        });
        assert!(
            matches!(e, Err(DiffusionError::Geometry { size: 30, .. })),
            "{e:?}"
        );
    }

    #[test]
    fn parses_toml_with_defaults_and_rejects_unknown_keys() {
        let text = r#"
            dz = 16
            channel_mult = [1, 2, 2, 2]
            prediction = "v"
            [schedule]
            kind = "cosine"
            timesteps = 500
            offset = 0.008
            max_beta = 0.999
            [encoder]
            res_blocks = 2
        "#;
        let c: DiffusionModelConfig = toml::from_str(text).unwrap();
        assert_eq!(c.dz, 16);
        assert_eq!(c.ds, DiffusionModelConfig::default().ds);
        assert_eq!(c.prediction, Prediction::V);
        assert_eq!(c.schedule, ScheduleConfig::cosine(500));
        assert_eq!(c.encoder.res_blocks, 2);
        assert_eq!(c.encoder.base_channels, 32);
        assert_eq!(c.validate(), Ok(()));
        let back: DiffusionModelConfig = toml::from_str(&toml::to_string(&c).unwrap()).unwrap();
        assert_eq!(back, c);
        let err = toml::from_str::<DiffusionModelConfig>("base_chanels = 8").unwrap_err();
        assert!(err.to_string().contains("base_chanels"), "{err}");
        let err = toml::from_str::<DiffusionModelConfig>(
            "[schedule]\nkind = \"linear\"\ntimesteps = 10\nbeta_start = 0.1\nbeta_end = 0.2\nmax_beta = 1.0",
        )
        .unwrap_err();
        assert!(err.to_string().contains("max_beta"), "{err}");
    }
}
