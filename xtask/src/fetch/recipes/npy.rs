//! A minimal `.npy` writer for the slice recipes: NumPy format version 1.0 (NEP 1, "A simple
//! file format for NumPy arrays"), the layout `numpy.save` writes and `numpy.load` and the
//! `npy` data kind of ca-data read.
//!
//! A file is the magic `\x93NUMPY`, the version bytes `1, 0`, the header length as a
//! little-endian `u16`, the header (a Python dict literal
//! `{'descr': '<f4', 'fortran_order': False, 'shape': (H, W), }` padded with spaces and ended by
//! `\n` so that the data starts at a multiple of 64 bytes), then the C-ordered little-endian data.
//! xtask links neither libtorch nor ca-data, so this is written by hand.

use std::path::Path;

use anyhow::Context;

/// The element types the recipes write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Elem {
    /// `uint8` (`|u1`): masks.
    U8,
    /// `float32` (`<f4`): image slices.
    F32,
}

impl Elem {
    /// NumPy's `descr` string.
    pub fn descr(self) -> &'static str {
        match self {
            Elem::U8 => "|u1",
            Elem::F32 => "<f4",
        }
    }

    fn size(self) -> usize {
        match self {
            Elem::U8 => 1,
            Elem::F32 => 4,
        }
    }
}

/// The bytes of a version-1.0 `.npy` file holding `data` (already little-endian, C order).
///
/// Panics if `data` does not hold `shape`'s element count or the header would not fit a `u16`
/// (both are bugs of the caller: shapes here are 2-D slices).
pub fn encode(elem: Elem, shape: &[usize], data: &[u8]) -> Vec<u8> {
    let count: usize = shape.iter().product();
    assert_eq!(
        data.len(),
        count * elem.size(),
        "npy: {} bytes for shape {shape:?} of {}",
        data.len(),
        elem.descr()
    );
    let dims: Vec<String> = shape.iter().map(usize::to_string).collect();
    let tuple = match dims.len() {
        1 => format!("({},)", dims[0]),
        _ => format!("({})", dims.join(", ")),
    };
    let mut header = format!(
        "{{'descr': '{}', 'fortran_order': False, 'shape': {tuple}, }}",
        elem.descr()
    );
    // magic (6) + version (2) + length (2) + header + '\n' is a multiple of 64.
    while (10 + header.len() + 1) % 64 != 0 {
        header.push(' ');
    }
    header.push('\n');
    let len = u16::try_from(header.len()).expect("npy header fits a u16");
    let mut out = Vec::with_capacity(10 + header.len() + data.len());
    out.extend_from_slice(b"\x93NUMPY\x01\x00");
    out.extend_from_slice(&len.to_le_bytes());
    out.extend_from_slice(header.as_bytes());
    out.extend_from_slice(data);
    out
}

/// Write a `float32` array of `shape` to `path`.
pub fn write_f32(path: &Path, shape: &[usize], data: &[f32]) -> anyhow::Result<()> {
    let bytes: Vec<u8> = data.iter().flat_map(|v| v.to_le_bytes()).collect();
    std::fs::write(path, encode(Elem::F32, shape, &bytes))
        .with_context(|| format!("cannot write {}", path.display()))
}

/// Write a `uint8` array of `shape` to `path`.
pub fn write_u8(path: &Path, shape: &[usize], data: &[u8]) -> anyhow::Result<()> {
    std::fs::write(path, encode(Elem::U8, shape, data))
        .with_context(|| format!("cannot write {}", path.display()))
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A parsed file: `descr`, shape and the data bytes (test helper; accepts what `encode`
    /// writes and checks the alignment rule).
    pub fn parse(bytes: &[u8]) -> (String, Vec<usize>, Vec<u8>) {
        assert_eq!(&bytes[..8], b"\x93NUMPY\x01\x00", "magic and version 1.0");
        let len = u16::from_le_bytes([bytes[8], bytes[9]]) as usize;
        assert_eq!((10 + len) % 64, 0, "data is 64-byte aligned");
        let header = std::str::from_utf8(&bytes[10..10 + len]).unwrap();
        assert!(header.ends_with('\n'), "{header:?}");
        assert!(header.contains("'fortran_order': False"), "{header}");
        let descr = header.split("'descr': '").nth(1).unwrap();
        let descr = descr[..descr.find('\'').unwrap()].to_string();
        let shape = header.split("'shape': (").nth(1).unwrap();
        let shape: Vec<usize> = shape[..shape.find(')').unwrap()]
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(|s| s.parse().unwrap())
            .collect();
        (descr, shape, bytes[10 + len..].to_vec())
    }

    /// The `float32` values of a parsed file's data.
    pub fn f32s(data: &[u8]) -> Vec<f32> {
        data.chunks_exact(4)
            .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
            .collect()
    }

    #[test]
    fn header_is_what_numpy_writes() {
        // numpy 1.26: np.save(f, np.zeros((2, 3), np.float32)) writes exactly this header
        // (118 = 128 - 10 bytes, spaces up to the 64-byte boundary, then '\n').
        let b = encode(Elem::F32, &[2, 3], &[0u8; 24]);
        let expected_dict = "{'descr': '<f4', 'fortran_order': False, 'shape': (2, 3), }";
        assert_eq!(&b[..10], b"\x93NUMPY\x01\x00\x76\x00");
        assert_eq!(&b[10..10 + expected_dict.len()], expected_dict.as_bytes());
        assert_eq!(b.len(), 128 + 24);
        assert_eq!(b[127], b'\n');
        assert!(b[10 + expected_dict.len()..127].iter().all(|&c| c == b' '));
    }

    #[test]
    fn round_trips_u8_and_f32_and_one_d_shapes() {
        let (d, s, data) = parse(&encode(Elem::U8, &[2, 2], &[0, 1, 1, 0]));
        assert_eq!((d.as_str(), s, data), ("|u1", vec![2, 2], vec![0, 1, 1, 0]));
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("a.npy");
        write_f32(&p, &[3], &[0.0, 0.5, 1.0]).unwrap();
        let bytes = std::fs::read(&p).unwrap();
        let header = String::from_utf8_lossy(&bytes[10..64]).into_owned();
        assert!(header.contains("'shape': (3,)"), "{header}");
        let (d, s, data) = parse(&bytes);
        assert_eq!((d.as_str(), s), ("<f4", vec![3]));
        assert_eq!(f32s(&data), [0.0, 0.5, 1.0]);
    }
}
