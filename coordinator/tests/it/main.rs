//! rota-coordinator's integration tests, one binary (one link of the whole stack instead of one
//! per file): the controller on the emulator, the gRPC and HTTP edges, leader election, TLS,
//! rotactl and the shipped manifests. One module per concern; `*_support` are their shared
//! harnesses.

mod auth_tokenreview;
mod binary_support;
mod blockers_prometheus;
#[path = "../../../tests/src/built.rs"]
#[allow(dead_code)] // only its kubectl and helm are used here
mod built;
mod controller_alerts;
mod controller_fencing;
mod controller_flow;
mod controller_kubernetes;
mod controller_ledger;
mod controller_policy;
mod controller_pools;
mod controller_records;
mod controller_requests;
mod controller_sequential;
mod controller_support;
mod controller_verify;
mod deploy_manifests;
mod deploy_rbac;
mod drain_emulator;
mod grpc_agent;
mod grpc_edge;
mod grpc_not_leading;
#[path = "../../../tests/src/helm.rs"]
mod helm;
mod http_binary;
mod http_probes;
mod leader_election;
mod leader_handover;
mod notify_webhook;
#[path = "../../../tests/src/prerequisites.rs"]
#[allow(dead_code)] // shared with the suites that need root
mod prerequisites;
mod replica_assembly;
mod rotactl_cli;
mod slots_service;
mod tls_bootstrap;
mod tls_grpc;
