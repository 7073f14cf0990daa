//! What humans (and `rotactl`) write on Nodes, and the mark rota leaves on the nodes it cordons.
//!
//! - [`MAINTENANCE_REQUESTED`] `=reboot|upgrade|kubelet-restart|security-upgrade` queues a
//!   manual request (it goes before agents' requests and skips maintenance windows). The
//!   coordinator removes the annotation once the request is persisted in the ledger; an invalid
//!   value is left alone and explained in an Event.
//! - [`RELEASE`] `=true` force-releases whatever the node queued or holds (what
//!   `rotactl release` writes); the coordinator removes it once done.
//! - [`CORDONED`] is written by rota itself in the same patch that cordons a node, so that only
//!   a cordon of rota's is ever undone by rota — also after a restart, and also when a release
//!   was interrupted before its uncordon.

use std::fmt;
use std::str::FromStr;

use crate::model::{Operation, UpgradeReboot};

/// Node annotation queuing a manual maintenance.
pub const MAINTENANCE_REQUESTED: &str = "rota.dev/maintenance-requested";
/// Node annotation force-releasing the node's slot or request.
pub const RELEASE: &str = "rota.dev/release";
/// Node annotation marking a cordon made by rota.
pub const CORDONED: &str = "rota.dev/cordoned";

/// A manual maintenance an on-call engineer can ask for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ManualRequest {
    /// `reboot`: reboot the node.
    Reboot,
    /// `upgrade`: every pending package upgrade, then a reboot if one is required.
    Upgrade,
    /// `kubelet-restart`: restart the kubelet.
    KubeletRestart,
    /// `security-upgrade`: pending security upgrades, then a reboot if one is required.
    SecurityUpgrade,
}

impl ManualRequest {
    const ALL: [ManualRequest; 4] = [
        ManualRequest::Reboot,
        ManualRequest::Upgrade,
        ManualRequest::KubeletRestart,
        ManualRequest::SecurityUpgrade,
    ];

    /// The annotation value.
    pub fn as_str(self) -> &'static str {
        match self {
            ManualRequest::Reboot => "reboot",
            ManualRequest::Upgrade => "upgrade",
            ManualRequest::KubeletRestart => "kubelet-restart",
            ManualRequest::SecurityUpgrade => "security-upgrade",
        }
    }

    /// The operation to queue. `reboot_allowed` is false when the node's policy never reboots
    /// (`reboot.mode: never`); an upgrade then never reboots either.
    pub fn operation(self, reboot_allowed: bool) -> Operation {
        match self {
            ManualRequest::Reboot => Operation::Reboot,
            ManualRequest::KubeletRestart => Operation::KubeletRestart,
            ManualRequest::Upgrade | ManualRequest::SecurityUpgrade => Operation::PackageUpgrade {
                security_only: self == ManualRequest::SecurityUpgrade,
                reboot: if reboot_allowed {
                    UpgradeReboot::IfRequired
                } else {
                    UpgradeReboot::Never
                },
                packages: Vec::new(),
            },
        }
    }
}

impl fmt::Display for ManualRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An annotation value rota does not understand.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum AnnotationError {
    /// Not one of the manual requests.
    #[error(
        "{MAINTENANCE_REQUESTED}={value:?} is not a maintenance rota knows; use one of reboot, upgrade, kubelet-restart, security-upgrade"
    )]
    UnknownRequest {
        /// The value found.
        value: String,
    },
    /// Not `true`.
    #[error("{RELEASE}={value:?} is not understood; set it to \"true\" to release the node's slot")]
    UnknownRelease {
        /// The value found.
        value: String,
    },
}

impl FromStr for ManualRequest {
    type Err = AnnotationError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let value = s.trim();
        ManualRequest::ALL
            .into_iter()
            .find(|r| r.as_str().eq_ignore_ascii_case(value))
            .ok_or_else(|| AnnotationError::UnknownRequest {
                value: s.to_owned(),
            })
    }
}

/// Whether a [`RELEASE`] value asks for a release.
pub fn parse_release(value: &str) -> Result<(), AnnotationError> {
    if value.trim().eq_ignore_ascii_case("true") {
        Ok(())
    } else {
        Err(AnnotationError::UnknownRelease {
            value: value.to_owned(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values() {
        assert_eq!("reboot".parse(), Ok(ManualRequest::Reboot));
        assert_eq!(
            " Kubelet-Restart ".parse(),
            Ok(ManualRequest::KubeletRestart)
        );
        assert_eq!("upgrade".parse(), Ok(ManualRequest::Upgrade));
        assert_eq!(
            "security-upgrade".parse(),
            Ok(ManualRequest::SecurityUpgrade)
        );
        let err = "reboot-now".parse::<ManualRequest>().unwrap_err();
        assert!(err.to_string().contains("\"reboot-now\""), "{err}");
        assert!(err.to_string().contains("security-upgrade"), "{err}");
        assert!(parse_release("true").is_ok());
        assert!(parse_release("yes").is_err());
    }

    #[test]
    fn operations() {
        assert_eq!(ManualRequest::Reboot.operation(false), Operation::Reboot);
        assert_eq!(
            ManualRequest::SecurityUpgrade.operation(true),
            Operation::PackageUpgrade {
                security_only: true,
                reboot: UpgradeReboot::IfRequired,
                packages: Vec::new(),
            }
        );
        assert_eq!(
            ManualRequest::Upgrade.operation(false),
            Operation::PackageUpgrade {
                security_only: false,
                reboot: UpgradeReboot::Never,
                packages: Vec::new(),
            }
        );
    }
}
