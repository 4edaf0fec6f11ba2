//! Single-task baselines and Δm, the multi-task literature's summary of a run.
//!
//! Δm = (100 / K) Σ_k (−1)^{δ_k} (M_k − B_k) / B_k over the K quality metrics (every metric but
//! the losses), δ_k = 1 when higher is better: lower Δm is better, negative means the multi-task
//! model beats its single-task baselines (the Nash-MTL / FAMO convention; docs/results/METHODS.md).
use super::Task;
use crate::user_error;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::Path;

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
        let text = crate::files::read_to_string(path, crate::files::TEXT_LIMIT)
            .map_err(|e| user_error!("{e} (baselines are written by `mtl-train baselines`)"))?;
        serde_json::from_str(&text).map_err(|e| user_error!("{}: not a baselines file: {e}", path.display()))
    }

    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).expect("baselines always serialise")
    }
}

/// Whether a logged `<task>.<key>` is a quality metric: losses are what is optimised, not
/// measured, and weights are the balancer's.
pub fn is_quality_metric(key: &str) -> bool {
    key.rsplit_once('.').is_some_and(|(_, m)| m != super::LOSS.name && m != "weight" && !is_gate_weight(m))
}

/// `gate<k>`: a gated architecture's mean weight of expert k (what the task reads, not how
/// well it does).
pub fn is_gate_weight(metric: &str) -> bool {
    metric.strip_prefix("gate").is_some_and(|k| !k.is_empty() && k.bytes().all(|b| b.is_ascii_digit()))
}

/// Δm of `metrics` against `baselines` over the quality metrics both have, each signed by its
/// task's direction; None when they share none.
pub fn delta_m(metrics: &[(String, f64)], baselines: &BTreeMap<String, f64>, tasks: &[Task]) -> Option<f64> {
    let terms: Vec<f64> = metrics
        .iter()
        .filter(|(k, _)| is_quality_metric(k))
        .filter_map(|(k, m)| {
            let b = *baselines.get(k)?;
            if b == 0.0 {
                return None;
            }
            let (task, metric) = k.split_once('.')?;
            let higher = tasks.iter().find(|t| t.name == task)?.higher_is_better(metric)?;
            let sign = if higher { -1.0 } else { 1.0 };
            Some(sign * (m - b) / b)
        })
        .collect();
    // `+ 0.0` turns a −0 (an exact tie) into 0.
    (!terms.is_empty()).then(|| 100.0 * terms.iter().sum::<f64>() / terms.len() as f64 + 0.0)
}

/// The direction of Δm, said wherever a value is shown (a negative Δm is the good side).
pub const DELTA_M_DIRECTION: &str = "lower is better";

/// Δm as a signed percentage with a typographic minus: `−3.57`, `+0.00`.
pub fn signed_percent(value: f64) -> String {
    format!("{:+.2}", value + 0.0).replace('-', "\u{2212}")
}

/// Δm as every report shows it: `Δm −3.57 % (lower is better)`.
pub fn describe_delta_m(value: f64) -> String {
    format!("Δm {} % ({DELTA_M_DIRECTION})", signed_percent(value))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tasks::test_task;

    #[test]
    fn delta_m_is_shown_with_its_sign_unit_and_direction() {
        assert_eq!(describe_delta_m(-3.5717), "Δm \u{2212}3.57 % (lower is better)");
        assert_eq!(describe_delta_m(12.0), "Δm +12.00 % (lower is better)");
        assert_eq!(signed_percent(-0.0), "+0.00");
    }

    #[test]
    fn delta_m_follows_the_convention() {
        let mut a = test_task("classification", 10);
        a.name = "a".into();
        let mut b = test_task("segmentation", 3);
        b.name = "b".into();
        let mut c = test_task("regression", 0);
        c.name = "c".into();
        let tasks = [a, b, c];
        let base: BTreeMap<String, f64> =
            [("a.accuracy".to_string(), 0.8), ("b.miou".to_string(), 0.5), ("c.abs_error".to_string(), 2.0)]
                .into_iter()
                .collect();
        // 10% better accuracy, 10% worse mIoU: Δm = 100/2 * (-0.1 + 0.1) = 0.
        let m = vec![("a.accuracy".to_string(), 0.88), ("b.miou".to_string(), 0.45), ("a.loss".to_string(), 9.0)];
        assert!(delta_m(&m, &base, &tasks).unwrap().abs() < 1e-9);
        // Both 10% better: −10.
        let m = vec![("a.accuracy".to_string(), 0.88), ("b.miou".to_string(), 0.55)];
        assert!((delta_m(&m, &base, &tasks).unwrap() + 10.0).abs() < 1e-9);
        // An error 10% lower is 10% better.
        let m = vec![("c.abs_error".to_string(), 1.8)];
        assert!((delta_m(&m, &base, &tasks).unwrap() + 10.0).abs() < 1e-9);
        assert_eq!(delta_m(&[("d.accuracy".to_string(), 1.0)], &base, &tasks), None);
    }
}
