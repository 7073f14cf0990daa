//! The state machine of one granted operation: phases, effects to perform, outcomes that move
//! it on. Pure: no I/O, no clock. The [`super::Executor`] performs the effects through the
//! host and persists the record after every transition, so the persisted phase always names
//! the effect about to be performed (or being performed when the agent died).
//!
//! Rules it keeps:
//! - the reboot attempt counter is raised *before* a reboot is requested: at most two
//!   requests per grant, and none once the boot id changed (never reboot twice for one grant);
//! - a changed boot id outside a reboot phase is reported as a failure, never retried;
//! - a failed change or health check before a reboot rolls back what changed; after a
//!   reboot it does not (a rollback of a kernel would need a second reboot);
//! - a package upgrade that changed packages without a reboot keeps its record after the
//!   coordinator took the completion ([`Phase::AwaitVerdict`]): when the coordinator's health
//!   gate then fails the slot, the agent rolls the packages back ([`OperationRecord::gate_failed`]),
//!   once — the record is gone afterwards.
//! - the pool's policy of the grant ([`OperationRecord::policy`]) wins over the operation's own
//!   terms: its upgrade mode narrows the upgrade, its holds never move, and under
//!   `reboot.mode: never` a required reboot is reported, not performed.
//! - an operation the policy's `etcd.snapshotBefore` covers starts with a verified etcd snapshot
//!   no older than `etcd.maxSnapshotAge` on a stacked-etcd node ([`Phase::EtcdSnapshot`]); it
//!   changes nothing when that fails.
//! - a Kubernetes upgrade goes the kubeadm way ([`crate::kubernetes`]): repository saved and
//!   switched to the target minor, the target resolved, kubeadm, `kubeadm upgrade plan` and
//!   `apply` (or `kubeadm upgrade node`), kubelet and kubectl, kubelet restart, verification.
//!   Every step may be repeated after a crash or a reboot. A failure before the kubeadm upgrade
//!   restores the repository file and rolls the packages back; from the kubeadm upgrade on
//!   nothing is rolled back (the cluster's configuration may have moved): the failure says
//!   which versions the node has and that its slot stays held.

use std::collections::BTreeMap;

use jiff::Timestamp;
use serde::{Deserialize, Serialize};

use rota_core::model::{
    EtcdSnapshot, Impact, KubeadmStep, NodePolicy, Operation, PackagePin, UpgradeReboot,
};
use rota_core::policy::crd::UpgradeMode;

use crate::kubernetes::repository::{RepositoryBackup, minor_of as repository_minor};
use crate::packages::{
    InstallPurpose, KUBERNETES_PACKAGES, PackageChange, UpgradeScope, UpgradeSelection,
};

/// How many times a reboot may be requested for one grant.
pub const MAX_REBOOT_ATTEMPTS: u32 = 2;
/// How many times an interrupted phase is resumed before the operation gives up.
pub const MAX_RECOVERIES: u32 = 2;

/// Where an operation is.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "phase", rename_all = "kebab-case")]
pub enum Phase {
    /// Make sure a verified etcd snapshot no older than the policy allows exists (stacked
    /// etcd members only), before anything else.
    EtcdSnapshot,
    /// Repair an interrupted package database and record the versions before any change.
    Prepare,
    /// Keep the Kubernetes repository file as it is (a Kubernetes upgrade).
    SaveRepository,
    /// Switch the Kubernetes repository to the target minor, refresh, resolve the exact
    /// version.
    SwitchRepository,
    /// Install kubeadm at the target version.
    InstallKubeadm,
    /// `kubeadm upgrade plan`: the target must be offered (the `apply` step only).
    KubeadmPlan,
    /// Change packages (upgrade, or install the Kubernetes version).
    ChangePackages,
    /// A change was interrupted: repair, find out what changed, then go on or give up.
    #[serde(rename_all = "camelCase")]
    Recover {
        /// The host restarted meanwhile: report, do not retry.
        boot_changed: bool,
    },
    /// `kubeadm upgrade apply` (the first control-plane node) or `kubeadm upgrade node`.
    KubeadmUpgrade,
    /// Install the kubelet and kubectl at the target version.
    InstallKubelet,
    /// Check whether the node needs a reboot now (sentinel re-checked after the upgrade).
    CheckReboot,
    /// Request the reboot (the attempt counter was raised on entry).
    Reboot,
    /// Reboot requested: wait for the host to go down.
    AwaitReboot,
    /// Restart the kubelet through the host's systemd.
    RestartKubelet,
    /// Check the node is healthy.
    Verify,
    /// Roll back what changed.
    RollBack {
        /// Why.
        reason: String,
    },
    /// Completed; the coordinator verifies the node. The versions before are kept until its
    /// verdict, to roll back if its health gate fails the slot.
    AwaitVerdict,
    /// Rolled back after the coordinator's health gate failed the slot; reported as progress
    /// (the completion stands: the slot is already failed).
    RolledBack {
        /// What was done.
        message: String,
    },
    /// Tell the coordinator how it went.
    Finished {
        /// Whether the operation succeeded.
        success: bool,
        /// For humans.
        message: String,
    },
    /// The coordinator knows; nothing left to do.
    Done,
}

impl Phase {
    /// Step name for progress reports.
    pub fn step(&self) -> &'static str {
        match self {
            Phase::EtcdSnapshot => "etcd-snapshot",
            Phase::Prepare => "preparing",
            Phase::SaveRepository | Phase::SwitchRepository => "switching-repository",
            Phase::InstallKubeadm => "upgrading-kubeadm",
            Phase::KubeadmPlan => "kubeadm-plan",
            Phase::InstallKubelet => "upgrading-kubelet",
            Phase::ChangePackages => "upgrading",
            Phase::Recover { .. } => "recovering",
            Phase::KubeadmUpgrade => "kubeadm-upgrade",
            Phase::CheckReboot => "checking-reboot",
            Phase::Reboot | Phase::AwaitReboot => "rebooting",
            Phase::RestartKubelet => "restarting-kubelet",
            Phase::Verify => "verifying",
            Phase::RollBack { .. } => "rolling-back",
            Phase::Finished { .. } => "completing",
            Phase::AwaitVerdict => "awaiting-verdict",
            Phase::RolledBack { .. } => "rolled-back",
            Phase::Done => "done",
        }
    }
}

/// Everything about one operation that must survive a crash or a reboot.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct OperationRecord {
    /// The fencing token of the grant.
    pub token: u64,
    /// The operation.
    pub operation: Operation,
    /// Where it is.
    pub phase: Phase,
    /// The boot id the current phase runs under.
    pub boot_id: String,
    /// Installed versions before any change (empty for operations that change no package).
    pub versions_before: BTreeMap<String, String>,
    /// What changed so far.
    pub changes: Vec<PackageChange>,
    /// Whether the node rebooted for this operation.
    pub rebooted: bool,
    /// Reboot requests made so far.
    pub reboot_attempts: u32,
    /// Interrupted phases resumed so far.
    pub recoveries: u32,
    /// The rollback under way follows the coordinator's failed verdict, after completion.
    #[serde(default)]
    pub after_verdict: bool,
    /// When the operation started.
    pub started_at: Timestamp,
    /// The pool's policy of the grant; `None` for a manual `rota-agent upgrade` (or a grant
    /// from a coordinator that sends none).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub policy: Option<NodePolicy>,
    /// A reboot was required after the upgrade but the policy never reboots.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub reboot_withheld: bool,
    /// The verified etcd snapshot taken (or found fresh) before the operation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub etcd_snapshot: Option<EtcdSnapshot>,
    /// The Kubernetes repository file before the switch; a rollback restores it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub repository: Option<RepositoryBackup>,
    /// The exact version a Kubernetes upgrade installs (a minor target resolved).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kubernetes_version: Option<String>,
    /// How far the kubeadm upgrade got: from its start on nothing is rolled back.
    #[serde(default, skip_serializing_if = "KubeadmProgress::is_not_started")]
    pub kubeadm: KubeadmProgress,
}

/// How far `kubeadm upgrade apply|node` got.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum KubeadmProgress {
    /// Not run yet.
    #[default]
    NotStarted,
    /// Started (and maybe interrupted or failed).
    Started,
    /// It succeeded.
    Done,
}

impl KubeadmProgress {
    fn is_not_started(&self) -> bool {
        *self == KubeadmProgress::NotStarted
    }
}

/// A side effect for the executor to perform.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Effect {
    /// On a stacked etcd member, find a verified snapshot no older than this or take one
    /// ([`Outcome::Snapshot`]).
    EnsureEtcdSnapshot {
        /// How old the snapshot may be, in seconds.
        max_age_seconds: u64,
    },
    /// Repair an interrupted package database, then snapshot installed versions
    /// ([`Outcome::Prepared`]).
    Prepare,
    /// Read the Kubernetes repository file ([`Outcome::RepositorySaved`]).
    SaveRepository,
    /// Write the repository file of `backup` switched to the minor of `target`, refresh, and
    /// resolve `target` to the exact version the repository offers for `package`
    /// ([`Outcome::Resolved`]).
    SwitchRepository {
        /// The file as it was.
        backup: RepositoryBackup,
        /// The target version (`1.31.4`, or a minor `1.31`).
        target: String,
        /// The package whose offered versions resolve the target (kubeadm).
        package: String,
    },
    /// Apply the pending upgrades `selection` selects ([`Outcome::Changed`]).
    Upgrade(UpgradeSelection),
    /// Install exact versions ([`Outcome::Changed`]).
    Install(Vec<PackagePin>, InstallPurpose),
    /// Install those of `packages` that were installed before at `version`, resolved to
    /// package versions; held packages stay held ([`Outcome::Changed`]).
    InstallKubernetes {
        /// Exact upstream version, e.g. `1.31.4`.
        version: String,
        /// Which Kubernetes packages.
        packages: Vec<String>,
    },
    /// `kubeadm upgrade plan vVERSION`: it must offer the version ([`Outcome::Done`]).
    KubeadmPlan(String),
    /// Repair, then report every change since [`OperationRecord::versions_before`]
    /// ([`Outcome::Changed`]).
    Recover,
    /// `kubeadm upgrade apply vVERSION --yes` or `kubeadm upgrade node` ([`Outcome::Done`]).
    KubeadmUpgrade {
        /// Which.
        step: KubeadmStep,
        /// The exact version (for `apply`).
        version: String,
    },
    /// Check the reboot sentinels ([`Outcome::RebootRequired`]).
    CheckRebootRequired,
    /// Request a reboot ([`Outcome::Done`]).
    Reboot,
    /// Wait for the host to go down ([`Outcome::ShutdownTimedOut`] if it does not).
    AwaitShutdown,
    /// Restart the kubelet ([`Outcome::Done`]).
    RestartKubelet,
    /// Check the node's health; with a version, the kubelet must run it ([`Outcome::Healthy`]).
    CheckHealth {
        /// Expected kubelet version.
        kubelet_version: Option<String>,
    },
    /// Restore the repository file (when given, first, so the old versions are offered again),
    /// then roll back these changes, restarting the kubelet if it or the runtime moved
    /// ([`Outcome::Changed`] with what *remains* changed since the versions before).
    Rollback(Vec<PackageChange>, Option<RepositoryBackup>),
    /// Report the end to the coordinator ([`Outcome::Done`], or [`Outcome::Verifying`] when
    /// the coordinator now verifies the node).
    Complete {
        /// Whether the operation succeeded.
        success: bool,
        /// For humans.
        message: String,
        /// Whether the node rebooted.
        rebooted: bool,
        /// Package versions changed (name, version after).
        changed: Vec<PackagePin>,
    },
}

/// What performing an effect gave.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// It worked.
    Done,
    /// Installed versions before any change.
    Prepared(BTreeMap<String, String>),
    /// The verified etcd snapshot (`None`: the node runs no stacked etcd member).
    Snapshot(Option<EtcdSnapshot>),
    /// The Kubernetes repository file as it was.
    RepositorySaved(RepositoryBackup),
    /// The repository is switched; the target is this exact version.
    Resolved(String),
    /// Packages changed (possibly none).
    Changed(Vec<PackageChange>),
    /// A package change failed; `changes` is what changed anyway.
    ChangeFailed {
        /// What changed before it failed.
        changes: Vec<PackageChange>,
        /// Why it failed.
        message: String,
    },
    /// Whether a reboot is required now.
    RebootRequired(bool),
    /// The host did not go down.
    ShutdownTimedOut,
    /// The node is healthy.
    Healthy,
    /// The node is not healthy.
    Unhealthy(String),
    /// The effect failed.
    Failed(String),
    /// The coordinator took the completion and verifies the node: its health gate may still
    /// fail the slot.
    Verifying,
}

impl OperationRecord {
    /// A new operation under `token`, starting now on boot `boot_id`.
    pub fn new(token: u64, operation: Operation, boot_id: String, now: Timestamp) -> Self {
        let mut record = OperationRecord {
            token,
            phase: Phase::Prepare,
            operation,
            boot_id,
            versions_before: BTreeMap::new(),
            changes: Vec::new(),
            rebooted: false,
            reboot_attempts: 0,
            recoveries: 0,
            after_verdict: false,
            started_at: now,
            policy: None,
            reboot_withheld: false,
            etcd_snapshot: None,
            repository: None,
            kubernetes_version: None,
            kubeadm: KubeadmProgress::NotStarted,
        };
        match record.operation {
            Operation::Reboot => record.enter_reboot(),
            Operation::KubeletRestart => record.phase = Phase::RestartKubelet,
            Operation::PackageUpgrade { .. } | Operation::KubernetesUpgrade { .. } => {}
        }
        record
    }

    /// The same operation under the pool's policy of its grant; called before anything was
    /// performed. An operation the policy's `etcd.snapshotBefore` covers starts with the etcd
    /// snapshot (a reboot's attempt counter is raised only when its reboot phase is entered).
    pub fn under(mut self, policy: Option<NodePolicy>) -> Self {
        if policy
            .as_ref()
            .is_some_and(|p| p.etcd.covers(&self.operation))
        {
            self.reboot_attempts = 0;
            self.phase = Phase::EtcdSnapshot;
        }
        self.policy = policy;
        self
    }

    /// The first phase of the operation itself.
    fn first_phase(&mut self) -> Phase {
        match self.operation {
            Operation::Reboot => {
                self.enter_reboot();
                std::mem::replace(&mut self.phase, Phase::Done)
            }
            Operation::KubeletRestart => Phase::RestartKubelet,
            Operation::PackageUpgrade { .. } | Operation::KubernetesUpgrade { .. } => {
                Phase::Prepare
            }
        }
    }

    /// The exact Kubernetes version once resolved, else the operation's target.
    fn kubernetes_target(&self) -> Option<String> {
        match &self.operation {
            Operation::KubernetesUpgrade { version, .. } => Some(
                self.kubernetes_version
                    .clone()
                    .unwrap_or_else(|| version.clone()),
            ),
            _ => None,
        }
    }

    fn kubeadm_step(&self) -> KubeadmStep {
        match &self.operation {
            Operation::KubernetesUpgrade { kubeadm, .. } => *kubeadm,
            _ => KubeadmStep::Node,
        }
    }

    /// The Kubernetes packages of `names` installed before the operation.
    fn installed_of(&self, names: &[&str]) -> Vec<String> {
        names
            .iter()
            .filter(|n| self.versions_before.contains_key(**n))
            .map(|n| n.to_string())
            .collect()
    }

    /// The effect the current phase calls for; `None` once done.
    pub fn next_effect(&self) -> Option<Effect> {
        Some(match &self.phase {
            Phase::EtcdSnapshot => Effect::EnsureEtcdSnapshot {
                max_age_seconds: self
                    .policy
                    .as_ref()
                    .map_or_else(Default::default, |p| p.etcd)
                    .max_age_seconds,
            },
            Phase::Prepare => Effect::Prepare,
            Phase::SaveRepository => Effect::SaveRepository,
            Phase::SwitchRepository => match (&self.repository, &self.operation) {
                (Some(backup), Operation::KubernetesUpgrade { version, .. }) => {
                    Effect::SwitchRepository {
                        backup: backup.clone(),
                        target: version.clone(),
                        package: if self.versions_before.contains_key("kubeadm") {
                            "kubeadm".into()
                        } else {
                            "kubelet".into()
                        },
                    }
                }
                // Never entered without a saved file; saving it again is harmless.
                _ => Effect::SaveRepository,
            },
            Phase::InstallKubeadm => Effect::InstallKubernetes {
                version: self.kubernetes_target().unwrap_or_default(),
                packages: self.installed_of(&["kubeadm"]),
            },
            Phase::KubeadmPlan => Effect::KubeadmPlan(self.kubernetes_target().unwrap_or_default()),
            Phase::InstallKubelet => Effect::InstallKubernetes {
                version: self.kubernetes_target().unwrap_or_default(),
                packages: self.installed_of(&["kubelet", "kubectl"]),
            },
            Phase::ChangePackages => match &self.operation {
                Operation::PackageUpgrade {
                    security_only,
                    packages,
                    ..
                } => {
                    if packages.is_empty() {
                        let security_only = *security_only
                            || self
                                .policy
                                .as_ref()
                                .is_some_and(|p| p.upgrade_mode == UpgradeMode::Security);
                        Effect::Upgrade(UpgradeSelection {
                            scope: if security_only {
                                UpgradeScope::SecurityOnly
                            } else {
                                UpgradeScope::All
                            },
                            holds: self.policy_holds().to_vec(),
                        })
                    } else {
                        Effect::Install(packages.clone(), InstallPurpose::Named)
                    }
                }
                // Only records of agents from before the repository switch get here: the whole
                // set at once, as they did.
                Operation::KubernetesUpgrade { version, .. } => Effect::InstallKubernetes {
                    version: version.clone(),
                    packages: self.installed_of(&KUBERNETES_PACKAGES),
                },
                // Never entered for these operations; checking health is harmless.
                Operation::Reboot | Operation::KubeletRestart => Effect::CheckHealth {
                    kubelet_version: None,
                },
            },
            Phase::Recover { .. } => Effect::Recover,
            Phase::KubeadmUpgrade => Effect::KubeadmUpgrade {
                step: self.kubeadm_step(),
                version: self.kubernetes_target().unwrap_or_default(),
            },
            Phase::CheckReboot => Effect::CheckRebootRequired,
            Phase::Reboot => Effect::Reboot,
            Phase::AwaitReboot => Effect::AwaitShutdown,
            Phase::RestartKubelet => Effect::RestartKubelet,
            Phase::Verify => Effect::CheckHealth {
                kubelet_version: self.kubernetes_target(),
            },
            Phase::RollBack { .. } => {
                Effect::Rollback(self.changes.clone(), self.repository.clone())
            }
            Phase::Finished { success, message } => Effect::Complete {
                success: *success,
                message: message.clone(),
                rebooted: self.rebooted,
                changed: self
                    .changes
                    .iter()
                    .filter_map(|c| {
                        c.after.as_ref().map(|v| PackagePin {
                            name: c.name.clone(),
                            version: v.clone(),
                        })
                    })
                    .collect(),
            },
            Phase::AwaitVerdict | Phase::RolledBack { .. } | Phase::Done => return None,
        })
    }

    /// Moves on after the current phase's effect gave `outcome`.
    pub fn on(&mut self, outcome: Outcome) {
        let phase = std::mem::replace(&mut self.phase, Phase::Done);
        self.phase = match (phase, outcome) {
            (Phase::EtcdSnapshot, Outcome::Snapshot(snapshot)) => {
                self.etcd_snapshot = snapshot;
                self.first_phase()
            }
            (Phase::EtcdSnapshot, Outcome::Failed(why)) => finished(
                false,
                format!(
                    "etcd snapshot before the {} failed: {why}; nothing was changed",
                    self.operation.name()
                ),
            ),
            (Phase::Prepare, Outcome::Prepared(versions)) => {
                self.versions_before = versions;
                match self
                    .kubernetes_skew_problem()
                    .or_else(|| self.policy_problem())
                {
                    Some(problem) => finished(false, problem),
                    None if matches!(self.operation, Operation::KubernetesUpgrade { .. }) => {
                        Phase::SaveRepository
                    }
                    None => Phase::ChangePackages,
                }
            }
            (Phase::SaveRepository, Outcome::RepositorySaved(backup)) => {
                self.repository = Some(backup);
                Phase::SwitchRepository
            }
            (Phase::SwitchRepository, Outcome::Resolved(version)) => {
                self.kubernetes_version = Some(version);
                if self.versions_before.contains_key("kubeadm") {
                    Phase::InstallKubeadm
                } else {
                    Phase::InstallKubelet
                }
            }
            (Phase::InstallKubeadm, Outcome::Changed(c)) => {
                self.merge_changes(c);
                match self.kubeadm_step() {
                    KubeadmStep::Apply => Phase::KubeadmPlan,
                    KubeadmStep::Node => self.enter_kubeadm_upgrade(),
                }
            }
            (Phase::KubeadmPlan, Outcome::Done) => self.enter_kubeadm_upgrade(),
            (Phase::KubeadmUpgrade, Outcome::Failed(why)) => {
                let what = self.kubeadm_command();
                self.stuck(format!("{what} failed: {why}"))
            }
            (Phase::InstallKubelet, Outcome::Changed(c)) => {
                self.merge_changes(c);
                Phase::RestartKubelet
            }
            (Phase::InstallKubelet, Outcome::ChangeFailed { changes, message }) => {
                self.merge_changes(changes);
                self.stuck(format!("installing kubelet/kubectl failed: {message}"))
            }
            (Phase::ChangePackages, Outcome::Changed(c)) => {
                self.merge_changes(c);
                self.after_change()
            }
            // Whether the interrupted change ran or not, running it again finishes it: upgrades
            // and exact installs are idempotent.
            (
                Phase::Recover {
                    boot_changed: false,
                },
                Outcome::Changed(c),
            ) => {
                self.merge_changes(c);
                Phase::ChangePackages
            }
            (Phase::Recover { boot_changed: true }, Outcome::Changed(c)) => {
                self.merge_changes(c);
                finished(
                    false,
                    "the host restarted during the package change; packages repaired".into(),
                )
            }
            (
                Phase::ChangePackages | Phase::Recover { .. } | Phase::InstallKubeadm,
                Outcome::ChangeFailed { changes, message },
            ) => {
                self.merge_changes(changes);
                self.fail_with_rollback(format!("package change failed: {message}"))
            }
            (Phase::KubeadmUpgrade, Outcome::Done) => {
                self.kubeadm = KubeadmProgress::Done;
                if self.kubernetes_version.is_some() {
                    Phase::InstallKubelet
                } else {
                    // A record from before the repository switch: its packages are in.
                    Phase::RestartKubelet
                }
            }
            (Phase::CheckReboot, Outcome::RebootRequired(true)) if !self.may_reboot() => {
                self.reboot_withheld = true;
                self.restart_or_verify()
            }
            (Phase::CheckReboot, Outcome::RebootRequired(true)) => {
                self.enter_reboot();
                std::mem::replace(&mut self.phase, Phase::Done)
            }
            (Phase::CheckReboot, Outcome::RebootRequired(false)) => self.restart_or_verify(),
            // The packages are in; a broken check is reported, never read as "required" and
            // no reason to roll back.
            (Phase::CheckReboot, Outcome::Failed(why)) => {
                finished(false, format!("reboot check failed: {why}"))
            }
            (Phase::Reboot, Outcome::Done) => Phase::AwaitReboot,
            (Phase::AwaitReboot, Outcome::ShutdownTimedOut) => {
                if self.reboot_attempts < MAX_REBOOT_ATTEMPTS {
                    self.enter_reboot();
                    std::mem::replace(&mut self.phase, Phase::Done)
                } else {
                    finished(
                        false,
                        format!(
                            "the node did not reboot after {} requests",
                            self.reboot_attempts
                        ),
                    )
                }
            }
            (Phase::RestartKubelet, Outcome::Done) => Phase::Verify,
            (Phase::Verify, Outcome::Healthy) => finished(true, self.summary()),
            (Phase::Verify, Outcome::Unhealthy(why)) => {
                self.fail_with_rollback(format!("health check failed: {why}"))
            }
            (Phase::RollBack { reason }, Outcome::Changed(remaining)) if self.after_verdict => {
                let message = format!("{reason}; rolled back {}", self.rolled_back(&remaining));
                self.changes = remaining;
                Phase::RolledBack { message }
            }
            (Phase::RollBack { reason }, Outcome::Changed(remaining))
                if self.repository.is_some() =>
            {
                let undone = self.rolled_back(&remaining);
                self.changes = remaining;
                let file = self
                    .repository
                    .as_ref()
                    .map(|b| b.path.display().to_string())
                    .unwrap_or_default();
                finished(
                    false,
                    format!("{reason}; rolled back {undone}; {file} restored"),
                )
            }
            (Phase::RollBack { reason }, Outcome::Changed(remaining)) => {
                self.changes = remaining;
                finished(false, format!("{reason}; rolled back"))
            }
            (
                Phase::RollBack { reason },
                Outcome::Failed(why) | Outcome::ChangeFailed { message: why, .. },
            ) if self.after_verdict => Phase::RolledBack {
                message: format!("{reason}; rollback failed: {why}"),
            },
            (
                Phase::RollBack { reason },
                Outcome::Failed(why) | Outcome::ChangeFailed { message: why, .. },
            ) => finished(false, format!("{reason}; rollback failed: {why}")),
            (Phase::Finished { success: true, .. }, Outcome::Verifying)
                if self.can_roll_back_after_verdict() =>
            {
                Phase::AwaitVerdict
            }
            (Phase::Finished { .. }, Outcome::Done | Outcome::Verifying) => Phase::Done,
            (Phase::Finished { success, message }, Outcome::Failed(_)) => {
                // Completion is retried by the caller; stay.
                Phase::Finished { success, message }
            }
            (phase, Outcome::Failed(why)) => {
                self.fail_with_rollback(format!("{}: {why}", phase.step()))
            }
            (phase, other) => finished(
                false,
                format!(
                    "internal: unexpected outcome {other:?} in phase {}",
                    phase.step()
                ),
            ),
        };
    }

    /// Called when the agent starts with this record persisted and the host's boot id is
    /// `boot_id_now`: decides how to go on from an interruption.
    pub fn resume(&mut self, boot_id_now: &str) {
        let boot_changed = boot_id_now != self.boot_id;
        let phase = std::mem::replace(&mut self.phase, Phase::Done);
        self.phase = match phase {
            Phase::Reboot | Phase::AwaitReboot if boot_changed => {
                self.rebooted = true;
                self.boot_id = boot_id_now.to_string();
                Phase::Verify
            }
            Phase::Reboot | Phase::AwaitReboot => {
                if self.reboot_attempts < MAX_REBOOT_ATTEMPTS {
                    self.enter_reboot();
                    std::mem::replace(&mut self.phase, Phase::Done)
                } else {
                    finished(
                        false,
                        format!(
                            "the node did not reboot after {} requests",
                            self.reboot_attempts
                        ),
                    )
                }
            }
            Phase::Finished { success, message } => Phase::Finished { success, message },
            // Waiting is safe to repeat; a rollback already reported needs nothing more.
            phase @ (Phase::AwaitVerdict | Phase::RolledBack { .. }) => phase,
            Phase::Done => Phase::Done,
            _ if self.recoveries >= MAX_RECOVERIES && self.after_verdict => {
                self.boot_id = boot_id_now.to_string();
                Phase::RolledBack {
                    message: "the rollback after the failed verdict was interrupted too often"
                        .into(),
                }
            }
            _ if self.recoveries >= MAX_RECOVERIES => {
                self.boot_id = boot_id_now.to_string();
                self.stop("the agent was interrupted too often".into())
            }
            Phase::RollBack { reason } => {
                self.recoveries += 1;
                self.boot_id = boot_id_now.to_string();
                Phase::RollBack { reason }
            }
            Phase::ChangePackages | Phase::Recover { .. } => {
                self.recoveries += 1;
                self.boot_id = boot_id_now.to_string();
                let earlier = matches!(phase, Phase::Recover { boot_changed: true });
                Phase::Recover {
                    boot_changed: boot_changed || earlier,
                }
            }
            // Every step of a Kubernetes upgrade may run again, also on a new boot: the
            // repository is rewritten from the saved file, installs are of exact versions,
            // `kubeadm upgrade` is documented idempotent, a restart and a check are repeatable.
            phase @ (Phase::EtcdSnapshot
            | Phase::SaveRepository
            | Phase::SwitchRepository
            | Phase::InstallKubeadm
            | Phase::KubeadmPlan
            | Phase::KubeadmUpgrade
            | Phase::InstallKubelet) => {
                self.recoveries += 1;
                self.boot_id = boot_id_now.to_string();
                phase
            }
            phase @ (Phase::RestartKubelet | Phase::Verify)
                if self.kubeadm != KubeadmProgress::NotStarted =>
            {
                self.recoveries += 1;
                self.boot_id = boot_id_now.to_string();
                phase
            }
            _ if boot_changed => {
                self.boot_id = boot_id_now.to_string();
                finished(
                    false,
                    format!("the host restarted unexpectedly during {}", phase.step()),
                )
            }
            // Preparing, checking, restarting and verifying are safe to repeat.
            phase => {
                self.recoveries += 1;
                phase
            }
        };
    }

    /// The record's phase is terminal.
    pub fn is_done(&self) -> bool {
        self.phase == Phase::Done
    }

    /// The operation completed and its record waits for the coordinator's verdict.
    pub fn awaits_verdict(&self) -> bool {
        self.phase == Phase::AwaitVerdict
    }

    /// The coordinator's health gate failed the slot after completion: roll back what changed.
    /// Returns whether a rollback starts (only from [`Phase::AwaitVerdict`], so never twice).
    pub fn gate_failed(&mut self) -> bool {
        if !self.awaits_verdict() {
            return false;
        }
        self.after_verdict = true;
        self.phase = Phase::RollBack {
            reason: format!(
                "the coordinator's health gate failed slot {} after the {}",
                self.token,
                self.operation.name()
            ),
        };
        true
    }

    /// Only a package upgrade that changed packages and did not reboot is rolled back after a
    /// failed verdict (a rollback after a reboot would need a second one).
    fn can_roll_back_after_verdict(&self) -> bool {
        matches!(self.operation, Operation::PackageUpgrade { .. })
            && !self.rebooted
            && !self.changes.is_empty()
    }

    /// `name before → after` for each change rolled back (what no longer differs from before).
    fn rolled_back(&self, remaining: &[PackageChange]) -> String {
        let undone: Vec<String> = self
            .changes
            .iter()
            .filter(|c| !remaining.iter().any(|r| r.name == c.name))
            .map(|c| {
                format!(
                    "{} {} to {}",
                    c.name,
                    c.after.as_deref().unwrap_or("(removed)"),
                    c.before.as_deref().unwrap_or("(not installed)")
                )
            })
            .collect();
        let mut text = if undone.is_empty() {
            "nothing".to_owned()
        } else {
            undone.join(", ")
        };
        if !remaining.is_empty() {
            let names: Vec<&str> = remaining.iter().map(|c| c.name.as_str()).collect();
            text.push_str(&format!("; still changed: {}", names.join(", ")));
        }
        text
    }

    fn enter_reboot(&mut self) {
        self.reboot_attempts += 1;
        self.phase = Phase::Reboot;
    }

    fn merge_changes(&mut self, new: Vec<PackageChange>) {
        for c in new {
            match self.changes.iter_mut().find(|o| o.name == c.name) {
                Some(old) => old.after = c.after,
                None => self.changes.push(c),
            }
        }
        self.changes.retain(|c| c.before != c.after);
        self.changes.sort();
    }

    /// After packages changed: kubeadm, reboot check, kubelet restart or verification.
    fn after_change(&mut self) -> Phase {
        match &self.operation {
            Operation::KubernetesUpgrade { .. } => {
                if self.versions_before.contains_key("kubeadm") {
                    Phase::KubeadmUpgrade
                } else {
                    Phase::RestartKubelet
                }
            }
            // Under a policy that never reboots the check still runs, so that the completion
            // says the reboot is still required.
            Operation::PackageUpgrade {
                reboot: UpgradeReboot::IfRequired,
                ..
            } => Phase::CheckReboot,
            // A human's reboot joined the upgrade: reboot whatever the upgrade needs, unless
            // the policy never reboots.
            Operation::PackageUpgrade {
                reboot: UpgradeReboot::Always,
                ..
            } if self.policy_reboots() => {
                self.enter_reboot();
                std::mem::replace(&mut self.phase, Phase::Done)
            }
            Operation::PackageUpgrade { .. } if !self.policy_reboots() => Phase::CheckReboot,
            _ => self.restart_or_verify(),
        }
    }

    fn restart_or_verify(&self) -> Phase {
        let runtime_moved = self
            .changes
            .iter()
            .any(|c| Impact::of_package(&c.name) == Impact::ServiceRestart);
        if runtime_moved {
            Phase::RestartKubelet
        } else {
            Phase::Verify
        }
    }

    fn fail_with_rollback(&self, reason: String) -> Phase {
        if self.kubeadm != KubeadmProgress::NotStarted {
            self.stuck(reason)
        } else if self.rebooted || (self.changes.is_empty() && self.repository.is_none()) {
            finished(false, reason)
        } else {
            Phase::RollBack { reason }
        }
    }

    /// Ends without a rollback; from the kubeadm upgrade on, saying what state the node is in.
    fn stop(&self, reason: String) -> Phase {
        if self.kubeadm != KubeadmProgress::NotStarted {
            self.stuck(reason)
        } else {
            finished(false, reason)
        }
    }

    fn enter_kubeadm_upgrade(&mut self) -> Phase {
        self.kubeadm = KubeadmProgress::Started;
        Phase::KubeadmUpgrade
    }

    /// `kubeadm upgrade apply v1.31.4` or `kubeadm upgrade node`.
    fn kubeadm_command(&self) -> String {
        match self.kubeadm_step() {
            KubeadmStep::Apply => format!(
                "kubeadm upgrade apply v{}",
                self.kubernetes_target().unwrap_or_default()
            ),
            KubeadmStep::Node => "kubeadm upgrade node".into(),
        }
    }

    /// A Kubernetes upgrade that failed at or after its kubeadm upgrade: no rollback (the
    /// cluster's configuration or this node's control plane may have moved already); the
    /// message says which versions the node has, where its repository points, and what that
    /// means.
    fn stuck(&self, reason: String) -> Phase {
        let mut groups: Vec<(bool, String, Vec<&str>)> = Vec::new();
        // kubeadm first: it moves first.
        for name in ["kubeadm", "kubelet", "kubectl"] {
            let Some(before) = self.versions_before.get(name) else {
                continue;
            };
            let now = self
                .changes
                .iter()
                .find(|c| c.name == name)
                .and_then(|c| c.after.clone())
                .unwrap_or_else(|| before.clone());
            let moved = &now != before;
            match groups.iter_mut().find(|g| g.0 == moved && g.1 == now) {
                Some(g) => g.2.push(name),
                None => groups.push((moved, now, vec![name])),
            }
        }
        let mut state: Vec<String> = groups
            .iter()
            .map(|(moved, version, names)| {
                let names = names.join("/");
                let verb = match (moved, names.contains('/')) {
                    (true, true) => "are",
                    (true, false) => "is",
                    (false, _) => "still",
                };
                format!("{names} {verb} {version}")
            })
            .collect();
        let target = self.kubernetes_target().unwrap_or_default();
        if self.repository.is_some()
            && let Some(minor) = repository_minor(&target)
        {
            state.push(format!("repository at v{minor}"));
        }
        let meaning = match (self.kubeadm, self.kubeadm_step()) {
            (KubeadmProgress::Done, KubeadmStep::Apply) => format!(
                "the control plane was upgraded to v{target} (kubeadm upgrade apply succeeded), this node's kubelet may not run it"
            ),
            (KubeadmProgress::Done, KubeadmStep::Node) => {
                "kubeadm upgrade node succeeded, this node's kubelet may not run the new version"
                    .into()
            }
            (_, KubeadmStep::Apply) => "the control plane may be partly upgraded".into(),
            (_, KubeadmStep::Node) => {
                "this node's kubeadm upgrade (its control-plane components or kubelet configuration) may be partly done".into()
            }
        };
        finished(
            false,
            format!(
                "{reason}; {}: {meaning}; nothing was rolled back; the slot stays held",
                state.join(", ")
            ),
        )
    }

    fn summary(&self) -> String {
        let mut parts = vec![format!("{} done", self.operation.name())];
        if let Some(version) = &self.kubernetes_version {
            parts.push(if self.kubeadm == KubeadmProgress::Done {
                format!("Kubernetes v{version} ({})", self.kubeadm_command())
            } else {
                format!("Kubernetes v{version}")
            });
        }
        if let Some(s) = &self.etcd_snapshot {
            parts.push(format!(
                "etcd snapshot {} (revision {}, {} bytes)",
                s.path, s.revision, s.size_bytes
            ));
        }
        if !self.changes.is_empty() {
            parts.push(format!("{} package(s) changed", self.changes.len()));
        }
        if self.rebooted {
            parts.push("rebooted".into());
        }
        if self.reboot_withheld {
            let name = self.policy.as_ref().map_or("", |p| p.name.as_str());
            parts.push(format!(
                "reboot still required: policy {name} never reboots (reboot.mode never)"
            ));
        }
        parts.join(", ")
    }

    /// Whether a reboot required after the upgrade happens: the operation asks for it and the
    /// grant's policy allows it.
    fn may_reboot(&self) -> bool {
        self.operation.may_reboot() && self.policy_reboots()
    }

    /// Whether the grant's policy lets a required reboot happen.
    fn policy_reboots(&self) -> bool {
        self.policy.as_ref().is_none_or(NodePolicy::reboots)
    }

    fn policy_holds(&self) -> &[String] {
        self.policy.as_ref().map_or(&[], |p| p.holds.as_slice())
    }

    /// A package upgrade the grant's policy does not allow: none at all under
    /// `upgrade.mode: none`, and never a package it holds.
    fn policy_problem(&self) -> Option<String> {
        let (Operation::PackageUpgrade { packages, .. }, Some(policy)) =
            (&self.operation, &self.policy)
        else {
            return None;
        };
        if policy.upgrade_mode == UpgradeMode::None {
            return Some(format!(
                "policy {} allows no package upgrades (upgrade.mode none)",
                policy.name
            ));
        }
        packages
            .iter()
            .find(|pin| policy.holds.contains(&pin.name))
            .map(|pin| format!("{} is held by policy {}", pin.name, policy.name))
    }

    /// A Kubernetes upgrade moves one minor version at a time and never down.
    fn kubernetes_skew_problem(&self) -> Option<String> {
        let Operation::KubernetesUpgrade { version, .. } = &self.operation else {
            return None;
        };
        let Some(current) = self.versions_before.get("kubelet") else {
            return Some("kubelet is not installed".into());
        };
        if self.kubeadm_step() == KubeadmStep::Apply
            && !self.versions_before.contains_key("kubeadm")
        {
            return Some("kubeadm upgrade apply needs kubeadm, which is not installed".into());
        }
        let current = crate::detect::upstream_version(current);
        let (Some(cur), Some(target)) = (minor_of(&current), minor_of(version)) else {
            return Some(format!("cannot compare kubelet {current} with {version}"));
        };
        if target < cur || target.1 > cur.1 + 1 || target.0 != cur.0 {
            return Some(format!(
                "kubelet {current} to {version} is not a patch or a one-minor upgrade"
            ));
        }
        None
    }
}

/// `(major, minor)` of `1.30.2` / `v1.30.2`.
fn minor_of(v: &str) -> Option<(u64, u64)> {
    let mut parts = v.trim_start_matches('v').split('.');
    Some((parts.next()?.parse().ok()?, parts.next()?.parse().ok()?))
}

fn finished(success: bool, message: String) -> Phase {
    Phase::Finished { success, message }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(op: Operation) -> OperationRecord {
        OperationRecord::new(7, op, "boot-1".into(), Timestamp::UNIX_EPOCH)
    }

    fn upgrade() -> Operation {
        Operation::PackageUpgrade {
            security_only: false,
            reboot: UpgradeReboot::IfRequired,
            packages: vec![],
        }
    }

    fn change(name: &str, before: &str, after: &str) -> PackageChange {
        PackageChange {
            name: name.into(),
            before: Some(before.into()),
            after: Some(after.into()),
        }
    }

    #[test]
    fn reboot_is_counted_before_it_is_requested() {
        let r = record(Operation::Reboot);
        assert_eq!(r.phase, Phase::Reboot);
        assert_eq!(r.reboot_attempts, 1);
        assert_eq!(r.next_effect(), Some(Effect::Reboot));
    }

    #[test]
    fn upgrade_needing_a_reboot() {
        let mut r = record(upgrade());
        assert_eq!(r.next_effect(), Some(Effect::Prepare));
        r.on(Outcome::Prepared(BTreeMap::from([(
            "libc6".into(),
            "1".into(),
        )])));
        assert_eq!(
            r.next_effect(),
            Some(Effect::Upgrade(UpgradeScope::All.into()))
        );
        r.on(Outcome::Changed(vec![change("libc6", "1", "2")]));
        assert_eq!(r.next_effect(), Some(Effect::CheckRebootRequired));
        r.on(Outcome::RebootRequired(true));
        assert_eq!(r.next_effect(), Some(Effect::Reboot));
        r.on(Outcome::Done);
        assert_eq!(r.phase, Phase::AwaitReboot);
        // The agent starts again on a new boot.
        r.resume("boot-2");
        assert!(r.rebooted);
        assert_eq!(
            r.next_effect(),
            Some(Effect::CheckHealth {
                kubelet_version: None
            })
        );
        r.on(Outcome::Healthy);
        let Some(Effect::Complete {
            success,
            rebooted,
            changed,
            ..
        }) = r.next_effect()
        else {
            panic!("expected completion, got {:?}", r.phase);
        };
        assert!(success && rebooted);
        assert_eq!(
            changed,
            vec![PackagePin {
                name: "libc6".into(),
                version: "2".into()
            }]
        );
        r.on(Outcome::Done);
        assert!(r.is_done());
    }

    /// A human's reboot joined the upgrade: the node reboots even though nothing asks for it.
    #[test]
    fn an_upgrade_merged_with_a_manual_reboot_always_reboots() {
        let mut r = record(Operation::PackageUpgrade {
            security_only: false,
            reboot: UpgradeReboot::Always,
            packages: vec![],
        });
        r.on(Outcome::Prepared(BTreeMap::new()));
        r.on(Outcome::Changed(vec![change("curl", "1", "2")]));
        assert_eq!(r.next_effect(), Some(Effect::Reboot), "no reboot check");
        assert_eq!(r.reboot_attempts, 1);
        r.on(Outcome::Done);
        r.resume("boot-2");
        assert!(r.rebooted);
        // Nothing to upgrade: the reboot still happens.
        let mut r = record(Operation::PackageUpgrade {
            security_only: false,
            reboot: UpgradeReboot::Always,
            packages: vec![],
        });
        r.on(Outcome::Prepared(BTreeMap::new()));
        r.on(Outcome::Changed(vec![]));
        assert_eq!(r.next_effect(), Some(Effect::Reboot));
    }

    /// Completed without a reboot, then the coordinator's health gate fails the slot: the
    /// versions before were kept, the packages go back, the end is reported as progress (no
    /// second completion), and a second failed verdict starts nothing.
    #[test]
    fn a_failed_verdict_after_an_upgrade_without_reboot_rolls_back_once() {
        let completed = |reboot| {
            let mut r = record(Operation::PackageUpgrade {
                security_only: false,
                reboot,
                packages: vec![],
            });
            r.on(Outcome::Prepared(BTreeMap::from([(
                "curl".into(),
                "1".into(),
            )])));
            r.on(Outcome::Changed(vec![change("curl", "1", "2")]));
            if reboot == UpgradeReboot::IfRequired {
                r.on(Outcome::RebootRequired(false));
            }
            r.on(Outcome::Healthy);
            assert!(matches!(
                r.next_effect(),
                Some(Effect::Complete { success: true, .. })
            ));
            r
        };
        let mut r = completed(UpgradeReboot::IfRequired);
        r.on(Outcome::Verifying);
        assert!(r.awaits_verdict() && !r.is_done());
        assert_eq!(r.next_effect(), None);
        // An agent restart meanwhile keeps waiting.
        r.resume("boot-1");
        assert!(r.awaits_verdict());

        assert!(r.gate_failed());
        assert_eq!(
            r.next_effect(),
            Some(Effect::Rollback(vec![change("curl", "1", "2")], None))
        );
        assert!(!r.gate_failed(), "a rollback starts once");
        r.on(Outcome::Changed(vec![]));
        let Phase::RolledBack { message } = &r.phase else {
            panic!("{:?}", r.phase);
        };
        assert!(message.contains("health gate failed slot 7"), "{message}");
        assert!(message.contains("curl 2 to 1"), "{message}");
        assert_eq!(r.next_effect(), None, "no completion after the verdict");
        assert!(!r.gate_failed());

        // A coordinator that only took the completion (a terminal, an older coordinator), an
        // upgrade that changed nothing, or one that rebooted: nothing is kept.
        let mut r = completed(UpgradeReboot::Never);
        r.on(Outcome::Done);
        assert!(r.is_done());
        let mut r = record(upgrade());
        r.on(Outcome::Prepared(BTreeMap::new()));
        r.on(Outcome::Changed(vec![]));
        r.on(Outcome::RebootRequired(false));
        r.on(Outcome::Healthy);
        r.on(Outcome::Verifying);
        assert!(r.is_done());
        let mut r = record(upgrade());
        r.on(Outcome::Prepared(BTreeMap::new()));
        r.on(Outcome::Changed(vec![change("libc6", "1", "2")]));
        r.on(Outcome::RebootRequired(true));
        r.on(Outcome::Done);
        r.resume("boot-2");
        r.on(Outcome::Healthy);
        r.on(Outcome::Verifying);
        assert!(r.is_done(), "{:?}", r.phase);
    }

    #[test]
    fn a_reboot_that_does_not_happen_is_retried_once_then_fails() {
        let mut r = record(Operation::Reboot);
        r.on(Outcome::Done);
        r.on(Outcome::ShutdownTimedOut);
        assert_eq!(r.phase, Phase::Reboot);
        assert_eq!(r.reboot_attempts, 2);
        r.on(Outcome::Done);
        r.on(Outcome::ShutdownTimedOut);
        assert!(matches!(r.phase, Phase::Finished { success: false, .. }));
        // And after an agent restart on the same boot: also no third request.
        let mut r = record(Operation::Reboot);
        r.on(Outcome::Done);
        r.resume("boot-1");
        assert_eq!(r.reboot_attempts, 2);
        r.resume("boot-1");
        assert!(matches!(r.phase, Phase::Finished { success: false, .. }));
    }

    #[test]
    fn kubelet_change_restarts_and_failed_health_rolls_back() {
        let mut r = record(Operation::PackageUpgrade {
            security_only: true,
            reboot: UpgradeReboot::Never,
            packages: vec![],
        });
        r.on(Outcome::Prepared(BTreeMap::new()));
        assert_eq!(
            r.next_effect(),
            Some(Effect::Upgrade(UpgradeScope::SecurityOnly.into()))
        );
        r.on(Outcome::Changed(vec![change("containerd", "1.6", "1.7")]));
        assert_eq!(r.next_effect(), Some(Effect::RestartKubelet));
        r.on(Outcome::Done);
        r.on(Outcome::Unhealthy("kubelet inactive".into()));
        assert_eq!(
            r.next_effect(),
            Some(Effect::Rollback(
                vec![change("containerd", "1.6", "1.7")],
                None
            ))
        );
        r.on(Outcome::Changed(vec![]));
        assert!(
            matches!(&r.phase, Phase::Finished { success: false, message } if message.contains("rolled back"))
        );
    }

    fn kubernetes(version: &str, kubeadm: KubeadmStep) -> OperationRecord {
        record(Operation::KubernetesUpgrade {
            version: version.into(),
            kubeadm,
        })
    }

    fn prepared_kubernetes(v: &str) -> Outcome {
        Outcome::Prepared(BTreeMap::from([
            ("kubelet".to_string(), v.to_string()),
            ("kubeadm".to_string(), v.to_string()),
            ("kubectl".to_string(), v.to_string()),
        ]))
    }

    fn backup() -> RepositoryBackup {
        RepositoryBackup {
            kind: crate::kubernetes::repository::RepositoryKind::Apt,
            path: "/etc/apt/sources.list.d/kubernetes.list".into(),
            content: "deb https://pkgs.k8s.io/core:/stable:/v1.30/deb/ /\n".into(),
        }
    }

    /// The first control-plane node of a minor: repository, kubeadm, plan, apply, kubelet and
    /// kubectl, restart, check of the resolved version.
    #[test]
    fn a_kubernetes_upgrade_goes_the_kubeadm_way() {
        let mut r = kubernetes("1.31", KubeadmStep::Apply);
        r.on(prepared_kubernetes("1.30.9-1.1"));
        assert_eq!(r.next_effect(), Some(Effect::SaveRepository));
        r.on(Outcome::RepositorySaved(backup()));
        assert_eq!(
            r.next_effect(),
            Some(Effect::SwitchRepository {
                backup: backup(),
                target: "1.31".into(),
                package: "kubeadm".into(),
            })
        );
        r.on(Outcome::Resolved("1.31.4".into()));
        assert_eq!(
            r.next_effect(),
            Some(Effect::InstallKubernetes {
                version: "1.31.4".into(),
                packages: vec!["kubeadm".into()],
            })
        );
        r.on(Outcome::Changed(vec![change(
            "kubeadm",
            "1.30.9-1.1",
            "1.31.4-1.1",
        )]));
        assert_eq!(r.next_effect(), Some(Effect::KubeadmPlan("1.31.4".into())));
        r.on(Outcome::Done);
        assert_eq!(
            r.next_effect(),
            Some(Effect::KubeadmUpgrade {
                step: KubeadmStep::Apply,
                version: "1.31.4".into()
            })
        );
        r.on(Outcome::Done);
        assert_eq!(
            r.next_effect(),
            Some(Effect::InstallKubernetes {
                version: "1.31.4".into(),
                packages: vec!["kubelet".into(), "kubectl".into()],
            })
        );
        r.on(Outcome::Changed(vec![
            change("kubeadm", "1.30.9-1.1", "1.31.4-1.1"),
            change("kubectl", "1.30.9-1.1", "1.31.4-1.1"),
            change("kubelet", "1.30.9-1.1", "1.31.4-1.1"),
        ]));
        assert_eq!(r.next_effect(), Some(Effect::RestartKubelet));
        r.on(Outcome::Done);
        assert_eq!(
            r.next_effect(),
            Some(Effect::CheckHealth {
                kubelet_version: Some("1.31.4".into())
            })
        );
        r.on(Outcome::Healthy);
        let Some(Effect::Complete {
            success,
            message,
            changed,
            ..
        }) = r.next_effect()
        else {
            panic!("{:?}", r.phase);
        };
        assert!(success, "{message}");
        assert!(
            message.contains("Kubernetes v1.31.4 (kubeadm upgrade apply v1.31.4)"),
            "{message}"
        );
        assert_eq!(changed.len(), 3);

        // Other nodes: no plan, `kubeadm upgrade node`.
        let mut r = kubernetes("1.31.4", KubeadmStep::Node);
        r.on(prepared_kubernetes("1.30.9-1.1"));
        r.on(Outcome::RepositorySaved(backup()));
        r.on(Outcome::Resolved("1.31.4".into()));
        r.on(Outcome::Changed(vec![change(
            "kubeadm",
            "1.30.9-1.1",
            "1.31.4-1.1",
        )]));
        assert_eq!(
            r.next_effect(),
            Some(Effect::KubeadmUpgrade {
                step: KubeadmStep::Node,
                version: "1.31.4".into()
            })
        );
    }

    #[test]
    fn kubernetes_upgrades_move_one_minor_at_a_time() {
        for (from, to) in [
            ("1.29.0-1.1", "1.31.0"),
            ("1.31.0-1.1", "1.30.9"),
            ("1.30.0", "2.0.0"),
            ("1.29.0-1.1", "1.31"),
        ] {
            let mut r = kubernetes(to, KubeadmStep::Node);
            r.on(prepared_kubernetes(from));
            assert!(
                matches!(r.phase, Phase::Finished { success: false, .. }),
                "{from} -> {to}"
            );
        }
        // `apply` needs kubeadm.
        let mut r = kubernetes("1.31", KubeadmStep::Apply);
        r.on(Outcome::Prepared(BTreeMap::from([(
            "kubelet".to_string(),
            "1.30.9-1.1".to_string(),
        )])));
        assert!(
            matches!(&r.phase, Phase::Finished { success: false, message } if message.contains("needs kubeadm")),
            "{:?}",
            r.phase
        );
    }

    /// Before the kubeadm upgrade a failure restores the repository and rolls back; from it on
    /// nothing is rolled back and the message says what state the node is in.
    #[test]
    fn kubernetes_failures_before_and_after_the_kubeadm_upgrade() {
        let to_plan = || {
            let mut r = kubernetes("1.31.4", KubeadmStep::Apply);
            r.on(prepared_kubernetes("1.30.9-1.1"));
            r.on(Outcome::RepositorySaved(backup()));
            r.on(Outcome::Resolved("1.31.4".into()));
            r.on(Outcome::Changed(vec![change(
                "kubeadm",
                "1.30.9-1.1",
                "1.31.4-1.1",
            )]));
            r
        };
        let mut r = to_plan();
        r.on(Outcome::Failed(
            "kubeadm upgrade plan does not offer it".into(),
        ));
        assert_eq!(
            r.next_effect(),
            Some(Effect::Rollback(
                vec![change("kubeadm", "1.30.9-1.1", "1.31.4-1.1")],
                Some(backup())
            ))
        );
        r.on(Outcome::Changed(vec![]));
        let Phase::Finished {
            success: false,
            message,
        } = &r.phase
        else {
            panic!("{:?}", r.phase);
        };
        assert!(message.contains("does not offer it"), "{message}");
        assert!(
            message.contains("rolled back kubeadm 1.31.4-1.1 to 1.30.9-1.1"),
            "{message}"
        );
        assert!(message.contains("kubernetes.list restored"), "{message}");

        // A switch that fails restores the file even though no package moved.
        let mut r = kubernetes("1.31.4", KubeadmStep::Node);
        r.on(prepared_kubernetes("1.30.9-1.1"));
        r.on(Outcome::RepositorySaved(backup()));
        r.on(Outcome::Failed("apt-get update failed".into()));
        assert_eq!(
            r.next_effect(),
            Some(Effect::Rollback(vec![], Some(backup())))
        );

        // The apply fails: nothing is rolled back.
        let mut r = to_plan();
        r.on(Outcome::Done);
        r.on(Outcome::Failed(
            "exit code 1: [ERROR] etcd unhealthy".into(),
        ));
        let Phase::Finished {
            success: false,
            message,
        } = &r.phase
        else {
            panic!("{:?}", r.phase);
        };
        assert_eq!(
            message,
            "kubeadm upgrade apply v1.31.4 failed: exit code 1: [ERROR] etcd unhealthy; \
             kubeadm is 1.31.4-1.1, kubelet/kubectl still 1.30.9-1.1, repository at v1.31: \
             the control plane may be partly upgraded; nothing was rolled back; the slot stays held"
        );
        // After a successful apply, an unhealthy kubelet is reported the same way.
        let mut r = to_plan();
        r.on(Outcome::Done);
        r.on(Outcome::Done);
        r.on(Outcome::Changed(vec![
            change("kubeadm", "1.30.9-1.1", "1.31.4-1.1"),
            change("kubectl", "1.30.9-1.1", "1.31.4-1.1"),
            change("kubelet", "1.30.9-1.1", "1.31.4-1.1"),
        ]));
        r.on(Outcome::Done);
        r.on(Outcome::Unhealthy("kubelet inactive".into()));
        let Phase::Finished {
            success: false,
            message,
        } = &r.phase
        else {
            panic!("{:?}", r.phase);
        };
        assert!(
            message.contains("kubeadm/kubelet/kubectl are 1.31.4-1.1"),
            "{message}"
        );
        assert!(
            message.contains("the control plane was upgraded to v1.31.4"),
            "{message}"
        );
        assert!(message.contains("the slot stays held"), "{message}");
    }

    /// Every Kubernetes step runs again after a crash, also on a new boot.
    #[test]
    fn kubernetes_steps_resume_also_after_a_reboot() {
        let mut r = kubernetes("1.31.4", KubeadmStep::Apply);
        r.on(prepared_kubernetes("1.30.9-1.1"));
        r.on(Outcome::RepositorySaved(backup()));
        r.on(Outcome::Resolved("1.31.4".into()));
        r.on(Outcome::Changed(vec![]));
        r.on(Outcome::Done);
        assert_eq!(r.phase, Phase::KubeadmUpgrade);
        r.resume("boot-2");
        assert_eq!(r.phase, Phase::KubeadmUpgrade);
        assert_eq!(r.boot_id, "boot-2");
        r.resume("boot-2");
        assert_eq!(r.phase, Phase::KubeadmUpgrade);
        r.resume("boot-2");
        let Phase::Finished {
            success: false,
            message,
        } = &r.phase
        else {
            panic!("{:?}", r.phase);
        };
        assert!(message.contains("interrupted too often"), "{message}");
        assert!(message.contains("the slot stays held"), "{message}");
    }

    /// An operation the policy covers starts with the etcd snapshot; a reboot raises its
    /// counter only when it reboots.
    #[test]
    fn covered_operations_start_with_the_etcd_snapshot() {
        use rota_core::model::{EtcdSnapshotPolicy, SnapshotBefore};
        use rota_core::policy::crd::RebootMode;
        let policy = |before| NodePolicy {
            etcd: EtcdSnapshotPolicy {
                before,
                max_age_seconds: 600,
            },
            ..pool(UpgradeMode::All, RebootMode::WhenRequired)
        };
        let r = record(Operation::Reboot).under(Some(policy(SnapshotBefore::AllOperations)));
        assert_eq!(r.reboot_attempts, 0);
        assert_eq!(
            r.next_effect(),
            Some(Effect::EnsureEtcdSnapshot {
                max_age_seconds: 600
            })
        );
        let mut stacked = r.clone();
        stacked.on(Outcome::Snapshot(None));
        assert_eq!(stacked.phase, Phase::Reboot);
        assert_eq!(stacked.reboot_attempts, 1);
        let mut failed = r;
        failed.on(Outcome::Failed("etcdctl: context deadline exceeded".into()));
        assert!(
            matches!(&failed.phase, Phase::Finished { success: false, message } if message.contains("etcd snapshot before the reboot failed") && message.contains("nothing was changed")),
            "{:?}",
            failed.phase
        );
        // Not covered: the reboot as before.
        let r = record(Operation::Reboot).under(Some(policy(SnapshotBefore::KubernetesUpgrades)));
        assert_eq!(r.phase, Phase::Reboot);
        let r = kubernetes("1.31", KubeadmStep::Node)
            .under(Some(policy(SnapshotBefore::KubernetesUpgrades)));
        assert_eq!(r.phase, Phase::EtcdSnapshot);
        let r = kubernetes("1.31", KubeadmStep::Node).under(Some(policy(SnapshotBefore::Never)));
        assert_eq!(r.phase, Phase::Prepare);
    }

    #[test]
    fn an_interrupted_change_recovers_or_reports() {
        let mut r = record(upgrade());
        r.on(Outcome::Prepared(BTreeMap::new()));
        r.resume("boot-1");
        assert_eq!(
            r.phase,
            Phase::Recover {
                boot_changed: false
            }
        );
        r.on(Outcome::Changed(vec![change("a", "1", "2")]));
        assert_eq!(r.phase, Phase::ChangePackages);
        r.on(Outcome::Changed(vec![change("a", "1", "2")]));
        assert_eq!(r.phase, Phase::CheckReboot);

        let mut r = record(upgrade());
        r.on(Outcome::Prepared(BTreeMap::new()));
        r.resume("boot-2");
        assert_eq!(r.phase, Phase::Recover { boot_changed: true });
        r.on(Outcome::Changed(vec![]));
        assert!(matches!(r.phase, Phase::Finished { success: false, .. }));
    }

    #[test]
    fn a_failed_change_rolls_back_what_it_changed() {
        let mut r = record(upgrade());
        r.on(Outcome::Prepared(BTreeMap::new()));
        r.on(Outcome::ChangeFailed {
            changes: vec![change("a", "1", "2")],
            message: "dpkg error".into(),
        });
        assert_eq!(
            r.next_effect(),
            Some(Effect::Rollback(vec![change("a", "1", "2")], None))
        );
        // Nothing changed: nothing to roll back.
        let mut r = record(upgrade());
        r.on(Outcome::Prepared(BTreeMap::new()));
        r.on(Outcome::ChangeFailed {
            changes: vec![],
            message: "no network".into(),
        });
        assert!(matches!(r.phase, Phase::Finished { success: false, .. }));
    }

    #[test]
    fn unexpected_reboot_during_a_safe_phase_is_reported() {
        let mut r = record(Operation::KubeletRestart);
        r.resume("boot-2");
        assert!(
            matches!(&r.phase, Phase::Finished { success: false, message } if message.contains("restarted unexpectedly"))
        );
    }

    #[test]
    fn records_survive_json() {
        let mut r = record(upgrade());
        r.on(Outcome::Prepared(BTreeMap::from([(
            "a".into(),
            "1".into(),
        )])));
        let json = serde_json::to_string(&r).unwrap();
        let back: OperationRecord = serde_json::from_str(&json).unwrap();
        assert_eq!(back, r);
    }

    fn pool(
        upgrade_mode: UpgradeMode,
        reboot_mode: rota_core::policy::crd::RebootMode,
    ) -> NodePolicy {
        NodePolicy {
            name: "workers".into(),
            upgrade_mode,
            holds: vec!["openssl".into()],
            sentinel_files: None,
            sentinel_command: vec![],
            reboot_command: vec![],
            reboot_mode,
            // These tests are about the rest of the policy; the snapshot has its own.
            etcd: rota_core::model::EtcdSnapshotPolicy {
                before: rota_core::model::SnapshotBefore::Never,
                max_age_seconds: 3600,
            },
        }
    }

    #[test]
    fn the_grants_policy_narrows_the_upgrade_and_adds_its_holds() {
        use rota_core::policy::crd::RebootMode;
        let mut r =
            record(upgrade()).under(Some(pool(UpgradeMode::Security, RebootMode::WhenRequired)));
        r.on(Outcome::Prepared(BTreeMap::new()));
        assert_eq!(
            r.next_effect(),
            Some(Effect::Upgrade(UpgradeSelection {
                scope: UpgradeScope::SecurityOnly,
                holds: vec!["openssl".into()],
            }))
        );
        let mut r = record(upgrade()).under(Some(pool(UpgradeMode::All, RebootMode::WhenRequired)));
        r.on(Outcome::Prepared(BTreeMap::new()));
        assert!(matches!(
            r.next_effect(),
            Some(Effect::Upgrade(UpgradeSelection {
                scope: UpgradeScope::All,
                ..
            }))
        ));
        // The policy survives the state file.
        let back: OperationRecord =
            serde_json::from_str(&serde_json::to_string(&r).unwrap()).unwrap();
        assert_eq!(back, r);
    }

    #[test]
    fn the_grants_policy_refuses_what_it_does_not_allow() {
        use rota_core::policy::crd::RebootMode;
        let mut none =
            record(upgrade()).under(Some(pool(UpgradeMode::None, RebootMode::WhenRequired)));
        none.on(Outcome::Prepared(BTreeMap::new()));
        assert!(
            matches!(&none.phase, Phase::Finished { success: false, message } if message.contains("upgrade.mode none")),
            "{:?}",
            none.phase
        );
        let named = Operation::PackageUpgrade {
            security_only: false,
            reboot: UpgradeReboot::IfRequired,
            packages: vec![PackagePin {
                name: "openssl".into(),
                version: "3.0.15".into(),
            }],
        };
        let mut held = record(named).under(Some(pool(UpgradeMode::All, RebootMode::WhenRequired)));
        held.on(Outcome::Prepared(BTreeMap::new()));
        assert!(
            matches!(&held.phase, Phase::Finished { success: false, message } if message.contains("openssl is held by policy workers")),
            "{:?}",
            held.phase
        );
    }

    #[test]
    fn under_reboot_mode_never_a_required_reboot_is_reported_not_performed() {
        use rota_core::policy::crd::RebootMode;
        let mut r = record(upgrade()).under(Some(pool(UpgradeMode::All, RebootMode::Never)));
        r.on(Outcome::Prepared(BTreeMap::from([(
            "libc6".into(),
            "1".into(),
        )])));
        r.on(Outcome::Changed(vec![change("libc6", "1", "2")]));
        assert_eq!(r.next_effect(), Some(Effect::CheckRebootRequired));
        r.on(Outcome::RebootRequired(true));
        assert_eq!(
            r.next_effect(),
            Some(Effect::CheckHealth {
                kubelet_version: None
            }),
            "no reboot"
        );
        assert_eq!(r.reboot_attempts, 0);
        r.on(Outcome::Healthy);
        let Some(Effect::Complete {
            success,
            rebooted,
            message,
            ..
        }) = r.next_effect()
        else {
            panic!("expected completion, got {:?}", r.phase);
        };
        assert!(success && !rebooted);
        assert!(message.contains("reboot still required"), "{message}");
        // An upgrade asked for without a reboot still checks, to report it.
        let mut r = record(Operation::PackageUpgrade {
            security_only: false,
            reboot: UpgradeReboot::Never,
            packages: vec![],
        })
        .under(Some(pool(UpgradeMode::All, RebootMode::Never)));
        r.on(Outcome::Prepared(BTreeMap::new()));
        r.on(Outcome::Changed(vec![change("libc6", "1", "2")]));
        r.on(Outcome::RebootRequired(true));
        assert!(r.reboot_withheld);
        assert_eq!(r.reboot_attempts, 0);
        // The same upgrade under whenRequired reboots.
        let mut r = record(upgrade()).under(Some(pool(UpgradeMode::All, RebootMode::WhenRequired)));
        r.on(Outcome::Prepared(BTreeMap::new()));
        r.on(Outcome::Changed(vec![change("libc6", "1", "2")]));
        r.on(Outcome::RebootRequired(true));
        assert_eq!(r.next_effect(), Some(Effect::Reboot));
    }
}
