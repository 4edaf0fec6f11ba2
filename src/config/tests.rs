use super::*;
use crate::error::is_user_error;

fn parse(text: &str, sets: &[&str]) -> anyhow::Result<Config> {
    let sets: Vec<String> = sets.iter().map(|s| s.to_string()).collect();
    Config::parse(text, "test.yaml", &sets)
}

fn error_of(text: &str, sets: &[&str]) -> String {
    let err = parse(text, sets).expect_err("the config should be refused");
    assert!(is_user_error(&err), "not a user error: {err:#}");
    let msg = err.to_string();
    assert_eq!(msg.lines().count(), 1, "not one line: {msg}");
    msg
}

fn with(from: &str, to: &str) -> String {
    assert!(DEFAULT_CONFIG.contains(from), "default config lacks {from}");
    DEFAULT_CONFIG.replacen(from, to, 1)
}

#[test]
fn default_config_is_valid_and_round_trips() {
    let cfg = parse(DEFAULT_CONFIG, &[]).unwrap();
    assert_eq!(cfg.name, "shapes_seg");
    assert_eq!(cfg.tasks.len(), 2);
    let again = parse(&cfg.to_yaml(), &[]).unwrap();
    assert_eq!(cfg, again);
}

#[test]
fn unknown_key_names_its_path_and_line() {
    let msg = error_of(&with("    depth: 2", "    dept: 2"), &[]);
    assert!(msg.contains("test.yaml: model.backbone"), "{msg}");
    assert!(msg.contains("unknown field `dept`"), "{msg}");
    assert!(msg.contains("line"), "{msg}");
}

#[test]
fn wrong_type_names_key_and_line() {
    let msg = error_of(&with("  batch_size: 64", "  batch_size: many"), &[]);
    assert!(msg.contains("data.batch_size"), "{msg}");
    assert!(msg.contains("line 14"), "{msg}");
}

#[test]
fn out_of_range_values_are_refused() {
    assert!(error_of(&with("  lr: 0.003", "  lr: -1"), &[]).contains("optim.lr"));
    assert!(error_of(&with("  batch_size: 64", "  batch_size: 0"), &[]).contains("data.batch_size"));
    assert!(error_of(&with("    label_smoothing: 0.0", "    label_smoothing: 1.5"), &[])
        .contains("tasks[0].label_smoothing"));
    assert!(error_of(&with("device: auto", "device: tpu"), &[]).contains("device"));
    assert!(error_of(&with("    crop_padding: 2", "    crop_padding: 40"), &[]).contains("crop_padding"));
}

#[test]
fn unknown_enum_value_is_refused() {
    let msg = error_of(&with("  kind: cosine", "  kind: linear"), &[]);
    assert!(msg.contains("schedule.kind") && msg.contains("linear"), "{msg}");
}

#[test]
fn duplicate_task_names_are_refused() {
    let msg = error_of(&with("  - name: seg", "  - name: kind"), &[]);
    assert!(msg.contains("tasks[1].name") && msg.contains("duplicate"), "{msg}");
}

#[test]
fn a_head_without_a_matching_target_is_refused() {
    let msg = error_of(&with("    target: mask", "    target: depth"), &[]);
    assert!(msg.contains("tasks[1].target") && msg.contains("no target 'depth'"), "{msg}");
    let msg = error_of(&with("    target: mask", "    target: count"), &[]);
    assert!(msg.contains("tasks[1].target"), "{msg}");
    let msg = error_of(&with("    seg: {decoder_width: 0}", "    segm: {decoder_width: 0}"), &[]);
    assert!(msg.contains("model.heads.segm") && msg.contains("no task"), "{msg}");
    let msg = error_of(&with("    classes: 11", "    classes: 12"), &[]);
    assert!(msg.contains("tasks[1].classes"), "{msg}");
}

#[test]
fn monitor_must_name_a_metric() {
    let msg = error_of(&with("  monitor: seg.miou", "  monitor: seg.accuracy"), &[]);
    assert!(msg.contains("checkpoint.monitor"), "{msg}");
}

#[test]
fn set_overrides_any_key_and_is_checked() {
    let cfg = parse(DEFAULT_CONFIG, &["optim.lr=0.5", "tasks.1.weight=2", "train.max_steps=7"]).unwrap();
    assert_eq!(cfg.optim.lr, 0.5);
    assert_eq!(cfg.tasks[1].weight, 2.0);
    assert_eq!(cfg.train.max_steps, 7);
    let msg = error_of(DEFAULT_CONFIG, &["optim.lrr=0.5"]);
    assert!(msg.contains("--set optim.lrr=0.5") && msg.contains("unknown field `lrr`"), "{msg}");
    let msg = error_of(DEFAULT_CONFIG, &["optim.lr=fast"]);
    assert!(msg.contains("optim.lr"), "{msg}");
    let msg = error_of(DEFAULT_CONFIG, &["optim.lr=-2"]);
    assert!(msg.contains("optim.lr"), "{msg}");
    assert!(error_of(DEFAULT_CONFIG, &["optim.lr"]).contains("key.path=value"));
    assert!(error_of(DEFAULT_CONFIG, &["tasks.9.weight=1"]).contains("out of range"));
}

#[test]
fn mlp_cannot_segment() {
    let text = with("    kind: conv", "    kind: mlp").replace("    norm: batch", "    norm: none");
    let msg = error_of(&text, &[]);
    assert!(msg.contains("tasks[1].kind"), "{msg}");
}

#[test]
fn missing_required_key_is_named() {
    let msg = error_of(&DEFAULT_CONFIG.replacen("name: shapes_seg\n", "", 1), &[]);
    assert!(msg.contains("missing field `name`"), "{msg}");
}

/// A minimal config for `dataset` with the given data and task lines.
fn dataset_config(data: &str, tasks: &str) -> String {
    format!("name: t\ndata: {{{data}}}\nmodel: {{backbone: {{kind: conv, widths: [4, 8]}}}}\ntasks: {tasks}\n")
}

const NYU_TASKS: &str = "[{name: seg, kind: segmentation, target: semantic, classes: 13}, \
    {name: depth, kind: regression, target: depth}, {name: normal, kind: normals, target: normal}]";

#[test]
fn dataset_specific_data_settings_are_checked() {
    let ok = |data: &str, tasks: &str| parse(&dataset_config(data, tasks), &[]).unwrap();
    let bad = |data: &str, tasks: &str| error_of(&dataset_config(data, tasks), &[]);
    let mm = "[{name: l, kind: classification, target: left, classes: 10}]";
    ok("dataset: multimnist, image_size: 28, grayscale: true", mm);
    assert!(bad("dataset: multimnist, image_size: 32, grayscale: true", mm).contains("data.image_size"));
    assert!(bad("dataset: multimnist, image_size: 28", mm).contains("data.grayscale"));
    let shapes = "[{name: k, kind: classification, target: kind, classes: 10}]";
    assert!(bad("dataset: shapes, on_bad_file: skip", shapes).contains("data.on_bad_file"));
    assert!(bad("dataset: shapes, max_memory_mb: 0", shapes).contains("data.max_memory_mb"));
    assert!(bad("dataset: shapes, prefetch_batches: 0", shapes).contains("data.prefetch_batches"));
    assert!(bad("dataset: shapes, augment: {max_scale: 5}", shapes).contains("data.augment.max_scale"));
    assert!(bad("dataset: shapes, augment: {max_scale: 0.5}", shapes).contains("data.augment.max_scale"));
    let pet = "[{name: t, kind: segmentation, target: trimap, classes: 3}]";
    ok("dataset: pet, image_size: 64, on_bad_file: refuse, max_memory_mb: 0.5", pet);
    let m = bad("dataset: pet, pet: {border: ignore}", pet);
    assert!(m.contains("tasks[0].classes") && m.contains("2 classes"), "{m}");
    let m = bad("dataset: pet, pet: {borders: ignore}", pet);
    assert!(m.contains("data.pet") && m.contains("unknown field `borders`"), "{m}");
    assert!(bad("dataset: pet, pet: {border: maybe}", pet).contains("data.pet.border"));
    assert!(bad("dataset: pet, on_bad_file: ignore", pet).contains("data.on_bad_file"));
}

#[test]
fn regression_and_normals_tasks_are_checked() {
    let nyu = "dataset: nyuv2, image_size: 64";
    let cfg = parse(&dataset_config(nyu, NYU_TASKS), &[]).unwrap();
    assert_eq!(cfg.tasks[1].kind, TaskKind::Regression);
    assert_eq!(cfg.tasks[2].classes, 0);
    let m = error_of(&dataset_config(nyu, &NYU_TASKS.replace("target: depth}", "target: depth, classes: 1}")), &[]);
    assert!(m.contains("tasks[1].classes") && m.contains("no classes"), "{m}");
    let m = error_of(
        &dataset_config(nyu, &NYU_TASKS.replace("regression, target: depth", "regression, target: normal")),
        &[],
    );
    assert!(m.contains("tasks[1].target") && m.contains("PerPixelNormal"), "{m}");
    let m =
        error_of(&dataset_config(nyu, &NYU_TASKS.replace("normals, target: normal", "normals, target: semantic")), &[]);
    assert!(m.contains("tasks[2].target"), "{m}");
    let mlp =
        dataset_config(nyu, NYU_TASKS).replace("kind: conv, widths: [4, 8]", "kind: mlp, widths: [8], norm: none");
    let m = error_of(&mlp, &[]);
    assert!(m.contains("tasks[0].kind") && m.contains("conv or resnet"), "{m}");
    let m = error_of(&mlp.replace("{name: seg, kind: segmentation, target: semantic, classes: 13}, ", ""), &[]);
    assert!(m.contains("tasks[0].kind") && m.contains("regression"), "{m}");
    let smooth = NYU_TASKS.replace("target: depth}", "target: depth, label_smoothing: 0.1}");
    assert!(error_of(&dataset_config(nyu, &smooth), &[]).contains("tasks[1].label_smoothing"));
}

#[test]
fn monitoring_an_error_metric_needs_mode_min() {
    let nyu = "dataset: nyuv2, image_size: 64";
    let depth_first = "[{name: depth, kind: regression, target: depth}]";
    let m = error_of(&dataset_config(nyu, depth_first), &[]);
    assert!(m.contains("checkpoint.mode") && m.contains("depth.abs_error") && m.contains("min"), "{m}");
    let text = dataset_config(nyu, depth_first) + "checkpoint: {mode: min}\n";
    parse(&text, &[]).unwrap();
    let text = dataset_config(nyu, NYU_TASKS) + "checkpoint: {monitor: normal.median_angle}\n";
    assert!(error_of(&text, &[]).contains("checkpoint.mode"));
    let text = dataset_config(nyu, NYU_TASKS) + "checkpoint: {monitor: normal.within_22_5}\n";
    parse(&text, &[]).unwrap();
    let text = dataset_config(nyu, NYU_TASKS) + "checkpoint: {monitor: loss}\n";
    assert!(error_of(&text, &[]).contains("checkpoint.mode"));
    let m = error_of(&(dataset_config(nyu, NYU_TASKS) + "checkpoint: {monitor: depth.miou}\n"), &[]);
    assert!(m.contains("abs_error, rel_error, loss"), "{m}");
}

#[test]
fn folder_tasks_follow_the_folder_layout() {
    let data = "dataset: folder, root: mine";
    let tasks =
        "[{name: k, kind: classification, target: kind}, {name: m, kind: segmentation, target: mask, classes: 4}]";
    let cfg = parse(&dataset_config(data, tasks), &[]).unwrap();
    assert_eq!((cfg.tasks[0].classes, cfg.tasks[1].classes), (0, 4));
    assert!(error_of(&dataset_config("dataset: folder", tasks), &[]).contains("data.root"));
    let m = error_of(&dataset_config(data, "[{name: m, kind: segmentation, target: kind}]"), &[]);
    assert!(m.contains("tasks[0].target") && m.contains("'mask'"), "{m}");
    let m = error_of(&dataset_config(data, "[{name: m, kind: classification, target: mask}]"), &[]);
    assert!(m.contains("tasks[0].target"), "{m}");
    let m = error_of(&dataset_config(data, "[{name: d, kind: regression, target: depth}]"), &[]);
    assert!(m.contains("tasks[0].kind") && m.contains("class labels only"), "{m}");
    let m = error_of(&dataset_config(data, "[{name: k, kind: classification, target: kind, classes: -2}]"), &[]);
    assert!(m.contains("tasks[0].classes"), "{m}");
    assert!(error_of(&dataset_config("dataset: folder, root: x, folder: {val_fraction: 1.0}", tasks), &[])
        .contains("data.folder.val_fraction"));
}

#[test]
fn new_data_keys_are_not_written_when_left_at_their_defaults() {
    // Old runs' config fingerprints (resume) stay valid.
    let yaml = parse(DEFAULT_CONFIG, &[]).unwrap().to_yaml();
    for key in ["max_memory_mb", "decode_threads", "prefetch_batches", "on_bad_file", "pet:", "folder:", "max_scale"] {
        assert!(!yaml.contains(key), "{key} in:\n{yaml}");
    }
    let cfg = parse(DEFAULT_CONFIG, &["data.max_memory_mb=12.5", "data.augment.max_scale=1.5"]).unwrap();
    assert_eq!(parse(&cfg.to_yaml(), &[]).unwrap(), cfg);
}
