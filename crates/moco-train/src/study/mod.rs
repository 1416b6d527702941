//! The instability study of the paper as one command: a grid of short pretraining runs over
//! any configuration keys (learning rate, learned vs frozen patch projection, batch size,
//! depth, width, method, seed, ...), each with the kNN monitor at a fine interval and the
//! gradient monitor on, then a report ([`report`]) with the paper's figures, a table per
//! cell and per run, and the timing of spikes and dips ([`lag`]); the grid is [`grid`].
//!
//! A study directory holds `study.json` (the grid), `runs/NAME/` (one run directory each, with
//! `study_status.json` once the run has finished or diverged), and the report. Running the
//! same study again skips finished runs and resumes interrupted ones from their checkpoints.

mod figures;
pub mod grid;
pub mod lag;
pub mod report;
pub mod spread;

pub use grid::*;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

use burn::prelude::Device;

use crate::pretrain::{pretrain, RunOptions};
use crate::TrainError;

/// How to run a study.
#[derive(Clone, Debug, Default)]
pub struct StudyOptions {
    /// Set from elsewhere (Ctrl-C): the current run saves a checkpoint and the study stops.
    pub stop: Option<Arc<AtomicBool>>,
    /// No progress lines from the runs (the study's own lines stay).
    pub quiet: bool,
    /// The command that was run, recorded in the report.
    pub command: Option<String>,
    /// The machine each run records in its `metrics.jsonl` ([`crate::Machine::here`] when
    /// absent; give one to name the GPU and the build).
    pub machine: Option<crate::Machine>,
    /// Train at most this many runs now, then write the report (a long grid in parts: the
    /// runs go seed by seed, so the first parts cover every cell once).
    pub max_runs: Option<usize>,
}

/// What a study did in this invocation.
#[derive(Clone, Debug, Default)]
pub struct StudySummary {
    /// Runs trained (to the end or to divergence) now.
    pub ran: usize,
    /// Runs found finished and skipped.
    pub skipped: usize,
    /// Runs that diverged (now or before).
    pub diverged: usize,
    /// Stopped early by the stop flag.
    pub interrupted: bool,
    /// Runs still to train after this invocation (stopped by `max_runs` or the stop flag).
    pub left: usize,
    /// `report.md`, when written.
    pub report: Option<PathBuf>,
}

/// Runs (or continues) the study in `out` and writes its report. A study directory belongs to
/// one grid: running a different configuration into it is refused.
pub fn run_study(
    study: &StudyConfig,
    out: &Path,
    options: &StudyOptions,
    device: &Device,
) -> Result<StudySummary, TrainError> {
    let runs = study.runs().map_err(TrainError::Config)?;
    // One writer per study directory, as per run directory (each run takes its own too).
    let _lock = crate::run_lock::RunLock::acquire(out)?;
    std::fs::create_dir_all(out.join("runs"))
        .map_err(|e| TrainError::Io(format!("{}: {e}", out.display())))?;
    let study_path = out.join("study.json");
    if let Ok(text) = std::fs::read_to_string(&study_path) {
        let stored = StudyConfig::parse(&text, &study_path.display().to_string())?;
        if stored != *study {
            return Err(TrainError::Config(format!(
                "{} holds a different study ({}): choose another output directory, or run that study file",
                out.display(),
                study_path.display()
            )));
        }
    } else {
        let text = serde_json::to_string_pretty(study).expect("study");
        moco_models::write_atomic(&study_path, text.as_bytes())?;
    }
    let mut summary = StudySummary::default();
    let started = Instant::now();
    let (mut steps_done, mut steps_left) = (0u64, 0u64);
    let total_steps = |r: &StudyRun| r.config.schedule.max_steps.or(r.config.schedule.steps);
    for run in &runs {
        if run_status(&out.join("runs").join(&run.name)).is_none() {
            steps_left += total_steps(run).unwrap_or(0);
        }
    }
    for (i, run) in runs.iter().enumerate() {
        let dir = out.join("runs").join(&run.name);
        if let Some(status) = run_status(&dir) {
            summary.skipped += 1;
            summary.diverged += matches!(status, RunStatus::Diverged { .. }) as usize;
            println!(
                "[{}/{}] {}: already {}",
                i + 1,
                runs.len(),
                run.name,
                describe(&status)
            );
            continue;
        }
        let left_from = |i: usize| {
            runs[i..]
                .iter()
                .filter(|r| run_status(&out.join("runs").join(&r.name)).is_none())
                .count()
        };
        if options.max_runs.is_some_and(|m| summary.ran >= m) {
            summary.left = left_from(i);
            println!(
                "stopping after {} run(s) (--max-runs); {} left: run the same command again to continue",
                summary.ran, summary.left
            );
            break;
        }
        let resume = !crate::run_state::list_checkpoints(&dir).is_empty();
        let eta = if steps_done > 0 {
            let per_step = started.elapsed().as_secs_f64() / steps_done as f64;
            format!(
                ", study eta {}",
                crate::progress::format_eta(per_step * steps_left as f64)
            )
        } else {
            String::new()
        };
        println!(
            "[{}/{}] {}{}{}",
            i + 1,
            runs.len(),
            run.name,
            if resume { " (resuming)" } else { "" },
            eta
        );
        let run_options = RunOptions {
            resume,
            stop: options.stop.clone(),
            stop_after: None,
            quiet: options.quiet,
            machine: options.machine.clone(),
            ..Default::default()
        };
        let status = match pretrain(run.config.clone(), &dir, &run_options, device) {
            Ok(s) if s.interrupted => {
                summary.interrupted = true;
                summary.left = left_from(i);
                break;
            }
            Ok(s) => RunStatus::Complete { steps: s.steps },
            Err(TrainError::NonFinite { step, layer, .. }) => {
                summary.diverged += 1;
                RunStatus::Diverged { step, layer }
            }
            Err(e) => return Err(TrainError::Config(format!("run {}: {e}", run.name))),
        };
        println!(
            "[{}/{}] {}: {}",
            i + 1,
            runs.len(),
            run.name,
            describe(&status)
        );
        write_status(&dir, &status)?;
        summary.ran += 1;
        let planned = total_steps(run).unwrap_or(0);
        steps_done += planned;
        steps_left = steps_left.saturating_sub(planned);
        if options
            .stop
            .as_ref()
            .is_some_and(|s| s.load(Ordering::SeqCst))
        {
            summary.interrupted = true;
            summary.left = left_from(i + 1);
            break;
        }
    }
    summary.report = Some(report::write_report(
        out,
        study,
        options.command.as_deref(),
    )?);
    Ok(summary)
}

fn describe(status: &RunStatus) -> String {
    match status {
        RunStatus::Complete { steps } => format!("complete ({steps} steps)"),
        RunStatus::Diverged { step, layer } => {
            format!("diverged at step {step} (first non-finite gradient: {layer})")
        }
    }
}
