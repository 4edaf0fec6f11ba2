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

    let pcgrad = run_in(
        tmp.path(),
        &["t.yaml", "--set", "train.baselines=runs/t-baselines.json", "--set", "balance.method=pcgrad"],
    );
    pcgrad.assert_ok();
    // Δm with its unit and direction, in the last evaluation's table.
    let summary = pcgrad.stdout();
    assert!(summary.contains("  Δm ") && summary.contains(" % (lower is better)"), "{summary}");
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
    assert!(out.contains("| runs/t-mmoe | mmoe | static |"), "{out}");
    assert!(out.contains("| Δm % (lower is better) |"), "{out}");
    // (tiny_config's seed is 3.)
    assert!(
        out.contains("| runs/t | hps | pcgrad (params) | 3 |")
            && out.contains("| runs/t1 | hps | pcgrad (params) | 1 |"),
        "{out}"
    );
    let summary = out
        .lines()
        .find(|l| l.starts_with("| runs/t, runs/t1 | hps | pcgrad (params) | 3, 1 |"))
        .expect("a row over the seeds");
    let number = |cell: &str| cell.replace('\u{2212}', "-").parse::<f64>().unwrap();
    let cells: Vec<&str> = summary.split('|').map(str::trim).collect();
    let per_seed: Vec<f64> = out
        .lines()
        .filter(|l| l.starts_with("| runs/t | hps | pcgrad") || l.starts_with("| runs/t1 | hps | pcgrad"))
        .map(|l| number(l.split('|').map(str::trim).nth(l.split('|').count() - 4).unwrap()))
        .collect();
    let mean = number(cells[cells.len() - 4]);
    assert!((mean - (per_seed[0] + per_seed[1]) / 2.0).abs() <= 0.006, "{summary} vs {per_seed:?}");
    assert_eq!(out.matches("| runs/t-stl-kind | hps | static |").count(), 1, "a single run gets no summary row: {out}");
    // A single-task baseline compared with itself: Δm = 0.
    assert!(out.contains("| runs/t-stl-kind | hps | static |") && out.contains("+0.00"), "{out}");
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

/// A run directory as `compare` reads it, without training: the config and one val row.
fn fake_run(dir: &std::path::Path, name: &str, config: &str, miou: f64) {
    let run = dir.join("runs").join(name);
    std::fs::create_dir_all(&run).unwrap();
    write(&run, "config.yaml", config);
    let rows = [
        r#"{"step":6,"epoch":1,"split":"train","kind.loss":1.5,"seg.loss":1.0,"images_per_second":100.0}"#.to_string(),
        format!(
            r#"{{"step":6,"epoch":1,"split":"val","kind.accuracy":0.5,"kind.loss":1.4,"seg.miou":{miou},"seg.loss":0.9}}"#
        ),
    ];
    write(&run, "metrics.jsonl", &(rows.join("\n") + "\n"));
}

/// The rows of compare's tables whose first cell is `first`.
fn rows_starting<'a>(out: &'a str, first: &str) -> Vec<&'a str> {
    out.lines().filter(|l| l.starts_with(&format!("| {first} |"))).collect()
}

#[test]
fn compare_averages_only_seeds_of_one_configuration() {
    let tmp = tempdir().unwrap();
    let base = tiny_config("t");
    fake_run(tmp.path(), "a", &base, 0.40);
    // Another experiment of the same config name: a learning rate and the epochs changed.
    fake_run(tmp.path(), "b", &base.replace("lr: 0.01", "lr: 0.02").replace("epochs: 2", "epochs: 3"), 0.60);
    // The same configuration and seed as a: a repeat.
    fake_run(tmp.path(), "c", &base, 0.44);
    // The same configuration with another seed, name and device: a second seed of a.
    fake_run(tmp.path(), "d", &base.replace("seed: 3", "seed: 4").replace("name: t", "name: t-again"), 0.50);

    let run = run_in(tmp.path(), &["compare", "runs/a", "runs/b", "--chart", "ab.png"]);
    run.assert_ok();
    let out = run.stdout();
    assert_eq!(rows_starting(&out, "runs/a").len(), 1, "{out}");
    assert_eq!(rows_starting(&out, "runs/b").len(), 1, "{out}");
    assert!(!out.contains("| runs/a, runs/b |") && !out.contains("seeds"), "two experiments, never one mean: {out}");
    assert!(out.contains("note: runs/a and runs/b differ in optim.lr, train.epochs"), "{out}");

    let run = run_in(tmp.path(), &["compare", "runs/a", "runs/c", "--chart", "ac.png"]);
    run.assert_ok();
    let out = run.stdout();
    assert!(!out.contains("| runs/a, runs/c |") && !out.contains("| seeds |"), "a repeated seed is no seed: {out}");
    assert!(out.contains("note: runs/a, runs/c are one configuration with repeated seeds (3, 3)"), "{out}");

    let run = run_in(tmp.path(), &["compare", "runs/a", "runs/d", "runs/b", "--chart", "adb.png"]);
    run.assert_ok();
    let out = run.stdout();
    let summary = rows_starting(&out, "runs/a, runs/d");
    assert_eq!(summary.len(), 1, "one row over the two seeds: {out}");
    assert!(summary[0].starts_with("| runs/a, runs/d | hps | static | 3, 4 |"), "{out}");
    assert!(summary[0].contains("| 0.4500 |"), "seg.miou's mean over the seeds: {out}");
    assert!(rows_starting(&out, "runs/b").len() == 1 && !out.contains("runs/d, runs/b"), "{out}");
}
