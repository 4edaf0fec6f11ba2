//! Every architecture through the real binary: a one-epoch run (fp32 and bf16) with finite
//! val losses that `eval` reproduces, and an exact resume from the middle of an epoch
//! (bit-identical weights and metrics.jsonl), each with a balancing method whose state or
//! randomness the resume must carry.
mod common;
use common::*;
use std::path::Path;
use tempfile::tempdir;

/// Every registered architecture (src/model/arch/mod.rs).
fn architectures() -> Vec<&'static str> {
    mtl::model::arch::architecture_names()
}

/// The tiny config with `architecture` and three tasks on a three-stage backbone (so PLE has a
/// shared gate and LTB a node between the leaves' parents and the image).
fn config(name: &str, architecture: &str) -> String {
    tiny_config(name)
        .replace(
            "  backbone: {kind: conv, widths: [4, 8], depth: 1}",
            &format!("  architecture: {architecture}\n  backbone: {{kind: conv, widths: [4, 6, 8], depth: 1}}"),
        )
        .replace(
            "  - {name: seg, kind: segmentation, target: mask, classes: 11}",
            "  - {name: seg, kind: segmentation, target: mask, classes: 11}\n  - {name: color, kind: classification, target: color}",
        )
}

fn val_rows(run: &Path) -> Vec<serde_json::Value> {
    read_lines(&run.join("metrics.jsonl")).into_iter().filter(|r| r["split"] == "val").collect()
}

#[test]
fn every_architecture_trains_an_epoch_in_fp32_and_bf16() {
    let tmp = tempdir().unwrap();
    for arch in architectures() {
        write(tmp.path(), "a.yaml", &config("a", &format!("{{kind: {arch}}}")));
        for precision in ["fp32", "bf16"] {
            let dir = format!("{arch}-{precision}");
            let set = format!("precision={precision}");
            run_in(tmp.path(), &["a.yaml", "--run-dir", &dir, "--set", "train.epochs=1", "--set", &set]).assert_ok();
            let rows = val_rows(&tmp.path().join(&dir));
            assert_eq!(rows.len(), 1, "{dir}");
            for task in ["kind", "seg", "color"] {
                let loss = rows[0][format!("{task}.loss")].as_f64();
                assert!(loss.is_some_and(f64::is_finite), "{dir}: {task}.loss {loss:?}");
            }
            if precision == "fp32" {
                let eval = run_in(tmp.path(), &["eval", &dir, "--checkpoint", "latest"]);
                eval.assert_ok();
                let miou = format!("{:.4}", rows[0]["seg.miou"].as_f64().unwrap());
                assert!(
                    eval.stdout().contains(&miou),
                    "{dir}: eval does not reproduce seg.miou {miou}:\n{}",
                    eval.stdout()
                );
            }
        }
    }
}

#[test]
fn every_architecture_resumes_bit_identically_mid_epoch() {
    // Methods with state or randomness a resume must carry, taken in turn by the architectures.
    let carried = [
        ("pcgrad", "representation"),
        ("nash", "representation"),
        ("famo", "params"),
        ("gradvac", "representation"),
        ("uncertainty", "params"),
        ("dbmtl", "representation"),
        ("mgda", "representation"),
        ("gradnorm", "representation"),
    ];
    let methods = architectures().into_iter().zip(carried.iter().cycle()).map(|(a, &(m, on))| (a, m, on));
    for (arch, method, on) in methods {
        let tmp = tempdir().unwrap();
        // 48 samples / batch 16: 3 steps per epoch, 2 epochs; the pause at step 2 is mid-epoch.
        let text = config("r", &format!("{{kind: {arch}}}")).replace("train_size: 96", "train_size: 48")
            + &format!("balance: {{method: {method}, on: {on}}}\n");
        write(tmp.path(), "r.yaml", &text);
        run_in(tmp.path(), &["r.yaml", "--run-dir", "straight"]).assert_ok();
        run_in(tmp.path(), &["r.yaml", "--run-dir", "paused", "--set", "train.max_steps=2"]).assert_ok();
        run_in(tmp.path(), &["r.yaml", "--run-dir", "paused", "--resume"]).assert_ok();
        let (a, b) = (tmp.path().join("straight"), tmp.path().join("paused"));
        assert!(checkpoint_pointer(&a, "LATEST").ends_with("step-000006"));
        assert_eq!(latest_weights(&a), latest_weights(&b), "{arch} ({method} {on}): resumed weights differ");
        assert_eq!(metric_rows(&a), metric_rows(&b), "{arch} ({method} {on}): metrics differ");
    }
}

/// PAD-Net and MTI-Net with every balancing method (gradient methods in parameter space, the
/// default) on the dense `scenes` tasks, whose initial predictions each join their task's
/// loss: one short epoch each, finite val losses.
#[test]
fn fusion_architectures_train_with_every_balancing_method() {
    let tmp = tempdir().unwrap();
    for arch in ["padnet", "mtinet"] {
        for method in mtl::balance::method_names() {
            let text = format!(
                "name: f\nseed: 1\ndevice: cpu\nthreads: 1\n\
                 data: {{dataset: scenes, train_size: 16, val_size: 8, image_size: 16, batch_size: 8, eval_batch_size: 8}}\n\
                 model:\n  architecture: {{kind: {arch}, aux_weight: 0.5}}\n  backbone: {{kind: conv, widths: [4, 6], depth: 1}}\n\
                 tasks:\n  - {{name: semantic, kind: segmentation, target: semantic, classes: 4}}\n  \
                 - {{name: depth, kind: regression, target: depth}}\n  - {{name: normal, kind: normals, target: normal}}\n\
                 balance: {{method: {method}}}\noptim: {{kind: adamw, lr: 0.01}}\ntrain: {{epochs: 1, log_every: 1}}\n"
            );
            write(tmp.path(), "f.yaml", &text);
            let dir = format!("{arch}-{method}");
            run_in(tmp.path(), &["f.yaml", "--run-dir", &dir]).assert_ok();
            let rows = val_rows(&tmp.path().join(&dir));
            for task in ["semantic", "depth", "normal"] {
                let loss = rows[0][format!("{task}.loss")].as_f64();
                assert!(loss.is_some_and(f64::is_finite), "{dir}: {task}.loss {loss:?}");
            }
        }
    }
}
