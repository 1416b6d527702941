//! Reading weight files into a flat, PyTorch-named state dict: official MoCo v3 `.pth.tar`
//! checkpoints (`state_dict`), DeiT-style files (`model`), plain state dicts and safetensors.

use std::collections::BTreeMap;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::Path;

use burn::tensor::{DType, TensorData};
use burn_store::bridge;
use burn_store::burn_pack::Tensor as PackTensor;
use burn_store::pytorch::PytorchReader;

use crate::weights::{sniff, WeightFile};
use crate::ModelError;

/// Tensors by PyTorch key.
pub type StateDict = BTreeMap<String, PackTensor>;

/// Reads every tensor of a PyTorch weight file, whatever its name: a safetensors file, or a
/// `torch.save` file, taking the `state_dict` entry (MoCo v3 release and linear-probe
/// files), else the `model` entry (DeiT layout), else the top-level dict.
pub fn read_state_dict(path: &Path) -> Result<StateDict, ModelError> {
    let dict = match sniff(path)? {
        WeightFile::Safetensors => read_safetensors(path)?,
        WeightFile::Torch => read_torch(path)?,
        WeightFile::MocoCheckpoint | WeightFile::BackboneCheckpoint | WeightFile::RunModel => {
            return Err(ModelError::file(
                path,
                "a moco checkpoint, not a PyTorch state dict: load it as a pretrained network (moco_train::load_pretrained, or the moco commands), or export it first",
            ))
        }
    };
    if dict.is_empty() {
        return Err(ModelError::file(path, "the file holds no tensors"));
    }
    Ok(dict)
}

fn read_torch(path: &Path) -> Result<StateDict, ModelError> {
    let mut first_error = None;
    for key in [Some("state_dict"), Some("model"), None] {
        // The reader parses untrusted bytes: never let a malformed file take the process down.
        let attempt = catch_unwind(AssertUnwindSafe(|| match key {
            Some(k) => PytorchReader::with_top_level_key(path, k),
            None => PytorchReader::new(path),
        }));
        match attempt {
            Ok(Ok(reader)) if !reader.is_empty() => {
                return Ok(reader
                    .into_tensors()
                    .into_iter()
                    .map(|(k, t)| (k, bridge::from_pytorch(t)))
                    .collect());
            }
            Ok(Ok(_)) => {}
            Ok(Err(e)) => {
                let msg = e.to_string();
                let key_missing = msg.contains("not found") || msg.contains("KeyNotFound");
                if first_error.is_none() && !(key.is_some() && key_missing) {
                    first_error = Some(msg);
                }
            }
            Err(_) => {
                first_error.get_or_insert_with(|| "the PyTorch file is malformed".to_string());
            }
        }
    }
    Err(ModelError::file(
        path,
        format!(
            "not a readable PyTorch checkpoint ({})",
            first_error.unwrap_or_else(|| {
                "no tensors under 'state_dict', 'model' or the top level".into()
            })
        ),
    ))
}

fn read_safetensors(path: &Path) -> Result<StateDict, ModelError> {
    let bytes =
        std::fs::read(path).map_err(|e| ModelError::file(path, format!("cannot read: {e}")))?;
    let st = safetensors::SafeTensors::deserialize(&bytes)
        .map_err(|e| ModelError::file(path, format!("not a valid safetensors file: {e}")))?;
    let mut dict = StateDict::new();
    for (name, view) in st.tensors() {
        let shape = view.shape().to_vec();
        let data = match view.dtype() {
            safetensors::Dtype::F32 => {
                TensorData::from_bytes_vec(view.data().to_vec(), shape, DType::F32)
            }
            safetensors::Dtype::F64 => {
                TensorData::from_bytes_vec(view.data().to_vec(), shape, DType::F64)
            }
            safetensors::Dtype::F16 => {
                TensorData::from_bytes_vec(view.data().to_vec(), shape, DType::F16)
            }
            safetensors::Dtype::BF16 => {
                TensorData::from_bytes_vec(view.data().to_vec(), shape, DType::BF16)
            }
            safetensors::Dtype::I64 => {
                TensorData::from_bytes_vec(view.data().to_vec(), shape, DType::I64)
            }
            other => {
                return Err(ModelError::file(
                    path,
                    format!("tensor '{name}' has unsupported dtype {other:?}"),
                ))
            }
        };
        let tensor = bridge::from_data(data, name.clone(), None);
        dict.insert(name, tensor);
    }
    Ok(dict)
}

/// The string metadata of a safetensors file (empty for other files or when unreadable).
pub fn read_metadata(path: &Path) -> std::collections::HashMap<String, String> {
    if !matches!(sniff(path), Ok(WeightFile::Safetensors)) {
        return Default::default();
    }
    std::fs::read(path)
        .ok()
        .and_then(|bytes| safetensors::SafeTensors::read_metadata(&bytes).ok())
        .and_then(|(_, meta)| meta.metadata().clone())
        .unwrap_or_default()
}

/// Shape of a tensor in the dict, if present.
pub fn shape_of(dict: &StateDict, key: &str) -> Option<Vec<usize>> {
    dict.get(key).map(|s| s.shape.to_vec())
}

/// The entries under `prefix`, with the prefix removed.
pub fn sub_dict(dict: &StateDict, prefix: &str) -> StateDict {
    dict.iter()
        .filter_map(|(k, v)| {
            k.strip_prefix(prefix)
                .map(|rest| (rest.to_string(), v.clone()))
        })
        .collect()
}
