//! rota on a real Kubernetes control plane instead of the emulator: the binaries
//! `tests/control-plane/build.sh` builds from Go modules ([`built`]), the control plane run from
//! them ([`control_plane`]), and the demo's rollout on it ([`rollout`]): the simulated nodes as
//! real API clients, rota installed from `deploy/`, the independent monitor judging.

#[path = "../../../tests/src/built.rs"]
pub mod built;
pub mod control_plane;
pub mod demo;
pub mod rollout;
