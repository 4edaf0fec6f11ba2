//! Single-task baselines, Δm at every eval, and the compare table, through the binary.
mod common;
use common::*;
use tempfile::tempdir;

#[test]
fn baselines_then_delta_m_then_compare() {
    let tmp = tempdir().unwrap();
    write(tmp.path(), "t.yaml", &tiny_config("t"));
    let run = run_in(tmp.path(), &["baselines", "t.yaml", "--set", "train.epochs=1"]);
    run.assert_ok();
    let file = tmp.path().join("runs/t-baselines.json");
    let b: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&file).unwrap()).unwrap();
    for k in ["kind.accuracy", "kind.top5", "seg.miou", "seg.pixel_accuracy"] {
        assert!(b["metrics"][k].is_number(), "{k} missing from {b}");
    }
    assert!(b["metrics"].get("kind.loss").is_none(), "losses are not baselines");
    assert!(tmp.path().join("runs/t-stl-seg/checkpoints/LATEST").is_file());

    run_in(tmp.path(), &["t.yaml", "--set", "train.baselines=runs/t-baselines.json", "--set", "balance.method=pcgrad"])
        .assert_ok();
    let mmoe = ["--set", "model.architecture.kind=mmoe", "--set", "train.epochs=1", "--run-dir", "runs/t-mmoe"];
    run_in(tmp.path(), &[&["t.yaml"][..], &mmoe[..]].concat()).assert_ok();
    let val: Vec<_> =
        read_lines(&tmp.path().join("runs/t/metrics.jsonl")).into_iter().filter(|r| r["split"] == "val").collect();
    assert!(val.iter().all(|r| r["delta_m"].is_number()), "Δm at every eval");

    // A second seed of the same method: compare adds its mean and spread over the seeds.
    run_in(
        tmp.path(),
        &[
            "t.yaml",
            "--run-dir",
            "runs/t1",
            "--set",
            "seed=1",
            "--set",
            "train.baselines=runs/t-baselines.json",
            "--set",
            "balance.method=pcgrad",
        ],
    )
    .assert_ok();
    let run = run_in(
        tmp.path(),
        &[
            "compare",
            "runs/t",
            "runs/t1",
            "runs/t-stl-kind",
            "runs/t-mmoe",
            "--baselines",
            "runs/t-baselines.json",
            "--chart",
            "c.png",
            "--table",
            "c.md",
        ],
    );
    run.assert_ok();
    let out = run.stdout();
    assert!(out.contains("| t | mmoe | static |"), "{out}");
    // (tiny_config's seed is 3.)
    assert!(
        out.contains("| t | hps | pcgrad (params) | 3 |") && out.contains("| t | hps | pcgrad (params) | 1 |"),
        "{out}"
    );
    let summary =
        out.lines().find(|l| l.starts_with("| t | hps | pcgrad (params) | 3, 1 |")).expect("a row over the seeds");
    let cells: Vec<&str> = summary.split('|').map(str::trim).collect();
    let per_seed: Vec<f64> = out
        .lines()
        .filter(|l| {
            l.starts_with("| t | hps | pcgrad (params) | 3 |") || l.starts_with("| t | hps | pcgrad (params) | 1 |")
        })
        .map(|l| l.split('|').map(str::trim).nth(l.split('|').count() - 4).unwrap().parse::<f64>().unwrap())
        .collect();
    let mean: f64 = cells[cells.len() - 4].parse().unwrap();
    assert!((mean - (per_seed[0] + per_seed[1]) / 2.0).abs() <= 0.006, "{summary} vs {per_seed:?}");
    assert_eq!(out.matches("| t-stl-kind | hps | static |").count(), 1, "a single run gets no summary row: {out}");
    // A single-task baseline compared with itself: Δm = 0.
    assert!(out.contains("| t-stl-kind | hps | static |") && out.contains("+0.00"), "{out}");
    assert!(tmp.path().join("c.png").is_file() && tmp.path().join("c.md").is_file());
    // Stopping here must not need a rerun: the finished baselines are reused.
    let again = run_in(tmp.path(), &["baselines", "t.yaml", "--set", "train.epochs=1"]);
    again.assert_ok();
    assert!(again.stdout().contains("reusing"), "{}", again.stdout());
}

#[test]
fn missing_baselines_file_is_a_clear_error() {
    let tmp = tempdir().unwrap();
    write(tmp.path(), "t.yaml", &tiny_config("m"));
    run_in(tmp.path(), &["t.yaml", "--set", "train.baselines=nope.json"])
        .assert_user_error(&["nope.json", "baselines"]);
    run_in(tmp.path(), &["compare", "nowhere"]).assert_user_error(&["nowhere"]);
}
