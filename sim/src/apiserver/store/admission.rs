//! What the API server does to an object between the request and the storage, as its
//! registry strategies (`PrepareForCreate`, `PrepareForUpdate`, `Validate`) do upstream: system
//! metadata (uid, creationTimestamp, generation, generated names), defaults, the checks that the
//! body matches the URL, validation of the fields the emulator cares about, and the CRD
//! controller's conditions.

use jiff::Timestamp;
use rand::Rng;
use serde_json::{Map, Value, json};

use super::{Part, ResourceKey};
use crate::apiserver::error::{Cause, Error, Result};
use crate::apiserver::meta;
use crate::apiserver::resources::ResourceInfo;
use crate::apiserver::selector::LabelSelector;

/// Prepare a new object (`map`, the request body) for storage in `namespace`: type meta,
/// namespace, name (from `generateName`), uid, timestamps, generation and defaults, then
/// validate it. With `strategy`, status is reset as the API server's create strategy does
/// (nodes and namespaces keep theirs); in-process seeding skips that to create objects in any
/// state.
pub(super) fn prepare_create(
    info: &ResourceInfo,
    mut map: Map<String, Value>,
    namespace: Option<&str>,
    now: Timestamp,
    strategy: bool,
) -> Result<Value> {
    match map.get("kind").and_then(Value::as_str) {
        Some(kind) if kind != info.kind => {
            return Err(kind_mismatch(kind, info));
        }
        Some(_) => {}
        None => {
            map.insert("kind".into(), json!(info.kind));
        }
    }
    if map
        .get("apiVersion")
        .and_then(Value::as_str)
        .is_none_or(str::is_empty)
    {
        map.insert("apiVersion".into(), json!(info.api_version()));
    }
    let metadata = map
        .entry("metadata")
        .or_insert_with(|| Value::Object(Map::new()));
    let Value::Object(md) = metadata else {
        return Err(Error::BadRequest("metadata must be an object".into()));
    };
    match (namespace, md.get("namespace").and_then(Value::as_str)) {
        (Some(ns), Some(body_ns)) if !body_ns.is_empty() && body_ns != ns => {
            return Err(namespace_mismatch());
        }
        (Some(ns), _) => {
            md.insert("namespace".into(), json!(ns));
        }
        (None, _) => {
            md.remove("namespace");
        }
    }
    let name = md
        .get("name")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string();
    if name.is_empty()
        && let Some(prefix) = md
            .get("generateName")
            .and_then(Value::as_str)
            .filter(|p| !p.is_empty())
    {
        let generated = format!("{prefix}{}", generated_suffix());
        md.insert("name".into(), json!(generated));
    }
    md.insert("uid".into(), json!(new_uid()));
    md.insert("creationTimestamp".into(), json!(meta::format_time(now)));
    md.remove("deletionTimestamp");
    md.remove("deletionGracePeriodSeconds");
    md.remove("managedFields");
    if info.tracks_generation {
        md.insert("generation".into(), json!(1));
    } else {
        md.remove("generation");
    }
    let mut obj = Value::Object(map);
    if strategy
        && info.status_subresource
        && !(info.group.is_empty() && matches!(info.plural.as_str(), "nodes" | "namespaces"))
        && let Some(m) = obj.as_object_mut()
    {
        m.remove("status");
    }
    apply_defaults(info, &mut obj);
    merge_string_data(info, &mut obj);
    validate(info, &obj)?;
    Ok(obj)
}

/// Refuse an update whose body names another object than the URL: its name, namespace or kind
/// (empty ones are filled in later).
pub(super) fn check_identity(
    info: &ResourceInfo,
    key: &ResourceKey,
    map: &Map<String, Value>,
) -> Result<()> {
    let body_name = map
        .get("metadata")
        .and_then(|m| m.get("name"))
        .and_then(Value::as_str)
        .unwrap_or_default();
    if !body_name.is_empty() && body_name != key.name {
        return Err(Error::BadRequest(format!(
            "the name of the object ({body_name}) does not match the name on the URL ({})",
            key.name
        )));
    }
    if let Some(body_ns) = map
        .get("metadata")
        .and_then(|m| m.get("namespace"))
        .and_then(Value::as_str)
        && info.namespaced
        && !body_ns.is_empty()
        && Some(body_ns) != key.namespace.as_deref()
    {
        return Err(namespace_mismatch());
    }
    if let Some(kind) = map.get("kind").and_then(Value::as_str)
        && !kind.is_empty()
        && kind != info.kind
    {
        return Err(kind_mismatch(kind, info));
    }
    Ok(())
}

/// The object an update of `part` stores: the body (`map`) with what that part may not change
/// taken from `old`, system fields kept, `metadata.generation` bumped when the spec changed;
/// validated.
pub(super) fn prepare_update(
    info: &ResourceInfo,
    old: &Value,
    mut map: Map<String, Value>,
    part: Part,
) -> Result<Value> {
    let new = match part {
        Part::Main => {
            if info.status_subresource {
                match old.get("status") {
                    Some(s) => map.insert("status".into(), s.clone()),
                    None => map.remove("status"),
                };
            }
            map
        }
        Part::Status => {
            let mut base = old.as_object().cloned().unwrap_or_default();
            match map.remove("status") {
                Some(s) => base.insert("status".into(), s),
                None => base.remove("status"),
            };
            base
        }
    };
    let mut new = Value::Object(new);
    preserve_system_fields(&mut new, old, info);
    merge_string_data(info, &mut new);
    if info.group.is_empty() && info.plural == "pods" && part == Part::Main {
        check_pod_spec_update(info, old, &new)?;
    }
    if info.tracks_generation {
        let mut generation = old
            .pointer("/metadata/generation")
            .and_then(Value::as_i64)
            .unwrap_or(1);
        if generation_relevant(&new, info) != generation_relevant(old, info) {
            generation += 1;
        }
        if let Some(m) = new.get_mut("metadata").and_then(Value::as_object_mut) {
            m.insert("generation".into(), json!(generation));
        }
    }
    validate(info, &new)?;
    Ok(new)
}

/// What an update may change in a pod's spec, as upstream: container and init-container
/// images, `activeDeadlineSeconds`, `terminationGracePeriodSeconds`, `tolerations` and
/// `schedulingGates` — and `nodeName` when it was empty (what a binding does; upstream only
/// through `pods/binding`).
fn mutable_pod_spec_fields_cleared(spec: &Value, unbound: bool) -> Value {
    let mut spec = spec.clone();
    if let Some(map) = spec.as_object_mut() {
        for field in [
            "activeDeadlineSeconds",
            "terminationGracePeriodSeconds",
            "tolerations",
            "schedulingGates",
        ] {
            map.remove(field);
        }
        if unbound {
            map.remove("nodeName");
        }
        for list in ["containers", "initContainers"] {
            if let Some(containers) = map.get_mut(list).and_then(Value::as_array_mut) {
                for c in containers.iter_mut().filter_map(Value::as_object_mut) {
                    c.remove("image");
                }
            }
        }
    }
    spec
}

fn check_pod_spec_update(info: &ResourceInfo, old: &Value, new: &Value) -> Result<()> {
    let unbound = meta::str_at(old, "/spec/nodeName").is_empty();
    let spec =
        |o: &Value| mutable_pod_spec_fields_cleared(o.get("spec").unwrap_or(&Value::Null), unbound);
    if spec(old) == spec(new) {
        return Ok(());
    }
    Err(invalid_field(
        info,
        meta::name(old),
        "FieldValueForbidden",
        "spec",
        "Forbidden: pod updates may not change fields other than `spec.containers[*].image`,`spec.initContainers[*].image`,`spec.activeDeadlineSeconds`,`spec.tolerations` (only additions to existing tolerations),`spec.terminationGracePeriodSeconds` (allow it to be set to 1 if it was previously negative)".into(),
    ))
}

fn kind_mismatch(kind: &str, info: &ResourceInfo) -> Error {
    Error::BadRequest(format!(
        "the kind of the provided object ({kind}) does not match the resource ({})",
        info.kind
    ))
}

fn namespace_mismatch() -> Error {
    Error::BadRequest(
        "the namespace of the provided object does not match the namespace sent on the request"
            .into(),
    )
}

/// A random RFC 4122 version-4 UUID.
pub(crate) fn new_uid() -> String {
    let bits: u128 = rand::random();
    let bits = (bits & !(0xF << 76) | (0x4 << 76)) & !(0x3 << 62) | (0x2 << 62);
    let hex = format!("{bits:032x}");
    format!(
        "{}-{}-{}-{}-{}",
        &hex[0..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..32]
    )
}

fn generated_suffix() -> String {
    const ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    let mut rng = rand::rng();
    (0..5)
        .map(|_| ALPHABET[rng.random_range(0..ALPHABET.len())] as char)
        .collect()
}

pub(super) fn invalid_field(
    info: &ResourceInfo,
    name: &str,
    reason: &str,
    field: &str,
    message: String,
) -> Error {
    Error::invalid(
        &info.kind,
        &info.group,
        name,
        vec![Cause {
            reason: reason.into(),
            message: format!("{field}: {message}"),
            field: Some(field.into()),
        }],
    )
}

const DNS1123_SUBDOMAIN_MSG: &str = "a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character (e.g. 'example.com', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*')";
const DNS1123_LABEL_MSG: &str = "a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-', and must start and end with an alphanumeric character (e.g. 'my-name',  or '123-abc', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?')";

fn is_dns_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

fn is_dns_subdomain(s: &str) -> bool {
    s.len() <= 253 && s.split('.').all(is_dns_label)
}

/// Validation of the fields the emulator checks (names, and what rota and kubectl rely on).
fn validate(info: &ResourceInfo, obj: &Value) -> Result<()> {
    let name = meta::name(obj);
    if name.is_empty() {
        return Err(invalid_field(
            info,
            name,
            "FieldValueRequired",
            "metadata.name",
            "Required value: name or generateName is required".into(),
        ));
    }
    let rbac = info.group == "rbac.authorization.k8s.io";
    let label_only = info.group.is_empty() && info.plural == "namespaces";
    let name_ok = if rbac {
        name != "." && name != ".." && !name.contains('/') && !name.contains('%')
    } else if label_only {
        is_dns_label(name)
    } else {
        is_dns_subdomain(name)
    };
    if !name_ok {
        let msg = if label_only {
            DNS1123_LABEL_MSG
        } else {
            DNS1123_SUBDOMAIN_MSG
        };
        return Err(invalid_field(
            info,
            name,
            "FieldValueInvalid",
            "metadata.name",
            format!("Invalid value: \"{name}\": {msg}"),
        ));
    }
    match (info.group.as_str(), info.plural.as_str()) {
        ("", "pods") => {
            let containers = obj.pointer("/spec/containers").and_then(Value::as_array);
            let Some(containers) = containers.filter(|c| !c.is_empty()) else {
                return Err(invalid_field(
                    info,
                    name,
                    "FieldValueRequired",
                    "spec.containers",
                    "Required value".into(),
                ));
            };
            for (i, c) in containers.iter().enumerate() {
                for field in ["name", "image"] {
                    if c.get(field)
                        .and_then(Value::as_str)
                        .is_none_or(str::is_empty)
                    {
                        return Err(invalid_field(
                            info,
                            name,
                            "FieldValueRequired",
                            &format!("spec.containers[{i}].{field}"),
                            "Required value".into(),
                        ));
                    }
                }
            }
        }
        ("policy", "poddisruptionbudgets") => {
            let spec = obj.get("spec");
            let set = |f: &str| spec.and_then(|s| s.get(f)).is_some_and(|v| !v.is_null());
            if set("minAvailable") && set("maxUnavailable") {
                return Err(invalid_field(
                    info,
                    name,
                    "FieldValueInvalid",
                    "spec",
                    "Invalid value: policy.PodDisruptionBudgetSpec: minAvailable and maxUnavailable cannot be both set"
                        .into(),
                ));
            }
            LabelSelector::from_json(spec.and_then(|s| s.get("selector"))).map_err(|e| {
                invalid_field(
                    info,
                    name,
                    "FieldValueInvalid",
                    "spec.selector",
                    format!("Invalid value: {e}"),
                )
            })?;
        }
        ("apiextensions.k8s.io", "customresourcedefinitions") => {
            crate::apiserver::resources::crd_to_info(obj)?;
        }
        _ => {}
    }
    Ok(())
}

/// A Secret's `stringData` is write-only: the API server merges it into `data` (base64,
/// overriding a key of the same name) and never stores it.
fn merge_string_data(info: &ResourceInfo, obj: &mut Value) {
    use base64::Engine;
    if !(info.group.is_empty() && info.plural == "secrets") {
        return;
    }
    let Some(map) = obj.as_object_mut() else {
        return;
    };
    let Some(Value::Object(strings)) = map.remove("stringData") else {
        return;
    };
    let data = map
        .entry("data")
        .or_insert_with(|| Value::Object(Map::new()));
    if !data.is_object() {
        *data = Value::Object(Map::new());
    }
    if let Some(data) = data.as_object_mut() {
        for (key, value) in strings {
            let text = value.as_str().unwrap_or_default();
            let encoded = base64::engine::general_purpose::STANDARD.encode(text);
            data.insert(key, Value::String(encoded));
        }
    }
}

/// Defaults the API server fills in on create.
fn apply_defaults(info: &ResourceInfo, obj: &mut Value) {
    let Some(map) = obj.as_object_mut() else {
        return;
    };
    let set_default = |map: &mut Map<String, Value>, path: &[&str], value: Value| {
        let mut cur = map;
        for (i, part) in path.iter().enumerate() {
            if i + 1 == path.len() {
                cur.entry(part.to_string()).or_insert(value);
                return;
            }
            let next = cur
                .entry(part.to_string())
                .or_insert_with(|| Value::Object(Map::new()));
            let Value::Object(next) = next else { return };
            cur = next;
        }
    };
    match (info.group.as_str(), info.plural.as_str()) {
        ("", "pods") => {
            set_default(map, &["spec", "restartPolicy"], json!("Always"));
            set_default(map, &["spec", "terminationGracePeriodSeconds"], json!(30));
            set_default(map, &["spec", "dnsPolicy"], json!("ClusterFirst"));
            set_default(map, &["spec", "schedulerName"], json!("default-scheduler"));
            set_default(map, &["spec", "serviceAccountName"], json!("default"));
            set_default(map, &["status", "phase"], json!("Pending"));
            default_toleration_seconds(map);
        }
        ("", "namespaces") => {
            set_default(map, &["spec", "finalizers"], json!(["kubernetes"]));
            set_default(map, &["status", "phase"], json!("Active"));
        }
        ("apps", "deployments" | "replicasets" | "statefulsets") => {
            set_default(map, &["spec", "replicas"], json!(1));
        }
        _ => {}
    }
}

/// The taints the DefaultTolerationSeconds admission plugin makes every pod tolerate.
const DEFAULT_TOLERATED_TAINTS: [&str; 2] = [
    "node.kubernetes.io/not-ready",
    "node.kubernetes.io/unreachable",
];
/// How long (upstream `--default-unreachable-toleration-seconds` and
/// `--default-not-ready-toleration-seconds`).
const DEFAULT_TOLERATION_SECONDS: i64 = 300;

/// The DefaultTolerationSeconds admission plugin: a pod that does not tolerate the not-ready or
/// unreachable `NoExecute` taint gets a toleration of it for 300 s.
fn default_toleration_seconds(pod: &mut Map<String, Value>) {
    let Some(spec) = pod.get_mut("spec").and_then(Value::as_object_mut) else {
        return;
    };
    let tolerations = spec
        .entry("tolerations")
        .or_insert_with(|| Value::Array(Vec::new()));
    let Some(list) = tolerations.as_array_mut() else {
        return;
    };
    for key in DEFAULT_TOLERATED_TAINTS {
        let tolerated = list.iter().any(|t| {
            let effect = t.get("effect").and_then(Value::as_str).unwrap_or_default();
            let tkey = t.get("key").and_then(Value::as_str).unwrap_or_default();
            let exists = t.get("operator").and_then(Value::as_str) == Some("Exists");
            (effect.is_empty() || effect == "NoExecute")
                && (tkey == key || (tkey.is_empty() && exists))
        });
        if !tolerated {
            list.push(json!({
                "key": key, "operator": "Exists", "effect": "NoExecute",
                "tolerationSeconds": DEFAULT_TOLERATION_SECONDS,
            }));
        }
    }
}

/// The object without the fields that do not count as a change.
pub(super) fn comparable(obj: &Value) -> Value {
    let mut v = obj.clone();
    if let Some(m) = v.get_mut("metadata").and_then(Value::as_object_mut) {
        m.remove("resourceVersion");
        m.remove("managedFields");
    }
    v
}

/// The part of an object whose change bumps `metadata.generation`.
fn generation_relevant(obj: &Value, info: &ResourceInfo) -> Value {
    let mut v = obj.clone();
    if let Some(m) = v.as_object_mut() {
        m.remove("metadata");
        if info.status_subresource {
            m.remove("status");
        }
    }
    v
}

/// Keep the fields clients cannot change through an update.
fn preserve_system_fields(new: &mut Value, old: &Value, info: &ResourceInfo) {
    let Some(new_map) = new.as_object_mut() else {
        return;
    };
    if new_map
        .get("apiVersion")
        .and_then(Value::as_str)
        .is_none_or(str::is_empty)
    {
        new_map.insert(
            "apiVersion".into(),
            old.get("apiVersion")
                .cloned()
                .unwrap_or(json!(info.api_version())),
        );
    }
    if new_map
        .get("kind")
        .and_then(Value::as_str)
        .is_none_or(str::is_empty)
    {
        new_map.insert("kind".into(), json!(info.kind));
    }
    let md = new_map.entry("metadata").or_insert_with(|| json!({}));
    let Some(md) = md.as_object_mut() else { return };
    for field in [
        "name",
        "namespace",
        "uid",
        "creationTimestamp",
        "deletionTimestamp",
        "deletionGracePeriodSeconds",
    ] {
        match old.pointer(&format!("/metadata/{field}")) {
            Some(v) => md.insert(field.into(), v.clone()),
            None => md.remove(field),
        };
    }
    md.remove("managedFields");
}

/// The conditions a real API server's CRD controller sets once the names are accepted.
pub(super) fn crd_established(mut crd: Value, now: Timestamp) -> Value {
    let names = crd.pointer("/spec/names").cloned().unwrap_or(json!({}));
    let stored: Vec<Value> = crd
        .pointer("/spec/versions")
        .and_then(Value::as_array)
        .map(|vs| {
            vs.iter()
                .filter(|v| v.get("storage") == Some(&json!(true)))
                .filter_map(|v| v.get("name").cloned())
                .collect()
        })
        .unwrap_or_default();
    let t = meta::format_time(now);
    if let Some(m) = crd.as_object_mut() {
        m.insert(
            "status".into(),
            json!({
                "acceptedNames": names,
                "storedVersions": stored,
                "conditions": [
                    {"type": "NamesAccepted", "status": "True", "reason": "NoConflicts", "message": "no conflicts found", "lastTransitionTime": t},
                    {"type": "Established", "status": "True", "reason": "InitialNamesAccepted", "message": "the initial names have been accepted", "lastTransitionTime": t},
                ],
            }),
        );
    }
    crd
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::super::fixtures::{pod, pods};
    use super::*;
    use crate::apiserver::PatchKind;
    use crate::apiserver::resources::GroupResource;
    use crate::apiserver::store::Store;

    #[test]
    fn pods_tolerate_not_ready_and_unreachable_for_300_seconds() {
        let store = Store::new();
        let created = store
            .create(&pods(), Some("default"), pod("plain", None))
            .unwrap();
        let tolerations = created["spec"]["tolerations"].as_array().unwrap().clone();
        for key in DEFAULT_TOLERATED_TAINTS {
            assert!(
                tolerations.contains(&json!({"key": key, "operator": "Exists",
                    "effect": "NoExecute", "tolerationSeconds": 300})),
                "{tolerations:?}"
            );
        }
        // A pod that already tolerates one (a DaemonSet pod: forever) keeps its own.
        let mut daemon = pod("daemon", None);
        daemon["spec"]["tolerations"] = json!([
            {"key": "node.kubernetes.io/unreachable", "operator": "Exists", "effect": "NoExecute"},
        ]);
        let created = store.create(&pods(), Some("default"), daemon).unwrap();
        let tolerations = created["spec"]["tolerations"].as_array().unwrap();
        assert_eq!(tolerations.len(), 2);
        assert!(tolerations[0].get("tolerationSeconds").is_none());
        assert_eq!(tolerations[1]["key"], "node.kubernetes.io/not-ready");
        let mut everything = pod("everything", None);
        everything["spec"]["tolerations"] = json!([{"operator": "Exists"}]);
        let created = store.create(&pods(), Some("default"), everything).unwrap();
        assert_eq!(created["spec"]["tolerations"].as_array().unwrap().len(), 1);
    }

    #[test]
    fn missing_namespace_and_invalid_names() {
        let store = Store::new();
        let mut elsewhere = pod("a", None);
        elsewhere["metadata"]["namespace"] = json!("nope");
        assert_eq!(
            store
                .create(&pods(), Some("nope"), elsewhere)
                .unwrap_err()
                .code(),
            404
        );
        assert_eq!(
            store
                .create(&pods(), Some("kube-system"), pod("a", None))
                .unwrap_err()
                .code(),
            400
        );
        assert_eq!(
            store
                .create(&pods(), Some("default"), pod("A_b", None))
                .unwrap_err()
                .code(),
            422
        );
        let mut nameless = pod("", None);
        nameless["metadata"]["generateName"] = json!("web-");
        let created = store.create(&pods(), Some("default"), nameless).unwrap();
        assert!(meta::name(&created).starts_with("web-"));
        assert_eq!(meta::name(&created).len(), 9);
    }

    #[test]
    fn generation_bumps_on_spec_change_only() {
        let store = Store::new();
        let gr = GroupResource::new("apps", "deployments");
        let d = json!({"metadata": {"name": "d", "namespace": "default"}, "spec": {"replicas": 2}});
        let created = store.create(&gr, Some("default"), d).unwrap();
        assert_eq!(created["metadata"]["generation"], 1);
        let key = ResourceKey::new(gr, Some("default"), "d");
        let labelled = store
            .patch(
                &key,
                &PatchKind::Merge,
                &json!({"metadata": {"labels": {"a": "b"}}}),
            )
            .unwrap();
        assert_eq!(labelled["metadata"]["generation"], 1);
        let scaled = store
            .patch(&key, &PatchKind::Merge, &json!({"spec": {"replicas": 3}}))
            .unwrap();
        assert_eq!(scaled["metadata"]["generation"], 2);
        let status = store
            .patch_status(&key, &PatchKind::Merge, &json!({"status": {"replicas": 3}}))
            .unwrap();
        assert_eq!(status["metadata"]["generation"], 2);
        assert_eq!(status["status"]["replicas"], 3);
    }

    #[test]
    fn a_secrets_string_data_is_merged_into_its_data() {
        let registry = crate::apiserver::resources::Registry::new();
        let info = registry
            .get(&crate::apiserver::GroupResource::core("secrets"))
            .unwrap()
            .clone();
        let mut secret = json!({
            "metadata": {"name": "s"},
            "data": {"a": "b2xk", "keep": "a2VlcA=="},
            "stringData": {"a": "new", "b": "two"},
        });
        merge_string_data(&info, &mut secret);
        assert_eq!(
            secret,
            json!({
                "metadata": {"name": "s"},
                "data": {"a": "bmV3", "keep": "a2VlcA==", "b": "dHdv"},
            })
        );
    }

    #[test]
    fn uids_are_v4() {
        let u = new_uid();
        assert_eq!(u.len(), 36);
        assert_eq!(&u[14..15], "4");
        assert!("89ab".contains(&u[19..20]));
    }
}
