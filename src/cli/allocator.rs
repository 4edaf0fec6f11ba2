//! glibc's allocator, told to keep freed memory for reuse.
//!
//! Why: by default glibc returns large blocks (above a dynamic `mmap` threshold) to the kernel on
//! `free` and trims the heap top, so the activation and gradient buffers a training step frees
//! and allocates again are page-faulted and zeroed afresh every step (the cost is measured in
//! docs/results/BENCHMARKS.md, "Where the time goes"). With blocks up to glibc's maximum
//! threshold served from the heap and no trimming, freed buffers are reused as they are. Peak
//! memory is the same; the resident set no longer shrinks between steps; results do not change.
//!
//! A user who set glibc's own knobs (`GLIBC_TUNABLES`, `MALLOC_MMAP_THRESHOLD_`,
//! `MALLOC_TRIM_THRESHOLD_`) keeps them.

/// glibc's documented maximum `M_MMAP_THRESHOLD` on 64-bit targets (`DEFAULT_MMAP_THRESHOLD_MAX`).
const MMAP_THRESHOLD: i32 = 32 << 20;
/// Free memory at the heap's top kept before trimming (1 GiB: in practice, never trim).
const TRIM_THRESHOLD: i32 = 1 << 30;
const USER_KNOBS: [&str; 3] = ["GLIBC_TUNABLES", "MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_"];

/// Whether to tune: not when the user set glibc's allocator variables.
fn wanted(var: impl Fn(&str) -> Option<std::ffi::OsString>) -> bool {
    USER_KNOBS.iter().all(|k| var(k).is_none())
}

/// Applies the settings unless the user set glibc's own; returns whether glibc accepted them
/// (false where they were skipped or this is not glibc).
pub fn keep_freed_memory() -> bool {
    wanted(|k| std::env::var_os(k)) && apply()
}

#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn apply() -> bool {
    // SAFETY: mallopt only changes allocator parameters; any value is checked by glibc, which
    // returns 0 for one it refuses.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, MMAP_THRESHOLD) == 1
            && libc::mallopt(libc::M_TRIM_THRESHOLD, TRIM_THRESHOLD) == 1
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn apply() -> bool {
    false
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::ffi::OsString;

    #[test]
    fn the_users_own_allocator_settings_win() {
        assert!(wanted(|_| None));
        for knob in USER_KNOBS {
            assert!(!wanted(|k| (k == knob).then(|| OsString::from("1"))), "{knob}");
        }
    }

    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    #[test]
    fn glibc_accepts_the_settings() {
        assert!(apply(), "mallopt refused the thresholds");
        // Allocation still works after the change, at and above the threshold.
        for size in [1 << 20, MMAP_THRESHOLD as usize, 2 * MMAP_THRESHOLD as usize] {
            let v = vec![7u8; size];
            assert_eq!(v[size - 1], 7);
        }
    }
}
