//! Multi-gate Mixture-of-Experts (Ma et al. 2018): `experts` backbones (`experts.<k>.…`) that
//! every task shares, and per task a softmax gate on the flattened image (`gates.<task>`, a
//! linear layer) whose weights mix the experts' outputs, stage by stage, into the features
//! of the task's head.
//!
//! Ownership: the experts are shared, each gate is its task's. Representation: the experts'
//! outputs (every stage of every expert).
use super::{gate, weighted_sum, Architecture, Build, Pass, Plan, Setting};
use crate::config::OptionMap;
use crate::model::backbone::Backbone;
use crate::model::layers::Linear;
use tch::Tensor;

pub(super) fn plan(o: &mut OptionMap, _: &Setting) -> anyhow::Result<Box<dyn Plan>> {
    let experts = o.int("experts", 3, 1..=64)? as usize;
    Ok(Box::new(MmoePlan { experts }))
}

struct MmoePlan {
    experts: usize,
}

impl Plan for MmoePlan {
    fn gates_read_the_image(&self) -> bool {
        true
    }

    fn build(&self, b: &Build) -> Box<dyn Architecture> {
        let experts = b.experts(&(b.root / "experts"), self.experts);
        Box::new(Mmoe { experts, gates: b.gates(self.experts as i64), tasks: b.tasks.to_vec() })
    }
}

pub struct Mmoe {
    experts: Vec<Backbone>,
    gates: Vec<Linear>,
    tasks: Vec<String>,
}

/// Per feature (stage), the mix of every expert's output with `weights` (`[N, experts]`).
pub(super) fn mix(weights: &Tensor, outputs: &[&Vec<Tensor>]) -> Vec<Tensor> {
    (0..outputs[0].len())
        .map(|s| weighted_sum(weights, &outputs.iter().map(|o| o[s].shallow_clone()).collect::<Vec<_>>()))
        .collect()
}

impl Architecture for Mmoe {
    fn forward(&self, x: &Tensor, pass: &mut Pass) -> Vec<Vec<Tensor>> {
        let outputs: Vec<Vec<Tensor>> = self
            .experts
            .iter()
            .map(|e| {
                let features = e.forward(x, pass.train, pass.compute);
                pass.cross_all(&features)
            })
            .collect();
        let all: Vec<&Vec<Tensor>> = outputs.iter().collect();
        let weights: Vec<Tensor> = self.gates.iter().map(|g| gate(g, x, pass.compute)).collect();
        weights
            .iter()
            .enumerate()
            .map(|(t, w)| {
                pass.record_gate(t, w);
                mix(w, &all)
            })
            .collect()
    }

    fn private(&self, task: usize) -> Vec<String> {
        vec![format!("gates.{}", self.tasks[task])]
    }
}
