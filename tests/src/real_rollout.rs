//! A rollout of rota as shipped on simulated nodes of the real control plane, for the
//! `real::rollout` and `real::faults` suites: `deploy/` applied with the built kubectl, the
//! `rota-coordinator` binary under the ServiceAccount `deploy/` gives it, the demo scenario's
//! nodes as real API clients (`system:node:<name>`) with its workloads and budgets run by the
//! real scheduler and controllers, the independent monitor watching, and rota's agent on each
//! node started for the pod the real DaemonSet controller made, with a token bound to that pod
//! that the node requested.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{BTreeMap, BTreeSet};
use std::ops::RangeInclusive;
use std::time::Duration;

use jiff::Timestamp;

use k8s_openapi::api::core::v1::Node;
use kube::Api;
use kube::api::ListParams;
use rota_monitor::{Monitor, MonitorConfig, Verdict};
use rota_sim::cluster::{RemoteNodes, Scenario};
use rota_sim::demo::{AgentOptions, RemoteAgents, demo_policy, remove_blocked_workload};
use rota_sim::real::rollout;

use crate::control_plane::{ControlPlane, NODE_MONITOR_GRACE_PERIOD, binaries_for_test};
use crate::helm::Helm;
use crate::kubectl::Kubectl;
use crate::shipped::{Coordinator, CoordinatorService, apply_deploy, kubeconfig_as, readyz};

pub use rota_sim::real::rollout::{SLOT_ANNOTATION, not_done};

/// How long the set-up steps may take each.
const STEP: Duration = Duration::from_secs(120);

/// How rota is installed.
#[derive(Clone, Debug)]
pub enum Install {
    /// `kubectl apply -k` of `deploy/crd` and `deploy/base`.
    Kustomize,
    /// `helm install rota deploy/helm/rota --create-namespace` with these values (YAML).
    Helm(String),
}

/// What a [`RealRollout`] is made of.
#[derive(Clone, Debug)]
pub struct Setup {
    /// How many nodes (three of them control-plane nodes from six on).
    pub nodes: usize,
    /// The seed of the demo scenario.
    pub seed: u64,
    /// Keep the scenario's workload whose budget allows no disruption.
    pub keep_blocked: bool,
    /// How rota is installed.
    pub install: Install,
    /// The controller-manager's `--node-monitor-grace-period`.
    pub node_monitor_grace: Duration,
    /// How long a simulated reboot lasts; by default half as long again as the grace period,
    /// so that the real node-lifecycle controller marks a rebooting node Unknown.
    pub reboot: Option<Duration>,
    /// Run a second coordinator replica, a standby, as the Deployment in `deploy/` does.
    pub standby: bool,
}

impl Setup {
    /// `nodes` nodes of seed `seed`'s scenario without its blocked workload, installed with
    /// kustomize, under the harness's short node-monitor grace period.
    pub fn new(nodes: usize, seed: u64) -> Setup {
        Setup {
            nodes,
            seed,
            keep_blocked: false,
            install: Install::Kustomize,
            node_monitor_grace: NODE_MONITOR_GRACE_PERIOD,
            reboot: None,
            standby: false,
        }
    }
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
    /// The shipped coordinator binary: the replica that leads first.
    pub coordinator: Coordinator,
    /// The second replica, when the setup asks for one: a standby until the first stops leading.
    pub standby: Option<Coordinator>,
    /// The coordinator's Service, which the agents connect to.
    pub service: CoordinatorService,
    node_clients: BTreeMap<String, kube::Client>,
}

impl RealRollout {
    /// The cluster of `setup`, its pods running, the monitor watching, the coordinator
    /// leading; `None` when the control plane is not built (outside CI: skipped). Pods' own
    /// seconds (grace periods, preStop sleeps, probe delays) run ten times faster on the
    /// simulated side; the real controllers' do not.
    pub async fn start(setup: Setup) -> Option<RealRollout> {
        let Setup {
            nodes,
            seed,
            keep_blocked,
            install,
            node_monitor_grace,
            reboot,
            standby,
        } = setup;
        let binaries = binaries_for_test()?;
        crate::e2e::init_logs();
        let cp = ControlPlane::start_with_grace(binaries, node_monitor_grace)
            .await
            .unwrap();
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
        let mut timings = rollout::node_timings(node_monitor_grace);
        if let Some(reboot) = reboot {
            timings.reboot = reboot;
        }
        let nodes = rollout::start_nodes(&cp, &admin, &scenario, timings)
            .await
            .unwrap();
        rollout::create_workloads(&admin, &scenario, STEP)
            .await
            .unwrap();
        let monitor = Monitor::start(admin.clone(), MonitorConfig::default())
            .await
            .unwrap();
        rollout::wait_workloads_ready(&admin, &monitor, &scenario, STEP)
            .await
            .unwrap();
        let kubeconfig = kubeconfig_as(&cp, &admin, "rota-coordinator").await;
        let mut coordinator = Coordinator::start(&cp, &kubeconfig, "rota-coordinator-0");
        let http = coordinator.http;
        crate::shipped::eventually(&mut coordinator, "/readyz 200", || async move {
            (readyz(http).await == Some(200)).then_some(())
        })
        .await;
        let standby = match standby {
            false => None,
            true => {
                let mut standby = Coordinator::start(&cp, &kubeconfig, "rota-coordinator-1");
                let http = standby.http;
                crate::shipped::eventually(
                    &mut standby,
                    "the standby's /readyz 503",
                    || async move { (readyz(http).await == Some(503)).then_some(()) },
                )
                .await;
                Some(standby)
            }
        };
        let replicas: Vec<&Coordinator> = std::iter::once(&coordinator)
            .chain(standby.as_ref())
            .collect();
        let service = CoordinatorService::start(&replicas).await;
        Some(RealRollout {
            cp,
            admin,
            scenario,
            nodes: nodes.sim,
            monitor,
            coordinator,
            standby,
            service,
            node_clients: nodes.clients,
        })
    }

    /// Create the demo policy (`maxUnavailable`) and start the agents: the rollout begins.
    pub async fn begin(&self, max_unavailable: u32) -> RemoteAgents {
        rollout::create_policy(&self.admin, demo_policy(max_unavailable))
            .await
            .unwrap();
        RemoteAgents::start(
            &self.nodes,
            self.node_clients.clone(),
            self.service.addr(),
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
        match rollout::wait_done(&self.admin, &self.monitor, except, deadline).await {
            Ok(took) => took,
            Err(pending) => panic!(
                "not done after {deadline:?}: {pending:?}\n{}\n{}",
                self.coordinator.log(),
                self.standby
                    .as_ref()
                    .map(Coordinator::log)
                    .unwrap_or_default()
            ),
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
    assert_never_refused_but_during(coordinator, None);
}

/// The coordinator's log says it was refused no call, but in `excused`: just after
/// kube-apiserver restarted, its RBAC authorizer answers 403 to everyone until its caches have
/// filled, whatever the roles say.
pub fn assert_never_refused_but_during(
    coordinator: &Coordinator,
    excused: Option<&RangeInclusive<Timestamp>>,
) {
    let log = coordinator.log();
    let refused: Vec<String> = log
        .lines()
        .map(strip_ansi)
        .filter(|line| line.to_lowercase().contains("forbidden"))
        .filter(|line| {
            let at = line
                .split_whitespace()
                .next()
                .and_then(|t| t.parse::<Timestamp>().ok());
            !matches!((excused, at), (Some(window), Some(at)) if window.contains(&at))
        })
        .collect();
    assert!(
        refused.is_empty(),
        "the shipped coordinator was refused a call:\n{}",
        refused.join("\n")
    );
}

/// `line` without its terminal colour sequences (`ESC [ ... m`).
fn strip_ansi(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for c in chars.by_ref() {
                if c == 'm' {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strips_terminal_colours() {
        let line =
            "\u{1b}[2m2026-12-06T05:40:46.281208Z\u{1b}[0m \u{1b}[33m WARN\u{1b}[0m forbidden";
        let plain = strip_ansi(line);
        assert_eq!(plain, "2026-12-06T05:40:46.281208Z  WARN forbidden");
        let at: Timestamp = plain.split_whitespace().next().unwrap().parse().unwrap();
        assert_eq!(at.to_string(), "2026-12-06T05:40:46.281208Z");
    }
}
