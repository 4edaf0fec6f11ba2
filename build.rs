//! Links libtorch so that the binary finds it at run time and keeps CUDA, and builds the C++
//! mtl adds to tch's: the c10d shim (csrc/dist/) that src/dist/ calls, and the tuple-output end
//! of tracing (src/model/trace_tuple.cpp).
//!
//! torch-sys tells the linker where libtorch is but gives the final binary no rpath, and the
//! linker's `--as-needed` drops `libtorch_cuda.so` because no symbol of it is referenced
//! directly: CUDA would then silently report unavailable (docs/DECISIONS.md, "Linking libtorch").
//!
//! The shim is compiled against the headers of the very libtorch torch-sys links (its
//! `include/` beside `lib/`). Its NCCL part needs CUDA headers the torch wheel does not ship;
//! it is compiled only where they are found. The sizes of the c10d classes the shim constructs
//! are read from the library's own machine code (the `operator new(N)` before their
//! constructors, as docs/DISTRIBUTED.md explains) and compiled in with the library's build id,
//! for the start-up check in src/dist/abi.rs.
//!
//! It also records the Python of the virtualenv the build ran in (scripts/env.sh sets
//! `VIRTUAL_ENV`): `mtl-train export --onnx` runs it when no other Python is named.
use std::path::{Path, PathBuf};
use std::process::Command;

const TRACE_TUPLE: &str = "src/model/trace_tuple.cpp";

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-changed=csrc/dist");
    println!("cargo:rerun-if-changed={TRACE_TUPLE}");
    println!("cargo:rerun-if-env-changed=LIBTORCH_INCLUDE");
    println!("cargo:rerun-if-env-changed=MTL_CUDA_INCLUDE");
    println!("cargo:rerun-if-env-changed=VIRTUAL_ENV");
    println!("cargo:rerun-if-env-changed=LIBTORCH_CXX11_ABI");
    let python = std::env::var("VIRTUAL_ENV").ok().map(|venv| Path::new(&venv).join("bin").join("python"));
    if let Some(python) = &python {
        println!("cargo:rustc-env=MTL_BUILD_PYTHON={}", python.display());
    }
    let lib_dir = std::env::var("DEP_TCH_LIBTORCH_LIB")
        .expect("DEP_TCH_LIBTORCH_LIB is not set: torch-sys did not say where libtorch is");
    let lib_dir = PathBuf::from(lib_dir);
    let abi = cxx11_abi(python.as_deref());
    link_libtorch(&lib_dir);
    build_trace_tuple(&lib_dir, &abi);
    let nccl = build_c10d_shim(&lib_dir, &abi);
    record_library(&lib_dir, nccl);
}

fn link_libtorch(lib_dir: &Path) {
    let lib = lib_dir.display();
    println!("cargo:rustc-link-arg=-Wl,-rpath,{lib}");
    println!("cargo:rustc-link-arg=-Wl,--no-as-needed");
    println!("cargo:rustc-link-arg=-L{lib}");
    if lib_dir.join("libtorch_cuda.so").exists() {
        println!("cargo:rustc-link-arg=-ltorch_cuda");
    }
    println!("cargo:rustc-link-arg=-ltorch");
    println!("cargo:rustc-link-arg=-Wl,--as-needed");
}

/// Compiles csrc/dist/ into a static library; returns whether the NCCL part is in it.
fn build_c10d_shim(lib_dir: &Path, abi: &str) -> bool {
    let include = std::env::var("LIBTORCH_INCLUDE")
        .map(|p| PathBuf::from(p).join("include"))
        .unwrap_or_else(|_| lib_dir.parent().expect("libtorch's lib dir has a parent").join("include"));
    let c10d = include.join("torch/csrc/distributed/c10d/ProcessGroupGloo.hpp");
    assert!(c10d.exists(), "{} is missing: this libtorch has no c10d headers", c10d.display());
    let cuda = lib_dir.join("libtorch_cuda.so").exists().then(|| cuda_includes(lib_dir)).flatten();
    let mut build = cc::Build::new();
    build
        .cpp(true)
        .pic(true)
        .warnings(false)
        .flag("-std=c++17")
        .flag("-O2")
        .define("_GLIBCXX_USE_CXX11_ABI", abi)
        .define("USE_C10D_GLOO", "1")
        .include("csrc/dist/gloo_shim")
        .include("csrc/dist")
        .flag("-isystem")
        .flag(include.display().to_string())
        .flag("-isystem")
        .flag(include.join("torch/csrc/api/include").display().to_string())
        .file("csrc/dist/mtl_dist.cpp");
    if let Some(dirs) = &cuda {
        build.define("MTL_DIST_HAS_NCCL", "1").file("csrc/dist/mtl_dist_nccl.cpp");
        for d in dirs {
            build.flag("-isystem").flag(d.display().to_string());
        }
        println!("cargo:rustc-link-lib=dylib=c10_cuda");
    } else if lib_dir.join("libtorch_cuda.so").exists() {
        println!(
            "cargo:warning=CUDA headers not found (pip install nvidia-cuda-crt nvidia-cuda-cccl, or set \
             MTL_CUDA_INCLUDE): this build trains on one GPU but has no NCCL backend for several"
        );
    }
    build.compile("mtl_dist");
    for lib in ["torch_cpu", "c10"] {
        println!("cargo:rustc-link-lib=dylib={lib}");
    }
    cuda.is_some()
}

/// The include directories ProcessGroupNCCL.hpp needs (CUDA runtime, crt, cccl, NCCL), or None
/// when any is missing: `MTL_CUDA_INCLUDE` (colon-separated), the `nvidia/*/include` wheels
/// beside torch, or a CUDA toolkit.
fn cuda_includes(lib_dir: &Path) -> Option<Vec<PathBuf>> {
    let mut dirs: Vec<PathBuf> = Vec::new();
    if let Ok(list) = std::env::var("MTL_CUDA_INCLUDE") {
        dirs.extend(std::env::split_paths(&list));
    }
    // site-packages/torch/lib -> site-packages/nvidia/<package>/include
    if let Some(site) = lib_dir.parent().and_then(Path::parent) {
        if let Ok(entries) = std::fs::read_dir(site.join("nvidia")) {
            let mut found: Vec<PathBuf> = entries.flatten().map(|e| e.path().join("include")).collect();
            found.sort();
            dirs.extend(found.into_iter().filter(|d| d.is_dir()));
        }
    }
    for home in ["CUDA_HOME", "CUDA_PATH"] {
        if let Ok(h) = std::env::var(home) {
            dirs.push(PathBuf::from(h).join("include"));
        }
    }
    dirs.push(PathBuf::from("/usr/local/cuda/include"));
    // cccl's headers (<cuda/std/...>) sit one level down in the wheel.
    let with_cccl: Vec<PathBuf> =
        dirs.iter().flat_map(|d| [d.clone(), d.join("cccl")]).filter(|d| d.is_dir()).collect();
    let has = |header: &str| with_cccl.iter().any(|d| d.join(header).exists());
    let needed = ["cuda_runtime_api.h", "crt/host_defines.h", "cuda/std/type_traits", "nccl.h"];
    needed.iter().all(|h| has(h)).then_some(with_cccl)
}

/// One class whose size the library's code reveals: inside `function`, the `operator new` call
/// that precedes the first call of the class's constructor `constructor`.
struct SizeProbe {
    class: &'static str,
    library: &'static str,
    function: &'static str,
    constructor: &'static str,
}

const PROBES: &[SizeProbe] = &[
    SizeProbe {
        class: "TCPStore",
        library: "libtorch_cpu.so",
        function: "_ZN4c10d8TCPStore5cloneEv",
        constructor: "_ZN4c10d8TCPStoreC1",
    },
    SizeProbe {
        class: "ProcessGroupGloo::Options",
        library: "libtorch_cpu.so",
        function: "_ZN4c10d16ProcessGroupGloo7Options14create_default",
        constructor: "_ZN4c10d16ProcessGroupGloo7OptionsC1",
    },
    SizeProbe {
        class: "ProcessGroupGloo",
        library: "libtorch_cpu.so",
        function: "_ZN4c10d16ProcessGroupGloo5split",
        constructor: "_ZN4c10d16ProcessGroupGlooC1",
    },
    SizeProbe {
        class: "ProcessGroupNCCL",
        library: "libtorch_cuda.so",
        function: "_ZN4c10d16ProcessGroupNCCL5merge",
        constructor: "_ZN4c10d16ProcessGroupNCCLC1",
    },
    SizeProbe {
        class: "ProcessGroupNCCL::Options",
        library: "libtorch_cuda.so",
        function: "_ZN4c10d16ProcessGroupNCCL6shrink",
        constructor: "_ZN4c10d16ProcessGroupNCCL7OptionsC1",
    },
];

/// Compiles in `MTL_C10D_LIBRARY_SIZES` ("Class=bytes" lines, or "unmeasured: why") and
/// `MTL_C10D_BUILD_IDS` ("library=build id" lines) for the start-up check.
fn record_library(lib_dir: &Path, nccl: bool) {
    let libraries: &[&str] = if nccl { &["libtorch_cpu.so", "libtorch_cuda.so"] } else { &["libtorch_cpu.so"] };
    let measured = (|| -> Result<(String, String), String> {
        let mut sizes = String::new();
        for p in PROBES.iter().filter(|p| libraries.contains(&p.library)) {
            let size = allocation_size(&lib_dir.join(p.library), p)?;
            sizes.push_str(&format!("{}={size};", p.class));
        }
        let mut ids = String::new();
        for lib in libraries {
            ids.push_str(&format!("{lib}={};", build_id(&lib_dir.join(lib))?));
        }
        Ok((sizes, ids))
    })();
    let (sizes, ids) = measured.unwrap_or_else(|why| {
        println!("cargo:warning=c10d object sizes not measured ({why}); distributed runs will refuse to start");
        (format!("unmeasured: {why}"), String::new())
    });
    println!("cargo:rustc-env=MTL_C10D_LIBRARY_SIZES={sizes}");
    println!("cargo:rustc-env=MTL_C10D_BUILD_IDS={ids}");
    for lib in libraries {
        println!("cargo:rerun-if-changed={}", lib_dir.join(lib).display());
    }
}

fn tool(program: &str, args: &[&str]) -> Result<String, String> {
    let out = Command::new(program).args(args).output().map_err(|e| format!("cannot run {program}: {e}"))?;
    if !out.status.success() {
        return Err(format!("{program} {} failed: {}", args.join(" "), String::from_utf8_lossy(&out.stderr).trim()));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The byte count `probe.function` passes to `operator new` for the object it then constructs.
fn allocation_size(lib: &Path, probe: &SizeProbe) -> Result<u64, String> {
    let lib_s = lib.display().to_string();
    let symbols = tool("nm", &["-DS", "--defined-only", &lib_s])?;
    let (start, len) = symbols
        .lines()
        .find_map(|line| {
            let f: Vec<&str> = line.split_whitespace().collect();
            match f.as_slice() {
                [addr, size, _, name] if name.starts_with(probe.function) => {
                    Some((u64::from_str_radix(addr, 16).ok()?, u64::from_str_radix(size, 16).ok()?))
                }
                _ => None,
            }
        })
        .ok_or_else(|| format!("{} has no {}", probe.library, probe.function))?;
    let range = [format!("--start-address={start:#x}"), format!("--stop-address={:#x}", start + len)];
    let code = tool("objdump", &["-d", "--no-show-raw-insn", &range[0], &range[1], &lib_s])?;
    let (mut immediate, mut pending) = (None, None);
    for line in code.lines() {
        if let Some(at) = line.find("mov    $0x") {
            let rest = &line[at + "mov    $0x".len()..];
            if let Some(hex) = rest.strip_suffix(",%edi") {
                immediate = u64::from_str_radix(hex, 16).ok();
            }
        } else if line.contains("call") {
            if line.contains("<_Znwm@plt>") {
                pending = immediate;
            } else if line.contains(&format!("<{}", probe.constructor)) {
                return pending.ok_or_else(|| format!("no allocation before {} in {}", probe.class, probe.function));
            }
            immediate = None;
        }
    }
    Err(format!("{} does not construct {} the expected way", probe.function, probe.class))
}

fn build_id(lib: &Path) -> Result<String, String> {
    let notes = tool("readelf", &["-n", &lib.display().to_string()])?;
    notes
        .lines()
        .find_map(|l| l.trim().strip_prefix("Build ID: ").map(str::to_string))
        .ok_or_else(|| format!("{} has no build id", lib.display()))
}

/// Compiles the tuple-output end of tracing against libtorch's headers (next to its `lib/`,
/// in a PyTorch wheel as in a libtorch archive), with the C++ ABI libtorch was built with.
fn build_trace_tuple(lib_dir: &Path, abi: &str) {
    let include: PathBuf = lib_dir.parent().expect("libtorch's lib/ has a parent").join("include");
    cc::Build::new()
        .cpp(true)
        .file(TRACE_TUPLE)
        .include(&include)
        .include(include.join("torch/csrc/api/include"))
        .flag("-std=c++17")
        .flag(format!("-D_GLIBCXX_USE_CXX11_ABI={abi}"))
        .flag("-DGLOG_USE_GLOG_EXPORT")
        .warnings(false)
        .compile("mtl_trace_tuple");
}

/// `LIBTORCH_CXX11_ABI` if set (torch-sys reads the same variable), else what PyTorch says,
/// else 1 (every PyTorch wheel since 2.7).
fn cxx11_abi(python: Option<&Path>) -> String {
    if let Ok(abi) = std::env::var("LIBTORCH_CXX11_ABI") {
        return abi;
    }
    let python = python.map(Path::to_path_buf).unwrap_or_else(|| PathBuf::from("python3"));
    std::process::Command::new(python)
        .args(["-c", "import torch; print(int(torch._C._GLIBCXX_USE_CXX11_ABI))"])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .filter(|abi| abi == "0" || abi == "1")
        .unwrap_or_else(|| "1".to_string())
}
