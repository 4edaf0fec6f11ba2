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
//! are looked up by the libraries' build ids in csrc/dist/c10d_sizes.txt and compiled in with
//! those ids, for the start-up check in src/dist/abi.rs (docs/DISTRIBUTED.md, "The size check").
//!
//! It compiles the JPEG shim (csrc/jpeg/) against libjpeg-turbo's libjpeg API where the
//! headers and the library are found (Debian/Ubuntu: libjpeg62-turbo-dev / libjpeg-turbo8-dev,
//! which scripts/setup.sh installs when it can) and sets `cfg(mtl_libjpeg)`; without them the
//! build decodes JPEGs with zune-jpeg and says so (docs/DECISIONS.md, "JPEG decoding").
//! `MTL_JPEG=zune-jpeg` builds without it on purpose.
//!
//! It also records the Python of the virtualenv the build ran in (scripts/env.sh sets
//! `VIRTUAL_ENV`): `mtl-train export --onnx` runs it when no other Python is named.
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

#[path = "src/dist/library_id.rs"]
mod library_id;

const TRACE_TUPLE: &str = "src/model/trace_tuple.cpp";
const C10D_SIZES: &str = "csrc/dist/c10d_sizes.txt";

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
    build_jpeg_shim();
}

const JPEG_SHIM: &str = "csrc/jpeg/mtl_jpeg.c";

/// Compiles the libjpeg shim and links libjpeg (the static archive where there is one, so the
/// binary does not depend on the system's shared libjpeg at run time); on any failure leaves
/// `cfg(mtl_libjpeg)` unset, with a warning.
fn build_jpeg_shim() {
    println!("cargo::rustc-check-cfg=cfg(mtl_libjpeg)");
    println!("cargo:rerun-if-changed={JPEG_SHIM}");
    println!("cargo:rerun-if-env-changed=MTL_JPEG");
    println!("cargo:rerun-if-env-changed=MTL_JPEG_INCLUDE");
    println!("cargo:rerun-if-env-changed=MTL_JPEG_LIB");
    if std::env::var("MTL_JPEG").is_ok_and(|v| v == "zune-jpeg") {
        println!("cargo:warning=MTL_JPEG=zune-jpeg: JPEGs are decoded with zune-jpeg");
        return;
    }
    let fallback = |why: &str| {
        println!(
            "cargo:warning=libjpeg-turbo not used ({why}): JPEGs are decoded with zune-jpeg, slower on \
             photos; apt-get install libjpeg62-turbo-dev (or libjpeg-turbo8-dev) and rebuild"
        )
    };
    let arch_dir = format!("{}-linux-gnu", std::env::var("CARGO_CFG_TARGET_ARCH").unwrap_or_default());
    let lib_dirs: Vec<PathBuf> = std::env::var("MTL_JPEG_LIB").map(|d| vec![PathBuf::from(d)]).unwrap_or_else(|_| {
        ["/usr/lib", "/usr/lib64", "/usr/local/lib", "/opt/libjpeg-turbo/lib64"]
            .iter()
            .flat_map(|d| [Path::new(d).join(&arch_dir), PathBuf::from(d)])
            .collect()
    });
    let find = |name: &str| lib_dirs.iter().find(|d| d.join(name).is_file()).cloned();
    let (dir, kind) = match (find("libjpeg.a"), find("libjpeg.so")) {
        (Some(d), _) => (d, "static"),
        (None, Some(d)) => (d, "dylib"),
        (None, None) => return fallback("no libjpeg.a or libjpeg.so found"),
    };
    let mut build = cc::Build::new();
    build.file(JPEG_SHIM).opt_level(2).warnings(false).cargo_warnings(false);
    if let Ok(include) = std::env::var("MTL_JPEG_INCLUDE") {
        build.include(include);
    }
    if let Err(e) = build.try_compile("mtl_jpeg") {
        let first = e.to_string().lines().next().unwrap_or_default().to_string();
        return fallback(&format!("{JPEG_SHIM} does not compile, jpeglib.h missing? {first}"));
    }
    println!("cargo:rustc-link-search=native={}", dir.display());
    println!("cargo:rustc-link-lib={kind}=jpeg");
    println!("cargo:rustc-cfg=mtl_libjpeg");
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

/// Compiles in `MTL_C10D_LIBRARY_SIZES` ("Class=bytes" pairs, or "unmeasured: why") and
/// `MTL_C10D_BUILD_IDS` ("library=build id" pairs) for the start-up check.
fn record_library(lib_dir: &Path, nccl: bool) {
    let libraries: &[&str] = if nccl { &["libtorch_cpu.so", "libtorch_cuda.so"] } else { &["libtorch_cpu.so"] };
    let table = std::fs::read_to_string(C10D_SIZES).unwrap_or_else(|e| panic!("{C10D_SIZES}: {e}"));
    let looked_up = (|| -> Result<(String, String), String> {
        let (mut sizes, mut ids) = (String::new(), String::new());
        for lib in libraries {
            let id = build_id(&lib_dir.join(lib))?;
            let row = library_id::sizes_in_table(&table, lib, &id).ok_or_else(|| {
                format!("{lib} build id {id} is not in {C10D_SIZES}; scripts/c10d_sizes.sh measures it")
            })?;
            row.iter().for_each(|pair| sizes.push_str(&format!("{pair};")));
            ids.push_str(&format!("{lib}={id};"));
        }
        Ok((sizes, ids))
    })();
    let (sizes, ids) = looked_up.unwrap_or_else(|why| {
        println!("cargo:warning=c10d object sizes unknown ({why}); distributed runs will refuse to start");
        (format!("unmeasured: {why}"), String::new())
    });
    println!("cargo:rustc-env=MTL_C10D_LIBRARY_SIZES={sizes}");
    println!("cargo:rustc-env=MTL_C10D_BUILD_IDS={ids}");
    println!("cargo:rerun-if-changed={C10D_SIZES}");
    for lib in libraries {
        println!("cargo:rerun-if-changed={}", lib_dir.join(lib).display());
    }
}

/// The GNU build id in the PT_NOTE segments of a 64-bit little-endian ELF file, read from its
/// program headers (a few kilobytes of a library that may be gigabytes).
fn build_id(lib: &Path) -> Result<String, String> {
    let cannot = |e: std::io::Error| format!("{}: {e}", lib.display());
    let mut file = std::fs::File::open(lib).map_err(cannot)?;
    let mut read_at = |at: u64, len: usize| -> Result<Vec<u8>, String> {
        let mut buf = vec![0u8; len];
        file.seek(SeekFrom::Start(at)).and_then(|_| file.read_exact(&mut buf)).map_err(cannot)?;
        Ok(buf)
    };
    let header = read_at(0, 64)?;
    if &header[..4] != b"\x7fELF" || header[4] != 2 || header[5] != 1 {
        return Err(format!("{} is not a 64-bit little-endian ELF file", lib.display()));
    }
    let u16_at = |b: &[u8], at: usize| u16::from_le_bytes([b[at], b[at + 1]]) as usize;
    let u64_at = |b: &[u8], at: usize| u64::from_le_bytes(b[at..at + 8].try_into().expect("8 bytes"));
    let (phoff, phentsize, phnum) = (u64_at(&header, 0x20), u16_at(&header, 0x36), u16_at(&header, 0x38));
    let headers = read_at(phoff, phentsize * phnum)?;
    for ph in headers.chunks_exact(phentsize) {
        const PT_NOTE: u32 = 4;
        if u32::from_le_bytes(ph[..4].try_into().expect("4 bytes")) == PT_NOTE {
            let notes = read_at(u64_at(ph, 8), u64_at(ph, 32) as usize)?;
            if let Some(id) = library_id::from_notes(&notes) {
                return Ok(id);
            }
        }
    }
    Err(format!("{} has no build id", lib.display()))
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
