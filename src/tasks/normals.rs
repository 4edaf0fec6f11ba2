//! `normals`: one unit vector per pixel (surface normals). Loss 1 − cosine over the pixels
//! whose three target components are finite; angle error statistics in degrees.
use super::{Metric, Prediction, QualityMeter, Task, TaskKind};
use crate::data::TargetShape;
use crate::model::HeadKind;
use tch::{Device, Kind, Tensor};

#[derive(Debug)]
pub struct Normals;

/// Width in degrees of the angle histogram's bins: the median's resolution.
pub const ANGLE_BIN: f64 = 0.01;
const ANGLE_BINS: i64 = (180.0 / ANGLE_BIN) as i64;
/// The thresholds of `within_11_25`, `within_22_5`, `within_30`.
pub const ANGLE_THRESHOLDS: [f64; 3] = [11.25, 22.5, 30.0];

impl TaskKind for Normals {
    fn name(&self) -> &'static str {
        "normals"
    }

    fn target_shape(&self) -> TargetShape {
        TargetShape::PerPixelNormal
    }

    fn has_classes(&self) -> bool {
        false
    }

    fn head(&self, _task: &Task) -> HeadKind {
        HeadKind::Dense { channels: 3, unit_length: true }
    }

    /// `output` and `target` `[N, 3, H, W]`, the output unit-length.
    fn loss(&self, _task: &Task, output: &Tensor, target: &Tensor) -> Tensor {
        cosine_loss(output, target)
    }

    fn metrics(&self, _task: &Task) -> Vec<Metric> {
        vec![
            Metric::lower("mean_angle"),
            Metric::lower("median_angle"),
            Metric::higher("within_11_25"),
            Metric::higher("within_22_5"),
            Metric::higher("within_30"),
        ]
    }

    fn meter(&self, _task: &Task, device: Device) -> Box<dyn QualityMeter> {
        Box::new(Meter {
            angle_sum: Tensor::zeros([], (Kind::Double, device)),
            within: Tensor::zeros([3], (Kind::Int64, device)),
            histogram: Tensor::zeros([ANGLE_BINS + 1], (Kind::Int64, device)),
        })
    }

    fn prediction(&self) -> Prediction {
        Prediction::Values
    }
}

/// Mean 1 − ⟨prediction, target⟩ over the pixels whose target vector is finite. `pred` and
/// `target` `[N, 3, H, W]`, the prediction unit-length.
pub fn cosine_loss(pred: &Tensor, target: &Tensor) -> Tensor {
    let valid = target.isfinite().all_dim(1, false);
    let cos = (pred * target.nan_to_num(0.0, None, None)).sum_dim_intlist(1, false, Kind::Float);
    let loss = (cos.neg() + 1.0).where_scalarother(&valid, 0.0);
    loss.sum(Kind::Float) / valid.sum(Kind::Float).clamp_min(1.0)
}

/// Angle errors in degrees over the valid pixels: their sum, the counts below 11.25°, 22.5°
/// and 30°, and a histogram of [`ANGLE_BIN`]-wide bins (last slot: invalid pixels) for the
/// median.
struct Meter {
    angle_sum: Tensor,
    within: Tensor,
    histogram: Tensor,
}

impl QualityMeter for Meter {
    fn update(&mut self, output: &Tensor, target: &Tensor) {
        let target = target.to_kind(Kind::Double);
        let ok = target.isfinite().all_dim(1, false);
        let cos = (output.to_kind(Kind::Double) * target.nan_to_num(0.0, None, None))
            .sum_dim_intlist(1, false, Kind::Double)
            .clamp(-1.0, 1.0);
        let angle = cos.acos() * (180.0 / std::f64::consts::PI);
        self.angle_sum += angle.where_scalarother(&ok, 0.0).sum(Kind::Double);
        let below: Vec<Tensor> =
            ANGLE_THRESHOLDS.iter().map(|&a| angle.lt(a).logical_and(&ok).sum(Kind::Int64)).collect();
        self.within += Tensor::stack(&below, 0);
        let bin = (&angle / ANGLE_BIN).floor().clamp(0.0, (ANGLE_BINS - 1) as f64).to_kind(Kind::Int64);
        let idx = bin.where_self(&ok, &Tensor::full_like(&bin, ANGLE_BINS)).flatten(0, -1);
        let _ = self.histogram.index_add_(0, &idx, &Tensor::ones_like(&idx));
    }

    fn finish(&self) -> Vec<(&'static str, f64)> {
        let hist: Vec<i64> =
            Vec::try_from(self.histogram.narrow(0, 0, ANGLE_BINS).to_device(Device::Cpu)).unwrap_or_default();
        let valid: i64 = hist.iter().sum();
        let n = valid.max(1) as f64;
        let within: Vec<i64> = Vec::try_from(self.within.to_device(Device::Cpu)).unwrap_or_default();
        vec![
            ("mean_angle", self.angle_sum.double_value(&[]) / n),
            ("median_angle", median_of_histogram(&hist, ANGLE_BIN)),
            ("within_11_25", within[0] as f64 / n),
            ("within_22_5", within[1] as f64 / n),
            ("within_30", within[2] as f64 / n),
        ]
    }

    fn reduce(&mut self, sum: &dyn Fn(&Tensor) -> Tensor) {
        for t in [&mut self.angle_sum, &mut self.within, &mut self.histogram] {
            *t = sum(t);
        }
    }
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
    use crate::tasks::test_task;

    #[test]
    fn loss_is_one_minus_cosine_over_valid_pixels() {
        let t = test_task("normals", 0);
        // Pixel 0: same direction (0); pixel 1: orthogonal (1); pixel 2: opposite (2), invalid.
        let pred = Tensor::from_slice(&[1.0f32, 1.0, 1.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0]).view([1, 3, 1, 3]);
        let target = Tensor::from_slice(&[1.0f32, 0.0, -1.0, 0.0, 1.0, 0.0, 0.0, 0.0, f32::NAN]).view([1, 3, 1, 3]);
        assert!((t.loss(&pred, &target).double_value(&[]) - 0.5).abs() < 1e-6);
        for m in ["mean_angle", "median_angle", "loss"] {
            assert_eq!(t.higher_is_better(m), Some(false), "{m}");
        }
        for m in ["within_11_25", "within_22_5", "within_30"] {
            assert_eq!(t.higher_is_better(m), Some(true), "{m}");
        }
    }

    #[test]
    fn meter_measures_angles() {
        let t = test_task("normals", 0);
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
}
