//! IMTL-G (Liu et al. 2021): `d = Σ α_i g_i` with `Σ α_i = 1` and equal projections of `d`
//! on every unit gradient `u_i = g_i/‖g_i‖`. The paper's closed form
//! `α_{2..T} = g_1 Uᵀ (D Uᵀ)⁻¹` solves exactly the linear system used here,
//! `Σ α = 1, (u_i − u_1)·d = 0 (i ≥ 2)`, written on the cosine matrix in the unknowns
//! `β_i = α_i ‖g_i‖` so that every entry is O(1) whatever the gradients' norms.
//!
//! IMTL-G does not promise a non-conflicting step: the equal projections `d·u_i` can all be
//! negative (a random 3×3 Jacobian shows it; TorchJD agrees).
//!
//! Degenerate cases (docs/BALANCE_API.md):
//! - Tasks with a zero gradient have no direction to project on; they get `α_i = 0` and the
//!   rest are solved without them.
//! - Linearly dependent unit gradients (more tasks than dimensions, or rows like
//!   `[a, b, −(a+b)]`): the only `d` with equal projections is `d = 0`, the system's exact
//!   solution, which is what IMTL-G returns (a pseudo-inverse would instead jump from ~0 to a
//!   large step as the rows cross a rank threshold). The shared parameters then get no update
//!   that step; the heads still train. [`Imtl`] logs it once per run.
//! - A singular system (parallel gradients, where a family of `d` qualifies) takes its
//!   minimum-norm least-squares solution, which keeps permuted tasks symmetric.
//!
//! Weights: `α` (may be negative for T ≥ 3; heads then get 0).
use super::autograd::gram;
use super::gradient_method::{Combination, GradientMethod};
use super::options::Options;
use super::solvers::{lstsq_min_norm, solve_linear, Cosines, Mat, RESOLUTION};
use super::Balancer;
use super::StepContext;
use tch::Tensor;

pub(super) fn build(o: &mut Options, _tasks: usize) -> anyhow::Result<Box<dyn Balancer>> {
    o.gradient_method(Imtl::default())
}

/// IMTL-G's weights for a Gram matrix.
#[derive(Debug, Clone, PartialEq)]
pub struct ImtlWeights {
    /// `α`, summing to 1 (uniform when every gradient is zero).
    pub alpha: Vec<f64>,
    /// The unit gradients were linearly dependent, so `d = Σ α_i g_i` is zero (to the Gram
    /// matrix's resolution) although some gradients are not.
    pub dependent: bool,
}

/// The IMTL-G weights for a Gram matrix.
pub fn imtl_weights(m: &Mat) -> ImtlWeights {
    let n = m.n();
    let Cosines { norms, active, cos } = Cosines::of(m);
    if active.is_empty() {
        return ImtlWeights { alpha: vec![1.0 / n as f64; n], dependent: false };
    }
    let k = active.len();
    let smallest = active.iter().map(|&i| norms[i]).fold(f64::INFINITY, f64::min);
    // Row 0: Σ β_j/‖g_j‖ = 1 (times the smallest norm); rows r ≥ 1: (u_r − u_0)·Σ_j β_j u_j = 0.
    let a = Mat::from_fn(k, |r, c| if r == 0 { smallest / norms[active[c]] } else { cos[(r, c)] - cos[(0, c)] });
    let mut b = vec![0.0; k];
    b[0] = smallest;
    let beta = solve_linear(&a, &b).unwrap_or_else(|| lstsq_min_norm(&a, &b));
    // d = Σ β_j u_j, so ‖d‖² = βᵀCβ.
    let terms: f64 = beta.iter().map(|v| v.abs()).sum();
    let dependent = k > 1 && cos.quad(&beta, &beta).max(0.0).sqrt() <= RESOLUTION * terms;
    let mut alpha = vec![0.0; n];
    for (r, &i) in active.iter().enumerate() {
        alpha[i] = beta[r] / norms[i];
    }
    ImtlWeights { alpha, dependent }
}

/// IMTL-G on per-task gradients `[T, P]`.
pub fn imtl(grads: &Tensor) -> anyhow::Result<Combination> {
    Ok(Combination::weighted(grads, &imtl_weights(&gram(grads)?).alpha))
}

/// IMTL-G in training: warns the first time the gradients are dependent.
#[derive(Default)]
pub struct Imtl {
    warned: bool,
}

impl GradientMethod for Imtl {
    fn name(&self) -> &'static str {
        "imtl"
    }

    fn combine_step(&mut self, grads: &Tensor, _losses: &Tensor, ctx: &StepContext) -> anyhow::Result<Combination> {
        let w = imtl_weights(&gram(grads)?);
        if w.dependent && !self.warned {
            self.warned = true;
            tracing::warn!(
                "balance: imtl at step {}: the task gradients are linearly dependent (more tasks than \
                 dimensions, or one a combination of the others), so no direction has equal non-zero \
                 projections on all of them and the shared update is zero this step (heads still train); \
                 logged once per run",
                ctx.step
            );
        }
        Ok(Combination::weighted(grads, &w.alpha))
    }
}
