//! `brain-mri-slices`: 2-D brain-MRI slices, healthy (background) vs tumour (target), from a
//! manually downloaded archive (`--from-archive`; every public source needs a login or a
//! licence click), written as `.npy` slices for the `npy` data kind of ca-data. Two layouts are
//! accepted, as a folder or a zip:
//!
//! 1. the Kaggle "Brain Tumor MRI Dataset" (M. Nickparvar, 2021):
//!    `Training/{glioma,meningioma,notumor,pituitary}/*.jpg` and `Testing/...`
//!    → background = `notumor`, target = the three tumour classes; no masks.
//! 2. generic slices: `healthy/*.png`, `tumour/*.png` (PNG 8 or 16 bit, or JPEG), optional
//!    `masks/<same stem>.png` (tumour masks, any non-zero value is tumour, so BraTS label maps
//!    1/2/4 work as they are; e.g. slices you exported from BraTS 2020 NIfTI volumes yourself —
//!    NIfTI volumes are not parsed here).
//!
//! Output, for the `npy` data kind (`kind = "npy"`, `root = "datasets/brats-2d"`):
//!
//! * `background/<name>.npy`, `target/<name>.npy`: one `float32` array of shape
//!   `(resolution, resolution)` per slice, C order, little-endian (NumPy format 1.0). Each slice is
//!   converted to grey (16-bit inputs keep their precision), centre-cropped to a square, resized
//!   (triangle filter) and min-max normalised on its own to `[0, 1]` (a constant slice becomes 0,
//!   as the loader does). The loader's own per-image `min-max` normalisation (the `npy` kind's
//!   default) therefore maps these values linearly to `0..=255`; `norm = "percentile"` still
//!   clips outliers.
//! * `target_mask/<name>.npy`: the tumour mask of a target slice where the source has one,
//!   `uint8` `(resolution, resolution)`, 1 = tumour, 0 = not (same crop, nearest-neighbour
//!   resize); outside `background/` and `target/`, so the loader never reads it as an image.
//! * `labels.csv`: `split,file,subset,tumour,tumour_type,mask` — `subset` `train` / `eval`
//!   (Kaggle `Training` / `Testing`; layout 2 has no split: all `train`), `tumour` 0 / 1,
//!   `tumour_type` (the Kaggle class, empty otherwise), `mask` (path relative to the dataset
//!   folder, or empty).

use std::path::{Path, PathBuf};

use anyhow::bail;
use image::imageops::FilterType;

use super::npy;
use super::{Split, Summary, Writer, crop_resize, images_in, open_image, with_ext};
use crate::fetch::manifest::Dataset;

/// Grey, centre-cropped, resized and min-max normalised to `[0, 1]` (row-major, `size * size`).
fn slice(path: &Path, size: u32) -> anyhow::Result<Vec<f32>> {
    let img = crop_resize(&open_image(path)?, u32::MAX, size);
    let mut v = img.to_luma32f().into_raw();
    let (lo, hi) = v
        .iter()
        .filter(|x| x.is_finite())
        .fold((f32::INFINITY, f32::NEG_INFINITY), |(a, b), &x| {
            (a.min(x), b.max(x))
        });
    for x in &mut v {
        // Division, not a reciprocal product: the maximum maps to exactly 1.
        *x = if x.is_finite() && hi > lo {
            (*x - lo) / (hi - lo)
        } else {
            0.0
        };
    }
    Ok(v)
}

/// Binary mask (1 = any non-zero source value), same centre crop, nearest-neighbour resize.
fn mask(path: &Path, size: u32) -> anyhow::Result<Vec<u8>> {
    let m = open_image(path)?;
    let (mw, mh) = (m.width(), m.height());
    let c = mw.min(mh);
    let m =
        m.crop_imm((mw - c) / 2, (mh - c) / 2, c, c)
            .resize_exact(size, size, FilterType::Nearest);
    Ok(m.to_luma16()
        .into_raw()
        .into_iter()
        .map(|v| u8::from(v > 0))
        .collect())
}

/// The mask file of `image` in `masks/`: same stem, any image extension.
fn mask_source(masks: &Path, image: &Path) -> Option<PathBuf> {
    ["png", "PNG", "jpg", "jpeg"]
        .iter()
        .map(|e| masks.join(with_ext(image, e)))
        .find(|p| p.is_file())
}

/// Run the recipe (see the module docs).
pub fn run(d: &Dataset, raw: &Path, out: &Path) -> anyhow::Result<Summary> {
    let size = d.resolution;
    let shape = [size as usize, size as usize];
    let mut w = Writer::new(out, &["subset", "tumour", "tumour_type", "mask"])?;
    let add = |w: &mut Writer, split: Split, file: &str, src: &Path, labels: [String; 4]| {
        let v = slice(src, size)?;
        w.add_with(split, file, &labels, |p| npy::write_f32(p, &shape, &v))
    };
    if let Some(root) = super::find_root(raw, "Training/notumor", 2) {
        for (folder, subset) in [("Training", "train"), ("Testing", "eval")] {
            for class in ["notumor", "glioma", "meningioma", "pituitary"] {
                let dir = root.join(folder).join(class);
                if !dir.is_dir() {
                    bail!(
                        "missing folder {} (Kaggle Brain Tumor MRI layout)",
                        dir.display()
                    );
                }
                let tumour = class != "notumor";
                let split = if tumour {
                    Split::Target
                } else {
                    Split::Background
                };
                for p in images_in(&dir)? {
                    let file = format!("{subset}_{class}_{}", with_ext(&p, "npy"));
                    let ty = if tumour {
                        class.to_string()
                    } else {
                        String::new()
                    };
                    let labels = [
                        subset.into(),
                        u8::from(tumour).to_string(),
                        ty,
                        String::new(),
                    ];
                    add(&mut w, split, &file, &p, labels)?;
                }
            }
        }
    } else if let Some(root) =
        super::find_root(raw, "healthy", 2).filter(|r| r.join("tumour").is_dir())
    {
        let masks = root.join("masks");
        if masks.is_dir() {
            std::fs::create_dir_all(out.join("target_mask"))?;
        }
        for p in images_in(&root.join("healthy"))? {
            let labels = ["train".into(), "0".into(), String::new(), String::new()];
            add(&mut w, Split::Background, &with_ext(&p, "npy"), &p, labels)?;
        }
        for p in images_in(&root.join("tumour"))? {
            let name = with_ext(&p, "npy");
            let rel = match mask_source(&masks, &p) {
                Some(src) => {
                    let rel = format!("target_mask/{name}");
                    npy::write_u8(&out.join(&rel), &shape, &mask(&src, size)?)?;
                    rel
                }
                None => String::new(),
            };
            let labels = ["train".into(), "1".into(), String::new(), rel];
            add(&mut w, Split::Target, &name, &p, labels)?;
        }
    } else {
        bail!(
            "unrecognised brain-MRI archive layout: expected Training/{{notumor,glioma,meningioma,pituitary}}/ and Testing/ \
             (Kaggle Brain Tumor MRI Dataset) or healthy/, tumour/ and optional masks/"
        );
    }
    w.finish()
}

#[cfg(test)]
mod tests {
    use super::super::npy::tests::{f32s, parse};
    use super::super::testutil::*;
    use super::*;

    /// Check a slice file: `float32`, shape `(size, size)`, values in [0, 1]; returns them.
    fn read_slice(path: &Path, size: usize) -> Vec<f32> {
        let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let (descr, shape, data) = parse(&bytes);
        assert_eq!(descr, "<f4", "{}", path.display());
        assert_eq!(shape, [size, size], "{}", path.display());
        let v = f32s(&data);
        assert_eq!(v.len(), size * size);
        assert!(v.iter().all(|x| (0.0..=1.0).contains(x)), "{v:?}");
        v
    }

    fn min_max(v: &[f32]) -> (f32, f32) {
        v.iter()
            .fold((f32::INFINITY, f32::NEG_INFINITY), |(a, b), &x| {
                (a.min(x), b.max(x))
            })
    }

    #[test]
    fn kaggle_layout_is_prepared() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("raw/archive");
        for folder in ["Training", "Testing"] {
            for class in ["glioma", "meningioma", "notumor", "pituitary"] {
                let d = root.join(folder).join(class);
                std::fs::create_dir_all(&d).unwrap();
                std::fs::write(d.join("Tr-1.jpg"), jpeg(&rgb(30, 20, 9))).unwrap();
            }
        }
        let d =
            crate::fetch::tests::dataset_with_recipe("brats-2d", 16, "kind = \"brain-mri-slices\"");
        let out = dir.path().join("out");
        assert_eq!(
            run(&d, &dir.path().join("raw"), &out).unwrap(),
            Summary {
                background: 2,
                target: 6
            }
        );
        let rows = read_labels(&out);
        assert_eq!(
            rows[0],
            ["split", "file", "subset", "tumour", "tumour_type", "mask"]
        );
        assert!(rows.contains(&vec![
            "target".into(),
            "eval_glioma_Tr-1.npy".into(),
            "eval".into(),
            "1".into(),
            "glioma".into(),
            "".into()
        ]));
        assert_eq!(rows.len(), 1 + 8);
        for r in &rows[1..] {
            // The fabricated image is a gradient: min-max puts its range exactly on [0, 1].
            let v = read_slice(&out.join(&r[0]).join(&r[1]), 16);
            assert_eq!(min_max(&v), (0.0, 1.0), "{r:?}");
        }
        assert!(!out.join("target_mask").exists());
        assert!(!out.join("background/train_notumor_Tr-1.png").exists());
    }

    #[test]
    fn generic_layout_with_masks_is_prepared() {
        let dir = tempfile::tempdir().unwrap();
        let raw = dir.path().join("raw");
        for sub in ["healthy", "tumour", "masks"] {
            std::fs::create_dir_all(raw.join(sub)).unwrap();
        }
        let png = |p: &Path, v: u8| {
            image::GrayImage::from_fn(20, 20, |x, _| image::Luma([v + x as u8]))
                .save(p)
                .unwrap()
        };
        png(&raw.join("healthy/h1.png"), 10);
        // A flat slice: normalised to 0 everywhere (as ca-data's npy loader treats it).
        image::GrayImage::from_pixel(20, 20, image::Luma([90]))
            .save(raw.join("healthy/h2.png"))
            .unwrap();
        // 16-bit, with a range of 190 levels out of 65535: an 8-bit detour would flatten it.
        image::ImageBuffer::<image::Luma<u16>, _>::from_fn(20, 20, |x, _| {
            image::Luma([1000 + 10 * x as u16])
        })
        .save(raw.join("tumour/t1.png"))
        .unwrap();
        png(&raw.join("tumour/t2.png"), 200);
        // Mask of t1: left half BraTS label 2 (any non-zero is tumour), right half 0.
        image::GrayImage::from_fn(20, 20, |x, _| image::Luma([if x < 10 { 2 } else { 0 }]))
            .save(raw.join("masks/t1.png"))
            .unwrap();
        let d =
            crate::fetch::tests::dataset_with_recipe("brats-2d", 8, "kind = \"brain-mri-slices\"");
        let out = dir.path().join("out");
        assert_eq!(
            run(&d, &raw, &out).unwrap(),
            Summary {
                background: 2,
                target: 2
            }
        );
        let rows = read_labels(&out);
        assert!(rows.contains(&vec![
            "target".into(),
            "t1.npy".into(),
            "train".into(),
            "1".into(),
            "".into(),
            "target_mask/t1.npy".into()
        ]));
        assert!(rows.contains(&vec![
            "target".into(),
            "t2.npy".into(),
            "train".into(),
            "1".into(),
            "".into(),
            "".into()
        ]));
        assert!(rows.contains(&vec![
            "background".into(),
            "h1.npy".into(),
            "train".into(),
            "0".into(),
            "".into(),
            "".into()
        ]));
        let t1 = read_slice(&out.join("target/t1.npy"), 8);
        assert_eq!(min_max(&t1), (0.0, 1.0));
        let mut levels: Vec<u32> = t1.iter().map(|x| (x * 1000.0).round() as u32).collect();
        levels.sort();
        levels.dedup();
        assert!(levels.len() >= 4, "16-bit precision lost: {levels:?}");
        assert!(
            read_slice(&out.join("background/h2.npy"), 8)
                .iter()
                .all(|&x| x == 0.0)
        );
        let (descr, shape, m) = parse(&std::fs::read(out.join("target_mask/t1.npy")).unwrap());
        assert_eq!((descr.as_str(), shape), ("|u1", vec![8, 8]));
        // Row-major 8x8: the left 4 columns are tumour, the right 4 are not.
        for (i, &v) in m.iter().enumerate() {
            assert_eq!(v, u8::from(i % 8 < 4), "pixel {i}");
        }
        assert!(!out.join("target_mask/t2.npy").exists());
        // Anything else is refused with the accepted layouts named.
        let err = run(&d, &out.join("target_mask"), &dir.path().join("o2")).unwrap_err();
        assert!(
            format!("{err:#}").contains("Kaggle Brain Tumor MRI"),
            "{err:#}"
        );
    }
}
