//! Write an untrained FID Inception-v3 (libtorch's default initialisation, the exact names and
//! shapes of the real weights) to a safetensors file, to time `ca eval` with FID where the real
//! weights cannot be downloaded. Its FID values mean nothing; its run time is the real one.
//!
//! ```text
//! cargo run --release -p ca-eval --example untrained_inception -- /tmp/w/pt_inception-2015-12-05.safetensors
//! CA_WEIGHTS_DIR=/tmp/w ca eval --run RUN
//! ```

use ca_eval::metrics::inception::InceptionFeatures;

fn main() {
    let Some(path) = std::env::args().nth(1) else {
        eprintln!("usage: untrained_inception OUT.safetensors");
        std::process::exit(2);
    };
    let path = std::path::PathBuf::from(path);
    if path.exists() {
        eprintln!("'{}' exists; give a new file name", path.display());
        std::process::exit(1);
    }
    tch::manual_seed(0);
    if let Err(e) = InceptionFeatures::untrained(tch::Device::Cpu).save(&path) {
        eprintln!("cannot write '{}': {e}", path.display());
        std::process::exit(1);
    }
    println!("wrote {} (untrained: for timing only)", path.display());
}
