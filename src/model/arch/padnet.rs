//! PAD-Net (Xu et al., CVPR 2018): prediction-and-distillation. The shared backbone's coarsest
//! map feeds one initial branch per task (`initial.<task>`: conv3×3–BN–activation at the
//! coarsest width), whose features make the task's initial prediction (`aux.<task>`, scored
//! by the task's own loss × `aux_weight`) and, through multi-modal distillation
//! (`distill.<task>`, attention-gated messages from every other task's initial features),
//! the task's distilled features. The task's head (its U-Net decoder) reads the backbone's
//! finer maps with the distilled features in place of the coarsest map.
//!
//! Ownership: a task's initial branch feeds every task's distillation, so the branches are
//! shared with the backbone; a task's predictor and distillation module are its own.
//! Representation: the backbone's finer maps (the heads' skip connections) and every task's
//! initial features: the tensors the tasks' own parts read.
use super::fusion::{aux_weight, predict_all, predictors, Distillation, Predictor};
use super::{require_maps, Architecture, Build, Pass, Plan, Setting};
use crate::config::OptionMap;
use crate::model::backbone::{self, Backbone};
use crate::model::layers::ConvBnAct;
use crate::model::BACKBONE;
use tch::Tensor;

pub(super) fn plan(o: &mut OptionMap, s: &Setting) -> anyhow::Result<Box<dyn Plan>> {
    require_maps(s, "padnet", "its initial predictions and distillation work on feature maps")?;
    Ok(Box::new(PadNetPlan { aux_weight: aux_weight(o)? }))
}

struct PadNetPlan {
    aux_weight: f64,
}

impl Plan for PadNetPlan {
    fn build(&self, b: &Build) -> Box<dyn Architecture> {
        let width = *backbone::stage_widths(b.backbone).last().expect("a backbone has a stage");
        let bn = b.backbone.norm == crate::config::Norm::Batch;
        let initial = b
            .tasks
            .iter()
            .map(|t| ConvBnAct::new(&(b.root / "initial" / t.as_str()), width, width, bn, b.backbone.activation))
            .collect();
        Box::new(PadNet {
            backbone: b.backbone(&(b.root / BACKBONE)),
            initial,
            predictors: predictors(b, "aux", None, width),
            distillation: Distillation::for_every_task(b, "distill", None, width),
            aux_weight: self.aux_weight,
            tasks: b.tasks.to_vec(),
        })
    }
}

pub struct PadNet {
    backbone: Backbone,
    initial: Vec<ConvBnAct>,
    predictors: Vec<Predictor>,
    distillation: Vec<Distillation>,
    aux_weight: f64,
    tasks: Vec<String>,
}

impl Architecture for PadNet {
    fn forward(&self, x: &Tensor, pass: &mut Pass) -> Vec<Vec<Tensor>> {
        let (train, c) = (pass.train, pass.compute);
        let mut maps = self.backbone.forward(x, train, c);
        let top = maps.pop().expect("a backbone has a stage");
        let skips = pass.cross_all(&maps);
        let initial: Vec<Tensor> = self.initial.iter().map(|b| pass.cross(&b.forward(&top, train, c))).collect();
        predict_all(&self.predictors, &initial, self.aux_weight, (x.size()[2], x.size()[3]), pass);
        self.distillation
            .iter()
            .map(|d| {
                let mut features: Vec<Tensor> = skips.iter().map(Tensor::shallow_clone).collect();
                features.push(d.forward(&initial, c));
                features
            })
            .collect()
    }

    fn private(&self, task: usize) -> Vec<String> {
        let t = &self.tasks[task];
        vec![format!("aux.{t}"), format!("distill.{t}")]
    }
}
