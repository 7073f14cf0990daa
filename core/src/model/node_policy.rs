//! What a node's agent takes from its pool's `MaintenancePolicy`: which upgrades, which holds,
//! how to tell that a reboot is required, whether and how to reboot.
//!
//! The agent's own flags are defaults; a field set here overrides them. Fields the policy leaves
//! unset (`None`, an empty command) keep the agent's own value.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::policy::ValidatedPolicy;
use crate::policy::crd::{RebootMode, UpgradeMode};

use super::Operation;

/// The policy in force for one node, as the coordinator sends it to the node's agent
/// (`ReportFactsResponse.policy`, and with a grant `SlotStatus.policy`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NodePolicy {
    /// The `MaintenancePolicy`'s name (the pool's name).
    pub name: String,
    /// Which package upgrades the agent asks for and applies (`upgrade.mode`).
    pub upgrade_mode: UpgradeMode,
    /// Packages never upgraded, on top of the package manager's own holds (`upgrade.holds`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub holds: Vec<String>,
    /// Reboot sentinel files (`reboot.sentinelFiles`); `None`: the agent's own, an empty list:
    /// none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sentinel_files: Option<Vec<String>>,
    /// Sentinel command argv (`reboot.sentinelCommand`); empty: the agent's own.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub sentinel_command: Vec<String>,
    /// Reboot command argv (`reboot.command`); empty: the agent's own.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub reboot_command: Vec<String>,
    /// Whether the node reboots at all (`reboot.mode`).
    pub reboot_mode: RebootMode,
    /// Snapshots of a stacked etcd member before maintenance (`etcd`).
    #[serde(default)]
    pub etcd: EtcdSnapshotPolicy,
}

/// Which operations of a stacked-etcd control-plane node need a fresh verified etcd snapshot
/// before the coordinator admits them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum SnapshotBefore {
    /// Kubernetes upgrades only.
    KubernetesUpgrades,
    /// Every operation (a kernel reboot of an etcd member too).
    #[default]
    AllOperations,
    /// None: the cluster's etcd is backed up some other way.
    Never,
}

impl SnapshotBefore {
    /// Whether `operation` on a stacked-etcd control-plane node needs a snapshot first.
    pub fn covers(self, operation: &Operation) -> bool {
        match self {
            SnapshotBefore::AllOperations => true,
            SnapshotBefore::KubernetesUpgrades => {
                matches!(operation, Operation::KubernetesUpgrade { .. })
            }
            SnapshotBefore::Never => false,
        }
    }
}

/// The pool's etcd snapshot rule, as its agents need it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct EtcdSnapshotPolicy {
    /// Which operations need one.
    pub before: SnapshotBefore,
    /// How old a snapshot may be and still count, in seconds.
    pub max_age_seconds: u64,
}

impl EtcdSnapshotPolicy {
    /// The default `etcd.maxSnapshotAge`: one hour.
    pub const DEFAULT_MAX_AGE_SECONDS: u64 = 3600;

    /// Whether `operation` on a stacked-etcd control-plane node needs a snapshot first.
    pub fn covers(&self, operation: &Operation) -> bool {
        self.before.covers(operation)
    }
}

impl Default for EtcdSnapshotPolicy {
    fn default() -> Self {
        Self {
            before: SnapshotBefore::default(),
            max_age_seconds: Self::DEFAULT_MAX_AGE_SECONDS,
        }
    }
}

impl NodePolicy {
    /// What the agents of the pool `name` take from its validated policy.
    pub fn of(name: impl Into<String>, policy: &ValidatedPolicy) -> Self {
        NodePolicy {
            name: name.into(),
            upgrade_mode: policy.upgrade.mode,
            holds: policy.upgrade.holds.clone(),
            sentinel_files: policy.reboot.sentinel_files.clone(),
            sentinel_command: policy.reboot.sentinel_command.clone(),
            reboot_command: policy.reboot.command.clone(),
            reboot_mode: policy.reboot.mode,
            etcd: policy.etcd,
        }
    }

    /// Whether the policy lets a required reboot happen.
    pub fn reboots(&self) -> bool {
        self.reboot_mode != RebootMode::Never
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::{MaintenancePolicySpec, validate};

    fn spec(json: serde_json::Value) -> MaintenancePolicySpec {
        serde_json::from_value(json).expect("a spec")
    }

    #[test]
    fn every_agent_field_of_the_policy_is_carried() {
        let policy = validate(&spec(serde_json::json!({
            "upgrade": {"mode": "all", "holds": ["openssl"]},
            "reboot": {
                "mode": "never",
                "sentinelFiles": ["/run/needs-reboot"],
                "sentinelCommand": ["/usr/local/bin/needs-reboot", "--quiet"],
                "command": ["/sbin/shutdown", "-r", "now"],
            },
            "etcd": {"snapshotBefore": "kubernetesUpgrades", "maxSnapshotAge": "30m"},
        })))
        .expect("valid");
        let node = NodePolicy::of("workers", &policy);
        assert_eq!(
            node,
            NodePolicy {
                name: "workers".into(),
                upgrade_mode: UpgradeMode::All,
                holds: vec!["openssl".into()],
                sentinel_files: Some(vec!["/run/needs-reboot".into()]),
                sentinel_command: vec!["/usr/local/bin/needs-reboot".into(), "--quiet".into()],
                reboot_command: vec!["/sbin/shutdown".into(), "-r".into(), "now".into()],
                reboot_mode: RebootMode::Never,
                etcd: EtcdSnapshotPolicy {
                    before: SnapshotBefore::KubernetesUpgrades,
                    max_age_seconds: 1800,
                },
            }
        );
        assert!(!node.reboots());
    }

    #[test]
    fn what_the_policy_leaves_unset_stays_unset() {
        let policy = validate(&MaintenancePolicySpec::default()).expect("valid");
        let node = NodePolicy::of("default", &policy);
        assert_eq!(node.upgrade_mode, UpgradeMode::Security);
        assert_eq!(node.sentinel_files, None);
        assert!(node.sentinel_command.is_empty() && node.reboot_command.is_empty());
        assert!(node.holds.is_empty());
        assert!(node.reboots());
    }
}
