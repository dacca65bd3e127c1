//! `brain-mri-slices`: 2-D brain-MRI slices, healthy (background) vs tumour (target), from a
//! manually downloaded archive (`--from-archive`; every public source needs a login or a
//! licence click). Two layouts are accepted, as a folder or a zip:
//!
//! 1. the Kaggle "Brain Tumor MRI Dataset" (M. Nickparvar, 2021):
//!    `Training/{glioma,meningioma,notumor,pituitary}/*.jpg` and `Testing/...`
//!    → background = `notumor`, target = the three tumour classes; no masks.
//! 2. generic PNG/JPEG slices: `healthy/*.png`, `tumour/*.png`, optional `masks/<same stem>.png`
//!    (binary tumour masks, e.g. slices you exported from BraTS 2020 NIfTI volumes yourself;
//!    NIfTI volumes are not parsed here).
//!
//! Images are converted to grayscale, centre-cropped to a square and resized to `resolution`;
//! masks are resized with nearest-neighbour into `masks/` next to `labels.csv`. Labels:
//! `subset` (`train` / `eval`; layout 2 is all `train`), `tumour` (0 / 1), `tumour_type`
//! (layout 1 class name; empty otherwise) and `mask` (path relative to the dataset folder, or
//! empty).

use std::path::Path;

use anyhow::{Context, bail};
use image::imageops::FilterType;

use super::{Split, Summary, Writer, crop_resize, images_in, open_image};
use crate::fetch::manifest::Dataset;

/// Run the recipe (see the module docs).
pub fn run(d: &Dataset, raw: &Path, out: &Path) -> anyhow::Result<Summary> {
    let size = d.resolution;
    let mut w = Writer::new(out, &["subset", "tumour", "tumour_type", "mask"])?;
    let gray = |p: &Path| -> anyhow::Result<image::DynamicImage> {
        let img = open_image(p)?;
        Ok(image::DynamicImage::ImageLuma8(
            crop_resize(&img, u32::MAX, size).to_luma8(),
        ))
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
                    let file = format!("{subset}_{class}_{}", super::png_name(&p));
                    let ty = if tumour {
                        class.to_string()
                    } else {
                        String::new()
                    };
                    w.add(
                        split,
                        &file,
                        &gray(&p)?,
                        &[
                            subset.into(),
                            u8::from(tumour).to_string(),
                            ty,
                            String::new(),
                        ],
                    )?;
                }
            }
        }
    } else if let Some(root) =
        super::find_root(raw, "healthy", 2).filter(|r| r.join("tumour").is_dir())
    {
        let masks = root.join("masks");
        if masks.is_dir() {
            std::fs::create_dir_all(out.join("masks"))?;
        }
        for p in images_in(&root.join("healthy"))? {
            w.add(
                Split::Background,
                &super::png_name(&p),
                &gray(&p)?,
                &["train".into(), "0".into(), String::new(), String::new()],
            )?;
        }
        for p in images_in(&root.join("tumour"))? {
            let name = super::png_name(&p);
            let mask_src = masks.join(&name);
            let mask = if mask_src.is_file() {
                let m = open_image(&mask_src)?;
                let (mw, mh) = (m.width(), m.height());
                let c = mw.min(mh);
                let m = m.crop_imm((mw - c) / 2, (mh - c) / 2, c, c).resize_exact(
                    size,
                    size,
                    FilterType::Nearest,
                );
                let rel = format!("masks/{name}");
                image::DynamicImage::ImageLuma8(m.to_luma8())
                    .save_with_format(out.join(&rel), image::ImageFormat::Png)
                    .with_context(|| format!("cannot write {rel}"))?;
                rel
            } else {
                String::new()
            };
            w.add(
                Split::Target,
                &name,
                &gray(&p)?,
                &["train".into(), "1".into(), String::new(), mask],
            )?;
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
    use super::super::testutil::*;
    use super::*;

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
            "eval_glioma_Tr-1.png".into(),
            "eval".into(),
            "1".into(),
            "glioma".into(),
            "".into()
        ]));
        assert_files_exist(&out, &rows, 16);
        let img = image::open(out.join("background/train_notumor_Tr-1.png")).unwrap();
        assert_eq!(img.color(), image::ColorType::L8);
    }

    #[test]
    fn generic_layout_with_masks_is_prepared() {
        let dir = tempfile::tempdir().unwrap();
        let raw = dir.path().join("raw");
        for sub in ["healthy", "tumour", "masks"] {
            std::fs::create_dir_all(raw.join(sub)).unwrap();
        }
        let png = |p: &Path, v: u8| {
            image::GrayImage::from_pixel(20, 20, image::Luma([v]))
                .save(p)
                .unwrap()
        };
        png(&raw.join("healthy/h1.png"), 10);
        png(&raw.join("tumour/t1.png"), 200);
        png(&raw.join("tumour/t2.png"), 200);
        png(&raw.join("masks/t1.png"), 255);
        let d =
            crate::fetch::tests::dataset_with_recipe("brats-2d", 8, "kind = \"brain-mri-slices\"");
        let out = dir.path().join("out");
        assert_eq!(
            run(&d, &raw, &out).unwrap(),
            Summary {
                background: 1,
                target: 2
            }
        );
        let rows = read_labels(&out);
        assert!(rows.contains(&vec![
            "target".into(),
            "t1.png".into(),
            "train".into(),
            "1".into(),
            "".into(),
            "masks/t1.png".into()
        ]));
        assert!(rows.contains(&vec![
            "target".into(),
            "t2.png".into(),
            "train".into(),
            "1".into(),
            "".into(),
            "".into()
        ]));
        let m = image::open(out.join("masks/t1.png")).unwrap();
        assert_eq!((m.width(), m.height()), (8, 8));
        // Anything else is refused with the accepted layouts named.
        let err = run(&d, &out.join("masks"), &dir.path().join("o2")).unwrap_err();
        assert!(
            format!("{err:#}").contains("Kaggle Brain Tumor MRI"),
            "{err:#}"
        );
    }
}
