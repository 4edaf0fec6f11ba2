//! Reading and resizing image files, PNG label masks and float planes, shared by the
//! file-per-sample datasets. Errors are user errors of one line naming the file.
use super::jpeg::{Decoded, ImageDecode};
use crate::user_error;
use std::path::Path;

/// Image file extensions the folder datasets read (any case).
pub const IMAGE_EXTENSIONS: [&str; 3] = ["png", "jpg", "jpeg"];

/// The names of the regular files in `dir` with an image extension, unsorted.
pub fn image_names(dir: &Path) -> std::io::Result<Vec<String>> {
    Ok(std::fs::read_dir(dir)?
        .flatten()
        .filter(|e| e.path().is_file())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| {
            Path::new(n)
                .extension()
                .and_then(|e| e.to_str())
                .is_some_and(|e| IMAGE_EXTENSIONS.contains(&e.to_ascii_lowercase().as_str()))
        })
        .collect())
}

/// An RGB image file (JPEG or PNG; grey, CMYK and alpha images are converted), decoded as
/// `decode` says, and its stored `(width, height)`. With `fit` a JPEG may come out smaller, at
/// 1/2, 1/4 or 1/8 of its size, its sides still at least `fit` (`data.decode_scale`).
pub fn read_rgb(path: &Path, decode: ImageDecode, fit: Option<u32>) -> anyhow::Result<Decoded> {
    crate::files::regular_len(path)?;
    let bytes = std::fs::read(path).map_err(|e| user_error!("{}: cannot read: {e}", path.display()))?;
    #[cfg(mtl_libjpeg)]
    if decode.decoder == crate::config::JpegDecoder::LibjpegTurbo && super::jpeg::is_jpeg(&bytes) {
        let denom = |w, h| match fit.filter(|_| decode.scale) {
            Some(fit) => super::jpeg::scale_denominator(w, h, fit),
            None => 1,
        };
        match super::jpeg::decode_turbo(&bytes, denom) {
            Ok(Some(found)) => return Ok(found),
            Ok(None) => {} // CMYK: the `image` crate converts it below.
            Err(e) => return Err(user_error!("{}: cannot decode JPEG: {e}", path.display())),
        }
    }
    // zune-jpeg decodes at full size: `decode` and `fit` only steer libjpeg-turbo.
    #[cfg(not(mtl_libjpeg))]
    let _ = (decode, fit);
    let reader = image::ImageReader::new(std::io::Cursor::new(&bytes))
        .with_guessed_format()
        .map_err(|e| user_error!("{}: cannot read: {e}", path.display()))?;
    // The `image` crate's messages may end in a newline; the error is one line.
    let img = reader
        .decode()
        .map_err(|e| user_error!("{}: cannot decode image: {}", path.display(), e.to_string().trim_end()))?;
    // `into_`: an RGB image is handed over, not copied.
    let img = img.into_rgb8();
    let stored = img.dimensions();
    Ok((img, stored))
}

/// The image resized to `w`×`h` (bilinear with antialiasing when shrinking: `image`'s
/// triangle filter, bit for bit; see [`super::resize`]), as channel-major bytes `3·h·w`. No
/// resampling when the size already fits.
pub fn rgb_to_chw(img: &image::RgbImage, h: u32, w: u32) -> Vec<u8> {
    if img.dimensions() != (w, h) {
        return super::resize::resize_rgb_to_chw(img.as_raw(), img.width(), img.height(), w, h);
    }
    let px = (h * w) as usize;
    let mut out = vec![0u8; 3 * px];
    for (p, rgb) in img.pixels().enumerate() {
        for c in 0..3 {
            out[c * px + p] = rgb.0[c];
        }
    }
    out
}

/// A label mask PNG's stored values: 8-bit (or 1/2/4/16-bit) grey, whose values are the
/// labels, or a palette PNG, whose palette indices are (as in PASCAL VOC). Returns
/// `(width, height, values row-major)`. Colour masks are refused: their colours are not labels.
pub fn read_mask_png(path: &Path) -> anyhow::Result<(u32, u32, Vec<u8>)> {
    let err = |what: String| user_error!("{}: {what}", path.display());
    crate::files::regular_len(path)?;
    let file = std::fs::File::open(path).map_err(|e| err(format!("cannot read: {e}")))?;
    // Identity transformations: palette indices stay indices.
    let decoder = png::Decoder::new(std::io::BufReader::new(file));
    let mut reader = decoder.read_info().map_err(|e| err(format!("not a readable PNG: {e}")))?;
    let (color, depth) = (reader.info().color_type, reader.info().bit_depth);
    if !matches!(color, png::ColorType::Grayscale | png::ColorType::Indexed) {
        return Err(err(format!(
            "is a {color:?} PNG; a mask must be a grey PNG (one class index per pixel) or a palette PNG"
        )));
    }
    let size = reader.output_buffer_size().ok_or_else(|| err("image too large".into()))?;
    let mut buf = vec![0u8; size];
    let info = reader.next_frame(&mut buf).map_err(|e| err(format!("cannot decode PNG: {e}")))?;
    let (w, h, line) = (info.width as usize, info.height as usize, info.line_size);
    let bits = depth as usize;
    let mut values = Vec::with_capacity(w * h);
    if bits == 8 {
        // A byte per pixel already (the common case; a per-pixel loop was 7% of streaming).
        for row in buf.chunks(line).take(h) {
            values.extend_from_slice(&row[..w]);
        }
        return Ok((w as u32, h as u32, values));
    }
    for y in 0..h {
        let row = &buf[y * line..(y + 1) * line];
        for x in 0..w {
            let v = match bits {
                16 => {
                    let v = u16::from_be_bytes([row[2 * x], row[2 * x + 1]]);
                    u8::try_from(v).map_err(|_| err(format!("16-bit mask value {v} at ({x}, {y}) is above 255")))?
                }
                b => {
                    let per_byte = 8 / b;
                    let shift = 8 - b * (x % per_byte + 1);
                    (row[x / per_byte] >> shift) & ((1u8 << b) - 1)
                }
            };
            values.push(v);
        }
    }
    Ok((w as u32, h as u32, values))
}

/// Nearest-neighbour resize of a `h`×`w` plane to `oh`×`ow`: output pixel (i, j) takes source
/// (⌊(i + ½)·h/oh⌋, ⌊(j + ½)·w/ow⌋) (PIL's and OpenCV's rule).
pub fn resize_nearest<T: Copy>(src: &[T], h: usize, w: usize, oh: usize, ow: usize) -> Vec<T> {
    if (h, w) == (oh, ow) {
        return src.to_vec();
    }
    let map = |i: usize, from: usize, to: usize| (((2 * i + 1) * from) / (2 * to)).min(from - 1);
    let cols: Vec<usize> = (0..ow).map(|j| map(j, w, ow)).collect();
    let mut out = Vec::with_capacity(oh * ow);
    for i in 0..oh {
        let row = &src[map(i, h, oh) * w..][..w];
        out.extend(cols.iter().map(|&c| row[c]));
    }
    out
}

/// Bilinear resize of `c` planes of `h`×`w` floats to `oh`×`ow` (PyTorch's
/// `interpolate(mode="bilinear", align_corners=False)` without antialiasing). A NaN tap with a
/// positive weight makes the output NaN: an interpolated value never mixes in invalid pixels.
pub fn resize_bilinear(src: &[f32], c: usize, h: usize, w: usize, oh: usize, ow: usize) -> Vec<f32> {
    if (h, w) == (oh, ow) {
        return src.to_vec();
    }
    // Source coordinate of output index i, clamped like PyTorch: (i + ½)·in/out − ½, ≥ 0.
    let taps = |i: usize, from: usize, to: usize| {
        let x = ((i as f64 + 0.5) * from as f64 / to as f64 - 0.5).max(0.0);
        let x0 = (x.floor() as usize).min(from - 1);
        let x1 = (x0 + 1).min(from - 1);
        let t = (x - x0 as f64) as f32;
        (x0, x1, t)
    };
    let rows: Vec<_> = (0..oh).map(|i| taps(i, h, oh)).collect();
    let cols: Vec<_> = (0..ow).map(|j| taps(j, w, ow)).collect();
    let mut out = Vec::with_capacity(c * oh * ow);
    for plane in src.chunks_exact(h * w).take(c) {
        for &(y0, y1, ty) in &rows {
            for &(x0, x1, tx) in &cols {
                let mut acc = 0.0f32;
                for (y, wy) in [(y0, 1.0 - ty), (y1, ty)] {
                    for (x, wx) in [(x0, 1.0 - tx), (x1, tx)] {
                        let weight = wy * wx;
                        if weight > 0.0 {
                            acc += weight * plane[y * w + x];
                        }
                    }
                }
                out.push(acc);
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_follows_the_pixel_centre_rule() {
        let src: Vec<u8> = (0..36).collect(); // 6×6
        let out = resize_nearest(&src, 6, 6, 4, 4);
        // rows/cols 0, 2, 3, 5: ⌊(2i + 1)·6 / 8⌋
        assert_eq!(out[..4], [0, 2, 3, 5]);
        assert_eq!(out[4..8], [12, 14, 15, 17]);
        assert_eq!(resize_nearest(&src, 6, 6, 6, 6), src);
        let up = resize_nearest(&[1u8, 2, 3, 4], 2, 2, 4, 4);
        assert_eq!(up, [1, 1, 2, 2, 1, 1, 2, 2, 3, 3, 4, 4, 3, 3, 4, 4]);
    }

    #[test]
    fn bilinear_matches_pytorch_and_keeps_nan_out_of_valid_pixels() {
        // interpolate([[0, 1], [2, 3]], size=(4, 4), bilinear, align_corners=False), row 0 and 1.
        let out = resize_bilinear(&[0.0, 1.0, 2.0, 3.0], 1, 2, 2, 4, 4);
        let want = [0.0, 0.25, 0.75, 1.0, 0.5, 0.75, 1.25, 1.5];
        for (a, b) in out.iter().zip(want) {
            assert!((a - b).abs() < 1e-6, "{out:?}");
        }
        // Halving averages 2×2 blocks exactly.
        let src: Vec<f32> = (0..16).map(|v| v as f32).collect();
        assert_eq!(resize_bilinear(&src, 1, 4, 4, 2, 2), [2.5, 4.5, 10.5, 12.5]);
        let mut with_nan = src.clone();
        with_nan[0] = f32::NAN;
        let out = resize_bilinear(&with_nan, 1, 4, 4, 2, 2);
        assert!(out[0].is_nan() && out[1..] == [4.5, 10.5, 12.5]);
    }

    #[test]
    fn masks_keep_palette_indices_and_grey_values() {
        let dir = tempfile::tempdir().unwrap();
        let write = |name: &str, color, depth, palette: Option<Vec<u8>>, data: &[u8], w: u32, h: u32| {
            let path = dir.path().join(name);
            let file = std::io::BufWriter::new(std::fs::File::create(&path).unwrap());
            let mut enc = png::Encoder::new(file, w, h);
            enc.set_color(color);
            enc.set_depth(depth);
            if let Some(p) = palette {
                enc.set_palette(p);
            }
            enc.write_header().unwrap().write_image_data(data).unwrap();
            path
        };
        let grey = write("g.png", png::ColorType::Grayscale, png::BitDepth::Eight, None, &[0, 1, 2, 255, 7, 3], 3, 2);
        assert_eq!(read_mask_png(&grey).unwrap(), (3, 2, vec![0, 1, 2, 255, 7, 3]));
        // 2-bit palette: 4 pixels per byte, MSB first; each row padded to whole bytes.
        let pal = write(
            "p.png",
            png::ColorType::Indexed,
            png::BitDepth::Two,
            Some(vec![0, 0, 0, 255, 0, 0, 0, 255, 0, 0, 0, 255]),
            &[0b00_01_10_11, 0b10_00_00_00, 0b11_10_01_00, 0b01_00_00_00],
            5,
            2,
        );
        assert_eq!(read_mask_png(&pal).unwrap(), (5, 2, vec![0, 1, 2, 3, 2, 3, 2, 1, 0, 1]));
        let rgb = write("c.png", png::ColorType::Rgb, png::BitDepth::Eight, None, &[0; 6], 2, 1);
        let e = read_mask_png(&rgb).unwrap_err().to_string();
        assert!(e.contains("c.png") && e.contains("Rgb"), "{e}");
        std::fs::write(dir.path().join("bad.png"), b"not a png").unwrap();
        let e = read_mask_png(&dir.path().join("bad.png")).unwrap_err().to_string();
        assert!(e.contains("bad.png") && e.contains("PNG"), "{e}");
    }
}
