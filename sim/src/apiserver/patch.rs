//! PATCH bodies: JSON merge patch (RFC 7386), JSON patch (RFC 6902) and the subset of
//! Kubernetes strategic merge patch that kubectl and rota send.
//!
//! Strategic merge knows list semantics by field name (the `patchMergeKey` tags of the built-in
//! types): lists with a merge key merge element-wise, `finalizers` merges as a set, every other
//! list (including `spec.taints` and `tolerations`) is replaced whole. Directives understood:
//! `$patch: replace|delete|merge`, `$retainKeys`, `$deleteFromPrimitiveList/<field>`, and
//! `$setElementOrder/<field>` (order hints are accepted and ignored).

use serde_json::{Map, Value};

use super::error::{Error, Result};
use super::meta;

/// The kind of a PATCH request, from its `Content-Type`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PatchKind {
    /// `application/merge-patch+json`.
    Merge,
    /// `application/strategic-merge-patch+json`.
    StrategicMerge,
    /// `application/json-patch+json`.
    Json,
    /// `application/apply-patch+yaml` (server-side apply, simplified: merge of the applied
    /// configuration, creating the object when it is missing).
    Apply {
        /// `fieldManager` query parameter (required upstream).
        field_manager: String,
        /// `force` query parameter.
        force: bool,
    },
}

impl PatchKind {
    /// Map a `Content-Type` (parameters ignored) to a patch kind; anything else is a 415.
    pub fn from_content_type(
        content_type: &str,
        field_manager: Option<&str>,
        force: bool,
    ) -> Result<Self> {
        let essence = content_type.split(';').next().unwrap_or_default().trim();
        match essence {
            "application/merge-patch+json" => Ok(PatchKind::Merge),
            "application/strategic-merge-patch+json" => Ok(PatchKind::StrategicMerge),
            "application/json-patch+json" => Ok(PatchKind::Json),
            "application/apply-patch+yaml" | "application/apply-patch+cbor" => Ok(PatchKind::Apply {
                field_manager: field_manager.unwrap_or_default().to_string(),
                force,
            }),
            _ => Err(Error::UnsupportedMediaType(
                "application/json-patch+json, application/merge-patch+json, application/apply-patch+yaml, application/strategic-merge-patch+json"
                    .into(),
            )),
        }
    }
}

/// Apply a JSON merge patch.
pub fn merge_patch(target: &mut Value, patch: &Value) {
    json_patch::merge(target, patch);
}

/// Apply a JSON patch (a list of operations). A body that is not a patch is a 400; a patch that
/// cannot be applied is a 422, as upstream.
pub fn json_patch(target: &mut Value, patch: &Value) -> Result<()> {
    let ops: json_patch::Patch = serde_json::from_value(patch.clone())
        .map_err(|e| Error::BadRequest(format!("error decoding patch: {e}")))?;
    json_patch::patch(target, &ops.0).map_err(|e| {
        Error::Unprocessable(format!(
            "the server rejected our request due to an error in our request: {e}"
        ))
    })
}

/// How a list field merges.
enum ListStrategy {
    /// Elements are maps merged by this key.
    MergeKey(&'static str),
    /// A list of scalars merged as a set.
    PrimitiveMerge,
    /// Replaced whole.
    Replace,
}

fn list_strategy(field: &str, patch_items: &[Value], target_items: &[Value]) -> ListStrategy {
    match field {
        "containers"
        | "initContainers"
        | "ephemeralContainers"
        | "env"
        | "volumes"
        | "imagePullSecrets"
        | "resourceClaims"
        | "readinessGates" => ListStrategy::MergeKey(match field {
            "readinessGates" => "conditionType",
            _ => "name",
        }),
        "volumeMounts" => ListStrategy::MergeKey("mountPath"),
        "volumeDevices" => ListStrategy::MergeKey("devicePath"),
        "conditions" | "addresses" => ListStrategy::MergeKey("type"),
        "ownerReferences" => ListStrategy::MergeKey("uid"),
        "hostAliases" => ListStrategy::MergeKey("ip"),
        "topologySpreadConstraints" => ListStrategy::MergeKey("topologyKey"),
        "ports" => {
            // Container ports merge by containerPort, Service ports by port.
            let has = |k: &str| {
                patch_items
                    .iter()
                    .chain(target_items)
                    .any(|i| i.get(k).is_some())
            };
            if has("containerPort") {
                ListStrategy::MergeKey("containerPort")
            } else if has("port") {
                ListStrategy::MergeKey("port")
            } else {
                ListStrategy::Replace
            }
        }
        "finalizers" => ListStrategy::PrimitiveMerge,
        _ => ListStrategy::Replace,
    }
}

/// Apply a strategic merge patch to `target`.
pub fn strategic_merge(target: &mut Value, patch: &Value) -> Result<()> {
    let Value::Object(patch_map) = patch else {
        return Err(Error::BadRequest(
            "strategic merge patch must be a JSON object".into(),
        ));
    };
    if !target.is_object() {
        *target = Value::Object(Map::new());
    }
    merge_map(target, patch_map)
}

fn merge_map(target: &mut Value, patch: &Map<String, Value>) -> Result<()> {
    match patch.get("$patch").and_then(Value::as_str) {
        Some("replace") => {
            let mut replaced = patch.clone();
            replaced.remove("$patch");
            strip_directives(&mut replaced);
            *target = Value::Object(replaced);
            return Ok(());
        }
        Some("delete") => {
            *target = Value::Null;
            return Ok(());
        }
        Some("merge") | None => {}
        Some(other) => {
            return Err(Error::BadRequest(format!("unknown patch type: {other}")));
        }
    }
    if !target.is_object() {
        *target = Value::Object(Map::new());
    }
    let retain: Option<Vec<String>> = patch
        .get("$retainKeys")
        .filter(|keys| keys.is_array())
        .map(|keys| meta::strings(Some(keys)).map(str::to_string).collect());
    let Value::Object(target_map) = target else {
        return Ok(());
    };
    for (key, value) in patch {
        if key == "$patch" || key == "$retainKeys" || key.starts_with("$setElementOrder/") {
            continue;
        }
        if let Some(field) = key.strip_prefix("$deleteFromPrimitiveList/") {
            if let (Some(Value::Array(existing)), Some(remove)) =
                (target_map.get_mut(field), value.as_array())
            {
                existing.retain(|v| !remove.contains(v));
            }
            continue;
        }
        match value {
            Value::Null => {
                target_map.remove(key);
            }
            Value::Object(sub) => {
                let slot = target_map.entry(key.clone()).or_insert(Value::Null);
                merge_map(slot, sub)?;
                if slot.is_null() {
                    target_map.remove(key);
                }
            }
            Value::Array(items) => {
                let existing = target_map.remove(key);
                let merged = merge_list(key, existing, items)?;
                target_map.insert(key.clone(), merged);
            }
            scalar => {
                target_map.insert(key.clone(), scalar.clone());
            }
        }
    }
    if let Some(retain) = retain {
        target_map.retain(|k, _| retain.contains(k));
    }
    Ok(())
}

fn merge_list(field: &str, existing: Option<Value>, patch_items: &[Value]) -> Result<Value> {
    let existing_items = match existing {
        Some(Value::Array(items)) => items,
        _ => Vec::new(),
    };
    if patch_items
        .iter()
        .any(|i| i.get("$patch").and_then(Value::as_str) == Some("replace"))
    {
        let mut kept: Vec<Value> = patch_items
            .iter()
            .filter(|i| i.get("$patch").is_none())
            .cloned()
            .collect();
        kept.iter_mut().for_each(strip_value_directives);
        return Ok(Value::Array(kept));
    }
    match list_strategy(field, patch_items, &existing_items) {
        ListStrategy::Replace => {
            let mut items = patch_items.to_vec();
            items.iter_mut().for_each(strip_value_directives);
            Ok(Value::Array(items))
        }
        ListStrategy::PrimitiveMerge => {
            let mut items = existing_items;
            for item in patch_items {
                if !items.contains(item) {
                    items.push(item.clone());
                }
            }
            Ok(Value::Array(items))
        }
        ListStrategy::MergeKey(merge_key) => {
            let mut items = existing_items;
            for item in patch_items {
                let Some(item_map) = item.as_object() else {
                    return Err(Error::BadRequest(format!(
                        "strategic merge patch: {field} elements must be objects"
                    )));
                };
                let Some(key_value) = item_map.get(merge_key) else {
                    return Err(Error::BadRequest(format!(
                        "map: {item} does not contain declared merge key: {merge_key}"
                    )));
                };
                let position = items
                    .iter()
                    .position(|e| e.get(merge_key) == Some(key_value));
                let deleting = item_map.get("$patch").and_then(Value::as_str) == Some("delete");
                match (position, deleting) {
                    (Some(i), true) => {
                        items.remove(i);
                    }
                    (None, true) => {}
                    (Some(i), false) => merge_map(&mut items[i], item_map)?,
                    (None, false) => {
                        let mut fresh = Value::Object(Map::new());
                        merge_map(&mut fresh, item_map)?;
                        items.push(fresh);
                    }
                }
            }
            Ok(Value::Array(items))
        }
    }
}

/// A field path (map keys from the root); lists count as single fields, as atomic lists do in
/// server-side apply.
pub type FieldPath = Vec<String>;

/// The fields an applied configuration sets: its leaves, excluding the identifying ones.
pub fn owned_fields(applied: &Value) -> std::collections::BTreeSet<FieldPath> {
    fn walk(v: &Value, path: &mut FieldPath, out: &mut std::collections::BTreeSet<FieldPath>) {
        match v {
            Value::Object(m) if !m.is_empty() => {
                for (k, child) in m {
                    let identifying = match path.as_slice() {
                        [] => matches!(k.as_str(), "apiVersion" | "kind"),
                        [md] if md == "metadata" => {
                            matches!(
                                k.as_str(),
                                "name" | "namespace" | "resourceVersion" | "uid" | "managedFields"
                            )
                        }
                        _ => false,
                    };
                    if identifying {
                        continue;
                    }
                    path.push(k.clone());
                    walk(child, path, out);
                    path.pop();
                }
            }
            _ => {
                out.insert(path.clone());
            }
        }
    }
    let mut out = std::collections::BTreeSet::new();
    walk(applied, &mut Vec::new(), &mut out);
    out
}

/// Remove a field, and the maps left empty above it.
pub fn remove_field(obj: &mut Value, path: &[String]) {
    let Some((last, parents)) = path.split_last() else {
        return;
    };
    let Some(parent) = parents
        .iter()
        .try_fold(&mut *obj, |cur, k| cur.get_mut(k.as_str()))
    else {
        return;
    };
    if let Some(m) = parent.as_object_mut() {
        m.remove(last);
        if m.is_empty() && !parents.is_empty() {
            remove_field(obj, parents);
        }
    }
}

fn strip_value_directives(value: &mut Value) {
    if let Value::Object(map) = value {
        strip_directives(map);
    }
}

fn strip_directives(map: &mut Map<String, Value>) {
    map.retain(|k, _| !k.starts_with('$'));
    for v in map.values_mut() {
        match v {
            Value::Object(m) => strip_directives(m),
            Value::Array(items) => items.iter_mut().for_each(strip_value_directives),
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn cordon_and_uncordon() {
        let mut node = json!({"spec": {"podCIDR": "10.0.0.0/24"}});
        strategic_merge(&mut node, &json!({"spec": {"unschedulable": true}})).unwrap();
        assert_eq!(node["spec"]["unschedulable"], true);
        strategic_merge(&mut node, &json!({"spec": {"unschedulable": null}})).unwrap();
        assert!(node["spec"].get("unschedulable").is_none());
        assert_eq!(node["spec"]["podCIDR"], "10.0.0.0/24");
    }

    #[test]
    fn taints_are_atomic() {
        let mut node = json!({"spec": {"taints": [{"key": "a", "effect": "NoSchedule"}, {"key": "b", "effect": "NoSchedule"}]}});
        strategic_merge(
            &mut node,
            &json!({"spec": {"taints": [{"key": "c", "effect": "NoExecute"}]}}),
        )
        .unwrap();
        assert_eq!(
            node["spec"]["taints"],
            json!([{"key": "c", "effect": "NoExecute"}])
        );
    }

    #[test]
    fn labels_merge_per_key() {
        let mut obj = json!({"metadata": {"labels": {"a": "1", "b": "2"}}});
        strategic_merge(
            &mut obj,
            &json!({"metadata": {"labels": {"a": null, "c": "3"}}}),
        )
        .unwrap();
        assert_eq!(obj["metadata"]["labels"], json!({"b": "2", "c": "3"}));
    }

    #[test]
    fn containers_merge_by_name_and_directives() {
        let mut pod = json!({"spec": {"containers": [{"name": "a", "image": "x:1"}, {"name": "b", "image": "y:1"}]}});
        strategic_merge(
            &mut pod,
            &json!({"spec": {
                "$setElementOrder/containers": [{"name": "a"}, {"name": "b"}],
                "containers": [{"name": "a", "image": "x:2"}, {"name": "b", "$patch": "delete"}]
            }}),
        )
        .unwrap();
        assert_eq!(
            pod["spec"]["containers"],
            json!([{"name": "a", "image": "x:2"}])
        );
    }

    #[test]
    fn conditions_merge_by_type() {
        let mut pod = json!({"status": {"conditions": [{"type": "Ready", "status": "True"}]}});
        strategic_merge(
            &mut pod,
            &json!({"status": {"conditions": [{"type": "DisruptionTarget", "status": "True"}]}}),
        )
        .unwrap();
        assert_eq!(pod["status"]["conditions"].as_array().unwrap().len(), 2);
    }

    #[test]
    fn finalizers_merge_and_delete_from_primitive_list() {
        let mut obj = json!({"metadata": {"finalizers": ["a"]}});
        strategic_merge(&mut obj, &json!({"metadata": {"finalizers": ["b"]}})).unwrap();
        assert_eq!(obj["metadata"]["finalizers"], json!(["a", "b"]));
        strategic_merge(
            &mut obj,
            &json!({"metadata": {"$deleteFromPrimitiveList/finalizers": ["a"]}}),
        )
        .unwrap();
        assert_eq!(obj["metadata"]["finalizers"], json!(["b"]));
    }

    #[test]
    fn replace_and_retain_keys() {
        let mut obj = json!({"spec": {"strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 1}}}});
        strategic_merge(
            &mut obj,
            &json!({"spec": {"strategy": {"$retainKeys": ["type"], "type": "Recreate"}}}),
        )
        .unwrap();
        assert_eq!(obj["spec"]["strategy"], json!({"type": "Recreate"}));
        strategic_merge(&mut obj, &json!({"spec": {"$patch": "replace", "x": 1}})).unwrap();
        assert_eq!(obj["spec"], json!({"x": 1}));
    }

    #[test]
    fn json_patch_errors() {
        let mut obj = json!({"a": 1});
        assert_eq!(
            json_patch(&mut obj, &json!({"op": "add"}))
                .unwrap_err()
                .code(),
            400
        );
        assert_eq!(
            json_patch(&mut obj, &json!([{"op": "test", "path": "/a", "value": 2}]))
                .unwrap_err()
                .code(),
            422
        );
        json_patch(
            &mut obj,
            &json!([{"op": "replace", "path": "/a", "value": 2}]),
        )
        .unwrap();
        assert_eq!(obj["a"], 2);
    }

    #[test]
    fn apply_field_sets() {
        let applied = json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": "n", "annotations": {"a": "1", "b": "2"}}, "spec": {"taints": [{"key": "x"}]}});
        let fields = owned_fields(&applied);
        let want: Vec<Vec<&str>> = vec![
            vec!["metadata", "annotations", "a"],
            vec!["metadata", "annotations", "b"],
            vec!["spec", "taints"],
        ];
        assert_eq!(
            fields
                .iter()
                .map(|p| p.iter().map(String::as_str).collect::<Vec<_>>())
                .collect::<Vec<_>>(),
            want
        );
        let mut obj =
            json!({"metadata": {"name": "n", "annotations": {"a": "1"}}, "spec": {"x": 1}});
        remove_field(
            &mut obj,
            &["metadata".into(), "annotations".into(), "a".into()],
        );
        assert_eq!(obj, json!({"metadata": {"name": "n"}, "spec": {"x": 1}}));
        remove_field(&mut obj, &["nope".into(), "x".into()]);
    }

    #[test]
    fn content_types() {
        assert_eq!(
            PatchKind::from_content_type(
                "application/merge-patch+json; charset=utf-8",
                None,
                false
            )
            .unwrap(),
            PatchKind::Merge
        );
        assert_eq!(
            PatchKind::from_content_type("text/plain", None, false)
                .unwrap_err()
                .code(),
            415
        );
    }
}
