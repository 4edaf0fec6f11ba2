//! The training loop: data → model → losses → balancer → optimizer, with evaluation,
//! reporting and checkpoints at their boundaries.
pub mod evaluate;
pub mod plot;
pub mod report;
pub mod restore;
pub mod resume;

use crate::balance::{self, Balancer, GradientSpace, StepContext};
use crate::checkpoint::{BestMetric, RunDir, Snapshot, TrainState, FORMAT_VERSION};
use crate::config::Config;
use crate::data::loader::Loader;
use crate::model::{backbone, MultiTaskModel};
use crate::optim::{flat::FlatParams, schedule::Schedule, Optimizer};
use crate::setup::{Monitor, Resolved};
use crate::tasks::{Baselines, Task};
use crate::{user_bail, user_error};
use report::{MetricsLog, Progress};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use tch::{Device, Kind, Tensor};

/// Set by Ctrl-C: the loop finishes the current step, writes a checkpoint and returns.
pub static INTERRUPTED: AtomicBool = AtomicBool::new(false);

/// How a run starts.
#[derive(Debug, Clone, Default)]
pub struct TrainOptions {
    /// Where the run lives (the CLI's default is [`Resolved::default_run_dir`]).
    pub run_dir: PathBuf,
    /// Continue from this checkpoint directory (resolved from `--resume [PATH]`).
    pub resume: Option<PathBuf>,
    /// Initialise weights from a PyTorch-written safetensors file.
    pub init_from: Option<PathBuf>,
    /// With `init_from`: heads missing from the file keep their fresh initialisation.
    pub allow_missing_heads: bool,
}

/// What a finished (or interrupted) run reports.
#[derive(Debug, Clone)]
pub struct Summary {
    pub run_dir: PathBuf,
    pub steps: u64,
    pub final_metrics: Vec<(String, f64)>,
    pub best: Option<BestMetric>,
    pub interrupted: bool,
    pub seconds: f64,
}

/// Position in training: the next step's global index, its epoch and place in the epoch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Position {
    pub step: u64,
    pub epoch: u64,
    pub position: u64,
}

pub struct Trainer {
    pub cfg: Config,
    pub device: Device,
    pub model: MultiTaskModel,
    pub tasks: Vec<Task>,
    pub train_loader: Loader,
    pub val_loader: Loader,
    pub optimizer: Optimizer,
    pub schedule: Schedule,
    pub balancer: Box<dyn Balancer>,
    pub run: RunDir,
    pub at: Position,
    pub best: Option<BestMetric>,
    pub monitor: Monitor,
    /// Writes the import of `--init-from` as checkpoint `step-000000` when the run starts.
    save_initial: bool,
    /// Single-task baselines for Δm, when `train.baselines` is set.
    baselines: Option<Baselines>,
    /// Per-task loss sums on the device: since the last log line, and since the epoch began.
    window_loss: Tensor,
    epoch_loss: Tensor,
    /// Per-task weights the balancer used, summed since the last log line.
    window_weight: Tensor,
    shared: Vec<Tensor>,
    head_params: Vec<Vec<Tensor>>,
    task_names: Vec<String>,
}

impl Trainer {
    /// Loads the data, builds the model and the optimizer, and restores a checkpoint when
    /// resuming. Writes nothing: everything a run could refuse is checked before
    /// [`Trainer::run`] touches the run directory.
    pub fn new(r: Resolved, device: Device, opts: &TrainOptions) -> anyhow::Result<Self> {
        let Resolved { cfg, dataset, tasks, .. } = &r;
        let run = RunDir::new(&opts.run_dir);
        if opts.resume.is_none() && (run.metrics().exists() || !run.list().is_empty()) {
            user_bail!(
                "{}: run directory already holds a run; continue it with --resume or choose another --run-dir",
                opts.run_dir.display()
            );
        }
        let sources = crate::data::load(*dataset, &cfg.data, cfg.seed, &r.wanted())?;
        let loader = |source: crate::data::Source, train: bool| {
            Loader::new(&cfg.data, cfg.seed, dataset.normalization(), &r.target_uses(), source.to_device(device), train)
        };
        let train_loader = loader(sources.train, true);
        let val_loader = loader(sources.val, false);
        if train_loader.is_empty() || val_loader.is_empty() {
            user_bail!("data: the train and val splits must not be empty");
        }
        let (h, w) = train_loader.image_hw();
        backbone::check_input_size(&cfg.model.backbone, h, w).map_err(|e| user_error!("{e}"))?;
        crate::model::arch::check_images(&cfg.model, cfg.tasks.len(), h, w)?;
        let model = MultiTaskModel::new(cfg, &r.heads(), device, train_loader.channels(), train_loader.image_size())?;
        if let Some(path) = &opts.init_from {
            resume::init_from(&model, path, opts.allow_missing_heads)?;
        }
        let task_names = r.task_names();
        let (shared, head_params) = model.param_groups();
        let fused = cfg.speed.fused_optimizer.resolve(true);
        if cfg.speed.fused_optimizer == crate::config::Toggle::On && device != Device::Cpu {
            user_bail!("speed.fused_optimizer: true runs on the CPU only; use auto on {device:?}");
        }
        let optimizer = Optimizer::new(&cfg.optim, FlatParams::new(model.named_trainable()), fused);
        let spe = train_loader.steps_per_epoch();
        let schedule = Schedule::new(&cfg.schedule, cfg.optim.lr, cfg.train.epochs * spe, spe);
        let balancer = balance::build(cfg)?;
        let baselines = cfg.train.baselines.as_deref().map(|p| Baselines::load(std::path::Path::new(p))).transpose()?;
        let t = tasks.len() as i64;
        let zeros = || Tensor::zeros([t], (Kind::Double, device));
        let Resolved { cfg, tasks, monitor, .. } = r;
        let mut trainer = Self {
            cfg,
            device,
            model,
            tasks,
            train_loader,
            val_loader,
            optimizer,
            schedule,
            balancer,
            run,
            at: Position { step: 0, epoch: 0, position: 0 },
            best: None,
            monitor,
            save_initial: opts.init_from.is_some() && opts.resume.is_none(),
            baselines,
            window_loss: zeros(),
            epoch_loss: zeros(),
            window_weight: zeros(),
            shared,
            head_params,
            task_names,
        };
        if let Some(dir) = &opts.resume {
            resume::restore(&mut trainer, dir)?;
        }
        Ok(trainer)
    }

    pub fn steps_per_epoch(&self) -> u64 {
        self.train_loader.steps_per_epoch()
    }

    /// The step at which training ends.
    pub fn final_step(&self) -> u64 {
        let all = self.cfg.train.epochs * self.steps_per_epoch();
        match self.cfg.train.max_steps {
            0 => all,
            m => m.min(all),
        }
    }

    /// One optimisation step on the next batch. Nothing here reads a value from the device.
    pub fn step(&mut self) -> anyhow::Result<()> {
        let Position { step, epoch, position } = self.at;
        let batch = self.train_loader.train_batch(epoch, position, step);
        crate::rng::seed_torch(self.cfg.seed, step);
        self.optimizer.zero_grad();
        let representation = self.balancer.space() == GradientSpace::Representation;
        let forward = self.model.run(&batch.images, self.model.pass(true, Some((step, epoch)), representation));
        let losses: Vec<Tensor> =
            self.tasks.iter().zip(&forward.outputs).zip(&batch.targets).map(|((t, o), y)| t.loss(o, y)).collect();
        let weights: Vec<f64> = self.cfg.tasks.iter().map(|t| t.weight).collect();
        let ctx = StepContext {
            losses: &losses,
            shared_params: &self.shared,
            head_params: &self.head_params,
            features: forward.representation.as_ref().map(|(z, d)| (z.as_slice(), d.as_slice())),
            task_weights: &weights,
            step,
            epoch,
            seed: self.cfg.seed,
        };
        let task_weights = self.balancer.backward(&ctx)?;
        if let Some(r) = &forward.regularizer {
            r.f_backward()?;
        }
        let _ = self.window_weight.g_add_(&task_weights.to_kind(Kind::Double).to_device(self.window_weight.device()));
        self.optimizer.step(self.schedule.lr(step));
        if self.balancer.needs_after_step() {
            // FAMO: the same batch's losses under the updated weights, same dropout stream.
            // In train mode like the reference implementation (BatchNorm statistics see the
            // batch twice).
            crate::rng::seed_torch(self.cfg.seed, step);
            let after: Vec<Tensor> = tch::no_grad(|| {
                let outputs = self.model.run(&batch.images, self.model.pass(true, Some((step, epoch)), false)).outputs;
                self.tasks.iter().zip(&outputs).zip(&batch.targets).map(|((t, o), y)| t.loss(o, y)).collect()
            });
            self.balancer.after_step(&after)?;
        }
        let detached_losses =
            Tensor::stack(&losses.iter().map(|l| l.detach()).collect::<Vec<_>>(), 0).to_kind(Kind::Double);
        let _ = self.window_loss.g_add_(&detached_losses);
        let _ = self.epoch_loss.g_add_(&detached_losses);
        self.at.step += 1;
        self.at.position += 1;
        if self.at.position == self.steps_per_epoch() {
            self.at.epoch += 1;
            self.at.position = 0;
        }
        Ok(())
    }

    /// Mean per-task loss over `count` steps of an accumulator, then zeroes it (reads the device).
    fn drain(acc: &mut Tensor, names: &[String], metric: &str, count: u64) -> Vec<(String, f64)> {
        let sums: Vec<f64> = Vec::try_from(acc.to_device(tch::Device::Cpu)).unwrap_or_default();
        let _ = acc.zero_();
        names.iter().zip(sums).map(|(n, s)| (format!("{n}.{metric}"), s / count.max(1) as f64)).collect()
    }

    /// Evaluates, logs, and returns the metrics; updates the best value of the monitored metric.
    fn evaluate(&mut self, log: &mut MetricsLog, progress: &Progress) -> anyhow::Result<(Vec<(String, f64)>, bool)> {
        let mut metrics = evaluate::evaluate(&self.model, &self.val_loader, &self.tasks);
        if let Some(dm) = self.baselines.as_ref().and_then(|b| crate::tasks::delta_m(&metrics, &b.metrics, &self.tasks))
        {
            metrics.push(("delta_m".into(), dm));
        }
        let key = &self.monitor.key;
        let value = if key == "loss" {
            metrics.iter().filter(|(k, _)| k.ends_with(".loss")).map(|(_, v)| v).sum()
        } else {
            metrics.iter().find(|(k, _)| k == key).map(|(_, v)| *v).unwrap_or(f64::NAN)
        };
        let better = match &self.best {
            None => value.is_finite(),
            Some(b) if self.monitor.higher_is_better => value > b.value,
            Some(b) => value < b.value,
        };
        if better {
            self.best = Some(BestMetric { metric: key.clone(), value, step: self.at.step });
        }
        log.append(&report::record(self.at.step, self.at.epoch, "val", &metrics))?;
        progress.println(&report::metrics_table(
            &format!("eval after epoch {} (step {})", self.at.epoch, self.at.step),
            &metrics,
        ));
        Ok((metrics, better))
    }

    /// The checkpoint contents for the current position.
    pub fn train_state(&self) -> TrainState {
        TrainState {
            format: FORMAT_VERSION,
            step: self.at.step,
            epoch: self.at.epoch,
            position: self.at.position,
            best: self.best.clone(),
            config_fingerprint: resume::fingerprint(&self.cfg),
            mtl_version: env!("CARGO_PKG_VERSION").to_string(),
            rng: "derived from (seed, purpose, epoch/step/index); nothing to restore".into(),
        }
    }

    fn train_tensors(&self) -> Vec<(String, Tensor)> {
        let mut t: Vec<(String, Tensor)> =
            self.optimizer.state().into_iter().map(|(k, v)| (format!("optim.{k}"), v)).collect();
        t.extend(self.balancer.state().into_iter().map(|(k, v)| (format!("balance.{k}"), v)));
        t.push(("loop.window_loss".into(), self.window_loss.shallow_clone()));
        t.push(("loop.epoch_loss".into(), self.epoch_loss.shallow_clone()));
        t.push(("loop.window_weight".into(), self.window_weight.shallow_clone()));
        t
    }

    pub fn save_checkpoint(&self, is_best: bool) -> anyhow::Result<PathBuf> {
        let state = self.train_state();
        let yaml = self.cfg.to_yaml();
        let snap = Snapshot {
            state: &state,
            model: self.model.named_variables(),
            train_tensors: self.train_tensors(),
            config_yaml: &yaml,
        };
        let dir = self.run.save(&snap, is_best)?;
        self.run.prune(self.cfg.checkpoint.keep_last)?;
        Ok(dir)
    }

    /// Creates the run directory (or continues it), records the config, then trains to the
    /// end (or until interrupted), evaluating and checkpointing on schedule, and draws
    /// `curves.png`.
    pub fn run(&mut self) -> anyhow::Result<Summary> {
        self.run.create()?;
        crate::checkpoint::write_atomically(&self.run.config(), self.cfg.to_yaml().as_bytes())?;
        if std::mem::take(&mut self.save_initial) {
            // The imported starting point is kept as checkpoint step-000000: it can be evaluated,
            // compared with PyTorch, or trained again from.
            self.save_checkpoint(false)?;
        }
        let summary = self.train_loop()?;
        self.draw_curves();
        Ok(summary)
    }

    fn train_loop(&mut self) -> anyhow::Result<Summary> {
        let started = std::time::Instant::now();
        let resumed_at = self.at.step;
        let mut log = MetricsLog::open(&self.run.metrics(), (resumed_at > 0).then_some(resumed_at))?;
        let spe = self.steps_per_epoch();
        let end = self.final_step();
        let mut progress = Progress::new(end, spe, self.at.step, self.cfg.data.batch_size as u64);
        let log_every = self.cfg.train.log_every;
        let mut final_metrics = Vec::new();
        let mut interrupted = false;
        while self.at.step < end {
            let epoch_before = self.at.epoch;
            self.step()?;
            progress.step(self.at.step, self.at.epoch);
            let step = self.at.step;
            if step.is_multiple_of(log_every) {
                let window = (step - 1) % log_every + 1;
                let losses = Self::drain(&mut self.window_loss, &self.task_names, "loss", window);
                let weights = Self::drain(&mut self.window_weight, &self.task_names, "weight", window);
                let lr = self.schedule.lr(step - 1);
                progress.log(step, epoch_before, &losses, lr);
                let mut values = losses;
                values.extend(weights);
                values.push(("lr".into(), lr));
                values.push(("images_per_second".into(), progress.images_per_second(step)));
                log.append(&report::record(step, epoch_before, "train", &values))?;
            }
            let epoch_done = self.at.epoch > epoch_before;
            if epoch_done {
                let means = Self::drain(&mut self.epoch_loss, &self.task_names, "loss", spe);
                let means: Vec<f64> = means.into_iter().map(|(_, v)| v).collect();
                self.balancer.end_epoch(epoch_before, &means);
            }
            // Only the real end of training evaluates; a max_steps stop is a pause, like Ctrl-C,
            // so a run paused and resumed logs exactly what an uninterrupted one does.
            let last = step == self.cfg.train.epochs * spe;
            let paused = step == end && !last;
            let stop = INTERRUPTED.load(Ordering::SeqCst);
            let mut is_best = false;
            if (epoch_done && self.at.epoch.is_multiple_of(self.cfg.train.eval_every)) || last {
                let (metrics, better) = self.evaluate(&mut log, &progress)?;
                final_metrics = metrics;
                is_best = better;
            }
            let every_steps = self.cfg.checkpoint.every_steps;
            if (epoch_done && self.at.epoch.is_multiple_of(self.cfg.checkpoint.every))
                || last
                || paused
                || stop
                || is_best
                || (every_steps > 0 && step.is_multiple_of(every_steps))
            {
                let dir = self.save_checkpoint(is_best)?;
                tracing::info!(checkpoint = %dir.display(), "checkpoint written");
            }
            if stop {
                interrupted = true;
                break;
            }
        }
        progress.finish();
        Ok(Summary {
            run_dir: self.run.root.clone(),
            steps: self.at.step,
            final_metrics,
            best: self.best.clone(),
            interrupted,
            seconds: started.elapsed().as_secs_f64(),
        })
    }
}

impl Trainer {
    /// `curves.png` from the whole `metrics.jsonl`: one panel per task with its training loss
    /// and every val metric. A failure is logged, never fatal: the run itself is done.
    fn draw_curves(&self) {
        let records = report::read_records(&self.run.metrics());
        let series = plot::task_series(&records, &self.task_names);
        let png = self.run.root.join("curves.png");
        if let Err(e) = plot::write_curves_png(&png, &self.cfg.name, &series) {
            tracing::warn!("could not draw {}: {e:#}", png.display());
        }
    }
}

#[cfg(test)]
mod tests;
