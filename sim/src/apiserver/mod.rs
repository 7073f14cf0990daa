//! An emulated Kubernetes API server.
//!
//! [`Store`] holds the cluster state in process; the HTTP layer serves it to real clients
//! (kube-rs, kubectl) with the behaviour described in `shared/KUBE-SEMANTICS.md`.

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
pub use store::{
    Clock, DeleteOptions, Deleted, EventType, ListOptions, ObjectList, Preconditions, ResourceKey,
    Store, StoreEvent, Subscription, WatchEvent, WatchEventType,
};
