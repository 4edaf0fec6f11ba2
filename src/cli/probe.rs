//! `mtl-train probe RUN --task 'name: {kind: ..., target: ...}'`: how well does what a run
//! shared serve a task it never saw? A fresh head for the new task trains on the run's frozen
//! backbone, and the same head on a randomly initialized frozen backbone (and, with
//! --baseline, a single-task model trained end to end), each for the same budget; the new
//! task's main metric of each is printed side by side (docs/FINETUNING.md, "Probing").
use clap::Args;
use mtl::checkpoint;
use mtl::config::{Config, ParamGroup, ScheduleConfig, TaskConfig};
use mtl::model::{MissingHeads, BACKBONE};
use mtl::train::{TrainOptions, Trainer};
use mtl::{user_bail, user_error};
use std::path::PathBuf;
use std::process::ExitCode;

/// The default budget: a few epochs, enough for a head on a small dataset to settle.
pub const DEFAULT_EPOCHS: u64 = 3;

#[derive(Args, Debug, Clone)]
pub struct ProbeArgs {
    /// A run directory (its LATEST checkpoint: the final weights) or a checkpoint directory.
    run: PathBuf,
    /// The new task, as one `tasks:` entry keyed by its name: 'count: {kind: classification, target: count}'.
    #[arg(long, value_name = "YAML")]
    task: String,
    /// Train each model for this many epochs (default 3).
    #[arg(long, value_name = "N", conflicts_with = "steps")]
    epochs: Option<u64>,
    /// Train each model for this many steps instead.
    #[arg(long, value_name = "N")]
    steps: Option<u64>,
    /// Also train a single-task model of the new task end to end with the same budget.
    #[arg(long)]
    baseline: bool,
    /// Device: auto, cpu, cuda or cuda:N (default: the run's).
    #[arg(long)]
    device: Option<String>,
}

/// What the head reads in one of the probe's trainings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Backbone {
    /// The run's final weights, frozen.
    Trained,
    /// The run's initialization (its seed), frozen.
    Random,
    /// No probe: the whole single-task model trains.
    EndToEnd,
}

impl Backbone {
    fn label(self) -> &'static str {
        match self {
            Backbone::Trained => "the run's, frozen",
            Backbone::Random => "random, frozen",
            Backbone::EndToEnd => "trained end to end",
        }
    }
}

pub fn run(args: ProbeArgs) -> anyhow::Result<ExitCode> {
    let dir = mtl::train::restore::checkpoint_dir(&args.run, "latest")?;
    let config_file = dir.join(checkpoint::CONFIG_FILE);
    let text = mtl::files::read_to_string(&config_file, mtl::files::TEXT_LIMIT)?;
    let run_cfg = Config::parse(&text, &config_file.display().to_string(), &[])?;
    let task = parse_task(&args.task, &run_cfg)?;
    let budget = match (args.epochs, args.steps) {
        (_, Some(0)) | (Some(0), _) => user_bail!("--epochs / --steps: must be at least 1"),
        (_, Some(steps)) => Budget::Steps(steps),
        (epochs, None) => Budget::Epochs(epochs.unwrap_or(DEFAULT_EPOCHS)),
    };
    let mut cfg = probe_config(&run_cfg, task, budget)?;
    if let Some(d) = &args.device {
        cfg.device = d.clone();
    }
    let origin = format!("probe --task '{}'", cfg.tasks[0].name);
    // The checks a config file gets (task name, ranges).
    let cfg = Config::parse(&cfg.to_yaml(), &origin, &[])?;
    let resolved = mtl::setup::resolve(cfg.clone(), &origin, &dir)?;
    let device = mtl::setup::device(&cfg.device)?;
    mtl::setup::init_runtime(&cfg, device);
    let main = resolved.tasks[0].main_metric();
    let key = format!("{}.{}", cfg.tasks[0].name, main.name);
    let weights = checkpoint::read_tensors(&dir.join(checkpoint::MODEL_FILE))?;
    let shared: Vec<(String, tch::Tensor)> =
        weights.into_iter().filter(|(n, _)| n.starts_with(&format!("{BACKBONE}."))).collect();
    let scratch = Scratch::new()?;
    let mut kinds = vec![Backbone::Trained, Backbone::Random];
    if args.baseline {
        kinds.push(Backbone::EndToEnd);
    }
    let mut rows = Vec::new();
    for kind in kinds {
        let mut own = cfg.clone();
        if kind == Backbone::EndToEnd {
            own.optim.groups = Vec::new();
        }
        let r = mtl::setup::resolve(own, &origin, &dir)?;
        let opts = TrainOptions { run_dir: scratch.0.join(format!("{kind:?}")), quiet: true, ..Default::default() };
        let mut trainer = Trainer::new(r, device, &opts)?;
        if kind == Backbone::Trained {
            trainer.model.load_tensors(&shared, &dir.join(checkpoint::MODEL_FILE), MissingHeads::KeepInitialised)?;
        }
        trainer.run()?;
        let metrics = mtl::train::evaluate::evaluate(&trainer.model, &trainer.inputs, &trainer.tasks, None);
        let value = metrics.iter().find(|(k, _)| *k == key).map(|(_, v)| *v);
        let value = value.ok_or_else(|| user_error!("probe: the evaluation reported no {key}"))?;
        rows.push((kind, value, trainer.steps_per_epoch()));
    }
    let spe = rows[0].2;
    let t = &cfg.tasks[0];
    println!(
        "probe of {} with task {} ({}, target {}): {} each, {} steps per epoch",
        dir.display(),
        t.name,
        t.kind,
        t.target,
        budget.describe(),
        spe
    );
    println!("  {:<22} {key}", "backbone");
    for (kind, value, _) in &rows {
        println!("  {:<22} {value:.4}", kind.label());
    }
    println!("  ({}; docs/FINETUNING.md says what this measures)", direction(main.higher_is_better));
    Ok(ExitCode::SUCCESS)
}

fn direction(higher_is_better: bool) -> &'static str {
    if higher_is_better {
        "higher is better"
    } else {
        "lower is better"
    }
}

/// How long each of the probe's models trains.
#[derive(Debug, Clone, Copy)]
enum Budget {
    Epochs(u64),
    Steps(u64),
}

impl Budget {
    fn describe(self) -> String {
        match self {
            Budget::Epochs(n) => format!("{n} epoch{}", if n == 1 { "" } else { "s" }),
            Budget::Steps(n) => format!("{n} step{}", if n == 1 { "" } else { "s" }),
        }
    }
}

/// `--task`: one `tasks:` entry keyed by its name, e.g. `count: {kind: classification, target: count}`.
fn parse_task(yaml: &str, run: &Config) -> anyhow::Result<TaskConfig> {
    let bad = |e: String| user_error!("--task: {e} (expected 'name: {{kind: ..., target: ...}}')");
    let value: serde_yaml::Value = serde_yaml::from_str(yaml).map_err(|e| bad(e.to_string()))?;
    let Some(map) = value.as_mapping().filter(|m| m.len() == 1) else {
        return Err(bad("must be one task keyed by its name".into()));
    };
    let (name, spec) = map.iter().next().expect("one entry");
    let name = name.as_str().ok_or_else(|| bad("the task's name must be a string".into()))?.to_string();
    let mut spec = spec.as_mapping().cloned().ok_or_else(|| bad(format!("'{name}' must map to the task's keys")))?;
    spec.insert("name".into(), name.clone().into());
    let task: TaskConfig =
        serde_yaml::from_value(serde_yaml::Value::Mapping(spec)).map_err(|e| bad(format!("{name}: {e}")))?;
    if run.tasks.iter().any(|t| t.name == name) {
        let names: Vec<&str> = run.tasks.iter().map(|t| t.name.as_str()).collect();
        user_bail!(
            "--task: '{name}' is already a task of the run ({}); a probe learns a new one, name it differently",
            names.join(", ")
        );
    }
    Ok(task)
}

/// The run's recipe for the new task alone (as `baselines` trains a single task), with the
/// backbone frozen (`optim.groups`; its BatchNorm statistics too), a constant learning rate
/// (no warmup: the probe's budget is not the run's) and the budget.
fn probe_config(run: &Config, task: TaskConfig, budget: Budget) -> anyhow::Result<Config> {
    if run.model.architecture.kind != mtl::config::DEFAULT_ARCHITECTURE {
        user_bail!(
            "probe: the run's model.architecture is {}; a probe reads the shared backbone of hard parameter sharing \
             (hps), and {} gives each task parts of its own",
            run.model.architecture.kind,
            run.model.architecture.kind
        );
    }
    let mut cfg = super::baselines::alone(run, task, format!("{}-probe", run.name));
    cfg.optim.groups =
        vec![ParamGroup { pattern: format!("{BACKBONE}.*"), freeze: true, lr_scale: 1.0, weight_decay: None }];
    cfg.schedule = ScheduleConfig::default();
    cfg.checkpoint.monitor = String::new();
    cfg.checkpoint.mode = Default::default();
    cfg.report.tensorboard = false;
    (cfg.train.epochs, cfg.train.max_steps) = match budget {
        Budget::Epochs(n) => (n, 0),
        // Every epoch has at least one step: the run stops at the budget, evaluated below.
        Budget::Steps(n) => (n.min(1_000_000), n),
    };
    Ok(cfg)
}

/// A directory for the probe's runs, removed when the probe ends: it writes nothing anywhere else.
struct Scratch(PathBuf);

impl Scratch {
    fn new() -> anyhow::Result<Self> {
        let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos());
        let dir = std::env::temp_dir().join(format!("mtl-probe-{}-{nanos}", std::process::id()));
        std::fs::create_dir_all(&dir).map_err(|e| user_error!("{}: cannot create: {e}", dir.display()))?;
        Ok(Self(dir))
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
