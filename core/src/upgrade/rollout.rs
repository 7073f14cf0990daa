//! The steps of a Kubernetes upgrade rollout: for a pool's target version, which
//! `KubernetesUpgrade` each node below it is asked for next.
//!
//! - One minor at a time: a node at 1.30 with target 1.32.4 is asked for `1.31` (the newest
//!   1.31 patch its package source offers), then `1.32.4`.
//! - The first control-plane node of each version runs `kubeadm upgrade apply`: the
//!   control-plane node first by name among those taking that step, as long as no kube-apiserver
//!   runs the version yet. Every other node runs `kubeadm upgrade node`.
//! - Every node below the target gets its request at once; the scheduler's skew check
//!   ([`crate::scheduler::SkewViolation`]) holds each back until its turn (control plane first,
//!   the whole control plane one minor at a time, `apply` before `node`), with a reason
//!   operators can read.
//! - A node newer than the target (a downgrade) or on another major version refuses the whole
//!   rollout: rota never downgrades.

use std::fmt;

use crate::model::{KubeadmStep, NodeName, Operation};
use crate::policy::KubeVersion;
use crate::scheduler::NodeState;

use super::ClusterVersions;

/// Whether a requested `KubernetesUpgrade` version leads to `target`: the target itself, or a
/// minor-only step (`1.31`) on the way to it.
pub fn leads_to(requested: &str, target: KubeVersion) -> bool {
    let Ok(version) = requested.parse::<KubeVersion>() else {
        return false;
    };
    if is_minor_only(requested) {
        version.major == target.major && version.minor < target.minor
    } else {
        version == target
    }
}

/// Whether a version names a minor only (`1.31`, `v1.31`).
pub fn is_minor_only(version: &str) -> bool {
    version
        .split(['-', '+'])
        .next()
        .unwrap_or(version)
        .matches('.')
        .count()
        == 1
}

/// Why a pool's target cannot be rolled out.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// A node runs a newer version than the target.
    Downgrade {
        /// The node.
        node: NodeName,
        /// What it runs.
        from: KubeVersion,
        /// The target.
        target: KubeVersion,
    },
    /// A node runs another major version.
    OtherMajor {
        /// The node.
        node: NodeName,
        /// What it runs.
        from: KubeVersion,
        /// The target.
        target: KubeVersion,
    },
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Refusal::Downgrade { node, from, target } => write!(
                f,
                "{node} runs {from}, newer than the target {target}: rota never downgrades"
            ),
            Refusal::OtherMajor { node, from, target } => write!(
                f,
                "{node} runs {from}: a move to another major version ({target}) is not a \
                 kubeadm upgrade"
            ),
        }
    }
}

/// The version a node at `from` takes next towards `target`: `None` when it is there; a
/// minor-only version for an intermediate minor.
pub fn next_version(from: KubeVersion, target: KubeVersion) -> Result<Option<String>, Refusal> {
    let node = String::new();
    if from.major != target.major {
        return Err(Refusal::OtherMajor { node, from, target });
    }
    if from > target {
        return Err(Refusal::Downgrade { node, from, target });
    }
    Ok(if from == target {
        None
    } else if from.minor + 1 < target.minor {
        Some(format!("{}.{}", from.major, from.minor + 1))
    } else {
        Some(target.to_string())
    })
}

/// One node's next step.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Step {
    /// The node.
    pub node: NodeName,
    /// Whether it runs the control plane.
    pub control_plane: bool,
    /// Its kubelet now.
    pub from: KubeVersion,
    /// The operation to request.
    pub operation: Operation,
}

impl Step {
    /// The version this step goes to (`1.31` or `1.32.4`).
    pub fn to(&self) -> &str {
        match &self.operation {
            Operation::KubernetesUpgrade { version, .. } => version,
            _ => "",
        }
    }

    /// Whether this step runs `kubeadm upgrade apply`.
    pub fn applies(&self) -> bool {
        matches!(
            self.operation,
            Operation::KubernetesUpgrade {
                kubeadm: KubeadmStep::Apply,
                ..
            }
        )
    }
}

/// The next step of every node of `pool` below `target`, control-plane nodes first (each group
/// by name); nodes whose kubelet version is unknown wait (they are in `unknown`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Rollout {
    /// The steps.
    pub steps: Vec<Step>,
    /// Nodes of the pool whose kubelet version is not known.
    pub unknown: Vec<NodeName>,
    /// Nodes of the pool at the target.
    pub at_target: Vec<NodeName>,
}

/// The rollout of `target` over the nodes of `pool` (from `nodes`, the whole cluster), in a
/// cluster at `versions`.
pub fn plan(
    pool: &str,
    target: KubeVersion,
    nodes: &[NodeState],
    versions: &ClusterVersions,
) -> Result<Rollout, Vec<Refusal>> {
    let mut rollout = Rollout::default();
    let mut refusals = Vec::new();
    let mut members: Vec<&NodeState> = nodes
        .iter()
        .filter(|n| n.pools.len() == 1 && n.pools.iter().any(|p| p == pool))
        .filter(|n| crate::fleetlock::host_of_key(&n.name).is_none())
        .collect();
    members.sort_by(|a, b| {
        b.control_plane
            .cmp(&a.control_plane)
            .then_with(|| a.name.cmp(&b.name))
    });
    for node in members {
        let Some(from) = node.kubelet_version else {
            rollout.unknown.push(node.name.clone());
            continue;
        };
        match next_version(from, target) {
            Err(refusal) => refusals.push(with_node(refusal, &node.name)),
            Ok(None) => rollout.at_target.push(node.name.clone()),
            Ok(Some(version)) => {
                let kubeadm =
                    if node.control_plane && first_to_apply(&version, versions, &rollout.steps) {
                        KubeadmStep::Apply
                    } else {
                        KubeadmStep::Node
                    };
                rollout.steps.push(Step {
                    node: node.name.clone(),
                    control_plane: node.control_plane,
                    from,
                    operation: Operation::KubernetesUpgrade { version, kubeadm },
                });
            }
        }
    }
    if refusals.is_empty() {
        Ok(rollout)
    } else {
        Err(refusals)
    }
}

/// Whether a control-plane node stepping to `version` is the one that applies it: no
/// kube-apiserver runs it yet, and no control-plane node earlier by name applies it.
fn first_to_apply(version: &str, versions: &ClusterVersions, earlier: &[Step]) -> bool {
    let Ok(wanted) = version.parse::<KubeVersion>() else {
        return false;
    };
    let applied = versions.api_server_max().is_some_and(|max| {
        if is_minor_only(version) {
            max.minor_version() >= wanted.minor_version()
        } else {
            max >= wanted
        }
    });
    !applied && !earlier.iter().any(|s| s.applies() && s.to() == version)
}

fn with_node(refusal: Refusal, name: &str) -> Refusal {
    match refusal {
        Refusal::Downgrade { from, target, .. } => Refusal::Downgrade {
            node: name.to_owned(),
            from,
            target,
        },
        Refusal::OtherMajor { from, target, .. } => Refusal::OtherMajor {
            node: name.to_owned(),
            from,
            target,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scheduler::ControlPlanePod;

    fn node(name: &str, control_plane: bool, version: KubeVersion) -> NodeState {
        NodeState {
            name: name.into(),
            pools: vec!["all".into()],
            ready: true,
            control_plane,
            control_plane_pods: if control_plane {
                vec![ControlPlanePod {
                    pod: crate::policy::NamespacedName::new(
                        "kube-system",
                        format!("kube-apiserver-{name}"),
                    ),
                    component: super::super::API_SERVER.into(),
                    ready: true,
                    version: Some(version),
                }]
            } else {
                Vec::new()
            },
            kubelet_version: Some(version),
            ..NodeState::default()
        }
    }

    fn steps(nodes: &[NodeState], target: KubeVersion) -> Vec<(String, String, KubeadmStep)> {
        let versions = ClusterVersions::of(nodes, None);
        plan("all", target, nodes, &versions)
            .unwrap()
            .steps
            .into_iter()
            .map(|s| match s.operation {
                Operation::KubernetesUpgrade { version, kubeadm } => (s.node, version, kubeadm),
                other => panic!("{other:?}"),
            })
            .collect()
    }

    #[test]
    fn one_minor_at_a_time_and_the_first_control_plane_node_applies() {
        let v130 = KubeVersion::new(1, 30, 9);
        let target = KubeVersion::new(1, 32, 4);
        let mut nodes = vec![
            node("w-1", false, v130),
            node("cp-b", true, v130),
            node("cp-a", true, v130),
        ];
        assert_eq!(
            steps(&nodes, target),
            [
                ("cp-a".into(), "1.31".into(), KubeadmStep::Apply),
                ("cp-b".into(), "1.31".into(), KubeadmStep::Node),
                ("w-1".into(), "1.31".into(), KubeadmStep::Node),
            ]
        );
        // cp-a applied 1.31.5: the others run `kubeadm upgrade node`; cp-a's next step is the
        // target, which nobody applied yet.
        let v131 = KubeVersion::new(1, 31, 5);
        nodes[2] = node("cp-a", true, v131);
        assert_eq!(
            steps(&nodes, target),
            [
                ("cp-a".into(), "1.32.4".into(), KubeadmStep::Apply),
                ("cp-b".into(), "1.31".into(), KubeadmStep::Node),
                ("w-1".into(), "1.31".into(), KubeadmStep::Node),
            ]
        );
        assert!(leads_to("1.31", target) && leads_to("1.32.4", target));
        assert!(!leads_to("1.32", target) && !leads_to("1.32.3", target));
        assert!(!leads_to("1.33", target) && !leads_to("2.1", target));
    }

    #[test]
    fn downgrades_and_other_majors_are_refused() {
        let nodes = vec![
            node("cp-a", true, KubeVersion::new(1, 32, 5)),
            node("w-1", false, KubeVersion::new(1, 31, 0)),
        ];
        let versions = ClusterVersions::of(&nodes, None);
        let refused = plan("all", KubeVersion::new(1, 32, 4), &nodes, &versions).unwrap_err();
        assert_eq!(
            refused.iter().map(ToString::to_string).collect::<Vec<_>>(),
            ["cp-a runs 1.32.5, newer than the target 1.32.4: rota never downgrades"]
        );
        assert!(matches!(
            next_version(KubeVersion::new(1, 32, 0), KubeVersion::new(2, 0, 0)),
            Err(Refusal::OtherMajor { .. })
        ));
        assert_eq!(
            next_version(KubeVersion::new(1, 32, 4), KubeVersion::new(1, 32, 4)),
            Ok(None)
        );
    }
}
