//! rota's pure core: the domain model shared by the agent and the coordinator, and every
//! decision rota makes, as plain functions of their inputs and an explicit `now`.
//!
//! This crate performs no I/O: it depends on no async runtime, no Kubernetes client, no gRPC or
//! HTTP stack — its `Cargo.toml` is the proof, and a test of the workspace checks it. The
//! coordinator and the agent are shells around it that read the world, call in here, and carry
//! out what comes back.

pub mod agent_api;
pub mod blockers;
pub mod clock;
pub mod cluster;
pub mod controller;
pub mod drain;
pub mod election;
pub mod fleetlock;
pub mod model;
pub mod node;
pub mod policy;
pub mod records;
pub mod scheduler;
pub mod slots;
pub mod text;
pub mod upgrade;
