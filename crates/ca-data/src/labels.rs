//! `ROOT/labels.csv`: `split,file,<label columns...>`, used only for evaluation.
//!
//! `split` is `background` or `target`; `file` is the path relative to that split folder
//! (with `/` separators). A column whose non-empty values are all integers is categorical;
//! all numbers with at least one decimal is continuous; any other text is categorical with
//! codes given to the distinct strings in sorted order. Empty cells are missing (NaN), and so
//! are images without a row.
//!
//! A column named `subset` is not a label: its cells (`train`, `eval`, or empty) fix the image's
//! split (the split of the dataset's authors, e.g. CelebA's evaluation partition); an image with
//! an empty cell or without a row is split by `data.eval_fraction` as usual. A column named
//! `mask` (the path of a target image's mask file, as `cargo xtask fetch-datasets` writes for
//! brain MRI) is not a label either and is ignored: a path per image is no factor to probe.

use std::collections::{BTreeSet, HashMap};
use std::path::Path;

use crate::dataset::{Group, LabelColumn, LabelKind};
use crate::error::{DataError, DataErrorKind, Result};

/// What `labels.csv` holds.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Labels {
    /// The label columns (every column but `split`, `file`, `subset` and `mask`).
    pub columns: Vec<LabelColumn>,
    /// Per item, from the `subset` column: `Some(true)` = held out for evaluation,
    /// `Some(false)` = training, `None` = not fixed (empty cell, no row). `None` without the
    /// column.
    pub subset: Option<Vec<Option<bool>>>,
}

impl Labels {
    /// The split `subset` fixes for item `index` (see [`crate::Dataset::subset`]).
    pub fn subset_of(&self, index: usize) -> Option<bool> {
        self.subset.as_ref().and_then(|s| s[index])
    }
}

/// `ROOT/labels.csv` of a dataset whose items are `files` (group, path relative to the group
/// folder), or no labels when the file does not exist. `skipped`: see [`read_labels`].
pub fn read_root_labels(
    root: &Path,
    files: &[(Group, String)],
    skipped: &BTreeSet<String>,
) -> Result<Labels> {
    let path = root.join("labels.csv");
    if !path.is_file() {
        return Ok(Labels::default());
    }
    let groups: Vec<Group> = files.iter().map(|(g, _)| *g).collect();
    let index: HashMap<(Group, String), usize> = files
        .iter()
        .cloned()
        .enumerate()
        .map(|(i, k)| (k, i))
        .collect();
    read_labels(&path, &index, skipped, &groups)
}

/// Parse `labels.csv` against the dataset's items. `index` maps `(group, relative file)` to an
/// item index; `skipped` holds `split/file` names skipped as unreadable (their rows are
/// ignored). `groups` is the group of every item.
pub fn read_labels(
    path: &Path,
    index: &HashMap<(Group, String), usize>,
    skipped: &BTreeSet<String>,
    groups: &[Group],
) -> Result<Labels> {
    let file = std::fs::File::open(path).map_err(|e| DataError::io(path, e))?;
    parse_labels(path, file, index, skipped, groups)
}

/// [`read_labels`] on any reader; `path` only names the file in errors.
pub fn parse_labels(
    path: &Path,
    input: impl std::io::Read,
    index: &HashMap<(Group, String), usize>,
    skipped: &BTreeSet<String>,
    groups: &[Group],
) -> Result<Labels> {
    let err = |msg: String| DataError::at(path, DataErrorKind::Labels(msg));
    let mut rdr = csv::ReaderBuilder::new()
        .trim(csv::Trim::All)
        .from_reader(input);
    let headers = rdr.headers().map_err(|e| err(e.to_string()))?.clone();
    if headers.len() < 2 || &headers[0] != "split" || &headers[1] != "file" {
        return Err(err(format!(
            "the header must start with `split,file` (found `{}`); add the header row",
            headers.iter().collect::<Vec<_>>().join(",")
        )));
    }
    let names: Vec<String> = headers.iter().skip(2).map(str::to_string).collect();
    for (i, n) in names.iter().enumerate() {
        if n.is_empty() {
            return Err(err(format!(
                "header column {} has no name; name every label column",
                i + 3
            )));
        }
        if names[..i].contains(n) {
            return Err(err(format!(
                "label column `{n}` appears twice in the header; rename or drop one"
            )));
        }
    }
    let mut cells: Vec<Vec<Option<String>>> = vec![vec![None; groups.len()]; names.len()];
    let mut seen: HashMap<usize, usize> = HashMap::new();
    for (row, rec) in rdr.records().enumerate() {
        let line = row + 2;
        let rec = rec.map_err(|e| match e.kind() {
            csv::ErrorKind::UnequalLengths {
                pos, expected_len, len, ..
            } => err(format!(
                "line {}: {len} cells, the header has {expected_len}; give every row one cell per column (leave a cell empty for a missing value)",
                pos.as_ref().map_or(line as u64, |p| p.line())
            )),
            _ => err(format!("line {line}: {e}")),
        })?;
        let group = match &rec[0] {
            "background" => Group::Background,
            "target" => Group::Target,
            other => {
                return Err(err(format!(
                    "line {line}: split `{other}` (expected background or target)"
                )));
            }
        };
        let file = rec[1].replace('\\', "/");
        let Some(&i) = index.get(&(group, file.clone())) else {
            if skipped.contains(&format!("{}/{file}", group.name())) {
                continue;
            }
            return Err(err(format!(
                "line {line}: file '{}/{file}' does not exist in the dataset; fix or delete the row",
                group.name()
            )));
        };
        if let Some(first) = seen.insert(i, line) {
            return Err(err(format!(
                "line {line}: file '{}/{file}' is already labelled on line {first}; keep one row per image",
                group.name()
            )));
        }
        for (c, col) in cells.iter_mut().enumerate() {
            let v = rec.get(c + 2).unwrap_or("");
            col[i] = (!v.is_empty()).then(|| v.to_string());
        }
    }
    let mut subset = None;
    let mut columns = Vec::new();
    for (name, col) in names.iter().zip(cells) {
        if name == "mask" {
            continue;
        }
        if name != "subset" {
            columns.push(column(name, &col, groups));
            continue;
        }
        let mut fixed = Vec::with_capacity(col.len());
        for (i, v) in col.iter().enumerate() {
            fixed.push(match v.as_deref() {
                None => None,
                Some("train") => Some(false),
                Some("eval") => Some(true),
                Some(other) => {
                    return Err(err(format!(
                        "line {}: subset `{other}` (expected train or eval, or an empty cell to let data.eval_fraction decide)",
                        seen.get(&i).copied().unwrap_or(0)
                    )));
                }
            });
        }
        subset = Some(fixed);
    }
    Ok(Labels { columns, subset })
}

fn column(name: &str, cells: &[Option<String>], groups: &[Group]) -> LabelColumn {
    let present = || cells.iter().flatten();
    if present().all(|v| v.parse::<i64>().is_ok()) {
        let values = cells
            .iter()
            .map(|v| {
                v.as_ref()
                    .map_or(f64::NAN, |v| v.parse::<i64>().unwrap() as f64)
            })
            .collect();
        return LabelColumn::with_inferred_scope(name, LabelKind::Categorical, values, groups);
    }
    if present().all(|v| v.parse::<f64>().is_ok()) {
        let values = cells
            .iter()
            .map(|v| v.as_ref().map_or(f64::NAN, |v| v.parse::<f64>().unwrap()))
            .collect();
        return LabelColumn::with_inferred_scope(name, LabelKind::Continuous, values, groups);
    }
    let distinct: BTreeSet<&String> = present().collect();
    let code: HashMap<&String, f64> = distinct
        .into_iter()
        .enumerate()
        .map(|(i, s)| (s, i as f64))
        .collect();
    let values = cells
        .iter()
        .map(|v| v.as_ref().map_or(f64::NAN, |v| code[v]))
        .collect();
    LabelColumn::with_inferred_scope(name, LabelKind::Categorical, values, groups)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_missing_values_and_bad_rows() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("labels.csv");
        let groups = [Group::Background, Group::Target, Group::Target];
        let mut index = HashMap::new();
        index.insert((Group::Background, "a.png".to_string()), 0);
        index.insert((Group::Target, "sub/b.png".to_string()), 1);
        index.insert((Group::Target, "c.png".to_string()), 2);
        std::fs::write(&p, "split,file,kind,size,name\nbackground,a.png,,0.5,x\ntarget,sub/b.png,1,0.25,y\ntarget,c.png,2,1,x\n").unwrap();
        let cols = read_labels(&p, &index, &BTreeSet::new(), &groups)
            .unwrap()
            .columns;
        assert_eq!(cols[0].kind, LabelKind::Categorical);
        assert!(cols[0].values[0].is_nan());
        assert_eq!(cols[0].values[1..], [1.0, 2.0]);
        assert_eq!(cols[0].scope, crate::dataset::LabelScope::Salient);
        assert_eq!(cols[1].kind, LabelKind::Continuous);
        assert_eq!(cols[2].values, vec![0.0, 1.0, 0.0]);
        std::fs::write(&p, "split,file,kind\ntarget,missing.png,1\n").unwrap();
        let e = read_labels(&p, &index, &BTreeSet::new(), &groups)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("line 2") && e.contains("target/missing.png") && e.contains("labels.csv"),
            "{e}"
        );
        let skipped: BTreeSet<String> = ["target/missing.png".to_string()].into();
        assert!(read_labels(&p, &index, &skipped, &groups).is_ok());
        for (text, want) in [
            (
                "split,file,kind\nbackground,a.png,0\ntarget,c.png\n",
                "line 3: 2 cells, the header has 3",
            ),
            (
                "split,file,kind\nbackground,a.png,0,7\n",
                "line 2: 4 cells, the header has 3",
            ),
            ("split,file,kind,kind\n", "`kind` appears twice"),
            ("split,file,,size\n", "column 3 has no name"),
            (
                "split,file,kind\ntarget,c.png,0\ntarget,c.png,1\n",
                "line 3: file 'target/c.png' is already labelled on line 2",
            ),
            ("", "must start with `split,file`"),
            (
                "split,file,kind\nvalidation,a.png,0\n",
                "split `validation` (expected background or target)",
            ),
        ] {
            std::fs::write(&p, text).unwrap();
            let e = read_labels(&p, &index, &BTreeSet::new(), &groups)
                .unwrap_err()
                .to_string();
            assert!(
                e.contains(want) && e.contains("labels.csv"),
                "{text:?}: {e}"
            );
        }
        // The `subset` column fixes the split and is not a label column.
        std::fs::write(
            &p,
            "split,file,subset,kind,mask\nbackground,a.png,eval,0,\ntarget,c.png,train,1,m/c.png\n",
        )
        .unwrap();
        let l = read_labels(&p, &index, &BTreeSet::new(), &groups).unwrap();
        assert_eq!(l.subset, Some(vec![Some(true), None, Some(false)]));
        assert_eq!(l.columns.len(), 1);
        assert_eq!(l.columns[0].name, "kind");
        std::fs::write(
            &p,
            "split,file,subset\nbackground,a.png,eval\ntarget,c.png,test\n",
        )
        .unwrap();
        let e = read_labels(&p, &index, &BTreeSet::new(), &groups)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("line 3: subset `test` (expected train or eval"),
            "{e}"
        );
        // Not valid UTF-8.
        std::fs::write(&p, b"split,file,kind\nbackground,a\xff.png,0\n").unwrap();
        let e = read_labels(&p, &index, &BTreeSet::new(), &groups)
            .unwrap_err()
            .to_string();
        assert!(e.contains("line 2") && e.contains("UTF-8"), "{e}");
        std::fs::write(&p, "file,split\n").unwrap();
        assert!(
            read_labels(&p, &index, &BTreeSet::new(), &groups)
                .unwrap_err()
                .to_string()
                .contains("split,file")
        );
    }
}
