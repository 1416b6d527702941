//! End-to-end fine-tuning of a pretrained backbone with a fresh linear head: AdamW with
//! linear warm-up and cosine decay per iteration, label smoothing, stochastic depth and
//! layer-wise learning-rate decay for ViTs (the DeiT / BEiT recipe the paper's fine-tuning
//! builds on, without RandAugment, mixup or cutmix).

use std::path::PathBuf;
use std::time::Instant;

use burn::module::{Module, ModuleVisitor, Param};
use burn::nn::Linear;
use burn::optim::{GradientsParams, ModuleOptimizer};
use burn::prelude::*;
use moco_data::Loader;
use moco_loss::cross_entropy_smoothed;
use moco_models::{AnyBackbone, BackboneConfig};

use super::probe::{accuracy, init_classifier, save_classifier_model, EpochResult};
use super::EvalData;
use crate::knn::extract_raw_with;
use crate::optim::OptimConfig;
use crate::schedule::learning_rate;
use crate::TrainError;

/// Fine-tuning settings.
#[derive(Clone, Debug, PartialEq)]
pub struct FinetuneConfig {
    /// Epochs.
    pub epochs: usize,
    /// Warm-up epochs (linear from 0).
    pub warmup_epochs: f64,
    /// Batch size.
    pub batch_size: usize,
    /// Base learning rate: `lr = base_lr × batch / 256`.
    pub base_lr: f64,
    /// AdamW weight decay (not applied to biases and norm scales).
    pub weight_decay: f64,
    /// Label smoothing ε.
    pub label_smoothing: f64,
    /// Stochastic-depth rate of the last ViT block (0: off).
    pub drop_path: f64,
    /// Layer-wise lr decay for a ViT: block `i` gets `decay^(L + 1 − (i + 1))` of the lr, the
    /// patch embedding and tokens `decay^(L + 1)`, the head 1 (1: off).
    pub layer_decay: f64,
    /// Seed of the head initialisation, the order and the augmentations.
    pub seed: u64,
    /// Write backbone + head here after the last epoch (safetensors, timm / torchvision names).
    pub save: Option<PathBuf>,
    /// No per-epoch lines.
    pub quiet: bool,
}

impl Default for FinetuneConfig {
    fn default() -> Self {
        FinetuneConfig {
            epochs: 100,
            warmup_epochs: 5.0,
            batch_size: 128,
            base_lr: 5e-4,
            weight_decay: 0.05,
            label_smoothing: 0.1,
            drop_path: 0.1,
            layer_decay: 1.0,
            seed: 0,
            save: None,
            quiet: false,
        }
    }
}

/// A backbone with a linear classification head.
#[derive(Module, Debug)]
pub struct Classifier {
    /// The pretrained feature extractor.
    pub backbone: AnyBackbone,
    /// The fresh head.
    pub head: Linear,
}

impl Classifier {
    /// Logits `[batch, classes]`, with stochastic depth at `drop_path` when training.
    pub fn forward(&self, x: Tensor<4>, drop_path: f64) -> Tensor<2> {
        self.head
            .forward(self.backbone.forward_drop_path(x, drop_path))
    }
}

/// The layer-wise-decay depth of a parameter of a [`Classifier`] over a ViT of `depth` blocks:
/// 0 for the patch embedding, CLS token and position embedding, `i + 1` for block `i`,
/// `depth + 1` for the final norm and the head.
pub fn layer_id(path: &[String], depth: usize) -> usize {
    if path.iter().any(|p| p == "head") {
        return depth + 1;
    }
    for (i, seg) in path.iter().enumerate() {
        if seg == "blocks" {
            if let Some(n) = path.get(i + 1).and_then(|s| s.parse::<usize>().ok()) {
                return n + 1;
            }
        }
    }
    let is_embedding = path.iter().any(|p| p == "patch_embed")
        || matches!(
            path.last().map(String::as_str),
            Some("cls_token" | "pos_embed")
        );
    if is_embedding {
        0
    } else {
        depth + 1
    }
}

/// Splits gradients into one set per layer id.
struct SplitByLayer<'a> {
    grads: &'a mut GradientsParams,
    stack: Vec<String>,
    depth: usize,
    groups: Vec<GradientsParams>,
}

impl ModuleVisitor for SplitByLayer<'_> {
    fn enter_module(&mut self, name: &str, _: &str) {
        self.stack.push(name.to_string());
    }
    fn exit_module(&mut self, _: &str, _: &str) {
        self.stack.pop();
    }
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        if let Some(g) = self.grads.remove::<D>(param.id) {
            let id = layer_id(&self.stack, self.depth).min(self.depth + 1);
            self.groups[id].register(param.id, g);
        }
    }
}

/// What fine-tuning measured.
#[derive(Debug)]
pub struct FinetuneReport {
    /// Every epoch (lr of the head's group).
    pub epochs: Vec<EpochResult>,
    /// Wall time, seconds.
    pub seconds: f64,
    /// Training images per second.
    pub images_per_sec: f64,
}

/// The checks of a fine-tuning configuration for `backbone`.
fn check(config: &FinetuneConfig, backbone: &BackboneConfig) -> Result<(), TrainError> {
    if config.epochs == 0 || config.batch_size == 0 {
        return Err(TrainError::Config(
            "epochs and batch size must be positive".into(),
        ));
    }
    if !(config.layer_decay > 0.0 && config.layer_decay <= 1.0) {
        return Err(TrainError::Config(format!(
            "layer decay must be in (0, 1], got {}",
            config.layer_decay
        )));
    }
    if config.layer_decay < 1.0 && matches!(backbone, BackboneConfig::ResNet(_)) {
        return Err(TrainError::Config(
            "layer-wise lr decay applies to ViTs (blocks); a ResNet fine-tunes with one lr".into(),
        ));
    }
    if !(0.0..1.0).contains(&config.drop_path) || !(0.0..1.0).contains(&config.label_smoothing) {
        return Err(TrainError::Config(
            "drop path and label smoothing must be in [0, 1)".into(),
        ));
    }
    Ok(())
}

type Adamw = ModuleOptimizer;

/// The learning rates of a run: peak `lr` (scaled by batch / 256) and the layer-wise factor
/// of each layer id (`layer_decay^(depth + 1 − id)`), over `steps_per_epoch` steps an epoch.
struct LrPlan {
    lr: f64,
    scales: Vec<f64>,
    depth: usize,
    steps_per_epoch: usize,
}

impl LrPlan {
    /// The AdamW step at `lr`, each layer id's gradients at its own factor when the layers
    /// decay.
    fn step(
        &self,
        model: Classifier,
        optim: &mut Adamw,
        mut grads: GradientsParams,
        lr: f64,
        layer_decay: f64,
    ) -> Classifier {
        if self.depth == 0 || layer_decay >= 1.0 {
            return optim.step(lr, model, grads);
        }
        let mut split = SplitByLayer {
            grads: &mut grads,
            stack: Vec::new(),
            depth: self.depth,
            groups: (0..=self.depth + 1)
                .map(|_| GradientsParams::new())
                .collect(),
        };
        model.visit(&mut split);
        let mut model = model;
        for (id, group) in split.groups.into_iter().enumerate() {
            if !group.is_empty() {
                model = optim.step(lr * self.scales[id], model, group);
            }
        }
        model
    }
}

/// What one epoch of fine-tuning did.
struct EpochTrained {
    loss: f64,
    last_lr: f64,
    images: usize,
}

/// One epoch over the training views: label-smoothed cross-entropy with stochastic depth,
/// the learning rate of each step on the warm-up and cosine schedule.
fn train_epoch(
    mut model: Classifier,
    optim: &mut Adamw,
    loader: &Loader,
    (epoch, plan): (usize, &LrPlan),
    config: &FinetuneConfig,
    device: &Device,
) -> Result<(Classifier, EpochTrained), TrainError> {
    let mut done = EpochTrained {
        loss: 0.0,
        last_lr: 0.0,
        images: 0,
    };
    let mut batches = 0usize;
    for (i, batch) in loader.epoch(epoch as u64, 0).enumerate() {
        let mut batch = batch?;
        let view = batch.views.swap_remove(0);
        let n = batch.labels.len();
        let x = Tensor::<4>::from_data(TensorData::new(view, batch.shape), device);
        let y: Vec<i64> = batch.labels.iter().map(|&l| l as i64).collect();
        let y = Tensor::<1, Int>::from_data(TensorData::new(y, [n]), device);
        let logits = model.forward(x, config.drop_path);
        let loss = cross_entropy_smoothed(logits, y, config.label_smoothing);
        let value = loss.clone().into_scalar::<f64>();
        if !value.is_finite() {
            return Err(TrainError::Config(format!(
                "epoch {}: non-finite loss {value}; lower the learning rate",
                epoch + 1
            )));
        }
        let grads = GradientsParams::from_grads(loss.backward(), &model);
        let t = epoch as f64 + i as f64 / plan.steps_per_epoch as f64;
        let lr = learning_rate(t, plan.lr, config.warmup_epochs, config.epochs as f64);
        model = plan.step(model, optim, grads, lr, config.layer_decay);
        done.loss += value;
        done.last_lr = lr;
        done.images += n;
        batches += 1;
    }
    done.loss /= batches.max(1) as f64;
    Ok((model, done))
}

/// Fine-tunes `backbone` with a fresh head on `data`, evaluating on the test split after every
/// epoch.
pub fn finetune(
    backbone: AnyBackbone,
    backbone_config: &BackboneConfig,
    data: &EvalData,
    config: &FinetuneConfig,
    device: &Device,
) -> Result<FinetuneReport, TrainError> {
    check(config, backbone_config)?;
    let start = Instant::now();
    let depth = backbone.depth();
    let dim = backbone_config.num_features();
    // Fine-tuning trains the backbone too: under autodiff, whatever device it was loaded on.
    let device = &device.clone().autodiff();
    device.seed(config.seed);
    let mut model = Classifier {
        backbone: backbone.train(),
        head: init_classifier(dim, data.num_classes(), device),
    };
    let mut optim = OptimConfig::adamw(config.weight_decay)
        .with_decay_1d(false)
        .init();
    let loader = data.train_loader(config.batch_size)?;
    let test = data.eval_loader(&data.test, 256)?;
    let plan = LrPlan {
        lr: config.base_lr * config.batch_size as f64 / 256.0,
        scales: (0..=depth + 1)
            .map(|id| config.layer_decay.powi((depth + 1 - id) as i32))
            .collect(),
        depth,
        steps_per_epoch: loader.batches_per_epoch().max(1),
    };
    let mut epochs = Vec::new();
    let mut images = 0usize;
    for epoch in 0..config.epochs {
        let trained;
        (model, trained) = train_epoch(model, &mut optim, &loader, (epoch, &plan), config, device)?;
        images += trained.images;
        let eval = model.valid();
        let (logits, labels) = extract_raw_with(&|x| eval.forward(x, 0.0), &test, device)?;
        let (top1, top5) = accuracy(logits, &labels);
        let result = EpochResult {
            epoch: epoch + 1,
            lr: trained.last_lr,
            loss: trained.loss,
            top1,
            top5,
        };
        if !config.quiet {
            println!(
                "finetune epoch {:>3}/{}  lr {:.2e}  loss {:.4}  top-1 {:.2}  top-5 {:.2}  ({:.0} s)",
                result.epoch,
                config.epochs,
                result.lr,
                result.loss,
                top1,
                top5,
                start.elapsed().as_secs_f64()
            );
        }
        epochs.push(result);
    }
    if let Some(path) = &config.save {
        let eval = model.valid();
        let n = save_classifier_model(&eval.backbone, backbone_config, &eval.head, path)?;
        if !config.quiet {
            println!("wrote {n} tensors to {}", path.display());
        }
    }
    let seconds = start.elapsed().as_secs_f64();
    Ok(FinetuneReport {
        epochs,
        seconds,
        images_per_sec: images as f64 / seconds.max(1e-9),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> Vec<String> {
        s.split('.').map(String::from).collect()
    }

    #[test]
    fn layer_ids_follow_depth() {
        assert_eq!(layer_id(&p("backbone.patch_embed.proj"), 4), 0);
        assert_eq!(layer_id(&p("backbone.cls_token"), 4), 0);
        assert_eq!(layer_id(&p("backbone.blocks.0.attn.qkv"), 4), 1);
        assert_eq!(layer_id(&p("backbone.blocks.3.mlp.fc2"), 4), 4);
        assert_eq!(layer_id(&p("backbone.norm"), 4), 5);
        assert_eq!(layer_id(&p("head"), 4), 5);
    }
}
