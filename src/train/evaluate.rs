//! Evaluation on the val split: eval mode, no gradients, metrics accumulated on the device.
use crate::data::loader::Loader;
use crate::dist::Group;
use crate::model::MultiTaskModel;
use crate::tasks::Task;

/// `("<task>.<metric>", value)` for every task, in task order. With `ranks`, the loader is
/// sharded: each rank evaluates its share of the batches and the meters' sums are added over
/// the ranks before the metrics are computed, so every rank reports the whole split's.
pub fn evaluate(model: &MultiTaskModel, loader: &Loader, tasks: &[Task], ranks: Option<&Group>) -> Vec<(String, f64)> {
    let mut meters: Vec<_> = tasks.iter().map(|t| t.meter(model.device())).collect();
    tch::no_grad(|| {
        for batch in loader.eval_batches() {
            let outputs = model.forward(&batch.images, false);
            for ((task, meter), (logits, target)) in
                tasks.iter().zip(meters.iter_mut()).zip(outputs.iter().zip(&batch.targets))
            {
                meter.update(logits, target, &task.loss(logits, target));
            }
        }
    });
    if let Some(g) = ranks {
        let sum = |t: &tch::Tensor| {
            let total = t.copy();
            g.sum_(&total);
            total
        };
        for meter in &mut meters {
            meter.reduce(&sum);
        }
    }
    tasks
        .iter()
        .zip(&meters)
        .flat_map(|(t, m)| m.finish().into_iter().map(move |(k, v)| (format!("{}.{k}", t.name), v)))
        .collect()
}
