//! Task kinds: what a head's output is scored against (its target), how (the loss), and what is
//! measured (metrics with their direction, accumulated on the device and read once per
//! evaluation). Each kind is one file behind [`TaskKind`]; [`KINDS`] is the registry that
//! `tasks[].kind` names. Everything downstream (config resolution, heads, the loader, Δm,
//! checkpoint selection, `predict`) asks the kind, so a new kind is one file plus one line here.
mod binary;
mod classification;
pub mod delta_m;
pub mod grouping;
mod normals;
mod regression;
mod segmentation;
mod value;

pub use delta_m::{delta_m, describe_delta_m, is_quality_metric, signed_percent, Baselines, DELTA_M_DIRECTION};
pub use normals::{median_of_histogram, ANGLE_BIN, ANGLE_THRESHOLDS};
pub use segmentation::iou_from_confusion;

use crate::config::TaskConfig;
use crate::data::TargetShape;
use crate::model::HeadKind;
use tch::{Device, Kind, Reduction, Tensor};

/// Every task kind `tasks[].kind` accepts.
pub const KINDS: &[&dyn TaskKind] = &[
    &classification::Classification,
    &segmentation::Segmentation,
    &regression::Regression,
    &normals::Normals,
    &binary::Binary,
    &value::Value,
];

/// The kind called `name`.
pub fn kind_named(name: &str) -> Option<&'static dyn TaskKind> {
    KINDS.iter().copied().find(|k| k.name() == name)
}

/// The names of every kind, for error messages.
pub fn kind_names() -> Vec<&'static str> {
    KINDS.iter().map(|k| k.name()).collect()
}

/// A metric and the direction in which it improves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Metric {
    pub name: &'static str,
    pub higher_is_better: bool,
}

impl Metric {
    pub const fn higher(name: &'static str) -> Self {
        Self { name, higher_is_better: true }
    }
    pub const fn lower(name: &'static str) -> Self {
        Self { name, higher_is_better: false }
    }
}

/// Every task reports its mean loss besides its kind's metrics.
pub const LOSS: Metric = Metric::lower("loss");

/// How `mtl-train predict --images` writes a kind's output.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Prediction {
    /// One class per image and its probability: two CSV columns.
    Class,
    /// One class per pixel: a colour mask PNG.
    ClassMask,
    /// Values per pixel: a float `.npy` array `(H, W)`, or `(H, W, C)` with several channels.
    Values,
}

/// The colour a class is drawn in (mask PNGs, TensorBoard images): class 0 black, the others
/// fixed, well-separated colours.
pub fn class_colour(class: u8) -> [u8; 3] {
    if class == 0 {
        return [0, 0, 0];
    }
    let h = (class as u32).wrapping_mul(2654435761);
    [(h >> 24) as u8 | 0x40, (h >> 16) as u8 | 0x40, (h >> 8) as u8 | 0x40]
}

/// A task kind. The methods are the facts the rest of the engine needs about it.
pub trait TaskKind: std::fmt::Debug + Send + Sync {
    /// The name `tasks[].kind` uses.
    fn name(&self) -> &'static str;
    /// The shape of dataset target it learns.
    fn target_shape(&self) -> TargetShape;
    /// Whether it predicts classes: `tasks[].classes` is then required and label smoothing
    /// applies; otherwise both must stay unset.
    fn has_classes(&self) -> bool;
    /// The head that produces its output.
    fn head(&self, task: &Task) -> HeadKind;
    /// The batch's mean loss, an fp32 scalar attached to the output's graph.
    fn loss(&self, task: &Task, output: &Tensor, target: &Tensor) -> Tensor;
    /// Its quality metrics, the main one first ([`LOSS`] is added by [`Task::metrics`]).
    fn metrics(&self, task: &Task) -> Vec<Metric>;
    /// An accumulator of [`TaskKind::metrics`] on `device`.
    fn meter(&self, task: &Task, device: Device) -> Box<dyn QualityMeter>;
    /// How `predict --images` writes its output.
    fn prediction(&self) -> Prediction;
    /// The kind's own rules for its config entry, as `"<key>: <message>"` relative to the
    /// task's entry (e.g. `ignore_index: 3 collides with a class label`).
    fn check(&self, _task: &TaskConfig) -> Result<(), String> {
        Ok(())
    }
}

/// Accumulates a kind's quality metrics on the device; only [`QualityMeter::finish`] reads
/// values back.
pub trait QualityMeter {
    fn update(&mut self, output: &Tensor, target: &Tensor);
    /// `(metric, value)` in the order of [`TaskKind::metrics`].
    fn finish(&self) -> Vec<(&'static str, f64)>;
    /// Replaces every accumulator `a` by `sum(a)`: in a distributed evaluation, its sum over
    /// the ranks, after which [`QualityMeter::finish`] reports the whole split exactly. The
    /// accumulators must therefore be sums and counts (confusion matrices, histograms), never
    /// means.
    fn reduce(&mut self, sum: &dyn Fn(&Tensor) -> Tensor);
    /// In a distributed evaluation, replaces per-sample accumulators `v` (1-d) by
    /// `gather(v)`: every rank's, concatenated, for metrics that are not sums (AUC).
    fn gather(&mut self, _gather: &dyn Fn(&Tensor) -> Tensor) {}
}

/// A host count through `sum` (see [`QualityMeter::reduce`]).
pub fn reduce_count(count: i64, sum: &dyn Fn(&Tensor) -> Tensor) -> i64 {
    sum(&Tensor::from(count)).int64_value(&[])
}

/// One configured task.
#[derive(Debug, Clone)]
pub struct Task {
    pub name: String,
    pub kind: &'static dyn TaskKind,
    pub target: String,
    pub classes: i64,
    pub label_smoothing: f64,
    pub ignore_index: i64,
    /// ESMM: the index of the task this one is conditional on (`tasks[].given`, resolved by
    /// the resolve step); its output and target then come paired with the parent's, see
    /// [`paired`].
    pub given: Option<usize>,
}

/// Task `i`'s output and target as its loss and meter read them: its own, or for a task
/// `given` another, `[own, parent]` side by side (output `[N, 2]`, target `[N, 2]`).
/// `output_of(j)` and `target_of(j)` are task j's output and target.
pub fn paired(
    tasks: &[Task],
    i: usize,
    output_of: &dyn Fn(usize) -> Tensor,
    target_of: &dyn Fn(usize) -> Tensor,
) -> (Tensor, Tensor) {
    match tasks[i].given {
        None => (output_of(i), target_of(i)),
        Some(p) => (Tensor::cat(&[output_of(i), output_of(p)], 1), Tensor::stack(&[target_of(i), target_of(p)], 1)),
    }
}

impl Task {
    /// The task of a config entry; `None` when its kind is unknown.
    pub fn new(t: &TaskConfig) -> Option<Self> {
        Some(Self {
            name: t.name.clone(),
            kind: kind_named(&t.kind)?,
            target: t.target.clone(),
            classes: t.classes,
            label_smoothing: t.label_smoothing,
            ignore_index: t.ignore_index,
            given: None,
        })
    }

    /// Mean loss of a batch (see each kind for the target it expects).
    pub fn loss(&self, output: &Tensor, target: &Tensor) -> Tensor {
        self.kind.loss(self, output, target)
    }

    /// Every metric this task reports, in table order: the kind's (main first), then the loss.
    pub fn metrics(&self) -> Vec<Metric> {
        let mut m = self.kind.metrics(self);
        m.push(LOSS);
        m
    }

    pub fn metric_names(&self) -> Vec<&'static str> {
        self.metrics().iter().map(|m| m.name).collect()
    }

    /// The metric whose value decides which checkpoint is best by default.
    pub fn main_metric(&self) -> Metric {
        self.metrics()[0]
    }

    /// Whether a higher `metric` is better; `None` when the task has no such metric.
    pub fn higher_is_better(&self, metric: &str) -> Option<bool> {
        self.metrics().iter().find(|m| m.name == metric).map(|m| m.higher_is_better)
    }

    pub fn head(&self) -> HeadKind {
        self.kind.head(self)
    }

    pub fn meter(&self, device: Device) -> Meter {
        Meter { quality: self.kind.meter(self, device), loss_sum: Tensor::zeros([], (Kind::Double, device)), count: 0 }
    }
}

/// A task's metrics over an evaluation: its kind's quality metrics and the mean loss.
pub struct Meter {
    quality: Box<dyn QualityMeter>,
    loss_sum: Tensor,
    count: i64,
}

impl Meter {
    /// Adds one batch: `loss` is the batch's mean loss (a detached scalar).
    pub fn update(&mut self, output: &Tensor, target: &Tensor, loss: &Tensor) {
        let n = output.size()[0];
        self.quality.update(output, target);
        self.loss_sum += loss.to_kind(Kind::Double) * n as f64;
        self.count += n;
    }

    /// Sums the accumulators over the ranks of a distributed evaluation (see
    /// [`QualityMeter::reduce`]).
    pub fn reduce(&mut self, sum: &dyn Fn(&Tensor) -> Tensor) {
        self.quality.reduce(sum);
        self.loss_sum = sum(&self.loss_sum);
        self.count = reduce_count(self.count, sum);
    }

    /// Gathers per-sample accumulators over the ranks (see [`QualityMeter::gather`]).
    pub fn gather(&mut self, gather: &dyn Fn(&Tensor) -> Tensor) {
        self.quality.gather(gather);
    }

    /// `(metric, value)` in the order of [`Task::metrics`].
    pub fn finish(&self) -> Vec<(&'static str, f64)> {
        let mut out = self.quality.finish();
        out.push((LOSS.name, self.loss_sum.double_value(&[]) / self.count.max(1) as f64));
        out
    }
}

/// What PyTorch's cross_entropy uses for "ignore nothing".
pub const NO_IGNORE: i64 = -100;

/// Cross-entropy over classes in dim 1, targets of any integer kind.
fn cross_entropy(task: &Task, logits: &Tensor, target: &Tensor, ignore: i64) -> Tensor {
    logits.cross_entropy_loss::<Tensor>(
        &target.to_kind(Kind::Int64),
        None,
        Reduction::Mean,
        ignore,
        task.label_smoothing,
    )
}

#[cfg(test)]
pub(crate) fn test_task(kind: &str, classes: i64) -> Task {
    Task {
        name: "t".into(),
        kind: kind_named(kind).expect("a registered kind"),
        target: "t".into(),
        classes,
        label_smoothing: 0.0,
        ignore_index: 255,
        given: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registry_names_are_unique_and_metrics_have_a_direction() {
        let names = kind_names();
        let mut sorted = names.clone();
        sorted.sort();
        sorted.dedup();
        assert_eq!(sorted.len(), names.len());
        for k in KINDS {
            let t = test_task(k.name(), if k.has_classes() { 7 } else { 0 });
            let m = t.metrics();
            assert_eq!(m.last(), Some(&LOSS));
            assert_eq!(t.main_metric(), m[0]);
            assert_eq!(t.higher_is_better("loss"), Some(false));
            assert_eq!(t.higher_is_better("nope"), None);
        }
    }

    #[test]
    fn meter_names_follow_the_metric_list() {
        for k in KINDS {
            let t = test_task(k.name(), if k.has_classes() { 7 } else { 0 });
            let names: Vec<&str> = t.meter(Device::Cpu).finish().iter().map(|(n, _)| *n).collect();
            assert_eq!(names, t.metric_names(), "{}", k.name());
        }
    }
}
