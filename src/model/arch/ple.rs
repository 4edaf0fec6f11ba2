//! Progressive Layered Extraction (Tang et al. 2020): CGC levels stacked, one level per
//! backbone stage. Every expert is a backbone (`shared_experts.<k>.…`, and
//! `task_experts.<task>.<k>.…` for each task) whose stage `i` runs at level `i`. At level `i`,
//! task `t`'s experts read the task's input of that level (the image at level 0) and the
//! shared experts the shared input; task `t`'s gate (`gates.<task>.<i>`, softmax of a linear
//! layer on its flattened input) mixes the shared experts' and its own experts' outputs into
//! its next input, which its head also reads as the map of stage `i`. Below the last level a
//! shared gate (`shared_gates.<i>`) mixes the outputs of all experts (shared first, then each
//! task's in task order) into the next shared input: the "progressive" extraction.
//!
//! Ownership follows from the shared gates: a task's experts below the last level feed the
//! shared gate, so they are shared; task `t`'s experts at the last level and its gates at the
//! last two levels reach only its own head, and are its own. Representation: what the shared
//! part hands the tasks' own parts: the shared experts' outputs at the last two levels, task
//! `t`'s experts' outputs and input at the second-to-last level, and its mixed maps of the
//! levels below (its head's skip connections).
use super::{cgc::Experts, gate, stage_paths, weighted_sum, Architecture, Build, Pass, Plan, Setting};
use crate::config::{BackboneConfig, OptionMap};
use crate::model::backbone::Backbone;
use crate::model::layers::Linear;
use tch::Tensor;

pub(super) fn plan(o: &mut OptionMap, _: &Setting) -> anyhow::Result<Box<dyn Plan>> {
    Ok(Box::new(PlePlan(Experts::read(o)?)))
}

struct PlePlan(Experts);

impl Plan for PlePlan {
    fn gates_read_the_image(&self) -> bool {
        true
    }

    fn build(&self, b: &Build) -> Box<dyn Architecture> {
        let (shared, own) = self.0.build(b);
        // What the gates of level i read: the image, then stage i − 1's output.
        let mut inputs = vec![b.input_features()];
        inputs.extend(b.stage_sizes());
        let stages = b.stages();
        let per_task = (self.0.shared + self.0.own) as i64;
        let gates = b
            .tasks
            .iter()
            .map(|t| {
                let p = b.root / "gates" / t.as_str();
                (0..stages).map(|i| Linear::new(&p / i, inputs[i], per_task)).collect()
            })
            .collect();
        let all = (self.0.shared + self.0.own * b.tasks.len()) as i64;
        let shared_gates = (0..stages - 1).map(|i| Linear::new(b.root / "shared_gates" / i, inputs[i], all)).collect();
        Box::new(Ple { shared, own, gates, shared_gates, backbone: b.backbone.clone(), tasks: b.tasks.to_vec() })
    }
}

pub struct Ple {
    shared: Vec<Backbone>,
    own: Vec<Vec<Backbone>>,
    /// `gates[t][i]`: task `t`'s gate at level `i`.
    gates: Vec<Vec<Linear>>,
    shared_gates: Vec<Linear>,
    backbone: BackboneConfig,
    tasks: Vec<String>,
}

fn shallow(ts: &[Tensor]) -> Vec<Tensor> {
    ts.iter().map(Tensor::shallow_clone).collect()
}

impl Architecture for Ple {
    fn forward(&self, x: &Tensor, pass: &mut Pass) -> Vec<Vec<Tensor>> {
        let (train, c) = (pass.train, pass.compute);
        let levels = self.gates[0].len();
        let maps = self.shared[0].info().spatial;
        let mut shared_input = x.shallow_clone();
        let mut inputs: Vec<Tensor> = self.tasks.iter().map(|_| x.shallow_clone()).collect();
        // The crossed copy of a task's input, when a level below made it from shared parts only.
        let mut crossed: Vec<Option<Tensor>> = self.tasks.iter().map(|_| None).collect();
        let mut features: Vec<Vec<Tensor>> = self.tasks.iter().map(|_| Vec::new()).collect();
        for i in 0..levels {
            let last = i + 1 == levels;
            // Task gates at the last two levels are private; below, everything is shared.
            let private_gates = i + 2 >= levels;
            let shared_out: Vec<Tensor> = self.shared.iter().map(|e| e.stage(i, &shared_input, train, c)).collect();
            let own_out: Vec<Vec<Tensor>> = self
                .own
                .iter()
                .zip(&inputs)
                .map(|(experts, h)| experts.iter().map(|e| e.stage(i, h, train, c)).collect())
                .collect();
            let shared_read = if private_gates { pass.cross_all(&shared_out) } else { shallow(&shared_out) };
            let mut next = Vec::with_capacity(self.tasks.len());
            for t in 0..self.tasks.len() {
                let (own_read, input_read) = if private_gates {
                    let own = if last { shallow(&own_out[t]) } else { pass.cross_all(&own_out[t]) };
                    let input = match crossed[t].take() {
                        Some(copy) => copy,
                        None if i > 0 && !last => pass.cross(&inputs[t]),
                        None => inputs[t].shallow_clone(),
                    };
                    (own, input)
                } else {
                    (shallow(&own_out[t]), inputs[t].shallow_clone())
                };
                let experts: Vec<Tensor> = shared_read.iter().chain(&own_read).map(Tensor::shallow_clone).collect();
                let weights = gate(&self.gates[t][i], &input_read, c);
                if last {
                    pass.record_gate(t, &weights);
                }
                let mixed = weighted_sum(&weights, &experts);
                if maps || last {
                    let head_reads = if private_gates {
                        mixed.shallow_clone()
                    } else {
                        let copy = pass.cross(&mixed);
                        crossed[t] = Some(copy.shallow_clone());
                        copy
                    };
                    features[t].push(head_reads);
                }
                next.push(mixed);
            }
            if let Some(g) = self.shared_gates.get(i) {
                let all: Vec<Tensor> =
                    shared_out.iter().chain(own_out.iter().flatten()).map(Tensor::shallow_clone).collect();
                shared_input = weighted_sum(&gate(g, &shared_input, c), &all);
            }
            inputs = next;
        }
        features
    }

    fn private(&self, task: usize) -> Vec<String> {
        let t = &self.tasks[task];
        let levels = self.gates[task].len();
        let mut paths: Vec<String> = (levels.saturating_sub(2)..levels).map(|i| format!("gates.{t}.{i}")).collect();
        for k in 0..self.own[task].len() {
            paths.extend(stage_paths(&self.backbone, &format!("task_experts.{t}.{k}"), levels - 1));
        }
        paths
    }
}
