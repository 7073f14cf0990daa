//! The gRPC edge: a tonic server for `rota.v1.Agent`.
//!
//! The edge authenticates the caller ([`Authenticator`]), checks that it acts for its own node,
//! turns proto messages into domain types ([`convert`]), calls the coordinator's core through
//! the API it serves ([`AgentCore`], implemented by the slot service and, on a replica that may
//! not lead, by the gate in front of it) and maps domain errors to `tonic::Status` ([`status`])
//! — here and nowhere else.
//!
//! The [`edge`] authenticates every call from its headers before the body is read and bounds
//! connections, streams, concurrent calls and request sizes.
//!
//! Status codes: `UNAUTHENTICATED` (no or bad credential), `INVALID_ARGUMENT` (malformed request,
//! unset operation), `PERMISSION_DENIED` (the caller is another node), `NOT_FOUND` (unknown
//! node), `FAILED_PRECONDITION` (stale token, or the node's state does not allow the call),
//! `OUT_OF_RANGE` (request over its method's limit, [`edge::request_limit`]), `RESOURCE_EXHAUSTED`
//! (over the edge's concurrency limits; retry), `ABORTED` (a
//! concurrent writer; retry), `UNAVAILABLE` (this replica does not lead, or the persistence or
//! identity backend is down or too many new tokens wait for review; retry).
//!
//! [`AgentCore`]: rota_core::agent_api::AgentCore

mod auth;
pub mod convert;
pub mod edge;
mod server;
pub mod status;

pub use auth::{
    AuthError, Authenticator, MAX_TOKEN_BYTES, StaticAuthenticator, bearer_token, token_shape,
};
pub use edge::EdgeLimits;
pub use server::{AgentGrpc, AgentService, Handler, ShutdownHandle, serve};

/// Largest message the server decodes or encodes (1 MiB); larger ones are refused with
/// `OUT_OF_RANGE` before they are parsed.
pub const MAX_MESSAGE_BYTES: usize = 1024 * 1024;
