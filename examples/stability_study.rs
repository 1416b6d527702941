//! The paper's instability study: learning rates from stable to unstable, learned vs frozen
//! patch projection, kNN curves and gradient spikes, with a report.
//!
//! With no flags: the built-in CPU study (Fashion-MNIST, a 4-block ViT, 8 runs; 8 minutes on
//! two cores of an AMD EPYC, Zen 5) into `runs/study-cpu`; running it again continues where it
//! stopped. Every `moco study` flag works here, e.g.
//! `-- --config my-study.json --out runs/my-study`.

use std::process::ExitCode;

use clap::Parser;
use moco_cli::study_cli::{run_study_cli, StudyArgs};

#[derive(Parser)]
#[command(about = "Run the instability study (default: the built-in CPU study)")]
struct Cli {
    #[command(flatten)]
    args: StudyArgs,
}

fn main() -> ExitCode {
    match run_study_cli(&Cli::parse().args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}
