//! `folder`: the user's own data.
//!
//! ```text
//! <root>/images/<name>.{png,jpg,jpeg}    the images (any size; resized to data.image_size²)
//! <root>/masks/<name>.png                optional: per-pixel classes, grey (the value is the
//!                                        class) or palette (the index is); 255 = not scored
//! <root>/labels.csv                      optional: per-image classes, a header row
//!                                        `file,<target>,<target>,…[,split]` and one row per image
//! ```
//! Tasks name a labels.csv column as the target of a classification task, or `mask` for a
//! segmentation task. `tasks[].classes` declares the number of classes, or is 0 (omitted) to
//! infer it from the data (largest label + 1). The `split` column (`train` / `val`) places an
//! image; without it `data.folder.val_fraction` of the images go to val, chosen by a hash of
//! the file name (stable when images are added).
use super::decode::{image_names, read_mask_png, read_rgb, resize_nearest, rgb_to_chw};
use super::jpeg::ImageDecode;
use super::stream::{FileSources, Sample, SampleSource, TargetSpec, Value};
use super::{on_bad_file, Dataset, Loaded, TargetInfo, TargetShape, Wanted, IGNORE_LABEL, IMAGENET};
use crate::config::{DataConfig, OnBadFile};
use crate::{user_bail, user_error};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// The per-pixel target's name.
pub const MASK: &str = "mask";
pub const LABELS_FILE: &str = "labels.csv";
/// Class numbers must stay below this (as `tasks[].classes` must).
const MAX_CLASSES: i64 = 65536;

/// A labels.csv row's value per column (None: blank), or why the row is unusable.
type RowValues = Result<Vec<Option<i64>>, String>;

/// What the directory holds.
#[derive(Debug)]
struct Index {
    root: PathBuf,
    /// Image file names, sorted.
    images: Vec<String>,
    has_masks: bool,
    /// labels.csv columns other than `file` and `split`.
    columns: Vec<String>,
    /// Image file name → (labels.csv line, values per column or why the row is unusable).
    rows: HashMap<String, (usize, RowValues)>,
    /// Image file name → val (true) / train, from the `split` column.
    split: HashMap<String, bool>,
    /// Rows that name no image, duplicate rows, unreadable split values.
    stray: Vec<String>,
}

fn scan(root: &Path) -> anyhow::Result<Index> {
    let images_dir = root.join("images");
    let mut images = image_names(&images_dir).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => {
            user_error!(
                "{} not found (the folder dataset reads <data.root>/images, masks/, labels.csv)",
                images_dir.display()
            )
        }
        _ => user_error!("{}: cannot read: {e}", images_dir.display()),
    })?;
    images.sort();
    if images.is_empty() {
        let subfolders =
            std::fs::read_dir(&images_dir).map(|d| d.flatten().any(|e| e.path().is_dir())).unwrap_or(false);
        let hint = if subfolders { " (a class per subfolder is data.dataset: office31's layout)" } else { "" };
        user_bail!("{}: no .png, .jpg or .jpeg images{hint}", images_dir.display());
    }
    let mut index = Index {
        root: root.to_path_buf(),
        has_masks: root.join("masks").is_dir(),
        images,
        columns: Vec::new(),
        rows: HashMap::new(),
        split: HashMap::new(),
        stray: Vec::new(),
    };
    let csv = root.join(LABELS_FILE);
    if csv.is_file() {
        read_labels(&csv, &mut index)?;
    }
    Ok(index)
}

fn read_labels(csv: &Path, index: &mut Index) -> anyhow::Result<()> {
    let text = crate::files::read_to_string(csv, 1 << 30)?;
    let mut lines = text.lines().enumerate().filter(|(_, l)| !l.trim().is_empty());
    let Some((_, header)) = lines.next() else {
        user_bail!("{}: empty; the first row names the columns (file,<target>,…)", csv.display())
    };
    let header: Vec<String> = fields(header);
    if header.first().map(String::as_str) != Some("file") {
        user_bail!(
            "{}: the header row must start with 'file' (file,<target>,…[,split]), got '{}'",
            csv.display(),
            header.join(",")
        );
    }
    let split_col = header.iter().position(|h| h == "split");
    let columns: Vec<(usize, String)> =
        header.iter().enumerate().skip(1).filter(|(i, _)| Some(*i) != split_col).map(|(i, h)| (i, h.clone())).collect();
    for (_, c) in &columns {
        if c.is_empty() || c == MASK {
            user_bail!("{}: column name '{c}' is reserved or empty", csv.display());
        }
    }
    index.columns = columns.iter().map(|(_, c)| c.clone()).collect();
    let by_stem: HashMap<String, String> = index
        .images
        .iter()
        .map(|n| (Path::new(n).file_stem().unwrap_or_default().to_string_lossy().into_owned(), n.clone()))
        .collect();
    for (i, line) in lines {
        let at = format!("{} line {}", csv.display(), i + 1);
        let f = fields(line);
        // The file may be named with or without its extension.
        let Some(name) =
            index.images.binary_search(&f[0]).ok().map(|_| f[0].clone()).or_else(|| by_stem.get(&f[0]).cloned())
        else {
            index.stray.push(format!("{at}: no image '{}' in {}", f[0], index.root.join("images").display()));
            continue;
        };
        if index.rows.contains_key(&name) {
            index.stray.push(format!("{at}: a second row for '{name}' (the first is used)"));
            continue;
        }
        let values = if f.len() != header.len() {
            Err(format!("{at}: {} fields, the header has {}", f.len(), header.len()))
        } else {
            columns
                .iter()
                .map(|(k, c)| match f[*k].as_str() {
                    "" => Ok(None),
                    v => {
                        v.parse::<i64>().ok().filter(|v| (0..MAX_CLASSES).contains(v)).map(Some).ok_or_else(|| {
                            format!("{at}: {c} = '{v}' is not a class number (0 to {})", MAX_CLASSES - 1)
                        })
                    }
                })
                .collect()
        };
        if let Some(v) = split_col.and_then(|k| f.get(k)) {
            match v.as_str() {
                "train" => {
                    index.split.insert(name.clone(), false);
                }
                "val" => {
                    index.split.insert(name.clone(), true);
                }
                other => index.stray.push(format!("{at}: split '{other}' must be train or val (hashed instead)")),
            }
        }
        index.rows.insert(name, (i + 1, values));
    }
    Ok(())
}

/// Comma-separated fields, trimmed, surrounding double quotes removed.
fn fields(line: &str) -> Vec<String> {
    line.split(',').map(|f| f.trim().trim_matches('"').trim().to_string()).collect()
}

/// FNV-1a of the file name: the image's place in train or val without a split column.
fn is_val_by_hash(name: &str, fraction: f64) -> bool {
    let h = crate::rng::name_index(name);
    ((h % 1_000_000) as f64) < fraction * 1_000_000.0
}

/// The folder dataset: the user's own images, masks and labels.csv.
pub struct Folder;

impl Dataset for Folder {
    fn name(&self) -> &'static str {
        "folder"
    }

    /// The targets are labels.csv's columns and `mask`: see [`Dataset::resolve_targets`].
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

    fn check(&self, d: &DataConfig) -> Result<(), String> {
        if d.root.is_none() {
            return Err(
                "data.root: the folder dataset needs the directory holding images/ (and masks/, labels.csv)".into()
            );
        }
        Ok(())
    }

    /// Checks each wanted target against the folder's layout and, when some `classes` are 0
    /// (infer), against its files, filling those in from the data: largest label + 1 (mask value 255 is "not scored" and does not
    /// count).
    fn resolve_targets(&self, d: &DataConfig, wanted: &mut [Wanted]) -> anyhow::Result<()> {
        check_shapes(wanted)?;
        if wanted.iter().all(|w| w.classes > 0) {
            // Nothing to infer: the files are checked when they are read, so a trained model
            // can be used (predict, eval of another split) without its training folder.
            return Ok(());
        }
        let root = folder_root(d)?;
        let index = scan(&root)?;
        check_targets(wanted, &index)?;
        for (i, w) in wanted.iter_mut().enumerate().filter(|(_, w)| w.classes == 0) {
            let max = if w.target == MASK {
                let masks: Vec<PathBuf> = index.images.iter().map(|n| mask_path(&root, n)).collect();
                let threads = super::decode_threads(d);
                let per = masks.len().div_ceil(threads).max(1);
                std::thread::scope(|s| {
                    let handles: Vec<_> = masks
                        .chunks(per)
                        .map(|chunk| {
                            s.spawn(move || {
                                chunk
                                    .iter()
                                    .filter_map(|p| read_mask_png(p).ok())
                                    .flat_map(|(_, _, v)| v.into_iter().filter(|&x| x != IGNORE_LABEL).max())
                                    .max()
                            })
                        })
                        .collect();
                    handles.into_iter().filter_map(|h| h.join().expect("a mask thread panicked")).max().map(i64::from)
                })
            } else {
                let k = index.columns.iter().position(|c| *c == w.target).expect("checked above");
                index.rows.values().filter_map(|(_, r)| r.as_ref().ok().and_then(|v| v[k])).max()
            };
            let Some(max) = max else {
                user_bail!(
                    "tasks[{i}].classes: 0 asks to infer the number of classes, but {} holds no '{}' labels; declare it",
                    root.display(),
                    w.target
                );
            };
            w.classes = max + 1;
            tracing::info!("data: target '{}' has {} classes (inferred from {})", w.target, max + 1, root.display());
        }
        Ok(())
    }

    fn load(&self, d: &DataConfig, _seed: u64, wanted: &[Wanted]) -> anyhow::Result<Loaded> {
        Ok(Loaded::Files(sources(d, wanted)?))
    }
}

/// The folder's targets are class labels: `mask` per pixel, labels.csv columns per image.
fn check_shapes(wanted: &[Wanted]) -> anyhow::Result<()> {
    for (i, w) in wanted.iter().enumerate() {
        match w.shape {
            TargetShape::PerPixel if w.target != MASK => {
                user_bail!("tasks[{i}].target: '{}': a segmentation task learns the folder's 'mask'", w.target)
            }
            TargetShape::PerImage if w.target == MASK => {
                user_bail!("tasks[{i}].target: 'mask' is per-pixel; a classification task learns a labels.csv column")
            }
            TargetShape::PerPixelDepth | TargetShape::PerPixelNormal | TargetShape::Binary | TargetShape::Value => {
                user_bail!("tasks[{i}].kind: the folder dataset has class labels only (labels.csv columns and mask)")
            }
            _ => {}
        }
    }
    Ok(())
}

/// The distinct targets, in first-asked order, with the classes each must fit in.
fn distinct_targets(wanted: &[Wanted]) -> Vec<(String, TargetShape, i64)> {
    let mut out: Vec<(String, TargetShape, i64)> = Vec::new();
    for w in wanted {
        if !out.iter().any(|(n, _, _)| *n == w.target) {
            out.push((w.target.clone(), w.shape, w.classes));
        }
    }
    out
}

fn folder_root(d: &DataConfig) -> anyhow::Result<PathBuf> {
    match &d.root {
        Some(r) => Ok(PathBuf::from(r)),
        None => {
            user_bail!("data.root: the folder dataset needs the directory holding images/ (and masks/, labels.csv)")
        }
    }
}

/// Every wanted target exists: `mask` needs masks/, others a labels.csv column.
fn check_targets(wanted: &[Wanted], index: &Index) -> anyhow::Result<()> {
    for (i, t) in wanted.iter().enumerate() {
        if t.target == MASK {
            if !index.has_masks {
                user_bail!("tasks[{i}].target: mask, but {} has no masks/ directory", index.root.display());
            }
        } else if !index.columns.contains(&t.target) {
            let csv = index.root.join(LABELS_FILE);
            if index.columns.is_empty() && !csv.is_file() {
                user_bail!(
                    "tasks[{i}].target: '{}' needs {} (file,{},…), which does not exist",
                    t.target,
                    csv.display(),
                    t.target
                );
            }
            user_bail!(
                "tasks[{i}].target: {} has no column '{}' (it has: {})",
                csv.display(),
                t.target,
                index.columns.join(", ")
            );
        }
    }
    Ok(())
}

fn mask_path(root: &Path, image: &str) -> PathBuf {
    let stem = Path::new(image).file_stem().unwrap_or_default().to_string_lossy().into_owned();
    root.join("masks").join(format!("{stem}.png"))
}

pub struct FolderSource {
    root: PathBuf,
    split: &'static str,
    /// Image file names.
    images: Vec<String>,
    /// Per image: labels.csv line and the values of the wanted per-image targets, or why not.
    labels: Vec<Result<(usize, Vec<i64>), String>>,
    /// The wanted targets and their classes.
    wanted: Vec<(String, TargetShape, i64)>,
    targets: Vec<TargetSpec>,
    size: u32,
    decode: ImageDecode,
}

/// The train and val sources. `data.train_size` / `data.val_size` other than 0 take the first N
/// images (by name) of each split.
pub fn sources(d: &DataConfig, wanted: &[Wanted]) -> anyhow::Result<FileSources> {
    check_shapes(wanted)?;
    let decode = ImageDecode::of(d).map_err(|e| user_error!("{e}"))?;
    let root = folder_root(d)?;
    let index = scan(&root)?;
    check_targets(wanted, &index)?;
    if let Some(first) = index.stray.first() {
        match on_bad_file(&Folder, d) {
            OnBadFile::Refuse => user_bail!(
                "{first}{} (data.on_bad_file: refuse)",
                if index.stray.len() > 1 {
                    format!("; {} more problem(s) in labels.csv", index.stray.len() - 1)
                } else {
                    String::new()
                }
            ),
            OnBadFile::Skip => index.stray.iter().for_each(|s| tracing::warn!("data: ignoring {s}")),
        }
    }
    if let Some((i, w)) = wanted.iter().enumerate().find(|(_, w)| w.classes <= 0) {
        anyhow::bail!("data: target '{}' of tasks[{i}] has {} classes: resolve the config first", w.target, w.classes);
    }
    let wanted = distinct_targets(wanted);
    let per_image: Vec<usize> = wanted
        .iter()
        .filter(|(_, s, _)| *s == TargetShape::PerImage)
        .map(|(n, _, _)| index.columns.iter().position(|c| c == n).expect("checked"))
        .collect();
    let (mut train, mut val) = (Vec::new(), Vec::new());
    for name in &index.images {
        let is_val = index.split.get(name).copied().unwrap_or_else(|| is_val_by_hash(name, d.folder.val_fraction));
        if is_val { &mut val } else { &mut train }.push(name.clone());
    }
    let targets: Vec<TargetSpec> = wanted.iter().map(|(n, s, _)| TargetSpec { name: n.clone(), shape: *s }).collect();
    let source = |mut images: Vec<String>,
                  wanted_n: usize,
                  key: &str,
                  split: &'static str|
     -> anyhow::Result<Arc<dyn SampleSource>> {
        if images.is_empty() {
            user_bail!(
                "data.folder.val_fraction: no image of {} went to the {split} split; add a split column to {LABELS_FILE} \
                 or change data.folder.val_fraction ({})",
                root.join("images").display(),
                d.folder.val_fraction
            );
        }
        if wanted_n > images.len() {
            user_bail!(
                "{key}: {wanted_n} samples asked for, but the {split} split of {} has {}",
                root.display(),
                images.len()
            );
        }
        if wanted_n > 0 {
            images.truncate(wanted_n);
        }
        let labels = images
            .iter()
            .map(|name| {
                if per_image.is_empty() {
                    return Ok((0, Vec::new()));
                }
                match index.rows.get(name) {
                    None => Err(format!("{}: no row for {name}", root.join(LABELS_FILE).display())),
                    Some((_, Err(e))) => Err(e.clone()),
                    Some((line, Ok(values))) => per_image
                        .iter()
                        .map(|&k| {
                            values[k].ok_or_else(|| {
                                format!(
                                    "{} line {line}: no {} for {name}",
                                    root.join(LABELS_FILE).display(),
                                    index.columns[k]
                                )
                            })
                        })
                        .collect::<Result<Vec<_>, _>>()
                        .map(|v| (*line, v)),
                }
            })
            .collect();
        Ok(Arc::new(FolderSource {
            root: root.clone(),
            split,
            images,
            labels,
            wanted: wanted.clone(),
            targets: targets.clone(),
            size: d.image_size as u32,
            decode,
        }))
    };
    Ok(FileSources {
        train: source(train, d.train_size, "data.train_size", "train")?,
        val: source(val, d.val_size, "data.val_size", "val")?,
    })
}

impl SampleSource for FolderSource {
    fn name(&self) -> String {
        format!("folder {} ({})", self.split, self.root.display())
    }

    fn len(&self) -> usize {
        self.images.len()
    }

    fn image_shape(&self) -> (usize, usize, usize) {
        (3, self.size as usize, self.size as usize)
    }

    fn targets(&self) -> &[TargetSpec] {
        &self.targets
    }

    fn read(&self, i: usize) -> anyhow::Result<Sample> {
        let name = &self.images[i];
        let (line, labels) = self.labels[i].clone().map_err(|m| user_error!("{m}"))?;
        let image_path = self.root.join("images").join(name);
        let (img, (w, h)) = read_rgb(&image_path, self.decode, Some(self.size))?;
        let s = self.size;
        let mut labels = labels.into_iter();
        let mut targets = Vec::new();
        for (target, shape, classes) in &self.wanted {
            match shape {
                TargetShape::PerPixel => {
                    let path = mask_path(&self.root, name);
                    if !path.is_file() {
                        return Err(user_error!(
                            "{}: missing (every image needs a mask when a task reads 'mask')",
                            path.display()
                        ));
                    }
                    let (mw, mh, values) = read_mask_png(&path)?;
                    if (mw, mh) != (w, h) {
                        return Err(user_error!(
                            "{}: mask is {mw}×{mh} but {} is {w}×{h}",
                            path.display(),
                            image_path.display()
                        ));
                    }
                    if let Some(p) = values.iter().position(|&v| v != IGNORE_LABEL && v as i64 >= *classes) {
                        return Err(user_error!(
                            "{}: value {} at ({}, {}) is not a class (0..{classes}) or 255 (not scored)",
                            path.display(),
                            values[p],
                            p % w as usize,
                            p / w as usize
                        ));
                    }
                    targets
                        .push(Value::Labels(resize_nearest(&values, h as usize, w as usize, s as usize, s as usize)));
                }
                _ => {
                    let v = labels.next().expect("one value per per-image target");
                    if v >= *classes {
                        return Err(user_error!(
                            "{} line {line}: {target} = {v} for {name}, but the task declares {classes} classes (0..{classes})",
                            self.root.join(LABELS_FILE).display()
                        ));
                    }
                    targets.push(Value::Class(v));
                }
            }
        }
        Ok(Sample { image: rgb_to_chw(&img, s, s), targets })
    }
}

/// The first line of a labels.csv row, for tests.
#[cfg(test)]
fn row_of(index: &Index, name: &str) -> Option<usize> {
    index.rows.get(name).map(|(l, _)| *l)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn data(root: &Path) -> DataConfig {
        DataConfig {
            root: Some(root.display().to_string()),
            image_size: 8,
            folder: crate::config::FolderOptions { val_fraction: 0.5 },
            ..DataConfig::defaults("folder")
        }
    }

    fn want(target: &str, classes: i64) -> Wanted {
        let shape = if target == MASK { TargetShape::PerPixel } else { TargetShape::PerImage };
        Wanted { target: target.into(), shape, classes }
    }

    /// A classification task on `kind` and a segmentation task on `mask`, classes as given.
    fn tasks(kind: i64, mask: i64) -> Vec<Wanted> {
        vec![want("kind", kind), want(MASK, mask)]
    }

    /// Six 10×6 images, masks with classes 0..=2 (and a 255), labels.csv with `kind` and a split.
    fn write_folder(root: &Path) {
        std::fs::create_dir_all(root.join("images")).unwrap();
        std::fs::create_dir_all(root.join("masks")).unwrap();
        let mut csv = String::from("file,kind,split\n");
        for i in 0..6 {
            image::RgbImage::from_pixel(10, 6, image::Rgb([40 * i as u8, 0, 0]))
                .save(root.join(format!("images/im{i}.png")))
                .unwrap();
            let m = image::GrayImage::from_fn(10, 6, |x, _| image::Luma([if x == 0 { 255 } else { (x % 3) as u8 }]));
            m.save(root.join(format!("masks/im{i}.png"))).unwrap();
            csv += &format!("im{i}.png,{},{}\n", i % 4, if i < 4 { "train" } else { "val" });
        }
        std::fs::write(root.join(LABELS_FILE), csv).unwrap();
    }

    #[test]
    fn classes_are_inferred_or_declared() {
        let dir = tempfile::tempdir().unwrap();
        write_folder(dir.path());
        let mut wanted = tasks(0, 0);
        Folder.resolve_targets(&data(dir.path()), &mut wanted).unwrap();
        assert_eq!((wanted[0].classes, wanted[1].classes), (4, 3));
        let s = sources(&data(dir.path()), &wanted).unwrap();
        assert_eq!((s.train.len(), s.val.len()), (4, 2));
        let x = s.val.read(1).unwrap();
        assert_eq!(x.targets[0], Value::Class(1));
        let Value::Labels(m) = &x.targets[1] else { panic!() };
        assert_eq!(m.len(), 64);
        assert_eq!(m[0], IGNORE_LABEL);
        // A declared count too small for the data: the sample with the larger label is bad.
        let mut small = tasks(3, 0);
        Folder.resolve_targets(&data(dir.path()), &mut small).unwrap();
        let s = sources(&data(dir.path()), &small).unwrap();
        let e = s.train.read(3).unwrap_err().to_string();
        assert!(e.contains("labels.csv line 5") && e.contains("kind = 3") && e.contains("3 classes"), "{e}");
        let index = scan(dir.path()).unwrap();
        assert_eq!(row_of(&index, "im3.png"), Some(5));
    }

    #[test]
    fn masks_that_do_not_fit_are_clear_errors() {
        let dir = tempfile::tempdir().unwrap();
        write_folder(dir.path());
        image::GrayImage::from_pixel(9, 6, image::Luma([1])).save(dir.path().join("masks/im0.png")).unwrap();
        image::GrayImage::from_pixel(10, 6, image::Luma([7])).save(dir.path().join("masks/im1.png")).unwrap();
        image::RgbImage::from_pixel(10, 6, image::Rgb([1, 2, 3])).save(dir.path().join("masks/im2.png")).unwrap();
        std::fs::remove_file(dir.path().join("masks/im3.png")).unwrap();
        let mut wanted = tasks(0, 3);
        Folder.resolve_targets(&data(dir.path()), &mut wanted).unwrap();
        let s = sources(&data(dir.path()), &wanted).unwrap();
        let e = |i| s.train.read(i).unwrap_err().to_string();
        assert!(e(0).contains("masks/im0.png: mask is 9×6 but") && e(0).contains("10×6"), "{}", e(0));
        assert!(e(1).contains("masks/im1.png: value 7 at (0, 0)") && e(1).contains("0..3"), "{}", e(1));
        assert!(e(2).contains("masks/im2.png") && e(2).contains("Rgb"), "{}", e(2));
        assert!(e(3).contains("masks/im3.png: missing"), "{}", e(3));
    }

    #[test]
    fn csv_problems_and_missing_targets() {
        let dir = tempfile::tempdir().unwrap();
        write_folder(dir.path());
        let csv = "file,kind,split\nim0.png,1,train\nim1,x,train\nim2.png,1\nghost.png,1,train\nim0.png,2,train\nim4.png,,val\n";
        std::fs::write(dir.path().join(LABELS_FILE), csv).unwrap();
        let mut d = data(dir.path());
        d.on_bad_file = Some(OnBadFile::Skip);
        let s = sources(&d, &[want("kind", 2)]).unwrap();
        // Train by split column: im0, im1 (im2's row is short, so hashed), others hashed.
        let names: Vec<String> =
            (0..s.train.len()).map(|i| format!("{:?}", s.train.read(i).map(|x| x.targets))).collect();
        assert!(names[0].contains("Class(1)"), "{names:?}");
        let e = s.train.read(1).unwrap_err().to_string();
        assert!(e.contains("line 3") && e.contains("'x' is not a class number"), "{e}");
        d.on_bad_file = Some(OnBadFile::Refuse);
        let e = sources(&d, &[want("kind", 2)]).err().unwrap().to_string();
        assert!(e.contains("ghost.png") && e.contains("1 more problem"), "{e}");
        let e = sources(&d, &[want("colour", 2)]).err().unwrap().to_string();
        assert!(e.contains("tasks[0].target") && e.contains("no column 'colour'") && e.contains("kind"), "{e}");
        std::fs::remove_dir_all(dir.path().join("masks")).unwrap();
        let e = sources(&data(dir.path()), &tasks(2, 3)).err().unwrap().to_string();
        assert!(e.contains("tasks[1].target") && e.contains("no masks/"), "{e}");
        let e = Folder.resolve_targets(&data(dir.path()), &mut tasks(0, 3)).unwrap_err().to_string();
        assert!(e.contains("tasks[1].target") && e.contains("no masks/"), "{e}");
    }

    #[test]
    fn the_hash_split_depends_only_on_the_name() {
        let names: Vec<String> = (0..2000).map(|i| format!("img_{i}.jpg")).collect();
        let val = names.iter().filter(|n| is_val_by_hash(n, 0.2)).count();
        assert!((300..500).contains(&val), "{val}");
        assert!(names.iter().all(|n| is_val_by_hash(n, 0.2) == is_val_by_hash(n, 0.2)));
        assert!(names.iter().filter(|n| is_val_by_hash(n, 0.2)).all(|n| is_val_by_hash(n, 0.5)));
    }
}
