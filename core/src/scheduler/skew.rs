//! The Kubernetes version skew policy, for `KubernetesUpgrade` requests.
//!
//! - A kubelet is never newer than the API server (minor versions). The API server version is the
//!   oldest kube-apiserver in the cluster; a control-plane node's upgrade moves its own API server,
//!   so there the target may be one minor ahead of it, never more.
//! - One minor version at a time, never down.
//! - Control-plane nodes first: a worker waits until every control-plane kubelet runs at least the
//!   target version.

use std::fmt;

use crate::model::NodeName;
use crate::policy::KubeVersion;

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
        }
    }
}

/// Control-plane nodes and their kubelet versions, gathered once per decision.
#[derive(Debug, Default)]
pub(crate) struct ControlPlane<'a> {
    nodes: Vec<(&'a str, Option<KubeVersion>)>,
}

impl<'a> ControlPlane<'a> {
    pub(crate) fn new(nodes: &'a [NodeState]) -> Self {
        let mut nodes: Vec<_> = nodes
            .iter()
            .filter(|n| n.control_plane)
            .map(|n| (n.name.as_str(), n.kubelet_version))
            .collect();
        nodes.sort_unstable();
        Self { nodes }
    }

    /// Every violation of upgrading `node` to `target` (empty: allowed).
    pub(crate) fn check(
        &self,
        node: &NodeState,
        target: &str,
        api_server: Option<KubeVersion>,
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
        match api_server {
            None => violations.push(SkewViolation::UnknownApiServerVersion),
            Some(api) if node.control_plane => {
                if target.minor_version() > (api.major, api.minor + 1) {
                    violations.push(SkewViolation::ControlPlaneTooFarAhead {
                        target,
                        api_server: api,
                    });
                }
            }
            Some(api) => {
                if target.minor_version() > api.minor_version() {
                    violations.push(SkewViolation::NewerThanApiServer {
                        target,
                        api_server: api,
                    });
                }
            }
        }
        if !node.control_plane {
            let behind: Vec<&str> = self
                .nodes
                .iter()
                .filter(|(_, version)| version.is_none_or(|v| v < target))
                .map(|(name, _)| *name)
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
}
