//! The pieces PAD-Net and MTI-Net share (task fusion: tasks read each other's features):
//! per-task initial predictions with their own losses ([`Predictor`]), and the multi-modal
//! distillation that passes attention-gated messages between the tasks' features
//! ([`Distillation`]).
use super::{Build, Pass};
use crate::config::OptionMap;
use crate::model::heads::{l2_normalize, HeadKind};
use crate::model::layers::{with_dense_gradient, Compute, Conv2d, Linear};
use tch::nn::Path;
use tch::{Kind, Tensor};

/// `aux_weight`: the weight of a task's initial predictions' losses next to its final one
/// (the papers weigh them equally: 1).
pub(super) fn aux_weight(o: &mut OptionMap) -> anyhow::Result<f64> {
    o.f64("aux_weight", 1.0, "a number in [0, 100]", |x| (0.0..=100.0).contains(&x))
}

/// A task's initial (auxiliary) prediction from its features, in the shape of its head's
/// output so that the task's own loss scores it: a 1×1 convolution (`classifier`) resized to
/// the input and, for normals, L2-normalized; for a per-image task, global average pooling and
/// a linear layer (`fc`).
#[derive(Debug)]
pub(super) enum Predictor {
    Dense { classifier: Conv2d, unit_length: bool },
    Vector { fc: Linear },
}

impl Predictor {
    pub(super) fn new(p: &Path, kind: HeadKind, c_in: i64) -> Self {
        match kind {
            HeadKind::Dense { channels, unit_length } => {
                Predictor::Dense { classifier: Conv2d::new(p / "classifier", c_in, channels, 1, 1, true), unit_length }
            }
            HeadKind::Vector { outputs } => Predictor::Vector { fc: Linear::new(p / "fc", c_in, outputs) },
        }
    }

    /// fp32 predictions for features `f` of an input of size `out_hw`.
    pub(super) fn forward(&self, f: &Tensor, out_hw: (i64, i64), c: Compute) -> Tensor {
        match self {
            Predictor::Dense { classifier, unit_length } => {
                let mut y = classifier.forward(f, c);
                if (y.size()[2], y.size()[3]) != out_hw {
                    y = y.upsample_bilinear2d([out_hw.0, out_hw.1], false, None, None);
                }
                let y = y.to_kind(Kind::Float);
                if *unit_length {
                    l2_normalize(&y)
                } else {
                    y
                }
            }
            Predictor::Vector { fc } => fc.forward(&f.mean_dim(&[-1i64, -2][..], false, None), c).to_kind(Kind::Float),
        }
    }
}

/// Every task's predictor under `<path>.<task>` (with `suffix` appended: MTI-Net's scale).
pub(super) fn predictors(b: &Build, path: &str, suffix: Option<usize>, c_in: i64) -> Vec<Predictor> {
    b.tasks
        .iter()
        .zip(b.outputs)
        .map(|(t, &kind)| {
            let p = b.root / path / t.as_str();
            let p = match suffix {
                Some(i) => &p / i,
                None => p,
            };
            Predictor::new(&p, kind, c_in)
        })
        .collect()
}

/// Records every task's initial prediction from its features for the trainer's loss.
pub(super) fn predict_all(
    predictors: &[Predictor],
    features: &[Tensor],
    weight: f64,
    out_hw: (i64, i64),
    pass: &mut Pass,
) {
    if !pass.train {
        return; // only training scores them
    }
    for (t, (p, f)) in predictors.iter().zip(features).enumerate() {
        let prediction = p.forward(f, out_hw, pass.compute);
        pass.add_auxiliary(t, weight, prediction);
    }
}

/// Multi-modal distillation for one target task (PAD-Net, Xu et al. 2018, eq. 3, the
/// attention-guided variant): `D_t = F_t + σ(gate(F_t)) ⊙ Σ_{s≠t} message_s(F_s)`, every
/// convolution 3×3 with a bias. Names: `gate`, `messages.<source task>` (not `from`: a Python keyword, which torch.fx cannot name).
#[derive(Debug)]
pub(super) struct Distillation {
    target: usize,
    gate: Conv2d,
    /// (source task, its message convolution), in task order.
    messages: Vec<(usize, Conv2d)>,
}

impl Distillation {
    /// One module per target task under `<path>.<task>` (+ `suffix`), on `width` channels.
    pub(super) fn for_every_task(b: &Build, path: &str, suffix: Option<usize>, width: i64) -> Vec<Distillation> {
        (0..b.tasks.len())
            .map(|target| {
                let p = b.root / path / b.tasks[target].as_str();
                let p = match suffix {
                    Some(i) => &p / i,
                    None => p,
                };
                let messages = (0..b.tasks.len())
                    .filter(|&s| s != target)
                    .map(|s| (s, Conv2d::new(&p / "messages" / b.tasks[s].as_str(), width, width, 3, 1, true)))
                    .collect();
                Distillation { target, gate: Conv2d::new(&p / "gate", width, width, 3, 1, true), messages }
            })
            .collect()
    }

    /// The distilled features of the target from every task's features `f`.
    pub(super) fn forward(&self, f: &[Tensor], c: Compute) -> Tensor {
        let own = &f[self.target];
        let gate = self.gate.forward(own, c).sigmoid();
        let messages = self.messages.iter().map(|(s, conv)| conv.forward(&f[*s], c)).reduce(|a, b| a + b);
        match messages {
            Some(m) => own + gate * m,
            None => own.shallow_clone(),
        }
    }
}

/// `x` resized bilinearly to `like`'s spatial size (as the heads' decoder upsamples).
pub(super) fn upsample_to(x: &Tensor, like: &Tensor, train: bool, c: Compute) -> Tensor {
    let size = [like.size()[2], like.size()[3]];
    let up = x.upsample_bilinear2d(size, false, None, None);
    if c.channels_last(train) {
        with_dense_gradient(&up)
    } else {
        up
    }
}
