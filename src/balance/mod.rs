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
pub mod autograd;
pub mod blocked_gram;
pub mod cagrad;
pub mod dbmtl;
pub mod dwa;
pub mod famo;
pub mod gls;
pub mod gradient_method;
pub mod gradnorm;
pub mod gradvac;
pub mod imtl;
pub mod mgda;
pub mod nash;
pub(crate) mod options;
pub mod pcgrad;
pub mod rlw;
pub mod solvers;
pub(crate) mod state;
pub mod static_weights;
pub mod uncertainty;
pub mod upgrad;

#[cfg(test)]
mod tests;

pub use gradient_method::{Combination, GradientBalancer, GradientMethod};

use crate::config::{BalanceConfig, Config, GradientOn};
use options::Options;
use std::collections::BTreeMap;
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
    /// Trainable parameters shared by the tasks (the backbone, for hard sharing).
    pub shared_params: &'a [Tensor],
    /// Trainable parameters each task uses alone (its head, and what the architecture gives
    /// it alone), in task order.
    pub head_params: &'a [Vec<Tensor>],
    /// In `Representation` space: the shared representation (graph attached; the backbone's
    /// feature maps for hard sharing) and the detached, `requires_grad` copies the tasks'
    /// private parts were run on.
    pub features: Option<(&'a [Tensor], &'a [Tensor])>,
    /// Configured static weight of each task (used by `static` only).
    pub task_weights: &'a [f64],
    /// Global step (0-based) and epoch, for methods with schedules or seeded randomness.
    pub step: u64,
    pub epoch: u64,
    pub seed: u64,
    /// In a distributed run, the ranks: the losses above are then already averaged over them,
    /// and gradient methods combine the gradients of the whole global batch
    /// ([`autograd::across_ranks`]), so every rank computes the same task weights.
    pub ranks: Option<&'a crate::dist::Group>,
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

/// A balancing method as `balance.method` names it, and how to build it from its options for
/// a number of tasks.
pub struct Method {
    pub name: &'static str,
    build: fn(&mut Options, usize) -> anyhow::Result<Box<dyn Balancer>>,
}

/// Every method `balance.method` accepts.
pub const METHODS: &[Method] = &[
    Method { name: "static", build: static_weights::build_static },
    Method { name: "ew", build: static_weights::build_equal },
    Method { name: "uncertainty", build: uncertainty::build },
    Method { name: "dwa", build: dwa::build },
    Method { name: "gls", build: gls::build },
    Method { name: "rlw", build: rlw::build },
    Method { name: "famo", build: famo::build },
    Method { name: "mgda", build: mgda::build },
    Method { name: "pcgrad", build: pcgrad::build },
    Method { name: "gradvac", build: gradvac::build },
    Method { name: "cagrad", build: cagrad::build },
    Method { name: "imtl", build: imtl::build },
    Method { name: "nash", build: nash::build },
    Method { name: "aligned", build: aligned::build },
    Method { name: "dbmtl", build: dbmtl::build },
    Method { name: "gradnorm", build: gradnorm::build },
    Method { name: "upgrad", build: upgrad::build },
];

/// The names of every method, in registry order.
pub fn method_names() -> Vec<&'static str> {
    METHODS.iter().map(|m| m.name).collect()
}

/// Builds the configured method. Unknown names and bad options are user errors naming
/// `balance.method` / `balance.options.<key>`.
pub fn build(cfg: &Config) -> anyhow::Result<Box<dyn Balancer>> {
    build_for(&cfg.balance, cfg.tasks.len())
}

/// [`build`] from the `balance` section alone, for `tasks` tasks.
pub fn build_for(balance: &BalanceConfig, tasks: usize) -> anyhow::Result<Box<dyn Balancer>> {
    let Some(method) = METHODS.iter().find(|m| m.name == balance.method) else {
        crate::user_bail!(
            "balance.method: unknown method '{}' (expected one of: {})",
            balance.method,
            method_names().join(", ")
        )
    };
    let mut o = Options::new(balance);
    let balancer = (method.build)(&mut o, tasks)?;
    o.finish()?;
    Ok(balancer)
}

/// What `mtl-train list` shows of a method: every option with its default, and whether it
/// combines per-task gradients (then `balance.on` applies).
pub struct MethodFacts {
    pub options: BTreeMap<String, serde_yaml::Value>,
    pub gradient: bool,
}

/// The [`MethodFacts`] of `method` built for `tasks` tasks with no options set.
pub fn facts(method: &Method, tasks: usize) -> anyhow::Result<MethodFacts> {
    let none = BalanceConfig { method: method.name.into(), on: GradientOn::Params, options: BTreeMap::new() };
    let mut o = Options::new(&none);
    (method.build)(&mut o, tasks)?;
    let gradient = o.reads_space();
    Ok(MethodFacts { options: o.finish()?, gradient })
}

/// Numerically stable softmax of a few values.
pub(crate) fn softmax(x: &[f64]) -> Vec<f64> {
    let max = x.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let e: Vec<f64> = x.iter().map(|v| (v - max).exp()).collect();
    let s: f64 = e.iter().sum();
    e.iter().map(|v| v / s).collect()
}
