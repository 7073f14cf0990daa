//! The coordinator's state in the Kubernetes API, and its view of the cluster.
//!
//! - [`KubeLedgerStore`]: the slot ledger's [`rota_core::slots::LedgerStore`] over the API — each
//!   node's entry as `rota.dev/` annotations on its Node (merge patches) and the fencing counter
//!   in a ConfigMap written with optimistic concurrency, so that two coordinators can never issue
//!   the same token. Every write first asks the [`WriteGate`]: a coordinator that lost its
//!   leadership writes nothing.
//! - [`ClusterCache`]: Nodes, Pods, PodDisruptionBudgets, DaemonSets and MaintenancePolicies,
//!   kept current by watches (no polling: at steady state the API requests per minute do not
//!   grow with the number of nodes), plus the API server's version.

mod cache;
mod gate;
mod ledger;

pub use cache::{CacheConfig, CacheTasks, ClusterCache, Synced};
pub use gate::WriteGate;
pub use ledger::KubeLedgerStore;

/// Errors of the Kubernetes state layer.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A task of the cache ended (they never do on their own): the cache no longer follows
    /// the cluster.
    #[error("the cluster cache stopped: {0} ended")]
    Stopped(String),
    /// The API server refused or failed a request.
    #[error("Kubernetes API: {0}")]
    Kube(#[from] kube::Error),
}

/// Result alias of the state layer.
pub type Result<T, E = Error> = std::result::Result<T, E>;
