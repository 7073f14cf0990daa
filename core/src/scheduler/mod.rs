//! The slot scheduler: which queued nodes may start maintenance now.
//!
//! [`schedule`] is a pure function of a [`Snapshot`] and an explicit `now`. It holds the fleet's
//! safety invariants (`docs/architecture.md`, step 3). A queued node is admitted only when all of these hold:
//!
//! - it exists, holds no slot yet, and exactly one pool (policy) selects it;
//! - the pool is not paused and its circuit breaker is closed (`maxFailures`);
//! - no blackout is active, and a maintenance window is open — except for manual requests, which
//!   an on-call engineer wants done now: they skip windows but respect everything else;
//! - no blocking alert fires for the pool — and its Prometheus answered: alerts that cannot be
//!   checked block (fail closed) — and no blocking pod runs on the node;
//! - its back-off (`not_before`) has passed;
//! - for a Kubernetes upgrade, the version skew policy allows it ([`SkewViolation`]);
//! - capacity: the pool's unavailable nodes (holding a slot, NotReady, or cordoned by anyone,
//!   plus nodes admitted earlier in this plan) together with this node number at most the pool's
//!   `maxUnavailable`. A node that is already unavailable adds nothing, so a cordoned or broken
//!   node can still be maintained when the pool is at its limit only because of itself;
//! - the control-plane quorum guard ([`control_plane`]), whatever the pools say: at most
//!   `controlPlane.maxUnavailable` (default 1) control-plane nodes unavailable in the whole
//!   cluster, across every pool; every other control-plane node and its static pods Ready; and
//!   never fewer than a quorum of stacked etcd members up;
//! - the pool's policy allows the operation: no `PackageUpgrade` under `upgrade.mode: none`,
//!   no `Reboot` under `reboot.mode: never`, whoever asks;
//! - for a Kubernetes upgrade, the requested version is the pool's target
//!   (`upgrade.kubernetesVersion`), when the policy sets one;
//! - PDB look-ahead: for every PDB covering a pod the drain would evict, its pods on this node,
//!   plus its pods still to be evicted from nodes holding a slot, plus those taken by nodes
//!   admitted earlier in this plan, fit in its `disruptionsAllowed`. One exception keeps a node
//!   whose pods of one PDB outnumber the allowance (two replicas of a `maxUnavailable: 1` app)
//!   from starving: it is admitted anyway when the PDB allows at least one disruption and no
//!   other node uses it — none holding a slot still has pods of it, none admitted earlier in
//!   this plan takes from it. That drain then has the budget to itself and evicts as
//!   replacements become Ready, as `kubectl drain` would (the drain engine retries the
//!   refusals); the admission records it ([`Admission::sequential`]), and no other node is
//!   admitted against that PDB while its pods remain.
//!
//! Order: manual requests first, then control-plane nodes, then FIFO by `requested_at`, then
//! node name. The scheduler packs: a blocked request reserves nothing, and later requests are
//! admitted as far as capacity and budgets allow.

pub mod control_plane;
mod plan;
mod skew;
mod snapshot;

use std::cmp::Ordering;
use std::collections::{BTreeMap, HashMap, HashSet};

use jiff::Timestamp;

use crate::model::{NodeName, Operation, Origin, Slot, SlotRequest};
use crate::policy::crd::{RebootMode, UpgradeMode};
use crate::policy::window::ClosedReason;
use crate::policy::{KubeVersion, NamespacedName, ValidatedPolicy};
use crate::upgrade::ClusterVersions;

pub use plan::{Admission, Plan, SequentialPdb, Unavailability, WaitReason, Waiting};
pub use skew::SkewViolation;
pub use snapshot::{ControlPlanePod, EvictablePod, NodeState, PdbState, Pool, PoolName, Snapshot};

/// Why `operation` on `node` waits for an etcd snapshot, if it does: a stacked-etcd member
/// whose agent has not reported a verified snapshot younger than the policy's
/// `etcd.maxSnapshotAge` (for the operations `etcd.snapshotBefore` names).
fn etcd_snapshot(
    node: &NodeState,
    policy: &ValidatedPolicy,
    operation: &Operation,
    now: Timestamp,
) -> Option<WaitReason> {
    if node.etcd.member != crate::model::EtcdMember::Stacked || !policy.etcd.covers(operation) {
        return None;
    }
    let max_age = jiff::SignedDuration::from_secs(
        i64::try_from(policy.etcd.max_age_seconds).unwrap_or(i64::MAX),
    );
    let since = now.checked_sub(max_age).unwrap_or(Timestamp::MIN);
    if node.etcd.fresh_snapshot(since).is_some() {
        return None;
    }
    Some(match &node.etcd.snapshot_error {
        Some(error) => WaitReason::EtcdSnapshotFailed {
            error: error.clone(),
        },
        None => WaitReason::EtcdSnapshotNeeded {
            max_age_seconds: policy.etcd.max_age_seconds,
            newest: node.etcd.snapshot.as_ref().map(|s| s.taken_at),
        },
    })
}

/// Decides which queued nodes to admit at `now`, and why the others wait.
pub fn schedule(snapshot: &Snapshot, now: Timestamp) -> Plan {
    let mut scheduler = Scheduler::new(snapshot, now);
    let mut admit = Vec::new();
    let mut waiting_in_order = Vec::new();
    let mut seen = HashSet::new();
    for request in scheduler.queue_order() {
        if !seen.insert(request.node.as_str()) {
            continue;
        }
        match scheduler.evaluate(request) {
            Ok(admissible) => {
                scheduler.commit(&request.node, &admissible);
                admit.push(Admission {
                    node: request.node.clone(),
                    pool: admissible.pool.name.clone(),
                    request: request.clone(),
                    sequential: admissible.sequential.clone(),
                });
            }
            Err((pool, reasons)) => waiting_in_order.push((request.node.clone(), pool, reasons)),
        }
    }
    let mut positions: HashMap<Option<PoolName>, u32> = HashMap::new();
    let waiting = waiting_in_order
        .into_iter()
        .map(|(node, pool, reasons)| {
            let position = positions.entry(pool.clone()).or_insert(0);
            *position += 1;
            let waiting = Waiting {
                pool,
                position: *position,
                reasons,
            };
            (node, waiting)
        })
        .collect();
    Plan { admit, waiting }
}

/// Per-pool state for one decision.
struct PoolState<'a> {
    pool: &'a Pool,
    /// Resolved `maxUnavailable`.
    max: u32,
    /// Unavailable nodes of the pool, by name, updated as nodes are admitted.
    unavailable: BTreeMap<&'a str, Unavailability>,
    /// Reasons that hold back every request of the pool (pause, breaker, alerts).
    gates: Vec<WaitReason>,
    /// An active blackout (holds back manual requests too).
    blackout: Option<WaitReason>,
    /// Outside the windows (manual requests skip it).
    window_closed: Option<WaitReason>,
}

impl<'a> PoolState<'a> {
    fn new(pool: &'a Pool, now: Timestamp) -> Self {
        let policy: &ValidatedPolicy = &pool.policy;
        let mut gates = Vec::new();
        if policy.paused {
            gates.push(WaitReason::Paused);
        }
        if let Some(reason) = &pool.rollout_held {
            gates.push(WaitReason::RolloutHeld {
                reason: reason.clone(),
            });
        }
        if policy.circuit_open(pool.failures) {
            gates.push(WaitReason::CircuitOpen {
                failures: pool.failures,
                max_failures: policy.max_failures,
            });
        }
        if let Some(source) = &policy.blockers.prometheus {
            if let Some(reason) = &pool.alerts_unknown {
                gates.push(WaitReason::AlertsUnknown {
                    url: source.url.clone(),
                    reason: reason.clone(),
                });
            }
            let mut alerts: Vec<&String> = pool
                .firing_alerts
                .iter()
                .filter(|a| source.filter.blocks(a))
                .collect();
            alerts.sort_unstable();
            alerts.dedup();
            gates.extend(alerts.into_iter().map(|alert| WaitReason::AlertFiring {
                alert: alert.clone(),
            }));
        }
        let window = policy.window_state(now);
        let (blackout, window_closed) = match window.reason {
            None => (None, None),
            Some(ClosedReason::Blackout { reason, until }) => {
                (Some(WaitReason::Blackout { reason, until }), None)
            }
            Some(ClosedReason::OutsideWindows) => (
                None,
                Some(WaitReason::WindowClosed {
                    next_open: window.next_open,
                }),
            ),
        };
        Self {
            pool,
            max: 0,
            unavailable: BTreeMap::new(),
            gates,
            blackout,
            window_closed,
        }
    }
}

/// A PDB's budget during one decision.
#[derive(Default)]
struct Budget {
    allowed: i32,
    in_flight: u32,
    admitted: u32,
}

impl Budget {
    fn fits(&self, needed: u32) -> bool {
        i64::from(self.in_flight) + i64::from(self.admitted) + i64::from(needed)
            <= i64::from(self.allowed)
    }

    /// Whether a drain needing more than the allowance may have the budget to itself: it
    /// allows a disruption and nobody else uses it. The drain then evicts as the budget allows
    /// while replacements become Ready, and [`Scheduler::commit`] takes the whole need, which
    /// keeps every later admission of this plan off the budget; in later plans the pods still
    /// to be evicted keep it (`in_flight`).
    fn exclusive(&self) -> bool {
        self.allowed >= 1 && self.in_flight == 0 && self.admitted == 0
    }
}

/// What admitting a node takes.
struct Admissible<'a> {
    pool: &'a Pool,
    /// Pods per PDB the drain will evict.
    pdb_needs: Vec<(&'a NamespacedName, u32)>,
    /// PDBs the drain has to itself because its pods outnumber the allowance.
    sequential: Vec<SequentialPdb>,
}

/// Lookup tables and running totals for one decision.
struct Scheduler<'a> {
    snapshot: &'a Snapshot,
    now: Timestamp,
    nodes: HashMap<&'a str, &'a NodeState>,
    slots: HashMap<&'a str, &'a Slot>,
    pools: HashMap<&'a str, PoolState<'a>>,
    budgets: HashMap<&'a NamespacedName, Budget>,
    /// The cluster's versions, gathered once per decision.
    versions: ClusterVersions,
    guard: control_plane::Guard<'a>,
}

impl<'a> Scheduler<'a> {
    fn new(snapshot: &'a Snapshot, now: Timestamp) -> Self {
        let nodes: HashMap<&str, &NodeState> = snapshot
            .nodes
            .iter()
            .map(|n| (n.name.as_str(), n))
            .collect();
        let mut slots: HashMap<&str, &Slot> = HashMap::with_capacity(snapshot.slots.len());
        for slot in &snapshot.slots {
            slots.entry(slot.node.as_str()).or_insert(slot);
        }
        let mut pools: HashMap<&str, PoolState> = snapshot
            .pools
            .iter()
            .map(|p| (p.name.as_str(), PoolState::new(p, now)))
            .collect();
        let mut sizes: HashMap<&str, usize> = HashMap::new();
        let unavailability = |node: &NodeState| {
            if slots.contains_key(node.name.as_str()) {
                Some(Unavailability::HoldsSlot)
            } else if !node.ready {
                Some(Unavailability::NotReady)
            } else if node.unschedulable && node.cordoned_by_rota {
                Some(Unavailability::CordonedByRota)
            } else if node.unschedulable {
                Some(Unavailability::Cordoned)
            } else {
                None
            }
        };
        for node in &snapshot.nodes {
            let why = unavailability(node);
            for pool_name in distinct_pools(node) {
                if let Some(pool) = pools.get_mut(pool_name) {
                    *sizes.entry(pool_name).or_default() += 1;
                    if let Some(why) = why {
                        pool.unavailable.insert(node.name.as_str(), why);
                    }
                }
            }
        }
        for (name, pool) in &mut pools {
            let size = sizes.get(name).copied().unwrap_or(0);
            pool.max = pool.pool.policy.max_unavailable.resolve(size);
        }
        let mut budgets: HashMap<&NamespacedName, Budget> = snapshot
            .pdbs
            .iter()
            .map(|p| {
                let budget = Budget {
                    allowed: p.disruptions_allowed,
                    ..Budget::default()
                };
                (&p.key, budget)
            })
            .collect();
        for slot in slots.values() {
            let Some(node) = nodes.get(slot.node.as_str()) else {
                continue;
            };
            for pdb in node.evictable_pods.iter().flat_map(|p| &p.pdbs) {
                if let Some(budget) = budgets.get_mut(pdb) {
                    budget.in_flight += 1;
                }
            }
        }
        let guard = control_plane::Guard::new(&snapshot.nodes, &pools, unavailability);
        Self {
            snapshot,
            now,
            nodes,
            slots,
            pools,
            budgets,
            versions: ClusterVersions::of(&snapshot.nodes, snapshot.api_server_version),
            guard,
        }
    }

    /// The queue in admission order: manual first, then control-plane nodes, then FIFO, then
    /// name (and, for duplicate requests of one node, a fixed order of their contents).
    fn queue_order(&self) -> Vec<&'a SlotRequest> {
        let snapshot = self.snapshot;
        let key = |r: &SlotRequest| {
            let control_plane = self
                .nodes
                .get(r.node.as_str())
                .is_some_and(|n| n.control_plane);
            QueueKey::of(r, control_plane)
        };
        let mut order: Vec<(_, &SlotRequest)> =
            snapshot.queue.iter().map(|r| (key(r), r)).collect();
        order.sort_by(|(ka, a), (kb, b)| ka.cmp(kb).then_with(|| duplicate_order(a, b)));
        order.into_iter().map(|(_, r)| r).collect()
    }

    /// Whether `request` can be admitted now; if not, its pool and every reason.
    fn evaluate(
        &self,
        request: &SlotRequest,
    ) -> Result<Admissible<'a>, (Option<PoolName>, Vec<WaitReason>)> {
        let Some(node) = self.nodes.get(request.node.as_str()).copied() else {
            return Err((None, vec![WaitReason::NodeNotFound]));
        };
        let pool_name = match distinct_pools(node).as_slice() {
            [one] => *one,
            [] => return Err((None, vec![WaitReason::NoPool])),
            several => {
                let pools = several.iter().map(|p| (*p).to_owned()).collect();
                return Err((None, vec![WaitReason::SeveralPools { pools }]));
            }
        };
        let Some(pool) = self.pools.get(pool_name) else {
            return Err((None, vec![WaitReason::NoPool]));
        };
        let in_pool = Some(pool_name.to_owned());
        if let Some(slot) = self.slots.get(node.name.as_str()) {
            return Err((in_pool, vec![WaitReason::HoldsSlot { phase: slot.phase }]));
        }

        let mut reasons = pool.gates.clone();
        reasons.extend(pool.blackout.clone());
        if request.origin != Origin::Manual {
            reasons.extend(pool.window_closed.clone());
        }
        reasons.extend(forbidden(&pool.pool.policy, &request.operation));
        if let Some(until) = request.not_before.filter(|&t| t > self.now) {
            reasons.push(WaitReason::BackingOff { until });
        }
        if !node.blocking_pods.is_empty() {
            let mut pods = node.blocking_pods.clone();
            pods.sort_unstable();
            reasons.push(WaitReason::BlockingPods { pods });
        }
        if let Operation::KubernetesUpgrade { version, kubeadm } = &request.operation {
            // A version that does not parse is reported by the skew check below.
            if let Some(target) = pool.pool.policy.upgrade.kubernetes_version
                && version.parse::<KubeVersion>().is_ok()
                && !crate::upgrade::leads_to(version, target)
            {
                reasons.push(WaitReason::NotTargetVersion {
                    requested: version.clone(),
                    target,
                });
            }
            reasons.extend(
                skew::check(&self.versions, node, version, *kubeadm)
                    .into_iter()
                    .map(WaitReason::VersionSkew),
            );
        }
        reasons.extend(etcd_snapshot(
            node,
            &pool.pool.policy,
            &request.operation,
            self.now,
        ));

        let already_unavailable = pool.unavailable.contains_key(node.name.as_str());
        let after = pool.unavailable.len() + usize::from(!already_unavailable);
        if after > pool.max as usize {
            reasons.push(WaitReason::MaxUnavailable {
                unavailable: pool.unavailable.len(),
                max: pool.max,
                examples: pool
                    .unavailable
                    .iter()
                    .take(5)
                    .map(|(name, why)| ((*name).to_owned(), *why))
                    .collect(),
            });
        }

        self.guard.check(node, &mut reasons);

        let (pdb_needs, sequential) = self.pdb_needs(node, &mut reasons);
        if reasons.is_empty() {
            Ok(Admissible {
                pool: pool.pool,
                pdb_needs,
                sequential,
            })
        } else {
            Err((in_pool, reasons))
        }
    }

    /// Pods per PDB that draining `node` takes, and the budgets it would have to itself; adds a
    /// reason for every budget that does not fit.
    fn pdb_needs(
        &self,
        node: &'a NodeState,
        reasons: &mut Vec<WaitReason>,
    ) -> (Vec<(&'a NamespacedName, u32)>, Vec<SequentialPdb>) {
        let mut covered: Vec<&NamespacedName> = Vec::new();
        for pod in &node.evictable_pods {
            match pod.pdbs.as_slice() {
                [] => {}
                [pdb] => covered.push(pdb),
                several => {
                    let mut pdbs = several.to_vec();
                    pdbs.sort_unstable();
                    reasons.push(WaitReason::SeveralPdbs {
                        pod: pod.pod.clone(),
                        pdbs,
                    });
                }
            }
        }
        covered.sort_unstable();
        let mut needs: Vec<(&NamespacedName, u32)> = Vec::new();
        for pdb in covered {
            match needs.last_mut() {
                Some((last, count)) if *last == pdb => *count += 1,
                _ => needs.push((pdb, 1)),
            }
        }
        let mut sequential = Vec::new();
        for &(pdb, needed) in &needs {
            match self.budgets.get(pdb) {
                None => reasons.push(WaitReason::PdbUnknown { pdb: pdb.clone() }),
                Some(budget) if budget.fits(needed) => {}
                Some(budget) if budget.exclusive() => sequential.push(SequentialPdb {
                    pdb: pdb.clone(),
                    allowed: budget.allowed.unsigned_abs(),
                    pods: needed,
                }),
                Some(budget) => reasons.push(WaitReason::PdbBudget {
                    pdb: pdb.clone(),
                    allowed: budget.allowed,
                    in_flight: budget.in_flight,
                    admitted: budget.admitted,
                    needed,
                }),
            }
        }
        (needs, sequential)
    }

    /// Takes the capacity and budgets an admitted node uses.
    fn commit(&mut self, node: &NodeName, admissible: &Admissible<'a>) {
        if let Some(state) = self.nodes.get(node.as_str()) {
            self.guard.commit(state);
        }
        if let Some(pool) = self.pools.get_mut(admissible.pool.name.as_str())
            && let Some(node) = self.nodes.get(node.as_str())
        {
            pool.unavailable
                .entry(node.name.as_str())
                .or_insert(Unavailability::AdmittedNow);
        }
        for &(pdb, needed) in &admissible.pdb_needs {
            if let Some(budget) = self.budgets.get_mut(pdb) {
                budget.admitted += needed;
            }
        }
    }
}

/// Why the policy forbids `operation`, whoever asks for it.
fn forbidden(policy: &ValidatedPolicy, operation: &Operation) -> Option<WaitReason> {
    match operation {
        Operation::PackageUpgrade { .. } if policy.upgrade.mode == UpgradeMode::None => {
            Some(WaitReason::Forbidden {
                field: "upgrade.mode",
                value: "none",
            })
        }
        Operation::Reboot if policy.reboot.mode == RebootMode::Never => {
            Some(WaitReason::Forbidden {
                field: "reboot.mode",
                value: "never",
            })
        }
        _ => None,
    }
}

/// The node's pools, sorted, each once.
fn distinct_pools(node: &NodeState) -> Vec<&str> {
    let mut pools: Vec<&str> = node.pools.iter().map(String::as_str).collect();
    pools.sort_unstable();
    pools.dedup();
    pools
}

/// Where a request stands in the admission order: manual requests first, then control-plane
/// nodes, then first come first served, then by node name. `rotactl` shows queue positions in
/// this same order.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct QueueKey {
    automatic: bool,
    worker: bool,
    requested_at: Timestamp,
    node: NodeName,
}

impl QueueKey {
    /// The key of `request`, whose node is a control-plane node or not.
    pub fn of(request: &SlotRequest, control_plane: bool) -> Self {
        QueueKey {
            automatic: request.origin != Origin::Manual,
            worker: !control_plane,
            requested_at: request.requested_at,
            node: request.node.clone(),
        }
    }
}

/// A fixed order between two requests of the same node at the same time, so that the plan does
/// not depend on the queue's order.
fn duplicate_order(a: &SlotRequest, b: &SlotRequest) -> Ordering {
    a.not_before
        .cmp(&b.not_before)
        .then_with(|| a.operation.name().cmp(b.operation.name()))
        .then_with(|| format!("{:?}", a.operation).cmp(&format!("{:?}", b.operation)))
}

/// Nodes (or pods) listed by name in a reason; the rest are counted.
pub(crate) const LISTED: usize = 5;

/// `a, b, c` or `a, b, c, d, e and 7 more`, given the first few of `total` items.
pub(crate) fn list_with_more(first: &[String], total: usize) -> String {
    let shown = &first[..first.len().min(LISTED)];
    let mut text = shown.join(", ");
    if total > shown.len() {
        text.push_str(&format!(" and {} more", total - shown.len()));
    }
    text
}
