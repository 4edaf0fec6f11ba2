//! Aligned-MTL (Senushkin et al. 2023): eigen-decompose `M = V Λ Vᵀ`, drop eigenvalues
//! below `λ_max · T · ε_f32`, `B = √λ_min V Λ^{-1/2} Vᵀ`, `α = B 1`, `d = Σ α_i g_i`
//! (the gradients' condition number becomes 1). Weights: `α`.
use super::autograd::gram;
use super::gradient_method::{Combination, GradientMethod};
use super::options::Options;
use super::solvers::{dot, sym_eigen, Cosines, Mat};
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

/// Aligned-MTL's balance weights `α = B 1` with `B = √λ_min V Λ^{-1/2} Vᵀ` over the
/// eigenpairs `(λ, V)` of `M` on the span of the gradients. All ones for an all-zero `M`.
///
/// Dependent gradients make `M` singular and its zero eigenvalues must be left out (`Λ^{-1/2}`
/// would amplify rounding). The reference code drops eigenvalues below `λ_max · T · ε_f32`,
/// which also drops a task whose gradient is ~2000× smaller than another's (its eigenvalue is
/// ~4e-7 of the largest), so the step then ignores or opposes that task. Here dependence is
/// decided where it is scale-free: on the cosine matrix `C`, with the reference's threshold
/// (`λ ≤ λ_max(C) · T · ε_f32`, the precision of f32 gradients' directions, whatever their
/// norms). Each such eigenvector `w` of `C` is the dependence `α = w / ‖g‖` of `M` (zero
/// gradients count too); `M` is projected off them and the rest of its spectrum is kept, however
/// small: a graded matrix's small eigenvalues are accurate ([`sym_eigen`]).
pub fn aligned_weights(m: &Mat) -> Vec<f64> {
    let n = m.n();
    let Cosines { norms, active, cos } = Cosines::of(m);
    if active.is_empty() {
        return vec![1.0; n];
    }
    let (cl, cv) = sym_eigen(&cos);
    let cut = n as f64 * f32::EPSILON as f64 * cl[0];
    let mut dependences: Vec<Vec<f64>> =
        (0..n).filter(|&i| norms[i] == 0.0).map(|i| (0..n).map(|j| if i == j { 1.0 } else { 0.0 }).collect()).collect();
    for k in (0..active.len()).filter(|&k| cl[k] <= cut) {
        let mut z = vec![0.0; n];
        for (r, &i) in active.iter().enumerate() {
            z[i] = cv[(r, k)] / norms[i];
        }
        dependences.push(z);
    }
    // P = I − ZZᵀ with Z an orthonormal basis of the dependences (Gram–Schmidt, twice).
    let mut basis: Vec<Vec<f64>> = Vec::new();
    for mut z in dependences {
        for _ in 0..2 {
            for b in &basis {
                let p = dot(&z, b);
                z.iter_mut().zip(b).for_each(|(zi, bi)| *zi -= p * bi);
            }
        }
        let norm = dot(&z, &z).sqrt();
        if norm > 1e-8 {
            basis.push(z.iter().map(|v| v / norm).collect());
        }
    }
    let proj =
        Mat::from_fn(n, |i, j| (if i == j { 1.0 } else { 0.0 }) - basis.iter().map(|b| b[i] * b[j]).sum::<f64>());
    let on_span = if basis.is_empty() { m.clone() } else { proj.matmul(m).matmul(&proj) };
    let (lam, v) = sym_eigen(&on_span);
    // The eigenvectors of P M P lie either in the span (‖P v‖ = 1) or in the dependences (0).
    let kept: Vec<usize> = (0..n)
        .filter(|&k| {
            lam[k] > 0.0 && {
                let col: Vec<f64> = (0..n).map(|i| v[(i, k)]).collect();
                proj.quad(&col, &col) > 0.5
            }
        })
        .collect();
    let lmin = kept.iter().map(|&k| lam[k]).fold(f64::INFINITY, f64::min);
    let mut alpha = vec![0.0; n];
    for &k in &kept {
        // B 1 = √λ_min Σ_k v_k (v_kᵀ 1) / √λ_k
        let proj_one: f64 = (0..n).map(|i| v[(i, k)]).sum();
        let f = (lmin / lam[k]).sqrt() * proj_one;
        for (i, a) in alpha.iter_mut().enumerate() {
            *a += f * v[(i, k)];
        }
    }
    alpha
}
