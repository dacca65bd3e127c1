//! Writing image grids and the loss-curve plot as PNG files.

use std::path::Path;

use tch::{Kind, Tensor};

/// Errors of writing images.
#[derive(Debug, thiserror::Error)]
#[error("cannot write image '{path}': {msg}")]
pub struct ImageWriteError {
    /// The file.
    pub path: std::path::PathBuf,
    /// What went wrong.
    pub msg: String,
}

/// Float images in [-1, 1] (`[N, C, H, W]`, C = 1 or 3) -> u8 `[N, H, W, 3]` on the CPU.
pub fn to_rgb_u8(x: &Tensor) -> Tensor {
    let x = ((x.detach().to_device(tch::Device::Cpu).to_kind(Kind::Float) + 1.0) * 127.5)
        .round()
        .clamp(0.0, 255.0)
        .to_kind(Kind::Uint8);
    let x = if x.size()[1] == 1 {
        x.repeat([1, 3, 1, 1])
    } else {
        x
    };
    x.permute([0, 2, 3, 1]).contiguous()
}

/// Tile `x` (float in [-1, 1], `[N, C, H, W]`) into a grid of `ncol` columns with a 2-pixel
/// light-grey gutter, and write it as PNG.
pub fn save_grid(x: &Tensor, ncol: usize, path: &Path) -> Result<(), ImageWriteError> {
    let err = |msg: String| ImageWriteError {
        path: path.to_path_buf(),
        msg,
    };
    let imgs = to_rgb_u8(x);
    let (n, h, w) = (
        imgs.size()[0] as usize,
        imgs.size()[1] as usize,
        imgs.size()[2] as usize,
    );
    if n == 0 {
        return Err(err("no images to write".into()));
    }
    let ncol = ncol.clamp(1, n);
    let nrow = n.div_ceil(ncol);
    let pad = 2;
    let (gw, gh) = (ncol * (w + pad) + pad, nrow * (h + pad) + pad);
    let data: Vec<u8> = Vec::<u8>::try_from(imgs.flatten(0, -1)).map_err(|e| err(e.to_string()))?;
    let mut canvas = image::RgbImage::from_pixel(gw as u32, gh as u32, image::Rgb([200, 200, 200]));
    for i in 0..n {
        let (r, c) = (i / ncol, i % ncol);
        let (ox, oy) = (pad + c * (w + pad), pad + r * (h + pad));
        for y in 0..h {
            for xx in 0..w {
                let o = ((i * h + y) * w + xx) * 3;
                canvas.put_pixel(
                    (ox + xx) as u32,
                    (oy + y) as u32,
                    image::Rgb([data[o], data[o + 1], data[o + 2]]),
                );
            }
        }
    }
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).map_err(|e| err(e.to_string()))?;
    }
    canvas.save(path).map_err(|e| err(e.to_string()))
}

/// Plot loss curves as small multiples: one panel per series (its own y range, shown in the
/// caption file written beside the PNG), step on the x axis.
pub fn save_loss_curves(
    steps: &[f64],
    series: &[(String, Vec<f64>)],
    path: &Path,
) -> Result<(), ImageWriteError> {
    let err = |msg: String| ImageWriteError {
        path: path.to_path_buf(),
        msg,
    };
    let (pw, ph, pad) = (320u32, 160u32, 8u32);
    let ncol = 3u32;
    let n = series.len().max(1) as u32;
    let nrow = n.div_ceil(ncol);
    let mut canvas = image::RgbImage::from_pixel(
        ncol * (pw + pad) + pad,
        nrow * (ph + pad) + pad,
        image::Rgb([255, 255, 255]),
    );
    let colors = [
        [31, 119, 180],
        [255, 127, 14],
        [44, 160, 44],
        [214, 39, 40],
        [148, 103, 189],
        [140, 86, 75],
    ];
    let mut caption =
        String::from("Loss curves, one panel per term (left to right, top to bottom):\n");
    let (x0, x1) = (
        steps.first().copied().unwrap_or(0.0),
        steps.last().copied().unwrap_or(1.0).max(1.0),
    );
    for (k, (name, ys)) in series.iter().enumerate() {
        let (ox, oy) = (
            pad + (k as u32 % ncol) * (pw + pad),
            pad + (k as u32 / ncol) * (ph + pad),
        );
        for x in 0..pw {
            canvas.put_pixel(ox + x, oy + ph - 1, image::Rgb([0, 0, 0]));
        }
        for y in 0..ph {
            canvas.put_pixel(ox, oy + y, image::Rgb([0, 0, 0]));
        }
        let finite: Vec<f64> = ys.iter().copied().filter(|v| v.is_finite()).collect();
        let lo = finite.iter().copied().fold(f64::INFINITY, f64::min);
        let hi = finite.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        caption.push_str(&format!(
            "  panel {}: {name}  (y from {lo:.4} to {hi:.4})\n",
            k + 1
        ));
        if finite.is_empty() {
            continue;
        }
        let span = (hi - lo).max(1e-12);
        let c = colors[k % colors.len()];
        let mut prev: Option<(i64, i64)> = None;
        for (s, v) in steps.iter().zip(ys) {
            if !v.is_finite() {
                prev = None;
                continue;
            }
            let px = 1 + ((s - x0) / (x1 - x0).max(1e-12) * (pw - 3) as f64) as i64;
            let py = (ph - 2) as i64 - ((v - lo) / span * (ph - 4) as f64) as i64;
            if let Some((qx, qy)) = prev {
                let steps_n = (px - qx).abs().max((py - qy).abs()).max(1);
                for t in 0..=steps_n {
                    let x = qx + (px - qx) * t / steps_n;
                    let y = qy + (py - qy) * t / steps_n;
                    canvas.put_pixel(ox + x as u32, oy + y as u32, image::Rgb(c));
                }
            }
            prev = Some((px, py));
        }
    }
    canvas.save(path).map_err(|e| err(e.to_string()))?;
    std::fs::write(path.with_extension("txt"), caption).map_err(|e| err(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grid_has_expected_size_and_pixels() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("g.png");
        // 3 images of 2x2: white, black, grey; 2 columns -> 2 rows.
        let x = Tensor::from_slice(&[1.0f32; 12]).view([1, 3, 2, 2]);
        let x = Tensor::cat(&[x.shallow_clone(), -x.shallow_clone(), x * 0.0], 0);
        save_grid(&x, 2, &p).unwrap();
        let img = image::open(&p).unwrap().to_rgb8();
        assert_eq!(img.dimensions(), (2 * 4 + 2, 2 * 4 + 2));
        assert_eq!(img.get_pixel(2, 2).0, [255, 255, 255]);
        assert_eq!(img.get_pixel(6, 2).0, [0, 0, 0]);
        assert_eq!(img.get_pixel(2, 6).0, [128, 128, 128]);
    }

    #[test]
    fn loss_curves_write_png_and_caption() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("l.png");
        save_loss_curves(
            &[0.0, 1.0, 2.0],
            &[("a".into(), vec![1.0, 0.5, f64::NAN])],
            &p,
        )
        .unwrap();
        assert!(p.exists());
        let cap = std::fs::read_to_string(p.with_extension("txt")).unwrap();
        assert!(cap.contains("panel 1: a"), "{cap}");
    }
}
