//! A verified download becomes a dataset directory: checksums, unpacking into a scratch
//! directory, and finding the dataset inside what was unpacked.
use super::manifest::{Checksum, Unpack};
use md5::Md5;
use sha2::{Digest, Sha256};
use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};

/// The hex digest of `path` under `algorithm`'s hash.
pub fn digest(path: &Path, checksum: &Checksum) -> std::io::Result<String> {
    match checksum {
        Checksum::Md5(_) => hash_file::<Md5>(path),
        Checksum::Sha256(_) => hash_file::<Sha256>(path),
        Checksum::Sha256Prefix(p) => hash_file::<Sha256>(path).map(|h| h[..p.len().min(h.len())].to_string()),
    }
}

pub fn sha256(path: &Path) -> std::io::Result<String> {
    hash_file::<Sha256>(path)
}

fn hash_file<D: Digest>(path: &Path) -> std::io::Result<String> {
    let mut file = File::open(path)?;
    let mut hasher = D::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        match file.read(&mut buf)? {
            0 => break,
            n => hasher.update(&buf[..n]),
        }
    }
    Ok(hasher.finalize().iter().map(|b| format!("{b:02x}")).collect())
}

/// Unpacks `file` into `dir` (a `.tar.gz` or `.zip`), or links it there as it is. Archive
/// entries that would land outside `dir` are refused by both readers.
pub fn unpack(file: &Path, how: Unpack, dir: &Path) -> anyhow::Result<()> {
    match how {
        Unpack::TarGz => {
            let gz = flate2::read::GzDecoder::new(std::io::BufReader::new(File::open(file)?));
            let mut archive = tar::Archive::new(gz);
            archive.set_preserve_permissions(false);
            archive.unpack(dir)?;
        }
        Unpack::Zip => zip::ZipArchive::new(File::open(file)?)?.extract(dir)?,
        Unpack::AsIs => {
            let to = dir.join(file.file_name().expect("a downloaded file has a name"));
            if std::fs::hard_link(file, &to).is_err() {
                std::fs::copy(file, &to)?;
            }
        }
    }
    Ok(())
}

/// The directory under `top` (itself, or up to two levels down, in name order) that holds
/// every path of `holds`.
pub fn locate(top: &Path, holds: &[String]) -> Option<PathBuf> {
    let complete = |dir: &Path| holds.iter().all(|h| dir.join(h).exists());
    let mut level = vec![top.to_path_buf()];
    for _ in 0..3 {
        if let Some(found) = level.iter().find(|d| complete(d)) {
            return Some(found.clone());
        }
        level = level.iter().flat_map(|d| subdirectories(d)).collect();
    }
    None
}

fn subdirectories(dir: &Path) -> Vec<PathBuf> {
    let mut dirs: Vec<PathBuf> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
        .map(|e| e.path())
        .collect();
    dirs.sort();
    dirs
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digests_match_known_values() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("abc");
        std::fs::write(&path, b"abc").unwrap();
        // RFC 1321 and FIPS 180-2 test vectors.
        assert_eq!(digest(&path, &Checksum::Md5(String::new())).unwrap(), "900150983cd24fb0d6963f7d28e17f72");
        assert_eq!(sha256(&path).unwrap(), "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
    }

    #[test]
    fn the_dataset_is_found_at_the_top_or_below() {
        let dir = tempfile::tempdir().unwrap();
        let holds = vec!["train/image".to_string(), "val".to_string()];
        assert_eq!(locate(dir.path(), &holds), None);
        std::fs::create_dir_all(dir.path().join("a/nyuv2/train/image")).unwrap();
        assert_eq!(locate(dir.path(), &holds), None, "val/ is missing");
        std::fs::create_dir_all(dir.path().join("a/nyuv2/val")).unwrap();
        assert_eq!(locate(dir.path(), &holds), Some(dir.path().join("a/nyuv2")));
        std::fs::create_dir_all(dir.path().join("train/image")).unwrap();
        std::fs::create_dir_all(dir.path().join("val")).unwrap();
        assert_eq!(locate(dir.path(), &holds), Some(dir.path().to_path_buf()), "the shallowest copy wins");
    }
}
