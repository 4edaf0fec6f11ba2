//! The command line: parses flags, hands each subcommand to its file, and turns errors into
//! one line and an exit code (2: something the user can fix; 1: an internal failure).
mod allocator;
mod baselines;
#[cfg(feature = "bench")]
mod bench;
mod compare;
mod eval;
mod export;
mod groups;
mod launcher;
mod list;
mod logs;
mod predict;
mod probe;
mod signals;
mod train;

use clap::{Args, Parser, Subcommand};
use mtl::error::{is_divergence, is_user_error};
use mtl::setup::Resolved;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::OnceLock;

/// This process's rank, once it has joined a distributed run: an error that ends the command
/// is posted to the other ranks, which then exit with the same code (see mtl::dist).
static RANKS: OnceLock<mtl::dist::Group> = OnceLock::new();

/// Keeps `group` for [`main`]'s error path and returns it.
pub fn join_ranks(group: mtl::dist::Group) -> mtl::dist::Group {
    let _ = RANKS.set(group.clone());
    group
}

/// Prints a command's error line and, in a distributed run, tells the other ranks (which then
/// exit with the same code; of ranks failing together only the first to post prints).
fn fail(code: u8, line: String) -> ExitCode {
    let first = RANKS.get().is_none_or(|g| g.post_failure(code.into(), &line));
    if first {
        eprintln!("error: {line}");
    }
    if let Some(g) = RANKS.get() {
        g.await_failure_seen();
    }
    ExitCode::from(code)
}

#[derive(Parser, Debug)]
#[command(
    name = "mtl-train",
    version,
    about = "Multi-task training on libtorch: a shared backbone, one head per task, every choice from YAML.",
    long_about = "Trains the model a YAML config describes and writes a run directory \
                  (config.yaml, metrics.jsonl, curves.png, checkpoints/). Without CONFIG, trains the \
                  built-in default (configs/shapes_seg.yaml: classification + segmentation on generated data).\n\n\
                  Exit codes: 0 done, 2 a user error (bad config, missing data, incompatible checkpoint), \
                  1 an internal failure, 3 training diverged (a non-finite loss or gradient; LATEST is the \
                  last finite checkpoint), 130 stopped by Ctrl-C and 143 by SIGTERM after writing a checkpoint.",
    args_conflicts_with_subcommands = true
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    train: train::TrainArgs,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Train (the default when no subcommand is given).
    Train(train::TrainArgs),
    /// Run a trained model: on a folder of PNG/JPEG images (class CSV + mask PNGs of class ids)
    /// or on a safetensors file holding an NCHW float batch named `input` (raw outputs per
    /// head); --out names where either goes.
    Predict(predict::PredictArgs),
    /// Re-evaluate a checkpoint on its config's val split and print the metrics table.
    Eval(CheckpointArgs),
    /// Train every task of a config alone with the same recipe and store their metrics, the
    /// single-task baselines that multi-task runs report Δm against (`train.baselines`).
    Baselines(baselines::BaselinesArgs),
    /// Print a table of runs (run directory, method, seed, per-task metrics, Δm, time per step)
    /// and draw a chart; runs whose configs differ only in the seed are also averaged as seeds.
    Compare(compare::CompareArgs),
    /// Which tasks should share a network: the best grouping under a budget from the measured
    /// affinity of one or more runs (report.affinity), each affinity counted only as far as it
    /// stands out of its spread (--z), its configs, and with --train its Δm; with
    /// --exhaustive, every grouping of a config trained and compared with the prediction.
    Groups(groups::GroupsArgs),
    /// Time the training step (warm-up excluded; median of repetitions) and print images/s and
    /// peak memory; scripts/bench.sh runs it side by side with PyTorch. Set the batch size and
    /// threads with --set data.batch_size=N --set threads=N.
    #[cfg(feature = "bench")]
    Bench(bench::BenchArgs),
    /// Without the `bench` feature: says how to get the benchmark instead of reading "bench" as
    /// a config file name.
    #[cfg(not(feature = "bench"))]
    #[command(hide = true)]
    Bench {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Write a trained model as TorchScript (`--torchscript model.pt`, loads with
    /// `torch.jit.load`) and/or ONNX (`--onnx model.onnx`, through PyTorch): a normalized
    /// float [N, C, H, W] batch in, one fp32 tensor per task out, as a tuple in task order.
    Export(export::ExportArgs),
    /// Probe a run's shared representation with a task it never had: train a fresh head for it
    /// on the run's frozen backbone and on a random frozen one (--baseline: also a single-task
    /// model end to end), same budget, and print the new task's metric for each.
    Probe(probe::ProbeArgs),
    /// List the datasets, task kinds, balancing methods (with their options), architectures
    /// (with their options) and backbones; `--json` for scripts.
    List(list::ListArgs),
}

/// The config a command reads.
#[derive(Args, Debug, Clone)]
pub struct ConfigArgs {
    /// YAML config file (default: the built-in configs/shapes_seg.yaml).
    config: Option<PathBuf>,
    /// Override any config key, e.g. --set optim.lr=0.01 --set tasks.1.weight=0.5 (repeatable).
    #[arg(long = "set", value_name = "KEY.PATH=VALUE")]
    set: Vec<String>,
    /// Device: auto, cpu, cuda or cuda:N (overrides the config's `device`).
    #[arg(long)]
    device: Option<String>,
}

impl ConfigArgs {
    /// Reads the config (file or built-in), applies --set and --device, and resolves it.
    pub fn resolve(&self) -> anyhow::Result<Resolved> {
        let mut sets = self.set.clone();
        if let Some(d) = &self.device {
            sets.push(format!("device={d}"));
        }
        mtl::setup::load(self.config.as_deref(), &sets)
    }
}

/// A trained model to use.
#[derive(Args, Debug, Clone)]
pub struct CheckpointArgs {
    /// A run directory (uses its BEST or LATEST checkpoint) or a checkpoint directory.
    run: PathBuf,
    /// Which checkpoint of a run directory: best or latest.
    #[arg(long, default_value = "best")]
    checkpoint: String,
    /// Device: auto, cpu, cuda or cuda:N.
    #[arg(long, default_value = "auto")]
    device: String,
}

impl CheckpointArgs {
    pub fn restore(&self) -> anyhow::Result<mtl::train::restore::Restored> {
        let device = mtl::setup::device(&self.device)?;
        let dir = mtl::train::restore::checkpoint_dir(&self.run, &self.checkpoint)?;
        mtl::train::restore::restore(&dir, device)
    }
}

/// Training in this process, or with `--nproc N` as the launcher of N ranks (each of which then
/// trains in its own process).
fn train_or_launch(args: train::TrainArgs) -> anyhow::Result<ExitCode> {
    match args.nproc {
        Some(n) => launcher::run(&args, n),
        None => train::run(args),
    }
}

pub fn main() -> ExitCode {
    allocator::keep_freed_memory();
    install_panic_hook();
    logs::init();
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => return flag_error(e),
    };
    let result = match cli.command {
        Some(Command::Train(args)) => train_or_launch(args),
        Some(Command::Predict(args)) => predict::run(args),
        Some(Command::Eval(args)) => eval::run(args),
        Some(Command::Baselines(args)) => baselines::run(args),
        Some(Command::Compare(args)) => compare::run(args),
        #[cfg(feature = "bench")]
        Some(Command::Bench(args)) => bench::run(args),
        #[cfg(not(feature = "bench"))]
        Some(Command::Bench { .. }) => Err(mtl::user_error!(
            "bench: this mtl-train is built without the benchmark (tooling, not the product); build it with \
             cargo build --release --features bench (scripts/bench.sh does)"
        )),
        Some(Command::Export(args)) => export::run(args),
        Some(Command::Probe(args)) => probe::run(args),
        Some(Command::Groups(args)) => groups::run(args),
        Some(Command::List(args)) => list::run(args),
        None => train_or_launch(cli.train),
    };
    match result {
        Ok(code) => {
            logs::release();
            code
        }
        Err(err) if is_divergence(&err) => fail(3, err.to_string()),
        Err(err) if is_user_error(&err) => fail(2, err.to_string()),
        Err(err) => fail(1, format!("{err:#}").replace('\n', " ")),
    }
}

/// `--help` and `--version` as clap prints them; a flag mistake as one line (exit code 2).
fn flag_error(e: clap::Error) -> ExitCode {
    use clap::error::ErrorKind;
    if matches!(
        e.kind(),
        ErrorKind::DisplayHelp | ErrorKind::DisplayVersion | ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand
    ) {
        let _ = e.print();
        return ExitCode::SUCCESS;
    }
    // clap's message is its first paragraph; usage and tips follow it.
    let text = e.render().to_string();
    let message: Vec<&str> = text.lines().take_while(|l| !l.trim().is_empty()).map(str::trim).collect();
    let message = message.join(" ");
    eprintln!("error: {} (see mtl-train --help)", message.trim_start_matches("error: "));
    ExitCode::from(2)
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

/// Writes a text file a command produced, naming it when that fails.
pub fn write_file(path: &std::path::Path, text: &str) -> anyhow::Result<()> {
    std::fs::write(path, text).map_err(|e| mtl::user_error!("{}: cannot write: {e}", path.display()))
}

/// Whether the model a config describes takes `h`×`w` images: every side at least the
/// backbone's size multiple, and exactly `data.image_size` square for the models whose
/// input size is fixed (an MLP, a head that flattens the coarsest map). The message follows
/// the thing checked, e.g. `"'input' " + message`.
pub fn check_input_hw(cfg: &mtl::config::Config, h: i64, w: i64) -> Result<(), String> {
    let backbone = &cfg.model.backbone;
    let min = mtl::model::backbone::size_multiple(backbone);
    if h < min || w < min {
        let stages = mtl::model::backbone::stages(backbone);
        return Err(format!("is {h}×{w}, smaller than the {min}×{min} this model's backbone needs ({stages} stages)"));
    }
    let fixed = !mtl::model::backbone::is_spatial(backbone)
        || cfg.model.heads.values().any(|head| head.pool == mtl::config::Pool::Flatten);
    let n = cfg.data.image_size;
    if fixed && (h, w) != (n, n) {
        return Err(format!("is {h}×{w}, but this model takes {n}×{n} inputs only"));
    }
    Ok(())
}
