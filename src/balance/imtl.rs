//! IMTL-G (Liu et al. 2021): `d = Σ α_i g_i` with `Σ α_i = 1` and equal projections of `d`
//! on every unit gradient `u_i = g_i/‖g_i‖`. The paper's closed form
//! `α_{2..T} = g_1 Uᵀ (D Uᵀ)⁻¹` solves exactly the linear system used here,
//! `Σ α = 1, (u_i − u_1)·d = 0 (i ≥ 2)`, written on the Gram matrix.
//!
//! Degenerate cases: tasks with a zero gradient have no direction to project on; they get
//! `α_i = 0` and the rest are solved without them. A singular system (parallel gradients)
//! takes its minimum-norm least-squares solution, which keeps permuted tasks symmetric.
//! Weights: `α` (may be negative for T ≥ 3; heads then get 0).
use super::gradient::{Combination, GradientMethod};
use super::grads::gram;
use super::options::Options;
use super::solvers::{lstsq_min_norm, solve_linear, Mat};
use super::Balancer;
use super::StepContext;
use tch::Tensor;

pub(super) fn build(o: &mut Options, _tasks: usize) -> anyhow::Result<Box<dyn Balancer>> {
    o.gradient_method(Imtl)
}

/// The IMTL-G weights for a Gram matrix.
pub fn imtl_weights(m: &Mat) -> Vec<f64> {
    let n = m.n();
    let norms: Vec<f64> = (0..n).map(|i| m[(i, i)].max(0.0).sqrt()).collect();
    let max_norm = norms.iter().copied().fold(0.0, f64::max);
    let active: Vec<usize> = (0..n).filter(|&i| norms[i] > 1e-10 * max_norm && norms[i] > 0.0).collect();
    let mut alpha = vec![0.0; n];
    if active.is_empty() {
        return vec![1.0 / n as f64; n];
    }
    // Unit gradients times the mean squared norm keep the rows O(1) whatever the scale.
    let scale = active.iter().map(|&i| norms[i]).sum::<f64>() / active.len() as f64;
    let k = active.len();
    let first = active[0];
    // proj(i, j) = u_i · g_j / scale
    let proj = |i: usize, j: usize| m[(i, j)] / (norms[i] * scale);
    let a = Mat::from_fn(k, |r, c| if r == 0 { 1.0 } else { proj(active[r], active[c]) - proj(first, active[c]) });
    let mut b = vec![0.0; k];
    b[0] = 1.0;
    let sol = solve_linear(&a, &b).unwrap_or_else(|| lstsq_min_norm(&a, &b));
    for (r, &i) in active.iter().enumerate() {
        alpha[i] = sol[r];
    }
    alpha
}

/// IMTL-G on per-task gradients `[T, P]`.
pub fn imtl(grads: &Tensor) -> anyhow::Result<Combination> {
    Ok(Combination::weighted(grads, &imtl_weights(&gram(grads)?)))
}

pub struct Imtl;

impl GradientMethod for Imtl {
    fn name(&self) -> &'static str {
        "imtl"
    }

    fn combine_step(&mut self, grads: &Tensor, _losses: &Tensor, _ctx: &StepContext) -> anyhow::Result<Combination> {
        imtl(grads)
    }
}
