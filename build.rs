//! Links libtorch so that the binary finds it at run time and keeps CUDA, and builds the one
//! C++ function mtl adds to tch's (src/model/trace_tuple.cpp).
//!
//! torch-sys tells the linker where libtorch is but gives the final binary no rpath, and the
//! linker's `--as-needed` drops `libtorch_cuda.so` because no symbol of it is referenced
//! directly: CUDA would then silently report unavailable (docs/DECISIONS.md, "Linking libtorch").
//!
//! It also records the Python of the virtualenv the build ran in (scripts/env.sh sets
//! `VIRTUAL_ENV`): `mtl-train export --onnx` runs it when no other Python is named.
use std::path::{Path, PathBuf};

const TRACE_TUPLE: &str = "src/model/trace_tuple.cpp";

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-changed={TRACE_TUPLE}");
    println!("cargo:rerun-if-env-changed=VIRTUAL_ENV");
    println!("cargo:rerun-if-env-changed=LIBTORCH_CXX11_ABI");
    let python = std::env::var("VIRTUAL_ENV").ok().map(|venv| Path::new(&venv).join("bin").join("python"));
    if let Some(python) = &python {
        println!("cargo:rustc-env=MTL_BUILD_PYTHON={}", python.display());
    }
    let Ok(lib_dir) = std::env::var("DEP_TCH_LIBTORCH_LIB") else {
        println!("cargo:warning=DEP_TCH_LIBTORCH_LIB is not set; the binary may not find libtorch");
        return;
    };
    build_trace_tuple(Path::new(&lib_dir), python.as_deref());
    println!("cargo:rustc-link-arg=-Wl,-rpath,{lib_dir}");
    println!("cargo:rustc-link-arg=-Wl,--no-as-needed");
    println!("cargo:rustc-link-arg=-L{lib_dir}");
    if Path::new(&lib_dir).join("libtorch_cuda.so").exists() {
        println!("cargo:rustc-link-arg=-ltorch_cuda");
    }
    println!("cargo:rustc-link-arg=-ltorch");
    println!("cargo:rustc-link-arg=-Wl,--as-needed");
}

/// Compiles the tuple-output end of tracing against libtorch's headers (next to its `lib/`,
/// in a PyTorch wheel as in a libtorch archive), with the C++ ABI libtorch was built with.
fn build_trace_tuple(lib_dir: &Path, python: Option<&Path>) {
    let include: PathBuf = lib_dir.parent().expect("libtorch's lib/ has a parent").join("include");
    cc::Build::new()
        .cpp(true)
        .file(TRACE_TUPLE)
        .include(&include)
        .include(include.join("torch/csrc/api/include"))
        .flag("-std=c++17")
        .flag(format!("-D_GLIBCXX_USE_CXX11_ABI={}", cxx11_abi(python)))
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
