//! Configuration of the CA-GAN networks: the `[model]` table of a GAN run, one-to-one with TOML.
//!
//! ```toml
//! [model]
//! dz = 95
//! ds = 5
//! [model.generator]
//! kind = "style"        # or "dcgan"
//! base_channels = 16
//! [model.discriminator]
//! base_channels = 16
//! [model.encoder]       # optional: a separate encoder network
//! base_channels = 16
//! ```
//!
//! Every field has a default; the defaults of the `style` generator and the discriminator are
//! sized for 32x32 training on a 2-core CPU.
//! A typo in a key is an error naming it (`deny_unknown_fields`).

use serde::{Deserialize, Serialize};

use super::ModelError;
use crate::ImageGeometry;
use crate::blocks::ModConvMode;

/// The networks of a CA-GAN run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GanModelConfig {
    /// Number of common factors `z` (dimensionless). Default 95: Double InfoGAN on CelebA
    /// (Carton et al., AISTATS 2024).
    #[serde(default = "default_dz")]
    pub dz: i64,
    /// Number of salient factors `s` (dimensionless). Default 5: Double InfoGAN on CelebA.
    #[serde(default = "default_ds")]
    pub ds: i64,
    /// The generator `G(z, s)`; default: the `style` generator with its defaults.
    #[serde(default)]
    pub generator: GeneratorConfig,
    /// The four-headed discriminator (its `z` and `s` heads are the encoder of real images
    /// unless `encoder` is set).
    #[serde(default)]
    pub discriminator: DiscriminatorConfig,
    /// An optional separate encoder network `E(x) -> (z, s)`; absent: the discriminator's heads
    /// encode.
    #[serde(default)]
    pub encoder: Option<EncoderConfig>,
}

fn default_dz() -> i64 {
    95
}
fn default_ds() -> i64 {
    5
}

impl Default for GanModelConfig {
    fn default() -> Self {
        GanModelConfig {
            dz: default_dz(),
            ds: default_ds(),
            generator: GeneratorConfig::default(),
            discriminator: DiscriminatorConfig::default(),
            encoder: None,
        }
    }
}

/// The generator family, chosen by `kind = "dcgan" | "style"`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case", deny_unknown_fields)]
pub enum GeneratorConfig {
    /// The DCGAN generator of the Double InfoGAN baseline (32x32 and 64x64).
    Dcgan(DcganConfig),
    /// The compact StyleGAN2 generator (32x32, 64x64, 128x128).
    Style(StyleConfig),
}

impl Default for GeneratorConfig {
    fn default() -> Self {
        GeneratorConfig::Style(StyleConfig::default())
    }
}

/// The DCGAN generator (Radford, Metz, Chintala, ICLR 2016, arXiv:1511.06434), as used by
/// Double InfoGAN.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DcganConfig {
    /// Channels of the last hidden layer (`ngf`, channels); they double at each lower
    /// resolution. Default 64: DCGAN's `ngf`.
    #[serde(default = "default_dcgan_base")]
    pub base_channels: i64,
}

fn default_dcgan_base() -> i64 {
    64
}

impl Default for DcganConfig {
    fn default() -> Self {
        DcganConfig {
            base_channels: default_dcgan_base(),
        }
    }
}

/// Output activation of the `style` generator.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum OutputActivation {
    /// Linear output, as StyleGAN2: unbounded (clamp to `[-1, 1]` for display), but targets of
    /// exactly `-1` / `1` are reached without saturating gradients.
    #[default]
    Linear,
    /// `tanh`: always in `(-1, 1)`.
    Tanh,
}

/// The compact StyleGAN2 generator (Karras et al., CVPR 2020, arXiv:1912.04958).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StyleConfig {
    /// Fully connected layers of the mapping network `[z, s] -> w` (layers). Default 4
    /// (StyleGAN2 uses 8; halved for CPU training).
    #[serde(default = "default_mapping_layers")]
    pub mapping_layers: i64,
    /// Width of `w` and of the mapping network (features). Default 128 (StyleGAN2: 512).
    #[serde(default = "default_w_dim")]
    pub w_dim: i64,
    /// Channels at the output resolution (channels); each lower resolution doubles them up to
    /// `max_channels`. Default 16: measured to keep a full GAN step at 32x32 on 2 CPU cores fast.
    #[serde(default = "default_style_base")]
    pub base_channels: i64,
    /// Upper bound on the channels of any layer (channels). Default 64 (sized for CPU; StyleGAN2
    /// uses 512).
    #[serde(default = "default_style_max")]
    pub max_channels: i64,
    /// Per-layer noise inputs with learned strength (StyleGAN). Default true. With
    /// `train = false` a fixed noise image per layer (stored, not trained) is used.
    #[serde(default = "default_true")]
    pub noise: bool,
    /// Equalised learning rate (ProGAN, arXiv:1710.10196) for every layer. Default true
    /// (StyleGAN2).
    #[serde(default = "default_true")]
    pub equalized_lr: bool,
    /// Learning-rate multiplier of the mapping network (only with `equalized_lr`).
    /// Default 0.01 (StyleGAN2).
    #[serde(default = "default_mapping_lr_mul")]
    pub mapping_lr_mul: f64,
    /// Pixel-normalise `z` before the mapping network (StyleGAN). `s` is never normalised, so
    /// that `s = 0` stays the background and scaling `s` traverses a salient direction.
    /// Default true.
    #[serde(default = "default_true")]
    pub normalize_z: bool,
    /// Output activation. Default `"linear"` (StyleGAN2).
    #[serde(default)]
    pub output: OutputActivation,
    /// How modulated convolutions apply per-sample kernels: `"scaled"` (input scaling, fast on
    /// CPU) or `"grouped"` (one grouped convolution). Same result. Default `"scaled"`.
    #[serde(default)]
    pub mod_conv: ModConvMode,
}

fn default_mapping_layers() -> i64 {
    4
}
fn default_w_dim() -> i64 {
    128
}
fn default_style_base() -> i64 {
    16
}
fn default_style_max() -> i64 {
    64
}
fn default_true() -> bool {
    true
}
fn default_mapping_lr_mul() -> f64 {
    0.01
}

impl Default for StyleConfig {
    fn default() -> Self {
        StyleConfig {
            mapping_layers: default_mapping_layers(),
            w_dim: default_w_dim(),
            base_channels: default_style_base(),
            max_channels: default_style_max(),
            noise: true,
            equalized_lr: true,
            mapping_lr_mul: default_mapping_lr_mul(),
            normalize_z: true,
            output: OutputActivation::default(),
            mod_conv: ModConvMode::default(),
        }
    }
}

/// The four-headed discriminator: adversarial logit, dataset logit, `z`-head, `s`-head.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DiscriminatorConfig {
    /// Channels at the input resolution (channels); doubled at each lower resolution up to
    /// `max_channels`. Default 16 (sized for 2 CPU cores at 32x32).
    #[serde(default = "default_d_base")]
    pub base_channels: i64,
    /// Upper bound on the channels of any layer (channels). Default 64 (sized for CPU).
    #[serde(default = "default_d_max")]
    pub max_channels: i64,
    /// Width of the fully connected layer before the heads (features). Default 256.
    #[serde(default = "default_hidden")]
    pub hidden: i64,
    /// Group size of the minibatch standard-deviation feature (ProGAN) fed to the adversarial
    /// head only (the encoder heads stay per-image); 0 disables it. Default 4 (StyleGAN2).
    #[serde(default = "default_mbstd_group")]
    pub mbstd_group: i64,
    /// Equalised learning rate for every layer. Default true (StyleGAN2).
    #[serde(default = "default_true")]
    pub equalized_lr: bool,
}

fn default_d_base() -> i64 {
    16
}
fn default_d_max() -> i64 {
    64
}
fn default_hidden() -> i64 {
    256
}
fn default_mbstd_group() -> i64 {
    4
}

impl Default for DiscriminatorConfig {
    fn default() -> Self {
        DiscriminatorConfig {
            base_channels: default_d_base(),
            max_channels: default_d_max(),
            hidden: default_hidden(),
            mbstd_group: default_mbstd_group(),
            equalized_lr: true,
        }
    }
}

/// A separate encoder `E(x) -> (z, s)`: the discriminator's trunk and encoder heads without the
/// adversarial and dataset heads.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EncoderConfig {
    /// Channels at the input resolution (channels), doubled per lower resolution up to
    /// `max_channels`. Default 16.
    #[serde(default = "default_d_base")]
    pub base_channels: i64,
    /// Upper bound on the channels of any layer (channels). Default 64 (sized for CPU).
    #[serde(default = "default_d_max")]
    pub max_channels: i64,
    /// Width of the fully connected layer before the heads (features). Default 256.
    #[serde(default = "default_hidden")]
    pub hidden: i64,
    /// Equalised learning rate for every layer. Default true.
    #[serde(default = "default_true")]
    pub equalized_lr: bool,
    /// Give `s` its own convolutional trunk and hidden layer instead of sharing `z`'s. Every
    /// pressure on `z` (prior, MMD, the z adversary) then leaves the features `s` reads alone.
    /// Default false (one shared trunk, as in the D-heads encoder).
    #[serde(default)]
    pub separate_salient: bool,
}

impl Default for EncoderConfig {
    fn default() -> Self {
        EncoderConfig {
            base_channels: default_d_base(),
            max_channels: default_d_max(),
            hidden: default_hidden(),
            equalized_lr: true,
            separate_salient: false,
        }
    }
}

fn positive(key: &str, v: i64) -> Result<(), ModelError> {
    if v >= 1 {
        Ok(())
    } else {
        Err(ModelError::InvalidConfig {
            key: key.to_string(),
            message: format!("must be >= 1, got {v}"),
        })
    }
}

fn size_in(key: &str, family: &str, size: i64, allowed: &[i64]) -> Result<(), ModelError> {
    if allowed.contains(&size) {
        Ok(())
    } else {
        Err(ModelError::InvalidConfig {
            key: key.to_string(),
            message: format!(
                "`{family}` supports image sizes {allowed:?}, the images are {size}x{size}"
            ),
        })
    }
}

/// `min(max, base * size / res)`: the channel schedule shared by every network here.
pub(crate) fn channels_at(base: i64, max: i64, size: i64, res: i64) -> i64 {
    (base * (size / res)).min(max).max(1)
}

impl GanModelConfig {
    /// Check the config against the image geometry. Errors name the offending key
    /// (`model.generator.base_channels`, ...).
    pub fn validate(&self, geom: ImageGeometry) -> Result<(), ModelError> {
        positive("model.dz", self.dz)?;
        positive("model.ds", self.ds)?;
        if geom.channels < 1 {
            return Err(ModelError::InvalidConfig {
                key: "data.channels".into(),
                message: format!("images must have >= 1 channel, got {}", geom.channels),
            });
        }
        match &self.generator {
            GeneratorConfig::Dcgan(c) => {
                size_in("model.generator.kind", "dcgan", geom.size, &[32, 64])?;
                positive("model.generator.base_channels", c.base_channels)?;
            }
            GeneratorConfig::Style(c) => {
                size_in("model.generator.kind", "style", geom.size, &[32, 64, 128])?;
                positive("model.generator.mapping_layers", c.mapping_layers)?;
                positive("model.generator.w_dim", c.w_dim)?;
                positive("model.generator.base_channels", c.base_channels)?;
                positive("model.generator.max_channels", c.max_channels)?;
                if !(c.mapping_lr_mul > 0.0 && c.mapping_lr_mul.is_finite()) {
                    return Err(ModelError::InvalidConfig {
                        key: "model.generator.mapping_lr_mul".into(),
                        message: format!("must be a positive number, got {}", c.mapping_lr_mul),
                    });
                }
            }
        }
        let d = &self.discriminator;
        size_in(
            "model.discriminator",
            "discriminator",
            geom.size,
            &[32, 64, 128],
        )?;
        positive("model.discriminator.base_channels", d.base_channels)?;
        positive("model.discriminator.max_channels", d.max_channels)?;
        positive("model.discriminator.hidden", d.hidden)?;
        if d.mbstd_group < 0 {
            return Err(ModelError::InvalidConfig {
                key: "model.discriminator.mbstd_group".into(),
                message: format!("must be >= 0 (0 disables it), got {}", d.mbstd_group),
            });
        }
        if let Some(e) = &self.encoder {
            size_in("model.encoder", "encoder", geom.size, &[32, 64, 128])?;
            positive("model.encoder.base_channels", e.base_channels)?;
            positive("model.encoder.max_channels", e.max_channels)?;
            positive("model.encoder.hidden", e.hidden)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const G32: ImageGeometry = ImageGeometry {
        channels: 3,
        size: 32,
    };

    #[test]
    fn parses_a_style_config_with_defaults() {
        let c: GanModelConfig = toml::from_str(
            "dz = 10\nds = 2\n[generator]\nkind = \"style\"\nw_dim = 64\nmod_conv = \"grouped\"\n[encoder]\n",
        )
        .unwrap();
        let GeneratorConfig::Style(s) = &c.generator else {
            panic!("expected style, got {c:?}")
        };
        assert_eq!((c.dz, c.ds, s.w_dim, s.mapping_layers), (10, 2, 64, 4));
        assert_eq!(s.mod_conv, ModConvMode::Grouped);
        assert_eq!(c.encoder, Some(EncoderConfig::default()));
        assert!(c.validate(G32).is_ok());
    }

    #[test]
    fn round_trips_through_toml() {
        let c = GanModelConfig {
            generator: GeneratorConfig::Dcgan(DcganConfig { base_channels: 8 }),
            ..GanModelConfig::default()
        };
        let text = toml::to_string(&c).unwrap();
        assert!(text.contains("kind = \"dcgan\""), "{text}");
        let back: GanModelConfig = toml::from_str(&text).unwrap();
        assert_eq!(back, c);
    }

    #[test]
    fn unknown_keys_are_errors_naming_the_key() {
        for (text, key) in [
            ("dzz = 3", "dzz"),
            ("[generator]\nkind = \"style\"\nwdim = 3", "wdim"),
            ("[generator]\nkind = \"dcgan\"\nbase = 3", "base"),
            ("[discriminator]\nmbstd = 3", "mbstd"),
        ] {
            let err = toml::from_str::<GanModelConfig>(text)
                .unwrap_err()
                .to_string();
            assert!(err.contains(key), "{text:?}: {err}");
        }
        let err = toml::from_str::<GanModelConfig>("[generator]\nkind = \"big\"").unwrap_err();
        assert!(err.to_string().contains("big"), "{err}");
    }

    #[test]
    fn validation_names_the_key() {
        let dcgan = GanModelConfig {
            generator: GeneratorConfig::Dcgan(DcganConfig::default()),
            ..GanModelConfig::default()
        };
        assert!(
            dcgan
                .validate(ImageGeometry {
                    channels: 1,
                    size: 64
                })
                .is_ok()
        );
        let err = dcgan
            .validate(ImageGeometry {
                channels: 3,
                size: 128,
            })
            .unwrap_err();
        assert!(err.to_string().contains("model.generator.kind"), "{err}");
        let style = GanModelConfig::default();
        assert!(
            style
                .validate(ImageGeometry {
                    channels: 3,
                    size: 128
                })
                .is_ok()
        );
        assert!(
            style
                .validate(ImageGeometry {
                    channels: 3,
                    size: 48
                })
                .is_err()
        );
        let bad = GanModelConfig {
            ds: 0,
            ..GanModelConfig::default()
        };
        assert!(
            bad.validate(G32)
                .unwrap_err()
                .to_string()
                .contains("model.ds")
        );
        let mut bad = GanModelConfig::default();
        if let GeneratorConfig::Style(s) = &mut bad.generator {
            s.w_dim = 0;
        }
        assert!(
            bad.validate(G32)
                .unwrap_err()
                .to_string()
                .contains("model.generator.w_dim")
        );
    }

    #[test]
    fn channel_schedule_doubles_and_caps() {
        assert_eq!(channels_at(16, 128, 32, 32), 16);
        assert_eq!(channels_at(16, 128, 32, 8), 64);
        assert_eq!(channels_at(16, 48, 32, 4), 48);
    }
}
