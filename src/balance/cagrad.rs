//! CAGrad (Liu et al. 2021): `g0 = mean_i g_i`, `c = α_c ‖g0‖`,
//! `d = argmax_{‖d − g0‖ ≤ c} min_i g_i·d`, solved through its dual
//! `w = argmin_{w ∈ Δ} wᵀ M 1/T + c √(wᵀ M w)`, `d = g0 + c g_w / ‖g_w‖` with
//! `g_w = Σ w_i g_i`, and returned as `d / (1 + α_c²)` (α_c = 0.5 by default, option `alpha`).
//!
//! Weights: the coefficients `(1/T + y_i) / (1 + α_c²)` of `d = Σ weights_i g_i`, where
//! `y = c w/‖g_w‖` (see [`cagrad_correction`]). When the optimum has `g_w = 0` (the direction
//! of the correction is undefined) every point of the ball that conflicts with no task is
//! optimal and the one nearest the mean is taken: the mean itself (`d = g0 / (1 + α_c²)`)
//! when it conflicts with no task, and always when `c = 0`.
use super::autograd::gram;
use super::gradient_method::{Combination, GradientMethod};
use super::options::Options;
use super::solvers::cagrad_correction;
use super::Balancer;
use super::StepContext;
use tch::Tensor;

pub(super) fn build(o: &mut Options, _tasks: usize) -> anyhow::Result<Box<dyn Balancer>> {
    let alpha = o.unit_interval("alpha", 0.5)?;
    o.gradient_method(CaGrad { alpha })
}

/// CAGrad on per-task gradients `[T, P]`.
pub fn cagrad(grads: &Tensor, alpha: f64) -> anyhow::Result<Combination> {
    let m = gram(grads)?;
    let n = m.n();
    let tr = m.trace();
    let base = 1.0 / n as f64;
    let rescale = 1.0 / (1.0 + alpha * alpha);
    let mut coef = vec![base * rescale; n];
    if tr > 0.0 {
        // The weights are invariant to the scale of M; normalizing keeps the solver in O(1).
        let mn = m.scaled(n as f64 / tr);
        let g0_norm = mn.quad(&vec![base; n], &vec![base; n]).max(0.0).sqrt();
        let y = cagrad_correction(&mn, alpha * g0_norm);
        coef = y.iter().map(|yi| (base + yi) * rescale).collect();
    }
    Ok(Combination::weighted(grads, &coef))
}

pub struct CaGrad {
    pub alpha: f64,
}

impl GradientMethod for CaGrad {
    fn name(&self) -> &'static str {
        "cagrad"
    }

    fn combine_step(&mut self, grads: &Tensor, _losses: &Tensor, _ctx: &StepContext) -> anyhow::Result<Combination> {
        cagrad(grads, self.alpha)
    }
}
