//! Folding a slot's [`Transition`]s into its [`MaintenanceRecordSpec`].
//!
//! The writer keeps no state of its own: each transition, with what the coordinator knew when it
//! happened ([`RecordContext`]), is applied to the record as stored. Applying is idempotent (a
//! retried write, or a transition seen twice, changes nothing more), so a coordinator that took
//! over continues the record its predecessor wrote.

use jiff::{SignedDuration, Timestamp};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

use super::MAX_LISTED;
use super::crd::{MaintenanceRecordSpec, NodeVersions, PackageChange, RecordOrigin, RecordOutcome};
use crate::model::{FencingToken, NodeFacts, Operation, Origin, PackagePin, UpgradeReboot};
use crate::slots::{HeldSlot, Transition, TransitionReason};

/// What the coordinator knew about the node when a transition happened, besides the
/// transition itself.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RecordContext {
    /// The node's pool.
    pub pool: Option<String>,
    /// Who set the manual request's annotation (its field manager), when known.
    pub requested_by: Option<String>,
    /// The node's facts, as its agent last reported them.
    pub facts: Option<NodeFacts>,
    /// What the Node's `status.nodeInfo` shows now.
    pub node: Option<NodeVersions>,
    /// The pods the drain evicted (`namespace/name`), for the grant.
    pub evicted: Option<Vec<String>>,
    /// When the drain finished, for the grant.
    pub drained_at: Option<Timestamp>,
}

impl RecordContext {
    /// The node's versions now: `status.nodeInfo`, each field completed from the agent's facts.
    pub fn versions(&self) -> Option<NodeVersions> {
        let from_facts = self.facts.as_ref().map(NodeVersions::from_facts);
        let merged = match (self.node.clone(), from_facts) {
            (Some(node), Some(facts)) => NodeVersions {
                kernel: or_else(node.kernel, facts.kernel),
                kubelet: or_else(node.kubelet, facts.kubelet),
                os_image: or_else(node.os_image, facts.os_image),
            },
            (node, facts) => node.or(facts)?,
        };
        (!merged.is_empty()).then_some(merged)
    }
}

fn or_else(first: String, second: String) -> String {
    if first.is_empty() { second } else { first }
}

impl NodeVersions {
    /// What the agent reports of the node's versions.
    pub fn from_facts(facts: &NodeFacts) -> Self {
        NodeVersions {
            kernel: facts.kernel_running.clone(),
            kubelet: facts.kubelet_version.clone(),
            os_image: facts.os_image.clone(),
        }
    }
}

/// The record's object name: `<node>-<token>`, unique because tokens are (one cluster-wide
/// counter), and the same for every replica. A node name too long for the suffix is cut.
pub fn record_name(node: &str, token: FencingToken) -> String {
    const MAX_NAME: usize = 253;
    let suffix = format!("-{token}");
    let mut prefix = node;
    if prefix.len() + suffix.len() > MAX_NAME {
        // Node names are ASCII (RFC 1123), so any byte index is a char boundary.
        prefix = prefix.get(..MAX_NAME - suffix.len()).unwrap_or(prefix);
        prefix = prefix.trim_end_matches(['-', '.']);
    }
    format!("{prefix}{suffix}")
}

/// The token as the record keeps it (Kubernetes integers are signed; tokens never get near
/// the limit).
pub fn token_value(token: FencingToken) -> i64 {
    i64::try_from(token.0).unwrap_or(i64::MAX)
}

/// A new record for the slot `transition` concerns, with `transition` applied; `None` when it
/// concerns no slot (requests before admission).
pub fn start(transition: &Transition, context: &RecordContext) -> Option<MaintenanceRecordSpec> {
    let token = transition.token?;
    let mut spec = MaintenanceRecordSpec {
        node: transition.node.clone(),
        operation: transition.operation.name().to_owned(),
        operation_detail: operation_detail(&transition.operation),
        token: token_value(token),
        ..MaintenanceRecordSpec::default()
    };
    apply(&mut spec, transition, context);
    Some(spec)
}

/// Applies one transition of the record's slot (others are ignored). Idempotent.
pub fn apply(spec: &mut MaintenanceRecordSpec, transition: &Transition, context: &RecordContext) {
    if transition.token.map(token_value) != Some(spec.token) || transition.node != spec.node {
        return;
    }
    let at = transition.at;
    if spec.pool.is_none() {
        spec.pool.clone_from(&context.pool);
    }
    if spec.requested_by.is_empty()
        && let Some(by) = &context.requested_by
    {
        spec.requested_by.clone_from(by);
    }
    if let Some(held) = &transition.held {
        from_slot(spec, held);
    }
    let phases = &mut spec.phases;
    match transition.reason {
        TransitionReason::Admitted => {
            set_once(&mut phases.admitted, at);
            if spec.before.is_empty()
                && let Some(versions) = context.versions()
            {
                spec.before = versions;
            }
            if spec.etcd_snapshot.is_none()
                && let Some(snapshot) = context
                    .facts
                    .as_ref()
                    .and_then(|f| f.etcd.snapshot.as_ref())
            {
                // The snapshot the admission waited for (a stacked etcd member's).
                spec.etcd_snapshot = Some(format!(
                    "{} (saved {}, revision {}, {} keys, hash {:08x}, {} bytes)",
                    snapshot.path,
                    snapshot.taken_at,
                    snapshot.revision,
                    snapshot.total_keys,
                    snapshot.hash,
                    snapshot.size_bytes
                ));
            }
            if spec.pending_packages.is_empty()
                && changes_packages(&transition.operation)
                && let Some(facts) = &context.facts
            {
                spec.pending_packages = facts
                    .pending_upgrades
                    .iter()
                    .take(MAX_LISTED)
                    .map(|p| PackageChange {
                        name: p.name.clone(),
                        from: p.current_version.clone(),
                        to: p.candidate_version.clone(),
                        security: p.security,
                    })
                    .collect();
            }
        }
        TransitionReason::Drained => {
            set_once(&mut phases.granted, at);
            set_once(&mut phases.drained, context.drained_at.unwrap_or(at));
            if let Some(evicted) = &context.evicted {
                spec.pods_evicted = i32::try_from(evicted.len()).unwrap_or(i32::MAX);
                spec.evicted_pods = evicted.iter().take(MAX_LISTED).cloned().collect();
            }
        }
        TransitionReason::Completed => set_once(&mut phases.completed, at),
        TransitionReason::OperationFailed | TransitionReason::Failed => {
            if transition.reason == TransitionReason::OperationFailed {
                set_once(&mut phases.completed, at);
            }
            set_once(&mut phases.failed, at);
            spec.outcome = RecordOutcome::Failed;
            set_after(spec, context);
        }
        TransitionReason::Verified => {
            set_once(&mut phases.verified, at);
            end(spec, RecordOutcome::Succeeded, at);
            set_after(spec, context);
        }
        TransitionReason::Recovered => {
            end(spec, RecordOutcome::Recovered, at);
            set_after(spec, context);
        }
        TransitionReason::Released => end(spec, RecordOutcome::Released, at),
        TransitionReason::ForceReleased => {
            end(spec, RecordOutcome::ForceReleased, at);
            if spec.phases.completed.is_some() {
                set_after(spec, context);
            }
        }
        TransitionReason::DrainFailed => end(spec, RecordOutcome::DrainFailed, at),
        TransitionReason::NodeDeleted => end(spec, RecordOutcome::NodeDeleted, at),
        TransitionReason::Requested
        | TransitionReason::RequestReplaced
        | TransitionReason::Withdrawn => {}
    }
    spec.reason.clone_from(&transition.message);
}

/// What the ledger's slot says: origin, phase times, the agent's completion.
fn from_slot(spec: &mut MaintenanceRecordSpec, held: &HeldSlot) {
    if token_value(held.slot.token) != spec.token {
        return;
    }
    spec.origin = match held.slot.origin {
        Origin::Manual => RecordOrigin::Manual,
        Origin::Agent => RecordOrigin::Schedule,
        Origin::FleetLock => RecordOrigin::FleetLock,
        Origin::Rollout => RecordOrigin::Rollout,
    };
    let phases = &mut spec.phases;
    set_once(&mut phases.requested, held.requested_at);
    set_once(&mut phases.admitted, held.slot.admitted_at);
    if let Some(granted) = held.slot.granted_at {
        set_once(&mut phases.granted, granted);
    }
    if let Some(completion) = &held.completion {
        set_once(&mut phases.completed, completion.at);
        spec.rebooted = Some(completion.rebooted);
        spec.packages_changed_count =
            i32::try_from(completion.changed_packages).unwrap_or(i32::MAX);
        spec.packages_changed = join_packages(&spec.pending_packages, &completion.changed);
    }
}

/// The packages the agent changed, each with its version before and security flag from the
/// upgrades pending at admission.
pub fn join_packages(pending: &[PackageChange], changed: &[PackagePin]) -> Vec<PackageChange> {
    changed
        .iter()
        .map(|pin| {
            let before = pending.iter().find(|p| p.name == pin.name);
            PackageChange {
                name: pin.name.clone(),
                from: before.map(|p| p.from.clone()).unwrap_or_default(),
                to: pin.version.clone(),
                security: before.is_some_and(|p| p.security),
            }
        })
        .collect()
}

fn set_once(field: &mut Option<Time>, at: Timestamp) {
    if field.is_none() {
        *field = Some(Time(at));
    }
}

fn set_after(spec: &mut MaintenanceRecordSpec, context: &RecordContext) {
    if let Some(versions) = context.versions() {
        spec.after = Some(versions);
    }
}

fn end(spec: &mut MaintenanceRecordSpec, outcome: RecordOutcome, at: Timestamp) {
    spec.outcome = outcome;
    set_once(&mut spec.phases.ended, at);
    if let (Some(Time(start)), Some(Time(end))) = (&spec.phases.admitted, &spec.phases.ended) {
        spec.duration = format_duration(end.duration_since(*start));
    }
}

/// Whether an operation changes packages (so the pending upgrades at admission matter).
fn changes_packages(operation: &Operation) -> bool {
    matches!(
        operation,
        Operation::PackageUpgrade { .. } | Operation::KubernetesUpgrade { .. }
    )
}

/// One line on what exactly the operation does, beyond its name.
pub fn operation_detail(operation: &Operation) -> String {
    match operation {
        Operation::Reboot | Operation::KubeletRestart => String::new(),
        Operation::KubernetesUpgrade { version, .. } => format!("target {version}"),
        Operation::PackageUpgrade {
            security_only,
            reboot,
            packages,
        } => {
            let scope = if *security_only {
                "security updates only"
            } else {
                "all updates"
            };
            let reboot = match reboot {
                UpgradeReboot::IfRequired => "reboot if required",
                UpgradeReboot::Always => "then reboot",
                UpgradeReboot::Never => "no reboot",
            };
            if packages.is_empty() {
                format!("{scope}; {reboot}")
            } else {
                format!("{scope}; {reboot}; {} pinned packages", packages.len())
            }
        }
    }
}

/// `1h2m3s`, `4m0s`, `12s`: a duration for tables and the record's `duration`.
pub fn format_duration(duration: SignedDuration) -> String {
    let total = duration.as_secs().max(0);
    let (hours, minutes, seconds) = (total / 3600, total / 60 % 60, total % 60);
    if hours > 0 {
        format!("{hours}h{minutes}m{seconds}s")
    } else if minutes > 0 {
        format!("{minutes}m{seconds}s")
    } else {
        format!("{seconds}s")
    }
}
