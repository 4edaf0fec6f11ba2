//! The layering of docs/ARCHITECTURE.md, checked on the sources: every module of the engine
//! (src/<module>) refers only to modules of lower layers, or to the peers it is allowed to use,
//! so there are no import cycles; the engine never refers to the command line (src/cli/).
use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// Each engine module's layer, from the bottom; a module may use any module of a lower layer.
const LAYERS: &[(&str, u32)] = &[
    ("error", 0),
    ("files", 0),
    ("rng", 0),
    ("transfer", 0),
    ("config", 1),
    ("dist", 1),
    ("data", 2),
    ("model", 2),
    ("optim", 2),
    ("checkpoint", 2),
    ("tasks", 3),
    ("balance", 3),
    ("setup", 4),
    ("train", 5),
];

/// The top-level modules `text` refers to through `crate::x` paths or `use crate::{x, …}`.
fn references(text: &str) -> BTreeSet<String> {
    let code: String = text.lines().map(|l| l.split("//").next().unwrap_or("")).collect::<Vec<_>>().join("\n");
    let mut out = BTreeSet::new();
    let mut rest = code.as_str();
    while let Some(at) = rest.find("crate::") {
        rest = &rest[at + "crate::".len()..];
        if let Some(group) = rest.strip_prefix('{') {
            let end = group.find('}').unwrap_or(group.len());
            for item in group[..end].split(',') {
                out.insert(ident(item.trim()));
            }
        } else {
            out.insert(ident(rest));
        }
    }
    out.retain(|m| !m.is_empty());
    out
}

fn ident(s: &str) -> String {
    s.chars().take_while(|c| c.is_ascii_alphanumeric() || *c == '_').collect()
}

fn rust_files(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap().flatten() {
        let path = entry.path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

#[test]
fn engine_modules_only_use_lower_layers() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let layer: BTreeMap<&str, u32> = LAYERS.iter().copied().collect();
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    let mut broken = Vec::new();
    let mut seen = BTreeSet::new();
    for file in files {
        let rel = file.strip_prefix(&src).unwrap();
        let module = rel.components().next().unwrap().as_os_str().to_string_lossy().trim_end_matches(".rs").to_string();
        if matches!(module.as_str(), "lib" | "main" | "cli") {
            continue;
        }
        let text = std::fs::read_to_string(&file).unwrap();
        // Unit tests may reach further down or sideways; the shipped code may not.
        let shipped = text.split("#[cfg(test)]").next().unwrap_or("");
        if rel.components().any(|c| c.as_os_str() == "tests") || rel.ends_with("tests.rs") {
            continue;
        }
        let Some(&own) = layer.get(module.as_str()) else {
            broken.push(format!(
                "{}: module '{module}' has no layer in LAYERS (and docs/ARCHITECTURE.md)",
                rel.display()
            ));
            continue;
        };
        seen.insert(module.clone());
        for used in references(shipped) {
            if used == module || matches!(used.as_str(), "user_bail" | "user_error") {
                continue;
            }
            match layer.get(used.as_str()) {
                Some(&l) if l < own => {}
                Some(&l) => broken.push(format!("{}: {module} (layer {own}) uses {used} (layer {l})", rel.display())),
                None => {
                    broken.push(format!("{}: {module} uses '{used}', which is not an engine module", rel.display()))
                }
            }
        }
    }
    assert!(broken.is_empty(), "layering broken:\n{}", broken.join("\n"));
    let listed: BTreeSet<String> = LAYERS.iter().map(|(m, _)| m.to_string()).collect();
    assert_eq!(seen, listed, "LAYERS lists modules that do not exist, or misses some");
}

#[test]
fn the_reference_scanner_sees_paths_and_groups() {
    let text = "use crate::config::Config;\nuse crate::{user_bail, data};\n// crate::train in a comment\nlet x = crate::rng::stream(1);";
    let got: Vec<String> = references(text).into_iter().collect();
    assert_eq!(got, ["config", "data", "rng", "user_bail"]);
}
