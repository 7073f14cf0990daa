//! The controller's decisions, as functions of the cluster's state, the slot ledger, the policies
//! and an explicit `now`: what each pass admits, drains, verifies, releases, requeues and writes
//! back. The coordinator's controller loop performs them.
//!
//! - [`decide`]: one pass, from inputs to the actions to perform;
//! - [`snapshot`]: the scheduler's snapshot from the cluster state;
//! - [`pools`]: which policy is in force for which nodes, and the pools' counts;
//! - [`drained`]: what follows the end of a drain (grant, or give back with a back-off);
//! - [`verify`]: whether a node came back healthy after its maintenance;
//! - [`annotations`]: the `rota.dev/` annotations humans and rota write on Nodes.

pub mod annotations;
pub mod decide;
pub mod drained;
pub mod pools;
pub mod rollout;
pub mod snapshot;
pub mod verify;
