//! `mtl-train baselines`: each task of a config trained alone with the same recipe, and their
//! metrics written as the single-task baselines Δm is measured against.
use super::ConfigArgs;
use clap::Args;
use mtl::config::{Config, MonitorMode, TaskConfig};
use mtl::setup::Resolved;
use mtl::tasks::{is_quality_metric, Baselines};
use mtl::train::TrainOptions;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

#[derive(Args, Debug, Clone)]
pub struct BaselinesArgs {
    #[command(flatten)]
    config: ConfigArgs,
    /// Where the single-task runs go (default: runs/); each is <name>-stl-<task>.
    #[arg(long, value_name = "DIR", default_value = mtl::setup::RUNS_DIR)]
    runs: PathBuf,
    /// The baselines file to write (default: <runs>/<name>-baselines.json).
    #[arg(long, value_name = "FILE")]
    out: Option<PathBuf>,
}

pub fn run(args: BaselinesArgs) -> anyhow::Result<ExitCode> {
    let resolved = args.config.resolve()?;
    let device = mtl::setup::device(&resolved.cfg.device)?;
    mtl::setup::init_runtime(&resolved.cfg, device);
    let name = resolved.cfg.name.clone();
    let mut result = Baselines { config: name.clone(), metrics: Default::default(), runs: Default::default() };
    for task in resolved.task_names() {
        let single = single_task(&resolved, &task)?;
        let run_dir = args.runs.join(&single.cfg.name);
        let done = mtl::train::report::last_val(&run_dir);
        let metrics = if !done.is_empty() && run_dir.join("config.yaml").is_file() {
            println!("baseline {task}: reusing the finished run in {}", run_dir.display());
            done
        } else {
            let opts = TrainOptions { run_dir: run_dir.clone(), ..Default::default() };
            super::train::train(single, device, &opts, false)?.final_metrics
        };
        result.metrics.extend(metrics.into_iter().filter(|(k, _)| is_quality_metric(k)));
        result.runs.insert(task, run_dir.display().to_string());
    }
    let out = args.out.unwrap_or_else(|| args.runs.join(format!("{name}-baselines.json")));
    mtl::checkpoint::write_atomically(&out, result.to_json().as_bytes())?;
    let rows: Vec<(String, f64)> = result.metrics.iter().map(|(k, v)| (k.clone(), *v)).collect();
    print!("{}", mtl::train::report::metrics_table("single-task baselines", &rows));
    println!("wrote {} (use it with --set train.baselines={})", out.display(), out.display());
    Ok(ExitCode::SUCCESS)
}

/// The run that trains `task` alone with the same recipe: that task only, hard parameter
/// sharing (a single-task network: the backbone and the task's head, whatever the
/// architecture of the multi-task run), static weighting, no Δm, BEST following the task's
/// main metric.
pub fn single_task(r: &Resolved, task: &str) -> anyhow::Result<Resolved> {
    let Some(i) = r.tasks.iter().position(|t| t.name == task) else {
        mtl::user_bail!("no task named '{task}' in {}", r.cfg.name);
    };
    let single = task_subset(r, &[i], format!("{}-stl-{task}", r.cfg.name));
    mtl::setup::resolve(single, &format!("{} (single-task {task})", r.cfg.name), Path::new("."))
}

/// The config that trains the tasks `keep` (indices, in order) of `r` with its recipe, named
/// `name` (see [`restrict`]); BEST follows the monitored metric when its task is kept, the
/// first kept task's main metric otherwise. One task trains a single-task network (hard
/// sharing, static weighting, see [`alone`]); several keep the architecture and the balancing
/// method.
pub fn task_subset(r: &Resolved, keep: &[usize], name: String) -> Config {
    let cfg = &r.cfg;
    let mut sub = match keep {
        [i] => alone(cfg, cfg.tasks[*i].clone(), name),
        _ => restrict(cfg, keep.iter().map(|&i| cfg.tasks[i].clone()).collect(), name),
    };
    let monitored = cfg.checkpoint.monitor.split_once('.').map(|(t, _)| t.to_string());
    if keep.len() == 1 || !monitored.is_some_and(|t| sub.tasks.iter().any(|k| k.name == t)) {
        let first = &r.tasks[keep[0]];
        let main = first.main_metric();
        sub.checkpoint.monitor = format!("{}.{}", first.name, main.name);
        sub.checkpoint.mode = if main.higher_is_better { MonitorMode::Max } else { MonitorMode::Min };
    }
    sub
}

/// `cfg`'s recipe for `task` alone, named `name`: [`restrict`]ed to it, with hard parameter
/// sharing and static weighting. A task with its own data keeps it (and its seed, derived
/// from the task's name).
pub(super) fn alone(cfg: &Config, task: TaskConfig, name: String) -> Config {
    let mut single = restrict(cfg, vec![task], name);
    single.model.architecture = Default::default();
    single.balance = Default::default();
    single.train.epoch_by = mtl::config::EPOCH_BY_LARGEST.into();
    single
}

/// `cfg`'s recipe for `tasks` only, named `name`: their heads, the `optim.groups` that do not
/// name another task's head, no Δm, no affinity measurement and no stages (they schedule the
/// full set of tasks; the subset trains every epoch).
fn restrict(cfg: &Config, tasks: Vec<TaskConfig>, name: String) -> Config {
    let mut sub: Config = cfg.clone();
    sub.name = name;
    let kept = |n: &str| tasks.iter().any(|t| t.name == n);
    let others: Vec<String> =
        cfg.tasks.iter().filter(|t| !kept(&t.name)).map(|t| format!("heads.{}.", t.name)).collect();
    sub.optim.groups.retain(|g| !others.iter().any(|o| g.pattern.starts_with(o.as_str())));
    sub.model.heads.retain(|k, _| kept(k));
    if !kept(&sub.train.epoch_by) {
        sub.train.epoch_by = mtl::config::EPOCH_BY_LARGEST.into();
    }
    sub.tasks = tasks;
    sub.train.baselines = None;
    sub.train.stages = Vec::new();
    sub.report.affinity = None;
    sub
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn single_task_config_keeps_the_recipe() {
        let r =
            mtl::setup::load(None, &["balance.method=pcgrad".into(), "model.architecture.kind=mmoe".into()]).unwrap();
        let s = single_task(&r, "seg").unwrap();
        assert_eq!(s.tasks.len(), 1);
        assert_eq!(s.cfg.tasks[0].name, "seg");
        assert_eq!(s.cfg.optim, r.cfg.optim);
        assert_eq!(s.cfg.balance.method, "static");
        assert_eq!(s.cfg.model.architecture.kind, "hps");
        assert_eq!(s.cfg.checkpoint.monitor, "seg.miou");
        assert!(!s.cfg.model.heads.contains_key("kind"));
        assert!(single_task(&r, "nope").is_err());
    }
}
