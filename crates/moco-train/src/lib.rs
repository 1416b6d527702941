//! Pretraining: the methods (MoCo v3, SimCLR, BYOL), optimizers with MoCo v3's update rules
//! (AdamW, LARS, SGD), the per-iteration schedules and the momentum update.
//!
//! ```
//! use burn::backend::{Autodiff, Flex};
//! use burn::optim::{GradientsParams, Optimizer};
//! use burn::tensor::{Distribution, Tensor};
//! use moco_models::{MocoConfig, VitConfig};
//! use moco_train::{Method, OptimConfig, Pretrain, StepParams};
//!
//! type B = Autodiff<Flex>;
//! let device = Default::default();
//! let vit = VitConfig::vit_tiny().with_img_size(32).with_patch_size(8).with_depth(1);
//! let model = Method::MocoV3.siamese::<B>(&MocoConfig::vit(vit, 64, 32), &device);
//! let mut optim = OptimConfig::adamw(0.1).init();
//! let x1 = Tensor::<B, 4>::random([4, 3, 32, 32], Distribution::Normal(0.0, 1.0), &device);
//! let x2 = Tensor::<B, 4>::random([4, 3, 32, 32], Distribution::Normal(0.0, 1.0), &device);
//! let params = StepParams { temperature: 0.2, momentum: 0.99 };
//! let (model, out) = model.forward_loss(x1, x2, &params);
//! let grads = GradientsParams::from_grads(out.loss.backward(), &model);
//! let model = optim.step(1e-3, model, grads);
//! # let _ = model;
//! ```
#![warn(missing_docs)]

pub mod ema;
pub mod method;
pub mod optim;
pub mod schedule;

pub use ema::ema_update;
pub use method::{Method, Pretrain, Siamese, SimClr, StepOutput, StepParams};
pub use optim::{Optim, OptimConfig, OptimState, OptimizerKind};
