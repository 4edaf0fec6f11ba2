//! CAGrad (Liu et al. 2021): `g0 = mean_i g_i`, `c = α_c ‖g0‖`,
//! `w = argmin_{w ∈ Δ} wᵀ M 1/T + c √(wᵀ M w)`, `g_w = Σ w_i g_i`,
//! `d = (g0 + c g_w / ‖g_w‖) / (1 + α_c²)` (α_c = 0.5 by default, option `alpha`).
//!
//! Weights: the coefficients `(1/T + λ w_i) / (1 + α_c²)` with `λ = c/‖g_w‖`, so
//! `d = Σ weights_i g_i`. When the optimum has `g_w = 0` (or `c = 0`) the correction has no
//! direction and `d = g0 / (1 + α_c²)`.
use super::gradient::{Combination, GradientMethod};
use super::grads::gram;
use super::options::Options;
use super::solvers::cagrad_weights;
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
        let c = alpha * g0_norm;
        if let Some(w) = cagrad_weights(&mn, c) {
            let gw_norm = mn.quad(&w, &w).max(0.0).sqrt();
            let lambda = c / gw_norm;
            coef = w.iter().map(|wi| (base + lambda * wi) * rescale).collect();
        }
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
