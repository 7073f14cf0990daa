//! The API the agents call, in domain types: what the coordinator's gRPC edge serves once it
//! has authenticated the caller and turned the wire messages into these types, and what the
//! coordinator's slot service implements. Defined here, in the pure core, so that the edge and
//! the implementations depend on it rather than on each other.

use std::future::Future;

use futures_core::Stream;
use jiff::SignedDuration;

use crate::model::{FencingToken, NodeFacts, NodePolicy, Operation};
use crate::slots::{self, Completion, Release, SlotView};

/// What the gRPC edge needs from the coordinator's core. Node names and tokens are validated
/// and the caller is authorised before any of these is called.
pub trait AgentCore: Send + Sync + 'static {
    /// The node's views as [`AgentCore::watch_slot`] yields them: the current one first, then
    /// every change (intermediate ones may be skipped: the latest always comes); it ends when
    /// the node is deleted.
    type SlotUpdates: Stream<Item = SlotView> + Send + Unpin + 'static;

    /// Stores the node's facts; returns the policy of the node's pool, `None` when no single
    /// valid policy selects the node (the agent then follows its own settings).
    fn report_facts(
        &self,
        node: &str,
        facts: NodeFacts,
    ) -> impl Future<Output = slots::Result<Option<NodePolicy>>> + Send;

    /// Queues (idempotently) a request for `operation`.
    fn request_slot(
        &self,
        node: &str,
        operation: Operation,
    ) -> impl Future<Output = slots::Result<SlotView>> + Send;

    /// Follows the node's view (see [`AgentCore::SlotUpdates`]).
    fn watch_slot(&self, node: &str) -> slots::Result<Self::SlotUpdates>;

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
