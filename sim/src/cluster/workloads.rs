//! The workload controllers of the simulated control plane: Deployments own ReplicaSets own
//! pods, StatefulSets own `NAME-0..N-1`, DaemonSets run one pod per eligible node, and a
//! garbage collector removes what a deleted owner leaves behind.
//!
//! Each controller is a function from the store's current state to the writes that bring one
//! object closer to its spec (and its status up to date). [`run`] calls them for the objects a
//! store change may affect: a pod change wakes its owner, a ReplicaSet change its Deployment,
//! a change of a node's readiness, labels or taints every DaemonSet. Replacement pods are
//! created as soon as the old one is terminating (ReplicaSets, DaemonSets wait for it to be
//! gone), except for StatefulSets: a replacement keeps its name, so it waits until the old
//! pod is gone.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use serde_json::{Map, Value, json};
use tokio::sync::broadcast::error::{RecvError, TryRecvError};
use tokio_util::sync::CancellationToken;

use super::objects::{self, apps, nodes, pods};
use crate::apiserver::{
    DeleteOptions, EventType, ListOptions, Part, Preconditions, ResourceKey, Store, StoreEvent,
    meta,
};

/// The label that ties a ReplicaSet and its pods to a Deployment's template.
pub(crate) const POD_TEMPLATE_HASH: &str = "pod-template-hash";

/// Tolerations the DaemonSet controller adds to every daemon pod (upstream
/// `AddOrUpdateDaemonPodTolerations`).
const DAEMON_TOLERATIONS: [(&str, &str); 6] = [
    ("node.kubernetes.io/not-ready", "NoExecute"),
    ("node.kubernetes.io/unreachable", "NoExecute"),
    ("node.kubernetes.io/disk-pressure", "NoSchedule"),
    ("node.kubernetes.io/memory-pressure", "NoSchedule"),
    ("node.kubernetes.io/pid-pressure", "NoSchedule"),
    ("node.kubernetes.io/unschedulable", "NoSchedule"),
];

/// One unit of work.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Work {
    Deployment(String, String),
    ReplicaSet(String, String),
    StatefulSet(String, String),
    DaemonSet(String, String),
    AllDaemonSets,
    /// Delete the dependents of an owner that is gone.
    Orphans {
        namespace: String,
        owner_uid: String,
    },
}

/// Run the workload controllers until `cancel`.
pub(crate) async fn run(store: Store, cancel: CancellationToken) {
    let mut rx = store.subscribe_all();
    let mut dirty = everything(&store);
    loop {
        while let Some(work) = dirty.pop_first() {
            reconcile(&store, work, &mut dirty);
        }
        tokio::select! {
            _ = cancel.cancelled() => return,
            event = rx.recv() => match event {
                Ok(event) => {
                    affected(&event, &mut dirty);
                    loop {
                        match rx.try_recv() {
                            Ok(event) => affected(&event, &mut dirty),
                            Err(TryRecvError::Lagged(_)) => dirty.extend(everything(&store)),
                            Err(_) => break,
                        }
                    }
                }
                Err(RecvError::Lagged(_)) => dirty.extend(everything(&store)),
                Err(RecvError::Closed) => return,
            },
        }
    }
}

fn list_all(store: &Store, resource: &str) -> Vec<Arc<Value>> {
    store
        .list(&apps(resource), None, &ListOptions::default())
        .map(|l| l.items)
        .unwrap_or_default()
}

/// Every workload object (a resynchronisation after missed events).
fn everything(store: &Store) -> BTreeSet<Work> {
    let mut work = BTreeSet::new();
    let ns_name = |o: &Value| (meta::namespace(o).to_string(), meta::name(o).to_string());
    for d in list_all(store, "deployments") {
        let (ns, name) = ns_name(&d);
        work.insert(Work::Deployment(ns, name));
    }
    for rs in list_all(store, "replicasets") {
        let (ns, name) = ns_name(&rs);
        work.insert(Work::ReplicaSet(ns, name));
    }
    for sts in list_all(store, "statefulsets") {
        let (ns, name) = ns_name(&sts);
        work.insert(Work::StatefulSet(ns, name));
    }
    work.insert(Work::AllDaemonSets);
    work
}

/// The work a store change causes.
fn affected(event: &StoreEvent, dirty: &mut BTreeSet<Work>) {
    let obj = &event.object;
    let ns = meta::namespace(obj).to_string();
    let name = meta::name(obj).to_string();
    let deleted = event.event_type == EventType::Deleted;
    let orphans = || Work::Orphans {
        namespace: meta::namespace(obj).to_string(),
        owner_uid: meta::uid(obj).to_string(),
    };
    match (
        event.resource.group.as_str(),
        event.resource.resource.as_str(),
    ) {
        ("apps", "deployments") => {
            if deleted {
                dirty.insert(orphans());
            } else {
                dirty.insert(Work::Deployment(ns, name));
            }
        }
        ("apps", "replicasets") => {
            if deleted {
                dirty.insert(orphans());
            } else {
                dirty.insert(Work::ReplicaSet(ns.clone(), name));
            }
            if let Some(owner) = owner_of(obj, "Deployment") {
                dirty.insert(Work::Deployment(ns, owner));
            }
        }
        ("apps", "statefulsets") => {
            if deleted {
                dirty.insert(orphans());
            } else {
                dirty.insert(Work::StatefulSet(ns, name));
            }
        }
        ("apps", "daemonsets") => {
            if deleted {
                dirty.insert(orphans());
            } else {
                dirty.insert(Work::DaemonSet(ns, name));
            }
        }
        ("", "pods") => {
            for pod in std::iter::once(obj).chain(event.previous.iter()) {
                let ns = meta::namespace(pod).to_string();
                if let Some(owner) = owner_of(pod, "ReplicaSet") {
                    dirty.insert(Work::ReplicaSet(ns, owner));
                } else if let Some(owner) = owner_of(pod, "StatefulSet") {
                    dirty.insert(Work::StatefulSet(ns, owner));
                } else if let Some(owner) = owner_of(pod, "DaemonSet") {
                    dirty.insert(Work::DaemonSet(ns, owner));
                }
            }
        }
        ("", "nodes") => {
            let relevant = match (&event.event_type, &event.previous) {
                (EventType::Modified, Some(previous)) => {
                    objects::node_placement_view(previous) != objects::node_placement_view(obj)
                }
                _ => true,
            };
            if relevant {
                dirty.insert(Work::AllDaemonSets);
            }
        }
        _ => {}
    }
}

fn owner_of(obj: &Value, kind: &str) -> Option<String> {
    let owner = meta::controller_ref(obj)?;
    (owner.get("kind").and_then(Value::as_str) == Some(kind))
        .then(|| {
            owner
                .get("name")
                .and_then(Value::as_str)
                .map(str::to_string)
        })
        .flatten()
}

fn reconcile(store: &Store, work: Work, dirty: &mut BTreeSet<Work>) {
    let result = match &work {
        Work::Deployment(ns, name) => sync_deployment(store, ns, name),
        Work::ReplicaSet(ns, name) => sync_replicaset(store, ns, name, dirty),
        Work::StatefulSet(ns, name) => sync_statefulset(store, ns, name),
        Work::DaemonSet(ns, name) => sync_daemonset(store, ns, name),
        Work::AllDaemonSets => {
            for ds in list_all(store, "daemonsets") {
                dirty.insert(Work::DaemonSet(
                    meta::namespace(&ds).to_string(),
                    meta::name(&ds).to_string(),
                ));
            }
            Ok(())
        }
        Work::Orphans {
            namespace,
            owner_uid,
        } => collect_garbage(store, namespace, owner_uid),
    };
    if let Err(e) = result {
        tracing::warn!(?work, error = %e, "workload controller sync failed");
    }
}

type SyncResult = crate::apiserver::Result<()>;

/// Get an object that is not being deleted; `None` when it is gone or terminating.
fn live(store: &Store, resource: &str, ns: &str, name: &str) -> Option<Arc<Value>> {
    store
        .get(&ResourceKey::new(apps(resource), Some(ns), name))
        .ok()
        .filter(|o| !meta::is_terminating(o))
}

/// Pods in `ns` controlled by the object with `uid`.
fn owned_pods(store: &Store, ns: &str, uid: &str) -> crate::apiserver::Result<Vec<Arc<Value>>> {
    Ok(store
        .list(&pods(), Some(ns), &ListOptions::default())?
        .items
        .into_iter()
        .filter(|p| objects::controller_uid(p) == Some(uid))
        .collect())
}

fn active(pod: &Value) -> bool {
    !meta::is_terminating(pod) && !meta::pod_terminal(pod)
}

fn replicas_of(obj: &Value) -> i64 {
    obj.pointer("/spec/replicas")
        .and_then(Value::as_i64)
        .unwrap_or(1)
        .max(0)
}

fn int(obj: &Value, pointer: &str) -> i64 {
    obj.pointer(pointer).and_then(Value::as_i64).unwrap_or(0)
}

/// A pod for `owner` from `template`.
fn pod_from_template(
    owner: &Value,
    template: &Value,
    name: PodName<'_>,
    extra_labels: &[(&str, String)],
) -> Value {
    let mut labels = template
        .pointer("/metadata/labels")
        .and_then(Value::as_object)
        .cloned()
        .unwrap_or_default();
    for (k, v) in extra_labels {
        labels.insert((*k).to_string(), json!(v));
    }
    let mut metadata = json!({
        "namespace": meta::namespace(owner),
        "labels": labels,
        "ownerReferences": [objects::controller_ref_to(owner)],
    });
    match name {
        PodName::Exact(n) => metadata["name"] = json!(n),
        PodName::Generate(prefix) => metadata["generateName"] = json!(prefix),
    }
    if let Some(annotations) = template.pointer("/metadata/annotations") {
        metadata["annotations"] = annotations.clone();
    }
    json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": metadata,
        "spec": template.get("spec").cloned().unwrap_or_else(|| json!({})),
        "status": {"phase": "Pending"},
    })
}

#[derive(Clone, Copy)]
enum PodName<'a> {
    Exact(&'a str),
    Generate(&'a str),
}

fn create_pod(store: &Store, pod: Value) -> SyncResult {
    let ns = meta::namespace(&pod).to_string();
    match store.create(&pods(), Some(&ns), pod) {
        Ok(_) => Ok(()),
        // A pod of that name still exists (a StatefulSet pod being replaced): next event.
        Err(e) if e.code() == 409 => Ok(()),
        Err(e) => Err(e),
    }
}

fn delete_pod(store: &Store, pod: &Value, grace: Option<i64>) -> SyncResult {
    let opts = DeleteOptions {
        grace_period_seconds: grace,
        preconditions: Preconditions {
            uid: Some(meta::uid(pod).to_string()),
            ..Default::default()
        },
        ..Default::default()
    };
    match store.delete(&ResourceKey::for_object(pods(), pod), &opts) {
        Ok(_) => Ok(()),
        Err(e) if objects::is_not_found(&e) || e.code() == 409 => Ok(()),
        Err(e) => Err(e),
    }
}

/// Replace `status` of an object when it differs.
fn write_status(store: &Store, key: &ResourceKey, status: Value) -> SyncResult {
    match store.modify(key, Part::Status, |obj| {
        if obj.get("status") == Some(&status) {
            return Ok(false);
        }
        obj["status"] = status.clone();
        Ok(true)
    }) {
        Ok(_) => Ok(()),
        Err(e) if objects::is_not_found(&e) => Ok(()),
        Err(e) => Err(e),
    }
}

fn old_status(obj: &Value) -> Map<String, Value> {
    obj.get("status")
        .and_then(Value::as_object)
        .cloned()
        .unwrap_or_default()
}

// --- ReplicaSets -------------------------------------------------------------------------

/// Which pods a ReplicaSet scales down first (upstream `ActivePods` ordering): unscheduled,
/// then not running, then not ready, then the newest.
fn scale_down_order(pods: &mut [Arc<Value>]) {
    pods.sort_by_key(|p| {
        (
            !meta::str_at(p, "/spec/nodeName").is_empty(),
            meta::pod_phase(p) == "Running",
            meta::pod_ready(p),
            Reverse(meta::str_at(p, "/metadata/creationTimestamp").to_string()),
            Reverse(meta::name(p).to_string()),
        )
    });
}

fn sync_replicaset(store: &Store, ns: &str, name: &str, dirty: &mut BTreeSet<Work>) -> SyncResult {
    let Some(rs) = live(store, "replicasets", ns, name) else {
        return Ok(());
    };
    if let Some(owner) = owner_of(&rs, "Deployment") {
        dirty.insert(Work::Deployment(ns.to_string(), owner));
    }
    let uid = meta::uid(&rs);
    let mut current: Vec<Arc<Value>> = owned_pods(store, ns, uid)?
        .into_iter()
        .filter(|p| active(p))
        .collect();
    let want = replicas_of(&rs) as usize;
    let template = rs.pointer("/spec/template").cloned().unwrap_or(Value::Null);
    if current.len() < want {
        let prefix = format!("{name}-");
        for _ in current.len()..want {
            create_pod(
                store,
                pod_from_template(&rs, &template, PodName::Generate(&prefix), &[]),
            )?;
        }
    } else if current.len() > want {
        scale_down_order(&mut current);
        for pod in &current[..current.len() - want] {
            delete_pod(store, pod, None)?;
        }
    }
    let all = owned_pods(store, ns, uid)?;
    let current: Vec<&Arc<Value>> = all.iter().filter(|p| active(p)).collect();
    let ready = current.iter().filter(|p| meta::pod_ready(p)).count();
    let mut status = old_status(&rs);
    status.insert("replicas".into(), json!(current.len()));
    status.insert("fullyLabeledReplicas".into(), json!(current.len()));
    status.insert("readyReplicas".into(), json!(ready));
    status.insert("availableReplicas".into(), json!(ready));
    status.insert(
        "terminatingReplicas".into(),
        json!(all.iter().filter(|p| meta::is_terminating(p)).count()),
    );
    status.insert(
        "observedGeneration".into(),
        json!(int(&rs, "/metadata/generation")),
    );
    write_status(
        store,
        &ResourceKey::for_object(apps("replicasets"), &rs),
        Value::Object(status),
    )
}

// --- Deployments -------------------------------------------------------------------------

fn sync_deployment(store: &Store, ns: &str, name: &str) -> SyncResult {
    let Some(d) = live(store, "deployments", ns, name) else {
        return Ok(());
    };
    let uid = meta::uid(&d);
    let replicas = replicas_of(&d);
    let template = d.pointer("/spec/template").cloned().unwrap_or(Value::Null);
    let hash = objects::stable_hash(&template);
    let owned = |store: &Store| -> crate::apiserver::Result<Vec<Arc<Value>>> {
        Ok(store
            .list(&apps("replicasets"), Some(ns), &ListOptions::default())?
            .items
            .into_iter()
            .filter(|rs| objects::controller_uid(rs) == Some(uid))
            .collect())
    };
    let sets = owned(store)?;
    let is_current = |rs: &Value| {
        rs.pointer(&format!("/metadata/labels/{POD_TEMPLATE_HASH}"))
            .and_then(Value::as_str)
            == Some(hash.as_str())
    };
    match sets.iter().find(|rs| is_current(rs)) {
        None => {
            let revision = sets
                .iter()
                .filter_map(|rs| {
                    rs.pointer("/metadata/annotations/deployment.kubernetes.io~1revision")
                        .and_then(Value::as_str)
                        .and_then(|r| r.parse::<u64>().ok())
                })
                .max()
                .unwrap_or(0)
                + 1;
            let mut rs_template = template.clone();
            rs_template["metadata"]["labels"][POD_TEMPLATE_HASH] = json!(hash);
            let mut selector = d.pointer("/spec/selector").cloned().unwrap_or(json!({}));
            selector["matchLabels"][POD_TEMPLATE_HASH] = json!(hash);
            let mut labels = template
                .pointer("/metadata/labels")
                .cloned()
                .unwrap_or(json!({}));
            labels[POD_TEMPLATE_HASH] = json!(hash);
            let rs = json!({
                "apiVersion": "apps/v1",
                "kind": "ReplicaSet",
                "metadata": {
                    "name": format!("{name}-{hash}"),
                    "namespace": ns,
                    "labels": labels,
                    "annotations": {
                        "deployment.kubernetes.io/revision": revision.to_string(),
                        "deployment.kubernetes.io/desired-replicas": replicas.to_string(),
                        "deployment.kubernetes.io/max-replicas": replicas.to_string(),
                    },
                    "ownerReferences": [objects::controller_ref_to(&d)],
                },
                "spec": {"replicas": replicas, "selector": selector, "template": rs_template},
            });
            match store.create(&apps("replicasets"), Some(ns), rs) {
                Ok(_) => {}
                Err(e) if e.code() == 409 => {}
                Err(e) => return Err(e),
            }
        }
        Some(current) => {
            if replicas_of(current) != replicas {
                scale(store, current, replicas)?;
            }
            // The new pods are all ready: retire the old ReplicaSets (a rolling update with
            // a generous surge).
            if int(current, "/status/readyReplicas") >= replicas {
                for old in sets.iter().filter(|rs| !is_current(rs)) {
                    if replicas_of(old) > 0 {
                        scale(store, old, 0)?;
                    }
                }
            }
        }
    }

    let sets = owned(store)?;
    let sum = |pointer: &str| sets.iter().map(|rs| int(rs, pointer)).sum::<i64>();
    let updated = sets
        .iter()
        .find(|rs| is_current(rs))
        .map_or(0, |rs| int(rs, "/status/replicas"));
    let available = sum("/status/availableReplicas");
    let now = store.now();
    let mut status = Value::Object(old_status(&d));
    status["observedGeneration"] = json!(int(&d, "/metadata/generation"));
    status["replicas"] = json!(sum("/status/replicas"));
    status["updatedReplicas"] = json!(updated);
    status["readyReplicas"] = json!(sum("/status/readyReplicas"));
    status["availableReplicas"] = json!(available);
    status["unavailableReplicas"] = json!((replicas - available).max(0));
    let (value, reason, message) = if available >= replicas {
        (
            "True",
            "MinimumReplicasAvailable",
            "Deployment has minimum availability.",
        )
    } else {
        (
            "False",
            "MinimumReplicasUnavailable",
            "Deployment does not have minimum availability.",
        )
    };
    objects::set_condition(
        &mut status,
        "Available",
        value,
        Some(reason),
        Some(message),
        now,
    );
    let progress = if updated >= replicas && available >= replicas {
        (
            "NewReplicaSetAvailable",
            format!("ReplicaSet \"{name}-{hash}\" has successfully progressed."),
        )
    } else {
        (
            "ReplicaSetUpdated",
            format!("ReplicaSet \"{name}-{hash}\" is progressing."),
        )
    };
    objects::set_condition(
        &mut status,
        "Progressing",
        "True",
        Some(progress.0),
        Some(&progress.1),
        now,
    );
    write_status(
        store,
        &ResourceKey::for_object(apps("deployments"), &d),
        status,
    )
}

fn scale(store: &Store, obj: &Value, replicas: i64) -> SyncResult {
    let key = ResourceKey::for_object(apps("replicasets"), obj);
    match store.modify(&key, Part::Main, |rs| {
        rs["spec"]["replicas"] = json!(replicas);
        Ok(true)
    }) {
        Ok(_) => Ok(()),
        Err(e) if objects::is_not_found(&e) => Ok(()),
        Err(e) => Err(e),
    }
}

// --- StatefulSets ------------------------------------------------------------------------

/// The ordinal of a StatefulSet pod, from its name.
fn ordinal(set: &str, pod: &str) -> Option<usize> {
    pod.strip_prefix(set)?.strip_prefix('-')?.parse().ok()
}

/// What a StatefulSet sync does next.
#[derive(Debug, PartialEq, Eq)]
enum SetAction {
    Create(usize),
    Delete(String),
}

/// The StatefulSet controller's decision, given the ordinals of its pods and their state
/// (`Some(ready, terminating, terminal)`). `OrderedReady` handles one pod at a time, each
/// only after its predecessors are Running and Ready; scale-down removes the highest ordinal
/// first.
fn plan_statefulset(
    set: &str,
    replicas: usize,
    parallel: bool,
    pods: &BTreeMap<usize, (bool, bool, bool)>,
    unparsable: &[String],
) -> Vec<SetAction> {
    let mut actions = Vec::new();
    let name = |i: usize| format!("{set}-{i}");
    for i in 0..replicas {
        match pods.get(&i) {
            None => {
                actions.push(SetAction::Create(i));
                if !parallel {
                    return actions;
                }
            }
            Some(&(_, _, true)) => {
                actions.push(SetAction::Delete(name(i)));
                if !parallel {
                    return actions;
                }
            }
            Some(&(ready, terminating, false)) => {
                if (!ready || terminating) && !parallel {
                    return actions;
                }
            }
        }
    }
    actions.extend(unparsable.iter().cloned().map(SetAction::Delete));
    let condemned: Vec<(usize, bool)> = pods
        .range(replicas..)
        .rev()
        .map(|(&i, &(_, terminating, _))| (i, terminating))
        .collect();
    if parallel {
        actions.extend(
            condemned
                .iter()
                .filter(|(_, terminating)| !terminating)
                .map(|(i, _)| SetAction::Delete(name(*i))),
        );
    } else if condemned.iter().all(|(_, terminating)| !terminating)
        && let Some((i, _)) = condemned.first()
    {
        actions.push(SetAction::Delete(name(*i)));
    }
    actions
}

fn sync_statefulset(store: &Store, ns: &str, name: &str) -> SyncResult {
    let Some(sts) = live(store, "statefulsets", ns, name) else {
        return Ok(());
    };
    let uid = meta::uid(&sts);
    let replicas = replicas_of(&sts) as usize;
    let parallel = meta::str_at(&sts, "/spec/podManagementPolicy") == "Parallel";
    let template = sts
        .pointer("/spec/template")
        .cloned()
        .unwrap_or(Value::Null);
    let revision = format!("{name}-{}", objects::stable_hash(&template));
    let owned = owned_pods(store, ns, uid)?;
    let mut by_ordinal = BTreeMap::new();
    let mut unparsable = Vec::new();
    for pod in &owned {
        match ordinal(name, meta::name(pod)) {
            Some(i) => {
                let running = meta::pod_phase(pod) == "Running";
                by_ordinal.insert(
                    i,
                    (
                        running && meta::pod_ready(pod),
                        meta::is_terminating(pod),
                        meta::pod_terminal(pod),
                    ),
                );
            }
            None => unparsable.push(meta::name(pod).to_string()),
        }
    }
    let service = meta::str_at(&sts, "/spec/serviceName").to_string();
    for action in plan_statefulset(name, replicas, parallel, &by_ordinal, &unparsable) {
        match action {
            SetAction::Create(i) => {
                let pod_name = format!("{name}-{i}");
                let mut pod = pod_from_template(
                    &sts,
                    &template,
                    PodName::Exact(&pod_name),
                    &[
                        ("controller-revision-hash", revision.clone()),
                        ("statefulset.kubernetes.io/pod-name", pod_name.clone()),
                        ("apps.kubernetes.io/pod-index", i.to_string()),
                    ],
                );
                pod["spec"]["hostname"] = json!(pod_name);
                if !service.is_empty() {
                    pod["spec"]["subdomain"] = json!(service);
                }
                create_pod(store, pod)?;
            }
            SetAction::Delete(pod_name) => {
                if let Some(pod) = owned.iter().find(|p| meta::name(p) == pod_name) {
                    let grace = meta::pod_terminal(pod).then_some(0);
                    delete_pod(store, pod, grace)?;
                }
            }
        }
    }
    let owned = owned_pods(store, ns, uid)?;
    let counted: Vec<&Arc<Value>> = owned.iter().filter(|p| !meta::pod_terminal(p)).collect();
    let ready = counted
        .iter()
        .filter(|p| meta::pod_ready(p) && !meta::is_terminating(p))
        .count();
    let mut status = old_status(&sts);
    status.insert(
        "observedGeneration".into(),
        json!(int(&sts, "/metadata/generation")),
    );
    status.insert("replicas".into(), json!(counted.len()));
    status.insert("readyReplicas".into(), json!(ready));
    status.insert("availableReplicas".into(), json!(ready));
    status.insert("currentReplicas".into(), json!(counted.len()));
    status.insert("updatedReplicas".into(), json!(counted.len()));
    status.insert("currentRevision".into(), json!(revision));
    status.insert("updateRevision".into(), json!(revision));
    status.insert("collisionCount".into(), json!(0));
    write_status(
        store,
        &ResourceKey::for_object(apps("statefulsets"), &sts),
        Value::Object(status),
    )
}

// --- DaemonSets --------------------------------------------------------------------------

/// Whether a daemon pod of `template` should run on `node`: its node selector matches and it
/// tolerates the node's taints (cordons do not count: daemon pods tolerate them).
/// `tolerations` are the daemon pod's ([`daemon_tolerations`]).
fn should_run(template: &Value, tolerations: &[Value], node: &Value) -> bool {
    selects(template, node) && objects::untolerated_taint(node, tolerations, &[]).is_none()
}

/// Whether a daemon pod already on `node` keeps running there: as [`should_run`], but only
/// `NoExecute` taints count (upstream `NodeShouldRunDaemonPod`'s `shouldContinueRunning`), so
/// an unreachable node's `NoSchedule` taint does not remove its daemon pods.
fn should_continue(template: &Value, tolerations: &[Value], node: &Value) -> bool {
    selects(template, node) && no_execute_tolerated(node, tolerations)
}

fn selects(template: &Value, node: &Value) -> bool {
    !meta::is_terminating(node)
        && objects::map_selects(
            template.pointer("/spec/nodeSelector"),
            objects::labels(node),
        )
}

fn no_execute_tolerated(node: &Value, tolerations: &[Value]) -> bool {
    node.pointer("/spec/taints")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter(|t| meta::str_at(t, "/effect") == "NoExecute")
        .all(|t| objects::tolerates(tolerations, t))
}

fn daemon_tolerations(spec: Option<&Value>) -> Vec<Value> {
    let mut tolerations = objects::tolerations_of(spec);
    for (key, effect) in DAEMON_TOLERATIONS {
        tolerations.push(json!({"key": key, "operator": "Exists", "effect": effect}));
    }
    tolerations
}

fn sync_daemonset(store: &Store, ns: &str, name: &str) -> SyncResult {
    let Some(ds) = live(store, "daemonsets", ns, name) else {
        return Ok(());
    };
    let uid = meta::uid(&ds);
    let template = ds.pointer("/spec/template").cloned().unwrap_or(Value::Null);
    let hash = objects::stable_hash(&template);
    let generation = int(&ds, "/metadata/generation");
    let nodes = store.list(&nodes(), None, &ListOptions::default())?.items;
    let owned = owned_pods(store, ns, uid)?;
    let mut by_node: BTreeMap<&str, Vec<&Arc<Value>>> = BTreeMap::new();
    for pod in &owned {
        by_node
            .entry(meta::str_at(pod, "/spec/nodeName"))
            .or_default()
            .push(pod);
    }
    let prefix = format!("{name}-");
    let tolerations = daemon_tolerations(template.get("spec"));
    let eligible: Vec<bool> = nodes
        .iter()
        .map(|n| should_run(&template, &tolerations, n))
        .collect();
    for (node, &eligible) in nodes.iter().zip(&eligible) {
        let node_name = meta::name(node);
        let here = by_node.remove(node_name).unwrap_or_default();
        let mut running: Vec<&&Arc<Value>> = here.iter().filter(|p| active(p)).collect();
        if !eligible {
            if !should_continue(&template, &tolerations, node) {
                for pod in running {
                    delete_pod(store, pod, None)?;
                }
            }
            continue;
        }
        for failed in here.iter().filter(|p| meta::pod_terminal(p)) {
            delete_pod(store, failed, Some(0))?;
        }
        let stopping = here.iter().any(|p| meta::is_terminating(p));
        if running.is_empty() && !stopping && meta::node_ready(node) {
            let mut pod = pod_from_template(
                &ds,
                &template,
                PodName::Generate(&prefix),
                &[
                    ("controller-revision-hash", hash.clone()),
                    ("pod-template-generation", generation.to_string()),
                ],
            );
            pod["spec"]["nodeName"] = json!(node_name);
            pod["spec"]["tolerations"] = json!(tolerations);
            pod["spec"]["affinity"] = json!({"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {
                "nodeSelectorTerms": [{"matchFields": [{"key": "metadata.name", "operator": "In", "values": [node_name]}]}]
            }}});
            create_pod(store, pod)?;
        }
        if running.len() > 1 {
            running.sort_by_key(|p| {
                (
                    meta::str_at(p, "/metadata/creationTimestamp").to_string(),
                    meta::name(p).to_string(),
                )
            });
            for extra in &running[1..] {
                delete_pod(store, extra, None)?;
            }
        }
    }
    // Pods on nodes that no longer exist: nothing will stop them, so they go at once.
    for pod in by_node.values().flatten() {
        if !meta::str_at(pod, "/spec/nodeName").is_empty() {
            delete_pod(store, pod, Some(0))?;
        }
    }

    // Active daemon pods per node: (how many, whether one is Ready).
    let mut active_by_node: BTreeMap<String, (usize, bool)> = BTreeMap::new();
    for pod in owned_pods(store, ns, uid)?.iter().filter(|p| active(p)) {
        let entry = active_by_node
            .entry(meta::str_at(pod, "/spec/nodeName").to_string())
            .or_default();
        entry.0 += 1;
        entry.1 |= meta::pod_ready(pod);
    }
    let mut desired = 0;
    let mut scheduled = 0;
    let mut ready = 0;
    let mut misscheduled = 0;
    for (node, &eligible) in nodes.iter().zip(&eligible) {
        let (count, any_ready) = active_by_node
            .get(meta::name(node))
            .copied()
            .unwrap_or_default();
        if eligible {
            desired += 1;
            scheduled += usize::from(count > 0);
            ready += usize::from(any_ready);
        } else if count > 0 {
            misscheduled += 1;
        }
    }
    let mut status = old_status(&ds);
    status.insert("observedGeneration".into(), json!(generation));
    status.insert("desiredNumberScheduled".into(), json!(desired));
    status.insert("currentNumberScheduled".into(), json!(scheduled));
    status.insert("updatedNumberScheduled".into(), json!(scheduled));
    status.insert("numberMisscheduled".into(), json!(misscheduled));
    status.insert("numberReady".into(), json!(ready));
    status.insert("numberAvailable".into(), json!(ready));
    status.insert("numberUnavailable".into(), json!(desired - ready));
    write_status(
        store,
        &ResourceKey::for_object(apps("daemonsets"), &ds),
        Value::Object(status),
    )
}

// --- Garbage collection ------------------------------------------------------------------

/// Delete the ReplicaSets and pods whose controller (`owner_uid`) is gone, as the garbage
/// collector's background propagation does.
fn collect_garbage(store: &Store, ns: &str, owner_uid: &str) -> SyncResult {
    for rs in store
        .list(&apps("replicasets"), Some(ns), &ListOptions::default())?
        .items
    {
        if objects::controller_uid(&rs) == Some(owner_uid) {
            match store.delete(
                &ResourceKey::for_object(apps("replicasets"), &rs),
                &DeleteOptions::default(),
            ) {
                Ok(_) => {}
                Err(e) if objects::is_not_found(&e) => {}
                Err(e) => return Err(e),
            }
        }
    }
    for pod in owned_pods(store, ns, owner_uid)? {
        if !meta::is_terminating(&pod) {
            delete_pod(store, &pod, None)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state(ready: bool, terminating: bool, terminal: bool) -> (bool, bool, bool) {
        (ready, terminating, terminal)
    }

    #[test]
    fn ordered_statefulset_creates_one_at_a_time() {
        let none = BTreeMap::new();
        assert_eq!(
            plan_statefulset("db", 3, false, &none, &[]),
            vec![SetAction::Create(0)]
        );
        let first = BTreeMap::from([(0, state(false, false, false))]);
        assert!(plan_statefulset("db", 3, false, &first, &[]).is_empty());
        let first = BTreeMap::from([(0, state(true, false, false))]);
        assert_eq!(
            plan_statefulset("db", 3, false, &first, &[]),
            vec![SetAction::Create(1)]
        );
        assert_eq!(
            plan_statefulset("db", 3, true, &none, &[]),
            vec![
                SetAction::Create(0),
                SetAction::Create(1),
                SetAction::Create(2)
            ]
        );
    }

    #[test]
    fn statefulset_replacement_waits_for_the_old_pod() {
        let pods = BTreeMap::from([
            (0, state(true, false, false)),
            (1, state(true, true, false)),
            (2, state(true, false, false)),
        ]);
        assert!(plan_statefulset("db", 3, false, &pods, &[]).is_empty());
        assert!(plan_statefulset("db", 3, true, &pods, &[]).is_empty());
        let gone = BTreeMap::from([
            (0, state(true, false, false)),
            (2, state(true, false, false)),
        ]);
        assert_eq!(
            plan_statefulset("db", 3, false, &gone, &[]),
            vec![SetAction::Create(1)]
        );
        let failed = BTreeMap::from([(0, state(false, false, true))]);
        assert_eq!(
            plan_statefulset("db", 1, false, &failed, &[]),
            vec![SetAction::Delete("db-0".into())]
        );
    }

    #[test]
    fn statefulset_scales_down_from_the_top() {
        let pods: BTreeMap<usize, _> = (0..4).map(|i| (i, state(true, false, false))).collect();
        assert_eq!(
            plan_statefulset("db", 2, false, &pods, &[]),
            vec![SetAction::Delete("db-3".into())]
        );
        assert_eq!(
            plan_statefulset("db", 2, true, &pods, &[]),
            vec![
                SetAction::Delete("db-3".into()),
                SetAction::Delete("db-2".into())
            ]
        );
        let mut stopping = pods.clone();
        stopping.insert(3, state(true, true, false));
        assert!(plan_statefulset("db", 2, false, &stopping, &[]).is_empty());
        assert_eq!(ordinal("db", "db-12"), Some(12));
        assert_eq!(ordinal("db", "dbx-1"), None);
        assert_eq!(ordinal("db", "db-x"), None);
    }

    fn runs_on(template: &Value, node: &Value) -> bool {
        should_run(template, &daemon_tolerations(template.get("spec")), node)
    }

    #[test]
    fn daemon_pods_tolerate_cordons_but_honour_selectors_and_taints() {
        let template = json!({"spec": {"nodeSelector": {"role": "edge"}}});
        let node = json!({"metadata": {"labels": {"role": "edge"}}, "spec": {"unschedulable": true,
            "taints": [{"key": "node.kubernetes.io/unschedulable", "effect": "NoSchedule"}]}});
        assert!(runs_on(&template, &node));
        let other = json!({"metadata": {"labels": {"role": "core"}}});
        assert!(!runs_on(&template, &other));
        let tainted = json!({"metadata": {"labels": {"role": "edge"}}, "spec": {"taints": [{"key": "dedicated", "effect": "NoSchedule"}]}});
        assert!(!runs_on(&template, &tainted));
        let tolerant = json!({"spec": {"tolerations": [{"operator": "Exists"}]}});
        assert!(runs_on(&tolerant, &tainted));
    }

    #[test]
    fn replicasets_scale_down_unready_and_new_pods_first() {
        let pod = |name: &str, node: &str, ready: bool, created: &str| {
            Arc::new(json!({
                "metadata": {"name": name, "creationTimestamp": created},
                "spec": {"nodeName": node},
                "status": {"phase": if node.is_empty() { "Pending" } else { "Running" },
                           "conditions": [{"type": "Ready", "status": if ready { "True" } else { "False" }}]},
            }))
        };
        let mut pods = vec![
            pod("old-ready", "n1", true, "2025-01-01T00:00:00Z"),
            pod("new-ready", "n1", true, "2025-01-02T00:00:00Z"),
            pod("unready", "n1", false, "2025-01-01T00:00:00Z"),
            pod("pending", "", false, "2025-01-01T00:00:00Z"),
        ];
        scale_down_order(&mut pods);
        let names: Vec<&str> = pods.iter().map(|p| meta::name(p)).collect();
        assert_eq!(names, vec!["pending", "unready", "new-ready", "old-ready"]);
    }
}
