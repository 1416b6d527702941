//! Writing weights for PyTorch users: safetensors with timm / torchvision names, tensors in
//! PyTorch's layout, so `model.load_state_dict(safetensors.torch.load_file(path))` works.

use std::collections::HashMap;
use std::path::Path;

use burn::module::Module;
use burn::prelude::*;
use burn::tensor::DType;
use burn_store::{BurnToPyTorchAdapter, ModuleSnapshot};

use crate::import::family_of_config;
use crate::keys::{burn_to_torch, Family};
use crate::moco::{AnyBackbone, BackboneConfig, MoCo, MocoConfig};
use crate::{write_atomic, ModelError};

/// Every tensor of `module` under its PyTorch name, as f32 data in PyTorch's layout.
pub fn torch_state_dict<M: Module>(module: &M, family: Family) -> Vec<(String, TensorData)> {
    sync_running_stats(module);
    module
        .collect(None, Some(Box::new(BurnToPyTorchAdapter)), true)
        .into_iter()
        .map(|s| {
            let name = burn_to_torch(&s.name, family);
            let data = burn_store::bridge::into_data(s).unwrap_or_else(|e| {
                panic!("tensor '{name}' of a live module is unreadable: {e:?}")
            });
            (name, data.convert::<f32>())
        })
        .collect()
}

pub use crate::checkpoint::sync_running_stats;

/// Serialises named tensors to safetensors bytes, with string metadata.
pub fn to_safetensors(
    tensors: &[(String, TensorData)],
    metadata: Option<HashMap<String, String>>,
) -> Result<Vec<u8>, ModelError> {
    let views = tensors
        .iter()
        .map(|(name, data)| {
            debug_assert_eq!(data.dtype(), DType::F32);
            let view = safetensors::tensor::TensorView::new(
                safetensors::Dtype::F32,
                data.shape().to_vec(),
                data.as_bytes(),
            )
            .map_err(|e| ModelError::InvalidConfig(format!("tensor '{name}': {e}")))?;
            Ok((name.clone(), view))
        })
        .collect::<Result<Vec<_>, ModelError>>()?;
    safetensors::serialize(views, metadata)
        .map_err(|e| ModelError::InvalidConfig(format!("safetensors: {e}")))
}

/// Writes a backbone with timm (ViT) or torchvision (ResNet) names. Returns the tensor count.
///
/// The file has no classifier: create the PyTorch model with `num_classes=0` (timm) or load
/// with `strict=False` for torchvision's `fc`. The architecture is stored as JSON metadata
/// under `moco_backbone`.
pub fn export_backbone(
    backbone: &AnyBackbone,
    config: &BackboneConfig,
    path: &Path,
) -> Result<usize, ModelError> {
    let tensors = torch_state_dict(backbone, family_of_config(config));
    write_safetensors(path, &tensors, "moco_backbone", config)
}

/// Writes PyTorch-named tensors as a safetensors file (atomically) with PyTorch's `format`
/// metadata and `config` as JSON under `key` (`moco_backbone`, `moco_config`), which the
/// import reads back. Returns the tensor count.
pub fn write_safetensors(
    path: &Path,
    tensors: &[(String, TensorData)],
    key: &str,
    config: &impl serde::Serialize,
) -> Result<usize, ModelError> {
    let meta = HashMap::from([
        ("format".to_string(), "pt".to_string()),
        (
            key.to_string(),
            serde_json::to_string(config).expect("config serialises"),
        ),
    ]);
    write_atomic(path, &to_safetensors(tensors, Some(meta))?)?;
    Ok(tensors.len())
}

/// Writes a whole MoCo model with the official checkpoint's key names (without `module.`).
pub fn export_moco(model: &MoCo, config: &MocoConfig, path: &Path) -> Result<usize, ModelError> {
    let tensors = torch_state_dict(model, family_of_config(&config.backbone));
    write_safetensors(path, &tensors, "moco_config", config)
}

/// Writes a whole MoCo model in the official release's checkpoint layout: a `torch.save` file
/// `{'state_dict': {'module.base_encoder.…', 'module.momentum_encoder.…',
/// 'module.predictor.…'}}` with every BN's `num_batches_tracked` (0), so that the official
/// `MoCo_ViT` / `MoCo_ResNet` (wrapped in `DistributedDataParallel`, as `main_moco.py` resumes)
/// loads it with `strict=True`, and `main_lincls.py --pretrained FILE` takes its base
/// encoder. Returns the tensor count.
pub fn export_official(
    model: &MoCo,
    config: &MocoConfig,
    path: &Path,
) -> Result<usize, ModelError> {
    let mut tensors = Vec::new();
    for (name, data) in torch_state_dict(model, family_of_config(&config.backbone)) {
        let counter = name
            .strip_suffix("running_var")
            .map(|bn| format!("module.{bn}num_batches_tracked"));
        tensors.push((format!("module.{name}"), data));
        if let Some(counter) = counter {
            tensors.push((counter, TensorData::new(vec![0i64], Vec::<usize>::new())));
        }
    }
    crate::torch_save::torch_save(path, "state_dict", &tensors)?;
    Ok(tensors.len())
}

/// Writes a ViT backbone as a `torch.save` file in DeiT's layout, `{'model': state_dict}` with
/// timm names, for DeiT / MAE-style fine-tuning scripts (`--finetune FILE`). The classifier is
/// absent: those scripts create a fresh head. Returns the tensor count.
pub fn export_deit(
    backbone: &AnyBackbone,
    config: &BackboneConfig,
    path: &Path,
) -> Result<usize, ModelError> {
    if !matches!(config, BackboneConfig::Vit(_)) {
        return Err(ModelError::InvalidConfig(
            "the DeiT layout holds a ViT; export a ResNet with --format torchvision".into(),
        ));
    }
    let tensors = torch_state_dict(backbone, Family::Vit);
    crate::torch_save::torch_save(path, "model", &tensors)?;
    Ok(tensors.len())
}
