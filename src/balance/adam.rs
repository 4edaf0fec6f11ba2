//! Adam for a balancer's own few parameters (uncertainty's log-variances, FAMO's logits,
//! GradNorm's weight logits), following `torch.optim.Adam` exactly (weight decay added to the
//! gradient, bias-corrected moments). Its moments are tensors on the parameter's device and
//! part of the checkpoint, so a resumed run continues identically.
use super::state;
use tch::{Kind, Tensor};

pub struct Adam {
    lr: f64,
    weight_decay: f64,
    beta1: f64,
    beta2: f64,
    eps: f64,
    m: Tensor,
    v: Tensor,
    steps: i64,
}

impl Adam {
    /// Adam with the default betas (0.9, 0.999) and eps 1e-8 for a `[n]` parameter.
    pub fn new(n: usize, lr: f64, weight_decay: f64, kind: Kind) -> Self {
        let zeros = || Tensor::zeros([n as i64], (kind, tch::Device::Cpu));
        Self { lr, weight_decay, beta1: 0.9, beta2: 0.999, eps: 1e-8, m: zeros(), v: zeros(), steps: 0 }
    }

    /// One update of `param` (replaced by the new value) with gradient `grad`.
    pub fn step(&mut self, param: &mut Tensor, grad: &Tensor) {
        tch::no_grad(|| {
            let device = param.device();
            let g = grad.to_kind(param.kind()).to_device(device) + &*param * self.weight_decay;
            self.steps += 1;
            self.m = self.m.to_device(device) * self.beta1 + &g * (1.0 - self.beta1);
            self.v = self.v.to_device(device) * self.beta2 + &g * &g * (1.0 - self.beta2);
            let c1 = 1.0 - self.beta1.powi(self.steps as i32);
            let c2 = 1.0 - self.beta2.powi(self.steps as i32);
            let denom = self.v.sqrt() / c2.sqrt() + self.eps;
            *param = &*param - (&self.m / denom) * (self.lr / c1);
        })
    }

    pub fn state(&self, prefix: &str) -> Vec<(String, Tensor)> {
        vec![
            (format!("{prefix}adam_m"), self.m.shallow_clone()),
            (format!("{prefix}adam_v"), self.v.shallow_clone()),
            (format!("{prefix}adam_steps"), state::count(self.steps)),
        ]
    }

    pub fn load_state(&mut self, tensors: &[(String, Tensor)], prefix: &str) -> anyhow::Result<()> {
        let n = self.m.size();
        let kind = self.m.kind();
        self.m = state::get(tensors, &format!("{prefix}adam_m"), &n)?.to_kind(kind);
        self.v = state::get(tensors, &format!("{prefix}adam_v"), &n)?.to_kind(kind);
        self.steps = state::get_count(tensors, &format!("{prefix}adam_steps"))?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_torch_adam_by_hand() {
        // Two steps of torch.optim.Adam(lr=0.1, weight_decay=0.01) on p = [1, -2] with
        // gradients [0.5, 0.5] then [-1, 2], written out by hand.
        let mut p = Tensor::from_slice(&[1.0f64, -2.0]);
        let mut adam = Adam::new(2, 0.1, 0.01, Kind::Double);
        let mut want = [1.0f64, -2.0];
        let (mut m, mut v) = ([0.0f64; 2], [0.0f64; 2]);
        for (t, g) in [[0.5f64, 0.5], [-1.0, 2.0]].iter().enumerate() {
            adam.step(&mut p, &Tensor::from_slice(g));
            for i in 0..2 {
                let gi = g[i] + 0.01 * want[i];
                m[i] = 0.9 * m[i] + 0.1 * gi;
                v[i] = 0.999 * v[i] + 0.001 * gi * gi;
                let c1 = 1.0 - 0.9f64.powi(t as i32 + 1);
                let c2 = 1.0 - 0.999f64.powi(t as i32 + 1);
                want[i] -= 0.1 / c1 * m[i] / (v[i].sqrt() / c2.sqrt() + 1e-8);
            }
        }
        let got = Vec::<f64>::try_from(&p).unwrap();
        for i in 0..2 {
            assert!((got[i] - want[i]).abs() < 1e-12, "{got:?} vs {want:?}");
        }
    }
}
