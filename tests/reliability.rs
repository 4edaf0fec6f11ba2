//! Runs that never lie and never lose data: divergence stops (or skips) with the last finite
//! checkpoint kept, SIGTERM checkpoints and resumes exactly, a run directory has one owner, a
//! run that never checkpointed restarts, and refused commands touch nothing.
mod common;
use common::*;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use tempfile::tempdir;

/// Every finite-valued tensor of a safetensors file is finite.
fn all_finite(file: &Path) -> bool {
    tch::Tensor::read_safetensors(file)
        .unwrap()
        .iter()
        .filter(|(_, t)| t.is_floating_point())
        .all(|(_, t)| t.isfinite().all().int64_value(&[]) == 1)
}

#[test]
fn divergence_stops_with_exit_3_and_keeps_the_last_finite_checkpoint() {
    let tmp = tempdir().unwrap();
    write(tmp.path(), "t.yaml", &tiny_config("d"));
    // One healthy epoch (a checkpoint, BEST), then the same run with an absurd learning rate.
    run_in(tmp.path(), &["t.yaml", "--set", "train.epochs=1"]).assert_ok();
    let run = tmp.path().join("runs/d");
    let latest = checkpoint_pointer(&run, "LATEST");
    let rows = std::fs::read_to_string(run.join("metrics.jsonl")).unwrap();
    let r = run_in(tmp.path(), &["t.yaml", "--resume", "--set", "optim.lr=1e30", "--set", "train.epochs=3"]);
    assert_eq!(r.code(), 3, "{}", r.stderr());
    let lines = r.error_lines();
    assert_eq!(lines.len(), 1, "{}", r.stderr());
    assert!(lines[0].contains("training diverged at step") && lines[0].contains("non-finite"), "{}", lines[0]);
    assert!(lines[0].contains("step-000006"), "names the checkpoint kept: {}", lines[0]);
    assert_eq!(checkpoint_pointer(&run, "LATEST"), latest, "LATEST moved past the divergence");
    for pointer in ["LATEST", "BEST"] {
        assert!(all_finite(&checkpoint_pointer(&run, pointer).join("model.safetensors")), "{pointer}");
    }
    // No checkpoint holds non-finite weights, and the log gained no val row after the divergence.
    for e in std::fs::read_dir(run.join("checkpoints")).unwrap().flatten() {
        if e.file_name().to_string_lossy().starts_with("step-") {
            assert!(all_finite(&e.path().join("model.safetensors")), "{}", e.path().display());
        }
    }
    let after = std::fs::read_to_string(run.join("metrics.jsonl")).unwrap();
    assert!(after.starts_with(&rows) && !after[rows.len()..].contains("\"val\""), "{after}");
}

#[test]
fn skip_step_drops_non_finite_updates_and_stops_after_too_many() {
    let tmp = tempdir().unwrap();
    write(tmp.path(), "t.yaml", &tiny_config("s"));
    let sets = ["--set", "train.on_nonfinite=skip_step", "--set", "train.max_consecutive_skips=3"];
    let mut args = vec!["t.yaml", "--set", "optim.lr=1e30"];
    args.extend(sets);
    let r = run_in(tmp.path(), &args);
    assert_eq!(r.code(), 3, "{}", r.stderr());
    assert!(r.stderr().contains("skipped step"), "{}", r.stderr());
    assert!(r.error_lines()[0].contains("3th skipped step in a row"), "{}", r.stderr());
    // A healthy run in skip mode trains exactly like one in stop mode.
    let mut args = vec!["t.yaml", "--run-dir", "skip", "--set", "train.max_steps=4"];
    args.extend(sets);
    run_in(tmp.path(), &args).assert_ok();
    run_in(tmp.path(), &["t.yaml", "--run-dir", "stop", "--set", "train.max_steps=4"]).assert_ok();
    let weights = |r: &str| std::fs::read(checkpoint_pointer(&tmp.path().join(r), "LATEST").join("model.safetensors"));
    assert_eq!(weights("skip").unwrap(), weights("stop").unwrap());
    let rows = read_lines(&tmp.path().join("skip/metrics.jsonl"));
    assert!(rows.iter().filter(|r| r["split"] == "train").all(|r| r["skipped_steps"] == 0.0), "{rows:?}");
}

#[test]
fn init_from_weights_with_nan_is_refused_by_name() {
    let tmp = tempdir().unwrap();
    write(tmp.path(), "t.yaml", &tiny_config("i"));
    run_in(tmp.path(), &["t.yaml", "--set", "train.max_steps=1"]).assert_ok();
    let file = checkpoint_pointer(&tmp.path().join("runs/i"), "LATEST").join("model.safetensors");
    let mut tensors = tch::Tensor::read_safetensors(&file).unwrap();
    let (name, t) = tensors.iter_mut().find(|(n, _)| n.ends_with("fc.weight")).unwrap();
    let _ = t.get(0).get(0).fill_(f64::NAN);
    let name = name.clone();
    tch::Tensor::write_safetensors(&tensors, tmp.path().join("nan.safetensors")).unwrap();
    run_in(tmp.path(), &["t.yaml", "--run-dir", "j", "--init-from", "nan.safetensors"]).assert_user_error(&[
        "nan.safetensors",
        &name,
        "NaN",
    ]);
    assert!(!tmp.path().join("j").exists());
}

fn kill(child: &std::process::Child, signal: i32) {
    // SAFETY: kill(2) on a child this test started and has not reaped.
    assert_eq!(unsafe { libc::kill(child.id() as i32, signal) }, 0);
}

/// The step LATEST names, 0 before the first checkpoint.
fn latest_step(run: &Path) -> u64 {
    std::fs::read_to_string(run.join("checkpoints/LATEST"))
        .ok()
        .and_then(|name| name.trim().strip_prefix("step-")?.parse().ok())
        .unwrap_or(0)
}

/// A long run of the tiny config: 20 epochs of 6 steps, a checkpoint every epoch.
fn long_config(name: &str) -> String {
    tiny_config(name).replace("epochs: 2", "epochs: 20")
}

#[test]
fn sigterm_writes_a_checkpoint_and_the_resumed_run_is_bit_identical() {
    let tmp = tempdir().unwrap();
    write(tmp.path(), "t.yaml", &long_config("t").replace("epochs: 20", "epochs: 6"));
    run_in(tmp.path(), &["t.yaml", "--run-dir", "straight"]).assert_ok();
    let child = Command::new(binary())
        .current_dir(tmp.path())
        .args(["t.yaml", "--run-dir", "stopped"])
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Mid-run: after the second epoch's checkpoint, then a little into the third epoch.
    let deadline = Instant::now() + Duration::from_secs(120);
    while latest_step(&tmp.path().join("stopped")) < 12 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(2));
    }
    std::thread::sleep(Duration::from_millis(30));
    kill(&child, libc::SIGTERM);
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(143), "{stderr}");
    assert!(stderr.contains("SIGTERM: finishing the current step"), "{stderr}");
    let stopped_at = latest_step(&tmp.path().join("stopped"));
    assert!((12..36).contains(&stopped_at), "checkpoint at {stopped_at}");
    run_in(tmp.path(), &["t.yaml", "--run-dir", "stopped", "--resume"]).assert_ok();
    let weights = |r: &str| std::fs::read(checkpoint_pointer(&tmp.path().join(r), "LATEST").join("model.safetensors"));
    assert_eq!(weights("straight").unwrap(), weights("stopped").unwrap());
    let rows = |r: &str| -> Vec<serde_json::Value> {
        read_lines(&tmp.path().join(r).join("metrics.jsonl"))
            .into_iter()
            .map(|mut v| {
                v.as_object_mut().unwrap().remove("images_per_second");
                v
            })
            .collect()
    };
    assert_eq!(rows("straight"), rows("stopped"));
}

#[test]
fn one_process_per_run_directory_and_a_dead_owner_frees_it() {
    let tmp = tempdir().unwrap();
    write(tmp.path(), "t.yaml", &long_config("o"));
    let run = tmp.path().join("runs/o");
    let mut first = Command::new(binary())
        .current_dir(tmp.path())
        .args(["t.yaml"])
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(120);
    while latest_step(&run) < 6 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(5));
    }
    let second = run_in(tmp.path(), &["t.yaml", "--resume"]);
    second.assert_user_error(&["runs/o", "in use by process", &first.id().to_string()]);
    let third = run_in(tmp.path(), &["t.yaml"]);
    assert_eq!(third.code(), 2, "{}", third.stderr());
    first.kill().unwrap(); // SIGKILL: the lock dies with its owner
    first.wait().unwrap();
    run_in(tmp.path(), &["t.yaml", "--resume", "--set", "train.epochs=3"]).assert_ok();
}

#[test]
fn a_run_that_never_checkpointed_restarts() {
    let tmp = tempdir().unwrap();
    write(tmp.path(), "t.yaml", &tiny_config("r"));
    let run = tmp.path().join("runs/r");
    std::fs::create_dir_all(run.join("checkpoints")).unwrap();
    std::fs::write(run.join("config.yaml"), tiny_config("r")).unwrap();
    std::fs::write(run.join("metrics.jsonl"), "{\"step\":2,\"epoch\":0,\"split\":\"train\",\"kind.loss\":9.0}\n")
        .unwrap();
    let r = run_in(tmp.path(), &["t.yaml"]);
    r.assert_ok();
    assert!(r.stderr().contains("stopped before its first checkpoint; starting it over"), "{}", r.stderr());
    let rows = read_lines(&run.join("metrics.jsonl"));
    assert!(rows.iter().all(|r| r["kind.loss"] != 9.0), "the stale row was dropped");
    assert_eq!(rows.iter().filter(|r| r["split"] == "val").count(), 2);
}

#[test]
fn refused_commands_leave_every_file_as_it_was() {
    let tmp = tempdir().unwrap();
    write(tmp.path(), "t.yaml", &tiny_config("n"));
    run_in(tmp.path(), &["t.yaml", "--set", "train.max_steps=3"]).assert_ok();
    let before = dir_digest(tmp.path());
    let cases: Vec<(Vec<&str>, Vec<&str>)> = vec![
        (vec!["t.yaml", "--resume", "--set", "model.backbone.widths=[8, 16, 32]"], vec!["cannot resume", "model"]),
        (vec!["t.yaml", "--resume", "--set", "seed=9"], vec!["cannot resume", "seed"]),
        (vec!["t.yaml"], vec!["already holds a run"]),
        (vec!["t.yaml", "--resume", "--set", "balance.method=nope"], vec!["balance.method"]),
        (vec!["t.yaml", "--resume", "--set", "balance.options.x=1", "--set", "balance.method=dwa"], vec!["balance"]),
        (vec!["t.yaml", "--resume", "--set", "train.baselines=missing.json"], vec!["missing.json"]),
        (vec!["t.yaml", "--resume", "--init-from", "missing.safetensors"], vec!["missing.safetensors"]),
        (vec!["t.yaml", "--resume", "--set", "data.train_size=99999999"], vec!["data.train_size"]),
        (vec!["t.yaml", "--resume", "--set", "model.heads.kind.hidden=1000000000000"], vec!["hidden"]),
        (vec!["t.yaml", "--resume", "--set", "train.epochs=9223372036854775807"], vec!["train.epochs"]),
    ];
    for (args, needles) in cases {
        run_in(tmp.path(), &args).assert_user_error(&needles);
        assert_eq!(dir_digest(tmp.path()), before, "{args:?} changed a file");
    }
}

#[test]
fn a_refused_command_prints_only_its_error_line() {
    let tmp = tempdir().unwrap();
    write(tmp.path(), "t.yaml", &tiny_config("q").replace("dataset: shapes", "dataset: cifar10_seg\n  root: nowhere"));
    // Without RUST_LOG: the INFO lines of a command that never started are not shown.
    let out = Command::new(binary()).current_dir(tmp.path()).arg("t.yaml").env_remove("RUST_LOG").output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2));
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    // A flag mistake is one line too, with a pointer to --help.
    let out = Command::new(binary()).arg("--no-such-flag").env_remove("RUST_LOG").output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2));
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(stderr.contains("--no-such-flag") && stderr.contains("--help"), "{stderr}");
}
