//! Fuzz target: opening a checkpoint folder (`latest`, `meta.json`, `model.safetensors`) and
//! loading it into a small VarStore, the path `ca train --resume` and every inference command
//! take.
//!
//! Input: `[meta length: u16 LE][meta.json bytes][model.safetensors bytes]`.
#![no_main]

use std::path::PathBuf;
use std::sync::OnceLock;

use ca_train::checkpoint;
use libfuzzer_sys::fuzz_target;

fn run_dir() -> &'static PathBuf {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let base = if std::path::Path::new("/dev/shm").is_dir() {
            PathBuf::from("/dev/shm")
        } else {
            std::env::temp_dir()
        };
        let d = base.join(format!("ca-fuzz-ckpt-{}", std::process::id()));
        std::fs::create_dir_all(d.join("checkpoints/ckpt-0000001")).unwrap();
        std::fs::write(d.join("checkpoints/latest"), "ckpt-0000001").unwrap();
        d
    })
}

fuzz_target!(|data: &[u8]| {
    if data.len() < 2 {
        return;
    }
    let n = (u16::from_le_bytes([data[0], data[1]]) as usize).min(data.len() - 2);
    let (meta, tensors) = data[2..].split_at(n);
    let run = run_dir();
    let ck = run.join("checkpoints/ckpt-0000001");
    std::fs::write(ck.join("meta.json"), meta).unwrap();
    std::fs::write(ck.join("model.safetensors"), tensors).unwrap();
    let Ok((dir, _meta)) = checkpoint::open(run, "gan", "0123456789abcdef") else {
        return;
    };
    let Ok(t) = checkpoint::read_tensors(&dir, "model") else {
        return;
    };
    let vs = tch::nn::VarStore::new(tch::Device::Cpu);
    let g = vs.root() / "g";
    let _w = g.zeros("w", &[2, 3]);
    let _b = g.zeros("b", &[3]);
    let _ = checkpoint::load_var_store(&vs, &t, "", &dir.join("model.safetensors"));
});
