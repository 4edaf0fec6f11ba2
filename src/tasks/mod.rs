//! Task kinds: how a head's logits are scored against its target (loss) and measured
//! (metrics accumulated on the device, read once per evaluation).
mod metrics;

pub use metrics::Meter;

use crate::config::{TaskConfig, TaskKind};
use tch::{Kind, Reduction, Tensor};

/// What PyTorch's cross_entropy uses for "ignore nothing".
const NO_IGNORE: i64 = -100;

/// One configured task.
#[derive(Debug, Clone)]
pub struct Task {
    pub name: String,
    pub kind: TaskKind,
    pub target: String,
    pub classes: i64,
    pub label_smoothing: f64,
    pub ignore_index: i64,
}

impl Task {
    pub fn from_config(t: &TaskConfig) -> Self {
        Self {
            name: t.name.clone(),
            kind: t.kind,
            target: t.target.clone(),
            classes: t.classes,
            label_smoothing: t.label_smoothing,
            ignore_index: t.ignore_index,
        }
    }

    /// Mean loss of a batch. `target` is int64 `[N]` (classification) or integer `[N, H, W]`
    /// (segmentation, pixels equal to `ignore_index` contribute nothing).
    pub fn loss(&self, logits: &Tensor, target: &Tensor) -> Tensor {
        let ignore = match self.kind {
            TaskKind::Classification => NO_IGNORE,
            TaskKind::Segmentation => self.ignore_index,
        };
        logits.cross_entropy_loss::<Tensor>(
            &target.to_kind(Kind::Int64),
            None,
            Reduction::Mean,
            ignore,
            self.label_smoothing,
        )
    }

    /// The metrics this task reports, in table order; the first is its main metric.
    pub fn metric_names(&self) -> Vec<&'static str> {
        match self.kind {
            TaskKind::Classification if self.classes > 5 => vec!["accuracy", "top5", "loss"],
            TaskKind::Classification => vec!["accuracy", "loss"],
            TaskKind::Segmentation => vec!["miou", "pixel_accuracy", "loss"],
        }
    }

    /// Whether a higher value of `metric` is better.
    pub fn higher_is_better(metric: &str) -> bool {
        metric != "loss"
    }

    pub fn meter(&self, device: tch::Device) -> Meter {
        Meter::new(self, device)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::TaskKind;

    fn task(kind: TaskKind, classes: i64) -> Task {
        Task {
            name: "t".into(),
            kind,
            target: "t".into(),
            classes,
            label_smoothing: 0.0,
            ignore_index: 255,
        }
    }

    #[test]
    fn classification_loss_matches_log_softmax() {
        let t = task(TaskKind::Classification, 3);
        let logits = Tensor::from_slice(&[1.0f32, 2.0, 3.0, 0.5, 0.5, 0.5]).view([2, 3]);
        let target = Tensor::from_slice(&[2i64, 0]);
        let got = t.loss(&logits, &target).double_value(&[]);
        let lse1 = (1f64.exp() + 2f64.exp() + 3f64.exp()).ln();
        let expected = ((lse1 - 3.0) + 3f64.ln()) / 2.0;
        assert!((got - expected).abs() < 1e-6, "{got} vs {expected}");
    }

    #[test]
    fn label_smoothing_spreads_mass() {
        let mut t = task(TaskKind::Classification, 2);
        t.label_smoothing = 0.2;
        let logits = Tensor::from_slice(&[0.0f32, 0.0]).view([1, 2]);
        let target = Tensor::from_slice(&[0i64]);
        // Uniform logits: the loss is ln 2 whatever the smoothing.
        assert!((t.loss(&logits, &target).double_value(&[]) - 2f64.ln()).abs() < 1e-6);
        let logits = Tensor::from_slice(&[10.0f32, 0.0]).view([1, 2]);
        let smooth = t.loss(&logits, &target).double_value(&[]);
        t.label_smoothing = 0.0;
        assert!(smooth > t.loss(&logits, &target).double_value(&[]));
    }

    #[test]
    fn segmentation_loss_skips_ignored_pixels() {
        let t = task(TaskKind::Segmentation, 2);
        // One image 1×2: pixel 0 is class 0, pixel 1 ignored with very wrong logits.
        let logits = Tensor::from_slice(&[5.0f32, -5.0, -5.0, 5.0]).view([1, 2, 1, 2]);
        let target = Tensor::from_slice(&[0u8, 255]).view([1, 1, 2]);
        let with_ignore = t.loss(&logits, &target).double_value(&[]);
        let expected = (1.0 + (-10f64).exp()).ln();
        assert!((with_ignore - expected).abs() < 1e-6);
    }
}
