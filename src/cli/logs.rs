//! Log lines on stderr, held back until a command gets going: a command refused before it
//! starts prints its one error line and nothing else. With `RUST_LOG` set, everything is
//! written at once.
use std::io::Write;
use std::sync::Mutex;

/// Lines written while holding; `None` once released.
static HELD: Mutex<Option<Vec<u8>>> = Mutex::new(Some(Vec::new()));

/// Installs the subscriber: `RUST_LOG`'s filter, or `info` with the early lines held back
/// (`error` on the ranks other than 0 of a distributed run: they would repeat rank 0's lines,
/// warnings included, since the ranks agree on losses and steps).
pub fn init() {
    let explicit = std::env::var_os("RUST_LOG").is_some();
    if explicit {
        release();
    }
    let other_rank = std::env::var("RANK").is_ok_and(|r| r.trim() != "0");
    let default = if other_rank { "error" } else { "info" };
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default)),
        )
        .with_writer(|| Gate)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_target(false)
        .init();
}

/// Writes what was held and lets every later line through: the command is under way.
pub fn release() {
    let held = HELD.lock().map(|mut h| h.take()).unwrap_or(None);
    if let Some(bytes) = held {
        let _ = std::io::stderr().write_all(&bytes);
    }
}

struct Gate;

impl Write for Gate {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if let Ok(mut held) = HELD.lock() {
            if let Some(bytes) = held.as_mut() {
                bytes.extend_from_slice(buf);
                return Ok(buf.len());
            }
        }
        std::io::stderr().write(buf)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        std::io::stderr().flush()
    }
}
