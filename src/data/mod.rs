//! Datasets: each one file that turns its source into [`Split`]s, held in memory or streamed.
//!
//! Images are kept as uint8 `[N, C, H, W]` (4× smaller than f32, moved to the device once);
//! targets are int64 `[N]` for per-image classes, uint8 `[N, H, W]` for per-pixel labels (255:
//! not scored), and float16 `[N, H, W]` (depth) or `[N, 3, H, W]` (normals) for per-pixel values
//! with NaN where the data marks a pixel invalid. Converting to float, normalizing and augmenting
//! happen batched on the device (see [`augment`] and [`loader`]).
//!
//! A dataset that needs more than `data.max_memory_mb` is streamed instead where its format
//! allows it (pet, folder, nyuv2: one file set per sample): decode threads fill a bounded
//! channel with the batches the trainer will ask for next ([`stream`]). Streamed batches are
//! byte for byte the batches the in-memory path would gather, so the mode changes no result.
pub mod augment;
pub mod cifar10;
pub mod class_folders;
pub mod decode;
pub mod fetch;
pub mod folder;
pub mod jpeg;
pub mod loader;
pub mod multimnist;
pub mod npy;
pub mod nyuv2;
pub mod pet;
pub mod resize;
pub mod scenes;
pub mod shapes;
pub mod stream;
pub mod table;

use crate::config::{DataConfig, OnBadFile};
use crate::user_bail;
use std::collections::BTreeMap;
use std::path::PathBuf;
use tch::{Kind, Tensor};

/// Every dataset `data.dataset` names.
pub const DATASETS: &[&dyn Dataset] = &[
    &shapes::SHAPES,
    &scenes::SCENES,
    &cifar10::Cifar10Seg,
    &multimnist::MultiMnist,
    &pet::Pet,
    &nyuv2::Nyuv2,
    &folder::Folder,
    &class_folders::OFFICE31,
    &class_folders::OFFICE_HOME,
    &table::Table,
    &table::census::CensusIncome,
];

/// The dataset called `name`.
pub fn dataset_named(name: &str) -> Option<&'static dyn Dataset> {
    DATASETS.iter().copied().find(|d| d.name() == name)
}

/// The names of every dataset, for error messages.
pub fn dataset_names() -> Vec<&'static str> {
    DATASETS.iter().map(|d| d.name()).collect()
}

/// A dataset: where its samples come from and the facts the rest of the engine needs.
pub trait Dataset: Sync {
    /// The name `data.dataset` uses.
    fn name(&self) -> &'static str;
    /// Its targets, known without reading any file; `None` when its files define them
    /// (then [`Dataset::resolve_targets`] checks what the tasks ask for).
    fn targets(&self, d: &DataConfig) -> Option<Vec<TargetInfo>>;
    /// Per-channel mean and std that normalize its images (after dividing by 255).
    fn normalization(&self) -> ([f64; 3], [f64; 3]);
    /// Where its files are published, for `data.download` (src/data/fetch/datasets.txt, by name);
    /// `None` for generated data and for your own files.
    fn source(&self) -> Option<&'static fetch::Source> {
        fetch::source(self.name())
    }
    /// Where its files live when `data.root` is unset (relative to the working directory): the
    /// root its source names; `None` for generated data.
    fn default_root(&self) -> Option<&'static str> {
        self.source().map(|s| s.root.as_str())
    }
    /// Whether samples are separate files read one by one: then a bad file can be skipped
    /// (`data.on_bad_file`) and the dataset can stream when it does not fit in memory.
    fn per_sample_files(&self) -> bool {
        false
    }
    /// Whether it decodes JPEG or PNG image files (then `data.jpeg_decoder` and
    /// `data.decode_scale` apply, and the run records them).
    fn decodes_image_files(&self) -> bool {
        false
    }
    /// Whether it reads a class per subfolder (then `data.classes` may list them).
    fn class_folders(&self) -> bool {
        false
    }
    /// `data.on_bad_file` when unset.
    fn default_on_bad_file(&self) -> OnBadFile {
        OnBadFile::Refuse
    }
    /// For generated datasets: how many samples each split will have (train, val), known from
    /// the config alone, so their size is checked before they are built. (Datasets read from
    /// files are bounded by their files and checked once read.)
    fn planned_samples(&self, _d: &DataConfig) -> Option<(usize, usize)> {
        None
    }
    /// Its own rules for the `data` settings, as `"<key>: <message>"`.
    fn check(&self, _d: &DataConfig) -> Result<(), String> {
        Ok(())
    }
    /// For datasets without fixed [`Dataset::targets`]: checks that every wanted target
    /// exists in the files (errors name `tasks[i]`, `i` the position in `wanted`) and fills
    /// `classes` 0 from the data.
    fn resolve_targets(&self, _d: &DataConfig, _wanted: &mut [Wanted]) -> anyhow::Result<()> {
        Ok(())
    }
    /// Fills what the resolve step learns from the files into the `data` section, so the
    /// run's config.yaml records it (the table dataset's standardization and vocabularies).
    fn prepare(&self, _d: &mut DataConfig) -> anyhow::Result<()> {
        Ok(())
    }
    /// Reads (or generates) both splits on the CPU; `wanted` are the targets the tasks read.
    fn load(&self, d: &DataConfig, seed: u64, wanted: &[Wanted]) -> anyhow::Result<Loaded>;
}

/// Most samples a split of a generated dataset (`shapes`, `scenes`) may ask for.
pub const MAX_GENERATED_SAMPLES: usize = 1_000_000;

/// A generated dataset's (train, val) sample counts: `data.train_size` / `data.val_size`, or
/// `defaults` where they are 0.
pub fn generated_sizes(d: &DataConfig, defaults: (usize, usize)) -> (usize, usize) {
    let or_default = |n: usize, default: usize| if n == 0 { default } else { n };
    (or_default(d.train_size, defaults.0), or_default(d.val_size, defaults.1))
}

/// What a generated dataset (`shapes`, `scenes`) is: its name, the image sides it renders, its
/// split sizes when the config gives none, and how it renders `n` samples of a split
/// (`generate(seed, val, n, side)`).
pub struct Generator {
    pub name: &'static str,
    pub targets: &'static [TargetInfo],
    pub image_sizes: std::ops::RangeInclusive<i64>,
    pub default_sizes: (usize, usize),
    pub generate: fn(u64, bool, usize, usize) -> Split,
}

impl Dataset for Generator {
    fn name(&self) -> &'static str {
        self.name
    }

    fn targets(&self, _d: &DataConfig) -> Option<Vec<TargetInfo>> {
        Some(self.targets.to_vec())
    }

    fn normalization(&self) -> ([f64; 3], [f64; 3]) {
        // Rendered colours spread over the whole range: a fixed, not a measured, normalization.
        ([0.5, 0.5, 0.5], [0.25, 0.25, 0.25])
    }

    fn planned_samples(&self, d: &DataConfig) -> Option<(usize, usize)> {
        Some(generated_sizes(d, self.default_sizes))
    }

    fn check(&self, d: &DataConfig) -> Result<(), String> {
        check_generated_sizes(d)
    }

    fn load(&self, d: &DataConfig, seed: u64, _wanted: &[Wanted]) -> anyhow::Result<Loaded> {
        Ok(Loaded::Memory(self.splits(d, seed)?))
    }
}

impl Generator {
    /// Both splits (train: `data.train_size`, val: `data.val_size`, the defaults when 0).
    pub fn splits(&self, cfg: &DataConfig, seed: u64) -> anyhow::Result<Splits> {
        let (name, sizes) = (self.name, &self.image_sizes);
        if !sizes.contains(&cfg.image_size) {
            user_bail!(
                "data.image_size: {name} renders {}..={} px images, got {}",
                sizes.start(),
                sizes.end(),
                cfg.image_size
            );
        }
        let side = cfg.image_size as usize;
        let (train, val) = generated_sizes(cfg, self.default_sizes);
        Ok(Splits { train: (self.generate)(seed, false, train, side), val: (self.generate)(seed, true, val, side) })
    }
}

/// A generated dataset's rule for its sizes, as [`Dataset::check`] reports it.
pub fn check_generated_sizes(d: &DataConfig) -> Result<(), String> {
    for (key, n) in [("train_size", d.train_size), ("val_size", d.val_size)] {
        if n > MAX_GENERATED_SAMPLES {
            return Err(format!("data.{key}: at most {MAX_GENERATED_SAMPLES} generated samples"));
        }
    }
    Ok(())
}

/// What [`Dataset::load`] returns: splits already in memory, files to decode, or splits the
/// dataset streams itself (a table larger than memory).
pub enum Loaded {
    Memory(Splits),
    Files(stream::FileSources),
    Sources(Sources),
}

/// A target the tasks ask the dataset for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Wanted {
    pub target: String,
    pub shape: TargetShape,
    /// Its labels must lie in 0..classes (0 for per-pixel values, or "infer" before
    /// [`Dataset::resolve_targets`]).
    pub classes: i64,
}

/// ImageNet's per-channel mean and std, for photographs.
pub const IMAGENET: ([f64; 3], [f64; 3]) = ([0.485, 0.456, 0.406], [0.229, 0.224, 0.225]);

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
    /// One label in {0, 1} per sample (a table row): int64 `[N]`.
    Binary,
    /// One value per sample (a table row): float `[N]`.
    Value,
}

impl TargetShape {
    /// The shape of a stored split's target tensor: int64 1-d, uint8 3-d, half 3-d or 4-d.
    pub fn of_tensor(t: &Tensor) -> Option<TargetShape> {
        match (t.kind(), t.dim()) {
            (Kind::Int64, 1) => Some(TargetShape::PerImage),
            (Kind::Float, 1) => Some(TargetShape::Value),
            (Kind::Uint8, 3) => Some(TargetShape::PerPixel),
            (Kind::Half | Kind::Float, 3) => Some(TargetShape::PerPixelDepth),
            (Kind::Half | Kind::Float, 4) => Some(TargetShape::PerPixelNormal),
            _ => None,
        }
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

    /// Samples `start..start + len`.
    pub fn narrow(&self, start: usize, len: usize) -> Split {
        let (start, len) = (start as i64, len as i64);
        Split {
            images: self.images.narrow(0, start, len),
            targets: self.targets.iter().map(|(k, v)| (k.clone(), v.narrow(0, start, len))).collect(),
        }
    }

    /// The samples of `parts`, one after another (parts with the same targets).
    pub fn cat(parts: Vec<Split>) -> Split {
        if parts.len() == 1 {
            return parts.into_iter().next().expect("one part");
        }
        let images: Vec<&Tensor> = parts.iter().map(|p| &p.images).collect();
        let targets = parts[0]
            .targets
            .keys()
            .map(|k| (k.clone(), Tensor::cat(&parts.iter().map(|p| &p.targets[k]).collect::<Vec<_>>(), 0)))
            .collect();
        Split { images: Tensor::cat(&images, 0), targets }
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

/// A split as the loader reads it: in memory, streamed from its files (one set per sample),
/// or streamed from a table's rows.
pub enum Source {
    Memory(Split),
    Stream(stream::Streamed),
    Rows(table::stream::RowStream),
}

impl Source {
    pub fn len(&self) -> usize {
        match self {
            Source::Memory(s) => s.len(),
            Source::Stream(s) => s.len(),
            Source::Rows(s) => s.len(),
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
            Source::Rows(s) => Source::Rows(s.to_device(device)),
        }
    }

    pub fn is_streamed(&self) -> bool {
        !matches!(self, Source::Memory(_))
    }
}

/// Both splits as the loader reads them.
pub struct Sources {
    pub train: Source,
    pub val: Source,
}

/// Loads both splits of `dataset` on the CPU, in memory or as streams, after fetching it when
/// `data.download` asks for that and it is absent. A missing or malformed source is a
/// [`crate::error::UserError`] naming the path.
pub fn load(dataset: &dyn Dataset, d: &DataConfig, seed: u64, wanted: &[Wanted]) -> anyhow::Result<Sources> {
    if let (Some((train, val)), Some(targets)) = (dataset.planned_samples(d), dataset.targets(d)) {
        // Built in RGB whatever `grayscale` says: the peak is three channels.
        let px = (d.image_size * d.image_size) as u64;
        let per_sample = 3 * px + targets.iter().map(|t| target_bytes(t.shape, px)).sum::<u64>();
        let bytes = per_sample.saturating_mul((train + val) as u64);
        refuse_over_limit(d, bytes, train, val)?;
    }
    fetch::ensure(d, &root_dir(d))?;
    match dataset.load(d, seed, wanted)? {
        Loaded::Memory(splits) => {
            let splits = if d.grayscale { to_grayscale(splits) } else { splits };
            check_memory(d, splits.train.bytes() + splits.val.bytes(), splits.train.len(), splits.val.len(), false)?;
            Ok(Sources { train: Source::Memory(splits.train), val: Source::Memory(splits.val) })
        }
        Loaded::Files(files) => stream::load_files(dataset, d, &files),
        Loaded::Sources(sources) => Ok(sources),
    }
}

/// Bytes one target of `shape` takes per sample of `px` pixels (classes int64, labels uint8,
/// depth and normals float16).
pub fn target_bytes(shape: TargetShape, px: u64) -> u64 {
    match shape {
        TargetShape::PerImage | TargetShape::Binary => 8,
        TargetShape::Value => 4,
        TargetShape::PerPixel => px,
        TargetShape::PerPixelDepth => 2 * px,
        TargetShape::PerPixelNormal => 6 * px,
    }
}

/// Logs what a dataset takes in memory; refuses one over `data.max_memory_mb` (`streamable`
/// datasets never get here with one: they stream instead).
pub fn check_memory(d: &DataConfig, bytes: u64, train: usize, val: usize, streamable: bool) -> anyhow::Result<()> {
    if !streamable {
        refuse_over_limit(d, bytes, train, val)?;
    }
    tracing::info!(
        "data: {} {train} train + {val} val samples, {} MB held in memory as uint8/float16 \
         (data.max_memory_mb {})",
        d.dataset,
        show_mb(bytes as f64 / MB),
        d.max_memory_mb
    );
    Ok(())
}

/// Refuses a dataset that needs more than `data.max_memory_mb` and cannot stream.
fn refuse_over_limit(d: &DataConfig, bytes: u64, train: usize, val: usize) -> anyhow::Result<()> {
    let mb = bytes as f64 / MB;
    if mb > d.max_memory_mb {
        user_bail!(
            "data.max_memory_mb: {} needs {} MB in memory ({train} train + {val} val samples), more than \
             the limit of {} MB, and it cannot be streamed; raise data.max_memory_mb or lower data.train_size / \
             data.val_size",
            d.dataset,
            show_mb(mb),
            d.max_memory_mb
        );
    }
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

/// `data.root` (made absolute when the config was resolved), or the dataset's default root
/// (relative to the working directory) when unset.
pub fn root_dir(d: &DataConfig) -> PathBuf {
    let default = || dataset_named(&d.dataset).and_then(|s| s.default_root());
    PathBuf::from(d.root.as_deref().or_else(default).unwrap_or("."))
}

/// `data.on_bad_file`, or the dataset's default.
pub fn on_bad_file(dataset: &dyn Dataset, d: &DataConfig) -> OnBadFile {
    d.on_bad_file.unwrap_or_else(|| dataset.default_on_bad_file())
}

/// Most decode threads `auto` starts (each holds `prefetch_batches / threads + 1` batches).
const MAX_AUTO_DECODE_THREADS: usize = 16;

/// The cores this process may run on (its affinity mask and cgroup quota), shared with the
/// other ranks the launcher or torchrun started on this machine (`LOCAL_WORLD_SIZE`).
pub fn cores_per_rank() -> usize {
    let cores = std::thread::available_parallelism().map_or(1, |t| t.get());
    let local_ranks = std::env::var("LOCAL_WORLD_SIZE").ok().and_then(|v| v.parse::<usize>().ok()).unwrap_or(1);
    (cores / local_ranks.max(1)).max(1)
}

/// Decode threads that read a whole split into memory, before training starts:
/// `data.decode_threads`, or (`auto`) every core of this rank, at most 16.
pub fn decode_threads(d: &DataConfig) -> usize {
    match d.decode_threads {
        0 => cores_per_rank().min(MAX_AUTO_DECODE_THREADS),
        n => n,
    }
}

/// Decode threads that stream batches while the trainer's thread runs: `data.decode_threads`,
/// or (`auto`) every core of this rank but one, which the trainer's thread keeps (at least 1,
/// at most 16). On a GPU machine with 16 cores per GPU: 15.
pub fn stream_threads(d: &DataConfig) -> usize {
    match d.decode_threads {
        0 => cores_per_rank().saturating_sub(1).clamp(1, MAX_AUTO_DECODE_THREADS),
        n => n,
    }
}
