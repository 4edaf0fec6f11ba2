//! Parameters and gradients as views into two flat buffers.
//!
//! Every trainable variable's storage is moved into one flat tensor (`set_data` to a view),
//! and every gradient likewise into one flat gradient buffer; autograd accumulates into an
//! existing gradient in place, so after `backward` the flat buffer holds all gradients.
//! The optimizer then updates all parameters with a handful of kernels instead of several
//! per variable, and zeroing every gradient is one `zero_()`.
use tch::{Kind, Tensor};

pub struct FlatParams {
    /// Variable names, in buffer order.
    pub names: Vec<String>,
    /// (offset, numel) of each variable in the buffers.
    pub spans: Vec<(i64, i64)>,
    pub params: Tensor,
    pub grads: Tensor,
    vars: Vec<Tensor>,
}

impl FlatParams {
    /// Takes the trainable variables (all fp32, on one device) in a stable order.
    pub fn new(named: Vec<(String, Tensor)>) -> Self {
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
            let mut p_view = params.narrow(0, off, n).view(shape.as_slice());
            tch::no_grad(|| p_view.copy_(&var));
            let mut v = var.shallow_clone();
            v.set_data(&p_view);
            let mut g = var.grad();
            g.set_data(&grads.narrow(0, off, n).view(shape.as_slice()));
            vars.push(var);
            names.push(name);
        }
        Self { names, spans, params, grads, vars }
    }

    /// Zeroes every gradient (one kernel).
    pub fn zero_grad(&mut self) {
        let _ = self.grads.zero_();
    }

    /// The variables, in buffer order.
    pub fn vars(&self) -> &[Tensor] {
        &self.vars
    }

    /// The slice of a flat state buffer that belongs to variable `i`, shaped like it.
    pub fn slice_of(&self, buffer: &Tensor, i: usize) -> Tensor {
        let (off, n) = self.spans[i];
        buffer.narrow(0, off, n).view(self.vars[i].size().as_slice())
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
        let mut flat = FlatParams::new(vec![("a".into(), a.shallow_clone()), ("b".into(), b.shallow_clone())]);
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

    #[test]
    fn clipping_bounds_the_global_norm() {
        let vs = VarStore::new(tch::Device::Cpu);
        let a = vs.root().var("a", &[2], Init::Const(1.0));
        let mut flat = FlatParams::new(vec![("a".into(), a.shallow_clone())]);
        flat.zero_grad();
        (a.sum(Kind::Float) * 10.0).backward();
        flat.clip_grad_norm(1.0);
        let n = f64::try_from(flat.grads.norm()).unwrap();
        assert!((n - 1.0).abs() < 1e-4, "{n}");
    }
}
