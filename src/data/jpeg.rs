//! Decoding JPEG files: libjpeg-turbo (the library Pillow bundles) through the small C shim
//! csrc/jpeg/mtl_jpeg.c where the build found its headers, else zune-jpeg (through the `image`
//! crate). libjpeg-turbo decodes high-entropy photos faster and can decode at 1/2, 1/4 or 1/8
//! of the stored size (the IDCT's scaling, what Pillow's `draft` uses): docs/DECISIONS.md,
//! "JPEG decoding", and docs/results/BENCHMARKS.md, "Photo-like JPEGs", have the measurements.
//!
//! `data.jpeg_decoder` and `data.decode_scale` choose; [`ImageDecode::of`] resolves their
//! `auto` for this build, and a run over image files records the result in its config.yaml,
//! so its pixels can be decoded again bit for bit (each decoder is deterministic; the two
//! differ by a few levels).
use crate::config::{DataConfig, JpegDecoder, Toggle};

/// How this process decodes JPEG files.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ImageDecode {
    pub decoder: JpegDecoder,
    /// Decode at the smallest of 1/1, 1/2, 1/4, 1/8 of the stored size whose sides stay at
    /// least the target's (libjpeg-turbo only).
    pub scale: bool,
}

/// A decoded image and its stored `(width, height)` (larger when decoded at reduced size).
pub type Decoded = (image::RgbImage, (u32, u32));

/// Whether this build has libjpeg-turbo (build.rs found `jpeglib.h` and the library).
pub const HAS_LIBJPEG_TURBO: bool = cfg!(mtl_libjpeg);

impl ImageDecode {
    /// What the config asks for, `auto` resolved for this build; an error names the key when
    /// it asks for what the build lacks.
    pub fn of(d: &DataConfig) -> Result<Self, String> {
        let decoder = match d.jpeg_decoder {
            JpegDecoder::Auto if HAS_LIBJPEG_TURBO => JpegDecoder::LibjpegTurbo,
            JpegDecoder::Auto => JpegDecoder::ZuneJpeg,
            JpegDecoder::LibjpegTurbo if !HAS_LIBJPEG_TURBO => {
                return Err("data.jpeg_decoder: libjpeg-turbo, but this build has none (build.rs found no \
                            jpeglib.h: install libjpeg62-turbo-dev and rebuild, or set zune-jpeg)"
                    .into())
            }
            other => other,
        };
        let scale = match (d.decode_scale, decoder) {
            (Toggle::Auto, decoder) => decoder == JpegDecoder::LibjpegTurbo,
            (Toggle::On, JpegDecoder::ZuneJpeg) => {
                return Err("data.decode_scale: true needs data.jpeg_decoder: libjpeg-turbo (zune-jpeg \
                            decodes at full size only)"
                    .into())
            }
            (toggle, _) => toggle.is_on(),
        };
        Ok(Self { decoder, scale })
    }

    /// Writes the resolved choice into the config (for the run's config.yaml).
    pub fn record(self, d: &mut DataConfig) {
        d.jpeg_decoder = self.decoder;
        d.decode_scale = if self.scale { Toggle::On } else { Toggle::Off };
    }
}

/// The denominator Pillow's `draft` picks for an image of `width`×`height` wanted at least
/// `fit`×`fit`: the largest of 8, 4, 2, 1 that is at most `min(width / fit, height / fit)`.
pub fn scale_denominator(width: u32, height: u32, fit: u32) -> u32 {
    let room = (width / fit.max(1)).min(height / fit.max(1));
    [8, 4, 2].into_iter().find(|&s| room >= s).unwrap_or(1)
}

/// Whether `bytes` start like a JPEG file (SOI marker).
pub fn is_jpeg(bytes: &[u8]) -> bool {
    bytes.starts_with(&[0xFF, 0xD8, 0xFF])
}

/// A JPEG in memory decoded by libjpeg-turbo to RGB, at 1/`denom(width, height)` of its
/// stored size, with the stored `(width, height)`; `Ok(None)` for a CMYK or YCCK JPEG, which
/// libjpeg does not turn into RGB (the caller decodes it another way). Errors are libjpeg's
/// message.
#[cfg(mtl_libjpeg)]
pub fn decode_turbo(bytes: &[u8], denom: impl FnOnce(u32, u32) -> u32) -> Result<Option<Decoded>, String> {
    use std::ffi::{c_char, c_int, c_uint, CStr};
    #[repr(C)]
    struct Handle {
        _opaque: [u8; 0],
    }
    extern "C" {
        fn mtl_jpeg_new() -> *mut Handle;
        fn mtl_jpeg_free(j: *mut Handle);
        fn mtl_jpeg_message(j: *const Handle) -> *const c_char;
        fn mtl_jpeg_header(
            j: *mut Handle,
            data: *const u8,
            len: usize,
            width: *mut c_uint,
            height: *mut c_uint,
            to_rgb: *mut c_int,
        ) -> c_int;
        fn mtl_jpeg_start(j: *mut Handle, denom: c_uint, width: *mut c_uint, height: *mut c_uint) -> c_int;
        fn mtl_jpeg_read(j: *mut Handle, out: *mut u8) -> c_int;
    }
    /// Frees the decoder on every way out.
    struct Owned(*mut Handle);
    impl Drop for Owned {
        fn drop(&mut self) {
            // SAFETY: the pointer came from mtl_jpeg_new and is freed once, here.
            unsafe { mtl_jpeg_free(self.0) }
        }
    }
    // SAFETY: mtl_jpeg_new returns a fresh decoder or null; each call below gets that live
    // decoder, `bytes` (alive until the read ends) and out-pointers to locals or to a buffer
    // of exactly the 3·width·height bytes the shim writes. The shim longjmps only within
    // its own frames (docs in csrc/jpeg/mtl_jpeg.c), never across Rust ones.
    unsafe {
        let j = mtl_jpeg_new();
        if j.is_null() {
            return Err("out of memory".into());
        }
        let j = Owned(j);
        let message = |j: &Owned| CStr::from_ptr(mtl_jpeg_message(j.0)).to_string_lossy().into_owned();
        let (mut w, mut h, mut rgb) = (0, 0, 0);
        if mtl_jpeg_header(j.0, bytes.as_ptr(), bytes.len(), &mut w, &mut h, &mut rgb) != 0 {
            return Err(message(&j));
        }
        if rgb == 0 {
            return Ok(None);
        }
        let (mut ow, mut oh) = (0, 0);
        if mtl_jpeg_start(j.0, denom(w, h), &mut ow, &mut oh) != 0 {
            return Err(message(&j));
        }
        let mut out = vec![0u8; 3 * ow as usize * oh as usize];
        if mtl_jpeg_read(j.0, out.as_mut_ptr()) != 0 {
            return Err(message(&j));
        }
        let img = image::RgbImage::from_raw(ow, oh, out).expect("the buffer holds 3·width·height bytes");
        Ok(Some((img, (w, h))))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_denominator_is_pillows_draft_rule() {
        assert_eq!(scale_denominator(500, 375, 128), 2); // 3 and 2: halve
        assert_eq!(scale_denominator(500, 375, 224), 1);
        assert_eq!(scale_denominator(1024, 768, 128), 4); // 8 and 6
        assert_eq!(scale_denominator(4000, 3000, 128), 8);
        assert_eq!(scale_denominator(255, 4000, 128), 1); // one side too short
        assert_eq!(scale_denominator(10, 10, 0), 8);
    }

    #[test]
    fn auto_resolves_for_this_build_and_asks_for_nothing_it_lacks() {
        let mut d = DataConfig::defaults("folder");
        let auto = ImageDecode::of(&d).unwrap();
        assert_eq!(auto.decoder == JpegDecoder::LibjpegTurbo, HAS_LIBJPEG_TURBO);
        assert_eq!(auto.scale, HAS_LIBJPEG_TURBO);
        d.jpeg_decoder = JpegDecoder::ZuneJpeg;
        assert_eq!(ImageDecode::of(&d).unwrap(), ImageDecode { decoder: JpegDecoder::ZuneJpeg, scale: false });
        d.decode_scale = Toggle::On;
        assert!(ImageDecode::of(&d).unwrap_err().contains("data.decode_scale"));
        d.jpeg_decoder = JpegDecoder::LibjpegTurbo;
        match ImageDecode::of(&d) {
            Ok(got) => assert!(HAS_LIBJPEG_TURBO && got.scale),
            Err(e) => assert!(!HAS_LIBJPEG_TURBO && e.contains("data.jpeg_decoder"), "{e}"),
        }
        let mut recorded = DataConfig::defaults("folder");
        auto.record(&mut recorded);
        assert_eq!(ImageDecode::of(&recorded).unwrap(), auto, "the recorded choice resolves to itself");
    }
}
