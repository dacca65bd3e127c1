//! `.npy` slice dataset (e.g. 2D medical scans): `ROOT/background/*.npy`, `ROOT/target/*.npy`.
//!
//! Each file holds one C-ordered array of shape `(H, W)` or `(H, W, C)` with `C` in {1, 3, 4}
//! and dtype `u8`, `i16`, `f32` or `f64` (little-endian). Each image is normalised on its own
//! to u8: `min-max` maps its [min, max] to [0, 255]; `percentile` first clips at the
//! `percentile_low`/`percentile_high` percentiles. Non-finite values become 0; a constant
//! image becomes 0. Then the same transform as image files applies (channels, centre crop,
//! resize). The header parser is our own (format: NumPy NEP 1, versions 1.0-3.0).
//! An optional `ROOT/labels.csv` is read as for image folders (label columns for `ca eval`, and
//! `subset` to fix the evaluation split).

use std::path::{Path, PathBuf};

use crate::config::{Common, NpyConfig, NpyNorm};
use crate::dataset::{Dataset, Group, LabelColumn};
use crate::error::{DataError, DataErrorKind, Result};
use crate::folder::{list_files, split_dirs};
use crate::imageio;

/// Element type of an array.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dtype {
    /// `|u1` / `<u1`.
    U8,
    /// `<i2`.
    I16,
    /// `<f4`.
    F32,
    /// `<f8`.
    F64,
}

impl Dtype {
    fn size(self) -> usize {
        match self {
            Dtype::U8 => 1,
            Dtype::I16 => 2,
            Dtype::F32 => 4,
            Dtype::F64 => 8,
        }
    }
}

/// A parsed `.npy` header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NpyHeader {
    /// Element type.
    pub dtype: Dtype,
    /// Shape.
    pub shape: Vec<usize>,
    /// Byte offset of the data.
    pub data_offset: usize,
}

fn npy_err(path: &Path, msg: impl Into<String>) -> DataError {
    DataError::at(path, DataErrorKind::Npy(msg.into()))
}

fn dict_value<'a>(dict: &'a str, key: &str) -> Option<&'a str> {
    let k = dict.find(&format!("'{key}'"))?;
    let rest = dict[k + key.len() + 2..]
        .trim_start()
        .strip_prefix(':')?
        .trim_start();
    Some(rest)
}

/// Parse the header of a `.npy` file held in `bytes`.
pub fn parse_header(path: &Path, bytes: &[u8]) -> Result<NpyHeader> {
    if bytes.len() < 10 || &bytes[..6] != b"\x93NUMPY" {
        return Err(npy_err(
            path,
            format!(
                "not a .npy file (no \\x93NUMPY magic; file is {} bytes); save it with numpy.save",
                bytes.len()
            ),
        ));
    }
    let major = bytes[6];
    let (len, start) = match major {
        1 => (u16::from_le_bytes([bytes[8], bytes[9]]) as usize, 10),
        2 | 3 if bytes.len() >= 12 => (
            u32::from_le_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]) as usize,
            12,
        ),
        _ => {
            return Err(npy_err(
                path,
                format!("unsupported .npy format version {major}.{}", bytes[7]),
            ));
        }
    };
    let end = start + len;
    if bytes.len() < end {
        return Err(npy_err(
            path,
            format!(
                "truncated header (needs {end} bytes, file is {})",
                bytes.len()
            ),
        ));
    }
    let dict =
        std::str::from_utf8(&bytes[start..end]).map_err(|_| npy_err(path, "header is not text"))?;
    let descr = dict_value(dict, "descr")
        .ok_or_else(|| npy_err(path, format!("header has no 'descr': {dict}")))?;
    let descr = descr
        .strip_prefix('\'')
        .and_then(|d| d.split('\'').next())
        .ok_or_else(|| npy_err(path, format!("unsupported descr in {dict}")))?;
    let dtype = match descr {
        "|u1" | "<u1" => Dtype::U8,
        "<i2" => Dtype::I16,
        "<f4" => Dtype::F32,
        "<f8" => Dtype::F64,
        other => {
            return Err(npy_err(
                path,
                format!(
                    "dtype '{other}' is not supported (expected uint8, int16, float32 or float64, little-endian); convert with arr.astype('float32')"
                ),
            ));
        }
    };
    let fortran = dict_value(dict, "fortran_order")
        .ok_or_else(|| npy_err(path, "header has no 'fortran_order'"))?;
    if fortran.starts_with("True") {
        return Err(npy_err(
            path,
            "array is Fortran-ordered; save numpy.ascontiguousarray(arr) instead",
        ));
    }
    let shape = dict_value(dict, "shape").ok_or_else(|| npy_err(path, "header has no 'shape'"))?;
    let inner = shape
        .strip_prefix('(')
        .and_then(|s| s.split(')').next())
        .ok_or_else(|| npy_err(path, format!("bad shape in {dict}")))?;
    let shape: Vec<usize> = inner
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| {
            s.parse::<usize>()
                .map_err(|_| npy_err(path, format!("bad shape entry '{s}'")))
        })
        .collect::<Result<_>>()?;
    let ok_shape = match shape.as_slice() {
        [h, w] => *h > 0 && *w > 0,
        [h, w, c] => *h > 0 && *w > 0 && matches!(c, 1 | 3 | 4),
        _ => false,
    };
    if !ok_shape {
        return Err(npy_err(
            path,
            format!(
                "shape {shape:?} is not a 2D slice (H, W) or (H, W, C) with C in 1, 3, 4; save one slice per file"
            ),
        ));
    }
    if shape[0] > imageio::MAX_SIDE as usize || shape[1] > imageio::MAX_SIDE as usize {
        return Err(npy_err(
            path,
            format!("shape {shape:?} exceeds {} px a side", imageio::MAX_SIDE),
        ));
    }
    Ok(NpyHeader {
        dtype,
        shape,
        data_offset: end,
    })
}

impl NpyHeader {
    /// Check that a file of `file_len` bytes holds all the data the header declares.
    pub fn check_len(&self, path: &Path, file_len: usize) -> Result<()> {
        let need = self.data_offset + self.shape.iter().product::<usize>() * self.dtype.size();
        if file_len < need {
            return Err(npy_err(
                path,
                format!(
                    "truncated data: shape {:?} of {:?} needs {need} bytes, file is {file_len}",
                    self.shape, self.dtype
                ),
            ));
        }
        Ok(())
    }
}

/// Read a `.npy` file as f64 values with its shape `(H, W, C)`.
pub fn read_npy(path: &Path) -> Result<(Vec<f64>, [usize; 3])> {
    let bytes = std::fs::read(path).map_err(|e| DataError::io(path, e))?;
    decode_npy(path, &bytes)
}

/// Decode a `.npy` file held in memory (`path` only names it in errors) as f64 values with
/// its shape `(H, W, C)`. Bytes after the declared data are ignored.
pub fn decode_npy(path: &Path, bytes: &[u8]) -> Result<(Vec<f64>, [usize; 3])> {
    let h = parse_header(path, bytes)?;
    h.check_len(path, bytes.len())?;
    let n: usize = h.shape.iter().product();
    let d = &bytes[h.data_offset..h.data_offset + n * h.dtype.size()];
    let v: Vec<f64> = match h.dtype {
        Dtype::U8 => d.iter().map(|&b| b as f64).collect(),
        Dtype::I16 => d
            .chunks_exact(2)
            .map(|c| i16::from_le_bytes([c[0], c[1]]) as f64)
            .collect(),
        Dtype::F32 => d
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes(c.try_into().unwrap()) as f64)
            .collect(),
        Dtype::F64 => d
            .chunks_exact(8)
            .map(|c| f64::from_le_bytes(c.try_into().unwrap()))
            .collect(),
    };
    let c = h.shape.get(2).copied().unwrap_or(1);
    Ok((v, [h.shape[0], h.shape[1], c]))
}

/// Normalise values to u8 (per image).
pub fn normalise(v: &[f64], norm: NpyNorm, p_low: f64, p_high: f64) -> Vec<u8> {
    let mut finite: Vec<f64> = v.iter().copied().filter(|x| x.is_finite()).collect();
    if finite.is_empty() {
        return vec![0; v.len()];
    }
    let (lo, hi) = match norm {
        NpyNorm::MinMax => finite
            .iter()
            .fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), &x| {
                (a.min(x), b.max(x))
            }),
        NpyNorm::Percentile => {
            finite.sort_by(|a, b| a.total_cmp(b));
            let at = |p: f64| {
                finite[(((p / 100.0) * (finite.len() - 1) as f64).round() as usize)
                    .min(finite.len() - 1)]
            };
            (at(p_low), at(p_high))
        }
    };
    let scale = if hi > lo { 255.0 / (hi - lo) } else { 0.0 };
    v.iter()
        .map(|&x| {
            if x.is_finite() {
                ((x.clamp(lo, hi) - lo) * scale).round() as u8
            } else {
                0
            }
        })
        .collect()
}

/// Normalise one slice (values and `(H, W, C)` shape as [`decode_npy`] returns them) to u8 and
/// apply the image transform: `channels` (1 or 3), centre crop and resize to `size x size`,
/// CHW. `p` is `(percentile_low, percentile_high)`.
pub fn slice_to_chw(
    v: &[f64],
    [h, w, c]: [usize; 3],
    norm: NpyNorm,
    p: (f64, f64),
    channels: usize,
    size: usize,
) -> Vec<u8> {
    assert_eq!(v.len(), h * w * c, "slice of shape ({h}, {w}, {c})");
    let u = normalise(v, norm, p.0, p.1);
    let (w, h) = (w as u32, h as u32);
    let img = match c {
        1 => image::DynamicImage::ImageLuma8(image::GrayImage::from_raw(w, h, u).expect("size")),
        3 => image::DynamicImage::ImageRgb8(image::RgbImage::from_raw(w, h, u).expect("size")),
        _ => image::DynamicImage::ImageRgba8(image::RgbaImage::from_raw(w, h, u).expect("size")),
    };
    imageio::to_chw(img, channels, size)
}

/// The `.npy` slice dataset.
#[derive(Debug, Clone)]
pub struct NpyDataset {
    root: PathBuf,
    files: Vec<(Group, String)>,
    n_background: usize,
    common: Common,
    norm: NpyNorm,
    p: (f64, f64),
    labels: crate::labels::Labels,
}

impl NpyDataset {
    /// Scan the folders and check every header (shape, dtype) without reading the data.
    pub fn open(cfg: &NpyConfig, common: Common) -> Result<Self> {
        let (lo, hi) = (cfg.percentile_low, cfg.percentile_high);
        if !((0.0..100.0).contains(&lo) && lo < hi && hi <= 100.0) {
            return Err(DataError::config(format!(
                "data.percentile_low = {}, percentile_high = {} (expected 0 <= low < high <= 100)",
                cfg.percentile_low, cfg.percentile_high
            )));
        }
        let dirs = split_dirs(&cfg.root, ".npy slices")?;
        let mut files = Vec::new();
        let mut n_background = 0;
        for (g, dir) in [Group::Background, Group::Target].into_iter().zip(&dirs) {
            let names = list_files(dir, &|p: &Path| {
                p.extension().is_some_and(|e| e.eq_ignore_ascii_case("npy"))
            })?;
            if names.is_empty() {
                return Err(DataError::at(
                    dir,
                    DataErrorKind::EmptySet {
                        what: ".npy files".into(),
                        hint: "put one 2D slice per .npy file in this folder".into(),
                    },
                ));
            }
            for n in names {
                let p = dir.join(&n);
                let mut head = vec![0u8; 0];
                {
                    use std::io::Read;
                    let f = std::fs::File::open(&p).map_err(|e| DataError::io(&p, e))?;
                    f.take(1 << 16)
                        .read_to_end(&mut head)
                        .map_err(|e| DataError::io(&p, e))?;
                }
                let len = std::fs::metadata(&p)
                    .map_err(|e| DataError::io(&p, e))?
                    .len() as usize;
                parse_header(&p, &head)?.check_len(&p, len)?;
                if g == Group::Background {
                    n_background += 1;
                }
                files.push((g, n));
            }
        }
        let labels = crate::labels::read_root_labels(&cfg.root, &files, &Default::default())?;
        Ok(Self {
            labels,
            root: cfg.root.clone(),
            files,
            n_background,
            common,
            norm: cfg.norm,
            p: (cfg.percentile_low, cfg.percentile_high),
        })
    }

    fn full_path(&self, index: usize) -> PathBuf {
        let (g, name) = &self.files[index];
        self.root.join(g.name()).join(name)
    }
}

impl Dataset for NpyDataset {
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
        let (v, shape) = read_npy(&self.full_path(index))?;
        Ok(slice_to_chw(
            &v,
            shape,
            self.norm,
            self.p,
            self.common.channels,
            self.common.size,
        ))
    }
    fn counterpart(&self, _index: usize) -> Result<Option<Vec<u8>>> {
        Ok(None)
    }
    fn mask(&self, _index: usize) -> Result<Option<Vec<f32>>> {
        Ok(None)
    }
    fn labels(&self) -> Vec<LabelColumn> {
        self.labels.columns.clone()
    }
    fn subset(&self, index: usize) -> Option<bool> {
        self.labels.subset_of(index)
    }
    fn has_ground_truth(&self) -> bool {
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::DataConfig;

    fn write_npy(path: &Path, descr: &str, shape: &str, data: &[u8]) {
        let mut dict =
            format!("{{'descr': '{descr}', 'fortran_order': False, 'shape': {shape}, }}");
        while (10 + dict.len() + 1) % 64 != 0 {
            dict.push(' ');
        }
        dict.push('\n');
        let mut b = b"\x93NUMPY\x01\x00".to_vec();
        b.extend_from_slice(&(dict.len() as u16).to_le_bytes());
        b.extend_from_slice(dict.as_bytes());
        b.extend_from_slice(data);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, b).unwrap();
    }

    fn cfg(root: &Path, norm: NpyNorm) -> NpyConfig {
        let c: DataConfig = toml::from_str(&format!(
            "kind = \"npy\"\nroot = {:?}\nsize = 4",
            root.display().to_string()
        ))
        .unwrap();
        let DataConfig::Npy(mut c) = c else {
            unreachable!()
        };
        c.norm = norm;
        c
    }

    #[test]
    fn reads_each_dtype_and_normalises() {
        let dir = tempfile::tempdir().unwrap();
        let r = dir.path();
        let f32s: Vec<u8> = (0..16)
            .flat_map(|i| (i as f32 * 10.0 - 50.0).to_le_bytes())
            .collect();
        write_npy(&r.join("background/a.npy"), "<f4", "(4, 4)", &f32s);
        let i16s: Vec<u8> = (0..16)
            .flat_map(|i| (i as i16 * 100).to_le_bytes())
            .collect();
        write_npy(&r.join("background/b.npy"), "<i2", "(4, 4)", &i16s);
        let f64s: Vec<u8> = (0..48).flat_map(|i| (i as f64).to_le_bytes()).collect();
        write_npy(&r.join("target/c.npy"), "<f8", "(4, 4, 3)", &f64s);
        write_npy(&r.join("target/d.npy"), "|u1", "(4, 4)", &[9u8; 16]);
        let c = cfg(r, NpyNorm::MinMax);
        let ds = NpyDataset::open(&c, DataConfig::Npy(c.clone()).common().unwrap()).unwrap();
        assert_eq!((ds.len(), ds.n_background(), ds.channels()), (4, 2, 1));
        let a = ds.load(0).unwrap();
        assert_eq!((a[0], a[15]), (0, 255));
        assert_eq!(ds.load(1).unwrap()[15], 255);
        assert_eq!(ds.load(2).unwrap().len(), 16);
        assert!(
            ds.load(3).unwrap().iter().all(|&v| v == 0),
            "constant image -> 0"
        );
        // percentile clipping saturates the extremes
        let v: Vec<f64> = (0..100)
            .map(|i| if i == 99 { 1e6 } else { i as f64 })
            .collect();
        let mm = normalise(&v, NpyNorm::MinMax, 1.0, 99.0);
        let pc = normalise(&v, NpyNorm::Percentile, 1.0, 98.0);
        assert_eq!(mm[50], 0);
        assert!(pc[50] > 100 && pc[99] == 255, "{}", pc[50]);
    }

    #[test]
    fn labels_csv_gives_label_columns_and_fixes_the_split() {
        use crate::loader::{Split, split_indices};
        let dir = tempfile::tempdir().unwrap();
        let r = dir.path();
        for n in ["a", "b", "c"] {
            write_npy(
                &r.join(format!("background/{n}.npy")),
                "|u1",
                "(4, 4)",
                &[1u8; 16],
            );
            write_npy(
                &r.join(format!("target/{n}.npy")),
                "|u1",
                "(4, 4)",
                &[2u8; 16],
            );
        }
        std::fs::write(
            r.join("labels.csv"),
            "split,file,subset,tumour\nbackground,a.npy,eval,0\nbackground,b.npy,train,0\n\
             target,a.npy,eval,1\ntarget,b.npy,train,1\ntarget,c.npy,,1\n",
        )
        .unwrap();
        let mut c = cfg(r, NpyNorm::MinMax);
        let mut common = DataConfig::Npy(c.clone()).common().unwrap();
        // eval_fraction 0 would put every item in training; the subset column overrides it
        // where it has a value.
        common.eval_fraction = 0.0;
        let ds = NpyDataset::open(&c, common.clone()).unwrap();
        assert_eq!(ds.labels().len(), 1);
        assert_eq!(ds.labels()[0].name, "tumour");
        assert_eq!(ds.labels()[0].values[3..], [1.0, 1.0, 1.0]);
        let eval: Vec<String> = split_indices(&ds, Split::Eval)
            .iter()
            .map(|&i| format!("{}/{}", ds.group(i).name(), ds.file(i)))
            .collect();
        assert_eq!(eval, ["background/a.npy", "target/a.npy"]);
        // Empty cells and images without a row fall back to eval_fraction.
        common.eval_fraction = 0.999_999;
        let ds = NpyDataset::open(&c, common).unwrap();
        let eval = split_indices(&ds, Split::Eval);
        assert_eq!(eval.len(), 4, "all but the two `train` rows: {eval:?}");
        // A bad subset value names the file and the line.
        std::fs::write(
            r.join("labels.csv"),
            "split,file,subset\ntarget,a.npy,val\n",
        )
        .unwrap();
        c.norm = NpyNorm::MinMax;
        let e = NpyDataset::open(&c, DataConfig::Npy(c.clone()).common().unwrap())
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("labels.csv") && e.contains("line 2: subset `val`"),
            "{e}"
        );
    }

    #[test]
    fn bad_shapes_dtypes_and_files_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let r = dir.path();
        write_npy(&r.join("background/a.npy"), "|u1", "(4, 4)", &[1u8; 16]);
        write_npy(&r.join("target/vol.npy"), "|u1", "(2, 4, 4, 2)", &[1u8; 64]);
        let c = cfg(r, NpyNorm::MinMax);
        let common = DataConfig::Npy(c.clone()).common().unwrap();
        let e = NpyDataset::open(&c, common.clone())
            .unwrap_err()
            .to_string();
        assert!(e.contains("vol.npy") && e.contains("2D slice"), "{e}");
        write_npy(&r.join("target/vol.npy"), "<c8", "(4, 4)", &[1u8; 128]);
        let e = NpyDataset::open(&c, common.clone())
            .unwrap_err()
            .to_string();
        assert!(e.contains("'<c8'") && e.contains("float32"), "{e}");
        std::fs::write(r.join("target/vol.npy"), b"garbage").unwrap();
        let e = NpyDataset::open(&c, common.clone())
            .unwrap_err()
            .to_string();
        assert!(e.contains("magic"), "{e}");
        write_npy(&r.join("target/vol.npy"), "<f4", "(4, 4)", &[0u8; 10]);
        let e = NpyDataset::open(&c, common.clone())
            .unwrap_err()
            .to_string();
        assert!(e.contains("truncated data") && e.contains("vol.npy"), "{e}");
        write_npy(&r.join("target/vol.npy"), ">f4", "(4, 4)", &[0u8; 64]);
        let e = NpyDataset::open(&c, common.clone())
            .unwrap_err()
            .to_string();
        assert!(e.contains("'>f4'") && e.contains("little-endian"), "{e}");
        std::fs::write(r.join("target/vol.npy"), b"").unwrap();
        let e = NpyDataset::open(&c, common.clone())
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("vol.npy") && e.contains("file is 0 bytes"),
            "{e}"
        );
        // An empty set: no .npy file in target/ (other files do not count).
        std::fs::remove_file(r.join("target/vol.npy")).unwrap();
        std::fs::write(r.join("target/readme.txt"), "slices go here").unwrap();
        let e = NpyDataset::open(&c, common).unwrap_err().to_string();
        assert!(
            e.contains("target") && e.contains("no .npy files found"),
            "{e}"
        );
    }
}
