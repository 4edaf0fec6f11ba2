//! Metric accumulators that live on the device: updating them never waits for the device;
//! only [`Meter::finish`] reads values back.
use super::Task;
use crate::config::TaskKind;
use tch::{Device, Kind, Tensor};

#[derive(Debug)]
pub enum Meter {
    Classification {
        correct: Tensor,
        top5: Tensor,
        loss_sum: Tensor,
        count: i64,
        top5_enabled: bool,
    },
    /// `confusion[t, p]` counts pixels of true class t predicted as p; the extra last slot of
    /// the flat buffer absorbs ignored pixels so no boolean masking (a host sync) is needed.
    Segmentation {
        confusion: Tensor,
        loss_sum: Tensor,
        count: i64,
        classes: i64,
        ignore_index: i64,
    },
    /// Sums over the valid (finite-target) pixels: |error|, |error| / |target| (pixels with a
    /// non-zero target), and the pixel counts.
    Regression {
        abs_sum: Tensor,
        rel_sum: Tensor,
        valid: Tensor,
        rel_valid: Tensor,
        loss_sum: Tensor,
        count: i64,
    },
    /// Angle errors in degrees over the valid pixels: their sum, the counts below 11.25°, 22.5°
    /// and 30°, and a histogram of [`ANGLE_BIN`]-wide bins (last slot: invalid pixels) for the
    /// median.
    Normals {
        angle_sum: Tensor,
        within: Tensor,
        histogram: Tensor,
        loss_sum: Tensor,
        count: i64,
    },
}

/// Width in degrees of the angle histogram's bins: the median's resolution.
pub const ANGLE_BIN: f64 = 0.01;
const ANGLE_BINS: i64 = (180.0 / ANGLE_BIN) as i64;
/// The thresholds of `within_11_25`, `within_22_5`, `within_30`.
pub const ANGLE_THRESHOLDS: [f64; 3] = [11.25, 22.5, 30.0];

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
            TaskKind::Regression => Meter::Regression {
                abs_sum: zero(),
                rel_sum: zero(),
                valid: zero(),
                rel_valid: zero(),
                loss_sum: zero(),
                count: 0,
            },
            TaskKind::Normals => Meter::Normals {
                angle_sum: zero(),
                within: Tensor::zeros([3], (Kind::Int64, device)),
                histogram: Tensor::zeros([ANGLE_BINS + 1], (Kind::Int64, device)),
                loss_sum: zero(),
                count: 0,
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
            Meter::Regression { abs_sum, rel_sum, valid, rel_valid, loss_sum, count } => {
                let pred = logits.squeeze_dim(1).to_kind(Kind::Double);
                let target = target.to_kind(Kind::Double);
                let ok = target.isfinite();
                let t = target.nan_to_num(0.0, None, None);
                let err = (pred - &t).abs().where_scalarother(&ok, 0.0);
                let rel_ok = ok.logical_and(&t.ne(0.0));
                *abs_sum += err.sum(Kind::Double);
                *rel_sum += (&err / t.abs()).where_scalarother(&rel_ok, 0.0).sum(Kind::Double);
                *valid += ok.sum(Kind::Double);
                *rel_valid += rel_ok.sum(Kind::Double);
                *loss_sum += loss.to_kind(Kind::Double) * n as f64;
                *count += n;
            }
            Meter::Normals { angle_sum, within, histogram, loss_sum, count } => {
                let target = target.to_kind(Kind::Double);
                let ok = target.isfinite().all_dim(1, false);
                let cos = (logits.to_kind(Kind::Double) * target.nan_to_num(0.0, None, None))
                    .sum_dim_intlist(1, false, Kind::Double)
                    .clamp(-1.0, 1.0);
                let angle = cos.acos() * (180.0 / std::f64::consts::PI);
                *angle_sum += angle.where_scalarother(&ok, 0.0).sum(Kind::Double);
                let below: Vec<Tensor> =
                    ANGLE_THRESHOLDS.iter().map(|&a| angle.lt(a).logical_and(&ok).sum(Kind::Int64)).collect();
                *within += Tensor::stack(&below, 0);
                let bin = (&angle / ANGLE_BIN).floor().clamp(0.0, (ANGLE_BINS - 1) as f64).to_kind(Kind::Int64);
                let idx = bin.where_self(&ok, &Tensor::full_like(&bin, ANGLE_BINS)).flatten(0, -1);
                let _ = histogram.index_add_(0, &idx, &Tensor::ones_like(&idx));
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
                let m: Vec<i64> =
                    Vec::<i64>::try_from(confusion.narrow(0, 0, c * c).to_device(Device::Cpu)).unwrap_or_default();
                let (miou, pixel_accuracy) = iou_from_confusion(&m, c as usize);
                vec![
                    ("miou", miou),
                    ("pixel_accuracy", pixel_accuracy),
                    ("loss", loss_sum.double_value(&[]) / (*count).max(1) as f64),
                ]
            }
            Meter::Regression { abs_sum, rel_sum, valid, rel_valid, loss_sum, count } => {
                let ratio = |a: &Tensor, b: &Tensor| a.double_value(&[]) / b.double_value(&[]).max(1.0);
                vec![
                    ("abs_error", ratio(abs_sum, valid)),
                    ("rel_error", ratio(rel_sum, rel_valid)),
                    ("loss", loss_sum.double_value(&[]) / (*count).max(1) as f64),
                ]
            }
            Meter::Normals { angle_sum, within, histogram, loss_sum, count } => {
                let hist: Vec<i64> =
                    Vec::try_from(histogram.narrow(0, 0, ANGLE_BINS).to_device(Device::Cpu)).unwrap_or_default();
                let valid: i64 = hist.iter().sum();
                let n = valid.max(1) as f64;
                let within: Vec<i64> = Vec::try_from(within.to_device(Device::Cpu)).unwrap_or_default();
                vec![
                    ("mean_angle", angle_sum.double_value(&[]) / n),
                    ("median_angle", median_of_histogram(&hist, ANGLE_BIN)),
                    ("within_11_25", within[0] as f64 / n),
                    ("within_22_5", within[1] as f64 / n),
                    ("within_30", within[2] as f64 / n),
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

/// The median of values binned into `width`-wide bins starting at 0, interpolated linearly
/// within its bin (exact to within one bin); 0 for an empty histogram.
pub fn median_of_histogram(hist: &[i64], width: f64) -> f64 {
    let total: i64 = hist.iter().sum();
    if total == 0 {
        return 0.0;
    }
    let half = total as f64 / 2.0;
    let mut below = 0.0;
    for (k, &c) in hist.iter().enumerate() {
        let c = c as f64;
        if below + c >= half && c > 0.0 {
            return (k as f64 + (half - below) / c) * width;
        }
        below += c;
    }
    hist.len() as f64 * width
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
    fn regression_meter_reports_absolute_and_relative_error_over_valid_pixels() {
        let t = task(TaskKind::Regression, 0);
        let mut m = t.meter(Device::Cpu);
        let pred = Tensor::from_slice(&[1.0f32, 3.0, 5.0, 7.0]).view([1, 1, 2, 2]);
        let target = Tensor::from_slice(&[2.0f32, 3.0, 4.0, f32::NAN]).view([1, 2, 2]);
        m.update(&pred, &target, &Tensor::from(1.0f32));
        // A second batch with one pixel: error 2 against a target of 0 (no relative error).
        m.update(
            &Tensor::from_slice(&[2.0f32]).view([1, 1, 1, 1]),
            &Tensor::from_slice(&[0.0f32]).view([1, 1, 1]),
            &Tensor::from(3.0f32),
        );
        let r = m.finish();
        assert_eq!(r.iter().map(|x| x.0).collect::<Vec<_>>(), t.metric_names());
        assert!((r[0].1 - (1.0 + 0.0 + 1.0 + 2.0) / 4.0).abs() < 1e-12, "{r:?}");
        assert!((r[1].1 - (0.5 + 0.0 + 0.25) / 3.0).abs() < 1e-12, "{r:?}");
        assert!((r[2].1 - 2.0).abs() < 1e-9);
    }

    #[test]
    fn normals_meter_measures_angles() {
        let t = task(TaskKind::Normals, 0);
        let mut m = t.meter(Device::Cpu);
        // Predictions at 0°, 10°, 20°, 45°, 90° from +z, one invalid pixel.
        let angles = [0.0f64, 10.0, 20.0, 45.0, 90.0, 0.0];
        let mut pred = vec![0f32; 18];
        let mut target = vec![0f32; 18];
        for (p, a) in angles.iter().enumerate() {
            let r = a.to_radians();
            pred[p] = r.sin() as f32; // x
            pred[12 + p] = r.cos() as f32; // z
            target[12 + p] = if p == 5 { f32::NAN } else { 1.0 };
        }
        m.update(
            &Tensor::from_slice(&pred).view([1, 3, 2, 3]),
            &Tensor::from_slice(&target).view([1, 3, 2, 3]),
            &Tensor::from(0.0f32),
        );
        let r: std::collections::BTreeMap<_, _> = m.finish().into_iter().collect();
        assert!((r["mean_angle"] - 33.0).abs() < 1e-3, "{r:?}");
        assert!((r["median_angle"] - 20.0).abs() <= ANGLE_BIN, "{r:?}");
        assert_eq!((r["within_11_25"], r["within_22_5"], r["within_30"]), (0.4, 0.6, 0.6));
        assert_eq!(t.metric_names().len(), r.len());
    }

    #[test]
    fn histogram_median_interpolates_within_the_bin() {
        assert_eq!(median_of_histogram(&[0, 0, 0], 1.0), 0.0);
        assert_eq!(median_of_histogram(&[2, 0, 2], 1.0), 1.0);
        assert_eq!(median_of_histogram(&[0, 4, 0], 0.5), 0.75);
        assert_eq!(median_of_histogram(&[1, 1, 1, 1], 1.0), 2.0);
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
