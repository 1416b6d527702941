//! MPI as the transport of a run over processes (the `mpi` feature; Open MPI or MPICH is needed
//! to build and to run): `mpirun -n N moco pretrain --mpi …` on one machine, several, or under
//! a cluster's scheduler (`srun`), one process per device. MPI starts the processes, tells each
//! its rank, sums the buffers, and ends every process of the job when one of them dies.

use std::sync::Mutex;

use mpi::collective::SystemOperation;
use mpi::environment::Universe;
use mpi::topology::SimpleCommunicator;
use mpi::traits::*;
use mpi::Threading;

use super::process_group::ProcessGroup;
use crate::TrainError;

/// The processes of the MPI job this process belongs to (`MPI_COMM_WORLD`).
pub struct MpiGroup {
    /// Ends MPI when the group is dropped.
    _universe: Universe,
    rank: usize,
    size: usize,
    local_rank: usize,
    /// MPI is initialised for calls from any thread, one at a time.
    calls: Mutex<()>,
}

impl MpiGroup {
    /// Joins the MPI job that started this process (a process started without `mpirun` is
    /// a job of one). MPI can be initialised once per process: a second call fails.
    pub fn init() -> Result<Self, TrainError> {
        let (universe, threading) = mpi::initialize_with_threading(Threading::Serialized)
            .ok_or_else(|| {
                TrainError::Config("MPI is already initialised in this process".into())
            })?;
        if matches!(threading, Threading::Single | Threading::Funneled) {
            return Err(TrainError::Config(format!(
                "this MPI library supports {threading:?} threading only; calls from the training threads need Serialized or Multiple"
            )));
        }
        let world = universe.world();
        let rank = world.rank() as usize;
        // The processes that share this machine's memory, numbered from 0: which of its
        // devices this process takes.
        let local_rank = world.split_shared(world.rank()).rank() as usize;
        Ok(MpiGroup {
            rank,
            size: world.size() as usize,
            local_rank,
            _universe: universe,
            calls: Mutex::new(()),
        })
    }
}

impl ProcessGroup for MpiGroup {
    fn rank(&self) -> usize {
        self.rank
    }

    fn size(&self) -> usize {
        self.size
    }

    fn local_rank(&self) -> usize {
        self.local_rank
    }

    fn sum(&self, values: &mut [f32]) -> Result<(), TrainError> {
        let _one_at_a_time = self.calls.lock().unwrap_or_else(|e| e.into_inner());
        let send = values.to_vec();
        // MPI's default error handler ends the job on a failed call (a dead peer): the call
        // returns only with the sum.
        SimpleCommunicator::world().all_reduce_into(&send[..], values, SystemOperation::sum());
        Ok(())
    }

    fn abort(&self, code: i32) -> ! {
        SimpleCommunicator::world().abort(code)
    }
}
