//! Task heads. Each head reads the backbone's feature maps and returns fp32 outputs.
use super::aspp::AsppHead;
use super::backbone::FeatureInfo;
use super::layers::{activate, Compute, Conv2d, ConvBnAct, Linear};
use crate::config::{Activation, DenseDecoder, HeadConfig, Pool, DEFAULT_ASPP_RATES, DEFAULT_ASPP_WIDTH};
use tch::nn::Path;
use tch::{Kind, Tensor};

/// What a head produces; the task kinds (src/tasks/) say which one they need.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HeadKind {
    /// One vector of `outputs` values per image (class logits), from the coarsest features.
    Vector { outputs: i64 },
    /// `channels` values per pixel at the input's resolution, from the U-Net decoder;
    /// `unit_length` L2-normalizes them over the channels (surface normals).
    Dense { channels: i64, unit_length: bool },
}

/// A head to build: the task it serves (its variables live under `heads.<task>`) and its kind.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HeadSpec {
    pub task: String,
    pub kind: HeadKind,
    /// The task's data group (0 unless tasks have their own data): the BatchNorm statistics
    /// its outputs are computed with when groups keep their own (`model.domain_norm`).
    pub domain: usize,
}

#[derive(Debug)]
pub enum Head {
    Vector(ClassificationHead),
    Dense { decoder: Decoder, unit_length: bool },
}

/// How a per-pixel head decodes the backbone's maps (`model.heads.<task>.kind`).
#[derive(Debug)]
pub enum Decoder {
    UNet(SegmentationHead),
    Aspp(Box<AsppHead>),
}

impl Head {
    /// The head `kind` under `p` (`heads.<task name>`). `top_hw` is the size of the coarsest
    /// feature map (needed by `pool: flatten`).
    pub fn new(
        p: &Path,
        info: &FeatureInfo,
        cfg: &HeadConfig,
        kind: HeadKind,
        batch_norm: bool,
        act: Activation,
        top_hw: Option<(i64, i64)>,
    ) -> Self {
        match kind {
            HeadKind::Vector { outputs } => Head::Vector(ClassificationHead::new(p, info, cfg, outputs, act, top_hw)),
            HeadKind::Dense { channels, unit_length } => {
                let decoder = match cfg.kind {
                    DenseDecoder::Unet => Decoder::UNet(SegmentationHead::new(p, info, cfg, channels, batch_norm, act)),
                    DenseDecoder::Aspp => {
                        let c_in = *info.channels.last().expect("a backbone has at least one output");
                        let width = if cfg.decoder_width > 0 { cfg.decoder_width } else { DEFAULT_ASPP_WIDTH };
                        let rates = if cfg.rates.is_empty() { &DEFAULT_ASPP_RATES[..] } else { &cfg.rates[..] };
                        Decoder::Aspp(Box::new(AsppHead::new(p, c_in, width, rates, channels)))
                    }
                };
                Head::Dense { decoder, unit_length }
            }
        }
    }

    /// `features` as the backbone returned them; `out_hw` the input image's size.
    pub fn forward(&self, features: &[Tensor], out_hw: (i64, i64), train: bool, c: Compute) -> Tensor {
        match self {
            Head::Vector(h) => h.forward(features, train, c).to_kind(Kind::Float),
            Head::Dense { decoder, unit_length } => {
                let out = match decoder {
                    Decoder::UNet(d) => d.forward(features, out_hw, train, c),
                    Decoder::Aspp(d) => d.forward(features, out_hw, train, c),
                }
                .to_kind(Kind::Float);
                if *unit_length {
                    l2_normalize(&out)
                } else {
                    out
                }
            }
        }
    }
}

/// `x / max(‖x‖₂ over dim 1, 1e-12)`, as PyTorch's `F.normalize(x, dim=1)`.
pub fn l2_normalize(x: &Tensor) -> Tensor {
    x / x.norm_scalaropt_dim(2, [1i64].as_slice(), true).clamp_min(1e-12)
}

/// Global average pooling (or flattening, `pool: flatten`) of the coarsest map, an optional
/// hidden layer (`hidden.*`) with dropout, and a linear layer (`fc.*`).
#[derive(Debug)]
pub struct ClassificationHead {
    hidden: Option<Linear>,
    fc: Linear,
    dropout: f64,
    act: Activation,
    flatten: bool,
}

impl ClassificationHead {
    /// `top_hw`: the coarsest map's size, required with `pool: flatten` on a spatial backbone.
    pub fn new(
        p: &Path,
        info: &FeatureInfo,
        cfg: &HeadConfig,
        classes: i64,
        act: Activation,
        top_hw: Option<(i64, i64)>,
    ) -> Self {
        let mut d = *info.channels.last().expect("a backbone has at least one output");
        let flatten = cfg.pool == Pool::Flatten && info.spatial;
        if flatten {
            let (h, w) = top_hw.expect("pool: flatten needs the size of the coarsest feature map");
            d *= h * w;
        }
        let hidden = (cfg.hidden > 0).then(|| {
            let l = Linear::new(p / "hidden", d, cfg.hidden);
            d = cfg.hidden;
            l
        });
        Self { hidden, fc: Linear::new(p / "fc", d, classes), dropout: cfg.dropout, act, flatten }
    }

    fn forward(&self, features: &[Tensor], train: bool, c: Compute) -> Tensor {
        let top = features.last().expect("a backbone has at least one output");
        let mut h = match top.dim() {
            4 if self.flatten => top.flatten(1, -1),
            4 => top.mean_dim(&[-1i64, -2][..], false, None),
            _ => top.shallow_clone(),
        };
        if let Some(hidden) = &self.hidden {
            h = activate(hidden.forward(&h, c), self.act);
        }
        if self.dropout > 0.0 {
            h = super::layers::dropout(&h, self.dropout, train);
        }
        self.fc.forward(&h, c)
    }
}

/// A U-Net style decoder: from the coarsest map, repeatedly upsample ×2 (bilinear), concatenate
/// the next finer map and apply conv–BN–activation (`decoder.{k}.conv|bn`), then a 1×1
/// classifier (`classifier.*`); logits are resized to the input when the finest map is coarser.
#[derive(Debug)]
pub struct SegmentationHead {
    decoder: Vec<ConvBnAct>,
    classifier: Conv2d,
}

impl SegmentationHead {
    pub fn new(
        p: &Path,
        info: &FeatureInfo,
        cfg: &HeadConfig,
        classes: i64,
        batch_norm: bool,
        act: Activation,
    ) -> Self {
        let ch = &info.channels;
        let mut c = *ch.last().expect("a backbone has at least one output");
        let decoder = (0..ch.len() - 1)
            .map(|k| {
                let skip = ch[ch.len() - 2 - k];
                let out = if cfg.decoder_width > 0 { cfg.decoder_width } else { skip };
                let block = ConvBnAct::new(&(p / "decoder" / k), c + skip, out, batch_norm, act);
                c = out;
                block
            })
            .collect();
        Self { decoder, classifier: Conv2d::new(p / "classifier", c, classes, 1, 1, true) }
    }

    fn forward(&self, features: &[Tensor], out_hw: (i64, i64), train: bool, c: Compute) -> Tensor {
        let n = features.len();
        let mut h = features[n - 1].shallow_clone();
        for (k, block) in self.decoder.iter().enumerate() {
            let skip = &features[n - 2 - k];
            let size = [skip.size()[2], skip.size()[3]];
            let mut up = h.upsample_bilinear2d(size, false, None, None);
            if c.channels_last(train) {
                up = super::layers::with_dense_gradient(&up);
            }
            h = block.forward(&Tensor::cat(&[up, c.cast(skip)], 1), train, c);
        }
        let logits = self.classifier.forward(&h, c);
        let size = logits.size();
        if (size[2], size[3]) == out_hw {
            logits
        } else {
            logits.upsample_bilinear2d([out_hw.0, out_hw.1], false, None, None)
        }
    }
}
