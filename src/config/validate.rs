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
    tasks(cfg)?;
    model(cfg)?;
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
    ensure(
        parse_device(&cfg.device).is_some(),
        "device",
        format!("'{}' must be auto, cpu, cuda or cuda:N", cfg.device),
    )?;
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
    ensure(
        (8..=1024).contains(&d.image_size),
        "data.image_size",
        format!("{} is out of range (8..=1024)", d.image_size),
    )?;
    match d.dataset {
        DatasetKind::Cifar10Seg => {
            ensure(d.image_size == 32, "data.image_size", "cifar10_seg images are 32×32; set 32")?
        }
        DatasetKind::Shapes => {
            ensure(d.train_size <= 1_000_000, "data.train_size", "at most 1000000 generated samples")?;
            ensure(d.val_size <= 1_000_000, "data.val_size", "at most 1000000 generated samples")?;
        }
        DatasetKind::Multimnist => {
            ensure(d.image_size == 28, "data.image_size", "multimnist images are 28×28; set 28")?;
            ensure(d.grayscale, "data.grayscale", "multimnist digits have one grey channel; set true")?;
        }
        DatasetKind::Folder => ensure(
            d.root.is_some(),
            "data.root",
            "the folder dataset needs the directory holding images/ (and masks/, labels.csv)",
        )?,
        DatasetKind::Pet | DatasetKind::Nyuv2 => {}
    }
    ensure(
        d.max_memory_mb.is_finite() && d.max_memory_mb > 0.0,
        "data.max_memory_mb",
        format!("{} must be a positive number of MB", d.max_memory_mb),
    )?;
    ensure(
        d.decode_threads <= 256,
        "data.decode_threads",
        format!("{} is out of range (0..=256; 0: one per core)", d.decode_threads),
    )?;
    ensure(
        (1..=1024).contains(&d.prefetch_batches),
        "data.prefetch_batches",
        format!("{} is out of range (1..=1024)", d.prefetch_batches),
    )?;
    if d.on_bad_file.is_some() {
        ensure(
            matches!(d.dataset, DatasetKind::Pet | DatasetKind::Nyuv2 | DatasetKind::Folder),
            "data.on_bad_file",
            format!("{:?} is read whole, not file by file: there is nothing to skip; remove the key", d.dataset),
        )?;
    }
    let f = d.folder.val_fraction;
    ensure((0.0..1.0).contains(&f), "data.folder.val_fraction", format!("{f} must be in [0, 1)"))?;
    let a = &d.augment;
    ensure(
        (0..d.image_size).contains(&a.crop_padding),
        "data.augment.crop_padding",
        format!("{} must be in 0..{}", a.crop_padding, d.image_size),
    )?;
    ensure(
        (1.0..=4.0).contains(&a.max_scale),
        "data.augment.max_scale",
        format!("{} must be in [1, 4] (1: no zoom)", a.max_scale),
    )
}

fn model(cfg: &Config) -> Check {
    let b = &cfg.model.backbone;
    ensure(!b.widths.is_empty(), "model.backbone.widths", "needs at least one width")?;
    for (i, w) in b.widths.iter().enumerate() {
        ensure(
            (1..=8192).contains(w),
            &format!("model.backbone.widths[{i}]"),
            format!("{w} is out of range (1..=8192)"),
        )?;
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

/// The shape of target a task kind learns.
fn wanted_shape(kind: TaskKind) -> TargetShape {
    match kind {
        TaskKind::Classification => TargetShape::PerImage,
        TaskKind::Segmentation => TargetShape::PerPixel,
        TaskKind::Regression => TargetShape::PerPixelDepth,
        TaskKind::Normals => TargetShape::PerPixelNormal,
    }
}

fn tasks(cfg: &Config) -> Check {
    ensure(!cfg.tasks.is_empty(), "tasks", "needs at least one task")?;
    let available = targets_of(&cfg.data);
    let mut seen = BTreeSet::new();
    for (i, t) in cfg.tasks.iter().enumerate() {
        let key = |k: &str| format!("tasks[{i}].{k}");
        ensure(is_identifier(&t.name), &key("name"), format!("'{}' must be letters, digits, '_' or '-'", t.name))?;
        ensure(seen.insert(t.name.as_str()), &key("name"), format!("duplicate task name '{}'", t.name))?;
        let classified = matches!(t.kind, TaskKind::Classification | TaskKind::Segmentation);
        match &available {
            Some(available) => {
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
                ensure(
                    target.shape == wanted_shape(t.kind),
                    &key("target"),
                    format!("'{}' is a {:?} target, which a {:?} head cannot learn", t.target, target.shape, t.kind),
                )?;
                if classified {
                    ensure(
                        t.classes == target.classes,
                        &key("classes"),
                        format!(
                            "{} does not match target '{}', which has {} classes",
                            t.classes, t.target, target.classes
                        ),
                    )?;
                }
            }
            None => {
                // folder: `mask` is the per-pixel target, labels.csv columns the per-image ones
                // (checked against the files when they are read).
                let shape =
                    if t.target == crate::data::folder::MASK { TargetShape::PerPixel } else { TargetShape::PerImage };
                ensure(
                    classified,
                    &key("kind"),
                    format!("{:?}: the folder dataset has class labels only (labels.csv columns and mask)", t.kind),
                )?;
                ensure(
                    shape == wanted_shape(t.kind),
                    &key("target"),
                    match t.kind {
                        TaskKind::Segmentation => {
                            format!("'{}': a segmentation task learns the folder's 'mask'", t.target)
                        }
                        _ => "'mask' is per-pixel; a classification task learns a labels.csv column".to_string(),
                    },
                )?;
                ensure(
                    (0..=65536).contains(&t.classes),
                    &key("classes"),
                    format!("{} must be 0 (infer from the data) or a number of classes", t.classes),
                )?;
            }
        }
        if !classified {
            ensure(
                t.classes == 0,
                &key("classes"),
                format!("{}: a {:?} task has no classes; remove the key", t.classes, t.kind),
            )?;
            ensure(
                t.label_smoothing == 0.0,
                &key("label_smoothing"),
                format!("only applies to classes, not {:?}", t.kind),
            )?;
        }
        if t.kind != TaskKind::Classification {
            ensure(
                cfg.model.backbone.kind != BackboneKind::Mlp,
                &key("kind"),
                format!("{:?} needs a conv or resnet backbone (model.backbone.kind) for its per-pixel output", t.kind)
                    .to_lowercase(),
            )?;
        }
        if t.kind == TaskKind::Segmentation {
            ensure(
                t.ignore_index < 0 || t.ignore_index >= t.classes,
                &key("ignore_index"),
                format!("{} collides with a class label (0..{})", t.ignore_index, t.classes),
            )?;
        }
        ensure(
            t.weight.is_finite() && t.weight >= 0.0,
            &key("weight"),
            format!("{} must be a finite number ≥ 0", t.weight),
        )?;
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
    ensure(
        (0.0..=1.0).contains(&s.min_lr_ratio),
        "schedule.min_lr_ratio",
        format!("{} must be in [0, 1]", s.min_lr_ratio),
    )?;
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
    if c.monitor.is_empty() {
        return direction(cfg, "");
    }
    if c.monitor == "loss" {
        return direction(cfg, "loss");
    }
    if c.monitor == "delta_m" {
        ensure(cfg.train.baselines.is_some(), "checkpoint.monitor", "delta_m needs train.baselines")?;
        return direction(cfg, "delta_m");
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
    )?;
    direction(cfg, metric)
}

/// A monitored error metric (lower is better) with `mode: max` would keep the worst
/// checkpoint as BEST. `metric` "" is the default: the first task's main metric.
fn direction(cfg: &Config, metric: &str) -> Check {
    let c = &cfg.checkpoint;
    let (shown, metric) = match metric {
        "" => {
            let t = crate::tasks::Task::from_config(&cfg.tasks[0]);
            let main = t.metric_names()[0];
            (format!("{}.{main} (the first task's main metric, monitored by default)", t.name), main)
        }
        m => (c.monitor.clone(), m),
    };
    ensure(
        crate::tasks::Task::higher_is_better(metric) || c.mode == MonitorMode::Min,
        "checkpoint.mode",
        format!("max, but {shown} is better when lower; set checkpoint.mode: min"),
    )
}
