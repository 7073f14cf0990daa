//! A model of kured (kubereboot/kured, `cmd/kured/main.go` and `pkg/daemonsetlock`), run on
//! the same emulated cluster and simulated hosts as rota, for the comparison.
//!
//! Each node runs the daemon of the `kube-system/kured` DaemonSet (a [`Process`] of its own,
//! restarted after every boot like the pod) with kured's behaviour and defaults:
//!
//! - **at start** (`rebootAsRequired`'s first loop, a delayed tick of 1 min): when the node
//!   holds the lock it took before its reboot, it uncordons the node (unless the node was
//!   cordoned before kured cordoned it, as recorded in the lock), waits `--lock-release-delay`
//!   and releases the lock;
//! - **every `--period`** (default 1 h; the first tick comes after a random delay between half
//!   and one and a half periods — `delaytick`): if the sentinel `/var/run/reboot-required`
//!   exists, it takes the lock unless it holds it already — one annotation
//!   `weave.works/kured-node-lock` on the DaemonSet, written with optimistic concurrency
//!   (`--concurrency` > 1 turns it into a list of up to that many holders); a node that finds
//!   the lock taken tries again at its next tick;
//! - holding the lock, it **drains** like `kubectl drain` with kured's helper settings
//!   (`Force`, `DeleteEmptyDirData`, `IgnoreAllDaemonSets`, the pods' own grace periods,
//!   `--drain-timeout` default 0 = no timeout): cordon, evict every pod in parallel, a 429
//!   (a PodDisruptionBudget saying no) is retried every 5 s, then wait for each pod to be gone.
//!   There is no look-ahead at the budgets before taking the lock, and the lock is **held while
//!   the drain waits** on a budget. A failed drain releases the lock and uncordons;
//! - then it **reboots** the host (`systemctl reboot` through the host's namespaces); the new
//!   boot's daemon releases the lock as described above.
//!
//! Not modelled, all off by default in kured: blocking pod selectors and Prometheus alerts,
//! time windows (default: always), `--prefer-no-schedule-taint`, notifications, drain and reboot
//! delays, `--force-reboot`, `--annotate-nodes`. kured does not upgrade packages: before the
//! run, every host gets its pending updates installed at once, as unattended-upgrades would have
//! done ([`unattended_upgrade`]); that leaves the sentinel kured looks for.
//!
//! **Time scale.** The whole simulation runs at 1 simulated second per real minute (a reboot of
//! 1.5 s stands for 90 s), and every kured duration is scaled the same way: `--period` 1 h →
//! 60 s, the start-up tick 1 min → 1 s, kubectl's 5 s eviction retry → 83 ms, its 1 s
//! deletion poll and kured's 1 s conflict back-off → 17 ms. rota's own code runs unscaled
//! (its intervals are real milliseconds), which favours kured in the comparison.

use std::hash::{Hash, Hasher};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use futures::future::join_all;
use jiff::Timestamp;
use k8s_openapi::api::apps::v1::DaemonSet;
use k8s_openapi::api::core::v1::{Node, Pod};
use k8s_openapi::api::policy::v1::Eviction;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{DeleteOptions, ObjectMeta};
use kube::api::{ListParams, Patch, PatchParams, PostParams};
use kube::{Api, Client};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use rota_agent::host::{Host, RebootMethod};
use rota_agent::packages::UpgradeScope;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use super::process::{HostTokenLog, Process, ProcessHost};
use super::progress::NodeState;
use super::{Error, Result};
use crate::apiserver::{GroupResource, ResourceKey, Store, meta};
use crate::cluster::SimHost;

/// kured's DaemonSet namespace (`--ds-namespace`).
pub const KURED_NAMESPACE: &str = "kube-system";
/// kured's DaemonSet (`--ds-name`).
pub const KURED_NAME: &str = "kured";
/// The lock annotation on the DaemonSet (`--lock-annotation`).
pub const LOCK_ANNOTATION: &str = "weave.works/kured-node-lock";
/// The sentinel file (`--reboot-sentinel`).
pub const SENTINEL: &str = "/var/run/reboot-required";

/// A real duration at the simulation's scale (1 real minute = 1 simulated second).
const fn scaled_ms(real_ms: u64) -> Duration {
    Duration::from_millis(real_ms / 60)
}

/// kured's flags, at the simulation's time scale.
#[derive(Clone, Debug)]
pub struct KuredOptions {
    /// `--period`: how often each node checks its sentinel (kured: 1 h).
    pub period: Duration,
    /// `--concurrency`: nodes rebooting at once (kured: 1).
    pub concurrency: usize,
    /// `--drain-timeout` (kured: 0, no timeout: `None`).
    pub drain_timeout: Option<Duration>,
    /// `--lock-ttl` (kured: 0, the lock never expires: `None`).
    pub lock_ttl: Option<Duration>,
    /// `--lock-release-delay` (kured: 0).
    pub lock_release_delay: Duration,
    /// The start-up tick (kured: 1 min).
    pub startup_tick: Duration,
    /// kubectl drain's wait before retrying an eviction a budget refused (5 s).
    pub eviction_retry: Duration,
    /// kubectl drain's poll for an evicted pod to be gone (1 s).
    pub delete_poll: Duration,
    /// kured's back-off after a conflicting lock write (1 s), also used before retrying a
    /// failed read of the DaemonSet (kured: 5 s).
    pub conflict_backoff: Duration,
    /// Seeds the jitter of each daemon's ticks.
    pub seed: u64,
}

impl Default for KuredOptions {
    fn default() -> Self {
        KuredOptions {
            period: scaled_ms(3_600_000),
            concurrency: 1,
            drain_timeout: None,
            lock_ttl: None,
            lock_release_delay: Duration::ZERO,
            startup_tick: scaled_ms(60_000),
            eviction_retry: scaled_ms(5_000),
            delete_poll: scaled_ms(1_000),
            conflict_backoff: scaled_ms(1_000),
            seed: 1,
        }
    }
}

/// Installs every pending update on `host` at once, as unattended-upgrades does on its own
/// timer: the kernel update leaves the reboot sentinel behind.
pub fn unattended_upgrade(host: &SimHost) -> Result<()> {
    let packages = host.packages()?;
    packages.upgrade(&UpgradeScope::All.into())?;
    Ok(())
}

/// One holder in the lock annotation (kured's `LockAnnotationValue`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
struct LockValue {
    #[serde(rename = "nodeID")]
    node_id: String,
    #[serde(default)]
    metadata: NodeMeta,
    created: Timestamp,
    /// Nanoseconds, as Go encodes a `time.Duration`.
    #[serde(rename = "TTL", default)]
    ttl: i64,
}

/// What kured remembers across the reboot (`NodeMeta`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
struct NodeMeta {
    unschedulable: bool,
}

/// The lock with `--concurrency` > 1 (`multiLockAnnotationValue`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
struct MultiLock {
    #[serde(rename = "maxOwners")]
    max_owners: usize,
    #[serde(rename = "locks", default)]
    locks: Vec<LockValue>,
}

impl LockValue {
    fn expired(&self, configured: Option<Duration>, now: Timestamp) -> bool {
        // A lock that recorded no TTL is judged by the configured one (`effectiveTTL`).
        let ttl = if self.ttl > 0 {
            Some(Duration::from_nanos(u64::try_from(self.ttl).unwrap_or(0)))
        } else {
            configured
        };
        match ttl {
            Some(ttl) if !ttl.is_zero() => {
                let age = now.duration_since(self.created);
                age.as_secs_f64() >= ttl.as_secs_f64()
            }
            _ => false,
        }
    }
}

/// The live holders in a lock annotation.
fn holders(
    annotation: Option<&str>,
    multi: bool,
    ttl: Option<Duration>,
    now: Timestamp,
) -> Vec<LockValue> {
    let Some(text) = annotation else {
        return Vec::new();
    };
    let all = if multi {
        serde_json::from_str::<MultiLock>(text)
            .map(|m| m.locks)
            .unwrap_or_default()
    } else {
        serde_json::from_str::<LockValue>(text)
            .map(|l| vec![l])
            .unwrap_or_default()
    };
    all.into_iter().filter(|l| !l.expired(ttl, now)).collect()
}

/// The lock after `node` tried to take it: `Some(new annotation)` when it may, `None` when it is
/// full. `max_owners` is the concurrency.
fn acquire_value(
    annotation: Option<&str>,
    max_owners: usize,
    node: &str,
    unschedulable: bool,
    ttl: Option<Duration>,
    now: Timestamp,
) -> Option<String> {
    let value = LockValue {
        node_id: node.to_string(),
        metadata: NodeMeta { unschedulable },
        created: now,
        ttl: ttl.map_or(0, |t| i64::try_from(t.as_nanos()).unwrap_or(i64::MAX)),
    };
    if max_owners <= 1 {
        let live = holders(annotation, false, ttl, now);
        if !live.is_empty() {
            return None;
        }
        return serde_json::to_string(&value).ok();
    }
    let current: MultiLock = annotation
        .and_then(|a| serde_json::from_str(a).ok())
        .unwrap_or_default();
    let mut locks = current.locks;
    if locks.len() >= max_owners {
        // Full: only expired holders make room.
        locks.retain(|l| !l.expired(ttl, now));
        if locks.len() >= max_owners {
            return None;
        }
    }
    locks.push(value);
    serde_json::to_string(&MultiLock { max_owners, locks }).ok()
}

/// The annotation after `node` released the lock (`None`: remove it); `Err` when it did not
/// hold it.
fn release_value(
    annotation: Option<&str>,
    multi: bool,
    node: &str,
) -> std::result::Result<Option<String>, String> {
    let Some(text) = annotation else {
        return Err("lock not held".into());
    };
    if !multi {
        let value: LockValue = serde_json::from_str(text).map_err(|e| e.to_string())?;
        if value.node_id != node {
            return Err(format!("not lock holder: {}", value.node_id));
        }
        return Ok(None);
    }
    let mut value: MultiLock = serde_json::from_str(text).map_err(|e| e.to_string())?;
    let before = value.locks.len();
    value.locks.retain(|l| l.node_id != node);
    if value.locks.len() == before {
        return Err("lock not held".into());
    }
    serde_json::to_string(&value)
        .map(Some)
        .map_err(|e| e.to_string())
}

/// What the kured daemons share.
#[derive(Debug)]
pub struct KuredSetup {
    store: Store,
    api_url: String,
    options: KuredOptions,
}

impl KuredSetup {
    /// kured against the API server at `api_url` (whose store is `store`).
    pub(crate) fn new(store: Store, api_url: String, options: KuredOptions) -> KuredSetup {
        KuredSetup {
            store,
            api_url,
            options,
        }
    }

    pub(crate) fn store(&self) -> &Store {
        &self.store
    }

    /// Adjusts kured's DaemonSet before it is created (nothing to add: the lock annotation
    /// appears when a node first takes it).
    pub(crate) fn prepare(&self, ds: &mut Value) {
        ds["metadata"]["annotations"] = json!({});
    }

    fn lock_annotation(&self) -> Option<String> {
        let key = ResourceKey::new(
            GroupResource::new("apps", "daemonsets"),
            Some(KURED_NAMESPACE),
            KURED_NAME,
        );
        let ds = self.store.get(&key).ok()?;
        ds.pointer("/metadata/annotations")
            .and_then(|a| a.get(LOCK_ANNOTATION))
            .and_then(Value::as_str)
            .map(str::to_string)
    }

    fn live_holders(&self) -> Vec<LockValue> {
        holders(
            self.lock_annotation().as_deref(),
            self.options.concurrency > 1,
            self.options.lock_ttl,
            self.store.now(),
        )
    }

    /// Whether `node` holds the lock now.
    pub(crate) fn holds_lock(&self, node: &str) -> bool {
        self.live_holders().iter().any(|l| l.node_id == node)
    }

    /// What keeps waiting nodes waiting: the lock's holders.
    pub(crate) fn blockers(&self) -> Vec<String> {
        let now = self.store.now();
        let holders = self.live_holders();
        if holders.is_empty() {
            return vec![format!(
                "lock free; each node checks once per period ({:.0} s)",
                self.options.period.as_secs_f64()
            )];
        }
        vec![format!(
            "lock ({}/{}) held by {}",
            holders.len(),
            self.options.concurrency.max(1),
            holders
                .iter()
                .map(|h| format!(
                    "{} for {:.1} s",
                    h.node_id,
                    now.duration_since(h.created).as_secs_f64()
                ))
                .collect::<Vec<_>>()
                .join(", ")
        )]
    }

    /// Starts the kured daemon of `node` on `host`'s current boot.
    pub(crate) fn start(self: &Arc<Self>, node: &str, host: &SimHost) -> Result<Process> {
        let alive = Arc::new(AtomicBool::new(true));
        let boot = host.boot_id()?;
        let host = ProcessHost::new(host.clone(), alive.clone(), None, HostTokenLog::default())?;
        let setup = self.clone();
        let node = node.to_string();
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        (self.options.seed, &node, &boot).hash(&mut hasher);
        let seed = hasher.finish();
        Process::spawn(&format!("kured-{node}"), move || async move {
            let _alive = super::nodes::AliveGuard(alive);
            let daemon = match Daemon::new(&setup, node.clone(), host, seed) {
                Ok(daemon) => daemon,
                Err(e) => {
                    tracing::error!(%node, error = %e, "kured cannot start");
                    return;
                }
            };
            if let Err(e) = daemon.run().await {
                tracing::error!(%node, error = %e, "kured stopped");
            }
        })
    }
}

/// What a node shows in the kured run.
pub(crate) fn node_view(
    kured: &KuredSetup,
    node: &Value,
    done: bool,
    ready: bool,
) -> (NodeState, String) {
    if done {
        return (NodeState::Done, String::new());
    }
    let holds = kured.holds_lock(meta::name(node));
    let state = match (holds, ready, meta::node_unschedulable(node)) {
        (_, false, _) => NodeState::Rebooting,
        (true, true, true) => NodeState::Draining,
        (true, true, false) => NodeState::Verifying,
        (false, true, _) => NodeState::Queued,
    };
    let detail = if holds { "holds the lock" } else { "" };
    (state, detail.to_string())
}

/// One node's kured.
struct Daemon {
    node: String,
    host: Arc<ProcessHost>,
    options: KuredOptions,
    client: Client,
    rng: StdRng,
}

impl Daemon {
    fn new(setup: &KuredSetup, node: String, host: ProcessHost, seed: u64) -> Result<Daemon> {
        let url = setup
            .api_url
            .parse()
            .map_err(|e| Error::Invalid(format!("API server URL: {e}")))?;
        let mut config = kube::Config::new(url);
        // client-go does not retry 429s by itself; kubectl's drain helper does, every 5 s.
        config.default_retry = false;
        Ok(Daemon {
            node,
            host: Arc::new(host),
            options: setup.options.clone(),
            client: Client::try_from(config)?,
            rng: StdRng::seed_from_u64(seed),
        })
    }

    fn multi(&self) -> bool {
        self.options.concurrency > 1
    }

    /// `delaytick`: the first tick after a random delay in `[d/2, 3d/2)`.
    fn first_delay(&mut self, d: Duration) -> Duration {
        d.mul_f64(0.5 + self.rng.random::<f64>())
    }

    async fn run(mut self) -> Result<()> {
        let delay = self.first_delay(self.options.startup_tick);
        tokio::time::sleep(delay).await;
        if let Some(meta) = self.held_lock().await? {
            if !meta.unschedulable {
                self.set_unschedulable(false).await?;
            }
            tokio::time::sleep(self.options.lock_release_delay).await;
            self.release().await?;
        }
        let delay = self.first_delay(self.options.period);
        let mut ticks =
            tokio::time::interval_at(tokio::time::Instant::now() + delay, self.options.period);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticks.tick().await;
            self.check().await?;
        }
    }

    /// One period's check: sentinel, lock, drain, reboot.
    async fn check(&mut self) -> Result<()> {
        if !self.host.exists(Path::new(SENTINEL))? {
            return Ok(());
        }
        let nodes: Api<Node> = Api::all(self.client.clone());
        let node = nodes.get(&self.node).await?;
        let unschedulable = node
            .spec
            .as_ref()
            .and_then(|s| s.unschedulable)
            .unwrap_or(false);
        if self.held_lock().await?.is_none() && !self.acquire(unschedulable).await? {
            return Ok(());
        }
        tracing::info!(node = %self.node, "kured: lock acquired, draining");
        if let Err(e) = self.drain().await {
            tracing::warn!(node = %self.node, error = %e, "kured: drain failed; releasing the lock");
            self.release().await?;
            // A best-effort uncordon, as kured does.
            let _ = self.set_unschedulable(false).await;
            return Ok(());
        }
        tracing::info!(node = %self.node, "kured: rebooting");
        let host = self.host.clone();
        // The request blocks until the host takes this process down.
        tokio::task::spawn_blocking(move || host.reboot(&RebootMethod::Systemctl))
            .await
            .map_err(|e| Error::Invalid(format!("kured: reboot task: {e}")))??;
        // The host stayed up (kured then waits forever, as here).
        std::future::pending::<()>().await;
        Ok(())
    }

    fn daemonsets(&self) -> Api<DaemonSet> {
        Api::namespaced(self.client.clone(), KURED_NAMESPACE)
    }

    /// `GetDaemonSet`: retried until it works (kured gives up after 5 min).
    async fn read_lock(&self) -> Result<DaemonSet> {
        let deadline = tokio::time::Instant::now() + scaled_ms(300_000).max(Duration::from_secs(5));
        loop {
            match self.daemonsets().get(KURED_NAME).await {
                Ok(ds) => return Ok(ds),
                Err(e) if tokio::time::Instant::now() >= deadline => return Err(e.into()),
                Err(_) => tokio::time::sleep(self.options.conflict_backoff).await,
            }
        }
    }

    fn annotation(ds: &DaemonSet) -> Option<&str> {
        ds.metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get(LOCK_ANNOTATION))
            .map(String::as_str)
    }

    /// The metadata this node recorded when it took the lock, if it holds it.
    async fn held_lock(&self) -> Result<Option<NodeMeta>> {
        let ds = self.read_lock().await?;
        let live = holders(
            Self::annotation(&ds),
            self.multi(),
            self.options.lock_ttl,
            Timestamp::now(),
        );
        Ok(live
            .into_iter()
            .find(|l| l.node_id == self.node)
            .map(|l| l.metadata))
    }

    /// Writes the annotation (or removes it) with the resourceVersion read; `false` on conflict.
    async fn write_lock(&self, mut ds: DaemonSet, value: Option<String>) -> Result<bool> {
        let annotations = ds.metadata.annotations.get_or_insert_with(Default::default);
        match value {
            Some(v) => {
                annotations.insert(LOCK_ANNOTATION.into(), v);
            }
            None => {
                annotations.remove(LOCK_ANNOTATION);
            }
        }
        match self
            .daemonsets()
            .replace(KURED_NAME, &PostParams::default(), &ds)
            .await
        {
            Ok(_) => Ok(true),
            Err(kube::Error::Api(status)) if status.code == 409 => {
                tokio::time::sleep(self.options.conflict_backoff).await;
                Ok(false)
            }
            Err(e) => Err(e.into()),
        }
    }

    async fn acquire(&self, unschedulable: bool) -> Result<bool> {
        loop {
            let ds = self.read_lock().await?;
            let Some(value) = acquire_value(
                Self::annotation(&ds),
                self.options.concurrency,
                &self.node,
                unschedulable,
                self.options.lock_ttl,
                Timestamp::now(),
            ) else {
                return Ok(false);
            };
            if self.write_lock(ds, Some(value)).await? {
                return Ok(true);
            }
        }
    }

    async fn release(&self) -> Result<()> {
        loop {
            let ds = self.read_lock().await?;
            let value = release_value(Self::annotation(&ds), self.multi(), &self.node)
                .map_err(|e| Error::Invalid(format!("kured: releasing the lock: {e}")))?;
            if self.write_lock(ds, value).await? {
                tracing::info!(node = %self.node, "kured: lock released");
                return Ok(());
            }
        }
    }

    /// kubectl's cordon/uncordon.
    async fn set_unschedulable(&self, unschedulable: bool) -> Result<()> {
        let nodes: Api<Node> = Api::all(self.client.clone());
        let value = if unschedulable {
            json!(true)
        } else {
            Value::Null
        };
        nodes
            .patch(
                &self.node,
                &PatchParams::default(),
                &Patch::Strategic(json!({"spec": {"unschedulable": value}})),
            )
            .await?;
        Ok(())
    }

    /// `kubectl drain` with kured's settings, bounded by `--drain-timeout` when set.
    async fn drain(&self) -> Result<()> {
        self.set_unschedulable(true).await?;
        let pods: Api<Pod> = Api::all(self.client.clone());
        let list = pods
            .list(&ListParams::default().fields(&format!("spec.nodeName={}", self.node)))
            .await?;
        let targets: Vec<Pod> = list.items.into_iter().filter(evictable).collect();
        let evictions = join_all(targets.iter().map(|pod| self.evict_and_wait(pod)));
        let results = match self.options.drain_timeout {
            Some(timeout) => tokio::time::timeout(timeout, evictions)
                .await
                .map_err(|_| Error::Invalid(format!("drain did not finish within {timeout:?}")))?,
            None => evictions.await,
        };
        results.into_iter().collect()
    }

    /// One pod: evict (429 → retry after 5 s, 404 → gone), then wait until it is gone or
    /// replaced.
    async fn evict_and_wait(&self, pod: &Pod) -> Result<()> {
        let namespace = pod.metadata.namespace.clone().unwrap_or_default();
        let name = pod.metadata.name.clone().unwrap_or_default();
        let uid = pod.metadata.uid.clone();
        let api: Api<Pod> = Api::namespaced(self.client.clone(), &namespace);
        let body = Eviction {
            metadata: ObjectMeta {
                name: Some(name.clone()),
                namespace: Some(namespace.clone()),
                ..ObjectMeta::default()
            },
            delete_options: Some(DeleteOptions::default()),
        };
        loop {
            match api
                .create_subresource::<_, Value>("eviction", &name, &PostParams::default(), &body)
                .await
            {
                Ok(_) => break,
                Err(kube::Error::Api(status)) if status.code == 404 => return Ok(()),
                Err(kube::Error::Api(status)) if status.code == 429 => {
                    tokio::time::sleep(self.options.eviction_retry).await;
                }
                Err(e) => return Err(e.into()),
            }
        }
        loop {
            match api.get_opt(&name).await? {
                None => return Ok(()),
                Some(p) if p.metadata.uid != uid => return Ok(()),
                Some(_) => tokio::time::sleep(self.options.delete_poll).await,
            }
        }
    }
}

/// kubectl drain's filters with `--ignore-daemonsets --force --delete-emptydir-data`:
/// everything but DaemonSet and mirror pods is evicted.
fn evictable(pod: &Pod) -> bool {
    let daemon = pod.metadata.owner_references.as_ref().is_some_and(|o| {
        o.iter()
            .any(|r| r.controller == Some(true) && r.kind == "DaemonSet")
    });
    let mirror = pod
        .metadata
        .annotations
        .as_ref()
        .is_some_and(|a| a.contains_key("kubernetes.io/config.mirror"));
    !daemon && !mirror
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: i64) -> Timestamp {
        Timestamp::from_second(1_700_000_000 + s).unwrap()
    }

    #[test]
    fn the_single_lock_has_one_holder() {
        let taken = acquire_value(None, 1, "a", false, None, t(0)).unwrap();
        assert_eq!(holders(Some(&taken), false, None, t(100)).len(), 1);
        assert_eq!(acquire_value(Some(&taken), 1, "b", false, None, t(1)), None);
        // With a TTL the lock expires, and someone else may take it.
        let ttl = Some(Duration::from_secs(10));
        assert!(acquire_value(Some(&taken), 1, "b", false, ttl, t(11)).is_some());
        assert_eq!(release_value(Some(&taken), false, "a"), Ok(None));
        assert!(release_value(Some(&taken), false, "b").is_err());
        assert!(release_value(None, false, "a").is_err());
    }

    #[test]
    fn the_multi_lock_takes_up_to_concurrency_holders() {
        let one = acquire_value(None, 2, "a", true, None, t(0)).unwrap();
        let two = acquire_value(Some(&one), 2, "b", false, None, t(1)).unwrap();
        assert_eq!(acquire_value(Some(&two), 2, "c", false, None, t(2)), None);
        let live = holders(Some(&two), true, None, t(3));
        assert_eq!(live.len(), 2);
        assert!(
            live[0].metadata.unschedulable,
            "the node was cordoned before kured"
        );
        let after = release_value(Some(&two), true, "a").unwrap().unwrap();
        assert_eq!(holders(Some(&after), true, None, t(4)).len(), 1);
        assert!(acquire_value(Some(&after), 2, "c", false, None, t(5)).is_some());
    }

    #[test]
    fn the_lock_reads_like_kureds() {
        let text = r#"{"nodeID":"worker-1","metadata":{"unschedulable":false},"created":"2024-05-01T10:00:00Z","TTL":0}"#;
        let live = holders(Some(text), false, None, t(0));
        assert_eq!(live[0].node_id, "worker-1");
    }

    #[test]
    fn drain_skips_daemon_and_mirror_pods() {
        let mut pod = Pod::default();
        assert!(evictable(&pod));
        pod.metadata.owner_references = Some(vec![
            k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference {
                kind: "DaemonSet".into(),
                controller: Some(true),
                ..Default::default()
            },
        ]);
        assert!(!evictable(&pod));
        let mut mirror = Pod::default();
        mirror.metadata.annotations =
            Some([("kubernetes.io/config.mirror".to_string(), "x".to_string())].into());
        assert!(!evictable(&mirror));
    }

    #[test]
    fn the_defaults_are_kureds_at_the_simulation_scale() {
        let o = KuredOptions::default();
        assert_eq!(o.period, Duration::from_secs(60));
        assert_eq!(o.startup_tick, Duration::from_secs(1));
        assert_eq!(o.eviction_retry, Duration::from_millis(83));
        assert_eq!(o.concurrency, 1);
        assert!(o.drain_timeout.is_none());
    }
}
