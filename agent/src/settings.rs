//! Where the agent's flags and its pool's policy both have a say: the flags (or their `ROTA_...`
//! variables, or their defaults) are the agent's own values, and a [`NodePolicy`] overrides
//! every field it sets. The daemon, the operation executor and `rota-agent check` all resolve
//! through here, so they cannot disagree. Pure: no I/O.

use std::fmt;
use std::path::PathBuf;

use rota_core::model::NodePolicy;
use rota_core::policy::crd::{RebootMode, UpgradeMode};
use serde::Serialize;
use serde_json::{Value, json};

use crate::detect::DetectConfig;
use crate::host::RebootMethod;

/// Which package upgrades the agent asks slots for (`--upgrade`, overridden by the policy's
/// `upgrade.mode`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum UpgradePolicy {
    /// None: only reboots when the node needs one.
    None,
    /// Security upgrades.
    Security,
    /// Every upgrade.
    All,
}

impl From<UpgradeMode> for UpgradePolicy {
    fn from(mode: UpgradeMode) -> Self {
        match mode {
            UpgradeMode::None => UpgradePolicy::None,
            UpgradeMode::Security => UpgradePolicy::Security,
            UpgradeMode::All => UpgradePolicy::All,
        }
    }
}

/// Where an effective value comes from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Source {
    /// The pool's MaintenancePolicy of this name.
    Policy(String),
    /// The agent's own setting (a flag, its environment variable, or its default).
    Agent,
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Source::Policy(name) => write!(f, "policy {name}"),
            Source::Agent => f.write_str("agent"),
        }
    }
}

/// An effective value and where it comes from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Setting<T> {
    /// The value.
    pub value: T,
    /// Its source.
    pub source: Source,
}

impl<T> Setting<T> {
    /// The policy's value when it sets one, else the agent's own.
    fn pick(own: T, policy: Option<(&NodePolicy, Option<T>)>) -> Self {
        match policy {
            Some((p, Some(value))) => Setting {
                value,
                source: Source::Policy(p.name.clone()),
            },
            _ => Setting {
                value: own,
                source: Source::Agent,
            },
        }
    }
}

/// The agent's own values of what a policy may override.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Own {
    /// `--upgrade`.
    pub upgrade: UpgradePolicy,
    /// `--sentinel`.
    pub sentinel_files: Vec<PathBuf>,
    /// `--sentinel-command`.
    pub sentinel_command: Option<Vec<String>>,
    /// `--reboot-command`.
    pub reboot_method: RebootMethod,
}

/// Every value a policy may override, resolved.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Effective {
    /// Which upgrades to ask for and apply.
    pub upgrade: Setting<UpgradePolicy>,
    /// Packages held on top of the package manager's own holds (the agent has none of its own).
    pub holds: Setting<Vec<String>>,
    /// Reboot sentinel files.
    pub sentinel_files: Setting<Vec<PathBuf>>,
    /// Sentinel command.
    pub sentinel_command: Setting<Option<Vec<String>>>,
    /// How to reboot.
    pub reboot_method: Setting<RebootMethod>,
    /// Whether a required reboot happens (the agent's own: always).
    pub reboot_mode: Setting<RebootMode>,
}

impl Effective {
    /// The agent's own values with `policy`'s on top.
    pub fn resolve(own: &Own, policy: Option<&NodePolicy>) -> Effective {
        Effective {
            upgrade: Setting::pick(
                own.upgrade,
                policy.map(|p| (p, Some(p.upgrade_mode.into()))),
            ),
            holds: Setting::pick(Vec::new(), policy.map(|p| (p, Some(p.holds.clone())))),
            sentinel_files: sentinel_files(&own.sentinel_files, policy),
            sentinel_command: sentinel_command(&own.sentinel_command, policy),
            reboot_method: reboot_method(&own.reboot_method, policy),
            reboot_mode: Setting::pick(
                RebootMode::WhenRequired,
                policy.map(|p| (p, Some(p.reboot_mode))),
            ),
        }
    }

    /// Whether a required reboot may happen.
    pub fn reboots(&self) -> bool {
        self.reboot_mode.value != RebootMode::Never
    }
}

/// Where the agent's own values come from (`flag`, `env` or `default`), as `check` reports
/// them; the agent has no flag for holds and the reboot mode.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AgentSources {
    /// Of `--upgrade`.
    pub upgrade: &'static str,
    /// Of `--sentinel`.
    pub sentinel_files: &'static str,
    /// Of `--sentinel-command`.
    pub sentinel_command: &'static str,
    /// Of `--reboot-command`.
    pub reboot_command: &'static str,
}

impl Default for AgentSources {
    fn default() -> Self {
        AgentSources {
            upgrade: "default",
            sentinel_files: "default",
            sentinel_command: "default",
            reboot_command: "default",
        }
    }
}

/// One value of `rota-agent check`'s settings and where it comes from (`policy NAME`, `flag`,
/// `env` or `default`).
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Shown {
    /// The value.
    pub value: Value,
    /// Its source.
    pub source: String,
}

/// The settings part of `rota-agent check`.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Report {
    /// Whether the coordinator was asked for the node's policy.
    pub policy_consulted: bool,
    /// The policy it named, if any.
    pub policy: Option<String>,
    /// Which upgrades.
    pub upgrade: Shown,
    /// Extra holds.
    pub holds: Shown,
    /// Sentinel files.
    pub sentinel_files: Shown,
    /// Sentinel command.
    pub sentinel_command: Shown,
    /// Reboot command.
    pub reboot_command: Shown,
    /// Reboot mode.
    pub reboot_mode: Shown,
}

impl Effective {
    /// The report of these settings; `agent` says where the agent's own values came from,
    /// `consulted` whether a coordinator was asked for the policy named `policy`.
    pub fn report(&self, agent: &AgentSources, consulted: bool, policy: Option<&str>) -> Report {
        fn shown<T>(setting: &Setting<T>, agent: &str, value: Value) -> Shown {
            let source = match &setting.source {
                Source::Policy(_) => setting.source.to_string(),
                Source::Agent => agent.to_owned(),
            };
            Shown { value, source }
        }
        let upgrade = match self.upgrade.value {
            UpgradePolicy::None => "none",
            UpgradePolicy::Security => "security",
            UpgradePolicy::All => "all",
        };
        let reboot = match &self.reboot_method.value {
            RebootMethod::Systemctl => json!(["systemctl", "reboot"]),
            RebootMethod::Command(argv) => json!(argv),
            RebootMethod::SignalInit => json!("signal"),
        };
        let reboot_mode = match self.reboot_mode.value {
            RebootMode::WhenRequired => "whenRequired",
            RebootMode::Never => "never",
        };
        Report {
            policy_consulted: consulted,
            policy: policy.map(str::to_owned),
            upgrade: shown(&self.upgrade, agent.upgrade, json!(upgrade)),
            holds: shown(&self.holds, "default", json!(self.holds.value)),
            sentinel_files: shown(
                &self.sentinel_files,
                agent.sentinel_files,
                json!(self.sentinel_files.value),
            ),
            sentinel_command: shown(
                &self.sentinel_command,
                agent.sentinel_command,
                json!(self.sentinel_command.value),
            ),
            reboot_command: shown(&self.reboot_method, agent.reboot_command, reboot),
            reboot_mode: shown(&self.reboot_mode, "default", json!(reboot_mode)),
        }
    }
}

/// The sentinel files: the policy's when it names any (an empty list: none), else `own`.
pub fn sentinel_files(own: &[PathBuf], policy: Option<&NodePolicy>) -> Setting<Vec<PathBuf>> {
    Setting::pick(
        own.to_vec(),
        policy.map(|p| {
            let files = p
                .sentinel_files
                .as_ref()
                .map(|files| files.iter().map(PathBuf::from).collect());
            (p, files)
        }),
    )
}

/// The sentinel command: the policy's when it sets one, else `own`.
pub fn sentinel_command(
    own: &Option<Vec<String>>,
    policy: Option<&NodePolicy>,
) -> Setting<Option<Vec<String>>> {
    Setting::pick(
        own.clone(),
        policy.map(|p| {
            let argv = Some(p.sentinel_command.clone()).filter(|argv| !argv.is_empty());
            (p, argv.map(Some))
        }),
    )
}

/// The reboot method: the policy's command when it sets one, else `own`.
pub fn reboot_method(own: &RebootMethod, policy: Option<&NodePolicy>) -> Setting<RebootMethod> {
    Setting::pick(
        own.clone(),
        policy.map(|p| {
            let argv = Some(p.reboot_command.clone()).filter(|argv| !argv.is_empty());
            (p, argv.map(RebootMethod::Command))
        }),
    )
}

/// Detection as `base` configures it, with the policy's sentinels and holds.
pub fn detect_config(base: &DetectConfig, policy: Option<&NodePolicy>) -> DetectConfig {
    DetectConfig {
        sentinel_files: sentinel_files(&base.sentinel_files, policy).value,
        sentinel_command: sentinel_command(&base.sentinel_command, policy).value,
        holds: policy.map(|p| p.holds.clone()).unwrap_or_default(),
        ..base.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn own() -> Own {
        Own {
            upgrade: UpgradePolicy::All,
            sentinel_files: vec![PathBuf::from("/var/run/reboot-required")],
            sentinel_command: Some(vec!["own-check".into()]),
            reboot_method: RebootMethod::SignalInit,
        }
    }

    fn policy() -> NodePolicy {
        NodePolicy {
            name: "workers".into(),
            upgrade_mode: UpgradeMode::Security,
            holds: vec!["openssl".into()],
            sentinel_files: Some(vec!["/run/needs-reboot".into()]),
            sentinel_command: vec!["policy-check".into()],
            reboot_command: vec!["/sbin/shutdown".into(), "-r".into(), "now".into()],
            reboot_mode: RebootMode::Never,
            etcd: Default::default(),
        }
    }

    #[test]
    fn without_a_policy_the_agent_decides() {
        let e = Effective::resolve(&own(), None);
        assert_eq!(e.upgrade.value, UpgradePolicy::All);
        assert!(e.holds.value.is_empty());
        assert_eq!(e.sentinel_files.value, own().sentinel_files);
        assert_eq!(e.sentinel_command.value, own().sentinel_command);
        assert_eq!(e.reboot_method.value, RebootMethod::SignalInit);
        assert!(e.reboots());
        for source in [
            &e.upgrade.source,
            &e.holds.source,
            &e.sentinel_files.source,
            &e.sentinel_command.source,
            &e.reboot_method.source,
            &e.reboot_mode.source,
        ] {
            assert_eq!(*source, Source::Agent);
        }
    }

    #[test]
    fn every_field_the_policy_sets_wins() {
        let e = Effective::resolve(&own(), Some(&policy()));
        let from_policy = Source::Policy("workers".into());
        assert_eq!(
            e.upgrade,
            Setting {
                value: UpgradePolicy::Security,
                source: from_policy.clone()
            }
        );
        assert_eq!(e.holds.value, ["openssl"]);
        assert_eq!(e.sentinel_files.value, [PathBuf::from("/run/needs-reboot")]);
        assert_eq!(e.sentinel_command.value, Some(vec!["policy-check".into()]));
        assert_eq!(
            e.reboot_method.value,
            RebootMethod::Command(vec!["/sbin/shutdown".into(), "-r".into(), "now".into()])
        );
        assert!(!e.reboots());
        assert_eq!(e.reboot_mode.source, from_policy);
        assert_eq!(from_policy.to_string(), "policy workers");
    }

    #[test]
    fn the_report_names_each_values_source() {
        let agent = AgentSources {
            upgrade: "env",
            sentinel_files: "flag",
            ..AgentSources::default()
        };
        let unset = NodePolicy {
            sentinel_files: None,
            reboot_command: vec![],
            ..policy()
        };
        let r = Effective::resolve(&own(), Some(&unset)).report(&agent, true, Some("workers"));
        assert_eq!(r.upgrade.value, json!("security"));
        assert_eq!(r.upgrade.source, "policy workers");
        assert_eq!(r.holds.value, json!(["openssl"]));
        assert_eq!(r.sentinel_files.source, "flag");
        assert_eq!(r.sentinel_command.source, "policy workers");
        assert_eq!(r.reboot_command.value, json!("signal"));
        assert_eq!(r.reboot_command.source, "default");
        assert_eq!(r.reboot_mode.value, json!("never"));
        let r = Effective::resolve(&own(), None).report(&agent, false, None);
        assert_eq!(r.upgrade.source, "env");
        assert_eq!(r.holds.source, "default");
        assert!(!r.policy_consulted);
    }

    #[test]
    fn what_the_policy_leaves_unset_stays_the_agents() {
        let unset = NodePolicy {
            sentinel_files: None,
            sentinel_command: vec![],
            reboot_command: vec![],
            ..policy()
        };
        let e = Effective::resolve(&own(), Some(&unset));
        assert_eq!(e.sentinel_files.value, own().sentinel_files);
        assert_eq!(e.sentinel_files.source, Source::Agent);
        assert_eq!(e.sentinel_command.source, Source::Agent);
        assert_eq!(e.reboot_method.value, RebootMethod::SignalInit);
        // An explicit empty list turns the sentinel files off.
        let off = NodePolicy {
            sentinel_files: Some(vec![]),
            ..policy()
        };
        let e = Effective::resolve(&own(), Some(&off));
        assert!(e.sentinel_files.value.is_empty());
        let detect = detect_config(&DetectConfig::default(), Some(&off));
        assert!(detect.sentinel_files.is_empty());
        assert_eq!(detect.holds, ["openssl"]);
        assert_eq!(detect.sentinel_command, Some(vec!["policy-check".into()]));
    }
}
