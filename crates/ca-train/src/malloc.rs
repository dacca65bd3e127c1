//! glibc malloc settings for training processes.
//!
//! libtorch allocates every activation and gradient with `posix_memalign`. With glibc's defaults
//! the heap top is returned to the kernel whenever more than the (dynamic) trim threshold is
//! free, so the next step faults the same pages in again: a 6-step Double InfoGAN 32x32 timing
//! run (2 threads) made ~700,000 page faults at 1.35 s per step; with the mmap threshold at
//! 32 MiB and the trim threshold at 256 MiB, ~180,000 at 1.25 s, peak RSS within 6% (`perf stat`
//! of the step timer; `benches/RESULTS.md`).
//! The cost is that up to 256 MiB of freed heap stays mapped to the process.
//!
//! [`tune_for_training`] applies the two settings unless the user set any glibc malloc setting
//! (`GLIBC_TUNABLES`, `MALLOC_TRIM_THRESHOLD_`, `MALLOC_MMAP_THRESHOLD_`) or `CA_MALLOC_TUNING=0`.
#![allow(unsafe_code)]

/// The mmap threshold set by [`tune_for_training`]: allocations below it come from the heap.
pub const MMAP_THRESHOLD: usize = 32 << 20;
/// The trim threshold set by [`tune_for_training`]: free heap kept before returning it to the OS.
pub const TRIM_THRESHOLD: usize = 256 << 20;

/// What [`tune_for_training`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tuning {
    /// Both thresholds were set.
    Applied,
    /// The user's environment sets malloc itself (or `CA_MALLOC_TUNING=0`): left alone.
    LeftToUser,
    /// Not glibc, or glibc refused a value.
    Unavailable,
}

/// True when the environment asks to leave malloc alone.
fn user_configured(get: impl Fn(&str) -> Option<String>) -> bool {
    [
        "GLIBC_TUNABLES",
        "MALLOC_TRIM_THRESHOLD_",
        "MALLOC_MMAP_THRESHOLD_",
    ]
    .iter()
    .any(|k| get(k).is_some())
        || get("CA_MALLOC_TUNING").is_some_and(|v| v.trim() == "0")
}

/// Sets glibc's mmap and trim thresholds for a process that trains or evaluates models. Call it
/// once, early in `main`, before other threads allocate. Returns what it did.
pub fn tune_for_training() -> Tuning {
    if user_configured(|k| std::env::var(k).ok()) {
        return Tuning::LeftToUser;
    }
    set_thresholds()
}

#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn set_thresholds() -> Tuning {
    // SAFETY: mallopt only changes allocator parameters; it is called with valid option codes
    // and in-range values, and glibc serialises it with the arena lock.
    let ok = unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, MMAP_THRESHOLD as libc::c_int) == 1
            && libc::mallopt(libc::M_TRIM_THRESHOLD, TRIM_THRESHOLD as libc::c_int) == 1
    };
    if ok {
        Tuning::Applied
    } else {
        Tuning::Unavailable
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn set_thresholds() -> Tuning {
    Tuning::Unavailable
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn user_settings_win() {
        let env = |pairs: &'static [(&'static str, &'static str)]| {
            move |k: &str| {
                pairs
                    .iter()
                    .find(|(n, _)| *n == k)
                    .map(|(_, v)| v.to_string())
            }
        };
        assert!(!user_configured(env(&[])));
        assert!(user_configured(env(&[(
            "GLIBC_TUNABLES",
            "glibc.malloc.trim_threshold=1"
        )])));
        assert!(user_configured(env(&[("MALLOC_TRIM_THRESHOLD_", "0")])));
        assert!(user_configured(env(&[("CA_MALLOC_TUNING", "0")])));
        assert!(!user_configured(env(&[("CA_MALLOC_TUNING", "1")])));
    }

    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    #[test]
    fn glibc_accepts_the_thresholds() {
        // mallopt returns 0 for a refused value (e.g. an mmap threshold above HEAP_MAX / 2).
        assert_eq!(set_thresholds(), Tuning::Applied);
    }
}
