//! Uncertainty weighting (Kendall et al. 2018): learnable log-variances `s` (init 0) and
//! `L = Σ ½ (e^{-s_i} l_i + s_i)`.
//!
//! The model's parameters see the weights `½ e^{-s_i}`. The `s_i` get their exact gradient
//! `½ (1 − e^{-s_i} l_i)` in closed form and an Adam step of their own (option `lr`) in the same
//! call, which is the joint update of model and `s` without the trainer's optimizer knowing
//! about `s`. Everything stays on the device: no host synchronisation.
use super::adam::Adam;
use super::options::Options;
use super::{autograd, state, Balancer, GradientSpace, StepContext};
use tch::{Kind, Tensor};

pub(super) fn build(o: &mut Options, tasks: usize) -> anyhow::Result<Box<dyn Balancer>> {
    Ok(Box::new(Uncertainty::new(tasks, o.positive("lr", 0.025)?)))
}

pub struct Uncertainty {
    log_vars: Tensor,
    adam: Adam,
}

impl Uncertainty {
    pub fn new(tasks: usize, lr: f64) -> Self {
        Self {
            log_vars: Tensor::zeros([tasks as i64], (Kind::Float, tch::Device::Cpu)),
            adam: Adam::new(tasks, lr, 0.0, Kind::Float),
        }
    }

    /// The current log-variances `s`.
    pub fn log_vars(&self) -> &Tensor {
        &self.log_vars
    }

    /// The weights `½ e^{-s}` of this step; then one Adam step on `s` for these losses.
    pub fn weights(&mut self, losses: &Tensor) -> Tensor {
        self.log_vars = self.log_vars.to_device(losses.device());
        let precision = (-&self.log_vars).exp();
        let weights = &precision * 0.5;
        let grad = (1.0 - precision * losses.to_kind(Kind::Float)) * 0.5;
        self.adam.step(&mut self.log_vars, &grad);
        weights
    }
}

impl Balancer for Uncertainty {
    fn name(&self) -> &'static str {
        "uncertainty"
    }

    fn space(&self) -> GradientSpace {
        GradientSpace::Losses
    }

    fn backward(&mut self, ctx: &StepContext) -> anyhow::Result<Tensor> {
        let w = self.weights(&autograd::stacked_losses(ctx.losses));
        autograd::backward_weighted(ctx, &w)?;
        Ok(w)
    }

    fn state(&self) -> Vec<(String, Tensor)> {
        let mut s = vec![("log_vars".to_string(), self.log_vars.shallow_clone())];
        s.extend(self.adam.state(""));
        s
    }

    fn load_state(&mut self, tensors: &[(String, Tensor)]) -> anyhow::Result<()> {
        self.log_vars = state::get(tensors, "log_vars", &self.log_vars.size())?.to_kind(Kind::Float);
        self.adam.load_state(tensors, "")
    }
}
