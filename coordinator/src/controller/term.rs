//! One leadership term: the actor that performs what [`rota_core::controller::decide`] decides.
use crate::slot_service::{SlotEvent, SlotService};
use rota_core::drain::{DrainProgress, DrainReport, PdbRef, PodProgress};

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use jiff::Timestamp;
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
use rota_core::model::{FencingToken, NodeName};
use rota_core::policy::{Backoff, DEFAULT_BACKOFF_INITIAL, DEFAULT_BACKOFF_MAX, MaintenancePolicy};
use rota_core::slots::{
    self, Holding, LedgerError, NodeEntry, Release, StoreError, Transition, TransitionReason,
};

type Service = SlotService<KubeLedgerStore>;

/// An Event to record (best effort, in order, by the term's event task).
enum EventJob {
    Transition(Transition, Option<String>),
    Node {
        node: String,
        uid: Option<String>,
        reason: Reason,
        note: String,
    },
    Policy {
        policy: String,
        uid: Option<String>,
        reason: Reason,
        note: String,
    },
}

/// A drain task's result.
struct DrainDone {
    node: NodeName,
    token: FencingToken,
    pool: Option<String>,
    result: Result<DrainReport, Error>,
}

/// A running drain.
struct Running {
    token: FencingToken,
    cancel: CancellationToken,
}

/// The actor of one term.
pub(super) struct Term<'a> {
    coordinator: &'a Coordinator,
    cache: &'a ClusterCache,
    gate: WriteGate,
    service: Arc<Service>,
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
    /// The policies' Prometheus alerts, polled for this term.
    alerts: AlertWatch,
    next_wake: Option<Timestamp>,
}

impl Drop for Term<'_> {
    fn drop(&mut self) {
        self.event_task.abort();
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
    ) -> Self {
        let client = coordinator.clients.default.clone();
        let (events, receiver) = mpsc::unbounded_channel();
        let event_task = tokio::spawn(
            record_events(coordinator.events.clone(), gate.clone(), receiver)
                .instrument(info_span!("events")),
        );
        Term {
            coordinator,
            cache,
            gate,
            service,
            nodes: Api::all(client.clone()),
            policies: Api::all(client),
            drainer: Drainer::new(
                &coordinator.clients,
                coordinator.clock.clone(),
                cache.pdb_feed(),
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
            alerts: AlertWatch::spawn(coordinator.settings.alerts.clone()),
            next_wake: None,
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
                () = tokio::time::sleep_until(wake) => dirty = true,
            }
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
        let SlotEvent::Transition(transition) = event else {
            return;
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
        let draining: HashMap<NodeName, FencingToken> = self
            .running
            .iter()
            .map(|(n, r)| (n.clone(), r.token))
            .collect();
        let (decisions, policy_changes) = {
            let cache = self.cache.read();
            let changes = self.book.update(cache.policies());
            self.alerts
                .set_urls(rota_core::blockers::urls(&self.book.pools()));
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
                now,
            });
            (decisions, changes)
        };
        self.expiry_reported.retain(|(node, token)| {
            matches!(
                entries.get(node).map(|e| &e.holding),
                Some(Holding::Held(h)) if h.slot.token == *token
            )
        });
        self.perform(decisions, policy_changes, now).await
    }

    async fn perform(
        &mut self,
        decisions: Decisions,
        policy_changes: Vec<PolicyChange>,
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
        } = decisions;
        self.next_wake = next_wake;
        for change in policy_changes {
            self.on_policy_change(change);
        }
        for node in add_nodes {
            self.service.node_added(&node).await;
        }
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
        for node in uncordon {
            self.uncordon(&node).await;
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
        self.announce_rollouts(&gauges, &admit);
        for action in admit {
            self.admit(action, now).await?;
        }
        for (token, since, start) in resume {
            let deadline = since
                .saturating_add(start.timeout)
                .unwrap_or(Timestamp::MAX);
            info!(node = %start.node, token = token.0, "resuming the drain of a draining slot");
            self.spawn_drain(start, token, deadline);
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

    /// Admits a node (persisted first), then cordons and drains it in a task. A conflict on the
    /// fencing counter ends the term.
    async fn admit(&mut self, action: AdmitAction, now: Timestamp) -> Result<(), TermEnd> {
        let node = action.drain.node.clone();
        let kubelet_boot_id = self
            .cache
            .read()
            .node(&node)
            .and_then(|n| n.status.as_ref())
            .and_then(|s| s.node_info.as_ref())
            .map(|i| i.boot_id.clone());
        match self
            .service
            .admit_with_boot_id(&node, action.cordoned_by_rota, kubelet_boot_id)
            .await
        {
            Ok(token) => {
                if !action.sequential.is_empty() {
                    let budgets: Vec<String> = action
                        .sequential
                        .iter()
                        .map(|s| format!("{} ({} pods, {} at a time)", s.pdb, s.pods, s.allowed))
                        .collect();
                    info!(
                        %node,
                        token = token.0,
                        budgets = budgets.join(", "),
                        blocked_timeout = ?action.drain.spec.blocked_timeout,
                        "sequential drain: the node has these budgets to itself and evicts as replacements become Ready"
                    );
                }
                let deadline = now
                    .saturating_add(action.drain.timeout)
                    .unwrap_or(Timestamp::MAX);
                self.spawn_drain(action.drain, token, deadline);
                Ok(())
            }
            Err(slots::Error::Store(StoreError::Conflict { what, expected })) => {
                Err(TermEnd::Restart(Error::Slots(slots::Error::Store(
                    StoreError::Conflict { what, expected },
                ))))
            }
            Err(error) => {
                log_refusal(&node, "admit", &error);
                Ok(())
            }
        }
    }

    fn spawn_drain(&mut self, start: DrainStart, token: FencingToken, deadline: Timestamp) {
        let DrainStart {
            node, pool, spec, ..
        } = start;
        if let Some(previous) = self.running.remove(&node) {
            previous.cancel.cancel();
        }
        let cancel = CancellationToken::new();
        self.running.insert(
            node.clone(),
            Running {
                token,
                cancel: cancel.clone(),
            },
        );
        let left =
            Duration::try_from(deadline.duration_since(self.now())).unwrap_or(Duration::ZERO);
        let mut control = DrainControl::new(Instant::now() + left).with_cancel(cancel);
        let progress = control.progress();
        let (nodes, gate, drainer, events) = (
            self.nodes.clone(),
            self.gate.clone(),
            self.drainer.clone(),
            self.events.clone(),
        );
        let uid = self.node_uid(&node);
        let span = info_span!("drain", node = %node, token = token.0);
        self.drains.spawn(
            async move {
                let result = async {
                    let cordoned = cordon(&nodes, &gate, &node).await?;
                    if cordoned == Cordoned::Now {
                        let _ = events.send(EventJob::Node {
                            node: node.clone(),
                            uid: uid.clone(),
                            reason: Reason::Cordoned,
                            note: format!("cordoned for maintenance slot {token}"),
                        });
                    }
                    gate.check()?;
                    let drain = drainer.drain(&node, &spec, control);
                    let blocked = report_blocked(progress, |pdbs| {
                        let names: Vec<String> = pdbs.iter().map(ToString::to_string).collect();
                        let _ = events.send(EventJob::Node {
                            node: node.clone(),
                            uid: uid.clone(),
                            reason: Reason::DrainBlocked,
                            note: format!(
                                "evictions held back by PodDisruptionBudget {}; retrying as the budget changes",
                                names.join(", ")
                            ),
                        });
                    });
                    tokio::pin!(drain);
                    tokio::select! {
                        report = &mut drain => Ok(report?),
                        never = blocked => match never {},
                    }
                }
                .await;
                DrainDone {
                    node,
                    token,
                    pool,
                    result,
                }
            }
            .instrument(span),
        );
    }

    /// A drain ended: grant the slot, or give it back with a back-off.
    async fn on_drain_done(&mut self, done: DrainDone) -> Result<(), TermEnd> {
        let DrainDone {
            node,
            token,
            pool,
            result,
        } = done;
        if self.running.get(&node).is_some_and(|r| r.token == token) {
            self.running.remove(&node);
        }
        if let (Some(pool), Ok(report)) = (&pool, &result) {
            for _ in 0..report.stats.evictions_succeeded {
                self.metrics().eviction(pool);
            }
            for _ in 0..report.stats.evictions_blocked_by_pdb {
                self.metrics().eviction_blocked(pool);
            }
        }
        let end = match &result {
            Ok(report) => DrainEnd::Outcome(&report.outcome),
            Err(Error::NotLeading(_) | Error::NodeNotFound(_)) => DrainEnd::Moot,
            Err(error) => DrainEnd::Failed(error.to_string()),
        };
        let attempts = self.attempts.get(&node).copied().unwrap_or(0);
        let backoff = pool.as_deref().and_then(|p| self.book.in_force(p)).map_or(
            Backoff {
                initial: DEFAULT_BACKOFF_INITIAL,
                max: DEFAULT_BACKOFF_MAX,
            },
            |f| f.policy.drain.backoff,
        );
        match after_drain(end, attempts, backoff, self.now()) {
            AfterDrain::Grant => {
                self.attempts.remove(&node);
                if let Err(error) = self.service.drained(&node, token).await {
                    log_refusal(&node, "grant", &error);
                }
            }
            AfterDrain::Nothing => {}
            AfterDrain::GiveBack {
                not_before,
                why,
                attempts,
            } => {
                self.attempts.insert(node.clone(), attempts);
                warn!(%node, token = token.0, %why, %not_before, "drain could not finish; giving the slot back");
                if let Err(error) = self
                    .service
                    .requeue_after_drain_failure(&node, token, not_before, &why)
                    .await
                {
                    log_refusal(&node, "requeue", &error);
                }
            }
        }
        Ok(())
    }

    /// Uncordons a node rota cordoned that holds no slot any more.
    async fn uncordon(&mut self, node: &str) {
        match uncordon_own(&self.nodes, &self.gate, node).await {
            Ok(true) => self.event(EventJob::Node {
                node: node.to_owned(),
                uid: self.node_uid(node),
                reason: Reason::Uncordoned,
                note: "uncordoned after maintenance".into(),
            }),
            Ok(false) => {}
            Err(error) => warn!(node, %error, "uncordon failed; retrying on the next pass"),
        }
    }

    /// `rota.dev/release=true`: force-release, then acknowledge.
    async fn force_release(&mut self, action: ReleaseAction) {
        let ReleaseAction {
            node,
            value,
            resource_version,
            valid,
        } = action;
        if let Err(problem) = valid {
            self.explain(&node, RELEASE, &value, &problem.to_string());
            return;
        }
        match self
            .service
            .release(&node, Release::Force, "rota.dev/release annotation")
            .await
        {
            Ok(_) => {}
            Err(slots::Error::Ledger(LedgerError::WrongState { .. })) => {
                self.event(EventJob::Node {
                    node: node.clone(),
                    uid: self.node_uid(&node),
                    reason: Reason::SlotForceReleased,
                    note: "rota.dev/release: the node holds no slot and has no request; nothing to release".into(),
                });
            }
            Err(error) => {
                warn!(%node, %error, "force release failed; retrying on the next pass");
                return;
            }
        }
        self.remove_annotation(&node, RELEASE, resource_version)
            .await;
    }

    /// `rota.dev/maintenance-requested`: queue a manual request, then acknowledge.
    async fn manual_request(&mut self, action: ManualAction) {
        let ManualAction {
            node,
            value,
            resource_version,
            operation,
        } = action;
        let operation = match operation {
            Ok(operation) => operation,
            Err(problem) => {
                self.explain(&node, MAINTENANCE_REQUESTED, &value, &problem.to_string());
                return;
            }
        };
        match self
            .service
            .request(&node, operation.clone(), rota_core::model::Origin::Manual)
            .await
        {
            Ok(_) => {
                self.noticed.remove(&(node.clone(), MAINTENANCE_REQUESTED));
                if self
                    .remove_annotation(&node, MAINTENANCE_REQUESTED, resource_version)
                    .await
                {
                    self.event(EventJob::Node {
                        node: node.clone(),
                        uid: self.node_uid(&node),
                        reason: Reason::MaintenanceRequested,
                        note: format!(
                            "{MAINTENANCE_REQUESTED}={value}: manual {} queued with priority",
                            operation.name()
                        ),
                    });
                }
            }
            Err(slots::Error::Ledger(refusal)) => {
                let note = format!(
                    "{MAINTENANCE_REQUESTED}={value} is not queued yet: {refusal}; it is retried when the node's state changes"
                );
                self.explain(
                    &node,
                    MAINTENANCE_REQUESTED,
                    &format!("{value}\n{refusal}"),
                    &note,
                );
            }
            Err(error) => {
                warn!(%node, %error, "manual request not queued; retrying on the next pass")
            }
        }
    }

    /// Records a Warning Event about an annotation once per distinct value (or refusal).
    fn explain(&mut self, node: &str, key: &'static str, value: &str, note: &str) {
        let seen = self
            .noticed
            .get(&(node.to_owned(), key))
            .map(String::as_str);
        if seen == Some(value) {
            return;
        }
        self.noticed
            .insert((node.to_owned(), key), value.to_owned());
        warn!(node, annotation = key, note, "annotation not acted upon");
        self.event(EventJob::Node {
            node: node.to_owned(),
            uid: self.node_uid(node),
            reason: Reason::InvalidRequest,
            note: note.to_owned(),
        });
    }

    /// Removes an annotation if the Node is still at `resource_version` (else a human changed
    /// it meanwhile, and the next pass looks again). Returns whether it was removed.
    async fn remove_annotation(
        &self,
        node: &str,
        key: &str,
        resource_version: Option<String>,
    ) -> bool {
        if self.gate.check().is_err() {
            return false;
        }
        let patch = json!({
            "metadata": {
                "resourceVersion": resource_version,
                "annotations": {key: null},
            }
        });
        match self
            .nodes
            .patch(node, &PatchParams::default(), &Patch::Merge(patch))
            .await
        {
            Ok(_) => true,
            Err(kube::Error::Api(status)) if status.code == 409 => {
                debug!(
                    node,
                    key, "node changed before the annotation was removed; retrying"
                );
                false
            }
            Err(error) => {
                warn!(node, key, %error, "removing the annotation failed; retrying");
                false
            }
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

/// Calls `report` with the budgets that newly hold back an eviction of a running drain, each
/// once. Never ends (the drain ending drops it).
async fn report_blocked(
    mut progress: tokio::sync::watch::Receiver<DrainProgress>,
    mut report: impl FnMut(Vec<PdbRef>),
) -> std::convert::Infallible {
    let mut reported: BTreeSet<PdbRef> = BTreeSet::new();
    loop {
        let fresh: Vec<PdbRef> = progress
            .borrow_and_update()
            .pods
            .values()
            .filter_map(|p| match p {
                PodProgress::BlockedByPdb { pdbs, .. } => Some(pdbs.iter()),
                _ => None,
            })
            .flatten()
            .filter(|pdb| !reported.contains(*pdb))
            .cloned()
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect();
        if !fresh.is_empty() {
            reported.extend(fresh.iter().cloned());
            report(fresh);
        }
        if progress.changed().await.is_err() {
            return std::future::pending().await;
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

/// Records Events in order while the gate is open; failures are logged, never fatal.
async fn record_events(
    sink: EventSink,
    gate: WriteGate,
    mut jobs: mpsc::UnboundedReceiver<EventJob>,
) {
    while let Some(job) = jobs.recv().await {
        if !gate.is_open() {
            continue;
        }
        let result = match &job {
            EventJob::Transition(transition, uid) => {
                sink.transition(transition, uid.as_deref()).await
            }
            EventJob::Node {
                node,
                uid,
                reason,
                note,
            } => sink.node(node, uid.as_deref(), *reason, note).await,
            EventJob::Policy {
                policy,
                uid,
                reason,
                note,
            } => sink.policy(policy, uid.as_deref(), *reason, note).await,
        };
        if let Err(error) = result {
            warn!(%error, "event not recorded");
        }
    }
}
