//! Transfer between tasks (`report.affinity`, `mtl-train groups`; docs/TRANSFER.md) through
//! the binary: measuring changes nothing in training, resume continues the averages, tasks
//! with known relations come out in the right order, and `groups` refuses bad input.
mod common;
use common::*;
use serde_json::Value;
use std::path::Path;
use tempfile::tempdir;

/// metrics.jsonl rows of the training itself (the affinity rows left out).
fn training_rows(run: &Path) -> Vec<Value> {
    metric_rows(run).into_iter().filter(|r| r["split"] != "affinity").collect()
}

fn affinity_json(run: &Path) -> Value {
    let mut v: Value = serde_json::from_str(&std::fs::read_to_string(run.join("affinity.json")).unwrap()).unwrap();
    // Wall-clock time is the one thing two identical runs differ in.
    v.as_object_mut().unwrap().remove("seconds_per_step");
    v
}

/// Classification tasks `(name, target)` on 16-px shapes with plain heads and no
/// augmentation, AdamW at 0.01, affinity every 2 steps; `data` adds the sizes.
fn plain_config(name: &str, seed: u64, data: &str, widths: &str, tasks: &[(&str, &str)], epochs: u64) -> String {
    let tasks: String = tasks
        .iter()
        .map(|(n, t)| {
            let classes = if *t == "color" { 6 } else { 10 };
            format!("  - {{name: {n}, kind: classification, target: {t}, classes: {classes}}}\n")
        })
        .collect();
    format!(
        "name: {name}\nseed: {seed}\ndevice: cpu\nthreads: 1\n\
         data: {{dataset: shapes, val_size: 64, image_size: 16, eval_batch_size: 64, {data}}}\n\
         model:\n  backbone: {{kind: conv, widths: {widths}, depth: 1}}\ntasks:\n{tasks}\
         optim: {{kind: adamw, lr: 0.01}}\n\
         train: {{epochs: {epochs}, eval_every: {epochs}, log_every: 16}}\n\
         checkpoint: {{every: {epochs}, keep_last: 1}}\n\
         report: {{affinity: {{every: 2}}, tensorboard: false}}\n"
    )
}

fn with_affinity(config: &str, every: u64) -> String {
    format!("{config}report: {{affinity: {{every: {every}}}}}\n")
}

/// The tiny config (BatchNorm, dropout, augmentation) under several recipes: a loss-level
/// method, a gradient method in representation space with SGD momentum, and a task with its
/// own data (two data groups). Weights and metrics are bit-identical with and without
/// measuring; the measured run leaves affinity.json, affinity.png and one row per epoch.
#[test]
fn measuring_affinity_changes_no_weight_and_no_metric() {
    let variants = [
        ("plain", tiny_config("a")),
        (
            "pcgrad-repr-sgd",
            tiny_config("a").replace(
                "optim: {kind: adamw, lr: 0.01, weight_decay: 0.01}",
                "optim: {kind: sgd, lr: 0.05, momentum: 0.9}",
            ) + "balance: {method: pcgrad, on: representation}\n",
        ),
        (
            "multi-input",
            tiny_config("a").replace(
                "{name: seg, kind: segmentation, target: mask, classes: 11}",
                "{name: seg, kind: segmentation, target: mask, classes: 11, data: {train_size: 64}}",
            ),
        ),
    ];
    for (name, config) in variants {
        let tmp = tempdir().unwrap();
        write(tmp.path(), "off.yaml", &config);
        write(tmp.path(), "on.yaml", &with_affinity(&config, 3));
        run_in(tmp.path(), &["off.yaml", "--run-dir", "off"]).assert_ok();
        run_in(tmp.path(), &["on.yaml", "--run-dir", "on"]).assert_ok();
        let (off, on) = (tmp.path().join("off"), tmp.path().join("on"));
        assert_eq!(latest_weights(&off), latest_weights(&on), "{name}: weights differ");
        assert_eq!(training_rows(&off), training_rows(&on), "{name}: metrics differ");
        let rows: Vec<Value> = metric_rows(&on).into_iter().filter(|r| r["split"] == "affinity").collect();
        assert_eq!(rows.len(), 2, "{name}: one affinity row per epoch");
        assert!(rows[0]["kind>seg"].is_number() && rows[0]["cos_kind|seg"].is_number(), "{name}: {}", rows[0]);
        let summary = affinity_json(&on);
        // 2 epochs of 6 steps (plain), measured at steps 0, 3, 6, 9.
        assert!(summary["steps"].as_u64().unwrap() >= 2, "{name}: {summary}");
        assert!(on.join("affinity.png").is_file() && !off.join("affinity.json").exists(), "{name}");
        if name == "plain" {
            groups_reads_the_run_and_refuses_bad_input(tmp.path(), &on, &off);
        }
    }
}

/// `groups RUN --budget K` on a run with affinity; bad input is one line and exit code 2.
fn groups_reads_the_run_and_refuses_bad_input(dir: &Path, on: &Path, off: &Path) {
    let out = run_in(dir, &["groups", on.to_str().unwrap(), "--budget", "2"]);
    out.assert_ok();
    assert!(out.stdout().contains("network 1"), "{}", out.stdout());
    let configs: Vec<_> = std::fs::read_dir(on.join("groups")).unwrap().flatten().collect();
    assert!(!configs.is_empty() && configs.len() <= 2);
    for c in configs {
        // Every written config is a valid config with a subset of the tasks.
        let text = std::fs::read_to_string(c.path()).unwrap();
        assert!(text.contains("name: kind") || text.contains("name: seg"), "{text}");
        assert!(!text.contains("affinity"), "group runs do not measure: {text}");
        mtl::config::Config::parse(&text, &c.path().display().to_string(), &[]).expect("a valid config");
    }
    // --train with one network: the grouping is the all-in-one network, so the same Δm.
    let out = run_in(dir, &["groups", on.to_str().unwrap(), "--budget", "1", "--train", "--runs", "trained"]);
    out.assert_ok();
    let stdout = out.stdout();
    let value = |label: &str| {
        stdout.lines().find(|l| l.trim_start().starts_with(label)).map(|l| l[label.len() + 2..].trim().to_string())
    };
    assert!(value("the grouping").is_some() && value("the grouping") == value("all in one"), "{stdout}");
    // compare: a transfer row for the run that measured it, none for the other.
    let out = run_in(dir, &["compare", on.to_str().unwrap(), off.to_str().unwrap()]);
    out.assert_ok();
    let stdout = out.stdout();
    let rows: Vec<&str> = stdout.lines().filter(|l| l.contains("→") && !l.contains("i→j")).collect();
    assert_eq!(rows.len(), 1, "{stdout}");
    assert!(rows[0].starts_with(&format!("| {} |", on.display())), "{}", rows[0]);
    let off = off.to_str().unwrap();
    let on = on.to_str().unwrap();
    run_in(dir, &["groups", off, "--budget", "1"]).assert_user_error(&["affinity.json", "report.affinity"]);
    run_in(dir, &["groups", on, "--budget", "0"]).assert_user_error(&["--budget", "0", "1..=2"]);
    run_in(dir, &["groups", on, "--budget", "3"]).assert_user_error(&["--budget", "3"]);
    run_in(dir, &["groups", on]).assert_user_error(&["--budget"]);
    // Runs given together are pooled (here one run twice); z = 0 counts the means as TAG does.
    let out = run_in(dir, &["groups", on, on, "--budget", "2", "--z", "0"]);
    out.assert_ok();
    assert!(out.stdout().contains("from 2 run(s)") && out.stdout().contains("mean − 0·SE"), "{}", out.stdout());
    run_in(dir, &["groups", on, "--budget", "1", "--z=-1"]).assert_user_error(&["--z", "-1"]);
    run_in(dir, &["groups", on, on, "--exhaustive"]).assert_user_error(&["--exhaustive", "one config"]);
    run_in(dir, &["groups", "nowhere", "--budget", "1"]).assert_user_error(&["nowhere"]);
    std::fs::write(Path::new(on).join("affinity.json"), "{\"tasks\": [\"kind\"]").unwrap();
    run_in(dir, &["groups", on, "--budget", "1"]).assert_user_error(&["affinity.json"]);
}

/// Paused mid-epoch and at an epoch boundary, then resumed: the same averages as straight
/// through (and the training itself bit-identical, as without measuring).
#[test]
fn resume_continues_the_affinity_averages_exactly() {
    let tmp = tempdir().unwrap();
    let config = with_affinity(&tiny_config("r").replace("epochs: 2", "epochs: 3"), 2);
    write(tmp.path(), "r.yaml", &config);
    run_in(tmp.path(), &["r.yaml", "--run-dir", "straight"]).assert_ok();
    for (stop, resume) in [("7", false), ("12", true)] {
        let set = format!("train.max_steps={stop}");
        let mut args = vec!["r.yaml", "--run-dir", "paused", "--set", &set];
        if resume {
            args.push("--resume");
        }
        run_in(tmp.path(), &args).assert_ok();
    }
    run_in(tmp.path(), &["r.yaml", "--run-dir", "paused", "--resume"]).assert_ok();
    let (a, b) = (tmp.path().join("straight"), tmp.path().join("paused"));
    assert_eq!(latest_weights(&a), latest_weights(&b));
    assert_eq!(affinity_json(&a), affinity_json(&b), "the run's averages differ after resuming");
    let strip = |run: &Path| -> Vec<Value> {
        metric_rows(run)
            .into_iter()
            .map(|mut r| {
                r.as_object_mut().unwrap().remove("seconds_per_step");
                r
            })
            .collect()
    };
    assert_eq!(strip(&a), strip(&b));
}

/// Tasks with known relations to `kind` on generated shapes: its duplicate, `kind_flip` (the
/// same label on warm colours, shifted by five on cool ones: related but different), `noise`
/// (labels independent of the image: unrelated) and `color` (the colour family, independent of
/// the kind but read from the same small shared features: competing for them, conflicting). The
/// affinity onto `kind`, and from it, ranks them duplicate > related > unrelated > conflicting,
/// and the unrelated task does not help.
#[test]
fn constructed_tasks_rank_duplicate_related_unrelated_conflicting() {
    let tmp = tempdir().unwrap();
    let tasks = [("kind", "kind"), ("dup", "kind"), ("flip", "kind_flip"), ("noise", "noise"), ("color", "color")];
    let config = plain_config("known", 1, "train_size: 512, batch_size: 32", "[8, 16]", &tasks, 6);
    write(tmp.path(), "known.yaml", &config);
    run_in(tmp.path(), &["known.yaml", "--run-dir", "known"]).assert_ok();
    let s = affinity_json(&tmp.path().join("known"));
    let z = |i: usize, j: usize| s["affinity"][i][j].as_f64().unwrap();
    let (kind, dup, flip, noise, color) = (0, 1, 2, 3, 4);
    let ranked = |v: [f64; 4]| v.windows(2).all(|w| w[0] > w[1]);
    assert!(ranked([z(dup, kind), z(flip, kind), z(noise, kind), z(color, kind)]), "onto kind: {s}");
    assert!(ranked([z(kind, dup), z(kind, flip), z(kind, noise), z(kind, color)]), "from kind: {s}");
    assert!(z(noise, kind) < 0.1 * z(flip, kind), "noise labels do not help: {s}");
    assert!(z(color, kind) < 0.0 && z(kind, color) < 0.0, "the competing task hurts both ways: {s}");
    let cos = |i: usize, j: usize| s["cosine"][i][j].as_f64().unwrap();
    assert!(cos(kind, dup) > cos(kind, flip) && cos(kind, flip) > cos(kind, noise), "cosine: {s}");
}

/// Two ranks at half the batch each (synchronized BatchNorm) measure the matrices one process
/// measures on the whole batch: the losses are the global batch's and the per-task gradients
/// are averaged over the ranks before the lookahead.
#[test]
fn two_ranks_measure_the_global_batch() {
    let tmp = tempdir().unwrap();
    // Plain heads, no augmentation: nothing whose draws follow the rank's share of the batch.
    let tasks = [("kind", "kind"), ("noise", "noise")];
    let config = plain_config("d", 3, "train_size: 96, batch_size: 16", "[4, 8]", &tasks, 1)
        .replace("model:\n", "model:\n  sync_batchnorm: true\n");
    write(tmp.path(), "d.yaml", &config);
    run_in(tmp.path(), &["d.yaml", "--run-dir", "one"]).assert_ok();
    run_in(tmp.path(), &["d.yaml", "--run-dir", "two", "--nproc", "2", "--set", "data.batch_size=8"]).assert_ok();
    let (a, b) = (affinity_json(&tmp.path().join("one")), affinity_json(&tmp.path().join("two")));
    assert_eq!(a["steps"], b["steps"]);
    for key in ["affinity", "cosine"] {
        let flat = |v: &Value| -> Vec<f64> {
            v[key]
                .as_array()
                .unwrap()
                .iter()
                .flat_map(|r| r.as_array().unwrap().iter().map(|x| x.as_f64().unwrap()))
                .collect()
        };
        let scale = flat(&a).iter().fold(0f64, |m, x| m.max(x.abs()));
        for (x, y) in flat(&a).iter().zip(flat(&b)) {
            assert!((x - y).abs() <= 1e-3 * scale, "{key}: {x} vs {y}\n{a}\n{b}");
        }
    }
}
