//! Parity against PyTorch reference vectors (`TAG.json`, `TAG.pth.tar`,
//! `TAG.expected.safetensors`; format in `tests/golden/README.md`).
//!
//! The checkpoint goes through the same import path users use; outputs are compared with
//! `|a − b| ≤ 1e-4 · (1 + |b|)` element-wise in f32.

use std::fmt;
use std::path::{Path, PathBuf};

use burn::backend::Autodiff;
use burn::optim::{GradientsParams, Optimizer};
use burn::prelude::*;
use burn_store::{BurnToPyTorchAdapter, ModuleSnapshot};
use moco_models::export::torch_state_dict;
use moco_models::import::{load_moco, ImportOptions};
use moco_models::keys::{burn_to_torch, Family};
use moco_models::state_dict::{read_state_dict, StateDict};
use moco_models::{MocoConfig, ResNetConfig, VitConfig};
use moco_train::{OptimConfig, OptimizerKind, Pretrain, Siamese, StepParams};
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

/// How a tensor is held to the reference.
#[derive(Debug, Clone, PartialEq)]
pub enum Tolerance {
    /// Every element: `|a − b| ≤ 1e-4 · (1 + |b|)`. Forward outputs, losses, EMA and BN state.
    Elementwise,
    /// The whole tensor: `max|a − b| ≤ 1e-4 · (1 + max|b|)`. Gradients are sums over the batch
    /// and the tokens whose rounding error scales with the largest term, not with each
    /// element; the CLS token's gradient passes a LayerNorm of a near-zero input (std 1e-6,
    /// eps 1e-6), which multiplies that error by about 1/√eps = 1000 in both implementations.
    TensorScaled,
    /// Elementwise, plus `2·lr` for elements whose reference gradient is zero within the
    /// gradient tolerance: AdamW's first step moves such an element by `lr·g/(|g| + eps)`, a
    /// value in `[−lr, lr]` whose sign and size are rounding noise (the key bias and the biases feeding a BN have an exactly
    /// zero true gradient).
    AdamNoise {
        /// The step's learning rate.
        lr: f32,
        /// Which elements have a rounding-level reference gradient.
        noisy: Vec<bool>,
    },
}

impl Tolerance {
    fn describe(&self) -> &'static str {
        match self {
            Tolerance::Elementwise => "1e-4(1+|b|)",
            Tolerance::TensorScaled => "1e-4(1+max|b|)",
            Tolerance::AdamNoise { .. } => "1e-4(1+|b|)+2lr@g~0",
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
    /// Largest ratio of the error to what the tolerance allows; the check passes at ≤ 1.
    pub worst: f32,
    /// The tolerance rule applied.
    pub rule: &'static str,
    /// Failure other than a numeric one (shape mismatch, missing tensor).
    pub error: Option<String>,
}

impl Check {
    /// Whether the check passed.
    pub fn passed(&self) -> bool {
        self.error.is_none() && self.worst <= 1.0
    }

    /// A failed check with a message.
    pub fn failed(name: impl Into<String>, error: impl Into<String>) -> Self {
        Check {
            name: name.into(),
            max_abs: f32::NAN,
            max_rel: f32::NAN,
            worst: f32::NAN,
            rule: "",
            error: Some(error.into()),
        }
    }

    /// Compares `actual` with `expected` under `tolerance`.
    pub fn compare(
        name: impl Into<String>,
        actual: &TensorData,
        expected: &TensorData,
        tolerance: Tolerance,
    ) -> Self {
        let name = name.into();
        if actual.shape != expected.shape {
            return Self::failed(
                name,
                format!("shape {:?}, expected {:?}", actual.shape, expected.shape),
            );
        }
        let a = actual
            .clone()
            .convert::<f32>()
            .into_vec::<f32>()
            .expect("f32 data");
        let b = expected
            .clone()
            .convert::<f32>()
            .into_vec::<f32>()
            .expect("f32 data");
        let max_b = b.iter().fold(0f32, |m, y| m.max(y.abs()));
        let (mut max_abs, mut max_rel, mut worst) = (0f32, 0f32, 0f32);
        for (i, (x, y)) in a.iter().zip(&b).enumerate() {
            let d = (x - y).abs();
            // NaN anywhere fails the check.
            let d = if d.is_nan() { f32::INFINITY } else { d };
            max_abs = max_abs.max(d);
            if *y != 0.0 {
                max_rel = max_rel.max(d / y.abs());
            }
            let allowed = match &tolerance {
                Tolerance::Elementwise => FORWARD_TOL * (1.0 + y.abs()),
                Tolerance::TensorScaled => FORWARD_TOL * (1.0 + max_b),
                Tolerance::AdamNoise { lr, noisy } => {
                    FORWARD_TOL * (1.0 + y.abs())
                        + if noisy.get(i).copied().unwrap_or(false) {
                            2.0 * lr
                        } else {
                            0.0
                        }
                }
            };
            worst = worst.max(d / allowed);
        }
        Check {
            name,
            max_abs,
            max_rel,
            worst,
            rule: tolerance.describe(),
            error: None,
        }
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
        writeln!(
            f,
            "  {:<52} {:>10} {:>10} {:>11}  {:<20} result",
            "tensor", "max|a-b|", "max rel", "err/allowed", "tolerance"
        )?;
        for c in &self.checks {
            match &c.error {
                Some(e) => writeln!(f, "  {:<52} FAIL: {e}", c.name)?,
                None => writeln!(
                    f,
                    "  {:<52} {:>10.3e} {:>10.3e} {:>11.3e}  {:<20} {}",
                    c.name,
                    c.max_abs,
                    c.max_rel,
                    c.worst,
                    c.rule,
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

fn tensor_data(dict: &StateDict, key: &str, file: &Path) -> Result<TensorData, String> {
    let snap = dict
        .get(key)
        .ok_or_else(|| format!("{}: tensor '{key}' is missing", file.display()))?;
    snap.to_data()
        .map_err(|e| format!("{}: tensor '{key}': {e:?}", file.display()))
}

/// Runs the eval-mode forward checks of case `tag` in `dir` on backend `B`.
pub fn run_case<B: Backend>(
    dir: &Path,
    tag: &str,
    device: &B::Device,
) -> Result<CaseReport, String> {
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
        checks.push(Check::compare(
            name,
            &actual.into_data(),
            &want,
            Tolerance::Elementwise,
        ));
    }
    drop(model);
    train_checks::<B>(
        &case,
        &ckpt,
        &options,
        &expected,
        &vectors,
        device,
        &mut checks,
    )?;
    Ok(CaseReport {
        tag: tag.to_string(),
        checks,
    })
}

/// Replays the case's training step on `Autodiff<B>` and compares queries, keys, loss, every
/// gradient and the whole state after the optimizer step.
fn train_checks<B: Backend>(
    case: &GoldenCase,
    ckpt: &Path,
    options: &ImportOptions,
    expected: &StateDict,
    vectors: &Path,
    device: &B::Device,
    checks: &mut Vec<Check>,
) -> Result<(), String> {
    type Ad<B> = Autodiff<B>;
    let (model, config) = load_moco::<Ad<B>>(ckpt, options, device).map_err(|e| e.to_string())?;
    let family = match config.backbone {
        moco_models::BackboneConfig::Vit(_) => Family::Vit,
        moco_models::BackboneConfig::ResNet(_) => Family::ResNet,
    };
    let input = |key: &str| {
        tensor_data(expected, key, vectors).map(|d| Tensor::<Ad<B>, 4>::from_data(d, device))
    };
    let (x1, x2) = (input("input.x1")?, input("input.x2")?);
    let params = StepParams {
        temperature: case.temperature,
        momentum: case.momentum,
    };
    let (siamese, out) = Siamese { model, byol: false }.forward_loss(x1, x2, &params);
    let mut compare = |name: &str, actual: TensorData| -> Result<(), String> {
        let want = tensor_data(expected, name, vectors)?;
        checks.push(Check::compare(name, &actual, &want, Tolerance::Elementwise));
        Ok(())
    };
    compare("train.q1", out.q1.clone().inner().into_data())?;
    compare("train.q2", out.q2.clone().inner().into_data())?;
    compare(
        "train.k1",
        out.k1.clone().expect("keys").inner().into_data(),
    )?;
    compare(
        "train.k2",
        out.k2.clone().expect("keys").inner().into_data(),
    )?;
    compare("train.loss", out.loss.clone().inner().into_data())?;

    let grads = GradientsParams::from_grads(out.loss.backward(), &siamese);
    let mut grad_checks = 0;
    for snap in siamese
        .model
        .collect(None, Some(Box::new(BurnToPyTorchAdapter)), true)
    {
        let name = burn_to_torch(&snap.full_path(), family);
        let Some(id) = snap.tensor_id else { continue };
        let linear_weight =
            snap.module_type().as_deref() == Some("Struct:Linear") && name.ends_with(".weight");
        let grad = match snap.shape.num_dims() {
            1 => grads.get::<B, 1>(id).map(|g| g.into_data()),
            2 => grads
                .get::<B, 2>(id)
                .map(|g| if linear_weight { g.transpose() } else { g }.into_data()),
            3 => grads.get::<B, 3>(id).map(|g| g.into_data()),
            4 => grads.get::<B, 4>(id).map(|g| g.into_data()),
            n => return Err(format!("{name}: unexpected rank {n}")),
        };
        let key = format!("grad.{name}");
        match (expected.contains_key(&key), grad) {
            (true, Some(g)) => {
                let want = tensor_data(expected, &key, vectors)?;
                checks.push(Check::compare(key, &g, &want, Tolerance::TensorScaled));
                grad_checks += 1;
            }
            (true, None) => checks.push(Check::failed(key, "PyTorch has a gradient, we have none")),
            (false, Some(_)) => checks.push(Check::failed(
                key,
                "frozen in PyTorch, but we computed a gradient",
            )),
            (false, None) => {}
        }
    }
    let expected_grads = expected.keys().filter(|k| k.starts_with("grad.")).count();
    if grad_checks != expected_grads {
        checks.push(Check::failed(
            "gradients",
            format!("{expected_grads} in the reference, {grad_checks} matched to our parameters"),
        ));
    }

    let adamw = case.optimizer == "adamw";
    let mut optim = case.optim_config()?.init::<Ad<B>, Siamese<Ad<B>>>();
    let siamese = optim.step(case.lr, siamese, grads);
    let after = torch_state_dict(&siamese.model, family);
    let mut seen = 0;
    for (name, data) in after {
        let key = format!("after.{name}");
        if expected.contains_key(&key) {
            let want = tensor_data(expected, &key, vectors)?;
            let grad_key = format!("grad.{name}");
            let tolerance = match (adamw, expected.contains_key(&grad_key)) {
                (true, true) => {
                    let g = tensor_data(expected, &grad_key, vectors)?
                        .convert::<f32>()
                        .into_vec::<f32>()
                        .unwrap_or_default();
                    let g_tol = FORWARD_TOL * (1.0 + g.iter().fold(0f32, |m, x| m.max(x.abs())));
                    // Gradients are compared in PyTorch's layout, as the state is.
                    Tolerance::AdamNoise {
                        lr: case.lr as f32,
                        noisy: g.iter().map(|x| x.abs() <= g_tol).collect(),
                    }
                }
                _ => Tolerance::Elementwise,
            };
            checks.push(Check::compare(key, &data, &want, tolerance));
            seen += 1;
        } else {
            checks.push(Check::failed(key, "not in the reference state"));
        }
    }
    let reference = expected
        .keys()
        .filter(|k| k.starts_with("after.") && !k.ends_with("num_batches_tracked"))
        .count();
    if seen != reference {
        checks.push(Check::failed(
            "after-step state",
            format!("{reference} tensors in the reference, {seen} in ours"),
        ));
    }
    Ok(())
}

/// `misc.json`.
#[derive(Debug, Clone, Deserialize)]
struct MiscCase {
    lars: MiscLars,
    schedule: MiscSchedule,
}

#[derive(Debug, Clone, Deserialize)]
struct MiscLars {
    lr: f64,
    weight_decay: f64,
    momentum: f64,
    trust_coefficient: f64,
}

#[derive(Debug, Clone, Deserialize)]
struct MiscSchedule {
    epochs: f64,
    warmup_epochs: f64,
    base_lr: f64,
    moco_m: f64,
}

/// Whether `dir` holds the model-free vectors (`misc.json`, `misc.expected.safetensors`).
pub fn has_misc(dir: &Path) -> bool {
    dir.join("misc.json").is_file() && dir.join("misc.expected.safetensors").is_file()
}

/// Checks the model-free vectors: losses, three LARS steps, schedules, position embeddings.
pub fn run_misc<B: Backend>(dir: &Path, device: &B::Device) -> Result<CaseReport, String> {
    use moco_train::optim::OptimState;
    use moco_train::schedule;
    let json = dir.join("misc.json");
    let text = std::fs::read_to_string(&json).map_err(|e| format!("{}: {e}", json.display()))?;
    let misc: MiscCase =
        serde_json::from_str(&text).map_err(|e| format!("{}: {e}", json.display()))?;
    let file = dir.join("misc.expected.safetensors");
    let expected = read_state_dict(&file).map_err(|e| e.to_string())?;
    let t2 = |key: &str| {
        tensor_data(&expected, key, &file).map(|d| Tensor::<B, 2>::from_data(d, device))
    };
    let t1 = |key: &str| {
        tensor_data(&expected, key, &file).map(|d| Tensor::<B, 1>::from_data(d, device))
    };
    let mut checks = Vec::new();
    let mut compare = |name: &str, actual: TensorData| -> Result<(), String> {
        checks.push(Check::compare(
            name,
            &actual,
            &tensor_data(&expected, name, &file)?,
            Tolerance::Elementwise,
        ));
        Ok(())
    };

    for key in expected.keys().filter(|k| k.starts_with("infonce.loss_T")) {
        // infonce.loss_T{T}_rank{r}
        let rest = &key["infonce.loss_T".len()..];
        let (t, rank) = rest
            .split_once("_rank")
            .and_then(|(t, r)| Some((t.parse::<f64>().ok()?, r.parse::<usize>().ok()?)))
            .ok_or_else(|| format!("{}: cannot parse '{key}'", file.display()))?;
        let loss = moco_loss::infonce(t2("infonce.q")?, t2("infonce.k_all")?, t, rank);
        compare(key, loss.into_data())?;
    }
    for key in expected.keys().filter(|k| k.starts_with("ntxent.loss_T")) {
        let t: f64 = key["ntxent.loss_T".len()..]
            .parse()
            .map_err(|_| format!("cannot parse '{key}'"))?;
        compare(
            key,
            moco_loss::nt_xent(t2("ntxent.z1")?, t2("ntxent.z2")?, t).into_data(),
        )?;
    }
    compare(
        "byol.loss",
        moco_loss::byol(t2("byol.p")?, t2("byol.z")?).into_data(),
    )?;

    let l = &misc.lars;
    let optim = OptimConfig::new(
        OptimizerKind::Lars {
            momentum: l.momentum,
            trust_coefficient: l.trust_coefficient,
        },
        l.weight_decay,
    )
    .build();
    let (mut w, mut b) = (t2("lars.w0")?, t1("lars.b0")?);
    let (mut sw, mut sb): (Option<OptimState<B, 2>>, Option<OptimState<B, 1>>) = (None, None);
    for i in 0..3 {
        (w, sw) =
            burn::optim::SimpleOptimizer::step(&optim, l.lr, w, t2(&format!("lars.gw{i}"))?, sw);
        (b, sb) =
            burn::optim::SimpleOptimizer::step(&optim, l.lr, b, t1(&format!("lars.gb{i}"))?, sb);
        compare(&format!("lars.w{}", i + 1), w.clone().into_data())?;
        compare(&format!("lars.b{}", i + 1), b.clone().into_data())?;
    }

    let s = &misc.schedule;
    let epochs = tensor_data(&expected, "schedule.epoch", &file)?
        .convert::<f64>()
        .into_vec::<f64>()
        .unwrap_or_default();
    let lr: Vec<f32> = epochs
        .iter()
        .map(|&e| schedule::learning_rate(e, s.base_lr, s.warmup_epochs, s.epochs) as f32)
        .collect();
    let m: Vec<f32> = epochs
        .iter()
        .map(|&e| schedule::momentum(e, s.moco_m, s.epochs) as f32)
        .collect();
    compare("schedule.lr", TensorData::new(lr, [epochs.len()]))?;
    compare("schedule.momentum", TensorData::new(m, [epochs.len()]))?;

    for (key, h, w, d) in [
        ("sincos.h3_w5_d16", 3, 5, 16),
        ("sincos.h4_w4_d64", 4, 4, 64),
    ] {
        if expected.contains_key(key) {
            compare(
                key,
                TensorData::new(moco_models::vit::sincos_pos_embed(h, w, d), [1 + h * w, d]),
            )?;
        }
    }
    Ok(CaseReport {
        tag: "misc".to_string(),
        checks,
    })
}
