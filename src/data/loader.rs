//! Batches from an in-memory split that already lives on the device.
//!
//! The data order of epoch e is a permutation drawn from (seed, e), and a step's augmentation
//! from (seed, step): a batch is a pure function of (seed, epoch, position, step), which is
//! what makes resuming mid-epoch exact.
use super::{augment, normalisation, Split};
use crate::config::{Config, TaskKind};
use crate::rng::{stream, Purpose};
use rand::seq::SliceRandom;
use std::cell::RefCell;
use tch::{Kind, Tensor};

/// Normalised float images and one target per task, on the device.
pub struct Batch {
    pub images: Tensor,
    pub targets: Vec<Tensor>,
}

pub struct Loader {
    split: Split,
    /// Target name of each task, in task order.
    task_targets: Vec<String>,
    mean: Tensor,
    std: Tensor,
    batch_size: i64,
    crop_padding: i64,
    hflip: bool,
    fill_label: i64,
    seed: u64,
    /// The permutation of the epoch last asked for (recomputing it every step would be waste).
    order: RefCell<Option<(u64, Tensor)>>,
}

impl Loader {
    /// `train` enables augmentation; evaluation batches are in dataset order.
    pub fn new(cfg: &Config, split: Split, train: bool) -> Self {
        let device = split.images.device();
        let channels = split.images.size()[1];
        let (m, s) = normalisation(cfg.data.dataset);
        let stat = |v: [f64; 3]| {
            let v: Vec<f32> = if channels == 1 { vec![v.iter().sum::<f64>() as f32 / 3.0] } else { v.map(|x| x as f32).to_vec() };
            Tensor::from_slice(&v).view([1, channels, 1, 1]).to_device(device)
        };
        let fill_label = cfg
            .tasks
            .iter()
            .find(|t| t.kind == TaskKind::Segmentation)
            .map(|t| t.ignore_index)
            .unwrap_or(255);
        let aug = &cfg.data.augment;
        Self {
            task_targets: cfg.tasks.iter().map(|t| t.target.clone()).collect(),
            mean: stat(m),
            std: stat(s),
            batch_size: if train { cfg.data.batch_size } else { cfg.data.eval_batch_size } as i64,
            crop_padding: if train { aug.crop_padding } else { 0 },
            hflip: train && aug.hflip,
            fill_label,
            seed: cfg.seed,
            split,
            order: RefCell::new(None),
        }
    }

    pub fn len(&self) -> usize {
        self.split.len()
    }

    pub fn is_empty(&self) -> bool {
        self.split.is_empty()
    }

    pub fn channels(&self) -> i64 {
        self.split.images.size()[1]
    }

    pub fn image_size(&self) -> i64 {
        self.split.images.size()[2]
    }

    /// Training steps per epoch: full batches only (a ragged last batch would make BatchNorm
    /// statistics noisy), at least one.
    pub fn steps_per_epoch(&self) -> u64 {
        ((self.len() as i64 / self.batch_size).max(1)) as u64
    }

    /// The training batch at `position` of `epoch`, augmented with the stream of `step`.
    pub fn train_batch(&self, epoch: u64, position: u64, step: u64) -> Batch {
        let b = self.batch_size.min(self.len() as i64);
        let idx = self.epoch_order(epoch).narrow(0, position as i64 * b, b);
        let batch = self.gather(&idx);
        if self.crop_padding == 0 && !self.hflip {
            return batch;
        }
        let spatial: Vec<usize> = (0..batch.targets.len()).filter(|&i| batch.targets[i].dim() == 3).collect();
        let masks: Vec<Tensor> = spatial.iter().map(|&i| batch.targets[i].shallow_clone()).collect();
        let mut rng = stream(self.seed, Purpose::Augment, step);
        let (images, masks) =
            augment::crop_flip(&batch.images, &masks, self.crop_padding, self.hflip, self.fill_label, &mut rng);
        let mut targets = batch.targets;
        for (slot, mask) in spatial.into_iter().zip(masks) {
            targets[slot] = mask;
        }
        Batch { images, targets }
    }

    /// Evaluation batches in dataset order (the last one may be smaller).
    pub fn eval_batches(&self) -> impl Iterator<Item = Batch> + '_ {
        let n = self.len() as i64;
        let device = self.split.images.device();
        (0..n).step_by(self.batch_size as usize).map(move |start| {
            let len = self.batch_size.min(n - start);
            self.gather(&Tensor::arange_start(start, start + len, (Kind::Int64, device)))
        })
    }

    fn epoch_order(&self, epoch: u64) -> Tensor {
        let mut cached = self.order.borrow_mut();
        if let Some((e, order)) = cached.as_ref() {
            if *e == epoch {
                return order.shallow_clone();
            }
        }
        let mut idx: Vec<i64> = (0..self.len() as i64).collect();
        idx.shuffle(&mut stream(self.seed, Purpose::Shuffle, epoch));
        let order = Tensor::from_slice(&idx).to_device(self.split.images.device());
        *cached = Some((epoch, order.shallow_clone()));
        order
    }

    fn gather(&self, idx: &Tensor) -> Batch {
        let images = (self.split.images.index_select(0, idx).to_kind(Kind::Float) / 255.0 - &self.mean) / &self.std;
        let targets = self
            .task_targets
            .iter()
            .map(|name| self.split.targets[name].index_select(0, idx).to_kind(Kind::Int64))
            .collect();
        Batch { images, targets }
    }
}
