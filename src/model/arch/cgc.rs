//! Customized Gate Control (Tang et al. 2020, the single-level PLE): `shared_experts`
//! backbones every task uses (`shared_experts.<k>.…`), `task_experts` backbones per task
//! (`task_experts.<task>.<k>.…`), and per task a softmax gate on the flattened image
//! (`gates.<task>`) mixing the shared experts' and its own experts' outputs (in that order),
//! stage by stage, into the features of its head.
//!
//! Ownership: the shared experts are shared; each task's experts and gate are its own.
//! Representation: the shared experts' outputs.
use super::mmoe::mix;
use super::{gate, Architecture, Build, Pass, Plan, Setting};
use crate::config::OptionMap;
use crate::model::backbone::Backbone;
use crate::model::layers::Linear;
use tch::Tensor;

/// `shared_experts` (≥ 1: without one nothing is shared) and `task_experts` (≥ 0) per task.
pub(super) fn expert_counts(o: &mut OptionMap) -> anyhow::Result<(usize, usize)> {
    Ok((o.int("shared_experts", 1, 1..=64)? as usize, o.int("task_experts", 1, 0..=64)? as usize))
}

pub(super) fn plan(o: &mut OptionMap, _: &Setting) -> anyhow::Result<Box<dyn Plan>> {
    let (shared, own) = expert_counts(o)?;
    Ok(Box::new(CgcPlan { shared, own }))
}

struct CgcPlan {
    shared: usize,
    own: usize,
}

impl Plan for CgcPlan {
    fn build(&self, b: &Build) -> Box<dyn Architecture> {
        let shared = b.experts(&(b.root / "shared_experts"), self.shared);
        let own = b.tasks.iter().map(|t| b.experts(&(b.root / "task_experts" / t.as_str()), self.own)).collect();
        let gates = b.gates((self.shared + self.own) as i64);
        Box::new(Cgc { shared, own, gates, tasks: b.tasks.to_vec() })
    }
}

pub struct Cgc {
    shared: Vec<Backbone>,
    /// `own[t]`: task `t`'s experts.
    own: Vec<Vec<Backbone>>,
    gates: Vec<Linear>,
    tasks: Vec<String>,
}

impl Architecture for Cgc {
    fn forward(&self, x: &Tensor, pass: &mut Pass) -> Vec<Vec<Tensor>> {
        let (train, c) = (pass.train, pass.compute);
        let shared: Vec<Vec<Tensor>> = self
            .shared
            .iter()
            .map(|e| {
                let features = e.forward(x, train, c);
                pass.cross_all(&features)
            })
            .collect();
        self.own
            .iter()
            .zip(&self.gates)
            .map(|(own, g)| {
                let own: Vec<Vec<Tensor>> = own.iter().map(|e| e.forward(x, train, c)).collect();
                let all: Vec<&Vec<Tensor>> = shared.iter().chain(&own).collect();
                mix(&gate(g, x, c), &all)
            })
            .collect()
    }

    fn private(&self, task: usize) -> Vec<String> {
        let t = &self.tasks[task];
        vec![format!("task_experts.{t}"), format!("gates.{t}")]
    }
}
