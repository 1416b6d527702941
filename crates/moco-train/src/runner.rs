//! Where the gradients of a step are computed: on one device, or by the replicas of a
//! data-parallel group ([`crate::distributed`]). The training loop asks the same two
//! questions of both: the gradients of a micro-batch, then the step's gradients and loss
//! reduced over every replica.

use burn::optim::GradientsParams;
use burn::prelude::*;
use moco_data::Batch;
use moco_models::Precision;

use crate::distributed::{CollectiveBackend, DataParallel};
use crate::method::{Pretrain, StepParams};
use crate::step::forward_backward;
use crate::TrainError;

/// One device, or a data-parallel group whose replica 0 runs here.
pub enum StepRunner<B: CollectiveBackend> {
    /// Everything on one device.
    Single {
        /// Precision of the backbone.
        precision: Precision,
    },
    /// Replicas on several devices or machines.
    Parallel(DataParallel<B>),
}

impl<B: CollectiveBackend> StepRunner<B> {
    /// Whether this process evaluates, logs and checkpoints (the only one on one device).
    pub fn is_main(&self) -> bool {
        match self {
            StepRunner::Single { .. } => true,
            StepRunner::Parallel(dp) => dp.is_main(),
        }
    }

    /// Replicas in the run.
    pub fn world_size(&self) -> usize {
        match self {
            StepRunner::Single { .. } => 1,
            StepRunner::Parallel(dp) => dp.world_size(),
        }
    }

    /// Forward and backward of one micro-batch (both views); `scale` multiplies the loss
    /// before backward. Returns the model, the loss and this replica's gradients.
    pub fn micro_step<M: Pretrain<B>>(
        &self,
        model: M,
        batch: Batch,
        params: &StepParams,
        scale: f64,
        device: &B::Device,
    ) -> Result<(M, f64, GradientsParams), TrainError> {
        let shape = batch.shape;
        let mut views = batch.views.into_iter();
        let (Some(v1), Some(v2)) = (views.next(), views.next()) else {
            return Err(TrainError::Config(
                "the loader produced one view, two are needed".into(),
            ));
        };
        match self {
            StepRunner::Single { precision } => {
                let t = |v: Vec<f32>| Tensor::<B, 4>::from_data(TensorData::new(v, shape), device);
                Ok(forward_backward(
                    model,
                    t(v1),
                    t(v2),
                    params,
                    scale,
                    *precision,
                ))
            }
            StepRunner::Parallel(dp) => {
                dp.micro_step(model, [v1, v2], shape, params, scale, device)
            }
        }
    }

    /// The step's gradients and loss, averaged over the replicas (unchanged on one device);
    /// the other local replicas are told to update with `lr`, `clip` and `skip_nonfinite`.
    pub fn reduce(
        &self,
        grads: GradientsParams,
        loss: f64,
        (lr, clip, skip_nonfinite): (f64, Option<f64>, bool),
        device: &B::Device,
    ) -> Result<(GradientsParams, f64), TrainError> {
        match self {
            StepRunner::Single { .. } => Ok((grads, loss)),
            StepRunner::Parallel(dp) => dp.reduce(grads, loss, lr, clip, skip_nonfinite, device),
        }
    }
}
