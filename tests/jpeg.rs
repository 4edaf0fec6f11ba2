//! JPEG decoding: libjpeg-turbo's pixels against Pillow's (full size and `draft`), bad files,
//! and a run that streams photo-like JPEGs: the same run to run, and resumed exactly.
mod common;
use common::*;
use mtl::config::JpegDecoder;
use mtl::data::decode::read_rgb;
use mtl::data::jpeg::{ImageDecode, HAS_LIBJPEG_TURBO};
use rand::{Rng, SeedableRng};
use std::path::Path;
use std::process::Command;
use tempfile::tempdir;

const TURBO: ImageDecode = ImageDecode { decoder: JpegDecoder::LibjpegTurbo, scale: true };
const ZUNE: ImageDecode = ImageDecode { decoder: JpegDecoder::ZuneJpeg, scale: false };

/// The decoders this build has.
fn decoders() -> Vec<ImageDecode> {
    if HAS_LIBJPEG_TURBO {
        vec![TURBO, ZUNE]
    } else {
        vec![ZUNE]
    }
}

/// tests/jpeg_reference.py's files and Pillow's bytes for each (full size and `draft`).
#[test]
fn libjpeg_turbo_decodes_what_pillow_decodes_at_full_and_reduced_size() {
    let dir = tempdir().unwrap();
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let python = root.join(".venv/bin/python");
    assert!(python.exists(), "{} is missing: run scripts/setup.sh first", python.display());
    let out = Command::new(&python).arg(root.join("tests/jpeg_reference.py")).arg(dir.path()).output().unwrap();
    assert!(out.status.success(), "jpeg_reference.py failed:\n{}", String::from_utf8_lossy(&out.stderr));
    let listing: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let mut zune_worst = 0u8;
    for case in listing.as_array().unwrap() {
        let file = case["file"].as_str().unwrap();
        let size = case["size"].as_u64().unwrap() as u32;
        let want_wh = (case["width"].as_u64().unwrap() as u32, case["height"].as_u64().unwrap() as u32);
        let want = std::fs::read(dir.path().join(format!("{file}.{size}.rgb"))).unwrap();
        let path = dir.path().join(file);
        let fit = (size > 0).then_some(size);
        if HAS_LIBJPEG_TURBO {
            let (img, _) = read_rgb(&path, TURBO, fit).unwrap();
            assert_eq!(img.dimensions(), want_wh, "{file} at {size}");
            assert!(img.as_raw() == &want, "{file} at {size}: libjpeg-turbo's pixels differ from Pillow's");
        }
        if size == 0 {
            // zune-jpeg (the fallback) rounds its IDCT and upsampling its own way.
            let (img, stored) = read_rgb(&path, ZUNE, None).unwrap();
            assert_eq!((img.dimensions(), stored), (want_wh, want_wh), "{file}");
            let worst = img.as_raw().iter().zip(&want).map(|(a, b)| a.abs_diff(*b)).max().unwrap();
            let mean =
                img.as_raw().iter().zip(&want).map(|(a, b)| a.abs_diff(*b) as f64).sum::<f64>() / want.len() as f64;
            assert!(worst <= 12 && mean < 1.0, "{file}: zune-jpeg is {worst} levels (mean {mean:.3}) from Pillow");
            zune_worst = zune_worst.max(worst);
        }
    }
    eprintln!("zune-jpeg: at most {zune_worst} levels from Pillow");
}

/// A photo-like JPEG (smooth ramps plus noise) of `w`×`h`.
fn photo_jpeg(path: &Path, w: u32, h: u32, seed: u64) {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    let (a, b) = (rng.gen_range(1..5), rng.gen_range(1..5));
    let img = image::RgbImage::from_fn(w, h, |x, y| {
        let base = [(x * a + y) % 256, (y * b + 40) % 256, (x + y * 2 + 90) % 256];
        image::Rgb(base.map(|v| (v as i32 + rng.gen_range(-30..=30)).clamp(0, 255) as u8))
    });
    let file = std::io::BufWriter::new(std::fs::File::create(path).unwrap());
    image::codecs::jpeg::JpegEncoder::new_with_quality(file, 90).encode_image(&img).unwrap();
}

#[test]
fn truncated_and_corrupt_jpegs_are_one_line_errors_naming_the_file() {
    let dir = tempdir().unwrap();
    let good = dir.path().join("good.jpg");
    photo_jpeg(&good, 64, 48, 1);
    let bytes = std::fs::read(&good).unwrap();
    let truncated = dir.path().join("truncated.jpg");
    std::fs::write(&truncated, &bytes[..bytes.len() * 2 / 3]).unwrap();
    let garbage = dir.path().join("garbage.jpg");
    std::fs::write(&garbage, [&bytes[..4], &[0x13; 300][..]].concat()).unwrap();
    let empty = dir.path().join("empty.jpg");
    std::fs::write(&empty, b"").unwrap();
    for decode in decoders() {
        let (img, stored) = read_rgb(&good, decode, None).unwrap();
        assert_eq!((img.dimensions(), stored), ((64, 48), (64, 48)));
        let mut bad = vec![&garbage, &empty];
        if decode == TURBO {
            // zune-jpeg pads a truncated scan as libjpeg does, but does not say so.
            bad.push(&truncated);
        }
        for path in bad {
            let e = read_rgb(path, decode, Some(16)).unwrap_err().to_string();
            assert!(e.contains(&path.display().to_string()) && !e.contains('\n'), "{decode:?}: {e:?}");
        }
    }
}

/// 16 photo-like 48×40 JPEGs (decoded at half size for `image_size: 16`) with a class each.
fn write_photos(root: &Path) {
    std::fs::create_dir_all(root.join("images")).unwrap();
    let mut csv = String::from("file,kind\n");
    for i in 0..16 {
        photo_jpeg(&root.join(format!("images/p{i:02}.jpg")), 48, 40, i);
        csv += &format!("p{i:02}.jpg,{}\n", i % 3);
    }
    std::fs::write(root.join("labels.csv"), csv).unwrap();
}

fn photos_config() -> &'static str {
    r#"name: photos
seed: 4
device: cpu
threads: 1
data:
  dataset: folder
  root: photos
  image_size: 16
  batch_size: 4
  eval_batch_size: 4
  max_memory_mb: 0.001
  decode_threads: 2
  folder: {val_fraction: 0.25}
  augment: {crop_padding: 2, hflip: true}
model:
  backbone: {kind: conv, widths: [4], depth: 1}
tasks:
  - {name: kind, kind: classification, target: kind, classes: 3}
optim: {kind: adamw, lr: 0.01}
train: {epochs: 3, log_every: 2}
checkpoint: {every: 1, keep_last: 2, monitor: kind.accuracy}
"#
}

#[test]
fn a_run_streaming_photos_is_the_same_run_to_run_and_resumes_exactly() {
    let tmp = tempdir().unwrap();
    write_photos(&tmp.path().join("photos"));
    write(tmp.path(), "p.yaml", photos_config());
    let once = run_with_env(tmp.path(), &["p.yaml", "--run-dir", "once"], &[("RUST_LOG", "info")]);
    once.assert_ok();
    let log = once.stderr() + &once.stdout();
    assert!(log.contains("streaming from disk with 2 decode threads"), "{log}");
    run_in(tmp.path(), &["p.yaml", "--run-dir", "twice"]).assert_ok();
    run_in(tmp.path(), &["p.yaml", "--run-dir", "paused", "--set", "train.max_steps=4"]).assert_ok();
    run_in(tmp.path(), &["p.yaml", "--run-dir", "paused", "--resume"]).assert_ok();
    let once = latest_weights(&tmp.path().join("once"));
    assert_eq!(once, latest_weights(&tmp.path().join("twice")), "two runs over the same JPEGs differ");
    assert_eq!(once, latest_weights(&tmp.path().join("paused")), "the resumed run differs");
    // The decoder `auto` stood for is in the run's config.yaml, so the run decodes again alike.
    let saved = std::fs::read_to_string(tmp.path().join("once/config.yaml")).unwrap();
    let want = if HAS_LIBJPEG_TURBO { "jpeg_decoder: libjpeg-turbo" } else { "jpeg_decoder: zune-jpeg" };
    assert!(saved.contains(want) && saved.contains("decode_scale:"), "{saved}");
    // A resume that would decode with the other decoder is refused, naming the key.
    if HAS_LIBJPEG_TURBO {
        run_in(tmp.path(), &["p.yaml", "--run-dir", "paused", "--resume", "--set", "data.jpeg_decoder=zune-jpeg"])
            .assert_user_error(&["cannot resume", "data.jpeg_decoder"]);
    }
    // A truncated photo: one line naming it, exit 2 (folder data refuses bad files).
    let photo = tmp.path().join("photos/images/p03.jpg");
    let bytes = std::fs::read(&photo).unwrap();
    std::fs::write(&photo, &bytes[..bytes.len() / 2]).unwrap();
    if HAS_LIBJPEG_TURBO {
        run_in(tmp.path(), &["p.yaml", "--run-dir", "bad"]).assert_user_error(&["p03.jpg"]);
    }
}
