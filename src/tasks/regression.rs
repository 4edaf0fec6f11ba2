//! `regression`: one value per pixel (depth). Masked L1 loss over the pixels whose target is
//! finite; absolute and relative error over the same pixels.
use super::{Metric, Prediction, QualityMeter, Task, TaskKind};
use crate::data::TargetShape;
use crate::model::HeadKind;
use tch::{Device, Kind, Tensor};

#[derive(Debug)]
pub struct Regression;

impl TaskKind for Regression {
    fn name(&self) -> &'static str {
        "regression"
    }

    fn target_shape(&self) -> TargetShape {
        TargetShape::PerPixelDepth
    }

    fn has_classes(&self) -> bool {
        false
    }

    fn head(&self, _task: &Task) -> HeadKind {
        HeadKind::Dense { channels: 1, unit_length: false }
    }

    /// `output` `[N, 1, H, W]`, `target` float `[N, H, W]` (NaN: invalid).
    fn loss(&self, _task: &Task, output: &Tensor, target: &Tensor) -> Tensor {
        masked_l1(output, target)
    }

    fn metrics(&self, _task: &Task) -> Vec<Metric> {
        vec![Metric::lower("abs_error"), Metric::lower("rel_error")]
    }

    fn meter(&self, _task: &Task, device: Device) -> Box<dyn QualityMeter> {
        let zero = || Tensor::zeros([], (Kind::Double, device));
        Box::new(Meter { abs_sum: zero(), rel_sum: zero(), valid: zero(), rel_valid: zero() })
    }

    fn prediction(&self) -> Prediction {
        Prediction::Values
    }
}

/// Mean |prediction − target| over the pixels whose target is finite (0 when there are none).
/// `pred` `[N, 1, H, W]`, `target` `[N, H, W]`.
pub fn masked_l1(pred: &Tensor, target: &Tensor) -> Tensor {
    let valid = target.isfinite();
    let err = (pred.squeeze_dim(1) - target.nan_to_num(0.0, None, None)).abs().where_scalarother(&valid, 0.0);
    err.sum(Kind::Float) / valid.sum(Kind::Float).clamp_min(1.0)
}

/// Sums over the valid (finite-target) pixels: |error|, |error| / |target| (pixels with a
/// non-zero target), and the pixel counts.
struct Meter {
    abs_sum: Tensor,
    rel_sum: Tensor,
    valid: Tensor,
    rel_valid: Tensor,
}

impl QualityMeter for Meter {
    fn update(&mut self, output: &Tensor, target: &Tensor) {
        let pred = output.squeeze_dim(1).to_kind(Kind::Double);
        let target = target.to_kind(Kind::Double);
        let ok = target.isfinite();
        let t = target.nan_to_num(0.0, None, None);
        let err = (pred - &t).abs().where_scalarother(&ok, 0.0);
        let rel_ok = ok.logical_and(&t.ne(0.0));
        self.abs_sum += err.sum(Kind::Double);
        self.rel_sum += (&err / t.abs()).where_scalarother(&rel_ok, 0.0).sum(Kind::Double);
        self.valid += ok.sum(Kind::Double);
        self.rel_valid += rel_ok.sum(Kind::Double);
    }

    fn finish(&self) -> Vec<(&'static str, f64)> {
        let ratio = |a: &Tensor, b: &Tensor| a.double_value(&[]) / b.double_value(&[]).max(1.0);
        vec![("abs_error", ratio(&self.abs_sum, &self.valid)), ("rel_error", ratio(&self.rel_sum, &self.rel_valid))]
    }

    fn reduce(&mut self, sum: &dyn Fn(&Tensor) -> Tensor) {
        for t in [&mut self.abs_sum, &mut self.rel_sum, &mut self.valid, &mut self.rel_valid] {
            *t = sum(t);
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::tasks::test_task;
    use tch::{Device, Kind, Tensor};

    #[test]
    fn loss_is_l1_over_valid_pixels() {
        let t = test_task("regression", 0);
        let pred = Tensor::from_slice(&[1.0f32, 2.0, 3.0, 100.0]).view([1, 1, 2, 2]);
        let target = Tensor::from_slice(&[1.5f32, 0.0, 3.0, f32::NAN]).view([1, 2, 2]);
        let loss = t.loss(&pred, &target);
        assert!((loss.double_value(&[]) - (0.5 + 2.0 + 0.0) / 3.0).abs() < 1e-6);
        // The invalid pixel gets no gradient; the others ±1/3.
        let pred = pred.set_requires_grad(true);
        t.loss(&pred, &target).backward();
        let g = Vec::<f32>::try_from(pred.grad().flatten(0, -1)).unwrap();
        assert_eq!(g, [-1.0 / 3.0, 1.0 / 3.0, 0.0, 0.0]);
        let none = Tensor::full([1, 2, 2], f64::NAN, (Kind::Float, Device::Cpu));
        assert_eq!(t.loss(&pred, &none).double_value(&[]), 0.0);
    }

    #[test]
    fn meter_reports_absolute_and_relative_error_over_valid_pixels() {
        let t = test_task("regression", 0);
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
        for m in ["abs_error", "rel_error", "loss"] {
            assert_eq!(t.higher_is_better(m), Some(false), "{m}");
        }
    }
}
