//! The typed YAML schema. Every struct denies unknown fields so a typo is an error, not a
//! silently ignored setting; defaults live here so a config only says what it changes.
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Names the run directory `runs/<name>` unless `--run-dir` is given.
    pub name: String,
    #[serde(default)]
    pub seed: u64,
    #[serde(default = "default_device")]
    pub device: String,
    #[serde(default)]
    pub precision: Precision,
    /// CPU threads for libtorch; 0 keeps libtorch's default.
    #[serde(default)]
    pub threads: usize,
    pub data: DataConfig,
    pub model: ModelConfig,
    pub tasks: Vec<TaskConfig>,
    #[serde(default)]
    pub balance: BalanceConfig,
    #[serde(default)]
    pub optim: OptimConfig,
    #[serde(default)]
    pub schedule: ScheduleConfig,
    #[serde(default)]
    pub train: TrainConfig,
    #[serde(default)]
    pub checkpoint: CheckpointConfig,
    /// Speed choices that change no result beyond floating-point rounding.
    #[serde(default)]
    pub speed: SpeedConfig,
    /// What a run reports besides metrics.jsonl and curves.png.
    #[serde(default, skip_serializing_if = "ReportConfig::is_default")]
    pub report: ReportConfig,
}

fn default_device() -> String {
    "auto".into()
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Precision {
    #[default]
    Fp32,
    Bf16,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DataConfig {
    /// The dataset: one of `mtl-train list` (`data::DATASETS` in src/data/mod.rs registers them;
    /// `shapes`, the default, is generated and needs no download).
    pub dataset: String,
    /// Where the files of a real dataset live (relative to the config file; unset: the
    /// dataset's default, `data/<name>` relative to the working directory).
    #[serde(default)]
    pub root: Option<String>,
    /// Fetch a public dataset (`mtl-train list`: those with `download`) into `root` when it is
    /// absent there, from the URLs and with the checksums of src/data/fetch/datasets.txt. `false`
    /// never touches the network: a missing dataset is an error.
    #[serde(default, skip_serializing_if = "is_false")]
    pub download: bool,
    /// With `download`: a base URL that stands in for the publishers' sites (an air-gapped
    /// cluster's copy); each file is fetched from `<mirror>/<file name>` and still checked
    /// against its published checksum. Unset: the environment variable MTL_DATA_MIRROR, else
    /// the publishers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mirror: Option<String>,
    /// Number of training samples; for real datasets 0 means all of them.
    #[serde(default)]
    pub train_size: usize,
    #[serde(default)]
    pub val_size: usize,
    /// Side of the square images the model sees (shapes renders at this size; 32 for CIFAR).
    #[serde(default = "default_image_size")]
    pub image_size: i64,
    /// Convert images to one grey channel (for the MLP example).
    #[serde(default)]
    pub grayscale: bool,
    #[serde(default = "default_batch_size")]
    pub batch_size: usize,
    #[serde(default = "default_eval_batch_size")]
    pub eval_batch_size: usize,
    #[serde(default)]
    pub augment: AugmentConfig,
    /// Most memory (MB, fractions allowed) the decoded dataset may take when held in memory,
    /// train and val together. A dataset that needs more streams from disk through the decode
    /// threads (pet, folder, nyuv2; a CSV or Parquet table in windows, docs/TABLES.md) or is
    /// refused with its size (shapes, cifar10_seg, multimnist, `.npz`/`.npy` tables).
    #[serde(default = "default_max_memory_mb", skip_serializing_if = "is_default_max_memory_mb")]
    pub max_memory_mb: f64,
    /// Threads that decode image and array files: `auto` (also written 0; the rule is in
    /// `data::decode_threads`: every core of this rank while loading into memory, all but the
    /// trainer's while streaming, at most 16) or a number.
    #[serde(default, skip_serializing_if = "is_zero", deserialize_with = "auto_or_count")]
    pub decode_threads: usize,
    /// Streaming: batches decoded ahead of the trainer (the bound of the decode channel).
    #[serde(default = "default_prefetch_batches", skip_serializing_if = "is_default_prefetch_batches")]
    pub prefetch_batches: usize,
    /// The JPEG decoder: `auto` (libjpeg-turbo where the build found it, else zune-jpeg),
    /// `libjpeg-turbo` or `zune-jpeg`. Their pixels differ by a few levels; each is the same
    /// run to run. A run over image files records the one it used in its config.yaml.
    #[serde(default, skip_serializing_if = "JpegDecoder::is_auto")]
    pub jpeg_decoder: JpegDecoder,
    /// Decode a JPEG at 1/2, 1/4 or 1/8 of its size (libjpeg's DCT scaling, as Pillow's
    /// `draft`) when that still leaves both sides at least `image_size`: `auto` (= true with
    /// libjpeg-turbo; zune-jpeg cannot), `true` or `false`. Recorded like `jpeg_decoder`.
    #[serde(default, skip_serializing_if = "Toggle::is_auto")]
    pub decode_scale: Toggle,
    /// An unreadable, malformed or mislabelled sample file: `skip` lists it once and leaves the
    /// sample out, `refuse` stops with an error naming it. Unset: `skip` for pet (the published
    /// archive has a few bad files), `refuse` for folder and nyuv2.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub on_bad_file: Option<OnBadFile>,
    /// Options of the `pet` dataset.
    #[serde(default, skip_serializing_if = "PetOptions::is_default")]
    pub pet: PetOptions,
    /// Options of the `folder` dataset.
    #[serde(default, skip_serializing_if = "FolderOptions::is_default")]
    pub folder: FolderOptions,
    /// Class-per-subfolder datasets (`office31`, `office_home`): the class folder names in
    /// label order; every subfolder must be listed and every listed class present. Empty: the
    /// subfolders, sorted by name.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub classes: Vec<String>,
    /// Per-channel mean and std that normalize the images (after dividing by 255) in place of
    /// the dataset's own. Set by the resolve step to ImageNet's when the backbone starts from
    /// pretrained weights (the normalization follows the weights), so config.yaml records it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub normalization: Option<Normalization>,
    /// The `table` dataset: the training split's file (`.csv` with a header, `.parquet`,
    /// `.npz`), or a mapping of column name to `.npy` file (relative to the config file).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub train: Option<TableFile>,
    /// The `table` dataset: the validation split, in the training split's format.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub val: Option<TableFile>,
    /// The `table` dataset: the columns the model reads (docs/TABLES.md).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub features: Option<TableFeatures>,
}

/// `data.normalization`: `{mean: [r, g, b], std: [r, g, b]}`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Normalization {
    pub mean: [f64; 3],
    pub std: [f64; 3],
}

/// Where a split of the `table` dataset is: one file, or one `.npy` array per column.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum TableFile {
    File(String),
    Arrays(std::collections::BTreeMap<String, String>),
}

/// The columns of a table the model reads, and what the training split taught about them.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TableFeatures {
    /// Columns standardized with the training split's mean and standard deviation (a 2-d
    /// array column counts as one column per entry of its second axis).
    #[serde(default)]
    pub numeric: Vec<String>,
    /// Columns mapped through a vocabulary of the training split to an embedding.
    #[serde(default)]
    pub categorical: std::collections::BTreeMap<String, CategoricalFeature>,
    /// Filled by the resolve step from the training split (never written by hand): the
    /// standardization and vocabularies, so evaluation, predict and export map rows exactly
    /// as training did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fitted: Option<FittedTable>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CategoricalFeature {
    /// Width of the column's embedding.
    pub dim: i64,
    /// Keep only the most frequent values of the training split (ties: the smaller value
    /// first); the others share the out-of-vocabulary index 0. Unset: every value.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_vocab: Option<usize>,
}

/// What the training split taught: the mapping every split goes through.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FittedTable {
    pub numeric: Vec<FittedNumeric>,
    pub categorical: Vec<FittedCategorical>,
    /// Set when the mapped splits would not fit in `data.max_memory_mb`: how the table is
    /// streamed. Recorded because it decides the data order (docs/TABLES.md, "Streaming").
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stream: Option<TableStream>,
}

/// The layout of a streamed table: chunks of at most `chunk_rows` rows, shuffled in windows of
/// at most `window_rows` rows (at least one chunk).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TableStream {
    pub chunk_rows: usize,
    pub window_rows: usize,
}

impl FittedTable {
    /// Standardized numeric entries and missing indicators: a row's first part.
    pub fn dense_width(&self) -> usize {
        self.numeric.iter().map(|n| n.mean.len() * (1 + n.indicator as usize)).sum()
    }

    /// Entries of a mapped row: the dense ones, then one vocabulary index per categorical column.
    pub fn raw_width(&self) -> usize {
        self.dense_width() + self.categorical.len()
    }
}

/// A numeric column: `(x − mean) / std` per entry; a missing value becomes the mean (0 after
/// standardizing) and, when `indicator`, sets an extra 0/1 feature.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FittedNumeric {
    pub column: String,
    pub mean: Vec<f64>,
    pub std: Vec<f64>,
    /// Whether the training split had missing values here (then one indicator per entry).
    #[serde(default)]
    pub indicator: bool,
}

/// A categorical column: value `vocab[i]` is index `i + 1`; anything else index 0 (OOV).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FittedCategorical {
    pub column: String,
    pub dim: i64,
    pub vocab: Vec<String>,
}

impl DataConfig {
    /// The images' normalization: `data.normalization` when set, else `dataset_default` (the
    /// dataset's own).
    pub fn normalization(&self, dataset_default: ([f64; 3], [f64; 3])) -> ([f64; 3], [f64; 3]) {
        self.normalization.map_or(dataset_default, |n| (n.mean, n.std))
    }

    /// Every setting at its default, for `dataset` (library use and tests).
    pub fn defaults(dataset: &str) -> Self {
        Self {
            dataset: dataset.to_string(),
            root: None,
            download: false,
            mirror: None,
            train_size: 0,
            val_size: 0,
            image_size: default_image_size(),
            grayscale: false,
            batch_size: default_batch_size(),
            eval_batch_size: default_eval_batch_size(),
            augment: AugmentConfig::default(),
            max_memory_mb: default_max_memory_mb(),
            decode_threads: 0,
            prefetch_batches: default_prefetch_batches(),
            jpeg_decoder: JpegDecoder::Auto,
            decode_scale: Toggle::Auto,
            on_bad_file: None,
            pet: PetOptions::default(),
            folder: FolderOptions::default(),
            classes: Vec::new(),
            normalization: None,
            train: None,
            val: None,
            features: None,
        }
    }
}

fn default_image_size() -> i64 {
    32
}
fn default_max_memory_mb() -> f64 {
    4096.0
}
fn is_default_max_memory_mb(v: &f64) -> bool {
    *v == default_max_memory_mb()
}
fn default_prefetch_batches() -> usize {
    4
}
fn is_default_prefetch_batches(v: &usize) -> bool {
    *v == default_prefetch_batches()
}
/// A count that may also be written `auto` (read as 0, which means the same).
fn auto_or_count<'de, D: serde::Deserializer<'de>>(d: D) -> Result<usize, D::Error> {
    struct Visitor;
    impl serde::de::Visitor<'_> for Visitor {
        type Value = usize;
        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("auto or a number")
        }
        fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<usize, E> {
            usize::try_from(v).map_err(|_| E::invalid_value(serde::de::Unexpected::Unsigned(v), &self))
        }
        fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<usize, E> {
            usize::try_from(v).map_err(|_| E::invalid_value(serde::de::Unexpected::Signed(v), &self))
        }
        fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<usize, E> {
            match v {
                "auto" => Ok(0),
                _ => Err(E::invalid_value(serde::de::Unexpected::Str(v), &self)),
            }
        }
    }
    d.deserialize_any(Visitor)
}

/// `data.jpeg_decoder`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum JpegDecoder {
    #[default]
    Auto,
    LibjpegTurbo,
    ZuneJpeg,
}

impl JpegDecoder {
    fn is_auto(&self) -> bool {
        *self == JpegDecoder::Auto
    }

    /// The name the config uses.
    pub fn name(self) -> &'static str {
        match self {
            JpegDecoder::Auto => "auto",
            JpegDecoder::LibjpegTurbo => "libjpeg-turbo",
            JpegDecoder::ZuneJpeg => "zune-jpeg",
        }
    }
}

fn is_false(v: &bool) -> bool {
    !*v
}
fn is_zero(v: &usize) -> bool {
    *v == 0
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OnBadFile {
    Skip,
    Refuse,
}

#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PetOptions {
    /// Trimap border pixels (value 3): their own class (`class`, 3 classes: pet, background,
    /// border) or not scored (`ignore`, 2 classes, border pixels get the task's ignore_index).
    #[serde(default)]
    pub border: PetBorder,
}

impl PetOptions {
    fn is_default(&self) -> bool {
        *self == Self::default()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PetBorder {
    #[default]
    Class,
    Ignore,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FolderOptions {
    /// Fraction of the images that go to the val split when labels.csv has no `split` column;
    /// an image's split depends only on its file name, so adding images moves no other image.
    #[serde(default = "default_val_fraction")]
    pub val_fraction: f64,
}

fn default_val_fraction() -> f64 {
    0.2
}

impl Default for FolderOptions {
    fn default() -> Self {
        Self { val_fraction: default_val_fraction() }
    }
}

impl FolderOptions {
    fn is_default(&self) -> bool {
        *self == Self::default()
    }
}
fn default_batch_size() -> usize {
    64
}
fn default_eval_batch_size() -> usize {
    256
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AugmentConfig {
    /// Pixels of padding for the random crop; 0 disables cropping.
    #[serde(default)]
    pub crop_padding: i64,
    #[serde(default)]
    pub hflip: bool,
    /// Random scale-crop: zoom each sample by a factor drawn uniformly from [1, max_scale] at
    /// a random position (1: off). Images and depth are resampled bilinearly, labels and
    /// normals nearest-neighbour; depth is divided by the zoom.
    #[serde(default = "one_f64", skip_serializing_if = "is_one")]
    pub max_scale: f64,
}

fn is_one(v: &f64) -> bool {
    *v == 1.0
}

impl Default for AugmentConfig {
    fn default() -> Self {
        Self { crop_padding: 0, hflip: false, max_scale: 1.0 }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelConfig {
    /// How the tasks share the network: `hps` (default: one backbone, one head per task) or
    /// another architecture of `mtl-train list`, with the architecture's own options in the
    /// same map. Not written to config.yaml when it is the default `hps`.
    #[serde(default, skip_serializing_if = "ArchitectureConfig::is_default")]
    pub architecture: ArchitectureConfig,
    pub backbone: BackboneConfig,
    /// Head options, keyed by task name; tasks without an entry get the defaults.
    #[serde(default)]
    pub heads: BTreeMap<String, HeadConfig>,
    /// Distributed runs: BatchNorm layers normalize training batches with statistics over
    /// every rank's batch (PyTorch's SyncBatchNorm), so N ranks of batch B train as one
    /// process of batch N·B. Off: each rank uses its own batch's statistics, as DDP does.
    #[serde(default, skip_serializing_if = "is_false")]
    pub sync_batchnorm: bool,
    /// Tasks with their own data (docs/MULTI_INPUT.md): what each data group's images get of
    /// their own in every BatchNorm layer. `shared`: nothing, one set of running statistics
    /// for all groups; `statistics`: their own running statistics (batch statistics while
    /// training, their own running ones in evaluation); `affine`: their own statistics and
    /// their own scale and shift. `auto` (default): `statistics` when tasks have their own
    /// data, which the measurements in docs/MULTI_INPUT.md chose; with one data group every
    /// choice is the same single set. Not written to config.yaml when `auto`.
    #[serde(default, skip_serializing_if = "DomainNorm::is_auto")]
    pub domain_norm: DomainNorm,
    /// Frozen BatchNorm (the usual choice when fine-tuning at small batches): every BatchNorm
    /// layer normalizes with its running statistics while training too, and neither those nor
    /// its scale and shift change. Not written to config.yaml when off.
    #[serde(default, skip_serializing_if = "is_false")]
    pub freeze_bn: bool,
}

/// `model.domain_norm`: how BatchNorm layers treat the data groups of multi-input MTL.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DomainNorm {
    #[default]
    Auto,
    Shared,
    Statistics,
    Affine,
}

impl DomainNorm {
    /// What `auto` stands for when tasks have their own data (docs/MULTI_INPUT.md measured it).
    pub const MULTI_INPUT_DEFAULT: DomainNorm = DomainNorm::Statistics;

    fn is_auto(&self) -> bool {
        *self == DomainNorm::Auto
    }

    /// The choice for a run with `groups` data groups and BatchNorm layers or none: `auto`
    /// resolved, and `shared` (a single set whatever the choice) with one group or no BatchNorm.
    pub fn resolve(self, groups: usize, batch_norm: bool) -> DomainNorm {
        match self {
            _ if groups <= 1 || !batch_norm => DomainNorm::Shared,
            DomainNorm::Auto => Self::MULTI_INPUT_DEFAULT,
            chosen => chosen,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            DomainNorm::Auto => "auto",
            DomainNorm::Shared => "shared",
            DomainNorm::Statistics => "statistics",
            DomainNorm::Affine => "affine",
        }
    }
}

/// `model.architecture`: `{kind: <name>, <option>: <value>, …}`. The options are checked by
/// the architecture itself when the config is resolved, which also records every option's
/// value (defaults included) in the run's config.yaml. `mtl-train list` shows every
/// architecture's options with their defaults; docs/MODEL_ARCHITECTURES.md explains them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(expecting = "a map like {kind: mmoe, experts: 4}")]
pub struct ArchitectureConfig {
    #[serde(default = "default_architecture")]
    pub kind: String,
    /// Every other key of the map: the architecture's options.
    #[serde(flatten)]
    pub options: BTreeMap<String, serde_yaml::Value>,
}

/// Hard parameter sharing, the model before architectures existed.
pub const DEFAULT_ARCHITECTURE: &str = "hps";

fn default_architecture() -> String {
    DEFAULT_ARCHITECTURE.into()
}

impl Default for ArchitectureConfig {
    fn default() -> Self {
        Self { kind: default_architecture(), options: BTreeMap::new() }
    }
}

impl ArchitectureConfig {
    fn is_default(&self) -> bool {
        *self == Self::default()
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BackboneConfig {
    pub kind: BackboneKind,
    /// Channels per stage (conv, resnet: the first stage's width is used as the base width
    /// when one number is given) or hidden sizes (mlp). The torchvision ResNets (`resnet18` …)
    /// take none (torchvision's base width 64) or one base width (tiny test models).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub widths: Vec<i64>,
    /// conv: conv blocks per stage; resnet: basic blocks per stage.
    #[serde(default = "one")]
    pub depth: usize,
    #[serde(default)]
    pub norm: Norm,
    #[serde(default)]
    pub activation: Activation,
    /// Torchvision ResNets: the input's size over the last stage's (32, or 16 and 8 with
    /// torchvision's `replace_stride_with_dilation` on the last one or two stages).
    #[serde(default = "default_output_stride", skip_serializing_if = "is_default_output_stride")]
    pub output_stride: i64,
    /// Torchvision ResNets: weights to start from, `imagenet` (torchvision's IMAGENET1K_V1,
    /// downloaded once into a cache) or the path of a `.pth` or `.safetensors` file in
    /// torchvision's key names (docs/PRETRAINED.md).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pretrained: Option<String>,
}

/// `model.backbone.output_stride`'s default: no dilation.
pub const DEFAULT_OUTPUT_STRIDE: i64 = 32;

fn default_output_stride() -> i64 {
    DEFAULT_OUTPUT_STRIDE
}

fn is_default_output_stride(v: &i64) -> bool {
    *v == DEFAULT_OUTPUT_STRIDE
}

fn one() -> usize {
    1
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BackboneKind {
    Conv,
    Resnet,
    Mlp,
    Resnet18,
    Resnet34,
    Resnet50,
    Resnet101,
}

impl BackboneKind {
    pub const ALL: [Self; 7] =
        [Self::Conv, Self::Resnet, Self::Mlp, Self::Resnet18, Self::Resnet34, Self::Resnet50, Self::Resnet101];

    /// The name `model.backbone.kind` uses.
    pub fn name(self) -> &'static str {
        match self {
            Self::Conv => "conv",
            Self::Resnet => "resnet",
            Self::Mlp => "mlp",
            Self::Resnet18 => "resnet18",
            Self::Resnet34 => "resnet34",
            Self::Resnet50 => "resnet50",
            Self::Resnet101 => "resnet101",
        }
    }

    /// Whether this is one of torchvision's ImageNet ResNets (7×7 stem, max-pool, its layout
    /// and names), which can start from published weights.
    pub fn is_torchvision(self) -> bool {
        matches!(self, Self::Resnet18 | Self::Resnet34 | Self::Resnet50 | Self::Resnet101)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Norm {
    #[default]
    Batch,
    None,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Activation {
    #[default]
    Relu,
    Gelu,
    Silu,
}

#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HeadConfig {
    /// Per-pixel tasks: the decoder, `unet` (default: the U-Net decoder over every stage) or
    /// `aspp` (DeepLabV3's atrous spatial pyramid pooling on the coarsest map, as LibMTL's
    /// NYUv2 setting; docs/PRETRAINED.md).
    #[serde(default, skip_serializing_if = "DenseDecoder::is_unet")]
    pub kind: DenseDecoder,
    /// `aspp`: the dilation rates of its 3×3 branches (default 12, 24, 36: DeepLabV3's at
    /// output stride 8, which LibMTL's NYUv2 example uses).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub rates: Vec<i64>,
    /// Classification: width of an optional hidden layer (0: none).
    #[serde(default)]
    pub hidden: i64,
    /// Classification: dropout before the last layer.
    #[serde(default)]
    pub dropout: f64,
    /// Segmentation: channels of every decoder stage (0: the matching backbone width).
    #[serde(default)]
    pub decoder_width: i64,
    /// Classification: how the coarsest feature map becomes a vector: `avg` (global average
    /// pooling) or `flatten` (every position its own input, as LeNet's fully connected layers;
    /// keeps where things are, which MultiMNIST's left/right digits need).
    #[serde(default, skip_serializing_if = "Pool::is_avg")]
    pub pool: Pool,
}

/// `model.heads.<task>.kind`: how a per-pixel head decodes the backbone's maps.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DenseDecoder {
    #[default]
    Unet,
    Aspp,
}

impl DenseDecoder {
    fn is_unet(&self) -> bool {
        *self == DenseDecoder::Unet
    }
}

/// `aspp`'s rates when none are given.
pub const DEFAULT_ASPP_RATES: [i64; 3] = [12, 24, 36];
/// `aspp`'s channels when `decoder_width` is 0 (DeepLabV3's).
pub const DEFAULT_ASPP_WIDTH: i64 = 256;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Pool {
    #[default]
    Avg,
    Flatten,
}

impl Pool {
    fn is_avg(&self) -> bool {
        *self == Pool::Avg
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TaskConfig {
    pub name: String,
    /// A task kind of `mtl-train list` (src/tasks/mod.rs registers them).
    pub kind: String,
    /// Which of the dataset's targets this task learns.
    pub target: String,
    /// Classification and segmentation: number of classes (folder dataset: 0 infers it from
    /// the data). Regression and normals have none (0).
    #[serde(default)]
    pub classes: i64,
    #[serde(default = "one_f64")]
    pub weight: f64,
    #[serde(default)]
    pub label_smoothing: f64,
    /// Segmentation: target value that contributes no loss and no metric.
    #[serde(default = "default_ignore_index")]
    pub ignore_index: i64,
    /// This task's own data (multi-input MTL): the keys of the top-level `data` section, each
    /// inherited from it unless given here. Tasks without it share the top-level data and its
    /// batches; see [`Config::task_data`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data: Option<serde_yaml::Mapping>,
    /// ESMM (Ma et al., SIGIR 2018): the name of the binary task this one is conditional on
    /// (`cvr` given `ctr`). Its probability times the parent's is trained on every row against
    /// (its label AND the parent's); its metrics are scored on the rows where the parent's
    /// label is 1 (docs/TABLES.md).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub given: Option<String>,
}

/// `train.epoch_by`'s default.
pub const EPOCH_BY_LARGEST: &str = "largest";

fn default_epoch_by() -> String {
    EPOCH_BY_LARGEST.into()
}

fn is_default_epoch_by(s: &String) -> bool {
    s == EPOCH_BY_LARGEST
}

fn one_f64() -> f64 {
    1.0
}
fn default_ignore_index() -> i64 {
    255
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BalanceConfig {
    #[serde(default = "default_balance_method")]
    pub method: String,
    /// Gradient methods: take per-task gradients w.r.t. the shared parameters or the shared
    /// representation (one backbone backward).
    #[serde(default)]
    pub on: GradientOn,
    /// Method-specific options, checked by the method itself.
    #[serde(default)]
    pub options: BTreeMap<String, serde_yaml::Value>,
}

fn default_balance_method() -> String {
    "static".into()
}

impl Default for BalanceConfig {
    fn default() -> Self {
        Self { method: default_balance_method(), on: GradientOn::default(), options: BTreeMap::new() }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum GradientOn {
    #[default]
    Params,
    Representation,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OptimConfig {
    #[serde(default)]
    pub kind: OptimKind,
    #[serde(default = "default_lr")]
    pub lr: f64,
    #[serde(default)]
    pub weight_decay: f64,
    /// AdamW.
    #[serde(default = "default_betas")]
    pub betas: (f64, f64),
    #[serde(default = "default_eps")]
    pub eps: f64,
    /// SGD.
    #[serde(default)]
    pub momentum: f64,
    #[serde(default)]
    pub nesterov: bool,
    /// Clip the global gradient norm to this value (0: no clipping).
    #[serde(default)]
    pub grad_clip: f64,
    /// Per-group settings by variable name (docs/FINETUNING.md): each variable takes the first
    /// group whose `match` pattern fits its name; variables no group matches train with the
    /// settings above.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub groups: Vec<ParamGroup>,
}

/// One entry of `optim.groups`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ParamGroup {
    /// A glob over the run's variable names (the checkpoint's keys): `*` any run of characters,
    /// dots included; `?` one character.
    #[serde(rename = "match")]
    pub pattern: String,
    /// The variables do not train: no gradient, no update, no optimizer state change (and a
    /// BatchNorm layer whose scale is frozen keeps its running statistics too).
    #[serde(default, skip_serializing_if = "is_false")]
    pub freeze: bool,
    /// The group's learning rate as a multiple of the scheduled one.
    #[serde(default = "one_f64", skip_serializing_if = "is_one")]
    pub lr_scale: f64,
    /// The group's weight decay (unset: `optim.weight_decay`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub weight_decay: Option<f64>,
}

fn default_lr() -> f64 {
    1e-3
}
fn default_betas() -> (f64, f64) {
    (0.9, 0.999)
}
fn default_eps() -> f64 {
    1e-8
}

impl Default for OptimConfig {
    fn default() -> Self {
        Self {
            kind: OptimKind::default(),
            lr: default_lr(),
            weight_decay: 0.0,
            betas: default_betas(),
            eps: default_eps(),
            momentum: 0.0,
            nesterov: false,
            grad_clip: 0.0,
            groups: Vec::new(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OptimKind {
    #[default]
    Adamw,
    Sgd,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScheduleConfig {
    #[serde(default)]
    pub kind: ScheduleKind,
    /// Linear warmup from 0 over this many steps, before the schedule proper.
    #[serde(default)]
    pub warmup_steps: u64,
    /// Final LR as a fraction of the peak (cosine, onecycle).
    #[serde(default)]
    pub min_lr_ratio: f64,
    /// step: multiply the LR by `gamma` every `step_size` epochs.
    #[serde(default = "default_step_size")]
    pub step_size: u64,
    #[serde(default = "default_gamma")]
    pub gamma: f64,
    /// onecycle: fraction of the run spent rising to the peak.
    #[serde(default = "default_pct_start")]
    pub pct_start: f64,
}

fn default_step_size() -> u64 {
    30
}
fn default_gamma() -> f64 {
    0.1
}
fn default_pct_start() -> f64 {
    0.3
}

impl Default for ScheduleConfig {
    fn default() -> Self {
        Self {
            kind: ScheduleKind::default(),
            warmup_steps: 0,
            min_lr_ratio: 0.0,
            step_size: default_step_size(),
            gamma: default_gamma(),
            pct_start: default_pct_start(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ScheduleKind {
    #[default]
    Constant,
    Cosine,
    Step,
    Onecycle,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrainConfig {
    #[serde(default = "default_epochs")]
    pub epochs: u64,
    /// Evaluate on the val split every this many epochs (and always after the last).
    #[serde(default = "one_u64")]
    pub eval_every: u64,
    /// Log training losses every this many steps.
    #[serde(default = "default_log_every")]
    pub log_every: u64,
    /// Stop after this many steps in total (0: run all epochs). Used by tests and resume.
    #[serde(default)]
    pub max_steps: u64,
    /// Single-task baselines (written by `mtl-train baselines`): when set, every evaluation
    /// also reports Δm against them. Relative paths are relative to the working directory.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub baselines: Option<String>,
    /// What a non-finite loss or gradient does: `stop` (the run ends with exit code 3 and the
    /// last finite checkpoint as LATEST; costs nothing per step) or `skip_step` (the step's
    /// update is dropped and counted, as PyTorch's AMP scaler does; reads one flag per step,
    /// which on CUDA waits for the step to finish).
    #[serde(default)]
    pub on_nonfinite: OnNonFinite,
    /// With `skip_step`: stop (exit code 3) after this many skipped steps in a row.
    #[serde(default = "default_max_consecutive_skips")]
    pub max_consecutive_skips: u64,
    /// After SIGTERM or Ctrl-C the run finishes its step and writes a checkpoint; if that takes
    /// longer than this many seconds it exits without one (LATEST stays the previous
    /// checkpoint). Set it a little below your scheduler's grace period; 0: no limit.
    #[serde(default)]
    pub stop_grace_seconds: f64,
    /// Distributed runs: how long a rank waits for the others (to join, in a collective) and
    /// how long a rank may stay silent (no heartbeat) before the run ends with a line naming it.
    #[serde(default = "default_dist_timeout", skip_serializing_if = "is_default_dist_timeout")]
    pub dist_timeout_seconds: f64,
    /// With tasks that have their own data: which data decides the epoch length, `largest`
    /// (the one with the most batches) or a task's name (its data's batches). Smaller data
    /// wraps around, each pass in its own seeded order.
    #[serde(default = "default_epoch_by", skip_serializing_if = "is_default_epoch_by")]
    pub epoch_by: String,
    /// Learning in stages (docs/FINETUNING.md): consecutive spans of epochs, each training
    /// some of the tasks (the others get no loss and no gradient) and optionally its own
    /// `optim.groups`. Their epochs add up to `train.epochs` (which they set when it is not
    /// written). Empty: one stage, every task, all epochs.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub stages: Vec<StageConfig>,
}

/// One entry of `train.stages`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StageConfig {
    pub epochs: u64,
    /// The tasks that train in this stage: `all` or a list of task names.
    #[serde(default)]
    pub tasks: StageTasks,
    /// Replaces `optim.groups` for this stage (unset: `optim.groups`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub groups: Option<Vec<ParamGroup>>,
}

/// `train.stages[].tasks`: `all`, or the names of the tasks that train.
#[derive(Debug, Clone, PartialEq, Default)]
pub enum StageTasks {
    #[default]
    All,
    Some(Vec<String>),
}

impl StageTasks {
    /// Whether the task named `name` trains in the stage.
    pub fn includes(&self, name: &str) -> bool {
        match self {
            StageTasks::All => true,
            StageTasks::Some(names) => names.iter().any(|n| n == name),
        }
    }
}

impl Serialize for StageTasks {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            StageTasks::All => s.serialize_str("all"),
            StageTasks::Some(names) => names.serialize(s),
        }
    }
}

impl<'de> Deserialize<'de> for StageTasks {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged, expecting = "all or a list of task names")]
        enum Raw {
            Word(String),
            Names(Vec<String>),
        }
        match Raw::deserialize(d)? {
            Raw::Word(w) if w == "all" => Ok(StageTasks::All),
            Raw::Word(w) => Err(serde::de::Error::custom(format!("'{w}' must be all or a list of task names"))),
            Raw::Names(names) => Ok(StageTasks::Some(names)),
        }
    }
}

fn default_dist_timeout() -> f64 {
    300.0
}

fn is_default_dist_timeout(v: &f64) -> bool {
    *v == default_dist_timeout()
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OnNonFinite {
    #[default]
    Stop,
    SkipStep,
}

fn default_max_consecutive_skips() -> u64 {
    10
}

fn default_epochs() -> u64 {
    10
}
fn one_u64() -> u64 {
    1
}
fn default_log_every() -> u64 {
    50
}

impl Default for TrainConfig {
    fn default() -> Self {
        Self {
            epochs: default_epochs(),
            eval_every: 1,
            log_every: default_log_every(),
            max_steps: 0,
            baselines: None,
            on_nonfinite: OnNonFinite::default(),
            max_consecutive_skips: default_max_consecutive_skips(),
            stop_grace_seconds: 0.0,
            dist_timeout_seconds: default_dist_timeout(),
            epoch_by: default_epoch_by(),
            stages: Vec::new(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CheckpointConfig {
    /// Write a checkpoint every this many epochs (and always at the end).
    #[serde(default = "one_u64")]
    pub every: u64,
    /// Also write one every this many steps (0: off).
    #[serde(default)]
    pub every_steps: u64,
    /// Keep this many newest checkpoints (BEST is always kept).
    #[serde(default = "default_keep_last")]
    pub keep_last: usize,
    /// `<task>.<metric>` or `loss` (sum of val losses); empty: the first task's main metric.
    #[serde(default)]
    pub monitor: String,
    #[serde(default)]
    pub mode: MonitorMode,
}

fn default_keep_last() -> usize {
    3
}

impl Default for CheckpointConfig {
    fn default() -> Self {
        Self {
            every: 1,
            every_steps: 0,
            keep_last: default_keep_last(),
            monitor: String::new(),
            mode: MonitorMode::default(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MonitorMode {
    #[default]
    Max,
    Min,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReportConfig {
    /// Write TensorBoard event files into the run directory (`tensorboard --logdir runs`):
    /// every metrics.jsonl value, val images with predicted and true maps, the config, hparams.
    #[serde(default = "yes")]
    pub tensorboard: bool,
    /// How many val images TensorBoard shows at each evaluation, with every per-pixel task's
    /// prediction and target (0: none).
    #[serde(default = "default_preview_images")]
    pub preview_images: usize,
    /// Measure how the tasks help each other while training (docs/TRANSFER.md): TAG's
    /// lookahead affinity and the gradient cosine, every `every` steps. Training is unchanged.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub affinity: Option<AffinityConfig>,
}

/// `report.affinity`: when inter-task affinity is measured.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AffinityConfig {
    /// Measure at every `every`-th step (steps 0, N, 2N, ...), on that step's own batch.
    pub every: u64,
}

fn yes() -> bool {
    true
}

fn default_preview_images() -> usize {
    4
}

impl Default for ReportConfig {
    fn default() -> Self {
        Self { tensorboard: true, preview_images: default_preview_images(), affinity: None }
    }
}

impl ReportConfig {
    /// Left out of config.yaml at its defaults, so existing runs' files do not change.
    pub fn is_default(&self) -> bool {
        *self == Self::default()
    }
}

#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SpeedConfig {
    /// Run the activations of training forwards in channels-last (NHWC) memory: `auto` (on),
    /// `true` or `false`. Evaluation and inference always run NCHW.
    #[serde(default)]
    pub channels_last: Toggle,
    /// Update CPU parameters in one fused pass instead of tensor ops: `auto` (where the buffers
    /// are in CPU memory), `true` (the same, refused on CUDA) or `false`.
    #[serde(default)]
    pub fused_optimizer: Toggle,
    /// Flush subnormal numbers to zero while the fused CPU update runs (x86's flush-to-zero and
    /// denormals-are-zero bits; `torch.set_flush_denormal(True)` sets them for every op). Off
    /// by default: it changes results below 1.2e-38. On, a long run whose embedding rows are
    /// rarely touched keeps its speed once their Adam moments decay that far.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub flush_denormal: bool,
}

/// A speed switch: `auto` picks what measured fastest; `true` / `false` force it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Toggle {
    #[default]
    Auto,
    On,
    Off,
}

impl Toggle {
    fn is_auto(&self) -> bool {
        *self == Toggle::Auto
    }

    /// Whether the feature is used: `auto` means on (what measured fastest for both switches).
    pub fn is_on(self) -> bool {
        self != Toggle::Off
    }
}

impl Serialize for Toggle {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Toggle::Auto => s.serialize_str("auto"),
            Toggle::On => s.serialize_bool(true),
            Toggle::Off => s.serialize_bool(false),
        }
    }
}

impl<'de> Deserialize<'de> for Toggle {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl serde::de::Visitor<'_> for Visitor {
            type Value = Toggle;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("auto, true or false")
            }
            fn visit_bool<E: serde::de::Error>(self, v: bool) -> Result<Toggle, E> {
                Ok(if v { Toggle::On } else { Toggle::Off })
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Toggle, E> {
                match v {
                    "auto" => Ok(Toggle::Auto),
                    _ => Err(E::invalid_value(serde::de::Unexpected::Str(v), &self)),
                }
            }
        }
        d.deserialize_any(Visitor)
    }
}
