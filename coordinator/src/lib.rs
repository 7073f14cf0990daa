//! rota's coordinator: decides which node may be disrupted when, drains it, and holds the fleet's
//! safety invariants.

pub mod model;
pub mod policy;
pub mod scheduler;
pub mod blockers;
pub mod drain;
pub mod kube_client;
pub mod slots;
pub mod grpc;
pub mod auth;
pub mod config;
pub mod events;
pub mod http;
pub mod leader;
pub mod handover;
pub mod metrics;
pub mod shutdown;
pub mod telemetry;
pub mod store;
pub mod controller;
pub mod notify;
pub mod tls;
pub mod rotactl;
