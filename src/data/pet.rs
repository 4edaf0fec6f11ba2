//! `pet`: the Oxford-IIIT Pet dataset (Parkhi et al. 2012) in its published layout.
//!
//! ```text
//! <root>/images/<Name>_<n>.jpg
//! <root>/annotations/list.txt          # '#' comment lines, then "NAME CLASS-ID SPECIES BREED-ID"
//! <root>/annotations/trainval.txt      # the same four columns: the train split
//! <root>/annotations/test.txt          # the val split
//! <root>/annotations/trimaps/<Name>_<n>.png   # 1 = pet, 2 = background, 3 = border
//! ```
//! Targets: `breed` (37 classes, CLASS-ID − 1), `species` (2: cat, dog; SPECIES − 1) and
//! `trimap` (per pixel, trimap value − 1: 0 pet, 1 background, 2 border; with
//! `data.pet.border: ignore` border pixels are not scored and there are 2 classes).
//!
//! Images are decoded in parallel, resized to `data.image_size`² (bilinear with antialiasing;
//! trimaps nearest-neighbour) and held as uint8, or streamed when they do not fit in
//! `data.max_memory_mb`. A sample whose image or trimap cannot be decoded, whose trimap does not
//! match its image, or whose labels are inconsistent (out of range, species against the
//! published naming rule that cat breeds are capitalised, a CLASS-ID other than list.txt's or
//! other than the rest of its breed's) is listed once and skipped, or refused with
//! `data.on_bad_file: refuse`.
use super::decode::{read_mask_png, read_rgb, resize_nearest, rgb_to_chw};
use super::jpeg::ImageDecode;
use super::stream::{FileSources, Sample, SampleSource, TargetSpec, Value};
use super::{root_dir, Dataset, Loaded, TargetInfo, TargetShape, Wanted, IGNORE_LABEL, IMAGENET};
use crate::config::{DataConfig, OnBadFile, PetBorder};
use crate::{user_bail, user_error};
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;

pub const BREEDS: i64 = 37;
/// Breed ids within a species: 12 cat breeds, 25 dog breeds.
pub const CAT_BREEDS: i64 = 12;
pub const DOG_BREEDS: i64 = 25;
const FETCH_HINT: &str = "set data.download: true (or run scripts/fetch.sh pet) to download Oxford-IIIT Pet";

pub fn targets(border: PetBorder) -> [TargetInfo; 3] {
    [
        TargetInfo { name: "breed", shape: TargetShape::PerImage, classes: BREEDS },
        TargetInfo { name: "species", shape: TargetShape::PerImage, classes: 2 },
        TargetInfo {
            name: "trimap",
            shape: TargetShape::PerPixel,
            classes: match border {
                PetBorder::Class => 3,
                PetBorder::Ignore => 2,
            },
        },
    ]
}

/// One line of a list file.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Line {
    name: String,
    class: i64,
    species: i64,
    breed: i64,
}

/// A sample: its name and labels `(breed 0..37, species 0..2)`, or what is wrong with them.
#[derive(Debug, Clone)]
struct Entry {
    name: String,
    labels: Result<(i64, i64), String>,
}

pub struct PetSource {
    root: PathBuf,
    split: &'static str,
    entries: Vec<Entry>,
    size: u32,
    decode: ImageDecode,
    border: PetBorder,
    targets: Vec<TargetSpec>,
}

/// Oxford-IIIT Pet: breed, species, trimap segmentation.
pub struct Pet;

impl Dataset for Pet {
    fn name(&self) -> &'static str {
        "pet"
    }

    fn targets(&self, d: &DataConfig) -> Option<Vec<TargetInfo>> {
        Some(targets(d.pet.border).to_vec())
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

    /// The published archive has a few broken and grey files.
    fn default_on_bad_file(&self) -> OnBadFile {
        OnBadFile::Skip
    }

    fn load(&self, d: &DataConfig, _seed: u64, _wanted: &[Wanted]) -> anyhow::Result<Loaded> {
        Ok(Loaded::Files(sources(d)?))
    }
}

/// The train (trainval.txt) and val (test.txt) sources; `data.train_size` / `data.val_size`
/// other than 0 take the first N lines.
pub fn sources(d: &DataConfig) -> anyhow::Result<FileSources> {
    let decode = ImageDecode::of(d).map_err(|e| user_error!("{e}"))?;
    let root = root_dir(d);
    if !root.is_dir() {
        user_bail!("data.root: Oxford-IIIT Pet directory {} not found; {FETCH_HINT}", root.display());
    }
    let ann = root.join("annotations");
    let reference = read_list(&ann.join("list.txt"))?;
    let known: HashMap<&str, &Line> =
        reference.iter().filter_map(|l| l.as_ref().ok()).map(|l| (l.name.as_str(), l)).collect();
    // The class most list.txt images of each breed name carry.
    let mut votes: HashMap<&str, BTreeMap<i64, usize>> = HashMap::new();
    for l in known.values() {
        *votes.entry(breed_name(&l.name)).or_default().entry(l.class).or_default() += 1;
    }
    let majority: HashMap<&str, i64> = votes
        .into_iter()
        .map(|(k, v)| (k, v.into_iter().max_by_key(|&(c, n)| (n, std::cmp::Reverse(c))).map(|(c, _)| c).unwrap_or(0)))
        .collect();
    let split = |file: &str, wanted: usize, key: &str, split: &'static str| -> anyhow::Result<Arc<dyn SampleSource>> {
        let path = ann.join(file);
        let lines = read_list(&path)?;
        if lines.is_empty() {
            user_bail!("{}: lists no images", path.display());
        }
        let n = if wanted == 0 { lines.len() } else { wanted };
        if n > lines.len() {
            user_bail!("{key}: {wanted} samples asked for, but {} lists only {}", path.display(), lines.len());
        }
        let entries = lines[..n]
            .iter()
            .map(|l| match l {
                Ok(l) => Entry { name: l.name.clone(), labels: check(l, &path, &known, &majority) },
                Err(e) => Entry { name: String::new(), labels: Err(e.clone()) },
            })
            .collect();
        Ok(Arc::new(PetSource {
            root: root.clone(),
            split,
            entries,
            size: d.image_size as u32,
            decode,
            border: d.pet.border,
            targets: targets(d.pet.border)
                .iter()
                .map(|t| TargetSpec { name: t.name.to_string(), shape: t.shape })
                .collect(),
        }))
    };
    Ok(FileSources {
        train: split("trainval.txt", d.train_size, "data.train_size", "train")?,
        val: split("test.txt", d.val_size, "data.val_size", "val")?,
    })
}

/// The lines of a list file (comments and blank lines dropped), each parsed or the reason it
/// could not be, naming the file and line.
fn read_list(path: &Path) -> anyhow::Result<Vec<Result<Line, String>>> {
    crate::files::reject_special(path)?;
    let text = std::fs::read(path).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => user_error!("{} not found; {FETCH_HINT}", path.display()),
        _ => user_error!("{}: cannot read: {e}", path.display()),
    })?;
    let text = String::from_utf8_lossy(&text);
    Ok(text
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty() && !l.trim_start().starts_with('#'))
        .map(|(i, l)| {
            let f: Vec<&str> = l.split_whitespace().collect();
            let num = |s: &str| s.parse::<i64>().ok();
            match f.as_slice() {
                [name, c, s, b] => match (num(c), num(s), num(b)) {
                    (Some(class), Some(species), Some(breed)) => {
                        Ok(Line { name: name.to_string(), class, species, breed })
                    }
                    _ => Err(malformed(path, i, l)),
                },
                _ => Err(malformed(path, i, l)),
            }
        })
        .collect())
}

fn malformed(path: &Path, i: usize, line: &str) -> String {
    format!("{} line {}: expected 'NAME CLASS-ID SPECIES BREED-ID', got '{}'", path.display(), i + 1, line.trim())
}

/// `Abyssinian_100` → `Abyssinian`.
fn breed_name(name: &str) -> &str {
    name.rsplit_once('_').map_or(name, |(b, _)| b)
}

/// The sample's labels, or why they cannot be trusted.
fn check(
    l: &Line,
    path: &Path,
    known: &HashMap<&str, &Line>,
    majority: &HashMap<&str, i64>,
) -> Result<(i64, i64), String> {
    let at = format!("{} ({})", path.display(), l.name);
    if !(1..=BREEDS).contains(&l.class) {
        return Err(format!("{at}: CLASS-ID {} is not in 1..={BREEDS}", l.class));
    }
    let cat = l.name.starts_with(|c: char| c.is_ascii_uppercase());
    let (species, breeds, word) = if cat { (1, CAT_BREEDS, "cat") } else { (2, DOG_BREEDS, "dog") };
    if l.species != species {
        return Err(format!(
            "{at}: SPECIES {} contradicts the name (capitalised names are cats: 1, others dogs: 2; this is a {word})",
            l.species
        ));
    }
    if !(1..=breeds).contains(&l.breed) {
        return Err(format!("{at}: BREED-ID {} is not in 1..={breeds} for a {word}", l.breed));
    }
    if let Some(r) = known.get(l.name.as_str()) {
        if (r.class, r.species, r.breed) != (l.class, l.species, l.breed) {
            return Err(format!(
                "{at}: labels {} {} {} disagree with annotations/list.txt ({} {} {})",
                l.class, l.species, l.breed, r.class, r.species, r.breed
            ));
        }
    }
    if let Some(&m) = majority.get(breed_name(&l.name)) {
        if m != l.class {
            return Err(format!(
                "{at}: CLASS-ID {}, but the other '{}' images are class {m}",
                l.class,
                breed_name(&l.name)
            ));
        }
    }
    Ok((l.class - 1, l.species - 1))
}

impl PetSource {
    fn image_path(&self, name: &str) -> PathBuf {
        self.root.join("images").join(format!("{name}.jpg"))
    }

    fn trimap_path(&self, name: &str) -> PathBuf {
        self.root.join("annotations").join("trimaps").join(format!("{name}.png"))
    }
}

impl SampleSource for PetSource {
    fn name(&self) -> String {
        format!("pet {} ({})", self.split, self.root.display())
    }

    fn len(&self) -> usize {
        self.entries.len()
    }

    fn image_shape(&self) -> (usize, usize, usize) {
        (3, self.size as usize, self.size as usize)
    }

    fn targets(&self) -> &[TargetSpec] {
        &self.targets
    }

    fn read(&self, i: usize) -> anyhow::Result<Sample> {
        let e = &self.entries[i];
        let (breed, species) = e.labels.clone().map_err(|m| user_error!("{m}"))?;
        let image_path = self.image_path(&e.name);
        let (img, (w, h)) = read_rgb(&image_path, self.decode, Some(self.size))?;
        let trimap_path = self.trimap_path(&e.name);
        let (tw, th, values) = read_mask_png(&trimap_path)?;
        if (tw, th) != (w, h) {
            return Err(user_error!(
                "{}: trimap is {tw}×{th} but {} is {w}×{h}",
                trimap_path.display(),
                image_path.display()
            ));
        }
        if let Some(p) = values.iter().position(|v| !(1..=3).contains(v)) {
            return Err(user_error!(
                "{}: value {} at ({}, {}); trimaps hold 1 (pet), 2 (background), 3 (border)",
                trimap_path.display(),
                values[p],
                p % w as usize,
                p / w as usize
            ));
        }
        let s = self.size;
        let border = match self.border {
            PetBorder::Class => 2,
            PetBorder::Ignore => IGNORE_LABEL,
        };
        let trimap = resize_nearest(&values, h as usize, w as usize, s as usize, s as usize)
            .into_iter()
            .map(|v| if v == 3 { border } else { v - 1 })
            .collect();
        Ok(Sample {
            image: rgb_to_chw(&img, s, s),
            targets: vec![Value::Class(breed), Value::Class(species), Value::Labels(trimap)],
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A three-image Pet directory: two cats of class 1, one dog of class 2.
    fn write_pet(root: &Path) {
        let ann = root.join("annotations");
        std::fs::create_dir_all(ann.join("trimaps")).unwrap();
        std::fs::create_dir_all(root.join("images")).unwrap();
        let list = "#Image CLASS-ID SPECIES BREED ID\n#ID: 1:37 Class ids\nAbyssinian_1 1 1 1\nAbyssinian_2 1 1 1\namerican_bulldog_1 2 2 1\n";
        std::fs::write(ann.join("list.txt"), list).unwrap();
        std::fs::write(ann.join("trainval.txt"), "Abyssinian_1 1 1 1\namerican_bulldog_1 2 2 1\n").unwrap();
        std::fs::write(ann.join("test.txt"), "Abyssinian_2 1 1 1\n").unwrap();
        for (k, name) in ["Abyssinian_1", "Abyssinian_2", "american_bulldog_1"].iter().enumerate() {
            let img =
                image::RgbImage::from_fn(20, 12, |x, y| image::Rgb([(x * 10) as u8, (y * 20) as u8, 60 * k as u8]));
            img.save(root.join("images").join(format!("{name}.jpg"))).unwrap();
            // Left half pet, right half background, column 10 border.
            let tri = image::GrayImage::from_fn(20, 12, |x, _| {
                image::Luma([if x < 10 {
                    1
                } else if x == 10 {
                    3
                } else {
                    2
                }])
            });
            tri.save(ann.join("trimaps").join(format!("{name}.png"))).unwrap();
        }
    }

    fn cfg(root: &Path, size: i64) -> DataConfig {
        let mut c = DataConfig::defaults("pet");
        c.root = Some(root.display().to_string());
        c.image_size = size;
        c
    }

    #[test]
    fn labels_and_trimaps_decode_as_documented() {
        let dir = tempfile::tempdir().unwrap();
        write_pet(dir.path());
        let s = sources(&cfg(dir.path(), 20)).unwrap();
        assert_eq!((s.train.len(), s.val.len()), (2, 1));
        let dog = s.train.read(1).unwrap();
        assert_eq!(dog.targets[..2], [Value::Class(1), Value::Class(1)]);
        assert_eq!(dog.image.len(), 3 * 400);
        let Value::Labels(t) = &dog.targets[2] else { panic!() };
        assert_eq!(t[..20].iter().map(|&v| v as i64).collect::<Vec<_>>()[..12], [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2, 1]);
        // The image is resized to 20×20 from 20×12; its blue channel holds 60·k (k = 2) everywhere.
        assert!(dog.image[800..].iter().all(|&b| b.abs_diff(120) <= 12), "{:?}", &dog.image[800..810]);
        let mut ignore = cfg(dir.path(), 20);
        ignore.pet.border = PetBorder::Ignore;
        let s = sources(&ignore).unwrap();
        let Value::Labels(t) = &s.train.read(0).unwrap().targets[2] else { panic!() };
        assert_eq!(t[10], IGNORE_LABEL);
        assert_eq!(targets(PetBorder::Ignore)[2].classes, 2);
    }

    #[test]
    fn bad_samples_say_what_is_wrong() {
        let dir = tempfile::tempdir().unwrap();
        write_pet(dir.path());
        let ann = dir.path().join("annotations");
        std::fs::write(
            ann.join("trainval.txt"),
            "Abyssinian_1 1 2 1\namerican_bulldog_1 2 2\nAbyssinian_2 1 1 1\namerican_bulldog_1 3 2 1\nAbyssinian_2 40 1 1\n",
        )
        .unwrap();
        let s = sources(&cfg(dir.path(), 16)).unwrap();
        let err = |i| s.train.read(i).unwrap_err().to_string();
        assert!(err(0).contains("trainval.txt (Abyssinian_1): SPECIES 2"), "{}", err(0));
        assert!(err(1).contains("trainval.txt line 2") && err(1).contains("expected"), "{}", err(1));
        assert!(s.train.read(2).is_ok());
        assert!(err(3).contains("disagree with annotations/list.txt"), "{}", err(3));
        assert!(err(4).contains("CLASS-ID 40"), "{}", err(4));
        // Undecodable image, trimap of the wrong size, trimap with a value outside 1..=3.
        std::fs::write(dir.path().join("images/Abyssinian_2.jpg"), b"\xff\xd8 truncated").unwrap();
        assert!(err(2).contains("images/Abyssinian_2.jpg") && err(2).contains("decode"), "{}", err(2));
        let s = sources(&cfg(dir.path(), 16)).unwrap();
        image::GrayImage::from_pixel(20, 11, image::Luma([1])).save(ann.join("trimaps/Abyssinian_2.png")).unwrap();
        std::fs::write(ann.join("test.txt"), "american_bulldog_1 2 2 1\n").unwrap();
        image::GrayImage::from_pixel(20, 12, image::Luma([9]))
            .save(ann.join("trimaps/american_bulldog_1.png"))
            .unwrap();
        let s2 = sources(&cfg(dir.path(), 16)).unwrap();
        let m = s2.val.read(0).unwrap_err().to_string();
        assert!(m.contains("american_bulldog_1.png") && m.contains("value 9"), "{m}");
        drop(s);
        std::fs::write(
            dir.path().join("images/Abyssinian_2.jpg"),
            std::fs::read(dir.path().join("images/Abyssinian_1.jpg")).unwrap(),
        )
        .unwrap();
        let s3 = sources(&cfg(dir.path(), 16)).unwrap();
        let m = s3.train.read(2).unwrap_err().to_string();
        assert!(m.contains("Abyssinian_2.png: trimap is 20×11"), "{m}");
    }

    #[test]
    fn missing_files_are_user_errors_with_the_fetch_hint() {
        let dir = tempfile::tempdir().unwrap();
        let e = sources(&cfg(&dir.path().join("nope"), 16)).err().unwrap().to_string();
        assert!(e.contains("nope") && e.contains("scripts/fetch.sh pet"), "{e}");
        write_pet(dir.path());
        std::fs::remove_file(dir.path().join("annotations/test.txt")).unwrap();
        let e = sources(&cfg(dir.path(), 16)).err().unwrap().to_string();
        assert!(e.contains("test.txt") && e.contains("scripts/fetch.sh pet"), "{e}");
    }
}
