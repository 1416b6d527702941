//! Loading PyTorch weights (MoCo v3 releases, linear-probe and DeiT-style files, our own
//! safetensors exports) into our modules, inferring the architecture from tensor shapes.
//! Every key is accounted for: missing, unexpected or wrong-shaped tensors are an error.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use burn::module::Module;
use burn::prelude::*;
use burn::tensor::DType;
use burn_store::burn_pack::Tensor as PackTensor;
use burn_store::{bridge, BurnToPyTorchAdapter, ModuleSnapshot, PyTorchToBurnAdapter};

use crate::heads::MlpHeadConfig;
use crate::keys::{burn_to_torch, Family};
use crate::moco::{AnyBackbone, BackboneConfig, MoCo, MocoConfig};
use crate::resnet::{BlockKind, ResNetConfig, Stem};
use crate::state_dict::{read_metadata, read_state_dict, shape_of, sub_dict, StateDict};
use crate::vit::VitConfig;
use crate::ModelError;

/// What a weight file holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Layout {
    /// A whole MoCo model: `base_encoder.*`, `momentum_encoder.*`, `predictor.*`.
    Moco,
    /// A backbone alone, possibly with a classifier (`fc`/`head`) from linear probing.
    Backbone,
}

/// Options for importing weights.
#[derive(Clone, Debug, Default)]
pub struct ImportOptions {
    /// Attention heads of a ViT; inferred from the width's preset when `None`.
    pub heads: Option<usize>,
    /// Whether the ViT's patch projection stays frozen when trained further (default true).
    pub freeze_patch_embed: Option<bool>,
}

/// A state dict split by role, with the architecture inferred from it.
#[derive(Debug)]
pub struct InspectedWeights {
    /// What the file holds.
    pub layout: Layout,
    /// Backbone tensors, timm/torchvision names.
    pub backbone: StateDict,
    /// The inferred backbone architecture.
    pub backbone_config: BackboneConfig,
    /// The whole model's configuration, for [`Layout::Moco`] files.
    pub moco_config: Option<MocoConfig>,
    /// Every tensor, `module.` prefix removed.
    pub all: StateDict,
    /// Keys present in the file that a backbone import leaves out, with the reason.
    pub ignored: Vec<String>,
    /// What the reader assumed and a user may need to correct (the head count of a width
    /// with several conventions).
    pub warnings: Vec<String>,
}

/// Widths whose ViTs come with different head counts: MoCo v3's ViT-S has 12 heads, DeiT's,
/// DINO's and timm's 6.
fn heads_warning(config: &BackboneConfig, path: &Path) -> Option<String> {
    match config {
        BackboneConfig::Vit(c) if c.embed_dim == 384 => Some(format!(
            "{}: a ViT of width 384 read with {} attention heads (MoCo v3's ViT-S); DeiT, DINO and timm's ViT-S use 6: pass --heads 6 (ImportOptions::heads) for those; the weights fit either, the features do not",
            path.display(),
            c.num_heads
        )),
        _ => None,
    }
}

/// Reads a weight file and infers what it holds.
pub fn inspect(path: &Path, options: &ImportOptions) -> Result<InspectedWeights, ModelError> {
    let raw = read_state_dict(path)?;
    let mut options = options.clone();
    options.heads = options.heads.or_else(|| stored_heads(path));
    let inferred_heads = options.heads.is_none();
    let options = &options;
    let all: StateDict = if raw.keys().all(|k| k.starts_with("module.")) {
        sub_dict(&raw, "module.")
    } else {
        raw
    };
    let describe = |e: ModelError| match e {
        ModelError::InvalidConfig(msg) => ModelError::file(path, msg),
        other => other,
    };
    if all.keys().any(|k| k.starts_with("base_encoder.")) {
        let base = sub_dict(&all, "base_encoder.");
        let family = family_of(&base).ok_or_else(|| {
            ModelError::file(
                path,
                "base_encoder holds neither a ViT (cls_token) nor a ResNet (conv1.weight)",
            )
        })?;
        let head = format!("{}.", family.projector_name());
        let backbone: StateDict = base
            .into_iter()
            .filter(|(k, _)| !k.starts_with(&head))
            .collect();
        let backbone_config = infer_backbone(&backbone, options).map_err(describe)?;
        let warnings: Vec<String> = match inferred_heads {
            true => heads_warning(&backbone_config, path).into_iter().collect(),
            false => Vec::new(),
        };
        let projector = infer_head(&all, &format!("base_encoder.{head}")).map_err(describe)?;
        let predictor = infer_head(&all, "predictor.").map_err(describe)?;
        let moco_config = MocoConfig::new(backbone_config.clone(), projector, predictor);
        moco_config.validate().map_err(describe)?;
        let ignored = all
            .keys()
            .filter(|k| {
                !k.starts_with("base_encoder.") || k.starts_with(&format!("base_encoder.{head}"))
            })
            .cloned()
            .collect();
        return Ok(InspectedWeights {
            layout: Layout::Moco,
            backbone,
            backbone_config,
            moco_config: Some(moco_config),
            all,
            ignored,
            warnings,
        });
    }
    let family = family_of(&all).ok_or_else(|| {
        ModelError::file(
            path,
            "no MoCo v3 model found: expected 'base_encoder.*' keys, or a ViT (cls_token) or ResNet (conv1.weight) backbone",
        )
    })?;
    // A linear-probe or DeiT file carries a classifier the backbone does not have.
    let classifier = format!("{}.", family.projector_name());
    let (ignored, backbone): (Vec<_>, Vec<_>) = all
        .clone()
        .into_iter()
        .partition(|(k, _)| k.starts_with(&classifier));
    let backbone: StateDict = backbone.into_iter().collect();
    let backbone_config = infer_backbone(&backbone, options).map_err(describe)?;
    let warnings: Vec<String> = match inferred_heads {
        true => heads_warning(&backbone_config, path).into_iter().collect(),
        false => Vec::new(),
    };
    Ok(InspectedWeights {
        layout: Layout::Backbone,
        backbone,
        backbone_config,
        moco_config: None,
        all,
        ignored: ignored.into_iter().map(|(k, _)| k).collect(),
        warnings,
    })
}

/// ViT heads recorded in the metadata of our own safetensors exports.
fn stored_heads(path: &Path) -> Option<usize> {
    let meta = read_metadata(path);
    let backbone = match (meta.get("moco_config"), meta.get("moco_backbone")) {
        (Some(json), _) => serde_json::from_str::<MocoConfig>(json).ok()?.backbone,
        (None, Some(json)) => serde_json::from_str::<BackboneConfig>(json).ok()?,
        _ => return None,
    };
    match backbone {
        BackboneConfig::Vit(c) => Some(c.num_heads),
        BackboneConfig::ResNet(_) => None,
    }
}

fn family_of(dict: &StateDict) -> Option<Family> {
    if dict.contains_key("cls_token") {
        Some(Family::Vit)
    } else if dict.contains_key("conv1.weight") {
        Some(Family::ResNet)
    } else {
        None
    }
}

/// Number of attention heads MoCo v3's presets use for a ViT width.
pub fn preset_heads(width: usize) -> Option<usize> {
    match width {
        192 => Some(3),
        384 | 768 => Some(12),
        1024 | 1280 => Some(16),
        _ => None,
    }
}

fn need(dict: &StateDict, key: &str, rank: usize) -> Result<Vec<usize>, ModelError> {
    match shape_of(dict, key) {
        Some(s) if s.len() == rank => Ok(s),
        Some(s) => Err(ModelError::InvalidConfig(format!(
            "'{key}' has shape {s:?}, expected {rank} dimensions"
        ))),
        None => Err(ModelError::InvalidConfig(format!(
            "cannot infer the architecture: '{key}' is missing"
        ))),
    }
}

/// Largest `i` plus one over keys `{prefix}{i}.…`.
fn count_indexed(dict: &StateDict, prefix: &str) -> usize {
    dict.keys()
        .filter_map(|k| {
            k.strip_prefix(prefix)?
                .split('.')
                .next()?
                .parse::<usize>()
                .ok()
        })
        .map(|i| i + 1)
        .max()
        .unwrap_or(0)
}

/// Infers a backbone's architecture from its timm / torchvision state dict.
pub fn infer_backbone(
    dict: &StateDict,
    options: &ImportOptions,
) -> Result<BackboneConfig, ModelError> {
    match family_of(dict) {
        Some(Family::Vit) => infer_vit(dict, options).map(BackboneConfig::Vit),
        Some(Family::ResNet) => infer_resnet(dict).map(BackboneConfig::ResNet),
        None => Err(ModelError::InvalidConfig(
            "neither a ViT (cls_token) nor a ResNet (conv1.weight) backbone".into(),
        )),
    }
}

fn infer_vit(dict: &StateDict, options: &ImportOptions) -> Result<VitConfig, ModelError> {
    let dim = need(dict, "cls_token", 3)?[2];
    let depth = count_indexed(dict, "blocks.");
    let conv_stem = dict.contains_key("patch_embed.proj.0.weight");
    let (patch, in_chans) = if conv_stem {
        (16, need(dict, "patch_embed.proj.0.weight", 4)?[1])
    } else {
        let s = need(dict, "patch_embed.proj.weight", 4)?;
        (s[2], s[1])
    };
    let tokens = need(dict, "pos_embed", 3)?[1];
    let grid = ((tokens.saturating_sub(1)) as f64).sqrt().round() as usize;
    if grid * grid + 1 != tokens {
        return Err(ModelError::InvalidConfig(format!(
            "pos_embed has {tokens} tokens: not a CLS token plus a square patch grid"
        )));
    }
    let hidden = need(dict, "blocks.0.mlp.fc1.weight", 2)?[0];
    let heads = match options.heads.or_else(|| preset_heads(dim)) {
        Some(h) => h,
        None => {
            return Err(ModelError::InvalidConfig(format!(
                "cannot infer the number of attention heads for ViT width {dim} (no preset has it): pass --heads"
            )))
        }
    };
    let config = VitConfig::new()
        .with_img_size(grid * patch)
        .with_patch_size(patch)
        .with_in_chans(in_chans)
        .with_embed_dim(dim)
        .with_depth(depth)
        .with_num_heads(heads)
        .with_mlp_ratio(hidden as f64 / dim as f64)
        .with_qkv_bias(dict.contains_key("blocks.0.attn.qkv.bias"))
        .with_conv_stem(conv_stem)
        .with_freeze_patch_embed(options.freeze_patch_embed.unwrap_or(true));
    config.validate()?;
    Ok(config)
}

fn infer_resnet(dict: &StateDict) -> Result<ResNetConfig, ModelError> {
    let conv1 = need(dict, "conv1.weight", 4)?;
    let stem = match conv1[2] {
        7 => Stem::ImageNet,
        3 => Stem::Small,
        k => {
            return Err(ModelError::InvalidConfig(format!(
                "conv1 has a {k}×{k} kernel: expected 7 (ImageNet stem) or 3 (small stem)"
            )))
        }
    };
    let mut layers = Vec::new();
    while let n @ 1.. = count_indexed(dict, &format!("layer{}.", layers.len() + 1)) {
        layers.push(n);
    }
    let block = if dict.contains_key("layer1.0.conv3.weight") {
        BlockKind::Bottleneck
    } else {
        BlockKind::Basic
    };
    let config = ResNetConfig::new(layers)
        .with_block(block)
        .with_width(conv1[0])
        .with_in_chans(conv1[1])
        .with_stem(stem);
    config.validate()?;
    Ok(config)
}

/// Infers an MLP head from keys `{prefix}{3i}.weight` (linear) and `{prefix}{3i+1}.*` (BN).
pub fn infer_head(dict: &StateDict, prefix: &str) -> Result<MlpHeadConfig, ModelError> {
    let mut linears = Vec::new();
    while let Some(s) = shape_of(dict, &format!("{prefix}{}.weight", 3 * linears.len())) {
        if s.len() != 2 {
            return Err(ModelError::InvalidConfig(format!(
                "'{prefix}{}.weight' has shape {s:?}: expected a linear layer",
                3 * linears.len()
            )));
        }
        linears.push(s);
    }
    let (Some(first), Some(last)) = (linears.first(), linears.last()) else {
        return Err(ModelError::InvalidConfig(format!(
            "no MLP head found under '{prefix}'"
        )));
    };
    let last_bn = dict.contains_key(&format!("{prefix}{}.running_mean", 3 * linears.len() - 2));
    Ok(MlpHeadConfig::new(linears.len(), first[1], first[0], last[0]).with_last_bn(last_bn))
}

/// Loads a whole MoCo model from an official-format checkpoint (or our safetensors export of
/// one), inferring its configuration.
pub fn load_moco(
    path: &Path,
    options: &ImportOptions,
    device: &Device,
) -> Result<(MoCo, MocoConfig), ModelError> {
    moco_from(&inspect(path, options)?, path, device)
}

/// Loads a backbone alone: from a MoCo checkpoint its base encoder, from a linear-probe,
/// DeiT-style or exported file the backbone (a classifier there is left out).
pub fn load_backbone(
    path: &Path,
    options: &ImportOptions,
    device: &Device,
) -> Result<(AnyBackbone, BackboneConfig), ModelError> {
    backbone_from(&inspect(path, options)?, path, device)
}

/// The whole MoCo model of weights already read from `path` by [`inspect`].
pub fn moco_from(
    weights: &InspectedWeights,
    path: &Path,
    device: &Device,
) -> Result<(MoCo, MocoConfig), ModelError> {
    let Some(config) = weights.moco_config.clone() else {
        return Err(ModelError::file(
            path,
            "holds a backbone only (no projector, predictor or momentum encoder): load it as a backbone",
        ));
    };
    let mut model = config.init(device);
    let family = family_of_config(&config.backbone);
    apply_state_dict(&mut model, &weights.all, family, path)?;
    Ok((model, config))
}

/// The backbone of weights already read from `path` by [`inspect`].
pub fn backbone_from(
    weights: &InspectedWeights,
    path: &Path,
    device: &Device,
) -> Result<(AnyBackbone, BackboneConfig), ModelError> {
    let config = weights.backbone_config.clone();
    let mut model = config.init(device);
    apply_state_dict(
        &mut model,
        &weights.backbone,
        family_of_config(&config),
        path,
    )?;
    Ok((model, config))
}

/// The naming family of a backbone architecture.
pub fn family_of_config(config: &BackboneConfig) -> Family {
    match config {
        BackboneConfig::Vit(_) => Family::Vit,
        BackboneConfig::ResNet(_) => Family::ResNet,
    }
}

/// Loads `dict` (PyTorch names and layouts) into `module`, requiring an exact match of keys
/// and shapes. BN `num_batches_tracked` counters are accepted and not stored.
pub fn apply_state_dict<M: Module>(
    module: &mut M,
    dict: &StateDict,
    family: Family,
    source: &Path,
) -> Result<(), ModelError> {
    let expected: BTreeMap<String, (String, Vec<usize>)> = module
        .collect(None, Some(Box::new(BurnToPyTorchAdapter)), true)
        .into_iter()
        .map(|s| {
            let path = s.name.clone();
            (burn_to_torch(&path, family), (path, s.shape.to_vec()))
        })
        .collect();
    let mut missing: BTreeSet<String> = expected.keys().cloned().collect();
    let mut unexpected = Vec::new();
    let mut wrong_shape = Vec::new();
    let mut snapshots = Vec::new();
    for (key, snap) in dict {
        if key.ends_with("num_batches_tracked") {
            continue;
        }
        let Some((burn_path, shape)) = expected.get(key) else {
            unexpected.push(key.clone());
            continue;
        };
        missing.remove(key);
        if snap.shape.to_vec() != *shape {
            wrong_shape.push(format!(
                "{key}: file {:?}, model {:?}",
                snap.shape.to_vec(),
                shape
            ));
            continue;
        }
        snapshots.push(as_f32(snap, burn_path.clone()));
    }
    if !missing.is_empty() || !unexpected.is_empty() || !wrong_shape.is_empty() {
        return Err(ModelError::Mismatch {
            path: source.to_path_buf(),
            missing: missing.into_iter().collect(),
            unexpected,
            wrong_shape,
        });
    }
    let result = module.apply(snapshots, None, Some(Box::new(PyTorchToBurnAdapter)), true);
    if !result.errors.is_empty() || !result.missing.is_empty() {
        return Err(ModelError::file(
            source,
            format!("loading the tensors failed:\n{result}"),
        ));
    }
    Ok(())
}

/// The tensor named `name` (the model's path); float tensors in other precisions are
/// converted to f32 when read.
fn as_f32(tensor: &PackTensor, name: String) -> PackTensor {
    if tensor.dtype == DType::F32 || !tensor.dtype.is_float() {
        let mut out = tensor.clone();
        out.name = name;
        return out;
    }
    let shape = tensor.shape.clone();
    bridge::map_data(tensor.clone(), name, DType::F32, shape, |d| {
        d.convert::<f32>()
    })
}
