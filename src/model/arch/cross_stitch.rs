//! Cross-stitch networks (Misra et al. 2016): one backbone per task (`columns.<task>.…`) and a
//! cross-stitch unit after every stage. After stage `i`, task `t`'s next stage and its head
//! read `Σ_j α[i][t]_j · (stage i's output of column j)`, with `α[i][t]` a learned vector of T
//! weights (`stitch.<i>.<task>`), initialised to `self_weight` for column `t` and the rest
//! spread evenly over the other columns (the paper's α_S = 0.9, α_D = 0.1 for two tasks).
//!
//! Ownership: every column feeds every task through the units, so the columns and the units
//! are shared, except the last unit's vectors: `α[S−1][t]` is task `t`'s alone.
//! Representation: what the shared part hands the tasks: the columns' last-stage outputs and
//! each task's mixed maps of the earlier stages (its head's skip connections).
use super::{weighted_sum, Architecture, Build, Pass, Plan, Setting};
use crate::config::OptionMap;
use crate::model::backbone::Backbone;
use tch::Tensor;

pub(super) fn plan(o: &mut OptionMap, _: &Setting) -> anyhow::Result<Box<dyn Plan>> {
    let self_weight = o.f64("self_weight", 0.9, "a number in (0, 1]", |x| x > 0.0 && x <= 1.0)?;
    Ok(Box::new(CrossStitchPlan { self_weight }))
}

struct CrossStitchPlan {
    self_weight: f64,
}

impl Plan for CrossStitchPlan {
    fn build(&self, b: &Build) -> Box<dyn Architecture> {
        let t = b.tasks.len();
        let columns: Vec<Backbone> = b.tasks.iter().map(|n| b.backbone(&(b.root / "columns" / n.as_str()))).collect();
        let units = (0..b.stages())
            .map(|i| {
                let p = b.root / "stitch" / i;
                (0..t)
                    .map(|own| {
                        let other = if t > 1 { (1.0 - self.self_weight) / (t - 1) as f64 } else { 0.0 };
                        let init: Vec<f32> =
                            (0..t).map(|j| if j == own { self.self_weight } else { other } as f32).collect();
                        crate::model::layers::var_copy(&p, &b.tasks[own], &Tensor::from_slice(&init))
                    })
                    .collect()
            })
            .collect();
        Box::new(CrossStitch { columns, units, tasks: b.tasks.to_vec() })
    }
}

pub struct CrossStitch {
    columns: Vec<Backbone>,
    /// `units[i][t]`: the weights of task `t`'s mix after stage `i`.
    units: Vec<Vec<Tensor>>,
    tasks: Vec<String>,
}

impl Architecture for CrossStitch {
    fn forward(&self, x: &Tensor, pass: &mut Pass) -> Vec<Vec<Tensor>> {
        let stages = self.units.len();
        let maps = self.columns[0].info().spatial;
        let mut inputs: Vec<Tensor> = self.columns.iter().map(|_| x.shallow_clone()).collect();
        let mut features: Vec<Vec<Tensor>> = self.tasks.iter().map(|_| Vec::new()).collect();
        for (i, units) in self.units.iter().enumerate() {
            let outs: Vec<Tensor> =
                self.columns.iter().zip(&inputs).map(|(c, h)| c.stage(i, h, pass.train, pass.compute)).collect();
            if i + 1 == stages {
                let outs = pass.cross_all(&outs);
                for (f, alpha) in features.iter_mut().zip(units) {
                    f.push(weighted_sum(alpha, &outs));
                }
            } else {
                inputs = units.iter().map(|alpha| weighted_sum(alpha, &outs)).collect();
                if maps {
                    for (f, h) in features.iter_mut().zip(&inputs) {
                        f.push(pass.cross(h));
                    }
                }
            }
        }
        features
    }

    fn private(&self, task: usize) -> Vec<String> {
        vec![format!("stitch.{}.{}", self.units.len() - 1, self.tasks[task])]
    }
}
