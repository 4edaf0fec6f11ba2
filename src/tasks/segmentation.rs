//! `segmentation`: one class per pixel. Cross-entropy over the pixels that are not
//! `ignore_index`; mean IoU and pixel accuracy from a confusion matrix kept on the device.
use super::{cross_entropy, Metric, Prediction, QualityMeter, Task, TaskKind};
use crate::config::TaskConfig;
use crate::data::TargetShape;
use crate::model::HeadKind;
use tch::{Device, Kind, Tensor};

#[derive(Debug)]
pub struct Segmentation;

impl TaskKind for Segmentation {
    fn name(&self) -> &'static str {
        "segmentation"
    }

    fn target_shape(&self) -> TargetShape {
        TargetShape::PerPixel
    }

    fn has_classes(&self) -> bool {
        true
    }

    fn head(&self, task: &Task) -> HeadKind {
        HeadKind::Dense { channels: task.classes, unit_length: false }
    }

    /// `output` `[N, classes, H, W]` logits, `target` integer `[N, H, W]`; pixels equal to
    /// `ignore_index` contribute nothing.
    fn loss(&self, task: &Task, output: &Tensor, target: &Tensor) -> Tensor {
        cross_entropy(task, output, target, task.ignore_index)
    }

    fn metrics(&self, _task: &Task) -> Vec<Metric> {
        vec![Metric::higher("miou"), Metric::higher("pixel_accuracy")]
    }

    fn meter(&self, task: &Task, device: Device) -> Box<dyn QualityMeter> {
        Box::new(Meter {
            confusion: Tensor::zeros([task.classes * task.classes + 1], (Kind::Int64, device)),
            classes: task.classes,
            ignore_index: task.ignore_index,
        })
    }

    fn prediction(&self) -> Prediction {
        Prediction::ClassMask
    }

    fn check(&self, t: &TaskConfig) -> Result<(), String> {
        if t.ignore_index >= 0 && t.ignore_index < t.classes {
            return Err(format!("ignore_index: {} collides with a class label (0..{})", t.ignore_index, t.classes));
        }
        Ok(())
    }
}

/// `confusion[t, p]` counts pixels of true class t predicted as p; the extra last slot of the
/// flat buffer absorbs ignored pixels so no boolean masking (a host sync) is needed.
struct Meter {
    confusion: Tensor,
    classes: i64,
    ignore_index: i64,
}

impl QualityMeter for Meter {
    fn update(&mut self, logits: &Tensor, target: &Tensor) {
        let classes = self.classes;
        let target = target.to_kind(Kind::Int64);
        let pred = logits.argmax(1, false);
        let valid = target.ne(self.ignore_index).logical_and(&target.lt(classes));
        let overflow = Tensor::full_like(&target, classes * classes);
        let idx = target.g_mul_scalar(classes).g_add(&pred).where_self(&valid, &overflow);
        let ones = Tensor::ones_like(&idx);
        let _ = self.confusion.index_add_(0, &idx.flatten(0, -1), &ones.flatten(0, -1));
    }

    fn finish(&self) -> Vec<(&'static str, f64)> {
        let c = self.classes;
        let m: Vec<i64> =
            Vec::<i64>::try_from(self.confusion.narrow(0, 0, c * c).to_device(Device::Cpu)).unwrap_or_default();
        let (miou, pixel_accuracy) = iou_from_confusion(&m, c as usize);
        vec![("miou", miou), ("pixel_accuracy", pixel_accuracy)]
    }

    fn reduce(&mut self, sum: &dyn Fn(&Tensor) -> Tensor) {
        self.confusion = sum(&self.confusion);
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
    use crate::tasks::test_task;

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
    fn loss_skips_ignored_pixels() {
        let t = test_task("segmentation", 2);
        // One image 1×2: pixel 0 is class 0, pixel 1 ignored with very wrong logits.
        let logits = Tensor::from_slice(&[5.0f32, -5.0, -5.0, 5.0]).view([1, 2, 1, 2]);
        let target = Tensor::from_slice(&[0u8, 255]).view([1, 1, 2]);
        let with_ignore = t.loss(&logits, &target).double_value(&[]);
        let expected = (1.0 + (-10f64).exp()).ln();
        assert!((with_ignore - expected).abs() < 1e-6);
    }

    #[test]
    fn meter_ignores_pixels() {
        let t = test_task("segmentation", 2);
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
