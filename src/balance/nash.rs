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
use super::solvers::{solve_linear, Cosines, Mat, TINY};
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

/// Nash-MTL's ridge, relative to each task's squared gradient norm: it keeps the problem
/// bounded when gradients are parallel or opposite (weights then stay within ~1/√ridge =
/// 1000 of their scale) and, being relative, leaves the method invariant to each task's scale.
pub const NASH_RIDGE: f64 = 1e-6;

/// Nash-MTL's bargaining weights: the `α > 0` with `(M̃ α)_i = 1/α_i`, where
/// `M̃ = (M + ridge·diag(M)) / ‖M‖_F`.
///
/// The solution scales as `α_i ∝ 1/‖g_i‖` when a task's gradient is rescaled (the direction
/// `Σ α_i g_i` does not change), so it is computed on the cosine matrix: `α_i = √‖M‖_F β_i/‖g_i‖`
/// with `((C + ridge·I) β)_i = 1/β_i`, whose terms are O(1) whatever the norms. That system is
/// the stationarity condition of the strictly convex, self-concordant
/// `f(β) = ½ βᵀ(C + ridge·I)β − Σ log β_i`, so damped Newton (step `1/(1+λ)` while the Newton
/// decrement `λ` is large, full steps after) converges globally and quadratically and never
/// leaves `β > 0`. `init` (e.g. last step's α) only changes the speed.
///
/// A task with a zero gradient has no stake in the shared direction (its equation has no
/// solution): it gets `α_i = 0` and the others bargain without it. All ones for an all-zero `M`.
pub fn nash_weights(m: &Mat, init: Option<&[f64]>) -> Vec<f64> {
    let n = m.n();
    let fro = m.frobenius();
    let Cosines { norms, active, cos } = Cosines::of(m);
    if active.is_empty() || !(fro > TINY && fro.is_finite()) {
        return vec![1.0; n];
    }
    let k = active.len();
    let scale = fro.sqrt();
    let ct = cos.with_ridge(NASH_RIDGE);
    let warm: Option<Vec<f64>> = init
        .filter(|v| v.len() == n)
        .map(|v| active.iter().map(|&i| v[i] * norms[i] / scale).collect::<Vec<_>>())
        .filter(|b| b.iter().all(|x| x.is_finite() && *x > 0.0));
    let mut b: Vec<f64> = warm.unwrap_or_else(|| {
        // Best multiple of the ones vector: t² = k / 1ᵀC̃1.
        let s = ct.quad(&vec![1.0; k], &vec![1.0; k]).max(f64::MIN_POSITIVE);
        vec![(k as f64 / s).sqrt(); k]
    });
    for _ in 0..200 {
        let cb = ct.mul_vec(&b);
        let grad: Vec<f64> = (0..k).map(|i| cb[i] - 1.0 / b[i]).collect();
        let hess = Mat::from_fn(k, |i, j| ct[(i, j)] + if i == j { 1.0 / (b[i] * b[i]) } else { 0.0 });
        let Some(step) = solve_linear(&hess, &grad.iter().map(|g| -g).collect::<Vec<_>>()) else {
            break;
        };
        let decrement = hess.quad(&step, &step).max(0.0).sqrt();
        let tau = if decrement > 0.25 { 1.0 / (1.0 + decrement) } else { 1.0 };
        let next: Vec<f64> = (0..k).map(|i| b[i] + tau * step[i]).collect();
        if next.iter().any(|v| !(v.is_finite() && *v > 0.0)) {
            break;
        }
        b = next;
        if decrement < 1e-13 {
            break;
        }
    }
    let mut alpha = vec![0.0; n];
    for (r, &i) in active.iter().enumerate() {
        alpha[i] = scale * b[r] / norms[i];
    }
    alpha
}
