//! UPGrad (TorchJD): `M̃ = M / tr(M) + ε I` (ε = option `reg_eps`, 1e-4 as TorchJD); for
//! each task `i`, `v⁽ⁱ⁾ = argmin vᵀ M̃ v s.t. v ≥ e_i / T` (the projection of the mean
//! preference onto the dual cone), `w = Σ_i v⁽ⁱ⁾`, `d = Σ w_j g_j`. Without the ridge,
//! `d · g_j ≥ 0` for every `j`; the ridge can make it `≥ −O(ε)`. Weights: `w`.
//!
//! Unlike TorchJD, `M` is normalized whenever its trace is positive (TorchJD treats traces
//! below 1e-4 as zero, which makes the method depend on the loss scale).
use super::autograd::gram;
use super::gradient_method::{Combination, GradientMethod};
use super::options::Options;
use super::solvers::{qp_nonneg, Mat};
use super::Balancer;
use super::StepContext;
use tch::Tensor;

pub(super) fn build(o: &mut Options, _tasks: usize) -> anyhow::Result<Box<dyn Balancer>> {
    let reg_eps = o.non_negative("reg_eps", DEFAULT_REG_EPS)?;
    o.gradient_method(UpGrad { reg_eps })
}

/// UPGrad's default ridge.
pub const DEFAULT_REG_EPS: f64 = 1e-4;

/// UPGrad's weights for a Gram matrix.
pub fn upgrad_weights_for(m: &Mat, reg_eps: f64) -> Vec<f64> {
    let tr = m.trace();
    let mt = if tr > 0.0 { m.scaled(1.0 / tr) } else { Mat::zeros(m.n()) };
    upgrad_weights(&mt.with_ridge(reg_eps))
}

/// UPGrad on per-task gradients `[T, P]`.
pub fn upgrad(grads: &Tensor, reg_eps: f64) -> anyhow::Result<Combination> {
    Ok(Combination::weighted(grads, &upgrad_weights_for(&gram(grads)?, reg_eps)))
}

pub struct UpGrad {
    pub reg_eps: f64,
}

impl GradientMethod for UpGrad {
    fn name(&self) -> &'static str {
        "upgrad"
    }

    fn combine_step(&mut self, grads: &Tensor, _losses: &Tensor, _ctx: &StepContext) -> anyhow::Result<Combination> {
        upgrad(grads, self.reg_eps)
    }
}

/// UPGrad's projection of each preference row `e_i/T` onto the dual cone:
/// `v⁽ⁱ⁾ = argmin vᵀ M v s.t. v ≥ e_i/T`, returned as the sum `w = Σ_i v⁽ⁱ⁾`.
/// `m` should already be normalized and regularised.
pub fn upgrad_weights(m: &Mat) -> Vec<f64> {
    let n = m.n();
    let mut w = vec![0.0; n];
    for i in 0..n {
        // v = u + x with x ≥ 0:  min xᵀMx + 2 (Mu)ᵀx.
        let mut u = vec![0.0; n];
        u[i] = 1.0 / n as f64;
        let x = qp_nonneg(m, &m.mul_vec(&u), None);
        for k in 0..n {
            w[k] += u[k] + x[k];
        }
    }
    w
}
