//! The training loop: data → model → losses → balancer → optimizer, with evaluation,
//! reporting and checkpoints at their boundaries.
pub mod affinity;
mod best;
mod checkpoint_policy;
pub mod evaluate;
mod health;
pub mod heatmap;
pub mod inputs;
pub mod norm_gap;
pub mod parallel;
pub mod plot;
pub mod pretrained;
pub mod report;
pub mod restore;
pub mod resume;
mod skip;
pub mod stages;
pub mod tensorboard;

use crate::balance::{self, Balancer, GradientSpace, StepContext};
use crate::checkpoint::{BestMetric, DataPosition, RunDir, RunLock, Snapshot, TrainState, FORMAT_VERSION};
use crate::config::{Config, OnNonFinite};
use crate::data::loader::Batch;
use crate::dist::Group;
use crate::error::Diverged;
use crate::model::{backbone, HeadInput, MissingHeads, Mode, MultiTaskModel};
use crate::optim::{flat::FlatParams, schedule::Schedule, Optimizer};
use crate::setup::Resolved;
use crate::tasks::{Baselines, Task};
use crate::{user_bail, user_error};
use best::BestTracker;
use checkpoint_policy::{CheckpointPolicy, StepEnd};
use health::{Health, StepFlags};
use parallel::Ranks;
use report::{MetricsLog, Progress, RunLog};
use skip::{Skips, Undo};
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
    /// A distributed run: this process's rank (see docs/DISTRIBUTED.md). Rank 0 owns the run
    /// directory; every rank trains on its shard of each global batch.
    pub ranks: Option<Group>,
    /// Print no progress and no evaluation tables (a run inside another command: `probe`).
    pub quiet: bool,
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

/// Whether the state a checkpoint saves holds the best value of the monitored metric so far
/// (then `BEST` points at it too).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Best {
    Improved,
    Unchanged,
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
    /// Every data group's loaders (one group unless tasks have their own data).
    pub inputs: inputs::Inputs,
    pub optimizer: Optimizer,
    pub schedule: Schedule,
    pub balancer: Box<dyn Balancer>,
    pub run: RunDir,
    pub at: Position,
    /// The best value of `checkpoint.monitor` so far.
    best: BestTracker,
    checkpoints: CheckpointPolicy,
    /// Writes the import of `--init-from` as checkpoint `step-000000` when the run starts.
    save_initial: bool,
    /// [`TrainOptions::quiet`].
    quiet: bool,
    /// Single-task baselines for Δm, when `train.baselines` is set.
    baselines: Option<Baselines>,
    /// Per-task loss sums on the device: since the last log line, and since the epoch began.
    window_loss: Tensor,
    epoch_loss: Tensor,
    /// Per-task weights the balancer used, summed since the last log line.
    window_weight: Tensor,
    /// `train.on_nonfinite: skip_step`: the steps skipped (see [`Skips`]).
    skips: Skips,
    /// Whether this step's losses and gradients were finite, read at the loop's boundaries.
    health: Health,
    /// This process's hold on the run directory, once it exists.
    lock: Option<RunLock>,
    /// The other ranks of a distributed run (none for a single process).
    ranks: Ranks,
    /// The trainable shared parameters and, per task of the current stage, its own.
    shared: Vec<Tensor>,
    head_params: Vec<Vec<Tensor>>,
    task_names: Vec<String>,
    /// The run's stages (one unless `train.stages`), and the one the settings are now for.
    stages: stages::Stages,
    stage: usize,
    /// The tasks that train in the current stage (the balancer's tasks), in config order.
    active: Vec<usize>,
    /// `report.affinity`: transfer between tasks, measured at some steps (see [`affinity`]).
    affinity: Option<affinity::AffinityMeter>,
}

/// A step's forward passes: the per-task losses, the shared representation (single-input
/// only) and the architectures' regularizers.
struct StepForward {
    losses: Vec<Tensor>,
    representation: Option<crate::model::Representation>,
    regularizers: Vec<Tensor>,
}

impl Trainer {
    /// Loads the data, builds the model and the optimizer, and restores a checkpoint when
    /// resuming. Writes nothing: everything a run could refuse is checked before
    /// [`Trainer::run`] touches the run directory.
    pub fn new(mut r: Resolved, device: Device, opts: &TrainOptions) -> anyhow::Result<Self> {
        let ranks = Ranks::new(opts.ranks.clone(), r.cfg.model.sync_batchnorm);
        r.check_placement(device)?;
        if let Some(dir) = &opts.resume {
            resume::keep_global_batch(dir, &mut r.cfg, ranks.world())?;
            // The groups were resolved from the config before the batch was kept; a task's own
            // data cannot set its batch size at another world size (keep_global_batch refuses).
            let batch = r.cfg.data.batch_size;
            for g in r.groups.iter_mut().filter(|g| !g.tasks.iter().any(|&i| own_batch_size(&r.cfg, i))) {
                g.data.batch_size = batch;
            }
        }
        let Resolved { cfg, tasks, .. } = &r;
        let run = RunDir::new(&opts.run_dir);
        // Rank 0 owns the run directory; the others never look at it (they may be on machines
        // that do not share it, and they must not race rank 0's first writes).
        let lock = if ranks.is_first() { check_run_dir(&run, opts)? } else { None };
        let inputs = inputs::Inputs::load(&r, device, &ranks)?;
        for (g, input) in r.groups.iter().zip(&inputs.groups) {
            let train = &input.train;
            if ranks.world() > 1 && (train.len() as i64) < train.global_batch_size() {
                let at = if r.multi_input() { format!("tasks[{}].data", g.tasks[0]) } else { "data".into() };
                user_bail!(
                    "{at}: {} training images are fewer than one global batch (data.batch_size {} × {} ranks)",
                    train.len(),
                    g.data.batch_size,
                    ranks.world()
                );
            }
        }
        let train_loader = &inputs.first().train;
        let (h, w) = train_loader.image_hw();
        backbone::check_input_size(&cfg.model.backbone, h, w).map_err(|e| user_error!("{e}"))?;
        crate::model::arch::check_images(&cfg.model, cfg.tasks.len(), h, w)?;
        let (channels, size) = (train_loader.channels(), train_loader.image_size());
        check_model_fits(cfg, &r.heads(), channels, size, device)?;
        let model = MultiTaskModel::new(cfg, &r.heads(), device, channels, size)?;
        if let Some(path) = &opts.init_from {
            let missing_heads =
                if opts.allow_missing_heads { MissingHeads::KeepInitialised } else { MissingHeads::Refuse };
            resume::init_from(&model, path, missing_heads)?;
        }
        // Published weights start a fresh run; a resumed one has its own, and --init-from's
        // replace them.
        let pretrained = cfg.model.backbone.pretrained.is_some() && opts.resume.is_none() && opts.init_from.is_none();
        if pretrained {
            // The first rank of a machine downloads `imagenet` into the shared cache; the
            // others then find it there.
            ranks.first_on_machine("weights", || pretrained::load(&model, &cfg.model.backbone))?;
        }
        let task_names = r.task_names();
        let stages = stages::Stages::new(cfg);
        stages.check_patterns(&model).map_err(|e| user_error!("{e}"))?;
        let fused = cfg.speed.fused_optimizer.is_on();
        let optimizer =
            Optimizer::new(&cfg.optim, FlatParams::new(model.named_trainable(), model.compute().channels_last), fused)
                .flushing_denormals(cfg.speed.flush_denormal);
        let spe = inputs.steps_per_epoch();
        let schedule = Schedule::new(&cfg.schedule, cfg.optim.lr, cfg.train.epochs * spe, spe);
        let balancer = balance::build(cfg)?;
        let baselines = cfg.train.baselines.as_deref().map(|p| Baselines::load(std::path::Path::new(p))).transpose()?;
        let t = tasks.len() as i64;
        let zeros = || Tensor::zeros([t], (Kind::Double, device));
        let Resolved { cfg, tasks, monitor, .. } = r;
        let checkpoints = CheckpointPolicy::new(&cfg.checkpoint);
        let affinity = cfg.report.affinity.map(|a| affinity::AffinityMeter::new(a.every, tasks.len()));
        let mut trainer = Self {
            cfg,
            device,
            model,
            tasks,
            inputs,
            optimizer,
            schedule,
            balancer,
            run,
            at: Position { step: 0, epoch: 0, position: 0 },
            best: BestTracker::new(monitor),
            checkpoints,
            save_initial: (opts.init_from.is_some() || pretrained) && opts.resume.is_none(),
            quiet: opts.quiet,
            baselines,
            window_loss: zeros(),
            epoch_loss: zeros(),
            window_weight: zeros(),
            skips: Skips::default(),
            health: Health::new(device),
            lock,
            ranks,
            shared: Vec::new(),
            head_params: Vec::new(),
            task_names,
            stages,
            stage: 0,
            active: (0..t as usize).collect(),
            affinity,
        };
        trainer.enter_stage(0)?;
        if let Some(dir) = &opts.resume {
            resume::restore(&mut trainer, dir)?;
        }
        // Every rank starts from rank 0's weights and statistics (fresh, imported or restored).
        let variables: Vec<Tensor> = trainer.model.named_variables().into_iter().map(|(_, t)| t).collect();
        trainer.ranks.copy_from_first(&variables);
        Ok(trainer)
    }

    /// The number of processes training together (1 without distribution).
    pub fn world_size(&self) -> usize {
        self.ranks.world()
    }

    /// Whether this process prints and writes the run directory (rank 0, or the only one).
    pub fn is_first_rank(&self) -> bool {
        self.ranks.is_first()
    }

    pub fn steps_per_epoch(&self) -> u64 {
        self.inputs.steps_per_epoch()
    }

    /// Whether the run has nothing left to train: resumed at (or after) its final step.
    /// [`Trainer::run`] then writes nothing and reports the last evaluation.
    pub fn is_complete(&self) -> bool {
        self.at.step >= self.final_step()
    }

    /// The step at which training ends.
    pub fn final_step(&self) -> u64 {
        let all = self.cfg.train.epochs * self.steps_per_epoch();
        match self.cfg.train.max_steps {
            0 => all,
            m => m.min(all),
        }
    }

    /// The next step's batches (read, decoded, augmented and normalized, on the device), taken
    /// without training on them: the input pipeline alone (`mtl-train bench --input-only`).
    pub fn next_input(&mut self) -> Vec<Batch> {
        let batches = self.inputs.train_batches(self.at.step);
        self.advance();
        batches
    }

    /// One optimization step on the next batch. Nothing here reads a value from the device,
    /// except the finiteness flag under `train.on_nonfinite: skip_step`.
    pub fn step(&mut self) -> anyhow::Result<()> {
        self.follow_stages()?;
        let Position { step, epoch, .. } = self.at;
        let batches = self.inputs.train_batches(step);
        self.measure_affinity(&batches)?;
        let undo = (self.cfg.train.on_nonfinite == OnNonFinite::SkipStep)
            .then(|| Undo::capture(&self.model, self.balancer.as_ref()));
        crate::rng::seed_torch(self.cfg.seed, step);
        self.optimizer.zero_grad();
        let heads = match self.balancer.space() {
            GradientSpace::Representation => HeadInput::Detached,
            GradientSpace::Losses | GradientSpace::Params => HeadInput::Attached,
        };
        let forward = self.losses(&batches, (step, epoch), heads);
        let losses = &forward.losses;
        let weights: Vec<f64> = self.active.iter().map(|&i| self.cfg.tasks[i].weight).collect();
        let ctx = StepContext {
            losses,
            shared_params: &self.shared,
            head_params: &self.head_params,
            features: forward.representation.as_ref().map(|(z, d)| (z.as_slice(), d.as_slice())),
            task_weights: &weights,
            step,
            epoch,
            seed: self.cfg.seed,
            ranks: self.ranks.group(),
        };
        let task_weights = self.balancer.backward(&ctx)?;
        // The regularizers' gradients are this rank's too: they join the gradients before
        // they are averaged over the ranks.
        for r in &forward.regularizers {
            r.f_backward()?;
        }
        self.ranks.after_backward(&self.optimizer.flat.grads, &self.model.buffers());
        let detached_losses = self
            .per_task(&Tensor::stack(&losses.iter().map(|l| l.detach()).collect::<Vec<_>>(), 0).to_kind(Kind::Double));
        // Skipping must also catch BatchNorm statistics that overflowed in this forward; the
        // stop mode finds them at the next boundary, with the weights.
        let buffers = if undo.is_some() { self.model.buffers() } else { Vec::new() };
        let flags = StepFlags::of(&detached_losses, std::iter::once(&self.optimizer.flat.grads).chain(&buffers));
        match undo {
            None => self.health.record(step, &flags),
            Some(undo) if flags.finite.int64_value(&[]) == 0 => return self.skip(undo, &flags),
            Some(_) => self.skips.consecutive = 0,
        }
        let task_weights = self.per_task(&task_weights.to_kind(Kind::Double).to_device(self.window_weight.device()));
        let _ = self.window_weight.g_add_(&task_weights);
        self.optimizer.step(self.schedule.lr(step));
        if self.balancer.needs_after_step() {
            // FAMO: the same batch's losses under the updated weights, same dropout stream.
            // In train mode like the reference implementation (BatchNorm statistics see the
            // batch twice).
            crate::rng::seed_torch(self.cfg.seed, step);
            let after = tch::no_grad(|| self.losses(&batches, (step, epoch), HeadInput::Attached)).losses;
            self.balancer.after_step(&after)?;
        }
        let _ = self.window_loss.g_add_(&detached_losses);
        let _ = self.epoch_loss.g_add_(&detached_losses);
        self.advance();
        Ok(())
    }

    /// Each group's batch through the model (in training mode), and the loss of every task
    /// that trains in the current stage on its own group's batch, in task order. The other
    /// tasks' heads do not run, nor does the backbone on a group none of whose tasks trains.
    fn losses(&self, batches: &[Batch], at: (u64, u64), heads: HeadInput) -> StepForward {
        let mut losses: Vec<Option<Tensor>> = self.tasks.iter().map(|_| None).collect();
        let mut out = StepForward { losses: Vec::new(), representation: None, regularizers: Vec::new() };
        let mask: Vec<bool> = (0..self.tasks.len()).map(|i| self.active.contains(&i)).collect();
        // Heads that run: the active tasks' and those of the tasks they are `given` (ESMM).
        let runs: Vec<bool> = (0..self.tasks.len())
            .map(|i| mask[i] || self.active.iter().any(|&j| self.tasks[j].given == Some(i)))
            .collect();
        let subset = (self.active.len() < self.tasks.len()).then_some(runs.as_slice());
        for (g, (input, batch)) in self.inputs.groups.iter().zip(batches).enumerate() {
            if !input.tasks.iter().any(|&i| mask[i]) {
                continue;
            }
            let pass = self.model.pass(Mode::Train, Some(at), heads).on_domain(g);
            let forward = self.model.run_heads(&batch.images, pass, subset);
            let target_of = |j: usize| {
                let at = input.tasks.iter().position(|&k| k == j).expect("a given task shares its parent's data");
                batch.targets[at].shallow_clone()
            };
            let output_of = |j: usize| forward.outputs[j].as_ref().expect("an active task's head ran").shallow_clone();
            for &i in input.tasks.iter().filter(|&&i| mask[i]) {
                let task = &self.tasks[i];
                let (output, y) = crate::tasks::paired(&self.tasks, i, &output_of, &target_of);
                // Initial predictions (PAD-Net, MTI-Net) join their task's loss.
                let aux = forward.auxiliary.iter().filter(|a| a.task == i);
                let aux = aux.map(|a| task.loss(&a.prediction, &target_of(i)) * a.weight);
                losses[i] = Some(aux.fold(task.loss(&output, &y), |sum, l| sum + l));
            }
            // One group when there is a representation: the config refuses the space otherwise.
            out.representation = forward.representation;
            out.regularizers.extend(forward.regularizer);
        }
        // Every rank sees the global batch's mean loss per task (and so do the balancers).
        let active = self.active.iter().map(|&i| losses[i].take().expect("every task is in a group")).collect();
        out.losses = self.ranks.mean_losses(active);
        out
    }

    /// A `[active tasks]` tensor spread over all tasks (zeros for the tasks that do not train
    /// in this stage); itself when every task trains.
    fn per_task(&self, values: &Tensor) -> Tensor {
        if self.active.len() == self.tasks.len() {
            return values.shallow_clone();
        }
        let index: Vec<i64> = self.active.iter().map(|&i| i as i64).collect();
        let index = Tensor::from_slice(&index).to_device(values.device());
        Tensor::zeros([self.tasks.len() as i64], (values.kind(), values.device())).index_copy(0, &index, values)
    }

    /// The stage the current epoch belongs to, entered if it is not the current one (at a
    /// stage's first step, and when a run resumes into a stage).
    fn follow_stages(&mut self) -> anyhow::Result<()> {
        let due = self.stages.index_at(self.at.epoch);
        if due != self.stage {
            self.enter_stage(due)?;
        }
        Ok(())
    }

    /// Applies stage `k`'s settings: which variables train and how (optimizer settings,
    /// autograd), which BatchNorm layers are frozen, the tasks the balancer balances (a new
    /// balancer when they change: its state belongs to the tasks it balanced).
    pub fn enter_stage(&mut self, k: usize) -> anyhow::Result<()> {
        let stage = self.stages.list[k].clone();
        let (settings, frozen_norms) = stages::settings(&self.cfg, &self.model, &self.optimizer.flat.names, &stage);
        let at = if self.stages.configured { format!("train.stages[{k}]") } else { stage.groups_key.clone() };
        if settings.iter().all(|s| s.frozen) {
            user_bail!(
                "{at}: every parameter is frozen (by {}, model.freeze_bn or the stage's tasks); nothing would train",
                stage.groups_key
            );
        }
        self.optimizer.set_settings(settings);
        self.model.freeze_norms(&|p| frozen_norms.iter().any(|f| f == p));
        let active: Vec<usize> = (0..self.tasks.len()).filter(|&i| stage.active[i]).collect();
        if active != self.active {
            self.balancer = balance::build_for(&self.cfg.balance, active.len())?;
            self.active = active;
        }
        let (shared, mut own) = self.model.param_groups();
        self.head_params = self.active.iter().map(|&i| std::mem::take(&mut own[i])).collect();
        self.shared = shared;
        if let Some(meter) = self.affinity.as_mut() {
            // The shared parameters that train may differ from the last stage's.
            meter.shared_mask = None;
        }
        if self.balancer.space() == GradientSpace::Params && self.shared.is_empty() {
            user_bail!(
                "{at}: balance.method {} combines the tasks' gradients on the shared parameters, but none of them \
                 trains; unfreeze some, or use a loss-level method",
                self.cfg.balance.method
            );
        }
        self.stage = k;
        Ok(())
    }

    fn advance(&mut self) {
        self.at.step += 1;
        self.at.position += 1;
        if self.at.position == self.steps_per_epoch() {
            self.at.epoch += 1;
            self.at.position = 0;
        }
    }

    /// Drops a step whose loss or gradient is not finite, as AMP's scaler does: no update, the
    /// step's BatchNorm statistics and balancer state undone; too many in a row end the run.
    fn skip(&mut self, undo: Undo, flags: &StepFlags) -> anyhow::Result<()> {
        undo.restore(&self.model, self.balancer.as_mut())?;
        self.skips.record();
        let mut health = Health::new(self.device);
        health.record(self.at.step, flags);
        let reason = health.check(&self.task_names).expect_err("a skipped step is not finite");
        tracing::warn!("skipped {reason} (train.on_nonfinite: skip_step; {} skipped so far)", self.skips.total);
        let limit = self.cfg.train.max_consecutive_skips;
        if self.skips.consecutive >= limit {
            return Err(self.diverged(Diverged(format!(
                "{reason}, the {limit}th skipped step in a row (train.max_consecutive_skips)"
            ))));
        }
        self.advance();
        Ok(())
    }

    /// The error a divergence ends the run with: what went wrong where, and what is left.
    fn diverged(&self, what: Diverged) -> anyhow::Error {
        let kept = match self.run.pointed(crate::checkpoint::LATEST).ok().flatten() {
            Some(dir) => format!("LATEST is {}, the last finite checkpoint", dir.display()),
            None => "no checkpoint had been written".to_string(),
        };
        anyhow::Error::new(Diverged(format!(
            "training diverged at {what}; nothing was saved after it ({kept}); lower optim.lr, set optim.grad_clip, \
             or set train.on_nonfinite: skip_step"
        )))
    }

    /// At a boundary of the loop (log line, epoch end, evaluation, checkpoint): the steps since
    /// the last check had finite losses and gradients, and the weights and BatchNorm statistics
    /// are finite now. Two host reads when all is well.
    fn check_health(&mut self) -> anyhow::Result<()> {
        self.health.check(&self.task_names).map_err(|e| self.diverged(e))?;
        if let Some(name) = health::first_non_finite(&self.model.named_variables()) {
            let at = Diverged(format!("step {}: variable '{name}' is non-finite (NaN or Inf)", self.at.step));
            return Err(self.diverged(at));
        }
        Ok(())
    }

    /// Whether the task named `name` trains in the current stage.
    fn trains(&self, name: &str) -> bool {
        self.active.iter().any(|&i| self.tasks[i].name == name)
    }

    /// The per-task values of the tasks that train in the current stage.
    fn only_active(&self, values: Vec<(String, f64)>) -> Vec<(String, f64)> {
        values.into_iter().enumerate().filter(|(i, _)| self.active.contains(i)).map(|(_, v)| v).collect()
    }

    /// Mean per-task loss over `count` steps of an accumulator, then zeroes it (reads the device).
    fn drain(acc: &mut Tensor, names: &[String], metric: &str, count: u64) -> Vec<(String, f64)> {
        let sums: Vec<f64> = Vec::try_from(acc.to_device(tch::Device::Cpu)).unwrap_or_default();
        let _ = acc.zero_();
        names.iter().zip(sums).map(|(n, s)| (format!("{n}.{metric}"), s / count.max(1) as f64)).collect()
    }

    /// Evaluates, logs, and returns the metrics; updates the best value of the monitored metric.
    /// Every task is evaluated, also those the stage does not train (docs/FINETUNING.md); with
    /// stages, the row names its stage, and at a stage's end (`stage_done`) the console says
    /// the stage's Δm.
    fn evaluate(
        &mut self,
        log: &mut RunLog,
        progress: &Progress,
        stage_done: bool,
    ) -> anyhow::Result<(Vec<(String, f64)>, bool)> {
        let mut metrics = evaluate::evaluate(&self.model, &self.inputs, &self.tasks, self.ranks.group());
        let baselines = self.baselines.as_ref().map(|b| &b.metrics);
        let delta_m = baselines.and_then(|b| crate::tasks::delta_m(&metrics, b, &self.tasks));
        // A stage that trains some of the tasks: Δm over those too.
        let own = |(k, _): &&(String, f64)| k.split_once('.').is_some_and(|(t, _)| self.trains(t));
        let stage_delta_m = baselines.filter(|_| self.active.len() < self.tasks.len()).and_then(|b| {
            crate::tasks::delta_m(&metrics.iter().filter(own).cloned().collect::<Vec<_>>(), b, &self.tasks)
        });
        if let Some(dm) = delta_m {
            metrics.push(("delta_m".into(), dm));
        }
        if let Some(dm) = stage_delta_m {
            metrics.push(("stage_delta_m".into(), dm));
        }
        let better = self.best.offer(&metrics, self.at.step);
        let mut row = metrics.clone();
        if self.stages.configured {
            row.push(("stage".into(), (self.stage + 1) as f64));
        }
        log.append(&report::record(self.at.step, self.at.epoch, "val", &row))?;
        log.images(self.at.step, &self.model, &self.tasks)?;
        progress.println(&report::metrics_table(
            &format!("eval after epoch {} (step {})", self.at.epoch, self.at.step),
            &metrics,
        ));
        if let (true, true, Some(dm)) = (self.stages.configured, stage_done, delta_m) {
            let own = stage_delta_m.map(|d| format!(", {} % over its tasks", crate::tasks::signed_percent(d)));
            progress.println(&format!(
                "stage {} of {} ends at epoch {}: Δm {} %{} ({})\n",
                self.stage + 1,
                self.stages.list.len(),
                self.at.epoch,
                crate::tasks::signed_percent(dm),
                own.unwrap_or_default(),
                crate::tasks::DELTA_M_DIRECTION
            ));
        }
        Ok((metrics, better))
    }

    /// The checkpoint contents for the current position.
    pub fn train_state(&self) -> TrainState {
        TrainState {
            format: FORMAT_VERSION,
            step: self.at.step,
            epoch: self.at.epoch,
            position: self.at.position,
            best: self.best.best().cloned(),
            config_fingerprint: resume::fingerprint(&self.cfg),
            mtl_version: env!("CARGO_PKG_VERSION").to_string(),
            rng: "derived from (seed, purpose, epoch/step/index); nothing to restore".into(),
            world_size: self.ranks.world() as u64,
            data: self.data_positions(),
        }
    }

    /// Each data group's place at the current step (none when there is one group: its place is
    /// the epoch and position).
    pub fn data_positions(&self) -> Vec<DataPosition> {
        if self.inputs.groups.len() == 1 {
            return Vec::new();
        }
        let groups = self.inputs.groups.iter();
        groups
            .map(|g| {
                let (pass, position) = g.train.place(self.at.step);
                DataPosition {
                    tasks: g.tasks.iter().map(|&i| self.tasks[i].name.clone()).collect(),
                    pass,
                    position,
                    batches_per_pass: g.train.steps_per_epoch(),
                }
            })
            .collect()
    }

    fn train_tensors(&self) -> Vec<(String, Tensor)> {
        let mut t: Vec<(String, Tensor)> =
            self.optimizer.state().into_iter().map(|(k, v)| (format!("optim.{k}"), v)).collect();
        t.extend(self.balancer.state().into_iter().map(|(k, v)| (format!("balance.{k}"), v)));
        t.push(("loop.window_loss".into(), self.window_loss.shallow_clone()));
        t.push(("loop.epoch_loss".into(), self.epoch_loss.shallow_clone()));
        t.push(("loop.window_weight".into(), self.window_weight.shallow_clone()));
        t.push((Skips::TENSOR.into(), self.skips.to_tensor()));
        t.extend(self.affinity.iter().flat_map(affinity::AffinityMeter::state));
        t
    }

    /// Writes a checkpoint of the current state; weights that are not finite are never
    /// written (a [`Diverged`] error instead). In a distributed run every rank checks, and
    /// rank 0 writes (the others return None).
    pub fn save_checkpoint(&mut self, best: Best) -> anyhow::Result<Option<PathBuf>> {
        self.check_health()?;
        if !self.ranks.is_first() {
            return Ok(None);
        }
        let state = self.train_state();
        let yaml = self.cfg.to_yaml();
        let snap = Snapshot {
            state: &state,
            model: self.model.named_variables(),
            train_tensors: self.train_tensors(),
            config_yaml: &yaml,
        };
        let dir = self.run.save(&snap, best == Best::Improved)?;
        self.run.prune(self.cfg.checkpoint.keep_last)?;
        Ok(Some(dir))
    }

    /// Creates the run directory (or continues it), records the config, then trains to the
    /// end (or until interrupted), evaluating and checkpointing on schedule, and draws
    /// `curves.png`.
    pub fn run(&mut self) -> anyhow::Result<Summary> {
        if self.is_complete() {
            // Nothing to train: no config.yaml rewrite, no new event file, no metrics row.
            self.ranks.finish();
            return Ok(Summary {
                run_dir: self.run.root.clone(),
                steps: self.at.step,
                final_metrics: report::last_val(&self.run.root),
                best: self.best.best().cloned(),
                interrupted: false,
                seconds: 0.0,
            });
        }
        if self.ranks.is_first() {
            self.run.create()?;
            if self.lock.is_none() {
                self.lock = Some(self.run.lock()?);
            }
            crate::checkpoint::write_atomically(&self.run.config(), self.cfg.to_yaml().as_bytes())?;
        }
        if std::mem::take(&mut self.save_initial) {
            // The imported starting point is kept as checkpoint step-000000: it can be evaluated,
            // compared with PyTorch, or trained again from.
            self.save_checkpoint(Best::Unchanged)?;
        }
        let summary = self.train_loop()?;
        if self.ranks.is_first() {
            self.draw_curves();
            self.draw_affinity();
        }
        self.ranks.finish();
        Ok(summary)
    }

    fn train_loop(&mut self) -> anyhow::Result<Summary> {
        let started = std::time::Instant::now();
        let resumed_at = self.at.step;
        let first = self.ranks.is_first();
        let mut log = self.open_log(resumed_at)?;
        let spe = self.steps_per_epoch();
        let end = self.final_step();
        let batch = self.inputs.images_per_step * self.ranks.world() as u64;
        let mut progress = Progress::new(end, spe, self.at.step, batch, first && !self.quiet);
        let log_every = self.cfg.train.log_every;
        let mut final_metrics = Vec::new();
        let mut interrupted = false;
        if first && resumed_at == 0 {
            self.report_norm_gap();
        }
        while self.at.step < end {
            let epoch_before = self.at.epoch;
            self.step()?;
            progress.step(self.at.step, self.at.epoch);
            let step = self.at.step;
            if step.is_multiple_of(log_every) {
                self.check_health()?;
                let window = (step - 1) % log_every + 1 - std::mem::take(&mut self.skips.window);
                let losses = Self::drain(&mut self.window_loss, &self.task_names, "loss", window);
                let weights = Self::drain(&mut self.window_weight, &self.task_names, "weight", window);
                let (losses, weights) = (self.only_active(losses), self.only_active(weights));
                let lr = self.schedule.lr(step - 1);
                progress.log(step, epoch_before, &losses, lr);
                let mut values = losses;
                values.extend(weights);
                values.push(("lr".into(), lr));
                values.push(("images_per_second".into(), progress.images_per_second(step)));
                if let Some(mib) = self.device_memory_mib() {
                    values.push(("device_memory_mib".into(), mib));
                }
                if self.cfg.train.on_nonfinite == OnNonFinite::SkipStep {
                    values.push(("skipped_steps".into(), self.skips.total as f64));
                }
                if self.stages.configured {
                    values.push(("stage".into(), (self.stage + 1) as f64));
                }
                // Epochs are counted from 1 in metrics.jsonl, as on the console: a train row
                // belongs to the epoch it is in, a val row to the epoch it follows.
                log.append(&report::record(step, epoch_before + 1, "train", &values))?;
            }
            let epoch_done = self.at.epoch > epoch_before;
            if epoch_done {
                self.check_health()?;
                let counted = spe - std::mem::take(&mut self.skips.epoch);
                let means = Self::drain(&mut self.epoch_loss, &self.task_names, "loss", counted);
                let means: Vec<f64> = self.active.iter().map(|&i| means[i].1).collect();
                self.balancer.end_epoch(epoch_before, &means);
                self.report_affinity(&mut log, step, epoch_before + 1)?;
            }
            let stage_done = epoch_done && self.at.epoch == self.stages.list[self.stage].end_epoch;
            // Only the real end of training evaluates; a max_steps stop is a pause, like Ctrl-C,
            // so a run paused and resumed logs exactly what an uninterrupted one does.
            let last = step == self.cfg.train.epochs * spe;
            let paused = step == end && !last;
            let stop = self.ranks.stop_after(step, INTERRUPTED.load(Ordering::SeqCst));
            let mut is_best = false;
            if (epoch_done && self.at.epoch.is_multiple_of(self.cfg.train.eval_every)) || last || stage_done {
                self.check_health()?;
                let (metrics, better) = self.evaluate(&mut log, &progress, stage_done)?;
                final_metrics = metrics;
                is_best = better;
            }
            // A checkpoint at a stage's end already holds the next stage's balancer (the
            // state a run resumed there must load).
            if !last {
                self.follow_stages()?;
            }
            let end =
                StepEnd { step, epoch: self.at.epoch, epoch_done, last, pausing: paused || stop, improved: is_best };
            if self.checkpoints.due(&end) {
                let best = if is_best { Best::Improved } else { Best::Unchanged };
                if let Some(dir) = self.save_checkpoint(best)? {
                    tracing::info!(checkpoint = %dir.display(), "checkpoint written");
                }
            }
            if stop {
                interrupted = true;
                break;
            }
        }
        progress.finish();
        if self.at.step == self.cfg.train.epochs * spe {
            log.finish(self.at.step)?;
        }
        Ok(Summary {
            run_dir: self.run.root.clone(),
            steps: self.at.step,
            final_metrics,
            best: self.best.best().cloned(),
            interrupted,
            seconds: started.elapsed().as_secs_f64(),
        })
    }
}

/// Whether task `i`'s own data sets its batch size.
fn own_batch_size(cfg: &Config, i: usize) -> bool {
    cfg.tasks[i].data.as_ref().is_some_and(|d| d.contains_key("batch_size"))
}

/// Rank 0's checks of the run directory before anything is loaded: not a file, not in use by
/// another process, not holding a run unless resuming. Returns the lock when it exists.
fn check_run_dir(run: &RunDir, opts: &TrainOptions) -> anyhow::Result<Option<RunLock>> {
    if opts.run_dir.exists() && !opts.run_dir.is_dir() {
        user_bail!("{}: the run directory is a file", opts.run_dir.display());
    }
    let lock = if opts.run_dir.is_dir() { Some(run.lock()?) } else { None };
    // Every run creates checkpoints/ before it logs anything, so logs without it mean the
    // checkpoints were deleted; starting over would delete the logs too.
    let logged = run.metrics().exists() || run.config().exists();
    if logged && !run.checkpoints().is_dir() {
        user_bail!(
            "{}: missing, but the run directory holds a run's logs (metrics.jsonl, TensorBoard events) that starting \
             over would delete; put the checkpoints back, or move the run directory aside and start again",
            run.checkpoints().display()
        );
    }
    if opts.resume.is_none() && !run.list().is_empty() {
        user_bail!(
            "{}: run directory already holds a run; continue it with --resume or choose another --run-dir",
            opts.run_dir.display()
        );
    }
    if opts.resume.is_none() && run.metrics().exists() {
        tracing::warn!(
            "{}: holds a run that stopped before its first checkpoint; starting it over",
            opts.run_dir.display()
        );
    }
    Ok(lock)
}

/// Refuses a model whose variables, gradients and optimizer state would not fit in the
/// device's free memory, before allocating any of it.
fn check_model_fits(
    cfg: &Config,
    heads: &[crate::model::HeadSpec],
    channels: i64,
    image_size: i64,
    device: Device,
) -> anyhow::Result<()> {
    let elements = MultiTaskModel::variable_count(cfg, heads, channels, image_size)?;
    let copies = 2 + match cfg.optim.kind {
        crate::config::OptimKind::Adamw => 2,
        crate::config::OptimKind::Sgd => u64::from(cfg.optim.momentum > 0.0),
    };
    let needed = elements.saturating_mul(4 * copies);
    let Some((free, _)) = crate::setup::device_memory(device) else { return Ok(()) };
    if needed > free {
        let gb = |b: u64| format!("{:.1} GB", b as f64 / 1e9);
        user_bail!(
            "model: {elements} parameters need about {} with their gradients and optimizer state, more than the {} \
             free on {device:?}; make model.backbone.widths / depth or model.heads.* smaller",
            gb(needed),
            gb(free)
        );
    }
    Ok(())
}

impl Trainer {
    /// metrics.jsonl, kept through the step training resumes from, and TensorBoard's log.
    /// Rank 0 writes the run's logs; the other ranks' rows go nowhere.
    fn open_log(&self, resumed_at: u64) -> anyhow::Result<RunLog> {
        if !self.ranks.is_first() {
            return Ok(RunLog::new(MetricsLog::discard(), None));
        }
        let metrics = MetricsLog::open(&self.run.metrics(), Some(resumed_at))?;
        let report = &self.cfg.report;
        let board = if report.tensorboard {
            let preview = self
                .inputs
                .groups
                .iter()
                .filter_map(|g| tensorboard::Preview::new(&g.val, &self.tasks, &g.tasks, report.preview_images))
                .collect();
            Some(tensorboard::Board::open(&self.run.root, resumed_at, &self.cfg, preview)?)
        } else {
            None
        };
        Ok(RunLog::new(metrics, board))
    }

    /// With data groups that share BatchNorm statistics: logs once how far apart they look
    /// to it ([`norm_gap`]).
    fn report_norm_gap(&self) {
        if self.model.norm_layout().domains > 1 {
            return;
        }
        let Some(gap) = norm_gap::measure(&self.model, &self.inputs, self.at.step) else { return };
        let names: Vec<Vec<String>> =
            self.inputs.groups.iter().map(|g| g.tasks.iter().map(|&i| self.tasks[i].name.clone()).collect()).collect();
        match gap.alike() {
            true => tracing::info!("{}", gap.describe(&names)),
            false => tracing::warn!("{}", gap.describe(&names)),
        }
    }

    /// On CUDA: the device memory in use (the caching allocator's reserve included), MiB.
    fn device_memory_mib(&self) -> Option<f64> {
        let Device::Cuda(_) = self.device else { return None };
        let (free, total) = crate::setup::device_memory(self.device)?;
        Some(total.saturating_sub(free) as f64 / (1u64 << 20) as f64)
    }

    /// At an epoch's end: the epoch's affinity row in metrics.jsonl (and TensorBoard), and the
    /// whole run's averages in `affinity.json` (rank 0).
    fn report_affinity(&mut self, log: &mut RunLog, step: u64, epoch: u64) -> anyhow::Result<()> {
        let Some(meter) = self.affinity.as_mut() else { return Ok(()) };
        let Some(summary) = meter.end_epoch(&self.task_names) else { return Ok(()) };
        log.append(&report::record(step, epoch, affinity::SPLIT, &summary.row_values()))?;
        if self.ranks.is_first() {
            let run = meter.run.summary(&self.task_names, meter.every);
            let json = serde_json::to_string_pretty(&run)?;
            crate::checkpoint::write_atomically(&self.run.root.join(affinity::FILE), json.as_bytes())?;
            tracing::info!(
                "affinity: {} steps measured so far, {:.3} s per measurement",
                run.steps,
                run.seconds_per_step
            );
        }
        Ok(())
    }

    /// `affinity.png`: the run's mean affinity and gradient-cosine matrices. A failure is
    /// logged, never fatal.
    fn draw_affinity(&self) {
        let Some(meter) = &self.affinity else { return };
        if meter.run.steps == 0 {
            return;
        }
        let summary = meter.run.summary(&self.task_names, meter.every);
        let png = self.run.root.join("affinity.png");
        if let Err(e) = heatmap::affinity_heatmap(&self.cfg.name, &summary, &png) {
            tracing::warn!("could not draw {}: {e:#}", png.display());
        }
    }

    /// `curves.png` from the whole `metrics.jsonl` (see [`plot::task_chart`]), the best
    /// checkpoint marked. A failure is logged, never fatal: the run itself is done.
    fn draw_curves(&self) {
        let records = report::read_records(&self.run.metrics());
        let best = self.best.best().map(|b| (b.step, b.metric.as_str(), b.value));
        let chart = plot::task_chart(&self.cfg.name, &records, &self.task_names, best);
        let png = self.run.root.join("curves.png");
        if let Err(e) = chart.write_png(&png) {
            tracing::warn!("could not draw {}: {e:#}", png.display());
        }
    }
}

#[cfg(test)]
mod tests;
