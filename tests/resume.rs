//! Exact resume, resume compatibility and damaged checkpoints, through the real binary.
mod common;
use common::*;
use std::path::Path;
use tempfile::tempdir;

/// 96 samples / batch 16 = 6 steps per epoch; 3 epochs = 18 steps.
fn config(optim: &str) -> String {
    tiny_config("r")
        .replace("epochs: 2", "epochs: 3")
        .replace("optim: {kind: adamw, lr: 0.01, weight_decay: 0.01}", optim)
}

fn weights(run: &Path) -> Vec<u8> {
    latest_weights(run)
}

fn exact_resume(optim: &str) {
    let tmp = tempdir().unwrap();
    write(tmp.path(), "r.yaml", &config(optim));
    run_in(tmp.path(), &["r.yaml", "--run-dir", "straight"]).assert_ok();
    let straight = tmp.path().join("straight");
    assert!(checkpoint_pointer(&straight, "LATEST").ends_with("step-000018"));
    // 8: mid-epoch (epoch 2, position 2); 12: an epoch boundary; then continue to the end.
    let paused = tmp.path().join("paused");
    for stop in ["8", "12"] {
        let mut args = vec!["r.yaml", "--run-dir", "paused", "--set"];
        let set = format!("train.max_steps={stop}");
        args.push(&set);
        if stop != "8" {
            args.push("--resume");
        }
        run_in(tmp.path(), &args).assert_ok();
        assert!(checkpoint_pointer(&paused, "LATEST").ends_with(format!("step-0000{:0>2}", stop)));
    }
    run_in(tmp.path(), &["r.yaml", "--run-dir", "paused", "--resume"]).assert_ok();
    assert_eq!(weights(&straight), weights(&paused), "resumed weights differ from the uninterrupted run");
    assert_eq!(metric_rows(&straight), metric_rows(&paused), "metrics.jsonl differs");
}

#[test]
fn adamw_resume_is_bit_identical() {
    exact_resume("optim: {kind: adamw, lr: 0.01, weight_decay: 0.01, grad_clip: 1.0}");
}

#[test]
fn sgd_nesterov_resume_is_bit_identical() {
    exact_resume("optim: {kind: sgd, lr: 0.05, momentum: 0.9, nesterov: true, weight_decay: 0.001}");
}

#[test]
fn resume_refuses_model_task_or_data_changes_and_accepts_harmless_ones() {
    let tmp = tempdir().unwrap();
    write(tmp.path(), "r.yaml", &tiny_config("c"));
    run_in(tmp.path(), &["r.yaml", "--set", "train.max_steps=4"]).assert_ok();
    let before = weights(&tmp.path().join("runs/c"));
    run_in(tmp.path(), &["r.yaml", "--resume", "--set", "model.backbone.widths=[4, 16]"])
        .assert_user_error(&["cannot resume", "model.backbone.widths[1]: 8 -> 16"]);
    run_in(tmp.path(), &["r.yaml", "--resume", "--set", "tasks.0.classes=10", "--set", "data.train_size=80"])
        .assert_user_error(&["data.train_size"]);
    assert_eq!(before, weights(&tmp.path().join("runs/c")), "a refused resume changed the checkpoint");
    let run = run_in(tmp.path(), &["r.yaml", "--resume", "--set", "train.epochs=3", "--set", "train.log_every=3"]);
    run.assert_ok();
    assert!(checkpoint_pointer(&tmp.path().join("runs/c"), "LATEST").ends_with("step-000018"));
}

#[test]
fn resume_without_a_checkpoint_starts_from_step_zero() {
    // A requeued job passes --resume every time, the first time too.
    let tmp = tempdir().unwrap();
    write(tmp.path(), "r.yaml", &tiny_config("n"));
    let run = run_in(tmp.path(), &["r.yaml", "--resume", "--set", "train.max_steps=2"]);
    run.assert_ok();
    assert!(run.stderr().contains("no checkpoint to resume from yet; starting from step 0"), "{}", run.stderr());
    assert!(checkpoint_pointer(&tmp.path().join("runs/n"), "LATEST").ends_with("step-000002"));
    run_in(tmp.path(), &["r.yaml", "--resume", "nowhere/step-000001"]).assert_user_error(&["nowhere/step-000001"]);
}

/// Every kind of damage: an error line naming the file (and key where there is one).
#[test]
fn damaged_checkpoints_are_refused_by_name() {
    let tmp = tempdir().unwrap();
    write(tmp.path(), "r.yaml", &tiny_config("d"));
    run_in(tmp.path(), &["r.yaml", "--set", "train.max_steps=3"]).assert_ok();
    // Another architecture's weights, for the "foreign checkpoint" case.
    write(tmp.path(), "wide.yaml", &tiny_config("w").replace("widths: [4, 8]", "widths: [6, 8]"));
    run_in(tmp.path(), &["wide.yaml", "--set", "train.max_steps=3"]).assert_ok();
    let good = checkpoint_pointer(&tmp.path().join("runs/d"), "LATEST");
    let foreign = checkpoint_pointer(&tmp.path().join("runs/w"), "LATEST").join("model.safetensors");
    let model = std::fs::read(good.join("model.safetensors")).unwrap();

    type Damage<'a> = (&'a str, Box<dyn Fn(&Path) + 'a>, Vec<&'a str>);
    let damage: Vec<Damage> = vec![
        (
            "truncated",
            Box::new(|p: &Path| std::fs::write(p, &model[..model.len() / 2]).unwrap()),
            vec!["model.safetensors", "truncated"],
        ),
        ("empty", Box::new(|p: &Path| std::fs::write(p, b"").unwrap()), vec!["model.safetensors", "empty"]),
        (
            "garbage",
            Box::new(|p: &Path| std::fs::write(p, b"\x10\x00\x00\x00\x00\x00\x00\x00{nope: not json}").unwrap()),
            vec!["model.safetensors", "JSON"],
        ),
        (
            "foreign",
            Box::new(|p: &Path| {
                std::fs::copy(&foreign, p).unwrap();
            }),
            vec!["model.safetensors", "backbone.stages.0.0.bn.bias", "shape"],
        ),
    ];
    for (what, damage_fn, needles) in damage {
        let copy = tmp.path().join(format!("ckpt-{what}"));
        copy_dir(&good, &copy);
        damage_fn(&copy.join("model.safetensors"));
        let path = copy.display().to_string();
        let run = run_in(tmp.path(), &["r.yaml", "--run-dir", &format!("runs/{what}"), "--resume", &path]);
        run.assert_user_error(&needles);
    }
    let copy = tmp.path().join("ckpt-state");
    copy_dir(&good, &copy);
    std::fs::write(copy.join("state.json"), "{\"step\": ").unwrap();
    run_in(tmp.path(), &["r.yaml", "--run-dir", "runs/s", "--resume", copy.to_str().unwrap()])
        .assert_user_error(&["state.json"]);
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap().flatten() {
        std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
    }
}

/// Every stateful balancing method resumes exactly (its state rides in train_state.safetensors).
#[test]
fn balancing_methods_resume_bit_identically() {
    let methods = [
        ("uncertainty", "params"),
        ("dwa", "params"),
        ("rlw", "params"),
        ("famo", "params"),
        ("pcgrad", "representation"),
        ("gradvac", "params"),
        ("nash", "representation"),
        ("dbmtl", "params"),
        ("gradnorm", "representation"),
    ];
    for (method, on) in methods {
        let tmp = tempdir().unwrap();
        let text = config("optim: {kind: adamw, lr: 0.01}")
            .replace("epochs: 3", "epochs: 4")
            .replace("train_size: 96", "train_size: 48")
            + &format!("balance: {{method: {method}, on: {on}}}\n");
        write(tmp.path(), "m.yaml", &text);
        run_in(tmp.path(), &["m.yaml", "--run-dir", "straight"]).assert_ok();
        run_in(tmp.path(), &["m.yaml", "--run-dir", "paused", "--set", "train.max_steps=5"]).assert_ok();
        run_in(tmp.path(), &["m.yaml", "--run-dir", "paused", "--resume"]).assert_ok();
        let (a, b) = (tmp.path().join("straight"), tmp.path().join("paused"));
        assert_eq!(weights(&a), weights(&b), "{method}: resumed weights differ");
        assert_eq!(metric_rows(&a), metric_rows(&b), "{method}: metrics differ");
    }
}
