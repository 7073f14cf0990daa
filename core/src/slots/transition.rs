//! What changed: a node's [`NodeState`] and the [`Transition`] between two states, the message
//! the I/O layer turns into persisted state, a Kubernetes Event and metrics.

use std::fmt;

use jiff::Timestamp;

use super::entry::HeldSlot;
use crate::model::{FencingToken, NodeName, Operation, SlotPhase};

/// Where a node stands, as agents and humans see it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum NodeState {
    /// No request and no slot.
    Idle,
    /// A request waits in the queue.
    Queued,
    /// Admitted: the coordinator cordons and drains the node.
    Draining,
    /// Drained: the agent performs the operation.
    Granted,
    /// The agent reported success; the coordinator checks the node's health.
    Verifying,
    /// Maintenance failed; the slot stays held.
    Failed,
    /// The last slot was verified and released.
    Done,
}

impl NodeState {
    /// Stable lower-case name (logs, metrics labels).
    pub fn as_str(self) -> &'static str {
        match self {
            NodeState::Idle => "idle",
            NodeState::Queued => "queued",
            NodeState::Draining => "draining",
            NodeState::Granted => "granted",
            NodeState::Verifying => "verifying",
            NodeState::Failed => "failed",
            NodeState::Done => "done",
        }
    }

    /// Whether a node in this state holds a slot, i.e. counts against capacity.
    pub fn holds_slot(self) -> bool {
        matches!(
            self,
            NodeState::Draining | NodeState::Granted | NodeState::Verifying | NodeState::Failed
        )
    }
}

impl fmt::Display for NodeState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl From<SlotPhase> for NodeState {
    fn from(phase: SlotPhase) -> Self {
        match phase {
            SlotPhase::Draining => NodeState::Draining,
            SlotPhase::Granted => NodeState::Granted,
            SlotPhase::Verifying => NodeState::Verifying,
            SlotPhase::Failed => NodeState::Failed,
        }
    }
}

/// Why a transition happened; `as_str` is the Kubernetes Event reason.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum TransitionReason {
    /// A new request was queued.
    Requested,
    /// A queued request was replaced (other operation) or raised to manual priority.
    RequestReplaced,
    /// The scheduler admitted the request; a fencing token was issued.
    Admitted,
    /// The node is drained; the agent may act.
    Drained,
    /// The agent reported success; verification starts.
    Completed,
    /// The agent reported that the operation failed.
    OperationFailed,
    /// The node is healthy after the operation; the slot is released.
    Verified,
    /// The coordinator declared the maintenance failed (e.g. verification timed out).
    Failed,
    /// A failed node is healthy again; its slot is released.
    Recovered,
    /// The agent gave its slot back without performing the operation.
    Released,
    /// The agent withdrew a request that was not admitted yet.
    Withdrawn,
    /// A human released the slot or request.
    ForceReleased,
    /// The drain could not finish; the slot was given back and the request re-queued.
    DrainFailed,
    /// The Node object was deleted.
    NodeDeleted,
}

impl TransitionReason {
    /// CamelCase reason for Kubernetes Events and a stable metrics label.
    pub fn as_str(self) -> &'static str {
        match self {
            TransitionReason::Requested => "SlotRequested",
            TransitionReason::RequestReplaced => "SlotRequestReplaced",
            TransitionReason::Admitted => "SlotAdmitted",
            TransitionReason::Drained => "SlotGranted",
            TransitionReason::Completed => "OperationCompleted",
            TransitionReason::OperationFailed => "OperationFailed",
            TransitionReason::Verified => "MaintenanceSucceeded",
            TransitionReason::Failed => "MaintenanceFailed",
            TransitionReason::Recovered => "NodeRecovered",
            TransitionReason::Released => "SlotReleased",
            TransitionReason::Withdrawn => "SlotRequestWithdrawn",
            TransitionReason::ForceReleased => "SlotForceReleased",
            TransitionReason::DrainFailed => "DrainFailed",
            TransitionReason::NodeDeleted => "NodeDeleted",
        }
    }

    /// Whether the transition is a warning for humans (Event type `Warning`).
    pub fn is_warning(self) -> bool {
        matches!(
            self,
            TransitionReason::OperationFailed
                | TransitionReason::Failed
                | TransitionReason::DrainFailed
                | TransitionReason::ForceReleased
        )
    }

    /// Parses [`TransitionReason::as_str`] back (persisted outcomes).
    pub fn parse(s: &str) -> Option<Self> {
        ALL_REASONS.iter().copied().find(|r| r.as_str() == s)
    }
}

const ALL_REASONS: [TransitionReason; 14] = [
    TransitionReason::Requested,
    TransitionReason::RequestReplaced,
    TransitionReason::Admitted,
    TransitionReason::Drained,
    TransitionReason::Completed,
    TransitionReason::OperationFailed,
    TransitionReason::Verified,
    TransitionReason::Failed,
    TransitionReason::Recovered,
    TransitionReason::Released,
    TransitionReason::Withdrawn,
    TransitionReason::ForceReleased,
    TransitionReason::DrainFailed,
    TransitionReason::NodeDeleted,
];

/// One change of a node's state: what the I/O layer persists, records as an Event and counts.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Transition {
    /// The node.
    pub node: NodeName,
    /// State before.
    pub from: NodeState,
    /// State after.
    pub to: NodeState,
    /// The slot's fencing token, when a slot is involved.
    pub token: Option<FencingToken>,
    /// The operation concerned.
    pub operation: Operation,
    /// Why.
    pub reason: TransitionReason,
    /// Human-readable detail (Event note).
    pub message: String,
    /// When.
    pub at: Timestamp,
    /// The transition ended a slot for which rota cordoned the node: uncordon it now.
    pub uncordon: bool,
    /// The slot as the transition left it; for a transition that ended a slot, as it was at
    /// its end (with the agent's completion report). `None` when no slot is held after the
    /// transition and none ended (requests, a drain that gave the slot back).
    pub held: Option<Box<HeldSlot>>,
}

impl Transition {
    /// Whether this transition freed capacity (a slot stopped being held).
    pub fn frees_capacity(&self) -> bool {
        self.from.holds_slot() && !self.to.holds_slot()
    }
}
