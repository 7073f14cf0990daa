//! The simulated cluster around the emulated API server: one kubelet per node, the workload
//! controllers (Deployments, ReplicaSets, StatefulSets, DaemonSets, garbage collection), a
//! scheduler, seeded scenarios and in-memory hosts that rota's real agent code runs against.
//!
//! Everything talks to the API server's in-process [`Store`](crate::apiserver::Store) and is
//! driven by its change stream plus timers for the simulated delays ([`Timings`]); nothing
//! rescans the cluster on a fixed period.
//!
//! Start one with [`Cluster::start`]; [`ClusterHandle`] gives the per-node hosts
//! ([`SimHost`]), run-time [`Faults`] and "wait until" helpers.

pub mod args;
pub mod faults;
mod handle;
pub mod host;
mod kubelet;
mod objects;
pub mod scenario;
mod scheduler;
mod workloads;

use std::time::Duration;

pub use args::{ClusterArgs, FaultArgs};
pub use faults::Faults;
pub use handle::{Cluster, ClusterHandle, pods_on, settled, wait_for};
pub use host::{PowerState, SimHost};
pub use scenario::{HostSpec, NodeSpec, PdbExpectation, Scenario};

/// Errors of the simulated cluster.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A call to the store failed.
    #[error("API: {0}")]
    Api(#[from] crate::apiserver::Error),
    /// A host operation failed.
    #[error("host: {0}")]
    Host(#[from] rota_agent::Error),
    /// A condition did not hold before its deadline.
    #[error("timed out after {timeout:?} waiting for {what}: {last}")]
    Timeout {
        /// What was awaited.
        what: String,
        /// How long.
        timeout: Duration,
        /// Why the condition still did not hold at the deadline.
        last: String,
    },
    /// No node of that name is simulated.
    #[error("no simulated node {0:?}")]
    UnknownNode(String),
    /// [`Cluster::start`] was called outside a Tokio runtime.
    #[error("the simulated cluster must be started inside a Tokio runtime")]
    NoRuntime,
    /// The simulated cluster was shut down.
    #[error("the simulated cluster is shut down")]
    Stopped,
}

/// The result type of the simulated cluster.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// How long simulated things take. The defaults are small so that a rolling reboot of a
/// 24-node cluster with three nodes at a time finishes in seconds.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Timings {
    /// From a pod's binding to its Ready condition (containers started, readiness passed).
    pub pod_start: Duration,
    /// The longest a terminating pod takes to stop; it stops after
    /// `min(its grace period, pod_stop)`.
    pub pod_stop: Duration,
    /// How long a rebooting node is down before its kubelet starts again.
    pub reboot: Duration,
    /// From a kubelet start (boot or restart) to the node's Ready condition.
    pub node_ready: Duration,
    /// Interval of the kubelet's heartbeats (node Lease and `lastHeartbeatTime`).
    pub heartbeat: Duration,
}

impl Default for Timings {
    fn default() -> Self {
        Timings {
            pod_start: Duration::from_millis(300),
            pod_stop: Duration::from_millis(200),
            reboot: Duration::from_millis(1500),
            node_ready: Duration::from_millis(300),
            heartbeat: Duration::from_secs(10),
        }
    }
}

impl Timings {
    /// Every duration multiplied by `factor` (`2.0`: twice as slow). Negative or non-finite
    /// factors count as 1.
    pub fn scaled(&self, factor: f64) -> Timings {
        let factor = if factor.is_finite() && factor >= 0.0 {
            factor
        } else {
            1.0
        };
        let scale = |d: Duration| d.mul_f64(factor);
        Timings {
            pod_start: scale(self.pod_start),
            pod_stop: scale(self.pod_stop),
            reboot: scale(self.reboot),
            node_ready: scale(self.node_ready),
            heartbeat: scale(self.heartbeat),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scaling_timings() {
        let t = Timings::default().scaled(2.0);
        assert_eq!(t.reboot, Duration::from_secs(3));
        assert_eq!(t.pod_start, Duration::from_millis(600));
        assert_eq!(Timings::default().scaled(f64::NAN), Timings::default());
        assert_eq!(Timings::default().scaled(-1.0), Timings::default());
    }
}
