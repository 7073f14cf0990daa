//! [`SlotService`]: the live ledger that the gRPC edge and the controller share. It serves the
//! agents' API ([`AgentCore`]) that the edge forwards their calls to.
//!
//! Every change goes through one lock, is persisted through the [`LedgerStore`] before anyone is
//! told about it (the fencing counter first, then the node's ledger object and its annotation
//! mirror), and is undone in memory when it cannot be persisted. Only then is the node's [`SlotView`] published on its watch
//! channel (what `WatchSlot` streams) and the [`Transition`] sent as a [`SlotEvent`] to whoever
//! records Events and metrics.
//!
//! The service also knows each node's pool policy ([`SlotService::set_policies`], from the
//! controller's passes): `ReportFacts` answers with it, and every view carries it — from the
//! grant on, the policy in force when the slot was granted.

use std::collections::HashMap;
use std::sync::{Arc, PoisonError, RwLock};

use jiff::{SignedDuration, Timestamp};
use tokio::sync::{Mutex, mpsc, watch};
use tokio_stream::wrappers::WatchStream;

use rota_core::agent_api::AgentCore;
use rota_core::clock::Clock;
use rota_core::model::{FencingToken, NodeFacts, NodeName, NodePolicy, Operation, Origin};
use rota_core::slots::persist::NodeAnnotations;
use rota_core::slots::persist::encode_entry;
use rota_core::slots::{
    Completion, CompletionReport, Disagreement, Error, Ledger, LedgerResult, LedgerStore,
    MAX_CHANGED_PACKAGES, Mismatch, NodeState, Release, Restored, Result, SlotView, StoreError,
    Transition, Waiting, restore,
};

/// Settings of the slot service.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SlotServiceConfig {
    /// Lease time-to-live given on admission, grant and every renewal.
    pub lease_ttl: SignedDuration,
}

impl Default for SlotServiceConfig {
    fn default() -> Self {
        SlotServiceConfig {
            lease_ttl: SignedDuration::from_secs(90),
        }
    }
}

/// What the service tells the controller.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SlotEvent {
    /// A node's state changed (persisted already): record an Event, count it, uncordon if asked.
    Transition(Transition),
    /// A node reported facts that differ from the previous ones: re-run the scheduler.
    FactsChanged(NodeName),
    /// On load: the node's annotation mirror disagreed with its ledger object and was not
    /// adopted (the mirror was repaired already, if it could be): record an Event and count it.
    Mismatch(Mismatch),
    /// Another writer changed the ledger (a 409 on a ledger object or the counter): this
    /// replica's view is stale; end the term and load again.
    Conflict(String),
}

struct Guarded {
    ledger: Ledger,
    /// When each node's records were last written (its mirror may not show in the cache yet).
    written: HashMap<NodeName, Timestamp>,
    /// The counter value known to be persisted, and its `resourceVersion`.
    persisted_token: u64,
    counter_version: Option<String>,
}

struct NodeChannel {
    view: watch::Sender<SlotView>,
    facts: Option<Arc<NodeFacts>>,
    /// The policy of the node's pool now.
    policy: Option<Arc<NodePolicy>>,
    /// The policy in force when the current slot was granted (in memory: after a failover, the
    /// pool's policy when the new leader first shows the granted slot).
    granted: Option<(FencingToken, Arc<NodePolicy>)>,
}

impl NodeChannel {
    fn new(view: SlotView) -> Self {
        NodeChannel {
            view: watch::Sender::new(view),
            facts: None,
            policy: None,
            granted: None,
        }
    }
}

/// The live, persisted slot ledger with per-node watch channels and the nodes' facts.
pub struct SlotService<S> {
    guarded: Mutex<Guarded>,
    store: S,
    nodes: RwLock<HashMap<NodeName, NodeChannel>>,
    events: mpsc::UnboundedSender<SlotEvent>,
    clock: Arc<dyn Clock>,
}

impl<S: LedgerStore> SlotService<S> {
    /// Loads the persisted ledger from `store` (what a starting or failed-over coordinator does)
    /// and registers every Node the store knows. Returns the service and the receiver of its
    /// events.
    ///
    /// The ledger objects are the truth ([`restore`]): before serving, every annotation mirror
    /// that disagrees is rewritten from them (and reported as [`SlotEvent::Mismatch`]), the
    /// ledger objects of deleted Nodes are deleted, and a migration from annotations writes the
    /// adopted entries' ledger objects (deleting the others) and marks the counter.
    pub async fn load(
        store: S,
        config: SlotServiceConfig,
        clock: Arc<dyn Clock>,
    ) -> Result<(Self, mpsc::UnboundedReceiver<SlotEvent>)> {
        let stored = store.load().await?;
        let Restored {
            ledger,
            mismatches,
            adopted,
            migrating,
            discard,
        } = restore(config.lease_ttl, &stored)?;
        let mut counter_version = stored.counter_version;
        if migrating {
            for node in &adopted {
                store
                    .store_node(node, &encode_entry(node, ledger.entry(node))?)
                    .await?;
            }
            // Every other ledger object must be gone before the counter is marked: once it is,
            // the objects are the truth.
            for node in &discard {
                store.forget_node(node).await?;
            }
            let version = store
                .store_counter(stored.last_token, counter_version.as_deref())
                .await?;
            counter_version = Some(version);
            tracing::info!(
                adopted = adopted.len(),
                refused = mismatches.len(),
                "slot ledger migrated from node annotations to ledger objects"
            );
        } else {
            for node in &discard {
                if let Err(error) = store.forget_node(node).await {
                    tracing::warn!(node, %error, "a deleted node's ledger object was not deleted");
                }
            }
        }
        let (events, receiver) = mpsc::unbounded_channel();
        // Repaired just now: the cache may show the old mirror for a moment.
        let written: HashMap<NodeName, Timestamp> = mismatches
            .iter()
            .map(|m| (m.node.clone(), clock.now()))
            .collect();
        for mismatch in mismatches {
            tracing::warn!(
                node = mismatch.node,
                reason = mismatch.why.as_str(),
                detail = mismatch.describe(),
                "slot annotations disagree with the ledger: not adopted, repairing"
            );
            if let Err(error) = store.store_mirror(&mismatch.node, &mismatch.expected).await {
                tracing::warn!(node = mismatch.node, %error, "the annotation mirror was not repaired");
            }
            let _ = events.send(SlotEvent::Mismatch(mismatch));
        }
        let nodes = stored
            .nodes
            .keys()
            .map(|node| (node.clone(), NodeChannel::new(ledger.view(node))))
            .collect();
        let service = SlotService {
            guarded: Mutex::new(Guarded {
                written,
                persisted_token: stored.last_token,
                counter_version,
                ledger,
            }),
            store,
            nodes: RwLock::new(nodes),
            events,
            clock,
        };
        Ok((service, receiver))
    }

    /// The store behind the service.
    pub fn store(&self) -> &S {
        &self.store
    }

    /// Registers a Node (from the controller's Node watch). Idempotent.
    pub async fn node_added(&self, node: &str) {
        let guarded = self.guarded.lock().await;
        let view = guarded.ledger.view(node);
        self.write_nodes()
            .entry(node.to_owned())
            .or_insert_with(|| NodeChannel::new(view));
    }

    /// Forgets a deleted Node: frees any slot it held, deletes its ledger object (its
    /// annotations went with it) and ends its watch streams.
    pub async fn node_deleted(&self, node: &str) -> Option<Transition> {
        let mut guarded = self.guarded.lock().await;
        let now = self.clock.now();
        let transition = guarded.ledger.node_deleted(node, now);
        self.write_nodes().remove(node);
        // Best effort: a ledger object left behind is found and deleted by the next load.
        if let Err(error) = self.store.forget_node(node).await {
            tracing::warn!(node, %error, "the deleted node's ledger object was not deleted");
        }
        if let Some(transition) = &transition {
            self.emit(SlotEvent::Transition(transition.clone()));
        }
        transition
    }

    /// Every registered Node (to reconcile them with the controller's Node watch).
    pub fn nodes(&self) -> Vec<NodeName> {
        self.read_nodes().keys().cloned().collect()
    }

    /// Whether the Node is known.
    pub fn is_known(&self, node: &str) -> bool {
        self.read_nodes().contains_key(node)
    }

    /// Stores a node's facts; tells the controller when they changed.
    pub fn report_facts(&self, node: &str, facts: NodeFacts) -> Result<()> {
        let changed = {
            let mut nodes = self.write_nodes();
            let channel = nodes
                .get_mut(node)
                .ok_or_else(|| Error::UnknownNode(node.to_owned()))?;
            let changed = channel.facts.as_deref() != Some(&facts);
            if changed {
                channel.facts = Some(Arc::new(facts));
            }
            changed
        };
        if changed {
            self.emit(SlotEvent::FactsChanged(node.to_owned()));
        }
        Ok(())
    }

    /// Sets every node's pool policy (nodes missing from `policies` have none) and publishes
    /// the views whose policy changed. A granted slot's view keeps the policy of its grant.
    pub async fn set_policies(&self, policies: &HashMap<NodeName, Arc<NodePolicy>>) {
        let guarded = self.guarded.lock().await;
        let changed: Vec<NodeName> = {
            let mut nodes = self.write_nodes();
            nodes
                .iter_mut()
                .filter_map(|(node, channel)| {
                    let policy = policies.get(node).cloned();
                    (channel.policy != policy).then(|| {
                        channel.policy = policy;
                        node.clone()
                    })
                })
                .collect()
        };
        for node in changed {
            let view = self.with_policy(guarded.ledger.view(&node));
            self.publish(&node, view);
        }
    }

    /// The policy of the node's pool, if one valid policy selects it.
    pub fn policy(&self, node: &str) -> Option<NodePolicy> {
        self.read_nodes()
            .get(node)
            .and_then(|c| c.policy.as_deref().cloned())
    }

    /// The node's latest facts.
    pub fn facts(&self, node: &str) -> Option<Arc<NodeFacts>> {
        self.read_nodes().get(node).and_then(|c| c.facts.clone())
    }

    /// Every node's latest facts (for the scheduler's snapshot and status).
    pub fn all_facts(&self) -> Vec<(NodeName, Arc<NodeFacts>)> {
        self.read_nodes()
            .iter()
            .filter_map(|(node, c)| c.facts.clone().map(|f| (node.clone(), f)))
            .collect()
    }

    /// Follows the node's view: the current one at once, then every change. The channel closes
    /// when the Node is deleted.
    pub fn watch(&self, node: &str) -> Result<watch::Receiver<SlotView>> {
        self.read_nodes()
            .get(node)
            .map(|c| c.view.subscribe())
            .ok_or_else(|| Error::UnknownNode(node.to_owned()))
    }

    /// The node's current view.
    pub async fn view(&self, node: &str) -> Result<SlotView> {
        self.ensure_known(node)?;
        let view = self.guarded.lock().await.ledger.view(node);
        Ok(self.with_policy(view))
    }

    /// Reads the ledger (e.g. `queue()` and `slots()` for the scheduler's snapshot).
    pub async fn read<R>(&self, f: impl FnOnce(&Ledger) -> R) -> R {
        f(&self.guarded.lock().await.ledger)
    }

    /// Queues a request (idempotent per node, see [`Ledger::request`]).
    pub async fn request(
        &self,
        node: &str,
        operation: Operation,
        origin: Origin,
    ) -> Result<SlotView> {
        self.apply(node, |ledger, now| {
            ledger
                .request(node, operation, origin, now)
                .map(|t| ((), t))
        })
        .await
        .map(|((), view)| view)
    }

    /// Admits the node's queued request with the next fencing token. The boot id before is the
    /// one from the node's latest facts.
    pub async fn admit(&self, node: &str, cordoned_by_rota: bool) -> Result<FencingToken> {
        self.admit_with_boot_id(node, cordoned_by_rota, None).await
    }

    /// [`SlotService::admit`], with the boot id the kubelet reports for the node as the
    /// fallback when the agent's facts have not arrived yet (an agent that started before the
    /// coordinator led); without any, a reboot could never be verified.
    pub async fn admit_with_boot_id(
        &self,
        node: &str,
        cordoned_by_rota: bool,
        kubelet_boot_id: Option<String>,
    ) -> Result<FencingToken> {
        let boot_id = self
            .facts(node)
            .map(|f| f.boot_id.clone())
            .filter(|b| !b.is_empty())
            .or(kubelet_boot_id.filter(|b| !b.is_empty()));
        let (token, _) = self
            .apply(node, |ledger, now| {
                let (token, t) = ledger.admit(node, now, boot_id, cordoned_by_rota)?;
                Ok((token, Some(t)))
            })
            .await?;
        Ok(token)
    }

    /// The drain finished: grant the slot.
    pub async fn drained(&self, node: &str, token: FencingToken) -> Result<SlotView> {
        self.transition(node, |ledger, now| ledger.drained(node, token, now))
            .await
    }

    /// Renews the lease; returns its new expiry.
    pub async fn renew(&self, node: &str, token: FencingToken) -> Result<Timestamp> {
        self.apply(node, |ledger, now| {
            ledger.renew(node, token, now).map(|expiry| (expiry, None))
        })
        .await
        .map(|(expiry, _)| expiry)
    }

    /// Records the agent's progress.
    pub async fn progress(
        &self,
        node: &str,
        token: FencingToken,
        step: String,
        message: String,
    ) -> Result<()> {
        self.apply(node, |ledger, now| {
            ledger
                .progress(node, token, step, message, now)
                .map(|()| ((), None))
        })
        .await
        .map(|((), _)| ())
    }

    /// The agent finished the operation.
    pub async fn complete(
        &self,
        node: &str,
        token: FencingToken,
        completion: Completion,
    ) -> Result<SlotView> {
        if !completion.changed.is_empty() {
            tracing::info!(
                node,
                token = token.0,
                changed = ?completion.changed,
                "agent reports changed packages"
            );
        }
        self.apply(node, |ledger, now| {
            let changed_packages = u32::try_from(completion.changed.len()).unwrap_or(u32::MAX);
            let mut changed = completion.changed;
            changed.truncate(MAX_CHANGED_PACKAGES);
            let report = CompletionReport {
                success: completion.success,
                message: completion.message,
                boot_id: completion.boot_id,
                rebooted: completion.rebooted,
                changed_packages,
                changed,
                at: now,
            };
            ledger.complete(node, token, report).map(|t| ((), t))
        })
        .await
        .map(|((), view)| view)
    }

    /// The node is healthy after the operation: release the slot.
    pub async fn verified(&self, node: &str, token: FencingToken) -> Result<SlotView> {
        self.transition(node, |ledger, now| ledger.verified(node, token, now))
            .await
    }

    /// The maintenance failed; the slot stays held.
    pub async fn fail(&self, node: &str, token: FencingToken, reason: &str) -> Result<SlotView> {
        self.transition(node, |ledger, now| ledger.fail(node, token, reason, now))
            .await
    }

    /// Gives a request or slot back.
    pub async fn release(&self, node: &str, by: Release, reason: &str) -> Result<SlotView> {
        self.transition(node, |ledger, now| ledger.release(node, by, reason, now))
            .await
    }

    /// The drain could not finish: give the slot back and re-queue with back-off.
    pub async fn requeue_after_drain_failure(
        &self,
        node: &str,
        token: FencingToken,
        not_before: Timestamp,
        reason: &str,
    ) -> Result<SlotView> {
        self.transition(node, |ledger, now| {
            ledger.requeue_after_drain_failure(node, token, not_before, reason, now)
        })
        .await
    }

    /// Publishes the scheduler's feedback (queue position, wait reasons) for queued nodes.
    /// Not persisted: every evaluation recomputes it.
    pub async fn set_waiting(&self, updates: impl IntoIterator<Item = (NodeName, Waiting)>) {
        let mut guarded = self.guarded.lock().await;
        for (node, waiting) in updates {
            if guarded.ledger.set_waiting(&node, waiting) {
                self.publish(&node, self.with_policy(guarded.ledger.view(&node)));
            }
        }
    }

    /// Applies a phase-changing ledger operation.
    async fn transition(
        &self,
        node: &str,
        op: impl FnOnce(&mut Ledger, Timestamp) -> LedgerResult<Transition>,
    ) -> Result<SlotView> {
        self.apply(node, |ledger, now| op(ledger, now).map(|t| ((), Some(t))))
            .await
            .map(|((), view)| view)
    }

    /// Applies one ledger operation: persist (counter first), undo on failure, then publish the
    /// view and emit the transition. A refused operation changed nothing and writes nothing.
    async fn apply<T>(
        &self,
        node: &str,
        op: impl FnOnce(&mut Ledger, Timestamp) -> LedgerResult<(T, Option<Transition>)>,
    ) -> Result<(T, SlotView)> {
        self.ensure_known(node)?;
        let mut guarded = self.guarded.lock().await;
        let now = self.clock.now();
        let checkpoint = guarded.ledger.checkpoint(node);
        let (value, transition) = op(&mut guarded.ledger, now)?;
        let changed = guarded.ledger.entry(node) != checkpoint.entry()
            || guarded.ledger.last_issued_token() != guarded.persisted_token;
        if changed && let Err(err) = self.persist(&mut guarded, node).await {
            if matches!(err, Error::NotLeading) {
                tracing::debug!(node, "slot change not persisted (not leading); undone");
            } else if let Error::Store(StoreError::Conflict { what, .. }) = &err {
                tracing::warn!(
                    node,
                    what,
                    "slot change not persisted: another writer; undone"
                );
                self.emit(SlotEvent::Conflict(what.clone()));
            } else {
                tracing::warn!(node, error = %err, "slot change not persisted; undone");
            }
            guarded.ledger.rollback(checkpoint);
            return Err(err);
        }
        let view = self.with_policy(guarded.ledger.view(node));
        self.publish(node, view.clone());
        if let Some(transition) = transition {
            tracing::info!(
                node,
                from = %transition.from,
                to = %transition.to,
                token = transition.token.map(|t| t.0),
                reason = transition.reason.as_str(),
                "{}",
                transition.message
            );
            self.emit(SlotEvent::Transition(transition));
        }
        Ok((value, view))
    }

    #[tracing::instrument(level = "debug", skip(self, guarded))]
    async fn persist(&self, guarded: &mut Guarded, node: &str) -> Result<()> {
        let issued = guarded.ledger.last_issued_token();
        if issued > guarded.persisted_token {
            let version = self
                .store
                .store_counter(issued, guarded.counter_version.as_deref())
                .await?;
            guarded.persisted_token = issued;
            guarded.counter_version = Some(version);
        }
        let annotations = encode_entry(node, guarded.ledger.entry(node))?;
        guarded.written.insert(node.to_owned(), self.clock.now());
        self.store.store_node(node, &annotations).await?;
        Ok(())
    }

    /// Rewrites the annotation mirrors that disagree with the ledger, given each Node's
    /// annotations as the cache shows them (`shown`), and reports each as
    /// [`SlotEvent::Mismatch`]. A mirror write is best effort — a patch that failed, a Node
    /// registered again without its annotations, someone's edit — so the controller calls this
    /// as it goes, not only at load. Nodes written within `settle` are left alone (the cache may
    /// not show that write yet). Returns whether a disagreement is left to look at again later
    /// (one within `settle`, or a repair that failed).
    pub async fn repair_mirrors(
        &self,
        shown: impl IntoIterator<Item = (NodeName, NodeAnnotations)>,
        settle: SignedDuration,
    ) -> bool {
        let guarded = self.guarded.lock().await;
        let now = self.clock.now();
        let mut pending = false;
        for (node, found) in shown {
            if !self.is_known(&node) {
                continue;
            }
            let Ok(expected) = encode_entry(&node, guarded.ledger.entry(&node)) else {
                continue;
            };
            if found == expected {
                continue;
            }
            if guarded
                .written
                .get(&node)
                .is_some_and(|at| now.duration_since(*at) < settle)
            {
                pending = true;
                continue;
            }
            let mismatch = Mismatch {
                node: node.clone(),
                why: Disagreement::Differs,
                found,
                expected,
            };
            tracing::warn!(
                node,
                detail = mismatch.describe(),
                "slot annotations disagree with the ledger: repairing"
            );
            match self.store.store_mirror(&node, &mismatch.expected).await {
                Ok(()) => self.emit(SlotEvent::Mismatch(mismatch)),
                Err(error) => {
                    tracing::warn!(node, %error, "the annotation mirror was not repaired");
                    pending = true;
                }
            }
        }
        pending
    }

    /// The view with the node's policy: the pool's now, or from the grant on the one in force
    /// at the grant (recorded the first time the granted slot is shown).
    fn with_policy(&self, mut view: SlotView) -> SlotView {
        let mut nodes = self.write_nodes();
        let Some(channel) = nodes.get_mut(&view.node) else {
            return view;
        };
        let granted = matches!(
            view.state,
            NodeState::Granted | NodeState::Verifying | NodeState::Failed
        );
        let policy = match view.token.filter(|_| granted) {
            Some(token) => match &channel.granted {
                Some((t, policy)) if *t == token => Some(policy.clone()),
                _ => {
                    channel.granted = channel.policy.clone().map(|p| (token, p));
                    channel.policy.clone()
                }
            },
            None => channel.policy.clone(),
        };
        view.policy = policy.as_deref().cloned();
        view
    }

    fn publish(&self, node: &str, view: SlotView) {
        if let Some(channel) = self.read_nodes().get(node) {
            channel.view.send_if_modified(|current| {
                if *current == view {
                    false
                } else {
                    *current = view;
                    true
                }
            });
        }
    }

    fn emit(&self, event: SlotEvent) {
        // Nobody listening (tests, shutdown) is fine: the change is persisted already.
        let _ = self.events.send(event);
    }

    fn ensure_known(&self, node: &str) -> Result<()> {
        if self.is_known(node) {
            Ok(())
        } else {
            Err(Error::UnknownNode(node.to_owned()))
        }
    }

    fn read_nodes(&self) -> std::sync::RwLockReadGuard<'_, HashMap<NodeName, NodeChannel>> {
        self.nodes.read().unwrap_or_else(PoisonError::into_inner)
    }

    fn write_nodes(&self) -> std::sync::RwLockWriteGuard<'_, HashMap<NodeName, NodeChannel>> {
        self.nodes.write().unwrap_or_else(PoisonError::into_inner)
    }
}

/// The agents' calls, as the gRPC edge forwards them.
impl<S: LedgerStore> AgentCore for SlotService<S> {
    type SlotUpdates = WatchStream<SlotView>;

    async fn report_facts(&self, node: &str, facts: NodeFacts) -> Result<Option<NodePolicy>> {
        SlotService::report_facts(self, node, facts)?;
        Ok(self.policy(node))
    }

    async fn request_slot(&self, node: &str, operation: Operation) -> Result<SlotView> {
        self.request(node, operation, Origin::Agent).await
    }

    fn watch_slot(&self, node: &str) -> Result<Self::SlotUpdates> {
        // `new`, not `from_changes`: the stream starts with the current view.
        self.watch(node).map(WatchStream::new)
    }

    async fn renew(&self, node: &str, token: FencingToken) -> Result<SignedDuration> {
        SlotService::renew(self, node, token).await?;
        Ok(self.read(|ledger| ledger.lease_ttl()).await)
    }

    async fn report_progress(
        &self,
        node: &str,
        token: FencingToken,
        step: String,
        message: String,
    ) -> Result<()> {
        self.progress(node, token, step, message).await
    }

    async fn complete(
        &self,
        node: &str,
        token: FencingToken,
        completion: Completion,
    ) -> Result<SlotView> {
        SlotService::complete(self, node, token, completion).await
    }

    async fn release(&self, node: &str, release: Release, reason: String) -> Result<()> {
        SlotService::release(self, node, release, &reason).await?;
        Ok(())
    }
}
