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

/// How many experts: `shared_experts` (≥ 1: without one nothing is shared) and `task_experts`
/// (≥ 0) per task. CGC's and PLE's options.
pub(super) struct Experts {
    pub shared: usize,
    pub own: usize,
}

impl Experts {
    pub fn read(o: &mut OptionMap) -> anyhow::Result<Self> {
        Ok(Self {
            shared: o.int("shared_experts", 1, 1..=64)? as usize,
            own: o.int("task_experts", 1, 0..=64)? as usize,
        })
    }

    /// `shared_experts.<k>` and, per task, `task_experts.<task>.<k>`: backbones.
    pub fn build(&self, b: &Build) -> (Vec<Backbone>, Vec<Vec<Backbone>>) {
        let shared = b.experts(&(b.root / "shared_experts"), self.shared);
        let own = b.tasks.iter().map(|t| b.experts(&(b.root / "task_experts" / t.as_str()), self.own)).collect();
        (shared, own)
    }
}

pub(super) fn plan(o: &mut OptionMap, _: &Setting) -> anyhow::Result<Box<dyn Plan>> {
    Ok(Box::new(CgcPlan(Experts::read(o)?)))
}

struct CgcPlan(Experts);

impl Plan for CgcPlan {
    fn gates_read_the_image(&self) -> bool {
        true
    }

    fn build(&self, b: &Build) -> Box<dyn Architecture> {
        let (shared, own) = self.0.build(b);
        let gates = b.gates((self.0.shared + self.0.own) as i64);
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
            .enumerate()
            .map(|(t, (own, g))| {
                let own: Vec<Vec<Tensor>> = own.iter().map(|e| e.forward(x, train, c)).collect();
                let all: Vec<&Vec<Tensor>> = shared.iter().chain(&own).collect();
                let weights = gate(g, x, c);
                pass.record_gate(t, &weights);
                mix(&weights, &all)
            })
            .collect()
    }

    fn private(&self, task: usize) -> Vec<String> {
        let t = &self.tasks[task];
        vec![format!("task_experts.{t}"), format!("gates.{t}")]
    }
}
