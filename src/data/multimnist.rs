//! `multimnist`: two overlapping MNIST digits per image, built from the MNIST idx files the way
//! Sener & Koltun (2018, "Multi-Task Learning as Multi-Objective Optimization") build it.
//!
//! Sample i of a split takes digit i as the left digit and a partner digit j drawn uniformly
//! from the whole split file (j may equal i, as in the original) with
//! `rng::stream(seed, DataBuild, split_id << 32 | i)`. On a 36×36 canvas the left digit fills
//! rows/cols 0–28 and the partner rows/cols 6–34; where they overlap the pixel is the maximum of
//! the two. The canvas is resized to 28×28 with nearest-neighbour sampling (the original's
//! `imresize(..., interp='nearest')`). Targets: `left` and `right`, the two digits' classes.
//!
//! Source: the four idx files under `data.root` (default `data/mnist`), each either as
//! published (`train-images-idx3-ubyte.gz`, gzip) or uncompressed (`train-images-idx3-ubyte`).
//! train = `train-*` (60000), val = `t10k-*` (10000). An idx file is a big-endian header
//! (magic 0x0000080N with N dimensions, then N u32 sizes) followed by the uint8 data.
use super::decode::resize_nearest;
use super::{root_dir, Dataset, Loaded, Split, Splits, TargetInfo, TargetShape, Wanted};
use crate::config::DataConfig;
use crate::rng::{self, Purpose};
use crate::{user_bail, user_error};
use rand::Rng;
use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};
use tch::Tensor;

pub const SIDE: usize = 28;
pub const CANVAS: usize = 36;
/// Where the right digit starts on the canvas (rows and columns).
pub const OFFSET: usize = 6;
pub const TRAIN_IMAGES: &str = "train-images-idx3-ubyte";
pub const TRAIN_LABELS: &str = "train-labels-idx1-ubyte";
pub const VAL_IMAGES: &str = "t10k-images-idx3-ubyte";
pub const VAL_LABELS: &str = "t10k-labels-idx1-ubyte";
/// What to do about missing MNIST files in `root`: download MNIST, or generate the glyph digits
/// `configs/multimnist_glyphs.yaml` reads (with the project's Python, which has numpy).
fn fetch_hint(root: &Path) -> String {
    format!(
        "for MNIST set data.download: true (or run scripts/fetch.sh multimnist); for the generated glyph digits \
         (configs/multimnist_glyphs.yaml) run .venv/bin/python scripts/make_glyph_digits.py {} --train 12000 --test 2000",
        root.display()
    )
}

pub const TARGETS: &[TargetInfo] = &[
    TargetInfo { name: "left", shape: TargetShape::PerImage, classes: 10 },
    TargetInfo { name: "right", shape: TargetShape::PerImage, classes: 10 },
];

/// Two overlapping MNIST digits (Sener & Koltun), from the MNIST idx files.
pub struct MultiMnist;

impl Dataset for MultiMnist {
    fn name(&self) -> &'static str {
        "multimnist"
    }

    fn targets(&self, _d: &DataConfig) -> Option<Vec<TargetInfo>> {
        Some(TARGETS.to_vec())
    }

    /// MNIST's own statistics; one grey channel takes the mean of the three (equal) values.
    fn normalization(&self) -> ([f64; 3], [f64; 3]) {
        ([0.1307; 3], [0.3081; 3])
    }

    fn check(&self, d: &DataConfig) -> Result<(), String> {
        if d.image_size != SIDE as i64 {
            return Err(format!("data.image_size: multimnist images are {SIDE}×{SIDE}; set {SIDE}"));
        }
        if !d.grayscale {
            return Err("data.grayscale: multimnist digits have one grey channel; set true".into());
        }
        Ok(())
    }

    fn load(&self, d: &DataConfig, seed: u64, _wanted: &[Wanted]) -> anyhow::Result<Loaded> {
        Ok(Loaded::Memory(load(d, seed)?))
    }
}

/// Builds both splits. `data.train_size` / `data.val_size` 0 take every digit as a left digit,
/// otherwise the first N (partners still come from the whole file).
pub fn load(cfg: &DataConfig, seed: u64) -> anyhow::Result<Splits> {
    if cfg.image_size != SIDE as i64 {
        user_bail!("data.image_size: multimnist images are {SIDE} px, got {}", cfg.image_size);
    }
    let root = root_dir(cfg);
    if !root.is_dir() {
        user_bail!("data.root: MNIST directory {} not found; {}", root.display(), fetch_hint(&root));
    }
    let train = Digits::read(&root, TRAIN_IMAGES, TRAIN_LABELS)?;
    let val = Digits::read(&root, VAL_IMAGES, VAL_LABELS)?;
    Ok(Splits {
        train: build(&train, cfg.train_size, "data.train_size", seed, 0)?,
        val: build(&val, cfg.val_size, "data.val_size", seed, 1)?,
    })
}

/// The digits of one split.
pub struct Digits {
    source: String,
    pub images: Vec<u8>,
    pub labels: Vec<u8>,
}

impl Digits {
    pub fn read(root: &Path, images: &str, labels: &str) -> anyhow::Result<Digits> {
        let (ipath, ibytes) = read_maybe_gz(root, images)?;
        let (lpath, lbytes) = read_maybe_gz(root, labels)?;
        let (idims, pixels) = parse_idx(&ibytes, 3).map_err(|e| user_error!("{}: {e}", ipath.display()))?;
        let (ldims, labels) = parse_idx(&lbytes, 1).map_err(|e| user_error!("{}: {e}", lpath.display()))?;
        if idims[1..] != [SIDE, SIDE] {
            user_bail!("{}: images are {}×{}, MNIST digits are {SIDE}×{SIDE}", ipath.display(), idims[1], idims[2]);
        }
        if idims[0] != ldims[0] {
            user_bail!(
                "{}: {} labels for the {} images of {}",
                lpath.display(),
                ldims[0],
                idims[0],
                ipath.file_name().unwrap_or_default().to_string_lossy()
            );
        }
        if let Some(i) = labels.iter().position(|&l| l > 9) {
            user_bail!("{}: label {i} is {} (digits are 0..=9)", lpath.display(), labels[i]);
        }
        if labels.is_empty() {
            user_bail!("{}: holds no digits", ipath.display());
        }
        Ok(Digits { source: ipath.display().to_string(), images: pixels.to_vec(), labels: labels.to_vec() })
    }

    pub fn len(&self) -> usize {
        self.labels.len()
    }

    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }

    pub fn digit(&self, i: usize) -> &[u8] {
        &self.images[i * SIDE * SIDE..(i + 1) * SIDE * SIDE]
    }
}

/// `name` or, when it is absent, `name.gz` (gunzipped). Gzip is recognised by its magic bytes,
/// so a decompressed file keeping the `.gz` name also reads.
pub fn read_maybe_gz(root: &Path, name: &str) -> anyhow::Result<(PathBuf, Vec<u8>)> {
    let plain = root.join(name);
    let gz = root.join(format!("{name}.gz"));
    let path = if plain.is_file() || !gz.is_file() { plain } else { gz };
    crate::files::reject_special(&path)?;
    let bytes = std::fs::read(&path).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => {
            user_error!("{} (or {name}.gz) not found in {}; {}", name, root.display(), fetch_hint(root))
        }
        _ => user_error!("{}: cannot read: {e}", path.display()),
    })?;
    if bytes.starts_with(&[0x1f, 0x8b]) {
        let mut out = Vec::new();
        flate2::read::MultiGzDecoder::new(&bytes[..])
            .read_to_end(&mut out)
            .map_err(|e| user_error!("{}: not a valid gzip file: {e}", path.display()))?;
        return Ok((path, out));
    }
    Ok((path, bytes))
}

/// Parses an idx file of unsigned bytes with `ndim` dimensions: `(dims, data)`.
pub fn parse_idx(bytes: &[u8], ndim: usize) -> Result<(Vec<usize>, &[u8]), String> {
    if bytes.len() < 4 || bytes[0] != 0 || bytes[1] != 0 {
        return Err("not an idx file (the magic number must start with two zero bytes)".into());
    }
    if bytes[2] != 0x08 {
        return Err(format!("idx data type 0x{:02x} is not unsigned bytes (0x08)", bytes[2]));
    }
    if bytes[3] as usize != ndim {
        return Err(format!(
            "idx file has {} dimensions, expected {ndim} (magic {})",
            bytes[3],
            0x800 + bytes[3] as u32
        ));
    }
    let header = 4 + 4 * ndim;
    if bytes.len() < header {
        return Err("idx header cut short".into());
    }
    let dims: Vec<usize> =
        (0..ndim).map(|k| u32::from_be_bytes(bytes[4 + 4 * k..8 + 4 * k].try_into().unwrap()) as usize).collect();
    let count: usize = dims.iter().product();
    let data = &bytes[header..];
    if data.len() != count {
        return Err(format!("{} data bytes, but the header's sizes {dims:?} need {count}", data.len()));
    }
    Ok((dims, data))
}

/// The idx bytes of uint8 data with the given sizes (for tests and fixtures).
pub fn encode_idx(dims: &[usize], data: &[u8]) -> Vec<u8> {
    let mut out = vec![0, 0, 0x08, dims.len() as u8];
    for d in dims {
        out.extend_from_slice(&(*d as u32).to_be_bytes());
    }
    out.extend_from_slice(data);
    out
}

/// The 28×28 composite of a left and a right digit.
pub fn compose(left: &[u8], right: &[u8]) -> Vec<u8> {
    let mut canvas = vec![0u8; CANVAS * CANVAS];
    for y in 0..SIDE {
        for x in 0..SIDE {
            canvas[y * CANVAS + x] = left[y * SIDE + x];
        }
    }
    for y in 0..SIDE {
        for x in 0..SIDE {
            let c = &mut canvas[(y + OFFSET) * CANVAS + x + OFFSET];
            *c = (*c).max(right[y * SIDE + x]);
        }
    }
    resize_nearest(&canvas, CANVAS, CANVAS, SIDE, SIDE)
}

fn build(d: &Digits, wanted: usize, key: &str, seed: u64, split_id: u64) -> anyhow::Result<Split> {
    let n = if wanted == 0 { d.len() } else { wanted };
    if n > d.len() {
        user_bail!("{key}: {wanted} samples asked for, but {} holds only {}", d.source, d.len());
    }
    let mut images = Vec::with_capacity(n * SIDE * SIDE);
    let (mut left, mut right) = (Vec::with_capacity(n), Vec::with_capacity(n));
    for i in 0..n {
        let j = rng::stream(seed, Purpose::DataBuild, split_id << 32 | i as u64).gen_range(0..d.len());
        images.extend(compose(d.digit(i), d.digit(j)));
        left.push(d.labels[i] as i64);
        right.push(d.labels[j] as i64);
    }
    let side = SIDE as i64;
    Ok(Split {
        images: Tensor::from_slice(&images).view([n as i64, 1, side, side]),
        targets: BTreeMap::from([
            ("left".to_string(), Tensor::from_slice(&left)),
            ("right".to_string(), Tensor::from_slice(&right)),
        ]),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::is_user_error;

    fn cfg(root: &Path) -> DataConfig {
        let mut c = DataConfig::defaults("multimnist");
        c.root = Some(root.display().to_string());
        c.image_size = 28;
        c.grayscale = true;
        c
    }

    /// Digit k: a vertical bar at column 2 + k of intensity 100 + k (rows 4..24).
    fn digit(k: usize) -> Vec<u8> {
        let mut d = vec![0u8; SIDE * SIDE];
        for y in 4..24 {
            d[y * SIDE + 2 + k] = 100 + k as u8;
        }
        d
    }

    fn write_mnist(dir: &Path, n: usize, gz: bool) {
        for (images, labels) in [(TRAIN_IMAGES, TRAIN_LABELS), (VAL_IMAGES, VAL_LABELS)] {
            let pixels: Vec<u8> = (0..n).flat_map(|i| digit(i % 10)).collect();
            let labs: Vec<u8> = (0..n).map(|i| (i % 10) as u8).collect();
            for (name, bytes) in [(images, encode_idx(&[n, SIDE, SIDE], &pixels)), (labels, encode_idx(&[n], &labs))] {
                if gz {
                    use std::io::Write;
                    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
                    e.write_all(&bytes).unwrap();
                    std::fs::write(dir.join(format!("{name}.gz")), e.finish().unwrap()).unwrap();
                } else {
                    std::fs::write(dir.join(name), bytes).unwrap();
                }
            }
        }
    }

    #[test]
    fn composite_puts_digits_at_0_and_6_with_max_overlap() {
        // Left: all 50; right: all 200 → the canvas is 50 at rows/cols 0..6 outside the right
        // digit, 200 inside 6..34, 0 in the corners no digit covers.
        let canvas_value = |y: usize, x: usize| {
            let in_left = y < 28 && x < 28;
            let in_right = (6..34).contains(&y) && (6..34).contains(&x);
            match (in_left, in_right) {
                (_, true) => 200,
                (true, false) => 50,
                _ => 0,
            }
        };
        let out = compose(&[50; 784], &[200; 784]);
        for i in 0..SIDE {
            for j in 0..SIDE {
                // Nearest: output i reads canvas ⌊(2i + 1)·36 / 56⌋.
                let (y, x) = ((2 * i + 1) * 36 / 56, (2 * j + 1) * 36 / 56);
                assert_eq!(out[i * SIDE + j], canvas_value(y, x), "({i}, {j})");
            }
        }
        // Overlap takes the maximum, not the later digit.
        let out = compose(&[200; 784], &[50; 784]);
        assert_eq!(out[14 * SIDE + 14], 200);
        assert_eq!(out[25 * SIDE + 25], 50); // canvas (32, 32): the right digit alone
    }

    #[test]
    fn plain_and_gzipped_files_give_the_same_split() {
        let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        write_mnist(a.path(), 30, false);
        write_mnist(b.path(), 30, true);
        let sa = load(&cfg(a.path()), 4).unwrap();
        let sb = load(&cfg(b.path()), 4).unwrap();
        assert_eq!(sa.train.images.size(), [30, 1, 28, 28]);
        assert!(sa.train.images.equal(&sb.train.images) && sa.val.images.equal(&sb.val.images));
        let left = Vec::<i64>::try_from(&sa.train.targets["left"]).unwrap();
        assert_eq!(left[..12], [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 0, 1]);
    }

    #[test]
    fn partners_come_from_the_seed_and_labels_follow_the_pixels() {
        let dir = tempfile::tempdir().unwrap();
        write_mnist(dir.path(), 40, false);
        let s = load(&cfg(dir.path()), 9).unwrap();
        let d = Digits::read(dir.path(), TRAIN_IMAGES, TRAIN_LABELS).unwrap();
        let right = Vec::<i64>::try_from(&s.train.targets["right"]).unwrap();
        for (i, &r) in right.iter().enumerate() {
            let j = rng::stream(9, Purpose::DataBuild, i as u64).gen_range(0..40);
            assert_eq!(r, (j % 10) as i64);
            let img = Vec::<u8>::try_from(&s.train.images.get(i as i64).flatten(0, -1)).unwrap();
            assert_eq!(img, compose(d.digit(i), d.digit(j)));
        }
        assert!(right.iter().collect::<std::collections::HashSet<_>>().len() > 5, "{right:?}");
        let other = load(&cfg(dir.path()), 10).unwrap();
        assert!(!other.train.targets["right"].equal(&s.train.targets["right"]));
        let sized = load(&DataConfig { train_size: 7, val_size: 3, ..cfg(dir.path()) }, 9).unwrap();
        assert_eq!((sized.train.len(), sized.val.len()), (7, 3));
        assert!(sized.train.images.equal(&s.train.images.narrow(0, 0, 7)));
    }

    #[test]
    fn malformed_idx_files_are_user_errors_naming_the_file() {
        let dir = tempfile::tempdir().unwrap();
        write_mnist(dir.path(), 5, false);
        let text = |r: anyhow::Result<Splits>| {
            let e = r.unwrap_err();
            assert!(is_user_error(&e), "{e:#}");
            e.to_string()
        };
        let c = cfg(dir.path());
        let p = dir.path().join(VAL_LABELS);
        std::fs::write(&p, [0, 0, 8, 3, 0]).unwrap();
        let m = text(load(&c, 0));
        assert!(m.contains(VAL_LABELS) && m.contains("3 dimensions"), "{m}");
        std::fs::write(&p, encode_idx(&[5], &[1, 2, 3, 4])).unwrap();
        let m = text(load(&c, 0));
        assert!(m.contains(VAL_LABELS) && m.contains("need 5"), "{m}");
        std::fs::write(&p, encode_idx(&[5], &[1, 2, 3, 4, 11])).unwrap();
        let m = text(load(&c, 0));
        assert!(m.contains(VAL_LABELS) && m.contains("label 4 is 11"), "{m}");
        std::fs::write(&p, encode_idx(&[4], &[1, 2, 3, 4])).unwrap();
        let m = text(load(&c, 0));
        assert!(m.contains("4 labels for the 5 images"), "{m}");
        std::fs::write(dir.path().join(format!("{TRAIN_IMAGES}.gz")), [0x1f, 0x8b, 1, 2, 3]).unwrap();
        std::fs::remove_file(dir.path().join(TRAIN_IMAGES)).unwrap();
        let m = text(load(&c, 0));
        assert!(m.contains("train-images-idx3-ubyte.gz") && m.contains("gzip"), "{m}");
        std::fs::remove_file(dir.path().join(format!("{TRAIN_IMAGES}.gz"))).unwrap();
        let m = text(load(&c, 0));
        assert!(m.contains(TRAIN_IMAGES) && m.contains("scripts/fetch.sh multimnist"), "{m}");
        let glyphs = format!(".venv/bin/python scripts/make_glyph_digits.py {}", dir.path().display());
        assert!(m.contains(&glyphs), "the glyph digits' command, with the project's Python: {m}");
    }
}
