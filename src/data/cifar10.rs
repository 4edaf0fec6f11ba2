//! `cifar10_seg`: real CIFAR-10 images turned into a two-task problem.
//!
//! Each sample is image A with a rectangle (25–50% of the area, random aspect and position) cut
//! from an image B of a different class pasted at the same place. Targets: `class` = A's class,
//! `mask` = per pixel the class shown there. The partner and rectangle of sample i come from
//! `rng::stream(seed, DataBuild, split_id << 32 | i)` and partners are drawn from the same split,
//! so the data is reproducible and val images never leak into train.
//!
//! Source: the official binary version under `data.root` (default `data/cifar-10-batches-bin`),
//! train = `data_batch_1..5.bin`, val = `test_batch.bin`; each record is 1 label byte followed by
//! 1024 R, 1024 G and 1024 B bytes of a row-major 32×32 image.
use super::{root_dir, Dataset, Loaded, Split, Splits, TargetInfo, TargetShape, Wanted};
use crate::config::DataConfig;
use crate::rng::{self, Purpose};
use crate::{user_bail, user_error};
use rand::Rng;
use std::collections::BTreeMap;
use std::io::Write;
use std::path::Path;
use tch::Tensor;

pub const SIDE: usize = 32;
pub const IMAGE_BYTES: usize = 3 * SIDE * SIDE;
pub const RECORD_BYTES: usize = 1 + IMAGE_BYTES;
pub const CLASSES: usize = 10;
pub const TRAIN_FILES: [&str; 5] =
    ["data_batch_1.bin", "data_batch_2.bin", "data_batch_3.bin", "data_batch_4.bin", "data_batch_5.bin"];
pub const VAL_FILE: &str = "test_batch.bin";
const FETCH_HINT: &str = "set data.download: true (or run scripts/fetch.sh cifar10_seg) to download CIFAR-10";

/// The pasted rectangle covers this many pixels (25–50% of 32×32).
const PASTE_AREA: std::ops::RangeInclusive<usize> = (SIDE * SIDE / 4)..=(SIDE * SIDE / 2);

pub const TARGETS: &[TargetInfo] = &[
    TargetInfo { name: "class", shape: TargetShape::PerImage, classes: CLASSES as i64 },
    TargetInfo { name: "mask", shape: TargetShape::PerPixel, classes: CLASSES as i64 },
];

/// CIFAR-10 with pasted regions: an image class and a per-pixel class.
pub struct Cifar10Seg;

impl Dataset for Cifar10Seg {
    fn name(&self) -> &'static str {
        "cifar10_seg"
    }

    fn targets(&self, _d: &DataConfig) -> Option<Vec<TargetInfo>> {
        Some(TARGETS.to_vec())
    }

    fn normalization(&self) -> ([f64; 3], [f64; 3]) {
        ([0.4914, 0.4822, 0.4465], [0.2470, 0.2435, 0.2616])
    }

    fn check(&self, d: &DataConfig) -> Result<(), String> {
        if d.image_size != SIDE as i64 {
            return Err(format!("data.image_size: cifar10_seg images are {SIDE}×{SIDE}; set {SIDE}"));
        }
        Ok(())
    }

    fn load(&self, d: &DataConfig, seed: u64, _wanted: &[Wanted]) -> anyhow::Result<Loaded> {
        Ok(Loaded::Memory(load(d, seed)?))
    }
}

/// Reads both splits from the CIFAR-10 binaries in `data.root`. `data.train_size` /
/// `data.val_size` 0 take every record, otherwise the first N.
pub fn load(cfg: &DataConfig, seed: u64) -> anyhow::Result<Splits> {
    if cfg.image_size != SIDE as i64 {
        user_bail!("data.image_size: cifar10_seg images are {SIDE} px, got {}", cfg.image_size);
    }
    let root = root_dir(cfg);
    if !root.is_dir() {
        user_bail!("data.root: CIFAR-10 directory {} not found; {FETCH_HINT}", root.display());
    }
    let train = Records::read(&root, &TRAIN_FILES)?;
    let val = Records::read(&root, &[VAL_FILE])?;
    Ok(Splits {
        train: build_split(&train, cfg.train_size, "data.train_size", seed, 0)?,
        val: build_split(&val, cfg.val_size, "data.val_size", seed, 1)?,
    })
}

/// Writes records in the official binary format (for tests and fixtures).
pub fn write_cifar_bin(path: &Path, records: &[(u8, [u8; IMAGE_BYTES])]) -> std::io::Result<()> {
    let mut out = std::io::BufWriter::new(std::fs::File::create(path)?);
    for (label, image) in records {
        out.write_all(&[*label])?;
        out.write_all(image)?;
    }
    out.flush()
}

/// Writes a complete fake CIFAR-10 directory (all six files, `per_file` records each) with
/// labels cycling through the classes and images that are a function of (file, record), so
/// end-to-end tests can run `cifar10_seg` without the real data.
pub fn write_fake_cifar_dir(dir: &Path, per_file: usize) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    for (f, name) in TRAIN_FILES.iter().chain([&VAL_FILE]).enumerate() {
        let records: Vec<(u8, [u8; IMAGE_BYTES])> = (0..per_file)
            .map(|i| {
                let label = ((i + f) % CLASSES) as u8;
                // Class-dependent base colour plus a position pattern: learnable, not constant.
                let image = std::array::from_fn(|p| {
                    let (ch, pos) = (p / (SIDE * SIDE), p % (SIDE * SIDE));
                    (label as usize * 25 + ch * 60 + (pos * (i + 1)) % 31) as u8
                });
                (label, image)
            })
            .collect();
        write_cifar_bin(&dir.join(name), &records)?;
    }
    Ok(())
}

/// All records of one split, labels and pixels in separate flat buffers.
struct Records {
    /// Where they came from, for messages.
    source: String,
    labels: Vec<u8>,
    pixels: Vec<u8>,
}

impl Records {
    fn read(root: &Path, files: &[&str]) -> anyhow::Result<Records> {
        let mut records = Records { source: String::new(), labels: Vec::new(), pixels: Vec::new() };
        for name in files {
            records.append(&root.join(name))?;
        }
        records.source = match files {
            [one] => root.join(one).display().to_string(),
            _ => format!("{} ({})", root.display(), files.join(", ")),
        };
        Ok(records)
    }

    /// Appends one file's records after checking its size and labels.
    fn append(&mut self, path: &Path) -> anyhow::Result<()> {
        crate::files::reject_special(path)?;
        let bytes = std::fs::read(path).map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => user_error!("{} not found; {FETCH_HINT}", path.display()),
            _ => user_error!("{}: cannot read: {e}", path.display()),
        })?;
        if bytes.is_empty() || bytes.len() % RECORD_BYTES != 0 {
            user_bail!(
                "{}: size {} bytes is not a positive multiple of {RECORD_BYTES} (1 label + {IMAGE_BYTES} pixel \
                 bytes per record); not a CIFAR-10 binary file? {FETCH_HINT}",
                path.display(),
                bytes.len()
            );
        }
        self.pixels.reserve(bytes.len() / RECORD_BYTES * IMAGE_BYTES);
        for (i, record) in bytes.chunks_exact(RECORD_BYTES).enumerate() {
            if record[0] as usize >= CLASSES {
                user_bail!("{}: record {i} has label {} (CIFAR-10 labels are 0..=9)", path.display(), record[0]);
            }
            self.labels.push(record[0]);
            self.pixels.extend_from_slice(&record[1..]);
        }
        Ok(())
    }

    fn len(&self) -> usize {
        self.labels.len()
    }

    fn image(&self, i: usize) -> &[u8] {
        &self.pixels[i * IMAGE_BYTES..(i + 1) * IMAGE_BYTES]
    }
}

/// Pastes a partner rectangle into each of the first `wanted` (0: all) records.
fn build_split(records: &Records, wanted: usize, key: &str, seed: u64, split_id: u64) -> anyhow::Result<Split> {
    let n = if wanted == 0 { records.len() } else { wanted };
    if n > records.len() {
        user_bail!("{key}: {wanted} samples asked for, but {} holds only {}", records.source, records.len());
    }
    let mut by_class: Vec<Vec<usize>> = vec![Vec::new(); CLASSES];
    for (i, &label) in records.labels.iter().enumerate() {
        by_class[label as usize].push(i);
    }
    let present: Vec<u8> = (0..CLASSES as u8).filter(|&c| !by_class[c as usize].is_empty()).collect();
    if present.len() < 2 {
        user_bail!("{}: needs images of at least two classes to paste, found {present:?}", records.source);
    }

    let mut images = vec![0u8; n * IMAGE_BYTES];
    let mut masks = vec![0u8; n * SIDE * SIDE];
    let mut classes = Vec::with_capacity(n);
    let samples = images.chunks_exact_mut(IMAGE_BYTES).zip(masks.chunks_exact_mut(SIDE * SIDE));
    for (i, (image, mask)) in samples.enumerate() {
        let mut rng = rng::stream(seed, Purpose::DataBuild, split_id << 32 | i as u64);
        let class_a = records.labels[i];
        let partner = pick_partner(&mut rng, &by_class, &present, class_a);
        let rect = Rect::random(&mut rng);
        let class_b = records.labels[partner];
        compose(records.image(i), records.image(partner), &rect, image);
        mask.fill(class_a);
        for y in rect.y..rect.y + rect.h {
            mask[y * SIDE + rect.x..y * SIDE + rect.x + rect.w].fill(class_b);
        }
        classes.push(class_a as i64);
    }

    let n = n as i64;
    let side = SIDE as i64;
    let targets = BTreeMap::from([
        ("class".to_string(), Tensor::from_slice(&classes)),
        ("mask".to_string(), Tensor::from_slice(&masks).view([n, side, side])),
    ]);
    Ok(Split { images: Tensor::from_slice(&images).view([n, 3, side, side]), targets })
}

/// A record of a class other than `class_a`: the class uniformly among those present, then
/// the record uniformly within it (so frequent classes do not dominate the pastes).
fn pick_partner(rng: &mut impl Rng, by_class: &[Vec<usize>], present: &[u8], class_a: u8) -> usize {
    let class_b = loop {
        let c = present[rng.gen_range(0..present.len())];
        if c != class_a {
            break c;
        }
    };
    let pool = &by_class[class_b as usize];
    pool[rng.gen_range(0..pool.len())]
}

/// The pasted region, in pixels.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Rect {
    x: usize,
    y: usize,
    w: usize,
    h: usize,
}

impl Rect {
    /// Uniform over the (w, h) pairs with an area in `PASTE_AREA` (symmetric in w and h, so no
    /// orientation is favoured), then a uniform position inside the image.
    fn random(rng: &mut impl Rng) -> Rect {
        let min_side = PASTE_AREA.start().div_ceil(SIDE);
        let (w, h) = loop {
            let (w, h) = (rng.gen_range(min_side..=SIDE), rng.gen_range(min_side..=SIDE));
            if PASTE_AREA.contains(&(w * h)) {
                break (w, h);
            }
        };
        Rect { x: rng.gen_range(0..=SIDE - w), y: rng.gen_range(0..=SIDE - h), w, h }
    }
}

/// Writes A with B's pixels inside `rect`, channel by channel (CHW).
fn compose(a: &[u8], b: &[u8], rect: &Rect, out: &mut [u8]) {
    out.copy_from_slice(a);
    for ch in 0..3 {
        for y in rect.y..rect.y + rect.h {
            let start = ch * SIDE * SIDE + y * SIDE + rect.x;
            out[start..start + rect.w].copy_from_slice(&b[start..start + rect.w]);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::is_user_error;

    fn cfg(root: &Path, train: usize, val: usize) -> DataConfig {
        DataConfig {
            root: Some(root.display().to_string()),
            train_size: train,
            val_size: val,
            image_size: 32,
            grayscale: false,
            batch_size: 8,
            eval_batch_size: 8,
            ..DataConfig::defaults("cifar10_seg")
        }
    }

    /// A record whose every pixel byte encodes (record tag, channel): lets a test tell which
    /// image a pasted pixel came from.
    fn tagged(label: u8, tag: u8) -> (u8, [u8; IMAGE_BYTES]) {
        (label, std::array::from_fn(|p| tag.wrapping_mul(3).wrapping_add((p / (SIDE * SIDE)) as u8)))
    }

    fn user_error_text(result: anyhow::Result<Splits>) -> String {
        let err = result.unwrap_err();
        assert!(is_user_error(&err), "{err:#}");
        err.to_string()
    }

    #[test]
    fn written_files_load_back() {
        let dir = tempfile::tempdir().unwrap();
        write_fake_cifar_dir(dir.path(), 12).unwrap();
        let s = load(&cfg(dir.path(), 0, 0), 1).unwrap();
        assert_eq!(s.train.images.size(), [60, 3, 32, 32]);
        assert_eq!(s.val.images.size(), [12, 3, 32, 32]);
        assert_eq!(s.train.targets["mask"].size(), [60, 32, 32]);
        assert_eq!(s.train.targets["mask"].kind(), tch::Kind::Uint8);
        // data_batch_2 starts with label 1; sample 12 is its first record.
        let classes = Vec::<i64>::try_from(&s.train.targets["class"]).unwrap();
        assert_eq!(classes[..3], [0, 1, 2]);
        assert_eq!(classes[12], 1);

        let s2 = load(&cfg(dir.path(), 7, 3), 1).unwrap();
        assert_eq!((s2.train.len(), s2.val.len()), (7, 3));
        assert!(s2.train.images.equal(&s.train.images.narrow(0, 0, 7)));
    }

    #[test]
    fn mask_marks_the_pasted_partner() {
        let dir = tempfile::tempdir().unwrap();
        // 40 records per file, tag = file * 40 + record, so every image is distinct.
        for (f, name) in TRAIN_FILES.iter().chain([&VAL_FILE]).enumerate() {
            let recs: Vec<_> = (0..40).map(|i| tagged(((i * 7 + f) % CLASSES) as u8, (f * 40 + i) as u8)).collect();
            write_cifar_bin(&dir.path().join(name), &recs).unwrap();
        }
        let s = load(&cfg(dir.path(), 0, 0), 5).unwrap();
        for split in [&s.train, &s.val] {
            let images = Vec::<u8>::try_from(&split.images.flatten(0, -1)).unwrap();
            let masks = Vec::<u8>::try_from(&split.targets["mask"].flatten(0, -1)).unwrap();
            let classes = Vec::<i64>::try_from(&split.targets["class"]).unwrap();
            for i in 0..split.len() {
                let img = &images[i * IMAGE_BYTES..(i + 1) * IMAGE_BYTES];
                let mask = &masks[i * SIDE * SIDE..(i + 1) * SIDE * SIDE];
                let a = classes[i] as u8;
                let pasted: Vec<usize> = (0..SIDE * SIDE).filter(|&p| mask[p] != a).collect();
                assert!(PASTE_AREA.contains(&pasted.len()), "sample {i}: {} pasted pixels", pasted.len());
                let b = mask[pasted[0]];
                assert!(pasted.iter().all(|&p| mask[p] == b));
                // Pasted pixels are one foreign image (one tag); the rest is A's own.
                let own_tag = img[(0..SIDE * SIDE).find(|&p| mask[p] == a).unwrap()];
                let foreign_tag = img[pasted[0]];
                assert_ne!(own_tag, foreign_tag);
                for p in 0..SIDE * SIDE {
                    let expected = if mask[p] == a { own_tag } else { foreign_tag };
                    assert_eq!(img[p], expected, "sample {i} pixel {p}");
                    assert_eq!(img[2 * SIDE * SIDE + p], expected.wrapping_add(2));
                }
                // The pasted region is a rectangle: its bounding box is exactly filled.
                let (xs, ys) = (pasted.iter().map(|p| p % SIDE), pasted.iter().map(|p| p / SIDE));
                let w = xs.clone().max().unwrap() - xs.min().unwrap() + 1;
                let h = ys.clone().max().unwrap() - ys.min().unwrap() + 1;
                assert_eq!(w * h, pasted.len());
            }
        }
    }

    #[test]
    fn building_is_deterministic_per_seed() {
        let dir = tempfile::tempdir().unwrap();
        write_fake_cifar_dir(dir.path(), 20).unwrap();
        let c = cfg(dir.path(), 0, 0);
        let (a, b, other) = (load(&c, 3).unwrap(), load(&c, 3).unwrap(), load(&c, 4).unwrap());
        assert!(a.train.images.equal(&b.train.images) && a.train.targets["mask"].equal(&b.train.targets["mask"]));
        assert!(!a.train.targets["mask"].equal(&other.train.targets["mask"]));
    }

    #[test]
    fn rectangles_cover_a_quarter_to_a_half_in_both_orientations() {
        let mut rng = rng::stream(0, Purpose::DataBuild, 0);
        let rects: Vec<Rect> = (0..2000).map(|_| Rect::random(&mut rng)).collect();
        assert!(rects.iter().all(|r| PASTE_AREA.contains(&(r.w * r.h)) && r.x + r.w <= SIDE && r.y + r.h <= SIDE));
        let wide = rects.iter().filter(|r| r.w > r.h).count();
        let tall = rects.iter().filter(|r| r.h > r.w).count();
        assert!(wide.abs_diff(tall) < 150, "{wide} wide vs {tall} tall");
    }

    #[test]
    fn missing_directory_or_file_names_the_path_and_the_fetch_script() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("nope");
        let msg = user_error_text(load(&cfg(&missing, 0, 0), 0));
        assert!(msg.contains("nope") && msg.contains("scripts/fetch.sh cifar10_seg"), "{msg}");

        write_fake_cifar_dir(dir.path(), 2).unwrap();
        std::fs::remove_file(dir.path().join("data_batch_4.bin")).unwrap();
        let msg = user_error_text(load(&cfg(dir.path(), 0, 0), 0));
        assert!(msg.contains("data_batch_4.bin") && msg.contains("scripts/fetch.sh cifar10_seg"), "{msg}");
    }

    #[test]
    fn malformed_files_are_user_errors_naming_the_file() {
        let dir = tempfile::tempdir().unwrap();
        write_fake_cifar_dir(dir.path(), 3).unwrap();
        let path = dir.path().join(VAL_FILE);

        std::fs::write(&path, []).unwrap();
        let msg = user_error_text(load(&cfg(dir.path(), 0, 0), 0));
        assert!(msg.contains(VAL_FILE), "{msg}");

        std::fs::write(&path, vec![0u8; RECORD_BYTES * 2 + 5]).unwrap();
        let msg = user_error_text(load(&cfg(dir.path(), 0, 0), 0));
        assert!(msg.contains(VAL_FILE) && msg.contains("3073"), "{msg}");

        write_cifar_bin(&path, &[tagged(1, 0), tagged(2, 1), tagged(12, 2)]).unwrap();
        let msg = user_error_text(load(&cfg(dir.path(), 0, 0), 0));
        assert!(msg.contains(VAL_FILE) && msg.contains("record 2") && msg.contains("12"), "{msg}");
    }

    #[test]
    fn impossible_requests_are_user_errors() {
        let dir = tempfile::tempdir().unwrap();
        write_fake_cifar_dir(dir.path(), 3).unwrap();
        let msg = user_error_text(load(&cfg(dir.path(), 16, 0), 0));
        assert!(msg.contains("data.train_size"), "{msg}");
        let msg = user_error_text(load(&DataConfig { image_size: 64, ..cfg(dir.path(), 0, 0) }, 0));
        assert!(msg.contains("data.image_size"), "{msg}");
        // A split whose images are all of one class has no partner to paste.
        write_cifar_bin(&dir.path().join(VAL_FILE), &[tagged(4, 0), tagged(4, 1)]).unwrap();
        let msg = user_error_text(load(&cfg(dir.path(), 0, 0), 0));
        assert!(msg.contains(VAL_FILE), "{msg}");
    }
}
