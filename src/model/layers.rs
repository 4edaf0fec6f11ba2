//! The few layers the models are made of, named as PyTorch's modules name their tensors so
//! that `model.safetensors` loads into the same `torch.nn` tree with `strict=True`.
use crate::config::Activation;
use tch::nn::{Init, Path};
use tch::{Kind, Tensor};

/// The dtype convolutions and matmuls run in. Variables stay fp32 (master weights); under
/// bf16 they are cast inside the forward pass, which autograd tracks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Compute(pub Kind);

impl Compute {
    pub fn cast(&self, t: &Tensor) -> Tensor {
        if t.kind() == self.0 {
            t.shallow_clone()
        } else {
            t.to_kind(self.0)
        }
    }
}

/// PyTorch's default init for conv and linear layers: kaiming_uniform(a=√5) for the weight,
/// which is U(±1/√fan_in), and U(±1/√fan_in) for the bias.
fn default_bound(fan_in: i64) -> f64 {
    1.0 / (fan_in as f64).sqrt()
}

#[derive(Debug)]
pub struct Conv2d {
    weight: Tensor,
    bias: Option<Tensor>,
    stride: i64,
    padding: i64,
}

impl Conv2d {
    pub fn new(p: Path, c_in: i64, c_out: i64, k: i64, stride: i64, bias: bool) -> Self {
        let bound = default_bound(c_in * k * k);
        let weight = p.var("weight", &[c_out, c_in, k, k], Init::Uniform { lo: -bound, up: bound });
        let bias = bias.then(|| p.var("bias", &[c_out], Init::Uniform { lo: -bound, up: bound }));
        Self { weight, bias, stride, padding: k / 2 }
    }

    pub fn forward(&self, x: &Tensor, c: Compute) -> Tensor {
        let b = self.bias.as_ref().map(|b| c.cast(b));
        x.conv2d(&c.cast(&self.weight), b.as_ref(), [self.stride], [self.padding], [1], 1)
    }
}

#[derive(Debug)]
pub struct Linear {
    weight: Tensor,
    bias: Tensor,
}

impl Linear {
    pub fn new(p: Path, d_in: i64, d_out: i64) -> Self {
        let bound = default_bound(d_in);
        let init = Init::Uniform { lo: -bound, up: bound };
        Self { weight: p.var("weight", &[d_out, d_in], init), bias: p.var("bias", &[d_out], init) }
    }

    pub fn forward(&self, x: &Tensor, c: Compute) -> Tensor {
        x.linear(&c.cast(&self.weight), Some(&c.cast(&self.bias)))
    }
}

/// BatchNorm2d with PyTorch's five tensors, `num_batches_tracked` included, so strict
/// loading needs no exceptions. Statistics and affine parameters stay fp32.
#[derive(Debug)]
pub struct BatchNorm2d {
    weight: Tensor,
    bias: Tensor,
    running_mean: Tensor,
    running_var: Tensor,
    num_batches_tracked: Tensor,
}

const BN_MOMENTUM: f64 = 0.1;
const BN_EPS: f64 = 1e-5;

impl BatchNorm2d {
    pub fn new(p: Path, c: i64) -> Self {
        let dev = p.device();
        Self {
            weight: p.var("weight", &[c], Init::Const(1.0)),
            bias: p.var("bias", &[c], Init::Const(0.0)),
            running_mean: p.zeros_no_train("running_mean", &[c]),
            running_var: p.ones_no_train("running_var", &[c]),
            num_batches_tracked: p.add("num_batches_tracked", Tensor::zeros([], (Kind::Int64, dev)), false),
        }
    }

    pub fn forward(&self, x: &Tensor, train: bool) -> Tensor {
        if train {
            tch::no_grad(|| {
                let _ = self.num_batches_tracked.shallow_clone().g_add_scalar_(1);
            });
        }
        Tensor::batch_norm(
            x,
            Some(&self.weight),
            Some(&self.bias),
            Some(&self.running_mean),
            Some(&self.running_var),
            train,
            BN_MOMENTUM,
            BN_EPS,
            true,
        )
    }
}

pub fn activate(x: &Tensor, a: Activation) -> Tensor {
    match a {
        Activation::Relu => x.relu(),
        Activation::Gelu => x.gelu("none"),
        Activation::Silu => x.silu(),
    }
}

/// conv3×3 – BatchNorm – activation (conv bias only when there is no norm), the building
/// block of the conv backbone and the segmentation decoder. Names: `conv.*`, `bn.*`.
#[derive(Debug)]
pub struct ConvBnAct {
    conv: Conv2d,
    bn: Option<BatchNorm2d>,
    act: Activation,
}

impl ConvBnAct {
    pub fn new(p: &Path, c_in: i64, c_out: i64, batch_norm: bool, act: Activation) -> Self {
        Self {
            conv: Conv2d::new(p / "conv", c_in, c_out, 3, 1, !batch_norm),
            bn: batch_norm.then(|| BatchNorm2d::new(p / "bn", c_out)),
            act,
        }
    }

    pub fn forward(&self, x: &Tensor, train: bool, c: Compute) -> Tensor {
        let y = self.conv.forward(x, c);
        let y = match &self.bn {
            Some(bn) => bn.forward(&y, train),
            None => y,
        };
        activate(&y, self.act)
    }
}
