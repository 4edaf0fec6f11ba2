//! Geometric loss strategy: `L = (Π l_i)^{1/T}`.
//!
//! Its gradient is `Σ_i (L / (T l_i)) ∇l_i`, so it is applied as those detached weights
//! (computed on the device); losses are floored at 1e-12 so a zero loss gives a finite
//! (zero-gradient) term instead of NaN.
use super::options::Options;
use super::{autograd, Balancer, GradientSpace, StepContext};
use tch::{Kind, Tensor};

pub(super) fn build(_o: &mut Options, _tasks: usize) -> anyhow::Result<Box<dyn Balancer>> {
    Ok(Box::new(Gls))
}

/// The weights `(Π l)^{1/T} / (T l_i)` for losses `[T]`.
pub fn gls_weights(losses: &Tensor) -> Tensor {
    let l = losses.detach().to_kind(Kind::Float).clamp_min(1e-12);
    let t = l.size()[0] as f64;
    let geo = l.log().mean(Kind::Float).exp();
    geo / (l * t)
}

pub struct Gls;

impl Balancer for Gls {
    fn name(&self) -> &'static str {
        "gls"
    }

    fn space(&self) -> GradientSpace {
        GradientSpace::Losses
    }

    fn backward(&mut self, ctx: &StepContext) -> anyhow::Result<Tensor> {
        let w = gls_weights(&autograd::stacked_losses(ctx.losses));
        autograd::backward_weighted(ctx, &w)?;
        Ok(w)
    }
}
