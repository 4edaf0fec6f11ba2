//! c10d's TCPStore: the rendezvous every rank connects to (rank 0 hosts it, or torchrun's agent
//! does), used for small control values only: heartbeats, the step to stop after, a rank's
//! failure. Tensors never go through it; they go through the process group's collectives.
use super::ffi;
use std::ffi::{c_char, c_int, CString};
use std::time::Duration;

pub struct Store {
    ptr: *mut ffi::Store,
}

// SAFETY: c10d's TCPStore serialises its client operations internally; the handle is only
// freed on drop, by its single owner.
unsafe impl Send for Store {}
unsafe impl Sync for Store {}

fn key(k: &str) -> CString {
    CString::new(k).expect("store keys have no NUL")
}

fn ok(rc: c_int) -> anyhow::Result<()> {
    if rc == 0 {
        Ok(())
    } else {
        Err(anyhow::anyhow!(ffi::last_error()))
    }
}

/// Takes ownership of a malloc'd buffer from the shim.
fn take_bytes(ptr: *mut c_char, len: usize) -> String {
    // SAFETY: the shim returned `len` initialised bytes at `ptr`, allocated with malloc.
    let bytes = unsafe { std::slice::from_raw_parts(ptr as *const u8, len) }.to_vec();
    // SAFETY: freed once, with the shim's free.
    unsafe { ffi::mtl_dist_free(ptr.cast()) };
    String::from_utf8_lossy(&bytes).into_owned()
}

impl Store {
    /// Connects to (or, with `host_it`, starts) the store at `host:port`. `participants`: the
    /// number of ranks taking part (the host waits for all of them), or 0 for an extra client.
    /// The error is the shim's message (see `super::launch` for what the user gets).
    pub fn connect(
        host: &str,
        port: u16,
        host_it: bool,
        participants: usize,
        timeout: Duration,
    ) -> anyhow::Result<Self> {
        let h = CString::new(host).map_err(|_| anyhow::anyhow!("host name with NUL"))?;
        let ms = timeout.as_millis().min(i64::MAX as u128) as i64;
        // SAFETY: a valid C string; the shim copies it.
        let ptr = unsafe { ffi::mtl_store_connect(h.as_ptr(), port, c_int::from(host_it), participants as c_int, ms) };
        if ptr.is_null() {
            anyhow::bail!(ffi::last_error());
        }
        Ok(Self { ptr })
    }

    pub(super) fn raw(&self) -> *mut ffi::Store {
        self.ptr
    }

    pub fn set(&self, k: &str, value: &str) -> anyhow::Result<()> {
        let k = key(k);
        // SAFETY: valid pointers for the duration of the call.
        ok(unsafe { ffi::mtl_store_set(self.ptr, k.as_ptr(), value.as_ptr().cast(), value.len()) })
    }

    /// The value of `k`, waiting for it up to the store's timeout.
    pub fn get(&self, k: &str) -> anyhow::Result<String> {
        let k = key(k);
        let (mut ptr, mut len) = (std::ptr::null_mut(), 0usize);
        // SAFETY: valid pointers; on success the shim fills both out-parameters.
        ok(unsafe { ffi::mtl_store_get(self.ptr, k.as_ptr(), &mut ptr, &mut len) })?;
        Ok(take_bytes(ptr, len))
    }

    /// Adds `delta` to the counter `k` (created at 0) and returns its new value.
    pub fn add(&self, k: &str, delta: i64) -> anyhow::Result<i64> {
        let k = key(k);
        let mut out = 0i64;
        // SAFETY: valid pointers for the duration of the call.
        ok(unsafe { ffi::mtl_store_add(self.ptr, k.as_ptr(), delta, &mut out) })?;
        Ok(out)
    }

    pub fn contains(&self, k: &str) -> anyhow::Result<bool> {
        let k = key(k);
        let mut exists: c_int = 0;
        // SAFETY: valid pointers for the duration of the call.
        ok(unsafe { ffi::mtl_store_check(self.ptr, k.as_ptr(), &mut exists) })?;
        Ok(exists != 0)
    }

    /// Sets `k` to `value` unless it is set already; returns the value it holds afterwards
    /// (the first writer's), the same on every rank.
    pub fn set_once(&self, k: &str, value: &str) -> anyhow::Result<String> {
        let k = key(k);
        let (mut ptr, mut len) = (std::ptr::null_mut(), 0usize);
        // SAFETY: valid pointers; on success the shim fills both out-parameters.
        ok(unsafe {
            ffi::mtl_store_set_once(self.ptr, k.as_ptr(), value.as_ptr().cast(), value.len(), &mut ptr, &mut len)
        })?;
        Ok(take_bytes(ptr, len))
    }
}

impl Drop for Store {
    fn drop(&mut self) {
        // SAFETY: the handle came from mtl_store_connect and is freed once.
        unsafe { ffi::mtl_store_free(self.ptr) }
    }
}
