//! End-to-end tests of `fetch-datasets` against a real HTTP server on 127.0.0.1 (a thread with a
//! `TcpListener`), serving fixture archives built in code: good fetch, checksum mismatch, a cut
//! download resumed with Range, a server that ignores Range, a corrupt archive, idempotent
//! re-run, and a user folder left alone. Nothing here reaches the internet.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use super::*;

/// A dataset entry with no files and the given `[recipe]` body, for recipe tests.
pub fn dataset_with_recipe(name: &str, resolution: u32, recipe: &str) -> Dataset {
    let text = format!(
        "[[dataset]]\nname = \"{name}\"\ndescription = \"\"\nsource = \"\"\nlicence = \"\"\nresolution = {resolution}\naccess = \"archive-only\"\nmanual = \"get it by hand\"\n[dataset.recipe]\n{recipe}\n"
    );
    Manifest::parse(&text).unwrap().datasets.remove(0)
}

/// How the test server misbehaves.
#[derive(Default, Clone)]
pub(crate) struct Behaviour {
    /// Send only this many body bytes of the first full (non-Range) response, then hang up.
    cut_first_at: Option<usize>,
    /// Answer 200 with the whole file even when a Range is asked for.
    ignore_range: bool,
}

pub(crate) struct Server {
    pub(crate) base: String,
    pub(crate) requests: Arc<AtomicUsize>,
    ranges: Arc<Mutex<Vec<String>>>,
}

pub(crate) fn serve(files: HashMap<String, Vec<u8>>, behaviour: Behaviour) -> Server {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let requests = Arc::new(AtomicUsize::new(0));
    let ranges = Arc::new(Mutex::new(Vec::new()));
    let (req2, ranges2) = (requests.clone(), ranges.clone());
    std::thread::spawn(move || {
        let mut cut = behaviour.cut_first_at;
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            req2.fetch_add(1, Ordering::SeqCst);
            let mut reader = BufReader::new(stream.try_clone().unwrap());
            let mut first = String::new();
            if reader.read_line(&mut first).is_err() {
                continue;
            }
            let mut range = None;
            loop {
                let mut line = String::new();
                if reader.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
                    break;
                }
                if let Some((k, v)) = line.split_once(':')
                    && k.eq_ignore_ascii_case("range")
                {
                    range = Some(v.trim().to_string());
                }
            }
            let path = first
                .split_whitespace()
                .nth(1)
                .unwrap_or("/")
                .trim_start_matches('/')
                .to_string();
            let Some(body) = files.get(&path) else {
                let _ = stream.write_all(
                    b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
                );
                continue;
            };
            let start = range
                .as_deref()
                .filter(|_| !behaviour.ignore_range)
                .and_then(|r| r.strip_prefix("bytes="))
                .and_then(|r| r.trim_end_matches('-').parse::<usize>().ok());
            if let Some(r) = &range {
                ranges2.lock().unwrap().push(r.clone());
            }
            let head = match start {
                Some(s) => format!(
                    "HTTP/1.1 206 Partial Content\r\nContent-Length: {}\r\nContent-Range: bytes {s}-{}/{}\r\nConnection: close\r\n\r\n",
                    body.len() - s,
                    body.len() - 1,
                    body.len()
                ),
                None => format!(
                    "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                    body.len()
                ),
            };
            let mut part = &body[start.unwrap_or(0)..];
            if start.is_none()
                && let Some(n) = cut.take()
            {
                part = &body[..n];
            }
            let _ = stream.write_all(head.as_bytes());
            let _ = stream.write_all(part);
            let _ = stream.flush();
        }
    });
    Server {
        base,
        requests,
        ranges,
    }
}

fn md5_hex(bytes: &[u8]) -> String {
    use md5::{Digest, Md5};
    Md5::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// The cifar10-mnist fixture (files by name) and a download entry whose checksums match it.
fn cifar_fixture(dir: &Path) -> (HashMap<String, Vec<u8>>, Dataset) {
    recipes::cifar_mnist_fabricate(dir, 3, 6);
    let names = [
        ("cifar-10-binary.tar.gz", "tar.gz"),
        ("train-images-idx3-ubyte.gz", "gz"),
        ("train-labels-idx1-ubyte.gz", "gz"),
        ("t10k-images-idx3-ubyte.gz", "gz"),
        ("t10k-labels-idx1-ubyte.gz", "gz"),
    ];
    let mut files = HashMap::new();
    let mut text = String::from(
        "[[dataset]]\nname = \"cifar10-mnist\"\ndescription = \"\"\nsource = \"\"\nlicence = \"\"\nresolution = 32\naccess = \"download\"\nmanual = \"MANUAL-HINT\"\n[dataset.recipe]\nkind = \"cifar-mnist-overlay\"\nalpha_percent = 100\ntrain_background = 8\ntrain_target = 6\neval_background = 1\neval_target = 2\n",
    );
    for (name, unpack) in names {
        let bytes = std::fs::read(dir.join(name)).unwrap();
        text.push_str(&format!(
            "[[dataset.files]]\nname = \"{name}\"\nurls = [\"https://example.invalid/{name}\"]\nalgo = \"md5\"\nchecksum = \"{}\"\nsize = {}\nunpack = \"{unpack}\"\n",
            md5_hex(&bytes),
            bytes.len()
        ));
        files.insert(name.to_string(), bytes);
    }
    (files, Manifest::parse(&text).unwrap().datasets.remove(0))
}

#[test]
fn good_fetch_then_idempotent_rerun_touches_no_network() {
    let dir = tempfile::tempdir().unwrap();
    let (files, d) = cifar_fixture(&dir.path().join("fixture").tap_mkdir());
    let server = serve(files, Behaviour::default());
    let root = dir.path().join("datasets");
    let got = prepare(&d, &root, None, Some(&server.base)).unwrap();
    assert_eq!(
        got,
        Outcome::Prepared(recipes::Summary {
            background: 9,
            target: 8
        })
    );
    assert_eq!(server.requests.load(Ordering::SeqCst), 5);
    let out = root.join("cifar10-mnist");
    assert!(out.join(".complete").is_file());
    assert!(out.join("labels.csv").is_file());
    assert!(out.join("target/train_00000.png").is_file());
    assert!(
        !root.join(".cifar10-mnist.partial").exists(),
        "staging folder removed"
    );
    let marker = std::fs::read_to_string(out.join(".complete")).unwrap();
    assert!(marker.contains("target = 8"), "{marker}");

    assert_eq!(
        prepare(&d, &root, None, Some(&server.base)).unwrap(),
        Outcome::AlreadyPrepared
    );
    assert_eq!(
        server.requests.load(Ordering::SeqCst),
        5,
        "second run made a request"
    );
    let table = list_table(&Manifest { datasets: vec![d] }, &root);
    assert!(table.contains("prepared"), "{table}");
}

#[test]
fn checksum_mismatch_is_an_error_and_leaves_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let (mut files, d) = cifar_fixture(&dir.path().join("fixture").tap_mkdir());
    files.get_mut("train-labels-idx1-ubyte.gz").unwrap()[20] ^= 0xff;
    let server = serve(files, Behaviour::default());
    let root = dir.path().join("datasets");
    let err = format!(
        "{:#}",
        prepare(&d, &root, None, Some(&server.base)).unwrap_err()
    );
    assert!(
        err.contains("checksum mismatch") && err.contains("expected md5") && err.contains("got"),
        "{err}"
    );
    assert!(
        err.contains("MANUAL-HINT"),
        "the error says where to get the files by hand: {err}"
    );
    let dl = root.join(".downloads/cifar10-mnist");
    assert!(!dl.join("train-labels-idx1-ubyte.gz").exists());
    assert!(!dl.join("train-labels-idx1-ubyte.gz.part").exists());
    assert!(!root.join("cifar10-mnist").exists());
}

#[test]
fn cut_download_resumes_with_range() {
    let dir = tempfile::tempdir().unwrap();
    let (files, d) = cifar_fixture(&dir.path().join("fixture").tap_mkdir());
    let entry = d.files[0].clone();
    let full_len = files[&entry.name].len();
    let cut = full_len / 2;
    let server = serve(
        files,
        Behaviour {
            cut_first_at: Some(cut),
            ignore_range: false,
        },
    );
    let dest = dir.path().join(&entry.name);
    let part = download::part_path(&dest);
    // First try: the connection drops half-way; the .part keeps them, dest does not exist.
    let err = download::fetch_file(&entry, &dest, Some(&server.base)).unwrap_err();
    assert!(!dest.exists(), "an unverified file was renamed: {err:#}");
    assert_eq!(std::fs::metadata(&part).unwrap().len() as usize, cut);
    // Second try resumes from there.
    download::fetch_file(&entry, &dest, Some(&server.base)).unwrap();
    assert_eq!(
        server.ranges.lock().unwrap().as_slice(),
        [format!("bytes={cut}-")]
    );
    assert_eq!(std::fs::metadata(&dest).unwrap().len() as usize, full_len);
    assert!(!part.exists());
    download::verify(&dest, &entry).unwrap();
}

#[test]
fn server_ignoring_range_restarts_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    let (files, d) = cifar_fixture(&dir.path().join("fixture").tap_mkdir());
    let entry = d.files[0].clone();
    let server = serve(
        files,
        Behaviour {
            cut_first_at: None,
            ignore_range: true,
        },
    );
    let dest = dir.path().join(&entry.name);
    // A stale .part from an earlier try: the server answers 200, so it must be overwritten.
    std::fs::write(download::part_path(&dest), b"stale bytes").unwrap();
    download::fetch_file(&entry, &dest, Some(&server.base)).unwrap();
    assert_eq!(server.ranges.lock().unwrap().len(), 1);
    download::verify(&dest, &entry).unwrap();
}

#[test]
fn corrupt_archive_with_matching_checksum_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let garbage = b"this is not a gzip stream at all".to_vec();
    let text = format!(
        "[[dataset]]\nname = \"bad\"\ndescription = \"\"\nsource = \"\"\nlicence = \"\"\nresolution = 32\naccess = \"download\"\nmanual = \"\"\nrecipe = {{ kind = \"afhq-domestic-wild\" }}\n[[dataset.files]]\nname = \"bad.tar.gz\"\nalgo = \"md5\"\nchecksum = \"{}\"\nsize = {}\nunpack = \"tar.gz\"\n",
        md5_hex(&garbage),
        garbage.len()
    );
    let d = Manifest::parse(&text).unwrap().datasets.remove(0);
    let server = serve(
        HashMap::from([("bad.tar.gz".to_string(), garbage)]),
        Behaviour::default(),
    );
    let root = dir.path().join("datasets");
    let err = format!(
        "{:#}",
        prepare(&d, &root, None, Some(&server.base)).unwrap_err()
    );
    assert!(
        err.contains("cannot unpack") && err.contains("bad.tar.gz") && err.contains("corrupt"),
        "{err}"
    );
    assert!(!root.join("bad").exists());
}

#[test]
fn existing_user_folder_is_never_touched() {
    let dir = tempfile::tempdir().unwrap();
    let (files, d) = cifar_fixture(&dir.path().join("fixture").tap_mkdir());
    let server = serve(files, Behaviour::default());
    let root = dir.path().join("datasets");
    std::fs::create_dir_all(root.join("cifar10-mnist")).unwrap();
    std::fs::write(root.join("cifar10-mnist/mine.txt"), "keep").unwrap();
    let err = format!(
        "{:#}",
        prepare(&d, &root, None, Some(&server.base)).unwrap_err()
    );
    assert!(err.contains("not prepared by fetch-datasets"), "{err}");
    assert_eq!(
        std::fs::read_to_string(root.join("cifar10-mnist/mine.txt")).unwrap(),
        "keep"
    );
    assert_eq!(server.requests.load(Ordering::SeqCst), 0);
}

#[test]
fn archive_only_dataset_says_where_to_get_it_and_accepts_from_archive() {
    let dir = tempfile::tempdir().unwrap();
    let text = "[[dataset]]\nname = \"afhq\"\ndescription = \"\"\nsource = \"\"\nlicence = \"\"\nresolution = 16\naccess = \"archive-only\"\nmanual = \"Download afhq.zip from DROPBOX-URL\"\nrecipe = { kind = \"afhq-domestic-wild\" }\n[[dataset.files]]\nname = \"afhq.zip\"\nalgo = \"sha256\"\nchecksum = \"unpublished\"\nsize = 1\nunpack = \"zip\"\n";
    let d = Manifest::parse(text).unwrap().datasets.remove(0);
    let root = dir.path().join("datasets");
    let err = format!("{:#}", prepare(&d, &root, None, None).unwrap_err());
    assert!(
        err.contains("DROPBOX-URL") && err.contains("--from-archive"),
        "{err}"
    );
    let zip = dir.path().join("my-afhq.zip");
    recipes::afhq_fabricate(&zip);
    let got = prepare(&d, &root, Some(&zip), None).unwrap();
    assert_eq!(
        got,
        Outcome::Prepared(recipes::Summary {
            background: 8,
            target: 4
        })
    );
    let marker = std::fs::read_to_string(root.join("afhq/.complete")).unwrap();
    assert!(
        marker.contains("sha256") && marker.contains("no published checksum"),
        "{marker}"
    );
}

#[test]
fn from_archive_with_wrong_checksum_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (_, d) = cifar_fixture(&dir.path().join("fixture").tap_mkdir());
    std::fs::write(
        dir.path().join("fixture/t10k-labels-idx1-ubyte.gz"),
        b"tampered",
    )
    .unwrap();
    let root = dir.path().join("datasets");
    let err = format!(
        "{:#}",
        prepare(&d, &root, Some(&dir.path().join("fixture")), None).unwrap_err()
    );
    assert!(err.contains("checksum mismatch"), "{err}");
    assert!(!root.join("cifar10-mnist").exists());
}

trait TapMkdir {
    fn tap_mkdir(self) -> Self;
}

impl TapMkdir for std::path::PathBuf {
    fn tap_mkdir(self) -> Self {
        std::fs::create_dir_all(&self).unwrap();
        self
    }
}
