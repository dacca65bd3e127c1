//! Unpacking verified files into a staging folder: zip, tar.gz, single-file gzip, or a plain copy.
//! Archive members whose path would leave the destination (`..`, absolute paths, links) are
//! rejected with an error naming the member; a corrupt archive gives an error naming the file.

use std::fs::File;
use std::io::{BufReader, Read};
use std::path::{Component, Path, PathBuf};

use anyhow::{Context, bail};

/// The relative path of an archive member, or an error if it would escape the destination.
pub fn safe_member_path(name: &Path) -> anyhow::Result<PathBuf> {
    let mut out = PathBuf::new();
    for c in name.components() {
        match c {
            Component::Normal(p) => out.push(p),
            Component::CurDir => {}
            _ => bail!("unsafe path in archive: '{}'", name.display()),
        }
    }
    Ok(out)
}

/// Unpack `file` into `dest` according to `how` (`zip`, `tar.gz`, `gz`, `none`).
pub fn unpack(file: &Path, how: &str, dest: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(dest)?;
    let res = match how {
        "zip" => unzip(file, dest),
        "tar.gz" => untar_gz(file, dest),
        "gz" => gunzip(file, dest),
        "none" => {
            let target = dest.join(file.file_name().context("file has no name")?);
            std::fs::copy(file, &target).map(|_| ()).map_err(Into::into)
        }
        other => bail!("unknown unpack kind '{other}'"),
    };
    res.with_context(|| {
        format!(
            "cannot unpack {} ({how}): is the archive corrupt?",
            file.display()
        )
    })
}

fn unzip(file: &Path, dest: &Path) -> anyhow::Result<()> {
    let f = File::open(file)?;
    let mut zip = zip::ZipArchive::new(BufReader::new(f)).context("not a readable zip archive")?;
    for i in 0..zip.len() {
        let mut member = zip.by_index(i)?;
        let raw = PathBuf::from(member.name()?.into_owned());
        let rel = safe_member_path(&raw)?;
        if member.enclosed_name().is_none() {
            bail!("unsafe path in archive: '{}'", raw.display());
        }
        let out = dest.join(&rel);
        if member.is_dir() {
            std::fs::create_dir_all(&out)?;
            continue;
        }
        if let Some(parent) = out.parent() {
            std::fs::create_dir_all(parent)?;
        }
        let mut w = File::create(&out)?;
        std::io::copy(&mut member, &mut w)
            .with_context(|| format!("member '{}' is corrupt", raw.display()))?;
    }
    Ok(())
}

fn untar_gz(file: &Path, dest: &Path) -> anyhow::Result<()> {
    let gz = flate2::read::GzDecoder::new(BufReader::new(File::open(file)?));
    let mut ar = tar::Archive::new(gz);
    for entry in ar.entries().context("not a readable tar.gz archive")? {
        let mut entry = entry.context("corrupt tar entry")?;
        let raw = entry.path()?.into_owned();
        let rel = safe_member_path(&raw)?;
        let kind = entry.header().entry_type();
        let out = dest.join(&rel);
        if kind.is_dir() {
            std::fs::create_dir_all(&out)?;
        } else if kind.is_file() {
            if let Some(parent) = out.parent() {
                std::fs::create_dir_all(parent)?;
            }
            let mut w = File::create(&out)?;
            std::io::copy(&mut entry, &mut w)
                .with_context(|| format!("member '{}' is corrupt", raw.display()))?;
        } else {
            // Links and special files are never followed or created.
            bail!(
                "unsupported member type in archive: '{}' ({kind:?})",
                raw.display()
            );
        }
    }
    Ok(())
}

fn gunzip(file: &Path, dest: &Path) -> anyhow::Result<()> {
    let name = file
        .file_name()
        .context("file has no name")?
        .to_string_lossy();
    let stem = name.strip_suffix(".gz").unwrap_or(&name);
    let mut gz = flate2::read::GzDecoder::new(BufReader::new(File::open(file)?));
    let mut out = File::create(dest.join(stem))?;
    let mut buf = Vec::new();
    gz.read_to_end(&mut buf)
        .context("not a valid gzip stream")?;
    std::io::Write::write_all(&mut out, &buf)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn traversal_paths_are_rejected() {
        assert!(safe_member_path(Path::new("../evil")).is_err());
        assert!(safe_member_path(Path::new("/etc/passwd")).is_err());
        assert!(safe_member_path(Path::new("a/../../b")).is_err());
        assert_eq!(
            safe_member_path(Path::new("./a/b.png")).unwrap(),
            PathBuf::from("a/b.png")
        );
    }

    #[test]
    fn tar_with_dotdot_member_is_refused_and_writes_nothing_outside() {
        let dir = tempfile::tempdir().unwrap();
        let mut raw = Vec::new();
        {
            let mut b = tar::Builder::new(&mut raw);
            let mut h = tar::Header::new_gnu();
            h.set_size(3);
            h.set_mode(0o644);
            h.set_entry_type(tar::EntryType::Regular);
            // `set_path` refuses `..`, so write the name bytes directly.
            h.as_old_mut().name[..9].copy_from_slice(b"../escape");
            h.set_cksum();
            b.append(&h, &b"bad"[..]).unwrap();
            b.finish().unwrap();
        }
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gz.write_all(&raw).unwrap();
        let path = dir.path().join("x.tar.gz");
        std::fs::write(&path, gz.finish().unwrap()).unwrap();
        let dest = dir.path().join("out");
        let err = unpack(&path, "tar.gz", &dest).unwrap_err();
        assert!(format!("{err:#}").contains("unsafe path"), "{err:#}");
        assert!(!dir.path().join("escape").exists());
    }

    #[test]
    fn zip_with_dotdot_member_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.zip");
        let mut w = zip::ZipWriter::new(File::create(&path).unwrap());
        let opts = zip::write::SimpleFileOptions::default();
        w.start_file("../escape.txt", opts).unwrap();
        w.write_all(b"bad").unwrap();
        w.finish().unwrap();
        let err = unpack(&path, "zip", &dir.path().join("out")).unwrap_err();
        assert!(format!("{err:#}").contains("unsafe path"), "{err:#}");
        assert!(!dir.path().join("escape.txt").exists());
    }
}
