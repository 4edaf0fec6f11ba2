//! Evaluation on the val split: eval mode, no gradients, metrics accumulated on the device.
//! With tasks that have their own data, each task is scored on its own data's val split.
use super::inputs::Inputs;
use crate::data::loader::Loader;
use crate::dist::Group;
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
    // Per task, the sum of its gate's expert weights over the samples, and their count.
    let mut gates: Vec<Option<(tch::Tensor, i64)>> = tasks.iter().map(|_| None).collect();
    tch::no_grad(|| {
        for batch in loader.eval_batches() {
            let forward = model.evaluate_on(&batch.images, domain);
            for (t, w) in forward.gates.iter().filter(|(t, _)| ids.contains(t)) {
                let sum = w.to_kind(tch::Kind::Double).sum_dim_intlist(0, false, tch::Kind::Double);
                gates[*t] = Some(match gates[*t].take() {
                    Some((s, n)) => (s + sum, n + w.size()[0]),
                    None => (sum, w.size()[0]),
                });
            }
            let outputs = forward.outputs;
            let target_of = |j: usize| {
                let at = ids.iter().position(|&k| k == j).expect("a given task shares its parent's data");
                batch.targets[at].shallow_clone()
            };
            for (&i, meter) in ids.iter().zip(meters.iter_mut()) {
                let (output, target) = crate::tasks::paired(tasks, i, &|j| outputs[j].shallow_clone(), &target_of);
                meter.update(&output, &target, &tasks[i].loss(&output, &target));
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
        for (s, n) in gates.iter_mut().flatten() {
            *s = sum(s);
            *n = crate::tasks::reduce_count(*n, &sum);
        }
    }
    ids.iter()
        .zip(&meters)
        .map(|(&i, m)| {
            let mut metrics: Vec<(String, f64)> =
                m.finish().into_iter().map(|(k, v)| (format!("{}.{k}", tasks[i].name), v)).collect();
            metrics.extend(gate_means(&tasks[i].name, gates[i].as_ref()));
            metrics
        })
        .collect()
}

/// `("<task>.gate<k>", mean weight of expert k)` from a task's summed gate weights.
fn gate_means(task: &str, gates: Option<&(tch::Tensor, i64)>) -> Vec<(String, f64)> {
    let Some((sum, n)) = gates else { return Vec::new() };
    let sums = Vec::<f64>::try_from(sum.to_device(tch::Device::Cpu)).unwrap_or_default();
    sums.iter().enumerate().map(|(k, s)| (format!("{task}.gate{k}"), s / (*n).max(1) as f64)).collect()
}
