//! rota's coordinator: decides which node may be disrupted when, drains it, and holds the fleet's
//! safety invariants.

pub mod auth;
pub mod blockers;
pub mod config;
pub mod controller;
pub mod drain;
pub mod events;
pub mod grpc;
pub mod handover;
pub mod http;
pub mod kube_client;
pub mod leader;
pub mod metrics;
pub mod model;
pub mod notify;
pub mod policy;
pub mod replica;
pub mod rotactl;
pub mod scheduler;
pub mod shutdown;
pub mod slots;
pub mod store;
pub mod telemetry;
pub mod tls;
