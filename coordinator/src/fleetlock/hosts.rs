//! [`HostLocks`]: the reboot locks of FleetLock hosts that are not Kubernetes nodes (listed in a
//! policy's `spec.fleetLock.hosts`).
//!
//! Who asks is kept in memory (a client asks again until it is answered 200, so a new leader
//! learns it at the next ask); who holds a lock is persisted in the ConfigMap
//! [`HOSTS_CONFIGMAP`] (one key per pool: a JSON object from host id to the time its lock was
//! given), written at the `resourceVersion` read, so that a restarted coordinator or the standby
//! that takes over counts every holder against `maxUnavailable`. Locks are given only by the
//! controller's pass, which decides hosts and nodes together ([`rota_core::controller::decide`]);
//! a client's steady-state gives its lock back.

use std::collections::BTreeMap;

use jiff::Timestamp;
use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{ObjectMeta, PostParams};
use kube::{Api, Client};
use tokio::sync::{Mutex, Notify};

use rota_core::clock::Clock;
use rota_core::fleetlock::HostPool;

use crate::store::WriteGate;

/// The ConfigMap, in the coordinator's namespace, that holds the hosts' locks.
pub const HOSTS_CONFIGMAP: &str = "rota-fleetlock-hosts";

/// Why the hosts' locks could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// This replica does not lead (any more).
    #[error("this coordinator replica does not lead")]
    NotLeading,
    /// The API server refused or failed.
    #[error("the FleetLock hosts' ConfigMap: {0}")]
    Kube(#[from] kube::Error),
    /// The ConfigMap holds something else than locks.
    #[error("the FleetLock hosts' ConfigMap, key {key}: {message}")]
    Corrupt {
        /// The pool's key.
        key: String,
        /// What is wrong.
        message: String,
    },
}

/// A request not asked again for this long is dropped: its host went away before it was
/// answered (Zincati asks again within seconds).
pub const REQUEST_TTL: jiff::SignedDuration = jiff::SignedDuration::from_mins(10);

#[derive(Default)]
struct State {
    pools: BTreeMap<String, HostPool>,
    /// When each host that asks asked last.
    last_asked: BTreeMap<(String, String), Timestamp>,
    /// Why each host that asks still waits, from the last pass.
    waiting: BTreeMap<(String, String), Vec<String>>,
    /// The ConfigMap's `resourceVersion`; `None` while it does not exist.
    version: Option<String>,
    /// Locks given back since the controller last looked: `(pool, id)`.
    released: Vec<(String, String)>,
}

/// The hosts' locks of one term; see the [module docs](self).
pub struct HostLocks {
    state: Mutex<State>,
    changed: Notify,
    api: Api<ConfigMap>,
    gate: WriteGate,
    clock: std::sync::Arc<dyn Clock>,
}

impl std::fmt::Debug for HostLocks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HostLocks").finish_non_exhaustive()
    }
}

impl HostLocks {
    /// Reads the locks held (the leader, at the start of its term).
    pub async fn load(
        client: Client,
        namespace: &str,
        gate: WriteGate,
        clock: std::sync::Arc<dyn Clock>,
    ) -> Result<HostLocks, Error> {
        let api: Api<ConfigMap> = Api::namespaced(client, namespace);
        let mut state = State::default();
        if let Some(map) = api.get_opt(HOSTS_CONFIGMAP).await? {
            state.version = map.metadata.resource_version.clone();
            for (key, value) in map.data.unwrap_or_default() {
                let holders: BTreeMap<String, Timestamp> =
                    serde_json::from_str(&value).map_err(|e| Error::Corrupt {
                        key: key.clone(),
                        message: e.to_string(),
                    })?;
                state.pools.entry(key).or_default().holders = holders;
            }
        }
        Ok(HostLocks {
            state: Mutex::new(state),
            changed: Notify::new(),
            api,
            gate,
            clock,
        })
    }

    /// Every pool's holders and requests, for the controller's pass. Requests not asked again
    /// within [`REQUEST_TTL`] are dropped first.
    pub async fn snapshot(&self) -> BTreeMap<String, HostPool> {
        let mut state = self.state.lock().await;
        let stale = self.clock.now() - REQUEST_TTL;
        let State {
            pools, last_asked, ..
        } = &mut *state;
        last_asked.retain(|(pool, id), at| {
            let keep = *at >= stale;
            if !keep && let Some(hosts) = pools.get_mut(pool) {
                hosts.requests.remove(id);
            }
            keep
        });
        state.pools.clone()
    }

    /// Resolves when a host asked or gave its lock back (the controller's pass is due).
    pub async fn changed(&self) {
        self.changed.notified().await;
    }

    /// Host `id` of `pool` asks for its lock: `Ok` when it holds it, else why it waits.
    pub async fn ask(&self, pool: &str, id: &str) -> Result<(), Vec<String>> {
        let mut state = self.state.lock().await;
        let now = self.clock.now();
        let hosts = state.pools.entry(pool.to_owned()).or_default();
        if hosts.holders.contains_key(id) {
            return Ok(());
        }
        if !hosts.requests.contains_key(id) {
            hosts.requests.insert(id.to_owned(), now);
            self.changed.notify_one();
        }
        let key = (pool.to_owned(), id.to_owned());
        state.last_asked.insert(key.clone(), now);
        // A host that just asked has no reasons yet: the pass it woke has not run.
        Err(state
            .waiting
            .get(&key)
            .cloned()
            .unwrap_or_else(|| vec!["waiting for the scheduler".to_owned()]))
    }

    /// The controller gives host `id` of `pool` its lock (persisted before it counts as given).
    pub async fn admit(&self, pool: &str, id: &str) -> Result<(), Error> {
        let mut state = self.state.lock().await;
        let now = self.clock.now();
        let mut pools = state.pools.clone();
        let hosts = pools.entry(pool.to_owned()).or_default();
        if hosts.requests.remove(id).is_none() {
            // Gave up meanwhile.
            return Ok(());
        }
        state.last_asked.remove(&(pool.to_owned(), id.to_owned()));
        hosts.holders.insert(id.to_owned(), now);
        self.persist(&mut state, pools).await
    }

    /// Host `id` of `pool` reached steady state: its request or lock goes. Returns whether it
    /// held a lock.
    pub async fn release(&self, pool: &str, id: &str) -> Result<bool, Error> {
        let mut state = self.state.lock().await;
        let mut pools = state.pools.clone();
        let hosts = pools.entry(pool.to_owned()).or_default();
        hosts.requests.remove(id);
        let held = hosts.holders.remove(id).is_some();
        state.last_asked.remove(&(pool.to_owned(), id.to_owned()));
        if held {
            self.persist(&mut state, pools).await?;
            state.released.push((pool.to_owned(), id.to_owned()));
            self.changed.notify_one();
        } else {
            state.pools = pools;
        }
        Ok(held)
    }

    /// The locks given back since the last call: `(pool, id)`.
    pub async fn take_released(&self) -> Vec<(String, String)> {
        std::mem::take(&mut self.state.lock().await.released)
    }

    /// Publishes why the hosts that ask still wait (from the controller's pass).
    pub async fn set_waiting(&self, waiting: BTreeMap<(String, String), Vec<String>>) {
        self.state.lock().await.waiting = waiting;
    }

    /// Writes `pools`' holders at the version read; only then does `state` take them.
    async fn persist(
        &self,
        state: &mut State,
        pools: BTreeMap<String, HostPool>,
    ) -> Result<(), Error> {
        if !self.gate.is_open() {
            return Err(Error::NotLeading);
        }
        let mut data = BTreeMap::new();
        for (pool, hosts) in &pools {
            if hosts.holders.is_empty() {
                continue;
            }
            let value = serde_json::to_string(&hosts.holders).map_err(|e| Error::Corrupt {
                key: pool.clone(),
                message: e.to_string(),
            })?;
            data.insert(pool.clone(), value);
        }
        let map = ConfigMap {
            metadata: ObjectMeta {
                name: Some(HOSTS_CONFIGMAP.to_owned()),
                resource_version: state.version.clone(),
                labels: Some(BTreeMap::from([(
                    "app.kubernetes.io/managed-by".to_owned(),
                    "rota".to_owned(),
                )])),
                ..ObjectMeta::default()
            },
            data: Some(data),
            ..ConfigMap::default()
        };
        let written = match &state.version {
            Some(_) => {
                self.api
                    .replace(HOSTS_CONFIGMAP, &PostParams::default(), &map)
                    .await?
            }
            None => self.api.create(&PostParams::default(), &map).await?,
        };
        state.version = written.metadata.resource_version;
        state.pools = pools;
        Ok(())
    }
}
