//! Our own checkpoints: a module's tensors (f32, with their parameter ids) in one burnpack
//! file, with the configuration and what the file holds in its metadata, written atomically.
//! Checkpoints written with Burn 0.21 (MessagePack records, version 1) load too
//! ([`crate::legacy`]).

use std::collections::BTreeMap;
use std::path::Path;

use burn::module::Module;
use burn::prelude::*;
use burn_store::burn_pack::{Reader, Tensor as PackTensor, Writer};
use burn_store::ModuleSnapshot;

use crate::legacy::{is_legacy_record, read_record};
use crate::moco::{AnyBackbone, BackboneConfig, MoCo, MocoConfig};
use crate::weights::{sniff, WeightFile};
use crate::{write_atomic, ModelError};

/// File layout version of [`save_checkpoint`]: 2 is a burnpack file; 1 was a Burn 0.21
/// record.
pub const CHECKPOINT_VERSION: u32 = 2;

/// Metadata key: the layout version.
pub const VERSION_KEY: &str = "moco.version";
/// Metadata key: what the file holds, [`KIND_MODEL`] or [`KIND_BACKBONE`].
pub const KIND_KEY: &str = "moco.kind";
/// Metadata key: the configuration as JSON.
pub const CONFIG_KEY: &str = "moco.config";
/// A whole MoCo model.
pub const KIND_MODEL: &str = "model";
/// A backbone alone.
pub const KIND_BACKBONE: &str = "backbone";

/// The tensors of `module` (values as they are, with their parameter ids) and `metadata` as
/// the bytes of a burnpack file.
pub fn module_bytes<M: Module>(module: &M, metadata: &[(&str, &str)]) -> Result<Vec<u8>, String> {
    sync_running_stats(module);
    let mut writer = Writer::new(module.collect(None, None, false));
    for (key, value) in metadata {
        writer = writer.with_metadata(key, value);
    }
    writer
        .into_bytes()
        .map(|b| b.to_vec())
        .map_err(|e| e.to_string())
}

/// Folds pending BN running-statistic updates into the stored values, so that the tensors
/// collected from a module are those of every forward pass so far.
pub fn sync_running_stats<M: Module>(module: &M) {
    // Running states are shared between clones; `valid` synchronises them.
    let _ = module.valid();
}

/// The metadata and tensors of a weight file of ours: a burnpack file, or a Burn 0.21 record
/// (its string fields `version` and `config` / `backbone_config` read as the metadata of a
/// version-1 checkpoint).
pub fn read_tensors(
    path: &Path,
) -> Result<(BTreeMap<String, String>, Vec<PackTensor>), ModelError> {
    let bytes =
        std::fs::read(path).map_err(|e| ModelError::file(path, format!("cannot read: {e}")))?;
    if is_legacy_record(&bytes) {
        let mut record = read_record(&bytes)
            .map_err(|e| ModelError::file(path, format!("not a readable Burn 0.21 record: {e}")))?;
        let mut metadata = BTreeMap::new();
        if let Some(v) = record.fields.remove("version") {
            metadata.insert(VERSION_KEY.to_string(), v);
        }
        let (kind, field) = match record.fields.remove("backbone_config") {
            Some(c) => (Some(KIND_BACKBONE), Some((c, "backbone"))),
            None => match record.fields.remove("config") {
                Some(c) => (Some(KIND_MODEL), Some((c, "model"))),
                None => (None, None),
            },
        };
        let tensors = match field {
            Some((config, prefix)) => {
                metadata.insert(CONFIG_KEY.to_string(), config);
                record.take_prefix(prefix)
            }
            None => record.tensors,
        };
        if let Some(kind) = kind {
            metadata.insert(KIND_KEY.to_string(), kind.to_string());
        }
        return Ok((metadata, tensors));
    }
    let reader = Reader::from_bytes(burn::tensor::Bytes::from_bytes_vec(bytes))
        .map_err(|e| ModelError::file(path, format!("not a readable weight file: {e}")))?;
    let metadata = reader.metadata().clone();
    let tensors = reader
        .into_tensors()
        .map_err(|e| ModelError::file(path, format!("unreadable tensors: {e}")))?;
    Ok((metadata, tensors))
}

/// `module` with the values and parameter ids of `tensors`, which must match its own one to
/// one by name and shape.
pub fn apply_tensors<M: Module>(
    mut module: M,
    tensors: Vec<PackTensor>,
    path: &Path,
) -> Result<M, ModelError> {
    let result = module.apply(tensors, None, None, false);
    let list = |names: Vec<String>| {
        let n = names.len();
        let mut shown: Vec<String> = names.into_iter().take(4).collect();
        if n > 4 {
            shown.push(format!("… ({n} in all)"));
        }
        shown.join(", ")
    };
    let problem = if !result.errors.is_empty() {
        Some(format!(
            "tensors that do not fit: {}",
            list(result.errors.iter().map(|e| format!("{e:?}")).collect())
        ))
    } else if !result.missing.is_empty() {
        Some(format!(
            "the file lacks {}",
            list(result.missing.iter().map(|(n, _)| n.clone()).collect())
        ))
    } else if !result.unused.is_empty() {
        Some(format!(
            "the file holds tensors the model does not have: {}",
            list(result.unused.clone())
        ))
    } else {
        None
    };
    match problem {
        Some(p) => Err(ModelError::file(
            path,
            format!("not this model's weights: {p}"),
        )),
        None => Ok(module),
    }
}

/// Writes `module`'s tensors and its configuration to `path` atomically.
fn write_checkpoint<M: Module>(
    module: &M,
    kind: &str,
    config: &str,
    path: &Path,
) -> Result<(), ModelError> {
    let version = CHECKPOINT_VERSION.to_string();
    let bytes = module_bytes(
        module,
        &[
            (VERSION_KEY, &version),
            (KIND_KEY, kind),
            (CONFIG_KEY, config),
        ],
    )
    .map_err(|e| ModelError::file(path, format!("cannot encode the checkpoint: {e}")))?;
    write_atomic(path, &bytes)
}

/// Reads a checkpoint of ours holding `kind`, with its configuration validated by `validate`.
fn read_checkpoint<C: serde::de::DeserializeOwned>(
    path: &Path,
    kind: &str,
    validate: impl FnOnce(&C) -> Result<(), ModelError>,
) -> Result<(Vec<PackTensor>, C), ModelError> {
    let (metadata, tensors) = read_tensors(path)?;
    let version = metadata
        .get(VERSION_KEY)
        .map(String::as_str)
        .unwrap_or("none");
    if version != "1" && version != CHECKPOINT_VERSION.to_string() {
        return Err(ModelError::file(
            path,
            format!("checkpoint version {version} is not supported (expected 1 or {CHECKPOINT_VERSION})"),
        ));
    }
    let found = metadata.get(KIND_KEY).map(String::as_str).unwrap_or("none");
    if found != kind {
        return Err(ModelError::file(
            path,
            format!("holds a {found} checkpoint, not a {kind} checkpoint"),
        ));
    }
    let config = metadata
        .get(CONFIG_KEY)
        .ok_or_else(|| ModelError::file(path, "the checkpoint has no configuration"))?;
    let config: C = serde_json::from_str(config)
        .map_err(|e| ModelError::file(path, format!("the stored configuration is invalid: {e}")))?;
    validate(&config).map_err(|e| ModelError::file(path, e.to_string()))?;
    Ok((tensors, config))
}

/// Saves `model` and its configuration to `path` (any name), atomically.
pub fn save_checkpoint(model: &MoCo, config: &MocoConfig, path: &Path) -> Result<(), ModelError> {
    let config = serde_json::to_string(config).expect("config serialises");
    write_checkpoint(model, KIND_MODEL, &config, path)
}

/// Loads a checkpoint written by [`save_checkpoint`] (or by the Burn 0.21 build).
pub fn load_checkpoint(path: &Path, device: &Device) -> Result<(MoCo, MocoConfig), ModelError> {
    let (tensors, config): (_, MocoConfig) =
        read_checkpoint(path, KIND_MODEL, MocoConfig::validate)?;
    let model = apply_tensors(config.init(device), tensors, path)?;
    // Loading adopts the stored parameter ids; the momentum encoder stays gradient-free.
    let model = MoCo {
        momentum_encoder: model.momentum_encoder.no_grad(),
        ..model
    };
    Ok((model, config))
}

/// Saves a backbone alone and its configuration to `path` (any name), atomically.
pub fn save_backbone_checkpoint(
    backbone: &AnyBackbone,
    config: &BackboneConfig,
    path: &Path,
) -> Result<(), ModelError> {
    let config = serde_json::to_string(config).expect("config serialises");
    write_checkpoint(backbone, KIND_BACKBONE, &config, path)
}

/// Loads a checkpoint written by [`save_backbone_checkpoint`] (or by the Burn 0.21 build).
pub fn load_backbone_checkpoint(
    path: &Path,
    device: &Device,
) -> Result<(AnyBackbone, BackboneConfig), ModelError> {
    let (tensors, config): (_, BackboneConfig) =
        read_checkpoint(path, KIND_BACKBONE, BackboneConfig::validate)?;
    let backbone = apply_tensors(config.init(device), tensors, path)?;
    Ok((backbone, config))
}

/// Whether `path` holds a backbone-only checkpoint rather than a whole model (see
/// [`crate::weights::sniff`]).
pub fn is_backbone_checkpoint(path: &Path) -> bool {
    matches!(sniff(path), Ok(WeightFile::BackboneCheckpoint))
}
