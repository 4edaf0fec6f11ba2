//! GradNorm (Chen et al. 2018): `w = T · softmax(s)`, `d = Σ w_i g_i`, heads weighted by `w`.
//! With `L̃_i = l_i / l_i(0)` (losses of the first step), `r_i = L̃_i / mean(L̃)` and
//! `G_i = w_i ‖g_i‖`, the logits `s` descend `Σ |G_i − mean(G) r_i^a|` (target detached,
//! asymmetry `a` = option `alpha`, 1.5) by an Adam step of their own (option `lr`).
//!
//! `‖g_i‖` is the norm of the per-task gradient in the configured space (all shared
//! parameters, or the representation), not of "the last shared layer": those gradients are
//! already at hand, and the paper's choice of layer is a cost saving. The gradient w.r.t.
//! `s` is closed-form: `∂/∂w_i = sign(G_i − target_i) ‖g_i‖`, `∂w/∂s = T (diag p − p pᵀ)`.
//! State: `s`, its Adam moments, and the initial losses.
use super::adam::Adam;
use super::autograd::{host_vec, tensor_like};
use super::gradient_method::{Combination, GradientMethod};
use super::options::Options;
use super::Balancer;
use super::{softmax, state, StepContext};
use tch::{Kind, Tensor};

pub(super) fn build(o: &mut Options, tasks: usize) -> anyhow::Result<Box<dyn Balancer>> {
    let asymmetry = o.non_negative("alpha", 1.5)?;
    let lr = o.positive("lr", 0.025)?;
    o.gradient_method(GradNorm::new(tasks, asymmetry, lr))
}

pub struct GradNorm {
    asymmetry: f64,
    logits: Tensor,
    adam: Adam,
    initial_losses: Option<Vec<f64>>,
}

impl GradNorm {
    pub fn new(tasks: usize, asymmetry: f64, lr: f64) -> Self {
        Self {
            asymmetry,
            logits: Tensor::zeros([tasks as i64], (Kind::Double, tch::Device::Cpu)),
            adam: Adam::new(tasks, lr, 0.0, Kind::Double),
            initial_losses: None,
        }
    }

    /// The current weights `T · softmax(s)`.
    pub fn weights(&self) -> anyhow::Result<Vec<f64>> {
        let p = softmax(&host_vec(&self.logits)?);
        Ok(p.iter().map(|v| v * p.len() as f64).collect())
    }

    /// `d = Σ w_i g_i` with the current weights, then one update of `s`.
    pub fn combine(&mut self, grads: &Tensor, losses: &Tensor) -> anyhow::Result<Combination> {
        let t = self.logits.size()[0] as usize;
        anyhow::ensure!(
            grads.size()[0] as usize == t,
            "balance: gradnorm built for {t} tasks, got {}",
            grads.size()[0]
        );
        let w = self.weights()?;
        let comb = Combination::weighted(grads, &w);
        let norms = host_vec(&grads.to_kind(Kind::Double).square().sum_dim_intlist(1, false, Kind::Double).sqrt())?;
        let losses = host_vec(losses)?;
        let initial = self.initial_losses.get_or_insert_with(|| losses.clone());
        let ratios: Vec<f64> = losses
            .iter()
            .zip(initial.iter())
            .map(|(l, l0)| if *l0 > 0.0 && (l / l0).is_finite() { l / l0 } else { 1.0 })
            .collect();
        let mean_ratio = ratios.iter().sum::<f64>() / t as f64;
        let g: Vec<f64> = w.iter().zip(&norms).map(|(wi, n)| wi * n).collect();
        let mean_g = g.iter().sum::<f64>() / t as f64;
        // ∂/∂w_i of Σ|G_i − target_i|, then through w = T softmax(s).
        let dw: Vec<f64> = (0..t)
            .map(|i| {
                let r = if mean_ratio > 0.0 { ratios[i] / mean_ratio } else { 1.0 };
                let diff = g[i] - mean_g * r.powf(self.asymmetry);
                if diff > 0.0 {
                    norms[i]
                } else if diff < 0.0 {
                    -norms[i]
                } else {
                    0.0
                }
            })
            .collect();
        let p: Vec<f64> = w.iter().map(|wi| wi / t as f64).collect();
        let pd: f64 = p.iter().zip(&dw).map(|(a, b)| a * b).sum();
        let ds: Vec<f64> = (0..t).map(|i| t as f64 * p[i] * (dw[i] - pd)).collect();
        let grad = tensor_like(&ds, &self.logits);
        self.adam.step(&mut self.logits, &grad);
        Ok(comb)
    }
}

impl GradientMethod for GradNorm {
    fn name(&self) -> &'static str {
        "gradnorm"
    }

    fn combine_step(&mut self, grads: &Tensor, losses: &Tensor, _ctx: &StepContext) -> anyhow::Result<Combination> {
        self.combine(grads, losses)
    }

    fn state(&self) -> Vec<(String, Tensor)> {
        let t = self.logits.size()[0] as usize;
        let mut s = vec![
            ("logits".to_string(), self.logits.shallow_clone()),
            ("initial_losses".to_string(), state::vec(self.initial_losses.as_deref().unwrap_or(&vec![0.0; t]))),
            ("has_initial_losses".to_string(), state::count(self.initial_losses.is_some() as i64)),
        ];
        s.extend(self.adam.state(""));
        s
    }

    fn load_state(&mut self, tensors: &[(String, Tensor)]) -> anyhow::Result<()> {
        let t = self.logits.size()[0] as usize;
        self.logits = state::get(tensors, "logits", &[t as i64])?.to_kind(Kind::Double);
        let initial = state::get_vec(tensors, "initial_losses", t)?;
        self.initial_losses = (state::get_count(tensors, "has_initial_losses")? != 0).then_some(initial);
        self.adam.load_state(tensors, "")
    }
}
