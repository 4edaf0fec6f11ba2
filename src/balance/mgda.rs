//! MGDA (Sener & Koltun 2018): the minimum-norm point of the convex hull of the task
//! gradients, `α = argmin_{α ∈ Δ} ‖Σ α_i ĝ_i‖²`, `d = Σ α_i ĝ_i`, where `ĝ_i = g_i / s_i` is
//! the gradient after the optional normalization `s_i` (none: 1, l2: ‖g_i‖, loss: l_i,
//! loss+l2: l_i‖g_i‖). In representation space this is MGDA-UB.
//!
//! Weights: `α` (on the simplex). The direction is `Σ (α_i / s_i) g_i`.
use super::autograd::{gram, host_vec};
use super::gradient_method::{Combination, GradientMethod};
use super::options::Options;
use super::solvers::min_norm_simplex;
use super::Balancer;
use super::StepContext;
use tch::Tensor;

pub(super) fn build(o: &mut Options, _tasks: usize) -> anyhow::Result<Box<dyn Balancer>> {
    let name = o.choice("normalization", &MgdaNormalization::NAMES)?;
    let normalization = MgdaNormalization::from_name(name)
        .ok_or_else(|| anyhow::anyhow!("balance: mgda normalization '{name}' has no variant"))?;
    o.gradient_method(Mgda { normalization })
}

/// How MGDA rescales each task's gradient before solving.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MgdaNormalization {
    None,
    L2,
    Loss,
    LossL2,
}

impl MgdaNormalization {
    /// The option values, in this order.
    pub const NAMES: [&'static str; 4] = ["none", "l2", "loss", "loss+l2"];

    pub fn from_name(name: &str) -> Option<Self> {
        match name {
            "none" => Some(Self::None),
            "l2" => Some(Self::L2),
            "loss" => Some(Self::Loss),
            "loss+l2" => Some(Self::LossL2),
            _ => None,
        }
    }

    /// The divisor of each gradient; a divisor that is not a positive finite number is 1
    /// (a zero gradient or loss has nothing to rescale).
    fn scales(self, norms2: &[f64], losses: &[f64]) -> Vec<f64> {
        norms2
            .iter()
            .zip(losses)
            .map(|(n2, l)| {
                let s = match self {
                    Self::None => 1.0,
                    Self::L2 => n2.sqrt(),
                    Self::Loss => *l,
                    Self::LossL2 => l * n2.sqrt(),
                };
                if s > 0.0 && s.is_finite() {
                    s
                } else {
                    1.0
                }
            })
            .collect()
    }
}

/// MGDA on per-task gradients `[T, P]` and losses `[T]` (used by the loss normalizations).
pub fn mgda(grads: &Tensor, losses: &Tensor, normalization: MgdaNormalization) -> anyhow::Result<Combination> {
    let m = gram(grads)?;
    let norms2: Vec<f64> = (0..m.n()).map(|i| m[(i, i)]).collect();
    let scales = normalization.scales(&norms2, &host_vec(losses)?);
    let inv: Vec<f64> = scales.iter().map(|s| 1.0 / s).collect();
    let alpha = min_norm_simplex(&m.scale_sym(&inv));
    let coef: Vec<f64> = alpha.iter().zip(&inv).map(|(a, i)| a * i).collect();
    Ok(Combination::from_rows(grads, &coef, &alpha))
}

pub struct Mgda {
    pub normalization: MgdaNormalization,
}

impl GradientMethod for Mgda {
    fn name(&self) -> &'static str {
        "mgda"
    }

    fn combine_step(&mut self, grads: &Tensor, losses: &Tensor, _ctx: &StepContext) -> anyhow::Result<Combination> {
        mgda(grads, losses, self.normalization)
    }
}
