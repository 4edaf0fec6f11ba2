//! FAMO (Liu et al. 2023): logits `ξ` (init 0), `z = softmax(ξ)`, `D_i = l_i − l_i^min + ε`
//! (`l^min = 0`, `ε = 1e-8`). The model gets the gradient of `Σ z_i log D_i / c` with
//! `c = Σ_j z_j / D_j` detached, i.e. the weights `w_i = (z_i / D_i) / c` (`Σ w = 1`).
//!
//! After the optimizer step the trainer re-evaluates the *same batch* without gradients and
//! calls [`Balancer::after_step`]: with `δ_i = log D_i(before) − log D_i(after)`, `ξ` gets
//! the gradient `J_softmax(ξ)ᵀ δ = z ⊙ (δ − zᵀδ)` and an Adam step (lr 0.025, weight decay
//! 1e-3 by default, as `torch.optim.Adam`). Everything stays on the device.
use super::adam::Adam;
use super::options::Options;
use super::{autograd, state, Balancer, GradientSpace, StepContext};
use tch::{Kind, Tensor};

pub(super) fn build(o: &mut Options, tasks: usize) -> anyhow::Result<Box<dyn Balancer>> {
    Ok(Box::new(Famo::new(tasks, o.positive("lr", 0.025)?, o.non_negative("weight_decay", 1e-3)?)))
}

const EPS: f64 = 1e-8;

pub struct Famo {
    logits: Tensor,
    adam: Adam,
    /// `log D` of the losses the last weights were computed from, until `update` uses it.
    log_d_before: Option<Tensor>,
}

impl Famo {
    pub fn new(tasks: usize, lr: f64, weight_decay: f64) -> Self {
        Self {
            logits: Tensor::zeros([tasks as i64], (Kind::Float, tch::Device::Cpu)),
            adam: Adam::new(tasks, lr, weight_decay, Kind::Float),
            log_d_before: None,
        }
    }

    pub fn logits(&self) -> &Tensor {
        &self.logits
    }

    /// This step's weights for the (detached) losses `[T]`; remembers them for [`Famo::update`].
    pub fn weights(&mut self, losses: &Tensor) -> Tensor {
        self.logits = self.logits.to_device(losses.device());
        let d = losses.detach().to_kind(Kind::Float) + EPS;
        let z = self.logits.softmax(0, Kind::Float);
        let ratio = z / &d;
        self.log_d_before = Some(d.log());
        &ratio / ratio.sum(Kind::Float)
    }

    /// The logit update from the losses of the same batch after the optimizer step.
    /// Does nothing when no weights were computed since the last update.
    pub fn update(&mut self, losses_after: &Tensor) {
        let Some(before) = self.log_d_before.take() else {
            return;
        };
        let after = (losses_after.detach().to_kind(Kind::Float).to_device(before.device()) + EPS).log();
        let delta = before - after;
        let z = self.logits.softmax(0, Kind::Float);
        let grad = &z * (&delta - (&z * &delta).sum(Kind::Float));
        self.adam.step(&mut self.logits, &grad);
    }
}

impl Balancer for Famo {
    fn name(&self) -> &'static str {
        "famo"
    }

    fn space(&self) -> GradientSpace {
        GradientSpace::Losses
    }

    fn backward(&mut self, ctx: &StepContext) -> anyhow::Result<Tensor> {
        let w = self.weights(&autograd::stacked_losses(ctx.losses));
        autograd::backward_weighted(ctx, &w)?;
        Ok(w)
    }

    fn needs_after_step(&self) -> bool {
        true
    }

    fn after_step(&mut self, losses_after: &[Tensor]) -> anyhow::Result<()> {
        anyhow::ensure!(
            losses_after.len() as i64 == self.logits.size()[0],
            "balance: famo got {} losses after the step for {} tasks",
            losses_after.len(),
            self.logits.size()[0]
        );
        self.update(&autograd::stacked_losses(losses_after));
        Ok(())
    }

    fn state(&self) -> Vec<(String, Tensor)> {
        let mut s = vec![("logits".to_string(), self.logits.shallow_clone())];
        s.extend(self.adam.state(""));
        s
    }

    fn load_state(&mut self, tensors: &[(String, Tensor)]) -> anyhow::Result<()> {
        self.logits = state::get(tensors, "logits", &self.logits.size())?.to_kind(Kind::Float);
        self.log_d_before = None;
        self.adam.load_state(tensors, "")
    }
}
