//! Fuzz target: `labels.csv` against a fixed three-image dataset.
#![no_main]

use std::collections::{BTreeSet, HashMap};
use std::path::Path;

use ca_data::Group;
use ca_data::labels::parse_labels;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let groups = [Group::Background, Group::Target, Group::Target];
    let mut index = HashMap::new();
    index.insert((Group::Background, "a.png".to_string()), 0);
    index.insert((Group::Target, "sub/b.png".to_string()), 1);
    index.insert((Group::Target, "c.png".to_string()), 2);
    let skipped: BTreeSet<String> = ["target/gone.png".to_string()].into();
    if let Ok(l) = parse_labels(Path::new("labels.csv"), data, &index, &skipped, &groups) {
        for c in l.columns {
            assert_eq!(c.values.len(), groups.len());
        }
        if let Some(s) = l.subset {
            assert_eq!(s.len(), groups.len());
        }
    }
});
