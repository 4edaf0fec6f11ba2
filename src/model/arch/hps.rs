//! Hard parameter sharing: one backbone (`backbone.*`) whose features every head reads. Its
//! representation is the backbone's output; nothing but the heads is private.
use super::{Architecture, Build, Pass, Plan, Setting};
use crate::config::OptionMap;
use crate::model::backbone::Backbone;
use crate::model::BACKBONE;
use tch::Tensor;

pub(super) fn plan(_: &mut OptionMap, _: &Setting) -> anyhow::Result<Box<dyn Plan>> {
    Ok(Box::new(HpsPlan))
}

struct HpsPlan;

impl Plan for HpsPlan {
    fn build(&self, b: &Build) -> Box<dyn Architecture> {
        Box::new(Hps { backbone: b.backbone(&(b.root / BACKBONE)), tasks: b.tasks.len() })
    }
}

pub struct Hps {
    backbone: Backbone,
    tasks: usize,
}

impl Architecture for Hps {
    fn forward(&self, x: &Tensor, pass: &mut Pass) -> Vec<Vec<Tensor>> {
        let features = self.backbone.forward(x, pass.train, pass.compute);
        let features = pass.cross_all(&features);
        (0..self.tasks).map(|_| features.iter().map(Tensor::shallow_clone).collect()).collect()
    }
}
