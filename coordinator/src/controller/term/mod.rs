//! One leadership term: the actor that performs what [`rota_core::controller::decide`] decides.
//!
//! - this file: the actor, its loop and passes, slot-service events, policy changes, statuses;
//! - [`drains`]: admissions, the drain tasks, and what follows a drain;
//! - [`requests`]: what humans ask through Node annotations;
//! - [`events`]: the Kubernetes Events of the term, recorded in order by one task;
//! - [`records`]: what each slot transition adds to its MaintenanceRecord (written by
//!   [`crate::records::write_records`], a task of the term).

mod drains;
mod events;
mod records;
mod requests;
mod rollout;

use drains::{DrainDone, Running};
use events::{EventJob, record_events};

use crate::slot_service::{SlotEvent, SlotService};
use rota_core::drain::{DrainProgress, DrainReport, PdbRef, PodProgress};

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use jiff::{SignedDuration, Timestamp};
use k8s_openapi::api::core::v1::Node;
use kube::api::{Patch, PatchParams};
use kube::{Api, ResourceExt};
use serde_json::json;
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, debug, info, info_span, warn};

use super::cordon::{Cordoned, cordon, uncordon_own};
use super::{Coordinator, Error, TermEnd};
use crate::blockers::AlertWatch;
use crate::drain::{DrainControl, Drainer};
use crate::events::{EventSink, Reason};
use crate::fleetlock::HostLocks;
use crate::metrics::{Metrics, Outcome};
use crate::notify::{Notification, PauseCause};
use crate::store::{ClusterCache, KubeLedgerStore, WriteGate};
use rota_core::controller::annotations::{MAINTENANCE_REQUESTED, RELEASE};
use rota_core::controller::decide::{
    self, AdmitAction, Decisions, DrainStart, ManualAction, PoolGauges, ReleaseAction, SlotAction,
};
use rota_core::controller::drained::{AfterDrain, DrainEnd, after_drain};
use rota_core::controller::pools::{PolicyBook, PolicyChange};
use rota_core::controller::snapshot::pool_of;
use rota_core::model::{FencingToken, NodeName, NodePolicy};
use rota_core::policy::{Backoff, DEFAULT_BACKOFF_INITIAL, DEFAULT_BACKOFF_MAX, MaintenancePolicy};
use rota_core::scheduler::Pool;
use rota_core::slots::persist::NodeAnnotations;
use rota_core::slots::{
    self, Holding, LedgerError, NodeEntry, Release, StoreError, Transition, TransitionReason,
};

type Service = SlotService<KubeLedgerStore>;

/// How long after its own write a node's mirror may still show the old value in the cache.
const MIRROR_SETTLE: Duration = Duration::from_secs(5);

/// The actor of one term.
pub(super) struct Term<'a> {
    coordinator: &'a Coordinator,
    cache: &'a ClusterCache,
    gate: WriteGate,
    service: Arc<Service>,
    /// The locks of FleetLock hosts that are not Kubernetes nodes.
    hosts: Arc<HostLocks>,
    nodes: Api<Node>,
    policies: Api<MaintenancePolicy>,
    drainer: Drainer,
    book: PolicyBook,
    drains: JoinSet<DrainDone>,
    running: HashMap<NodeName, Running>,
    /// Consecutive drains of a node that could not finish (for its back-off).
    attempts: HashMap<NodeName, u32>,
    /// Annotation values (or refusals) already explained in an Event.
    noticed: HashMap<(NodeName, &'static str), String>,
    expiry_reported: HashSet<(NodeName, FencingToken)>,
    /// Whether each pool held or queued anything at the last pass (for rollout notifications).
    busy: HashMap<String, bool>,
    events: mpsc::UnboundedSender<EventJob>,
    event_task: tokio::task::JoinHandle<()>,
    records: mpsc::UnboundedSender<crate::records::RecordJob>,
    record_task: tokio::task::JoinHandle<()>,
    /// Who set each node's pending manual request (its field manager), until its admission.
    requesters: HashMap<NodeName, String>,
    /// The pods each slot's drains evicted, and when the last drain ended, until its grant.
    evicted: HashMap<(NodeName, FencingToken), (Vec<String>, Timestamp)>,
    /// The policies' Prometheus alerts, polled for this term.
    alerts: AlertWatch,
    next_wake: Option<Timestamp>,
    /// Nodes whose external etcd was reported in an Event.
    external_etcd_noted: HashSet<NodeName>,
}

impl Drop for Term<'_> {
    fn drop(&mut self) {
        self.event_task.abort();
        self.record_task.abort();
        for running in self.running.values() {
            running.cancel.cancel();
        }
    }
}

impl<'a> Term<'a> {
    pub(super) fn new(
        coordinator: &'a Coordinator,
        cache: &'a ClusterCache,
        gate: WriteGate,
        service: Arc<Service>,
        hosts: Arc<HostLocks>,
    ) -> Self {
        let client = coordinator.clients.default.clone();
        let (events, receiver) = mpsc::unbounded_channel();
        let event_task = tokio::spawn(
            record_events(coordinator.events.clone(), gate.clone(), receiver)
                .instrument(info_span!("events")),
        );
        let (records, receiver) = mpsc::unbounded_channel();
        let record_task = tokio::spawn(
            crate::records::write_records(
                coordinator.clients.default.clone(),
                gate.clone(),
                coordinator.metrics.clone(),
                coordinator.clock.clone(),
                coordinator.settings.records,
                receiver,
            )
            .instrument(info_span!("records")),
        );
        Term {
            coordinator,
            cache,
            gate,
            service,
            hosts,
            nodes: Api::all(client.clone()),
            policies: Api::all(client),
            drainer: Drainer::new(
                &coordinator.clients,
                coordinator.clock.clone(),
                cache.clone(),
            ),
            book: PolicyBook::new(),
            drains: JoinSet::new(),
            running: HashMap::new(),
            attempts: HashMap::new(),
            noticed: HashMap::new(),
            expiry_reported: HashSet::new(),
            busy: HashMap::new(),
            events,
            event_task,
            records,
            record_task,
            requesters: HashMap::new(),
            evicted: HashMap::new(),
            alerts: AlertWatch::spawn(coordinator.settings.alerts.clone()),
            next_wake: None,
            external_etcd_noted: HashSet::new(),
        }
    }

    fn metrics(&self) -> &Metrics {
        &self.coordinator.metrics
    }

    fn now(&self) -> Timestamp {
        self.coordinator.clock.now()
    }

    fn event(&self, job: EventJob) {
        // The event task ends only with the term.
        let _ = self.events.send(job);
    }

    fn node_uid(&self, node: &str) -> Option<String> {
        self.cache.read().node(node).and_then(|n| n.uid())
    }

    fn pool_of(&self, node: &str) -> Option<String> {
        let pools = self.book.pools();
        let cache = self.cache.read();
        cache
            .node(node)
            .and_then(|n| pool_of(n, &pools))
            .map(|p| p.name.clone())
    }

    /// The loop: wait for something to happen, then run a pass.
    pub(super) async fn run(
        &mut self,
        mut slot_events: mpsc::UnboundedReceiver<SlotEvent>,
        shutdown: &CancellationToken,
    ) -> TermEnd {
        let leadership = self.coordinator.leadership.clone();
        let lost = leadership.lost();
        tokio::pin!(lost);
        let mut changes = self.cache.changes();
        let mut alerts = self.alerts.subscribe();
        let interval = self.coordinator.settings.pass_interval;
        let mut dirty = true;
        let mut last_pass: Option<Instant> = None;
        let hosts = self.hosts.clone();
        loop {
            let earliest = last_pass.map_or_else(Instant::now, |t| t + interval);
            if dirty && Instant::now() >= earliest {
                dirty = false;
                last_pass = Some(Instant::now());
                if let Err(end) = self.pass().await {
                    return end;
                }
                continue;
            }
            let wake = if dirty { earliest } else { self.wake_instant() };
            tokio::select! {
                biased;
                () = shutdown.cancelled() => return TermEnd::Shutdown,
                () = &mut lost => return TermEnd::LostLeadership,
                Some(event) = slot_events.recv() => {
                    if let SlotEvent::Conflict(what) = event {
                        return TermEnd::Restart(Error::Conflict(format!(
                            "{what} was changed by another writer"
                        )));
                    }
                    self.on_slot_event(event);
                    dirty = true;
                }
                Some(done) = self.drains.join_next(), if !self.drains.is_empty() => {
                    match done {
                        Ok(done) => {
                            if let Err(end) = self.on_drain_done(done).await {
                                return end;
                            }
                        }
                        Err(error) => warn!(%error, "a drain task failed"),
                    }
                    dirty = true;
                }
                Ok(()) = changes.changed() => dirty = true,
                Ok(()) = alerts.changed() => dirty = true,
                () = hosts.changed() => dirty = true,
                () = tokio::time::sleep_until(wake) => dirty = true,
            }
        }
    }

    /// Gives the FleetLock hosts the pass admitted their locks, publishes why the others wait,
    /// and records an Event on the pool's policy for every lock given or given back.
    async fn lock_hosts(
        &mut self,
        admit: Vec<(String, String)>,
        waiting: BTreeMap<(String, String), Vec<String>>,
    ) {
        for (pool, id) in admit {
            match self.hosts.admit(&pool, &id).await {
                Ok(()) => {
                    info!(%pool, host = %id, "FleetLock host given its reboot lock");
                    self.event(EventJob::Policy {
                        uid: self.book.uid(&pool).map(str::to_owned),
                        policy: pool,
                        reason: Reason::HostLocked,
                        note: format!("FleetLock host {id} may reboot"),
                    });
                }
                Err(error) => warn!(%pool, host = %id, %error, "FleetLock host lock not given"),
            }
        }
        for (pool, id) in self.hosts.take_released().await {
            self.event(EventJob::Policy {
                uid: self.book.uid(&pool).map(str::to_owned),
                policy: pool,
                reason: Reason::HostUnlocked,
                note: format!("FleetLock host {id} reached steady state; its lock is released"),
            });
        }
        self.hosts.set_waiting(waiting).await;
    }

    /// Compare the Nodes' slot annotations with the ledger and repair those that drifted;
    /// come back once a disagreement that could not be settled yet can be.
    async fn check_mirrors(&mut self, now: Timestamp) {
        let empty = BTreeMap::new();
        let shown: Vec<(NodeName, NodeAnnotations)> = {
            let cache = self.cache.read();
            cache
                .nodes()
                .iter()
                .map(|(name, node)| {
                    let annotations = node.metadata.annotations.as_ref().unwrap_or(&empty);
                    (name.clone(), NodeAnnotations::from_annotations(annotations))
                })
                .collect()
        };
        let settle = SignedDuration::try_from(MIRROR_SETTLE).unwrap_or(SignedDuration::ZERO);
        if self.service.repair_mirrors(shown, settle).await {
            let again = now + settle;
            self.next_wake = Some(self.next_wake.map_or(again, |at| at.min(again)));
        }
    }

    fn wake_instant(&self) -> Instant {
        let max_idle = self.coordinator.settings.max_idle;
        let after = self.next_wake.map_or(max_idle, |at| {
            Duration::try_from(at.duration_since(self.now()))
                .unwrap_or(Duration::ZERO)
                .min(max_idle)
        });
        Instant::now() + after
    }

    /// What the slot service reports: Events, metrics, the breaker, and drains to stop.
    fn on_slot_event(&mut self, event: SlotEvent) {
        let transition = match event {
            SlotEvent::Transition(transition) => transition,
            SlotEvent::Mismatch(mismatch) => {
                self.metrics().ledger_mismatch(mismatch.why.as_str());
                self.event(EventJob::Node {
                    uid: self.node_uid(&mismatch.node),
                    note: mismatch.describe(),
                    node: mismatch.node,
                    reason: Reason::LedgerMismatch,
                });
                return;
            }
            SlotEvent::FactsChanged(_) | SlotEvent::Conflict(_) => return,
        };
        let pool = self.pool_of(&transition.node);
        match transition.reason {
            TransitionReason::Verified => {
                if let Some(pool) = &pool {
                    self.metrics()
                        .maintenance_outcome(pool, &transition.operation, Outcome::Done);
                }
            }
            TransitionReason::Failed | TransitionReason::OperationFailed => {
                if let Some(pool) = &pool {
                    self.metrics().maintenance_outcome(
                        pool,
                        &transition.operation,
                        Outcome::Failed,
                    );
                    self.coordinator.notifier.notify(Notification::NodeFailed {
                        pool: pool.clone(),
                        node: transition.node.clone(),
                        operation: transition.operation.name().to_owned(),
                        reason: transition.message.clone(),
                    });
                    if self.book.record_failure(pool) {
                        let failures = self.book.failures(pool);
                        self.coordinator.notifier.notify(Notification::PoolPaused {
                            pool: pool.clone(),
                            cause: PauseCause::CircuitOpen { failed: failures },
                        });
                        warn!(
                            pool,
                            failures, "circuit breaker open: the pool's rollout stops"
                        );
                        self.event(EventJob::Policy {
                            policy: pool.clone(),
                            uid: self.book.uid(pool).map(str::to_owned),
                            reason: Reason::CircuitOpen,
                            note: format!(
                                "{failures} failed maintenances (the last on node {}): no node of this pool is admitted until the rollout is paused and resumed",
                                transition.node
                            ),
                        });
                    }
                }
            }
            _ => {}
        }
        let caused_by_controller = matches!(
            transition.reason,
            TransitionReason::Drained | TransitionReason::DrainFailed | TransitionReason::Admitted
        );
        if transition.from == slots::NodeState::Draining
            && !caused_by_controller
            && let Some(running) = self.running.get(&transition.node)
            && Some(running.token) == transition.token
        {
            info!(node = %transition.node, reason = transition.reason.as_str(), "slot left draining: stopping its drain");
            running.cancel.cancel();
        }
        self.record(&transition);
        let uid = self.node_uid(&transition.node);
        self.event(EventJob::Transition(transition, uid));
    }

    /// One pass: decide, then perform.
    async fn pass(&mut self) -> Result<(), TermEnd> {
        let now = self.now();
        let entries: BTreeMap<NodeName, NodeEntry> = self
            .service
            .read(|l| l.entries().map(|(n, e)| (n.clone(), e.clone())).collect())
            .await;
        let known: HashSet<NodeName> = self.service.nodes().into_iter().collect();
        let hosts = self.hosts.snapshot().await;
        let draining: HashMap<NodeName, FencingToken> = self
            .running
            .iter()
            .map(|(n, r)| (n.clone(), r.token))
            .collect();
        // The book first: whether the pre-flight asks `/readyz` depends on this pass's policies
        // (a target just set, a term's first pass, a resumed pool), not the last pass's.
        let policy_changes = {
            let cache = self.cache.read();
            self.book.update(cache.policies())
        };
        let api_not_ready = self.api_not_ready().await;
        let etcd: BTreeMap<NodeName, rota_core::model::EtcdFacts> = self
            .service
            .all_facts()
            .into_iter()
            .map(|(node, facts)| (node, facts.etcd.clone()))
            .collect();
        self.note_external_etcd(&etcd);
        let (decisions, pools) = {
            let cache = self.cache.read();
            let pools = self.book.pools();
            self.alerts.set_urls(rota_core::blockers::urls(&pools));
            let alerts = self.alerts.reports();
            let decisions = decide::decide(&decide::Input {
                cache: &cache,
                book: &self.book,
                alerts: &alerts,
                entries: &entries,
                known: &known,
                draining: &draining,
                noticed: &self.noticed,
                expiry_reported: &self.expiry_reported,
                blocked_timeout: self.coordinator.settings.drain_blocked_timeout,
                hosts: &hosts,
                etcd: &etcd,
                api_not_ready: api_not_ready.as_deref(),
                now,
            });
            (decisions, pools)
        };
        let node_policies = node_policies(&decisions.node_pools, &pools);
        self.expiry_reported.retain(|(node, token)| {
            matches!(
                entries.get(node).map(|e| &e.holding),
                Some(Holding::Held(h)) if h.slot.token == *token
            )
        });
        self.perform(decisions, policy_changes, &node_policies, now)
            .await
    }

    async fn perform(
        &mut self,
        decisions: Decisions,
        policy_changes: Vec<PolicyChange>,
        node_policies: &HashMap<NodeName, Arc<NodePolicy>>,
        now: Timestamp,
    ) -> Result<(), TermEnd> {
        let Decisions {
            add_nodes,
            delete_nodes,
            manual,
            releases,
            cancel_drains,
            uncordon,
            slot_actions,
            expired_leases,
            admit,
            resume,
            waiting,
            statuses,
            gauges,
            next_wake,
            node_pools: _,
            admit_hosts,
            hosts_waiting,
            rollouts,
            rollout_withdraw,
        } = decisions;
        self.next_wake = next_wake;
        self.lock_hosts(admit_hosts, hosts_waiting).await;
        self.check_mirrors(now).await;
        for change in policy_changes {
            self.on_policy_change(change);
        }
        for node in add_nodes {
            self.service.node_added(&node).await;
        }
        self.service.set_policies(node_policies).await;
        for node in delete_nodes {
            if let Some(running) = self.running.remove(&node) {
                running.cancel.cancel();
            }
            self.attempts.remove(&node);
            self.service.node_deleted(&node).await;
        }
        for release in releases {
            self.force_release(release).await;
        }
        for request in manual {
            self.manual_request(request).await;
        }
        for node in cancel_drains {
            if let Some(running) = self.running.remove(&node) {
                running.cancel.cancel();
            }
        }
        for (node, why) in uncordon {
            self.uncordon(&node, why).await;
        }
        for (node, token, action) in slot_actions {
            let result = match &action {
                SlotAction::Verified => self.service.verified(&node, token).await,
                SlotAction::Fail(reason) => self.service.fail(&node, token, reason).await,
                SlotAction::Recovered => {
                    self.service
                        .release(&node, Release::Recovered(token), "")
                        .await
                }
            };
            if let Err(error) = result {
                log_refusal(&node, "verify", &error);
            }
        }
        for (node, token) in expired_leases {
            self.expiry_reported.insert((node.clone(), token));
            if let Some(pool) = self.pool_of(&node) {
                self.metrics().lease_expired(&pool);
            }
            warn!(%node, token = token.0, "slot lease expired; the slot stays held");
            self.event(EventJob::Node {
                uid: self.node_uid(&node),
                node,
                reason: Reason::LeaseExpired,
                note: format!(
                    "the agent stopped renewing slot {token}; its capacity stays taken until the node is healthy again or the slot is released"
                ),
            });
        }
        let rollout_phases: HashMap<String, &'static str> = rollouts
            .iter()
            .map(|r| (r.pool.clone(), r.state.phase.as_str()))
            .collect();
        self.perform_rollouts(rollouts, rollout_withdraw).await;
        self.announce_rollouts(&gauges, &admit);
        for action in admit {
            self.admit(action, now).await?;
        }
        for (token, since, start) in resume {
            let deadline = since
                .saturating_add(start.timeout)
                .unwrap_or(Timestamp::MAX);
            info!(node = %start.node, token = token.0, "resuming the drain of a draining slot");
            self.spawn_drain(start, token, deadline, 1);
        }
        self.service.set_waiting(waiting).await;
        for (policy, status) in statuses {
            self.write_status(&policy, status).await;
        }
        for (pool, g) in &gauges {
            let metrics = self.metrics();
            metrics.set_slots(pool, g.held, g.queued);
            metrics.set_drains_in_progress(pool, g.draining);
            metrics.set_pool_state(pool, g.paused, g.circuit_open);
            metrics.set_rollout_progress(pool, g.done, g.total);
            let phase = rollout_phases.get(pool.as_str()).copied();
            metrics.set_kubernetes_upgrade_phase(pool, phase);
        }
        Ok(())
    }

    /// Tells the chat webhook when a pool that was idle admits its first node, and when a pool
    /// that was busy has nothing held or queued any more. What a term saw first is its starting
    /// point, not news.
    fn announce_rollouts(&mut self, gauges: &BTreeMap<String, PoolGauges>, admit: &[AdmitAction]) {
        for (pool, g) in gauges {
            let admitting = admit
                .iter()
                .filter(|a| a.drain.pool.as_deref() == Some(pool.as_str()))
                .count();
            let busy = g.held + g.queued > 0;
            match self.busy.insert(pool.clone(), busy) {
                Some(_) if g.held == 0 && admitting > 0 => {
                    self.coordinator
                        .notifier
                        .notify(Notification::RolloutStarted {
                            pool: pool.clone(),
                            nodes: u32::try_from(g.queued).unwrap_or(u32::MAX),
                        });
                }
                Some(true) if !busy => {
                    self.coordinator.notifier.notify(Notification::RolloutDone {
                        pool: pool.clone(),
                        done: u32::try_from(g.done).unwrap_or(u32::MAX),
                        failed: self.book.failures(pool),
                    });
                }
                _ => {}
            }
        }
        self.busy.retain(|pool, _| gauges.contains_key(pool));
    }

    fn on_policy_change(&mut self, change: PolicyChange) {
        match change {
            PolicyChange::Invalid { policy, message } => {
                warn!(%policy, %message, "invalid MaintenancePolicy");
                self.event(EventJob::Policy {
                    uid: self.book.uid(&policy).map(str::to_owned),
                    policy,
                    reason: Reason::PolicyInvalid,
                    note: message,
                });
            }
            PolicyChange::Paused { policy } => {
                self.coordinator.notifier.notify(Notification::PoolPaused {
                    pool: policy.clone(),
                    cause: PauseCause::Manual,
                });
                self.event(EventJob::Policy {
                    uid: self.book.uid(&policy).map(str::to_owned),
                    policy,
                    reason: Reason::PoolPaused,
                    note: "rollout paused: no node is admitted; nodes in maintenance finish".into(),
                });
            }
            PolicyChange::Resumed { policy } => self.event(EventJob::Policy {
                uid: self.book.uid(&policy).map(str::to_owned),
                policy,
                reason: Reason::PoolResumed,
                note: "rollout resumed; the failure count was reset".into(),
            }),
            PolicyChange::Removed { policy } => self.metrics().forget_pool(&policy),
        }
    }

    /// Writes a policy's status (merge patch; empty lists are written as null so that stale
    /// entries go).
    async fn write_status(
        &mut self,
        policy: &str,
        status: rota_core::policy::MaintenancePolicyStatus,
    ) {
        if self.gate.check().is_err() {
            return;
        }
        let mut body = match serde_json::to_value(&status) {
            Ok(body) => body,
            Err(error) => {
                warn!(policy, %error, "status not encodable");
                return;
            }
        };
        if let Some(fields) = body.as_object_mut() {
            for key in ["observedGeneration", "waitingReasons", "conditions"] {
                fields.entry(key).or_insert(serde_json::Value::Null);
            }
        }
        match self
            .policies
            .patch_status(
                policy,
                &PatchParams::default(),
                &Patch::Merge(json!({ "status": body })),
            )
            .await
        {
            Ok(_) => self.book.mark_written(policy, status),
            Err(error) => warn!(policy, %error, "writing the policy status failed; retrying"),
        }
    }
}

/// Logs a ledger refusal or store failure of a controller action; none is fatal (the next pass
/// decides again from fresh state).
fn log_refusal(node: &str, action: &str, error: &slots::Error) {
    match error {
        slots::Error::Ledger(refusal) => debug!(node, action, %refusal, "ledger refused"),
        slots::Error::NotLeading => debug!(node, action, "not leading any more"),
        other => warn!(node, action, error = %other, "slot change failed; retrying"),
    }
}

/// What each node's agent follows: the policy of its pool (one shared value per pool), for the
/// nodes that exactly one pool selects.
fn node_policies(
    node_pools: &HashMap<NodeName, String>,
    pools: &[Pool],
) -> HashMap<NodeName, Arc<NodePolicy>> {
    let per_pool: HashMap<&str, Arc<NodePolicy>> = pools
        .iter()
        .map(|p| {
            (
                p.name.as_str(),
                Arc::new(NodePolicy::of(&p.name, &p.policy)),
            )
        })
        .collect();
    node_pools
        .iter()
        .filter_map(|(node, pool)| Some((node.clone(), per_pool.get(pool.as_str())?.clone())))
        .collect()
}
