//! Parity against PyTorch reference vectors (`TAG.json`, `TAG.pth.tar`,
//! `TAG.expected.safetensors`; format in `tests/golden/README.md`).
//!
//! The checkpoint goes through the same import path users use; outputs are compared with
//! `|a − b| ≤ 1e-4 · (1 + |b|)` element-wise in f32.

use std::path::{Path, PathBuf};

use burn::prelude::*;
use moco_models::import::{load_moco, ImportOptions};
use moco_models::state_dict::{read_state_dict, StateDict};
use moco_models::{MocoConfig, ResNetConfig, VitConfig};
use moco_train::{OptimConfig, OptimizerKind};
use serde::Deserialize;

pub mod check;
pub mod misc;
pub mod step;

pub use check::{compare_records, CaseReport, Check, Record, StepKind, Tolerance, FORWARD_TOL};
pub use misc::{has_misc, run_misc};
pub use step::{family, record_step, StepSpec};

/// `TAG.json`.
#[derive(Debug, Clone, Deserialize)]
pub struct GoldenCase {
    /// Case name.
    pub tag: String,
    /// `vit` or `resnet`.
    pub kind: String,
    /// Architecture.
    pub config: GoldenModel,
    /// Batch size of the inputs.
    pub batch: usize,
    /// InfoNCE temperature of the training step.
    pub temperature: f64,
    /// EMA coefficient of the training step.
    pub momentum: f64,
    /// `adamw` or `lars`.
    pub optimizer: String,
    /// Learning rate of the training step.
    pub lr: f64,
    /// Weight decay of the training step.
    pub weight_decay: f64,
    /// Frozen patch projection.
    #[serde(default)]
    pub stop_grad_conv1: bool,
    /// Expected loss of the training step.
    pub loss: f64,
    /// AdamW settings (`betas`, `eps`).
    pub adamw: Option<GoldenAdamW>,
    /// LARS settings (`momentum`, `trust_coefficient`).
    pub lars: Option<GoldenLars>,
}

/// The `adamw` object of `TAG.json`.
#[derive(Debug, Clone, Deserialize)]
pub struct GoldenAdamW {
    /// β1, β2.
    pub betas: [f64; 2],
    /// Denominator epsilon.
    pub eps: f64,
}

/// The `lars` object of `TAG.json` / `misc.json`.
#[derive(Debug, Clone, Deserialize)]
pub struct GoldenLars {
    /// Momentum coefficient.
    pub momentum: f64,
    /// Trust coefficient.
    pub trust_coefficient: f64,
}

/// The `config` object of `TAG.json`.
#[derive(Debug, Clone, Deserialize)]
pub struct GoldenModel {
    /// Square image side.
    pub img: usize,
    /// ViT patch size.
    pub patch: Option<usize>,
    /// ViT width.
    pub dim: Option<usize>,
    /// ViT depth.
    pub depth: Option<usize>,
    /// ViT heads.
    pub heads: Option<usize>,
    /// ResNet stage depths (bottleneck blocks, ImageNet stem).
    pub layers: Option<Vec<usize>>,
    /// ResNet width.
    pub width: Option<usize>,
    /// Input channels (3 when absent).
    pub in_chans: Option<usize>,
    /// ViT with MoCo v3's ConvStem instead of the linear patch projection (false when absent).
    #[serde(default)]
    pub conv_stem: bool,
    /// Projector and predictor output width.
    pub out_dim: usize,
    /// Projector and predictor hidden width.
    pub mlp_dim: usize,
}

impl GoldenCase {
    /// Reads `DIR/TAG.json`.
    pub fn load(dir: &Path, tag: &str) -> Result<Self, String> {
        let path = dir.join(format!("{tag}.json"));
        let text =
            std::fs::read_to_string(&path).map_err(|e| format!("{}: {e}", path.display()))?;
        serde_json::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))
    }

    /// The model configuration the case describes.
    pub fn moco_config(&self) -> Result<MocoConfig, String> {
        let c = &self.config;
        let in_chans = c.in_chans.unwrap_or(3);
        let missing = |f: &str| format!("case {}: config.{f} is missing", self.tag);
        match self.kind.as_str() {
            "vit" => {
                let vit = VitConfig::new()
                    .with_img_size(c.img)
                    .with_patch_size(c.patch.ok_or_else(|| missing("patch"))?)
                    .with_in_chans(in_chans)
                    .with_embed_dim(c.dim.ok_or_else(|| missing("dim"))?)
                    .with_depth(c.depth.ok_or_else(|| missing("depth"))?)
                    .with_num_heads(c.heads.ok_or_else(|| missing("heads"))?)
                    .with_conv_stem(c.conv_stem)
                    .with_freeze_patch_embed(self.stop_grad_conv1);
                Ok(MocoConfig::vit(vit, c.mlp_dim, c.out_dim))
            }
            "resnet" => {
                let resnet = ResNetConfig::new(c.layers.clone().ok_or_else(|| missing("layers"))?)
                    .with_width(c.width.ok_or_else(|| missing("width"))?)
                    .with_in_chans(in_chans);
                Ok(MocoConfig::resnet(resnet, c.mlp_dim, c.out_dim))
            }
            other => Err(format!("case {}: unknown kind '{other}'", self.tag)),
        }
    }

    /// The optimizer of the training step.
    pub fn optim_config(&self) -> Result<OptimConfig, String> {
        let kind = match self.optimizer.as_str() {
            "adamw" => {
                let a = self.adamw.clone().unwrap_or(GoldenAdamW {
                    betas: [0.9, 0.999],
                    eps: 1e-8,
                });
                OptimizerKind::AdamW {
                    beta1: a.betas[0],
                    beta2: a.betas[1],
                    eps: a.eps,
                }
            }
            "lars" => {
                let l = self.lars.clone().unwrap_or(GoldenLars {
                    momentum: 0.9,
                    trust_coefficient: 0.001,
                });
                OptimizerKind::Lars {
                    momentum: l.momentum,
                    trust_coefficient: l.trust_coefficient,
                }
            }
            other => return Err(format!("case {}: unknown optimizer '{other}'", self.tag)),
        };
        Ok(OptimConfig::new(kind, self.weight_decay))
    }
}

/// The tags of every case in `dir` (files `TAG.json` with a matching `TAG.pth.tar`).
pub fn case_tags(dir: &Path) -> Result<Vec<String>, String> {
    let entries = std::fs::read_dir(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let mut tags: Vec<String> = entries
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            e.file_name()
                .to_str()?
                .strip_suffix(".json")
                .map(str::to_string)
        })
        .filter(|tag| dir.join(format!("{tag}.pth.tar")).is_file())
        .collect();
    tags.sort();
    if tags.is_empty() {
        return Err(format!(
            "{}: no parity cases (TAG.json with TAG.pth.tar)",
            dir.display()
        ));
    }
    Ok(tags)
}

/// Splits `DIR/TAG` or `DIR` into the folder and the tags to run.
pub fn resolve(target: &Path) -> Result<(PathBuf, Vec<String>), String> {
    if target.is_dir() {
        let mut tags = case_tags(target)?;
        if has_misc(target) {
            tags.push("misc".to_string());
        }
        return Ok((target.to_path_buf(), tags));
    }
    let dir = target
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."))
        .to_path_buf();
    let tag = target
        .file_name()
        .and_then(|n| n.to_str())
        .map(|n| {
            n.trim_end_matches(".json")
                .trim_end_matches(".pth.tar")
                .to_string()
        })
        .ok_or_else(|| format!("{}: not a parity case", target.display()))?;
    if tag != "misc" && !dir.join(format!("{tag}.pth.tar")).is_file() {
        return Err(format!(
            "{}: no such parity case ({tag}.json not found)",
            target.display()
        ));
    }
    Ok((dir, vec![tag]))
}

/// Every tensor of a golden vector file.
pub fn read_record(file: &Path) -> Result<Record, String> {
    let dict: StateDict = read_state_dict(file).map_err(|e| e.to_string())?;
    dict.into_iter()
        .map(|(k, snap)| {
            let data = burn_store::bridge::into_data(snap)
                .map_err(|e| format!("{}: tensor '{k}': {e:?}", file.display()))?;
            Ok((k, data))
        })
        .collect()
}

/// The tensor `key` of `record` (read from `file`).
pub fn tensor(record: &Record, key: &str, file: &Path) -> Result<TensorData, String> {
    record
        .get(key)
        .cloned()
        .ok_or_else(|| format!("{}: tensor '{key}' is missing", file.display()))
}

/// Runs case `tag` of `dir` on `device`: the checkpoint goes through the import path users
/// use, then the eval forward and the training step are recorded and compared with PyTorch's.
pub fn run_case(dir: &Path, tag: &str, device: &Device) -> Result<CaseReport, String> {
    // The training step runs under autodiff on the device.
    let device = &device.clone().autodiff();
    let case = GoldenCase::load(dir, tag)?;
    let expected_config = case.moco_config()?;
    let options = ImportOptions {
        heads: case.config.heads,
        freeze_patch_embed: Some(case.stop_grad_conv1),
    };
    let ckpt = dir.join(format!("{tag}.pth.tar"));
    let (model, config) = load_moco(&ckpt, &options, device).map_err(|e| e.to_string())?;
    let mut checks = Vec::new();
    if config != expected_config {
        checks.push(Check::failed(
            "inferred architecture",
            format!("inferred {config:?}, the case says {expected_config:?}"),
        ));
    }
    let vectors = dir.join(format!("{tag}.expected.safetensors"));
    let expected = read_record(&vectors)?;
    let spec = StepSpec {
        temperature: case.temperature,
        momentum: case.momentum,
        optim: case.optim_config()?,
        lr: case.lr,
    };
    let actual = record_step(
        model,
        family(&config.backbone),
        tensor(&expected, "input.x1", &vectors)?,
        tensor(&expected, "input.x2", &vectors)?,
        &spec,
        device,
    )?;
    let step = StepKind {
        adamw: case.optimizer == "adamw",
        lr: case.lr,
    };
    checks.extend(compare_records(&actual, &expected, step, None));
    Ok(CaseReport {
        tag: tag.to_string(),
        checks,
    })
}
