//! Small accessors for objects held as JSON, shared by the store, the eviction handler and the
//! disruption controller.

use jiff::Timestamp;
use serde_json::Value;

/// `metadata.name` or `""`.
pub fn name(obj: &Value) -> &str {
    str_at(obj, "/metadata/name")
}

/// `metadata.namespace` or `""`.
pub fn namespace(obj: &Value) -> &str {
    str_at(obj, "/metadata/namespace")
}

/// `metadata.namespace`, or `None` when it is empty (cluster-scoped objects).
pub fn namespace_opt(obj: &Value) -> Option<&str> {
    non_empty(namespace(obj))
}

/// `metadata.uid` or `""`.
pub fn uid(obj: &Value) -> &str {
    str_at(obj, "/metadata/uid")
}

/// The string at a JSON pointer, or `""`.
pub fn str_at<'a>(obj: &'a Value, pointer: &str) -> &'a str {
    obj.pointer(pointer)
        .and_then(Value::as_str)
        .unwrap_or_default()
}

/// `s`, or `None` when it is empty (the API's "unset" for strings).
pub fn non_empty(s: &str) -> Option<&str> {
    (!s.is_empty()).then_some(s)
}

/// The strings of a JSON array (other elements skipped); none when `value` is not an array.
pub fn strings(value: Option<&Value>) -> impl Iterator<Item = &str> {
    value
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
}

/// Whether `metadata.finalizers` holds any finalizer (deletion then waits for them).
pub fn has_finalizers(obj: &Value) -> bool {
    obj.pointer("/metadata/finalizers")
        .and_then(Value::as_array)
        .is_some_and(|f| !f.is_empty())
}

/// `metadata.resourceVersion` parsed, if present and numeric.
pub fn resource_version(obj: &Value) -> Option<u64> {
    obj.pointer("/metadata/resourceVersion")
        .and_then(Value::as_str)
        .and_then(|s| s.parse().ok())
}

/// Whether `metadata.deletionTimestamp` is set.
pub fn is_terminating(obj: &Value) -> bool {
    obj.pointer("/metadata/deletionTimestamp")
        .is_some_and(|v| !v.is_null())
}

/// Whether a condition of this type has status `"True"` in `status.conditions`.
pub fn condition_true(obj: &Value, condition_type: &str) -> bool {
    obj.pointer("/status/conditions")
        .and_then(Value::as_array)
        .is_some_and(|conds| {
            conds.iter().any(|c| {
                c.get("type").and_then(Value::as_str) == Some(condition_type)
                    && c.get("status").and_then(Value::as_str) == Some("True")
            })
        })
}

/// A pod counts as ready when its `Ready` condition is `True` (upstream `IsPodReady`).
pub fn pod_ready(pod: &Value) -> bool {
    condition_true(pod, "Ready")
}

/// `status.phase` of a pod.
pub fn pod_phase(pod: &Value) -> &str {
    str_at(pod, "/status/phase")
}

/// Whether the pod reached `Succeeded` or `Failed`.
pub fn pod_terminal(pod: &Value) -> bool {
    matches!(pod_phase(pod), "Succeeded" | "Failed")
}

/// A node is ready when its `Ready` condition is `True`.
pub fn node_ready(node: &Value) -> bool {
    condition_true(node, "Ready")
}

/// `spec.unschedulable` of a node.
pub fn node_unschedulable(node: &Value) -> bool {
    node.pointer("/spec/unschedulable")
        .and_then(Value::as_bool)
        .unwrap_or(false)
}

/// The controller owner reference (`controller: true`), if any.
pub fn controller_ref(obj: &Value) -> Option<&Value> {
    obj.pointer("/metadata/ownerReferences")
        .and_then(Value::as_array)?
        .iter()
        .find(|r| r.get("controller").and_then(Value::as_bool) == Some(true))
}

/// RFC 3339 with second precision, as `metav1.Time` serializes.
pub fn format_time(t: Timestamp) -> String {
    t.strftime("%Y-%m-%dT%H:%M:%SZ").to_string()
}

/// RFC 3339 with microseconds, as `metav1.MicroTime` serializes.
pub fn format_micro_time(t: Timestamp) -> String {
    t.strftime("%Y-%m-%dT%H:%M:%S.%6fZ").to_string()
}

/// Parse a `metav1.Time`.
pub fn parse_time(s: &str) -> Option<Timestamp> {
    s.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn times_round_trip() {
        let t: Timestamp = "2025-03-01T10:20:30.123456Z".parse().unwrap();
        assert_eq!(format_time(t), "2025-03-01T10:20:30Z");
        assert_eq!(format_micro_time(t), "2025-03-01T10:20:30.123456Z");
        assert_eq!(
            parse_time("2025-03-01T10:20:30Z").unwrap().as_second(),
            t.as_second()
        );
    }

    #[test]
    fn readiness() {
        let pod = json!({"status": {"conditions": [{"type": "Ready", "status": "True"}]}});
        assert!(pod_ready(&pod));
        assert!(!pod_ready(&json!({})));
    }
}
