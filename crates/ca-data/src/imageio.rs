//! Image decoding and the shared transform: channel conversion, shorter-side resize and
//! centre crop, HWC to CHW.
//!
//! Conventions: grey is replicated to RGB; RGB becomes grey with the `image` crate's luma
//! weights; the alpha channel of RGBA/LA images is dropped (not composited). Resizing is
//! done as "centre-crop the largest square, then resize it to `size`" (the same pixels as
//! resizing the shorter side then centre-cropping, with one resampling), with a triangle
//! (bilinear) filter; an image already `size x size` is not resampled.

use std::io::Cursor;
use std::path::Path;

use image::{DynamicImage, ImageReader, imageops::FilterType};

use crate::error::{DataError, DataErrorKind, Result};

/// Largest accepted image side in pixels (checked from the header, before decoding).
pub const MAX_SIDE: u32 = 16384;

/// File extensions (lower case) treated as images.
pub const IMAGE_EXTENSIONS: [&str; 5] = ["png", "jpg", "jpeg", "bmp", "webp"];

/// Whether a path has an image extension (case-insensitive).
pub fn is_image_path(path: &Path) -> bool {
    path.extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| IMAGE_EXTENSIONS.iter().any(|x| x.eq_ignore_ascii_case(e)))
}

fn bad(path: &Path, detail: String) -> DataError {
    DataError::at(path, DataErrorKind::BadImage { detail })
}

fn reader<'a>(path: &Path, bytes: &'a [u8]) -> Result<ImageReader<Cursor<&'a [u8]>>> {
    ImageReader::new(Cursor::new(bytes))
        .with_guessed_format()
        .map_err(|e| bad(path, format!("{e} (file is {} bytes)", bytes.len())))
}

/// Read the declared dimensions from the header only; errors on zero-byte, unrecognised and
/// oversized files.
pub fn check_header(path: &Path) -> Result<(u32, u32)> {
    let bytes = std::fs::read(path).map_err(|e| DataError::io(path, e))?;
    header_of(path, &bytes)
}

fn header_of(path: &Path, bytes: &[u8]) -> Result<(u32, u32)> {
    if bytes.is_empty() {
        return Err(bad(path, "zero-byte file".into()));
    }
    let r = reader(path, bytes)?;
    if r.format().is_none() {
        return Err(bad(
            path,
            format!(
                "not a recognised image format (file is {} bytes)",
                bytes.len()
            ),
        ));
    }
    let (w, h) = r
        .into_dimensions()
        .map_err(|e| bad(path, format!("{e} (file is {} bytes)", bytes.len())))?;
    if w > MAX_SIDE || h > MAX_SIDE {
        return Err(DataError::at(
            path,
            DataErrorKind::TooLarge {
                width: w,
                height: h,
                max: MAX_SIDE,
            },
        ));
    }
    if w == 0 || h == 0 {
        return Err(bad(path, format!("image is {w}x{h} px")));
    }
    Ok((w, h))
}

/// Decode an image file (dimensions checked first).
pub fn decode_file(path: &Path) -> Result<DynamicImage> {
    let bytes = std::fs::read(path).map_err(|e| DataError::io(path, e))?;
    header_of(path, &bytes)?;
    reader(path, &bytes)?.decode().map_err(|e| {
        let msg = e.to_string();
        let msg = if msg.to_lowercase().contains("eof") || msg.to_lowercase().contains("end of") {
            format!("truncated or corrupt image: {msg}")
        } else {
            msg
        };
        bad(path, format!("{msg} (file is {} bytes)", bytes.len()))
    })
}

/// Convert to `channels` (1 or 3), centre-crop + resize to `size x size`, return u8 CHW.
pub fn to_chw(img: DynamicImage, channels: usize, size: usize) -> Vec<u8> {
    let (w, h) = (img.width(), img.height());
    let side = w.min(h);
    let img = if w != h {
        img.crop_imm((w - side) / 2, (h - side) / 2, side, side)
    } else {
        img
    };
    let n = size as u32;
    let np = size * size;
    if channels == 1 {
        let mut g = img.to_luma8();
        if side != n {
            g = image::imageops::resize(&g, n, n, FilterType::Triangle);
        }
        g.into_raw()
    } else {
        let mut rgb = img.to_rgb8();
        if side != n {
            rgb = image::imageops::resize(&rgb, n, n, FilterType::Triangle);
        }
        let raw = rgb.as_raw();
        let mut out = vec![0u8; 3 * np];
        for p in 0..np {
            out[p] = raw[3 * p];
            out[np + p] = raw[3 * p + 1];
            out[2 * np + p] = raw[3 * p + 2];
        }
        out
    }
}

/// Write u8 CHW (`channels` 1 or 3) as a PNG file.
pub fn write_png_chw(path: &Path, chw: &[u8], channels: usize, size: usize) -> Result<()> {
    let np = size * size;
    let s = size as u32;
    let enc = |e: image::ImageError| DataError::at(path, DataErrorKind::Encode(e.to_string()));
    if channels == 1 {
        image::GrayImage::from_raw(s, s, chw.to_vec())
            .expect("buffer size")
            .save(path)
            .map_err(enc)
    } else {
        let mut hwc = Vec::with_capacity(3 * np);
        for p in 0..np {
            hwc.extend_from_slice(&[chw[p], chw[np + p], chw[2 * np + p]]);
        }
        image::RgbImage::from_raw(s, s, hwc)
            .expect("buffer size")
            .save(path)
            .map_err(enc)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grey_rgba_and_odd_sizes_convert() {
        let grey = DynamicImage::ImageLuma8(image::GrayImage::from_fn(7, 5, |x, _| {
            image::Luma([x as u8 * 30])
        }));
        let chw = to_chw(grey.clone(), 3, 5);
        assert_eq!(chw.len(), 75);
        // centre crop of columns 1..6: first pixel is x=1 -> 30, replicated in all channels
        assert_eq!((chw[0], chw[25], chw[50]), (30, 30, 30));
        assert_eq!(to_chw(grey, 1, 3).len(), 9);
        let rgba = DynamicImage::ImageRgba8(image::RgbaImage::from_pixel(
            9,
            13,
            image::Rgba([10, 20, 30, 0]),
        ));
        let chw = to_chw(rgba, 3, 4);
        assert_eq!((chw[0], chw[16], chw[32]), (10, 20, 30));
    }

    fn crc32(data: &[u8]) -> u32 {
        let mut c = !0u32;
        for &b in data {
            c ^= b as u32;
            for _ in 0..8 {
                c = if c & 1 != 0 {
                    (c >> 1) ^ 0xEDB8_8320
                } else {
                    c >> 1
                };
            }
        }
        !c
    }

    #[test]
    fn header_errors_are_specific() {
        let dir = tempfile::tempdir().unwrap();
        let z = dir.path().join("z.png");
        std::fs::write(&z, b"").unwrap();
        let e = check_header(&z).unwrap_err().to_string();
        assert!(
            e.contains("zero-byte") && e.contains("z.png") && e.contains("skip_bad_images"),
            "{e}"
        );
        let t = dir.path().join("t.png");
        std::fs::write(&t, b"hello, not an image").unwrap();
        assert!(
            check_header(&t)
                .unwrap_err()
                .to_string()
                .contains("not a recognised")
        );
        // A PNG header claiming 20000 x 10 px: refused before decoding.
        let big = dir.path().join("big.png");
        let mut buf = Vec::new();
        image::GrayImage::new(1, 1)
            .write_to(&mut Cursor::new(&mut buf), image::ImageFormat::Png)
            .unwrap();
        buf[16..20].copy_from_slice(&20000u32.to_be_bytes());
        let crc = crc32(&buf[12..29]);
        buf[29..33].copy_from_slice(&crc.to_be_bytes());
        std::fs::write(&big, &buf).unwrap();
        let e = check_header(&big).unwrap_err().to_string();
        assert!(e.contains("20000x1") && e.contains("16384"), "{e}");
    }
}
