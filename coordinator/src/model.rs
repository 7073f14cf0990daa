//! Domain types shared by the scheduler, the slot ledger, the drain engine and the gRPC edge.
//!
//! They carry no I/O. Times are explicit `jiff::Timestamp`s passed in by the caller, never read
//! from the clock here.

use std::fmt;

use jiff::Timestamp;
use serde::{Deserialize, Serialize};

/// The name of a Kubernetes Node.
pub type NodeName = String;

/// A monotonically increasing fencing token. Every call after a grant carries it; a call with a
/// token other than the slot's current one is refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct FencingToken(pub u64);

impl fmt::Display for FencingToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// One concrete maintenance operation on a node.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "camelCase")]
pub enum Operation {
    /// Reboot the node.
    Reboot,
    /// Restart the kubelet (and nothing else).
    KubeletRestart,
    /// Upgrade OS packages, then reboot if the upgrade requires it.
    #[serde(rename_all = "camelCase")]
    PackageUpgrade {
        /// Only security updates.
        security_only: bool,
        /// Reboot afterwards when the upgrade leaves the node needing one.
        reboot_if_required: bool,
        /// Exact `(name, version)` pins; empty means every pending upgrade the policy allows.
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        packages: Vec<(String, String)>,
    },
    /// Move the kubelet to this version (one minor at a time).
    #[serde(rename_all = "camelCase")]
    KubernetesUpgrade {
        /// Target version, e.g. `1.33.2`.
        version: String,
    },
}

impl Operation {
    /// Whether the operation may reboot the node (then the boot id must change before release).
    pub fn may_reboot(&self) -> bool {
        match self {
            Operation::Reboot => true,
            Operation::KubeletRestart | Operation::KubernetesUpgrade { .. } => false,
            Operation::PackageUpgrade {
                reboot_if_required, ..
            } => *reboot_if_required,
        }
    }

    /// Short name for logs, events and metrics labels.
    pub fn name(&self) -> &'static str {
        match self {
            Operation::Reboot => "reboot",
            Operation::KubeletRestart => "kubelet-restart",
            Operation::PackageUpgrade { .. } => "package-upgrade",
            Operation::KubernetesUpgrade { .. } => "kubernetes-upgrade",
        }
    }
}

/// Who asked for maintenance; manual on-call requests go first.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum Origin {
    /// An on-call engineer (`rota.dev/maintenance-requested` annotation or `rotactl`).
    Manual,
    /// The node's agent, from what it detected.
    Agent,
}

/// A queued request for a slot.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SlotRequest {
    /// The node to maintain.
    pub node: NodeName,
    /// What to do.
    pub operation: Operation,
    /// Who asked.
    pub origin: Origin,
    /// When it was first queued (FIFO order within a priority class).
    pub requested_at: Timestamp,
    /// Not to be admitted before this time (back-off after a drain that could not finish).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub not_before: Option<Timestamp>,
}

/// Where a node's slot is in its life.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum SlotPhase {
    /// Admitted; the coordinator cordons and drains the node.
    Draining,
    /// Drained; the agent performs the operation.
    Granted,
    /// The agent reported completion; the coordinator checks the node's health.
    Verifying,
    /// Maintenance failed; capacity stays held until the node recovers or a human releases it.
    Failed,
}

impl SlotPhase {
    /// Stable lower-case name.
    pub fn as_str(self) -> &'static str {
        match self {
            SlotPhase::Draining => "draining",
            SlotPhase::Granted => "granted",
            SlotPhase::Verifying => "verifying",
            SlotPhase::Failed => "failed",
        }
    }
}

/// A held maintenance slot: a lease with a fencing token.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Slot {
    /// The node holding it.
    pub node: NodeName,
    /// The operation it was granted for.
    pub operation: Operation,
    /// Who asked for it.
    pub origin: Origin,
    /// Its fencing token.
    pub token: FencingToken,
    /// Its phase.
    pub phase: SlotPhase,
    /// When it was admitted.
    pub admitted_at: Timestamp,
    /// When the phase last changed.
    pub phase_since: Timestamp,
    /// Lease expiry; renewed by the agent. Expiry alone never frees capacity.
    pub lease_expires_at: Timestamp,
    /// Boot id when the slot was admitted, to tell that a reboot happened.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub boot_id_before: Option<String>,
    /// Whether rota cordoned the node (so that only then it uncordons it).
    pub cordoned_by_rota: bool,
}

/// What installing a pending package implies for its node.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum Impact {
    /// Nothing beyond the package itself.
    None,
    /// A service (kubelet, container runtime) must restart.
    ServiceRestart,
    /// The node must reboot (kernel, libc, systemd).
    Reboot,
}

/// An OS package upgrade the agent found pending.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PendingPackage {
    /// Package name.
    pub name: String,
    /// Installed version.
    pub current_version: String,
    /// Version the upgrade would install.
    pub candidate_version: String,
    /// Whether the upgrade is a security update.
    pub security: bool,
    /// What installing it implies, when the agent could tell.
    pub impact: Option<Impact>,
}

/// The maintenance-relevant facts an agent reports about its node (`ReportFacts`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NodeFacts {
    /// Current boot id; a change tells that the node rebooted.
    pub boot_id: String,
    /// Running kernel release.
    pub kernel_running: String,
    /// Installed kernel releases.
    pub kernels_installed: Vec<String>,
    /// Whether a reboot is required.
    pub reboot_required: bool,
    /// Why a reboot is required (sentinel file, newer kernel, ...).
    pub reboot_reasons: Vec<String>,
    /// Pending package upgrades.
    pub pending_upgrades: Vec<PendingPackage>,
    /// Kubelet version the node runs.
    pub kubelet_version: String,
    /// Container runtime version.
    pub container_runtime_version: String,
    /// OS image name.
    pub os_image: String,
    /// Version of the reporting agent.
    pub agent_version: String,
    /// Detection problems; never read as "maintenance required".
    pub errors: Vec<String>,
}
