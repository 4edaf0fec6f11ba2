//! Aligned-MTL (Senushkin et al. 2023): eigen-decompose `M = V Λ Vᵀ`, drop eigenvalues
//! below `λ_max · T · ε_f32`, `B = √λ_min V Λ^{-1/2} Vᵀ`, `α = B 1`, `d = Σ α_i g_i`
//! (the gradients' condition number becomes 1). Weights: `α`.
use super::autograd::gram;
use super::gradient_method::{Combination, GradientMethod};
use super::options::Options;
use super::solvers::aligned_weights;
use super::Balancer;
use super::StepContext;
use tch::Tensor;

pub(super) fn build(o: &mut Options, _tasks: usize) -> anyhow::Result<Box<dyn Balancer>> {
    o.gradient_method(AlignedMtl)
}

/// Aligned-MTL on per-task gradients `[T, P]`.
pub fn aligned_mtl(grads: &Tensor) -> anyhow::Result<Combination> {
    Ok(Combination::weighted(grads, &aligned_weights(&gram(grads)?)))
}

pub struct AlignedMtl;

impl GradientMethod for AlignedMtl {
    fn name(&self) -> &'static str {
        "aligned"
    }

    fn combine_step(&mut self, grads: &Tensor, _losses: &Tensor, _ctx: &StepContext) -> anyhow::Result<Combination> {
        aligned_mtl(grads)
    }
}
