//! The run's environment: device, threads, run directory; and the closing summary.
use super::{plot, report, Summary, TrainOptions, Trainer};
use crate::checkpoint::RunDir;
use crate::config::{parse_device, Config, DeviceChoice};
use crate::user_bail;
use std::path::PathBuf;
use tch::Device;

pub struct Session {
    pub device: Device,
    pub run_dir: PathBuf,
    /// Directory of the config file: relative data paths are resolved against it.
    pub config_dir: PathBuf,
}

/// The device a config asks for. Asking for CUDA where there is none is a user error, not
/// a silent fall-back to the CPU.
pub fn resolve_device(choice: &str) -> anyhow::Result<Device> {
    let Some(choice) = parse_device(choice) else { user_bail!("device: '{choice}' must be auto, cpu, cuda or cuda:N") };
    Ok(match choice {
        DeviceChoice::Cpu => Device::Cpu,
        DeviceChoice::Auto => Device::cuda_if_available(),
        DeviceChoice::Cuda(i) => {
            if !tch::Cuda::is_available() {
                user_bail!("device: CUDA was requested but is not available on this machine (use device: cpu or auto)");
            }
            let n = tch::Cuda::device_count() as usize;
            if i >= n {
                user_bail!("device: cuda:{i} does not exist (this machine has {n} CUDA device(s))");
            }
            Device::Cuda(i)
        }
    })
}

impl Session {
    pub fn start(cfg: &Config, config_dir: PathBuf, opts: &TrainOptions) -> anyhow::Result<Self> {
        let device = resolve_device(&cfg.device)?;
        if cfg.threads > 0 {
            tch::set_num_threads(cfg.threads as i32);
        }
        if device.is_cuda() {
            tch::Cuda::cudnn_set_benchmark(true);
        }
        let run_dir = opts.run_dir.clone().unwrap_or_else(|| PathBuf::from("runs").join(&cfg.name));
        let run = RunDir::new(&run_dir);
        if opts.resume.is_none() && (run.metrics().exists() || !run.list().is_empty()) {
            user_bail!(
                "{}: run directory already holds a run; continue it with --resume or choose another --run-dir",
                run_dir.display()
            );
        }
        run.create()?;
        write_atomically(&run.config(), cfg.to_yaml().as_bytes())?;
        Ok(Self { device, run_dir, config_dir })
    }

    pub fn banner(&self, cfg: &Config) -> String {
        format!(
            "mtl-train {} | device {:?} | threads {} | run dir {}\n--- resolved config ---\n{}-----------------------",
            env!("CARGO_PKG_VERSION"),
            self.device,
            tch::get_num_threads(),
            self.run_dir.display(),
            cfg.to_yaml()
        )
    }
}

pub fn write_atomically(path: &std::path::Path, bytes: &[u8]) -> anyhow::Result<()> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, bytes).map_err(|e| crate::user_error!("{}: cannot write: {e}", tmp.display()))?;
    std::fs::rename(&tmp, path).map_err(|e| crate::user_error!("{}: cannot write: {e}", path.display()))?;
    Ok(())
}

/// Prints the summary table and writes `curves.png` from the whole `metrics.jsonl`.
pub fn finish(trainer: &Trainer, summary: &Summary) -> anyhow::Result<()> {
    let mut text = report::metrics_table(
        &format!(
            "summary: {} steps in {:.1}s{}",
            summary.steps,
            summary.seconds,
            if summary.interrupted { " (interrupted)" } else { "" }
        ),
        &summary.final_metrics,
    );
    if let Some(b) = &summary.best {
        text.push_str(&format!("best {} = {:.4} at step {}\n", b.metric, b.value, b.step));
    }
    print!("{text}");
    let records = report::read_records(&trainer.run.metrics());
    let series = series_from_records(&records, &trainer.task_names);
    let png = trainer.run.root.join("curves.png");
    if let Err(e) = plot::write_curves_png(&png, &trainer.cfg.name, &series) {
        tracing::warn!("could not draw {}: {e:#}", png.display());
    }
    Ok(())
}

/// One panel per task: its training loss and every val metric, against the step.
pub fn series_from_records(records: &[report::Record], tasks: &[String]) -> Vec<plot::Series> {
    let mut out: Vec<plot::Series> = Vec::new();
    for r in records {
        let (Some(step), Some(split)) =
            (r.get("step").and_then(|v| v.as_f64()), r.get("split").and_then(|v| v.as_str()))
        else {
            continue;
        };
        for (key, value) in r {
            let (Some((task, metric)), Some(v)) = (key.split_once('.'), value.as_f64()) else { continue };
            if !tasks.iter().any(|t| t == task) {
                continue;
            }
            let label = format!("{split} {metric}");
            match out.iter_mut().find(|s| s.panel == task && s.label == label) {
                Some(s) => s.points.push((step, v)),
                None => out.push(plot::Series { panel: task.to_string(), label, points: vec![(step, v)] }),
            }
        }
    }
    out
}
