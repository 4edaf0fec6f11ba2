//! Gradient Vaccine (Wang et al. 2021): PCGrad's loop, but each ordered pair `(i, j)` is
//! steered toward an EMA target cosine `φ̂_ij` (init 0) instead of orthogonality: with
//! `ρ = cos(g̃_i, g_j)`, if `ρ < φ̂_ij`,
//! `g̃_i += g_j · ‖g̃_i‖ (φ̂√(1−ρ²) − ρ√(1−φ̂²)) / (‖g_j‖ √(1−φ̂²))`; then
//! `φ̂_ij ← (1−β) φ̂_ij + β ρ` (β = 0.5). With `φ̂ = 0` the step is PCGrad's projection.
//!
//! Like PCGrad it runs on the Gram matrix; weights are the coefficients (`d = Σ w_k g_k`),
//! heads get weight 1. The targets are the checkpointed state.
use super::autograd::{gram, host_vec};
use super::gradient_method::{Combination, GradientMethod};
use super::options::Options;
use super::pcgrad::{check_orders, column_sums, dot_with, identity_rows, random_orders};
use super::solvers::Mat;
use super::Balancer;
use super::{state, StepContext};
use tch::Tensor;

pub(super) fn build(o: &mut Options, tasks: usize) -> anyhow::Result<Box<dyn Balancer>> {
    let beta = o.unit_interval("beta", 0.5)?;
    o.gradient_method(GradVac::new(tasks, beta))
}

/// Targets are kept below 1 so the adjustment stays finite (at `φ̂ = 1` it would have to
/// rotate `g̃_i` all the way onto `g_j`).
const MAX_TARGET: f64 = 1.0 - 1e-6;

pub struct GradVac {
    beta: f64,
    /// `φ̂_ij`, row-major `T × T` (the diagonal is unused).
    targets: Mat,
}

impl GradVac {
    pub fn new(tasks: usize, beta: f64) -> Self {
        Self { beta, targets: Mat::zeros(tasks) }
    }

    /// The current target cosines `φ̂`.
    pub fn targets(&self) -> &Mat {
        &self.targets
    }

    /// One GradVac step on per-task gradients `[T, P]` with the given orders (see
    /// [`random_orders`]); updates the targets.
    pub fn combine(&mut self, grads: &Tensor, orders: &[Vec<usize>]) -> anyhow::Result<Combination> {
        let m = gram(grads)?;
        let n = m.n();
        anyhow::ensure!(n == self.targets.n(), "balance: gradvac built for {} tasks, got {n}", self.targets.n());
        check_orders(orders, n)?;
        let mut c = identity_rows(n);
        for (i, order) in orders.iter().enumerate() {
            for &j in order {
                let norm_i = m.quad(&c[i], &c[i]).max(0.0).sqrt();
                let norm_j = m[(j, j)].max(0.0).sqrt();
                if norm_i == 0.0 || norm_j == 0.0 {
                    continue; // no angle to adjust (and nothing to learn about it)
                }
                let rho = (dot_with(&c[i], &m, j) / (norm_i * norm_j)).clamp(-1.0, 1.0);
                let phi = self.targets[(i, j)].min(MAX_TARGET);
                if rho < phi {
                    let s_phi = (1.0 - phi * phi).sqrt();
                    let s_rho = (1.0 - rho * rho).sqrt();
                    c[i][j] += norm_i * (phi * s_rho - rho * s_phi) / (norm_j * s_phi);
                }
                self.targets[(i, j)] = (1.0 - self.beta) * self.targets[(i, j)] + self.beta * rho;
            }
        }
        Ok(Combination::weighted(grads, &column_sums(&c)))
    }
}

impl GradientMethod for GradVac {
    fn name(&self) -> &'static str {
        "gradvac"
    }

    fn combine_step(&mut self, grads: &Tensor, _losses: &Tensor, ctx: &StepContext) -> anyhow::Result<Combination> {
        self.combine(grads, &random_orders(ctx.losses.len(), ctx.seed, ctx.step))
    }

    fn head_weights(&self, comb: &Combination, _losses: &Tensor) -> Tensor {
        comb.weights.ones_like()
    }

    fn state(&self) -> Vec<(String, Tensor)> {
        let n = self.targets.n() as i64;
        vec![("targets".into(), state::vec(self.targets.values()).reshape([n, n]))]
    }

    fn load_state(&mut self, tensors: &[(String, Tensor)]) -> anyhow::Result<()> {
        let n = self.targets.n();
        let values = host_vec(&state::get(tensors, "targets", &[n as i64, n as i64])?)?;
        self.targets = Mat::from_rows(n, values);
        Ok(())
    }
}
