//! What signals do to a training run or a study.
//!
//! - The first SIGINT (Ctrl-C) or SIGTERM (what SLURM, Kubernetes and systemd send before
//!   they kill a job) lets the step in flight finish, writes a checkpoint and stops; the
//!   command then exits with [`STOPPED_TO_RESUME`]. Under MPI every process stops at the same
//!   step.
//! - A second SIGINT or SIGTERM exits at once, without a checkpoint (status 130 or 143, as
//!   without a handler).
//! - SIGUSR1 (SLURM's `--signal=USR1@SECONDS`) writes a checkpoint after the step in flight
//!   and goes on.
//!
//! The handlers are installed once per process ([`RunSignals::process`]); on systems without
//! Unix signals only Ctrl-C is handled.

use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};

/// The exit status of a run that a signal stopped after its checkpoint: `EX_TEMPFAIL`, "try
/// again": the same command line with `--resume auto` continues it.
pub const STOPPED_TO_RESUME: u8 = 75;

static SIGNALS: OnceLock<RunSignals> = OnceLock::new();

/// The flags the signal handlers set, for the trainer to read between steps.
#[derive(Clone, Debug, Default)]
pub struct RunSignals {
    /// Set by the first SIGINT or SIGTERM: checkpoint after the step in flight, then stop.
    pub stop: Arc<AtomicBool>,
    /// Set by SIGUSR1: checkpoint after the step in flight and go on (the trainer clears it).
    pub checkpoint: Arc<AtomicBool>,
}

impl RunSignals {
    /// This process's flags, with the handlers installed on the first call.
    pub fn process() -> &'static RunSignals {
        SIGNALS.get_or_init(|| {
            let signals = RunSignals::default();
            if let Err(e) = install(&signals) {
                eprintln!("warning: signal handlers not installed ({e}): a signal ends the run without a checkpoint");
            }
            signals
        })
    }

    /// Whether a SIGINT or SIGTERM asked this process to stop.
    pub fn stop_requested(&self) -> bool {
        self.stop.load(Ordering::SeqCst)
    }
}

/// The exit status of a command that ended without an error: [`STOPPED_TO_RESUME`] when a
/// signal stopped its run, else success.
pub fn exit_status() -> ExitCode {
    match SIGNALS.get() {
        Some(signals) if signals.stop_requested() => ExitCode::from(STOPPED_TO_RESUME),
        _ => ExitCode::SUCCESS,
    }
}

/// What the first SIGINT or SIGTERM does: stop after a checkpoint, or exit when it is the
/// second.
fn on_stop(signals: &RunSignals, name: &str, number: i32) {
    if signals.stop.swap(true, Ordering::SeqCst) {
        eprintln!("second {name}: exiting now, without a checkpoint");
        std::process::exit(128 + number);
    }
    eprintln!(
        "{name}: writing a checkpoint after this step, then stopping (send it again to exit now)"
    );
}

#[cfg(unix)]
fn install(signals: &RunSignals) -> std::io::Result<()> {
    use signal_hook::consts::{SIGINT, SIGTERM, SIGUSR1};
    let mut incoming = signal_hook::iterator::Signals::new([SIGINT, SIGTERM, SIGUSR1])?;
    let signals = signals.clone();
    std::thread::Builder::new()
        .name("moco-signals".into())
        .spawn(move || {
            for number in incoming.forever() {
                match number {
                    SIGUSR1 => {
                        signals.checkpoint.store(true, Ordering::SeqCst);
                        eprintln!("SIGUSR1: writing a checkpoint after this step, then going on");
                    }
                    SIGTERM => on_stop(&signals, "SIGTERM", number),
                    _ => on_stop(&signals, "Ctrl-C", number),
                }
            }
        })?;
    Ok(())
}

#[cfg(not(unix))]
fn install(signals: &RunSignals) -> std::io::Result<()> {
    let signals = signals.clone();
    ctrlc::set_handler(move || on_stop(&signals, "Ctrl-C", 2)).map_err(std::io::Error::other)
}
