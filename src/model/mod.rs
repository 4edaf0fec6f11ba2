//! The multi-task model: one shared backbone, one head per task.
pub mod backbone;
pub mod export;
pub mod heads;
pub mod layers;

pub use heads::{HeadKind, HeadSpec};

use crate::config::{Config, Norm, Precision};
use crate::user_bail;
use backbone::Backbone;
use heads::Head;
use layers::Compute;
use std::collections::{BTreeMap, BTreeSet};
use tch::nn::VarStore;
use tch::{Device, Kind, Tensor};

/// Prefix of every backbone variable; heads live under `heads.<task name>`.
pub const BACKBONE: &str = "backbone";
pub const HEADS: &str = "heads";

pub struct MultiTaskModel {
    pub vs: VarStore,
    backbone: Backbone,
    heads: Vec<Head>,
    compute: Compute,
}

impl MultiTaskModel {
    /// Builds the configured backbone and the given heads on `device` with PyTorch's default
    /// initialisation, seeded from the run seed. `in_channels` and `image_size` describe the
    /// input images.
    pub fn new(cfg: &Config, heads: &[HeadSpec], device: Device, in_channels: i64, image_size: i64) -> Self {
        Self::build(cfg, heads, device, in_channels, image_size)
    }

    /// How many elements the model's variables hold, computed without allocating them.
    pub fn variable_count(cfg: &Config, heads: &[HeadSpec], in_channels: i64, image_size: i64) -> u64 {
        layers::count_variables(|| {
            Self::build(cfg, heads, Device::Cpu, in_channels, image_size);
        })
    }

    fn build(cfg: &Config, heads: &[HeadSpec], device: Device, in_channels: i64, image_size: i64) -> Self {
        tch::manual_seed((crate::rng::derive_seed(cfg.seed, crate::rng::Purpose::Init, 0) >> 1) as i64);
        let vs = VarStore::new(device);
        let root = vs.root();
        let m = &cfg.model;
        let backbone =
            Backbone::new(&(&root / BACKBONE), &m.backbone, in_channels, in_channels * image_size * image_size);
        let info = backbone.info();
        // `pool: flatten` heads need the coarsest map's size: each stage after the first halves
        // the image exactly (the resolve step checks the divisibility).
        let top_hw = info.spatial.then(|| {
            let m = backbone::size_multiple(&m.backbone);
            (image_size / m, image_size / m)
        });
        let heads = heads
            .iter()
            .map(|h| {
                let p = &root / HEADS / h.task.as_str();
                let hc = m.heads.get(&h.task).cloned().unwrap_or_default();
                Head::new(&p, &info, &hc, h.kind, m.backbone.norm == Norm::Batch, m.backbone.activation, top_hw)
            })
            .collect();
        let kind = match cfg.precision {
            Precision::Fp32 => Kind::Float,
            Precision::Bf16 => Kind::BFloat16,
        };
        let channels_last = cfg.speed.channels_last.resolve(true);
        Self { vs, backbone, heads, compute: Compute { kind, channels_last } }
    }

    pub fn device(&self) -> Device {
        self.vs.device()
    }

    /// How forwards compute (dtype, training layout).
    pub fn compute(&self) -> Compute {
        self.compute
    }

    /// The shared features for a normalized float batch `[N, C, H, W]`.
    pub fn features(&self, x: &Tensor, train: bool) -> Vec<Tensor> {
        self.backbone.forward(x, train, self.compute)
    }

    /// Every head's fp32 outputs on the given features.
    pub fn heads(&self, features: &[Tensor], out_hw: (i64, i64), train: bool) -> Vec<Tensor> {
        self.heads.iter().map(|h| h.forward(features, out_hw, train, self.compute)).collect()
    }

    /// Features then heads: one output per task, in task order.
    pub fn forward(&self, x: &Tensor, train: bool) -> Vec<Tensor> {
        let s = x.size();
        self.heads(&self.features(x, train), (s[2], s[3]), train)
    }

    /// Trainable variables, sorted by name (a stable order for optimizer buffers).
    pub fn named_trainable(&self) -> Vec<(String, Tensor)> {
        let mut v: Vec<(String, Tensor)> = self.vs.variables().into_iter().filter(|(_, t)| t.requires_grad()).collect();
        v.sort_by(|a, b| a.0.cmp(&b.0));
        v
    }

    /// Trainable backbone variables and each task's trainable head variables.
    pub fn param_groups(&self, task_names: &[String]) -> (Vec<Tensor>, Vec<Vec<Tensor>>) {
        let all = self.named_trainable();
        let shared = all
            .iter()
            .filter(|(n, _)| n.starts_with(&format!("{BACKBONE}.")))
            .map(|(_, t)| t.shallow_clone())
            .collect();
        let heads = task_names
            .iter()
            .map(|task| {
                let prefix = format!("{HEADS}.{task}.");
                all.iter().filter(|(n, _)| n.starts_with(&prefix)).map(|(_, t)| t.shallow_clone()).collect()
            })
            .collect();
        (shared, heads)
    }

    /// The variables that are not trained (BatchNorm statistics and counters), sorted by name.
    pub fn buffers(&self) -> Vec<Tensor> {
        self.named_variables().into_iter().filter(|(_, t)| !t.requires_grad()).map(|(_, t)| t).collect()
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
    /// first few. With
    /// `allow_missing_heads`, head variables absent from the file keep their initialisation.
    pub fn load_tensors(
        &self,
        tensors: &[(String, Tensor)],
        file: &std::path::Path,
        allow_missing_heads: bool,
    ) -> anyhow::Result<()> {
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
