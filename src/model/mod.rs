//! The multi-task model: an architecture (how the tasks share the network; hard parameter
//! sharing by default) and one head per task.
pub mod arch;
pub mod aspp;
pub mod backbone;
pub mod export;
pub mod heads;
pub mod layers;
pub mod table_input;
pub mod torchvision;

pub use arch::{Auxiliary, Pass, Representation, StepIndex};
pub use heads::{HeadKind, HeadSpec};

use crate::config::{Config, DomainNorm, Norm, Precision};
use crate::user_bail;
use arch::{Architecture, Build};
use heads::Head;
use layers::{Compute, NormLayout};
use std::collections::{BTreeMap, BTreeSet};
use tch::nn::VarStore;
use tch::{Device, Kind, Tensor};

/// Prefix of the hard-sharing backbone's variables; heads live under `heads.<task name>`.
pub const BACKBONE: &str = "backbone";
pub const HEADS: &str = "heads";

/// What loading weights does with head variables the file lacks (`--allow-missing-heads`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MissingHeads {
    Refuse,
    KeepInitialised,
}

/// Whether a forward pass trains (batch statistics, dropout, an architecture's random draws)
/// or evaluates.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Train,
    Eval,
}

/// What the heads read: the shared representation itself, or detached copies of it whose
/// gradients a gradient method takes one per task (`balance.on: representation`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HeadInput {
    Attached,
    Detached,
}

pub struct MultiTaskModel {
    pub vs: VarStore,
    arch: Box<dyn Architecture>,
    /// Table rows: the categorical columns' embeddings, before the architecture.
    table_input: Option<table_input::TableInput>,
    heads: Vec<Head>,
    /// Per task, the paths of the variables it alone uses (its head included).
    private: Vec<Vec<String>>,
    /// Per task, its data group.
    domains: Vec<usize>,
    /// How the BatchNorm layers keep their state across the data groups.
    layout: NormLayout,
    compute: Compute,
    seed: u64,
    /// The names of the variables that are parameters (trained unless frozen), as built.
    params: BTreeSet<String>,
    /// Every BatchNorm layer: its path and the switch that freezes it.
    norms: Vec<(String, layers::NormSwitch)>,
}

/// One forward pass's results; `O` is `Option<Tensor>` when only some heads ran.
pub struct Forward<O = Tensor> {
    /// One fp32 output per task, in task order.
    pub outputs: Vec<O>,
    /// In representation space: the shared representation (graph attached) and the detached
    /// copies the tasks' private parts ran on (see [`arch`]).
    pub representation: Option<Representation>,
    /// A term to backpropagate besides the task losses, on its own graph (DSelect-k).
    pub regularizer: Option<Tensor>,
    /// Training only: extra predictions each scored by its task's loss and added to it.
    pub auxiliary: Vec<Auxiliary>,
    /// Evaluation passes of gated architectures: (task, its expert weights `[N, experts]`).
    pub gates: Vec<(usize, Tensor)>,
}

impl MultiTaskModel {
    /// How many elements the model's variables hold, computed without allocating them.
    pub fn variable_count(cfg: &Config, heads: &[HeadSpec], in_channels: i64, image_size: i64) -> anyhow::Result<u64> {
        let mut built = Ok(());
        let count = layers::count_variables(|| {
            built = Self::new(cfg, heads, Device::Cpu, in_channels, image_size).map(|_| ());
        });
        built.map(|()| count)
    }

    /// Builds the configured architecture and the given heads on `device` with PyTorch's
    /// default initialisation, seeded from the run seed. `in_channels` and `image_size`
    /// describe the input images. Fails (a user error) on an architecture the config's
    /// backbone or options do not fit, which the resolve step has already refused.
    pub fn new(
        cfg: &Config,
        heads: &[HeadSpec],
        device: Device,
        in_channels: i64,
        image_size: i64,
    ) -> anyhow::Result<Self> {
        let m = &cfg.model;
        let (plan, _) = arch::plan(&m.architecture, &m.backbone, heads.len())?;
        tch::manual_seed((crate::rng::derive_seed(cfg.seed, crate::rng::Purpose::Init, 0) >> 1) as i64);
        let vs = VarStore::new(device);
        let domains: Vec<usize> = heads.iter().map(|h| h.domain).collect();
        let groups = domains.iter().max().map_or(1, |d| d + 1);
        let layout = norm_layout(m.domain_norm, groups, m.backbone.norm == Norm::Batch);
        // Every BatchNorm built in here is laid out for the data groups.
        let (model, norms) = layers::with_norm_layout(layout, move || {
            let root = vs.root();
            let tasks: Vec<String> = heads.iter().map(|h| h.task.clone()).collect();
            let fitted = cfg.data.features.as_ref().and_then(|f| f.fitted.as_ref());
            let table_input = fitted.and_then(|f| table_input::TableInput::new(&root, f));
            // The architecture reads the embedded row.
            let in_channels = match (fitted, &table_input) {
                (Some(f), Some(_)) => table_input::TableInput::out_width(f),
                _ => in_channels,
            };
            let outputs: Vec<HeadKind> = heads.iter().map(|h| h.kind).collect();
            let arch = plan.build(&Build {
                root: &root,
                backbone: &m.backbone,
                tasks: &tasks,
                outputs: &outputs,
                in_channels,
                image_size,
            });
            let info = backbone::feature_info(&m.backbone);
            // `pool: flatten` heads need the coarsest map's size: each stage after the first halves
            // the image exactly (the resolve step checks the divisibility).
            let top_hw = info.spatial.then(|| {
                let m = backbone::size_multiple(&m.backbone);
                (image_size / m, image_size / m)
            });
            let heads: Vec<Head> = heads
                .iter()
                .map(|h| {
                    let p = &root / HEADS / h.task.as_str();
                    let hc = m.heads.get(&h.task).cloned().unwrap_or_default();
                    Head::new(&p, &info, &hc, h.kind, m.backbone.norm == Norm::Batch, m.backbone.activation, top_hw)
                })
                .collect();
            let private = tasks
                .iter()
                .enumerate()
                .map(|(i, t)| {
                    let mut paths = vec![format!("{HEADS}.{t}")];
                    paths.extend(arch.private(i));
                    paths
                })
                .collect();
            let kind = match cfg.precision {
                Precision::Fp32 => Kind::Float,
                Precision::Bf16 => Kind::BFloat16,
            };
            let channels_last = cfg.speed.channels_last.is_on();
            let compute = Compute { kind, channels_last, domain: 0 };
            let params = vs.variables().into_iter().filter(|(_, t)| t.requires_grad()).map(|(n, _)| n).collect();
            Self {
                vs,
                arch,
                table_input,
                heads,
                private,
                domains,
                layout,
                compute,
                seed: cfg.seed,
                params,
                norms: Vec::new(),
            }
        });
        Ok(Self { norms, ..model })
    }

    pub fn device(&self) -> Device {
        self.vs.device()
    }

    /// How forwards compute (dtype, training layout).
    pub fn compute(&self) -> Compute {
        self.compute
    }

    /// How the BatchNorm layers keep their state across data groups.
    pub fn norm_layout(&self) -> NormLayout {
        self.layout
    }

    /// A forward pass's settings: its mode, the training step (for architectures
    /// that draw random numbers while training; None: deterministic), and what the heads read. It reads data group 0's images
    /// ([`Pass::on_domain`] says another).
    pub fn pass(&self, mode: Mode, step: Option<(u64, u64)>, heads: HeadInput) -> Pass {
        let step = step.map(|(step, epoch)| StepIndex { seed: self.seed, step, epoch });
        Pass::new(mode == Mode::Train, self.compute, step, heads == HeadInput::Detached)
    }

    /// Every head's fp32 outputs for a normalized float batch `[N, C, H, W]` of the pass's data
    /// group, in task order, with what the pass recorded.
    pub fn run(&self, x: &Tensor, pass: Pass) -> Forward {
        let Forward { outputs, representation, regularizer, auxiliary, gates } = self.run_heads(x, pass, None);
        let outputs = outputs.into_iter().map(|o| o.expect("every head ran")).collect();
        Forward { outputs, representation, regularizer, auxiliary, gates }
    }

    /// [`MultiTaskModel::run`] with only the heads of the tasks `active` marks (a stage of
    /// `train.stages`; None: all): the others do not run, so nothing of theirs changes.
    pub fn run_heads(&self, x: &Tensor, mut pass: Pass, active: Option<&[bool]>) -> Forward<Option<Tensor>> {
        let s = x.size();
        let embedded = self.table_input.as_ref().map(|t| t.forward(x));
        let features = self.arch.forward(embedded.as_ref().unwrap_or(x), &mut pass);
        let outputs = self
            .heads
            .iter()
            .zip(&features)
            .enumerate()
            .map(|(i, (h, f))| {
                active.is_none_or(|a| a[i]).then(|| h.forward(f, (s[2], s[3]), pass.train, pass.compute))
            })
            .collect();
        let auxiliary = pass.take_auxiliary();
        let gates = pass.take_gates();
        let (representation, regularizer) = pass.into_parts();
        Forward { outputs, representation, regularizer, auxiliary, gates }
    }

    /// One output per task, in task order, each computed as for its own data group's images
    /// (with that group's BatchNorm state, when groups keep their own: one pass per group);
    /// every choice deterministic (evaluation, prediction, export).
    pub fn forward(&self, x: &Tensor, mode: Mode) -> Vec<Tensor> {
        if self.layout.domains <= 1 {
            return self.forward_on(x, 0, mode);
        }
        let mut outputs: Vec<Option<Tensor>> = self.domains.iter().map(|_| None).collect();
        for d in 0..self.layout.domains {
            let of_d: Vec<usize> = (0..self.domains.len()).filter(|&i| self.domains[i] == d).collect();
            if of_d.is_empty() {
                continue;
            }
            let mut all = self.forward_on(x, d, mode);
            for i in of_d {
                outputs[i] = Some(std::mem::replace(&mut all[i], Tensor::new()));
            }
        }
        outputs.into_iter().map(|o| o.expect("every task has a data group")).collect()
    }

    /// Every head's output for a batch of data group `domain`'s images, in task order (only
    /// that group's tasks' outputs mean something when groups keep their own BatchNorm state).
    pub fn forward_on(&self, x: &Tensor, domain: usize, mode: Mode) -> Vec<Tensor> {
        self.run(x, self.pass(mode, None, HeadInput::Attached).on_domain(domain)).outputs
    }

    /// [`MultiTaskModel::forward_on`] in eval mode, with the gated architectures' expert
    /// weights per task (see [`Forward::gates`]).
    pub fn evaluate_on(&self, x: &Tensor, domain: usize) -> Forward {
        self.run(x, self.pass(Mode::Eval, None, HeadInput::Attached).on_domain(domain))
    }

    /// The data group of each task, in task order.
    pub fn task_domains(&self) -> &[usize] {
        &self.domains
    }

    /// The parameters (every variable that is not a statistic, frozen or not), sorted by name
    /// (a stable order for optimizer buffers).
    pub fn named_trainable(&self) -> Vec<(String, Tensor)> {
        let mut v: Vec<(String, Tensor)> =
            self.vs.variables().into_iter().filter(|(n, _)| self.params.contains(n)).collect();
        v.sort_by(|a, b| a.0.cmp(&b.0));
        v
    }

    /// Every BatchNorm layer's path (`backbone.stages.0.bn`), in build order.
    pub fn norm_paths(&self) -> Vec<&str> {
        self.norms.iter().map(|(p, _)| p.as_str()).collect()
    }

    /// Freezes the BatchNorm layers whose path `frozen` accepts (training forwards use their
    /// running statistics and leave them be) and unfreezes the others.
    pub fn freeze_norms(&self, frozen: &dyn Fn(&str) -> bool) {
        for (path, switch) in &self.norms {
            switch.store(frozen(path), std::sync::atomic::Ordering::Relaxed);
        }
    }

    /// The task that alone uses the variable `name`, if one does.
    pub fn owner(&self, name: &str) -> Option<usize> {
        let under = |p: &String| name == p || name.strip_prefix(p.as_str()).is_some_and(|r| r.starts_with('.'));
        self.private.iter().position(|paths| paths.iter().any(under))
    }

    /// The parameters that train now (not frozen) shared by the tasks, and each task's
    /// private ones (its head and what the architecture gives it alone), each sorted by name.
    pub fn param_groups(&self) -> (Vec<Tensor>, Vec<Vec<Tensor>>) {
        let mut shared = Vec::new();
        let mut private: Vec<Vec<Tensor>> = self.private.iter().map(|_| Vec::new()).collect();
        for (name, t) in self.named_trainable().into_iter().filter(|(_, t)| t.requires_grad()) {
            match self.owner(&name) {
                Some(i) => private[i].push(t),
                None => shared.push(t),
            }
        }
        (shared, private)
    }

    /// The variables that are not parameters (BatchNorm statistics and counters), sorted by name.
    pub fn buffers(&self) -> Vec<Tensor> {
        self.named_variables().into_iter().filter(|(n, _)| !self.params.contains(n)).map(|(_, t)| t).collect()
    }

    /// Every variable (trainable or not), sorted by name: what `model.safetensors` holds.
    pub fn named_variables(&self) -> Vec<(String, Tensor)> {
        let mut v: Vec<(String, Tensor)> = self.vs.variables().into_iter().collect();
        v.sort_by(|a, b| a.0.cmp(&b.0));
        v
    }

    /// Number of trainable scalars.
    pub fn parameter_count(&self) -> i64 {
        self.named_trainable().iter().map(|(_, t)| t.numel() as i64).sum()
    }

    /// Copies `tensors` (read from `file`) into the variables after checking every name,
    /// shape, dtype and that the values are finite; any problem is a user error naming the
    /// first few. With [`MissingHeads::KeepInitialised`], head variables absent from the file
    /// keep their initialisation.
    pub fn load_tensors(
        &self,
        tensors: &[(String, Tensor)],
        file: &std::path::Path,
        missing_heads: MissingHeads,
    ) -> anyhow::Result<()> {
        let allow_missing_heads = missing_heads == MissingHeads::KeepInitialised;
        let vars = self.named_variables();
        let given: BTreeMap<&str, &Tensor> = tensors.iter().map(|(k, v)| (k.as_str(), v)).collect();
        let mut problems = Vec::new();
        for (name, var) in &vars {
            match given.get(name.as_str()) {
                None if allow_missing_heads && name.starts_with(&format!("{HEADS}.")) => {}
                None => problems.push(format!("missing '{name}'")),
                Some(t) if t.size() != var.size() => {
                    problems.push(format!("'{name}' has shape {:?}, expected {:?}", t.size(), var.size()))
                }
                Some(t) if t.kind() != var.kind() => {
                    problems.push(format!("'{name}' has dtype {:?}, expected {:?}", t.kind(), var.kind()))
                }
                Some(_) => {}
            }
        }
        let known: BTreeSet<&str> = vars.iter().map(|(n, _)| n.as_str()).collect();
        for name in given.keys().filter(|n| !known.contains(*n)) {
            problems.push(format!("unexpected '{name}'"));
        }
        // Weights holding NaN or Inf would train (or predict) garbage without a word.
        for (name, t) in tensors.iter().filter(|(n, t)| known.contains(n.as_str()) && t.is_floating_point()) {
            if t.isfinite().all().int64_value(&[]) == 0 {
                problems.push(format!("'{name}' holds NaN or Inf values"));
            }
        }
        if !problems.is_empty() {
            let n = problems.len();
            user_bail!(
                "{}: does not fit this model: {}{}",
                file.display(),
                problems.iter().take(4).cloned().collect::<Vec<_>>().join("; "),
                if n > 4 { format!("; and {} more", n - 4) } else { String::new() }
            );
        }
        tch::no_grad(|| {
            for (name, var) in &vars {
                if let Some(t) = given.get(name.as_str()) {
                    var.shallow_clone().copy_(t);
                }
            }
        });
        Ok(())
    }
}

/// The BatchNorm layout of `choice` for a model whose tasks read `groups` data groups, with
/// BatchNorm layers or none.
pub fn norm_layout(choice: DomainNorm, groups: usize, batch_norm: bool) -> NormLayout {
    match choice.resolve(groups, batch_norm) {
        DomainNorm::Statistics => NormLayout { domains: groups, own_affine: false },
        DomainNorm::Affine => NormLayout { domains: groups, own_affine: true },
        DomainNorm::Shared | DomainNorm::Auto => NormLayout::SHARED,
    }
}
