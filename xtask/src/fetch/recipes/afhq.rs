//! `afhq-domestic-wild`: AFHQ (Choi, Uh, Yoo, Ha, "StarGAN v2", CVPR 2020, arXiv:1912.01865), the
//! `afhq.zip` layout `afhq/{train,val}/{cat,dog,wild}/*.jpg` (512x512).
//!
//! Contrastive choice: background = `cat` + `dog` (domestic animals), target = `wild` (fox, lion,
//! tiger, wolf, leopard, ...). The common factors (pose, framing, fur colour, lighting of an animal
//! face) are shared by all three domains; what only the target carries is the wild species'
//! facial traits, which is what the salient code should capture. The alternative cat vs dog
//! pairing has no "something extra" in either direction. Label `species`: 0 cat, 1 dog, 2 wild;
//! `subset` is `train` / `eval` from AFHQ's own train / val folders. Images are resized to
//! `resolution` (they are already square; `crop_resize` centre-crops any that are not).

use std::path::Path;

use anyhow::Context;

use super::{Split, Summary, Writer, crop_resize, images_in, open_image};
use crate::fetch::manifest::Dataset;

/// Run the recipe (see the module docs).
pub fn run(d: &Dataset, raw: &Path, out: &Path) -> anyhow::Result<Summary> {
    let root = super::find_root(raw, "train/wild", 2).context(
        "no afhq/train/{cat,dog,wild}/ folders in the archive: is this StarGAN v2's afhq.zip?",
    )?;
    let mut w = Writer::new(out, &["subset", "species"])?;
    for (folder, subset) in [("train", "train"), ("val", "eval")] {
        for (species, label, split) in [
            ("cat", 0, Split::Background),
            ("dog", 1, Split::Background),
            ("wild", 2, Split::Target),
        ] {
            let dir = root.join(folder).join(species);
            if !dir.is_dir() {
                anyhow::bail!("missing folder {} in the AFHQ archive", dir.display());
            }
            for p in images_in(&dir)? {
                let img = crop_resize(&open_image(&p)?, u32::MAX, d.resolution);
                let file = format!("{subset}_{}", super::png_name(&p));
                w.add(split, &file, &img, &[subset.into(), label.to_string()])?;
            }
        }
    }
    w.finish()
}

#[cfg(test)]
pub(crate) mod tests {
    use super::super::testutil::*;
    use super::*;
    use std::io::Write;

    /// A fake `afhq.zip`: two JPEGs per domain and split.
    pub(crate) fn fabricate(path: &Path) {
        let mut z = zip::ZipWriter::new(std::fs::File::create(path).unwrap());
        let opts = zip::write::SimpleFileOptions::default();
        let mut k = 0u8;
        for split in ["train", "val"] {
            for sp in ["cat", "dog", "wild"] {
                for i in 0..2 {
                    z.start_file(format!("afhq/{split}/{sp}/flickr_{sp}_{i:06}.jpg"), opts)
                        .unwrap();
                    z.write_all(&jpeg(&rgb(24, 24, k))).unwrap();
                    k += 10;
                }
            }
        }
        z.finish().unwrap();
    }

    #[test]
    fn afhq_recipe_on_a_fabricated_archive() {
        let dir = tempfile::tempdir().unwrap();
        let zip = dir.path().join("afhq.zip");
        fabricate(&zip);
        let raw = dir.path().join("raw");
        crate::fetch::extract::unpack(&zip, "zip", &raw).unwrap();
        let d =
            crate::fetch::tests::dataset_with_recipe("afhq", 16, "kind = \"afhq-domestic-wild\"");
        let out = dir.path().join("out");
        assert_eq!(
            run(&d, &raw, &out).unwrap(),
            Summary {
                background: 8,
                target: 4
            }
        );
        let rows = read_labels(&out);
        assert_eq!(rows[0], ["split", "file", "subset", "species"]);
        assert!(rows.contains(&vec![
            "target".into(),
            "eval_flickr_wild_000001.png".into(),
            "eval".into(),
            "2".into()
        ]));
        assert!(rows.contains(&vec![
            "background".into(),
            "train_flickr_dog_000000.png".into(),
            "train".into(),
            "1".into()
        ]));
        assert_files_exist(&out, &rows, 16);
        // An archive without the expected folders is a clear error.
        let err = run(&d, &dir.path().join("out"), &dir.path().join("o2")).unwrap_err();
        assert!(format!("{err:#}").contains("afhq.zip"), "{err:#}");
    }
}
