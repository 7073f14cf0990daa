//! Reads and writes of objects under the store lock: get, list (selectors and pages), create,
//! update (optimistic concurrency, `/status`), patch (merge, JSON, strategic merge and a
//! simplified server-side apply) and the one write path that stamps the resourceVersion,
//! records node availability and publishes the event.

use std::sync::Arc;

use jiff::Timestamp;
use serde_json::{Value, json};

use super::admission::{self, comparable, crd_established, invalid_field};
use super::watch::Filter;
use super::{EventType, ListOptions, ObjectList, Part, ResourceKey, State, StoreEvent};
use crate::apiserver::audit::NodeRecord;
use crate::apiserver::error::{Error, Result};
use crate::apiserver::meta;
use crate::apiserver::patch::{self, PatchKind};
use crate::apiserver::resources::{GroupResource, ResourceInfo};

impl State {
    /// Resolve the namespace for a resource's scope.
    fn scope(info: &ResourceInfo, namespace: Option<&str>) -> Result<Option<String>> {
        if !info.namespaced {
            return Ok(None);
        }
        match namespace {
            Some(ns) if !ns.is_empty() => Ok(Some(ns.to_string())),
            _ => Err(Error::BadRequest(
                "the server could not find the requested resource: a namespace is required".into(),
            )),
        }
    }

    fn map_key(namespace: Option<&str>, name: &str) -> (String, String) {
        (namespace.unwrap_or_default().to_string(), name.to_string())
    }

    /// One object; 404 when absent.
    pub(crate) fn get(&self, key: &ResourceKey) -> Result<Arc<Value>> {
        let info = self.registry.get(&key.resource)?;
        let ns = if info.namespaced {
            key.namespace.as_deref()
        } else {
            None
        };
        self.objects
            .get(&key.resource)
            .and_then(|m| m.get(&Self::map_key(ns, &key.name)))
            .cloned()
            .ok_or_else(|| Error::NotFound {
                qualified: key.resource.qualified(),
                name: key.name.clone(),
            })
    }

    /// What the registry says about `resource`, refusing the create-only resources
    /// (TokenReview), which cannot be read, listed, watched, updated or deleted.
    pub(super) fn served(&self, resource: &GroupResource) -> Result<&ResourceInfo> {
        let info = self.registry.get(resource)?;
        if info.create_only {
            return Err(Error::MethodNotAllowed);
        }
        Ok(info)
    }

    /// Objects of a resource in a namespace (all namespaces with `None`), in key order.
    pub(crate) fn iter_objects<'a>(
        &'a self,
        resource: &GroupResource,
        namespace: Option<&'a str>,
    ) -> Box<dyn Iterator<Item = &'a Arc<Value>> + 'a> {
        let Some(map) = self.objects.get(resource) else {
            return Box::new(std::iter::empty());
        };
        match namespace {
            Some(ns) => Box::new(
                map.range((ns.to_string(), String::new())..)
                    .take_while(move |((n, _), _)| n == ns)
                    .map(|(_, v)| v),
            ),
            None => Box::new(map.values()),
        }
    }

    /// A page of the objects of `resource` matching `opts`.
    pub(super) fn list(
        &self,
        resource: &GroupResource,
        namespace: Option<&str>,
        opts: &ListOptions,
    ) -> Result<ObjectList> {
        let info = self.served(resource)?;
        let filter = Filter::new(resource, info, namespace, opts)?;
        let (list_rv, after) = match opts.continue_token.as_deref().filter(|t| !t.is_empty()) {
            Some(token) => {
                let mut parts = token.splitn(3, '|');
                let rv = parts.next().and_then(|r| r.parse::<u64>().ok());
                let (Some(rv), Some(ns), Some(name)) = (rv, parts.next(), parts.next()) else {
                    return Err(Error::BadRequest(format!(
                        "invalid continue token {token:?}"
                    )));
                };
                (rv, Some((ns.to_string(), name.to_string())))
            }
            None => (self.rv, None),
        };
        let limit = opts.limit.filter(|l| *l > 0);
        let mut items = Vec::new();
        let mut continue_token = None;
        for obj in self.iter_objects(resource, filter.namespace.as_deref()) {
            if let Some((ns, name)) = &after
                && (meta::namespace(obj), meta::name(obj)) <= (ns.as_str(), name.as_str())
            {
                continue;
            }
            if !filter.selects(obj) {
                continue;
            }
            if limit.is_some_and(|l| items.len() >= l) {
                if let Some(last) = items.last() {
                    let last: &Arc<Value> = last;
                    continue_token = Some(format!(
                        "{list_rv}|{}|{}",
                        meta::namespace(last),
                        meta::name(last)
                    ));
                }
                break;
            }
            items.push(obj.clone());
        }
        Ok(ObjectList {
            items,
            resource_version: list_rv,
            continue_token,
        })
    }

    fn set_rv(obj: &mut Value, rv: u64) {
        if let Some(m) = obj.get_mut("metadata").and_then(Value::as_object_mut) {
            m.insert("resourceVersion".into(), Value::String(rv.to_string()));
        }
    }

    /// Store an object version and publish the event.
    pub(super) fn write(
        &mut self,
        resource: &GroupResource,
        mut obj: Value,
        previous: Option<Arc<Value>>,
        event_type: EventType,
        now: Timestamp,
    ) -> Arc<Value> {
        self.rv += 1;
        let rv = self.rv;
        Self::set_rv(&mut obj, rv);
        let key = Self::map_key(meta::namespace_opt(&obj), meta::name(&obj));
        let obj = Arc::new(obj);
        let map = self.objects.entry(resource.clone()).or_default();
        if event_type == EventType::Deleted {
            map.remove(&key);
            if !self.applied.is_empty() {
                let gone = ResourceKey::for_object(resource.clone(), &obj);
                self.applied.retain(|(k, _), _| *k != gone);
            }
        } else {
            map.insert(key, obj.clone());
        }
        if resource.group.is_empty() && resource.resource == "nodes" {
            self.audit.record_node(NodeRecord {
                time: now,
                resource_version: rv,
                node: meta::name(&obj).to_string(),
                ready: meta::node_ready(&obj),
                unschedulable: meta::node_unschedulable(&obj),
                deleted: event_type == EventType::Deleted,
            });
        }
        self.publish(StoreEvent {
            event_type,
            resource: resource.clone(),
            resource_version: rv,
            object: obj.clone(),
            previous,
        });
        obj
    }

    /// Create an object; with `strategy`, as a request to the API server does (see
    /// [`admission::prepare_create`]).
    pub(crate) fn create(
        &mut self,
        resource: &GroupResource,
        namespace: Option<&str>,
        obj: Value,
        now: Timestamp,
        strategy: bool,
    ) -> Result<Arc<Value>> {
        let info = self.registry.get(resource)?.clone();
        let Value::Object(map) = obj else {
            return Err(Error::BadRequest(
                "the object provided is not a JSON object".into(),
            ));
        };
        if info.create_only {
            return self.review_token(&Value::Object(map), now);
        }
        let ns = Self::scope(&info, namespace)?;
        let mut obj = admission::prepare_create(&info, map, ns.as_deref(), now, strategy)?;
        let name = meta::name(&obj).to_string();
        if let Some(ns) = &ns {
            let ns_key = ResourceKey::new(GroupResource::core("namespaces"), None, ns);
            match self.get(&ns_key) {
                Ok(ns_obj) if meta::is_terminating(&ns_obj) => {
                    return Err(Error::Forbidden {
                        qualified: resource.qualified(),
                        name,
                        detail: format!(
                            "unable to create new content in namespace {ns} because it is being terminated"
                        ),
                    });
                }
                Ok(_) => {}
                Err(_) => {
                    return Err(Error::NotFound {
                        qualified: "namespaces".into(),
                        name: ns.clone(),
                    });
                }
            }
        }
        if self
            .get(&ResourceKey::new(resource.clone(), ns.as_deref(), &name))
            .is_ok()
        {
            return Err(Error::AlreadyExists {
                qualified: resource.qualified(),
                name,
            });
        }
        if info.group == "apiextensions.k8s.io" && info.plural == "customresourcedefinitions" {
            self.registry.register_crd(&obj)?;
            obj = crd_established(obj, now);
        }
        Ok(self.write(resource, obj, None, EventType::Added, now))
    }

    /// Replace an object (`part`: all of it but status, or only status).
    pub(crate) fn update(
        &mut self,
        key: &ResourceKey,
        obj: Value,
        part: Part,
        now: Timestamp,
    ) -> Result<Arc<Value>> {
        let info = self.served(&key.resource)?.clone();
        let old = self.get(key)?;
        let Value::Object(map) = obj else {
            return Err(Error::BadRequest(
                "the object provided is not a JSON object".into(),
            ));
        };
        admission::check_identity(&info, key, &map)?;
        match map
            .get("metadata")
            .and_then(|m| m.get("resourceVersion"))
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty())
        {
            None => {}
            Some(rv) => {
                let rv: u64 = rv.parse().map_err(|_| {
                    invalid_field(
                        &info,
                        &key.name,
                        "FieldValueInvalid",
                        "metadata.resourceVersion",
                        format!("Invalid value: \"{rv}\": must be a valid unsigned integer"),
                    )
                })?;
                if Some(rv) != meta::resource_version(&old) {
                    return Err(Error::stale(&key.resource.qualified(), &key.name));
                }
            }
        }
        let new = admission::prepare_update(&info, &old, map, part)?;
        if comparable(&new) == comparable(&old) {
            return Ok(old);
        }
        if meta::is_terminating(&new)
            && !meta::has_finalizers(&new)
            && new
                .pointer("/metadata/deletionGracePeriodSeconds")
                .and_then(Value::as_i64)
                .unwrap_or(0)
                == 0
        {
            return Ok(self.remove(&key.resource, new, now));
        }
        if info.group == "apiextensions.k8s.io" && info.plural == "customresourcedefinitions" {
            self.registry.register_crd(&new)?;
        }
        Ok(self.write(&key.resource, new, Some(old), EventType::Modified, now))
    }

    /// Patch an object (`part`: the main resource or `/status`).
    pub(crate) fn patch(
        &mut self,
        key: &ResourceKey,
        kind: &PatchKind,
        body: &Value,
        part: Part,
        now: Timestamp,
    ) -> Result<Arc<Value>> {
        let info = self.served(&key.resource)?.clone();
        let owner = match kind {
            PatchKind::Apply { field_manager, .. } if field_manager.is_empty() => {
                return Err(Error::BadRequest(
                    "PatchOptions.meta.k8s.io \"\" is invalid: fieldManager: Required value: is required for apply patch"
                        .into(),
                ));
            }
            PatchKind::Apply { field_manager, .. } => {
                let manager = if part == Part::Status {
                    format!("{field_manager}/status")
                } else {
                    field_manager.clone()
                };
                Some((key.clone(), manager))
            }
            _ => None,
        };
        let old = match self.get(key) {
            Ok(old) => old,
            Err(Error::NotFound { .. }) if owner.is_some() && part == Part::Main => {
                let mut obj = body.clone();
                if let Some(m) = obj.as_object_mut() {
                    let md = m.entry("metadata").or_insert_with(|| json!({}));
                    if let Some(md) = md.as_object_mut() {
                        md.insert("name".into(), json!(key.name));
                    }
                }
                let created =
                    self.create(&key.resource, key.namespace.as_deref(), obj, now, true)?;
                if let Some(owner) = owner {
                    self.applied.insert(owner, patch::owned_fields(body));
                }
                return Ok(created);
            }
            Err(e) => return Err(e),
        };
        let mut patched = (*old).clone();
        match kind {
            PatchKind::Merge => patch::merge_patch(&mut patched, body),
            PatchKind::Json => patch::json_patch(&mut patched, body)?,
            PatchKind::StrategicMerge => {
                if info.custom {
                    return Err(Error::UnsupportedMediaType(
                        "application/json-patch+json, application/merge-patch+json, application/apply-patch+yaml".into(),
                    ));
                }
                patch::strategic_merge(&mut patched, body)?;
            }
            PatchKind::Apply { .. } => {
                // Fields this manager applied before and omits now are removed, unless another
                // manager applied them too (a simplified server-side apply ownership model).
                let fields = patch::owned_fields(body);
                if let Some(owner @ (_, manager)) = &owner
                    && let Some(previous) = self.applied.get(owner)
                {
                    for path in previous.difference(&fields) {
                        let shared = self
                            .applied
                            .iter()
                            .any(|((k, m), f)| k == key && m != manager && f.contains(path));
                        if !shared {
                            patch::remove_field(&mut patched, path);
                        }
                    }
                }
                let mut applied = body.clone();
                if let Some(md) = applied.get_mut("metadata").and_then(Value::as_object_mut) {
                    md.remove("resourceVersion");
                }
                if info.custom {
                    patch::merge_patch(&mut patched, &applied);
                } else {
                    patch::strategic_merge(&mut patched, &applied)?;
                }
            }
        }
        if !patched.is_object() {
            return Err(Error::BadRequest(
                "the patch did not produce an object".into(),
            ));
        }
        let updated = self.update(key, patched, part, now)?;
        if let Some(owner) = owner {
            self.applied.insert(owner, patch::owned_fields(body));
        }
        Ok(updated)
    }

    /// Pods in a namespace (for the eviction handler and PDB computations).
    pub(crate) fn pods_in(&self, namespace: &str) -> Vec<Arc<Value>> {
        self.iter_objects(&GroupResource::core("pods"), Some(namespace))
            .cloned()
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::super::fixtures::{pod, pods};
    use super::*;
    use crate::apiserver::store::Store;

    #[test]
    fn create_get_conflicts() {
        let store = Store::new();
        let created = store
            .create(&pods(), Some("default"), pod("a", None))
            .unwrap();
        assert_eq!(created["kind"], "Pod");
        assert_eq!(created["apiVersion"], "v1");
        assert!(!meta::uid(&created).is_empty());
        assert_eq!(
            store
                .create(&pods(), Some("default"), pod("a", None))
                .unwrap_err()
                .code(),
            409
        );
        let key = ResourceKey::new(pods(), Some("default"), "a");
        let mut stale = (*created).clone();
        stale["metadata"]["labels"]["x"] = json!("1");
        store.update(&key, stale.clone()).unwrap();
        let err = store.update(&key, stale).unwrap_err();
        assert_eq!(err.code(), 409);
        assert!(err.to_string().contains("the object has been modified"));
        assert_eq!(
            store
                .get(&ResourceKey::new(pods(), Some("default"), "zz"))
                .unwrap_err()
                .code(),
            404
        );
    }

    #[test]
    fn no_op_update_keeps_rv_and_status_is_separate() {
        let store = Store::new();
        let created = store
            .create(&pods(), Some("default"), pod("a", None))
            .unwrap();
        let key = ResourceKey::new(pods(), Some("default"), "a");
        let same = store.update(&key, (*created).clone()).unwrap();
        assert_eq!(
            meta::resource_version(&same),
            meta::resource_version(&created)
        );
        let mut changed = (*created).clone();
        changed["status"]["phase"] = json!("Failed");
        let after_main = store.update(&key, changed.clone()).unwrap();
        assert_eq!(after_main["status"]["phase"], "Running");
        let after_status = store.update_status(&key, changed).unwrap();
        assert_eq!(after_status["status"]["phase"], "Failed");
    }

    #[test]
    fn list_selectors_and_pages() {
        let store = Store::new();
        for i in 0..5 {
            let mut p = pod(&format!("p{i}"), Some(if i % 2 == 0 { "n1" } else { "n2" }));
            p["metadata"]["labels"]["i"] = json!(i.to_string());
            store.create(&pods(), Some("default"), p).unwrap();
        }
        let l = store
            .list(&pods(), None, &ListOptions::fields("spec.nodeName=n1"))
            .unwrap();
        assert_eq!(l.items.len(), 3);
        let l = store
            .list(&pods(), Some("default"), &ListOptions::labels("i in (1,2)"))
            .unwrap();
        assert_eq!(l.items.len(), 2);
        let mut opts = ListOptions {
            limit: Some(2),
            ..Default::default()
        };
        let mut names = Vec::new();
        loop {
            let page = store.list(&pods(), None, &opts).unwrap();
            names.extend(page.items.iter().map(|p| meta::name(p).to_string()));
            match page.continue_token {
                Some(t) => opts.continue_token = Some(t),
                None => break,
            }
        }
        assert_eq!(names, vec!["p0", "p1", "p2", "p3", "p4"]);
        assert_eq!(
            store
                .list(&pods(), None, &ListOptions::labels("a b"))
                .unwrap_err()
                .code(),
            400
        );
    }

    #[test]
    fn server_side_apply_removes_fields_a_manager_dropped() {
        let store = Store::new();
        let gr = GroupResource::core("configmaps");
        let key = ResourceKey::new(gr, Some("default"), "c");
        let apply = |manager: &str, data: Value| {
            let body = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c"}, "data": data});
            let kind = PatchKind::Apply {
                field_manager: manager.into(),
                force: true,
            };
            store.patch(&key, &kind, &body).unwrap()
        };
        apply("rota", json!({"a": "1", "b": "2"}));
        assert_eq!(apply("rota", json!({"a": "1"}))["data"], json!({"a": "1"}));
        apply("other", json!({"c": "3", "a": "1"}));
        assert_eq!(
            apply("rota", json!({"d": "4"}))["data"],
            json!({"a": "1", "c": "3", "d": "4"})
        );
        let missing_manager = PatchKind::Apply {
            field_manager: String::new(),
            force: false,
        };
        assert_eq!(
            store
                .patch(&key, &missing_manager, &json!({}))
                .unwrap_err()
                .code(),
            400
        );
    }
}
