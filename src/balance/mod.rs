//! Balancing: how the tasks' losses (and, for gradient methods, their gradients) become one
//! update. Each method is one file behind [`Balancer`]; [`build`] is the registry.
//!
//! The trainer zeroes every gradient, runs the forward pass and calls [`Balancer::backward`]
//! once per step. Afterwards every trainable parameter's `.grad` must hold the update
//! direction: shared parameters the combined direction, each head its own loss's gradient
//! (times that task's weight where the method produces weights).
//!
//! Hooks the trainer calls besides `backward` (see docs/BALANCE_API.md):
//! - [`Balancer::after_step`], only when [`Balancer::needs_after_step`] is true (FAMO): after
//!   the optimizer step, with the losses of the same batch re-evaluated without gradients.
//! - [`Balancer::end_epoch`] after every training epoch with the epoch-mean loss per task (DWA).
//! - [`Balancer::state`] / [`Balancer::load_state`] with the checkpoint.
//!
//! Gradient methods are also plain functions on a `[T, P]` matrix of per-task gradients
//! returning a [`Combination`] (`mgda::mgda`, `pcgrad::pcgrad`, `cagrad::cagrad`, ...), and
//! the stateful ones structs with a `combine` method, so they can be used without a trainer.
pub(crate) mod adam;
pub mod aligned;
pub mod cagrad;
pub mod dbmtl;
pub mod dwa;
pub mod famo;
pub mod gls;
pub mod gradient;
pub mod gradnorm;
pub mod grads;
pub mod gradvac;
pub mod imtl;
pub mod mgda;
pub mod nash;
mod options;
pub mod pcgrad;
pub mod rlw;
pub mod solvers;
pub(crate) mod state;
pub mod static_weights;
pub mod uncertainty;
pub mod upgrad;

#[cfg(test)]
mod tests;

pub use gradient::{Combination, GradientBalancer, GradientMethod};

use crate::config::{BalanceConfig, Config};
use options::Options;
use tch::Tensor;

/// Where gradient methods take the per-task gradients.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GradientSpace {
    /// The method needs only the losses: one ordinary backward.
    Losses,
    /// Per-task gradients w.r.t. the shared (backbone) parameters: T backward passes.
    Params,
    /// Per-task gradients w.r.t. the shared representation: the heads run on a detached copy
    /// of the backbone's features, and the backbone gets one backward with the combined direction.
    Representation,
}

/// Everything a method may use for one step.
pub struct StepContext<'a> {
    /// Per-task scalar losses, with their autograd graphs attached, in task order.
    pub losses: &'a [Tensor],
    /// Trainable backbone parameters.
    pub shared_params: &'a [Tensor],
    /// Trainable parameters of each task's head, in task order.
    pub head_params: &'a [Vec<Tensor>],
    /// In `Representation` space: the backbone's output feature maps (graph attached) and
    /// the detached, `requires_grad` copies the heads were run on.
    pub features: Option<(&'a [Tensor], &'a [Tensor])>,
    /// Configured static weight of each task (used by `static` only).
    pub task_weights: &'a [f64],
    /// Global step (0-based) and epoch, for methods with schedules or seeded randomness.
    pub step: u64,
    pub epoch: u64,
    pub seed: u64,
}

/// A balancing method.
pub trait Balancer {
    fn name(&self) -> &'static str;

    /// Where the trainer should set up gradients (decides whether heads run on detached features).
    fn space(&self) -> GradientSpace;

    /// Backpropagates this step's objective and returns the task weights it used, as a
    /// detached float tensor `[T]` on the losses' device. Loss-level methods never
    /// synchronise with the host; gradient methods read their `T × T` Gram matrix once.
    fn backward(&mut self, ctx: &StepContext) -> anyhow::Result<Tensor>;

    /// Whether the trainer must call [`Balancer::after_step`] (it costs a forward pass).
    fn needs_after_step(&self) -> bool {
        false
    }

    /// Called after the optimizer step, when [`Balancer::needs_after_step`] is true, with the
    /// per-task losses of the *same batch* recomputed by the updated model without gradients
    /// (`tch::no_grad`, same train/eval mode and dropout seed as the step's forward).
    fn after_step(&mut self, _losses_after: &[Tensor]) -> anyhow::Result<()> {
        Ok(())
    }

    /// Called at the end of every training epoch with the epoch's mean training loss per task
    /// (DWA uses it).
    fn end_epoch(&mut self, _epoch: u64, _mean_losses: &[f64]) {}

    /// Tensors to store in the checkpoint (names without prefix).
    fn state(&self) -> Vec<(String, Tensor)> {
        Vec::new()
    }

    /// Restores what [`Balancer::state`] returned.
    fn load_state(&mut self, _tensors: &[(String, Tensor)]) -> anyhow::Result<()> {
        Ok(())
    }
}

/// Every method name `balance.method` accepts.
pub const METHODS: &[&str] = &[
    "static",
    "ew",
    "uncertainty",
    "dwa",
    "gls",
    "rlw",
    "famo",
    "mgda",
    "pcgrad",
    "gradvac",
    "cagrad",
    "imtl",
    "nash",
    "aligned",
    "dbmtl",
    "gradnorm",
    "upgrad",
];

/// Builds the configured method. Unknown names and bad options are user errors naming
/// `balance.method` / `balance.options.<key>`.
pub fn build(cfg: &Config) -> anyhow::Result<Box<dyn Balancer>> {
    build_for(&cfg.balance, cfg.tasks.len())
}

/// [`build`] from the `balance` section alone, for `tasks` tasks.
pub fn build_for(balance: &BalanceConfig, tasks: usize) -> anyhow::Result<Box<dyn Balancer>> {
    let mut o = Options::new(balance);
    let positive = |x: f64| x > 0.0;
    let non_negative = |x: f64| x >= 0.0;
    let unit = |x: f64| (0.0..1.0).contains(&x);
    let balancer: Box<dyn Balancer> = match balance.method.as_str() {
        "static" => Box::new(static_weights::StaticWeights::configured()),
        "ew" => Box::new(static_weights::StaticWeights::equal()),
        "uncertainty" => {
            Box::new(uncertainty::Uncertainty::new(tasks, o.f64("lr", 0.025, "a positive number", positive)?))
        }
        "dwa" => Box::new(dwa::Dwa::new(tasks, o.f64("temperature", 2.0, "a positive number", positive)?)),
        "gls" => Box::new(gls::Gls),
        "rlw" => Box::new(rlw::Rlw),
        "famo" => Box::new(famo::Famo::new(
            tasks,
            o.f64("lr", 0.025, "a positive number", positive)?,
            o.f64("weight_decay", 1e-3, "a number ≥ 0", non_negative)?,
        )),
        "mgda" => {
            let norm = o.choice("normalization", &mgda::MgdaNormalization::NAMES)?;
            let normalization = mgda::MgdaNormalization::from_name(norm)
                .ok_or_else(|| anyhow::anyhow!("balance: mgda normalisation '{norm}' has no variant"))?;
            gradient_method(&mut o, mgda::Mgda { normalization })?
        }
        "pcgrad" => gradient_method(&mut o, pcgrad::PcGrad)?,
        "gradvac" => {
            let beta = o.f64("beta", 0.5, "a number in [0, 1)", unit)?;
            gradient_method(&mut o, gradvac::GradVac::new(tasks, beta))?
        }
        "cagrad" => {
            let alpha = o.f64("alpha", 0.5, "a number in [0, 1)", unit)?;
            gradient_method(&mut o, cagrad::CaGrad { alpha })?
        }
        "imtl" => gradient_method(&mut o, imtl::Imtl)?,
        "nash" => {
            let every = o.positive_int("update_every", 1)?;
            gradient_method(&mut o, nash::NashMtl::new(tasks, every))?
        }
        "aligned" => gradient_method(&mut o, aligned::AlignedMtl)?,
        "dbmtl" => {
            let beta = o.f64("beta", 0.9, "a number in [0, 1)", unit)?;
            gradient_method(&mut o, dbmtl::DbMtl::new(tasks, beta))?
        }
        "gradnorm" => {
            let asymmetry = o.f64("alpha", 1.5, "a number ≥ 0", non_negative)?;
            let lr = o.f64("lr", 0.025, "a positive number", positive)?;
            gradient_method(&mut o, gradnorm::GradNorm::new(tasks, asymmetry, lr))?
        }
        "upgrad" => {
            let reg = o.f64("reg_eps", upgrad::DEFAULT_REG_EPS, "a number ≥ 0", non_negative)?;
            gradient_method(&mut o, upgrad::UpGrad { reg_eps: reg })?
        }
        other => {
            crate::user_bail!("balance.method: unknown method '{other}' (expected one of: {})", METHODS.join(", "))
        }
    };
    o.finish()?;
    Ok(balancer)
}

/// Wraps a gradient method with the space chosen by `balance.on`.
fn gradient_method<M: GradientMethod + 'static>(o: &mut Options, method: M) -> anyhow::Result<Box<dyn Balancer>> {
    Ok(Box::new(GradientBalancer::new(method, o.space())))
}

/// Numerically stable softmax of a few values.
pub(crate) fn softmax(x: &[f64]) -> Vec<f64> {
    let max = x.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let e: Vec<f64> = x.iter().map(|v| (v - max).exp()).collect();
    let s: f64 = e.iter().sum();
    e.iter().map(|v| v / s).collect()
}
