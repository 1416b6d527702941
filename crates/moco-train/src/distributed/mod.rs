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
//!
//! - [`cluster`]: where the replicas are (devices of this machine, other machines);
//! - [`collective`]: the collective group (sums with a gradient, all-reduce, joining);
//! - [`data_parallel`]: the replicas of a run and their step;
//! - [`process_group`]: a run over processes, one replica each (MPI: `mpirun -n N`), with
//!   [`mpi`] (the `mpi` feature) as its transport.
//!
//! The collective engine is compiled with the `distributed` feature; without it, a run has
//! one device and [`CollectiveBackend`] is every autodiff backend.

pub mod cluster;
#[cfg(feature = "distributed")]
pub mod collective;
#[cfg(feature = "distributed")]
pub mod data_parallel;
#[cfg(feature = "mpi")]
pub mod mpi;
#[cfg(feature = "distributed")]
pub mod process_group;

pub use cluster::{Cluster, Topology};
#[cfg(feature = "distributed")]
pub use collective::{
    all_reduce_gradients, all_reduce_scalar, join_group, leave_group, CollectiveBackend,
    CollectiveGroup,
};
#[cfg(feature = "distributed")]
pub use data_parallel::{flat_parameters, replica_forward_backward, shard, DataParallel};
#[cfg(feature = "mpi")]
pub use mpi::MpiGroup;
#[cfg(feature = "distributed")]
pub use process_group::{ProcessGroup, ProcessParallel, ProcessReplica};

/// Every autodiff backend: without the `distributed` feature no tensor is summed over
/// replicas.
#[cfg(not(feature = "distributed"))]
pub trait CollectiveBackend: burn::tensor::backend::AutodiffBackend {}

#[cfg(not(feature = "distributed"))]
impl CollectiveBackend for B {}
