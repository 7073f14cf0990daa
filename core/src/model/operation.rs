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
    /// Upgrade OS packages, then reboot if the upgrade requires it.
    #[serde(rename_all = "camelCase", alias = "package-upgrade")]
    PackageUpgrade {
        /// Only security updates.
        security_only: bool,
        /// Reboot afterwards when the upgrade leaves the node needing one.
        reboot_if_required: bool,
        /// Exact versions; empty means every pending upgrade the policy allows.
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        packages: Vec<PackagePin>,
    },
    /// Move the kubelet (and kubeadm, kubectl where installed) to this version, one minor at a
    /// time.
    #[serde(rename_all = "camelCase", alias = "kubernetes-upgrade")]
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
            reboot_if_required: false,
            packages: vec![PackagePin {
                name: "openssl".into(),
                version: "3.0.15-1~deb12u1".into(),
            }],
        };
        let written = serde_json::to_string(&op)?;
        assert!(written.contains(r#""kind":"packageUpgrade""#), "{written}");
        assert!(written.contains(r#""securityOnly":true"#), "{written}");
        assert_eq!(serde_json::from_str::<Operation>(&written)?, op);
        let older = r#"{"kind":"package-upgrade","securityOnly":true,"rebootIfRequired":false,"packages":[{"name":"openssl","version":"3.0.15-1~deb12u1"}]}"#;
        assert_eq!(serde_json::from_str::<Operation>(older)?, op);
        assert_eq!(
            serde_json::from_str::<Operation>(r#"{"kind":"kubelet-restart"}"#)?,
            Operation::KubeletRestart
        );
        Ok(())
    }
}
