//! The `MaintenancePolicy` custom resource (`rota.dev/v1alpha1`), as users write it.
//!
//! Fields the API server cannot check on its own (durations, time zones, HH:MM times, label
//! selectors, percentages, regular expressions) are plain strings here; [`super::validate`] turns a
//! spec into a [`super::ValidatedPolicy`] or explains every problem. Keeping them as strings means
//! a bad value never makes the whole object undecodable for the coordinator's watch.

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, LabelSelector};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube_derive::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::model::SnapshotBefore;

/// How one node pool is maintained: which nodes, how many at once, when, and how.
// Several printer columns share a type; clippy reads that as a repeated attribute.
#[allow(clippy::duplicated_attributes)]
#[derive(CustomResource, Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "rota.dev",
    version = "v1alpha1",
    kind = "MaintenancePolicy",
    plural = "maintenancepolicies",
    shortname = "mp",
    status = "MaintenancePolicyStatus",
    derive = "PartialEq",
    crates(kube_core = "::kube_core"),
    doc = "How rota maintains one pool of nodes: which nodes, how many at once, when, and how.",
    printcolumn(
        name = "Paused",
        type_ = "boolean",
        json_path = ".spec.paused",
        description = "Whether the rollout is paused"
    ),
    printcolumn(
        name = "MaxUnavailable",
        type_ = "string",
        json_path = ".spec.maxUnavailable",
        description = "Most nodes of the pool unavailable at once"
    ),
    printcolumn(
        name = "Nodes",
        type_ = "integer",
        json_path = ".status.nodes",
        description = "Nodes selected by the policy"
    ),
    printcolumn(
        name = "Done",
        type_ = "integer",
        json_path = ".status.done",
        description = "Nodes maintained in the current rollout"
    ),
    printcolumn(
        name = "InProgress",
        type_ = "integer",
        json_path = ".status.inProgress",
        description = "Nodes holding a maintenance slot"
    ),
    printcolumn(
        name = "Waiting",
        type_ = "integer",
        json_path = ".status.waiting",
        description = "Queued nodes not yet admitted"
    ),
    printcolumn(
        name = "Failed",
        type_ = "integer",
        json_path = ".status.failed",
        description = "Nodes whose maintenance failed"
    ),
    printcolumn(
        name = "Valid",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Valid\")].status",
        description = "Whether the current spec is valid",
        priority = 1
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
pub struct MaintenancePolicySpec {
    /// Nodes of the pool. An empty selector selects every node. A node selected by two policies
    /// is not maintained until the overlap is fixed.
    #[serde(default)]
    pub node_selector: LabelSelector,
    /// Most nodes of the pool that may be unavailable at once (holding a slot, NotReady, or
    /// cordoned by anyone): a count (at least 1) or a percentage such as `"20%"` of the pool's
    /// nodes, rounded down but never below 1. Default 1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_unavailable: Option<IntOrString>,
    /// When maintenance may start. Empty: always. Manual requests (`rotactl reboot`, the
    /// `rota.dev/maintenance-requested` annotation) skip windows, but not blackouts.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub windows: Vec<MaintenanceWindow>,
    /// Periods in which no maintenance starts, even inside a window.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub blackouts: Vec<Blackout>,
    /// Stop admitting new nodes; nodes already in maintenance finish.
    #[serde(default)]
    pub paused: bool,
    /// What the agents upgrade.
    #[serde(default)]
    pub upgrade: UpgradeSpec,
    /// When and how nodes reboot.
    #[serde(default)]
    pub reboot: RebootSpec,
    /// How nodes are drained before maintenance.
    #[serde(default)]
    pub drain: DrainSpec,
    /// What holds maintenance back.
    #[serde(default)]
    pub blockers: BlockersSpec,
    /// What a healthy node looks like after maintenance.
    #[serde(default)]
    pub health: HealthSpec,
    /// Failed nodes after which the pool's rollout pauses itself (circuit breaker). 0 turns the
    /// breaker off. Default 1: stop at the first failure.
    #[serde(default = "default_max_failures")]
    pub max_failures: i32,
    /// The control-plane quorum guard, which holds whatever `maxUnavailable` says.
    #[serde(default, skip_serializing_if = "ControlPlaneSpec::is_default")]
    pub control_plane: ControlPlaneSpec,
    /// FleetLock clients (Zincati) that are not Kubernetes nodes, admitted into this pool.
    #[serde(default, skip_serializing_if = "FleetLockSpec::is_empty")]
    pub fleet_lock: FleetLockSpec,
    /// Snapshots of stacked etcd members before their nodes are maintained.
    #[serde(default, skip_serializing_if = "EtcdSpec::is_default")]
    pub etcd: EtcdSpec,
}

/// Before a control-plane node with a stacked etcd member (kubeadm's default layout) is
/// maintained, its agent saves an etcd snapshot (`etcdctl snapshot save`) and verifies it; the
/// coordinator admits the node only once the agent reported a verified snapshot younger than
/// `maxSnapshotAge`. Nodes with an external etcd are skipped.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct EtcdSpec {
    /// Which operations need a snapshot: `allOperations` (default: a kernel reboot of an etcd
    /// member too), `kubernetesUpgrades`, or `never`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub snapshot_before: Option<SnapshotBefore>,
    /// How old a snapshot may be and still count, e.g. `30m`. Default `1h`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_snapshot_age: Option<String>,
}

impl EtcdSpec {
    fn is_default(&self) -> bool {
        self == &Self::default()
    }
}

/// FleetLock clients of the pool beyond its Kubernetes nodes. A FleetLock client whose id
/// names a Node takes that Node's slot (in the Node's pool); hosts that are not Kubernetes
/// nodes (a bastion, an etcd or storage machine on Fedora CoreOS or Flatcar) are listed here and
/// count with the pool's nodes against `maxUnavailable`, under the same windows, blackouts,
/// pause and circuit breaker. Their group is the policy's name.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct FleetLockSpec {
    /// FleetLock ids (Zincati: the app-specific machine id it sends) of hosts that are not
    /// Kubernetes nodes.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub hosts: Vec<String>,
}

impl FleetLockSpec {
    fn is_empty(&self) -> bool {
        self.hosts.is_empty()
    }
}

/// How many control-plane nodes may be unavailable at once. The guard holds across pools: the
/// smallest `controlPlane.maxUnavailable` of the policies that select control-plane nodes applies
/// to the whole cluster, and stacked etcd members never go below quorum whatever it says.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ControlPlaneSpec {
    /// Most control-plane nodes unavailable at once in the whole cluster (holding a slot,
    /// NotReady, or cordoned by anyone). At least 1; default 1. With m stacked etcd members, at
    /// most (m-1)/2 of them are ever down, whatever this says.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_unavailable: Option<i32>,
    /// Let a member of an etcd cluster with fewer than three members be maintained (one at a
    /// time, only when the other member is healthy). Such an etcd has no quorum to spare: the
    /// API server is unavailable while the member is down. Default false: those nodes wait, with
    /// a reason that says so.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub allow_etcd_quorum_loss: bool,
}

impl ControlPlaneSpec {
    fn is_default(&self) -> bool {
        self == &Self::default()
    }
}

fn default_max_failures() -> i32 {
    1
}

impl Default for MaintenancePolicySpec {
    fn default() -> Self {
        Self {
            node_selector: LabelSelector::default(),
            max_unavailable: None,
            windows: Vec::new(),
            blackouts: Vec::new(),
            paused: false,
            upgrade: UpgradeSpec::default(),
            reboot: RebootSpec::default(),
            drain: DrainSpec::default(),
            blockers: BlockersSpec::default(),
            health: HealthSpec::default(),
            max_failures: default_max_failures(),
            control_plane: ControlPlaneSpec::default(),
            fleet_lock: FleetLockSpec::default(),
            etcd: EtcdSpec::default(),
        }
    }
}

/// A weekly maintenance window in a time zone.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct MaintenanceWindow {
    /// Days on which the window starts, in the window's time zone. Empty: every day. A window
    /// that crosses midnight belongs to the day it starts on (Fri 22:00-02:00 is open Sat 01:00).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub days: Vec<Weekday>,
    /// Wall-clock start, `HH:MM` (24-hour).
    pub start: String,
    /// Wall-clock end, `HH:MM`, exclusive. An end at or before the start crosses midnight.
    pub end: String,
    /// IANA time zone, e.g. `Europe/Berlin`. Default `UTC`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub time_zone: Option<String>,
}

/// A day of the week.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum Weekday {
    /// Monday.
    Mon,
    /// Tuesday.
    Tue,
    /// Wednesday.
    Wed,
    /// Thursday.
    Thu,
    /// Friday.
    Fri,
    /// Saturday.
    Sat,
    /// Sunday.
    Sun,
}

/// A period in which no maintenance starts.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Blackout {
    /// Start, RFC 3339 (e.g. `2025-12-20T00:00:00Z`), inclusive.
    pub start: String,
    /// End, RFC 3339, exclusive.
    pub end: String,
    /// Why, shown to humans while it is active (e.g. "year-end freeze").
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub reason: String,
}

/// Which package upgrades the agents apply.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum UpgradeMode {
    /// No package upgrades (reboots and Kubernetes upgrades only).
    None,
    /// Security updates only.
    #[default]
    Security,
    /// Every pending update.
    All,
}

/// What the agents upgrade.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct UpgradeSpec {
    /// Which package upgrades to apply. Default `security`.
    #[serde(default)]
    pub mode: UpgradeMode,
    /// Packages never upgraded (held), on top of the holds of the nodes' package managers.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub holds: Vec<String>,
    /// Target kubelet version, e.g. `v1.33.2`; nodes move one minor version at a time,
    /// control-plane nodes first.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kubernetes_version: Option<String>,
}

/// Whether nodes reboot.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum RebootMode {
    /// Reboot when a sentinel says so or a newer kernel is installed.
    #[default]
    WhenRequired,
    /// Never reboot.
    Never,
}

/// When and how nodes reboot.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RebootSpec {
    /// Default `whenRequired`.
    #[serde(default)]
    pub mode: RebootMode,
    /// Absolute host paths whose existence means a reboot is required; an explicit empty list
    /// turns sentinel files off. Unset: the agent's `--sentinel` (by default
    /// `/var/run/reboot-required` and `/run/reboot-required`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sentinel_files: Option<Vec<String>>,
    /// A command run in the host (argv); exit status 0 means a reboot is required. Unset: the
    /// agent's `--sentinel-command` (by default none).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub sentinel_command: Vec<String>,
    /// The reboot command (argv) run in the host. Unset: the agent's `--reboot-command` (by
    /// default `systemctl reboot`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub command: Vec<String>,
}

/// How nodes are drained.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct DrainSpec {
    /// How long a drain may take before the slot is given back, e.g. `15m`. Must be positive;
    /// default `15m`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<String>,
    /// Grace period for evicted pods in seconds; -1 or unset uses each pod's own.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub grace_period_seconds: Option<i64>,
    /// Evict pods with emptyDir volumes (their data is lost).
    #[serde(default)]
    pub delete_empty_dir_data: bool,
    /// Delete pods that no controller manages (they are not recreated).
    #[serde(default)]
    pub force: bool,
    /// Only pods matching this selector are evicted; default all.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod_selector: Option<LabelSelector>,
    /// Back-off after a drain that could not finish.
    #[serde(default)]
    pub backoff: BackoffSpec,
}

/// Exponential back-off: the first retry waits `initial`, each next one twice as long, at most
/// `max`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct BackoffSpec {
    /// Default `1m`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub initial: Option<String>,
    /// Default `30m`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max: Option<String>,
}

/// What holds maintenance back.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct BlockersSpec {
    /// Firing Prometheus alerts block the whole pool.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prometheus: Option<PrometheusBlocker>,
    /// A node with a pod matching any of these selectors is not maintained. Each selector must
    /// have at least one requirement.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub pod_selectors: Vec<LabelSelector>,
}

/// Alerts from a Prometheus-compatible API block maintenance (kured's `--prometheus-url`).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PrometheusBlocker {
    /// Base URL, e.g. `http://prometheus.monitoring:9090`.
    pub url: String,
    /// Regular expression on alert names. By default matching alerts are ignored (kured's
    /// `--alert-filter-regexp`); with `alertFilterMatchOnly` only matching alerts block.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub alert_filter: Option<String>,
    /// Only alerts matching `alertFilter` block (kured's `--alert-filter-match-only`).
    #[serde(default)]
    pub alert_filter_match_only: bool,
}

/// What a healthy node looks like after maintenance.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct HealthSpec {
    /// How long the node may take to be healthy again, e.g. `15m`. Default `15m`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ready_timeout: Option<String>,
    /// DaemonSets (`namespace/name`) whose pod on the node must be Ready.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub required_daemon_sets: Vec<String>,
}

/// Progress of the pool's rollout, written by the coordinator.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct MaintenancePolicyStatus {
    /// The spec generation this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Nodes selected by the policy.
    #[serde(default)]
    pub nodes: i32,
    /// Nodes maintained in the current rollout.
    #[serde(default)]
    pub done: i32,
    /// Nodes holding a maintenance slot.
    #[serde(default)]
    pub in_progress: i32,
    /// Queued nodes not yet admitted.
    #[serde(default)]
    pub waiting: i32,
    /// Nodes whose maintenance failed (counted by the circuit breaker).
    #[serde(default)]
    pub failed: i32,
    /// Why queued nodes wait, one entry per kind of reason.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub waiting_reasons: Vec<WaitingReasonSummary>,
    /// `Valid`, `Paused`, `CircuitOpen`, `WindowOpen` (see [`super::conditions`]).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    /// The rollout of `upgrade.kubernetesVersion`, when the policy sets one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kubernetes_upgrade: Option<KubernetesUpgradeStatus>,
}

/// Where the pool's Kubernetes upgrade rollout is.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct KubernetesUpgradeStatus {
    /// The target version.
    pub target: String,
    /// `PreFlight`, `PreflightFailed` (the pool is held until it is paused and resumed),
    /// `Refused`, `ControlPlane`, `Workers`, `Verifying` or `Verified`.
    pub phase: String,
    /// What the phase waits for, or why it stopped.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub message: String,
}

/// How many queued nodes wait for one kind of reason.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct WaitingReasonSummary {
    /// Stable machine-readable kind, e.g. `WindowClosed`, `MaxUnavailable`, `PdbBudget`.
    pub reason: String,
    /// How many nodes wait for it.
    pub count: i32,
    /// Up to five of these nodes, the first in queue order, each with its reason in words.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub examples: BTreeMap<String, String>,
}
