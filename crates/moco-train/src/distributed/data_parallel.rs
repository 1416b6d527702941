//! The replicas of a data-parallel run on this machine's devices: replica 0 on the calling
//! thread, replicas 1.. on their own threads fed over channels, each on its shard of every
//! batch, all applying the same update. Their sums go through a [`ThreadGroup`].

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{channel, Receiver, Sender};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use burn::optim::{GradientsAccumulator, GradientsParams, ModuleOptimizer};
use burn::prelude::*;
use moco_models::{with_replicas, Precision, ReplicaGroup};

use super::collective::{Replicas, ThreadGroup};
use super::process_group::{all_reduce_flat, ProcessGroup};
use crate::method::{Pretrain, StepParams};
use crate::step::{forward_backward, measure_gradients, update, Update};
use crate::TrainError;

/// One replica's part of the gradient computation: its shard forward and backward with the
/// group active (SyncBN, gathered keys).
pub fn replica_forward_backward<M: Pretrain>(
    group: &Arc<Replicas>,
    model: M,
    x1: Tensor<4>,
    x2: Tensor<4>,
    params: &StepParams,
    scale: f64,
    precision: Precision,
) -> (M, f64, GradientsParams) {
    let g: Arc<dyn ReplicaGroup> = group.clone();
    with_replicas(g, || {
        forward_backward(model, x1, x2, params, scale, precision)
    })
}

/// Splits a batch of `[n, …]` samples (flattened) into `world` equal contiguous shards.
pub fn shard(data: Vec<f32>, shape: [usize; 4], world: usize) -> Vec<(Vec<f32>, [usize; 4])> {
    let n = shape[0] / world;
    let per = data.len() / shape[0];
    let mut out = Vec::with_capacity(world);
    for chunk in data.chunks(n * per).take(world) {
        out.push((chunk.to_vec(), [n, shape[1], shape[2], shape[3]]));
    }
    out
}

enum Command {
    Micro {
        x1: Vec<f32>,
        x2: Vec<f32>,
        shape: [usize; 4],
        params: StepParams,
        scale: f64,
    },
    Finish {
        lr: f64,
        clip: Option<f64>,
        skip_nonfinite: bool,
    },
    Parameters(Sender<Vec<f32>>),
}

/// Every float parameter of `module`, flattened and concatenated in the module's order.
pub fn flat_parameters<M: burn::module::Module>(module: &M) -> Vec<f32> {
    struct Collect(Vec<f32>);
    impl burn::module::ModuleVisitor for Collect {
        fn visit_float<const D: usize>(&mut self, param: &burn::module::Param<Tensor<D>>) {
            let data = param.val().into_data().convert::<f32>();
            self.0.extend(data.iter::<f32>());
        }
    }
    let mut c = Collect(Vec::new());
    module.visit(&mut c);
    c.0
}

/// The local replicas 1.. of a data-parallel run, and the group of local replica 0 (this
/// thread).
pub struct DataParallel {
    group: Arc<dyn ProcessGroup>,
    replicas: Arc<Replicas>,
    timeout: Duration,
    senders: Vec<Sender<Command>>,
    done: Receiver<Result<(), String>>,
    handles: Vec<JoinHandle<()>>,
    precision: Precision,
    progress: Arc<AtomicU64>,
    stop_watchdog: Arc<AtomicBool>,
}

impl DataParallel {
    /// Starts local replicas 1.. on `devices[1..]`, each a copy of `model` (same parameter ids,
    /// own autodiff graph) with an optimizer from `make_optim` loaded with `optim`'s state;
    /// this thread is replica 0, on `devices[0]`. A collective call that waits longer than
    /// `timeout` ends the process.
    pub fn start<M>(
        model: &M,
        optim: &ModuleOptimizer,
        make_optim: impl Fn() -> ModuleOptimizer,
        devices: &[Device],
        timeout: Duration,
        precision: Precision,
    ) -> Result<Self, TrainError>
    where
        M: Pretrain + 'static,
        M: Send,
    {
        if devices.is_empty() {
            return Err(TrainError::Config("no device given".into()));
        }
        let mut members = ThreadGroup::new(devices.len()).into_iter();
        let group: Arc<dyn ProcessGroup> = Arc::new(members.next().expect("replica 0"));
        let optim_state = optim
            .into_bytes()
            .map_err(|e| TrainError::Io(format!("copying the optimizer state: {e}")))?;
        let (done_tx, done) = channel();
        let mut senders = Vec::new();
        let mut handles = Vec::new();
        for ((local_rank, device), member) in devices.iter().enumerate().skip(1).zip(members) {
            let (tx, rx) = channel::<Command>();
            // A copy with its own tensors (clones would share BN running statistics), taking
            // gradients where the model does.
            let replica = model.valid().train();
            let replica_optim = make_optim()
                .from_bytes(optim_state.clone())
                .map_err(|e| TrainError::Io(format!("copying the optimizer state: {e}")))?;
            let device = device.clone();
            let done_tx = done_tx.clone();
            let member: Arc<dyn ProcessGroup> = Arc::new(member);
            handles.push(
                std::thread::Builder::new()
                    .name(format!("replica-{local_rank}"))
                    .spawn(move || {
                        let model = replica.fork(&device);
                        let result =
                            worker::<M>(member, model, replica_optim, device, rx, precision);
                        let _ = done_tx.send(result.map_err(|e| e.to_string()));
                    })
                    .map_err(|e| {
                        TrainError::Io(format!("cannot start replica {local_rank}: {e}"))
                    })?,
            );
            senders.push(tx);
        }
        let progress = Arc::new(AtomicU64::new(0));
        let stop_watchdog = Arc::new(AtomicBool::new(false));
        spawn_watchdog(progress.clone(), stop_watchdog.clone(), timeout, || {
            std::process::exit(3)
        });
        Ok(DataParallel {
            replicas: Arc::new(Replicas::new(group.clone())),
            group,
            timeout,
            senders,
            done,
            handles,
            precision,
            progress,
            stop_watchdog,
        })
    }

    /// Number of replicas.
    pub fn world_size(&self) -> usize {
        self.group.size()
    }

    /// How long a collective call may wait before the process ends.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    fn send(&self, local_rank: usize, command: Command) -> Result<(), TrainError> {
        self.senders[local_rank - 1].send(command).map_err(|_| {
            let reason = self
                .done
                .try_recv()
                .ok()
                .and_then(|r| r.err())
                .unwrap_or_else(|| "it stopped".into());
            TrainError::Config(format!("replica {local_rank} is gone: {reason}"))
        })
    }

    /// One micro-batch (`views`): one shard per replica, the first of them runs here. Returns this replica's model, its loss and
    /// its (not yet reduced) gradients.
    pub fn micro_step<M: Pretrain>(
        &self,
        model: M,
        views: [Vec<f32>; 2],
        shape: [usize; 4],
        params: &StepParams,
        scale: f64,
        device: &Device,
    ) -> Result<(M, f64, GradientsParams), TrainError> {
        let local = self.world_size();
        if !shape[0].is_multiple_of(local) {
            return Err(TrainError::Config(format!(
                "a batch of {} cannot be split over {local} replicas",
                shape[0]
            )));
        }
        // Each replica's loss is divided by the number of replicas: the summed gradients are
        // those of the mean loss.
        let scale = scale / self.world_size() as f64;
        let [v1, v2] = views;
        let mut s1 = shard(v1, shape, local).into_iter();
        let mut s2 = shard(v2, shape, local).into_iter();
        let (x1, local_shape) = s1.next().expect("shard 0");
        let (x2, _) = s2.next().expect("shard 0");
        for (i, ((a, sh), (b, _))) in s1.zip(s2).enumerate() {
            self.send(
                i + 1,
                Command::Micro {
                    x1: a,
                    x2: b,
                    shape: sh,
                    params: *params,
                    scale,
                },
            )?;
        }
        let t = |v: Vec<f32>| Tensor::<4>::from_data(TensorData::new(v, local_shape), device);
        Ok(replica_forward_backward(
            &self.replicas,
            model,
            t(x1),
            t(x2),
            params,
            scale,
            self.precision,
        ))
    }

    /// The parameters of local replicas 1.. ([`flat_parameters`]), to check that they are the
    /// same as replica 0's.
    pub fn replica_parameters(&self) -> Result<Vec<Vec<f32>>, TrainError> {
        let mut out = Vec::new();
        for local_rank in 1..self.world_size() {
            let (tx, rx) = channel();
            self.send(local_rank, Command::Parameters(tx))?;
            out.push(rx.recv().map_err(|_| {
                TrainError::Config(format!("replica {local_rank} stopped before answering"))
            })?);
        }
        Ok(out)
    }

    /// Ends an optimizer step: the other replicas are told the update, then the gradients and
    /// the loss (mean) are reduced over all replicas. Every replica then applies the same
    /// update (or skips it, or stops, on a non-finite gradient, as this one will).
    #[allow(clippy::too_many_arguments)]
    pub fn reduce<M: Module>(
        &self,
        model: &M,
        grads: GradientsParams,
        loss: f64,
        lr: f64,
        clip: Option<f64>,
        skip_nonfinite: bool,
        device: &Device,
    ) -> Result<(GradientsParams, f64), TrainError> {
        for local_rank in 1..self.world_size() {
            self.send(
                local_rank,
                Command::Finish {
                    lr,
                    clip,
                    skip_nonfinite,
                },
            )?;
        }
        let grads = all_reduce_flat(self.group.as_ref(), model, grads, device)?;
        let loss = mean(self.group.as_ref(), loss)?;
        self.progress.fetch_add(1, Ordering::SeqCst);
        Ok((grads, loss))
    }
}

/// Calls `end` (which ends the process, or the whole job) when `progress` stops moving for
/// `timeout`: a collective call waits for every replica without a deadline of its own, and a
/// missing or dead node must not stall the others forever.
pub(crate) fn spawn_watchdog(
    progress: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    timeout: Duration,
    end: impl FnOnce() + Send + 'static,
) {
    std::thread::spawn(move || {
        let (mut seen, mut since) = (progress.load(Ordering::SeqCst), Instant::now());
        while !stop.load(Ordering::SeqCst) {
            std::thread::sleep(Duration::from_millis(500));
            let now = progress.load(Ordering::SeqCst);
            if now != seen {
                (seen, since) = (now, Instant::now());
            } else if since.elapsed() > timeout {
                eprintln!(
                    "error: no training step finished for {} s: a replica or node stopped answering; exiting (the newest checkpoint is kept; continue with --resume)",
                    timeout.as_secs()
                );
                end();
                return;
            }
        }
    });
}

impl Drop for DataParallel {
    fn drop(&mut self) {
        self.stop_watchdog.store(true, Ordering::SeqCst);
        self.senders.clear();
        for h in self.handles.drain(..) {
            let _ = h.join();
        }
    }
}

/// The mean of `value` over the members of `group`.
fn mean(group: &dyn ProcessGroup, value: f64) -> Result<f64, TrainError> {
    let mut sum = [value as f32];
    group.sum(&mut sum)?;
    Ok(sum[0] as f64 / group.size() as f64)
}

fn worker<M: Pretrain>(
    group: Arc<dyn ProcessGroup>,
    mut model: M,
    mut optim: ModuleOptimizer,
    device: Device,
    commands: Receiver<Command>,
    precision: Precision,
) -> Result<(), TrainError> {
    let replicas = Arc::new(Replicas::new(group.clone()));
    let mut accumulator = GradientsAccumulator::<M>::new();
    let mut loss_sum = 0.0;
    let mut micros = 0usize;
    while let Ok(command) = commands.recv() {
        match command {
            Command::Micro {
                x1,
                x2,
                shape,
                params,
                scale,
            } => {
                let t = |v: Vec<f32>| Tensor::<4>::from_data(TensorData::new(v, shape), &device);
                let (value, grads);
                (model, value, grads) = replica_forward_backward(
                    &replicas,
                    model,
                    t(x1),
                    t(x2),
                    &params,
                    scale,
                    precision,
                );
                accumulator.accumulate(&model, grads);
                loss_sum += value;
                micros += 1;
            }
            Command::Parameters(reply) => {
                let _ = reply.send(flat_parameters(&model));
            }
            Command::Finish {
                lr,
                clip,
                skip_nonfinite,
            } => {
                let grads =
                    std::mem::replace(&mut accumulator, GradientsAccumulator::new()).grads();
                let grads = all_reduce_flat(group.as_ref(), &model, grads, &device)?;
                let loss = mean(group.as_ref(), loss_sum / micros.max(1) as f64)?;
                (loss_sum, micros) = (0.0, 0);
                let (norms, global) = measure_gradients(&model, &grads);
                let outcome = update(
                    model,
                    &mut optim,
                    grads,
                    loss,
                    (&norms, global),
                    lr,
                    clip,
                    skip_nonfinite,
                );
                model = match outcome {
                    Update::Applied(m) | Update::Skipped(m) => m,
                    // The main replica stops the run with the error.
                    Update::NonFinite { .. } => break,
                };
            }
        }
    }
    Ok(())
}
