//! OS package management behind the [`PackageManager`] trait, with the apt and dnf backends.
//!
//! Rules every backend keeps:
//! - package holds (`apt-mark hold`, dnf versionlock) and the pool's policy holds
//!   ([`UpgradeSelection::holds`], [`mark_held`]) are honoured by plain upgrades;
//! - `kubelet`, `kubeadm` and `kubectl` ([`KUBERNETES_PACKAGES`]) never move in a plain upgrade,
//!   only through [`InstallPurpose::Kubernetes`] (a Kubernetes upgrade operation) or a rollback;
//! - every change returns the versions before and after, so it can be rolled back.

mod apt;
mod dnf;
pub mod manager;

use std::collections::BTreeMap;
use std::path::Path;

use rota_core::model::{Blocked, PackagePin, PendingPackage};

pub use apt::Apt;
pub use dnf::Dnf;
pub use manager::{
    InstallPurpose, KUBERNETES_PACKAGES, PackageChange, PackageManager, RepairOutcome,
    UpgradeScope, UpgradeSelection,
};

use crate::detect::os::{OsFamily, OsRelease};
use crate::host::{Host, read_text_opt};
use crate::{Error, Result};

/// The package manager of `host`, chosen from its `/etc/os-release` (`ID`, `ID_LIKE`).
pub fn for_host<'a>(host: &'a dyn Host) -> Result<Box<dyn PackageManager + 'a>> {
    let os = read_os_release(host)?;
    match os.family() {
        Some(OsFamily::Debian) => Ok(Box::new(Apt::new(host))),
        Some(OsFamily::RedHat) => Ok(Box::new(Dnf::new(host))),
        None => Err(Error::Refused(format!(
            "no package backend for OS id {:?} (like {:?})",
            os.id, os.id_like
        ))),
    }
}

/// Reads the host's os-release (`/etc/os-release`, else `/usr/lib/os-release`).
pub fn read_os_release(host: &dyn Host) -> Result<OsRelease> {
    for path in ["/etc/os-release", "/usr/lib/os-release"] {
        if let Some(text) = read_text_opt(host, Path::new(path))? {
            return Ok(OsRelease::parse(&text));
        }
    }
    Err(Error::parse(
        "os-release",
        "neither /etc/os-release nor /usr/lib/os-release exists",
    ))
}

/// Marks the pending upgrades of packages in `holds` (the pool's policy holds) as held, as the
/// package manager marks its own holds: a plain upgrade leaves them alone.
pub fn mark_held(pending: &mut [PendingPackage], holds: &[String]) {
    for p in pending
        .iter_mut()
        .filter(|p| p.blocked.is_none() && holds.contains(&p.name))
    {
        p.blocked = Some(Blocked::Held);
    }
}

/// The packages whose installed version differs between two snapshots (name → version).
pub(crate) fn diff(
    before: &BTreeMap<String, String>,
    after: &BTreeMap<String, String>,
) -> Vec<PackageChange> {
    let mut names: Vec<&String> = before.keys().chain(after.keys()).collect();
    names.sort();
    names.dedup();
    names
        .into_iter()
        .filter(|n| before.get(*n) != after.get(*n))
        .map(|n| PackageChange {
            name: n.clone(),
            before: before.get(n).cloned(),
            after: after.get(n).cloned(),
        })
        .collect()
}

/// Checks pins against the rules of `purpose`: Kubernetes packages only in a Kubernetes upgrade
/// (or a rollback), nothing else in a Kubernetes upgrade, no held package in a named upgrade.
pub(crate) fn check_pins(
    pins: &[PackagePin],
    purpose: InstallPurpose,
    holds: &[String],
) -> Result<()> {
    for pin in pins {
        let kube = KUBERNETES_PACKAGES.contains(&pin.name.as_str());
        match purpose {
            InstallPurpose::Named if kube => {
                return Err(Error::Refused(format!(
                    "{} moves only in a Kubernetes upgrade",
                    pin.name
                )));
            }
            InstallPurpose::Named if holds.contains(&pin.name) => {
                return Err(Error::Refused(format!("{} is held", pin.name)));
            }
            InstallPurpose::Kubernetes if !kube => {
                return Err(Error::Refused(format!(
                    "{} is not a Kubernetes package",
                    pin.name
                )));
            }
            _ => {}
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn diff_reports_changed_new_and_removed() {
        let before = BTreeMap::from([
            ("a".to_string(), "1".to_string()),
            ("b".to_string(), "1".to_string()),
            ("c".to_string(), "1".to_string()),
        ]);
        let after = BTreeMap::from([
            ("a".to_string(), "2".to_string()),
            ("b".to_string(), "1".to_string()),
            ("d".to_string(), "1".to_string()),
        ]);
        let d = diff(&before, &after);
        assert_eq!(
            d,
            vec![
                PackageChange {
                    name: "a".into(),
                    before: Some("1".into()),
                    after: Some("2".into())
                },
                PackageChange {
                    name: "c".into(),
                    before: Some("1".into()),
                    after: None
                },
                PackageChange {
                    name: "d".into(),
                    before: None,
                    after: Some("1".into())
                },
            ]
        );
    }

    #[test]
    fn pin_rules() {
        let pin = |n: &str| PackagePin {
            name: n.into(),
            version: "1".into(),
        };
        let holds = vec!["held".to_string()];
        assert!(check_pins(&[pin("kubelet")], InstallPurpose::Named, &holds).is_err());
        assert!(check_pins(&[pin("held")], InstallPurpose::Named, &holds).is_err());
        assert!(check_pins(&[pin("curl")], InstallPurpose::Named, &holds).is_ok());
        assert!(check_pins(&[pin("curl")], InstallPurpose::Kubernetes, &holds).is_err());
        assert!(check_pins(&[pin("kubeadm")], InstallPurpose::Kubernetes, &holds).is_ok());
        assert!(
            check_pins(
                &[pin("kubelet"), pin("held")],
                InstallPurpose::Rollback,
                &holds
            )
            .is_ok()
        );
    }
}
