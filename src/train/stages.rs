//! Fine-tuning controls and learning in stages: which variables train, at what rate, which
//! BatchNorm layers are frozen, and which tasks train, for each span of epochs
//! (`optim.groups`, `model.freeze_bn`, `train.stages`; docs/FINETUNING.md).
//!
//! Everything here is a function of the config and the epoch, so a resumed run derives the
//! same settings as the run that wrote the checkpoint: nothing to save but the optimizer's
//! per-variable update counts.
use crate::config::{Config, ParamGroup};
use crate::model::MultiTaskModel;
use crate::optim::groups::{self, VarSetting};
use std::collections::BTreeMap;

/// One span of epochs with its tasks and groups (a run without `train.stages` has one).
#[derive(Debug, Clone)]
pub struct Stage {
    /// Epochs `first_epoch..end_epoch` (0-based) belong to the stage.
    pub first_epoch: u64,
    pub end_epoch: u64,
    /// Per task (config order): whether it trains in this stage.
    pub active: Vec<bool>,
    pub groups: Vec<ParamGroup>,
    /// The key the stage's groups come from, for errors (`optim.groups`, `train.stages[1].groups`).
    pub groups_key: String,
}

/// The run's stages, in order.
#[derive(Debug, Clone)]
pub struct Stages {
    pub list: Vec<Stage>,
    /// Whether the config has `train.stages` (metrics rows then carry the stage).
    pub configured: bool,
}

impl Stages {
    pub fn new(cfg: &Config) -> Self {
        let all = || vec![true; cfg.tasks.len()];
        if cfg.train.stages.is_empty() {
            let only = Stage {
                first_epoch: 0,
                end_epoch: cfg.train.epochs,
                active: all(),
                groups: cfg.optim.groups.clone(),
                groups_key: "optim.groups".into(),
            };
            return Self { list: vec![only], configured: false };
        }
        let mut first = 0;
        let list = cfg
            .train
            .stages
            .iter()
            .enumerate()
            .map(|(i, s)| {
                let active = cfg.tasks.iter().map(|t| s.tasks.includes(&t.name)).collect();
                let (groups, groups_key) = match &s.groups {
                    Some(g) => (g.clone(), format!("train.stages[{i}].groups")),
                    None => (cfg.optim.groups.clone(), "optim.groups".into()),
                };
                let stage = Stage { first_epoch: first, end_epoch: first + s.epochs, active, groups, groups_key };
                first += s.epochs;
                stage
            })
            .collect();
        Self { list, configured: true }
    }

    /// The stage that epoch `epoch` (0-based) belongs to; past the end, the last.
    pub fn index_at(&self, epoch: u64) -> usize {
        self.list.iter().position(|s| epoch < s.end_epoch).unwrap_or(self.list.len() - 1)
    }

    /// Refuses a group pattern (of `optim.groups` or any stage's) that matches no variable of
    /// the model: one line naming its key.
    pub fn check_patterns(&self, model: &MultiTaskModel) -> Result<(), String> {
        let names: Vec<String> = model.named_variables().into_iter().map(|(n, _)| n).collect();
        for stage in &self.list {
            groups::check_patterns(&stage.groups, &names, &stage.groups_key)?;
        }
        Ok(())
    }
}

/// How each of the optimizer's variables (`names`, buffer order) trains in `stage`, and which
/// BatchNorm layers are frozen: the stage's groups (first match wins); with `freeze_bn`, every
/// BatchNorm layer's scale and shift; and every variable of a task that does not train in the
/// stage. A BatchNorm layer is frozen with `freeze_bn` or when its scale is.
pub fn settings(
    cfg: &Config,
    model: &MultiTaskModel,
    names: &[String],
    stage: &Stage,
) -> (Vec<VarSetting>, Vec<String>) {
    let mut settings = groups::settings(&stage.groups, names, cfg.optim.weight_decay);
    let norms = model.norm_paths();
    let freeze_bn = cfg.model.freeze_bn;
    for (name, s) in names.iter().zip(settings.iter_mut()) {
        let idle = model.owner(name).is_some_and(|t| !stage.active[t]);
        if idle || (freeze_bn && norms.iter().any(|p| is_norm_affine(name, p))) {
            *s = VarSetting::FROZEN;
        }
    }
    let index: BTreeMap<&str, usize> = names.iter().enumerate().map(|(i, n)| (n.as_str(), i)).collect();
    let scale_frozen = |path: &str| {
        [format!("{path}.weight"), format!("{path}.domains.0.weight")]
            .iter()
            .find_map(|n| index.get(n.as_str()))
            .is_some_and(|&i| settings[i].frozen)
    };
    let frozen_norms = norms.iter().filter(|p| freeze_bn || scale_frozen(p)).map(|p| p.to_string()).collect();
    (settings, frozen_norms)
}

/// Whether `name` is the scale or shift of the BatchNorm layer at `path` (its own, or a data
/// group's under `domains.<g>`).
fn is_norm_affine(name: &str, path: &str) -> bool {
    let Some(rest) = name.strip_prefix(path).and_then(|r| r.strip_prefix('.')) else { return false };
    let leaf = rest.strip_prefix("domains.").and_then(|r| r.split_once('.')).map_or(rest, |(_, l)| l);
    leaf == "weight" || leaf == "bias"
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn norm_affine_names() {
        assert!(is_norm_affine("backbone.stages.0.bn.weight", "backbone.stages.0.bn"));
        assert!(is_norm_affine("backbone.stages.0.bn.domains.1.bias", "backbone.stages.0.bn"));
        assert!(!is_norm_affine("backbone.stages.0.bn.running_mean", "backbone.stages.0.bn"));
        assert!(!is_norm_affine("backbone.stages.0.bnx.weight", "backbone.stages.0.bn"));
        assert!(!is_norm_affine("backbone.stages.0.conv.weight", "backbone.stages.0.bn"));
    }
}
