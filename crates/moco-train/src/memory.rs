//! The memory a run holds, for the speed reports: the process's resident memory (on the GPU
//! backends of a unified-memory device such as Mesa's lavapipe, device memory is part of it).

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

#[cfg(test)]
mod tests {
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
