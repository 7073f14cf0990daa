//! The agents' pods as the authenticator sees them: a watch of the agents' namespace, so that a
//! cached identity is dropped as soon as its pod is deleted or replaced.
//!
//! The authenticator keeps its own watch rather than reading the controller's cluster cache:
//! that cache lives only while this replica leads, while every replica authenticates (a
//! standby answers UNAVAILABLE only after the caller is known). The namespace holds the agents
//! and the coordinator's replicas, so the index is small.

use std::collections::HashMap;
use std::sync::{Arc, PoisonError, RwLock};

use futures::StreamExt;
use k8s_openapi::api::core::v1::Pod;
use kube::Api;
use kube::runtime::WatchStreamExt;
use kube::runtime::watcher::{self, Event};

use super::review::AgentPod;

#[derive(Debug, Default)]
struct Index {
    pods: HashMap<String, AgentPod>,
    listed: bool,
}

/// The pods of the agents' namespace, by name. Clones share the index.
#[derive(Clone, Debug, Default)]
pub struct AgentPods {
    index: Arc<RwLock<Index>>,
}

/// What the index says about a pod.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Lookup {
    /// Not listed yet: the index cannot tell.
    Unknown,
    /// The pod does not exist.
    Gone,
    /// The pod.
    Found(AgentPod),
}

impl AgentPods {
    /// The pod named `name`, as far as the index knows.
    pub fn get(&self, name: &str) -> Lookup {
        let index = self.index.read().unwrap_or_else(PoisonError::into_inner);
        if !index.listed {
            return Lookup::Unknown;
        }
        match index.pods.get(name) {
            Some(pod) => Lookup::Found(pod.clone()),
            None => Lookup::Gone,
        }
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, Index> {
        self.index.write().unwrap_or_else(PoisonError::into_inner)
    }

    /// Applies one watch event.
    fn apply(&self, event: Event<Pod>, listing: &mut HashMap<String, AgentPod>) {
        let name = |pod: &Pod| pod.metadata.name.clone().unwrap_or_default();
        match event {
            Event::Init => listing.clear(),
            Event::InitApply(pod) => {
                listing.insert(name(&pod), AgentPod::of(&pod));
            }
            Event::InitDone => {
                let mut index = self.write();
                index.pods = std::mem::take(listing);
                index.listed = true;
            }
            Event::Apply(pod) => {
                self.write().pods.insert(name(&pod), AgentPod::of(&pod));
            }
            Event::Delete(pod) => {
                let mut index = self.write();
                let gone = index
                    .pods
                    .get(&name(&pod))
                    .is_some_and(|known| Some(&known.uid) == pod.metadata.uid.as_ref());
                if gone {
                    index.pods.remove(&name(&pod));
                }
            }
        }
    }

    /// Follows the pods of `api` (the agents' namespace) into the index; returns only if the
    /// watch stream ends, which it does not on its own (errors are retried with back-off).
    pub async fn follow(self, api: Api<Pod>) -> String {
        let stream = watcher::watcher(api, watcher::Config::default()).default_backoff();
        futures::pin_mut!(stream);
        let mut listing = HashMap::new();
        while let Some(event) = stream.next().await {
            match event {
                Ok(event) => self.apply(event, &mut listing),
                Err(error) => tracing::warn!(%error, "the agent pod watch failed; retrying"),
            }
        }
        "the agent pod watch".to_owned()
    }
}

#[cfg(test)]
mod tests {
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

    use super::*;

    fn pod(name: &str, uid: &str) -> Pod {
        Pod {
            metadata: ObjectMeta {
                name: Some(name.into()),
                uid: Some(uid.into()),
                ..ObjectMeta::default()
            },
            ..Pod::default()
        }
    }

    #[test]
    fn deletions_and_replacements_are_seen() {
        let pods = AgentPods::default();
        let mut listing = HashMap::new();
        assert_eq!(pods.get("a"), Lookup::Unknown);
        pods.apply(Event::Init, &mut listing);
        pods.apply(Event::InitApply(pod("a", "u1")), &mut listing);
        assert_eq!(pods.get("a"), Lookup::Unknown, "not listed in full yet");
        pods.apply(Event::InitDone, &mut listing);
        assert!(matches!(pods.get("a"), Lookup::Found(p) if p.uid == "u1"));
        // Replaced under the same name: the new UID is what counts.
        pods.apply(Event::Apply(pod("a", "u2")), &mut listing);
        // A late deletion of the old pod does not remove the new one.
        pods.apply(Event::Delete(pod("a", "u1")), &mut listing);
        assert!(matches!(pods.get("a"), Lookup::Found(p) if p.uid == "u2"));
        pods.apply(Event::Delete(pod("a", "u2")), &mut listing);
        assert_eq!(pods.get("a"), Lookup::Gone);
        // A relist replaces the index.
        pods.apply(Event::Apply(pod("b", "u3")), &mut listing);
        pods.apply(Event::Init, &mut listing);
        pods.apply(Event::InitApply(pod("c", "u4")), &mut listing);
        pods.apply(Event::InitDone, &mut listing);
        assert_eq!(pods.get("b"), Lookup::Gone);
        assert!(matches!(pods.get("c"), Lookup::Found(_)));
    }
}
