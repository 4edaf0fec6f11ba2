//! `classification`: one class per image. Cross-entropy (with label smoothing); accuracy, and
//! top-5 accuracy when there are more than five classes.
use super::{cross_entropy, Metric, Prediction, QualityMeter, Task, TaskKind, NO_IGNORE};
use crate::data::TargetShape;
use crate::model::HeadKind;
use tch::{Device, Kind, Tensor};

#[derive(Debug)]
pub struct Classification;

impl TaskKind for Classification {
    fn name(&self) -> &'static str {
        "classification"
    }

    fn target_shape(&self) -> TargetShape {
        TargetShape::PerImage
    }

    fn has_classes(&self) -> bool {
        true
    }

    fn head(&self, task: &Task) -> HeadKind {
        HeadKind::Vector { outputs: task.classes }
    }

    /// `output` `[N, classes]` logits, `target` int64 `[N]`.
    fn loss(&self, task: &Task, output: &Tensor, target: &Tensor) -> Tensor {
        cross_entropy(task, output, target, NO_IGNORE)
    }

    fn metrics(&self, task: &Task) -> Vec<Metric> {
        let mut m = vec![Metric::higher("accuracy")];
        if top5(task) {
            m.push(Metric::higher("top5"));
        }
        m
    }

    fn meter(&self, task: &Task, device: Device) -> Box<dyn QualityMeter> {
        Box::new(Meter {
            correct: Tensor::zeros([], (Kind::Int64, device)),
            top5: Tensor::zeros([], (Kind::Int64, device)),
            count: 0,
            top5_enabled: top5(task),
        })
    }

    fn prediction(&self) -> Prediction {
        Prediction::Class
    }
}

fn top5(task: &Task) -> bool {
    task.classes > 5
}

struct Meter {
    correct: Tensor,
    top5: Tensor,
    count: i64,
    top5_enabled: bool,
}

impl QualityMeter for Meter {
    fn update(&mut self, logits: &Tensor, target: &Tensor) {
        let target = target.to_kind(Kind::Int64);
        let pred = logits.argmax(1, false);
        self.correct += pred.eq_tensor(&target).sum(Kind::Int64);
        if self.top5_enabled {
            let (_, idx) = logits.topk(5, 1, true, false);
            self.top5 += idx.eq_tensor(&target.unsqueeze(1)).any_dim(1, false).sum(Kind::Int64);
        }
        self.count += logits.size()[0];
    }

    fn finish(&self) -> Vec<(&'static str, f64)> {
        let n = self.count.max(1) as f64;
        let mut out = vec![("accuracy", self.correct.int64_value(&[]) as f64 / n)];
        if self.top5_enabled {
            out.push(("top5", self.top5.int64_value(&[]) as f64 / n));
        }
        out
    }

    fn reduce(&mut self, sum: &dyn Fn(&Tensor) -> Tensor) {
        self.correct = sum(&self.correct);
        self.top5 = sum(&self.top5);
        self.count = super::reduce_count(self.count, sum);
    }
}

#[cfg(test)]
mod tests {
    use crate::tasks::test_task;
    use tch::{Device, Tensor};

    #[test]
    fn loss_matches_log_softmax() {
        let t = test_task("classification", 3);
        let logits = Tensor::from_slice(&[1.0f32, 2.0, 3.0, 0.5, 0.5, 0.5]).view([2, 3]);
        let target = Tensor::from_slice(&[2i64, 0]);
        let got = t.loss(&logits, &target).double_value(&[]);
        let lse1 = (1f64.exp() + 2f64.exp() + 3f64.exp()).ln();
        let expected = ((lse1 - 3.0) + 3f64.ln()) / 2.0;
        assert!((got - expected).abs() < 1e-6, "{got} vs {expected}");
    }

    #[test]
    fn label_smoothing_spreads_mass() {
        let mut t = test_task("classification", 2);
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
    fn meter_counts_top1_and_top5() {
        let t = test_task("classification", 6);
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
}
