//! The data a run reads: a train and a val loader per data group (one group when every task
//! reads the same images, one per task's own data in multi-input MTL), and which group's
//! length makes an epoch (`train.epoch_by`).
//!
//! Each step draws one batch from every group (LibMTL's multi-input rule); a group's batch is
//! the one at [`Loader::place`] of the global step, so a group shorter than the epoch wraps
//! around (each pass in its own seeded order) and every position follows from the step alone.
use super::parallel::Ranks;
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
    /// Training images one step reads: every group's batch size.
    pub images_per_step: u64,
}

impl Inputs {
    /// Loads every group's splits (fetching what `download` asks for) onto `device`.
    /// With several ranks, each loader is sharded and each machine's first rank loads (and
    /// downloads) the data before the others.
    pub fn load(r: &Resolved, device: Device, ranks: &Ranks) -> anyhow::Result<Self> {
        let mut groups = Vec::with_capacity(r.groups.len());
        for g in &r.groups {
            // The dataset names tasks by their place in the group; the user knows their place in `tasks`.
            let load = || crate::data::load(g.dataset, &g.data, g.seed, &r.wanted(g));
            let sources = ranks.first_on_machine("data", load).map_err(|e| {
                match crate::error::is_user_error(&e) && r.multi_input() {
                    true => crate::user_error!("{}", crate::setup::renumber_tasks(&format!("{e:#}"), &g.tasks)),
                    false => e,
                }
            })?;
            let uses = r.target_uses(g);
            let loader = |source: crate::data::Source, train: bool| {
                Loader::new(
                    &g.data,
                    g.seed,
                    g.data.normalization(g.dataset.normalization()),
                    &uses,
                    source.to_device(device),
                    train,
                )
                .sharded(ranks.shard())
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
        let images_per_step = r.groups.iter().map(|g| g.data.batch_size as u64).sum();
        Ok(Self { groups, epoch_by, images_per_step })
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
    use crate::config::DataConfig;
    use crate::data::loader::TargetUse;
    use crate::data::{Source, Split};
    use std::collections::BTreeMap;
    use tch::{Kind, Tensor};

    /// A loader over `n` 4×4 grey samples whose `id` target is their index, batches of 4.
    fn loader(n: i64, seed: u64) -> Loader {
        let d = DataConfig { batch_size: 4, ..DataConfig::defaults("shapes") };
        let images = Tensor::zeros([n, 1, 4, 4], (Kind::Uint8, Device::Cpu));
        let targets = BTreeMap::from([("id".to_string(), Tensor::arange(n, (Kind::Int64, Device::Cpu)))]);
        let uses = [TargetUse { target: "id".into(), ignore_index: 255 }];
        Loader::new(&d, seed, ([0.5; 3], [0.5; 3]), &uses, Source::Memory(Split { images, targets }), true)
    }

    fn ids(l: &Loader, step: u64) -> Vec<i64> {
        Vec::try_from(&l.train_batch_at(step).targets[0]).unwrap()
    }

    #[test]
    fn every_groups_batch_is_a_function_of_the_step_alone() {
        // 26 samples: 6 full batches per pass (two samples left out of each pass); 10: 2.
        let (large, small) = (loader(26, 1), loader(10, 2));
        let inputs = Inputs {
            groups: [large, small]
                .into_iter()
                .enumerate()
                .map(|(i, l)| Input { tasks: vec![i], dataset: "t", val: loader(4, 0), train: l })
                .collect(),
            epoch_by: 0,
            images_per_step: 8,
        };
        assert_eq!(inputs.steps_per_epoch(), 6);
        let straight: Vec<Vec<Vec<i64>>> = (0..30)
            .map(|s| inputs.train_batches(s).iter().map(|b| Vec::try_from(&b.targets[0]).unwrap()).collect())
            .collect();
        // A fresh loader asked for any step first (as a resumed run is) gives the same batch.
        for s in [0u64, 3, 7, 13, 29] {
            assert_eq!(ids(&loader(26, 1), s), straight[s as usize][0], "large group, step {s}");
            assert_eq!(ids(&loader(10, 2), s), straight[s as usize][1], "small group, step {s}");
        }
        // The small group wraps around: each pass (2 steps) draws 8 distinct samples, in an
        // order of its own.
        let pass = |p: usize| -> Vec<i64> { straight[2 * p..2 * p + 2].iter().flat_map(|b| b[1].clone()).collect() };
        for p in 0..15 {
            let mut seen = pass(p);
            seen.sort();
            seen.dedup();
            assert_eq!(seen.len(), 8, "pass {p}: {:?}", pass(p));
        }
        assert_ne!(pass(0), pass(1), "each pass is shuffled anew");
        assert_eq!(inputs.groups[1].train.place(13), (6, 1));
    }

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
