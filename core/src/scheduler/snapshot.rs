//! What the scheduler decides on: one consistent view of the fleet, built by the controller from
//! its Kubernetes watches and the slot ledger.

use std::collections::BTreeMap;
use std::sync::Arc;

use crate::model::{EtcdFacts, NodeName, Slot, SlotRequest};
use crate::policy::{KubeVersion, NamespacedName, ValidatedPolicy};

/// The name of a pool: the name of its `MaintenancePolicy`.
pub type PoolName = String;

/// Everything one scheduling decision looks at.
#[derive(Clone, Debug, Default)]
pub struct Snapshot {
    /// Node pools, one per valid `MaintenancePolicy` (the last valid spec when the current one is
    /// invalid).
    pub pools: Vec<Pool>,
    /// Every Node.
    pub nodes: Vec<NodeState>,
    /// Version of the oldest kube-apiserver (`/version` of each replica, or the control plane's
    /// static pods); `None` when unknown, which holds Kubernetes upgrades back.
    pub api_server_version: Option<KubeVersion>,
    /// Slots currently held (any phase).
    pub slots: Vec<Slot>,
    /// Queued requests, in any order; at most one per node is considered (the first in queue
    /// order).
    pub queue: Vec<SlotRequest>,
    /// Every PodDisruptionBudget that covers a pod in [`NodeState::evictable_pods`].
    pub pdbs: Vec<PdbState>,
}

/// A node pool and what the scheduler needs to know about it.
#[derive(Clone, Debug)]
pub struct Pool {
    /// The policy's name.
    pub name: PoolName,
    /// The policy in force.
    pub policy: Arc<ValidatedPolicy>,
    /// Failed maintenances counted against `maxFailures` (since the rollout was last resumed).
    pub failures: u32,
    /// Names of the alerts firing on the policy's Prometheus; the scheduler applies the policy's
    /// alert filter to them.
    pub firing_alerts: Vec<String>,
    /// Why the firing alerts of the policy's Prometheus are not known (it cannot be reached,
    /// answered something that is not an alert list, or has not answered yet). A blocker that
    /// cannot be checked holds the whole pool back rather than silently allowing maintenance.
    /// Ignored when the policy has no Prometheus blocker.
    pub alerts_unknown: Option<String>,
    /// Why the pool is held by its Kubernetes upgrade rollout (a failed pre-flight), if it is.
    pub rollout_held: Option<String>,
}

impl Pool {
    /// Whether the pool's node selector selects a node with these labels (to fill
    /// [`NodeState::pools`]).
    pub fn selects(&self, node_labels: &BTreeMap<String, String>) -> bool {
        self.policy.node_selector.matches(node_labels)
    }
}

/// A Node as the scheduler sees it.
#[derive(Clone, Debug, Default)]
pub struct NodeState {
    /// Node name.
    pub name: NodeName,
    /// Pools whose node selector selects the node. Normally one; none or several keep the node
    /// from being maintained (with a reason).
    pub pools: Vec<PoolName>,
    /// The Node's `Ready` condition is `True` and it carries none of the node-lifecycle
    /// controller's outage taints ([`crate::node::is_in_service`]).
    pub ready: bool,
    /// `spec.unschedulable` (cordoned, by anyone).
    pub unschedulable: bool,
    /// rota cordoned it (recorded on the Node), so a leftover cordon is told from a human's.
    pub cordoned_by_rota: bool,
    /// Runs the control plane: labelled `node-role.kubernetes.io/control-plane` (or `master`),
    /// or runs static control-plane pods.
    pub control_plane: bool,
    /// Its static control-plane pods: the mirror pods in `kube-system` whose `component` label
    /// names etcd, kube-apiserver, kube-controller-manager or kube-scheduler (as kubeadm
    /// labels them).
    pub control_plane_pods: Vec<ControlPlanePod>,
    /// `status.nodeInfo.kubeletVersion`, if it parses.
    pub kubelet_version: Option<KubeVersion>,
    /// `topology.kubernetes.io/zone`, for zone-aware packing.
    pub zone: Option<String>,
    /// Pods a drain of this node would evict now (after the drain filters: no DaemonSet or mirror
    /// pods, not terminating, matching the policy's drain pod selector), with the PDBs that cover
    /// each. Needed for queued nodes and for nodes holding a slot (their remaining pods are
    /// evictions still to come); may be left empty for others.
    pub evictable_pods: Vec<EvictablePod>,
    /// Pods on the node that match the pool's blocker selectors
    /// ([`crate::policy::Blockers::blocks_pod`]).
    pub blocking_pods: Vec<NamespacedName>,
    /// What the node's agent last reported about its etcd member and snapshots.
    pub etcd: EtcdFacts,
}

impl NodeState {
    /// Counts against `maxUnavailable` even without a slot: NotReady or cordoned by anyone.
    pub fn unavailable_without_slot(&self) -> bool {
        !self.ready || self.unschedulable
    }

    /// Runs a stacked etcd member (an `etcd` static pod).
    pub fn etcd_member(&self) -> bool {
        self.control_plane_pods
            .iter()
            .any(|p| p.component == ControlPlanePod::ETCD)
    }
}

/// A static control-plane pod, seen through its mirror pod.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ControlPlanePod {
    /// The mirror pod.
    pub pod: NamespacedName,
    /// Its `component` label: one of [`ControlPlanePod::COMPONENTS`].
    pub component: String,
    /// Its `Ready` condition is `True` and it is not being deleted.
    pub ready: bool,
    /// The version of its image's tag (`registry.k8s.io/kube-apiserver:v1.31.4`), for the
    /// Kubernetes components; `None` for etcd or a tag that is no Kubernetes version.
    pub version: Option<KubeVersion>,
}

impl ControlPlanePod {
    /// The `component` of an etcd member.
    pub const ETCD: &'static str = "etcd";
    /// The `component` labels of the static control-plane pods.
    pub const COMPONENTS: [&'static str; 4] = [
        Self::ETCD,
        "kube-apiserver",
        "kube-controller-manager",
        "kube-scheduler",
    ];
}

/// A pod a drain would evict.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EvictablePod {
    /// The pod.
    pub pod: NamespacedName,
    /// PDBs whose selector matches it (see [`crate::drain::pdb::PdbIndex`]); more than one makes
    /// the eviction API
    /// refuse it.
    pub pdbs: Vec<NamespacedName>,
}

/// A PodDisruptionBudget's budget.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PdbState {
    /// The PDB.
    pub key: NamespacedName,
    /// `status.disruptionsAllowed`. Pods already evicted are accounted in it by the disruption
    /// controller; pods still to be evicted from nodes holding a slot are not, and the scheduler
    /// subtracts them.
    pub disruptions_allowed: i32,
}
