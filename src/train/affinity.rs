//! Transfer between tasks, measured while training (`report.affinity`; docs/TRANSFER.md).
//!
//! TAG (Fifty et al., NeurIPS 2021): at a measured step with batch X, for every task i the
//! shared parameters take the update the optimizer would make from task i's loss alone,
//! θ_s^{t+1|i}; the lookahead affinity of i onto j is
//! `Z_{i→j} = 1 − L_j(X, θ_s^{t+1|i}, θ_j) / L_j(X, θ_s, θ_j)`: positive when a step for i
//! lowered j's loss. Beside it, the cosine of the per-task gradients on the shared parameters.
//!
//! The measurement observes and never changes training: it runs before the step's own forward,
//! puts back the parameters (an exact copy) and the BatchNorm statistics its train-mode
//! forwards moved, leaves the optimizer's moments alone ([`crate::optim::Optimizer::lookahead`])
//! and draws dropout masks from the generator the step then reseeds.
use super::Trainer;
use crate::data::loader::Batch;
use crate::model::HeadInput;
use anyhow::Context;
use serde::{Deserialize, Serialize};
use tch::{Kind, Tensor};

/// The file the run's averaged matrices are kept in, beside `metrics.jsonl`.
pub const FILE: &str = "affinity.json";
/// The split name of the per-epoch rows in `metrics.jsonl`.
pub const SPLIT: &str = "affinity";

/// One measured step: `affinity[i][j] = Z_{i→j}`, `cosine[i][j] = cos(g_i, g_j)`.
#[derive(Debug, Clone, PartialEq)]
pub struct Measurement {
    pub affinity: Vec<Vec<f64>>,
    pub cosine: Vec<Vec<f64>>,
}

/// Sums over measured steps, for means and standard deviations.
#[derive(Debug, Clone, PartialEq)]
pub struct Sums {
    pub steps: u64,
    pub seconds: f64,
    affinity: Vec<f64>,
    affinity_sq: Vec<f64>,
    cosine: Vec<f64>,
    cosine_sq: Vec<f64>,
}

impl Sums {
    fn new(tasks: usize) -> Self {
        let z = vec![0.0; tasks * tasks];
        Self { steps: 0, seconds: 0.0, affinity: z.clone(), affinity_sq: z.clone(), cosine: z.clone(), cosine_sq: z }
    }

    fn add(&mut self, m: &Measurement, seconds: f64) {
        self.steps += 1;
        self.seconds += seconds;
        let flat = |rows: &[Vec<f64>]| rows.concat();
        for (k, v) in flat(&m.affinity).into_iter().enumerate() {
            self.affinity[k] += v;
            self.affinity_sq[k] += v * v;
        }
        for (k, v) in flat(&m.cosine).into_iter().enumerate() {
            self.cosine[k] += v;
            self.cosine_sq[k] += v * v;
        }
    }

    /// The means and (population) standard deviations over the measured steps.
    pub fn summary(&self, task_names: &[String], every: u64) -> Summary {
        let t = task_names.len();
        let n = self.steps.max(1) as f64;
        let square = |sum: &[f64], sq: &[f64]| -> (Vec<Vec<f64>>, Vec<Vec<f64>>) {
            let mean: Vec<f64> = sum.iter().map(|s| s / n).collect();
            let std: Vec<f64> = sq.iter().zip(&mean).map(|(q, m)| (q / n - m * m).max(0.0).sqrt()).collect();
            (mean.chunks(t).map(<[f64]>::to_vec).collect(), std.chunks(t).map(<[f64]>::to_vec).collect())
        };
        let (affinity, affinity_std) = square(&self.affinity, &self.affinity_sq);
        let (cosine, cosine_std) = square(&self.cosine, &self.cosine_sq);
        Summary {
            tasks: task_names.to_vec(),
            every,
            steps: self.steps,
            seconds_per_step: self.seconds / n,
            affinity,
            affinity_std,
            cosine,
            cosine_std,
        }
    }

    /// As checkpoint tensors: `[steps, seconds, then the four T×T sums]` in f64.
    fn to_tensor(&self) -> Tensor {
        let mut v = vec![self.steps as f64, self.seconds];
        for part in [&self.affinity, &self.affinity_sq, &self.cosine, &self.cosine_sq] {
            v.extend_from_slice(part);
        }
        Tensor::from_slice(&v)
    }

    fn from_tensor(t: &Tensor, tasks: usize) -> Option<Self> {
        let v = Vec::<f64>::try_from(t.to_device(tch::Device::Cpu).to_kind(Kind::Double)).ok()?;
        let n = tasks * tasks;
        if v.len() != 2 + 4 * n {
            return None;
        }
        let part = |k: usize| v[2 + k * n..2 + (k + 1) * n].to_vec();
        Some(Self {
            steps: v[0] as u64,
            seconds: v[1],
            affinity: part(0),
            affinity_sq: part(1),
            cosine: part(2),
            cosine_sq: part(3),
        })
    }
}

/// The averaged matrices: what `affinity.json` holds and `mtl-train groups` reads.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Summary {
    pub tasks: Vec<String>,
    /// `report.affinity.every` of the run.
    pub every: u64,
    /// Measured steps averaged.
    pub steps: u64,
    /// Mean wall-clock seconds one measurement took (on top of the training step).
    pub seconds_per_step: f64,
    /// `affinity[i][j]`: mean `Z_{i→j}`, task i's lookahead step's effect on task j's loss.
    pub affinity: Vec<Vec<f64>>,
    pub affinity_std: Vec<Vec<f64>>,
    /// `cosine[i][j]`: mean cosine of task i's and task j's gradients on the shared parameters.
    pub cosine: Vec<Vec<f64>>,
    pub cosine_std: Vec<Vec<f64>>,
}

impl Summary {
    /// `metrics.jsonl` values: `i>j` (mean Z_{i→j}) and `i>j_std` for every ordered pair,
    /// `cos_i|j` and `cos_i|j_std` for every unordered one, the steps and their cost.
    pub fn row_values(&self) -> Vec<(String, f64)> {
        let mut out = Vec::new();
        for (i, a) in self.tasks.iter().enumerate() {
            for (j, b) in self.tasks.iter().enumerate() {
                if i != j {
                    out.push((format!("{a}>{b}"), self.affinity[i][j]));
                    out.push((format!("{a}>{b}_std"), self.affinity_std[i][j]));
                }
                if i < j {
                    out.push((format!("cos_{a}|{b}"), self.cosine[i][j]));
                    out.push((format!("cos_{a}|{b}_std"), self.cosine_std[i][j]));
                }
            }
        }
        out.push(("steps".into(), self.steps as f64));
        out.push(("seconds_per_step".into(), self.seconds_per_step));
        out
    }

    /// The affinity as one run's measurement, for pooling ([`crate::tasks::grouping::Estimate`]).
    pub fn measured(&self) -> crate::tasks::grouping::RunAffinity<'_> {
        crate::tasks::grouping::RunAffinity { mean: &self.affinity, std: &self.affinity_std, steps: self.steps }
    }

    /// Reads a run's `affinity.json`. Missing or unreadable: a user error naming the file.
    pub fn read(run_dir: &std::path::Path) -> anyhow::Result<Self> {
        let path = run_dir.join(FILE);
        if !path.is_file() {
            crate::user_bail!(
                "{}: no affinity data (train the run with report.affinity: {{every: N}} set)",
                path.display()
            );
        }
        let text = crate::files::read_to_string(&path, 16 << 20)?;
        let s: Summary = serde_json::from_str(&text)
            .map_err(|e| crate::user_error!("{}: not an affinity summary: {e}", path.display()))?;
        let t = s.tasks.len();
        let square =
            |m: &Vec<Vec<f64>>| m.len() == t && m.iter().all(|r| r.len() == t && r.iter().all(|v| v.is_finite()));
        if t < 2 || s.steps == 0 || !square(&s.affinity) || !square(&s.cosine) {
            crate::user_bail!(
                "{}: holds no usable affinity matrix ({} tasks, {} measured steps)",
                path.display(),
                t,
                s.steps
            );
        }
        Ok(s)
    }
}

/// What `report.affinity` keeps between measured steps (checkpointed: a resumed run continues
/// the same averages).
pub struct AffinityMeter {
    pub every: u64,
    tasks: usize,
    pub run: Sums,
    pub epoch: Sums,
    /// The flat-buffer mask of the shared parameters (built at the first measurement).
    pub(super) shared_mask: Option<Tensor>,
}

impl AffinityMeter {
    pub const RUN_TENSOR: &'static str = "affinity.run";
    pub const EPOCH_TENSOR: &'static str = "affinity.epoch";

    pub fn new(every: u64, tasks: usize) -> Self {
        Self { every, tasks, run: Sums::new(tasks), epoch: Sums::new(tasks), shared_mask: None }
    }

    pub fn due(&self, step: u64) -> bool {
        step.is_multiple_of(self.every)
    }

    pub fn record(&mut self, m: &Measurement, seconds: f64) {
        self.run.add(m, seconds);
        self.epoch.add(m, seconds);
    }

    /// The epoch's summary (None when nothing was measured in it), and a fresh epoch.
    pub fn end_epoch(&mut self, task_names: &[String]) -> Option<Summary> {
        let epoch = std::mem::replace(&mut self.epoch, Sums::new(self.tasks));
        (epoch.steps > 0).then(|| epoch.summary(task_names, self.every))
    }

    pub fn state(&self) -> Vec<(String, Tensor)> {
        vec![(Self::RUN_TENSOR.into(), self.run.to_tensor()), (Self::EPOCH_TENSOR.into(), self.epoch.to_tensor())]
    }

    /// Restores [`AffinityMeter::state`]; a checkpoint without it (affinity turned on when
    /// resuming) starts the averages at the resumed step.
    pub fn load_state(&mut self, lookup: &dyn Fn(&str) -> Option<Tensor>) -> anyhow::Result<()> {
        for (key, sums) in [(Self::RUN_TENSOR, &mut self.run), (Self::EPOCH_TENSOR, &mut self.epoch)] {
            if let Some(t) = lookup(key) {
                *sums = Sums::from_tensor(&t, self.tasks)
                    .ok_or_else(|| crate::user_error!("checkpoint: '{key}' does not fit {} tasks", self.tasks))?;
            }
        }
        Ok(())
    }
}

impl Trainer {
    /// Measures TAG's affinity and the gradient cosine on this step's batches, at the
    /// parameters the step starts from, and records them. Costs one forward, T backwards and
    /// T no-grad forwards; reads the device once.
    pub(super) fn measure_affinity(&mut self, batches: &[Batch]) -> anyhow::Result<()> {
        let Some(meter) = self.affinity.as_mut() else { return Ok(()) };
        let super::Position { step, epoch, .. } = self.at;
        // Transfer is measured between all the tasks: a stage that trains only some of them
        // (train.stages) is not measured.
        if !meter.due(step) || self.active.len() < self.tasks.len() {
            return Ok(());
        }
        let started = std::time::Instant::now();
        let mask = match &meter.shared_mask {
            Some(m) => m.shallow_clone(),
            None => {
                let m = shared_mask(&mut self.optimizer.flat, &self.shared);
                meter.shared_mask = Some(m.shallow_clone());
                m
            }
        };
        let statistics: Vec<Tensor> = self.model.buffers().iter().map(Tensor::copy).collect();
        let start = self.optimizer.flat.params.copy();
        crate::rng::seed_torch(self.cfg.seed, step);
        let forward = self.losses(batches, (step, epoch), HeadInput::Attached);
        let before = crate::balance::autograd::stacked_losses(&forward.losses).to_kind(Kind::Double);
        let rows = self.shared_gradients(&forward.losses)?;
        drop(forward);
        let lr = self.schedule.lr(step);
        let mut after = Vec::with_capacity(rows.len());
        for row in &rows {
            let moved = self.optimizer.lookahead(lr, row).where_self(&mask, &start);
            tch::no_grad(|| self.optimizer.flat.params.shallow_clone().copy_(&moved));
            restore(&self.model, &statistics);
            crate::rng::seed_torch(self.cfg.seed, step);
            let losses = tch::no_grad(|| self.losses(batches, (step, epoch), HeadInput::Attached)).losses;
            after.push(crate::balance::autograd::stacked_losses(&losses).to_kind(Kind::Double));
            // The next lookahead starts from θ_s again (lookahead reads the current parameters).
            tch::no_grad(|| self.optimizer.flat.params.shallow_clone().copy_(&start));
        }
        tch::no_grad(|| {
            let _ = self.optimizer.flat.grads.zero_();
        });
        restore(&self.model, &statistics);
        let z = 1.0 - Tensor::stack(&after, 0) / before.unsqueeze(0);
        let g = Tensor::stack(&rows, 0).to_kind(Kind::Double);
        let gram = g.matmul(&g.tr());
        let t = rows.len();
        let z = crate::balance::autograd::host_vec(&z).context("affinity: reading the lookahead losses")?;
        let gram = crate::balance::autograd::host_vec(&gram).context("affinity: reading the Gram matrix")?;
        let m = Measurement { affinity: square(&z, t), cosine: square(&cosines(&gram, t), t) };
        let seconds = started.elapsed().as_secs_f64();
        if let Some(meter) = self.affinity.as_mut() {
            meter.record(&m, seconds);
        }
        Ok(())
    }

    /// Each task's gradient on the shared parameters alone, in the optimizer's flat layout
    /// (zeros on every other parameter), averaged over the ranks: the global batch's.
    fn shared_gradients(&mut self, losses: &[Tensor]) -> anyhow::Result<Vec<Tensor>> {
        let t = losses.len();
        let mut rows = Vec::with_capacity(t);
        for (i, loss) in losses.iter().enumerate() {
            self.optimizer.flat.zero_grad();
            if loss.requires_grad() {
                let keep = losses[i + 1..].iter().any(Tensor::requires_grad);
                let grads = Tensor::f_run_backward(&[loss], &self.shared, keep, false)
                    .with_context(|| format!("affinity: gradient of task {i}'s loss"))?;
                tch::no_grad(|| {
                    for (p, g) in self.shared.iter().zip(&grads) {
                        if g.defined() {
                            p.grad().copy_(g);
                        }
                    }
                });
            }
            if let Some(group) = self.ranks.group() {
                group.mean_(&self.optimizer.flat.grads);
            }
            rows.push(self.optimizer.flat.grads.copy());
        }
        Ok(rows)
    }
}

/// Puts back the BatchNorm statistics (and counters) a train-mode forward moved.
fn restore(model: &crate::model::MultiTaskModel, statistics: &[Tensor]) {
    tch::no_grad(|| {
        for (b, saved) in model.buffers().iter().zip(statistics) {
            b.shallow_clone().copy_(saved);
        }
    })
}

/// Which entries of the flat parameter buffer belong to the shared parameters.
fn shared_mask(flat: &mut crate::optim::flat::FlatParams, shared: &[Tensor]) -> Tensor {
    flat.zero_grad();
    tch::no_grad(|| {
        for p in shared {
            let _ = p.grad().fill_(1.0);
        }
    });
    let mask = flat.grads.gt(0.5);
    flat.zero_grad();
    mask
}

/// `cos(g_i, g_j)` from the Gram matrix (0 where a gradient is zero).
fn cosines(gram: &[f64], t: usize) -> Vec<f64> {
    let mut out = vec![0.0; t * t];
    for i in 0..t {
        for j in 0..t {
            let norms = (gram[i * t + i] * gram[j * t + j]).sqrt();
            out[i * t + j] = if norms > 0.0 { gram[i * t + j] / norms } else { 0.0 };
        }
    }
    out
}

fn square(flat: &[f64], t: usize) -> Vec<Vec<f64>> {
    flat.chunks(t).map(<[f64]>::to_vec).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(n: usize) -> Vec<String> {
        (0..n).map(|i| format!("t{i}")).collect()
    }

    #[test]
    fn sums_give_means_and_spreads_and_round_trip() {
        let mut meter = AffinityMeter::new(5, 2);
        let m = |a: f64| Measurement {
            affinity: vec![vec![a, 2.0 * a], vec![-a, 0.0]],
            cosine: vec![vec![1.0, a], vec![a, 1.0]],
        };
        meter.record(&m(1.0), 0.5);
        meter.record(&m(3.0), 1.5);
        let s = meter.run.summary(&names(2), 5);
        assert_eq!(s.affinity, vec![vec![2.0, 4.0], vec![-2.0, 0.0]]);
        assert_eq!(s.affinity_std[0][0], 1.0);
        assert_eq!(s.affinity_std[0][1], 2.0);
        assert_eq!(s.cosine[0][1], 2.0);
        assert_eq!(s.seconds_per_step, 1.0);
        let state = meter.state();
        let mut back = AffinityMeter::new(5, 2);
        back.load_state(&|k| state.iter().find(|(n, _)| n == k).map(|(_, t)| t.shallow_clone())).unwrap();
        assert_eq!(back.run, meter.run);
        assert_eq!(back.epoch, meter.epoch);
        assert!(meter.end_epoch(&names(2)).is_some());
        assert!(meter.end_epoch(&names(2)).is_none(), "a fresh epoch has nothing measured");
        let mut wrong = AffinityMeter::new(5, 3);
        assert!(wrong.load_state(&|k| state.iter().find(|(n, _)| n == k).map(|(_, t)| t.shallow_clone())).is_err());
    }

    #[test]
    fn cosines_from_a_gram_matrix() {
        // g0 = (1, 0), g1 = (1, 1), g2 = 0
        let gram = [1.0, 1.0, 0.0, 1.0, 2.0, 0.0, 0.0, 0.0, 0.0];
        let c = cosines(&gram, 3);
        assert!((c[1] - 1.0 / 2f64.sqrt()).abs() < 1e-12);
        assert_eq!(c[2], 0.0);
        assert_eq!(c[0], 1.0);
    }

    #[test]
    fn row_values_name_every_ordered_pair() {
        let mut meter = AffinityMeter::new(1, 3);
        let z = vec![vec![0.0; 3]; 3];
        meter.record(&Measurement { affinity: z.clone(), cosine: z }, 0.1);
        let keys: Vec<String> = meter.run.summary(&names(3), 1).row_values().into_iter().map(|(k, _)| k).collect();
        assert!(keys.contains(&"t2>t0".to_string()) && keys.contains(&"cos_t0|t2".to_string()));
        assert_eq!(keys.iter().filter(|k| k.contains('>') && !k.ends_with("_std")).count(), 6);
    }
}
