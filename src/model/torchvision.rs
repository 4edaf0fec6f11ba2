//! torchvision's ImageNet ResNets (`resnet18`, `resnet34`, `resnet50`, `resnet101`): the 7×7
//! stem at stride 2 and a 3×3 max-pool, then four layers of basic (18, 34) or bottleneck
//! (50, 101) blocks, with `replace_stride_with_dilation` as `output_stride`. The numbers are
//! torchvision's (`torchvision/models/resnet.py`, ResNet V1.5: a bottleneck's stride is on its
//! 3×3 convolution); the names are mtl's, and [`KEY_TABLE`] is the one place that relates the
//! two (docs/PRETRAINED.md).
use super::layers::{activate, BatchNorm2d, Compute, Conv2d};
use crate::config::{Activation, BackboneConfig, BackboneKind};
use tch::nn::Path;
use tch::Tensor;

/// torchvision's base width (`layer1`'s planes).
pub const BASE_WIDTH: i64 = 64;

/// A ResNet's block: basic (two 3×3) or bottleneck (1×1, 3×3, 1×1 at 4× the planes).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BlockKind {
    Basic,
    Bottleneck,
}

impl BlockKind {
    fn expansion(self) -> i64 {
        match self {
            BlockKind::Basic => 1,
            BlockKind::Bottleneck => 4,
        }
    }
}

/// The blocks of each of the four layers, as torchvision's `resnet18` … `resnet101`.
pub fn layout(kind: BackboneKind) -> Option<(BlockKind, [usize; 4])> {
    match kind {
        BackboneKind::Resnet18 => Some((BlockKind::Basic, [2, 2, 2, 2])),
        BackboneKind::Resnet34 => Some((BlockKind::Basic, [3, 4, 6, 3])),
        BackboneKind::Resnet50 => Some((BlockKind::Bottleneck, [3, 4, 6, 3])),
        BackboneKind::Resnet101 => Some((BlockKind::Bottleneck, [3, 4, 23, 3])),
        _ => None,
    }
}

fn layout_of(cfg: &BackboneConfig) -> (BlockKind, [usize; 4]) {
    layout(cfg.kind).expect("a torchvision ResNet")
}

/// The base width: `widths: [w]` or torchvision's 64.
fn base(cfg: &BackboneConfig) -> i64 {
    cfg.widths.first().copied().unwrap_or(BASE_WIDTH)
}

/// Output channels of the four layers (64-128-256-512, ×4 for bottleneck blocks).
pub fn widths(cfg: &BackboneConfig) -> Vec<i64> {
    let (block, _) = layout_of(cfg);
    (0..4).map(|i| (base(cfg) << i) * block.expansion()).collect()
}

/// Each layer's output stride: 4, 8, 16, 32, the last ones held at `output_stride` (their
/// stride replaced by dilation).
pub fn strides(cfg: &BackboneConfig) -> Vec<i64> {
    (0..4).map(|i| (4i64 << i).min(cfg.output_stride)).collect()
}

/// The paths of stage `i`'s variables: the stem with `layer1`, then `layer2` … `layer4`.
pub fn stage_prefixes(i: usize) -> Vec<String> {
    match i {
        0 => vec!["stem".into(), "layer1".into()],
        _ => vec![format!("layer{}", i + 1)],
    }
}

/// The rules torchvision has for its settings.
pub fn check(cfg: &BackboneConfig) -> Result<(), String> {
    let (block, _) = layout_of(cfg);
    if block == BlockKind::Basic && cfg.output_stride != 32 {
        return Err(format!(
            "model.backbone.output_stride: {} is 32 only: torchvision's basic blocks do not dilate \
             (dilated backbones are resnet50 and resnet101)",
            cfg.kind.name()
        ));
    }
    Ok(())
}

/// The stem: `stem.conv` (7×7, stride 2), `stem.bn`, the activation and a 3×3 max-pool at
/// stride 2 (torchvision's `conv1`, `bn1`, `relu`, `maxpool`).
#[derive(Debug)]
pub struct Stem {
    conv: Conv2d,
    bn: BatchNorm2d,
}

impl Stem {
    pub fn forward(&self, x: &Tensor, train: bool, c: Compute, act: Activation) -> Tensor {
        let h = activate(self.bn.forward(&self.conv.forward(x, c), train, c), act);
        h.max_pool2d([3, 3], [2, 2], [1, 1], [1, 1], false)
    }
}

/// A bottleneck block: `conv1` (1×1), `bn1`, `conv2` (3×3, the block's stride and dilation),
/// `bn2`, `conv3` (1×1 to 4× the planes), `bn3`, and `shortcut.conv|bn` when the shape changes.
#[derive(Debug)]
pub struct Bottleneck {
    convs: [(Conv2d, BatchNorm2d); 3],
    shortcut: Option<(Conv2d, BatchNorm2d)>,
}

impl Bottleneck {
    pub fn forward(&self, x: &Tensor, train: bool, c: Compute, act: Activation) -> Tensor {
        let [(c1, b1), (c2, b2), (c3, b3)] = &self.convs;
        let h = activate(b1.forward(&c1.forward(x, c), train, c), act);
        let h = activate(b2.forward(&c2.forward(&h, c), train, c), act);
        let h = b3.forward(&c3.forward(&h, c), train, c);
        let skip = match &self.shortcut {
            Some((conv, bn)) => bn.forward(&conv.forward(x, c), train, c),
            None => x.shallow_clone(),
        };
        activate(h + skip, act)
    }
}

/// A conv (torchvision's init, no bias) and its BatchNorm under `p/<conv>`, `p/<bn>`.
fn conv_bn(p: &Path, conv: &str, bn: &str, c_in: i64, c_out: i64, k: i64, stride: i64) -> (Conv2d, BatchNorm2d) {
    (Conv2d::new(p / conv, c_in, c_out, k, stride, false).kaiming_fan_out(), BatchNorm2d::new(p / bn, c_out))
}

/// One of the four layers' blocks as built: basic or bottleneck.
#[derive(Debug)]
pub enum Block {
    Basic(super::backbone::BasicBlock),
    Bottleneck(Bottleneck),
}

impl Block {
    pub fn forward(&self, x: &Tensor, train: bool, c: Compute, act: Activation) -> Tensor {
        match self {
            Block::Basic(b) => b.forward(x, train, c, act),
            Block::Bottleneck(b) => b.forward(x, train, c, act),
        }
    }
}

/// The stem and the four layers, built as torchvision's `ResNet.__init__` and `_make_layer`:
/// `(stem, layer1 blocks), layer2 blocks, …`.
pub fn build(p: &Path, c_in: i64, cfg: &BackboneConfig) -> (Stem, Vec<Vec<Block>>) {
    let (kind, counts) = layout_of(cfg);
    let expansion = kind.expansion();
    let stem_width = base(cfg);
    let sp = p / "stem";
    let (conv, bn) = conv_bn(&sp, "conv", "bn", c_in, stem_width, 7, 2);
    let stem = Stem { conv, bn };
    let mut inplanes = stem_width;
    let mut dilation = 1;
    let layers = counts
        .iter()
        .enumerate()
        .map(|(i, &count)| {
            let planes = base(cfg) << i;
            let mut stride = if i == 0 { 1 } else { 2 };
            let previous_dilation = dilation;
            // replace_stride_with_dilation: the layers past the output stride keep the
            // resolution and widen their 3×3 kernels instead.
            if (4i64 << i) > cfg.output_stride {
                dilation *= stride;
                stride = 1;
            }
            let lp = p / format!("layer{}", i + 1);
            (0..count)
                .map(|j| {
                    let bp = &lp / j;
                    let (block_stride, block_dilation) =
                        if j == 0 { (stride, previous_dilation) } else { (1, dilation) };
                    let out = planes * expansion;
                    let shortcut = (j == 0 && (stride != 1 || inplanes != out))
                        .then(|| conv_bn(&(&bp / "shortcut"), "conv", "bn", inplanes, out, 1, stride));
                    let block = match kind {
                        BlockKind::Basic => Block::Basic(super::backbone::BasicBlock::torchvision(
                            &bp,
                            inplanes,
                            planes,
                            block_stride,
                            shortcut,
                        )),
                        BlockKind::Bottleneck => Block::Bottleneck(Bottleneck {
                            convs: [
                                conv_bn(&bp, "conv1", "bn1", inplanes, planes, 1, 1),
                                {
                                    let (c, b) = conv_bn(&bp, "conv2", "bn2", planes, planes, 3, block_stride);
                                    (c.dilated(block_dilation), b)
                                },
                                conv_bn(&bp, "conv3", "bn3", planes, out, 1, 1),
                            ],
                            shortcut,
                        }),
                    };
                    inplanes = out;
                    block
                })
                .collect()
        })
        .collect();
    (stem, layers)
}

/// Where a name sits in the network, for [`KEY_TABLE`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    /// At the backbone's top level (the stem).
    Top,
    /// Inside a block, after `layer<k>.<j>.`.
    Block,
}

/// The one table between mtl's variable names (relative to the backbone, e.g.
/// `backbone.stem.conv.weight` without `backbone.`) and torchvision's state-dict keys. A name
/// that starts (in its scope) with the middle column is torchvision's with the last column
/// instead; every other name is the same in both (`layer1.0.conv1.weight`,
/// `layer3.2.bn2.running_var`, …). mtl says `stem` and `shortcut` as its CIFAR `resnet` does,
/// so `backbone.stem.*` selects the stem in every ResNet.
pub const KEY_TABLE: &[(Scope, &str, &str)] = &[
    (Scope::Top, "stem.conv.", "conv1."),
    (Scope::Top, "stem.bn.", "bn1."),
    (Scope::Block, "shortcut.conv.", "downsample.0."),
    (Scope::Block, "shortcut.bn.", "downsample.1."),
];

/// torchvision's keys that a backbone has no use for: the ImageNet classifier.
pub const IGNORED_KEYS: &[&str] = &["fc.weight", "fc.bias"];

/// `layer<k>.<j>.` and the rest, for a name inside a block.
fn split_block(name: &str) -> Option<(&str, &str)> {
    let mut parts = name.splitn(3, '.');
    let (layer, block, _) = (parts.next()?, parts.next()?, parts.next()?);
    let is_layer = layer.strip_prefix("layer").is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()));
    (is_layer && !block.is_empty() && block.bytes().all(|b| b.is_ascii_digit()))
        .then(|| name.split_at(layer.len() + block.len() + 2))
}

/// Translates `name` with [`KEY_TABLE`], from the `from` column (1: mtl, 2: torchvision) to the other.
fn translate(name: &str, to_torchvision: bool) -> String {
    let (scope, head, rest) = match split_block(name) {
        Some((head, rest)) => (Scope::Block, head, rest),
        None => (Scope::Top, "", name),
    };
    for &(s, ours, theirs) in KEY_TABLE {
        let (from, to) = if to_torchvision { (ours, theirs) } else { (theirs, ours) };
        if s == scope {
            if let Some(tail) = rest.strip_prefix(from) {
                return format!("{head}{to}{tail}");
            }
        }
    }
    name.to_string()
}

/// torchvision's key for an mtl backbone variable name (relative to the backbone).
pub fn to_torchvision(name: &str) -> String {
    translate(name, true)
}

/// mtl's backbone variable name for a torchvision key.
pub fn from_torchvision(key: &str) -> String {
    translate(key, false)
}

/// Which torchvision ResNet a state dict's keys are (by its blocks per layer and whether they
/// have a third convolution), if any.
pub fn identify<'a>(keys: impl IntoIterator<Item = &'a str>) -> Option<BackboneKind> {
    let mut blocks = [0usize; 4];
    let mut bottleneck = false;
    for key in keys {
        let Some((head, rest)) = split_block(key) else { continue };
        let mut parts = head.trim_end_matches('.').split('.');
        let layer: usize = parts.next()?.trim_start_matches("layer").parse().ok()?;
        let block: usize = parts.next()?.parse().ok()?;
        if (1..=4).contains(&layer) {
            blocks[layer - 1] = blocks[layer - 1].max(block + 1);
        }
        bottleneck |= rest.starts_with("conv3.");
    }
    [BackboneKind::Resnet18, BackboneKind::Resnet34, BackboneKind::Resnet50, BackboneKind::Resnet101]
        .into_iter()
        .find(|&k| layout(k) == Some((if bottleneck { BlockKind::Bottleneck } else { BlockKind::Basic }, blocks)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_key_table_maps_both_ways() {
        for (ours, theirs) in [
            ("stem.conv.weight", "conv1.weight"),
            ("stem.bn.running_mean", "bn1.running_mean"),
            ("layer1.0.conv1.weight", "layer1.0.conv1.weight"),
            ("layer1.0.bn1.weight", "layer1.0.bn1.weight"),
            ("layer2.0.shortcut.conv.weight", "layer2.0.downsample.0.weight"),
            ("layer4.0.shortcut.bn.num_batches_tracked", "layer4.0.downsample.1.num_batches_tracked"),
            ("layer3.22.conv3.weight", "layer3.22.conv3.weight"),
        ] {
            assert_eq!(to_torchvision(ours), theirs);
            assert_eq!(from_torchvision(theirs), ours);
        }
    }

    #[test]
    fn depths_are_told_apart_by_their_keys() {
        let keys = |blocks: [usize; 4], bottleneck: bool| -> Vec<String> {
            let mut keys = vec!["conv1.weight".to_string()];
            for (l, &n) in blocks.iter().enumerate() {
                for b in 0..n {
                    keys.push(format!("layer{}.{b}.conv1.weight", l + 1));
                    if bottleneck {
                        keys.push(format!("layer{}.{b}.conv3.weight", l + 1));
                    }
                }
            }
            keys
        };
        for kind in [BackboneKind::Resnet18, BackboneKind::Resnet34, BackboneKind::Resnet50, BackboneKind::Resnet101] {
            let (block, counts) = layout(kind).unwrap();
            let k = keys(counts, block == BlockKind::Bottleneck);
            assert_eq!(identify(k.iter().map(String::as_str)), Some(kind));
        }
        assert_eq!(identify(["conv1.weight", "layer1.0.conv1.weight"]), None);
    }
}
