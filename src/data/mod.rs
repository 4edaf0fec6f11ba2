//! Datasets: each one file that turns its source into in-memory [`Split`]s.
//!
//! Images are kept as uint8 `[N, C, H, W]` (4× smaller than f32, moved to the device once);
//! targets are int64 `[N]` for per-image classes and uint8 `[N, H, W]` for per-pixel labels.
//! Converting to float, normalising and augmenting happen batched on the device
//! (see [`augment`] and [`loader`]).
pub mod augment;
pub mod cifar10;
pub mod loader;
pub mod shapes;

use crate::config::{Config, DatasetKind};
use std::collections::BTreeMap;
use std::path::Path;
use tch::Tensor;

/// What kind of label a dataset target is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TargetShape {
    /// One class per image: int64 `[N]`.
    PerImage,
    /// One class per pixel: uint8 `[N, H, W]`.
    PerPixel,
}

/// A target a dataset provides: tasks name it in `tasks[].target`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TargetInfo {
    pub name: &'static str,
    pub shape: TargetShape,
    /// Number of classes (labels are 0..classes; per-pixel targets may also hold the ignore index).
    pub classes: i64,
}

/// One split held in memory.
#[derive(Debug)]
pub struct Split {
    /// uint8 `[N, C, H, W]`.
    pub images: Tensor,
    /// Target name -> int64 `[N]` or uint8 `[N, H, W]`.
    pub targets: BTreeMap<String, Tensor>,
}

impl Split {
    pub fn len(&self) -> usize {
        self.images.size()[0] as usize
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Moves images and targets to `device` (once, at start-up).
    pub fn to_device(self, device: tch::Device) -> Split {
        Split {
            images: self.images.to_device(device),
            targets: self.targets.into_iter().map(|(k, v)| (k, v.to_device(device))).collect(),
        }
    }
}

/// Both splits of a dataset.
#[derive(Debug)]
pub struct Splits {
    pub train: Split,
    pub val: Split,
}

/// The targets a dataset kind provides, for config validation before anything is loaded.
pub fn targets_of(kind: DatasetKind) -> &'static [TargetInfo] {
    match kind {
        DatasetKind::Shapes => shapes::TARGETS,
        DatasetKind::Cifar10Seg => cifar10::TARGETS,
    }
}

/// Per-channel mean and std used to normalise uint8 images (after dividing by 255).
pub fn normalisation(kind: DatasetKind) -> ([f64; 3], [f64; 3]) {
    match kind {
        DatasetKind::Shapes => ([0.5, 0.5, 0.5], [0.25, 0.25, 0.25]),
        DatasetKind::Cifar10Seg => ([0.4914, 0.4822, 0.4465], [0.2470, 0.2435, 0.2616]),
    }
}

/// Loads (or generates) both splits on the CPU. `config_dir` resolves a relative `data.root`.
/// A missing or malformed source is a [`crate::error::UserError`] naming the path.
pub fn load(cfg: &Config, config_dir: &Path) -> anyhow::Result<Splits> {
    let splits = match cfg.data.dataset {
        DatasetKind::Shapes => shapes::load(&cfg.data, cfg.seed)?,
        DatasetKind::Cifar10Seg => cifar10::load(&cfg.data, cfg.seed, config_dir)?,
    };
    Ok(if cfg.data.grayscale { to_grayscale(splits) } else { splits })
}

/// ITU-R BT.601 luma; keeps uint8.
fn to_grayscale(splits: Splits) -> Splits {
    let grey = |s: Split| {
        let w = Tensor::from_slice(&[0.299f32, 0.587, 0.114]).view([1, 3, 1, 1]);
        let y = (s.images.to_kind(tch::Kind::Float) * w).sum_dim_intlist(1, true, tch::Kind::Float);
        Split { images: y.round().clamp(0.0, 255.0).to_kind(tch::Kind::Uint8), targets: s.targets }
    };
    Splits { train: grey(splits.train), val: grey(splits.val) }
}
