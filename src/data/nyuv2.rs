//! `nyuv2`: NYU Depth v2 in the layout the multi-task literature uses (MTAN, Liu et al. 2019,
//! and the methods that followed it): 795 train and 654 val samples of 288×384, one `.npy`
//! file per sample and modality.
//!
//! ```text
//! <root>/{train,val}/image/<i>.npy    (H, W, 3) float in [0, 1] (uint8 0..255 also read)
//! <root>/{train,val}/label/<i>.npy    (H, W) 13 classes, −1 = not labelled
//! <root>/{train,val}/depth/<i>.npy    (H, W, 1) or (H, W) metres, 0 = no measurement
//! <root>/{train,val}/normal/<i>.npy   (H, W, 3) unit surface normals, (0, 0, 0) = none
//! ```
//! Targets: `semantic` (13 classes; −1 becomes the ignore label), `depth` (pixels without a
//! measurement are invalid: NaN) and `normal` (zero vectors invalid; the rest renormalized to
//! unit length). `data.image_size` is the height the model sees; the width keeps the aspect
//! (288 → 384). Images are stored as uint8 (`round(255·x)`), depth and normals as float16.
use super::decode::{resize_bilinear, resize_nearest};
use super::npy;
use super::stream::{FileSources, Sample, SampleSource, TargetSpec, Value};
use super::{root_dir, Dataset, Loaded, TargetInfo, TargetShape, Wanted, IGNORE_LABEL, IMAGENET};
use crate::config::DataConfig;
use crate::{user_bail, user_error};
use std::path::{Path, PathBuf};
use std::sync::Arc;

pub const CLASSES: i64 = 13;
/// The widest (and, inverted, the tallest) aspect of the stored arrays accepted: the model's
/// width follows from it, so a file must not be able to ask for an unbounded allocation.
const MAX_ASPECT: f64 = 4.0;
const FETCH_HINT: &str = "set data.download: true (or run scripts/fetch.sh nyuv2) to download the preprocessed NYUv2";

pub const TARGETS: &[TargetInfo] = &[
    TargetInfo { name: "semantic", shape: TargetShape::PerPixel, classes: CLASSES },
    TargetInfo { name: "depth", shape: TargetShape::PerPixelDepth, classes: 0 },
    TargetInfo { name: "normal", shape: TargetShape::PerPixelNormal, classes: 0 },
];

pub struct NyuSource {
    dir: PathBuf,
    split: &'static str,
    ids: Vec<u64>,
    /// Size of the stored arrays.
    src_hw: (usize, usize),
    /// Size the model sees.
    out_hw: (usize, usize),
    targets: Vec<TargetSpec>,
}

/// NYUv2 as preprocessed for the MTL literature: segmentation, depth, surface normals.
pub struct Nyuv2;

impl Dataset for Nyuv2 {
    fn name(&self) -> &'static str {
        "nyuv2"
    }

    fn targets(&self, _d: &DataConfig) -> Option<Vec<TargetInfo>> {
        Some(TARGETS.to_vec())
    }

    fn normalization(&self) -> ([f64; 3], [f64; 3]) {
        IMAGENET
    }

    fn per_sample_files(&self) -> bool {
        true
    }

    fn load(&self, d: &DataConfig, _seed: u64, _wanted: &[Wanted]) -> anyhow::Result<Loaded> {
        Ok(Loaded::Files(sources(d)?))
    }
}

/// The train and val sources. `data.train_size` / `data.val_size` other than 0 take the first N
/// sample numbers. `data.image_size` is the height; the width keeps the stored aspect (whether
/// both fit the backbone is checked once the sizes are known, src/train/mod.rs).
pub fn sources(d: &DataConfig) -> anyhow::Result<FileSources> {
    let root = root_dir(d);
    if !root.is_dir() {
        user_bail!("data.root: NYUv2 directory {} not found; {FETCH_HINT}", root.display());
    }
    let (train_ids, train_hw) = scan(&root.join("train"), d.train_size, "data.train_size")?;
    let (val_ids, val_hw) = scan(&root.join("val"), d.val_size, "data.val_size")?;
    for (split, hw) in [("train", train_hw), ("val", val_hw)] {
        check_aspect(&root.join(split).join("image"), hw)?;
    }
    let h = d.image_size as usize;
    let w = ((h * train_hw.1) as f64 / train_hw.0 as f64).round() as usize;
    let targets: Vec<TargetSpec> =
        TARGETS.iter().map(|t| TargetSpec { name: t.name.to_string(), shape: t.shape }).collect();
    let source = |split, ids, src_hw| -> Arc<dyn SampleSource> {
        Arc::new(NyuSource { dir: root.join(split), split, ids, src_hw, out_hw: (h, w), targets: targets.clone() })
    };
    Ok(FileSources { train: source("train", train_ids, train_hw), val: source("val", val_ids, val_hw) })
}

/// Refuses arrays whose width/height lies outside 1/[`MAX_ASPECT`]..=[`MAX_ASPECT`].
fn check_aspect(images: &Path, (h, w): (usize, usize)) -> anyhow::Result<()> {
    let aspect = w as f64 / h as f64;
    if !(1.0 / MAX_ASPECT..=MAX_ASPECT).contains(&aspect) {
        user_bail!(
            "{}: arrays of {h}×{w} (H×W): width/height {aspect:.4} is outside 1/{MAX_ASPECT}..{MAX_ASPECT}, and the \
             model's width follows from it",
            images.display()
        );
    }
    Ok(())
}

/// The sample numbers of a split (`image/<i>.npy`, ascending) and the arrays' (H, W), read
/// from the first image header that parses.
fn scan(dir: &Path, wanted: usize, key: &str) -> anyhow::Result<(Vec<u64>, (usize, usize))> {
    let images = dir.join("image");
    let entries = std::fs::read_dir(&images).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => user_error!("{} not found; {FETCH_HINT}", images.display()),
        _ => user_error!("{}: cannot read: {e}", images.display()),
    })?;
    let mut ids: Vec<u64> = entries
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            name.strip_suffix(".npy")?.parse().ok()
        })
        .collect();
    ids.sort_unstable();
    if ids.is_empty() {
        user_bail!("{}: holds no <number>.npy files; {FETCH_HINT}", images.display());
    }
    if wanted > ids.len() {
        user_bail!("{key}: {wanted} samples asked for, but {} holds only {}", images.display(), ids.len());
    }
    if wanted > 0 {
        ids.truncate(wanted);
    }
    let mut first_error = None;
    for id in &ids {
        let path = images.join(format!("{id}.npy"));
        match npy::read_header(&path) {
            Ok(h) if h.shape.len() == 3 && h.shape[2] == 3 && h.shape[0] > 0 && h.shape[1] > 0 => {
                return Ok((ids, (h.shape[0], h.shape[1])));
            }
            Ok(h) => {
                first_error.get_or_insert(user_error!("{}: shape {:?}, expected (H, W, 3)", path.display(), h.shape))
            }
            Err(e) => first_error.get_or_insert(e),
        };
    }
    Err(first_error.expect("ids is not empty"))
}

impl NyuSource {
    fn path(&self, modality: &str, id: u64) -> PathBuf {
        self.dir.join(modality).join(format!("{id}.npy"))
    }

    /// Reads one modality and checks its shape: `(H, W, channels)`, or `(H, W)` when
    /// `channels == 1`.
    fn array(&self, modality: &str, id: u64, channels: usize) -> anyhow::Result<(PathBuf, Vec<f32>, String)> {
        let path = self.path(modality, id);
        let a = npy::read(&path)?;
        let (h, w) = self.src_hw;
        let ok = a.shape == [h, w, channels] || (channels == 1 && a.shape == [h, w]);
        if !ok {
            let want =
                if channels == 1 { format!("({h}, {w}) or ({h}, {w}, 1)") } else { format!("({h}, {w}, {channels})") };
            return Err(user_error!(
                "{}: shape {:?}, expected {want} like the split's other {modality} files",
                path.display(),
                a.shape
            ));
        }
        Ok((path, a.data, a.descr))
    }
}

/// (x, y) of flat pixel p in an HWC array with `c` channels and width `w`.
fn at(p: usize, c: usize, w: usize) -> (usize, usize) {
    ((p / c) % w, (p / c) / w)
}

impl SampleSource for NyuSource {
    fn name(&self) -> String {
        format!("nyuv2 {} ({})", self.split, self.dir.display())
    }

    fn len(&self) -> usize {
        self.ids.len()
    }

    fn image_shape(&self) -> (usize, usize, usize) {
        (3, self.out_hw.0, self.out_hw.1)
    }

    fn targets(&self) -> &[TargetSpec] {
        &self.targets
    }

    fn read(&self, i: usize) -> anyhow::Result<Sample> {
        let id = self.ids[i];
        let (h, w) = self.src_hw;
        let (oh, ow) = self.out_hw;
        let px = h * w;

        let (path, image, descr) = self.array("image", id, 3)?;
        let bytes = descr.ends_with("u1");
        let (lo, hi) = if bytes { (0.0, 255.0) } else { (-1e-3, 1.0 + 1e-3) };
        if let Some(p) = image.iter().position(|v| !(lo..=hi).contains(v)) {
            let (x, y) = at(p, 3, w);
            return Err(user_error!(
                "{}: value {} at ({x}, {y}); images are float in [0, 1] (or uint8)",
                path.display(),
                image[p]
            ));
        }
        let scale = if bytes { 1.0 } else { 255.0 };
        // HWC → CHW planes of 0..255 values, resized, rounded to bytes.
        let mut planes = vec![0f32; 3 * px];
        for (p, v) in image.iter().enumerate() {
            planes[(p % 3) * px + p / 3] = v * scale;
        }
        let image =
            resize_bilinear(&planes, 3, h, w, oh, ow).iter().map(|v| v.round().clamp(0.0, 255.0) as u8).collect();

        let (path, label, _) = self.array("label", id, 1)?;
        let mut labels = Vec::with_capacity(px);
        for (p, &v) in label.iter().enumerate() {
            labels.push(match v {
                v if v == -1.0 || v == 255.0 => IGNORE_LABEL,
                v if v.fract() == 0.0 && (0.0..CLASSES as f32).contains(&v) => v as u8,
                v => {
                    let (x, y) = at(p, 1, w);
                    return Err(user_error!(
                        "{}: label {v} at ({x}, {y}) is not a class (0..={}) or −1 (not labelled)",
                        path.display(),
                        CLASSES - 1
                    ));
                }
            });
        }

        let (path, depth, _) = self.array("depth", id, 1)?;
        if let Some(p) = depth.iter().position(|v| !v.is_finite() || *v < 0.0) {
            let (x, y) = at(p, 1, w);
            return Err(user_error!(
                "{}: depth {} at ({x}, {y}); depths are metres ≥ 0 (0: none)",
                path.display(),
                depth[p]
            ));
        }
        let depth: Vec<f32> = depth.into_iter().map(|v| if v == 0.0 { f32::NAN } else { v }).collect();

        let (path, normal, _) = self.array("normal", id, 3)?;
        let mut normals = vec![0f32; 3 * px];
        for (p, n) in normal.chunks_exact(3).enumerate() {
            let norm = (n[0] * n[0] + n[1] * n[1] + n[2] * n[2]).sqrt();
            if !norm.is_finite() || (norm != 0.0 && !(0.5..=1.5).contains(&norm)) {
                let (x, y) = (p % w, p / w);
                return Err(user_error!(
                    "{}: normal ({}, {}, {}) at ({x}, {y}) is not a unit vector (or (0, 0, 0): none)",
                    path.display(),
                    n[0],
                    n[1],
                    n[2]
                ));
            }
            for c in 0..3 {
                normals[c * px + p] = if norm == 0.0 { f32::NAN } else { n[c] / norm };
            }
        }
        let normals = (0..3).flat_map(|c| resize_nearest(&normals[c * px..(c + 1) * px], h, w, oh, ow)).collect();

        Ok(Sample {
            image,
            targets: vec![
                Value::Labels(resize_nearest(&labels, h, w, oh, ow)),
                Value::Depth(resize_bilinear(&depth, 1, h, w, oh, ow)),
                Value::Normal(normals),
            ],
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use npy::{encode_f32, header_v1};

    const H: usize = 8;
    const W: usize = 12;

    /// Sample `i` of a split: image value (i + c) / 10, label (x + y + i) % 13 with (0, 0)
    /// unlabelled, depth 1 + x except 0 at (1, 0), normal +z except none at (2, 0).
    fn write_sample(dir: &Path, i: usize) {
        let mut image = Vec::new();
        let mut label = Vec::new();
        let mut depth = Vec::new();
        let mut normal = Vec::new();
        for y in 0..H {
            for x in 0..W {
                image.extend((0..3).map(|c| (i + c) as f32 / 10.0));
                label.push(if (x, y) == (0, 0) { -1.0 } else { ((x + y + i) % 13) as f32 });
                depth.push(if (x, y) == (1, 0) { 0.0 } else { 1.0 + x as f32 });
                normal.extend(if (x, y) == (2, 0) { [0.0, 0.0, 0.0] } else { [0.0, 0.0, 1.2] });
            }
        }
        for (m, bytes) in [
            ("image", encode_f32(&[H, W, 3], &image)),
            ("label", encode_f32(&[H, W], &label)),
            ("depth", encode_f32(&[H, W, 1], &depth)),
            ("normal", encode_f32(&[H, W, 3], &normal)),
        ] {
            std::fs::create_dir_all(dir.join(m)).unwrap();
            std::fs::write(dir.join(m).join(format!("{i}.npy")), bytes).unwrap();
        }
    }

    fn cfg(root: &Path, height: i64) -> DataConfig {
        DataConfig { root: Some(root.display().to_string()), image_size: height, ..DataConfig::defaults("nyuv2") }
    }

    #[test]
    fn arrays_become_targets_with_invalid_pixels_marked() {
        let dir = tempfile::tempdir().unwrap();
        for i in 0..3 {
            write_sample(&dir.path().join("train"), i);
        }
        write_sample(&dir.path().join("val"), 0);
        let s = sources(&cfg(dir.path(), 8)).unwrap();
        assert_eq!((s.train.len(), s.val.len(), s.train.image_shape()), (3, 1, (3, 8, 12)));
        let x = s.train.read(2).unwrap();
        assert_eq!(x.image[..2], [51, 51]); // round(0.2 · 255)
        assert_eq!(x.image[2 * 96], 102); // channel 2: 0.4
        let [Value::Labels(l), Value::Depth(d), Value::Normal(n)] = x.targets.as_slice() else { panic!() };
        assert_eq!(l[0], IGNORE_LABEL);
        assert_eq!(l[1..4], [3, 4, 5]);
        assert!(d[1].is_nan() && d[0] == 1.0 && d[5] == 6.0);
        assert!(n[2].is_nan() && n[96 + 2].is_nan() && n[192 + 2].is_nan());
        assert_eq!((n[0], n[96], n[192]), (0.0, 0.0, 1.0), "renormalized to unit length");
    }

    #[test]
    fn height_sets_the_size_and_keeps_the_aspect() {
        let dir = tempfile::tempdir().unwrap();
        for split in ["train", "val"] {
            write_sample(&dir.path().join(split), 0);
        }
        let s = sources(&cfg(dir.path(), 16)).unwrap();
        assert_eq!(s.val.image_shape(), (3, 16, 24));
        let x = s.val.read(0).unwrap();
        let Value::Depth(d) = &x.targets[1] else { panic!() };
        assert_eq!(d.len(), 384);
        // Bilinear doubling: depth never mixes with the invalid pixel (1, 0): the output pixels
        // whose taps include it are invalid, the far ones keep 1 + x interpolated.
        assert!(d[2].is_nan() && d[3].is_nan());
        assert_eq!(d[23], 12.0);
    }

    #[test]
    fn malformed_files_name_the_file_and_the_problem() {
        let dir = tempfile::tempdir().unwrap();
        let train = dir.path().join("train");
        for i in 0..6 {
            write_sample(&train, i);
        }
        write_sample(&dir.path().join("val"), 0);
        let put = |m: &str, i: usize, b: Vec<u8>| std::fs::write(train.join(m).join(format!("{i}.npy")), b).unwrap();
        put("image", 0, encode_f32(&[H, W, 3], &[3.0; H * W * 3]));
        put("label", 1, encode_f32(&[H, W], &[20.0; H * W]));
        put("depth", 2, encode_f32(&[H, W], &[-1.0; H * W]));
        put("normal", 3, encode_f32(&[H, W - 1, 3], &[0.0; H * (W - 1) * 3]));
        let mut cut = encode_f32(&[H, W], &[0.0; H * W]);
        cut.truncate(cut.len() - 4);
        put("label", 4, cut);
        let mut text = header_v1("<U3", &[H, W]);
        text.extend(vec![0u8; 12 * H * W]);
        put("depth", 5, text);
        let s = sources(&cfg(dir.path(), 8)).unwrap();
        let e = |i| s.train.read(i).unwrap_err().to_string();
        assert!(e(0).contains("image/0.npy") && e(0).contains("value 3"), "{}", e(0));
        assert!(e(1).contains("label/1.npy") && e(1).contains("label 20"), "{}", e(1));
        assert!(e(2).contains("depth/2.npy") && e(2).contains("depth -1"), "{}", e(2));
        assert!(e(3).contains("normal/3.npy") && e(3).contains("shape [8, 11, 3]"), "{}", e(3));
        assert!(e(4).contains("label/4.npy") && e(4).contains("bytes"), "{}", e(4));
        assert!(e(5).contains("depth/5.npy") && e(5).contains("dtype"), "{}", e(5));
        std::fs::remove_file(train.join("normal/1.npy")).unwrap();
        let e1 = s.train.read(1).unwrap_err().to_string();
        assert!(e1.contains("label/1.npy"), "the first bad file of a sample is named: {e1}");
        put("image", 0, encode_f32(&[1, 1000, 3], &[0.5; 3000]));
        let wide = sources(&cfg(dir.path(), 8)).err().unwrap().to_string();
        assert!(wide.contains("train/image") && wide.contains("1×1000"), "{wide}");
        std::fs::remove_dir_all(dir.path().join("val")).unwrap();
        let m = sources(&cfg(dir.path(), 8)).err().unwrap().to_string();
        assert!(m.contains("val/image") && m.contains("scripts/fetch.sh nyuv2"), "{m}");
    }
}
