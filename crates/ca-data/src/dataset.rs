//! The `Dataset` trait shared by the synthetic, folder and `.npy` datasets, and the label types.
//!
//! Index space: items `0..n_background()` are background images, the rest target images.
//! Every item is delivered as u8 in CHW order (`channels * size * size` bytes).

use std::path::PathBuf;

use crate::config::Common;
use crate::error::Result;

/// Which of the two image sets an item belongs to (the only supervision in CA).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Group {
    /// The background set (salient code s = 0).
    Background = 0,
    /// The target set.
    Target = 1,
}

impl Group {
    /// The folder name of this set (`background` or `target`), also the `split` value in
    /// `labels.csv`.
    pub fn name(self) -> &'static str {
        match self {
            Group::Background => "background",
            Group::Target => "target",
        }
    }
}

/// Whether a label is a class index or a real number.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LabelKind {
    /// Integer class codes (stored as f64).
    Categorical,
    /// Real values.
    Continuous,
}

/// Whether a factor is shared by both sets or exists only in the target set.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LabelScope {
    /// Present (and varying) in the background set too.
    Common,
    /// Varies only within the target set (missing or constant in the background set).
    Salient,
}

/// One named label column over a list of items.
#[derive(Debug, Clone, PartialEq)]
pub struct LabelColumn {
    /// Column name (e.g. `shape`, `overlay_type`).
    pub name: String,
    /// Categorical or continuous.
    pub kind: LabelKind,
    /// Common or salient.
    pub scope: LabelScope,
    /// One value per item; NaN where missing.
    pub values: Vec<f64>,
}

impl LabelColumn {
    /// Build a column, deciding its scope from the data: Salient when the values vary only
    /// within the target set (all missing, or constant, over background items), else Common.
    pub fn with_inferred_scope(
        name: &str,
        kind: LabelKind,
        values: Vec<f64>,
        groups: &[Group],
    ) -> Self {
        assert_eq!(
            values.len(),
            groups.len(),
            "label column {name}: {} values for {} items",
            values.len(),
            groups.len()
        );
        let mut bg = values
            .iter()
            .zip(groups)
            .filter(|(v, g)| **g == Group::Background && !v.is_nan())
            .map(|(v, _)| *v);
        let bg_constant = match bg.next() {
            None => true,
            Some(first) => bg.all(|v| v == first),
        };
        let mut tg = values
            .iter()
            .zip(groups)
            .filter(|(v, g)| **g == Group::Target && !v.is_nan())
            .map(|(v, _)| *v);
        let tg_varies = match tg.next() {
            None => false,
            Some(first) => tg.any(|v| v != first),
        };
        let scope = if bg_constant && tg_varies {
            LabelScope::Salient
        } else {
            LabelScope::Common
        };
        Self {
            name: name.to_string(),
            kind,
            scope,
            values,
        }
    }

    /// The values of the given items, in that order (same name, kind and scope).
    pub fn select(&self, items: &[usize]) -> LabelColumn {
        LabelColumn {
            values: items.iter().map(|&i| self.values[i]).collect(),
            ..self.clone()
        }
    }
}

/// A dataset of background and target images, decoded on demand.
pub trait Dataset: Send + Sync {
    /// Number of items (background + target).
    fn len(&self) -> usize;
    /// True when there is no item.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// Number of background items (they come first in the index space).
    fn n_background(&self) -> usize;
    /// Group of an item.
    fn group(&self, index: usize) -> Group {
        if index < self.n_background() {
            Group::Background
        } else {
            Group::Target
        }
    }
    /// The resolved shared settings (image size, channels, split, loader options).
    fn common(&self) -> &Common;
    /// Channels per image (1 or 3).
    fn channels(&self) -> usize {
        self.common().channels
    }
    /// Image side in pixels.
    fn size(&self) -> usize {
        self.common().size
    }
    /// Bytes of one decoded image (`channels * size * size`).
    fn item_bytes(&self) -> usize {
        self.channels() * self.size() * self.size()
    }
    /// Path of an item relative to its split folder (as in `labels.csv`), or a synthetic name.
    fn file(&self, index: usize) -> String;
    /// Full path of an item on disk, for error messages (None for in-memory data).
    fn path(&self, index: usize) -> Option<PathBuf>;
    /// Decode an item to u8 CHW.
    fn load(&self, index: usize) -> Result<Vec<u8>>;
    /// The exact background counterpart of a target item (u8 CHW), when the dataset has ground
    /// truth; for a background item, the item itself. None when no ground truth exists.
    fn counterpart(&self, index: usize) -> Result<Option<Vec<u8>>>;
    /// The salient mask of an item (`size * size` values in [0, 1]; zeros for background
    /// items). None when no ground truth exists.
    fn mask(&self, index: usize) -> Result<Option<Vec<f32>>>;
    /// Label columns over all items (index order). Empty when the dataset has no labels.
    fn labels(&self) -> Vec<LabelColumn>;
    /// The split fixed by the dataset itself (`labels.csv` column `subset`): `Some(true)` =
    /// evaluation, `Some(false)` = training, `None` = decided by `data.eval_fraction`.
    fn subset(&self, _index: usize) -> Option<bool> {
        None
    }
    /// Whether ground truth (counterparts and masks) exists.
    fn has_ground_truth(&self) -> bool;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scope_is_salient_only_when_background_is_missing_or_constant() {
        let g = [
            Group::Background,
            Group::Background,
            Group::Target,
            Group::Target,
        ];
        let s = LabelColumn::with_inferred_scope(
            "o",
            LabelKind::Categorical,
            vec![f64::NAN, f64::NAN, 0.0, 2.0],
            &g,
        );
        assert_eq!(s.scope, LabelScope::Salient);
        let s = LabelColumn::with_inferred_scope(
            "o",
            LabelKind::Categorical,
            vec![1.0, 1.0, 0.0, 2.0],
            &g,
        );
        assert_eq!(s.scope, LabelScope::Salient);
        let c = LabelColumn::with_inferred_scope(
            "c",
            LabelKind::Continuous,
            vec![0.1, 0.2, 0.3, 0.3],
            &g,
        );
        assert_eq!(c.scope, LabelScope::Common);
        let k = LabelColumn::with_inferred_scope(
            "k",
            LabelKind::Continuous,
            vec![1.0, 1.0, 1.0, 1.0],
            &g,
        );
        assert_eq!(k.scope, LabelScope::Common);
        assert_eq!(c.select(&[2, 0]).values, vec![0.3, 0.1]);
    }
}
