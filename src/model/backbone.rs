//! Shared backbones. Conv backbones return one feature map per stage, finest first, at
//! strides 1, 2, 4, …; the MLP returns its last hidden vector.
use super::layers::{activate, to_channels_last, BatchNorm2d, Compute, Conv2d, ConvBnAct, Linear};
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

#[derive(Debug)]
pub enum Backbone {
    Conv(ConvNet),
    Resnet(ResNet),
    Mlp(Mlp),
}

impl Backbone {
    /// Builds under `p` (normally `root / "backbone"`). `in_channels` is the image's channel
    /// count; `in_features` the flat input size (MLP only).
    pub fn new(p: &Path, cfg: &BackboneConfig, in_channels: i64, in_features: i64) -> Self {
        let bn = cfg.norm == Norm::Batch;
        match cfg.kind {
            BackboneKind::Conv => {
                Backbone::Conv(ConvNet::new(p, in_channels, &cfg.widths, cfg.depth, bn, cfg.activation))
            }
            BackboneKind::Resnet => {
                Backbone::Resnet(ResNet::new(p, in_channels, &resnet_widths(&cfg.widths), cfg.depth, cfg.activation))
            }
            BackboneKind::Mlp => Backbone::Mlp(Mlp::new(p, in_features, &cfg.widths, cfg.activation)),
        }
    }

    pub fn info(&self) -> FeatureInfo {
        match self {
            Backbone::Conv(n) => FeatureInfo { channels: n.widths.clone(), spatial: true },
            Backbone::Resnet(n) => FeatureInfo { channels: n.widths.clone(), spatial: true },
            Backbone::Mlp(n) => FeatureInfo { channels: vec![n.width], spatial: false },
        }
    }

    pub fn forward(&self, x: &Tensor, train: bool, c: Compute) -> Vec<Tensor> {
        match self {
            Backbone::Conv(n) => n.forward(x, train, c),
            Backbone::Resnet(n) => n.forward(x, train, c),
            Backbone::Mlp(n) => vec![n.forward(x, c)],
        }
    }
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

/// The number of feature maps (stages) the backbone returns.
pub fn stages(cfg: &BackboneConfig) -> usize {
    match cfg.kind {
        BackboneKind::Conv => cfg.widths.len(),
        BackboneKind::Resnet => resnet_widths(&cfg.widths).len(),
        BackboneKind::Mlp => 1,
    }
}

/// What the image sides must be divisible by: each stage after the first halves the
/// resolution, and the decoder needs exact halvings.
pub fn size_multiple(cfg: &BackboneConfig) -> i64 {
    match cfg.kind {
        BackboneKind::Mlp => 1,
        _ => 1i64 << (stages(cfg).saturating_sub(1)),
    }
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
#[derive(Debug)]
pub struct ConvNet {
    stages: Vec<Vec<ConvBnAct>>,
    widths: Vec<i64>,
}

impl ConvNet {
    fn new(p: &Path, c_in: i64, widths: &[i64], depth: usize, bn: bool, act: Activation) -> Self {
        let mut c = c_in;
        let stages = widths
            .iter()
            .enumerate()
            .map(|(i, &w)| {
                let sp = p / "stages" / i;
                (0..depth)
                    .map(|j| {
                        let block = ConvBnAct::new(&(&sp / j), c, w, bn, act);
                        c = w;
                        block
                    })
                    .collect()
            })
            .collect();
        Self { stages, widths: widths.to_vec() }
    }

    fn forward(&self, x: &Tensor, train: bool, c: Compute) -> Vec<Tensor> {
        let mut h = input(x, train, c);
        let mut maps = Vec::with_capacity(self.stages.len());
        for (i, stage) in self.stages.iter().enumerate() {
            if i > 0 {
                h = h.max_pool2d([2, 2], [2, 2], [0, 0], [1, 1], false);
            }
            for block in stage {
                h = block.forward(&h, train, c);
            }
            maps.push(h.shallow_clone());
        }
        maps
    }
}

/// ResNet for small images (CIFAR style): a 3×3 stem at stride 1, then stages of basic
/// blocks at strides 1, 2, 4, 8. Names follow torchvision's block layout:
/// `stem.conv`, `stem.bn`, `layers.{i}.{j}.conv1|bn1|conv2|bn2`, `layers.{i}.{j}.shortcut.conv|bn`.
#[derive(Debug)]
pub struct ResNet {
    stem_conv: Conv2d,
    stem_bn: BatchNorm2d,
    layers: Vec<Vec<BasicBlock>>,
    widths: Vec<i64>,
    act: Activation,
}

#[derive(Debug)]
struct BasicBlock {
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

    fn forward(&self, x: &Tensor, train: bool, c: Compute, act: Activation) -> Tensor {
        let h = activate(&self.bn1.forward(&self.conv1.forward(x, c), train), act);
        let h = self.bn2.forward(&self.conv2.forward(&h, c), train);
        let skip = match &self.shortcut {
            Some((conv, bn)) => bn.forward(&conv.forward(x, c), train),
            None => x.shallow_clone(),
        };
        activate(&(h + skip), act)
    }
}

impl ResNet {
    fn new(p: &Path, c_in: i64, widths: &[i64], depth: usize, act: Activation) -> Self {
        let stem = p / "stem";
        let mut c = widths[0];
        let layers = widths
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
        Self {
            stem_conv: Conv2d::new(&stem / "conv", c_in, widths[0], 3, 1, false),
            stem_bn: BatchNorm2d::new(&stem / "bn", widths[0]),
            layers,
            widths: widths.to_vec(),
            act,
        }
    }

    fn forward(&self, x: &Tensor, train: bool, c: Compute) -> Vec<Tensor> {
        let mut h = activate(&self.stem_bn.forward(&self.stem_conv.forward(&input(x, train, c), c), train), self.act);
        let mut maps = Vec::with_capacity(self.layers.len());
        for layer in &self.layers {
            for block in layer {
                h = block.forward(&h, train, c, self.act);
            }
            maps.push(h.shallow_clone());
        }
        maps
    }
}

/// Fully connected layers on the flattened input: `layers.{i}.weight|bias`, activation after
/// each (784 → 64 with two 10-way heads is the classic two-task example).
#[derive(Debug)]
pub struct Mlp {
    layers: Vec<Linear>,
    width: i64,
    act: Activation,
}

impl Mlp {
    fn new(p: &Path, in_features: i64, widths: &[i64], act: Activation) -> Self {
        let mut d = in_features;
        let layers = widths
            .iter()
            .enumerate()
            .map(|(i, &w)| {
                let l = Linear::new(p / "layers" / i, d, w);
                d = w;
                l
            })
            .collect();
        Self { layers, width: d, act }
    }

    fn forward(&self, x: &Tensor, c: Compute) -> Tensor {
        let mut h = c.cast(&x.flatten(1, -1));
        for l in &self.layers {
            h = activate(&l.forward(&h, c), self.act);
        }
        h
    }
}
