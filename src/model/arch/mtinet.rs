//! MTI-Net (Vandenhende et al., ECCV 2020): PAD-Net's prediction and distillation at every
//! scale of the backbone, with feature propagation from coarse to fine. At scale `i` (the
//! backbone's stage `i`, from the coarsest up) task `t`'s initial features
//! (`initial.<task>.<i>`: conv3×3–BN–activation) read the stage's map, concatenated below the
//! coarsest scale with what the feature propagation module brings up from scale `i + 1`
//! (`propagate.<i>`: every task's initial features there, concatenated, through a shared
//! conv3×3–BN–activation bottleneck to this scale's width, upsampled, then a per-task
//! squeeze-and-excitation `propagate.<i>.se.<task>` picks the task's channels). Each scale's
//! initial features make the task's initial predictions (`aux.<task>.<i>`, scored by the
//! task's loss × `aux_weight`, every scale) and, through multi-modal distillation
//! (`distill.<task>.<i>`), its distilled features at that scale. Feature aggregation: the
//! task's head (its U-Net decoder) reads the distilled features of every scale, upsampling
//! and merging them from coarse to fine (the paper concatenates all scales upsampled to the
//! finest at once; the decoder does it step by step with a convolution per step).
//!
//! Ownership: initial features feed every task's distillation and the propagation, so the
//! initial branches and the propagation modules are shared; a task's predictors and
//! distillation modules are its own. Representation: every task's initial features at every
//! scale.
use super::fusion::{aux_weight, predict_all, predictors, upsample_to, Distillation, Predictor};
use super::{require_maps, Architecture, Build, Pass, Plan, Setting};
use crate::config::{Activation, OptionMap};
use crate::model::backbone::{self, Backbone};
use crate::model::layers::{activate, Compute, ConvBnAct, Linear};
use crate::model::BACKBONE;
use tch::nn::Path;
use tch::Tensor;

pub(super) fn plan(o: &mut OptionMap, s: &Setting) -> anyhow::Result<Box<dyn Plan>> {
    require_maps(s, "mtinet", "its initial predictions, distillation and propagation work on feature maps")?;
    Ok(Box::new(MtiNetPlan { aux_weight: aux_weight(o)? }))
}

struct MtiNetPlan {
    aux_weight: f64,
}

impl Plan for MtiNetPlan {
    fn build(&self, b: &Build) -> Box<dyn Architecture> {
        let widths = backbone::stage_widths(b.backbone);
        let bn = b.backbone.norm == crate::config::Norm::Batch;
        let act = b.backbone.activation;
        let last = widths.len() - 1;
        let scales = widths
            .iter()
            .enumerate()
            .map(|(i, &w)| {
                let c_in = if i == last { w } else { 2 * w };
                Scale {
                    initial: b
                        .tasks
                        .iter()
                        .map(|t| ConvBnAct::new(&(b.root / "initial" / t.as_str() / i), c_in, w, bn, act))
                        .collect(),
                    propagation: (i < last).then(|| Propagation::new(b, i, widths[i + 1], w, bn, act)),
                    predictors: predictors(b, "aux", Some(i), w),
                    distillation: Distillation::for_every_task(b, "distill", Some(i), w),
                }
            })
            .collect();
        Box::new(MtiNet {
            backbone: b.backbone(&(b.root / BACKBONE)),
            scales,
            aux_weight: self.aux_weight,
            tasks: b.tasks.to_vec(),
        })
    }
}

/// One scale's modules.
struct Scale {
    initial: Vec<ConvBnAct>,
    /// From the next coarser scale (none at the coarsest).
    propagation: Option<Propagation>,
    predictors: Vec<Predictor>,
    distillation: Vec<Distillation>,
}

/// The feature propagation module into scale `i`: `bottleneck` (shared) and one
/// squeeze-and-excitation per task (`se.<task>.fc1|fc2`, reduction 4).
struct Propagation {
    bottleneck: ConvBnAct,
    excitation: Vec<(Linear, Linear)>,
    act: Activation,
}

impl Propagation {
    fn new(b: &Build, i: usize, coarse: i64, width: i64, bn: bool, act: Activation) -> Self {
        let p: Path = b.root / "propagate" / i;
        let tasks = b.tasks.len() as i64;
        let squeezed = (width / 4).max(1);
        let excitation = b
            .tasks
            .iter()
            .map(|t| {
                let q = &p / "se" / t.as_str();
                (Linear::new(&q / "fc1", width, squeezed), Linear::new(&q / "fc2", squeezed, width))
            })
            .collect();
        Self { bottleneck: ConvBnAct::new(&(&p / "bottleneck"), tasks * coarse, width, bn, act), excitation, act }
    }

    /// Per task, what the coarser scale's initial features bring to a map the size of `like`.
    fn forward(&self, coarse: &[Tensor], like: &Tensor, train: bool, c: Compute) -> Vec<Tensor> {
        let shared = self.bottleneck.forward(&Tensor::cat(coarse, 1), train, c);
        let shared = upsample_to(&shared, like, train, c);
        let pooled = shared.mean_dim(&[-1i64, -2][..], false, None);
        self.excitation
            .iter()
            .map(|(fc1, fc2)| {
                let s = fc2.forward(&activate(fc1.forward(&pooled, c), self.act), c).sigmoid();
                &shared * s.unsqueeze(-1).unsqueeze(-1)
            })
            .collect()
    }
}

pub struct MtiNet {
    backbone: Backbone,
    /// Finest first, as the backbone's stages.
    scales: Vec<Scale>,
    aux_weight: f64,
    tasks: Vec<String>,
}

impl Architecture for MtiNet {
    fn forward(&self, x: &Tensor, pass: &mut Pass) -> Vec<Vec<Tensor>> {
        let (train, c) = (pass.train, pass.compute);
        let out_hw = (x.size()[2], x.size()[3]);
        let maps = self.backbone.forward(x, train, c);
        let mut features: Vec<Vec<Tensor>> = self.tasks.iter().map(|_| Vec::new()).collect();
        let mut coarser: Option<Vec<Tensor>> = None;
        for (scale, map) in self.scales.iter().zip(&maps).rev() {
            let inputs: Vec<Tensor> = match (&scale.propagation, &coarser) {
                (Some(p), Some(coarse)) => p
                    .forward(coarse, map, train, c)
                    .into_iter()
                    .map(|m| Tensor::cat(&[map.shallow_clone(), m], 1))
                    .collect(),
                _ => self.tasks.iter().map(|_| map.shallow_clone()).collect(),
            };
            let initial: Vec<Tensor> =
                scale.initial.iter().zip(&inputs).map(|(b, input)| b.forward(input, train, c)).collect();
            // The tasks' own parts read copies; the propagation (shared) reads the originals.
            let crossed = pass.cross_all(&initial);
            predict_all(&scale.predictors, &crossed, self.aux_weight, out_hw, pass);
            for (f, d) in features.iter_mut().zip(&scale.distillation) {
                f.push(d.forward(&crossed, c));
            }
            coarser = Some(initial);
        }
        for f in &mut features {
            f.reverse(); // finest first, as the heads read stage maps
        }
        features
    }

    fn private(&self, task: usize) -> Vec<String> {
        let t = &self.tasks[task];
        vec![format!("aux.{t}"), format!("distill.{t}")]
    }
}
