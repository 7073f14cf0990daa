//! The `MaintenanceRecord` custom resource (`rota.dev/v1alpha1`): one durable record per
//! maintenance, written by the coordinator, read by `rotactl history`/`report` and `kubectl`.
//!
//! Everything is in `spec`: a record is an account of what happened, written by one writer (the
//! leading coordinator), not a desired state that something reconciles.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube_derive::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// What one maintenance of one node did, phase by phase, and how it ended.
// Several printer columns share a type; clippy reads that as a repeated attribute.
#[allow(clippy::duplicated_attributes)]
#[derive(CustomResource, Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "rota.dev",
    version = "v1alpha1",
    kind = "MaintenanceRecord",
    plural = "maintenancerecords",
    shortname = "mrec",
    derive = "PartialEq",
    derive = "Default",
    crates(kube_core = "::kube_core"),
    doc = "One maintenance of one node, as rota performed it: who asked, what changed, every phase and the outcome.",
    printcolumn(
        name = "Node",
        type_ = "string",
        json_path = ".spec.node",
        description = "The node maintained"
    ),
    printcolumn(
        name = "Pool",
        type_ = "string",
        json_path = ".spec.pool",
        description = "The node's pool (MaintenancePolicy)"
    ),
    printcolumn(
        name = "Operation",
        type_ = "string",
        json_path = ".spec.operation",
        description = "What was done"
    ),
    printcolumn(
        name = "Outcome",
        type_ = "string",
        json_path = ".spec.outcome",
        description = "How it ended (InProgress while the slot is held)"
    ),
    printcolumn(
        name = "Origin",
        type_ = "string",
        json_path = ".spec.origin",
        description = "schedule (the node's agent) or manual (a human)"
    ),
    printcolumn(
        name = "Token",
        type_ = "integer",
        json_path = ".spec.token",
        description = "The slot's fencing token",
        priority = 1
    ),
    printcolumn(
        name = "Started",
        type_ = "date",
        json_path = ".spec.phases.admitted",
        description = "When the slot was admitted"
    ),
    printcolumn(
        name = "Duration",
        type_ = "string",
        json_path = ".spec.duration",
        description = "From admission to the end"
    ),
    printcolumn(
        name = "Packages",
        type_ = "integer",
        json_path = ".spec.packagesChangedCount",
        description = "Packages the operation changed",
        priority = 1
    )
)]
#[serde(rename_all = "camelCase")]
pub struct MaintenanceRecordSpec {
    /// The node.
    pub node: String,
    /// The node's pool (MaintenancePolicy) when the slot was admitted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pool: Option<String>,
    /// The operation: `reboot`, `kubelet-restart`, `package-upgrade`, `kubernetes-upgrade`.
    pub operation: String,
    /// The operation's detail, e.g. `target 1.33.2` or `security updates only; reboot if
    /// required`.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub operation_detail: String,
    /// Who asked.
    pub origin: RecordOrigin,
    /// For a manual request: the field manager that set the `rota.dev/maintenance-requested`
    /// annotation, from the Node's `metadata.managedFields` (`kubectl-annotate`, `rotactl`,
    /// ...). Empty when it could not be read (e.g. a failover between request and admission).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub requested_by: String,
    /// The slot's fencing token.
    pub token: i64,
    /// When each phase happened.
    #[serde(default)]
    pub phases: RecordPhases,
    /// Pods the drain evicted.
    #[serde(default)]
    pub pods_evicted: i32,
    /// Their `namespace/name` (at most [`super::MAX_LISTED`]).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub evicted_pods: Vec<String>,
    /// The node before the operation (at admission).
    #[serde(default)]
    pub before: NodeVersions,
    /// The node after the operation (at verification or failure).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub after: Option<NodeVersions>,
    /// Package upgrades pending on the node at admission (what the agent reported), for
    /// operations that change packages.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub pending_packages: Vec<PackageChange>,
    /// Packages the operation changed, as the agent reported them, with the version before and
    /// whether a security source offered it (from the pending upgrades at admission).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub packages_changed: Vec<PackageChange>,
    /// How many packages the operation changed (all of them, even beyond the list's bound).
    #[serde(default)]
    pub packages_changed_count: i32,
    /// Whether the agent reported a reboot.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rebooted: Option<bool>,
    /// The etcd snapshot taken before a control-plane node was touched (its location), when
    /// one was.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub etcd_snapshot: Option<String>,
    /// How it ended; `InProgress` while the slot is held and not failed.
    pub outcome: RecordOutcome,
    /// Why: the message of the latest transition.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub reason: String,
    /// From admission to the end (`12m30s`), once it ended.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub duration: String,
}

/// Who asked for a maintenance.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum RecordOrigin {
    /// The node's agent found work to do and asked, within the pool's schedule.
    #[default]
    Schedule,
    /// A human (`rotactl`, or the `rota.dev/maintenance-requested` annotation).
    Manual,
    /// A FleetLock client (Zincati) asked to reboot its host.
    #[serde(rename = "fleetlock")]
    FleetLock,
    /// The pool's Kubernetes upgrade rollout (`upgrade.kubernetesVersion`).
    Rollout,
}

impl RecordOrigin {
    /// Stable lower-case name.
    pub fn as_str(self) -> &'static str {
        match self {
            RecordOrigin::Schedule => "schedule",
            RecordOrigin::Manual => "manual",
            RecordOrigin::Rollout => "rollout",
            RecordOrigin::FleetLock => "fleetlock",
        }
    }
}

/// How a maintenance ended.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
pub enum RecordOutcome {
    /// The slot is held (draining, granted, verifying).
    #[default]
    InProgress,
    /// Verified healthy; the slot was released.
    Succeeded,
    /// The maintenance failed; the slot stays held until the node recovers or a human releases
    /// it.
    Failed,
    /// It had failed, then the node became healthy and the slot was released.
    Recovered,
    /// The agent gave the slot back without performing the operation.
    Released,
    /// A human released the slot.
    ForceReleased,
    /// The drain could not finish: the slot was given back and the request queued again (the
    /// next admission is another record).
    DrainFailed,
    /// The Node object was deleted.
    NodeDeleted,
}

impl RecordOutcome {
    /// The CamelCase name, as in the resource.
    pub fn as_str(self) -> &'static str {
        match self {
            RecordOutcome::InProgress => "InProgress",
            RecordOutcome::Succeeded => "Succeeded",
            RecordOutcome::Failed => "Failed",
            RecordOutcome::Recovered => "Recovered",
            RecordOutcome::Released => "Released",
            RecordOutcome::ForceReleased => "ForceReleased",
            RecordOutcome::DrainFailed => "DrainFailed",
            RecordOutcome::NodeDeleted => "NodeDeleted",
        }
    }

    /// Whether the maintenance failed (also when the node recovered afterwards).
    pub fn is_failure(self) -> bool {
        matches!(self, RecordOutcome::Failed | RecordOutcome::Recovered)
    }
}

/// When each phase of a maintenance happened.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RecordPhases {
    /// The request was first queued.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub requested: Option<Time>,
    /// The scheduler admitted it (fencing token issued); cordon and drain began.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub admitted: Option<Time>,
    /// The drain finished.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub drained: Option<Time>,
    /// The slot was granted: the agent may act.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub granted: Option<Time>,
    /// The agent reported the operation done (successfully or not).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub completed: Option<Time>,
    /// The node was verified healthy and the slot released.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub verified: Option<Time>,
    /// The maintenance failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failed: Option<Time>,
    /// The slot ended (verified, recovered, released, given back, or the node deleted).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ended: Option<Time>,
}

/// What a node runs: kernel, kubelet, OS.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct NodeVersions {
    /// Kernel release (`status.nodeInfo.kernelVersion`, else the agent's report).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub kernel: String,
    /// Kubelet version (`status.nodeInfo.kubeletVersion`, else the agent's report).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub kubelet: String,
    /// OS image (`status.nodeInfo.osImage`, else the agent's report).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub os_image: String,
}

impl NodeVersions {
    /// Whether nothing is known.
    pub fn is_empty(&self) -> bool {
        self.kernel.is_empty() && self.kubelet.is_empty() && self.os_image.is_empty()
    }
}

/// A package's move from one version to another.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PackageChange {
    /// Package name.
    pub name: String,
    /// Version before (empty when the package was not known pending: newly installed, or no
    /// facts at admission).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub from: String,
    /// Version after (for a pending package: the candidate).
    pub to: String,
    /// Whether a security source offered the new version.
    #[serde(default)]
    pub security: bool,
}
