//! Evaluation on the val split: eval mode, no gradients, metrics accumulated on the device.
//! With tasks that have their own data, each task is scored on its own data's val split.
use super::inputs::Inputs;
use crate::data::loader::Loader;
use crate::dist::Group;
use crate::model::Mode;
use crate::model::MultiTaskModel;
use crate::tasks::Task;

/// `("<task>.<metric>", value)` for every task, in task order. With `ranks`, the loaders are
/// sharded: each rank evaluates its share of the batches and the meters' sums are added over
/// the ranks before the metrics are computed, so every rank reports the whole split's.
pub fn evaluate(model: &MultiTaskModel, inputs: &Inputs, tasks: &[Task], ranks: Option<&Group>) -> Vec<(String, f64)> {
    let mut per_task: Vec<Vec<(String, f64)>> = vec![Vec::new(); tasks.len()];
    for (d, g) in inputs.groups.iter().enumerate() {
        for (i, metrics) in g.tasks.iter().zip(evaluate_on(model, d, &g.val, tasks, &g.tasks, ranks)) {
            per_task[*i] = metrics;
        }
    }
    per_task.into_iter().flatten().collect()
}

/// The metrics of the tasks `ids` (the loader's targets, in order) on `loader`'s batches,
/// the images of data group `domain`.
fn evaluate_on(
    model: &MultiTaskModel,
    domain: usize,
    loader: &Loader,
    tasks: &[Task],
    ids: &[usize],
    ranks: Option<&Group>,
) -> Vec<Vec<(String, f64)>> {
    let mut meters: Vec<_> = ids.iter().map(|&i| tasks[i].meter(model.device())).collect();
    tch::no_grad(|| {
        for batch in loader.eval_batches() {
            let outputs = model.forward_on(&batch.images, domain, Mode::Eval);
            for ((&i, meter), target) in ids.iter().zip(meters.iter_mut()).zip(&batch.targets) {
                let logits = &outputs[i];
                meter.update(logits, target, &tasks[i].loss(logits, target));
            }
        }
    });
    if let Some(g) = ranks {
        let sum = |t: &tch::Tensor| {
            let total = t.copy();
            g.sum_(&total);
            total
        };
        // Every rank's 1-d `t`, concatenated in rank order (lengths may differ).
        let gather = |t: &tch::Tensor| {
            let len = tch::Tensor::from_slice(&[t.size()[0]]).to_device(t.device());
            let lens: Vec<i64> = g.all_gather(&len).iter().map(|l| l.int64_value(&[0])).collect();
            let max = lens.iter().copied().max().unwrap_or(0);
            let parts = g.all_gather(&t.constant_pad_nd([0, max - t.size()[0]]));
            let parts: Vec<tch::Tensor> = parts.iter().zip(&lens).map(|(p, &l)| p.narrow(0, 0, l)).collect();
            tch::Tensor::cat(&parts, 0).to_device(t.device())
        };
        for meter in &mut meters {
            meter.reduce(&sum);
            meter.gather(&gather);
        }
    }
    ids.iter()
        .zip(&meters)
        .map(|(&i, m)| m.finish().into_iter().map(|(k, v)| (format!("{}.{k}", tasks[i].name), v)).collect())
        .collect()
}
