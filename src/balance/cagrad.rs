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
use super::solvers::{clean_simplex, qp_nonneg, uniform, Mat, RESOLUTION};
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

/// CAGrad's direction as `d = g0 + Gᵀy` (`g0 = Gᵀ1/T` the mean gradient, `c = α‖g0‖`):
/// returns `y`, the coefficients of the correction, which has norm `≤ c`.
///
/// The paper's problem is `max_d min_i g_i·d` over the ball `‖d − g0‖ ≤ c`; its dual is
/// `w = argmin_{w ∈ Δ} wᵀ M b + c √(wᵀ M w)` (`b = 1/T`) and `d = g0 + c g_w/‖g_w‖` with
/// `g_w = Gᵀw`, so `y = c w/‖g_w‖`. The dual is solved through
/// `c‖x‖ = min_{t>0} (c/2)(‖x‖²/t + t)`: for fixed `t` it is a simplex QP (solved exactly)
/// whose `g_{w(t)}` is the point of the convex hull `H` of the gradients nearest to
/// `−(t/c) g0`, and the optimal `t` is the root of `φ(t) = ‖g_{w(t)}‖ − t` (decreasing, the
/// derivative of a convex function of `t`), found by bisection in `log t`.
///
/// Where `‖g_{w(t)}‖` is too small for the Gram matrix to resolve (below [`RESOLUTION`]) the
/// hull reaches the origin, and there `g_{w(t)} = (t/c) Π` exactly for small `t`, with
/// `Π = Π_K(−g0)` the projection onto the cone `K` spanned by the gradients: one
/// non-negative least-squares problem with O(1) terms, exact whatever the scale. So the sign
/// of `φ` there is that of `‖Π‖ − c`, and if the root lies in that range the correction is
/// `c Π/‖Π‖`. If there is no root (`‖Π‖ ≤ c`: `g_w = 0` at the optimum, whose direction is
/// undefined), every point of the ball that conflicts with no task is optimal, and the one
/// nearest the mean is `g0 + Π` (the dual cone's projection of `g0`): the mean itself when it
/// conflicts with no task.
///
/// (Deciding at a tiny `t` instead let the QP's linear term fall below rounding, so the mean
/// was returned exactly when the origin lies inside the hull, where the optimum is elsewhere.)
pub fn cagrad_correction(m: &Mat, c: f64) -> Vec<f64> {
    let n = m.n();
    let norms: Vec<f64> = (0..n).map(|i| m[(i, i)].max(0.0).sqrt()).collect();
    let max_norm = norms.iter().copied().fold(0.0, f64::max);
    let smallest = norms.iter().copied().filter(|&v| v > 0.0).fold(f64::INFINITY, f64::min);
    if n == 0 || max_norm <= 0.0 || c.is_nan() || c <= 0.0 {
        return vec![0.0; n];
    }
    let lin = m.mul_vec(&uniform(n));
    // Π_K(−g0) = Gᵀw with w = argmin_{w ≥ 0} ½‖Gᵀw + g0‖² = ½wᵀMw + (Mb)ᵀw + const.
    let cone = qp_nonneg(m, &lin, None);
    let cone_norm = m.quad(&cone, &cone).max(0.0).sqrt();
    let q = m.scaled(c);
    // min (c/2t) wᵀMw + linᵀw  ⇔  min ½ wᵀ(cM)w + t·linᵀw
    let solve = |t: f64| clean_simplex(qp_nonneg(&q, &lin.iter().map(|v| v * t).collect::<Vec<_>>(), Some(1.0)));
    // ‖g_w‖ when it is resolved, `None` when it is not.
    let resolved_norm = |w: &[f64]| {
        let norm = m.quad(w, w).max(0.0).sqrt();
        let terms: f64 = w.iter().zip(&norms).map(|(w, n)| w.abs() * n).sum();
        (norm > RESOLUTION * terms).then_some(norm)
    };
    let positive = |t: f64| resolved_norm(&solve(t)).map_or(cone_norm > c, |norm| norm > t);
    // Below the resolution, along the cone: the correction c Π/‖Π‖, or Π when ‖Π‖ ≤ c.
    let along_cone = || cone.iter().map(|v| v * (c / cone_norm).min(1.0)).collect::<Vec<_>>();
    // A resolved g_w has ‖g_w‖ > RESOLUTION·Σ w_i‖g_i‖ ≥ RESOLUTION·min‖g_i‖, so a root below
    // that lies in the unresolved range. φ(max‖g_i‖) ≤ 0 since ‖g_w‖ ≤ max‖g_i‖.
    let (mut lo, mut hi) = ((RESOLUTION * smallest).ln(), max_norm.ln());
    if !positive(lo.exp()) {
        return along_cone();
    }
    for _ in 0..200 {
        let mid = 0.5 * (lo + hi);
        if mid <= lo || mid >= hi {
            break;
        }
        if positive(mid.exp()) {
            lo = mid;
        } else {
            hi = mid;
        }
    }
    let w = solve((0.5 * (lo + hi)).exp());
    match resolved_norm(&w) {
        Some(norm) => w.iter().map(|v| v * c / norm).collect(),
        None => along_cone(),
    }
}
