//! Multi-input MTL through the binary: three generated domains in Office-31's layout, one
//! task each (`tasks[].data`), trained, resumed mid-epoch, streamed, predicted and evaluated;
//! and the configs it refuses.
mod common;
use common::*;
use std::path::Path;
use tempfile::tempdir;

const SIDE: u32 = 16;

/// Class 0: a bright top half; 1: a bright left half; 2: a bright centre square. Each domain
/// renders them its own way: `plain`, `inverted` (colours inverted), `noisy` (strong noise,
/// tinted). Pixel noise from a per-image LCG, so the files are the same on every run.
fn write_domain(root: &Path, domain: &str, per_class: usize, classes: &[&str]) {
    for (k, class) in classes.iter().enumerate() {
        let dir = root.join(domain).join("images").join(class);
        std::fs::create_dir_all(&dir).unwrap();
        for i in 0..per_class {
            let mut state = (k as u64 * 1000 + i as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15);
            let mut noise = |amp: f64| {
                state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                ((state >> 33) as f64 / (1u64 << 31) as f64 - 0.5) * amp
            };
            let img = image::RgbImage::from_fn(SIDE, SIDE, |x, y| {
                let on = match k % 3 {
                    0 => y < SIDE / 2,
                    1 => x < SIDE / 2,
                    _ => (4..12).contains(&x) && (4..12).contains(&y),
                };
                let base = if on { 200.0 } else { 50.0 };
                let mut px = |tint: f64, amp: f64| (base * tint + noise(amp)).clamp(0.0, 255.0) as u8;
                match domain {
                    "inverted" => image::Rgb([255 - px(1.0, 30.0), 255 - px(1.0, 30.0), 255 - px(1.0, 30.0)]),
                    "noisy" => image::Rgb([px(1.0, 60.0), px(0.6, 60.0), px(0.3, 60.0)]),
                    _ => image::Rgb([px(1.0, 30.0), px(1.0, 30.0), px(1.0, 30.0)]),
                }
            });
            img.save(dir.join(format!("{i:03}.png"))).unwrap();
        }
    }
}

/// 20, 12 and 8 images per class: 36, 21 and 15 train images, 4, 2 and 1 batches of 8 per pass.
fn write_domains(root: &Path) {
    for (domain, n) in [("plain", 20), ("inverted", 12), ("noisy", 8)] {
        write_domain(root, domain, n, &["bar_h", "bar_v", "square"]);
    }
}

fn config(name: &str) -> String {
    let task = |t: &str| {
        format!("  - {{name: {t}, kind: classification, target: label, classes: 3, data: {{root: d/{t}}}}}\n")
    };
    format!(
        r#"name: {name}
seed: 5
device: cpu
threads: 1
data: {{dataset: office31, image_size: 16, batch_size: 8, eval_batch_size: 16, augment: {{crop_padding: 1}}}}
model:
  backbone: {{kind: conv, widths: [8, 16], depth: 1}}
tasks:
{}{}{}balance: {{method: ew, on: params}}
optim: {{kind: adamw, lr: 0.01}}
schedule: {{kind: cosine, warmup_steps: 2}}
train: {{epochs: 6, eval_every: 3, log_every: 2}}
checkpoint: {{every: 3, keep_last: 3}}
"#,
        task("plain"),
        task("inverted"),
        task("noisy")
    )
}

fn setup() -> tempfile::TempDir {
    let tmp = tempdir().unwrap();
    write_domains(&tmp.path().join("d"));
    write(tmp.path(), "m.yaml", &config("m"));
    tmp
}

fn final_val(run: &Path) -> serde_json::Value {
    read_lines(&run.join("metrics.jsonl")).into_iter().rfind(|r| r["split"] == "val").unwrap()
}

#[test]
fn each_task_trains_on_its_own_domain_and_resumes_mid_epoch_exactly() {
    let tmp = setup();
    let dir = tmp.path();
    let straight = run_in(dir, &["m.yaml", "--run-dir", "straight"]);
    straight.assert_ok();
    assert!(straight.stdout().contains("office31 (tasks plain): 36 train + 12 val images"), "{}", straight.stdout());
    let val = final_val(&dir.join("straight"));
    for t in ["plain", "inverted", "noisy"] {
        let acc = val[format!("{t}.accuracy")].as_f64().unwrap();
        assert!(acc > 0.6, "{t}.accuracy {acc} is not well above chance (1/3): {val}");
    }
    // 24 steps; step 5 is mid-epoch (epoch 1, batch 1) and mid-pass for inverted (pass 2, batch 1).
    run_in(dir, &["m.yaml", "--run-dir", "paused", "--set", "train.max_steps=5"]).assert_ok();
    let state = std::fs::read_to_string(checkpoint_pointer(&dir.join("paused"), "LATEST").join("state.json")).unwrap();
    let state: serde_json::Value = serde_json::from_str(&state).unwrap();
    assert_eq!((state["epoch"].as_u64(), state["position"].as_u64()), (Some(1), Some(1)));
    let places: Vec<(u64, u64, u64)> = state["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|g| {
            (g["pass"].as_u64().unwrap(), g["position"].as_u64().unwrap(), g["batches_per_pass"].as_u64().unwrap())
        })
        .collect();
    assert_eq!(places, vec![(1, 1, 4), (2, 1, 2), (5, 0, 1)]);
    run_in(dir, &["m.yaml", "--run-dir", "paused", "--resume"]).assert_ok();
    assert_eq!(latest_weights(&dir.join("straight")), latest_weights(&dir.join("paused")), "resumed weights differ");
    assert_eq!(metric_rows(&dir.join("straight")), metric_rows(&dir.join("paused")), "metrics.jsonl differs");
    // Streamed from disk (every task's data over the memory limit): the same batches.
    let streamed = run_in(dir, &["m.yaml", "--run-dir", "streamed", "--set", "data.max_memory_mb=0.01"]);
    streamed.assert_ok();
    assert!(streamed.stdout().matches(", streamed").count() == 3, "{}", streamed.stdout());
    assert_eq!(
        latest_weights(&dir.join("straight")),
        latest_weights(&dir.join("streamed")),
        "streaming changed the run"
    );

    // eval: each task on its own val split, as training's last evaluation.
    let eval = run_in(dir, &["eval", "straight", "--checkpoint", "latest"]);
    eval.assert_ok();
    let acc = format!("{:.4}", val["noisy.accuracy"].as_f64().unwrap());
    assert!(
        eval.stdout().lines().any(|l| l.contains("noisy") && l.contains("accuracy") && l.contains(&acc)),
        "{}",
        eval.stdout()
    );

    // predict --task: only the chosen heads.
    let images = dir.join("d/plain/images/square");
    let out =
        run_in(dir, &["predict", "straight", "--images", images.to_str().unwrap(), "--out", "p", "--task", "plain"]);
    out.assert_ok();
    let csv = std::fs::read_to_string(dir.join("p/predictions.csv")).unwrap();
    assert_eq!(csv.lines().next().unwrap(), "file,plain,plain_probability");
    let square = csv.lines().skip(1).filter(|l| l.split(',').nth(1) == Some("2")).count();
    assert!(square * 2 > csv.lines().count() - 1, "most squares are class 2:\n{csv}");
    let both = run_in(
        dir,
        &["predict", "straight", "--images", images.to_str().unwrap(), "--out", "q", "--task", "plain,noisy"],
    );
    both.assert_ok();
    let csv = std::fs::read_to_string(dir.join("q/predictions.csv")).unwrap();
    assert_eq!(csv.lines().next().unwrap(), "file,plain,plain_probability,noisy,noisy_probability");
    run_in(dir, &["predict", "straight", "--images", images.to_str().unwrap(), "--out", "r", "--task", "webcam"])
        .assert_user_error(&["--task", "no task 'webcam'", "plain, inverted, noisy"]);
    assert!(!dir.join("r").exists());
}

/// Each domain's own BatchNorm scale and shift as well (`model.domain_norm: affine`): named
/// per domain in the checkpoint, recorded in config.yaml, and a run paused mid-epoch resumes
/// bit for bit. With shared BatchNorm the run says once how far apart the domains look to it.
#[test]
fn per_domain_affine_resumes_exactly_and_shared_batchnorm_is_diagnosed() {
    let tmp = setup();
    let dir = tmp.path();
    let affine = ["--set", "model.domain_norm=affine", "--set", "train.epochs=2"];
    run_in(dir, &[&["m.yaml", "--run-dir", "straight"][..], &affine].concat()).assert_ok();
    let cfg = std::fs::read_to_string(dir.join("straight/config.yaml")).unwrap();
    assert!(cfg.contains("domain_norm: affine"), "{cfg}");
    let names: Vec<String> = final_weights(&dir.join("straight")).into_iter().map(|(n, _)| n).collect();
    for d in 0..3 {
        assert!(names.contains(&format!("backbone.stages.1.0.bn.domains.{d}.weight")), "{names:?}");
    }
    run_in(dir, &[&["m.yaml", "--run-dir", "paused", "--set", "train.max_steps=5"][..], &affine].concat()).assert_ok();
    run_in(dir, &[&["m.yaml", "--run-dir", "paused", "--resume"][..], &affine].concat()).assert_ok();
    assert_eq!(latest_weights(&dir.join("straight")), latest_weights(&dir.join("paused")), "resumed weights differ");
    assert_eq!(metric_rows(&dir.join("straight")), metric_rows(&dir.join("paused")), "metrics.jsonl differs");

    let shared = run_in(
        dir,
        &["m.yaml", "--run-dir", "shared", "--set", "model.domain_norm=shared", "--set", "train.max_steps=2"],
    );
    shared.assert_ok();
    let all = format!("{}{}", shared.stdout(), shared.stderr());
    let said: Vec<&str> = all.lines().filter(|l| l.contains("pooled standard deviations")).collect();
    assert_eq!(said.len(), 1, "said once:\n{all}");
    assert!(said[0].contains("model.domain_norm: statistics"), "{}", said[0]);
    let own = run_in(dir, &["m.yaml", "--run-dir", "own", "--set", "train.max_steps=2"]);
    own.assert_ok();
    assert!(!format!("{}{}", own.stdout(), own.stderr()).contains("pooled standard"), "nothing to say");
}

/// Every domain's batch sharded over two ranks (Gloo on the CPU) trains as one process at
/// twice the batch, with synchronized BatchNorm keeping each domain's statistics; a run paused
/// on two ranks resumes on one, and one paused on one resumes on two.
#[test]
fn two_ranks_train_every_domain_as_one_process_at_twice_the_batch() {
    let tmp = setup();
    let dir = tmp.path();
    // NCHW activations and no crop padding: see tests/distributed.rs (`batchnorm_config`).
    let cfg = config("m")
        .replace("threads: 1", "threads: 1\nspeed: {channels_last: false}")
        .replace("crop_padding: 1", "crop_padding: 0")
        .replace("batch_size: 8", "batch_size: 4")
        .replace("epochs: 6", "epochs: 2")
        .replace("model:\n", "model:\n  sync_batchnorm: true\n");
    write(dir, "dp.yaml", &cfg);
    run_in(dir, &["dp.yaml", "--run-dir", "one", "--set", "data.batch_size=8"]).assert_ok();
    let two = run_in(dir, &["dp.yaml", "--run-dir", "two", "--nproc", "2"]);
    two.assert_ok();
    assert!(two.stdout().contains("× 2 ranks (Gloo)"), "{}", two.stdout());
    let (one, two) = (dir.join("one"), dir.join("two"));
    let diff = relative_difference(&one, &two);
    assert!(diff <= 1e-5, "2 ranks × 4 differ from 1 × 8 by {diff:e}");
    let (a, b) = (final_val(&one), final_val(&two));
    for t in ["plain", "inverted", "noisy"] {
        let key = format!("{t}.accuracy");
        assert_eq!(a[&key], b[&key], "{key}");
    }
    // The comparison can tell: each rank's own BatchNorm batch statistics are not one process's.
    run_in(dir, &["dp.yaml", "--run-dir", "per-rank", "--nproc", "2", "--set", "model.sync_batchnorm=false"])
        .assert_ok();
    let diff = relative_difference(&one, &dir.join("per-rank"));
    assert!(diff > 1e-3, "per-rank BatchNorm should differ, got {diff:e}");
    // Across world sizes, resumed mid-epoch: 2 ranks for 3 steps, then 1; 1 for 3, then 2.
    run_in(dir, &["dp.yaml", "--run-dir", "down", "--nproc", "2", "--set", "train.max_steps=3"]).assert_ok();
    run_in(dir, &["dp.yaml", "--run-dir", "down", "--resume"]).assert_ok();
    let first = ["dp.yaml", "--run-dir", "up", "--set", "data.batch_size=8", "--set", "train.max_steps=3"];
    run_in(dir, &first).assert_ok();
    run_in(dir, &["dp.yaml", "--run-dir", "up", "--resume", "--nproc", "2"]).assert_ok();
    for run in ["down", "up"] {
        let diff = relative_difference(&one, &dir.join(run));
        assert!(diff <= 1e-5, "{run}: {diff:e}");
    }
    // A task's own batch size is not rescaled: resuming it at another world size is refused.
    let own = ["dp.yaml", "--run-dir", "own", "--set", "tasks.1.data.batch_size=4", "--set", "train.max_steps=2"];
    run_in(dir, &[&own[..], &["--nproc", "2"]].concat()).assert_ok();
    run_in(dir, &["dp.yaml", "--run-dir", "own", "--resume", "--set", "tasks.1.data.batch_size=4"])
        .assert_user_error(&["tasks[1].data.batch_size", "resume on 2 ranks"]);
}

#[test]
fn baselines_train_each_task_alone_on_its_own_data() {
    let tmp = setup();
    let dir = tmp.path();
    run_in(dir, &["baselines", "m.yaml", "--set", "train.epochs=1"]).assert_ok();
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("runs/m-baselines.json")).unwrap()).unwrap();
    for t in ["plain", "inverted", "noisy"] {
        assert!(json["metrics"][format!("{t}.accuracy")].is_number(), "{json}");
        let cfg = std::fs::read_to_string(dir.join(format!("runs/m-stl-{t}/config.yaml"))).unwrap();
        assert!(cfg.contains(&format!("d/{t}")), "the baseline of {t} reads its own data:\n{cfg}");
    }
    let train = final_val(&dir.join("runs/m-stl-noisy"));
    assert!(train.get("plain.accuracy").is_none(), "a baseline has one task: {train}");
}

#[test]
fn bad_multi_input_configs_are_one_line_errors_and_write_nothing() {
    let tmp = setup();
    let dir = tmp.path();
    std::fs::create_dir_all(dir.join("empty/images")).unwrap();
    write_domain(&dir.join("d"), "four", 4, &["bar_h", "bar_v", "square", "extra"]);
    let refused = |sets: &[&str], needles: &[&str]| {
        let mut args = vec!["m.yaml", "--run-dir", "never"];
        for s in sets {
            args.push("--set");
            args.push(s);
        }
        run_in(dir, &args).assert_user_error(needles);
        assert!(!dir.join("never").exists(), "{sets:?} created the run directory");
    };
    refused(&["tasks.1.data.root=empty"], &["empty/images", "no class folders"]);
    refused(&["tasks.2.data.root=d/four"], &["tasks[2].classes: 3", "4 class folders"]);
    refused(
        &["tasks.2.data.root=d/four", "tasks.2.data.classes=[bar_h, bar_v, square]"],
        &["class folder 'extra' is not listed in data.classes"],
    );
    refused(&["tasks.1.data.image_size=32"], &["tasks[1].data.image_size", "differs from data.image_size 16"]);
    refused(&["tasks.0.data.grayscale=true"], &["tasks[0].data.grayscale"]);
    refused(&["balance.method=mgda", "balance.on=representation"], &["balance.on: representation", "own data"]);
    refused(&["train.epoch_by=webcam"], &["train.epoch_by", "'webcam'"]);
    refused(&["model.domain_norm=own"], &["model.domain_norm", "own"]);
    refused(
        &["model.domain_norm=statistics", "model.backbone.norm=none"],
        &["model.domain_norm", "statistics", "model.backbone.norm is none"],
    );
    refused(&["tasks.1.data.batch_size=0"], &["tasks[1].data.batch_size"]);
    refused(&["tasks.1.data.colour=1"], &["tasks[1].data", "colour"]);
    refused(&["tasks.0.data.dataset=shapez"], &["tasks[0].data.dataset", "shapez"]);
    refused(&["tasks.0.target=kind"], &["tasks[0].target", "'label'"]);
    refused(&["tasks.0.data.dataset=folder"], &["d/plain/images: no .png", "office31's layout"]);
    refused(
        &["data.classes=[a]", "tasks.0.data.dataset=shapes", "tasks.0.target=kind", "tasks.0.classes=10"],
        &["tasks[0].data.classes", "shapes does not read a class per subfolder"],
    );
}
