//! One file over HTTP(S) into `<file>.part`, resumed with a byte range after a lost connection
//! where the server allows it, with a progress bar (bytes, rate, ETA) on a terminal.
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::path::Path;
use std::time::Duration;

/// Attempts per URL; each one after the first resumes from what the last one received.
const ATTEMPTS: u32 = 5;
/// A server that accepts no connection within this is taken as unreachable.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(30);
/// A connection that delivers nothing for this long is taken as lost (and resumed).
const READ_TIMEOUT: Duration = Duration::from_secs(60);

/// Why a URL gave no complete file.
#[derive(Debug)]
pub enum Failure {
    /// Nothing was received from it (no connection, a name that does not resolve, an HTTP
    /// error status): the `.part` file, if any, is as it was.
    Unreachable(String),
    /// The transfer broke off, every attempt to resume included: the `.part` file holds what
    /// arrived, for the next run to resume.
    Interrupted { have: u64, total: Option<u64>, reason: String },
}

/// The HTTP client of every download: rustls, proxies from the environment (`HTTPS_PROXY`,
/// `NO_PROXY`), HTTP error statuses returned as responses so they can be told apart.
pub fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .timeout_connect(Some(CONNECT_TIMEOUT))
        .timeout_per_read(Some(READ_TIMEOUT))
        .http_status_as_error(false)
        .user_agent(concat!("mtl/", env!("CARGO_PKG_VERSION")))
        .build()
        .into()
}

/// Downloads `url` into `part` (appending to what an interrupted download left there when the
/// server accepts a byte range). `expected` is the size as published, used when the server
/// does not say: a body that ends short of it counts as interrupted.
pub fn download(agent: &ureq::Agent, url: &str, part: &Path, expected: Option<u64>) -> Result<(), Failure> {
    let bar = progress_bar(part);
    let mut last = None;
    for attempt in 0..ATTEMPTS {
        if attempt > 0 {
            std::thread::sleep(Duration::from_millis(250 * attempt as u64));
        }
        match transfer(agent, url, part, expected, &bar) {
            Ok(()) => {
                bar.finish_and_clear();
                return Ok(());
            }
            Err(Failure::Unreachable(reason)) => {
                bar.finish_and_clear();
                // A resume that the server refused outright is not a reason to give up on it.
                let have = file_len(part);
                return Err(match last {
                    Some(Failure::Interrupted { total, .. }) if have > 0 => {
                        Failure::Interrupted { have, total, reason }
                    }
                    _ => Failure::Unreachable(reason),
                });
            }
            Err(interrupted) => {
                tracing::warn!("data.download: {url}: {}; resuming", describe(&interrupted));
                last = Some(interrupted);
            }
        }
    }
    bar.finish_and_clear();
    Err(last.expect("at least one attempt"))
}

/// One request: resumes from the `.part` file's length, or starts it again when the server
/// sends the whole file.
fn transfer(
    agent: &ureq::Agent,
    url: &str,
    part: &Path,
    expected: Option<u64>,
    bar: &ProgressBar,
) -> Result<(), Failure> {
    let have = file_len(part);
    let mut request = agent.get(url);
    if have > 0 {
        request = request.header("Range", format!("bytes={have}-"));
    }
    let response = request.call().map_err(|e| Failure::Unreachable(e.to_string()))?;
    let status = response.status().as_u16();
    let header = |name: &str| response.headers().get(name).and_then(|v| v.to_str().ok()).map(str::to_string);
    let (start, total) = match status {
        206 => {
            let range = header("content-range").unwrap_or_default();
            match parse_content_range(&range) {
                Some((start, total)) if start == have => (start, total.or(expected)),
                _ => {
                    // Not the range asked for: throw the partial file away and start again.
                    remove(part);
                    return Err(Failure::Interrupted {
                        have: 0,
                        total: expected,
                        reason: format!("unusable Content-Range '{range}'"),
                    });
                }
            }
        }
        200 => {
            if have > 0 {
                tracing::info!("data.download: {url}: the server does not resume downloads; starting again");
            }
            (0, header("content-length").and_then(|l| l.parse().ok()).or(expected))
        }
        416 if have > 0 => {
            // The partial file is not a prefix of this one (it is at least as long).
            remove(part);
            return Err(Failure::Interrupted {
                have: 0,
                total: expected,
                reason: "the partial download does not fit".into(),
            });
        }
        _ => {
            let reason = response.status().canonical_reason().unwrap_or("");
            return Err(Failure::Unreachable(format!("HTTP {status} {reason}").trim_end().to_string()));
        }
    };
    let mut file = open_part(part, start).map_err(|e| Failure::Unreachable(format!("{}: {e}", part.display())))?;
    bar.set_length(total.unwrap_or(0));
    bar.set_position(start);
    let mut body = response.into_body().into_reader();
    let mut have = start;
    let mut buf = vec![0u8; 1 << 16];
    let cut = |have: u64, reason: String| Failure::Interrupted { have, total, reason };
    loop {
        let n = match body.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) => return Err(cut(have, e.to_string())),
        };
        file.write_all(&buf[..n]).map_err(|e| Failure::Unreachable(format!("{}: {e}", part.display())))?;
        have += n as u64;
        bar.set_position(have);
    }
    file.sync_all().map_err(|e| Failure::Unreachable(format!("{}: {e}", part.display())))?;
    match total {
        Some(total) if have < total => Err(cut(have, "the connection closed early".into())),
        _ => Ok(()),
    }
}

/// The `.part` file, truncated to `start` bytes (0: a fresh download).
fn open_part(part: &Path, start: u64) -> std::io::Result<File> {
    let file = OpenOptions::new().create(true).append(true).open(part)?;
    file.set_len(start)?;
    Ok(file)
}

/// `bytes START-END/TOTAL` (TOTAL may be `*`) → (START, TOTAL).
fn parse_content_range(value: &str) -> Option<(u64, Option<u64>)> {
    let (range, total) = value.strip_prefix("bytes ")?.split_once('/')?;
    let start = range.split_once('-')?.0.trim().parse().ok()?;
    Some((start, total.trim().parse().ok()))
}

pub fn describe(failure: &Failure) -> String {
    match failure {
        Failure::Unreachable(reason) => reason.clone(),
        Failure::Interrupted { have, total, reason } => {
            let of = total.map(|t| format!(" of {}", mb(t))).unwrap_or_default();
            format!("{reason} after {}{of}", mb(*have))
        }
    }
}

/// Bytes as megabytes (10⁶, as download sizes are quoted).
pub fn mb(bytes: u64) -> String {
    format!("{:.1} MB", bytes as f64 / 1e6)
}

fn file_len(path: &Path) -> u64 {
    std::fs::metadata(path).map_or(0, |m| m.len())
}

fn remove(path: &Path) {
    let _ = std::fs::remove_file(path);
}

/// Bytes, rate and ETA on a terminal; nothing otherwise (the log says when a download starts
/// and ends).
fn progress_bar(part: &Path) -> ProgressBar {
    let name = part.file_name().map(|n| n.to_string_lossy().trim_end_matches(".part").to_string()).unwrap_or_default();
    let bar = ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr());
    bar.set_style(
        ProgressStyle::with_template(
            "{msg} {decimal_bytes}/{decimal_total_bytes} {decimal_bytes_per_sec} ETA {eta} [{wide_bar}]",
        )
        .expect("a valid template")
        .progress_chars("=> "),
    );
    bar.set_message(name);
    bar
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_ranges_parse() {
        assert_eq!(parse_content_range("bytes 100-199/200"), Some((100, Some(200))));
        assert_eq!(parse_content_range("bytes 5-9/*"), Some((5, None)));
        assert_eq!(parse_content_range("items 5-9/10"), None);
        assert_eq!(parse_content_range("bytes */200"), None);
    }
}
