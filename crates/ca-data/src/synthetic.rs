//! The synthetic contrastive-analysis benchmark: procedurally rendered images with known
//! common and salient factors, an exact background counterpart and an overlay mask for every
//! target image (docs/design.md section 5; the CA setting of He, Lesné, Liu, Soumm, Gori,
//! arXiv 2512.12800, 2025, and of Double InfoGAN, Carton, Louiset, Gori, AISTATS 2024).
//!
//! * **Common factors** (both sets, same distribution): background colour, a main object of
//!   4 shape classes (disk, square, triangle, diamond) with position, scale and colour.
//! * **Salient factors** (target set only): an overlay of 3 types that differ in shape
//!   (cross, ring, stripes), with its own position, area and colour. It lands anywhere
//!   (or on the main object, with probability `occlusion`), so no single pixel tells the sets
//!   apart, and its colour is drawn independently of everything else, so the mean colour does
//!   not either.
//!
//! Rendering is analytic: every shape is a signed distance `d` in pixels and its anti-aliased
//! coverage of a pixel is `clamp(0.5 - d, 0, 1)` at the pixel centre; one pass per image, no
//! allocation per pixel. Optional noise (the `noise` knob) is approximately Gaussian (sum of
//! four uniforms) from a counter-based hash, identical in an image and its counterpart, so they
//! differ only where the mask is non-zero.
//!
//! **Mask:** anti-aliased overlay coverage in [0, 1] per pixel (not binary).
//!
//! **Determinism:** factors come from ChaCha8 seeded by `seed`, with stream
//! `(group << 62) | index`, so image `(seed, group, index)` is bit-identical on every call.

use rand::{RngExt, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::config::{Common, Difficulty, SyntheticConfig};
use crate::dataset::{Dataset, Group, LabelColumn, LabelKind};
use crate::error::{DataError, Result};

/// Class of the main object (a common factor).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ShapeClass {
    /// A filled disk.
    Disk = 0,
    /// An axis-aligned filled square.
    Square = 1,
    /// A filled equilateral triangle pointing up.
    Triangle = 2,
    /// A filled square rotated by 45 degrees.
    Diamond = 3,
}

/// Type of the salient overlay.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OverlayType {
    /// A plus sign (arm thickness a third of its side).
    Cross = 0,
    /// An annulus (inner radius half the outer).
    Ring = 1,
    /// Three horizontal bars in a square.
    Stripes = 2,
}

const SHAPES: [ShapeClass; 4] = [
    ShapeClass::Disk,
    ShapeClass::Square,
    ShapeClass::Triangle,
    ShapeClass::Diamond,
];
const OVERLAYS: [OverlayType; 3] = [OverlayType::Cross, OverlayType::Ring, OverlayType::Stripes];

/// The salient factors of a target image.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct OverlayFactors {
    /// Overlay type.
    pub kind: OverlayType,
    /// Centre x as a fraction of the image side.
    pub x: f32,
    /// Centre y as a fraction of the image side.
    pub y: f32,
    /// Nominal area as a fraction of the image area.
    pub area: f32,
    /// Colour, linear RGB in [0, 1].
    pub color: [f32; 3],
}

/// All generative factors of one image.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Factors {
    /// Background colour, RGB in [0, 1].
    pub background: [f32; 3],
    /// Main-object class.
    pub shape: ShapeClass,
    /// Main-object centre x, fraction of the image side.
    pub x: f32,
    /// Main-object centre y, fraction of the image side.
    pub y: f32,
    /// Main-object radius (disk radius; other shapes have the disk's area), fraction of the side.
    pub scale: f32,
    /// Main-object colour, RGB in [0, 1].
    pub color: [f32; 3],
    /// The salient overlay (target images only).
    pub overlay: Option<OverlayFactors>,
}

/// Names of the factor columns, in the order of [`Factors::values`].
pub const FACTOR_NAMES: [&str; 17] = [
    "bg_r",
    "bg_g",
    "bg_b",
    "shape",
    "obj_x",
    "obj_y",
    "obj_scale",
    "obj_r",
    "obj_g",
    "obj_b",
    "overlay_type",
    "overlay_x",
    "overlay_y",
    "overlay_area",
    "overlay_r",
    "overlay_g",
    "overlay_b",
];

/// Kinds of the factor columns, in the order of [`FACTOR_NAMES`].
pub fn factor_kind(name: &str) -> LabelKind {
    if name == "shape" || name == "overlay_type" {
        LabelKind::Categorical
    } else {
        LabelKind::Continuous
    }
}

impl Factors {
    /// Factor values in the order of [`FACTOR_NAMES`]; NaN for the overlay of a background image.
    pub fn values(&self) -> [f64; 17] {
        let n = f64::NAN;
        let o = self.overlay;
        let of = |f: fn(&OverlayFactors) -> f32| o.as_ref().map_or(n, |o| f(o) as f64);
        [
            self.background[0] as f64,
            self.background[1] as f64,
            self.background[2] as f64,
            self.shape as u8 as f64,
            self.x as f64,
            self.y as f64,
            self.scale as f64,
            self.color[0] as f64,
            self.color[1] as f64,
            self.color[2] as f64,
            of(|o| o.kind as u8 as f32),
            of(|o| o.x),
            of(|o| o.y),
            of(|o| o.area),
            of(|o| o.color[0]),
            of(|o| o.color[1]),
            of(|o| o.color[2]),
        ]
    }
}

/// Resolved difficulty knobs.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Knobs {
    /// Overlay area range, fractions of the image area.
    pub overlay_area: [f64; 2],
    /// Probability that the overlay is centred on the main object.
    pub occlusion: f64,
    /// Noise standard deviation in [0, 1] intensity units.
    pub noise: f64,
}

impl Knobs {
    /// Knobs of a preset, overridden by any raw knob set in the config; validated.
    pub fn from_config(c: &SyntheticConfig) -> Result<Self> {
        let preset = match c.difficulty {
            Difficulty::Easy => Knobs {
                overlay_area: [0.12, 0.18],
                occlusion: 0.25,
                noise: 0.0,
            },
            Difficulty::Standard => Knobs {
                overlay_area: [0.08, 0.15],
                occlusion: 0.5,
                noise: 0.02,
            },
            Difficulty::Hard => Knobs {
                overlay_area: [0.03, 0.06],
                occlusion: 0.75,
                noise: 0.05,
            },
        };
        let k = Knobs {
            overlay_area: c.overlay_area.unwrap_or(preset.overlay_area),
            occlusion: c.occlusion.unwrap_or(preset.occlusion),
            noise: c.noise.unwrap_or(preset.noise),
        };
        let [a0, a1] = k.overlay_area;
        if !(a0 > 0.0 && a0 <= a1 && a1 <= 0.3) {
            return Err(DataError::config(format!(
                "data.overlay_area = [{a0}, {a1}] (expected 0 < min <= max <= 0.3)"
            )));
        }
        if !(0.0..=1.0).contains(&k.occlusion) {
            return Err(DataError::config(format!(
                "data.occlusion = {} (expected 0..=1)",
                k.occlusion
            )));
        }
        if !(0.0..=0.5).contains(&k.noise) {
            return Err(DataError::config(format!(
                "data.noise = {} (expected 0..=0.5)",
                k.noise
            )));
        }
        Ok(k)
    }
}

/// Renders images of one size from factors; cheap to copy.
#[derive(Debug, Clone, Copy)]
pub struct Renderer {
    /// Image side in pixels.
    pub size: usize,
    /// Difficulty knobs.
    pub knobs: Knobs,
    /// Seed.
    pub seed: u64,
}

fn hsv(h: f32, s: f32, v: f32) -> [f32; 3] {
    let h6 = (h.rem_euclid(1.0)) * 6.0;
    let c = v * s;
    let x = c * (1.0 - ((h6 % 2.0) - 1.0).abs());
    let m = v - c;
    let (r, g, b) = match h6 as u32 {
        0 => (c, x, 0.0),
        1 => (x, c, 0.0),
        2 => (0.0, c, x),
        3 => (0.0, x, c),
        4 => (x, 0.0, c),
        _ => (c, 0.0, x),
    };
    [r + m, g + m, b + m]
}

#[inline]
fn splitmix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Approximately standard-normal value from 64 random bits (sum of four 16-bit uniforms).
#[inline]
fn gauss(bits: u64) -> f32 {
    let s = (bits & 0xFFFF) + ((bits >> 16) & 0xFFFF) + ((bits >> 32) & 0xFFFF) + (bits >> 48);
    // mean 4 * 32767.5, variance 4 * (65536^2 - 1) / 12
    (s as f32 - 131_070.0) / 37_837.2
}

/// Signed distance (pixels) of a point relative to a shape centre; negative inside.
#[inline]
fn shape_sd(shape: ShapeClass, dx: f32, dy: f32, r: f32) -> f32 {
    const HALF_SIDE: f32 = 0.886_226_9; // sqrt(pi)/2: same area as the disk
    match shape {
        ShapeClass::Disk => (dx * dx + dy * dy).sqrt() - r,
        ShapeClass::Square => {
            let h = r * HALF_SIDE;
            (dx.abs() - h).max(dy.abs() - h)
        }
        ShapeClass::Triangle => {
            // Equilateral, circumradius R with area pi r^2: (3 sqrt3 / 4) R^2 = pi r^2.
            let big_r = r * 1.555_2;
            let e1 = dy;
            let e2 = -0.866_025_4 * dx - 0.5 * dy;
            let e3 = 0.866_025_4 * dx - 0.5 * dy;
            e1.max(e2).max(e3) - 0.5 * big_r
        }
        ShapeClass::Diamond => {
            (dx.abs() + dy.abs()) * std::f32::consts::FRAC_1_SQRT_2 - r * HALF_SIDE
        }
    }
}

/// Half extent (pixels) of an overlay of the given area fraction, and its main dimension.
#[inline]
fn overlay_dims(kind: OverlayType, area: f32, size: f32) -> f32 {
    match kind {
        // side L with arms of thickness L/3: area 5 L^2 / 9
        OverlayType::Cross => (9.0 * area / 5.0).sqrt() * size * 0.5,
        // outer radius R, inner R/2: area 0.75 pi R^2
        OverlayType::Ring => (area / (0.75 * std::f32::consts::PI)).sqrt() * size,
        // square side L, three bars of height L/5: area 3 L^2 / 5
        OverlayType::Stripes => (5.0 * area / 3.0).sqrt() * size * 0.5,
    }
}

#[inline]
fn overlay_sd(kind: OverlayType, dx: f32, dy: f32, half: f32) -> f32 {
    match kind {
        OverlayType::Cross => {
            let t = half / 3.0;
            let a = (dx.abs() - half).max(dy.abs() - t);
            let b = (dx.abs() - t).max(dy.abs() - half);
            a.min(b)
        }
        OverlayType::Ring => ((dx * dx + dy * dy).sqrt() - 0.75 * half).abs() - 0.25 * half,
        OverlayType::Stripes => {
            let h = 0.4 * half; // L / 5
            let v = (dy + half - 0.5 * h).rem_euclid(2.0 * h);
            let stripe = v.min(2.0 * h - v) - 0.5 * h;
            let bx = (dx.abs() - half).max(dy.abs() - half);
            bx.max(stripe)
        }
    }
}

#[inline]
fn lerp3(a: [f32; 3], b: [f32; 3], w: f32) -> [f32; 3] {
    [
        a[0] + w * (b[0] - a[0]),
        a[1] + w * (b[1] - a[1]),
        a[2] + w * (b[2] - a[2]),
    ]
}

#[inline]
fn coverage(d: f32) -> f32 {
    (0.5 - d).clamp(0.0, 1.0)
}

impl Renderer {
    /// A renderer for a config.
    pub fn new(size: usize, cfg: &SyntheticConfig) -> Result<Self> {
        Ok(Self {
            size,
            knobs: Knobs::from_config(cfg)?,
            seed: cfg.seed,
        })
    }

    fn rng(&self, group: Group, index: usize) -> ChaCha8Rng {
        let mut rng = ChaCha8Rng::seed_from_u64(self.seed);
        rng.set_stream(((group as u64) << 62) | index as u64);
        rng
    }

    /// The factors of image `index` of `group` (deterministic in `(seed, group, index)`).
    pub fn factors(&self, group: Group, index: usize) -> Factors {
        let mut rng = self.rng(group, index);
        let u = |rng: &mut ChaCha8Rng, a: f32, b: f32| a + (b - a) * rng.random::<f32>();
        let background = hsv(rng.random(), u(&mut rng, 0.1, 0.6), u(&mut rng, 0.1, 0.5));
        let shape = SHAPES[rng.random_range(0..SHAPES.len())];
        let scale = u(&mut rng, 0.16, 0.26);
        let x = u(&mut rng, 0.3, 0.7);
        let y = u(&mut rng, 0.3, 0.7);
        let color = hsv(rng.random(), u(&mut rng, 0.3, 0.9), u(&mut rng, 0.55, 1.0));
        let overlay = (group == Group::Target).then(|| {
            let kind = OVERLAYS[rng.random_range(0..OVERLAYS.len())];
            let [a0, a1] = self.knobs.overlay_area;
            let area = u(&mut rng, a0 as f32, a1 as f32);
            let half = overlay_dims(kind, area, 1.0);
            let on_object = rng.random::<f64>() < self.knobs.occlusion;
            let (ox, oy) = if on_object {
                let jx = u(&mut rng, -0.5, 0.5) * scale;
                let jy = u(&mut rng, -0.5, 0.5) * scale;
                (
                    (x + jx).clamp(half, 1.0 - half),
                    (y + jy).clamp(half, 1.0 - half),
                )
            } else {
                (u(&mut rng, half, 1.0 - half), u(&mut rng, half, 1.0 - half))
            };
            let color = hsv(rng.random(), u(&mut rng, 0.5, 1.0), u(&mut rng, 0.6, 1.0));
            OverlayFactors {
                kind,
                x: ox,
                y: oy,
                area,
                color,
            }
        });
        Factors {
            background,
            shape,
            x,
            y,
            scale,
            color,
            overlay,
        }
    }

    /// Render RGB u8 CHW images for `f`: `image` (with the overlay, if any), optionally the
    /// counterpart without overlay and the overlay coverage mask. Buffers must hold
    /// `3*size*size` (images) and `size*size` (mask) values. `noise_key` picks the noise field.
    pub fn render(
        &self,
        f: &Factors,
        noise_key: u64,
        image: &mut [u8],
        mut counterpart: Option<&mut [u8]>,
        mut mask: Option<&mut [f32]>,
    ) {
        let n = self.size;
        let np = n * n;
        assert!(
            image.len() == 3 * np,
            "image buffer has {} bytes, expected {}",
            image.len(),
            3 * np
        );
        let s = n as f32;
        let (cx, cy, r) = (f.x * s, f.y * s, f.scale * s);
        let obj_box = (
            (cx - 1.6 * r - 1.0).max(0.0),
            (cx + 1.6 * r + 1.0),
            (cy - 1.6 * r - 1.0).max(0.0),
            cy + 1.6 * r + 1.0,
        );
        let ov = f.overlay.map(|o| {
            let half = overlay_dims(o.kind, o.area, s);
            (o, o.x * s, o.y * s, half)
        });
        let noise = self.knobs.noise as f32;
        let key = splitmix(self.seed ^ splitmix(noise_key));
        let q = |v: f32| ((v.clamp(0.0, 1.0)) * 255.0 + 0.5) as u8;
        for py in 0..n {
            let yc = py as f32 + 0.5;
            for px in 0..n {
                let xc = px as f32 + 0.5;
                let mut c = f.background;
                if xc >= obj_box.0 && xc <= obj_box.1 && yc >= obj_box.2 && yc <= obj_box.3 {
                    let a = coverage(shape_sd(f.shape, xc - cx, yc - cy, r));
                    c = lerp3(c, f.color, a);
                }
                let mut t = c;
                let mut m = 0.0;
                if let Some((o, ox, oy, half)) = ov {
                    let (dx, dy) = (xc - ox, yc - oy);
                    if dx.abs() <= half + 1.0 && dy.abs() <= half + 1.0 {
                        m = coverage(overlay_sd(o.kind, dx, dy, half));
                        t = lerp3(t, o.color, m);
                    }
                }
                let p = py * n + px;
                let mut e = [0.0f32; 3];
                if noise > 0.0 {
                    let base = key ^ (p as u64).wrapping_mul(0xD6E8_FEB8_6659_FD93);
                    for (k, ek) in e.iter_mut().enumerate() {
                        *ek = noise * gauss(splitmix(base.wrapping_add(k as u64)));
                    }
                }
                for k in 0..3 {
                    image[k * np + p] = q(t[k] + e[k]);
                }
                if let Some(cp) = counterpart.as_deref_mut() {
                    for k in 0..3 {
                        cp[k * np + p] = q(c[k] + e[k]);
                    }
                }
                if let Some(mk) = mask.as_deref_mut() {
                    mk[p] = m;
                }
            }
        }
    }

    /// Render one image with its ground truth: `(image, counterpart, mask, factors)`, RGB u8
    /// CHW. For a background image the counterpart is the image and the mask is zero.
    pub fn sample(&self, group: Group, index: usize) -> Sample {
        let f = self.factors(group, index);
        let np = self.size * self.size;
        let mut image = vec![0u8; 3 * np];
        let mut counterpart = vec![0u8; 3 * np];
        let mut mask = vec![0f32; np];
        self.render(
            &f,
            noise_key(group, index),
            &mut image,
            Some(&mut counterpart),
            Some(&mut mask),
        );
        Sample {
            image,
            counterpart,
            mask,
            factors: f,
        }
    }
}

fn noise_key(group: Group, index: usize) -> u64 {
    ((group as u64) << 62) | index as u64
}

/// One rendered image with its ground truth.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    /// RGB u8 CHW.
    pub image: Vec<u8>,
    /// The background counterpart (same common factors, no overlay), RGB u8 CHW.
    pub counterpart: Vec<u8>,
    /// Overlay coverage in [0, 1], `size*size`.
    pub mask: Vec<f32>,
    /// The factors.
    pub factors: Factors,
}

/// File name of image `j` of a set of `n` (zero-padded so that names sort in index order).
pub fn file_name(j: usize, n: usize) -> String {
    let width = n.saturating_sub(1).to_string().len().max(6);
    format!("{j:0width$}.png")
}

/// Convert RGB u8 CHW to grey u8 (`size*size`) with the same luma weights as the `image` crate
/// (so a grey synthetic dataset equals its PNG export read back as grey).
pub fn rgb_chw_to_grey(rgb: &[u8], size: usize) -> Vec<u8> {
    let np = size * size;
    let mut hwc = Vec::with_capacity(3 * np);
    for p in 0..np {
        hwc.extend_from_slice(&[rgb[p], rgb[np + p], rgb[2 * np + p]]);
    }
    let img = image::RgbImage::from_raw(size as u32, size as u32, hwc).expect("buffer size");
    image::DynamicImage::ImageRgb8(img).to_luma8().into_raw()
}

/// The synthetic benchmark as a [`Dataset`]: images rendered on demand.
#[derive(Debug, Clone)]
pub struct SyntheticDataset {
    renderer: Renderer,
    n_background: usize,
    n_target: usize,
    common: Common,
}

impl SyntheticDataset {
    /// A dataset from its config and the resolved shared keys.
    pub fn new(cfg: &SyntheticConfig, common: Common) -> Result<Self> {
        if cfg.n_background == 0 || cfg.n_target == 0 {
            return Err(DataError::config(
                "synthetic data needs n_background >= 1 and n_target >= 1",
            ));
        }
        Ok(Self {
            renderer: Renderer::new(common.size, cfg)?,
            n_background: cfg.n_background,
            n_target: cfg.n_target,
            common,
        })
    }

    /// The renderer (size, knobs, seed).
    pub fn renderer(&self) -> &Renderer {
        &self.renderer
    }

    fn split(&self, index: usize) -> (Group, usize) {
        assert!(
            index < self.len(),
            "index {index} out of range (len {})",
            self.len()
        );
        if index < self.n_background {
            (Group::Background, index)
        } else {
            (Group::Target, index - self.n_background)
        }
    }

    /// Factors of an item.
    pub fn factors(&self, index: usize) -> Factors {
        let (g, j) = self.split(index);
        self.renderer.factors(g, j)
    }

    fn to_channels(&self, rgb: Vec<u8>) -> Vec<u8> {
        if self.common.channels == 1 {
            rgb_chw_to_grey(&rgb, self.common.size)
        } else {
            rgb
        }
    }
}

impl Dataset for SyntheticDataset {
    fn len(&self) -> usize {
        self.n_background + self.n_target
    }
    fn n_background(&self) -> usize {
        self.n_background
    }
    fn common(&self) -> &Common {
        &self.common
    }
    fn file(&self, index: usize) -> String {
        let (g, j) = self.split(index);
        file_name(
            j,
            if g == Group::Background {
                self.n_background
            } else {
                self.n_target
            },
        )
    }
    fn path(&self, _index: usize) -> Option<std::path::PathBuf> {
        None
    }
    fn load(&self, index: usize) -> Result<Vec<u8>> {
        let (g, j) = self.split(index);
        let f = self.renderer.factors(g, j);
        let mut img = vec![0u8; 3 * self.common.size * self.common.size];
        self.renderer
            .render(&f, noise_key(g, j), &mut img, None, None);
        Ok(self.to_channels(img))
    }
    fn counterpart(&self, index: usize) -> Result<Option<Vec<u8>>> {
        let (g, j) = self.split(index);
        let f = Factors {
            overlay: None,
            ..self.renderer.factors(g, j)
        };
        let mut img = vec![0u8; 3 * self.common.size * self.common.size];
        self.renderer
            .render(&f, noise_key(g, j), &mut img, None, None);
        Ok(Some(self.to_channels(img)))
    }
    fn mask(&self, index: usize) -> Result<Option<Vec<f32>>> {
        let (g, j) = self.split(index);
        let np = self.common.size * self.common.size;
        let mut mask = vec![0f32; np];
        if g == Group::Target {
            let s = self.renderer.sample(g, j);
            mask = s.mask;
        }
        Ok(Some(mask))
    }
    fn labels(&self) -> Vec<LabelColumn> {
        let n = self.len();
        let groups: Vec<Group> = (0..n).map(|i| self.group(i)).collect();
        let rows: Vec<[f64; 17]> = (0..n).map(|i| self.factors(i).values()).collect();
        FACTOR_NAMES
            .iter()
            .enumerate()
            .map(|(c, name)| {
                LabelColumn::with_inferred_scope(
                    name,
                    factor_kind(name),
                    rows.iter().map(|r| r[c]).collect(),
                    &groups,
                )
            })
            .collect()
    }
    fn has_ground_truth(&self) -> bool {
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dataset::LabelScope;

    fn ds(size: usize, cfg: SyntheticConfig) -> SyntheticDataset {
        let cfg = SyntheticConfig {
            size: Some(size),
            ..cfg
        };
        let common = crate::DataConfig::Synthetic(cfg.clone()).common().unwrap();
        SyntheticDataset::new(&cfg, common).unwrap()
    }

    #[test]
    fn same_seed_is_bit_identical_and_seeds_differ() {
        let a = ds(
            32,
            SyntheticConfig {
                n_background: 4,
                n_target: 4,
                seed: 7,
                ..Default::default()
            },
        );
        let b = ds(
            32,
            SyntheticConfig {
                n_background: 4,
                n_target: 4,
                seed: 7,
                ..Default::default()
            },
        );
        let c = ds(
            32,
            SyntheticConfig {
                n_background: 4,
                n_target: 4,
                seed: 8,
                ..Default::default()
            },
        );
        for i in 0..8 {
            assert_eq!(a.load(i).unwrap(), b.load(i).unwrap());
            assert_eq!(a.mask(i).unwrap(), b.mask(i).unwrap());
            assert_ne!(a.load(i).unwrap(), c.load(i).unwrap());
        }
        assert_ne!(a.load(0).unwrap(), a.load(1).unwrap());
    }

    #[test]
    fn counterpart_differs_only_under_the_mask() {
        let r = Renderer::new(
            32,
            &SyntheticConfig {
                noise: Some(0.05),
                ..Default::default()
            },
        )
        .unwrap();
        for j in 0..20 {
            let s = r.sample(Group::Target, j);
            let mut inside = 0;
            for p in 0..32 * 32 {
                for k in 0..3 {
                    let (a, b) = (s.image[k * 1024 + p], s.counterpart[k * 1024 + p]);
                    if s.mask[p] == 0.0 {
                        assert_eq!(a, b, "pixel {p} differs outside the mask");
                    } else if a != b {
                        inside += 1;
                    }
                }
            }
            assert!(inside > 0, "overlay invisible in image {j}");
            let b = r.sample(Group::Background, j);
            assert_eq!(b.image, b.counterpart);
            assert!(b.mask.iter().all(|&m| m == 0.0));
        }
    }

    #[test]
    fn standard_overlay_covers_8_to_15_percent_and_has_all_types() {
        let r = Renderer::new(32, &SyntheticConfig::default()).unwrap();
        let mut types = [0usize; 3];
        for j in 0..60 {
            let s = r.sample(Group::Target, j);
            let cov: f32 = s.mask.iter().sum::<f32>() / 1024.0;
            assert!((0.07..=0.16).contains(&cov), "image {j}: coverage {cov}");
            types[s.factors.overlay.unwrap().kind as usize] += 1;
        }
        assert!(types.iter().all(|&t| t >= 5), "{types:?}");
        let hard = Renderer::new(
            32,
            &SyntheticConfig {
                difficulty: Difficulty::Hard,
                ..Default::default()
            },
        )
        .unwrap();
        let cov: f32 = hard.sample(Group::Target, 0).mask.iter().sum::<f32>() / 1024.0;
        assert!(cov < 0.07, "hard coverage {cov}");
    }

    #[test]
    fn overlay_types_differ_in_shape() {
        // Same area and place, different type: the masks must differ on many pixels.
        let r = Renderer::new(32, &SyntheticConfig::default()).unwrap();
        let mut f = r.factors(Group::Target, 0);
        let mut masks = vec![];
        for kind in OVERLAYS {
            f.overlay = Some(OverlayFactors {
                kind,
                x: 0.5,
                y: 0.5,
                area: 0.1,
                color: [1.0; 3],
            });
            let mut img = vec![0; 3 * 1024];
            let mut m = vec![0.0; 1024];
            r.render(&f, 0, &mut img, None, Some(&mut m));
            masks.push(m);
        }
        for a in 0..3 {
            for b in a + 1..3 {
                let diff: f32 = masks[a]
                    .iter()
                    .zip(&masks[b])
                    .map(|(x, y)| (x - y).abs())
                    .sum();
                assert!(diff > 30.0, "types {a} and {b} differ on only {diff} px");
            }
        }
    }

    #[test]
    fn common_factors_match_in_distribution_and_scopes_are_right() {
        let d = ds(
            32,
            SyntheticConfig {
                n_background: 300,
                n_target: 300,
                ..Default::default()
            },
        );
        let labels = d.labels();
        for col in &labels {
            let salient = col.name.starts_with("overlay");
            assert_eq!(col.scope == LabelScope::Salient, salient, "{}", col.name);
            if !salient {
                let mean = |r: std::ops::Range<usize>| {
                    col.values[r.clone()].iter().sum::<f64>() / r.len() as f64
                };
                let (mb, mt) = (mean(0..300), mean(300..600));
                assert!(
                    (mb - mt).abs() < 0.12 * mb.abs().max(0.2),
                    "{}: {mb} vs {mt}",
                    col.name
                );
            }
        }
        assert_eq!(labels.len(), 17);
        // All four shapes occur.
        let shape = &labels[3].values;
        for c in 0..4 {
            assert!(shape.contains(&(c as f64)), "shape {c} missing");
        }
    }

    #[test]
    fn grey_and_64px_work() {
        let d = ds(
            64,
            SyntheticConfig {
                channels: Some(1),
                n_background: 1,
                n_target: 1,
                ..Default::default()
            },
        );
        assert_eq!(d.load(1).unwrap().len(), 64 * 64);
        assert_eq!(d.counterpart(1).unwrap().unwrap().len(), 64 * 64);
        assert!(
            Knobs::from_config(&SyntheticConfig {
                occlusion: Some(2.0),
                ..Default::default()
            })
            .is_err()
        );
    }
}
