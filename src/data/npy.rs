//! NumPy `.npy` files (format versions 1.0, 2.0 and 3.0): a magic string, a header that is a
//! Python dict literal (`{'descr': '<f4', 'fortran_order': False, 'shape': (288, 384, 3), }`)
//! and the raw array. Numeric dtypes of either byte order are read and converted to f32.
use crate::user_error;
use std::path::Path;

pub const MAGIC: &[u8; 6] = b"\x93NUMPY";

/// An array read from a `.npy` file, converted to f32, in C (row-major) order.
#[derive(Debug, Clone, PartialEq)]
pub struct Array {
    pub shape: Vec<usize>,
    pub data: Vec<f32>,
    /// The file's dtype, e.g. `<f4`, `|u1`.
    pub descr: String,
}

/// The parsed header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    pub descr: String,
    pub fortran_order: bool,
    pub shape: Vec<usize>,
    /// Bytes before the array data.
    pub data_offset: usize,
}

/// Most elements an array may have: far above any image or label map, far below what would
/// exhaust memory (or overflow a product of the header's dimensions).
pub const MAX_ELEMENTS: usize = 1 << 30;

/// Reads a whole `.npy` file. Errors name the file and say what is wrong.
pub fn read(path: &Path) -> anyhow::Result<Array> {
    crate::files::regular_len(path)?;
    let bytes = std::fs::read(path).map_err(|e| user_error!("{}: cannot read: {e}", path.display()))?;
    parse(&bytes).map_err(|e| user_error!("{}: {e}", path.display()))
}

/// Reads only the header of a `.npy` file.
pub fn read_header(path: &Path) -> anyhow::Result<Header> {
    use std::io::Read;
    crate::files::regular_len(path)?;
    let mut f = std::fs::File::open(path).map_err(|e| user_error!("{}: cannot read: {e}", path.display()))?;
    let mut head = vec![0u8; 12];
    let got = f.read(&mut head).map_err(|e| user_error!("{}: cannot read: {e}", path.display()))?;
    head.truncate(got);
    let (len_bytes, header_len) = header_len(&head).map_err(|e| user_error!("{}: {e}", path.display()))?;
    let mut rest = vec![0u8; (8 + len_bytes + header_len).saturating_sub(head.len())];
    f.read_exact(&mut rest).map_err(|_| user_error!("{}: not a .npy file: header cut short", path.display()))?;
    head.extend(rest);
    parse_header(&head).map_err(|e| user_error!("{}: {e}", path.display()))
}

/// `(bytes of the length field, header length)` from the start of the file.
fn header_len(bytes: &[u8]) -> Result<(usize, usize), String> {
    if bytes.len() < 10 || &bytes[..6] != MAGIC {
        return Err("not a .npy file (no \\x93NUMPY magic)".into());
    }
    match bytes[6] {
        1 => Ok((2, u16::from_le_bytes([bytes[8], bytes[9]]) as usize)),
        2 | 3 if bytes.len() >= 12 => Ok((4, u32::from_le_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]) as usize)),
        v => Err(format!("unsupported .npy format version {v}.{}", bytes[7])),
    }
}

/// Parses the magic, version and header dict.
pub fn parse_header(bytes: &[u8]) -> Result<Header, String> {
    let (len_bytes, header_len) = header_len(bytes)?;
    let start = 8 + len_bytes;
    let end = start + header_len;
    if bytes.len() < end {
        return Err(format!("not a .npy file: header of {header_len} bytes cut short"));
    }
    let text = std::str::from_utf8(&bytes[start..end]).map_err(|_| "the .npy header is not text".to_string())?;
    let field = |key: &str| -> Result<&str, String> {
        let at =
            text.find(&format!("'{key}'")).ok_or_else(|| format!("the .npy header has no '{key}': {}", text.trim()))?;
        let after = text[at + key.len() + 2..].trim_start();
        after.strip_prefix(':').map(str::trim_start).ok_or_else(|| format!("malformed .npy header: {}", text.trim()))
    };
    let descr = field("descr")?;
    let descr = descr
        .strip_prefix('\'')
        .and_then(|d| d.split('\'').next())
        .ok_or_else(|| format!("malformed 'descr' in .npy header: {}", text.trim()))?
        .to_string();
    let fortran_order = match field("fortran_order")? {
        f if f.starts_with("True") => true,
        f if f.starts_with("False") => false,
        _ => return Err(format!("malformed 'fortran_order' in .npy header: {}", text.trim())),
    };
    let shape = field("shape")?;
    let inner = shape
        .strip_prefix('(')
        .and_then(|s| s.split(')').next())
        .ok_or_else(|| format!("malformed 'shape' in .npy header: {}", text.trim()))?;
    let shape = inner
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| s.trim_end_matches('L').parse::<usize>())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|_| format!("malformed 'shape' in .npy header: ({inner})"))?;
    let elements = shape.iter().try_fold(1usize, |n, &d| n.checked_mul(d)).filter(|&n| n <= MAX_ELEMENTS);
    if elements.is_none() {
        return Err(format!("shape {shape:?} is larger than the {MAX_ELEMENTS} elements an array may have here"));
    }
    Ok(Header { descr, fortran_order, shape, data_offset: end })
}

/// Parses a whole `.npy` file held in memory.
pub fn parse(bytes: &[u8]) -> Result<Array, String> {
    let h = parse_header(bytes)?;
    if h.fortran_order {
        return Err("Fortran-ordered arrays are not supported; save with np.ascontiguousarray".into());
    }
    let (little, kind, size) = dtype(&h.descr)?;
    let count: usize = h.shape.iter().product();
    let data = &bytes[h.data_offset..];
    if data.len() != count * size {
        return Err(format!(
            "array data is {} bytes, but shape {:?} of {} needs {}",
            data.len(),
            h.shape,
            h.descr,
            count * size
        ));
    }
    let values = data
        .chunks_exact(size)
        .map(|b| {
            let mut v = [0u8; 8];
            v[..size].copy_from_slice(b);
            if !little {
                v[..size].reverse();
            }
            match (kind, size) {
                ('f', 2) => f16_to_f32(u16::from_le_bytes([v[0], v[1]])),
                ('f', 4) => f32::from_le_bytes([v[0], v[1], v[2], v[3]]),
                ('f', 8) => f64::from_le_bytes(v) as f32,
                ('u' | 'b', _) => u64::from_le_bytes(v) as f32,
                ('i', _) => {
                    // Sign-extend from `size` bytes.
                    let shift = 64 - 8 * size as u32;
                    ((u64::from_le_bytes(v) << shift) as i64 >> shift) as f32
                }
                _ => unreachable!("dtype() admits only these"),
            }
        })
        .collect();
    Ok(Array { shape: h.shape, data: values, descr: h.descr })
}

/// `(little endian, kind f/i/u/b, item size)` of a numeric descr.
fn dtype(descr: &str) -> Result<(bool, char, usize), String> {
    let bad = || format!("unsupported dtype '{descr}' (expected a number type such as <f4, <f8, |u1, <i8)");
    let mut chars = descr.chars();
    let order = chars.next().ok_or_else(bad)?;
    let kind = chars.next().ok_or_else(bad)?;
    let size: usize = chars.as_str().parse().map_err(|_| bad())?;
    let little = match order {
        '<' | '|' | '=' => true,
        '>' => size == 1,
        _ => return Err(bad()),
    };
    let ok = match kind {
        'f' => matches!(size, 2 | 4 | 8),
        'i' | 'u' => matches!(size, 1 | 2 | 4 | 8),
        'b' => size == 1,
        _ => false,
    };
    if ok {
        Ok((little, kind, size))
    } else {
        Err(bad())
    }
}

/// IEEE half to single precision.
fn f16_to_f32(h: u16) -> f32 {
    let sign = ((h >> 15) as u32) << 31;
    let exp = ((h >> 10) & 0x1f) as u32;
    let frac = (h & 0x3ff) as u32;
    let bits = match (exp, frac) {
        (0, 0) => sign,
        (0, f) => {
            // Subnormal: value = f · 2^-24.
            let v = f as f32 * (1.0 / 16_777_216.0);
            return if sign != 0 { -v } else { v };
        }
        (31, 0) => sign | 0x7f80_0000,
        (31, f) => sign | 0x7f80_0000 | (f << 13),
        (e, f) => sign | ((e + 112) << 23) | (f << 13),
    };
    f32::from_bits(bits)
}

/// A `.npy` version 1.0 file of little-endian f32 values (what `np.save` writes for a
/// float32 array), for tests and tools.
pub fn encode_f32(shape: &[usize], data: &[f32]) -> Vec<u8> {
    let mut out = header_v1("<f4", shape);
    for v in data {
        out.extend_from_slice(&v.to_le_bytes());
    }
    out
}

/// The magic, version 1.0 and the header dict padded with spaces to a multiple of 64 bytes,
/// ending in a newline, as NumPy writes it.
pub fn header_v1(descr: &str, shape: &[usize]) -> Vec<u8> {
    let dims: Vec<String> = shape.iter().map(|d| d.to_string()).collect();
    let shape = match dims.len() {
        1 => format!("({},)", dims[0]),
        _ => format!("({})", dims.join(", ")),
    };
    let mut dict = format!("{{'descr': '{descr}', 'fortran_order': False, 'shape': {shape}, }}");
    while (10 + dict.len() + 1) % 64 != 0 {
        dict.push(' ');
    }
    dict.push('\n');
    let mut out = MAGIC.to_vec();
    out.extend_from_slice(&[1, 0]);
    out.extend_from_slice(&(dict.len() as u16).to_le_bytes());
    out.extend_from_slice(dict.as_bytes());
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numpy_written_header_round_trips() {
        // The exact bytes np.save writes for np.zeros((2, 3), np.float32) (NumPy ≥ 1.x).
        let mut want = b"\x93NUMPY\x01\x00v\x00{'descr': '<f4', 'fortran_order': False, 'shape': (2, 3), }".to_vec();
        want.resize(127, b' ');
        want.push(b'\n');
        assert_eq!(header_v1("<f4", &[2, 3]), want);
        let a = parse(&encode_f32(&[2, 3], &[1.0, -2.5, 3.0, 0.0, 5.5, f32::NAN])).unwrap();
        assert_eq!(a.shape, [2, 3]);
        assert_eq!(a.data[..5], [1.0, -2.5, 3.0, 0.0, 5.5]);
        assert!(a.data[5].is_nan());
        assert_eq!(parse(&encode_f32(&[4], &[1.0; 4])).unwrap().shape, [4]);
    }

    #[test]
    fn other_dtypes_and_byte_orders() {
        let mut u8s = header_v1("|u1", &[3]);
        u8s.extend([0u8, 7, 255]);
        assert_eq!(parse(&u8s).unwrap().data, [0.0, 7.0, 255.0]);
        let mut i8s = header_v1("<i8", &[2]);
        i8s.extend((-1i64).to_le_bytes());
        i8s.extend(12i64.to_le_bytes());
        assert_eq!(parse(&i8s).unwrap().data, [-1.0, 12.0]);
        let mut be = header_v1(">f8", &[1]);
        be.extend(0.25f64.to_be_bytes());
        assert_eq!(parse(&be).unwrap().data, [0.25]);
        let mut half = header_v1("<f2", &[3]);
        for h in [0x3c00u16, 0xc000, 0x0001] {
            half.extend(h.to_le_bytes());
        }
        assert_eq!(parse(&half).unwrap().data, [1.0, -2.0, 2f32.powi(-24)]);
        // Version 2.0: a 4-byte header length.
        let v1 = encode_f32(&[1], &[9.0]);
        let mut v2 = MAGIC.to_vec();
        v2.extend([2, 0]);
        v2.extend((u16::from_le_bytes([v1[8], v1[9]]) as u32).to_le_bytes());
        v2.extend(&v1[10..]);
        assert_eq!(parse(&v2).unwrap().data, [9.0]);
    }

    #[test]
    fn malformed_files_say_what_is_wrong() {
        let e = |b: &[u8]| parse(b).unwrap_err();
        assert!(e(b"PK\x03\x04 a zip").contains("magic"));
        let mut short = encode_f32(&[2, 2], &[1.0; 4]);
        short.truncate(short.len() - 3);
        assert!(e(&short).contains("13 bytes") && e(&short).contains("needs 16"), "{}", e(&short));
        assert!(e(&header_v1("<U8", &[1])).contains("unsupported dtype"));
        let mut fortran = encode_f32(&[1], &[1.0]);
        let at = fortran.windows(5).position(|w| w == b"False").unwrap();
        fortran[at..at + 5].copy_from_slice(b"True ");
        assert!(e(&fortran).contains("Fortran"));
        let mut v9 = encode_f32(&[1], &[1.0]);
        v9[6] = 9;
        assert!(e(&v9).contains("version 9"));
        let cut = &encode_f32(&[1], &[1.0])[..40];
        assert!(e(cut).contains("cut short"));
    }

    #[test]
    fn header_only_read_matches_full_parse() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("a.npy");
        std::fs::write(&p, encode_f32(&[2, 3, 1], &[0.0; 6])).unwrap();
        let h = read_header(&p).unwrap();
        assert_eq!((h.descr.as_str(), h.shape.as_slice(), h.fortran_order), ("<f4", &[2usize, 3, 1][..], false));
        std::fs::write(&p, b"nope").unwrap();
        assert!(read_header(&p).unwrap_err().to_string().contains("a.npy"));
    }
}
