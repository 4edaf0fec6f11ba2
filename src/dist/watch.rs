//! Noticing that a rank is gone, and saying which.
//!
//! Every rank runs a watcher thread with its own store connection: every [`BEAT`] it advances
//! its heartbeat counter and reads everyone's. A collective that fails (Gloo notices a closed
//! connection at once) or a rank whose heartbeat has not moved for the timeout (NCCL would
//! otherwise wait for ever) ends the process through [`fail`]: it waits briefly for the
//! heartbeats to show which rank stopped, prints one line naming it (only the lowest
//! surviving rank prints, so N ranks do not repeat it), and exits with code 1. The
//! checkpoints up to LATEST are untouched by any of this.
//!
//! A rank that fails on its own (a user error, divergence) posts its exit code and message
//! under [`FAILED`]; the others' watchers see it within a beat and exit quietly with the same
//! code, so a launcher reports one error, once.
use super::store::Store;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

/// How often a rank shows it is alive.
pub const BEAT: Duration = Duration::from_millis(500);
/// After a collective failed: a heartbeat silent this long names its rank as the one gone.
const SILENT_AFTER_FAILURE: Duration = Duration::from_secs(2);
/// After a collective failed: how long to wait for the heartbeats to tell who stopped.
const DIAGNOSE_FOR: Duration = Duration::from_secs(8);
/// The key a failing rank posts `rank \t exit code \t message` under.
pub const FAILED: &str = "failed";
/// Counts the ranks that have seen [`FAILED`] (the store's host waits for them before exiting).
pub const FAILED_SEEN: &str = "failed_seen";

pub fn heartbeat_key(rank: usize) -> String {
    format!("heartbeat/{rank}")
}

/// What the watcher knows, shared with [`fail`].
pub struct Shared {
    pub rank: usize,
    pub world: usize,
    /// Key prefix of this run (and torchrun attempt).
    pub prefix: String,
    /// `MASTER_ADDR:MASTER_PORT`, and whether rank 0 (not torchrun's agent) hosts the store.
    pub store_at: String,
    pub rank0_hosts_store: bool,
    pub timeout: Duration,
    /// `pid N on HOST` of every rank, for the message.
    pub places: Vec<String>,
    /// Set when the run is ending normally: the watcher stops, nothing more is a failure.
    pub finishing: AtomicBool,
    state: Mutex<State>,
}

struct State {
    counts: Vec<i64>,
    moved: Vec<Instant>,
    /// Since when the store has not answered.
    store_silent_since: Option<Instant>,
}

impl Shared {
    pub fn new(
        rank: usize,
        world: usize,
        prefix: String,
        store_at: String,
        rank0_hosts_store: bool,
        timeout: Duration,
    ) -> Self {
        let now = Instant::now();
        Self {
            rank,
            world,
            prefix,
            store_at,
            rank0_hosts_store,
            timeout,
            places: vec![String::new(); world],
            finishing: AtomicBool::new(false),
            state: Mutex::new(State { counts: vec![-1; world], moved: vec![now; world], store_silent_since: None }),
        }
    }

    fn key(&self, k: &str) -> String {
        format!("{}{k}", self.prefix)
    }

    /// The ranks (other than this one) whose heartbeat has not moved for `silent`.
    fn silent_ranks(&self, silent: Duration) -> Vec<(usize, Duration)> {
        let st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        (0..self.world)
            .filter(|&r| r != self.rank)
            .map(|r| (r, st.moved[r].elapsed()))
            .filter(|(_, quiet)| *quiet >= silent)
            .collect()
    }

    fn store_silent_for(&self) -> Option<Duration> {
        let st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        st.store_silent_since.map(|t| t.elapsed())
    }
}

static SHARED: OnceLock<Arc<Shared>> = OnceLock::new();
static FAILING: AtomicBool = AtomicBool::new(false);

/// Makes `shared` what [`fail`] consults, and routes failed collectives of the shim to it.
pub fn install(shared: Arc<Shared>) {
    let _ = SHARED.set(shared);
    // SAFETY: registers a function pointer that stays valid for the life of the process.
    unsafe { super::ffi::mtl_dist_set_fatal_handler(on_collective_failure) };
}

extern "C" fn on_collective_failure(what: *const std::ffi::c_char, message: *const std::ffi::c_char) {
    // SAFETY: the shim passes two NUL-terminated strings valid for the call.
    let text = |p| unsafe { std::ffi::CStr::from_ptr(p) }.to_string_lossy().into_owned();
    fail(&text(what), &text(message));
}

/// Runs the watcher until the run finishes (or the process exits through it).
pub fn spawn(shared: Arc<Shared>, store: Store) -> std::thread::JoinHandle<()> {
    std::thread::Builder::new()
        .name("mtl-dist-watch".into())
        .spawn(move || watch(&shared, &store))
        .expect("cannot start the distributed watcher thread")
}

fn watch(shared: &Shared, store: &Store) {
    let own = heartbeat_key(shared.rank);
    loop {
        if shared.finishing.load(Ordering::SeqCst) {
            return;
        }
        let read = (|| -> anyhow::Result<(Vec<i64>, Option<String>)> {
            store.add(&shared.key(&own), 1)?;
            let counts = (0..shared.world)
                .map(|r| store.add(&shared.key(&heartbeat_key(r)), 0))
                .collect::<anyhow::Result<_>>()?;
            let failed =
                if store.contains(&shared.key(FAILED))? { Some(store.get(&shared.key(FAILED))?) } else { None };
            Ok((counts, failed))
        })();
        let now = Instant::now();
        match read {
            Ok((counts, failed)) => {
                {
                    let mut st = shared.state.lock().unwrap_or_else(|e| e.into_inner());
                    for (r, c) in counts.into_iter().enumerate() {
                        if c != st.counts[r] {
                            st.counts[r] = c;
                            st.moved[r] = now;
                        }
                    }
                    st.store_silent_since = None;
                }
                if let Some((rank, code)) = failed.as_deref().and_then(parse_failure) {
                    if rank != shared.rank {
                        // That rank printed its own line; this one ends with the same code.
                        let _ = store.add(&shared.key(FAILED_SEEN), 1);
                        end_process(code);
                    }
                }
            }
            Err(_) => {
                let mut st = shared.state.lock().unwrap_or_else(|e| e.into_inner());
                st.store_silent_since.get_or_insert(now);
            }
        }
        if let Some(&(rank, quiet)) = shared.silent_ranks(shared.timeout).first() {
            fail("training", &format!("no heartbeat from rank {rank} for {:.0} s", quiet.as_secs_f64()));
        }
        if shared.store_silent_for().is_some_and(|d| d >= shared.timeout.min(SILENT_AFTER_FAILURE * 2)) {
            fail("training", "the rendezvous store stopped answering");
        }
        std::thread::sleep(BEAT);
    }
}

/// Ends the process from the watcher's thread. The main thread may be inside libtorch at that
/// moment: `std::process::exit` would run C++ static destructors (the operator registry among
/// them) under it, and it would fail with a second, spurious error. `_exit` skips them; the
/// kernel releases the run lock and the store's socket, and the logs are flushed per line.
fn end_process(code: i32) -> ! {
    use std::io::Write;
    let _ = std::io::stdout().flush();
    let _ = std::io::stderr().flush();
    // SAFETY: `_exit` takes no pointers and does not return.
    unsafe { libc::_exit(code) }
}

/// `rank \t code \t message` as posted under [`FAILED`].
pub fn parse_failure(text: &str) -> Option<(usize, i32)> {
    let mut parts = text.splitn(3, '\t');
    Some((parts.next()?.parse().ok()?, parts.next()?.parse().ok()?))
}

/// Who stopped, as far as the heartbeats tell.
enum Culprit {
    Ranks(Vec<(usize, Duration)>),
    Store,
    Unknown,
}

/// Ends the process after a failed collective (or a silent rank): one line naming the rank
/// that stopped, printed by the lowest surviving rank, and exit code 1.
pub fn fail(what: &str, message: &str) -> ! {
    if FAILING.swap(true, Ordering::SeqCst) {
        // Another thread is already ending the process.
        loop {
            std::thread::sleep(Duration::from_secs(1));
        }
    }
    let Some(shared) = SHARED.get() else {
        eprintln!("error: {what} failed: {}", super::launch::first_line(message));
        end_process(1);
    };
    let started = Instant::now();
    let culprit = loop {
        let silent = shared.silent_ranks(SILENT_AFTER_FAILURE);
        if !silent.is_empty() {
            break Culprit::Ranks(silent);
        }
        if shared.store_silent_for().is_some_and(|d| d >= SILENT_AFTER_FAILURE / 2) {
            break Culprit::Store;
        }
        if started.elapsed() >= DIAGNOSE_FOR.min(shared.timeout) {
            break Culprit::Unknown;
        }
        std::thread::sleep(BEAT / 5);
    };
    let resume = "checkpoints up to LATEST are intact; continue with --resume";
    let (line, printer) = match culprit {
        Culprit::Ranks(ranks) => {
            let (first, quiet) = ranks[0];
            let others = if ranks.len() > 1 { format!(" (and {} more)", ranks.len() - 1) } else { String::new() };
            let place = &shared.places[first];
            let place = if place.is_empty() { String::new() } else { format!(" ({place})") };
            let line = format!(
                "rank {first}{place}{others} stopped during {what}: no heartbeat for {:.0} s (killed, crashed or its \
                 machine is gone); {resume}",
                quiet.as_secs_f64()
            );
            let gone: Vec<usize> = ranks.iter().map(|(r, _)| *r).collect();
            (line, (0..shared.world).find(|r| !gone.contains(r)))
        }
        Culprit::Store if shared.rank0_hosts_store => (
            format!(
                "rank 0 stopped during {what}: the rendezvous store it hosts at {} is gone; {resume}",
                shared.store_at
            ),
            Some(1),
        ),
        Culprit::Store => (
            format!("the rendezvous store at {} (torchrun's agent) is gone during {what}; {resume}", shared.store_at),
            Some(0),
        ),
        Culprit::Unknown => (format!("{what} failed: {}", super::launch::first_line(message)), Some(shared.rank)),
    };
    if printer == Some(shared.rank) {
        eprintln!("error: {line}");
    }
    end_process(1);
}
