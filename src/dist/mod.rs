//! Data-parallel training through libtorch's own c10d, the engine of `torch.distributed`:
//! `ProcessGroupNCCL` between GPUs, `ProcessGroupGloo` between CPU processes, a `TCPStore`
//! rendezvous from torchrun's environment ([`Launch`]). No collective is written here: every
//! all-reduce, broadcast, all-gather and barrier is c10d's, reached through the small C++ shim
//! in csrc/dist/ (built by build.rs against the headers of the libtorch torch-sys links).
//!
//! A [`Group`] is this process's place in the run and its collectives over tch tensors; a
//! failed collective or a rank that stops is handled in [`watch`] (one line, exit). What the
//! trainer does with it (sharded batches, averaged gradients, synchronized BatchNorm, sharded
//! evaluation) is in docs/DISTRIBUTED.md.
mod abi;
mod ffi;
pub mod launch;
mod library_id;
mod store;
mod watch;

pub use launch::Launch;

use crate::user_bail;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use store::Store;
use tch::{Device, Kind, Tensor};

/// This process's rank in a distributed run, and the collectives between the ranks. Cheap to
/// clone (one shared handle); collectives must be called in the same order on every rank.
#[derive(Clone)]
pub struct Group {
    inner: Arc<Inner>,
}

struct Inner {
    group: *mut ffi::Group,
    store: Store,
    rank: usize,
    world: usize,
    /// The rank on this machine (`LOCAL_RANK`).
    local_rank: usize,
    device: Device,
    hosts_store: bool,
    shared: Arc<watch::Shared>,
    watcher: Mutex<Option<std::thread::JoinHandle<()>>>,
    /// The agreed number of steps after which every rank stops, once one asked to.
    stop_at: Mutex<Option<u64>>,
}

// SAFETY: c10d backends are thread-safe (they serialise their own work queues); the handle is
// never freed (a process group lives as long as the process).
unsafe impl Send for Inner {}
unsafe impl Sync for Inner {}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Reduce {
    Sum = 0,
    Max = 1,
}

impl std::fmt::Debug for Group {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Group(rank {} of {} on {:?})", self.inner.rank, self.inner.world, self.inner.device)
    }
}

/// Whether this build can train data-parallel with the libtorch it runs on (the c10d size
/// check, src/dist/abi.rs): a launcher asks before it starts any rank, so a refusal is one line.
pub fn check_build() -> anyhow::Result<()> {
    abi::check()
}

/// Joins the run `launch` describes, on `device` (CPU: Gloo; `cuda:i`: NCCL): checks the
/// c10d build, meets the other ranks at the store, creates the process group and starts the
/// watcher. `timeout`: how long to wait for the other ranks, for a collective, or for a
/// silent rank's heartbeat. Every failure to start is one line (a user error).
pub fn init(launch: &Launch, device: Device, timeout: Duration) -> anyhow::Result<Group> {
    abi::check()?;
    // c10d logs every lost connection with a backtrace; the watcher says what happened in one
    // line instead. RUST_LOG=debug keeps libtorch's lines for diagnosis.
    let verbose = std::env::var("RUST_LOG").is_ok_and(|v| v.contains("debug") || v.contains("trace"));
    // SAFETY: sets one integer flag of libtorch's logging.
    unsafe { ffi::mtl_dist_set_log_level(if verbose { 0 } else { 3 }) };
    let (backend, index) = match device {
        Device::Cpu => ("gloo", -1),
        // SAFETY: a plain query of the shim.
        Device::Cuda(i) if unsafe { ffi::mtl_dist_has_nccl() } != 0 => ("nccl", i as i32),
        Device::Cuda(_) => user_bail!(
            "distributed training on CUDA needs the NCCL backend, which this build lacks (the CUDA headers were absent \
             when it was built: pip install nvidia-cuda-crt nvidia-cuda-cccl into the torch environment, then rebuild)"
        ),
        other => user_bail!("distributed training: device {other:?} is not supported (cpu or cuda)"),
    };
    let (addr, port) = (launch.master_addr.as_str(), launch.master_port);
    let store = Store::connect(addr, port, launch.hosts_store(), launch.world, timeout)
        .map_err(|e| launch.rendezvous_error(&e.to_string(), timeout))?;
    let prefix = format!("mtl/{}/", launch.attempt);
    let place = format!("pid {} on {}", std::process::id(), hostname());
    store
        .set(&format!("{prefix}place/{}", launch.rank), &place)
        .map_err(|e| launch.rendezvous_error(&e.to_string(), timeout))?;
    let mut shared = watch::Shared::new(
        launch.rank,
        launch.world,
        prefix.clone(),
        format!("{addr}:{port}"),
        !launch.agent_store,
        timeout,
    );
    let pg_prefix = std::ffi::CString::new(format!("{prefix}pg")).expect("no NUL");
    let backend_name = std::ffi::CString::new(backend).expect("no NUL");
    let ms = timeout.as_millis().min(i64::MAX as u128) as i64;
    // SAFETY: valid handles and C strings; the shim copies what it keeps.
    let group = unsafe {
        ffi::mtl_group_new(
            store.raw(),
            pg_prefix.as_ptr(),
            backend_name.as_ptr(),
            launch.rank as i32,
            launch.world as i32,
            index,
            ms,
        )
    };
    if group.is_null() {
        return Err(launch.rendezvous_error(&ffi::last_error(), timeout));
    }
    // Every rank published its place before it could join the group, so these do not wait.
    for r in 0..launch.world {
        shared.places[r] = store.get(&format!("{prefix}place/{r}")).unwrap_or_default();
    }
    let shared = Arc::new(shared);
    watch::install(shared.clone());
    let beat_store =
        Store::connect(addr, port, false, 0, timeout).map_err(|e| launch.rendezvous_error(&e.to_string(), timeout))?;
    let watcher = watch::spawn(shared.clone(), beat_store);
    Ok(Group {
        inner: Arc::new(Inner {
            group,
            store,
            rank: launch.rank,
            world: launch.world,
            local_rank: launch.local_rank,
            device,
            hosts_store: launch.hosts_store(),
            shared,
            watcher: Mutex::new(Some(watcher)),
            stop_at: Mutex::new(None),
        }),
    })
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname").map(|h| h.trim().to_string()).unwrap_or_else(|_| "?".into())
}

impl Group {
    pub fn rank(&self) -> usize {
        self.inner.rank
    }

    pub fn world(&self) -> usize {
        self.inner.world
    }

    /// Rank 0: the one that owns the run directory and prints.
    pub fn is_first(&self) -> bool {
        self.inner.rank == 0
    }

    /// The device the collectives run on (tensors elsewhere are copied there and back).
    pub fn device(&self) -> Device {
        self.inner.device
    }

    /// Runs `op` on `t`'s values as a contiguous tensor on the group's device, writing the
    /// result back into `t` when it lives elsewhere.
    fn in_place(&self, t: &Tensor, op: impl FnOnce(&Tensor)) {
        if t.device() == self.inner.device && t.is_contiguous() {
            op(t);
        } else {
            let staged = t.to_device(self.inner.device).contiguous();
            let staged = if staged.data_ptr() == t.data_ptr() { staged.copy() } else { staged };
            op(&staged);
            tch::no_grad(|| t.shallow_clone().copy_(&staged));
        }
    }

    fn reduce_(&self, t: &Tensor, op: Reduce) {
        // SAFETY: `p` is a live tch tensor for the duration of the call.
        self.in_place(t, |p| unsafe { ffi::mtl_group_all_reduce(self.inner.group, p.as_ptr() as *mut _, op as i32) });
    }

    /// Replaces `t` by its sum over the ranks.
    pub fn sum_(&self, t: &Tensor) {
        self.reduce_(t, Reduce::Sum);
    }

    /// Replaces `t` by its elementwise maximum over the ranks.
    pub fn max_(&self, t: &Tensor) {
        self.reduce_(t, Reduce::Max);
    }

    /// Replaces `t` by its mean over the ranks (the sum, divided by the world size).
    pub fn mean_(&self, t: &Tensor) {
        self.sum_(t);
        if self.inner.world > 1 {
            tch::no_grad(|| {
                let _ = t.shallow_clone().g_div_scalar_(self.inner.world as f64);
            });
        }
    }

    /// Replaces `t` by rank `root`'s `t`.
    pub fn broadcast_(&self, t: &Tensor, root: usize) {
        // SAFETY: `p` is a live tch tensor for the duration of the call.
        self.in_place(t, |p| unsafe { ffi::mtl_group_broadcast(self.inner.group, p.as_ptr() as *mut _, root as i32) });
    }

    /// Replaces every tensor of `tensors` by rank `root`'s, in one broadcast per dtype.
    pub fn broadcast_all_(&self, tensors: &[Tensor], root: usize) {
        let mut kinds: Vec<Kind> = Vec::new();
        for t in tensors {
            if !kinds.contains(&t.kind()) {
                kinds.push(t.kind());
            }
        }
        for kind in kinds {
            let group: Vec<&Tensor> = tensors.iter().filter(|t| t.kind() == kind).collect();
            let flat = Tensor::cat(
                &group.iter().map(|t| t.detach().reshape([-1]).to_device(self.inner.device)).collect::<Vec<_>>(),
                0,
            );
            self.broadcast_(&flat, root);
            let sizes: Vec<i64> = group.iter().map(|t| t.numel() as i64).collect();
            tch::no_grad(|| {
                for (t, part) in group.iter().zip(flat.split_with_sizes(&sizes, 0)) {
                    t.shallow_clone().copy_(&part.view(t.size().as_slice()));
                }
            });
        }
    }

    /// Every rank's `t` (same shape everywhere), in rank order, on the group's device.
    pub fn all_gather(&self, t: &Tensor) -> Vec<Tensor> {
        let input = t.detach().to_device(self.inner.device).contiguous();
        let outputs: Vec<Tensor> = (0..self.inner.world).map(|_| input.empty_like()).collect();
        let ptrs: Vec<*mut torch_sys::C_tensor> = outputs.iter().map(|o| o.as_ptr() as *mut _).collect();
        // SAFETY: `world` live output tensors shaped like the live input.
        unsafe { ffi::mtl_group_all_gather(self.inner.group, ptrs.as_ptr(), input.as_ptr() as *mut _) };
        outputs
    }

    pub fn barrier(&self) {
        // SAFETY: a live group handle.
        unsafe { ffi::mtl_group_barrier(self.inner.group) }
    }

    /// The sum over ranks of `t`, differentiable: the backward pass sums the incoming gradient
    /// over the ranks (each rank's backward must reach it, in the same order).
    pub fn sum_differentiable(&self, t: &Tensor) -> Tensor {
        let input = if t.device() == self.inner.device { t.shallow_clone() } else { t.to_device(self.inner.device) };
        // SAFETY: a live input; the shim returns a new tensor this wrapper then owns.
        let out = unsafe { ffi::mtl_group_all_reduce_autograd(self.inner.group, input.as_ptr() as *mut _) };
        // SAFETY: `out` is a fresh `torch::Tensor*` allocated by the shim with `new`.
        unsafe { Tensor::from_ptr(out) }
    }

    fn key(&self, k: &str) -> String {
        format!("{}{k}", self.inner.shared.prefix)
    }

    /// Whether to stop now, after `done` steps, given whether this rank was asked to stop
    /// (Ctrl-C, SIGTERM). True on every rank after the same step: the first rank asked posts
    /// `done + 1` once; every step ends with a collective, so no rank can finish that step
    /// before the post is visible to it.
    pub fn stop_after(&self, done: u64, asked: bool) -> bool {
        let mut stop_at = self.inner.stop_at.lock().unwrap_or_else(|e| e.into_inner());
        if stop_at.is_none() {
            let key = self.key("stop_after");
            let posted = if asked {
                self.inner.store.set_once(&key, &(done + 1).to_string()).map(Some)
            } else {
                self.inner.store.contains(&key).and_then(|has| has.then(|| self.inner.store.get(&key)).transpose())
            };
            match posted {
                Ok(value) => *stop_at = value.and_then(|v| v.parse().ok()),
                Err(e) => watch::fail("agreeing on the step to stop after", &e.to_string()),
            }
        }
        stop_at.is_some_and(|at| done >= at)
    }

    /// Runs `f` on this machine's first rank (`LOCAL_RANK` 0) before the machine's other
    /// ranks run it: they wait (without a timeout: the watcher ends them should that rank
    /// stop) until it has finished, successfully or not. For work that must happen once per
    /// machine, like a download into a shared directory.
    pub fn first_on_machine<T>(&self, what: &str, f: impl FnOnce() -> anyhow::Result<T>) -> anyhow::Result<T> {
        let key = self.key(&format!("first_on_machine/{what}/{}", hostname()));
        if self.inner.local_rank == 0 {
            let result = f();
            if let Err(e) = self.inner.store.set(&key, "done") {
                watch::fail(&format!("telling the other ranks that {what} is ready"), &e.to_string());
            }
            return result;
        }
        loop {
            match self.inner.store.contains(&key) {
                Ok(true) => break,
                Ok(false) => std::thread::sleep(watch::BEAT / 5),
                Err(e) => watch::fail(&format!("waiting for {what} on this machine's first rank"), &e.to_string()),
            }
        }
        f()
    }

    /// Tells the other ranks that this one fails with `code` and `message`: they exit with the
    /// same code, without a line of their own. Returns whether this rank's failure is the one
    /// posted (the first; ranks failing together, as on a shared divergence, post once), that
    /// is whether this rank should print it.
    pub fn post_failure(&self, code: i32, message: &str) -> bool {
        let posted = format!("{}\t{code}\t{}", self.inner.rank, message.replace('\n', " "));
        match self.inner.store.set_once(&self.key(watch::FAILED), &posted) {
            Ok(first) if first == posted => true,
            Ok(_) => {
                // Another rank's failure came first: this one has seen it.
                let _ = self.inner.store.add(&self.key(watch::FAILED_SEEN), 1);
                false
            }
            Err(_) => true,
        }
    }

    /// After [`Group::post_failure`]: the store's host waits a few heartbeats for the other
    /// ranks to read the failure before it exits (the store goes with it).
    pub fn await_failure_seen(&self) {
        if !self.inner.hosts_store {
            return;
        }
        // Long enough for a rank slowed by a loaded machine (a 2-core runner with three ranks
        // took more than 8 beats): a rank that posts after the store is gone prints its own
        // line, a second one for the same failure.
        let deadline = Instant::now() + watch::BEAT * 20;
        while Instant::now() < deadline {
            match self.inner.store.add(&self.key(watch::FAILED_SEEN), 0) {
                Ok(n) if n as usize + 1 >= self.inner.world => return,
                Ok(_) => std::thread::sleep(watch::BEAT / 5),
                Err(_) => return,
            }
        }
    }

    /// Ends the run on every rank together: a barrier, then the watchers stop and the store's
    /// host waits until every rank is done with the store.
    pub fn finish(&self) {
        self.barrier();
        self.inner.shared.finishing.store(true, Ordering::SeqCst);
        if let Some(w) = self.inner.watcher.lock().unwrap_or_else(|e| e.into_inner()).take() {
            let _ = w.join();
        }
        let done = self.key("done");
        let _ = self.inner.store.add(&done, 1);
        if self.inner.hosts_store {
            let deadline = Instant::now() + self.inner.shared.timeout;
            while Instant::now() < deadline {
                match self.inner.store.add(&done, 0) {
                    Ok(n) if n as usize >= self.inner.world => break,
                    Ok(_) => std::thread::sleep(Duration::from_millis(20)),
                    Err(_) => break,
                }
            }
        }
    }
}

/// A world of one on a free local port (Gloo on the CPU, NCCL on `cuda:0`), shared by the unit
/// tests that need a real group.
#[cfg(test)]
pub(crate) fn solo_for_tests(device: Device) -> Group {
    static CPU: std::sync::OnceLock<Group> = std::sync::OnceLock::new();
    static CUDA: std::sync::OnceLock<Group> = std::sync::OnceLock::new();
    let cell = if device.is_cuda() { &CUDA } else { &CPU };
    cell.get_or_init(|| {
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let launch = Launch {
            rank: 0,
            world: 1,
            local_rank: 0,
            master_addr: "127.0.0.1".into(),
            master_port: port,
            agent_store: false,
            attempt: 0,
        };
        init(&launch, device, Duration::from_secs(30)).expect("a world of one starts")
    })
    .clone()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The collectives through NCCL on the GPU (a world of one: one H200 is what a check gets),
    /// CPU tensors staged through the device and back.
    #[test]
    fn cuda_nccl_world_of_one_runs_the_collectives_on_the_gpu() {
        if !tch::Cuda::is_available() {
            eprintln!("skipped: no CUDA on this machine");
            return;
        }
        let g = solo_for_tests(Device::Cuda(0));
        assert_eq!(g.device(), Device::Cuda(0));
        let on_gpu = Tensor::from_slice(&[1.0f32, 2.0]).to_device(Device::Cuda(0));
        g.sum_(&on_gpu);
        g.broadcast_all_(&[on_gpu.shallow_clone()], 0);
        let on_host = Tensor::from_slice(&[7i64]);
        g.sum_(&on_host);
        assert_eq!(Vec::<f32>::try_from(on_gpu.to_device(Device::Cpu)).unwrap(), [1.0, 2.0]);
        assert_eq!(on_host.int64_value(&[0]), 7);
        let parts = g.all_gather(&on_gpu);
        assert_eq!(parts[0].device(), Device::Cuda(0));
        let x = Tensor::from_slice(&[3.0f64]).to_device(Device::Cuda(0)).set_requires_grad(true);
        (g.sum_differentiable(&x).square()).sum(Kind::Double).backward();
        assert_eq!(x.grad().double_value(&[0]), 6.0);
        g.barrier();
    }

    #[test]
    fn a_world_of_one_leaves_values_as_they_are() {
        let g = solo_for_tests(Device::Cpu);
        assert_eq!((g.rank(), g.world(), g.is_first()), (0, 1, true));
        let t = Tensor::from_slice(&[1.5f32, -2.0]);
        g.sum_(&t);
        g.mean_(&t);
        g.broadcast_(&t, 0);
        assert_eq!(Vec::<f32>::try_from(&t).unwrap(), [1.5, -2.0]);
        let parts = g.all_gather(&t);
        assert_eq!(parts.len(), 1);
        let x = Tensor::from_slice(&[3.0f64]).set_requires_grad(true);
        let y = g.sum_differentiable(&x);
        (&y * &y).sum(Kind::Double).backward();
        assert_eq!(x.grad().double_value(&[0]), 6.0);
        // Asked to stop after step 4: stops then, not before.
        assert!(!g.stop_after(3, false));
        assert!(!g.stop_after(4, true));
        assert!(g.stop_after(5, false));
    }
}
