//! Our own checkpoints: the model's full-precision Burn record and its configuration in one
//! file, written atomically.

use std::path::Path;

use burn::module::Module;
use burn::prelude::*;
use burn::record::{FullPrecisionSettings, NamedMpkBytesRecorder, Recorder};

use crate::moco::{AnyBackbone, AnyBackboneRecord, BackboneConfig, MoCo, MoCoRecord, MocoConfig};
use crate::{write_atomic, ModelError};

/// File layout version of [`save_checkpoint`].
pub const CHECKPOINT_VERSION: u32 = 1;

/// What a checkpoint file holds.
#[derive(burn::record::Record)]
pub struct CheckpointRecord<B: Backend> {
    /// [`CHECKPOINT_VERSION`] at the time of writing.
    pub version: u32,
    /// The model configuration as JSON.
    pub config: String,
    /// The model's tensors (f32).
    pub model: MoCoRecord<B, AnyBackbone<B>>,
}

/// Saves `model` and its configuration to `path` (conventionally `*.mpk`), atomically.
pub fn save_checkpoint<B: Backend>(
    model: &MoCo<B>,
    config: &MocoConfig,
    path: &Path,
) -> Result<(), ModelError> {
    let record = CheckpointRecord::<B> {
        version: CHECKPOINT_VERSION,
        config: serde_json::to_string(config).expect("config serialises"),
        model: model.clone().into_record(),
    };
    let bytes = NamedMpkBytesRecorder::<FullPrecisionSettings>::new()
        .record(record, ())
        .map_err(|e| ModelError::file(path, format!("cannot encode the checkpoint: {e}")))?;
    write_atomic(path, &bytes)
}

/// Loads a checkpoint written by [`save_checkpoint`].
pub fn load_checkpoint<B: Backend>(
    path: &Path,
    device: &B::Device,
) -> Result<(MoCo<B>, MocoConfig), ModelError> {
    let bytes =
        std::fs::read(path).map_err(|e| ModelError::file(path, format!("cannot read: {e}")))?;
    let record: CheckpointRecord<B> = NamedMpkBytesRecorder::<FullPrecisionSettings>::new()
        .load(bytes, device)
        .map_err(|e| ModelError::file(path, format!("not a readable moco checkpoint: {e}")))?;
    if record.version != CHECKPOINT_VERSION {
        return Err(ModelError::file(
            path,
            format!(
                "checkpoint version {} is not supported (expected {CHECKPOINT_VERSION})",
                record.version
            ),
        ));
    }
    let config: MocoConfig = serde_json::from_str(&record.config)
        .map_err(|e| ModelError::file(path, format!("the stored configuration is invalid: {e}")))?;
    config
        .validate()
        .map_err(|e| ModelError::file(path, e.to_string()))?;
    let model = config.init::<B>(device).load_record(record.model);
    // Loading adopts the stored parameter ids; the momentum encoder stays gradient-free.
    let model = MoCo {
        momentum_encoder: model.momentum_encoder.no_grad(),
        ..model
    };
    Ok((model, config))
}

/// What a backbone-only checkpoint file holds (a linear-probe or DeiT-style import, a
/// fine-tuned backbone).
#[derive(burn::record::Record)]
pub struct BackboneCheckpointRecord<B: Backend> {
    /// [`CHECKPOINT_VERSION`] at the time of writing.
    pub version: u32,
    /// The backbone configuration as JSON.
    pub backbone_config: String,
    /// The backbone's tensors (f32).
    pub backbone: AnyBackboneRecord<B>,
}

/// Saves a backbone alone and its configuration to `path` (`*.mpk`), atomically.
pub fn save_backbone_checkpoint<B: Backend>(
    backbone: &AnyBackbone<B>,
    config: &BackboneConfig,
    path: &Path,
) -> Result<(), ModelError> {
    let record = BackboneCheckpointRecord::<B> {
        version: CHECKPOINT_VERSION,
        backbone_config: serde_json::to_string(config).expect("config serialises"),
        backbone: backbone.clone().into_record(),
    };
    let bytes = NamedMpkBytesRecorder::<FullPrecisionSettings>::new()
        .record(record, ())
        .map_err(|e| ModelError::file(path, format!("cannot encode the checkpoint: {e}")))?;
    write_atomic(path, &bytes)
}

/// Loads a checkpoint written by [`save_backbone_checkpoint`].
pub fn load_backbone_checkpoint<B: Backend>(
    path: &Path,
    device: &B::Device,
) -> Result<(AnyBackbone<B>, BackboneConfig), ModelError> {
    let bytes =
        std::fs::read(path).map_err(|e| ModelError::file(path, format!("cannot read: {e}")))?;
    let record: BackboneCheckpointRecord<B> = NamedMpkBytesRecorder::<FullPrecisionSettings>::new()
        .load(bytes, device)
        .map_err(|e| ModelError::file(path, format!("not a readable moco checkpoint: {e}")))?;
    if record.version != CHECKPOINT_VERSION {
        return Err(ModelError::file(
            path,
            format!(
                "checkpoint version {} is not supported (expected {CHECKPOINT_VERSION})",
                record.version
            ),
        ));
    }
    let config: BackboneConfig = serde_json::from_str(&record.backbone_config)
        .map_err(|e| ModelError::file(path, format!("the stored configuration is invalid: {e}")))?;
    config
        .validate()
        .map_err(|e| ModelError::file(path, e.to_string()))?;
    Ok((
        config.init::<B>(device).load_record(record.backbone),
        config,
    ))
}

/// Whether `path` holds a backbone-only checkpoint rather than a whole model (a cheap look at
/// the field names, without decoding tensors).
pub fn is_backbone_checkpoint(path: &Path) -> bool {
    use std::io::Read;
    let mut head = Vec::with_capacity(4096);
    let read = std::fs::File::open(path).and_then(|f| f.take(4096).read_to_end(&mut head));
    let needle = b"backbone_config";
    read.is_ok() && head.windows(needle.len()).any(|w| w == needle)
}
