//! `train.on_nonfinite: skip_step`: a step whose loss or gradient is not finite is dropped, as
//! AMP's scaler does. What the step already changed besides the weights and optimizer (which a
//! skipped step never reaches) is put back, and the skips are counted for the loss means, the
//! log and the limit on skips in a row.
use crate::balance::Balancer;
use crate::model::MultiTaskModel;
use tch::{Device, Tensor};

/// Steps dropped: since the last log line, since the epoch began (the loss means leave them
/// out), in all, and in a row (the run stops after `train.max_consecutive_skips`).
/// Checkpointed, so a resumed run counts the same.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Skips {
    pub window: u64,
    pub epoch: u64,
    pub total: u64,
    pub consecutive: u64,
}

impl Skips {
    pub const TENSOR: &'static str = "loop.skips";

    pub fn to_tensor(self) -> Tensor {
        Tensor::from_slice(&[self.window, self.epoch, self.total, self.consecutive].map(|v| v as i64))
    }

    pub fn from_tensor(t: &Tensor) -> Option<Self> {
        let v = Vec::<i64>::try_from(t.to_device(Device::Cpu)).ok()?;
        let [window, epoch, total, consecutive] = v[..] else { return None };
        Some(Self { window: window as u64, epoch: epoch as u64, total: total as u64, consecutive: consecutive as u64 })
    }

    /// Counts one more skipped step.
    pub fn record(&mut self) {
        self.window += 1;
        self.epoch += 1;
        self.total += 1;
        self.consecutive += 1;
    }
}

/// Copies of what a step changes besides the weights and optimizer: BatchNorm statistics and
/// the balancer's state.
pub struct Undo {
    buffers: Vec<Tensor>,
    balancer: Vec<(String, Tensor)>,
}

impl Undo {
    pub fn capture(model: &MultiTaskModel, balancer: &dyn Balancer) -> Self {
        Self {
            buffers: model.buffers().iter().map(Tensor::copy).collect(),
            balancer: balancer.state().into_iter().map(|(k, v)| (k, v.copy())).collect(),
        }
    }

    pub fn restore(self, model: &MultiTaskModel, balancer: &mut dyn Balancer) -> anyhow::Result<()> {
        tch::no_grad(|| {
            for (b, saved) in model.buffers().iter().zip(&self.buffers) {
                b.shallow_clone().copy_(saved);
            }
        });
        balancer.load_state(&self.balancer)
    }
}
