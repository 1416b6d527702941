//! The collective group of a data-parallel run on Burn's collective engine: sums over the
//! replicas with a gradient (SyncBN, gathered keys), all-reduce of gradients and scalars,
//! joining and leaving the group.

use std::sync::mpsc::channel;
use std::sync::Arc;

use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{unary, Backward, Ops, OpsKind};
use burn::backend::Autodiff;
use burn::collective::{self, CollectiveConfig, PeerId, ReduceOperation};
use burn::optim::GradientsParams;
use burn::prelude::*;
use burn::tensor::backend::AutodiffBackend;
use burn::tensor::TensorPrimitive;
use moco_models::ReplicaGroup;

use super::cluster::Topology;
use super::process_group::{host_sum, ProcessGroup};
use crate::TrainError;

/// An autodiff backend whose tensors can be summed over the replicas of a collective group
/// with a gradient (the sum's backward is again a sum over the replicas).
pub trait CollectiveBackend: AutodiffBackend {
    /// Sum of `x` over the peers of the group `peer` belongs to.
    fn collective_sum<const D: usize>(peer: PeerId, x: Tensor<D>) -> Tensor<D>;

    /// Sum of `x` over the processes of `group` (one replica each), staged through host
    /// memory.
    fn process_sum<const D: usize>(
        group: &Arc<dyn ProcessGroup>,
        x: Tensor<D>,
    ) -> Tensor<D>;
}

#[derive(Debug)]
struct SumOverPeers {
    peer: PeerId,
}

fn all_reduce_or_panic(
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

impl Backward<I, 1> for SumOverPeers {
    type State = ();

    fn backward(self, ops: Ops<(), 1>, grads: &mut Gradients, _: &mut Checkpointer) {
        let peer = self.peer;
        unary::<I, _>(ops.parents, ops.node, grads, |grad| {
            all_reduce_or_panic::<I>(peer, grad)
        });
    }
}

struct SumOverProcesses<const D: usize> {
    group: Arc<dyn ProcessGroup>,
}

impl<const D: usize> std::fmt::Debug for SumOverProcesses<D> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SumOverProcesses({})", self.group.size())
    }
}

fn process_sum_primitive<const D: usize>(
    group: &dyn ProcessGroup,
    x: I::FloatTensorPrimitive,
) -> I::FloatTensorPrimitive {
    let x = Tensor::<D>::from_primitive(TensorPrimitive::Float(x));
    host_sum(group, x).into_primitive().tensor()
}

impl<const D: usize> Backward<I, 1> for SumOverProcesses<D> {
    type State = ();

    fn backward(self, ops: Ops<(), 1>, grads: &mut Gradients, _: &mut Checkpointer) {
        let group = self.group;
        unary::<I, _>(ops.parents, ops.node, grads, |grad| {
            process_sum_primitive::<I, D>(group.as_ref(), grad)
        });
    }
}

/// `x` summed by `sum` (forward) with `op` as its backward: the autodiff node of a sum over
/// replicas.
fn sum_with_backward<I, C, Op, const D: usize>(
    x: Tensor<Autodiff<I, C>, D>,
    op: Op,
    sum: impl FnOnce(I::FloatTensorPrimitive) -> I::FloatTensorPrimitive,
) -> Tensor<Autodiff<I, C>, D>
where
    I: Backend,
    C: CheckpointStrategy,
    Op: Backward<I, 1, State = ()>,
{
    let input = x.into_primitive().tensor();
    let summed = sum(input.primitive.clone());
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

impl<C: CheckpointStrategy> CollectiveBackend for Autodiff<I, C> {
    fn process_sum<const D: usize>(
        group: &Arc<dyn ProcessGroup>,
        x: Tensor<D>,
    ) -> Tensor<D> {
        let op = SumOverProcesses::<D> {
            group: group.clone(),
        };
        sum_with_backward(x, op, |p| process_sum_primitive::<I, D>(group.as_ref(), p))
    }

    fn collective_sum<const D: usize>(peer: PeerId, x: Tensor<D>) -> Tensor<D> {
        sum_with_backward(x, SumOverPeers { peer }, |p| {
            all_reduce_or_panic::<I>(peer, p)
        })
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

impl ReplicaGroup for CollectiveGroup {
    fn rank(&self) -> usize {
        self.rank
    }
    fn world_size(&self) -> usize {
        self.world
    }
    fn sum(&self, x: Tensor<2>) -> Tensor<2> {
        B::collective_sum(self.peer(), x)
    }
}

/// The collective engine's configuration of `topology`.
pub(crate) fn collective_config(topology: &Topology) -> Result<CollectiveConfig, TrainError> {
    let mut config = CollectiveConfig::default().with_num_devices(topology.local);
    if let Some(c) = &topology.cluster {
        let port = c.data_port()?;
        let parse = |a: &str| {
            a.parse::<burn_communication::Address>()
                .map_err(|e| TrainError::Config(format!("address '{a}': {e}")))
        };
        config = config
            .with_num_nodes(c.nodes as u32)
            .with_global_address(parse(&c.orchestrator)?)
            .with_node_address(parse(&c.node_address)?)
            .with_data_service_port(port);
    }
    Ok(config)
}

/// Joins the collective group as local replica `local_rank` on `device`; blocks until every
/// replica of every node has joined, or fails after the topology's timeout.
pub fn join_group(
    local_rank: usize,
    topology: &Topology,
    device: &Device,
) -> Result<(), TrainError> {
    let config = collective_config(topology)?;
    let rank = topology.rank(local_rank);
    let device = device.clone();
    let (tx, rx) = channel();
    std::thread::spawn(move || {
        let _ = tx.send(collective::register(
            PeerId(rank as u32),
            device,
            config,
        ));
    });
    match rx.recv_timeout(topology.timeout) {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(TrainError::Config(format!(
            "replica {rank} cannot join the group: {e:?}"
        ))),
        Err(_) => Err(TrainError::Config(match &topology.cluster {
            Some(c) => format!(
                "the group of {} replicas on {} nodes did not form within {} s: check that every node runs with --nodes {} and its own --node-rank, that the orchestrator at {} is running and reachable, and that port {} of {} is open to the other nodes",
                topology.world(),
                c.nodes,
                topology.timeout.as_secs(),
                c.nodes,
                c.orchestrator,
                c.data_port().unwrap_or(0),
                c.node_address
            ),
            None => format!(
                "the {} local replicas did not all join within {} s",
                topology.local,
                topology.timeout.as_secs()
            ),
        })),
    }
}

/// Sum of the gradients over the replicas (each replica's loss is already divided by the
/// number of replicas, so this is the gradient of the mean loss).
pub fn all_reduce_gradients(
    rank: usize,
    grads: GradientsParams,
) -> Result<GradientsParams, TrainError> {
    grads
        .all_reduce(PeerId(rank as u32), ReduceOperation::Sum)
        .map_err(|e| TrainError::Config(format!("gradient all-reduce (replica {rank}): {e:?}")))
}

/// Mean of a scalar over `world` replicas.
pub fn all_reduce_scalar(
    rank: usize,
    world: usize,
    value: f64,
    device: &Device,
) -> Result<f64, TrainError> {
    let t = Tensor::<1>::from_floats([value as f32], device);
    let out = collective::all_reduce(
        PeerId(rank as u32),
        t.into_primitive().tensor(),
        ReduceOperation::Sum,
    )
    .map_err(|e| TrainError::Config(format!("all-reduce (replica {rank}): {e:?}")))?;
    let sum = Tensor::<1>::from_primitive(TensorPrimitive::Float(out))
        .into_scalar::<f64>();
    Ok(sum / world as f64)
}

/// Leaves the group (every replica calls it) so that another group can form in this process.
pub fn leave_group(rank: usize) {
    let _ = collective::finish_collective(PeerId(rank as u32));
}
