//! Server-side printing: the `meta.k8s.io/v1 Table` that `kubectl get` asks for, with the
//! columns of upstream `pkg/printers/internalversion/printers.go` for the kinds rota's users
//! look at, CRD printer columns, and NAME/AGE for everything else.

use jiff::Timestamp;
use serde_json::{Value, json};

use crate::apiserver::meta;
use crate::apiserver::resources::ResourceInfo;

/// What a Table row carries besides its cells (`includeObject`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IncludeObject {
    /// No object.
    None,
    /// `PartialObjectMetadata` (the default).
    Metadata,
    /// The full object.
    Object,
}

impl IncludeObject {
    /// From the `includeObject` query parameter.
    pub fn parse(s: Option<&str>) -> Self {
        match s {
            Some("None") => IncludeObject::None,
            Some("Object") => IncludeObject::Object,
            _ => IncludeObject::Metadata,
        }
    }
}

fn col(name: &str, ty: &str, priority: i64) -> Value {
    let format = if name == "Name" { "name" } else { "" };
    json!({"name": name, "type": ty, "format": format, "description": "", "priority": priority})
}

/// Upstream `duration.HumanDuration`.
pub fn human_duration(seconds: i64) -> String {
    if seconds < -1 {
        return "<invalid>".into();
    }
    if seconds < 0 {
        return "0s".into();
    }
    if seconds < 120 {
        return format!("{seconds}s");
    }
    let minutes = seconds / 60;
    if minutes < 10 {
        let s = seconds % 60;
        return if s == 0 {
            format!("{minutes}m")
        } else {
            format!("{minutes}m{s}s")
        };
    }
    if minutes < 180 {
        return format!("{minutes}m");
    }
    let hours = seconds / 3600;
    if hours < 8 {
        let m = minutes % 60;
        return if m == 0 {
            format!("{hours}h")
        } else {
            format!("{hours}h{m}m")
        };
    }
    if hours < 48 {
        return format!("{hours}h");
    }
    if hours < 24 * 8 {
        let h = hours % 24;
        return if h == 0 {
            format!("{}d", hours / 24)
        } else {
            format!("{}d{h}h", hours / 24)
        };
    }
    if hours < 24 * 365 * 2 {
        return format!("{}d", hours / 24);
    }
    if hours < 24 * 365 * 8 {
        let dy = (hours / 24) % 365;
        return if dy == 0 {
            format!("{}y", hours / 24 / 365)
        } else {
            format!("{}y{dy}d", hours / 24 / 365)
        };
    }
    format!("{}y", hours / 24 / 365)
}

fn age(obj: &Value, now: Timestamp) -> String {
    match meta::parse_time(meta::str_at(obj, "/metadata/creationTimestamp")) {
        Some(t) => human_duration(now.as_second() - t.as_second()),
        None => "<unknown>".into(),
    }
}

fn int_at(obj: &Value, pointer: &str) -> i64 {
    obj.pointer(pointer).and_then(Value::as_i64).unwrap_or(0)
}

fn or_none(s: &str) -> String {
    if s.is_empty() {
        "<none>".into()
    } else {
        s.to_string()
    }
}

fn int_or_string(v: Option<&Value>) -> String {
    match v {
        Some(Value::Number(n)) => n.to_string(),
        Some(Value::String(s)) => s.clone(),
        _ => "N/A".into(),
    }
}

fn pod_status_reason(pod: &Value) -> String {
    let mut reason = meta::pod_phase(pod).to_string();
    if let Some(r) = pod.pointer("/status/reason").and_then(Value::as_str) {
        reason = r.to_string();
    }
    if let Some(statuses) = pod
        .pointer("/status/containerStatuses")
        .and_then(Value::as_array)
    {
        for s in statuses.iter().rev() {
            if let Some(r) = s.pointer("/state/waiting/reason").and_then(Value::as_str) {
                reason = r.to_string();
            } else if let Some(r) = s
                .pointer("/state/terminated/reason")
                .and_then(Value::as_str)
            {
                reason = r.to_string();
            }
        }
    }
    if meta::is_terminating(pod) {
        reason = if pod.pointer("/status/reason").and_then(Value::as_str) == Some("NodeLost") {
            "Unknown".into()
        } else {
            "Terminating".into()
        };
    }
    reason
}

fn pod_row(pod: &Value, now: Timestamp) -> Vec<Value> {
    let containers = pod
        .pointer("/spec/containers")
        .and_then(Value::as_array)
        .map_or(0, Vec::len);
    let statuses = pod
        .pointer("/status/containerStatuses")
        .and_then(Value::as_array);
    let ready = statuses.map_or(0, |s| {
        s.iter()
            .filter(|c| c.get("ready") == Some(&json!(true)))
            .count()
    });
    let restarts: i64 = statuses.map_or(0, |s| s.iter().map(|c| int_at(c, "/restartCount")).sum());
    let gates = pod
        .pointer("/spec/readinessGates")
        .and_then(Value::as_array);
    let gates = match gates {
        Some(g) if !g.is_empty() => {
            let met = g
                .iter()
                .filter(|gate| {
                    meta::condition_true(
                        pod,
                        gate.get("conditionType")
                            .and_then(Value::as_str)
                            .unwrap_or_default(),
                    )
                })
                .count();
            format!("{met}/{}", g.len())
        }
        _ => "<none>".into(),
    };
    vec![
        json!(meta::name(pod)),
        json!(format!("{ready}/{containers}")),
        json!(pod_status_reason(pod)),
        json!(restarts),
        json!(age(pod, now)),
        json!(or_none(meta::str_at(pod, "/status/podIP"))),
        json!(or_none(meta::str_at(pod, "/spec/nodeName"))),
        json!(or_none(meta::str_at(pod, "/status/nominatedNodeName"))),
        json!(gates),
    ]
}

fn node_row(node: &Value, now: Timestamp) -> Vec<Value> {
    let ready = node
        .pointer("/status/conditions")
        .and_then(Value::as_array)
        .and_then(|c| c.iter().find(|c| c.get("type") == Some(&json!("Ready"))))
        .and_then(|c| c.get("status").and_then(Value::as_str));
    let mut status = match ready {
        Some("True") => "Ready".to_string(),
        Some("False") => "NotReady".to_string(),
        _ => "Unknown".to_string(),
    };
    if meta::node_unschedulable(node) {
        status.push_str(",SchedulingDisabled");
    }
    let mut roles: Vec<String> = node
        .pointer("/metadata/labels")
        .and_then(Value::as_object)
        .map(|l| {
            l.iter()
                .filter_map(|(k, v)| {
                    if let Some(role) = k.strip_prefix("node-role.kubernetes.io/") {
                        Some(role.to_string())
                    } else if k == "kubernetes.io/role" {
                        v.as_str().map(str::to_string)
                    } else {
                        None
                    }
                })
                .filter(|r| !r.is_empty())
                .collect()
        })
        .unwrap_or_default();
    roles.sort();
    let address = |ty: &str| {
        node.pointer("/status/addresses")
            .and_then(Value::as_array)
            .and_then(|a| a.iter().find(|a| a.get("type") == Some(&json!(ty))))
            .and_then(|a| a.get("address").and_then(Value::as_str))
            .unwrap_or("<none>")
            .to_string()
    };
    let info = |f: &str| or_none(meta::str_at(node, &format!("/status/nodeInfo/{f}")));
    vec![
        json!(meta::name(node)),
        json!(status),
        json!(if roles.is_empty() {
            "<none>".to_string()
        } else {
            roles.join(",")
        }),
        json!(age(node, now)),
        json!(meta::str_at(node, "/status/nodeInfo/kubeletVersion")),
        json!(address("InternalIP")),
        json!(address("ExternalIP")),
        json!(info("osImage")),
        json!(info("kernelVersion")),
        json!(info("containerRuntimeVersion")),
    ]
}

/// Evaluate a simple printer-column JSONPath (`.status.phase`, `.spec.items[0].name`).
fn json_path(obj: &Value, path: &str) -> Value {
    let mut cur = obj;
    for part in path
        .trim_start_matches('.')
        .split('.')
        .filter(|p| !p.is_empty())
    {
        let (field, index) = match part.split_once('[') {
            Some((f, rest)) => (f, rest.trim_end_matches(']').parse::<usize>().ok()),
            None => (part, None),
        };
        let Some(next) = cur.get(field) else {
            return Value::Null;
        };
        cur = next;
        if let Some(i) = index {
            let Some(next) = cur.get(i) else {
                return Value::Null;
            };
            cur = next;
        }
    }
    cur.clone()
}

/// Column definitions and a row builder for a resource.
fn columns(info: &ResourceInfo) -> Vec<Value> {
    match (info.group.as_str(), info.plural.as_str()) {
        ("", "pods") => vec![
            col("Name", "string", 0),
            col("Ready", "string", 0),
            col("Status", "string", 0),
            col("Restarts", "string", 0),
            col("Age", "string", 0),
            col("IP", "string", 1),
            col("Node", "string", 1),
            col("Nominated Node", "string", 1),
            col("Readiness Gates", "string", 1),
        ],
        ("", "nodes") => vec![
            col("Name", "string", 0),
            col("Status", "string", 0),
            col("Roles", "string", 0),
            col("Age", "string", 0),
            col("Version", "string", 0),
            col("Internal-IP", "string", 1),
            col("External-IP", "string", 1),
            col("OS-Image", "string", 1),
            col("Kernel-Version", "string", 1),
            col("Container-Runtime", "string", 1),
        ],
        ("policy", "poddisruptionbudgets") => vec![
            col("Name", "string", 0),
            col("Min Available", "string", 0),
            col("Max Unavailable", "string", 0),
            col("Allowed Disruptions", "integer", 0),
            col("Age", "string", 0),
        ],
        ("", "namespaces") => vec![
            col("Name", "string", 0),
            col("Status", "string", 0),
            col("Age", "string", 0),
        ],
        ("apps", "deployments") => vec![
            col("Name", "string", 0),
            col("Ready", "string", 0),
            col("Up-to-date", "string", 0),
            col("Available", "string", 0),
            col("Age", "string", 0),
        ],
        ("apps", "replicasets") => vec![
            col("Name", "string", 0),
            col("Desired", "integer", 0),
            col("Current", "integer", 0),
            col("Ready", "integer", 0),
            col("Age", "string", 0),
        ],
        ("apps", "statefulsets") => vec![
            col("Name", "string", 0),
            col("Ready", "string", 0),
            col("Age", "string", 0),
        ],
        ("apps", "daemonsets") => vec![
            col("Name", "string", 0),
            col("Desired", "integer", 0),
            col("Current", "integer", 0),
            col("Ready", "integer", 0),
            col("Up-to-date", "integer", 0),
            col("Available", "integer", 0),
            col("Age", "string", 0),
        ],
        ("coordination.k8s.io", "leases") => {
            vec![
                col("Name", "string", 0),
                col("Holder", "string", 0),
                col("Age", "string", 0),
            ]
        }
        _ => {
            let mut cols = vec![col("Name", "string", 0)];
            for c in &info.printer_columns {
                cols.push(col(&c.name, &c.column_type, c.priority));
            }
            cols.push(col("Age", "string", 0));
            cols
        }
    }
}

fn cells(info: &ResourceInfo, obj: &Value, now: Timestamp) -> Vec<Value> {
    let name = json!(meta::name(obj));
    match (info.group.as_str(), info.plural.as_str()) {
        ("", "pods") => pod_row(obj, now),
        ("", "nodes") => node_row(obj, now),
        ("policy", "poddisruptionbudgets") => vec![
            name,
            json!(int_or_string(obj.pointer("/spec/minAvailable"))),
            json!(int_or_string(obj.pointer("/spec/maxUnavailable"))),
            json!(int_at(obj, "/status/disruptionsAllowed")),
            json!(age(obj, now)),
        ],
        ("", "namespaces") => vec![
            name,
            json!(meta::str_at(obj, "/status/phase")),
            json!(age(obj, now)),
        ],
        ("apps", "deployments") => vec![
            name,
            json!(format!(
                "{}/{}",
                int_at(obj, "/status/readyReplicas"),
                int_at(obj, "/spec/replicas")
            )),
            json!(int_at(obj, "/status/updatedReplicas")),
            json!(int_at(obj, "/status/availableReplicas")),
            json!(age(obj, now)),
        ],
        ("apps", "replicasets") => vec![
            name,
            json!(int_at(obj, "/spec/replicas")),
            json!(int_at(obj, "/status/replicas")),
            json!(int_at(obj, "/status/readyReplicas")),
            json!(age(obj, now)),
        ],
        ("apps", "statefulsets") => vec![
            name,
            json!(format!(
                "{}/{}",
                int_at(obj, "/status/readyReplicas"),
                int_at(obj, "/spec/replicas")
            )),
            json!(age(obj, now)),
        ],
        ("apps", "daemonsets") => vec![
            name,
            json!(int_at(obj, "/status/desiredNumberScheduled")),
            json!(int_at(obj, "/status/currentNumberScheduled")),
            json!(int_at(obj, "/status/numberReady")),
            json!(int_at(obj, "/status/updatedNumberScheduled")),
            json!(int_at(obj, "/status/numberAvailable")),
            json!(age(obj, now)),
        ],
        ("coordination.k8s.io", "leases") => {
            vec![
                name,
                json!(meta::str_at(obj, "/spec/holderIdentity")),
                json!(age(obj, now)),
            ]
        }
        _ => {
            let mut row = vec![name];
            for c in &info.printer_columns {
                let v = json_path(obj, &c.json_path);
                if c.column_type == "date" {
                    row.push(match v.as_str().and_then(meta::parse_time) {
                        Some(t) => json!(human_duration(now.as_second() - t.as_second())),
                        None => json!("<unknown>"),
                    });
                } else {
                    row.push(v);
                }
            }
            row.push(json!(age(obj, now)));
            row
        }
    }
}

fn row_object(obj: &Value, include: IncludeObject) -> Option<Value> {
    match include {
        IncludeObject::None => None,
        IncludeObject::Object => Some(obj.clone()),
        IncludeObject::Metadata => Some(json!({
            "kind": "PartialObjectMetadata",
            "apiVersion": "meta.k8s.io/v1",
            "metadata": obj.get("metadata").cloned().unwrap_or_else(|| json!({})),
        })),
    }
}

/// Render objects as a Table.
pub fn table<'a>(
    info: &ResourceInfo,
    objects: impl IntoIterator<Item = &'a Value>,
    resource_version: u64,
    continue_token: Option<&str>,
    include: IncludeObject,
    now: Timestamp,
) -> Value {
    let rows: Vec<Value> = objects
        .into_iter()
        .map(|obj| {
            let mut row = json!({"cells": cells(info, obj, now)});
            if let Some(o) = row_object(obj, include) {
                row["object"] = o;
            }
            row
        })
        .collect();
    let mut metadata = json!({"resourceVersion": resource_version.to_string()});
    if let Some(c) = continue_token {
        metadata["continue"] = json!(c);
    }
    json!({
        "kind": "Table",
        "apiVersion": "meta.k8s.io/v1",
        "metadata": metadata,
        "columnDefinitions": columns(info),
        "rows": rows,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn human_durations() {
        for (s, want) in [
            (5, "5s"),
            (119, "119s"),
            (120, "2m"),
            (150, "2m30s"),
            (900, "15m"),
            (3 * 3600 + 60, "3h1m"),
            (10 * 3600, "10h"),
            (3 * 86400 + 3600, "3d1h"),
            (20 * 86400, "20d"),
        ] {
            assert_eq!(human_duration(s), want);
        }
    }

    #[test]
    fn node_and_pdb_cells() {
        let reg = crate::apiserver::Registry::new();
        let now = Timestamp::from_second(1_000).unwrap();
        let node = json!({
            "metadata": {"name": "n1", "creationTimestamp": "1970-01-01T00:00:00Z", "labels": {"node-role.kubernetes.io/control-plane": ""}},
            "spec": {"unschedulable": true},
            "status": {"conditions": [{"type": "Ready", "status": "True"}], "nodeInfo": {"kubeletVersion": "v1.33.1"}}
        });
        let info = reg
            .get(&crate::apiserver::GroupResource::core("nodes"))
            .unwrap();
        let t = table(info, [&node], 7, None, IncludeObject::Metadata, now);
        assert_eq!(t["rows"][0]["cells"][1], "Ready,SchedulingDisabled");
        assert_eq!(t["rows"][0]["cells"][2], "control-plane");
        assert_eq!(t["rows"][0]["cells"][3], "16m");
        assert_eq!(t["rows"][0]["object"]["kind"], "PartialObjectMetadata");
        let pdb = json!({"metadata": {"name": "p"}, "spec": {"maxUnavailable": "25%"}, "status": {"disruptionsAllowed": 2}});
        let info = reg
            .get(&crate::apiserver::GroupResource::new(
                "policy",
                "poddisruptionbudgets",
            ))
            .unwrap();
        let t = table(info, [&pdb], 7, None, IncludeObject::None, now);
        assert_eq!(
            t["rows"][0]["cells"],
            json!(["p", "N/A", "25%", 2, "<unknown>"])
        );
        assert!(t["rows"][0].get("object").is_none());
    }
}
