//! Where the gradients of a step are computed: on one device, or by the replicas of a
//! data-parallel group ([`crate::distributed`]). The training loop asks the same two
//! questions of both: the gradients of a micro-batch, then the step's gradients and loss
//! reduced over every replica.

use burn::module::Module;
use burn::optim::GradientsParams;
use burn::prelude::*;
use moco_data::Batch;
use moco_models::Precision;

use crate::distributed::{DataParallel, ProcessParallel};
use crate::method::{Pretrain, StepParams};
use crate::step::forward_backward;
use crate::TrainError;

/// One device, or a data-parallel group whose replica 0 runs here.
pub struct StepRunner {
    precision: Precision,
    parallel: Option<DataParallel>,
    processes: Option<ProcessParallel>,
}

impl StepRunner {
    /// Everything on one device, the backbone in `precision`.
    pub fn single(precision: Precision) -> Self {
        StepRunner {
            precision,
            parallel: None,
            processes: None,
        }
    }

    /// The replicas of `group`.
    pub fn parallel(group: DataParallel, precision: Precision) -> Self {
        StepRunner {
            precision,
            parallel: Some(group),
            processes: None,
        }
    }

    /// This process's replica of a run over processes.
    pub fn processes(replica: ProcessParallel, precision: Precision) -> Self {
        StepRunner {
            precision,
            parallel: None,
            processes: Some(replica),
        }
    }

    fn group(&self) -> Option<&DataParallel> {
        self.parallel.as_ref()
    }

    fn processes_replica(&self) -> Option<&ProcessParallel> {
        self.processes.as_ref()
    }

    /// Whether this process evaluates, logs and checkpoints (the only one on one device).
    pub fn is_main(&self) -> bool {
        match self.processes_replica() {
            Some(p) => p.is_main(),
            None => true,
        }
    }

    /// Replicas in the run.
    pub fn world_size(&self) -> usize {
        match self.processes_replica() {
            Some(p) => p.world_size(),
            None => self.group().map_or(1, |g| g.world_size()),
        }
    }

    /// Forward and backward of one micro-batch (both views); `scale` multiplies the loss
    /// before backward. Returns the model, the loss and this replica's gradients.
    pub fn micro_step<M: Pretrain>(
        &self,
        model: M,
        batch: Batch,
        params: &StepParams,
        scale: f64,
        device: &Device,
    ) -> Result<(M, f64, GradientsParams), TrainError> {
        let shape = batch.shape;
        let mut views = batch.views.into_iter();
        let (Some(v1), Some(v2)) = (views.next(), views.next()) else {
            return Err(TrainError::Config(
                "the loader produced one view, two are needed".into(),
            ));
        };
        if let Some(group) = self.group() {
            return group.micro_step(model, [v1, v2], shape, params, scale, device);
        }
        let t = |v: Vec<f32>| Tensor::<4>::from_data(TensorData::new(v, shape), device);
        if let Some(p) = self.processes_replica() {
            return Ok(p.micro_step(model, [t(v1), t(v2)], params, scale));
        }
        Ok(forward_backward(
            model,
            t(v1),
            t(v2),
            params,
            scale,
            self.precision,
        ))
    }

    /// The step's gradients and loss, averaged over the replicas (unchanged on one device);
    /// the other local replicas are told to update with `lr`, `clip` and `skip_nonfinite`.
    /// `stop` is this process's wish to stop after the step; the answer's is whether any
    /// process of the run wishes so (every process must stop at the same step).
    pub fn reduce<M: Module>(
        &self,
        model: &M,
        grads: GradientsParams,
        (loss, stop): (f64, bool),
        (lr, clip, skip_nonfinite): (f64, Option<f64>, bool),
        device: &Device,
    ) -> Result<(GradientsParams, f64, bool), TrainError> {
        if let Some(p) = self.processes_replica() {
            return p.reduce(model, grads, loss, stop, device);
        }
        match self.group() {
            None => Ok((grads, loss, stop)),
            Some(group) => {
                let (grads, loss) =
                    group.reduce(model, grads, loss, lr, clip, skip_nonfinite, device)?;
                Ok((grads, loss, stop))
            }
        }
    }
}
