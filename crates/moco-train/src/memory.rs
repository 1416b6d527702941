//! The memory a run holds, for the speed reports: the process's resident memory (on the GPU
//! backends of a unified-memory device such as Mesa's lavapipe, device memory is part of it);
//! and how the process keeps the memory a training step frees for the next step.

/// The process's resident set, MiB; `None` where the system does not report it (Linux reports
/// it in `/proc/self/status`).
pub fn resident_mib() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let kib: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))?
        .trim()
        .strip_suffix("kB")?
        .trim()
        .parse()
        .ok()?;
    Some(kib / 1024.0)
}

/// Keeps the memory a training step frees inside the process, for the next step to reuse.
///
/// A CPU step allocates and frees the same large buffers every step (activations, gradients).
/// glibc's allocator hands each buffer over its dynamic threshold back to the kernel when it
/// is freed, so the next step takes page faults and zeroed pages for every one of them again:
/// about a quarter of a ViT-Tiny step on 2 cores (docs/performance.md). This raises the
/// threshold to 32 MiB (glibc's largest) and stops the heap from shrinking, so buffers up to
/// that size are reused; peak memory is unchanged, and memory freed after the run stays with
/// the process. Called by [`crate::Trainer::run`] and the command line; a program that trains
/// with its own loop calls it once at start. Returns whether the allocator accepted it (false
/// on systems other than Linux with glibc, where it does nothing).
pub fn keep_freed_memory() -> bool {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        static ACCEPTED: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
        *ACCEPTED.get_or_init(|| {
            // SAFETY: `mallopt` only sets allocator parameters; both values are in range.
            unsafe {
                libc::mallopt(libc::M_MMAP_THRESHOLD, 32 << 20) == 1
                    && libc::mallopt(libc::M_TRIM_THRESHOLD, i32::MAX) == 1
            }
        })
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    {
        false
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn freed_memory_is_kept_on_linux_with_glibc() {
        let accepted = super::keep_freed_memory();
        assert_eq!(accepted, cfg!(all(target_os = "linux", target_env = "gnu")));
        assert_eq!(
            super::keep_freed_memory(),
            accepted,
            "a second call changes nothing"
        );
    }

    #[test]
    fn resident_memory_is_reported_on_linux() {
        if cfg!(target_os = "linux") {
            let before = super::resident_mib().unwrap();
            let block = vec![1u8; 64 << 20];
            let after = super::resident_mib().unwrap();
            assert!(
                before > 0.0 && after >= before + 60.0,
                "{before} → {after} MiB"
            );
            drop(block);
        }
    }
}
