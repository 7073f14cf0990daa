//! The monitor against the emulated cluster (rota-sim's API server over HTTP, its kubelets and
//! controllers), with each kind of violation injected by hand — and the safe versions of the
//! same actions, which must not be flagged. No rota runs here: the "schedulers" are the tests.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::time::Duration;

use k8s_openapi::api::core::v1::{Node, Pod};
use kube::api::{DeleteParams, EvictParams, ListParams, Patch, PatchParams};
use kube::{Api, Client};
use rota_agent::host::{Host, RebootMethod};
use rota_monitor::{Cause, Monitor, MonitorConfig, PoolConfig, Verdict};
use rota_sim::apiserver::{ApiServer, GroupResource, ResourceKey, ServerHandle, Store, meta};
use rota_sim::cluster::{Cluster, ClusterHandle, Faults, Scenario, Timings, pods_on};
use serde_json::json;

const WAIT: Duration = Duration::from_secs(120);
const NS: &str = "guarded";
const APP: &str = "guarded";

struct Env {
    _server: ServerHandle,
    cluster: ClusterHandle,
    client: Client,
    monitor: Monitor,
}

fn init_logs() {
    if std::env::var_os("RUST_LOG").is_some() {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_test_writer()
            .try_init();
    }
}

/// An 8-node emulated cluster (3 control-plane nodes, 5 workers) from the scenario generator,
/// without its never-drainable workload, plus a Deployment `guarded/guarded` of 3 replicas
/// under a budget of `min_available`; the monitor started once it settled.
async fn env(min_available: i32) -> Env {
    env_with(min_available, Timings::default()).await
}

async fn env_with(min_available: i32, timings: Timings) -> Env {
    env_on(Store::new(), min_available, timings, Faults::none()).await
}

async fn env_on(store: Store, min_available: i32, timings: Timings, faults: Faults) -> Env {
    init_logs();
    let server = ApiServer::start(store.clone(), (Ipv4Addr::LOCALHOST, 0).into())
        .await
        .unwrap();
    let mut scenario = Scenario::generate(8, 7);
    scenario
        .deployments
        .retain(|d| d["metadata"]["name"] != "license-server");
    scenario
        .pdbs
        .retain(|p| p["metadata"]["name"] != "license-server");
    scenario.blocked_node = None;
    scenario
        .namespaces
        .push(json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NS}}));
    scenario.deployments.push(json!({
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": APP, "namespace": NS, "labels": {"app": APP}},
        "spec": {
            "replicas": 3,
            "selector": {"matchLabels": {"app": APP}},
            "template": {
                "metadata": {"labels": {"app": APP}},
                "spec": {
                    "terminationGracePeriodSeconds": 1,
                    "containers": [{"name": APP, "image": "registry.local/guarded:1"}],
                },
            },
        },
    }));
    scenario.pdbs.push(json!({
        "apiVersion": "policy/v1",
        "kind": "PodDisruptionBudget",
        "metadata": {"name": APP, "namespace": NS},
        "spec": {"minAvailable": min_available, "selector": {"matchLabels": {"app": APP}}},
    }));
    let mut cluster = Cluster::start(store, &scenario, timings, faults).unwrap();
    cluster.drive_api_faults(server.faults().clone());
    cluster.wait_settled(WAIT).await.unwrap();
    let mut config = kube::Config::new(server.url().parse().unwrap());
    // A 429 must come back to the test, not be retried inside the client.
    config.default_retry = false;
    let client = Client::try_from(config).unwrap();
    let monitor = Monitor::start(
        client.clone(),
        MonitorConfig {
            pools: vec![PoolConfig {
                name: "control-plane".into(),
                selector: serde_json::from_value(json!({
                    "matchExpressions": [{"key": rota_monitor::model::CONTROL_PLANE_LABEL, "operator": "Exists"}],
                }))
                .unwrap(),
            }],
            ..MonitorConfig::default()
        },
    )
    .await
    .unwrap();
    Env {
        _server: server,
        cluster,
        client,
        monitor,
    }
}

impl Env {
    /// The guarded pods by name, with their node.
    async fn guarded(&self) -> BTreeMap<String, String> {
        Api::<Pod>::namespaced(self.client.clone(), NS)
            .list(&ListParams::default().labels(&format!("app={APP}")))
            .await
            .unwrap()
            .items
            .into_iter()
            .filter(|p| p.metadata.deletion_timestamp.is_none())
            .map(|p| {
                (
                    p.metadata.name.unwrap_or_default(),
                    p.spec.and_then(|s| s.node_name).unwrap_or_default(),
                )
            })
            .collect()
    }

    async fn reboot(&self, node: &str) -> String {
        let host = self.cluster.host(node).unwrap();
        let before = host.boot_id().unwrap();
        host.reboot(&RebootMethod::Systemctl).unwrap();
        before
    }

    /// Waits until the monitor shows the guarded budget fully healthy again (every change
    /// up to the recovery judged).
    async fn wait_recovered(&self) -> Verdict {
        self.cluster.wait_settled(WAIT).await.unwrap();
        let budget = format!("{NS}/{APP}");
        self.monitor
            .wait_for("the guarded budget healthy again", WAIT, |v| {
                (v.budgets.get(&budget)?.healthy == 3 && v.unavailable_now.is_empty())
                    .then(|| v.clone())
            })
            .await
            .unwrap()
    }

    async fn cordon(&self, node: &str, on: bool) {
        Api::<Node>::all(self.client.clone())
            .patch(
                node,
                &PatchParams::default(),
                &Patch::Merge(json!({"spec": {"unschedulable": on}})),
            )
            .await
            .unwrap();
    }
}

fn workers(env: &Env) -> Vec<String> {
    env.cluster
        .node_names()
        .into_iter()
        .filter(|n| !n.starts_with("cp-"))
        .collect()
}

/// An over-admitting scheduler: it takes a second guarded pod through an eviction the
/// emulator's gate would have refused (it writes the eviction's condition and deletes the
/// pod itself), and cordons three workers at once. The monitor flags the eviction below the
/// budget and shows the three nodes down at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_over_admitting_scheduler_is_flagged() {
    // Replacements take long enough to start that none is Ready before the second removal.
    let timings = Timings {
        pod_start: Duration::from_secs(3),
        ..Timings::default()
    };
    let env = env_with(2, timings).await;
    let guarded = env.guarded().await;
    let mut names = guarded.keys();
    let (first, second) = (names.next().unwrap().clone(), names.next().unwrap().clone());
    let api = Api::<Pod>::namespaced(env.client.clone(), NS);
    api.evict(&first, &EvictParams::default()).await.unwrap();
    // The budget allows nothing more; the scheduler evicts the second pod anyway, writing the
    // eviction's condition and deleting the pod itself, past the emulator's gate.
    let pod = api.get(&second).await.unwrap();
    let mut conditions =
        serde_json::to_value(pod.status.and_then(|s| s.conditions).unwrap_or_default()).unwrap();
    conditions.as_array_mut().unwrap().push(json!({
        "type": "DisruptionTarget", "status": "True", "reason": "EvictionByEvictionAPI",
        "message": "Eviction API: evicting",
    }));
    api.patch_status(
        &second,
        &PatchParams::default(),
        &Patch::Merge(json!({"status": {"conditions": conditions}})),
    )
    .await
    .unwrap();
    api.delete(&second, &DeleteParams::default()).await.unwrap();

    let workers = workers(&env);
    for node in &workers[..3] {
        env.cordon(node, true).await;
    }
    let verdict = env
        .monitor
        .wait_for("the over-admission flagged", WAIT, |v| {
            (!v.violations.is_empty() && v.max_unavailable.overall.count >= 3).then(|| v.clone())
        })
        .await
        .unwrap();
    let v = &verdict.violations[0];
    assert_eq!(v.pod, format!("{NS}/{second}"), "{}", verdict.render());
    assert_eq!(v.cause, Cause::Eviction);
    assert_eq!((v.healthy, v.desired), (1, 2));
    assert_eq!(v.pdb, format!("{NS}/{APP}"));
    let peak = &verdict.max_unavailable.overall;
    assert_eq!(peak.nodes, workers[..3].to_vec());
    assert_eq!(verdict.max_unavailable.pools["default"].count, 3);
    assert_eq!(verdict.max_unavailable.control_plane.count, 0);
    assert!(verdict.render().contains("VIOLATION"));
    for node in &workers[..3] {
        env.cordon(node, false).await;
    }
    let verdict = env.wait_recovered().await;
    assert_eq!(verdict.violations.len(), 1, "{}", verdict.render());
    env.monitor.stop().await;
}

/// A node rebooted without a drain, with a guarded pod on it and the budget at its limit:
/// a violation by the node going down, and the pod lost to the reboot.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reboot_with_covered_pods_left_on_the_node_is_flagged() {
    let env = env(3).await;
    let guarded = env.guarded().await;
    let (pod, node) = guarded.iter().next().unwrap();
    env.reboot(node).await;
    let verdict = env
        .monitor
        .wait_for("the reboot flagged", WAIT, |v| {
            (!v.violations.is_empty()
                && v.reboots.get(node) == Some(&1)
                && v.pods_lost_to_reboots
                    .iter()
                    .any(|p| p.pod == format!("{NS}/{pod}")))
            .then(|| v.clone())
        })
        .await
        .unwrap();
    let text = verdict.render();
    let v = verdict
        .violations
        .iter()
        .find(|v| v.pod == format!("{NS}/{pod}"))
        .unwrap_or_else(|| panic!("{text}"));
    assert!(matches!(v.cause, Cause::NodeDown | Cause::Reboot), "{text}");
    assert_eq!(v.node.as_deref(), Some(node.as_str()));
    assert!(v.healthy < 3 && v.desired == 3, "{text}");
    // Everything the node ran that is not a DaemonSet's or a static pod's is lost with it.
    let lost: Vec<_> = verdict.pods_lost_on(std::slice::from_ref(node)).collect();
    assert!(
        lost.iter().all(|p| !p.pod.starts_with("kube-system/")),
        "{text}"
    );
    env.wait_recovered().await;
    env.monitor.stop().await;
}

/// A raw DELETE of a guarded pod while the budget allows no disruption.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_raw_delete_at_the_limit_is_flagged() {
    let env = env(3).await;
    let guarded = env.guarded().await;
    let (pod, node) = guarded.iter().next().unwrap();
    Api::<Pod>::namespaced(env.client.clone(), NS)
        .delete(pod, &DeleteParams::default())
        .await
        .unwrap();
    let verdict = env
        .monitor
        .wait_for("the delete flagged", WAIT, |v| {
            (!v.violations.is_empty()).then(|| v.clone())
        })
        .await
        .unwrap();
    let v = &verdict.violations[0];
    assert_eq!(v.cause, Cause::Deletion, "{}", verdict.render());
    assert_eq!(v.pod, format!("{NS}/{pod}"));
    assert_eq!(v.node.as_deref(), Some(node.as_str()));
    assert_eq!((v.healthy, v.desired), (2, 3));
    assert!(verdict.pods_lost_to_reboots.is_empty());
    let verdict = env.wait_recovered().await;
    assert_eq!(verdict.violations.len(), 1, "{}", verdict.render());
    env.monitor.stop().await;
}

/// An eviction the budget allows (down to exactly its desired count), its replacement
/// arriving later: nothing flagged.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_allowed_eviction_is_not_flagged() {
    let env = env(2).await;
    let guarded = env.guarded().await;
    let pod = guarded.keys().next().unwrap();
    Api::<Pod>::namespaced(env.client.clone(), NS)
        .evict(pod, &EvictParams::default())
        .await
        .unwrap();
    let budget = format!("{NS}/{APP}");
    env.monitor
        .wait_for("the eviction seen", WAIT, |v| {
            (v.budgets.get(&budget)?.lowest_healthy == 2).then_some(())
        })
        .await
        .unwrap();
    let verdict = env.wait_recovered().await;
    assert!(verdict.violations.is_empty(), "{}", verdict.render());
    assert!(
        verdict.pods_lost_to_reboots.is_empty(),
        "{}",
        verdict.render()
    );
    assert!(!verdict.lost_track);
    env.monitor.stop().await;
}

/// What a careful operator does: cordon, evict every pod (retrying what a budget refuses for
/// now), wait until they are gone, reboot, uncordon. Nothing flagged; one reboot and one node
/// down at once seen.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cordon_drain_reboot_is_not_flagged() {
    let env = env(2).await;
    let guarded = env.guarded().await;
    let node = guarded.values().next().unwrap().clone();
    env.cordon(&node, true).await;
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let movable: Vec<Pod> = pods_on(env.cluster.store(), &node)
            .iter()
            .map(|p| serde_json::from_value::<Pod>((**p).clone()).unwrap())
            .filter(|p| rota_monitor::facts::pod(p).workload())
            .collect();
        if movable.is_empty() {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "drain of {node} stuck"
        );
        for p in movable
            .iter()
            .filter(|p| p.metadata.deletion_timestamp.is_none())
        {
            let api = Api::<Pod>::namespaced(
                env.client.clone(),
                p.metadata.namespace.as_deref().unwrap(),
            );
            // A 429 (the budget allows nothing right now) is retried after the next change.
            let _ = api
                .evict(p.metadata.name.as_deref().unwrap(), &EvictParams::default())
                .await;
        }
        // Until the node's pods change (or, for a budget that refused, kubectl's 5 s retry).
        let left = movable.len();
        let _ = env
            .cluster
            .wait_until("the drain to progress", Duration::from_secs(5), |store| {
                pods_on(store, &node)
                    .iter()
                    .filter(|p| !meta::is_terminating(p))
                    .count()
                    < left
                    || pods_on(store, &node).is_empty()
            })
            .await;
    }
    let before = env.reboot(&node).await;
    let key = ResourceKey::new(GroupResource::core("nodes"), None, &node);
    env.cluster
        .wait_until("the node back on a new boot", WAIT, |store| {
            store.get(&key).is_ok_and(|n| {
                meta::node_ready(&n) && meta::str_at(&n, "/status/nodeInfo/bootID") != before
            })
        })
        .await
        .unwrap();
    env.cordon(&node, false).await;
    let verdict = env.wait_recovered().await;
    let verdict = env
        .monitor
        .wait_for("the reboot seen", WAIT, |v| {
            (v.reboots.get(&node) == Some(&1)).then(|| v.clone())
        })
        .await
        .unwrap_or(verdict);
    let text = verdict.render();
    assert!(verdict.violations.is_empty(), "{text}");
    assert!(verdict.pods_lost_to_reboots.is_empty(), "{text}");
    assert_eq!(verdict.reboots.get(&node), Some(&1), "{text}");
    assert_eq!(verdict.max_unavailable.overall.count, 1, "{text}");
    assert_eq!(
        verdict.max_unavailable.overall.nodes,
        std::slice::from_ref(&node),
        "{text}"
    );
    assert_eq!(verdict.max_unavailable.control_plane.count, 0, "{text}");
    assert!(!verdict.lost_track, "{text}");
    env.monitor.stop().await;
}

/// Watches dropped every 300 ms on a server that keeps only 20 events of history: the
/// monitor's watches resume or, with their resourceVersion gone (410), re-list — and the
/// raw DELETE is still flagged, once, with nothing else made up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropped_watches_and_re_lists_are_survived() {
    let faults = Faults {
        drop_watches_every: Some(Duration::from_millis(300)),
        ..Faults::none()
    };
    let store = Store::with_config(20, rota_core::clock::system());
    let env = env_on(store, 3, Timings::default(), faults).await;
    // Enough churn that resuming watches find their history gone.
    for node in &workers(&env)[..2] {
        env.cordon(node, true).await;
        env.cordon(node, false).await;
    }
    env.monitor
        .wait_for("a watch restart", WAIT, |v| {
            (v.watch_restarts > 0).then_some(())
        })
        .await
        .unwrap();
    let guarded = env.guarded().await;
    let (pod, _) = guarded.iter().next().unwrap();
    Api::<Pod>::namespaced(env.client.clone(), NS)
        .delete(pod, &DeleteParams::default())
        .await
        .unwrap();
    env.monitor
        .wait_for("the delete flagged", WAIT, |v| {
            (!v.violations.is_empty()).then_some(())
        })
        .await
        .unwrap();
    let verdict = env.wait_recovered().await;
    let text = verdict.render();
    assert_eq!(verdict.violations.len(), 1, "{text}");
    assert_eq!(verdict.violations[0].pod, format!("{NS}/{pod}"), "{text}");
    assert!(verdict.pods_lost_to_reboots.is_empty(), "{text}");
    println!("{text}");
    env.monitor.stop().await;
}
