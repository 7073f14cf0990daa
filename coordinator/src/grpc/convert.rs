//! Proto messages to domain types and back. Everything an agent sends is validated here; a
//! request that does not validate is refused (`INVALID_ARGUMENT`) before the core sees it.

use std::fmt;

use rota_proto::v1 as pb;

use crate::model::{FencingToken, Impact, NodeFacts, NodeName, Operation, PendingPackage};
use crate::slots::{Completion, NodeState, SlotView};

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

fn invalid(field: impl fmt::Display, reason: impl Into<String>) -> Invalid {
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
    let labels_ok = value.split('.').all(|label| {
        let bytes = label.as_bytes();
        !bytes.is_empty()
            && bytes.len() <= 63
            && bytes
                .iter()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'-')
            && bytes.first().is_some_and(u8::is_ascii_alphanumeric)
            && bytes.last().is_some_and(u8::is_ascii_alphanumeric)
    });
    if !labels_ok {
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

/// Free text up to `max` bytes.
pub fn text(field: &str, value: String, max: usize) -> Result<String, Invalid> {
    if value.len() > max {
        return Err(invalid(
            field,
            format!("is {} bytes; at most {max} are accepted", value.len()),
        ));
    }
    Ok(value)
}

fn required_ident(field: &str, value: String) -> Result<String, Invalid> {
    if value.trim().is_empty() {
        return Err(invalid(field, "is required"));
    }
    ident(field, value)
}

fn ident(field: &str, value: String) -> Result<String, Invalid> {
    if value.chars().any(char::is_whitespace) {
        return Err(invalid(field, format!("{value:?} contains whitespace")));
    }
    text(field, value, MAX_IDENT_BYTES)
}

fn list<T, U>(
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
            reboot_if_required: up.reboot_if_required,
            packages: list(
                "operation.package_upgrade.packages",
                up.packages,
                MAX_PACKAGES,
                pin,
            )?,
        },
        Kind::KubernetesUpgrade(up) => Operation::KubernetesUpgrade {
            version: kubernetes_version("operation.kubernetes_upgrade.version", &up.version)?,
        },
    })
}

fn pin(field: &str, pin: pb::PackagePin) -> Result<(String, String), Invalid> {
    Ok((
        required_ident(&format!("{field}.name"), pin.name)?,
        required_ident(&format!("{field}.version"), pin.version)?,
    ))
}

/// A Kubernetes version `MAJOR.MINOR.PATCH` (a leading `v` is dropped).
fn kubernetes_version(field: &str, value: &str) -> Result<String, Invalid> {
    let bare = value.strip_prefix('v').unwrap_or(value);
    let parts: Vec<&str> = bare.split('.').collect();
    let numeric = |p: &&str| !p.is_empty() && p.len() <= 9 && p.bytes().all(|b| b.is_ascii_digit());
    if parts.len() != 3 || !parts.iter().all(numeric) {
        return Err(invalid(
            field,
            format!("{value:?} is not a Kubernetes version like 1.33.2"),
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
    })
}

fn pending_package(field: &str, p: pb::PendingPackage) -> Result<PendingPackage, Invalid> {
    let impact = match pb::Impact::try_from(p.impact) {
        Ok(pb::Impact::Unspecified) => None,
        Ok(pb::Impact::None) => Some(Impact::None),
        Ok(pb::Impact::ServiceRestart) => Some(Impact::ServiceRestart),
        Ok(pb::Impact::Reboot) => Some(Impact::Reboot),
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
    })
}

/// The completion report of a `Complete` (node and token are validated separately).
pub fn completion(req: pb::CompleteRequest) -> Result<Completion, Invalid> {
    let boot_id = ident("boot_id", req.boot_id)?;
    Ok(Completion {
        success: req.success,
        message: text("message", req.message, MAX_TEXT_BYTES)?,
        boot_id: Some(boot_id).filter(|b| !b.is_empty()),
        rebooted: req.rebooted,
        changed: list("changed", req.changed, MAX_PACKAGES, pin)?,
    })
}

/// A domain operation as proto.
pub fn operation_to_proto(op: &Operation) -> pb::Operation {
    use pb::operation::Kind;
    let kind = match op {
        Operation::Reboot => Kind::Reboot(pb::Reboot {}),
        Operation::KubeletRestart => Kind::KubeletRestart(pb::KubeletRestart {}),
        Operation::PackageUpgrade {
            security_only,
            reboot_if_required,
            packages,
        } => Kind::PackageUpgrade(pb::PackageUpgrade {
            security_only: *security_only,
            reboot_if_required: *reboot_if_required,
            packages: packages
                .iter()
                .map(|(name, version)| pb::PackagePin {
                    name: name.clone(),
                    version: version.clone(),
                })
                .collect(),
        }),
        Operation::KubernetesUpgrade { version } => {
            Kind::KubernetesUpgrade(pb::KubernetesUpgrade {
                version: version.clone(),
            })
        }
    };
    pb::Operation { kind: Some(kind) }
}

fn phase_to_proto(state: NodeState) -> pb::SlotPhase {
    match state {
        NodeState::Idle => pb::SlotPhase::Idle,
        NodeState::Queued => pb::SlotPhase::Queued,
        NodeState::Draining => pb::SlotPhase::Draining,
        NodeState::Granted => pb::SlotPhase::Granted,
        NodeState::Verifying => pb::SlotPhase::Verifying,
        NodeState::Failed => pb::SlotPhase::Failed,
        NodeState::Done => pb::SlotPhase::Done,
    }
}

/// Lease TTL in whole seconds for the proto (rounded down, saturating).
pub fn ttl_seconds(ttl: jiff::SignedDuration) -> u32 {
    u32::try_from(ttl.as_secs().max(0)).unwrap_or(u32::MAX)
}

/// A node's view as the `SlotStatus` the agent receives.
pub fn slot_status(view: &SlotView) -> pb::SlotStatus {
    pb::SlotStatus {
        node: view.node.clone(),
        phase: phase_to_proto(view.state).into(),
        operation: view.operation.as_ref().map(operation_to_proto),
        token: view.token.map_or(0, |t| t.0),
        queue_position: view.queue_position.map_or(0, |p| p.get()),
        waiting_reasons: view.waiting_reasons.clone(),
        lease_ttl_seconds: ttl_seconds(view.lease_ttl),
        message: view.message.clone(),
    }
}
