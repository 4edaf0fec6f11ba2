//! The paths the repository's text names (docs, comments, scripts, configs) exist: a renamed or
//! removed file leaves no dangling reference behind.
use std::path::Path;
use std::process::Command;

/// Top-level folders whose paths the text refers to.
const ROOTS: &[&str] = &["docs/", "src/", "scripts/", "tests/", "configs/", "csrc/"];

/// Every `docs/…`, `src/…` (etc.) path in `text` that is not a pattern (`<name>`, `*`).
fn paths(text: &str) -> Vec<String> {
    let is_path_char = |c: char| c.is_ascii_alphanumeric() || "_./-".contains(c);
    let mut out = Vec::new();
    for root in ROOTS {
        for (at, _) in text.match_indices(root) {
            let before = text[..at].chars().next_back();
            if before.is_some_and(|c| is_path_char(c) || c == '<') {
                continue;
            }
            let rest = &text[at..];
            let end = rest.find(|c: char| !is_path_char(c)).unwrap_or(rest.len());
            let path = rest[..end].trim_end_matches(['.', '/', '-']);
            if matches!(rest[end..].chars().next(), Some('<' | '*' | '{')) || path.contains("..") {
                continue;
            }
            out.push(path.to_string());
        }
    }
    out
}

#[test]
fn every_path_the_text_names_exists() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let listed = Command::new("git").args(["ls-files"]).current_dir(root).output().expect("git runs");
    let files = String::from_utf8_lossy(&listed.stdout).into_owned();
    let mut dangling = Vec::new();
    for file in
        files.lines().filter(|f| [".md", ".rs", ".py", ".sh", ".yaml", ".toml", ".txt"].iter().any(|e| f.ends_with(e)))
    {
        // Rust tests build their own fixture trees (a `configs/c.yaml` in a temporary folder).
        if file.starts_with("tests/") && file.ends_with(".rs") {
            continue;
        }
        let Ok(text) = std::fs::read_to_string(root.join(file)) else { continue };
        for path in paths(&text) {
            if !root.join(&path).exists() {
                dangling.push(format!("{file}: {path}"));
            }
        }
    }
    dangling.sort();
    dangling.dedup();
    assert!(dangling.is_empty(), "paths named but not in the repository:\n{}", dangling.join("\n"));
}

#[test]
fn paths_are_found_in_prose_and_patterns_are_not() {
    let text = "see docs/results/BENCHMARKS.md. Also `src/data/<name>.rs`, scripts/fetch.sh and ./src/x";
    assert_eq!(paths(text), ["docs/results/BENCHMARKS.md", "scripts/fetch.sh"]);
}
