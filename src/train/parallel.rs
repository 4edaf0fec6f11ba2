//! What data parallelism changes in the loop, in one place: the trainer consults [`Ranks`] at
//! the few points where ranks must agree, and for a single process every call is a no-op that
//! touches nothing (so a one-process run computes exactly what it did before distribution
//! existed).
//!
//! Per step, in this order on every rank: the per-task losses are averaged over the ranks
//! (one small all-reduce; loss-level methods see them, and the logs); gradient methods combine
//! the gradients of the whole global batch ([`crate::balance::autograd::across_ranks`]); the flat
//! gradient buffer is averaged (one all-reduce over all parameters); BatchNorm statistics are
//! copied from rank 0 (one broadcast, unless `model.sync_batchnorm` keeps them equal); then the
//! same optimizer step runs everywhere, so the weights stay identical without being sent again.
use crate::data::loader::Shard;
use crate::dist::Group;
use tch::{Kind, Tensor};

pub struct Ranks {
    group: Option<Group>,
    /// `model.sync_batchnorm` in a distributed run: statistics are already equal on all ranks.
    synchronized_batchnorm: bool,
}

impl Ranks {
    /// The ranks of `group` (None: a single process). The model's training forwards then draw
    /// dropout masks for the global batch and, with `sync_batchnorm`, normalize over all ranks'
    /// batches.
    pub fn new(group: Option<Group>, sync_batchnorm: bool) -> Self {
        let synchronized_batchnorm = sync_batchnorm && group.as_ref().is_some_and(|g| g.world() > 1);
        if group.as_ref().is_some_and(|g| g.world() > 1) {
            crate::model::layers::distribute(group.clone(), synchronized_batchnorm);
        }
        Self { group, synchronized_batchnorm }
    }

    pub fn group(&self) -> Option<&Group> {
        self.group.as_ref()
    }

    pub fn world(&self) -> usize {
        self.group.as_ref().map_or(1, Group::world)
    }

    /// Rank 0, or a single process: owns the run directory, writes and prints.
    pub fn is_first(&self) -> bool {
        self.group.as_ref().is_none_or(Group::is_first)
    }

    pub fn shard(&self) -> Shard {
        self.group.as_ref().map_or(Shard::WHOLE, |g| Shard { rank: g.rank(), world: g.world() })
    }

    /// Losses whose values are the means over the ranks (what one process would compute on the
    /// global batch) and whose gradients are this rank's own (`m + (l − l̄)` with `l̄` detached),
    /// which the gradient average then turns into the global batch's.
    pub fn mean_losses(&self, losses: Vec<Tensor>) -> Vec<Tensor> {
        let Some(g) = &self.group else { return losses };
        let means = Tensor::stack(&losses.iter().map(|l| l.detach().to_kind(Kind::Double)).collect::<Vec<_>>(), 0);
        g.mean_(&means);
        losses.iter().enumerate().map(|(i, l)| means.get(i as i64).to_kind(l.kind()) + (l - l.detach())).collect()
    }

    /// After the backward pass: the flat gradient buffer averaged over the ranks, and the
    /// BatchNorm statistics made rank 0's (as DDP's buffer broadcast does).
    pub fn after_backward(&self, flat_grads: &Tensor, statistics: &[Tensor]) {
        let Some(g) = &self.group else { return };
        g.mean_(flat_grads);
        let floats: Vec<Tensor> =
            statistics.iter().filter(|t| t.is_floating_point()).map(Tensor::shallow_clone).collect();
        if !self.synchronized_batchnorm && !floats.is_empty() {
            g.broadcast_all_(&floats, 0);
        }
    }

    /// Makes every rank's `tensors` rank 0's (initial or restored weights and statistics).
    pub fn copy_from_first(&self, tensors: &[Tensor]) {
        if let Some(g) = &self.group {
            g.broadcast_all_(tensors, 0);
        }
    }

    /// `load` on this machine's first rank, then on the others (a single process: at once), so
    /// that a dataset absent from `data.root` is downloaded once, not by every rank at a time.
    pub fn first_on_machine<T>(&self, what: &str, load: impl FnOnce() -> anyhow::Result<T>) -> anyhow::Result<T> {
        match &self.group {
            Some(g) => g.first_on_machine(what, load),
            None => load(),
        }
    }

    /// Whether the loop stops after `done` steps, `asked` by a signal on this process: the
    /// same answer on every rank (a single process stops when asked).
    pub fn stop_after(&self, done: u64, asked: bool) -> bool {
        match &self.group {
            Some(g) => g.stop_after(done, asked),
            None => asked,
        }
    }

    /// The end of the run, on every rank together.
    pub fn finish(&self) {
        if let Some(g) = &self.group {
            g.finish();
        }
    }
}
