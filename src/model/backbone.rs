//! Shared backbones, built as a sequence of stages so that architectures can work between
//! them (cross-stitch units, attention, experts per level). Conv backbones return one feature
//! map per stage, finest first, at strides 1, 2, 4, …; the MLP returns its last hidden vector.
use super::layers::{activate, to_channels_last, BatchNorm2d, Compute, Conv2d, ConvBnAct, Linear};
use super::torchvision;
use crate::config::{Activation, BackboneConfig, BackboneKind, Norm};
use tch::nn::Path;
use tch::Tensor;

/// What the heads need to know about the backbone's outputs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FeatureInfo {
    /// Channels (or vector width) of each output, finest first.
    pub channels: Vec<i64>,
    /// True when outputs are `[N, C, H, W]` maps; false for `[N, D]` vectors.
    pub spatial: bool,
}

/// One backbone: its stages in order, each reading the previous one's output (the first one
/// the image batch).
#[derive(Debug)]
pub struct Backbone {
    stages: Vec<Stage>,
    /// Output width of every stage.
    widths: Vec<i64>,
    spatial: bool,
}

/// A stage. Variable names are those of the backbone as a whole (`stages.{i}.{j}.…` for conv,
/// `stem.…` / `layers.{i}.{j}.…` for resnet, `stem.…` / `layer{i+1}.{j}.…` for the torchvision
/// ResNets, `layers.{i}.…` for mlp), so that a backbone built stage by stage names its tensors
/// as PyTorch's module tree does.
#[derive(Debug)]
enum Stage {
    /// `depth` conv–BN–activation blocks, after a 2×2 max-pool in every stage but the first.
    Conv { pool: bool, blocks: Vec<ConvBnAct> },
    /// Basic blocks; the first stage starts with the 3×3 stem.
    Res { stem: Option<(Conv2d, BatchNorm2d)>, blocks: Vec<BasicBlock>, act: Activation },
    /// A torchvision ResNet's layer; the first one starts with the 7×7 stem and max-pool.
    Torchvision { stem: Option<torchvision::Stem>, blocks: Vec<torchvision::Block>, act: Activation },
    /// A linear layer and its activation; the first one flattens the image.
    Dense { flatten: bool, layer: Linear, act: Activation },
}

impl Backbone {
    /// Builds under `p` (normally `root / "backbone"`). `in_channels` is the image's channel
    /// count; `in_features` the flat input size (MLP only).
    pub fn new(p: &Path, cfg: &BackboneConfig, in_channels: i64, in_features: i64) -> Self {
        let bn = cfg.norm == Norm::Batch;
        let act = cfg.activation;
        let widths = stage_widths(cfg);
        let stages = match cfg.kind {
            BackboneKind::Conv => conv_stages(p, in_channels, &widths, cfg.depth, bn, act),
            BackboneKind::Resnet => resnet_stages(p, in_channels, &widths, cfg.depth, act),
            BackboneKind::Mlp => mlp_stages(p, in_features, &widths, act),
            BackboneKind::Resnet18 | BackboneKind::Resnet34 | BackboneKind::Resnet50 | BackboneKind::Resnet101 => {
                let (stem, layers) = torchvision::build(p, in_channels, cfg);
                let mut stem = Some(stem);
                layers.into_iter().map(|blocks| Stage::Torchvision { stem: stem.take(), blocks, act }).collect()
            }
        };
        Self { stages, widths, spatial: cfg.kind != BackboneKind::Mlp }
    }

    /// The outputs the heads read: see [`feature_info`].
    pub fn info(&self) -> FeatureInfo {
        let channels = if self.spatial { self.widths.clone() } else { vec![*self.widths.last().expect("a stage")] };
        FeatureInfo { channels, spatial: self.spatial }
    }

    pub fn stage_count(&self) -> usize {
        self.stages.len()
    }

    /// Runs stage `i` on `h`: the image batch for stage 0, stage `i − 1`'s output after.
    pub fn stage(&self, i: usize, h: &Tensor, train: bool, c: Compute) -> Tensor {
        self.stage_parts(i, h, train, c).1
    }

    /// [`Backbone::stage`], also returning the output of the stage's first block (conv–BN–act
    /// or basic block; the layer itself for the MLP): what MTAN's attention reads.
    pub fn stage_parts(&self, i: usize, h: &Tensor, train: bool, c: Compute) -> (Tensor, Tensor) {
        match &self.stages[i] {
            Stage::Conv { pool, blocks } => {
                let mut h = if i == 0 { input(h, train, c) } else { h.shallow_clone() };
                if *pool {
                    h = h.max_pool2d([2, 2], [2, 2], [0, 0], [1, 1], false);
                }
                run_blocks(blocks, h, |b, h| b.forward(h, train, c))
            }
            Stage::Res { stem, blocks, act } => {
                let h = match stem {
                    Some((conv, bn)) => activate(bn.forward(&conv.forward(&input(h, train, c), c), train, c), *act),
                    None => h.shallow_clone(),
                };
                run_blocks(blocks, h, |b, h| b.forward(h, train, c, *act))
            }
            Stage::Torchvision { stem, blocks, act } => {
                let h = match stem {
                    Some(stem) => stem.forward(&input(h, train, c), train, c, *act),
                    None => h.shallow_clone(),
                };
                run_blocks(blocks, h, |b, h| b.forward(h, train, c, *act))
            }
            Stage::Dense { flatten, layer, act } => {
                let h = if *flatten { c.cast(&h.flatten(1, -1)) } else { h.shallow_clone() };
                let out = activate(layer.forward(&h, c), *act);
                (out.shallow_clone(), out)
            }
        }
    }

    /// The output of every stage, in order.
    pub fn stage_outputs(&self, x: &Tensor, train: bool, c: Compute) -> Vec<Tensor> {
        let mut outputs: Vec<Tensor> = Vec::with_capacity(self.stages.len());
        for i in 0..self.stages.len() {
            let h = self.stage(i, outputs.last().unwrap_or(x), train, c);
            outputs.push(h);
        }
        outputs
    }

    /// The features the heads read, from all stage outputs (see [`Backbone::info`]).
    pub fn features_of(&self, mut stage_outputs: Vec<Tensor>) -> Vec<Tensor> {
        if self.spatial {
            stage_outputs
        } else {
            vec![stage_outputs.pop().expect("a stage")]
        }
    }

    pub fn forward(&self, x: &Tensor, train: bool, c: Compute) -> Vec<Tensor> {
        self.features_of(self.stage_outputs(x, train, c))
    }
}

/// Runs `blocks` in order from `h`: (the first block's output, the last one's).
fn run_blocks<B>(blocks: &[B], mut h: Tensor, forward: impl Fn(&B, &Tensor) -> Tensor) -> (Tensor, Tensor) {
    let mut first = None;
    for block in blocks {
        h = forward(block, &h);
        first.get_or_insert_with(|| h.shallow_clone());
    }
    (first.unwrap_or_else(|| h.shallow_clone()), h)
}

/// The image batch in the compute dtype, channels-last in training forwards when the run
/// asks for it ([`Compute::channels_last`]); every later op keeps the layout it is given.
fn input(x: &Tensor, train: bool, c: Compute) -> Tensor {
    let x = c.cast(x);
    if c.channels_last(train) {
        to_channels_last(&x)
    } else {
        x
    }
}

/// The outputs the heads read: every stage's map for conv and resnet (finest first), the
/// last hidden vector for the MLP.
pub fn feature_info(cfg: &BackboneConfig) -> FeatureInfo {
    let widths = stage_widths(cfg);
    match is_spatial(cfg) {
        true => FeatureInfo { channels: widths, spatial: true },
        false => FeatureInfo { channels: vec![*widths.last().expect("a stage")], spatial: false },
    }
}

/// Output width of every stage: conv and mlp `widths`, resnet [`resnet_widths`], the
/// torchvision ResNets their layers' (64-128-256-512, ×4 with bottleneck blocks).
pub fn stage_widths(cfg: &BackboneConfig) -> Vec<i64> {
    match cfg.kind {
        BackboneKind::Resnet => resnet_widths(&cfg.widths),
        k if k.is_torchvision() => torchvision::widths(cfg),
        _ => cfg.widths.clone(),
    }
}

/// How much smaller than the image each stage's map is (1, 2, 4, … for conv and resnet; 4, 8,
/// 16, 32 for the torchvision ResNets, held at `output_stride`); 1 for the MLP's vectors.
pub fn stage_strides(cfg: &BackboneConfig) -> Vec<i64> {
    match cfg.kind {
        BackboneKind::Mlp => vec![1; cfg.widths.len()],
        k if k.is_torchvision() => torchvision::strides(cfg),
        _ => (0..stages(cfg)).map(|i| 1i64 << i).collect(),
    }
}

/// The number of stages (for conv and resnet: of feature maps the backbone returns).
pub fn stages(cfg: &BackboneConfig) -> usize {
    stage_widths(cfg).len()
}

/// The paths (relative to the backbone's own path) that hold the variables of stage `i`.
pub fn stage_prefixes(cfg: &BackboneConfig, i: usize) -> Vec<String> {
    match cfg.kind {
        BackboneKind::Conv => vec![format!("stages.{i}")],
        BackboneKind::Resnet if i == 0 => vec!["stem".into(), "layers.0".into()],
        BackboneKind::Resnet | BackboneKind::Mlp => vec![format!("layers.{i}")],
        BackboneKind::Resnet18 | BackboneKind::Resnet34 | BackboneKind::Resnet50 | BackboneKind::Resnet101 => {
            torchvision::stage_prefixes(i)
        }
    }
}

/// What the image sides must be divisible by: the coarsest stage's stride, so that every
/// stage's map is the image's size over its stride exactly (the decoder needs exact halvings).
pub fn size_multiple(cfg: &BackboneConfig) -> i64 {
    stage_strides(cfg).last().copied().unwrap_or(1)
}

/// Checks images of `h`×`w` against the backbone: `"data.image_size: …"` when a side does not
/// halve exactly at every stage.
pub fn check_input_size(cfg: &BackboneConfig, h: i64, w: i64) -> Result<(), String> {
    let factor = size_multiple(cfg);
    if h % factor == 0 && w % factor == 0 {
        return Ok(());
    }
    let stages = stages(cfg);
    let size = if h == w { h.to_string() } else { format!("{h}×{w} (height × width)") };
    Err(format!("data.image_size: {size} must be divisible by {factor} for a backbone with {stages} stages"))
}

/// The backbone's own rules for its settings: `"<key>: <message>"`.
pub fn check(cfg: &BackboneConfig) -> Result<(), String> {
    match cfg.kind {
        BackboneKind::Mlp if cfg.norm != Norm::None => {
            Err("model.backbone.norm: the mlp backbone has no norm layers; set none".into())
        }
        BackboneKind::Resnet if cfg.norm != Norm::Batch => {
            Err("model.backbone.norm: resnet blocks need batch norm".into())
        }
        k if k.is_torchvision() && cfg.norm != Norm::Batch => {
            Err(format!("model.backbone.norm: {} blocks need batch norm", k.name()))
        }
        k if k.is_torchvision() => torchvision::check(cfg),
        _ => Ok(()),
    }
}

/// Whether the backbone returns spatial maps (which dense heads need) rather than vectors.
pub fn is_spatial(cfg: &BackboneConfig) -> bool {
    cfg.kind != BackboneKind::Mlp
}

/// One number is a base width w meaning [w, 2w, 4w, 8w] (ResNet-18's 64 gives the classic
/// 64-128-256-512); a list is taken as it is.
pub fn resnet_widths(widths: &[i64]) -> Vec<i64> {
    match widths {
        [w] => vec![*w, 2 * w, 4 * w, 8 * w],
        ws => ws.to_vec(),
    }
}

/// Stages of `depth` conv–BN–activation blocks, each stage after the first starting with a
/// 2×2 max-pool. Widths [32, 64] is the classic Keras example conv32–pool–conv64–pool (the
/// last pool being the heads' global pooling). Names: `stages.{i}.{j}.conv.weight`, ….
fn conv_stages(p: &Path, c_in: i64, widths: &[i64], depth: usize, bn: bool, act: Activation) -> Vec<Stage> {
    let mut c = c_in;
    widths
        .iter()
        .enumerate()
        .map(|(i, &w)| {
            let sp = p / "stages" / i;
            let blocks = (0..depth)
                .map(|j| {
                    let block = ConvBnAct::new(&(&sp / j), c, w, bn, act);
                    c = w;
                    block
                })
                .collect();
            Stage::Conv { pool: i > 0, blocks }
        })
        .collect()
}

/// ResNet for small images (CIFAR style): a 3×3 stem at stride 1, then stages of basic
/// blocks at strides 1, 2, 4, 8. Names follow torchvision's block layout:
/// `stem.conv`, `stem.bn`, `layers.{i}.{j}.conv1|bn1|conv2|bn2`, `layers.{i}.{j}.shortcut.conv|bn`.
fn resnet_stages(p: &Path, c_in: i64, widths: &[i64], depth: usize, act: Activation) -> Vec<Stage> {
    let mut c = widths[0];
    let layers: Vec<Vec<BasicBlock>> = widths
        .iter()
        .enumerate()
        .map(|(i, &w)| {
            (0..depth)
                .map(|j| {
                    let stride = if i > 0 && j == 0 { 2 } else { 1 };
                    let block = BasicBlock::new(&(p / "layers" / i / j), c, w, stride);
                    c = w;
                    block
                })
                .collect()
        })
        .collect();
    // Created after the blocks: the order of creation is the order of the seeded initial values.
    let sp = p / "stem";
    let mut stem =
        Some((Conv2d::new(&sp / "conv", c_in, widths[0], 3, 1, false), BatchNorm2d::new(&sp / "bn", widths[0])));
    layers.into_iter().map(|blocks| Stage::Res { stem: stem.take(), blocks, act }).collect()
}

#[derive(Debug)]
pub struct BasicBlock {
    conv1: Conv2d,
    bn1: BatchNorm2d,
    conv2: Conv2d,
    bn2: BatchNorm2d,
    shortcut: Option<(Conv2d, BatchNorm2d)>,
}

impl BasicBlock {
    fn new(p: &Path, c_in: i64, c_out: i64, stride: i64) -> Self {
        let shortcut = (stride != 1 || c_in != c_out).then(|| {
            let sp = p / "shortcut";
            (Conv2d::new(&sp / "conv", c_in, c_out, 1, stride, false), BatchNorm2d::new(&sp / "bn", c_out))
        });
        Self {
            conv1: Conv2d::new(p / "conv1", c_in, c_out, 3, stride, false),
            bn1: BatchNorm2d::new(p / "bn1", c_out),
            conv2: Conv2d::new(p / "conv2", c_out, c_out, 3, 1, false),
            bn2: BatchNorm2d::new(p / "bn2", c_out),
            shortcut,
        }
    }

    /// torchvision's basic block (its init, no dilation): `conv1` (3×3, `stride`), `bn1`,
    /// `conv2`, `bn2`, and the given shortcut.
    pub fn torchvision(p: &Path, c_in: i64, c_out: i64, stride: i64, shortcut: Option<(Conv2d, BatchNorm2d)>) -> Self {
        Self {
            conv1: Conv2d::new(p / "conv1", c_in, c_out, 3, stride, false).kaiming_fan_out(),
            bn1: BatchNorm2d::new(p / "bn1", c_out),
            conv2: Conv2d::new(p / "conv2", c_out, c_out, 3, 1, false).kaiming_fan_out(),
            bn2: BatchNorm2d::new(p / "bn2", c_out),
            shortcut,
        }
    }

    pub fn forward(&self, x: &Tensor, train: bool, c: Compute, act: Activation) -> Tensor {
        let h = activate(self.bn1.forward(&self.conv1.forward(x, c), train, c), act);
        let h = self.bn2.forward(&self.conv2.forward(&h, c), train, c);
        let skip = match &self.shortcut {
            Some((conv, bn)) => bn.forward(&conv.forward(x, c), train, c),
            None => x.shallow_clone(),
        };
        activate(h + skip, act)
    }
}

/// Fully connected layers on the flattened input: `layers.{i}.weight|bias`, activation after
/// each (784 → 64 with two 10-way heads is the classic two-task example).
fn mlp_stages(p: &Path, in_features: i64, widths: &[i64], act: Activation) -> Vec<Stage> {
    let mut d = in_features;
    widths
        .iter()
        .enumerate()
        .map(|(i, &w)| {
            let layer = Linear::new(p / "layers" / i, d, w);
            d = w;
            Stage::Dense { flatten: i == 0, layer, act }
        })
        .collect()
}
