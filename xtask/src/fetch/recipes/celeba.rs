//! `celeba-accessory`: CelebA (Liu, Luo, Wang, Tang, "Deep Learning Face Attributes in the Wild",
//! ICCV 2015) split for contrastive analysis as in Double InfoGAN (Carton et al., 2024,
//! arXiv:2401.17654) and MM-cVAE (Weinberger et al., 2022, arXiv:2202.10560): background = faces
//! with neither `Eyeglasses` nor `Wearing_Hat`; target = faces with exactly one of them (label
//! `accessory`: 0 glasses, 1 hat; empty for background).
//!
//! Training images come from CelebA's official train partition (0), evaluation images from its
//! test partition (2), recorded in the column `subset` (`train` / `eval`). Images are taken in
//! file order (deterministic), centre-cropped to a `crop` square and resized to `resolution`.

use std::collections::HashMap;
use std::path::Path;

use anyhow::{Context, bail};

use super::{Split, Summary, Writer, crop_resize, open_image};
use crate::fetch::manifest::Dataset;

/// One image's relevant attributes.
struct Face {
    file: String,
    glasses: bool,
    hat: bool,
    partition: u8,
}

fn parse_attrs(text: &str) -> anyhow::Result<Vec<(String, bool, bool)>> {
    let mut lines = text.lines();
    lines.next().context("list_attr_celeba.txt is empty")?;
    let header: Vec<&str> = lines
        .next()
        .context("list_attr_celeba.txt has no header")?
        .split_whitespace()
        .collect();
    let col = |name: &str| {
        header
            .iter()
            .position(|h| *h == name)
            .with_context(|| format!("list_attr_celeba.txt has no '{name}' column"))
    };
    let (g, h) = (col("Eyeglasses")?, col("Wearing_Hat")?);
    let mut out = Vec::new();
    for (i, line) in lines.enumerate() {
        let f: Vec<&str> = line.split_whitespace().collect();
        if f.is_empty() {
            continue;
        }
        if f.len() != header.len() + 1 {
            bail!(
                "list_attr_celeba.txt line {}: {} fields, expected {}",
                i + 3,
                f.len(),
                header.len() + 1
            );
        }
        out.push((f[0].to_string(), f[g + 1] == "1", f[h + 1] == "1"));
    }
    Ok(out)
}

fn parse_partition(text: &str) -> anyhow::Result<HashMap<String, u8>> {
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .enumerate()
        .map(|(i, l)| {
            let mut f = l.split_whitespace();
            let (Some(name), Some(p)) = (f.next(), f.next()) else {
                bail!(
                    "list_eval_partition.txt line {}: expected '<file> <0|1|2>'",
                    i + 1
                );
            };
            Ok((
                name.to_string(),
                p.parse()
                    .with_context(|| format!("list_eval_partition.txt line {}", i + 1))?,
            ))
        })
        .collect()
}

/// Run the recipe (see the module docs).
pub fn run(d: &Dataset, raw: &Path, out: &Path) -> anyhow::Result<Summary> {
    let read = |name: &str| {
        std::fs::read_to_string(raw.join(name))
            .with_context(|| format!("missing {name} in the CelebA files"))
    };
    let attrs = parse_attrs(&read("list_attr_celeba.txt")?)?;
    let parts = parse_partition(&read("list_eval_partition.txt")?)?;
    let img_dir = super::find_root(raw, "img_align_celeba", 1)
        .context("missing folder img_align_celeba/ (from img_align_celeba.zip)")?
        .join("img_align_celeba");
    let faces: Vec<Face> = attrs
        .into_iter()
        .map(|(file, glasses, hat)| {
            let partition = *parts
                .get(&file)
                .with_context(|| format!("{file} is not in list_eval_partition.txt"))?;
            Ok(Face {
                file,
                glasses,
                hat,
                partition,
            })
        })
        .collect::<anyhow::Result<_>>()?;
    let (crop, size) = (d.param_u64("crop")? as u32, d.resolution);
    let plan = [
        (
            "train",
            0u8,
            d.param_u64("train_background")? as usize,
            d.param_u64("train_per_accessory")? as usize,
        ),
        (
            "eval",
            2u8,
            d.param_u64("eval_background")? as usize,
            d.param_u64("eval_per_accessory")? as usize,
        ),
    ];
    let mut w = Writer::new(out, &["subset", "accessory"])?;
    for (subset, partition, n_bg, n_acc) in plan {
        // class: None = background, Some(0) = glasses only, Some(1) = hat only.
        let mut wanted = [(None, n_bg), (Some(0u8), n_acc), (Some(1u8), n_acc)];
        for face in faces.iter().filter(|f| f.partition == partition) {
            let class = match (face.glasses, face.hat) {
                (false, false) => None,
                (true, false) => Some(0),
                (false, true) => Some(1),
                (true, true) => continue,
            };
            let slot = wanted
                .iter_mut()
                .find(|(c, _)| *c == class)
                .expect("all classes listed");
            if slot.1 == 0 {
                continue;
            }
            slot.1 -= 1;
            let img = crop_resize(&open_image(&img_dir.join(&face.file))?, crop, size);
            let file = super::png_name(Path::new(&face.file));
            let (split, acc) = match class {
                None => (Split::Background, String::new()),
                Some(c) => (Split::Target, c.to_string()),
            };
            w.add(split, &file, &img, &[subset.to_string(), acc])?;
            if wanted.iter().all(|(_, n)| *n == 0) {
                break;
            }
        }
        if let Some((c, n)) = wanted.iter().find(|(_, n)| *n > 0) {
            let what = match c {
                None => "background (neither)",
                Some(0) => "glasses-only",
                _ => "hat-only",
            };
            bail!(
                "CelebA {subset} partition has {n} too few {what} images for the requested split sizes"
            );
        }
    }
    w.finish()
}

#[cfg(test)]
pub(crate) mod tests {
    use super::super::testutil::*;
    use super::*;
    use crate::fetch::extract::unpack;
    use std::io::Write;

    /// A fake `img_align_celeba.zip` (12 JPEGs of 178x218) plus attribute and partition files.
    pub fn fabricate(dir: &Path) {
        let zip_path = dir.join("img_align_celeba.zip");
        let mut z = zip::ZipWriter::new(std::fs::File::create(&zip_path).unwrap());
        let opts = zip::write::SimpleFileOptions::default();
        z.add_directory("img_align_celeba/", opts).unwrap();
        // (glasses, hat, partition) for images 1..=12.
        let spec = [
            (0, 0, 0),
            (1, 0, 0),
            (0, 1, 0),
            (0, 0, 0),
            (1, 1, 0),
            (1, 0, 0),
            (0, 1, 0),
            (0, 0, 1),
            (0, 0, 2),
            (1, 0, 2),
            (0, 1, 2),
            (0, 0, 2),
        ];
        let mut attr = format!("{}\n", spec.len());
        // Three of the 40 real columns are enough to test column lookup.
        attr.push_str("5_o_Clock_Shadow Eyeglasses Wearing_Hat \n");
        let mut part = String::new();
        for (i, (g, h, p)) in spec.iter().enumerate() {
            let name = format!("{:06}.jpg", i + 1);
            z.start_file(format!("img_align_celeba/{name}"), opts)
                .unwrap();
            z.write_all(&jpeg(&rgb(178, 218, i as u8 * 20))).unwrap();
            let pm = |v: &i32| if *v == 1 { " 1" } else { "-1" };
            attr.push_str(&format!("{name}  1 {} {}\n", pm(g), pm(h)));
            part.push_str(&format!("{name} {p}\n"));
        }
        z.finish().unwrap();
        std::fs::write(dir.join("list_attr_celeba.txt"), attr).unwrap();
        std::fs::write(dir.join("list_eval_partition.txt"), part).unwrap();
    }

    #[test]
    fn celeba_recipe_on_a_fabricated_archive() {
        let dir = tempfile::tempdir().unwrap();
        fabricate(dir.path());
        let raw = dir.path().join("raw");
        unpack(&dir.path().join("img_align_celeba.zip"), "zip", &raw).unwrap();
        for f in ["list_attr_celeba.txt", "list_eval_partition.txt"] {
            unpack(&dir.path().join(f), "none", &raw).unwrap();
        }
        let d = crate::fetch::tests::dataset_with_recipe(
            "celeba-glasses-hats",
            8,
            "kind = \"celeba-accessory\"\ncrop = 178\ntrain_background = 2\ntrain_per_accessory = 2\neval_background = 1\neval_per_accessory = 1",
        );
        let out = dir.path().join("out");
        let s = run(&d, &raw, &out).unwrap();
        assert_eq!(
            s,
            Summary {
                background: 3,
                target: 6
            }
        );
        let rows = read_labels(&out);
        assert_eq!(rows[0], ["split", "file", "subset", "accessory"]);
        let r = |s: &str| rows.iter().skip(1).map(|r| r.join(",")).any(|x| x == s);
        assert!(r("background,000001.png,train,"));
        assert!(r("target,000002.png,train,0"));
        assert!(r("target,000003.png,train,1"));
        assert!(r("target,000010.png,eval,0"));
        assert!(r("target,000011.png,eval,1"));
        assert!(r("background,000009.png,eval,"));
        // Both accessories at once (000005) and the validation partition (000008) are never used.
        assert!(
            !rows
                .iter()
                .any(|r| r[1] == "000005.png" || r[1] == "000008.png")
        );
        assert_files_exist(&out, &rows, 8);

        // Asking for more than exists is an error naming the shortfall.
        let d = crate::fetch::tests::dataset_with_recipe(
            "celeba-glasses-hats",
            8,
            "kind = \"celeba-accessory\"\ncrop = 178\ntrain_background = 2\ntrain_per_accessory = 3\neval_background = 1\neval_per_accessory = 1",
        );
        let err = run(&d, &raw, &dir.path().join("out2")).unwrap_err();
        assert!(
            format!("{err:#}").contains("too few glasses-only"),
            "{err:#}"
        );
    }
}
