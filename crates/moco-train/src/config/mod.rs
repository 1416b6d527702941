//! The pretraining configuration: what a run trains, in sections — the model, the
//! optimizer, the schedule, the data, the monitors, the checkpoints — saved as the run's
//! `config.json`; its presets ([`presets`]); the flat keys of the first format, which every
//! earlier `config.json` and the study's overrides use ([`keys`]); and how it turns into a
//! model, an optimizer, a schedule and augmentations.

pub mod keys;
pub mod presets;

use moco_data::{AugmentConfig, DatasetKind};
use moco_models::{AttentionKernel, ConvKernel, GeluKernel, LayerNormKernel, Precision};
use moco_models::{BackboneConfig, MocoConfig, ModelError, Stem};
use serde::{Deserialize, Serialize};

use crate::method::Method;
use crate::optim::OptimConfig;
use crate::schedule::{scaled_lr, Schedule};
use crate::trainer::LoopSettings;

pub use presets::TRAIN_PRESETS;

/// The format version written in `config.json` (the first, flat format had none).
pub const CONFIG_VERSION: u32 = 2;

/// The backbone and heads.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct ModelSection {
    /// Backbone preset (`vit_small`, `resnet50`, ...; see [`moco_models::PRESETS`]).
    pub arch: String,
    /// Input image side.
    pub img_size: usize,
    /// ViT patch size.
    pub patch_size: usize,
    /// Input channels (1 for grayscale data).
    pub in_chans: usize,
    /// ViT width override.
    pub embed_dim: Option<usize>,
    /// ViT depth override.
    pub depth: Option<usize>,
    /// ViT heads override.
    pub num_heads: Option<usize>,
    /// ResNet width override (stem and first stage; 64 is the standard width).
    pub width: Option<usize>,
    /// ResNet input stem; unset: the small-image stem for inputs of 64 px or less, the
    /// ImageNet stem (7×7 stride 2 and max-pool) above.
    pub stem: Option<Stem>,
    /// Hidden width of the projector and predictor.
    pub mlp_dim: usize,
    /// Output width of the projector and predictor.
    pub out_dim: usize,
    /// Frozen random patch projection (ViT).
    pub freeze_patch_embed: bool,
    /// How the ViT computes its GELU; `None`: the device's default (see
    /// [`moco_models::Kernels::for_device`]).
    pub gelu_kernel: Option<GeluKernel>,
    /// How the ViT runs its attention; `None`: the device's default.
    pub attention_kernel: Option<AttentionKernel>,
    /// How the ViT runs its LayerNorms; `None`: the device's default.
    pub layer_norm_kernel: Option<LayerNormKernel>,
    /// How the ResNet runs its convolutions; `None`: the device's default.
    pub conv_kernel: Option<ConvKernel>,
}

impl Default for ModelSection {
    fn default() -> Self {
        ModelSection {
            arch: "vit_tiny".into(),
            img_size: 224,
            patch_size: 16,
            in_chans: 3,
            embed_dim: None,
            depth: None,
            num_heads: None,
            width: None,
            stem: None,
            mlp_dim: 4096,
            out_dim: 256,
            freeze_patch_embed: true,
            gelu_kernel: None,
            attention_kernel: None,
            layer_norm_kernel: None,
            conv_kernel: None,
        }
    }
}

/// The update rule of a run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OptimizerName {
    /// AdamW (the ViT recipe).
    AdamW,
    /// LARS (the ResNet recipe).
    Lars,
    /// SGD with momentum 0.9 (for comparison).
    Sgd,
}

impl OptimizerName {
    /// Every optimizer, in the order `--help` lists them.
    pub const ALL: [OptimizerName; 3] = [
        OptimizerName::AdamW,
        OptimizerName::Lars,
        OptimizerName::Sgd,
    ];
}

impl std::str::FromStr for OptimizerName {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.to_ascii_lowercase().as_str() {
            "adamw" => Ok(OptimizerName::AdamW),
            "lars" => Ok(OptimizerName::Lars),
            "sgd" => Ok(OptimizerName::Sgd),
            other => Err(format!(
                "unknown optimizer '{other}': use adamw, lars or sgd"
            )),
        }
    }
}

impl std::fmt::Display for OptimizerName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            OptimizerName::AdamW => "adamw",
            OptimizerName::Lars => "lars",
            OptimizerName::Sgd => "sgd",
        })
    }
}

impl Serialize for OptimizerName {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_string())
    }
}

impl<'de> Deserialize<'de> for OptimizerName {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d)?
            .parse()
            .map_err(serde::de::Error::custom)
    }
}

/// The optimizer.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct OptimizerSection {
    /// AdamW, LARS or SGD.
    pub name: OptimizerName,
    /// Base learning rate, scaled by batch / 256.
    pub base_lr: f64,
    /// The peak learning rate itself, in place of `base_lr · batch / 256` (to change the batch
    /// size at a fixed rate).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub peak_lr: Option<f64>,
    /// Weight decay.
    pub weight_decay: f64,
    /// Global gradient-norm clipping.
    pub clip_grad: Option<f64>,
}

impl Default for OptimizerSection {
    fn default() -> Self {
        OptimizerSection {
            name: OptimizerName::AdamW,
            base_lr: 1.5e-4,
            peak_lr: None,
            weight_decay: 0.1,
            clip_grad: None,
        }
    }
}

/// The batch and the schedule of the learning rate and the momentum.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct ScheduleSection {
    /// Images per optimizer step (before gradient accumulation splits it).
    pub batch_size: usize,
    /// Micro-batches per optimizer step. BN statistics and negatives then come from each
    /// micro-batch.
    pub grad_accum: usize,
    /// Epochs of the schedule.
    pub epochs: f64,
    /// Length of the schedule in optimizer steps, whatever the dataset size: `epochs` and
    /// `warmup_epochs` are then rescaled to span it (warm-up keeps its share).
    pub steps: Option<u64>,
    /// Stop after this many optimizer steps (the schedule still spans `epochs`).
    pub max_steps: Option<u64>,
    /// Linear warm-up, epochs.
    pub warmup_epochs: f64,
    /// Initial EMA coefficient of the momentum encoder (cosine schedule to 1).
    pub momentum: f64,
}

impl Default for ScheduleSection {
    fn default() -> Self {
        ScheduleSection {
            batch_size: 4096,
            grad_accum: 1,
            epochs: 300.0,
            steps: None,
            max_steps: None,
            warmup_epochs: 40.0,
            momentum: 0.99,
        }
    }
}

/// The pretraining data.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct DataSection {
    /// Data folder; the bundled / installed Fashion-MNIST when absent (`bundled`: the
    /// bundled split even when the full set is installed).
    pub path: Option<String>,
    /// Force the data format instead of detecting it.
    pub format: Option<DatasetKind>,
    /// Smallest crop area fraction.
    pub crop_min: f64,
    /// Loader threads.
    pub workers: usize,
    /// Stop at the first unreadable image instead of skipping it.
    pub strict: bool,
}

impl Default for DataSection {
    fn default() -> Self {
        DataSection {
            path: None,
            format: None,
            crop_min: 0.08,
            workers: 2,
            strict: false,
        }
    }
}

/// The paper's monitors: the kNN curve, its dips, the gradient spikes, and progress lines.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct MonitorSection {
    /// kNN evaluation every this many steps (0: only at epoch ends).
    pub knn_every: u64,
    /// kNN neighbours.
    pub knn_k: usize,
    /// kNN vote temperature.
    pub knn_temperature: f64,
    /// At most this many training images form the kNN memory.
    pub knn_memory: usize,
    /// At most this many evaluation images are classified.
    pub knn_eval: usize,
    /// A kNN top-1 drop of more than this many points is logged as a dip; `None` scales it to
    /// the evaluation set: two binomial standard errors of the previous top-1 (about 2 points
    /// for 2,000 images near 70 %, 0.9 for 10,000), at least 0.5.
    pub dip_threshold: Option<f64>,
    /// A gradient norm over this multiple of its running median is a spike.
    pub spike_factor: f64,
    /// Steps in the running median of the spike detector.
    pub spike_window: usize,
    /// Print a progress line every this many steps.
    pub log_every: u64,
}

impl Default for MonitorSection {
    fn default() -> Self {
        MonitorSection {
            knn_every: 0,
            knn_k: 200,
            knn_temperature: 0.07,
            knn_memory: 10000,
            knn_eval: 10000,
            dip_threshold: None,
            spike_factor: 3.0,
            spike_window: 100,
            log_every: 10,
        }
    }
}

/// Checkpoints of the run.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct CheckpointSection {
    /// A checkpoint every this many steps (and at the end).
    pub every: u64,
    /// Checkpoints kept.
    pub keep: usize,
}

impl Default for CheckpointSection {
    fn default() -> Self {
        CheckpointSection {
            every: 500,
            keep: 3,
        }
    }
}

/// Everything that defines a pretraining run; saved as `config.json` in the run directory.
///
/// Every `config.json` written by an earlier version loads (the flat format of the first
/// versions included: [`keys`]); fields added later take their defaults.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct PretrainConfig {
    /// [`CONFIG_VERSION`].
    pub version: u32,
    /// The preset this configuration started from.
    pub preset: String,
    /// Objective.
    pub method: Method,
    /// InfoNCE / NT-Xent temperature.
    pub temperature: f64,
    /// Seed of the initialisation, the data order and the augmentations.
    pub seed: u64,
    /// Precision of the backbone's forward and backward (f32 when absent, bf16, f16);
    /// parameters, optimizer state, heads and loss stay f32.
    pub precision: Option<Precision>,
    /// Skip steps with a non-finite loss or gradient (counted) instead of stopping.
    pub skip_nonfinite: bool,
    /// The backbone and heads.
    pub model: ModelSection,
    /// The optimizer.
    pub optimizer: OptimizerSection,
    /// The batch and the schedules.
    pub schedule: ScheduleSection,
    /// The data.
    pub data: DataSection,
    /// The monitors.
    pub monitors: MonitorSection,
    /// The checkpoints.
    pub checkpoints: CheckpointSection,
}

impl Default for PretrainConfig {
    fn default() -> Self {
        PretrainConfig {
            version: CONFIG_VERSION,
            preset: "fmnist-vit".into(),
            method: Method::MocoV3,
            temperature: 0.2,
            seed: 0,
            precision: None,
            skip_nonfinite: false,
            model: ModelSection::default(),
            optimizer: OptimizerSection::default(),
            schedule: ScheduleSection::default(),
            data: DataSection::default(),
            monitors: MonitorSection::default(),
            checkpoints: CheckpointSection::default(),
        }
    }
}

impl<'de> Deserialize<'de> for PretrainConfig {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let value = serde_json::Value::deserialize(d)?;
        Self::from_json(value).map_err(serde::de::Error::custom)
    }
}

impl std::fmt::Display for PretrainConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let json = serde_json::to_string_pretty(self).map_err(|_| std::fmt::Error)?;
        f.write_str(&json)
    }
}

impl burn::config::Config for PretrainConfig {}

impl PretrainConfig {
    /// The defaults (the first preset's name, MoCo v3's ImageNet ViT recipe).
    pub fn new() -> Self {
        Self::default()
    }

    /// The configuration stored in a run directory's `config.json` (any version this crate
    /// wrote: fields added later take their defaults).
    pub fn load_run(path: &std::path::Path) -> Result<Self, crate::TrainError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| crate::TrainError::Io(format!("{}: cannot read: {e}", path.display())))?;
        serde_json::from_str(&text)
            .map_err(|e| crate::TrainError::Config(format!("{}: {e}", path.display())))
    }

    /// The model configuration.
    pub fn model_config(&self) -> Result<MocoConfig, ModelError> {
        let mut backbone = BackboneConfig::preset(&self.model.arch)?.with_input(
            Some(self.model.img_size),
            Some(self.model.in_chans),
            None,
        );
        if let BackboneConfig::ResNet(r) = &mut backbone {
            if let Some(w) = self.model.width {
                r.width = w;
            }
            if let Some(stem) = self.model.stem {
                r.stem = stem;
            }
            r.conv_kernel = self.model.conv_kernel;
        }
        if let BackboneConfig::Vit(v) = &mut backbone {
            v.patch_size = self.model.patch_size;
            v.freeze_patch_embed = self.model.freeze_patch_embed;
            v.gelu_kernel = self.model.gelu_kernel;
            v.attention_kernel = self.model.attention_kernel;
            v.layer_norm_kernel = self.model.layer_norm_kernel;
            if let Some(d) = self.model.embed_dim {
                v.embed_dim = d;
            }
            if let Some(d) = self.model.depth {
                v.depth = d;
            }
            if let Some(h) = self.model.num_heads {
                v.num_heads = h;
            }
        }
        let config = MocoConfig::for_backbone(backbone, self.model.mlp_dim, self.model.out_dim);
        config.validate()?;
        Ok(config)
    }

    /// The optimizer.
    pub fn optim_config(&self) -> Result<OptimConfig, String> {
        let wd = self.optimizer.weight_decay;
        Ok(match self.optimizer.name {
            OptimizerName::AdamW => OptimConfig::adamw(wd),
            OptimizerName::Lars => OptimConfig::lars(wd),
            OptimizerName::Sgd => OptimConfig::sgd(0.9, wd),
        })
    }

    /// The schedule over a loader of `batches_per_epoch` micro-batches: `epochs` with
    /// `warmup_epochs`, or both rescaled to span `steps`; peak learning rate
    /// [`PretrainConfig::peak_lr`].
    pub fn schedule(&self, batches_per_epoch: usize) -> Schedule {
        let schedule = Schedule {
            epochs: self.schedule.epochs,
            warmup_epochs: self.schedule.warmup_epochs,
            peak_lr: self.peak_lr(),
            base_momentum: self.schedule.momentum,
            batches_per_epoch,
            grad_accum: self.schedule.grad_accum,
        };
        match self.schedule.steps {
            Some(steps) => schedule.spanning(steps),
            None => schedule,
        }
    }

    /// The peak learning rate: `peak_lr` when set, else `base_lr · batch / 256`.
    pub fn peak_lr(&self) -> f64 {
        self.optimizer
            .peak_lr
            .unwrap_or_else(|| scaled_lr(self.optimizer.base_lr, self.schedule.batch_size))
    }

    /// The loop's settings over a loader of `batches_per_epoch` micro-batches.
    pub fn loop_settings(&self, batches_per_epoch: usize) -> LoopSettings {
        LoopSettings {
            schedule: self.schedule(batches_per_epoch),
            max_steps: self.schedule.max_steps,
            temperature: self.temperature,
            clip_grad: self.optimizer.clip_grad,
            skip_nonfinite: self.skip_nonfinite,
            precision: self.precision.unwrap_or_default(),
            log_every: self.monitors.log_every,
            spike_factor: self.monitors.spike_factor,
            spike_window: self.monitors.spike_window,
        }
    }

    /// The data format forced by `dataset`, if any.
    pub fn dataset_kind(&self) -> Result<Option<DatasetKind>, String> {
        Ok(self.data.format)
    }

    /// Checks that the data this configuration names can be found: a preset of CIFAR or of
    /// an image folder needs its path (nothing of those is bundled).
    pub fn check_data(&self) -> Result<(), String> {
        match (&self.data.path, self.data.format) {
            (
                None,
                Some(kind @ (DatasetKind::Cifar10 | DatasetKind::Cifar100 | DatasetKind::Folder)),
            ) => Err(format!(
                "the {kind} data of preset '{}' is not bundled: give its folder with --data",
                self.preset
            )),
            _ => Ok(()),
        }
    }

    /// Augmentations for data of `kind` (`None`: the default Fashion-MNIST).
    pub fn augment(&self, kind: Option<DatasetKind>) -> AugmentConfig {
        augment_for(kind, self.model.img_size, self.data.crop_min)
    }

    /// Checks values a run cannot start with.
    pub fn validate(&self) -> Result<(), String> {
        if self.schedule.batch_size == 0
            || self.schedule.grad_accum == 0
            || !self
                .schedule
                .batch_size
                .is_multiple_of(self.schedule.grad_accum)
        {
            return Err(format!(
                "batch size {} must be a positive multiple of grad_accum {}",
                self.schedule.batch_size, self.schedule.grad_accum
            ));
        }
        if self.schedule.batch_size / self.schedule.grad_accum < 2 {
            return Err(format!(
                "a micro-batch of {} image(s): BatchNorm and the batch negatives need at least 2",
                self.schedule.batch_size / self.schedule.grad_accum
            ));
        }
        if self.schedule.epochs <= 0.0
            || self.schedule.warmup_epochs < 0.0
            || self.schedule.warmup_epochs >= self.schedule.epochs
        {
            return Err(format!(
                "need 0 ≤ warmup_epochs ({}) < epochs ({})",
                self.schedule.warmup_epochs, self.schedule.epochs
            ));
        }
        if self.temperature <= 0.0 {
            return Err(format!(
                "temperature must be positive, got {}",
                self.temperature
            ));
        }
        let (key, lr) = match self.optimizer.peak_lr {
            Some(lr) => ("peak_lr", lr),
            None => ("base_lr", self.optimizer.base_lr),
        };
        if !(lr > 0.0 && lr.is_finite()) {
            return Err(format!("{key} must be a positive learning rate, got {lr}"));
        }
        if !(0.0..=1.0).contains(&self.schedule.momentum) {
            return Err(format!(
                "momentum must be in [0, 1], got {}",
                self.schedule.momentum
            ));
        }
        if !(self.data.crop_min > 0.0 && self.data.crop_min <= 1.0) {
            return Err(format!(
                "crop_min must be in (0, 1], got {}",
                self.data.crop_min
            ));
        }
        if let Some(points) = self.monitors.dip_threshold {
            if points.is_nan() || points < 0.0 {
                return Err(format!("dip_threshold must be ≥ 0 points, got {points}"));
            }
        }
        self.optim_config()?;
        self.dataset_kind()?;
        self.model_config().map_err(|e| e.to_string())?;
        Ok(())
    }
}

/// The augmentation preset of data of `kind` (`None`: the default Fashion-MNIST) at
/// `img_size` px: Fashion-MNIST / MNIST and CIFAR presets, ImageNet's for image folders (with
/// the evaluation resize kept at 256/224 of the crop).
pub fn augment_for(kind: Option<DatasetKind>, img_size: usize, crop_min: f64) -> AugmentConfig {
    match kind {
        None | Some(DatasetKind::FashionMnist) => AugmentConfig::fashion_mnist(img_size, crop_min),
        Some(DatasetKind::Mnist) => AugmentConfig::mnist(img_size, crop_min),
        Some(DatasetKind::Cifar10) => AugmentConfig::cifar(false).with_crop_min(crop_min),
        Some(DatasetKind::Cifar100) => AugmentConfig::cifar(true).with_crop_min(crop_min),
        Some(DatasetKind::Folder) => {
            let mut aug = AugmentConfig::imagenet(crop_min);
            aug.view1.size = img_size;
            aug.view2.size = img_size;
            aug.eval_size = img_size;
            aug.eval_resize = img_size * 256 / 224;
            aug
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Run directories written before a field existed keep loading (`--resume`, evaluation).
    #[test]
    fn configs_without_newer_fields_load() {
        let config = PretrainConfig::preset("fmnist-vit").unwrap();
        let mut value = serde_json::to_value(&config).unwrap();
        value.as_object_mut().unwrap().remove("precision");
        for newer in [
            "stem",
            "gelu_kernel",
            "attention_kernel",
            "layer_norm_kernel",
            "conv_kernel",
        ] {
            value["model"].as_object_mut().unwrap().remove(newer);
        }
        let loaded: PretrainConfig = serde_json::from_value(value).unwrap();
        assert_eq!(loaded.precision, None);
        assert_eq!(loaded, config);
    }
}
