//! Links libtorch so that the binary finds it at run time and keeps CUDA.
//!
//! torch-sys tells the linker where libtorch is but gives the final binary no rpath, and the
//! linker's `--as-needed` drops `libtorch_cuda.so` because no symbol of it is referenced
//! directly: CUDA would then silently report unavailable (docs/DECISIONS.md, "Linking libtorch").
use std::path::Path;

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    let Ok(lib_dir) = std::env::var("DEP_TCH_LIBTORCH_LIB") else {
        println!("cargo:warning=DEP_TCH_LIBTORCH_LIB is not set; the binary may not find libtorch");
        return;
    };
    println!("cargo:rustc-link-arg=-Wl,-rpath,{lib_dir}");
    println!("cargo:rustc-link-arg=-Wl,--no-as-needed");
    println!("cargo:rustc-link-arg=-L{lib_dir}");
    if Path::new(&lib_dir).join("libtorch_cuda.so").exists() {
        println!("cargo:rustc-link-arg=-ltorch_cuda");
    }
    println!("cargo:rustc-link-arg=-ltorch");
    println!("cargo:rustc-link-arg=-Wl,--as-needed");
}
