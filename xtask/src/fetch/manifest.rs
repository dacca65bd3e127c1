//! `datasets/manifest.toml`: what each dataset is, where its files come from, how they are
//! verified and which preprocessing recipe turns them into `background/`, `target/`, `labels.csv`.

use std::path::Path;

use anyhow::{Context, bail};
use serde::Deserialize;

/// The whole manifest: a list of datasets.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    /// One entry per dataset, in display order.
    #[serde(rename = "dataset")]
    pub datasets: Vec<Dataset>,
}

/// How a dataset's files may be obtained.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Access {
    /// Downloaded by xtask (every file has a published checksum).
    Download,
    /// Only from a file the user downloaded (`--from-archive`): login, terms, or no checksum.
    ArchiveOnly,
}

/// One dataset entry.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Dataset {
    /// Folder name under the datasets root and the CLI name.
    pub name: String,
    /// Short description of the background / target split.
    pub description: String,
    /// Where the data comes from (paper, authors).
    pub source: String,
    /// Licence or terms of use, in a few words.
    pub licence: String,
    /// Output resolution (square, pixels).
    pub resolution: u32,
    /// Download or `--from-archive` only.
    pub access: Access,
    /// Where to get the files by hand (shown on any failure and for archive-only datasets).
    pub manual: String,
    /// The files that make up the dataset.
    #[serde(default)]
    pub files: Vec<FileEntry>,
    /// The preprocessing recipe and its parameters.
    pub recipe: toml::Table,
}

/// One downloadable file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileEntry {
    /// File name on disk (also the name looked up in a `--from-archive` folder).
    pub name: String,
    /// Source URLs, tried in order.
    #[serde(default)]
    pub urls: Vec<String>,
    /// Checksum algorithm: `md5` or `sha256`.
    pub algo: String,
    /// Hex digest, or `"unpublished"` when the authors publish none.
    pub checksum: String,
    /// Size in bytes (for the progress bar and `--list`; the checksum is what is verified).
    pub size: u64,
    /// How to unpack it: `zip`, `tar.gz`, `gz` (single gzip file) or `none`.
    pub unpack: String,
}

impl FileEntry {
    /// Whether a checksum is published for this file.
    pub fn has_checksum(&self) -> bool {
        self.checksum != "unpublished"
    }
}

impl Manifest {
    /// Parse a manifest from TOML text and check it.
    pub fn parse(text: &str) -> anyhow::Result<Self> {
        let m: Manifest = toml::from_str(text).context("datasets/manifest.toml is malformed")?;
        for d in &m.datasets {
            if d.access == Access::Download && d.files.iter().any(|f| !f.has_checksum()) {
                bail!(
                    "manifest: dataset '{}' is marked download but a file has no published checksum; use access = \"archive-only\"",
                    d.name
                );
            }
            for f in &d.files {
                if !matches!(f.algo.as_str(), "md5" | "sha256") {
                    bail!("manifest: {}: unknown checksum algo '{}'", f.name, f.algo);
                }
                if !matches!(f.unpack.as_str(), "zip" | "tar.gz" | "gz" | "none") {
                    bail!("manifest: {}: unknown unpack '{}'", f.name, f.unpack);
                }
            }
        }
        Ok(m)
    }

    /// Read and parse a manifest file.
    pub fn load(path: &Path) -> anyhow::Result<Self> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read {}", path.display()))?;
        Self::parse(&text).with_context(|| format!("in {}", path.display()))
    }

    /// The dataset called `name`, or an error listing the known names.
    pub fn get(&self, name: &str) -> anyhow::Result<&Dataset> {
        self.datasets
            .iter()
            .find(|d| d.name == name)
            .with_context(|| {
                let known: Vec<&str> = self.datasets.iter().map(|d| d.name.as_str()).collect();
                format!("unknown dataset '{name}'; known: {}", known.join(", "))
            })
    }
}

impl Dataset {
    /// Total size of the files in bytes.
    pub fn total_size(&self) -> u64 {
        self.files.iter().map(|f| f.size).sum()
    }

    /// Recipe name (`kind` key of `[recipe]`).
    pub fn recipe_kind(&self) -> &str {
        self.recipe
            .get("kind")
            .and_then(|v| v.as_str())
            .unwrap_or("")
    }

    /// Integer recipe parameter `key`.
    pub fn param_u64(&self, key: &str) -> anyhow::Result<u64> {
        self.recipe
            .get(key)
            .and_then(|v| v.as_integer())
            .and_then(|v| u64::try_from(v).ok())
            .with_context(|| format!("manifest: {}: recipe needs integer '{key}'", self.name))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_real_manifest_parses_and_names_the_four_datasets() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../datasets/manifest.toml");
        let m = Manifest::load(&path).unwrap();
        let names: Vec<&str> = m.datasets.iter().map(|d| d.name.as_str()).collect();
        assert_eq!(
            names,
            ["celeba-glasses-hats", "cifar10-mnist", "afhq", "brats-2d"]
        );
        for d in &m.datasets {
            assert!(!d.recipe_kind().is_empty(), "{} has no recipe kind", d.name);
            for f in &d.files {
                if f.has_checksum() {
                    let len = if f.algo == "md5" { 32 } else { 64 };
                    assert_eq!(f.checksum.len(), len, "{}", f.name);
                    assert!(f.checksum.bytes().all(|b| b.is_ascii_hexdigit()));
                }
            }
        }
    }

    #[test]
    fn download_without_checksum_is_rejected() {
        let text = r#"
[[dataset]]
name = "x"
description = ""
source = ""
licence = ""
resolution = 8
access = "download"
manual = ""
recipe = { kind = "afhq" }
[[dataset.files]]
name = "a.zip"
algo = "sha256"
checksum = "unpublished"
size = 1
unpack = "zip"
"#;
        let err = Manifest::parse(text).unwrap_err();
        assert!(
            format!("{err:#}").contains("no published checksum"),
            "{err:#}"
        );
    }
}
