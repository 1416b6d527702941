//! The training presets: MoCo v3's ImageNet recipes and CPU-sized runs on Fashion-MNIST and
//! CIFAR.

use moco_data::DatasetKind;

use super::{OptimizerName, PretrainConfig};

/// Names accepted by [`PretrainConfig::preset`].
pub const TRAIN_PRESETS: &[&str] = &[
    "fmnist-vit",
    "fmnist-vit-1h",
    "fmnist-resnet18",
    "cifar-resnet18",
    "imagenet-vit-small",
    "imagenet-vit-base",
    "imagenet-resnet50",
];

impl PretrainConfig {
    /// A named preset (see [`TRAIN_PRESETS`]).
    pub fn preset(name: &str) -> Result<Self, String> {
        let base = Self::new().with_preset(name.to_string());
        Ok(match name {
            // A CPU-sized run (about 5 minutes on 2 cores): a 4-block ViT, 128 wide, on 28 px
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
            // What an hour of 2 CPU cores buys: the same ViT over 9 epochs of the full
            // Fashion-MNIST (4,212 steps of 128) with crops of at least 40 % of the 28 px image
            // (smaller ones are too aggressive at this size); its features beat raw pixels in kNN
            // and linear probe (docs/results.md).
            "fmnist-vit-1h" => Self::preset("fmnist-vit")?
                .with_preset(name.to_string())
                .with_steps(Some(4212))
                .with_crop_min(0.4)
                .with_knn_every(468)
                .with_knn_memory(10_000)
                .with_knn_eval(10_000)
                .with_checkpoint_every(468),
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
                .with_optimizer(OptimizerName::Lars)
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
                .with_optimizer(OptimizerName::Lars)
                .with_base_lr(0.3)
                .with_weight_decay(1.5e-6)
                .with_temperature(0.2)
                .with_crop_min(0.08)
                .with_knn_every(0)
                .with_dataset(Some(DatasetKind::Cifar10)),
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
                .with_dataset(Some(DatasetKind::Folder))
                .with_workers(8),
            "imagenet-resnet50" => base
                .with_arch("resnet50".into())
                .with_batch_size(4096)
                .with_epochs(100.0)
                .with_warmup_epochs(10.0)
                .with_optimizer(OptimizerName::Lars)
                .with_base_lr(0.6)
                .with_weight_decay(1e-6)
                .with_temperature(1.0)
                .with_crop_min(0.08)
                .with_dataset(Some(DatasetKind::Folder))
                .with_workers(8),
            other => {
                return Err(format!(
                    "unknown preset '{other}'; known: {}",
                    TRAIN_PRESETS.join(", ")
                ))
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The hour-long recipe is the default ViT run with larger crops over 9 epochs.
    #[test]
    fn the_hour_recipe_is_the_default_run_with_larger_crops_for_longer() {
        let hour = PretrainConfig::preset("fmnist-vit-1h").unwrap();
        let expected = PretrainConfig::preset("fmnist-vit")
            .unwrap()
            .with_preset("fmnist-vit-1h".into())
            .with_steps(Some(9 * 468))
            .with_crop_min(0.4)
            .with_knn_every(468)
            .with_knn_memory(10_000)
            .with_knn_eval(10_000)
            .with_checkpoint_every(468);
        assert_eq!(hour, expected);
        assert!(hour.model_config().is_ok());
    }
}
