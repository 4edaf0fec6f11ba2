//! End-to-end: the real binary on tiny configs with generated data.
mod common;
use common::*;
use tempfile::tempdir;

#[test]
fn trains_and_leaves_a_complete_run_directory() {
    let tmp = tempdir().unwrap();
    write(tmp.path(), "tiny.yaml", &tiny_config("tiny"));
    let run = run_in(tmp.path(), &["tiny.yaml"]);
    run.assert_ok();
    let out = run.stdout();
    // A short banner, not the config (that is in the run directory, and in the debug log).
    let banner: Vec<&str> = out.lines().take_while(|l| !l.starts_with("epoch")).collect();
    assert_eq!(banner.len(), 4, "{out}");
    assert!(banner[0].starts_with("mtl-train ") && banner[0].contains("device cpu"), "{out}");
    assert_eq!(banner[1], "data     shapes: 96 train + 40 val images, 16×16");
    assert!(
        banner[2].starts_with("model    conv backbone, ") && banner[2].ends_with("M parameters, tasks kind, seg"),
        "{out}"
    );
    assert_eq!(banner[3], "run dir  runs/tiny");
    assert!(!out.contains("optim:"), "{out}");
    assert!(out.contains("epoch 1 step 2/"), "periodic log lines without a terminal:\n{out}");
    assert!(out.contains("summary:") && out.contains("miou"), "{out}");

    let dir = tmp.path().join("runs/tiny");
    assert!(dir.join("config.yaml").is_file());
    assert!(dir.join("curves.png").is_file());
    let rows = read_lines(&dir.join("metrics.jsonl"));
    let val: Vec<_> = rows.iter().filter(|r| r["split"] == "val").collect();
    assert_eq!(val.len(), 2, "one eval per epoch");
    for key in ["kind.accuracy", "kind.top5", "kind.loss", "seg.miou", "seg.pixel_accuracy", "seg.loss"] {
        assert!(val[1][key].is_number(), "{key} missing in {}", val[1]);
    }
    let train: Vec<_> = rows.iter().filter(|r| r["split"] == "train").collect();
    assert_eq!(train.len(), 6, "12 steps logged every 2");
    assert!(train[0]["kind.loss"].is_number() && train[0]["lr"].is_number());

    let latest = checkpoint_pointer(&dir, "LATEST");
    assert!(latest.ends_with("step-000012"), "{}", latest.display());
    for f in ["model.safetensors", "train_state.safetensors", "state.json", "config.yaml"] {
        assert!(latest.join(f).is_file(), "{f}");
    }
    assert!(checkpoint_pointer(&dir, "BEST").is_dir());
    let kept: Vec<_> = std::fs::read_dir(dir.join("checkpoints"))
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with("step-"))
        .collect();
    assert!(kept.len() <= 2, "keep_last 2 (BEST may coincide): {}", kept.len());
}

#[test]
fn help_documents_every_flag() {
    let tmp = tempdir().unwrap();
    let run = run_in(tmp.path(), &["--help"]);
    run.assert_ok();
    let out = run.stdout();
    for flag in ["--set", "--device", "--run-dir", "--resume", "--init-from", "--allow-missing-heads"] {
        assert!(out.contains(flag), "{flag} undocumented:\n{out}");
    }
}

#[test]
fn bad_configs_are_one_line_errors_and_write_nothing() {
    let tmp = tempdir().unwrap();
    let cases: Vec<(String, Vec<&str>)> = vec![
        (tiny_config("a").replace("depth: 1", "deep: 1"), vec!["bad.yaml", "model.backbone", "deep"]),
        (tiny_config("a").replace("batch_size: 16", "batch_size: sixteen"), vec!["data.batch_size", "line"]),
        (tiny_config("a").replace("lr: 0.01", "lr: -0.01"), vec!["optim.lr"]),
        (tiny_config("a").replace("name: seg", "name: kind"), vec!["tasks[1].name", "duplicate"]),
        (tiny_config("a").replace("target: mask", "target: depth"), vec!["tasks[1].target", "depth"]),
        ("name: [unclosed".to_string(), vec!["bad.yaml"]),
    ];
    for (text, needles) in cases {
        write(tmp.path(), "bad.yaml", &text);
        let run = run_in(tmp.path(), &["bad.yaml"]);
        run.assert_user_error(&needles);
        assert!(!tmp.path().join("runs").exists(), "a bad config created a run directory");
    }
    let run = run_in(tmp.path(), &["missing.yaml"]);
    run.assert_user_error(&["missing.yaml"]);
}

#[test]
fn set_overrides_are_checked_like_the_file() {
    let tmp = tempdir().unwrap();
    write(tmp.path(), "tiny.yaml", &tiny_config("o"));
    run_in(tmp.path(), &["tiny.yaml", "--set", "optim.lrr=1"]).assert_user_error(&["--set", "optim", "lrr"]);
    run_in(tmp.path(), &["tiny.yaml", "--set", "train.epochs=zero"]).assert_user_error(&["train.epochs"]);
    run_in(tmp.path(), &["tiny.yaml", "--set", "nonsense"]).assert_user_error(&["key.path=value"]);
    run_in(tmp.path(), &["tiny.yaml", "--device", "gpu7"]).assert_user_error(&["device"]);
}

#[test]
fn missing_dataset_names_the_path_and_the_fetch_script() {
    let tmp = tempdir().unwrap();
    let text = tiny_config("c")
        .replace("dataset: shapes", "dataset: cifar10_seg\n  root: nowhere/cifar")
        .replace("image_size: 16", "image_size: 32")
        .replace("target: kind, classes: 10", "target: class, classes: 10")
        .replace("classes: 11", "classes: 10");
    write(tmp.path(), "c.yaml", &text);
    run_in(tmp.path(), &["c.yaml"]).assert_user_error(&[
        "nowhere/cifar",
        "data.download: true",
        "scripts/fetch.sh cifar10_seg",
    ]);
}

#[test]
fn cuda_request_without_cuda_is_a_clear_error() {
    if tch::Cuda::is_available() {
        eprintln!("skipped: this machine has CUDA");
        return;
    }
    let tmp = tempdir().unwrap();
    write(tmp.path(), "tiny.yaml", &tiny_config("g"));
    run_in(tmp.path(), &["tiny.yaml", "--device", "cuda"]).assert_user_error(&["CUDA", "not available"]);
}

#[test]
fn an_existing_run_is_not_overwritten() {
    let tmp = tempdir().unwrap();
    write(tmp.path(), "tiny.yaml", &tiny_config("e"));
    run_in(tmp.path(), &["tiny.yaml", "--set", "train.epochs=1"]).assert_ok();
    let metrics = tmp.path().join("runs/e/metrics.jsonl");
    let before = std::fs::read(&metrics).unwrap();
    run_in(tmp.path(), &["tiny.yaml"]).assert_user_error(&["runs/e", "--resume"]);
    assert_eq!(before, std::fs::read(&metrics).unwrap());
}

#[test]
fn the_mlp_two_task_example_trains() {
    let tmp = tempdir().unwrap();
    let cfg =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/configs/shapes_mlp_two_tasks.yaml")).unwrap();
    write(tmp.path(), "mlp.yaml", &cfg);
    let run = run_in(
        tmp.path(),
        &["mlp.yaml", "--set", "data.train_size=256", "--set", "data.val_size=64", "--set", "train.epochs=2"],
    );
    run.assert_ok();
    let rows = read_lines(&tmp.path().join("runs/shapes_mlp_two_tasks/metrics.jsonl"));
    assert!(rows.iter().any(|r| r["split"] == "val" && r["count.accuracy"].is_number()));
}
