//! Parameters and gradients as views into two flat buffers.
//!
//! Every trainable variable's storage is moved into one flat tensor (`set_data` to a view),
//! and every gradient likewise into one flat gradient buffer; autograd accumulates into an
//! existing gradient in place, so after `backward` the flat buffer holds all gradients.
//! The optimizer then updates all parameters with a handful of kernels instead of several
//! per variable, and zeroing every gradient is one `zero_()`.
//!
//! With `channels_last`, 4-D variables (convolution weights) are laid out `[O, kh, kw, I]` in
//! the buffers and viewed as `[O, I, kh, kw]` with channels-last strides. A channels-last
//! training forward then hands the convolution weights already in its layout: libtorch
//! otherwise copies every NCHW weight to channels-last in every forward and backward (in
//! PyTorch itself: +9 % on a ResNet-18 forward and backward at batch 16; docs/results/BENCHMARKS.md).
//! Everything element-wise (the optimizer, clipping, the all-reduce) sees the flat buffer and
//! does not care; what reads a variable by name sees its logical `[O, I, kh, kw]` values.
use tch::{Kind, Tensor};

pub struct FlatParams {
    /// Variable names, in buffer order.
    pub names: Vec<String>,
    /// (offset, numel) of each variable in the buffers.
    pub spans: Vec<(i64, i64)>,
    pub params: Tensor,
    pub grads: Tensor,
    vars: Vec<Tensor>,
    /// 4-D variables are laid out channels-last in the buffers.
    channels_last: bool,
}

/// A slice of a flat buffer as a variable of `shape`: row-major, or with `channels_last` and a
/// 4-D shape, `[O, kh, kw, I]` in memory viewed as `[O, I, kh, kw]`.
fn shaped(slice: Tensor, shape: &[i64], channels_last: bool) -> Tensor {
    if channels_last && shape.len() == 4 {
        slice.view([shape[0], shape[2], shape[3], shape[1]]).permute([0, 3, 1, 2])
    } else {
        slice.view(shape)
    }
}

impl FlatParams {
    /// Takes the trainable variables (all fp32, on one device) in a stable order; with
    /// `channels_last`, 4-D ones are laid out channels-last.
    pub fn new(named: Vec<(String, Tensor)>, channels_last: bool) -> Self {
        let device = named.first().map(|(_, t)| t.device()).unwrap_or(tch::Device::Cpu);
        let mut spans = Vec::with_capacity(named.len());
        let mut total = 0i64;
        for (_, t) in &named {
            let n = t.numel() as i64;
            spans.push((total, n));
            total += n;
        }
        let params = Tensor::zeros([total], (Kind::Float, device));
        let grads = Tensor::zeros([total], (Kind::Float, device));
        // A zero-valued backward gives every variable a gradient tensor we can then re-point.
        let probe = named.iter().map(|(_, t)| t.sum(Kind::Float)).reduce(|a, b| a + b);
        if let Some(probe) = probe {
            (probe * 0.0).backward();
        }
        let mut vars = Vec::with_capacity(named.len());
        let mut names = Vec::with_capacity(named.len());
        for ((name, var), &(off, n)) in named.into_iter().zip(&spans) {
            let shape = var.size();
            let mut p_view = shaped(params.narrow(0, off, n), &shape, channels_last);
            tch::no_grad(|| p_view.copy_(&var));
            let mut v = var.shallow_clone();
            v.set_data(&p_view);
            let mut g = var.grad();
            g.set_data(&shaped(grads.narrow(0, off, n), &shape, channels_last));
            vars.push(var);
            names.push(name);
        }
        Self { names, spans, params, grads, vars, channels_last }
    }

    /// Zeroes every gradient (one kernel).
    pub fn zero_grad(&mut self) {
        let _ = self.grads.zero_();
    }

    /// The variables, in buffer order.
    pub fn vars(&self) -> &[Tensor] {
        &self.vars
    }

    /// The slice of a flat state buffer that belongs to variable `i`, shaped (and laid out)
    /// like it.
    pub fn slice_of(&self, buffer: &Tensor, i: usize) -> Tensor {
        let (off, n) = self.spans[i];
        shaped(buffer.narrow(0, off, n), &self.vars[i].size(), self.channels_last)
    }

    /// Scales the gradients so their global L2 norm is at most `max_norm`; done with tensor
    /// ops so the norm is never read on the host.
    pub fn clip_grad_norm(&mut self, max_norm: f64) {
        let norm = self.grads.norm();
        let coef = (norm + 1e-6).reciprocal().g_mul_scalar(max_norm).clamp_max(1.0);
        let _ = self.grads.g_mul_(&coef);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::nn::{Init, VarStore};

    #[test]
    fn variables_and_gradients_alias_the_flat_buffers() {
        let vs = VarStore::new(tch::Device::Cpu);
        let a = vs.root().var("a", &[2, 2], Init::Const(1.0));
        let b = vs.root().var("b", &[3], Init::Const(2.0));
        let mut flat = FlatParams::new(vec![("a".into(), a.shallow_clone()), ("b".into(), b.shallow_clone())], false);
        assert_eq!(Vec::<f32>::try_from(&flat.params).unwrap(), vec![1., 1., 1., 1., 2., 2., 2.]);
        // Backward lands in the flat gradient buffer.
        flat.zero_grad();
        (a.sum(Kind::Float) * 3.0 + b.sum(Kind::Float)).backward();
        assert_eq!(Vec::<f32>::try_from(&flat.grads).unwrap(), vec![3., 3., 3., 3., 1., 1., 1.]);
        // Accumulates, and zero_grad clears all.
        (b.sum(Kind::Float)).backward();
        assert_eq!(Vec::<f32>::try_from(&flat.grads).unwrap()[4], 2.0);
        flat.zero_grad();
        assert_eq!(f64::try_from(flat.grads.sum(Kind::Float)).unwrap(), 0.0);
        // Updating the flat buffer updates the variables, also through the VarStore.
        tch::no_grad(|| {
            let _ = flat.params.g_add_scalar_(1.0);
        });
        assert_eq!(f64::try_from(vs.variables()["b"].sum(Kind::Float)).unwrap(), 9.0);
    }

    /// Channels-last layout: the buffer holds `[O, kh, kw, I]`, the variable, its gradient and
    /// state slices read as the same logical `[O, I, kh, kw]` values, and gradients still land
    /// in the buffer.
    #[test]
    fn four_dimensional_variables_can_live_channels_last() {
        let vs = VarStore::new(tch::Device::Cpu);
        let w = vs.root().var("w", &[2, 3, 2, 2], Init::Const(0.0));
        let values = Tensor::arange(24, (Kind::Float, tch::Device::Cpu)).view([2, 3, 2, 2]);
        tch::no_grad(|| w.shallow_clone().copy_(&values));
        let b = vs.root().var("b", &[2], Init::Const(5.0));
        let mut flat = FlatParams::new(vec![("w".into(), w.shallow_clone()), ("b".into(), b.shallow_clone())], true);
        assert!(w.equal(&values), "same logical values");
        assert!(crate::model::layers::is_channels_last(&w) && !crate::model::layers::is_channels_last(&b));
        let nhwc = values.permute([0, 2, 3, 1]).contiguous().view([-1]);
        assert!(flat.params.narrow(0, 0, 24).equal(&nhwc), "the buffer holds [O, kh, kw, I]");
        flat.zero_grad();
        (&w * &values).sum(Kind::Float).backward();
        assert!(w.grad().equal(&values) && flat.grads.narrow(0, 0, 24).equal(&nhwc));
        assert!(flat.slice_of(&flat.params, 0).equal(&values) && flat.slice_of(&flat.params, 1).equal(&b));
        let off = FlatParams::new(vec![("w".into(), w.shallow_clone())], false);
        assert!(off.params.equal(&values.view([-1])), "without the switch: row-major");
    }

    #[test]
    fn clipping_bounds_the_global_norm() {
        let vs = VarStore::new(tch::Device::Cpu);
        let a = vs.root().var("a", &[2], Init::Const(1.0));
        let mut flat = FlatParams::new(vec![("a".into(), a.shallow_clone())], false);
        flat.zero_grad();
        (a.sum(Kind::Float) * 10.0).backward();
        flat.clip_grad_norm(1.0);
        let n = f64::try_from(flat.grads.norm()).unwrap();
        assert!((n - 1.0).abs() < 1e-4, "{n}");
    }
}
