//! Export of the synthetic benchmark into the folder layout, ground truth included:
//! `background/`, `target/`, `target_counterfactual/`, `target_mask/` (grey PNG,
//! value = round(coverage * 255)) and `labels.csv` with every factor. Reading the export back
//! through [`crate::folder::FolderDataset`] gives the same u8 images as the generator.

use std::io::Write;
use std::path::Path;

use rayon::prelude::*;

use crate::config::SyntheticConfig;
use crate::dataset::{Group, LabelKind};
use crate::error::{DataError, DataErrorKind, Result};
use crate::imageio::write_png_chw;
use crate::synthetic::{FACTOR_NAMES, Renderer, factor_kind, file_name, rgb_chw_to_grey};

/// What an export wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExportSummary {
    /// Background images written.
    pub n_background: usize,
    /// Target images written (each with a counterpart and a mask).
    pub n_target: usize,
    /// Image side in pixels.
    pub size: usize,
    /// Channels.
    pub channels: usize,
}

/// Render `n_background` + `n_target` images of `cfg` (with `seed` replacing `cfg.seed`) into
/// `out_dir`, which must not exist or be empty (existing data is never overwritten).
pub fn export_synthetic(
    cfg: &SyntheticConfig,
    out_dir: &Path,
    n_background: usize,
    n_target: usize,
    seed: u64,
) -> Result<ExportSummary> {
    if n_background == 0 || n_target == 0 {
        return Err(DataError::config(
            "export needs at least one background and one target image",
        ));
    }
    if out_dir.exists() {
        let mut entries = std::fs::read_dir(out_dir).map_err(|e| DataError::io(out_dir, e))?;
        if entries.next().is_some() {
            return Err(DataError::at(out_dir, DataErrorKind::OutputNotEmpty));
        }
    }
    let cfg = SyntheticConfig {
        seed,
        n_background,
        n_target,
        ..cfg.clone()
    };
    let common = crate::DataConfig::Synthetic(cfg.clone()).common()?;
    let (size, channels) = (common.size, common.channels);
    let r = Renderer::new(size, &cfg)?;
    for d in [
        "background",
        "target",
        "target_counterfactual",
        "target_mask",
    ] {
        let p = out_dir.join(d);
        std::fs::create_dir_all(&p).map_err(|e| DataError::io(&p, e))?;
    }
    let to_ch = |rgb: Vec<u8>| {
        if channels == 1 {
            rgb_chw_to_grey(&rgb, size)
        } else {
            rgb
        }
    };
    let jobs: Vec<(Group, usize)> = (0..n_background)
        .map(|j| (Group::Background, j))
        .chain((0..n_target).map(|j| (Group::Target, j)))
        .collect();
    let rows: Vec<String> = jobs
        .par_iter()
        .map(|&(g, j)| {
            let n = if g == Group::Background {
                n_background
            } else {
                n_target
            };
            let name = file_name(j, n);
            let s = r.sample(g, j);
            write_png_chw(
                &out_dir.join(g.name()).join(&name),
                &to_ch(s.image),
                channels,
                size,
            )?;
            if g == Group::Target {
                write_png_chw(
                    &out_dir.join("target_counterfactual").join(&name),
                    &to_ch(s.counterpart),
                    channels,
                    size,
                )?;
                let m: Vec<u8> = s.mask.iter().map(|&v| (v * 255.0).round() as u8).collect();
                write_png_chw(&out_dir.join("target_mask").join(&name), &m, 1, size)?;
            }
            let mut row = format!("{},{name}", g.name());
            for (name, v) in FACTOR_NAMES.iter().zip(s.factors.values()) {
                row.push(',');
                if !v.is_nan() {
                    match factor_kind(name) {
                        LabelKind::Categorical => row.push_str(&format!("{}", v as i64)),
                        LabelKind::Continuous => row.push_str(&format!("{v:?}")),
                    }
                }
            }
            Ok(row)
        })
        .collect::<Result<_>>()?;
    let path = out_dir.join("labels.csv");
    let mut f =
        std::io::BufWriter::new(std::fs::File::create(&path).map_err(|e| DataError::io(&path, e))?);
    let mut text = format!("split,file,{}\n", FACTOR_NAMES.join(","));
    for row in rows {
        text.push_str(&row);
        text.push('\n');
    }
    f.write_all(text.as_bytes())
        .and_then(|_| f.flush())
        .map_err(|e| DataError::io(&path, e))?;
    Ok(ExportSummary {
        n_background,
        n_target,
        size,
        channels,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{DataConfig, FolderConfig};
    use crate::eval::load_eval_set;
    use crate::loader::Split;
    use tch::Kind;

    #[test]
    fn export_reads_back_identically_through_the_folder_dataset() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("synth");
        let cfg = SyntheticConfig::default();
        let sum = export_synthetic(&cfg, &out, 12, 9, 5).unwrap();
        assert_eq!((sum.size, sum.channels), (32, 3));
        let mem = DataConfig::Synthetic(SyntheticConfig {
            n_background: 12,
            n_target: 9,
            seed: 5,
            ..cfg
        })
        .open()
        .unwrap();
        let folder = DataConfig::Folder(FolderConfig {
            root: out.clone(),
            size: Some(32),
            channels: None,
            eval_fraction: 0.1,
            seed: 5,
            cache_mb: 1,
            hflip: false,
            skip_bad_images: false,
            target_fraction: 0.5,
            workers: 1,
            prefetch: 1,
        })
        .open()
        .unwrap();
        let a = load_eval_set(mem.as_ref(), Split::All).unwrap();
        let b = load_eval_set(folder.as_ref(), Split::All).unwrap();
        assert_eq!(a.files, b.files);
        assert!(a.images.equal(&b.images));
        assert!(a.group.equal(&b.group));
        assert!(
            a.counterpart
                .as_ref()
                .unwrap()
                .equal(b.counterpart.as_ref().unwrap())
        );
        let dm = (a.mask.unwrap() - b.mask.unwrap())
            .abs()
            .max()
            .double_value(&[]);
        assert!(dm <= 0.5 / 255.0 + 1e-6, "mask differs by {dm}");
        assert_eq!(a.labels.len(), b.labels.len());
        for (x, y) in a.labels.iter().zip(&b.labels) {
            assert_eq!((&x.name, x.kind, x.scope), (&y.name, y.kind, y.scope));
            for (u, v) in x.values.iter().zip(&y.values) {
                assert!(
                    (u.is_nan() && v.is_nan()) || u == v,
                    "{}: {u} vs {v}",
                    x.name
                );
            }
        }
        // same split on both sides (the split hashes the file names)
        assert_eq!(
            load_eval_set(mem.as_ref(), Split::Eval).unwrap().files,
            load_eval_set(folder.as_ref(), Split::Eval).unwrap().files
        );
        assert!(b.images.to_kind(Kind::Float).std(true).double_value(&[]) > 1.0);
    }

    #[test]
    fn refuses_a_non_empty_folder() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("keep.txt"), "user data").unwrap();
        let e = export_synthetic(&SyntheticConfig::default(), dir.path(), 1, 1, 0)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("not empty") && e.contains("never overwritten"),
            "{e}"
        );
        assert_eq!(
            std::fs::read_to_string(dir.path().join("keep.txt")).unwrap(),
            "user data"
        );
    }
}
