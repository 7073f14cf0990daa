//! The Kubernetes versions a cluster runs, as the version skew policy needs them: every kubelet
//! (`status.nodeInfo.kubeletVersion`) and, on each control-plane node, the versions of its static
//! kube-apiserver, kube-controller-manager and kube-scheduler, read from their mirror pods'
//! image tags in `kube-system` (as kubeadm deploys them).
//!
//! [`ClusterVersions::problems`] checks the current state against the upstream skew policy:
//! - the newest and oldest kube-apiserver are within one minor;
//! - a kubelet is never newer than the kube-apiserver it talks to, and at most three minors
//!   older than the oldest: on a control-plane node that is the kube-apiserver beside it (kubeadm
//!   points a control-plane kubelet at its local API server, `ControlPlaneKubeletLocalMode`,
//!   which is how its documented upgrade — the first control-plane node's kubelet right after
//!   `kubeadm upgrade apply` — keeps the policy), elsewhere the oldest;
//! - a kube-controller-manager or kube-scheduler is never newer than the kube-apiserver beside it,
//!   and at most one minor older than the newest kube-apiserver.

use std::fmt;

use crate::model::NodeName;
use crate::policy::KubeVersion;
use crate::scheduler::{ControlPlanePod, NodeState};

/// How many minors a kubelet may be older than the oldest kube-apiserver.
pub const KUBELET_MAX_MINORS_BEHIND: u32 = 3;

/// The `component` label of kubeadm's API server pod.
pub const API_SERVER: &str = "kube-apiserver";
/// The `component` label of kubeadm's controller-manager pod.
pub const CONTROLLER_MANAGER: &str = "kube-controller-manager";
/// The `component` label of kubeadm's scheduler pod.
pub const SCHEDULER: &str = "kube-scheduler";

/// The version of an image reference's tag: `registry.k8s.io/kube-apiserver:v1.31.4` → 1.31.4
/// (a digest after the tag is ignored).
pub fn image_version(image: &str) -> Option<KubeVersion> {
    let without_digest = image.split('@').next()?;
    let name = without_digest.rsplit('/').next()?;
    let (_, tag) = name.rsplit_once(':')?;
    tag.parse().ok()
}

/// One control-plane node's versions.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ControlPlaneVersions {
    /// The node.
    pub node: NodeName,
    /// Its kubelet.
    pub kubelet: Option<KubeVersion>,
    /// Its static kube-apiserver.
    pub api_server: Option<KubeVersion>,
    /// Its static kube-controller-manager.
    pub controller_manager: Option<KubeVersion>,
    /// Its static kube-scheduler.
    pub scheduler: Option<KubeVersion>,
}

impl ControlPlaneVersions {
    fn of(node: &NodeState) -> Self {
        let component = |name: &str| {
            node.control_plane_pods
                .iter()
                .find(|p| p.component == name)
                .and_then(|p: &ControlPlanePod| p.version)
        };
        ControlPlaneVersions {
            node: node.name.clone(),
            kubelet: node.kubelet_version,
            api_server: component(API_SERVER),
            controller_manager: component(CONTROLLER_MANAGER),
            scheduler: component(SCHEDULER),
        }
    }

    /// The oldest of its kubelet and static control-plane components.
    pub fn oldest(&self) -> Option<KubeVersion> {
        [
            self.kubelet,
            self.api_server,
            self.controller_manager,
            self.scheduler,
        ]
        .into_iter()
        .flatten()
        .min()
    }
}

/// Every version the skew policy looks at, across the cluster.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ClusterVersions {
    /// Control-plane nodes, by name.
    pub control_plane: Vec<ControlPlaneVersions>,
    /// Every node's kubelet (control-plane nodes too), by node name.
    pub kubelets: Vec<(NodeName, Option<KubeVersion>)>,
    /// The API server's own `/version`, used when no static kube-apiserver pod tells (a managed
    /// control plane).
    pub reported_api_server: Option<KubeVersion>,
}

impl ClusterVersions {
    /// The versions of `nodes`; `reported_api_server` is what the API server's `/version` says.
    pub fn of(nodes: &[NodeState], reported_api_server: Option<KubeVersion>) -> Self {
        let mut control_plane: Vec<ControlPlaneVersions> = nodes
            .iter()
            .filter(|n| n.control_plane)
            .map(ControlPlaneVersions::of)
            .collect();
        control_plane.sort_by(|a, b| a.node.cmp(&b.node));
        let mut kubelets: Vec<(NodeName, Option<KubeVersion>)> = nodes
            .iter()
            // FleetLock hosts that are not nodes run no kubelet.
            .filter(|n| crate::fleetlock::host_of_key(&n.name).is_none())
            .map(|n| (n.name.clone(), n.kubelet_version))
            .collect();
        kubelets.sort();
        ClusterVersions {
            control_plane,
            kubelets,
            reported_api_server,
        }
    }

    fn api_servers(&self) -> impl Iterator<Item = KubeVersion> + '_ {
        self.control_plane.iter().filter_map(|c| c.api_server)
    }

    /// Whether every control-plane node's kube-apiserver version is known from its static pod.
    fn api_servers_all_known(&self) -> bool {
        !self.control_plane.is_empty() && self.control_plane.iter().all(|c| c.api_server.is_some())
    }

    /// The oldest kube-apiserver: of the static pods, and the reported `/version` too unless
    /// every control-plane node's static pod tells.
    pub fn api_server_min(&self) -> Option<KubeVersion> {
        let reported = (!self.api_servers_all_known())
            .then_some(self.reported_api_server)
            .flatten();
        self.api_servers().chain(reported).min()
    }

    /// The newest kube-apiserver: of the static pods, else the reported `/version`.
    pub fn api_server_max(&self) -> Option<KubeVersion> {
        self.api_servers().max().or(self.reported_api_server)
    }

    /// The oldest version anywhere on the control plane (kubelets and static components).
    pub fn control_plane_floor(&self) -> Option<KubeVersion> {
        let reported = (!self.api_servers_all_known())
            .then_some(self.reported_api_server)
            .flatten();
        self.control_plane
            .iter()
            .filter_map(ControlPlaneVersions::oldest)
            .chain(reported)
            .min()
    }

    /// Kubelets known to be older than `minor`, by node name.
    pub fn kubelets_below(&self, minor: (u32, u32)) -> Vec<NodeName> {
        self.kubelets
            .iter()
            .filter(|(_, v)| v.is_some_and(|v| v.minor_version() < minor))
            .map(|(n, _)| n.clone())
            .collect()
    }

    /// Every way the cluster breaks the skew policy now.
    pub fn problems(&self) -> Vec<SkewProblem> {
        let mut problems = Vec::new();
        let (Some(min), Some(max)) = (self.api_server_min(), self.api_server_max()) else {
            return problems;
        };
        if max.minor_version() > (min.major, min.minor + 1) {
            problems.push(SkewProblem::ApiServersApart {
                oldest: min,
                newest: max,
            });
        }
        for (node, kubelet) in &self.kubelets {
            let Some(kubelet) = *kubelet else { continue };
            let talks_to = self
                .control_plane
                .iter()
                .find(|c| c.node == *node)
                .and_then(|c| c.api_server)
                .unwrap_or(min);
            if kubelet.minor_version() > talks_to.minor_version() {
                problems.push(SkewProblem::KubeletNewer {
                    node: node.clone(),
                    kubelet,
                    api_server: talks_to,
                });
            } else if kubelet.major != min.major
                || kubelet.minor + KUBELET_MAX_MINORS_BEHIND < min.minor
            {
                problems.push(SkewProblem::KubeletTooOld {
                    node: node.clone(),
                    kubelet,
                    api_server: min,
                });
            }
        }
        for cp in &self.control_plane {
            for (component, version) in [
                (CONTROLLER_MANAGER, cp.controller_manager),
                (SCHEDULER, cp.scheduler),
            ] {
                let Some(version) = version else { continue };
                let beside = cp.api_server.unwrap_or(min);
                if version.minor_version() > beside.minor_version()
                    || version.major != max.major
                    || version.minor + 1 < max.minor
                {
                    problems.push(SkewProblem::ComponentOutOfStep {
                        node: cp.node.clone(),
                        component,
                        version,
                        api_server: beside,
                        newest_api_server: max,
                    });
                }
            }
        }
        problems
    }
}

/// A way a cluster breaks the version skew policy.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SkewProblem {
    /// The kube-apiservers are more than one minor apart.
    ApiServersApart {
        /// The oldest.
        oldest: KubeVersion,
        /// The newest.
        newest: KubeVersion,
    },
    /// A kubelet newer than the kube-apiserver it talks to.
    KubeletNewer {
        /// Its node.
        node: NodeName,
        /// Its version.
        kubelet: KubeVersion,
        /// The kube-apiserver it talks to.
        api_server: KubeVersion,
    },
    /// A kubelet more than three minors older than the oldest kube-apiserver.
    KubeletTooOld {
        /// Its node.
        node: NodeName,
        /// Its version.
        kubelet: KubeVersion,
        /// The oldest kube-apiserver.
        api_server: KubeVersion,
    },
    /// A controller-manager or scheduler newer than the API server beside it, or more than one
    /// minor older than the newest.
    ComponentOutOfStep {
        /// Its node.
        node: NodeName,
        /// `kube-controller-manager` or `kube-scheduler`.
        component: &'static str,
        /// Its version.
        version: KubeVersion,
        /// The kube-apiserver on the same node.
        api_server: KubeVersion,
        /// The newest kube-apiserver.
        newest_api_server: KubeVersion,
    },
}

impl fmt::Display for SkewProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SkewProblem::ApiServersApart { oldest, newest } => write!(
                f,
                "kube-apiservers {oldest} and {newest} are more than one minor apart"
            ),
            SkewProblem::KubeletNewer {
                node,
                kubelet,
                api_server,
            } => write!(
                f,
                "kubelet {kubelet} on {node} is newer than kube-apiserver {api_server}"
            ),
            SkewProblem::KubeletTooOld {
                node,
                kubelet,
                api_server,
            } => write!(
                f,
                "kubelet {kubelet} on {node} is more than {KUBELET_MAX_MINORS_BEHIND} minors older \
                 than kube-apiserver {api_server}"
            ),
            SkewProblem::ComponentOutOfStep {
                node,
                component,
                version,
                api_server,
                newest_api_server,
            } => write!(
                f,
                "{component} {version} on {node} is out of step with kube-apiserver {api_server} \
                 (newest {newest_api_server}): never newer, at most one minor older"
            ),
        }
    }
}
