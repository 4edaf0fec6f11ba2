//! Stopping a run from outside: Ctrl-C (SIGINT) and preemption (SIGTERM, what Slurm, Kubernetes
//! and spot machines send before SIGKILL) both ask the trainer to finish its step and write a
//! checkpoint ([`mtl::train::INTERRUPTED`]); a second signal exits at once. With a grace period,
//! a watchdog exits on its own when the checkpoint is not written in time, so the process ends
//! with a clear line rather than a silent SIGKILL. Either way LATEST names a complete checkpoint.
use mtl::train::INTERRUPTED;
use signal_hook::consts::{SIGINT, SIGTERM};
use std::sync::atomic::{AtomicI32, Ordering};
use std::time::Duration;

/// The first stop signal received, 0 before any.
static RECEIVED: AtomicI32 = AtomicI32::new(0);

/// The exit code of a run stopped by `signal`: 128 + its number (130 for SIGINT, 143 for
/// SIGTERM), as shells report a process ended by it.
pub fn exit_code(signal: i32) -> u8 {
    (128 + signal).clamp(0, 255) as u8
}

/// The signal that stopped the run, if one did.
pub fn received() -> Option<i32> {
    match RECEIVED.load(Ordering::SeqCst) {
        0 => None,
        s => Some(s),
    }
}

fn name(signal: i32) -> &'static str {
    if signal == SIGTERM {
        "SIGTERM"
    } else {
        "Ctrl-C"
    }
}

/// Installs the handlers. `grace`: how long the step and checkpoint may take after the first
/// signal (None: as long as they need). `announce`: print what happens (false on the ranks
/// other than 0 of a distributed run, which all receive the same signal).
pub fn install(grace: Option<Duration>, announce: bool) -> anyhow::Result<()> {
    let mut signals = signal_hook::iterator::Signals::new([SIGINT, SIGTERM])
        .map_err(|e| anyhow::anyhow!("cannot install signal handlers: {e}"))?;
    std::thread::spawn(move || {
        for signal in signals.forever() {
            if RECEIVED.compare_exchange(0, signal, Ordering::SeqCst, Ordering::SeqCst).is_err() {
                if announce {
                    eprintln!("second {}: exiting without a checkpoint", name(signal));
                }
                std::process::exit(exit_code(signal).into());
            }
            INTERRUPTED.store(true, Ordering::SeqCst);
            if announce {
                eprintln!(
                    "{}: finishing the current step and writing a checkpoint ({} again to exit at once)",
                    name(signal),
                    name(signal)
                );
            }
            if let Some(grace) = grace {
                std::thread::spawn(move || {
                    std::thread::sleep(grace);
                    if announce {
                        eprintln!(
                            "error: {}: the step and checkpoint did not finish within train.stop_grace_seconds ({}s); \
                         exiting without a checkpoint (LATEST is the previous one)",
                            name(signal),
                            grace.as_secs_f64()
                        );
                    }
                    std::process::exit(exit_code(signal).into());
                });
            }
        }
    });
    Ok(())
}
