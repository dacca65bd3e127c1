//! The evaluation accessor: a whole split as tensors, with labels and (when the dataset has
//! it) ground truth, for the metrics of docs/design.md section 6.

use rayon::prelude::*;
use tch::Tensor;

use crate::dataset::{Dataset, LabelColumn};
use crate::error::Result;
use crate::loader::{Split, load_many, split_indices};

/// A split loaded in memory.
#[derive(Debug)]
pub struct EvalSet {
    /// u8 `[N, C, H, W]` on the CPU.
    pub images: Tensor,
    /// i64 `[N]`: 0 = background, 1 = target.
    pub group: Tensor,
    /// Dataset index of each row.
    pub indices: Vec<usize>,
    /// Path of each row relative to its split folder (as in `labels.csv`).
    pub files: Vec<String>,
    /// Label columns over the rows (NaN where missing).
    pub labels: Vec<LabelColumn>,
    /// u8 `[N, C, H, W]`: the exact background counterpart of target rows, the image itself for
    /// background rows. None without ground truth.
    pub counterpart: Option<Tensor>,
    /// f32 `[N, 1, H, W]`: the salient (overlay) mask in [0, 1]; 0 for background rows. None
    /// without ground truth.
    pub mask: Option<Tensor>,
}

impl EvalSet {
    /// Number of rows.
    pub fn len(&self) -> usize {
        self.files.len()
    }

    /// True when the split is empty.
    pub fn is_empty(&self) -> bool {
        self.files.is_empty()
    }
}

/// Load every item of `split` (decoded in parallel).
pub fn load_eval_set(dataset: &dyn Dataset, split: Split) -> Result<EvalSet> {
    let idx = split_indices(dataset, split);
    let n = idx.len() as i64;
    let (c, s) = (dataset.channels() as i64, dataset.size() as i64);
    let images = Tensor::from_slice(&load_many(dataset, &idx)?).view([n, c, s, s]);
    let group: Vec<i64> = idx.iter().map(|&i| dataset.group(i) as i64).collect();
    let files = idx.iter().map(|&i| dataset.file(i)).collect();
    let labels = dataset
        .labels()
        .iter()
        .map(|col| col.select(&idx))
        .collect();
    let (mut counterpart, mut mask) = (None, None);
    if dataset.has_ground_truth() {
        let cps: Vec<Option<Vec<u8>>> = idx
            .par_iter()
            .map(|&i| dataset.counterpart(i))
            .collect::<Result<_>>()?;
        if let Some(cps) = cps.into_iter().collect::<Option<Vec<_>>>() {
            counterpart = Some(Tensor::from_slice(&cps.concat()).view([n, c, s, s]));
        }
        let ms: Vec<Option<Vec<f32>>> = idx
            .par_iter()
            .map(|&i| dataset.mask(i))
            .collect::<Result<_>>()?;
        if let Some(ms) = ms.into_iter().collect::<Option<Vec<_>>>() {
            mask = Some(Tensor::from_slice(&ms.concat()).view([n, 1, s, s]));
        }
    }
    Ok(EvalSet {
        images,
        group: Tensor::from_slice(&group),
        indices: idx,
        files,
        labels,
        counterpart,
        mask,
    })
}

/// The content digest of every image of `split` (u8 pixels at the dataset's geometry, as
/// training sees them), one image in memory at a time.
pub fn image_digests(dataset: &dyn Dataset, split: Split) -> Result<Vec<u64>> {
    split_indices(dataset, split)
        .par_iter()
        .map(|&i| dataset.load(i).map(|px| crate::digest::fnv1a64(&px)))
        .collect()
}

/// The content digest of each row of u8 images `[N, C, H, W]` (the same digest as
/// [`image_digests`] for the same pixels: FNV-1a 64).
pub fn tensor_digests(images: &Tensor) -> Result<Vec<u64>> {
    let n = images.size()[0];
    (0..n)
        .map(|i| {
            let px = Vec::<u8>::try_from(images.get(i).flatten(0, -1).to_device(tch::Device::Cpu))
                .map_err(|e| crate::error::DataError::config(format!("image {i}: {e}")))?;
            Ok(crate::digest::fnv1a64(&px))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{DataConfig, SyntheticConfig};
    use tch::Kind;

    #[test]
    fn synthetic_eval_set_has_ground_truth_and_labels() {
        let cfg = DataConfig::Synthetic(SyntheticConfig {
            n_background: 30,
            n_target: 30,
            ..Default::default()
        });
        let ds = cfg.open().unwrap();
        let e = load_eval_set(ds.as_ref(), Split::Eval).unwrap();
        assert!(!e.is_empty());
        assert_eq!(e.images.size(), vec![e.len() as i64, 3, 32, 32]);
        let cp = e.counterpart.as_ref().unwrap();
        let mask = e.mask.as_ref().unwrap();
        let g = &e.group;
        // background rows: counterpart == image, mask == 0
        for r in 0..e.len() as i64 {
            let bg = g.int64_value(&[r]) == 0;
            let same = cp.get(r).equal(&e.images.get(r));
            assert_eq!(same, bg, "row {r}");
            let m = mask.get(r).sum(Kind::Float).double_value(&[]);
            assert_eq!(m == 0.0, bg, "row {r}");
        }
        assert_eq!(e.labels.len(), 17);
        assert!(e.labels.iter().all(|c| c.values.len() == e.len()));
    }
}
