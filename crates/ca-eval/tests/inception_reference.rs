//! Our FID Inception-v3 against the reference implementation (pytorch-fid 0.3.0's
//! `InceptionV3([3])`, `use_fid_inception=True`, `resize_input=True`, `normalize_input=True`)
//! on the same weights: every variable of the network drawn at random from fixed seeds (the
//! default initialisation leaves batch norm at identity and the deep features near zero, which
//! would hide differences), the same two 32x32 images, `pool3` features compared.
//!
//! How the fixture was made (offline, once): `CA_INCEPTION_FIXTURE_DIR=DIR cargo test -p ca-eval
//! --test inception_reference` writes `DIR/weights.safetensors` and `DIR/images.safetensors`;
//! `python3 tests/fixtures/inception_reference.py DIR tests/fixtures/inception_pool3.json`
//! (PyTorch 2.11.0, torchvision 0.26.0, pytorch-fid 0.3.0, safetensors) runs the reference on
//! them and writes the features. The weights are regenerated here from the same seeds, so only
//! the features (2 x 2048 numbers) are committed.

use ca_eval::metrics::inception::{FEATURE_DIM, InceptionFeatures};
use tch::{Device, Kind, Tensor};

/// The network with every variable redrawn: conv weights N(0, 1/fan_in), batch-norm scale
/// U(0.5, 1.5), shift N(0, 0.1²), running mean N(0, 0.1²), running variance U(0.5, 1.5); one
/// seed per variable, in name order, so the draw does not depend on creation order.
fn randomised() -> InceptionFeatures {
    let net = InceptionFeatures::untrained(Device::Cpu);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("untrained.safetensors");
    net.save(&path).unwrap();
    let mut vars = Tensor::read_safetensors(&path).unwrap();
    vars.sort_by(|a, b| a.0.cmp(&b.0));
    let drawn: Vec<(String, Tensor)> = vars
        .into_iter()
        .enumerate()
        .map(|(k, (name, t))| {
            tch::manual_seed(1000 + k as i64);
            let shape = t.size();
            let opts = (Kind::Float, Device::Cpu);
            let u = || Tensor::rand(shape.as_slice(), opts) + 0.5;
            let n = |s: f64| Tensor::randn(shape.as_slice(), opts) * s;
            let v = if name.ends_with("running_var") || name.ends_with("bn.weight") {
                u()
            } else if name.ends_with("running_mean") || name.ends_with("bias") {
                n(0.1)
            } else if shape.len() > 1 {
                let fan_in: i64 = shape[1..].iter().product();
                n(1.0 / (fan_in as f64).sqrt())
            } else {
                t.to_kind(Kind::Float)
            };
            (name, v)
        })
        .collect();
    let path = dir.path().join("randomised.safetensors");
    Tensor::write_safetensors(&drawn, &path).unwrap();
    InceptionFeatures::load(&path, Device::Cpu).unwrap()
}

/// Two 32x32 RGB images in [-1, 1] from closed forms.
fn images() -> Tensor {
    let i = Tensor::arange(2 * 3 * 32 * 32, (Kind::Float, Device::Cpu));
    ((&i * 0.0131).sin() * 0.7 + (&i * 0.00071).cos() * 0.3).view([2, 3, 32, 32])
}

#[test]
fn pool3_features_match_pytorch_fid_on_the_same_weights() {
    tch::set_num_threads(1);
    let net = randomised();
    let x = images();
    if let Some(dir) = std::env::var_os("CA_INCEPTION_FIXTURE_DIR") {
        let dir = std::path::PathBuf::from(dir);
        std::fs::create_dir_all(&dir).unwrap();
        net.save(&dir.join("weights.safetensors")).unwrap();
        Tensor::write_safetensors(&[("images", &x)], dir.join("images.safetensors")).unwrap();
    }
    let ours = net.features(&x, 2).unwrap();
    assert_eq!(ours.size(), [2, FEATURE_DIM]);
    let text = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures/inception_pool3.json"),
    )
    .unwrap();
    let reference: Vec<Vec<f64>> = serde_json::from_str(&text).unwrap();
    let reference = Tensor::from_slice(&reference.concat())
        .view([2, FEATURE_DIM])
        .to_kind(Kind::Float);
    let scale = reference.abs().max().double_value(&[]);
    let diff = (&ours - &reference).abs().max().double_value(&[]);
    eprintln!("max |pool3| {scale:.4e}, max |ours - pytorch-fid| {diff:.3e}");
    assert!(scale > 1e-3, "the features must not be near zero: {scale}");
    assert!(
        diff <= 1e-4 * scale.max(1.0),
        "max difference {diff} (scale {scale})"
    );
}
