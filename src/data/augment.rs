//! Batched augmentation on the device.
//!
//! Only the random numbers (N crop offsets and flip bits) are drawn on the host, from the
//! caller's seeded generator; the pixels never leave the device. Every output pixel of sample n
//! reads one pixel of the zero-padded input, so the whole batch is one `gather` per tensor with
//! an index built from the offsets, the same index for the image and every spatial target,
//! which keeps them aligned by construction.
use rand::Rng;
use tch::{Kind, Tensor};

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
    assert!(padding >= 0, "crop padding must be >= 0, got {padding}");
    if padding == 0 && !hflip {
        return (images.shallow_clone(), spatial.iter().map(Tensor::shallow_clone).collect());
    }
    let &[n, c, h, w] = images.size().as_slice() else {
        panic!("crop_flip expects images [N, C, H, W], got {:?}", images.size());
    };
    for s in spatial {
        assert_eq!(s.size(), [n, h, w], "spatial target does not match images {:?}", images.size());
    }
    let index = source_index(draw_params(rng, n, padding, hflip), n, h, w, padding, images.device());

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
        .map(|s| {
            s.pad(sides, "constant", fill_label as f64)
                .view([n, 1, padded_area])
                .gather(2, &index, false)
                .view([n, h, w])
        })
        .collect();
    (out_images, out_spatial)
}

/// Per sample: row offset, column offset (both in 0..=2·padding) and flip bit (0/1), as
/// `[3 * n]` (all row offsets, then columns, then flips). Drawn sample by sample so the
/// numbers for sample i do not depend on the batch size.
fn draw_params(rng: &mut impl Rng, n: i64, padding: i64, hflip: bool) -> Vec<i64> {
    let n = n as usize;
    let mut params = vec![0i64; 3 * n];
    for i in 0..n {
        params[i] = rng.gen_range(0..=2 * padding);
        params[n + i] = rng.gen_range(0..=2 * padding);
        params[2 * n + i] = i64::from(hflip && rng.gen_bool(0.5));
    }
    params
}

/// Flat index into the padded `[Hp * Wp]` plane for every output pixel: `[N, 1, H * W]` int64
/// on `device`. Output (i, j) of sample k reads padded row `oy_k + i` and column `ox_k + j`, or
/// `ox_k + W − 1 − j` when flipped (crop, then mirror the crop).
fn source_index(params: Vec<i64>, n: i64, h: i64, w: i64, padding: i64, device: tch::Device) -> Tensor {
    // One small host-to-device copy; the rest is computed where the images are.
    let params = Tensor::from_slice(&params).view([3, n, 1]).to_device(device);
    let (oy, ox, flip) = (params.get(0), params.get(1), params.get(2));
    let rows = oy + Tensor::arange(h, (Kind::Int64, device)).view([1, h]);
    let j = Tensor::arange(w, (Kind::Int64, device)).view([1, w]);
    let mirrored = j.g_mul_scalar(-2) + (w - 1);
    let cols = ox + &j + flip * mirrored;
    (rows.view([n, h, 1]) * (w + 2 * padding) + cols.view([n, 1, w])).view([n, 1, h * w])
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

    /// Checks that every pixel is either padding in both tensors or the same source pixel in
    /// both, and that each sample's sources form one shifted (maybe mirrored) grid; returns
    /// per sample whether it is mirrored.
    fn check_aligned(images: &Tensor, labels: &Tensor) -> Vec<bool> {
        let img = values::<f32>(images);
        let lab = values::<u8>(labels);
        let (h, w) = (H as usize, W as usize);
        let mut flipped = Vec::new();
        for k in 0..N as usize {
            // (output row, output col, source row, source col) of the non-padding pixels.
            let mut sources = Vec::new();
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
            let single = |f: &dyn Fn(&(i64, i64, i64, i64)) -> i64| {
                sources.iter().map(f).collect::<std::collections::HashSet<_>>().len() == 1
            };
            assert!(single(&|s| s.2 - s.0), "sample {k}: rows are not one shift");
            let mirrored = !single(&|s| s.3 - s.1);
            assert!(!mirrored || single(&|s| s.3 + s.1), "sample {k}: columns are not one shifted grid");
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
}
