//! One pass of the controller, decided: from the cluster cache, the ledger and the policies to
//! the list of things to do ([`Decisions`]). Pure — no I/O and an explicit `now` — so that the
//! actor ([`crate::controller::decide`]) only performs what is decided here.
use crate::blockers::AlertReports;
use crate::cluster::ClusterState;
use crate::drain::DrainSpec;
use crate::node::is_unschedulable;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::num::NonZeroU32;
use std::time::Duration;

use jiff::{SignedDuration, Timestamp};
use kube_core::ResourceExt;

use super::annotations::{
    AnnotationError, CORDONED, MAINTENANCE_REQUESTED, ManualRequest, RELEASE, parse_release,
};
use super::pools::{PolicyBook, PoolCounts};
use super::rollout::{self, RolloutDecision};
use super::snapshot::{self, Inputs, drain_spec, pool_of, pools_of};
use super::verify::{self, Verdict};

use crate::fleetlock::{self, HostPool};
use crate::model::{EtcdFacts, FencingToken, NodeName, Operation, SlotPhase};
use crate::policy::crd::RebootMode;
use crate::policy::{DEFAULT_DRAIN_TIMEOUT, Health, MaintenancePolicyStatus};
use crate::scheduler::{self, SequentialPdb, WaitReason};
use crate::slots::{Holding, NodeEntry, NodeState, TransitionReason, Waiting};
use crate::upgrade::Phase;

/// Everything one pass looks at.
pub struct Input<'a> {
    /// The cluster.
    pub cache: &'a ClusterState,
    /// The policies (already updated from the cache).
    pub book: &'a PolicyBook,
    /// What the policies' Prometheus servers said last.
    pub alerts: &'a AlertReports,
    /// The ledger's entries.
    pub entries: &'a BTreeMap<NodeName, NodeEntry>,
    /// Nodes registered with the slot service.
    pub known: &'a HashSet<NodeName>,
    /// Drains running now, with their slot's token.
    pub draining: &'a HashMap<NodeName, FencingToken>,
    /// Annotation values already explained in an Event (`(node, key) → value`).
    pub noticed: &'a HashMap<(NodeName, &'static str), String>,
    /// Expired leases already reported.
    pub expiry_reported: &'a HashSet<(NodeName, FencingToken)>,
    /// Longest a budget may refuse one pod before a drain gives its slot back.
    pub blocked_timeout: Duration,
    /// The FleetLock hosts that are not Kubernetes nodes, by pool.
    pub hosts: &'a BTreeMap<String, HostPool>,
    /// What the agents reported about their nodes' etcd members, by node.
    pub etcd: &'a BTreeMap<NodeName, EtcdFacts>,
    /// Why the API server's `/readyz` did not answer `ok` when last asked, if it did not.
    pub api_not_ready: Option<&'a str>,
    /// Now.
    pub now: Timestamp,
}

/// A manual request found on a Node.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ManualAction {
    /// The node.
    pub node: NodeName,
    /// The annotation's value.
    pub value: String,
    /// The Node's `resourceVersion` it was read at (the acknowledgement removes it only if the
    /// Node did not change since).
    pub resource_version: Option<String>,
    /// The operation to queue, or why the value is refused.
    pub operation: Result<Operation, AnnotationError>,
}

/// A force release found on a Node.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReleaseAction {
    /// The node.
    pub node: NodeName,
    /// The annotation's value.
    pub value: String,
    /// The Node's `resourceVersion` it was read at.
    pub resource_version: Option<String>,
    /// Whether the value asks for a release.
    pub valid: Result<(), AnnotationError>,
}

/// A drain to start (a new admission, or a `Draining` slot without a running drain).
#[derive(Clone, Debug)]
pub struct DrainStart {
    /// The node.
    pub node: NodeName,
    /// Its pool, if it has exactly one.
    pub pool: Option<String>,
    /// How to drain it.
    pub spec: DrainSpec,
    /// How long the drain may take from its admission.
    pub timeout: SignedDuration,
}

/// A node to admit now.
#[derive(Clone, Debug)]
pub struct AdmitAction {
    /// The drain that follows the admission.
    pub drain: DrainStart,
    /// Whether rota will have cordoned the node (it is not cordoned now, or by rota).
    pub cordoned_by_rota: bool,
    /// PDBs the drain has to itself and empties a few pods at a time (see
    /// [`scheduler::Admission::sequential`]); its blocked timeout covers every round.
    pub sequential: Vec<SequentialPdb>,
}

/// What to do about a held slot.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SlotAction {
    /// The node is healthy after its operation.
    Verified,
    /// The maintenance failed.
    Fail(String),
    /// A failed node is healthy again.
    Recovered,
}

/// Per-pool numbers for the metrics.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PoolGauges {
    /// Slots held.
    pub held: usize,
    /// Requests queued.
    pub queued: usize,
    /// Slots draining.
    pub draining: usize,
    /// Nodes done.
    pub done: usize,
    /// Nodes in the pool.
    pub total: usize,
    /// Paused by a human.
    pub paused: bool,
    /// Held by the circuit breaker.
    pub circuit_open: bool,
}

/// What one pass decided.
#[derive(Debug, Default)]
pub struct Decisions {
    /// Nodes to register with the slot service.
    pub add_nodes: Vec<NodeName>,
    /// Nodes whose Node object is gone.
    pub delete_nodes: Vec<NodeName>,
    /// Manual requests to queue (or explain).
    pub manual: Vec<ManualAction>,
    /// Force releases to perform (or explain).
    pub releases: Vec<ReleaseAction>,
    /// Running drains to stop: their slot is not draining any more.
    pub cancel_drains: Vec<NodeName>,
    /// Nodes rota cordoned that hold no slot: uncordon them, saying why.
    pub uncordon: Vec<(NodeName, String)>,
    /// Verification outcomes.
    pub slot_actions: Vec<(NodeName, FencingToken, SlotAction)>,
    /// Leases that expired while their slot is granted (reported, never freed).
    pub expired_leases: Vec<(NodeName, FencingToken)>,
    /// Nodes to admit.
    pub admit: Vec<AdmitAction>,
    /// FleetLock hosts that are not Kubernetes nodes to give a lock: `(pool, id)`.
    pub admit_hosts: Vec<(String, String)>,
    /// Why each FleetLock host that asks still waits: `(pool, id)` → reasons.
    pub hosts_waiting: BTreeMap<(String, String), Vec<String>>,
    /// Draining slots without a running drain (after a restart, or a failed start).
    pub resume: Vec<(FencingToken, Timestamp, DrainStart)>,
    /// Queue positions and reasons to publish.
    pub waiting: Vec<(NodeName, Waiting)>,
    /// Policy statuses that changed.
    pub statuses: Vec<(String, MaintenancePolicyStatus)>,
    /// Gauges per pool.
    pub gauges: BTreeMap<String, PoolGauges>,
    /// The pools' Kubernetes upgrade rollouts, with the requests to queue for them.
    pub rollouts: Vec<RolloutDecision>,
    /// Queued rollout requests no rollout wants any more (the target moved or went).
    pub rollout_withdraw: Vec<NodeName>,
    /// Each node's pool, for the nodes exactly one pool selects (as the scheduler saw them):
    /// whose policy its agent follows.
    pub node_pools: HashMap<NodeName, String>,
    /// When the next pass is due even if nothing changes (a window opens, a back-off or a
    /// verification ends, a lease expires).
    pub next_wake: Option<Timestamp>,
}

impl Decisions {
    fn wake_at(&mut self, at: Timestamp) {
        self.next_wake = Some(self.next_wake.map_or(at, |t| t.min(at)));
    }
}

/// Decides one pass.
pub fn decide(input: &Input<'_>) -> Decisions {
    let Input {
        cache,
        book,
        alerts,
        entries,
        known,
        draining,
        noticed,
        expiry_reported,
        blocked_timeout,
        hosts,
        etcd,
        api_not_ready,
        now,
    } = *input;
    let mut out = Decisions::default();
    let mut pools = book.pools();
    alerts.apply(&mut pools);
    let drain_specs: HashMap<String, DrainSpec> = pools
        .iter()
        .map(|p| {
            (
                p.name.clone(),
                drain_spec(book.in_force(&p.name), blocked_timeout),
            )
        })
        .collect();
    let drain_start = |node: &str| {
        let pool = cache.node(node).and_then(|n| pool_of(n, &pools));
        DrainStart {
            node: node.to_owned(),
            pool: pool.map(|p| p.name.clone()),
            spec: pool
                .and_then(|p| drain_specs.get(&p.name).cloned())
                .unwrap_or_else(|| drain_spec(None, blocked_timeout)),
            timeout: pool.map_or(DEFAULT_DRAIN_TIMEOUT, |p| p.policy.drain.timeout),
        }
    };

    // Nodes: register new ones, forget deleted ones.
    out.add_nodes = cache
        .nodes()
        .keys()
        .filter(|n| !known.contains(*n))
        .cloned()
        .collect();
    out.delete_nodes = known
        .iter()
        .filter(|n| cache.node(n).is_none())
        .cloned()
        .collect();
    out.delete_nodes.sort();

    // Humans' annotations.
    for (name, node) in cache.nodes() {
        let annotations = node.annotations();
        if let Some(value) = annotations.get(MAINTENANCE_REQUESTED) {
            let reboot_allowed =
                pool_of(node, &pools).is_none_or(|p| p.policy.reboot.mode != RebootMode::Never);
            let operation = value
                .parse::<ManualRequest>()
                .map(|r| r.operation(reboot_allowed));
            let already_explained = operation.is_err()
                && noticed.get(&(name.clone(), MAINTENANCE_REQUESTED)) == Some(value);
            if !already_explained {
                out.manual.push(ManualAction {
                    node: name.clone(),
                    value: value.clone(),
                    resource_version: node.resource_version(),
                    operation,
                });
            }
        }
        if let Some(value) = annotations.get(RELEASE) {
            let valid = parse_release(value);
            let already_explained =
                valid.is_err() && noticed.get(&(name.clone(), RELEASE)) == Some(value);
            if !already_explained {
                out.releases.push(ReleaseAction {
                    node: name.clone(),
                    value: value.clone(),
                    resource_version: node.resource_version(),
                    valid,
                });
            }
        }
    }

    // The schedule.
    let queue: Vec<_> = entries
        .values()
        .filter_map(|e| match &e.holding {
            Holding::Queued(q) => Some(q.request.clone()),
            Holding::Idle | Holding::Held(_) => None,
        })
        .collect();
    let slots: Vec<_> = entries
        .values()
        .filter_map(|e| match &e.holding {
            Holding::Held(h) => Some(h.slot.clone()),
            Holding::Idle | Holding::Queued(_) => None,
        })
        .collect();
    let mut snapshot = snapshot::build(Inputs {
        cache,
        pools: &pools,
        drain_specs: &drain_specs,
        queue,
        slots,
        etcd,
        now,
    });
    snapshot::add_hosts(&mut snapshot, hosts);
    let (rollouts, rollout_withdraw) =
        rollout::decide(&snapshot, book, cache, entries, etcd, api_not_ready);
    for decided in &rollouts {
        if decided.state.phase == Phase::PreflightFailed
            && let Some(pool) = snapshot.pools.iter_mut().find(|p| p.name == decided.pool)
        {
            pool.rollout_held = Some(decided.state.message.clone());
        }
    }
    let plan = scheduler::schedule(&snapshot, now);
    out.node_pools = snapshot
        .nodes
        .iter()
        .filter(|n| fleetlock::host_of_key(&n.name).is_none())
        .filter_map(|n| match n.pools.as_slice() {
            [pool] => Some((n.name.clone(), pool.clone())),
            _ => None,
        })
        .collect();
    let admitted: HashSet<&str> = plan.admit.iter().map(|a| a.node.as_str()).collect();
    for admission in &plan.admit {
        if let Some(id) = fleetlock::host_of_key(&admission.node) {
            out.admit_hosts
                .push((admission.pool.clone(), id.to_owned()));
            continue;
        }
        let Some(node) = cache.node(&admission.node) else {
            continue;
        };
        let mut drain = drain_start(&admission.node);
        if let Some(rounds) = admission.sequential.iter().map(SequentialPdb::rounds).max() {
            // Refusals are expected while earlier rounds' replacements start: a pod of the
            // last round may wait for every round before it. Still bounded by the drain's own
            // timeout, so that a budget that never recovers hands the slot back.
            let whole = Duration::try_from(drain.timeout).unwrap_or(drain.spec.blocked_timeout);
            drain.spec.blocked_timeout = drain
                .spec
                .blocked_timeout
                .saturating_mul(rounds)
                .min(whole)
                .max(drain.spec.blocked_timeout);
        }
        out.admit.push(AdmitAction {
            drain,
            cordoned_by_rota: !is_unschedulable(node) || node.annotations().contains_key(CORDONED),
            sequential: admission.sequential.clone(),
        });
    }
    for (node, waiting) in &plan.waiting {
        if let Some(id) = fleetlock::host_of_key(node) {
            let pool = waiting.pool.clone().unwrap_or_default();
            let reasons = waiting.reasons.iter().map(ToString::to_string).collect();
            out.hosts_waiting.insert((pool, id.to_owned()), reasons);
            continue;
        }
        let note = match entries.get(node).map(|e| &e.holding) {
            Some(Holding::Queued(q)) => q.note.as_str(),
            _ => "",
        };
        let reasons = waiting
            .reasons
            .iter()
            .map(|reason| match reason {
                WaitReason::BackingOff { .. } if !note.is_empty() => format!("{reason} ({note})"),
                _ => reason.to_string(),
            })
            .collect();
        for reason in &waiting.reasons {
            match reason {
                WaitReason::WindowClosed {
                    next_open: Some(at),
                } => out.wake_at(*at),
                WaitReason::Blackout { until, .. } | WaitReason::BackingOff { until } => {
                    out.wake_at(*until);
                }
                _ => {}
            }
        }
        out.waiting.push((
            node.clone(),
            Waiting {
                position: NonZeroU32::new(waiting.position),
                reasons,
            },
        ));
    }

    // Held slots: verify, recover, resume drains, report expired leases.
    for (name, entry) in entries {
        let Holding::Held(held) = &entry.holding else {
            continue;
        };
        let token = held.slot.token;
        let node = cache.node(name).map(AsRef::as_ref);
        let health = node
            .and_then(|n| pool_of(n, &pools))
            .map_or_else(default_health, |p| p.policy.health.clone());
        let pods = || cache.pods_on(name).map(AsRef::as_ref);
        match held.slot.phase {
            SlotPhase::Draining => {
                if draining.get(name) != Some(&token) && node.is_some() {
                    out.resume
                        .push((token, held.slot.phase_since, drain_start(name)));
                }
            }
            SlotPhase::Granted => {
                let expiry = held.slot.lease_expires_at;
                if expiry <= now {
                    if !expiry_reported.contains(&(name.clone(), token)) {
                        out.expired_leases.push((name.clone(), token));
                    }
                } else {
                    out.wake_at(expiry);
                }
                match verify::abandoned(held, node, &health, now) {
                    Some(Verdict::Failed { reason }) => {
                        out.slot_actions
                            .push((name.clone(), token, SlotAction::Fail(reason)));
                    }
                    Some(Verdict::Pending { deadline, .. }) => out.wake_at(deadline),
                    Some(Verdict::Healthy) | None => {}
                }
            }
            SlotPhase::Verifying => {
                match verify::verify(held, node, pods(), cache.daemon_sets(), &health, now) {
                    Verdict::Healthy => {
                        out.slot_actions
                            .push((name.clone(), token, SlotAction::Verified));
                    }
                    Verdict::Failed { reason } => {
                        out.slot_actions
                            .push((name.clone(), token, SlotAction::Fail(reason)));
                    }
                    Verdict::Pending { deadline, .. } => out.wake_at(deadline),
                }
            }
            SlotPhase::Failed => {
                if verify::recovered(held, node, pods(), cache.daemon_sets(), &health) {
                    out.slot_actions
                        .push((name.clone(), token, SlotAction::Recovered));
                }
            }
        }
    }
    for (node, token) in draining {
        let still_draining = matches!(
            entries.get(node).map(|e| &e.holding),
            Some(Holding::Held(h)) if h.slot.token == *token && h.slot.phase == SlotPhase::Draining
        );
        if !still_draining {
            out.cancel_drains.push(node.clone());
        }
    }
    out.cancel_drains.sort();

    // Leftover cordons of rota's on nodes that hold no slot.
    for (name, node) in cache.nodes() {
        let holds = entries
            .get(name)
            .is_some_and(|e| matches!(e.holding, Holding::Held(_)));
        if node.annotations().contains_key(CORDONED) && !holds && !admitted.contains(name.as_str())
        {
            let why = uncordon_note(entries.get(name));
            out.uncordon.push((name.clone(), why));
        }
    }

    // Status and gauges per pool.
    let mut counts: BTreeMap<String, (PoolCounts, PoolGauges)> = pools
        .iter()
        .map(|p| (p.name.clone(), Default::default()))
        .collect();
    for (name, node) in cache.nodes() {
        let state = entries.get(name).map_or(NodeState::Idle, NodeEntry::state);
        for pool in pools_of(node, &pools) {
            let Some((c, g)) = counts.get_mut(&pool) else {
                continue;
            };
            c.nodes += 1;
            g.total += 1;
            match state {
                NodeState::Done => {
                    c.done += 1;
                    g.done += 1;
                }
                NodeState::Queued => {
                    c.waiting += 1;
                    g.queued += 1;
                }
                NodeState::Draining | NodeState::Granted | NodeState::Verifying => {
                    c.in_progress += 1;
                    g.held += 1;
                    g.draining += usize::from(state == NodeState::Draining);
                }
                NodeState::Failed => g.held += 1,
                NodeState::Idle => {}
            }
        }
    }
    for pool in &pools {
        if let Some((c, g)) = counts.get_mut(&pool.name) {
            g.paused = pool.policy.paused;
            g.circuit_open = pool.policy.circuit_open(pool.failures);
            let rollout = rollouts
                .iter()
                .find(|r| r.pool == pool.name)
                .map(|r| &r.state);
            if let Some(status) = book.status_update(
                &pool.name,
                *c,
                plan.waiting_summary(&pool.name),
                rollout,
                now,
            ) {
                out.statuses.push((pool.name.clone(), status));
            }
        }
    }
    for name in book.names() {
        if !counts.contains_key(name)
            && let Some(status) =
                book.status_update(name, PoolCounts::default(), Vec::new(), None, now)
        {
            out.statuses.push((name.clone(), status));
        }
    }
    out.gauges = counts.into_iter().map(|(k, (_, g))| (k, g)).collect();
    out.rollouts = rollouts;
    out.rollout_withdraw = rollout_withdraw;
    out
}

/// Health settings for a node no policy (or several) selects.
fn default_health() -> Health {
    Health {
        ready_timeout: crate::policy::DEFAULT_READY_TIMEOUT,
        required_daemon_sets: Vec::new(),
    }
}

/// Why rota lifts its cordon from a node that holds no slot, from its ledger entry: a request
/// queued again means its drain gave the slot back; otherwise how the last slot ended.
pub fn uncordon_note(entry: Option<&NodeEntry>) -> String {
    let with = |what: &str, message: &str| {
        if message.is_empty() {
            format!("uncordoned: {what}")
        } else {
            format!("uncordoned: {what} ({message})")
        }
    };
    let Some(entry) = entry else {
        return "uncordoned: rota's cordon outlived its slot".to_owned();
    };
    if let Holding::Queued(queued) = &entry.holding {
        return with(
            "the drain could not finish and gave its slot back",
            &queued.note,
        );
    }
    let Some(last) = &entry.last else {
        return "uncordoned: rota's cordon outlived its slot".to_owned();
    };
    let what = match last.reason {
        TransitionReason::Verified | TransitionReason::Recovered => "after maintenance",
        TransitionReason::DrainFailed => "the drain could not finish and gave its slot back",
        TransitionReason::ForceReleased => "a human released the slot",
        TransitionReason::Released => "the agent gave its slot back",
        TransitionReason::NodeDeleted => "the node was deleted",
        _ => "the slot ended",
    };
    with(what, &last.message)
}

#[cfg(test)]
mod tests {
    use jiff::Timestamp;

    use super::*;
    use crate::model::SlotRequest;
    use crate::slots::{Finished, QueuedRequest};

    fn finished(reason: TransitionReason, message: &str) -> NodeEntry {
        NodeEntry {
            holding: Holding::Idle,
            last: Some(Finished {
                token: Some(FencingToken(7)),
                operation: Operation::Reboot,
                reason,
                at: Timestamp::UNIX_EPOCH,
                message: message.to_owned(),
            }),
            waiting: Waiting::default(),
        }
    }

    /// A Ready node with this kubelet boot id.
    /// A cordoned node whose kubelet reported it Ready at 2023-11-14T22:30:00Z.
    fn node(name: &str, boot_id: &str) -> k8s_openapi::api::core::v1::Node {
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": name},
            "spec": {"unschedulable": true},
            "status": {
                "conditions": [{
                    "type": "Ready", "status": "True",
                    "lastHeartbeatTime": "2023-11-14T22:30:00Z",
                }],
                "nodeInfo": {
                    "bootID": boot_id, "architecture": "", "containerRuntimeVersion": "",
                    "kernelVersion": "", "kubeProxyVersion": "", "kubeletVersion": "",
                    "machineID": "", "operatingSystem": "", "osImage": "", "systemUUID": ""
                }
            }
        }))
        .unwrap_or_default()
    }

    fn slot_actions(
        cache: &ClusterState,
        ledger: &crate::slots::Ledger,
        now: Timestamp,
    ) -> Vec<(NodeName, FencingToken, SlotAction)> {
        let entries: BTreeMap<_, _> = ledger
            .entries()
            .map(|(n, e)| (n.clone(), e.clone()))
            .collect();
        let known = cache.nodes().keys().cloned().collect();
        decide(&Input {
            cache,
            book: &super::super::pools::PolicyBook::new(),
            alerts: &AlertReports::default(),
            entries: &entries,
            known: &known,
            draining: &HashMap::new(),
            noticed: &HashMap::new(),
            expiry_reported: &HashSet::new(),
            blocked_timeout: Duration::from_secs(60),
            hosts: &BTreeMap::new(),
            etcd: &BTreeMap::new(),
            api_not_ready: None,
            now,
        })
        .slot_actions
    }

    /// FleetLock hosts that are not Kubernetes nodes share their pool's `maxUnavailable` with
    /// its nodes: a holder or an unavailable node holds the others back, first come first
    /// served otherwise.
    #[test]
    fn hosts_that_are_no_nodes_count_with_the_pools_nodes() {
        use crate::cluster::Indexed;
        use crate::policy::MaintenancePolicy;
        use k8s_openapi::api::core::v1::Node;
        let at = |s: i64| Timestamp::constant(1_700_000_000 + s, 0);
        let policy: MaintenancePolicy = serde_json::from_value(serde_json::json!({
            "apiVersion": "rota.dev/v1alpha1",
            "kind": "MaintenancePolicy",
            "metadata": {"name": "edge", "uid": "u1", "generation": 1},
            "spec": {
                "nodeSelector": {"matchLabels": {"pool": "edge"}},
                "maxUnavailable": 1,
                "fleetLock": {"hosts": ["aaaa", "BB-BB"]},
            },
        }))
        .unwrap_or_else(|e| panic!("{e}"));
        let policies = BTreeMap::from([("edge".to_owned(), std::sync::Arc::new(policy))]);
        let mut book = super::super::pools::PolicyBook::new();
        book.update(&policies);
        let decide_with = |cache: &ClusterState, hosts: &BTreeMap<String, HostPool>| {
            decide(&Input {
                cache,
                book: &book,
                alerts: &AlertReports::default(),
                entries: &BTreeMap::new(),
                known: &cache.nodes().keys().cloned().collect(),
                draining: &HashMap::new(),
                noticed: &HashMap::new(),
                expiry_reported: &HashSet::new(),
                blocked_timeout: Duration::from_secs(60),
                hosts,
                etcd: &BTreeMap::new(),
                api_not_ready: None,
                now: at(10),
            })
        };
        let asking = |ids: &[&str], holders: &[&str]| {
            let pool = HostPool {
                holders: holders.iter().map(|h| ((*h).to_owned(), at(1))).collect(),
                requests: ids
                    .iter()
                    .enumerate()
                    .map(|(i, id)| ((*id).to_owned(), at(2 + i64::try_from(i).unwrap_or(0))))
                    .collect(),
            };
            BTreeMap::from([("edge".to_owned(), pool)])
        };
        let empty = ClusterState::default();
        // Both ask: the first to ask gets the lock, the other waits for capacity.
        let out = decide_with(&empty, &asking(&["bbbb", "aaaa"], &[]));
        assert_eq!(
            out.admit_hosts,
            vec![("edge".to_owned(), "bbbb".to_owned())]
        );
        let waits = &out.hosts_waiting[&("edge".to_owned(), "aaaa".to_owned())];
        assert!(waits.iter().any(|r| r.contains("unavailable")), "{waits:?}");
        // A holder takes the pool's one place.
        let out = decide_with(&empty, &asking(&["aaaa"], &["bbbb"]));
        assert!(out.admit_hosts.is_empty(), "{:?}", out.admit_hosts);
        // So does a cordoned node of the pool.
        let mut cordoned = ClusterState::default();
        let mut node = node("n1", "boot-1");
        node.metadata.labels = Some(BTreeMap::from([("pool".to_owned(), "edge".to_owned())]));
        Node::insert(&mut cordoned, node);
        let out = decide_with(&cordoned, &asking(&["aaaa"], &[]));
        assert!(out.admit_hosts.is_empty(), "{:?}", out.admit_hosts);
        assert!(
            out.hosts_waiting
                .contains_key(&("edge".to_owned(), "aaaa".to_owned()))
        );
        // A host the policy does not list is never admitted.
        let out = decide_with(&empty, &asking(&["cccc"], &[]));
        assert!(out.admit_hosts.is_empty());
    }

    /// A node that never came back within the ready timeout fails its slot; once its agent
    /// reports the reboot after all and the node is healthy, the controller verifies it again
    /// and releases the slot. Without the agent's report (it may still be mid-operation), the
    /// slot stays failed.
    #[test]
    fn a_failed_node_that_comes_back_is_verified_again_and_released() {
        use crate::cluster::Indexed;
        use crate::slots::{CompletionReport, Ledger};
        let at = |s: i64| Timestamp::constant(1_700_000_000 + s, 0);
        let mut ledger = Ledger::new(SignedDuration::from_secs(60));
        ledger
            .request("a", Operation::Reboot, crate::model::Origin::Agent, at(0))
            .unwrap_or_default();
        let token = ledger
            .admit("a", at(1), Some("boot-1".into()), true)
            .map(|(t, _)| t)
            .unwrap_or(FencingToken(0));
        assert!(ledger.drained("a", token, at(2)).is_ok());
        assert!(ledger.fail("a", token, "not back in time", at(900)).is_ok());

        let mut cache = ClusterState::default();
        Indexed::insert(&mut cache, node("a", "boot-2"));
        assert_eq!(slot_actions(&cache, &ledger, at(1000)), vec![]);

        let late = CompletionReport {
            success: true,
            message: String::new(),
            boot_id: Some("boot-2".into()),
            rebooted: true,
            changed_packages: 0,
            changed: vec![],
            at: at(1000),
        };
        assert!(ledger.complete("a", token, late).is_ok());
        // The kubelet still reports the boot from before: not yet.
        let mut stale = ClusterState::default();
        Indexed::insert(&mut stale, node("a", "boot-1"));
        assert_eq!(slot_actions(&stale, &ledger, at(1001)), vec![]);
        // Ready, but the node-lifecycle controller has not lifted its unreachable taint yet.
        let mut tainted = node("a", "boot-2");
        if let Some(spec) = tainted.spec.as_mut() {
            spec.taints = Some(vec![k8s_openapi::api::core::v1::Taint {
                key: "node.kubernetes.io/unreachable".into(),
                effect: "NoSchedule".into(),
                ..Default::default()
            }]);
        }
        let mut still_tainted = ClusterState::default();
        Indexed::insert(&mut still_tainted, tainted);
        assert_eq!(slot_actions(&still_tainted, &ledger, at(1001)), vec![]);
        assert_eq!(
            slot_actions(&cache, &ledger, at(1001)),
            vec![("a".to_owned(), token, SlotAction::Recovered)]
        );
    }

    #[test]
    fn an_uncordon_says_why_the_cordon_ends() {
        assert_eq!(
            uncordon_note(Some(&finished(TransitionReason::Verified, ""))),
            "uncordoned: after maintenance"
        );
        let gave_back = uncordon_note(Some(&finished(
            TransitionReason::DrainFailed,
            "blocked by PodDisruptionBudget shop/license-server",
        )));
        assert!(gave_back.contains("gave its slot back"), "{gave_back}");
        assert!(gave_back.contains("shop/license-server"), "{gave_back}");
        assert!(!gave_back.contains("after maintenance"), "{gave_back}");
        assert!(
            uncordon_note(Some(&finished(TransitionReason::ForceReleased, "")))
                .contains("a human released")
        );
        assert!(uncordon_note(None).contains("outlived"));
        let requeued = NodeEntry {
            holding: Holding::Queued(QueuedRequest {
                request: SlotRequest {
                    node: "n1".into(),
                    operation: Operation::Reboot,
                    origin: crate::model::Origin::Agent,
                    requested_at: Timestamp::UNIX_EPOCH,
                    not_before: None,
                },
                note: "blocked by PodDisruptionBudget shop/license-server".into(),
            }),
            last: None,
            waiting: Waiting::default(),
        };
        let note = uncordon_note(Some(&requeued));
        assert!(
            note.contains("gave its slot back") && note.contains("license-server"),
            "{note}"
        );
    }
}
