//! Dynamic Weight Average (Liu et al. 2019): from the third epoch on,
//! `w = T · softmax(r / τ)` with `r_i = L̄_i(e−1) / L̄_i(e−2)` (epoch-mean training losses,
//! fed by [`Balancer::end_epoch`]); all weights 1 before that.
use super::options::Options;
use super::{autograd, state, Balancer, GradientSpace, StepContext};
use tch::Tensor;

pub(super) fn build(o: &mut Options, tasks: usize) -> anyhow::Result<Box<dyn Balancer>> {
    Ok(Box::new(Dwa::new(tasks, o.positive("temperature", 2.0)?)))
}

/// DWA's weights from the mean losses of the last two epochs (`previous` is the newer).
/// A ratio whose denominator is not positive counts as 1.
pub fn dwa_weights(previous: &[f64], before: &[f64], temperature: f64) -> Vec<f64> {
    let t = previous.len() as f64;
    let ratios: Vec<f64> =
        previous.iter().zip(before).map(|(a, b)| if *b > 0.0 && (a / b).is_finite() { a / b } else { 1.0 }).collect();
    super::softmax(&ratios.iter().map(|r| r / temperature).collect::<Vec<_>>()).iter().map(|p| t * p).collect()
}

pub struct Dwa {
    temperature: f64,
    tasks: usize,
    /// Epoch-mean losses of the last (up to) two epochs, oldest first.
    history: Vec<Vec<f64>>,
}

impl Dwa {
    pub fn new(tasks: usize, temperature: f64) -> Self {
        Self { temperature, tasks, history: Vec::new() }
    }

    /// The weights for the current epoch.
    pub fn weights(&self) -> Vec<f64> {
        match self.history.as_slice() {
            [before, previous] => dwa_weights(previous, before, self.temperature),
            _ => vec![1.0; self.tasks],
        }
    }
}

impl Balancer for Dwa {
    fn name(&self) -> &'static str {
        "dwa"
    }

    fn space(&self) -> GradientSpace {
        GradientSpace::Losses
    }

    fn backward(&mut self, ctx: &StepContext) -> anyhow::Result<Tensor> {
        anyhow::ensure!(
            ctx.losses.len() == self.tasks,
            "balance: {} losses for {} tasks",
            ctx.losses.len(),
            self.tasks
        );
        autograd::backward_with_weights(ctx, &self.weights())
    }

    fn end_epoch(&mut self, _epoch: u64, mean_losses: &[f64]) {
        if mean_losses.len() == self.tasks {
            self.history.push(mean_losses.to_vec());
            if self.history.len() > 2 {
                self.history.remove(0);
            }
        }
    }

    fn state(&self) -> Vec<(String, Tensor)> {
        let mut rows = self.history.concat();
        rows.resize(2 * self.tasks, 0.0);
        vec![
            ("loss_history".into(), state::vec(&rows).reshape([2, self.tasks as i64])),
            ("epochs_recorded".into(), state::count(self.history.len() as i64)),
        ]
    }

    fn load_state(&mut self, tensors: &[(String, Tensor)]) -> anyhow::Result<()> {
        let t = self.tasks as i64;
        let rows = autograd::host_vec(&state::get(tensors, "loss_history", &[2, t])?)?;
        let count = state::get_count(tensors, "epochs_recorded")?.clamp(0, 2) as usize;
        self.history = rows.chunks(self.tasks).take(count).map(<[f64]>::to_vec).collect();
        Ok(())
    }
}
