//! Data-parallel pretraining on Burn's collective engine (`burn::collective`): one replica of
//! the model per device, each on its shard of every batch; keys gathered from every replica
//! before the InfoNCE loss (targets offset by rank, as MoCo v3's `concat_all_gather`);
//! BatchNorm statistics summed over the replicas (SyncBN, every BN layer, with the gradient
//! flowing back to every replica); gradients all-reduced (mean) before the update; the same
//! update and momentum-encoder step on every replica.
//!
//! Replica 0 runs on the calling thread and is the model the training loop monitors,
//! evaluates and checkpoints; replicas 1.. run on their own threads and receive their shards
//! over channels. Collective calls block until every replica makes them, in the same order.

use std::sync::mpsc::{channel, Receiver, Sender};
use std::sync::Arc;
use std::thread::JoinHandle;

use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{unary, Backward, Ops, OpsKind};
use burn::backend::Autodiff;
use burn::collective::{self, CollectiveConfig, PeerId, ReduceOperation};
use burn::optim::{GradientsAccumulator, GradientsParams, Optimizer};
use burn::prelude::*;
use burn::tensor::backend::AutodiffBackend;
use burn::tensor::TensorPrimitive;
use moco_models::{with_replicas, Precision, ReplicaGroup};

use crate::method::{Pretrain, StepParams};
use crate::step::{apply_step, forward_backward, measure_gradients};
use crate::TrainError;

/// An autodiff backend whose tensors can be summed over the replicas of a collective group
/// with a gradient (the sum's backward is again a sum over the replicas).
pub trait CollectiveBackend: AutodiffBackend {
    /// Sum of `x` over the peers of the group `peer` belongs to.
    fn collective_sum<const D: usize>(peer: PeerId, x: Tensor<Self, D>) -> Tensor<Self, D>;
}

#[derive(Debug)]
struct SumOverPeers {
    peer: PeerId,
}

fn all_reduce_or_panic<I: Backend>(
    peer: PeerId,
    x: I::FloatTensorPrimitive,
) -> I::FloatTensorPrimitive {
    collective::all_reduce::<I>(peer, x, ReduceOperation::Sum).unwrap_or_else(|e| {
        panic!(
            "data parallelism: the all-reduce of replica {} failed: {e:?}",
            peer.0
        )
    })
}

impl<I: Backend> Backward<I, 1> for SumOverPeers {
    type State = ();

    fn backward(self, ops: Ops<(), 1>, grads: &mut Gradients, _: &mut Checkpointer) {
        let peer = self.peer;
        unary::<I, _>(ops.parents, ops.node, grads, |grad| {
            all_reduce_or_panic::<I>(peer, grad)
        });
    }
}

impl<I: Backend, C: CheckpointStrategy> CollectiveBackend for Autodiff<I, C> {
    fn collective_sum<const D: usize>(peer: PeerId, x: Tensor<Self, D>) -> Tensor<Self, D> {
        let input = x.into_primitive().tensor();
        let summed = all_reduce_or_panic::<I>(peer, input.primitive.clone());
        let op = SumOverPeers { peer };
        let output = match op
            .prepare::<C>([input.node.clone()])
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(prep) => prep.finish((), summed),
            OpsKind::UnTracked(prep) => prep.finish(summed),
        };
        Tensor::from_primitive(TensorPrimitive::Float(output))
    }
}

/// The collective group as the models see it ([`moco_models::replica`]).
pub struct CollectiveGroup {
    rank: usize,
    world: usize,
}

impl CollectiveGroup {
    /// Replica `rank` of `world`; its peer id is its rank.
    pub fn new(rank: usize, world: usize) -> Self {
        CollectiveGroup { rank, world }
    }

    fn peer(&self) -> PeerId {
        PeerId(self.rank as u32)
    }
}

impl<B: CollectiveBackend> ReplicaGroup<B> for CollectiveGroup {
    fn rank(&self) -> usize {
        self.rank
    }
    fn world_size(&self) -> usize {
        self.world
    }
    fn sum(&self, x: Tensor<B, 2>) -> Tensor<B, 2> {
        B::collective_sum(self.peer(), x)
    }
}

/// Joins the collective group of this process as replica `rank` of `world` on `device`
/// (blocks until every replica has joined).
pub fn join_group<B: AutodiffBackend>(
    rank: usize,
    world: usize,
    device: &B::Device,
) -> Result<(), TrainError> {
    let config = CollectiveConfig::default().with_num_devices(world);
    collective::register::<B::InnerBackend>(PeerId(rank as u32), device.clone(), config)
        .map_err(|e| TrainError::Config(format!("replica {rank} cannot join the group: {e:?}")))
}

/// Mean of the gradients over the replicas.
pub fn all_reduce_gradients<B: AutodiffBackend>(
    rank: usize,
    grads: GradientsParams,
) -> Result<GradientsParams, TrainError> {
    grads
        .all_reduce::<B::InnerBackend>(PeerId(rank as u32), ReduceOperation::Mean)
        .map_err(|e| TrainError::Config(format!("gradient all-reduce (replica {rank}): {e:?}")))
}

/// Mean of a scalar over the replicas.
pub fn all_reduce_scalar<B: AutodiffBackend>(
    rank: usize,
    value: f64,
    device: &B::Device,
) -> Result<f64, TrainError> {
    let t = Tensor::<B::InnerBackend, 1>::from_floats([value as f32], device);
    let out = collective::all_reduce::<B::InnerBackend>(
        PeerId(rank as u32),
        t.into_primitive().tensor(),
        ReduceOperation::Mean,
    )
    .map_err(|e| TrainError::Config(format!("all-reduce (replica {rank}): {e:?}")))?;
    Ok(
        Tensor::<B::InnerBackend, 1>::from_primitive(TensorPrimitive::Float(out))
            .into_scalar()
            .elem::<f64>(),
    )
}

/// Leaves the group (every replica calls it) so that another group can form in this process.
pub fn leave_group<B: AutodiffBackend>(rank: usize) {
    let _ = collective::finish_collective::<B::InnerBackend>(PeerId(rank as u32));
}

/// One replica's part of the gradient computation: its shard forward and backward with the
/// group active (SyncBN, gathered keys).
pub fn replica_forward_backward<B: CollectiveBackend, M: Pretrain<B>>(
    group: &Arc<CollectiveGroup>,
    model: M,
    x1: Tensor<B, 4>,
    x2: Tensor<B, 4>,
    params: &StepParams,
    scale: f64,
    precision: Precision,
) -> (M, f64, GradientsParams) {
    let g: Arc<dyn ReplicaGroup<B>> = group.clone();
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
pub fn flat_parameters<B: Backend, M: burn::module::Module<B>>(module: &M) -> Vec<f32> {
    struct Collect(Vec<f32>);
    impl<B: Backend> burn::module::ModuleVisitor<B> for Collect {
        fn visit_float<const D: usize>(&mut self, param: &burn::module::Param<Tensor<B, D>>) {
            let data = param.val().into_data().convert::<f32>();
            self.0.extend(data.iter::<f32>());
        }
    }
    let mut c = Collect(Vec::new());
    module.visit(&mut c);
    c.0
}

/// Replicas 1.. of a data-parallel run and the group of replica 0 (this thread).
pub struct DataParallel<B: CollectiveBackend> {
    group: Arc<CollectiveGroup>,
    senders: Vec<Sender<Command>>,
    done: Receiver<Result<(), String>>,
    handles: Vec<JoinHandle<()>>,
    precision: Precision,
    _backend: std::marker::PhantomData<B>,
}

impl<B: CollectiveBackend> DataParallel<B> {
    /// Starts replicas 1.. on `devices[1..]`, each a copy of `model` (same parameter ids, own
    /// autodiff graph) with an optimizer from `make_optim` loaded with `optim`'s state, and
    /// joins the group as replica 0 on `devices[0]`.
    pub fn start<M, O>(
        model: &M,
        optim: &O,
        make_optim: impl Fn() -> O,
        devices: &[B::Device],
        precision: Precision,
    ) -> Result<Self, TrainError>
    where
        M: Pretrain<B> + 'static,
        M::InnerModule: Send,
        O: Optimizer<M, B> + Send + 'static,
        O::Record: Send,
    {
        let world = devices.len();
        if world == 0 {
            return Err(TrainError::Config("no device given".into()));
        }
        collective::reset_collective::<B::InnerBackend>();
        let (done_tx, done) = channel();
        let mut senders = Vec::new();
        let mut handles = Vec::new();
        for (rank, device) in devices.iter().enumerate().skip(1) {
            let (tx, rx) = channel::<Command>();
            let replica = model.valid();
            let mut replica_optim = make_optim();
            replica_optim = replica_optim.load_record(optim.to_record());
            let device = device.clone();
            let done_tx = done_tx.clone();
            handles.push(
                std::thread::Builder::new()
                    .name(format!("replica-{rank}"))
                    .spawn(move || {
                        // Forked as a trainable module: forking the inner module would drop
                        // which parameters take a gradient.
                        let model = M::from_inner(replica).fork(&device);
                        let result = worker::<B, M, O>(
                            rank,
                            world,
                            model,
                            replica_optim,
                            device,
                            rx,
                            precision,
                        );
                        let _ = done_tx.send(result.map_err(|e| e.to_string()));
                    })
                    .map_err(|e| TrainError::Io(format!("cannot start replica {rank}: {e}")))?,
            );
            senders.push(tx);
        }
        join_group::<B>(0, world, &devices[0])?;
        Ok(DataParallel {
            group: Arc::new(CollectiveGroup::new(0, world)),
            senders,
            done,
            handles,
            precision,
            _backend: std::marker::PhantomData,
        })
    }

    /// Number of replicas.
    pub fn world_size(&self) -> usize {
        self.group.world
    }

    fn send(&self, rank: usize, command: Command) -> Result<(), TrainError> {
        self.senders[rank - 1].send(command).map_err(|_| {
            let reason = self
                .done
                .try_recv()
                .ok()
                .and_then(|r| r.err())
                .unwrap_or_else(|| "it stopped".into());
            TrainError::Config(format!("replica {rank} is gone: {reason}"))
        })
    }

    /// One micro-batch: shards 1.. go to the other replicas, shard 0 runs here. Returns this
    /// replica's model, loss and (not yet reduced) gradients.
    pub fn micro_step<M: Pretrain<B>>(
        &self,
        model: M,
        views: [Vec<f32>; 2],
        shape: [usize; 4],
        params: &StepParams,
        scale: f64,
        device: &B::Device,
    ) -> Result<(M, f64, GradientsParams), TrainError> {
        let world = self.world_size();
        if !shape[0].is_multiple_of(world) {
            return Err(TrainError::Config(format!(
                "a batch of {} cannot be split over {world} devices",
                shape[0]
            )));
        }
        let [v1, v2] = views;
        let mut s1 = shard(v1, shape, world).into_iter();
        let mut s2 = shard(v2, shape, world).into_iter();
        let (x1, local_shape) = s1.next().expect("shard 0");
        let (x2, _) = s2.next().expect("shard 0");
        for (rank, ((a, sh), (b, _))) in s1.zip(s2).enumerate() {
            self.send(
                rank + 1,
                Command::Micro {
                    x1: a,
                    x2: b,
                    shape: sh,
                    params: *params,
                    scale,
                },
            )?;
        }
        let t = |v: Vec<f32>| Tensor::<B, 4>::from_data(TensorData::new(v, local_shape), device);
        Ok(replica_forward_backward(
            &self.group,
            model,
            t(x1),
            t(x2),
            params,
            scale,
            self.precision,
        ))
    }

    /// The parameters of replicas 1.. ([`flat_parameters`]), to check that they are the same
    /// as replica 0's.
    pub fn replica_parameters(&self) -> Result<Vec<Vec<f32>>, TrainError> {
        let mut out = Vec::new();
        for rank in 1..self.world_size() {
            let (tx, rx) = channel();
            self.send(rank, Command::Parameters(tx))?;
            out.push(rx.recv().map_err(|_| {
                TrainError::Config(format!("replica {rank} stopped before answering"))
            })?);
        }
        Ok(out)
    }

    /// Ends an optimizer step: the replicas are told the update, then the gradients (mean) and
    /// the loss (mean) are reduced over all replicas. Every replica then applies the same
    /// update (or skips it, or stops, on a non-finite gradient, as this one will).
    pub fn reduce(
        &self,
        grads: GradientsParams,
        loss: f64,
        lr: f64,
        clip: Option<f64>,
        skip_nonfinite: bool,
        device: &B::Device,
    ) -> Result<(GradientsParams, f64), TrainError> {
        for rank in 1..self.world_size() {
            self.send(
                rank,
                Command::Finish {
                    lr,
                    clip,
                    skip_nonfinite,
                },
            )?;
        }
        let grads = all_reduce_gradients::<B>(0, grads)?;
        let loss = all_reduce_scalar::<B>(0, loss, device)?;
        Ok((grads, loss))
    }
}

impl<B: CollectiveBackend> Drop for DataParallel<B> {
    fn drop(&mut self) {
        self.senders.clear();
        for h in self.handles.drain(..) {
            let _ = h.join();
        }
        leave_group::<B>(0);
    }
}

fn worker<B: CollectiveBackend, M: Pretrain<B>, O: Optimizer<M, B>>(
    rank: usize,
    world: usize,
    mut model: M,
    mut optim: O,
    device: B::Device,
    commands: Receiver<Command>,
    precision: Precision,
) -> Result<(), TrainError> {
    join_group::<B>(rank, world, &device)?;
    let group = Arc::new(CollectiveGroup::new(rank, world));
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
                let t = |v: Vec<f32>| Tensor::<B, 4>::from_data(TensorData::new(v, shape), &device);
                let (value, grads);
                (model, value, grads) = replica_forward_backward(
                    &group,
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
                let grads = all_reduce_gradients::<B>(rank, grads)?;
                let loss = all_reduce_scalar::<B>(rank, loss_sum / micros.max(1) as f64, &device)?;
                (loss_sum, micros) = (0.0, 0);
                let (_, global) = measure_gradients(&model, &grads);
                if !loss.is_finite() || !global.is_finite() {
                    if skip_nonfinite {
                        continue;
                    }
                    break;
                }
                model = apply_step(model, &mut optim, grads, global, lr, clip);
            }
        }
    }
    leave_group::<B>(rank);
    Ok(())
}
