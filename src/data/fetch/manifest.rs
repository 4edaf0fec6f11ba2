//! `src/data/fetch/datasets.txt`: where each public dataset is downloaded from, with its checksums and
//! the layout of a complete copy. The same file drives `scripts/fetch.sh`, so the binary and the
//! scripts cannot disagree about a URL or a checksum. Its format is described in its header.
use crate::config::is_http_url;
use std::sync::OnceLock;

/// The sources file as shipped, compiled in.
pub const SHIPPED: &str = include_str!("datasets.txt");

/// How a public dataset is fetched.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Source {
    /// The `data.dataset` name.
    pub dataset: String,
    /// The default `data.root`, relative to the working directory.
    pub root: String,
    /// Paths (relative to the root) that every complete copy holds: they locate the dataset
    /// inside an unpacked archive.
    pub holds: Vec<String>,
    pub files: Vec<RemoteFile>,
}

/// One published file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RemoteFile {
    pub name: String,
    /// Its size as published, when known (shown before the download; the checksum decides).
    pub bytes: Option<u64>,
    /// `None` where the publisher gives none.
    pub checksum: Option<Checksum>,
    /// Tried in order.
    pub urls: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Checksum {
    Md5(String),
    Sha256(String),
    /// The first hex digits of the SHA-256 (torchvision's weight files carry 8 in their names).
    Sha256Prefix(String),
}

impl Checksum {
    pub fn algorithm(&self) -> &'static str {
        match self {
            Checksum::Md5(_) => "md5",
            Checksum::Sha256(_) | Checksum::Sha256Prefix(_) => "sha256",
        }
    }

    pub fn hex(&self) -> &str {
        match self {
            Checksum::Md5(h) | Checksum::Sha256(h) | Checksum::Sha256Prefix(h) => h,
        }
    }
}

/// How a downloaded file becomes part of the dataset, by its name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unpack {
    TarGz,
    Zip,
    /// Kept as it is (MNIST's gzipped idx files are read gzipped).
    AsIs,
}

impl RemoteFile {
    pub fn unpack(&self) -> Unpack {
        let name = self.name.to_ascii_lowercase();
        if name.ends_with(".tar.gz") || name.ends_with(".tgz") {
            Unpack::TarGz
        } else if name.ends_with(".zip") {
            Unpack::Zip
        } else {
            Unpack::AsIs
        }
    }
}

static SOURCES: OnceLock<Vec<Source>> = OnceLock::new();

/// Every dataset source: the shipped file (unless a test replaced it first).
pub fn sources() -> &'static [Source] {
    SOURCES.get_or_init(|| parse(SHIPPED).unwrap_or_else(|e| panic!("src/data/fetch/datasets.txt: {e}")))
}

/// The source of `dataset`, if it is downloadable.
pub fn source(dataset: &str) -> Option<&'static Source> {
    sources().iter().find(|s| s.dataset == dataset)
}

/// Replaces the shipped sources for the rest of the process, so tests can serve small archives
/// with checksums of their own. Must come before anything reads the sources; calling it again
/// with the same text is allowed (tests of one binary share the process).
#[doc(hidden)]
pub fn set_sources_for_tests(text: &str) {
    let parsed = parse(text).unwrap_or_else(|e| panic!("test sources: {e}"));
    let current = SOURCES.get_or_init(|| parsed.clone());
    assert_eq!(current, &parsed, "the dataset sources were read (or set differently) before this test set them");
}

/// Parses a sources file; errors name the line.
pub fn parse(text: &str) -> Result<Vec<Source>, String> {
    let mut sources: Vec<Source> = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let at = |e: String| format!("line {}: {e}", i + 1);
        let fields: Vec<&str> = line.split_whitespace().collect();
        match fields.as_slice() {
            [] => {}
            [first, ..] if first.starts_with('#') => {}
            ["dataset", name, root, holds] => {
                if sources.iter().any(|s| s.dataset == *name) {
                    return Err(at(format!("dataset {name} is listed twice")));
                }
                let holds: Vec<String> = holds.split(',').map(str::to_string).collect();
                if holds.iter().any(|h| h.is_empty() || !is_relative_inside(h)) || !is_relative_inside(root) {
                    return Err(at("the root and held paths must be relative paths without '..'".into()));
                }
                sources.push(Source { dataset: name.to_string(), root: root.to_string(), holds, files: Vec::new() });
            }
            ["dataset", ..] => return Err(at("expected: dataset <name> <root> <held paths>".into())),
            ["file", dataset, name, bytes, checksum, urls @ ..] if !urls.is_empty() => {
                let file = RemoteFile {
                    name: name.to_string(),
                    bytes: match *bytes {
                        "-" => None,
                        b => Some(b.parse().map_err(|_| at(format!("'{b}' is not a number of bytes")))?),
                    },
                    checksum: parse_checksum(checksum).map_err(at)?,
                    urls: urls.iter().map(|u| u.to_string()).collect(),
                };
                if name.contains('/') || name.starts_with('.') {
                    return Err(at(format!("file name '{name}' must be a plain name")));
                }
                if let Some(u) = file.urls.iter().find(|u| !is_http_url(u)) {
                    return Err(at(format!("'{u}' is not an http(s) URL")));
                }
                if sources.iter().flat_map(|s| &s.files).any(|f| f.name == file.name) {
                    return Err(at(format!(
                        "file name '{name}' is used twice (a mirror holds every file side by side)"
                    )));
                }
                let source = sources
                    .iter_mut()
                    .find(|s| s.dataset == *dataset)
                    .ok_or_else(|| at(format!("dataset {dataset} has no `dataset` line before its files")))?;
                source.files.push(file);
            }
            ["file", ..] => return Err(at("expected: file <dataset> <name> <bytes> <checksum> <URL>...".into())),
            [other, ..] => return Err(at(format!("unknown line kind '{other}'"))),
        }
    }
    if let Some(s) = sources.iter().find(|s| s.files.is_empty()) {
        return Err(format!("dataset {} lists no files", s.dataset));
    }
    Ok(sources)
}

fn parse_checksum(text: &str) -> Result<Option<Checksum>, String> {
    let hex_of = |h: &str, len: usize| {
        (h.len() == len && h.bytes().all(|b| b.is_ascii_hexdigit())).then(|| h.to_ascii_lowercase())
    };
    match text.split_once(':') {
        None if text == "-" => Some(None),
        Some(("md5", h)) => hex_of(h, 32).map(|h| Some(Checksum::Md5(h))),
        Some(("sha256", h)) => hex_of(h, 64).map(|h| Some(Checksum::Sha256(h))),
        _ => None,
    }
    .ok_or_else(|| format!("'{text}' is not md5:<32 hex digits>, sha256:<64 hex digits> or -"))
}

fn is_relative_inside(path: &str) -> bool {
    let p = std::path::Path::new(path);
    p.is_relative() && p.components().all(|c| matches!(c, std::path::Component::Normal(_)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_shipped_file_lists_every_public_dataset_with_pinned_checksums() {
        let sources = parse(SHIPPED).unwrap();
        let names: Vec<&str> = sources.iter().map(|s| s.dataset.as_str()).collect();
        assert_eq!(names, ["cifar10_seg", "multimnist", "pet", "nyuv2", "census_income"]);
        for s in &sources {
            assert!(crate::data::dataset_named(&s.dataset).is_some(), "{} is not a registered dataset", s.dataset);
            assert!(s.root.starts_with("data/"), "{}", s.root);
        }
        let cifar = &sources[0].files[0];
        assert_eq!(cifar.name, "cifar-10-binary.tar.gz");
        assert_eq!(cifar.checksum, Some(Checksum::Md5("c32a1d4ab5d03f1284b67883e8d87530".into())));
        assert_eq!(cifar.urls, ["https://www.cs.toronto.edu/~kriz/cifar-10-binary.tar.gz"]);
        assert_eq!((cifar.bytes, cifar.unpack()), (Some(170052171), Unpack::TarGz));
        // Only NYUv2 and Census-Income come without a published checksum.
        let unpinned: Vec<&str> = sources
            .iter()
            .flat_map(|s| s.files.iter().filter(|f| f.checksum.is_none()).map(|_| s.dataset.as_str()))
            .collect();
        assert_eq!(unpinned, ["nyuv2", "census_income", "census_income"]);
        assert_eq!(sources[1].files.iter().map(|f| f.unpack()).collect::<Vec<_>>(), [Unpack::AsIs; 4]);
    }

    #[test]
    fn malformed_lines_name_the_line() {
        let dataset = "dataset d data/d a,b\n";
        let cases = [
            ("dataset d data/d\n", "line 1: expected: dataset"),
            ("dataset d ../d a\n", "line 1: the root and held paths"),
            ("file d f.tar.gz 1 - http://x/f\n", "line 1: dataset d has no `dataset` line"),
            (&format!("{dataset}file d f.tar.gz 1 md5:00 http://x/f\n"), "line 2: 'md5:00' is not md5"),
            (&format!("{dataset}file d f.tar.gz x - http://x/f\n"), "line 2: 'x' is not a number"),
            (&format!("{dataset}file d f.tar.gz 1 -\n"), "line 2: expected: file"),
            (&format!("{dataset}file d f.tar.gz 1 - ftp://x/f\n"), "line 2: 'ftp://x/f' is not an http(s) URL"),
            (&format!("{dataset}file d a/f 1 - http://x/f\n"), "line 2: file name 'a/f'"),
            (
                &format!("{dataset}file d f 1 - http://x/f\nfile d f 1 - http://y/f\n"),
                "line 3: file name 'f' is used twice",
            ),
            (&format!("{dataset}files d\n"), "line 2: unknown line kind 'files'"),
            (dataset, "dataset d lists no files"),
        ];
        for (text, expected) in cases {
            let err = parse(text).unwrap_err();
            assert!(err.starts_with(expected), "{text:?}: {err}");
        }
    }

    #[test]
    fn checksums_and_sizes_parse() {
        let text = format!(
            "# comment\n\ndataset d data/d x\nfile d a.zip - sha256:{} https://h/a.zip http://m/a.zip\nfile d b.bin 7 MD5:{} http://h/b\n",
            "AB".repeat(32),
            "0f".repeat(16)
        );
        let err = parse(&text).unwrap_err();
        assert!(err.contains("'MD5:"), "algorithm names are lower case: {err}");
        let s = &parse(&text.replace("MD5:", "md5:")).unwrap()[0];
        assert_eq!(s.files[0].checksum, Some(Checksum::Sha256("ab".repeat(32))));
        assert_eq!((s.files[0].bytes, s.files[0].unpack(), s.files[0].urls.len()), (None, Unpack::Zip, 2));
        assert_eq!((s.files[1].bytes, s.files[1].unpack()), (Some(7), Unpack::AsIs));
    }
}
