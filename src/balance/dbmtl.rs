//! DB-MTL (Lin et al. 2023): per-task gradients of `log(l_i + ε)` (computed from the raw
//! gradients by the chain rule, `g_i / (l_i + ε)`), an EMA `ĝ_i ← β ĝ_i + (1−β) g_i`
//! (β = 0.9, ĝ starts at 0), `α_i = max_j ‖ĝ_j‖ / ‖ĝ_i‖`, `d = Σ α_i ĝ_i`.
//!
//! Weights: `α` (coefficients on the EMA rows, not on this step's gradients). Heads follow
//! the paper: they get the plain gradient of `log(l_i + ε)`, i.e. weight `1 / (l_i + ε)`.
//! The EMA (`[T, P]`) is the checkpointed state.
use super::autograd::host_vec;
use super::gradient_method::{Combination, GradientMethod};
use super::options::Options;
use super::Balancer;
use super::{state, StepContext};
use tch::{Kind, Tensor};

pub(super) fn build(o: &mut Options, tasks: usize) -> anyhow::Result<Box<dyn Balancer>> {
    let beta = o.unit_interval("beta", 0.9)?;
    o.gradient_method(DbMtl::new(tasks, beta))
}

pub const EPS: f64 = 1e-8;

pub struct DbMtl {
    beta: f64,
    tasks: usize,
    ema: Option<Tensor>,
}

impl DbMtl {
    pub fn new(tasks: usize, beta: f64) -> Self {
        Self { beta, tasks, ema: None }
    }

    /// The EMA of the log-loss gradients, once a step has run.
    pub fn ema(&self) -> Option<&Tensor> {
        self.ema.as_ref()
    }

    /// One DB-MTL step on the raw per-task gradients `[T, P]` and losses `[T]`.
    pub fn combine(&mut self, grads: &Tensor, losses: &Tensor) -> anyhow::Result<Combination> {
        let t = grads.size()[0];
        anyhow::ensure!(t as usize == self.tasks, "balance: dbmtl built for {} tasks, got {t}", self.tasks);
        let scale = (losses.detach().to_kind(grads.kind()).to_device(grads.device()) + EPS).reciprocal();
        let log_grads = grads * scale.unsqueeze(1);
        let ema = match self.ema.take() {
            Some(e) if e.size() == grads.size() => {
                e.to_device(grads.device()).to_kind(grads.kind()) * self.beta + log_grads * (1.0 - self.beta)
            }
            _ => log_grads * (1.0 - self.beta),
        };
        let norms = host_vec(&ema.to_kind(Kind::Double).square().sum_dim_intlist(1, false, Kind::Double).sqrt())?;
        let max_norm = norms.iter().copied().fold(0.0, f64::max);
        let alpha: Vec<f64> = norms.iter().map(|n| if *n > 0.0 { max_norm / n } else { 1.0 }).collect();
        let comb = Combination::weighted(&ema, &alpha);
        self.ema = Some(ema);
        Ok(comb)
    }
}

impl GradientMethod for DbMtl {
    fn name(&self) -> &'static str {
        "dbmtl"
    }

    fn combine_step(&mut self, grads: &Tensor, losses: &Tensor, _ctx: &StepContext) -> anyhow::Result<Combination> {
        self.combine(grads, losses)
    }

    fn head_weights(&self, comb: &Combination, losses: &Tensor) -> Tensor {
        (losses.to_kind(comb.weights.kind()).to_device(comb.weights.device()) + EPS).reciprocal()
    }

    fn state(&self) -> Vec<(String, Tensor)> {
        // Before the first step there is no EMA yet: store an empty [T, 0] buffer.
        let ema = self
            .ema
            .as_ref()
            .map(Tensor::shallow_clone)
            .unwrap_or_else(|| Tensor::zeros([self.tasks as i64, 0], (Kind::Float, tch::Device::Cpu)));
        vec![("ema".into(), ema)]
    }

    fn load_state(&mut self, tensors: &[(String, Tensor)]) -> anyhow::Result<()> {
        let ema = state::get(tensors, "ema", &[self.tasks as i64, -1])?;
        self.ema = (ema.size()[1] > 0).then_some(ema);
        Ok(())
    }
}
