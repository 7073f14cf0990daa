//! What the ledger keeps per node ([`NodeEntry`]) and what an agent sees of it ([`SlotView`]).

use std::num::NonZeroU32;

use jiff::{SignedDuration, Timestamp};

use super::transition::{NodeState, TransitionReason};
use crate::model::{FencingToken, NodeName, NodePolicy, Operation, PackagePin, Slot, SlotRequest};

/// The latest progress note of a granted operation (`ReportProgress`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProgressNote {
    /// Step, e.g. "upgrading", "rebooting".
    pub step: String,
    /// Detail.
    pub message: String,
    /// When it was reported.
    pub at: Timestamp,
}

/// What the agent reported when the operation finished (`Complete`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CompletionReport {
    /// Whether the operation succeeded on the node.
    pub success: bool,
    /// The agent's detail.
    pub message: String,
    /// Boot id after the operation, for the reboot check.
    pub boot_id: Option<String>,
    /// Whether the operation rebooted the node.
    pub rebooted: bool,
    /// How many packages the operation changed.
    pub changed_packages: u32,
    /// The packages it changed, `(name, version after)` (at most
    /// [`MAX_CHANGED_PACKAGES`] of them; `changed_packages` counts them all), for the
    /// maintenance record.
    pub changed: Vec<PackagePin>,
    /// When it was reported.
    pub at: Timestamp,
}

/// Most changed packages a [`CompletionReport`] keeps (it is persisted with the slot).
pub const MAX_CHANGED_PACKAGES: usize = 512;

/// Scheduler feedback for a queued request (not persisted: the next evaluation recomputes it).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Waiting {
    /// 1-based position in the pool's queue.
    pub position: Option<NonZeroU32>,
    /// Every reason the request waits.
    pub reasons: Vec<String>,
}

/// A queued request and the note of how it got there.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct QueuedRequest {
    /// The request.
    pub request: SlotRequest,
    /// Message of the latest transition (e.g. why it was re-queued).
    pub note: String,
}

/// A held slot with what the ledger knows about its progress.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HeldSlot {
    /// The slot.
    pub slot: Slot,
    /// When the request was first queued; kept so a re-queue keeps its place.
    pub requested_at: Timestamp,
    /// Message of the latest transition.
    pub note: String,
    /// Latest progress report.
    pub progress: Option<ProgressNote>,
    /// The agent's completion report, once it completed.
    pub completion: Option<CompletionReport>,
}

/// What the boot ids say about a reboot, for the verifier (`docs/architecture.md`, step 6: after a reboot the
/// boot id must have changed).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RebootEvidence {
    /// The agent has not completed yet.
    Pending,
    /// The agent reports no reboot (the operation did not need one).
    NotRebooted,
    /// The agent reports a reboot and the boot id changed since admission.
    Confirmed,
    /// The agent reports a reboot but the boot id is the one from before: do not believe it.
    BootIdUnchanged,
    /// A boot id is missing, so the reboot cannot be checked.
    Unverifiable,
}

impl HeldSlot {
    /// Compares the boot id at admission with the one the agent reported on completion.
    pub fn reboot_evidence(&self) -> RebootEvidence {
        let Some(completion) = &self.completion else {
            return RebootEvidence::Pending;
        };
        if !completion.rebooted {
            return RebootEvidence::NotRebooted;
        }
        match (&self.slot.boot_id_before, &completion.boot_id) {
            (Some(before), Some(after)) if before == after => RebootEvidence::BootIdUnchanged,
            (Some(_), Some(_)) => RebootEvidence::Confirmed,
            _ => RebootEvidence::Unverifiable,
        }
    }
}

/// How the node's latest slot or request ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Finished {
    /// The slot's token; `None` for a request withdrawn before admission.
    pub token: Option<FencingToken>,
    /// The operation.
    pub operation: Operation,
    /// The transition that ended it.
    pub reason: TransitionReason,
    /// When.
    pub at: Timestamp,
    /// Its message.
    pub message: String,
}

/// What a node currently has in the ledger.
#[expect(
    clippy::large_enum_variant,
    reason = "one entry per node, most of them holding a request or a slot: boxing the slot \
              would save nothing and add an allocation per admission"
)]
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Holding {
    /// Nothing queued or held.
    Idle,
    /// A request waits.
    Queued(QueuedRequest),
    /// A slot is held.
    Held(HeldSlot),
}

/// One node's ledger entry; its persisted form is the node's `rota.dev/` annotations.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeEntry {
    /// Current request or slot.
    pub holding: Holding,
    /// How the latest slot or request ended.
    pub last: Option<Finished>,
    /// Scheduler feedback while queued.
    pub waiting: Waiting,
}

impl NodeEntry {
    pub(super) fn idle() -> Self {
        NodeEntry {
            holding: Holding::Idle,
            last: None,
            waiting: Waiting::default(),
        }
    }

    /// The node's state.
    pub fn state(&self) -> NodeState {
        match &self.holding {
            Holding::Queued(_) => NodeState::Queued,
            Holding::Held(held) => held.slot.phase.into(),
            Holding::Idle => match &self.last {
                Some(last) if last.reason == TransitionReason::Verified => NodeState::Done,
                _ => NodeState::Idle,
            },
        }
    }

    pub(super) fn is_empty(&self) -> bool {
        matches!(self.holding, Holding::Idle) && self.last.is_none()
    }

    pub(super) fn token(&self) -> Option<FencingToken> {
        match &self.holding {
            Holding::Held(held) => Some(held.slot.token),
            Holding::Idle | Holding::Queued(_) => None,
        }
    }
}

/// What an agent sees of its node (the domain form of `rota.v1.SlotStatus`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SlotView {
    /// The node.
    pub node: NodeName,
    /// Its state.
    pub state: NodeState,
    /// The operation queued, held, or (when done) finished.
    pub operation: Option<Operation>,
    /// The slot's fencing token from admission on (and of the finished slot when done).
    pub token: Option<FencingToken>,
    /// Position in the pool's queue while queued, once the scheduler has placed it.
    pub queue_position: Option<NonZeroU32>,
    /// Why the request waits.
    pub waiting_reasons: Vec<String>,
    /// Lease time-to-live; the agent renews well within it.
    pub lease_ttl: SignedDuration,
    /// Human-readable detail of the latest transition.
    pub message: String,
    /// The policy of the node's pool; from the grant on, the one in force when the slot was
    /// granted (what the agent performs the operation under). `None` when no single valid
    /// policy selects the node.
    pub policy: Option<NodePolicy>,
}

/// The agent's report that its operation finished (`Complete`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Completion {
    /// Whether the operation succeeded.
    pub success: bool,
    /// The agent's detail.
    pub message: String,
    /// Boot id now.
    pub boot_id: Option<String>,
    /// Whether the operation rebooted the node.
    pub rebooted: bool,
    /// Packages changed: `(name, version after)`.
    pub changed: Vec<PackagePin>,
}
