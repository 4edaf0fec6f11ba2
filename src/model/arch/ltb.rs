//! Learning to Branch (Guo et al. 2020): a tree of branches learned while training. There are
//! T backbones (`columns.<n>.…`, one per task); stage `i` of column `n` is node `(i, n)` of the
//! tree. Nodes of stage 0 read the image; node `(i, n)` for `i ≥ 1` reads the output of one
//! node of stage `i − 1`, its parent, chosen by learned logits `branches.<i>.<n>` (T values).
//! The node `(S − 1, t)` of the last stage is task `t`'s leaf; its head reads the leaf and, as
//! skip connections, the leaf's ancestors.
//!
//! While training, each node samples its parent with the straight-through Gumbel-softmax (a
//! one-hot choice forward, the softmax's gradient backward) at temperature
//! `temperature / √(epoch + 1)`, with Gumbel noise from `rng::stream(seed, Architecture,
//! step)`, so a resumed run draws the same trees. Otherwise (evaluation, prediction) the tree
//! is fixed: every node takes the parent of its largest logit (the first on ties).
//!
//! Ownership: a node below the last stage may be any task's ancestor, so those columns and
//! their logits are shared; each task's leaf (column `t`'s last stage) and the leaf's logits
//! are its own. Representation: the outputs of every node below the last stage and the
//! parent choices of those stages, which the tasks' leaves and ancestor paths read.
use super::{require_maps, stage_paths, weighted_sum, Architecture, Build, Pass, Plan, Setting};
use crate::config::{BackboneConfig, OptionMap};
use crate::model::backbone::{self, Backbone};
use rand::Rng;
use tch::{Kind, Tensor};

pub(super) fn plan(o: &mut OptionMap, s: &Setting) -> anyhow::Result<Box<dyn Plan>> {
    require_maps(s, "ltb", "its branches are the stages of a conv network")?;
    if backbone::stages(s.backbone) < 2 {
        crate::user_bail!(
            "model.architecture.kind: ltb needs a backbone of at least 2 stages to branch between (model.backbone.widths)"
        );
    }
    let temperature = o.positive("temperature", 1.0)?;
    Ok(Box::new(LtbPlan { temperature }))
}

struct LtbPlan {
    temperature: f64,
}

impl Plan for LtbPlan {
    fn build(&self, b: &Build) -> Box<dyn Architecture> {
        let t = b.tasks.len();
        let columns = b.experts(&(b.root / "columns"), t);
        let logits = (1..b.stages())
            .map(|i| {
                let p = b.root / "branches" / i;
                (0..t).map(|n| crate::model::layers::zeros(&p, &n.to_string(), &[t as i64])).collect()
            })
            .collect();
        Box::new(Ltb { columns, logits, temperature: self.temperature, backbone: b.backbone.clone() })
    }
}

pub struct Ltb {
    columns: Vec<Backbone>,
    /// `logits[i − 1][n]`: node `(i, n)`'s preference over the nodes of stage `i − 1`.
    logits: Vec<Vec<Tensor>>,
    temperature: f64,
    backbone: BackboneConfig,
}

impl Ltb {
    /// The parents of stage `i`'s nodes: `[T (node), T (parent)]`, one-hot rows.
    fn choices(&self, i: usize, pass: &Pass) -> Tensor {
        let logits = Tensor::stack(&self.logits[i - 1], 0);
        let t = logits.size()[0];
        match pass.step.filter(|_| pass.train) {
            None => logits.argmax(-1, false).one_hot(t).to_kind(Kind::Float),
            Some(at) => {
                let mut rng = crate::rng::stream(at.seed, crate::rng::Purpose::Architecture, at.step);
                // Every stage draws from the step's stream in turn: skip the earlier stages' draws.
                let skip = (i - 1) * (t * t) as usize;
                let noise: Vec<f32> = (0..skip + (t * t) as usize)
                    .map(|_| {
                        let u: f64 = rng.gen_range(f64::MIN_POSITIVE..1.0);
                        -(-u.ln()).ln() as f32
                    })
                    .skip(skip)
                    .collect();
                let noise = crate::transfer::upload(&Tensor::from_slice(&noise).reshape([t, t]), logits.device());
                let tau = self.temperature / ((at.epoch + 1) as f64).sqrt();
                let soft = ((logits + noise) / tau).softmax(-1, None::<Kind>);
                let hard = soft.argmax(-1, false).one_hot(t).to_kind(Kind::Float);
                hard - soft.detach() + soft
            }
        }
    }
}

impl Architecture for Ltb {
    fn forward(&self, x: &Tensor, pass: &mut Pass) -> Vec<Vec<Tensor>> {
        let (train, c) = (pass.train, pass.compute);
        let stages = self.logits.len() + 1;
        let maps = self.columns[0].info().spatial;
        // The shared part: every node below the last stage, and their parent choices.
        let mut nodes: Vec<Vec<Tensor>> = vec![self.columns.iter().map(|col| col.stage(0, x, train, c)).collect()];
        let mut choices = Vec::new();
        for i in 1..stages - 1 {
            let parents = self.choices(i, pass);
            let below = &nodes[i - 1];
            let level = self
                .columns
                .iter()
                .enumerate()
                .map(|(n, col)| col.stage(i, &weighted_sum(&parents.get(n as i64), below), train, c))
                .collect();
            nodes.push(level);
            choices.push(parents);
        }
        let nodes: Vec<Vec<Tensor>> = nodes.iter().map(|level| pass.cross_all(level)).collect();
        let choices: Vec<Tensor> = choices.iter().map(|p| pass.cross(p)).collect();
        // Each task's own part: its leaf's parent, the leaf, and its ancestors for the head.
        let leaves = self.choices(stages - 1, pass);
        self.columns
            .iter()
            .enumerate()
            .map(|(t, col)| {
                let mut ancestry = leaves.get(t as i64);
                let mut path = vec![weighted_sum(&ancestry, &nodes[stages - 2])];
                let leaf = col.stage(stages - 1, &path[0], train, c);
                if !maps {
                    return vec![leaf];
                }
                for i in (1..stages - 1).rev() {
                    ancestry = ancestry.unsqueeze(0).matmul(&choices[i - 1]).squeeze_dim(0);
                    path.push(weighted_sum(&ancestry, &nodes[i - 1]));
                }
                path.reverse();
                path.push(leaf);
                path
            })
            .collect()
    }

    fn private(&self, task: usize) -> Vec<String> {
        let last = self.logits.len();
        let mut paths = vec![format!("branches.{last}.{task}")];
        paths.extend(stage_paths(&self.backbone, &format!("columns.{task}"), last));
        paths
    }
}
