//! End-to-end scenarios, one binary: the real coordinators and agents (built through the same
//! code as the binaries) on the emulated cluster, judged by the independent monitor. One module
//! per scenario family; `cargo test -p rota-tests --test e2e <module>::` runs one.

mod agent;
mod campaign;
mod control_plane;
mod coordinator;
mod fleetlock;
mod kubernetes_upgrade;
mod node_faults;
mod operators;
mod rollout;
