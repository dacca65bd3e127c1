//! `cargo xtask fetch-datasets [NAME...] [--root datasets] [--list] [--from-archive PATH]`:
//! the real datasets of docs/design.md section 5, described in `datasets/manifest.toml`.
//!
//! For each dataset: files are downloaded into `ROOT/.downloads/NAME/` (as `<file>.part`, resumed
//! with HTTP Range, verified against the published checksum, renamed only when verified — a file
//! without the final name is never used) or taken from `--from-archive`; they are unpacked and
//! preprocessed in `ROOT/.NAME.partial/` (ours, wiped on retry), `.complete` is written last and
//! the result is renamed to `ROOT/NAME/`. A folder with `.complete` is "already prepared" (no
//! network); any other existing `ROOT/NAME` is the user's and is never touched (error).
//!
//! Tests point every download at a local server with the hidden `--base-url` flag (or the env var
//! `CA_FETCH_BASE_URL`): each file is then fetched from `<base>/<file name>`.

pub(crate) mod download;
mod extract;
pub(crate) mod manifest;
mod recipes;

use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use clap::Args;

use manifest::{Access, Dataset, Manifest};

/// Options of `cargo xtask fetch-datasets`.
#[derive(Args, Debug, Default)]
pub struct FetchDatasets {
    /// Datasets to prepare (see --list). None: print the list.
    names: Vec<String>,
    /// Folder that receives one sub-folder per dataset (relative paths: from the workspace root).
    #[arg(long, default_value = "datasets")]
    root: PathBuf,
    /// Print the datasets with size, source, licence and status, then exit.
    #[arg(long)]
    list: bool,
    /// Use a file you downloaded yourself: the archive, or a folder holding the dataset's files
    /// under their manifest names. Needs exactly one NAME.
    #[arg(long, value_name = "PATH")]
    from_archive: Option<PathBuf>,
    /// Fetch every file from `<URL>/<file name>` instead of the manifest URLs (tests, mirrors).
    #[arg(long, hide = true)]
    base_url: Option<String>,
}

/// What `prepare` did for one dataset.
#[derive(Debug, PartialEq, Eq)]
pub enum Outcome {
    /// `.complete` was already there; nothing was read or downloaded.
    AlreadyPrepared,
    /// Freshly prepared with these counts.
    Prepared(recipes::Summary),
}

impl FetchDatasets {
    /// Run the command from the workspace root `ws`.
    pub fn run(&self, ws: &Path) -> anyhow::Result<()> {
        let manifest = Manifest::load(&ws.join("datasets").join("manifest.toml"))?;
        let root = if self.root.is_absolute() {
            self.root.clone()
        } else {
            ws.join(&self.root)
        };
        if self.list || self.names.is_empty() {
            print!("{}", list_table(&manifest, &root));
            if self.names.is_empty() && !self.list {
                eprintln!(
                    "\nfetch-datasets: name one or more datasets to prepare, e.g. `cargo xtask fetch-datasets cifar10-mnist`"
                );
            }
            return Ok(());
        }
        if self.from_archive.is_some() && self.names.len() != 1 {
            bail!("--from-archive needs exactly one dataset name");
        }
        let base = self
            .base_url
            .clone()
            .or_else(|| std::env::var("CA_FETCH_BASE_URL").ok());
        for name in &self.names {
            let d = manifest.get(name)?;
            match prepare(d, &root, self.from_archive.as_deref(), base.as_deref())? {
                Outcome::AlreadyPrepared => {
                    println!("{name}: already prepared in {}", root.join(name).display());
                }
                Outcome::Prepared(s) => println!(
                    "{name}: prepared {} background + {} target images in {}",
                    s.background,
                    s.target,
                    root.join(name).display()
                ),
            }
        }
        Ok(())
    }
}

fn human(bytes: u64) -> String {
    match bytes {
        0 => "?".into(),
        b if b >= 1 << 30 => format!("{:.1} GiB", b as f64 / (1u64 << 30) as f64),
        b if b >= 1 << 20 => format!("{:.0} MiB", b as f64 / (1u64 << 20) as f64),
        b => format!("{:.0} KiB", b as f64 / 1024.0),
    }
}

/// The `--list` table.
fn list_table(m: &Manifest, root: &Path) -> String {
    let mut rows = vec![[
        "NAME".to_string(),
        "SIZE".into(),
        "ACCESS".into(),
        "SOURCE".into(),
        "LICENCE".into(),
        "STATUS".into(),
    ]];
    for d in &m.datasets {
        let status = if root.join(&d.name).join(".complete").is_file() {
            "prepared"
        } else if !d.files.is_empty()
            && d.files
                .iter()
                .all(|f| downloads(root, d).join(&f.name).is_file())
        {
            "downloaded"
        } else {
            "not downloaded"
        };
        let access = match d.access {
            Access::Download => "download",
            Access::ArchiveOnly => "--from-archive",
        };
        rows.push([
            d.name.clone(),
            human(d.total_size()),
            access.into(),
            d.source.clone(),
            d.licence.clone(),
            status.into(),
        ]);
    }
    let mut widths = [0usize; 6];
    for r in &rows {
        for (w, c) in widths.iter_mut().zip(r) {
            *w = (*w).max(c.chars().count());
        }
    }
    let mut out = String::new();
    for r in &rows {
        let cells: Vec<String> = r
            .iter()
            .zip(widths)
            .map(|(c, w)| format!("{c:w$}"))
            .collect();
        out.push_str(cells.join("  ").trim_end());
        out.push('\n');
    }
    out.push('\n');
    for d in &m.datasets {
        out.push_str(&format!(
            "{}: {} ({}x{})\n",
            d.name, d.description, d.resolution, d.resolution
        ));
    }
    out
}

fn downloads(root: &Path, d: &Dataset) -> PathBuf {
    root.join(".downloads").join(&d.name)
}

/// Prepare dataset `d` under `root` (see the module docs).
pub fn prepare(
    d: &Dataset,
    root: &Path,
    from_archive: Option<&Path>,
    base_url: Option<&str>,
) -> anyhow::Result<Outcome> {
    let out = root.join(&d.name);
    if out.join(".complete").is_file() {
        return Ok(Outcome::AlreadyPrepared);
    }
    if out.exists() {
        bail!(
            "{} exists but was not prepared by fetch-datasets (no .complete marker); move it away or delete it yourself",
            out.display()
        );
    }
    let help = || format!("{}: {}", d.name, d.manual);
    // 1. Verified inputs: (file entry or none, path).
    let inputs: Vec<(Option<&manifest::FileEntry>, PathBuf)> = match from_archive {
        Some(path) => archive_inputs(d, path).with_context(help)?,
        None if d.access == Access::ArchiveOnly => bail!(
            "{} cannot be downloaded automatically. {}\nThen run: cargo xtask fetch-datasets {} --from-archive <PATH>",
            d.name,
            d.manual,
            d.name
        ),
        None => {
            let dir = downloads(root, d);
            std::fs::create_dir_all(&dir)
                .with_context(|| format!("cannot create {}", dir.display()))?;
            let mut v = Vec::new();
            for f in &d.files {
                let dest = dir.join(&f.name);
                if !dest.is_file() {
                    eprintln!("fetch-datasets: downloading {} ({})", f.name, human(f.size));
                    download::fetch_file(f, &dest, base_url).with_context(help)?;
                }
                v.push((Some(f), dest));
            }
            v
        }
    };
    // 2. Unpack and preprocess in our own staging folder.
    let staging = root.join(format!(".{}.partial", d.name));
    if staging.exists() {
        std::fs::remove_dir_all(&staging)
            .with_context(|| format!("cannot clear {}", staging.display()))?;
    }
    let (raw, built) = (staging.join("raw"), staging.join("out"));
    std::fs::create_dir_all(&raw)?;
    let mut raw_dir = raw.clone();
    for (entry, path) in &inputs {
        match entry {
            Some(f) => extract::unpack(path, &f.unpack, &raw)?,
            None if path.is_dir() => raw_dir = path.clone(),
            None => extract::unpack(path, "zip", &raw)?,
        }
    }
    let summary =
        recipes::run(d, &raw_dir, &built).with_context(|| format!("preprocessing {}", d.name))?;
    if summary.background == 0 || summary.target == 0 {
        bail!(
            "{}: preprocessing produced an empty set ({summary:?})",
            d.name
        );
    }
    // 3. Marker last, then move into place.
    let mut marker = format!(
        "recipe = {:?}\nresolution = {}\nbackground = {}\ntarget = {}\n",
        d.recipe_kind(),
        d.resolution,
        summary.background,
        summary.target
    );
    for (entry, path) in &inputs {
        let name = path.file_name().unwrap_or_default().to_string_lossy();
        match entry {
            Some(f) if f.has_checksum() => {
                marker.push_str(&format!("# {name}: {} {}\n", f.algo, f.checksum))
            }
            _ if path.is_file() => {
                marker.push_str(&format!(
                    "# {name}: sha256 {} (no published checksum)\n",
                    download::file_digest(path, "sha256")?
                ));
            }
            _ => marker.push_str(&format!("# {name}: user folder, not checksummed\n")),
        }
    }
    let marker_path = built.join(".complete");
    std::fs::write(&marker_path, marker)?;
    std::fs::File::open(&marker_path)?.sync_all()?;
    std::fs::rename(&built, &out)
        .with_context(|| format!("cannot move the result to {}", out.display()))?;
    std::fs::remove_dir_all(&staging).ok();
    Ok(Outcome::Prepared(summary))
}

/// The inputs of `d` from a user-supplied `path`, checked against the published checksums.
fn archive_inputs<'a>(
    d: &'a Dataset,
    path: &Path,
) -> anyhow::Result<Vec<(Option<&'a manifest::FileEntry>, PathBuf)>> {
    if !path.exists() {
        bail!("--from-archive {}: no such file or folder", path.display());
    }
    if d.files.is_empty() {
        // A free-layout archive (brats-2d): the recipe checks the layout.
        eprintln!(
            "fetch-datasets: {}: no published checksum for this source; using {} as given",
            d.name,
            path.display()
        );
        return Ok(vec![(None, path.to_path_buf())]);
    }
    let mut v = Vec::new();
    for f in &d.files {
        let p = if path.is_dir() {
            path.join(&f.name)
        } else if d.files.len() == 1 {
            path.to_path_buf()
        } else {
            bail!(
                "{} needs {} files ({}): pass a folder holding them",
                d.name,
                d.files.len(),
                d.files
                    .iter()
                    .map(|f| f.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            );
        };
        if !p.is_file() {
            bail!("--from-archive: {} is missing", p.display());
        }
        if f.has_checksum() {
            download::verify(&p, f)?;
        } else {
            eprintln!(
                "fetch-datasets: WARNING: {} has no published checksum; its layout is checked, its sha256 is recorded in .complete",
                f.name
            );
        }
        v.push((Some(f), p));
    }
    Ok(v)
}

#[cfg(test)]
pub(crate) mod tests;
