//! `data.download: true` against a local HTTP server standing in for the dataset host: the first
//! run downloads, verifies and trains; a wrong checksum, a lost connection, a server that does
//! not resume and no server at all each end as the one-line errors and the clean disk the README
//! promises. The server (127.0.0.1 only, a fixed plan of replies, a deadline) serves a small
//! CIFAR-10 archive in the published layout, written with the dataset's own writer.
mod common;
use common::*;
use mtl::data::fetch::{self, Checksum, RemoteFile, Source};
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};
use tempfile::tempdir;

// --- The stand-in host ---------------------------------------------------------------------

/// How the server answers one connection.
#[derive(Clone, Copy, Debug)]
enum Reply {
    /// The whole file (200), or from the requested offset (206) when the request has a Range.
    Ranged,
    /// The whole file (200), whatever the request asks.
    Whole,
    /// Like `Ranged`, but the connection is closed after this many bytes of the body.
    CutAfter(usize),
    /// This status with an empty body.
    Status(u16),
}

struct Server {
    port: u16,
    /// The head (request line and headers) of every request served, in order.
    requests: Arc<Mutex<Vec<String>>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Server {
    /// Serves `body` as `/<any path>` on 127.0.0.1, one connection per entry of `plan`, then
    /// closes (later connections are refused); gives up after 60 s.
    fn start(body: Vec<u8>, plan: Vec<Reply>) -> Server {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let port = listener.local_addr().unwrap().port();
        let requests = Arc::new(Mutex::new(Vec::new()));
        let seen = requests.clone();
        let thread = std::thread::spawn(move || {
            let deadline = Instant::now() + Duration::from_secs(60);
            for reply in plan {
                let stream = loop {
                    match listener.accept() {
                        Ok((s, _)) => break s,
                        Err(_) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(5)),
                        Err(_) => return,
                    }
                };
                let head = answer(stream, &body, reply);
                seen.lock().unwrap().push(head);
            }
        });
        Server { port, requests, thread: Some(thread) }
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Waits for the plan to be served (or the deadline) and returns the request heads.
    fn finish(mut self) -> Vec<String> {
        self.thread.take().unwrap().join().unwrap();
        self.requests.lock().unwrap().clone()
    }

    fn served(&self) -> usize {
        self.requests.lock().unwrap().len()
    }
}

fn answer(mut stream: TcpStream, body: &[u8], reply: Reply) -> String {
    stream.set_nonblocking(false).unwrap();
    stream.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") && stream.read(&mut byte).is_ok_and(|n| n == 1) {
        head.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&head).into_owned();
    let from = range_start(&head).filter(|_| !matches!(reply, Reply::Whole));
    let (status, start) = match (reply, from) {
        (Reply::Status(code), _) => {
            let _ = write!(stream, "HTTP/1.1 {code} Nope\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
            return head;
        }
        (_, Some(start)) if start >= body.len() => {
            let _ =
                write!(stream, "HTTP/1.1 416 Range Not Satisfiable\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
            return head;
        }
        (_, Some(start)) => (206, start),
        (_, None) => (200, 0),
    };
    let rest = &body[start..];
    let mut text = format!("HTTP/1.1 {status} OK\r\nContent-Length: {}\r\nConnection: close\r\n", rest.len());
    if status == 206 {
        text += &format!("Content-Range: bytes {start}-{}/{}\r\n", body.len() - 1, body.len());
    }
    text += "\r\n";
    let _ = stream.write_all(text.as_bytes());
    let sent = match reply {
        Reply::CutAfter(n) => &rest[..n.min(rest.len())],
        _ => rest,
    };
    let _ = stream.write_all(sent);
    let _ = stream.flush();
    head
}

/// The N of a `Range: bytes=N-` header.
fn range_start(head: &str) -> Option<usize> {
    head.lines()
        .find_map(|l| l.to_ascii_lowercase().strip_prefix("range: bytes=").map(str::to_string))
        .and_then(|r| r.trim_end_matches('-').parse().ok())
}

/// Every test starts here: the downloads made in this process go to the local server directly,
/// whatever mirror or proxy the environment names. (Once, before any test builds an HTTP client.)
fn hermetic() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        for name in NETWORK_ENV {
            std::env::remove_var(name);
        }
    });
}

/// A port nothing listens on.
fn closed_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// The archive's URL on a host that refuses connections.
fn dead_url() -> String {
    format!("http://127.0.0.1:{}/cifar-10-binary.tar.gz", closed_port())
}

// --- A small CIFAR-10 in the published layout ----------------------------------------------

/// `cifar-10-binary.tar.gz` as published (a top directory `cifar-10-batches-bin/` with the six
/// batch files), 20 records per file; the same bytes every time.
fn cifar_archive() -> &'static [u8] {
    static ARCHIVE: OnceLock<Vec<u8>> = OnceLock::new();
    ARCHIVE.get_or_init(|| {
        let dir = tempdir().unwrap();
        mtl::data::cifar10::write_fake_cifar_dir(dir.path(), 20).unwrap();
        let gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        let mut tar = tar::Builder::new(gz);
        let mut names: Vec<_> = std::fs::read_dir(dir.path()).unwrap().flatten().map(|e| e.file_name()).collect();
        names.sort();
        for name in names {
            let data = std::fs::read(dir.path().join(&name)).unwrap();
            let mut header = tar::Header::new_gnu();
            header.set_size(data.len() as u64);
            header.set_mode(0o644);
            header.set_mtime(0);
            header.set_cksum();
            let path = Path::new("cifar-10-batches-bin").join(&name);
            tar.append_data(&mut header, path, data.as_slice()).unwrap();
        }
        tar.into_inner().unwrap().finish().unwrap()
    })
}

fn md5_hex(bytes: &[u8]) -> String {
    use md5::{Digest, Md5};
    Md5::digest(bytes).iter().map(|b| format!("{b:02x}")).collect()
}

const HOLDS: &str =
    "data_batch_1.bin,data_batch_2.bin,data_batch_3.bin,data_batch_4.bin,data_batch_5.bin,test_batch.bin";

/// The CIFAR source with the small archive's checksum, fetched from `urls`.
fn cifar_source(urls: Vec<String>, checksum: Option<Checksum>) -> Source {
    Source {
        dataset: "cifar10_seg".into(),
        root: "data/cifar-10-batches-bin".into(),
        holds: HOLDS.split(',').map(str::to_string).collect(),
        files: vec![RemoteFile {
            name: "cifar-10-binary.tar.gz".into(),
            bytes: Some(cifar_archive().len() as u64),
            checksum: checksum.or_else(|| Some(Checksum::Md5(md5_hex(cifar_archive())))),
            urls,
        }],
    }
}

fn archive_url(server: &Server) -> String {
    format!("{}/cifar-10-binary.tar.gz", server.url())
}

/// Every entry under `dir`, relative, sorted (empty when `dir` does not exist).
fn listing(dir: &Path) -> Vec<String> {
    fn walk(base: &Path, dir: &Path, out: &mut Vec<String>) {
        for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
            out.push(e.path().strip_prefix(base).unwrap().display().to_string());
            if e.path().is_dir() {
                walk(base, &e.path(), out);
            }
        }
    }
    let mut out = Vec::new();
    walk(dir, dir, &mut out);
    out.sort();
    out
}

fn assert_installed(root: &Path) {
    let mut files: Vec<String> = listing(root);
    files.sort();
    let mut expected: Vec<String> = HOLDS.split(',').map(str::to_string).collect();
    expected.sort();
    assert_eq!(files, expected, "the dataset directory holds exactly the six batch files");
    let parent = listing(root.parent().unwrap());
    assert!(
        parent.iter().all(|p| p.starts_with("cifar-10-batches-bin")),
        "no archive, .part or scratch directory left beside the dataset: {parent:?}"
    );
}

fn user_error_of(result: anyhow::Result<()>) -> String {
    let err = result.unwrap_err();
    assert!(mtl::error::is_user_error(&err), "not a user error: {err:#}");
    let text = format!("{err:#}");
    assert!(!text.contains('\n'), "one line: {text}");
    text
}

// --- The download itself (the library) -----------------------------------------------------

/// Where the tests put the small CIFAR: `<tmp>/data/cifar-10-batches-bin`.
fn cifar_root(tmp: &Path) -> std::path::PathBuf {
    tmp.join("data/cifar-10-batches-bin")
}

/// One fetch of the small CIFAR into [`cifar_root`] from a server answering with `plan`.
struct Fetched {
    result: anyhow::Result<()>,
    /// The heads of the requests the server saw.
    heads: Vec<String>,
    url: String,
}

fn fetch_cifar(tmp: &Path, plan: Vec<Reply>, checksum: Option<Checksum>) -> Fetched {
    hermetic();
    let server = Server::start(cifar_archive().to_vec(), plan);
    let url = archive_url(&server);
    let result = fetch::fetch(&cifar_source(vec![url.clone()], checksum), &cifar_root(tmp), None);
    Fetched { result, heads: server.finish(), url }
}

#[test]
fn a_download_is_verified_and_unpacked_into_place() {
    let tmp = tempdir().unwrap();
    let f = fetch_cifar(tmp.path(), vec![Reply::Ranged], None);
    f.result.unwrap();
    assert!(f.heads[0].starts_with("GET /cifar-10-binary.tar.gz HTTP/1.1"), "{:?}", f.heads);
    assert!(range_start(&f.heads[0]).is_none(), "a fresh download asks for the whole file");
    assert_installed(&cifar_root(tmp.path()));
    let loaded = std::fs::read(cifar_root(tmp.path()).join("test_batch.bin")).unwrap();
    assert_eq!(loaded.len(), 20 * mtl::data::cifar10::RECORD_BYTES);
}

#[test]
fn a_wrong_checksum_is_refused_and_nothing_is_left() {
    let tmp = tempdir().unwrap();
    let wrong = "0".repeat(32);
    let f = fetch_cifar(tmp.path(), vec![Reply::Ranged], Some(Checksum::Md5(wrong.clone())));
    let msg = user_error_of(f.result);
    let got = md5_hex(cifar_archive());
    assert!(msg.contains(&f.url) && msg.contains(&format!("md5 {got}, expected {wrong}")), "{msg}");
    assert_eq!(listing(tmp.path()), Vec::<String>::new(), "data/ was made by the fetch and goes with it");
}

#[test]
fn a_lost_connection_resumes_with_a_byte_range() {
    let tmp = tempdir().unwrap();
    let cut = cifar_archive().len() / 3;
    let f = fetch_cifar(tmp.path(), vec![Reply::CutAfter(cut), Reply::Ranged], None);
    f.result.unwrap();
    assert_eq!(f.heads.len(), 2);
    assert_eq!(range_start(&f.heads[1]), Some(cut), "the second request asks for the rest: {}", f.heads[1]);
    assert_installed(&cifar_root(tmp.path()));
}

#[test]
fn a_server_that_ignores_ranges_sends_the_file_again() {
    let tmp = tempdir().unwrap();
    let f = fetch_cifar(tmp.path(), vec![Reply::CutAfter(1000), Reply::Whole], None);
    f.result.unwrap();
    assert_eq!(range_start(&f.heads[1]), Some(1000));
    assert_installed(&cifar_root(tmp.path()));
}

#[test]
fn a_download_given_up_keeps_its_part_for_the_next_run_to_resume() {
    let tmp = tempdir().unwrap();
    let root = cifar_root(tmp.path());
    let part = tmp.path().join("data/cifar-10-binary.tar.gz.part");
    // Every attempt of the first run breaks off, each a little further on.
    let f = fetch_cifar(tmp.path(), vec![Reply::CutAfter(700); 5], None);
    let msg = user_error_of(f.result);
    let starts: Vec<usize> = f.heads.iter().map(|h| range_start(h).unwrap_or(0)).collect();
    assert_eq!(starts, [0, 700, 1400, 2100, 2800]);
    assert!(
        msg.contains(&f.url) && msg.contains(&part.display().to_string()) && msg.contains("run again to resume"),
        "{msg}"
    );
    assert_eq!(std::fs::metadata(&part).unwrap().len(), 3500);
    assert!(!root.exists() && !tmp.path().join("data/cifar-10-binary.tar.gz").exists(), "nothing looks complete");

    let f = fetch_cifar(tmp.path(), vec![Reply::Ranged], None);
    f.result.unwrap();
    assert_eq!(range_start(&f.heads[0]), Some(3500), "the next run resumes where the last stopped");
    assert_installed(&root);
}

#[test]
fn no_server_is_one_line_naming_the_url_and_the_manual_command_and_leaves_nothing() {
    hermetic();
    let tmp = tempdir().unwrap();
    let root = cifar_root(tmp.path());
    let url = dead_url();
    let msg = user_error_of(fetch::fetch(&cifar_source(vec![url.clone()], None), &root, None));
    assert!(msg.contains(&url), "{msg}");
    assert!(msg.contains(&format!("scripts/fetch.sh cifar10_seg {}", root.display())), "{msg}");
    assert!(msg.contains("data.mirror") && msg.contains(fetch::MIRROR_ENV), "{msg}");
    assert_eq!(listing(tmp.path()), Vec::<String>::new());
}

#[test]
fn the_next_url_is_tried_and_a_mirror_replaces_them_all() {
    hermetic();
    let tmp = tempdir().unwrap();
    let dead = dead_url();
    let server = Server::start(cifar_archive().to_vec(), vec![Reply::Status(404), Reply::Ranged]);
    let missing = format!("{}/gone/cifar-10-binary.tar.gz", server.url());
    let source = cifar_source(vec![dead.clone(), missing, archive_url(&server)], None);
    let root = tmp.path().join("a/cifar-10-batches-bin");
    fetch::fetch(&source, &root, None).unwrap();
    assert_eq!(server.finish().len(), 2);
    assert_installed(&root);

    // A mirror stands in for every URL of the list: <mirror>/<file name>.
    let server = Server::start(cifar_archive().to_vec(), vec![Reply::Ranged]);
    let root = tmp.path().join("b/cifar-10-batches-bin");
    let mirror = format!("{}/site/", server.url());
    fetch::fetch(&cifar_source(vec![dead], None), &root, Some(&mirror)).unwrap();
    assert!(server.finish()[0].starts_with("GET /site/cifar-10-binary.tar.gz "));
    assert_installed(&root);
}

#[test]
fn a_file_put_there_by_hand_needs_no_network() {
    hermetic();
    let tmp = tempdir().unwrap();
    std::fs::create_dir_all(tmp.path().join("data")).unwrap();
    std::fs::write(tmp.path().join("data/cifar-10-binary.tar.gz"), cifar_archive()).unwrap();
    fetch::fetch(&cifar_source(vec![dead_url()], None), &cifar_root(tmp.path()), None).unwrap();
    assert_installed(&cifar_root(tmp.path()));
}

#[test]
fn an_archive_without_the_dataset_is_refused_and_deleted() {
    hermetic();
    let tmp = tempdir().unwrap();
    let root = cifar_root(tmp.path());
    let server = Server::start(cifar_archive().to_vec(), vec![Reply::Ranged]);
    let mut source = cifar_source(vec![archive_url(&server)], None);
    source.holds.push("batches.meta.txt".into());
    let msg = user_error_of(fetch::fetch(&source, &root, None));
    assert!(msg.contains("batches.meta.txt"), "{msg}");
    assert_eq!(listing(tmp.path()), Vec::<String>::new());
}

#[test]
fn a_zip_is_unpacked_and_its_dataset_found_below_the_top() {
    hermetic();
    // NYUv2's archive: a zip whose dataset sits in a directory of its own.
    let mut zip = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    let opts = zip::write::FileOptions::default();
    for split in ["train", "val"] {
        zip.start_file(format!("nyuv2/{split}/image/0.npy"), opts).unwrap();
        zip.write_all(b"\x93NUMPY").unwrap();
    }
    let bytes = zip.finish().unwrap().into_inner();
    let server = Server::start(bytes, vec![Reply::Ranged]);
    let source = Source {
        dataset: "nyuv2".into(),
        root: "data/nyuv2".into(),
        holds: vec!["train/image".into(), "val/image".into()],
        files: vec![RemoteFile {
            name: "nyuv2.zip".into(),
            bytes: None,
            checksum: None,
            urls: vec![format!("{}/nyuv2.zip", server.url())],
        }],
    };
    let tmp = tempdir().unwrap();
    let root = tmp.path().join("data/mine");
    fetch::fetch(&source, &root, None).unwrap();
    assert_eq!(listing(&root), ["train", "train/image", "train/image/0.npy", "val", "val/image", "val/image/0.npy"]);
    assert_eq!(listing(tmp.path().join("data").as_path()).len(), 7, "only the dataset is left");
}

// --- Through training and the command line -------------------------------------------------

/// A cifar10_seg config small enough to train two steps in seconds; `data.root` is relative to
/// the config file.
fn tiny_cifar_config(extra_data: &str) -> String {
    tiny_config("c")
        .replace("dataset: shapes", &format!("dataset: cifar10_seg\n  root: data/cifar-10-batches-bin\n{extra_data}"))
        .replace("train_size: 96", "train_size: 48")
        .replace("val_size: 40", "val_size: 20")
        .replace("image_size: 16", "image_size: 32")
        .replace("target: kind, classes: 10", "target: class, classes: 10")
        .replace("classes: 11", "classes: 10")
        .replace("train: {epochs: 2,", "train: {max_steps: 2, epochs: 1,")
}

/// Makes the library read sources that pin the small archive instead of the shipped ones.
fn pin_the_small_archive() {
    let sources = format!(
        "dataset cifar10_seg data/cifar-10-batches-bin {HOLDS}\n\
         file cifar10_seg cifar-10-binary.tar.gz {} md5:{} https://www.cs.toronto.edu/~kriz/cifar-10-binary.tar.gz\n",
        cifar_archive().len(),
        md5_hex(cifar_archive())
    );
    fetch::manifest::set_sources_for_tests(&sources);
}

#[test]
fn the_first_run_downloads_verifies_and_trains() {
    hermetic();
    pin_the_small_archive();
    let tmp = tempdir().unwrap();
    let server = Server::start(cifar_archive().to_vec(), vec![Reply::Ranged]);
    let config = tiny_cifar_config(&format!("  download: true\n  mirror: {}", server.url()));
    let path = write(tmp.path(), "c.yaml", &config);
    let train = |run_dir: &str| -> anyhow::Result<mtl::train::Summary> {
        let resolved = mtl::setup::load(Some(&path), &[])?;
        let opts = mtl::train::TrainOptions { run_dir: tmp.path().join(run_dir), ..Default::default() };
        mtl::train::Trainer::new(resolved, tch::Device::Cpu, &opts)?.run()
    };
    let summary = train("runs/first").unwrap();
    assert_eq!(summary.steps, 2);
    assert_eq!(server.finish().len(), 1);
    assert_installed(&tmp.path().join("data/cifar-10-batches-bin"));
    assert!(tmp.path().join("runs/first/metrics.jsonl").is_file());
    // The second run finds the dataset in place: no server is needed.
    assert_eq!(train("runs/second").unwrap().steps, 2);
}

#[test]
fn the_binary_without_a_server_exits_2_with_one_line_and_leaves_no_run() {
    hermetic();
    let tmp = tempdir().unwrap();
    std::fs::create_dir(tmp.path().join("configs")).unwrap();
    let shipped = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/configs/cifar_seg.yaml")).unwrap();
    write(&tmp.path().join("configs"), "cifar_seg.yaml", &shipped);
    let mirror = format!("http://127.0.0.1:{}", closed_port());
    let run = run_with_env(tmp.path(), &["configs/cifar_seg.yaml"], &[(fetch::MIRROR_ENV, &mirror)]);
    let root = tmp.path().canonicalize().unwrap().join("data/cifar-10-batches-bin");
    run.assert_user_error(&[
        &format!("{mirror}/cifar-10-binary.tar.gz"),
        &format!("scripts/fetch.sh cifar10_seg {}", root.display()),
    ]);
    assert_eq!(listing(tmp.path()), ["configs", "configs/cifar_seg.yaml"], "no run directory, no data");
    assert!(!run.stdout().contains("run dir"), "no banner before the data is there:\n{}", run.stdout());
}

#[test]
fn the_binary_refuses_an_archive_that_is_not_the_published_one() {
    hermetic();
    // The shipped sources pin the real archive's MD5: the small one does not match it.
    let tmp = tempdir().unwrap();
    let server = Server::start(cifar_archive().to_vec(), vec![Reply::Ranged]);
    write(tmp.path(), "c.yaml", &tiny_cifar_config(&format!("  download: true\n  mirror: {}/", server.url())));
    let run = run_in(tmp.path(), &["c.yaml"]);
    run.assert_user_error(&[
        &format!("{}/cifar-10-binary.tar.gz", server.url()),
        &format!("md5 {}, expected c32a1d4ab5d03f1284b67883e8d87530", md5_hex(cifar_archive())),
    ]);
    assert_eq!(server.finish().len(), 1);
    assert_eq!(listing(tmp.path()), ["c.yaml"], "no run directory, no data, no .part");
}

#[test]
fn download_false_never_touches_the_network() {
    hermetic();
    let tmp = tempdir().unwrap();
    let server = Server::start(cifar_archive().to_vec(), vec![Reply::Ranged]);
    write(tmp.path(), "c.yaml", &tiny_cifar_config(&format!("  mirror: {}", server.url())));
    let mirror = server.url();
    run_with_env(tmp.path(), &["c.yaml"], &[(fetch::MIRROR_ENV, &mirror)]).assert_user_error(&[
        "data/cifar-10-batches-bin",
        "data.download: true",
        "scripts/fetch.sh cifar10_seg",
    ]);
    assert_eq!(server.served(), 0);
    assert_eq!(listing(tmp.path()), ["c.yaml"]);
}

#[test]
fn mirrors_must_be_http_urls() {
    hermetic();
    let tmp = tempdir().unwrap();
    write(tmp.path(), "c.yaml", &tiny_cifar_config("  download: true\n  mirror: /srv/datasets"));
    run_in(tmp.path(), &["c.yaml"]).assert_user_error(&["data.mirror", "/srv/datasets", "http://"]);
    write(tmp.path(), "c.yaml", &tiny_cifar_config("  download: true"));
    run_with_env(tmp.path(), &["c.yaml"], &[(fetch::MIRROR_ENV, "ftp://site")])
        .assert_user_error(&[fetch::MIRROR_ENV, "ftp://site"]);
    assert_eq!(listing(tmp.path()), ["c.yaml"]);
}

/// Two ranks of one machine, a dataset absent from `data.root`: the first rank downloads it
/// while the other waits, then both load it. The server answers one connection only, so a
/// second download would fail the run.
#[test]
fn ranks_of_one_machine_download_once() {
    hermetic();
    let tmp = tempdir().unwrap();
    let server = Server::start(cifar_archive().to_vec(), vec![Reply::Ranged]);
    let config = tiny_cifar_config(&format!("  download: true\n  mirror: {}", server.url()));
    write(tmp.path(), "c.yaml", &config);
    let port = closed_port().to_string();
    let ranks: Vec<_> = (0..2)
        .map(|rank| {
            std::process::Command::new(std::env::current_exe().unwrap())
                .args(["rank_of_a_downloading_run", "--exact", "--ignored", "--test-threads=1"])
                .env("MTL_DOWNLOAD_TEST_DIR", tmp.path())
                .env("RANK", rank.to_string())
                .env("WORLD_SIZE", "2")
                .env("MASTER_ADDR", "127.0.0.1")
                .env("MASTER_PORT", &port)
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    for (rank, child) in ranks.into_iter().enumerate() {
        let out = child.wait_with_output().unwrap();
        let text = String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "rank {rank}:\n{text}");
    }
    assert_eq!(server.finish().len(), 1, "one download for the machine");
    assert_installed(&tmp.path().join("data/cifar-10-batches-bin"));
}

#[test]
#[ignore = "run as a rank by ranks_of_one_machine_download_once"]
fn rank_of_a_downloading_run() {
    hermetic();
    let dir = std::path::PathBuf::from(std::env::var("MTL_DOWNLOAD_TEST_DIR").unwrap());
    pin_the_small_archive();
    let launch = mtl::dist::Launch::from_env().unwrap().unwrap();
    let group = mtl::dist::init(&launch, tch::Device::Cpu, Duration::from_secs(30)).unwrap();
    let resolved = mtl::setup::load(Some(&dir.join("c.yaml")), &[]).unwrap();
    let opts = mtl::train::TrainOptions { run_dir: dir.join("runs/two"), ranks: Some(group), ..Default::default() };
    let summary = mtl::train::Trainer::new(resolved, tch::Device::Cpu, &opts).unwrap().run().unwrap();
    // 48 images, a global batch of 2 × 16: one step per epoch.
    assert_eq!(summary.steps, 1);
}

// --- Pretrained weights (`model.backbone.pretrained: imagenet`) ----------------------------

/// A stand-in weights file and its torchvision-style entry (name `<stem>-<8 hex>.pth`, the
/// hex digits starting its SHA-256), fetched from `urls`.
fn weights_file(urls: Vec<String>) -> (Vec<u8>, RemoteFile) {
    use sha2::{Digest, Sha256};
    let body: Vec<u8> = (0..200_000u32).map(|i| (i * 7 % 251) as u8).collect();
    let hex: String = Sha256::digest(&body).iter().map(|b| format!("{b:02x}")).collect();
    let name = format!("resnet18-{}.pth", &hex[..8]);
    let file = RemoteFile { name, bytes: None, checksum: Some(Checksum::Sha256Prefix(hex[..8].into())), urls };
    (body, file)
}

#[test]
fn weights_are_downloaded_resumed_and_checked_into_the_cache_then_reused() {
    hermetic();
    let tmp = tempdir().unwrap();
    let cache = tmp.path().join("cache");
    let (body, _) = weights_file(vec![]);
    let cut = body.len() / 3;
    let server = Server::start(body.clone(), vec![Reply::CutAfter(cut), Reply::Ranged]);
    let (_, file) = weights_file(vec![format!("{}/w.pth", server.url())]);
    let path = mtl::train::pretrained::download(&file, &cache, None).unwrap();
    let heads = server.finish();
    assert_eq!(range_start(&heads[1]), Some(cut), "resumed with a byte range: {heads:?}");
    assert_eq!(std::fs::read(&path).unwrap(), body);
    assert_eq!(listing(&cache), vec![file.name.clone()], "only the checked file, no .part");
    // The cached copy needs no server (none is listening now).
    let (_, offline) = weights_file(vec![dead_url()]);
    assert_eq!(mtl::train::pretrained::download(&offline, &cache, None).unwrap(), path);
}

#[test]
fn weights_from_a_mirror_with_a_wrong_checksum_are_deleted() {
    hermetic();
    let tmp = tempdir().unwrap();
    let cache = tmp.path().join("cache");
    let server = Server::start(b"not the published weights".to_vec(), vec![Reply::Ranged]);
    let (_, file) = weights_file(vec![dead_url()]);
    let err = mtl::train::pretrained::download(&file, &cache, Some(&server.url())).unwrap_err();
    let heads = server.finish();
    assert!(heads[0].starts_with(&format!("GET /{} ", file.name)), "the mirror serves the file by name: {heads:?}");
    let msg = format!("{err:#}");
    assert!(mtl::error::is_user_error(&err) && !msg.contains('\n'), "{msg}");
    assert!(msg.contains("model.backbone.pretrained") && msg.contains("deleted"), "{msg}");
    assert_eq!(listing(tmp.path()), Vec::<String>::new(), "the cache was made by the download and goes with it");
}
