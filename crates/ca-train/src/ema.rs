//! Exponential moving average of a network's weights (the EMA generator used for evaluation,
//! as in progressive GANs and StyleGAN2; DiffAE keeps one for its UNet).
//!
//! The half-life is given in images seen, not steps (Karras et al. 2022, EDM), so it does not
//! change meaning with the batch size.

use tch::nn::VarStore;

/// The decay per step giving the requested half-life: `0.5^(batch / half_life_images)`.
pub fn decay_for_half_life(half_life_images: f64, batch: usize) -> f64 {
    if half_life_images <= 0.0 {
        return 0.0;
    }
    0.5f64.powf(batch as f64 / half_life_images)
}

/// `ema <- decay * ema + (1 - decay) * live` for every variable of `live` that `ema` has
/// (trainable weights), and a plain copy of non-trainable buffers (batch-norm statistics).
/// Variables are matched by name; a name missing in `ema` is an error naming it.
pub fn update(ema: &VarStore, live: &VarStore, decay: f64) -> Result<(), String> {
    let _guard = tch::no_grad_guard();
    let ema_vars = ema.variables();
    for (name, src) in live.variables() {
        let Some(dst) = ema_vars.get(&name) else {
            return Err(format!("EMA copy has no variable `{name}`"));
        };
        let mut dst = dst.shallow_clone();
        if src.requires_grad() {
            let _ = dst.lerp_(&src, 1.0 - decay);
        } else {
            dst.copy_(&src);
        }
    }
    Ok(())
}

/// Copy every variable of `src` into `dst` (matched by name).
pub fn copy_all(dst: &VarStore, src: &VarStore) -> Result<(), String> {
    update(dst, src, 0.0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::{Device, Kind, nn};

    #[test]
    fn half_life_decay() {
        // Half-life of 10 images with batches of 10: one step halves the weight of the past.
        assert!((decay_for_half_life(10.0, 10) - 0.5).abs() < 1e-12);
        assert_eq!(decay_for_half_life(0.0, 10), 0.0);
    }

    #[test]
    fn update_moves_towards_live_weights() {
        let live = VarStore::new(Device::Cpu);
        let ema = VarStore::new(Device::Cpu);
        let w = live.root().ones("w", &[2]);
        let e = ema.root().zeros("w", &[2]);
        update(&ema, &live, 0.75).unwrap();
        // 0.75 * 0 + 0.25 * 1
        assert!((e.double_value(&[0]) - 0.25).abs() < 1e-7);
        let _ = w;
        assert_eq!(e.kind(), Kind::Float);
        let other = VarStore::new(Device::Cpu);
        let _ = other.root().zeros("v", &[1]);
        let _ = nn::linear(live.root() / "lin", 1, 1, Default::default());
        assert!(update(&ema, &live, 0.5).unwrap_err().contains("lin"));
    }
}
