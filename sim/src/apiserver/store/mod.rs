//! The object store behind the emulated API server.
//!
//! Objects are JSON values keyed by (resource, namespace, name) with one global, increasing
//! `resourceVersion` counter, as etcd gives a real API server. Every write is published on a
//! broadcast channel and kept in a bounded history, so that a watch can resume from a
//! resourceVersion (and gets 410 Expired once that version has left the history).
//!
//! The in-process API ([`Store::create`], [`Store::get_as`], ...) is what the simulated cluster
//! (kubelets, workload controllers) and the disruption controller use; the HTTP layer calls the
//! same functions with `strategy: true` to apply the API server's create strategy (for example
//! resetting `status` on create), which in-process seeding skips so that tests can create
//! objects in any state.
//!
//! - this file: the [`Store`] handle, its locked [`State`] and the untyped API;
//! - `types`: keys, options, results and [`StoreEvent`];
//! - `crud`: get, list, create, update and patch under the lock, and the one write path;
//! - `delete`: preconditions, graceful deletion, finalizers and cascades;
//! - `admission`: defaults, system metadata, validation (the registry strategies);
//! - `watch`: history, fan-out and per-watch filtering ([`Subscription`]);
//! - `typed`: the `k8s-openapi` typed helpers (`get_as`, `modify_as`, ...).

mod admission;
mod crud;
mod delete;
mod typed;
mod types;
mod watch;

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::sync::Arc;

use jiff::Timestamp;
use parking_lot::Mutex;
use serde_json::{Value, json};
use tokio::sync::broadcast;

pub(crate) use admission::new_uid;
pub use types::{
    DeleteOptions, Deleted, EventType, ListOptions, ObjectList, Preconditions, ResourceKey,
    StoreEvent,
};
pub use watch::{Subscription, WatchEvent, WatchEventType};

use super::audit::{AuditLog, EvictionRecord, PodDeletionRecord, UnavailablePoint};
use rota_core::clock::SharedClock;

use super::error::{Error, Result};
use super::patch::{self, PatchKind};
use super::resources::{GroupResource, Registry, ResourceInfo};
use super::tokens::IssuedToken;

/// Events kept for watch resumption unless configured otherwise.
pub const DEFAULT_HISTORY: usize = 20_000;

const BROADCAST_CAPACITY: usize = 1 << 16;

/// How often a read-modify-write is retried on a 409 before giving up.
const CONFLICT_ATTEMPTS: usize = 16;

/// Which write path an update takes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Part {
    /// The main resource (status changes are ignored when a status subresource exists).
    Main,
    /// The `/status` subresource (only status changes are kept).
    Status,
}

/// The cluster state behind the store's lock.
pub(crate) struct State {
    pub(crate) rv: u64,
    pub(crate) registry: Registry,
    objects: HashMap<GroupResource, BTreeMap<(String, String), Arc<Value>>>,
    history: VecDeque<Arc<StoreEvent>>,
    history_limit: usize,
    /// All events with a resourceVersion above this are still in `history`.
    history_floor: u64,
    events: broadcast::Sender<Arc<StoreEvent>>,
    pub(crate) audit: AuditLog,
    pub(crate) tokens: HashMap<String, IssuedToken>,
    /// Fields each server-side-apply manager last applied, per object (and `/status`).
    applied: HashMap<(ResourceKey, String), BTreeSet<patch::FieldPath>>,
}

struct Shared {
    state: Mutex<State>,
    clock: SharedClock,
}

/// A thread-safe handle on the emulated cluster state; clones share it.
#[derive(Clone)]
pub struct Store {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("resource_version", &self.resource_version())
            .finish()
    }
}

impl Default for Store {
    fn default() -> Self {
        Self::new()
    }
}

impl Store {
    /// A store with the wall clock, the default history and the namespaces every cluster has
    /// (`default`, `kube-system`, `kube-public`, `kube-node-lease`).
    pub fn new() -> Self {
        Self::with_config(DEFAULT_HISTORY, rota_core::clock::system())
    }

    /// A store with a given watch history length and clock.
    pub fn with_config(history_limit: usize, clock: SharedClock) -> Self {
        let (events, _) = broadcast::channel(BROADCAST_CAPACITY);
        let state = State {
            rv: 0,
            registry: Registry::new(),
            objects: HashMap::new(),
            history: VecDeque::new(),
            history_limit: history_limit.max(1),
            history_floor: 0,
            events,
            audit: AuditLog::default(),
            tokens: HashMap::new(),
            applied: HashMap::new(),
        };
        let store = Store {
            shared: Arc::new(Shared {
                state: Mutex::new(state),
                clock,
            }),
        };
        let now = store.now();
        let mut state = store.shared.state.lock();
        for ns in ["default", "kube-system", "kube-public", "kube-node-lease"] {
            let obj = json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}});
            // Built-in names are valid and absent, so this cannot fail; ignoring keeps `new`
            // infallible.
            let _ = state.create(&GroupResource::core("namespaces"), None, obj, now, false);
        }
        drop(state);
        store
    }

    /// The store's clock.
    pub fn now(&self) -> Timestamp {
        self.shared.clock.now()
    }

    /// The current global resourceVersion.
    pub fn resource_version(&self) -> u64 {
        self.shared.state.lock().rv
    }

    /// How many objects the store holds (the keys an etcd behind an API server would hold).
    pub fn object_count(&self) -> usize {
        self.shared
            .state
            .lock()
            .objects
            .values()
            .map(BTreeMap::len)
            .sum()
    }

    pub(crate) fn lock(&self) -> parking_lot::MutexGuard<'_, State> {
        self.shared.state.lock()
    }

    /// Information about a served resource.
    pub fn resource_info(&self, resource: &GroupResource) -> Result<ResourceInfo> {
        self.lock().registry.get(resource).cloned()
    }

    /// A snapshot of the served resources (changes when CRDs are created or deleted).
    pub fn registry(&self) -> Registry {
        self.lock().registry.clone()
    }

    /// Create an object. The name comes from `metadata.name` (or `generateName`).
    pub fn create(
        &self,
        resource: &GroupResource,
        namespace: Option<&str>,
        obj: Value,
    ) -> Result<Arc<Value>> {
        let now = self.now();
        self.lock().create(resource, namespace, obj, now, false)
    }

    /// Create with the API server's create strategy (status reset); used by the HTTP layer.
    pub(crate) fn create_with_strategy(
        &self,
        resource: &GroupResource,
        namespace: Option<&str>,
        obj: Value,
    ) -> Result<Arc<Value>> {
        let now = self.now();
        self.lock().create(resource, namespace, obj, now, true)
    }

    /// Get one object.
    pub fn get(&self, key: &ResourceKey) -> Result<Arc<Value>> {
        self.lock().get(key)
    }

    /// List objects of a resource in a namespace (`None`: all namespaces) with selectors.
    pub fn list(
        &self,
        resource: &GroupResource,
        namespace: Option<&str>,
        opts: &ListOptions,
    ) -> Result<ObjectList> {
        self.lock().list(resource, namespace, opts)
    }

    /// Replace an object (PUT). A stale `metadata.resourceVersion` is a 409; an empty one
    /// updates unconditionally. Status changes are ignored when the resource has `/status`.
    pub fn update(&self, key: &ResourceKey, obj: Value) -> Result<Arc<Value>> {
        let now = self.now();
        self.lock().update(key, obj, Part::Main, now)
    }

    /// Replace an object's status (PUT `/status`); everything else is kept.
    pub fn update_status(&self, key: &ResourceKey, obj: Value) -> Result<Arc<Value>> {
        let now = self.now();
        self.lock().update(key, obj, Part::Status, now)
    }

    /// Patch an object.
    pub fn patch(&self, key: &ResourceKey, kind: &PatchKind, body: &Value) -> Result<Arc<Value>> {
        let now = self.now();
        self.lock().patch(key, kind, body, Part::Main, now)
    }

    /// Patch an object's status.
    pub fn patch_status(
        &self,
        key: &ResourceKey,
        kind: &PatchKind,
        body: &Value,
    ) -> Result<Arc<Value>> {
        let now = self.now();
        self.lock().patch(key, kind, body, Part::Status, now)
    }

    /// Delete an object. Pods with a grace period only get a `deletionTimestamp` (the kubelet
    /// simulation deletes them again with grace 0 when their containers stopped).
    pub fn delete(&self, key: &ResourceKey, opts: &DeleteOptions) -> Result<Deleted> {
        let now = self.now();
        self.lock().delete(key, opts, now, false)
    }

    /// Read-modify-write an object (`part`: the main resource or `/status`), retrying on
    /// conflicts. `edit` gets a copy of the current object and returns whether to write it
    /// (`Ok(None)` when it declined); it may run more than once and must not call the store.
    pub(crate) fn modify(
        &self,
        key: &ResourceKey,
        part: Part,
        mut edit: impl FnMut(&mut Value) -> Result<bool>,
    ) -> Result<Option<Arc<Value>>> {
        let mut last = None;
        for _ in 0..CONFLICT_ATTEMPTS {
            let mut next = (*self.get(key)?).clone();
            if !edit(&mut next)? {
                return Ok(None);
            }
            let now = self.now();
            match self.lock().update(key, next, part, now) {
                Ok(written) => return Ok(Some(written)),
                Err(e @ Error::Conflict { .. }) => last = Some(e),
                Err(e) => return Err(e),
            }
        }
        Err(last.unwrap_or_else(|| Error::stale(&key.resource.qualified(), &key.name)))
    }

    /// A copy of the audit log.
    pub fn audit(&self) -> AuditLog {
        self.lock().audit.clone()
    }

    /// Evictions that took a PDB's healthy pods below its desired count (see
    /// [`EvictionRecord::violates_pdb`]).
    pub fn pdb_violations(&self) -> Vec<EvictionRecord> {
        self.lock().audit.pdb_violations()
    }

    /// Every accepted eviction.
    pub fn evictions(&self) -> Vec<EvictionRecord> {
        self.lock().audit.evictions.clone()
    }

    /// Every accepted pod deletion request.
    pub fn pod_deletions(&self) -> Vec<PodDeletionRecord> {
        self.lock().audit.pod_deletions.clone()
    }

    /// The number of unavailable nodes (NotReady or cordoned), each time it changed.
    pub fn unavailable_timeline(&self) -> Vec<UnavailablePoint> {
        self.lock().audit.unavailable_timeline().to_vec()
    }

    /// The most nodes unavailable at once so far.
    pub fn max_unavailable_nodes(&self) -> usize {
        self.lock().audit.max_unavailable()
    }
}

/// Objects the tests of the store's parts share.
#[cfg(test)]
mod fixtures {
    use super::*;

    /// A valid pod in `default` labelled `app=web`, Running, bound to `node` if given.
    pub(super) fn pod(name: &str, node: Option<&str>) -> Value {
        let mut p = json!({
            "metadata": {"name": name, "namespace": "default", "labels": {"app": "web"}},
            "spec": {"containers": [{"name": "c", "image": "i"}]},
            "status": {"phase": "Running"}
        });
        if let Some(n) = node {
            p["spec"]["nodeName"] = json!(n);
        }
        p
    }

    /// Core `pods`.
    pub(super) fn pods() -> GroupResource {
        GroupResource::core("pods")
    }
}
