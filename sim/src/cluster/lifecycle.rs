//! The node-lifecycle controller of the simulated control plane (upstream
//! `pkg/controller/nodelifecycle`) with its taint-based eviction (`pkg/controller/tainteviction`).
//!
//! - A node whose kubelet stopped heartbeating (neither its Lease in `kube-node-lease` nor its
//!   Ready condition's `lastHeartbeatTime` moved) keeps the status it last reported until
//!   [`Timings::node_monitor_grace`] passed; then every condition turns `Unknown` (reason
//!   `NodeStatusUnknown`, heartbeat times kept) and the Ready condition of its pods turns
//!   `False` (upstream `MarkPodsNotReady`). Heartbeats are timed by when this controller saw
//!   them change, not by the times they carry, as upstream does.
//! - Nodes are tainted by their Ready condition: `Unknown` → `node.kubernetes.io/unreachable`,
//!   `False` → `node.kubernetes.io/not-ready`, each `NoSchedule` and `NoExecute` with
//!   `timeAdded`; `True` → neither. So a kubelet that reports again lifts the taints.
//! - A pod on a node with a `NoExecute` taint it does not tolerate is deleted at once; one that
//!   tolerates every such taint for at most `tolerationSeconds` (the API server adds 300 s to
//!   every pod; DaemonSet and static pods tolerate them forever) is deleted when that passed,
//!   counted from when the taint appeared. Deleted pods get the condition `DisruptionTarget`
//!   (reason `DeletionByTaintManager`), and keep their grace period: on a node whose kubelet is
//!   gone they stay `Terminating` until it returns, as on a real cluster.

use std::collections::HashMap;

use serde_json::{Value, json};
use tokio::sync::broadcast::error::{RecvError, TryRecvError};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::Timings;
use super::objects::{self, leases, nodes, pods};
use crate::apiserver::{
    DeleteOptions, EventType, ListOptions, Part, Preconditions, ResourceKey, Store, StoreEvent,
    meta,
};

/// The taint of a node whose kubelet stopped reporting.
pub const UNREACHABLE_TAINT: &str = "node.kubernetes.io/unreachable";
/// The taint of a node whose kubelet reports it not Ready.
pub const NOT_READY_TAINT: &str = "node.kubernetes.io/not-ready";
/// The conditions a kubelet reports, all turned `Unknown` when it goes silent.
const NODE_CONDITIONS: [&str; 4] = ["MemoryPressure", "DiskPressure", "PIDPressure", "Ready"];

/// The taints that `ready` (the node's Ready condition status) calls for: key and effect.
pub(crate) fn wanted_taints(ready: &str) -> Vec<(&'static str, &'static str)> {
    let key = match ready {
        "True" => return Vec::new(),
        "Unknown" => UNREACHABLE_TAINT,
        _ => NOT_READY_TAINT,
    };
    vec![(key, "NoSchedule"), (key, "NoExecute")]
}

/// The node's taints once the controller's own ones match `wanted` (others are kept; a wanted
/// taint already present keeps its `timeAdded`). `None` when nothing changes.
pub(crate) fn merge_taints(
    current: &[Value],
    wanted: &[(&str, &str)],
    now: &str,
) -> Option<Vec<Value>> {
    let ours = |t: &Value| matches!(meta::str_at(t, "/key"), UNREACHABLE_TAINT | NOT_READY_TAINT);
    let has = |key: &str, effect: &str| {
        current
            .iter()
            .any(|t| meta::str_at(t, "/key") == key && meta::str_at(t, "/effect") == effect)
    };
    let mut merged: Vec<Value> = current
        .iter()
        .filter(|t| {
            !ours(t) || wanted.contains(&(meta::str_at(t, "/key"), meta::str_at(t, "/effect")))
        })
        .cloned()
        .collect();
    for &(key, effect) in wanted {
        if !has(key, effect) {
            let mut taint = json!({"key": key, "effect": effect});
            if effect == "NoExecute" {
                taint["timeAdded"] = json!(now);
            }
            merged.push(taint);
        }
    }
    (merged.len() != current.len() || merged.iter().zip(current).any(|(a, b)| a != b))
        .then_some(merged)
}

/// When the taint manager deletes a pod from a node with these `NoExecute` taints.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Due {
    /// A taint is not tolerated: at once.
    Now,
    /// Every taint is tolerated, the shortest for this many seconds after it appeared.
    After(i64),
    /// Every taint is tolerated forever.
    Never,
}

/// Upstream `getMinTolerationTime` over the tolerations that match the `taints`.
pub(crate) fn eviction_due(taints: &[&Value], tolerations: &[Value]) -> Due {
    let mut shortest: Option<i64> = None;
    for taint in taints {
        let used: Vec<&Value> = tolerations
            .iter()
            .filter(|t| objects::tolerates(std::slice::from_ref(*t), taint))
            .collect();
        if used.is_empty() {
            return Due::Now;
        }
        for t in used {
            if let Some(seconds) = t.get("tolerationSeconds").and_then(Value::as_i64) {
                let seconds = seconds.max(0);
                shortest = Some(shortest.map_or(seconds, |s| s.min(seconds)));
            }
        }
    }
    shortest.map_or(Due::Never, Due::After)
}

fn ready_condition(node: &Value) -> Option<&Value> {
    node.pointer("/status/conditions")
        .and_then(Value::as_array)?
        .iter()
        .find(|c| meta::str_at(c, "/type") == "Ready")
}

fn ready_status(node: &Value) -> &str {
    ready_condition(node).map_or("Unknown", |c| meta::str_at(c, "/status"))
}

fn status_beat(node: &Value) -> &str {
    ready_condition(node).map_or("", |c| meta::str_at(c, "/lastHeartbeatTime"))
}

/// A node's two heartbeats (its Lease's `renewTime`, its Ready condition's
/// `lastHeartbeatTime`), each with when it was seen to change.
#[derive(Default)]
struct Probe {
    lease: Option<(String, Instant)>,
    status: Option<(String, Instant)>,
}

impl Probe {
    fn observe(slot: &mut Option<(String, Instant)>, value: &str, now: Instant) {
        if slot.as_ref().is_none_or(|(v, _)| v != value) {
            *slot = Some((value.to_string(), now));
        }
    }

    /// When the node was last heard of.
    fn seen(&self) -> Option<Instant> {
        [&self.lease, &self.status]
            .into_iter()
            .flatten()
            .map(|(_, at)| *at)
            .max()
    }
}

struct Controller {
    store: Store,
    timings: Timings,
    probes: HashMap<String, Probe>,
    /// Per node and `NoExecute` taint key: the taint's `timeAdded` and when it was first seen.
    taints_seen: HashMap<(String, String), (String, Instant)>,
}

/// Run the node-lifecycle controller until `cancel`.
pub(crate) async fn run(store: Store, timings: Timings, cancel: CancellationToken) {
    let mut rx = store.subscribe_all();
    let mut controller = Controller {
        store,
        timings,
        probes: HashMap::new(),
        taints_seen: HashMap::new(),
    };
    let mut wake = true;
    let mut next = None;
    loop {
        if wake {
            next = controller.reconcile(Instant::now());
            wake = false;
        }
        let sleep = async {
            match next {
                Some(at) => tokio::time::sleep_until(at).await,
                None => std::future::pending().await,
            }
        };
        // Heartbeats only move probes; a pass runs for changes of nodes and pods, and at the
        // next deadline.
        tokio::select! {
            _ = cancel.cancelled() => return,
            () = sleep => wake = true,
            event = rx.recv() => match event {
                Ok(event) => wake |= controller.observe(&event),
                Err(RecvError::Lagged(_)) => wake = true,
                Err(RecvError::Closed) => return,
            },
        }
        loop {
            match rx.try_recv() {
                Ok(event) => wake |= controller.observe(&event),
                Err(TryRecvError::Lagged(_)) => wake = true,
                Err(_) => break,
            }
        }
    }
}

impl Controller {
    /// Note the heartbeats in `event`; returns whether it may call for a pass.
    fn observe(&mut self, event: &StoreEvent) -> bool {
        let now = Instant::now();
        let obj = &event.object;
        match (
            event.resource.group.as_str(),
            event.resource.resource.as_str(),
        ) {
            ("coordination.k8s.io", "leases") => {
                if meta::namespace(obj) == "kube-node-lease"
                    && event.event_type != EventType::Deleted
                {
                    let probe = self.probes.entry(meta::name(obj).to_string()).or_default();
                    Probe::observe(&mut probe.lease, meta::str_at(obj, "/spec/renewTime"), now);
                }
                false
            }
            ("", "nodes") => {
                if event.event_type != EventType::Deleted {
                    let probe = self.probes.entry(meta::name(obj).to_string()).or_default();
                    Probe::observe(&mut probe.status, status_beat(obj), now);
                }
                match (&event.event_type, &event.previous) {
                    (EventType::Modified, Some(previous)) => {
                        ready_status(previous) != ready_status(obj)
                            || previous.pointer("/spec/taints") != obj.pointer("/spec/taints")
                    }
                    _ => true,
                }
            }
            ("", "pods") => {
                event.event_type == EventType::Added
                    || event
                        .previous
                        .as_deref()
                        .map(|p| p.pointer("/spec/nodeName"))
                        != Some(obj.pointer("/spec/nodeName"))
            }
            _ => false,
        }
    }

    /// One pass over every node at `now`; returns when the next one is due.
    fn reconcile(&mut self, now: Instant) -> Option<Instant> {
        let node_list = match self.store.list(&nodes(), None, &ListOptions::default()) {
            Ok(list) => list.items,
            Err(e) => {
                tracing::warn!(error = %e, "node lifecycle: listing nodes failed");
                return Some(now + self.timings.heartbeat);
            }
        };
        let lease_list = self
            .store
            .list(&leases(), Some("kube-node-lease"), &ListOptions::default())
            .map(|l| l.items)
            .unwrap_or_default();
        let renewals: HashMap<&str, &str> = lease_list
            .iter()
            .map(|l| (meta::name(l), meta::str_at(l, "/spec/renewTime")))
            .collect();
        self.probes
            .retain(|name, _| node_list.iter().any(|n| meta::name(n) == name));
        self.taints_seen
            .retain(|(name, _), _| node_list.iter().any(|n| meta::name(n) == name));
        let mut next: Option<Instant> = None;
        let mut due = |at: Instant| next = Some(next.map_or(at, |n: Instant| n.min(at)));
        for node in &node_list {
            let name = meta::name(node).to_string();
            let probe = self.probes.entry(name.clone()).or_default();
            if let Some(renewed) = renewals.get(name.as_str()) {
                Probe::observe(&mut probe.lease, renewed, now);
            }
            Probe::observe(&mut probe.status, status_beat(node), now);
            let seen = probe.seen().unwrap_or(now);
            let beat = status_beat(node).to_string();
            let mut ready = ready_status(node).to_string();
            if ready != "Unknown" {
                let expires = seen + self.timings.node_monitor_grace;
                if now >= expires {
                    if self.mark_unknown(&name, &beat) {
                        ready = "Unknown".to_string();
                        self.mark_pods_not_ready(&name);
                    }
                } else {
                    due(expires);
                }
            }
            let node = self.taint(node, &ready);
            if let Some(at) = self.evict(&node, now) {
                due(at);
            }
        }
        next
    }

    /// Turn every condition of `node` `Unknown`, unless its kubelet reported meanwhile (its
    /// Ready heartbeat is no longer `beat`). Returns whether it did.
    fn mark_unknown(&self, node: &str, beat: &str) -> bool {
        let now = self.store.now();
        let key = ResourceKey::new(nodes(), None, node);
        let result = self.store.modify(&key, Part::Status, |n| {
            if status_beat(n) != beat || !n.get("status").is_some_and(Value::is_object) {
                return Ok(false);
            }
            for kind in NODE_CONDITIONS {
                objects::set_condition(
                    &mut n["status"],
                    kind,
                    "Unknown",
                    Some("NodeStatusUnknown"),
                    Some("Kubelet stopped posting node status."),
                    now,
                );
            }
            Ok(true)
        });
        match result {
            Ok(Some(_)) => {
                tracing::info!(node, "node lifecycle: kubelet stopped posting node status");
                true
            }
            Ok(None) => false,
            Err(e) => {
                if !objects::is_not_found(&e) {
                    tracing::warn!(node, error = %e, "node lifecycle: marking the node Unknown failed");
                }
                false
            }
        }
    }

    /// Upstream `MarkPodsNotReady`: the Ready condition of the node's pods turns `False`.
    fn mark_pods_not_ready(&self, node: &str) {
        let now = self.store.now();
        for pod in self.pods_on(node) {
            if meta::pod_terminal(&pod) || !meta::pod_ready(&pod) {
                continue;
            }
            let uid = meta::uid(&pod).to_string();
            let result =
                self.store
                    .modify(&ResourceKey::for_object(pods(), &pod), Part::Status, |p| {
                        if meta::uid(p) != uid || !p.get("status").is_some_and(Value::is_object) {
                            return Ok(false);
                        }
                        Ok(objects::set_condition(
                            &mut p["status"],
                            "Ready",
                            "False",
                            None,
                            None,
                            now,
                        ))
                    });
            if let Err(e) = result
                && !objects::is_not_found(&e)
            {
                tracing::warn!(node, pod = meta::name(&pod), error = %e, "node lifecycle: marking a pod not Ready failed");
            }
        }
    }

    fn pods_on(&self, node: &str) -> Vec<std::sync::Arc<Value>> {
        self.store
            .list(
                &pods(),
                None,
                &ListOptions::fields(&format!("spec.nodeName={node}")),
            )
            .map(|l| l.items)
            .unwrap_or_default()
    }

    /// Bring the node's unreachable/not-ready taints in line with `ready`; returns the node as
    /// it is afterwards.
    fn taint(&self, node: &std::sync::Arc<Value>, ready: &str) -> std::sync::Arc<Value> {
        let wanted = wanted_taints(ready);
        let current: Vec<Value> = node
            .pointer("/spec/taints")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default();
        let now = meta::format_time(self.store.now());
        if merge_taints(&current, &wanted, &now).is_none() {
            return node.clone();
        }
        let key = ResourceKey::for_object(nodes(), node);
        let wanted_now = |n: &Value| wanted_taints(ready_status(n));
        let result = self.store.modify(&key, Part::Main, |n| {
            let current: Vec<Value> = n
                .pointer("/spec/taints")
                .and_then(Value::as_array)
                .cloned()
                .unwrap_or_default();
            // The kubelet may have reported since the pass read the node: follow what the
            // node says now.
            let wanted = if ready_status(n) == ready {
                wanted.clone()
            } else {
                wanted_now(n)
            };
            let Some(merged) = merge_taints(&current, &wanted, &now) else {
                return Ok(false);
            };
            if !n.get("spec").is_some_and(Value::is_object) {
                n["spec"] = json!({});
            }
            if merged.is_empty() {
                if let Some(spec) = n["spec"].as_object_mut() {
                    spec.remove("taints");
                }
            } else {
                n["spec"]["taints"] = json!(merged);
            }
            Ok(true)
        });
        match result {
            Ok(Some(node)) => {
                tracing::debug!(
                    node = meta::name(&node),
                    ready,
                    "node lifecycle: taints updated"
                );
                node
            }
            Ok(None) => self.store.get(&key).unwrap_or_else(|_| node.clone()),
            Err(e) => {
                if !objects::is_not_found(&e) {
                    tracing::warn!(node = meta::name(node), error = %e, "node lifecycle: tainting failed");
                }
                node.clone()
            }
        }
    }

    /// Delete the pods of `node` whose tolerations of its `NoExecute` taints ran out; returns
    /// when the next one runs out.
    fn evict(&mut self, node: &Value, now: Instant) -> Option<Instant> {
        let name = meta::name(node).to_string();
        let taints: Vec<&Value> = node
            .pointer("/spec/taints")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter(|t| meta::str_at(t, "/effect") == "NoExecute")
            .collect();
        self.taints_seen.retain(|(n, key), _| {
            n != &name || taints.iter().any(|t| meta::str_at(t, "/key") == key)
        });
        if taints.is_empty() {
            return None;
        }
        // Counted from when the first of the taints appeared.
        let mut since = now;
        for taint in &taints {
            let added = meta::str_at(taint, "/timeAdded").to_string();
            let entry = self
                .taints_seen
                .entry((name.clone(), meta::str_at(taint, "/key").to_string()))
                .or_insert_with(|| (added.clone(), now));
            if entry.0 != added {
                *entry = (added, now);
            }
            since = since.min(entry.1);
        }
        let mut next: Option<Instant> = None;
        for pod in self.pods_on(&name) {
            if meta::pod_terminal(&pod) || meta::is_terminating(&pod) {
                continue;
            }
            let tolerations = objects::tolerations_of(pod.get("spec"));
            let at = match eviction_due(&taints, &tolerations) {
                Due::Never => continue,
                Due::Now => now,
                Due::After(seconds) => since + self.timings.kube_seconds(seconds),
            };
            if at <= now {
                self.delete_pod(&pod);
            } else {
                next = Some(next.map_or(at, |n: Instant| n.min(at)));
            }
        }
        next
    }

    fn delete_pod(&self, pod: &Value) {
        let uid = meta::uid(pod).to_string();
        let key = ResourceKey::for_object(pods(), pod);
        let now = self.store.now();
        let marked = self.store.modify(&key, Part::Status, |p| {
            if meta::uid(p) != uid || !p.get("status").is_some_and(Value::is_object) {
                return Ok(false);
            }
            Ok(objects::set_condition(
                &mut p["status"],
                "DisruptionTarget",
                "True",
                Some("DeletionByTaintManager"),
                Some("Taint manager: deleting due to NoExecute taint"),
                now,
            ))
        });
        let opts = DeleteOptions {
            preconditions: Preconditions {
                uid: Some(uid),
                ..Default::default()
            },
            ..Default::default()
        };
        match marked.and_then(|_| self.store.delete(&key, &opts)) {
            Ok(_) => tracing::info!(
                pod = %key.name,
                namespace = ?key.namespace,
                node = meta::str_at(pod, "/spec/nodeName"),
                "taint manager: deleting pod"
            ),
            Err(e) if objects::is_not_found(&e) || e.code() == 409 => {}
            Err(e) => {
                tracing::warn!(pod = %key.name, error = %e, "taint manager: deleting pod failed")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn taints_follow_the_ready_condition() {
        assert!(wanted_taints("True").is_empty());
        assert_eq!(
            wanted_taints("Unknown"),
            vec![
                (UNREACHABLE_TAINT, "NoSchedule"),
                (UNREACHABLE_TAINT, "NoExecute")
            ]
        );
        assert_eq!(wanted_taints("False")[1], (NOT_READY_TAINT, "NoExecute"));
        let cp = json!({"key": "node-role.kubernetes.io/control-plane", "effect": "NoSchedule"});
        let tainted =
            merge_taints(std::slice::from_ref(&cp), &wanted_taints("Unknown"), "t1").unwrap();
        assert_eq!(tainted.len(), 3);
        assert_eq!(tainted[2]["timeAdded"], "t1");
        assert!(tainted[1].get("timeAdded").is_none());
        // Already there: unchanged, timeAdded kept.
        assert_eq!(
            merge_taints(&tainted, &wanted_taints("Unknown"), "t2"),
            None
        );
        // The kubelet reports NotReady: unreachable swapped for not-ready.
        let swapped = merge_taints(&tainted, &wanted_taints("False"), "t3").unwrap();
        assert!(swapped.iter().all(|t| t["key"] != UNREACHABLE_TAINT));
        assert_eq!(swapped[2]["key"], NOT_READY_TAINT);
        // Ready again: only the control-plane taint is left.
        assert_eq!(merge_taints(&swapped, &[], "t4"), Some(vec![cp.clone()]));
        assert_eq!(merge_taints(&[cp], &[], "t5"), None);
    }

    #[test]
    fn tolerations_decide_when_a_pod_is_evicted() {
        let unreachable = json!({"key": UNREACHABLE_TAINT, "effect": "NoExecute"});
        let dedicated = json!({"key": "dedicated", "value": "db", "effect": "NoExecute"});
        let default = |key: &str, seconds: i64| json!({"key": key, "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": seconds});
        let defaults = [
            default(NOT_READY_TAINT, 300),
            default(UNREACHABLE_TAINT, 300),
        ];
        assert_eq!(eviction_due(&[&unreachable], &defaults), Due::After(300));
        assert_eq!(
            eviction_due(&[&unreachable, &dedicated], &defaults),
            Due::Now
        );
        assert_eq!(eviction_due(&[&unreachable], &[]), Due::Now);
        let forever =
            [json!({"key": UNREACHABLE_TAINT, "operator": "Exists", "effect": "NoExecute"})];
        assert_eq!(eviction_due(&[&unreachable], &forever), Due::Never);
        assert_eq!(
            eviction_due(&[&unreachable], &[json!({"operator": "Exists"})]),
            Due::Never
        );
        let short = [defaults[1].clone(), default(UNREACHABLE_TAINT, 6)];
        assert_eq!(eviction_due(&[&unreachable], &short), Due::After(6));
        assert_eq!(
            eviction_due(&[&unreachable], &[default(UNREACHABLE_TAINT, -5)]),
            Due::After(0)
        );
    }
}
