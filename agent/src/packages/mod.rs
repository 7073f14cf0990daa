//! OS package management behind the [`PackageManager`] trait, with the apt and dnf backends.
//!
//! Rules every backend keeps:
//! - package holds (`apt-mark hold`, dnf versionlock) are honoured by plain upgrades;
//! - `kubelet`, `kubeadm` and `kubectl` ([`KUBERNETES_PACKAGES`]) never move in a plain upgrade,
//!   only through [`InstallPurpose::Kubernetes`] (a Kubernetes upgrade operation) or a rollback;
//! - every change returns the versions before and after, so it can be rolled back.

mod apt;
mod dnf;

use std::collections::BTreeMap;
use std::path::Path;

use rota_core::model::{PackagePin, PendingPackage};
use serde::{Deserialize, Serialize};

pub use apt::Apt;
pub use dnf::Dnf;

use crate::detect::os::{OsFamily, OsRelease};
use crate::host::{Host, read_text_opt};
use crate::{Error, Result};

/// Packages that move only in a Kubernetes upgrade operation, never in a plain upgrade.
pub const KUBERNETES_PACKAGES: [&str; 3] = ["kubelet", "kubeadm", "kubectl"];

/// Which pending upgrades a plain upgrade applies.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum UpgradeScope {
    /// Every pending upgrade that is not blocked.
    All,
    /// Only security upgrades that are not blocked.
    SecurityOnly,
}

impl UpgradeScope {
    /// Whether this scope applies `p`.
    pub fn selects(self, p: &PendingPackage) -> bool {
        p.blocked.is_none() && (self == UpgradeScope::All || p.security)
    }
}

/// One package that changed.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct PackageChange {
    /// Package name.
    pub name: String,
    /// Version before; `None` when it was newly installed.
    pub before: Option<String>,
    /// Version after; `None` when it was removed.
    pub after: Option<String>,
}

/// Why exact versions are installed; decides which rules apply.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum InstallPurpose {
    /// Named upgrades of a package upgrade operation: holds and Kubernetes pins are refused,
    /// downgrades are refused.
    Named,
    /// A Kubernetes upgrade: only [`KUBERNETES_PACKAGES`], which may be held (kubeadm's
    /// documentation holds them); they stay held afterwards.
    Kubernetes,
    /// Back to recorded versions: downgrades and held packages allowed.
    Rollback,
}

/// What [`PackageManager::repair`] found.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum RepairOutcome {
    /// Nothing was interrupted.
    Clean,
    /// An interrupted state was found and repaired; the text says what.
    Repaired(String),
}

/// A host's package manager.
///
/// Contract for every implementation (real or in memory):
/// - versions are strings in the package manager's own syntax, compared with its own rules;
/// - no method prompts; each either finishes or returns an error;
/// - a method that changes packages returns exactly the packages whose installed version changed
///   (dependencies included), with versions before and after.
pub trait PackageManager {
    /// Backend name (`apt`, `dnf`, ...), for humans.
    fn name(&self) -> &'static str;

    /// Refreshes the package lists from the configured repositories.
    fn refresh(&self) -> Result<()>;

    /// Every installed package with a newer candidate, with the security split, impact, and
    /// whether a plain upgrade leaves it alone ([`PendingPackage::blocked`]). Sorted by name.
    fn upgradable(&self) -> Result<Vec<PendingPackage>>;

    /// Applies the pending upgrades selected by `scope` ([`UpgradeScope::selects`]): holds and
    /// [`KUBERNETES_PACKAGES`] never move.
    fn upgrade(&self, scope: UpgradeScope) -> Result<Vec<PackageChange>>;

    /// Installs exactly these versions under the rules of `purpose`; refuses (changing nothing)
    /// what `purpose` does not allow.
    fn install_versions(
        &self,
        pins: &[PackagePin],
        purpose: InstallPurpose,
    ) -> Result<Vec<PackageChange>>;

    /// Every installed package and its version. Packages installed in several versions at
    /// once (rpm's install-only kernels) show their newest.
    fn installed(&self) -> Result<BTreeMap<String, String>>;

    /// The installed version of `name`, `None` when it is not installed.
    fn installed_version(&self, name: &str) -> Result<Option<String>> {
        Ok(self.installed()?.remove(name))
    }

    /// Versions of `name` the repositories offer (any order).
    fn available_versions(&self, name: &str) -> Result<Vec<String>>;

    /// Names of held (version-locked) packages, sorted.
    fn holds(&self) -> Result<Vec<String>>;

    /// Reinstalls the `before` versions of `changes` (downgrading). Newly installed packages
    /// (`before: None`) are left installed: removing a dependency could break more than it
    /// fixes.
    fn rollback(&self, changes: &[PackageChange]) -> Result<Vec<PackageChange>> {
        let pins: Vec<PackagePin> = changes
            .iter()
            .filter(|c| c.before != c.after)
            .filter_map(|c| {
                c.before.as_ref().map(|v| PackagePin {
                    name: c.name.clone(),
                    version: v.clone(),
                })
            })
            .collect();
        if pins.is_empty() {
            return Ok(Vec::new());
        }
        self.install_versions(&pins, InstallPurpose::Rollback)
    }

    /// Detects a package database left half-done by an interrupted run (dpkg killed
    /// mid-configure, an rpm transaction that left duplicates) and finishes or cleans it up.
    fn repair(&self) -> Result<RepairOutcome>;
}

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
