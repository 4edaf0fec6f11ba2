//! `mtl-train bench`: timing the training step, what `scripts/bench.sh` compares with PyTorch
//! (`scripts/bench_torch.py`).
//!
//! The step timed is [`Trainer::step`] itself, on the real data pipeline: a batch gathered from
//! the split resident on the device, normalized, augmented as configured (crop + flip on the
//! device), forward, losses, the balancer's backward and the optimizer update. Warm-up steps are
//! excluded; then `reps` repetitions of `steps` steps are timed, each between two device
//! synchronisations on CUDA (a CPU step is synchronous), and the median, minimum and maximum
//! images/s are reported. Nothing in the timed region reads a value from the device.
//!
//! Distributed (started the torchrun way, as `scripts/bench_dist.sh` does): every rank times its
//! steps, which then include the collectives, and afterwards the step's collectives alone (the
//! all-reduce of the flat gradient buffer, of the losses, and the broadcast of BatchNorm
//! statistics, at their real sizes on the real group); rank 0 reports both, and their ratio is
//! the all-reduce share of the step (docs/results/BENCHMARKS.md).
//!
//! Memory: the peak resident set (`VmHWM`, reset through `/proc/self/clear_refs` after the
//! warm-up, so it is the peak while training with the model and data resident) and, on CUDA,
//! the device memory in use at the end as `cudaMemGetInfo` reports it (CUDA context plus the
//! caching allocator's reserve, which never shrinks during a run, so it is the peak). tch has
//! no binding for the caching allocator's statistics; the PyTorch side reports the same
//! `cudaMemGetInfo` figure next to its allocator peak.
use super::ConfigArgs;
use clap::Args;
use mtl::balance::GradientSpace;
use mtl::config::{Config, Precision};
use mtl::setup::Resolved;
use mtl::train::{TrainOptions, Trainer};
use serde::Serialize;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;
use tch::{Device, Tensor};

#[derive(Args, Debug, Clone)]
pub struct BenchArgs {
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
    /// Time the input pipeline alone: each "step" takes the next batch (read, decoded,
    /// augmented, normalized) and trains nothing, as a loop over a PyTorch DataLoader does.
    #[arg(long)]
    input_only: bool,
}

pub fn run(args: BenchArgs) -> anyhow::Result<ExitCode> {
    let resolved = args.config.resolve()?;
    let lockstep = args.lockstep.map(|dir| Lockstep { dir, first: !args.lockstep_second });
    let ranks = match mtl::dist::Launch::from_env()? {
        Some(l) => {
            let device = mtl::setup::device(&resolved.cfg.device)?;
            let device = if device.is_cuda() { Device::Cuda(l.local_rank) } else { device };
            let timeout = std::time::Duration::from_secs_f64(resolved.cfg.train.dist_timeout_seconds);
            Some(super::join_ranks(mtl::dist::init(&l, device, timeout)?))
        }
        None => None,
    };
    let opts = BenchOptions {
        warmup: args.warmup,
        steps: args.steps,
        reps: args.reps,
        export: args.export,
        lockstep,
        ranks,
        input_only: args.input_only,
    };
    let report = bench(resolved, &opts)?;
    if let Some(g) = &opts.ranks {
        g.finish();
        if !g.is_first() {
            return Ok(ExitCode::SUCCESS);
        }
    }
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

/// How much to time.
#[derive(Debug, Clone)]
pub struct BenchOptions {
    /// Steps run before timing (allocator, oneDNN/cuDNN algorithm choice, caches).
    pub warmup: usize,
    /// Steps per timed repetition.
    pub steps: usize,
    /// Timed repetitions.
    pub reps: usize,
    /// Write the resolved config, the train split and the initial weights here, for
    /// `scripts/bench_torch.py` to train the same model on the same data.
    pub export: Option<PathBuf>,
    /// Take turns with another benchmark process, repetition by repetition (see [`Lockstep`]).
    pub lockstep: Option<Lockstep>,
    /// A distributed bench: this process's rank.
    pub ranks: Option<mtl::dist::Group>,
    /// Take batches without training on them (`--input-only`).
    pub input_only: bool,
}

impl Default for BenchOptions {
    fn default() -> Self {
        Self { warmup: 3, steps: 10, reps: 5, export: None, lockstep: None, ranks: None, input_only: false }
    }
}

/// Two benchmark processes (mtl and PyTorch) that alternate repetitions: each waits for a
/// token on its FIFO before a repetition and passes it on after, so one never runs while the
/// other is timed, and repetition k of both sides sees nearly the same machine load (the
/// paired ratios are what `scripts/bench.sh` reports). `dir` holds `first.fifo` and
/// `second.fifo` (made by the caller with mkfifo); the `second` side hands the first token
/// over when its warm-up is done.
#[derive(Debug, Clone)]
pub struct Lockstep {
    pub dir: PathBuf,
    pub first: bool,
}

struct Turns {
    wait: std::fs::File,
    pass: std::fs::File,
}

impl Turns {
    fn open(l: &Lockstep) -> anyhow::Result<Self> {
        // Read-write opens of a FIFO do not block on Linux, whatever the other side does.
        let open = |name: &str| -> anyhow::Result<std::fs::File> {
            let path = l.dir.join(name);
            std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .open(&path)
                .map_err(|e| mtl::user_error!("--lockstep: cannot open {}: {e}", path.display()))
        };
        let (wait, pass) = if l.first { ("first.fifo", "second.fifo") } else { ("second.fifo", "first.fifo") };
        Ok(Self { wait: open(wait)?, pass: open(pass)? })
    }

    fn wait(&mut self) -> anyhow::Result<()> {
        use std::io::Read;
        let mut token = [0u8; 1];
        self.wait.read_exact(&mut token)?;
        Ok(())
    }

    fn pass(&mut self) -> anyhow::Result<()> {
        use std::io::Write;
        self.pass.write_all(b"t")?;
        Ok(())
    }
}

/// Median, minimum and maximum over the repetitions.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Spread {
    pub median: f64,
    pub min: f64,
    pub max: f64,
}

impl Spread {
    pub fn of(values: &[f64]) -> Self {
        let mut v: Vec<f64> = values.iter().copied().filter(|x| x.is_finite()).collect();
        v.sort_by(|a, b| a.total_cmp(b));
        let median = match v.len() {
            0 => f64::NAN,
            n if n % 2 == 1 => v[n / 2],
            n => 0.5 * (v[n / 2 - 1] + v[n / 2]),
        };
        Self { median, min: v.first().copied().unwrap_or(f64::NAN), max: v.last().copied().unwrap_or(f64::NAN) }
    }
}

/// "mtl", with the architecture when it is not hard sharing ("-mmoe"), the balancing method
/// when it is not static ("-mgda-representation"), "-nchw" when channels-last training is off
/// and "-unfused" when the CPU optimizer runs as tensor ops (the "before" of
/// docs/results/BENCHMARKS.md).
pub fn side_name(
    architecture: &str,
    balancer: &dyn mtl::balance::Balancer,
    method: &str,
    channels_last: bool,
    fused_optim: bool,
) -> String {
    let mut side = String::from("mtl");
    if architecture != mtl::config::DEFAULT_ARCHITECTURE {
        side.push('-');
        side.push_str(architecture);
    }
    if method != "static" {
        side.push('-');
        side.push_str(method);
        match balancer.space() {
            GradientSpace::Losses => {}
            GradientSpace::Params => side.push_str("-params"),
            GradientSpace::Representation => side.push_str("-representation"),
        }
    }
    if !channels_last {
        side.push_str("-nchw");
    }
    if !fused_optim {
        side.push_str("-unfused");
    }
    side
}

/// One benchmark result; one JSON object per line in the results file (the PyTorch side
/// writes the same fields).
#[derive(Debug, Clone, Serialize)]
pub struct BenchReport {
    /// "mtl" ([`side_name`] marks speed switches turned off; the PyTorch side writes
    /// "torch-eager", "torch-compile", …).
    pub side: String,
    pub config: String,
    pub device: String,
    pub precision: String,
    pub threads: i64,
    pub batch_size: i64,
    pub parameters: i64,
    pub channels_last: bool,
    pub augment: String,
    pub optimizer: String,
    pub warmup: usize,
    pub steps: usize,
    pub reps: usize,
    /// Seconds of each repetition of `steps` steps.
    pub rep_seconds: Vec<f64>,
    pub images_per_second: Spread,
    /// Process CPU time (all threads) of each repetition, seconds: less sensitive than wall
    /// time to other processes competing for the cores (OpenMP spin-waits do count).
    pub rep_cpu_seconds: Vec<f64>,
    /// CUDA: the median share of a repetition the host needed to issue its steps (1.0 means
    /// the host, not the device, sets the pace); None on the CPU.
    pub issue_fraction: Option<f64>,
    /// Peak resident set while training, MiB.
    pub peak_rss_mib: f64,
    /// Resident set when timing began, MiB.
    pub base_rss_mib: f64,
    /// CUDA: device memory in use at the end (cudaMemGetInfo), MiB.
    pub device_used_mib: Option<f64>,
    /// /proc/loadavg (1, 5, 15 minutes) when timing began and ended.
    pub load_before: Option<[f64; 3]>,
    pub load_after: Option<[f64; 3]>,
    /// Seconds to build the trainer (data generation or loading included).
    pub setup_seconds: f64,
    /// The FIFO directory when the repetitions alternated with another process's
    /// ([`Lockstep`]); the two records of a pair name the same one.
    pub lockstep: Option<String>,
    /// Processes training together (1 without distribution); `images_per_second` counts the
    /// global batch.
    pub world_size: usize,
    /// Distributed: bytes the step all-reduces or broadcasts (gradients, losses, statistics).
    pub collective_bytes: Option<u64>,
    /// Distributed: seconds per step of those collectives alone (median over repetitions).
    pub collective_seconds: Option<f64>,
}

impl BenchReport {
    /// One human-readable line.
    pub fn summary(&self) -> String {
        let ips = self.images_per_second;
        let mut s = format!(
            "{} {} {} {} bs={} threads={}: {:.1} img/s (min {:.1}, max {:.1}; {} reps × {} steps), peak RSS {:.0} MiB",
            self.side,
            self.config,
            self.device,
            self.precision,
            self.batch_size,
            self.threads,
            ips.median,
            ips.min,
            ips.max,
            self.reps,
            self.steps,
            self.peak_rss_mib
        );
        if let Some(m) = self.device_used_mib {
            s.push_str(&format!(", device memory {m:.0} MiB"));
        }
        if let Some(f) = self.issue_fraction {
            s.push_str(&format!(", host issue {:.0}% of step time", 100.0 * f));
        }
        if let (Some(bytes), Some(secs)) = (self.collective_bytes, self.collective_seconds) {
            let step = self.world_size as f64 * self.batch_size as f64 / self.images_per_second.median;
            s.push_str(&format!(
                ", {} ranks: step {:.1} ms, collectives {:.2} ms for {:.2} MB ({:.0}% of the step)",
                self.world_size,
                1e3 * step,
                1e3 * secs,
                bytes as f64 / 1e6,
                100.0 * secs / step
            ));
        }
        s
    }
}

/// Builds a trainer for the config (nothing is written to a run directory) and times its step.
pub fn bench(resolved: Resolved, opts: &BenchOptions) -> anyhow::Result<BenchReport> {
    if opts.steps == 0 {
        mtl::user_bail!("--steps: must be at least 1");
    }
    if opts.reps == 0 && opts.export.is_none() {
        mtl::user_bail!("--reps: must be at least 1 (0 only with --export, which then only exports)");
    }
    let mut turns = opts.lockstep.as_ref().map(Turns::open).transpose()?;
    let cfg = resolved.cfg.clone();
    let device = mtl::setup::device(&cfg.device)?;
    mtl::setup::init_runtime(&cfg, device);
    if let Some(dir) = &opts.export {
        export_data(&resolved, dir).map_err(|e| mtl::user_error!("--export {}: {e:#}", dir.display()))?;
    }
    let started = Instant::now();
    // The run directory is never created (the bench only calls `step`); one per process, so
    // two benches never meet in it.
    let unused = std::env::temp_dir().join(format!("mtl-bench-unused-{}", std::process::id()));
    let opts_unused = TrainOptions { run_dir: unused, ranks: opts.ranks.clone(), ..Default::default() };
    let mut trainer = Trainer::new(resolved, device, &opts_unused)?;
    if let Some(dir) = &opts.export {
        let weights: Vec<(String, Tensor)> = trainer
            .model
            .named_variables()
            .into_iter()
            .map(|(n, t)| (n, t.detach().to_device(Device::Cpu).contiguous()))
            .collect();
        let file = dir.join("model.safetensors");
        Tensor::write_safetensors(&weights, &file)
            .map_err(|e| mtl::user_error!("--export: cannot write {}: {e}", file.display()))?;
    }
    let setup_seconds = started.elapsed().as_secs_f64();

    let step = |trainer: &mut Trainer| -> anyhow::Result<()> {
        if opts.input_only {
            drop(trainer.next_input());
            Ok(())
        } else {
            trainer.step()
        }
    };
    for _ in 0..opts.warmup {
        step(&mut trainer)?;
    }
    sync(device);
    if let (Some(t), Some(l)) = (turns.as_mut(), opts.lockstep.as_ref()) {
        if !l.first {
            t.pass()?;
        }
    }
    reset_peak_rss();
    let base_rss_mib = proc_status_kib("VmRSS").unwrap_or(f64::NAN) / 1024.0;
    let load_before = load_average();
    let mut rep_seconds = Vec::with_capacity(opts.reps);
    let mut issue = Vec::with_capacity(opts.reps);
    let mut rep_cpu = Vec::with_capacity(opts.reps);
    for _ in 0..opts.reps {
        if let Some(t) = turns.as_mut() {
            t.wait()?;
        }
        sync(device);
        let c0 = process_cpu_seconds();
        let t0 = Instant::now();
        for _ in 0..opts.steps {
            step(&mut trainer)?;
        }
        let issued = t0.elapsed().as_secs_f64();
        sync(device);
        let total = t0.elapsed().as_secs_f64();
        rep_cpu.push(process_cpu_seconds() - c0);
        rep_seconds.push(total);
        issue.push(issued / total);
        if let Some(t) = turns.as_mut() {
            t.pass()?;
        }
    }
    let load_after = load_average();
    let collectives = opts.ranks.as_ref().map(|g| time_collectives(g, &trainer, opts));
    let world = opts.ranks.as_ref().map_or(1, mtl::dist::Group::world);
    let batch = (cfg.data.batch_size * world) as f64;
    let ips: Vec<f64> = rep_seconds.iter().map(|s| batch * opts.steps as f64 / s).collect();
    let channels_last = trainer.model.compute().channels_last(true);
    Ok(BenchReport {
        side: side_name(
            &cfg.model.architecture.kind,
            trainer.balancer.as_ref(),
            &cfg.balance.method,
            channels_last,
            cfg.speed.fused_optimizer.is_on(),
        ) + if opts.input_only { "-input" } else { "" },
        config: cfg.name.clone(),
        device: format!("{device:?}").to_lowercase(),
        precision: match cfg.precision {
            Precision::Fp32 => "fp32",
            Precision::Bf16 => "bf16",
        }
        .into(),
        threads: tch::get_num_threads() as i64,
        batch_size: cfg.data.batch_size as i64,
        parameters: trainer.model.parameter_count(),
        channels_last,
        augment: augment_label(&cfg),
        optimizer: format!("{:?}", cfg.optim.kind).to_lowercase(),
        warmup: opts.warmup,
        steps: opts.steps,
        reps: opts.reps,
        rep_seconds,
        rep_cpu_seconds: rep_cpu,
        images_per_second: Spread::of(&ips),
        issue_fraction: device.is_cuda().then(|| Spread::of(&issue).median),
        peak_rss_mib: proc_status_kib("VmHWM").unwrap_or(f64::NAN) / 1024.0,
        base_rss_mib,
        device_used_mib: if device.is_cuda() { cuda_used_mib(device) } else { None },
        load_before,
        load_after,
        setup_seconds,
        lockstep: opts.lockstep.as_ref().map(|l| l.dir.display().to_string()),
        world_size: world,
        collective_bytes: collectives.map(|c| c.0),
        collective_seconds: collectives.map(|c| c.1),
    })
}

/// The collectives of one training step alone, on copies of the real buffers, with the loop's
/// store check: returns their bytes and the median seconds per step over the repetitions
/// (after two warm-up rounds).
fn time_collectives(g: &mtl::dist::Group, trainer: &Trainer, opts: &BenchOptions) -> (u64, f64) {
    let grads = trainer.optimizer.flat.grads.copy();
    let losses = Tensor::zeros([trainer.tasks.len() as i64], (tch::Kind::Double, trainer.device));
    let statistics: Vec<Tensor> = if trainer.cfg.model.sync_batchnorm {
        Vec::new()
    } else {
        trainer.model.buffers().iter().filter(|t| t.is_floating_point()).map(Tensor::copy).collect()
    };
    let bytes = |t: &Tensor| (t.numel() * t.kind().elt_size_in_bytes()) as u64;
    let total = bytes(&grads) + bytes(&losses) + statistics.iter().map(bytes).sum::<u64>();
    // The step's collectives, and the loop's per-step look at the store (has a rank asked to
    // stop?), a round trip to rank 0's store.
    let round = || {
        g.mean_(&losses);
        g.mean_(&grads);
        if !statistics.is_empty() {
            g.broadcast_all_(&statistics, 0);
        }
        let _ = g.stop_after(0, false);
    };
    round();
    round();
    let mut per_step = Vec::with_capacity(opts.reps);
    for _ in 0..opts.reps {
        g.barrier();
        sync(trainer.device);
        let t0 = Instant::now();
        for _ in 0..opts.steps {
            round();
        }
        sync(trainer.device);
        per_step.push(t0.elapsed().as_secs_f64() / opts.steps as f64);
    }
    (total, Spread::of(&per_step).median)
}

fn augment_label(cfg: &Config) -> String {
    let a = &cfg.data.augment;
    match (a.crop_padding, a.hflip) {
        (0, false) => "none".into(),
        (p, f) => format!("crop{p}{}", if f { "+flip" } else { "" }),
    }
}

/// Writes `config.yaml` (resolved) and `data.safetensors` (the train split: uint8 `images`
/// and one `target.<name>` per task target) for the PyTorch side.
fn export_data(r: &Resolved, dir: &Path) -> anyhow::Result<()> {
    let cfg = &r.cfg;
    if r.multi_input() {
        mtl::user_bail!(
            "bench --export: the PyTorch side reads one dataset, but tasks have their own data (tasks[].data); \
             bench without --export"
        );
    }
    std::fs::create_dir_all(dir)?;
    std::fs::write(dir.join("config.yaml"), cfg.to_yaml())?;
    let train = match mtl::data::load(r.dataset, &cfg.data, cfg.seed, &r.wanted(&r.groups[0]))?.train {
        mtl::data::Source::Memory(split) => split,
        mtl::data::Source::Stream(_) | mtl::data::Source::Rows(_) => {
            mtl::user_bail!("bench --export: the PyTorch side needs a dataset held in memory, not a streamed one")
        }
    };
    let mut tensors = vec![("images".to_string(), train.images.contiguous())];
    for t in &cfg.tasks {
        let key = format!("target.{}", t.target);
        if tensors.iter().any(|(k, _)| *k == key) {
            continue;
        }
        let target = train
            .targets
            .get(&t.target)
            .ok_or_else(|| anyhow::anyhow!("bench: the dataset has no target '{}'", t.target))?;
        tensors.push((key, target.contiguous()));
    }
    Tensor::write_safetensors(&tensors, dir.join("data.safetensors"))?;
    Ok(())
}

fn sync(device: Device) {
    if let Device::Cuda(i) = device {
        tch::Cuda::synchronize(i as i64);
    }
}

/// CPU time of this process (all threads), seconds; NaN where it cannot be read.
#[cfg(unix)]
fn process_cpu_seconds() -> f64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: clock_gettime writes one timespec through a valid, exclusive pointer.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_PROCESS_CPUTIME_ID, &mut ts) };
    if rc == 0 {
        ts.tv_sec as f64 + ts.tv_nsec as f64 * 1e-9
    } else {
        f64::NAN
    }
}

#[cfg(not(unix))]
fn process_cpu_seconds() -> f64 {
    f64::NAN
}

/// A field of /proc/self/status in KiB (`VmHWM`, `VmRSS`).
fn proc_status_kib(field: &str) -> Option<f64> {
    let text = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = text.lines().find(|l| l.starts_with(field) && l[field.len()..].starts_with(':'))?;
    line[field.len() + 1..].trim().trim_end_matches("kB").trim().parse().ok()
}

/// Resets VmHWM to the current RSS (Linux ≥ 4.0); silently does nothing elsewhere.
fn reset_peak_rss() {
    let _ = std::fs::write("/proc/self/clear_refs", "5");
}

fn load_average() -> Option<[f64; 3]> {
    let text = std::fs::read_to_string("/proc/loadavg").ok()?;
    let v: Vec<f64> = text.split_whitespace().take(3).filter_map(|x| x.parse().ok()).collect();
    (v.len() == 3).then(|| [v[0], v[1], v[2]])
}

/// Device memory in use (total − free) on the CUDA device, MiB.
fn cuda_used_mib(device: Device) -> Option<f64> {
    let (free, total) = mtl::setup::device_memory(device)?;
    Some(total.saturating_sub(free) as f64 / (1024.0 * 1024.0))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The built-in default config, small: 16×16 images, a two-stage conv net, one thread.
    fn tiny() -> Resolved {
        let sets = ["data.train_size=64", "data.image_size=16", "data.batch_size=16", "model.backbone.widths=[4, 8]"];
        let sets: Vec<String> = sets.iter().chain(&["threads=1", "device=cpu"]).map(|s| s.to_string()).collect();
        mtl::setup::load(None, &sets).unwrap()
    }

    #[test]
    fn spread_takes_the_median() {
        let s = Spread::of(&[3.0, 1.0, 2.0, f64::NAN]);
        assert_eq!((s.median, s.min, s.max), (2.0, 1.0, 3.0));
        assert_eq!(Spread::of(&[1.0, 2.0, 3.0, 4.0]).median, 2.5);
    }

    #[test]
    fn bench_runs_and_reports_on_the_cpu() {
        let opts = BenchOptions { warmup: 1, steps: 2, reps: 2, ..Default::default() };
        let r = bench(tiny(), &opts).unwrap();
        assert_eq!(r.rep_seconds.len(), 2);
        assert!(r.images_per_second.median > 0.0 && r.images_per_second.min <= r.images_per_second.max);
        assert!(r.peak_rss_mib > 0.0 && r.device_used_mib.is_none() && r.issue_fraction.is_none());
        assert_eq!((r.batch_size, r.threads, r.augment.as_str()), (16, 1, "crop2+flip"));
        assert!(r.rep_cpu_seconds.iter().all(|s| s.is_finite() && *s > 0.0), "{:?}", r.rep_cpu_seconds);
        assert_eq!(r.side, "mtl");
    }

    #[test]
    fn cuda_bench_reports_device_memory() {
        if !tch::Cuda::is_available() {
            eprintln!("skipped: no CUDA on this machine");
            return;
        }
        let mut r = tiny();
        r.cfg.device = "cuda".into();
        r.cfg.precision = Precision::Bf16;
        let opts = BenchOptions { warmup: 1, steps: 2, reps: 2, ..Default::default() };
        let r = bench(r, &opts).unwrap();
        assert!(r.issue_fraction.is_some());
        assert!(r.device_used_mib.is_some_and(|m| m > 0.0), "cudaMemGetInfo not found: {:?}", r.device_used_mib);
    }
}
