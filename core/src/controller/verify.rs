//! Is a node healthy after its maintenance? (`docs/architecture.md`, step 6.) Pure: the caller passes the
//! node, its pods, the cluster's DaemonSets and `now`.
//!
//! A node passes when, within the policy's `health.readyTimeout` after the agent reported
//! completion:
//! - it is `Ready`;
//! - for a Kubernetes upgrade, its kubelet runs the target version;
//! - when the operation rebooted it, the boot id changed: the agent's report is checked against
//!   the boot id from before the admission, and so is the kubelet's `status.nodeInfo.bootID`
//!   (waited for, since the kubelet reports it a little after it starts);
//! - its DaemonSet pods are Ready: the policy's `health.requiredDaemonSets` that target the node
//!   (by their pod template's node selector), or, when the policy names none, every DaemonSet pod
//!   on the node;
//! - what it sees post-dates the maintenance ([`Freshness`]): after a reboot or a kubelet restart
//!   the kubelet must have reported the node Ready since the slot was granted, and after a reboot
//!   each of those DaemonSet pods must have started or become Ready since then. A pod survives a
//!   reboot as an API object and keeps its old `Ready=True` until the new kubelet resyncs it, so
//!   "Ready" alone can be a report from before the reboot.
//!
//! A report that cannot be true (a reboot that did not change the boot id, a `Reboot` that did
//! not reboot) fails at once; anything else is waited for until the deadline.

use std::collections::BTreeMap;
use std::sync::Arc;

use jiff::Timestamp;
use k8s_openapi::api::apps::v1::DaemonSet;
use k8s_openapi::api::core::v1::{Node, Pod};

use crate::model::Operation;
use crate::node::{is_ready, outage_taint, ready_condition};
use crate::policy::{Health, KubeVersion, NamespacedName};
use crate::slots::{HeldSlot, RebootEvidence};

/// The outcome of one verification.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Healthy: release the slot.
    Healthy,
    /// Not yet healthy; checked again on every change, and failed at `deadline`.
    Pending {
        /// What is still wrong.
        problems: Vec<String>,
        /// When the verification gives up.
        deadline: Timestamp,
    },
    /// The maintenance failed.
    Failed {
        /// Why, for the Event and the node's view.
        reason: String,
    },
}

/// What the reboot check says.
enum RebootCheck {
    Ok,
    Wait(String),
    Fail(String),
}

/// Verifies a node whose slot is `Verifying`.
pub fn verify<'a>(
    held: &HeldSlot,
    node: Option<&Node>,
    pods: impl IntoIterator<Item = &'a Pod>,
    daemon_sets: &BTreeMap<NamespacedName, Arc<DaemonSet>>,
    health: &Health,
    now: Timestamp,
) -> Verdict {
    let mut problems = Vec::new();
    match reboot_check(held, node) {
        RebootCheck::Fail(reason) => return Verdict::Failed { reason },
        RebootCheck::Wait(problem) => problems.push(problem),
        RebootCheck::Ok => {}
    }
    problems.extend(health_problems(held, node, pods, daemon_sets, health));
    if problems.is_empty() {
        return Verdict::Healthy;
    }
    let deadline = held
        .slot
        .phase_since
        .saturating_add(health.ready_timeout)
        .unwrap_or(Timestamp::MAX);
    if now >= deadline {
        Verdict::Failed {
            reason: format!(
                "node not healthy within {:#}: {}",
                health.ready_timeout,
                problems.join("; ")
            ),
        }
    } else {
        Verdict::Pending { problems, deadline }
    }
}

/// Judges a `Granted` slot whose lease expired: its agent stopped renewing, typically because
/// the node went away during its reboot. The expired lease frees no capacity (`docs/architecture.md`,
/// "Slots, leases and fencing"), but a node that is still not Ready `health.readyTimeout` after
/// the lease expired has failed its maintenance: the slot fails and stays held, so that an Event
/// fires and the failure counts towards the circuit breaker. Without this, a node that never
/// comes back would hold its slot in `Granted` forever and the breaker would never open.
///
/// `None`: nothing to judge — the lease runs, the node is Ready (its agent resumes from its
/// persisted state when it comes back), or the Node object is gone (its deletion frees the
/// slot).
pub fn abandoned(
    held: &HeldSlot,
    node: Option<&Node>,
    health: &Health,
    now: Timestamp,
) -> Option<Verdict> {
    let expired = held.slot.lease_expires_at;
    let node = node?;
    if now < expired || is_ready(node) {
        return None;
    }
    let deadline = expired
        .saturating_add(health.ready_timeout)
        .unwrap_or(Timestamp::MAX);
    let problem = not_ready_text(node);
    Some(if now >= deadline {
        Verdict::Failed {
            reason: format!(
                "the agent stopped renewing its lease at {expired}; {:#} later, the {problem}",
                health.ready_timeout
            ),
        }
    } else {
        Verdict::Pending {
            problems: vec![problem],
            deadline,
        }
    })
}

/// Whether a `Failed` slot's node has recovered: the agent did what it was asked (it reported
/// success, and a reboot it reported is confirmed) and the node is healthy now. A failure the
/// agent reported, or a reboot that did not happen, needs a human (`rota.dev/release`).
pub fn recovered<'a>(
    held: &HeldSlot,
    node: Option<&Node>,
    pods: impl IntoIterator<Item = &'a Pod>,
    daemon_sets: &BTreeMap<NamespacedName, Arc<DaemonSet>>,
    health: &Health,
) -> bool {
    let agent_succeeded = held.completion.as_ref().is_some_and(|c| c.success);
    agent_succeeded
        && matches!(reboot_check(held, node), RebootCheck::Ok)
        && health_problems(held, node, pods, daemon_sets, health).is_empty()
}

fn reboot_check(held: &HeldSlot, node: Option<&Node>) -> RebootCheck {
    let before = held.slot.boot_id_before.as_deref();
    let evidence = held.reboot_evidence();
    match evidence {
        RebootEvidence::Pending => {
            return RebootCheck::Wait("the agent has not reported completion".to_owned());
        }
        RebootEvidence::NotRebooted if held.slot.operation == Operation::Reboot => {
            return RebootCheck::Fail(
                "the agent reports that the reboot did not happen".to_owned(),
            );
        }
        RebootEvidence::NotRebooted => return RebootCheck::Ok,
        RebootEvidence::BootIdUnchanged => {
            return RebootCheck::Fail(format!(
                "the agent reports a reboot, but the boot id is still {}",
                before.unwrap_or_default()
            ));
        }
        RebootEvidence::Confirmed | RebootEvidence::Unverifiable => {}
    }
    let kubelet_boot = node
        .and_then(|n| n.status.as_ref())
        .and_then(|s| s.node_info.as_ref())
        .map(|i| i.boot_id.as_str())
        .filter(|b| !b.is_empty());
    match (before, kubelet_boot) {
        (Some(before), Some(now)) if before == now => RebootCheck::Wait(format!(
            "the kubelet still reports boot id {before} from before the reboot"
        )),
        (Some(_), Some(_)) => RebootCheck::Ok,
        (Some(_), None) if evidence == RebootEvidence::Confirmed => RebootCheck::Ok,
        (Some(_), None) => RebootCheck::Wait(
            "no boot id after the reboot yet (neither the agent nor the kubelet reported one)"
                .to_owned(),
        ),
        (None, _) => RebootCheck::Fail(
            "cannot verify the reboot: the boot id before it is unknown".to_owned(),
        ),
    }
}

/// What is wrong with the node's health now (empty: healthy).
fn health_problems<'a>(
    held: &HeldSlot,
    node: Option<&Node>,
    pods: impl IntoIterator<Item = &'a Pod>,
    daemon_sets: &BTreeMap<NamespacedName, Arc<DaemonSet>>,
    health: &Health,
) -> Vec<String> {
    let Some(node) = node else {
        return vec!["the Node object is missing".to_owned()];
    };
    let operation = &held.slot.operation;
    let fresh = Freshness::of(held);
    let mut problems = Vec::new();
    if !is_ready(node) {
        problems.push(not_ready_text(node));
    } else if let Some(since) = fresh.node_since()
        && !ready_reported_since(node, since)
    {
        problems.push(format!(
            "the kubelet has not reported the node Ready since the maintenance began ({since})"
        ));
    } else if let Some(taint) = outage_taint(node) {
        problems.push(format!(
            "the node still carries the {taint} taint (the node-lifecycle controller has not \
             seen it Ready yet)"
        ));
    }
    if let Operation::KubernetesUpgrade { version, .. } = operation {
        let running = node
            .status
            .as_ref()
            .and_then(|s| s.node_info.as_ref())
            .map(|i| i.kubelet_version.as_str())
            .unwrap_or_default();
        match (
            version.parse::<KubeVersion>(),
            running.parse::<KubeVersion>(),
        ) {
            (Ok(target), Ok(now)) if target == now => {}
            // A step of a longer walk names a minor: any patch of it will do.
            (Ok(target), Ok(now))
                if crate::upgrade::is_minor_only(version)
                    && target.minor_version() == now.minor_version() => {}
            (Ok(target), _) if crate::upgrade::is_minor_only(version) => problems.push(format!(
                "kubelet runs {}, expected {}",
                if running.is_empty() {
                    "an unknown version"
                } else {
                    running
                },
                target.short()
            )),
            (Ok(target), _) => problems.push(format!(
                "kubelet runs {}, expected {target}",
                if running.is_empty() {
                    "an unknown version"
                } else {
                    running
                }
            )),
            (Err(e), _) => problems.push(format!("the target version is invalid: {e}")),
        }
    }
    let pods: Vec<&Pod> = pods.into_iter().collect();
    problems.extend(daemon_set_problems(
        node,
        &pods,
        daemon_sets,
        &health.required_daemon_sets,
        fresh.pods_since(),
    ));
    problems
}

/// What must post-date the maintenance, by what the operation restarted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Freshness {
    /// Nothing restarted (a package upgrade that needed no restart): Ready is enough.
    Any,
    /// The kubelet restarted (a kubelet restart, a Kubernetes upgrade): the kubelet reported
    /// the node Ready since `since`. Its containers keep running, so its pods need not restart.
    Kubelet {
        /// When the maintenance began.
        since: Timestamp,
    },
    /// The node rebooted: the kubelet reported the node Ready since `since`, and each
    /// DaemonSet pod that counts started, or became Ready, since then.
    Node {
        /// When the maintenance began.
        since: Timestamp,
    },
}

impl Freshness {
    /// The rule for `held`. The maintenance begins at the grant (the agent acts only after
    /// it; a slot recorded without it falls back to its admission), rounded down to the second
    /// since Kubernetes' condition and container times have whole seconds.
    pub fn of(held: &HeldSlot) -> Freshness {
        let began = held.slot.granted_at.unwrap_or(held.slot.admitted_at);
        let since = Timestamp::from_second(began.as_second()).unwrap_or(began);
        let rebooted = held.completion.as_ref().is_some_and(|c| c.rebooted);
        match &held.slot.operation {
            _ if rebooted => Freshness::Node { since },
            Operation::KubeletRestart | Operation::KubernetesUpgrade { .. } => {
                Freshness::Kubelet { since }
            }
            _ => Freshness::Any,
        }
    }

    fn node_since(self) -> Option<Timestamp> {
        match self {
            Freshness::Any => None,
            Freshness::Kubelet { since } | Freshness::Node { since } => Some(since),
        }
    }

    fn pods_since(self) -> Option<Timestamp> {
        match self {
            Freshness::Node { since } => Some(since),
            Freshness::Any | Freshness::Kubelet { .. } => None,
        }
    }
}

/// Whether the node's `Ready` condition was reported (heartbeat) or changed since `since`. A
/// kubelet reports the node's status as soon as it starts, so this holds shortly after a
/// restart; `lastTransitionTime` alone would not do, since a reboot quicker than the node
/// monitor's grace period never turns the node NotReady.
fn ready_reported_since(node: &Node, since: Timestamp) -> bool {
    ready_condition(node).is_some_and(|c| {
        [&c.last_heartbeat_time, &c.last_transition_time]
            .into_iter()
            .flatten()
            .any(|t| t.0 >= since)
    })
}

/// Whether a pod started, or became Ready, since `since`: created since, its `Ready` condition
/// changed since, or every container of it (re)started since.
fn pod_fresh(pod: &Pod, since: Timestamp) -> bool {
    if pod
        .metadata
        .creation_timestamp
        .as_ref()
        .is_some_and(|t| t.0 >= since)
    {
        return true;
    }
    let Some(status) = pod.status.as_ref() else {
        return false;
    };
    let ready_since = status.conditions.iter().flatten().any(|c| {
        c.type_ == "Ready"
            && c.status == "True"
            && c.last_transition_time
                .as_ref()
                .is_some_and(|t| t.0 >= since)
    });
    let containers = status.container_statuses.as_deref().unwrap_or_default();
    let restarted = !containers.is_empty()
        && containers.iter().all(|c| {
            c.state
                .as_ref()
                .and_then(|s| s.running.as_ref())
                .and_then(|r| r.started_at.as_ref())
                .is_some_and(|t| t.0 >= since)
        });
    ready_since || restarted
}

fn not_ready_text(node: &Node) -> String {
    match ready_condition(node) {
        None => "node has no Ready condition".to_owned(),
        Some(c) => {
            let mut text = format!("node is not Ready ({})", c.status);
            if let Some(reason) = c.reason.as_deref().filter(|r| !r.is_empty()) {
                text.push_str(&format!(": {reason}"));
            }
            text
        }
    }
}

/// Whether a pod's `Ready` condition is `True` and it is not being deleted.
pub fn pod_ready(pod: &Pod) -> bool {
    pod.metadata.deletion_timestamp.is_none()
        && pod
            .status
            .as_ref()
            .and_then(|s| s.conditions.as_ref())
            .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

/// The DaemonSet controlling a pod, if any.
fn daemon_set_of(pod: &Pod) -> Option<NamespacedName> {
    let owner = pod
        .metadata
        .owner_references
        .iter()
        .flatten()
        .find(|o| o.controller == Some(true) && o.kind == "DaemonSet")?;
    Some(NamespacedName::new(
        pod.metadata.namespace.clone().unwrap_or_default(),
        owner.name.clone(),
    ))
}

fn pod_name(pod: &Pod) -> String {
    format!(
        "{}/{}",
        pod.metadata.namespace.as_deref().unwrap_or_default(),
        pod.metadata.name.as_deref().unwrap_or_default()
    )
}

/// Whether the DaemonSet's pod template's node selector selects the node. (Affinity and
/// taints are not evaluated: name only DaemonSets that run on every node of the pool.)
fn targets(daemon_set: &DaemonSet, node: &Node) -> bool {
    let selector = daemon_set
        .spec
        .as_ref()
        .and_then(|s| s.template.spec.as_ref())
        .and_then(|s| s.node_selector.as_ref());
    let labels = node.metadata.labels.as_ref();
    selector
        .into_iter()
        .flatten()
        .all(|(key, value)| labels.and_then(|l| l.get(key)) == Some(value))
}

fn daemon_set_problems(
    node: &Node,
    pods: &[&Pod],
    daemon_sets: &BTreeMap<NamespacedName, Arc<DaemonSet>>,
    required: &[NamespacedName],
    since: Option<Timestamp>,
) -> Vec<String> {
    let stale = |pod: &Pod| since.is_some_and(|since| !pod_fresh(pod, since));
    let stale_text = |pod: &Pod| {
        format!(
            "DaemonSet pod {} is Ready only as reported before the reboot (nothing since {})",
            pod_name(pod),
            since.unwrap_or_default()
        )
    };
    let running = |pod: &&&Pod| {
        !matches!(
            pod.status.as_ref().and_then(|s| s.phase.as_deref()),
            Some("Succeeded" | "Failed")
        )
    };
    if required.is_empty() {
        return pods
            .iter()
            .filter(running)
            .filter(|p| daemon_set_of(p).is_some() && p.metadata.deletion_timestamp.is_none())
            .filter_map(|p| {
                if !pod_ready(p) {
                    Some(format!("DaemonSet pod {} is not Ready", pod_name(p)))
                } else if stale(p) {
                    Some(stale_text(p))
                } else {
                    None
                }
            })
            .collect();
    }
    let mut problems = Vec::new();
    for wanted in required {
        let Some(daemon_set) = daemon_sets.get(wanted) else {
            problems.push(format!("required DaemonSet {wanted} does not exist"));
            continue;
        };
        if !targets(daemon_set, node) {
            continue;
        }
        let own: Vec<&&Pod> = pods
            .iter()
            .filter(running)
            .filter(|p| daemon_set_of(p).as_ref() == Some(wanted))
            .collect();
        if own.is_empty() {
            problems.push(format!("no pod of DaemonSet {wanted} on the node"));
        } else if !own.iter().any(|p| pod_ready(p)) {
            problems.push(format!(
                "pod {} of DaemonSet {wanted} is not Ready",
                pod_name(own[0])
            ));
        } else if !own.iter().any(|p| pod_ready(p) && !stale(p)) {
            problems.push(stale_text(own[0]));
        }
    }
    problems
}
