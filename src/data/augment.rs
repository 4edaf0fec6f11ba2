//! Batched augmentation on the device.
//!
//! Only the random numbers (per sample: crop offsets, flip bit, zoom) are drawn on the host,
//! from the caller's seeded generator; the pixels never leave the device. The pad-crop-flip
//! step reads every output pixel of sample n from one pixel of the padded input, so the whole
//! batch is one `gather` per tensor with an index built from the offsets, the same index for
//! the image and every spatial target, which keeps them aligned by construction. The
//! scale-crop step resamples every tensor through the same sampling grid (`grid_sampler_2d`):
//! bilinear for images and depth, nearest-neighbour for labels and normals.
use crate::transfer::upload;
use rand::Rng;
use tch::{Kind, Tensor};

/// How a spatial target is padded, resampled and flipped.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Spatial {
    /// Integer label map `[N, H, W]`: padded with `fill`, resampled nearest-neighbour.
    Labels { fill: i64 },
    /// Float `[N, H, W]`, NaN where invalid: padded with NaN, resampled bilinearly from valid
    /// pixels only (an output pixel any of whose taps is invalid is invalid), divided by the zoom.
    Depth,
    /// Float unit vectors `[N, 3, H, W]`, NaN where invalid: padded with NaN, resampled
    /// nearest-neighbour; a horizontal flip negates x.
    Normals,
}

/// Random crop after padding every side by `padding` pixels (images with 0, spatial targets
/// with `fill_label`), then a horizontal flip with probability 0.5 when `hflip`, per sample.
///
/// `images`: float `[N, C, H, W]`; `spatial`: integer `[N, H, W]` label maps. Returns tensors of
/// the same shapes, dtypes and device. With `padding == 0` and `!hflip` the inputs come back
/// unchanged and the generator is not touched.
pub fn crop_flip(
    images: &Tensor,
    spatial: &[Tensor],
    padding: i64,
    hflip: bool,
    fill_label: i64,
    rng: &mut impl Rng,
) -> (Tensor, Vec<Tensor>) {
    let targets: Vec<(Tensor, Spatial)> =
        spatial.iter().map(|t| (t.shallow_clone(), Spatial::Labels { fill: fill_label })).collect();
    crop_flip_targets(images, &targets, padding, hflip, rng)
}

/// [`crop_flip`] for every kind of spatial target, then a random scale-crop when
/// `max_scale > 1` (its numbers drawn after the crop and flip numbers of the whole batch, so a
/// run without zoom draws exactly what it did before zoom existed).
pub fn augment(
    images: &Tensor,
    spatial: &[(Tensor, Spatial)],
    padding: i64,
    hflip: bool,
    max_scale: f64,
    rng: &mut impl Rng,
) -> (Tensor, Vec<Tensor>) {
    augment_part(images, spatial, padding, hflip, max_scale, Part::whole(images), rng)
}

/// Which samples of a batch these images are: `offset..offset + N` of a batch of `total`
/// (one rank's share of the global batch). The numbers are drawn for all `total` samples, in
/// the order one process would draw them, and this part's are used: N ranks augment their
/// shares exactly as one process augments the whole batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Part {
    pub offset: i64,
    pub total: i64,
}

impl Part {
    /// All of `images`' batch.
    pub fn whole(images: &Tensor) -> Self {
        Self { offset: 0, total: images.size()[0] }
    }
}

/// [`augment`] for one part of a batch.
pub fn augment_part(
    images: &Tensor,
    spatial: &[(Tensor, Spatial)],
    padding: i64,
    hflip: bool,
    max_scale: f64,
    part: Part,
    rng: &mut impl Rng,
) -> (Tensor, Vec<Tensor>) {
    let (images, targets) = crop_flip_part(images, spatial, padding, hflip, part, rng);
    if max_scale <= 1.0 {
        return (images, targets);
    }
    let kinds: Vec<(Tensor, Spatial)> = targets.into_iter().zip(spatial).map(|(t, (_, k))| (t, *k)).collect();
    scale_crop_part(&images, &kinds, max_scale, part, rng)
}

/// The pad-crop-flip step for labels, depth and normals.
pub fn crop_flip_targets(
    images: &Tensor,
    spatial: &[(Tensor, Spatial)],
    padding: i64,
    hflip: bool,
    rng: &mut impl Rng,
) -> (Tensor, Vec<Tensor>) {
    crop_flip_part(images, spatial, padding, hflip, Part::whole(images), rng)
}

fn crop_flip_part(
    images: &Tensor,
    spatial: &[(Tensor, Spatial)],
    padding: i64,
    hflip: bool,
    part: Part,
    rng: &mut impl Rng,
) -> (Tensor, Vec<Tensor>) {
    assert!(padding >= 0, "crop padding must be >= 0, got {padding}");
    if padding == 0 && !hflip {
        return (images.shallow_clone(), spatial.iter().map(|(t, _)| t.shallow_clone()).collect());
    }
    let &[n, c, h, w] = images.size().as_slice() else {
        panic!("crop_flip expects images [N, C, H, W], got {:?}", images.size());
    };
    let params = draw_params(rng, part, n, padding, hflip);
    let flips = upload(&Tensor::from_slice(&params[2 * n as usize..]), images.device());
    let index = source_index(params, n, h, w, padding, images.device());

    let area = h * w;
    let padded_area = (h + 2 * padding) * (w + 2 * padding);
    let sides = [padding; 4];
    let out_images = images
        .pad(sides, "constant", 0.0)
        .view([n, c, padded_area])
        .gather(2, &index.expand([n, c, area], false), false)
        .view([n, c, h, w]);
    let out_spatial = spatial
        .iter()
        .map(|(s, kind)| match kind {
            Spatial::Labels { .. } | Spatial::Depth => {
                assert_eq!(s.size(), [n, h, w], "spatial target does not match images {:?}", images.size());
                let fill = match kind {
                    Spatial::Labels { fill } => *fill as f64,
                    _ => f64::NAN,
                };
                s.pad(sides, "constant", fill).view([n, 1, padded_area]).gather(2, &index, false).view([n, h, w])
            }
            Spatial::Normals => {
                assert_eq!(s.size(), [n, 3, h, w], "normals do not match images {:?}", images.size());
                let out = s
                    .pad(sides, "constant", f64::NAN)
                    .view([n, 3, padded_area])
                    .gather(2, &index.expand([n, 3, area], false), false)
                    .view([n, 3, h, w]);
                negate_x_where(&out, &flips)
            }
        })
        .collect();
    (out_images, out_spatial)
}

/// Normals `[N, 3, H, W]` with x negated in the samples whose `flips` entry (int64 `[N]`) is 1.
fn negate_x_where(normals: &Tensor, flips: &Tensor) -> Tensor {
    let n = normals.size()[0];
    let sign_x = (flips.to_kind(normals.kind()) * -2.0 + 1.0).view([n, 1, 1, 1]);
    let ones = Tensor::ones([n, 2, 1, 1], (normals.kind(), normals.device()));
    normals * Tensor::cat(&[sign_x, ones], 1)
}

/// Per sample of `part` (`n` of them): row offset, column offset (both in 0..=2·padding) and
/// flip bit (0/1), as `[3 * n]` (all row offsets, then columns, then flips). Drawn sample by
/// sample for the whole batch so the numbers for sample i do not depend on the batch size.
fn draw_params(rng: &mut impl Rng, part: Part, n: i64, padding: i64, hflip: bool) -> Vec<i64> {
    let (n, from) = (n as usize, part.offset as usize);
    assert!(from + n <= part.total as usize, "part {part:?} of a batch does not hold {n} samples");
    let mut params = vec![0i64; 3 * n];
    for i in 0..part.total as usize {
        let drawn =
            [rng.gen_range(0..=2 * padding), rng.gen_range(0..=2 * padding), i64::from(hflip && rng.gen_bool(0.5))];
        if (from..from + n).contains(&i) {
            for (k, v) in drawn.into_iter().enumerate() {
                params[k * n + i - from] = v;
            }
        }
    }
    params
}

/// Flat index into the padded `[Hp * Wp]` plane for every output pixel: `[N, 1, H * W]` int64
/// on `device`. Output (i, j) of sample k reads padded row `oy_k + i` and column `ox_k + j`, or
/// `ox_k + W − 1 − j` when flipped (crop, then mirror the crop).
fn source_index(params: Vec<i64>, n: i64, h: i64, w: i64, padding: i64, device: tch::Device) -> Tensor {
    // One small host-to-device copy; the rest is computed where the images are.
    let params = upload(&Tensor::from_slice(&params).view([3, n, 1]), device);
    let (oy, ox, flip) = (params.get(0), params.get(1), params.get(2));
    let rows = oy + Tensor::arange(h, (Kind::Int64, device)).view([1, h]);
    let j = Tensor::arange(w, (Kind::Int64, device)).view([1, w]);
    let mirrored = j.g_mul_scalar(-2) + (w - 1);
    let cols = ox + &j + flip * mirrored;
    (rows.view([n, h, 1]) * (w + 2 * padding) + cols.view([n, 1, w])).view([n, 1, h * w])
}

/// One sample's zoom: the crop of size (H/s, W/s) whose top-left corner sits at fractions
/// (fy, fx) of the free room, resized back to (H, W).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Zoom {
    pub scale: f64,
    pub fy: f64,
    pub fx: f64,
}

/// Per sample, in order: scale uniform in [1, max_scale], then the two position fractions.
pub fn draw_zooms(rng: &mut impl Rng, n: i64, max_scale: f64) -> Vec<Zoom> {
    (0..n).map(|_| Zoom { scale: rng.gen_range(1.0..=max_scale), fy: rng.gen(), fx: rng.gen() }).collect()
}

/// Random scale-crop: each sample zoomed by a factor from [1, max_scale] at a random position
/// (see [`Zoom`]), the image and every spatial target through the same sampling grid.
pub fn scale_crop(
    images: &Tensor,
    spatial: &[(Tensor, Spatial)],
    max_scale: f64,
    rng: &mut impl Rng,
) -> (Tensor, Vec<Tensor>) {
    scale_crop_part(images, spatial, max_scale, Part::whole(images), rng)
}

fn scale_crop_part(
    images: &Tensor,
    spatial: &[(Tensor, Spatial)],
    max_scale: f64,
    part: Part,
    rng: &mut impl Rng,
) -> (Tensor, Vec<Tensor>) {
    let &[n, _, h, w] = images.size().as_slice() else {
        panic!("scale_crop expects images [N, C, H, W], got {:?}", images.size());
    };
    let zooms = draw_zooms(rng, part.total, max_scale)[part.offset as usize..(part.offset + n) as usize].to_vec();
    let grid = zoom_grid(&zooms, h, w, images.device());
    let scales =
        upload(&Tensor::from_slice(&zooms.iter().map(|z| z.scale as f32).collect::<Vec<_>>()), images.device());
    (sample(images, &grid, BILINEAR), spatial.iter().map(|(t, kind)| resample(t, *kind, &grid, &scales)).collect())
}

const BILINEAR: i64 = 0;
const NEAREST: i64 = 1;
/// `padding_mode` border: samples that land a rounding error outside repeat the edge.
const BORDER: i64 = 1;

fn sample(x: &Tensor, grid: &Tensor, mode: i64) -> Tensor {
    x.grid_sampler_2d(grid, mode, BORDER, false)
}

fn resample(t: &Tensor, kind: Spatial, grid: &Tensor, scales: &Tensor) -> Tensor {
    match kind {
        Spatial::Labels { .. } => {
            let k = t.kind();
            sample(&t.unsqueeze(1).to_kind(Kind::Float), grid, NEAREST).squeeze_dim(1).round().to_kind(k)
        }
        Spatial::Normals => sample(t, grid, NEAREST),
        Spatial::Depth => {
            let valid = t.isfinite();
            let values = t.where_scalarother(&valid, 0.0).unsqueeze(1);
            let weight = sample(&valid.to_kind(t.kind()).unsqueeze(1), grid, BILINEAR).squeeze_dim(1);
            let v = sample(&values, grid, BILINEAR).squeeze_dim(1);
            let n = t.size()[0];
            // Every tap with a positive weight valid <=> the weights of the valid taps sum to 1.
            let zoomed = v / scales.view([n, 1, 1]).to_kind(t.kind());
            zoomed.where_scalarother(&weight.ge(1.0 - 1e-4), f64::NAN)
        }
    }
}

/// The sampling grid `[N, H, W, 2]` (x, y in [-1, 1], align_corners = false) of the zooms:
/// output pixel (i, j) of sample k reads input position (y0 + (i + 0.5) / s − 0.5, …) in
/// pixel units, where the crop's corner y0 = fy · (H − H / s).
pub fn zoom_grid(zooms: &[Zoom], h: i64, w: i64, device: tch::Device) -> Tensor {
    let n = zooms.len() as i64;
    let col = |f: &dyn Fn(&Zoom) -> f64| {
        upload(&Tensor::from_slice(&zooms.iter().map(|z| f(z) as f32).collect::<Vec<_>>()).view([n, 1]), device)
    };
    let inv_s = col(&|z| 1.0 / z.scale);
    let y0 = col(&|z| z.fy * (h as f64 - h as f64 / z.scale));
    let x0 = col(&|z| z.fx * (w as f64 - w as f64 / z.scale));
    let axis = |len: i64, origin: &Tensor| {
        let centres = Tensor::arange(len, (Kind::Float, device)).view([1, len]) * 2.0 + 1.0;
        (origin * 2.0 + centres * &inv_s) / len as f64 - 1.0
    };
    let gy = axis(h, &y0).view([n, h, 1]).expand([n, h, w], false);
    let gx = axis(w, &x0).view([n, 1, w]).expand([n, h, w], false);
    Tensor::stack(&[gx, gy], 3)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand_chacha::ChaCha8Rng;

    const N: i64 = 16;
    const H: i64 = 6;
    const W: i64 = 7;
    const FILL: i64 = 255;

    /// Image channels hold (row + 1, col + 1) so padding (0) is distinguishable; the label map
    /// holds row * W + col.
    fn coordinate_batch() -> (Tensor, Tensor) {
        let rows = Tensor::arange(H, (Kind::Float, tch::Device::Cpu)).view([1, 1, H, 1]).expand([N, 1, H, W], false);
        let cols = Tensor::arange(W, (Kind::Float, tch::Device::Cpu)).view([1, 1, 1, W]).expand([N, 1, H, W], false);
        let images = Tensor::cat(&[&rows + 1.0, &cols + 1.0], 1);
        let labels = (rows * W as f64 + cols).squeeze_dim(1).to_kind(Kind::Uint8);
        (images, labels)
    }

    fn values<T>(t: &Tensor) -> Vec<T>
    where
        for<'a> Vec<T>: TryFrom<&'a Tensor, Error = tch::TchError>,
    {
        Vec::<T>::try_from(&t.flatten(0, -1)).unwrap()
    }

    /// (output row, output col, source row, source col) of a non-padding pixel.
    type Source = (i64, i64, i64, i64);

    /// Checks that every pixel is either padding in both tensors or the same source pixel in
    /// both, and that each sample's sources form one shifted (maybe mirrored) grid; returns
    /// per sample whether it is mirrored.
    fn check_aligned(images: &Tensor, labels: &Tensor) -> Vec<bool> {
        let img = values::<f32>(images);
        let lab = values::<u8>(labels);
        let (h, w) = (H as usize, W as usize);
        let mut flipped = Vec::new();
        for k in 0..N as usize {
            let mut sources: Vec<Source> = Vec::new();
            for i in 0..h {
                for j in 0..w {
                    let r = img[((2 * k) * h + i) * w + j];
                    let c = img[((2 * k + 1) * h + i) * w + j];
                    let l = lab[(k * h + i) * w + j] as i64;
                    if l == FILL {
                        assert_eq!((r, c), (0.0, 0.0), "sample {k} ({i},{j}): padding must be zero");
                        continue;
                    }
                    let (r, c) = (r as i64 - 1, c as i64 - 1);
                    assert_eq!(l, r * W + c, "sample {k} ({i},{j}): image and mask disagree");
                    sources.push((i as i64, j as i64, r, c));
                }
            }
            let single =
                |f: fn(&Source) -> i64| sources.iter().map(f).collect::<std::collections::HashSet<_>>().len() == 1;
            assert!(single(|s| s.2 - s.0), "sample {k}: rows are not one shift");
            let mirrored = !single(|s| s.3 - s.1);
            assert!(!mirrored || single(|s| s.3 + s.1), "sample {k}: columns are not one shifted grid");
            flipped.push(mirrored);
        }
        flipped
    }

    #[test]
    fn no_augmentation_returns_inputs() {
        let (images, labels) = coordinate_batch();
        let mut rng = ChaCha8Rng::seed_from_u64(0);
        let (i, l) = crop_flip(&images, &[labels.shallow_clone()], 0, false, FILL, &mut rng);
        assert!(i.equal(&images) && l[0].equal(&labels));
    }

    #[test]
    fn flip_only_mirrors_some_samples_exactly() {
        let (images, labels) = coordinate_batch();
        let mut rng = ChaCha8Rng::seed_from_u64(1);
        let (i, l) = crop_flip(&images, &[labels.shallow_clone()], 0, true, FILL, &mut rng);
        let flipped = check_aligned(&i, &l[0]);
        assert!(flipped.iter().any(|&f| f) && flipped.iter().any(|&f| !f), "{flipped:?}");
        for (k, &f) in flipped.iter().enumerate() {
            let expected = if f { images.get(k as i64).flip([2]) } else { images.get(k as i64) };
            assert!(i.get(k as i64).equal(&expected), "sample {k}");
        }
    }

    #[test]
    fn crop_and_flip_keep_image_and_targets_aligned() {
        let (images, labels) = coordinate_batch();
        let other = labels.to_kind(Kind::Int64);
        let mut rng = ChaCha8Rng::seed_from_u64(2);
        let (i, l) = crop_flip(&images, &[labels.shallow_clone(), other], 2, true, FILL, &mut rng);
        assert_eq!((i.size(), i.kind()), (images.size(), Kind::Float));
        assert_eq!((l[0].kind(), l[1].kind()), (Kind::Uint8, Kind::Int64));
        assert!(l[0].to_kind(Kind::Int64).equal(&l[1]));
        check_aligned(&i, &l[0]);
        let padded = values::<u8>(&l[0]).iter().filter(|&&v| v as i64 == FILL).count();
        assert!(padded > 0, "some samples should show padding");
    }

    /// A batch cut into parts and augmented part by part (as ranks do) equals the whole
    /// batch augmented at once, crop, flip and zoom, images and targets.
    #[test]
    fn parts_of_a_batch_augment_as_the_whole_batch() {
        let (images, labels) = coordinate_batch();
        let targets = [(labels.to_kind(Kind::Int64), Spatial::Labels { fill: FILL })];
        let whole = augment(&images, &targets, 2, true, 1.5, &mut ChaCha8Rng::seed_from_u64(9));
        let half = N / 2;
        let mut parts = (Vec::new(), Vec::new());
        for offset in [0, half] {
            let slice: Vec<(Tensor, Spatial)> = targets.iter().map(|(t, k)| (t.narrow(0, offset, half), *k)).collect();
            let part = Part { offset, total: N };
            let mut rng = ChaCha8Rng::seed_from_u64(9);
            let (i, t) = augment_part(&images.narrow(0, offset, half), &slice, 2, true, 1.5, part, &mut rng);
            parts.0.push(i);
            parts.1.push(t[0].shallow_clone());
        }
        assert!(Tensor::cat(&parts.0, 0).equal(&whole.0));
        assert!(Tensor::cat(&parts.1, 0).equal(&whole.1[0]));
    }

    #[test]
    fn same_seed_same_augmentation() {
        let (images, labels) = coordinate_batch();
        let run = |seed| {
            let mut rng = ChaCha8Rng::seed_from_u64(seed);
            crop_flip(&images, &[labels.shallow_clone()], 3, true, FILL, &mut rng)
        };
        let (a, b, c) = (run(7), run(7), run(8));
        assert!(a.0.equal(&b.0) && a.1[0].equal(&b.1[0]));
        assert!(!a.0.equal(&c.0));
    }

    #[test]
    fn flips_negate_normal_x_and_pad_invalid_values_with_nan() {
        let (images, labels) = coordinate_batch();
        // Normals (1, 2, 3) everywhere; depth 5 everywhere.
        let normals =
            Tensor::from_slice(&[1.0f32, 2.0, 3.0]).view([1, 3, 1, 1]).expand([N, 3, H, W], false).contiguous();
        let depth = Tensor::full([N, H, W], 5.0, (Kind::Float, tch::Device::Cpu));
        let targets = [
            (labels.to_kind(Kind::Int64), Spatial::Labels { fill: FILL }),
            (depth, Spatial::Depth),
            (normals, Spatial::Normals),
        ];
        let mut rng = ChaCha8Rng::seed_from_u64(3);
        let (i, out) = crop_flip_targets(&images, &targets, 1, true, &mut rng);
        let flipped = check_aligned(&i, &out[0].to_kind(Kind::Uint8));
        for (k, &f) in flipped.iter().enumerate() {
            let k = k as i64;
            let padding = out[0].get(k).eq(FILL);
            // Depth and normals are NaN exactly where the labels are padding.
            assert!(out[1].get(k).isnan().equal(&padding), "sample {k}");
            assert!(out[2].get(k).get(0).isnan().equal(&padding), "sample {k}");
            let x = out[2].get(k).get(0).nan_to_num(0.0, None, None);
            let want_x = if f { -1.0 } else { 1.0 };
            let expected = Tensor::full([H, W], want_x, (Kind::Float, tch::Device::Cpu))
                .where_scalarother(&padding.logical_not(), 0.0);
            assert!(x.equal(&expected), "sample {k}: x must be {want_x}");
            assert!(out[2].get(k).get(2).nan_to_num(3.0, None, None).eq(3.0).all().int64_value(&[]) == 1);
        }
        assert!(flipped.iter().any(|&f| f) && flipped.iter().any(|&f| !f));
    }

    #[test]
    fn zoom_one_is_the_identity_and_crops_stay_aligned() {
        let (images, labels) = coordinate_batch();
        let labels = labels.to_kind(Kind::Int64);
        // Scale 1: every tensor comes back unchanged (bilinear at pixel centres reads one tap).
        let zooms: Vec<Zoom> = (0..N).map(|k| Zoom { scale: 1.0, fy: k as f64 / N as f64, fx: 0.3 }).collect();
        let grid = zoom_grid(&zooms, H, W, tch::Device::Cpu);
        let same = sample(&images, &grid, BILINEAR);
        assert!((same - &images).abs().max().double_value(&[]) < 1e-5);
        let scales = Tensor::ones([N], (Kind::Float, tch::Device::Cpu));
        assert!(resample(&labels, Spatial::Labels { fill: FILL }, &grid, &scales).equal(&labels));
        // Scale 2 at the top-left: output (i, j) shows source (⌊i / 2⌋, ⌊j / 2⌋) in the labels
        // (nearest), and the image (bilinear) agrees up to interpolation.
        let zooms = vec![Zoom { scale: 2.0, fy: 0.0, fx: 0.0 }; N as usize];
        let grid = zoom_grid(&zooms, H, W, tch::Device::Cpu);
        let scales = Tensor::full([N], 2.0, (Kind::Float, tch::Device::Cpu));
        let l = resample(&labels, Spatial::Labels { fill: FILL }, &grid, &scales);
        let img = sample(&images, &grid, BILINEAR);
        for i in 0..H {
            for j in 0..W {
                // Source position (i + ½)/2 − ½; nearest rounds it (half to even).
                let (sy, sx) = ((i as f64 + 0.5) / 2.0 - 0.5, (j as f64 + 0.5) / 2.0 - 0.5);
                let (ry, rx) = (sy.round_ties_even().max(0.0) as i64, sx.round_ties_even().max(0.0) as i64);
                assert_eq!(l.int64_value(&[0, i, j]), ry * W + rx, "({i}, {j})");
                let row = img.double_value(&[0, 0, i, j]) - 1.0;
                assert!((row - sy.max(0.0)).abs() < 1e-5, "({i}, {j}): {row} vs {sy}");
            }
        }
    }

    #[test]
    fn zoom_divides_depth_and_never_mixes_in_invalid_pixels() {
        let depth = Tensor::full([1, H, W], 6.0, (Kind::Float, tch::Device::Cpu));
        let _ = depth.get(0).get(0).get(0).fill_(f64::NAN);
        let zooms = vec![Zoom { scale: 1.5, fy: 0.0, fx: 0.0 }];
        let grid = zoom_grid(&zooms, H, W, tch::Device::Cpu);
        let out = resample(&depth, Spatial::Depth, &grid, &Tensor::from_slice(&[1.5f32]));
        let nan = out.isnan();
        assert!(nan.get(0).get(0).get(0).int64_value(&[]) == 1, "the invalid corner stays invalid");
        let valid = out.where_scalarother(&nan.logical_not(), 4.0);
        assert!((valid - 4.0).abs().max().double_value(&[]) < 1e-5, "6 / 1.5 = 4 wherever valid");
        assert!(nan.sum(Kind::Int64).int64_value(&[]) <= 4, "only pixels next to the corner are lost");
        // Normals are sampled nearest: values stay unit vectors from the input.
        let normals = Tensor::randn([1, 3, H, W], (Kind::Float, tch::Device::Cpu));
        let normals = &normals / normals.norm_scalaropt_dim(2, [1i64].as_slice(), true);
        let out = resample(&normals, Spatial::Normals, &grid, &Tensor::from_slice(&[1.5f32]));
        let norms = out.norm_scalaropt_dim(2, [1i64].as_slice(), false);
        assert!((norms - 1.0).abs().max().double_value(&[]) < 1e-5);
    }

    #[test]
    fn augment_without_zoom_draws_what_crop_flip_draws() {
        let (images, labels) = coordinate_batch();
        let targets = [(labels.to_kind(Kind::Int64), Spatial::Labels { fill: FILL })];
        let a = augment(&images, &targets, 2, true, 1.0, &mut ChaCha8Rng::seed_from_u64(5));
        let b = crop_flip(&images, &[labels.to_kind(Kind::Int64)], 2, true, FILL, &mut ChaCha8Rng::seed_from_u64(5));
        assert!(a.0.equal(&b.0) && a.1[0].equal(&b.1[0]));
        let zoomed = augment(&images, &targets, 2, true, 1.5, &mut ChaCha8Rng::seed_from_u64(5));
        assert!(!zoomed.0.equal(&a.0));
        let again = augment(&images, &targets, 2, true, 1.5, &mut ChaCha8Rng::seed_from_u64(5));
        assert!(zoomed.0.equal(&again.0) && zoomed.1[0].equal(&again.1[0]));
    }
}
