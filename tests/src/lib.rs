//! rota judged as a whole: the harness the suites of this crate share.
//!
//! The suites themselves are the crate's test targets, one folder per kind (see `Cargo.toml`):
//! `e2e/` runs the real coordinators and agents on the emulated cluster through whole rollouts
//! and faults, with [`e2e`] as their common ground; `kubectl/` drives the real `kubectl`
//! against the emulated API server, as the oracle of what a Kubernetes client expects from it.

pub mod e2e;
pub mod kubectl;
