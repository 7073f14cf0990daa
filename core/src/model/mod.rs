//! The domain model shared by the agent and the coordinator: operations, node facts, the policy
//! a node's agent follows, slots and fencing tokens. One definition each, one serde form each
//! (camelCase), so that what the agent persists, what the coordinator persists and what both
//! log say the same thing.
//!
//! Nothing here performs I/O or reads the clock: times are explicit `jiff::Timestamp`s.

mod facts;
mod node_policy;
mod operation;
mod slot;

pub use facts::{
    Blocked, EtcdFacts, EtcdMember, EtcdSnapshot, Impact, NodeFacts, PackagePin, PendingPackage,
};
pub use node_policy::{EtcdSnapshotPolicy, NodePolicy, SnapshotBefore};
pub use operation::{KubeadmStep, Operation, UpgradeReboot};
pub use slot::{FencingToken, NodeName, Origin, Slot, SlotPhase, SlotRequest};
