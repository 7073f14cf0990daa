//! rota-core's integration tests, one binary: the policy, scheduler, slots and upgrade logic
//! through the crate's public API, and the crate's purity. One module per concern.

mod election;
mod policy_crd;
mod policy_selector;
mod policy_validate;
mod policy_window;
mod purity;
mod records;
mod scheduler_props;
mod scheduler_reasons;
mod slots_ledger;
mod slots_persist;
mod slots_props;
mod slots_restore;
mod upgrade_props;
