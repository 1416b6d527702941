//! MoCo v3 self-supervised pretraining of Vision Transformers and ResNets on Burn.
//!
//! This facade re-exports the workspace crates and holds what the `moco` command line needs:
//! device selection ([`device`]) and the PyTorch parity harness ([`parity`]).
//!
//! ```
//! use moco::models::{BackboneConfig, MocoConfig};
//!
//! let backbone = BackboneConfig::preset("vit_small").unwrap();
//! let config = MocoConfig::for_backbone(backbone, 4096, 256);
//! assert!(config.validate().is_ok());
//! assert_eq!(config.projector.input_dim, 384);
//! ```
#![warn(missing_docs)]

pub mod bench;
pub mod bench_step;
pub mod crosscheck;
pub mod device;
pub mod eval_cli;
pub mod parity;
pub mod pretrain_cli;
pub mod study_cli;

pub use moco_data as data;
pub use moco_loss as loss;
pub use moco_models as models;
pub use moco_train as train;
