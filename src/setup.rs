//! The resolve step: a parsed [`Config`] checked against what it names (the dataset and its
//! targets, the task kinds and their metrics, the backbone), with paths made absolute and
//! derived values filled in. Its result, [`Resolved`], is what the trainer, `predict` / `eval`,
//! `baselines`, `compare` and `bench` take: nothing after this step re-checks the config.
//!
//! Every error is one line, `<origin>: <key>: <what is wrong>`, as the config's own are.
use crate::config::{Config, DataConfig, GradientOn, MonitorMode, DEFAULT_CONFIG, DEFAULT_CONFIG_NAME};
use crate::data::loader::TargetUse;
use crate::data::{dataset_named, dataset_names, Dataset, TargetShape, Wanted};
use crate::model::{arch, backbone, HeadKind, HeadSpec};
use crate::tasks::{kind_names, Task};
use crate::{user_bail, user_error};
use std::path::{Path, PathBuf};
use tch::Device;

pub mod catalog;

/// Where runs go unless told otherwise: `runs/<name>`.
pub const RUNS_DIR: &str = "runs";

/// A config that has been checked against everything it names.
pub struct Resolved {
    /// The config with `data.root` absolute and `tasks[].classes` filled in: what a run's
    /// `config.yaml` records, so `predict`, `eval` and `--resume` need no dataset to rebuild it.
    pub cfg: Config,
    /// The dataset of the first data group (the top-level data's, unless every task has its own).
    pub dataset: &'static dyn Dataset,
    /// The data the tasks read: one group without per-task data (single-input MTL), else one
    /// per distinct data (multi-input MTL), in order of their first task.
    pub groups: Vec<DataGroup>,
    /// One per `tasks[]` entry, in order.
    pub tasks: Vec<Task>,
    /// What the BEST checkpoint follows.
    pub monitor: Monitor,
}

/// Data that some tasks read together: each step draws one batch of it for all of them.
#[derive(Clone)]
pub struct DataGroup {
    /// The merged `data` settings (root absolute).
    pub data: DataConfig,
    pub dataset: &'static dyn Dataset,
    /// Indices into `tasks`, ascending.
    pub tasks: Vec<usize>,
    /// Seed of its generation, order and augmentation: the run's seed for the top-level data,
    /// one derived from (seed, first task's name) for a task's own data.
    pub seed: u64,
}

/// The value `BEST` follows: `<task>.<metric>`, `loss` (sum of val losses) or `delta_m`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Monitor {
    pub key: String,
    pub higher_is_better: bool,
}

impl Resolved {
    /// The part of resolving that needs the device, which the config alone does not give: what
    /// the trainer calls before it loads anything.
    pub fn check_placement(&self, device: Device) -> anyhow::Result<()> {
        if self.cfg.speed.fused_optimizer == crate::config::Toggle::On && device != Device::Cpu {
            user_bail!("speed.fused_optimizer: true runs on the CPU only; use auto on {device:?}");
        }
        if self.cfg.speed.flush_denormal && (device != Device::Cpu || !self.cfg.speed.fused_optimizer.is_on()) {
            user_bail!("speed.flush_denormal: true applies to the fused CPU update; it needs device cpu and speed.fused_optimizer not false");
        }
        Ok(())
    }

    pub fn task_names(&self) -> Vec<String> {
        self.tasks.iter().map(|t| t.name.clone()).collect()
    }

    /// The head each task needs, in task order.
    pub fn heads(&self) -> Vec<HeadSpec> {
        let domain =
            |i: usize| self.groups.iter().position(|g| g.tasks.contains(&i)).expect("every task is in a group");
        self.tasks
            .iter()
            .enumerate()
            .map(|(i, t)| HeadSpec { task: t.name.clone(), kind: t.head(), domain: domain(i) })
            .collect()
    }

    /// What a group's data must provide, one entry per task of the group.
    pub fn wanted(&self, group: &DataGroup) -> Vec<Wanted> {
        group.tasks.iter().map(|&i| wanted(&self.tasks[i])).collect()
    }

    /// What the group's loader hands each of its tasks.
    pub fn target_uses(&self, group: &DataGroup) -> Vec<TargetUse> {
        group
            .tasks
            .iter()
            .map(|&i| TargetUse { target: self.tasks[i].target.clone(), ignore_index: self.tasks[i].ignore_index })
            .collect()
    }

    /// Whether tasks read data of their own (more than one data group).
    pub fn multi_input(&self) -> bool {
        self.groups.len() > 1
    }

    /// Image channels the model sees (for a table, the entries of a row's feature vector).
    pub fn in_channels(&self) -> i64 {
        if let Some(fitted) = self.cfg.data.features.as_ref().and_then(|f| f.fitted.as_ref()) {
            return fitted.raw_width() as i64;
        }
        if self.cfg.data.grayscale {
            1
        } else {
            3
        }
    }

    /// `runs/<name>`, where a run goes when no directory is given.
    pub fn default_run_dir(&self) -> PathBuf {
        PathBuf::from(RUNS_DIR).join(&self.cfg.name)
    }
}

/// Reads a config file (the built-in default without one), applies `--set` overrides and
/// resolves it. Relative paths in a file are relative to the file's directory; in the
/// built-in default, and in a `--set` on the command line, to the working directory (what a
/// shell user means by a path they type).
pub fn load(path: Option<&Path>, overrides: &[String]) -> anyhow::Result<Resolved> {
    let overrides: Vec<String> = overrides.iter().map(|o| anchor_command_line_path(o)).collect();
    let overrides = overrides.as_slice();
    match path {
        Some(path) => {
            let cfg = Config::load(path, overrides)?;
            let dir = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
            resolve(cfg, &path.display().to_string(), dir)
        }
        None => {
            resolve(Config::parse(DEFAULT_CONFIG, DEFAULT_CONFIG_NAME, overrides)?, DEFAULT_CONFIG_NAME, Path::new("."))
        }
    }
}

/// A `--set` of a data root (`data.root=…`, `tasks.N.data.root=…`) to a relative path, made
/// absolute against the working directory, so that resolving against the config file's
/// directory leaves it as typed. Anything else is returned as it is.
fn anchor_command_line_path(assignment: &str) -> String {
    let Some((key, value)) = assignment.split_once('=') else { return assignment.to_string() };
    let parts: Vec<&str> = key.trim().split('.').collect();
    let is_root = match parts.as_slice() {
        ["data", "root"] => true,
        ["tasks", i, "data", "root"] => i.parse::<usize>().is_ok(),
        _ => false,
    };
    let Ok(serde_yaml::Value::String(path)) = serde_yaml::from_str::<serde_yaml::Value>(value) else {
        return assignment.to_string();
    };
    if !is_root || path.is_empty() || Path::new(&path).is_absolute() {
        return assignment.to_string();
    }
    let Ok(absolute) = std::path::absolute(&path) else { return assignment.to_string() };
    let quoted = serde_yaml::to_string(&absolute.display().to_string()).unwrap_or_default();
    format!("{key}={}", quoted.trim_end())
}

/// `model.backbone.pretrained`: a path made absolute (relative to the config file), RGB
/// images, and the normalization the weights were trained with (ImageNet's, unless
/// `data.normalization` says otherwise), which config.yaml then records.
fn pretrained_weights(cfg: &mut Config, dir: &Path) -> Result<(), String> {
    let Some(given) = cfg.model.backbone.pretrained.clone() else { return Ok(()) };
    if cfg.data.grayscale {
        return Err("model.backbone.pretrained: the weights take RGB images; remove data.grayscale".into());
    }
    if given != IMAGENET_WEIGHTS {
        let path = dir.join(&given);
        let path = std::path::absolute(&path).unwrap_or(path);
        cfg.model.backbone.pretrained = Some(path.display().to_string());
    }
    if cfg.data.normalization.is_none() {
        cfg.data.normalization = Some(crate::config::Normalization { mean: IMAGENET_MEAN, std: IMAGENET_STD });
    }
    Ok(())
}

/// `pretrained: imagenet` (train/pretrained.rs downloads it).
pub const IMAGENET_WEIGHTS: &str = "imagenet";
/// The normalization of torchvision's ImageNet weights (its transforms' mean and std).
pub const IMAGENET_MEAN: [f64; 3] = [0.485, 0.456, 0.406];
pub const IMAGENET_STD: [f64; 3] = [0.229, 0.224, 0.225];

/// Resolves a parsed config; `origin` names it in errors, `dir` anchors relative paths.
pub fn resolve(mut cfg: Config, origin: &str, dir: &Path) -> anyhow::Result<Resolved> {
    let at = |e: String| user_error!("{origin}: {e}");
    let dataset = dataset_named(&cfg.data.dataset).ok_or_else(|| {
        at(format!(
            "data.dataset: unknown dataset '{}' (expected one of: {})",
            cfg.data.dataset,
            dataset_names().join(", ")
        ))
    })?;
    cfg.data.root = root(&cfg.data, dataset, dir);
    pretrained_weights(&mut cfg, dir).map_err(at)?;
    anchor_table_files(&mut cfg.data, dir);
    let b = &cfg.model.backbone;
    backbone::check(b).map_err(at)?;
    backbone::check_input_size(b, cfg.data.image_size, cfg.data.image_size).map_err(at)?;
    check_architecture(&mut cfg).map_err(|e| user_error!("{origin}: {e}"))?;
    let mut tasks = Vec::with_capacity(cfg.tasks.len());
    for (i, t) in cfg.tasks.iter().enumerate() {
        let task = Task::new(t).ok_or_else(|| {
            at(format!("tasks[{i}].kind: unknown kind '{}' (expected one of: {})", t.kind, kind_names().join(", ")))
        })?;
        check_task(&cfg, i, &task).map_err(at)?;
        task.kind.check(t).map_err(|e| at(format!("tasks[{i}].{e}")))?;
        tasks.push(task);
    }
    if dataset.decodes_image_files() {
        // config.yaml records the decoder `auto` stood for: the run's pixels, decoded again.
        crate::data::jpeg::ImageDecode::of(&cfg.data).map_err(at)?.record(&mut cfg.data);
    }
    for i in 0..tasks.len() {
        tasks[i].given = given(&cfg, i, &tasks).map_err(at)?;
    }
    if !cfg.multi_input() {
        check_data(&cfg.data, dataset, "data").map_err(at)?;
        dataset.prepare(&mut cfg.data).map_err(|e| match crate::error::is_user_error(&e) {
            true => user_error!("{origin}: {e}"),
            false => e,
        })?;
    }
    let groups = data_groups(&mut cfg, dir).map_err(at)?;
    for g in &groups {
        let mut sub: Vec<Task> = g.tasks.iter().map(|&i| tasks[i].clone()).collect();
        resolve_targets(&g.data, g.dataset, &mut sub).map_err(|e| match crate::error::is_user_error(&e) {
            true => user_error!("{origin}: {}", renumber_tasks(&e.to_string(), &g.tasks)),
            false => e,
        })?;
        for (&i, t) in g.tasks.iter().zip(sub) {
            tasks[i].classes = t.classes;
        }
    }
    for (t, task) in cfg.tasks.iter_mut().zip(&tasks) {
        t.classes = task.classes;
    }
    let batch_norm = cfg.model.backbone.norm == crate::config::Norm::Batch;
    if groups.len() > 1 && batch_norm {
        // config.yaml records what `auto` stood for, so the run rebuilds as it trained.
        cfg.model.domain_norm = cfg.model.domain_norm.resolve(groups.len(), true);
    }
    let monitor = monitor(&cfg, &tasks).map_err(at)?;
    // The method and its options, checked now rather than when training starts.
    crate::balance::build(&cfg).map_err(|e| user_error!("{origin}: {e}"))?;
    Ok(Resolved { cfg, dataset: groups[0].dataset, groups, tasks, monitor })
}

/// The data groups: tasks whose merged data is the same read it together. Each group's
/// dataset is checked, and its root made absolute (written back into the config, so the
/// run's config.yaml rebuilds the same groups from any directory).
fn data_groups(cfg: &mut Config, dir: &Path) -> Result<Vec<DataGroup>, String> {
    if !cfg.multi_input() {
        let dataset = dataset_named(&cfg.data.dataset).expect("checked by resolve");
        check_data(&cfg.data, dataset, "data")?;
        let tasks = (0..cfg.tasks.len()).collect();
        return Ok(vec![DataGroup { data: cfg.data.clone(), dataset, tasks, seed: cfg.seed }]);
    }
    let mut groups: Vec<DataGroup> = Vec::new();
    for i in 0..cfg.tasks.len() {
        let at = if cfg.tasks[i].data.is_some() { format!("tasks[{i}].data") } else { "data".into() };
        let mut data = cfg.task_data(i)?;
        let dataset = dataset_named(&data.dataset).ok_or_else(|| {
            format!(
                "{at}.dataset: unknown dataset '{}' (expected one of: {})",
                data.dataset,
                dataset_names().join(", ")
            )
        })?;
        check_data(&data, dataset, &at)?;
        data.root = root(&data, dataset, dir);
        if let (Some(own), Some(r)) = (cfg.tasks[i].data.as_mut(), &data.root) {
            own.insert("root".into(), r.clone().into());
        }
        match groups.iter_mut().find(|g| g.data == data) {
            Some(g) => g.tasks.push(i),
            None => {
                let seed = match data == cfg.data {
                    true => cfg.seed,
                    false => {
                        let name = crate::rng::name_index(&cfg.tasks[i].name);
                        crate::rng::derive_seed(cfg.seed, crate::rng::Purpose::DataGroup, name)
                    }
                };
                groups.push(DataGroup { data, dataset, tasks: vec![i], seed })
            }
        }
    }
    Ok(groups)
}

/// `tasks[j]` in a message about a group's tasks, renamed to the task's place in the config.
pub fn renumber_tasks(message: &str, tasks: &[usize]) -> String {
    let mut out = String::new();
    let mut rest = message;
    while let Some(p) = rest.find("tasks[") {
        let after = &rest[p + 6..];
        let digits = after.find(']').map(|e| &after[..e]);
        match digits.and_then(|d| d.parse::<usize>().ok()).and_then(|j| tasks.get(j).map(|&i| (j, i))) {
            Some((j, i)) => {
                out.push_str(&rest[..p]);
                out.push_str(&format!("tasks[{i}]"));
                rest = &after[j.to_string().len() + 1..];
            }
            None => {
                out.push_str(&rest[..p + 6]);
                rest = after;
            }
        }
    }
    out.push_str(rest);
    out
}

/// The architecture's options, its rules for the backbone and for `balance.on`; records every
/// option's value (defaults included) in the config, so the run's config.yaml says what was built.
fn check_architecture(cfg: &mut Config) -> anyhow::Result<()> {
    let (plan, options) = arch::plan(&cfg.model.architecture, &cfg.model.backbone, cfg.tasks.len())?;
    if cfg.balance.on == GradientOn::Representation {
        if let Some(why) = plan.no_representation() {
            user_bail!(
                "balance.on: representation does not apply to architecture '{}': {why}; use balance.on: params",
                cfg.model.architecture.kind
            );
        }
    }
    cfg.model.architecture.options = options;
    Ok(())
}

/// The `data` rules that depend on the dataset; `at` is the section's key path (`data`, or
/// `tasks[i].data`).
fn check_data(d: &DataConfig, dataset: &dyn Dataset, at: &str) -> Result<(), String> {
    let named = |e: String| if at == "data" { e } else { format!("{at}.{}", e.strip_prefix("data.").unwrap_or(&e)) };
    dataset.check(d).map_err(named)?;
    if d.download && dataset.source().is_none() {
        return Err(format!(
            "{at}.download: {} is not downloaded by mtl (generated data, your own files, or published without a direct URL); remove the key",
            dataset.name()
        ));
    }
    if d.on_bad_file.is_some() && !dataset.per_sample_files() {
        return Err(format!(
            "{at}.on_bad_file: {} is read whole, not file by file: there is nothing to skip; remove the key",
            dataset.name()
        ));
    }
    if !d.classes.is_empty() && !dataset.class_folders() {
        return Err(format!(
            "{at}.classes: {} does not read a class per subfolder ({} do); remove the key",
            dataset.name(),
            crate::data::DATASETS.iter().filter(|d| d.class_folders()).map(|d| d.name()).collect::<Vec<_>>().join(", ")
        ));
    }
    Ok(())
}

/// The table dataset's files (`data.train`, `data.val`) made absolute against the config's
/// directory, as `data.root` is.
fn anchor_table_files(d: &mut DataConfig, dir: &Path) {
    use crate::config::TableFile;
    let anchor = |p: &mut String| {
        let path = dir.join(&*p);
        *p = normalize_path(&std::path::absolute(&path).unwrap_or(path)).display().to_string();
    };
    for file in [&mut d.train, &mut d.val].into_iter().flatten() {
        match file {
            TableFile::File(p) => anchor(p),
            TableFile::Arrays(m) => m.values_mut().for_each(anchor),
        }
    }
}

/// `data.root` made absolute and normalized: relative to the config's directory when given,
/// else the dataset's default relative to the working directory (none for generated data).
fn root(d: &DataConfig, dataset: &dyn Dataset, dir: &Path) -> Option<String> {
    let path = match (&d.root, dataset.default_root()) {
        (Some(r), _) => dir.join(r),
        (None, Some(default)) => PathBuf::from(default),
        (None, None) => return None,
    };
    Some(normalize_path(&std::path::absolute(&path).unwrap_or(path)).display().to_string())
}

/// `path` without `.` and without `x/..` where `x` is a directory rather than a symbolic link
/// (there the two name the same place), so `configs/../data` is shown and recorded as `data`.
pub fn normalize_path(path: &Path) -> PathBuf {
    use std::path::Component;
    let mut out = PathBuf::new();
    for c in path.components() {
        match c {
            Component::CurDir => {}
            Component::ParentDir
                if matches!(out.components().next_back(), Some(Component::Normal(_))) && !out.is_symlink() =>
            {
                out.pop();
            }
            other => out.push(other),
        }
    }
    if out.as_os_str().is_empty() {
        out.push(".");
    }
    out
}

/// ESMM: the index of the task `tasks[i].given` names, after its rules: both binary, one level
/// deep, sharing one data section.
fn given(cfg: &Config, i: usize, tasks: &[Task]) -> Result<Option<usize>, String> {
    let Some(parent) = &cfg.tasks[i].given else { return Ok(None) };
    let p = cfg.tasks.iter().position(|t| &t.name == parent).ok_or_else(|| {
        let names: Vec<&str> = cfg.tasks.iter().map(|t| t.name.as_str()).collect();
        format!("tasks[{i}].given: no task named '{parent}' (tasks: {})", names.join(", "))
    })?;
    if p == i {
        return Err(format!("tasks[{i}].given: '{parent}' is this task itself"));
    }
    if tasks[i].kind.name() != "binary" || tasks[p].kind.name() != "binary" {
        return Err(format!(
            "tasks[{i}].given: ESMM conditions a binary task on a binary task; '{}' is {} and '{parent}' is {}",
            tasks[i].name,
            tasks[i].kind.name(),
            tasks[p].kind.name()
        ));
    }
    if cfg.tasks[p].given.is_some() {
        return Err(format!("tasks[{i}].given: '{parent}' is itself conditional; ESMM chains one level"));
    }
    if cfg.multi_input() {
        return Err(format!(
            "tasks[{i}].given: a conditional task reads its parent's rows; tasks with their own data cannot"
        ));
    }
    Ok(Some(p))
}

/// The kind's facts against the task's entry and the backbone.
fn check_task(cfg: &Config, i: usize, task: &Task) -> Result<(), String> {
    let t = &cfg.tasks[i];
    let kind = task.kind.name();
    if !task.kind.has_classes() {
        if t.classes != 0 {
            return Err(format!("tasks[{i}].classes: {}: a {kind} task has no classes; remove the key", t.classes));
        }
        if t.label_smoothing != 0.0 {
            return Err(format!("tasks[{i}].label_smoothing: only applies to classes, not {kind}"));
        }
    }
    if matches!(task.head(), HeadKind::Dense { .. }) && !backbone::is_spatial(&cfg.model.backbone) {
        return Err(format!(
            "tasks[{i}].kind: {kind} needs a conv or resnet backbone (model.backbone.kind) for its per-pixel output"
        ));
    }
    let head = cfg.model.heads.get(&t.name);
    if head.is_some_and(|h| h.kind == crate::config::DenseDecoder::Aspp)
        && matches!(task.head(), HeadKind::Vector { .. })
    {
        return Err(format!(
            "model.heads.{}.kind: aspp is a per-pixel head, but task '{}' is {kind} (one value per image)",
            t.name, t.name
        ));
    }
    Ok(())
}

/// Matches every task with a target of the dataset and fills `classes` 0 from it (or, for
/// datasets whose files define the targets, from the files).
fn resolve_targets(d: &DataConfig, dataset: &dyn Dataset, tasks: &mut [Task]) -> anyhow::Result<()> {
    let Some(available) = dataset.targets(d) else {
        let mut wanted: Vec<Wanted> = tasks.iter().map(wanted).collect();
        dataset.resolve_targets(d, &mut wanted)?;
        for (t, w) in tasks.iter_mut().zip(wanted) {
            if t.kind.has_classes() {
                t.classes = w.classes;
            }
        }
        return Ok(());
    };
    for (i, t) in tasks.iter_mut().enumerate() {
        let Some(target) = available.iter().find(|a| a.name == t.target) else {
            let names: Vec<&str> = available.iter().map(|a| a.name).collect();
            user_bail!(
                "tasks[{i}].target: dataset {} has no target '{}' (it has: {})",
                dataset.name(),
                t.target,
                names.join(", ")
            );
        };
        if target.shape != t.kind.target_shape() {
            user_bail!(
                "tasks[{i}].target: '{}' is {}, which a {} task cannot learn",
                t.target,
                describe(target.shape),
                t.kind.name()
            );
        }
        if t.kind.has_classes() {
            if t.classes == 0 {
                t.classes = target.classes;
            } else if t.classes != target.classes {
                user_bail!(
                    "tasks[{i}].classes: {} does not match target '{}', which has {} classes",
                    t.classes,
                    t.target,
                    target.classes
                );
            }
        }
    }
    Ok(())
}

fn wanted(t: &Task) -> Wanted {
    Wanted { target: t.target.clone(), shape: t.kind.target_shape(), classes: t.classes }
}

fn describe(shape: TargetShape) -> &'static str {
    match shape {
        TargetShape::PerImage => "a class per image",
        TargetShape::PerPixel => "a class per pixel",
        TargetShape::PerPixelDepth => "a value per pixel",
        TargetShape::PerPixelNormal => "a unit vector per pixel",
        TargetShape::Binary => "a 0/1 label per row",
        TargetShape::Value => "a value per row",
    }
}

/// The monitored value and its direction; a lower-is-better value with `mode: max` would keep
/// the worst checkpoint as BEST and is refused.
fn monitor(cfg: &Config, tasks: &[Task]) -> Result<Monitor, String> {
    let c = &cfg.checkpoint;
    let (monitor, shown) = match c.monitor.as_str() {
        "" => {
            let t = &tasks[0];
            let key = format!("{}.{}", t.name, t.main_metric().name);
            let shown = format!("{key} (the first task's main metric, monitored by default)");
            (Monitor { key, higher_is_better: t.main_metric().higher_is_better }, shown)
        }
        m @ ("loss" | "delta_m") => (Monitor { key: m.into(), higher_is_better: false }, m.to_string()),
        m => {
            let (task, metric) =
                m.split_once('.').ok_or_else(|| format!("checkpoint.monitor: '{m}' must be <task>.<metric>"))?;
            let t = tasks
                .iter()
                .find(|t| t.name == task)
                .ok_or_else(|| format!("checkpoint.monitor: there is no task named '{task}'"))?;
            let higher = t.higher_is_better(metric).ok_or_else(|| {
                format!(
                    "checkpoint.monitor: task '{task}' has no metric '{metric}' (it has: {})",
                    t.metric_names().join(", ")
                )
            })?;
            (Monitor { key: m.into(), higher_is_better: higher }, m.to_string())
        }
    };
    if !monitor.higher_is_better && c.mode == MonitorMode::Max {
        return Err(format!("checkpoint.mode: max, but {shown} is better when lower; set checkpoint.mode: min"));
    }
    Ok(monitor)
}

/// The device a config asks for. Asking for CUDA where there is none is a user error, not a
/// silent fall-back to the CPU.
pub fn device(choice: &str) -> anyhow::Result<Device> {
    use crate::config::{parse_device, DeviceChoice};
    let Some(choice) = parse_device(choice) else { user_bail!("device: '{choice}' must be auto, cpu, cuda or cuda:N") };
    Ok(match choice {
        DeviceChoice::Cpu => Device::Cpu,
        DeviceChoice::Auto => Device::cuda_if_available(),
        DeviceChoice::Cuda(i) => {
            if !tch::Cuda::is_available() {
                user_bail!("device: CUDA was requested but is not available on this machine (use device: cpu or auto)");
            }
            let n = tch::Cuda::device_count() as usize;
            if i >= n {
                user_bail!("device: cuda:{i} does not exist (this machine has {n} CUDA device(s))");
            }
            Device::Cuda(i)
        }
    })
}

/// Free and total bytes of `device`'s memory: MemAvailable and MemTotal for the CPU (Linux),
/// `cudaMemGetInfo` through the CUDA runtime libtorch loaded for a GPU. None where unknown.
pub fn device_memory(device: Device) -> Option<(u64, u64)> {
    match device {
        Device::Cpu => host_memory(),
        Device::Cuda(_) => cuda_memory(),
        _ => None,
    }
}

fn host_memory() -> Option<(u64, u64)> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    let field = |name: &str| -> Option<u64> {
        let line = text.lines().find(|l| l.starts_with(name))?;
        Some(line[name.len()..].trim().trim_end_matches("kB").trim().parse::<u64>().ok()? * 1024)
    };
    Some((field("MemAvailable:")?, field("MemTotal:")?))
}

#[cfg(target_os = "linux")]
fn cuda_memory() -> Option<(u64, u64)> {
    type MemGetInfo = unsafe extern "C" fn(*mut usize, *mut usize) -> std::ffi::c_int;
    // SAFETY: dlsym with RTLD_DEFAULT and a NUL-terminated name only looks a symbol up.
    let sym = unsafe { libc::dlsym(libc::RTLD_DEFAULT, c"cudaMemGetInfo".as_ptr()) };
    if sym.is_null() {
        return None;
    }
    // SAFETY: the symbol is the CUDA runtime's cudaMemGetInfo(size_t* free, size_t* total) ->
    // cudaError_t, called with two valid, exclusive pointers.
    let (mut free, mut total) = (0usize, 0usize);
    let rc = unsafe { std::mem::transmute::<*mut std::ffi::c_void, MemGetInfo>(sym)(&mut free, &mut total) };
    (rc == 0).then_some((free as u64, total as u64))
}

#[cfg(not(target_os = "linux"))]
fn cuda_memory() -> Option<(u64, u64)> {
    None
}

/// Applies the process-wide settings of a run: libtorch's CPU threads, cuDNN's autotuner.
pub fn init_runtime(cfg: &Config, device: Device) {
    if cfg.threads > 0 {
        tch::set_num_threads(cfg.threads as i32);
    }
    if device.is_cuda() {
        tch::Cuda::cudnn_set_benchmark(true);
    }
}

#[cfg(test)]
mod tests;
