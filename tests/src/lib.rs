//! rota judged as a whole: the harness the suites of this crate share.
//!
//! The suites themselves are the crate's test targets, one folder per kind (see `Cargo.toml`):
//! `e2e/` runs the real coordinators and agents on the emulated cluster through whole rollouts
//! and faults, with [`e2e`] as their common ground; `kubectl/` drives the real `kubectl`
//! against the emulated API server, as the oracle of what a Kubernetes client expects from it;
//! `real/` runs the real control plane ([`control_plane`]: kube-apiserver, etcd, the
//! controller-manager and the scheduler, built from Go modules by `control-plane/build.sh`);
//! `vm/` boots a Debian guest under qemu where the real agent maintains a real machine ([`vm`]).

pub mod built;
pub mod control_plane;
pub mod debs;
pub mod e2e;
pub mod helm;
pub mod kubectl;
pub mod prerequisites;
pub mod real_rollout;
pub mod shipped;
pub mod vm;
