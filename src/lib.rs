//! MoCo v3 self-supervised pretraining of Vision Transformers and ResNets on Burn, as a
//! library: this facade re-exports the workspace crates.
//!
//! - [`models`]: the [`Backbone`](models::Backbone) trait, the ViT and ResNet, MoCo v3's
//!   heads around any backbone, official-checkpoint import and export;
//! - [`loss`]: InfoNCE with batch negatives, NT-Xent, BYOL's regression;
//! - [`data`]: datasets (any Burn `Dataset` through [`data::FromBurn`]), the two-view
//!   augmentations and the loader;
//! - [`train`]: the methods, optimizers and schedules, the [`Trainer`](train::Trainer) with
//!   the kNN and gradient monitors, checkpoints and exact resume, evaluation.
//!
//! The `moco` command line lives in the `moco-cli` crate; `docs/library.md` shows the
//! library calls behind it.
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

pub use burn;
pub use moco_data as data;

/// `docs/library.md`: the library guide, whose whole program is compiled with the
/// documentation tests.
#[doc = include_str!("../docs/library.md")]
pub mod guide {}
pub use moco_loss as loss;
pub use moco_models as models;
pub use moco_train as train;
