//! Every architecture with every backbone it accepts, on tiny models: output shapes, which
//! parameters each task's loss reaches (ownership), and the representation cut (the tasks'
//! own parts reach shared parameters only through `Pass::cross`).
use super::*;
use crate::config::Config;
use crate::error::is_user_error;
use crate::model::{HeadInput, HeadKind, HeadSpec, Mode, MultiTaskModel};
use tch::{Device, Kind};

/// Three tasks on 8×8 images: classification, segmentation, classification (three of them
/// for the MLP), so every architecture mixes more than two columns or experts.
fn config(arch: &str, backbone: &str) -> Config {
    let (bb, grey) = match backbone {
        "conv" => ("{kind: conv, widths: [3, 4, 5], depth: 2}", false),
        "resnet" => ("{kind: resnet, widths: [2, 3, 4], depth: 1}", false),
        "mlp" => ("{kind: mlp, widths: [6, 5, 4], norm: none}", true),
        "resnet18" => ("{kind: resnet18, widths: [2]}", false),
        "resnet50_os8" => ("{kind: resnet50, widths: [2], output_stride: 8}", false),
        _ => unreachable!(),
    };
    let side = side(backbone);
    let middle = if backbone == "mlp" {
        "classification, target: count, classes: 3"
    } else {
        "segmentation, target: mask, classes: 4"
    };
    let text = format!(
        "name: t\nseed: 5\ndata: {{dataset: shapes, image_size: {side}, grayscale: {grey}}}\nmodel:\n  architecture: {arch}\n  backbone: {bb}\ntasks:\n  - {{name: a, kind: classification, target: kind, classes: 3}}\n  - {{name: b, kind: {middle}}}\n  - {{name: c, kind: classification, target: color, classes: 2}}\n"
    );
    Config::parse(&text, "test.yaml", &[]).unwrap()
}

/// The images' side: 8, or 32 for resnet18 (its coarsest map is 1/32 of it).
fn side(backbone: &str) -> i64 {
    if backbone == "resnet18" {
        32
    } else {
        8
    }
}

fn heads(cfg: &Config) -> Vec<HeadSpec> {
    cfg.tasks
        .iter()
        .map(|t| HeadSpec {
            task: t.name.clone(),
            kind: match t.kind.as_str() {
                "classification" => HeadKind::Vector { outputs: t.classes },
                _ => HeadKind::Dense { channels: t.classes, unit_length: false },
            },
            domain: 0,
        })
        .collect()
}

fn build(arch: &str, backbone: &str) -> (Config, MultiTaskModel) {
    let cfg = config(&format!("{{kind: {arch}}}"), backbone);
    let channels = if cfg.data.grayscale { 1 } else { 3 };
    let model = MultiTaskModel::new(&cfg, &heads(&cfg), Device::Cpu, channels, cfg.data.image_size).unwrap();
    (cfg, model)
}

/// Every architecture with every backbone it accepts.
fn cases() -> Vec<(&'static str, &'static str)> {
    let mut cases = Vec::new();
    for a in architecture_names() {
        for b in ["conv", "resnet", "mlp", "resnet18", "resnet50_os8"] {
            if b != "mlp" || !matches!(a, "mtan" | "ltb" | "padnet" | "mtinet") {
                cases.push((a, b));
            }
        }
    }
    cases
}

fn batch(model: &MultiTaskModel, cfg: &Config) -> Tensor {
    let c = if cfg.data.grayscale { 1 } else { 3 };
    let n = cfg.data.image_size;
    fixed_noise(&[4, c, n, n], 11).to_device(model.device())
}

/// Values in [-1, 1) from a ChaCha stream. Not libtorch's generator: the tests running in
/// parallel share it, so another test's draw between a `manual_seed` and a `randn` here
/// changed the numbers (two "identical" losses differed, once in several runs).
fn fixed_noise(shape: &[i64], seed: u64) -> Tensor {
    use rand::{Rng, SeedableRng};
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    let values: Vec<f32> = (0..shape.iter().product::<i64>()).map(|_| rng.gen_range(-1.0..1.0)).collect();
    Tensor::from_slice(&values).view(shape)
}

/// A loss per task whose gradient reaches every output value: `Σ r ⊙ output` for fixed r,
/// plus the same of each of the task's auxiliary predictions (PAD-Net, MTI-Net).
fn losses(forward: &crate::model::Forward) -> Vec<Tensor> {
    let score = |o: &Tensor, seed: u64| (o * fixed_noise(&o.size(), seed).to_device(o.device())).sum(Kind::Float);
    forward
        .outputs
        .iter()
        .enumerate()
        .map(|(t, o)| {
            let aux = forward.auxiliary.iter().filter(|a| a.task == t);
            aux.zip(40..).fold(score(o, 12 + t as u64), |sum, (a, seed)| sum + score(&a.prediction, seed) * a.weight)
        })
        .collect()
}

fn nonzero(g: &Tensor) -> bool {
    g.defined() && g.abs().max().double_value(&[]) > 0.0
}

#[test]
fn outputs_have_the_heads_shapes_in_train_and_eval() {
    for (arch, backbone) in cases() {
        let (cfg, model) = build(arch, backbone);
        let x = batch(&model, &cfg);
        for mode in [Mode::Eval, Mode::Train] {
            let step = (mode == Mode::Train).then_some((3, 1));
            let out = tch::no_grad(|| model.run(&x, model.pass(mode, step, HeadInput::Attached))).outputs;
            let shapes: Vec<Vec<i64>> = out.iter().map(Tensor::size).collect();
            let want: Vec<Vec<i64>> = if backbone == "mlp" {
                vec![vec![4, 3], vec![4, 3], vec![4, 2]]
            } else {
                let n = cfg.data.image_size;
                vec![vec![4, 3], vec![4, 4, n, n], vec![4, 2]]
            };
            assert_eq!(shapes, want, "{arch} {backbone} {mode:?}");
            for o in &out {
                assert!(o.isfinite().all().int64_value(&[]) == 1, "{arch} {backbone}: non-finite output");
            }
        }
    }
}

/// Task t's loss gives exactly zero gradient to every other task's private parameters and a
/// non-zero one to some of its own; every shared parameter is reached by at least two tasks
/// (LTB: by some task, since a sampled tree leaves columns unused).
#[test]
fn each_loss_reaches_its_own_and_the_shared_parameters_only() {
    for (arch, backbone) in cases() {
        let (cfg, model) = build(arch, backbone);
        let x = batch(&model, &cfg);
        let (shared, private) = model.param_groups();
        assert!(!shared.is_empty(), "{arch} {backbone}: nothing shared");
        let step = Some((7, 0));
        let forward = model.run(&x, model.pass(Mode::Train, step, HeadInput::Attached));
        let losses = losses(&forward);
        let all: Vec<Tensor> = shared.iter().chain(private.iter().flatten()).map(Tensor::shallow_clone).collect();
        let mut shared_users = vec![0; shared.len()];
        for (t, loss) in losses.iter().enumerate() {
            let grads = Tensor::run_backward(&[loss], &all, true, false);
            let (g_shared, g_private) = grads.split_at(shared.len());
            for (users, g) in shared_users.iter_mut().zip(g_shared) {
                *users += nonzero(g) as usize;
            }
            let mut offset = 0;
            for (u, params) in private.iter().enumerate() {
                let g = &g_private[offset..offset + params.len()];
                offset += params.len();
                if u == t {
                    assert!(g.iter().any(nonzero), "{arch} {backbone}: task {t}'s loss misses its own parameters");
                } else {
                    assert!(!g.iter().any(nonzero), "{arch} {backbone}: task {t}'s loss reaches task {u}'s parameters");
                }
            }
        }
        // LTB samples one tree per step, and DSelect-k's smooth-step gates give an expert exactly
        // zero weight outside [-γ/2, γ/2]: a node or expert may serve no task, or one, this step.
        let sparse = arch == "ltb" || arch == "dselect_k";
        // MTI-Net's finer scales reach only the dense tasks: a per-image head reads the
        // coarsest map alone, so with one dense task their modules serve that task only.
        let least = if sparse || arch == "mtinet" { 1 } else { 2 };
        let names: Vec<String> =
            model.named_trainable().into_iter().map(|(n, _)| n).filter(|n| model.owner(n).is_none()).collect();
        for (name, users) in names.iter().zip(&shared_users) {
            if sparse && *users == 0 {
                continue; // a column no sampled tree used, or an expert no gate selected
            }
            if arch == "mtinet" && name.contains(".se.") && *users == 0 {
                continue; // a squeeze of one unit (width 3 / 4) whose ReLU is off for this batch
            }
            assert!(*users >= least, "{arch} {backbone}: shared '{name}' reached by {users} task(s)");
        }
    }
}

/// In representation space the losses reach no shared parameter directly (every path goes
/// through a crossing), sending the copies' gradient back through the crossings reaches no
/// private parameter, and the two together give exactly the gradient of the plain backward.
#[test]
fn the_representation_separates_shared_from_private_parameters() {
    for (arch, backbone) in cases() {
        let (cfg, model) = build(arch, backbone);
        let plan = plan(&cfg.model.architecture, &cfg.model.backbone, 3).unwrap().0;
        if plan.no_representation().is_some() {
            assert_eq!(arch, "mtan", "only MTAN has no representation");
            continue;
        }
        let x = batch(&model, &cfg);
        let params: Vec<(String, Tensor)> = model.named_trainable();
        let grads = || -> Vec<Tensor> {
            params.iter().map(|(_, p)| if p.grad().defined() { p.grad().copy() } else { p.zeros_like() }).collect()
        };
        let zero = || {
            for (_, p) in &params {
                let mut g = p.grad();
                if g.defined() {
                    let _ = g.zero_();
                }
            }
        };
        let step = Some((7, 0));
        let plain = model.run(&x, model.pass(Mode::Train, step, HeadInput::Attached));
        losses(&plain).into_iter().reduce(|a, b| a + b).unwrap().backward();
        let want = grads();
        zero();

        let mut rep = model.run(&x, model.pass(Mode::Train, step, HeadInput::Detached));
        let rep_losses = losses(&rep);
        let (z, copies) = rep.representation.take().expect("representation recorded");
        assert!(!z.is_empty(), "{arch} {backbone}: empty representation");
        rep_losses.into_iter().reduce(|a, b| a + b).unwrap().backward();
        let direct = grads();
        for ((name, _), g) in params.iter().zip(&direct) {
            if model.owner(name).is_none() {
                assert!(!nonzero(g), "{arch} {backbone}: '{name}' is shared but a task's own part reaches it directly");
            }
        }
        let terms: Vec<Tensor> = z
            .iter()
            .zip(&copies)
            .filter(|(_, c)| c.grad().defined())
            .map(|(z, c)| (z * c.grad()).sum(Kind::Float))
            .collect();
        terms.into_iter().reduce(|a, b| a + b).unwrap().backward();
        let got = grads();
        // A gradient that is zero in exact arithmetic (a BatchNorm's bias feeding another
        // BatchNorm through a linear stretch, as in the bottleneck ResNets) is rounding noise
        // on both sides: it is compared on the scale of the model's gradients.
        let scale = want.iter().map(|w| w.abs().max().double_value(&[])).fold(0.0, f64::max);
        for (((name, _), g), (d, w)) in params.iter().zip(&got).zip(direct.iter().zip(&want)) {
            if model.owner(name).is_some() {
                assert!(g.equal(d), "{arch} {backbone}: private '{name}' reached through the representation");
            }
            let floor = (1e-2 * scale).max(1e-6);
            let err = (g - w).abs().max().double_value(&[]) / w.abs().max().double_value(&[]).max(floor);
            assert!(err < 1e-4, "{arch} {backbone}: '{name}' gradient differs from the plain backward by {err}");
        }
    }
}

#[test]
fn refused_combinations_are_one_line_user_errors() {
    for (arch, needle) in
        ["mtan", "ltb", "padnet", "mtinet"].map(|a| (a, format!("{a} needs a conv or resnet backbone")))
    {
        let cfg = config(&format!("{{kind: {arch}}}"), "mlp");
        let e = plan(&cfg.model.architecture, &cfg.model.backbone, 3).err().expect("refused");
        assert!(is_user_error(&e) && e.to_string().contains(&needle) && !e.to_string().contains('\n'), "{e}");
    }
    let mut cfg = config("{kind: ltb}", "conv");
    cfg.model.backbone.widths = vec![4];
    let e = plan(&cfg.model.architecture, &cfg.model.backbone, 3).err().expect("refused");
    assert!(e.to_string().contains("at least 2 stages"), "{e}");
    for (arch, text) in [
        ("{kind: mmoe, experts: 0}", "model.architecture.experts: expected an integer in 1..=64"),
        ("{kind: dselect_k, experts: 3, k: 4}", "model.architecture.k: expected an integer in 1..=3"),
        ("{kind: cgc, expert: 2}", "model.architecture.expert: not an option of architecture 'cgc'"),
        ("{kind: cross_stitch, self_weight: 0}", "model.architecture.self_weight: expected a number in (0, 1]"),
        ("{kind: hps, experts: 2}", "accepted: none"),
        ("{kind: padnet, aux_weight: -1}", "model.architecture.aux_weight: expected a number in [0, 100]"),
        ("{kind: mtinet, aux_weights: 1}", "not an option of architecture 'mtinet'; accepted: aux_weight"),
        ("{kind: moe}", "unknown architecture 'moe' (expected one of: hps, cross_stitch"),
    ] {
        let cfg = config(arch, "conv");
        let e = plan(&cfg.model.architecture, &cfg.model.backbone, 3).err().expect("refused");
        assert!(is_user_error(&e) && e.to_string().contains(text), "{arch}: {e}");
    }
}

#[test]
fn options_are_recorded_with_their_defaults() {
    let cfg = config("{kind: dselect_k, k: 1}", "conv");
    let (_, options) = plan(&cfg.model.architecture, &cfg.model.backbone, 3).unwrap();
    let yaml = serde_yaml::to_string(&options).unwrap();
    assert_eq!(yaml, "entropy_reg: 1e-6\nexperts: 3\ngamma: 1.0\nk: 1\n");
}

/// LTB's trees: one-hot parents; the same step draws the same tree, evaluation takes the
/// largest logit.
#[test]
fn ltb_samples_trees_by_step_and_fixes_them_for_evaluation() {
    let (cfg, model) = build("ltb", "conv");
    let x = batch(&model, &cfg);
    let run = |step: Option<(u64, u64)>, mode: Mode| -> Vec<Tensor> {
        tch::no_grad(|| model.run(&x, model.pass(mode, step, HeadInput::Attached)).outputs)
    };
    let same = |a: &[Tensor], b: &[Tensor]| a.iter().zip(b).all(|(a, b)| a.equal(b));
    assert!(same(&run(Some((4, 0)), Mode::Train), &run(Some((4, 0)), Mode::Train)));
    let differs = (0..20).any(|s| !same(&run(Some((s, 0)), Mode::Train), &run(Some((4, 0)), Mode::Train)));
    assert!(differs, "twenty steps drew the same tree");
    // Evaluation: every parent is column 0 while the logits tie (zeros), whatever the step.
    assert!(same(&run(None, Mode::Eval), &run(Some((9, 0)), Mode::Eval)));
}

/// Gates on the flattened image are built for `data.image_size`² inputs: other images (NYUv2's
/// width keeps its aspect) are refused before anything is built.
#[test]
fn gated_architectures_refuse_images_that_are_not_square() {
    for arch in architecture_names() {
        let cfg = config(&format!("{{kind: {arch}}}"), "conv");
        assert!(check_images(&cfg.model, 3, 8, 8).is_ok());
        let wide = check_images(&cfg.model, 3, 8, 16);
        if matches!(arch, "mmoe" | "cgc" | "ple" | "dselect_k") {
            let e = wide.expect_err("refused");
            assert!(is_user_error(&e) && e.to_string().contains("8×16"), "{e}");
        } else {
            assert!(wide.is_ok(), "{arch}");
        }
    }
}

/// The size check counts variables without allocating them: the count equals the built model's.
#[test]
fn counting_without_allocating_matches_the_built_model() {
    for (arch, backbone) in cases() {
        let (cfg, model) = build(arch, backbone);
        let channels = if cfg.data.grayscale { 1 } else { 3 };
        let built: i64 = model.named_variables().iter().map(|(_, t)| t.numel() as i64).sum();
        let counted = MultiTaskModel::variable_count(&cfg, &heads(&cfg), channels, cfg.data.image_size).unwrap();
        assert_eq!(counted as i64, built, "{arch} {backbone}");
    }
}

/// PAD-Net and MTI-Net record one initial prediction per task (per scale for MTI-Net) while
/// training, each in its head's output shape, weighted by `aux_weight`; none when evaluating.
#[test]
fn fusion_architectures_record_initial_predictions_while_training() {
    for (arch, per_task) in [("padnet", 1), ("mtinet", 3)] {
        let cfg = config(&format!("{{kind: {arch}, aux_weight: 0.25}}"), "conv");
        let model = MultiTaskModel::new(&cfg, &heads(&cfg), Device::Cpu, 3, 8).unwrap();
        let x = batch(&model, &cfg);
        let train = tch::no_grad(|| model.run(&x, model.pass(Mode::Train, Some((0, 0)), HeadInput::Attached)));
        assert_eq!(train.auxiliary.len(), 3 * per_task, "{arch}");
        for a in &train.auxiliary {
            assert_eq!(a.prediction.size(), train.outputs[a.task].size(), "{arch} task {}", a.task);
            assert_eq!(a.weight, 0.25);
        }
        let eval = tch::no_grad(|| model.run(&x, model.pass(Mode::Eval, None, HeadInput::Attached)));
        assert!(eval.auxiliary.is_empty(), "{arch}");
    }
}
