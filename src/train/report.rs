//! What the user sees and what is left on disk about progress: a progress bar on a terminal
//! (periodic log lines otherwise), `metrics.jsonl` (and its TensorBoard copy), and metric tables.
use super::tensorboard::Board;
use crate::model::MultiTaskModel;
use crate::tasks::Task;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde_json::{Map, Value};
use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::time::Instant;

/// One row of `metrics.jsonl`.
pub type Record = Map<String, Value>;

pub fn record(step: u64, epoch: u64, split: &str, values: &[(String, f64)]) -> Record {
    let mut r = Map::new();
    r.insert("step".into(), step.into());
    r.insert("epoch".into(), epoch.into());
    r.insert("split".into(), split.into());
    for (k, v) in values {
        r.insert(k.clone(), serde_json::Number::from_f64(*v).map(Value::Number).unwrap_or(Value::Null));
    }
    r
}

/// Appends records to `metrics.jsonl`, one JSON object per line, flushed each time.
pub struct MetricsLog {
    path: PathBuf,
    /// None: a log that writes nothing (the ranks other than 0 of a distributed run).
    file: Option<File>,
}

impl MetricsLog {
    /// Opens for appending. With `keep_through = Some(step)` (resume), rows written after the
    /// checkpoint's step are dropped first: the resumed run writes them again, so the file
    /// ends up with neither duplicated nor missing steps.
    pub fn open(path: &Path, keep_through: Option<u64>) -> anyhow::Result<Self> {
        Self::open_inner(path, keep_through).map_err(|e| crate::user_error!("{}: cannot write: {e}", path.display()))
    }

    fn open_inner(path: &Path, keep_through: Option<u64>) -> std::io::Result<Self> {
        if let Some(step) = keep_through {
            let kept: Vec<Record> = read_records(path)
                .into_iter()
                .filter(|r| r.get("step").and_then(Value::as_u64).is_some_and(|s| s <= step))
                .collect();
            let tmp = path.with_extension("jsonl.tmp");
            {
                let mut f = File::create(&tmp)?;
                for r in &kept {
                    writeln!(f, "{}", Value::Object(r.clone()))?;
                }
                f.sync_all()?;
            }
            std::fs::rename(&tmp, path)?;
        }
        let file = OpenOptions::new().create(true).append(true).open(path)?;
        Ok(Self { path: path.to_path_buf(), file: Some(file) })
    }

    /// A log that keeps nothing.
    pub fn discard() -> Self {
        Self { path: PathBuf::new(), file: None }
    }

    pub fn append(&mut self, r: &Record) -> anyhow::Result<()> {
        let Some(file) = self.file.as_mut() else { return Ok(()) };
        writeln!(file, "{}", Value::Object(r.clone()))
            .and_then(|_| file.flush())
            .map_err(|e| crate::user_error!("{}: cannot write: {e}", self.path.display()))
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// Where the loop's rows go: `metrics.jsonl`, and TensorBoard's event files unless
/// `report.tensorboard: false`.
pub struct RunLog {
    metrics: MetricsLog,
    board: Option<Board>,
}

impl RunLog {
    pub fn new(metrics: MetricsLog, board: Option<Board>) -> Self {
        Self { metrics, board }
    }

    pub fn append(&mut self, r: &Record) -> anyhow::Result<()> {
        self.metrics.append(r)?;
        self.board.as_mut().map_or(Ok(()), |b| b.record(r))
    }

    /// At an evaluation: TensorBoard's val preview of the model as it is at `step`.
    pub fn images(&mut self, step: u64, model: &MultiTaskModel, tasks: &[Task]) -> anyhow::Result<()> {
        self.board.as_mut().map_or(Ok(()), |b| b.images(step, model, tasks))
    }

    /// Training reached its last step.
    pub fn finish(&mut self, step: u64) -> anyhow::Result<()> {
        self.board.as_mut().map_or(Ok(()), |b| b.finish(step))
    }
}

/// Reads `metrics.jsonl` (missing file: no rows; a torn last line from a crash is skipped).
pub fn read_records(path: &Path) -> Vec<Record> {
    let Ok(f) = File::open(path) else { return Vec::new() };
    BufReader::new(f)
        .lines()
        .map_while(Result::ok)
        .filter_map(|l| serde_json::from_str::<Value>(&l).ok())
        .filter_map(|v| v.as_object().cloned())
        .collect()
}

/// Formats rows of (task, metric, value) as an aligned table; Δm (`delta_m`) follows it on a
/// line of its own, with its unit and direction.
pub fn metrics_table(title: &str, values: &[(String, f64)]) -> String {
    let rows: Vec<(&str, &str, f64)> = values
        .iter()
        .filter(|(k, _)| k != "delta_m")
        .map(|(k, v)| {
            let (task, metric) = k.split_once('.').unwrap_or(("(all)", k.as_str()));
            (task, metric, *v)
        })
        .collect();
    let tw = rows.iter().map(|r| r.0.len()).max().unwrap_or(4).max(4);
    let mw = rows.iter().map(|r| r.1.len()).max().unwrap_or(6).max(6);
    let mut out = format!("{title}\n  {:<tw$}  {:<mw$}  {:>10}\n", "task", "metric", "value");
    for (t, m, v) in rows {
        out.push_str(&format!("  {t:<tw$}  {m:<mw$}  {v:>10.4}\n"));
    }
    if let Some((_, dm)) = values.iter().find(|(k, _)| k == "delta_m") {
        out.push_str(&format!("  {}\n", crate::tasks::describe_delta_m(*dm)));
    }
    out
}

/// The live view of training: an indicatif bar on a terminal, log lines every `log_every`
/// steps when stdout is not one.
pub struct Progress {
    bar: Option<ProgressBar>,
    /// False: nothing is shown (the ranks other than 0 of a distributed run).
    shown: bool,
    started: Instant,
    start_step: u64,
    total_steps: u64,
    steps_per_epoch: u64,
    batch_size: u64,
}

impl Progress {
    /// A view of `total_steps` steps; `shown` false: one that prints nothing (the ranks other
    /// than 0 of a distributed run).
    pub fn new(total_steps: u64, steps_per_epoch: u64, start_step: u64, batch_size: u64, shown: bool) -> Self {
        let bar = (shown && std::io::stdout().is_terminal()).then(|| {
            let bar = ProgressBar::with_draw_target(Some(total_steps), ProgressDrawTarget::stdout());
            bar.set_style(
                ProgressStyle::with_template("{prefix} [{bar:30}] {pos}/{len} {msg} ETA {eta}")
                    .expect("a valid template")
                    .progress_chars("=> "),
            );
            bar.set_position(start_step);
            bar
        });
        Self { bar, shown, started: Instant::now(), start_step, total_steps, steps_per_epoch, batch_size }
    }

    /// Called every step (cheap: no device values are read).
    pub fn step(&mut self, step: u64, epoch: u64) {
        if let Some(bar) = &self.bar {
            bar.set_position(step);
            bar.set_prefix(self.epoch_label(epoch));
        }
    }

    /// `epoch 2/5`: counted from 1, out of the epochs this run trains to.
    fn epoch_label(&self, epoch: u64) -> String {
        format!("epoch {}/{}", epoch + 1, self.total_steps.div_ceil(self.steps_per_epoch.max(1)))
    }

    /// Training images per second since this process started training.
    pub fn images_per_second(&self, step: u64) -> f64 {
        let secs = self.started.elapsed().as_secs_f64().max(1e-9);
        (step.saturating_sub(self.start_step) * self.batch_size) as f64 / secs
    }

    /// Called at log boundaries with the window's mean losses.
    pub fn log(&mut self, step: u64, epoch: u64, losses: &[(String, f64)], lr: f64) {
        let ips = self.images_per_second(step);
        let loss_text: Vec<String> = losses.iter().map(|(k, v)| format!("{k} {v:.4}")).collect();
        let msg = format!("{} | lr {lr:.2e} | {ips:.0} img/s", loss_text.join(" "));
        match &self.bar {
            Some(bar) => bar.set_message(msg),
            None if !self.shown => {}
            None => {
                let done = step.saturating_sub(self.start_step).max(1) as f64;
                let eta = self.started.elapsed().as_secs_f64() / done * self.total_steps.saturating_sub(step) as f64;
                // The place in the epoch only where it differs from the step (after the first).
                let spe = self.steps_per_epoch.max(1);
                let in_epoch = match step > spe {
                    true => format!(" ({}/{spe} in epoch)", (step - 1) % spe + 1),
                    false => String::new(),
                };
                let epoch = self.epoch_label(epoch);
                println!("{epoch} step {step}/{}{in_epoch} | {msg} | ETA {eta:.0}s", self.total_steps);
            }
        }
    }

    /// Prints a block of text without tearing the bar.
    pub fn println(&self, text: &str) {
        match &self.bar {
            Some(bar) => bar.suspend(|| print!("{text}")),
            None if self.shown => print!("{text}"),
            None => {}
        }
    }

    pub fn finish(&self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
    }
}

/// The last val row of a run directory's `metrics.jsonl`, as `(key, value)`.
pub fn last_val(run: &Path) -> Vec<(String, f64)> {
    read_records(&crate::checkpoint::RunDir::new(run).metrics())
        .into_iter()
        .rfind(|r| r.get("split").and_then(|s| s.as_str()) == Some("val"))
        .map(|r| metric_values(&r))
        .unwrap_or_default()
}

/// A row's `<task>.<metric>` values and `delta_m`.
pub fn metric_values(r: &Record) -> Vec<(String, f64)> {
    r.iter()
        .filter(|(k, _)| k.contains('.') || k.as_str() == "delta_m")
        .filter_map(|(k, v)| Some((k.clone(), v.as_f64()?)))
        .collect()
}
