//! Datasets with a class per subfolder, one domain per root: Office-31 and Office-Home, the
//! multi-input MTL benchmarks (each domain is a task's own data, `tasks[].data.root`).
//!
//! ```text
//! office31:     <root>/images/<class>/<name>.{jpg,jpeg,png}    (amazon/, dslr/, webcam/ as published)
//! office_home:  <root>/<class>/<name>.{jpg,jpeg,png}           (Art/, Clipart/, Product/, Real_World/)
//! ```
//! One target, `label`: the class's place in `data.classes`, or, without that list, in the
//! class folders sorted by name. The split is LibMTL's 60/20/20 train/val/test rule, stratified
//! by class: each class's images, ordered by a hash of their file name (so the split is the
//! same for every run seed and an added image moves no other), give their first 60% to train,
//! the next 20% to val and keep the last 20% as a test split that training never reads. Images
//! are resized to `data.image_size`².
use super::decode::{image_names, read_rgb, rgb_to_chw};
use super::jpeg::ImageDecode;
use super::stream::{FileSources, Sample, SampleSource, TargetSpec, Value};
use super::{Dataset, Loaded, TargetInfo, TargetShape, Wanted, IMAGENET};
use crate::config::{DataConfig, OnBadFile};
use crate::{user_bail, user_error};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// The one target: the class of the folder an image is in.
pub const LABEL: &str = "label";
/// Shares of each class's images in train and val (the rest is the test split).
const TRAIN_SHARE: f64 = 0.6;
const VAL_SHARE: f64 = 0.2;

/// A class-per-subfolder dataset: its name and where the class folders are under the root.
pub struct ClassFolders {
    name: &'static str,
    /// The directory under the root holding the class folders (`""`: the root itself).
    classes_dir: &'static str,
}

/// Office-31 (Saenko et al. 2010): `<domain>/images/<class>/*.jpg`, 31 classes.
pub const OFFICE31: ClassFolders = ClassFolders { name: "office31", classes_dir: "images" };
/// Office-Home (Venkateswara et al. 2017): `<domain>/<class>/*.jpg`, 65 classes.
pub const OFFICE_HOME: ClassFolders = ClassFolders { name: "office_home", classes_dir: "" };

/// Every image of the domain by class, the classes in label order.
struct Index {
    dir: PathBuf,
    classes: Vec<String>,
    /// Per class: its image file names, in split order (see the module documentation).
    images: Vec<Vec<String>>,
}

impl ClassFolders {
    fn dir(&self, d: &DataConfig) -> anyhow::Result<PathBuf> {
        let Some(root) = &d.root else { user_bail!("data.root: {} needs the domain's directory", self.name) };
        Ok(match self.classes_dir {
            "" => PathBuf::from(root),
            sub => Path::new(root).join(sub),
        })
    }

    /// The class folders under the domain, checked against `data.classes` when listed.
    fn class_names(&self, d: &DataConfig) -> anyhow::Result<(PathBuf, Vec<String>)> {
        let dir = self.dir(d)?;
        let entries = std::fs::read_dir(&dir).map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => {
                user_error!("{} not found ({} reads {})", dir.display(), self.name, self.layout())
            }
            _ => user_error!("{}: cannot read: {e}", dir.display()),
        })?;
        let mut found: Vec<String> = entries
            .flatten()
            .filter(|e| e.path().is_dir())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| !n.starts_with('.'))
            .collect();
        found.sort();
        if found.is_empty() {
            user_bail!("{}: no class folders ({} reads {})", dir.display(), self.name, self.layout());
        }
        if d.classes.is_empty() {
            return Ok((dir, found));
        }
        if let Some(extra) = found.iter().find(|c| !d.classes.contains(c)) {
            user_bail!(
                "{}: class folder '{extra}' is not listed in data.classes ({} listed); list it or remove the folder",
                dir.display(),
                d.classes.len()
            );
        }
        if let Some(missing) = d.classes.iter().find(|c| !found.contains(c)) {
            user_bail!("data.classes: '{missing}' has no folder in {}", dir.display());
        }
        Ok((dir, d.classes.clone()))
    }

    fn layout(&self) -> String {
        match self.classes_dir {
            "" => "<root>/<class>/*.jpg".into(),
            sub => format!("<root>/{sub}/<class>/*.jpg"),
        }
    }

    fn scan(&self, d: &DataConfig) -> anyhow::Result<Index> {
        let (dir, classes) = self.class_names(d)?;
        let mut images = Vec::with_capacity(classes.len());
        for c in &classes {
            let class_dir = dir.join(c);
            let mut names =
                image_names(&class_dir).map_err(|e| user_error!("{}: cannot read: {e}", class_dir.display()))?;
            if names.is_empty() {
                user_bail!("{}: no .jpg, .jpeg or .png images in class folder '{c}'", class_dir.display());
            }
            names.sort_by_key(|n| (name_hash(n), n.clone()));
            images.push(names);
        }
        Ok(Index { dir, classes, images })
    }
}

/// FNV-1a of a file name: its place in its class's split order.
fn name_hash(name: &str) -> u64 {
    crate::rng::name_index(name)
}

/// How many of a class's `n` images go to train and to val: 60% and 20% rounded, at least one
/// train image, and one val image when the class has two or more.
pub fn split_counts(n: usize) -> (usize, usize) {
    let train = ((n as f64 * TRAIN_SHARE).round() as usize).clamp(1, n);
    let val = ((n as f64 * VAL_SHARE).round() as usize).max(usize::from(n >= 2)).min(n - train);
    (train, val)
}

impl Dataset for ClassFolders {
    fn name(&self) -> &'static str {
        self.name
    }

    /// `label`, whose classes are the folders: see [`Dataset::resolve_targets`].
    fn targets(&self, _d: &DataConfig) -> Option<Vec<TargetInfo>> {
        None
    }

    fn normalization(&self) -> ([f64; 3], [f64; 3]) {
        IMAGENET
    }

    fn per_sample_files(&self) -> bool {
        true
    }

    fn decodes_image_files(&self) -> bool {
        true
    }

    fn class_folders(&self) -> bool {
        true
    }

    fn default_on_bad_file(&self) -> OnBadFile {
        OnBadFile::Refuse
    }

    fn check(&self, d: &DataConfig) -> Result<(), String> {
        if d.root.is_none() {
            return Err(format!("data.root: {} needs the domain's directory ({})", self.name, self.layout()));
        }
        Ok(())
    }

    /// Every task reads `label` as a class per image; classes 0 is filled in from the folders
    /// (a declared number is checked against them when the data is loaded, so a trained model
    /// can be used without its training folders).
    fn resolve_targets(&self, d: &DataConfig, wanted: &mut [Wanted]) -> anyhow::Result<()> {
        check_wanted(self.name, wanted)?;
        if wanted.iter().any(|w| w.classes == 0) {
            let count = if d.classes.is_empty() { self.class_names(d)?.1.len() } else { d.classes.len() };
            wanted.iter_mut().filter(|w| w.classes == 0).for_each(|w| w.classes = count as i64);
        }
        Ok(())
    }

    fn load(&self, d: &DataConfig, _seed: u64, wanted: &[Wanted]) -> anyhow::Result<Loaded> {
        check_wanted(self.name, wanted)?;
        let index = self.scan(d)?;
        for (i, w) in wanted.iter().enumerate() {
            if w.classes != index.classes.len() as i64 {
                user_bail!(
                    "tasks[{i}].classes: {}, but {} has {} class folders",
                    w.classes,
                    index.dir.display(),
                    index.classes.len()
                );
            }
        }
        let decode = ImageDecode::of(d).map_err(|e| user_error!("{e}"))?;
        let (mut train, mut val) = (Vec::new(), Vec::new());
        for (label, names) in index.images.iter().enumerate() {
            let (nt, nv) = split_counts(names.len());
            let at = |n: &String| (index.classes[label].clone() + "/" + n, label as i64);
            train.extend(names[..nt].iter().map(at));
            val.extend(names[nt..nt + nv].iter().map(at));
        }
        let source = |mut items: Vec<(String, i64)>, n: usize, key: &str, split: &'static str| {
            // Classes mixed, so that data.train_size / val_size take a sample of every class.
            items.sort_by_key(|(p, _)| (name_hash(p), p.clone()));
            if n > items.len() {
                user_bail!(
                    "{key}: {n} samples asked for, but the {split} split of {} has {}",
                    index.dir.display(),
                    items.len()
                );
            }
            if items.is_empty() {
                user_bail!("{}: no image went to the {split} split (too few images per class)", index.dir.display());
            }
            if n > 0 {
                items.truncate(n);
            }
            let src: Arc<dyn SampleSource> = Arc::new(ClassSource {
                name: format!("{} {split} ({})", self.name, index.dir.display()),
                dir: index.dir.clone(),
                items,
                targets: vec![TargetSpec { name: LABEL.into(), shape: TargetShape::PerImage }],
                size: d.image_size as u32,
                decode,
            });
            Ok(src)
        };
        Ok(Loaded::Files(FileSources {
            train: source(train, d.train_size, "data.train_size", "train")?,
            val: source(val, d.val_size, "data.val_size", "val")?,
        }))
    }
}

fn check_wanted(name: &str, wanted: &[Wanted]) -> anyhow::Result<()> {
    for (i, w) in wanted.iter().enumerate() {
        if w.target != LABEL || w.shape != TargetShape::PerImage {
            user_bail!(
                "tasks[{i}].target: {name} has one target, '{LABEL}' (a class per image), for a classification task"
            );
        }
    }
    Ok(())
}

/// One split of a domain: images by path under the class directory, with their labels.
struct ClassSource {
    name: String,
    dir: PathBuf,
    /// `<class>/<file>` and its label.
    items: Vec<(String, i64)>,
    targets: Vec<TargetSpec>,
    size: u32,
    decode: ImageDecode,
}

impl SampleSource for ClassSource {
    fn name(&self) -> String {
        self.name.clone()
    }

    fn len(&self) -> usize {
        self.items.len()
    }

    fn image_shape(&self) -> (usize, usize, usize) {
        (3, self.size as usize, self.size as usize)
    }

    fn targets(&self) -> &[TargetSpec] {
        &self.targets
    }

    fn read(&self, i: usize) -> anyhow::Result<Sample> {
        let (path, label) = &self.items[i];
        let (img, _) = read_rgb(&self.dir.join(path), self.decode, Some(self.size))?;
        Ok(Sample { image: rgb_to_chw(&img, self.size, self.size), targets: vec![Value::Class(*label)] })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write_domain(root: &Path, sub: &str, classes: &[&str], per_class: usize) {
        for (k, c) in classes.iter().enumerate() {
            let dir = root.join(sub).join(c);
            std::fs::create_dir_all(&dir).unwrap();
            for j in 0..per_class {
                image::RgbImage::from_pixel(12, 9, image::Rgb([30 * k as u8, j as u8, 0]))
                    .save(dir.join(format!("frame_{j:04}.jpg")))
                    .unwrap();
            }
        }
    }

    fn data(root: &Path, dataset: &str) -> DataConfig {
        DataConfig { root: Some(root.display().to_string()), image_size: 8, ..DataConfig::defaults(dataset) }
    }

    fn label(classes: i64) -> Vec<Wanted> {
        vec![Wanted { target: LABEL.into(), shape: TargetShape::PerImage, classes }]
    }

    fn files(l: Loaded) -> FileSources {
        match l {
            Loaded::Files(f) => f,
            Loaded::Memory(_) | Loaded::Sources(_) => panic!("class folders are read file by file"),
        }
    }

    #[test]
    fn split_counts_follow_60_20_20_and_keep_small_classes_usable() {
        assert_eq!(split_counts(10), (6, 2));
        assert_eq!(split_counts(100), (60, 20));
        assert_eq!(split_counts(1), (1, 0));
        assert_eq!(split_counts(2), (1, 1));
        assert_eq!(split_counts(3), (2, 1));
        for n in 1..200 {
            let (t, v) = split_counts(n);
            assert!(t >= 1 && t + v <= n && (n < 2 || v >= 1), "{n}: {t} {v}");
        }
    }

    #[test]
    fn both_layouts_read_classes_in_order_and_split_by_class() {
        let dir = tempfile::tempdir().unwrap();
        write_domain(dir.path(), "images", &["mug", "bike", "pen"], 10);
        let d = data(dir.path(), "office31");
        let mut w = label(0);
        OFFICE31.resolve_targets(&d, &mut w).unwrap();
        assert_eq!(w[0].classes, 3);
        let s = files(OFFICE31.load(&d, 0, &w).unwrap());
        assert_eq!((s.train.len(), s.val.len()), (18, 6));
        let mut per_class = [0; 3];
        for i in 0..s.val.len() {
            let Value::Class(c) = s.val.read(i).unwrap().targets[0] else { panic!() };
            per_class[c as usize] += 1;
        }
        assert_eq!(per_class, [2, 2, 2], "stratified; bike = 0, mug = 1, pen = 2 (sorted)");
        let x = s.train.read(0).unwrap();
        assert_eq!(x.image.len(), 3 * 8 * 8);
        // Office-Home: the classes directly under the root.
        let home = tempfile::tempdir().unwrap();
        write_domain(home.path(), "", &["Alarm_Clock", "Bike"], 5);
        let s = files(OFFICE_HOME.load(&data(home.path(), "office_home"), 0, &label(2)).unwrap());
        assert_eq!((s.train.len(), s.val.len()), (6, 2));
    }

    #[test]
    fn bad_folders_are_one_line_errors() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("images")).unwrap();
        let d = data(dir.path(), "office31");
        let e = OFFICE31.load(&d, 0, &label(3)).err().unwrap().to_string();
        assert!(e.contains("no class folders"), "{e}");
        write_domain(dir.path(), "images", &["a", "b"], 4);
        let e = OFFICE31.load(&d, 0, &label(3)).err().unwrap().to_string();
        assert!(e.contains("tasks[0].classes: 3") && e.contains("2 class folders"), "{e}");
        let listed = DataConfig { classes: vec!["a".into()], ..d.clone() };
        let e = OFFICE31.load(&listed, 0, &label(1)).err().unwrap().to_string();
        assert!(e.contains("class folder 'b' is not listed in data.classes"), "{e}");
        let listed = DataConfig { classes: vec!["b".into(), "a".into(), "c".into()], ..d.clone() };
        let e = OFFICE31.load(&listed, 0, &label(3)).err().unwrap().to_string();
        assert!(e.contains("'c' has no folder"), "{e}");
        std::fs::create_dir_all(dir.path().join("images/c")).unwrap();
        let e = OFFICE31.load(&d, 0, &label(3)).err().unwrap().to_string();
        assert!(e.contains("no .jpg") && e.contains("'c'"), "{e}");
        let mut mask = vec![Wanted { target: "mask".into(), shape: TargetShape::PerPixel, classes: 2 }];
        let e = OFFICE31.resolve_targets(&d, &mut mask).unwrap_err().to_string();
        assert!(e.contains("tasks[0].target") && e.contains("'label'"), "{e}");
    }

    #[test]
    fn a_class_list_orders_the_labels() {
        let dir = tempfile::tempdir().unwrap();
        write_domain(dir.path(), "", &["a", "b"], 5);
        let d = DataConfig { classes: vec!["b".into(), "a".into()], ..data(dir.path(), "office_home") };
        let s = files(OFFICE_HOME.load(&d, 0, &label(2)).unwrap());
        let labels: Vec<i64> = (0..s.train.len())
            .map(|i| match s.train.read(i).unwrap().targets[0] {
                Value::Class(c) => c,
                _ => panic!(),
            })
            .collect();
        assert_eq!(labels.iter().filter(|&&c| c == 0).count(), 3);
        // Red 30·k marks the folder (JPEG moves it a little): class 0 ('b') is folder index 1.
        let i = labels.iter().position(|&c| c == 0).unwrap();
        let red = s.train.read(i).unwrap().image[0];
        assert!((27..=33).contains(&red), "{red}");
    }
}
