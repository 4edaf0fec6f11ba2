//! An event file: TFRecords of serialized `Event`s, as TensorFlow and PyTorch write them.
//!
//! Each record is `length (u64 LE) · masked CRC-32C of the length · data · masked CRC-32C of
//! the data`, written with one `write` call on an unbuffered file, so a crash leaves whole
//! records and at most one torn record at the end, which TensorBoard's readers stop at.
use super::proto::{Event, What};
use prost::Message;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

/// What TensorBoard looks for in a file name (`tensorboard.summary.io` and the data server
/// both test for this substring).
const MARKER: &str = "tfevents";
/// The version the first event of a file declares; TensorBoard applies its restart rule
/// (`SessionLog.START` purges later steps) to files of version 2 and above.
pub const FILE_VERSION: &str = "brain.Event:2";

/// CRC-32C as TFRecord stores it: rotated and offset, so that a CRC of data that itself
/// holds CRCs stays well distributed (`tensorflow/core/lib/hash/crc32c.h`, `Mask`).
pub fn masked_crc(bytes: &[u8]) -> u32 {
    let crc = crc32c::crc32c(bytes);
    crc.rotate_right(15).wrapping_add(0xa282_ead8)
}

/// One TFRecord around `data`.
pub fn frame(data: &[u8]) -> Vec<u8> {
    let len = (data.len() as u64).to_le_bytes();
    let mut out = Vec::with_capacity(data.len() + 16);
    out.extend_from_slice(&len);
    out.extend_from_slice(&masked_crc(&len).to_le_bytes());
    out.extend_from_slice(data);
    out.extend_from_slice(&masked_crc(data).to_le_bytes());
    out
}

/// Whether `path` names an event file.
pub fn is_event_file(path: &Path) -> bool {
    path.is_file() && path.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.contains(MARKER))
}

/// The event files directly in `dir`, in the order TensorBoard reads them (by name).
pub fn event_files(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> =
        std::fs::read_dir(dir).into_iter().flatten().flatten().map(|e| e.path()).filter(|p| is_event_file(p)).collect();
    files.sort();
    files
}

/// Seconds since the Unix epoch, as `Event.wall_time` counts them.
pub fn now() -> f64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs_f64()).unwrap_or(0.0)
}

/// An event file being written.
pub struct EventFile {
    file: File,
    path: PathBuf,
}

impl EventFile {
    /// Creates `dir/events.out.tfevents.<seconds>.<host>.<pid>.mtl` and writes its first event
    /// (the file version). Readers take a run's files in name order, so the seconds are made
    /// larger than those of every event file already in `dir`: a resumed run's file comes
    /// after the files it continues even within the same second.
    pub fn create(dir: &Path) -> std::io::Result<Self> {
        let mut seconds = now() as u64;
        for existing in event_files(dir) {
            if let Some(s) = file_seconds(&existing) {
                seconds = seconds.max(s + 1);
            }
        }
        let name = format!("events.out.{MARKER}.{seconds:010}.{}.{}.mtl", hostname(), std::process::id());
        let path = dir.join(name);
        let file = OpenOptions::new().create_new(true).append(true).open(&path)?;
        let mut f = Self { file, path };
        f.write(0, What::FileVersion(FILE_VERSION.into()))?;
        Ok(f)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Appends one event at `step`, now.
    pub fn write(&mut self, step: u64, what: What) -> std::io::Result<()> {
        let event = Event { wall_time: now(), step: step as i64, what: Some(what) };
        self.file.write_all(&frame(&event.encode_to_vec()))?;
        self.file.flush()
    }

    /// Forces what was written to the disk (called at checkpoints and at the end).
    pub fn sync(&self) -> std::io::Result<()> {
        self.file.sync_data()
    }
}

/// The seconds field of an event file's name (`events.out.tfevents.<seconds>.…`).
fn file_seconds(path: &Path) -> Option<u64> {
    let name = path.file_name()?.to_str()?;
    let rest = &name[name.find(MARKER)? + MARKER.len()..];
    rest.strip_prefix('.')?.split('.').next()?.parse().ok()
}

fn hostname() -> String {
    let mut buf = [0u8; 256];
    // SAFETY: gethostname writes at most buf.len() bytes into the buffer it is given.
    let ok = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) } == 0;
    let name = if ok {
        String::from_utf8_lossy(&buf[..buf.iter().position(|&b| b == 0).unwrap_or(0)]).into_owned()
    } else {
        String::new()
    };
    // The name is a file-name component: keep it to characters that are safe there.
    let clean: String = name.chars().filter(|c| c.is_ascii_alphanumeric() || *c == '-' || *c == '_').collect();
    if clean.is_empty() {
        "localhost".into()
    } else {
        clean
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn masked_crc_matches_tensorflow() {
        // CRC-32C check value (RFC 3720) and TensorFlow's mask of it.
        assert_eq!(crc32c::crc32c(b"123456789"), 0xe306_9283);
        assert_eq!(masked_crc(b"123456789"), 0xe306_9283u32.rotate_right(15).wrapping_add(0xa282_ead8));
        // An empty record's length field, as written by tf.io.TFRecordWriter.
        let f = frame(b"");
        assert_eq!(f.len(), 16);
        assert_eq!(&f[..8], &[0u8; 8]);
    }

    #[test]
    fn a_later_file_sorts_after_earlier_ones() {
        let dir = tempfile::tempdir().unwrap();
        let future = dir.path().join("events.out.tfevents.9999999990.host.1.mtl");
        std::fs::write(&future, b"").unwrap();
        let f = EventFile::create(dir.path()).unwrap();
        assert_eq!(file_seconds(f.path()), Some(9_999_999_991));
        assert_eq!(event_files(dir.path()).last().map(PathBuf::as_path), Some(f.path()));
    }
}
