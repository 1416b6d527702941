//! MoCo v3 backbones and heads on Burn, numerically matching the PyTorch reference.
//!
//! - [`backbone`]: the [`Backbone`] trait: any Burn module from images to features can be
//!   pretrained; the ViT and ResNet below implement it;
//! - [`vit`]: the Vision Transformer with the fixed sin-cos position embedding and the
//!   frozen random patch projection (the paper's stability fix, on by default);
//! - [`resnet`]: torchvision's ResNets with a width multiplier and a small-image stem;
//! - [`heads`]: the projector and predictor MLPs;
//! - [`moco`]: the whole model, base and momentum encoders plus predictor, around any
//!   backbone ([`Heads::init`]);
//! - [`import`], [`export`], [`checkpoint`]: official MoCo v3 checkpoints in, timm /
//!   torchvision safetensors out, and our own checkpoints; [`weights`] tells them apart by
//!   content.
//!
//! ```
//! use burn::tensor::{Device, Tensor};
//! use moco_models::{MocoConfig, VitConfig};
//!
//! let device = Device::flex();
//! let vit = VitConfig::vit_tiny().with_img_size(32).with_patch_size(8).with_depth(2);
//! let config = MocoConfig::vit(vit, 256, 64);
//! config.validate().unwrap();
//! let model = config.init(&device);
//! let images = Tensor::<4>::zeros([2, 3, 32, 32], &device);
//! let out = model.forward_query(images);
//! assert_eq!(out.features.dims(), [2, 192]);
//! assert_eq!(out.prediction.dims(), [2, 64]);
//! ```
#![warn(missing_docs)]

use std::path::{Path, PathBuf};

pub mod activation;
pub mod backbone;
pub mod checkpoint;
pub mod cpu;
pub mod export;
#[cfg(feature = "flex")]
pub mod flex;
pub mod gemm_conv;
pub mod heads;
pub mod import;
pub mod kernels;
pub mod keys;
pub mod legacy;
pub mod moco;
pub mod norm;
pub mod precision;
pub mod replica;
pub mod resnet;
pub mod state_dict;
pub mod torch_save;
pub mod vit;
pub mod weights;

pub use backbone::Backbone;
pub use checkpoint::{
    is_backbone_checkpoint, load_backbone_checkpoint, load_checkpoint, save_backbone_checkpoint,
    save_checkpoint,
};
pub use export::{export_backbone, export_deit, export_moco, export_official};
pub use heads::{MlpHead, MlpHeadConfig};
pub use import::{inspect, load_backbone, load_moco, ImportOptions, Layout};
pub use kernels::{AttentionKernel, ConvKernel, GeluKernel, Kernels, LayerNormKernel};
pub use moco::{
    AnyBackbone, BackboneConfig, Encoder, Heads, MoCo, MocoConfig, QueryOutput, PRESETS,
};
pub use norm::{BatchNorm, BatchNormConfig};
pub use precision::{autocast, Precision};
pub use replica::{gather_rows, replicas, with_replicas, ReplicaGroup};
pub use resnet::{BlockKind, ResNet, ResNetConfig, Stem};
pub use vit::{Vit, VitConfig};
pub use weights::{sniff, WeightFile};

/// Errors of model construction, import and export.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    /// A configuration that cannot be built.
    #[error("invalid model configuration: {0}")]
    InvalidConfig(String),
    /// A problem with a file.
    #[error("{}: {message}", path.display())]
    File {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// Weights that do not fit the model.
    #[error("{}: the weights do not match the model\n{}", path.display(), mismatch_details(missing, unexpected, wrong_shape))]
    Mismatch {
        /// The file.
        path: PathBuf,
        /// Keys the model needs that the file lacks.
        missing: Vec<String>,
        /// Keys in the file the model does not have.
        unexpected: Vec<String>,
        /// Keys whose shapes differ, with both shapes.
        wrong_shape: Vec<String>,
    },
}

impl ModelError {
    /// An error about `path`.
    pub fn file(path: &Path, message: impl Into<String>) -> Self {
        ModelError::File {
            path: path.to_path_buf(),
            message: message.into(),
        }
    }
}

fn mismatch_details(missing: &[String], unexpected: &[String], wrong_shape: &[String]) -> String {
    let mut out = String::new();
    for (title, keys) in [
        ("missing", missing),
        ("unexpected", unexpected),
        ("wrong shape", wrong_shape),
    ] {
        if !keys.is_empty() {
            out.push_str(&format!("  {title} ({}):\n", keys.len()));
            for k in keys {
                out.push_str(&format!("    {k}\n"));
            }
        }
    }
    out
}

/// Writes `bytes` to `path` through a temporary file in the same folder and a rename, so a
/// crash never leaves a half-written file under the final name.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), ModelError> {
    use std::io::Write;
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir)
        .map_err(|e| ModelError::file(dir, format!("cannot create folder: {e}")))?;
    let name = path
        .file_name()
        .ok_or_else(|| ModelError::file(path, "not a file path"))?;
    let tmp = dir.join(format!(
        ".{}.tmp{}",
        name.to_string_lossy(),
        std::process::id()
    ));
    let write = || -> std::io::Result<()> {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    };
    write().map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        ModelError::file(path, format!("cannot write: {e}"))
    })
}
