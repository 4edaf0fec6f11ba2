//! The trainer on tiny configs: layouts, devices and precisions compute the same thing.
use super::*;
use crate::model::layers;
use crate::model::Mode;

/// The built-in default config shrunk to train in a blink: 16×16 shapes, a two-stage conv net
/// with one block per stage, classification + segmentation, one thread.
fn tiny(device: &str, precision: &str, sets: &[&str]) -> Resolved {
    crate::setup::load(None, &tiny_sets(device, precision, sets)).unwrap()
}

fn tiny_sets(device: &str, precision: &str, sets: &[&str]) -> Vec<String> {
    let mut all: Vec<String> = [
        "data.train_size=64",
        "data.val_size=16",
        "data.image_size=16",
        "data.batch_size=16",
        "data.eval_batch_size=16",
        "model.backbone.widths=[4, 8]",
        "model.backbone.depth=1",
        "threads=1",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    all.push(format!("device={device}"));
    all.push(format!("precision={precision}"));
    all.extend(sets.iter().map(|s| s.to_string()));
    all
}

fn trainer(r: Resolved) -> Trainer {
    let device = crate::setup::device(&r.cfg.device).unwrap();
    let opts = TrainOptions { run_dir: std::env::temp_dir().join("mtl-unused-run"), ..Default::default() };
    Trainer::new(r, device, &opts).unwrap()
}

/// Every trainable value, in buffer order and each variable's logical (NCHW) order: the flat
/// buffer itself holds convolution weights channels-last when training is.
fn flat(t: &Trainer) -> Tensor {
    let values: Vec<Tensor> = t.optimizer.flat.vars().iter().map(|v| v.reshape([-1])).collect();
    Tensor::cat(&values, 0).to_device(Device::Cpu)
}

fn rel(a: &Tensor, b: &Tensor) -> f64 {
    let d = (a - b).abs().max().double_value(&[]);
    d / b.abs().max().double_value(&[]).max(1e-12)
}

/// Channels-last is a layout, not a different function: the same batch in either layout gives
/// the same outputs (to fp32 rounding), and the layout change only ever happens in training
/// forwards.
#[test]
fn channels_last_forward_matches_nchw() {
    let t = trainer(tiny("cpu", "fp32", &[]));
    assert!(t.model.compute().channels_last(true) && !t.model.compute().channels_last(false));
    let x = t.inputs.first().train.train_batch(0, 0, 0).images;
    let cl = layers::to_channels_last(&x);
    assert!(cl.equal(&x) && !cl.is_contiguous() && cl.stride()[1] == 1);
    let a = tch::no_grad(|| t.model.forward(&x, Mode::Eval));
    let b = tch::no_grad(|| t.model.forward(&cl, Mode::Eval));
    for (a, b) in a.iter().zip(&b) {
        assert!(rel(a, b) < 1e-5, "{}", rel(a, b));
    }
    let off = trainer(tiny("cpu", "fp32", &["speed.channels_last=false"]));
    assert!(!off.model.compute().channels_last(true));
}

/// The speed switches change speed only: a few SGD steps with them off end at the same weights
/// (to rounding) as with them on.
#[test]
fn speed_switches_keep_the_numbers() {
    let sgd = ["optim.kind=sgd", "optim.weight_decay=0"];
    let mut on = trainer(tiny("cpu", "fp32", &sgd));
    let off_sets = [&sgd[..], &["speed.channels_last=false", "speed.fused_optimizer=false"]].concat();
    let mut off = trainer(tiny("cpu", "fp32", &off_sets));
    assert!(flat(&on).equal(&flat(&off)));
    let start = flat(&on);
    for _ in 0..3 {
        on.step().unwrap();
        off.step().unwrap();
    }
    let (d_on, d_off) = (flat(&on) - &start, flat(&off) - &start);
    let moved = d_on.abs().max().double_value(&[]);
    let diff = rel(&d_off, &d_on);
    assert!(moved > 0.0 && diff < 1e-3, "moved {moved:.3e}, updates differ by {diff:.3e}");
}

fn cuda() -> bool {
    let ok = tch::Cuda::is_available();
    if !ok {
        eprintln!("skipped: no CUDA on this machine");
    }
    ok
}

/// The CUDA step computes what the CPU step does: same initial weights, a few steps, weights
/// agree to TF32/cuDNN rounding.
#[test]
fn cuda_fp32_steps_match_the_cpu() {
    if !cuda() {
        return;
    }
    // Plain SGD: the update is the gradient (Adam's normalized first steps would turn
    // rounding-level differences of near-zero gradients into full-size ones).
    let sgd = ["optim.kind=sgd", "optim.weight_decay=0"];
    let mut cpu = trainer(tiny("cpu", "fp32", &sgd));
    let mut gpu = trainer(tiny("cuda", "fp32", &sgd));
    // The CUDA generator draws other initial values: start both from the CPU's.
    tch::no_grad(|| {
        for ((_, mut g), (_, c)) in gpu.model.named_variables().into_iter().zip(cpu.model.named_variables()) {
            g.copy_(&c);
        }
    });
    assert!(rel(&flat(&gpu), &flat(&cpu)) == 0.0);
    let start = flat(&cpu);
    for _ in 0..3 {
        cpu.step().unwrap();
        gpu.step().unwrap();
    }
    let (d_cpu, d_gpu) = (flat(&cpu) - &start, flat(&gpu) - &start);
    assert!(d_cpu.abs().max().double_value(&[]) > 0.0);
    let diff = rel(&d_gpu, &d_cpu);
    assert!(diff < 0.05, "update on CUDA differs from the CPU's by {diff:.3e} (relative)");
}

/// bf16 compute with fp32 master weights: variables stay fp32, training reduces the loss.
#[test]
fn cuda_bf16_trains_with_fp32_master_weights() {
    if !cuda() {
        return;
    }
    let mut t = trainer(tiny("cuda", "bf16", &[]));
    assert_eq!(t.optimizer.flat.params.kind(), Kind::Float);
    let batch = t.inputs.first().train.train_batch(0, 0, 0);
    let loss = |t: &Trainer| -> f64 {
        let out = tch::no_grad(|| t.model.forward(&batch.images, Mode::Eval));
        t.tasks.iter().zip(&out).zip(&batch.targets).map(|((k, o), y)| k.loss(o, y).double_value(&[])).sum()
    };
    let before = loss(&t);
    for _ in 0..12 {
        t.step().unwrap();
    }
    let after = loss(&t);
    assert!(after.is_finite() && after < before, "loss {before} -> {after}");
    let outs = tch::no_grad(|| t.model.forward(&batch.images, Mode::Train));
    assert!(outs.iter().all(|o| o.kind() == Kind::Float));
}

/// Every architecture trains a step with every balancing method, in both gradient spaces
/// where the architecture has a representation, to finite weights that moved; where it has
/// none (MTAN), `balance.on: representation` is refused when the config is resolved.
#[test]
fn every_architecture_trains_with_every_method_in_its_spaces() {
    use crate::balance::{method_names, GradientSpace};
    for arch in crate::model::arch::architecture_names() {
        for method in method_names() {
            for on in ["params", "representation"] {
                let sets = [
                    format!("model.architecture.kind={arch}"),
                    format!("balance.method={method}"),
                    format!("balance.on={on}"),
                    "data.train_size=8".into(),
                    "data.batch_size=8".into(),
                    "data.val_size=8".into(),
                ];
                let sets: Vec<&str> = sets.iter().map(String::as_str).collect();
                let r = match crate::setup::load(None, &tiny_sets("cpu", "fp32", &sets)) {
                    Ok(r) => r,
                    Err(e) => {
                        let msg = e.to_string();
                        assert!(crate::error::is_user_error(&e), "{arch} {method} {on}: {msg}");
                        assert!(on == "representation", "{arch} {method} {on}: {msg}");
                        // Loss-level methods refuse `on: representation` themselves; MTAN has no cut.
                        let loss_level = msg.contains("works on the losses alone");
                        let no_cut = arch == "mtan" && msg.contains("balance.on: representation does not apply");
                        assert!(loss_level || no_cut, "{msg}");
                        continue;
                    }
                };
                let device = crate::setup::device(&r.cfg.device).unwrap();
                let opts = TrainOptions { run_dir: std::env::temp_dir().join("mtl-unused-run"), ..Default::default() };
                let mut t = Trainer::new(r, device, &opts).unwrap_or_else(|e| panic!("{arch} {method} {on}: {e:#}"));
                if on == "representation" {
                    assert_eq!(t.balancer.space(), GradientSpace::Representation);
                }
                let before = flat(&t);
                t.step().unwrap_or_else(|e| panic!("{arch} {method} {on}: {e:#}"));
                let after = flat(&t);
                assert!(after.isfinite().all().int64_value(&[]) == 1, "{arch} {method} {on}: non-finite weights");
                assert!(!after.equal(&before), "{arch} {method} {on}: nothing moved");
            }
        }
    }
}

/// `next_input` (what `mtl-train bench --input-only` times) takes the batches the next training
/// step would read and moves on, and trains nothing: no weight, BatchNorm statistic or
/// optimizer state changes.
#[test]
fn next_input_takes_the_step_batches_without_training() {
    let mut t = trainer(tiny("cpu", "fp32", &[]));
    let reference = trainer(tiny("cpu", "fp32", &[]));
    let weights = flat(&t);
    let buffers: Vec<Tensor> = t.model.buffers().iter().map(Tensor::copy).collect();
    for step in 0..3u64 {
        let got = t.next_input();
        let want = reference.inputs.train_batches(step);
        assert_eq!(got.len(), want.len());
        for (g, w) in got.iter().zip(&want) {
            assert!(g.images.equal(&w.images), "step {step}: images differ");
            assert!(g.targets.iter().zip(&w.targets).all(|(a, b)| a.equal(b)), "step {step}: targets differ");
        }
        assert_eq!(t.at.step, step + 1);
    }
    assert!(flat(&t).equal(&weights), "weights changed");
    assert!(t.model.buffers().iter().zip(&buffers).all(|(a, b)| a.equal(b)), "BatchNorm statistics changed");
    assert!(t.optimizer.flat.grads.abs().max().double_value(&[]) == 0.0, "a gradient was computed");
}

/// The tiny config with the segmentation task on data of its own (fewer, other shapes): two
/// data groups, BatchNorm in the backbone and in the segmentation head's decoder.
fn two_groups(sets: &[&str]) -> Resolved {
    let mut all = vec!["tasks.1.data.train_size=48"];
    all.extend_from_slice(sets);
    tiny("cpu", "fp32", &all)
}

fn variable(t: &Trainer, name: &str) -> Tensor {
    let found = t.model.named_variables().into_iter().find(|(n, _)| n == name);
    found.unwrap_or_else(|| panic!("no variable {name}")).1
}

/// Per-group statistics (the default with two data groups) are variables named as the PyTorch
/// twin names them: each group's batches move its own, and a forward computes each task as for
/// its own group's images.
#[test]
fn each_data_group_keeps_its_own_batchnorm_statistics() {
    let r = two_groups(&[]);
    assert_eq!(r.cfg.model.domain_norm, crate::config::DomainNorm::Statistics, "auto resolves for two groups");
    let mut t = trainer(r);
    let bn = "backbone.stages.0.0.bn";
    let names: Vec<String> = t.model.named_variables().into_iter().map(|(n, _)| n).collect();
    for key in ["weight", "bias", "domains.0.running_mean", "domains.1.running_var", "domains.1.num_batches_tracked"] {
        assert!(names.contains(&format!("{bn}.{key}")), "{bn}.{key} missing: {names:?}");
    }
    assert!(!names.contains(&format!("{bn}.running_mean")), "no shared statistics");
    for _ in 0..3 {
        t.step().unwrap();
    }
    let (m0, m1) =
        (variable(&t, &format!("{bn}.domains.0.running_mean")), variable(&t, &format!("{bn}.domains.1.running_mean")));
    assert!(!m0.equal(&m1), "the groups' statistics moved apart");
    assert_eq!(variable(&t, &format!("{bn}.domains.1.num_batches_tracked")).int64_value(&[]), 3);
    let x = t.inputs.groups[1].val.eval_batches().next().unwrap().images;
    let each = tch::no_grad(|| t.model.forward(&x, crate::model::Mode::Eval));
    let on = |d: usize| tch::no_grad(|| t.model.forward_on(&x, d, crate::model::Mode::Eval));
    assert!(each[0].equal(&on(0)[0]) && each[1].equal(&on(1)[1]), "each task through its own group's statistics");
    assert!(!on(0)[1].equal(&on(1)[1]), "the other group's statistics give other outputs");

    let affine = trainer(two_groups(&["model.domain_norm=affine"]));
    let names: Vec<String> = affine.model.named_variables().into_iter().map(|(n, _)| n).collect();
    assert!(names.contains(&format!("{bn}.domains.1.weight")) && !names.contains(&format!("{bn}.weight")));
    let shared = trainer(two_groups(&["model.domain_norm=shared"]));
    let names: Vec<String> = shared.model.named_variables().into_iter().map(|(n, _)| n).collect();
    assert!(names.contains(&format!("{bn}.running_mean")) && !names.iter().any(|n| n.contains(".domains.")));
}

/// The shared-BatchNorm diagnosis measures without changing the run: the same weights and
/// statistics, bit for bit, with measurements between the steps as without.
#[test]
fn measuring_the_groups_norm_gap_changes_no_number() {
    let sets = ["model.domain_norm=shared", "tasks.1.data.train_size=48", "tasks.1.data.augment.hflip=false"];
    let mut plain = trainer(tiny("cpu", "fp32", &sets));
    let mut measured = trainer(tiny("cpu", "fp32", &sets));
    for _ in 0..3 {
        let gap =
            norm_gap::measure(&measured.model, &measured.inputs, measured.at.step).expect("two groups, BatchNorm");
        assert!(gap.mean_distance.is_finite() && gap.variance_ratio >= 1.0, "{gap:?}");
        plain.step().unwrap();
        measured.step().unwrap();
    }
    assert!(flat(&plain).equal(&flat(&measured)), "weights changed");
    assert!(plain.model.buffers().iter().zip(measured.model.buffers()).all(|(a, b)| a.equal(&b)), "statistics changed");
    let one = trainer(tiny("cpu", "fp32", &[]));
    assert!(norm_gap::measure(&one.model, &one.inputs, 0).is_none(), "one data group: nothing to compare");
}
