//! Multi-Task Attention Network (Liu et al. 2019): one shared backbone (`backbone.*`, the
//! names of hard sharing) and, for every task and stage, a soft attention mask over that
//! stage's features. At stage `i` task `t`'s attention (`attention.<task>.<i>`: 1×1 conv–BN–
//! activation to `attention_width` channels, 1×1 conv–BN–sigmoid back to the stage's width)
//! reads the output of the stage's first block, concatenated (after stage 0) with the task's
//! previous attended features passed through the shared block `attention_blocks.<i−1>`
//! (3×3 conv–BN–activation to the next width, max-pooled to the next resolution); its mask
//! multiplies the stage's output. The task's head reads the attended maps of every stage.
//!
//! Ownership: the backbone and the attention blocks are shared (the official code shares the
//! blocks across tasks, and so do we); each task's attention modules are its own. There is no
//! representation: the shared attention blocks read every task's attended features, so no
//! set of tensors separates the shared parameters from the tasks' own.
use super::{require_maps, Architecture, Build, Pass, Plan, Setting};
use crate::config::{Activation, OptionMap};
use crate::model::backbone::{self, Backbone};
use crate::model::layers::{activate, BatchNorm2d, Compute, Conv2d, ConvBnAct};
use crate::model::BACKBONE;
use tch::nn::Path;
use tch::Tensor;

pub(super) fn plan(o: &mut OptionMap, s: &Setting) -> anyhow::Result<Box<dyn Plan>> {
    require_maps(s, "mtan", "its attention masks weigh every position of a feature map")?;
    let width = o.int("attention_width", 0, 0..=8192)? as i64;
    Ok(Box::new(MtanPlan { width }))
}

struct MtanPlan {
    /// Channels inside the masks (0: the stage's width, as the paper).
    width: i64,
}

impl Plan for MtanPlan {
    fn build(&self, b: &Build) -> Box<dyn Architecture> {
        let backbone = b.backbone(&(b.root / BACKBONE));
        let widths = backbone::stage_widths(b.backbone);
        let bn = b.backbone.norm == crate::config::Norm::Batch;
        let act = b.backbone.activation;
        let attention = b
            .tasks
            .iter()
            .map(|task| {
                let p = b.root / "attention" / task.as_str();
                widths
                    .iter()
                    .enumerate()
                    .map(|(i, &w)| {
                        let c_in = if i == 0 { w } else { 2 * w };
                        let mid = if self.width > 0 { self.width } else { w };
                        Attention::new(&(&p / i), c_in, mid, w, bn, act)
                    })
                    .collect()
            })
            .collect();
        let blocks = (0..widths.len() - 1)
            .map(|i| ConvBnAct::new(&(b.root / "attention_blocks" / i), widths[i], widths[i + 1], bn, act))
            .collect();
        Box::new(Mtan { backbone, attention, blocks, tasks: b.tasks.to_vec() })
    }

    fn no_representation(&self) -> Option<&'static str> {
        Some(
            "its attention blocks are shared by the tasks and read each task's attended features, \
             so no set of tensors separates the shared parameters from the tasks' own",
        )
    }
}

/// A task's mask at one stage: `sigmoid(BN(conv2(act(BN(conv1(x))))))`, 1×1 convolutions
/// (with a bias only without BatchNorm). Names: `conv1`, `bn1`, `conv2`, `bn2`.
#[derive(Debug)]
struct Attention {
    conv1: Conv2d,
    bn1: Option<BatchNorm2d>,
    conv2: Conv2d,
    bn2: Option<BatchNorm2d>,
    act: Activation,
}

impl Attention {
    fn new(p: &Path, c_in: i64, mid: i64, c_out: i64, bn: bool, act: Activation) -> Self {
        Self {
            conv1: Conv2d::new(p / "conv1", c_in, mid, 1, 1, !bn),
            bn1: bn.then(|| BatchNorm2d::new(p / "bn1", mid)),
            conv2: Conv2d::new(p / "conv2", mid, c_out, 1, 1, !bn),
            bn2: bn.then(|| BatchNorm2d::new(p / "bn2", c_out)),
            act,
        }
    }

    fn mask(&self, x: &Tensor, train: bool, c: Compute) -> Tensor {
        let norm = |bn: &Option<BatchNorm2d>, y: Tensor| match bn {
            Some(bn) => bn.forward(&y, train, c),
            None => y,
        };
        let h = activate(norm(&self.bn1, self.conv1.forward(x, c)), self.act);
        norm(&self.bn2, self.conv2.forward(&h, c)).sigmoid()
    }
}

pub struct Mtan {
    backbone: Backbone,
    /// `attention[t][i]`: task `t`'s mask at stage `i`.
    attention: Vec<Vec<Attention>>,
    /// `blocks[i]`: from stage `i`'s attended features towards stage `i + 1`'s mask.
    blocks: Vec<ConvBnAct>,
    tasks: Vec<String>,
}

impl Architecture for Mtan {
    fn forward(&self, x: &Tensor, pass: &mut Pass) -> Vec<Vec<Tensor>> {
        let (train, c) = (pass.train, pass.compute);
        let mut h = x.shallow_clone();
        let mut previous: Vec<Option<Tensor>> = self.tasks.iter().map(|_| None).collect();
        let mut features: Vec<Vec<Tensor>> = self.tasks.iter().map(|_| Vec::new()).collect();
        for i in 0..self.backbone.stage_count() {
            let (first, out) = self.backbone.stage_parts(i, &h, train, c);
            for (t, attention) in self.attention.iter().enumerate() {
                let input = match previous[t].take() {
                    None => first.shallow_clone(),
                    Some(a) => {
                        let a = if a.size()[2..] == first.size()[2..] {
                            a
                        } else {
                            a.max_pool2d([2, 2], [2, 2], [0, 0], [1, 1], false)
                        };
                        Tensor::cat(&[first.shallow_clone(), a], 1)
                    }
                };
                let attended = attention[i].mask(&input, train, c) * &out;
                if let Some(block) = self.blocks.get(i) {
                    previous[t] = Some(block.forward(&attended, train, c));
                }
                features[t].push(attended);
            }
            h = out;
        }
        features
    }

    fn private(&self, task: usize) -> Vec<String> {
        vec![format!("attention.{}", self.tasks[task])]
    }
}
