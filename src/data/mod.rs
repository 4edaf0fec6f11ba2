//! Datasets: each one file that turns its source into [`Split`]s, held in memory or streamed.
//!
//! Images are kept as uint8 `[N, C, H, W]` (4× smaller than f32, moved to the device once);
//! targets are int64 `[N]` for per-image classes, uint8 `[N, H, W]` for per-pixel labels (255:
//! not scored), and float16 `[N, H, W]` (depth) or `[N, 3, H, W]` (normals) for per-pixel values
//! with NaN where the data marks a pixel invalid. Converting to float, normalising and augmenting
//! happen batched on the device (see [`augment`] and [`loader`]).
//!
//! A dataset that needs more than `data.max_memory_mb` is streamed instead where its format
//! allows it (pet, folder, nyuv2: one file set per sample): decode threads fill a bounded
//! channel with the batches the trainer will ask for next ([`stream`]). Streamed batches are
//! byte for byte the batches the in-memory path would gather, so the mode changes no result.
pub mod augment;
pub mod cifar10;
pub mod decode;
pub mod folder;
pub mod loader;
pub mod multimnist;
pub mod npy;
pub mod nyuv2;
pub mod pet;
pub mod shapes;
pub mod stream;

use crate::config::{Config, DataConfig, DatasetKind, OnBadFile};
use crate::user_bail;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use tch::{Kind, Tensor};

/// Per-pixel label value that is not scored (NYUv2's −1, an ignored Pet border, a mask's 255).
/// The loader turns it into each task's `ignore_index`.
pub const IGNORE_LABEL: u8 = 255;

/// What kind of label a dataset target is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TargetShape {
    /// One class per image: int64 `[N]`.
    PerImage,
    /// One class per pixel: uint8 `[N, H, W]`.
    PerPixel,
    /// One depth value per pixel: float16 `[N, H, W]`, NaN where invalid. A random zoom by s
    /// divides it by s (the camera moved closer).
    PerPixelDepth,
    /// One unit vector (x, y, z) per pixel: float16 `[N, 3, H, W]`, NaN where invalid. A
    /// horizontal flip negates x.
    PerPixelNormal,
}

impl TargetShape {
    /// The shape of a stored split's target tensor: int64 1-d, uint8 3-d, half 3-d or 4-d.
    pub fn of_tensor(t: &Tensor) -> Option<TargetShape> {
        match (t.kind(), t.dim()) {
            (Kind::Int64, 1) => Some(TargetShape::PerImage),
            (Kind::Uint8, 3) => Some(TargetShape::PerPixel),
            (Kind::Half | Kind::Float, 3) => Some(TargetShape::PerPixelDepth),
            (Kind::Half | Kind::Float, 4) => Some(TargetShape::PerPixelNormal),
            _ => None,
        }
    }

    /// Whether the target has a value per pixel (and so is augmented with the image).
    pub fn is_spatial(self) -> bool {
        self != TargetShape::PerImage
    }
}

/// A target a dataset provides: tasks name it in `tasks[].target`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TargetInfo {
    pub name: &'static str,
    pub shape: TargetShape,
    /// Number of classes (labels are 0..classes; per-pixel targets may also hold the ignore
    /// index); 0 for per-pixel values.
    pub classes: i64,
}

/// One split held in memory (or one batch of a streamed split).
#[derive(Debug)]
pub struct Split {
    /// uint8 `[N, C, H, W]`.
    pub images: Tensor,
    /// Target name -> int64 `[N]`, uint8 `[N, H, W]` or float16 `[N, H, W]` / `[N, 3, H, W]`.
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

    /// Bytes the split takes in memory.
    pub fn bytes(&self) -> u64 {
        let size = |t: &Tensor| t.numel() as u64 * t.kind().elt_size_in_bytes() as u64;
        size(&self.images) + self.targets.values().map(size).sum::<u64>()
    }

    /// The samples at `indices` (in that order).
    pub fn select(&self, indices: &[i64]) -> Split {
        let idx = Tensor::from_slice(indices).to_device(self.images.device());
        Split {
            images: self.images.index_select(0, &idx),
            targets: self.targets.iter().map(|(k, v)| (k.clone(), v.index_select(0, &idx))).collect(),
        }
    }
}

/// Both splits of a dataset held in memory.
#[derive(Debug)]
pub struct Splits {
    pub train: Split,
    pub val: Split,
}

/// A split as the loader reads it: in memory, or streamed from its files.
pub enum Source {
    Memory(Split),
    Stream(stream::Streamed),
}

impl Source {
    pub fn len(&self) -> usize {
        match self {
            Source::Memory(s) => s.len(),
            Source::Stream(s) => s.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// In memory: moves the tensors to `device`. Streamed: batches will be moved there.
    pub fn to_device(self, device: tch::Device) -> Source {
        match self {
            Source::Memory(s) => Source::Memory(s.to_device(device)),
            Source::Stream(s) => Source::Stream(s.to_device(device)),
        }
    }

    pub fn is_streamed(&self) -> bool {
        matches!(self, Source::Stream(_))
    }
}

/// Both splits as the loader reads them.
pub struct Sources {
    pub train: Source,
    pub val: Source,
}

/// The targets a dataset provides, for config validation before anything is loaded; `None`
/// for `folder`, whose targets are the columns of its labels.csv (and `mask`).
pub fn targets_of(cfg: &DataConfig) -> Option<Vec<TargetInfo>> {
    Some(match cfg.dataset {
        DatasetKind::Shapes => shapes::TARGETS.to_vec(),
        DatasetKind::Cifar10Seg => cifar10::TARGETS.to_vec(),
        DatasetKind::Multimnist => multimnist::TARGETS.to_vec(),
        DatasetKind::Pet => pet::targets(cfg.pet.border).to_vec(),
        DatasetKind::Nyuv2 => nyuv2::TARGETS.to_vec(),
        DatasetKind::Folder => return None,
    })
}

/// Per-channel mean and std used to normalise uint8 images (after dividing by 255).
pub fn normalisation(kind: DatasetKind) -> ([f64; 3], [f64; 3]) {
    const IMAGENET: ([f64; 3], [f64; 3]) = ([0.485, 0.456, 0.406], [0.229, 0.224, 0.225]);
    match kind {
        DatasetKind::Shapes => ([0.5, 0.5, 0.5], [0.25, 0.25, 0.25]),
        DatasetKind::Cifar10Seg => ([0.4914, 0.4822, 0.4465], [0.2470, 0.2435, 0.2616]),
        // MNIST's own statistics; one grey channel takes the mean of the three (equal) values.
        DatasetKind::Multimnist => ([0.1307; 3], [0.3081; 3]),
        DatasetKind::Pet | DatasetKind::Nyuv2 | DatasetKind::Folder => IMAGENET,
    }
}

/// Loads both splits on the CPU, in memory or as streams. `config_dir` resolves a relative
/// `data.root`. A missing or malformed source is a [`crate::error::UserError`] naming the path.
pub fn load(cfg: &Config, config_dir: &Path) -> anyhow::Result<Sources> {
    let d = &cfg.data;
    let memory = |splits: Splits| -> anyhow::Result<Sources> {
        let splits = if d.grayscale { to_grayscale(splits) } else { splits };
        check_memory(d, splits.train.bytes() + splits.val.bytes(), splits.train.len(), splits.val.len(), false)?;
        Ok(Sources { train: Source::Memory(splits.train), val: Source::Memory(splits.val) })
    };
    match d.dataset {
        DatasetKind::Shapes => memory(shapes::load(d, cfg.seed)?),
        DatasetKind::Cifar10Seg => memory(cifar10::load(d, cfg.seed, config_dir)?),
        DatasetKind::Multimnist => memory(multimnist::load(d, cfg.seed, config_dir)?),
        DatasetKind::Pet => stream::load_files(cfg, &pet::sources(d, config_dir)?),
        DatasetKind::Nyuv2 => stream::load_files(cfg, &nyuv2::sources(cfg, config_dir)?),
        DatasetKind::Folder => stream::load_files(cfg, &folder::sources(cfg, config_dir)?),
    }
}

/// Logs what a dataset takes in memory; refuses one over `data.max_memory_mb` (`streamable`
/// datasets never get here with one: they stream instead).
pub fn check_memory(d: &DataConfig, bytes: u64, train: usize, val: usize, streamable: bool) -> anyhow::Result<()> {
    let mb = bytes as f64 / MB;
    if mb > d.max_memory_mb && !streamable {
        user_bail!(
            "data.max_memory_mb: {:?} needs {} MB in memory ({train} train + {val} val samples), more than \
             the limit of {} MB, and it cannot be streamed; raise data.max_memory_mb or lower data.train_size / \
             data.val_size",
            d.dataset,
            show_mb(mb),
            d.max_memory_mb
        );
    }
    tracing::info!(
        "data: {:?} {train} train + {val} val samples, {} MB held in memory as uint8/float16 \
         (data.max_memory_mb {})",
        d.dataset,
        show_mb(mb),
        d.max_memory_mb
    );
    Ok(())
}

/// Megabytes with three significant digits below 10 MB, one decimal above.
pub fn show_mb(mb: f64) -> String {
    if mb < 10.0 {
        format!("{mb:.3}")
    } else {
        format!("{mb:.1}")
    }
}

/// Megabytes as `data.max_memory_mb` counts them (MiB).
pub const MB: f64 = (1u64 << 20) as f64;

/// ITU-R BT.601 luma; keeps uint8. One-channel images are returned unchanged.
fn to_grayscale(splits: Splits) -> Splits {
    let grey = |s: Split| Split { images: grayscale_images(&s.images), targets: s.targets };
    Splits { train: grey(splits.train), val: grey(splits.val) }
}

/// uint8 `[N, 3, H, W]` → uint8 `[N, 1, H, W]` (BT.601 luma, rounded). Elementwise per sample,
/// so a batch converted alone equals the same samples of a converted split.
pub fn grayscale_images(images: &Tensor) -> Tensor {
    if images.size()[1] == 1 {
        return images.shallow_clone();
    }
    let w = Tensor::from_slice(&[0.299f32, 0.587, 0.114]).view([1, 3, 1, 1]).to_device(images.device());
    let y = (images.to_kind(Kind::Float) * w).sum_dim_intlist(1, true, Kind::Float);
    y.round().clamp(0.0, 255.0).to_kind(Kind::Uint8)
}

/// `data.root` resolved against the config's directory, or `default` (relative to the
/// working directory) when unset.
pub fn root_dir(d: &DataConfig, config_dir: &Path, default: &str) -> PathBuf {
    match &d.root {
        Some(r) if Path::new(r).is_absolute() => PathBuf::from(r),
        Some(r) => config_dir.join(r),
        None => PathBuf::from(default),
    }
}

/// `data.on_bad_file`, or the dataset's default.
pub fn on_bad_file(d: &DataConfig) -> OnBadFile {
    d.on_bad_file.unwrap_or(match d.dataset {
        DatasetKind::Pet => OnBadFile::Skip,
        _ => OnBadFile::Refuse,
    })
}

/// Decode threads for `data.decode_threads` (0: one per core, at most 16).
pub fn decode_threads(d: &DataConfig) -> usize {
    match d.decode_threads {
        0 => std::thread::available_parallelism().map_or(1, |t| t.get()).min(16),
        n => n,
    }
}
