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
use super::verify::pod_ready;

/// Where `kube-system` pods run.
const KUBE_SYSTEM: &str = "kube-system";

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
pub fn decide(
    snapshot: &Snapshot,
    book: &PolicyBook,
    cache: &ClusterState,
    entries: &BTreeMap<NodeName, NodeEntry>,
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
        let phase_before = previous
            .as_ref()
            .filter(|p| p.target == target)
            .map_or(Phase::PreFlight, |p| p.phase);
        if phase_before == Phase::PreFlight {
            found.preflight = upgrade::preflight(&snapshot.nodes, &versions, &health());
        }
        if rollout.steps.is_empty() && found.refusals.is_empty() {
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
            for step in &rollout.steps {
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
        let phase = pod.status.as_ref().and_then(|s| s.phase.as_deref());
        if !matches!(phase, Some("Succeeded" | "Failed")) && !pod_ready(pod) {
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
