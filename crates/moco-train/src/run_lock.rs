//! One writer per run directory: an exclusive operating-system lock on `RUN_DIR/.writer.lock`,
//! held for as long as a run (or a study) writes the directory.
//!
//! A second writer is refused with the holder's process id and host, which the holder writes
//! into the file. The kernel releases the lock when the holder's process ends, however it
//! ends, so a killed run never blocks the next one. Readers (`knn`, `plot`, `export`, …) take
//! no lock.

use std::fs::{File, OpenOptions, TryLockError};
use std::io::{Read, Seek, Write};
use std::path::{Path, PathBuf};

use crate::TrainError;

/// The lock file's name inside a run directory.
pub const LOCK_FILE: &str = ".writer.lock";

/// The exclusive right to write a run directory; released when dropped.
#[derive(Debug)]
pub struct RunLock {
    _file: File,
    path: PathBuf,
}

impl RunLock {
    /// Creates `dir` if needed and locks it for this process, or says who holds it.
    pub fn acquire(dir: &Path) -> Result<RunLock, TrainError> {
        std::fs::create_dir_all(dir)
            .map_err(|e| TrainError::Io(format!("{}: cannot create: {e}", dir.display())))?;
        let path = dir.join(LOCK_FILE);
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(|e| TrainError::Io(format!("{}: cannot open: {e}", path.display())))?;
        match file.try_lock() {
            Ok(()) => {}
            Err(TryLockError::WouldBlock) => {
                let mut holder = String::new();
                let _ = file.read_to_string(&mut holder);
                return Err(TrainError::Config(format!(
                    "{} is being written by another run ({}): wait for it to end, or choose another --out",
                    dir.display(),
                    describe(&holder)
                )));
            }
            Err(TryLockError::Error(e)) => {
                return Err(TrainError::Io(format!(
                    "{}: cannot lock: {e}",
                    path.display()
                )))
            }
        }
        let holder = format!(
            "pid {}\nhost {}\nsince {}\n",
            std::process::id(),
            host_name(),
            unix_seconds()
        );
        let written = file
            .set_len(0)
            .and_then(|()| file.rewind())
            .and_then(|()| file.write_all(holder.as_bytes()));
        written.map_err(|e| TrainError::Io(format!("{}: cannot write: {e}", path.display())))?;
        Ok(RunLock { _file: file, path })
    }

    /// The lock file.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// "process 1234 on host node7, for 312 s" from the holder's lines.
fn describe(holder: &str) -> String {
    let field = |name: &str| {
        holder
            .lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
            .map(str::trim)
    };
    match (field("pid"), field("host")) {
        (Some(pid), Some(host)) => {
            let since = field("since")
                .and_then(|s| s.parse::<u64>().ok())
                .map(|s| format!(", for {} s", unix_seconds().saturating_sub(s)))
                .unwrap_or_default();
            format!("process {pid} on host {host}{since}")
        }
        _ => "a process that has not yet said who it is".into(),
    }
}

fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .or_else(|| std::env::var("COMPUTERNAME").ok())
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "unknown".into())
}

fn unix_seconds() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}
