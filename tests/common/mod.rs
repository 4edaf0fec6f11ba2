//! Helpers for the end-to-end tests: tiny configs on generated data and a runner for the
//! real `mtl-train` binary.
#![allow(dead_code)]
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

pub fn binary() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_mtl-train"))
}

/// A config small enough to train in a couple of seconds on one core: 16×16 shapes, a
/// two-stage conv net, classification + segmentation.
pub fn tiny_config(name: &str) -> String {
    format!(
        r#"name: {name}
seed: 3
device: cpu
threads: 1
data:
  dataset: shapes
  train_size: 96
  val_size: 40
  image_size: 16
  batch_size: 16
  eval_batch_size: 20
  augment: {{crop_padding: 2, hflip: true}}
model:
  backbone: {{kind: conv, widths: [4, 8], depth: 1}}
  heads:
    kind: {{hidden: 8, dropout: 0.1}}
tasks:
  - {{name: kind, kind: classification, target: kind, classes: 10, label_smoothing: 0.1}}
  - {{name: seg, kind: segmentation, target: mask, classes: 11}}
optim: {{kind: adamw, lr: 0.01, weight_decay: 0.01}}
schedule: {{kind: cosine, warmup_steps: 3}}
train: {{epochs: 2, eval_every: 1, log_every: 2}}
checkpoint: {{every: 1, keep_last: 2, monitor: seg.miou}}
"#
    )
}

pub struct Run {
    pub output: Output,
}

impl Run {
    pub fn code(&self) -> i32 {
        self.output.status.code().unwrap_or(-1)
    }
    pub fn stdout(&self) -> String {
        String::from_utf8_lossy(&self.output.stdout).into_owned()
    }
    pub fn stderr(&self) -> String {
        String::from_utf8_lossy(&self.output.stderr).into_owned()
    }
    /// The error lines (tracing info lines excluded).
    pub fn error_lines(&self) -> Vec<String> {
        self.stderr().lines().filter(|l| l.starts_with("error:")).map(str::to_string).collect()
    }
    pub fn assert_ok(&self) {
        assert_eq!(self.code(), 0, "stdout:\n{}\nstderr:\n{}", self.stdout(), self.stderr());
    }
    /// Exit code 2, exactly one error line mentioning every `needle`, and no panic text.
    pub fn assert_user_error(&self, needles: &[&str]) {
        let stderr = self.stderr();
        assert_eq!(self.code(), 2, "stderr:\n{stderr}");
        let lines = self.error_lines();
        assert_eq!(lines.len(), 1, "expected one error line:\n{stderr}");
        for n in needles {
            assert!(lines[0].contains(n), "'{n}' not in: {}", lines[0]);
        }
        assert!(!stderr.contains("panicked") && !stderr.contains("RUST_BACKTRACE"), "{stderr}");
    }
}

pub fn run_in(dir: &Path, args: &[&str]) -> Run {
    run_with_env(dir, args, &[])
}

/// Environment variables that would send a test's downloads elsewhere than its local server.
pub const NETWORK_ENV: &[&str] = &[
    "MTL_DATA_MIRROR",
    "MTL_WEIGHTS_MIRROR",
    "ALL_PROXY",
    "all_proxy",
    "HTTPS_PROXY",
    "https_proxy",
    "HTTP_PROXY",
    "http_proxy",
];

/// `run_in` with environment variables set; the caller's mirror and proxies are not inherited.
pub fn run_with_env(dir: &Path, args: &[&str], env: &[(&str, &str)]) -> Run {
    let mut cmd = Command::new(binary());
    cmd.args(args).current_dir(dir).env("RUST_LOG", "warn");
    for name in NETWORK_ENV {
        cmd.env_remove(name);
    }
    cmd.envs(env.iter().copied());
    Run { output: cmd.output().expect("mtl-train runs") }
}

pub fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p
}

pub fn read_lines(path: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(path).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect()
}

pub fn checkpoint_pointer(run: &Path, pointer: &str) -> PathBuf {
    let name = std::fs::read_to_string(run.join("checkpoints").join(pointer)).unwrap();
    run.join("checkpoints").join(name.trim())
}

/// The variables of a run's LATEST checkpoint, by name, as f64.
pub fn final_weights(run: &Path) -> Vec<(String, Vec<f64>)> {
    checkpoint_weights(&checkpoint_pointer(run, "LATEST"))
}

/// The variables of a checkpoint directory, by name, as f64.
pub fn checkpoint_weights(checkpoint: &Path) -> Vec<(String, Vec<f64>)> {
    let file = checkpoint.join("model.safetensors");
    let mut named: Vec<(String, Vec<f64>)> = mtl::checkpoint::read_tensors(&file)
        .unwrap()
        .into_iter()
        .map(|(k, t)| (k, Vec::<f64>::try_from(t.to_kind(tch::Kind::Double).reshape([-1])).unwrap()))
        .collect();
    named.sort_by(|a, b| a.0.cmp(&b.0));
    named
}

/// The largest difference of two runs' final weights, relative to the tensor's largest value.
pub fn relative_difference(a: &Path, b: &Path) -> f64 {
    let (wa, wb) = (final_weights(a), final_weights(b));
    assert_eq!(wa.iter().map(|(k, _)| k).collect::<Vec<_>>(), wb.iter().map(|(k, _)| k).collect::<Vec<_>>());
    wa.iter()
        .zip(&wb)
        .map(|((_, x), (_, y))| {
            let diff = x.iter().zip(y).map(|(p, q)| (p - q).abs()).fold(0.0, f64::max);
            diff / x.iter().map(|v| v.abs()).fold(1e-12, f64::max)
        })
        .fold(0.0, f64::max)
}

/// The bytes of the weights the run's LATEST checkpoint holds.
pub fn latest_weights(run: &Path) -> Vec<u8> {
    std::fs::read(checkpoint_pointer(run, "LATEST").join("model.safetensors")).unwrap()
}

/// metrics.jsonl rows without the wall-clock field.
pub fn metric_rows(run: &Path) -> Vec<serde_json::Value> {
    read_lines(&run.join("metrics.jsonl"))
        .into_iter()
        .map(|mut r| {
            r.as_object_mut().unwrap().remove("images_per_second");
            r
        })
        .collect()
}

/// A digest of every file under `dir` (names, sizes, contents).
pub fn dir_digest(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let mut out = Vec::new();
    fn walk(base: &Path, dir: &Path, out: &mut Vec<(String, Vec<u8>)>) {
        let Ok(entries) = std::fs::read_dir(dir) else { return };
        for e in entries.flatten() {
            let p = e.path();
            let name = p.strip_prefix(base).unwrap().display().to_string();
            if p.is_dir() {
                out.push((name + "/", Vec::new()));
                walk(base, &p, out);
            } else {
                out.push((name, std::fs::read(&p).unwrap_or_default()));
            }
        }
    }
    walk(dir, dir, &mut out);
    out.sort();
    out
}
