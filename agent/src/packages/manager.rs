//! The [`PackageManager`] trait and the data it speaks in. It imports nothing of the host: a
//! backend is built on a host (`super::for_host`), the trait itself is what the rest of the
//! agent — the host's `packages()`, the operation executor — sees.

use std::collections::BTreeMap;

use rota_core::model::{PackagePin, PendingPackage};
use serde::{Deserialize, Serialize};

use crate::Result;

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

/// What a plain upgrade applies: the pending upgrades of `scope`, except what the package
/// manager holds and what `holds` names (the pool's `upgrade.holds`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct UpgradeSelection {
    /// Security only, or everything.
    pub scope: UpgradeScope,
    /// Packages held on top of the package manager's own holds.
    pub holds: Vec<String>,
}

impl UpgradeSelection {
    /// Whether this selection applies `p`.
    pub fn selects(&self, p: &PendingPackage) -> bool {
        self.scope.selects(p) && !self.holds.contains(&p.name)
    }
}

impl From<UpgradeScope> for UpgradeSelection {
    fn from(scope: UpgradeScope) -> Self {
        UpgradeSelection {
            scope,
            holds: Vec::new(),
        }
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

    /// Applies the pending upgrades `selection` selects ([`UpgradeSelection::selects`]): holds
    /// (the package manager's and the selection's) and [`KUBERNETES_PACKAGES`] never move.
    fn upgrade(&self, selection: &UpgradeSelection) -> Result<Vec<PackageChange>>;

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
