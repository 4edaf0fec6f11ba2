//! Configuration, the bottom layer: the YAML schema with its defaults, `--set` overrides, and
//! the checks that need nothing but the config (ranges, names). It reads no dataset and builds
//! no model; checking a config against those is the resolve step (src/setup.rs).
//!
//! Every error is a [`crate::error::UserError`] of one line that names the file (or the
//! `--set` flag), the key path, and what is expected.
mod options;
mod overrides;
mod schema;
mod validate;

pub use options::OptionMap;
pub use validate::{is_http_url, parse_device, DeviceChoice};

pub use schema::*;

use crate::user_error;
use serde::de::DeserializeOwned;
use std::collections::BTreeMap;
use std::path::Path;

/// The built-in default config (`configs/shapes_seg.yaml`), used when no config file is given.
pub const DEFAULT_CONFIG: &str = include_str!("../../configs/shapes_seg.yaml");
pub const DEFAULT_CONFIG_NAME: &str = "<built-in configs/shapes_seg.yaml>";

impl Config {
    /// Reads, overrides and validates a config file. Paths in it stay as written: resolving
    /// them against the file's directory is the resolve step's job (src/setup.rs).
    pub fn load(path: &Path, overrides: &[String]) -> anyhow::Result<Config> {
        let text = crate::files::read_to_string(path, crate::files::TEXT_LIMIT)?;
        Self::parse(&text, &path.display().to_string(), overrides)
    }

    /// Parses YAML text; `origin` names it in errors.
    pub fn parse(text: &str, origin: &str, overrides: &[String]) -> anyhow::Result<Config> {
        check_nesting(text).map_err(|e| user_error!("{origin}: {e}"))?;
        // First pass on the text itself, so type errors carry the YAML line.
        let cfg: Config = deserialize(serde_yaml::Deserializer::from_str(text), origin)?;
        let (mut cfg, epochs_written) = if overrides.is_empty() {
            let written = cfg.train.stages.is_empty() || writes_epochs(&serde_yaml::from_str(text).unwrap_or_default());
            (cfg, written)
        } else {
            let mut value: serde_yaml::Value = serde_yaml::from_str(text).map_err(|e| user_error!("{origin}: {e}"))?;
            for o in overrides {
                overrides::apply(&mut value, o)?;
            }
            let written = writes_epochs(&value);
            (deserialize(value, &format!("{origin} with --set {}", overrides.join(" --set ")))?, written)
        };
        // Stages without train.epochs: the stages say how long the run is.
        if !epochs_written {
            cfg.train.epochs = cfg.train.stages.iter().map(|s| s.epochs).sum();
        }
        validate::validate(&cfg).map_err(|e| user_error!("{origin}: {e}"))?;
        Ok(cfg)
    }

    /// Whether some task has its own data (multi-input MTL).
    pub fn multi_input(&self) -> bool {
        self.tasks.iter().any(|t| t.data.is_some())
    }

    /// The data task `i` reads: its own `data` keys over the top-level `data` (nested sections
    /// merged key by key, so `augment: {hflip: true}` keeps the other augment keys), or the
    /// top-level data itself. An error names `tasks[i].data.<key>`.
    pub fn task_data(&self, i: usize) -> Result<DataConfig, String> {
        let Some(own) = &self.tasks[i].data else { return Ok(self.data.clone()) };
        let mut merged = serde_yaml::to_value(&self.data).expect("a DataConfig always serialises");
        merge(&mut merged, &serde_yaml::Value::Mapping(own.clone()));
        serde_path_to_error::deserialize(merged).map_err(|e| {
            let path = e.path().to_string();
            let inner = e.into_inner().to_string();
            let inner = inner.lines().next().unwrap_or_default().to_string();
            match path.as_str() {
                "." | "" => format!("tasks[{i}].data: {inner}"),
                p => format!("tasks[{i}].data.{p}: {inner}"),
            }
        })
    }

    /// `key.path -> YAML scalar` for every leaf of the config (`tasks[1].weight`, an empty list
    /// as `[]`): what resume and `compare` tell configs apart by.
    pub fn leaves(&self) -> BTreeMap<String, String> {
        fn walk(prefix: &str, v: &serde_yaml::Value, out: &mut BTreeMap<String, String>) {
            match v {
                serde_yaml::Value::Mapping(m) => {
                    for (k, v) in m {
                        let k = k.as_str().map(str::to_string).unwrap_or_else(|| format!("{k:?}"));
                        walk(&if prefix.is_empty() { k } else { format!("{prefix}.{k}") }, v, out);
                    }
                }
                serde_yaml::Value::Sequence(s) => {
                    for (i, v) in s.iter().enumerate() {
                        walk(&format!("{prefix}[{i}]"), v, out);
                    }
                    if s.is_empty() {
                        out.insert(prefix.to_string(), "[]".into());
                    }
                }
                other => {
                    out.insert(prefix.to_string(), serde_yaml::to_string(other).unwrap_or_default().trim().to_string());
                }
            }
        }
        let mut out = BTreeMap::new();
        walk("", &serde_yaml::to_value(self).expect("a Config always serialises"), &mut out);
        out
    }

    /// The resolved config as YAML (what is printed at start and saved in the run directory).
    pub fn to_yaml(&self) -> String {
        serde_yaml::to_string(self).expect("a Config always serialises")
    }
}

/// Whether a config's YAML writes `train.epochs` (or stages none: then it is not derived).
fn writes_epochs(value: &serde_yaml::Value) -> bool {
    let train = value.get("train");
    train.and_then(|t| t.get("stages")).is_none_or(|s| s.as_sequence().is_none_or(|s| s.is_empty()))
        || train.and_then(|t| t.get("epochs")).is_some()
}

/// `over` written onto `base`: mappings key by key, anything else replaced.
fn merge(base: &mut serde_yaml::Value, over: &serde_yaml::Value) {
    match (base, over) {
        (serde_yaml::Value::Mapping(b), serde_yaml::Value::Mapping(o)) => {
            for (k, v) in o {
                match b.get_mut(k) {
                    Some(slot) => merge(slot, v),
                    None => {
                        b.insert(k.clone(), v.clone());
                    }
                }
            }
        }
        (b, o) => *b = o.clone(),
    }
}

/// Deepest nesting a config may have; the real ones have 4.
const MAX_NESTING: usize = 32;

/// Refuses text nested deeper than [`MAX_NESTING`] in one linear pass: the YAML parser takes
/// quadratic time on deep nesting before it gives up.
fn check_nesting(text: &str) -> Result<(), String> {
    let mut indents: Vec<usize> = Vec::new();
    let mut flow = 0usize;
    for (n, line) in text.lines().enumerate() {
        let content = line.trim_start();
        if content.is_empty() || content.starts_with('#') {
            continue;
        }
        let indent = line.len() - content.len();
        if flow == 0 {
            while indents.last().is_some_and(|&i| i >= indent) {
                indents.pop();
            }
            indents.push(indent);
        }
        let mut quote: Option<char> = None;
        for c in content.chars() {
            match (quote, c) {
                (Some(q), c) if c == q => quote = None,
                (Some(_), _) => {}
                (None, '\'' | '"') => quote = Some(c),
                (None, '#') => break,
                (None, '[' | '{') => flow += 1,
                (None, ']' | '}') => flow = flow.saturating_sub(1),
                _ => {}
            }
            if flow + indents.len() > MAX_NESTING {
                return Err(format!("line {}: nested more than {MAX_NESTING} levels deep", n + 1));
            }
        }
    }
    Ok(())
}

/// Deserialises with the failing key's path in the message.
fn deserialize<'de, D, T>(de: D, origin: &str) -> anyhow::Result<T>
where
    D: serde::Deserializer<'de>,
    D::Error: std::fmt::Display,
    T: DeserializeOwned,
{
    serde_path_to_error::deserialize(de).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner().to_string();
        let inner = inner.lines().next().unwrap_or_default().to_string();
        if path == "." || path.is_empty() {
            user_error!("{origin}: {inner}")
        } else {
            user_error!("{origin}: {path}: {inner}")
        }
    })
}

#[cfg(test)]
mod tests;
