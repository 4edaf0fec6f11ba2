use super::*;
use crate::config::DEFAULT_CONFIG;
use crate::error::one_line_user_error;

fn resolve_text(text: &str, sets: &[&str]) -> anyhow::Result<Resolved> {
    let sets: Vec<String> = sets.iter().map(|s| s.to_string()).collect();
    resolve(Config::parse(text, "test.yaml", &sets)?, "test.yaml", Path::new("."))
}

fn parse(text: &str, sets: &[&str]) -> anyhow::Result<Config> {
    resolve_text(text, sets).map(|r| r.cfg)
}

fn error_of(text: &str, sets: &[&str]) -> String {
    let msg = one_line_user_error(resolve_text(text, sets).err().expect("the config should be refused"));
    assert!(msg.starts_with("test.yaml: "), "the origin is named: {msg}");
    msg
}

fn with(from: &str, to: &str) -> String {
    assert!(DEFAULT_CONFIG.contains(from), "default config lacks {from}");
    DEFAULT_CONFIG.replacen(from, to, 1)
}

#[test]
fn the_default_config_resolves() {
    let r = resolve_text(DEFAULT_CONFIG, &[]).unwrap();
    assert_eq!(r.dataset.name(), "shapes");
    assert_eq!(r.tasks.iter().map(|t| t.kind.name()).collect::<Vec<_>>(), ["classification", "segmentation"]);
    assert_eq!(r.monitor, Monitor { key: "seg.miou".into(), higher_is_better: true });
    assert_eq!(r.cfg.data.root, None, "generated data has no root");
}

#[test]
fn unknown_names_list_the_known_ones() {
    let m = error_of(&with("  dataset: shapes", "  dataset: shapez"), &[]);
    assert!(m.contains("data.dataset") && m.contains("shapez") && m.contains("cifar10_seg"), "{m}");
    let m = error_of(&with("    kind: segmentation", "    kind: segmentaton"), &[]);
    assert!(m.contains("tasks[1].kind") && m.contains("segmentaton") && m.contains("normals"), "{m}");
}

#[test]
fn classes_left_out_come_from_the_dataset() {
    let r = resolve_text(&with("    classes: 11\n", ""), &[]).unwrap();
    assert_eq!(r.cfg.tasks[1].classes, 11);
    assert_eq!(r.tasks[1].classes, 11);
}

#[test]
fn relative_roots_resolve_against_the_config_directory() {
    let dir = tempfile::tempdir().unwrap();
    let text = "name: c\ndata: {dataset: cifar10_seg, root: cifar}\nmodel: {backbone: {kind: conv, widths: [4, 8]}}\n\
                tasks: [{name: c, kind: classification, target: class, classes: 10}]\n";
    let r = resolve(Config::parse(text, "c.yaml", &[]).unwrap(), "c.yaml", dir.path()).unwrap();
    assert_eq!(r.cfg.data.root.as_deref(), Some(dir.path().join("cifar").to_str().unwrap()));
    let text = text.replace(", root: cifar", "");
    let r = resolve(Config::parse(&text, "c.yaml", &[]).unwrap(), "c.yaml", dir.path()).unwrap();
    let root = PathBuf::from(r.cfg.data.root.unwrap());
    assert!(root.is_absolute() && root.ends_with("data/cifar-10-batches-bin"), "{}", root.display());
}

#[test]
fn a_folder_dataset_infers_its_classes_from_the_files() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("mine/images")).unwrap();
    let mut csv = String::from("file,kind\n");
    for i in 0..4 {
        image::RgbImage::new(8, 8).save(dir.path().join(format!("mine/images/{i}.png"))).unwrap();
        csv += &format!("{i}.png,{}\n", i % 3);
    }
    std::fs::write(dir.path().join("mine/labels.csv"), csv).unwrap();
    let text = "name: f\ndata: {dataset: folder, root: mine, image_size: 8}\n\
                model: {backbone: {kind: conv, widths: [4, 8]}}\ntasks: [{name: k, kind: classification, target: kind}]\n";
    let r = resolve(Config::parse(text, "f.yaml", &[]).unwrap(), "f.yaml", dir.path()).unwrap();
    assert_eq!((r.cfg.tasks[0].classes, r.tasks[0].classes), (3, 3));
}

/// A minimal config for `dataset` with the given data and task lines.
fn dataset_config(data: &str, tasks: &str) -> String {
    format!("name: t\ndata: {{{data}}}\nmodel: {{backbone: {{kind: conv, widths: [4, 8]}}}}\ntasks: {tasks}\n")
}

const NYU_TASKS: &str = "[{name: seg, kind: segmentation, target: semantic, classes: 13}, \
    {name: depth, kind: regression, target: depth}, {name: normal, kind: normals, target: normal}]";

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
fn mlp_cannot_segment() {
    let text = with("    kind: conv", "    kind: mlp").replace("    norm: batch", "    norm: none");
    let msg = error_of(&text, &[]);
    assert!(msg.contains("tasks[1].kind"), "{msg}");
}

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
    assert_eq!(cfg.tasks[1].kind, "regression");
    assert_eq!(cfg.tasks[2].classes, 0);
    let m = error_of(&dataset_config(nyu, &NYU_TASKS.replace("target: depth}", "target: depth, classes: 1}")), &[]);
    assert!(m.contains("tasks[1].classes") && m.contains("no classes"), "{m}");
    let m = error_of(
        &dataset_config(nyu, &NYU_TASKS.replace("regression, target: depth", "regression, target: normal")),
        &[],
    );
    assert!(m.contains("tasks[1].target") && m.contains("unit vector per pixel"), "{m}");
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
    assert!(error_of(&dataset_config("dataset: folder", tasks), &[]).contains("data.root"));
    let m = error_of(&dataset_config(data, tasks), &[]);
    assert!(m.contains("mine/images not found"), "{m}");
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
fn roots_are_normalized_without_crossing_symbolic_links() {
    let dir = tempfile::tempdir().unwrap();
    let configs = dir.path().join("configs");
    std::fs::create_dir(&configs).unwrap();
    let text = "name: c\ndata: {dataset: cifar10_seg, root: ../data/./cifar}\nmodel: {backbone: {kind: conv, widths: [4, 8]}}\n\
                tasks: [{name: c, kind: classification, target: class, classes: 10}]\n";
    let r = resolve(Config::parse(text, "c.yaml", &[]).unwrap(), "c.yaml", &configs).unwrap();
    assert_eq!(r.cfg.data.root.as_deref(), Some(dir.path().join("data/cifar").to_str().unwrap()));

    // Through a link, `link/..` is the parent of the link's target, not `dir`: kept as written.
    std::fs::create_dir_all(dir.path().join("real/inner")).unwrap();
    std::os::unix::fs::symlink(dir.path().join("real/inner"), dir.path().join("link")).unwrap();
    let through = dir.path().join("link/../x/../y");
    assert_eq!(normalize_path(&through), dir.path().join("link/../y"));
    assert_eq!(normalize_path(Path::new("a/./b/../../c")), Path::new("c"));
    assert_eq!(normalize_path(Path::new("a/..")), Path::new("."));
    assert_eq!(normalize_path(Path::new("../a")), Path::new("../a"));
}

#[test]
fn download_is_refused_where_there_is_nothing_to_download() {
    let e = error_of(DEFAULT_CONFIG, &["data.download=true"]);
    assert!(e.contains("data.download") && e.contains("shapes"), "{e}");
    assert!(error_of(DEFAULT_CONFIG, &["data.mirror=/srv/data"]).contains("data.mirror"));
}

#[test]
fn a_groups_task_numbers_are_renamed_to_their_place_in_the_config() {
    let m = super::renumber_tasks("tasks[0].target: x; tasks[1].classes: 3 (tasks[7] is not in the group)", &[2, 5]);
    assert_eq!(m, "tasks[2].target: x; tasks[5].classes: 3 (tasks[7] is not in the group)");
    assert_eq!(super::renumber_tasks("tasks[x] tasks[", &[1]), "tasks[x] tasks[");
}

#[test]
fn tasks_with_equal_data_share_a_group_and_own_data_gets_its_own_seed() {
    let sets = ["tasks.1.data={train_size: 64}".to_string()];
    let r = crate::setup::load(None, &sets).unwrap();
    assert_eq!(r.groups.len(), 2);
    assert_eq!((r.groups[0].tasks.clone(), r.groups[1].tasks.clone()), (vec![0], vec![1]));
    assert_eq!(r.groups[0].seed, r.cfg.seed, "the top-level data keeps the run's seed");
    assert_ne!(r.groups[1].seed, r.cfg.seed);
    assert_eq!(r.groups[1].data.train_size, 64);
    // The same data given explicitly is the top-level group.
    let same = crate::setup::load(None, &["tasks.1.data={image_size: 32}".to_string()]).unwrap();
    assert_eq!(same.groups.len(), 1);
    assert_eq!(crate::setup::load(None, &[]).unwrap().groups.len(), 1);
}

#[test]
fn a_root_set_on_the_command_line_is_anchored_at_the_working_directory() {
    let cwd = std::env::current_dir().unwrap();
    let anchored = |s: &str| {
        let a = anchor_command_line_path(s);
        let (_, v) = a.split_once('=').unwrap();
        serde_yaml::from_str::<String>(v).unwrap()
    };
    assert_eq!(anchored("data.root=my_folder"), cwd.join("my_folder").display().to_string());
    assert_eq!(anchored("tasks.2.data.root='a b/c'"), cwd.join("a b/c").display().to_string());
    // Absolute paths and every other key are left as typed.
    for same in ["data.root=/abs/x", "optim.lr=0.1", "name=my_folder", "tasks.x.data.root=y", "data.root=[1]"] {
        assert_eq!(anchor_command_line_path(same), same);
    }
    // Through load: a file's own root stays relative to the file, a typed one to the cwd.
    let dir = tempfile::tempdir().unwrap();
    let text =
        "name: c\ndata: {dataset: cifar10_seg, root: in_file}\nmodel: {backbone: {kind: conv, widths: [4, 8]}}\n\
                tasks: [{name: c, kind: classification, target: class, classes: 10}]\n";
    let file = dir.path().join("c.yaml");
    std::fs::write(&file, text).unwrap();
    let r = load(Some(&file), &[]).unwrap();
    assert_eq!(r.cfg.data.root.as_deref(), Some(dir.path().join("in_file").to_str().unwrap()));
    let r = load(Some(&file), &["data.root=typed".into()]).unwrap();
    assert_eq!(r.cfg.data.root.as_deref(), Some(cwd.join("typed").to_str().unwrap()));
}
