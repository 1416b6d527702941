//! Data parallelism over processes: one replica per process, the processes of the run summing
//! host buffers (MPI's model: `mpirun -n N moco pretrain --mpi …`, one process per device,
//! on one machine or many). The semantics are those of the replicas on threads: keys gathered
//! from every replica, SyncBN over every replica, the gradient of the mean loss, the same
//! update everywhere; only the transport differs. Device tensors are staged through host
//! memory: one transfer per sum, and one for all the gradients of a step.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use burn::module::{Module, ModuleVisitor, Param};
use burn::optim::GradientsParams;
use burn::prelude::*;
use moco_models::{with_replicas, Precision, ReplicaGroup};

use super::collective::Replicas;
use super::data_parallel::spawn_watchdog;
use crate::method::{Pretrain, StepParams};
use crate::step::forward_backward;
use crate::TrainError;

/// The processes of a run, each with one replica. Every process makes the same calls in the
/// same order (a collective call blocks until all have made it).
pub trait ProcessGroup: Send + Sync {
    /// This process's index, `0..size`; process 0 evaluates, logs and checkpoints.
    fn rank(&self) -> usize;
    /// Number of processes.
    fn size(&self) -> usize;
    /// Index among the processes of this machine (which of its devices this one takes).
    fn local_rank(&self) -> usize;
    /// Replaces `values` by their element-wise sum over every process (each passes a buffer of
    /// the same length).
    fn sum(&self, values: &mut [f32]) -> Result<(), TrainError>;
    /// Ends every process of the run with `code` (after an error in this one, so that the
    /// others do not wait for it).
    fn abort(&self, code: i32) -> !;
}

impl std::fmt::Debug for dyn ProcessGroup {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "process {} of {}", self.rank(), self.size())
    }
}

/// Sum of `x` over the processes of `group`, staged through host memory.
pub(crate) fn host_sum<const D: usize>(group: &dyn ProcessGroup, x: Tensor<D>) -> Tensor<D> {
    let (shape, device, dtype) = (x.shape(), x.device(), x.dtype());
    let mut values = x
        .into_data()
        .convert::<f32>()
        .try_into_vec::<f32>()
        .expect("a float tensor");
    if let Err(e) = group.sum(&mut values) {
        // Inside a forward or backward pass there is no error path: end the whole run.
        eprintln!("error: process {}: {e}", group.rank());
        group.abort(4);
    }
    // Back in the input's precision (a bf16 tensor stays bf16).
    Tensor::from_data(TensorData::new(values, shape), (&device, dtype))
}

/// The replica of this process in a run over processes: its step and the reductions.
pub struct ProcessParallel {
    group: Arc<dyn ProcessGroup>,
    replica: Arc<Replicas>,
    precision: Precision,
    progress: Arc<AtomicU64>,
    stop_watchdog: Arc<AtomicBool>,
}

impl ProcessParallel {
    /// This process's replica of `group`; the process ends when no step finishes for
    /// `timeout` (a process that stopped answering).
    pub fn start(group: Arc<dyn ProcessGroup>, timeout: Duration, precision: Precision) -> Self {
        let progress = Arc::new(AtomicU64::new(0));
        let stop_watchdog = Arc::new(AtomicBool::new(false));
        // A stalled process ends the whole job, not only itself. The watchdog holds no
        // reference: the group (MPI) ends when the run's last reference goes.
        let on_timeout = Arc::downgrade(&group);
        spawn_watchdog(
            progress.clone(),
            stop_watchdog.clone(),
            timeout,
            move || match on_timeout.upgrade() {
                Some(group) => group.abort(3),
                None => std::process::exit(3),
            },
        );
        ProcessParallel {
            replica: Arc::new(Replicas::new(group.clone())),
            group,
            precision,
            progress,
            stop_watchdog,
        }
    }

    /// Number of replicas (processes).
    pub fn world_size(&self) -> usize {
        self.group.size()
    }

    /// Whether this process evaluates, logs and checkpoints.
    pub fn is_main(&self) -> bool {
        self.group.rank() == 0
    }

    /// Checks that every process starts from the same place: the same position in the
    /// schedule (`step`, `epoch`, `batch`) and the same weights (a checksum of `model`'s
    /// parameters). A process that resumed from another checkpoint, or initialised other
    /// weights, would otherwise train out of step with the others.
    pub fn check_same_start<M: Module>(
        &self,
        model: &M,
        position: [u64; 3],
    ) -> Result<(), TrainError> {
        let checksum = parameter_checksum(model);
        let mine = [
            position[0] as f32,
            position[1] as f32,
            position[2] as f32,
            checksum as f32,
        ];
        let mut sums = mine;
        self.group.sum(&mut sums)?;
        // Every process sees size × its own value only when all values are equal.
        let size = self.world_size() as f32;
        let same = |i: usize| (sums[i] - size * mine[i]).abs() <= 1e-5 * (size * mine[i]).abs();
        if !(0..3).all(|i| sums[i] == size * mine[i]) || !same(3) {
            return Err(TrainError::Config(format!(
                "process {} starts at step {} (epoch {}, batch {}) with weights of checksum {checksum:.6e}, and another process does not: resume every process from the same checkpoint (a shared run directory, or the same copy on every machine)",
                self.group.rank(),
                position[0],
                position[1],
                position[2]
            )));
        }
        Ok(())
    }

    /// Forward and backward of this process's shard of a micro-batch (the loader already read
    /// only this shard, see [`moco_data::Shard`]), with the group active.
    pub fn micro_step<M: Pretrain>(
        &self,
        model: M,
        views: [Tensor<4>; 2],
        params: &StepParams,
        scale: f64,
    ) -> (M, f64, GradientsParams) {
        // Each replica's loss is divided by the number of replicas: the summed gradients are
        // those of the mean loss.
        let scale = scale / self.world_size() as f64;
        let g: Arc<dyn ReplicaGroup> = self.replica.clone();
        let [x1, x2] = views;
        with_replicas(g, || {
            forward_backward(model, x1, x2, params, scale, self.precision)
        })
    }

    /// The step's gradients summed over the processes (one transfer for all of them), the
    /// loss averaged, and whether any process asked to stop.
    pub fn reduce<M: Module>(
        &self,
        model: &M,
        grads: GradientsParams,
        loss: f64,
        stop: bool,
        device: &Device,
    ) -> Result<(GradientsParams, f64, bool), TrainError> {
        let grads = all_reduce_flat::<M>(self.group.as_ref(), model, grads, device)?;
        let mut scalars = [loss as f32, if stop { 1.0 } else { 0.0 }];
        self.group.sum(&mut scalars)?;
        self.progress.fetch_add(1, Ordering::SeqCst);
        Ok((
            grads,
            scalars[0] as f64 / self.world_size() as f64,
            scalars[1] > 0.0,
        ))
    }
}

impl Drop for ProcessParallel {
    fn drop(&mut self) {
        self.stop_watchdog.store(true, Ordering::SeqCst);
    }
}

/// The gradients of `model`'s parameters (in the module's order, which is the same in every
/// process), concatenated into one vector, summed over the processes, and put back.
pub(crate) fn all_reduce_flat<M: Module>(
    group: &dyn ProcessGroup,
    model: &M,
    mut grads: GradientsParams,
    device: &Device,
) -> Result<GradientsParams, TrainError> {
    /// Takes each parameter's gradient out, flattened; `has` holds the shape of each that had
    /// one.
    struct Take<'a> {
        grads: &'a mut GradientsParams,
        parts: Vec<Tensor<1>>,
        has: Vec<Option<Shape>>,
    }
    impl ModuleVisitor for Take<'_> {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
            let g = self.grads.remove::<D>(param.id);
            self.has.push(g.as_ref().map(|g| g.shape()));
            if let Some(g) = g {
                self.parts.push(g.flatten(0, D - 1));
            }
        }
    }
    /// Puts the slices of the summed vector back, in the same order.
    struct Put<'a> {
        grads: &'a mut GradientsParams,
        flat: Tensor<1>,
        has: std::vec::IntoIter<Option<Shape>>,
        offset: usize,
    }
    impl ModuleVisitor for Put<'_> {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
            let Some(Some(shape)) = self.has.next() else {
                return;
            };
            let n = shape.num_elements();
            let g = self.flat.clone().narrow(0, self.offset, n).reshape(shape);
            self.grads.register::<D>(param.id, g);
            self.offset += n;
        }
    }
    let mut take = Take {
        grads: &mut grads,
        parts: Vec::new(),
        has: Vec::new(),
    };
    model.visit(&mut take);
    let (parts, has) = (take.parts, take.has);
    if parts.is_empty() {
        return Ok(grads);
    }
    let flat = host_sum(group, Tensor::cat(parts, 0)).to_device(device);
    let mut put = Put {
        grads: &mut grads,
        flat,
        has: has.into_iter(),
        offset: 0,
    };
    model.visit(&mut put);
    Ok(grads)
}

/// Sum of every float parameter of `model`, summed in the module's order.
fn parameter_checksum<M: Module>(model: &M) -> f64 {
    struct Sum(f64);
    impl ModuleVisitor for Sum {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
            self.0 += param.val().sum().into_scalar::<f64>();
        }
    }
    let mut s = Sum(0.0);
    model.visit(&mut s);
    s.0
}
