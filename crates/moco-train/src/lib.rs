//! Pretraining: the methods (MoCo v3, SimCLR, BYOL), optimizers with MoCo v3's update rules
//! (AdamW, LARS, SGD), the per-iteration schedules and the momentum update, the training loop
//! with the paper's monitors (kNN accuracy curve, per-layer gradient norms, spike and dip
//! detection), checkpoints and exact resume.
//!
//! ```
//! use burn::optim::GradientsParams;
//! use burn::tensor::{Device, Distribution, Tensor};
//! use moco_models::{MocoConfig, VitConfig};
//! use moco_train::{Method, OptimConfig, Pretrain, StepParams};
//!
//! // Training runs under autodiff on the device.
//! let device = Device::flex().autodiff();
//! let vit = VitConfig::vit_tiny().with_img_size(32).with_patch_size(8).with_depth(1);
//! let model = Method::MocoV3.siamese(&MocoConfig::vit(vit, 64, 32), &device);
//! let mut optim = OptimConfig::adamw(0.1).init();
//! let x1 = Tensor::<4>::random([4, 3, 32, 32], Distribution::Normal(0.0, 1.0), &device);
//! let x2 = Tensor::<4>::random([4, 3, 32, 32], Distribution::Normal(0.0, 1.0), &device);
//! let params = StepParams { temperature: 0.2, momentum: 0.99 };
//! let (model, out) = model.forward_loss(x1, x2, &params);
//! let grads = GradientsParams::from_grads(out.loss.backward(), &model);
//! let model = optim.step(1e-3, model, grads);
//! # let _ = model;
//! ```
#![warn(missing_docs)]

use std::path::PathBuf;

pub mod config;
pub mod data;
pub mod distributed;
pub mod ema;
pub mod eval;
pub mod knn;
pub mod knn_monitor;
pub mod machine;
pub mod memory;
pub mod method;
pub mod metrics;
pub mod monitor;
pub mod optim;
pub mod plot;
pub mod pretrain;
pub mod progress;
pub mod run_lock;
pub mod run_state;
pub mod runner;
pub mod schedule;
pub mod step;
pub mod study;
pub mod tensorboard;
pub mod trainer;

pub use config::{PretrainConfig, TRAIN_PRESETS};
pub use data::{open_splits, prepare_data, RunData};
pub use distributed::DataParallel;
pub use ema::ema_update;
pub use eval::{load_pretrained, open_eval_data, DataSpec, EvalData, Pretrained};
pub use knn::{knn_classify, knn_evaluate, KnnConfig, KnnResult};
pub use knn_monitor::KnnMonitor;
pub use machine::Machine;
pub use method::{Method, Pretrain, Siamese, SimClr, StepOutput, StepParams};
pub use metrics::{Event, JsonlSink, MemorySink, MetricSink, StepRecord};
pub use optim::{Optim, OptimConfig, OptimState, OptimizerKind};
pub use plot::{plot_compare, plot_run};
pub use pretrain::{pretrain, pretrain_data_parallel, RunOptions};
pub use schedule::Schedule;
pub use step::{apply_step, forward_backward, measure_gradients, update, Update};
pub use study::{run_study, PatchEmbed, StudyConfig, StudyOptions, StudySummary};
pub use tensorboard::TensorBoardSink;
pub use trainer::{LoopSettings, RunDirectory, RunSummary, Trainer};

/// Errors of a training run.
#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    /// A configuration that cannot run.
    #[error("invalid configuration: {0}")]
    Config(String),
    /// Data that cannot be read.
    #[error(transparent)]
    Data(#[from] moco_data::DataError),
    /// A model that cannot be built or loaded.
    #[error(transparent)]
    Model(#[from] moco_models::ModelError),
    /// Writing or reading the run directory.
    #[error("{0}")]
    Io(String),
    /// A NaN or infinity in the loss or a gradient.
    #[error(
        "step {step}: non-finite loss or gradient (loss {loss}); first layer with a non-finite gradient: {layer}; {}",
        match checkpoint { Some(p) => format!("the last good checkpoint is {}", p.display()), None => "no checkpoint was written yet".to_string() }
    )]
    NonFinite {
        /// The step.
        step: u64,
        /// Its loss.
        loss: f64,
        /// First layer group (from the input side) with a non-finite gradient.
        layer: String,
        /// The newest checkpoint on disk.
        checkpoint: Option<PathBuf>,
    },
}
