//! Reading a TOML config with command-line overrides (`--set key.path=value`), and turning
//! serde's "unknown field" errors into "did you mean" suggestions.

use toml::{Table, Value};

/// Errors of reading a config; each names the key or file.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config '{path}': {source}")]
    Io {
        /// The file.
        path: std::path::PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// The TOML is malformed or a key/value is wrong.
    #[error("config '{origin}': {msg}")]
    Invalid {
        /// The file (or "overrides").
        origin: String,
        /// What is wrong, with a suggestion where one exists.
        msg: String,
    },
    /// A `--set` argument is not `key=value`.
    #[error("--set '{0}': expected key.path=value (e.g. --set train.batch_size=32)")]
    BadOverride(String),
    /// A value is out of its allowed range.
    #[error("config key `{key}` = {value}: {msg}")]
    Value {
        /// Dotted key.
        key: String,
        /// The value given.
        value: String,
        /// What is allowed.
        msg: String,
    },
}

/// Apply `key.path=value` overrides to a TOML table. The value is parsed as a TOML value
/// (`32`, `1e-4`, `true`, `"text"`, `[1, 2]`); anything that does not parse is taken as a string.
/// Intermediate tables are created as needed; type checking happens when the table is
/// deserialised into the config structs, so a wrong type names the key.
pub fn apply_overrides(table: &mut Table, sets: &[String]) -> Result<(), ConfigError> {
    for set in sets {
        let (key, raw) = set
            .split_once('=')
            .ok_or_else(|| ConfigError::BadOverride(set.clone()))?;
        let key = key.trim();
        if key.is_empty() || key.split('.').any(str::is_empty) {
            return Err(ConfigError::BadOverride(set.clone()));
        }
        let value = parse_value(raw.trim());
        let mut parts: Vec<&str> = key.split('.').collect();
        let last = parts.pop().expect("non-empty key");
        let mut cur = &mut *table;
        for part in parts {
            let entry = cur
                .entry(part.to_string())
                .or_insert_with(|| Value::Table(Table::new()));
            cur = match entry {
                Value::Table(t) => t,
                other => {
                    return Err(ConfigError::Invalid {
                        origin: "overrides".into(),
                        msg: format!(
                            "--set {key}: `{part}` is a {} value, not a table",
                            other.type_str()
                        ),
                    });
                }
            };
        }
        cur.insert(last.to_string(), value);
    }
    Ok(())
}

fn parse_value(raw: &str) -> Value {
    match format!("v = {raw}").parse::<Table>() {
        Ok(mut t) => t
            .remove("v")
            .unwrap_or_else(|| Value::String(raw.to_string())),
        Err(_) => Value::String(raw.to_string()),
    }
}

/// Rewrite a serde/toml error message: for "unknown field `x`, expected one of `a`, `b`" add
/// "did you mean `a`?" when a known field is close in spelling.
pub fn with_suggestion(msg: &str) -> String {
    let Some(rest) = msg.split("unknown field `").nth(1) else {
        return msg.to_string();
    };
    let Some(field) = rest.split('`').next() else {
        return msg.to_string();
    };
    let expected: Vec<&str> = rest
        .split('`')
        .skip(2)
        .step_by(2)
        .filter(|s| !s.is_empty())
        .collect();
    match closest(field, expected) {
        Some(cand) => format!("{msg}\n  did you mean `{cand}`?"),
        None => msg.to_string(),
    }
}

/// The candidate closest in spelling to `key`, if one is close enough to be a typo of it (at
/// most 2 edits, or a third of the candidate's length).
pub fn closest<'a>(key: &str, candidates: impl IntoIterator<Item = &'a str>) -> Option<&'a str> {
    candidates
        .into_iter()
        .map(|cand| (edit_distance(key, cand), cand))
        .filter(|(d, cand)| *d <= 2.max(cand.len() / 3))
        .min()
        .map(|(_, cand)| cand)
}

/// Levenshtein distance between two short strings.
pub fn edit_distance(a: &str, b: &str) -> usize {
    let a: Vec<char> = a.chars().collect();
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for i in 1..=a.len() {
        let mut cur = vec![i; b.len() + 1];
        for j in 1..=b.len() {
            let sub = prev[j - 1] + usize::from(a[i - 1] != b[j - 1]);
            cur[j] = sub.min(prev[j] + 1).min(cur[j - 1] + 1);
        }
        prev = cur;
    }
    prev[b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overrides_parse_types_and_create_tables() {
        let mut t: Table = "[train]\nbatch_size = 8\n".parse().unwrap();
        apply_overrides(
            &mut t,
            &[
                "train.batch_size=32".into(),
                "optim.lr=1e-4".into(),
                "data.root=/tmp/x y".into(),
            ],
        )
        .unwrap();
        assert_eq!(t["train"]["batch_size"].as_integer(), Some(32));
        assert_eq!(t["optim"]["lr"].as_float(), Some(1e-4));
        assert_eq!(t["data"]["root"].as_str(), Some("/tmp/x y"));
    }

    #[test]
    fn bad_override_is_named() {
        let mut t = Table::new();
        let e = apply_overrides(&mut t, &["nonsense".into()])
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("nonsense") && e.contains("key.path=value"),
            "{e}"
        );
        let mut t: Table = "a = 1".parse().unwrap();
        let e = apply_overrides(&mut t, &["a.b=2".into()])
            .unwrap_err()
            .to_string();
        assert!(e.contains("not a table"), "{e}");
    }

    #[test]
    fn suggestion_for_typo() {
        let m = "unknown field `batch_sise`, expected one of `batch_size`, `max_steps`";
        assert!(with_suggestion(m).contains("did you mean `batch_size`?"));
        let m = "unknown field `zzzzzz`, expected `batch_size`";
        assert!(!with_suggestion(m).contains("did you mean"));
        assert_eq!(edit_distance("kitten", "sitting"), 3);
    }
}
