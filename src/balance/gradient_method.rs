//! What every gradient method shares: the [`Combination`] it returns, the [`GradientMethod`]
//! trait each method implements, and [`GradientBalancer`], the one [`Balancer`] that runs any
//! of them in a training step (per-task gradients, combine, write `.grad`).
use super::autograd::{self, TaskGrads};
use super::{Balancer, GradientSpace, StepContext};
use tch::{Kind, Tensor};

/// One step's combination of per-task gradients.
#[derive(Debug)]
pub struct Combination {
    /// The update direction for the shared inputs, `[P]`, with the gradients' kind and device.
    pub direction: Tensor,
    /// The method's task weights, `[T]`, with the gradients' kind and device. For most
    /// methods `direction = Σ_i weights_i · g_i` exactly; each method's doc says what they are
    /// where it differs (MGDA with normalization, DB-MTL).
    pub weights: Tensor,
}

impl Combination {
    /// `direction = Σ_i coef_i · rows_i`, with `weights` as the task weights.
    pub fn from_rows(rows: &Tensor, coef: &[f64], weights: &[f64]) -> Self {
        Self { direction: autograd::combine_rows(rows, coef), weights: autograd::tensor_like(weights, rows) }
    }

    /// A method whose task weights are exactly its coefficients.
    pub fn weighted(rows: &Tensor, weights: &[f64]) -> Self {
        Self::from_rows(rows, weights, weights)
    }
}

/// The per-step part of a gradient method, run by [`GradientBalancer`].
pub trait GradientMethod {
    fn name(&self) -> &'static str;

    /// Combines this step's per-task gradients `grads` (`[T, P]`, rows in task order) given
    /// the detached losses `[T]`.
    fn combine_step(&mut self, grads: &Tensor, losses: &Tensor, ctx: &StepContext) -> anyhow::Result<Combination>;

    /// The factor applied to each head's own-loss gradient. Default: the task weights.
    /// (Negative values are clamped to 0 when applied: a head never ascends its loss.)
    fn head_weights(&self, comb: &Combination, _losses: &Tensor) -> Tensor {
        comb.weights.shallow_clone()
    }

    /// Weights to use this step *instead* of computing per-task gradients: the step is then
    /// one ordinary backward of `Σ w_i l_i` (Nash-MTL between its updates).
    fn reuse(&self, _step: u64) -> Option<Vec<f64>> {
        None
    }

    fn state(&self) -> Vec<(String, Tensor)> {
        Vec::new()
    }

    fn load_state(&mut self, _tensors: &[(String, Tensor)]) -> anyhow::Result<()> {
        Ok(())
    }
}

/// Runs a [`GradientMethod`] as a [`Balancer`] in parameter or representation space.
pub struct GradientBalancer<M> {
    method: M,
    space: GradientSpace,
    matrix: autograd::MatrixBuffer,
}

impl<M: GradientMethod> GradientBalancer<M> {
    pub fn new(method: M, space: GradientSpace) -> Self {
        Self { method, space, matrix: autograd::MatrixBuffer::default() }
    }

    pub fn method(&self) -> &M {
        &self.method
    }
}

impl<M: GradientMethod> Balancer for GradientBalancer<M> {
    fn name(&self) -> &'static str {
        self.method.name()
    }

    fn space(&self) -> GradientSpace {
        self.space
    }

    fn backward(&mut self, ctx: &StepContext) -> anyhow::Result<Tensor> {
        anyhow::ensure!(!ctx.losses.is_empty(), "balance: no task losses");
        let device = ctx.losses[0].device();
        if let Some(w) = self.method.reuse(ctx.step) {
            return autograd::backward_with_weights(ctx, &w);
        }
        let TaskGrads { matrix, heads } = autograd::task_gradients(ctx, self.space, &mut self.matrix)?;
        let matrix = autograd::across_ranks(ctx, self.space, matrix);
        let losses = autograd::stacked_losses(ctx.losses);
        let comb = self.method.combine_step(&matrix, &losses, ctx)?;
        let head_weights = self.method.head_weights(&comb, &losses);
        let direction = autograd::own_part(ctx, self.space, &comb.direction);
        autograd::apply(ctx, self.space, &direction, &heads, &head_weights)?;
        Ok(comb.weights.detach().to_kind(Kind::Float).to_device(device))
    }

    fn state(&self) -> Vec<(String, Tensor)> {
        self.method.state()
    }

    fn load_state(&mut self, tensors: &[(String, Tensor)]) -> anyhow::Result<()> {
        self.method.load_state(tensors)
    }
}
