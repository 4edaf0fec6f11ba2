//! A corpus of hostile inputs and faults, as a careless or malicious user would try them: every
//! one must end with exit code 2, exactly one `error:` line (no panic, no backtrace, no log
//! noise), and leave every existing file as it was.
mod common;
use common::*;
use std::path::Path;
use std::process::Command;
use tempfile::tempdir;

/// Bad values for config keys, each given as `--set key=value`; the error must name the key's
/// last segment (or the listed word).
const BAD_SETS: &[(&str, &[&str])] = &[
    ("name", &["''", "'a b'", "a/b", "[x]"]),
    ("seed", &["-1", "1.5", "x", "1e30"]),
    ("device", &["tpu", "cuda:x", "'cuda:-1'", "5"]),
    ("precision", &["fp16", "3"]),
    ("threads", &["-1", "2000", "x"]),
    ("data.dataset", &["nope", "3", "''"]),
    ("data.root", &["[1]", "{a: 1}"]),
    ("data.train_size", &["-1", "1.5", "99999999999", "x"]),
    ("data.val_size", &["-1", "99999999999"]),
    ("data.image_size", &["0", "7", "2000", "-32", "17", "x"]),
    ("data.batch_size", &["0", "-1", "10000000", "1.5"]),
    ("data.eval_batch_size", &["0", "-5"]),
    ("data.augment.crop_padding", &["-1", "16", "x"]),
    ("data.augment.hflip", &["maybe", "2"]),
    ("data.augment.max_scale", &["0.5", "5", ".nan"]),
    ("data.grayscale", &["x"]),
    ("data.max_memory_mb", &["0", "-1", ".nan", ".inf"]),
    ("data.decode_threads", &["1000", "-1", "x", "1.5"]),
    ("data.jpeg_decoder", &["turbo", "1"]),
    ("data.decode_scale", &["maybe", "2"]),
    ("data.prefetch_batches", &["0", "5000"]),
    ("data.on_bad_file", &["skip", "ignore"]),
    ("data.folder.val_fraction", &["1.0", "-0.1"]),
    ("data.pet.border", &["maybe"]),
    ("model.backbone.kind", &["vit", "1"]),
    ("model.backbone.widths", &["[]", "[0, 8]", "[100000, 8]", "x", "[-4, 8]"]),
    ("model.backbone.depth", &["0", "100", "-1"]),
    ("model.backbone.norm", &["layer"]),
    ("model.backbone.activation", &["tanh"]),
    ("model.heads.kind.hidden", &["-1", "1000000000000", "x"]),
    ("model.heads.kind.dropout", &["1.0", "-0.1"]),
    ("model.heads.kind.pool", &["max"]),
    ("model.heads.seg.decoder_width", &["-1", "1000000000"]),
    ("model.heads.nope.hidden", &["4"]),
    ("tasks.0.name", &["''", "'a b'", "seg"]),
    ("tasks.0.kind", &["detection", "7"]),
    ("tasks.0.target", &["nope", "mask"]),
    ("tasks.0.classes", &["3", "-1", "100000"]),
    ("tasks.0.weight", &["-1", ".nan", ".inf"]),
    ("tasks.0.label_smoothing", &["1.0", "-0.5"]),
    ("tasks.1.ignore_index", &["3"]),
    ("tasks.1.kind", &["regression"]),
    ("balance.method", &["nope", "3"]),
    ("balance.on", &["features"]),
    ("optim.kind", &["adam"]),
    ("optim.lr", &["0", "-1", ".nan", ".inf", "x"]),
    ("optim.weight_decay", &["-1", ".inf"]),
    ("optim.betas", &["[1.0, 0.9]", "[0.9]", "x"]),
    ("optim.eps", &["0", "-1"]),
    ("optim.momentum", &["1.0", "-0.1"]),
    ("optim.grad_clip", &["-1", ".inf"]),
    ("schedule.kind", &["linear"]),
    ("schedule.warmup_steps", &["-1", "10000000000000"]),
    ("schedule.min_lr_ratio", &["2", "-1"]),
    ("schedule.step_size", &["0"]),
    ("schedule.gamma", &["0", "2"]),
    ("schedule.pct_start", &["0", "1"]),
    ("train.epochs", &["0", "-1", "9223372036854775807", "10000000"]),
    ("train.eval_every", &["0"]),
    ("train.log_every", &["0"]),
    ("train.max_steps", &["-1", "10000000000000"]),
    ("train.on_nonfinite", &["ignore"]),
    ("train.max_consecutive_skips", &["0"]),
    ("train.stop_grace_seconds", &["-1", "1000000000", ".nan"]),
    ("checkpoint.every", &["0"]),
    ("checkpoint.every_steps", &["-1"]),
    ("checkpoint.keep_last", &["0"]),
    ("checkpoint.monitor", &["seg.accuracy", "nope.miou", "x", "delta_m"]),
    ("checkpoint.mode", &["maxi"]),
    ("speed.channels_last", &["yes", "3"]),
    ("speed.fused_optimizer", &["maybe"]),
    ("speed.flush_denormal", &["maybe", "1"]),
    ("foo", &["1"]),
    ("data.foo", &["1"]),
    ("model.backbone.foo", &["1"]),
];

/// Whole commands that must be refused, with a word the error line must contain.
fn bad_commands() -> Vec<(Vec<&'static str>, &'static str)> {
    vec![
        // Configs that are not config files.
        (vec!["missing.yaml"], "missing.yaml"),
        (vec!["dir.yaml"], "directory"),
        (vec!["fifo.yaml"], "FIFO"),
        (vec!["/dev/zero"], "/dev/zero"),
        (vec!["empty.yaml"], "empty.yaml"),
        (vec!["garbage.yaml"], "garbage.yaml"),
        (vec!["huge.yaml"], "huge.yaml"),
        (vec!["deep.yaml"], "nested"),
        (vec!["syntax.yaml"], "syntax.yaml"),
        (vec!["list.yaml"], "list.yaml"),
        (vec!["nan-lr.yaml"], "optim.lr"),
        // Flags.
        (vec!["t.yaml", "--device", "gpu"], "device"),
        (
            vec!["t.yaml", "--set", "speed.flush_denormal=true", "--set", "speed.fused_optimizer=false"],
            "speed.flush_denormal",
        ),
        (vec!["t.yaml", "--resume", "nowhere/step-000001"], "nowhere"),
        (vec!["t.yaml", "--run-dir", "t2", "--init-from", "missing.safetensors"], "missing.safetensors"),
        (vec!["t.yaml", "--run-dir", "t2", "--init-from", "garbage.yaml"], "garbage.yaml"),
        (vec!["t.yaml", "--run-dir", "t2", "--init-from", "dir.yaml"], "dir.yaml"),
        (vec!["t.yaml", "--run-dir", "t2", "--init-from", "fifo.yaml"], "fifo.yaml"),
        (vec!["t.yaml", "--run-dir", "t.yaml"], "t.yaml"),
        (vec!["t.yaml", "--no-such-flag"], "--no-such-flag"),
        (vec!["t.yaml", "--allow-missing-heads"], "--init-from"),
        (vec!["t.yaml", "--set"], "--set"),
        (vec!["t.yaml", "--set", "nonsense"], "key.path=value"),
        (vec!["t.yaml", "--set", "=3"], "=3"),
        (vec!["t.yaml", "--set", "optim..lr=1"], "optim..lr"),
        (vec!["t.yaml", "--set", "tasks.x.weight=1"], "list index"),
        (vec!["t.yaml", "--set", "tasks.9.weight=1"], "out of range"),
        (vec!["t.yaml", "--set", "optim.lr=[unclosed"], "optim.lr"),
        (vec!["nosuchcommand"], "nosuchcommand"),
        // predict / eval on runs that do not exist or do not fit.
        (vec!["predict", "nowhere", "--input", "x.safetensors", "--output", "o.safetensors"], "nowhere"),
        (vec!["predict", "runs/h", "--input", "missing.safetensors", "--output", "o.safetensors"], "missing"),
        (vec!["predict", "runs/h", "--input", "garbage.yaml", "--output", "o.safetensors"], "garbage.yaml"),
        (vec!["predict", "runs/h", "--input", "fifo.yaml", "--output", "o.safetensors"], "fifo.yaml"),
        (vec!["predict", "runs/h", "--input", "wrong-shape.safetensors", "--output", "o.safetensors"], "shape"),
        (vec!["predict", "runs/h", "--input", "empty-batch.safetensors", "--output", "o.safetensors"], "empty"),
        (vec!["predict", "runs/h", "--input", "tiny-image.safetensors", "--output", "o.safetensors"], "smaller"),
        (vec!["predict", "runs/h", "--input", "zero-width.safetensors", "--output", "o.safetensors"], "smaller"),
        (
            vec!["predict", "runs/h", "--input", "nan.safetensors", "--output", "o.safetensors", "--checkpoint", "x"],
            "x",
        ),
        (vec!["predict", "runs/h", "--images", "no-images", "--out", "p"], "no-images"),
        (vec!["predict", "runs/h", "--images", "fifo-images", "--out", "p"], "fifo-images"),
        (vec!["predict", "runs/h", "--images", "bad-images", "--out", "p"], "bad-images"),
        (vec!["predict", "runs/h", "--images", "missing-dir", "--out", "p"], "missing-dir"),
        (vec!["predict", "runs/h"], "--images"),
        (vec!["predict", "runs/h", "--device", "tpu", "--images", "no-images", "--out", "p"], "tpu"),
        (vec!["eval", "nowhere"], "nowhere"),
        (vec!["eval", "runs/h", "--checkpoint", "middle"], "middle"),
        (vec!["eval", "empty-run"], "empty-run"),
        (vec!["eval", "bad-pointer"], "bad-pointer"),
        (vec!["compare", "nowhere"], "nowhere"),
        (vec!["compare", "dir.yaml"], "dir.yaml"),
        (vec!["compare", "runs/h", "--baselines", "missing.json"], "missing.json"),
        (vec!["compare", "runs/h", "--baselines", "garbage.yaml"], "garbage.yaml"),
        (vec!["compare", "runs/h", "--chart", "/proc/nope/chart.png"], "/proc/nope"),
        (vec!["baselines", "t.yaml", "--set", "tasks.0.kind=nope"], "tasks[0].kind"),
        (vec!["export", "nowhere", "--torchscript", "m.pt"], "nowhere"),
        (vec!["export", "runs/h"], "--torchscript"),
        (vec!["export", "empty-run", "--torchscript", "m.pt"], "empty-run"),
        (vec!["export", "bad-pointer", "--torchscript", "m.pt"], "bad-pointer"),
        (vec!["export", "runs/h", "--torchscript", "/proc/nope/m.pt"], "/proc/nope"),
        (vec!["export", "runs/h", "--torchscript", "dir.yaml"], "dir.yaml"),
        (vec!["export", "runs/h", "--torchscript", "m.pt", "--size", "1"], "smaller"),
        (vec!["export", "runs/h", "--torchscript", "m.pt", "--size", "axb"], "--size"),
        (vec!["export", "runs/h", "--torchscript", "m.pt", "--size", "99999999999"], "--size"),
        (vec!["export", "runs/h", "--onnx", "m.onnx", "--python", "fifo.yaml"], "fifo.yaml"),
        (vec!["export", "runs/h", "--onnx", "m.onnx", "--python", "no-such-python"], "no-such-python"),
        // Files whose contents would make the run allocate without bound.
        (vec!["nyu.yaml", "--run-dir", "nyu-run"], "1×100000"),
        // A run whose checkpoints were deleted: resuming (or starting over) would delete its logs.
        (vec!["t.yaml", "--run-dir", "lost-checkpoints", "--resume"], "lost-checkpoints/checkpoints"),
        (vec!["t.yaml", "--run-dir", "lost-checkpoints"], "lost-checkpoints/checkpoints"),
    ]
}

/// The benchmark's bad flags (a build with the `bench` feature), or its absence named.
fn bench_commands() -> Vec<(Vec<&'static str>, &'static str)> {
    if cfg!(feature = "bench") {
        vec![
            (vec!["bench", "t.yaml", "--steps", "0"], "--steps"),
            (vec!["bench", "t.yaml", "--reps", "0"], "--reps"),
            (vec!["bench", "t.yaml", "--lockstep", "no-fifos"], "no-fifos"),
            (vec!["bench", "t.yaml", "--reps", "0", "--export", "/proc/nope/export"], "/proc/nope"),
            (vec!["bench", "t.yaml", "--set", "optim.lr=-1"], "optim.lr"),
        ]
    } else {
        vec![(vec!["bench", "t.yaml", "--steps", "3"], "--features bench")]
    }
}

/// Writes the files the corpus refers to: a config, a trained run, and every kind of bad file.
fn fixtures(dir: &Path) {
    let cfg = tiny_config("h");
    write(dir, "t.yaml", &cfg);
    std::fs::create_dir(dir.join("dir.yaml")).unwrap();
    mkfifo(&dir.join("fifo.yaml"));
    write(dir, "empty.yaml", "");
    std::fs::write(dir.join("garbage.yaml"), [0u8, 159, 146, 150, 255, 0, 1]).unwrap();
    write(dir, "huge.yaml", &format!("{cfg}# {}\n", "x".repeat(2 << 20)));
    write(dir, "deep.yaml", &format!("name: {}{}\n", "[".repeat(50_000), "]".repeat(50_000)));
    write(dir, "syntax.yaml", "name: [unclosed\n  data: {\n");
    write(dir, "list.yaml", "- a\n- b\n");
    write(dir, "nan-lr.yaml", &cfg.replace("lr: 0.01", "lr: .nan"));
    assert!(run_in(dir, &["t.yaml", "--set", "train.max_steps=2"]).code() == 0, "the fixture run trains");
    let x = |shape: &[i64]| tch::Tensor::zeros(shape, (tch::Kind::Float, tch::Device::Cpu));
    let put = |name: &str, t: tch::Tensor| tch::Tensor::write_safetensors(&[("input", t)], dir.join(name)).unwrap();
    put("wrong-shape.safetensors", x(&[2, 5, 16, 16]));
    put("empty-batch.safetensors", x(&[0, 3, 16, 16]));
    put("tiny-image.safetensors", x(&[1, 3, 1, 1]));
    put("zero-width.safetensors", x(&[1, 3, 16, 0]));
    put("nan.safetensors", x(&[1, 3, 16, 16]));
    std::fs::create_dir(dir.join("no-images")).unwrap();
    std::fs::create_dir(dir.join("fifo-images")).unwrap();
    mkfifo(&dir.join("fifo-images/a.png"));
    std::fs::create_dir(dir.join("bad-images")).unwrap();
    std::fs::write(dir.join("bad-images/a.png"), b"not a png").unwrap();
    std::fs::write(dir.join("bad-images/b.jpg"), b"not a jpeg").unwrap();
    nyuv2_one_pixel_high(dir);
    copy_without_checkpoints(&dir.join("runs/h"), &dir.join("lost-checkpoints"));
    std::fs::create_dir_all(dir.join("empty-run/checkpoints")).unwrap();
    std::fs::create_dir_all(dir.join("bad-pointer/checkpoints")).unwrap();
    std::fs::write(dir.join("bad-pointer/checkpoints/LATEST"), "step-000099\n").unwrap();
}

/// An NYUv2 tree whose images are 1 × 100 000 pixels (at image size 288 the model's width
/// would be 28.8 million), and a config that reads it.
fn nyuv2_one_pixel_high(dir: &Path) {
    let image = mtl::data::npy::encode_f32(&[1, 100_000, 3], &vec![0.5; 300_000]);
    for split in ["train", "val"] {
        std::fs::create_dir_all(dir.join(format!("nyu/{split}/image"))).unwrap();
        std::fs::write(dir.join(format!("nyu/{split}/image/0.npy")), &image).unwrap();
    }
    let cfg = "name: nyu\ndevice: cpu\ndata: {dataset: nyuv2, root: nyu, image_size: 288, batch_size: 1}\n\
               model: {backbone: {kind: conv, widths: [4], depth: 1}}\n\
               tasks:\n  - {name: semantic, kind: segmentation, target: semantic, classes: 13}\n";
    write(dir, "nyu.yaml", cfg);
}

/// A run directory as a user leaves it after deleting its checkpoints/.
fn copy_without_checkpoints(from: &Path, to: &Path) {
    std::fs::create_dir(to).unwrap();
    for e in std::fs::read_dir(from).unwrap().flatten() {
        if e.file_type().unwrap().is_file() {
            std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
        }
    }
    assert!(to.join("metrics.jsonl").exists());
}

fn mkfifo(path: &Path) {
    let c = std::ffi::CString::new(path.to_str().unwrap()).unwrap();
    // SAFETY: mkfifo with a valid NUL-terminated path.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
}

/// Every file under `dir`: name, size and modification time (a FIFO is never opened).
fn snapshot(dir: &Path) -> Vec<(String, u64, std::time::SystemTime)> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap().flatten() {
            let meta = e.metadata().unwrap();
            let name = e.path().strip_prefix(dir).unwrap().display().to_string();
            out.push((name, meta.len(), meta.modified().unwrap()));
            if meta.is_dir() {
                stack.push(e.path());
            }
        }
    }
    out.sort();
    out
}

struct Case {
    args: Vec<String>,
    needle: String,
}

fn corpus() -> Vec<Case> {
    let mut cases = Vec::new();
    for (key, values) in BAD_SETS {
        let last = key.rsplit('.').next().unwrap();
        let needle = match *key {
            "tasks.0.name" | "tasks.0.target" | "tasks.0.classes" | "tasks.1.kind" => "tasks",
            "tasks.1.ignore_index" => "ignore_index",
            "model.heads.nope.hidden" => "nope",
            "foo" | "data.foo" | "model.backbone.foo" => "foo",
            _ => last,
        };
        for v in *values {
            // Every command that reads a config must refuse it before doing anything.
            for command in [&["t.yaml", "--run-dir", "r"][..], &["baselines", "t.yaml", "--runs", "b"]] {
                let mut args: Vec<String> = command.iter().map(|s| s.to_string()).collect();
                args.extend(["--set".to_string(), format!("{key}={v}")]);
                cases.push(Case { args, needle: needle.into() });
            }
        }
    }
    for (args, needle) in bad_commands().into_iter().chain(bench_commands()) {
        cases.push(Case { args: args.iter().map(|s| s.to_string()).collect(), needle: needle.into() });
    }
    cases
}

#[test]
fn every_hostile_input_is_one_line_exit_2_and_changes_nothing() {
    let tmp = tempdir().unwrap();
    let dir = tmp.path();
    fixtures(dir);
    let cases = corpus();
    assert!(cases.len() >= 300, "the corpus has {} cases", cases.len());
    let before = snapshot(dir);
    let failures: Vec<String> = std::thread::scope(|s| {
        let chunks: Vec<&[Case]> = cases.chunks(cases.len().div_ceil(4)).collect();
        let handles: Vec<_> = chunks
            .into_iter()
            .map(|chunk| {
                s.spawn(move || {
                    let mut bad = Vec::new();
                    for case in chunk {
                        // Without RUST_LOG: what a user sees by default.
                        let out =
                            Command::new(binary()).args(&case.args).current_dir(dir).env_remove("RUST_LOG").output();
                        let out = out.unwrap();
                        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
                        let lines: Vec<&str> = stderr.lines().collect();
                        let ok = out.status.code() == Some(2)
                            && lines.len() == 1
                            && lines[0].starts_with("error: ")
                            && lines[0].contains(&case.needle)
                            && !stderr.contains("panicked");
                        if !ok {
                            bad.push(format!("{:?} -> exit {:?}: {}", case.args, out.status.code(), stderr.trim()));
                        }
                    }
                    bad
                })
            })
            .collect();
        handles.into_iter().flat_map(|h| h.join().unwrap()).collect()
    });
    assert!(failures.is_empty(), "{} of {} cases failed:\n{}", failures.len(), cases.len(), failures.join("\n"));
    assert_eq!(snapshot(dir), before, "a refused command changed, created or removed a file");
}
