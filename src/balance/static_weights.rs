//! Static weighting: L = Σ w_i l_i with the configured task weights (EW: all weights 1).
use super::options::Options;
use super::{autograd, Balancer, GradientSpace, StepContext};
use tch::Tensor;

/// `static`: the configured `tasks[].weight`s.
pub(super) fn build_static(_o: &mut Options, _tasks: usize) -> anyhow::Result<Box<dyn Balancer>> {
    Ok(Box::new(StaticWeights::configured()))
}

/// `ew`: every weight 1.
pub(super) fn build_equal(_o: &mut Options, _tasks: usize) -> anyhow::Result<Box<dyn Balancer>> {
    Ok(Box::new(StaticWeights::equal()))
}

pub struct StaticWeights {
    equal: bool,
}

impl StaticWeights {
    pub fn configured() -> Self {
        Self { equal: false }
    }

    pub fn equal() -> Self {
        Self { equal: true }
    }
}

impl Balancer for StaticWeights {
    fn name(&self) -> &'static str {
        if self.equal {
            "ew"
        } else {
            "static"
        }
    }

    fn space(&self) -> GradientSpace {
        GradientSpace::Losses
    }

    fn backward(&mut self, ctx: &StepContext) -> anyhow::Result<Tensor> {
        let t = ctx.losses.len();
        anyhow::ensure!(t > 0, "balance: no task losses");
        let weights: Vec<f64> = if self.equal { vec![1.0; t] } else { ctx.task_weights.to_vec() };
        anyhow::ensure!(weights.len() == t, "balance: {} task weights for {t} losses", weights.len());
        autograd::backward_with_weights(ctx, &weights)
    }
}
