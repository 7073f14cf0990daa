//! A rollout of rota as shipped on simulated nodes of the real control plane, for the
//! `real_rollout` and `real_faults` suites: `deploy/` applied with the built kubectl, the
//! `rota-coordinator` binary under the ServiceAccount `deploy/` gives it, the demo scenario's
//! nodes as real API clients (`system:node:<name>`) with its workloads and budgets run by the
//! real scheduler and controllers, the independent monitor watching, and rota's agent on each
//! node started for the pod the real DaemonSet controller made, with a token bound to that pod
//! that the node requested.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{Node, Pod};
use kube::api::{ApiResource, DynamicObject, GroupVersionKind, ListParams, PostParams};
use kube::{Api, ResourceExt};
use rota_core::policy::MaintenancePolicy;
use rota_monitor::{Monitor, MonitorConfig, Verdict};
use rota_sim::cluster::{Faults, RemoteNodes, Scenario, Timings};
use rota_sim::demo::{
    AgentOptions, POLICY_NAME, RemoteAgents, demo_policy, remove_blocked_workload,
};
use serde_json::Value;

use crate::control_plane::{Binaries, ControlPlane, NODE_MONITOR_GRACE_PERIOD, eventually};
use crate::helm::Helm;
use crate::kubectl::Kubectl;
use crate::shipped::{Coordinator, apply_deploy, kubeconfig_as, readyz};

/// The slot mirror on a Node.
pub const SLOT_ANNOTATION: &str = "rota.dev/slot";

/// Create `objects` (each with its `apiVersion` and `kind`) as the administrator, retrying for
/// a while: a new namespace refuses pods until its ServiceAccount exists.
pub async fn create_all(admin: &kube::Client, objects: &[Value]) {
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

/// Why `node` is not done yet, if it is not: rebooted by rota, Ready, uncordoned, no slot.
pub fn not_done(node: &Node, reboots: &BTreeMap<String, u32>) -> Option<String> {
    let name = node.name_any();
    let is_ready = node
        .status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"));
    if reboots.get(&name).copied().unwrap_or(0) == 0 {
        Some(format!("{name}: not rebooted"))
    } else if !is_ready {
        Some(format!("{name}: not Ready"))
    } else if node.spec.as_ref().and_then(|s| s.unschedulable) == Some(true) {
        Some(format!("{name}: cordoned"))
    } else if node.annotations().contains_key(SLOT_ANNOTATION) {
        Some(format!("{name}: holds a slot"))
    } else {
        None
    }
}

/// How rota is installed.
#[derive(Clone, Debug)]
pub enum Install {
    /// `kubectl apply -k` of `deploy/crd` and `deploy/base`.
    Kustomize,
    /// `helm install rota deploy/helm/rota --create-namespace` with these values (YAML).
    Helm(String),
}

/// Everything of one rollout on the real control plane.
pub struct RealRollout {
    /// The control plane.
    pub cp: ControlPlane,
    /// A client as the administrator.
    pub admin: kube::Client,
    /// The demo scenario the cluster was made from.
    pub scenario: Scenario,
    /// The simulated nodes.
    pub nodes: RemoteNodes,
    /// The independent safety monitor.
    pub monitor: Monitor,
    /// The shipped coordinator binary.
    pub coordinator: Coordinator,
    node_clients: BTreeMap<String, kube::Client>,
}

impl RealRollout {
    /// The cluster with `nodes` nodes of seed `seed`'s scenario (with its workload whose budget
    /// allows no disruption when `keep_blocked`), its pods running, the monitor watching, the
    /// coordinator leading; `None` when the control plane is not built (outside CI: skipped).
    /// Pods' own seconds (grace periods, preStop sleeps, probe delays) run ten times faster on
    /// the simulated side; the real controllers' do not.
    pub async fn start(
        nodes: usize,
        seed: u64,
        keep_blocked: bool,
        install: Install,
    ) -> Option<RealRollout> {
        let binaries = Binaries::for_test()?;
        crate::e2e::init_logs();
        let cp = ControlPlane::start(binaries).await.unwrap();
        let admin = cp.admin_client().await.unwrap();
        match install {
            Install::Kustomize => {
                let kubeconfig = std::fs::read_to_string(cp.admin_kubeconfig()).unwrap();
                apply_deploy(&Kubectl::new(&kubeconfig)).await;
            }
            Install::Helm(values) => {
                let helm = Helm::for_test()?;
                let kubeconfig = cp.admin_kubeconfig().display().to_string();
                let args = [
                    "install",
                    "rota",
                    "--create-namespace",
                    "--kubeconfig",
                    &kubeconfig,
                ];
                let installed = helm.run(&args, &values);
                assert!(installed.is_ok(), "helm install: {installed:?}");
            }
        }
        let mut scenario = Scenario::generate(nodes, seed);
        if !keep_blocked {
            remove_blocked_workload(&mut scenario);
        }
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
        let sim = RemoteNodes::start(identities, &admin, timings, Faults::default())
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
        let pods: Api<Pod> = Api::all(admin.clone());
        eventually("the scenario's pods running and ready", || async {
            let budgets = monitor.verdict().budgets;
            let list = pods.list(&ListParams::default()).await.ok()?;
            let ready = list
                .items
                .iter()
                .filter(|p| {
                    p.status
                        .as_ref()
                        .and_then(|s| s.conditions.as_ref())
                        .is_some_and(|cs| {
                            cs.iter().any(|c| c.type_ == "Ready" && c.status == "True")
                        })
                })
                .count();
            (ready >= expected_pods && budgets.values().all(|b| b.desired.is_some())).then_some(())
        })
        .await;
        let kubeconfig = kubeconfig_as(&cp, &admin, "rota-coordinator").await;
        let mut coordinator = Coordinator::start(&cp, &kubeconfig, "rota-coordinator-0");
        let http = coordinator.http;
        crate::shipped::eventually(&mut coordinator, "/readyz 200", || async move {
            (readyz(http).await == Some(200)).then_some(())
        })
        .await;
        Some(RealRollout {
            cp,
            admin,
            scenario,
            nodes: sim,
            monitor,
            coordinator,
            node_clients,
        })
    }

    /// Create the demo policy (`maxUnavailable`) and start the agents: the rollout begins.
    pub async fn begin(&self, max_unavailable: u32) -> RemoteAgents {
        let policies: Api<MaintenancePolicy> = Api::all(self.admin.clone());
        let policy = MaintenancePolicy::new(POLICY_NAME, demo_policy(max_unavailable));
        policies
            .create(&PostParams::default(), &policy)
            .await
            .unwrap();
        RemoteAgents::start(
            &self.nodes,
            self.node_clients.clone(),
            self.coordinator.grpc,
            AgentOptions::default(),
        )
        .unwrap()
    }

    /// The Nodes as they are now.
    pub async fn node_objects(&self) -> Vec<Node> {
        let nodes: Api<Node> = Api::all(self.admin.clone());
        nodes.list(&ListParams::default()).await.unwrap().items
    }

    /// Waits until every node but `except` is done ([`not_done`]), failing with the pending
    /// ones and the coordinator's log after `deadline`; returns how long it took.
    pub async fn wait_done(&self, except: &BTreeSet<String>, deadline: Duration) -> Duration {
        let started = Instant::now();
        loop {
            let reboots = self.monitor.verdict().reboots;
            let pending: Vec<String> = self
                .node_objects()
                .await
                .iter()
                .filter(|n| !except.contains(&n.name_any()))
                .filter_map(|n| not_done(n, &reboots))
                .collect();
            if pending.is_empty() {
                return started.elapsed();
            }
            assert!(
                started.elapsed() < deadline,
                "not done after {deadline:?}: {pending:?}\n{}",
                self.coordinator.log()
            );
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    }
}

/// The monitor's verdict holds: no PDB violation, the monitor never lost track, at most
/// `max_unavailable` nodes and one control-plane node unavailable at once (the timeline of
/// the nodes at the peak in the message when not).
pub fn assert_safe(verdict: &Verdict, max_unavailable: usize) {
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
        peak.count <= max_unavailable,
        "{}\n{}",
        verdict.render(),
        around_peak.join("\n")
    );
    assert!(
        verdict.max_unavailable.control_plane.count <= 1,
        "{}",
        verdict.render()
    );
}

/// A rollout that finished every one of `nodes` nodes: the monitor saw each reboot exactly
/// once, and each node's agent acted under exactly one fencing token of its own.
pub fn assert_each_node_maintained_once(verdict: &Verdict, agents: &RemoteAgents, nodes: usize) {
    assert!(
        verdict.reboots.values().all(|&r| r == 1) && verdict.reboots.len() == nodes,
        "every node maintained once: {:?}",
        verdict.reboots
    );
    assert_eq!(assert_one_token_per_node(agents).len(), nodes);
}

/// No fencing token acted on two nodes, and no node acted under two tokens; returns the nodes
/// that acted.
pub fn assert_one_token_per_node(agents: &RemoteAgents) -> BTreeSet<String> {
    let mut per_node: BTreeMap<String, BTreeSet<u64>> = BTreeMap::new();
    for (token, on) in agents.host_tokens() {
        assert_eq!(on.len(), 1, "token {token} acted on {on:?}");
        for node in on {
            per_node.entry(node).or_default().insert(token);
        }
    }
    assert!(per_node.values().all(|t| t.len() == 1), "{per_node:?}");
    per_node.into_keys().collect()
}

/// The coordinator's log says it was refused no call.
pub fn assert_never_refused(coordinator: &Coordinator) {
    let log = coordinator.log();
    assert!(
        !log.to_lowercase().contains("forbidden"),
        "the shipped coordinator was refused a call:\n{log}"
    );
}
