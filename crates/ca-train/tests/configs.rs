//! Every preset in `configs/*.toml` parses, with no unknown key, passes
//! [`RunConfig::validate`], and its `[model]` validates against the image geometry its `[data]`
//! gives.
//!
//! Nothing here touches the disk beyond `configs/` and `datasets/manifest.toml`: a folder or
//! `.npy` preset's `data.root` (e.g. `datasets/afhq`, written by `cargo xtask fetch-datasets`)
//! need not exist, because `RunConfig::load`, `validate` and `DataConfig::common` check values
//! only; the folder is opened when training starts.

use std::path::{Path, PathBuf};

use ca_data::DataConfig;
use ca_models::ImageGeometry;
use ca_train::config::{ModelConfig, RunConfig};

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// `configs/*.toml`, sorted.
fn presets() -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(workspace().join("configs"))
        .expect("configs/ exists")
        .map(|e| e.expect("readable entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "toml"))
        .collect();
    v.sort();
    v
}

/// Load and validate one preset completely: keys, ca-train ranges, data keys, model vs images.
fn check_text(text: &str, origin: &str) -> Result<RunConfig, String> {
    let cfg = RunConfig::from_toml(text, origin, &[]).map_err(|e| e.to_string())?;
    cfg.validate().map_err(|e| e.to_string())?;
    let common = cfg.data.common().map_err(|e| e.to_string())?;
    let geom = ImageGeometry {
        channels: common.channels as i64,
        size: common.size as i64,
    };
    match &cfg.model {
        ModelConfig::Gan(g) => g.validate(geom).map_err(|e| e.to_string())?,
        ModelConfig::Diffusion(d) => {
            d.validate().map_err(|e| e.to_string())?;
            d.validate_geometry(geom).map_err(|e| e.to_string())?;
        }
    }
    Ok(cfg)
}

fn check(path: &Path) -> Result<RunConfig, String> {
    // `load` is what `ca train --config` calls.
    let cfg = RunConfig::load(path, &[]).map_err(|e| e.to_string())?;
    let text = std::fs::read_to_string(path).map_err(|e| e.to_string())?;
    let again = check_text(&text, &path.display().to_string())?;
    assert_eq!(cfg, again, "{}", path.display());
    Ok(cfg)
}

#[test]
fn every_preset_parses_and_validates() {
    let files = presets();
    assert!(
        files.len() >= 16,
        "expected the 8 synthetic/folder presets and the 8 dataset presets, found {files:?}"
    );
    let failures: Vec<String> = files
        .iter()
        .filter_map(|p| check(p).err().map(|e| format!("{}: {e}", p.display())))
        .collect();
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn dataset_presets_point_at_what_fetch_datasets_writes() {
    let manifest: toml::Table = std::fs::read_to_string(workspace().join("datasets/manifest.toml"))
        .unwrap()
        .parse()
        .unwrap();
    let resolution = |name: &str| -> i64 {
        manifest["dataset"]
            .as_array()
            .unwrap()
            .iter()
            .find(|d| d["name"].as_str() == Some(name))
            .unwrap_or_else(|| panic!("{name} is not in datasets/manifest.toml"))["resolution"]
            .as_integer()
            .unwrap()
    };
    // (preset stem, dataset folder, data kind, channels)
    let table = [
        ("celeba", "celeba-glasses-hats", "folder", 3),
        ("cifar10-mnist", "cifar10-mnist", "folder", 3),
        ("afhq", "afhq", "folder", 3),
        ("brats", "brats-2d", "npy", 1),
    ];
    for (stem, dataset, kind, channels) in table {
        for family in ["gan", "diffusion"] {
            let path = workspace().join(format!("configs/ca-{family}-{stem}.toml"));
            let cfg = check(&path).unwrap_or_else(|e| panic!("{e}"));
            let name = path.display();
            assert_eq!(cfg.model.family(), family, "{name}");
            let (root, got_kind) = match &cfg.data {
                DataConfig::Folder(c) => (c.root.clone(), "folder"),
                DataConfig::Npy(c) => (c.root.clone(), "npy"),
                DataConfig::Synthetic(_) => (PathBuf::new(), "synthetic"),
            };
            assert_eq!(got_kind, kind, "{name}: data.kind");
            assert_eq!(
                root,
                Path::new("datasets").join(dataset),
                "{name}: data.root"
            );
            let common = cfg.data.common().unwrap();
            assert_eq!(common.size as i64, resolution(dataset), "{name}: data.size");
            assert_eq!(common.channels, channels, "{name}: data.channels");
            let text = std::fs::read_to_string(&path).unwrap();
            assert!(
                text.contains("H100")
                    && text.contains("ESTIMATE")
                    && text.contains("Measured since"),
                "{name}: needs the estimated H100 training time, its method, and the time at the measured GPU rate"
            );
        }
    }
}

/// Misspell one key of a table in `text` (the first `key =` after `[table]`).
fn misspell(text: &str, table: &str, key: &str, typo: &str) -> String {
    let start = text
        .find(&format!("\n[{table}]"))
        .unwrap_or_else(|| panic!("no [{table}]"));
    let at = start
        + text[start..]
            .find(&format!("\n{key} "))
            .unwrap_or_else(|| panic!("no {key} in [{table}]"));
    format!("{}\n{typo}{}", &text[..at], &text[at + 1 + key.len()..])
}

#[test]
fn a_typo_in_any_table_of_a_preset_is_an_error_naming_the_key() {
    for path in presets() {
        let text = std::fs::read_to_string(&path).unwrap();
        let name = path.display().to_string();
        let gan = text.contains("family = \"gan\"");
        let mut cases = vec![
            ("data", "seed", "sead"),
            ("train", "batch_size", "batch_sise"),
            ("optim", "beta1", "beta_1"),
            ("loss", "salient_zero", "salient_zeros"),
            ("model", "dz", "d_z"),
        ];
        if gan {
            cases.push(("model.generator", "base_channels", "base_chanels"));
            cases.push(("model.discriminator", "hidden", "hiden"));
        } else {
            cases.push(("model.encoder", "base_channels", "base_chanels"));
            cases.push(("model.schedule", "beta_end", "beta_stop"));
        }
        for (table, key, typo) in cases {
            let bad = misspell(&text, table, key, typo);
            let err = check_text(&bad, &name)
                .map(|_| ())
                .expect_err(&format!("{name}: [{table}] {typo} was accepted"));
            assert!(err.contains(typo), "{name}: [{table}] {typo}: {err}");
        }
    }
}
