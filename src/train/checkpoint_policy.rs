//! When the loop writes a checkpoint: at the configured epochs and steps, at the end, at a
//! pause or stop, and whenever the monitored metric improved.
use crate::config::CheckpointConfig;

/// How a step ended, as far as checkpointing cares.
pub struct StepEnd {
    /// The step just taken (1-based count of steps done).
    pub step: u64,
    /// The epoch training is now in; with `epoch_done`, the number of epochs done.
    pub epoch: u64,
    pub epoch_done: bool,
    /// Training's real end (`train.epochs` done).
    pub last: bool,
    /// A `train.max_steps` pause or a stop signal.
    pub pausing: bool,
    /// The evaluation at this step improved the monitored metric.
    pub improved: bool,
}

/// `checkpoint.every` (epochs) and `checkpoint.every_steps` (0: off).
pub struct CheckpointPolicy {
    every_epochs: u64,
    every_steps: u64,
}

impl CheckpointPolicy {
    pub fn new(cfg: &CheckpointConfig) -> Self {
        Self { every_epochs: cfg.every, every_steps: cfg.every_steps }
    }

    pub fn due(&self, end: &StepEnd) -> bool {
        (end.epoch_done && end.epoch.is_multiple_of(self.every_epochs))
            || end.last
            || end.pausing
            || end.improved
            || (self.every_steps > 0 && end.step.is_multiple_of(self.every_steps))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn due_at_its_epochs_steps_end_pause_and_improvement() {
        let policy = CheckpointPolicy { every_epochs: 2, every_steps: 5 };
        let end =
            |step, epoch, epoch_done| StepEnd { step, epoch, epoch_done, last: false, pausing: false, improved: false };
        assert!(!policy.due(&end(3, 1, true)), "epoch 1 of every 2");
        assert!(policy.due(&end(6, 2, true)));
        assert!(!policy.due(&end(6, 2, false)), "mid-epoch");
        assert!(policy.due(&end(10, 3, false)), "every 5 steps");
        assert!(policy.due(&StepEnd { last: true, ..end(7, 3, false) }));
        assert!(policy.due(&StepEnd { pausing: true, ..end(7, 3, false) }));
        assert!(policy.due(&StepEnd { improved: true, ..end(7, 3, false) }));
        let no_steps = CheckpointPolicy { every_epochs: 1, every_steps: 0 };
        assert!(!no_steps.due(&end(10, 3, false)));
    }
}
