//! The two optional terms on the salient code that both model kinds train their encoder with:
//!
//! * `loss.salient_nce` — InfoNCE between the `s` of each target image and of a shifted,
//!   mirrored copy of it ([`shift_mirror`]), the batch's other targets as negatives (SepCLR's
//!   salient term): a reason of `s`'s own to tell target images apart by their salient content,
//!   beyond the dataset head's "is there any".
//! * `loss.salient_decorrelation` — the mean squared correlation between the columns of the
//!   detached common code and of the salient code over the target rows: keeps what `z` carries
//!   (e.g. the background colour that InfoNCE's negatives differ by) out of `s`.
//!
//! Rows are ordered background first, then target (`n_bg` and `n_t` known on the host).

use ca_losses::{contrastive, invariance};
use tch::{Device, Kind, Tensor};

/// Norm floor of the `loss.salient_nce` similarities ([`contrastive::info_nce`]): trained
/// salient codes have norms of ~4 (the diffusion synthetic preset, seed 3, all images), so at 1
/// the term is a cosine once the codes have grown and a bounded dot product before.
pub const SALIENT_NCE_NORM_FLOOR: f64 = 1.0;

/// Floor on the standard deviation of each `s` column in `loss.salient_decorrelation`
/// ([`invariance::cross_correlation_sq`]): bounds the term's gradient while the codes are short
/// (without it, seed 0 of the diffusion preset kept the dataset head on `s` at ln 2 for 800
/// steps).
pub const DECORRELATION_STD_FLOOR: f64 = 1.0;

/// `loss.salient_decorrelation`: the mean squared correlation between the columns of the
/// detached common code `z` and of the salient code `s` over the target rows
/// `n_bg..n_bg + n_t` (background codes have `s = 0` by convention), so only `s` is moved.
pub fn salient_decorrelation(z: &Tensor, s: &Tensor, n_bg: i64, n_t: i64) -> Tensor {
    invariance::cross_correlation_sq(
        &z.narrow(0, n_bg, n_t).detach(),
        &s.narrow(0, n_bg, n_t),
        DECORRELATION_STD_FLOOR,
    )
}

/// `loss.salient_nce` (a scalar): InfoNCE between the salient codes `s` (`[N, ds]`) of `N`
/// target images and `s_view` of their second views, row `i` of each a positive pair and every
/// other row a negative. Both are centred on the mean of the two views' mean codes, so an offset
/// shared by all targets (the direction a dataset head reads) does not dilute the cosines.
/// Computed in fp32 (the codes may come from a bfloat16 autocast region).
pub fn salient_nce(s: &Tensor, s_view: &Tensor, temperature: f64) -> Tensor {
    let (a, b) = (s.to_kind(Kind::Float), s_view.to_kind(Kind::Float));
    let centre = (a.mean_dim([0i64].as_slice(), true, Kind::Float)
        + b.mean_dim([0i64].as_slice(), true, Kind::Float))
        * 0.5;
    contrastive::info_nce(
        &(a - &centre),
        &(b - &centre),
        temperature,
        SALIENT_NCE_NORM_FLOOR,
    )
    .mean(Kind::Float)
}

/// Shifted and mirrored copies of images, per row, in one differentiable resampling: row `i` of
/// the result at pixel `(y, x)` is `x[i]` at `(y + dy_i, x' + dx_i)` with `x' = x` (mirror `1`) or
/// `W - 1 - x` (mirror `-1`); positions outside the image repeat the border pixels.
///
/// # Shapes
/// * `x`: `[N, C, H, W]` float
/// * `aug`: `[N, 3]`, columns `dx`, `dy` (integer pixel shifts) and the mirror sign
/// * returns `[N, C, H, W]`
pub fn shift_mirror(x: &Tensor, aug: &Tensor) -> Tensor {
    let size = x.size();
    let (n, h, w) = (size[0], size[2], size[3]);
    let aug = aug.to_kind(x.kind()).to_device(x.device());
    let dx = aug.select(1, 0) * (2.0 / w as f64);
    let dy = aug.select(1, 1) * (2.0 / h as f64);
    let mirror = aug.select(1, 2);
    let zeros = Tensor::zeros_like(&dx);
    let ones = Tensor::ones_like(&dx);
    let theta =
        Tensor::stack(&[mirror, zeros.shallow_clone(), dx, zeros, ones, dy], 1).view([n, 2, 3]);
    let grid = Tensor::affine_grid_generator(&theta, size.as_slice(), false);
    // interpolation 1 = nearest (the shifts are whole pixels), padding 1 = border
    x.grid_sampler(&grid, 1, 1, false)
}

/// Random [`shift_mirror`] parameters for `b` rows (`[b, 3]` float on `dev`): shifts uniform in
/// `[-max_shift, max_shift]`, mirror with probability ½. Drawn from torch's generator.
pub fn random_aug(b: i64, max_shift: u32, dev: Device) -> Tensor {
    let m = max_shift as i64;
    let shifts = Tensor::randint_low(-m, m + 1, [b, 2], (Kind::Float, dev));
    let mirror = Tensor::randint(2, [b, 1], (Kind::Float, dev)) * 2.0 - 1.0;
    Tensor::cat(&[shifts, mirror], 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One bright pixel moves where the shift and the mirror say; off-image samples repeat the
    /// border; the flag columns act per row.
    #[test]
    fn shift_mirror_moves_pixels_per_row() {
        let mut img = vec![0f32; 2 * 8 * 8];
        img[3 * 8 + 2] = 1.0; // row 0: (y 3, x 2)
        img[64 + 3 * 8 + 2] = 1.0; // row 1: the same
        let x = Tensor::from_slice(&img).view([2, 1, 8, 8]);
        // row 0: shift (dx 1, dy -2): out(y, x) = in(y - 2, x + 1), the pixel lands at (5, 1).
        // row 1: mirror only: out(y, x) = in(y, 7 - x), the pixel lands at (3, 5).
        let aug = Tensor::from_slice(&[1.0f32, -2.0, 1.0, 0.0, 0.0, -1.0]).view([2, 3]);
        let out = shift_mirror(&x, &aug);
        let at = |r: i64, y: i64, xx: i64| out.double_value(&[r, 0, y, xx]);
        assert_eq!(at(0, 5, 1), 1.0);
        assert_eq!(at(1, 3, 5), 1.0);
        assert_eq!(out.sum(Kind::Float).double_value(&[]), 2.0);
        // Border repeat: a ramp along x shifted right by 3 keeps its first column 3 times.
        let ramp = Tensor::arange(8, (Kind::Float, Device::Cpu))
            .view([1, 1, 1, 8])
            .expand([1, 1, 8, 8], false)
            .contiguous();
        let out = shift_mirror(
            &ramp,
            &Tensor::from_slice(&[-3.0f32, 0.0, 1.0]).view([1, 3]),
        );
        let row: Vec<f64> = Vec::try_from(out.get(0).get(0).get(4).to_kind(Kind::Double)).unwrap();
        assert_eq!(row, vec![0.0, 0.0, 0.0, 0.0, 1.0, 2.0, 3.0, 4.0]);
    }

    /// The draws: integer shifts within the bound, mirror signs ±1.
    #[test]
    fn random_aug_stays_in_range() {
        tch::manual_seed(3);
        let a = random_aug(500, 2, Device::Cpu);
        assert_eq!(a.size(), vec![500, 3]);
        let shifts = a.narrow(1, 0, 2);
        assert_eq!(shifts.abs().max().double_value(&[]), 2.0);
        assert!(shifts.eq_tensor(&shifts.round()).all().int64_value(&[]) == 1);
        let m = a.select(1, 2);
        assert!(m.abs().eq(1.0).all().int64_value(&[]) == 1);
        // Both signs occur.
        assert_eq!(m.min().double_value(&[]), -1.0);
        assert_eq!(m.max().double_value(&[]), 1.0);
    }

    /// A shared offset does not change the term (centring), and positives that match their
    /// views score lower than shuffled ones.
    #[test]
    fn salient_nce_ignores_a_shared_offset_and_rewards_matching_views() {
        let s = Tensor::from_slice(&[3.0f32, 0.0, 0.0, 3.0, -3.0, 0.0, 0.0, -3.0]).view([4, 2]);
        let t = 0.5;
        let base = salient_nce(&s, &s, t).double_value(&[]);
        let shifted = salient_nce(&(&s + 10.0), &(&s + 10.0), t).double_value(&[]);
        assert!((base - shifted).abs() < 1e-5, "{base} vs {shifted}");
        let rolled = s.roll([1], [0]);
        let wrong = salient_nce(&s, &rolled, t).double_value(&[]);
        assert!(base < wrong, "matched {base}, rolled {wrong}");
    }
}
