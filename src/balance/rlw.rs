//! Random loss weighting: `w = softmax(z)`, `z ~ N(0, I)` drawn every step from
//! `rng::stream(seed, Balance, step)`, so a resumed run draws the same weights.
use super::options::Options;
use super::{autograd, Balancer, GradientSpace, StepContext};
use crate::rng::{self, Purpose};
use rand::Rng;
use tch::Tensor;

pub(super) fn build(_o: &mut Options, _tasks: usize) -> anyhow::Result<Box<dyn Balancer>> {
    Ok(Box::new(Rlw))
}

/// Standard normal draws by Box–Muller (rand 0.8 has no normal distribution without rand_distr).
pub fn standard_normals(rng: &mut impl Rng, n: usize) -> Vec<f64> {
    (0..n)
        .map(|_| {
            let u1: f64 = 1.0 - rng.gen::<f64>(); // (0, 1]: log is finite
            let u2: f64 = rng.gen();
            (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()
        })
        .collect()
}

/// RLW's weights for `tasks` tasks at `step` of the run seeded `seed`.
pub fn rlw_weights(tasks: usize, seed: u64, step: u64) -> Vec<f64> {
    super::softmax(&standard_normals(&mut rng::stream(seed, Purpose::Balance, step), tasks))
}

pub struct Rlw;

impl Balancer for Rlw {
    fn name(&self) -> &'static str {
        "rlw"
    }

    fn space(&self) -> GradientSpace {
        GradientSpace::Losses
    }

    fn backward(&mut self, ctx: &StepContext) -> anyhow::Result<Tensor> {
        anyhow::ensure!(!ctx.losses.is_empty(), "balance: no task losses");
        let w = rlw_weights(ctx.losses.len(), ctx.seed, ctx.step);
        autograd::backward_with_weights(ctx, &w)
    }
}
