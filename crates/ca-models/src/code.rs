//! The contrastive-analysis code: common factors `z` and salient factors `s`.
//!
//! Every model of this crate speaks [`CaCode`]: GAN generators decode it, encoders produce it,
//! and the diffusion UNet is conditioned on it.
//!
//! **Invariant:** "a background image has `s = 0`" is decided in one place only,
//! [`CaCode::background`]. Code that needs the background version of a code calls it (or
//! [`CaCode::without_salient`]) instead of building zeros itself.

use tch::{Kind, Tensor};

/// A batch of CA codes: `z` of shape `[B, dz]`, `s` of shape `[B, ds]`, same device and kind.
#[derive(Debug)]
pub struct CaCode {
    /// Common factors, shape `[B, dz]`.
    pub z: Tensor,
    /// Salient factors, shape `[B, ds]`.
    pub s: Tensor,
}

impl CaCode {
    /// A code from its two parts. Panics (naming the shapes) if the batch sizes differ or a part
    /// is not 2-D.
    pub fn new(z: Tensor, s: Tensor) -> Self {
        let (zs, ss) = (z.size(), s.size());
        assert!(
            zs.len() == 2 && ss.len() == 2 && zs[0] == ss[0],
            "CaCode needs z [B, dz] and s [B, ds] with the same B, got z {zs:?} and s {ss:?}"
        );
        CaCode { z, s }
    }

    /// The code of background images: the given `z` with `s = 0` (`ds` columns).
    /// This is the only place in the workspace where the background convention is applied.
    pub fn background(z: Tensor, ds: i64) -> Self {
        let s = Tensor::zeros([z.size()[0], ds], (z.kind(), z.device()));
        CaCode::new(z, s)
    }

    /// A code with the given salient part (an alias of [`CaCode::new`] that reads better at call
    /// sites that transfer salient factors).
    pub fn with_salient(z: Tensor, s: Tensor) -> Self {
        CaCode::new(z, s)
    }

    /// The same common factors with `s = 0`: the background counterpart's code.
    pub fn without_salient(&self) -> Self {
        CaCode::background(self.z.shallow_clone(), self.ds())
    }

    /// Use `s` for rows where `is_target` is true and `0` elsewhere. `is_target` is `[B]`
    /// (bool or 0/1 of any kind).
    pub fn masked_by_group(&self, is_target: &Tensor) -> Self {
        let m = is_target.to_kind(self.s.kind()).view([-1, 1]);
        CaCode::new(self.z.shallow_clone(), &self.s * m)
    }

    /// Batch size.
    pub fn batch(&self) -> i64 {
        self.z.size()[0]
    }

    /// Number of common factors.
    pub fn dz(&self) -> i64 {
        self.z.size()[1]
    }

    /// Number of salient factors.
    pub fn ds(&self) -> i64 {
        self.s.size()[1]
    }

    /// `[z, s]` concatenated along the feature axis: `[B, dz + ds]`.
    pub fn concat(&self) -> Tensor {
        Tensor::cat(&[&self.z, &self.s], 1)
    }

    /// Split a `[B, dz + ds]` tensor back into a code.
    pub fn split(zs: &Tensor, dz: i64) -> Self {
        let ds = zs.size()[1] - dz;
        CaCode::new(zs.narrow(1, 0, dz), zs.narrow(1, dz, ds))
    }

    /// Rows `start..start+len` of both parts.
    pub fn narrow(&self, start: i64, len: i64) -> Self {
        CaCode::new(self.z.narrow(0, start, len), self.s.narrow(0, start, len))
    }

    /// Both parts detached from the autograd graph.
    pub fn detach(&self) -> Self {
        CaCode::new(self.z.detach(), self.s.detach())
    }

    /// Both parts moved to `device`.
    pub fn to_device(&self, device: tch::Device) -> Self {
        CaCode::new(self.z.to_device(device), self.s.to_device(device))
    }

    /// Both parts as float32 (no copy if they already are).
    pub fn to_float(&self) -> Self {
        CaCode::new(self.z.to_kind(Kind::Float), self.s.to_kind(Kind::Float))
    }

    /// Both parts shallow-cloned (shared storage).
    pub fn shallow_clone(&self) -> Self {
        CaCode::new(self.z.shallow_clone(), self.s.shallow_clone())
    }

    /// Concatenate codes along the batch axis.
    pub fn cat(codes: &[&CaCode]) -> Self {
        let z: Vec<&Tensor> = codes.iter().map(|c| &c.z).collect();
        let s: Vec<&Tensor> = codes.iter().map(|c| &c.s).collect();
        CaCode::new(Tensor::cat(&z, 0), Tensor::cat(&s, 0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn background_has_zero_salient_part() {
        let z = Tensor::ones([3, 4], (Kind::Float, tch::Device::Cpu));
        let c = CaCode::background(z, 2);
        assert_eq!(c.s.size(), vec![3, 2]);
        assert_eq!(c.s.abs().sum(Kind::Float).double_value(&[]), 0.0);
        assert_eq!(c.dz(), 4);
    }

    #[test]
    fn masked_by_group_zeroes_background_rows() {
        let z = Tensor::zeros([2, 1], (Kind::Float, tch::Device::Cpu));
        let s = Tensor::from_slice(&[1.0f32, 2.0, 3.0, 4.0]).view([2, 2]);
        let c = CaCode::new(z, s).masked_by_group(&Tensor::from_slice(&[0i64, 1]));
        let v: Vec<f32> = Vec::try_from(c.s.flatten(0, -1)).unwrap();
        assert_eq!(v, vec![0.0, 0.0, 3.0, 4.0]);
    }

    #[test]
    fn split_inverts_concat() {
        let z = Tensor::from_slice(&[1.0f32, 2.0]).view([1, 2]);
        let s = Tensor::from_slice(&[3.0f32]).view([1, 1]);
        let c = CaCode::new(z, s);
        let back = CaCode::split(&c.concat(), 2);
        assert_eq!(
            Vec::<f32>::try_from(back.s.flatten(0, -1)).unwrap(),
            vec![3.0]
        );
        assert_eq!(
            Vec::<f32>::try_from(back.z.flatten(0, -1)).unwrap(),
            vec![1.0, 2.0]
        );
    }
}
