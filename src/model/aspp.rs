//! DeepLabV3's head (`model.heads.<task>.kind: aspp`): atrous spatial pyramid pooling on the
//! backbone's coarsest map, as torchvision's `DeepLabHead` and LibMTL's NYUv2 example
//! (`examples/nyu/aspp.py`, rates 12, 24, 36 on a ResNet-50 at output stride 8) build it:
//!
//! - `aspp.convs.0.{0,1}`: 1×1 conv–BN–ReLU;
//! - `aspp.convs.{1..=r}.{0,1}`: one 3×3 conv–BN–ReLU per rate, dilated by it;
//! - `aspp.convs.{r+1}.{1,2}`: global average pooling, 1×1 conv–BN–ReLU, broadcast back;
//! - `aspp.project.{0,1}`: the branches concatenated, 1×1 conv–BN–ReLU, dropout 0.5;
//! - `conv`, `bn`: 3×3 conv–BN–ReLU; `classifier`: 1×1 conv with a bias to the outputs.
//!
//! The names are torchvision's `ASPP` module's under `aspp.`, so the PyTorch twin uses it as it
//! is. The logits are resized to the input bilinearly with `align_corners=True`, as LibMTL's
//! NYUv2 trainer does. Its activations are ReLU whatever `model.backbone.activation` says.
use super::layers::{activate, dropout, BatchNorm2d, Compute, Conv2d};
use crate::config::Activation;
use tch::nn::Path;
use tch::Tensor;

/// DeepLabV3's dropout after the projection.
const PROJECT_DROPOUT: f64 = 0.5;

#[derive(Debug)]
struct ConvBn {
    conv: Conv2d,
    bn: BatchNorm2d,
}

impl ConvBn {
    /// `p/<conv>` and `p/<bn>`: a conv without bias (default init) and its BatchNorm.
    fn new(p: &Path, names: (&str, &str), c_in: i64, c_out: i64, k: i64, dilation: i64) -> Self {
        let conv = Conv2d::new(p / names.0, c_in, c_out, k, 1, false).dilated(dilation);
        Self { conv, bn: BatchNorm2d::new(p / names.1, c_out) }
    }

    fn forward(&self, x: &Tensor, train: bool, c: Compute, act: Activation) -> Tensor {
        activate(self.bn.forward(&self.conv.forward(x, c), train, c), act)
    }
}

#[derive(Debug)]
pub struct AsppHead {
    /// The 1×1 branch and the dilated ones.
    branches: Vec<ConvBn>,
    pooling: ConvBn,
    project: ConvBn,
    conv: ConvBn,
    classifier: Conv2d,
    act: Activation,
}

impl AsppHead {
    /// On `c_in` channels (the coarsest map's), `width` channels inside, `outputs` out.
    pub fn new(p: &Path, c_in: i64, width: i64, rates: &[i64], outputs: i64) -> Self {
        let ap = p / "aspp";
        let convs = &ap / "convs";
        let mut branches = vec![ConvBn::new(&(&convs / 0), ("0", "1"), c_in, width, 1, 1)];
        for (i, &rate) in rates.iter().enumerate() {
            branches.push(ConvBn::new(&(&convs / (i + 1)), ("0", "1"), c_in, width, 3, rate));
        }
        let pooling = ConvBn::new(&(&convs / (rates.len() + 1)), ("1", "2"), c_in, width, 1, 1);
        let n = (rates.len() + 2) as i64;
        let project = ConvBn::new(&(&ap / "project"), ("0", "1"), n * width, width, 1, 1);
        let conv = ConvBn::new(p, ("conv", "bn"), width, width, 3, 1);
        let classifier = Conv2d::new(p / "classifier", width, outputs, 1, 1, true);
        Self { branches, pooling, project, conv, classifier, act: Activation::Relu }
    }

    /// Logits at the input's size `out_hw` from the coarsest of `features`.
    pub fn forward(&self, features: &[Tensor], out_hw: (i64, i64), train: bool, c: Compute) -> Tensor {
        let x = c.cast(features.last().expect("a backbone has at least one output"));
        let (h, w) = (x.size()[2], x.size()[3]);
        let mut outs: Vec<Tensor> = self.branches.iter().map(|b| b.forward(&x, train, c, self.act)).collect();
        let pooled = x.adaptive_avg_pool2d([1, 1]);
        let pooled = self.pooling.forward(&pooled, train, c, self.act);
        outs.push(pooled.upsample_bilinear2d([h, w], false, None, None));
        let y = self.project.forward(&Tensor::cat(&outs, 1), train, c, self.act);
        let y = dropout(&y, PROJECT_DROPOUT, train);
        let logits = self.classifier.forward(&self.conv.forward(&y, train, c, self.act), c);
        if (h, w) == out_hw {
            logits
        } else {
            logits.upsample_bilinear2d([out_hw.0, out_hw.1], true, None, None)
        }
    }
}
