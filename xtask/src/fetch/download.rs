//! Downloading one file: HTTP GET to `<name>.part`, resumed with `Range: bytes=N-` when a
//! `.part` is already there (a `206 Partial Content` answer is appended; a `200` means the
//! server ignored the range, so the `.part` is restarted from byte 0), then the checksum is
//! verified and only then is the file renamed to its final name. A checksum mismatch deletes the
//! `.part` and reports expected vs got: an unverified file is never used.

use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, bail};
use indicatif::{ProgressBar, ProgressStyle};
use md5::Md5;
use sha2::{Digest, Sha256};

use super::manifest::FileEntry;

/// Hex digest of a file with `algo` (`md5` or `sha256`).
pub fn file_digest(path: &Path, algo: &str) -> anyhow::Result<String> {
    let mut f = File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
    let mut buf = vec![0u8; 1 << 20];
    macro_rules! hash_with {
        ($h:ty) => {{
            let mut h = <$h>::new();
            loop {
                let n = f
                    .read(&mut buf)
                    .with_context(|| format!("reading {}", path.display()))?;
                if n == 0 {
                    break;
                }
                h.update(&buf[..n]);
            }
            hex(&h.finalize())
        }};
    }
    Ok(match algo {
        "md5" => hash_with!(Md5),
        "sha256" => hash_with!(Sha256),
        other => bail!("unknown checksum algo '{other}'"),
    })
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Check `path` against the entry's published checksum.
pub fn verify(path: &Path, entry: &FileEntry) -> anyhow::Result<()> {
    if !entry.has_checksum() {
        bail!("{}: no published checksum", entry.name);
    }
    let got = file_digest(path, &entry.algo)?;
    if !got.eq_ignore_ascii_case(&entry.checksum) {
        bail!(
            "checksum mismatch for {}: expected {} {}, got {}",
            path.display(),
            entry.algo,
            entry.checksum,
            got
        );
    }
    Ok(())
}

/// The `.part` name used while `dest` is being downloaded.
pub fn part_path(dest: &Path) -> PathBuf {
    let mut name = dest.file_name().unwrap_or_default().to_os_string();
    name.push(".part");
    dest.with_file_name(name)
}

/// Download `entry` to `dest` from the first URL that works (or `{base_url}/{name}` when a base
/// URL override is given), resuming a `.part`, verifying, renaming. Returns once `dest` exists
/// and is verified.
pub fn fetch_file(entry: &FileEntry, dest: &Path, base_url: Option<&str>) -> anyhow::Result<()> {
    let urls: Vec<String> = match base_url {
        Some(base) => vec![format!("{}/{}", base.trim_end_matches('/'), entry.name)],
        None => entry.urls.clone(),
    };
    if urls.is_empty() {
        bail!("{}: no URL to download from", entry.name);
    }
    let part = part_path(dest);
    let mut last_err = None;
    for url in &urls {
        match download_to_part(url, &part, entry.size) {
            Ok(()) => {
                if let Err(e) = verify(&part, entry) {
                    let _ = std::fs::remove_file(&part);
                    return Err(e.context(format!(
                        "downloaded from {url}; the partial file was deleted"
                    )));
                }
                std::fs::rename(&part, dest).with_context(|| {
                    format!("cannot rename {} to {}", part.display(), dest.display())
                })?;
                return Ok(());
            }
            Err(e) => {
                eprintln!("fetch-datasets: {url}: {e:#}");
                last_err = Some(e.context(format!("GET {url}")));
            }
        }
    }
    Err(last_err.expect("at least one URL was tried"))
}

/// GET `url` into `part`, appending with a Range request when `part` already holds bytes.
fn download_to_part(url: &str, part: &Path, expected_size: u64) -> anyhow::Result<()> {
    let have = std::fs::metadata(part).map(|m| m.len()).unwrap_or(0);
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_connect(Some(Duration::from_secs(30)))
        .timeout_recv_body(Some(Duration::from_secs(120)))
        .user_agent("ca-xtask-fetch-datasets")
        .build()
        .into();
    let mut req = agent.get(url);
    if have > 0 {
        req = req.header("Range", format!("bytes={have}-"));
    }
    let resp = req.call().context("request failed")?;
    let status = resp.status().as_u16();
    let (mut file, start) = match status {
        206 if have > 0 => {
            let f = OpenOptions::new().append(true).open(part)?;
            eprintln!("fetch-datasets: resuming {} at byte {have}", part.display());
            (f, have)
        }
        // The range is the whole file: what we have is complete.
        416 if have > 0 => return Ok(()),
        200 => {
            if have > 0 {
                eprintln!(
                    "fetch-datasets: server ignored the Range request; restarting {}",
                    part.display()
                );
            }
            (
                File::create(part).with_context(|| format!("cannot create {}", part.display()))?,
                0,
            )
        }
        s => bail!("HTTP status {s}"),
    };
    let total = resp
        .headers()
        .get("content-length")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
        .map(|n| n + start)
        .unwrap_or(expected_size);
    let bar = ProgressBar::new(total);
    bar.set_style(
        ProgressStyle::with_template(
            "{msg} [{bar:40}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}",
        )
        .expect("valid template")
        .progress_chars("=> "),
    );
    bar.set_message(
        part.file_name()
            .unwrap_or_default()
            .to_string_lossy()
            .into_owned(),
    );
    bar.set_position(start);
    let mut body = resp.into_body().into_reader();
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = body
            .read(&mut buf)
            .context("connection broke; run again to resume")?;
        if n == 0 {
            break;
        }
        file.write_all(&buf[..n])
            .with_context(|| format!("cannot write {}", part.display()))?;
        bar.inc(n as u64);
    }
    file.sync_all()?;
    bar.finish_and_clear();
    let got = std::fs::metadata(part)?.len();
    if total > 0 && got < total {
        bail!("short download: {got} of {total} bytes; run again to resume");
    }
    Ok(())
}
