//! Maintenance slots: who may disrupt which node, with fencing tokens.
//!
//! - [`ledger`]: the pure per-node state machine and the fencing counter (no I/O, explicit `now`);
//!   [`entry`] is what it keeps per node, [`transition`] what each change reports.
//! - [`persist`]: the ledger's persisted form (a ledger object per node in the coordinator's
//!   namespace, mirrored as node annotations under `rota.dev/`; the counter ConfigMap).
//! - [`restore`]: the rebuild a restarted coordinator does, which trusts the ledger objects and
//!   reports (and repairs) every mirror that disagrees.
//! - [`store`]: the [`LedgerStore`] trait the Kubernetes writer implements, and an in-memory one.
//!
//! The live ledger, `SlotService` in the coordinator (`coordinator/src/slot_service.rs`), is
//! shared by the gRPC edge and the controller: it persists every change before acknowledging it,
//! publishes each node's [`SlotView`], and emits every [`Transition`] for Events and metrics.
//!
//! # How the controller drives it
//!
//! 1. On start (after winning leader election): `SlotService::load(store, config, clock)` with
//!    the Kubernetes [`LedgerStore`]; keep the returned event receiver. Feed the Node watch into
//!    `SlotService::node_added` / `SlotService::node_deleted`, and manual annotations into
//!    `request(node, op, Origin::Manual)`; serve agents with `rota_coordinator::grpc::AgentGrpc`.
//! 2. Each scheduling round: `read(|l| (l.queue().cloned().collect(), l.slots().cloned()
//!    .collect()))` plus `SlotService::all_facts` into the scheduler's snapshot; for each
//!    admission `admit(node, cordoned_by_rota)` (returns the fencing token, already persisted),
//!    then cordon and drain; publish the plan's positions and reasons with
//!    `SlotService::set_waiting`.
//! 3. Drain finished: `drained(node, token)`; drain stuck: `requeue_after_drain_failure(node,
//!    token, not_before, why)`. Agent completed: verify the node (Ready, kubelet version,
//!    DaemonSets, and [`HeldSlot::reboot_evidence`] for a reboot), then `verified(node, token)` or
//!    `fail(node, token, why)`; a failed node healthy again: `release(node,
//!    Release::Recovered(token), ..)`; `rotactl release`: `release(node, Release::Force, why)`.
//! 4. For every [`SlotEvent::Transition`]: record an Event (`reason.as_str()`, Warning when
//!    `reason.is_warning()`), count it, and uncordon when `transition.uncordon`; a transition
//!    out of `Draining` that the controller did not cause (the agent released, a human
//!    force-released, the Node was deleted) means: stop that drain. Re-run the
//!    scheduler on transitions and [`SlotEvent::FactsChanged`]. Lease expiry
//!    (`read(|l| l.expired_leases(now).count())`) is for alerts only: it never frees a slot.
//! 5. A [`StoreError::Conflict`] on the fencing counter or a ledger object means another
//!    coordinator writes them: stop acting, and reload only after re-acquiring leadership.
//! 6. On load, every node whose annotation mirror disagreed with its ledger object
//!    ([`Mismatch`]) was repaired already: record an Event and count it.

pub mod entry;
pub mod ledger;
pub mod persist;
pub mod restore;
pub mod store;
pub mod transition;

pub use entry::{
    Completion, CompletionReport, Finished, HeldSlot, Holding, MAX_CHANGED_PACKAGES, NodeEntry,
    ProgressNote, QueuedRequest, RebootEvidence, SlotView, Waiting,
};
pub use ledger::{Checkpoint, Ledger, LedgerError, LedgerResult, Release};
pub use persist::PersistError;
pub use persist::StoredState;
pub use restore::{Disagreement, Mismatch, Restored, restore};
pub use store::{LedgerStore, MemoryStore, StoreError};
pub use transition::{NodeState, Transition, TransitionReason};

use crate::model::NodeName;

/// Errors of the slot layer.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The node is not a known Kubernetes Node.
    #[error("unknown node {0}")]
    UnknownNode(NodeName),
    /// The ledger refused the operation; nothing changed.
    #[error(transparent)]
    Ledger(#[from] LedgerError),
    /// This replica does not lead (or its controller has not started, or its term just ended):
    /// nothing changed, and the caller should retry, reaching the leader.
    #[error("this coordinator replica does not lead (or is still starting); retry")]
    NotLeading,
    /// The change could not be persisted; it was undone.
    #[error("could not persist slot state: {0}")]
    Store(StoreError),
    /// Persisted state could not be encoded or decoded.
    #[error(transparent)]
    Persist(#[from] PersistError),
}

impl From<StoreError> for Error {
    /// A store that refuses to write because this replica stopped leading is not a failing
    /// backend: it is the normal state of a standby, reported as [`Error::NotLeading`].
    fn from(err: StoreError) -> Self {
        match err {
            StoreError::NotLeading => Error::NotLeading,
            other => Error::Store(other),
        }
    }
}

/// Result of the slot layer.
pub type Result<T, E = Error> = std::result::Result<T, E>;
