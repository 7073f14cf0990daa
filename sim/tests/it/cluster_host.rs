//! Simulated hosts driving their nodes: a reboot cycle through the host (the node looks Ready
//! until the node-monitor grace period passed, then `Unknown` and tainted unreachable; its pods
//! stay bound and restart in place after the boot, with a new boot id and the new kernel), a
//! kubelet restart after a kubelet upgrade, agent state surviving the reboot, and the node
//! faults (a node that never returns loses its evictable pods to the taint manager).

// Helpers outside #[test] functions fail the test the same way the tests do.
#![allow(clippy::unwrap_used, clippy::expect_used)]
use rota_core::model::PackagePin;

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use rota_agent::host::{Host, RebootMethod};
use rota_agent::packages::{InstallPurpose, UpgradeScope};
use rota_sim::apiserver::{GroupResource, ResourceKey, Store, meta};
use rota_sim::cluster::scenario::{KERNEL_UPDATE, KUBELET_PATCH};
use rota_sim::cluster::{
    Cluster, ClusterHandle, Error, Faults, PowerState, Scenario, Timings, pods_on,
};
use serde_json::Value;

const SETTLE: Duration = Duration::from_secs(60);

async fn start(nodes: usize, seed: u64, faults: Faults) -> (Scenario, ClusterHandle) {
    let scenario = Scenario::generate(nodes, seed);
    let cluster = Cluster::start_with_disruption_controller(
        Store::new(),
        &scenario,
        Timings::default(),
        faults,
    )
    .unwrap();
    cluster.wait_settled(SETTLE).await.unwrap();
    (scenario, cluster)
}

fn node(store: &Store, name: &str) -> Arc<Value> {
    store
        .get(&ResourceKey::new(GroupResource::core("nodes"), None, name))
        .unwrap()
}

fn ready_condition(node: &Value) -> (String, String, String) {
    let c = node["status"]["conditions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["type"] == "Ready")
        .unwrap();
    let s = |f: &str| c[f].as_str().unwrap_or_default().to_string();
    (s("status"), s("reason"), s("message"))
}

/// Asserts that `node` does not become Ready within five times the kubelet's start-up.
async fn stays_not_ready(cluster: &ClusterHandle, node: &str) {
    let err = cluster
        .wait_node_ready(node, cluster.timings().node_ready * 5)
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Timeout { .. }), "{err}");
}

fn daemon_pods(store: &Store, node: &str) -> Vec<Arc<Value>> {
    pods_on(store, node)
        .into_iter()
        .filter(|p| meta::controller_ref(p).and_then(|r| r["kind"].as_str()) == Some("DaemonSet"))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reboot_through_the_host_cycles_the_node() {
    let (scenario, cluster) = start(4, 21, Faults::none()).await;
    let store = cluster.store().clone();
    let name = scenario.worker_names()[0].clone();
    let host = cluster.host(&name).unwrap().clone();
    let agent_host: Arc<dyn Host> = Arc::new(host.clone());
    let before = node(&store, &name);
    let old_boot = meta::str_at(&before, "/status/nodeInfo/bootID").to_string();
    assert_eq!(old_boot, agent_host.boot_id().unwrap());
    assert_eq!(daemon_pods(&store, &name).len(), scenario.daemonsets.len());

    // The agent's view: a kernel update, applied, asks for a reboot.
    let packages = agent_host.packages().unwrap();
    assert!(
        packages
            .upgradable()
            .unwrap()
            .iter()
            .any(|p| p.name == "linux-image-amd64")
    );
    packages
        .upgrade(&UpgradeScope::SecurityOnly.into())
        .unwrap();
    drop(packages);
    assert!(
        agent_host
            .exists(Path::new("/var/run/reboot-required"))
            .unwrap()
    );
    agent_host
        .write_file_atomic(
            Path::new("/var/lib/rota/state.json"),
            b"{\"op\":\"reboot\"}",
        )
        .unwrap();

    let uids = |store: &Store| {
        let mut uids: Vec<String> = pods_on(store, &name)
            .iter()
            .map(|p| meta::uid(p).to_string())
            .collect();
        uids.sort();
        uids
    };
    let pods_before = uids(&store);
    let ds_before: Vec<String> = daemon_pods(&store, &name)
        .iter()
        .map(|p| meta::uid(p).to_string())
        .collect();
    let mut power = host.power();
    agent_host.reboot(&RebootMethod::Systemctl).unwrap();
    tokio::time::timeout(SETTLE, power.wait_for(|p| !p.is_up()))
        .await
        .unwrap()
        .unwrap();
    // Nothing is written at power-off: the node and its DaemonSet pods still look Ready.
    assert!(meta::node_ready(&node(&store, &name)));
    assert!(
        daemon_pods(&store, &name)
            .iter()
            .all(|p| meta::pod_ready(p))
    );
    cluster
        .wait_for("the node to turn Unknown, tainted, its pods kept", SETTLE, |store| {
            let n = node(store, &name);
            let (status, reason, _) = ready_condition(&n);
            let unreachable = n["spec"]["taints"].as_array().is_some_and(|ts| {
                ts.iter().any(|t| {
                    t["key"] == "node.kubernetes.io/unreachable"
                        && t["effect"] == "NoExecute"
                        && t["timeAdded"].is_string()
                })
            });
            let daemons_unready = daemon_pods(store, &name).iter().all(|p| !meta::pod_ready(p));
            if status == "Unknown" && reason == "NodeStatusUnknown" && unreachable && daemons_unready
            {
                Ok(())
            } else {
                Err(format!(
                    "Ready={status} ({reason}), unreachable taint: {unreachable}, daemon pods not Ready: {daemons_unready}"
                ))
            }
        })
        .await
        .unwrap();
    assert_eq!(uids(&store), pods_before, "a reboot deletes no pod");

    let new_boot = cluster.wait_node_ready(&name, SETTLE).await.unwrap();
    assert_ne!(new_boot, old_boot);
    assert_eq!(new_boot, agent_host.boot_id().unwrap());
    assert_eq!(
        host.power_state(),
        PowerState::Up {
            boot_id: new_boot.clone()
        }
    );
    let after = node(&store, &name);
    assert_eq!(
        after["status"]["nodeInfo"]["kernelVersion"],
        KERNEL_UPDATE.0
    );
    assert_eq!(agent_host.kernel_release().unwrap(), KERNEL_UPDATE.0);
    assert!(
        !agent_host
            .exists(Path::new("/var/run/reboot-required"))
            .unwrap()
    );
    assert_eq!(
        agent_host
            .read_file(Path::new("/var/lib/rota/state.json"))
            .unwrap(),
        b"{\"op\":\"reboot\"}"
    );

    cluster
        .wait_until("the DaemonSet pods to be Ready again", SETTLE, |store| {
            let pods = daemon_pods(store, &name);
            pods.len() == scenario.daemonsets.len() && pods.iter().all(|p| meta::pod_ready(p))
        })
        .await
        .unwrap();
    cluster.wait_settled(SETTLE).await.unwrap();
    // The same pods, restarted in place: one more restart, a new container start.
    for pod in daemon_pods(&store, &name) {
        assert!(ds_before.contains(&meta::uid(&pod).to_string()));
        assert_eq!(pod["status"]["containerStatuses"][0]["restartCount"], 1);
    }
    assert_eq!(uids(&store), pods_before);
    let taints = node(&store, &name)["spec"]["taints"].clone();
    assert!(!taints.to_string().contains("unreachable"), "{taints}");
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kubelet_restart_after_an_upgrade_reports_the_new_version() {
    let (scenario, cluster) = start(4, 4, Faults::none()).await;
    let store = cluster.store().clone();
    // The first node always has the kubelet patch pending.
    let name = scenario.nodes[0].name.clone();
    let host = cluster.host(&name).unwrap().clone();
    assert_eq!(
        node(&store, &name)["status"]["nodeInfo"]["kubeletVersion"],
        "v1.33.0"
    );
    let pods_before: Vec<String> = pods_on(&store, &name)
        .iter()
        .map(|p| meta::uid(p).to_string())
        .collect();

    let pins: Vec<PackagePin> = ["kubelet", "kubeadm", "kubectl"]
        .into_iter()
        .map(|n| PackagePin {
            name: n.into(),
            version: KUBELET_PATCH.into(),
        })
        .collect();
    host.packages()
        .unwrap()
        .install_versions(&pins, InstallPurpose::Kubernetes)
        .unwrap();
    // Installing alone changes nothing the node reports.
    assert_eq!(
        node(&store, &name)["status"]["nodeInfo"]["kubeletVersion"],
        "v1.33.0"
    );
    host.restart_unit("kubelet").unwrap();
    cluster
        .wait_for("the node to report v1.33.1 and be Ready", SETTLE, |store| {
            let n = node(store, &name);
            let version = meta::str_at(&n, "/status/nodeInfo/kubeletVersion").to_string();
            if version == "v1.33.1" && meta::node_ready(&n) {
                Ok(())
            } else {
                Err(format!("{version}, ready={}", meta::node_ready(&n)))
            }
        })
        .await
        .unwrap();
    let pods_after: Vec<String> = pods_on(&store, &name)
        .iter()
        .map(|p| meta::uid(p).to_string())
        .collect();
    assert_eq!(pods_before, pods_after, "a kubelet restart keeps the pods");
    assert!(
        host.memory()
            .events()
            .contains(&"restart kubelet".to_string())
    );
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_that_never_returns_stays_down_until_powered_on() {
    let scenario = Scenario::generate(4, 9);
    let victim = scenario.worker_names()[1].clone();
    let (_, cluster) = start(4, 9, Faults::none().with_never_return(&victim)).await;
    let host = cluster.host(&victim).unwrap().clone();
    let old_boot = host.boot_id().unwrap();
    host.reboot(&RebootMethod::Systemctl).unwrap();
    cluster
        .wait_until("the node to go down", SETTLE, |store| {
            !meta::node_ready(&node(store, &victim))
        })
        .await
        .unwrap();
    let reboot = cluster.timings().reboot;
    // Several reboot durations pass without the node coming back.
    let err = cluster
        .wait_node_ready(&victim, reboot * 4)
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Timeout { .. }), "{err}");
    assert_eq!(host.power_state(), PowerState::Down);
    // The taint manager deletes what does not tolerate the unreachable taint for ever (300 s
    // of tolerationSeconds, scaled); with no kubelet to stop them they stay Terminating.
    // DaemonSet pods stay.
    let evicted = cluster
        .wait_for(
            "the taint manager to evict the workloads",
            SETTLE,
            |store| {
                let pods = pods_on(store, &victim);
                let (daemons, others): (Vec<_>, Vec<_>) = pods.iter().partition(|p| {
                    meta::controller_ref(p).and_then(|r| r["kind"].as_str()) == Some("DaemonSet")
                });
                let by_taint = |p: &Value| {
                    meta::is_terminating(p)
                        && p["status"]["conditions"].as_array().is_some_and(|cs| {
                            cs.iter().any(|c| {
                                c["type"] == "DisruptionTarget"
                                    && c["reason"] == "DeletionByTaintManager"
                            })
                        })
                };
                if daemons.iter().any(|p| meta::is_terminating(p)) {
                    return Err("a DaemonSet pod is being deleted".to_string());
                }
                let waiting = others.iter().filter(|p| !by_taint(p)).count();
                if waiting == 0 {
                    Ok(others.len())
                } else {
                    Err(format!(
                        "{waiting} of {} pods not evicted yet",
                        others.len()
                    ))
                }
            },
        )
        .await
        .unwrap();
    assert!(evicted > 0);

    cluster.power_on(&victim).unwrap();
    let boot = cluster.wait_node_ready(&victim, SETTLE).await.unwrap();
    assert_ne!(boot, old_boot);
    // Back up, the kubelet finishes off the evicted pods.
    cluster.wait_settled(SETTLE).await.unwrap();
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kubelet_that_fails_after_an_upgrade_stays_not_ready() {
    let scenario = Scenario::generate(4, 4);
    let name = scenario.nodes[0].name.clone();
    let (_, cluster) = start(4, 4, Faults::none()).await;
    // Faults can be switched on while the cluster runs.
    cluster.set_faults(Faults::none().with_kubelet_failure(&name));
    let host = cluster.host(&name).unwrap().clone();
    // A restart without an upgrade is harmless.
    host.restart_unit("kubelet").unwrap();
    cluster.wait_node_ready(&name, SETTLE).await.unwrap();

    host.packages()
        .unwrap()
        .install_versions(
            &[PackagePin {
                name: "kubelet".into(),
                version: KUBELET_PATCH.into(),
            }],
            InstallPurpose::Kubernetes,
        )
        .unwrap();
    host.restart_unit("kubelet").unwrap();
    let message = cluster
        .wait_for("the kubelet to fail", SETTLE, |store| {
            let n = node(store, &name);
            let (status, _, message) = ready_condition(&n);
            let version = meta::str_at(&n, "/status/nodeInfo/kubeletVersion").to_string();
            if status == "False" && version == "v1.33.1" && message.contains("PLEG") {
                Ok(message)
            } else {
                Err(format!("Ready={status} {version}: {message}"))
            }
        })
        .await
        .unwrap();
    assert!(message.contains("PLEG is not healthy"));
    stays_not_ready(&cluster, &name).await;
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kubelet_that_fails_after_a_reboot_stays_not_ready_with_a_new_boot_id() {
    let scenario = Scenario::generate(4, 6);
    let name = scenario.worker_names()[0].clone();
    let (_, cluster) = start(
        4,
        6,
        Faults::none().with_kubelet_failure_after_reboot(&name),
    )
    .await;
    let host = cluster.host(&name).unwrap().clone();
    // Before any reboot, a kubelet restart is harmless.
    host.restart_unit("kubelet").unwrap();
    cluster.wait_node_ready(&name, SETTLE).await.unwrap();
    let old_boot = host.boot_id().unwrap();

    host.reboot(&RebootMethod::Systemctl).unwrap();
    let boot = cluster
        .wait_for("the node back with a failing kubelet", SETTLE, |store| {
            let n = node(store, &name);
            let (status, _, message) = ready_condition(&n);
            let boot = meta::str_at(&n, "/status/nodeInfo/bootID").to_string();
            if boot != old_boot && status == "False" && message.contains("PLEG") {
                Ok(boot)
            } else {
                Err(format!("boot {boot}, Ready={status}: {message}"))
            }
        })
        .await
        .unwrap();
    assert_eq!(host.power_state(), PowerState::Up { boot_id: boot });
    // It stays NotReady, through a kubelet restart too.
    host.restart_unit("kubelet").unwrap();
    stays_not_ready(&cluster, &name).await;
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_removed_node_takes_its_pods_with_it() {
    let (scenario, cluster) = start(4, 13, Faults::none()).await;
    let name = scenario.worker_names()[2].clone();
    cluster.remove_node(&name).unwrap();
    cluster
        .wait_until("the node and its pods to be gone", SETTLE, |store| {
            store
                .get(&ResourceKey::new(GroupResource::core("nodes"), None, &name))
                .is_err()
                && pods_on(store, &name).is_empty()
        })
        .await
        .unwrap();
    assert_eq!(cluster.host(&name).unwrap().power_state(), PowerState::Down);
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubelets_heartbeat_through_their_lease_and_node_status() {
    let scenario = Scenario::generate(2, 3);
    let timings = Timings {
        heartbeat: Duration::from_millis(100),
        ..Timings::default()
    };
    let cluster = Cluster::start(Store::new(), &scenario, timings, Faults::none()).unwrap();
    let name = scenario.nodes[1].name.clone();
    let lease_key = ResourceKey::new(
        GroupResource::new("coordination.k8s.io", "leases"),
        Some("kube-node-lease"),
        &name,
    );
    let lease = cluster.store().get(&lease_key).unwrap();
    assert_eq!(lease["spec"]["holderIdentity"], name.as_str());
    let first_renew = lease["spec"]["renewTime"].clone();
    let first_beat =
        node(cluster.store(), &name)["status"]["conditions"][3]["lastHeartbeatTime"].clone();
    cluster
        .wait_until(
            "the lease to be renewed and the node to heartbeat",
            SETTLE,
            |store| {
                let renewed = store.get(&lease_key).unwrap()["spec"]["renewTime"] != first_renew;
                // Node times have second precision.
                let beat =
                    node(store, &name)["status"]["conditions"][3]["lastHeartbeatTime"].clone();
                renewed && beat != first_beat
            },
        )
        .await
        .unwrap();
    cluster.shutdown().await;
}
