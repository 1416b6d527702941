//! Our own checkpoints: the model's full-precision Burn record and its configuration in one
//! file, written atomically.

use std::path::Path;

use burn::module::Module;
use burn::prelude::*;
use burn::record::{FullPrecisionSettings, NamedMpkBytesRecorder, Recorder};

use crate::moco::{AnyBackbone, AnyBackboneRecord, BackboneConfig, MoCo, MoCoRecord, MocoConfig};
use crate::weights::{sniff, WeightFile};
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

/// Encodes `record` with full precision and writes it to `path` atomically.
fn write_record<B: Backend, R: burn::record::Record<B>>(
    record: R,
    path: &Path,
) -> Result<(), ModelError> {
    let bytes = NamedMpkBytesRecorder::<FullPrecisionSettings>::new()
        .record(record, ())
        .map_err(|e| ModelError::file(path, format!("cannot encode the checkpoint: {e}")))?;
    write_atomic(path, &bytes)
}

/// Reads a record of ours from `path`, with the configuration it stores (JSON) validated by
/// `validate`. `version` and `config` are the record's own fields.
fn read_record<B: Backend, R: burn::record::Record<B>, C: serde::de::DeserializeOwned>(
    path: &Path,
    device: &B::Device,
    fields: impl FnOnce(&R) -> (u32, &str),
    validate: impl FnOnce(&C) -> Result<(), ModelError>,
) -> Result<(R, C), ModelError> {
    let bytes =
        std::fs::read(path).map_err(|e| ModelError::file(path, format!("cannot read: {e}")))?;
    let record: R = NamedMpkBytesRecorder::<FullPrecisionSettings>::new()
        .load(bytes, device)
        .map_err(|e| ModelError::file(path, format!("not a readable moco checkpoint: {e}")))?;
    let (version, config) = fields(&record);
    if version != CHECKPOINT_VERSION {
        return Err(ModelError::file(
            path,
            format!(
                "checkpoint version {version} is not supported (expected {CHECKPOINT_VERSION})"
            ),
        ));
    }
    let config: C = serde_json::from_str(config)
        .map_err(|e| ModelError::file(path, format!("the stored configuration is invalid: {e}")))?;
    validate(&config).map_err(|e| ModelError::file(path, e.to_string()))?;
    Ok((record, config))
}

/// Saves `model` and its configuration to `path` (any name), atomically.
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
    write_record::<B, _>(record, path)
}

/// Loads a checkpoint written by [`save_checkpoint`].
pub fn load_checkpoint<B: Backend>(
    path: &Path,
    device: &B::Device,
) -> Result<(MoCo<B>, MocoConfig), ModelError> {
    let (record, config): (CheckpointRecord<B>, MocoConfig) = read_record(
        path,
        device,
        |r: &CheckpointRecord<B>| (r.version, &r.config),
        MocoConfig::validate,
    )?;
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

/// Saves a backbone alone and its configuration to `path` (any name), atomically.
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
    write_record::<B, _>(record, path)
}

/// Loads a checkpoint written by [`save_backbone_checkpoint`].
pub fn load_backbone_checkpoint<B: Backend>(
    path: &Path,
    device: &B::Device,
) -> Result<(AnyBackbone<B>, BackboneConfig), ModelError> {
    let (record, config): (BackboneCheckpointRecord<B>, BackboneConfig) = read_record(
        path,
        device,
        |r: &BackboneCheckpointRecord<B>| (r.version, &r.backbone_config),
        BackboneConfig::validate,
    )?;
    let backbone = config.init::<B>(device).load_record(record.backbone);
    Ok((backbone, config))
}

/// Whether `path` holds a backbone-only checkpoint rather than a whole model (see
/// [`crate::weights::sniff`]: the record's own field names say so).
pub fn is_backbone_checkpoint(path: &Path) -> bool {
    matches!(sniff(path), Ok(WeightFile::BackboneCheckpoint))
}
