//! Slots: who holds the right to disrupt a node, with which fencing token, in which phase.

use std::fmt;

use jiff::Timestamp;
use serde::{Deserialize, Serialize};

use super::Operation;

/// The name of a Kubernetes Node.
pub type NodeName = String;

/// A monotonically increasing fencing token. Every call after a grant carries it; a call with a
/// token other than the slot's current one is refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct FencingToken(pub u64);

impl fmt::Display for FencingToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// Who asked for maintenance; manual on-call requests go first.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum Origin {
    /// An on-call engineer (`rota.dev/maintenance-requested` annotation or `rotactl`).
    Manual,
    /// The node's agent, from what it detected.
    Agent,
    /// A FleetLock client (Zincati) asking to reboot its host (`POST /v1/pre-reboot`).
    FleetLock,
    /// The coordinator, for the pool's Kubernetes upgrade rollout (`upgrade.kubernetesVersion`).
    Rollout,
}

impl Origin {
    /// Whose requests an agent's or a FleetLock client's may not replace: a human's, and the
    /// rollout's (the agent would otherwise replace it with its package upgrade at every facts
    /// report, and the rollout put it back at every pass).
    pub fn outranks_automatic(self) -> bool {
        matches!(self, Origin::Manual | Origin::Rollout)
    }
}

/// A queued request for a slot.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SlotRequest {
    /// The node to maintain.
    pub node: NodeName,
    /// What to do.
    pub operation: Operation,
    /// Who asked.
    pub origin: Origin,
    /// When it was first queued (FIFO order within a priority class).
    pub requested_at: Timestamp,
    /// Not to be admitted before this time (back-off after a drain that could not finish).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub not_before: Option<Timestamp>,
}

/// Where a node's slot is in its life.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum SlotPhase {
    /// Admitted; the coordinator cordons and drains the node.
    Draining,
    /// Drained; the agent performs the operation.
    Granted,
    /// The agent reported completion; the coordinator checks the node's health.
    Verifying,
    /// Maintenance failed; capacity stays held until the node recovers or a human releases it.
    Failed,
}

impl SlotPhase {
    /// Stable lower-case name.
    pub fn as_str(self) -> &'static str {
        match self {
            SlotPhase::Draining => "draining",
            SlotPhase::Granted => "granted",
            SlotPhase::Verifying => "verifying",
            SlotPhase::Failed => "failed",
        }
    }
}

/// A held maintenance slot: a lease with a fencing token.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Slot {
    /// The node holding it.
    pub node: NodeName,
    /// The operation it was granted for.
    pub operation: Operation,
    /// Who asked for it.
    pub origin: Origin,
    /// Its fencing token.
    pub token: FencingToken,
    /// Its phase.
    pub phase: SlotPhase,
    /// When it was admitted.
    pub admitted_at: Timestamp,
    /// When the phase last changed.
    pub phase_since: Timestamp,
    /// When the drain finished and the slot was granted: the agent acts only after it, so what
    /// the health gate sees must post-date it. `None` before the grant (and in slots recorded by
    /// coordinators that did not record it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub granted_at: Option<Timestamp>,
    /// Lease expiry; renewed by the agent. Expiry alone never frees capacity.
    pub lease_expires_at: Timestamp,
    /// Boot id when the slot was admitted, to tell that a reboot happened.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub boot_id_before: Option<String>,
    /// Whether rota cordoned the node (so that only then it uncordons it).
    pub cordoned_by_rota: bool,
}
