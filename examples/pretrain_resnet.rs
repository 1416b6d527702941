//! Pretrains a ResNet with MoCo v3.
//!
//! With no flags: the `fmnist-resnet18` preset (a half-width ResNet-18) on the CPU with the bundled Fashion-MNIST, printing
//! progress and the kNN curve. Every `moco pretrain` flag works here, e.g.
//! `cargo run --release --example pretrain_resnet --features cuda -- --data /imagenet --preset imagenet-resnet50 --device cuda`.

use std::process::ExitCode;

use clap::Parser;
use moco_cli::pretrain_cli::{run_pretrain, PretrainArgs};

#[derive(Parser)]
#[command(about = "Pretrain a ResNet with MoCo v3 (default: fmnist-resnet18 on the CPU)")]
struct Cli {
    #[command(flatten)]
    args: PretrainArgs,
}

fn main() -> ExitCode {
    match run_pretrain(&Cli::parse().args, "fmnist-resnet18") {
        Ok(_) => moco_cli::signals::exit_status(),
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}
