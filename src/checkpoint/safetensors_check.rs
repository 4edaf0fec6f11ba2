//! Checks a safetensors file's header and sizes before libtorch reads it, so a truncated,
//! corrupted or foreign file gives a one-line error naming the file and the first bad key
//! instead of an abort inside C++.
use crate::user_error;
use std::collections::BTreeMap;
use std::path::Path;

/// One tensor's entry in the header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub dtype: String,
    pub shape: Vec<i64>,
}

fn dtype_size(dtype: &str) -> Option<u64> {
    Some(match dtype {
        "BOOL" | "U8" | "I8" | "F8_E5M2" | "F8_E4M3" => 1,
        "I16" | "U16" | "F16" | "BF16" => 2,
        "I32" | "U32" | "F32" => 4,
        "I64" | "U64" | "F64" => 8,
        _ => return None,
    })
}

/// Parses and checks the header; returns the entries by name.
pub fn check_file(path: &Path) -> anyhow::Result<BTreeMap<String, Entry>> {
    crate::files::regular_len(path)?;
    let bytes = std::fs::read(path).map_err(|e| user_error!("{}: cannot read: {e}", path.display()))?;
    check_bytes(&bytes).map_err(|msg| user_error!("{}: {msg}", path.display()))
}

pub fn check_bytes(bytes: &[u8]) -> Result<BTreeMap<String, Entry>, String> {
    if bytes.is_empty() {
        return Err("empty file (not a safetensors file)".into());
    }
    if bytes.len() < 8 {
        return Err(format!("truncated: {} bytes, shorter than the 8-byte header length", bytes.len()));
    }
    let header_len = u64::from_le_bytes(bytes[..8].try_into().expect("8 bytes"));
    let data_start = 8u64.checked_add(header_len).filter(|&end| end <= bytes.len() as u64).ok_or_else(|| {
        format!("truncated or not safetensors: header length {header_len} exceeds the file ({} bytes)", bytes.len())
    })?;
    let header: serde_json::Value = serde_json::from_slice(&bytes[8..data_start as usize])
        .map_err(|e| format!("corrupted header (not JSON): {e}"))?;
    let map = header.as_object().ok_or("corrupted header: not a JSON object")?;
    let data_len = bytes.len() as u64 - data_start;
    let mut out = BTreeMap::new();
    for (name, entry) in map {
        if name == "__metadata__" {
            continue;
        }
        out.insert(name.clone(), check_entry(name, entry, data_len)?);
    }
    Ok(out)
}

fn check_entry(name: &str, entry: &serde_json::Value, data_len: u64) -> Result<Entry, String> {
    let bad = |what: &str| format!("tensor '{name}': {what}");
    let dtype = entry.get("dtype").and_then(|d| d.as_str()).ok_or_else(|| bad("no dtype"))?;
    let size = dtype_size(dtype).ok_or_else(|| bad(&format!("unknown dtype {dtype}")))?;
    let shape: Vec<i64> = entry
        .get("shape")
        .and_then(|s| s.as_array())
        .ok_or_else(|| bad("no shape"))?
        .iter()
        .map(|d| d.as_i64().filter(|&d| d >= 0))
        .collect::<Option<_>>()
        .ok_or_else(|| bad("shape is not a list of sizes"))?;
    let offsets: Vec<u64> = entry
        .get("data_offsets")
        .and_then(|o| o.as_array())
        .map(|o| o.iter().filter_map(|v| v.as_u64()).collect())
        .unwrap_or_default();
    let [begin, end] = offsets[..] else { return Err(bad("no data_offsets")) };
    let numel =
        shape.iter().try_fold(1u64, |acc, &d| acc.checked_mul(d as u64)).ok_or_else(|| bad("shape overflows"))?;
    if end < begin || end - begin != numel * size {
        return Err(bad(&format!("data_offsets {begin}..{end} do not fit shape {shape:?} of {dtype}")));
    }
    if end > data_len {
        return Err(bad(&format!("data ends at byte {end} but the file holds {data_len} (truncated)")));
    }
    Ok(Entry { dtype: dtype.to_string(), shape })
}

/// Reads a file only as far as needed to list its entries (for `--init-from` checks).
pub fn entries(path: &Path) -> anyhow::Result<BTreeMap<String, Entry>> {
    check_file(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file_with(header: &str, data: usize) -> Vec<u8> {
        let mut v = (header.len() as u64).to_le_bytes().to_vec();
        v.extend_from_slice(header.as_bytes());
        v.extend(std::iter::repeat_n(0u8, data));
        v
    }

    #[test]
    fn accepts_a_well_formed_file() {
        let h = r#"{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}}"#;
        let e = check_bytes(&file_with(h, 8)).unwrap();
        assert_eq!(e["a"].shape, vec![2]);
    }

    #[test]
    fn rejects_damage_naming_the_key() {
        let h = r#"{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}}"#;
        assert!(check_bytes(&file_with(h, 4)).unwrap_err().contains("'a'"));
        assert!(check_bytes(&[]).unwrap_err().contains("empty"));
        assert!(check_bytes(&[1, 2, 3]).unwrap_err().contains("truncated"));
        assert!(check_bytes(&file_with("{not json", 0)).unwrap_err().contains("JSON"));
        let bad = r#"{"b":{"dtype":"F32","shape":[3],"data_offsets":[0,8]}}"#;
        assert!(check_bytes(&file_with(bad, 8)).unwrap_err().contains("'b'"));
        let mut huge = file_with(h, 8);
        huge[..8].copy_from_slice(&u64::MAX.to_le_bytes());
        assert!(check_bytes(&huge).unwrap_err().contains("exceeds"));
    }
}
