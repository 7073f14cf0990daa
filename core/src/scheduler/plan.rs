//! What the scheduler decided: nodes to admit now, and why every other queued node waits.

use std::collections::BTreeMap;
use std::fmt;

use jiff::Timestamp;

use crate::model::{NodeName, SlotPhase, SlotRequest};
use crate::policy::crd::WaitingReasonSummary;
use crate::policy::{KubeVersion, NamespacedName};

use super::skew::SkewViolation;
use super::snapshot::PoolName;
use super::{LISTED, list_with_more};

/// The outcome of one scheduling decision.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Plan {
    /// Nodes to admit now, in queue order. The controller records each slot (with a fencing
    /// token), then cordons and drains the node.
    pub admit: Vec<Admission>,
    /// Every queued node not admitted, with its queue position and all reasons.
    pub waiting: BTreeMap<NodeName, Waiting>,
}

/// A node to admit.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Admission {
    /// The node.
    pub node: NodeName,
    /// Its pool.
    pub pool: PoolName,
    /// The request admitted.
    pub request: SlotRequest,
    /// PDBs whose pods on the node outnumber their allowance (empty for most drains). The
    /// drain has each of them to itself and evicts their pods as the budget allows — the
    /// others are refused until earlier replacements are Ready — so it takes longer than a
    /// drain whose pods all fit at once.
    pub sequential: Vec<SequentialPdb>,
}

/// A PDB that an admitted drain has to itself, its pods being evicted a few at a time.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SequentialPdb {
    /// The PDB.
    pub pdb: NamespacedName,
    /// Its `disruptionsAllowed` at admission (at least 1).
    pub allowed: u32,
    /// Its pods on the node (more than `allowed`).
    pub pods: u32,
}

impl SequentialPdb {
    /// How many times the drain waits for the budget at most: evictions go in rounds of
    /// `allowed`, each after the previous round's replacements are Ready.
    pub fn rounds(&self) -> u32 {
        self.pods.div_ceil(self.allowed.max(1))
    }
}

/// A queued node that is not admitted.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Waiting {
    /// Its pool, when it has exactly one.
    pub pool: Option<PoolName>,
    /// 1-based position among the waiting nodes of its pool (or of the nodes without a pool),
    /// in admission order.
    pub position: u32,
    /// Every reason it waits; never empty.
    pub reasons: Vec<WaitReason>,
}

/// Why a node counts as unavailable.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Unavailability {
    /// It holds a maintenance slot.
    HoldsSlot,
    /// Admitted by this same plan.
    AdmittedNow,
    /// Its Ready condition is not True.
    NotReady,
    /// rota cordoned it but it holds no slot (a leftover, e.g. after a failed release).
    CordonedByRota,
    /// Someone cordoned it.
    Cordoned,
}

impl Unavailability {
    fn as_str(self) -> &'static str {
        match self {
            Unavailability::HoldsSlot => "holds a slot",
            Unavailability::AdmittedNow => "admitted now",
            Unavailability::NotReady => "NotReady",
            Unavailability::CordonedByRota => "cordoned by rota",
            Unavailability::Cordoned => "cordoned",
        }
    }
}

/// One reason a queued node is not admitted.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum WaitReason {
    /// The queue names a node that does not exist (any more).
    NodeNotFound,
    /// No `MaintenancePolicy` selects the node.
    NoPool,
    /// Several policies select the node; which one applies is ambiguous.
    SeveralPools {
        /// Their names.
        pools: Vec<PoolName>,
    },
    /// The node already holds a slot.
    HoldsSlot {
        /// The slot's phase.
        phase: SlotPhase,
    },
    /// The pool's rollout is paused.
    Paused,
    /// The circuit breaker paused the pool.
    CircuitOpen {
        /// Failures counted.
        failures: u32,
        /// The policy's `maxFailures`.
        max_failures: u32,
    },
    /// A blackout is active.
    Blackout {
        /// Its reason.
        reason: String,
        /// When it (and any blackout overlapping it) ends.
        until: Timestamp,
    },
    /// Outside every maintenance window (manual requests ignore windows).
    WindowClosed {
        /// When the next window opens, if known.
        next_open: Option<Timestamp>,
    },
    /// Backing off after a drain that could not finish.
    BackingOff {
        /// Not before this instant.
        until: Timestamp,
    },
    /// Other control-plane nodes are unavailable: at most `controlPlane.maxUnavailable` at a
    /// time in the whole cluster ([`super::control_plane`]).
    ControlPlaneUnavailable {
        /// The limit.
        max: usize,
        /// The other control-plane nodes unavailable, and why.
        unavailable: Vec<(NodeName, Unavailability)>,
    },
    /// Other control-plane nodes, or their static control-plane pods, are not healthy: a
    /// control-plane node is maintained only when all the others are.
    ControlPlaneUnhealthy {
        /// Each unhealthy node with what is wrong (NotReady, `etcd-cp-2 not Ready`, ...).
        nodes: Vec<(NodeName, Vec<String>)>,
    },
    /// Taking the node's etcd member down would leave fewer than a quorum of members up.
    EtcdQuorum {
        /// Etcd members (nodes running an etcd static pod).
        members: usize,
        /// Most members down at once.
        max_down: usize,
        /// The other members down, and why.
        down: Vec<(NodeName, String)>,
    },
    /// The pool's policy forbids the operation, whoever asks for it.
    Forbidden {
        /// The policy field, e.g. `reboot.mode`.
        field: &'static str,
        /// Its value, e.g. `never`.
        value: &'static str,
    },
    /// Admitting the node would make too many nodes of the pool unavailable.
    MaxUnavailable {
        /// Unavailable nodes of the pool now (including nodes admitted earlier in this plan).
        unavailable: usize,
        /// The pool's limit.
        max: u32,
        /// The first few unavailable nodes by name, with why.
        examples: Vec<(NodeName, Unavailability)>,
    },
    /// Draining the node would take more disruptions than a PDB allows.
    PdbBudget {
        /// The PDB.
        pdb: NamespacedName,
        /// Its `disruptionsAllowed`.
        allowed: i32,
        /// Its pods still to be evicted from nodes holding a slot.
        in_flight: u32,
        /// Its disruptions taken by nodes admitted earlier in this plan.
        admitted: u32,
        /// Its pods on this node.
        needed: u32,
    },
    /// A pod on the node is covered by a PDB the scheduler knows nothing about.
    PdbUnknown {
        /// The PDB.
        pdb: NamespacedName,
    },
    /// A pod is covered by several PDBs; the eviction API refuses to evict such a pod.
    SeveralPdbs {
        /// The pod.
        pod: NamespacedName,
        /// The PDBs.
        pdbs: Vec<NamespacedName>,
    },
    /// Pods matching the policy's blocker selectors run on the node.
    BlockingPods {
        /// The pods.
        pods: Vec<NamespacedName>,
    },
    /// A blocking alert is firing.
    AlertFiring {
        /// The alert's name.
        alert: String,
    },
    /// The pool's Prometheus could not tell which alerts fire, so none can be ruled out.
    AlertsUnknown {
        /// The Prometheus URL of the policy.
        url: String,
        /// Why its alerts are not known.
        reason: String,
    },
    /// The Kubernetes version skew policy forbids the upgrade now.
    VersionSkew(SkewViolation),
    /// A Kubernetes upgrade to another version than the pool's target.
    NotTargetVersion {
        /// The version requested.
        requested: String,
        /// The policy's `upgrade.kubernetesVersion`.
        target: KubeVersion,
    },
    /// A stacked etcd member waits for its agent to report a verified snapshot young enough.
    EtcdSnapshotNeeded {
        /// The policy's `etcd.maxSnapshotAge`, in seconds.
        max_age_seconds: u64,
        /// When the newest verified snapshot was taken, if there is one.
        newest: Option<jiff::Timestamp>,
    },
    /// The pool's Kubernetes upgrade pre-flight failed: nothing is admitted until a human
    /// pauses and resumes the pool.
    RolloutHeld {
        /// What failed.
        reason: String,
    },
    /// The agent's last etcd snapshot failed.
    EtcdSnapshotFailed {
        /// Why.
        error: String,
    },
}

impl WaitReason {
    /// A stable, machine-readable kind (status summaries, metrics labels, events).
    pub fn kind(&self) -> &'static str {
        match self {
            WaitReason::NodeNotFound => "NodeNotFound",
            WaitReason::NoPool => "NoPool",
            WaitReason::SeveralPools { .. } => "SeveralPools",
            WaitReason::HoldsSlot { .. } => "HoldsSlot",
            WaitReason::Paused => "Paused",
            WaitReason::CircuitOpen { .. } => "CircuitOpen",
            WaitReason::Blackout { .. } => "Blackout",
            WaitReason::WindowClosed { .. } => "WindowClosed",
            WaitReason::BackingOff { .. } => "BackingOff",
            WaitReason::MaxUnavailable { .. } => "MaxUnavailable",
            WaitReason::ControlPlaneUnavailable { .. } => "ControlPlaneUnavailable",
            WaitReason::ControlPlaneUnhealthy { .. } => "ControlPlaneUnhealthy",
            WaitReason::EtcdQuorum { .. } => "EtcdQuorum",
            WaitReason::Forbidden { .. } => "ForbiddenByPolicy",
            WaitReason::PdbBudget { .. } => "PdbBudget",
            WaitReason::PdbUnknown { .. } => "PdbUnknown",
            WaitReason::SeveralPdbs { .. } => "SeveralPdbs",
            WaitReason::BlockingPods { .. } => "BlockingPod",
            WaitReason::AlertFiring { .. } => "AlertFiring",
            WaitReason::AlertsUnknown { .. } => "AlertsUnknown",
            WaitReason::VersionSkew(_) => "VersionSkew",
            WaitReason::NotTargetVersion { .. } => "NotTargetVersion",
            WaitReason::EtcdSnapshotNeeded { .. } => "EtcdSnapshotNeeded",
            WaitReason::RolloutHeld { .. } => "RolloutHeld",
            WaitReason::EtcdSnapshotFailed { .. } => "EtcdSnapshotFailed",
        }
    }
}

impl fmt::Display for WaitReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            WaitReason::NodeNotFound => f.write_str("node not found"),
            WaitReason::NoPool => f.write_str("no MaintenancePolicy selects this node"),
            WaitReason::SeveralPools { pools } => write!(
                f,
                "several MaintenancePolicies select this node: {}",
                pools.join(", ")
            ),
            WaitReason::HoldsSlot { phase } => {
                write!(f, "already holds a slot ({})", phase.as_str())
            }
            WaitReason::Paused => f.write_str("rollout paused"),
            WaitReason::CircuitOpen {
                failures,
                max_failures,
            } => write!(
                f,
                "circuit breaker open after {failures} failures (maxFailures {max_failures})"
            ),
            WaitReason::Blackout { reason, until } if reason.is_empty() => {
                write!(f, "blackout until {until}")
            }
            WaitReason::Blackout { reason, until } => {
                write!(f, "blackout {reason:?} until {until}")
            }
            WaitReason::WindowClosed {
                next_open: Some(at),
            } => write!(f, "maintenance window closed until {at}"),
            WaitReason::WindowClosed { next_open: None } => {
                f.write_str("maintenance window closed")
            }
            WaitReason::BackingOff { until } => write!(f, "backing off until {until}"),
            WaitReason::ControlPlaneUnavailable { max, unavailable } => {
                let names: Vec<String> = unavailable
                    .iter()
                    .map(|(name, why)| format!("{name} ({})", why.as_str()))
                    .collect();
                let noun = if *max == 1 { "node" } else { "nodes" };
                write!(
                    f,
                    "control plane: at most {max} control-plane {noun} unavailable at a time \
                     (unavailable: {})",
                    list_with_more(&names, names.len())
                )
            }
            WaitReason::ControlPlaneUnhealthy { nodes } => {
                let names: Vec<String> = nodes
                    .iter()
                    .map(|(name, problems)| format!("{name} ({})", problems.join(", ")))
                    .collect();
                write!(
                    f,
                    "control plane: every other control-plane node must be healthy first \
                     (unhealthy: {})",
                    list_with_more(&names, names.len())
                )
            }
            WaitReason::EtcdQuorum {
                members,
                max_down,
                down,
            } => {
                let names: Vec<String> = down
                    .iter()
                    .map(|(name, why)| format!("{name} ({why})"))
                    .collect();
                if *max_down == 0 {
                    write!(
                        f,
                        "etcd quorum: {members} member(s), none to spare; maintaining this one \
                         takes the API server down (controlPlane.allowEtcdQuorumLoss allows it)"
                    )?;
                } else {
                    write!(
                        f,
                        "etcd quorum: at most {max_down} of {members} members down at a time"
                    )?;
                }
                if names.is_empty() {
                    Ok(())
                } else {
                    write!(f, " (down: {})", list_with_more(&names, names.len()))
                }
            }
            WaitReason::Forbidden { field, value } => {
                write!(f, "the policy forbids it: {field} is {value}")
            }
            WaitReason::MaxUnavailable {
                unavailable,
                max,
                examples,
            } => {
                let names: Vec<String> = examples
                    .iter()
                    .map(|(node, why)| format!("{node} ({})", why.as_str()))
                    .collect();
                write!(
                    f,
                    "maxUnavailable {unavailable}/{max} reached (unavailable: {})",
                    list_with_more(&names, *unavailable)
                )
            }
            WaitReason::PdbBudget {
                pdb,
                allowed,
                in_flight,
                admitted,
                needed,
            } => {
                let left =
                    (i64::from(*allowed) - i64::from(*in_flight) - i64::from(*admitted)).max(0);
                write!(f, "PDB {pdb} allows {left} of {needed} needed")?;
                let mut taken = Vec::new();
                if *in_flight > 0 {
                    taken.push(format!(
                        "{in_flight} still being evicted from draining nodes"
                    ));
                }
                if *admitted > 0 {
                    taken.push(format!("{admitted} taken by nodes admitted now"));
                }
                if taken.is_empty() {
                    Ok(())
                } else {
                    write!(f, " (disruptionsAllowed {allowed}; {})", taken.join(", "))
                }
            }
            WaitReason::PdbUnknown { pdb } => {
                write!(f, "PDB {pdb} covers a pod but its budget is unknown")
            }
            WaitReason::SeveralPdbs { pod, pdbs } => {
                let pdbs: Vec<String> = pdbs.iter().map(ToString::to_string).collect();
                write!(
                    f,
                    "pod {pod} is covered by several PDBs ({}); the eviction API refuses it",
                    pdbs.join(", ")
                )
            }
            WaitReason::BlockingPods { pods } => {
                let names: Vec<String> = pods.iter().map(ToString::to_string).collect();
                let noun = if pods.len() == 1 { "pod" } else { "pods" };
                write!(f, "blocking {noun} {}", list_with_more(&names, pods.len()))
            }
            WaitReason::AlertFiring { alert } => write!(f, "alert {alert} firing"),
            WaitReason::AlertsUnknown { url, reason } => {
                write!(f, "cannot reach Prometheus at {url}: {reason}")
            }
            WaitReason::VersionSkew(violation) => violation.fmt(f),
            WaitReason::NotTargetVersion { requested, target } => write!(
                f,
                "Kubernetes upgrade to {requested} requested, but the policy's \
                 upgrade.kubernetesVersion is {target}"
            ),
            WaitReason::EtcdSnapshotNeeded {
                max_age_seconds,
                newest: Some(at),
            } => write!(
                f,
                "etcd snapshot: the newest verified one ({at}) is older than \
                 etcd.maxSnapshotAge ({max_age_seconds} s); the agent takes a new one"
            ),
            WaitReason::EtcdSnapshotNeeded { newest: None, .. } => f.write_str(
                "etcd snapshot: waiting for the agent to save and verify one of this \
                 stacked etcd member",
            ),
            WaitReason::RolloutHeld { reason } => write!(f, "Kubernetes upgrade held: {reason}"),
            WaitReason::EtcdSnapshotFailed { error } => {
                write!(f, "etcd snapshot failed: {error}")
            }
        }
    }
}

impl Plan {
    /// Why the waiting nodes of `pool` wait, one entry per reason kind (sorted by kind), each
    /// with up to five example nodes (the first in queue order) — ready for the policy's
    /// `status.waitingReasons`.
    pub fn waiting_summary(&self, pool: &str) -> Vec<WaitingReasonSummary> {
        let mut in_pool: Vec<(&NodeName, &Waiting)> = self
            .waiting
            .iter()
            .filter(|(_, w)| w.pool.as_deref() == Some(pool))
            .collect();
        in_pool.sort_by_key(|(_, w)| w.position);
        let mut by_kind: BTreeMap<&'static str, WaitingReasonSummary> = BTreeMap::new();
        for (node, waiting) in in_pool {
            let mut kinds_seen: Vec<&str> = Vec::new();
            for reason in &waiting.reasons {
                if kinds_seen.contains(&reason.kind()) {
                    continue;
                }
                kinds_seen.push(reason.kind());
                let entry = by_kind
                    .entry(reason.kind())
                    .or_insert_with(|| WaitingReasonSummary {
                        reason: reason.kind().to_owned(),
                        count: 0,
                        examples: BTreeMap::new(),
                    });
                entry.count = entry.count.saturating_add(1);
                if entry.examples.len() < LISTED {
                    entry.examples.insert(node.clone(), reason.to_string());
                }
            }
        }
        by_kind.into_values().collect()
    }
}
