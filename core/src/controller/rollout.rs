//! A pass's decisions about the pools' Kubernetes upgrade rollouts: each pool's phase
//! ([`crate::upgrade::advance`]), the `KubernetesUpgrade` requests to queue for its nodes, and
//! the requests to withdraw because the target moved. Pure.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::Pod;
use kube_core::ResourceExt;

use crate::cluster::ClusterState;
use crate::model::{NodeName, Operation, Origin};
use crate::policy::NamespacedName;
use crate::scheduler::Snapshot;
use crate::slots::{Holding, NodeEntry};
use crate::upgrade::{self, ClusterHealth, ClusterVersions, Findings, Phase, RolloutState};

use super::pools::PolicyBook;
use super::snapshot::{KUBE_SYSTEM, finished};
use super::verify::pod_ready;

/// One pool's rollout, decided.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RolloutDecision {
    /// The pool.
    pub pool: String,
    /// Its rollout now.
    pub state: RolloutState,
    /// Requests to queue (origin [`Origin::Rollout`]).
    pub requests: Vec<(NodeName, Operation)>,
}

/// The rollouts of every pool with a target, and the rollout requests of nodes no rollout
/// wants any more (to withdraw).
///
/// Only nodes whose agent has reported (`reported`) are asked: an agent performs the upgrade,
/// and until it reported, its etcd member (and so the snapshot to wait for) is unknown.
pub fn decide(
    snapshot: &Snapshot,
    book: &PolicyBook,
    cache: &ClusterState,
    entries: &BTreeMap<NodeName, NodeEntry>,
    reported: &BTreeMap<NodeName, crate::model::EtcdFacts>,
    api_not_ready: Option<&str>,
) -> (Vec<RolloutDecision>, Vec<NodeName>) {
    let versions = ClusterVersions::of(&snapshot.nodes, snapshot.api_server_version);
    let mut health: Option<ClusterHealth> = None;
    let mut health = || {
        health
            .get_or_insert_with(|| cluster_health(cache, api_not_ready))
            .clone()
    };
    let mut decisions = Vec::new();
    let mut wanted: std::collections::HashSet<NodeName> = std::collections::HashSet::new();
    for pool in &snapshot.pools {
        let Some(target) = pool.policy.upgrade.kubernetes_version else {
            continue;
        };
        let previous = book.rollout(&pool.name);
        let mut found = Findings::default();
        let plan = upgrade::plan(&pool.name, target, &snapshot.nodes, &versions);
        let rollout = match plan {
            Ok(rollout) => rollout,
            Err(refusals) => {
                found.refusals = refusals.iter().map(ToString::to_string).collect();
                upgrade::Rollout::default()
            }
        };
        found.control_plane_behind = rollout.steps.iter().filter(|s| s.control_plane).count();
        found.workers_behind = rollout.steps.len() - found.control_plane_behind;
        let phase_before = upgrade::phase_before(previous.as_ref(), target);
        if phase_before.runs_preflight() {
            found.preflight = upgrade::preflight(&snapshot.nodes, &versions, &health());
        }
        // Verified stays verified while no node falls behind: the checks scan kube-system's
        // pods, which is not worth doing at every pass once the rollout is over.
        if rollout.steps.is_empty() && found.refusals.is_empty() && phase_before != Phase::Verified
        {
            let members: Vec<&crate::scheduler::NodeState> = snapshot
                .nodes
                .iter()
                .filter(|n| n.pools.len() == 1 && n.pools[0] == pool.name)
                .filter(|n| crate::fleetlock::host_of_key(&n.name).is_none())
                .collect();
            found.verification = upgrade::verify(&members, target, &health());
        }
        let state = upgrade::advance(previous.as_ref(), target, &found);
        let mut requests = Vec::new();
        if state.phase.requests() {
            for step in rollout
                .steps
                .iter()
                .filter(|s| reported.contains_key(&s.node))
            {
                wanted.insert(step.node.clone());
                let queue = match entries.get(&step.node).map(|e| &e.holding) {
                    Some(Holding::Held(_)) => continue,
                    Some(Holding::Queued(q)) => Some(&q.request),
                    Some(Holding::Idle) | None => None,
                };
                let already = queue.is_some_and(|r| {
                    r.origin == Origin::Manual
                        || (r.origin == Origin::Rollout && r.operation == step.operation)
                });
                if !already {
                    requests.push((step.node.clone(), step.operation.clone()));
                }
            }
        }
        decisions.push(RolloutDecision {
            pool: pool.name.clone(),
            state,
            requests,
        });
    }
    let withdraw = entries
        .iter()
        .filter(|(node, entry)| {
            matches!(&entry.holding, Holding::Queued(q) if q.request.origin == Origin::Rollout)
                && !wanted.contains(node.as_str())
        })
        .map(|(node, _)| node.clone())
        .collect();
    (decisions, withdraw)
}

/// What the pre-flight and the verification read from the cache: `kube-system` pods in
/// `CrashLoopBackOff` or not Ready, and the API server's `/readyz`.
fn cluster_health(cache: &ClusterState, api_not_ready: Option<&str>) -> ClusterHealth {
    let mut health = ClusterHealth {
        api_server_not_ready: api_not_ready.map(str::to_owned),
        ..ClusterHealth::default()
    };
    for pod in cache.pods_in(KUBE_SYSTEM) {
        let key = NamespacedName::new(KUBE_SYSTEM, pod.name_any());
        if crash_looping(pod) {
            health.crash_looping.push(key.clone());
        }
        if !finished(pod) && !pod_ready(pod) {
            health.not_ready.push(key);
        }
    }
    health.crash_looping.sort_unstable();
    health.not_ready.sort_unstable();
    health
}

fn crash_looping(pod: &Pod) -> bool {
    pod.status
        .iter()
        .flat_map(|s| {
            s.container_statuses
                .iter()
                .flatten()
                .chain(s.init_container_statuses.iter().flatten())
        })
        .filter_map(|c| c.state.as_ref()?.waiting.as_ref()?.reason.as_deref())
        .any(|reason| reason == "CrashLoopBackOff")
}

/// One node's line of a rollout plan (`rotactl plan`).
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PlanRow {
    /// The node.
    pub node: NodeName,
    /// Whether it runs the control plane.
    pub control_plane: bool,
    /// Its kubelet now.
    pub from: Option<String>,
    /// The version of its next step (`1.31` resolves to the newest 1.31 patch on the node), or
    /// empty when it is at the target.
    pub to: String,
    /// `apply`, `node`, or empty.
    pub kubeadm: String,
    /// Whether an etcd snapshot of its stacked member must be fresh before it is admitted.
    pub snapshot: bool,
    /// Where it is: `at target`, `in maintenance`, `next` (admissible now), `waiting`.
    pub state: String,
    /// Why it waits (empty unless `waiting`).
    pub blocked: Vec<String>,
}

/// A pool's rollout plan.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PoolPlan {
    /// The pool.
    pub pool: String,
    /// Its `upgrade.kubernetesVersion`.
    pub target: String,
    /// The rollout's phase as the coordinator last wrote it, with its message.
    pub phase: Option<String>,
    /// Why the target is refused (a downgrade), if it is.
    pub refusals: Vec<String>,
    /// Every node of the pool, in the order the rollout takes them.
    pub rows: Vec<PlanRow>,
}

/// What each pool's rollout would do, and in which order, without changing anything: every
/// node's next step and what blocks it now, as the scheduler sees it (the etcd snapshots the
/// agents reported are the coordinator's alone; a step that needs one says so).
pub fn preview(
    cache: &ClusterState,
    book: &PolicyBook,
    entries: &BTreeMap<NodeName, NodeEntry>,
    blocked_timeout: std::time::Duration,
    now: jiff::Timestamp,
) -> Vec<PoolPlan> {
    let pools = book.pools();
    let drain_specs: std::collections::HashMap<String, crate::drain::DrainSpec> = pools
        .iter()
        .map(|p| {
            (
                p.name.clone(),
                super::snapshot::drain_spec(book.in_force(&p.name), blocked_timeout),
            )
        })
        .collect();
    let slots: Vec<crate::model::Slot> = entries
        .values()
        .filter_map(|e| match &e.holding {
            Holding::Held(h) => Some(h.slot.clone()),
            _ => None,
        })
        .collect();
    let base = |queue: Vec<crate::model::SlotRequest>| {
        super::snapshot::build(super::snapshot::Inputs {
            cache,
            pools: &pools,
            drain_specs: &drain_specs,
            queue,
            slots: slots.clone(),
            etcd: &BTreeMap::new(),
            now,
        })
    };
    let snapshot = base(Vec::new());
    let versions = ClusterVersions::of(&snapshot.nodes, snapshot.api_server_version);
    let mut plans = Vec::new();
    for pool in &pools {
        let Some(target) = pool.policy.upgrade.kubernetes_version else {
            continue;
        };
        let phase = book
            .rollout(&pool.name)
            .filter(|r| r.target == target)
            .map(|r| format!("{}: {}", r.phase, r.message));
        let (rollout, refusals) =
            match upgrade::plan(&pool.name, target, &snapshot.nodes, &versions) {
                Ok(rollout) => (rollout, Vec::new()),
                Err(refusals) => (
                    upgrade::Rollout::default(),
                    refusals.iter().map(ToString::to_string).collect(),
                ),
            };
        let queue = rollout
            .steps
            .iter()
            .map(|step| crate::model::SlotRequest {
                node: step.node.clone(),
                operation: step.operation.clone(),
                origin: Origin::Rollout,
                requested_at: now,
                not_before: None,
            })
            .collect();
        let schedule = crate::scheduler::schedule(&base(queue), now);
        let node = |name: &str| snapshot.nodes.iter().find(|n| n.name == name);
        let mut rows = Vec::new();
        for step in &rollout.steps {
            let stacked = node(&step.node).is_some_and(crate::scheduler::NodeState::etcd_member);
            let held = matches!(
                entries.get(&step.node).map(|e| &e.holding),
                Some(Holding::Held(_))
            );
            // The agents' snapshots are the coordinator's to know: the plan says a snapshot is
            // needed (`snapshot`), not that one is missing.
            let blocked: Vec<String> = if held {
                Vec::new()
            } else {
                schedule
                    .waiting
                    .get(&step.node)
                    .iter()
                    .flat_map(|w| &w.reasons)
                    .filter(|r| {
                        !matches!(r, crate::scheduler::WaitReason::EtcdSnapshotNeeded { .. })
                    })
                    .map(ToString::to_string)
                    .collect()
            };
            let state = if held {
                "in maintenance"
            } else if blocked.is_empty() {
                "next"
            } else {
                "waiting"
            };
            rows.push(PlanRow {
                node: step.node.clone(),
                control_plane: step.control_plane,
                from: Some(step.from.to_string()),
                to: step.to().to_owned(),
                kubeadm: if step.applies() { "apply" } else { "node" }.to_owned(),
                snapshot: stacked && pool.policy.etcd.covers(&step.operation),
                state: state.to_owned(),
                blocked,
            });
        }
        for name in &rollout.at_target {
            rows.push(PlanRow {
                node: name.clone(),
                control_plane: node(name).is_some_and(|n| n.control_plane),
                from: Some(target.to_string()),
                to: String::new(),
                kubeadm: String::new(),
                snapshot: false,
                state: "at target".to_owned(),
                blocked: Vec::new(),
            });
        }
        for name in &rollout.unknown {
            rows.push(PlanRow {
                node: name.clone(),
                control_plane: node(name).is_some_and(|n| n.control_plane),
                from: None,
                to: String::new(),
                kubeadm: String::new(),
                snapshot: false,
                state: "waiting".to_owned(),
                blocked: vec!["the node reports no kubelet version".to_owned()],
            });
        }
        plans.push(PoolPlan {
            pool: pool.name.clone(),
            target: target.to_string(),
            phase,
            refusals,
            rows,
        });
    }
    plans
}
