//! The gRPC edge: a tonic server for `rota.v1.Agent`.
//!
//! The edge authenticates the caller ([`Authenticator`]), checks that it acts for its own node,
//! turns proto messages into domain types ([`convert`]), calls the coordinator's core
//! ([`AgentCore`], implemented by [`rota_core::slots::SlotService`]) and maps domain errors to
//! `tonic::Status` ([`status`]) — here and nowhere else.
//!
//! Status codes: `UNAUTHENTICATED` (no or bad credential), `INVALID_ARGUMENT` (malformed request,
//! unset operation), `PERMISSION_DENIED` (the caller is another node), `NOT_FOUND` (unknown
//! node), `FAILED_PRECONDITION` (stale token, or the node's state does not allow the call),
//! `OUT_OF_RANGE` (message over [`MAX_MESSAGE_BYTES`], from tonic's codec), `ABORTED` (a
//! concurrent writer; retry), `UNAVAILABLE` (this replica does not lead, or the persistence or
//! identity backend is down; retry).

mod auth;
pub mod convert;
mod server;
pub mod status;
use crate::slot_service::SlotService;

use std::future::Future;

use jiff::SignedDuration;
use tokio::sync::watch;

pub use auth::{AuthError, Authenticator, StaticAuthenticator, bearer_token};
pub use server::{AgentGrpc, ShutdownHandle, serve};

use rota_core::model::{FencingToken, NodeFacts, Operation, Origin};
use rota_core::slots::{self, Completion, LedgerStore, Release, SlotView};

/// Largest message the server decodes or encodes (1 MiB); larger ones are refused with
/// `OUT_OF_RANGE` before they are parsed.
pub const MAX_MESSAGE_BYTES: usize = 1024 * 1024;

/// What the gRPC edge needs from the coordinator's core. Node names and tokens are validated
/// and the caller is authorised before any of these is called.
pub trait AgentCore: Send + Sync + 'static {
    /// Stores the node's facts.
    fn report_facts(
        &self,
        node: &str,
        facts: NodeFacts,
    ) -> impl Future<Output = slots::Result<()>> + Send;

    /// Queues (idempotently) a request for `operation`.
    fn request_slot(
        &self,
        node: &str,
        operation: Operation,
    ) -> impl Future<Output = slots::Result<SlotView>> + Send;

    /// Follows the node's view; the channel closes when the node is deleted.
    fn watch_slot(&self, node: &str) -> slots::Result<watch::Receiver<SlotView>>;

    /// Renews the slot's lease; returns the lease TTL.
    fn renew(
        &self,
        node: &str,
        token: FencingToken,
    ) -> impl Future<Output = slots::Result<SignedDuration>> + Send;

    /// Records the agent's progress.
    fn report_progress(
        &self,
        node: &str,
        token: FencingToken,
        step: String,
        message: String,
    ) -> impl Future<Output = slots::Result<()>> + Send;

    /// The operation finished on the node.
    fn complete(
        &self,
        node: &str,
        token: FencingToken,
        completion: Completion,
    ) -> impl Future<Output = slots::Result<SlotView>> + Send;

    /// Gives a request ([`Release::Withdraw`]) or a slot ([`Release::Holder`]) back.
    fn release(
        &self,
        node: &str,
        release: Release,
        reason: String,
    ) -> impl Future<Output = slots::Result<()>> + Send;
}

impl<S: LedgerStore> AgentCore for SlotService<S> {
    async fn report_facts(&self, node: &str, facts: NodeFacts) -> slots::Result<()> {
        SlotService::report_facts(self, node, facts)
    }

    async fn request_slot(&self, node: &str, operation: Operation) -> slots::Result<SlotView> {
        self.request(node, operation, Origin::Agent).await
    }

    fn watch_slot(&self, node: &str) -> slots::Result<watch::Receiver<SlotView>> {
        self.watch(node)
    }

    async fn renew(&self, node: &str, token: FencingToken) -> slots::Result<SignedDuration> {
        SlotService::renew(self, node, token).await?;
        Ok(self.read(|ledger| ledger.lease_ttl()).await)
    }

    async fn report_progress(
        &self,
        node: &str,
        token: FencingToken,
        step: String,
        message: String,
    ) -> slots::Result<()> {
        self.progress(node, token, step, message).await
    }

    async fn complete(
        &self,
        node: &str,
        token: FencingToken,
        completion: Completion,
    ) -> slots::Result<SlotView> {
        SlotService::complete(self, node, token, completion).await
    }

    async fn release(&self, node: &str, release: Release, reason: String) -> slots::Result<()> {
        SlotService::release(self, node, release, &reason).await?;
        Ok(())
    }
}
