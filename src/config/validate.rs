//! Semantic checks that the schema's types cannot express. Each failure names the key path.
use super::*;
use crate::data::{targets_of, TargetShape};
use std::collections::BTreeSet;

type Check = Result<(), String>;

fn ensure(ok: bool, key: &str, msg: impl std::fmt::Display) -> Check {
    if ok {
        Ok(())
    } else {
        Err(format!("{key}: {msg}"))
    }
}

pub fn validate(cfg: &Config) -> Check {
    top_level(cfg)?;
    data(cfg)?;
    model(cfg)?;
    tasks(cfg)?;
    optim(&cfg.optim)?;
    schedule(&cfg.schedule)?;
    train(cfg)?;
    checkpoint(cfg)
}

/// Task names become variable-name components and metric keys: keep them simple.
pub fn is_identifier(s: &str) -> bool {
    !s.is_empty() && s.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
}

fn top_level(cfg: &Config) -> Check {
    ensure(is_identifier(&cfg.name), "name", format!("'{}' must be letters, digits, '_' or '-'", cfg.name))?;
    ensure(parse_device(&cfg.device).is_some(), "device", format!("'{}' must be auto, cpu, cuda or cuda:N", cfg.device))?;
    ensure(cfg.threads <= 1024, "threads", format!("{} is out of range (0..=1024)", cfg.threads))
}

/// The device names the config accepts: `auto`, `cpu`, `cuda`, `cuda:N`.
pub fn parse_device(s: &str) -> Option<DeviceChoice> {
    match s {
        "auto" => Some(DeviceChoice::Auto),
        "cpu" => Some(DeviceChoice::Cpu),
        "cuda" => Some(DeviceChoice::Cuda(0)),
        _ => s.strip_prefix("cuda:")?.parse().ok().map(DeviceChoice::Cuda),
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeviceChoice {
    Auto,
    Cpu,
    Cuda(usize),
}

fn data(cfg: &Config) -> Check {
    let d = &cfg.data;
    ensure(d.batch_size >= 1, "data.batch_size", "must be at least 1")?;
    ensure(d.eval_batch_size >= 1, "data.eval_batch_size", "must be at least 1")?;
    ensure((8..=1024).contains(&d.image_size), "data.image_size", format!("{} is out of range (8..=1024)", d.image_size))?;
    if d.dataset == DatasetKind::Cifar10Seg {
        ensure(d.image_size == 32, "data.image_size", "cifar10_seg images are 32×32; set 32")?;
    }
    if d.dataset == DatasetKind::Shapes {
        ensure(d.train_size <= 1_000_000, "data.train_size", "at most 1000000 generated samples")?;
        ensure(d.val_size <= 1_000_000, "data.val_size", "at most 1000000 generated samples")?;
    }
    let a = &d.augment;
    ensure(
        (0..d.image_size).contains(&a.crop_padding),
        "data.augment.crop_padding",
        format!("{} must be in 0..{}", a.crop_padding, d.image_size),
    )
}

fn model(cfg: &Config) -> Check {
    let b = &cfg.model.backbone;
    ensure(!b.widths.is_empty(), "model.backbone.widths", "needs at least one width")?;
    for (i, w) in b.widths.iter().enumerate() {
        ensure((1..=8192).contains(w), &format!("model.backbone.widths[{i}]"), format!("{w} is out of range (1..=8192)"))?;
    }
    ensure((1..=64).contains(&b.depth), "model.backbone.depth", format!("{} is out of range (1..=64)", b.depth))?;
    match b.kind {
        BackboneKind::Mlp => {
            ensure(b.norm == Norm::None, "model.backbone.norm", "the mlp backbone has no norm layers; set none")?;
        }
        BackboneKind::Resnet => {
            ensure(b.norm == Norm::Batch, "model.backbone.norm", "resnet blocks need batch norm")?;
            let stages = crate::model::backbone::resnet_widths(&b.widths).len() as u32;
            divisible(cfg.data.image_size, stages)?;
        }
        BackboneKind::Conv => divisible(cfg.data.image_size, b.widths.len() as u32)?,
    }
    let names: BTreeSet<&str> = cfg.tasks.iter().map(|t| t.name.as_str()).collect();
    for (head, h) in &cfg.model.heads {
        let key = format!("model.heads.{head}");
        ensure(names.contains(head.as_str()), &key, format!("there is no task named '{head}'"))?;
        ensure(h.hidden >= 0, &format!("{key}.hidden"), "must be 0 (none) or a positive width")?;
        ensure((0.0..1.0).contains(&h.dropout), &format!("{key}.dropout"), format!("{} must be in [0, 1)", h.dropout))?;
        ensure(h.decoder_width >= 0, &format!("{key}.decoder_width"), "must be 0 (backbone widths) or positive")?;
    }
    Ok(())
}

/// Each stage after the first halves the resolution; the decoder needs exact halvings.
fn divisible(image_size: i64, stages: u32) -> Check {
    let factor = 1i64 << (stages.saturating_sub(1));
    ensure(
        image_size % factor == 0,
        "data.image_size",
        format!("{image_size} must be divisible by {factor} for a backbone with {stages} stages"),
    )
}

fn tasks(cfg: &Config) -> Check {
    ensure(!cfg.tasks.is_empty(), "tasks", "needs at least one task")?;
    let available = targets_of(cfg.data.dataset);
    let mut seen = BTreeSet::new();
    for (i, t) in cfg.tasks.iter().enumerate() {
        let key = |k: &str| format!("tasks[{i}].{k}");
        ensure(is_identifier(&t.name), &key("name"), format!("'{}' must be letters, digits, '_' or '-'", t.name))?;
        ensure(seen.insert(t.name.as_str()), &key("name"), format!("duplicate task name '{}'", t.name))?;
        let Some(target) = available.iter().find(|a| a.name == t.target) else {
            let names: Vec<&str> = available.iter().map(|a| a.name).collect();
            return Err(format!(
                "{}: dataset {:?} has no target '{}' (it has: {})",
                key("target"),
                cfg.data.dataset,
                t.target,
                names.join(", ")
            ));
        };
        let wanted = match t.kind {
            TaskKind::Classification => TargetShape::PerImage,
            TaskKind::Segmentation => TargetShape::PerPixel,
        };
        ensure(
            target.shape == wanted,
            &key("target"),
            format!("'{}' is a {:?} target, which a {:?} head cannot learn", t.target, target.shape, t.kind),
        )?;
        ensure(
            t.classes == target.classes,
            &key("classes"),
            format!("{} does not match target '{}', which has {} classes", t.classes, t.target, target.classes),
        )?;
        if t.kind == TaskKind::Segmentation {
            ensure(
                cfg.model.backbone.kind != BackboneKind::Mlp,
                &key("kind"),
                "segmentation needs a conv or resnet backbone (model.backbone.kind)",
            )?;
            ensure(
                t.ignore_index < 0 || t.ignore_index >= t.classes,
                &key("ignore_index"),
                format!("{} collides with a class label (0..{})", t.ignore_index, t.classes),
            )?;
        }
        ensure(t.weight.is_finite() && t.weight >= 0.0, &key("weight"), format!("{} must be a finite number ≥ 0", t.weight))?;
        ensure(
            (0.0..1.0).contains(&t.label_smoothing),
            &key("label_smoothing"),
            format!("{} must be in [0, 1)", t.label_smoothing),
        )?;
    }
    Ok(())
}

fn optim(o: &OptimConfig) -> Check {
    ensure(o.lr > 0.0 && o.lr.is_finite(), "optim.lr", format!("{} must be a positive number", o.lr))?;
    ensure(o.weight_decay >= 0.0 && o.weight_decay.is_finite(), "optim.weight_decay", "must be ≥ 0")?;
    ensure((0.0..1.0).contains(&o.betas.0), "optim.betas[0]", format!("{} must be in [0, 1)", o.betas.0))?;
    ensure((0.0..1.0).contains(&o.betas.1), "optim.betas[1]", format!("{} must be in [0, 1)", o.betas.1))?;
    ensure(o.eps > 0.0, "optim.eps", "must be positive")?;
    ensure((0.0..1.0).contains(&o.momentum), "optim.momentum", format!("{} must be in [0, 1)", o.momentum))?;
    ensure(!o.nesterov || o.momentum > 0.0, "optim.nesterov", "needs optim.momentum > 0")?;
    ensure(o.grad_clip >= 0.0 && o.grad_clip.is_finite(), "optim.grad_clip", "must be ≥ 0 (0 disables)")
}

fn schedule(s: &ScheduleConfig) -> Check {
    ensure((0.0..=1.0).contains(&s.min_lr_ratio), "schedule.min_lr_ratio", format!("{} must be in [0, 1]", s.min_lr_ratio))?;
    ensure(s.gamma > 0.0 && s.gamma <= 1.0, "schedule.gamma", format!("{} must be in (0, 1]", s.gamma))?;
    ensure(s.step_size >= 1, "schedule.step_size", "must be at least 1")?;
    ensure(s.pct_start > 0.0 && s.pct_start < 1.0, "schedule.pct_start", format!("{} must be in (0, 1)", s.pct_start))
}

fn train(cfg: &Config) -> Check {
    let t = &cfg.train;
    ensure(t.epochs >= 1, "train.epochs", "must be at least 1")?;
    ensure(t.eval_every >= 1, "train.eval_every", "must be at least 1")?;
    ensure(t.log_every >= 1, "train.log_every", "must be at least 1")
}

fn checkpoint(cfg: &Config) -> Check {
    let c = &cfg.checkpoint;
    ensure(c.every >= 1, "checkpoint.every", "must be at least 1")?;
    ensure(c.keep_last >= 1, "checkpoint.keep_last", "must be at least 1")?;
    if c.monitor.is_empty() || c.monitor == "loss" {
        return Ok(());
    }
    if c.monitor == "delta_m" {
        return ensure(cfg.train.baselines.is_some(), "checkpoint.monitor", "delta_m needs train.baselines");
    }
    let Some((task, metric)) = c.monitor.split_once('.') else {
        return Err(format!("checkpoint.monitor: '{}' must be <task>.<metric> or loss", c.monitor));
    };
    let Some(t) = cfg.tasks.iter().find(|t| t.name == task) else {
        return Err(format!("checkpoint.monitor: there is no task named '{task}'"));
    };
    let names = crate::tasks::Task::from_config(t).metric_names();
    ensure(
        names.contains(&metric),
        "checkpoint.monitor",
        format!("task '{task}' has no metric '{metric}' (it has: {})", names.join(", ")),
    )
}
