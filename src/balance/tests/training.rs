//! Every method in a real training step: a tiny two-task model (shared linear layer, two
//! linear heads) on a VarStore, trained by hand-written SGD through `Balancer::backward` in
//! every space the method supports. Also checks the `.grad` plumbing against the pure
//! functions.
use super::*;
use crate::balance::{build_for, method_names, Balancer, GradientSpace, StepContext};
use crate::config::BalanceConfig;
use tch::nn::{self, Module};

pub struct TinyModel {
    pub vs: nn::VarStore,
    shared: nn::Linear,
    heads: Vec<nn::Linear>,
    x: Tensor,
    y: Vec<Tensor>,
}

/// Runs one forward pass and returns what a step needs.
pub struct Forward {
    pub losses: Vec<Tensor>,
    pub z: Tensor,
    pub detached: Option<Tensor>,
}

impl TinyModel {
    pub fn new(seed: i64) -> Self {
        Self::on(seed, tch::Device::Cpu)
    }

    pub fn on(seed: i64, device: tch::Device) -> Self {
        tch::manual_seed(seed);
        let vs = nn::VarStore::new(device);
        let root = vs.root();
        let shared = nn::linear(&root / "shared", 5, 8, Default::default());
        let heads = (0..2).map(|i| nn::linear(&root / format!("head{i}"), 8, 1, Default::default())).collect();
        let x = Tensor::randn([64, 5], (Kind::Float, tch::Device::Cpu)).to_device(device);
        let w = Tensor::randn([5, 2], (Kind::Float, tch::Device::Cpu)).to_device(device);
        // Two related regression targets (partly conflicting through the shared layer).
        let y = vec![x.matmul(&w.narrow(1, 0, 1)).tanh(), (x.matmul(&w.narrow(1, 1, 1)) * 0.5).sin()];
        Self { vs, shared, heads, x, y }
    }

    fn params(&self, prefix: &str) -> Vec<Tensor> {
        let mut v: Vec<(String, Tensor)> =
            self.vs.variables().into_iter().filter(|(n, _)| n.starts_with(prefix)).collect();
        v.sort_by(|a, b| a.0.cmp(&b.0));
        v.into_iter().map(|(_, t)| t).collect()
    }

    pub fn shared_params(&self) -> Vec<Tensor> {
        self.params("shared")
    }

    pub fn head_params(&self) -> Vec<Vec<Tensor>> {
        (0..2).map(|i| self.params(&format!("head{i}"))).collect()
    }

    pub fn forward(&self, detach: bool) -> Forward {
        let z = self.shared.forward(&self.x).relu();
        let detached = detach.then(|| z.detach().set_requires_grad(true));
        let input = detached.as_ref().unwrap_or(&z);
        let losses =
            self.heads.iter().zip(&self.y).map(|(h, y)| h.forward(input).mse_loss(y, tch::Reduction::Mean)).collect();
        Forward { losses, z, detached }
    }

    pub fn zero_grads(&self) {
        for mut p in self.vs.trainable_variables() {
            p.zero_grad();
        }
    }

    /// Zeroes the gradients, runs the forward and `backward`; returns the weights.
    pub fn backward(&self, balancer: &mut dyn Balancer, step: u64) -> (Tensor, Forward) {
        self.zero_grads();
        let fwd = self.forward(balancer.space() == GradientSpace::Representation);
        let (shared, heads) = (self.shared_params(), self.head_params());
        let zs = [fwd.z.shallow_clone()];
        let hs: Vec<Tensor> = fwd.detached.iter().map(Tensor::shallow_clone).collect();
        let ctx = StepContext {
            losses: &fwd.losses,
            shared_params: &shared,
            head_params: &heads,
            features: fwd.detached.as_ref().map(|_| (&zs[..], &hs[..])),
            task_weights: &[1.0, 1.0],
            step,
            epoch: step / 4,
            seed: 5,
            ranks: None,
        };
        let w = balancer.backward(&ctx).unwrap();
        (w, fwd)
    }

    pub fn sgd(&self, lr: f64) {
        tch::no_grad(|| {
            for mut p in self.vs.trainable_variables() {
                let g = p.grad();
                let _ = p.f_sub_(&(g * lr)).unwrap();
            }
        });
    }

    pub fn total_loss(&self) -> f64 {
        tch::no_grad(|| self.forward(false).losses.iter().map(|l| l.double_value(&[])).sum())
    }

    /// Every trainable variable's gradient, by name.
    pub fn grads(&self) -> Vec<(String, Vec<f64>)> {
        let mut v: Vec<(String, Vec<f64>)> =
            self.vs.variables().into_iter().map(|(n, t)| (n, values(&t.grad()))).collect();
        v.sort_by(|a, b| a.0.cmp(&b.0));
        v
    }
}

/// The `balance` section for `method` plus `rest`, a YAML mapping of its other keys
/// (`{on: representation, options: {alpha: 0.5}}`).
pub fn config(method: &str, rest: &str) -> BalanceConfig {
    let mut section: serde_yaml::Mapping = serde_yaml::from_str(rest).unwrap();
    section.insert("method".into(), method.into());
    serde_yaml::from_value(serde_yaml::Value::Mapping(section)).unwrap()
}

/// A two-task balancer.
pub fn build(method: &str, rest: &str) -> anyhow::Result<Box<dyn Balancer>> {
    build_for(&config(method, rest), 2)
}

/// Trains `steps` SGD steps and checks every gradient is finite; returns (first, last) loss.
fn train(method: &str, options: &str, steps: u64, device: tch::Device) -> (f64, f64) {
    let model = TinyModel::on(0, device);
    let mut b = build(method, options).unwrap();
    let first = model.total_loss();
    for step in 0..steps {
        let (w, _) = model.backward(b.as_mut(), step);
        assert_finite(&values(&w));
        assert_eq!(w.size(), vec![2]);
        for (name, g) in model.grads() {
            assert!(!g.is_empty(), "{method} {options}: {name} got no grad");
            assert_finite(&g);
        }
        model.sgd(0.05);
        if b.needs_after_step() {
            let after = tch::no_grad(|| model.forward(false).losses);
            b.after_step(&after).unwrap();
        }
        if step % 4 == 3 {
            let means: Vec<f64> =
                tch::no_grad(|| model.forward(false).losses.iter().map(|l| l.double_value(&[])).collect());
            b.end_epoch(step / 4, &means);
        }
    }
    (first, model.total_loss())
}

/// Trains every method in every space on `device`.
fn train_all(device: tch::Device) {
    for method in method_names() {
        let gradient = build(method, "{}").unwrap().space() != GradientSpace::Losses;
        let spaces: &[&str] = if gradient { &["{}", "{on: representation}"] } else { &["{}"] };
        for options in spaces {
            let (first, last) = train(method, options, 40, device);
            assert!(last < 0.9 * first, "{method} {options}: loss {first} -> {last}");
        }
    }
    let (first, last) = train("nash", "{options: {update_every: 3}}", 40, device);
    assert!(last < 0.9 * first, "nash update_every: {first} -> {last}");
}

#[test]
fn every_method_trains_in_every_space() {
    train_all(tch::Device::Cpu);
}

/// The same on the GPU where there is one (state on the device, host reads of the Gram
/// matrix); passes trivially on a machine without CUDA.
#[test]
fn every_method_trains_on_cuda_when_available() {
    if tch::Cuda::is_available() {
        train_all(tch::Device::Cuda(0));
    }
}

#[test]
fn params_space_writes_the_combined_direction_and_weighted_heads() {
    let model = TinyModel::new(1);
    // Per-task gradients computed independently of the balancer.
    let fwd = model.forward(false);
    let (shared, heads) = (model.shared_params(), model.head_params());
    let mut rows = Vec::new();
    let mut head_grads = Vec::new();
    for (i, l) in fwd.losses.iter().enumerate() {
        let wrt: Vec<&Tensor> = shared.iter().chain(&heads[i]).collect();
        let g = Tensor::run_backward(&[l], &wrt, true, false);
        rows.push(Tensor::cat(&g[..shared.len()].iter().map(|t| t.reshape([-1])).collect::<Vec<_>>(), 0));
        head_grads.push(g[shared.len()..].iter().map(values).collect::<Vec<_>>());
    }
    let grads = Tensor::stack(&rows, 0);
    let want = crate::balance::mgda::mgda(
        &grads,
        &Tensor::ones([2], (Kind::Float, tch::Device::Cpu)),
        crate::balance::mgda::MgdaNormalization::None,
    )
    .unwrap();
    let mut b = build("mgda", "{}").unwrap();
    let (w, _) = model.backward(b.as_mut(), 0);
    let got_w = values(&w);
    assert_close(&got_w, &values(&want.weights), 1e-5);
    let got_shared: Vec<f64> = shared.iter().flat_map(|p| values(&p.grad())).collect();
    assert_close(&got_shared, &values(&want.direction), 1e-5);
    for (i, hp) in heads.iter().enumerate() {
        for (p, g) in hp.iter().zip(&head_grads[i]) {
            let scaled: Vec<f64> = g.iter().map(|v| v * got_w[i]).collect();
            assert_close(&values(&p.grad()), &scaled, 1e-5);
        }
    }
}

#[test]
fn representation_space_equals_backprop_of_the_weighted_loss() {
    // For a method with d = Σ w_i ∇_z l_i, the backbone gets J_zᵀ d = ∇_θ Σ w_i l_i.
    let model = TinyModel::new(2);
    let mut b = build("imtl", "{on: representation}").unwrap();
    let (w, _) = model.backward(b.as_mut(), 0);
    let got = model.grads();
    let w = values(&w);
    model.zero_grads();
    let fwd = model.forward(false);
    let total = &fwd.losses[0] * w[0] + &fwd.losses[1] * w[1];
    total.backward();
    for ((name, a), (_, b)) in got.iter().zip(model.grads()) {
        if name.starts_with("shared") {
            assert_close(a, &b, 1e-5);
        }
    }
}

#[test]
fn loss_methods_propagate_through_detached_features() {
    // A loss-level method given detached features still reaches the backbone.
    let model = TinyModel::new(3);
    model.zero_grads();
    let fwd = model.forward(true);
    let (shared, heads) = (model.shared_params(), model.head_params());
    let zs = [fwd.z.shallow_clone()];
    let hs = [fwd.detached.as_ref().unwrap().shallow_clone()];
    let ctx = StepContext {
        losses: &fwd.losses,
        shared_params: &shared,
        head_params: &heads,
        features: Some((&zs, &hs)),
        task_weights: &[1.0, 1.0],
        step: 0,
        epoch: 0,
        seed: 0,
        ranks: None,
    };
    let _ = build("ew", "{}").unwrap().backward(&ctx).unwrap();
    let with_detach = model.grads();
    model.zero_grads();
    let fwd = model.forward(false);
    (&fwd.losses[0] + &fwd.losses[1]).backward();
    for ((_, a), (_, b)) in with_detach.iter().zip(model.grads()) {
        assert_close(a, &b, 1e-6);
    }
}
