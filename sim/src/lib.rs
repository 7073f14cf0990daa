//! rota-sim: an emulated Kubernetes API server and a simulated cluster that rota's real code
//! runs against, for end-to-end tests, the demo and benchmarks.

pub mod apiserver;
pub mod cluster;
pub mod demo;
pub mod real;
