//! Parity against PyTorch reference vectors (`TAG.json`, `TAG.pth.tar`,
//! `TAG.expected.safetensors`; format in `tests/golden/README.md`).
//!
//! The checkpoint goes through the same import path users use; outputs are compared with
//! `|a − b| ≤ 1e-4 · (1 + |b|)` element-wise in f32.

use std::fmt;
use std::path::{Path, PathBuf};

use burn::prelude::*;
use moco_models::import::{load_moco, ImportOptions};
use moco_models::state_dict::{read_state_dict, StateDict};
use moco_models::{MocoConfig, ResNetConfig, VitConfig};
use serde::Deserialize;

/// Forward-output tolerance: `|a − b| ≤ FORWARD_TOL · (1 + |b|)`.
pub const FORWARD_TOL: f32 = 1e-4;

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
    /// Projector and predictor output width.
    pub out_dim: usize,
    /// Projector and predictor hidden width.
    pub mlp_dim: usize,
}

impl GoldenCase {
    /// Reads `DIR/TAG.json`.
    pub fn load(dir: &Path, tag: &str) -> Result<Self, String> {
        let path = dir.join(format!("{tag}.json"));
        let text = std::fs::read_to_string(&path).map_err(|e| format!("{}: {e}", path.display()))?;
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
}

/// One compared tensor.
#[derive(Debug, Clone)]
pub struct Check {
    /// What was compared.
    pub name: String,
    /// Largest `|a − b|`.
    pub max_abs: f32,
    /// Largest `|a − b| / |b|` over elements with `b ≠ 0`.
    pub max_rel: f32,
    /// Largest `|a − b| / (1 + |b|)`, the quantity held to the tolerance.
    pub max_scaled: f32,
    /// Tolerance on `max_scaled`.
    pub tol: f32,
    /// Failure other than a numeric one (shape mismatch, missing tensor).
    pub error: Option<String>,
}

impl Check {
    /// Whether the check passed.
    pub fn passed(&self) -> bool {
        self.error.is_none() && self.max_scaled <= self.tol
    }

    /// A failed check with a message.
    pub fn failed(name: impl Into<String>, error: impl Into<String>) -> Self {
        Check {
            name: name.into(),
            max_abs: f32::NAN,
            max_rel: f32::NAN,
            max_scaled: f32::NAN,
            tol: 0.0,
            error: Some(error.into()),
        }
    }

    /// Compares `actual` with `expected` element-wise.
    pub fn compare(name: impl Into<String>, actual: &TensorData, expected: &TensorData, tol: f32) -> Self {
        let name = name.into();
        if actual.shape != expected.shape {
            return Self::failed(name, format!("shape {:?}, expected {:?}", actual.shape, expected.shape));
        }
        let a = actual.clone().convert::<f32>().into_vec::<f32>().expect("f32 data");
        let b = expected.clone().convert::<f32>().into_vec::<f32>().expect("f32 data");
        let (mut max_abs, mut max_rel, mut max_scaled) = (0f32, 0f32, 0f32);
        for (x, y) in a.iter().zip(&b) {
            let d = (x - y).abs();
            // NaN anywhere fails the check.
            let d = if d.is_nan() { f32::INFINITY } else { d };
            max_abs = max_abs.max(d);
            if *y != 0.0 {
                max_rel = max_rel.max(d / y.abs());
            }
            max_scaled = max_scaled.max(d / (1.0 + y.abs()));
        }
        Check { name, max_abs, max_rel, max_scaled, tol, error: None }
    }
}

/// The checks of one case.
#[derive(Debug, Clone)]
pub struct CaseReport {
    /// Case name.
    pub tag: String,
    /// Every check, in order.
    pub checks: Vec<Check>,
}

impl CaseReport {
    /// Whether every check passed.
    pub fn passed(&self) -> bool {
        !self.checks.is_empty() && self.checks.iter().all(Check::passed)
    }
}

impl fmt::Display for CaseReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "case {}", self.tag)?;
        writeln!(f, "  {:<44} {:>10} {:>10} {:>12} {:>8}  result", "tensor", "max|a-b|", "max rel", "|a-b|/(1+|b|)", "tol")?;
        for c in &self.checks {
            match &c.error {
                Some(e) => writeln!(f, "  {:<44} FAIL: {e}", c.name)?,
                None => writeln!(
                    f,
                    "  {:<44} {:>10.3e} {:>10.3e} {:>12.3e} {:>8.0e}  {}",
                    c.name,
                    c.max_abs,
                    c.max_rel,
                    c.max_scaled,
                    c.tol,
                    if c.passed() { "pass" } else { "FAIL" }
                )?,
            }
        }
        Ok(())
    }
}

/// The tags of every case in `dir` (files `TAG.json` with a matching `TAG.pth.tar`).
pub fn case_tags(dir: &Path) -> Result<Vec<String>, String> {
    let entries = std::fs::read_dir(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let mut tags: Vec<String> = entries
        .filter_map(|e| e.ok())
        .filter_map(|e| e.file_name().to_str()?.strip_suffix(".json").map(str::to_string))
        .filter(|tag| dir.join(format!("{tag}.pth.tar")).is_file())
        .collect();
    tags.sort();
    if tags.is_empty() {
        return Err(format!("{}: no parity cases (TAG.json with TAG.pth.tar)", dir.display()));
    }
    Ok(tags)
}

/// Splits `DIR/TAG` or `DIR` into the folder and the tags to run.
pub fn resolve(target: &Path) -> Result<(PathBuf, Vec<String>), String> {
    if target.is_dir() {
        return Ok((target.to_path_buf(), case_tags(target)?));
    }
    let dir = target.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new(".")).to_path_buf();
    let tag = target
        .file_name()
        .and_then(|n| n.to_str())
        .map(|n| n.trim_end_matches(".json").trim_end_matches(".pth.tar").to_string())
        .ok_or_else(|| format!("{}: not a parity case", target.display()))?;
    if !dir.join(format!("{tag}.json")).is_file() {
        return Err(format!("{}: no such parity case ({tag}.json not found)", target.display()));
    }
    Ok((dir, vec![tag]))
}

fn tensor_data(dict: &StateDict, key: &str, file: &Path) -> Result<TensorData, String> {
    let snap = dict
        .get(key)
        .ok_or_else(|| format!("{}: tensor '{key}' is missing", file.display()))?;
    snap.to_data().map_err(|e| format!("{}: tensor '{key}': {e:?}", file.display()))
}

/// Runs the eval-mode forward checks of case `tag` in `dir` on backend `B`.
pub fn run_case<B: Backend>(dir: &Path, tag: &str, device: &B::Device) -> Result<CaseReport, String> {
    let case = GoldenCase::load(dir, tag)?;
    let expected_config = case.moco_config()?;
    let options = ImportOptions {
        heads: case.config.heads,
        freeze_patch_embed: Some(case.stop_grad_conv1),
    };
    let ckpt = dir.join(format!("{tag}.pth.tar"));
    let (model, config) = load_moco::<B>(&ckpt, &options, device).map_err(|e| e.to_string())?;
    let mut checks = Vec::new();
    if config != expected_config {
        checks.push(Check::failed(
            "inferred architecture",
            format!("inferred {config:?}, the case says {expected_config:?}"),
        ));
    }
    let vectors = dir.join(format!("{tag}.expected.safetensors"));
    let expected = read_state_dict(&vectors).map_err(|e| e.to_string())?;
    let x1 = Tensor::<B, 4>::from_data(tensor_data(&expected, "input.x1", &vectors)?, device);
    // `B` is used without autodiff here, so BN uses its running statistics: eval mode.
    let out = model.forward_query(x1);
    for (name, actual) in [
        ("eval.features_x1", out.features),
        ("eval.projection_x1", out.projection),
        ("eval.prediction_x1", out.prediction),
    ] {
        let want = tensor_data(&expected, name, &vectors)?;
        checks.push(Check::compare(name, &actual.into_data(), &want, FORWARD_TOL));
    }
    Ok(CaseReport { tag: tag.to_string(), checks })
}
