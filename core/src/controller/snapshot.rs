//! From the cluster cache and the ledger to the scheduler's [`Snapshot`]. Pure.
//!
//! Pods a drain would evict are found with the drain engine's own filter
//! ([`crate::drain::filter::classify`]) and the pool's drain settings, so that the scheduler's
//! PDB look-ahead counts exactly the pods the drain will evict. They are computed only for nodes
//! that are queued or hold a slot (the only ones the scheduler looks at), from the cache's
//! per-node pod index.
use crate::cluster::ClusterState;
use crate::drain::DrainSpec;
use crate::node::{self, is_control_plane, is_in_service, is_unschedulable};

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::time::Duration;

use jiff::Timestamp;
use k8s_openapi::api::core::v1::{Node, Pod};
use kube_core::ResourceExt;

use super::annotations::CORDONED;
use super::pools::InForce;
use crate::drain::filter::{RefusalReason, Verdict, classify};
use crate::drain::pdb::PdbIndex;

use crate::fleetlock::{self, HostPool};
use crate::model::{
    EtcdFacts, FencingToken, NodeName, Operation, Origin, Slot, SlotPhase, SlotRequest,
};
use crate::policy::{KubeVersion, NamespacedName};
use crate::scheduler::{ControlPlanePod, EvictablePod, NodeState, PdbState, Pool, Snapshot};

use super::verify::pod_ready;

/// The drain settings for a pool's nodes, from its policy; `blocked_timeout` caps how long a
/// budget may refuse one pod before the drain gives its slot back.
pub fn drain_spec(in_force: Option<&InForce>, blocked_timeout: Duration) -> DrainSpec {
    let defaults = DrainSpec::default();
    let Some(in_force) = in_force else {
        return DrainSpec {
            blocked_timeout,
            ..defaults
        };
    };
    let drain = &in_force.policy.drain;
    let timeout = Duration::try_from(drain.timeout).unwrap_or(blocked_timeout);
    DrainSpec {
        delete_empty_dir_data: drain.delete_empty_dir_data,
        force: drain.force,
        pod_selector: in_force
            .spec
            .drain
            .pod_selector
            .clone()
            .and_then(|s| kube_core::Selector::try_from(s).ok())
            .filter(|s| !s.selects_all()),
        grace_period_seconds: drain.grace_period_seconds,
        blocked_timeout: blocked_timeout.min(timeout),
        ..defaults
    }
}

/// The pools selecting a node.
pub fn pools_of(node: &Node, pools: &[Pool]) -> Vec<String> {
    let labels = node.labels();
    pools
        .iter()
        .filter(|p| p.selects(labels))
        .map(|p| p.name.clone())
        .collect()
}

/// The one pool of a node, when exactly one selects it.
pub fn pool_of<'p>(node: &Node, pools: &'p [Pool]) -> Option<&'p Pool> {
    let labels = node.labels();
    let mut selecting = pools.iter().filter(|p| p.selects(labels));
    let first = selecting.next()?;
    selecting.next().is_none().then_some(first)
}

/// Everything [`build`] needs.
pub struct Inputs<'a> {
    /// The cluster.
    pub cache: &'a ClusterState,
    /// The pools in force.
    pub pools: &'a [Pool],
    /// Drain settings per pool.
    pub drain_specs: &'a HashMap<String, DrainSpec>,
    /// Queued requests.
    pub queue: Vec<SlotRequest>,
    /// Held slots.
    pub slots: Vec<Slot>,
    /// What the agents reported about their nodes' etcd members, by node.
    pub etcd: &'a BTreeMap<NodeName, EtcdFacts>,
    /// Now.
    pub now: Timestamp,
}

/// Builds the scheduler's view of the fleet.
pub fn build(inputs: Inputs<'_>) -> Snapshot {
    let Inputs {
        cache,
        pools,
        drain_specs,
        queue,
        slots,
        etcd,
        now,
    } = inputs;
    let pdb_index = cache.pdb_index();
    let queued: HashSet<&str> = queue.iter().map(|r| r.node.as_str()).collect();
    let holding: HashSet<&str> = slots.iter().map(|s| s.node.as_str()).collect();
    let default_drain = DrainSpec::default();
    let nodes = cache
        .nodes()
        .values()
        .map(|node| {
            let name = node.name_any();
            let node_pools = pools_of(node, pools);
            let pool = pool_of(node, pools);
            let wanted = queued.contains(name.as_str()) || holding.contains(name.as_str());
            let (evictable_pods, blocking_pods) = if wanted {
                let spec = pool
                    .and_then(|p| drain_specs.get(&p.name))
                    .unwrap_or(&default_drain);
                let pods: Vec<&Pod> = cache.pods_on(&name).map(AsRef::as_ref).collect();
                let blocking = match pool {
                    Some(pool) if queued.contains(name.as_str()) => pods
                        .iter()
                        .filter(|p| !finished(p) && pool.policy.blockers.blocks_pod(p.labels()))
                        .map(|p| pod_key(p))
                        .collect(),
                    _ => Vec::new(),
                };
                (evictable(&pods, pdb_index, spec, now), blocking)
            } else {
                (Vec::new(), Vec::new())
            };
            let control_plane_pods = control_plane_pods(cache, &name);
            // Only an agent knows its node's etcd member: a node without rota's agent (a
            // FleetLock host, say) takes no snapshots, so none is waited for; the rollout asks
            // nothing of a node whose agent has not reported yet.
            let etcd = etcd.get(&name).cloned().unwrap_or_default();
            NodeState {
                pools: node_pools,
                ready: is_in_service(node),
                unschedulable: is_unschedulable(node),
                cordoned_by_rota: node.annotations().contains_key(CORDONED),
                control_plane: is_control_plane(node) || !control_plane_pods.is_empty(),
                control_plane_pods,
                kubelet_version: node
                    .status
                    .as_ref()
                    .and_then(|s| s.node_info.as_ref())
                    .and_then(|i| i.kubelet_version.parse::<KubeVersion>().ok()),
                zone: node::zone(node).map(str::to_owned),
                evictable_pods,
                blocking_pods,
                etcd,
                name,
            }
        })
        .collect();
    let pdbs = cache
        .pdbs()
        .map(|pdb| PdbState {
            key: NamespacedName::new(pdb.namespace().unwrap_or_default(), pdb.name_any()),
            disruptions_allowed: pdb.status.as_ref().map_or(0, |s| s.disruptions_allowed),
        })
        .collect();
    Snapshot {
        pools: pools.to_vec(),
        nodes,
        api_server_version: cache.api_server_version(),
        slots,
        queue,
        pdbs,
    }
}

/// Adds the pools' FleetLock hosts that are not Kubernetes nodes to `snapshot`, as nodes of
/// their pool that are always Ready and run no pods ([`fleetlock::host_key`] names them): a
/// lock holder as a held slot (it counts against `maxUnavailable` like a node under
/// maintenance, even when its policy no longer lists it), a host that asks as a queued reboot
/// request, so that hosts and nodes are scheduled by the same rules, in one decision.
pub fn add_hosts(snapshot: &mut Snapshot, hosts: &BTreeMap<String, HostPool>) {
    let listed: Vec<(String, Vec<String>)> = snapshot
        .pools
        .iter()
        .map(|p| (p.name.clone(), p.policy.fleetlock_hosts.clone()))
        .collect();
    let none = HostPool::default();
    for (pool, ids) in listed {
        let known = hosts.get(&pool).unwrap_or(&none);
        let everyone: BTreeSet<&String> = ids.iter().chain(known.holders.keys()).collect();
        for id in everyone {
            let key = fleetlock::host_key(id);
            snapshot.nodes.push(NodeState {
                name: key.clone(),
                pools: vec![pool.clone()],
                ready: true,
                ..NodeState::default()
            });
            if let Some(since) = known.holders.get(id) {
                snapshot.slots.push(Slot {
                    node: key,
                    operation: Operation::Reboot,
                    origin: Origin::FleetLock,
                    token: FencingToken(0),
                    phase: SlotPhase::Granted,
                    admitted_at: *since,
                    phase_since: *since,
                    granted_at: Some(*since),
                    lease_expires_at: *since,
                    boot_id_before: None,
                    cordoned_by_rota: false,
                });
            } else if let Some(since) = known.requests.get(id) {
                snapshot.queue.push(SlotRequest {
                    node: key,
                    operation: Operation::Reboot,
                    origin: Origin::FleetLock,
                    requested_at: *since,
                    not_before: None,
                });
            }
        }
    }
}

/// The node's static control-plane pods: mirror pods in `kube-system` labelled with a
/// control-plane `component`, as kubeadm writes them.
fn control_plane_pods(cache: &ClusterState, node: &str) -> Vec<ControlPlanePod> {
    cache
        .pods_on(node)
        .filter(|pod| pod.metadata.namespace.as_deref() == Some(KUBE_SYSTEM))
        .filter(|pod| !finished(pod))
        .filter_map(|pod| {
            let component = pod.labels().get("component")?;
            ControlPlanePod::COMPONENTS
                .contains(&component.as_str())
                .then(|| ControlPlanePod {
                    pod: pod_key(pod),
                    component: component.clone(),
                    ready: pod_ready(pod),
                    version: image_version_of(pod, component),
                })
        })
        .collect()
}

/// The Kubernetes version of a static pod's image: its container named after the component
/// (kubeadm names it so), else its first container.
fn image_version_of(pod: &Pod, component: &str) -> Option<KubeVersion> {
    if component == ControlPlanePod::ETCD {
        return None;
    }
    let containers = &pod.spec.as_ref()?.containers;
    let container = containers
        .iter()
        .find(|c| c.name == component)
        .or_else(|| containers.first())?;
    crate::upgrade::image_version(container.image.as_deref()?)
}

/// Where kubeadm's static control-plane pods (and the cluster's add-ons) run.
pub(super) const KUBE_SYSTEM: &str = "kube-system";

/// Whether the pod has ended (`Succeeded` or `Failed`).
pub(super) fn finished(pod: &Pod) -> bool {
    matches!(
        pod.status.as_ref().and_then(|s| s.phase.as_deref()),
        Some("Succeeded" | "Failed")
    )
}

fn pod_key(pod: &Pod) -> NamespacedName {
    NamespacedName::new(pod.namespace().unwrap_or_default(), pod.name_any())
}

/// The pods a drain would evict now, each with the budgets its eviction is checked against
/// (none for pods the API server deletes without a check: finished, pending or terminating).
fn evictable(
    pods: &[&Pod],
    pdbs: &PdbIndex,
    spec: &DrainSpec,
    now: Timestamp,
) -> Vec<EvictablePod> {
    pods.iter()
        .filter(|pod| pod.metadata.deletion_timestamp.is_none())
        .filter_map(|pod| {
            let budget_checked = !finished(pod)
                && pod.status.as_ref().and_then(|s| s.phase.as_deref()) != Some("Pending");
            let covering = || {
                pdbs.covering(&pod.namespace().unwrap_or_default(), pod.labels())
                    .into_iter()
                    .map(|r| NamespacedName::new(r.namespace, r.name))
                    .collect::<Vec<_>>()
            };
            let pdbs = match classify(pod, pdbs, spec, now) {
                Verdict::Skip(_) => return None,
                Verdict::Evict { .. } if budget_checked => covering(),
                Verdict::Evict { .. } => Vec::new(),
                // Still counted: the scheduler names the budgets; the drain refuses the pod.
                Verdict::Refuse(RefusalReason::MultiplePdbs { pdbs }) => pdbs
                    .into_iter()
                    .map(|r| NamespacedName::new(r.namespace, r.name))
                    .collect(),
                Verdict::Refuse(_) => covering(),
            };
            Some(EvictablePod {
                pod: pod_key(pod),
                pdbs,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::Indexed;

    #[test]
    fn the_etcd_member_is_what_the_agent_reported() {
        let mut cache = ClusterState::default();
        let node: Node = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "cp-1"},
            "status": {"conditions": [{"type": "Ready", "status": "True"}]},
        }))
        .unwrap_or_else(|e| panic!("{e}"));
        Indexed::insert(&mut cache, node);
        let etcd: Pod = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "etcd-cp-1", "namespace": KUBE_SYSTEM,
                "labels": {"component": "etcd", "tier": "control-plane"}},
            "spec": {"nodeName": "cp-1", "containers": [{"name": "etcd",
                "image": "registry.k8s.io/etcd:3.5.15-0"}]},
        }))
        .unwrap_or_else(|e| panic!("{e}"));
        Indexed::insert(&mut cache, etcd);
        let member = |etcd: &BTreeMap<NodeName, EtcdFacts>| {
            let snapshot = build(Inputs {
                cache: &cache,
                pools: &[],
                drain_specs: &HashMap::new(),
                queue: Vec::new(),
                slots: Vec::new(),
                etcd,
                now: Timestamp::UNIX_EPOCH,
            });
            snapshot.nodes[0].etcd.member
        };
        // No agent (a FleetLock host, or one that has not reported): nobody would take the
        // snapshot, so none is waited for.
        assert_eq!(member(&BTreeMap::new()), crate::model::EtcdMember::None);
        let reported = BTreeMap::from([(
            "cp-1".to_owned(),
            EtcdFacts {
                member: crate::model::EtcdMember::Stacked,
                ..EtcdFacts::default()
            },
        )]);
        assert_eq!(member(&reported), crate::model::EtcdMember::Stacked);
    }
}
