//! `moco study` and the `stability_study` example: the paper's instability study as a grid of
//! short runs with a report (see [`moco_train::study`]).

use std::path::PathBuf;

use burn::prelude::*;
use clap::Args;
use moco_train::study::BuiltinStudy;
use moco_train::{run_study, StudyConfig, StudyOptions, StudySummary};

use crate::device::{dispatch, BackendJob, DeviceSpec};

/// Flags of `moco study`.
#[derive(Args, Debug, Clone)]
pub struct StudyArgs {
    /// The study file (JSON); the built-in CPU study when absent (see --builtin).
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// A built-in study: `cpu` (Fashion-MNIST, small ViT, four learning rates; 8 minutes on 2
    /// cores of an AMD EPYC, Zen 5, 2026-12-06), `cpu-seeds` (its two unstable rates with three
    /// seeds and batch sizes 128 and 64: 24 runs of the same kind), `cpu-depth`,
    /// `cpu-width`, `cpu-batch` (depth 2/4/8, width 64/128/256, batch 64/128/256 at a fixed
    /// peak rate: 36 runs each, several hours; run them in parts, finished runs are kept) or
    /// `gpu` (ViT-S on an image folder given with --data).
    #[arg(long, default_value = "cpu")]
    pub builtin: BuiltinStudy,
    /// Print the study file and exit (start your own from it).
    #[arg(long)]
    pub print_config: bool,
    /// Data for every run (sets `data` in the overrides).
    #[arg(long)]
    pub data: Option<String>,
    /// The study directory; running again continues it.
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Redraw the report of the runs already in --out with the study's thresholds; no training.
    #[arg(long)]
    pub report_only: bool,
    /// Train at most this many runs now, then write the report (run a long grid in parts; the
    /// runs go seed by seed, so a first part of one seed's size covers every cell once).
    #[arg(long)]
    pub max_runs: Option<usize>,
    /// Only the study's lines, not each run's progress.
    #[arg(long)]
    pub quiet: bool,
    /// The device to run on (the help lists this build's).
    #[arg(help = crate::device::device_help(), long, default_value = "auto")]
    pub device: DeviceSpec,
}

struct StudyJob {
    study: StudyConfig,
    out: PathBuf,
    options: StudyOptions,
}

impl BackendJob for StudyJob {
    type Output = Result<StudySummary, String>;
    fn run(self, device: Device) -> Self::Output {
        run_study(&self.study, &self.out, &self.options, &device).map_err(|e| e.to_string())
    }
}

impl StudyArgs {
    /// The study these flags describe.
    pub fn study(&self) -> Result<StudyConfig, String> {
        let mut study = match &self.config {
            Some(path) => StudyConfig::load(path).map_err(|e| e.to_string())?,
            None => self.builtin.config(),
        };
        if let Some(d) = &self.data {
            study
                .overrides
                .insert("data".into(), serde_json::Value::from(d.clone()));
        }
        study.runs()?;
        Ok(study)
    }
}

/// Runs `moco study` (or the example) with `args`.
pub fn run_study_cli(args: &StudyArgs) -> Result<(), String> {
    let study = args.study()?;
    if args.print_config {
        println!(
            "{}",
            serde_json::to_string_pretty(&study).map_err(|e| e.to_string())?
        );
        return Ok(());
    }
    let out = args.out.clone().unwrap_or_else(|| {
        PathBuf::from("runs").join(if args.config.is_none() {
            format!("study-{}", args.builtin.name())
        } else {
            "study".to_string()
        })
    });
    let command = std::env::args()
        .map(|a| if a.contains(' ') { format!("'{a}'") } else { a })
        .collect::<Vec<_>>()
        .join(" ");
    if args.report_only {
        let report = moco_train::study::report::write_report(&out, &study, Some(&command))
            .map_err(|e| e.to_string())?;
        println!("report: {}", report.display());
        return Ok(());
    }
    let runs = study.runs()?;
    println!(
        "study '{}': {} runs into {}",
        study.name,
        runs.len(),
        out.display()
    );
    let signals = crate::signals::RunSignals::process();
    let options = StudyOptions {
        stop: Some(signals.stop.clone()),
        quiet: args.quiet,
        command: Some(command),
        max_runs: args.max_runs,
        machine: Some(crate::device::machine(
            &crate::device::select(&args.device).map_err(|e| e.to_string())?,
        )),
    };
    let summary = dispatch(
        &args.device,
        moco_models::Precision::F32,
        StudyJob {
            study,
            out: out.clone(),
            options,
        },
    )
    .map_err(|e| e.to_string())??;
    println!(
        "study: {} runs trained, {} already done, {} diverged, {} left{}",
        summary.ran,
        summary.skipped,
        summary.diverged,
        summary.left,
        if summary.interrupted {
            " (interrupted: run the same command again to continue)"
        } else {
            ""
        }
    );
    if let Some(r) = summary.report {
        println!("report: {}", r.display());
    }
    Ok(())
}
