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

use std::sync::{Arc, PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::apps::v1::DaemonSet;
use k8s_openapi::api::core::v1::{Node, Pod};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use kube::runtime::WatchStreamExt;
use kube::runtime::watcher::{self, Event};
use kube::{Api, Client, Resource};
use tokio::sync::watch;
use tokio::task::JoinSet;
use tracing::{debug, info, warn};

use super::Error;
use rota_core::cluster::{ClusterState, Indexed, Kind};
use rota_core::drain::pdb::PdbIndex;
use rota_core::policy::{KubeVersion, MaintenancePolicy};

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

/// An index as a watch publishes it: empty and not `listed` until the first full list.
#[derive(Clone, Debug, Default)]
pub struct Synced<T> {
    /// The index.
    pub index: T,
    /// Whether it was listed in full at least once.
    pub listed: bool,
}

/// The shared cache. Clones see the same state.
#[derive(Clone, Debug)]
pub struct ClusterCache {
    state: Arc<RwLock<ClusterState>>,
    changes: watch::Receiver<u64>,
    pdbs: watch::Receiver<Synced<PdbIndex>>,
}

/// Who hears of the cache's changes: everyone of every change, the drains of the budgets'.
#[derive(Debug)]
struct Feeds {
    changes: watch::Sender<u64>,
    pdbs: watch::Sender<Synced<PdbIndex>>,
}

impl Feeds {
    /// Tells the followers that `kind` changed in `state`.
    fn changed(&self, state: &ClusterState, kind: Kind) {
        if kind == Kind::PodDisruptionBudgets {
            self.pdbs.send_replace(Synced {
                index: state.pdb_index().clone(),
                listed: state.is_listed(kind),
            });
        }
        self.changes.send_modify(|n| *n = n.wrapping_add(1));
    }
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
        let state = Arc::new(RwLock::new(ClusterState::default()));
        let (changes_tx, changes) = watch::channel(0_u64);
        let (pdbs_tx, pdbs) = watch::channel(Synced::default());
        let sender = Arc::new(Feeds {
            changes: changes_tx,
            pdbs: pdbs_tx,
        });
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
        let cache = ClusterCache {
            state,
            changes,
            pdbs,
        };
        (cache, CacheTasks { tasks })
    }

    /// The current state. Do not hold the guard across an `.await`.
    pub fn read(&self) -> RwLockReadGuard<'_, ClusterState> {
        self.state.read().unwrap_or_else(PoisonError::into_inner)
    }

    /// The budgets' index, published on every change of a budget: what a drain reacts to when
    /// a budget refused an eviction. The same index as [`ClusterState::pdb_index`], so drains and
    /// the scheduler read one view and no drain opens a watch of its own.
    pub fn pdb_feed(&self) -> watch::Receiver<Synced<PdbIndex>> {
        self.pdbs.clone()
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

type Shared = (Arc<RwLock<ClusterState>>, Arc<Feeds>);

fn write(state: &RwLock<ClusterState>) -> RwLockWriteGuard<'_, ClusterState> {
    state.write().unwrap_or_else(PoisonError::into_inner)
}

/// Follows one kind until the watch stream ends (it does not: the watcher retries with
/// back-off).
async fn follow<K: Indexed + 'static>(
    api: Api<K>,
    (state, feeds, config): (Arc<RwLock<ClusterState>>, Arc<Feeds>, watcher::Config),
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
                let mut state = write(&state);
                K::clear(&mut state);
                for obj in listing.drain(..) {
                    K::insert(&mut state, obj);
                }
                state.mark_synced(K::KIND);
                feeds.changed(&state, K::KIND);
                drop(state);
                info!(kind = %K::KIND, count, "listed");
            }
            Event::Apply(obj) => {
                let mut state = write(&state);
                K::insert(&mut state, trimmed(obj));
                feeds.changed(&state, K::KIND);
            }
            Event::Delete(obj) => {
                let mut state = write(&state);
                K::remove(&mut state, &obj);
                feeds.changed(&state, K::KIND);
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
async fn follow_version(client: Client, refresh: Duration, (state, feeds): Shared) -> String {
    loop {
        match client.apiserver_version().await {
            Ok(info) => match info.git_version.parse::<KubeVersion>() {
                Ok(version) => {
                    let changed = {
                        let mut state = write(&state);
                        state.set_api_server_version(version)
                    };
                    if changed {
                        debug!(version = %info.git_version, "API server version");
                        feeds.changes.send_modify(|n| *n = n.wrapping_add(1));
                    }
                }
                Err(error) => warn!(%error, "the API server reports an unreadable version"),
            },
            Err(error) => warn!(%error, "reading the API server version failed"),
        }
        tokio::time::sleep(refresh).await;
    }
}
