//! Nash-MTL (Navon et al. 2022): the bargaining weights `α > 0` with `(M̃ α)_i = 1/α_i`,
//! `M̃ = M / ‖M‖_F` (see [`nash_weights`] for the solver and its small ridge), `d = Σ α_i g_i`
//! and every head weighted by `α_i`, as backpropagating `Σ α_i l_i` would.
//!
//! Option `update_every = k`: α is recomputed on steps that are multiples of `k`; in between
//! the last α is reused and the step is one ordinary backward of `Σ α_i l_i` (no per-task
//! gradients), as in the paper. The last α is the checkpointed state. Weights: `α`.
use super::autograd::gram;
use super::gradient_method::{Combination, GradientMethod};
use super::options::Options;
use super::solvers::nash_weights;
use super::Balancer;
use super::{state, StepContext};
use tch::Tensor;

pub(super) fn build(o: &mut Options, tasks: usize) -> anyhow::Result<Box<dyn Balancer>> {
    let every = o.positive_int("update_every", 1)?;
    o.gradient_method(NashMtl::new(tasks, every))
}

/// Nash-MTL on per-task gradients `[T, P]` (no warm start, no reuse).
pub fn nash_mtl(grads: &Tensor) -> anyhow::Result<Combination> {
    Ok(Combination::weighted(grads, &nash_weights(&gram(grads)?, None)))
}

pub struct NashMtl {
    update_every: u64,
    /// The last computed α (all ones before the first update, as in the reference code).
    alpha: Vec<f64>,
}

impl NashMtl {
    pub fn new(tasks: usize, update_every: u64) -> Self {
        Self { update_every: update_every.max(1), alpha: vec![1.0; tasks] }
    }

    pub fn alpha(&self) -> &[f64] {
        &self.alpha
    }

    /// Solves for α on per-task gradients `[T, P]`, warm-started from the last α.
    pub fn combine(&mut self, grads: &Tensor) -> anyhow::Result<Combination> {
        let m = gram(grads)?;
        anyhow::ensure!(m.n() == self.alpha.len(), "balance: nash built for {} tasks, got {}", self.alpha.len(), m.n());
        self.alpha = nash_weights(&m, Some(&self.alpha));
        Ok(Combination::weighted(grads, &self.alpha))
    }
}

impl GradientMethod for NashMtl {
    fn name(&self) -> &'static str {
        "nash"
    }

    fn combine_step(&mut self, grads: &Tensor, _losses: &Tensor, _ctx: &StepContext) -> anyhow::Result<Combination> {
        self.combine(grads)
    }

    fn reuse(&self, step: u64) -> Option<Vec<f64>> {
        (!step.is_multiple_of(self.update_every)).then(|| self.alpha.clone())
    }

    fn state(&self) -> Vec<(String, Tensor)> {
        vec![("alpha".into(), state::vec(&self.alpha))]
    }

    fn load_state(&mut self, tensors: &[(String, Tensor)]) -> anyhow::Result<()> {
        self.alpha = state::get_vec(tensors, "alpha", self.alpha.len())?;
        Ok(())
    }
}
