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
    let msg = error_of(&with("    depth: 1", "    dept: 1"), &[]);
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
