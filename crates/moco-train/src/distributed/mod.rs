//! Data-parallel pretraining: one replica of the model per device, each on its shard of every
//! batch; keys gathered from every replica before the InfoNCE loss (targets offset by rank, as
//! MoCo v3's `concat_all_gather`); BatchNorm statistics summed over the replicas (SyncBN, every
//! BN layer, with the gradient flowing back to every replica); gradients summed before the
//! update (each replica's loss divided by their number: the gradient of the mean loss); the
//! same update and momentum-encoder step on every replica.
//!
//! The replicas are threads of this process, one per local device ([`DataParallel`]), or
//! processes, one per device, on one machine or many ([`ProcessParallel`], with MPI as the
//! transport). Both sum host buffers in a group ([`ProcessGroup`]); collective calls block
//! until every replica makes them, in the same order.
//!
//! - [`collective`]: the group of threads and the sum over replicas with its gradient;
//! - [`data_parallel`]: the replicas of a run on this machine's devices and their step;
//! - [`process_group`]: a run over processes, one replica each (MPI: `mpirun -n N`), with
//!   [`mpi`] (the `mpi` feature) as its transport.

pub mod collective;
pub mod data_parallel;
#[cfg(feature = "mpi")]
pub mod mpi;
pub mod process_group;

pub use collective::{replica_sum, Replicas, ThreadGroup};
pub use data_parallel::{flat_parameters, replica_forward_backward, shard, DataParallel};
#[cfg(feature = "mpi")]
pub use mpi::MpiGroup;
pub use process_group::{ProcessGroup, ProcessParallel};
