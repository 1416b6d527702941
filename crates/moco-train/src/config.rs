//! The pretraining configuration, its presets, and how it turns into a model, an optimizer
//! and augmentations.

use burn::config::Config;
use moco_data::{AugmentConfig, DatasetKind};
use moco_models::{BackboneConfig, MocoConfig, ModelError, Stem};
use moco_models::{ConvKernel, GeluKernel, Precision};

use crate::method::Method;
use crate::optim::OptimConfig;
use crate::schedule::{scaled_lr, Schedule};
use crate::trainer::LoopSettings;

/// Names accepted by [`PretrainConfig::preset`].
pub const TRAIN_PRESETS: &[&str] = &[
    "fmnist-vit",
    "fmnist-resnet18",
    "cifar-resnet18",
    "imagenet-vit-small",
    "imagenet-vit-base",
    "imagenet-resnet50",
];

/// Everything that defines a pretraining run; saved as `config.json` in the run directory.
#[derive(Config, Debug, PartialEq)]
pub struct PretrainConfig {
    /// The preset this configuration started from.
    #[config(default = "String::from(\"fmnist-vit\")")]
    pub preset: String,
    /// Objective.
    #[config(default = "Method::MocoV3")]
    pub method: Method,
    /// Backbone preset (`vit_small`, `resnet50`, ...).
    #[config(default = "String::from(\"vit_tiny\")")]
    pub arch: String,
    /// Input image side.
    #[config(default = 224)]
    pub img_size: usize,
    /// ViT patch size.
    #[config(default = 16)]
    pub patch_size: usize,
    /// Input channels (1 for grayscale data).
    #[config(default = 3)]
    pub in_chans: usize,
    /// ViT width override.
    #[config(default = "None")]
    pub embed_dim: Option<usize>,
    /// ViT depth override.
    #[config(default = "None")]
    pub depth: Option<usize>,
    /// ViT heads override.
    #[config(default = "None")]
    pub num_heads: Option<usize>,
    /// ResNet width override (stem and first stage; 64 is the standard width).
    #[config(default = "None")]
    pub width: Option<usize>,
    /// ResNet input stem; unset: the small-image stem for inputs of 64 px or less, the
    /// ImageNet stem (7×7 stride 2 and max-pool) above.
    #[config(default = "None")]
    pub stem: Option<Stem>,
    /// Hidden width of the projector and predictor.
    #[config(default = 4096)]
    pub mlp_dim: usize,
    /// Output width of the projector and predictor.
    #[config(default = 256)]
    pub out_dim: usize,
    /// Frozen random patch projection (ViT).
    #[config(default = true)]
    pub freeze_patch_embed: bool,
    /// Images per optimizer step (before gradient accumulation splits it).
    #[config(default = 4096)]
    pub batch_size: usize,
    /// Micro-batches per optimizer step. BN statistics and negatives then come from each
    /// micro-batch.
    #[config(default = 1)]
    pub grad_accum: usize,
    /// Epochs of the schedule.
    #[config(default = 300.0)]
    pub epochs: f64,
    /// Length of the schedule in optimizer steps, whatever the dataset size: `epochs` and
    /// `warmup_epochs` are then rescaled to span it (warm-up keeps its share).
    #[config(default = "None")]
    pub steps: Option<u64>,
    /// Stop after this many optimizer steps (the schedule still spans `epochs`).
    #[config(default = "None")]
    pub max_steps: Option<u64>,
    /// Linear warm-up, epochs.
    #[config(default = 40.0)]
    pub warmup_epochs: f64,
    /// `adamw` or `lars`.
    #[config(default = "String::from(\"adamw\")")]
    pub optimizer: String,
    /// Base learning rate, scaled by batch / 256.
    #[config(default = 1.5e-4)]
    pub base_lr: f64,
    /// Weight decay.
    #[config(default = 0.1)]
    pub weight_decay: f64,
    /// InfoNCE / NT-Xent temperature.
    #[config(default = 0.2)]
    pub temperature: f64,
    /// Initial EMA coefficient (cosine schedule to 1).
    #[config(default = 0.99)]
    pub momentum: f64,
    /// Smallest crop area fraction.
    #[config(default = 0.08)]
    pub crop_min: f64,
    /// Global gradient-norm clipping.
    #[config(default = "None")]
    pub clip_grad: Option<f64>,
    /// Seed of the initialisation, the data order and the augmentations.
    #[config(default = 0)]
    pub seed: u64,
    /// Data folder; the bundled / installed Fashion-MNIST when absent.
    #[config(default = "None")]
    pub data: Option<String>,
    /// Force the data format (`fashion-mnist`, `mnist`, `cifar10`, `cifar100`, `folder`).
    #[config(default = "None")]
    pub dataset: Option<String>,
    /// Loader threads.
    #[config(default = 2)]
    pub workers: usize,
    /// Stop at the first unreadable image instead of skipping it.
    #[config(default = false)]
    pub strict: bool,
    /// kNN evaluation every this many steps (0: only at epoch ends).
    #[config(default = 0)]
    pub knn_every: u64,
    /// kNN neighbours.
    #[config(default = 200)]
    pub knn_k: usize,
    /// kNN vote temperature.
    #[config(default = 0.07)]
    pub knn_temperature: f64,
    /// At most this many training images form the kNN memory.
    #[config(default = 10000)]
    pub knn_memory: usize,
    /// At most this many evaluation images are classified.
    #[config(default = 10000)]
    pub knn_eval: usize,
    /// A kNN top-1 drop of more than this many points is logged as a dip; `None` scales it to
    /// the evaluation set: two binomial standard errors of the previous top-1 (about 2 points
    /// for 2,000 images near 70 %, 0.9 for 10,000), at least 0.5.
    pub dip_threshold: Option<f64>,
    /// A gradient norm over this multiple of its running median is a spike.
    #[config(default = 3.0)]
    pub spike_factor: f64,
    /// Steps in the running median of the spike detector.
    #[config(default = 100)]
    pub spike_window: usize,
    /// Checkpoint every this many steps (and at the end).
    #[config(default = 500)]
    pub checkpoint_every: u64,
    /// Checkpoints kept.
    #[config(default = 3)]
    pub keep_checkpoints: usize,
    /// Skip steps with a non-finite loss or gradient (counted) instead of stopping.
    #[config(default = false)]
    pub skip_nonfinite: bool,
    /// Print a progress line every this many steps.
    #[config(default = 10)]
    pub log_every: u64,
    /// Precision of the backbone's forward and backward (f32 when absent, bf16, f16);
    /// parameters, optimizer state, heads and loss stay f32. An `Option` so that configuration
    /// files written before this field existed still load.
    #[config(default = "None")]
    pub precision: Option<Precision>,
    /// How the ViT computes its GELU; `None`: the device's default (see
    /// [`moco_models::Kernels::for_device`]).
    #[config(default = "None")]
    pub gelu_kernel: Option<GeluKernel>,
    /// How the ResNet runs its convolutions; `None`: the device's default.
    #[config(default = "None")]
    pub conv_kernel: Option<ConvKernel>,
}

impl PretrainConfig {
    /// A named preset (see [`TRAIN_PRESETS`]).
    pub fn preset(name: &str) -> Result<Self, String> {
        let base = Self::new().with_preset(name.to_string());
        Ok(match name {
            // A CPU-sized run (about 15 minutes on 2 cores): a 4-block ViT, 128 wide, on 28 px
            // Fashion-MNIST cut in 16 patches of 7×7, for 450 steps whatever the data size.
            "fmnist-vit" => base
                .with_arch("vit_tiny".into())
                .with_img_size(28)
                .with_patch_size(7)
                .with_in_chans(1)
                .with_embed_dim(Some(128))
                .with_depth(Some(4))
                .with_num_heads(Some(4))
                .with_mlp_dim(512)
                .with_out_dim(128)
                .with_batch_size(128)
                .with_epochs(10.0)
                .with_warmup_epochs(1.0)
                .with_steps(Some(450))
                .with_base_lr(3e-3)
                .with_weight_decay(0.1)
                .with_crop_min(0.2)
                .with_knn_every(50)
                .with_knn_k(20)
                .with_knn_memory(2000)
                .with_knn_eval(2000)
                .with_checkpoint_every(200),
            // The ResNet counterpart for CPUs: a half-width ResNet-18 with the small-image stem.
            "fmnist-resnet18" => base
                .with_arch("resnet18".into())
                .with_width(Some(16))
                .with_img_size(28)
                .with_in_chans(1)
                .with_mlp_dim(512)
                .with_out_dim(128)
                .with_batch_size(128)
                .with_epochs(10.0)
                .with_warmup_epochs(1.0)
                .with_steps(Some(450))
                .with_knn_memory(2000)
                .with_knn_eval(2000)
                .with_optimizer("lars".into())
                .with_base_lr(0.3)
                .with_weight_decay(1.5e-6)
                .with_temperature(0.2)
                .with_crop_min(0.2)
                .with_knn_every(100)
                .with_knn_k(20)
                .with_checkpoint_every(200),
            "cifar-resnet18" => base
                .with_arch("resnet18".into())
                .with_img_size(32)
                .with_mlp_dim(4096)
                .with_out_dim(256)
                .with_batch_size(256)
                .with_epochs(200.0)
                .with_warmup_epochs(10.0)
                .with_optimizer("lars".into())
                .with_base_lr(0.3)
                .with_weight_decay(1.5e-6)
                .with_temperature(0.2)
                .with_crop_min(0.08)
                .with_knn_every(0)
                .with_dataset(Some("cifar10".into())),
            "imagenet-vit-small" | "imagenet-vit-base" => base
                .with_arch(
                    if name.ends_with("small") {
                        "vit_small"
                    } else {
                        "vit_base"
                    }
                    .into(),
                )
                .with_batch_size(4096)
                .with_epochs(300.0)
                .with_warmup_epochs(40.0)
                .with_base_lr(1.5e-4)
                .with_weight_decay(0.1)
                .with_temperature(0.2)
                .with_crop_min(0.08)
                .with_dataset(Some("folder".into()))
                .with_workers(8),
            "imagenet-resnet50" => base
                .with_arch("resnet50".into())
                .with_batch_size(4096)
                .with_epochs(100.0)
                .with_warmup_epochs(10.0)
                .with_optimizer("lars".into())
                .with_base_lr(0.6)
                .with_weight_decay(1e-6)
                .with_temperature(1.0)
                .with_crop_min(0.08)
                .with_dataset(Some("folder".into()))
                .with_workers(8),
            other => {
                return Err(format!(
                    "unknown preset '{other}'; known: {}",
                    TRAIN_PRESETS.join(", ")
                ))
            }
        })
    }

    /// The model configuration.
    pub fn model_config(&self) -> Result<MocoConfig, ModelError> {
        let mut backbone = BackboneConfig::preset(&self.arch)?.with_input(
            Some(self.img_size),
            Some(self.in_chans),
            None,
        );
        if let BackboneConfig::ResNet(r) = &mut backbone {
            if let Some(w) = self.width {
                r.width = w;
            }
            if let Some(stem) = self.stem {
                r.stem = stem;
            }
            r.conv_kernel = self.conv_kernel;
        }
        if let BackboneConfig::Vit(v) = &mut backbone {
            v.patch_size = self.patch_size;
            v.freeze_patch_embed = self.freeze_patch_embed;
            v.gelu_kernel = self.gelu_kernel;
            if let Some(d) = self.embed_dim {
                v.embed_dim = d;
            }
            if let Some(d) = self.depth {
                v.depth = d;
            }
            if let Some(h) = self.num_heads {
                v.num_heads = h;
            }
        }
        let config = MocoConfig::for_backbone(backbone, self.mlp_dim, self.out_dim);
        config.validate()?;
        Ok(config)
    }

    /// The optimizer.
    pub fn optim_config(&self) -> Result<OptimConfig, String> {
        match self.optimizer.to_ascii_lowercase().as_str() {
            "adamw" => Ok(OptimConfig::adamw(self.weight_decay)),
            "lars" => Ok(OptimConfig::lars(self.weight_decay)),
            other => Err(format!("unknown optimizer '{other}': use adamw or lars")),
        }
    }

    /// The configuration stored in a run directory's `config.json` (any version this crate
    /// wrote: fields added later take their defaults).
    pub fn load_run(path: &std::path::Path) -> Result<Self, crate::TrainError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| crate::TrainError::Io(format!("{}: cannot read: {e}", path.display())))?;
        serde_json::from_str(&text)
            .map_err(|e| crate::TrainError::Config(format!("{}: {e}", path.display())))
    }

    /// The schedule over a loader of `batches_per_epoch` micro-batches: `epochs` with
    /// `warmup_epochs`, or both rescaled to span `steps`; peak learning rate
    /// `base_lr · batch / 256`.
    pub fn schedule(&self, batches_per_epoch: usize) -> Schedule {
        let schedule = Schedule {
            epochs: self.epochs,
            warmup_epochs: self.warmup_epochs,
            peak_lr: scaled_lr(self.base_lr, self.batch_size),
            base_momentum: self.momentum,
            batches_per_epoch,
            grad_accum: self.grad_accum,
        };
        match self.steps {
            Some(steps) => schedule.spanning(steps),
            None => schedule,
        }
    }

    /// The loop's settings over a loader of `batches_per_epoch` micro-batches.
    pub fn loop_settings(&self, batches_per_epoch: usize) -> LoopSettings {
        LoopSettings {
            schedule: self.schedule(batches_per_epoch),
            max_steps: self.max_steps,
            temperature: self.temperature,
            clip_grad: self.clip_grad,
            skip_nonfinite: self.skip_nonfinite,
            precision: self.precision.unwrap_or_default(),
            log_every: self.log_every,
            spike_factor: self.spike_factor,
            spike_window: self.spike_window,
        }
    }

    /// The data format forced by `dataset`, if any.
    pub fn dataset_kind(&self) -> Result<Option<DatasetKind>, String> {
        self.dataset.as_deref().map(str::parse).transpose()
    }

    /// Augmentations for data of `kind` (`None`: the default Fashion-MNIST).
    pub fn augment(&self, kind: Option<DatasetKind>) -> AugmentConfig {
        augment_for(kind, self.img_size, self.crop_min)
    }

    /// Checks values a run cannot start with.
    pub fn validate(&self) -> Result<(), String> {
        if self.batch_size == 0
            || self.grad_accum == 0
            || !self.batch_size.is_multiple_of(self.grad_accum)
        {
            return Err(format!(
                "batch size {} must be a positive multiple of grad_accum {}",
                self.batch_size, self.grad_accum
            ));
        }
        if self.epochs <= 0.0 || self.warmup_epochs < 0.0 || self.warmup_epochs >= self.epochs {
            return Err(format!(
                "need 0 ≤ warmup_epochs ({}) < epochs ({})",
                self.warmup_epochs, self.epochs
            ));
        }
        if self.temperature <= 0.0 {
            return Err(format!(
                "temperature must be positive, got {}",
                self.temperature
            ));
        }
        if !(0.0..=1.0).contains(&self.momentum) {
            return Err(format!("momentum must be in [0, 1], got {}", self.momentum));
        }
        if !(self.crop_min > 0.0 && self.crop_min <= 1.0) {
            return Err(format!("crop_min must be in (0, 1], got {}", self.crop_min));
        }
        if let Some(points) = self.dip_threshold {
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
        for newer in ["precision", "gelu_kernel", "conv_kernel"] {
            value.as_object_mut().unwrap().remove(newer);
        }
        let loaded: PretrainConfig = serde_json::from_value(value).unwrap();
        assert_eq!(loaded.precision, None);
        assert_eq!(loaded, config);
    }
}
