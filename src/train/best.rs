//! The best value of the monitored metric so far: which evaluation a `BEST` checkpoint holds.
use crate::checkpoint::BestMetric;
use crate::setup::Monitor;

/// Tracks `checkpoint.monitor` over the run's evaluations.
pub struct BestTracker {
    monitor: Monitor,
    best: Option<BestMetric>,
}

impl BestTracker {
    pub fn new(monitor: Monitor) -> Self {
        Self { monitor, best: None }
    }

    /// Continues from a checkpoint's record.
    pub fn restore(&mut self, best: Option<BestMetric>) {
        self.best = best;
    }

    pub fn best(&self) -> Option<&BestMetric> {
        self.best.as_ref()
    }

    /// Takes an evaluation's metrics at `step`; whether the monitored value improved (a first
    /// finite value counts). `loss` monitors the sum of the tasks' losses.
    pub fn offer(&mut self, metrics: &[(String, f64)], step: u64) -> bool {
        let key = &self.monitor.key;
        let value = if key == "loss" {
            metrics.iter().filter(|(k, _)| k.ends_with(".loss")).map(|(_, v)| v).sum()
        } else {
            metrics.iter().find(|(k, _)| k == key).map(|(_, v)| *v).unwrap_or(f64::NAN)
        };
        let better = match &self.best {
            None => value.is_finite(),
            Some(b) if self.monitor.higher_is_better => value > b.value,
            Some(b) => value < b.value,
        };
        if better {
            self.best = Some(BestMetric { metric: key.clone(), value, step });
        }
        better
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn metrics(v: f64) -> Vec<(String, f64)> {
        vec![("a.loss".into(), v), ("b.loss".into(), 1.0), ("a.acc".into(), v)]
    }

    #[test]
    fn improvements_follow_the_direction_and_skip_non_finite_values() {
        let mut up = BestTracker::new(Monitor { key: "a.acc".into(), higher_is_better: true });
        assert!(!up.offer(&metrics(f64::NAN), 1), "NaN is never best");
        assert!(up.offer(&metrics(0.5), 2) && !up.offer(&metrics(0.4), 3) && up.offer(&metrics(0.6), 4));
        assert_eq!(up.best().map(|b| (b.value, b.step)), Some((0.6, 4)));
        let mut down = BestTracker::new(Monitor { key: "loss".into(), higher_is_better: false });
        assert!(down.offer(&metrics(2.0), 1) && down.offer(&metrics(1.0), 2) && !down.offer(&metrics(1.5), 3));
        assert_eq!(down.best().map(|b| b.value), Some(2.0), "the sum of the tasks' losses");
    }
}
