//! The pods of the node a drain empties, as the cluster cache sees them: listed to plan the
//! drain, and followed to see each pod go. One task per drain republishes the node's pods on a
//! `tokio::sync::watch` channel whenever they change in the cache, so that any number of
//! eviction tasks can wait on a change — without a watch of the API server of its own.

use std::collections::BTreeMap;
use std::sync::Arc;

use k8s_openapi::api::core::v1::Pod;
use kube::ResourceExt;
use rota_core::cluster::{ClusterState, Kind};
use rota_core::drain::PodRef;
use tokio::sync::watch;
use tokio::task::JoinSet;

use crate::store::{ClusterCache, Synced};

/// The pods bound to one node, by namespace and name.
#[derive(Debug, Default, PartialEq)]
pub struct NodePods {
    pods: BTreeMap<(String, String), Arc<Pod>>,
}

impl NodePods {
    /// The pods the cluster state has on `node`.
    pub fn of(state: &ClusterState, node: &str) -> Self {
        NodePods {
            pods: state
                .pods_on(node)
                .map(|pod| {
                    (
                        (pod.namespace().unwrap_or_default(), pod.name_any()),
                        pod.clone(),
                    )
                })
                .collect(),
        }
    }

    /// One pod, if it is on the node.
    pub fn get(&self, namespace: &str, name: &str) -> Option<&Pod> {
        self.pods
            .get(&(namespace.to_owned(), name.to_owned()))
            .map(AsRef::as_ref)
    }

    /// Whether `pod` is gone: deleted, or replaced by a pod of the same name (another UID).
    pub fn is_gone(&self, pod: &PodRef) -> bool {
        self.get(&pod.namespace, &pod.name)
            .is_none_or(|current| current.metadata.uid.as_deref() != Some(pod.uid.as_str()))
    }

    /// Every pod, sorted by namespace and name.
    pub fn pods(&self) -> Vec<Pod> {
        self.pods.values().map(|pod| Pod::clone(pod)).collect()
    }
}

/// Follows `node`'s pods in `cache` with a task in `tasks` (dropping the set stops it).
pub fn follow(
    tasks: &mut JoinSet<()>,
    cache: &ClusterCache,
    node: &str,
) -> watch::Receiver<Synced<NodePods>> {
    let read = |cache: &ClusterCache, node: &str| {
        let state = cache.read();
        Synced {
            index: NodePods::of(&state, node),
            listed: state.is_listed(Kind::Pods),
        }
    };
    let (tx, rx) = watch::channel(read(cache, node));
    let (cache, node) = (cache.clone(), node.to_owned());
    tasks.spawn(async move {
        let mut changes = cache.changes();
        while changes.changed().await.is_ok() {
            let now = read(&cache, &node);
            tx.send_if_modified(|published| {
                let changed = published.index != now.index || published.listed != now.listed;
                if changed {
                    *published = now;
                }
                changed
            });
        }
    });
    rx
}

#[cfg(test)]
mod tests {
    use k8s_openapi::api::core::v1::PodSpec;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
    use rota_core::cluster::Indexed;

    use super::*;

    fn pod(name: &str, uid: &str) -> Pod {
        Pod {
            metadata: ObjectMeta {
                namespace: Some("a".into()),
                name: Some(name.into()),
                uid: Some(uid.into()),
                ..ObjectMeta::default()
            },
            spec: Some(PodSpec {
                node_name: Some("n1".into()),
                ..PodSpec::default()
            }),
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
        let mut state = ClusterState::default();
        Pod::insert(&mut state, pod("p", "1"));
        let pods = NodePods::of(&state, "n1");
        assert!(!pods.is_gone(&pod_ref("p", "1")));
        assert!(pods.is_gone(&pod_ref("q", "1")));
        assert!(NodePods::of(&state, "n2").is_gone(&pod_ref("p", "1")));

        Pod::insert(&mut state, pod("p", "2"));
        let pods = NodePods::of(&state, "n1");
        assert!(pods.is_gone(&pod_ref("p", "1")));
        assert!(!pods.is_gone(&pod_ref("p", "2")));

        Pod::remove(&mut state, &pod("p", "2"));
        assert!(NodePods::of(&state, "n1").is_gone(&pod_ref("p", "2")));
    }

    #[test]
    fn pods_are_sorted() {
        let mut state = ClusterState::default();
        for name in ["c", "a", "b"] {
            Pod::insert(&mut state, pod(name, name));
        }
        let names: Vec<String> = NodePods::of(&state, "n1")
            .pods()
            .iter()
            .map(|p| p.name_any())
            .collect();
        assert_eq!(names, ["a", "b", "c"]);
    }
}
