//! `scenes`: a generated dense multi-task dataset, the CPU stand-in for NYUv2. Each image is a
//! ray-cast scene of a few solids (spheres, boxes, vertical cylinders) standing on a ground plane,
//! seen by a pinhole camera; every pixel gets a semantic class, a depth, a surface normal and a
//! boundary label, and every image the number of visible solids.
//!
//! Geometry (everything in the camera frame: x right, y down, z forward, metres):
//! - the camera has a fixed vertical and horizontal field of view of [`FOV_DEGREES`]; per image it
//!   stands [`CAMERA_HEIGHT`] above the ground and looks down by [`CAMERA_PITCH`] degrees, so the
//!   horizon is never in view and every pixel sees the ground or a solid;
//! - one ray per pixel centre; the first surface hit gives the pixel's labels:
//!   `semantic` (0 ground, 1 sphere, 2 box, 3 cylinder), `depth` (the hit's z, as NYUv2's depth
//!   maps), `normal` (the surface's outward unit normal, which faces the camera), `boundary`
//!   (1 where a 4-neighbour sees another surface: silhouettes against the ground and occlusion
//!   edges between solids, which are exactly the depth discontinuities of a scene of disjoint
//!   convex solids on a plane), and per image `count` (solids with at least one visible pixel);
//! - the image: Lambertian shading of a per-solid colour (a random hue) or a checkered ground,
//!   under one directional light with cast shadows and some ambient light, plus per-pixel noise.
//!
//! Like `shapes`, every sample is a pure function of (seed, split, index) drawn from
//! `rng::stream(seed, SyntheticTrain | SyntheticVal, index)`, and generation runs on every core.
use super::{Generator, Split, Splits, TargetInfo, TargetShape};
use crate::config::DataConfig;
use crate::rng::{self, Purpose};
use rand::{Rng, RngCore};
use std::collections::BTreeMap;
use tch::{Kind, Tensor};

/// Semantic classes, in label order.
pub const CLASS_NAMES: [&str; 4] = ["ground", "sphere", "box", "cylinder"];
/// Most solids in one scene (`count` labels 0..=MAX_SOLIDS).
pub const MAX_SOLIDS: usize = 4;
pub const DEFAULT_TRAIN_SIZE: usize = 4000;
pub const DEFAULT_VAL_SIZE: usize = 500;
pub const MIN_IMAGE_SIZE: i64 = 16;
pub const MAX_IMAGE_SIZE: i64 = 256;

/// Field of view, both axes (the images are square).
pub const FOV_DEGREES: f32 = 60.0;
/// Range of the camera's height above the ground (m) and of its downward pitch (degrees); the
/// pitch stays above half the field of view, so the top row looks ≥ 10° below the horizon.
pub const CAMERA_HEIGHT: (f32, f32) = (1.3, 1.7);
pub const CAMERA_PITCH: (f32, f32) = (40.0, 50.0);

pub const TARGETS: &[TargetInfo] = &[
    TargetInfo { name: "semantic", shape: TargetShape::PerPixel, classes: CLASS_NAMES.len() as i64 },
    TargetInfo { name: "depth", shape: TargetShape::PerPixelDepth, classes: 0 },
    TargetInfo { name: "normal", shape: TargetShape::PerPixelNormal, classes: 0 },
    TargetInfo { name: "boundary", shape: TargetShape::PerPixel, classes: 2 },
    TargetInfo { name: "count", shape: TargetShape::PerImage, classes: MAX_SOLIDS as i64 + 1 },
];

/// The generated scenes dataset.
pub const SCENES: Generator = Generator {
    name: "scenes",
    targets: TARGETS,
    image_sizes: MIN_IMAGE_SIZE..=MAX_IMAGE_SIZE,
    default_sizes: (DEFAULT_TRAIN_SIZE, DEFAULT_VAL_SIZE),
    generate,
};

/// Generates both splits (train: `data.train_size`, val: `data.val_size`, defaults when 0).
pub fn load(cfg: &DataConfig, seed: u64) -> anyhow::Result<Splits> {
    SCENES.splits(cfg, seed)
}

/// One rendered sample: image uint8 CHW, per-pixel labels row-major, normals CHW.
#[derive(Debug, Clone, PartialEq)]
pub struct Rendered {
    pub image: Vec<u8>,
    pub semantic: Vec<u8>,
    pub depth: Vec<f32>,
    pub normal: Vec<f32>,
    pub boundary: Vec<u8>,
    pub count: u8,
}

/// Renders sample `index` of the train (`val == false`) or val split at `size` × `size` px.
pub fn render(seed: u64, val: bool, index: u64, size: usize) -> Rendered {
    let purpose = if val { Purpose::SyntheticVal } else { Purpose::SyntheticTrain };
    let mut rng = rng::stream(seed, purpose, index);
    let scene = Scene::random(&mut rng, size);
    scene.render(&mut rng, size)
}

/// Renders `n` samples on every core (by index range: the bytes do not depend on the split).
fn generate(seed: u64, val: bool, n: usize, size: usize) -> Split {
    let threads = std::thread::available_parallelism().map_or(1, |t| t.get()).min(16);
    let per_thread = n.div_ceil(threads).max(1);
    let samples: Vec<Rendered> = std::thread::scope(|s| {
        let workers: Vec<_> = (0..n)
            .step_by(per_thread)
            .map(|start| {
                s.spawn(move || {
                    (start..(start + per_thread).min(n)).map(|i| render(seed, val, i as u64, size)).collect::<Vec<_>>()
                })
            })
            .collect();
        workers.into_iter().flat_map(|w| w.join().expect("a render thread panicked")).collect()
    });
    let (side, n) = (size as i64, n as i64);
    let bytes = |f: fn(&Rendered) -> &[u8]| samples.iter().flat_map(f).copied().collect::<Vec<u8>>();
    let floats = |f: fn(&Rendered) -> &[f32]| samples.iter().flat_map(f).copied().collect::<Vec<f32>>();
    let count: Vec<i64> = samples.iter().map(|r| r.count as i64).collect();
    let targets = BTreeMap::from([
        ("semantic".to_string(), Tensor::from_slice(&bytes(|r| &r.semantic)).view([n, side, side])),
        ("depth".to_string(), Tensor::from_slice(&floats(|r| &r.depth)).view([n, side, side]).to_kind(Kind::Half)),
        ("normal".to_string(), Tensor::from_slice(&floats(|r| &r.normal)).view([n, 3, side, side]).to_kind(Kind::Half)),
        ("boundary".to_string(), Tensor::from_slice(&bytes(|r| &r.boundary)).view([n, side, side])),
        ("count".to_string(), Tensor::from_slice(&count)),
    ]);
    Split { images: Tensor::from_slice(&bytes(|r| &r.image)).view([n, 3, side, side]), targets }
}

type V3 = [f32; 3];

fn add(a: V3, b: V3) -> V3 {
    [a[0] + b[0], a[1] + b[1], a[2] + b[2]]
}
fn sub(a: V3, b: V3) -> V3 {
    [a[0] - b[0], a[1] - b[1], a[2] - b[2]]
}
fn scale(a: V3, s: f32) -> V3 {
    [a[0] * s, a[1] * s, a[2] * s]
}
fn dot(a: V3, b: V3) -> f32 {
    a[0] * b[0] + a[1] * b[1] + a[2] * b[2]
}
fn normalize(a: V3) -> V3 {
    scale(a, 1.0 / dot(a, a).sqrt())
}

/// Nearer hits than this along a ray are ignored (a shadow ray must not hit its own surface).
const EPSILON: f32 = 1e-4;

/// The ground plane's frame in camera coordinates: `up` (unit, away from the ground), two
/// horizontal unit axes (`right` = the camera's x, `ahead`), and the point below the camera.
#[derive(Debug, Clone, Copy)]
struct Ground {
    up: V3,
    right: V3,
    ahead: V3,
    origin: V3,
}

impl Ground {
    /// The ground seen by a camera `height` above it, pitched down by `pitch` radians.
    fn new(height: f32, pitch: f32) -> Self {
        let (s, c) = pitch.sin_cos();
        let up = [0.0, -c, -s];
        Self { up, right: [1.0, 0.0, 0.0], ahead: [0.0, -s, c], origin: scale(up, -height) }
    }

    /// Horizontal ground coordinates (right, ahead) and height of a camera-frame point.
    fn coordinates(&self, p: V3) -> (f32, f32, f32) {
        let q = sub(p, self.origin);
        (dot(q, self.right), dot(q, self.ahead), dot(q, self.up))
    }

    /// Distance along `dir` (from the camera) to the plane, if the ray goes down.
    fn hit(&self, dir: V3) -> Option<f32> {
        let down = dot(dir, self.up);
        (down < 0.0).then(|| dot(self.origin, self.up) / down)
    }
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Shape {
    Sphere {
        radius: f32,
    },
    /// Half extents along its own horizontal axes, and its height; turned by `yaw` about up.
    Box {
        half: (f32, f32),
        height: f32,
        yaw: f32,
    },
    Cylinder {
        radius: f32,
        height: f32,
    },
}

/// A solid standing on the ground, base centre at ground coordinates (`x`, `z`).
#[derive(Debug, Clone, Copy)]
struct Solid {
    shape: Shape,
    x: f32,
    z: f32,
    albedo: V3,
}

impl Solid {
    fn class(&self) -> u8 {
        match self.shape {
            Shape::Sphere { .. } => 1,
            Shape::Box { .. } => 2,
            Shape::Cylinder { .. } => 3,
        }
    }

    /// Radius of the circle on the ground that holds its footprint.
    fn footprint(&self) -> f32 {
        match self.shape {
            Shape::Sphere { radius } | Shape::Cylinder { radius, .. } => radius,
            Shape::Box { half, .. } => (half.0 * half.0 + half.1 * half.1).sqrt(),
        }
    }

    /// The first hit of the ray `origin + t·dir` (t > EPSILON): its distance and the outward unit
    /// normal there. Works in ground coordinates centred on the solid's base (`dir` unit).
    fn hit(&self, g: &Ground, origin: V3, dir: V3) -> Option<(f32, V3)> {
        let (ox, oz, oy) = g.coordinates(origin);
        let o = [ox - self.x, oy, oz - self.z];
        let d = [dot(dir, g.right), dot(dir, g.up), dot(dir, g.ahead)];
        let to_camera = |n: V3| add(add(scale(g.right, n[0]), scale(g.up, n[1])), scale(g.ahead, n[2]));
        let (t, n) = match self.shape {
            Shape::Sphere { radius } => {
                let c = sub(o, [0.0, radius, 0.0]);
                let t = nearest_root(1.0, dot(c, d), dot(c, c) - radius * radius)?;
                (t, scale(add(c, scale(d, t)), 1.0 / radius))
            }
            Shape::Cylinder { radius, height } => cylinder_hit(o, d, radius, height)?,
            Shape::Box { half, height, yaw } => {
                // Into the box's own frame: turn the horizontal axes by −yaw.
                let (s, c) = yaw.sin_cos();
                let turn = |v: V3| [c * v[0] + s * v[2], v[1], -s * v[0] + c * v[2]];
                let (t, n) = box_hit(turn(o), turn(d), [half.0, height / 2.0, half.1], height / 2.0)?;
                (t, [c * n[0] - s * n[2], n[1], s * n[0] + c * n[2]])
            }
        };
        // Renormalized: (p − c) / r loses a few bits to cancellation in f32.
        Some((t, normalize(to_camera(n))))
    }
}

/// The smallest root > EPSILON of t² + 2·half_b·t + c = 0 (a = 1).
fn nearest_root(a: f32, half_b: f32, c: f32) -> Option<f32> {
    let disc = half_b * half_b - a * c;
    if disc < 0.0 {
        return None;
    }
    let sq = disc.sqrt();
    [(-half_b - sq) / a, (-half_b + sq) / a].into_iter().find(|&t| t > EPSILON)
}

/// A vertical cylinder on the plane y = 0 (axis the y axis) with its top cap.
fn cylinder_hit(o: V3, d: V3, radius: f32, height: f32) -> Option<(f32, V3)> {
    let mut best: Option<(f32, V3)> = None;
    let a = d[0] * d[0] + d[2] * d[2];
    if a > 0.0 {
        let half_b = o[0] * d[0] + o[2] * d[2];
        let c = o[0] * o[0] + o[2] * o[2] - radius * radius;
        let disc = half_b * half_b - a * c;
        if disc >= 0.0 {
            let sq = disc.sqrt();
            for t in [(-half_b - sq) / a, (-half_b + sq) / a] {
                let y = o[1] + t * d[1];
                if t > EPSILON && (0.0..=height).contains(&y) {
                    let p = add(o, scale(d, t));
                    best = Some((t, [p[0] / radius, 0.0, p[2] / radius]));
                    break;
                }
            }
        }
    }
    if d[1] != 0.0 {
        let t = (height - o[1]) / d[1];
        let p = add(o, scale(d, t));
        if t > EPSILON && p[0] * p[0] + p[2] * p[2] <= radius * radius && best.is_none_or(|b| t < b.0) {
            best = Some((t, [0.0, 1.0, 0.0]));
        }
    }
    best
}

/// An axis-aligned box of half extents `half` centred `centre_y` above the origin (slabs).
fn box_hit(o: V3, d: V3, half: V3, centre_y: f32) -> Option<(f32, V3)> {
    let o = [o[0], o[1] - centre_y, o[2]];
    let (mut near, mut far, mut axis) = (f32::NEG_INFINITY, f32::INFINITY, 0);
    for k in 0..3 {
        if d[k] == 0.0 {
            if o[k].abs() > half[k] {
                return None;
            }
            continue;
        }
        let (t1, t2) = ((-half[k] - o[k]) / d[k], (half[k] - o[k]) / d[k]);
        let (lo, hi) = (t1.min(t2), t1.max(t2));
        if lo > near {
            near = lo;
            axis = k;
        }
        far = far.min(hi);
    }
    if near > far || near <= EPSILON {
        return None;
    }
    let mut n = [0.0; 3];
    n[axis] = -d[axis].signum();
    Some((near, n))
}

/// A scene: the camera's ground, the solids, the light (unit, towards it) and the ground's look.
struct Scene {
    ground: Ground,
    solids: Vec<Solid>,
    light: V3,
    ground_albedo: (V3, V3),
    checker: f32,
    noise: f32,
}

/// A pixel's first hit: the surface (0 ground, 1 + solid index), distance, point and normal.
struct Hit {
    surface: usize,
    t: f32,
    normal: V3,
}

/// The unit ray through the centre of pixel (x, y) of a `size`-px image.
fn ray(size: usize, x: usize, y: usize) -> V3 {
    let f = size as f32 / 2.0 / (FOV_DEGREES.to_radians() / 2.0).tan();
    let c = size as f32 / 2.0;
    normalize([(x as f32 + 0.5 - c) / f, (y as f32 + 0.5 - c) / f, 1.0])
}

impl Scene {
    fn random(rng: &mut impl Rng, size: usize) -> Scene {
        let height = rng.gen_range(CAMERA_HEIGHT.0..CAMERA_HEIGHT.1);
        let pitch = rng.gen_range(CAMERA_PITCH.0..CAMERA_PITCH.1).to_radians();
        let ground = Ground::new(height, pitch);
        let wanted = rng.gen_range(1..=MAX_SOLIDS);
        let mut solids: Vec<Solid> = Vec::new();
        // Stand each solid where a random pixel of the image's lower part sees the ground, and
        // redraw footprints that would overlap (solids never intersect).
        for _ in 0..wanted * 20 {
            if solids.len() == wanted {
                break;
            }
            let shape = match rng.gen_range(0..3) {
                0 => Shape::Sphere { radius: rng.gen_range(0.2..0.45) },
                1 => Shape::Box {
                    half: (rng.gen_range(0.15..0.4), rng.gen_range(0.15..0.4)),
                    height: rng.gen_range(0.3..0.9),
                    yaw: rng.gen_range(0.0..std::f32::consts::PI),
                },
                _ => Shape::Cylinder { radius: rng.gen_range(0.12..0.3), height: rng.gen_range(0.4..1.0) },
            };
            let px = rng.gen_range(0.15..0.85) * size as f32;
            let py = rng.gen_range(0.4..0.9) * size as f32;
            let dir = ray(size, px as usize, py as usize);
            let Some(t) = ground.hit(dir) else { continue };
            let (x, z, _) = ground.coordinates(scale(dir, t));
            let hue = rng.gen_range(0.0..360.0);
            let albedo = hsv_to_rgb(hue, rng.gen_range(0.5..0.9), rng.gen_range(0.7..1.0));
            let solid = Solid { shape, x, z, albedo };
            let clear = solids.iter().all(|o| {
                let gap = ((o.x - x).powi(2) + (o.z - z).powi(2)).sqrt();
                gap > o.footprint() + solid.footprint() + 0.05
            });
            // Keep the camera out of every solid (a tall box right under it).
            if clear && (x * x + z * z).sqrt() > solid.footprint() + 0.3 {
                solids.push(solid);
            }
        }
        let azimuth = rng.gen_range(0.0..2.0 * std::f32::consts::PI);
        let elevation = rng.gen_range(35f32..70.0).to_radians();
        let light = normalize(add(
            scale(ground.up, elevation.sin()),
            add(
                scale(ground.right, elevation.cos() * azimuth.cos()),
                scale(ground.ahead, elevation.cos() * azimuth.sin()),
            ),
        ));
        let grey = rng.gen_range(0.35..0.6);
        let tint = hsv_to_rgb(rng.gen_range(0.0..360.0), rng.gen_range(0.0..0.2), grey);
        let dark = scale(tint, rng.gen_range(0.7..0.9));
        Scene {
            ground,
            solids,
            light,
            ground_albedo: (tint, dark),
            checker: rng.gen_range(0.3..0.8),
            noise: rng.gen_range(0.01..0.04),
        }
    }

    /// The first surface along `dir` from `origin` (ground or solid), if any.
    fn trace(&self, origin: V3, dir: V3, from_camera: bool) -> Option<Hit> {
        let mut best = None::<Hit>;
        if from_camera {
            if let Some(t) = self.ground.hit(dir) {
                best = Some(Hit { surface: 0, t, normal: self.ground.up });
            }
        }
        for (i, s) in self.solids.iter().enumerate() {
            if let Some((t, normal)) = s.hit(&self.ground, origin, dir) {
                if best.as_ref().is_none_or(|b| t < b.t) {
                    best = Some(Hit { surface: i + 1, t, normal });
                }
            }
        }
        best
    }

    fn render(&self, rng: &mut impl RngCore, size: usize) -> Rendered {
        let px = size * size;
        let mut out = Rendered {
            image: vec![0; 3 * px],
            semantic: vec![0; px],
            depth: vec![0.0; px],
            normal: vec![0.0; 3 * px],
            boundary: vec![0; px],
            count: 0,
        };
        let mut surface = vec![0usize; px];
        for y in 0..size {
            for x in 0..size {
                let p = y * size + x;
                let dir = ray(size, x, y);
                let hit = self.trace([0.0; 3], dir, true).expect("the camera looks down at the ground");
                let point = scale(dir, hit.t);
                surface[p] = hit.surface;
                out.semantic[p] = if hit.surface == 0 { 0 } else { self.solids[hit.surface - 1].class() };
                out.depth[p] = point[2];
                for c in 0..3 {
                    out.normal[c * px + p] = hit.normal[c];
                }
                let colour = self.shade(&hit, point);
                for (c, v) in colour.iter().enumerate() {
                    let noise = (rng.next_u32() as f32 / u32::MAX as f32 * 2.0 - 1.0) * self.noise;
                    out.image[c * px + p] = ((v + noise).clamp(0.0, 1.0) * 255.0 + 0.5) as u8;
                }
            }
        }
        for y in 0..size {
            for x in 0..size {
                let s = surface[y * size + x];
                let differs = |xx: usize, yy: usize| surface[yy * size + xx] != s;
                let edge = (x > 0 && differs(x - 1, y))
                    || (x + 1 < size && differs(x + 1, y))
                    || (y > 0 && differs(x, y - 1))
                    || (y + 1 < size && differs(x, y + 1));
                out.boundary[y * size + x] = edge as u8;
            }
        }
        let mut seen = vec![false; self.solids.len() + 1];
        surface.iter().for_each(|&s| seen[s] = true);
        out.count = seen[1..].iter().filter(|&&v| v).count() as u8;
        out
    }

    /// Lambertian colour in 0..=1 of a hit at camera-frame `point`: ambient plus the light's
    /// share when no solid stands between the point and the light.
    fn shade(&self, hit: &Hit, point: V3) -> V3 {
        let albedo = match hit.surface {
            0 => {
                let (x, z, _) = self.ground.coordinates(point);
                let cell = ((x / self.checker).floor() + (z / self.checker).floor()) as i64;
                if cell.rem_euclid(2) == 0 {
                    self.ground_albedo.0
                } else {
                    self.ground_albedo.1
                }
            }
            s => self.solids[s - 1].albedo,
        };
        let lit = dot(hit.normal, self.light).max(0.0);
        let shadowed = lit > 0.0 && self.trace(point, self.light, false).is_some();
        let light = 0.3 + if shadowed { 0.0 } else { 0.7 * lit };
        scale(albedo, light)
    }
}

/// RGB in 0..=1 from hue in degrees, saturation and value in 0..=1.
fn hsv_to_rgb(hue: f32, s: f32, v: f32) -> V3 {
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
    [r + m, g + m, b + m]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(train: usize, val: usize, size: i64) -> DataConfig {
        DataConfig { train_size: train, val_size: val, image_size: size, ..DataConfig::defaults("scenes") }
    }

    /// A scene of the given solids under a fixed camera, light and ground.
    fn scene(solids: Vec<Solid>) -> Scene {
        let ground = Ground::new(1.5, 45f32.to_radians());
        Scene { ground, solids, light: ground.up, ground_albedo: ([0.5; 3], [0.4; 3]), checker: 0.5, noise: 0.0 }
    }

    #[test]
    fn sphere_depth_and_normal_match_the_analytic_values_at_its_centre_pixel() {
        let size = 33;
        let ground = Ground::new(1.5, 45f32.to_radians());
        // A sphere on the ground whose centre lies on the ray through the centre pixel (16, 20).
        let (cx, cy) = (16, 20);
        let dir = ray(size, cx, cy);
        let radius = 0.4;
        // Distance s along the ray where the point is `radius` above the ground.
        let s = (dot(ground.origin, ground.up) + radius) / dot(dir, ground.up);
        let (x, z, h) = ground.coordinates(scale(dir, s));
        assert!((h - radius).abs() < 1e-5);
        let r = scene(vec![Solid { shape: Shape::Sphere { radius }, x, z, albedo: [1.0; 3] }])
            .render(&mut rng::stream(0, Purpose::SyntheticTrain, 0), size);
        let p = cy * size + cx;
        assert_eq!(r.semantic[p], 1);
        // The ray through the centre meets the sphere radius before it: depth (s − r)·dir_z, and
        // the normal there points straight back along the ray.
        let expected = (s - radius) * dir[2];
        assert!((r.depth[p] - expected).abs() < 1e-4, "{} vs {expected}", r.depth[p]);
        let px = size * size;
        for (c, d) in dir.iter().enumerate() {
            assert!((r.normal[c * px + p] + d).abs() < 1e-4, "normal {c}");
        }
        assert_eq!(r.count, 1);
        assert_eq!(r.boundary[p], 0, "the centre is inside the silhouette");
    }

    #[test]
    fn ground_depth_is_the_plane_and_box_faces_are_axis_normals() {
        let size = 24;
        let s = scene(vec![Solid {
            shape: Shape::Box { half: (0.3, 0.3), height: 0.6, yaw: 0.0 },
            x: 0.0,
            z: 2.5,
            albedo: [1.0; 3],
        }]);
        let r = s.render(&mut rng::stream(0, Purpose::SyntheticTrain, 0), size);
        let px = size * size;
        let (mut ground_px, mut front, mut top) = (0, 0, 0);
        for p in 0..px {
            let n = [r.normal[p], r.normal[px + p], r.normal[2 * px + p]];
            let dir = ray(size, p % size, p / size);
            if r.semantic[p] == 0 {
                // The ray meets the plane up·X = −height: depth = z of that point.
                let t = -1.5 / dot(dir, s.ground.up);
                assert!((r.depth[p] - t * dir[2]).abs() < 1e-4);
                assert!(dot(n, s.ground.up) > 1.0 - 1e-6);
                ground_px += 1;
            } else {
                assert_eq!(r.semantic[p], 2);
                // Facing the camera, only the front face (−ahead) and the top (up) are seen.
                let faces_front = dot(n, scale(s.ground.ahead, -1.0)) > 1.0 - 1e-5;
                let faces_up = dot(n, s.ground.up) > 1.0 - 1e-5;
                assert!(faces_front || faces_up, "pixel {p}: {n:?}");
                front += faces_front as usize;
                top += faces_up as usize;
            }
        }
        assert!(ground_px > 0 && front > 0 && top > 0, "{ground_px} {front} {top}");
    }

    #[test]
    fn normals_are_unit_and_face_the_camera_and_labels_are_consistent() {
        let size = 32;
        let mut counts = [0usize; MAX_SOLIDS + 1];
        let mut classes = [0usize; 4];
        for i in 0..100 {
            let r = render(3, i % 2 == 1, i, size);
            let px = size * size;
            for p in 0..px {
                let n = [r.normal[p], r.normal[px + p], r.normal[2 * px + p]];
                assert!((dot(n, n) - 1.0).abs() < 1e-5, "sample {i} pixel {p}: {n:?} class {}", r.semantic[p]);
                assert!(dot(n, ray(size, p % size, p / size)) < 1e-6, "sample {i} pixel {p} faces away");
                assert!(r.depth[p] > 0.0 && r.depth[p] < 20.0);
                classes[r.semantic[p] as usize] += 1;
            }
            // Boundaries exist exactly when a solid is seen (they outline it).
            let edges = r.boundary.iter().filter(|&&b| b == 1).count();
            assert_eq!(edges == 0, r.count == 0, "sample {i}");
            counts[r.count as usize] += 1;
        }
        assert!(classes.iter().all(|&c| c > 0), "{classes:?}");
        assert!(counts[1..].iter().all(|&c| c > 0), "{counts:?}");
    }

    #[test]
    fn same_seed_same_data_and_threads_change_nothing() {
        let c = cfg(9, 3, 16);
        let (a, b, other) = (load(&c, 1).unwrap(), load(&c, 1).unwrap(), load(&c, 2).unwrap());
        assert!(a.train.images.equal(&b.train.images) && a.val.targets["depth"].equal(&b.val.targets["depth"]));
        assert!(!a.train.images.equal(&other.train.images));
        let one = render(1, false, 7, 16);
        let img = a.train.images.get(7).flatten(0, -1);
        assert_eq!(Vec::<u8>::try_from(&img).unwrap(), one.image);
        assert_eq!(a.train.targets["count"].int64_value(&[7]), one.count as i64);
        for t in TARGETS {
            let v = &a.train.targets[t.name];
            assert_eq!(TargetShape::of_tensor(v), Some(t.shape), "{}", t.name);
            assert_eq!(v.size()[0], 9);
        }
    }

    #[test]
    fn bad_image_size_is_a_user_error() {
        let err = load(&cfg(4, 4, 8), 0).unwrap_err();
        assert!(crate::error::is_user_error(&err));
        assert!(err.to_string().contains("data.image_size") && err.to_string().contains("scenes"));
    }
}
