//! The repository's text speaks of the tool, not of how it was made: no work-log words (the
//! planning's sittings and ticket numbers) and no paths of one machine outside the repository
//! in the README,
//! the documents, the presets, the crates, the benches, the tests or the automation. A test
//! (run by `cargo xtask ci` with every other) walks those files and names each offending line.

#[cfg(test)]
mod tests {
    use std::path::{Path, PathBuf};

    /// Where the rule applies, relative to the workspace root (of `datasets/`, only the
    /// project's own files: downloaded data lands beside them).
    const SCOPE: [&str; 12] = [
        "README.md",
        "ARCHITECTURE.md",
        "docs",
        "configs",
        "crates",
        "benches",
        "xtask",
        "tests",
        "datasets/README.md",
        "datasets/manifest.toml",
        "fuzz",
        ".ci",
    ];

    /// Folders never read: build output and fuzzing's generated files.
    const SKIP_DIRS: [&str; 5] = ["target", "corpus", "artifacts", "coverage", "__pycache__"];

    /// The forbidden patterns, lower case, built from pieces so this file does not hold them.
    fn patterns() -> Vec<String> {
        vec![
            ["ses", "sion"].concat(),
            ["iss", "ue #"].concat(),
            ["../", "shared"].concat(),
            ["/wo", "rk/"].concat(),
            ["/ro", "ot/"].concat(),
            ["/ho", "me/"].concat(),
        ]
    }

    fn walk(path: &Path, out: &mut Vec<PathBuf>) {
        if path.is_dir() {
            let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
            if SKIP_DIRS.contains(&name) {
                return;
            }
            let mut entries: Vec<PathBuf> = std::fs::read_dir(path)
                .unwrap_or_else(|e| panic!("cannot list '{}': {e}", path.display()))
                .map(|e| e.expect("directory entry").path())
                .collect();
            entries.sort();
            for e in entries {
                walk(&e, out);
            }
        } else if path.is_file() {
            out.push(path.to_path_buf());
        }
    }

    /// Every offending line of the text files under `roots`, as `file:line: text`.
    fn offences(root: &Path, roots: &[&str]) -> Vec<String> {
        let pats = patterns();
        let mut files = Vec::new();
        for r in roots {
            walk(&root.join(r), &mut files);
        }
        let mut found = Vec::new();
        for f in files {
            // Binary files (fixtures, images) are not text to read.
            let Ok(text) = std::fs::read_to_string(&f) else {
                continue;
            };
            for (i, line) in text.lines().enumerate() {
                let lower = line.to_lowercase();
                if let Some(p) = pats.iter().find(|p| lower.contains(p.as_str())) {
                    let rel = f.strip_prefix(root).unwrap_or(&f);
                    found.push(format!(
                        "{}:{}: `{p}` in: {}",
                        rel.display(),
                        i + 1,
                        line.trim()
                    ));
                }
            }
        }
        found
    }

    #[test]
    fn the_repository_speaks_of_the_tool_not_of_how_it_was_made() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
        let found = offences(root, &SCOPE);
        assert!(
            found.is_empty(),
            "{} line(s) speak of how the project was made or name a path outside it; write them as facts about the tool (dated by date or commit), paths relative to the repository:\n{}",
            found.len(),
            found.join("\n")
        );
    }

    /// The check finds what it is for (and only in scope): a planted file with each pattern.
    #[test]
    fn the_check_names_each_planted_line() {
        let dir = std::env::temp_dir().join(format!("ca-tidy-{}", std::process::id()));
        std::fs::create_dir_all(dir.join("docs/target")).unwrap();
        let pats = patterns();
        let text: String = pats
            .iter()
            .map(|p| format!("a line with {p} in it\n"))
            .collect();
        std::fs::write(dir.join("docs/notes.md"), format!("clean line\n{text}")).unwrap();
        std::fs::write(dir.join("docs/target/skipped.md"), &text).unwrap();
        std::fs::write(dir.join("outside.md"), &text).unwrap();
        let found = offences(&dir, &["docs"]);
        std::fs::remove_dir_all(&dir).unwrap();
        assert_eq!(found.len(), pats.len(), "{found:#?}");
        assert!(found[0].starts_with("docs/notes.md:2: "), "{found:#?}");
    }
}
