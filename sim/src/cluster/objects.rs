//! Small helpers over the JSON objects the simulated cluster reads and writes: resources,
//! owner references, conditions, taints and tolerations.

use jiff::Timestamp;
use serde_json::{Map, Value, json};

use crate::apiserver::{Error as ApiError, GroupResource, meta};

/// Core `pods`.
pub(crate) fn pods() -> GroupResource {
    GroupResource::core("pods")
}

/// Core `nodes`.
pub(crate) fn nodes() -> GroupResource {
    GroupResource::core("nodes")
}

/// `apps` resources.
pub(crate) fn apps(resource: &str) -> GroupResource {
    GroupResource::new("apps", resource)
}

/// `coordination.k8s.io` `leases`.
pub(crate) fn leases() -> GroupResource {
    GroupResource::new("coordination.k8s.io", "leases")
}

/// The uid of the controller owner reference, if any.
pub(crate) fn controller_uid(obj: &Value) -> Option<&str> {
    meta::controller_ref(obj)
        .and_then(|r| r.get("uid"))
        .and_then(Value::as_str)
}

/// An owner reference with `controller: true` to `owner` (which has `apiVersion` and `kind`).
pub(crate) fn controller_ref_to(owner: &Value) -> Value {
    json!({
        "apiVersion": meta::str_at(owner, "/apiVersion"),
        "kind": meta::str_at(owner, "/kind"),
        "name": meta::name(owner),
        "uid": meta::uid(owner),
        "controller": true,
        "blockOwnerDeletion": true,
    })
}

/// `metadata.labels`, if any.
pub(crate) fn labels(obj: &Value) -> Option<&Map<String, Value>> {
    obj.pointer("/metadata/labels").and_then(Value::as_object)
}

/// Whether every `key: value` of `selector` (a `nodeSelector` map) is among `labels`.
pub(crate) fn map_selects(selector: Option<&Value>, labels: Option<&Map<String, Value>>) -> bool {
    selector.and_then(Value::as_object).is_none_or(|sel| {
        sel.iter()
            .all(|(k, v)| labels.and_then(|l| l.get(k)) == Some(v))
    })
}

/// Whether a pod's `tolerations` tolerate `taint` (upstream `ToleratesTaint`).
pub(crate) fn tolerates(tolerations: &[Value], taint: &Value) -> bool {
    let taint_key = meta::str_at(taint, "/key");
    let taint_value = meta::str_at(taint, "/value");
    let taint_effect = meta::str_at(taint, "/effect");
    tolerations.iter().any(|t| {
        let effect = meta::str_at(t, "/effect");
        if !effect.is_empty() && effect != taint_effect {
            return false;
        }
        let key = meta::str_at(t, "/key");
        let operator = t.get("operator").and_then(Value::as_str).unwrap_or("Equal");
        if key.is_empty() {
            // An empty key with `Exists` tolerates everything.
            return operator == "Exists";
        }
        if key != taint_key {
            return false;
        }
        match operator {
            "Exists" => true,
            _ => meta::str_at(t, "/value") == taint_value,
        }
    })
}

/// The first `NoSchedule`/`NoExecute` taint of `node` that `tolerations` do not tolerate,
/// skipping the taint keys in `ignored`.
pub(crate) fn untolerated_taint<'a>(
    node: &'a Value,
    tolerations: &[Value],
    ignored: &[&str],
) -> Option<&'a Value> {
    node.pointer("/spec/taints")
        .and_then(Value::as_array)?
        .iter()
        .filter(|t| matches!(meta::str_at(t, "/effect"), "NoSchedule" | "NoExecute"))
        .filter(|t| !ignored.contains(&meta::str_at(t, "/key")))
        .find(|t| !tolerates(tolerations, t))
}

/// A resource quantity (`100m`, `1.5`, `128Mi`, `2G`, `1e3`) in thousandths of its unit
/// (millicores for CPU, millibytes for memory), rounded up; `None` when it does not parse.
pub(crate) fn quantity_milli(text: &str) -> Option<u128> {
    let text = text.trim();
    let split = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(text.len());
    let (number, suffix) = text.split_at(split);
    // The quantity in thousandths is number × num / den.
    let (num, den): (u128, u128) = match suffix {
        "" => (1000, 1),
        "m" => (1, 1),
        "k" => (1_000_000, 1),
        "M" => (1_000_000_000, 1),
        "G" => (1_000_000_000_000, 1),
        "T" => (1_000_000_000_000_000, 1),
        "Ki" => (1000 << 10, 1),
        "Mi" => (1000 << 20, 1),
        "Gi" => (1000 << 30, 1),
        "Ti" => (1000 << 40, 1),
        s if s.starts_with(['e', 'E']) => {
            let exponent: i32 = s[1..].parse().ok()?;
            let power = 10u128.checked_pow(exponent.unsigned_abs())?;
            if exponent >= 0 {
                (1000u128.checked_mul(power)?, 1)
            } else {
                (1000, power)
            }
        }
        _ => return None,
    };
    let (whole, fraction) = number.split_once('.').unwrap_or((number, ""));
    if whole.is_empty() && fraction.is_empty() {
        return None;
    }
    let digits = format!("{whole}{fraction}");
    let value: u128 = digits.parse().ok()?;
    let den = den.checked_mul(10u128.checked_pow(u32::try_from(fraction.len()).ok()?)?)?;
    Some(value.checked_mul(num)?.div_ceil(den))
}

/// What a pod requests: CPU in millicores and memory in millibytes, summed over its
/// containers (its init containers run first, so their largest request counts if larger).
pub(crate) fn pod_requests(pod: &Value) -> (u128, u128) {
    let of = |containers: Option<&Value>, resource: &str| -> Vec<u128> {
        containers
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .map(|c| {
                c.pointer(&format!("/resources/requests/{resource}"))
                    .and_then(Value::as_str)
                    .and_then(quantity_milli)
                    .unwrap_or(0)
            })
            .collect()
    };
    let spec = pod.get("spec");
    let total = |resource: &str| {
        let app: u128 = of(spec.and_then(|s| s.get("containers")), resource)
            .iter()
            .sum();
        let init = of(spec.and_then(|s| s.get("initContainers")), resource)
            .into_iter()
            .max()
            .unwrap_or(0);
        app.max(init)
    };
    (total("cpu"), total("memory"))
}

/// A node's allocatable CPU (millicores) and memory (millibytes).
pub(crate) fn node_allocatable(node: &Value) -> (u128, u128) {
    let get = |resource: &str| {
        node.pointer(&format!("/status/allocatable/{resource}"))
            .and_then(Value::as_str)
            .and_then(quantity_milli)
            .unwrap_or(0)
    };
    (get("cpu"), get("memory"))
}

/// A pod spec's tolerations.
pub(crate) fn tolerations_of(pod_spec: Option<&Value>) -> Vec<Value> {
    pod_spec
        .and_then(|s| s.get("tolerations"))
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default()
}

/// The parts of a node that decide where pods may run: not its heartbeats. Controllers that
/// watch nodes compare these to ignore the status writes that change nothing for them.
pub(crate) fn node_placement_view(node: &Value) -> (bool, bool, Value, Value) {
    (
        meta::node_ready(node),
        meta::node_unschedulable(node),
        node.pointer("/metadata/labels")
            .cloned()
            .unwrap_or(Value::Null),
        node.pointer("/spec/taints").cloned().unwrap_or(Value::Null),
    )
}

/// Set the condition `type` in a `conditions` array; `lastTransitionTime` moves only when the
/// status changes. Returns whether anything changed.
pub(crate) fn set_condition(
    status: &mut Value,
    condition_type: &str,
    value: &str,
    reason: Option<&str>,
    message: Option<&str>,
    now: Timestamp,
) -> bool {
    let Some(status) = status.as_object_mut() else {
        return false;
    };
    let conditions = status
        .entry("conditions")
        .or_insert_with(|| Value::Array(Vec::new()));
    if !conditions.is_array() {
        *conditions = Value::Array(Vec::new());
    }
    let Some(list) = conditions.as_array_mut() else {
        return false;
    };
    let time = meta::format_time(now);
    let mut condition = json!({"type": condition_type, "status": value});
    if let Some(reason) = reason {
        condition["reason"] = json!(reason);
    }
    if let Some(message) = message {
        condition["message"] = json!(message);
    }
    match list
        .iter_mut()
        .find(|c| c.get("type").and_then(Value::as_str) == Some(condition_type))
    {
        Some(existing) => {
            let same_status = existing.get("status").and_then(Value::as_str) == Some(value);
            let transition = if same_status {
                existing
                    .get("lastTransitionTime")
                    .cloned()
                    .unwrap_or_else(|| json!(time))
            } else {
                json!(time)
            };
            condition["lastTransitionTime"] = transition;
            if let Some(probe) = existing.get("lastProbeTime") {
                condition["lastProbeTime"] = probe.clone();
            }
            if let Some(beat) = existing.get("lastHeartbeatTime") {
                condition["lastHeartbeatTime"] = beat.clone();
            }
            if *existing == condition {
                return false;
            }
            *existing = condition;
        }
        None => {
            condition["lastTransitionTime"] = json!(time);
            list.push(condition);
        }
    }
    true
}

/// A short, stable hash of a JSON value (FNV-1a over its canonical serialization), spelled
/// with the alphabet Kubernetes uses for generated names, as `pod-template-hash` is.
pub(crate) fn stable_hash(value: &Value) -> String {
    const ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    let text = value.to_string();
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in text.bytes() {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    let base = ALPHABET.len() as u64;
    (0..10)
        .map(|_| {
            let c = ALPHABET[(hash % base) as usize] as char;
            hash /= base;
            c
        })
        .collect()
}

/// Whether an API error is a 404 (the object went away meanwhile: nothing to do).
pub(crate) fn is_not_found(e: &ApiError) -> bool {
    e.code() == 404
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantities() {
        assert_eq!(quantity_milli("100m"), Some(100));
        assert_eq!(quantity_milli("3800m"), Some(3800));
        assert_eq!(quantity_milli("4"), Some(4000));
        assert_eq!(quantity_milli("1.5"), Some(1500));
        assert_eq!(quantity_milli("128Mi"), Some(128 * 1024 * 1024 * 1000));
        assert_eq!(quantity_milli("2G"), Some(2_000_000_000_000));
        assert_eq!(quantity_milli("1e3"), Some(1_000_000));
        assert_eq!(quantity_milli("lots"), None);
        assert_eq!(quantity_milli("1Qi"), None);
        let pod = json!({"spec": {
            "containers": [
                {"resources": {"requests": {"cpu": "100m", "memory": "64Mi"}}},
                {"resources": {"requests": {"cpu": "250m"}}},
            ],
            "initContainers": [{"resources": {"requests": {"cpu": "1"}}}],
        }});
        assert_eq!(pod_requests(&pod), (1000, 64 * 1024 * 1024 * 1000));
        assert_eq!(quantity_milli("0.1"), Some(100));
        assert_eq!(quantity_milli("15862584Ki"), Some(15_862_584 * 1024 * 1000));
    }

    #[test]
    fn tolerations_match_like_upstream() {
        let taint = json!({"key": "node-role.kubernetes.io/control-plane", "effect": "NoSchedule"});
        assert!(tolerates(&[json!({"operator": "Exists"})], &taint));
        assert!(tolerates(
            &[
                json!({"key": "node-role.kubernetes.io/control-plane", "operator": "Exists", "effect": "NoSchedule"})
            ],
            &taint
        ));
        assert!(!tolerates(
            &[
                json!({"key": "node-role.kubernetes.io/control-plane", "operator": "Exists", "effect": "NoExecute"})
            ],
            &taint
        ));
        assert!(!tolerates(
            &[json!({"key": "other", "operator": "Exists"})],
            &taint
        ));
        let valued = json!({"key": "dedicated", "value": "db", "effect": "NoSchedule"});
        assert!(tolerates(
            &[json!({"key": "dedicated", "value": "db"})],
            &valued
        ));
        assert!(!tolerates(
            &[json!({"key": "dedicated", "value": "web"})],
            &valued
        ));
        assert!(!tolerates(&[], &valued));
    }

    #[test]
    fn untolerated_taints_skip_ignored_and_soft_effects() {
        let node = json!({"spec": {"taints": [
            {"key": "soft", "effect": "PreferNoSchedule"},
            {"key": "node.kubernetes.io/unschedulable", "effect": "NoSchedule"},
            {"key": "hard", "effect": "NoExecute"},
        ]}});
        let found = untolerated_taint(&node, &[], &["node.kubernetes.io/unschedulable"]);
        assert_eq!(found.map(|t| meta::str_at(t, "/key")), Some("hard"));
        assert!(
            untolerated_taint(
                &node,
                &[json!({"key": "hard", "operator": "Exists"})],
                &["node.kubernetes.io/unschedulable"]
            )
            .is_none()
        );
    }

    #[test]
    fn conditions_keep_transition_time_while_status_holds() {
        let t1 = Timestamp::from_second(1_000).unwrap_or(Timestamp::UNIX_EPOCH);
        let t2 = Timestamp::from_second(2_000).unwrap_or(Timestamp::UNIX_EPOCH);
        let mut status = json!({});
        assert!(set_condition(
            &mut status,
            "Ready",
            "False",
            Some("A"),
            None,
            t1
        ));
        assert!(!set_condition(
            &mut status,
            "Ready",
            "False",
            Some("A"),
            None,
            t2
        ));
        assert!(set_condition(
            &mut status,
            "Ready",
            "False",
            Some("B"),
            None,
            t2
        ));
        assert_eq!(
            status["conditions"][0]["lastTransitionTime"],
            meta::format_time(t1)
        );
        assert!(set_condition(&mut status, "Ready", "True", None, None, t2));
        assert_eq!(
            status["conditions"][0]["lastTransitionTime"],
            meta::format_time(t2)
        );
        assert_eq!(status["conditions"].as_array().map(Vec::len), Some(1));
    }

    #[test]
    fn node_selectors() {
        let labels = json!({"a": "1", "b": "2"});
        let labels = labels.as_object();
        assert!(map_selects(None, labels));
        assert!(map_selects(None, None));
        assert!(map_selects(Some(&json!({"a": "1"})), labels));
        assert!(!map_selects(Some(&json!({"a": "2"})), labels));
        assert!(!map_selects(Some(&json!({"c": "1"})), labels));
        assert!(!map_selects(Some(&json!({"a": "1"})), None));
    }

    #[test]
    fn hashes_are_stable_and_name_safe() {
        let a = stable_hash(&json!({"x": 1}));
        assert_eq!(a, stable_hash(&json!({"x": 1})));
        assert_ne!(a, stable_hash(&json!({"x": 2})));
        assert_eq!(a.len(), 10);
        assert!(
            a.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
        );
    }
}
