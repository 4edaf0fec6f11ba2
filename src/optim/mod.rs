//! Optimizers with explicit, checkpointable state (libtorch's C++ optimizers hide theirs,
//! which would make exact resume impossible). They update the flat buffers of [`FlatParams`]
//! following PyTorch's update rules.
pub mod flat;
pub mod fused;
pub mod groups;
pub mod schedule;

use crate::config::{OptimConfig, OptimKind};
use flat::FlatParams;
use groups::VarSetting;
use tch::Tensor;

pub struct Optimizer {
    cfg: OptimConfig,
    pub flat: FlatParams,
    /// AdamW: `exp_avg`, `exp_avg_sq`; SGD: `momentum_buffer` (when momentum > 0).
    buffers: Vec<(&'static str, Tensor)>,
    /// Updates done so far (AdamW's bias correction; SGD's first-step momentum rule).
    pub steps: u64,
    /// Per variable (buffer order): how it trains (`optim.groups`; all plain by default).
    settings: Vec<VarSetting>,
    /// Per variable: the updates it took. PyTorch keeps a step count per parameter and skips
    /// a parameter without gradient: a variable frozen for a while counts only its own updates.
    var_steps: Vec<u64>,
    /// Whether CPU buffers take the single-pass path of [`fused`] (`speed.fused_optimizer`;
    /// the tests turn it off to compare it with the tensor-op path CUDA takes).
    fused: bool,
    /// Whether the fused update flushes subnormal numbers to zero (`speed.flush_denormal`).
    flush_denormal: bool,
}

/// A run of neighbouring variables that update alike: one set of kernels for all of them.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Segment {
    offset: i64,
    len: i64,
    setting: VarSetting,
    /// The update's 1-based count for these variables.
    t: u64,
}

/// The key of a variable's own update count in [`Optimizer::state`] (written only when it
/// differs from the optimizer's).
const VAR_STEP: &str = "step";

impl Optimizer {
    /// `fused`: update CPU buffers in one pass ([`fused`]); buffers elsewhere take tensor ops.
    pub fn new(cfg: &OptimConfig, flat: FlatParams, fused: bool) -> Self {
        let names: &[&'static str] = match cfg.kind {
            OptimKind::Adamw => &["exp_avg", "exp_avg_sq"],
            OptimKind::Sgd if cfg.momentum > 0.0 => &["momentum_buffer"],
            OptimKind::Sgd => &[],
        };
        let buffers = names.iter().map(|&n| (n, flat.params.zeros_like())).collect();
        let n = flat.names.len();
        let settings = vec![VarSetting::plain(cfg.weight_decay); n];
        Self {
            cfg: cfg.clone(),
            flat,
            buffers,
            steps: 0,
            settings,
            var_steps: vec![0; n],
            fused,
            flush_denormal: false,
        }
    }

    /// The fused CPU update flushes subnormal numbers to zero (`speed.flush_denormal`).
    pub fn flushing_denormals(mut self, on: bool) -> Self {
        self.flush_denormal = on;
        self
    }

    /// How each variable (in buffer order, `flat.names`) trains from now on. Frozen ones are
    /// also taken out of autograd (`requires_grad` false), so no backward computes their
    /// gradients and no gradient method sees them.
    pub fn set_settings(&mut self, settings: Vec<VarSetting>) {
        assert_eq!(settings.len(), self.flat.names.len(), "one setting per variable");
        for (var, s) in self.flat.vars().iter().zip(&settings) {
            let _ = var.set_requires_grad(!s.frozen);
        }
        self.settings = settings;
    }

    /// How each variable trains, in buffer order.
    pub fn settings(&self) -> &[VarSetting] {
        &self.settings
    }

    pub fn zero_grad(&mut self) {
        self.flat.zero_grad();
    }

    /// The variables that update in this step, in runs of neighbours with the same setting
    /// and update count (one run over the whole buffer unless groups or freezing split it).
    fn segments(&self) -> Vec<Segment> {
        let mut out: Vec<Segment> = Vec::new();
        for (i, (&(offset, len), setting)) in self.flat.spans.iter().zip(&self.settings).enumerate() {
            if setting.frozen || len == 0 {
                continue;
            }
            let t = self.var_steps[i] + 1;
            match out.last_mut() {
                Some(s) if s.offset + s.len == offset && s.setting == *setting && s.t == t => s.len += len,
                _ => out.push(Segment { offset, len, setting: *setting, t }),
            }
        }
        out
    }

    /// One update with learning rate `lr` (times each group's `lr_scale`) from the gradients
    /// in the flat buffer; frozen variables and their state are left as they are.
    pub fn step(&mut self, lr: f64) {
        if self.cfg.grad_clip > 0.0 {
            self.flat.clip_grad_norm(self.cfg.grad_clip);
        }
        self.steps += 1;
        let segments = self.segments();
        tch::no_grad(|| {
            for s in &segments {
                match self.cfg.kind {
                    OptimKind::Adamw => self.adamw(s, lr),
                    OptimKind::Sgd => self.sgd(s, lr),
                }
            }
        });
        for (steps, setting) in self.var_steps.iter_mut().zip(&self.settings) {
            *steps += u64::from(!setting.frozen);
        }
    }

    /// The segment's slices of the parameters, the gradients and each state buffer.
    fn slices(&self, s: &Segment) -> (Tensor, Tensor, Vec<Tensor>) {
        let whole = s.offset == 0 && s.len == self.flat.params.numel() as i64;
        let cut = |t: &Tensor| if whole { t.shallow_clone() } else { t.narrow(0, s.offset, s.len) };
        (cut(&self.flat.params), cut(&self.flat.grads), self.buffers.iter().map(|(_, b)| cut(b)).collect())
    }

    /// torch.optim.AdamW: decoupled decay, then Adam with bias correction. Buffers in CPU
    /// memory take one pass ([`fused`]); CUDA buffers ten elementwise kernels.
    fn adamw(&self, s: &Segment, lr: f64) {
        let (b1, b2) = self.cfg.betas;
        let (lr, weight_decay) = (lr * s.setting.lr_scale, s.setting.weight_decay);
        let t = s.t as i32;
        let bias1 = 1.0 - b1.powi(t);
        let bias2 = 1.0 - b2.powi(t);
        let (mut p, g, state) = self.slices(s);
        let [m, v] = &state[..] else { unreachable!("AdamW has two buffers") };
        let (mut m, mut v) = (m.shallow_clone(), v.shallow_clone());
        if self.fused && fused::applies(&[&p, &g, &m, &v]) {
            let step = fused::AdamWStep {
                decay: (1.0 - lr * weight_decay) as f32,
                one_minus_b1: (1.0 - b1) as f32,
                b2: b2 as f32,
                one_minus_b2: (1.0 - b2) as f32,
                bias2_sqrt: bias2.sqrt() as f32,
                eps: self.cfg.eps as f32,
                neg_step_size: (-lr / bias1) as f32,
            };
            let _flushing = self.flush_denormal.then(fused::FlushDenormal::set);
            return fused::adamw(&p, &g, &m, &v, step, tch::get_num_threads().max(1) as usize);
        }
        if weight_decay != 0.0 {
            let _ = p.g_mul_scalar_(1.0 - lr * weight_decay);
        }
        let _ = m.lerp_(&g, 1.0 - b1);
        let _ = v.g_mul_scalar_(b2);
        let _ = v.addcmul_(&g.g_mul_scalar(1.0 - b2), &g);
        let denom = (v.sqrt() / bias2.sqrt()).g_add_scalar_(self.cfg.eps);
        let _ = p.addcdiv_(&m.g_mul_scalar(-lr / bias1), &denom);
    }

    /// torch.optim.SGD: L2 weight decay into the gradient, momentum (buffer = gradient on
    /// the first step), optional Nesterov. One pass in CPU memory, as for AdamW.
    fn sgd(&self, s: &Segment, lr: f64) {
        let (lr, weight_decay) = (lr * s.setting.lr_scale, s.setting.weight_decay);
        let (mut p, g, mut state) = self.slices(s);
        if self.fused && fused::applies(&[&p, &g]) && state.iter().all(|b| fused::applies(&[&g, b])) {
            let step = fused::SgdStep {
                weight_decay: weight_decay as f32,
                momentum: self.cfg.momentum as f32,
                nesterov: self.cfg.nesterov,
                first: s.t == 1,
                neg_lr: -lr as f32,
            };
            let _flushing = self.flush_denormal.then(fused::FlushDenormal::set);
            return fused::sgd(&p, &g, state.first(), step, tch::get_num_threads().max(1) as usize);
        }
        let mut d = if weight_decay != 0.0 { &g + p.g_mul_scalar(weight_decay) } else { g.shallow_clone() };
        if let Some(buf) = state.first_mut() {
            if s.t == 1 {
                buf.copy_(&d);
            } else {
                let _ = buf.g_mul_scalar_(self.cfg.momentum).g_add_(&d);
            }
            d = if self.cfg.nesterov { d + buf.g_mul_scalar(self.cfg.momentum) } else { buf.shallow_clone() };
        }
        let _ = p.g_add_(&d.g_mul_scalar(-lr));
    }

    /// The flat parameters after a step along `grads` alone (a flat gradient, laid out as
    /// [`FlatParams::grads`]) with learning rate `lr` (times each group's `lr_scale`; frozen
    /// variables stay), computed from the current state without changing it: TAG's lookahead
    /// (docs/TRANSFER.md). The step is the optimizer's, less what does not depend on `grads`:
    /// SGD `p − lr·g`; AdamW `p − lr·g / (√v̂ + ε)` with `v̂` the bias-corrected second moment
    /// after taking `g` in. Momentum (the past steps' direction, nine tenths of an Adam step)
    /// and weight decay would move every lookahead alike and drown the differences between
    /// tasks. Gradient clipping applies to `grads` as to a step's gradient.
    pub fn lookahead(&self, lr: f64, grads: &Tensor) -> Tensor {
        tch::no_grad(|| {
            // A new tensor, never `*=`: `grads` is the caller's.
            let g = match self.cfg.grad_clip > 0.0 {
                true => grads * (grads.norm() + 1e-6).reciprocal().g_mul_scalar(self.cfg.grad_clip).clamp_max(1.0),
                false => grads.shallow_clone(),
            };
            let ahead = self.flat.params.copy();
            for s in self.segments() {
                let cut = |t: &Tensor| t.narrow(0, s.offset, s.len);
                let g = cut(&g);
                let direction = match self.cfg.kind {
                    OptimKind::Adamw => {
                        let b2 = self.cfg.betas.1;
                        let bias2 = 1.0 - b2.powi(s.t as i32);
                        let v = cut(&self.buffers[1].1) * b2 + (&g * &g) * (1.0 - b2);
                        &g / ((v / bias2).sqrt() + self.cfg.eps)
                    }
                    OptimKind::Sgd => g,
                };
                let _ = cut(&ahead).g_sub_(&(direction * (lr * s.setting.lr_scale)));
            }
            ahead
        })
    }

    /// State tensors keyed `<buffer>.<variable name>`, for the checkpoint; and `step.<name>`
    /// for a variable whose update count differs from the optimizer's (one frozen for a while).
    pub fn state(&self) -> Vec<(String, Tensor)> {
        let mut out = Vec::new();
        for (buf_name, buf) in &self.buffers {
            for (i, name) in self.flat.names.iter().enumerate() {
                out.push((format!("{buf_name}.{name}"), self.flat.slice_of(buf, i)));
            }
        }
        for (name, &steps) in self.flat.names.iter().zip(&self.var_steps).filter(|(_, &s)| s != self.steps) {
            out.push((format!("{VAR_STEP}.{name}"), Tensor::from(steps as i64)));
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
        for (name, var_steps) in self.flat.names.iter().zip(self.var_steps.iter_mut()) {
            let key = format!("{VAR_STEP}.{name}");
            *var_steps = match lookup(&key) {
                None => steps,
                Some(t) => match t.f_int64_value(&[]) {
                    Ok(v) if (0..=steps as i64).contains(&v) => v as u64,
                    _ => crate::user_bail!("optimizer state '{key}' must be a count of updates from 0 to {steps}"),
                },
            };
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

    /// Two variables `a`, `b` (one element each) under `settings`, stepped with `grads[k]` =
    /// (da, db) at lr 0.1; returns the optimizer.
    fn two_params(cfg: &OptimConfig, steps: &[(Vec<VarSetting>, f64, f64)]) -> Optimizer {
        let vs = VarStore::new(tch::Device::Cpu);
        let a = vs.root().var("a", &[1], Init::Const(1.0));
        let b = vs.root().var("b", &[1], Init::Const(-2.0));
        let flat = FlatParams::new(vec![("a".into(), a.shallow_clone()), ("b".into(), b.shallow_clone())], false);
        let mut opt = Optimizer::new(cfg, flat, true);
        for (settings, ga, gb) in steps {
            opt.set_settings(settings.clone());
            opt.zero_grad();
            let terms: Vec<Tensor> = [(&a, *ga), (&b, *gb)]
                .iter()
                .filter(|(v, _)| v.requires_grad())
                .map(|(v, g)| v.sum(Kind::Float) * *g)
                .collect();
            terms.into_iter().reduce(|x, y| x + y).unwrap().backward();
            opt.step(0.1);
        }
        opt
    }

    fn values(opt: &Optimizer) -> Vec<f64> {
        Vec::<f32>::try_from(&opt.flat.params).unwrap().into_iter().map(f64::from).collect()
    }

    /// SGD with momentum and decay per group, by hand: `a` at lr × 0.5 with decay 0.2, `b`
    /// frozen on the first step (untouched, its gradient never computed), then trained at the
    /// plain settings, its momentum starting afresh as PyTorch's does for a parameter whose
    /// gradient was None.
    #[test]
    fn sgd_groups_scale_the_rate_and_freeze_by_hand() {
        let cfg = OptimConfig { kind: OptimKind::Sgd, momentum: 0.9, weight_decay: 0.01, ..OptimConfig::default() };
        let a = VarSetting { frozen: false, lr_scale: 0.5, weight_decay: 0.2 };
        let plain = VarSetting::plain(0.01);
        let opt = two_params(&cfg, &[(vec![a, VarSetting::FROZEN], 1.0, 7.0), (vec![a, plain], 2.0, 3.0)]);
        let (mut pa, mut ba) = (1.0f64, 0.0);
        for (i, g) in [1.0f64, 2.0].iter().enumerate() {
            let d = g + 0.2 * pa;
            ba = if i == 0 { d } else { 0.9 * ba + d };
            pa -= 0.05 * ba;
        }
        let pb = -2.0 - 0.1 * (3.0 + 0.01 * -2.0);
        let got = values(&opt);
        assert!((got[0] - pa).abs() < 1e-6 && (got[1] - pb).abs() < 1e-6, "{got:?} vs {pa}, {pb}");
        assert_eq!(opt.var_steps, vec![2, 1]);
    }

    /// AdamW per group by hand, and the per-variable update count: `b` frozen for two steps
    /// then trained has the bias correction of its first update, its moments untouched
    /// meanwhile; the count survives a checkpoint round trip.
    #[test]
    fn adamw_groups_keep_per_variable_counts_by_hand() {
        let cfg = OptimConfig { weight_decay: 0.01, ..OptimConfig::default() };
        let a = VarSetting { frozen: false, lr_scale: 0.1, weight_decay: 0.0 };
        let f = VarSetting::FROZEN;
        let b = VarSetting { frozen: false, lr_scale: 2.0, weight_decay: 0.05 };
        let script = [(vec![a, f], 0.5, 9.0), (vec![a, f], -0.25, 9.0), (vec![a, b], 1.0, -0.5)];
        let opt = two_params(&cfg, &script);
        let adamw = |mut p: f64, lr: f64, wd: f64, grads: &[f64]| {
            let (mut m, mut v) = (0.0f64, 0.0f64);
            for (t, g) in grads.iter().enumerate() {
                let t = (t + 1) as i32;
                p *= 1.0 - lr * wd;
                m = 0.9 * m + 0.1 * g;
                v = 0.999 * v + 0.001 * g * g;
                p -= lr / (1.0 - 0.9f64.powi(t)) * m / ((v / (1.0 - 0.999f64.powi(t))).sqrt() + 1e-8);
            }
            p
        };
        let (pa, pb) = (adamw(1.0, 0.01, 0.0, &[0.5, -0.25, 1.0]), adamw(-2.0, 0.2, 0.05, &[-0.5]));
        let got = values(&opt);
        assert!((got[0] - pa).abs() < 1e-6 && (got[1] - pb).abs() < 1e-6, "{got:?} vs {pa}, {pb}");
        let state: Vec<(String, Tensor)> = opt.state().into_iter().map(|(k, t)| (k, t.copy())).collect();
        assert!(state.iter().any(|(k, t)| k == "step.b" && t.int64_value(&[]) == 1));
        assert!(!state.iter().any(|(k, _)| k == "step.a"), "counts equal to the optimizer's are not written");
        let mut again = two_params(&cfg, &[]);
        let lookup = |k: &str| state.iter().find(|(n, _)| n == k).map(|(_, t)| t.shallow_clone());
        again.load_state(&lookup, 3).unwrap();
        assert_eq!(again.var_steps, vec![3, 1]);
        let bad = |k: &str| if k == "step.b" { Some(Tensor::from(7i64)) } else { lookup(k) };
        assert!(again.load_state(&bad, 3).is_err());
    }

    /// Against libtorch's own C++ optimizers (the code PyTorch's C++ frontend runs), with one
    /// parameter group per setting: `b` in a group of a quarter of the rate and its own decay,
    /// frozen for the first two steps (`requires_grad` off: no gradient, which libtorch's
    /// optimizers skip, their per-parameter state starting at the first real update).
    #[test]
    fn groups_match_libtorch_param_groups() {
        use tch::nn::OptimizerConfig;
        let (lr, wd, wd_b, scale_b) = (0.1, 0.01, 0.3, 0.25);
        let init_a = Tensor::from_slice(&[0.5f32, -1.5, 2.0]);
        let init_b = Tensor::from_slice(&[1.0f32, -0.25]);
        let loss = |a: &Tensor, b: &Tensor, k: usize| {
            let k = (k + 1) as f64;
            (a * a).sum(Kind::Float) * k + (b.sin() * a.narrow(0, 0, 2)).sum(Kind::Float)
                - b.sum(Kind::Float) * (k - 2.0)
        };
        let kinds = [
            OptimConfig { kind: OptimKind::Sgd, momentum: 0.9, nesterov: true, weight_decay: wd, ..Default::default() },
            OptimConfig { weight_decay: wd, ..OptimConfig::default() },
        ];
        for cfg in kinds {
            let reference_vs = VarStore::new(tch::Device::Cpu);
            let ra = reference_vs.root().set_group(0).var_copy("a", &init_a);
            let rb = reference_vs.root().set_group(1).var_copy("b", &init_b);
            let mut reference = match cfg.kind {
                OptimKind::Sgd => {
                    tch::nn::Sgd { momentum: 0.9, dampening: 0.0, wd, nesterov: true }.build(&reference_vs, lr)
                }
                OptimKind::Adamw => tch::nn::AdamW { wd, ..Default::default() }.build(&reference_vs, lr),
            }
            .unwrap();
            reference.set_lr_group(1, lr * scale_b);
            reference.set_weight_decay_group(1, wd_b);

            let vs = VarStore::new(tch::Device::Cpu);
            let a = vs.root().var_copy("a", &init_a);
            let b = vs.root().var_copy("b", &init_b);
            let flat = FlatParams::new(vec![("a".into(), a.shallow_clone()), ("b".into(), b.shallow_clone())], false);
            let mut ours = Optimizer::new(&cfg, flat, true);
            let b_trains = VarSetting { frozen: false, lr_scale: scale_b, weight_decay: wd_b };
            for k in 0..5 {
                let frozen = k < 2;
                let _ = rb.set_requires_grad(!frozen);
                reference.zero_grad();
                loss(&ra, &rb, k).backward();
                reference.step();
                ours.set_settings(vec![VarSetting::plain(wd), if frozen { VarSetting::FROZEN } else { b_trains }]);
                ours.zero_grad();
                loss(&a, &b, k).backward();
                ours.step(lr);
            }
            let err = |x: &Tensor, y: &Tensor| f64::try_from((x - y).abs().max()).unwrap();
            assert!(err(&a, &ra) < 1e-6 && err(&b, &rb) < 1e-6, "{:?}: {a} vs {ra}, {b} vs {rb}", cfg.kind);
            assert!(!b.equal(&init_b), "b trained after it was unfrozen");
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

    /// The lookahead follows the groups: a frozen variable stays, another moves at its
    /// `lr_scale` (SGD: `p − lr·scale·g`).
    #[test]
    fn lookahead_follows_the_groups() {
        let cfg = OptimConfig { kind: OptimKind::Sgd, momentum: 0.9, ..OptimConfig::default() };
        let mut opt = two_params(&cfg, &[]);
        opt.set_settings(vec![VarSetting { frozen: false, lr_scale: 0.5, weight_decay: 0.0 }, VarSetting::FROZEN]);
        let ahead = opt.lookahead(0.1, &Tensor::from_slice(&[2.0f32, 3.0]));
        let got = Vec::<f32>::try_from(&ahead).unwrap();
        assert!((got[0] - (1.0 - 0.1 * 0.5 * 2.0)).abs() < 1e-6 && got[1] == -2.0, "{got:?}");
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
