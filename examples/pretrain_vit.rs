//! Pretrains a Vision Transformer with MoCo v3.
//!
//! With no flags: the `fmnist-vit` preset on the CPU with the bundled Fashion-MNIST, printing
//! progress and the kNN curve. Every `moco pretrain` flag works here, e.g.
//! `cargo run --release --example pretrain_vit --features cuda -- --data /imagenet --preset imagenet-vit-small --device cuda`.

use std::process::ExitCode;

use clap::Parser;
use moco_cli::pretrain_cli::{run_pretrain, PretrainArgs};

#[derive(Parser)]
#[command(about = "Pretrain a ViT with MoCo v3 (default: fmnist-vit on the CPU)")]
struct Cli {
    #[command(flatten)]
    args: PretrainArgs,
}

fn main() -> ExitCode {
    match run_pretrain(&Cli::parse().args, "fmnist-vit") {
        Ok(_) => moco_cli::signals::exit_status(),
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}
