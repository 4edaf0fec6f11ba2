//! c10d through the shim, between two real processes (Gloo on the CPU): each collective against
//! what it must compute, the differentiable sum's backward against its closed form, the
//! stop-step agreement, and the proof that the collectives are libtorch's (the binary imports
//! c10d's classes from libtorch_cpu.so; no collective code of our own exists in the tree).
use std::process::{Command, Stdio};
use std::time::Duration;
use tch::{Device, Kind, Tensor};

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// Runs the ignored test `name` of this binary as `world` ranks; returns their stderr.
fn run_ranks(name: &str, world: usize) -> Vec<String> {
    let port = free_port().to_string();
    let children: Vec<_> = (0..world)
        .map(|rank| {
            Command::new(std::env::current_exe().unwrap())
                .args([name, "--exact", "--ignored", "--test-threads=1", "--nocapture"])
                .env("RANK", rank.to_string())
                .env("WORLD_SIZE", world.to_string())
                .env("MASTER_ADDR", "127.0.0.1")
                .env("MASTER_PORT", &port)
                .env("OMP_NUM_THREADS", "1")
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    children
        .into_iter()
        .enumerate()
        .map(|(rank, child)| {
            let out = child.wait_with_output().unwrap();
            let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
            assert!(out.status.success(), "rank {rank} failed:\n{text}");
            text
        })
        .collect()
}

fn join() -> mtl::dist::Group {
    let launch = mtl::dist::Launch::from_env().unwrap().expect("started as a rank");
    mtl::dist::init(&launch, Device::Cpu, Duration::from_secs(30)).unwrap()
}

fn values(t: &Tensor) -> Vec<f64> {
    Vec::<f64>::try_from(t.to_kind(Kind::Double).reshape([-1])).unwrap()
}

#[test]
fn collectives_between_two_processes_compute_what_they_must() {
    for log in run_ranks("rank_checks_its_collectives", 2) {
        assert!(log.contains("collectives ok"), "{log}");
    }
}

#[test]
#[ignore = "run as a rank by collectives_between_two_processes_compute_what_they_must"]
fn rank_checks_its_collectives() {
    let g = join();
    let (r, w) = (g.rank() as f64, g.world() as f64);
    assert_eq!(g.world(), 2);

    // Sum, max, mean, in several dtypes, and a non-contiguous view written back in place.
    let t = Tensor::from_slice(&[1.0f32 + r as f32, 10.0 * (r as f32 + 1.0), -r as f32]);
    g.sum_(&t);
    assert_eq!(values(&t), [3.0, 30.0, -1.0]);
    let m = Tensor::from_slice(&[r as i64, 5 - r as i64]);
    g.max_(&m);
    assert_eq!(values(&m), [1.0, 5.0]);
    let d = Tensor::from_slice(&[r, 2.0 * r]).to_kind(Kind::Double);
    g.mean_(&d);
    assert_eq!(values(&d), [0.5, 1.0]);
    let big = Tensor::arange(12, (Kind::Float, Device::Cpu)).view([3, 4]) * (r + 1.0);
    let col = big.tr();
    assert!(!col.is_contiguous());
    g.sum_(&col);
    let want: Vec<f64> = (0..12).map(|v| v as f64 * 3.0).collect();
    assert_eq!(values(&big), want);

    // Broadcast from rank 1, single and grouped by dtype.
    let b = Tensor::from_slice(&[r * 7.0]);
    g.broadcast_(&b, 1);
    assert_eq!(values(&b), [7.0]);
    let many = [
        Tensor::from_slice(&[r as f32; 3]),
        Tensor::from_slice(&[r as i64 + 4]),
        Tensor::from_slice(&[r as f32 * 2.0]),
    ];
    g.broadcast_all_(&many, 0);
    assert_eq!((values(&many[0]), values(&many[1]), values(&many[2])), (vec![0.0; 3], vec![4.0], vec![0.0]));

    // All-gather, in rank order.
    let parts = g.all_gather(&Tensor::from_slice(&[r, r + 0.5]));
    assert_eq!(parts.iter().map(values).collect::<Vec<_>>(), [vec![0.0, 0.5], vec![1.0, 1.5]]);

    // Differentiable sum: y = Σ_ranks x; L_r = Σ (r+1)·y², so ∂(Σ_r L_r)/∂x = 2y·Σ_r (r+1) on
    // every rank, which the backward's sum over ranks must produce.
    let x = (Tensor::from_slice(&[1.0f64, 2.0]) * (r + 1.0)).set_requires_grad(true);
    let y = g.sum_differentiable(&x);
    assert_eq!(values(&y), [3.0, 6.0]);
    ((&y * &y).sum(Kind::Double) * (r + 1.0)).backward();
    let coef: f64 = (1..=2).map(f64::from).sum();
    assert_eq!(values(&x.grad()), [2.0 * 3.0 * coef, 2.0 * 6.0 * coef]);
    let _ = w;

    // The stop-step agreement: rank 1 asks after step 4; both stop after step 5.
    let mut stops = Vec::new();
    for done in 1..=8u64 {
        let stop = g.stop_after(done, g.rank() == 1 && done == 4);
        g.barrier(); // stands in for the step's collectives
        if stop {
            stops.push(done);
            break;
        }
    }
    assert_eq!(stops, [5]);
    g.finish();
    eprintln!("collectives ok");
}

/// The collectives are c10d's: the binary imports ProcessGroupGloo's constructor and the
/// TCPStore from libtorch_cpu.so (nm lists them undefined, resolved there), and the tree has
/// no collective algorithm of its own.
#[test]
fn the_shim_links_c10d_from_libtorch() {
    let bin = env!("CARGO_BIN_EXE_mtl-train");
    let Ok(out) = Command::new("nm").args(["-D", "--undefined-only", bin]).output() else {
        eprintln!("nm not available; skipped");
        return;
    };
    let imports = String::from_utf8_lossy(&out.stdout);
    for symbol in ["_ZN4c10d16ProcessGroupGlooC1", "_ZN4c10d8TCPStoreC1", "_ZN4c10d11PrefixStoreC1"] {
        assert!(imports.contains(symbol), "{symbol} is not imported from libtorch:\n{imports}");
    }
    let ldd = Command::new("ldd").arg(bin).output().unwrap();
    assert!(String::from_utf8_lossy(&ldd.stdout).contains("libtorch_cpu.so"));
    // No hand-written collective: nothing in src/ or csrc/ reduces over ranks itself.
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut files = Vec::new();
    for dir in ["src", "csrc"] {
        collect(&root.join(dir), &mut files);
    }
    for f in files {
        let text = std::fs::read_to_string(&f).unwrap_or_default();
        for banned in ["ring_allreduce", "TcpStream::connect", "recv_tensor", "send_tensor"] {
            assert!(!text.contains(banned), "{} contains '{banned}'", f.display());
        }
    }
}

fn collect(dir: &std::path::Path, out: &mut Vec<std::path::PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let p = e.path();
        if p.is_dir() {
            collect(&p, out);
        } else {
            out.push(p);
        }
    }
}
