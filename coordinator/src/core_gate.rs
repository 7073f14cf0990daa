//! [`CoreGate`]: the agents' calls reach the core that the leader's controller installed, and
//! only while it is installed.
//!
//! Every replica serves the agents' gRPC API, but only the leader may act on it: its controller
//! installs its slot service here when its term starts and removes it when the term ends. The
//! gate knows nothing of elections; it only routes.

use std::sync::{Arc, PoisonError, RwLock};

use futures::StreamExt;
use futures::future::BoxFuture;
use futures::stream::BoxStream;
use jiff::SignedDuration;

use rota_core::agent_api::AgentCore;
use rota_core::model::{FencingToken, NodeFacts, NodePolicy, Operation};
use rota_core::slots::{self, Completion, Release, SlotView};

/// The agents' calls go to the core that the leader's controller installed; a replica that
/// does not lead (or whose controller has not started) answers `UNAVAILABLE`, so agents retry
/// and reach the leader through the Service (which routes by `/readyz`).
#[derive(Clone, Default)]
pub struct CoreGate {
    current: Slot<dyn DynCore>,
}

impl std::fmt::Debug for CoreGate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CoreGate")
            .field("open", &self.is_open())
            .finish()
    }
}

/// What the leader installs for its term: empty until then, and again once the [`Installed`]
/// guard is dropped. Clones share it.
pub struct Slot<T: ?Sized> {
    current: Arc<RwLock<Option<Arc<T>>>>,
}

impl<T: ?Sized> Clone for Slot<T> {
    fn clone(&self) -> Self {
        Slot {
            current: self.current.clone(),
        }
    }
}

impl<T: ?Sized> Default for Slot<T> {
    fn default() -> Self {
        Slot {
            current: Arc::new(RwLock::new(None)),
        }
    }
}

impl<T: ?Sized + Send + Sync + 'static> Slot<T> {
    /// Holds `value` until the returned guard is dropped.
    pub fn install(&self, value: Arc<T>) -> Installed {
        *self.current.write().unwrap_or_else(PoisonError::into_inner) = Some(value);
        let current = self.current.clone();
        Installed {
            empty: Box::new(move || {
                *current.write().unwrap_or_else(PoisonError::into_inner) = None;
            }),
        }
    }

    /// What is installed now.
    pub fn get(&self) -> Option<Arc<T>> {
        self.current
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }
}

/// Empties its [`Slot`] when dropped (leader-only work ended).
#[must_use = "the slot is emptied when the guard is dropped"]
pub struct Installed {
    empty: Box<dyn Fn() + Send + Sync>,
}

impl std::fmt::Debug for Installed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Installed").finish_non_exhaustive()
    }
}

impl Drop for Installed {
    fn drop(&mut self) {
        (self.empty)();
    }
}

impl CoreGate {
    /// A closed gate.
    pub fn new() -> Self {
        CoreGate::default()
    }

    /// Routes the agents' calls to `core` until the returned guard is dropped.
    pub fn install<C: AgentCore>(&self, core: Arc<C>) -> Installed {
        let core: Arc<dyn DynCore> = core;
        self.current.install(core)
    }

    /// Whether a core is installed.
    pub fn is_open(&self) -> bool {
        self.current.get().is_some()
    }

    fn core(&self) -> slots::Result<Arc<dyn DynCore>> {
        self.current.get().ok_or(slots::Error::NotLeading)
    }
}

/// [`AgentCore`] in an object-safe form, so that the gate can hold whichever core the
/// controller builds.
trait DynCore: Send + Sync {
    fn report_facts<'a>(
        &'a self,
        node: &'a str,
        facts: NodeFacts,
    ) -> BoxFuture<'a, slots::Result<Option<NodePolicy>>>;
    fn request_slot<'a>(
        &'a self,
        node: &'a str,
        operation: Operation,
    ) -> BoxFuture<'a, slots::Result<SlotView>>;
    fn watch_slot(&self, node: &str) -> slots::Result<BoxStream<'static, SlotView>>;
    fn renew<'a>(
        &'a self,
        node: &'a str,
        token: FencingToken,
    ) -> BoxFuture<'a, slots::Result<SignedDuration>>;
    fn report_progress<'a>(
        &'a self,
        node: &'a str,
        token: FencingToken,
        step: String,
        message: String,
    ) -> BoxFuture<'a, slots::Result<()>>;
    fn complete<'a>(
        &'a self,
        node: &'a str,
        token: FencingToken,
        completion: Completion,
    ) -> BoxFuture<'a, slots::Result<SlotView>>;
    fn release<'a>(
        &'a self,
        node: &'a str,
        release: Release,
        reason: String,
    ) -> BoxFuture<'a, slots::Result<()>>;
}

impl<C: AgentCore> DynCore for C {
    fn report_facts<'a>(
        &'a self,
        node: &'a str,
        facts: NodeFacts,
    ) -> BoxFuture<'a, slots::Result<Option<NodePolicy>>> {
        Box::pin(AgentCore::report_facts(self, node, facts))
    }
    fn request_slot<'a>(
        &'a self,
        node: &'a str,
        operation: Operation,
    ) -> BoxFuture<'a, slots::Result<SlotView>> {
        Box::pin(AgentCore::request_slot(self, node, operation))
    }
    fn watch_slot(&self, node: &str) -> slots::Result<BoxStream<'static, SlotView>> {
        AgentCore::watch_slot(self, node).map(StreamExt::boxed)
    }
    fn renew<'a>(
        &'a self,
        node: &'a str,
        token: FencingToken,
    ) -> BoxFuture<'a, slots::Result<SignedDuration>> {
        Box::pin(AgentCore::renew(self, node, token))
    }
    fn report_progress<'a>(
        &'a self,
        node: &'a str,
        token: FencingToken,
        step: String,
        message: String,
    ) -> BoxFuture<'a, slots::Result<()>> {
        Box::pin(AgentCore::report_progress(self, node, token, step, message))
    }
    fn complete<'a>(
        &'a self,
        node: &'a str,
        token: FencingToken,
        completion: Completion,
    ) -> BoxFuture<'a, slots::Result<SlotView>> {
        Box::pin(AgentCore::complete(self, node, token, completion))
    }
    fn release<'a>(
        &'a self,
        node: &'a str,
        release: Release,
        reason: String,
    ) -> BoxFuture<'a, slots::Result<()>> {
        Box::pin(AgentCore::release(self, node, release, reason))
    }
}

impl AgentCore for CoreGate {
    type SlotUpdates = BoxStream<'static, SlotView>;

    async fn report_facts(
        &self,
        node: &str,
        facts: NodeFacts,
    ) -> slots::Result<Option<NodePolicy>> {
        self.core()?.report_facts(node, facts).await
    }

    async fn request_slot(&self, node: &str, operation: Operation) -> slots::Result<SlotView> {
        self.core()?.request_slot(node, operation).await
    }

    fn watch_slot(&self, node: &str) -> slots::Result<Self::SlotUpdates> {
        self.core()?.watch_slot(node)
    }

    async fn renew(&self, node: &str, token: FencingToken) -> slots::Result<SignedDuration> {
        self.core()?.renew(node, token).await
    }

    async fn report_progress(
        &self,
        node: &str,
        token: FencingToken,
        step: String,
        message: String,
    ) -> slots::Result<()> {
        self.core()?
            .report_progress(node, token, step, message)
            .await
    }

    async fn complete(
        &self,
        node: &str,
        token: FencingToken,
        completion: Completion,
    ) -> slots::Result<SlotView> {
        self.core()?.complete(node, token, completion).await
    }

    async fn release(&self, node: &str, release: Release, reason: String) -> slots::Result<()> {
        self.core()?.release(node, release, reason).await
    }
}
