//! `cargo xtask fetch-weights [--dir DIR] [--from-file PATH]`: install the FID Inception-v3
//! weights that `ca eval` uses for `quality.fid` / `quality.kid`.
//!
//! The weights are pytorch-fid's port of the TensorFlow FID graph `inception-2015-12-05`
//! (M. Seitzer, pytorch-fid; Heusel et al., NeurIPS 2017, arXiv 1706.08500), released as
//! `pt_inception-2015-12-05-6726825d.pth`. The `6726825d` in the name is the sha256 prefix that
//! `torch.hub` checks; the full sha256 below is the one several independent projects pin for this
//! file (95,628,359 bytes, 566 tensors) and it starts with that prefix. The file is checked
//! against the full sha256.
//!
//! Steps, each safe to interrupt:
//! 1. `DIR/pt_inception-2015-12-05.safetensors` already there with a readable header: done, no
//!    network ("already installed").
//! 2. The `.pth` is downloaded into `DIR` with the `fetch-datasets` downloader (`<name>.part`,
//!    resumed with HTTP Range, sha256 verified, renamed only when verified; a mismatch deletes the
//!    `.part`), or taken from `--from-file` (verified the same way, never modified).
//! 3. The provisioned Python (`.libtorch/venv/bin/python`, made by `cargo xtask setup`) loads it
//!    with `torch.load(weights_only=True)` and writes the safetensors format by hand (the
//!    `safetensors` Python package is not installed): an 8-byte little-endian header length, a
//!    JSON header `{name: {dtype, shape, data_offsets}}` with `__metadata__` naming the source file
//!    and its sha256, then the raw little-endian tensor bytes, into `<output>.tmp`.
//! 4. The header is read back and checked here (offsets, sizes, the expected tensors), then the
//!    file is renamed to its final name and the downloaded `.pth` deleted.
//!
//! `DIR` defaults to `$CA_WEIGHTS_DIR`, else `~/.cache/ca/weights`: the rule of
//! `ca_train::metrics::inception::default_weights_dir` (xtask links no libtorch, so it is repeated
//! here). Tests serve a fixture from 127.0.0.1 through the hidden `--url` flag.

use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, bail};
use clap::Args;

use crate::fetch::download;
use crate::fetch::manifest::FileEntry;

/// Environment variable naming the weights folder (same as `ca eval` reads).
pub const WEIGHTS_DIR_ENV: &str = "CA_WEIGHTS_DIR";

/// Options of `cargo xtask fetch-weights`.
#[derive(Args, Debug, Default)]
pub struct FetchWeights {
    /// Folder that receives the weights (default: $CA_WEIGHTS_DIR, else ~/.cache/ca/weights;
    /// `ca eval` looks there).
    #[arg(long, value_name = "DIR")]
    dir: Option<PathBuf>,
    /// Use a `pt_inception-2015-12-05-6726825d.pth` you downloaded yourself (checked against the
    /// sha256, left in place).
    #[arg(long, value_name = "PATH")]
    from_file: Option<PathBuf>,
    /// Download from this URL instead of the release URL (tests, mirrors); the sha256 is still
    /// checked.
    #[arg(long, hide = true)]
    url: Option<String>,
}

/// What to download and what to produce.
#[derive(Debug, Clone)]
pub struct WeightsSpec {
    /// Name of the downloaded file (also the name looked up with `--from-file`).
    pub download_name: String,
    /// Where it is published.
    pub url: String,
    /// Its full sha256, lower-case hex.
    pub sha256: String,
    /// Its size in bytes (progress bar).
    pub size: u64,
    /// Name of the safetensors file written into the weights folder.
    pub output_name: String,
    /// Number of tensors the converted file must hold (`None`: any).
    pub tensor_count: Option<usize>,
    /// Tensors that must be present with these shapes.
    pub required: Vec<(String, Vec<u64>)>,
}

/// The FID Inception weights of pytorch-fid.
pub fn fid_inception() -> WeightsSpec {
    WeightsSpec {
        download_name: "pt_inception-2015-12-05-6726825d.pth".into(),
        url: "https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/pt_inception-2015-12-05-6726825d.pth".into(),
        sha256: "6726825d0af5f729cebd5821db510b11b1cfad8faad88a03f1befd49fb9129b2".into(),
        size: 95_628_359,
        output_name: "pt_inception-2015-12-05.safetensors".into(),
        // 94 conv + batch-norm units x 6 tensors (with `num_batches_tracked`) + fc.{weight, bias}.
        tensor_count: Some(566),
        required: vec![
            ("Conv2d_1a_3x3.conv.weight".into(), vec![32, 3, 3, 3]),
            ("Mixed_7c.branch_pool.conv.weight".into(), vec![192, 2048, 1, 1]),
            ("fc.weight".into(), vec![1008, 2048]),
        ],
    }
}

/// What [`install`] did.
#[derive(Debug, PartialEq, Eq)]
pub enum Outcome {
    /// The safetensors file was already there; nothing was read or downloaded.
    AlreadyInstalled,
    /// Downloaded or read, verified and converted.
    Installed,
}

/// One tensor of a safetensors header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TensorInfo {
    /// Data type (`F32`, `I64`, ...).
    pub dtype: String,
    /// Shape.
    pub shape: Vec<u64>,
    /// Byte range in the data section, `[start, end)`.
    pub data_offsets: [u64; 2],
}

/// A parsed safetensors header: tensors by name, and where the data section starts.
#[derive(Debug)]
pub struct Header {
    /// Tensors by name (without `__metadata__`).
    pub tensors: BTreeMap<String, TensorInfo>,
    /// `__metadata__` entries (read by the tests).
    #[cfg_attr(not(test), allow(dead_code))]
    pub metadata: BTreeMap<String, String>,
    /// File offset of the data section (`8 + header length`; read by the tests).
    #[cfg_attr(not(test), allow(dead_code))]
    pub data_start: u64,
}

fn dtype_size(dtype: &str) -> Option<u64> {
    Some(match dtype {
        "F64" | "I64" | "U64" => 8,
        "F32" | "I32" | "U32" => 4,
        "F16" | "BF16" | "I16" | "U16" => 2,
        "I8" | "U8" | "BOOL" => 1,
        _ => return None,
    })
}

/// Read and check the header of the safetensors file `path`: every tensor's byte range matches
/// its dtype and shape, the ranges tile the data section and the file has exactly that length.
pub fn read_header(path: &Path) -> anyhow::Result<Header> {
    let mut f =
        std::fs::File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
    let file_len = f.metadata()?.len();
    let mut len = [0u8; 8];
    f.read_exact(&mut len)
        .with_context(|| format!("{}: too short for a safetensors file", path.display()))?;
    let n = u64::from_le_bytes(len);
    if n > 100 << 20 || 8 + n > file_len {
        bail!("{}: bad safetensors header length {n}", path.display());
    }
    let mut text = vec![0u8; n as usize];
    f.read_exact(&mut text)?;
    let json: serde_json::Map<String, serde_json::Value> = serde_json::from_slice(&text)
        .with_context(|| {
            format!(
                "{}: the safetensors header is not a JSON object",
                path.display()
            )
        })?;
    let mut tensors = BTreeMap::new();
    let mut metadata = BTreeMap::new();
    let mut ranges = Vec::new();
    for (name, v) in json {
        if name == "__metadata__" {
            for (k, v) in v.as_object().into_iter().flatten() {
                metadata.insert(k.clone(), v.as_str().unwrap_or_default().to_string());
            }
            continue;
        }
        let bad = || format!("{}: malformed header entry '{name}'", path.display());
        let dtype = v["dtype"].as_str().with_context(bad)?.to_string();
        let u64_list = |key: &str| -> Option<Vec<u64>> {
            v[key].as_array()?.iter().map(|d| d.as_u64()).collect()
        };
        let shape = u64_list("shape").with_context(bad)?;
        let off = u64_list("data_offsets").with_context(bad)?;
        let size = dtype_size(&dtype)
            .with_context(|| format!("{}: '{name}' has unknown dtype {dtype}", path.display()))?;
        if off.len() != 2
            || off[1] < off[0]
            || off[1] - off[0] != size * shape.iter().product::<u64>()
        {
            bail!(
                "{}: '{name}': data_offsets {off:?} do not fit {dtype} {shape:?}",
                path.display()
            );
        }
        ranges.push((off[0], off[1]));
        tensors.insert(
            name,
            TensorInfo {
                dtype,
                shape,
                data_offsets: [off[0], off[1]],
            },
        );
    }
    ranges.sort_unstable();
    let mut end = 0;
    for (a, b) in ranges {
        if a != end {
            bail!(
                "{}: tensor data ranges overlap or leave gaps",
                path.display()
            );
        }
        end = b;
    }
    if 8 + n + end != file_len {
        bail!(
            "{}: {file_len} bytes, the header describes {} (truncated file?)",
            path.display(),
            8 + n + end
        );
    }
    Ok(Header {
        tensors,
        metadata,
        data_start: 8 + n,
    })
}

/// Check a converted file against the spec's expectations.
fn check_converted(path: &Path, spec: &WeightsSpec) -> anyhow::Result<Header> {
    let h = read_header(path)?;
    if let Some(n) = spec.tensor_count
        && h.tensors.len() != n
    {
        bail!(
            "{}: {} tensors, expected {n}",
            path.display(),
            h.tensors.len()
        );
    }
    for (name, shape) in &spec.required {
        match h.tensors.get(name) {
            Some(t) if &t.shape == shape => {}
            Some(t) => bail!(
                "{}: '{name}' has shape {:?}, expected {shape:?}",
                path.display(),
                t.shape
            ),
            None => bail!("{}: no tensor '{name}'", path.display()),
        }
    }
    Ok(h)
}

/// The Python program that converts a `.pth` state dict into a safetensors file by hand.
/// Arguments: source `.pth`, destination, source name and sha256 (recorded in `__metadata__`).
const CONVERT_PY: &str = r#"
import ctypes, json, struct, sys
import torch
src, dst, name, sha = sys.argv[1:5]
if sys.byteorder != "little":
    raise SystemExit("fetch-weights: a little-endian host is needed to write safetensors")
sd = torch.load(src, map_location="cpu", weights_only=True)
if not isinstance(sd, dict):
    raise SystemExit(f"fetch-weights: {src} holds a {type(sd).__name__}, not a state dict")
DT = {torch.float64: "F64", torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16",
      torch.int64: "I64", torch.int32: "I32", torch.int16: "I16", torch.int8: "I8",
      torch.uint8: "U8", torch.bool: "BOOL"}
header = {"__metadata__": {"source": name, "sha256": sha}}
tensors, off = [], 0
for key in sorted(sd):
    t = sd[key]
    if not isinstance(t, torch.Tensor) or t.dtype not in DT:
        raise SystemExit(f"fetch-weights: entry {key!r} is not a tensor of a supported dtype")
    t = t.detach().to("cpu").contiguous()
    n = t.numel() * t.element_size()
    header[key] = {"dtype": DT[t.dtype], "shape": list(t.shape), "data_offsets": [off, off + n]}
    tensors.append((t, n))
    off += n
text = json.dumps(header, separators=(",", ":")).encode()
text += b" " * (-len(text) % 8)
with open(dst, "wb") as f:
    f.write(struct.pack("<Q", len(text)))
    f.write(text)
    for t, n in tensors:
        if n:
            f.write(ctypes.string_at(t.data_ptr(), n))
print(len(tensors))
"#;

/// Convert `pth` into the safetensors file `out` with `python`.
fn convert(python: &Path, pth: &Path, out: &Path, spec: &WeightsSpec) -> anyhow::Result<()> {
    if !python.is_file() {
        bail!(
            "{} not found: run `cargo xtask setup` first (it provisions the Python with PyTorch that converts the weights)",
            python.display()
        );
    }
    let res = Command::new(python)
        .args(["-W", "ignore", "-c", CONVERT_PY])
        .arg(pth)
        .arg(out)
        .arg(&spec.download_name)
        .arg(&spec.sha256)
        .output()
        .with_context(|| format!("could not run {}", python.display()))?;
    if !res.status.success() {
        bail!(
            "converting {} to safetensors failed ({}):\n{}",
            pth.display(),
            res.status,
            String::from_utf8_lossy(&res.stderr).trim_end()
        );
    }
    Ok(())
}

/// Install `spec` into `dir` (see the module docs): from `from_file` when given, else from
/// `url` (default: the spec's URL). Conversion runs `python`.
pub fn install(
    spec: &WeightsSpec,
    dir: &Path,
    from_file: Option<&Path>,
    url: Option<&str>,
    python: &Path,
) -> anyhow::Result<Outcome> {
    let out = dir.join(&spec.output_name);
    if out.is_file() && check_converted(&out, spec).is_ok() {
        return Ok(Outcome::AlreadyInstalled);
    }
    let created = !dir.exists();
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let result = install_into(spec, dir, &out, from_file, url, python);
    if result.is_err() && created {
        // Only succeeds when empty: a resumable `.part` stays.
        let _ = std::fs::remove_dir(dir);
    }
    result
}

fn install_into(
    spec: &WeightsSpec,
    dir: &Path,
    out: &Path,
    from_file: Option<&Path>,
    url: Option<&str>,
    python: &Path,
) -> anyhow::Result<Outcome> {
    let entry = FileEntry {
        name: spec.download_name.clone(),
        urls: vec![url.unwrap_or(&spec.url).to_string()],
        algo: "sha256".into(),
        checksum: spec.sha256.clone(),
        size: spec.size,
        unpack: "none".into(),
    };
    let (pth, downloaded) = match from_file {
        Some(p) => {
            if !p.is_file() {
                bail!("--from-file: {} is not a file", p.display());
            }
            download::verify(p, &entry).with_context(|| {
                format!("--from-file: {} is not {}", p.display(), spec.download_name)
            })?;
            (p.to_path_buf(), false)
        }
        None => {
            let dest = dir.join(&spec.download_name);
            if !(dest.is_file() && download::verify(&dest, &entry).is_ok()) {
                download::fetch_file(&entry, &dest, None).with_context(|| {
                    format!(
                        "could not download {}; download it by hand from {} and run `cargo xtask fetch-weights --from-file PATH`",
                        spec.download_name, spec.url
                    )
                })?;
            }
            (dest, true)
        }
    };
    let mut tmp = out.as_os_str().to_os_string();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    let converted = convert(python, &pth, &tmp, spec).and_then(|()| check_converted(&tmp, spec));
    if let Err(e) = converted {
        let _ = std::fs::remove_file(&tmp);
        return Err(e);
    }
    std::fs::rename(&tmp, out)
        .with_context(|| format!("cannot rename {} to {}", tmp.display(), out.display()))?;
    if downloaded {
        let _ = std::fs::remove_file(&pth);
    }
    Ok(Outcome::Installed)
}

/// The default weights folder: `$CA_WEIGHTS_DIR` when set and not empty, else
/// `$HOME/.cache/ca/weights`.
pub fn default_dir() -> anyhow::Result<PathBuf> {
    if let Some(d) = std::env::var_os(WEIGHTS_DIR_ENV).filter(|d| !d.is_empty()) {
        return Ok(PathBuf::from(d));
    }
    let home = std::env::var_os("HOME")
        .filter(|h| !h.is_empty())
        .context("neither CA_WEIGHTS_DIR nor HOME is set: pass --dir")?;
    Ok(PathBuf::from(home)
        .join(".cache")
        .join("ca")
        .join("weights"))
}

impl FetchWeights {
    /// Run the command from the workspace root `ws`.
    pub fn run(&self, ws: &Path) -> anyhow::Result<()> {
        let spec = fid_inception();
        let dir = match &self.dir {
            Some(d) if d.is_absolute() => d.clone(),
            Some(d) => std::env::current_dir()?.join(d),
            None => default_dir()?,
        };
        let python = crate::setup::Layout::new(ws).python();
        let outcome = install(
            &spec,
            &dir,
            self.from_file.as_deref(),
            self.url.as_deref(),
            &python,
        )?;
        let out = dir.join(&spec.output_name);
        match outcome {
            Outcome::AlreadyInstalled => {
                println!("fetch-weights: already installed: {}", out.display())
            }
            Outcome::Installed => println!("fetch-weights: installed {}", out.display()),
        }
        if self.dir.is_some() && default_dir().ok().as_deref() != Some(dir.as_path()) {
            println!(
                "fetch-weights: `ca eval` looks in ${WEIGHTS_DIR_ENV} (default ~/.cache/ca/weights): export {WEIGHTS_DIR_ENV}={}",
                dir.display()
            );
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;
    use crate::fetch::tests::{Behaviour, serve};

    fn python() -> PathBuf {
        let p = crate::setup::Layout::new(&crate::workspace_root()).python();
        assert!(
            p.is_file(),
            "{} missing: run `cargo xtask setup`",
            p.display()
        );
        p
    }

    /// A small state dict saved with `torch.save` by the provisioned Python: a float32 `[2, 3]`
    /// weight `k / 4`, a float64 `[2]` vector and an int64 scalar counter.
    fn fixture_pth(path: &Path) -> Vec<u8> {
        let script = "import sys, torch\n\
            sd = {'layer.conv.weight': torch.arange(6, dtype=torch.float32).view(2, 3) / 4,\n\
                  'layer.bn.num_batches_tracked': torch.tensor(7),\n\
                  'head.bias': torch.tensor([1.5, -2.0], dtype=torch.float64)}\n\
            torch.save(sd, sys.argv[1])\n";
        let st = Command::new(python())
            .args(["-W", "ignore", "-c", script])
            .arg(path)
            .status()
            .unwrap();
        assert!(st.success());
        std::fs::read(path).unwrap()
    }

    fn sha256_hex(bytes: &[u8]) -> String {
        use sha2::{Digest, Sha256};
        Sha256::digest(bytes)
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect()
    }

    fn spec_for(bytes: &[u8]) -> WeightsSpec {
        WeightsSpec {
            download_name: "fixture-0000.pth".into(),
            url: "http://127.0.0.1:9/unused".into(),
            sha256: sha256_hex(bytes),
            size: bytes.len() as u64,
            output_name: "fixture.safetensors".into(),
            tensor_count: Some(3),
            required: vec![("layer.conv.weight".into(), vec![2, 3])],
        }
    }

    fn tensor_bytes(path: &Path, h: &Header, name: &str) -> Vec<u8> {
        let t = &h.tensors[name];
        let all = std::fs::read(path).unwrap();
        let (a, b) = (
            h.data_start + t.data_offsets[0],
            h.data_start + t.data_offsets[1],
        );
        all[a as usize..b as usize].to_vec()
    }

    #[test]
    fn fetch_verify_convert_then_idempotent_and_wrong_checksum_leaves_nothing() {
        let tmp = tempfile::tempdir().unwrap();
        let bytes = fixture_pth(&tmp.path().join("fixture.pth"));
        let spec = spec_for(&bytes);
        let server = serve(
            HashMap::from([(spec.download_name.clone(), bytes.clone())]),
            Behaviour::default(),
        );
        let url = format!("{}/{}", server.base, spec.download_name);
        let dir = tmp.path().join("weights");
        let py = python();

        let got = install(&spec, &dir, None, Some(&url), &py).unwrap();
        assert_eq!(got, Outcome::Installed);
        let out = dir.join("fixture.safetensors");
        let h = read_header(&out).unwrap();
        let names: Vec<&str> = h.tensors.keys().map(String::as_str).collect();
        assert_eq!(
            names,
            [
                "head.bias",
                "layer.bn.num_batches_tracked",
                "layer.conv.weight"
            ]
        );
        let w = &h.tensors["layer.conv.weight"];
        assert_eq!(
            (w.dtype.as_str(), w.shape.as_slice()),
            ("F32", &[2u64, 3][..])
        );
        let vals: Vec<f32> = tensor_bytes(&out, &h, "layer.conv.weight")
            .chunks(4)
            .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
            .collect();
        assert_eq!(vals, [0.0, 0.25, 0.5, 0.75, 1.0, 1.25]);
        let b = &h.tensors["head.bias"];
        assert_eq!((b.dtype.as_str(), b.shape.as_slice()), ("F64", &[2u64][..]));
        let vals: Vec<f64> = tensor_bytes(&out, &h, "head.bias")
            .chunks(8)
            .map(|c| f64::from_le_bytes(c.try_into().unwrap()))
            .collect();
        assert_eq!(vals, [1.5, -2.0]);
        let c = &h.tensors["layer.bn.num_batches_tracked"];
        assert_eq!((c.dtype.as_str(), c.shape.len()), ("I64", 0));
        assert_eq!(
            tensor_bytes(&out, &h, "layer.bn.num_batches_tracked"),
            7i64.to_le_bytes()
        );
        assert_eq!(h.metadata["sha256"], spec.sha256);
        // Only the product is left: no .pth, .part or .tmp.
        let left: Vec<String> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(left, ["fixture.safetensors"]);

        // Idempotent: no request, no change.
        let before = server.requests.load(std::sync::atomic::Ordering::SeqCst);
        assert_eq!(
            install(&spec, &dir, None, Some(&url), &py).unwrap(),
            Outcome::AlreadyInstalled
        );
        assert_eq!(
            server.requests.load(std::sync::atomic::Ordering::SeqCst),
            before
        );

        // A wrong checksum: an error naming both digests, and nothing left behind.
        let mut bad = spec.clone();
        bad.sha256 = "0".repeat(64);
        let dir2 = tmp.path().join("weights2");
        let e = install(&bad, &dir2, None, Some(&url), &py).unwrap_err();
        let msg = format!("{e:#}");
        assert!(
            msg.contains("checksum mismatch") && msg.contains(&spec.sha256),
            "{msg}"
        );
        assert!(!dir2.exists(), "the weights folder was left behind");

        // --from-file with the wrong checksum: refused before any conversion.
        let user = tmp.path().join("fixture.pth");
        let e = install(&bad, &tmp.path().join("weights4"), Some(&user), None, &py).unwrap_err();
        assert!(format!("{e:#}").contains("checksum mismatch"));
        assert!(!tmp.path().join("weights4").exists());
    }

    #[test]
    fn read_header_rejects_truncated_and_inconsistent_files() {
        let tmp = tempfile::tempdir().unwrap();
        let write = |name: &str, header: &str, data: &[u8]| {
            let p = tmp.path().join(name);
            let mut v = (header.len() as u64).to_le_bytes().to_vec();
            v.extend_from_slice(header.as_bytes());
            v.extend_from_slice(data);
            std::fs::write(&p, v).unwrap();
            p
        };
        let good = write(
            "good",
            r#"{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}}"#,
            &[0; 8],
        );
        assert_eq!(read_header(&good).unwrap().tensors["a"].shape, [2]);
        let short = write(
            "short",
            r#"{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}}"#,
            &[0; 4],
        );
        assert!(format!("{:#}", read_header(&short).unwrap_err()).contains("truncated"));
        let wrong = write(
            "wrong",
            r#"{"a":{"dtype":"F32","shape":[3],"data_offsets":[0,8]}}"#,
            &[0; 8],
        );
        assert!(read_header(&wrong).is_err());
        let spec = WeightsSpec {
            tensor_count: Some(2),
            ..spec_for(b"")
        };
        assert!(check_converted(&good, &spec).is_err());
    }

    #[test]
    fn fid_spec_prefix_matches_the_published_file_name() {
        let s = fid_inception();
        let prefix = s
            .download_name
            .rsplit('-')
            .next()
            .unwrap()
            .trim_end_matches(".pth");
        assert_eq!(prefix.len(), 8);
        assert!(s.sha256.starts_with(prefix));
        assert_eq!(s.sha256.len(), 64);
        assert!(s.url.ends_with(&s.download_name));
    }
}
