//! The simulated cluster's workloads: pods start and become Ready, replacements land on
//! schedulable nodes (and wait `Unschedulable` when none has CPU left), StatefulSet
//! replacements keep their names, DaemonSets cover every node, PDB statuses settle to what the
//! scenario promises.

// Helpers outside #[test] functions fail the test the same way the tests do.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::time::Duration;

use rota_sim::apiserver::{
    DeleteOptions, GroupResource, ListOptions, PatchKind, ResourceKey, Store, WatchEventType, meta,
};
use rota_sim::cluster::{Cluster, ClusterHandle, Faults, Scenario, Timings, pods_on};
use serde_json::{Value, json};

const SETTLE: Duration = Duration::from_secs(60);

fn start(nodes: usize, seed: u64) -> (Scenario, ClusterHandle) {
    let scenario = Scenario::generate(nodes, seed);
    let cluster = Cluster::start_with_disruption_controller(
        Store::new(),
        &scenario,
        Timings::default(),
        Faults::none(),
    )
    .unwrap();
    (scenario, cluster)
}

fn list(store: &Store, resource: GroupResource, ns: Option<&str>) -> Vec<Value> {
    store
        .list(&resource, ns, &ListOptions::default())
        .unwrap()
        .items
        .into_iter()
        .map(|v| (*v).clone())
        .collect()
}

fn pods() -> GroupResource {
    GroupResource::core("pods")
}

fn owner_name(pod: &Value) -> Option<String> {
    meta::controller_ref(pod)
        .and_then(|r| r.get("name"))
        .and_then(Value::as_str)
        .map(str::to_string)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pods_become_ready_daemonsets_cover_every_node_and_pdbs_settle() {
    let (scenario, cluster) = start(8, 3);
    cluster.wait_settled(SETTLE).await.unwrap();
    let store = cluster.store();

    let all = list(store, pods(), None);
    assert_eq!(all.len(), scenario.expected_pod_count());
    for pod in &all {
        assert_eq!(meta::pod_phase(pod), "Running", "{}", meta::name(pod));
        assert!(meta::pod_ready(pod), "{} not ready", meta::name(pod));
    }

    for ds in &scenario.daemonsets {
        let name = meta::name(ds);
        for node in &scenario.nodes {
            let here: Vec<&Value> = all
                .iter()
                .filter(|p| owner_name(p).as_deref() == Some(name))
                .filter(|p| meta::str_at(p, "/spec/nodeName") == node.name)
                .collect();
            assert_eq!(here.len(), 1, "daemonset {name} on {}", node.name);
        }
    }

    // Control-plane nodes are tainted: only daemon pods run there, and the kubelet's mirror
    // pods of kubeadm's static pods (owned by the Node).
    for cp in scenario.control_plane_names() {
        let mut mirrors = Vec::new();
        for pod in pods_on(store, &cp) {
            let kind = meta::controller_ref(&pod)
                .and_then(|r| r.get("kind"))
                .cloned();
            if kind == Some(json!("Node")) {
                assert_eq!(meta::namespace(&pod), "kube-system");
                assert!(
                    pod.pointer("/metadata/annotations/kubernetes.io~1config.mirror")
                        .is_some(),
                    "{} is a mirror pod",
                    meta::name(&pod)
                );
                mirrors.push(pod["metadata"]["labels"]["component"].clone());
                continue;
            }
            assert_eq!(
                kind,
                Some(json!("DaemonSet")),
                "{} on {cp}",
                meta::name(&pod)
            );
        }
        mirrors.sort_by_key(ToString::to_string);
        assert_eq!(
            mirrors,
            [
                "etcd",
                "kube-apiserver",
                "kube-controller-manager",
                "kube-scheduler"
            ],
            "{cp}"
        );
    }

    // The pinned singleton runs on the blocked node; the bare pods on theirs.
    let blocked = scenario.blocked_node.clone().unwrap();
    let license = all.iter().find(|p| meta::namespace(p) == "legacy").unwrap();
    assert_eq!(meta::str_at(license, "/spec/nodeName"), blocked);
    for bare in &scenario.pods {
        let pod = store
            .get(&ResourceKey::new(
                pods(),
                Some(meta::namespace(bare)),
                meta::name(bare),
            ))
            .unwrap();
        assert_eq!(
            Some(meta::str_at(&pod, "/spec/nodeName")),
            scenario.unmanaged_pods_node.as_deref()
        );
    }

    let pdbs = GroupResource::new("policy", "poddisruptionbudgets");
    let expected: BTreeMap<(String, String), i32> = scenario
        .expected_pdbs
        .iter()
        .map(|e| ((e.namespace.clone(), e.name.clone()), e.disruptions_allowed))
        .collect();
    cluster
        .wait_for("PDB allowances", SETTLE, |store| {
            let actual: BTreeMap<(String, String), i32> = list(store, pdbs.clone(), None)
                .iter()
                .map(|p| {
                    (
                        (meta::namespace(p).to_string(), meta::name(p).to_string()),
                        p.pointer("/status/disruptionsAllowed")
                            .and_then(Value::as_i64)
                            .unwrap_or(-1) as i32,
                    )
                })
                .collect();
            if actual == expected {
                Ok(())
            } else {
                Err(format!("{actual:?} != {expected:?}"))
            }
        })
        .await
        .unwrap();
    assert_eq!(expected.values().filter(|a| **a == 0).count(), 1);

    // Statuses that `kubectl get deploy/sts/ds` and the disruption controller read.
    for d in list(store, GroupResource::new("apps", "deployments"), None) {
        let want = d["spec"]["replicas"].as_i64().unwrap();
        assert_eq!(d["status"]["readyReplicas"], want, "{}", meta::name(&d));
        assert_eq!(d["status"]["availableReplicas"], want);
        assert_eq!(d["status"]["updatedReplicas"], want);
        assert_eq!(
            d["status"]["observedGeneration"],
            d["metadata"]["generation"]
        );
    }
    for ds in list(store, GroupResource::new("apps", "daemonsets"), None) {
        assert_eq!(ds["status"]["desiredNumberScheduled"], scenario.nodes.len());
        assert_eq!(ds["status"]["numberReady"], scenario.nodes.len());
    }
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deleted_deployment_pod_is_replaced_on_another_schedulable_node() {
    let (scenario, cluster) = start(6, 11);
    cluster.wait_settled(SETTLE).await.unwrap();
    let store = cluster.store().clone();
    let deployment = &scenario.deployments[0];
    let ns = meta::namespace(deployment).to_string();
    let app = meta::name(deployment).to_string();
    let victim = list(&store, pods(), Some(&ns))
        .into_iter()
        .find(|p| p["metadata"]["labels"]["app"] == app.as_str())
        .unwrap();
    let node = meta::str_at(&victim, "/spec/nodeName").to_string();
    store
        .patch(
            &ResourceKey::new(GroupResource::core("nodes"), None, &node),
            &PatchKind::StrategicMerge,
            &json!({"spec": {"unschedulable": true}}),
        )
        .unwrap();
    let deleted = store
        .delete(
            &ResourceKey::new(pods(), Some(&ns), meta::name(&victim)),
            &DeleteOptions::default(),
        )
        .unwrap();
    assert!(!deleted.finished, "a running pod terminates gracefully");

    let want = deployment["spec"]["replicas"].as_u64().unwrap() as usize;
    let victim_uid = meta::uid(&victim).to_string();
    let replacement = cluster
        .wait_for("the replacement to be Ready", SETTLE, |store| {
            let mine: Vec<Value> = list(store, pods(), Some(&ns))
                .into_iter()
                .filter(|p| p["metadata"]["labels"]["app"] == app.as_str())
                .collect();
            if mine.iter().any(|p| meta::uid(p) == victim_uid) {
                return Err("the old pod is still there".into());
            }
            let ready = mine.iter().filter(|p| meta::pod_ready(p)).count();
            if ready < want {
                return Err(format!("{ready}/{want} ready"));
            }
            Ok(mine)
        })
        .await
        .unwrap();
    for pod in &replacement {
        assert_ne!(
            meta::str_at(pod, "/spec/nodeName"),
            node,
            "placed on the cordoned node"
        );
    }
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_statefulset_replacement_keeps_its_name_and_waits_for_the_old_pod() {
    let (scenario, cluster) = start(6, 5);
    cluster.wait_settled(SETTLE).await.unwrap();
    let store = cluster.store().clone();
    let sts = meta::name(&scenario.statefulsets[0]).to_string();
    let name = format!("{sts}-1");
    let key = ResourceKey::new(pods(), Some("data"), &name);
    let old = store.get(&key).unwrap();
    let old_uid = meta::uid(&old).to_string();

    let mut watch = store
        .subscribe(
            &pods(),
            Some("data"),
            &ListOptions::fields(&format!("metadata.name={name}")),
            None,
        )
        .unwrap();
    store.delete(&key, &DeleteOptions::default()).unwrap();

    // Every event for the name, in order, until the replacement is Ready.
    let mut seen = Vec::new();
    let events = async {
        loop {
            let event = watch.next().await.unwrap();
            let uid = meta::uid(&event.object).to_string();
            let ready = meta::pod_ready(&event.object);
            seen.push((event.event_type, uid.clone()));
            if uid != old_uid && ready {
                return;
            }
        }
    };
    tokio::time::timeout(SETTLE, events).await.unwrap();
    let old_gone = seen
        .iter()
        .position(|(t, uid)| *t == WatchEventType::Deleted && *uid == old_uid)
        .expect("the old pod was deleted");
    let new_added = seen
        .iter()
        .position(|(t, uid)| *t == WatchEventType::Added && *uid != old_uid)
        .expect("a replacement was created");
    assert!(
        old_gone < new_added,
        "replacement created before the old pod was gone: {seen:?}"
    );
    let new = store.get(&key).unwrap();
    assert_eq!(
        new["metadata"]["labels"]["statefulset.kubernetes.io/pod-name"],
        name.as_str()
    );
    assert_eq!(new["spec"]["hostname"], name.as_str());
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pod_that_fits_nowhere_stays_pending_until_a_node_matches() {
    let (_, cluster) = start(4, 2);
    cluster.wait_settled(SETTLE).await.unwrap();
    let store = cluster.store().clone();
    store
        .create(
            &GroupResource::new("apps", "deployments"),
            Some("default"),
            json!({
                "metadata": {"name": "gpu-job", "namespace": "default"},
                "spec": {
                    "replicas": 1,
                    "selector": {"matchLabels": {"app": "gpu-job"}},
                    "template": {
                        "metadata": {"labels": {"app": "gpu-job"}},
                        "spec": {"nodeSelector": {"gpu": "true"}, "containers": [{"name": "c", "image": "cuda"}]},
                    },
                },
            }),
        )
        .unwrap();
    let pending = cluster
        .wait_for("the pod to be marked unschedulable", SETTLE, |store| {
            let pod = list(store, pods(), Some("default"))
                .into_iter()
                .find(|p| p["metadata"]["labels"]["app"] == "gpu-job")
                .ok_or("no pod yet")?;
            let scheduled = pod["status"]["conditions"]
                .as_array()
                .and_then(|c| c.iter().find(|c| c["type"] == "PodScheduled").cloned())
                .ok_or("no PodScheduled condition")?;
            (scheduled["status"] == "False" && scheduled["reason"] == "Unschedulable")
                .then_some(pod)
                .ok_or_else(|| "still schedulable".to_string())
        })
        .await
        .unwrap();
    assert_eq!(meta::pod_phase(&pending), "Pending");
    assert_eq!(meta::str_at(&pending, "/spec/nodeName"), "");
    let message = pending["status"]["conditions"][0]["message"]
        .as_str()
        .unwrap();
    assert!(
        message.contains("didn't match Pod's node affinity/selector"),
        "{message}"
    );

    store
        .patch(
            &ResourceKey::new(GroupResource::core("nodes"), None, "worker-02"),
            &PatchKind::Merge,
            &json!({"metadata": {"labels": {"gpu": "true"}}}),
        )
        .unwrap();
    cluster
        .wait_until("the pod to run on the labelled node", SETTLE, |store| {
            list(store, pods(), Some("default"))
                .iter()
                .any(|p| meta::str_at(p, "/spec/nodeName") == "worker-02" && meta::pod_ready(p))
        })
        .await
        .unwrap();
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scaling_and_deleting_a_deployment() {
    let (scenario, cluster) = start(4, 8);
    cluster.wait_settled(SETTLE).await.unwrap();
    let store = cluster.store().clone();
    let deployment = &scenario.deployments[1];
    let ns = meta::namespace(deployment).to_string();
    let name = meta::name(deployment).to_string();
    let key = ResourceKey::new(GroupResource::new("apps", "deployments"), Some(&ns), &name);
    let count = |store: &Store, ready_only: bool| {
        list(store, pods(), Some(&ns))
            .iter()
            .filter(|p| p["metadata"]["labels"]["app"] == name.as_str())
            .filter(|p| !meta::is_terminating(p))
            .filter(|p| !ready_only || meta::pod_ready(p))
            .count()
    };

    store
        .patch(&key, &PatchKind::Merge, &json!({"spec": {"replicas": 7}}))
        .unwrap();
    cluster.wait_settled(SETTLE).await.unwrap();
    assert_eq!(count(&store, true), 7);

    store
        .patch(&key, &PatchKind::Merge, &json!({"spec": {"replicas": 1}}))
        .unwrap();
    cluster.wait_settled(SETTLE).await.unwrap();
    assert_eq!(count(&store, true), 1);
    let d = store.get(&key).unwrap();
    assert_eq!(d["status"]["replicas"], 1);

    store.delete(&key, &DeleteOptions::default()).unwrap();
    cluster
        .wait_until(
            "the garbage collector to remove the pods",
            SETTLE,
            |store| {
                count(store, false) == 0
                    && list(store, pods(), Some(&ns))
                        .iter()
                        .all(|p| p["metadata"]["labels"]["app"] != name.as_str())
            },
        )
        .await
        .unwrap();
    let sets = list(&store, GroupResource::new("apps", "replicasets"), Some(&ns));
    assert!(
        sets.iter()
            .all(|rs| !meta::name(rs).starts_with(&format!("{name}-")))
    );
    cluster.shutdown().await;
}

/// With capacity tightened to what the workloads need, a worker taken out leaves the pods
/// evicted from it `Pending` (`PodScheduled=False`, `Unschedulable`, insufficient CPU) until it
/// is schedulable again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pods_wait_unschedulable_when_no_node_has_room() {
    let mut scenario = Scenario::generate(8, 5);
    scenario.tighten_capacity(0.0);
    let cluster = Cluster::start_with_disruption_controller(
        Store::new(),
        &scenario,
        Timings::default(),
        Faults::none(),
    )
    .unwrap();
    cluster.wait_settled(SETTLE).await.unwrap();
    let store = cluster.store();
    let worker = scenario
        .worker_names()
        .into_iter()
        .filter(|w| Some(w) != scenario.blocked_node.as_ref())
        .max_by_key(|w| pods_on(store, w).len())
        .unwrap();
    let node_key = ResourceKey::new(GroupResource::core("nodes"), None, &worker);
    store
        .patch(
            &node_key,
            &PatchKind::Merge,
            &json!({"spec": {"unschedulable": true}}),
        )
        .unwrap();
    let evicted: Vec<Value> = pods_on(store, &worker)
        .iter()
        .filter(|p| meta::controller_ref(p).and_then(|r| r["kind"].as_str()) == Some("ReplicaSet"))
        .map(|p| (**p).clone())
        .collect();
    assert!(!evicted.is_empty());
    for pod in &evicted {
        store
            .delete(
                &ResourceKey::for_object(pods(), pod),
                &DeleteOptions::default(),
            )
            .unwrap();
    }
    let message = cluster
        .wait_for("a replacement to wait for room", SETTLE, |store| {
            list(store, pods(), None)
                .iter()
                .filter(|p| meta::str_at(p, "/spec/nodeName").is_empty())
                .filter_map(|p| {
                    p["status"]["conditions"].as_array().and_then(|cs| {
                        cs.iter()
                            .find(|c| {
                                c["type"] == "PodScheduled"
                                    && c["status"] == "False"
                                    && c["reason"] == "Unschedulable"
                            })
                            .map(|c| meta::str_at(c, "/message").to_string())
                    })
                })
                .find(|message| message.contains("Insufficient cpu"))
                .ok_or_else(|| "no pod waits for CPU".to_string())
        })
        .await
        .unwrap();
    assert!(message.contains("Insufficient cpu"), "{message}");
    store
        .patch(
            &node_key,
            &PatchKind::Merge,
            &json!({"spec": {"unschedulable": null}}),
        )
        .unwrap();
    cluster.wait_settled(SETTLE).await.unwrap();
    cluster.shutdown().await;
}
