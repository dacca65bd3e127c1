//! Fuzz target: decoding an image file (any format the loader accepts) and the shared
//! transform. Must never panic or allocate without bound: errors are fine.
#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(img) = ca_data::imageio::decode_bytes(Path::new("fuzz.img"), data) {
        assert!(img.width() >= 1 && img.height() >= 1);
        assert!(img.width() <= ca_data::imageio::MAX_SIDE);
        let rgb = ca_data::imageio::to_chw(img.clone(), 3, 5);
        assert_eq!(rgb.len(), 3 * 25);
        let grey = ca_data::imageio::to_chw(img, 1, 3);
        assert_eq!(grey.len(), 9);
    }
});
