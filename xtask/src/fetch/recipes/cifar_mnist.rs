//! `cifar-mnist-overlay`: CIFAR-10 (Krizhevsky, 2009, binary version) as background, CIFAR-10
//! images with an MNIST digit (LeCun et al., 1998) overlaid as target — the CIFAR+MNIST benchmark
//! of contrastive VAEs (Abid & Zou, "Contrastive Variational Autoencoder", 2019, arXiv:1902.04601).
//!
//! Split: the CIFAR training batches in file order give the first `train_background` images to
//! `background/` and the next `train_target` to `target/`; the test batch likewise gives
//! `eval_background` + `eval_target` images (column `subset`: `train` / `eval`). Background and
//! target never share a CIFAR image. Target image *i* of a subset gets MNIST digit *i* of the
//! matching MNIST split (train / t10k).
//!
//! Blending: the 28x28 digit is centred in the 32x32 image (offset 2, 2) and alpha-composited in
//! white with alpha = `alpha_percent`/100 × (MNIST intensity / 255): `out = (1 - a)·cifar + a·255`.
//! Labels: `cifar_class` (0..9, both sets, common) and `digit` (0..9, target only, salient).

use std::path::Path;

use anyhow::{Context, bail};
use image::{DynamicImage, RgbImage};

use super::{Split, Summary, Writer};
use crate::fetch::manifest::Dataset;

const CIFAR_RECORD: usize = 1 + 3 * 32 * 32;

/// CIFAR-10 binary records `(label, RGB image)` from the given batch files.
fn read_cifar(dir: &Path, files: &[&str]) -> anyhow::Result<Vec<(u8, RgbImage)>> {
    let mut out = Vec::new();
    for f in files {
        let path = dir.join(f);
        let bytes = std::fs::read(&path)
            .with_context(|| format!("missing CIFAR batch {}", path.display()))?;
        if bytes.len() % CIFAR_RECORD != 0 {
            bail!(
                "{}: {} bytes is not a multiple of the 3073-byte record",
                path.display(),
                bytes.len()
            );
        }
        for rec in bytes.chunks_exact(CIFAR_RECORD) {
            let (label, px) = (rec[0], &rec[1..]);
            if label > 9 {
                bail!("{}: label {label} out of range", path.display());
            }
            // Planar R, G, B, each 32x32 row-major.
            let img = RgbImage::from_fn(32, 32, |x, y| {
                let i = (y * 32 + x) as usize;
                image::Rgb([px[i], px[1024 + i], px[2048 + i]])
            });
            out.push((label, img));
        }
    }
    Ok(out)
}

/// MNIST idx files: `(images as 28x28 bytes, labels)`.
fn read_mnist(dir: &Path, prefix: &str) -> anyhow::Result<(Vec<Vec<u8>>, Vec<u8>)> {
    let read = |name: String| {
        let p = dir.join(&name);
        std::fs::read(&p).with_context(|| format!("missing MNIST file {}", p.display()))
    };
    let be = |b: &[u8], i: usize| u32::from_be_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]]) as usize;
    let img = read(format!("{prefix}-images-idx3-ubyte"))?;
    let lab = read(format!("{prefix}-labels-idx1-ubyte"))?;
    if img.len() < 16 || be(&img, 0) != 2051 || lab.len() < 8 || be(&lab, 0) != 2049 {
        bail!("{prefix}: not MNIST idx files (bad magic number)");
    }
    let (n, rows, cols) = (be(&img, 4), be(&img, 8), be(&img, 12));
    if rows != 28
        || cols != 28
        || img.len() != 16 + n * 784
        || be(&lab, 4) != n
        || lab.len() != 8 + n
    {
        bail!("{prefix}: MNIST idx header and size disagree");
    }
    let images = img[16..].chunks_exact(784).map(<[u8]>::to_vec).collect();
    Ok((images, lab[8..].to_vec()))
}

/// Overlay a 28x28 digit on a 32x32 image (see the module docs).
pub fn overlay(base: &RgbImage, digit: &[u8], alpha_percent: u32) -> RgbImage {
    let mut out = base.clone();
    for y in 0..28u32 {
        for x in 0..28u32 {
            let a = alpha_percent as f32 / 100.0 * digit[(y * 28 + x) as usize] as f32 / 255.0;
            let p = out.get_pixel_mut(x + 2, y + 2);
            for c in &mut p.0 {
                *c = ((1.0 - a) * *c as f32 + a * 255.0).round() as u8;
            }
        }
    }
    out
}

/// Run the recipe (see the module docs).
pub fn run(d: &Dataset, raw: &Path, out: &Path) -> anyhow::Result<Summary> {
    let cifar_dir = super::find_root(raw, "cifar-10-batches-bin", 1)
        .context("missing folder cifar-10-batches-bin/ (from cifar-10-binary.tar.gz)")?
        .join("cifar-10-batches-bin");
    let alpha = d.param_u64("alpha_percent")? as u32;
    let mut w = Writer::new(out, &["subset", "cifar_class", "digit"])?;
    let train_files = [
        "data_batch_1.bin",
        "data_batch_2.bin",
        "data_batch_3.bin",
        "data_batch_4.bin",
        "data_batch_5.bin",
    ];
    let plan: [(&str, &[&str], &str, &str, &str); 2] = [
        (
            "train",
            &train_files,
            "train",
            "train_background",
            "train_target",
        ),
        (
            "eval",
            &["test_batch.bin"],
            "t10k",
            "eval_background",
            "eval_target",
        ),
    ];
    for (subset, batches, mnist, kb, kt) in plan {
        let (n_bg, n_t) = (d.param_u64(kb)? as usize, d.param_u64(kt)? as usize);
        let cifar = read_cifar(&cifar_dir, batches)?;
        let (digits, digit_labels) = read_mnist(raw, mnist)?;
        if cifar.len() < n_bg + n_t || digits.len() < n_t {
            bail!(
                "{subset}: need {} CIFAR images and {n_t} MNIST digits, have {} and {}",
                n_bg + n_t,
                cifar.len(),
                digits.len()
            );
        }
        for (i, (label, img)) in cifar.iter().take(n_bg).enumerate() {
            let file = format!("{subset}_{i:05}.png");
            w.add(
                Split::Background,
                &file,
                &DynamicImage::ImageRgb8(img.clone()),
                &[subset.into(), label.to_string(), String::new()],
            )?;
        }
        for (i, (label, img)) in cifar[n_bg..n_bg + n_t].iter().enumerate() {
            let file = format!("{subset}_{i:05}.png");
            let t = overlay(img, &digits[i], alpha);
            w.add(
                Split::Target,
                &file,
                &DynamicImage::ImageRgb8(t),
                &[
                    subset.into(),
                    label.to_string(),
                    digit_labels[i].to_string(),
                ],
            )?;
        }
    }
    w.finish()
}

#[cfg(test)]
pub(crate) mod tests {
    use super::super::testutil::*;
    use super::*;
    use std::io::Write;

    fn gz(bytes: &[u8]) -> Vec<u8> {
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        e.write_all(bytes).unwrap();
        e.finish().unwrap()
    }

    /// Fake `cifar-10-binary.tar.gz` (`per_batch` records per batch, label = record index % 10,
    /// every pixel = label * 20) and the four gzipped MNIST idx files (`n` digits, digit i = i % 10,
    /// a full-white square in rows/cols 10..18).
    pub(crate) fn fabricate(dir: &Path, per_batch: usize, n: usize) {
        let mut tar = tar::Builder::new(Vec::new());
        let mut names: Vec<String> = (1..=5).map(|i| format!("data_batch_{i}.bin")).collect();
        names.push("test_batch.bin".into());
        for name in names {
            let mut data = Vec::new();
            for r in 0..per_batch {
                data.push((r % 10) as u8);
                data.extend(std::iter::repeat_n((r % 10) as u8 * 20, 3072));
            }
            let mut h = tar::Header::new_gnu();
            h.set_size(data.len() as u64);
            h.set_mode(0o644);
            tar.append_data(&mut h, format!("cifar-10-batches-bin/{name}"), &data[..])
                .unwrap();
        }
        let tar = tar.into_inner().unwrap();
        std::fs::write(dir.join("cifar-10-binary.tar.gz"), gz(&tar)).unwrap();
        for prefix in ["train", "t10k"] {
            let mut img = Vec::new();
            for v in [2051u32, n as u32, 28, 28] {
                img.extend(v.to_be_bytes());
            }
            for _ in 0..n {
                img.extend((0..784).map(|k| {
                    if (10..18).contains(&(k / 28)) && (10..18).contains(&(k % 28)) {
                        255u8
                    } else {
                        0
                    }
                }));
            }
            let mut lab = Vec::new();
            lab.extend(2049u32.to_be_bytes());
            lab.extend((n as u32).to_be_bytes());
            lab.extend((0..n).map(|i| (i % 10) as u8));
            std::fs::write(dir.join(format!("{prefix}-images-idx3-ubyte.gz")), gz(&img)).unwrap();
            std::fs::write(dir.join(format!("{prefix}-labels-idx1-ubyte.gz")), gz(&lab)).unwrap();
        }
    }

    #[test]
    fn overlay_blends_white_where_the_digit_is() {
        let base = RgbImage::from_pixel(32, 32, image::Rgb([100, 0, 50]));
        let mut digit = vec![0u8; 784];
        digit[0] = 255; // full alpha at (2, 2)
        digit[1] = 51; // alpha 0.2 at (3, 2)
        let out = overlay(&base, &digit, 100);
        assert_eq!(out.get_pixel(2, 2).0, [255, 255, 255]);
        // (1 - 0.2) * 100 + 0.2 * 255 = 131; 0.8 * 0 + 51 = 51; 0.8 * 50 + 51 = 91
        assert_eq!(out.get_pixel(3, 2).0, [131, 51, 91]);
        assert_eq!(out.get_pixel(0, 0).0, [100, 0, 50]);
    }

    #[test]
    fn cifar_mnist_recipe_on_a_fabricated_archive() {
        let dir = tempfile::tempdir().unwrap();
        fabricate(dir.path(), 3, 6);
        let raw = dir.path().join("raw");
        crate::fetch::extract::unpack(&dir.path().join("cifar-10-binary.tar.gz"), "tar.gz", &raw)
            .unwrap();
        for f in [
            "train-images-idx3-ubyte.gz",
            "train-labels-idx1-ubyte.gz",
            "t10k-images-idx3-ubyte.gz",
            "t10k-labels-idx1-ubyte.gz",
        ] {
            crate::fetch::extract::unpack(&dir.path().join(f), "gz", &raw).unwrap();
        }
        let d = crate::fetch::tests::dataset_with_recipe(
            "cifar10-mnist",
            32,
            "kind = \"cifar-mnist-overlay\"\nalpha_percent = 100\ntrain_background = 8\ntrain_target = 6\neval_background = 1\neval_target = 2",
        );
        let out = dir.path().join("out");
        let s = run(&d, &raw, &out).unwrap();
        assert_eq!(
            s,
            Summary {
                background: 9,
                target: 8
            }
        );
        let rows = read_labels(&out);
        assert_eq!(rows[0], ["split", "file", "subset", "cifar_class", "digit"]);
        // Train record 8 (batch 3, record 2) is the first target: cifar class 2, MNIST digit 0.
        assert_eq!(rows[9], ["target", "train_00000.png", "train", "2", "0"]);
        assert_eq!(rows[1], ["background", "train_00000.png", "train", "0", ""]);
        assert_eq!(
            rows.last().unwrap(),
            &["target", "eval_00001.png", "eval", "2", "1"]
        );
        assert_files_exist(&out, &rows, 32);
        let t = image::open(out.join("target/train_00000.png"))
            .unwrap()
            .to_rgb8();
        assert_eq!(t.get_pixel(14, 14).0, [255, 255, 255]);
        assert_eq!(t.get_pixel(0, 0).0, [40, 40, 40]);

        let d = crate::fetch::tests::dataset_with_recipe(
            "cifar10-mnist",
            32,
            "kind = \"cifar-mnist-overlay\"\nalpha_percent = 100\ntrain_background = 8\ntrain_target = 8\neval_background = 1\neval_target = 2",
        );
        assert!(
            format!("{:#}", run(&d, &raw, &dir.path().join("o2")).unwrap_err())
                .contains("need 16 CIFAR")
        );
    }
}
