//! Watch fan-out: every write is published once on a broadcast channel and kept in a bounded
//! history; each watch filters that stream through its own namespace and selectors, so that a
//! watch can resume from a resourceVersion (and gets 410 Expired once that version has left the
//! history).

use std::sync::Arc;

use serde_json::Value;
use tokio::sync::broadcast;

use super::{EventType, ListOptions, State, Store, StoreEvent};
use crate::apiserver::error::{Error, Result};
use crate::apiserver::meta;
use crate::apiserver::resources::{GroupResource, ResourceInfo};
use crate::apiserver::selector::{FieldSelector, LabelSelector};

/// Type of a watch event as sent on the wire.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WatchEventType {
    /// `ADDED`.
    Added,
    /// `MODIFIED`.
    Modified,
    /// `DELETED`.
    Deleted,
    /// `BOOKMARK`.
    Bookmark,
    /// `ERROR`.
    Error,
}

impl WatchEventType {
    /// The wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            WatchEventType::Added => "ADDED",
            WatchEventType::Modified => "MODIFIED",
            WatchEventType::Deleted => "DELETED",
            WatchEventType::Bookmark => "BOOKMARK",
            WatchEventType::Error => "ERROR",
        }
    }
}

/// A watch event for one watcher (selectors already applied).
#[derive(Clone, Debug)]
pub struct WatchEvent {
    /// Type.
    pub event_type: WatchEventType,
    /// Object (or `Status` for errors).
    pub object: Arc<Value>,
}
/// The namespace and selectors of one list or watch, parsed.
#[derive(Clone, Debug)]
pub(super) struct Filter {
    resource: GroupResource,
    /// `None`: all namespaces (always for cluster-scoped resources).
    pub(super) namespace: Option<String>,
    labels: LabelSelector,
    fields: FieldSelector,
}

impl Filter {
    /// Parse `opts` for `resource` (described by `info`); a bad selector is a 400.
    pub(super) fn new(
        resource: &GroupResource,
        info: &ResourceInfo,
        namespace: Option<&str>,
        opts: &ListOptions,
    ) -> Result<Self> {
        let labels = LabelSelector::parse(opts.label_selector.as_deref().unwrap_or_default())?;
        let fields = FieldSelector::parse(
            opts.field_selector.as_deref().unwrap_or_default(),
            &info.group,
            &info.plural,
        )?;
        // A namespace on a cluster-scoped resource is ignored, as upstream does.
        let namespace = if info.namespaced {
            namespace.filter(|n| !n.is_empty())
        } else {
            None
        };
        Ok(Filter {
            resource: resource.clone(),
            namespace: namespace.map(str::to_string),
            labels,
            fields,
        })
    }

    /// Whether the selectors (not the namespace) match `obj`.
    pub(super) fn selects(&self, obj: &Value) -> bool {
        self.labels.matches(obj) && self.fields.matches(obj)
    }

    fn matches(&self, obj: &Value) -> bool {
        if let Some(ns) = &self.namespace
            && meta::namespace(obj) != ns
        {
            return false;
        }
        self.selects(obj)
    }

    /// Translate a store event for this watcher: an object that starts or stops matching the
    /// selectors is ADDED or DELETED, as the API server's watch cache does.
    fn translate(&self, event: &StoreEvent) -> Option<WatchEvent> {
        if event.resource != self.resource {
            return None;
        }
        let now = self.matches(&event.object);
        let event_type = match event.event_type {
            EventType::Added => now.then_some(WatchEventType::Added)?,
            EventType::Deleted => now.then_some(WatchEventType::Deleted)?,
            EventType::Modified => {
                let before = event.previous.as_ref().is_some_and(|p| self.matches(p));
                match (before, now) {
                    (true, true) => WatchEventType::Modified,
                    (false, true) => WatchEventType::Added,
                    (true, false) => WatchEventType::Deleted,
                    (false, false) => return None,
                }
            }
        };
        Some(WatchEvent {
            event_type,
            object: event.object.clone(),
        })
    }
}

/// A watch in progress: the events due before the live stream, then the live stream.
pub struct Subscription {
    /// Events to send first (the current state for a watch without a resourceVersion, or the
    /// history after the requested one).
    pub initial: Vec<WatchEvent>,
    /// The store's resourceVersion when the watch started.
    pub start_resource_version: u64,
    /// The resourceVersion of the last store event this subscription has seen (sent or
    /// filtered out); a bookmark may carry it.
    pub last_resource_version: u64,
    rx: broadcast::Receiver<Arc<StoreEvent>>,
    filter: Filter,
}

impl Subscription {
    /// The next live event for this watcher. `None` when the store is gone or the watcher fell
    /// so far behind that events were dropped; the client then re-watches from its last
    /// resourceVersion, as it does after any closed watch.
    pub async fn next(&mut self) -> Option<WatchEvent> {
        loop {
            match self.rx.recv().await {
                Ok(event) => {
                    if event.resource_version <= self.last_resource_version {
                        continue;
                    }
                    self.last_resource_version = event.resource_version;
                    if let Some(out) = self.filter.translate(&event) {
                        return Some(out);
                    }
                }
                Err(_) => return None,
            }
        }
    }

    /// The watched resource.
    pub fn resource(&self) -> &GroupResource {
        &self.filter.resource
    }
}

impl State {
    /// Keep `event` in the history (dropping the oldest beyond the limit) and send it to every
    /// subscriber.
    pub(super) fn publish(&mut self, event: StoreEvent) {
        let event = Arc::new(event);
        self.history.push_back(event.clone());
        while self.history.len() > self.history_limit {
            if let Some(old) = self.history.pop_front() {
                self.history_floor = old.resource_version;
            }
        }
        // No receivers is fine: nobody watches.
        let _ = self.events.send(event);
    }

    fn subscribe(
        &self,
        resource: &GroupResource,
        namespace: Option<&str>,
        opts: &ListOptions,
        from_rv: Option<u64>,
    ) -> Result<Subscription> {
        let info = self.served(resource)?;
        let filter = Filter::new(resource, info, namespace, opts)?;
        let initial = match from_rv {
            None => self
                .iter_objects(resource, filter.namespace.as_deref())
                .filter(|o| filter.matches(o))
                .map(|o| WatchEvent {
                    event_type: WatchEventType::Added,
                    object: o.clone(),
                })
                .collect(),
            Some(rv) => {
                if rv < self.history_floor {
                    return Err(Error::Expired {
                        requested: rv,
                        oldest: self.history_floor + 1,
                    });
                }
                self.history
                    .iter()
                    .filter(|e| e.resource_version > rv)
                    .filter_map(|e| filter.translate(e))
                    .collect()
            }
        };
        Ok(Subscription {
            initial,
            start_resource_version: self.rv,
            last_resource_version: self.rv,
            rx: self.events.subscribe(),
            filter,
        })
    }
}

impl Store {
    /// Watch a resource. `from_rv: None` starts with the current state as ADDED events (a watch
    /// without a resourceVersion); `Some(rv)` replays the history after `rv` and fails with 410
    /// when it is no longer held.
    pub fn subscribe(
        &self,
        resource: &GroupResource,
        namespace: Option<&str>,
        opts: &ListOptions,
        from_rv: Option<u64>,
    ) -> Result<Subscription> {
        self.lock().subscribe(resource, namespace, opts, from_rv)
    }

    /// Watch as a stream of events (see [`Store::subscribe`]).
    pub fn watch(
        &self,
        resource: &GroupResource,
        namespace: Option<&str>,
        opts: &ListOptions,
        from_rv: Option<u64>,
    ) -> Result<futures::stream::BoxStream<'static, WatchEvent>> {
        let mut sub = self.subscribe(resource, namespace, opts, from_rv)?;
        let initial = std::mem::take(&mut sub.initial);
        let live = futures::stream::unfold(sub, |mut sub| async move {
            let event = sub.next().await?;
            Some((event, sub))
        });
        Ok(futures::StreamExt::boxed(futures::StreamExt::chain(
            futures::stream::iter(initial),
            live,
        )))
    }

    /// Forgets the watch history, as an etcd compaction does: a watch resuming from any
    /// resourceVersion older than the newest now gets 410 Expired and must list again.
    pub fn compact(&self) {
        let mut state = self.lock();
        state.history.clear();
        state.history_floor = state.rv;
    }

    /// Every store write of every resource, for in-process controllers. A receiver that lags
    /// behind gets `RecvError::Lagged` and should resynchronise from lists.
    pub fn subscribe_all(&self) -> broadcast::Receiver<Arc<StoreEvent>> {
        self.lock().events.subscribe()
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::super::fixtures::{pod, pods};
    use super::*;
    use crate::apiserver::PatchKind;
    use crate::apiserver::store::ResourceKey;

    #[test]
    fn compaction_expires_every_older_resource_version() {
        let store = Store::new();
        let a = store
            .create(&pods(), Some("default"), pod("a", None))
            .unwrap();
        let rv_a = meta::resource_version(&a).unwrap();
        store
            .create(&pods(), Some("default"), pod("b", None))
            .unwrap();
        let newest = store.resource_version();
        let resume = |rv| store.subscribe(&pods(), None, &ListOptions::default(), Some(rv));
        assert!(resume(rv_a).is_ok(), "held before the compaction");
        store.compact();
        assert_eq!(resume(rv_a).err().unwrap().code(), 410);
        assert!(resume(newest).is_ok(), "the newest version resumes");
    }

    #[tokio::test]
    async fn watch_resumes_and_expires() {
        use futures::StreamExt;
        let store = Store::with_config(3, rota_core::clock::system());
        let a = store
            .create(&pods(), Some("default"), pod("a", None))
            .unwrap();
        let rv_a = meta::resource_version(&a).unwrap();
        store
            .create(&pods(), Some("default"), pod("b", None))
            .unwrap();
        let mut w = store
            .watch(
                &pods(),
                Some("default"),
                &ListOptions::default(),
                Some(rv_a),
            )
            .unwrap();
        let ev = w.next().await.unwrap();
        assert_eq!(ev.event_type, WatchEventType::Added);
        assert_eq!(meta::name(&ev.object), "b");
        for i in 0..5 {
            store
                .create(
                    &GroupResource::core("configmaps"),
                    Some("default"),
                    json!({"metadata": {"name": format!("c{i}")}}),
                )
                .unwrap();
        }
        assert_eq!(
            store
                .watch(&pods(), None, &ListOptions::default(), Some(rv_a))
                .err()
                .unwrap()
                .code(),
            410
        );
        store
            .create(&pods(), Some("default"), pod("c", None))
            .unwrap();
        let ev = w.next().await.unwrap();
        assert_eq!(meta::name(&ev.object), "c");
    }

    #[tokio::test]
    async fn watch_selector_transitions() {
        use futures::StreamExt;
        let store = Store::new();
        let mut w = store
            .watch(&pods(), None, &ListOptions::labels("app=web"), None)
            .unwrap();
        store
            .create(&pods(), Some("default"), pod("a", None))
            .unwrap();
        assert_eq!(w.next().await.unwrap().event_type, WatchEventType::Added);
        let key = ResourceKey::new(pods(), Some("default"), "a");
        store
            .patch(
                &key,
                &PatchKind::Merge,
                &json!({"metadata": {"labels": {"app": "db"}}}),
            )
            .unwrap();
        assert_eq!(w.next().await.unwrap().event_type, WatchEventType::Deleted);
        store
            .patch(
                &key,
                &PatchKind::Merge,
                &json!({"metadata": {"labels": {"app": "web"}}}),
            )
            .unwrap();
        assert_eq!(w.next().await.unwrap().event_type, WatchEventType::Added);
    }
}
