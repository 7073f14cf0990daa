//! rota's domain model (`rota_core::model`) to proto and back.
//!
//! Both ends use these: the coordinator validates everything an agent sends with them (a request
//! that does not validate is refused with `INVALID_ARGUMENT` before the core sees it), and the
//! agent reads its grants with the same rules. Domain values become proto with `From`.

use std::fmt;

use rota_core::model::{
    EtcdFacts, EtcdMember, EtcdSnapshot, EtcdSnapshotPolicy, FencingToken, Impact, KubeadmStep,
    NodeFacts, NodeName, NodePolicy, Operation, PackagePin, PendingPackage, SnapshotBefore,
    UpgradeReboot,
};
use rota_core::policy::crd::{RebootMode, UpgradeMode};
use rota_core::text::printable_within;

use crate::v1 as pb;

/// Longest free-text field (messages, reasons, steps), in bytes.
pub const MAX_TEXT_BYTES: usize = 1024;
/// Longest identifier-like field (boot id, versions, package names), in bytes.
pub const MAX_IDENT_BYTES: usize = 253;
/// Most entries of a list of strings (kernels, reasons, errors).
pub const MAX_LIST_ENTRIES: usize = 256;
/// Most packages in one list (pending upgrades, pins, changed packages).
pub const MAX_PACKAGES: usize = 4096;

/// A field of a request that does not validate.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {reason}")]
pub struct Invalid {
    /// Path of the field, e.g. `operation.kubernetes_upgrade.version`.
    pub field: String,
    /// Why it is refused.
    pub reason: String,
}

/// A refusal of `field`.
pub fn invalid(field: impl fmt::Display, reason: impl Into<String>) -> Invalid {
    Invalid {
        field: field.to_string(),
        reason: reason.into(),
    }
}

/// A Kubernetes Node name (RFC 1123 subdomain).
pub fn node_name(field: &str, value: &str) -> Result<NodeName, Invalid> {
    if value.is_empty() {
        return Err(invalid(field, "is required"));
    }
    if value.len() > MAX_IDENT_BYTES {
        return Err(invalid(
            field,
            format!(
                "is {} bytes; a node name has at most {MAX_IDENT_BYTES}",
                value.len()
            ),
        ));
    }
    if !rota_core::node::is_dns_subdomain(value) {
        return Err(invalid(
            field,
            format!("{value:?} is not a valid node name (lower-case RFC 1123 subdomain)"),
        ));
    }
    Ok(value.to_owned())
}

/// A fencing token; 0 is "none" in the proto and refused where a token is required.
pub fn token(field: &str, value: u64) -> Result<FencingToken, Invalid> {
    if value == 0 {
        return Err(invalid(field, "is required (the slot's fencing token)"));
    }
    Ok(FencingToken(value))
}

/// Free text up to `max` bytes, without control characters: no newline, escape sequence or NUL
/// reaches a log line, an Event or a terminal through an agent. Senders make their text
/// printable first ([`rota_core::text::printable_within`]).
pub fn text(field: &str, value: String, max: usize) -> Result<String, Invalid> {
    if value.len() > max {
        return Err(invalid(
            field,
            format!("is {} bytes; at most {max} are accepted", value.len()),
        ));
    }
    if let Some((at, c)) = value.char_indices().find(|(_, c)| c.is_control()) {
        return Err(invalid(
            field,
            format!(
                "contains the control character {} at byte {at}; send printable text",
                c.escape_default()
            ),
        ));
    }
    Ok(value)
}

/// A non-empty identifier (no whitespace, at most [`MAX_IDENT_BYTES`]).
pub fn required_ident(field: &str, value: String) -> Result<String, Invalid> {
    if value.trim().is_empty() {
        return Err(invalid(field, "is required"));
    }
    ident(field, value)
}

/// An identifier, possibly empty (no whitespace, at most [`MAX_IDENT_BYTES`]).
pub fn ident(field: &str, value: String) -> Result<String, Invalid> {
    if value.chars().any(char::is_whitespace) {
        return Err(invalid(field, format!("{value:?} contains whitespace")));
    }
    text(field, value, MAX_IDENT_BYTES)
}

/// A list of at most `max` entries, each validated by `each` with its indexed field path.
pub fn list<T, U>(
    field: &str,
    values: Vec<T>,
    max: usize,
    mut each: impl FnMut(&str, T) -> Result<U, Invalid>,
) -> Result<Vec<U>, Invalid> {
    if values.len() > max {
        return Err(invalid(
            field,
            format!("has {} entries; at most {max} are accepted", values.len()),
        ));
    }
    values
        .into_iter()
        .enumerate()
        .map(|(i, v)| each(&format!("{field}[{i}]"), v))
        .collect()
}

/// The operation of a `RequestSlot`; an unset operation is refused.
pub fn operation(value: Option<pb::Operation>) -> Result<Operation, Invalid> {
    use pb::operation::Kind;
    let kind = value.and_then(|op| op.kind).ok_or_else(|| {
        invalid(
            "operation",
            "is required (reboot, kubelet_restart, package_upgrade or kubernetes_upgrade)",
        )
    })?;
    Ok(match kind {
        Kind::Reboot(pb::Reboot {}) => Operation::Reboot,
        Kind::KubeletRestart(pb::KubeletRestart {}) => Operation::KubeletRestart,
        Kind::PackageUpgrade(up) => Operation::PackageUpgrade {
            security_only: up.security_only,
            reboot: match up.reboot() {
                pb::UpgradeReboot::Unspecified => UpgradeReboot::from_legacy(up.reboot_if_required),
                pb::UpgradeReboot::IfRequired => UpgradeReboot::IfRequired,
                pb::UpgradeReboot::Always => UpgradeReboot::Always,
                pb::UpgradeReboot::Never => UpgradeReboot::Never,
            },
            packages: list(
                "operation.package_upgrade.packages",
                up.packages,
                MAX_PACKAGES,
                pin,
            )?,
        },
        Kind::KubernetesUpgrade(up) => Operation::KubernetesUpgrade {
            version: kubernetes_version("operation.kubernetes_upgrade.version", &up.version)?,
            kubeadm: match pb::KubeadmStep::try_from(up.kubeadm) {
                Ok(pb::KubeadmStep::Apply) => KubeadmStep::Apply,
                Ok(pb::KubeadmStep::Node | pb::KubeadmStep::Unspecified) => KubeadmStep::Node,
                Err(_) => {
                    return Err(invalid(
                        "operation.kubernetes_upgrade.kubeadm",
                        format!("{} is not APPLY or NODE", up.kubeadm),
                    ));
                }
            },
        },
    })
}

pub fn pin(field: &str, pin: pb::PackagePin) -> Result<PackagePin, Invalid> {
    Ok(PackagePin {
        name: required_ident(&format!("{field}.name"), pin.name)?,
        version: required_ident(&format!("{field}.version"), pin.version)?,
    })
}

/// A Kubernetes version `MAJOR.MINOR.PATCH`, or `MAJOR.MINOR` for a step of a longer walk (a
/// leading `v` is dropped).
pub fn kubernetes_version(field: &str, value: &str) -> Result<String, Invalid> {
    let bare = value.strip_prefix('v').unwrap_or(value);
    let parts: Vec<&str> = bare.split('.').collect();
    let numeric = |p: &&str| !p.is_empty() && p.len() <= 9 && p.bytes().all(|b| b.is_ascii_digit());
    if !(2..=3).contains(&parts.len()) || !parts.iter().all(numeric) {
        return Err(invalid(
            field,
            format!("{value:?} is not a Kubernetes version like 1.33.2 (or 1.33)"),
        ));
    }
    Ok(bare.to_owned())
}

/// The facts of a `ReportFacts`; missing facts or boot id are refused.
pub fn facts(value: Option<pb::NodeFacts>) -> Result<NodeFacts, Invalid> {
    let f = value.ok_or_else(|| invalid("facts", "is required"))?;
    Ok(NodeFacts {
        boot_id: required_ident("facts.boot_id", f.boot_id)?,
        kernel_running: ident("facts.kernel_running", f.kernel_running)?,
        kernels_installed: list(
            "facts.kernels_installed",
            f.kernels_installed,
            MAX_LIST_ENTRIES,
            required_ident,
        )?,
        reboot_required: f.reboot_required,
        reboot_reasons: list(
            "facts.reboot_reasons",
            f.reboot_reasons,
            MAX_LIST_ENTRIES,
            |field, v| text(field, v, MAX_TEXT_BYTES),
        )?,
        reboot_packages: list(
            "facts.reboot_packages",
            f.reboot_packages,
            MAX_PACKAGES,
            required_ident,
        )?,
        package_backend: ident("facts.package_backend", f.package_backend)?,
        pending_upgrades: list(
            "facts.pending_upgrades",
            f.pending_upgrades,
            MAX_PACKAGES,
            pending_package,
        )?,
        kubelet_version: ident("facts.kubelet_version", f.kubelet_version)?,
        // The agent reports `containerd 1.7.24` (runtime, space, version): free text, like
        // the OS image.
        container_runtime_version: text(
            "facts.container_runtime_version",
            f.container_runtime_version,
            MAX_IDENT_BYTES,
        )?,
        os_image: text("facts.os_image", f.os_image, MAX_IDENT_BYTES)?,
        agent_version: ident("facts.agent_version", f.agent_version)?,
        errors: list("facts.errors", f.errors, MAX_LIST_ENTRIES, |field, v| {
            text(field, v, MAX_TEXT_BYTES)
        })?,
        etcd: f.etcd.map(etcd_facts).transpose()?.unwrap_or_default(),
    })
}

fn etcd_facts(e: pb::EtcdFacts) -> Result<EtcdFacts, Invalid> {
    let member = match pb::EtcdMember::try_from(e.member) {
        Ok(pb::EtcdMember::Unspecified) => EtcdMember::None,
        Ok(pb::EtcdMember::Stacked) => EtcdMember::Stacked,
        Ok(pb::EtcdMember::External) => EtcdMember::External,
        Err(_) => {
            return Err(invalid(
                "facts.etcd.member",
                format!("{} is not STACKED or EXTERNAL", e.member),
            ));
        }
    };
    let snapshot = e
        .snapshot
        .map(|s| -> Result<EtcdSnapshot, Invalid> {
            Ok(EtcdSnapshot {
                path: absolute_path("facts.etcd.snapshot.path", s.path)?,
                size_bytes: s.size_bytes,
                revision: s.revision,
                hash: s.hash,
                total_keys: s.total_keys,
                taken_at: jiff::Timestamp::from_second(s.taken_at_unix_seconds).map_err(|_| {
                    invalid(
                        "facts.etcd.snapshot.taken_at_unix_seconds",
                        format!("{} is out of range", s.taken_at_unix_seconds),
                    )
                })?,
            })
        })
        .transpose()?;
    let error = text(
        "facts.etcd.snapshot_error",
        e.snapshot_error,
        MAX_TEXT_BYTES,
    )?;
    Ok(EtcdFacts {
        member,
        snapshot,
        snapshot_error: (!error.is_empty()).then_some(error),
    })
}

/// The policy of a `ReportFactsResponse` or a `SlotStatus`, as the agent reads it.
pub fn node_policy(field: &str, p: pb::NodePolicy) -> Result<NodePolicy, Invalid> {
    let upgrade_mode = match pb::UpgradeMode::try_from(p.upgrade_mode) {
        Ok(pb::UpgradeMode::None) => UpgradeMode::None,
        Ok(pb::UpgradeMode::Security) => UpgradeMode::Security,
        Ok(pb::UpgradeMode::All) => UpgradeMode::All,
        Ok(pb::UpgradeMode::Unspecified) | Err(_) => {
            return Err(invalid(
                format!("{field}.upgrade_mode"),
                format!("{} is not NONE, SECURITY or ALL", p.upgrade_mode),
            ));
        }
    };
    let reboot_mode = match pb::RebootMode::try_from(p.reboot_mode) {
        Ok(pb::RebootMode::WhenRequired) => RebootMode::WhenRequired,
        Ok(pb::RebootMode::Never) => RebootMode::Never,
        Ok(pb::RebootMode::Unspecified) | Err(_) => {
            return Err(invalid(
                format!("{field}.reboot_mode"),
                format!("{} is not WHEN_REQUIRED or NEVER", p.reboot_mode),
            ));
        }
    };
    let sentinel_files = p
        .sentinel_files
        .map(|files| {
            list(
                &format!("{field}.sentinel_files.paths"),
                files.paths,
                MAX_LIST_ENTRIES,
                absolute_path,
            )
        })
        .transpose()?;
    Ok(NodePolicy {
        name: required_ident(&format!("{field}.name"), p.name)?,
        upgrade_mode,
        holds: list(
            &format!("{field}.holds"),
            p.holds,
            MAX_PACKAGES,
            required_ident,
        )?,
        sentinel_files,
        sentinel_command: argv(&format!("{field}.sentinel_command"), p.sentinel_command)?,
        reboot_command: argv(&format!("{field}.reboot_command"), p.reboot_command)?,
        reboot_mode,
        etcd: p
            .etcd
            .map(|e| etcd_policy(&format!("{field}.etcd"), e))
            .transpose()?
            .unwrap_or_default(),
    })
}

fn etcd_policy(field: &str, e: pb::EtcdSnapshotPolicy) -> Result<EtcdSnapshotPolicy, Invalid> {
    let before = match pb::SnapshotBefore::try_from(e.before) {
        Ok(pb::SnapshotBefore::AllOperations) => SnapshotBefore::AllOperations,
        Ok(pb::SnapshotBefore::KubernetesUpgrades) => SnapshotBefore::KubernetesUpgrades,
        Ok(pb::SnapshotBefore::Never) => SnapshotBefore::Never,
        Ok(pb::SnapshotBefore::Unspecified) | Err(_) => {
            return Err(invalid(
                format!("{field}.before"),
                format!(
                    "{} is not ALL_OPERATIONS, KUBERNETES_UPGRADES or NEVER",
                    e.before
                ),
            ));
        }
    };
    if e.max_age_seconds == 0 {
        return Err(invalid(
            format!("{field}.max_age_seconds"),
            "must be more than zero",
        ));
    }
    Ok(EtcdSnapshotPolicy {
        before,
        max_age_seconds: e.max_age_seconds,
    })
}

/// An absolute host path.
fn absolute_path(field: &str, value: String) -> Result<String, Invalid> {
    if !value.starts_with('/') {
        return Err(invalid(field, format!("{value:?} is not an absolute path")));
    }
    text(field, value, MAX_TEXT_BYTES)
}

/// A command line (argv), possibly empty; a program name must not be empty.
fn argv(field: &str, values: Vec<String>) -> Result<Vec<String>, Invalid> {
    if values
        .first()
        .is_some_and(|program| program.trim().is_empty())
    {
        return Err(invalid(format!("{field}[0]"), "the program name is empty"));
    }
    list(field, values, MAX_LIST_ENTRIES, |f, v| {
        text(f, v, MAX_TEXT_BYTES)
    })
}

fn pending_package(field: &str, p: pb::PendingPackage) -> Result<PendingPackage, Invalid> {
    let impact = match pb::Impact::try_from(p.impact) {
        // An agent that could not tell: the rules the agent itself applies.
        Ok(pb::Impact::Unspecified) => Impact::of_package(&p.name),
        Ok(pb::Impact::None) => Impact::None,
        Ok(pb::Impact::ServiceRestart) => Impact::ServiceRestart,
        Ok(pb::Impact::Reboot) => Impact::Reboot,
        Err(_) => {
            return Err(invalid(
                format!("{field}.impact"),
                format!("{} is not a known impact", p.impact),
            ));
        }
    };
    Ok(PendingPackage {
        name: required_ident(&format!("{field}.name"), p.name)?,
        current_version: ident(&format!("{field}.current_version"), p.current_version)?,
        candidate_version: required_ident(
            &format!("{field}.candidate_version"),
            p.candidate_version,
        )?,
        security: p.security,
        impact,
        // The agent sends only what a plain upgrade would apply.
        blocked: None,
    })
}

impl From<&Operation> for pb::Operation {
    fn from(op: &Operation) -> Self {
        use pb::operation::Kind;
        let kind = match op {
            Operation::Reboot => Kind::Reboot(pb::Reboot {}),
            Operation::KubeletRestart => Kind::KubeletRestart(pb::KubeletRestart {}),
            Operation::PackageUpgrade {
                security_only,
                reboot,
                packages,
            } => Kind::PackageUpgrade(pb::PackageUpgrade {
                security_only: *security_only,
                reboot_if_required: *reboot != UpgradeReboot::Never,
                reboot: match reboot {
                    UpgradeReboot::IfRequired => pb::UpgradeReboot::IfRequired,
                    UpgradeReboot::Always => pb::UpgradeReboot::Always,
                    UpgradeReboot::Never => pb::UpgradeReboot::Never,
                } as i32,
                packages: packages.iter().map(pb::PackagePin::from).collect(),
            }),
            Operation::KubernetesUpgrade { version, kubeadm } => {
                Kind::KubernetesUpgrade(pb::KubernetesUpgrade {
                    version: version.clone(),
                    kubeadm: match kubeadm {
                        KubeadmStep::Apply => pb::KubeadmStep::Apply,
                        KubeadmStep::Node => pb::KubeadmStep::Node,
                    } as i32,
                })
            }
        };
        pb::Operation { kind: Some(kind) }
    }
}

impl From<Impact> for pb::Impact {
    fn from(impact: Impact) -> Self {
        match impact {
            Impact::None => pb::Impact::None,
            Impact::ServiceRestart => pb::Impact::ServiceRestart,
            Impact::Reboot => pb::Impact::Reboot,
        }
    }
}

impl From<&PackagePin> for pb::PackagePin {
    fn from(pin: &PackagePin) -> Self {
        pb::PackagePin {
            name: pin.name.clone(),
            version: pin.version.clone(),
        }
    }
}

/// Facts as the agent sends them: blocked upgrades stay home (a plain upgrade leaves them
/// alone, so they are not the coordinator's business).
/// Free text an agent sends, made to pass [`text`]: a detection error quotes a command's output,
/// which has newlines.
fn sendable(texts: &[String]) -> Vec<String> {
    texts
        .iter()
        .map(|t| printable_within(t, MAX_TEXT_BYTES))
        .collect()
}

impl From<&NodeFacts> for pb::NodeFacts {
    fn from(f: &NodeFacts) -> Self {
        pb::NodeFacts {
            boot_id: f.boot_id.clone(),
            kernel_running: f.kernel_running.clone(),
            kernels_installed: f.kernels_installed.clone(),
            reboot_required: f.reboot_required,
            reboot_reasons: sendable(&f.reboot_reasons),
            pending_upgrades: f
                .pending_upgrades
                .iter()
                .filter(|p| p.blocked.is_none())
                .map(|p| pb::PendingPackage {
                    name: p.name.clone(),
                    current_version: p.current_version.clone(),
                    candidate_version: p.candidate_version.clone(),
                    security: p.security,
                    impact: pb::Impact::from(p.impact).into(),
                })
                .collect(),
            kubelet_version: f.kubelet_version.clone(),
            container_runtime_version: f.container_runtime_version.clone(),
            os_image: f.os_image.clone(),
            agent_version: f.agent_version.clone(),
            errors: sendable(&f.errors),
            reboot_packages: f.reboot_packages.clone(),
            package_backend: f.package_backend.clone(),
            etcd: Some(pb::EtcdFacts {
                member: match f.etcd.member {
                    EtcdMember::None => pb::EtcdMember::Unspecified,
                    EtcdMember::Stacked => pb::EtcdMember::Stacked,
                    EtcdMember::External => pb::EtcdMember::External,
                } as i32,
                snapshot: f.etcd.snapshot.as_ref().map(|s| pb::EtcdSnapshot {
                    path: s.path.clone(),
                    size_bytes: s.size_bytes,
                    revision: s.revision,
                    hash: s.hash,
                    total_keys: s.total_keys,
                    taken_at_unix_seconds: s.taken_at.as_second(),
                }),
                snapshot_error: f
                    .etcd
                    .snapshot_error
                    .as_deref()
                    .map(|e| printable_within(e, MAX_TEXT_BYTES))
                    .unwrap_or_default(),
            }),
        }
    }
}

impl From<&NodePolicy> for pb::NodePolicy {
    fn from(p: &NodePolicy) -> Self {
        let upgrade_mode = match p.upgrade_mode {
            UpgradeMode::None => pb::UpgradeMode::None,
            UpgradeMode::Security => pb::UpgradeMode::Security,
            UpgradeMode::All => pb::UpgradeMode::All,
        };
        let reboot_mode = match p.reboot_mode {
            RebootMode::WhenRequired => pb::RebootMode::WhenRequired,
            RebootMode::Never => pb::RebootMode::Never,
        };
        pb::NodePolicy {
            name: p.name.clone(),
            upgrade_mode: upgrade_mode.into(),
            holds: p.holds.clone(),
            sentinel_files: p.sentinel_files.as_ref().map(|paths| pb::SentinelFiles {
                paths: paths.clone(),
            }),
            sentinel_command: p.sentinel_command.clone(),
            reboot_command: p.reboot_command.clone(),
            reboot_mode: reboot_mode.into(),
            etcd: Some(pb::EtcdSnapshotPolicy {
                before: match p.etcd.before {
                    SnapshotBefore::AllOperations => pb::SnapshotBefore::AllOperations,
                    SnapshotBefore::KubernetesUpgrades => pb::SnapshotBefore::KubernetesUpgrades,
                    SnapshotBefore::Never => pb::SnapshotBefore::Never,
                } as i32,
                max_age_seconds: p.etcd.max_age_seconds,
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> NodePolicy {
        NodePolicy {
            name: "workers".into(),
            upgrade_mode: UpgradeMode::All,
            holds: vec!["openssl".into()],
            sentinel_files: Some(vec!["/run/needs-reboot".into()]),
            sentinel_command: vec!["/usr/local/bin/needs-reboot".into()],
            reboot_command: vec!["/sbin/shutdown".into(), "-r".into(), "now".into()],
            reboot_mode: RebootMode::Never,
            etcd: Default::default(),
        }
    }

    #[test]
    fn node_policies_round_trip_with_set_and_unset_fields() {
        let unset = NodePolicy {
            upgrade_mode: UpgradeMode::None,
            holds: vec![],
            sentinel_files: None,
            sentinel_command: vec![],
            reboot_command: vec![],
            reboot_mode: RebootMode::WhenRequired,
            ..policy()
        };
        let off = NodePolicy {
            sentinel_files: Some(vec![]),
            upgrade_mode: UpgradeMode::Security,
            ..policy()
        };
        for p in [policy(), unset, off] {
            assert_eq!(node_policy("policy", pb::NodePolicy::from(&p)), Ok(p));
        }
    }

    #[test]
    fn bad_node_policies_are_refused_with_their_field() {
        let good = pb::NodePolicy::from(&policy());
        let cases = [
            (
                pb::NodePolicy {
                    upgrade_mode: 0,
                    ..good.clone()
                },
                "policy.upgrade_mode",
            ),
            (
                pb::NodePolicy {
                    reboot_mode: 9,
                    ..good.clone()
                },
                "policy.reboot_mode",
            ),
            (
                pb::NodePolicy {
                    name: String::new(),
                    ..good.clone()
                },
                "policy.name",
            ),
            (
                pb::NodePolicy {
                    holds: vec!["open ssl".into()],
                    ..good.clone()
                },
                "policy.holds[0]",
            ),
            (
                pb::NodePolicy {
                    sentinel_files: Some(pb::SentinelFiles {
                        paths: vec!["run/x".into()],
                    }),
                    ..good.clone()
                },
                "policy.sentinel_files.paths[0]",
            ),
            (
                pb::NodePolicy {
                    reboot_command: vec![" ".into()],
                    ..good.clone()
                },
                "policy.reboot_command[0]",
            ),
            (
                pb::NodePolicy {
                    sentinel_command: vec!["x".repeat(MAX_TEXT_BYTES + 1)],
                    ..good
                },
                "policy.sentinel_command[0]",
            ),
        ];
        for (bad, field) in cases {
            let err = node_policy("policy", bad).unwrap_err();
            assert_eq!(err.field, field, "{err}");
        }
    }
}
