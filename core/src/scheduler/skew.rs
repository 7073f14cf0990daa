//! The Kubernetes version skew policy, for `KubernetesUpgrade` requests (the upstream policy;
//! versions from [`ClusterVersions`]).
//!
//! - One minor version at a time, never down.
//! - A worker's kubelet is never newer than the oldest kube-apiserver (minor versions).
//! - Control-plane nodes first: a worker waits until every control-plane kubelet runs at least the
//!   target version.
//! - A control-plane node's upgrade moves its own kube-apiserver, so there the target may be one
//!   minor ahead of the oldest kube-apiserver, never more; and the whole control plane moves one
//!   minor at a time: no control-plane node goes to minor m+1 while anything on the control plane
//!   (a kubelet, a kube-apiserver, controller-manager or scheduler) is still below m.
//! - No kubelet may fall more than three minors behind the new kube-apiserver.
//! - `kubeadm upgrade apply` first: on a control-plane node, `kubeadm upgrade node` waits until a
//!   kube-apiserver runs the target (the apply moved the cluster's configuration); `apply` runs
//!   only on control-plane nodes.

use std::fmt;

use crate::model::{KubeadmStep, NodeName};
use crate::policy::KubeVersion;
use crate::upgrade::{ClusterVersions, KUBELET_MAX_MINORS_BEHIND};

use super::snapshot::NodeState;
use super::{LISTED, list_with_more};

/// Why a Kubernetes upgrade of a node would break the version skew policy.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SkewViolation {
    /// The requested version does not parse.
    InvalidTarget {
        /// What was requested.
        version: String,
    },
    /// The API server's version is not known yet.
    UnknownApiServerVersion,
    /// The node's kubelet version is not known yet.
    UnknownKubeletVersion,
    /// A worker's kubelet would be newer than the API server.
    NewerThanApiServer {
        /// Requested kubelet version.
        target: KubeVersion,
        /// Oldest API server.
        api_server: KubeVersion,
    },
    /// A control-plane node would move more than one minor ahead of the API server.
    ControlPlaneTooFarAhead {
        /// Requested version.
        target: KubeVersion,
        /// Oldest API server.
        api_server: KubeVersion,
    },
    /// More than one minor version in one step (or a major version change).
    MoreThanOneMinor {
        /// Kubelet version now.
        from: KubeVersion,
        /// Requested version.
        to: KubeVersion,
    },
    /// The requested version is older than the running one.
    Downgrade {
        /// Kubelet version now.
        from: KubeVersion,
        /// Requested version.
        to: KubeVersion,
    },
    /// Control-plane nodes whose kubelets are older than the target (or unknown) go first.
    ControlPlaneFirst {
        /// Requested version.
        target: KubeVersion,
        /// The first few such control-plane nodes, by name.
        behind: Vec<NodeName>,
        /// How many there are in all.
        total: usize,
    },
    /// A control-plane node would go a minor further while the control plane is not all at the
    /// minor before.
    ControlPlaneNotInStep {
        /// Requested version.
        target: KubeVersion,
        /// The oldest version on the control plane.
        floor: KubeVersion,
    },
    /// Kubelets that would end more than three minors behind the new kube-apiserver.
    KubeletsTooFarBehind {
        /// Requested version.
        target: KubeVersion,
        /// The first few such nodes, by name.
        behind: Vec<NodeName>,
        /// How many there are in all.
        total: usize,
    },
    /// `kubeadm upgrade node` on a control-plane node before any kube-apiserver runs the target.
    ApplyFirst {
        /// Requested version.
        target: KubeVersion,
    },
    /// `kubeadm upgrade apply` asked of a worker.
    ApplyOnWorker,
}

impl fmt::Display for SkewViolation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SkewViolation::InvalidTarget { version } => {
                write!(f, "version skew: {version:?} is not a Kubernetes version")
            }
            SkewViolation::UnknownApiServerVersion => {
                f.write_str("version skew: API server version unknown")
            }
            SkewViolation::UnknownKubeletVersion => {
                f.write_str("version skew: kubelet version of the node unknown")
            }
            SkewViolation::NewerThanApiServer { target, api_server } => write!(
                f,
                "version skew: kubelet {} would be newer than API server {}",
                target.short(),
                api_server.short()
            ),
            SkewViolation::ControlPlaneTooFarAhead { target, api_server } => write!(
                f,
                "version skew: control plane {} would be more than one minor ahead of API server {}",
                target.short(),
                api_server.short()
            ),
            SkewViolation::MoreThanOneMinor { from, to } => write!(
                f,
                "version skew: {from} to {to} skips a minor version (one minor at a time)"
            ),
            SkewViolation::Downgrade { from, to } => {
                write!(
                    f,
                    "version skew: {to} would downgrade the kubelet from {from}"
                )
            }
            SkewViolation::ControlPlaneFirst {
                target,
                behind,
                total,
            } => write!(
                f,
                "version skew: control-plane nodes first ({} not at {target} yet)",
                list_with_more(behind, *total)
            ),
            SkewViolation::ControlPlaneNotInStep { target, floor } => write!(
                f,
                "version skew: the control plane moves one minor at a time ({floor} still runs \
                 on it, {target} would be two minors ahead)"
            ),
            SkewViolation::KubeletsTooFarBehind {
                target,
                behind,
                total,
            } => write!(
                f,
                "version skew: kubelets of {} would be more than {KUBELET_MAX_MINORS_BEHIND} \
                 minors behind kube-apiserver {}; upgrade them first",
                list_with_more(behind, *total),
                target.short()
            ),
            SkewViolation::ApplyFirst { target } => write!(
                f,
                "kubeadm: `kubeadm upgrade apply v{target}` must run on the first control-plane \
                 node before `kubeadm upgrade node`"
            ),
            SkewViolation::ApplyOnWorker => {
                f.write_str("kubeadm: `kubeadm upgrade apply` runs on control-plane nodes only")
            }
        }
    }
}

/// Every violation of upgrading `node` to `target` with `step` in a cluster at `versions`.
pub(crate) fn check(
    versions: &ClusterVersions,
    node: &NodeState,
    target: &str,
    step: KubeadmStep,
) -> Vec<SkewViolation> {
    let Ok(target) = target.parse::<KubeVersion>() else {
        return vec![SkewViolation::InvalidTarget {
            version: target.to_owned(),
        }];
    };
    let mut violations = Vec::new();
    match node.kubelet_version {
        None => violations.push(SkewViolation::UnknownKubeletVersion),
        Some(from) if target < from => {
            violations.push(SkewViolation::Downgrade { from, to: target });
        }
        Some(from) if target.major != from.major || target.minor > from.minor + 1 => {
            violations.push(SkewViolation::MoreThanOneMinor { from, to: target });
        }
        Some(_) => {}
    }
    let Some(api) = versions.api_server_min() else {
        violations.push(SkewViolation::UnknownApiServerVersion);
        return violations;
    };
    if node.control_plane {
        if target.minor_version() > (api.major, api.minor + 1) {
            violations.push(SkewViolation::ControlPlaneTooFarAhead {
                target,
                api_server: api,
            });
        }
        if let Some(floor) = versions.control_plane_floor()
            && target.minor_version() > (floor.major, floor.minor + 1)
        {
            violations.push(SkewViolation::ControlPlaneNotInStep { target, floor });
        }
        let oldest_allowed = (
            target.major,
            target.minor.saturating_sub(KUBELET_MAX_MINORS_BEHIND),
        );
        let behind = versions.kubelets_below(oldest_allowed);
        if !behind.is_empty() {
            violations.push(SkewViolation::KubeletsTooFarBehind {
                target,
                total: behind.len(),
                behind: behind.into_iter().take(LISTED).collect(),
            });
        }
        if step == KubeadmStep::Node && versions.api_server_max().is_none_or(|max| max < target) {
            violations.push(SkewViolation::ApplyFirst { target });
        }
    } else {
        if step == KubeadmStep::Apply {
            violations.push(SkewViolation::ApplyOnWorker);
        }
        if target.minor_version() > api.minor_version() {
            violations.push(SkewViolation::NewerThanApiServer {
                target,
                api_server: api,
            });
        }
        let behind: Vec<&str> = versions
            .control_plane
            .iter()
            .filter(|cp| cp.kubelet.is_none_or(|v| v < target))
            .map(|cp| cp.node.as_str())
            .collect();
        if !behind.is_empty() {
            violations.push(SkewViolation::ControlPlaneFirst {
                target,
                total: behind.len(),
                behind: behind
                    .iter()
                    .take(LISTED)
                    .map(|n| (*n).to_owned())
                    .collect(),
            });
        }
    }
    violations
}
