//! What a slot is for: one concrete maintenance operation on one node.

use serde::{Deserialize, Serialize};

use super::PackagePin;

/// One concrete maintenance operation on a node.
///
/// Persisted by the coordinator (slot annotations) and by the agent (its state file on the
/// host); variants also read the kebab-case names earlier agents wrote.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "camelCase")]
pub enum Operation {
    /// Reboot the node.
    Reboot,
    /// Restart the kubelet (and nothing else).
    #[serde(alias = "kubelet-restart")]
    KubeletRestart,
    /// Upgrade OS packages, then reboot as `reboot` says.
    #[serde(rename_all = "camelCase", alias = "package-upgrade")]
    PackageUpgrade {
        /// Only security updates.
        security_only: bool,
        /// Whether to reboot afterwards. Also reads the `rebootIfRequired: bool` of earlier
        /// versions.
        #[serde(
            alias = "rebootIfRequired",
            alias = "reboot-if-required",
            deserialize_with = "UpgradeReboot::deserialize_or_legacy"
        )]
        reboot: UpgradeReboot,
        /// Exact versions; empty means every pending upgrade the policy allows.
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        packages: Vec<PackagePin>,
    },
    /// Move the node to this Kubernetes version the kubeadm way, one minor at a time: kubeadm
    /// first, then `kubeadm upgrade apply` (the first control-plane node) or `kubeadm upgrade
    /// node` (every other node), then the kubelet and kubectl.
    #[serde(rename_all = "camelCase", alias = "kubernetes-upgrade")]
    KubernetesUpgrade {
        /// Target version: exact (`1.33.2`), or a minor (`1.33`) for a step of a longer walk,
        /// which the node resolves to the newest patch its package source offers.
        version: String,
        /// Which kubeadm upgrade the node runs.
        #[serde(default, skip_serializing_if = "KubeadmStep::is_node")]
        kubeadm: KubeadmStep,
    },
}

/// Which `kubeadm upgrade` a Kubernetes upgrade runs on its node.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum KubeadmStep {
    /// `kubeadm upgrade plan` then `kubeadm upgrade apply vX.Y.Z`: the first control-plane node
    /// of a version, which moves the cluster's configuration and its own control plane.
    Apply,
    /// `kubeadm upgrade node`: every other control-plane node, and workers.
    #[default]
    Node,
}

impl KubeadmStep {
    /// Whether this is the default step (`node`), which is not written.
    pub fn is_node(&self) -> bool {
        *self == KubeadmStep::Node
    }
}

/// Whether a package upgrade reboots the node afterwards.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum UpgradeReboot {
    /// When the upgrade leaves the node needing a reboot (sentinels, a newer kernel).
    #[serde(alias = "if-required")]
    IfRequired,
    /// Always: a human asked for a reboot, and the upgrade joined it (one maintenance).
    Always,
    /// Never (the pool's policy says `reboot.mode: never`).
    Never,
}

impl UpgradeReboot {
    /// The `rebootIfRequired` flag of earlier versions: `true` is [`UpgradeReboot::IfRequired`].
    pub fn from_legacy(reboot_if_required: bool) -> Self {
        if reboot_if_required {
            UpgradeReboot::IfRequired
        } else {
            UpgradeReboot::Never
        }
    }

    fn deserialize_or_legacy<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Field {
            Legacy(bool),
            Mode(UpgradeReboot),
        }
        Ok(match Field::deserialize(d)? {
            Field::Legacy(flag) => UpgradeReboot::from_legacy(flag),
            Field::Mode(mode) => mode,
        })
    }
}

impl Operation {
    /// Whether the operation may reboot the node (then the boot id must change before release).
    pub fn may_reboot(&self) -> bool {
        match self {
            Operation::Reboot => true,
            Operation::KubeletRestart | Operation::KubernetesUpgrade { .. } => false,
            Operation::PackageUpgrade { reboot, .. } => *reboot != UpgradeReboot::Never,
        }
    }

    /// Whether the operation always ends with a reboot.
    pub fn always_reboots(&self) -> bool {
        matches!(
            self,
            Operation::Reboot
                | Operation::PackageUpgrade {
                    reboot: UpgradeReboot::Always,
                    ..
                }
        )
    }

    /// One maintenance for a manual reboot and a package upgrade that meet on a node: the
    /// upgrade (the agent's, whichever arrived first), then a reboot whatever the upgrade needs.
    /// `reboot` is the operation carrying the human's reboot, `other` the one it meets; `None`
    /// when they are not a reboot and a package upgrade.
    pub fn merge_manual_reboot(reboot: &Operation, other: &Operation) -> Option<Operation> {
        match other {
            Operation::PackageUpgrade {
                security_only,
                packages,
                ..
            } if reboot.always_reboots() => Some(Operation::PackageUpgrade {
                security_only: *security_only,
                reboot: UpgradeReboot::Always,
                packages: packages.clone(),
            }),
            _ => None,
        }
    }

    /// Short name for logs, events, progress and metrics labels.
    pub fn name(&self) -> &'static str {
        match self {
            Operation::Reboot => "reboot",
            Operation::KubeletRestart => "kubelet-restart",
            Operation::PackageUpgrade { .. } => "package-upgrade",
            Operation::KubernetesUpgrade { .. } => "kubernetes-upgrade",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_both_spellings_and_writes_camel_case() -> Result<(), serde_json::Error> {
        let op = Operation::PackageUpgrade {
            security_only: true,
            reboot: UpgradeReboot::Never,
            packages: vec![PackagePin {
                name: "openssl".into(),
                version: "3.0.15-1~deb12u1".into(),
            }],
        };
        let written = serde_json::to_string(&op)?;
        assert!(written.contains(r#""kind":"packageUpgrade""#), "{written}");
        assert!(written.contains(r#""securityOnly":true"#), "{written}");
        assert!(written.contains(r#""reboot":"never""#), "{written}");
        assert_eq!(serde_json::from_str::<Operation>(&written)?, op);
        let older = r#"{"kind":"package-upgrade","securityOnly":true,"rebootIfRequired":false,"packages":[{"name":"openssl","version":"3.0.15-1~deb12u1"}]}"#;
        assert_eq!(serde_json::from_str::<Operation>(older)?, op);
        let older = r#"{"kind":"packageUpgrade","securityOnly":false,"rebootIfRequired":true}"#;
        assert_eq!(
            serde_json::from_str::<Operation>(older)?,
            Operation::PackageUpgrade {
                security_only: false,
                reboot: UpgradeReboot::IfRequired,
                packages: vec![],
            }
        );
        let merged = r#"{"kind":"packageUpgrade","securityOnly":false,"reboot":"always"}"#;
        assert!(serde_json::from_str::<Operation>(merged)?.always_reboots());
        assert_eq!(
            serde_json::from_str::<Operation>(r#"{"kind":"kubelet-restart"}"#)?,
            Operation::KubeletRestart
        );
        Ok(())
    }

    #[test]
    fn a_manual_reboot_and_an_upgrade_merge_into_an_upgrade_that_always_reboots() {
        let upgrade = |reboot| Operation::PackageUpgrade {
            security_only: true,
            reboot,
            packages: vec![],
        };
        let merged = upgrade(UpgradeReboot::Always);
        for mode in [UpgradeReboot::IfRequired, UpgradeReboot::Never] {
            assert_eq!(
                Operation::merge_manual_reboot(&Operation::Reboot, &upgrade(mode)),
                Some(merged.clone())
            );
        }
        // The merged request meets the agent's request again: the same.
        assert_eq!(
            Operation::merge_manual_reboot(&merged, &upgrade(UpgradeReboot::IfRequired)),
            Some(merged.clone())
        );
        assert!(merged.always_reboots() && merged.may_reboot());
        assert!(!upgrade(UpgradeReboot::Never).may_reboot());
        assert_eq!(
            Operation::merge_manual_reboot(&Operation::Reboot, &Operation::KubeletRestart),
            None
        );
        assert_eq!(
            Operation::merge_manual_reboot(&upgrade(UpgradeReboot::IfRequired), &merged),
            None,
            "an upgrade that reboots only if required carries no human's reboot"
        );
    }
}
