//! What rota reads off a Node object: whether it is cordoned, Ready, a control-plane node, and
//! in which zone. One definition for the controller, the scheduler's snapshot, the leader's
//! handover and `rotactl`, so that they cannot disagree about a node.

use k8s_openapi::api::core::v1::{Node, NodeCondition};

/// Node labels that mark a control-plane node (kubeadm's current and former role labels).
pub const CONTROL_PLANE_LABELS: [&str; 2] = [
    "node-role.kubernetes.io/control-plane",
    "node-role.kubernetes.io/master",
];

/// Node label of the zone.
pub const ZONE_LABEL: &str = "topology.kubernetes.io/zone";

/// Whether the node is cordoned (`spec.unschedulable`), by anyone.
pub fn is_unschedulable(node: &Node) -> bool {
    node.spec
        .as_ref()
        .and_then(|spec| spec.unschedulable)
        .unwrap_or(false)
}

/// The node's `Ready` condition, if it has one.
pub fn ready_condition(node: &Node) -> Option<&NodeCondition> {
    node.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .and_then(|cs| cs.iter().find(|c| c.type_ == "Ready"))
}

/// Whether the node's `Ready` condition is `True`.
pub fn is_ready(node: &Node) -> bool {
    ready_condition(node).is_some_and(|c| c.status == "True")
}

/// The taints the node-lifecycle controller puts on a node it does not see Ready, and lifts a
/// moment after the kubelet reports Ready again: until then nothing new is scheduled there.
pub const OUTAGE_TAINTS: [&str; 2] = [
    "node.kubernetes.io/unreachable",
    "node.kubernetes.io/not-ready",
];

/// The first of [`OUTAGE_TAINTS`] the node still carries.
pub fn outage_taint(node: &Node) -> Option<&str> {
    node.spec
        .as_ref()
        .and_then(|s| s.taints.as_ref())
        .into_iter()
        .flatten()
        .map(|t| t.key.as_str())
        .find(|key| OUTAGE_TAINTS.contains(key))
}

/// Whether the node is back in service: Ready, and the node-lifecycle controller has lifted its
/// outage taints (a node can report Ready for a moment while still tainted unreachable).
pub fn is_in_service(node: &Node) -> bool {
    is_ready(node) && outage_taint(node).is_none()
}

/// Whether the node carries a control-plane role label.
pub fn is_control_plane(node: &Node) -> bool {
    node.metadata
        .labels
        .as_ref()
        .is_some_and(|labels| CONTROL_PLANE_LABELS.iter().any(|l| labels.contains_key(*l)))
}

/// The node's zone label, if any.
pub fn zone(node: &Node) -> Option<&str> {
    node.metadata
        .labels
        .as_ref()
        .and_then(|labels| labels.get(ZONE_LABEL))
        .map(String::as_str)
}

/// Whether `name` is a valid object name of Nodes and cluster-scoped custom resources: a
/// lower-case RFC 1123 subdomain (dot-separated labels of `a-z`, `0-9` and `-`, each at most 63
/// characters, starting and ending alphanumeric; at most 253 in all). A name with `/` in it
/// would otherwise become a different API path (`worker-03/status`).
pub fn is_dns_subdomain(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 253
        && name.split('.').all(|label| {
            let bytes = label.as_bytes();
            !bytes.is_empty()
                && bytes.len() <= 63
                && bytes
                    .iter()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'-')
                && bytes.first().is_some_and(u8::is_ascii_alphanumeric)
                && bytes.last().is_some_and(u8::is_ascii_alphanumeric)
        })
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use k8s_openapi::api::core::v1::{NodeSpec, NodeStatus};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

    use super::*;

    fn node(labels: &[(&str, &str)], unschedulable: Option<bool>, ready: Option<&str>) -> Node {
        Node {
            metadata: ObjectMeta {
                labels: Some(
                    labels
                        .iter()
                        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                        .collect::<BTreeMap<_, _>>(),
                ),
                ..ObjectMeta::default()
            },
            spec: Some(NodeSpec {
                unschedulable,
                ..NodeSpec::default()
            }),
            status: ready.map(|status| NodeStatus {
                conditions: Some(vec![NodeCondition {
                    type_: "Ready".into(),
                    status: status.into(),
                    ..NodeCondition::default()
                }]),
                ..NodeStatus::default()
            }),
        }
    }

    #[test]
    fn predicates() {
        let cp = node(
            &[
                ("node-role.kubernetes.io/control-plane", ""),
                (ZONE_LABEL, "a"),
            ],
            Some(true),
            Some("True"),
        );
        assert!(is_control_plane(&cp) && is_unschedulable(&cp) && is_ready(&cp));
        assert_eq!(zone(&cp), Some("a"));
        let old_master = node(
            &[("node-role.kubernetes.io/master", "")],
            None,
            Some("Unknown"),
        );
        assert!(is_control_plane(&old_master));
        assert!(!is_unschedulable(&old_master) && !is_ready(&old_master));
        let worker = node(&[], Some(false), None);
        assert!(!is_control_plane(&worker) && !is_unschedulable(&worker) && !is_ready(&worker));
        assert_eq!(zone(&worker), None);
        let mut back = node(&[], None, Some("True"));
        assert!(is_in_service(&back) && outage_taint(&back).is_none());
        back.spec.get_or_insert_default().taints = Some(vec![k8s_openapi::api::core::v1::Taint {
            key: "node.kubernetes.io/unreachable".into(),
            effect: "NoExecute".into(),
            ..Default::default()
        }]);
        assert!(is_ready(&back) && !is_in_service(&back));
        assert_eq!(outage_taint(&back), Some("node.kubernetes.io/unreachable"));
    }

    #[test]
    fn object_names_are_rfc_1123_subdomains() {
        for good in ["worker-03", "a", "node.example.com", "1-2", &"a".repeat(63)] {
            assert!(super::is_dns_subdomain(good), "{good}");
        }
        for bad in [
            "",
            "worker-03/status",
            "Worker",
            "-a",
            "a-",
            "a..b",
            "a_b",
            "a b",
            "n1/../n2",
            &"a".repeat(64),
            &"a.".repeat(127),
        ] {
            assert!(!super::is_dns_subdomain(bad), "{bad}");
        }
    }
}
