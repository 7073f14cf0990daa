//! An emulated Kubernetes API server.
//!
//! [`Store`] holds the cluster state in process; [`ApiServer`] serves it over HTTP to real
//! clients (kube-rs, kubectl) with the behaviour described in `docs/kubernetes.md`.
//!
//! - `store`: objects, resourceVersions, 409s, graceful pod deletion, finalizers, watch
//!   history and 410s, typed helpers (`get_as`, `list_as`, `create_as`, `update_as`,
//!   `update_status_as`, `delete_as`, `modify_as`, `modify_status_as`).
//! - `eviction`: `Store::evict`, the pod eviction subresource.
//! - `disruption`: PodDisruptionBudget status (pure computation plus a controller task;
//!   [`ApiServer::start`] runs it, in-process-only setups call [`disruption::spawn`]).
//! - `audit`: evictions, pod deletions and node availability as the emulator saw them
//!   (`Store::pdb_violations`, `Store::unavailable_timeline`, `Store::max_unavailable_nodes`).
//! - `tokens`: `Store::issue_service_account_token` and TokenReview.
//! - `http`: REST paths, discovery, Table output, watch streaming, fault injection
//!   ([`ServerHandle::faults`]).
//! - `serve`: the `rota-sim serve` process options.

pub mod audit;
pub mod disruption;
pub mod error;
pub mod eviction;
pub mod http;
pub mod meta;
pub mod patch;
pub mod resources;
pub mod selector;
pub mod serve;
pub mod store;
pub mod tokens;

pub use audit::{AuditLog, EvictionRecord, NodeRecord, PodDeletionRecord, UnavailablePoint};
pub use error::{Error, Result};
pub use http::{ApiServer, FaultConfig, Faults, ServerConfig, ServerHandle, kubeconfig_yaml};
pub use patch::PatchKind;
pub use resources::{GroupResource, Registry, ResourceInfo};
pub(crate) use store::Part;
pub use store::{
    DeleteOptions, Deleted, EventType, ListOptions, ObjectList, Preconditions, ResourceKey, Store,
    StoreEvent, Subscription, WatchEvent, WatchEventType,
};
