//! `shapes`: a synthetic multi-task dataset rendered on the fly, so examples and tests need no
//! download.
//!
//! Every image is a pure function of (seed, split, index): it draws from
//! `rng::stream(seed, SyntheticTrain | SyntheticVal, index)`, so train and val never share a
//! stream and any sample can be re-rendered on its own ([`render`]).
//!
//! An image is a dull textured background (tinted grey, gradient, optional stripes, noise) with
//! 1–3 shapes of [`KIND_NAMES`] painted on it in saturated colours of [`COLOR_NAMES`]. The first
//! ("main") shape is drawn large and the others small on top of it; placements are redrawn until
//! the main shape stays clearly the largest by visible area, so `kind` and `color` are
//! well-defined. Shapes are sized by area rather than radius, so thin kinds (bars, rings) are
//! not systematically smaller than solid ones.
use super::{Generator, Split, Splits, TargetInfo, TargetShape};
use crate::config::DataConfig;
use crate::rng::{self, Purpose};
use rand::{Rng, RngCore};
use std::collections::BTreeMap;
use std::f32::consts::PI;
use tch::Tensor;

/// Shape classes, in label order (`kind` label k, `mask` label 1 + k).
pub const KIND_NAMES: [&str; 10] =
    ["circle", "square", "triangle", "diamond", "plus", "ring", "hbar", "vbar", "cross", "frame"];
/// Colour families, in label order (`color` label).
pub const COLOR_NAMES: [&str; 6] = ["red", "yellow", "green", "cyan", "blue", "magenta"];
/// Most shapes in one image (`count` = shapes − 1).
pub const MAX_SHAPES: usize = 3;

/// Samples when `data.train_size` / `data.val_size` is 0.
pub const DEFAULT_TRAIN_SIZE: usize = 8000;
pub const DEFAULT_VAL_SIZE: usize = 1000;
/// Image sides `load` accepts: below 16 px shapes become unreadable, above 256 px the
/// in-memory splits get large.
pub const MIN_IMAGE_SIZE: i64 = 16;
pub const MAX_IMAGE_SIZE: i64 = 256;

pub const TARGETS: &[TargetInfo] = &[
    TargetInfo { name: "kind", shape: TargetShape::PerImage, classes: KIND_NAMES.len() as i64 },
    TargetInfo { name: "count", shape: TargetShape::PerImage, classes: MAX_SHAPES as i64 },
    TargetInfo { name: "color", shape: TargetShape::PerImage, classes: COLOR_NAMES.len() as i64 },
    TargetInfo { name: "mask", shape: TargetShape::PerPixel, classes: KIND_NAMES.len() as i64 + 1 },
    // Derived targets with known relations to `kind`, for measuring transfer between tasks
    // (docs/TRANSFER.md): labels independent of the image, and `kind` relabelled by colour.
    TargetInfo { name: "noise", shape: TargetShape::PerImage, classes: KIND_NAMES.len() as i64 },
    TargetInfo { name: "kind_flip", shape: TargetShape::PerImage, classes: KIND_NAMES.len() as i64 },
];

/// `noise`: a uniform label in 0..10 drawn for the sample alone, independent of its pixels (a
/// task nothing can be learnt for but the training set by heart).
fn noise_label(seed: u64, val: bool, index: u64) -> u8 {
    (rng::derive_seed(seed, rng::Purpose::DataBuild, 2 * index + u64::from(val)) % KIND_NAMES.len() as u64) as u8
}

/// `kind_flip`: `kind` for the warm colour families (red, yellow, green), `kind + 5 (mod 10)`
/// for the cool ones: learnable, but only by features that tell the same kind apart by colour,
/// which is what `kind` wants them not to do.
fn kind_flip_label(l: &Labels) -> u8 {
    let n = KIND_NAMES.len() as u8;
    if (l.color as usize) < COLOR_NAMES.len() / 2 {
        l.kind
    } else {
        (l.kind + n / 2) % n
    }
}

/// Nominal shape sizes at 32 px, as the radius of a circle of the same area; scaled with the
/// image side. The ranges do not overlap, so before occlusion the main shape has at least
/// (9 / 7.5)² ≈ 1.44× the area of any distractor. Distractors are kept this large because
/// labelling their pixels is what makes `mask` hard: smaller ones learn far slower.
const MAIN_SIZE: (f32, f32) = (9.0, 12.0);
const DISTRACTOR_SIZE: (f32, f32) = (6.0, 7.5);
/// The main shape must keep this multiple of every distractor's visible area ...
const MIN_AREA_RATIO: f32 = 1.4;
/// ... and this fraction of its own area; each distractor keeps `MIN_DISTRACTOR_VISIBLE`.
const MIN_MAIN_VISIBLE: f32 = 0.6;
const MIN_DISTRACTOR_VISIBLE: f32 = 0.5;
/// Redraws of a distractor before the best one is kept anyway (labels are computed from the
/// pixels, so they stay correct; this only bounds the work).
const MAX_PLACEMENT_TRIES: usize = 64;

/// One rendered sample: image uint8 CHW (3 × size × size), mask size × size, and the labels.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rendered {
    pub image: Vec<u8>,
    pub mask: Vec<u8>,
    pub labels: Labels,
}

/// Per-image labels of one sample.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Labels {
    pub kind: u8,
    pub count: u8,
    pub color: u8,
}

/// The generated shapes dataset.
pub const SHAPES: Generator = Generator {
    name: "shapes",
    targets: TARGETS,
    image_sizes: MIN_IMAGE_SIZE..=MAX_IMAGE_SIZE,
    default_sizes: (DEFAULT_TRAIN_SIZE, DEFAULT_VAL_SIZE),
    generate,
};

/// Generates both splits (train: `data.train_size`, val: `data.val_size`, defaults when 0).
pub fn load(cfg: &DataConfig, seed: u64) -> anyhow::Result<Splits> {
    SHAPES.splits(cfg, seed)
}

/// Renders sample `index` of the train (`val == false`) or val split at `size` × `size` px.
pub fn render(seed: u64, val: bool, index: u64, size: usize) -> Rendered {
    let mut image = vec![0; 3 * size * size];
    let mut mask = vec![0; size * size];
    let labels = render_into(seed, val, index, size, &mut image, &mut mask);
    Rendered { image, mask, labels }
}

fn render_into(seed: u64, val: bool, index: u64, size: usize, image: &mut [u8], mask: &mut [u8]) -> Labels {
    let purpose = if val { Purpose::SyntheticVal } else { Purpose::SyntheticTrain };
    let mut rng = rng::stream(seed, purpose, index);
    let scene = Scene::random(&mut rng, size);
    let background = Background::random(&mut rng, size);
    for (m, &o) in mask.iter_mut().zip(&scene.owner) {
        *m = if o == 0 { 0 } else { 1 + scene.shapes[o as usize - 1].kind as u8 };
    }
    paint_image(&mut rng, &scene, &background, size, image);
    scene.labels()
}

/// Renders `n` samples into tensors. Samples are independent, so the work is split over
/// threads by index range without changing a single byte of the result.
fn generate(seed: u64, val: bool, n: usize, size: usize) -> Split {
    let px = size * size;
    let mut images = vec![0u8; n * 3 * px];
    let mut masks = vec![0u8; n * px];
    let mut labels = vec![Labels::default(); n];
    let threads = std::thread::available_parallelism().map_or(1, |t| t.get()).min(16);
    let per_thread = n.div_ceil(threads).max(1);
    std::thread::scope(|s| {
        let chunks = images
            .chunks_mut(per_thread * 3 * px)
            .zip(masks.chunks_mut(per_thread * px))
            .zip(labels.chunks_mut(per_thread));
        for (t, ((imgs, msks), labs)) in chunks.enumerate() {
            s.spawn(move || {
                let samples = imgs.chunks_mut(3 * px).zip(msks.chunks_mut(px)).zip(labs.iter_mut());
                for (j, ((img, msk), lab)) in samples.enumerate() {
                    *lab = render_into(seed, val, (t * per_thread + j) as u64, size, img, msk);
                }
            });
        }
    });
    let side = size as i64;
    let column = |f: fn(&Labels) -> u8| Tensor::from_slice(&labels.iter().map(|l| f(l) as i64).collect::<Vec<_>>());
    let targets = BTreeMap::from([
        ("kind".to_string(), column(|l| l.kind)),
        ("count".to_string(), column(|l| l.count)),
        ("color".to_string(), column(|l| l.color)),
        ("mask".to_string(), Tensor::from_slice(&masks).view([n as i64, side, side])),
        ("kind_flip".to_string(), column(kind_flip_label)),
        (
            "noise".to_string(),
            Tensor::from_slice(&(0..n as u64).map(|i| noise_label(seed, val, i) as i64).collect::<Vec<_>>()),
        ),
    ]);
    Split { images: Tensor::from_slice(&images).view([n as i64, 3, side, side]), targets }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Circle,
    Square,
    Triangle,
    Diamond,
    Plus,
    Ring,
    HBar,
    VBar,
    Cross,
    Frame,
}

impl Kind {
    const ALL: [Kind; 10] = [
        Kind::Circle,
        Kind::Square,
        Kind::Triangle,
        Kind::Diamond,
        Kind::Plus,
        Kind::Ring,
        Kind::HBar,
        Kind::VBar,
        Kind::Cross,
        Kind::Frame,
    ];

    /// Whether the point (u, v), in units of the shape's radius from its centre, is inside.
    /// Everything fits in the square |u|, |v| ≤ 1. Strokes are ≥ 0.4 radius wide so that they
    /// stay ≥ 2 px at the smallest size.
    fn contains(self, u: f32, v: f32) -> bool {
        let (au, av) = (u.abs(), v.abs());
        match self {
            Kind::Circle => u * u + v * v <= 1.0,
            Kind::Square => au <= 0.85 && av <= 0.85,
            // Apex up at v = -1, base at v = 0.8, half-width 1 at the base.
            Kind::Triangle => v <= 0.8 && au <= (v + 1.0) / 1.8,
            Kind::Diamond => au + av <= 1.0,
            Kind::Plus => (au <= 0.3 && av <= 1.0) || (av <= 0.3 && au <= 1.0),
            Kind::Ring => (0.55 * 0.55..=1.0).contains(&(u * u + v * v)),
            Kind::HBar => au <= 1.0 && av <= 0.4,
            Kind::VBar => au <= 0.4 && av <= 1.0,
            Kind::Cross => au <= 0.9 && av <= 0.9 && ((u - v).abs() <= 0.42 || (u + v).abs() <= 0.42),
            Kind::Frame => (0.5..=0.9).contains(&au.max(av)),
        }
    }

    /// Area of the shape at radius 1 (closed forms of `contains`; checked by a test).
    fn unit_area(self) -> f32 {
        match self {
            Kind::Circle => PI,
            Kind::Square => 4.0 * 0.85 * 0.85,
            Kind::Triangle => 1.8,
            Kind::Diamond => 2.0,
            Kind::Plus => 2.0 * (2.0 * 0.6) - 0.6 * 0.6,
            Kind::Ring => PI * (1.0 - 0.55 * 0.55),
            Kind::HBar | Kind::VBar => 1.6,
            // Two diagonal bands in the 1.8-wide box, minus their diamond-shaped overlap.
            Kind::Cross => 2.0 * (4.0 * 0.81 - (1.8f32 - 0.42).powi(2)) - 2.0 * 0.42 * 0.42,
            Kind::Frame => 4.0 * (0.81 - 0.25),
        }
    }
}

#[derive(Debug, Clone)]
struct Shape {
    kind: Kind,
    family: u8,
    rgb: [f32; 3],
    cx: f32,
    cy: f32,
    r: f32,
}

impl Shape {
    /// A random shape of colour `family` and nominal size `sizes` (at 32 px) fully inside a
    /// `side`-px image.
    fn random(rng: &mut impl Rng, side: usize, family: u8, sizes: (f32, f32)) -> Shape {
        let kind = Kind::ALL[rng.gen_range(0..Kind::ALL.len())];
        let rgb = family_colour(rng, family);
        let side = side as f32;
        let nominal = rng.gen_range(sizes.0..sizes.1) * side / 32.0;
        // Equal nominal size means equal area, whatever the kind.
        let r = (nominal * (PI / kind.unit_area()).sqrt()).min(side / 2.0);
        let cx = rng.gen_range(r..=side - r);
        let cy = rng.gen_range(r..=side - r);
        Shape { kind, family, rgb, cx, cy, r }
    }

    /// Sets `owner[p] = id` for every pixel whose centre is inside; returns how many.
    fn paint(&self, owner: &mut [u8], side: usize, id: u8) -> usize {
        let range = |c: f32| {
            let lo = (c - self.r).floor().max(0.0) as usize;
            let hi = ((c + self.r).ceil() as usize).min(side);
            lo..hi
        };
        let mut painted = 0;
        for y in range(self.cy) {
            let v = (y as f32 + 0.5 - self.cy) / self.r;
            for x in range(self.cx) {
                let u = (x as f32 + 0.5 - self.cx) / self.r;
                if self.kind.contains(u, v) {
                    owner[y * side + x] = id;
                    painted += 1;
                }
            }
        }
        painted
    }
}

/// Shapes in drawing order and, per pixel, 0 (background) or 1 + the index of the shape seen.
struct Scene {
    shapes: Vec<Shape>,
    owner: Vec<u8>,
}

impl Scene {
    fn random(rng: &mut impl Rng, side: usize) -> Scene {
        let n = rng.gen_range(1..=MAX_SHAPES);
        // Distinct colour families: two overlapping shapes of one family would show no edge
        // between them, and no model could split them in the mask.
        let families = rand::seq::index::sample(rng, COLOR_NAMES.len(), n);
        let main = Shape::random(rng, side, families.index(0) as u8, MAIN_SIZE);
        let mut owner = vec![0u8; side * side];
        let mut full_areas = vec![main.paint(&mut owner, side, 1)];
        let mut shapes = vec![main];
        for id in 2..=n as u8 {
            // Redraw until the constraints hold; in a crowded image keep the best attempt.
            let mut best: Option<(f32, Shape, Vec<u8>, usize)> = None;
            for _ in 0..MAX_PLACEMENT_TRIES {
                let candidate = Shape::random(rng, side, families.index(id as usize - 1) as u8, DISTRACTOR_SIZE);
                let mut trial = owner.clone();
                let full = candidate.paint(&mut trial, side, id);
                full_areas.push(full);
                let score = separation(&visible_areas(&trial, id), &full_areas);
                full_areas.pop();
                if best.as_ref().is_none_or(|b| score > b.0) {
                    best = Some((score, candidate, trial, full));
                }
                if score >= 1.0 {
                    break;
                }
            }
            if let Some((_, candidate, trial, full)) = best {
                shapes.push(candidate);
                owner = trial;
                full_areas.push(full);
            }
        }
        Scene { shapes, owner }
    }

    /// The largest shape by visible area (the first on ties) gives `kind` and `color`.
    fn labels(&self) -> Labels {
        let areas = visible_areas(&self.owner, self.shapes.len() as u8);
        let largest = (0..areas.len()).fold(0, |best, i| if areas[i] > areas[best] { i } else { best });
        let shape = &self.shapes[largest];
        Labels { kind: shape.kind as u8, count: self.shapes.len() as u8 - 1, color: shape.family }
    }
}

/// Visible pixel count of shapes 1..=n (index 0 = shape 1).
fn visible_areas(owner: &[u8], n: u8) -> Vec<usize> {
    let mut areas = vec![0; n as usize];
    for &o in owner.iter().filter(|&&o| o > 0) {
        areas[o as usize - 1] += 1;
    }
    areas
}

/// How well a scene meets the constraints, ≥ 1 when all hold: the main shape (index 0) is
/// clearly the largest and mostly visible, and no distractor is mostly hidden (so `count`
/// matches what can be seen). The value is the tightest ratio of actual to required.
fn separation(visible: &[usize], full: &[usize]) -> f32 {
    let main = visible[0] as f32;
    let main_shown = main / (MIN_MAIN_VISIBLE * full[0] as f32);
    visible[1..].iter().zip(&full[1..]).fold(main_shown, |worst, (&v, &f)| {
        let v = v as f32;
        let largest = main / (MIN_AREA_RATIO * v).max(1.0);
        let shown = v / (MIN_DISTRACTOR_VISIBLE * f as f32).max(1.0);
        worst.min(largest).min(shown)
    })
}

/// A saturated, bright colour of a family: the family's hue ± 10°, so families never meet.
fn family_colour(rng: &mut impl Rng, family: u8) -> [f32; 3] {
    let hue = 60.0 * family as f32 + rng.gen_range(-10.0..10.0);
    hsv_to_rgb(hue, rng.gen_range(0.7..1.0), rng.gen_range(0.75..1.0))
}

/// RGB in 0..=255 from hue in degrees, saturation and value in 0..=1.
fn hsv_to_rgb(hue: f32, s: f32, v: f32) -> [f32; 3] {
    let h = hue.rem_euclid(360.0) / 60.0;
    let c = v * s;
    let x = c * (1.0 - (h % 2.0 - 1.0).abs());
    let (r, g, b) = match h as u32 {
        0 => (c, x, 0.0),
        1 => (x, c, 0.0),
        2 => (0.0, c, x),
        3 => (0.0, x, c),
        4 => (x, 0.0, c),
        _ => (c, 0.0, x),
    };
    let m = v - c;
    [(r + m) * 255.0, (g + m) * 255.0, (b + m) * 255.0]
}

/// Low-saturation, mid-dark texture: it must not look like any colour family, but must vary
/// enough that "any non-grey pixel is a shape" is not the whole story.
struct Background {
    base: [f32; 3],
    /// Gradient: brightness change per pixel along x and y.
    slope: (f32, f32),
    /// Stripes: amplitude (0 = none), wave vector (radians per pixel) and phase.
    stripes: (f32, f32, f32, f32),
    noise: f32,
}

impl Background {
    fn random(rng: &mut impl Rng, side: usize) -> Background {
        let base = hsv_to_rgb(rng.gen_range(0.0..360.0), rng.gen_range(0.0..0.25), rng.gen_range(0.25..0.55));
        let angle = rng.gen_range(0.0..2.0 * PI);
        let slope = rng.gen_range(0.0..40.0) / side as f32;
        let stripes = if rng.gen_bool(0.5) {
            let period = rng.gen_range(3.0..8.0) * side as f32 / 32.0;
            let dir = rng.gen_range(0.0..PI);
            let k = 2.0 * PI / period;
            (rng.gen_range(6.0..16.0), k * dir.cos(), k * dir.sin(), rng.gen_range(0.0..2.0 * PI))
        } else {
            (0.0, 0.0, 0.0, 0.0)
        };
        Background { base, slope: (slope * angle.cos(), slope * angle.sin()), stripes, noise: rng.gen_range(2.0..10.0) }
    }

    /// Brightness offset at pixel (x, y), relative to the centre of the image.
    fn offset(&self, x: f32, y: f32, centre: f32) -> f32 {
        let (amp, kx, ky, phase) = self.stripes;
        let stripes = if amp > 0.0 { amp * (kx * x + ky * y + phase).sin() } else { 0.0 };
        self.slope.0 * (x - centre) + self.slope.1 * (y - centre) + stripes
    }
}

/// Writes the CHW image: background or shape colour, plus per-pixel noise on everything (so
/// shapes are not perfectly flat).
fn paint_image(rng: &mut impl RngCore, scene: &Scene, bg: &Background, side: usize, image: &mut [u8]) {
    let px = side * side;
    let centre = side as f32 / 2.0;
    // One u64 gives noise for two pixels (3 bytes each), far cheaper than one draw per byte.
    let mut noise_bits = 0u64;
    for p in 0..px {
        if p % 2 == 0 {
            noise_bits = rng.next_u64();
        }
        let colour = match scene.owner[p] {
            0 => {
                let off = bg.offset((p % side) as f32, (p / side) as f32, centre);
                bg.base.map(|c| c + off)
            }
            o => scene.shapes[o as usize - 1].rgb,
        };
        for (ch, value) in colour.iter().enumerate() {
            let byte = (noise_bits >> (8 * (3 * (p % 2) + ch))) as u8;
            let noise = (byte as f32 / 255.0 * 2.0 - 1.0) * bg.noise;
            // `as u8` saturates to 0..=255; + 0.5 rounds (cheaper than `round()`, a libm call).
            image[ch * px + p] = (value + noise + 0.5) as u8;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    fn cfg(train: usize, val: usize, size: i64) -> DataConfig {
        DataConfig {
            dataset: "shapes".into(),
            root: None,
            train_size: train,
            val_size: val,
            image_size: size,
            grayscale: false,
            batch_size: 8,
            eval_batch_size: 8,
            ..DataConfig::defaults("shapes")
        }
    }

    fn same(a: &Split, b: &Split) -> bool {
        a.images.equal(&b.images)
            && a.targets.keys().eq(b.targets.keys())
            && a.targets.iter().all(|(k, v)| v.equal(&b.targets[k]))
    }

    #[test]
    fn same_seed_same_data_other_seed_other_data() {
        let c = cfg(64, 16, 32);
        let (a, b, other) = (load(&c, 3).unwrap(), load(&c, 3).unwrap(), load(&c, 4).unwrap());
        assert!(same(&a.train, &b.train) && same(&a.val, &b.val));
        assert!(!a.train.images.equal(&other.train.images));
        assert!(!a.val.images.equal(&other.val.images));
    }

    #[test]
    fn tensors_have_documented_shapes_and_kinds() {
        let s = load(&cfg(10, 5, 24), 0).unwrap();
        assert_eq!(s.train.images.size(), [10, 3, 24, 24]);
        assert_eq!(s.train.images.kind(), tch::Kind::Uint8);
        assert_eq!(s.val.len(), 5);
        for t in TARGETS {
            let v = &s.train.targets[t.name];
            match t.shape {
                TargetShape::PerImage => assert_eq!((v.size(), v.kind()), (vec![10], tch::Kind::Int64)),
                TargetShape::PerPixel => assert_eq!((v.size(), v.kind()), (vec![10, 24, 24], tch::Kind::Uint8)),
                other => panic!("shapes has no {other:?} target"),
            }
        }
    }

    /// `noise` is independent of the image and roughly uniform; `kind_flip` is `kind` on warm
    /// colours and `kind + 5` on cool ones.
    #[test]
    fn derived_targets_have_their_documented_relations() {
        let s = load(&cfg(600, 8, 16), 4).unwrap();
        let col = |k: &str| Vec::<i64>::try_from(&s.train.targets[k]).unwrap();
        let (kind, color, flip, noise) = (col("kind"), col("color"), col("kind_flip"), col("noise"));
        for i in 0..kind.len() {
            let want = if color[i] < 3 { kind[i] } else { (kind[i] + 5) % 10 };
            assert_eq!(flip[i], want);
        }
        let mut counts = [0usize; 10];
        noise.iter().for_each(|&n| counts[n as usize] += 1);
        assert!(counts.iter().all(|&c| (30..=90).contains(&c)), "{counts:?}");
        let same = kind.iter().zip(&noise).filter(|(a, b)| a == b).count();
        assert!(same < 100, "noise agrees with kind {same} times in 600");
        let other = load(&cfg(600, 8, 16), 5).unwrap();
        assert!(!other.train.targets["noise"].equal(&s.train.targets["noise"]), "noise follows the seed");
    }

    #[test]
    fn zero_sizes_mean_defaults() {
        let s = load(&cfg(0, 0, 16), 0).unwrap();
        assert_eq!((s.train.len(), s.val.len()), (DEFAULT_TRAIN_SIZE, DEFAULT_VAL_SIZE));
    }

    #[test]
    fn threaded_generation_matches_single_render() {
        let s = load(&cfg(37, 3, 32), 9).unwrap();
        for i in [0usize, 18, 19, 36] {
            let r = render(9, false, i as u64, 32);
            let img = s.train.images.get(i as i64).flatten(0, -1);
            assert_eq!(Vec::<u8>::try_from(&img).unwrap(), r.image);
            assert_eq!(s.train.targets["kind"].int64_value(&[i as i64]), r.labels.kind as i64);
        }
    }

    #[test]
    fn train_and_val_are_disjoint() {
        let seen: HashSet<Vec<u8>> = (0..2000).map(|i| render(1, false, i, 32).image).collect();
        assert!((0..500).all(|i| !seen.contains(&render(1, true, i, 32).image)));
    }

    #[test]
    fn labels_are_in_range_and_consistent_with_the_mask() {
        for i in 0..500 {
            let r = render(5, i % 2 == 0, i, 32);
            let l = r.labels;
            assert!((l.kind as usize) < KIND_NAMES.len() && (l.color as usize) < COLOR_NAMES.len());
            assert!((l.count as usize) < MAX_SHAPES);
            assert!(r.mask.iter().all(|&m| m <= KIND_NAMES.len() as u8));
            // The largest shape's kind covers the most mask pixels of any single shape, so it
            // must appear; background must appear too.
            assert!(r.mask.contains(&(1 + l.kind)), "sample {i}");
            assert!(r.mask.contains(&0), "sample {i}");
        }
    }

    #[test]
    fn labels_are_roughly_balanced() {
        let n = 4000;
        let mut kinds = [0usize; 10];
        let mut counts = [0usize; MAX_SHAPES];
        let mut colours = [0usize; 6];
        for i in 0..n {
            let l = render(2, false, i, 32).labels;
            kinds[l.kind as usize] += 1;
            counts[l.count as usize] += 1;
            colours[l.color as usize] += 1;
        }
        // Within 5 binomial standard deviations of uniform: a fixed seed never flakes, and a
        // real bias (say one kind at 1.3× its share) still fails.
        let balanced = |h: &[usize]| {
            let p = 1.0 / h.len() as f64;
            let (expected, sd) = (n as f64 * p, (n as f64 * p * (1.0 - p)).sqrt());
            h.iter().all(|&c| (c as f64 - expected).abs() < 5.0 * sd)
        };
        assert!(balanced(&kinds), "kind {kinds:?}");
        assert!(balanced(&counts), "count {counts:?}");
        assert!(balanced(&colours), "color {colours:?}");
    }

    #[test]
    fn main_shape_is_clearly_largest() {
        // Only the most crowded three-shape scenes may miss the margin.
        let mut separated = 0;
        for i in 0..1000 {
            let mut rng = rng::stream(8, Purpose::SyntheticTrain, i);
            let scene = Scene::random(&mut rng, 32);
            let visible = visible_areas(&scene.owner, scene.shapes.len() as u8);
            separated += (1..visible.len()).all(|d| visible[0] as f32 >= MIN_AREA_RATIO * visible[d] as f32) as usize;
        }
        assert!(separated >= 990, "{separated}/1000");
    }

    #[test]
    fn unit_areas_match_the_shapes() {
        let steps = 1000;
        for kind in Kind::ALL {
            let inside = (0..steps * steps)
                .filter(|i| {
                    let (u, v) = ((i % steps) as f32, (i / steps) as f32);
                    kind.contains((u + 0.5) / steps as f32 * 2.0 - 1.0, (v + 0.5) / steps as f32 * 2.0 - 1.0)
                })
                .count();
            let area = inside as f32 * 4.0 / (steps * steps) as f32;
            assert!((area - kind.unit_area()).abs() < 0.01, "{kind:?}: {area} vs {}", kind.unit_area());
        }
    }

    #[test]
    fn bad_image_size_is_a_user_error() {
        let err = load(&cfg(4, 4, 8), 0).unwrap_err();
        assert!(crate::error::is_user_error(&err));
        assert!(err.to_string().contains("data.image_size"));
    }
}
