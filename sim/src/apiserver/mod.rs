//! An emulated Kubernetes API server.
//!
//! [`Store`] holds the cluster state in process; the HTTP layer serves it to real clients
//! (kube-rs, kubectl) with the behaviour described in `shared/KUBE-SEMANTICS.md`.

pub mod audit;
pub mod disruption;
pub mod error;
pub mod eviction;
pub mod meta;
pub mod patch;
pub mod resources;
pub mod selector;
pub mod store;
pub mod tokens;

pub use audit::{AuditLog, EvictionRecord, NodeRecord, PodDeletionRecord, UnavailablePoint};
pub use error::{Error, Result};
pub use patch::PatchKind;
pub use resources::{GroupResource, Registry, ResourceInfo};
pub use store::{
    Clock, DeleteOptions, Deleted, EventType, ListOptions, ObjectList, Preconditions, ResourceKey,
    Store, StoreEvent, Subscription, WatchEvent, WatchEventType,
};
