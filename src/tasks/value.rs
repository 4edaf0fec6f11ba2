//! `value`: one number per row of a table (the MMoE paper's synthetic regression tasks, a
//! watch time). Mean squared error, the loss those papers train and report; MAE besides.
use super::{Metric, Prediction, QualityMeter, Task, TaskKind};
use crate::data::TargetShape;
use crate::model::HeadKind;
use tch::{Device, Kind, Reduction, Tensor};

#[derive(Debug)]
pub struct Value;

impl TaskKind for Value {
    fn name(&self) -> &'static str {
        "value"
    }

    fn target_shape(&self) -> TargetShape {
        TargetShape::Value
    }

    fn has_classes(&self) -> bool {
        false
    }

    fn head(&self, _task: &Task) -> HeadKind {
        HeadKind::Vector { outputs: 1 }
    }

    /// `output` `[N, 1]`, `target` float `[N]`.
    fn loss(&self, _task: &Task, output: &Tensor, target: &Tensor) -> Tensor {
        output.view([-1]).mse_loss(&target.to_kind(Kind::Float), Reduction::Mean)
    }

    fn metrics(&self, _task: &Task) -> Vec<Metric> {
        vec![Metric::lower("mse"), Metric::lower("mae")]
    }

    fn meter(&self, _task: &Task, device: Device) -> Box<dyn QualityMeter> {
        let zero = || Tensor::zeros([], (Kind::Double, device));
        Box::new(Meter { squared: zero(), absolute: zero(), count: zero() })
    }

    fn prediction(&self) -> Prediction {
        Prediction::Values
    }
}

struct Meter {
    squared: Tensor,
    absolute: Tensor,
    count: Tensor,
}

impl QualityMeter for Meter {
    fn update(&mut self, output: &Tensor, target: &Tensor) {
        let err = output.view([-1]).to_kind(Kind::Double) - target.to_kind(Kind::Double);
        self.squared += err.square().sum(Kind::Double);
        self.absolute += err.abs().sum(Kind::Double);
        self.count += err.size()[0] as f64;
    }

    fn finish(&self) -> Vec<(&'static str, f64)> {
        let n = self.count.double_value(&[]).max(1.0);
        vec![("mse", self.squared.double_value(&[]) / n), ("mae", self.absolute.double_value(&[]) / n)]
    }

    fn reduce(&mut self, sum: &dyn Fn(&Tensor) -> Tensor) {
        for t in [&mut self.squared, &mut self.absolute, &mut self.count] {
            *t = sum(t);
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::tasks::test_task;
    use tch::{Device, Tensor};

    #[test]
    fn loss_and_metrics_are_squared_and_absolute_error() {
        let t = test_task("value", 0);
        let pred = Tensor::from_slice(&[1.0f32, 2.0, 4.0]).view([3, 1]);
        let target = Tensor::from_slice(&[0.0f32, 2.0, 2.0]);
        assert!((t.loss(&pred, &target).double_value(&[]) - 5.0 / 3.0).abs() < 1e-6);
        let mut m = t.meter(Device::Cpu);
        m.update(&pred, &target, &t.loss(&pred, &target));
        let r = m.finish();
        assert!((r[0].1 - 5.0 / 3.0).abs() < 1e-12 && (r[1].1 - 1.0).abs() < 1e-12, "{r:?}");
    }
}
