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
    /// directory given. Without a checkpoint there, it starts at step 0 (the banner says so); a run already at its last
    /// step prints its final metrics and writes nothing (raise train.epochs to train on).
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
    // A mistyped run directory (or a requeued job's first start) is said in the banner too.
    let nothing_to_resume = args.resume.is_some() && resume.is_none();
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
        quiet: false,
    };
    let summary = train(resolved, device, &opts, nothing_to_resume)?;
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
/// each single-task run the same way. `nothing_to_resume`: `--resume` found no checkpoint, so
/// the run starts at step 0 (the banner says so). A run resumed after its last step trains
/// nothing and writes nothing: one line says so, then its final metrics.
pub fn train(
    resolved: mtl::setup::Resolved,
    device: tch::Device,
    opts: &TrainOptions,
    nothing_to_resume: bool,
) -> anyhow::Result<Summary> {
    let mut trainer = Trainer::new(resolved, device, opts)?;
    let first = trainer.is_first_rank();
    let complete = trainer.is_complete();
    if complete {
        let summary = trainer.run()?;
        if first {
            print!("{}", already_complete(&trainer, &summary));
        }
        super::logs::release();
        return Ok(summary);
    }
    // The banner comes first; the log lines held while loading follow it.
    if first {
        println!("{}", banner(&trainer, opts, nothing_to_resume));
    }
    super::logs::release();
    let summary = trainer.run()?;
    if first {
        print!("{}", closing_lines(&summary));
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
fn banner(t: &Trainer, opts: &TrainOptions, nothing_to_resume: bool) -> String {
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
    let run_dir = mtl::setup::normalize_path(&t.run.root).display().to_string();
    let state = match &opts.resume {
        Some(dir) => format!(" (resuming at step {} from {})", t.at.step, mtl::setup::normalize_path(dir).display()),
        None if nothing_to_resume => " (new: --resume found no checkpoint here; starting at step 0)".to_string(),
        None => String::new(),
    };
    format!(
        "mtl-train {} · {} · device {device}\n\
         {}\n\
         model    {}, {:.2}M parameters, tasks {}\n\
         run dir  {run_dir}{state}",
        env!("CARGO_PKG_VERSION"),
        t.cfg.name,
        data.join("\n"),
        backbone_line(&t.cfg.model.backbone),
        t.model.parameter_count() as f64 / 1e6,
        tasks.join(", "),
    )
}

/// The backbone and the widths of its stages as built: a resnet's single base width w shows as
/// its four stages w-2w-4w-8w.
fn backbone_line(b: &mtl::config::BackboneConfig) -> String {
    let kind = format!("{:?}", b.kind).to_lowercase();
    let widths = mtl::model::backbone::stage_widths(b);
    let widths: Vec<String> = widths.iter().map(i64::to_string).collect();
    let base = match (b.kind, b.widths.as_slice()) {
        (mtl::config::BackboneKind::Resnet, [w]) => format!(" (base width {w})"),
        _ => String::new(),
    };
    format!("{kind} backbone {}{base}", widths.join("-"))
}

/// The run's last lines: its length, and its best checkpoint. The final metrics are the last
/// evaluation's table just above (not repeated); steps without an evaluation say so.
fn closing_lines(summary: &Summary) -> String {
    let metrics = match (summary.interrupted, summary.final_metrics.is_empty()) {
        (true, _) => " (interrupted)",
        (false, true) => "; no evaluation in these steps (evaluations follow epochs)",
        (false, false) => "; final metrics above",
    };
    let mut text = format!("summary: {} steps in {:.1}s{metrics}\n", summary.steps, summary.seconds);
    if let Some(b) = &summary.best {
        text.push_str(&format!("best {} = {:.4} at step {}\n", b.metric, b.value, b.step));
    }
    text
}

/// A run resumed after its last step: where it stands, how to train it further, and the
/// metrics of its last evaluation.
fn already_complete(t: &Trainer, summary: &Summary) -> String {
    let dir = mtl::setup::normalize_path(&t.run.root).display().to_string();
    let train = &t.cfg.train;
    let how = if train.max_steps > 0 && summary.steps < train.epochs * t.steps_per_epoch() {
        format!(
            "train.max_steps is {}; raise it (or set 0) to continue, e.g. --resume --set train.max_steps=0",
            train.max_steps
        )
    } else {
        format!(
            "train.epochs is {}; raise it to continue, e.g. --resume --set train.epochs={}",
            train.epochs,
            train.epochs * 2
        )
    };
    let mut text = format!("{dir}: complete at step {}; nothing to train ({how})\n", summary.steps);
    if summary.final_metrics.is_empty() {
        text.push_str("(no evaluation logged yet)\n");
    } else {
        text.push_str(&report::metrics_table(
            &format!("final metrics (step {})", summary.steps),
            &summary.final_metrics,
        ));
    }
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
