//! Autograd plumbing shared by every method: per-task gradients in either space, the Gram
//! matrix on the host, and writing a combined direction into `.grad`.
//!
//! Writing `.grad`: tch 0.24 has no setter for a tensor's gradient, and the trainer may
//! leave gradients undefined rather than zero. Backpropagating `Σ (p · d.detach()).sum()`
//! accumulates exactly `d` into `p.grad` (the backward of a product with a constant is
//! `1 · d`), creating it when undefined; with the trainer's zeroed gradients that *is* the
//! update. One such pass over cheap elementwise nodes costs far less than a backbone backward.
use super::solvers::Mat;
use super::{GradientSpace, StepContext};
use crate::transfer::{f32_values, upload};
use anyhow::Context;
use tch::{Kind, Tensor};

/// Per-task gradients of one step.
pub struct TaskGrads {
    /// `[T, P]`: row `i` is the gradient of task `i`'s loss w.r.t. the shared inputs
    /// (parameters or feature maps, flattened and concatenated in order).
    pub matrix: Tensor,
    /// For each task, the gradients of its own head's parameters (zeros where unused).
    pub heads: Vec<Vec<Tensor>>,
}

/// The `[T, P]` gradient matrix's memory, kept from one step to the next. A fresh matrix each
/// step is above glibc's largest mmap threshold at a few tasks in representation space (88 MB
/// at T = 8, batch 64, the default model), so the kernel faulted in and zeroed every page of it
/// again each step (docs/results/BENCHMARKS.md). Every step overwrites all of it.
#[derive(Default)]
pub struct MatrixBuffer(Option<Tensor>);

impl MatrixBuffer {
    fn take(&mut self, rows: i64, cols: i64, kind: Kind, device: tch::Device) -> Tensor {
        match &self.0 {
            Some(m) if m.size() == [rows, cols] && m.kind() == kind && m.device() == device => m.shallow_clone(),
            _ => {
                self.0 = None; // the old buffer goes before the new one is allocated
                let m = Tensor::empty([rows, cols], (kind, device));
                self.0 = Some(m.shallow_clone());
                m
            }
        }
    }
}

/// The tensors per-task gradients are taken with respect to in `space`.
fn shared_inputs<'a>(ctx: &StepContext<'a>, space: GradientSpace) -> anyhow::Result<&'a [Tensor]> {
    match space {
        GradientSpace::Params => Ok(ctx.shared_params),
        GradientSpace::Representation => ctx.features.map(|(_, detached)| detached).ok_or_else(missing_features),
        GradientSpace::Losses => {
            anyhow::bail!("balance: per-task gradients requested in loss space")
        }
    }
}

fn missing_features() -> anyhow::Error {
    anyhow::anyhow!(
        "balance: representation space needs StepContext.features (the trainer must run the \
         heads on detached copies of the backbone's features)"
    )
}

/// Gradients of every task's loss w.r.t. the shared inputs and its own head: one
/// `run_backward` per task, keeping the graph for all but the last one. The matrix lives in
/// `buffer`'s memory (valid until the next call).
pub fn task_gradients(ctx: &StepContext, space: GradientSpace, buffer: &mut MatrixBuffer) -> anyhow::Result<TaskGrads> {
    let inputs = shared_inputs(ctx, space)?;
    let t = ctx.losses.len();
    anyhow::ensure!(t > 0, "balance: no task losses");
    anyhow::ensure!(ctx.head_params.len() == t, "balance: {t} losses but {} heads", ctx.head_params.len());
    let sizes: Vec<i64> = inputs.iter().map(|x| x.numel() as i64).collect();
    let total: i64 = sizes.iter().sum();
    let device = ctx.losses[0].device();
    let kind = match inputs.first().map(Tensor::kind) {
        Some(Kind::Double) => Kind::Double,
        _ => Kind::Float,
    };
    let matrix = buffer.take(t as i64, total, kind, device);
    let mut heads = Vec::with_capacity(t);
    for (i, loss) in ctx.losses.iter().enumerate() {
        let head = &ctx.head_params[i];
        let grads: Vec<Tensor> = if loss.requires_grad() {
            let wrt: Vec<&Tensor> = inputs.iter().chain(head.iter()).collect();
            Tensor::f_run_backward(&[loss], &wrt, i + 1 < t, false)
                .with_context(|| format!("balance: gradient of task {i}'s loss"))?
        } else {
            Vec::new()
        };
        let grad_of = |k: usize, like: &Tensor| match grads.get(k) {
            Some(g) if g.defined() => g.shallow_clone(),
            _ => like.zeros_like(),
        };
        tch::no_grad(|| {
            let row = matrix.get(i as i64);
            let mut offset = 0;
            for (k, &n) in sizes.iter().enumerate() {
                let mut part = row.narrow(0, offset, n);
                match grads.get(k).filter(|g| g.defined()) {
                    Some(g) => part.copy_(&g.reshape([-1])),
                    None => {
                        let _ = part.zero_();
                    }
                }
                offset += n;
            }
        });
        heads.push(head.iter().enumerate().map(|(k, p)| grad_of(inputs.len() + k, p)).collect());
    }
    Ok(TaskGrads { matrix, heads })
}

/// In a distributed run, the per-task gradients of the whole global batch, the same on every
/// rank. Parameters: the mean over the ranks (each rank's rows are the gradients of its own
/// batch's mean loss). Representation: each rank's columns belong to its own samples, so the
/// ranks' matrices are concatenated (all-gathered, in rank order) and divided by the world
/// size (a sample's share of the global batch's mean loss); the columns come rank by rank,
/// a permutation of one process's order that no method's result depends on.
pub fn across_ranks(ctx: &StepContext, space: GradientSpace, matrix: Tensor) -> Tensor {
    let Some(g) = ctx.ranks else { return matrix };
    match space {
        GradientSpace::Representation => Tensor::cat(&g.all_gather(&matrix), 1) / g.world() as f64,
        GradientSpace::Params | GradientSpace::Losses => {
            g.mean_(&matrix);
            matrix
        }
    }
}

/// The part of a direction over [`across_ranks`]' columns that this rank applies. In
/// representation space that is its own samples' slice, times the world size: the trainer
/// then averages the ranks' parameter gradients, which gives the sum over the ranks' slices,
/// as one process backpropagating the whole direction gets.
pub fn own_part(ctx: &StepContext, space: GradientSpace, direction: &Tensor) -> Tensor {
    match (ctx.ranks, space) {
        (Some(g), GradientSpace::Representation) => {
            let n = direction.size()[0] / g.world() as i64;
            direction.narrow(0, g.rank() as i64 * n, n) * g.world() as f64
        }
        _ => direction.shallow_clone(),
    }
}

/// Writes the update: the shared inputs get `direction` (in params space straight into the
/// parameters' `.grad`; in representation space backpropagated through the backbone as
/// `Σ_k (z_k · d_k).sum()`), and each head gets its own gradient times `head_weights[i]`.
pub fn apply(
    ctx: &StepContext,
    space: GradientSpace,
    direction: &Tensor,
    heads: &[Vec<Tensor>],
    head_weights: &Tensor,
) -> anyhow::Result<()> {
    let targets: &[Tensor] = match (space, ctx.features) {
        (GradientSpace::Representation, Some((backbone_out, _))) => backbone_out,
        (GradientSpace::Representation, None) => return Err(missing_features()),
        _ => ctx.shared_params,
    };
    let sizes: Vec<i64> = targets.iter().map(|x| x.numel() as i64).collect();
    anyhow::ensure!(
        direction.numel() as i64 == sizes.iter().sum::<i64>(),
        "balance: direction has {} entries, the shared inputs {}",
        direction.numel(),
        sizes.iter().sum::<i64>()
    );
    let mut terms = Vec::new();
    for (x, d) in targets.iter().zip(direction.detach().split_with_sizes(&sizes, 0)) {
        if x.requires_grad() {
            terms.push((x * d.view(x.size().as_slice()).to_kind(x.kind())).sum(x.kind()));
        }
    }
    let head_weights = head_weights.detach().clamp_min(0.0);
    for (i, (params, grads)) in ctx.head_params.iter().zip(heads).enumerate() {
        let w = head_weights.get(i as i64);
        for (p, g) in params.iter().zip(grads) {
            let scaled = (g * w.to_kind(g.kind())).to_kind(p.kind());
            terms.push((p * scaled).sum(p.kind()));
        }
    }
    backward_sum(terms)
}

/// [`backward_weighted`] with weights from the host (uploaded without a host sync); returns
/// them as the step's per-task weights.
pub fn backward_with_weights(ctx: &StepContext, weights: &[f64]) -> anyhow::Result<Tensor> {
    anyhow::ensure!(!ctx.losses.is_empty(), "balance: no task losses");
    let w = f32_values(weights, ctx.losses[0].device());
    backward_weighted(ctx, &w)?;
    Ok(w)
}

/// Backpropagates `Σ_i w_i l_i` with detached weights. When the heads ran on detached
/// features, the gradient that reached those copies is then sent through the backbone, so
/// loss-level methods work whichever way the trainer ran the heads.
pub fn backward_weighted(ctx: &StepContext, weights: &Tensor) -> anyhow::Result<()> {
    anyhow::ensure!(!ctx.losses.is_empty(), "balance: no task losses");
    let w = weights.detach();
    let terms: Vec<Tensor> = ctx
        .losses
        .iter()
        .enumerate()
        .filter(|(_, l)| l.requires_grad())
        .map(|(i, l)| l * w.get(i as i64).to_kind(l.kind()))
        .collect();
    backward_sum(terms)?;
    if let Some((backbone_out, detached)) = ctx.features {
        let terms: Vec<Tensor> = backbone_out
            .iter()
            .zip(detached)
            .filter_map(|(z, h)| {
                let g = h.grad();
                (g.defined() && z.requires_grad()).then(|| (z * g.to_kind(z.kind())).sum(z.kind()))
            })
            .collect();
        backward_sum(terms)?;
    }
    Ok(())
}

fn backward_sum(terms: Vec<Tensor>) -> anyhow::Result<()> {
    if let Some(total) = terms.into_iter().reduce(|a, b| a + b) {
        total.f_backward().context("balance: backward")?;
    }
    Ok(())
}

/// Columns of the gradient matrix converted to `f64` at a time by [`gram`].
const GRAM_CHUNK: i64 = 1 << 18;

/// The Gram matrix `G Gᵀ` of the rows of `grads`, accumulated in `f64` (near-parallel
/// gradients need the digits) and brought to the host: the one synchronisation of a gradient
/// method. A contiguous fp32 CPU matrix is read in place by [`super::blocked_gram`] (one pass,
/// skipping zero blocks; 3–4× faster than the tensor path at T = 8). Otherwise (CUDA, other
/// kinds) the `f64` copy is made a block of columns at a time, so a step never holds an `f64`
/// copy of the whole `[T, P]` matrix (twice its size: ~44 MB for the default config's feature
/// maps at batch 64).
pub fn gram(grads: &Tensor) -> anyhow::Result<Mat> {
    let size = grads.size();
    let (n, cols) = (size.first().copied().unwrap_or(0), size.get(1).copied().unwrap_or(0));
    if let Some(values) = crate::transfer::host_f32(grads).filter(|_| size.len() == 2) {
        return Ok(Mat::from_rows(n as usize, super::blocked_gram::gram(values, n as usize, cols as usize)));
    }
    let mut m = Tensor::zeros([n, n], (Kind::Double, grads.device()));
    for start in (0..cols).step_by(GRAM_CHUNK as usize) {
        let block = grads.narrow(1, start, GRAM_CHUNK.min(cols - start)).to_kind(Kind::Double);
        m += block.matmul(&block.tr());
    }
    Ok(Mat::from_rows(n as usize, host_vec(&m)?))
}

/// A tensor's values as `f64` on the host.
pub fn host_vec(t: &Tensor) -> anyhow::Result<Vec<f64>> {
    let flat = t.detach().to_device(tch::Device::Cpu).to_kind(Kind::Double).reshape([-1]);
    Vec::<f64>::try_from(&flat).context("balance: reading a tensor on the host")
}

/// `values` as a tensor with `like`'s kind and device.
pub fn tensor_like(values: &[f64], like: &Tensor) -> Tensor {
    upload(&Tensor::from_slice(values).to_kind(like.kind()), like.device())
}

/// `Σ_i coef_i · rows_i` for a `[T, P]` matrix.
pub fn combine_rows(rows: &Tensor, coef: &[f64]) -> Tensor {
    tensor_like(coef, rows).unsqueeze(0).matmul(rows).squeeze_dim(0)
}

/// The losses of a step as one detached `[T]` tensor.
pub fn stacked_losses(losses: &[Tensor]) -> Tensor {
    let flat: Vec<Tensor> = losses.iter().map(|l| l.detach().reshape([1])).collect();
    Tensor::cat(&flat, 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gram_over_several_column_blocks_matches_the_whole_product() {
        tch::manual_seed(5);
        let cols = 2 * GRAM_CHUNK + 1234;
        let g = Tensor::randn([3, cols], (Kind::Float, tch::Device::Cpu));
        let whole = g.to_kind(Kind::Double).matmul(&g.to_kind(Kind::Double).tr());
        let want = host_vec(&whole).unwrap();
        let got = gram(&g).unwrap();
        for i in 0..3 {
            for j in 0..3 {
                let (a, b) = (got[(i, j)], want[i * 3 + j]);
                assert!((a - b).abs() <= 1e-9 * b.abs().max(1.0), "({i},{j}): {a} vs {b}");
            }
        }
    }
}
