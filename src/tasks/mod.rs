//! Task kinds: how a head's logits are scored against its target (loss) and measured
//! (metrics accumulated on the device, read once per evaluation).
mod metrics;

pub use metrics::Meter;

use crate::config::{TaskConfig, TaskKind};
use tch::{Kind, Reduction, Tensor};

/// What PyTorch's cross_entropy uses for "ignore nothing".
const NO_IGNORE: i64 = -100;

/// Metrics (of any task kind, and the run-level Δm) for which lower is better.
pub const LOWER_IS_BETTER: [&str; 6] = ["loss", "abs_error", "rel_error", "mean_angle", "median_angle", "delta_m"];

/// Mean |prediction − target| over the pixels whose target is finite (0 when there are none).
/// `pred` `[N, 1, H, W]`, `target` `[N, H, W]`.
pub fn masked_l1(pred: &Tensor, target: &Tensor) -> Tensor {
    let valid = target.isfinite();
    let err = (pred.squeeze_dim(1) - target.nan_to_num(0.0, None, None)).abs().where_scalarother(&valid, 0.0);
    err.sum(Kind::Float) / valid.sum(Kind::Float).clamp_min(1.0)
}

/// Mean 1 − ⟨prediction, target⟩ over the pixels whose target vector is finite. `pred` and
/// `target` `[N, 3, H, W]`, the prediction unit-length.
pub fn cosine_loss(pred: &Tensor, target: &Tensor) -> Tensor {
    let valid = target.isfinite().all_dim(1, false);
    let cos = (pred * target.nan_to_num(0.0, None, None)).sum_dim_intlist(1, false, Kind::Float);
    let loss = (cos.neg() + 1.0).where_scalarother(&valid, 0.0);
    loss.sum(Kind::Float) / valid.sum(Kind::Float).clamp_min(1.0)
}

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

    /// Mean loss of a batch. `target` is int64 `[N]` (classification), integer `[N, H, W]`
    /// (segmentation, pixels equal to `ignore_index` contribute nothing), float `[N, H, W]`
    /// (regression: masked L1 over the finite pixels; the head's output is `[N, 1, H, W]`) or
    /// float `[N, 3, H, W]` (normals: 1 − cosine over the pixels whose three components are
    /// finite; the head's output is unit-length).
    pub fn loss(&self, logits: &Tensor, target: &Tensor) -> Tensor {
        let ignore = match self.kind {
            TaskKind::Classification => NO_IGNORE,
            TaskKind::Segmentation => self.ignore_index,
            TaskKind::Regression => return masked_l1(logits, target),
            TaskKind::Normals => return cosine_loss(logits, target),
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
            TaskKind::Regression => vec!["abs_error", "rel_error", "loss"],
            TaskKind::Normals => {
                vec!["mean_angle", "median_angle", "within_11_25", "within_22_5", "within_30", "loss"]
            }
        }
    }

    /// Whether a higher value of `metric` is better (Δm and checkpoint selection use it).
    pub fn higher_is_better(metric: &str) -> bool {
        !LOWER_IS_BETTER.contains(&metric)
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
        Task { name: "t".into(), kind, target: "t".into(), classes, label_smoothing: 0.0, ignore_index: 255 }
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
    fn regression_loss_is_l1_over_valid_pixels() {
        let t = task(TaskKind::Regression, 0);
        let pred = Tensor::from_slice(&[1.0f32, 2.0, 3.0, 100.0]).view([1, 1, 2, 2]);
        let target = Tensor::from_slice(&[1.5f32, 0.0, 3.0, f32::NAN]).view([1, 2, 2]);
        let loss = t.loss(&pred, &target);
        assert!((loss.double_value(&[]) - (0.5 + 2.0 + 0.0) / 3.0).abs() < 1e-6);
        // The invalid pixel gets no gradient; the others ±1/3.
        let pred = pred.set_requires_grad(true);
        t.loss(&pred, &target).backward();
        let g = Vec::<f32>::try_from(pred.grad().flatten(0, -1)).unwrap();
        assert_eq!(g, [-1.0 / 3.0, 1.0 / 3.0, 0.0, 0.0]);
        let none = Tensor::full([1, 2, 2], f64::NAN, (Kind::Float, tch::Device::Cpu));
        assert_eq!(t.loss(&pred, &none).double_value(&[]), 0.0);
    }

    #[test]
    fn normals_loss_is_one_minus_cosine_over_valid_pixels() {
        let t = task(TaskKind::Normals, 0);
        // Pixel 0: same direction (0); pixel 1: orthogonal (1); pixel 2: opposite (2), invalid.
        let pred = Tensor::from_slice(&[1.0f32, 1.0, 1.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0]).view([1, 3, 1, 3]);
        let target = Tensor::from_slice(&[1.0f32, 0.0, -1.0, 0.0, 1.0, 0.0, 0.0, 0.0, f32::NAN]).view([1, 3, 1, 3]);
        assert!((t.loss(&pred, &target).double_value(&[]) - 0.5).abs() < 1e-6);
        for m in ["abs_error", "rel_error", "mean_angle", "median_angle", "loss", "delta_m"] {
            assert!(!Task::higher_is_better(m), "{m}");
        }
        for m in ["within_11_25", "within_22_5", "within_30", "miou", "accuracy"] {
            assert!(Task::higher_is_better(m), "{m}");
        }
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
