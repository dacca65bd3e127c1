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

use image::{DynamicImage, ImageFormat, ImageReader, Limits, imageops::FilterType};

use crate::error::{DataError, DataErrorKind, Result};

/// Largest accepted image side in pixels (checked from the header, before decoding).
pub const MAX_SIDE: u32 = 16384;

/// Largest accepted pixel count (checked from the header, before decoding): 64 Mpx, e.g.
/// 8192 x 8192, so one decoded image stays under 512 MiB even at 16 bits per RGBA channel.
pub const MAX_PIXELS: u64 = 64 << 20;

/// The decoder's own allocation cap (the `image` crate's limit), a second guard behind the
/// header check.
const MAX_ALLOC: u64 = 600 << 20;

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

/// A reader of `bytes` with its format guessed; `limited` adds the decoder's allocation cap
/// (left out when only the header is read, so that our own size error names the dimensions).
fn reader<'a>(
    path: &Path,
    bytes: &'a [u8],
    limited: bool,
) -> Result<ImageReader<Cursor<&'a [u8]>>> {
    let mut r = ImageReader::new(Cursor::new(bytes))
        .with_guessed_format()
        .map_err(|e| bad(path, format!("{e} (file is {} bytes)", bytes.len())))?;
    let mut limits = Limits::no_limits();
    if limited {
        limits.max_image_width = Some(MAX_SIDE);
        limits.max_image_height = Some(MAX_SIDE);
        limits.max_alloc = Some(MAX_ALLOC);
    }
    r.limits(limits);
    Ok(r)
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
    let r = reader(path, bytes, false)?;
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
    if w > MAX_SIDE || h > MAX_SIDE || u64::from(w) * u64::from(h) > MAX_PIXELS {
        return Err(DataError::at(
            path,
            DataErrorKind::TooLarge {
                width: w,
                height: h,
                max: MAX_SIDE,
                max_mpx: MAX_PIXELS >> 20,
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
    decode_bytes(path, &bytes)
}

/// Decode an image held in memory; `path` only names it in errors. The header is checked
/// first (zero bytes, unknown format, [`MAX_SIDE`], [`MAX_PIXELS`]); a JPEG without its
/// end-of-image marker is refused as truncated (the decoder would fill the missing rows with
/// grey and succeed).
pub fn decode_bytes(path: &Path, bytes: &[u8]) -> Result<DynamicImage> {
    header_of(path, bytes)?;
    let r = reader(path, bytes, true)?;
    if r.format() == Some(ImageFormat::Jpeg) && !jpeg_has_end_marker(bytes) {
        return Err(bad(
            path,
            format!(
                "truncated JPEG: no end-of-image marker (file is {} bytes)",
                bytes.len()
            ),
        ));
    }
    r.decode().map_err(|e| {
        let msg = e.to_string().trim().replace('\n', " ");
        let low = msg.to_lowercase();
        let msg = if ["eof", "end of", "not enough bytes"]
            .iter()
            .any(|k| low.contains(k))
        {
            format!("truncated or corrupt image: {msg}")
        } else {
            msg
        };
        bad(path, format!("{msg} (file is {} bytes)", bytes.len()))
    })
}

/// Whether a JPEG has its end-of-image marker `FF D9` near its end.
fn jpeg_has_end_marker(bytes: &[u8]) -> bool {
    // Some cameras append data after the image; look for the marker in the last 64 KiB.
    let tail = &bytes[bytes.len().saturating_sub(64 << 10)..];
    tail.windows(2).any(|w| w == [0xFF, 0xD9])
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
pub(crate) mod tests {
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

    /// A valid 1x1 grey PNG whose IHDR is rewritten to declare `w x h` (CRC fixed): a tiny
    /// file that would need `w * h` bytes if decoded.
    pub(crate) fn png_declaring(w: u32, h: u32) -> Vec<u8> {
        let mut buf = Vec::new();
        image::GrayImage::new(1, 1)
            .write_to(&mut Cursor::new(&mut buf), ImageFormat::Png)
            .unwrap();
        buf[16..20].copy_from_slice(&w.to_be_bytes());
        buf[20..24].copy_from_slice(&h.to_be_bytes());
        let crc = crc32(&buf[12..29]);
        buf[29..33].copy_from_slice(&crc.to_be_bytes());
        buf
    }

    fn jpeg(w: u32, h: u32) -> Vec<u8> {
        let mut buf = Vec::new();
        DynamicImage::ImageRgb8(image::RgbImage::from_fn(w, h, |x, y| {
            image::Rgb([(x * 7) as u8, (y * 5) as u8, ((x * y) % 251) as u8])
        }))
        .write_to(&mut Cursor::new(&mut buf), ImageFormat::Jpeg)
        .unwrap();
        buf
    }

    #[test]
    fn huge_declared_dimensions_are_refused_before_decoding() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("huge.png");
        let bytes = png_declaring(20_000, 20_000);
        assert!(bytes.len() < 100, "the file itself is tiny");
        std::fs::write(&p, &bytes).unwrap();
        for e in [
            check_header(&p).unwrap_err().to_string(),
            decode_file(&p).unwrap_err().to_string(),
        ] {
            assert!(
                e.contains("huge.png")
                    && e.contains("20000x20000")
                    && e.contains("resize it first"),
                "{e}"
            );
        }
        // Under the side limit but over the pixel-count limit (16000 x 16000 = 244 Mpx).
        let e = decode_bytes(Path::new("wide.png"), &png_declaring(16_000, 16_000))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("16000x16000") && e.contains("64 megapixels"),
            "{e}"
        );
        // A legitimate declared size passes the header check (the data is then missing).
        assert_eq!(
            header_of(Path::new("ok.png"), &png_declaring(300, 200)).unwrap(),
            (300, 200)
        );
    }

    #[test]
    fn truncated_and_corrupt_jpeg_are_errors_naming_the_file() {
        let good = jpeg(96, 64);
        assert!(good.len() > 2000, "{}", good.len());
        let img = decode_bytes(Path::new("good.jpg"), &good).unwrap();
        assert_eq!((img.width(), img.height()), (96, 64));
        let e = decode_bytes(Path::new("cut.jpg"), &good[..good.len() * 2 / 3])
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("cut.jpg") && e.contains("truncated") && e.contains("skip_bad_images"),
            "{e}"
        );
        // Only the first bytes: the header itself is cut.
        let e = decode_bytes(Path::new("head.jpg"), &good[..20])
            .unwrap_err()
            .to_string();
        assert!(e.contains("head.jpg") && e.contains("bytes"), "{e}");
        // The SOF0 marker overwritten: the decoder finds no frame header.
        let mut corrupt = good.clone();
        let sof = corrupt
            .windows(2)
            .position(|w| w == [0xFF, 0xC0])
            .expect("baseline JPEG");
        corrupt[sof + 1] = 0xCC;
        corrupt[sof + 5..sof + 9].fill(0);
        let e = decode_bytes(Path::new("bad.jpg"), &corrupt)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("bad.jpg") && e.contains("skip_bad_images"),
            "{e}"
        );
        // Trailing bytes after the end marker (some cameras append data) are fine.
        let mut tail = good.clone();
        tail.extend_from_slice(&[0u8; 300]);
        assert!(decode_bytes(Path::new("tail.jpg"), &tail).is_ok());
    }

    #[test]
    fn truncated_png_and_text_with_an_image_extension_are_errors() {
        let mut buf = Vec::new();
        DynamicImage::ImageRgb8(image::RgbImage::from_fn(16, 16, |x, y| {
            image::Rgb([x as u8 * 9, y as u8 * 7, 3])
        }))
        .write_to(&mut Cursor::new(&mut buf), ImageFormat::Png)
        .unwrap();
        for cut in [buf.len() / 2, buf.len() - 12, 40] {
            let e = decode_bytes(Path::new("t.png"), &buf[..cut])
                .unwrap_err()
                .to_string();
            assert!(
                e.contains("t.png") && e.contains("skip_bad_images"),
                "{cut}: {e}"
            );
        }
        let e = decode_bytes(Path::new("readme.png"), b"# not a picture\n")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("readme.png") && e.contains("not a recognised"),
            "{e}"
        );
    }
}
