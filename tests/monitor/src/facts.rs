//! The edge: API objects (k8s-openapi types) turned into the facts the tracker judges by.

use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::api::apps::v1::{Deployment, ReplicaSet, StatefulSet};
use k8s_openapi::api::core::v1::{Node, Pod, ReplicationController};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use crate::model::{
    BudgetFacts, BudgetRule, ControllerFacts, IntOrPercent, NodeFacts, OwnerRef, PodFacts,
    Readiness, Requirement, Selector,
};

/// The taint the node lifecycle controller puts on a node that stopped reporting.
pub const UNREACHABLE_TAINT: &str = "node.kubernetes.io/unreachable";
/// The annotation that marks a static pod's mirror.
pub const MIRROR_ANNOTATION: &str = "kubernetes.io/config.mirror";

fn labels(meta: &ObjectMeta) -> BTreeMap<String, String> {
    meta.labels.clone().unwrap_or_default()
}

fn resource_version(meta: &ObjectMeta) -> Option<u64> {
    meta.resource_version.as_deref()?.parse().ok()
}

fn controller_of(meta: &ObjectMeta) -> Option<OwnerRef> {
    meta.owner_references
        .as_ref()?
        .iter()
        .find(|o| o.controller == Some(true))
        .map(|o| OwnerRef {
            kind: o.kind.clone(),
            name: o.name.clone(),
            uid: o.uid.clone(),
        })
}

/// A label selector as the monitor matches it.
pub fn selector(s: &LabelSelector) -> Selector {
    let expressions = s
        .match_expressions
        .iter()
        .flatten()
        .map(|r| {
            let values: BTreeSet<String> = r.values.iter().flatten().cloned().collect();
            match r.operator.as_str() {
                "In" => Requirement::In(r.key.clone(), values),
                "NotIn" => Requirement::NotIn(r.key.clone(), values),
                "Exists" => Requirement::Exists(r.key.clone()),
                "DoesNotExist" => Requirement::DoesNotExist(r.key.clone()),
                other => {
                    tracing::warn!(
                        operator = other,
                        "unknown selector operator matches nothing"
                    );
                    Requirement::Invalid
                }
            }
        })
        .collect();
    Selector {
        labels: s.match_labels.clone().unwrap_or_default(),
        expressions,
    }
}

/// A pod's facts.
pub fn pod(p: &Pod) -> PodFacts {
    let meta = &p.metadata;
    let conditions = p
        .status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .map(Vec::as_slice)
        .unwrap_or_default();
    let condition = |kind: &str| {
        conditions
            .iter()
            .find(|c| c.type_ == kind && c.status == "True")
    };
    PodFacts {
        uid: meta.uid.clone().unwrap_or_default(),
        namespace: meta.namespace.clone().unwrap_or_default(),
        name: meta.name.clone().unwrap_or_default(),
        labels: labels(meta),
        node: p
            .spec
            .as_ref()
            .and_then(|s| s.node_name.clone())
            .filter(|n| !n.is_empty()),
        phase: p
            .status
            .as_ref()
            .and_then(|s| s.phase.clone())
            .unwrap_or_default(),
        ready: condition("Ready").is_some(),
        deleting: meta.deletion_timestamp.is_some(),
        disruption_target: condition("DisruptionTarget")
            .map(|c| c.reason.clone().unwrap_or_default()),
        controller: controller_of(meta),
        mirror: meta
            .annotations
            .as_ref()
            .is_some_and(|a| a.contains_key(MIRROR_ANNOTATION)),
        resource_version: resource_version(meta),
    }
}

/// A node's facts.
pub fn node(n: &Node) -> NodeFacts {
    let status = n.status.as_ref();
    let readiness = status
        .and_then(|s| s.conditions.as_ref())
        .and_then(|c| c.iter().find(|c| c.type_ == "Ready"))
        .map_or(Readiness::Unknown, |c| match c.status.as_str() {
            "True" => Readiness::Ready,
            "False" => Readiness::NotReady,
            _ => Readiness::Unknown,
        });
    let spec = n.spec.as_ref();
    NodeFacts {
        name: n.metadata.name.clone().unwrap_or_default(),
        labels: labels(&n.metadata),
        readiness,
        unschedulable: spec.and_then(|s| s.unschedulable).unwrap_or(false),
        unreachable: spec
            .and_then(|s| s.taints.as_ref())
            .is_some_and(|t| t.iter().any(|t| t.key == UNREACHABLE_TAINT)),
        boot_id: status
            .and_then(|s| s.node_info.as_ref())
            .map(|i| i.boot_id.clone())
            .unwrap_or_default(),
        resource_version: resource_version(&n.metadata),
    }
}

fn int_or_percent(v: &IntOrString) -> Option<IntOrPercent> {
    match v {
        IntOrString::Int(n) => Some(IntOrPercent::Int(*n)),
        IntOrString::String(s) => s
            .strip_suffix('%')
            .and_then(|p| p.parse().ok())
            .map(IntOrPercent::Percent)
            .or_else(|| s.parse().ok().map(IntOrPercent::Int)),
    }
}

/// A PodDisruptionBudget's facts (its spec; the status is never read).
pub fn budget(b: &PodDisruptionBudget) -> BudgetFacts {
    let spec = b.spec.as_ref();
    let rule = match (
        spec.and_then(|s| s.min_available.as_ref()),
        spec.and_then(|s| s.max_unavailable.as_ref()),
    ) {
        (Some(min), _) => int_or_percent(min).map(BudgetRule::MinAvailable),
        (None, Some(max)) => int_or_percent(max).map(BudgetRule::MaxUnavailable),
        (None, None) => Some(BudgetRule::Unset),
    };
    let rule = rule.unwrap_or_else(|| {
        tracing::warn!(pdb = ?b.metadata.name, "a budget value that is neither a number nor a percentage");
        BudgetRule::Unset
    });
    BudgetFacts {
        namespace: b.metadata.namespace.clone().unwrap_or_default(),
        name: b.metadata.name.clone().unwrap_or_default(),
        selector: spec.and_then(|s| s.selector.as_ref()).map(selector),
        rule,
    }
}

fn controller(kind: &str, meta: &ObjectMeta, replicas: Option<i32>) -> ControllerFacts {
    ControllerFacts {
        kind: kind.into(),
        namespace: meta.namespace.clone().unwrap_or_default(),
        name: meta.name.clone().unwrap_or_default(),
        uid: meta.uid.clone().unwrap_or_default(),
        // The API defaults an unset `replicas` to 1.
        replicas: replicas.unwrap_or(1),
        controller: controller_of(meta),
    }
}

/// A Deployment's facts.
pub fn deployment(d: &Deployment) -> ControllerFacts {
    controller(
        "Deployment",
        &d.metadata,
        d.spec.as_ref().and_then(|s| s.replicas),
    )
}

/// A ReplicaSet's facts.
pub fn replica_set(r: &ReplicaSet) -> ControllerFacts {
    controller(
        "ReplicaSet",
        &r.metadata,
        r.spec.as_ref().and_then(|s| s.replicas),
    )
}

/// A StatefulSet's facts.
pub fn stateful_set(s: &StatefulSet) -> ControllerFacts {
    controller(
        "StatefulSet",
        &s.metadata,
        s.spec.as_ref().and_then(|s| s.replicas),
    )
}

/// A ReplicationController's facts.
pub fn replication_controller(r: &ReplicationController) -> ControllerFacts {
    controller(
        "ReplicationController",
        &r.metadata,
        r.spec.as_ref().and_then(|s| s.replicas),
    )
}
