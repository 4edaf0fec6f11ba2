//! Checks that the schema's types cannot express and that need nothing but the config itself
//! (ranges, names, cross-references between keys). Each failure names the key path.
use super::*;
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
    data(&cfg.data, "data")?;
    tasks(cfg)?;
    multi_input(cfg)?;
    model(cfg)?;
    optim(&cfg.optim)?;
    groups(&cfg.optim.groups, "optim.groups")?;
    schedule(&cfg.schedule)?;
    train(cfg)?;
    stages(cfg)?;
    checkpoint(cfg)?;
    if let Some(a) = &cfg.report.affinity {
        ensure(a.every >= 1, "report.affinity.every", "must be at least 1 (a step count)")?;
        ensure(cfg.tasks.len() >= 2, "report.affinity", "needs at least two tasks")?;
    }
    ensure(
        cfg.report.preview_images <= 64,
        "report.preview_images",
        format!("{} is out of range (0..=64)", cfg.report.preview_images),
    )
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
/// `http://` or `https://` followed by a host: what a download URL or mirror must look like.
pub fn is_http_url(s: &str) -> bool {
    ["http://", "https://"].iter().any(|p| s.len() > p.len() && s[..p.len()].eq_ignore_ascii_case(p))
}

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

/// Tasks with their own data: each task's merged data passes the same checks as the top-level
/// one; the shared backbone takes one input shape, so image size and channels cannot differ;
/// `train.epoch_by` names a task; representation-space balancing needs one shared forward.
fn multi_input(cfg: &Config) -> Check {
    let by = &cfg.train.epoch_by;
    ensure(
        by == EPOCH_BY_LARGEST || cfg.tasks.iter().any(|t| &t.name == by),
        "train.epoch_by",
        format!("'{by}' is neither 'largest' nor a task name"),
    )?;
    for i in (0..cfg.tasks.len()).filter(|&i| cfg.tasks[i].data.is_some()) {
        let at = format!("tasks[{i}].data");
        let d = cfg.task_data(i)?;
        data(&d, &at)?;
        ensure(
            d.image_size == cfg.data.image_size,
            &format!("{at}.image_size"),
            format!(
                "{} differs from data.image_size {}: the shared backbone takes one input size; set it in the \
                 top-level data only",
                d.image_size, cfg.data.image_size
            ),
        )?;
        ensure(
            d.grayscale == cfg.data.grayscale,
            &format!("{at}.grayscale"),
            format!(
                "{} differs from data.grayscale {}: the shared backbone takes one number of channels; set it in \
                 the top-level data only",
                d.grayscale, cfg.data.grayscale
            ),
        )?;
        ensure(
            cfg.balance.on != GradientOn::Representation,
            &at,
            "balance.on: representation needs one shared representation per step, but a task with its own data \
             runs the backbone on its own images (no shared feature tensor); use balance.on: params",
        )?;
    }
    Ok(())
}

/// Ranges every dataset shares; what one dataset allows is its own file's business
/// (`data::DATASETS`, src/data/mod.rs), checked when the config is resolved.
fn data(d: &DataConfig, at: &str) -> Check {
    let key = |k: &str| format!("{at}.{k}");
    ensure(is_identifier(&d.dataset), &key("dataset"), format!("'{}' must be a dataset name", d.dataset))?;
    count(d.batch_size as u64, &key("batch_size"), 1, 1 << 20)?;
    if let Some(n) = &d.normalization {
        ensure(
            n.mean.iter().all(|m| m.is_finite()) && n.std.iter().all(|s| s.is_finite() && *s > 0.0),
            &key("normalization"),
            format!("mean {:?} must be finite and std {:?} positive", n.mean, n.std),
        )?;
    }
    count(d.eval_batch_size as u64, &key("eval_batch_size"), 1, 1 << 20)?;
    count(d.train_size as u64, &key("train_size"), 0, 1 << 32)?;
    count(d.val_size as u64, &key("val_size"), 0, 1 << 32)?;
    ensure(
        // A table's rows are 1×1 "images" (the resolve step records 1).
        (8..=1024).contains(&d.image_size) || (d.features.is_some() && d.image_size == 1),
        &key("image_size"),
        format!("{} is out of range (8..=1024)", d.image_size),
    )?;
    ensure(
        d.max_memory_mb.is_finite() && d.max_memory_mb > 0.0,
        &key("max_memory_mb"),
        format!("{} must be a positive number of MB", d.max_memory_mb),
    )?;
    ensure(
        d.decode_threads <= 256,
        &key("decode_threads"),
        format!("{} is out of range (auto or 1..=256; 0 is auto)", d.decode_threads),
    )?;
    ensure(
        (1..=1024).contains(&d.prefetch_batches),
        &key("prefetch_batches"),
        format!("{} is out of range (1..=1024)", d.prefetch_batches),
    )?;
    if let Some(m) = &d.mirror {
        ensure(is_http_url(m), &key("mirror"), format!("'{m}' must be an http:// or https:// URL"))?;
    }
    let f = d.folder.val_fraction;
    ensure((0.0..1.0).contains(&f), &key("folder.val_fraction"), format!("{f} must be in [0, 1)"))?;
    let a = &d.augment;
    ensure(
        (0..d.image_size).contains(&a.crop_padding),
        &key("augment.crop_padding"),
        format!("{} must be in 0..{}", a.crop_padding, d.image_size),
    )?;
    ensure(
        (1.0..=4.0).contains(&a.max_scale),
        &key("augment.max_scale"),
        format!("{} must be in [1, 4] (1: no zoom)", a.max_scale),
    )
}

/// Widest layer a config may ask for (whether the whole model fits is checked when the
/// trainer builds it, against the device's memory).
pub const MAX_WIDTH: i64 = 8192;

fn model(cfg: &Config) -> Check {
    let a = &cfg.model.architecture;
    ensure(is_identifier(&a.kind), "model.architecture.kind", format!("'{}' must be an architecture name", a.kind))?;
    let b = &cfg.model.backbone;
    if b.kind.is_torchvision() {
        torchvision_backbone(b)?;
    } else {
        ensure(!b.widths.is_empty(), "model.backbone.widths", "needs at least one width")?;
        ensure(
            b.output_stride == crate::config::DEFAULT_OUTPUT_STRIDE,
            "model.backbone.output_stride",
            format!(
                "only the torchvision ResNets (resnet18 … resnet101) dilate; {} has no such setting",
                b.kind.name()
            ),
        )?;
        ensure(
            b.pretrained.is_none(),
            "model.backbone.pretrained",
            format!(
                "only the torchvision ResNets (resnet18 … resnet101) load published weights, not {}",
                b.kind.name()
            ),
        )?;
    }
    for (i, w) in b.widths.iter().enumerate() {
        ensure(
            (1..=MAX_WIDTH).contains(w),
            &format!("model.backbone.widths[{i}]"),
            format!("{w} is out of range (1..={MAX_WIDTH})"),
        )?;
    }
    ensure((1..=64).contains(&b.depth), "model.backbone.depth", format!("{} is out of range (1..=64)", b.depth))?;
    let own = cfg.model.domain_norm;
    ensure(
        b.norm == Norm::Batch || !matches!(own, DomainNorm::Statistics | DomainNorm::Affine),
        "model.domain_norm",
        format!(
            "{} keeps BatchNorm state per data group, but model.backbone.norm is none (no BatchNorm layers); \
             remove model.domain_norm or set model.backbone.norm: batch",
            own.name()
        ),
    )?;
    let names: BTreeSet<&str> = cfg.tasks.iter().map(|t| t.name.as_str()).collect();
    for (head, h) in &cfg.model.heads {
        let key = format!("model.heads.{head}");
        ensure(names.contains(head.as_str()), &key, format!("there is no task named '{head}'"))?;
        ensure(
            (0..=MAX_WIDTH).contains(&h.hidden),
            &format!("{key}.hidden"),
            format!("{} must be 0 (none) or a width up to {MAX_WIDTH}", h.hidden),
        )?;
        ensure((0.0..1.0).contains(&h.dropout), &format!("{key}.dropout"), format!("{} must be in [0, 1)", h.dropout))?;
        for (i, r) in h.rates.iter().enumerate() {
            ensure((1..=64).contains(r), &format!("{key}.rates[{i}]"), format!("{r} is out of range (1..=64)"))?;
        }
        ensure(
            h.rates.is_empty() || h.kind == crate::config::DenseDecoder::Aspp,
            &format!("{key}.rates"),
            "only an aspp head has rates (set kind: aspp)",
        )?;
        ensure(
            (0..=MAX_WIDTH).contains(&h.decoder_width),
            &format!("{key}.decoder_width"),
            format!("{} must be 0 (the backbone widths) or a width up to {MAX_WIDTH}", h.decoder_width),
        )?;
    }
    Ok(())
}

/// A torchvision ResNet's settings: at most one base width, no depth, a stride it can dilate to.
fn torchvision_backbone(b: &crate::config::BackboneConfig) -> Check {
    let kind = b.kind.name();
    ensure(
        b.widths.len() <= 1,
        "model.backbone.widths",
        format!("{kind} takes one base width (default 64, torchvision's), not a list"),
    )?;
    ensure(b.depth == 1, "model.backbone.depth", format!("{kind} has torchvision's block counts; remove depth"))?;
    ensure(
        matches!(b.output_stride, 8 | 16 | 32),
        "model.backbone.output_stride",
        format!("{} must be 32, 16 or 8", b.output_stride),
    )?;
    let pretrained_width = b.widths.first().is_none_or(|&w| w == 64);
    ensure(
        b.pretrained.is_none() || pretrained_width,
        "model.backbone.widths",
        format!("pretrained weights are for base width 64; remove widths to load them into {kind}"),
    )?;
    ensure(
        b.pretrained.as_deref().is_none_or(|p| !p.trim().is_empty()),
        "model.backbone.pretrained",
        "must be imagenet or the path of a .pth or .safetensors file",
    )
}

/// What a task's fields must satisfy whatever its kind; the kind's own rules and the match
/// with the dataset's targets are checked when the config is resolved.
fn tasks(cfg: &Config) -> Check {
    ensure(!cfg.tasks.is_empty(), "tasks", "needs at least one task")?;
    let mut seen = BTreeSet::new();
    for (i, t) in cfg.tasks.iter().enumerate() {
        let key = |k: &str| format!("tasks[{i}].{k}");
        ensure(is_identifier(&t.name), &key("name"), format!("'{}' must be letters, digits, '_' or '-'", t.name))?;
        ensure(seen.insert(t.name.as_str()), &key("name"), format!("duplicate task name '{}'", t.name))?;
        ensure(is_identifier(&t.kind), &key("kind"), format!("'{}' must be a task kind", t.kind))?;
        ensure(
            (0..=65536).contains(&t.classes),
            &key("classes"),
            format!("{} must be 0 (none, or infer from the data) or a number of classes", t.classes),
        )?;
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

/// `optim.groups` (or a stage's `groups`): patterns that can match, settings in range. Whether
/// each pattern matches a variable of the model is checked when the model is built.
fn groups(groups: &[ParamGroup], at: &str) -> Check {
    for (i, g) in groups.iter().enumerate() {
        let key = |k: &str| format!("{at}[{i}].{k}");
        ensure(!g.pattern.is_empty(), &key("match"), "must be a variable name pattern (e.g. 'backbone.*')")?;
        ensure(
            g.lr_scale.is_finite() && g.lr_scale >= 0.0,
            &key("lr_scale"),
            format!("{} must be a finite number ≥ 0", g.lr_scale),
        )?;
        if let Some(wd) = g.weight_decay {
            ensure(wd.is_finite() && wd >= 0.0, &key("weight_decay"), format!("{wd} must be a finite number ≥ 0"))?;
        }
        ensure(
            !g.freeze || (g.lr_scale == 1.0 && g.weight_decay.is_none()),
            &key("freeze"),
            "a frozen group does not train: drop its lr_scale and weight_decay",
        )?;
    }
    Ok(())
}

/// `train.stages`: each names known tasks (or all), has epochs, and together they make up
/// `train.epochs` (which [`Config::parse`] set to their sum when the config does not write it).
fn stages(cfg: &Config) -> Check {
    let stages = &cfg.train.stages;
    for (i, s) in stages.iter().enumerate() {
        let key = |k: &str| format!("train.stages[{i}].{k}");
        count(s.epochs, &key("epochs"), 1, 1_000_000)?;
        if let StageTasks::Some(names) = &s.tasks {
            ensure(!names.is_empty(), &key("tasks"), "names no task; list some, or write all")?;
            let mut seen = BTreeSet::new();
            for n in names {
                ensure(cfg.tasks.iter().any(|t| &t.name == n), &key("tasks"), format!("there is no task named '{n}'"))?;
                ensure(seen.insert(n), &key("tasks"), format!("'{n}' is listed twice"))?;
            }
        }
        if let Some(g) = &s.groups {
            groups(g, &key("groups"))?;
        }
    }
    let sum: u64 = stages.iter().map(|s| s.epochs).sum();
    ensure(
        stages.is_empty() || sum == cfg.train.epochs,
        "train.stages",
        format!(
            "the stages' epochs add up to {sum}, but train.epochs is {}; make them agree (or leave train.epochs out: \
             the stages then set it)",
            cfg.train.epochs
        ),
    )
}

fn schedule(s: &ScheduleConfig) -> Check {
    ensure(
        (0.0..=1.0).contains(&s.min_lr_ratio),
        "schedule.min_lr_ratio",
        format!("{} must be in [0, 1]", s.min_lr_ratio),
    )?;
    ensure(s.gamma > 0.0 && s.gamma <= 1.0, "schedule.gamma", format!("{} must be in (0, 1]", s.gamma))?;
    count(s.step_size, "schedule.step_size", 1, 1_000_000)?;
    count(s.warmup_steps, "schedule.warmup_steps", 0, MAX_COUNT)?;
    ensure(s.pct_start > 0.0 && s.pct_start < 1.0, "schedule.pct_start", format!("{} must be in (0, 1)", s.pct_start))
}

/// Largest count of steps (or epochs) a config may name: far beyond any run, small enough that
/// products of counts never overflow.
pub const MAX_COUNT: u64 = 1_000_000_000_000;

/// A count in `min..=max`.
fn count(value: u64, key: &str, min: u64, max: u64) -> Check {
    ensure((min..=max).contains(&value), key, format!("{value} is out of range ({min}..={max})"))
}

fn train(cfg: &Config) -> Check {
    let t = &cfg.train;
    count(t.epochs, "train.epochs", 1, 1_000_000)?;
    count(t.eval_every, "train.eval_every", 1, 1_000_000)?;
    count(t.log_every, "train.log_every", 1, MAX_COUNT)?;
    count(t.max_steps, "train.max_steps", 0, MAX_COUNT)?;
    count(t.max_consecutive_skips, "train.max_consecutive_skips", 1, MAX_COUNT)?;
    ensure(
        t.stop_grace_seconds.is_finite() && (0.0..=86400.0).contains(&t.stop_grace_seconds),
        "train.stop_grace_seconds",
        format!("{} must be in [0, 86400] (0: no limit)", t.stop_grace_seconds),
    )?;
    ensure(
        t.dist_timeout_seconds.is_finite() && (1.0..=86400.0).contains(&t.dist_timeout_seconds),
        "train.dist_timeout_seconds",
        format!("{} must be in [1, 86400]", t.dist_timeout_seconds),
    )
}

/// The monitored metric's existence and direction depend on the task kinds: checked when
/// the config is resolved (src/setup.rs).
fn checkpoint(cfg: &Config) -> Check {
    let c = &cfg.checkpoint;
    count(c.every, "checkpoint.every", 1, 1_000_000)?;
    count(c.every_steps, "checkpoint.every_steps", 0, MAX_COUNT)?;
    count(c.keep_last as u64, "checkpoint.keep_last", 1, 1_000_000)?;
    match c.monitor.as_str() {
        "" | "loss" => Ok(()),
        "delta_m" => ensure(cfg.train.baselines.is_some(), "checkpoint.monitor", "delta_m needs train.baselines"),
        m => ensure(
            m.split_once('.').is_some_and(|(t, k)| !t.is_empty() && !k.is_empty()),
            "checkpoint.monitor",
            format!("'{m}' must be <task>.<metric>, loss or delta_m"),
        ),
    }
}
