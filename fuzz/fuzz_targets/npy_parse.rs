//! Fuzz target: a `.npy` slice (header and body), its normalisation and transform.
#![no_main]

use std::path::Path;

use ca_data::NpyNorm;
use ca_data::npy::{decode_npy, slice_to_chw};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok((v, shape)) = decode_npy(Path::new("fuzz.npy"), data) {
        assert_eq!(v.len(), shape.iter().product::<usize>());
        for norm in [NpyNorm::MinMax, NpyNorm::Percentile] {
            let chw = slice_to_chw(&v, shape, norm, (1.0, 99.0), 3, 4);
            assert_eq!(chw.len(), 48);
        }
    }
});
