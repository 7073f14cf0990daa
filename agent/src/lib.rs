//! rota's node agent: finds what the node needs (reboot sentinels, kernel drift, pending
//! package upgrades), performs the operation the coordinator grants (package upgrade, kubelet
//! restart, Kubernetes upgrade, reboot) through a [`host::Host`], persists its state across the
//! reboot, and reports back.
//!
//! Layout: `host/` (where commands and files go), `detect/` (what the node needs),
//! `packages/` (apt, dnf), `kubernetes/` (repository switch, kubeadm, etcd snapshots), `ops/` (one granted operation: a pure state machine and its
//! executor), `settings.rs` (the agent's flags under its pool's policy), `state.rs` (what
//! survives a reboot), `daemon/` (the `run` loop against the
//! coordinator), `cli.rs` (the `rota-agent` command line).

pub mod cli;
pub mod daemon;
pub mod detect;
mod error;
pub mod host;
pub mod kubernetes;
pub mod ops;
pub mod packages;
pub mod settings;
pub mod state;
pub mod tls;

pub use error::{Error, Result};
