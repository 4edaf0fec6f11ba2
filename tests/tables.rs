//! The `table` dataset end to end: CSV and `.npy` tables train binary, classification and
//! value tasks on the MLP under every architecture that takes vectors; the fitted mapping is
//! recorded in config.yaml; resuming mid-epoch is exact; and every bad table is one line,
//! exit 2, naming the file, column and row, with nothing written.
mod common;
use common::*;
use std::path::Path;
use tempfile::tempdir;

/// A deterministic impression table: `a` numeric (every 7th missing), `b` numeric, `city`
/// categorical (8 values, skewed), `click` = whether a + [city is c1 or c2] is large.
fn ctr_csv(rows: usize, seed: u64) -> String {
    let mut s = String::from("a,b,city,click,score\n");
    let mut x = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
    let mut next = || {
        x = x.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        (x >> 33) as f64 / (1u64 << 31) as f64
    };
    for r in 0..rows {
        let a = next() * 4.0 - 2.0;
        let b = next() * 10.0;
        let city = ((next() * next()) * 8.0) as usize;
        let click = (a + if city == 1 || city == 2 { 1.5 } else { 0.0 } + 0.3 * (next() - 0.5) > 0.5) as u8;
        let a_text = if r % 7 == 3 { String::new() } else { format!("{a:.4}") };
        s += &format!("{a_text},{b:.3},c{city},{click},{:.3}\n", a * 2.0 + b);
    }
    s
}

fn table_config(name: &str, arch: &str, extra_tasks: &str) -> String {
    format!(
        r#"name: {name}
seed: 5
device: cpu
threads: 1
data:
  dataset: table
  train: train.csv
  val: val.csv
  features:
    numeric: [a, b]
    categorical: {{city: {{dim: 3, max_vocab: 6}}}}
  batch_size: 32
  eval_batch_size: 50
  augment: {{crop_padding: 0, hflip: false}}
model:
  architecture: {arch}
  backbone: {{kind: mlp, widths: [16, 8], norm: none}}
tasks:
  - {{name: ctr, kind: binary, target: click}}
{extra_tasks}optim: {{kind: adamw, lr: 0.02, weight_decay: 0.0}}
schedule: {{kind: constant}}
train: {{epochs: 4, eval_every: 2, log_every: 5}}
checkpoint: {{every: 2, monitor: ctr.auc, mode: max}}
"#
    )
}

fn fixtures(dir: &Path) {
    write(dir, "train.csv", &ctr_csv(400, 1));
    write(dir, "val.csv", &ctr_csv(150, 2));
}

fn last_eval(run: &Path) -> serde_json::Value {
    metric_rows(run).into_iter().rfind(|r| r["split"] == "val").expect("an evaluation")
}

/// Binary and value tasks on a CSV table train to a useful AUC under hps and mmoe; the
/// fitted standardization and vocabulary land in config.yaml (train statistics, the most
/// frequent values first, a missing indicator for `a`), and evaluating the run's config
/// reproduces the metrics.
#[test]
fn csv_table_trains_binary_and_value_tasks_and_records_its_mapping() {
    let tmp = tempdir().unwrap();
    fixtures(tmp.path());
    let value = "  - {name: score, kind: value, target: score}\n";
    for arch in ["{kind: hps}", "{kind: mmoe, experts: 3}"] {
        write(tmp.path(), "t.yaml", &table_config("t", arch, value));
        run_in(tmp.path(), &["t.yaml", "--run-dir", "run"]).assert_ok();
        let eval = last_eval(&tmp.path().join("run"));
        let auc = eval["ctr.auc"].as_f64().unwrap();
        assert!(auc > 0.85, "{arch}: ctr.auc {auc}");
        assert!(eval["score.mse"].as_f64().unwrap() < 30.0, "{arch}: {eval}");
        let cfg: serde_yaml::Value =
            serde_yaml::from_str(&std::fs::read_to_string(tmp.path().join("run/config.yaml")).unwrap()).unwrap();
        let fitted = &cfg["data"]["features"]["fitted"];
        assert_eq!(fitted["numeric"][0]["column"], "a");
        assert_eq!(fitted["numeric"][0]["indicator"], true);
        assert_eq!(fitted["numeric"][1]["indicator"], false);
        let vocab = fitted["categorical"][0]["vocab"].as_sequence().unwrap();
        assert_eq!(vocab.len(), 6, "max_vocab keeps 6 of 8 cities");
        assert_eq!(vocab[0], "c0", "the most frequent first");
        let mean_b = fitted["numeric"][1]["mean"][0].as_f64().unwrap();
        assert!((mean_b - 5.0).abs() < 0.6, "train mean of b: {mean_b}");
        std::fs::remove_dir_all(tmp.path().join("run")).unwrap();
    }
}

/// `.npy` arrays (a 2-d feature column and label vectors), the tutorial's layout: two 10-way
/// classification heads learn above chance.
#[test]
fn npy_arrays_train_the_tutorial_example() {
    let tmp = tempdir().unwrap();
    let d = tmp.path();
    let npy = |name: &str, shape: &[usize], descr: &str, data: Vec<u8>| {
        let dims = shape.iter().map(|s| s.to_string()).collect::<Vec<_>>().join(", ");
        let dims = if shape.len() == 1 { format!("{dims},") } else { dims };
        let mut header = format!("{{'descr': '{descr}', 'fortran_order': False, 'shape': ({dims}), }}");
        while (10 + header.len() + 1) % 64 != 0 {
            header.push(' ');
        }
        header.push('\n');
        let mut bytes = b"\x93NUMPY\x01\x00".to_vec();
        bytes.extend((header.len() as u16).to_le_bytes());
        bytes.extend(header.as_bytes());
        bytes.extend(data);
        std::fs::write(d.join(name), bytes).unwrap();
    };
    for (split, n, seed) in [("train", 600usize, 1u32), ("val", 200, 2)] {
        let mut x = Vec::new();
        let (mut y1, mut y2) = (Vec::new(), Vec::new());
        let mut s = seed;
        for _ in 0..n {
            let row: Vec<f32> = (0..20)
                .map(|_| {
                    s = s.wrapping_mul(1664525).wrapping_add(1013904223);
                    (s >> 8) as f32 / (1 << 24) as f32
                })
                .collect();
            // Class = which of the first (second) 10 entries is largest.
            let argmax = |v: &[f32]| v.iter().enumerate().fold(0, |b, (i, &x)| if x > v[b] { i } else { b }) as i64;
            y1.extend(argmax(&row[..10]).to_le_bytes());
            y2.extend(argmax(&row[10..]).to_le_bytes());
            x.extend(row.iter().flat_map(|v| v.to_le_bytes()));
        }
        npy(&format!("x_{split}.npy"), &[n, 20], "<f4", x);
        npy(&format!("y1_{split}.npy"), &[n], "<i8", y1);
        npy(&format!("y2_{split}.npy"), &[n], "<i8", y2);
    }
    let cfg = r#"name: tut
seed: 1
device: cpu
threads: 1
data:
  dataset: table
  train: {x: x_train.npy, y1: y1_train.npy, y2: y2_train.npy}
  val: {x: x_val.npy, y1: y1_val.npy, y2: y2_val.npy}
  features: {numeric: [x]}
  batch_size: 32
  augment: {crop_padding: 0, hflip: false}
model:
  backbone: {kind: mlp, widths: [64], norm: none}
tasks:
  - {name: y1, kind: classification, target: y1}
  - {name: y2, kind: classification, target: y2}
optim: {kind: adamw, lr: 0.01, weight_decay: 0.0}
schedule: {kind: constant}
train: {epochs: 6, eval_every: 6, log_every: 50}
checkpoint: {every: 6, monitor: y1.accuracy, mode: max}
"#;
    write(d, "tut.yaml", cfg);
    run_in(d, &["tut.yaml", "--run-dir", "run"]).assert_ok();
    let eval = last_eval(&d.join("run"));
    for t in ["y1", "y2"] {
        let acc = eval[format!("{t}.accuracy")].as_f64().unwrap();
        assert!(acc > 0.4, "{t}.accuracy {acc} (chance 0.1)");
    }
}

/// Every bad table: exit 2, one line naming the file (and column, row), no run directory.
#[test]
fn bad_tables_are_one_line_exit_2_and_write_nothing() {
    let tmp = tempdir().unwrap();
    let d = tmp.path();
    fixtures(d);
    let good = ctr_csv(60, 3);
    let cases: Vec<(&str, String, &str, Vec<&str>)> = vec![
        // (what, train.csv contents, config edit, needles)
        ("missing column", good.replace("a,b,city", "a,bb,city"), "", vec!["train.csv", "no column 'b'"]),
        (
            "label outside {0, 1}",
            good.lines()
                .enumerate()
                .map(|(i, l)| if i == 5 { l.replace(",0,", ",2,").replace(",1,", ",2,") } else { l.to_string() })
                .collect::<Vec<_>>()
                .join("\n"),
            "",
            vec!["train.csv", "column 'click'", "row 5", "not a binary label"],
        ),
        (
            "missing label",
            good.lines()
                .enumerate()
                .map(|(i, l)| if i == 3 { l.replace(",0,", ",,").replace(",1,", ",,") } else { l.to_string() })
                .collect::<Vec<_>>()
                .join("\n"),
            "",
            vec!["train.csv", "column 'click'", "row 3", "missing"],
        ),
        ("empty file", String::new(), "", vec!["train.csv", "empty"]),
        ("header only", "a,b,city,click,score\n".into(), "", vec!["train.csv", "no rows"]),
        ("different columns", good.replace("score", "points"), "", vec!["val.csv", "'points'", "same columns"]),
        ("column used twice", good.clone(), "numeric: [a, b, a]", vec!["column 'a' is used twice"]),
        ("target is a feature", good.clone(), "numeric: [a, b, click]", vec!["'click' is used twice"]),
        (
            "one categorical value",
            good.replace(",c1,", ",c0,")
                .replace(",c2,", ",c0,")
                .replace(",c3,", ",c0,")
                .replace(",c4,", ",c0,")
                .replace(",c5,", ",c0,")
                .replace(",c6,", ",c0,")
                .replace(",c7,", ",c0,"),
            "",
            vec!["train.csv", "'city'", "only one value"],
        ),
    ];
    for (what, train, edit, needles) in cases {
        write(d, "train.csv", &train);
        let mut cfg = table_config("bad", "{kind: hps}", "");
        if !edit.is_empty() {
            cfg = cfg.replace("numeric: [a, b]", edit);
        }
        write(d, "bad.yaml", &cfg);
        run_in(d, &["bad.yaml", "--run-dir", "run"]).assert_user_error(&needles);
        assert!(!d.join("run").exists(), "{what}: a run directory was written");
    }
}

/// Text where a number belongs names the file, column and row.
#[test]
fn text_in_a_numeric_column_names_its_row() {
    let tmp = tempdir().unwrap();
    let d = tmp.path();
    fixtures(d);
    let bad: Vec<String> = ctr_csv(30, 4)
        .lines()
        .enumerate()
        .map(|(i, l)| if i == 7 { format!("oops,{}", l.split_once(',').unwrap().1) } else { l.to_string() })
        .collect();
    write(d, "train.csv", &(bad.join("\n") + "\n"));
    write(d, "bad.yaml", &table_config("bad", "{kind: hps}", ""));
    run_in(d, &["bad.yaml", "--run-dir", "run"]).assert_user_error(&[
        "train.csv",
        "column 'a'",
        "row 7",
        "'oops' is not a number",
    ]);
    assert!(!d.join("run").exists());
}

/// Stopping mid-epoch and resuming gives the uninterrupted run's weights and metrics, bit for
/// bit (MMoE over embeddings and a missing-value indicator).
#[test]
fn resume_mid_epoch_is_bit_identical() {
    let tmp = tempdir().unwrap();
    let d = tmp.path();
    fixtures(d);
    write(d, "r.yaml", &table_config("r", "{kind: mmoe, experts: 2}", ""));
    run_in(d, &["r.yaml", "--run-dir", "straight"]).assert_ok();
    // 400 rows, batch 32: 12 steps an epoch; step 17 is mid-epoch 2.
    run_in(d, &["r.yaml", "--run-dir", "paused", "--set", "train.max_steps=17"]).assert_ok();
    assert!(checkpoint_pointer(&d.join("paused"), "LATEST").ends_with("step-000017"));
    run_in(d, &["r.yaml", "--run-dir", "paused", "--resume"]).assert_ok();
    assert_eq!(latest_weights(&d.join("straight")), latest_weights(&d.join("paused")));
    assert_eq!(metric_rows(&d.join("straight")), metric_rows(&d.join("paused")));
    // What a table run cannot do is refused in one line, writing nothing.
    std::fs::create_dir(d.join("imgs")).unwrap();
    run_in(d, &["export", "straight", "--torchscript", "m.pt", "--size", "4"]).assert_user_error(&["--size", "table"]);
    run_in(d, &["predict", "straight", "--images", "imgs", "--out", "p"]).assert_user_error(&["--images", "table"]);
    run_in(d, &["predict", "straight", "--table", "val.csv", "--out", "p.txt"])
        .assert_user_error(&["p.txt", ".parquet"]);
    assert!(!d.join("m.pt").exists() && !d.join("p").exists() && !d.join("p.txt").exists());
}

/// `data.max_memory_mb` below the mapped rows (550 × 32 bytes here): the table streams.
const STREAM: [&str; 2] = ["--set", "data.max_memory_mb=0.01"];

fn fitted(run: &Path) -> serde_yaml::Value {
    let cfg: serde_yaml::Value =
        serde_yaml::from_str(&std::fs::read_to_string(run.join("config.yaml")).unwrap()).unwrap();
    cfg["data"]["features"]["fitted"].clone()
}

/// A table over `data.max_memory_mb` streams: its mapping is fitted chunk by chunk to the
/// numbers the in-memory run fits, its layout is recorded, training is deterministic, and
/// stopping mid-epoch then resuming gives the uninterrupted run's weights and metrics, bit for
/// bit. A resume that would change the layout (another limit) is refused in one line.
#[test]
fn streamed_table_fits_the_same_mapping_and_resumes_mid_epoch_exactly() {
    let tmp = tempdir().unwrap();
    let d = tmp.path();
    fixtures(d);
    write(d, "r.yaml", &table_config("r", "{kind: mmoe, experts: 2}", ""));
    let run = |dir: &str, extra: &[&str]| run_in(d, &[&["r.yaml", "--run-dir", dir][..], &STREAM, extra].concat());
    run_in(d, &["r.yaml", "--run-dir", "memory", "--set", "train.max_steps=1"]).assert_ok();
    run("straight", &[]).assert_ok();
    let (memory, streamed) = (fitted(&d.join("memory")), fitted(&d.join("straight")));
    assert!(memory.get("stream").is_none(), "a table that fits is held in memory");
    assert!(streamed["stream"]["window_rows"].as_u64().unwrap() < 400, "{streamed:?}");
    for part in ["numeric", "categorical"] {
        assert_eq!(memory[part], streamed[part], "{part}");
    }
    run("again", &[]).assert_ok();
    assert_eq!(latest_weights(&d.join("straight")), latest_weights(&d.join("again")));
    // 400 rows, batch 32: 12 steps an epoch; step 17 is mid-epoch 2.
    run("paused", &["--set", "train.max_steps=17"]).assert_ok();
    assert!(checkpoint_pointer(&d.join("paused"), "LATEST").ends_with("step-000017"));
    run_in(d, &["r.yaml", "--run-dir", "paused", "--resume"]).assert_user_error(&["data.features.fitted.stream"]);
    run("paused", &["--resume"]).assert_ok();
    assert_eq!(latest_weights(&d.join("straight")), latest_weights(&d.join("paused")));
    assert_eq!(metric_rows(&d.join("straight")), metric_rows(&d.join("paused")));
}

/// Two ranks streaming a table read disjoint halves of every global batch (the rows one
/// process reads at twice the batch; the order is unit-tested in `data::table::stream`), so
/// they train as that process does.
#[test]
fn two_ranks_stream_a_table_as_one_process_at_twice_the_batch() {
    let tmp = tempdir().unwrap();
    let d = tmp.path();
    fixtures(d);
    write(d, "r.yaml", &table_config("r", "{kind: hps}", "").replace("epochs: 4", "epochs: 2"));
    let one = run_in(d, &[&["r.yaml", "--run-dir", "one", "--set", "data.batch_size=64"][..], &STREAM].concat());
    one.assert_ok();
    let two = run_in(d, &[&["r.yaml", "--run-dir", "two", "--nproc", "2"][..], &STREAM].concat());
    two.assert_ok();
    assert!(two.stdout().contains("× 2 ranks (Gloo), global batch 64"), "{}", two.stdout());
    assert!(fitted(&d.join("two")).get("stream").is_some());
    let diff = relative_difference(&d.join("one"), &d.join("two"));
    assert!(diff <= 1e-5, "2 ranks × 32 differ from 1 × 64 by {diff:e}");
}

/// While streaming, every row is checked before training starts: text in a numeric column or
/// a bad label in a late chunk of either split is one line naming the file, column and row,
/// exit 2, and no run directory.
#[test]
fn bad_rows_in_a_streamed_table_are_found_before_training() {
    let tmp = tempdir().unwrap();
    let d = tmp.path();
    fixtures(d);
    write(d, "bad.yaml", &table_config("bad", "{kind: hps}", ""));
    let edit = |text: String, row: usize, f: &dyn Fn(&str) -> String| -> String {
        let lines: Vec<String> =
            text.lines().enumerate().map(|(i, l)| if i == row { f(l) } else { l.to_string() }).collect();
        lines.join("\n") + "\n"
    };
    let oops = |l: &str| format!("oops,{}", l.split_once(',').unwrap().1);
    let cases: Vec<(&str, String, String, Vec<&str>)> = vec![
        (
            "text in train",
            edit(ctr_csv(400, 1), 350, &oops),
            ctr_csv(150, 2),
            vec!["train.csv", "column 'a'", "row 350"],
        ),
        ("text in val", ctr_csv(400, 1), edit(ctr_csv(150, 2), 140, &oops), vec!["val.csv", "column 'a'", "row 140"]),
        (
            "label in val",
            ctr_csv(400, 1),
            edit(ctr_csv(150, 2), 120, &|l| l.replace(",0,", ",7,").replace(",1,", ",7,")),
            vec!["val.csv", "column 'click'", "row 120", "not a binary label"],
        ),
    ];
    for (what, train, val, needles) in cases {
        write(d, "train.csv", &train);
        write(d, "val.csv", &val);
        run_in(d, &[&["bad.yaml", "--run-dir", "run"][..], &STREAM].concat()).assert_user_error(&needles);
        assert!(!d.join("run").exists(), "{what}: a run directory was written");
    }
}

/// Census-Income as published (gzipped, no header, `?` for missing, 42 fields): a small file of
/// that format trains its two binary tasks with the default features; income over 50k and
/// "Never married" are read from their columns.
#[test]
fn census_income_reads_the_published_format() {
    use std::io::Write;
    let tmp = tempdir().unwrap();
    let root = tmp.path().join("census");
    std::fs::create_dir(&root).unwrap();
    for (file, n, seed) in [("census-income.data.gz", 300u64, 1u64), ("census-income.test.gz", 120, 2)] {
        let mut text = String::new();
        for r in 0..n {
            let h = (r * 2654435761 + seed * 97) % 1000;
            let age = 18 + h % 60;
            let rich = age > 45 && h % 3 != 0;
            let single = age < 30;
            let mut fields: Vec<String> = (0..42).map(|i| format!(" v{}", (h + i) % 4)).collect();
            for (i, v) in [(0, age), (5, h % 50), (16, h % 7), (17, 0), (18, h % 11), (30, h % 5), (39, h % 52)] {
                fields[i] = format!(" {v}");
            }
            fields[4] =
                if rich { " Masters degree(MA MS MEng MEd MSW MBA)".into() } else { " High school graduate".into() };
            fields[7] = if single { " Never married".into() } else { " Married-civilian spouse present".into() };
            fields[21] = [" ?", " Utah", " Ohio"][(r % 3) as usize].into();
            fields[24] = " 1700.09".into();
            fields[41] = if rich { " 50000+.".into() } else { " - 50000.".into() };
            text += &(fields.join(",") + "\n");
        }
        let mut gz =
            flate2::write::GzEncoder::new(std::fs::File::create(root.join(file)).unwrap(), flate2::Compression::fast());
        gz.write_all(text.as_bytes()).unwrap();
        gz.finish().unwrap();
    }
    let cfg = r#"name: census
seed: 1
device: cpu
threads: 1
data:
  dataset: census_income
  root: census
  batch_size: 32
  augment: {crop_padding: 0, hflip: false}
model:
  architecture: {kind: mmoe, experts: 2}
  backbone: {kind: mlp, widths: [16], norm: none}
tasks:
  - {name: income, kind: binary, target: income_50k}
  - {name: marital, kind: binary, target: never_married}
optim: {kind: adamw, lr: 0.02, weight_decay: 0.0}
schedule: {kind: constant}
train: {epochs: 6, eval_every: 6, log_every: 50}
checkpoint: {every: 6, monitor: income.auc, mode: max}
"#;
    write(tmp.path(), "c.yaml", cfg);
    run_in(tmp.path(), &["c.yaml", "--run-dir", "run"]).assert_ok();
    let eval = last_eval(&tmp.path().join("run"));
    for t in ["income", "marital"] {
        let auc = eval[format!("{t}.auc")].as_f64().unwrap();
        assert!(auc > 0.8, "{t}.auc {auc}");
    }
    let config = std::fs::read_to_string(tmp.path().join("run/config.yaml")).unwrap();
    assert!(!config.contains("column: marital_stat") && !config.contains("column: instance_weight"), "{config}");
}
