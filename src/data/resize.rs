//! Resizing an RGB image with the triangle filter (bilinear, antialiased when shrinking) into
//! channel-major bytes: bit for bit what `image::imageops::resize(.., FilterType::Triangle)`
//! computes, without its per-pixel generic accessors, fourth (alpha) channel and separate
//! interleaved output. It was the largest cost of streaming a folder of photos (a quarter of
//! the decode threads' time, more than decoding the JPEG itself; docs/results/BENCHMARKS.md).
//!
//! The arithmetic is the `image` crate's, in the same order per output value: a vertical pass
//! into f32 (`Σ_i src·w_i`, taps left to right, each weight normalised by the taps' sum), then a
//! horizontal pass of the same form, clamped to [0, 255] and rounded half away from zero. Only
//! the loop order across *different* output values changes (rows of contiguous pixels), which
//! no value depends on; the test compares every byte with the `image` crate's result.

/// The input pixels one output pixel reads along one axis, and their weights.
struct Taps {
    first: usize,
    weights: Vec<f32>,
}

fn triangle(x: f32) -> f32 {
    if x.abs() < 1.0 {
        1.0 - x.abs()
    } else {
        0.0
    }
}

/// The taps of every output position when `src` pixels become `dst` (the `image` crate's
/// support and weight rule for a filter of support 1).
fn taps(src: u32, dst: u32) -> Vec<Taps> {
    let ratio = src as f32 / dst as f32;
    let sratio = if ratio < 1.0 { 1.0 } else { ratio };
    let support = sratio;
    (0..dst)
        .map(|o| {
            let centre = (o as f32 + 0.5) * ratio;
            let left = ((centre - support).floor() as i64).clamp(0, src as i64 - 1);
            let right = ((centre + support).ceil() as i64).clamp(left + 1, src as i64);
            let centre = centre - 0.5;
            let mut weights: Vec<f32> = (left..right).map(|i| triangle((i as f32 - centre) / sratio)).collect();
            let mut sum = 0.0f32;
            for w in &weights {
                sum += w;
            }
            for w in &mut weights {
                *w /= sum;
            }
            Taps { first: left as usize, weights }
        })
        .collect()
}

/// `v.clamp(0, 255).round()` as a byte (half away from zero, as `f32::round`), without the
/// libm call `round` compiles to on baseline x86-64: truncation and the fraction are exact
/// for floats in [0, 255].
fn round_to_u8(v: f32) -> u8 {
    let v = v.clamp(0.0, 255.0);
    let whole = v as u8;
    if v - whole as f32 >= 0.5 {
        whole + 1
    } else {
        whole
    }
}

/// `rgb` (`width`×`height` interleaved RGB bytes, row-major) resized to `w`×`h`, as
/// channel-major bytes `3·h·w`.
pub fn resize_rgb_to_chw(rgb: &[u8], width: u32, height: u32, w: u32, h: u32) -> Vec<u8> {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") {
        // SAFETY: the CPU has AVX2, checked just above.
        return unsafe { resize_avx2(rgb, width, height, w, h) };
    }
    resize(rgb, width, height, w, h)
}

/// [`resize`] compiled for AVX2: eight lanes where the baseline x86-64 target has four. Only
/// wider registers: no fused multiply-add (Rust never contracts `a * b + c`), so every value is
/// the same bit for bit.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
fn resize_avx2(rgb: &[u8], width: u32, height: u32, w: u32, h: u32) -> Vec<u8> {
    resize(rgb, width, height, w, h)
}

#[inline(always)]
fn resize(rgb: &[u8], width: u32, height: u32, w: u32, h: u32) -> Vec<u8> {
    assert_eq!(rgb.len(), 3 * width as usize * height as usize, "resize: buffer and size disagree");
    let row = 3 * width as usize;
    // Vertical pass: h rows of `width` RGB f32 values.
    let mut tall = vec![0.0f32; h as usize * row];
    for (out, t) in tall.chunks_exact_mut(row).zip(taps(height, h)) {
        for (i, &wt) in t.weights.iter().enumerate() {
            let src = &rgb[(t.first + i) * row..(t.first + i + 1) * row];
            for (acc, &v) in out.iter_mut().zip(src) {
                *acc += v as f32 * wt;
            }
        }
    }
    // Horizontal pass, written channel-major.
    let (h, w) = (h as usize, w as usize);
    let mut out = vec![0u8; 3 * h * w];
    let across = taps(width, w as u32);
    for (y, line) in tall.chunks_exact(row).enumerate() {
        for (x, t) in across.iter().enumerate() {
            let mut acc = [0.0f32; 3];
            for (i, &wt) in t.weights.iter().enumerate() {
                let p = &line[3 * (t.first + i)..3 * (t.first + i) + 3];
                for c in 0..3 {
                    acc[c] += p[c] * wt;
                }
            }
            for c in 0..3 {
                out[(c * h + y) * w + x] = round_to_u8(acc[c]);
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use image::imageops::FilterType;
    use rand::{Rng, SeedableRng};

    /// Photo-like content (smooth ramps plus noise) and pure noise, shrinking and enlarging,
    /// either axis, odd ratios, one-pixel images: every byte equals the `image` crate's.
    #[test]
    fn matches_the_image_crates_triangle_resize_byte_for_byte() {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(7);
        let cases = [
            (500, 375, 128, 128),
            (375, 500, 128, 96),
            (20, 13, 64, 50),
            (1, 1, 5, 3),
            (7, 300, 3, 3),
            (64, 64, 63, 65),
            (33, 17, 33, 9),
        ];
        for (k, &(sw, sh, w, h)) in cases.iter().enumerate() {
            let img = image::RgbImage::from_fn(sw, sh, |x, y| {
                let base = if k % 2 == 0 { (x * 3 + y * 2) % 256 } else { 0 };
                image::Rgb([0, 1, 2].map(|c| (base as i32 + rng.gen_range(-40..=40) + c * 50).clamp(0, 255) as u8))
            });
            let want = image::imageops::resize(&img, w, h, FilterType::Triangle);
            let got = resize_rgb_to_chw(img.as_raw(), sw, sh, w, h);
            assert_eq!(got, resize(img.as_raw(), sw, sh, w, h), "the AVX2 build and the portable one agree");
            let px = (w * h) as usize;
            for (p, rgb) in want.pixels().enumerate() {
                for c in 0..3 {
                    assert_eq!(got[c * px + p], rgb.0[c], "{sw}×{sh} → {w}×{h}: pixel {p} channel {c}");
                }
            }
        }
    }

    #[test]
    fn rounding_is_f32_round_clamped_to_a_byte() {
        let mut v = -3.0f32;
        while v < 260.0 {
            assert_eq!(round_to_u8(v), v.clamp(0.0, 255.0).round() as u8, "{v}");
            v += 0.0625;
        }
        for v in [0.49999997f32, 0.5, 1.4999999, 2.5, 254.49998, 254.5, 255.0, f32::MAX, -0.0] {
            assert_eq!(round_to_u8(v), v.clamp(0.0, 255.0).round() as u8, "{v}");
        }
    }

    #[test]
    fn weights_of_every_output_pixel_sum_to_one_and_stay_inside_the_image() {
        for (src, dst) in [(500, 128), (13, 50), (1, 4), (300, 3)] {
            for t in taps(src, dst) {
                let sum: f32 = t.weights.iter().sum();
                assert!((sum - 1.0).abs() < 1e-5, "{src} → {dst}: weights sum to {sum}");
                assert!(t.first + t.weights.len() <= src as usize);
            }
        }
    }
}
