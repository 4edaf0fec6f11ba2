//! The start-up check that the c10d objects this build constructs have the library's layout.
//!
//! The shim allocates `TCPStore`, `ProcessGroupGloo` (and its `Options`), `ProcessGroupNCCL`
//! with the sizes its headers give, and the library's constructors fill them in. The torch
//! wheel ships no gloo headers, so csrc/dist/gloo_shim/ declares what ProcessGroupGloo.hpp
//! names; should a torch upgrade make those declarations (or the headers) disagree with the
//! compiled library, the constructors would write past the allocation. build.rs looks the
//! library's sizes up by its build id in csrc/dist/c10d_sizes.txt (measured once per torch
//! release); here they are compared with what the shim was compiled with, and the build id
//! with the library actually loaded.
use super::ffi;
use crate::user_bail;
use std::collections::BTreeMap;

/// `Name=bytes` pairs from `;`- or newline-separated text.
fn pairs(text: &str) -> BTreeMap<&str, &str> {
    text.split([';', '\n']).filter_map(|p| p.split_once('=')).collect()
}

/// Refuses (one line) when the compiled sizes differ from the library's, or the loaded
/// libtorch is not the one they were measured on.
pub fn check() -> anyhow::Result<()> {
    let measured = env!("MTL_C10D_LIBRARY_SIZES");
    sizes_known(measured)?;
    // SAFETY: the shim returns a static NUL-terminated string.
    let compiled = unsafe { std::ffi::CStr::from_ptr(ffi::mtl_dist_compiled_sizes()) }.to_string_lossy().into_owned();
    compare(&pairs(&compiled), &pairs(measured))?;
    for (lib, id) in pairs(env!("MTL_C10D_BUILD_IDS")) {
        match loaded_build_id(lib) {
            Some(now) if now != id => user_bail!(
                "distributed training: {lib} (build id {now}) is not the libtorch this binary was built and checked \
                 against (build id {id}); rebuild it (cargo build --release)"
            ),
            _ => {}
        }
    }
    Ok(())
}

/// Refuses a build whose libtorch was not in the table of known builds (build.rs then compiles
/// in "unmeasured: why").
fn sizes_known(measured: &str) -> anyhow::Result<()> {
    if let Some(why) = measured.strip_prefix("unmeasured: ") {
        user_bail!("distributed training: this libtorch's c10d object sizes are unknown ({why})");
    }
    Ok(())
}

/// Every class the library was measured for must have the compiled size.
fn compare(compiled: &BTreeMap<&str, &str>, library: &BTreeMap<&str, &str>) -> anyhow::Result<()> {
    for (class, bytes) in library {
        match compiled.get(class) {
            Some(ours) if ours == bytes => {}
            ours => user_bail!(
                "distributed training: libtorch's c10d::{class} is {bytes} bytes but this build's headers make it {}; \
                 the c10d shim (csrc/dist/) does not match this torch and must be updated",
                ours.map(|s| format!("{s} bytes")).unwrap_or_else(|| "absent".into())
            ),
        }
    }
    Ok(())
}

/// The GNU build id of the loaded shared library whose file name is `name`, in hex.
fn loaded_build_id(name: &str) -> Option<String> {
    struct Search<'a> {
        name: &'a str,
        found: Option<String>,
    }
    unsafe extern "C" fn visit(info: *mut libc::dl_phdr_info, _size: usize, data: *mut libc::c_void) -> libc::c_int {
        // SAFETY: dl_iterate_phdr passes a valid info record and our own `Search`.
        let (info, search) = unsafe { (&*info, &mut *(data as *mut Search)) };
        if info.dlpi_name.is_null() {
            return 0;
        }
        // SAFETY: a NUL-terminated path owned by the dynamic loader.
        let path = unsafe { std::ffi::CStr::from_ptr(info.dlpi_name) }.to_string_lossy();
        if path.rsplit('/').next() != Some(search.name) {
            return 0;
        }
        for i in 0..info.dlpi_phnum as usize {
            // SAFETY: the loader's program headers, `dlpi_phnum` of them.
            let ph = unsafe { &*info.dlpi_phdr.add(i) };
            if ph.p_type != libc::PT_NOTE {
                continue;
            }
            let start = (info.dlpi_addr + ph.p_vaddr) as usize;
            // SAFETY: a PT_NOTE segment of a loaded object is mapped and readable.
            let bytes = unsafe { std::slice::from_raw_parts(start as *const u8, ph.p_memsz as usize) };
            if let Some(id) = super::library_id::from_notes(bytes) {
                search.found = Some(id);
                return 1;
            }
        }
        0
    }
    let mut search = Search { name, found: None };
    // SAFETY: the callback only reads what the loader hands it and writes into `search`.
    unsafe { libc::dl_iterate_phdr(Some(visit), (&mut search as *mut Search).cast()) };
    search.found
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_compiled_here_match_the_library_this_build_measured() {
        check().expect("the c10d shim matches the libtorch it links");
    }

    #[test]
    fn an_unknown_libtorch_build_refuses_in_one_line() {
        let why = "libtorch_cpu.so build id ab12 is not in csrc/dist/c10d_sizes.txt; scripts/c10d_sizes.sh measures it";
        let msg = crate::error::one_line_user_error(sizes_known(&format!("unmeasured: {why}")).unwrap_err());
        assert!(msg.contains("unknown") && msg.contains("ab12") && !msg.contains('\n'), "{msg}");
        assert!(sizes_known("TCPStore=216;").is_ok());
    }

    #[test]
    fn a_size_mismatch_is_one_line_naming_the_class() {
        let compiled = pairs("TCPStore=216;ProcessGroupGloo=488");
        let err = compare(&compiled, &pairs("TCPStore=216;ProcessGroupGloo=496")).unwrap_err();
        let msg = crate::error::one_line_user_error(err);
        assert!(msg.contains("c10d::ProcessGroupGloo is 496 bytes") && msg.contains("488 bytes"), "{msg}");
        assert!(compare(&pairs("TCPStore=216"), &pairs("ProcessGroupNCCL=1112")).is_err());
    }

    #[test]
    fn the_loaded_libtorch_has_the_build_id_measured_at_build_time() {
        let ids = pairs(env!("MTL_C10D_BUILD_IDS"));
        let want = ids.get("libtorch_cpu.so").expect("build.rs recorded libtorch_cpu.so");
        // Touch libtorch so that it is loaded into the test process.
        let _ = tch::Tensor::zeros([1], (tch::Kind::Float, tch::Device::Cpu));
        assert_eq!(loaded_build_id("libtorch_cpu.so").as_deref(), Some(*want));
    }

    #[test]
    fn build_ids_are_read_from_note_records() {
        let mut notes = Vec::new();
        for (name, kind, desc) in [(&b"XYZ\0"[..], 1u32, &[9u8, 9, 9][..]), (b"GNU\0", 3, &[0xab, 0x01, 0xff, 0x10])] {
            notes.extend((name.len() as u32).to_ne_bytes());
            notes.extend((desc.len() as u32).to_ne_bytes());
            notes.extend(kind.to_ne_bytes());
            notes.extend(name);
            notes.extend(desc);
            notes.resize(notes.len().div_ceil(4) * 4, 0);
        }
        assert_eq!(crate::dist::library_id::from_notes(&notes).as_deref(), Some("ab01ff10"));
        assert_eq!(crate::dist::library_id::from_notes(&notes[..20]), None);
    }
}
