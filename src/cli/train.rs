//! `mtl-train [train] CONFIG`: train, resume, or start from PyTorch weights.
use super::ConfigArgs;
use clap::Args;
use mtl::train::{report, Summary, TrainOptions, Trainer};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

#[derive(Args, Debug, Clone)]
pub struct TrainArgs {
    #[command(flatten)]
    pub(super) config: ConfigArgs,
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
    /// Train data-parallel with N processes on this machine (one GPU each on CUDA, Gloo between
    /// CPU processes): the global batch is N × data.batch_size. Multi-machine: torchrun
    /// --nproc_per_node=G --nnodes=M ... --no-python mtl-train CONFIG.
    #[arg(long, value_name = "N")]
    pub nproc: Option<usize>,
    /// With --nproc: the port rank 0's rendezvous store listens on (default: a free one).
    #[arg(long, value_name = "PORT", requires = "nproc")]
    pub master_port: Option<u16>,
}

pub fn run(args: TrainArgs) -> anyhow::Result<ExitCode> {
    let resolved = args.config.resolve()?;
    let run_dir = args.run_dir.clone().unwrap_or_else(|| resolved.default_run_dir());
    let resume = match &args.resume {
        None => None,
        Some(p) if p.as_os_str() == "latest" => latest_checkpoint(&run_dir)?,
        Some(p) => Some(p.clone()),
    };
    let launch = mtl::dist::Launch::from_env()?;
    let device = rank_device(mtl::setup::device(&resolved.cfg.device)?, launch.as_ref())?;
    mtl::setup::init_runtime(&resolved.cfg, device);
    let ranks = match &launch {
        Some(l) => {
            let timeout = Duration::from_secs_f64(resolved.cfg.train.dist_timeout_seconds);
            Some(super::join_ranks(mtl::dist::init(l, device, timeout)?))
        }
        None => None,
    };
    let first = ranks.as_ref().is_none_or(mtl::dist::Group::is_first);
    let grace = resolved.cfg.train.stop_grace_seconds;
    super::signals::install((grace > 0.0).then(|| Duration::from_secs_f64(grace)), first)?;
    let opts = TrainOptions {
        run_dir,
        resume,
        init_from: args.init_from.clone(),
        allow_missing_heads: args.allow_missing_heads,
        ranks,
    };
    let summary = train(resolved, device, &opts)?;
    if summary.interrupted {
        if first {
            eprintln!("stopped at step {}; continue with --resume", summary.steps);
        }
        let signal = super::signals::received().unwrap_or(signal_hook::consts::SIGINT);
        return Ok(ExitCode::from(super::signals::exit_code(signal)));
    }
    Ok(ExitCode::SUCCESS)
}

/// Builds the trainer, prints the banner, trains, and prints the summary; `baselines` trains
/// each single-task run the same way.
pub fn train(resolved: mtl::setup::Resolved, device: tch::Device, opts: &TrainOptions) -> anyhow::Result<Summary> {
    let mut trainer = Trainer::new(resolved, device, opts)?;
    super::logs::release();
    let first = trainer.is_first_rank();
    if first {
        println!("{}", banner(&trainer));
    }
    let summary = trainer.run()?;
    if first {
        print!("{}", closing_table(&summary));
    }
    Ok(summary)
}

/// A CUDA rank trains on its own GPU, `cuda:LOCAL_RANK` (torchrun's convention).
fn rank_device(device: tch::Device, launch: Option<&mtl::dist::Launch>) -> anyhow::Result<tch::Device> {
    match (device, launch) {
        (tch::Device::Cuda(_), Some(l)) => {
            let gpus = tch::Cuda::device_count() as usize;
            if l.local_rank >= gpus {
                mtl::user_bail!("LOCAL_RANK: {} has no GPU of its own (this machine has {gpus})", l.local_rank);
            }
            Ok(tch::Device::Cuda(l.local_rank))
        }
        _ => Ok(device),
    }
}

/// What a run is about to do, in four lines; the resolved config itself goes to the run
/// directory's config.yaml (and to the log at debug level).
fn banner(t: &Trainer) -> String {
    tracing::debug!("resolved config:\n{}", t.cfg.to_yaml());
    let mut device = match t.device {
        tch::Device::Cuda(i) => format!("cuda:{i}"),
        _ => format!("cpu ({} threads)", tch::get_num_threads()),
    };
    if t.world_size() > 1 {
        let backend = if t.device.is_cuda() { "NCCL" } else { "Gloo" };
        device = format!(
            "{device} × {} ranks ({backend}), global batch {}",
            t.world_size(),
            t.inputs.first().train.global_batch_size()
        );
    }
    let (h, w) = t.inputs.first().train.image_hw();
    let data: Vec<String> = t
        .inputs
        .groups
        .iter()
        .map(|g| {
            let d = &t.cfg.data;
            let own = g.tasks.iter().find(|&&i| t.cfg.tasks[i].data.is_some());
            let root = match own {
                Some(&i) => t.cfg.tasks[i].data.as_ref().and_then(|m| m.get("root")).and_then(|r| r.as_str()),
                None => d.root.as_deref(),
            };
            let from = root.map(|r| format!(" from {r}")).unwrap_or_default();
            let streamed = if g.train.is_streamed() { ", streamed" } else { "" };
            let names: Vec<&str> = g.tasks.iter().map(|&i| t.tasks[i].name.as_str()).collect();
            let whose =
                if t.inputs.groups.len() > 1 { format!(" (tasks {})", names.join(", ")) } else { String::new() };
            format!(
                "data     {}{whose}: {} train + {} val images, {h}×{w}{streamed}{from}",
                g.dataset,
                g.train.len(),
                g.val.len()
            )
        })
        .collect();
    let tasks: Vec<String> = t.tasks.iter().map(|t| t.name.clone()).collect();
    format!(
        "mtl-train {} · {} · device {device}\n\
         {}\n\
         model    {} backbone, {:.2}M parameters, tasks {}\n\
         run dir  {}",
        env!("CARGO_PKG_VERSION"),
        t.cfg.name,
        data.join("\n"),
        format!("{:?}", t.cfg.model.backbone.kind).to_lowercase(),
        t.model.parameter_count() as f64 / 1e6,
        tasks.join(", "),
        mtl::setup::normalize_path(&t.run.root).display()
    )
}

fn closing_table(summary: &Summary) -> String {
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
    text
}

/// The checkpoint `--resume` continues from. A run that never wrote one (stopped before its
/// first, or not started yet: a requeued job passes `--resume` every time) starts from step 0.
fn latest_checkpoint(run_dir: &Path) -> anyhow::Result<Option<PathBuf>> {
    let latest = mtl::checkpoint::RunDir::new(run_dir).pointed(mtl::checkpoint::LATEST)?;
    if latest.is_none() {
        tracing::warn!("{}: no checkpoint to resume from yet; starting from step 0", run_dir.display());
    }
    Ok(latest)
}
