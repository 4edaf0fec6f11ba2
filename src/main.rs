//! `mtl-train`: the command line. Parses flags, turns errors into one line and an exit code
//! (2: something the user can fix; 1: an internal failure), and hands over to the library.
use clap::{Args, Parser, Subcommand};
use mtl::config::{Config, DEFAULT_CONFIG, DEFAULT_CONFIG_NAME};
use mtl::error::is_user_error;
use mtl::train::{TrainOptions, INTERRUPTED};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::Ordering;

#[derive(Parser, Debug)]
#[command(
    name = "mtl-train",
    version,
    about = "Multi-task training on libtorch: a shared backbone, one head per task, every choice from YAML.",
    long_about = "Trains the model a YAML config describes and writes a run directory \
                  (config.yaml, metrics.jsonl, curves.png, checkpoints/). Without CONFIG, trains the \
                  built-in default (configs/shapes_seg.yaml: classification + segmentation on generated data).\n\n\
                  Exit codes: 0 done, 2 a user error (bad config, missing data, incompatible checkpoint), \
                  1 an internal failure, 130 interrupted by Ctrl-C after writing a checkpoint.",
    args_conflicts_with_subcommands = true
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    train: TrainArgs,
}

#[derive(Args, Debug, Clone)]
struct ConfigArgs {
    /// YAML config file (default: the built-in configs/shapes_seg.yaml).
    config: Option<PathBuf>,
    /// Override any config key, e.g. --set optim.lr=0.01 --set tasks.1.weight=0.5 (repeatable).
    #[arg(long = "set", value_name = "KEY.PATH=VALUE")]
    set: Vec<String>,
    /// Device: auto, cpu, cuda or cuda:N (overrides the config's `device`).
    #[arg(long)]
    device: Option<String>,
}

#[derive(Args, Debug, Clone)]
struct TrainArgs {
    #[command(flatten)]
    config: ConfigArgs,
    /// Run directory (default: runs/<name>). An existing run is only continued with --resume.
    #[arg(long, value_name = "DIR")]
    run_dir: Option<PathBuf>,
    /// Continue the run: from the run directory's LATEST checkpoint (`--resume` or `--resume latest`), or from the checkpoint
    /// directory given.
    #[arg(long, value_name = "CHECKPOINT", num_args = 0..=1, default_missing_value = "latest")]
    resume: Option<PathBuf>,
    /// Start from weights saved by PyTorch (safetensors.torch.save_file(model.state_dict(), FILE)).
    #[arg(long, value_name = "FILE.safetensors")]
    init_from: Option<PathBuf>,
    /// With --init-from: heads absent from the file keep their fresh initialisation.
    #[arg(long, requires = "init_from")]
    allow_missing_heads: bool,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Train (the default when no subcommand is given).
    Train(TrainArgs),
    /// Run a trained model: on a folder of PNG/JPEG images (class CSV + colour mask PNGs) or on
    /// a safetensors file holding an NCHW float batch named `input` (raw outputs per head).
    Predict(PredictArgs),
    /// Re-evaluate a checkpoint on its config's val split and print the metrics table.
    Eval(CheckpointArgs),
    /// Train every task of a config alone with the same recipe and store their metrics, the
    /// single-task baselines that multi-task runs report Δm against (`train.baselines`).
    Baselines(BaselinesArgs),
    /// Print a table of runs (method, per-task metrics, Δm, time per step) and draw a chart.
    Compare(CompareArgs),
    /// Time the training step (warm-up excluded; median of repetitions) and print images/s and
    /// peak memory; scripts/bench.sh runs it side by side with PyTorch. Set the batch size and
    /// threads with --set data.batch_size=N --set threads=N.
    Bench(BenchArgs),
}

#[derive(Args, Debug, Clone)]
struct BenchArgs {
    #[command(flatten)]
    config: ConfigArgs,
    /// Steps before timing starts.
    #[arg(long, default_value_t = 3)]
    warmup: usize,
    /// Steps per timed repetition.
    #[arg(long, default_value_t = 10)]
    steps: usize,
    /// Timed repetitions (the median is reported, with the minimum and maximum); 0 with
    /// --export only writes the export.
    #[arg(long, default_value_t = 5)]
    reps: usize,
    /// Write the resolved config, the train split and the initial weights to this directory
    /// (for scripts/bench_torch.py).
    #[arg(long, value_name = "DIR")]
    export: Option<PathBuf>,
    /// Append the result as one JSON line to this file.
    #[arg(long, value_name = "FILE")]
    json: Option<PathBuf>,
    /// Alternate repetitions with another benchmark process through DIR/first.fifo and
    /// DIR/second.fifo (scripts/bench.sh sets this up).
    #[arg(long, value_name = "DIR")]
    lockstep: Option<PathBuf>,
    /// With --lockstep: this process takes the second turn (and starts the exchange).
    #[arg(long, requires = "lockstep")]
    lockstep_second: bool,
}

#[derive(Args, Debug, Clone)]
struct BaselinesArgs {
    #[command(flatten)]
    config: ConfigArgs,
    /// Where the single-task runs go (default: runs/); each is <name>-stl-<task>.
    #[arg(long, value_name = "DIR", default_value = "runs")]
    runs: PathBuf,
    /// The baselines file to write (default: <runs>/<name>-baselines.json).
    #[arg(long, value_name = "FILE")]
    out: Option<PathBuf>,
}

#[derive(Args, Debug, Clone)]
struct CompareArgs {
    /// Run directories to compare.
    #[arg(required = true)]
    runs: Vec<PathBuf>,
    /// Baselines for Δm (otherwise the Δm the runs logged, if any).
    #[arg(long, value_name = "FILE")]
    baselines: Option<PathBuf>,
    /// The chart to write.
    #[arg(long, value_name = "FILE.png", default_value = "compare.png")]
    chart: PathBuf,
    /// Also write the table (Markdown) to this file.
    #[arg(long, value_name = "FILE.md")]
    table: Option<PathBuf>,
}

#[derive(Args, Debug, Clone)]
struct CheckpointArgs {
    /// A run directory (uses its BEST or LATEST checkpoint) or a checkpoint directory.
    run: PathBuf,
    /// Which checkpoint of a run directory: best or latest.
    #[arg(long, default_value = "best")]
    checkpoint: String,
    /// Device: auto, cpu, cuda or cuda:N.
    #[arg(long, default_value = "auto")]
    device: String,
}

#[derive(Args, Debug, Clone)]
#[command(group(clap::ArgGroup::new("source").required(true).args(["images", "input"])))]
struct PredictArgs {
    #[command(flatten)]
    checkpoint: CheckpointArgs,
    /// A folder of .png/.jpg/.jpeg images; writes predictions.csv and <task>/<image>.png to --out.
    #[arg(long, value_name = "DIR", requires = "out")]
    images: Option<PathBuf>,
    /// Output folder for --images.
    #[arg(long, value_name = "DIR")]
    out: Option<PathBuf>,
    /// A safetensors file with an NCHW float tensor named `input`, normalised like training inputs.
    #[arg(long, value_name = "FILE", requires = "output")]
    input: Option<PathBuf>,
    /// Where --input's outputs go: a safetensors file with one tensor per task.
    #[arg(long, value_name = "FILE")]
    output: Option<PathBuf>,
}

fn main() -> ExitCode {
    install_panic_hook();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_target(false)
        .init();
    let cli = Cli::parse();
    let result = match cli.command {
        Some(Command::Train(args)) => train(args),
        Some(Command::Predict(args)) => predict(args),
        Some(Command::Eval(args)) => eval(args),
        Some(Command::Baselines(args)) => baselines(args),
        Some(Command::Compare(args)) => compare(args),
        Some(Command::Bench(args)) => bench(args),
        None => train(cli.train),
    };
    match result {
        Ok(code) => code,
        Err(err) if is_user_error(&err) => {
            eprintln!("error: {err}");
            ExitCode::from(2)
        }
        Err(err) => {
            eprintln!("error: {}", format!("{err:#}").replace('\n', " "));
            ExitCode::from(1)
        }
    }
}

/// A panic is a bug, but the user still gets one line, not a backtrace.
fn install_panic_hook() {
    std::panic::set_hook(Box::new(|info| {
        let msg = info
            .payload()
            .downcast_ref::<String>()
            .map(String::as_str)
            .or_else(|| info.payload().downcast_ref::<&str>().copied())
            .unwrap_or("unknown panic");
        let first = msg.lines().next().unwrap_or(msg);
        let place = info.location().map(|l| format!(" at {}:{}", l.file(), l.line())).unwrap_or_default();
        eprintln!("error: internal failure{place}: {first}");
        std::process::exit(1);
    }));
}

/// Reads the config (file or built-in), applies --set and --device.
fn load_config(args: &ConfigArgs) -> anyhow::Result<(Config, PathBuf)> {
    let mut sets = args.set.clone();
    if let Some(d) = &args.device {
        sets.push(format!("device={d}"));
    }
    match &args.config {
        Some(path) => {
            let cfg = Config::load(path, &sets)?;
            let dir = path.parent().map(Path::to_path_buf).unwrap_or_default();
            Ok((cfg, dir))
        }
        None => Ok((Config::parse(DEFAULT_CONFIG, DEFAULT_CONFIG_NAME, &sets)?, PathBuf::from("."))),
    }
}

fn train(args: TrainArgs) -> anyhow::Result<ExitCode> {
    let (cfg, config_dir) = load_config(&args.config)?;
    let run_dir = args.run_dir.clone().unwrap_or_else(|| PathBuf::from("runs").join(&cfg.name));
    let resume = match &args.resume {
        None => None,
        Some(p) if p.as_os_str() == "latest" => Some(latest_checkpoint(&run_dir)?),
        Some(p) => Some(p.clone()),
    };
    let _ = ctrlc::set_handler(|| {
        if INTERRUPTED.swap(true, Ordering::SeqCst) {
            eprintln!("second Ctrl-C: exiting without a checkpoint");
            std::process::exit(130);
        }
        eprintln!("Ctrl-C: finishing the current step and writing a checkpoint (Ctrl-C again to abort)");
    });
    let opts = TrainOptions {
        run_dir: Some(run_dir),
        resume,
        init_from: args.init_from.clone(),
        allow_missing_heads: args.allow_missing_heads,
    };
    let summary = mtl::train::train(cfg, config_dir, &opts)?;
    if summary.interrupted {
        eprintln!("interrupted at step {}; continue with --resume", summary.steps);
        return Ok(ExitCode::from(130));
    }
    Ok(ExitCode::SUCCESS)
}

fn latest_checkpoint(run_dir: &Path) -> anyhow::Result<PathBuf> {
    let run = mtl::checkpoint::RunDir::new(run_dir);
    run.pointed(mtl::checkpoint::LATEST)?
        .ok_or_else(|| mtl::user_error!("{}: no checkpoint to resume from (no checkpoints/LATEST)", run_dir.display()))
}

fn restore(args: &CheckpointArgs) -> anyhow::Result<mtl::infer::Restored> {
    let device = mtl::train::session::resolve_device(&args.device)?;
    let dir = mtl::infer::resolve_checkpoint(&args.run, &args.checkpoint)?;
    mtl::infer::restore(&dir, device)
}

fn predict(args: PredictArgs) -> anyhow::Result<ExitCode> {
    let restored = restore(&args.checkpoint)?;
    if let (Some(input), Some(output)) = (&args.input, &args.output) {
        let tasks = mtl::infer::predict_tensor_file(&restored, input, output)?;
        println!("wrote {} ({})", output.display(), tasks.join(", "));
    }
    if let (Some(images), Some(out)) = (&args.images, &args.out) {
        let (done, skipped) = mtl::infer::predict_folder(&restored, images, out)?;
        for s in &skipped {
            eprintln!("skipped {s}");
        }
        println!("predicted {done} images into {}", out.display());
    }
    Ok(ExitCode::SUCCESS)
}

fn eval(args: CheckpointArgs) -> anyhow::Result<ExitCode> {
    let restored = restore(&args)?;
    let metrics = mtl::infer::evaluate(&restored, Path::new("."))?;
    print!("{}", mtl::train::report::metrics_table(&format!("eval of {}", restored.dir.display()), &metrics));
    Ok(ExitCode::SUCCESS)
}

fn baselines(args: BaselinesArgs) -> anyhow::Result<ExitCode> {
    let (cfg, config_dir) = load_config(&args.config)?;
    let mut result =
        mtl::compare::Baselines { config: cfg.name.clone(), metrics: Default::default(), runs: Default::default() };
    for task in &cfg.tasks {
        let single = mtl::compare::single_task_config(&cfg, &task.name)?;
        let run_dir = args.runs.join(&single.name);
        let done = mtl::compare::last_val(&run_dir);
        let metrics = if !done.is_empty() && run_dir.join("config.yaml").is_file() {
            println!("baseline {}: reusing the finished run in {}", task.name, run_dir.display());
            done
        } else {
            let opts = TrainOptions { run_dir: Some(run_dir.clone()), ..Default::default() };
            mtl::train::train(single, config_dir.clone(), &opts)?.final_metrics
        };
        for (k, v) in metrics.into_iter().filter(|(k, _)| mtl::compare::is_quality_metric(k)) {
            result.metrics.insert(k, v);
        }
        result.runs.insert(task.name.clone(), run_dir.display().to_string());
    }
    let out = args.out.unwrap_or_else(|| args.runs.join(format!("{}-baselines.json", cfg.name)));
    result.save(&out)?;
    let rows: Vec<(String, f64)> = result.metrics.iter().map(|(k, v)| (k.clone(), *v)).collect();
    print!("{}", mtl::train::report::metrics_table("single-task baselines", &rows));
    println!("wrote {} (use it with --set train.baselines={})", out.display(), out.display());
    Ok(ExitCode::SUCCESS)
}

fn compare(args: CompareArgs) -> anyhow::Result<ExitCode> {
    let baselines = args.baselines.as_deref().map(mtl::compare::Baselines::load).transpose()?;
    let rows =
        args.runs.iter().map(|r| mtl::compare::summarise(r, baselines.as_ref())).collect::<anyhow::Result<Vec<_>>>()?;
    let table = mtl::compare::table(&rows);
    print!("{table}");
    if let Some(path) = &args.table {
        std::fs::write(path, &table).map_err(|e| mtl::user_error!("{}: cannot write: {e}", path.display()))?;
    }
    let series = mtl::compare::comparison_series(&rows);
    mtl::train::plot::write_curves_png(&args.chart, "comparison (val)", &series)
        .map_err(|e| mtl::user_error!("{}: cannot write chart: {e:#}", args.chart.display()))?;
    println!("chart: {}", args.chart.display());
    Ok(ExitCode::SUCCESS)
}

fn bench(args: BenchArgs) -> anyhow::Result<ExitCode> {
    let (cfg, config_dir) = load_config(&args.config)?;
    let lockstep = args.lockstep.map(|dir| mtl::bench::Lockstep { dir, first: !args.lockstep_second });
    let opts = mtl::bench::BenchOptions {
        warmup: args.warmup,
        steps: args.steps,
        reps: args.reps,
        export: args.export,
        lockstep,
    };
    let report = mtl::bench::run(cfg, config_dir, &opts)?;
    if report.rep_seconds.is_empty() {
        return Ok(ExitCode::SUCCESS);
    }
    println!("{}", report.summary());
    if let Some(path) = &args.json {
        use std::io::Write;
        let line = serde_json::to_string(&report)?;
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .and_then(|mut f| writeln!(f, "{line}"))
            .map_err(|e| mtl::user_error!("{}: cannot write: {e}", path.display()))?;
    }
    Ok(ExitCode::SUCCESS)
}
