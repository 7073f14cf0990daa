//! rota's independent safety monitor.
//!
//! It watches Nodes, Pods, PodDisruptionBudgets and the workload controllers (Deployments,
//! ReplicaSets, StatefulSets, ReplicationControllers) through the API server like any client,
//! and judges from the objects alone:
//! - every moment a budget's healthy pods fell below its desired count **because of a
//!   disruption** (an eviction, a deletion, the pod's node going down or rebooting with the pod
//!   bound, a taint-manager deletion) — a pod that crashes on a healthy node is recorded apart;
//! - the most nodes unavailable (NotReady, cordoned or unreachable) at once, per pool and
//!   overall, and the most control-plane nodes;
//! - pods lost to a node outage or reboot without an eviction, and the reboots (boot ID
//!   changes) per node.
//!
//! It shares no code with what it judges: not rota's scheduler or budget code, not the
//! emulator's disruption controller, eviction handler or audit. The budget maths is written
//! from the Kubernetes documentation of the disruption controller ([`model`]); the judgement is
//! a pure state machine fed the watch changes ([`tracker`]); this module only runs the watches.
//! So it runs unchanged against the emulated API server and a real kube-apiserver.

pub mod facts;
pub mod model;
pub mod tracker;
pub mod verdict;

use std::sync::Arc;
use std::time::Duration;

use futures::stream::{BoxStream, StreamExt};
use k8s_openapi::api::apps::v1::{Deployment, ReplicaSet, StatefulSet};
use k8s_openapi::api::core::v1::{Node, Pod, ReplicationController};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use kube::runtime::WatchStreamExt;
use kube::runtime::watcher::{self, Event};
use kube::{Api, Client};
use parking_lot::Mutex;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

pub use model::Cause;
pub use tracker::DEFAULT_POOL;
use tracker::{Change, Kind, Object, Pool, Tracker};
pub use verdict::{
    BudgetNow, LostPod, MaxUnavailable, Peak, TimelineEntry, Unavailability, Verdict, Violation,
};

/// Errors of the monitor.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The initial lists did not all arrive in time.
    #[error("the monitor's initial lists did not arrive within {0:?}")]
    InitialSync(Duration),
    /// A condition on the verdict did not hold in time.
    #[error("timed out after {timeout:?} waiting for {what}; verdict:\n{verdict}")]
    Timeout {
        /// What was awaited.
        what: String,
        /// How long.
        timeout: Duration,
        /// The verdict at the deadline, rendered.
        verdict: String,
    },
    /// The monitor's task ended.
    #[error("the monitor stopped")]
    Stopped,
}

/// The result type of the monitor.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// A named pool of nodes, counted on its own.
#[derive(Clone, Debug)]
pub struct PoolConfig {
    /// Its name.
    pub name: String,
    /// The nodes it selects; the first matching pool wins, nodes matching none go to
    /// [`DEFAULT_POOL`].
    pub selector: LabelSelector,
}

/// What the monitor is told.
#[derive(Clone, Debug)]
pub struct MonitorConfig {
    /// Node pools.
    pub pools: Vec<PoolConfig>,
    /// How long [`Monitor::start`] waits for the initial lists.
    pub initial_sync_timeout: Duration,
}

impl Default for MonitorConfig {
    fn default() -> Self {
        MonitorConfig {
            pools: Vec::new(),
            initial_sync_timeout: Duration::from_secs(60),
        }
    }
}

/// A running monitor. Dropping it stops the watches.
pub struct Monitor {
    tracker: Arc<Mutex<Tracker>>,
    changes: watch::Receiver<u64>,
    cancel: CancellationToken,
    task: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for Monitor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Monitor").finish_non_exhaustive()
    }
}

type Changes = BoxStream<'static, (Kind, Result<Event<Object>, watcher::Error>)>;

fn watch_kind<K>(client: &Client, kind: Kind, to_object: fn(&K) -> Object) -> Changes
where
    K: kube::Resource<DynamicType = ()>
        + Clone
        + serde::de::DeserializeOwned
        + std::fmt::Debug
        + Send
        + 'static,
{
    let api: Api<K> = Api::all(client.clone());
    watcher::watcher(api, watcher::Config::default())
        .default_backoff()
        .map(move |event| {
            (
                kind,
                event.map(|e| match e {
                    Event::Apply(o) => Event::Apply(to_object(&o)),
                    Event::Delete(o) => Event::Delete(to_object(&o)),
                    Event::InitApply(o) => Event::InitApply(to_object(&o)),
                    Event::Init => Event::Init,
                    Event::InitDone => Event::InitDone,
                }),
            )
        })
        .boxed()
}

impl Monitor {
    /// Starts the watches and returns once every initial list is in.
    pub async fn start(client: Client, config: MonitorConfig) -> Result<Monitor> {
        let pools = config
            .pools
            .iter()
            .map(|p| Pool {
                name: p.name.clone(),
                selector: facts::selector(&p.selector),
            })
            .collect();
        let tracker = Arc::new(Mutex::new(Tracker::new(pools)));
        let (tx, changes) = watch::channel(0u64);
        let cancel = CancellationToken::new();
        let streams: Vec<Changes> = vec![
            watch_kind::<Pod>(&client, Kind::Pods, |p| Object::Pod(facts::pod(p))),
            watch_kind::<Node>(&client, Kind::Nodes, |n| Object::Node(facts::node(n))),
            watch_kind::<PodDisruptionBudget>(&client, Kind::Budgets, |b| {
                Object::Budget(facts::budget(b))
            }),
            watch_kind::<Deployment>(&client, Kind::Deployments, |d| {
                Object::Controller(facts::deployment(d))
            }),
            watch_kind::<ReplicaSet>(&client, Kind::ReplicaSets, |r| {
                Object::Controller(facts::replica_set(r))
            }),
            watch_kind::<StatefulSet>(&client, Kind::StatefulSets, |s| {
                Object::Controller(facts::stateful_set(s))
            }),
            watch_kind::<ReplicationController>(&client, Kind::ReplicationControllers, |r| {
                Object::Controller(facts::replication_controller(r))
            }),
        ];
        let task = tokio::spawn(
            run(
                futures::stream::select_all(streams),
                tracker.clone(),
                tx,
                cancel.clone(),
            )
            .instrument(tracing::info_span!("safety-monitor")),
        );
        let monitor = Monitor {
            tracker,
            changes,
            cancel,
            task: Some(task),
        };
        let mut ready = monitor.changes.clone();
        let tracker = monitor.tracker.clone();
        match tokio::time::timeout(
            config.initial_sync_timeout,
            ready.wait_for(|_| tracker.lock().ready()),
        )
        .await
        {
            Ok(Ok(_)) => Ok(monitor),
            Ok(Err(_)) => Err(Error::Stopped),
            Err(_) => Err(Error::InitialSync(config.initial_sync_timeout)),
        }
    }

    /// The verdict so far.
    pub fn verdict(&self) -> Verdict {
        self.tracker.lock().verdict()
    }

    /// Waits until `check` finds what it wants in the verdict (re-checked after every change
    /// the monitor takes in); fails at `timeout` with the verdict then.
    pub async fn wait_for<T>(
        &self,
        what: &str,
        timeout: Duration,
        mut check: impl FnMut(&Verdict) -> Option<T>,
    ) -> Result<T> {
        let mut changes = self.changes.clone();
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let verdict = self.verdict();
            if let Some(found) = check(&verdict) {
                return Ok(found);
            }
            match tokio::time::timeout_at(deadline, changes.changed()).await {
                Ok(Ok(())) => {}
                Ok(Err(_)) => return Err(Error::Stopped),
                Err(_) => {
                    return Err(Error::Timeout {
                        what: what.to_string(),
                        timeout,
                        verdict: verdict.render(),
                    });
                }
            }
        }
    }

    /// Stops the watches and returns the final verdict.
    pub async fn stop(mut self) -> Verdict {
        self.cancel.cancel();
        if let Some(task) = self.task.take()
            && let Err(e) = task.await
        {
            tracing::error!(error = %e, "the safety monitor's task failed");
        }
        self.verdict()
    }
}

impl Drop for Monitor {
    fn drop(&mut self) {
        self.cancel.cancel();
    }
}

async fn run(
    mut changes: futures::stream::SelectAll<Changes>,
    tracker: Arc<Mutex<Tracker>>,
    tx: watch::Sender<u64>,
    cancel: CancellationToken,
) {
    // Each kind's (re-)list is buffered from `Init` to `InitDone` and replaces that kind whole.
    let mut listing: std::collections::BTreeMap<Kind, Vec<Object>> = Default::default();
    loop {
        let (kind, event) = tokio::select! {
            () = cancel.cancelled() => return,
            next = changes.next() => match next {
                Some(next) => next,
                None => {
                    tracing::error!("every watch of the safety monitor ended");
                    return;
                }
            },
        };
        let change = match event {
            Ok(Event::Init) => {
                listing.insert(kind, Vec::new());
                None
            }
            Ok(Event::InitApply(object)) => {
                listing.entry(kind).or_default().push(object);
                None
            }
            Ok(Event::InitDone) => Some(Change::Relisted(
                kind,
                listing.remove(&kind).unwrap_or_default(),
            )),
            Ok(Event::Apply(object)) => Some(Change::Applied(object)),
            Ok(Event::Delete(object)) => Some(Change::Deleted(object)),
            Err(e) => {
                tracing::warn!(?kind, error = %e, "a watch of the safety monitor failed; it re-lists");
                Some(Change::WatchError(kind, e.to_string()))
            }
        };
        if let Some(change) = change {
            tracker.lock().apply(change, jiff::Timestamp::now());
            tx.send_modify(|n| *n += 1);
        }
    }
}
