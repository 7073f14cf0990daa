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

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::sync::Arc;

use jiff::Timestamp;
use parking_lot::Mutex;
use rand::Rng;
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::{Map, Value, json};
use tokio::sync::broadcast;

use super::audit::{AuditLog, EvictionRecord, NodeRecord, PodDeletionRecord, UnavailablePoint};
use super::error::{Cause, Error, Result};
use super::meta;
use super::patch::{self, PatchKind};
use super::resources::{GroupResource, Registry, ResourceInfo};
use super::selector::{FieldSelector, LabelSelector};
use super::tokens::IssuedToken;

/// A source of the current time (the store stamps objects with it).
pub type Clock = Arc<dyn Fn() -> Timestamp + Send + Sync>;

/// Events kept for watch resumption unless configured otherwise.
pub const DEFAULT_HISTORY: usize = 20_000;

const BROADCAST_CAPACITY: usize = 1 << 16;

/// Identifies one object.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ResourceKey {
    /// Its resource.
    pub resource: GroupResource,
    /// Namespace (`None` for cluster-scoped objects).
    pub namespace: Option<String>,
    /// Name.
    pub name: String,
}

impl ResourceKey {
    /// A key from parts.
    pub fn new(resource: GroupResource, namespace: Option<&str>, name: &str) -> Self {
        ResourceKey {
            resource,
            namespace: namespace.map(str::to_string),
            name: name.to_string(),
        }
    }

    /// The key of an object of a `k8s-openapi` type.
    pub fn of<K: k8s_openapi::Resource>(namespace: Option<&str>, name: &str) -> Self {
        Self::new(GroupResource::of::<K>(), namespace, name)
    }
}

/// List and watch filters.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ListOptions {
    /// Label selector in string form.
    pub label_selector: Option<String>,
    /// Field selector in string form.
    pub field_selector: Option<String>,
    /// Page size (`limit`).
    pub limit: Option<usize>,
    /// `continue` token of the previous page.
    pub continue_token: Option<String>,
}

impl ListOptions {
    /// Options with a label selector.
    pub fn labels(selector: &str) -> Self {
        ListOptions {
            label_selector: Some(selector.to_string()),
            ..Default::default()
        }
    }

    /// Options with a field selector.
    pub fn fields(selector: &str) -> Self {
        ListOptions {
            field_selector: Some(selector.to_string()),
            ..Default::default()
        }
    }
}

/// A page of a list.
#[derive(Clone, Debug)]
pub struct ObjectList {
    /// Matching objects, ordered by namespace then name.
    pub items: Vec<Arc<Value>>,
    /// The store's resourceVersion when the list was taken.
    pub resource_version: u64,
    /// Set when more items remain (pass it back as `continue`).
    pub continue_token: Option<String>,
}

/// `DeleteOptions.preconditions`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Preconditions {
    /// The object's uid must equal this.
    pub uid: Option<String>,
    /// The object's resourceVersion must equal this.
    pub resource_version: Option<String>,
}

/// The parts of `DeleteOptions` the emulator honours.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DeleteOptions {
    /// Grace period; `None` uses the object's own (pods: `terminationGracePeriodSeconds`).
    pub grace_period_seconds: Option<i64>,
    /// Preconditions.
    pub preconditions: Preconditions,
    /// `dryRun=All`: check, change nothing.
    pub dry_run: bool,
}

/// The result of a delete.
#[derive(Clone, Debug)]
pub struct Deleted {
    /// The object as deleted, or with its `deletionTimestamp` when deletion is pending.
    pub object: Arc<Value>,
    /// Whether the object is gone (false: graceful deletion or finalizers pending).
    pub finished: bool,
}

/// The type of a store write.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EventType {
    /// Created.
    Added,
    /// Changed.
    Modified,
    /// Removed.
    Deleted,
}

/// One write, as published to watchers and controllers.
#[derive(Clone, Debug)]
pub struct StoreEvent {
    /// What happened.
    pub event_type: EventType,
    /// Resource of the object.
    pub resource: GroupResource,
    /// The write's resourceVersion.
    pub resource_version: u64,
    /// The object after the write (for deletions: its last state, with the deletion's RV).
    pub object: Arc<Value>,
    /// The object before the write (modifications only).
    pub previous: Option<Arc<Value>>,
}

/// Type of a watch event as sent on the wire.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WatchEventType {
    /// `ADDED`.
    Added,
    /// `MODIFIED`.
    Modified,
    /// `DELETED`.
    Deleted,
    /// `BOOKMARK`.
    Bookmark,
    /// `ERROR`.
    Error,
}

impl WatchEventType {
    /// The wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            WatchEventType::Added => "ADDED",
            WatchEventType::Modified => "MODIFIED",
            WatchEventType::Deleted => "DELETED",
            WatchEventType::Bookmark => "BOOKMARK",
            WatchEventType::Error => "ERROR",
        }
    }
}

/// A watch event for one watcher (selectors already applied).
#[derive(Clone, Debug)]
pub struct WatchEvent {
    /// Type.
    pub event_type: WatchEventType,
    /// Object (or `Status` for errors).
    pub object: Arc<Value>,
}

/// The filter of one watch.
#[derive(Clone, Debug)]
struct WatchFilter {
    resource: GroupResource,
    namespace: Option<String>,
    labels: LabelSelector,
    fields: FieldSelector,
}

impl WatchFilter {
    fn matches(&self, obj: &Value) -> bool {
        if let Some(ns) = &self.namespace
            && meta::namespace(obj) != ns
        {
            return false;
        }
        self.labels.matches(obj) && self.fields.matches(obj)
    }

    /// Translate a store event for this watcher: an object that starts or stops matching the
    /// selectors is ADDED or DELETED, as the API server's watch cache does.
    fn translate(&self, event: &StoreEvent) -> Option<WatchEvent> {
        if event.resource != self.resource {
            return None;
        }
        let now = self.matches(&event.object);
        let event_type = match event.event_type {
            EventType::Added => now.then_some(WatchEventType::Added)?,
            EventType::Deleted => now.then_some(WatchEventType::Deleted)?,
            EventType::Modified => {
                let before = event.previous.as_ref().is_some_and(|p| self.matches(p));
                match (before, now) {
                    (true, true) => WatchEventType::Modified,
                    (false, true) => WatchEventType::Added,
                    (true, false) => WatchEventType::Deleted,
                    (false, false) => return None,
                }
            }
        };
        Some(WatchEvent {
            event_type,
            object: event.object.clone(),
        })
    }
}

/// A watch in progress: the events due before the live stream, then the live stream.
pub struct Subscription {
    /// Events to send first (the current state for a watch without a resourceVersion, or the
    /// history after the requested one).
    pub initial: Vec<WatchEvent>,
    /// The store's resourceVersion when the watch started.
    pub start_resource_version: u64,
    /// The resourceVersion of the last store event this subscription has seen (sent or
    /// filtered out); a bookmark may carry it.
    pub last_resource_version: u64,
    rx: broadcast::Receiver<Arc<StoreEvent>>,
    filter: WatchFilter,
}

impl Subscription {
    /// The next live event for this watcher. `None` when the store is gone or the watcher fell
    /// so far behind that events were dropped; the client then re-watches from its last
    /// resourceVersion, as it does after any closed watch.
    pub async fn next(&mut self) -> Option<WatchEvent> {
        loop {
            match self.rx.recv().await {
                Ok(event) => {
                    if event.resource_version <= self.last_resource_version {
                        continue;
                    }
                    self.last_resource_version = event.resource_version;
                    if let Some(out) = self.filter.translate(&event) {
                        return Some(out);
                    }
                }
                Err(_) => return None,
            }
        }
    }

    /// The watched resource.
    pub fn resource(&self) -> &GroupResource {
        &self.filter.resource
    }
}

/// Which write path an update takes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Part {
    /// The main resource (status changes are ignored when a status subresource exists).
    Main,
    /// The `/status` subresource (only status changes are kept).
    Status,
}

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
    clock: Clock,
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

fn system_clock() -> Clock {
    Arc::new(Timestamp::now)
}

impl Store {
    /// A store with the wall clock, the default history and the namespaces every cluster has
    /// (`default`, `kube-system`, `kube-public`, `kube-node-lease`).
    pub fn new() -> Self {
        Self::with_config(DEFAULT_HISTORY, system_clock())
    }

    /// A store with a given watch history length and clock.
    pub fn with_config(history_limit: usize, clock: Clock) -> Self {
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
        (self.shared.clock)()
    }

    /// The current global resourceVersion.
    pub fn resource_version(&self) -> u64 {
        self.shared.state.lock().rv
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

    /// Watch a resource. `from_rv: None` starts with the current state as ADDED events (a watch
    /// without a resourceVersion); `Some(rv)` replays the history after `rv` and fails with 410
    /// when it is no longer held.
    pub fn subscribe(
        &self,
        resource: &GroupResource,
        namespace: Option<&str>,
        opts: &ListOptions,
        from_rv: Option<u64>,
    ) -> Result<Subscription> {
        self.lock().subscribe(resource, namespace, opts, from_rv)
    }

    /// Watch as a stream of events (see [`Store::subscribe`]).
    pub fn watch(
        &self,
        resource: &GroupResource,
        namespace: Option<&str>,
        opts: &ListOptions,
        from_rv: Option<u64>,
    ) -> Result<futures::stream::BoxStream<'static, WatchEvent>> {
        let mut sub = self.subscribe(resource, namespace, opts, from_rv)?;
        let initial = std::mem::take(&mut sub.initial);
        let live = futures::stream::unfold(sub, |mut sub| async move {
            let event = sub.next().await?;
            Some((event, sub))
        });
        Ok(futures::StreamExt::boxed(futures::StreamExt::chain(
            futures::stream::iter(initial),
            live,
        )))
    }

    /// Every store write of every resource, for in-process controllers. A receiver that lags
    /// behind gets `RecvError::Lagged` and should resynchronise from lists.
    pub fn subscribe_all(&self) -> broadcast::Receiver<Arc<StoreEvent>> {
        self.lock().events.subscribe()
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

    /// Get a typed object.
    pub fn get_as<K>(&self, namespace: Option<&str>, name: &str) -> Result<K>
    where
        K: k8s_openapi::Resource + DeserializeOwned,
    {
        from_value(&*self.get(&ResourceKey::of::<K>(namespace, name))?)
    }

    /// List typed objects.
    pub fn list_as<K>(&self, namespace: Option<&str>, opts: &ListOptions) -> Result<Vec<K>>
    where
        K: k8s_openapi::Resource + DeserializeOwned,
    {
        self.list(&GroupResource::of::<K>(), namespace, opts)?
            .items
            .iter()
            .map(|v| from_value(v))
            .collect()
    }

    /// Create a typed object (namespace from its metadata).
    pub fn create_as<K>(&self, obj: &K) -> Result<K>
    where
        K: k8s_openapi::Resource + Serialize + DeserializeOwned,
    {
        let value = to_value(obj)?;
        let ns = non_empty(meta::namespace(&value));
        from_value(&*self.create(&GroupResource::of::<K>(), ns.as_deref(), value)?)
    }

    /// Update a typed object (namespace and name from its metadata).
    pub fn update_as<K>(&self, obj: &K) -> Result<K>
    where
        K: k8s_openapi::Resource + Serialize + DeserializeOwned,
    {
        let value = to_value(obj)?;
        let key = key_of::<K>(&value);
        from_value(&*self.update(&key, value)?)
    }

    /// Update a typed object's status.
    pub fn update_status_as<K>(&self, obj: &K) -> Result<K>
    where
        K: k8s_openapi::Resource + Serialize + DeserializeOwned,
    {
        let value = to_value(obj)?;
        let key = key_of::<K>(&value);
        from_value(&*self.update_status(&key, value)?)
    }

    /// Delete a typed object.
    pub fn delete_as<K>(
        &self,
        namespace: Option<&str>,
        name: &str,
        opts: &DeleteOptions,
    ) -> Result<Deleted>
    where
        K: k8s_openapi::Resource,
    {
        self.delete(&ResourceKey::of::<K>(namespace, name), opts)
    }

    /// Read-modify-write an object, retrying on conflicts. `f` may run more than once; it must
    /// not call the store.
    pub fn modify_as<K>(
        &self,
        namespace: Option<&str>,
        name: &str,
        f: impl FnMut(&mut K),
    ) -> Result<K>
    where
        K: k8s_openapi::Resource + Serialize + DeserializeOwned,
    {
        self.modify_part(namespace, name, f, Part::Main)
    }

    /// Like [`Store::modify_as`], writing through the `/status` subresource.
    pub fn modify_status_as<K>(
        &self,
        namespace: Option<&str>,
        name: &str,
        f: impl FnMut(&mut K),
    ) -> Result<K>
    where
        K: k8s_openapi::Resource + Serialize + DeserializeOwned,
    {
        self.modify_part(namespace, name, f, Part::Status)
    }

    fn modify_part<K>(
        &self,
        namespace: Option<&str>,
        name: &str,
        mut f: impl FnMut(&mut K),
        part: Part,
    ) -> Result<K>
    where
        K: k8s_openapi::Resource + Serialize + DeserializeOwned,
    {
        const ATTEMPTS: usize = 16;
        let key = ResourceKey::of::<K>(namespace, name);
        let mut last = None;
        for _ in 0..ATTEMPTS {
            let mut obj: K = from_value(&*self.get(&key)?)?;
            f(&mut obj);
            let value = to_value(&obj)?;
            let now = self.now();
            match self.lock().update(&key, value, part, now) {
                Ok(v) => return from_value(&v),
                Err(e @ Error::Conflict { .. }) => last = Some(e),
                Err(e) => return Err(e),
            }
        }
        Err(last.unwrap_or_else(|| Error::stale(&key.resource.qualified(), name)))
    }
}

fn non_empty(s: &str) -> Option<String> {
    (!s.is_empty()).then(|| s.to_string())
}

fn key_of<K: k8s_openapi::Resource>(value: &Value) -> ResourceKey {
    ResourceKey::new(
        GroupResource::of::<K>(),
        non_empty(meta::namespace(value)).as_deref(),
        meta::name(value),
    )
}

fn to_value<T: Serialize>(obj: &T) -> Result<Value> {
    serde_json::to_value(obj).map_err(|e| Error::Internal(format!("serializing object: {e}")))
}

fn from_value<T: DeserializeOwned>(value: &Value) -> Result<T> {
    T::deserialize(value).map_err(|e| Error::Internal(format!("decoding object: {e}")))
}

/// A random RFC 4122 version-4 UUID.
pub(crate) fn new_uid() -> String {
    let bits: u128 = rand::random();
    let bits = (bits & !(0xF << 76) | (0x4 << 76)) & !(0x3 << 62) | (0x2 << 62);
    let hex = format!("{bits:032x}");
    format!(
        "{}-{}-{}-{}-{}",
        &hex[0..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..32]
    )
}

fn generated_suffix() -> String {
    const ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    let mut rng = rand::rng();
    (0..5)
        .map(|_| ALPHABET[rng.random_range(0..ALPHABET.len())] as char)
        .collect()
}

fn invalid_field(
    info: &ResourceInfo,
    name: &str,
    reason: &str,
    field: &str,
    message: String,
) -> Error {
    Error::invalid(
        &info.kind,
        &info.group,
        name,
        vec![Cause {
            reason: reason.into(),
            message: format!("{field}: {message}"),
            field: Some(field.into()),
        }],
    )
}

const DNS1123_SUBDOMAIN_MSG: &str = "a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character (e.g. 'example.com', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*')";
const DNS1123_LABEL_MSG: &str = "a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-', and must start and end with an alphanumeric character (e.g. 'my-name',  or '123-abc', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?')";

fn is_dns_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

fn is_dns_subdomain(s: &str) -> bool {
    s.len() <= 253 && s.split('.').all(is_dns_label)
}

/// Validation of the fields the emulator checks (names, and what rota and kubectl rely on).
fn validate(info: &ResourceInfo, obj: &Value) -> Result<()> {
    let name = meta::name(obj);
    if name.is_empty() {
        return Err(invalid_field(
            info,
            name,
            "FieldValueRequired",
            "metadata.name",
            "Required value: name or generateName is required".into(),
        ));
    }
    let rbac = info.group == "rbac.authorization.k8s.io";
    let label_only = info.group.is_empty() && info.plural == "namespaces";
    let name_ok = if rbac {
        name != "." && name != ".." && !name.contains('/') && !name.contains('%')
    } else if label_only {
        is_dns_label(name)
    } else {
        is_dns_subdomain(name)
    };
    if !name_ok {
        let msg = if label_only {
            DNS1123_LABEL_MSG
        } else {
            DNS1123_SUBDOMAIN_MSG
        };
        return Err(invalid_field(
            info,
            name,
            "FieldValueInvalid",
            "metadata.name",
            format!("Invalid value: \"{name}\": {msg}"),
        ));
    }
    match (info.group.as_str(), info.plural.as_str()) {
        ("", "pods") => {
            let containers = obj.pointer("/spec/containers").and_then(Value::as_array);
            let Some(containers) = containers.filter(|c| !c.is_empty()) else {
                return Err(invalid_field(
                    info,
                    name,
                    "FieldValueRequired",
                    "spec.containers",
                    "Required value".into(),
                ));
            };
            for (i, c) in containers.iter().enumerate() {
                for field in ["name", "image"] {
                    if c.get(field)
                        .and_then(Value::as_str)
                        .is_none_or(str::is_empty)
                    {
                        return Err(invalid_field(
                            info,
                            name,
                            "FieldValueRequired",
                            &format!("spec.containers[{i}].{field}"),
                            "Required value".into(),
                        ));
                    }
                }
            }
        }
        ("policy", "poddisruptionbudgets") => {
            let spec = obj.get("spec");
            let set = |f: &str| spec.and_then(|s| s.get(f)).is_some_and(|v| !v.is_null());
            if set("minAvailable") && set("maxUnavailable") {
                return Err(invalid_field(
                    info,
                    name,
                    "FieldValueInvalid",
                    "spec",
                    "Invalid value: policy.PodDisruptionBudgetSpec: minAvailable and maxUnavailable cannot be both set"
                        .into(),
                ));
            }
            LabelSelector::from_json(spec.and_then(|s| s.get("selector"))).map_err(|e| {
                invalid_field(
                    info,
                    name,
                    "FieldValueInvalid",
                    "spec.selector",
                    format!("Invalid value: {e}"),
                )
            })?;
        }
        ("apiextensions.k8s.io", "customresourcedefinitions") => {
            super::resources::crd_to_info(obj)?;
        }
        _ => {}
    }
    Ok(())
}

/// Defaults the API server fills in on create.
fn apply_defaults(info: &ResourceInfo, obj: &mut Value) {
    let Some(map) = obj.as_object_mut() else {
        return;
    };
    let set_default = |map: &mut Map<String, Value>, path: &[&str], value: Value| {
        let mut cur = map;
        for (i, part) in path.iter().enumerate() {
            if i + 1 == path.len() {
                cur.entry(part.to_string()).or_insert(value);
                return;
            }
            let next = cur
                .entry(part.to_string())
                .or_insert_with(|| Value::Object(Map::new()));
            let Value::Object(next) = next else { return };
            cur = next;
        }
    };
    match (info.group.as_str(), info.plural.as_str()) {
        ("", "pods") => {
            set_default(map, &["spec", "restartPolicy"], json!("Always"));
            set_default(map, &["spec", "terminationGracePeriodSeconds"], json!(30));
            set_default(map, &["spec", "dnsPolicy"], json!("ClusterFirst"));
            set_default(map, &["spec", "schedulerName"], json!("default-scheduler"));
            set_default(map, &["spec", "serviceAccountName"], json!("default"));
            set_default(map, &["status", "phase"], json!("Pending"));
        }
        ("", "namespaces") => {
            set_default(map, &["spec", "finalizers"], json!(["kubernetes"]));
            set_default(map, &["status", "phase"], json!("Active"));
        }
        ("apps", "deployments" | "replicasets" | "statefulsets") => {
            set_default(map, &["spec", "replicas"], json!(1));
        }
        _ => {}
    }
}

/// The object without the fields that do not count as a change.
fn comparable(obj: &Value) -> Value {
    let mut v = obj.clone();
    if let Some(m) = v.get_mut("metadata").and_then(Value::as_object_mut) {
        m.remove("resourceVersion");
        m.remove("managedFields");
    }
    v
}

/// The part of an object whose change bumps `metadata.generation`.
fn generation_relevant(obj: &Value, info: &ResourceInfo) -> Value {
    let mut v = obj.clone();
    if let Some(m) = v.as_object_mut() {
        m.remove("metadata");
        if info.status_subresource {
            m.remove("status");
        }
    }
    v
}

impl State {
    fn qualified(resource: &GroupResource) -> String {
        resource.qualified()
    }

    /// Resolve the namespace for a resource's scope.
    fn scope(info: &ResourceInfo, namespace: Option<&str>) -> Result<Option<String>> {
        if !info.namespaced {
            return Ok(None);
        }
        match namespace {
            Some(ns) if !ns.is_empty() => Ok(Some(ns.to_string())),
            _ => Err(Error::BadRequest(
                "the server could not find the requested resource: a namespace is required".into(),
            )),
        }
    }

    fn map_key(namespace: &Option<String>, name: &str) -> (String, String) {
        (namespace.clone().unwrap_or_default(), name.to_string())
    }

    pub(crate) fn get(&self, key: &ResourceKey) -> Result<Arc<Value>> {
        let info = self.registry.get(&key.resource)?;
        let ns = if info.namespaced {
            key.namespace.clone()
        } else {
            None
        };
        self.objects
            .get(&key.resource)
            .and_then(|m| m.get(&Self::map_key(&ns, &key.name)))
            .cloned()
            .ok_or_else(|| Error::NotFound {
                qualified: Self::qualified(&key.resource),
                name: key.name.clone(),
            })
    }

    /// Objects of a resource in a namespace (all namespaces with `None`), in key order.
    pub(crate) fn iter_objects<'a>(
        &'a self,
        resource: &GroupResource,
        namespace: Option<&'a str>,
    ) -> Box<dyn Iterator<Item = &'a Arc<Value>> + 'a> {
        let Some(map) = self.objects.get(resource) else {
            return Box::new(std::iter::empty());
        };
        match namespace {
            Some(ns) => Box::new(
                map.range((ns.to_string(), String::new())..)
                    .take_while(move |((n, _), _)| n == ns)
                    .map(|(_, v)| v),
            ),
            None => Box::new(map.values()),
        }
    }

    fn list(
        &self,
        resource: &GroupResource,
        namespace: Option<&str>,
        opts: &ListOptions,
    ) -> Result<ObjectList> {
        let info = self.registry.get(resource)?;
        if info.create_only {
            return Err(Error::MethodNotAllowed);
        }
        let labels = LabelSelector::parse(opts.label_selector.as_deref().unwrap_or_default())?;
        let fields = FieldSelector::parse(
            opts.field_selector.as_deref().unwrap_or_default(),
            &info.group,
            &info.plural,
        )?;
        let namespace = if info.namespaced {
            namespace.filter(|n| !n.is_empty())
        } else {
            None
        };
        let (list_rv, after) = match opts.continue_token.as_deref().filter(|t| !t.is_empty()) {
            Some(token) => {
                let mut parts = token.splitn(3, '|');
                let rv = parts.next().and_then(|r| r.parse::<u64>().ok());
                let (Some(rv), Some(ns), Some(name)) = (rv, parts.next(), parts.next()) else {
                    return Err(Error::BadRequest(format!(
                        "invalid continue token {token:?}"
                    )));
                };
                (rv, Some((ns.to_string(), name.to_string())))
            }
            None => (self.rv, None),
        };
        let limit = opts.limit.filter(|l| *l > 0);
        let mut items = Vec::new();
        let mut continue_token = None;
        for obj in self.iter_objects(resource, namespace) {
            if let Some((ns, name)) = &after
                && (meta::namespace(obj), meta::name(obj)) <= (ns.as_str(), name.as_str())
            {
                continue;
            }
            if !labels.matches(obj) || !fields.matches(obj) {
                continue;
            }
            if limit.is_some_and(|l| items.len() >= l) {
                if let Some(last) = items.last() {
                    let last: &Arc<Value> = last;
                    continue_token = Some(format!(
                        "{list_rv}|{}|{}",
                        meta::namespace(last),
                        meta::name(last)
                    ));
                }
                break;
            }
            items.push(obj.clone());
        }
        Ok(ObjectList {
            items,
            resource_version: list_rv,
            continue_token,
        })
    }

    fn publish(&mut self, event: StoreEvent) {
        let event = Arc::new(event);
        self.history.push_back(event.clone());
        while self.history.len() > self.history_limit {
            if let Some(old) = self.history.pop_front() {
                self.history_floor = old.resource_version;
            }
        }
        // No receivers is fine: nobody watches.
        let _ = self.events.send(event);
    }

    fn set_rv(obj: &mut Value, rv: u64) {
        if let Some(m) = obj.get_mut("metadata").and_then(Value::as_object_mut) {
            m.insert("resourceVersion".into(), Value::String(rv.to_string()));
        }
    }

    /// Store an object version and publish the event.
    fn write(
        &mut self,
        resource: &GroupResource,
        mut obj: Value,
        previous: Option<Arc<Value>>,
        event_type: EventType,
        now: Timestamp,
    ) -> Arc<Value> {
        self.rv += 1;
        let rv = self.rv;
        Self::set_rv(&mut obj, rv);
        let ns = non_empty(meta::namespace(&obj));
        let key = Self::map_key(&ns, meta::name(&obj));
        let obj = Arc::new(obj);
        let map = self.objects.entry(resource.clone()).or_default();
        if event_type == EventType::Deleted {
            map.remove(&key);
            if !self.applied.is_empty() {
                let gone = ResourceKey::new(resource.clone(), ns.as_deref(), meta::name(&obj));
                self.applied.retain(|(k, _), _| *k != gone);
            }
        } else {
            map.insert(key, obj.clone());
        }
        if resource.group.is_empty() && resource.resource == "nodes" {
            self.audit.record_node(NodeRecord {
                time: now,
                resource_version: rv,
                node: meta::name(&obj).to_string(),
                ready: meta::node_ready(&obj),
                unschedulable: meta::node_unschedulable(&obj),
                deleted: event_type == EventType::Deleted,
            });
        }
        self.publish(StoreEvent {
            event_type,
            resource: resource.clone(),
            resource_version: rv,
            object: obj.clone(),
            previous,
        });
        obj
    }

    pub(crate) fn create(
        &mut self,
        resource: &GroupResource,
        namespace: Option<&str>,
        obj: Value,
        now: Timestamp,
        strategy: bool,
    ) -> Result<Arc<Value>> {
        let info = self.registry.get(resource)?.clone();
        let Value::Object(mut map) = obj else {
            return Err(Error::BadRequest(
                "the object provided is not a JSON object".into(),
            ));
        };
        if info.create_only {
            return self.review_token(&Value::Object(map), now);
        }
        let ns = Self::scope(&info, namespace)?;
        match map.get("kind").and_then(Value::as_str) {
            Some(kind) if kind != info.kind => {
                return Err(Error::BadRequest(format!(
                    "the kind of the provided object ({kind}) does not match the resource ({})",
                    info.kind
                )));
            }
            Some(_) => {}
            None => {
                map.insert("kind".into(), json!(info.kind));
            }
        }
        if map
            .get("apiVersion")
            .and_then(Value::as_str)
            .is_none_or(str::is_empty)
        {
            map.insert("apiVersion".into(), json!(info.api_version()));
        }
        let metadata = map
            .entry("metadata")
            .or_insert_with(|| Value::Object(Map::new()));
        let Value::Object(md) = metadata else {
            return Err(Error::BadRequest("metadata must be an object".into()));
        };
        match (&ns, md.get("namespace").and_then(Value::as_str)) {
            (Some(ns), Some(body_ns)) if !body_ns.is_empty() && body_ns != ns => {
                return Err(Error::BadRequest(
                    "the namespace of the provided object does not match the namespace sent on the request".into(),
                ));
            }
            (Some(ns), _) => {
                md.insert("namespace".into(), json!(ns));
            }
            (None, _) => {
                md.remove("namespace");
            }
        }
        let name = md
            .get("name")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string();
        if name.is_empty()
            && let Some(prefix) = md
                .get("generateName")
                .and_then(Value::as_str)
                .filter(|p| !p.is_empty())
        {
            let generated = format!("{prefix}{}", generated_suffix());
            md.insert("name".into(), json!(generated));
        }
        md.insert("uid".into(), json!(new_uid()));
        md.insert("creationTimestamp".into(), json!(meta::format_time(now)));
        md.remove("deletionTimestamp");
        md.remove("deletionGracePeriodSeconds");
        md.remove("managedFields");
        if info.tracks_generation {
            md.insert("generation".into(), json!(1));
        } else {
            md.remove("generation");
        }
        let mut obj = Value::Object(map);
        if strategy
            && info.status_subresource
            && !(info.group.is_empty() && matches!(info.plural.as_str(), "nodes" | "namespaces"))
            && let Some(m) = obj.as_object_mut()
        {
            m.remove("status");
        }
        apply_defaults(&info, &mut obj);
        validate(&info, &obj)?;
        let name = meta::name(&obj).to_string();
        if let Some(ns) = &ns {
            let ns_key = ResourceKey::new(GroupResource::core("namespaces"), None, ns);
            match self.get(&ns_key) {
                Ok(ns_obj) if meta::is_terminating(&ns_obj) => {
                    return Err(Error::Forbidden {
                        qualified: Self::qualified(resource),
                        name,
                        detail: format!(
                            "unable to create new content in namespace {ns} because it is being terminated"
                        ),
                    });
                }
                Ok(_) => {}
                Err(_) => {
                    return Err(Error::NotFound {
                        qualified: "namespaces".into(),
                        name: ns.clone(),
                    });
                }
            }
        }
        if self
            .get(&ResourceKey::new(resource.clone(), ns.as_deref(), &name))
            .is_ok()
        {
            return Err(Error::AlreadyExists {
                qualified: Self::qualified(resource),
                name,
            });
        }
        if info.group == "apiextensions.k8s.io" && info.plural == "customresourcedefinitions" {
            self.registry.register_crd(&obj)?;
            obj = crd_established(obj, now);
        }
        Ok(self.write(resource, obj, None, EventType::Added, now))
    }

    pub(crate) fn update(
        &mut self,
        key: &ResourceKey,
        obj: Value,
        part: Part,
        now: Timestamp,
    ) -> Result<Arc<Value>> {
        let info = self.registry.get(&key.resource)?.clone();
        if info.create_only {
            return Err(Error::MethodNotAllowed);
        }
        let old = self.get(key)?;
        let Value::Object(mut map) = obj else {
            return Err(Error::BadRequest(
                "the object provided is not a JSON object".into(),
            ));
        };
        let body_name = map
            .get("metadata")
            .and_then(|m| m.get("name"))
            .and_then(Value::as_str)
            .unwrap_or_default();
        if !body_name.is_empty() && body_name != key.name {
            return Err(Error::BadRequest(format!(
                "the name of the object ({body_name}) does not match the name on the URL ({})",
                key.name
            )));
        }
        if let Some(body_ns) = map
            .get("metadata")
            .and_then(|m| m.get("namespace"))
            .and_then(Value::as_str)
            && info.namespaced
            && !body_ns.is_empty()
            && Some(body_ns) != key.namespace.as_deref()
        {
            return Err(Error::BadRequest(
                    "the namespace of the provided object does not match the namespace sent on the request".into(),
                ));
        }
        if let Some(kind) = map.get("kind").and_then(Value::as_str)
            && !kind.is_empty()
            && kind != info.kind
        {
            return Err(Error::BadRequest(format!(
                "the kind of the provided object ({kind}) does not match the resource ({})",
                info.kind
            )));
        }
        match map
            .get("metadata")
            .and_then(|m| m.get("resourceVersion"))
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty())
        {
            None => {}
            Some(rv) => {
                let rv: u64 = rv.parse().map_err(|_| {
                    invalid_field(
                        &info,
                        &key.name,
                        "FieldValueInvalid",
                        "metadata.resourceVersion",
                        format!("Invalid value: \"{rv}\": must be a valid unsigned integer"),
                    )
                })?;
                if Some(rv) != meta::resource_version(&old) {
                    return Err(Error::stale(&Self::qualified(&key.resource), &key.name));
                }
            }
        }
        let new = match part {
            Part::Main => {
                if info.status_subresource {
                    match old.get("status") {
                        Some(s) => map.insert("status".into(), s.clone()),
                        None => map.remove("status"),
                    };
                }
                map
            }
            Part::Status => {
                let mut base = old.as_object().cloned().unwrap_or_default();
                match map.remove("status") {
                    Some(s) => base.insert("status".into(), s),
                    None => base.remove("status"),
                };
                base
            }
        };
        let mut new = Value::Object(new);
        preserve_system_fields(&mut new, &old, &info);
        if info.tracks_generation {
            let mut generation = old
                .pointer("/metadata/generation")
                .and_then(Value::as_i64)
                .unwrap_or(1);
            if generation_relevant(&new, &info) != generation_relevant(&old, &info) {
                generation += 1;
            }
            if let Some(m) = new.get_mut("metadata").and_then(Value::as_object_mut) {
                m.insert("generation".into(), json!(generation));
            }
        }
        validate(&info, &new)?;
        if comparable(&new) == comparable(&old) {
            return Ok(old);
        }
        if meta::is_terminating(&new)
            && new
                .pointer("/metadata/finalizers")
                .and_then(Value::as_array)
                .is_none_or(Vec::is_empty)
            && new
                .pointer("/metadata/deletionGracePeriodSeconds")
                .and_then(Value::as_i64)
                .unwrap_or(0)
                == 0
        {
            return Ok(self.remove(&key.resource, new, now));
        }
        if info.group == "apiextensions.k8s.io" && info.plural == "customresourcedefinitions" {
            self.registry.register_crd(&new)?;
        }
        Ok(self.write(&key.resource, new, Some(old), EventType::Modified, now))
    }

    pub(crate) fn patch(
        &mut self,
        key: &ResourceKey,
        kind: &PatchKind,
        body: &Value,
        part: Part,
        now: Timestamp,
    ) -> Result<Arc<Value>> {
        let info = self.registry.get(&key.resource)?.clone();
        if info.create_only {
            return Err(Error::MethodNotAllowed);
        }
        let owner = match kind {
            PatchKind::Apply { field_manager, .. } if field_manager.is_empty() => {
                return Err(Error::BadRequest(
                    "PatchOptions.meta.k8s.io \"\" is invalid: fieldManager: Required value: is required for apply patch"
                        .into(),
                ));
            }
            PatchKind::Apply { field_manager, .. } => {
                let manager = if part == Part::Status {
                    format!("{field_manager}/status")
                } else {
                    field_manager.clone()
                };
                Some((key.clone(), manager))
            }
            _ => None,
        };
        let old = match self.get(key) {
            Ok(old) => old,
            Err(Error::NotFound { .. }) if owner.is_some() && part == Part::Main => {
                let mut obj = body.clone();
                if let Some(m) = obj.as_object_mut() {
                    let md = m.entry("metadata").or_insert_with(|| json!({}));
                    if let Some(md) = md.as_object_mut() {
                        md.insert("name".into(), json!(key.name));
                    }
                }
                let created =
                    self.create(&key.resource, key.namespace.as_deref(), obj, now, true)?;
                if let Some(owner) = owner {
                    self.applied.insert(owner, patch::owned_fields(body));
                }
                return Ok(created);
            }
            Err(e) => return Err(e),
        };
        let mut patched = (*old).clone();
        match kind {
            PatchKind::Merge => patch::merge_patch(&mut patched, body),
            PatchKind::Json => patch::json_patch(&mut patched, body)?,
            PatchKind::StrategicMerge => {
                if info.custom {
                    return Err(Error::UnsupportedMediaType(
                        "application/json-patch+json, application/merge-patch+json, application/apply-patch+yaml".into(),
                    ));
                }
                patch::strategic_merge(&mut patched, body)?;
            }
            PatchKind::Apply { .. } => {
                // Fields this manager applied before and omits now are removed, unless another
                // manager applied them too (a simplified server-side apply ownership model).
                let fields = patch::owned_fields(body);
                if let Some(owner @ (_, manager)) = &owner
                    && let Some(previous) = self.applied.get(owner)
                {
                    for path in previous.difference(&fields) {
                        let shared = self
                            .applied
                            .iter()
                            .any(|((k, m), f)| k == key && m != manager && f.contains(path));
                        if !shared {
                            patch::remove_field(&mut patched, path);
                        }
                    }
                }
                let mut applied = body.clone();
                if let Some(md) = applied.get_mut("metadata").and_then(Value::as_object_mut) {
                    md.remove("resourceVersion");
                }
                if info.custom {
                    patch::merge_patch(&mut patched, &applied);
                } else {
                    patch::strategic_merge(&mut patched, &applied)?;
                }
            }
        }
        if !patched.is_object() {
            return Err(Error::BadRequest(
                "the patch did not produce an object".into(),
            ));
        }
        let updated = self.update(key, patched, part, now)?;
        if let Some(owner) = owner {
            self.applied.insert(owner, patch::owned_fields(body));
        }
        Ok(updated)
    }

    /// Remove an object for good and publish DELETED.
    fn remove(&mut self, resource: &GroupResource, obj: Value, now: Timestamp) -> Arc<Value> {
        let removed = self.write(resource, obj, None, EventType::Deleted, now);
        if resource.group == "apiextensions.k8s.io"
            && resource.resource == "customresourcedefinitions"
            && let Ok(info) = super::resources::crd_to_info(&removed)
        {
            let gr = info.group_resource();
            self.remove_all(&gr, None, now);
            self.registry.unregister(&gr);
        }
        if resource.group.is_empty() && resource.resource == "namespaces" {
            let ns = meta::name(&removed).to_string();
            let namespaced: Vec<GroupResource> = self
                .registry
                .all()
                .filter(|i| i.namespaced)
                .map(ResourceInfo::group_resource)
                .collect();
            for gr in namespaced {
                self.remove_all(&gr, Some(&ns), now);
            }
        }
        removed
    }

    fn remove_all(&mut self, resource: &GroupResource, namespace: Option<&str>, now: Timestamp) {
        let victims: Vec<Value> = self
            .iter_objects(resource, namespace)
            .map(|o| (**o).clone())
            .collect();
        for v in victims {
            self.write(resource, v, None, EventType::Deleted, now);
        }
    }

    pub(crate) fn delete(
        &mut self,
        key: &ResourceKey,
        opts: &DeleteOptions,
        now: Timestamp,
        via_eviction: bool,
    ) -> Result<Deleted> {
        let info = self.registry.get(&key.resource)?.clone();
        if info.create_only {
            return Err(Error::MethodNotAllowed);
        }
        let old = self.get(key)?;
        let qualified = Self::qualified(&key.resource);
        if let Some(uid) = opts.preconditions.uid.as_deref().filter(|u| !u.is_empty())
            && uid != meta::uid(&old)
        {
            return Err(Error::Conflict {
                qualified,
                name: key.name.clone(),
                detail: format!(
                    "Precondition failed: UID in precondition: {uid}, UID in object meta: {}",
                    meta::uid(&old)
                ),
            });
        }
        if let Some(rv) = opts
            .preconditions
            .resource_version
            .as_deref()
            .filter(|r| !r.is_empty())
        {
            let current = meta::str_at(&old, "/metadata/resourceVersion");
            if rv != current {
                return Err(Error::Conflict {
                    qualified,
                    name: key.name.clone(),
                    detail: format!(
                        "Precondition failed: ResourceVersion in precondition: {rv}, ResourceVersion in object meta: {current}"
                    ),
                });
            }
        }
        let is_pod = key.resource.group.is_empty() && key.resource.resource == "pods";
        let grace = if is_pod {
            let mut period = opts
                .grace_period_seconds
                .or_else(|| {
                    old.pointer("/spec/terminationGracePeriodSeconds")
                        .and_then(Value::as_i64)
                })
                .unwrap_or(0);
            if meta::str_at(&old, "/spec/nodeName").is_empty() || meta::pod_terminal(&old) {
                period = 0;
            }
            if period < 0 {
                period = 1;
            }
            period
        } else {
            0
        };
        let has_finalizers = old
            .pointer("/metadata/finalizers")
            .and_then(Value::as_array)
            .is_some_and(|f| !f.is_empty());
        let mut new = (*old).clone();
        let finished;
        if meta::is_terminating(&old) {
            let current_grace = old
                .pointer("/metadata/deletionGracePeriodSeconds")
                .and_then(Value::as_i64);
            match (current_grace, opts.grace_period_seconds) {
                (Some(current), Some(_)) if grace < current => {
                    let start = meta::parse_time(meta::str_at(&old, "/metadata/deletionTimestamp"))
                        .map(|t| t - jiff::SignedDuration::from_secs(current))
                        .unwrap_or(now);
                    set_deletion(
                        &mut new,
                        start + jiff::SignedDuration::from_secs(grace),
                        grace,
                    );
                }
                _ => {
                    return Ok(Deleted {
                        object: old,
                        finished: false,
                    });
                }
            }
            finished = grace == 0 && !has_finalizers;
        } else if grace > 0 {
            set_deletion(
                &mut new,
                now + jiff::SignedDuration::from_secs(grace),
                grace,
            );
            finished = false;
        } else if has_finalizers {
            set_deletion(&mut new, now, 0);
            finished = false;
        } else {
            finished = true;
        }
        if opts.dry_run {
            return Ok(Deleted {
                object: Arc::new(new),
                finished,
            });
        }
        let object = if finished {
            self.remove(&key.resource, new, now)
        } else {
            self.write(
                &key.resource,
                new,
                Some(old.clone()),
                EventType::Modified,
                now,
            )
        };
        if is_pod && (!meta::is_terminating(&old) || finished) {
            self.audit.pod_deletions.push(PodDeletionRecord {
                time: now,
                resource_version: self.rv,
                namespace: meta::namespace(&object).to_string(),
                pod: key.name.clone(),
                node: non_empty(meta::str_at(&object, "/spec/nodeName")),
                grace_period_seconds: grace,
                via_eviction,
            });
        }
        Ok(Deleted { object, finished })
    }

    fn subscribe(
        &self,
        resource: &GroupResource,
        namespace: Option<&str>,
        opts: &ListOptions,
        from_rv: Option<u64>,
    ) -> Result<Subscription> {
        let info = self.registry.get(resource)?;
        if info.create_only {
            return Err(Error::MethodNotAllowed);
        }
        let namespace = if info.namespaced {
            namespace.filter(|n| !n.is_empty())
        } else {
            None
        };
        let filter = WatchFilter {
            resource: resource.clone(),
            namespace: namespace.map(str::to_string),
            labels: LabelSelector::parse(opts.label_selector.as_deref().unwrap_or_default())?,
            fields: FieldSelector::parse(
                opts.field_selector.as_deref().unwrap_or_default(),
                &info.group,
                &info.plural,
            )?,
        };
        let initial = match from_rv {
            None => self
                .iter_objects(resource, namespace)
                .filter(|o| filter.matches(o))
                .map(|o| WatchEvent {
                    event_type: WatchEventType::Added,
                    object: o.clone(),
                })
                .collect(),
            Some(rv) => {
                if rv < self.history_floor {
                    return Err(Error::Expired {
                        requested: rv,
                        oldest: self.history_floor + 1,
                    });
                }
                self.history
                    .iter()
                    .filter(|e| e.resource_version > rv)
                    .filter_map(|e| filter.translate(e))
                    .collect()
            }
        };
        Ok(Subscription {
            initial,
            start_resource_version: self.rv,
            last_resource_version: self.rv,
            rx: self.events.subscribe(),
            filter,
        })
    }

    /// Pods in a namespace (for the eviction handler and PDB computations).
    pub(crate) fn pods_in(&self, namespace: &str) -> Vec<Arc<Value>> {
        self.iter_objects(&GroupResource::core("pods"), Some(namespace))
            .cloned()
            .collect()
    }
}

fn set_deletion(obj: &mut Value, at: Timestamp, grace: i64) {
    if let Some(m) = obj.get_mut("metadata").and_then(Value::as_object_mut) {
        m.insert("deletionTimestamp".into(), json!(meta::format_time(at)));
        m.insert("deletionGracePeriodSeconds".into(), json!(grace));
    }
}

/// Keep the fields clients cannot change through an update.
fn preserve_system_fields(new: &mut Value, old: &Value, info: &ResourceInfo) {
    let Some(new_map) = new.as_object_mut() else {
        return;
    };
    if new_map
        .get("apiVersion")
        .and_then(Value::as_str)
        .is_none_or(str::is_empty)
    {
        new_map.insert(
            "apiVersion".into(),
            old.get("apiVersion")
                .cloned()
                .unwrap_or(json!(info.api_version())),
        );
    }
    if new_map
        .get("kind")
        .and_then(Value::as_str)
        .is_none_or(str::is_empty)
    {
        new_map.insert("kind".into(), json!(info.kind));
    }
    let md = new_map.entry("metadata").or_insert_with(|| json!({}));
    let Some(md) = md.as_object_mut() else { return };
    for field in [
        "name",
        "namespace",
        "uid",
        "creationTimestamp",
        "deletionTimestamp",
        "deletionGracePeriodSeconds",
    ] {
        match old.pointer(&format!("/metadata/{field}")) {
            Some(v) => md.insert(field.into(), v.clone()),
            None => md.remove(field),
        };
    }
    md.remove("managedFields");
}

/// The conditions a real API server's CRD controller sets once the names are accepted.
fn crd_established(mut crd: Value, now: Timestamp) -> Value {
    let names = crd.pointer("/spec/names").cloned().unwrap_or(json!({}));
    let stored: Vec<Value> = crd
        .pointer("/spec/versions")
        .and_then(Value::as_array)
        .map(|vs| {
            vs.iter()
                .filter(|v| v.get("storage") == Some(&json!(true)))
                .filter_map(|v| v.get("name").cloned())
                .collect()
        })
        .unwrap_or_default();
    let t = meta::format_time(now);
    if let Some(m) = crd.as_object_mut() {
        m.insert(
            "status".into(),
            json!({
                "acceptedNames": names,
                "storedVersions": stored,
                "conditions": [
                    {"type": "NamesAccepted", "status": "True", "reason": "NoConflicts", "message": "no conflicts found", "lastTransitionTime": t},
                    {"type": "Established", "status": "True", "reason": "InitialNamesAccepted", "message": "the initial names have been accepted", "lastTransitionTime": t},
                ],
            }),
        );
    }
    crd
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{ConfigMap, Node, Pod};
    use std::sync::atomic::{AtomicI64, Ordering};

    fn pod(name: &str, node: Option<&str>) -> Value {
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

    fn pods() -> GroupResource {
        GroupResource::core("pods")
    }

    fn fixed_clock(start: i64) -> (Clock, Arc<AtomicI64>) {
        let secs = Arc::new(AtomicI64::new(start));
        let s = secs.clone();
        let clock: Clock = Arc::new(move || {
            Timestamp::from_second(s.load(Ordering::SeqCst)).unwrap_or(Timestamp::UNIX_EPOCH)
        });
        (clock, secs)
    }

    #[test]
    fn create_get_conflicts() {
        let store = Store::new();
        let created = store
            .create(&pods(), Some("default"), pod("a", None))
            .unwrap();
        assert_eq!(created["kind"], "Pod");
        assert_eq!(created["apiVersion"], "v1");
        assert!(!meta::uid(&created).is_empty());
        assert_eq!(
            store
                .create(&pods(), Some("default"), pod("a", None))
                .unwrap_err()
                .code(),
            409
        );
        let key = ResourceKey::new(pods(), Some("default"), "a");
        let mut stale = (*created).clone();
        stale["metadata"]["labels"]["x"] = json!("1");
        store.update(&key, stale.clone()).unwrap();
        let err = store.update(&key, stale).unwrap_err();
        assert_eq!(err.code(), 409);
        assert!(err.to_string().contains("the object has been modified"));
        assert_eq!(
            store
                .get(&ResourceKey::new(pods(), Some("default"), "zz"))
                .unwrap_err()
                .code(),
            404
        );
    }

    #[test]
    fn missing_namespace_and_invalid_names() {
        let store = Store::new();
        let mut elsewhere = pod("a", None);
        elsewhere["metadata"]["namespace"] = json!("nope");
        assert_eq!(
            store
                .create(&pods(), Some("nope"), elsewhere)
                .unwrap_err()
                .code(),
            404
        );
        assert_eq!(
            store
                .create(&pods(), Some("kube-system"), pod("a", None))
                .unwrap_err()
                .code(),
            400
        );
        assert_eq!(
            store
                .create(&pods(), Some("default"), pod("A_b", None))
                .unwrap_err()
                .code(),
            422
        );
        let mut nameless = pod("", None);
        nameless["metadata"]["generateName"] = json!("web-");
        let created = store.create(&pods(), Some("default"), nameless).unwrap();
        assert!(meta::name(&created).starts_with("web-"));
        assert_eq!(meta::name(&created).len(), 9);
    }

    #[test]
    fn no_op_update_keeps_rv_and_status_is_separate() {
        let store = Store::new();
        let created = store
            .create(&pods(), Some("default"), pod("a", None))
            .unwrap();
        let key = ResourceKey::new(pods(), Some("default"), "a");
        let same = store.update(&key, (*created).clone()).unwrap();
        assert_eq!(
            meta::resource_version(&same),
            meta::resource_version(&created)
        );
        let mut changed = (*created).clone();
        changed["status"]["phase"] = json!("Failed");
        let after_main = store.update(&key, changed.clone()).unwrap();
        assert_eq!(after_main["status"]["phase"], "Running");
        let after_status = store.update_status(&key, changed).unwrap();
        assert_eq!(after_status["status"]["phase"], "Failed");
    }

    #[test]
    fn generation_bumps_on_spec_change_only() {
        let store = Store::new();
        let gr = GroupResource::new("apps", "deployments");
        let d = json!({"metadata": {"name": "d", "namespace": "default"}, "spec": {"replicas": 2}});
        let created = store.create(&gr, Some("default"), d).unwrap();
        assert_eq!(created["metadata"]["generation"], 1);
        let key = ResourceKey::new(gr, Some("default"), "d");
        let labelled = store
            .patch(
                &key,
                &PatchKind::Merge,
                &json!({"metadata": {"labels": {"a": "b"}}}),
            )
            .unwrap();
        assert_eq!(labelled["metadata"]["generation"], 1);
        let scaled = store
            .patch(&key, &PatchKind::Merge, &json!({"spec": {"replicas": 3}}))
            .unwrap();
        assert_eq!(scaled["metadata"]["generation"], 2);
        let status = store
            .patch_status(&key, &PatchKind::Merge, &json!({"status": {"replicas": 3}}))
            .unwrap();
        assert_eq!(status["metadata"]["generation"], 2);
        assert_eq!(status["status"]["replicas"], 3);
    }

    #[test]
    fn graceful_pod_deletion() {
        let (clock, secs) = fixed_clock(1_000);
        let store = Store::with_config(100, clock);
        store
            .create(&pods(), Some("default"), pod("a", Some("n1")))
            .unwrap();
        let key = ResourceKey::new(pods(), Some("default"), "a");
        let d = store.delete(&key, &DeleteOptions::default()).unwrap();
        assert!(!d.finished);
        assert_eq!(d.object["metadata"]["deletionGracePeriodSeconds"], 30);
        assert_eq!(
            d.object["metadata"]["deletionTimestamp"],
            "1970-01-01T00:17:10Z"
        );
        secs.store(1_005, Ordering::SeqCst);
        let again = store
            .delete(
                &key,
                &DeleteOptions {
                    grace_period_seconds: Some(10),
                    ..Default::default()
                },
            )
            .unwrap();
        assert_eq!(
            again.object["metadata"]["deletionTimestamp"],
            "1970-01-01T00:16:50Z"
        );
        let done = store
            .delete(
                &key,
                &DeleteOptions {
                    grace_period_seconds: Some(0),
                    ..Default::default()
                },
            )
            .unwrap();
        assert!(done.finished);
        assert_eq!(store.get(&key).unwrap_err().code(), 404);
        let unscheduled = store
            .create(&pods(), Some("default"), pod("b", None))
            .unwrap();
        let d = store
            .delete(
                &ResourceKey::new(pods(), Some("default"), "b"),
                &DeleteOptions::default(),
            )
            .unwrap();
        assert!(d.finished);
        assert!(meta::resource_version(&d.object) > meta::resource_version(&unscheduled));
        assert_eq!(store.pod_deletions().len(), 3);
    }

    #[test]
    fn delete_preconditions_and_finalizers() {
        let store = Store::new();
        let gr = GroupResource::core("configmaps");
        store
            .create(
                &gr,
                Some("default"),
                json!({"metadata": {"name": "c", "finalizers": ["x"]}}),
            )
            .unwrap();
        let key = ResourceKey::new(gr, Some("default"), "c");
        let bad = DeleteOptions {
            preconditions: Preconditions {
                uid: Some("nope".into()),
                ..Default::default()
            },
            ..Default::default()
        };
        assert_eq!(store.delete(&key, &bad).unwrap_err().code(), 409);
        let d = store.delete(&key, &DeleteOptions::default()).unwrap();
        assert!(!d.finished);
        store
            .patch(
                &key,
                &PatchKind::Merge,
                &json!({"metadata": {"finalizers": null}}),
            )
            .unwrap();
        assert_eq!(store.get(&key).unwrap_err().code(), 404);
    }

    #[test]
    fn list_selectors_and_pages() {
        let store = Store::new();
        for i in 0..5 {
            let mut p = pod(&format!("p{i}"), Some(if i % 2 == 0 { "n1" } else { "n2" }));
            p["metadata"]["labels"]["i"] = json!(i.to_string());
            store.create(&pods(), Some("default"), p).unwrap();
        }
        let l = store
            .list(&pods(), None, &ListOptions::fields("spec.nodeName=n1"))
            .unwrap();
        assert_eq!(l.items.len(), 3);
        let l = store
            .list(&pods(), Some("default"), &ListOptions::labels("i in (1,2)"))
            .unwrap();
        assert_eq!(l.items.len(), 2);
        let mut opts = ListOptions {
            limit: Some(2),
            ..Default::default()
        };
        let mut names = Vec::new();
        loop {
            let page = store.list(&pods(), None, &opts).unwrap();
            names.extend(page.items.iter().map(|p| meta::name(p).to_string()));
            match page.continue_token {
                Some(t) => opts.continue_token = Some(t),
                None => break,
            }
        }
        assert_eq!(names, vec!["p0", "p1", "p2", "p3", "p4"]);
        assert_eq!(
            store
                .list(&pods(), None, &ListOptions::labels("a b"))
                .unwrap_err()
                .code(),
            400
        );
    }

    #[tokio::test]
    async fn watch_resumes_and_expires() {
        use futures::StreamExt;
        let store = Store::with_config(3, system_clock());
        let a = store
            .create(&pods(), Some("default"), pod("a", None))
            .unwrap();
        let rv_a = meta::resource_version(&a).unwrap();
        store
            .create(&pods(), Some("default"), pod("b", None))
            .unwrap();
        let mut w = store
            .watch(
                &pods(),
                Some("default"),
                &ListOptions::default(),
                Some(rv_a),
            )
            .unwrap();
        let ev = w.next().await.unwrap();
        assert_eq!(ev.event_type, WatchEventType::Added);
        assert_eq!(meta::name(&ev.object), "b");
        for i in 0..5 {
            store
                .create(
                    &GroupResource::core("configmaps"),
                    Some("default"),
                    json!({"metadata": {"name": format!("c{i}")}}),
                )
                .unwrap();
        }
        assert_eq!(
            store
                .watch(&pods(), None, &ListOptions::default(), Some(rv_a))
                .err()
                .unwrap()
                .code(),
            410
        );
        store
            .create(&pods(), Some("default"), pod("c", None))
            .unwrap();
        let ev = w.next().await.unwrap();
        assert_eq!(meta::name(&ev.object), "c");
    }

    #[tokio::test]
    async fn watch_selector_transitions() {
        use futures::StreamExt;
        let store = Store::new();
        let mut w = store
            .watch(&pods(), None, &ListOptions::labels("app=web"), None)
            .unwrap();
        store
            .create(&pods(), Some("default"), pod("a", None))
            .unwrap();
        assert_eq!(w.next().await.unwrap().event_type, WatchEventType::Added);
        let key = ResourceKey::new(pods(), Some("default"), "a");
        store
            .patch(
                &key,
                &PatchKind::Merge,
                &json!({"metadata": {"labels": {"app": "db"}}}),
            )
            .unwrap();
        assert_eq!(w.next().await.unwrap().event_type, WatchEventType::Deleted);
        store
            .patch(
                &key,
                &PatchKind::Merge,
                &json!({"metadata": {"labels": {"app": "web"}}}),
            )
            .unwrap();
        assert_eq!(w.next().await.unwrap().event_type, WatchEventType::Added);
    }

    #[test]
    fn typed_helpers_and_modify() {
        let store = Store::new();
        let cm: ConfigMap = serde_json::from_value(
            json!({"metadata": {"name": "c", "namespace": "default"}, "data": {"a": "1"}}),
        )
        .unwrap();
        store.create_as(&cm).unwrap();
        let got: ConfigMap = store.get_as(Some("default"), "c").unwrap();
        assert_eq!(got.data.unwrap()["a"], "1");
        let modified = store
            .modify_as::<ConfigMap>(Some("default"), "c", |c| {
                c.data
                    .get_or_insert_default()
                    .insert("b".into(), "2".into());
            })
            .unwrap();
        assert_eq!(modified.data.unwrap().len(), 2);
        let node: Node = serde_json::from_value(json!({"metadata": {"name": "n1"}})).unwrap();
        store.create_as(&node).unwrap();
        store
            .modify_status_as::<Node>(None, "n1", |n| {
                n.status.get_or_insert_default().conditions = Some(vec![
                    serde_json::from_value(json!({"type": "Ready", "status": "True"})).unwrap(),
                ]);
            })
            .unwrap();
        store
            .modify_as::<Node>(None, "n1", |n| {
                n.spec.get_or_insert_default().unschedulable = Some(true)
            })
            .unwrap();
        assert_eq!(store.max_unavailable_nodes(), 1);
        let counts: Vec<usize> = store
            .unavailable_timeline()
            .iter()
            .map(|p| p.unavailable)
            .collect();
        assert_eq!(counts, vec![1, 0, 1]);
        assert_eq!(
            store
                .list_as::<Pod>(None, &ListOptions::default())
                .unwrap()
                .len(),
            0
        );
    }

    #[test]
    fn namespace_deletion_cascades() {
        let store = Store::new();
        store
            .create(
                &GroupResource::core("namespaces"),
                None,
                json!({"metadata": {"name": "team"}}),
            )
            .unwrap();
        let mut p = pod("a", None);
        p["metadata"]["namespace"] = json!("team");
        store.create(&pods(), Some("team"), p).unwrap();
        store
            .delete(
                &ResourceKey::new(GroupResource::core("namespaces"), None, "team"),
                &DeleteOptions::default(),
            )
            .unwrap();
        assert!(
            store
                .list(&pods(), None, &ListOptions::default())
                .unwrap()
                .items
                .is_empty()
        );
    }

    #[test]
    fn server_side_apply_removes_fields_a_manager_dropped() {
        let store = Store::new();
        let gr = GroupResource::core("configmaps");
        let key = ResourceKey::new(gr, Some("default"), "c");
        let apply = |manager: &str, data: Value| {
            let body = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c"}, "data": data});
            let kind = PatchKind::Apply {
                field_manager: manager.into(),
                force: true,
            };
            store.patch(&key, &kind, &body).unwrap()
        };
        apply("rota", json!({"a": "1", "b": "2"}));
        assert_eq!(apply("rota", json!({"a": "1"}))["data"], json!({"a": "1"}));
        apply("other", json!({"c": "3", "a": "1"}));
        assert_eq!(
            apply("rota", json!({"d": "4"}))["data"],
            json!({"a": "1", "c": "3", "d": "4"})
        );
        let missing_manager = PatchKind::Apply {
            field_manager: String::new(),
            force: false,
        };
        assert_eq!(
            store
                .patch(&key, &missing_manager, &json!({}))
                .unwrap_err()
                .code(),
            400
        );
    }

    #[test]
    fn uids_are_v4() {
        let u = new_uid();
        assert_eq!(u.len(), 36);
        assert_eq!(&u[14..15], "4");
        assert!("89ab".contains(&u[19..20]));
    }
}
