//! The few layers the models are made of, named as PyTorch's modules name their tensors so
//! that `model.safetensors` loads into the same `torch.nn` tree with `strict=True`.
use crate::config::Activation;
use crate::dist::Group;
use std::sync::RwLock;
use tch::nn::{Init, Path};
use tch::{Kind, Tensor};

/// The same values with channels-last strides (`[N, C, H, W]` shape, NHWC in memory); tch has
/// no memory-format argument, so this is the permute–contiguous–permute idiom.
pub fn to_channels_last(x: &Tensor) -> Tensor {
    if x.dim() != 4 || is_channels_last(x) {
        return x.shallow_clone();
    }
    x.permute([0, 2, 3, 1]).contiguous().permute([0, 3, 1, 2])
}

/// Whether a 4-D tensor is dense channels-last (NHWC in memory) and not also NCHW-contiguous
/// (as a tensor with one channel, or 1×1 maps, is both).
pub fn is_channels_last(x: &Tensor) -> bool {
    if x.dim() != 4 || x.is_contiguous() {
        return false;
    }
    let (s, st) = (x.size(), x.stride());
    st == [s[1] * s[2] * s[3], 1, s[3] * s[1], s[1]]
}

/// The same values, with a backward that hands `x` a dense gradient. `cat`'s backward passes
/// each input a strided slice of its output's gradient; for such a slice libtorch's bilinear
/// upsampling backward skips its channels-last kernel (it wants a channels-last *contiguous*
/// gradient), copies the gradient to NCHW and runs the generic one. Multiplying by one is
/// exact both ways, and its backward writes a fresh gradient laid out like `x`. Measured
/// (batch 128, 2 threads, upsample + cat forward and backward): 8.0 → 4.0 ms at 8² → 16²,
/// 33 → 19 ms at 16² → 32² (docs/results/BENCHMARKS.md).
pub fn with_dense_gradient(x: &Tensor) -> Tensor {
    x * 1.0
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
    /// reorders (docs/results/BENCHMARKS.md); on CUDA, cuDNN's bf16/TF32 tensor-core kernels want NHWC
    /// as well. Evaluation and inference forwards stay NCHW, so their outputs are bit for bit
    /// those of the PyTorch twin (`scripts/mtl_torch.py`) in fp32 on the CPU. Weights stay NCHW
    /// (they are views into the optimizer's flat buffer); the convolution reorders them, which
    /// is cheap next to the activations.
    pub channels_last: bool,
    /// The data group whose images this forward reads: BatchNorm layers that keep state per
    /// group (`model.domain_norm`) normalize with that group's (0 with one group).
    pub domain: usize,
}

impl Compute {
    pub fn fp32() -> Self {
        Self { kind: Kind::Float, channels_last: false, domain: 0 }
    }

    /// The same computation on data group `domain`'s images.
    pub fn on_domain(self, domain: usize) -> Self {
        Self { domain, ..self }
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
    dilation: i64,
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
        Self { weight, bias, stride, padding: k / 2, dilation: 1, nchw_on_cpu }
    }

    /// The same kernel spread over `dilation` pixels, padded to keep the size (torchvision's
    /// `padding=dilation` for 3×3).
    pub fn dilated(self, dilation: i64) -> Self {
        let k = self.weight.size().get(2).copied().unwrap_or(1);
        Self { dilation, padding: dilation * (k / 2), ..self }
    }

    /// Redraws the weight as torchvision's ResNets initialize theirs: kaiming_normal with
    /// fan_out and the ReLU gain, N(0, 2 / (c_out·k·k)).
    pub fn kaiming_fan_out(self) -> Self {
        let s = self.weight.size();
        if s.len() == 4 {
            let fan_out = (s[0] * s[2] * s[3]) as f64;
            tch::no_grad(|| {
                let _ = self.weight.shallow_clone().normal_(0.0, (2.0 / fan_out).sqrt());
            });
        }
        self
    }

    pub fn forward(&self, x: &Tensor, c: Compute) -> Tensor {
        let b = self.bias.as_ref().map(|b| c.cast(b));
        let x = if self.nchw_on_cpu && x.device() == tch::Device::Cpu { x.contiguous() } else { x.shallow_clone() };
        // The weight in the input's layout. The trainer keeps weights channels-last when it
        // trains channels-last (`optim::flat`); libtorch computes channels-last when either
        // operand looks it, so an NCHW forward (evaluation, inference: bit for bit PyTorch's)
        // takes them with row-major strides, 1×1 kernels included (whose channels-last strides
        // are also "contiguous"). Both are no-ops when the layouts already agree.
        let w = if is_channels_last(&x) {
            to_channels_last(&self.weight)
        } else {
            self.weight.reshape([-1]).view(self.weight.size().as_slice())
        };
        x.conv2d(&c.cast(&w), b.as_ref(), [self.stride], [self.padding], [self.dilation], 1)
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
///
/// With several data groups that keep their own normalization ([`NormLayout`]), each group
/// has its own running statistics under `domains.<g>.` (and, with its own affine parameters,
/// its `weight` and `bias` there too; shared ones stay at `weight`, `bias`): the PyTorch
/// twin's `DomainBatchNorm2d`. A forward uses its [`Compute::domain`]'s set.
#[derive(Debug)]
pub struct BatchNorm2d {
    /// One per data group, or one for all.
    domains: Vec<NormState>,
    /// Frozen (`model.freeze_bn`, or its scale frozen by `optim.groups`): training forwards
    /// normalize with the running statistics and leave them as they are.
    frozen: NormSwitch,
}

/// A BatchNorm layer's frozen switch, shared with the model that flips it.
pub type NormSwitch = std::sync::Arc<std::sync::atomic::AtomicBool>;

/// One group's BatchNorm tensors (shared affine parameters are the same tensors in every set).
#[derive(Debug)]
struct NormState {
    weight: Tensor,
    bias: Tensor,
    running_mean: Tensor,
    running_var: Tensor,
    num_batches_tracked: Tensor,
}

/// How the BatchNorm layers of a model keep their state across data groups
/// (`model.domain_norm`, resolved for the run's number of groups).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NormLayout {
    /// Sets of running statistics per layer: the number of data groups, or 1 when shared.
    pub domains: usize,
    /// Each group also has its own scale and shift.
    pub own_affine: bool,
}

impl NormLayout {
    pub const SHARED: NormLayout = NormLayout { domains: 1, own_affine: false };
}

thread_local! {
    /// The layout of the BatchNorm layers being built ([`with_norm_layout`]).
    static LAYOUT: std::cell::Cell<NormLayout> = const { std::cell::Cell::new(NormLayout::SHARED) };
}

thread_local! {
    /// The BatchNorm layers built so far inside [`with_norm_layout`]: their paths and switches.
    static BUILT: std::cell::RefCell<Vec<(String, NormSwitch)>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// Runs `build` with the BatchNorm layers it creates laid out as `layout` (the model sets it
/// once around its construction, so the many layers that build a BatchNorm need not carry it);
/// also returns every BatchNorm layer it built, by path, with its frozen switch.
pub fn with_norm_layout<T>(layout: NormLayout, build: impl FnOnce() -> T) -> (T, Vec<(String, NormSwitch)>) {
    let before = LAYOUT.with(|l| l.replace(layout));
    let outer = BUILT.with(|b| b.take());
    let built = build();
    LAYOUT.with(|l| l.set(before));
    (built, BUILT.with(|b| b.replace(outer)))
}

const BN_MOMENTUM: f64 = 0.1;
const BN_EPS: f64 = 1e-5;

/// How this process's training forwards take part in a distributed run; None for a single
/// process. One per process, like the run (set once by the trainer).
static DISTRIBUTED: RwLock<Option<Distributed>> = RwLock::new(None);

struct Distributed {
    group: Group,
    /// `model.sync_batchnorm`: BatchNorms normalize over all ranks' batches.
    sync_batchnorm: bool,
}

/// Makes this process's training forwards part of `group`'s run: dropout masks are drawn for
/// the global batch ([`dropout`]) and, with `sync_batchnorm`, BatchNorm statistics are the
/// global batch's. None: a single process.
pub fn distribute(group: Option<Group>, sync_batchnorm: bool) {
    *DISTRIBUTED.write().unwrap_or_else(|e| e.into_inner()) = group.map(|group| Distributed { group, sync_batchnorm });
}

/// Training dropout. In a distributed run the mask is drawn for the whole global batch (every
/// rank's generator is seeded alike for the step) and this rank's rows of it are used, so N
/// ranks drop the units one process drops at N times the batch (exactly on the CPU, where
/// libtorch's dropout is this same bernoulli-divide-multiply). A single process: libtorch's.
pub fn dropout(x: &Tensor, p: f64, train: bool) -> Tensor {
    let shard =
        DISTRIBUTED.read().unwrap_or_else(|e| e.into_inner()).as_ref().map(|d| (d.group.rank(), d.group.world()));
    match shard {
        Some((rank, world)) if train && p > 0.0 && p < 1.0 && world > 1 => {
            let mut shape = x.size();
            let b = shape[0];
            shape[0] = b * world as i64;
            let mut noise = Tensor::empty(shape.as_slice(), (x.kind(), x.device())).bernoulli_float_(1.0 - p);
            let _ = noise.g_div_scalar_(1.0 - p);
            x * noise.narrow(0, rank as i64 * b, b)
        }
        _ => x.dropout(p, train),
    }
}

impl NormState {
    /// Running statistics under `p`, with `affine` (weight, bias) or new ones under `p`.
    fn new(p: &Path, c: i64, affine: Option<(&Tensor, &Tensor)>) -> Self {
        let (weight, bias) = match affine {
            Some((w, b)) => (w.shallow_clone(), b.shallow_clone()),
            None => (var(p, "weight", &[c], Init::Const(1.0)), var(p, "bias", &[c], Init::Const(0.0))),
        };
        Self {
            weight,
            bias,
            running_mean: statistic(p, "running_mean", &[c], false),
            running_var: statistic(p, "running_var", &[c], true),
            num_batches_tracked: counted(p, "num_batches_tracked", &[], false)
                .unwrap_or_else(|| p.add("num_batches_tracked", Tensor::zeros([], (Kind::Int64, p.device())), false)),
        }
    }
}

impl BatchNorm2d {
    /// `c` channels under `p`, laid out as the model being built asks ([`with_norm_layout`]).
    pub fn new(p: Path, c: i64) -> Self {
        let layout = LAYOUT.with(|l| l.get());
        let frozen = NormSwitch::default();
        BUILT.with(|b| b.borrow_mut().push((p.components().collect::<Vec<_>>().join("."), frozen.clone())));
        if layout.domains <= 1 {
            return Self { domains: vec![NormState::new(&p, c, None)], frozen };
        }
        let shared = (!layout.own_affine)
            .then(|| (var(&p, "weight", &[c], Init::Const(1.0)), var(&p, "bias", &[c], Init::Const(0.0))));
        let domains = (0..layout.domains)
            .map(|g| NormState::new(&(&p / "domains" / g), c, shared.as_ref().map(|(w, b)| (w, b))))
            .collect();
        Self { domains, frozen }
    }

    /// The tensors of the data group `c.domain` reads with (the only set when there is one).
    fn state(&self, c: Compute) -> &NormState {
        match self.domains.len() {
            1 => &self.domains[0],
            n => self.domains.get(c.domain).unwrap_or_else(|| panic!("data group {} of {n}", c.domain)),
        }
    }

    pub fn forward(&self, x: &Tensor, train: bool, c: Compute) -> Tensor {
        let s = self.state(c);
        let train = train && !self.frozen.load(std::sync::atomic::Ordering::Relaxed);
        probe::record(x);
        if train {
            tch::no_grad(|| {
                let _ = s.num_batches_tracked.shallow_clone().g_add_scalar_(1);
            });
            if let Some(d) = DISTRIBUTED.read().unwrap_or_else(|e| e.into_inner()).as_ref().filter(|d| d.sync_batchnorm)
            {
                return s.forward_synchronized(x, &d.group);
            }
        }
        Tensor::batch_norm(
            x,
            Some(&s.weight),
            Some(&s.bias),
            Some(&s.running_mean),
            Some(&s.running_var),
            train,
            BN_MOMENTUM,
            BN_EPS,
            true,
        )
    }
}

impl NormState {
    /// Training BatchNorm with the statistics of every rank's batch together (PyTorch's
    /// SyncBatchNorm): per-channel sums, sums of squares and counts (in f64) added over the
    /// ranks by a differentiable all-reduce, whose backward adds the gradients of those sums
    /// over the ranks, so each rank's input gets the gradient of the loss of the whole batch.
    /// The running statistics get the global mean and unbiased variance, equal on every rank.
    fn forward_synchronized(&self, x: &Tensor, group: &Group) -> Tensor {
        let c = self.weight.size()[0];
        let dims = [0i64, 2, 3];
        let local_count = (x.numel() as i64 / c.max(1)) as f64;
        let count = Tensor::full([1], local_count, (Kind::Double, x.device()));
        let stats = Tensor::cat(
            &[
                x.sum_dim_intlist(dims.as_slice(), false, Kind::Double),
                (x * x).sum_dim_intlist(dims.as_slice(), false, Kind::Double),
                count,
            ],
            0,
        );
        let total = group.sum_differentiable(&stats);
        let n = total.narrow(0, 2 * c, 1);
        let mean = total.narrow(0, 0, c) / &n;
        let var = (total.narrow(0, c, c) / &n - mean.square()).clamp_min(0.0);
        let invstd = (&var + BN_EPS).rsqrt();
        let scale = &invstd * self.weight.to_kind(Kind::Double);
        let shift = self.bias.to_kind(Kind::Double) - &mean * &scale;
        let shape = [1, c, 1, 1];
        let y = x * scale.to_kind(x.kind()).view(shape) + shift.to_kind(x.kind()).view(shape);
        tch::no_grad(|| {
            let unbiased = var.detach() * &n / (&n - 1.0).clamp_min(1.0);
            let update = |running: &Tensor, batch: &Tensor| {
                let mixed = running * (1.0 - BN_MOMENTUM) + batch.to_kind(running.kind()) * BN_MOMENTUM;
                running.shallow_clone().copy_(&mixed);
            };
            update(&self.running_mean, &mean.detach());
            update(&self.running_var, &unbiased);
        });
        y
    }
}

/// A look at the input of the first BatchNorm layer a forward runs (the diagnosis of data
/// groups sharing BatchNorm, `train::norm_gap`). Recording reads the input under `no_grad`
/// and changes nothing the forward computes.
pub mod probe {
    use std::cell::RefCell;
    use tch::{Kind, Tensor};

    /// Per-channel mean and (biased) variance, f64.
    pub type Moments = (Tensor, Tensor);

    thread_local! {
        /// Armed: Some(None) until the first BatchNorm's input is recorded.
        static FIRST: RefCell<Option<Option<Moments>>> = const { RefCell::new(None) };
    }

    /// Runs `forward` and returns the per-channel moments of the input of the first BatchNorm
    /// layer it ran (None without one).
    pub fn first_norm_input(forward: impl FnOnce()) -> Option<Moments> {
        FIRST.with(|f| *f.borrow_mut() = Some(None));
        forward();
        FIRST.with(|f| f.borrow_mut().take().flatten())
    }

    pub(super) fn record(x: &Tensor) {
        FIRST.with(|f| {
            if let Some(slot @ None) = f.borrow_mut().as_mut() {
                let dims = [0i64, 2, 3];
                *slot = Some(tch::no_grad(|| {
                    let x = x.detach().to_kind(Kind::Double);
                    (x.mean_dim(dims.as_slice(), false, None), x.var_dim(dims.as_slice(), false, false))
                }));
            }
        });
    }
}

/// The activation of a freshly computed tensor, which it takes: ReLU runs in place (its
/// backward needs only its output, and the convolutions, BatchNorm, linear layers and sums
/// that produce its input do not keep their outputs), one activation-sized buffer less per
/// layer to allocate and fault in.
pub fn activate(mut x: Tensor, a: Activation) -> Tensor {
    match a {
        Activation::Relu => x.relu_(),
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
            Some(bn) => bn.forward(&y, train, c),
            None => y,
        };
        activate(y, self.act)
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

    /// Synchronized BatchNorm over a world of one is BatchNorm: the same output, input and
    /// parameter gradients (through the differentiable all-reduce) and running statistics as
    /// libtorch's batch_norm, in NCHW and channels-last. (Two ranks against one process at
    /// twice the batch: tests/distributed.rs.)
    #[test]
    fn synchronized_batchnorm_over_one_rank_is_batchnorm() {
        synchronized_batchnorm_matches_batchnorm_on(Device::Cpu);
    }

    /// The same through NCCL on the GPU.
    #[test]
    fn cuda_synchronized_batchnorm_through_nccl_is_batchnorm() {
        if !tch::Cuda::is_available() {
            eprintln!("skipped: no CUDA on this machine");
            return;
        }
        synchronized_batchnorm_matches_batchnorm_on(Device::Cuda(0));
    }

    fn synchronized_batchnorm_matches_batchnorm_on(device: Device) {
        let group = crate::dist::solo_for_tests(device);
        for channels_last in [false, true] {
            let vs = VarStore::new(device);
            let layer = BatchNorm2d::new(vs.root() / "bn", 5);
            let bn = &layer.domains[0];
            tch::no_grad(|| {
                bn.weight.shallow_clone().copy_(&Tensor::from_slice(&[1.0f32, 0.5, 2.0, -1.0, 0.3]));
                bn.bias.shallow_clone().copy_(&Tensor::from_slice(&[0.1f32, 0.0, -0.2, 0.3, 1.0]));
            });
            tch::manual_seed(11);
            let x = (Tensor::randn([6, 5, 4, 3], (Kind::Float, Device::Cpu)) * 3.0 + 1.5).to_device(device);
            let x = if channels_last { to_channels_last(&x) } else { x };
            let probe = Tensor::randn([6, 5, 4, 3], (Kind::Float, Device::Cpu)).to_device(device);
            let run = |synced: bool| {
                let input = x.copy().set_requires_grad(true);
                for v in [&bn.weight, &bn.bias] {
                    let mut g = v.grad();
                    if g.defined() {
                        let _ = g.zero_();
                    }
                }
                let _ = bn.running_mean.shallow_clone().fill_(0.0);
                let _ = bn.running_var.shallow_clone().fill_(1.0);
                // No group is set for synchronization in this process: `forward` is libtorch's.
                let y = if synced {
                    bn.forward_synchronized(&input, &group)
                } else {
                    layer.forward(&input, true, Compute::fp32())
                };
                (&y * &probe).sum(Kind::Float).backward();
                [
                    y.detach(),
                    input.grad(),
                    bn.weight.grad(),
                    bn.bias.grad(),
                    bn.running_mean.copy(),
                    bn.running_var.copy(),
                ]
            };
            let (want, got) = (run(false), run(true));
            for (i, (w, g)) in want.iter().zip(&got).enumerate() {
                let err = (w - g).abs().max().double_value(&[]) / w.abs().max().double_value(&[]).max(1e-12);
                // TF32 convolutions play no part here; cuDNN's batch norm sums in another order.
                let tolerance = if device.is_cuda() { 1e-4 } else { 1e-5 };
                assert!(err < tolerance, "{device:?}, channels_last {channels_last}, output {i}: relative error {err}");
            }
        }
    }
}
