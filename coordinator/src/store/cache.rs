//! [`ClusterCache`]: what the controller knows of the cluster, kept current by watches.
//!
//! One kube-runtime watcher per kind (Nodes, Pods, PodDisruptionBudgets, DaemonSets,
//! MaintenancePolicies) feeds an in-memory index (pods are also indexed by node, so that the
//! controller looks at the pods of the few nodes it cares about without scanning all of them).
//! A watcher lists once and then follows changes; it re-establishes its watch when the server
//! closes it (every few minutes) or the stream breaks. At steady state the requests per minute
//! are those re-establishments: a constant, whatever the number of nodes. The API server's
//! version (`/version`, which cannot be watched) is read at start and then every
//! [`CacheConfig::version_refresh`], also a constant rate.
//!
//! Every change bumps a counter on a watch channel ([`ClusterCache::changes`]) that the controller
//! wakes on.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::fmt;
use std::sync::{Arc, PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::apps::v1::DaemonSet;
use k8s_openapi::api::core::v1::{Node, Pod};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use kube::runtime::WatchStreamExt;
use kube::runtime::watcher::{self, Event};
use kube::{Api, Client, Resource, ResourceExt};
use serde::de::DeserializeOwned;
use tokio::sync::watch;
use tokio::task::JoinSet;
use tracing::{debug, info, warn};

use super::Error;
use rota_core::policy::{KubeVersion, MaintenancePolicy, NamespacedName};

/// A kind of object the cache follows.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Kind {
    /// Nodes.
    Nodes,
    /// Pods (all namespaces).
    Pods,
    /// PodDisruptionBudgets (all namespaces).
    PodDisruptionBudgets,
    /// DaemonSets (all namespaces).
    DaemonSets,
    /// MaintenancePolicies.
    MaintenancePolicies,
}

impl Kind {
    const ALL: [Kind; 5] = [
        Kind::Nodes,
        Kind::Pods,
        Kind::PodDisruptionBudgets,
        Kind::DaemonSets,
        Kind::MaintenancePolicies,
    ];
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Kind::Nodes => "nodes",
            Kind::Pods => "pods",
            Kind::PodDisruptionBudgets => "poddisruptionbudgets",
            Kind::DaemonSets => "daemonsets",
            Kind::MaintenancePolicies => "maintenancepolicies",
        })
    }
}

/// Settings of the cache.
#[derive(Clone, Debug)]
pub struct CacheConfig {
    /// How often the API server's version is read again.
    pub version_refresh: Duration,
    /// How long the server keeps one watch request open before the watcher re-establishes it
    /// (`timeoutSeconds`); `None`: kube-runtime's default (290 s).
    pub watch_timeout: Option<u32>,
}

impl Default for CacheConfig {
    fn default() -> Self {
        CacheConfig {
            version_refresh: Duration::from_secs(600),
            watch_timeout: None,
        }
    }
}

/// The cached objects. Read it through [`ClusterCache::read`]; never hold the guard across an
/// `.await`.
#[derive(Debug, Default)]
pub struct CacheState {
    nodes: BTreeMap<String, Arc<Node>>,
    pods: HashMap<NamespacedName, Arc<Pod>>,
    pods_by_node: HashMap<String, BTreeSet<NamespacedName>>,
    pdbs: BTreeMap<NamespacedName, Arc<PodDisruptionBudget>>,
    daemon_sets: BTreeMap<NamespacedName, Arc<DaemonSet>>,
    policies: BTreeMap<String, Arc<MaintenancePolicy>>,
    api_server_version: Option<KubeVersion>,
    synced: HashSet<Kind>,
}

impl CacheState {
    /// Every Node, by name.
    pub fn nodes(&self) -> &BTreeMap<String, Arc<Node>> {
        &self.nodes
    }

    /// One Node.
    pub fn node(&self, name: &str) -> Option<&Arc<Node>> {
        self.nodes.get(name)
    }

    /// The pods bound to a node.
    pub fn pods_on<'a>(&'a self, node: &str) -> impl Iterator<Item = &'a Arc<Pod>> + 'a {
        self.pods_by_node
            .get(node)
            .into_iter()
            .flatten()
            .filter_map(|key| self.pods.get(key))
    }

    /// How many pods are cached.
    pub fn pod_count(&self) -> usize {
        self.pods.len()
    }

    /// Every PodDisruptionBudget.
    pub fn pdbs(&self) -> impl Iterator<Item = &Arc<PodDisruptionBudget>> {
        self.pdbs.values()
    }

    /// Every DaemonSet, by namespace and name.
    pub fn daemon_sets(&self) -> &BTreeMap<NamespacedName, Arc<DaemonSet>> {
        &self.daemon_sets
    }

    /// Every MaintenancePolicy, by name.
    pub fn policies(&self) -> &BTreeMap<String, Arc<MaintenancePolicy>> {
        &self.policies
    }

    /// The API server's version, once read.
    pub fn api_server_version(&self) -> Option<KubeVersion> {
        self.api_server_version
    }

    /// Whether every watch has delivered its initial list.
    pub fn is_synced(&self) -> bool {
        Kind::ALL.iter().all(|k| self.synced.contains(k))
    }
}

fn key_of<K: Resource>(obj: &K) -> NamespacedName {
    NamespacedName::new(
        obj.meta().namespace.clone().unwrap_or_default(),
        obj.meta().name.clone().unwrap_or_default(),
    )
}

/// A kind the cache follows: where its objects go in [`CacheState`].
trait Cached: Resource<DynamicType = ()> + Clone + DeserializeOwned + fmt::Debug + Send + Sync {
    const KIND: Kind;
    fn insert(state: &mut CacheState, obj: Self);
    fn remove(state: &mut CacheState, obj: &Self);
    fn clear(state: &mut CacheState);
}

impl Cached for Node {
    const KIND: Kind = Kind::Nodes;
    fn insert(state: &mut CacheState, mut obj: Self) {
        // Image lists are large and of no use to rota.
        if let Some(status) = obj.status.as_mut() {
            status.images = None;
        }
        state.nodes.insert(obj.name_any(), Arc::new(obj));
    }
    fn remove(state: &mut CacheState, obj: &Self) {
        state.nodes.remove(&obj.name_any());
    }
    fn clear(state: &mut CacheState) {
        state.nodes.clear();
    }
}

impl Cached for Pod {
    const KIND: Kind = Kind::Pods;
    fn insert(state: &mut CacheState, obj: Self) {
        let key = key_of(&obj);
        let node = obj.spec.as_ref().and_then(|s| s.node_name.clone());
        let previous = state.pods.insert(key.clone(), Arc::new(obj));
        let previous_node =
            previous.and_then(|p| p.spec.as_ref().and_then(|s| s.node_name.clone()));
        if previous_node != node
            && let Some(old) = previous_node
        {
            unindex(&mut state.pods_by_node, &old, &key);
        }
        if let Some(node) = node {
            state.pods_by_node.entry(node).or_default().insert(key);
        }
    }
    fn remove(state: &mut CacheState, obj: &Self) {
        let key = key_of(obj);
        if let Some(previous) = state.pods.remove(&key)
            && let Some(node) = previous.spec.as_ref().and_then(|s| s.node_name.as_ref())
        {
            unindex(&mut state.pods_by_node, node, &key);
        }
    }
    fn clear(state: &mut CacheState) {
        state.pods.clear();
        state.pods_by_node.clear();
    }
}

fn unindex(
    index: &mut HashMap<String, BTreeSet<NamespacedName>>,
    node: &str,
    key: &NamespacedName,
) {
    if let Some(keys) = index.get_mut(node) {
        keys.remove(key);
        if keys.is_empty() {
            index.remove(node);
        }
    }
}

impl Cached for PodDisruptionBudget {
    const KIND: Kind = Kind::PodDisruptionBudgets;
    fn insert(state: &mut CacheState, obj: Self) {
        state.pdbs.insert(key_of(&obj), Arc::new(obj));
    }
    fn remove(state: &mut CacheState, obj: &Self) {
        state.pdbs.remove(&key_of(obj));
    }
    fn clear(state: &mut CacheState) {
        state.pdbs.clear();
    }
}

impl Cached for DaemonSet {
    const KIND: Kind = Kind::DaemonSets;
    fn insert(state: &mut CacheState, obj: Self) {
        state.daemon_sets.insert(key_of(&obj), Arc::new(obj));
    }
    fn remove(state: &mut CacheState, obj: &Self) {
        state.daemon_sets.remove(&key_of(obj));
    }
    fn clear(state: &mut CacheState) {
        state.daemon_sets.clear();
    }
}

impl Cached for MaintenancePolicy {
    const KIND: Kind = Kind::MaintenancePolicies;
    fn insert(state: &mut CacheState, obj: Self) {
        state.policies.insert(obj.name_any(), Arc::new(obj));
    }
    fn remove(state: &mut CacheState, obj: &Self) {
        state.policies.remove(&obj.name_any());
    }
    fn clear(state: &mut CacheState) {
        state.policies.clear();
    }
}

/// The shared cache. Clones see the same state.
#[derive(Clone, Debug)]
pub struct ClusterCache {
    state: Arc<RwLock<CacheState>>,
    changes: watch::Receiver<u64>,
}

/// The cache's background tasks; dropping this stops them.
#[derive(Debug)]
pub struct CacheTasks {
    tasks: JoinSet<String>,
}

impl CacheTasks {
    /// Resolves when a watch task ends, which they never do on their own: the cache then no
    /// longer follows the cluster, and the coordinator must stop loudly.
    pub async fn stopped(&mut self) -> Error {
        match self.tasks.join_next().await {
            Some(Ok(task)) => Error::Stopped(task),
            Some(Err(e)) => Error::Stopped(format!("a cache task ({e})")),
            None => Error::Stopped("every cache task".to_owned()),
        }
    }
}

impl ClusterCache {
    /// Starts following the cluster through `client`.
    pub fn start(client: Client, config: CacheConfig) -> (ClusterCache, CacheTasks) {
        let state = Arc::new(RwLock::new(CacheState::default()));
        let (sender, changes) = watch::channel(0_u64);
        let sender = Arc::new(sender);
        let mut tasks = JoinSet::new();
        let watch = match config.watch_timeout {
            Some(seconds) => watcher::Config::default().timeout(seconds),
            None => watcher::Config::default(),
        };
        let ctx = || (state.clone(), sender.clone(), watch.clone());
        tasks.spawn(follow::<Node>(Api::all(client.clone()), ctx()));
        tasks.spawn(follow::<Pod>(Api::all(client.clone()), ctx()));
        tasks.spawn(follow::<PodDisruptionBudget>(
            Api::all(client.clone()),
            ctx(),
        ));
        tasks.spawn(follow::<DaemonSet>(Api::all(client.clone()), ctx()));
        tasks.spawn(follow::<MaintenancePolicy>(Api::all(client.clone()), ctx()));
        tasks.spawn(follow_version(
            client,
            config.version_refresh,
            (state.clone(), sender.clone()),
        ));
        (ClusterCache { state, changes }, CacheTasks { tasks })
    }

    /// The current state. Do not hold the guard across an `.await`.
    pub fn read(&self) -> RwLockReadGuard<'_, CacheState> {
        self.state.read().unwrap_or_else(PoisonError::into_inner)
    }

    /// A receiver that changes whenever the cache does.
    pub fn changes(&self) -> watch::Receiver<u64> {
        self.changes.clone()
    }

    /// Waits until every watch has listed its objects once.
    pub async fn synced(&self) {
        let mut changes = self.changes.clone();
        loop {
            if self.read().is_synced() {
                return;
            }
            if changes.changed().await.is_err() {
                // The tasks are gone; the caller learns it from `CacheTasks::stopped`.
                std::future::pending::<()>().await;
            }
        }
    }
}

type Shared = (Arc<RwLock<CacheState>>, Arc<watch::Sender<u64>>);

fn write(state: &RwLock<CacheState>) -> RwLockWriteGuard<'_, CacheState> {
    state.write().unwrap_or_else(PoisonError::into_inner)
}

/// Follows one kind until the watch stream ends (it does not: the watcher retries with
/// back-off).
async fn follow<K: Cached + 'static>(
    api: Api<K>,
    (state, changes, config): (
        Arc<RwLock<CacheState>>,
        Arc<watch::Sender<u64>>,
        watcher::Config,
    ),
) -> String {
    let stream = watcher::watcher(api, config).default_backoff();
    futures::pin_mut!(stream);
    let mut listing: Vec<K> = Vec::new();
    while let Some(event) = stream.next().await {
        let event = match event {
            Ok(event) => event,
            Err(error) => {
                warn!(kind = %K::KIND, %error, "watch failed; retrying");
                continue;
            }
        };
        match event {
            Event::Init => listing.clear(),
            Event::InitApply(obj) => listing.push(trimmed(obj)),
            Event::InitDone => {
                let count = listing.len();
                {
                    let mut state = write(&state);
                    K::clear(&mut state);
                    for obj in listing.drain(..) {
                        K::insert(&mut state, obj);
                    }
                    state.synced.insert(K::KIND);
                }
                info!(kind = %K::KIND, count, "listed");
                changes.send_modify(|n| *n = n.wrapping_add(1));
            }
            Event::Apply(obj) => {
                K::insert(&mut write(&state), trimmed(obj));
                changes.send_modify(|n| *n = n.wrapping_add(1));
            }
            Event::Delete(obj) => {
                K::remove(&mut write(&state), &obj);
                changes.send_modify(|n| *n = n.wrapping_add(1));
            }
        }
    }
    format!("the {} watch", K::KIND)
}

/// Drops what rota never reads and what would only cost memory.
fn trimmed<K: Resource>(mut obj: K) -> K {
    obj.meta_mut().managed_fields = None;
    obj
}

/// Reads `/version` now and then every `refresh`.
async fn follow_version(client: Client, refresh: Duration, (state, changes): Shared) -> String {
    loop {
        match client.apiserver_version().await {
            Ok(info) => match info.git_version.parse::<KubeVersion>() {
                Ok(version) => {
                    let changed = {
                        let mut state = write(&state);
                        let changed = state.api_server_version != Some(version);
                        state.api_server_version = Some(version);
                        changed
                    };
                    if changed {
                        debug!(version = %info.git_version, "API server version");
                        changes.send_modify(|n| *n = n.wrapping_add(1));
                    }
                }
                Err(error) => warn!(%error, "the API server reports an unreadable version"),
            },
            Err(error) => warn!(%error, "reading the API server version failed"),
        }
        tokio::time::sleep(refresh).await;
    }
}
