//! rota-sim's integration tests, one binary: the emulated API server, the simulated cluster and
//! the demo. One module per concern.

mod apiserver_kube;
mod apiserver_serve;
mod cluster_host;
mod cluster_rolling_reboot;
mod cluster_scenario;
mod cluster_workloads;
mod demo_cli;
mod demo_kured;
mod demo_rota;
