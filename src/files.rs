//! Reading the user's files. Only regular files are read: a FIFO or a device given as a config,
//! an image or a tensor file would block or never end. Small text files (configs, lists) are
//! also bounded in size. Every failure is a user error naming the file.
use crate::{user_bail, user_error};
use std::path::Path;

/// Configs and other small text files are at most this large.
pub const TEXT_LIMIT: u64 = 1 << 20;

/// The size of `path` after checking it is a regular file (symbolic links followed).
pub fn regular_len(path: &Path) -> anyhow::Result<u64> {
    let meta = std::fs::metadata(path).map_err(|e| user_error!("{}: cannot read: {e}", path.display()))?;
    if !meta.is_file() {
        let what = if meta.is_dir() { "a directory" } else { "not a regular file (a FIFO, socket or device)" };
        user_bail!("{}: is {what}", path.display());
    }
    Ok(meta.len())
}

/// Refuses a path that exists but is no regular file; a missing one passes, for the caller's
/// own "not found" message.
pub fn reject_special(path: &Path) -> anyhow::Result<()> {
    match std::fs::metadata(path) {
        Ok(_) => regular_len(path).map(|_| ()),
        Err(_) => Ok(()),
    }
}

/// Whether `path` is a regular file (symbolic links followed); for filtering directory listings.
pub fn is_regular(path: &Path) -> bool {
    std::fs::metadata(path).is_ok_and(|m| m.is_file())
}

/// The bytes of a regular file of at most `limit` bytes.
pub fn read(path: &Path, limit: u64) -> anyhow::Result<Vec<u8>> {
    let len = regular_len(path)?;
    if len > limit {
        user_bail!("{}: {len} bytes, more than the {limit} a file of this kind may have", path.display());
    }
    std::fs::read(path).map_err(|e| user_error!("{}: cannot read: {e}", path.display()))
}

/// The text of a regular UTF-8 file of at most `limit` bytes.
pub fn read_to_string(path: &Path, limit: u64) -> anyhow::Result<String> {
    String::from_utf8(read(path, limit)?).map_err(|_| user_error!("{}: is not UTF-8 text", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::one_line_user_error;

    #[test]
    fn only_regular_files_of_bounded_size_are_read() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("a.yaml");
        std::fs::write(&f, "x: 1\n").unwrap();
        assert_eq!(read_to_string(&f, 100).unwrap(), "x: 1\n");
        assert!(one_line_user_error(read(&f, 2).unwrap_err()).contains("more than the 2"));
        assert!(one_line_user_error(read(dir.path(), 100).unwrap_err()).contains("a directory"));
        assert!(one_line_user_error(read(&dir.path().join("none"), 100).unwrap_err()).contains("none"));
        let fifo = dir.path().join("p.yaml");
        let c = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
        // SAFETY: mkfifo with a valid NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
        assert!(one_line_user_error(read(&fifo, 100).unwrap_err()).contains("FIFO"));
        assert!(!is_regular(&fifo) && is_regular(&f));
        std::fs::write(dir.path().join("bin"), [0xff, 0xfe]).unwrap();
        assert!(one_line_user_error(read_to_string(&dir.path().join("bin"), 100).unwrap_err()).contains("UTF-8"));
    }
}
