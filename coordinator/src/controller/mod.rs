//! The controller: from Kubernetes state to admitted, drained, verified and released nodes.
//!
//! [`Coordinator::run`] follows the cluster with a [`ClusterCache`] (on every replica, so that a
//! standby is warm) and, while this replica leads, runs one *term*: it loads the slot ledger from
//! the API ([`KubeLedgerStore`], [`SlotService::load`]), opens the agents' gate to it, and runs
//! the loop of one actor that owns every write:
//!
//! 1. it wakes on cache changes, on the slot service's transitions (agents' requests, completions
//!    and releases), on drain completions, on a change of the policies' Prometheus alerts
//!    ([`crate::blockers::AlertWatch`], polled by its own task for the term) and on the one timer
//!    the last pass asked for (a window opening, a back-off or a verification ending, a lease
//!    expiring) — never on a poll of its own;
//! 2. each pass is decided purely ([`rota_core::controller::decide::decide`]: snapshot → [`rota_core::scheduler::schedule`],
//!    verifications, annotations, statuses) and then performed: admissions are persisted first,
//!    then the node is cordoned (marking the cordon as rota's) and drained in a task; a finished
//!    drain grants the slot, a stuck one gives it back with a back-off and the reason (which
//!    PDB); an agent's completion is verified ([`rota_core::controller::verify`]) and the slot released or failed;
//! 3. failures count towards the pool's circuit breaker; statuses are written only when they
//!    change.
//!
//! Leadership gates everything: losing it ends the term at once (running drains are dropped,
//! the agents' gate closes, and the [`WriteGate`] refuses every further write, including those
//! an agent's call in flight would cause). A conflict on the fencing counter means another
//! coordinator issued tokens: the term ends and the next one re-reads the ledger. A restarted
//! term resumes where the ledger says: draining slots drain again (the cordon is idempotent),
//! granted ones wait for their agent, verifying ones are verified again.

pub mod cordon;
mod term;

use crate::slot_service::SlotService;

use std::sync::Arc;
use std::time::Duration;

use jiff::SignedDuration;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::blockers::AlertSettings;
use crate::core_gate::CoreGate;
use crate::events::EventSink;
use crate::fleetlock;
use crate::http::Readiness;
use crate::kube_client::Clients;
use crate::leader::{Leadership, NotLeading};
use crate::metrics::Metrics;
use crate::notify::Notifier;
use crate::records::RecordSettings;
use crate::store::{CacheConfig, ClusterCache, KubeLedgerStore, WriteGate};
use rota_core::clock::{Clock, SystemClock};

/// Errors of the controller.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// This replica does not lead (any more).
    #[error(transparent)]
    NotLeading(#[from] NotLeading),
    /// The node does not exist.
    #[error("node {0} not found")]
    NodeNotFound(String),
    /// Other writers kept changing an object.
    #[error("{0}")]
    Conflict(String),
    /// The API server refused or failed a request.
    #[error("Kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    /// The slot ledger refused or could not persist a change.
    #[error(transparent)]
    Slots(#[from] rota_core::slots::Error),
    /// The drain engine failed.
    #[error(transparent)]
    Drain(#[from] crate::drain::Error),
    /// The cluster cache stopped following the cluster.
    #[error(transparent)]
    Cache(#[from] crate::store::Error),
    /// The FleetLock hosts' locks could not be read or written.
    #[error(transparent)]
    HostLocks(#[from] fleetlock::hosts::Error),
}

/// Result alias of the controller.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Settings of the controller.
#[derive(Clone, Debug)]
pub struct Settings {
    /// Namespace of the coordinator (where the fencing counter lives).
    pub namespace: String,
    /// Lease time-to-live of a slot; the agent renews well within it.
    pub lease_ttl: SignedDuration,
    /// Shortest time between two passes: changes that arrive closer together are handled in one.
    pub pass_interval: Duration,
    /// Longest a PodDisruptionBudget may refuse one pod before a drain gives its slot back
    /// (capped by the policy's drain timeout).
    pub drain_blocked_timeout: Duration,
    /// Longest wait between passes when nothing happens (a safety net against clock jumps; no
    /// API request is made for it).
    pub max_idle: Duration,
    /// The cluster cache.
    pub cache: CacheConfig,
    /// How the policies' Prometheus blockers are polled.
    pub alerts: AlertSettings,
    /// Retention of the maintenance records.
    pub records: RecordSettings,
}

impl Settings {
    /// Defaults for a coordinator running in `namespace`.
    pub fn new(namespace: impl Into<String>) -> Self {
        Settings {
            namespace: namespace.into(),
            lease_ttl: SignedDuration::from_secs(90),
            pass_interval: Duration::from_millis(200),
            drain_blocked_timeout: Duration::from_secs(120),
            max_idle: Duration::from_secs(600),
            cache: CacheConfig::default(),
            alerts: AlertSettings::default(),
            records: RecordSettings::default(),
        }
    }
}

/// Everything the controller runs with.
pub struct Coordinator {
    clients: Clients,
    settings: Settings,
    events: EventSink,
    metrics: Metrics,
    leadership: Leadership,
    agents: CoreGate,
    fleetlock: fleetlock::Gate,
    readiness: Option<Readiness>,
    notifier: Notifier,
    clock: Arc<dyn Clock>,
}

impl std::fmt::Debug for Coordinator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Coordinator")
            .field("settings", &self.settings)
            .finish_non_exhaustive()
    }
}

/// How a term ended.
#[derive(Debug)]
enum TermEnd {
    /// Shutdown was requested.
    Shutdown,
    /// Leadership was lost.
    LostLeadership,
    /// Something forces a fresh start (the ledger could not be loaded, another writer touched
    /// the fencing counter): re-read everything.
    Restart(Error),
}

impl Coordinator {
    /// A controller that acts while `leadership` holds, serving agents through `agents`.
    pub fn new(
        clients: Clients,
        settings: Settings,
        events: EventSink,
        metrics: Metrics,
        leadership: Leadership,
        agents: CoreGate,
    ) -> Self {
        Coordinator {
            clients,
            settings,
            events,
            metrics,
            leadership,
            agents,
            fleetlock: fleetlock::Gate::default(),
            readiness: None,
            notifier: Notifier::disabled(),
            clock: Arc::new(SystemClock),
        }
    }

    /// Reports "caches synced" to `/readyz`.
    pub fn with_readiness(mut self, readiness: Readiness) -> Self {
        self.readiness = Some(readiness);
        self
    }

    /// Tells a chat webhook about rollouts starting and finishing, failed nodes and paused
    /// pools.
    pub fn with_notifier(mut self, notifier: Notifier) -> Self {
        self.notifier = notifier;
        self
    }

    /// Answers FleetLock clients through `gate` while this replica leads.
    pub fn with_fleetlock(mut self, gate: fleetlock::Gate) -> Self {
        self.fleetlock = gate;
        self
    }

    /// Uses another clock for decisions (tests, simulations).
    pub fn with_clock(mut self, clock: Arc<dyn Clock>) -> Self {
        self.clock = clock;
        self
    }

    /// Runs until `shutdown` is cancelled. Returns an error when the cluster cache stops
    /// following the cluster (the process must then exit loudly).
    pub async fn run(self, shutdown: CancellationToken) -> Result<()> {
        let (cache, mut cache_tasks) =
            ClusterCache::start(self.clients.default.clone(), self.settings.cache.clone());
        tokio::select! {
            () = cache.synced() => {}
            () = shutdown.cancelled() => return Ok(()),
            error = cache_tasks.stopped() => return Err(error.into()),
        }
        info!("cluster cache synced");
        if let Some(readiness) = &self.readiness {
            readiness.set_synced(true);
        }
        let result = self
            .lead_when_elected(&cache, &mut cache_tasks, &shutdown)
            .await;
        if let Some(readiness) = &self.readiness {
            readiness.set_synced(false);
        }
        result
    }

    async fn lead_when_elected(
        &self,
        cache: &ClusterCache,
        cache_tasks: &mut crate::store::CacheTasks,
        shutdown: &CancellationToken,
    ) -> Result<()> {
        let mut retry = Duration::from_millis(500);
        loop {
            tokio::select! {
                term = self.leadership.acquired() => {
                    if term.is_none() {
                        info!("leader election stopped; the controller stops");
                        return Ok(());
                    }
                }
                () = shutdown.cancelled() => return Ok(()),
                error = cache_tasks.stopped() => return Err(error.into()),
            }
            info!("leading: starting a term");
            let ended = tokio::select! {
                ended = self.term(cache, shutdown) => ended,
                error = cache_tasks.stopped() => return Err(error.into()),
            };
            match ended {
                TermEnd::Shutdown => return Ok(()),
                TermEnd::LostLeadership => {
                    warn!("leadership lost: stopped acting");
                    retry = Duration::from_millis(500);
                }
                TermEnd::Restart(error) => {
                    warn!(%error, retry_in = ?retry, "term ended; starting over from the API's state");
                    tokio::select! {
                        () = tokio::time::sleep(retry) => {}
                        () = shutdown.cancelled() => return Ok(()),
                    }
                    retry = (retry * 2).min(Duration::from_secs(30));
                }
            }
        }
    }

    /// One term: load the ledger, serve the agents, run the loop; everything is dropped when
    /// the term ends.
    async fn term(&self, cache: &ClusterCache, shutdown: &CancellationToken) -> TermEnd {
        let gate = WriteGate::new(self.leadership.clone());
        let _close = CloseOnDrop(gate.clone());
        let store = KubeLedgerStore::new(
            self.clients.default.clone(),
            &self.settings.namespace,
            gate.clone(),
        );
        let config = crate::slot_service::SlotServiceConfig {
            lease_ttl: self.settings.lease_ttl,
        };
        let loaded = tokio::select! {
            loaded = SlotService::load(store, config, self.clock.clone()) => loaded,
            () = self.leadership.lost() => return TermEnd::LostLeadership,
            () = shutdown.cancelled() => return TermEnd::Shutdown,
        };
        let (service, slot_events) = match loaded {
            Ok(loaded) => loaded,
            Err(error) => return TermEnd::Restart(error.into()),
        };
        let service = Arc::new(service);
        let hosts = match fleetlock::HostLocks::load(
            self.clients.default.clone(),
            &self.settings.namespace,
            gate.clone(),
            self.clock.clone(),
        )
        .await
        {
            Ok(hosts) => Arc::new(hosts),
            Err(error) => return TermEnd::Restart(error.into()),
        };
        let _installed = self.agents.install(service.clone());
        let _fleetlock = self.fleetlock.install(Arc::new(fleetlock::Backend::new(
            service.clone(),
            cache.clone(),
            hosts.clone(),
            self.clock.clone(),
        )));
        let mut term = term::Term::new(self, cache, gate, service, hosts);
        term.run(slot_events, shutdown).await
    }
}

/// Closes a [`WriteGate`] when the term that opened it ends, however it ends.
struct CloseOnDrop(WriteGate);

impl Drop for CloseOnDrop {
    fn drop(&mut self) {
        self.0.close();
    }
}
