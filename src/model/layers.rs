//! The few layers the models are made of, named as PyTorch's modules name their tensors so
//! that `model.safetensors` loads into the same `torch.nn` tree with `strict=True`.
use crate::config::Activation;
use tch::nn::{Init, Path};
use tch::{Kind, Tensor};

/// The same values with channels-last strides (`[N, C, H, W]` shape, NHWC in memory); tch has
/// no memory-format argument, so this is the permute–contiguous–permute idiom.
pub fn to_channels_last(x: &Tensor) -> Tensor {
    if x.dim() != 4 {
        return x.shallow_clone();
    }
    x.permute([0, 2, 3, 1]).contiguous().permute([0, 3, 1, 2])
}

/// How a forward pass computes: the dtype of convolutions and matmuls, and the memory layout
/// of training activations. Variables stay fp32 (master weights); under bf16 they are cast
/// inside the forward pass, which autograd tracks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Compute {
    pub kind: Kind,
    /// Training forwards run their conv activations in channels-last (NHWC) memory
    /// (`speed.channels_last`). Measured on the CPU (oneDNN): the default model's step is
    /// 10–20% faster, because convolutions, max-pooling and BatchNorm skip their internal
    /// reorders (docs/BENCHMARKS.md); on CUDA, cuDNN's bf16/TF32 tensor-core kernels want NHWC
    /// as well. Evaluation and inference forwards stay NCHW, so their outputs are bit for bit
    /// those of the PyTorch twin (`scripts/mtl_torch.py`) in fp32 on the CPU. Weights stay NCHW
    /// (they are views into the optimizer's flat buffer); the convolution reorders them, which
    /// is cheap next to the activations.
    pub channels_last: bool,
}

impl Compute {
    pub fn fp32() -> Self {
        Self { kind: Kind::Float, channels_last: false }
    }

    pub fn cast(&self, t: &Tensor) -> Tensor {
        if t.kind() == self.kind {
            t.shallow_clone()
        } else {
            t.to_kind(self.kind)
        }
    }

    /// Whether this forward uses channels-last activations (training forwards only).
    pub fn channels_last(&self, train: bool) -> bool {
        train && self.channels_last
    }
}

thread_local! {
    /// Inside [`count_variables`]: the elements counted so far.
    static COUNTING: std::cell::Cell<Option<u64>> = const { std::cell::Cell::new(None) };
}

/// Runs `build` (which constructs layers) without allocating their variables, and returns how
/// many elements they would hold: the model's size, known before anything large is allocated.
pub fn count_variables(build: impl FnOnce()) -> u64 {
    COUNTING.with(|c| c.set(Some(0)));
    build();
    COUNTING.with(|c| c.take()).unwrap_or(0)
}

/// In a counting pass, counts `shape` and returns a one-element stand-in.
fn counted(p: &Path, name: &str, shape: &[i64], trainable: bool) -> Option<Tensor> {
    COUNTING.with(|c| {
        let n = c.get()?;
        c.set(Some(n + shape.iter().product::<i64>().max(0) as u64));
        Some(p.add(name, Tensor::zeros([1], (Kind::Float, p.device())), trainable))
    })
}

/// A trainable variable (or, in a counting pass, its stand-in).
fn var(p: &Path, name: &str, shape: &[i64], init: Init) -> Tensor {
    counted(p, name, shape, true).unwrap_or_else(|| p.var(name, shape, init))
}

/// A trainable variable of zeros (or, in a counting pass, its stand-in).
pub fn zeros(p: &Path, name: &str, shape: &[i64]) -> Tensor {
    var(p, name, shape, Init::Const(0.0))
}

/// A trainable variable starting at `value` (or, in a counting pass, its stand-in).
pub fn var_copy(p: &Path, name: &str, value: &Tensor) -> Tensor {
    counted(p, name, &value.size(), true).unwrap_or_else(|| p.var_copy(name, value))
}

/// A variable that is not trained (a statistic), zeros or ones.
fn statistic(p: &Path, name: &str, shape: &[i64], ones: bool) -> Tensor {
    counted(p, name, shape, false).unwrap_or_else(|| {
        if ones {
            p.ones_no_train(name, shape)
        } else {
            p.zeros_no_train(name, shape)
        }
    })
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
    /// CPU only: run this convolution on NCHW input even in a channels-last forward.
    nchw_on_cpu: bool,
}

impl Conv2d {
    pub fn new(p: Path, c_in: i64, c_out: i64, k: i64, stride: i64, bias: bool) -> Self {
        let bound = default_bound(c_in * k * k);
        let weight = var(&p, "weight", &[c_out, c_in, k, k], Init::Uniform { lo: -bound, up: bound });
        let bias = bias.then(|| var(&p, "bias", &[c_out], Init::Uniform { lo: -bound, up: bound }));
        // oneDNN's 1×1 strided convolution on NHWC input with fewer input channels than its
        // channel block (8 with AVX2, 16 with AVX-512) writes past a workspace in the weight
        // gradient: heap corruption, or wrong gradients with several threads (oneDNN issue
        // #6035; seen here with libtorch 2.11 as "double free or corruption" on a ResNet with
        // widths [4]). Such convolutions (tiny ResNet shortcuts) take NCHW input.
        let nchw_on_cpu = k == 1 && stride > 1 && c_in < 16;
        Self { weight, bias, stride, padding: k / 2, nchw_on_cpu }
    }

    pub fn forward(&self, x: &Tensor, c: Compute) -> Tensor {
        let b = self.bias.as_ref().map(|b| c.cast(b));
        let x = if self.nchw_on_cpu && x.device() == tch::Device::Cpu { x.contiguous() } else { x.shallow_clone() };
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
        Self::uniform(p, d_in, d_out, default_bound(d_in))
    }

    /// Weight and bias drawn from U(−bound, bound).
    pub fn uniform(p: Path, d_in: i64, d_out: i64, bound: f64) -> Self {
        let init = Init::Uniform { lo: -bound, up: bound };
        Self { weight: var(&p, "weight", &[d_out, d_in], init), bias: var(&p, "bias", &[d_out], init) }
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
            weight: var(&p, "weight", &[c], Init::Const(1.0)),
            bias: var(&p, "bias", &[c], Init::Const(0.0)),
            running_mean: statistic(&p, "running_mean", &[c], false),
            running_var: statistic(&p, "running_var", &[c], true),
            num_batches_tracked: counted(&p, "num_batches_tracked", &[], false)
                .unwrap_or_else(|| p.add("num_batches_tracked", Tensor::zeros([], (Kind::Int64, dev)), false)),
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

#[cfg(test)]
mod tests {
    use super::*;
    use tch::nn::VarStore;
    use tch::Device;

    /// Forward and backward of a conv on the same batch in NCHW and channels-last agree, also
    /// for the 1×1 strided convolution with few input channels that oneDNN mishandles in NHWC
    /// (without the NCHW fallback this corrupts the heap and usually aborts the test binary).
    #[test]
    fn convolutions_agree_across_memory_formats() {
        for (k, stride, c_in, c_out) in [(1, 2, 4, 8), (1, 2, 3, 16), (3, 1, 3, 8), (3, 2, 8, 16), (1, 1, 4, 11)] {
            let vs = VarStore::new(Device::Cpu);
            tch::manual_seed(7);
            let conv = Conv2d::new(vs.root() / "c", c_in, c_out, k, stride, true);
            let x = Tensor::randn([16, c_in, 16, 16], (Kind::Float, Device::Cpu));
            let run = |input: Tensor| {
                let input = input.set_requires_grad(true);
                let y = conv.forward(&input, Compute::fp32());
                for v in vs.trainable_variables() {
                    let mut g = v.grad();
                    if g.defined() {
                        let _ = g.zero_();
                    }
                }
                (&y * &y).sum(Kind::Float).backward();
                let mut grads = vec![y.detach().contiguous(), input.grad().contiguous()];
                grads.extend(vs.trainable_variables().iter().map(|v| v.grad().contiguous().copy()));
                grads
            };
            let a = run(x.copy());
            let b = run(to_channels_last(&x));
            for (a, b) in a.iter().zip(&b) {
                let err = (a - b).abs().max().double_value(&[]) / b.abs().max().double_value(&[]).max(1e-12);
                assert!(err < 1e-4, "k {k} stride {stride} c_in {c_in}: {err}");
            }
        }
    }
}
