//! `data.download: true`: a public dataset absent from `data.root` is fetched there before it is
//! loaded, from the URLs and with the checksums of `src/data/fetch/datasets.txt` ([`manifest`]).
//!
//! Nothing half-done ever looks complete: each file is downloaded to `<file>.part` next to the
//! root, checked against its checksum, and only then renamed; archives are unpacked into a
//! scratch directory beside the root, and the dataset moves into place in one rename. A failure
//! removes what this fetch created, except a `.part` file with bytes in it, which the next run
//! resumes (with an HTTP byte range, where the server allows it). `data.download: false` never
//! reaches this module.
pub mod http;
pub mod manifest;
pub mod unpack;

pub use manifest::{source, Checksum, RemoteFile, Source};

use crate::config::{is_http_url, DataConfig};
use crate::user_error;
use http::Failure;
use std::path::{Path, PathBuf};

/// Names a mirror for every dataset (a base URL: a file is fetched from `<mirror>/<file>`),
/// for air-gapped sites; `data.mirror` takes precedence.
pub const MIRROR_ENV: &str = "MTL_DATA_MIRROR";

/// Fetches the dataset `d` names into its root when `data.download` is on, the dataset is
/// downloadable and the root is absent (or an empty directory). The root is the resolved
/// `data.root`.
pub fn ensure(d: &DataConfig, root: &Path) -> anyhow::Result<()> {
    let Some(source) = source(&d.dataset).filter(|_| d.download) else { return Ok(()) };
    if !is_absent(root) {
        return Ok(());
    }
    let mirror = mirror(d.mirror.as_deref())?;
    fetch(source, root, mirror.as_deref())
}

/// `data.mirror`, else the environment's [`MIRROR_ENV`]; either must be an http(s) URL.
pub fn mirror(configured: Option<&str>) -> anyhow::Result<Option<String>> {
    if let Some(m) = configured {
        return Ok(Some(m.to_string()));
    }
    mirror_from_env(MIRROR_ENV)
}

/// The mirror the environment variable `var` names (unset or empty: none); it must be an
/// http(s) URL.
pub fn mirror_from_env(var: &str) -> anyhow::Result<Option<String>> {
    match std::env::var(var) {
        Ok(m) if m.trim().is_empty() => Ok(None),
        Ok(m) if is_http_url(&m) => Ok(Some(m)),
        Ok(m) => Err(user_error!("{var}: '{m}' must be an http:// or https:// URL")),
        Err(_) => Ok(None),
    }
}

/// Missing, or a directory with nothing in it (a mount point or a directory made in advance).
fn is_absent(root: &Path) -> bool {
    match std::fs::read_dir(root) {
        Ok(mut entries) => entries.next().is_none(),
        Err(_) => !root.exists(),
    }
}

/// Downloads every file of `source` next to `root`, checks it, unpacks it and moves the dataset
/// to `root`. Every failure is a user error (exit 2) naming the URL and the manual fetch.
pub fn fetch(source: &Source, root: &Path, mirror: Option<&str>) -> anyhow::Result<()> {
    let parent = root.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let created = create_dir_all(parent)?;
    let result = fetch_into(source, root, parent, mirror);
    if result.is_err() {
        // Leave the disk as it was: directories this fetch made go again if nothing is in them
        // (a kept `.part` file keeps its directory).
        for dir in created.iter().rev() {
            let _ = std::fs::remove_dir(dir);
        }
    }
    result
}

fn fetch_into(source: &Source, root: &Path, parent: &Path, mirror: Option<&str>) -> anyhow::Result<()> {
    let agent = http::agent();
    let mut files = Vec::with_capacity(source.files.len());
    for file in &source.files {
        files.push(obtain(&agent, source, file, root, parent, mirror)?);
    }
    install(source, &files, root, parent)?;
    remove_all(&files);
    tracing::info!("data.download: {} ready in {}", source.dataset, root.display());
    Ok(())
}

/// `parent/<file>`, checked: a copy already there with the right checksum is used as it is
/// (a file put there by hand needs no network), anything else is downloaded.
fn obtain(
    agent: &ureq::Agent,
    source: &Source,
    file: &RemoteFile,
    root: &Path,
    parent: &Path,
    mirror: Option<&str>,
) -> anyhow::Result<PathBuf> {
    match download_checked(agent, DATA_KEY, file, parent, mirror)? {
        Ok(dest) => Ok(dest),
        Err(failures) => {
            let part = parent.join(format!("{}.part", file.name));
            Err(give_up(source, file, root, parent, &part, &failures))
        }
    }
}

/// The key data downloads report under.
const DATA_KEY: &str = "data.download";

/// Every URL that failed, with why.
pub type Failures = Vec<(String, Failure)>;

/// `dir/<file>`, checked: a copy already there with the right checksum is used as it is (a file
/// put there by hand needs no network); anything else is downloaded (from `<mirror>/<file>`
/// when a mirror is named, else from the file's URLs in order) into `<file>.part`, checked and
/// renamed into place, so `dir/<file>` is never half-written. `Ok(Err(failures))` when no URL
/// gave the file (a `.part` with bytes in it is kept for the next call to resume); a checksum
/// mismatch is a user error reported under `key`, the download deleted.
pub fn download_checked(
    agent: &ureq::Agent,
    key: &str,
    file: &RemoteFile,
    dir: &Path,
    mirror: Option<&str>,
) -> anyhow::Result<Result<PathBuf, Failures>> {
    let dest = dir.join(&file.name);
    if dest.is_file() && verify(file, &dest).is_ok() {
        tracing::info!("{key}: using {} (already there, checksum ok)", dest.display());
        return Ok(Ok(dest));
    }
    let part = dir.join(format!("{}.part", file.name));
    let urls: Vec<String> = match mirror {
        Some(m) => vec![format!("{}/{}", m.trim_end_matches('/'), file.name)],
        None => file.urls.clone(),
    };
    let size = file.bytes.map(|b| format!(" ({})", http::mb(b))).unwrap_or_default();
    let mut failures = Vec::new();
    for url in urls {
        tracing::info!("{key}: {url}{size} → {}", dir.display());
        match http::download(agent, &url, &part, file.bytes) {
            Ok(()) => {
                check(key, file, &url, &part)?;
                std::fs::rename(&part, &dest).map_err(|e| user_error!("{key}: {}: {e}", dest.display()))?;
                return Ok(Ok(dest));
            }
            Err(failure) => failures.push((url, failure)),
        }
    }
    Ok(Err(failures))
}

/// The one-line error after every URL failed: what was tried, why, and what to do by hand.
fn give_up(
    source: &Source,
    file: &RemoteFile,
    root: &Path,
    parent: &Path,
    part: &Path,
    failures: &[(String, Failure)],
) -> anyhow::Error {
    let tried: Vec<String> = failures.iter().map(|(url, f)| format!("{url} ({})", http::describe(f))).collect();
    let partial = failures.iter().any(|(_, f)| matches!(f, Failure::Interrupted { have, .. } if *have > 0));
    if partial && part.is_file() {
        user_error!(
            "data.download: could not finish {}: {}; the part received is kept as {}: run again to resume",
            file.name,
            tried.join(", "),
            part.display()
        )
    } else {
        user_error!(
            "data.download: could not download {}: {}; fetch it by hand with `scripts/fetch.sh {} {}` (or save the \
             file as {}), or name a mirror with data.mirror or {MIRROR_ENV}",
            file.name,
            tried.join(", "),
            source.dataset,
            root.display(),
            parent.join(&file.name).display()
        )
    }
}

/// A finished download against its checksum; a mismatch deletes it.
fn check(key: &str, file: &RemoteFile, url: &str, part: &Path) -> anyhow::Result<()> {
    match verify(file, part) {
        Ok(Some(sum)) => {
            tracing::info!("{key}: {} {} ok", file.name, sum);
            Ok(())
        }
        Ok(None) => {
            let sha = unpack::sha256(part).map_err(|e| user_error!("{}: {e}", part.display()))?;
            tracing::warn!(
                "data.download: {} has no published checksum; its sha256 is {sha} (pin it in src/data/fetch/datasets.txt)",
                file.name
            );
            Ok(())
        }
        Err(got) => {
            let _ = std::fs::remove_file(part);
            let want = file.checksum.as_ref().expect("a mismatch needs a checksum");
            Err(user_error!(
                "{key}: {url}: {} {got}, expected {} (not the published {}; deleted)",
                want.algorithm(),
                want.hex(),
                file.name
            ))
        }
    }
}

/// `Ok(Some(algorithm))` when the file matches its checksum, `Ok(None)` when it has none,
/// `Err(digest)` when it does not match (or cannot be read).
fn verify(file: &RemoteFile, path: &Path) -> Result<Option<&'static str>, String> {
    let Some(want) = &file.checksum else { return Ok(None) };
    match unpack::digest(path, want) {
        Ok(got) if got == want.hex() => Ok(Some(want.algorithm())),
        Ok(got) => Err(got),
        Err(e) => Err(format!("unreadable ({e})")),
    }
}

/// Unpacks every file into a scratch directory beside `root`, finds the dataset in it and
/// renames it to `root`. The scratch directory goes whatever happens; a file that does not
/// unpack, or files that turn out not to hold the dataset, are deleted, so the next run
/// downloads them again.
fn install(source: &Source, files: &[PathBuf], root: &Path, parent: &Path) -> anyhow::Result<()> {
    let name = root.file_name().map_or_else(|| source.dataset.clone(), |n| n.to_string_lossy().to_string());
    let prefix = format!(".{name}.unpack-");
    remove_stale(parent, &prefix);
    let scratch = Scratch::new(parent.join(format!("{prefix}{}", std::process::id())))?;
    for (path, file) in files.iter().zip(&source.files) {
        unpack::unpack(path, file.unpack(), &scratch.0).map_err(|e| {
            let _ = std::fs::remove_file(path);
            user_error!("data.download: {} does not unpack ({e:#}); deleted, run again", path.display())
        })?;
    }
    let Some(found) = unpack::locate(&scratch.0, &source.holds) else {
        remove_all(files);
        return Err(user_error!(
            "data.download: the files of {} do not hold {} (deleted)",
            source.dataset,
            source.holds.join(", ")
        ));
    };
    if root.is_dir() {
        // An empty directory (else nothing would have been fetched): rename does not replace it.
        let _ = std::fs::remove_dir(root);
    }
    std::fs::rename(&found, root)
        .map_err(|e| user_error!("data.root: cannot move the dataset to {}: {e}", root.display()))?;
    Ok(())
}

/// Scratch directories a killed fetch left behind.
fn remove_stale(parent: &Path, prefix: &str) {
    for entry in std::fs::read_dir(parent).into_iter().flatten().flatten() {
        if entry.file_name().to_string_lossy().starts_with(prefix) {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
}

fn remove_all(files: &[PathBuf]) {
    for path in files {
        let _ = std::fs::remove_file(path);
    }
}

/// A directory removed with everything in it when dropped.
struct Scratch(PathBuf);

impl Scratch {
    fn new(dir: PathBuf) -> anyhow::Result<Scratch> {
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir(&dir).map_err(|e| user_error!("data.root: cannot create {}: {e}", dir.display()))?;
        Ok(Scratch(dir))
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Creates `dir` and its missing ancestors; returns the ones it created, outermost first.
pub fn create_dir_all(dir: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let missing: Vec<PathBuf> = dir.ancestors().take_while(|a| !a.exists()).map(Path::to_path_buf).collect();
    std::fs::create_dir_all(dir).map_err(|e| user_error!("data.root: cannot create {}: {e}", dir.display()))?;
    Ok(missing.into_iter().rev().collect())
}
