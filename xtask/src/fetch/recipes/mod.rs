//! Preprocessing recipes: from the unpacked raw files to the folder layout of docs/design.md section 5,
//! `OUT/background/*.png`, `OUT/target/*.png` (brain-MRI: `*.npy` slices, see `brats`) and
//! `OUT/labels.csv` with the columns `split,file,<labels...>` (`split` is `background` or
//! `target`, `file` is relative to that split's folder). Each recipe is named in the manifest's
//! `[recipe] kind`.

mod afhq;
mod brats;
mod celeba;
mod cifar_mnist;
mod npy;

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use image::imageops::FilterType;
use image::{DynamicImage, GenericImageView};

use super::manifest::Dataset;

/// Counts of what a recipe wrote.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Summary {
    /// Images written to `background/`.
    pub background: usize,
    /// Images written to `target/`.
    pub target: usize,
}

/// Run the dataset's recipe on `raw` (unpacked files), writing into `out`.
pub fn run(dataset: &Dataset, raw: &Path, out: &Path) -> anyhow::Result<Summary> {
    match dataset.recipe_kind() {
        "celeba-accessory" => celeba::run(dataset, raw, out),
        "cifar-mnist-overlay" => cifar_mnist::run(dataset, raw, out),
        "afhq-domestic-wild" => afhq::run(dataset, raw, out),
        "brain-mri-slices" => brats::run(dataset, raw, out),
        other => bail!("{}: unknown recipe '{other}'", dataset.name),
    }
}

/// Which of the two sets an image belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Split {
    /// `background/`.
    Background,
    /// `target/`.
    Target,
}

impl Split {
    fn dir(self) -> &'static str {
        match self {
            Split::Background => "background",
            Split::Target => "target",
        }
    }
}

/// Writes images into `background/` / `target/` and rows into `labels.csv`.
pub struct Writer {
    out: PathBuf,
    csv: BufWriter<File>,
    ncols: usize,
    summary: Summary,
}

impl Writer {
    /// Create `out/{background,target}` and `out/labels.csv` with `split,file,<columns>`.
    pub fn new(out: &Path, columns: &[&str]) -> anyhow::Result<Self> {
        for s in [Split::Background, Split::Target] {
            std::fs::create_dir_all(out.join(s.dir()))?;
        }
        let path = out.join("labels.csv");
        let mut csv = BufWriter::new(
            File::create(&path).with_context(|| format!("cannot create {}", path.display()))?,
        );
        writeln!(csv, "split,file,{}", columns.join(","))?;
        Ok(Writer {
            out: out.to_path_buf(),
            csv,
            ncols: columns.len(),
            summary: Summary::default(),
        })
    }

    /// Save `img` as `<split>/<file>` (PNG) and append its label row.
    pub fn add(
        &mut self,
        split: Split,
        file: &str,
        img: &DynamicImage,
        labels: &[String],
    ) -> anyhow::Result<()> {
        self.add_with(split, file, labels, |path| {
            img.save_with_format(path, image::ImageFormat::Png)
                .with_context(|| format!("cannot write {}", path.display()))
        })
    }

    /// Write `<split>/<file>` with `write` (given the full path) and append its label row.
    pub fn add_with(
        &mut self,
        split: Split,
        file: &str,
        labels: &[String],
        write: impl FnOnce(&Path) -> anyhow::Result<()>,
    ) -> anyhow::Result<()> {
        assert_eq!(labels.len(), self.ncols, "label row length");
        let path = self.out.join(split.dir()).join(file);
        write(&path)?;
        writeln!(self.csv, "{},{},{}", split.dir(), file, labels.join(","))?;
        match split {
            Split::Background => self.summary.background += 1,
            Split::Target => self.summary.target += 1,
        }
        Ok(())
    }

    /// Flush `labels.csv` and return the counts.
    pub fn finish(mut self) -> anyhow::Result<Summary> {
        self.csv.flush()?;
        self.csv.get_ref().sync_all()?;
        Ok(self.summary)
    }
}

/// Centre crop to a `crop`-pixel square (clamped to the image), then resize to `size`x`size`.
pub fn crop_resize(img: &DynamicImage, crop: u32, size: u32) -> DynamicImage {
    let (w, h) = img.dimensions();
    let c = crop.min(w).min(h);
    let cropped = img.crop_imm((w - c) / 2, (h - c) / 2, c, c);
    cropped.resize_exact(size, size, FilterType::Triangle)
}

/// Open an image file with an error naming it.
pub fn open_image(path: &Path) -> anyhow::Result<DynamicImage> {
    image::open(path).with_context(|| format!("cannot decode image {}", path.display()))
}

/// Image files (`.jpg`, `.jpeg`, `.png`) directly in `dir`, sorted by name.
pub fn images_in(dir: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .with_context(|| format!("cannot list {}", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.extension()
                .and_then(|e| e.to_str())
                .is_some_and(|e| matches!(e.to_ascii_lowercase().as_str(), "jpg" | "jpeg" | "png"))
        })
        .collect();
    v.sort();
    Ok(v)
}

/// Find the folder under `raw` (at most `depth` levels down, `raw` included) that contains
/// `marker` (a relative path); archives often wrap their content in a top folder.
pub fn find_root(raw: &Path, marker: &str, depth: usize) -> Option<PathBuf> {
    if raw.join(marker).exists() {
        return Some(raw.to_path_buf());
    }
    if depth == 0 {
        return None;
    }
    let mut subs: Vec<PathBuf> = std::fs::read_dir(raw)
        .ok()?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_dir())
        .collect();
    subs.sort();
    subs.iter().find_map(|s| find_root(s, marker, depth - 1))
}

/// PNG name for the stem of `path`.
pub fn png_name(path: &Path) -> String {
    with_ext(path, "png")
}

/// `<stem of path>.<ext>`.
pub fn with_ext(path: &Path, ext: &str) -> String {
    format!(
        "{}.{ext}",
        path.file_stem().unwrap_or_default().to_string_lossy()
    )
}

#[cfg(test)]
pub(crate) use afhq::tests::fabricate as afhq_fabricate;
#[cfg(test)]
pub(crate) use cifar_mnist::tests::fabricate as cifar_mnist_fabricate;

#[cfg(test)]
pub(crate) mod testutil {
    //! Fabricated images and a labels.csv reader for recipe tests.
    use super::*;

    /// A `w`x`h` RGB image whose pixels encode `seed`.
    pub fn rgb(w: u32, h: u32, seed: u8) -> image::RgbImage {
        image::RgbImage::from_fn(w, h, |x, y| {
            image::Rgb([seed, (x * 7) as u8, (y * 5) as u8])
        })
    }

    /// JPEG bytes of `img`.
    pub fn jpeg(img: &image::RgbImage) -> Vec<u8> {
        let mut out = std::io::Cursor::new(Vec::new());
        img.write_to(&mut out, image::ImageFormat::Jpeg).unwrap();
        out.into_inner()
    }

    /// Rows of `labels.csv` (header first), split on commas.
    pub fn read_labels(out: &Path) -> Vec<Vec<String>> {
        std::fs::read_to_string(out.join("labels.csv"))
            .unwrap()
            .lines()
            .map(|l| l.split(',').map(str::to_string).collect())
            .collect()
    }

    /// Check every row's file exists at `size`x`size`.
    pub fn assert_files_exist(out: &Path, rows: &[Vec<String>], size: u32) {
        for r in &rows[1..] {
            let p = out.join(&r[0]).join(&r[1]);
            let img = image::open(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
            assert_eq!(img.dimensions(), (size, size), "{}", p.display());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crop_resize_is_square_and_centred() {
        // A 10x20 image, left half black, right half white, top/bottom rows red: crop 10 keeps rows 5..15.
        let img = image::RgbImage::from_fn(10, 20, |x, y| {
            if !(5..15).contains(&y) {
                image::Rgb([255, 0, 0])
            } else if x < 5 {
                image::Rgb([0, 0, 0])
            } else {
                image::Rgb([255, 255, 255])
            }
        });
        let out = crop_resize(&DynamicImage::ImageRgb8(img), 100, 10).to_rgb8();
        assert_eq!(out.dimensions(), (10, 10));
        assert_eq!(out.get_pixel(0, 0).0, [0, 0, 0]);
        assert_eq!(out.get_pixel(9, 9).0, [255, 255, 255]);
    }
}
