//! The run directory and its checkpoints (docs/ARCHITECTURE.md shows the layout):
//!
//! ```text
//! runs/<name>/config.yaml, metrics.jsonl, checkpoints/{step-000500/, LATEST, BEST}
//! ```
//! A checkpoint is written into `step-NNNNNN.tmp/`, every file and the directory fsynced,
//! then renamed into place; `LATEST` and `BEST` are replaced by rename. A reader therefore
//! never sees a half-written checkpoint, and a crash at any instant leaves the previous one.
pub mod pth;
pub mod safetensors_check;

use crate::user_error;
use anyhow::Context;
use serde::{Deserialize, Serialize};
use std::fs::{self, File};
use std::io::Write;
use std::path::{Path, PathBuf};
use tch::Tensor;

pub const MODEL_FILE: &str = "model.safetensors";
pub const TRAIN_STATE_FILE: &str = "train_state.safetensors";
pub const STATE_FILE: &str = "state.json";
pub const CONFIG_FILE: &str = "config.yaml";
pub const LATEST: &str = "LATEST";
pub const BEST: &str = "BEST";
pub const FORMAT_VERSION: u32 = 1;

/// Everything about a checkpoint that is not a tensor.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainState {
    pub format: u32,
    /// Optimizer updates done (the global step of the next update).
    pub step: u64,
    /// The epoch the next step belongs to, and the next step's position in it.
    pub epoch: u64,
    pub position: u64,
    pub best: Option<BestMetric>,
    /// Hash of the config keys that must not change on resume (model, tasks, data).
    pub config_fingerprint: String,
    pub mtl_version: String,
    /// All randomness is derived from (seed, purpose, step/epoch/index): no generator state
    /// needs saving. Recorded for readers of the file.
    pub rng: String,
    /// Processes that trained together: the global batch was `data.batch_size` times this, and
    /// `step`/`position` count global batches (1 in checkpoints from before distribution).
    #[serde(default = "one")]
    pub world_size: u64,
    /// Tasks with their own data: where each data group's next batch comes from. A function of
    /// `step` and the group's batches per pass; recorded so a resume can check that the data
    /// still has that many batches. Empty (and not written) when all tasks share the data.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub data: Vec<DataPosition>,
}

fn one() -> u64 {
    1
}

/// A data group's place in its own passes over its training split.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DataPosition {
    /// The tasks that read it.
    pub tasks: Vec<String>,
    pub pass: u64,
    pub position: u64,
    pub batches_per_pass: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BestMetric {
    pub metric: String,
    pub value: f64,
    pub step: u64,
}

/// What a checkpoint holds, ready to write.
pub struct Snapshot<'a> {
    pub state: &'a TrainState,
    /// Model variables by PyTorch state_dict name.
    pub model: Vec<(String, Tensor)>,
    /// Optimizer buffers, balancer state, loss accumulators.
    pub train_tensors: Vec<(String, Tensor)>,
    pub config_yaml: &'a str,
}

/// The run directory.
#[derive(Debug, Clone)]
pub struct RunDir {
    pub root: PathBuf,
}

impl RunDir {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
    }

    pub fn checkpoints(&self) -> PathBuf {
        self.root.join("checkpoints")
    }

    pub fn metrics(&self) -> PathBuf {
        self.root.join("metrics.jsonl")
    }

    pub fn config(&self) -> PathBuf {
        self.root.join(CONFIG_FILE)
    }

    /// Takes the run directory for this process: an advisory lock (`flock`) on the directory
    /// itself, so taking it writes nothing. A second process is refused with the holder's PID;
    /// the lock dies with its process, so a crashed run's directory is free again at once.
    pub fn lock(&self) -> anyhow::Result<RunLock> {
        RunLock::take(&self.root)
    }

    /// Creates the directories (nothing is overwritten).
    pub fn create(&self) -> anyhow::Result<()> {
        fs::create_dir_all(self.checkpoints())
            .map_err(|e| user_error!("{}: cannot create run directory: {e}", self.root.display()))
    }

    pub fn checkpoint_name(step: u64) -> String {
        format!("step-{step:06}")
    }

    /// Writes a checkpoint atomically and points `LATEST` (and `BEST` when `is_best`) at it.
    /// Returns its directory.
    pub fn save(&self, snap: &Snapshot, is_best: bool) -> anyhow::Result<PathBuf> {
        let dir = self.checkpoints();
        remove_stale_temporaries(&dir);
        let name = Self::checkpoint_name(snap.state.step);
        let final_dir = dir.join(&name);
        // The same step always holds the same state, so an existing one can stay as it is.
        if !final_dir.exists() {
            let tmp = dir.join(format!("{name}.tmp"));
            write_checkpoint_dir(&tmp, snap).map_err(|e| {
                let _ = fs::remove_dir_all(&tmp);
                user_error!("{}: cannot write checkpoint: {e:#}", tmp.display())
            })?;
            fs::rename(&tmp, &final_dir)
                .map_err(|e| user_error!("{}: cannot publish checkpoint: {e}", final_dir.display()))?;
            sync_dir(&dir)?;
        }
        write_pointer(&dir, LATEST, &name)?;
        if is_best {
            write_pointer(&dir, BEST, &name)?;
        }
        Ok(final_dir)
    }

    /// The checkpoint a pointer file (`LATEST`/`BEST`) names, if any.
    pub fn pointed(&self, pointer: &str) -> anyhow::Result<Option<PathBuf>> {
        let file = self.checkpoints().join(pointer);
        match fs::read_to_string(&file) {
            Ok(name) => {
                let name = name.trim();
                if name.is_empty() || name.contains('/') || name.contains("..") {
                    crate::user_bail!("{}: does not name a checkpoint ({name:?})", file.display());
                }
                Ok(Some(self.checkpoints().join(name)))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(user_error!("{}: cannot read: {e}", file.display())),
        }
    }

    /// The best value of the monitored metric so far, as the newest checkpoint (LATEST)
    /// recorded it; `None` without a readable one.
    pub fn best(&self) -> Option<BestMetric> {
        let dir = self.pointed(LATEST).ok()??;
        let text = crate::files::read_to_string(&dir.join(STATE_FILE), 1 << 20).ok()?;
        serde_json::from_str::<TrainState>(&text).ok()?.best
    }

    /// Complete checkpoints, oldest first.
    pub fn list(&self) -> Vec<(u64, PathBuf)> {
        let mut out: Vec<(u64, PathBuf)> = fs::read_dir(self.checkpoints())
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|e| {
                let name = e.file_name().into_string().ok()?;
                let step = name.strip_prefix("step-")?.parse().ok()?;
                Some((step, e.path()))
            })
            .collect();
        out.sort();
        out
    }

    /// Deletes all but the `keep_last` newest checkpoints, never the ones LATEST or BEST name.
    pub fn prune(&self, keep_last: usize) -> anyhow::Result<()> {
        let keep: Vec<PathBuf> = [LATEST, BEST].iter().filter_map(|p| self.pointed(p).ok().flatten()).collect();
        let all = self.list();
        let excess = all.len().saturating_sub(keep_last);
        for (_, path) in all.into_iter().take(excess) {
            if !keep.contains(&path) {
                fs::remove_dir_all(&path).with_context(|| format!("removing old checkpoint {}", path.display()))?;
            }
        }
        Ok(())
    }
}

/// An exclusive hold on a run directory; released when dropped (or when the process ends).
#[derive(Debug)]
pub struct RunLock {
    _dir: File,
}

impl RunLock {
    #[cfg(unix)]
    fn take(dir: &Path) -> anyhow::Result<Self> {
        use std::os::fd::AsRawFd;
        let file = File::open(dir).map_err(|e| user_error!("{}: cannot open run directory: {e}", dir.display()))?;
        // SAFETY: flock on a descriptor this function owns; no memory is involved.
        if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
            let err = std::io::Error::last_os_error();
            if err.raw_os_error() == Some(libc::EWOULDBLOCK) {
                let holder = lock_holder(dir).map(|pid| format!("process {pid}")).unwrap_or("another process".into());
                crate::user_bail!(
                    "{}: run directory is in use by {holder} (one mtl-train per run directory); wait for it or \
                     choose another --run-dir",
                    dir.display()
                );
            }
            crate::user_bail!("{}: cannot lock the run directory: {err}", dir.display());
        }
        Ok(Self { _dir: file })
    }

    #[cfg(not(unix))]
    fn take(dir: &Path) -> anyhow::Result<Self> {
        Ok(Self { _dir: File::open(dir)? })
    }
}

/// The PID holding a `flock` on `dir`, from /proc/locks (Linux); None where it cannot be told.
#[cfg(unix)]
fn lock_holder(dir: &Path) -> Option<u32> {
    use std::os::unix::fs::MetadataExt;
    let meta = fs::metadata(dir).ok()?;
    let dev = meta.dev();
    // /proc/locks names a file as MAJOR:MINOR:INODE, the device numbers in hex.
    let id = format!("{:02x}:{:02x}:{}", libc::major(dev), libc::minor(dev), meta.ino());
    let text = fs::read_to_string("/proc/locks").ok()?;
    text.lines().find_map(|line| {
        let f: Vec<&str> = line.split_whitespace().collect();
        (f.get(1) == Some(&"FLOCK") && f.get(5) == Some(&id.as_str())).then(|| f.get(4)?.parse().ok()).flatten()
    })
}

fn write_checkpoint_dir(tmp: &Path, snap: &Snapshot) -> anyhow::Result<()> {
    if tmp.exists() {
        fs::remove_dir_all(tmp)?;
    }
    fs::create_dir_all(tmp)?;
    write_tensors(&tmp.join(MODEL_FILE), &snap.model)?;
    crash_test_pause();
    write_tensors(&tmp.join(TRAIN_STATE_FILE), &snap.train_tensors)?;
    crash_test_pause();
    write_synced(&tmp.join(STATE_FILE), serde_json::to_string_pretty(snap.state)?.as_bytes())?;
    crash_test_pause();
    write_synced(&tmp.join(CONFIG_FILE), snap.config_yaml.as_bytes())?;
    sync_dir(tmp)
}

/// Safetensors wants contiguous CPU tensors; views into the flat parameter buffer are copied.
fn write_tensors(path: &Path, tensors: &[(String, Tensor)]) -> anyhow::Result<()> {
    let host: Vec<(String, Tensor)> =
        tensors.iter().map(|(n, t)| (n.clone(), t.detach().to_device(tch::Device::Cpu).contiguous())).collect();
    Tensor::write_safetensors(&host, path).with_context(|| format!("writing {}", path.display()))?;
    File::open(path)?.sync_all()?;
    Ok(())
}

/// Milliseconds to pause between the files of a checkpoint write; 0 in normal use.
static WRITE_PAUSE_MS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// Fault injection for the crash test (tests/crash.rs): stretches every checkpoint write by
/// pausing between its files, so that kills at random instants land inside writes. No command
/// of the binary calls it; only a test harness can.
#[doc(hidden)]
pub fn set_write_pause_for_tests(pause: std::time::Duration) {
    WRITE_PAUSE_MS.store(pause.as_millis() as u64, std::sync::atomic::Ordering::Relaxed);
}

fn crash_test_pause() {
    let ms = WRITE_PAUSE_MS.load(std::sync::atomic::Ordering::Relaxed);
    if ms > 0 {
        std::thread::sleep(std::time::Duration::from_millis(ms));
    }
}

fn write_synced(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    let mut f = File::create(path).with_context(|| format!("creating {}", path.display()))?;
    f.write_all(bytes)?;
    f.sync_all()?;
    Ok(())
}

fn sync_dir(dir: &Path) -> anyhow::Result<()> {
    File::open(dir).and_then(|d| d.sync_all()).with_context(|| format!("syncing {}", dir.display()))
}

/// Writes `path` through a synced temporary file and a rename: a reader sees the old contents
/// or the new, never a part.
pub fn write_atomically(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    let tmp = path.with_extension("tmp");
    write_synced(&tmp, bytes).map_err(|e| user_error!("{}: cannot write: {e:#}", tmp.display()))?;
    fs::rename(&tmp, path).map_err(|e| user_error!("{}: cannot write: {e}", path.display()))?;
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        sync_dir(dir)?;
    }
    Ok(())
}

/// Replaces `dir/pointer` by rename, so readers see the old or the new name, never a mix.
fn write_pointer(dir: &Path, pointer: &str, name: &str) -> anyhow::Result<()> {
    let tmp = dir.join(format!("{pointer}.tmp"));
    write_synced(&tmp, format!("{name}\n").as_bytes())
        .map_err(|e| user_error!("{}: cannot write: {e:#}", tmp.display()))?;
    fs::rename(&tmp, dir.join(pointer))
        .map_err(|e| user_error!("{}: cannot replace: {e}", dir.join(pointer).display()))?;
    sync_dir(dir)
}

/// A crash mid-write leaves `*.tmp` behind; they are never read, only cleared.
fn remove_stale_temporaries(dir: &Path) {
    for entry in fs::read_dir(dir).into_iter().flatten().flatten() {
        let path = entry.path();
        if path.extension().is_some_and(|e| e == "tmp") {
            let _ = if path.is_dir() { fs::remove_dir_all(&path) } else { fs::remove_file(&path) };
        }
    }
}

/// A checkpoint read back from disk.
pub struct Loaded {
    pub dir: PathBuf,
    pub state: TrainState,
    pub model: Vec<(String, Tensor)>,
    pub train_tensors: Vec<(String, Tensor)>,
    pub config_yaml: String,
}

/// Reads a checkpoint directory. Missing, truncated or foreign files are user errors naming
/// the file.
pub fn load(dir: &Path) -> anyhow::Result<Loaded> {
    if !dir.is_dir() {
        crate::user_bail!("{}: no such checkpoint directory", dir.display());
    }
    let state_path = dir.join(STATE_FILE);
    let text =
        fs::read_to_string(&state_path).map_err(|e| user_error!("{}: cannot read: {e}", state_path.display()))?;
    let state: TrainState = serde_json::from_str(&text)
        .map_err(|e| user_error!("{}: not a checkpoint state file: {e}", state_path.display()))?;
    if state.format != FORMAT_VERSION {
        crate::user_bail!(
            "{}: checkpoint format {} is not supported (expected {FORMAT_VERSION})",
            state_path.display(),
            state.format
        );
    }
    let config_path = dir.join(CONFIG_FILE);
    let config_yaml =
        fs::read_to_string(&config_path).map_err(|e| user_error!("{}: cannot read: {e}", config_path.display()))?;
    Ok(Loaded {
        dir: dir.to_path_buf(),
        state,
        model: read_tensors(&dir.join(MODEL_FILE))?,
        train_tensors: read_tensors(&dir.join(TRAIN_STATE_FILE))?,
        config_yaml,
    })
}

/// Reads a safetensors file; a damaged one is a user error naming it. libtorch's reader can
/// abort on some malformed headers, so the header is checked in Rust first.
pub fn read_tensors(path: &Path) -> anyhow::Result<Vec<(String, Tensor)>> {
    safetensors_check::check_file(path)?;
    Tensor::read_safetensors(path).map_err(|e| user_error!("{}: not a valid safetensors file: {e}", path.display()))
}
