//! Linear probing with MoCo v3's protocol: the backbone frozen and in eval mode throughout, a
//! linear classifier initialised N(0, 0.01) with zero bias, SGD with momentum 0.9 and no
//! weight decay, lr = base_lr × batch / 256 with a per-epoch cosine decay, random resized
//! crop + flip for training and resize + centre crop for evaluation. Several learning rates
//! are trained side by side on the same features (one pass of the backbone serves all).

use std::path::Path;
use std::time::Instant;

use burn::module::{Module, Param};
use burn::nn::{Initializer, Linear, LinearConfig};
use burn::optim::{GradientsParams, ModuleOptimizer};
use burn::prelude::*;
use moco_data::Rng;
use moco_loss::cross_entropy;
use moco_models::export::{torch_state_dict, write_safetensors};
use moco_models::import::family_of_config;
use moco_models::keys::Family;
use moco_models::{AnyBackbone, BackboneConfig};
use serde::{Deserialize, Serialize};

use super::EvalData;
use crate::knn::extract_raw_with;
use crate::optim::OptimConfig;
use crate::TrainError;

/// Linear-probe settings.
#[derive(Clone, Debug, PartialEq)]
pub struct ProbeConfig {
    /// Epochs (MoCo v3: 90).
    pub epochs: usize,
    /// Batch size (MoCo v3: 1024 over 8 GPUs).
    pub batch_size: usize,
    /// Base learning rates to train side by side (`lr = base × batch / 256`); empty: 3 for a
    /// ViT, 0.1 for a ResNet, as MoCo v3.
    pub base_lrs: Vec<f64>,
    /// SGD momentum.
    pub momentum: f64,
    /// Compute the features once, without augmentation, and train on them (seconds instead of
    /// a backbone pass per epoch).
    pub cached_features: bool,
    /// Seed of the classifier initialisation, the order and the augmentations.
    pub seed: u64,
    /// No per-epoch lines.
    pub quiet: bool,
}

impl Default for ProbeConfig {
    fn default() -> Self {
        ProbeConfig {
            epochs: 90,
            batch_size: 256,
            base_lrs: Vec::new(),
            momentum: 0.9,
            cached_features: false,
            seed: 0,
            quiet: false,
        }
    }
}

/// MoCo v3's base learning rate of the linear probe: 3 for a ViT, 0.1 for a ResNet.
pub fn default_probe_lr(config: &BackboneConfig) -> f64 {
    match config {
        BackboneConfig::Vit(_) => 3.0,
        BackboneConfig::ResNet(_) => 0.1,
    }
}

/// One epoch of one classifier.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct EpochResult {
    /// Epoch, from 1.
    pub epoch: usize,
    /// Learning rate used in the epoch.
    pub lr: f64,
    /// Mean training loss.
    pub loss: f64,
    /// Test top-1 (%).
    pub top1: f64,
    /// Test top-5 (%).
    pub top5: f64,
}

/// The epochs of the classifier trained with one base learning rate.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ProbeRun {
    /// The base learning rate.
    pub base_lr: f64,
    /// Every epoch.
    pub epochs: Vec<EpochResult>,
}

impl ProbeRun {
    /// The epoch with the best top-1.
    pub fn best(&self) -> Option<&EpochResult> {
        self.epochs.iter().max_by(|a, b| a.top1.total_cmp(&b.top1))
    }
}

/// What linear probing measured.
#[derive(Debug)]
pub struct ProbeReport {
    /// One run per base learning rate.
    pub runs: Vec<ProbeRun>,
    /// Index in `runs` of the best final top-1.
    pub best: usize,
    /// The classifier of that run, after the last epoch.
    pub classifier: Linear,
    /// Wall time, seconds.
    pub seconds: f64,
}

/// A linear classifier as MoCo v3 initialises it: weight N(0, 0.01), bias 0.
pub fn init_classifier(features: usize, classes: usize, device: &Device) -> Linear {
    let mut fc = LinearConfig::new(features, classes)
        .with_initializer(Initializer::Normal {
            mean: 0.0,
            std: 0.01,
        })
        .init(device);
    fc.bias = Some(Param::from_tensor(Tensor::zeros([classes], device)));
    fc
}

/// Top-1 and top-5 accuracy (%) of `logits` against `labels`.
pub fn accuracy(logits: Tensor<2>, labels: &[usize]) -> (f64, f64) {
    let [n, classes] = logits.dims();
    let k = classes.min(5);
    let idx = logits
        .topk_with_indices(k, 1)
        .1
        .into_data()
        .convert::<i64>()
        .try_into_vec::<i64>()
        .expect("integer indices");
    let (mut top1, mut top5) = (0usize, 0usize);
    for (row, &label) in labels.iter().enumerate().take(n) {
        let best = &idx[row * k..(row + 1) * k];
        top1 += usize::from(best[0] as usize == label);
        top5 += usize::from(best.iter().any(|&c| c as usize == label));
    }
    let n = n.max(1) as f64;
    (100.0 * top1 as f64 / n, 100.0 * top5 as f64 / n)
}

/// The tensors of a backbone, used to check that probing changed none of them (parameters and
/// BN running statistics), as MoCo v3's `sanity_check` does.
fn fingerprint(backbone: &AnyBackbone, config: &BackboneConfig) -> Vec<(String, Vec<u8>)> {
    torch_state_dict(backbone, family_of_config(config))
        .into_iter()
        .map(|(k, d)| (k, d.as_bytes().to_vec()))
        .collect()
}

fn labels_tensor(labels: &[usize], device: &Device) -> Tensor<1, Int> {
    let v: Vec<i64> = labels.iter().map(|&l| l as i64).collect();
    Tensor::from_data(TensorData::new(v, [labels.len()]), device)
}

type Sgd = ModuleOptimizer;

/// One linear classifier per base learning rate, each with its SGD state, trained side by
/// side on the same features.
struct Probes {
    heads: Vec<(Linear, Sgd)>,
    /// Summed loss of each head over the epoch so far.
    loss_sums: Vec<f64>,
    batches: usize,
}

impl Probes {
    fn new(count: usize, dim: usize, classes: usize, momentum: f64, device: &Device) -> Self {
        let heads = (0..count)
            .map(|_| {
                let fc = init_classifier(dim, classes, device);
                (fc, OptimConfig::sgd(momentum, 0.0).init())
            })
            .collect();
        Probes {
            heads,
            loss_sums: vec![0.0; count],
            batches: 0,
        }
    }

    /// One SGD step of every head on a batch of features, head `i` at `lrs[i]`.
    fn step(&mut self, x: Tensor<2>, labels: &[usize], lrs: &[f64]) {
        let x = Tensor::<2>::from_inner(x);
        let y = labels_tensor(labels, &x.device());
        for (i, (fc, optim)) in self.heads.iter_mut().enumerate() {
            let loss = cross_entropy(fc.forward(x.clone()), y.clone());
            self.loss_sums[i] += loss.clone().into_scalar::<f64>();
            let grads = GradientsParams::from_grads(loss.backward(), &*fc);
            *fc = optim.step(lrs[i], fc.clone(), grads);
        }
        self.batches += 1;
    }

    /// Head `i`'s mean loss over the epoch; starts the next epoch's sums.
    fn epoch_losses(&mut self) -> Vec<f64> {
        let n = self.batches.max(1) as f64;
        let losses = self.loss_sums.iter().map(|s| s / n).collect();
        self.loss_sums.iter_mut().for_each(|s| *s = 0.0);
        self.batches = 0;
        losses
    }
}

/// The base learning rates to probe: `config`'s, or `default`.
fn probe_lrs(config: &ProbeConfig, default: f64) -> Result<Vec<f64>, TrainError> {
    if config.epochs == 0 || config.batch_size == 0 {
        return Err(TrainError::Config(
            "epochs and batch size must be positive".into(),
        ));
    }
    let base_lrs = if config.base_lrs.is_empty() {
        vec![default]
    } else {
        config.base_lrs.clone()
    };
    if let Some(bad) = base_lrs.iter().find(|lr| !(**lr > 0.0 && lr.is_finite())) {
        return Err(TrainError::Config(format!(
            "learning rates must be positive, got {bad}"
        )));
    }
    Ok(base_lrs)
}

/// One epoch of every head: over the cached training features in a seeded order, or over
/// fresh augmented views through the frozen backbone.
fn probe_epoch<F: Fn(Tensor<4>) -> Tensor<2>>(
    probes: &mut Probes,
    features: &F,
    cached: Option<&(Tensor<2>, Vec<usize>)>,
    data: &EvalData,
    (epoch, lrs): (usize, &[f64]),
    config: &ProbeConfig,
    device: &Device,
) -> Result<(), TrainError> {
    let Some((feats, labels)) = cached else {
        for batch in data.train_loader(config.batch_size)?.epoch(epoch as u64, 0) {
            let mut batch = batch?;
            let view = batch.views.swap_remove(0);
            let x = Tensor::from_data(TensorData::new(view, batch.shape), device);
            probes.step(features(x), &batch.labels, lrs);
        }
        return Ok(());
    };
    let mut order: Vec<usize> = (0..labels.len()).collect();
    Rng::for_sample(config.seed, epoch as u64, 0, 7).shuffle(&mut order);
    for chunk in order.chunks(config.batch_size) {
        let idx: Vec<i64> = chunk.iter().map(|&i| i as i64).collect();
        let idx = Tensor::<1, Int>::from_data(TensorData::new(idx, [chunk.len()]), device);
        let y: Vec<usize> = chunk.iter().map(|&i| labels[i]).collect();
        probes.step(feats.clone().select(0, idx), &y, lrs);
    }
    Ok(())
}

/// Trains linear classifiers on the frozen `backbone` (run in eval mode without autodiff, so
/// it takes no gradient and its BN statistics stay) and evaluates them on the test split
/// after every epoch. Fails if any backbone tensor changed.
pub fn linear_probe(
    backbone: &AnyBackbone,
    backbone_config: &BackboneConfig,
    data: &EvalData,
    config: &ProbeConfig,
    device: &Device,
) -> Result<ProbeReport, TrainError> {
    let base_lrs = probe_lrs(config, default_probe_lr(backbone_config))?;
    let before = fingerprint(backbone, backbone_config);
    let frozen = backbone.valid();
    let features = |x: Tensor<4>| frozen.forward(x);
    let report = probe_features::<_>(&features, data, config, &base_lrs, device)?;
    if fingerprint(backbone, backbone_config) != before {
        return Err(TrainError::Config(
            "sanity check failed: the frozen backbone changed during linear probing".into(),
        ));
    }
    Ok(report)
}

/// Base learning rate of the raw-pixel probe when none is given.
pub const RAW_PIXEL_PROBE_LR: f64 = 0.1;

/// The floor of the linear probe: the same classifiers, protocol and views, trained on the
/// pixels themselves (normalised by the dataset's mean and deviation, flattened) instead of
/// a backbone's features.
pub fn raw_pixel_probe(
    data: &EvalData,
    config: &ProbeConfig,
    device: &Device,
) -> Result<ProbeReport, TrainError> {
    let base_lrs = probe_lrs(config, RAW_PIXEL_PROBE_LR)?;
    let pixels = |x: Tensor<4>| x.flatten(1, 3);
    probe_features::<_>(&pixels, data, config, &base_lrs, device)
}

/// Linear classifiers, one per base learning rate, trained on `features` of the training
/// views and evaluated on those of the test split after every epoch.
fn probe_features<F>(
    features: &F,
    data: &EvalData,
    config: &ProbeConfig,
    base_lrs: &[f64],
    device: &Device,
) -> Result<ProbeReport, TrainError>
where
    F: Fn(Tensor<4>) -> Tensor<2>,
{
    let start = Instant::now();
    // Features without autodiff; the heads train under it (below).
    let device = &device.clone().inner();
    let test_loader = data.eval_loader(&data.test, 256)?;
    let (test_feats, test_labels) = extract_raw_with(features, &test_loader, device)?;
    let cached = if config.cached_features {
        let loader = data.eval_loader(&data.train, 256)?;
        Some(extract_raw_with(features, &loader, device)?)
    } else {
        None
    };
    device.seed(config.seed);
    let dim = test_feats.dims()[1];
    // The heads train under autodiff; the features come from the frozen backbone as they are.
    let mut probes = Probes::new(
        base_lrs.len(),
        dim,
        data.num_classes(),
        config.momentum,
        &device.clone().autodiff(),
    );
    let mut runs: Vec<ProbeRun> = base_lrs
        .iter()
        .map(|&base_lr| ProbeRun {
            base_lr,
            epochs: Vec::new(),
        })
        .collect();
    for epoch in 0..config.epochs {
        // A half cosine from the scaled base learning rate to 0 over the epochs.
        let decay =
            0.5 * (1.0 + (std::f64::consts::PI * epoch as f64 / config.epochs as f64).cos());
        let lrs: Vec<f64> = base_lrs
            .iter()
            .map(|b| b * config.batch_size as f64 / 256.0 * decay)
            .collect();
        probe_epoch(
            &mut probes,
            features,
            cached.as_ref(),
            data,
            (epoch, &lrs),
            config,
            device,
        )?;
        let losses = probes.epoch_losses();
        for (i, (fc, _)) in probes.heads.iter().enumerate() {
            let (top1, top5) = accuracy(fc.valid().forward(test_feats.clone()), &test_labels);
            let result = EpochResult {
                epoch: epoch + 1,
                lr: lrs[i],
                loss: losses[i],
                top1,
                top5,
            };
            if !config.quiet {
                println!(
                    "probe base_lr {:<6} epoch {:>3}/{}  lr {:.4}  loss {:.4}  top-1 {:.2}  top-5 {:.2}",
                    runs[i].base_lr, result.epoch, config.epochs, result.lr, result.loss, top1, top5
                );
            }
            runs[i].epochs.push(result);
        }
    }
    let best = (0..runs.len())
        .max_by(|&a, &b| {
            let last = |i: usize| runs[i].epochs.last().map_or(0.0, |e| e.top1);
            last(a).total_cmp(&last(b))
        })
        .unwrap_or(0);
    let classifier = probes.heads.swap_remove(best).0.valid();
    Ok(ProbeReport {
        runs,
        best,
        classifier,
        seconds: start.elapsed().as_secs_f64(),
    })
}

/// The classifier's tensors under PyTorch's names (`head.*` for a ViT as timm, `fc.*` for a
/// ResNet as torchvision), weight as `[classes, features]`.
pub fn classifier_tensors(classifier: &Linear, family: Family) -> Vec<(String, TensorData)> {
    let name = match family {
        Family::Vit => "head",
        Family::ResNet => "fc",
    };
    let mut out = vec![(
        format!("{name}.weight"),
        classifier
            .weight
            .val()
            .transpose()
            .into_data()
            .convert::<f32>(),
    )];
    if let Some(b) = &classifier.bias {
        out.push((format!("{name}.bias"), b.val().into_data().convert::<f32>()));
    }
    out
}

/// Writes backbone and classifier as one safetensors file with timm / torchvision names: the
/// layout of a linear-probe or fine-tuned checkpoint, loadable with `num_classes` set in
/// PyTorch and importable here.
pub fn save_classifier_model(
    backbone: &AnyBackbone,
    config: &BackboneConfig,
    classifier: &Linear,
    path: &Path,
) -> Result<usize, TrainError> {
    let family = family_of_config(config);
    let mut tensors = torch_state_dict(backbone, family);
    tensors.extend(classifier_tensors(classifier, family));
    Ok(write_safetensors(path, &tensors, "moco_backbone", config)?)
}
