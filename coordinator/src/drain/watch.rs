//! The watch a drain runs while it works: the pods on its node (to list them and to see them go),
//! feeding an index published on a `tokio::sync::watch` channel, so that any number of eviction
//! tasks can wait on a change without polling the API server. The budgets come from the cluster
//! cache's one index instead ([`crate::store::ClusterCache::pdb_feed`]).

use std::collections::HashMap;
use std::fmt::Debug;

use futures::StreamExt;
use k8s_openapi::api::core::v1::Pod;
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Resource, ResourceExt};
use serde::de::DeserializeOwned;
use tokio::sync::watch;
use tokio::task::JoinSet;
use tracing::{Instrument, Span, debug, warn};

use rota_core::drain::PodRef;

use crate::store::Synced;

/// What an index does with watch events.
pub trait ObjectIndex<K>: Default + Send + Sync + 'static {
    /// An object was added or changed.
    fn apply(&mut self, object: &K);
    /// An object was deleted.
    fn delete(&mut self, object: &K);
}

/// The pods bound to one node, by namespace and name.
#[derive(Debug, Default)]
pub struct NodePods {
    pods: HashMap<(String, String), Pod>,
}

impl NodePods {
    /// The pod currently holding this pod's namespace and name, if any.
    pub fn get(&self, namespace: &str, name: &str) -> Option<&Pod> {
        self.pods.get(&(namespace.to_owned(), name.to_owned()))
    }

    /// Whether the pod is gone from the node: deleted, or replaced by a pod with another UID.
    pub fn is_gone(&self, pod: &PodRef) -> bool {
        self.get(&pod.namespace, &pod.name)
            .is_none_or(|current| current.metadata.uid.as_deref() != Some(pod.uid.as_str()))
    }

    /// All pods, sorted by namespace and name.
    pub fn pods(&self) -> Vec<Pod> {
        let mut pods: Vec<(&(String, String), &Pod)> = self.pods.iter().collect();
        pods.sort_by(|a, b| a.0.cmp(b.0));
        pods.into_iter().map(|(_, pod)| pod.clone()).collect()
    }
}

impl ObjectIndex<Pod> for NodePods {
    fn apply(&mut self, object: &Pod) {
        self.pods.insert(key(object), object.clone());
    }

    fn delete(&mut self, object: &Pod) {
        let key = key(object);
        // A DELETED event of an older incarnation must not remove its replacement.
        if self.pods.get(&key).map(|p| &p.metadata.uid) == Some(&object.metadata.uid) {
            self.pods.remove(&key);
        }
    }
}

fn key(pod: &Pod) -> (String, String) {
    (pod.namespace().unwrap_or_default(), pod.name_any())
}

/// Starts a watch on `tasks` that maintains an `I` and publishes it.
///
/// The task lives until `tasks` is dropped or aborted; watch errors are logged and retried with
/// kube's default backoff, so a flaky API server delays the index instead of ending the drain.
pub fn spawn<K, I>(
    tasks: &mut JoinSet<()>,
    api: Api<K>,
    config: watcher::Config,
    what: &'static str,
) -> watch::Receiver<Synced<I>>
where
    K: Resource + Clone + DeserializeOwned + Debug + Send + Sync + 'static,
    I: ObjectIndex<K>,
{
    let (tx, rx) = watch::channel(Synced::<I>::default());
    let span = Span::current();
    tasks.spawn(
        async move {
            let stream = watcher(api, config).default_backoff();
            let mut stream = std::pin::pin!(stream);
            // Objects of a (re)list are buffered and swapped in at once, so that waiters never
            // see a half-listed index.
            let mut relist: Option<I> = None;
            while let Some(event) = stream.next().await {
                match event {
                    Ok(watcher::Event::Init) => relist = Some(I::default()),
                    Ok(watcher::Event::InitApply(object)) => {
                        if let Some(index) = relist.as_mut() {
                            index.apply(&object);
                        }
                    }
                    Ok(watcher::Event::InitDone) => {
                        if let Some(index) = relist.take() {
                            debug!(what, "watch listed");
                            tx.send_modify(|state| {
                                state.index = index;
                                state.listed = true;
                            });
                        }
                    }
                    Ok(watcher::Event::Apply(object)) => {
                        tx.send_modify(|state| state.index.apply(&object));
                    }
                    Ok(watcher::Event::Delete(object)) => {
                        tx.send_modify(|state| state.index.delete(&object));
                    }
                    Err(error) => warn!(what, %error, "watch failed; retrying"),
                }
            }
        }
        .instrument(span),
    );
    rx
}

#[cfg(test)]
mod tests {
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

    use super::*;

    fn pod(name: &str, uid: &str) -> Pod {
        Pod {
            metadata: ObjectMeta {
                namespace: Some("a".into()),
                name: Some(name.into()),
                uid: Some(uid.into()),
                ..ObjectMeta::default()
            },
            ..Pod::default()
        }
    }

    fn pod_ref(name: &str, uid: &str) -> PodRef {
        PodRef {
            namespace: "a".into(),
            name: name.into(),
            uid: uid.into(),
        }
    }

    #[test]
    fn gone_means_deleted_or_replaced() {
        let mut pods = NodePods::default();
        pods.apply(&pod("p", "1"));
        assert!(!pods.is_gone(&pod_ref("p", "1")));
        assert!(pods.is_gone(&pod_ref("q", "1")));

        pods.apply(&pod("p", "2"));
        assert!(pods.is_gone(&pod_ref("p", "1")));
        assert!(!pods.is_gone(&pod_ref("p", "2")));

        // The old incarnation's DELETED event arrives late: the replacement stays.
        pods.delete(&pod("p", "1"));
        assert!(!pods.is_gone(&pod_ref("p", "2")));
        pods.delete(&pod("p", "2"));
        assert!(pods.is_gone(&pod_ref("p", "2")));
    }

    #[test]
    fn pods_are_sorted() {
        let mut pods = NodePods::default();
        for name in ["c", "a", "b"] {
            pods.apply(&pod(name, name));
        }
        let names: Vec<String> = pods.pods().iter().map(|p| p.name_any()).collect();
        assert_eq!(names, ["a", "b", "c"]);
    }
}
