//! Optimizers with explicit, checkpointable state (libtorch's C++ optimizers hide theirs,
//! which would make exact resume impossible). They update the flat buffers of [`FlatParams`]
//! following PyTorch's update rules.
pub mod flat;
pub mod fused;
pub mod schedule;

use crate::config::{OptimConfig, OptimKind};
use flat::FlatParams;
use tch::Tensor;

pub struct Optimizer {
    cfg: OptimConfig,
    pub flat: FlatParams,
    /// AdamW: `exp_avg`, `exp_avg_sq`; SGD: `momentum_buffer` (when momentum > 0).
    buffers: Vec<(&'static str, Tensor)>,
    /// Updates done so far (AdamW's bias correction; SGD's first-step momentum rule).
    pub steps: u64,
    /// Whether CPU buffers take the single-pass path of [`fused`] (`speed.fused_optimizer`;
    /// the tests turn it off to compare it with the tensor-op path CUDA takes).
    fused: bool,
}

impl Optimizer {
    /// `fused`: update CPU buffers in one pass ([`fused`]); buffers elsewhere take tensor ops.
    pub fn new(cfg: &OptimConfig, flat: FlatParams, fused: bool) -> Self {
        let names: &[&'static str] = match cfg.kind {
            OptimKind::Adamw => &["exp_avg", "exp_avg_sq"],
            OptimKind::Sgd if cfg.momentum > 0.0 => &["momentum_buffer"],
            OptimKind::Sgd => &[],
        };
        let buffers = names.iter().map(|&n| (n, flat.params.zeros_like())).collect();
        Self { cfg: cfg.clone(), flat, buffers, steps: 0, fused }
    }

    pub fn zero_grad(&mut self) {
        self.flat.zero_grad();
    }

    /// One update with learning rate `lr` from the gradients in the flat buffer.
    pub fn step(&mut self, lr: f64) {
        if self.cfg.grad_clip > 0.0 {
            self.flat.clip_grad_norm(self.cfg.grad_clip);
        }
        self.steps += 1;
        tch::no_grad(|| match self.cfg.kind {
            OptimKind::Adamw => self.adamw(lr),
            OptimKind::Sgd => self.sgd(lr),
        });
    }

    /// torch.optim.AdamW: decoupled decay, then Adam with bias correction. Buffers in CPU
    /// memory take one pass ([`fused`]); CUDA buffers ten elementwise kernels.
    fn adamw(&mut self, lr: f64) {
        let (b1, b2) = self.cfg.betas;
        let t = self.steps as i32;
        let bias1 = 1.0 - b1.powi(t);
        let bias2 = 1.0 - b2.powi(t);
        let p = &mut self.flat.params;
        let g = &self.flat.grads;
        let [(_, m), (_, v)] = &mut self.buffers[..] else { unreachable!("AdamW has two buffers") };
        if self.fused && fused::applies(&[p, g, m, v]) {
            let s = fused::AdamWStep {
                decay: (1.0 - lr * self.cfg.weight_decay) as f32,
                one_minus_b1: (1.0 - b1) as f32,
                b2: b2 as f32,
                one_minus_b2: (1.0 - b2) as f32,
                bias2_sqrt: bias2.sqrt() as f32,
                eps: self.cfg.eps as f32,
                neg_step_size: (-lr / bias1) as f32,
            };
            return fused::adamw(p, g, m, v, s, tch::get_num_threads().max(1) as usize);
        }
        if self.cfg.weight_decay != 0.0 {
            let _ = p.g_mul_scalar_(1.0 - lr * self.cfg.weight_decay);
        }
        let _ = m.lerp_(g, 1.0 - b1);
        let _ = v.g_mul_scalar_(b2);
        let _ = v.addcmul_(&g.g_mul_scalar(1.0 - b2), g);
        let denom = (v.sqrt() / bias2.sqrt()).g_add_scalar_(self.cfg.eps);
        let _ = p.addcdiv_(&m.g_mul_scalar(-lr / bias1), &denom);
    }

    /// torch.optim.SGD: L2 weight decay into the gradient, momentum (buffer = gradient on
    /// the first step), optional Nesterov. One pass in CPU memory, as for AdamW.
    fn sgd(&mut self, lr: f64) {
        let p = &mut self.flat.params;
        let g = &self.flat.grads;
        if self.fused && fused::applies(&[&*p, g]) && self.buffers.iter().all(|(_, b)| fused::applies(&[g, b])) {
            let s = fused::SgdStep {
                weight_decay: self.cfg.weight_decay as f32,
                momentum: self.cfg.momentum as f32,
                nesterov: self.cfg.nesterov,
                first: self.steps == 1,
                neg_lr: -lr as f32,
            };
            return fused::sgd(p, g, self.buffers.first().map(|(_, b)| b), s, tch::get_num_threads().max(1) as usize);
        }
        let mut d =
            if self.cfg.weight_decay != 0.0 { g + p.g_mul_scalar(self.cfg.weight_decay) } else { g.shallow_clone() };
        if let Some((_, buf)) = self.buffers.first_mut() {
            if self.steps == 1 {
                buf.copy_(&d);
            } else {
                let _ = buf.g_mul_scalar_(self.cfg.momentum).g_add_(&d);
            }
            d = if self.cfg.nesterov { d + buf.g_mul_scalar(self.cfg.momentum) } else { buf.shallow_clone() };
        }
        let _ = p.g_add_(&d.g_mul_scalar(-lr));
    }

    /// The flat parameters after a step along `grads` alone (a flat gradient, laid out as
    /// [`FlatParams::grads`]) with learning rate `lr`, computed from the current state without
    /// changing it: TAG's lookahead (docs/TRANSFER.md). The step is the optimizer's, less what
    /// does not depend on `grads`: SGD `p − lr·g`; AdamW `p − lr·g / (√v̂ + ε)` with `v̂` the
    /// bias-corrected second moment after taking `g` in. Momentum (the past steps' direction,
    /// nine tenths of an Adam step) and weight decay would move every lookahead alike and
    /// drown the differences between tasks. Gradient clipping applies to `grads` as to a
    /// step's gradient.
    pub fn lookahead(&self, lr: f64, grads: &Tensor) -> Tensor {
        tch::no_grad(|| {
            let p = &self.flat.params;
            // A new tensor, never `*=`: `grads` is the caller's.
            let g = match self.cfg.grad_clip > 0.0 {
                true => grads * (grads.norm() + 1e-6).reciprocal().g_mul_scalar(self.cfg.grad_clip).clamp_max(1.0),
                false => grads.shallow_clone(),
            };
            match self.cfg.kind {
                OptimKind::Adamw => {
                    let b2 = self.cfg.betas.1;
                    let bias2 = 1.0 - b2.powi((self.steps + 1) as i32);
                    let (_, v) = &self.buffers[1];
                    let v = v * b2 + (&g * &g) * (1.0 - b2);
                    let denom = (v / bias2).sqrt() + self.cfg.eps;
                    p - (g / denom) * lr
                }
                OptimKind::Sgd => p - g * lr,
            }
        })
    }

    /// State tensors keyed `<buffer>.<variable name>`, for the checkpoint.
    pub fn state(&self) -> Vec<(String, Tensor)> {
        let mut out = Vec::new();
        for (buf_name, buf) in &self.buffers {
            for (i, name) in self.flat.names.iter().enumerate() {
                out.push((format!("{buf_name}.{name}"), self.flat.slice_of(buf, i)));
            }
        }
        out
    }

    /// Restores [`Optimizer::state`]; every expected key must be present with the right shape.
    pub fn load_state(&mut self, lookup: &dyn Fn(&str) -> Option<Tensor>, steps: u64) -> anyhow::Result<()> {
        for (buf_name, buf) in &self.buffers {
            for (i, name) in self.flat.names.iter().enumerate() {
                let key = format!("{buf_name}.{name}");
                let src = lookup(&key).ok_or_else(|| crate::user_error!("missing optimizer state '{key}'"))?;
                let mut dst = self.flat.slice_of(buf, i);
                if src.size() != dst.size() {
                    crate::user_bail!("optimizer state '{key}' has shape {:?}, expected {:?}", src.size(), dst.size());
                }
                tch::no_grad(|| dst.copy_(&src));
            }
        }
        self.steps = steps;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::nn::{Init, VarStore};
    use tch::Kind;

    fn one_param(value: f64) -> (VarStore, Tensor, FlatParams) {
        let vs = VarStore::new(tch::Device::Cpu);
        let w = vs.root().var("w", &[1], Init::Const(value));
        let flat = FlatParams::new(vec![("w".into(), w.shallow_clone())], false);
        (vs, w, flat)
    }

    fn run(cfg: OptimConfig, grads: &[f64]) -> f64 {
        let (_vs, w, flat) = one_param(1.0);
        let mut opt = Optimizer::new(&cfg, flat, true);
        for &g in grads {
            opt.zero_grad();
            (w.sum(Kind::Float) * g).backward();
            opt.step(0.1);
        }
        w.double_value(&[0])
    }

    #[test]
    fn adamw_matches_the_pytorch_rule_by_hand() {
        let cfg = OptimConfig { weight_decay: 0.01, ..OptimConfig::default() };
        let got = run(cfg, &[0.5, -0.25]);
        // By hand, PyTorch's AdamW with lr 0.1, betas (0.9, 0.999), eps 1e-8, wd 0.01.
        let (mut p, mut m, mut v) = (1.0f64, 0.0, 0.0);
        for (t, g) in [0.5f64, -0.25].iter().enumerate() {
            let t = (t + 1) as i32;
            p *= 1.0 - 0.1 * 0.01;
            m = 0.9 * m + 0.1 * g;
            v = 0.999 * v + 0.001 * g * g;
            let denom = (v / (1.0 - 0.999f64.powi(t))).sqrt() + 1e-8;
            p -= 0.1 / (1.0 - 0.9f64.powi(t)) * m / denom;
        }
        assert!((got - p).abs() < 1e-6, "{got} vs {p}");
    }

    #[test]
    fn sgd_nesterov_matches_the_pytorch_rule_by_hand() {
        let cfg = OptimConfig {
            kind: OptimKind::Sgd,
            momentum: 0.9,
            nesterov: true,
            weight_decay: 0.1,
            ..OptimConfig::default()
        };
        let got = run(cfg, &[1.0, 2.0, -1.0]);
        let (mut p, mut buf) = (1.0f64, 0.0);
        for (i, g) in [1.0f64, 2.0, -1.0].iter().enumerate() {
            let d = g + 0.1 * p;
            buf = if i == 0 { d } else { 0.9 * buf + d };
            p -= 0.1 * (d + 0.9 * buf);
        }
        assert!((got - p).abs() < 1e-6, "{got} vs {p}");
    }

    /// The single-pass CPU update and the tensor-op update (CUDA's) compute the same thing, for
    /// every optimizer variant, over several steps and on a buffer large enough to be split
    /// across threads.
    #[test]
    fn fused_cpu_path_matches_the_tensor_op_path() {
        let variants = [
            OptimConfig { weight_decay: 0.01, ..OptimConfig::default() },
            OptimConfig { weight_decay: 0.0, betas: (0.8, 0.99), eps: 1e-6, ..OptimConfig::default() },
            OptimConfig { kind: OptimKind::Sgd, ..OptimConfig::default() },
            OptimConfig { kind: OptimKind::Sgd, weight_decay: 0.1, ..OptimConfig::default() },
            OptimConfig { kind: OptimKind::Sgd, momentum: 0.9, weight_decay: 5e-4, ..OptimConfig::default() },
            OptimConfig {
                kind: OptimKind::Sgd,
                momentum: 0.9,
                nesterov: true,
                weight_decay: 5e-4,
                ..OptimConfig::default()
            },
        ];
        let n = 300_000i64;
        for cfg in variants {
            let make = |fused: bool| {
                let vs = VarStore::new(tch::Device::Cpu);
                let a = vs.root().var_copy("a", &Tensor::linspace(-2.0, 3.0, n - 7, (Kind::Float, tch::Device::Cpu)));
                let b = vs.root().var_copy("b", &Tensor::from_slice(&[0.5f32, -1.0, 2.0, 0.0, 1e-3, -7.0, 4.0]));
                let flat =
                    FlatParams::new(vec![("a".into(), a.shallow_clone()), ("b".into(), b.shallow_clone())], false);
                (vs, a, b, Optimizer::new(&cfg, flat, fused))
            };
            let (_v1, a1, b1, mut o1) = make(true);
            let (_v2, a2, b2, mut o2) = make(false);
            for (i, lr) in [0.1, 0.05, 0.02].into_iter().enumerate() {
                for (a, b, o) in [(&a1, &b1, &mut o1), (&a2, &b2, &mut o2)] {
                    o.zero_grad();
                    let k = (i + 1) as f64;
                    ((a * a).sum(Kind::Float) * k + (b.sin() * b).sum(Kind::Float) - a.mean(Kind::Float)).backward();
                    o.step(lr);
                }
            }
            let scale = |t: &Tensor| t.abs().max().double_value(&[]).max(1e-12);
            let err = |x: &Tensor, y: &Tensor| (x - y).abs().max().double_value(&[]) / scale(y);
            assert!(err(&o1.flat.params, &o2.flat.params) < 1e-6, "{cfg:?}: params");
            for ((n1, s1), (_, s2)) in o1.buffers.iter().zip(&o2.buffers) {
                assert!(err(s1, s2) < 1e-6, "{cfg:?}: {n1}");
            }
        }
    }

    /// A lookahead changes nothing, and is the step's rule less momentum and decay: plain SGD
    /// from a fresh optimizer, AdamW `p − lr·g/(|g| + ε)` at the first step, by hand.
    #[test]
    fn lookahead_follows_the_update_rule_without_changing_state() {
        for (cfg, want) in [
            (
                OptimConfig { kind: OptimKind::Sgd, momentum: 0.9, weight_decay: 0.1, ..OptimConfig::default() },
                1.0 - 0.1 * 0.5,
            ),
            (OptimConfig { weight_decay: 0.01, ..OptimConfig::default() }, 1.0 - 0.1 * 0.5 / (0.5 + 1e-8)),
        ] {
            let (_vs, w, flat) = one_param(1.0);
            let mut opt = Optimizer::new(&cfg, flat, true);
            let before: Vec<Tensor> = opt.state().into_iter().map(|(_, t)| t.copy()).collect();
            let g = Tensor::from_slice(&[0.5f32]);
            let ahead = opt.lookahead(0.1, &g).double_value(&[0]);
            assert!((ahead - want).abs() < 1e-6, "{cfg:?}: {ahead} vs {want}");
            assert_eq!(w.double_value(&[0]), 1.0);
            assert_eq!(opt.steps, 0);
            for ((_, t), b) in opt.state().iter().zip(&before) {
                assert!(t.equal(b));
            }
            // After real steps the lookahead uses the second moment they left (AdamW).
            opt.zero_grad();
            (w.sum(Kind::Float) * 2.0).backward();
            opt.step(0.1);
            if cfg.kind == OptimKind::Adamw {
                let p = w.double_value(&[0]);
                let v = 0.999 * 0.001 * 4.0 + 0.001 * 0.25;
                let denom = (v / (1.0 - 0.999f64.powi(2))).sqrt() + 1e-8;
                let want = p - 0.1 * 0.5 / denom;
                assert!((opt.lookahead(0.1, &g).double_value(&[0]) - want).abs() < 1e-6);
            }
        }
    }

    #[test]
    fn state_round_trips_by_variable_name() {
        let (_vs, w, flat) = one_param(1.0);
        let mut opt = Optimizer::new(&OptimConfig::default(), flat, true);
        opt.zero_grad();
        (w.sum(Kind::Float) * 3.0).backward();
        opt.step(0.1);
        let state: Vec<(String, Tensor)> = opt.state().into_iter().map(|(k, t)| (k, t.copy())).collect();
        assert_eq!(state[0].0, "exp_avg.w");
        let (_vs2, _w2, flat2) = one_param(1.0);
        let mut opt2 = Optimizer::new(&OptimConfig::default(), flat2, true);
        let lookup = |k: &str| state.iter().find(|(n, _)| n == k).map(|(_, t)| t.shallow_clone());
        opt2.load_state(&lookup, 1).unwrap();
        assert_eq!(opt2.state()[1].1.double_value(&[0]), state[1].1.double_value(&[0]));
        assert!(opt2.load_state(&|_| None, 1).is_err());
    }
}
