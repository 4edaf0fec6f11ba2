//! End-to-end: every real-format loader, through the binary, on tiny files this test writes in
//! exactly the published format (MNIST idx, plain and gzipped; Oxford-IIIT Pet JPEGs, trimap
//! PNGs and list files; NYUv2 `.npy` v1.0 files with hand-written headers; a user folder of
//! PNGs, palette masks and labels.csv). Each trains briefly and its training loss must fall;
//! a malformed file of each kind is refused with exit code 2 and one `error:` line naming it.
mod common;
use common::*;
use std::io::Write;
use std::path::Path;
use tempfile::tempdir;

/// The training losses of `task`, in logging order.
fn train_losses(run: &Path, task: &str) -> Vec<f64> {
    read_lines(&run.join("metrics.jsonl"))
        .iter()
        .filter(|r| r["split"] == "train")
        .map(|r| r[format!("{task}.loss")].as_f64().unwrap_or_else(|| panic!("{task}.loss missing in {r}")))
        .collect()
}

/// The mean of the last two logged losses is below the mean of the first two.
fn assert_loss_falls(run: &Path, task: &str) {
    let l = train_losses(run, task);
    assert!(l.len() >= 4, "{task}: too few log rows: {l:?}");
    let (first, last) = ((l[0] + l[1]) / 2.0, (l[l.len() - 1] + l[l.len() - 2]) / 2.0);
    assert!(last < 0.9 * first, "{task}: training loss did not fall: {l:?}");
}

fn last_val(run: &Path) -> serde_json::Value {
    read_lines(&run.join("metrics.jsonl")).into_iter().rfind(|r| r["split"] == "val").expect("a val row")
}

fn weights(run: &Path) -> Vec<u8> {
    std::fs::read(checkpoint_pointer(run, "LATEST").join("model.safetensors")).unwrap()
}

fn rows_without_speed(run: &Path) -> Vec<serde_json::Value> {
    read_lines(&run.join("metrics.jsonl"))
        .into_iter()
        .map(|mut r| {
            r.as_object_mut().unwrap().remove("images_per_second");
            r
        })
        .collect()
}

fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    e.write_all(bytes).unwrap();
    e.finish().unwrap()
}

/// Small deterministic noise.
fn noise(i: usize, p: usize) -> u8 {
    ((i * 7919 + p * 104_729) % 23) as u8
}

// --- MultiMNIST ---------------------------------------------------------------------------

/// idx bytes: magic 0x0000080N, N big-endian u32 sizes, the uint8 data.
fn idx(dims: &[u32], data: &[u8]) -> Vec<u8> {
    let mut out = vec![0, 0, 0x08, dims.len() as u8];
    for d in dims {
        out.extend(d.to_be_bytes());
    }
    out.extend(data);
    out
}

/// Digit k: a horizontal bar at rows 2k..2k+3 and a vertical bar at column 2k + 3.
fn digit(k: usize, i: usize) -> Vec<u8> {
    (0..784)
        .map(|p| {
            let (y, x) = (p / 28, p % 28);
            let on =
                ((2 * k..2 * k + 3).contains(&y) && (4..24).contains(&x)) || (x == 2 * k + 3 && (4..24).contains(&y));
            if on {
                230 + noise(i, p)
            } else {
                noise(i, p)
            }
        })
        .collect()
}

/// train (gzipped, as published) and t10k (uncompressed) files with `n` digits each.
fn write_mnist(dir: &Path, n: usize) {
    std::fs::create_dir_all(dir).unwrap();
    for (prefix, gz) in [("train", true), ("t10k", false)] {
        let labels: Vec<u8> = (0..n).map(|i| (i * 3 % 10) as u8).collect();
        let pixels: Vec<u8> = labels.iter().enumerate().flat_map(|(i, &k)| digit(k as usize, i)).collect();
        for (name, bytes) in [
            (format!("{prefix}-images-idx3-ubyte"), idx(&[n as u32, 28, 28], &pixels)),
            (format!("{prefix}-labels-idx1-ubyte"), idx(&[n as u32], &labels)),
        ] {
            if gz {
                std::fs::write(dir.join(format!("{name}.gz")), gzip(&bytes)).unwrap();
            } else {
                std::fs::write(dir.join(name), bytes).unwrap();
            }
        }
    }
}

fn multimnist_config(backbone: &str) -> String {
    format!(
        r#"name: mm
seed: 1
device: cpu
threads: 1
data: {{dataset: multimnist, root: mnist, image_size: 28, grayscale: true, batch_size: 20, eval_batch_size: 50}}
model:
  backbone: {backbone}
tasks:
  - {{name: left, kind: classification, target: left, classes: 10}}
  - {{name: right, kind: classification, target: right, classes: 10}}
optim: {{kind: adamw, lr: 0.003}}
train: {{epochs: 6, log_every: 3}}
checkpoint: {{monitor: left.accuracy}}
"#
    )
}

#[test]
fn multimnist_trains_from_idx_files() {
    let tmp = tempdir().unwrap();
    write_mnist(&tmp.path().join("mnist"), 100);
    write(tmp.path(), "mm.yaml", &multimnist_config("{kind: mlp, widths: [64], norm: none}"));
    run_in(tmp.path(), &["mm.yaml"]).assert_ok();
    let run = tmp.path().join("runs/mm");
    assert_loss_falls(&run, "left");
    assert_loss_falls(&run, "right");
    assert!(last_val(&run)["right.accuracy"].is_number());
}

#[test]
fn multimnist_lenet_config_trains() {
    let tmp = tempdir().unwrap();
    write_mnist(&tmp.path().join("mnist"), 100);
    let cfg = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/configs/multimnist_lenet.yaml")).unwrap();
    write(tmp.path(), "lenet.yaml", &cfg);
    let run = run_in(
        tmp.path(),
        &[
            "lenet.yaml",
            "--set",
            "data.root=mnist",
            "--set",
            "device=cpu",
            "--set",
            "threads=1",
            "--set",
            "data.batch_size=20",
            "--set",
            "train.epochs=6",
            "--set",
            "train.log_every=3",
            "--set",
            "optim.lr=0.003",
        ],
    );
    run.assert_ok();
    let runs: Vec<_> = std::fs::read_dir(tmp.path().join("runs")).unwrap().flatten().collect();
    assert_eq!(runs.len(), 1);
    assert_loss_falls(&runs[0].path(), "left");
}

#[test]
fn multimnist_malformed_files_and_memory_limit_are_refused() {
    let tmp = tempdir().unwrap();
    let root = tmp.path().join("mnist");
    write_mnist(&root, 20);
    write(tmp.path(), "mm.yaml", &multimnist_config("{kind: mlp, widths: [16], norm: none}"));
    run_in(tmp.path(), &["mm.yaml", "--set", "data.max_memory_mb=0.01"]).assert_user_error(&[
        "data.max_memory_mb",
        "0.031 MB",
        "cannot be streamed",
    ]);
    // A gzipped idx file cut short.
    let gz = root.join("train-images-idx3-ubyte.gz");
    let bytes = std::fs::read(&gz).unwrap();
    std::fs::write(&gz, &bytes[..bytes.len() / 2]).unwrap();
    run_in(tmp.path(), &["mm.yaml"]).assert_user_error(&["train-images-idx3-ubyte.gz"]);
    // An idx header whose sizes do not match the data.
    std::fs::remove_file(&gz).unwrap();
    std::fs::write(root.join("train-images-idx3-ubyte"), idx(&[21, 28, 28], &vec![0; 20 * 784])).unwrap();
    run_in(tmp.path(), &["mm.yaml"]).assert_user_error(&["train-images-idx3-ubyte", "need 16464"]);
    assert!(
        !tmp.path().join("runs/mm/checkpoints").exists()
            || std::fs::read_dir(tmp.path().join("runs/mm/checkpoints")).unwrap().next().is_none()
    );
}

// --- Oxford-IIIT Pet ----------------------------------------------------------------------

/// (name prefix, CLASS-ID, SPECIES, BREED-ID): capitalised names are cats.
const BREEDS: [(&str, i64, i64, i64); 4] =
    [("Abyssinian", 1, 1, 1), ("american_bulldog", 2, 2, 1), ("Bengal", 6, 1, 2), ("boxer", 9, 2, 2)];

/// `per_breed` train and `per_breed / 2` val images of each breed: 24×20 JPEGs with a
/// breed-coloured square on a grey background, and the matching trimap (1 inside, 3 on its
/// edge, 2 outside).
fn write_pet(root: &Path, per_breed: usize) {
    let ann = root.join("annotations");
    std::fs::create_dir_all(ann.join("trimaps")).unwrap();
    std::fs::create_dir_all(root.join("images")).unwrap();
    let mut list = String::from(
        "#Image CLASS-ID SPECIES BREED ID\n#ID: 1:37 Class ids\n#SPECIES: 1:Cat 2:Dog\n#BREED ID: 1-25:Cat 1:12:Dog\n\
         #All images with 1st letter as captial are cat images\n#images with small first letter are dog images\n",
    );
    let (mut trainval, mut test) = (String::new(), String::new());
    let colours = [[220u8, 40, 40], [40, 200, 40], [40, 40, 220], [220, 200, 40]];
    for (b, (prefix, class, species, breed)) in BREEDS.iter().enumerate() {
        for n in 1..=per_breed + per_breed / 2 {
            let name = format!("{prefix}_{n}");
            let line = format!("{name} {class} {species} {breed}\n");
            list += &line;
            if n <= per_breed { &mut trainval } else { &mut test }.push_str(&line);
            let (x0, y0) = (2 + (n * 5) % 10, 2 + (n * 3) % 8);
            let inside = |x: u32, y: u32| (x0..x0 + 10).contains(&(x as usize)) && (y0..y0 + 9).contains(&(y as usize));
            let edge = |x: u32, y: u32| {
                inside(x, y) && (x as usize == x0 || x as usize == x0 + 9 || y as usize == y0 || y as usize == y0 + 8)
            };
            let img = image::RgbImage::from_fn(24, 20, |x, y| {
                if inside(x, y) {
                    image::Rgb(colours[b])
                } else {
                    image::Rgb([120, 120, 120])
                }
            });
            img.save(root.join("images").join(format!("{name}.jpg"))).unwrap();
            let tri = image::GrayImage::from_fn(24, 20, |x, y| {
                image::Luma([if edge(x, y) {
                    3
                } else if inside(x, y) {
                    1
                } else {
                    2
                }])
            });
            tri.save(ann.join("trimaps").join(format!("{name}.png"))).unwrap();
        }
    }
    std::fs::write(ann.join("list.txt"), list).unwrap();
    std::fs::write(ann.join("trainval.txt"), trainval).unwrap();
    std::fs::write(ann.join("test.txt"), test).unwrap();
}

fn pet_config(extra_data: &str) -> String {
    format!(
        r#"name: pet
seed: 2
device: cpu
threads: 1
data:
  dataset: pet
  root: pet
  image_size: 16
  batch_size: 4
  eval_batch_size: 6
  decode_threads: 2
  augment: {{hflip: true, crop_padding: 1, max_scale: 1.25}}
{extra_data}
model:
  backbone: {{kind: conv, widths: [8, 16]}}
tasks:
  - {{name: breed, kind: classification, target: breed, classes: 37}}
  - {{name: species, kind: classification, target: species, classes: 2}}
  - {{name: trimap, kind: segmentation, target: trimap, classes: 3}}
optim: {{kind: adamw, lr: 0.01}}
train: {{epochs: 8, log_every: 4}}
checkpoint: {{monitor: trimap.miou}}
"#
    )
}

#[test]
fn pet_trains_and_streaming_gives_the_same_run() {
    let tmp = tempdir().unwrap();
    write_pet(&tmp.path().join("pet"), 4);
    write(tmp.path(), "memory.yaml", &pet_config(""));
    let memory = run_in(tmp.path(), &["memory.yaml", "--run-dir", "memory"]);
    memory.assert_ok();
    let out = memory.stderr() + &memory.stdout();
    assert!(!out.contains("streaming"), "{out}");
    let run = tmp.path().join("memory");
    for task in ["breed", "species", "trimap"] {
        assert_loss_falls(&run, task);
    }
    let val = last_val(&run);
    assert!(val["trimap.miou"].as_f64().unwrap() > 0.3, "{val}");

    // 0.001 MB is less than the 16 train + 8 val samples take: the same data streams from
    // disk through the decode threads, and the run is the same bit for bit.
    write(tmp.path(), "stream.yaml", &pet_config("  max_memory_mb: 0.001\n  prefetch_batches: 3"));
    let streamed = std::process::Command::new(binary())
        .args(["stream.yaml", "--run-dir", "stream"])
        .current_dir(tmp.path())
        .env("RUST_LOG", "info")
        .output()
        .unwrap();
    let log = String::from_utf8_lossy(&streamed.stderr).into_owned() + &String::from_utf8_lossy(&streamed.stdout);
    assert!(streamed.status.success(), "{log}");
    assert!(log.contains("more than data.max_memory_mb 0.001") && log.contains("streaming from disk"), "{log}");
    assert_eq!(weights(&run), weights(&tmp.path().join("stream")), "streamed training differs from in-memory training");
    assert_eq!(rows_without_speed(&run), rows_without_speed(&tmp.path().join("stream")));
}

/// Streamed from disk and sharded over two ranks (each decoding only its share of every global
/// batch, zoom included), Pet trains as one process with the split in memory at twice the batch.
#[test]
fn pet_streamed_on_two_ranks_trains_as_one_process_in_memory() {
    let tmp = tempdir().unwrap();
    write_pet(&tmp.path().join("pet"), 4);
    // No crop padding (its ignored pixels would weigh the per-rank trimap means differently).
    let cfg =
        |extra: &str| pet_config(extra).replace("crop_padding: 1", "crop_padding: 0").replace("epochs: 8", "epochs: 3");
    write(tmp.path(), "memory.yaml", &cfg(""));
    write(tmp.path(), "stream.yaml", &cfg("  max_memory_mb: 0.001"));
    // The sharding is checked, not the decoder: on these flat-colour JPEGs two ranks drift from
    // one process by 1.1e-6 with zune-jpeg's pixels and by 5.6e-5 with libjpeg-turbo's (rounding
    // amplified through SyncBatchNorm over 3 epochs), so
    // the 1e-5 bound keeps its sensitivity with zune-jpeg. tests/jpeg.rs covers libjpeg-turbo.
    let same = [
        "--set",
        "model.sync_batchnorm=true",
        "--set",
        "speed.channels_last=false",
        "--set",
        "data.jpeg_decoder=zune-jpeg",
    ];
    run_in(tmp.path(), &[&["memory.yaml", "--run-dir", "one", "--set", "data.batch_size=8"][..], &same].concat())
        .assert_ok();
    run_in(tmp.path(), &[&["stream.yaml", "--run-dir", "two", "--nproc", "2"][..], &same].concat()).assert_ok();
    let diff = relative_difference(&tmp.path().join("one"), &tmp.path().join("two"));
    assert!(diff <= 1e-5, "streamed on two ranks differs by {diff:e}");
}

#[test]
fn pet_streaming_resumes_exactly() {
    let tmp = tempdir().unwrap();
    write_pet(&tmp.path().join("pet"), 4);
    let cfg = pet_config("  max_memory_mb: 0.001").replace("epochs: 8", "epochs: 3");
    write(tmp.path(), "s.yaml", &cfg);
    run_in(tmp.path(), &["s.yaml", "--run-dir", "straight"]).assert_ok();
    // 16 samples / 4 = 4 steps per epoch: pause mid-epoch 2, then finish.
    run_in(tmp.path(), &["s.yaml", "--run-dir", "paused", "--set", "train.max_steps=6"]).assert_ok();
    run_in(tmp.path(), &["s.yaml", "--run-dir", "paused", "--resume"]).assert_ok();
    assert_eq!(weights(&tmp.path().join("straight")), weights(&tmp.path().join("paused")));
    assert_eq!(rows_without_speed(&tmp.path().join("straight")), rows_without_speed(&tmp.path().join("paused")));
}

#[test]
fn pet_bad_files_are_listed_once_and_skipped_or_refused() {
    let tmp = tempdir().unwrap();
    let root = tmp.path().join("pet");
    write_pet(&root, 4);
    std::fs::write(root.join("images/Bengal_2.jpg"), b"\xff\xd8\xff\xe0 not really a jpeg").unwrap();
    image::GrayImage::from_pixel(24, 20, image::Luma([7])).save(root.join("annotations/trimaps/boxer_1.png")).unwrap();
    let tv = std::fs::read_to_string(root.join("annotations/trainval.txt")).unwrap();
    std::fs::write(root.join("annotations/trainval.txt"), tv.replace("Abyssinian_3 1 1 1", "Abyssinian_3 1 2 1"))
        .unwrap();
    write(tmp.path(), "pet.yaml", &pet_config("").replace("epochs: 8", "epochs: 1"));
    let run = run_in(tmp.path(), &["pet.yaml"]);
    run.assert_ok();
    let err = run.stderr();
    for bad in ["images/Bengal_2.jpg", "trimaps/boxer_1.png", "(Abyssinian_3): SPECIES 2"] {
        assert_eq!(err.matches(bad).count(), 1, "{bad} listed once:\n{err}");
    }
    assert!(err.contains("skipped 3 of 16 samples"), "{err}");
    // 13 usable train samples: 3 steps of 4.
    assert!(checkpoint_pointer(&tmp.path().join("runs/pet"), "LATEST").ends_with("step-000003"));

    let refuse = run_in(tmp.path(), &["pet.yaml", "--run-dir", "r", "--set", "data.on_bad_file=refuse"]);
    refuse.assert_user_error(&["(Abyssinian_3): SPECIES 2", "2 more bad sample(s)", "data.on_bad_file"]);
    // A list file that is not there at all.
    std::fs::remove_file(root.join("annotations/test.txt")).unwrap();
    run_in(tmp.path(), &["pet.yaml", "--run-dir", "t"])
        .assert_user_error(&["annotations/test.txt", "scripts/fetch.sh pet"]);
}

// --- NYUv2 ----------------------------------------------------------------------------------

const NH: usize = 16;
const NW: usize = 24;

/// A `.npy` version 1.0 file of little-endian f32, its header written by hand as NumPy does:
/// magic, version, header length, a dict padded with spaces to a multiple of 64 and a newline.
fn npy(shape: &[usize], data: &[f32]) -> Vec<u8> {
    assert_eq!(shape.iter().product::<usize>(), data.len());
    let dims: Vec<String> = shape.iter().map(|d| d.to_string()).collect();
    let mut dict = format!("{{'descr': '<f4', 'fortran_order': False, 'shape': ({}), }}", dims.join(", "));
    while (10 + dict.len() + 1) % 64 != 0 {
        dict.push(' ');
    }
    dict.push('\n');
    let mut out = b"\x93NUMPY\x01\x00".to_vec();
    out.extend((dict.len() as u16).to_le_bytes());
    out.extend(dict.as_bytes());
    for v in data {
        out.extend(v.to_le_bytes());
    }
    out
}

/// Sample i: the left half is class i % 3, the right half class 3 + i % 2; the image shows the
/// class as a colour, depth grows with the class and the row, normals point one way per class;
/// the top row is unlabelled (−1) with no depth (0) and no normal (0, 0, 0).
fn write_nyu_sample(dir: &Path, i: usize) {
    let (mut image, mut label, mut depth, mut normal) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let dirs = [[0.0f32, 0.0, 1.0], [0.6, 0.0, 0.8], [0.0, 0.6, 0.8], [-0.6, 0.0, 0.8], [0.0, -0.6, 0.8]];
    for y in 0..NH {
        for x in 0..NW {
            let class = if x < NW / 2 { i % 3 } else { 3 + i % 2 };
            let c = class as f32 / 5.0;
            image.extend([c, 1.0 - c, (noise(i, y * NW + x) as f32) / 100.0]);
            if y == 0 {
                label.push(-1.0);
                depth.push(0.0);
                normal.extend([0.0, 0.0, 0.0]);
            } else {
                label.push(class as f32);
                depth.push(1.0 + class as f32 * 0.5 + y as f32 * 0.05);
                normal.extend(dirs[class]);
            }
        }
    }
    for (m, bytes) in [
        ("image", npy(&[NH, NW, 3], &image)),
        ("label", npy(&[NH, NW], &label)),
        ("depth", npy(&[NH, NW, 1], &depth)),
        ("normal", npy(&[NH, NW, 3], &normal)),
    ] {
        std::fs::create_dir_all(dir.join(m)).unwrap();
        std::fs::write(dir.join(m).join(format!("{i}.npy")), bytes).unwrap();
    }
}

fn write_nyu(root: &Path, train: usize, val: usize) {
    (0..train).for_each(|i| write_nyu_sample(&root.join("train"), i));
    (0..val).for_each(|i| write_nyu_sample(&root.join("val"), i));
}

fn nyu_config() -> String {
    r#"name: nyu
seed: 4
device: cpu
threads: 1
data:
  dataset: nyuv2
  root: nyu
  image_size: 16
  batch_size: 4
  eval_batch_size: 4
  augment: {hflip: true, max_scale: 1.3}
model:
  backbone: {kind: conv, widths: [8, 16]}
tasks:
  - {name: semantic, kind: segmentation, target: semantic, classes: 13}
  - {name: depth, kind: regression, target: depth}
  - {name: normal, kind: normals, target: normal}
optim: {kind: adamw, lr: 0.01}
train: {epochs: 8, log_every: 3}
checkpoint: {monitor: semantic.miou}
"#
    .to_string()
}

#[test]
fn nyuv2_trains_segmentation_depth_and_normals() {
    let tmp = tempdir().unwrap();
    write_nyu(&tmp.path().join("nyu"), 12, 4);
    write(tmp.path(), "nyu.yaml", &nyu_config());
    run_in(tmp.path(), &["nyu.yaml"]).assert_ok();
    let run = tmp.path().join("runs/nyu");
    for task in ["semantic", "depth", "normal"] {
        assert_loss_falls(&run, task);
    }
    let val = last_val(&run);
    for key in [
        "depth.abs_error",
        "depth.rel_error",
        "normal.mean_angle",
        "normal.median_angle",
        "normal.within_11_25",
        "normal.within_22_5",
        "normal.within_30",
    ] {
        assert!(val[key].as_f64().is_some_and(f64::is_finite), "{key} in {val}");
    }
    let within: Vec<f64> = ["within_11_25", "within_22_5", "within_30"]
        .iter()
        .map(|k| val[format!("normal.{k}")].as_f64().unwrap())
        .collect();
    assert!(within[0] <= within[1] && within[1] <= within[2] && within[2] <= 1.0, "{within:?}");
    // The model's depth and normal outputs, from the checkpoint, through `predict`.
    let out = tmp.path().join("pred");
    std::fs::create_dir_all(tmp.path().join("imgs")).unwrap();
    image::RgbImage::from_pixel(24, 16, image::Rgb([10, 200, 30])).save(tmp.path().join("imgs/a.png")).unwrap();
    run_in(tmp.path(), &["predict", "runs/nyu", "--images", "imgs", "--out", "pred"]).assert_ok();
    let normal = std::fs::read(out.join("normal/a.npy")).unwrap();
    assert!(normal.starts_with(b"\x93NUMPY") && normal.len() > 16 * 16 * 3 * 4, "{}", normal.len());
    assert!(out.join("depth/a.npy").is_file() && out.join("semantic/a.png").is_file());
}

#[test]
fn nyuv2_malformed_arrays_are_refused_naming_the_file() {
    let tmp = tempdir().unwrap();
    let root = tmp.path().join("nyu");
    write_nyu(&root, 4, 2);
    write(tmp.path(), "nyu.yaml", &nyu_config());
    let label = root.join("train/label/2.npy");
    let mut cut = npy(&[NH, NW], &vec![1.0; NH * NW]);
    cut.truncate(cut.len() - 8);
    std::fs::write(&label, cut).unwrap();
    run_in(tmp.path(), &["nyu.yaml"]).assert_user_error(&["train/label/2.npy", "bytes"]);
    std::fs::write(&label, npy(&[NH, NW], &vec![14.0; NH * NW])).unwrap();
    run_in(tmp.path(), &["nyu.yaml"]).assert_user_error(&["train/label/2.npy", "label 14"]);
    std::fs::write(&label, npy(&[NH + 1, NW], &vec![1.0; (NH + 1) * NW])).unwrap();
    run_in(tmp.path(), &["nyu.yaml"]).assert_user_error(&["train/label/2.npy", "shape [17, 24]"]);
    std::fs::write(root.join("val/depth/1.npy"), b"PK\x03\x04").unwrap();
    run_in(tmp.path(), &["nyu.yaml", "--set", "data.on_bad_file=skip"]).assert_ok();
}

// --- A user folder ----------------------------------------------------------------------

/// A palette (indexed) PNG mask as image editors and PASCAL VOC write them.
fn palette_png(path: &Path, w: u32, h: u32, indices: &[u8]) {
    let file = std::io::BufWriter::new(std::fs::File::create(path).unwrap());
    let mut enc = png::Encoder::new(file, w, h);
    enc.set_color(png::ColorType::Indexed);
    enc.set_depth(png::BitDepth::Eight);
    let palette: Vec<u8> =
        (0..=255u8).flat_map(|i| [i.wrapping_mul(37), i.wrapping_mul(91), i.wrapping_mul(53)]).collect();
    enc.set_palette(palette);
    enc.write_header().unwrap().write_image_data(indices).unwrap();
}

/// 15 images of 20×20 in 3 kinds: a kind-coloured square; the mask holds kind + 1 in the
/// square, 0 outside, 255 on the image's first row. labels.csv places 12 in train, 3 in val.
fn write_folder(root: &Path) {
    std::fs::create_dir_all(root.join("images")).unwrap();
    std::fs::create_dir_all(root.join("masks")).unwrap();
    let colours = [[230u8, 30, 30], [30, 230, 30], [30, 30, 230]];
    let mut csv = String::from("file,kind,split\n");
    for i in 0..15 {
        let kind = i % 3;
        let (x0, y0) = (2 + (i * 3) % 8, 3 + (i * 5) % 7);
        let inside = |x: u32, y: u32| (x0..x0 + 9).contains(&(x as usize)) && (y0..y0 + 9).contains(&(y as usize));
        image::RgbImage::from_fn(20, 20, |x, y| image::Rgb(if inside(x, y) { colours[kind] } else { [128, 128, 128] }))
            .save(root.join(format!("images/img_{i:02}.png")))
            .unwrap();
        let mask: Vec<u8> = (0..400u32)
            .map(|p| {
                let (x, y) = (p % 20, p / 20);
                if y == 0 {
                    255
                } else if inside(x, y) {
                    kind as u8 + 1
                } else {
                    0
                }
            })
            .collect();
        palette_png(&root.join(format!("masks/img_{i:02}.png")), 20, 20, &mask);
        csv += &format!("img_{i:02}.png,{kind},{}\n", if i < 12 { "train" } else { "val" });
    }
    std::fs::write(root.join("labels.csv"), csv).unwrap();
}

fn folder_config() -> String {
    r#"name: mine
seed: 5
device: cpu
threads: 1
data: {dataset: folder, root: mine, image_size: 16, batch_size: 4, eval_batch_size: 3, augment: {hflip: true}}
model:
  backbone: {kind: conv, widths: [8, 16]}
tasks:
  - {name: kind, kind: classification, target: kind}
  - {name: mask, kind: segmentation, target: mask}
optim: {kind: adamw, lr: 0.01}
train: {epochs: 10, log_every: 3}
checkpoint: {monitor: mask.miou}
"#
    .to_string()
}

#[test]
fn folder_infers_classes_and_trains() {
    let tmp = tempdir().unwrap();
    write_folder(&tmp.path().join("mine"));
    write(tmp.path(), "mine.yaml", &folder_config());
    run_in(tmp.path(), &["mine.yaml"]).assert_ok();
    let run = tmp.path().join("runs/mine");
    assert_loss_falls(&run, "kind");
    assert_loss_falls(&run, "mask");
    // The inferred counts are in the run's config, so predict and resume rebuild the model.
    let saved = std::fs::read_to_string(run.join("config.yaml")).unwrap();
    assert!(saved.contains("classes: 3") && saved.contains("classes: 4"), "{saved}");
    run_in(tmp.path(), &["eval", "runs/mine"]).assert_ok();
}

#[test]
fn folder_masks_that_do_not_fit_are_clear_errors() {
    let tmp = tempdir().unwrap();
    let root = tmp.path().join("mine");
    write_folder(&root);
    let cfg = folder_config().replace("target: mask}", "target: mask, classes: 4}");
    write(tmp.path(), "mine.yaml", &cfg);
    palette_png(&root.join("masks/img_04.png"), 20, 19, &vec![0; 380]);
    run_in(tmp.path(), &["mine.yaml"]).assert_user_error(&["masks/img_04.png", "20×19", "20×20"]);
    palette_png(&root.join("masks/img_04.png"), 20, 20, &vec![9; 400]);
    run_in(tmp.path(), &["mine.yaml"]).assert_user_error(&["masks/img_04.png", "value 9", "0..4"]);
    image::RgbImage::new(20, 20).save(root.join("masks/img_04.png")).unwrap();
    run_in(tmp.path(), &["mine.yaml"]).assert_user_error(&["masks/img_04.png", "palette PNG"]);
    std::fs::remove_file(root.join("masks/img_04.png")).unwrap();
    run_in(tmp.path(), &["mine.yaml"]).assert_user_error(&["masks/img_04.png", "missing"]);
    palette_png(&root.join("masks/img_04.png"), 20, 20, &vec![0; 400]);
    let csv = std::fs::read_to_string(root.join("labels.csv")).unwrap();
    std::fs::write(root.join("labels.csv"), csv.replace("img_07.png,1,train", "img_07.png,one,train")).unwrap();
    run_in(tmp.path(), &["mine.yaml", "--set", "data.on_bad_file=skip", "--set", "train.epochs=1"]).assert_ok();
    run_in(tmp.path(), &["mine.yaml", "--run-dir", "r2"]).assert_user_error(&["labels.csv line 9", "'one'"]);
    std::fs::write(root.join("labels.csv"), csv).unwrap();
    std::fs::write(root.join("images/img_05.png"), b"\x89PNG\r\n\x1a\n truncated").unwrap();
    run_in(tmp.path(), &["mine.yaml", "--run-dir", "r3"]).assert_user_error(&["images/img_05.png", "decode"]);
}

// --- The example configs ------------------------------------------------------------------

/// Every YAML file in configs/.
fn shipped_configs() -> Vec<std::path::PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("configs");
    let mut paths: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().and_then(|e| e.to_str()) == Some("yaml"))
        .collect();
    paths.sort();
    paths
}

#[test]
fn every_example_config_is_valid() {
    let mut seen = Vec::new();
    for path in shipped_configs() {
        let text = std::fs::read_to_string(&path).unwrap();
        mtl::config::Config::parse(&text, &path.display().to_string(), &[]).unwrap_or_else(|e| panic!("{e:#}"));
        seen.push(path.file_name().unwrap().to_string_lossy().into_owned());
    }
    for name in ["multimnist_mlp.yaml", "multimnist_lenet.yaml", "pet.yaml", "nyuv2.yaml", "folder_example.yaml"] {
        assert!(seen.iter().any(|s| s == name), "configs/{name} missing");
    }
}

/// Configs that read files a script generates (their header says which) in a public dataset's layout.
const GENERATED_DATA: &[&str] = &["multimnist_glyphs.yaml"];

#[test]
fn every_shipped_config_resolves_with_download_set_and_downloads_nothing() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("configs");
    let mut public = Vec::new();
    for path in shipped_configs() {
        let cfg = mtl::config::Config::load(&path, &[]).unwrap_or_else(|e| panic!("{e:#}"));
        let downloadable = mtl::data::dataset_named(&cfg.data.dataset).and_then(|d| d.source()).is_some();
        // A config that reads generated files in a public dataset's layout (the glyph digits
        // in MultiMNIST's) must not download: the files it wants are not the public ones.
        let generated = path.file_name().is_some_and(|n| GENERATED_DATA.contains(&n.to_string_lossy().as_ref()));
        if generated {
            assert!(!cfg.data.download, "{}: generated data is never downloaded", path.display());
        } else if downloadable {
            assert!(cfg.data.download, "{}: a public dataset's config sets data.download: true", path.display());
            for set in [&[][..], &["data.download=false".to_string()][..]] {
                let r = mtl::setup::resolve(mtl::config::Config::load(&path, set).unwrap(), "c", &dir)
                    .unwrap_or_else(|e| panic!("{}: {e:#}", path.display()));
                let root = r.cfg.data.root.unwrap();
                assert!(!root.contains(".."), "{}: root {root} is normalized", path.display());
            }
            public.push(cfg.data.dataset.clone());
        } else {
            let set = ["data.download=true".to_string()];
            let err = mtl::setup::resolve(mtl::config::Config::load(&path, &set).unwrap(), "c", &dir)
                .err()
                .unwrap_or_else(|| panic!("{}: download on {} is refused", path.display(), cfg.data.dataset));
            assert!(format!("{err}").contains("data.download"), "{err}");
        }
    }
    public.sort();
    public.dedup();
    assert_eq!(public, ["cifar10_seg", "multimnist", "nyuv2", "pet"]);
}
