//! CA-GAN networks (docs/design.md section 4.1).
//!
//! * [`config`] — [`GanModelConfig`], the `[model]` table of a GAN run, and its validation;
//! * [`dcgan`] — the DCGAN generator of the Double InfoGAN baseline (Carton, Louiset, Gori,
//!   AISTATS 2024);
//! * [`style`] — a compact StyleGAN2 generator (Karras et al., CVPR 2020, arXiv:1912.04958):
//!   mapping network, modulated convolutions, noise inputs, toRGB skips;
//! * [`discriminator`] — the four-headed discriminator (adversarial, dataset, `z`, `s`) that also
//!   returns its feature maps at several scales;
//! * [`encoder`] — an optional separate encoder `E(x) -> (z, s)`.
//!
//! Build the networks with [`build_generator`], [`build_discriminator`] and [`build_encoder`]
//! from the validated config and the [`ImageGeometry`]; each under its own `nn::Path` (typically
//! the root of its own `VarStore`). Parameter names follow what a PyTorch re-implementation would
//! use (`mapping.0.weight`, `convs.3.conv.modulation.bias`, `main.0.weight`, ...), so a
//! safetensors checkpoint needs no renaming map.
//!
//! The defaults of the `style` generator and the discriminator are sized for 32x32 training on
//! a 2-core CPU (channels 16 at 32x32, doubling per halving up to 64).

pub mod config;
pub mod dcgan;
pub mod discriminator;
pub mod encoder;
pub mod style;

use std::collections::BTreeMap;

use tch::{Tensor, nn};

use crate::{CaCode, ImageGeometry};

pub use config::{
    DcganConfig, DiscriminatorConfig, EncoderConfig, GanModelConfig, GeneratorConfig,
    OutputActivation, StyleConfig,
};
pub use dcgan::DcganGenerator;
pub use discriminator::{DiscOutput, Discriminator};
pub use encoder::Encoder;
pub use style::StyleGenerator;

/// Errors of building a network from its config.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    /// A config value is out of range or does not fit the image geometry.
    #[error("invalid model config `{key}`: {message}")]
    InvalidConfig {
        /// The dotted TOML key, e.g. `model.generator.base_channels`.
        key: String,
        /// What is wrong with it.
        message: String,
    },
}

/// A CA-GAN generator `G(z, s) -> image` (`[B, C, H, W]`, nominally in `[-1, 1]`).
pub trait Generator: Send {
    /// Decode a code. `train = true` draws fresh per-layer noise and uses batch statistics where
    /// the network has them; `train = false` is deterministic (fixed noise, running statistics).
    fn forward_t(&self, code: &CaCode, train: bool) -> Tensor;
}

/// Build the generator named by `cfg.generator` under `p`, after [`GanModelConfig::validate`].
pub fn build_generator(
    p: &nn::Path,
    cfg: &GanModelConfig,
    geom: ImageGeometry,
) -> Result<Box<dyn Generator>, ModelError> {
    cfg.validate(geom)?;
    Ok(match &cfg.generator {
        GeneratorConfig::Dcgan(c) => Box::new(DcganGenerator::new(p, c, cfg.dz, cfg.ds, geom)),
        GeneratorConfig::Style(c) => Box::new(StyleGenerator::new(p, c, cfg.dz, cfg.ds, geom)),
    })
}

/// Build the four-headed discriminator under `p`, after [`GanModelConfig::validate`].
pub fn build_discriminator(
    p: &nn::Path,
    cfg: &GanModelConfig,
    geom: ImageGeometry,
) -> Result<Discriminator, ModelError> {
    cfg.validate(geom)?;
    Ok(Discriminator::new(
        p,
        &cfg.discriminator,
        cfg.dz,
        cfg.ds,
        geom,
    ))
}

/// Build the separate encoder under `p` if `cfg.encoder` is set (`Ok(None)` otherwise), after
/// [`GanModelConfig::validate`].
pub fn build_encoder(
    p: &nn::Path,
    cfg: &GanModelConfig,
    geom: ImageGeometry,
) -> Result<Option<Encoder>, ModelError> {
    cfg.validate(geom)?;
    Ok(cfg
        .encoder
        .as_ref()
        .map(|e| Encoder::new(p, e, cfg.dz, cfg.ds, geom)))
}

/// Trainable parameter counts of a `VarStore`, grouped by the first component of their names
/// (`mapping`, `convs`, `to_rgbs`, ...), one `name: count` per line and a `total` line.
pub fn summary(vs: &nn::VarStore) -> String {
    let mut groups: BTreeMap<String, i64> = BTreeMap::new();
    let mut total = 0;
    for (name, t) in vs.variables() {
        if !t.requires_grad() {
            continue;
        }
        let n: i64 = t.size().iter().product();
        let group = name.split('.').next().unwrap_or(&name).to_string();
        *groups.entry(group).or_default() += n;
        total += n;
    }
    let mut out = String::new();
    for (g, n) in groups {
        out.push_str(&format!("{g}: {n}\n"));
    }
    out.push_str(&format!("total: {total}\n"));
    out
}

/// Test helpers shared by the GAN modules (and the diffusion encoder's gradient test).
#[cfg(test)]
pub(crate) mod test_util {
    use tch::{Device, Kind, Tensor, nn};

    use crate::CaCode;

    /// A random code of batch `b`.
    pub fn code(b: i64, dz: i64, ds: i64) -> CaCode {
        CaCode::new(
            Tensor::randn([b, dz], (Kind::Float, Device::Cpu)),
            Tensor::randn([b, ds], (Kind::Float, Device::Cpu)),
        )
    }

    /// Names of trainable variables whose gradient is missing or exactly zero.
    pub fn dead_parameters(vs: &nn::VarStore) -> Vec<String> {
        let mut dead: Vec<String> = vs
            .variables()
            .into_iter()
            .filter(|(_, t)| t.requires_grad())
            .filter(|(_, t)| {
                let g = t.grad();
                !g.defined() || g.abs().sum(Kind::Float).double_value(&[]) == 0.0
            })
            .map(|(n, _)| n)
            .collect();
        dead.sort();
        dead
    }

    /// Names of the trainable variables that `loss` reaches (sorted): every gradient is zeroed,
    /// `loss` backpropagated, and the variables not [`dead_parameters`] kept.
    pub fn parameters_reached_by(vs: &nn::VarStore, loss: &Tensor) -> Vec<String> {
        for mut t in vs.trainable_variables() {
            t.zero_grad();
        }
        loss.backward();
        let dead = dead_parameters(vs);
        let mut live: Vec<String> = vs
            .variables()
            .into_iter()
            .filter(|(n, t)| t.requires_grad() && !dead.contains(n))
            .map(|(n, _)| n)
            .collect();
        live.sort();
        live
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::Device;

    #[test]
    fn build_rejects_an_invalid_config() {
        let vs = nn::VarStore::new(Device::Cpu);
        let cfg = GanModelConfig {
            dz: 0,
            ..GanModelConfig::default()
        };
        let geom = ImageGeometry {
            channels: 3,
            size: 32,
        };
        let err = build_generator(&vs.root(), &cfg, geom).err().unwrap();
        assert!(err.to_string().contains("model.dz"), "{err}");
        assert!(build_discriminator(&vs.root(), &cfg, geom).is_err());
        assert!(
            build_encoder(&vs.root(), &GanModelConfig::default(), geom)
                .unwrap()
                .is_none()
        );
    }

    #[test]
    fn summary_groups_by_sub_net() {
        let vs = nn::VarStore::new(Device::Cpu);
        let geom = ImageGeometry {
            channels: 3,
            size: 32,
        };
        let _g = build_generator(&vs.root(), &GanModelConfig::default(), geom).unwrap();
        let s = summary(&vs);
        assert!(
            s.contains("mapping: ") && s.contains("convs: ") && s.contains("total: "),
            "{s}"
        );
        assert!(
            !s.contains("noises"),
            "fixed noise buffers are not trainable: {s}"
        );
    }
}
