//! The rota demo: rota's whole job on an emulated cluster, and the comparison with kured.
//!
//! - [`fleet`]: the harness — emulator, simulated cluster, real coordinator replicas and one
//!   real agent per node ([`Fleet`]); also what the end-to-end tests drive.
//! - [`kured`]: a documented model of kured's behaviour on the same cluster.
//! - [`report`]: the summary computed from the safety monitor's verdict and the hosts' own
//!   record ([`Report`]).
//! - [`progress`]: the live view of a rollout.
//! - [`cli`]: `rota-sim demo` (the binary's default).
//! - [`campaign`]: `rota-sim campaign`, many seeded rollouts with random faults.
//! - `coordinator`, `nodes`, `process`, `record`: how the replicas, the per-node daemons and
//!   their processes run, and the record of persisted fencing tokens.

pub mod bound;
pub mod campaign;
pub mod cli;
pub(crate) mod coordinator;
pub mod fleet;
pub mod kured;
mod nodes;
mod process;
pub mod progress;
mod record;
mod remote;
pub mod report;
mod zincati;

pub use coordinator::{
    AGENT_SERVICE_ACCOUNT, CoordinatorOptions, ReplicaAddrs, SYSTEM_NAMESPACE, Service,
};
pub use fleet::{
    Fleet, FleetOptions, KubernetesUpgrade, NodeVersions, POLICY_NAME, Scheduler, demo_policy,
    remove_blocked_workload, slot_phase,
};
pub use kured::KuredOptions;
pub use nodes::AgentOptions;
pub use progress::{NodeState, NodeView, Snapshot};
pub use remote::RemoteAgents;
pub use report::{AuditCrossCheck, Report, Stopped, render_comparison};

/// Errors of the demo and its harness.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The simulated cluster failed or a wait timed out.
    #[error(transparent)]
    Cluster(#[from] crate::cluster::Error),
    /// A call to the emulator's store failed.
    #[error("API: {0}")]
    Api(#[from] crate::apiserver::Error),
    /// A host operation failed.
    #[error("host: {0}")]
    Host(#[from] rota_agent::Error),
    /// A Kubernetes client call failed.
    #[error("Kubernetes client: {0}")]
    Kube(#[from] kube::Error),
    /// The safety monitor could not start.
    #[error("safety monitor: {0}")]
    Monitor(#[from] rota_monitor::Error),
    /// Local I/O failed (threads, sockets, files).
    #[error("I/O: {0}")]
    Io(#[from] std::io::Error),
    /// A coordinator replica could not start or stopped.
    #[error("coordinator: {0}")]
    Coordinator(String),
    /// A coordinator replica could not start, or one of its tasks stopped it.
    #[error("coordinator replica")]
    Replica(#[from] rota_coordinator::replica::Error),
    /// A request or setting does not make sense.
    #[error("{0}")]
    Invalid(String),
    /// The fleet (or the part asked for) is shut down.
    #[error("the fleet is shut down")]
    Stopped,
    /// A step on the real control plane failed.
    #[error(transparent)]
    Real(#[from] crate::real::rollout::Error),
}

/// The result type of the demo.
pub type Result<T, E = Error> = std::result::Result<T, E>;
