//! The collective operations of a data-parallel run, on host memory: the group of replicas on
//! this machine's threads ([`ThreadGroup`], a [`ProcessGroup`] whose members are threads), and
//! the sum over the replicas that autodiff differentiates ([`replica_sum`]: its backward is
//! again a sum over the replicas, which SyncBN and the gathered keys need).
//!
//! Burn's own distributed operations run on CUDA only; these run on every backend, threads and
//! processes (MPI) alike. Device tensors are staged through host memory.

use std::sync::{Arc, Condvar, Mutex};

use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::{
    BalancedCheckpointing, CheckpointStrategy, NoCheckpointing,
};
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{unary, Backward, Ops, OpsKind};
use burn::backend::{Autodiff, Backend, DispatchKindConversion, DispatchTensor};
use burn::prelude::*;
use moco_models::ReplicaGroup;

use super::process_group::{host_sum, ProcessGroup};
use crate::TrainError;

/// The replicas of a run on this machine's threads, one [`ThreadGroup`] per replica; a sum
/// waits for every replica and adds their buffers in rank order, so every replica gets the
/// same result, run after run.
pub struct ThreadGroup {
    rank: usize,
    shared: Arc<Shared>,
}

struct Shared {
    size: usize,
    round: Mutex<Round>,
    done: Condvar,
}

#[derive(Default)]
struct Round {
    /// The buffers of the replicas that arrived, by rank.
    parts: Vec<Option<Vec<f32>>>,
    /// The sum of the last finished round.
    result: Arc<Vec<f32>>,
    /// Finished rounds.
    finished: u64,
}

impl ThreadGroup {
    /// The members of a group of `size` replicas, rank 0 first.
    pub fn new(size: usize) -> Vec<ThreadGroup> {
        let shared = Arc::new(Shared {
            size,
            round: Mutex::new(Round {
                parts: vec![None; size],
                ..Round::default()
            }),
            done: Condvar::new(),
        });
        (0..size)
            .map(|rank| ThreadGroup {
                rank,
                shared: shared.clone(),
            })
            .collect()
    }
}

impl ProcessGroup for ThreadGroup {
    fn rank(&self) -> usize {
        self.rank
    }

    fn size(&self) -> usize {
        self.shared.size
    }

    fn local_rank(&self) -> usize {
        self.rank
    }

    fn sum(&self, values: &mut [f32]) -> Result<(), TrainError> {
        let poisoned = |_| TrainError::Config("a replica thread panicked".into());
        let mut round = self.shared.round.lock().map_err(poisoned)?;
        let this_round = round.finished;
        round.parts[self.rank] = Some(values.to_vec());
        if round.parts.iter().all(Option::is_some) {
            let parts: Vec<Vec<f32>> = round.parts.iter_mut().map(|p| p.take().unwrap()).collect();
            if let Some(p) = parts.iter().find(|p| p.len() != values.len()) {
                return Err(TrainError::Config(format!(
                    "the replicas summed buffers of {} and {} values",
                    values.len(),
                    p.len()
                )));
            }
            let mut sum = parts[0].clone();
            for part in &parts[1..] {
                sum.iter_mut().zip(part).for_each(|(s, v)| *s += v);
            }
            round.result = Arc::new(sum);
            round.finished += 1;
            self.shared.done.notify_all();
        } else {
            while round.finished == this_round {
                round = self.shared.done.wait(round).map_err(poisoned)?;
            }
        }
        values.copy_from_slice(&round.result[..values.len()]);
        Ok(())
    }

    fn abort(&self, code: i32) -> ! {
        std::process::exit(code)
    }
}

/// The group as the models see it ([`moco_models::replica`]): its sum is [`replica_sum`].
pub struct Replicas {
    group: Arc<dyn ProcessGroup>,
}

impl Replicas {
    /// The replicas of `group`, seen from this member.
    pub fn new(group: Arc<dyn ProcessGroup>) -> Self {
        Replicas { group }
    }
}

impl ReplicaGroup for Replicas {
    fn rank(&self) -> usize {
        self.group.rank()
    }
    fn world_size(&self) -> usize {
        self.group.size()
    }
    fn sum(&self, x: Tensor<2>) -> Tensor<2> {
        replica_sum(&self.group, x)
    }
}

/// Sum of `x` over the members of `group`; under autodiff the gradient of each member's input
/// is the sum over the members of the gradients of the output.
///
/// # Panics
/// On a tracked tensor of a backend this build cannot differentiate the sum on (flex and the
/// CubeCL backends can).
pub fn replica_sum<const D: usize>(group: &Arc<dyn ProcessGroup>, x: Tensor<D>) -> Tensor<D> {
    if !x.is_autodiff() {
        return host_sum(group.as_ref(), x);
    }
    let x = match try_tracked::<burn::backend::Flex, D>(group, x) {
        Ok(summed) => return summed,
        Err(x) => x,
    };
    #[cfg(any(feature = "wgpu", feature = "cuda", feature = "cpu"))]
    let x = match try_tracked::<burn::backend::Cube, D>(group, x) {
        Ok(summed) => return summed,
        Err(x) => x,
    };
    panic!(
        "data parallelism: the sum over replicas is not differentiable on {:?} in this build",
        x.device()
    )
}

/// [`sum_tracked`] when `x` is a tensor of `Autodiff<B, _>`, else `x` back.
// The `Err` hands the inputs back untouched (a `Tensor` is large with several backends built in).
#[allow(clippy::result_large_err)]
fn try_tracked<B: Backend, const D: usize>(
    group: &Arc<dyn ProcessGroup>,
    x: Tensor<D>,
) -> Result<Tensor<D>, Tensor<D>>
where
    DispatchTensor: DispatchKindConversion<Autodiff<B, NoCheckpointing>>
        + DispatchKindConversion<Autodiff<B, BalancedCheckpointing>>
        + DispatchKindConversion<B>,
{
    // Converting consumes the tensor even when it fails: try on a clone (a shared handle).
    if let Ok(p) = x
        .clone()
        .try_into_primitive::<Autodiff<B, NoCheckpointing>>()
    {
        return Ok(sum_tracked::<B, NoCheckpointing, D>(group, p));
    }
    if let Ok(p) = x
        .clone()
        .try_into_primitive::<Autodiff<B, BalancedCheckpointing>>()
    {
        return Ok(sum_tracked::<B, BalancedCheckpointing, D>(group, p));
    }
    Err(x)
}

/// The autodiff node of a sum over the members of `group`.
fn sum_tracked<B: Backend, C: CheckpointStrategy, const D: usize>(
    group: &Arc<dyn ProcessGroup>,
    x: <Autodiff<B, C> as burn::backend::BackendTypes>::FloatTensorPrimitive,
) -> Tensor<D>
where
    DispatchTensor: DispatchKindConversion<Autodiff<B, C>> + DispatchKindConversion<B>,
{
    let node = x.node();
    let summed = host_sum_primitive::<B, D>(group.as_ref(), x.primitive().clone());
    let op = SumOverReplicas::<D> {
        group: group.clone(),
    };
    let output = match op.prepare::<C>([node]).compute_bound().stateful() {
        OpsKind::Tracked(prep) => prep.finish((), summed),
        OpsKind::UnTracked(prep) => prep.finish(summed),
    };
    Tensor::from_primitive::<Autodiff<B, C>>(output)
}

/// [`host_sum`] of a primitive of backend `B`.
fn host_sum_primitive<B: Backend, const D: usize>(
    group: &dyn ProcessGroup,
    x: B::FloatTensorPrimitive,
) -> B::FloatTensorPrimitive
where
    DispatchTensor: DispatchKindConversion<B>,
{
    let x = Tensor::<D>::from_primitive::<B>(x);
    host_sum(group, x)
        .try_into_primitive::<B>()
        .expect("the sum stays on the input's device")
}

/// The backward of a sum over replicas: the sum over replicas of the output's gradients.
struct SumOverReplicas<const D: usize> {
    group: Arc<dyn ProcessGroup>,
}

impl<const D: usize> std::fmt::Debug for SumOverReplicas<D> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SumOverReplicas({})", self.group.size())
    }
}

impl<B: Backend, const D: usize> Backward<B, 1> for SumOverReplicas<D>
where
    DispatchTensor: DispatchKindConversion<B>,
{
    type State = ();

    fn backward(self, ops: Ops<(), 1>, grads: &mut Gradients, _: &mut Checkpointer) {
        let group = self.group;
        unary::<B, _>(ops.parents, ops.node, grads, |grad| {
            host_sum_primitive::<B, D>(group.as_ref(), grad)
        });
    }
}
