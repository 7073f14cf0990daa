//! The gRPC edge: a tonic server for `rota.v1.Agent`.
//!
//! The edge authenticates the caller ([`Authenticator`]), checks that it acts for its own node,
//! turns proto messages into domain types ([`convert`]), calls the coordinator's core through
//! the API it serves ([`AgentCore`], implemented by the slot service and, on a replica that may
//! not lead, by the gate in front of it) and maps domain errors to `tonic::Status` ([`status`])
//! — here and nowhere else.
//!
//! Status codes: `UNAUTHENTICATED` (no or bad credential), `INVALID_ARGUMENT` (malformed request,
//! unset operation), `PERMISSION_DENIED` (the caller is another node), `NOT_FOUND` (unknown
//! node), `FAILED_PRECONDITION` (stale token, or the node's state does not allow the call),
//! `OUT_OF_RANGE` (message over [`MAX_MESSAGE_BYTES`], from tonic's codec), `ABORTED` (a
//! concurrent writer; retry), `UNAVAILABLE` (this replica does not lead, or the persistence or
//! identity backend is down; retry).
//!
//! [`AgentCore`]: rota_core::agent_api::AgentCore

mod auth;
pub mod convert;
mod server;
pub mod status;

pub use auth::{AuthError, Authenticator, StaticAuthenticator, bearer_token};
pub use server::{AgentGrpc, ShutdownHandle, serve};

/// Largest message the server decodes or encodes (1 MiB); larger ones are refused with
/// `OUT_OF_RANGE` before they are parsed.
pub const MAX_MESSAGE_BYTES: usize = 1024 * 1024;
