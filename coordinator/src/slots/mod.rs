//! Maintenance slots: who may disrupt which node, with fencing tokens.
//!
//! - [`ledger`]: the pure per-node state machine and the fencing counter (no I/O, explicit `now`);
//!   [`entry`] is what it keeps per node, [`transition`] what each change reports.
//! - [`persist`]: the ledger's persisted form (node annotations under `rota.dev/`, the counter
//!   ConfigMap) and the rebuild a restarted coordinator does.
//! - [`store`]: the [`LedgerStore`] trait the Kubernetes writer implements, and an in-memory one.
//! - [`service`]: [`SlotService`], the live ledger shared by the gRPC edge and the controller:
//!   persists every change before acknowledging it, publishes each node's [`SlotView`] on a
//!   watch channel, and emits every [`Transition`] for Events and metrics.

pub mod entry;
pub mod ledger;
pub mod persist;
pub mod service;
pub mod store;
pub mod transition;

pub use entry::{
    CompletionReport, Finished, HeldSlot, Holding, NodeEntry, ProgressNote, QueuedRequest,
    SlotView, Waiting,
};
pub use ledger::{Checkpoint, Ledger, LedgerError, LedgerResult, Release};
pub use persist::PersistError;
pub use service::{Clock, Completion, SlotEvent, SlotService, SlotServiceConfig, SystemClock};
pub use store::{LedgerStore, MemoryStore, StoreError, StoredState};
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
    /// The change could not be persisted; it was undone.
    #[error("could not persist slot state: {0}")]
    Store(#[from] StoreError),
    /// Persisted state could not be encoded or decoded.
    #[error(transparent)]
    Persist(#[from] PersistError),
}

/// Result of the slot layer.
pub type Result<T, E = Error> = std::result::Result<T, E>;
