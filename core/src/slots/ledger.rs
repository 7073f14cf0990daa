//! The slot ledger: every node's request or held slot, and the cluster-wide fencing counter.
//!
//! Pure: no I/O and no clock. Every operation takes `now` from the caller, checks the fencing
//! token before anything else, and either changes the ledger and returns a [`Transition`] (the
//! message the I/O layer turns into a persisted annotation, an Event and metrics) or returns a
//! [`LedgerError`] and changes nothing.
//!
//! Capacity rules (`docs/architecture.md`, "Slots, leases and fencing"): a slot is held from admission until it
//! is verified, given back, force-released, requeued after a drain that could not finish, or its
//! Node is deleted. A failed slot stays held. An expired lease is only reported
//! ([`Ledger::expired_leases`]); it never frees capacity.

use std::collections::BTreeMap;

use jiff::{SignedDuration, Timestamp};

use super::entry::{
    CompletionReport, Finished, HeldSlot, Holding, NodeEntry, ProgressNote, QueuedRequest,
    SlotView, Waiting,
};
use super::transition::{NodeState, Transition, TransitionReason};
use crate::model::{FencingToken, NodeName, Operation, Origin, Slot, SlotPhase, SlotRequest};

/// Why the ledger refused an operation. A refused operation changed nothing.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum LedgerError {
    /// The presented token is not the node's current slot token (an older slot, a forged or
    /// future token, or no slot at all).
    #[error("node {node}: fencing token {presented} is stale ({})", current_token_text(*.current))]
    StaleToken {
        /// The node.
        node: NodeName,
        /// The token the caller presented.
        presented: FencingToken,
        /// The node's current slot token, if it holds one.
        current: Option<FencingToken>,
    },
    /// A different operation was requested while the node holds a slot.
    #[error(
        "node {node} holds slot {token} for {held}; it cannot ask for {requested} until that slot is released"
    )]
    SlotHeld {
        /// The node.
        node: NodeName,
        /// The held slot's token.
        token: FencingToken,
        /// The held slot's operation.
        held: &'static str,
        /// The operation asked for.
        requested: &'static str,
    },
    /// An agent asked to replace a queued manual request, which takes precedence.
    #[error(
        "node {node} has a manual {queued} request queued; an agent request for {requested} cannot replace it"
    )]
    ManualRequestQueued {
        /// The node.
        node: NodeName,
        /// The queued manual operation.
        queued: &'static str,
        /// The operation the agent asked for.
        requested: &'static str,
    },
    /// An agent or FleetLock client asked to replace a queued request of the Kubernetes
    /// upgrade rollout, which takes precedence.
    #[error(
        "node {node} has a {queued} request of the Kubernetes upgrade rollout queued; a request for {requested} cannot replace it"
    )]
    RolloutRequestQueued {
        /// The node.
        node: NodeName,
        /// The queued operation.
        queued: &'static str,
        /// The operation asked for.
        requested: &'static str,
    },
    /// The operation needs the node in another state.
    #[error("node {node} is {state}: cannot {action}")]
    WrongState {
        /// The node.
        node: NodeName,
        /// Its current state.
        state: NodeState,
        /// What was attempted, e.g. "admit".
        action: &'static str,
    },
    /// The queued request is backing off after a drain that could not finish.
    #[error("node {node} backs off until {until}: cannot admit it before")]
    BackingOff {
        /// The node.
        node: NodeName,
        /// When the back-off ends.
        until: Timestamp,
    },
    /// The fencing counter reached `u64::MAX`; no further token can be issued.
    #[error("the fencing token counter is exhausted")]
    TokensExhausted,
}

fn current_token_text(current: Option<FencingToken>) -> String {
    match current {
        Some(token) => format!("the node's slot has token {token}"),
        None => "the node holds no slot".to_owned(),
    }
}

/// Result of ledger operations.
pub type LedgerResult<T> = std::result::Result<T, LedgerError>;

/// How a slot or request is given back ([`Ledger::release`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Release {
    /// The agent withdraws a request that was not admitted yet.
    Withdraw,
    /// The slot's holder gives it back before the operation completed (draining or granted).
    Holder(FencingToken),
    /// The controller saw a failed node healthy again.
    Recovered(FencingToken),
    /// A human releases whatever the node has queued or holds.
    Force,
}

/// Restoration point for one node, used by the I/O layer to undo a change it could not persist.
#[derive(Clone, Debug)]
pub struct Checkpoint {
    node: NodeName,
    entry: Option<NodeEntry>,
}

impl Checkpoint {
    /// The node's entry at the checkpoint.
    pub fn entry(&self) -> Option<&NodeEntry> {
        self.entry.as_ref()
    }
}

/// Every node's request or slot, and the fencing counter.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Ledger {
    entries: BTreeMap<NodeName, NodeEntry>,
    last_token: u64,
    lease_ttl: SignedDuration,
}

impl Ledger {
    /// An empty ledger that has issued no token yet.
    pub fn new(lease_ttl: SignedDuration) -> Self {
        Ledger {
            entries: BTreeMap::new(),
            last_token: 0,
            lease_ttl,
        }
    }

    /// Rebuilds the ledger a restarted coordinator had, from the persisted counter and entries.
    ///
    /// The counter continues from the highest of the persisted counter and every token found in
    /// the entries, so no token is ever issued twice.
    pub fn from_persisted(
        lease_ttl: SignedDuration,
        last_token: u64,
        entries: impl IntoIterator<Item = (NodeName, NodeEntry)>,
    ) -> Self {
        let mut ledger = Ledger::new(lease_ttl);
        ledger.last_token = last_token;
        for (node, entry) in entries {
            let tokens = [
                entry.token(),
                entry.last.as_ref().and_then(|last| last.token),
            ];
            for token in tokens.into_iter().flatten() {
                ledger.last_token = ledger.last_token.max(token.0);
            }
            if !entry.is_empty() {
                ledger.entries.insert(node, entry);
            }
        }
        ledger
    }

    /// Lease time-to-live granted on admission and on every renewal.
    pub fn lease_ttl(&self) -> SignedDuration {
        self.lease_ttl
    }

    /// The highest token ever issued (what the persisted counter must hold), 0 if none.
    pub fn last_issued_token(&self) -> u64 {
        self.last_token
    }

    /// The node's entry, if it has one.
    pub fn entry(&self, node: &str) -> Option<&NodeEntry> {
        self.entries.get(node)
    }

    /// Every node with an entry.
    pub fn entries(&self) -> impl Iterator<Item = (&NodeName, &NodeEntry)> {
        self.entries.iter()
    }

    /// The node's state.
    pub fn state(&self, node: &str) -> NodeState {
        self.entries
            .get(node)
            .map_or(NodeState::Idle, NodeEntry::state)
    }

    /// Queued requests (the scheduler's queue), in node-name order.
    pub fn queue(&self) -> impl Iterator<Item = &SlotRequest> {
        self.entries.values().filter_map(|e| match &e.holding {
            Holding::Queued(q) => Some(&q.request),
            Holding::Idle | Holding::Held(_) => None,
        })
    }

    /// Held slots (capacity in use), in node-name order.
    pub fn slots(&self) -> impl Iterator<Item = &Slot> {
        self.entries.values().filter_map(|e| match &e.holding {
            Holding::Held(h) => Some(&h.slot),
            Holding::Idle | Holding::Queued(_) => None,
        })
    }

    /// Slots whose lease expired at `now`. Only information: expiry never frees capacity.
    pub fn expired_leases(&self, now: Timestamp) -> impl Iterator<Item = &Slot> {
        self.slots().filter(move |s| s.lease_expires_at <= now)
    }

    /// What the node's agent sees, without its policy (the ledger does not know pools).
    pub fn view(&self, node: &str) -> SlotView {
        let mut view = SlotView {
            node: node.to_owned(),
            state: NodeState::Idle,
            operation: None,
            token: None,
            queue_position: None,
            waiting_reasons: Vec::new(),
            lease_ttl: self.lease_ttl,
            message: String::new(),
            policy: None,
        };
        let Some(entry) = self.entries.get(node) else {
            return view;
        };
        view.state = entry.state();
        match &entry.holding {
            Holding::Queued(q) => {
                view.operation = Some(q.request.operation.clone());
                view.queue_position = entry.waiting.position;
                view.waiting_reasons.clone_from(&entry.waiting.reasons);
                view.message.clone_from(&q.note);
            }
            Holding::Held(h) => {
                view.operation = Some(h.slot.operation.clone());
                view.token = Some(h.slot.token);
                view.message.clone_from(&h.note);
            }
            Holding::Idle => {
                if let Some(last) = &entry.last {
                    if view.state == NodeState::Done {
                        view.operation = Some(last.operation.clone());
                        view.token = last.token;
                    }
                    view.message.clone_from(&last.message);
                }
            }
        }
        view
    }

    /// Queues a request (idempotent per node).
    ///
    /// The same operation again returns `Ok(None)`: nothing changes, except that a manual request
    /// raises an agent's request to manual priority. A different operation replaces a queued
    /// request, keeping its place, unless an agent would replace a human's request. A human's
    /// reboot and a package upgrade meeting in the queue become one request with manual
    /// priority: the upgrade, then a reboot whatever the upgrade needs
    /// ([`Operation::merge_manual_reboot`]). While a slot is held, the same operation (or one
    /// the held slot already includes) is a no-op and another one is refused.
    pub fn request(
        &mut self,
        node: &str,
        operation: Operation,
        origin: Origin,
        now: Timestamp,
    ) -> LedgerResult<Option<Transition>> {
        let entry = self.entries.get(node);
        let from = entry.map_or(NodeState::Idle, NodeEntry::state);
        if let Some(Holding::Queued(queued)) = entry.map(|e| &e.holding)
            && let Some((merged, merged_origin)) = merged(
                (&queued.request.operation, queued.request.origin),
                (&operation, origin),
            )
        {
            let current = &queued.request;
            if merged == current.operation && merged_origin == current.origin {
                return Ok(None);
            }
            let message = format!(
                "{} request for {} joins the queued {}: one maintenance that upgrades, then reboots",
                origin_name(origin),
                operation.name(),
                current.operation.name()
            );
            let request = SlotRequest {
                operation: merged,
                origin: merged_origin,
                ..current.clone()
            };
            return Ok(Some(self.enqueue(
                from,
                request,
                TransitionReason::RequestReplaced,
                message,
                now,
            )));
        }
        let (requested_at, not_before, reason, message) = match entry.map(|e| &e.holding) {
            Some(Holding::Held(held)) => {
                let current = (&held.slot.operation, held.slot.origin);
                let included = merged(current, (&operation, origin))
                    .is_some_and(|(op, _)| op == held.slot.operation);
                return if held.slot.operation == operation || included {
                    Ok(None)
                } else {
                    Err(LedgerError::SlotHeld {
                        node: node.to_owned(),
                        token: held.slot.token,
                        held: held.slot.operation.name(),
                        requested: operation.name(),
                    })
                };
            }
            Some(Holding::Queued(queued)) => {
                let current = &queued.request;
                let same_operation = current.operation == operation;
                if same_operation && (current.origin == origin || origin != Origin::Manual) {
                    return Ok(None);
                }
                if !same_operation && current.origin == Origin::Manual && origin != Origin::Manual {
                    return Err(LedgerError::ManualRequestQueued {
                        node: node.to_owned(),
                        queued: current.operation.name(),
                        requested: operation.name(),
                    });
                }
                if !same_operation
                    && current.origin == Origin::Rollout
                    && !origin.outranks_automatic()
                {
                    return Err(LedgerError::RolloutRequestQueued {
                        node: node.to_owned(),
                        queued: current.operation.name(),
                        requested: operation.name(),
                    });
                }
                let message = if same_operation {
                    format!(
                        "manual request raises the queued {} to priority",
                        operation.name()
                    )
                } else {
                    format!(
                        "{} request for {} replaces the queued {}",
                        origin_name(origin),
                        operation.name(),
                        current.operation.name()
                    )
                };
                (
                    current.requested_at,
                    current.not_before,
                    TransitionReason::RequestReplaced,
                    message,
                )
            }
            Some(Holding::Idle) | None => (
                now,
                None,
                TransitionReason::Requested,
                format!("{} requested {}", origin_name(origin), operation.name()),
            ),
        };
        let request = SlotRequest {
            node: node.to_owned(),
            operation,
            origin,
            requested_at,
            not_before,
        };
        Ok(Some(self.enqueue(from, request, reason, message, now)))
    }

    /// Puts `request` in the queue (as new, or replacing the node's queued request).
    fn enqueue(
        &mut self,
        from: NodeState,
        request: SlotRequest,
        reason: TransitionReason,
        message: String,
        now: Timestamp,
    ) -> Transition {
        let node = request.node.clone();
        let operation = request.operation.clone();
        self.set_holding(
            &node,
            Holding::Queued(QueuedRequest {
                request,
                note: message.clone(),
            }),
        );
        self.transition(&node, from, None, operation, reason, message, now, false)
    }

    /// Admits the node's queued request: issues the next fencing token and holds a slot in
    /// `Draining`. `cordoned_by_rota` records that rota (not a human) is responsible for the
    /// node's cordon, so that only then the end of the slot uncordons it.
    pub fn admit(
        &mut self,
        node: &str,
        now: Timestamp,
        boot_id_before: Option<String>,
        cordoned_by_rota: bool,
    ) -> LedgerResult<(FencingToken, Transition)> {
        let queued = match self.entries.get(node).map(|e| &e.holding) {
            Some(Holding::Queued(queued)) => queued,
            _ => return Err(self.wrong_state(node, "admit a node that has no queued request")),
        };
        if let Some(until) = queued.request.not_before
            && until > now
        {
            return Err(LedgerError::BackingOff {
                node: node.to_owned(),
                until,
            });
        }
        let token = FencingToken(
            self.last_token
                .checked_add(1)
                .ok_or(LedgerError::TokensExhausted)?,
        );
        let request = queued.request.clone();
        let message = format!(
            "admitted {} with fencing token {token}",
            request.operation.name()
        );
        let slot = Slot {
            node: node.to_owned(),
            operation: request.operation.clone(),
            origin: request.origin,
            token,
            phase: SlotPhase::Draining,
            admitted_at: now,
            phase_since: now,
            granted_at: None,
            lease_expires_at: self.lease_end(now),
            boot_id_before,
            cordoned_by_rota,
        };
        self.last_token = token.0;
        self.set_holding(
            node,
            Holding::Held(HeldSlot {
                slot,
                requested_at: request.requested_at,
                note: message.clone(),
                progress: None,
                completion: None,
            }),
        );
        let transition = self.transition(
            node,
            NodeState::Queued,
            Some(token),
            request.operation,
            TransitionReason::Admitted,
            message,
            now,
            false,
        );
        Ok((token, transition))
    }

    /// The drain finished: the slot is granted and its lease starts now.
    pub fn drained(
        &mut self,
        node: &str,
        token: FencingToken,
        now: Timestamp,
    ) -> LedgerResult<Transition> {
        self.change_phase(node, token, now, "grant", |held, lease_end| {
            if held.slot.phase != SlotPhase::Draining {
                return None;
            }
            held.slot.lease_expires_at = lease_end;
            held.slot.granted_at = Some(now);
            Some(Step {
                phase: SlotPhase::Granted,
                reason: TransitionReason::Drained,
                message: format!(
                    "node drained; {} granted with fencing token {}",
                    held.slot.operation.name(),
                    held.slot.token
                ),
            })
        })
    }

    /// Extends the lease of a held slot; returns the new expiry. Not a transition: the phase
    /// stays.
    pub fn renew(
        &mut self,
        node: &str,
        token: FencingToken,
        now: Timestamp,
    ) -> LedgerResult<Timestamp> {
        let lease_end = self.lease_end(now);
        let held = self.held_mut(node, token)?;
        held.slot.lease_expires_at = held.slot.lease_expires_at.max(lease_end);
        Ok(held.slot.lease_expires_at)
    }

    /// Records the agent's latest progress on a granted (or failed, while it rolls back) slot.
    pub fn progress(
        &mut self,
        node: &str,
        token: FencingToken,
        step: String,
        message: String,
        now: Timestamp,
    ) -> LedgerResult<()> {
        let held = self.held_mut(node, token)?;
        if !matches!(held.slot.phase, SlotPhase::Granted | SlotPhase::Failed) {
            let state = held.slot.phase.into();
            return Err(LedgerError::WrongState {
                node: node.to_owned(),
                state,
                action: "report progress before the slot is granted or after completion",
            });
        }
        held.progress = Some(ProgressNote {
            step: bounded(step),
            message: bounded(message),
            at: now,
        });
        Ok(())
    }

    /// The agent finished the operation: success moves the slot to `Verifying`, failure to
    /// `Failed` (capacity stays held). Repeating the same report while the slot is still held is
    /// a no-op (`Ok(None)`), so an agent that lost the answer can retry.
    ///
    /// A report for a slot the coordinator failed before the agent reported (the node did not
    /// come back within `health.readyTimeout`) is recorded and the slot stays `Failed`: with a
    /// successful report, the controller verifies the node again and releases the slot once
    /// it is healthy ([`Release::Recovered`]).
    pub fn complete(
        &mut self,
        node: &str,
        token: FencingToken,
        report: CompletionReport,
    ) -> LedgerResult<Option<Transition>> {
        let held = self.held(node, token)?;
        if held
            .completion
            .as_ref()
            .is_some_and(|done| done.success == report.success)
        {
            return Ok(None);
        }
        if held.slot.phase == SlotPhase::Failed && held.completion.is_none() {
            return self.complete_after_failure(node, token, report);
        }
        let now = report.at;
        self.change_phase(node, token, now, "complete", move |held, _| {
            if held.slot.phase != SlotPhase::Granted {
                return None;
            }
            let operation = held.slot.operation.name();
            let detail = if report.message.is_empty() {
                String::new()
            } else {
                format!(": {}", report.message)
            };
            let step = if report.success {
                Step {
                    phase: SlotPhase::Verifying,
                    reason: TransitionReason::Completed,
                    message: bounded(format!("{operation} completed{detail}; verifying the node")),
                }
            } else {
                Step {
                    phase: SlotPhase::Failed,
                    reason: TransitionReason::OperationFailed,
                    message: bounded(format!("{operation} failed on the node{detail}")),
                }
            };
            held.completion = Some(CompletionReport {
                message: bounded(report.message),
                boot_id: report.boot_id.map(bounded),
                ..report
            });
            Some(step)
        })
        .map(Some)
    }

    /// Records a completion that arrives after the coordinator failed the slot. Only a success
    /// is a transition (an Event, and a reason for the controller to verify the node again); a
    /// failure only explains the failed slot.
    fn complete_after_failure(
        &mut self,
        node: &str,
        token: FencingToken,
        report: CompletionReport,
    ) -> LedgerResult<Option<Transition>> {
        let now = report.at;
        let held = self.held_mut(node, token)?;
        let operation = held.slot.operation.clone();
        let detail = if report.message.is_empty() {
            String::new()
        } else {
            format!(": {}", report.message)
        };
        let success = report.success;
        let message = bounded(if success {
            format!(
                "{} completed after the slot had failed{detail}; the slot is released once the node is healthy",
                operation.name()
            )
        } else {
            format!(
                "{} failed on the node after the slot had failed{detail}",
                operation.name()
            )
        });
        held.completion = Some(CompletionReport {
            message: bounded(report.message),
            boot_id: report.boot_id.map(bounded),
            ..report
        });
        held.note.clone_from(&message);
        if !success {
            return Ok(None);
        }
        Ok(Some(self.transition(
            node,
            NodeState::Failed,
            Some(token),
            operation,
            TransitionReason::Completed,
            message,
            now,
            false,
        )))
    }

    /// The node is healthy after the operation: release the slot (`Done`).
    pub fn verified(
        &mut self,
        node: &str,
        token: FencingToken,
        now: Timestamp,
    ) -> LedgerResult<Transition> {
        let held = self.held(node, token)?;
        if held.slot.phase != SlotPhase::Verifying {
            return Err(self.wrong_state(node, "verify a slot that is not verifying"));
        }
        let message = format!("{} verified; slot released", held.slot.operation.name());
        self.finish(
            node,
            NodeState::Done,
            TransitionReason::Verified,
            message,
            now,
        )
    }

    /// Declares the maintenance failed (the slot stays held; capacity is not freed).
    pub fn fail(
        &mut self,
        node: &str,
        token: FencingToken,
        reason: &str,
        now: Timestamp,
    ) -> LedgerResult<Transition> {
        self.change_phase(node, token, now, "fail", |held, _| {
            if held.slot.phase == SlotPhase::Failed {
                return None;
            }
            Some(Step {
                phase: SlotPhase::Failed,
                reason: TransitionReason::Failed,
                message: bounded(format!("{} failed: {reason}", held.slot.operation.name())),
            })
        })
    }

    /// Gives a request or slot back (see [`Release`] for who may release what).
    pub fn release(
        &mut self,
        node: &str,
        by: Release,
        reason: &str,
        now: Timestamp,
    ) -> LedgerResult<Transition> {
        match by {
            Release::Withdraw => {
                let Some(Holding::Queued(queued)) = self.entries.get(node).map(|e| &e.holding)
                else {
                    return Err(self.wrong_state(node, "withdraw: no request is queued"));
                };
                let operation = queued.request.operation.clone();
                if queued.request.origin == Origin::Manual
                    && matches!(operation, Operation::PackageUpgrade { .. })
                    && operation.always_reboots()
                {
                    // The agent's upgrade joined a human's reboot: only the upgrade goes.
                    let request = SlotRequest {
                        operation: Operation::Reboot,
                        ..queued.request.clone()
                    };
                    let message = with_reason(
                        "the agent withdrew its package-upgrade; the manual reboot stays queued"
                            .to_owned(),
                        reason,
                    );
                    return Ok(self.enqueue(
                        NodeState::Queued,
                        request,
                        TransitionReason::RequestReplaced,
                        message,
                        now,
                    ));
                }
                let message = with_reason(
                    format!("request for {} withdrawn", operation.name()),
                    reason,
                );
                Ok(self.end_request(node, operation, TransitionReason::Withdrawn, message, now))
            }
            Release::Holder(token) => {
                let held = self.held(node, token)?;
                if !matches!(held.slot.phase, SlotPhase::Draining | SlotPhase::Granted) {
                    return Err(self.wrong_state(
                        node,
                        "give back a slot after completion (the coordinator releases it)",
                    ));
                }
                let message = with_reason(format!("slot {token} given back by the agent"), reason);
                self.finish(
                    node,
                    NodeState::Idle,
                    TransitionReason::Released,
                    message,
                    now,
                )
            }
            Release::Recovered(token) => {
                let held = self.held(node, token)?;
                if held.slot.phase != SlotPhase::Failed {
                    return Err(self.wrong_state(node, "recover a slot that has not failed"));
                }
                let message = with_reason(
                    format!("node healthy again; failed slot {token} released"),
                    reason,
                );
                self.finish(
                    node,
                    NodeState::Idle,
                    TransitionReason::Recovered,
                    message,
                    now,
                )
            }
            Release::Force => match self.entries.get(node).map(|e| &e.holding) {
                Some(Holding::Held(held)) => {
                    let message = with_reason(
                        format!("slot {} released by a human", held.slot.token),
                        reason,
                    );
                    self.finish(
                        node,
                        NodeState::Idle,
                        TransitionReason::ForceReleased,
                        message,
                        now,
                    )
                }
                Some(Holding::Queued(queued)) => {
                    let operation = queued.request.operation.clone();
                    let message = with_reason(
                        format!("request for {} cancelled by a human", operation.name()),
                        reason,
                    );
                    Ok(self.end_request(
                        node,
                        operation,
                        TransitionReason::ForceReleased,
                        message,
                        now,
                    ))
                }
                Some(Holding::Idle) | None => {
                    Err(self.wrong_state(node, "release: nothing is queued or held"))
                }
            },
        }
    }

    /// The drain could not finish: the slot is given back (its token retired) and the request
    /// goes back to the queue, keeping its place, not to be admitted before `not_before`.
    pub fn requeue_after_drain_failure(
        &mut self,
        node: &str,
        token: FencingToken,
        not_before: Timestamp,
        reason: &str,
        now: Timestamp,
    ) -> LedgerResult<Transition> {
        let held = self.held(node, token)?;
        if held.slot.phase != SlotPhase::Draining {
            return Err(self.wrong_state(node, "requeue after a drain: the slot is not draining"));
        }
        let message = with_reason(
            format!("drain could not finish; slot {token} given back, retry after {not_before}"),
            reason,
        );
        let request = SlotRequest {
            node: node.to_owned(),
            operation: held.slot.operation.clone(),
            origin: held.slot.origin,
            requested_at: held.requested_at,
            not_before: Some(not_before),
        };
        let uncordon = held.slot.cordoned_by_rota;
        let ended = held.clone();
        let operation = request.operation.clone();
        self.set_holding(
            node,
            Holding::Queued(QueuedRequest {
                request,
                note: message.clone(),
            }),
        );
        let mut transition = self.transition(
            node,
            NodeState::Draining,
            Some(token),
            operation,
            TransitionReason::DrainFailed,
            message,
            now,
            uncordon,
        );
        transition.held = Some(Box::new(ended));
        Ok(transition)
    }

    /// The Node object is gone: forget it, freeing any slot it held. `None` when it had neither
    /// a request nor a slot.
    pub fn node_deleted(&mut self, node: &str, now: Timestamp) -> Option<Transition> {
        let entry = self.entries.remove(node)?;
        let from = entry.state();
        let (token, operation, held) = match entry.holding {
            Holding::Held(held) => (
                Some(held.slot.token),
                held.slot.operation.clone(),
                Some(Box::new(held)),
            ),
            Holding::Queued(queued) => (None, queued.request.operation, None),
            Holding::Idle => return None,
        };
        Some(Transition {
            node: node.to_owned(),
            from,
            to: NodeState::Idle,
            token,
            operation,
            reason: TransitionReason::NodeDeleted,
            message: "node deleted".to_owned(),
            at: now,
            uncordon: false,
            held,
        })
    }

    /// Stores the scheduler's feedback for a queued request. Returns whether the node's view
    /// changed (false when it is not queued or nothing differs).
    pub fn set_waiting(&mut self, node: &str, waiting: Waiting) -> bool {
        match self.entries.get_mut(node) {
            Some(entry)
                if matches!(entry.holding, Holding::Queued(_)) && entry.waiting != waiting =>
            {
                entry.waiting = waiting;
                true
            }
            _ => false,
        }
    }

    /// Remembers the node's entry so that [`Ledger::rollback`] can restore it.
    pub fn checkpoint(&self, node: &str) -> Checkpoint {
        Checkpoint {
            node: node.to_owned(),
            entry: self.entries.get(node).cloned(),
        }
    }

    /// Restores the node's entry from a checkpoint taken just before a change that could not be
    /// persisted. The fencing counter is never rolled back: a token issued once stays burned.
    pub fn rollback(&mut self, checkpoint: Checkpoint) {
        match checkpoint.entry {
            Some(entry) => {
                self.entries.insert(checkpoint.node, entry);
            }
            None => {
                self.entries.remove(&checkpoint.node);
            }
        }
    }

    fn lease_end(&self, now: Timestamp) -> Timestamp {
        now.saturating_add(self.lease_ttl).unwrap_or(Timestamp::MAX)
    }

    fn wrong_state(&self, node: &str, action: &'static str) -> LedgerError {
        LedgerError::WrongState {
            node: node.to_owned(),
            state: self.state(node),
            action,
        }
    }

    fn stale(&self, node: &str, presented: FencingToken) -> LedgerError {
        LedgerError::StaleToken {
            node: node.to_owned(),
            presented,
            current: self.entries.get(node).and_then(NodeEntry::token),
        }
    }

    fn held(&self, node: &str, token: FencingToken) -> LedgerResult<&HeldSlot> {
        match self.entries.get(node).map(|e| &e.holding) {
            Some(Holding::Held(held)) if held.slot.token == token => Ok(held),
            _ => Err(self.stale(node, token)),
        }
    }

    fn held_mut(&mut self, node: &str, token: FencingToken) -> LedgerResult<&mut HeldSlot> {
        let err = self.stale(node, token);
        match self.entries.get_mut(node).map(|e| &mut e.holding) {
            Some(Holding::Held(held)) if held.slot.token == token => Ok(held),
            _ => Err(err),
        }
    }

    /// Moves a held slot to another phase. `step` inspects (and may amend) the slot and returns
    /// the next phase, or `None` when the current phase does not allow `action`; it is only
    /// called after the token matched, and on `None` nothing has been changed.
    fn change_phase(
        &mut self,
        node: &str,
        token: FencingToken,
        now: Timestamp,
        action: &'static str,
        step: impl FnOnce(&mut HeldSlot, Timestamp) -> Option<Step>,
    ) -> LedgerResult<Transition> {
        let lease_end = self.lease_end(now);
        let before = self.held(node, token)?.clone();
        let held = self.held_mut(node, token)?;
        let Some(next) = step(held, lease_end) else {
            *held = before;
            return Err(self.wrong_state(node, action));
        };
        held.slot.phase = next.phase;
        held.slot.phase_since = now;
        held.note.clone_from(&next.message);
        let operation = held.slot.operation.clone();
        Ok(self.transition(
            node,
            before.slot.phase.into(),
            Some(token),
            operation,
            next.reason,
            next.message,
            now,
            false,
        ))
    }

    /// Ends the node's held slot, recording how. Callers checked that the node holds a slot.
    fn finish(
        &mut self,
        node: &str,
        to: NodeState,
        reason: TransitionReason,
        message: String,
        now: Timestamp,
    ) -> LedgerResult<Transition> {
        let Some(entry) = self
            .entries
            .get_mut(node)
            .filter(|e| matches!(e.holding, Holding::Held(_)))
        else {
            return Err(self.wrong_state(node, "release: no slot is held"));
        };
        let from = entry.state();
        let Holding::Held(held) = std::mem::replace(&mut entry.holding, Holding::Idle) else {
            return Err(LedgerError::WrongState {
                node: node.to_owned(),
                state: from,
                action: "release: no slot is held",
            });
        };
        entry.waiting = Waiting::default();
        entry.last = Some(Finished {
            token: Some(held.slot.token),
            operation: held.slot.operation.clone(),
            reason,
            at: now,
            message: message.clone(),
        });
        Ok(Transition {
            node: node.to_owned(),
            from,
            to,
            token: Some(held.slot.token),
            operation: held.slot.operation.clone(),
            reason,
            message,
            at: now,
            uncordon: held.slot.cordoned_by_rota,
            held: Some(Box::new(held)),
        })
    }

    /// Ends the node's queued request, recording how.
    fn end_request(
        &mut self,
        node: &str,
        operation: Operation,
        reason: TransitionReason,
        message: String,
        now: Timestamp,
    ) -> Transition {
        self.set_holding(node, Holding::Idle);
        if let Some(entry) = self.entries.get_mut(node) {
            entry.last = Some(Finished {
                token: None,
                operation: operation.clone(),
                reason,
                at: now,
                message: message.clone(),
            });
        }
        self.transition(
            node,
            NodeState::Queued,
            None,
            operation,
            reason,
            message,
            now,
            false,
        )
    }

    fn set_holding(&mut self, node: &str, holding: Holding) {
        let entry = self
            .entries
            .entry(node.to_owned())
            .or_insert_with(NodeEntry::idle);
        if !matches!(holding, Holding::Queued(_)) {
            entry.waiting = Waiting::default();
        }
        entry.holding = holding;
    }

    #[allow(clippy::too_many_arguments)]
    fn transition(
        &self,
        node: &str,
        from: NodeState,
        token: Option<FencingToken>,
        operation: Operation,
        reason: TransitionReason,
        message: String,
        at: Timestamp,
        uncordon: bool,
    ) -> Transition {
        Transition {
            node: node.to_owned(),
            from,
            to: self.state(node),
            token,
            operation,
            reason,
            message,
            at,
            uncordon,
            held: match self.entries.get(node).map(|e| &e.holding) {
                Some(Holding::Held(held)) => Some(Box::new(held.clone())),
                _ => None,
            },
        }
    }
}

/// The next phase of a held slot, chosen by a [`Ledger::change_phase`] step.
struct Step {
    phase: SlotPhase,
    reason: TransitionReason,
    message: String,
}

/// A human's reboot and a package upgrade that meet on one node, as one request: the merged
/// operation, with manual priority. `None` unless one side is a manual request that always
/// reboots and the other a package upgrade.
fn merged(
    (current, current_origin): (&Operation, Origin),
    (new, new_origin): (&Operation, Origin),
) -> Option<(Operation, Origin)> {
    let carrying = |origin: Origin, reboot: &Operation, other: &Operation| {
        (origin == Origin::Manual)
            .then(|| Operation::merge_manual_reboot(reboot, other))
            .flatten()
    };
    carrying(current_origin, current, new)
        .or_else(|| carrying(new_origin, new, current))
        .map(|op| (op, Origin::Manual))
}

fn origin_name(origin: Origin) -> &'static str {
    match origin {
        Origin::Manual => "manual",
        Origin::Agent => "agent",
        Origin::FleetLock => "FleetLock client",
        Origin::Rollout => "Kubernetes upgrade rollout",
    }
}

fn with_reason(message: String, reason: &str) -> String {
    if reason.is_empty() {
        message
    } else {
        bounded(format!("{message}: {reason}"))
    }
}

/// Longest text the ledger keeps in one note or message, in bytes. Notes end up in node
/// annotations (256 KiB in total per object) and Events, so callers' text is cut here.
pub const MAX_NOTE_BYTES: usize = 2048;

/// Cuts `text` to [`MAX_NOTE_BYTES`] at a character boundary, marking the cut with `…`.
fn bounded(mut text: String) -> String {
    if text.len() > MAX_NOTE_BYTES {
        let mut end = MAX_NOTE_BYTES - '…'.len_utf8();
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        text.truncate(end);
        text.push('…');
    }
    text
}
