//! Metric accumulators that live on the device: updating them never waits for the device;
//! only [`Meter::finish`] reads values back.
use super::Task;
use crate::config::TaskKind;
use tch::{Device, Kind, Tensor};

#[derive(Debug)]
pub enum Meter {
    Classification { correct: Tensor, top5: Tensor, loss_sum: Tensor, count: i64, top5_enabled: bool },
    /// `confusion[t, p]` counts pixels of true class t predicted as p; the extra last slot of
    /// the flat buffer absorbs ignored pixels so no boolean masking (a host sync) is needed.
    Segmentation { confusion: Tensor, loss_sum: Tensor, count: i64, classes: i64, ignore_index: i64 },
}

impl Meter {
    pub fn new(task: &Task, device: Device) -> Self {
        let zero = || Tensor::zeros([], (Kind::Double, device));
        match task.kind {
            TaskKind::Classification => Meter::Classification {
                correct: Tensor::zeros([], (Kind::Int64, device)),
                top5: Tensor::zeros([], (Kind::Int64, device)),
                loss_sum: zero(),
                count: 0,
                top5_enabled: task.classes > 5,
            },
            TaskKind::Segmentation => Meter::Segmentation {
                confusion: Tensor::zeros([task.classes * task.classes + 1], (Kind::Int64, device)),
                loss_sum: zero(),
                count: 0,
                classes: task.classes,
                ignore_index: task.ignore_index,
            },
        }
    }

    /// Adds one batch: `loss` is the batch's mean loss (a detached scalar).
    pub fn update(&mut self, logits: &Tensor, target: &Tensor, loss: &Tensor) {
        let n = logits.size()[0];
        match self {
            Meter::Classification { correct, top5, loss_sum, count, top5_enabled } => {
                let target = target.to_kind(Kind::Int64);
                let pred = logits.argmax(1, false);
                *correct += pred.eq_tensor(&target).sum(Kind::Int64);
                if *top5_enabled {
                    let (_, idx) = logits.topk(5, 1, true, false);
                    *top5 += idx.eq_tensor(&target.unsqueeze(1)).any_dim(1, false).sum(Kind::Int64);
                }
                *loss_sum += loss.to_kind(Kind::Double) * n as f64;
                *count += n;
            }
            Meter::Segmentation { confusion, loss_sum, count, classes, ignore_index } => {
                let target = target.to_kind(Kind::Int64);
                let pred = logits.argmax(1, false);
                let valid = target.ne(*ignore_index).logical_and(&target.lt(*classes));
                let overflow = Tensor::full_like(&target, *classes * *classes);
                let idx = target.g_mul_scalar(*classes).g_add(&pred).where_self(&valid, &overflow);
                let ones = Tensor::ones_like(&idx);
                let _ = confusion.index_add_(0, &idx.flatten(0, -1), &ones.flatten(0, -1));
                *loss_sum += loss.to_kind(Kind::Double) * n as f64;
                *count += n;
            }
        }
    }

    /// Reads the accumulated values: `(metric name, value)` in the task's table order.
    pub fn finish(&self) -> Vec<(&'static str, f64)> {
        match self {
            Meter::Classification { correct, top5, loss_sum, count, top5_enabled } => {
                let n = (*count).max(1) as f64;
                let mut out = vec![("accuracy", correct.int64_value(&[]) as f64 / n)];
                if *top5_enabled {
                    out.push(("top5", top5.int64_value(&[]) as f64 / n));
                }
                out.push(("loss", loss_sum.double_value(&[]) / n));
                out
            }
            Meter::Segmentation { confusion, loss_sum, count, classes, .. } => {
                let c = *classes;
                let m: Vec<i64> = Vec::<i64>::try_from(confusion.narrow(0, 0, c * c).to_device(Device::Cpu))
                    .unwrap_or_default();
                let (miou, pixel_accuracy) = iou_from_confusion(&m, c as usize);
                vec![
                    ("miou", miou),
                    ("pixel_accuracy", pixel_accuracy),
                    ("loss", loss_sum.double_value(&[]) / (*count).max(1) as f64),
                ]
            }
        }
    }
}

/// Mean IoU over the classes that occur in the targets or the predictions, and pixel accuracy,
/// from a row-major `classes × classes` confusion matrix (rows: truth, columns: prediction).
pub fn iou_from_confusion(m: &[i64], classes: usize) -> (f64, f64) {
    let at = |t: usize, p: usize| m[t * classes + p] as f64;
    let total: f64 = m.iter().map(|&v| v as f64).sum();
    let diag: f64 = (0..classes).map(|i| at(i, i)).sum();
    let ious: Vec<f64> = (0..classes)
        .filter_map(|k| {
            let tp = at(k, k);
            let fn_: f64 = (0..classes).map(|p| at(k, p)).sum::<f64>() - tp;
            let fp: f64 = (0..classes).map(|t| at(t, k)).sum::<f64>() - tp;
            let union = tp + fp + fn_;
            (union > 0.0).then(|| tp / union)
        })
        .collect();
    let miou = if ious.is_empty() { 0.0 } else { ious.iter().sum::<f64>() / ious.len() as f64 };
    let pixel_accuracy = if total > 0.0 { diag / total } else { 0.0 };
    (miou, pixel_accuracy)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn task(kind: TaskKind, classes: i64) -> Task {
        Task { name: "t".into(), kind, target: "t".into(), classes, label_smoothing: 0.0, ignore_index: 255 }
    }

    #[test]
    fn iou_of_a_known_confusion_matrix() {
        // truth 0: 3 right, 1 wrong; truth 1: 2 right.
        let (miou, acc) = iou_from_confusion(&[3, 1, 0, 2], 2);
        assert!((acc - 5.0 / 6.0).abs() < 1e-12);
        assert!((miou - (3.0 / 4.0 + 2.0 / 3.0) / 2.0).abs() < 1e-12);
    }

    #[test]
    fn classes_absent_everywhere_do_not_count() {
        let (miou, _) = iou_from_confusion(&[4, 0, 0, 0, 0, 0, 0, 0, 0], 3);
        assert!((miou - 1.0).abs() < 1e-12);
    }

    #[test]
    fn classification_meter_counts_top1_and_top5() {
        let t = task(TaskKind::Classification, 6);
        let mut m = t.meter(Device::Cpu);
        let logits = Tensor::from_slice(&[
            6.0f32, 5.0, 4.0, 3.0, 2.0, 1.0, // predicts 0; 5 is outside top-5
            1.0, 2.0, 3.0, 4.0, 5.0, 6.0, // predicts 5
        ])
        .view([2, 6]);
        let target = Tensor::from_slice(&[0i64, 0]);
        m.update(&logits, &target, &Tensor::from(0.5f32));
        let r = m.finish();
        assert_eq!(r[0], ("accuracy", 0.5));
        assert_eq!(r[1], ("top5", 0.5));
        assert!((r[2].1 - 0.5).abs() < 1e-9);
    }

    #[test]
    fn segmentation_meter_ignores_pixels() {
        let t = task(TaskKind::Segmentation, 2);
        let mut m = t.meter(Device::Cpu);
        // 1 image of 1×3 pixels; predictions 0, 1, 1; truth 0, 1, ignored.
        let logits = Tensor::from_slice(&[1.0f32, 0.0, 0.0, 0.0, 1.0, 1.0]).view([1, 2, 1, 3]);
        let target = Tensor::from_slice(&[0u8, 1, 255]).view([1, 1, 3]);
        m.update(&logits, &target, &Tensor::from(0.0f32));
        let r = m.finish();
        assert_eq!(r[0], ("miou", 1.0));
        assert_eq!(r[1], ("pixel_accuracy", 1.0));
    }
}
