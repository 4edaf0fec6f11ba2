//! `mtl-train CONFIG --nproc N`: a local launcher, torchrun's single-machine case. It checks
//! the config once (a mistake is one line, not N), then starts N ranks of this same binary with
//! torchrun's environment (`RANK`, `WORLD_SIZE`, `LOCAL_RANK`, `LOCAL_WORLD_SIZE`,
//! `MASTER_ADDR`, `MASTER_PORT`), one GPU each on CUDA, and waits for them.
//!
//! The ranks run in their own process group, so a terminal's Ctrl-C reaches the launcher only;
//! it passes every SIGINT and SIGTERM on to each rank once (the ranks then stop after a common
//! step and rank 0 writes one checkpoint; a second Ctrl-C ends them at once). A rank that exits
//! with an error ends the others through their watchers; any still running after
//! `train.dist_timeout_seconds` (plus a margin) are killed. The launcher's exit code is the
//! first failing rank's (128 + N for one killed by signal N), 0 when all succeed.
use super::train::TrainArgs;
use mtl::user_bail;
use signal_hook::consts::{SIGINT, SIGTERM};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::process::{Child, Command, ExitCode, ExitStatus};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The flags that belong to the launcher, not to its ranks.
const OWN_FLAGS: &[&str] = &["--nproc", "--master-port"];

pub fn run(args: &TrainArgs, nproc: usize) -> anyhow::Result<ExitCode> {
    if ["RANK", "WORLD_SIZE"].iter().any(|v| std::env::var_os(v).is_some()) {
        user_bail!("--nproc: this process is already a rank (RANK and WORLD_SIZE are set); start it without --nproc");
    }
    if !(1..=1024).contains(&nproc) {
        user_bail!("--nproc: {nproc} must be between 1 and 1024");
    }
    let resolved = args.config.resolve()?;
    let device = mtl::setup::device(&resolved.cfg.device)?;
    mtl::dist::check_build()?;
    if device.is_cuda() {
        let gpus = tch::Cuda::device_count() as usize;
        if nproc > gpus {
            user_bail!("--nproc: {nproc} ranks on CUDA need {nproc} GPUs (one each); this machine has {gpus}");
        }
    }
    let port = match args.master_port {
        Some(p) => {
            if std::net::TcpListener::bind(("127.0.0.1", p)).is_err() {
                user_bail!("--master-port: port {p} is already in use on this machine; choose a free one");
            }
            p
        }
        None => free_port()?,
    };
    let timeout = Duration::from_secs_f64(resolved.cfg.train.dist_timeout_seconds);
    let threads = (!device.is_cuda() && resolved.cfg.threads == 0 && std::env::var_os("OMP_NUM_THREADS").is_none())
        .then(|| (available_cores() / nproc).max(1));
    let rank_args = rank_arguments(std::env::args_os().skip(1).collect());
    let exe = std::env::current_exe().map_err(|e| anyhow::anyhow!("cannot find this executable: {e}"))?;
    let mut children = Vec::with_capacity(nproc);
    for rank in 0..nproc {
        let mut cmd = Command::new(&exe);
        cmd.args(&rank_args)
            .env("RANK", rank.to_string())
            .env("LOCAL_RANK", rank.to_string())
            .env("WORLD_SIZE", nproc.to_string())
            .env("LOCAL_WORLD_SIZE", nproc.to_string())
            .env("MASTER_ADDR", "127.0.0.1")
            .env("MASTER_PORT", port.to_string())
            .env_remove("TORCHELASTIC_USE_AGENT_STORE")
            .process_group(0);
        if let Some(t) = threads {
            cmd.env("OMP_NUM_THREADS", t.to_string());
        }
        // SAFETY: only async-signal-safe prctl between fork and exec: the rank dies with the
        // launcher, so killing the launcher never leaves ranks behind.
        unsafe {
            cmd.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                Ok(())
            });
        }
        match cmd.spawn() {
            Ok(child) => children.push(child),
            Err(e) => {
                for c in &mut children {
                    let _ = c.kill();
                }
                anyhow::bail!("cannot start rank {rank}: {e}");
            }
        }
    }
    let pids: Vec<i32> = children.iter().map(|c| c.id() as i32).collect();
    let forwarded = forward_signals(pids)?;
    Ok(wait_all(children, timeout, &forwarded))
}

/// The launcher's own arguments minus `--nproc N` and `--master-port P` (either spelling).
fn rank_arguments(args: Vec<std::ffi::OsString>) -> Vec<std::ffi::OsString> {
    let mut out = Vec::with_capacity(args.len());
    let mut skip_value = false;
    for a in args {
        if std::mem::take(&mut skip_value) {
            continue;
        }
        let text = a.to_string_lossy();
        if OWN_FLAGS.contains(&text.as_ref()) {
            skip_value = true;
        } else if !OWN_FLAGS.iter().any(|f| text.starts_with(&format!("{f}="))) {
            out.push(a);
        }
    }
    out
}

fn free_port() -> anyhow::Result<u16> {
    let socket =
        std::net::TcpListener::bind("127.0.0.1:0").map_err(|e| anyhow::anyhow!("cannot find a free port: {e}"))?;
    Ok(socket.local_addr()?.port())
}

fn available_cores() -> usize {
    std::thread::available_parallelism().map(usize::from).unwrap_or(1)
}

/// Passes SIGINT and SIGTERM on to every rank; returns the flag that says one was passed.
fn forward_signals(pids: Vec<i32>) -> anyhow::Result<Arc<AtomicBool>> {
    let forwarded = Arc::new(AtomicBool::new(false));
    let mut signals = signal_hook::iterator::Signals::new([SIGINT, SIGTERM])
        .map_err(|e| anyhow::anyhow!("cannot install signal handlers: {e}"))?;
    let flag = forwarded.clone();
    std::thread::spawn(move || {
        for signal in signals.forever() {
            flag.store(true, Ordering::SeqCst);
            for &pid in &pids {
                // SAFETY: kill(2) on our own children's pids.
                unsafe { libc::kill(pid, signal) };
            }
        }
    });
    Ok(forwarded)
}

/// Waits for every rank; returns the launcher's exit code.
fn wait_all(children: Vec<Child>, timeout: Duration, forwarded: &AtomicBool) -> ExitCode {
    let children: Vec<Mutex<Child>> = children.into_iter().map(Mutex::new).collect();
    let mut status: Vec<Option<ExitStatus>> = vec![None; children.len()];
    let mut first_failure: Option<(usize, ExitStatus, Instant)> = None;
    // Ranks this launcher ended after a failure: their signal is not news (the failure's own
    // line was printed by the rank that failed).
    let mut ended_here = vec![false; children.len()];
    // Survivors notice a failed rank within a heartbeat or two (or, stuck in NCCL, within the
    // timeout); whatever is left after that is ended here.
    let patience = timeout.min(Duration::from_secs(30)) + Duration::from_secs(5);
    while status.iter().any(Option::is_none) {
        for (rank, child) in children.iter().enumerate() {
            if status[rank].is_some() {
                continue;
            }
            let mut child = child.lock().unwrap_or_else(|e| e.into_inner());
            if let Ok(Some(s)) = child.try_wait() {
                status[rank] = Some(s);
                if let Some(sig) = s.signal().filter(|_| !forwarded.load(Ordering::SeqCst) && !ended_here[rank]) {
                    eprintln!("error: rank {rank} (pid {}) was killed by signal {sig}", child.id());
                }
                if !s.success() && first_failure.is_none() {
                    first_failure = Some((rank, s, Instant::now()));
                }
            }
        }
        if let Some((_, _, at)) = first_failure {
            if at.elapsed() > patience {
                for (rank, child) in children.iter().enumerate() {
                    if status[rank].is_none() {
                        ended_here[rank] = true;
                        let _ = child.lock().unwrap_or_else(|e| e.into_inner()).kill();
                    }
                }
            }
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    match first_failure {
        None => ExitCode::SUCCESS,
        Some((_, s, _)) => {
            let code = s.code().unwrap_or_else(|| 128 + s.signal().unwrap_or(1));
            ExitCode::from(code.clamp(1, 255) as u8)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rank_arguments_drop_the_launcher_flags_in_either_spelling() {
        let args = ["c.yaml", "--nproc", "2", "--set", "a=1", "--master-port=1234", "--device", "cpu", "--nproc=3"];
        let got = rank_arguments(args.iter().map(Into::into).collect());
        let got: Vec<String> = got.iter().map(|a| a.to_string_lossy().into_owned()).collect();
        assert_eq!(got, ["c.yaml", "--set", "a=1", "--device", "cpu"]);
    }
}
