//! What the API server saw of rota's slots: every fencing token written into a Node's
//! `rota.dev/slot` annotation, with the node it was written on. It follows the store's change
//! stream from before any coordinator starts, so it is the record of what was persisted, not of
//! what a coordinator believed.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use parking_lot::Mutex;
use rota_core::slots::persist::SLOT_ANNOTATION;
use serde_json::Value;
use tokio::sync::broadcast::error::RecvError;
use tokio_util::sync::CancellationToken;

use crate::apiserver::{GroupResource, Store, StoreEvent};

#[derive(Debug, Default)]
struct Inner {
    tokens: BTreeMap<u64, BTreeSet<String>>,
    /// Events were dropped: the record may miss tokens.
    incomplete: bool,
}

/// The tokens persisted on Nodes, as the store saw them.
#[derive(Clone, Debug, Default)]
pub struct SlotRecord {
    inner: Arc<Mutex<Inner>>,
}

/// The token of a `rota.dev/slot` annotation value.
fn slot_token(value: &str) -> Option<u64> {
    let slot: Value = serde_json::from_str(value).ok()?;
    slot.get("token")?.as_u64()
}

impl SlotRecord {
    /// Starts recording `store`'s writes until `cancel`.
    pub(crate) fn start(
        store: &Store,
        cancel: CancellationToken,
    ) -> (SlotRecord, tokio::task::JoinHandle<()>) {
        let record = SlotRecord::default();
        let mut rx = store.subscribe_all();
        let inner = record.inner.clone();
        let nodes = GroupResource::core("nodes");
        let task = tokio::spawn(async move {
            loop {
                let event = tokio::select! {
                    event = rx.recv() => event,
                    () = cancel.cancelled() => return,
                };
                match event {
                    Ok(event) if event.resource == nodes => record_event(&inner, &event),
                    Ok(_) => {}
                    Err(RecvError::Lagged(_)) => inner.lock().incomplete = true,
                    Err(RecvError::Closed) => return,
                }
            }
        });
        (record, task)
    }

    /// Every token and the nodes it was persisted on.
    pub fn tokens(&self) -> BTreeMap<u64, BTreeSet<String>> {
        self.inner.lock().tokens.clone()
    }

    /// Whether the record may miss writes (its subscriber fell behind).
    pub fn incomplete(&self) -> bool {
        self.inner.lock().incomplete
    }
}

fn record_event(inner: &Mutex<Inner>, event: &StoreEvent) {
    let token = event
        .object
        .pointer("/metadata/annotations")
        .and_then(|a| a.get(SLOT_ANNOTATION))
        .and_then(Value::as_str)
        .and_then(slot_token);
    if let Some(token) = token {
        let node = event
            .object
            .pointer("/metadata/name")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string();
        inner.lock().tokens.entry(token).or_default().insert(node);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::apiserver::EventType;
    use serde_json::json;

    fn node_event(name: &str, slot: Option<&str>) -> StoreEvent {
        let mut obj = json!({"metadata": {"name": name, "annotations": {}}});
        if let Some(slot) = slot {
            obj["metadata"]["annotations"][SLOT_ANNOTATION] = json!(slot);
        }
        StoreEvent {
            event_type: EventType::Modified,
            resource: GroupResource::core("nodes"),
            resource_version: 1,
            object: Arc::new(obj),
            previous: None,
        }
    }

    #[test]
    fn tokens_are_recorded_per_node() {
        let inner = Mutex::new(Inner::default());
        record_event(
            &inner,
            &node_event("a", Some(r#"{"token":3,"phase":"draining"}"#)),
        );
        record_event(
            &inner,
            &node_event("a", Some(r#"{"token":3,"phase":"granted"}"#)),
        );
        record_event(
            &inner,
            &node_event("b", Some(r#"{"token":4,"phase":"draining"}"#)),
        );
        record_event(&inner, &node_event("c", None));
        record_event(&inner, &node_event("c", Some("not json")));
        let tokens = inner.lock().tokens.clone();
        assert_eq!(tokens.len(), 2);
        assert_eq!(tokens[&3], BTreeSet::from(["a".to_string()]));
        assert_eq!(tokens[&4], BTreeSet::from(["b".to_string()]));
    }
}
