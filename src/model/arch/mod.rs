//! Architectures: how the tasks share the network between the input and their heads. Each
//! one is a file behind [`Architecture`] (the built network) and [`Plan`] (its options, read
//! and checked when the config is resolved); [`ARCHITECTURES`] is the registry.
//!
//! What an architecture says, for the trainer and the balancing methods:
//! - **features**: for a batch, the features each task's head reads (stage maps finest first
//!   for conv and resnet backbones, one vector for the MLP), in task order;
//! - **ownership**: which variables belong to one task alone ([`Architecture::private`]); the
//!   rest are shared. Gradient methods combine per-task gradients of the shared parameters and
//!   give each task's private parameters (head included) its own loss's gradient;
//! - **the representation** for `balance.on: representation`: every tensor computed by shared
//!   parameters alone that a task's private part reads. The forward passes each such tensor
//!   through [`Pass::cross`]; in representation space the private part then runs on detached
//!   copies, the per-task gradients are taken at those copies, and one backward sends the
//!   combined direction through the shared part. For hard sharing this is the backbone's
//!   output; [`Plan::no_representation`] says why an architecture has no such cut.
//!
//! docs/MODEL_ARCHITECTURES.md describes each architecture, its names and its representation.
pub mod cgc;
pub mod cross_stitch;
pub mod dselect_k;
mod fusion;
pub mod hps;
pub mod ltb;
pub mod mmoe;
pub mod mtan;
pub mod mtinet;
pub mod padnet;
pub mod ple;

#[cfg(test)]
mod tests;

use super::backbone::{self, Backbone};
use super::layers::{Compute, Linear};
use crate::config::{ArchitectureConfig, BackboneConfig, OptionMap};
use std::collections::BTreeMap;
use tch::nn::Path;
use tch::Tensor;

/// A built architecture.
pub trait Architecture {
    /// The features of every task's head for a batch `[N, C, H, W]`, in task order.
    fn forward(&self, x: &Tensor, pass: &mut Pass) -> Vec<Vec<Tensor>>;

    /// Paths (from the model's root) of the variables that task `task` alone uses, its head
    /// excluded: a variable is private when its name is a path or starts with `path.`.
    fn private(&self, _task: usize) -> Vec<String> {
        Vec::new()
    }
}

/// An architecture's options, read and checked; builds the network.
pub trait Plan {
    /// Creates the variables under `b.root` and returns the network.
    fn build(&self, b: &Build) -> Box<dyn Architecture>;

    /// Why `balance.on: representation` cannot work with this architecture (None: it can).
    fn no_representation(&self) -> Option<&'static str> {
        None
    }

    /// Whether gates read the flattened input image, whose size the model is built for
    /// (`data.image_size`², like the MLP backbone): then the images must be square.
    fn gates_read_the_image(&self) -> bool {
        false
    }
}

/// What an architecture is planned for.
pub struct Setting<'a> {
    pub backbone: &'a BackboneConfig,
    pub tasks: usize,
}

/// What an architecture is built with.
pub struct Build<'a> {
    pub root: &'a Path<'a>,
    pub backbone: &'a BackboneConfig,
    pub tasks: &'a [String],
    /// What each task's head outputs (for architectures that make their own predictions).
    pub outputs: &'a [super::HeadKind],
    pub in_channels: i64,
    pub image_size: i64,
}

impl Build<'_> {
    /// A backbone under `p`, as configured.
    pub fn backbone(&self, p: &Path) -> Backbone {
        Backbone::new(p, self.backbone, self.in_channels, self.input_features())
    }

    /// The flat size of one image (what a gate on the input reads).
    pub fn input_features(&self) -> i64 {
        self.in_channels * self.image_size * self.image_size
    }

    /// The flat size of one sample's output of every stage of the backbone (a spatial stage is
    /// its width at the image's side over the stage's stride; the MLP's its width).
    pub fn stage_sizes(&self) -> Vec<i64> {
        let widths = backbone::stage_widths(self.backbone);
        match backbone::is_spatial(self.backbone) {
            true => widths
                .iter()
                .zip(backbone::stage_strides(self.backbone))
                .map(|(w, s)| w * (self.image_size / s).pow(2))
                .collect(),
            false => widths,
        }
    }

    pub fn stages(&self) -> usize {
        backbone::stages(self.backbone)
    }

    /// `count` backbones under `<path>.0`, `<path>.1`, ….
    pub fn experts(&self, path: &Path, count: usize) -> Vec<Backbone> {
        (0..count).map(|k| self.backbone(&(path / k))).collect()
    }

    /// A softmax gate on the image: `gates.<task>` for every task, `outputs` weights each.
    pub fn gates(&self, outputs: i64) -> Vec<Linear> {
        self.tasks
            .iter()
            .map(|t| Linear::new(self.root / "gates" / t.as_str(), self.input_features(), outputs))
            .collect()
    }
}

/// An architecture as `model.architecture.kind` names it.
pub struct Entry {
    pub name: &'static str,
    /// Reads the options and checks the backbone (one-line user errors); builds nothing.
    plan: fn(&mut OptionMap, &Setting) -> anyhow::Result<Box<dyn Plan>>,
}

/// Every architecture `model.architecture.kind` accepts.
pub const ARCHITECTURES: &[Entry] = &[
    Entry { name: "hps", plan: hps::plan },
    Entry { name: "cross_stitch", plan: cross_stitch::plan },
    Entry { name: "mtan", plan: mtan::plan },
    Entry { name: "mmoe", plan: mmoe::plan },
    Entry { name: "cgc", plan: cgc::plan },
    Entry { name: "ple", plan: ple::plan },
    Entry { name: "dselect_k", plan: dselect_k::plan },
    Entry { name: "ltb", plan: ltb::plan },
    Entry { name: "padnet", plan: padnet::plan },
    Entry { name: "mtinet", plan: mtinet::plan },
];

pub fn architecture_names() -> Vec<&'static str> {
    ARCHITECTURES.iter().map(|a| a.name).collect()
}

/// The plan for `model.architecture` and every option's value (defaults included, for the
/// run's config.yaml). Unknown names, bad options and backbones the architecture cannot use
/// are user errors naming the key.
pub fn plan(
    cfg: &ArchitectureConfig,
    backbone: &BackboneConfig,
    tasks: usize,
) -> anyhow::Result<(Box<dyn Plan>, BTreeMap<String, serde_yaml::Value>)> {
    let Some(entry) = ARCHITECTURES.iter().find(|a| a.name == cfg.kind) else {
        crate::user_bail!(
            "model.architecture.kind: unknown architecture '{}' (expected one of: {})",
            cfg.kind,
            architecture_names().join(", ")
        )
    };
    let mut o = OptionMap::new("model.architecture", format!("architecture '{}'", cfg.kind), &cfg.options);
    let plan = (entry.plan)(&mut o, &Setting { backbone, tasks })?;
    let options = o.finish(|_| "")?;
    Ok((plan, options))
}

/// The architecture's rule for the loaded images (`h`×`w`; NYUv2's width comes from its files):
/// one-line user error.
pub fn check_images(cfg: &crate::config::ModelConfig, tasks: usize, h: i64, w: i64) -> anyhow::Result<()> {
    let (plan, _) = plan(&cfg.architecture, &cfg.backbone, tasks)?;
    if plan.gates_read_the_image() && h != w {
        crate::user_bail!(
            "model.architecture.kind: the gates of {} read the flattened image, built for square images; these are {h}×{w} (height × width)",
            cfg.architecture.kind
        );
    }
    Ok(())
}

/// Refuses the MLP backbone for an architecture that works on feature maps.
pub(crate) fn require_maps(s: &Setting, name: &str, why: &str) -> anyhow::Result<()> {
    if !backbone::is_spatial(s.backbone) {
        crate::user_bail!(
            "model.architecture.kind: {name} needs a conv or resnet backbone (model.backbone.kind): {why}"
        );
    }
    Ok(())
}

/// Training step of a forward pass, for architectures that draw random numbers while training.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StepIndex {
    pub seed: u64,
    pub step: u64,
    pub epoch: u64,
}

/// The shared representation (graph attached) and the detached copies the tasks read.
pub type Representation = (Vec<Tensor>, Vec<Tensor>);

/// How one forward pass runs, and what it records.
pub struct Pass {
    pub train: bool,
    pub compute: Compute,
    /// A training step: LTB samples its branches with Gumbel noise from
    /// `rng::stream(seed, Architecture, step)`. None: every choice is deterministic
    /// (evaluation, prediction).
    pub step: Option<StepIndex>,
    /// In representation space: every crossing, as (the tensor, its detached copy).
    crossings: Option<Vec<(Tensor, Tensor)>>,
    regularizer: Option<Tensor>,
    auxiliary: Vec<Auxiliary>,
    /// Evaluation: each gated architecture's per-task expert weights (task, `[N, experts]`).
    gates: Vec<(usize, Tensor)>,
}

/// A task's extra prediction that the trainer scores with the task's own loss, `weight` times,
/// and adds to that task's loss (PAD-Net's and MTI-Net's initial predictions).
pub struct Auxiliary {
    pub task: usize,
    pub weight: f64,
    /// In the shape of the task's head output, fp32.
    pub prediction: Tensor,
}

impl Pass {
    pub fn new(train: bool, compute: Compute, step: Option<StepIndex>, representation: bool) -> Self {
        Self {
            train,
            compute,
            step,
            crossings: representation.then(Vec::new),
            regularizer: None,
            auxiliary: Vec::new(),
            gates: Vec::new(),
        }
    }

    /// The same pass on data group `domain`'s images (see [`Compute::domain`]).
    pub fn on_domain(mut self, domain: usize) -> Self {
        self.compute = self.compute.on_domain(domain);
        self
    }

    /// `t` computed by shared parameters alone, about to be read by a task's private part:
    /// in representation space recorded and replaced by a detached copy that requires grad.
    /// Call it once per tensor and give every reader the returned tensor.
    pub fn cross(&mut self, t: &Tensor) -> Tensor {
        match &mut self.crossings {
            None => t.shallow_clone(),
            Some(list) => {
                let copy = t.detach().set_requires_grad(true);
                list.push((t.shallow_clone(), copy.shallow_clone()));
                copy
            }
        }
    }

    pub fn cross_all(&mut self, ts: &[Tensor]) -> Vec<Tensor> {
        ts.iter().map(|t| self.cross(t)).collect()
    }

    /// Adds a term that the trainer backpropagates besides the task losses (DSelect-k's
    /// selector regularization). It must only reach private parameters, through a graph of
    /// its own: the balancer's last backward frees the forward's graph.
    pub fn add_regularizer(&mut self, r: Tensor) {
        self.regularizer = Some(match self.regularizer.take() {
            Some(sum) => sum + r,
            None => r,
        });
    }

    /// Records task `task`'s auxiliary prediction (see [`Auxiliary`]).
    pub fn add_auxiliary(&mut self, task: usize, weight: f64, prediction: Tensor) {
        self.auxiliary.push(Auxiliary { task, weight, prediction });
    }

    /// The auxiliary predictions recorded so far.
    pub fn take_auxiliary(&mut self) -> Vec<Auxiliary> {
        std::mem::take(&mut self.auxiliary)
    }

    /// The crossings (tensors, detached copies) when in representation space, and the
    /// regularizer.
    /// Records task `task`'s gate weights `[N, experts]` (evaluation only: what
    /// `<task>.gate<k>`, the mean weight of expert k, reports).
    pub fn record_gate(&mut self, task: usize, weights: &Tensor) {
        if !self.train {
            self.gates.push((task, weights.detach()));
        }
    }

    /// The gate weights recorded so far (see [`Pass::record_gate`]).
    pub fn take_gates(&mut self) -> Vec<(usize, Tensor)> {
        std::mem::take(&mut self.gates)
    }

    pub fn into_parts(self) -> (Option<Representation>, Option<Tensor>) {
        let rep = self.crossings.map(|list| list.into_iter().unzip());
        (rep, self.regularizer)
    }
}

/// `Σ_k w_k · items_k` for weights `[K]` (one per item) or `[N, K]` (one per sample and item),
/// items of one shape `[N, …]`: stacked, scaled and summed over the stack, in the items' kind
/// (the PyTorch twin computes it with the same three operations).
pub fn weighted_sum(weights: &Tensor, items: &[Tensor]) -> Tensor {
    let stacked = Tensor::stack(items, 0);
    let k = items.len() as i64;
    let mut shape = vec![k];
    let w = if weights.dim() == 2 {
        // -1, not the batch size read here: a traced export keeps its batch dimension free.
        shape.push(-1);
        weights.tr()
    } else {
        weights.shallow_clone()
    };
    shape.resize(stacked.dim(), 1);
    let w = w.reshape(&shape).to_kind(stacked.kind());
    (w * stacked).sum_dim_intlist(0, false, None)
}

/// A softmax gate on a flattened input: `[N, outputs]` weights from `linear`.
pub fn gate(linear: &Linear, input: &Tensor, c: Compute) -> Tensor {
    linear.forward(&c.cast(&input.flatten(1, -1)), c).softmax(-1, None)
}

/// `<path>.<name>` for each path: the variables of a backbone under `path` in stage `stage`.
pub fn stage_paths(cfg: &BackboneConfig, path: &str, stage: usize) -> Vec<String> {
    backbone::stage_prefixes(cfg, stage).into_iter().map(|p| format!("{path}.{p}")).collect()
}
