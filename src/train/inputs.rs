//! The data a run reads: a train and a val loader per data group (one group when every task
//! reads the same images, one per task's own data in multi-input MTL), and which group's
//! length makes an epoch (`train.epoch_by`).
//!
//! Each step draws one batch from every group (LibMTL's multi-input rule); a group's batch is
//! the one at [`Loader::place`] of the global step, so a group shorter than the epoch wraps
//! around (each pass in its own seeded order) and every position follows from the step alone.
use crate::config::EPOCH_BY_LARGEST;
use crate::data::loader::{Batch, Loader};
use crate::setup::Resolved;
use crate::user_bail;
use tch::Device;

/// One data group's loaders and the tasks that read them.
pub struct Input {
    /// Indices into the run's tasks, ascending; the loaders' targets are in this order.
    pub tasks: Vec<usize>,
    /// The dataset's name, for messages.
    pub dataset: &'static str,
    pub train: Loader,
    pub val: Loader,
}

/// Every data group of a run.
pub struct Inputs {
    pub groups: Vec<Input>,
    /// The group whose batches per pass make an epoch.
    pub epoch_by: usize,
}

impl Inputs {
    /// Loads every group's splits (fetching what `download` asks for) onto `device`.
    pub fn load(r: &Resolved, device: Device) -> anyhow::Result<Self> {
        let mut groups = Vec::with_capacity(r.groups.len());
        for g in &r.groups {
            // The dataset names tasks by their place in the group; the user knows their place in `tasks`.
            let sources = crate::data::load(g.dataset, &g.data, g.seed, &r.wanted(g)).map_err(|e| {
                match crate::error::is_user_error(&e) && r.multi_input() {
                    true => crate::user_error!("{}", crate::setup::renumber_tasks(&format!("{e:#}"), &g.tasks)),
                    false => e,
                }
            })?;
            let uses = r.target_uses(g);
            let loader = |source: crate::data::Source, train: bool| {
                Loader::new(&g.data, g.seed, g.dataset.normalization(), &uses, source.to_device(device), train)
            };
            let (train, val) = (loader(sources.train, true), loader(sources.val, false));
            if train.is_empty() || val.is_empty() {
                match r.multi_input() {
                    false => user_bail!("data: the train and val splits must not be empty"),
                    true => user_bail!(
                        "tasks[{}].data: the train and val splits of {} must not be empty",
                        g.tasks[0],
                        g.dataset.name()
                    ),
                }
            }
            groups.push(Input { tasks: g.tasks.clone(), dataset: g.dataset.name(), train, val });
        }
        let names: Vec<&str> = r.tasks.iter().map(|t| t.name.as_str()).collect();
        let lengths: Vec<u64> = groups.iter().map(|g| g.train.steps_per_epoch()).collect();
        let tasks: Vec<&[usize]> = groups.iter().map(|g| g.tasks.as_slice()).collect();
        let epoch_by = epoch_group(&r.cfg.train.epoch_by, &names, &tasks, &lengths);
        Ok(Self { groups, epoch_by })
    }

    /// Steps per epoch: the batches per pass of the `epoch_by` group.
    pub fn steps_per_epoch(&self) -> u64 {
        self.groups[self.epoch_by].train.steps_per_epoch()
    }

    /// One training batch per group for global step `step`, in group order.
    pub fn train_batches(&self, step: u64) -> Vec<Batch> {
        self.groups.iter().map(|g| g.train.train_batch_at(step)).collect()
    }

    /// The first group (the only one in single-input MTL): image shape and channels, which
    /// every group shares (the config refuses a task data that changes them).
    pub fn first(&self) -> &Input {
        &self.groups[0]
    }
}

/// The group that `train.epoch_by` names: `largest`, the one with the most batches per pass
/// (the first of equals), or the group holding the named task. `tasks` are each group's task
/// indices, `lengths` its batches per pass.
pub fn epoch_group(by: &str, names: &[&str], tasks: &[&[usize]], lengths: &[u64]) -> usize {
    if by == EPOCH_BY_LARGEST {
        let most = lengths.iter().copied().max().unwrap_or(0);
        return lengths.iter().position(|&l| l == most).unwrap_or(0);
    }
    let task = names.iter().position(|n| *n == by).expect("train.epoch_by names a task (validated)");
    tasks.iter().position(|t| t.contains(&task)).expect("every task is in a group")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn epoch_by_picks_the_largest_or_the_named_tasks_group() {
        let names = ["a", "b", "c"];
        let tasks: [&[usize]; 2] = [&[0, 2], &[1]];
        assert_eq!(epoch_group("largest", &names, &tasks, &[3, 7]), 1);
        assert_eq!(epoch_group("largest", &names, &tasks, &[7, 7]), 0, "the first of equals");
        assert_eq!(epoch_group("c", &names, &tasks, &[3, 7]), 0);
        assert_eq!(epoch_group("b", &names, &tasks, &[3, 7]), 1);
    }
}
