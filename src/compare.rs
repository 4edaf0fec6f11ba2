//! Single-task baselines, Δm, and comparing runs.
//!
//! Δm = (100 / K) Σ_k (−1)^{δ_k} (M_k − B_k) / B_k over the K quality metrics (every metric but
//! the losses), δ_k = 1 when higher is better: lower Δm is better, negative means the multi-task
//! model beats its single-task baselines (Nash-MTL / FAMO convention, ../shared/MTL_METHODS.md).
use crate::checkpoint::RunDir;
use crate::config::Config;
use crate::tasks::Task;
use crate::train::report::{self, Record};
use crate::{user_bail, user_error};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// What `mtl-train baselines` writes: each task's metrics when trained alone.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Baselines {
    /// The multi-task config's name.
    pub config: String,
    /// `<task>.<metric>` → value, quality metrics only.
    pub metrics: BTreeMap<String, f64>,
    /// Run directory of each single-task run.
    pub runs: BTreeMap<String, String>,
}

impl Baselines {
    pub fn load(path: &Path) -> anyhow::Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| {
            user_error!("{}: cannot read baselines (write them with `mtl-train baselines`): {e}", path.display())
        })?;
        serde_json::from_str(&text).map_err(|e| user_error!("{}: not a baselines file: {e}", path.display()))
    }

    pub fn save(&self, path: &Path) -> anyhow::Result<()> {
        crate::train::session::write_atomically(path, serde_json::to_string_pretty(self)?.as_bytes())
    }
}

/// Whether a metric counts in Δm (losses do not: they are what is optimised, not measured).
pub fn is_quality_metric(key: &str) -> bool {
    key.rsplit_once('.').is_some_and(|(_, m)| m != "loss" && m != "weight")
}

/// Δm of `metrics` against `baselines` over the metrics both have; None when they share none.
pub fn delta_m(metrics: &[(String, f64)], baselines: &BTreeMap<String, f64>) -> Option<f64> {
    let terms: Vec<f64> = metrics
        .iter()
        .filter(|(k, _)| is_quality_metric(k))
        .filter_map(|(k, m)| {
            let b = *baselines.get(k)?;
            if b == 0.0 {
                return None;
            }
            let metric = k.rsplit_once('.').map(|(_, m)| m).unwrap_or(k);
            let sign = if Task::higher_is_better(metric) { -1.0 } else { 1.0 };
            Some(sign * (m - b) / b)
        })
        .collect();
    // `+ 0.0` turns a −0 (an exact tie) into 0.
    (!terms.is_empty()).then(|| 100.0 * terms.iter().sum::<f64>() / terms.len() as f64 + 0.0)
}

/// The config for training task `task` alone with the same recipe.
pub fn single_task_config(cfg: &Config, task: &str) -> anyhow::Result<Config> {
    let Some(t) = cfg.tasks.iter().find(|t| t.name == task) else {
        user_bail!("no task named '{task}' in {}", cfg.name);
    };
    let mut single = cfg.clone();
    single.name = format!("{}-stl-{task}", cfg.name);
    single.tasks = vec![t.clone()];
    single.model.heads.retain(|k, _| k == task);
    single.balance = Default::default();
    single.train.baselines = None;
    let main = Task::from_config(t).metric_names()[0];
    single.checkpoint.monitor = format!("{task}.{main}");
    single.checkpoint.mode =
        if Task::higher_is_better(main) { crate::config::MonitorMode::Max } else { crate::config::MonitorMode::Min };
    Ok(single)
}

/// The last val row of a run's metrics.jsonl, as `(key, value)`.
pub fn last_val(run: &Path) -> Vec<(String, f64)> {
    report::read_records(&RunDir::new(run).metrics())
        .into_iter()
        .rfind(|r| r.get("split").and_then(|s| s.as_str()) == Some("val"))
        .map(|r| numeric(&r))
        .unwrap_or_default()
}

fn numeric(r: &Record) -> Vec<(String, f64)> {
    r.iter()
        .filter(|(k, _)| k.contains('.') || k.as_str() == "delta_m")
        .filter_map(|(k, v)| Some((k.clone(), v.as_f64()?)))
        .collect()
}

/// One line of the comparison table.
#[derive(Debug, Clone)]
pub struct RunSummary {
    pub run: PathBuf,
    pub name: String,
    pub method: String,
    pub seed: u64,
    pub metrics: Vec<(String, f64)>,
    pub delta_m: Option<f64>,
    /// Median seconds per training step over the logged windows.
    pub seconds_per_step: Option<f64>,
}

pub fn summarise(run: &Path, baselines: Option<&Baselines>) -> anyhow::Result<RunSummary> {
    let config_path = RunDir::new(run).config();
    if !config_path.is_file() {
        user_bail!("{}: not a run directory (no config.yaml)", run.display());
    }
    let cfg = Config::load(&config_path, &[])?;
    let metrics = last_val(run);
    let delta_m = match baselines {
        Some(b) => delta_m(&metrics, &b.metrics),
        None => metrics.iter().find(|(k, _)| k == "delta_m").map(|(_, v)| *v),
    };
    let mut per_step: Vec<f64> = report::read_records(&RunDir::new(run).metrics())
        .iter()
        .filter_map(|r| r.get("images_per_second").and_then(|v| v.as_f64()))
        .filter(|&ips| ips > 0.0)
        .map(|ips| cfg.data.batch_size as f64 / ips)
        .collect();
    per_step.sort_by(f64::total_cmp);
    let method = match cfg.balance.method.as_str() {
        "static" | "ew" | "uncertainty" | "dwa" | "gls" | "rlw" | "famo" => cfg.balance.method.clone(),
        m => format!("{m} ({:?})", cfg.balance.on).to_lowercase(),
    };
    Ok(RunSummary {
        run: run.to_path_buf(),
        name: cfg.name,
        method,
        seed: cfg.seed,
        metrics: metrics.into_iter().filter(|(k, _)| is_quality_metric(k)).collect(),
        delta_m,
        seconds_per_step: per_step.get(per_step.len() / 2).copied(),
    })
}

/// A Markdown table of runs: method, every quality metric, Δm, time per step (and relative to
/// the first run whose method is `static`).
pub fn table(rows: &[RunSummary]) -> String {
    let mut keys: Vec<String> = Vec::new();
    for r in rows {
        for (k, _) in &r.metrics {
            if !keys.contains(k) {
                keys.push(k.clone());
            }
        }
    }
    let reference = rows.iter().find(|r| r.method == "static").and_then(|r| r.seconds_per_step);
    let mut out = format!("| run | method | seed | {} | Δm % | s/step | × static |\n", keys.join(" | "));
    out.push_str(&format!("|{}\n", " --- |".repeat(keys.len() + 6)));
    for r in rows {
        let cells: Vec<String> = keys
            .iter()
            .map(|k| r.metrics.iter().find(|(m, _)| m == k).map(|(_, v)| format!("{v:.4}")).unwrap_or("–".into()))
            .collect();
        let dm = r.delta_m.map(|d| format!("{d:+.2}")).unwrap_or("–".into());
        let sps = r.seconds_per_step.map(|s| format!("{s:.4}")).unwrap_or("–".into());
        let rel = match (r.seconds_per_step, reference) {
            (Some(s), Some(b)) if b > 0.0 => format!("{:.2}", s / b),
            _ => "–".into(),
        };
        out.push_str(&format!(
            "| {} | {} | {} | {} | {dm} | {sps} | {rel} |\n",
            r.name,
            r.method,
            r.seed,
            cells.join(" | ")
        ));
    }
    out
}

/// One panel per val metric, one line per run, against the step.
pub fn comparison_series(rows: &[RunSummary]) -> Vec<crate::train::plot::Series> {
    let mut series = Vec::new();
    for r in rows {
        for rec in report::read_records(&RunDir::new(&r.run).metrics()) {
            if rec.get("split").and_then(|s| s.as_str()) != Some("val") {
                continue;
            }
            let Some(step) = rec.get("step").and_then(|s| s.as_f64()) else { continue };
            for (k, v) in numeric(&rec).into_iter().filter(|(k, _)| is_quality_metric(k) || k == "delta_m") {
                let label = format!("{} [{}]", r.name, r.method);
                match series.iter_mut().find(|s: &&mut crate::train::plot::Series| s.panel == k && s.label == label) {
                    Some(s) => s.points.push((step, v)),
                    None => series.push(crate::train::plot::Series { panel: k, label, points: vec![(step, v)] }),
                }
            }
        }
    }
    series
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delta_m_follows_the_convention() {
        let base: BTreeMap<String, f64> =
            [("a.accuracy".to_string(), 0.8), ("b.miou".to_string(), 0.5)].into_iter().collect();
        // 10% better accuracy, 10% worse mIoU: Δm = 100/2 * (-0.1 + 0.1) = 0.
        let m = vec![("a.accuracy".to_string(), 0.88), ("b.miou".to_string(), 0.45), ("a.loss".to_string(), 9.0)];
        assert!(delta_m(&m, &base).unwrap().abs() < 1e-9);
        // Both 10% better: −10.
        let m = vec![("a.accuracy".to_string(), 0.88), ("b.miou".to_string(), 0.55)];
        assert!((delta_m(&m, &base).unwrap() + 10.0).abs() < 1e-9);
        assert_eq!(delta_m(&[("c.accuracy".to_string(), 1.0)], &base), None);
    }

    #[test]
    fn single_task_config_keeps_the_recipe() {
        let cfg = Config::parse(crate::config::DEFAULT_CONFIG, "default", &["balance.method=pcgrad".into()]).unwrap();
        let s = single_task_config(&cfg, "seg").unwrap();
        assert_eq!(s.tasks.len(), 1);
        assert_eq!(s.tasks[0].name, "seg");
        assert_eq!(s.optim, cfg.optim);
        assert_eq!(s.balance.method, "static");
        assert_eq!(s.checkpoint.monitor, "seg.miou");
        assert!(!s.model.heads.contains_key("kind"));
        assert!(single_task_config(&cfg, "nope").is_err());
    }
}
