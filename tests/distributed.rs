//! Data-parallel training on the CPU (Gloo, two ranks on two cores), end to end through the
//! binary: N ranks of batch B train as one process of batch N·B (plain, synchronized
//! BatchNorm, a gradient method, a loss method); checkpoints continue at another world size;
//! a killed rank ends the others with one line naming it, and the run resumes; Ctrl-C stops
//! every rank after one common step; a bad launch environment is one line; torchrun launches
//! the same run as `--nproc`.
mod common;
use common::*;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use tempfile::tempdir;

/// The tests' tiny config with two classification tasks, no BatchNorm and no dropout, per-rank
/// batch 8: 12 steps; 44 val images in batches of 12 (ragged shares).
fn config() -> String {
    tiny_config("dp")
        .replace("val_size: 40", "val_size: 44")
        .replace("batch_size: 16", "batch_size: 8")
        .replace("eval_batch_size: 20", "eval_batch_size: 12")
        .replace("depth: 1}\n  heads:\n    kind: {hidden: 8, dropout: 0.1}", "depth: 1, norm: none}")
        .replace(
            "{name: seg, kind: segmentation, target: mask, classes: 11}",
            "{name: count, kind: classification, target: count, classes: 3}",
        )
        .replace("log_every: 2}", "log_every: 2, dist_timeout_seconds: 20}")
        .replace(", monitor: seg.miou}", "}")
}

/// BatchNorm everywhere and a segmentation task (no crop padding, so no pixel is ignored and
/// the per-rank loss means average to the global one). NCHW activations: oneDNN's channels-last
/// weight gradients sum in an order that depends on the batch size, a rounding difference the
/// decoder's convolution amplifies to about 1e-5 in 12 AdamW steps (1e-6 in NCHW).
fn batchnorm_config() -> String {
    config()
        .replace("threads: 1", "threads: 1\nspeed: {channels_last: false}")
        .replace("norm: none", "norm: batch")
        .replace("crop_padding: 2", "crop_padding: 0")
        .replace("classes: 3}", "classes: 3}\n  - {name: seg, kind: segmentation, target: mask, classes: 11}")
}

/// The val rows of a run's metrics.jsonl.
fn val_rows(run: &Path) -> Vec<serde_json::Value> {
    read_lines(&run.join("metrics.jsonl")).into_iter().filter(|r| r["split"] == "val").collect()
}

fn assert_same_val_metrics(a: &Path, b: &Path) {
    let (ra, rb) = (val_rows(a), val_rows(b));
    assert_eq!(ra.len(), rb.len());
    for (x, y) in ra.iter().zip(&rb) {
        for (k, v) in x.as_object().unwrap() {
            if let (Some(p), Some(q)) = (v.as_f64(), y[k].as_f64()) {
                assert!((p - q).abs() <= 1e-5 * p.abs().max(1.0), "{k}: {p} vs {q}");
            }
        }
    }
}

#[test]
fn two_ranks_train_as_one_process_at_twice_the_batch() {
    let tmp = tempdir().unwrap();
    write(tmp.path(), "plain.yaml", &config());
    write(tmp.path(), "bn.yaml", &batchnorm_config());
    // Dropout masks are drawn for the global batch: each rank applies its rows.
    let dropout = config().replace("norm: none}", "norm: none}\n  heads:\n    kind: {hidden: 8, dropout: 0.3}");
    write(tmp.path(), "dropout.yaml", &dropout);
    let cases: &[(&str, &str, &[&str])] = &[
        ("plain", "plain.yaml", &[]),
        ("dropout", "dropout.yaml", &[]),
        ("sync-batchnorm", "bn.yaml", &["--set", "model.sync_batchnorm=true"]),
        ("mgda", "plain.yaml", &["--set", "balance.method=mgda"]),
        ("mgda-representation", "plain.yaml", &["--set", "balance.method=mgda", "--set", "balance.on=representation"]),
        ("dwa", "plain.yaml", &["--set", "balance.method=dwa"]),
    ];
    for (name, file, extra) in cases {
        let one = format!("{name}-1");
        let two = format!("{name}-2");
        let mut args = vec![*file, "--run-dir", &one, "--set", "data.batch_size=16"];
        args.extend_from_slice(extra);
        run_in(tmp.path(), &args).assert_ok();
        let mut args = vec![*file, "--run-dir", &two, "--nproc", "2"];
        args.extend_from_slice(extra);
        let run = run_in(tmp.path(), &args);
        run.assert_ok();
        assert!(run.stdout().contains("× 2 ranks (Gloo), global batch 16"), "{}", run.stdout());
        assert_eq!(run.stdout().matches("summary:").count(), 1, "rank 0 alone prints:\n{}", run.stdout());
        let (a, b) = (tmp.path().join(&one), tmp.path().join(&two));
        let diff = relative_difference(&a, &b);
        assert!(diff <= 1e-5, "{name}: 2 ranks × 8 differ from 1 × 16 by {diff:e}");
        assert_same_val_metrics(&a, &b);
        let rows = |r: &Path| read_lines(&r.join("metrics.jsonl")).len();
        assert_eq!(rows(&a), rows(&b), "{name}: rank 0 alone writes metrics.jsonl");
    }
    // The comparison can tell: per-rank BatchNorm statistics (DDP's default) are not one
    // process's at twice the batch.
    run_in(tmp.path(), &["bn.yaml", "--run-dir", "per-rank", "--nproc", "2"]).assert_ok();
    let diff = relative_difference(&tmp.path().join("sync-batchnorm-1"), &tmp.path().join("per-rank"));
    assert!(diff > 1e-3, "per-rank BatchNorm should differ, got {diff:e}");
}

#[test]
fn checkpoints_continue_at_another_world_size() {
    let tmp = tempdir().unwrap();
    write(tmp.path(), "c.yaml", &config());
    run_in(tmp.path(), &["c.yaml", "--run-dir", "straight", "--set", "data.batch_size=16"]).assert_ok();
    let straight = tmp.path().join("straight");

    // 2 ranks × 8 for 5 steps (mid-epoch), then 1 process: the unchanged config's per-rank batch
    // becomes 16, the global batch; a per-rank batch set to something else is refused.
    run_in(tmp.path(), &["c.yaml", "--run-dir", "down", "--nproc", "2", "--set", "train.max_steps=5"]).assert_ok();
    run_in(tmp.path(), &["c.yaml", "--run-dir", "down", "--resume", "--set", "data.batch_size=12"])
        .assert_user_error(&["global batch is 16", "data.batch_size 8 × 2 ranks", "--set data.batch_size=16"]);
    run_in(tmp.path(), &["c.yaml", "--run-dir", "down", "--resume"]).assert_ok();
    // 1 process × 16 for 7 steps, then 2 ranks: × 8 set by hand, or × 16 in the config, which
    // becomes 8; 3 ranks cannot share 16.
    let first = ["--set", "data.batch_size=16", "--set", "train.max_steps=7"];
    for run in ["up", "up-kept"] {
        run_in(tmp.path(), &[&["c.yaml", "--run-dir", run][..], &first].concat()).assert_ok();
    }
    run_in(tmp.path(), &["c.yaml", "--run-dir", "up", "--resume", "--nproc", "2"]).assert_ok();
    let kept = ["c.yaml", "--run-dir", "up-kept", "--resume", "--set", "data.batch_size=16"];
    run_in(tmp.path(), &[&kept[..], &["--nproc", "3"]].concat()).assert_user_error(&["global batch 16", "3 ranks"]);
    run_in(tmp.path(), &[&kept[..], &["--nproc", "2"]].concat()).assert_ok();
    for run in ["down", "up", "up-kept"] {
        let run = tmp.path().join(run);
        let diff = relative_difference(&straight, &run);
        assert!(diff <= 1e-5, "{}: {diff:e}", run.display());
        assert_same_val_metrics(&straight, &run);
        let state: serde_json::Value = serde_json::from_str(
            &std::fs::read_to_string(checkpoint_pointer(&run, "LATEST").join("state.json")).unwrap(),
        )
        .unwrap();
        assert_eq!(state["step"], 12);
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// Starts `world` ranks of `mtl-train args` the torchrun way (no launcher in between).
fn start_ranks(dir: &Path, args: &[&str], world: usize) -> Vec<Child> {
    let port = free_port().to_string();
    (0..world)
        .map(|rank| {
            Command::new(binary())
                .args(args)
                .current_dir(dir)
                .env("RUST_LOG", "warn")
                .env("RANK", rank.to_string())
                .env("LOCAL_RANK", rank.to_string())
                .env("WORLD_SIZE", world.to_string())
                .env("MASTER_ADDR", "127.0.0.1")
                .env("MASTER_PORT", &port)
                .stdout(Stdio::null())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect()
}

fn wait_for(path: &Path, limit: Duration) {
    let until = Instant::now() + limit;
    while !path.exists() {
        assert!(Instant::now() < until, "{} did not appear", path.display());
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn a_killed_rank_ends_the_others_and_the_run_resumes() {
    let tmp = tempdir().unwrap();
    let long =
        config().replace("epochs: 2", "epochs: 300").replace("dist_timeout_seconds: 20", "dist_timeout_seconds: 15");
    write(tmp.path(), "k.yaml", &long);
    for victim in [1usize, 0] {
        let run_dir = format!("killed-{victim}");
        let mut ranks = start_ranks(tmp.path(), &["k.yaml", "--run-dir", &run_dir], 2);
        wait_for(&tmp.path().join(&run_dir).join("checkpoints/LATEST"), Duration::from_secs(60));
        ranks[victim].kill().unwrap();
        let killed = Instant::now();
        let survivor = ranks.remove(1 - victim).wait_with_output().unwrap();
        let took = killed.elapsed();
        let _ = ranks[0].wait();
        let stderr = String::from_utf8_lossy(&survivor.stderr);
        assert!(!survivor.status.success(), "the surviving rank must fail:\n{stderr}");
        // Gloo notices at once and the heartbeats name the rank within seconds; at the latest the
        // 15 s timeout ends it. The bound only tells "ended" from "hung" on a loaded machine.
        assert!(took < Duration::from_secs(60), "the survivor hung for {took:?} (timeout 15 s)");
        let lines: Vec<&str> = stderr.lines().filter(|l| l.starts_with("error:")).collect();
        assert_eq!(lines.len(), 1, "{stderr}");
        assert!(lines[0].contains(&format!("rank {victim}")) && lines[0].contains("--resume"), "{}", lines[0]);
        assert!(!stderr.contains("frame #") && !stderr.contains("panicked"), "{stderr}");
        // The last checkpoint is intact and the run continues on one process (its per-rank
        // batch becomes the global batch of 16).
        let args = ["k.yaml", "--run-dir", &run_dir, "--resume", "--set", "train.epochs=3"];
        let resumed = run_in(tmp.path(), &args);
        resumed.assert_ok();
    }
}

#[test]
fn ctrl_c_on_the_launcher_stops_every_rank_after_one_common_step() {
    let tmp = tempdir().unwrap();
    write(tmp.path(), "c.yaml", &config().replace("epochs: 2", "epochs: 40"));
    let launcher = Command::new(binary())
        .args(["c.yaml", "--run-dir", "stopped", "--nproc", "2"])
        .current_dir(tmp.path())
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let run = tmp.path().join("stopped");
    wait_for(&run.join("checkpoints/LATEST"), Duration::from_secs(60));
    // SAFETY: kill(2) on our own child.
    unsafe { libc::kill(launcher.id() as i32, libc::SIGINT) };
    let out = launcher.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(130), "{stderr}");
    assert_eq!(stderr.matches("stopped at step").count(), 1, "{stderr}");
    assert_eq!(stderr.matches("Ctrl-C: finishing").count(), 1, "{stderr}");
    let step: u64 = stderr.split("stopped at step ").nth(1).unwrap().split(';').next().unwrap().parse().unwrap();
    let latest = checkpoint_pointer(&run, "LATEST");
    assert_eq!(latest.file_name().unwrap().to_string_lossy(), format!("step-{step:06}"));
    // Resumed on two ranks, it ends where an uninterrupted run ends.
    run_in(tmp.path(), &["c.yaml", "--run-dir", "stopped", "--resume", "--nproc", "2", "--set", "train.max_steps=60"])
        .assert_ok();
    run_in(tmp.path(), &["c.yaml", "--run-dir", "straight", "--nproc", "2", "--set", "train.max_steps=60"]).assert_ok();
    let diff = relative_difference(&run, &tmp.path().join("straight"));
    assert!(diff <= 1e-6, "{diff:e}");
}

#[test]
fn a_bad_launch_environment_is_one_line() {
    let tmp = tempdir().unwrap();
    write(tmp.path(), "c.yaml", &config().replace("dist_timeout_seconds: 20", "dist_timeout_seconds: 2"));
    let env_run = |env: &[(&str, &str)]| run_with_env(tmp.path(), &["c.yaml", "--run-dir", "r"], env);
    env_run(&[("WORLD_SIZE", "2")]).assert_user_error(&["WORLD_SIZE is set but RANK is not"]);
    env_run(&[("RANK", "2"), ("WORLD_SIZE", "2"), ("MASTER_ADDR", "127.0.0.1"), ("MASTER_PORT", "29500")])
        .assert_user_error(&["RANK: 2 is not below WORLD_SIZE 2"]);
    env_run(&[("RANK", "0"), ("WORLD_SIZE", "2"), ("MASTER_PORT", "29500")])
        .assert_user_error(&["MASTER_ADDR is not set"]);
    let busy = std::net::TcpListener::bind("0.0.0.0:0").unwrap();
    let port = busy.local_addr().unwrap().port().to_string();
    let base = [("WORLD_SIZE", "2"), ("MASTER_ADDR", "127.0.0.1"), ("MASTER_PORT", port.as_str())];
    env_run(&[&base[..], &[("RANK", "0")]].concat()).assert_user_error(&["MASTER_PORT", "already in use"]);
    let nobody = free_port().to_string();
    let unreachable =
        [("RANK", "1"), ("WORLD_SIZE", "2"), ("MASTER_ADDR", "127.0.0.1"), ("MASTER_PORT", nobody.as_str())];
    env_run(&unreachable).assert_user_error(&["cannot reach rank 0's store", "MASTER_ADDR 127.0.0.1"]);
    run_with_env(tmp.path(), &["c.yaml", "--nproc", "2"], &[("RANK", "0"), ("WORLD_SIZE", "1")])
        .assert_user_error(&["--nproc", "already a rank"]);
    run_in(tmp.path(), &["c.yaml", "--nproc", "2", "--master-port", &port])
        .assert_user_error(&["--master-port", "in use"]);
    run_in(tmp.path(), &["c.yaml", "--nproc", "0"]).assert_user_error(&["--nproc"]);
    // Fewer images than one global batch.
    run_in(tmp.path(), &["c.yaml", "--nproc", "2", "--set", "data.batch_size=64"]).assert_user_error(&["global batch"]);
    assert!(!tmp.path().join("r").exists(), "nothing is written");
}

/// `torchrun --nproc_per_node=2 --no-python mtl-train` (its agent hosts the store) trains the
/// very run `--nproc 2` does. Skipped where the torch environment has no torchrun.
#[test]
fn torchrun_launches_the_same_run_as_nproc() {
    let torchrun = Path::new(env!("CARGO_MANIFEST_DIR")).join(".venv/bin/torchrun");
    if !torchrun.exists() {
        eprintln!("no {}; skipped", torchrun.display());
        return;
    }
    let tmp = tempdir().unwrap();
    write(tmp.path(), "c.yaml", &config());
    run_in(tmp.path(), &["c.yaml", "--run-dir", "nproc", "--nproc", "2"]).assert_ok();
    let port = free_port().to_string();
    let out = Command::new(&torchrun)
        .args(["--nproc_per_node=2", "--master_port", &port, "--no-python"])
        .arg(binary())
        .args(["c.yaml", "--run-dir", "torchrun"])
        .current_dir(tmp.path())
        .env("RUST_LOG", "warn")
        .env("OMP_NUM_THREADS", "1")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(relative_difference(&tmp.path().join("nproc"), &tmp.path().join("torchrun")), 0.0);
}
