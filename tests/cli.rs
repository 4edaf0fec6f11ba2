//! End-to-end: the real binary on tiny configs with generated data.
mod common;
use common::*;
use tempfile::tempdir;

#[test]
fn trains_and_leaves_a_complete_run_directory() {
    let tmp = tempdir().unwrap();
    write(tmp.path(), "tiny.yaml", &tiny_config("tiny"));
    let run = run_in(tmp.path(), &["tiny.yaml"]);
    run.assert_ok();
    let out = run.stdout();
    // A short banner, not the config (that is in the run directory, and in the debug log).
    let banner: Vec<&str> = out.lines().take_while(|l| !l.starts_with("epoch")).collect();
    assert_eq!(banner.len(), 4, "{out}");
    assert!(banner[0].starts_with("mtl-train ") && banner[0].contains("device cpu"), "{out}");
    assert_eq!(banner[1], "data     shapes: 96 train + 40 val images, 16×16");
    assert!(
        banner[2].starts_with("model    conv backbone 4-8, ") && banner[2].ends_with("M parameters, tasks kind, seg"),
        "{out}"
    );
    assert_eq!(banner[3], "run dir  runs/tiny");
    assert!(!out.contains("optim:"), "{out}");
    assert!(out.contains("\nepoch 1/2 step 2/12 | "), "periodic log lines without a terminal:\n{out}");
    assert!(out.contains("\nepoch 2/2 step 8/12 (2/6 in epoch) | "), "the place in the epoch after the first:\n{out}");
    assert!(out.contains("summary:") && out.contains("miou"), "{out}");
    // The final metrics are printed once: one table per evaluation, none repeated by the summary.
    assert_eq!(out.matches(" miou ").count(), 2, "{out}");

    let dir = tmp.path().join("runs/tiny");
    assert!(dir.join("config.yaml").is_file());
    assert!(dir.join("curves.png").is_file());
    let rows = read_lines(&dir.join("metrics.jsonl"));
    let val: Vec<_> = rows.iter().filter(|r| r["split"] == "val").collect();
    assert_eq!(val.len(), 2, "one eval per epoch");
    for key in ["kind.accuracy", "kind.top5", "kind.loss", "seg.miou", "seg.pixel_accuracy", "seg.loss"] {
        assert!(val[1][key].is_number(), "{key} missing in {}", val[1]);
    }
    let train: Vec<_> = rows.iter().filter(|r| r["split"] == "train").collect();
    assert_eq!(train.len(), 6, "12 steps logged every 2");
    // Epochs count from 1, as on the console: steps 2, 4, 6 are in epoch 1, the first eval follows it.
    let epochs: Vec<u64> = train.iter().map(|r| r["epoch"].as_u64().unwrap()).collect();
    assert_eq!(epochs, [1, 1, 1, 2, 2, 2]);
    assert_eq!(val.iter().map(|r| r["epoch"].as_u64().unwrap()).collect::<Vec<_>>(), [1, 2]);
    assert!(train[0]["kind.loss"].is_number() && train[0]["lr"].is_number());

    let latest = checkpoint_pointer(&dir, "LATEST");
    assert!(latest.ends_with("step-000012"), "{}", latest.display());
    for f in ["model.safetensors", "train_state.safetensors", "state.json", "config.yaml"] {
        assert!(latest.join(f).is_file(), "{f}");
    }
    assert!(checkpoint_pointer(&dir, "BEST").is_dir());
    let kept: Vec<_> = std::fs::read_dir(dir.join("checkpoints"))
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with("step-"))
        .collect();
    assert!(kept.len() <= 2, "keep_last 2 (BEST may coincide): {}", kept.len());
}

#[test]
fn help_documents_every_flag() {
    let tmp = tempdir().unwrap();
    let run = run_in(tmp.path(), &["--help"]);
    run.assert_ok();
    let out = run.stdout();
    for flag in ["--set", "--device", "--run-dir", "--resume", "--init-from", "--allow-missing-heads"] {
        assert!(out.contains(flag), "{flag} undocumented:\n{out}");
    }
}

#[test]
fn bad_configs_are_one_line_errors_and_write_nothing() {
    let tmp = tempdir().unwrap();
    let cases: Vec<(String, Vec<&str>)> = vec![
        (tiny_config("a").replace("depth: 1", "deep: 1"), vec!["bad.yaml", "model.backbone", "deep"]),
        (tiny_config("a").replace("batch_size: 16", "batch_size: sixteen"), vec!["data.batch_size", "line"]),
        (tiny_config("a").replace("lr: 0.01", "lr: -0.01"), vec!["optim.lr"]),
        (tiny_config("a").replace("name: seg", "name: kind"), vec!["tasks[1].name", "duplicate"]),
        (tiny_config("a").replace("target: mask", "target: depth"), vec!["tasks[1].target", "depth"]),
        ("name: [unclosed".to_string(), vec!["bad.yaml"]),
    ];
    for (text, needles) in cases {
        write(tmp.path(), "bad.yaml", &text);
        let run = run_in(tmp.path(), &["bad.yaml"]);
        run.assert_user_error(&needles);
        assert!(!tmp.path().join("runs").exists(), "a bad config created a run directory");
    }
    let run = run_in(tmp.path(), &["missing.yaml"]);
    run.assert_user_error(&["missing.yaml"]);
}

#[test]
fn set_overrides_are_checked_like_the_file() {
    let tmp = tempdir().unwrap();
    write(tmp.path(), "tiny.yaml", &tiny_config("o"));
    run_in(tmp.path(), &["tiny.yaml", "--set", "optim.lrr=1"]).assert_user_error(&["--set", "optim", "lrr"]);
    run_in(tmp.path(), &["tiny.yaml", "--set", "train.epochs=zero"]).assert_user_error(&["train.epochs"]);
    run_in(tmp.path(), &["tiny.yaml", "--set", "nonsense"]).assert_user_error(&["key.path=value"]);
    run_in(tmp.path(), &["tiny.yaml", "--device", "gpu7"]).assert_user_error(&["device"]);
}

#[test]
fn missing_dataset_names_the_path_and_the_fetch_script() {
    let tmp = tempdir().unwrap();
    let text = tiny_config("c")
        .replace("dataset: shapes", "dataset: cifar10_seg\n  root: nowhere/cifar")
        .replace("image_size: 16", "image_size: 32")
        .replace("target: kind, classes: 10", "target: class, classes: 10")
        .replace("classes: 11", "classes: 10");
    write(tmp.path(), "c.yaml", &text);
    run_in(tmp.path(), &["c.yaml"]).assert_user_error(&[
        "nowhere/cifar",
        "data.download: true",
        "scripts/fetch.sh cifar10_seg",
    ]);
}

#[test]
fn cuda_request_without_cuda_is_a_clear_error() {
    if tch::Cuda::is_available() {
        eprintln!("skipped: this machine has CUDA");
        return;
    }
    let tmp = tempdir().unwrap();
    write(tmp.path(), "tiny.yaml", &tiny_config("g"));
    run_in(tmp.path(), &["tiny.yaml", "--device", "cuda"]).assert_user_error(&["CUDA", "not available"]);
}

#[test]
fn an_existing_run_is_not_overwritten() {
    let tmp = tempdir().unwrap();
    write(tmp.path(), "tiny.yaml", &tiny_config("e"));
    run_in(tmp.path(), &["tiny.yaml", "--set", "train.epochs=1"]).assert_ok();
    let metrics = tmp.path().join("runs/e/metrics.jsonl");
    let before = std::fs::read(&metrics).unwrap();
    run_in(tmp.path(), &["tiny.yaml"]).assert_user_error(&["runs/e", "--resume"]);
    assert_eq!(before, std::fs::read(&metrics).unwrap());
}

#[test]
fn the_mlp_two_task_example_trains() {
    let tmp = tempdir().unwrap();
    let cfg =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/configs/shapes_mlp_two_tasks.yaml")).unwrap();
    write(tmp.path(), "mlp.yaml", &cfg);
    let run = run_in(
        tmp.path(),
        &["mlp.yaml", "--set", "data.train_size=256", "--set", "data.val_size=64", "--set", "train.epochs=2"],
    );
    run.assert_ok();
    let rows = read_lines(&tmp.path().join("runs/shapes_mlp_two_tasks/metrics.jsonl"));
    assert!(rows.iter().any(|r| r["split"] == "val" && r["count.accuracy"].is_number()));
}

#[test]
fn the_banner_comes_before_the_log_lines() {
    let tmp = tempdir().unwrap();
    write(tmp.path(), "tiny.yaml", &tiny_config("b"));
    let log = std::fs::File::create(tmp.path().join("out.txt")).unwrap();
    let status = std::process::Command::new(binary())
        .args(["tiny.yaml", "--set", "train.max_steps=2"])
        .current_dir(tmp.path())
        .env_remove("RUST_LOG")
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .status()
        .unwrap();
    assert!(status.success());
    let text = std::fs::read_to_string(tmp.path().join("out.txt")).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    let banner = lines.iter().position(|l| l.starts_with("mtl-train ")).expect("a banner");
    let info = lines.iter().position(|l| l.contains("INFO")).expect("info lines");
    assert!(banner < info && lines[banner + 3].starts_with("run dir "), "{text}");
}

#[test]
fn resuming_a_finished_run_says_so_and_writes_nothing() {
    let tmp = tempdir().unwrap();
    write(tmp.path(), "tiny.yaml", &tiny_config("f"));
    run_in(tmp.path(), &["tiny.yaml", "--set", "train.epochs=1"]).assert_ok();
    let dir = tmp.path().join("runs/f");
    let before = dir_digest(&dir);
    let run = run_in(tmp.path(), &["tiny.yaml", "--set", "train.epochs=1", "--resume"]);
    run.assert_ok();
    let out = run.stdout();
    let first = out.lines().next().unwrap_or_default();
    assert!(first.starts_with("runs/f: complete at step 6;") && first.contains("train.epochs"), "{out}");
    assert!(out.contains("final metrics (step 6)") && out.contains(" miou "), "{out}");
    assert!(!out.contains("run dir") && !out.contains("summary:"), "no banner, no training: {out}");
    assert_eq!(before, dir_digest(&dir), "a finished run resumed must write nothing");

    // Raising train.epochs continues it; the banner says from where.
    let run = run_in(tmp.path(), &["tiny.yaml", "--set", "train.epochs=2", "--resume"]);
    run.assert_ok();
    assert!(
        run.stdout().contains("run dir  runs/f (resuming at step 6 from runs/f/checkpoints/step-000006)"),
        "{}",
        run.stdout()
    );

    // A mistyped run directory: --resume finds nothing there, and the banner says so.
    let run = run_in(tmp.path(), &["tiny.yaml", "--run-dir", "runs/ff", "--resume", "--set", "train.max_steps=1"]);
    run.assert_ok();
    assert!(
        run.stdout().contains("run dir  runs/ff (new: --resume found no checkpoint here; starting at step 0)"),
        "{}",
        run.stdout()
    );
}

#[test]
fn a_root_set_on_the_command_line_is_relative_to_the_working_directory() {
    let tmp = tempdir().unwrap();
    std::fs::create_dir_all(tmp.path().join("configs")).unwrap();
    let text = tiny_config("p")
        .replace("dataset: shapes", "dataset: cifar10_seg\n  root: in_file")
        .replace("image_size: 16", "image_size: 32")
        .replace("target: kind, classes: 10", "target: class, classes: 10")
        .replace("classes: 11", "classes: 10");
    write(&tmp.path().join("configs"), "c.yaml", &text);
    // In the file: relative to the file's directory.
    run_in(tmp.path(), &["configs/c.yaml"]).assert_user_error(&["configs/in_file"]);
    // On the command line: relative to where it was typed.
    let run = run_in(tmp.path(), &["configs/c.yaml", "--set", "data.root=typed"]);
    run.assert_user_error(&["typed"]);
    assert!(!run.stderr().contains("configs/typed"), "{}", run.stderr());
    let cwd = tmp.path().canonicalize().unwrap().join("typed");
    assert!(run.stderr().contains(cwd.to_str().unwrap()), "{}", run.stderr());
}

#[test]
fn the_glyph_config_without_its_data_names_the_generator_and_its_python() {
    let tmp = tempdir().unwrap();
    std::fs::create_dir_all(tmp.path().join("configs")).unwrap();
    let cfg = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/configs/multimnist_glyphs.yaml")).unwrap();
    write(&tmp.path().join("configs"), "multimnist_glyphs.yaml", &cfg);
    run_in(tmp.path(), &["configs/multimnist_glyphs.yaml"]).assert_user_error(&[
        ".venv/bin/python scripts/make_glyph_digits.py",
        "data/glyph-digits --train 12000 --test 2000",
    ]);
    assert!(!tmp.path().join("runs").exists());
}

#[test]
fn resnet_with_one_width_shows_its_four_stages() {
    let tmp = tempdir().unwrap();
    let text = tiny_config("r").replace("kind: conv, widths: [4, 8], depth: 1", "kind: resnet, widths: [2], depth: 1");
    write(tmp.path(), "r.yaml", &text);
    let run = run_in(tmp.path(), &["r.yaml", "--set", "train.max_steps=1"]);
    run.assert_ok();
    assert!(run.stdout().contains("model    resnet backbone 2-4-8-16 (base width 2), "), "{}", run.stdout());
}

/// A 16×16 image of stripes, as PNG pixels.
fn stripes(w: u32, h: u32) -> image::RgbImage {
    image::RgbImage::from_fn(w, h, |x, y| {
        image::Rgb([(x * 16) as u8, (y * 16) as u8, if (x / 4) % 2 == 0 { 220 } else { 30 }])
    })
}

#[test]
fn predict_writes_class_ids_and_says_what_it_resized() {
    let tmp = tempdir().unwrap();
    write(tmp.path(), "tiny.yaml", &tiny_config("q"));
    run_in(tmp.path(), &["tiny.yaml", "--set", "train.epochs=1"]).assert_ok();
    std::fs::create_dir_all(tmp.path().join("imgs")).unwrap();
    let img = stripes(16, 16);
    img.save(tmp.path().join("imgs/a.png")).unwrap();
    image::imageops::resize(&img, 24, 20, image::imageops::FilterType::Nearest)
        .save(tmp.path().join("imgs/b.png"))
        .unwrap();

    // --output is --out's other name.
    let run = run_in(tmp.path(), &["predict", "runs/q", "--images", "imgs", "--output", "p", "--checkpoint", "latest"]);
    run.assert_ok();
    assert!(run.stdout().contains("resized 1 of 2 images to the model's 16×16 input"), "{}", run.stdout());
    let csv = std::fs::read_to_string(tmp.path().join("p/predictions.csv")).unwrap();
    assert!(csv.starts_with("file,kind,kind_probability\n"), "{csv}");

    // The mask's pixel values are the class ids: the argmax of the seg head on the same input.
    let decoder =
        png::Decoder::new(std::io::BufReader::new(std::fs::File::open(tmp.path().join("p/seg/a.png")).unwrap()));
    let mut reader = decoder.read_info().unwrap();
    assert_eq!(reader.info().color_type, png::ColorType::Indexed);
    let palette = reader.info().palette.as_ref().unwrap().to_vec();
    assert_eq!(&palette[3 * 5..3 * 6], &mtl::tasks::class_colour(5), "class i is drawn in its colour");
    let mut ids = vec![0; reader.output_buffer_size().unwrap()];
    reader.next_frame(&mut ids).unwrap();
    let (mean, std) = mtl::data::dataset_named("shapes").unwrap().normalization();
    let pixels: Vec<f32> = (0..3)
        .flat_map(|c| img.pixels().map(move |p| ((p[c] as f64 / 255.0 - mean[c]) / std[c]) as f32).collect::<Vec<_>>())
        .collect();
    let x = tch::Tensor::from_slice(&pixels).view([1, 3, 16, 16]);
    tch::Tensor::write_safetensors(&[("input", x)], tmp.path().join("in.safetensors")).unwrap();
    run_in(
        tmp.path(),
        &["predict", "runs/q", "--input", "in.safetensors", "--out", "o.safetensors", "--checkpoint", "latest"],
    )
    .assert_ok();
    let outputs = mtl::checkpoint::read_tensors(&tmp.path().join("o.safetensors")).unwrap();
    let seg = &outputs.iter().find(|(n, _)| n == "seg").unwrap().1;
    let argmax: Vec<i64> = Vec::try_from(seg.argmax(1, false).reshape([-1])).unwrap();
    assert_eq!(ids.iter().map(|&v| v as i64).collect::<Vec<_>>(), argmax);

    // Only per-pixel tasks: no CSV of file names alone.
    run_in(tmp.path(), &["predict", "runs/q", "--images", "imgs", "--out", "s", "--task", "seg"]).assert_ok();
    assert!(tmp.path().join("s/seg/b.png").is_file() && !tmp.path().join("s/predictions.csv").exists());
}
