//! The shim's C interface (csrc/dist/mtl_dist.h), as build.rs compiles it.
use std::ffi::{c_char, c_int, c_void};
use torch_sys::C_tensor;

#[repr(C)]
pub struct Store {
    _private: [u8; 0],
}

#[repr(C)]
pub struct Group {
    _private: [u8; 0],
}

pub type FatalFn = extern "C" fn(what: *const c_char, message: *const c_char);

extern "C" {
    pub fn mtl_dist_last_error() -> *const c_char;
    pub fn mtl_dist_set_fatal_handler(handler: FatalFn);

    pub fn mtl_store_connect(
        host: *const c_char,
        port: u16,
        is_server: c_int,
        wait_workers: c_int,
        timeout_ms: i64,
    ) -> *mut Store;
    pub fn mtl_store_free(store: *mut Store);
    pub fn mtl_store_set(store: *mut Store, key: *const c_char, value: *const c_char, len: usize) -> c_int;
    pub fn mtl_store_get(store: *mut Store, key: *const c_char, value: *mut *mut c_char, len: *mut usize) -> c_int;
    pub fn mtl_store_add(store: *mut Store, key: *const c_char, delta: i64, result: *mut i64) -> c_int;
    pub fn mtl_store_check(store: *mut Store, key: *const c_char, exists: *mut c_int) -> c_int;
    pub fn mtl_store_set_once(
        store: *mut Store,
        key: *const c_char,
        desired: *const c_char,
        len: usize,
        current: *mut *mut c_char,
        current_len: *mut usize,
    ) -> c_int;
    pub fn mtl_dist_free(p: *mut c_void);

    pub fn mtl_group_new(
        store: *mut Store,
        prefix: *const c_char,
        backend: *const c_char,
        rank: c_int,
        world: c_int,
        device_index: c_int,
        timeout_ms: i64,
    ) -> *mut Group;
    pub fn mtl_group_all_reduce(group: *mut Group, tensor: *mut C_tensor, op: c_int);
    pub fn mtl_group_broadcast(group: *mut Group, tensor: *mut C_tensor, root: c_int);
    pub fn mtl_group_all_gather(group: *mut Group, outputs: *const *mut C_tensor, input: *mut C_tensor);
    pub fn mtl_group_barrier(group: *mut Group);
    pub fn mtl_group_all_reduce_autograd(group: *mut Group, input: *mut C_tensor) -> *mut C_tensor;

    pub fn mtl_dist_set_log_level(level: c_int);
    pub fn mtl_dist_has_nccl() -> c_int;
    pub fn mtl_dist_compiled_sizes() -> *const c_char;
}

/// The message of this thread's last failed shim call.
pub fn last_error() -> String {
    // SAFETY: the shim returns a NUL-terminated string owned by this thread, valid until the
    // thread's next call; it is copied at once.
    unsafe { std::ffi::CStr::from_ptr(mtl_dist_last_error()) }.to_string_lossy().into_owned()
}
