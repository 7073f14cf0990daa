//! The cluster checks around a Kubernetes upgrade rollout, as pure functions of what the
//! controller observed.
//!
//! - **Pre-flight**, before the first node of a rollout is asked for: every control-plane node
//!   Ready with its static pods Ready, the API server answering `/readyz`, no `kube-system` pod
//!   in `CrashLoopBackOff`, and the cluster inside the skew policy. A failure holds the pool with
//!   the reasons until a human pauses and resumes it.
//! - **Verification**, once every node of the pool reports the target: every kubelet at the
//!   target, every static kube-apiserver, controller-manager and scheduler of the pool's
//!   control-plane nodes running the target's image, every `kube-system` pod Ready.

use crate::policy::{KubeVersion, NamespacedName};
use crate::scheduler::{ControlPlanePod, NodeState};

use super::ClusterVersions;

/// What the controller observed about the cluster's health.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ClusterHealth {
    /// Why the API server's `/readyz` did not answer `ok`, when it did not.
    pub api_server_not_ready: Option<String>,
    /// `kube-system` pods with a container waiting in `CrashLoopBackOff`.
    pub crash_looping: Vec<NamespacedName>,
    /// `kube-system` pods that are not Ready (and not finished).
    pub not_ready: Vec<NamespacedName>,
}

/// Every reason the rollout may not start (empty: it may).
pub fn preflight(
    nodes: &[NodeState],
    versions: &ClusterVersions,
    health: &ClusterHealth,
) -> Vec<String> {
    let mut problems = Vec::new();
    for node in nodes.iter().filter(|n| n.control_plane) {
        if !node.ready {
            problems.push(format!("control-plane node {} is not Ready", node.name));
        }
        for pod in node.control_plane_pods.iter().filter(|p| !p.ready) {
            problems.push(format!(
                "static pod {} of control-plane node {} is not Ready",
                pod.pod, node.name
            ));
        }
    }
    if let Some(why) = &health.api_server_not_ready {
        problems.push(format!("the API server is not ready (/readyz): {why}"));
    }
    for pod in &health.crash_looping {
        problems.push(format!("{pod} is in CrashLoopBackOff"));
    }
    problems.extend(versions.problems().iter().map(ToString::to_string));
    problems
}

/// Every reason the pool's nodes are not verified at `target` (empty: verified).
pub fn verify(
    pool_nodes: &[&NodeState],
    target: KubeVersion,
    health: &ClusterHealth,
) -> Vec<String> {
    let mut problems = Vec::new();
    for node in pool_nodes {
        match node.kubelet_version {
            Some(v) if v == target => {}
            Some(v) => problems.push(format!("{} runs kubelet {v}, not {target}", node.name)),
            None => problems.push(format!("{} reports no kubelet version", node.name)),
        }
        for pod in node
            .control_plane_pods
            .iter()
            .filter(|p| p.component != ControlPlanePod::ETCD)
        {
            match pod.version {
                Some(v) if v == target => {}
                Some(v) => problems.push(format!("{} runs image {v}, not {target}", pod.pod)),
                None => problems.push(format!("{} runs an image of unknown version", pod.pod)),
            }
        }
    }
    for pod in &health.not_ready {
        problems.push(format!("{pod} is not Ready"));
    }
    problems
}
