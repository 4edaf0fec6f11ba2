//! Batches from a split held on the device, or streamed from disk.
//!
//! The data order of epoch e is a permutation drawn from (seed, e), and a step's augmentation
//! from (seed, step): a batch is a pure function of (seed, epoch, position, step), which is
//! what makes resuming mid-epoch exact. A streamed split decodes the very samples of that
//! permutation ahead of time (see [`super::stream`]), so both modes give identical batches.
//!
//! In a distributed run every rank draws the same permutation and takes its [`Shard`] of the
//! global batch (`world` × `data.batch_size` samples): rank r gets the r-th slice, augmented
//! with the numbers one process would draw for those samples. The global sample order is
//! therefore a one-process run's at batch `world` × `data.batch_size`, at any world size.
use super::augment::{self, Spatial};
use super::stream::{Ahead, Plan};
use super::{Source, Split, TargetShape, IGNORE_LABEL};
use crate::config::DataConfig;
use crate::rng::{stream, Purpose};
use rand::seq::SliceRandom;
use std::cell::RefCell;
use std::sync::Arc;
use tch::{Device, Kind, Tensor};

/// Normalized float images and one target per task, on the device: int64 `[N]` classes,
/// int64 `[N, H, W]` labels (the task's ignore_index where not scored), float `[N, H, W]`
/// depth and `[N, 3, H, W]` normals (NaN where invalid).
pub struct Batch {
    pub images: Tensor,
    pub targets: Vec<Tensor>,
}

/// The target a task reads, and the label that means "not scored" in its per-pixel labels.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TargetUse {
    pub target: String,
    pub ignore_index: i64,
}

/// What the loader needs to know about a task's target.
struct TaskTarget {
    name: String,
    shape: TargetShape,
    /// The label that means "not scored" (per-pixel labels only).
    ignore_index: i64,
}

/// This process's share of every batch: rank `rank` of `world`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shard {
    pub rank: usize,
    pub world: usize,
}

impl Shard {
    /// A single process: every batch whole.
    pub const WHOLE: Shard = Shard { rank: 0, world: 1 };
}

pub struct Loader {
    source: Source,
    /// Table rows: float vectors already standardized, not uint8 pixels.
    rows: bool,
    shard: Shard,
    tasks: Vec<TaskTarget>,
    mean: Tensor,
    std: Tensor,
    batch_size: i64,
    crop_padding: i64,
    hflip: bool,
    max_scale: f64,
    seed: u64,
    device: Device,
    /// The permutation of the epoch last asked for (recomputing it every step would be waste).
    order: RefCell<Option<(u64, Tensor)>>,
    /// Streamed training split: the threads working ahead.
    prefetch: RefCell<Option<Box<dyn Ahead>>>,
}

/// The sample order of `epoch`: a permutation of 0..n from `(seed, Shuffle, epoch)`.
pub fn epoch_permutation(seed: u64, epoch: u64, n: usize) -> Vec<i64> {
    let mut idx: Vec<i64> = (0..n as i64).collect();
    idx.shuffle(&mut stream(seed, Purpose::Shuffle, epoch));
    idx
}

impl Loader {
    /// Batches of `source` for the tasks' `targets`, normalized with the dataset's per-channel
    /// `(mean, std)`. `train` enables augmentation; evaluation batches are in dataset order.
    pub fn new(
        d: &DataConfig,
        seed: u64,
        normalization: ([f64; 3], [f64; 3]),
        targets: &[TargetUse],
        source: Source,
        train: bool,
    ) -> Self {
        let (device, channels) = match &source {
            Source::Memory(s) => (s.images.device(), s.images.size()[1]),
            Source::Stream(s) => (s.device(), s.channels()),
            Source::Rows(s) => (s.device(), s.width()),
        };
        let (m, s) = normalization;
        // Table rows arrive as float vectors already standardized: nothing per channel.
        let rows = match &source {
            Source::Memory(s) => s.images.kind() == Kind::Float,
            Source::Stream(_) => false,
            Source::Rows(_) => true,
        };
        let channels = if rows { 1 } else { channels };
        let stat = |v: [f64; 3]| {
            let v: Vec<f32> =
                if channels == 1 { vec![v.iter().sum::<f64>() as f32 / 3.0] } else { v.map(|x| x as f32).to_vec() };
            Tensor::from_slice(&v).view([1, channels, 1, 1]).to_device(device)
        };
        let tasks = targets
            .iter()
            .map(|t| {
                let shape = match &source {
                    Source::Memory(s) => s.targets.get(&t.target).and_then(TargetShape::of_tensor),
                    Source::Stream(s) => s.target_shape(&t.target),
                    Source::Rows(s) => s.target_shape(&t.target),
                };
                let shape = shape.unwrap_or_else(|| {
                    panic!("the dataset has no usable target '{}' (validation lets none through)", t.target)
                });
                TaskTarget { name: t.target.clone(), shape, ignore_index: t.ignore_index }
            })
            .collect();
        let aug = &d.augment;
        Self {
            tasks,
            mean: stat(m),
            std: stat(s),
            batch_size: if train { d.batch_size } else { d.eval_batch_size } as i64,
            crop_padding: if train { aug.crop_padding } else { 0 },
            hflip: train && aug.hflip,
            max_scale: if train { aug.max_scale } else { 1.0 },
            seed,
            device,
            source,
            rows,
            shard: Shard::WHOLE,
            order: RefCell::new(None),
            prefetch: RefCell::new(None),
        }
    }

    /// The same batches, shared out: training batches of `data.batch_size` per rank from a
    /// global batch `world` times that, evaluation batches dealt out in turn.
    pub fn sharded(mut self, shard: Shard) -> Self {
        self.shard = shard;
        self
    }

    pub fn shard(&self) -> Shard {
        self.shard
    }

    /// Samples per step over all ranks (the per-rank batch on one process).
    pub fn global_batch_size(&self) -> i64 {
        self.batch_size * self.shard.world as i64
    }

    /// The uint8 pixels of normalized images from this loader (to show them).
    pub fn pixels(&self, images: &Tensor) -> Tensor {
        ((images * &self.std + &self.mean) * 255.0).round().clamp(0.0, 255.0).to_kind(Kind::Uint8)
    }

    pub fn len(&self) -> usize {
        self.source.len()
    }

    pub fn is_empty(&self) -> bool {
        self.source.is_empty()
    }

    /// Whether batches are decoded from disk while training.
    pub fn is_streamed(&self) -> bool {
        self.source.is_streamed()
    }

    pub fn channels(&self) -> i64 {
        match &self.source {
            Source::Memory(s) => s.images.size()[1],
            Source::Stream(s) => s.channels(),
            Source::Rows(s) => s.width(),
        }
    }

    /// Height of the images (their side, for the square ones).
    pub fn image_size(&self) -> i64 {
        self.image_hw().0
    }

    /// Height and width of the images.
    pub fn image_hw(&self) -> (i64, i64) {
        match &self.source {
            Source::Memory(s) => (s.images.size()[2], s.images.size()[3]),
            Source::Stream(s) => s.image_hw(),
            Source::Rows(_) => (1, 1),
        }
    }

    /// Training steps per epoch: full global batches only (a ragged last batch would make
    /// BatchNorm statistics noisy), at least one.
    pub fn steps_per_epoch(&self) -> u64 {
        ((self.len() as i64 / self.global_batch_size()).max(1)) as u64
    }

    /// Where global step `step` reads: the pass over this split and the batch in it. Every
    /// split's place is a function of the step alone, so tasks with their own data (whose
    /// splits wrap around at their own lengths) resume exactly mid-epoch too.
    pub fn place(&self, step: u64) -> (u64, u64) {
        let spe = self.steps_per_epoch();
        (step / spe, step % spe)
    }

    /// The training batch of global step `step` (see [`Loader::place`]).
    pub fn train_batch_at(&self, step: u64) -> Batch {
        let (pass, position) = self.place(step);
        self.train_batch(pass, position, step)
    }

    /// This rank's part of the training batch at `position` of `epoch`, augmented with the
    /// stream of `step`.
    pub fn train_batch(&self, epoch: u64, position: u64, step: u64) -> Batch {
        let world = self.shard.world as i64;
        let b = self.batch_size.min(self.len() as i64 / world);
        let global = b * world;
        let part = augment::Part { offset: self.shard.rank as i64 * b, total: global };
        let batch = match &self.source {
            Source::Memory(split) => {
                let idx = self.epoch_order(epoch).narrow(0, position as i64 * global + part.offset, b);
                self.gather(split, &idx)
            }
            Source::Stream(s) => {
                let spe = self.steps_per_epoch();
                let (seed, n, b) = (self.seed, self.len(), b as usize);
                let (global, offset) = (global as usize, part.offset as usize);
                self.ahead(epoch * spe + position, |g| {
                    let plan: Plan = Arc::new(move |g| {
                        let at = (g % spe) as usize * global + offset;
                        epoch_permutation(seed, g / spe, n)[at..at + b].to_vec()
                    });
                    Box::new(s.prefetch(plan, g, None))
                })
            }
            Source::Rows(s) => {
                let spe = self.steps_per_epoch();
                let (global, offset, b) = (global as usize, part.offset as usize, b as usize);
                self.ahead(epoch * spe + position, |g| Box::new(s.train(self.seed, g, spe, global, offset, b)))
            }
        };
        if self.crop_padding == 0 && !self.hflip && self.max_scale <= 1.0 {
            return self.remap_ignored(batch);
        }
        let slots: Vec<(usize, Spatial)> = self
            .tasks
            .iter()
            .enumerate()
            .filter_map(|(i, t)| match t.shape {
                TargetShape::PerImage | TargetShape::Binary | TargetShape::Value => None,
                TargetShape::PerPixel => Some((i, Spatial::Labels { fill: IGNORE_LABEL as i64 })),
                TargetShape::PerPixelDepth => Some((i, Spatial::Depth)),
                TargetShape::PerPixelNormal => Some((i, Spatial::Normals)),
            })
            .collect();
        let spatial: Vec<(Tensor, Spatial)> =
            slots.iter().map(|&(i, k)| (batch.targets[i].shallow_clone(), k)).collect();
        let mut rng = stream(self.seed, Purpose::Augment, step);
        let (images, outs) = augment::augment_part(
            &batch.images,
            &spatial,
            self.crop_padding,
            self.hflip,
            self.max_scale,
            part,
            &mut rng,
        );
        let mut targets = batch.targets;
        for ((slot, _), t) in slots.into_iter().zip(outs) {
            targets[slot] = t;
        }
        self.remap_ignored(Batch { images, targets })
    }

    /// Streamed training batch `g`, from the threads working ahead; they are (re)started by
    /// `start(g)` when they are not at `g` (the first step, or after a jump such as a resume).
    fn ahead(&self, g: u64, start: impl FnOnce(u64) -> Box<dyn Ahead>) -> Batch {
        let mut prefetch = self.prefetch.borrow_mut();
        if prefetch.as_ref().is_none_or(|p| p.position() != g) {
            *prefetch = None; // stops the old threads before new ones start
            *prefetch = Some(start(g));
        }
        let split = prefetch.as_mut().expect("just started").next_batch().unwrap_or_else(|e| panic!("{e:#}"));
        self.convert(split)
    }

    /// Evaluation batches in dataset order (the last one may be smaller); in a distributed run
    /// this rank's share of them: batches `rank`, `rank + world`, ….
    pub fn eval_batches(&self) -> Box<dyn Iterator<Item = Batch> + '_> {
        let n = self.len() as i64;
        let bs = self.batch_size;
        let Shard { rank, world } = self.shard;
        let all = (n + bs - 1) / bs;
        let mine = ((all - rank as i64).max(0) + world as i64 - 1) / world as i64;
        // The first sample of this rank's k-th batch.
        let start = move |k: i64| (k * world as i64 + rank as i64) * bs;
        match &self.source {
            Source::Memory(split) => Box::new((0..mine).map(start).map(move |start| {
                let len = bs.min(n - start);
                self.remap_ignored(
                    self.gather(split, &Tensor::arange_start(start, start + len, (Kind::Int64, self.device))),
                )
            })),
            Source::Stream(s) => {
                let batches = mine as u64;
                let plan: Plan = Arc::new(move |g| (start(g as i64)..(start(g as i64) + bs).min(n)).collect());
                self.drain(Box::new(s.prefetch(plan, 0, Some(batches))), batches)
            }
            Source::Rows(s) => {
                let (batches, prefetch) = s.eval(bs as usize, rank, world);
                self.drain(Box::new(prefetch), batches)
            }
        }
    }

    /// The first `batches` batches of a streamed evaluation.
    fn drain(&self, mut prefetch: Box<dyn Ahead>, batches: u64) -> Box<dyn Iterator<Item = Batch> + '_> {
        Box::new((0..batches).map(move |_| {
            let split = prefetch.next_batch().unwrap_or_else(|e| panic!("{e:#}"));
            self.remap_ignored(self.convert(split))
        }))
    }

    fn epoch_order(&self, epoch: u64) -> Tensor {
        let mut cached = self.order.borrow_mut();
        if let Some((e, order)) = cached.as_ref() {
            if *e == epoch {
                return order.shallow_clone();
            }
        }
        let order = Tensor::from_slice(&epoch_permutation(self.seed, epoch, self.len())).to_device(self.device);
        *cached = Some((epoch, order.shallow_clone()));
        order
    }

    /// The samples `idx` of an in-memory split, as float images and task targets.
    fn gather(&self, split: &Split, idx: &Tensor) -> Batch {
        self.batch_of(split.images.index_select(0, idx), |name| split.targets[name].index_select(0, idx))
    }

    /// A streamed batch (on the CPU), moved to the device.
    fn convert(&self, split: Split) -> Batch {
        self.batch_of(split.images.to_device(self.device), |name| split.targets[name].to_device(self.device))
    }

    fn batch_of(&self, images: Tensor, target: impl Fn(&str) -> Tensor) -> Batch {
        let images = match self.rows {
            true => images,
            false => (images.to_kind(Kind::Float) / 255.0 - &self.mean) / &self.std,
        };
        let targets = self
            .tasks
            .iter()
            .map(|t| {
                let kind = match t.shape {
                    TargetShape::PerImage | TargetShape::PerPixel | TargetShape::Binary => Kind::Int64,
                    TargetShape::PerPixelDepth | TargetShape::PerPixelNormal | TargetShape::Value => Kind::Float,
                };
                target(&t.name).to_kind(kind)
            })
            .collect();
        Batch { images, targets }
    }

    /// Label maps store "not scored" as 255; tasks with another ignore_index get theirs.
    fn remap_ignored(&self, mut batch: Batch) -> Batch {
        for (t, target) in self.tasks.iter().zip(batch.targets.iter_mut()) {
            if t.shape == TargetShape::PerPixel && t.ignore_index != IGNORE_LABEL as i64 {
                *target = target.masked_fill(
                    &target.eq_tensor(&Tensor::from(IGNORE_LABEL as i64).to_device(target.device())),
                    t.ignore_index,
                );
            }
        }
        batch
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::Split;
    use std::collections::BTreeMap;

    /// `n` samples whose image pixels and class both hold the sample's index, and a per-pixel
    /// mask; a loader over them with crop, flip and zoom.
    fn loader(n: i64, batch: usize, eval_batch: usize, train: bool) -> Loader {
        let images =
            Tensor::arange(n, (Kind::Uint8, Device::Cpu)).view([n, 1, 1, 1]).expand([n, 3, 8, 8], false).contiguous();
        let mut targets = BTreeMap::new();
        targets.insert("class".to_string(), Tensor::arange(n, (Kind::Int64, Device::Cpu)));
        targets.insert(
            "mask".to_string(),
            Tensor::arange(64, (Kind::Uint8, Device::Cpu)).view([1, 8, 8]).repeat([n, 1, 1]),
        );
        let yaml = format!(
            "dataset: shapes\nbatch_size: {batch}\neval_batch_size: {eval_batch}\naugment: {{crop_padding: 2, hflip: true, max_scale: 1.5}}"
        );
        let d: DataConfig = serde_yaml::from_str(&yaml).unwrap();
        let uses = ["class", "mask"].map(|t| TargetUse { target: t.into(), ignore_index: IGNORE_LABEL as i64 });
        Loader::new(&d, 4, ([0.0; 3], [1.0; 3]), &uses, Source::Memory(Split { images, targets }), train)
    }

    /// Two ranks of batch B draw, between them, exactly one process's batch of 2B: the same
    /// samples in the same order, augmented the same way; steps count global batches.
    #[test]
    fn shards_of_a_global_batch_are_one_process_batch() {
        let whole = loader(40, 8, 5, true);
        let ranks: Vec<Loader> = (0..2).map(|rank| loader(40, 4, 5, true).sharded(Shard { rank, world: 2 })).collect();
        assert_eq!(ranks[0].global_batch_size(), 8);
        assert_eq!((whole.steps_per_epoch(), ranks[1].steps_per_epoch()), (5, 5));
        for (epoch, position, step) in [(0, 0, 0), (0, 3, 3), (2, 4, 14)] {
            let w = whole.train_batch(epoch, position, step);
            let parts: Vec<Batch> = ranks.iter().map(|l| l.train_batch(epoch, position, step)).collect();
            let cat = |f: &dyn Fn(&Batch) -> Tensor| Tensor::cat(&parts.iter().map(f).collect::<Vec<_>>(), 0);
            assert!(cat(&|b| b.images.shallow_clone()).equal(&w.images), "images at step {step}");
            for t in 0..2 {
                assert!(cat(&|b| b.targets[t].shallow_clone()).equal(&w.targets[t]), "target {t} at step {step}");
            }
        }
    }

    /// Evaluation batches are dealt out in turn: together the ranks see every sample once.
    #[test]
    fn evaluation_shards_cover_the_split_once() {
        for world in [1, 2, 3] {
            let mut seen: Vec<i64> = (0..world)
                .flat_map(|rank| {
                    let l = loader(23, 4, 5, false).sharded(Shard { rank, world });
                    l.eval_batches().flat_map(|b| Vec::<i64>::try_from(&b.targets[0]).unwrap()).collect::<Vec<_>>()
                })
                .collect();
            seen.sort();
            assert_eq!(seen, (0..23).collect::<Vec<_>>(), "world {world}");
        }
        // A rank with no batch left (5 batches, 6 ranks) evaluates nothing.
        assert_eq!(loader(23, 4, 5, false).sharded(Shard { rank: 5, world: 6 }).eval_batches().count(), 0);
    }
}
