//! Deletion: preconditions, graceful pod deletion (`deletionTimestamp` first, removal when the
//! kubelet is done), finalizers, and the cascades a real cluster performs when a namespace or a
//! CustomResourceDefinition goes away.

use std::sync::Arc;

use jiff::{SignedDuration, Timestamp};
use serde_json::{Value, json};

use super::{DeleteOptions, Deleted, EventType, ResourceKey, State};
use crate::apiserver::audit::PodDeletionRecord;
use crate::apiserver::error::Result;
use crate::apiserver::meta;
use crate::apiserver::resources::{GroupResource, ResourceInfo};

impl State {
    /// Delete an object (`via_eviction`: for the eviction subresource, which the audit log
    /// records).
    pub(crate) fn delete(
        &mut self,
        key: &ResourceKey,
        opts: &DeleteOptions,
        now: Timestamp,
        via_eviction: bool,
    ) -> Result<Deleted> {
        self.served(&key.resource)?;
        let old = self.get(key)?;
        opts.preconditions
            .check(&key.resource.qualified(), &key.name, &old)?;
        let is_pod = key.resource.group.is_empty() && key.resource.resource == "pods";
        let grace = if is_pod {
            let mut period = opts
                .grace_period_seconds
                .or_else(|| {
                    old.pointer("/spec/terminationGracePeriodSeconds")
                        .and_then(Value::as_i64)
                })
                .unwrap_or(0);
            if meta::str_at(&old, "/spec/nodeName").is_empty() || meta::pod_terminal(&old) {
                period = 0;
            }
            if period < 0 {
                period = 1;
            }
            period
        } else {
            0
        };
        let has_finalizers = meta::has_finalizers(&old);
        let mut new = (*old).clone();
        let finished;
        if meta::is_terminating(&old) {
            let current_grace = old
                .pointer("/metadata/deletionGracePeriodSeconds")
                .and_then(Value::as_i64);
            match (current_grace, opts.grace_period_seconds) {
                (Some(current), Some(_)) if grace < current => {
                    let start = meta::parse_time(meta::str_at(&old, "/metadata/deletionTimestamp"))
                        .map(|t| t - SignedDuration::from_secs(current))
                        .unwrap_or(now);
                    set_deletion(&mut new, start + SignedDuration::from_secs(grace), grace);
                }
                _ => {
                    return Ok(Deleted {
                        object: old,
                        finished: false,
                    });
                }
            }
            finished = grace == 0 && !has_finalizers;
        } else if grace > 0 {
            set_deletion(&mut new, now + SignedDuration::from_secs(grace), grace);
            finished = false;
        } else if has_finalizers {
            set_deletion(&mut new, now, 0);
            finished = false;
        } else {
            finished = true;
        }
        if opts.dry_run {
            return Ok(Deleted {
                object: Arc::new(new),
                finished,
            });
        }
        let object = if finished {
            self.remove(&key.resource, new, now)
        } else {
            self.write(
                &key.resource,
                new,
                Some(old.clone()),
                EventType::Modified,
                now,
            )
        };
        if is_pod && (!meta::is_terminating(&old) || finished) {
            self.audit.pod_deletions.push(PodDeletionRecord {
                time: now,
                resource_version: self.rv,
                namespace: meta::namespace(&object).to_string(),
                pod: key.name.clone(),
                node: meta::non_empty(meta::str_at(&object, "/spec/nodeName")).map(str::to_string),
                grace_period_seconds: grace,
                via_eviction,
            });
        }
        Ok(Deleted { object, finished })
    }

    /// Remove an object for good and publish DELETED.
    pub(super) fn remove(
        &mut self,
        resource: &GroupResource,
        obj: Value,
        now: Timestamp,
    ) -> Arc<Value> {
        let removed = self.write(resource, obj, None, EventType::Deleted, now);
        if resource.group == "apiextensions.k8s.io"
            && resource.resource == "customresourcedefinitions"
            && let Ok(info) = crate::apiserver::resources::crd_to_info(&removed)
        {
            let gr = info.group_resource();
            self.remove_all(&gr, None, now);
            self.registry.unregister(&gr);
        }
        if resource.group.is_empty() && resource.resource == "namespaces" {
            let ns = meta::name(&removed).to_string();
            let namespaced: Vec<GroupResource> = self
                .registry
                .all()
                .filter(|i| i.namespaced)
                .map(ResourceInfo::group_resource)
                .collect();
            for gr in namespaced {
                self.remove_all(&gr, Some(&ns), now);
            }
        }
        removed
    }

    fn remove_all(&mut self, resource: &GroupResource, namespace: Option<&str>, now: Timestamp) {
        let victims: Vec<Value> = self
            .iter_objects(resource, namespace)
            .map(|o| (**o).clone())
            .collect();
        for v in victims {
            self.write(resource, v, None, EventType::Deleted, now);
        }
    }
}

fn set_deletion(obj: &mut Value, at: Timestamp, grace: i64) {
    if let Some(m) = obj.get_mut("metadata").and_then(Value::as_object_mut) {
        m.insert("deletionTimestamp".into(), json!(meta::format_time(at)));
        m.insert("deletionGracePeriodSeconds".into(), json!(grace));
    }
}

#[cfg(test)]
mod tests {
    use rota_core::clock::ManualClock;

    use super::super::fixtures::{pod, pods};
    use super::*;
    use crate::apiserver::PatchKind;
    use crate::apiserver::store::{ListOptions, Preconditions, Store};

    fn at(secs: i64) -> Timestamp {
        Timestamp::from_second(secs).unwrap_or(Timestamp::UNIX_EPOCH)
    }

    #[test]
    fn graceful_pod_deletion() {
        let clock = Arc::new(ManualClock::new(at(1_000)));
        let store = Store::with_config(100, clock.clone());
        store
            .create(&pods(), Some("default"), pod("a", Some("n1")))
            .unwrap();
        let key = ResourceKey::new(pods(), Some("default"), "a");
        let d = store.delete(&key, &DeleteOptions::default()).unwrap();
        assert!(!d.finished);
        assert_eq!(d.object["metadata"]["deletionGracePeriodSeconds"], 30);
        assert_eq!(
            d.object["metadata"]["deletionTimestamp"],
            "1970-01-01T00:17:10Z"
        );
        clock.set(at(1_005));
        let again = store
            .delete(
                &key,
                &DeleteOptions {
                    grace_period_seconds: Some(10),
                    ..Default::default()
                },
            )
            .unwrap();
        assert_eq!(
            again.object["metadata"]["deletionTimestamp"],
            "1970-01-01T00:16:50Z"
        );
        let done = store
            .delete(
                &key,
                &DeleteOptions {
                    grace_period_seconds: Some(0),
                    ..Default::default()
                },
            )
            .unwrap();
        assert!(done.finished);
        assert_eq!(store.get(&key).unwrap_err().code(), 404);
        let unscheduled = store
            .create(&pods(), Some("default"), pod("b", None))
            .unwrap();
        let d = store
            .delete(
                &ResourceKey::new(pods(), Some("default"), "b"),
                &DeleteOptions::default(),
            )
            .unwrap();
        assert!(d.finished);
        assert!(meta::resource_version(&d.object) > meta::resource_version(&unscheduled));
        assert_eq!(store.pod_deletions().len(), 3);
    }

    #[test]
    fn delete_preconditions_and_finalizers() {
        let store = Store::new();
        let gr = GroupResource::core("configmaps");
        store
            .create(
                &gr,
                Some("default"),
                json!({"metadata": {"name": "c", "finalizers": ["x"]}}),
            )
            .unwrap();
        let key = ResourceKey::new(gr, Some("default"), "c");
        let bad = DeleteOptions {
            preconditions: Preconditions {
                uid: Some("nope".into()),
                ..Default::default()
            },
            ..Default::default()
        };
        assert_eq!(store.delete(&key, &bad).unwrap_err().code(), 409);
        let d = store.delete(&key, &DeleteOptions::default()).unwrap();
        assert!(!d.finished);
        store
            .patch(
                &key,
                &PatchKind::Merge,
                &json!({"metadata": {"finalizers": null}}),
            )
            .unwrap();
        assert_eq!(store.get(&key).unwrap_err().code(), 404);
    }

    #[test]
    fn namespace_deletion_cascades() {
        let store = Store::new();
        store
            .create(
                &GroupResource::core("namespaces"),
                None,
                json!({"metadata": {"name": "team"}}),
            )
            .unwrap();
        let mut p = pod("a", None);
        p["metadata"]["namespace"] = json!("team");
        store.create(&pods(), Some("team"), p).unwrap();
        store
            .delete(
                &ResourceKey::new(GroupResource::core("namespaces"), None, "team"),
                &DeleteOptions::default(),
            )
            .unwrap();
        assert!(
            store
                .list(&pods(), None, &ListOptions::default())
                .unwrap()
                .items
                .is_empty()
        );
    }
}
