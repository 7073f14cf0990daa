//! A whole rollout of rota as shipped on the real control plane, judged by the independent
//! monitor: `deploy/` applied with the built kubectl, the `rota-coordinator` binary under the
//! ServiceAccount `deploy/` gives it, 24 simulated nodes (3 control-plane) as real API clients
//! under the Node authorizer and NodeRestriction, the scenario's workloads and budgets run by
//! the real scheduler, workload controllers and disruption controller, and on every node rota's
//! agent started for the pod the real DaemonSet controller made, with a token bound to that pod
//! that the node requested. Skipped (with a message) when `tests/control-plane/build.sh` has
//! not been run, except under `CI=true`, where it fails.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Node;
use kube::api::{ApiResource, DynamicObject, GroupVersionKind, ListParams, PostParams};
use kube::{Api, ResourceExt};
use rota_core::policy::MaintenancePolicy;
use rota_monitor::{Monitor, MonitorConfig};
use rota_sim::cluster::{Faults, RemoteNodes, Scenario, Timings};
use rota_sim::demo::{
    AgentOptions, POLICY_NAME, RemoteAgents, demo_policy, remove_blocked_workload,
};
use rota_tests::control_plane::{Binaries, ControlPlane, NODE_MONITOR_GRACE_PERIOD, eventually};
use rota_tests::kubectl::Kubectl;
use rota_tests::shipped::{Coordinator, apply_deploy, kubeconfig_as, readyz};
use serde_json::Value;

const NODES: usize = 24;
const MAX_UNAVAILABLE: u32 = 3;
/// How long the whole rollout may take: eight rounds of three nodes, each a drain, a reboot
/// that outlasts the node-monitor grace period, and the health gate.
const ROLLOUT_DEADLINE: Duration = Duration::from_secs(900);
const SLOT_ANNOTATION: &str = "rota.dev/slot";

/// Create `objects` (each with its `apiVersion` and `kind`) as the administrator, retrying for
/// a while: a new namespace refuses pods until its ServiceAccount exists.
async fn create_all(admin: &kube::Client, objects: &[Value]) {
    for object in objects {
        let api_version = object["apiVersion"].as_str().unwrap();
        let (group, version) = api_version.split_once('/').unwrap_or(("", api_version));
        let gvk = GroupVersionKind::gvk(group, version, object["kind"].as_str().unwrap());
        let resource = ApiResource::from_gvk(&gvk);
        let object: DynamicObject = serde_json::from_value(object.clone()).unwrap();
        let api: Api<DynamicObject> = match object.namespace() {
            Some(ns) => Api::namespaced_with(admin.clone(), &ns, &resource),
            None => Api::all_with(admin.clone(), &resource),
        };
        let what = format!("{} {} created", gvk.kind, object.name_any());
        eventually(&what, || async {
            match api.create(&PostParams::default(), &object).await {
                Ok(_) => Some(()),
                Err(kube::Error::Api(status)) if status.code == 409 => Some(()),
                Err(_) => None,
            }
        })
        .await;
    }
}

/// Why `node` is not done yet, if it is not: rebooted once by rota, Ready, uncordoned, no slot.
fn not_done(node: &Node, reboots: &BTreeMap<String, u32>) -> Option<String> {
    let name = node.name_any();
    let ready = node
        .status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"));
    if reboots.get(&name).copied().unwrap_or(0) == 0 {
        Some(format!("{name}: not rebooted"))
    } else if !ready {
        Some(format!("{name}: not Ready"))
    } else if node.spec.as_ref().and_then(|s| s.unschedulable) == Some(true) {
        Some(format!("{name}: cordoned"))
    } else if node.annotations().contains_key(SLOT_ANNOTATION) {
        Some(format!("{name}: holds a slot"))
    } else {
        None
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_shipped_rota_rolls_24_nodes_on_the_real_control_plane() {
    let Some(binaries) = Binaries::for_test() else {
        return;
    };
    rota_tests::e2e::init_logs();
    let cp = ControlPlane::start(binaries).await.unwrap();
    let admin = cp.admin_client().await.unwrap();
    let kubectl = Kubectl::new(&std::fs::read_to_string(cp.admin_kubeconfig()).unwrap());
    apply_deploy(&kubectl).await;

    // The nodes, each as itself; pods' own seconds (grace periods, preStop sleeps, probe
    // delays) run ten times faster on the simulated side, the real controllers' do not.
    let mut scenario = Scenario::generate(NODES, 1);
    remove_blocked_workload(&mut scenario);
    let mut identities = Vec::new();
    let mut node_clients = BTreeMap::new();
    for spec in &scenario.nodes {
        let user = format!("system:node:{}", spec.name);
        let client = cp.client_for(&user, &["system:nodes"]).await.unwrap();
        node_clients.insert(spec.name.clone(), client.clone());
        identities.push((spec.clone(), client));
    }
    let mut timings = Timings::for_real_control_plane(NODE_MONITOR_GRACE_PERIOD);
    timings.kube_second = Duration::from_millis(100);
    let nodes = RemoteNodes::start(identities, &admin, timings, Faults::default())
        .await
        .unwrap();
    for objects in [
        &scenario.namespaces,
        &scenario.daemonsets,
        &scenario.deployments,
        &scenario.statefulsets,
        &scenario.pdbs,
        &scenario.pods,
    ] {
        create_all(&admin, objects).await;
    }
    let monitor = Monitor::start(admin.clone(), MonitorConfig::default())
        .await
        .unwrap();
    let expected_pods = scenario.expected_pod_count();
    eventually("the scenario's pods running and ready", || async {
        let budgets = monitor.verdict().budgets;
        let pods = kube::Api::<k8s_openapi::api::core::v1::Pod>::all(admin.clone())
            .list(&ListParams::default())
            .await
            .ok()?;
        let ready = pods
            .items
            .iter()
            .filter(|p| {
                p.status
                    .as_ref()
                    .and_then(|s| s.conditions.as_ref())
                    .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
            })
            .count();
        (ready >= expected_pods && budgets.values().all(|b| b.desired.is_some())).then_some(())
    })
    .await;

    // rota: the coordinator binary as deploy/'s ServiceAccount, the policy, the agents.
    let kubeconfig = kubeconfig_as(&cp, &admin, "rota-coordinator").await;
    let mut coordinator = Coordinator::start(&cp, &kubeconfig, "rota-coordinator-0");
    let http = coordinator.http;
    rota_tests::shipped::eventually(&mut coordinator, "/readyz 200", || async move {
        (readyz(http).await == Some(200)).then_some(())
    })
    .await;
    let policies: Api<MaintenancePolicy> = Api::all(admin.clone());
    let policy = MaintenancePolicy::new(POLICY_NAME, demo_policy(MAX_UNAVAILABLE));
    policies
        .create(&PostParams::default(), &policy)
        .await
        .unwrap();
    let started = Instant::now();
    let agents = RemoteAgents::start(
        &nodes,
        node_clients,
        coordinator.grpc,
        AgentOptions::default(),
    )
    .unwrap();

    // Until every node is done, as the monitor and the Node objects tell.
    let node_api: Api<Node> = Api::all(admin.clone());
    let deadline = Instant::now() + ROLLOUT_DEADLINE;
    loop {
        let reboots = monitor.verdict().reboots;
        let list = node_api.list(&ListParams::default()).await.unwrap();
        let pending: Vec<String> = list
            .items
            .iter()
            .filter_map(|n| not_done(n, &reboots))
            .collect();
        if pending.is_empty() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "not done after {ROLLOUT_DEADLINE:?}: {pending:?}\n{}",
            coordinator.log()
        );
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    let makespan = started.elapsed();
    let verdict = monitor.stop().await;
    eprintln!(
        "{NODES} nodes done in {:.1}s; most unavailable {} (control plane {}); violations {}",
        makespan.as_secs_f64(),
        verdict.max_unavailable.overall.count,
        verdict.max_unavailable.control_plane.count,
        verdict.violations.len()
    );
    assert!(verdict.violations.is_empty(), "{}", verdict.render());
    assert!(!verdict.lost_track, "{}", verdict.render());
    let peak = &verdict.max_unavailable.overall;
    let around_peak: Vec<String> = verdict
        .timeline
        .iter()
        .filter(|e| peak.nodes.iter().any(|n| e.what.contains(n.as_str())))
        .map(|e| format!("{} {}", e.time, e.what))
        .collect();
    assert!(
        peak.count <= MAX_UNAVAILABLE as usize,
        "{}\n{}",
        verdict.render(),
        around_peak.join("\n")
    );
    assert!(
        verdict.max_unavailable.control_plane.count <= 1,
        "{}",
        verdict.render()
    );
    assert!(
        verdict.reboots.values().all(|&r| r == 1) && verdict.reboots.len() == NODES,
        "every node rebooted once: {:?}",
        verdict.reboots
    );
    // No fencing token acted on two nodes, and no node acted under two tokens.
    let tokens = agents.host_tokens();
    let mut per_node: BTreeMap<String, BTreeSet<u64>> = BTreeMap::new();
    for (token, on) in &tokens {
        assert_eq!(on.len(), 1, "token {token} acted on {on:?}");
        for node in on {
            per_node.entry(node.clone()).or_default().insert(*token);
        }
    }
    assert_eq!(per_node.len(), NODES, "{per_node:?}");
    assert!(per_node.values().all(|t| t.len() == 1), "{per_node:?}");
    let log = coordinator.log();
    assert!(
        !log.to_lowercase().contains("forbidden"),
        "the shipped coordinator was refused a call:\n{log}"
    );
    agents.shutdown().await;
    nodes.shutdown().await;
}
