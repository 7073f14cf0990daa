//! Performs the effects of an [`OperationRecord`] through a [`Host`] and persists the record
//! after every transition.
use rota_core::model::{Impact, KubeadmStep, NodePolicy, Operation, PackagePin};

use std::path::PathBuf;
use std::time::Duration;

use jiff::Timestamp;

use super::machine::{Effect, OperationRecord, Outcome, Phase};
use crate::detect::{self, DetectConfig};
use crate::host::{Host, HostCommand, RebootMethod};
use crate::kubernetes::{etcd, kubeadm, repository};
use crate::packages::{InstallPurpose, PackageManager, diff};
use crate::{Error, Result};
use crate::{settings, state};

/// How the executor performs effects.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ExecutorConfig {
    /// Host path of the persisted state.
    pub state_path: PathBuf,
    /// How to reboot.
    pub reboot_method: RebootMethod,
    /// The kubelet's systemd unit.
    pub kubelet_unit: String,
    /// Command whose exit 0 means "the node is healthy" (run in the host).
    pub health_command: Vec<String>,
    /// Timeout of the health command and of `kubeadm upgrade node`.
    pub command_timeout: Duration,
    /// How long to wait for the host to go down after a reboot request before calling the
    /// reboot failed.
    pub shutdown_wait: Duration,
    /// Reboot checks (sentinels, sentinel command) used after an upgrade, and where the
    /// Kubernetes repository, kubeadm's manifests and the etcd snapshots are
    /// ([`DetectConfig::kubernetes`]).
    pub detect: DetectConfig,
}

impl Default for ExecutorConfig {
    fn default() -> Self {
        ExecutorConfig {
            state_path: PathBuf::from(state::DEFAULT_STATE_PATH),
            reboot_method: RebootMethod::Systemctl,
            kubelet_unit: "kubelet".into(),
            health_command: ["systemctl", "is-active", "--quiet", "kubelet"]
                .map(String::from)
                .to_vec(),
            command_timeout: Duration::from_secs(600),
            shutdown_wait: Duration::from_secs(600),
            detect: DetectConfig::default(),
        }
    }
}

/// The end of an operation, as reported to the coordinator.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Completion {
    /// Whether it succeeded.
    pub success: bool,
    /// For humans.
    pub message: String,
    /// Whether the node rebooted.
    pub rebooted: bool,
    /// Boot id now.
    pub boot_id: String,
    /// Packages changed (name, version after).
    pub changed: Vec<PackagePin>,
}

/// What the coordinator said to a completion.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CompleteAck {
    /// Taken.
    Accepted,
    /// Taken, and the coordinator now verifies the node: its health gate may still fail the
    /// slot (then a package upgrade without a reboot is rolled back).
    Verifying,
    /// The token is no longer the slot's: nothing more to say to anyone.
    Stale,
}

/// Where the executor reports to (the coordinator, or a terminal for `rota-agent upgrade`).
pub trait Reporter: Send + Sync {
    /// The operation entered a new step; best effort.
    fn progress(&self, token: u64, step: &str, message: &str);
    /// The operation ended. An error leaves the record in its finished phase so completion is
    /// retried later.
    fn complete(&self, token: u64, completion: &Completion) -> Result<CompleteAck>;
}

/// Drives one operation to its end.
pub struct Executor<'a> {
    host: &'a dyn Host,
    config: &'a ExecutorConfig,
    reporter: &'a dyn Reporter,
    record: OperationRecord,
}

impl<'a> Executor<'a> {
    /// Starts `operation` under `token` with no pool policy (a manual `rota-agent upgrade`)
    /// and persists it before anything is done.
    pub fn start(
        host: &'a dyn Host,
        config: &'a ExecutorConfig,
        reporter: &'a dyn Reporter,
        token: u64,
        operation: Operation,
        now: Timestamp,
    ) -> Result<Self> {
        Self::start_granted(host, config, reporter, token, operation, None, now)
    }

    /// Starts a granted `operation` under `token` and the pool's `policy` of the grant (which
    /// wins over the agent's flags, see [`OperationRecord::policy`]), and persists it before
    /// anything is done.
    pub fn start_granted(
        host: &'a dyn Host,
        config: &'a ExecutorConfig,
        reporter: &'a dyn Reporter,
        token: u64,
        operation: Operation,
        policy: Option<NodePolicy>,
        now: Timestamp,
    ) -> Result<Self> {
        let record = OperationRecord::new(token, operation, host.boot_id()?, now).under(policy);
        state::save(host, &config.state_path, &record)?;
        Ok(Executor {
            host,
            config,
            reporter,
            record,
        })
    }

    /// Picks up the persisted operation after an agent restart or a reboot, `None` when there
    /// is none.
    pub fn resume(
        host: &'a dyn Host,
        config: &'a ExecutorConfig,
        reporter: &'a dyn Reporter,
    ) -> Result<Option<Self>> {
        let Some(mut record) = state::load(host, &config.state_path)? else {
            return Ok(None);
        };
        record.resume(&host.boot_id()?);
        state::save(host, &config.state_path, &record)?;
        Ok(Some(Executor {
            host,
            config,
            reporter,
            record,
        }))
    }

    /// The operation's record.
    pub fn record(&self) -> &OperationRecord {
        &self.record
    }

    /// Picks up the persisted operation under `token` that awaits the coordinator's verdict,
    /// now that its health gate failed the slot: the returned executor rolls the packages back.
    /// `None` when there is nothing to roll back (no such record, or it is rolling back
    /// already: a rollback starts once).
    pub fn roll_back_after_gate_failure(
        host: &'a dyn Host,
        config: &'a ExecutorConfig,
        reporter: &'a dyn Reporter,
        token: u64,
    ) -> Result<Option<Self>> {
        let Some(mut record) = state::load(host, &config.state_path)? else {
            return Ok(None);
        };
        if record.token != token || !record.gate_failed() {
            return Ok(None);
        }
        state::save(host, &config.state_path, &record)?;
        if let Phase::RollBack { reason } = &record.phase {
            tracing::warn!(token, reason, "rolling the packages back");
            reporter.progress(token, record.phase.step(), reason);
        }
        Ok(Some(Executor {
            host,
            config,
            reporter,
            record,
        }))
    }

    /// The coordinator's verdict on the operation under `token` is in and it is no failure:
    /// forgets the versions kept for a rollback. Returns whether there were any.
    pub fn accept_verdict(host: &dyn Host, config: &ExecutorConfig, token: u64) -> Result<bool> {
        match state::load(host, &config.state_path)? {
            Some(record) if record.token == token && record.awaits_verdict() => {
                state::clear(host, &config.state_path)?;
                Ok(true)
            }
            _ => Ok(false),
        }
    }

    /// Performs the next effect and persists the outcome. Returns `false` once the operation
    /// is over (and its state removed) or waits for the coordinator's verdict (state kept).
    pub fn step(&mut self) -> Result<bool> {
        let Some(effect) = self.record.next_effect() else {
            if !self.record.awaits_verdict() {
                state::clear(self.host, &self.config.state_path)?;
            }
            return Ok(false);
        };
        let before = self.record.phase.step();
        let outcome = self.perform(effect)?;
        self.record.on(outcome);
        if self.record.is_done() {
            state::clear(self.host, &self.config.state_path)?;
            return Ok(false);
        }
        state::save(self.host, &self.config.state_path, &self.record)?;
        let step = self.record.phase.step();
        if step != before {
            let message = match &self.record.phase {
                Phase::RollBack { reason } => reason.as_str(),
                Phase::Finished { message, .. } | Phase::RolledBack { message } => message.as_str(),
                _ => "",
            };
            self.reporter.progress(self.record.token, step, message);
        }
        Ok(true)
    }

    /// Runs the operation to its end.
    pub fn run(&mut self) -> Result<()> {
        while self.step()? {}
        Ok(())
    }

    /// Performs one effect. Failures of the effect become outcomes; only a failure to report
    /// completion is an error (the caller retries).
    pub(super) fn perform(&self, effect: Effect) -> Result<Outcome> {
        tracing::info!(token = self.record.token, ?effect, "performing");
        let k8s = &self.config.detect.kubernetes;
        let outcome = match effect {
            Effect::EnsureEtcdSnapshot { max_age_seconds } => etcd::ensure_fresh(
                self.host,
                &k8s.manifests,
                &k8s.etcd,
                Duration::from_secs(max_age_seconds),
                Timestamp::now(),
            )
            .map_or_else(failed, Outcome::Snapshot),
            Effect::SaveRepository => {
                repository::save(self.host, k8s).map_or_else(failed, Outcome::RepositorySaved)
            }
            Effect::SwitchRepository {
                backup,
                target,
                package,
            } => self
                .switch_repository(&backup, &target, &package)
                .map_or_else(failed, Outcome::Resolved),
            Effect::KubeadmPlan(version) => kubeadm::plan(self.host, &version, k8s.kubeadm_timeout)
                .map_or_else(failed, |()| Outcome::Done),
            Effect::KubeadmUpgrade { step, version } => match step {
                KubeadmStep::Apply => kubeadm::apply(self.host, &version, k8s.kubeadm_timeout),
                KubeadmStep::Node => kubeadm::node(self.host, k8s.kubeadm_timeout),
            }
            .map_or_else(failed, |()| Outcome::Done),
            Effect::Prepare => self
                .with_packages(|pm| {
                    pm.repair()?;
                    pm.installed()
                })
                .map_or_else(failed, Outcome::Prepared),
            Effect::Upgrade(selection) => self.change(|pm| pm.upgrade(&selection)),
            Effect::Install(pins, purpose) => self.change(|pm| pm.install_versions(&pins, purpose)),
            Effect::InstallKubernetes { version, packages } => self.change(|pm| {
                // A repeated install after a crash finds dpkg or rpm as the crash left them.
                pm.repair()?;
                let pins = self.kubernetes_pins(pm, &version, &packages)?;
                pm.install_versions(&pins, InstallPurpose::Kubernetes)
            }),
            Effect::Recover => self.change(|pm| {
                pm.repair()?;
                Ok(Vec::new())
            }),
            Effect::CheckRebootRequired => {
                let family = crate::packages::read_os_release(self.host)
                    .ok()
                    .and_then(|o| o.family());
                // The grant's policy may name other sentinels than the agent's flags.
                let detect =
                    settings::detect_config(&self.config.detect, self.record.policy.as_ref());
                let check = detect::reboot_check(self.host, &detect, family);
                if !check.reasons.is_empty() {
                    Outcome::RebootRequired(true)
                } else if !check.errors.is_empty() {
                    Outcome::Failed(check.errors.join("; "))
                } else {
                    Outcome::RebootRequired(false)
                }
            }
            Effect::Reboot => {
                let method = settings::reboot_method(
                    &self.config.reboot_method,
                    self.record.policy.as_ref(),
                );
                tracing::info!(token = self.record.token, method = ?method.value, source = %method.source, "rebooting");
                self.host
                    .reboot(&method.value)
                    .map_or_else(failed, |()| Outcome::Done)
            }
            Effect::AwaitShutdown => {
                // The host is going down and takes this process with it; returning means it
                // did not.
                std::thread::sleep(self.config.shutdown_wait);
                Outcome::ShutdownTimedOut
            }
            Effect::RestartKubelet => self
                .host
                .restart_unit(&self.config.kubelet_unit)
                .map_or_else(failed, |()| Outcome::Done),
            Effect::CheckHealth { kubelet_version } => self.check_health(kubelet_version),
            Effect::Rollback(changes, backup) => self
                .with_packages(|pm| {
                    if let Some(backup) = &backup {
                        repository::restore(self.host, backup)?;
                    }
                    pm.repair()?;
                    pm.rollback(&changes)?;
                    if changes
                        .iter()
                        .any(|c| Impact::of_package(&c.name) == Impact::ServiceRestart)
                    {
                        self.host.restart_unit(&self.config.kubelet_unit)?;
                    }
                    Ok(diff(&self.record.versions_before, &pm.installed()?))
                })
                .map_or_else(failed, Outcome::Changed),
            Effect::Complete {
                success,
                message,
                rebooted,
                changed,
            } => {
                let completion = Completion {
                    success,
                    message,
                    rebooted,
                    boot_id: self.host.boot_id().unwrap_or_default(),
                    changed,
                };
                match self.reporter.complete(self.record.token, &completion)? {
                    CompleteAck::Accepted => Outcome::Done,
                    CompleteAck::Verifying => Outcome::Verifying,
                    CompleteAck::Stale => {
                        tracing::warn!(
                            token = self.record.token,
                            "the coordinator no longer knows this token; dropping the operation"
                        );
                        Outcome::Done
                    }
                }
            }
        };
        Ok(outcome)
    }

    fn with_packages<T>(&self, f: impl FnOnce(&dyn PackageManager) -> Result<T>) -> Result<T> {
        let pm = self.host.packages()?;
        f(pm.as_ref())
    }

    /// Runs a package change; on failure, finds out what changed anyway. Changes are always
    /// counted from the versions recorded before the operation.
    fn change(
        &self,
        f: impl FnOnce(&dyn PackageManager) -> Result<Vec<crate::packages::PackageChange>>,
    ) -> Outcome {
        let result = self.with_packages(|pm| {
            let r = f(pm);
            let now = pm.installed();
            Ok((r, now))
        });
        match result {
            Ok((Ok(_), Ok(now))) => Outcome::Changed(diff(&self.record.versions_before, &now)),
            Ok((Err(e), Ok(now))) => Outcome::ChangeFailed {
                changes: diff(&self.record.versions_before, &now),
                message: e.to_string(),
            },
            Ok((Ok(changes), Err(_))) => Outcome::Changed(changes),
            Ok((Err(e), Err(_))) | Err(e) => Outcome::ChangeFailed {
                changes: Vec::new(),
                message: e.to_string(),
            },
        }
    }

    /// Switches the repository to the minor of `target`, refreshes, and resolves `target` to
    /// the exact version the repository offers for `package`.
    fn switch_repository(
        &self,
        backup: &repository::RepositoryBackup,
        target: &str,
        package: &str,
    ) -> Result<String> {
        let minor = repository::minor_of(target).ok_or_else(|| {
            Error::Refused(format!(
                "{target:?} is not a Kubernetes version like 1.31.4"
            ))
        })?;
        repository::switch(self.host, &self.config.detect.kubernetes, backup, &minor)?;
        let available = self.host.packages()?.available_versions(package)?;
        let version = kubeadm::resolve(target, &available)?;
        tracing::info!(
            token = self.record.token,
            target,
            version,
            "Kubernetes version resolved"
        );
        Ok(version)
    }

    /// `names` (Kubernetes packages installed before) at the package version of `version`.
    fn kubernetes_pins(
        &self,
        pm: &dyn PackageManager,
        version: &str,
        names: &[String],
    ) -> Result<Vec<PackagePin>> {
        let mut pins = Vec::new();
        for name in names {
            if !self.record.versions_before.contains_key(name) {
                continue;
            }
            let found = pm
                .available_versions(name)?
                .into_iter()
                .find(|v| detect::upstream_version(v) == version);
            match found {
                Some(v) => pins.push(PackagePin {
                    name: name.to_string(),
                    version: v,
                }),
                None => {
                    return Err(Error::Refused(format!(
                        "no {name} package of version {version} is available"
                    )));
                }
            }
        }
        Ok(pins)
    }

    fn check_health(&self, kubelet_version: Option<String>) -> Outcome {
        let cmd = HostCommand::new(self.config.health_command.iter().cloned())
            .timeout(self.config.command_timeout);
        match self.host.run(&cmd) {
            Ok(out) if out.success() => {}
            Ok(out) => return Outcome::Unhealthy(format!("`{}`: {}", cmd.display(), out.status)),
            Err(e) => return Outcome::Unhealthy(e.to_string()),
        }
        let Some(want) = kubelet_version else {
            return Outcome::Healthy;
        };
        let probe = HostCommand::new(["kubelet", "--version"]).timeout(self.config.command_timeout);
        let running = self
            .host
            .run(&probe)
            .ok()
            .filter(|o| o.success())
            .and_then(|o| {
                o.stdout
                    .split_whitespace()
                    .find(|w| w.starts_with('v'))
                    .map(|v| v.trim_start_matches('v').to_string())
            });
        match running {
            Some(v) if v == want => Outcome::Healthy,
            Some(v) => Outcome::Unhealthy(format!("kubelet runs {v}, expected {want}")),
            None => Outcome::Unhealthy("kubelet --version gave no version".into()),
        }
    }
}

fn failed(e: Error) -> Outcome {
    Outcome::Failed(e.to_string())
}
