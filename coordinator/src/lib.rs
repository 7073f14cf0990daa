//! rota's coordinator: decides which node may be disrupted when, drains it, and holds the fleet's
//! safety invariants.

pub mod auth;
pub mod blockers;
pub mod config;
pub mod controller;
pub mod core_gate;
pub mod drain;
pub mod events;
pub mod fleetlock;
pub mod grpc;
pub mod handover;
pub mod http;
pub mod kube_client;
pub mod leader;
pub mod metrics;
pub mod notify;
pub mod records;
pub mod replica;
pub mod rotactl;
pub mod shutdown;
pub mod slot_service;
pub mod store;
pub mod telemetry;
pub mod tls;
