//! Checkpoints: what to write when (a pure policy), and an executor that writes atomically.
//!
//! Layout inside a run directory:
//! ```text
//! checkpoints/
//!   latest                  text file: the name of the newest complete checkpoint folder
//!   ckpt-000500/
//!     model.safetensors     the weights used for inference (EMA generator, encoder, ...),
//!                           loadable by PyTorch's `safetensors.torch.load_file`
//!     state.safetensors     everything needed to resume: all networks, optimiser moments
//!     meta.json             step, images seen, wall clock, model kind, config digest
//! ```
//! A checkpoint is written into `ckpt-N.tmp/`, every file fsynced, the folder renamed, and only
//! then is `latest` replaced (temp file + rename). The previous checkpoint stays valid until the
//! new one is complete; a run killed at any moment resumes from `latest`. The step is read from
//! `meta.json`, never parsed from a folder name.
//!
//! `meta.json` records the size and an FNV-1a 64 digest of each tensor file, so a truncated or
//! damaged file is refused by name ([`open`]) instead of being loaded; [`open`] then falls back
//! to the newest older checkpoint that is intact. A checkpoint of another model family or
//! another model config is refused before any tensor is read.

use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use tch::Tensor;

/// When to write checkpoints and how many to keep.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CheckpointPolicy {
    /// Write one every this many steps (0: only at the end).
    pub every_steps: u64,
    /// Keep this many of the newest checkpoints (at least 1).
    pub keep_last: usize,
}

/// Whether a checkpoint is due after `step` (1-based count of finished steps).
pub fn is_due(step: u64, is_last: bool, policy: &CheckpointPolicy) -> bool {
    is_last || (policy.every_steps > 0 && step.is_multiple_of(policy.every_steps))
}

/// Which of the existing checkpoint folders (oldest first) to delete so that `keep_last` remain.
pub fn to_prune(existing_oldest_first: &[String], keep_last: usize) -> Vec<String> {
    let keep = keep_last.max(1);
    let n = existing_oldest_first.len();
    existing_oldest_first[..n.saturating_sub(keep)].to_vec()
}

/// What is stored beside the tensors.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct CheckpointMeta {
    /// Finished optimisation steps.
    pub step: u64,
    /// Training images seen.
    pub images_seen: u64,
    /// Training wall clock so far, seconds (summed over resumed segments).
    pub wall_clock_s: f64,
    /// Model family (`gan`, `diffusion`, `autoencoder`).
    pub model_kind: String,
    /// Digest of the model section of the config: a checkpoint from another config is refused.
    pub model_digest: String,
    /// The run seed.
    pub seed: u64,
    /// Size and digest of each tensor file (absent in checkpoints written before it existed:
    /// those are not verified).
    #[serde(default)]
    pub files: BTreeMap<String, FileDigest>,
    /// The learning-rate multiplier left by NaN rollbacks (1 without any).
    #[serde(default = "one")]
    pub lr_scale: f64,
    /// NaN rollbacks done so far.
    #[serde(default)]
    pub rollbacks: u32,
}

fn one() -> f64 {
    1.0
}

/// Size and content digest of one checkpoint file.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct FileDigest {
    /// Length in bytes.
    pub bytes: u64,
    /// FNV-1a 64 of the contents, 16 hex digits.
    pub fnv1a64: String,
}

impl FileDigest {
    /// Size and digest of the file at `path` (read in 1 MiB chunks).
    pub fn of_file(path: &Path) -> Result<Self, CheckpointError> {
        use std::io::Read;
        let mut f = File::open(path).map_err(io(path))?;
        let mut h = ca_data::digest::Fnv1a64::default();
        let mut bytes = 0u64;
        let mut buf = vec![0u8; 1 << 20];
        loop {
            let n = f.read(&mut buf).map_err(io(path))?;
            if n == 0 {
                break;
            }
            bytes += n as u64;
            h.update(&buf[..n]);
        }
        Ok(FileDigest {
            bytes,
            fnv1a64: format!("{:016x}", h.finish()),
        })
    }
}

/// Errors of reading or writing checkpoints; each names the file.
#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    /// Filesystem error.
    #[error("checkpoint I/O error at '{path}': {source}")]
    Io {
        /// The file or folder.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// libtorch could not read or write a tensor file.
    #[error("cannot read or write tensors in '{path}': {source}")]
    Tensor {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: tch::TchError,
    },
    /// meta.json is not what we wrote.
    #[error("'{path}' is not a valid checkpoint meta.json: {msg}")]
    Meta {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        msg: String,
    },
    /// No checkpoint exists where one was expected.
    #[error("no checkpoint in '{0}': the run has not written one yet (nothing to resume or load)")]
    Missing(PathBuf),
    /// A tensor the model needs is not in the file.
    #[error(
        "checkpoint '{file}' has no tensor '{name}': it was written by another model or config"
    )]
    MissingTensor {
        /// Tensor name.
        name: String,
        /// The file.
        file: PathBuf,
    },
    /// A tensor has another shape than the model's variable.
    #[error(
        "checkpoint '{file}': tensor '{name}' has shape {found:?}, the model expects {expected:?} (another config?)"
    )]
    Shape {
        /// Tensor name.
        name: String,
        /// The file.
        file: PathBuf,
        /// Shape in the file.
        found: Vec<i64>,
        /// Shape of the model's variable.
        expected: Vec<i64>,
    },
    /// A tensor file is truncated, damaged or not a safetensors file.
    #[error(
        "checkpoint file '{path}' is damaged: {msg}. Delete this checkpoint folder to resume from an older one, or start a new run"
    )]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        msg: String,
    },
    /// A checkpoint asked for by name is not in the run.
    #[error(
        "run '{run}' has no checkpoint '{name}'; it has: {available} (pass a folder name from checkpoints/ or its step)"
    )]
    NotFound {
        /// The run directory.
        run: PathBuf,
        /// The name asked for.
        name: String,
        /// The complete checkpoints of the run, comma-separated (or "none").
        available: String,
    },
    /// The checkpoint belongs to another model kind or config.
    #[error(
        "checkpoint '{path}' was written by {found}, but this run is {expected}; use the run directory it belongs to"
    )]
    Mismatch {
        /// The checkpoint folder.
        path: PathBuf,
        /// What the checkpoint says.
        found: String,
        /// What this run is.
        expected: String,
    },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> CheckpointError + '_ {
    move |source| CheckpointError::Io {
        path: path.to_path_buf(),
        source,
    }
}

fn fsync_file(path: &Path) -> Result<(), CheckpointError> {
    File::open(path)
        .and_then(|f| f.sync_all())
        .map_err(io(path))
}

fn fsync_dir(path: &Path) -> Result<(), CheckpointError> {
    File::open(path)
        .and_then(|f| f.sync_all())
        .map_err(io(path))
}

/// Write `contents` to `path` atomically: `path.tmp`, fsync, rename, fsync the folder.
pub fn write_atomic(path: &Path, contents: &[u8]) -> Result<(), CheckpointError> {
    let tmp = path.with_extension("tmp");
    {
        let mut f = File::create(&tmp).map_err(io(&tmp))?;
        f.write_all(contents).map_err(io(&tmp))?;
        f.sync_all().map_err(io(&tmp))?;
    }
    std::fs::rename(&tmp, path).map_err(io(path))?;
    if let Some(parent) = path.parent() {
        fsync_dir(parent)?;
    }
    Ok(())
}

/// The checkpoints folder of a run.
pub fn dir_of(run_dir: &Path) -> PathBuf {
    run_dir.join("checkpoints")
}

/// Write a checkpoint atomically and prune old ones; returns its folder.
pub fn write(
    run_dir: &Path,
    meta: &CheckpointMeta,
    model: &[(String, Tensor)],
    state: &[(String, Tensor)],
    keep_last: usize,
) -> Result<PathBuf, CheckpointError> {
    let root = dir_of(run_dir);
    std::fs::create_dir_all(&root).map_err(io(&root))?;
    let name = folder_name(meta.step);
    let final_dir = root.join(&name);
    let tmp_dir = root.join(format!("{name}.tmp"));
    if tmp_dir.exists() {
        std::fs::remove_dir_all(&tmp_dir).map_err(io(&tmp_dir))?;
    }
    std::fs::create_dir_all(&tmp_dir).map_err(io(&tmp_dir))?;
    let mut digests = BTreeMap::new();
    for (file, tensors) in [("model.safetensors", model), ("state.safetensors", state)] {
        let path = tmp_dir.join(file);
        let cpu: Vec<(&str, Tensor)> = tensors
            .iter()
            .map(|(n, t)| (n.as_str(), t.to_device(tch::Device::Cpu).contiguous()))
            .collect();
        Tensor::write_safetensors(&cpu, &path).map_err(|source| CheckpointError::Tensor {
            path: path.clone(),
            source,
        })?;
        fsync_file(&path)?;
        digests.insert(file.to_string(), FileDigest::of_file(&path)?);
    }
    let meta_path = tmp_dir.join("meta.json");
    let meta = CheckpointMeta {
        files: digests,
        ..meta.clone()
    };
    let json = serde_json::to_vec_pretty(&meta).expect("meta serialises");
    std::fs::write(&meta_path, json).map_err(io(&meta_path))?;
    fsync_file(&meta_path)?;
    fsync_dir(&tmp_dir)?;
    if final_dir.exists() {
        // Same step written again (e.g. final checkpoint right after a periodic one).
        std::fs::remove_dir_all(&final_dir).map_err(io(&final_dir))?;
    }
    std::fs::rename(&tmp_dir, &final_dir).map_err(io(&final_dir))?;
    fsync_dir(&root)?;
    write_atomic(&root.join("latest"), name.as_bytes())?;

    let mut existing = list(&root)?;
    existing.retain(|n| n != &name);
    existing.push(name);
    for old in to_prune(&existing, keep_last) {
        let p = root.join(old);
        std::fs::remove_dir_all(&p).map_err(io(&p))?;
    }
    Ok(final_dir)
}

/// The folder name of the checkpoint at `step` in `checkpoints/`: `ckpt-0004000`.
pub fn folder_name(step: u64) -> String {
    format!("ckpt-{step:07}")
}

/// Complete checkpoint folders, oldest (lowest step) first.
fn list(root: &Path) -> Result<Vec<String>, CheckpointError> {
    let mut names = Vec::new();
    for entry in std::fs::read_dir(root).map_err(io(root))? {
        let entry = entry.map_err(io(root))?;
        let name = entry.file_name().to_string_lossy().to_string();
        if name.starts_with("ckpt-") && !name.ends_with(".tmp") && entry.path().is_dir() {
            names.push(name);
        }
    }
    names.sort();
    Ok(names)
}

/// The newest complete checkpoint of a run (following `latest`).
pub fn latest(run_dir: &Path) -> Result<PathBuf, CheckpointError> {
    let root = dir_of(run_dir);
    let pointer = root.join("latest");
    let name = std::fs::read_to_string(&pointer)
        .map_err(|_| CheckpointError::Missing(run_dir.to_path_buf()))?;
    let name = name.trim();
    if !name.starts_with("ckpt-") || name.contains(['/', '\\']) || name.ends_with(".tmp") {
        return Err(CheckpointError::Meta {
            path: pointer,
            msg: format!("names `{name}`, not a checkpoint folder like ckpt-0001000"),
        });
    }
    let dir = root.join(name);
    if !dir.join("meta.json").exists() {
        return Err(CheckpointError::Missing(run_dir.to_path_buf()));
    }
    Ok(dir)
}

/// Check a checkpoint's tensor files against the sizes and digests in its meta.json.
pub fn verify(ckpt_dir: &Path, meta: &CheckpointMeta) -> Result<(), CheckpointError> {
    for (file, want) in &meta.files {
        if file.contains(['/', '\\']) || !file.ends_with(".safetensors") {
            return Err(CheckpointError::Meta {
                path: ckpt_dir.join("meta.json"),
                msg: format!("lists `{file}`, not a tensor file of this folder"),
            });
        }
        let path = ckpt_dir.join(file);
        if !path.is_file() {
            return Err(CheckpointError::Corrupt {
                path,
                msg: "the file is missing".into(),
            });
        }
        let got = FileDigest::of_file(&path)?;
        if got.bytes != want.bytes {
            return Err(CheckpointError::Corrupt {
                path,
                msg: format!(
                    "{} bytes, meta.json records {} (truncated or overwritten)",
                    got.bytes, want.bytes
                ),
            });
        }
        if got.fnv1a64 != want.fnv1a64 {
            return Err(CheckpointError::Corrupt {
                path,
                msg: format!(
                    "content digest {} differs from the {} recorded in meta.json",
                    got.fnv1a64, want.fnv1a64
                ),
            });
        }
    }
    Ok(())
}

/// Open the checkpoint a run resumes from or serves: the newest one that belongs to this model
/// (`kind`, config `digest`) and whose files are intact. A checkpoint of another model is an
/// error at once ([`CheckpointError::Mismatch`]); a damaged newest checkpoint falls back to the
/// newest older intact one with a warning in the log, and is an error only when none is intact.
pub fn open(
    run_dir: &Path,
    kind: &str,
    digest: &str,
) -> Result<(PathBuf, CheckpointMeta), CheckpointError> {
    // `latest` first; then every complete folder, newest first (also when `latest` is gone,
    // e.g. after the user deleted a damaged checkpoint).
    let mut first_err = None;
    let mut candidates = Vec::new();
    match latest(run_dir) {
        Ok(dir) => candidates.push(dir),
        Err(CheckpointError::Missing(_)) => {}
        Err(e) => first_err = Some(e),
    }
    if let Ok(names) = list(&dir_of(run_dir)) {
        for n in names.into_iter().rev() {
            let d = dir_of(run_dir).join(n);
            if !candidates.contains(&d) && d.join("meta.json").is_file() {
                candidates.push(d);
            }
        }
    }
    if candidates.is_empty() {
        return Err(first_err.unwrap_or_else(|| CheckpointError::Missing(run_dir.to_path_buf())));
    }
    for dir in candidates {
        match check(&dir, kind, digest) {
            Ok(meta) => {
                if let Some(e) = &first_err {
                    tracing::warn!(
                        "{e}; using the older checkpoint '{}' (step {})",
                        dir.display(),
                        meta.step
                    );
                }
                return Ok((dir, meta));
            }
            Err(e @ CheckpointError::Mismatch { .. }) => return Err(e),
            Err(e) => {
                first_err.get_or_insert(e);
            }
        }
    }
    Err(first_err.expect("a candidate failed"))
}

/// The meta of the checkpoint in `dir` if it belongs to this model (`kind`, config `digest`)
/// and its files are intact.
fn check(dir: &Path, kind: &str, digest: &str) -> Result<CheckpointMeta, CheckpointError> {
    let meta = read_meta(dir)?;
    if meta.model_kind != kind || meta.model_digest != digest {
        return Err(CheckpointError::Mismatch {
            path: dir.to_path_buf(),
            found: format!(
                "a {} model (config digest {})",
                meta.model_kind, meta.model_digest
            ),
            expected: format!("a {kind} model (config digest {digest})"),
        });
    }
    verify(dir, &meta)?;
    Ok(meta)
}

/// Open one checkpoint of a run by `name`: a folder name in `checkpoints/` (`ckpt-0004000`) or
/// a step (`4000`). It must belong to this model and be intact; unlike [`open`] there is no
/// fallback to another checkpoint, and an unknown name is an error that lists the run's
/// checkpoints ([`CheckpointError::NotFound`]).
pub fn open_named(
    run_dir: &Path,
    name: &str,
    kind: &str,
    digest: &str,
) -> Result<(PathBuf, CheckpointMeta), CheckpointError> {
    let root = dir_of(run_dir);
    let names = if root.is_dir() {
        list(&root)?
    } else {
        Vec::new()
    };
    let folder = match name.parse::<u64>() {
        Ok(step) => folder_name(step),
        Err(_) => name.to_string(),
    };
    if !names.contains(&folder) {
        return Err(CheckpointError::NotFound {
            run: run_dir.to_path_buf(),
            name: name.to_string(),
            available: if names.is_empty() {
                "none".to_string()
            } else {
                names.join(", ")
            },
        });
    }
    let dir = root.join(folder);
    let meta = check(&dir, kind, digest)?;
    Ok((dir, meta))
}

/// Read a checkpoint's meta.json.
pub fn read_meta(ckpt_dir: &Path) -> Result<CheckpointMeta, CheckpointError> {
    let path = ckpt_dir.join("meta.json");
    let text = std::fs::read_to_string(&path).map_err(io(&path))?;
    serde_json::from_str(&text).map_err(|e| CheckpointError::Meta {
        path,
        msg: e.to_string(),
    })
}

/// Read one of the tensor files (`model` or `state`) as a name -> tensor map.
pub fn read_tensors(
    ckpt_dir: &Path,
    which: &str,
) -> Result<HashMap<String, Tensor>, CheckpointError> {
    let path = ckpt_dir.join(format!("{which}.safetensors"));
    if !path.exists() {
        return Err(CheckpointError::Io {
            path,
            source: std::io::Error::new(std::io::ErrorKind::NotFound, "file missing"),
        });
    }
    let v = Tensor::read_safetensors(&path).map_err(|source| CheckpointError::Corrupt {
        path: path.clone(),
        msg: format!("not a readable safetensors file ({source})"),
    })?;
    Ok(v.into_iter().collect())
}

/// Copy tensors named `prefix + variable name` from `tensors` into the variables of `vs`.
/// Every variable must be present with the same shape.
pub fn load_var_store(
    vs: &tch::nn::VarStore,
    tensors: &HashMap<String, Tensor>,
    prefix: &str,
    file: &Path,
) -> Result<(), CheckpointError> {
    let _guard = tch::no_grad_guard();
    for (name, mut var) in vs.variables() {
        let key = format!("{prefix}{name}");
        let src = tensors
            .get(&key)
            .ok_or_else(|| CheckpointError::MissingTensor {
                name: key.clone(),
                file: file.to_path_buf(),
            })?;
        if src.size() != var.size() {
            return Err(CheckpointError::Shape {
                name: key,
                file: file.to_path_buf(),
                found: src.size(),
                expected: var.size(),
            });
        }
        var.f_copy_(src).map_err(|e| CheckpointError::Corrupt {
            path: file.to_path_buf(),
            msg: format!("tensor '{key}' cannot be loaded: {e}"),
        })?;
    }
    Ok(())
}

/// The variables of `vs` as (prefix + name, tensor) pairs, sorted by name.
pub fn named(vs: &tch::nn::VarStore, prefix: &str) -> Vec<(String, Tensor)> {
    let mut v: Vec<(String, Tensor)> = vs
        .variables()
        .into_iter()
        .map(|(n, t)| (format!("{prefix}{n}"), t))
        .collect();
    v.sort_by(|a, b| a.0.cmp(&b.0));
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn policy_is_due_every_n_and_at_end() {
        let p = CheckpointPolicy {
            every_steps: 100,
            keep_last: 2,
        };
        assert!(!is_due(99, false, &p));
        assert!(is_due(100, false, &p));
        assert!(is_due(150, true, &p));
        let never = CheckpointPolicy {
            every_steps: 0,
            keep_last: 1,
        };
        assert!(!is_due(100, false, &never));
    }

    #[test]
    fn prune_keeps_newest() {
        let names: Vec<String> = ["a", "b", "c"].iter().map(|s| s.to_string()).collect();
        assert_eq!(to_prune(&names, 2), vec!["a".to_string()]);
        assert!(to_prune(&names, 5).is_empty());
        assert_eq!(to_prune(&names, 0).len(), 2, "keep_last 0 still keeps one");
    }

    #[test]
    fn write_read_round_trip_and_prune() {
        let dir = tempfile::tempdir().unwrap();
        let t = Tensor::from_slice(&[1.0f32, 2.0, 3.0]);
        let mut meta = CheckpointMeta {
            step: 10,
            images_seen: 640,
            wall_clock_s: 1.5,
            model_kind: "gan".into(),
            model_digest: "abc".into(),
            seed: 3,
            files: BTreeMap::new(),
            lr_scale: 1.0,
            rollbacks: 0,
        };
        for step in [10, 20, 30] {
            meta.step = step;
            write(
                dir.path(),
                &meta,
                &[("g.w".into(), t.shallow_clone())],
                &[],
                2,
            )
            .unwrap();
        }
        let last = latest(dir.path()).unwrap();
        assert!(last.ends_with("ckpt-0000030"));
        assert_eq!(read_meta(&last).unwrap().step, 30);
        let m = read_tensors(&last, "model").unwrap();
        assert!(m["g.w"].equal(&t));
        let mut left = list(&dir_of(dir.path())).unwrap();
        left.sort();
        assert_eq!(
            left,
            vec!["ckpt-0000020".to_string(), "ckpt-0000030".to_string()]
        );
    }

    fn meta(step: u64, kind: &str, digest: &str) -> CheckpointMeta {
        CheckpointMeta {
            step,
            images_seen: step * 8,
            wall_clock_s: 0.0,
            model_kind: kind.into(),
            model_digest: digest.into(),
            seed: 0,
            files: BTreeMap::new(),
            lr_scale: 1.0,
            rollbacks: 0,
        }
    }

    fn write_two(dir: &Path) -> (PathBuf, PathBuf) {
        let t = Tensor::from_slice(&[1.0f32, 2.0, 3.0, 4.0]);
        let mut out = Vec::new();
        for step in [5, 10] {
            let w = &t * step as f64;
            out.push(
                write(
                    dir,
                    &meta(step, "gan", "d1"),
                    &[("g.w".into(), w.shallow_clone())],
                    &[("g.w".into(), w)],
                    2,
                )
                .unwrap(),
            );
        }
        (out[0].clone(), out[1].clone())
    }

    #[test]
    fn open_refuses_another_model_kind_or_config() {
        let dir = tempfile::tempdir().unwrap();
        write_two(dir.path());
        let (ck, m) = open(dir.path(), "gan", "d1").unwrap();
        assert!(ck.ends_with("ckpt-0000010") && m.step == 10);
        assert_eq!(m.files["model.safetensors"].bytes, {
            std::fs::metadata(ck.join("model.safetensors"))
                .unwrap()
                .len()
        });
        let e = open(dir.path(), "diffusion", "d1").unwrap_err().to_string();
        assert!(
            e.contains("ckpt-0000010")
                && e.contains("written by a gan model")
                && e.contains("this run is a diffusion model"),
            "{e}"
        );
        let e = open(dir.path(), "gan", "other").unwrap_err().to_string();
        assert!(
            e.contains("config digest d1") && e.contains("config digest other"),
            "{e}"
        );
    }

    #[test]
    fn open_named_finds_a_checkpoint_by_folder_or_step_and_never_falls_back() {
        let dir = tempfile::tempdir().unwrap();
        let (old, new) = write_two(dir.path());
        let (ck, m) = open_named(dir.path(), "ckpt-0000005", "gan", "d1").unwrap();
        assert_eq!((ck, m.step), (old.clone(), 5));
        let (ck, m) = open_named(dir.path(), "10", "gan", "d1").unwrap();
        assert_eq!((ck, m.step), (new.clone(), 10));
        for bad in ["7", "ckpt-7", "../ckpt-0000005", "latest", ""] {
            let e = open_named(dir.path(), bad, "gan", "d1")
                .unwrap_err()
                .to_string();
            assert!(
                e.contains(&format!("no checkpoint '{bad}'"))
                    && e.contains("it has: ckpt-0000005, ckpt-0000010"),
                "{e}"
            );
        }
        let e = open_named(dir.path(), "5", "diffusion", "d1")
            .unwrap_err()
            .to_string();
        assert!(e.contains("written by a gan model"), "{e}");
        // A damaged named checkpoint is an error, not a silent switch to another one.
        let f = old.join("model.safetensors");
        let bytes = std::fs::read(&f).unwrap();
        std::fs::write(&f, &bytes[..bytes.len() - 3]).unwrap();
        let e = open_named(dir.path(), "5", "gan", "d1")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("ckpt-0000005") && e.contains("is damaged"),
            "{e}"
        );
        let empty = tempfile::tempdir().unwrap();
        let e = open_named(empty.path(), "5", "gan", "d1")
            .unwrap_err()
            .to_string();
        assert!(e.contains("it has: none"), "{e}");
    }

    #[test]
    fn damaged_files_are_named_and_an_older_checkpoint_is_used() {
        let dir = tempfile::tempdir().unwrap();
        let (old, new) = write_two(dir.path());
        // Truncated: the size differs from meta.json.
        let f = new.join("state.safetensors");
        let bytes = std::fs::read(&f).unwrap();
        std::fs::write(&f, &bytes[..bytes.len() - 7]).unwrap();
        let e = verify(&new, &read_meta(&new).unwrap())
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("state.safetensors") && e.contains("truncated") && e.contains("is damaged"),
            "{e}"
        );
        let (ck, m) = open(dir.path(), "gan", "d1").unwrap();
        assert_eq!(
            (ck, m.step),
            (old.clone(), 5),
            "falls back to the intact one"
        );
        // One flipped byte (same size): the digest differs.
        let f = old.join("model.safetensors");
        let mut bytes = std::fs::read(&f).unwrap();
        let last = bytes.len() - 1;
        bytes[last] ^= 0x40;
        std::fs::write(&f, &bytes).unwrap();
        // Neither is intact: the newest one's problem is reported.
        let e = open(dir.path(), "gan", "d1").unwrap_err().to_string();
        assert!(e.contains("truncated") && e.contains("ckpt-0000010"), "{e}");
        // After the user deletes the damaged newest folder, the older one is found even
        // though `latest` names the deleted one.
        std::fs::remove_dir_all(&new).unwrap();
        let e = open(dir.path(), "gan", "d1").unwrap_err().to_string();
        assert!(
            e.contains("ckpt-0000005") && e.contains("content digest"),
            "{e}"
        );
    }

    #[test]
    fn garbage_tensor_files_and_meta_are_clear_errors() {
        let dir = tempfile::tempdir().unwrap();
        let (_, new) = write_two(dir.path());
        // A meta.json without digests (older checkpoints) is not verified; the tensor reader
        // still refuses a file that is not safetensors.
        let mut m = read_meta(&new).unwrap();
        m.files.clear();
        std::fs::write(new.join("meta.json"), serde_json::to_vec(&m).unwrap()).unwrap();
        std::fs::write(
            new.join("model.safetensors"),
            b"\x10\0\0\0\0\0\0\0{not json}",
        )
        .unwrap();
        let e = read_tensors(&new, "model").unwrap_err().to_string();
        assert!(
            e.contains("model.safetensors") && e.contains("not a readable safetensors"),
            "{e}"
        );
        std::fs::write(new.join("meta.json"), b"{\"step\": \"ten\"}").unwrap();
        let e = read_meta(&new).unwrap_err().to_string();
        assert!(
            e.contains("meta.json") && e.contains("not a valid checkpoint"),
            "{e}"
        );
        std::fs::write(dir_of(dir.path()).join("latest"), "../../etc").unwrap();
        let e = latest(dir.path()).unwrap_err().to_string();
        assert!(e.contains("not a checkpoint folder"), "{e}");
    }

    #[test]
    fn missing_checkpoint_is_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        let e = latest(dir.path()).unwrap_err().to_string();
        assert!(e.contains("no checkpoint"), "{e}");
    }

    #[test]
    fn load_var_store_reports_shape_mismatch() {
        let vs = tch::nn::VarStore::new(tch::Device::Cpu);
        let _ = vs.root().zeros("w", &[2]);
        let mut m = HashMap::new();
        m.insert(
            "w".to_string(),
            Tensor::zeros([3], (tch::Kind::Float, tch::Device::Cpu)),
        );
        let e = load_var_store(&vs, &m, "", Path::new("x"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("[3]") && e.contains("[2]"), "{e}");
        let e = load_var_store(&vs, &HashMap::new(), "g.", Path::new("x"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("g.w"), "{e}");
    }
}
