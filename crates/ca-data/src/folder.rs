//! Folder-pair dataset: `ROOT/background/**` and `ROOT/target/**` images.
//!
//! * Images: png, jpg, jpeg, bmp, webp (any depth of sub-folders, sorted by relative path).
//!   Other files (e.g. `notes.txt`, hidden files) are **skipped with a debug log**, not an error.
//! * `open` checks every header (dimensions, at most 16384 px a side) without decoding; with
//!   `skip_bad_images = true` it also decodes every image once and skips the unreadable ones,
//!   logging their count and first paths (see [`FolderDataset::skipped`]). Without it, the
//!   first bad file is an error that names it.
//! * Optional `ROOT/labels.csv` (see [`crate::labels`]), and optional ground truth:
//!   `ROOT/target_counterfactual/<same relative name>` (the background counterpart) and
//!   `ROOT/target_mask/<same relative name>` (a grey image, mask = value / 255).

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use rayon::prelude::*;

use crate::config::Common;
use crate::dataset::{Dataset, Group, LabelColumn};
use crate::error::{DataError, DataErrorKind, Result};
use crate::imageio;

/// Files skipped by `skip_bad_images`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SkipReport {
    /// How many files were skipped.
    pub count: usize,
    /// The first (up to 10) skipped paths with the reason.
    pub first: Vec<String>,
}

/// List files under `dir` recursively whose path passes `keep`, as sorted relative paths with
/// `/` separators. Files failing `keep` and hidden entries are skipped with a debug log.
pub fn list_files(dir: &Path, keep: &dyn Fn(&Path) -> bool) -> Result<Vec<String>> {
    fn walk(
        root: &Path,
        dir: &Path,
        keep: &dyn Fn(&Path) -> bool,
        out: &mut Vec<String>,
    ) -> Result<()> {
        for entry in std::fs::read_dir(dir).map_err(|e| DataError::io(dir, e))? {
            let entry = entry.map_err(|e| DataError::io(dir, e))?;
            let path = entry.path();
            if entry.file_name().to_string_lossy().starts_with('.') {
                tracing::debug!(path = %path.display(), "skipping hidden entry");
                continue;
            }
            if path.is_dir() {
                walk(root, &path, keep, out)?;
            } else if keep(&path) {
                let rel = path.strip_prefix(root).expect("under root");
                out.push(
                    rel.components()
                        .map(|c| c.as_os_str().to_string_lossy())
                        .collect::<Vec<_>>()
                        .join("/"),
                );
            } else {
                tracing::debug!(path = %path.display(), "skipping non-image file");
            }
        }
        Ok(())
    }
    let mut out = Vec::new();
    walk(dir, dir, keep, &mut out)?;
    out.sort();
    Ok(out)
}

/// Check that `ROOT/<split>` exists for both splits.
pub fn split_dirs(root: &Path, what: &str) -> Result<[PathBuf; 2]> {
    if !root.is_dir() {
        return Err(DataError::at(
            root,
            DataErrorKind::MissingFolder {
                hint: format!("set data.root to a folder holding background/ and target/ {what}"),
            },
        ));
    }
    let dirs = [root.join("background"), root.join("target")];
    for d in &dirs {
        if !d.is_dir() {
            return Err(DataError::at(
                d,
                DataErrorKind::MissingFolder {
                    hint: format!(
                        "create it and put the {} {what} in it (ROOT/background and ROOT/target are both required)",
                        d.file_name().unwrap().to_string_lossy()
                    ),
                },
            ));
        }
    }
    Ok(dirs)
}

/// The folder-pair dataset.
#[derive(Debug, Clone)]
pub struct FolderDataset {
    root: PathBuf,
    files: Vec<(Group, String)>,
    n_background: usize,
    common: Common,
    labels: crate::labels::Labels,
    counterfactual: bool,
    mask: bool,
    skipped: SkipReport,
}

impl FolderDataset {
    /// Scan `root`, check headers (and decode all images if `skip_bad_images`), read labels.
    pub fn open(root: &Path, common: Common) -> Result<Self> {
        let dirs = split_dirs(root, "images (png/jpg/jpeg/bmp/webp)")?;
        let mut files = Vec::new();
        let mut skipped = SkipReport::default();
        let mut skipped_names = BTreeSet::new();
        let mut n_background = 0;
        for (g, dir) in [Group::Background, Group::Target].into_iter().zip(&dirs) {
            let names = list_files(dir, &imageio::is_image_path)?;
            let checks: Vec<Result<()>> = names
                .par_iter()
                .map(|n| {
                    let p = dir.join(n);
                    if common.skip_bad_images {
                        imageio::decode_file(&p).map(|_| ())
                    } else {
                        imageio::check_header(&p).map(|_| ())
                    }
                })
                .collect();
            let mut kept = 0;
            for (n, check) in names.into_iter().zip(checks) {
                match check {
                    Ok(()) => {
                        files.push((g, n));
                        kept += 1;
                    }
                    Err(e) if common.skip_bad_images => {
                        skipped.count += 1;
                        if skipped.first.len() < 10 {
                            skipped.first.push(e.to_string());
                        }
                        skipped_names.insert(format!("{}/{n}", g.name()));
                    }
                    Err(e) => return Err(e),
                }
            }
            if kept == 0 {
                return Err(DataError::at(
                    dir,
                    DataErrorKind::EmptySet {
                        what: "readable images (png/jpg/jpeg/bmp/webp)".into(),
                        hint: "put images in this folder (sub-folders are searched)".into(),
                    },
                ));
            }
            if g == Group::Background {
                n_background = kept;
            }
        }
        if skipped.count > 0 {
            tracing::warn!(count = skipped.count, first = ?skipped.first, "skipped unreadable images (data.skip_bad_images = true)");
        }
        let labels = crate::labels::read_root_labels(root, &files, &skipped_names)?;
        let mut ds = Self {
            root: root.to_path_buf(),
            files,
            n_background,
            common,
            labels,
            counterfactual: false,
            mask: false,
            skipped,
        };
        for (folder, flag) in [("target_counterfactual", 0), ("target_mask", 1)] {
            let dir = root.join(folder);
            if !dir.is_dir() {
                continue;
            }
            for (_, name) in ds.files.iter().filter(|(g, _)| *g == Group::Target) {
                let p = dir.join(name);
                if !p.is_file() {
                    return Err(DataError::at(
                        &p,
                        DataErrorKind::MissingFolder {
                            hint: format!(
                                "{folder}/ must hold a file for every image of target/ (same relative name); add it or remove {folder}/"
                            ),
                        },
                    ));
                }
            }
            if flag == 0 {
                ds.counterfactual = true
            } else {
                ds.mask = true
            }
        }
        Ok(ds)
    }

    /// Files skipped as unreadable at open (`skip_bad_images = true`).
    pub fn skipped(&self) -> &SkipReport {
        &self.skipped
    }

    /// The dataset root.
    pub fn root(&self) -> &Path {
        &self.root
    }

    fn full_path(&self, index: usize) -> PathBuf {
        let (g, name) = &self.files[index];
        self.root.join(g.name()).join(name)
    }
}

impl Dataset for FolderDataset {
    fn len(&self) -> usize {
        self.files.len()
    }
    fn n_background(&self) -> usize {
        self.n_background
    }
    fn common(&self) -> &Common {
        &self.common
    }
    fn file(&self, index: usize) -> String {
        self.files[index].1.clone()
    }
    fn path(&self, index: usize) -> Option<PathBuf> {
        Some(self.full_path(index))
    }
    fn load(&self, index: usize) -> Result<Vec<u8>> {
        let img = imageio::decode_file(&self.full_path(index))?;
        Ok(imageio::to_chw(img, self.common.channels, self.common.size))
    }
    fn counterpart(&self, index: usize) -> Result<Option<Vec<u8>>> {
        if !self.counterfactual {
            return Ok(None);
        }
        if self.group(index) == Group::Background {
            return self.load(index).map(Some);
        }
        let p = self
            .root
            .join("target_counterfactual")
            .join(&self.files[index].1);
        Ok(Some(imageio::to_chw(
            imageio::decode_file(&p)?,
            self.common.channels,
            self.common.size,
        )))
    }
    fn mask(&self, index: usize) -> Result<Option<Vec<f32>>> {
        if !self.mask {
            return Ok(None);
        }
        let n = self.common.size;
        if self.group(index) == Group::Background {
            return Ok(Some(vec![0.0; n * n]));
        }
        let p = self.root.join("target_mask").join(&self.files[index].1);
        let m = imageio::to_chw(imageio::decode_file(&p)?, 1, n);
        Ok(Some(m.into_iter().map(|v| v as f32 / 255.0).collect()))
    }
    fn labels(&self) -> Vec<LabelColumn> {
        self.labels.columns.clone()
    }
    fn subset(&self, index: usize) -> Option<bool> {
        self.labels.subset_of(index)
    }
    fn has_ground_truth(&self) -> bool {
        self.counterfactual && self.mask
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::config::{DataConfig, FolderConfig};

    pub(crate) fn common(size: usize, skip: bool) -> Common {
        let cfg = DataConfig::Folder(FolderConfig {
            root: "x".into(),
            size: Some(size),
            channels: None,
            eval_fraction: 0.25,
            seed: 1,
            cache_mb: 16,
            hflip: false,
            skip_bad_images: skip,
            target_fraction: 0.5,
            workers: 2,
            prefetch: 2,
        });
        cfg.common().unwrap()
    }

    pub(crate) fn png(path: &Path, img: image::DynamicImage) {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        img.save(path).unwrap();
    }

    /// A fixture: grey, RGBA, odd-sized and nested images, a jpeg and a text file.
    pub(crate) fn fixture(root: &Path) {
        let rgb = |w, h, v: u8| {
            image::DynamicImage::ImageRgb8(image::RgbImage::from_pixel(
                w,
                h,
                image::Rgb([v, v / 2, 255 - v]),
            ))
        };
        png(&root.join("background/a.png"), rgb(8, 8, 10));
        png(
            &root.join("background/nested/deep/b.png"),
            image::DynamicImage::ImageLuma8(image::GrayImage::from_pixel(9, 7, image::Luma([77]))),
        );
        png(&root.join("background/c.jpg"), rgb(11, 8, 100));
        png(
            &root.join("target/x.png"),
            image::DynamicImage::ImageRgba8(image::RgbaImage::from_pixel(
                13,
                8,
                image::Rgba([1, 2, 3, 4]),
            )),
        );
        png(&root.join("target/y.bmp"), rgb(8, 8, 200));
        std::fs::write(root.join("target/notes.txt"), "not an image").unwrap();
    }

    #[test]
    fn opens_nested_grey_rgba_odd_sizes_and_ignores_text_files() {
        let dir = tempfile::tempdir().unwrap();
        fixture(dir.path());
        let ds = FolderDataset::open(dir.path(), common(8, false)).unwrap();
        assert_eq!((ds.len(), ds.n_background()), (5, 3));
        assert_eq!(ds.file(2), "nested/deep/b.png");
        let b = ds.load(2).unwrap();
        assert_eq!(b.len(), 3 * 64);
        assert!(b.iter().all(|&v| v == 77), "grey replicated");
        let x = ds.load(3).unwrap();
        assert_eq!((x[0], x[64], x[128]), (1, 2, 3), "alpha dropped");
        assert!(ds.counterpart(3).unwrap().is_none() && ds.labels().is_empty());
    }

    #[test]
    fn corrupt_and_zero_byte_files_fail_or_are_skipped() {
        let dir = tempfile::tempdir().unwrap();
        fixture(dir.path());
        // a truncated PNG: the header is intact, the data is cut
        let mut buf = Vec::new();
        image::DynamicImage::ImageRgb8(image::RgbImage::from_fn(16, 16, |x, y| {
            image::Rgb([x as u8 * 9, y as u8 * 7, 3])
        }))
        .write_to(&mut std::io::Cursor::new(&mut buf), image::ImageFormat::Png)
        .unwrap();
        std::fs::write(dir.path().join("target/0007.png"), &buf[..buf.len() / 2]).unwrap();
        let ds = FolderDataset::open(dir.path(), common(8, false)).unwrap();
        let i = (0..ds.len()).find(|&i| ds.file(i) == "0007.png").unwrap();
        let e = ds.load(i).unwrap_err().to_string();
        assert!(
            e.contains("target/0007.png") && e.contains("skip_bad_images") && e.contains("bytes"),
            "{e}"
        );
        std::fs::write(dir.path().join("background/zero.png"), b"").unwrap();
        let e = FolderDataset::open(dir.path(), common(8, false))
            .unwrap_err()
            .to_string();
        assert!(e.contains("zero.png") && e.contains("zero-byte"), "{e}");
        let ds = FolderDataset::open(dir.path(), common(8, true)).unwrap();
        assert_eq!(ds.skipped().count, 2);
        assert!(ds.skipped().first.iter().any(|s| s.contains("0007.png")));
        assert_eq!(ds.len(), 5);
    }

    #[test]
    fn a_20000_px_image_is_refused_from_its_header_or_skipped() {
        let dir = tempfile::tempdir().unwrap();
        fixture(dir.path());
        let huge = crate::imageio::tests::png_declaring(20_000, 20_000);
        std::fs::write(dir.path().join("background/huge.png"), huge).unwrap();
        let e = FolderDataset::open(dir.path(), common(8, false))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("background/huge.png") && e.contains("20000x20000") && e.contains("resize"),
            "{e}"
        );
        let ds = FolderDataset::open(dir.path(), common(8, true)).unwrap();
        assert_eq!((ds.len(), ds.skipped().count), (5, 1));
        // A text file with an image extension is a bad image, not a silent skip.
        std::fs::remove_file(dir.path().join("background/huge.png")).unwrap();
        std::fs::write(dir.path().join("target/notes.png"), "meeting notes").unwrap();
        let e = FolderDataset::open(dir.path(), common(8, false))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("notes.png") && e.contains("not a recognised image"),
            "{e}"
        );
    }

    #[test]
    fn missing_and_empty_folders_are_clear_errors() {
        let dir = tempfile::tempdir().unwrap();
        let e = FolderDataset::open(dir.path(), common(8, false))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("background") && e.contains("missing folder"),
            "{e}"
        );
        std::fs::create_dir_all(dir.path().join("background")).unwrap();
        std::fs::create_dir_all(dir.path().join("target")).unwrap();
        png(
            &dir.path().join("background/a.png"),
            image::DynamicImage::new_rgb8(4, 4),
        );
        std::fs::write(dir.path().join("target/readme.md"), "x").unwrap();
        let e = FolderDataset::open(dir.path(), common(8, false))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("target") && e.contains("no readable images"),
            "{e}"
        );
    }

    #[test]
    fn labels_with_a_missing_file_are_an_error() {
        let dir = tempfile::tempdir().unwrap();
        fixture(dir.path());
        std::fs::write(
            dir.path().join("labels.csv"),
            "split,file,kind\nbackground,a.png,0\ntarget,gone.png,1\n",
        )
        .unwrap();
        let e = FolderDataset::open(dir.path(), common(8, false))
            .unwrap_err()
            .to_string();
        assert!(e.contains("target/gone.png") && e.contains("line 3"), "{e}");
        std::fs::write(
            dir.path().join("labels.csv"),
            "split,file,kind\nbackground,nested/deep/b.png,0\ntarget,x.png,1\n",
        )
        .unwrap();
        let ds = FolderDataset::open(dir.path(), common(8, false)).unwrap();
        assert_eq!(ds.labels()[0].values[2], 0.0);
        assert_eq!(ds.labels()[0].values[3], 1.0);
        assert!(ds.labels()[0].values[0].is_nan());
    }
}
