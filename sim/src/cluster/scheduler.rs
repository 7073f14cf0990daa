//! A simple scheduler: binds pending pods to Ready, schedulable (not cordoned) nodes whose
//! labels match the pod's `nodeSelector`, whose taints it tolerates and whose allocatable CPU
//! and memory hold the pod's requests beside those of the pods already bound there (terminating
//! ones included, as upstream's `NodeResourcesFit`), with spread: the node
//! with the fewest pods of the same owner, then the fewest pods. A pod that fits nowhere stays
//! Pending with a `PodScheduled=False` condition saying why, and is tried again when a node
//! changes in a way that matters (readiness, cordon, labels, taints) or a pod leaves one.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use serde_json::{Map, Value, json};
use tokio::sync::broadcast::error::{RecvError, TryRecvError};
use tokio_util::sync::CancellationToken;

use super::kubelet::MAX_PODS;
use super::objects::{self, nodes, pods};
use crate::apiserver::{EventType, ListOptions, Part, ResourceKey, Store, StoreEvent, meta};

/// Why a node cannot take a pod (counted for the `FailedScheduling` message).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Misfit {
    NotReady,
    Unschedulable,
    Selector,
    Taint,
    TooManyPods,
    Cpu,
    Memory,
}

impl Misfit {
    fn phrase(self) -> &'static str {
        match self {
            Misfit::NotReady => "node(s) were not ready",
            Misfit::Unschedulable => "node(s) were unschedulable",
            Misfit::Selector => "node(s) didn't match Pod's node affinity/selector",
            Misfit::Taint => "node(s) had untolerated taint(s)",
            Misfit::TooManyPods => "Too many pods",
            Misfit::Cpu => "Insufficient cpu",
            Misfit::Memory => "Insufficient memory",
        }
    }
}

/// What the scheduler knows of one node, read once per scheduling round.
#[derive(Debug)]
struct Candidate<'a> {
    node: &'a Value,
    name: &'a str,
    ready: bool,
    unschedulable: bool,
    labels: Option<&'a Map<String, Value>>,
    pods: usize,
    by_owner: HashMap<String, usize>,
    /// Allocatable CPU and memory (milli-units).
    allocatable: (u128, u128),
    /// Requested by the pods bound to it (milli-units).
    requested: (u128, u128),
}

impl<'a> Candidate<'a> {
    fn new(node: &'a Value) -> Self {
        Candidate {
            node,
            name: meta::name(node),
            ready: meta::node_ready(node),
            unschedulable: meta::node_unschedulable(node),
            labels: objects::labels(node),
            pods: 0,
            by_owner: HashMap::new(),
            allocatable: objects::node_allocatable(node),
            requested: (0, 0),
        }
    }

    /// Count `pod` as bound here.
    fn add(&mut self, pod: &Value) {
        self.pods += 1;
        if let Some(owner) = objects::controller_uid(pod) {
            *self.by_owner.entry(owner.to_string()).or_insert(0) += 1;
        }
        let (cpu, memory) = objects::pod_requests(pod);
        self.requested.0 += cpu;
        self.requested.1 += memory;
    }
}

/// What a pod asks of a node, read once per pod.
struct Needs<'a> {
    owner: &'a str,
    selector: Option<&'a Value>,
    tolerations: Vec<Value>,
    tolerates_cordon: bool,
    requests: (u128, u128),
}

impl<'a> Needs<'a> {
    fn of(pod: &'a Value) -> Self {
        let spec = pod.get("spec");
        let tolerations = objects::tolerations_of(spec);
        let cordon = json!({"key": "node.kubernetes.io/unschedulable", "effect": "NoSchedule"});
        Needs {
            owner: objects::controller_uid(pod).unwrap_or_default(),
            selector: spec.and_then(|s| s.get("nodeSelector")),
            tolerates_cordon: objects::tolerates(&tolerations, &cordon),
            tolerations,
            requests: objects::pod_requests(pod),
        }
    }
}

fn misfit(needs: &Needs<'_>, candidate: &Candidate<'_>) -> Option<Misfit> {
    if !candidate.ready {
        return Some(Misfit::NotReady);
    }
    if candidate.unschedulable && !needs.tolerates_cordon {
        return Some(Misfit::Unschedulable);
    }
    if !objects::map_selects(needs.selector, candidate.labels) {
        return Some(Misfit::Selector);
    }
    if objects::untolerated_taint(candidate.node, &needs.tolerations, &[]).is_some() {
        return Some(Misfit::Taint);
    }
    if candidate.pods >= MAX_PODS as usize {
        return Some(Misfit::TooManyPods);
    }
    if candidate.requested.0 + needs.requests.0 > candidate.allocatable.0 {
        return Some(Misfit::Cpu);
    }
    if candidate.requested.1 + needs.requests.1 > candidate.allocatable.1 {
        return Some(Misfit::Memory);
    }
    None
}

/// The node for `pod`, or the reasons why none fits.
fn choose(pod: &Value, candidates: &[Candidate<'_>]) -> Result<usize, BTreeMap<Misfit, usize>> {
    let needs = Needs::of(pod);
    let mut reasons = BTreeMap::new();
    let mut best: Option<(usize, (usize, usize, &str))> = None;
    for (i, c) in candidates.iter().enumerate() {
        if let Some(m) = misfit(&needs, c) {
            *reasons.entry(m).or_insert(0) += 1;
            continue;
        }
        let same_owner = if needs.owner.is_empty() {
            0
        } else {
            c.by_owner.get(needs.owner).copied().unwrap_or(0)
        };
        let rank = (same_owner, c.pods, c.name);
        if best.as_ref().is_none_or(|(_, r)| rank < *r) {
            best = Some((i, rank));
        }
    }
    best.map(|(i, _)| i).ok_or(reasons)
}

fn unschedulable_message(total: usize, reasons: &BTreeMap<Misfit, usize>) -> String {
    let parts: Vec<String> = reasons
        .iter()
        .map(|(m, n)| format!("{n} {}", m.phrase()))
        .collect();
    let detail = if parts.is_empty() {
        String::new()
    } else {
        format!(" {}.", parts.join(", "))
    };
    format!(
        "0/{total} nodes are available:{detail} preemption: 0/{total} nodes are available: {total} Preemption is not helpful for scheduling."
    )
}

fn needs_scheduling(pod: &Value) -> bool {
    meta::str_at(pod, "/spec/nodeName").is_empty()
        && !meta::is_terminating(pod)
        && !meta::pod_terminal(pod)
        && matches!(
            meta::str_at(pod, "/spec/schedulerName"),
            "" | "default-scheduler"
        )
}

/// Whether a store change may let a pending pod fit somewhere (or is a new pending pod).
fn wakes(event: &StoreEvent) -> bool {
    let obj = &event.object;
    match (
        event.resource.group.as_str(),
        event.resource.resource.as_str(),
    ) {
        ("", "pods") => match event.event_type {
            EventType::Deleted => !meta::str_at(obj, "/spec/nodeName").is_empty(),
            _ => needs_scheduling(obj),
        },
        ("", "nodes") => match (&event.event_type, &event.previous) {
            (EventType::Modified, Some(previous)) => {
                objects::node_placement_view(previous) != objects::node_placement_view(obj)
            }
            _ => true,
        },
        _ => false,
    }
}

/// Try to place every pending pod; returns whether any is left pending.
fn schedule_pending(store: &Store) -> crate::apiserver::Result<bool> {
    let all_pods = store.list(&pods(), None, &ListOptions::default())?.items;
    let pending: Vec<&Arc<Value>> = all_pods.iter().filter(|p| needs_scheduling(p)).collect();
    if pending.is_empty() {
        return Ok(false);
    }
    let node_list = store.list(&nodes(), None, &ListOptions::default())?.items;
    let mut candidates: Vec<Candidate<'_>> = node_list.iter().map(|n| Candidate::new(n)).collect();
    let index: HashMap<&str, usize> = node_list
        .iter()
        .enumerate()
        .map(|(i, n)| (meta::name(n), i))
        .collect();
    for pod in &all_pods {
        if meta::pod_terminal(pod) {
            continue;
        }
        if let Some(&i) = index.get(meta::str_at(pod, "/spec/nodeName")) {
            candidates[i].add(pod);
        }
    }
    let mut left = false;
    let mut pending = pending;
    pending.sort_by_key(|p| {
        (
            meta::str_at(p, "/metadata/creationTimestamp").to_string(),
            meta::namespace(p).to_string(),
            meta::name(p).to_string(),
        )
    });
    for pod in pending {
        match choose(pod, &candidates) {
            Ok(i) => {
                let node = candidates[i].name.to_string();
                if bind(store, pod, &node)? {
                    candidates[i].add(pod);
                }
            }
            Err(reasons) => {
                left = true;
                mark_unschedulable(
                    store,
                    pod,
                    &unschedulable_message(candidates.len(), &reasons),
                )?;
            }
        }
    }
    Ok(left)
}

/// Bind `pod` to `node` (what a `pods/binding` does). Returns whether it was bound.
fn bind(store: &Store, pod: &Value, node: &str) -> crate::apiserver::Result<bool> {
    let uid = meta::uid(pod).to_string();
    let key = ResourceKey::for_object(pods(), pod);
    match store.modify(&key, Part::Main, |p| {
        if meta::uid(p) != uid || !needs_scheduling(p) {
            return Ok(false);
        }
        p["spec"]["nodeName"] = json!(node);
        Ok(true)
    }) {
        Ok(bound) => {
            if bound.is_some() {
                tracing::debug!(pod = %key.name, namespace = ?key.namespace, node, "pod bound");
            }
            Ok(bound.is_some())
        }
        Err(e) if objects::is_not_found(&e) => Ok(false),
        Err(e) => Err(e),
    }
}

fn mark_unschedulable(store: &Store, pod: &Value, message: &str) -> crate::apiserver::Result<()> {
    let uid = meta::uid(pod).to_string();
    let now = store.now();
    match store.modify(&ResourceKey::for_object(pods(), pod), Part::Status, |p| {
        if meta::uid(p) != uid || !needs_scheduling(p) {
            return Ok(false);
        }
        if !p.get("status").is_some_and(Value::is_object) {
            p["status"] = json!({"phase": "Pending"});
        }
        Ok(objects::set_condition(
            &mut p["status"],
            "PodScheduled",
            "False",
            Some("Unschedulable"),
            Some(message),
            now,
        ))
    }) {
        Ok(_) => Ok(()),
        Err(e) if objects::is_not_found(&e) => Ok(()),
        Err(e) => Err(e),
    }
}

/// Run the scheduler until `cancel`.
pub(crate) async fn run(store: Store, cancel: CancellationToken) {
    let mut rx = store.subscribe_all();
    let mut dirty = true;
    loop {
        if dirty {
            dirty = false;
            if let Err(e) = schedule_pending(&store) {
                tracing::warn!(error = %e, "scheduling failed");
            }
        }
        tokio::select! {
            _ = cancel.cancelled() => return,
            event = rx.recv() => match event {
                Ok(event) => {
                    dirty |= wakes(&event);
                    loop {
                        match rx.try_recv() {
                            Ok(event) => dirty |= wakes(&event),
                            Err(TryRecvError::Lagged(_)) => dirty = true,
                            Err(_) => break,
                        }
                    }
                }
                Err(RecvError::Lagged(_)) => dirty = true,
                Err(RecvError::Closed) => return,
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(name: &str, ready: bool, cordoned: bool, labels: Value) -> Value {
        json!({
            "metadata": {"name": name, "labels": labels},
            "spec": {"unschedulable": cordoned},
            "status": {
                "conditions": [{"type": "Ready", "status": if ready { "True" } else { "False" }}],
                "allocatable": {"cpu": "3800m", "memory": "15862584Ki"},
            },
        })
    }

    fn requesting(cpu: &str, memory: &str) -> Value {
        let mut p = pod(None, None);
        p["spec"]["containers"] =
            json!([{"name": "c", "resources": {"requests": {"cpu": cpu, "memory": memory}}}]);
        p
    }

    #[test]
    fn requests_must_fit_beside_the_bound_pods() {
        let a = node("a", true, false, json!({}));
        let b = node("b", true, false, json!({}));
        let mut busy = Candidate::new(&a);
        for _ in 0..3 {
            busy.add(&requesting("1", "1Gi"));
        }
        // b runs more pods (without requests), so a comes first when the pod fits there.
        let idle = Candidate {
            pods: 5,
            ..Candidate::new(&b)
        };
        // 3 cores of 3.8 taken on a: a 1-core pod only fits on b.
        let candidates = [busy, idle];
        assert_eq!(choose(&requesting("1", "1Gi"), &candidates), Ok(1));
        assert_eq!(choose(&requesting("800m", "1Gi"), &candidates), Ok(0));
        let reasons = choose(&requesting("4", "1Gi"), &candidates).unwrap_err();
        assert_eq!(reasons.get(&Misfit::Cpu), Some(&2));
        assert!(unschedulable_message(2, &reasons).contains("2 Insufficient cpu"));
        let reasons = choose(&requesting("100m", "20Gi"), &candidates).unwrap_err();
        assert_eq!(reasons.get(&Misfit::Memory), Some(&2));
    }

    fn pod(owner: Option<&str>, selector: Option<Value>) -> Value {
        let mut p = json!({"metadata": {"name": "p"}, "spec": {}});
        if let Some(uid) = owner {
            p["metadata"]["ownerReferences"] =
                json!([{"kind": "ReplicaSet", "name": "rs", "uid": uid, "controller": true}]);
        }
        if let Some(s) = selector {
            p["spec"]["nodeSelector"] = s;
        }
        p
    }

    fn candidate(node: &Value, pods: usize, owned: usize) -> Candidate<'_> {
        Candidate {
            pods,
            by_owner: HashMap::from([("rs-1".to_string(), owned)]),
            ..Candidate::new(node)
        }
    }

    #[test]
    fn spreads_by_owner_then_by_load() {
        let a = node("a", true, false, json!({}));
        let b = node("b", true, false, json!({}));
        let c = node("c", true, false, json!({}));
        let candidates = [
            candidate(&a, 1, 1),
            candidate(&b, 5, 0),
            candidate(&c, 3, 0),
        ];
        assert_eq!(choose(&pod(Some("rs-1"), None), &candidates), Ok(2));
        assert_eq!(choose(&pod(None, None), &candidates), Ok(0));
        let tied = [candidate(&b, 2, 0), candidate(&a, 2, 0)];
        assert_eq!(choose(&pod(Some("rs-1"), None), &tied), Ok(1));
    }

    #[test]
    fn skips_unready_cordoned_tainted_and_unselected_nodes() {
        let down = node("down", false, false, json!({}));
        let cordoned = node("cordoned", true, true, json!({}));
        let mut tainted = node("cp", true, false, json!({}));
        tainted["spec"]["taints"] =
            json!([{"key": "node-role.kubernetes.io/control-plane", "effect": "NoSchedule"}]);
        let edge = node("edge", true, false, json!({"role": "edge"}));
        let candidates = [
            candidate(&down, 0, 0),
            candidate(&cordoned, 0, 0),
            candidate(&tainted, 0, 0),
            candidate(&edge, 9, 0),
        ];
        assert_eq!(
            choose(&pod(None, Some(json!({"role": "edge"}))), &candidates),
            Ok(3)
        );
        let reasons = choose(&pod(None, Some(json!({"role": "db"}))), &candidates).unwrap_err();
        assert_eq!(reasons.get(&Misfit::NotReady), Some(&1));
        assert_eq!(reasons.get(&Misfit::Unschedulable), Some(&1));
        assert_eq!(reasons.get(&Misfit::Selector), Some(&2));
        let message = unschedulable_message(4, &reasons);
        assert!(
            message.starts_with("0/4 nodes are available: 1 node(s) were not ready"),
            "{message}"
        );
        let mut tolerant = pod(None, None);
        tolerant["spec"]["tolerations"] = json!([{"operator": "Exists"}]);
        let only_cp = [candidate(&tainted, 0, 0)];
        assert_eq!(choose(&tolerant, &only_cp), Ok(0));
        let full = [candidate(&edge, MAX_PODS as usize, 0)];
        assert_eq!(
            choose(&pod(None, None), &full)
                .unwrap_err()
                .get(&Misfit::TooManyPods),
            Some(&1)
        );
    }

    #[test]
    fn wakes_only_on_relevant_changes() {
        let store_event =
            |resource: &str, event_type, object: Value, previous: Option<Value>| StoreEvent {
                event_type,
                resource: crate::apiserver::GroupResource::core(resource),
                resource_version: 1,
                object: Arc::new(object),
                previous: previous.map(Arc::new),
            };
        let ready = node("a", true, false, json!({}));
        let mut beat = ready.clone();
        beat["status"]["conditions"][0]["lastHeartbeatTime"] = json!("2025-01-01T00:00:00Z");
        assert!(!wakes(&store_event(
            "nodes",
            EventType::Modified,
            beat,
            Some(ready.clone())
        )));
        let cordoned = node("a", true, true, json!({}));
        assert!(wakes(&store_event(
            "nodes",
            EventType::Modified,
            cordoned,
            Some(ready)
        )));
        let mut bound = pod(None, None);
        bound["spec"]["nodeName"] = json!("a");
        assert!(!wakes(&store_event(
            "pods",
            EventType::Modified,
            bound.clone(),
            None
        )));
        assert!(wakes(&store_event("pods", EventType::Deleted, bound, None)));
        assert!(wakes(&store_event(
            "pods",
            EventType::Added,
            pod(None, None),
            None
        )));
    }
}
