//! Where the ledger is persisted: the [`LedgerStore`] trait (implemented over the Kubernetes API
//! by the controller) and [`MemoryStore`], an in-memory implementation with the same
//! optimistic-concurrency behaviour, for tests and the simulator.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::{Mutex, MutexGuard, PoisonError};

use super::persist::{NodeAnnotations, StoredState};
use crate::model::NodeName;

/// Why a store operation failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The object changed since it was read (HTTP 409): another writer is active.
    #[error("{what} was modified concurrently (expected resourceVersion {expected:?})")]
    Conflict {
        /// Which object.
        what: String,
        /// The resourceVersion the write expected.
        expected: Option<String>,
    },
    /// The writer no longer leads (or does not yet): it wrote nothing, and that is not a
    /// failure of the backend.
    #[error("this coordinator replica does not lead; nothing was written")]
    NotLeading,
    /// The backend failed (network, API server, permissions).
    #[error("store backend: {0}")]
    Backend(#[source] Box<dyn std::error::Error + Send + Sync>),
}

/// Persistence of the ledger. The coordinator's Kubernetes writer implements it; one
/// [`super::SlotService`] serialises every call, so implementations need no ordering of their own.
pub trait LedgerStore: Send + Sync + 'static {
    /// Reads the counter, every Node's annotations and every ledger object.
    fn load(&self) -> impl Future<Output = Result<StoredState, StoreError>> + Send;

    /// Writes the counter's new value (with the ledger marker) if its `resourceVersion` is
    /// still `expected` (`None`: create it; it must not exist). Returns the new
    /// `resourceVersion`; a mismatch is [`StoreError::Conflict`].
    fn store_counter(
        &self,
        last_token: u64,
        expected: Option<&str>,
    ) -> impl Future<Output = Result<String, StoreError>> + Send;

    /// Writes one node's records: first its ledger object (replaced at the version last read or
    /// written, a change by anyone else being [`StoreError::Conflict`]; deleted when every
    /// record is `None`), then the same records as the Node's annotation mirror (`None` values
    /// remove keys), e.g. as a merge patch built by [`NodeAnnotations::merge_patch`].
    fn store_node(
        &self,
        node: &str,
        annotations: &NodeAnnotations,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// Rewrites only the Node's annotation mirror (a repair after a mismatch).
    fn store_mirror(
        &self,
        node: &str,
        annotations: &NodeAnnotations,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// Deletes the node's ledger object (the node is gone, or a migration discards it), if
    /// there is one.
    fn forget_node(&self, node: &str) -> impl Future<Output = Result<(), StoreError>> + Send;
}

#[derive(Debug, Default)]
struct MemoryState {
    stored: StoredState,
    counter_generation: u64,
    failing: bool,
    writes: u64,
}

/// An in-memory [`LedgerStore`]: the counter behaves like an object with a `resourceVersion`,
/// ledger objects and annotation mirrors are written together, writes to unknown nodes fail
/// like a patch of a missing Node, and failures can be injected.
#[derive(Debug, Default)]
pub struct MemoryStore {
    state: Mutex<MemoryState>,
}

impl MemoryStore {
    /// An empty store holding the given Nodes (without annotations).
    pub fn with_nodes<I, N>(nodes: I) -> Self
    where
        I: IntoIterator<Item = N>,
        N: Into<NodeName>,
    {
        let store = MemoryStore::default();
        {
            let mut state = store.lock();
            for node in nodes {
                state.stored.nodes.insert(node.into(), BTreeMap::new());
            }
        }
        store
    }

    /// A store holding `state`, e.g. another store's [`MemoryStore::snapshot`] (what a restarted
    /// coordinator reads back).
    pub fn from_state(state: StoredState) -> Self {
        let counter_generation = state
            .counter_version
            .as_deref()
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        MemoryStore {
            state: Mutex::new(MemoryState {
                stored: state,
                counter_generation,
                ..MemoryState::default()
            }),
        }
    }

    /// Adds a Node (as the cluster would).
    pub fn add_node(&self, node: &str) {
        self.lock().stored.nodes.entry(node.to_owned()).or_default();
    }

    /// Deletes a Node with its annotations (as the cluster would; its ledger object stays).
    pub fn delete_node(&self, node: &str) {
        self.lock().stored.nodes.remove(node);
    }

    /// Makes every following write fail (`true`) or succeed again (`false`).
    pub fn set_failing(&self, failing: bool) {
        self.lock().failing = failing;
    }

    /// Overwrites the counter as another writer would, changing its `resourceVersion`.
    pub fn write_counter_externally(&self, last_token: u64) {
        let mut state = self.lock();
        state.counter_generation += 1;
        state.stored.last_token = last_token;
        state.stored.counter_version = Some(state.counter_generation.to_string());
    }

    /// What is stored now.
    pub fn snapshot(&self) -> StoredState {
        self.lock().stored.clone()
    }

    /// How many writes succeeded.
    pub fn writes(&self) -> u64 {
        self.lock().writes
    }

    fn lock(&self) -> MutexGuard<'_, MemoryState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The state, for a write: fails when failures are injected.
    fn writable(&self) -> Result<MutexGuard<'_, MemoryState>, StoreError> {
        let state = self.lock();
        if state.failing {
            return Err(injected_failure());
        }
        Ok(state)
    }
}

fn missing(node: &str) -> StoreError {
    StoreError::Backend(Box::new(std::io::Error::new(
        std::io::ErrorKind::NotFound,
        format!("node {node} not found"),
    )))
}

fn injected_failure() -> StoreError {
    StoreError::Backend(Box::new(std::io::Error::other("injected store failure")))
}

impl LedgerStore for MemoryStore {
    async fn load(&self) -> Result<StoredState, StoreError> {
        Ok(self.lock().stored.clone())
    }

    async fn store_counter(
        &self,
        last_token: u64,
        expected: Option<&str>,
    ) -> Result<String, StoreError> {
        let mut state = self.writable()?;
        if state.stored.counter_version.as_deref() != expected {
            return Err(StoreError::Conflict {
                what: "fencing counter".to_owned(),
                expected: expected.map(str::to_owned),
            });
        }
        state.counter_generation += 1;
        let version = state.counter_generation.to_string();
        state.stored.last_token = last_token;
        state.stored.counter_version = Some(version.clone());
        state.stored.legacy = false;
        state.writes += 1;
        Ok(version)
    }

    async fn store_node(
        &self,
        node: &str,
        annotations: &NodeAnnotations,
    ) -> Result<(), StoreError> {
        let mut state = self.writable()?;
        if !state.stored.nodes.contains_key(node) {
            return Err(missing(node));
        }
        if annotations.is_empty() {
            state.stored.ledger.remove(node);
        } else {
            state
                .stored
                .ledger
                .insert(node.to_owned(), annotations.clone());
        }
        mirror(&mut state, node, annotations)
    }

    async fn store_mirror(
        &self,
        node: &str,
        annotations: &NodeAnnotations,
    ) -> Result<(), StoreError> {
        let mut state = self.writable()?;
        mirror(&mut state, node, annotations)
    }

    async fn forget_node(&self, node: &str) -> Result<(), StoreError> {
        let mut state = self.writable()?;
        state.stored.ledger.remove(node);
        Ok(())
    }
}

/// Writes a Node's annotation mirror, failing like a patch of a missing Node.
fn mirror(
    state: &mut MemoryState,
    node: &str,
    annotations: &NodeAnnotations,
) -> Result<(), StoreError> {
    let Some(existing) = state.stored.nodes.get_mut(node) else {
        return Err(missing(node));
    };
    annotations.apply_to(existing);
    state.writes += 1;
    Ok(())
}
