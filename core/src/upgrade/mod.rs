//! Kubernetes upgrades the kubeadm way, decided purely: which versions the cluster runs and
//! whether they keep the skew policy ([`versions`]), which step each node takes next towards a
//! pool's `upgrade.kubernetesVersion` ([`rollout`]), and the cluster checks before and after a
//! rollout ([`checks`]).

pub mod checks;
pub mod phase;
pub mod rollout;
pub mod versions;

pub use checks::{ClusterHealth, preflight, verify};
pub use phase::{Findings, Phase, RolloutState, advance, phase_before};
pub use rollout::{Refusal, Rollout, Step, is_minor_only, leads_to, next_version, plan};

pub use versions::{
    API_SERVER, CONTROLLER_MANAGER, ClusterVersions, ControlPlaneVersions,
    KUBELET_MAX_MINORS_BEHIND, SCHEDULER, SkewProblem, image_version,
};
