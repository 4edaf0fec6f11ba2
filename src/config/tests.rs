use super::*;
use crate::error::one_line_user_error;

fn parse(text: &str, sets: &[&str]) -> anyhow::Result<Config> {
    let sets: Vec<String> = sets.iter().map(|s| s.to_string()).collect();
    Config::parse(text, "test.yaml", &sets)
}

fn error_of(text: &str, sets: &[&str]) -> String {
    one_line_user_error(parse(text, sets).expect_err("the config should be refused"))
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
fn missing_required_key_is_named() {
    let msg = error_of(&DEFAULT_CONFIG.replacen("name: shapes_seg\n", "", 1), &[]);
    assert!(msg.contains("missing field `name`"), "{msg}");
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

#[test]
fn deep_nesting_is_refused_quickly() {
    let flow = format!("name: {}{}\n", "[".repeat(100_000), "]".repeat(100_000));
    assert!(error_of(&flow, &[]).contains("nested more than"));
    let mut block = String::new();
    for i in 0..200 {
        block.push_str(&format!("{}k{i}:\n", " ".repeat(i)));
    }
    assert!(error_of(&block, &[]).contains("nested more than"));
    // The default config, and flow maps in it, are far from the limit.
    parse(DEFAULT_CONFIG, &[]).unwrap();
}

#[test]
fn architecture_is_a_map_of_kind_and_options_and_hard_sharing_is_not_written() {
    let cfg = parse(DEFAULT_CONFIG, &[]).unwrap();
    assert_eq!(cfg.model.architecture.kind, DEFAULT_ARCHITECTURE);
    assert!(!cfg.to_yaml().contains("architecture"), "the default must not change old configs' text");
    let explicit = parse(DEFAULT_CONFIG, &["model.architecture.kind=hps"]).unwrap();
    assert!(!explicit.to_yaml().contains("architecture"));
    let mmoe = parse(DEFAULT_CONFIG, &["model.architecture.kind=mmoe", "model.architecture.experts=4"]).unwrap();
    assert_eq!(mmoe.model.architecture.kind, "mmoe");
    assert_eq!(mmoe.model.architecture.options.get("experts"), Some(&serde_yaml::Value::from(4)));
    let again = parse(&mmoe.to_yaml(), &[]).unwrap();
    assert_eq!(again, mmoe);
    let msg = error_of(DEFAULT_CONFIG, &["model.architecture=mmoe"]);
    assert!(msg.contains("model.architecture") && msg.contains("a map like {kind: mmoe"), "{msg}");
    let msg = error_of(DEFAULT_CONFIG, &["model.architecture.kind=m.m"]);
    assert!(msg.contains("model.architecture.kind: 'm.m' must be an architecture name"), "{msg}");
}

#[test]
fn task_data_inherits_the_top_level_data_key_by_key() {
    let cfg = parse(DEFAULT_CONFIG, &["tasks.1.data={root: d, augment: {hflip: false}, batch_size: 4}"]).unwrap();
    assert!(cfg.multi_input());
    let own = cfg.task_data(1).unwrap();
    assert_eq!((own.root.as_deref(), own.batch_size, own.augment.hflip), (Some("d"), 4, false));
    assert_eq!(own.augment.crop_padding, cfg.data.augment.crop_padding, "the other augment keys are inherited");
    assert_eq!((own.dataset.as_str(), own.image_size), (cfg.data.dataset.as_str(), cfg.data.image_size));
    assert_eq!(cfg.task_data(0).unwrap(), cfg.data, "a task without data reads the top-level data");
    // Written back as given: config.yaml keeps only the task's own keys.
    let again = Config::parse(&cfg.to_yaml(), "again", &[]).unwrap();
    assert_eq!(again.task_data(1).unwrap(), own);
    assert!(!parse(DEFAULT_CONFIG, &[]).unwrap().to_yaml().contains("epoch_by"));
}

#[test]
fn task_data_errors_name_the_task_and_key() {
    let e = |sets: &[&str]| error_of(DEFAULT_CONFIG, sets);
    assert!(
        e(&["tasks.1.data={batch_size: 0}"]).contains("tasks[1].data.batch_size: 0"),
        "{}",
        e(&["tasks.1.data={batch_size: 0}"])
    );
    assert!(
        e(&["tasks.0.data={bogus: 1}"]).contains("tasks[0].data.bogus: unknown field `bogus`"),
        "{}",
        e(&["tasks.0.data={bogus: 1}"])
    );
    assert!(e(&["tasks.0.data={image_size: 64}"]).contains("tasks[0].data.image_size: 64 differs"));
    assert!(e(&["tasks.0.data={root: x}", "balance.on=representation"]).contains("balance.on: representation"));
    assert!(e(&["train.epoch_by=nope"]).contains("train.epoch_by: 'nope'"));
    assert!(parse(DEFAULT_CONFIG, &["train.epoch_by=seg"]).is_ok());
}

/// Stages set train.epochs when the config does not write it (in the file or with --set), must
/// agree with it when it does, and round-trip through config.yaml with groups and freeze_bn.
#[test]
fn stages_make_up_the_epochs_and_round_trip() {
    let staged = with(
        "train:\n  epochs: 5\n",
        "train:\n  stages:\n    - {epochs: 2, tasks: [seg], groups: [{match: 'backbone.*', freeze: true}]}\n    - {epochs: 7}\n",
    );
    let cfg = parse(&staged, &[]).unwrap();
    assert_eq!(cfg.train.epochs, 9);
    assert_eq!(cfg.train.stages[1].tasks, StageTasks::All);
    assert!(cfg.train.stages[0].tasks.includes("seg") && !cfg.train.stages[0].tasks.includes("kind"));
    assert_eq!(parse(&staged, &["train.log_every=5"]).unwrap().train.epochs, 9);
    assert_eq!(parse(&cfg.to_yaml(), &[]).unwrap(), cfg);
    let msg = error_of(&staged, &["train.epochs=5"]);
    assert!(msg.contains("train.stages: the stages' epochs add up to 9, but train.epochs is 5"), "{msg}");
    // Without stages the default epochs stay; with them written by --set, they are summed.
    assert_eq!(parse(DEFAULT_CONFIG, &[]).unwrap().train.epochs, 5);
    let set = parse(&with("  epochs: 5\n", ""), &["train.stages=[{epochs: 3}, {epochs: 1, tasks: [kind]}]"]).unwrap();
    assert_eq!(set.train.epochs, 4);

    let tuned =
        with("  lr: 0.003\n", "  lr: 0.003\n  groups: [{match: 'heads.*', lr_scale: 2.0, weight_decay: 0.0}]\n");
    let tuned = parse(&tuned, &["model.freeze_bn=true"]).unwrap();
    assert_eq!(tuned.optim.groups[0].weight_decay, Some(0.0));
    assert!(tuned.model.freeze_bn);
    assert_eq!(parse(&tuned.to_yaml(), &[]).unwrap(), tuned);
    assert!(!parse(DEFAULT_CONFIG, &[]).unwrap().to_yaml().contains("groups"), "defaults are not written");
}

#[test]
fn decode_keys_read_auto_and_are_not_written_at_their_defaults() {
    let auto = parse(DEFAULT_CONFIG, &["data.decode_threads=auto", "data.jpeg_decoder=auto", "data.decode_scale=auto"]);
    let auto = auto.unwrap();
    assert_eq!(
        (auto.data.decode_threads, auto.data.jpeg_decoder, auto.data.decode_scale),
        (0, JpegDecoder::Auto, Toggle::Auto)
    );
    let yaml = auto.to_yaml();
    assert!(
        !yaml.contains("decode_threads") && !yaml.contains("jpeg_decoder") && !yaml.contains("decode_scale"),
        "{yaml}"
    );
    let set =
        parse(DEFAULT_CONFIG, &["data.decode_threads=3", "data.jpeg_decoder=zune-jpeg", "data.decode_scale=false"]);
    let set = set.unwrap();
    assert_eq!(
        (set.data.decode_threads, set.data.jpeg_decoder, set.data.decode_scale),
        (3, JpegDecoder::ZuneJpeg, Toggle::Off)
    );
    assert_eq!(parse(&set.to_yaml(), &[]).unwrap(), set, "the recorded values read back");
    assert!(error_of(DEFAULT_CONFIG, &["data.decode_threads=many"]).contains("data.decode_threads"));
}
