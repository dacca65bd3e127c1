//! Batching: a prefetching training loader that mixes background and target images, a
//! sequential evaluation pass, and the stable train/eval split.
//!
//! * **Split:** an item is in the eval split when a hash of `(seed, group, relative file)` falls
//!   below `eval_fraction` (unless labels.csv fixes it, [`Dataset::subset`]): stable under any batch size or worker count, and for folder data
//!   under adding or removing other files.
//! * **Order:** batch `k` is a pure function of `(seed, k)`: each group is walked through a
//!   fresh seeded permutation per epoch, `round(B * target_fraction)` target items and the rest
//!   background per batch (background rows first). Worker `w` builds batches `k = w (mod W)`,
//!   and the consumer reads the workers round-robin, so the order is deterministic (and in fact
//!   the same for any worker count).
//! * **Prefetch:** each worker has a bounded queue of `ceil(prefetch / workers)` batches.
//! * **Cache:** decoded u8 images are kept in memory until `cache_bytes` is used up (first come,
//!   first kept; never evicted).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::thread::JoinHandle;

use crossbeam_channel::{Receiver, bounded};
use rand::SeedableRng;
use rand::seq::SliceRandom;
use rand_chacha::ChaCha8Rng;
use rayon::prelude::*;
use tch::{Device, Kind, Tensor};

use crate::dataset::{Dataset, Group};
use crate::error::{DataError, DataErrorKind, Result};

/// Which part of a dataset.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Split {
    /// Items not held out.
    Train,
    /// Items held out for evaluation (`eval_fraction`).
    Eval,
    /// Every item.
    All,
}

fn mix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Whether an item (by group and relative file name) is in the eval split.
pub fn is_eval(seed: u64, group: Group, file: &str, eval_fraction: f64) -> bool {
    let h = crate::digest::fnv1a64(file.as_bytes());
    let u = (mix(mix(seed) ^ h ^ ((group as u64) << 63)) >> 11) as f64 / (1u64 << 53) as f64;
    u < eval_fraction
}

/// Indices of the items of a split, ascending.
pub fn split_indices(ds: &dyn Dataset, split: Split) -> Vec<usize> {
    let c = ds.common();
    (0..ds.len())
        .filter(|&i| match split {
            Split::All => true,
            s => {
                let eval = ds
                    .subset(i)
                    .unwrap_or_else(|| is_eval(c.seed, ds.group(i), &ds.file(i), c.eval_fraction));
                eval == (s == Split::Eval)
            }
        })
        .collect()
}

/// A batch of images from both sets.
#[derive(Debug)]
pub struct PairBatch {
    /// u8 `[B, C, H, W]` on the CPU.
    pub images: Tensor,
    /// i64 `[B]`: 0 = background, 1 = target.
    pub group: Tensor,
    /// Dataset index of each row.
    pub indices: Vec<usize>,
}

impl PairBatch {
    /// Move the u8 images to `device`, then convert to float in [-1, 1] there.
    pub fn images_f32(&self, device: Device) -> Tensor {
        u8_to_unit(&self.images.to_device(device))
    }

    /// Batch size.
    pub fn len(&self) -> usize {
        self.indices.len()
    }

    /// True for an empty batch.
    pub fn is_empty(&self) -> bool {
        self.indices.is_empty()
    }
}

/// u8 tensor -> float in [-1, 1] (`x / 127.5 - 1`).
pub fn u8_to_unit(t: &Tensor) -> Tensor {
    t.to_kind(Kind::Float) / 127.5 - 1.0
}

/// Decoded-image cache under a byte budget.
struct Cache {
    slots: Vec<OnceLock<Box<[u8]>>>,
    used: AtomicUsize,
    budget: usize,
}

impl Cache {
    fn new(n: usize, budget: usize) -> Self {
        Self {
            slots: (0..n).map(|_| OnceLock::new()).collect(),
            used: AtomicUsize::new(0),
            budget,
        }
    }

    fn load_into(&self, ds: &dyn Dataset, i: usize, out: &mut [u8]) -> Result<()> {
        if let Some(v) = self.slots[i].get() {
            out.copy_from_slice(v);
            return Ok(());
        }
        let v = ds.load(i)?;
        out.copy_from_slice(&v);
        let n = v.len();
        if self.used.fetch_add(n, Ordering::Relaxed) + n <= self.budget {
            if self.slots[i].set(v.into_boxed_slice()).is_err() {
                self.used.fetch_sub(n, Ordering::Relaxed);
            }
        } else {
            self.used.fetch_sub(n, Ordering::Relaxed);
        }
        Ok(())
    }
}

fn hflip_chw(img: &mut [u8], size: usize) {
    for row in img.chunks_exact_mut(size) {
        row.reverse();
    }
}

fn to_batch(images: Vec<u8>, ds: &dyn Dataset, indices: Vec<usize>) -> PairBatch {
    let b = indices.len() as i64;
    let (c, s) = (ds.channels() as i64, ds.size() as i64);
    let group: Vec<i64> = indices.iter().map(|&i| ds.group(i) as i64).collect();
    PairBatch {
        images: Tensor::from_slice(&images).view([b, c, s, s]),
        group: Tensor::from_slice(&group),
        indices,
    }
}

/// Batch composition plan, a pure function of `(seed, k)`.
struct Planner {
    groups: [Vec<usize>; 2],
    per_batch: [usize; 2],
    seed: u64,
    perms: [(usize, Vec<usize>); 2],
}

impl Planner {
    fn perm(&mut self, g: usize, epoch: usize) -> &[usize] {
        if self.perms[g].0 != epoch || self.perms[g].1.is_empty() {
            let mut p = self.groups[g].clone();
            let mut rng = ChaCha8Rng::seed_from_u64(
                mix(self.seed ^ 0x5EED) ^ ((g as u64) << 62) ^ epoch as u64,
            );
            p.shuffle(&mut rng);
            self.perms[g] = (epoch, p);
        }
        &self.perms[g].1
    }

    fn batch(&mut self, k: usize) -> Vec<usize> {
        let mut out = Vec::with_capacity(self.per_batch[0] + self.per_batch[1]);
        for g in 0..2 {
            let (n, b) = (self.groups[g].len(), self.per_batch[g]);
            for p in k * b..(k + 1) * b {
                let item = self.perm(g, p / n)[p % n];
                out.push(item);
            }
        }
        out
    }
}

/// Options of the training loader (defaults from the dataset's shared config).
#[derive(Debug, Clone, PartialEq)]
pub struct LoaderOptions {
    /// Images per batch.
    pub batch_size: usize,
    /// Fraction of each batch from the target set.
    pub target_fraction: f64,
    /// Worker threads.
    pub workers: usize,
    /// Batches decoded ahead.
    pub prefetch: usize,
    /// Random horizontal flips.
    pub hflip: bool,
    /// Cache budget in bytes.
    pub cache_bytes: usize,
    /// Seed of the order and the flips.
    pub seed: u64,
    /// Which items to draw from (normally [`Split::Train`]).
    pub split: Split,
    /// Index of the first batch to yield (a resumed run starts at its step count; batch `k` is
    /// a pure function of `(seed, k)`).
    pub start_batch: usize,
}

impl LoaderOptions {
    /// Options from the dataset's shared config, for the training split.
    pub fn from_dataset(ds: &dyn Dataset, batch_size: usize) -> Self {
        let c = ds.common();
        Self {
            batch_size,
            target_fraction: c.target_fraction,
            workers: c.workers,
            prefetch: c.prefetch,
            hflip: c.hflip,
            cache_bytes: c.cache_bytes,
            seed: c.seed,
            split: Split::Train,
            start_batch: 0,
        }
    }
}

/// The infinite, prefetching training iterator (reshuffles every epoch of each set).
///
/// Yields `Err` (then stops) when an image cannot be decoded.
pub struct TrainLoader {
    rxs: Vec<Receiver<Result<PairBatch>>>,
    next: usize,
    handles: Vec<JoinHandle<()>>,
}

impl TrainLoader {
    /// Start the workers.
    pub fn new(ds: Arc<dyn Dataset>, opts: LoaderOptions) -> Result<Self> {
        if opts.batch_size == 0 || opts.workers == 0 || opts.prefetch == 0 {
            return Err(DataError::config(
                "batch_size, workers and prefetch must be >= 1",
            ));
        }
        let mut groups = [Vec::new(), Vec::new()];
        for i in split_indices(ds.as_ref(), opts.split) {
            groups[ds.group(i) as usize].push(i);
        }
        let n_t = ((opts.batch_size as f64) * opts.target_fraction).round() as usize;
        let per_batch = [opts.batch_size - n_t, n_t];
        for g in 0..2 {
            if per_batch[g] > 0 && groups[g].is_empty() {
                let name = if g == 0 { "background" } else { "target" };
                return Err(DataError::new(DataErrorKind::EmptySet {
                    what: format!("{name} images in the {:?} split", opts.split),
                    hint: "add images or lower data.eval_fraction".into(),
                }));
            }
        }
        let cache = Arc::new(Cache::new(ds.len(), opts.cache_bytes));
        let w_count = opts.workers;
        let cap = opts.prefetch.div_ceil(w_count).max(1);
        let mut rxs = Vec::new();
        let mut handles = Vec::new();
        for w in 0..w_count {
            let (tx, rx) = bounded::<Result<PairBatch>>(cap);
            rxs.push(rx);
            let ds = ds.clone();
            let cache = cache.clone();
            let mut planner = Planner {
                groups: groups.clone(),
                per_batch,
                seed: opts.seed,
                perms: [(usize::MAX, vec![]), (usize::MAX, vec![])],
            };
            let (hflip, seed, start) = (opts.hflip, opts.seed, opts.start_batch);
            let h = std::thread::Builder::new()
                .name(format!("ca-data-{w}"))
                .spawn(move || {
                    let item = ds.item_bytes();
                    let mut k = start + w;
                    loop {
                        let indices = planner.batch(k);
                        let mut buf = vec![0u8; indices.len() * item];
                        let mut res = Ok(());
                        for (r, &i) in indices.iter().enumerate() {
                            let out = &mut buf[r * item..(r + 1) * item];
                            if let Err(e) = cache.load_into(ds.as_ref(), i, out) {
                                res = Err(e);
                                break;
                            }
                            if hflip
                                && mix(seed ^ mix(k as u64) ^ (r as u64).wrapping_mul(0x9E37)) & 1
                                    == 1
                            {
                                hflip_chw(out, ds.size());
                            }
                        }
                        let failed = res.is_err();
                        let msg = res.map(|_| to_batch(buf, ds.as_ref(), indices));
                        if tx.send(msg).is_err() || failed {
                            return;
                        }
                        k += w_count;
                    }
                })
                .map_err(|e| DataError::new(DataErrorKind::Worker(e.to_string())))?;
            handles.push(h);
        }
        Ok(Self {
            rxs,
            next: 0,
            handles,
        })
    }
}

impl Iterator for TrainLoader {
    type Item = Result<PairBatch>;

    fn next(&mut self) -> Option<Self::Item> {
        let w = self.next % self.rxs.len();
        self.next += 1;
        self.rxs[w].recv().ok()
    }
}

impl Drop for TrainLoader {
    fn drop(&mut self) {
        self.rxs.clear();
        for h in self.handles.drain(..) {
            let _ = h.join();
        }
    }
}

/// A sequential pass over a split in index order (no shuffle, no flip), each batch decoded in
/// parallel on the rayon pool.
pub struct EvalBatches<'a> {
    ds: &'a dyn Dataset,
    indices: Vec<usize>,
    pos: usize,
    batch_size: usize,
}

impl<'a> EvalBatches<'a> {
    /// Batches of `batch_size` (the last may be smaller) over `split`.
    pub fn new(ds: &'a dyn Dataset, split: Split, batch_size: usize) -> Self {
        Self {
            ds,
            indices: split_indices(ds, split),
            pos: 0,
            batch_size: batch_size.max(1),
        }
    }
}

/// Decode `indices` in parallel into one u8 buffer (concatenated CHW images).
pub fn load_many(ds: &dyn Dataset, indices: &[usize]) -> Result<Vec<u8>> {
    let item = ds.item_bytes();
    let mut buf = vec![0u8; indices.len() * item];
    buf.par_chunks_mut(item.max(1))
        .zip(indices.par_iter())
        .try_for_each(|(out, &i)| {
            out.copy_from_slice(&ds.load(i)?);
            Ok(())
        })?;
    Ok(buf)
}

impl Iterator for EvalBatches<'_> {
    type Item = Result<PairBatch>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.pos >= self.indices.len() {
            return None;
        }
        let end = (self.pos + self.batch_size).min(self.indices.len());
        let idx = self.indices[self.pos..end].to_vec();
        self.pos = end;
        Some(load_many(self.ds, &idx).map(|b| to_batch(b, self.ds, idx)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{DataConfig, SyntheticConfig};

    fn synth(n: usize, hflip: bool) -> Arc<dyn Dataset> {
        let cfg = DataConfig::Synthetic(SyntheticConfig {
            n_background: n,
            n_target: n,
            size: Some(8),
            hflip,
            ..Default::default()
        });
        Arc::from(cfg.open().unwrap())
    }

    #[test]
    fn split_is_stable_and_disjoint() {
        let ds = synth(200, false);
        let (tr, ev) = (
            split_indices(ds.as_ref(), Split::Train),
            split_indices(ds.as_ref(), Split::Eval),
        );
        assert_eq!(tr.len() + ev.len(), 400);
        assert!(ev.len() > 20 && ev.len() < 70, "{}", ev.len());
        assert!(tr.iter().all(|i| !ev.contains(i)));
        assert_eq!(ev, split_indices(ds.as_ref(), Split::Eval));
    }

    #[test]
    fn batches_mix_groups_deterministically_for_any_worker_count() {
        let ds = synth(30, true);
        let mut o = LoaderOptions::from_dataset(ds.as_ref(), 8);
        o.target_fraction = 0.25;
        let run = |workers: usize| {
            let mut o = o.clone();
            o.workers = workers;
            TrainLoader::new(ds.clone(), o)
                .unwrap()
                .take(12)
                .map(|b| b.unwrap())
                .collect::<Vec<_>>()
        };
        let (a, b) = (run(1), run(3));
        for (x, y) in a.iter().zip(&b) {
            assert_eq!(x.indices, y.indices);
            assert!(x.images.equal(&y.images));
            assert_eq!(x.images.size(), vec![8, 3, 8, 8]);
            assert_eq!(x.group.sum(Kind::Int64).int64_value(&[]), 2);
        }
        // each training background item appears once per epoch (27ish items, 6 per batch)
        let eval = split_indices(ds.as_ref(), Split::Eval);
        let bg: Vec<usize> = a.iter().flat_map(|b| b.indices[..6].to_vec()).collect();
        let n_bg = (0..30).filter(|i| !eval.contains(i)).count();
        let mut first: Vec<usize> = bg[..n_bg].to_vec();
        first.sort();
        first.dedup();
        assert_eq!(first.len(), n_bg);
        assert!(bg.iter().all(|i| !eval.contains(i) && *i < 30));
        // flips happen: some row differs from the unflipped image
        let flipped = a[0].indices.iter().enumerate().any(|(r, &i)| {
            let img = Tensor::from_slice(&ds.load(i).unwrap()).view([3, 8, 8]);
            !a[0].images.get(r as i64).equal(&img)
        });
        assert!(flipped);
        let f = a[0].images_f32(Device::Cpu);
        assert!(f.min().double_value(&[]) >= -1.0 && f.max().double_value(&[]) <= 1.0);
    }

    /// No training batch holds a held-out image, background rows or target rows, and an
    /// epoch's worth of batches covers every training image of each group.
    #[test]
    fn training_batches_never_hold_held_out_images_of_either_group() {
        let ds = synth(40, false);
        let eval = split_indices(ds.as_ref(), Split::Eval);
        let train = split_indices(ds.as_ref(), Split::Train);
        assert!(eval.iter().any(|&i| i < 40) && eval.iter().any(|&i| i >= 40));
        let mut o = LoaderOptions::from_dataset(ds.as_ref(), 8);
        o.target_fraction = 0.5;
        let seen: Vec<(usize, i64)> = TrainLoader::new(ds.clone(), o)
            .unwrap()
            .take(40)
            .flat_map(|b| {
                let b = b.unwrap();
                let g: Vec<i64> = Vec::try_from(&b.group).unwrap();
                b.indices.into_iter().zip(g).collect::<Vec<_>>()
            })
            .collect();
        for &(i, g) in &seen {
            assert!(
                !eval.contains(&i),
                "held-out image {i} (group {g}) in a training batch"
            );
            assert_eq!(
                g,
                i64::from(i >= 40),
                "row {i} labelled with the wrong group"
            );
        }
        for group_target in [false, true] {
            let want: Vec<usize> = train
                .iter()
                .copied()
                .filter(|&i| (i >= 40) == group_target)
                .collect();
            assert!(
                want.iter().all(|i| seen.iter().any(|(j, _)| j == i)),
                "every training image of the group appears (target: {group_target})"
            );
        }
    }

    #[test]
    fn cache_keeps_images_within_its_budget() {
        let ds = synth(10, false);
        let item = ds.item_bytes();
        let cache = Cache::new(ds.len(), 2 * item + 1);
        let mut out = vec![0u8; item];
        for i in 0..5 {
            cache.load_into(ds.as_ref(), i, &mut out).unwrap();
            assert_eq!(out, ds.load(i).unwrap());
        }
        assert_eq!(cache.slots.iter().filter(|s| s.get().is_some()).count(), 2);
        assert!(cache.used.load(Ordering::Relaxed) <= 2 * item + 1);
        cache.load_into(ds.as_ref(), 1, &mut out).unwrap();
        assert_eq!(out, ds.load(1).unwrap());
    }

    #[test]
    fn eval_pass_is_sequential_and_covers_the_split() {
        let ds = synth(20, false);
        let all: Vec<usize> = EvalBatches::new(ds.as_ref(), Split::Eval, 3)
            .flat_map(|b| b.unwrap().indices)
            .collect();
        assert_eq!(all, split_indices(ds.as_ref(), Split::Eval));
    }

    #[test]
    fn decode_errors_reach_the_training_loop() {
        let dir = tempfile::tempdir().unwrap();
        crate::folder::tests::fixture(dir.path());
        let mut png = Vec::new();
        image::DynamicImage::ImageRgb8(image::RgbImage::from_fn(16, 16, |x, y| {
            image::Rgb([x as u8 * 9, y as u8 * 7, 3])
        }))
        .write_to(&mut std::io::Cursor::new(&mut png), image::ImageFormat::Png)
        .unwrap();
        std::fs::write(dir.path().join("target/x.png"), &png[..png.len() / 2]).unwrap();
        let ds: Arc<dyn Dataset> = Arc::new(
            crate::folder::FolderDataset::open(dir.path(), crate::folder::tests::common(8, false))
                .unwrap(),
        );
        let mut o = LoaderOptions::from_dataset(ds.as_ref(), 4);
        o.split = Split::All;
        let errs: Vec<String> = TrainLoader::new(ds, o)
            .unwrap()
            .take(4)
            .filter_map(|b| b.err())
            .map(|e| e.to_string())
            .collect();
        assert!(errs.iter().any(|e| e.contains("x.png")), "{errs:?}");
    }
}
