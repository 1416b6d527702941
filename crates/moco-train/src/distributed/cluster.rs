//! Where the replicas of a data-parallel run are: devices of this machine and, for a
//! multi-node run, the other machines.

use std::time::Duration;

use crate::TrainError;

/// The machines of a multi-node run (burn-collective's global mode): every node runs the same
/// command with its own `node_rank` and `node_address`; one orchestrator (`moco orchestrator`)
/// introduces them.
#[derive(Clone, Debug, PartialEq)]
pub struct Cluster {
    /// Number of machines.
    pub nodes: usize,
    /// This machine's index, `0..nodes`; node 0 evaluates, logs and checkpoints.
    pub node_rank: usize,
    /// The orchestrator, `ws://HOST:PORT`.
    pub orchestrator: String,
    /// Where the other nodes reach this one, `ws://HOST:PORT` (the port is opened here).
    pub node_address: String,
}

impl Cluster {
    /// Checks the addresses and returns the port of `node_address`.
    pub fn data_port(&self) -> Result<u16, TrainError> {
        if self.node_rank >= self.nodes {
            return Err(TrainError::Config(format!(
                "node rank {} is not below the number of nodes {}",
                self.node_rank, self.nodes
            )));
        }
        for (name, a) in [
            ("orchestrator", &self.orchestrator),
            ("node address", &self.node_address),
        ] {
            if !a.starts_with("ws://") {
                return Err(TrainError::Config(format!(
                    "{name} '{a}' must look like ws://HOST:PORT"
                )));
            }
        }
        self.node_address
            .rsplit(':')
            .next()
            .and_then(|p| p.trim_end_matches('/').parse::<u16>().ok())
            .ok_or_else(|| {
                TrainError::Config(format!(
                    "node address '{}' has no port (ws://HOST:PORT)",
                    self.node_address
                ))
            })
    }
}

/// Where the replicas of a run are: `local` devices on this machine, on one or several nodes.
#[derive(Clone, Debug, PartialEq)]
pub struct Topology {
    /// Replicas (devices) on this machine.
    pub local: usize,
    /// The machines, for a multi-node run.
    pub cluster: Option<Cluster>,
    /// Give up when the group has not formed, or no step has finished, for this long (a
    /// missing or dead node would otherwise stall the others forever).
    pub timeout: Duration,
}

impl Topology {
    /// `local` replicas on this machine only.
    pub fn single_node(local: usize) -> Self {
        Topology {
            local,
            cluster: None,
            timeout: Duration::from_secs(1800),
        }
    }

    /// Replicas in all.
    pub fn world(&self) -> usize {
        self.local * self.cluster.as_ref().map_or(1, |c| c.nodes)
    }

    /// Global rank of local replica `local_rank`.
    pub fn rank(&self, local_rank: usize) -> usize {
        self.cluster.as_ref().map_or(0, |c| c.node_rank) * self.local + local_rank
    }

    /// Whether this machine evaluates, logs and checkpoints.
    pub fn is_main(&self) -> bool {
        self.cluster.as_ref().is_none_or(|c| c.node_rank == 0)
    }
}
