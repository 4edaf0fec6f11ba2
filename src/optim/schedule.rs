//! Learning-rate schedules as pure functions of the step: nothing to save, exact on resume.
use crate::config::{ScheduleConfig, ScheduleKind};
use std::f64::consts::PI;

#[derive(Debug, Clone)]
pub struct Schedule {
    cfg: ScheduleConfig,
    peak: f64,
    total_steps: u64,
    steps_per_epoch: u64,
}

impl Schedule {
    pub fn new(cfg: &ScheduleConfig, peak_lr: f64, total_steps: u64, steps_per_epoch: u64) -> Self {
        Self {
            cfg: cfg.clone(),
            peak: peak_lr,
            total_steps: total_steps.max(1),
            steps_per_epoch: steps_per_epoch.max(1),
        }
    }

    /// The LR for the update at 0-based `step`.
    pub fn lr(&self, step: u64) -> f64 {
        let warm = self.cfg.warmup_steps;
        if step < warm {
            return self.peak * (step + 1) as f64 / warm as f64;
        }
        let min = self.peak * self.cfg.min_lr_ratio;
        let span = self.total_steps.saturating_sub(warm).max(1) as f64;
        let progress = ((step - warm) as f64 / span).min(1.0);
        match self.cfg.kind {
            ScheduleKind::Constant => self.peak,
            ScheduleKind::Cosine => min + (self.peak - min) * 0.5 * (1.0 + (PI * progress).cos()),
            ScheduleKind::Step => {
                let epoch = step / self.steps_per_epoch;
                self.peak * self.cfg.gamma.powi((epoch / self.cfg.step_size.max(1)) as i32)
            }
            ScheduleKind::Onecycle => {
                // Cosine up from peak/25 to the peak over pct_start, then cosine down to min.
                let start = self.peak / 25.0;
                let p = self.cfg.pct_start;
                if progress < p {
                    let q = progress / p;
                    start + (self.peak - start) * 0.5 * (1.0 - (PI * q).cos())
                } else {
                    let q = (progress - p) / (1.0 - p).max(1e-12);
                    min + (self.peak - min) * 0.5 * (1.0 + (PI * q).cos())
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(kind: ScheduleKind, warmup: u64) -> ScheduleConfig {
        ScheduleConfig { kind, warmup_steps: warmup, ..ScheduleConfig::default() }
    }

    #[test]
    fn warmup_rises_linearly_to_the_peak() {
        let s = Schedule::new(&cfg(ScheduleKind::Constant, 4), 1.0, 100, 10);
        assert_eq!(s.lr(0), 0.25);
        assert_eq!(s.lr(3), 1.0);
        assert_eq!(s.lr(50), 1.0);
    }

    #[test]
    fn cosine_goes_from_peak_to_min() {
        let mut c = cfg(ScheduleKind::Cosine, 0);
        c.min_lr_ratio = 0.1;
        let s = Schedule::new(&c, 1.0, 100, 10);
        assert!((s.lr(0) - 1.0).abs() < 1e-12);
        assert!((s.lr(50) - 0.55).abs() < 1e-12);
        assert!((s.lr(100) - 0.1).abs() < 1e-12);
    }

    #[test]
    fn step_decays_every_step_size_epochs() {
        let mut c = cfg(ScheduleKind::Step, 0);
        c.step_size = 2;
        c.gamma = 0.5;
        let s = Schedule::new(&c, 1.0, 100, 10);
        assert_eq!(s.lr(19), 1.0);
        assert_eq!(s.lr(20), 0.5);
        assert_eq!(s.lr(45), 0.25);
    }

    #[test]
    fn onecycle_peaks_at_pct_start() {
        let s = Schedule::new(&cfg(ScheduleKind::Onecycle, 0), 1.0, 100, 10);
        assert!((s.lr(0) - 0.04).abs() < 1e-12);
        assert!((s.lr(30) - 1.0).abs() < 1e-12);
        assert!(s.lr(99) < 0.01);
    }
}
