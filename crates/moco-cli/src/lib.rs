//! The `moco` command line, as a library the examples share: argument types and the runs
//! behind each subcommand (pretraining, the stability study, evaluation), device selection
//! ([`device`]), the PyTorch parity harness ([`parity`]), the differential check of a device
//! against the CPU ([`crosscheck`]) and the benchmarks ([`bench`], [`bench_step`]).
//!
//! Everything a subcommand does is a call into the library crates (`moco-models`,
//! `moco-loss`, `moco-data`, `moco-train`), re-exported here as in the `moco` facade.
#![warn(missing_docs)]

pub mod bench;
pub mod bench_gemm;
pub mod bench_step;
pub mod cli;
pub mod crosscheck;
pub mod device;
#[cfg(test)]
mod docs_check;
pub mod eval_cli;
pub mod parity;
pub mod pretrain_cli;
pub mod signals;
pub mod study_cli;

pub use moco_data as data;
pub use moco_loss as loss;
pub use moco_models as models;
pub use moco_train as train;
