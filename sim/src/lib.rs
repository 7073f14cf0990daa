//! rota-sim: an emulated Kubernetes API server and a simulated cluster that rota's real code
//! runs against, for end-to-end tests, the demo and benchmarks; and the simulated nodes on a
//! real control plane built from Go modules ([`real`]).

pub mod apiserver;
pub mod cluster;
pub mod demo;
pub mod real;
