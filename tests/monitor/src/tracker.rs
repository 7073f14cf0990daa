//! The monitor's state and judgement: fed every watch change in arrival order, with the time it
//! arrived, it keeps the objects and updates the [`Verdict`]. No I/O; the watch layer feeds it.
//!
//! At every change, after the initial lists are in:
//! - each node's availability, outages (Ready not `True` or unreachable) and boot ID;
//! - each budget's healthy set from the pod objects: Running, Ready, not deleting, and not on a
//!   node that is down or rebooted since the pod was bound there. A pod leaving that set is
//!   classified ([`classify`]); a disruption that leaves fewer healthy pods than desired is a
//!   violation.
//!
//! Pods and nodes arrive on separate watches, so a pod deleted because its node went down can
//! arrive before the node's change. Such a pod first counts as deleted; when the node's outage
//! arrives with a lower `resourceVersion` (the API server's global order) than the pod's
//! deletion, the deletion is attributed to the outage. That is the only use of
//! `resourceVersion` order, and only for attribution.

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use jiff::Timestamp;

use crate::model::{
    BudgetFacts, Cause, ControllerFacts, Departure, NodeFacts, PodFacts, Selector, classify,
    desired_healthy,
};
use crate::verdict::{
    BudgetNow, LostPod, Peak, TIMELINE_LIMIT, TimelineEntry, Unavailability, Verdict, Violation,
};

/// The pool of nodes no configured pool selects.
pub const DEFAULT_POOL: &str = "default";

/// How many deleted pods are remembered for late attribution.
const GONE_MEMORY: usize = 4096;

/// A kind of object the monitor watches.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Kind {
    /// Pods.
    Pods,
    /// Nodes.
    Nodes,
    /// PodDisruptionBudgets.
    Budgets,
    /// Deployments.
    Deployments,
    /// ReplicaSets.
    ReplicaSets,
    /// StatefulSets.
    StatefulSets,
    /// ReplicationControllers.
    ReplicationControllers,
}

impl Kind {
    /// Every kind the monitor needs before it can judge.
    pub const ALL: [Kind; 7] = [
        Kind::Pods,
        Kind::Nodes,
        Kind::Budgets,
        Kind::Deployments,
        Kind::ReplicaSets,
        Kind::StatefulSets,
        Kind::ReplicationControllers,
    ];

    fn of_controller(kind: &str) -> Kind {
        match kind {
            "Deployment" => Kind::Deployments,
            "StatefulSet" => Kind::StatefulSets,
            "ReplicationController" => Kind::ReplicationControllers,
            _ => Kind::ReplicaSets,
        }
    }
}

/// One watched object.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Object {
    /// A pod.
    Pod(PodFacts),
    /// A node.
    Node(NodeFacts),
    /// A PodDisruptionBudget.
    Budget(BudgetFacts),
    /// A scalable controller.
    Controller(ControllerFacts),
}

impl Object {
    /// Its kind.
    pub fn kind(&self) -> Kind {
        match self {
            Object::Pod(_) => Kind::Pods,
            Object::Node(_) => Kind::Nodes,
            Object::Budget(_) => Kind::Budgets,
            Object::Controller(c) => Kind::of_controller(&c.kind),
        }
    }
}

/// A change a watch delivered.
#[derive(Clone, Debug)]
pub enum Change {
    /// An object was added or modified.
    Applied(Object),
    /// An object was deleted (its last state).
    Deleted(Object),
    /// A complete (re-)list of one kind: it replaces everything known of that kind.
    Relisted(Kind, Vec<Object>),
    /// A watch failed (the watcher retries and re-lists).
    WatchError(Kind, String),
}

/// A named group of nodes whose unavailability is counted on its own.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Pool {
    /// Its name.
    pub name: String,
    /// The nodes it selects (the first matching pool wins).
    pub selector: Selector,
}

#[derive(Clone, Debug)]
struct TrackedPod {
    facts: PodFacts,
    /// The node's boot ID when the pod was first seen bound to it while the node was up.
    bound_boot: Option<String>,
}

#[derive(Clone, Debug)]
struct Gone {
    pod: PodFacts,
    bound_boot: Option<String>,
}

/// The monitor's state; see the module docs.
#[derive(Debug)]
pub struct Tracker {
    pools: Vec<Pool>,
    pods: BTreeMap<String, TrackedPod>,
    nodes: BTreeMap<String, NodeFacts>,
    budgets: BTreeMap<String, BudgetFacts>,
    controllers: BTreeMap<String, ControllerFacts>,
    listed: BTreeSet<Kind>,
    ready: bool,
    /// Each budget's healthy pods (UIDs) after the last change.
    healthy: BTreeMap<String, BTreeSet<String>>,
    down: BTreeSet<String>,
    unavailable: BTreeSet<String>,
    boots: BTreeMap<String, String>,
    /// Per node that is down: the workload pods bound to it when it went down, by UID.
    outages: BTreeMap<String, BTreeMap<String, PodFacts>>,
    recently_gone: VecDeque<Gone>,
    lost: BTreeSet<String>,
    verdict: Verdict,
}

impl Tracker {
    /// A tracker counting unavailability per `pools`.
    pub fn new(pools: Vec<Pool>) -> Tracker {
        Tracker {
            pools,
            pods: BTreeMap::new(),
            nodes: BTreeMap::new(),
            budgets: BTreeMap::new(),
            controllers: BTreeMap::new(),
            listed: BTreeSet::new(),
            ready: false,
            healthy: BTreeMap::new(),
            down: BTreeSet::new(),
            unavailable: BTreeSet::new(),
            boots: BTreeMap::new(),
            outages: BTreeMap::new(),
            recently_gone: VecDeque::new(),
            lost: BTreeSet::new(),
            verdict: Verdict::default(),
        }
    }

    /// Whether every kind was listed once: from then on the tracker judges.
    pub fn ready(&self) -> bool {
        self.ready
    }

    /// The verdict so far.
    pub fn verdict(&self) -> Verdict {
        self.verdict.clone()
    }

    /// Takes in one change seen at `now`.
    pub fn apply(&mut self, change: Change, now: Timestamp) {
        let mut gone = Vec::new();
        match change {
            Change::Applied(object) => self.upsert(object),
            Change::Deleted(object) => {
                if let Some(g) = self.remove(&object) {
                    gone.push(g);
                }
            }
            Change::Relisted(kind, objects) => {
                if self.listed.insert(kind) {
                    for object in objects {
                        self.upsert(object);
                    }
                    if !self.ready && Kind::ALL.iter().all(|k| self.listed.contains(k)) {
                        self.baseline(now);
                    }
                    return;
                }
                self.verdict.watch_restarts += 1;
                // Pods that appeared while the watch was away are added only after the rest of
                // the re-list was judged: a replacement is assumed to come after the pod it
                // replaces, so a dip the watch missed is not hidden by the pod that ended it.
                let (known, arrived): (Vec<Object>, Vec<Object>) =
                    objects.into_iter().partition(|o| match o {
                        Object::Pod(p) => self.pods.contains_key(&p.uid),
                        _ => true,
                    });
                let (missed, removed) = self.replace(kind, known);
                let missed = missed || !arrived.is_empty();
                if missed {
                    self.verdict.lost_track = true;
                }
                self.note(
                    now,
                    format!(
                        "re-listed {kind:?}{}",
                        if missed {
                            ": changes no event showed"
                        } else {
                            ""
                        }
                    ),
                );
                self.remember(&removed);
                if self.ready {
                    self.evaluate(now, &removed);
                }
                for object in arrived {
                    self.upsert(object);
                }
            }
            Change::WatchError(kind, message) => {
                self.verdict.watch_restarts += 1;
                self.note(now, format!("watch of {kind:?} failed: {message}"));
                return;
            }
        }
        self.remember(&gone);
        if self.ready {
            self.evaluate(now, &gone);
        }
    }

    fn remember(&mut self, gone: &[Gone]) {
        for g in gone {
            self.recently_gone.push_back(g.clone());
            if self.recently_gone.len() > GONE_MEMORY {
                self.recently_gone.pop_front();
            }
        }
    }

    fn upsert(&mut self, object: Object) {
        match object {
            Object::Pod(pod) => {
                let node_boot = pod
                    .node
                    .as_ref()
                    .and_then(|n| self.nodes.get(n))
                    .filter(|n| !n.down() && !n.boot_id.is_empty())
                    .map(|n| n.boot_id.clone());
                let entry = self.pods.entry(pod.uid.clone());
                let tracked = entry.or_insert_with(|| TrackedPod {
                    facts: pod.clone(),
                    bound_boot: None,
                });
                if tracked.facts.node != pod.node {
                    tracked.bound_boot = None;
                }
                if tracked.bound_boot.is_none() {
                    tracked.bound_boot = node_boot;
                }
                tracked.facts = pod;
            }
            Object::Node(node) => {
                if !node.down() && !node.boot_id.is_empty() {
                    self.boots
                        .entry(node.name.clone())
                        .or_insert_with(|| node.boot_id.clone());
                }
                self.nodes.insert(node.name.clone(), node);
            }
            Object::Budget(budget) => {
                self.budgets.insert(budget.id(), budget);
            }
            Object::Controller(c) => {
                self.controllers.insert(c.uid.clone(), c);
            }
        }
    }

    fn remove(&mut self, object: &Object) -> Option<Gone> {
        match object {
            Object::Pod(pod) => {
                let tracked = self.pods.remove(&pod.uid);
                Some(Gone {
                    pod: pod.clone(),
                    bound_boot: tracked.and_then(|t| t.bound_boot),
                })
            }
            Object::Node(node) => {
                self.nodes.remove(&node.name);
                None
            }
            Object::Budget(budget) => {
                self.budgets.remove(&budget.id());
                self.healthy.remove(&budget.id());
                None
            }
            Object::Controller(c) => {
                self.controllers.remove(&c.uid);
                None
            }
        }
    }

    /// Replaces every object of `kind` by `objects`; returns whether anything judged differed
    /// from what the events had shown (a new resourceVersion alone does not), and the pods
    /// that vanished.
    fn replace(&mut self, kind: Kind, objects: Vec<Object>) -> (bool, Vec<Gone>) {
        let mut missed = false;
        let mut gone = Vec::new();
        match kind {
            Kind::Pods => {
                let fresh: BTreeSet<String> = objects
                    .iter()
                    .filter_map(|o| match o {
                        Object::Pod(p) => Some(p.uid.clone()),
                        _ => None,
                    })
                    .collect();
                let vanished: Vec<String> = self
                    .pods
                    .keys()
                    .filter(|uid| !fresh.contains(*uid))
                    .cloned()
                    .collect();
                for uid in vanished {
                    if let Some(t) = self.pods.remove(&uid) {
                        missed = true;
                        gone.push(Gone {
                            pod: t.facts,
                            bound_boot: t.bound_boot,
                        });
                    }
                }
                for o in &objects {
                    if let Object::Pod(p) = o
                        && self.pods.get(&p.uid).is_none_or(|t| {
                            PodFacts {
                                resource_version: None,
                                ..t.facts.clone()
                            } != PodFacts {
                                resource_version: None,
                                ..p.clone()
                            }
                        })
                    {
                        missed = true;
                    }
                }
            }
            Kind::Nodes => {
                let fresh: BTreeSet<&str> = objects
                    .iter()
                    .filter_map(|o| match o {
                        Object::Node(n) => Some(n.name.as_str()),
                        _ => None,
                    })
                    .collect();
                missed |= self.nodes.keys().any(|n| !fresh.contains(n.as_str()));
                self.nodes.retain(|n, _| fresh.contains(n.as_str()));
                for o in &objects {
                    // A heartbeat changes the resourceVersion and nothing judged.
                    if let Object::Node(n) = o
                        && self.nodes.get(&n.name).is_none_or(|known| {
                            NodeFacts {
                                resource_version: None,
                                ..known.clone()
                            } != NodeFacts {
                                resource_version: None,
                                ..n.clone()
                            }
                        })
                    {
                        missed = true;
                    }
                }
            }
            Kind::Budgets => {
                let before = self.budgets.len();
                self.budgets.clear();
                missed |= before != objects.len();
            }
            _ => {
                let before = self.controllers.len();
                self.controllers
                    .retain(|_, c| Kind::of_controller(&c.kind) != kind);
                missed |= before - self.controllers.len() != objects.len();
            }
        }
        for object in objects {
            self.upsert(object);
        }
        (missed, gone)
    }

    fn note(&mut self, time: Timestamp, what: String) {
        tracing::debug!(%time, "{what}");
        if self.verdict.timeline.len() < TIMELINE_LIMIT {
            self.verdict.timeline.push(TimelineEntry { time, what });
        }
    }

    fn pool_of(&self, node: &NodeFacts) -> &str {
        self.pools
            .iter()
            .find(|p| p.selector.matches(&node.labels))
            .map_or(DEFAULT_POOL, |p| p.name.as_str())
    }

    /// The initial lists are in: what is unavailable or unhealthy now is the starting point,
    /// not a finding.
    fn baseline(&mut self, now: Timestamp) {
        self.ready = true;
        self.down = self
            .nodes
            .values()
            .filter(|n| n.down())
            .map(|n| n.name.clone())
            .collect();
        for pool in &self.pools {
            self.verdict
                .max_unavailable
                .pools
                .insert(pool.name.clone(), Peak::default());
        }
        self.judge_budgets(now, &[]);
        self.update_peaks(now);
        self.note(
            now,
            format!(
                "initial lists in: {} nodes, {} pods, {} budgets",
                self.nodes.len(),
                self.pods.len(),
                self.budgets.len()
            ),
        );
    }

    /// Whether a tracked pod counts as healthy: its object says so, and its node is neither
    /// down nor rebooted since the pod was bound.
    fn effectively_healthy(&self, pod: &TrackedPod) -> bool {
        if !pod.facts.healthy() {
            return false;
        }
        match pod.facts.node.as_ref().and_then(|n| self.nodes.get(n)) {
            Some(node) => {
                !node.down()
                    && pod
                        .bound_boot
                        .as_ref()
                        .is_none_or(|b| node.boot_id.is_empty() || *b == node.boot_id)
            }
            None => true,
        }
    }

    fn healthy_set(&self, budget: &str) -> BTreeSet<String> {
        let Some(b) = self.budgets.get(budget) else {
            return BTreeSet::new();
        };
        self.pods
            .values()
            .filter(|p| b.covers(&p.facts) && self.effectively_healthy(p))
            .map(|p| p.facts.uid.clone())
            .collect()
    }

    fn evaluate(&mut self, now: Timestamp, gone: &[Gone]) {
        // Nodes: outages, recoveries and reboots.
        let mut went_down = Vec::new();
        let mut came_up = Vec::new();
        let mut rebooted = Vec::new();
        for node in self.nodes.values() {
            let was_down = self.down.contains(&node.name);
            if node.down() && !was_down {
                went_down.push(node.name.clone());
            } else if !node.down() && was_down {
                came_up.push(node.name.clone());
            }
            if let Some(old) = self.boots.get(&node.name)
                && !node.boot_id.is_empty()
                && *old != node.boot_id
            {
                rebooted.push((node.name.clone(), old.clone(), node.boot_id.clone()));
            }
        }
        self.down
            .retain(|n| self.nodes.get(n).is_some_and(NodeFacts::down));
        for name in &went_down {
            self.node_went_down(name, now);
        }

        // Pods lost with their node.
        for g in gone {
            if let Some(node) = &g.pod.node
                && let Some(outage) = self.outages.get_mut(node)
                && let Some(pod) = outage.remove(&g.pod.uid)
            {
                self.lose(&pod, node, Cause::NodeDown, now);
            }
        }
        let terminal: Vec<(String, PodFacts)> = self
            .outages
            .iter()
            .flat_map(|(node, pods)| {
                pods.keys()
                    .filter_map(|uid| self.pods.get(uid))
                    .filter(|t| t.facts.terminal())
                    .map(|t| (node.clone(), t.facts.clone()))
                    .collect::<Vec<_>>()
            })
            .collect();
        for (node, pod) in terminal {
            if let Some(outage) = self.outages.get_mut(&node) {
                outage.remove(&pod.uid);
            }
            self.lose(&pod, &node, Cause::NodeDown, now);
        }

        self.judge_budgets(now, gone);

        for (name, old, new) in rebooted {
            self.node_rebooted(&name, &old, &new, now);
        }
        for name in came_up {
            self.note(now, format!("node {name} up"));
            // Pods that were bound through an outage that was not a reboot survived it.
            if let Some(outage) = self.outages.remove(&name) {
                let survived = outage
                    .keys()
                    .filter(|uid| self.pods.contains_key(*uid))
                    .count();
                if survived > 0 {
                    self.note(
                        now,
                        format!("{survived} pods on {name} survived its outage (same boot)"),
                    );
                }
            }
        }
        self.update_peaks(now);
    }

    fn node_went_down(&mut self, name: &str, now: Timestamp) {
        self.down.insert(name.to_string());
        let node_rv = self.nodes.get(name).and_then(|n| n.resource_version);
        self.note(now, format!("node {name} down"));
        let bound: BTreeMap<String, PodFacts> = self
            .pods
            .values()
            .filter(|t| t.facts.node.as_deref() == Some(name) && at_risk(&t.facts))
            .map(|t| (t.facts.uid.clone(), t.facts.clone()))
            .collect();
        self.outages.insert(name.to_string(), bound);
        // Pods the API server deleted after the node went down, whose deletion arrived first.
        let late: Vec<PodFacts> = self
            .recently_gone
            .iter()
            .filter(|g| {
                g.pod.node.as_deref() == Some(name)
                    && at_risk(&g.pod)
                    && matches!((node_rv, g.pod.resource_version), (Some(n), Some(p)) if p > n)
            })
            .map(|g| g.pod.clone())
            .collect();
        for pod in late {
            for v in &mut self.verdict.violations {
                if v.pod_uid == pod.uid && v.cause == Cause::Deletion {
                    v.cause = Cause::NodeDown;
                }
            }
            self.lose(&pod, name, Cause::NodeDown, now);
        }
    }

    fn node_rebooted(&mut self, name: &str, old: &str, new: &str, now: Timestamp) {
        *self.verdict.reboots.entry(name.to_string()).or_default() += 1;
        self.boots.insert(name.to_string(), new.to_string());
        self.note(now, format!("node {name} rebooted (boot {old} → {new})"));
        let mut lost: BTreeMap<String, PodFacts> = self.outages.remove(name).unwrap_or_default();
        for t in self.pods.values_mut() {
            if t.facts.node.as_deref() == Some(name) {
                if t.bound_boot.as_deref() == Some(old) && at_risk(&t.facts) {
                    lost.insert(t.facts.uid.clone(), t.facts.clone());
                }
                t.bound_boot = Some(new.to_string());
            }
        }
        for pod in lost.values() {
            self.lose(pod, name, Cause::Reboot, now);
        }
        self.reattribute_to_reboot(name, &lost, now);
    }

    /// Pods and nodes arrive on separate watches, and a kubelet back from a reboot may show
    /// its pods restarting (not Ready) before the node's new boot ID is seen: such a pod
    /// was judged "not a disruption" on a healthy node. Once the reboot is seen, the latest
    /// such judgement of each pod bound through it, if the pod has not been healthy since, is
    /// a departure by reboot — a violation when it left its budget below the desired count.
    fn reattribute_to_reboot(
        &mut self,
        name: &str,
        lost: &BTreeMap<String, PodFacts>,
        now: Timestamp,
    ) {
        let uid_of: BTreeMap<String, String> =
            lost.values().map(|p| (p.id(), p.uid.clone())).collect();
        let mut seen = BTreeSet::new();
        let mut moved = Vec::new();
        for (index, u) in self.verdict.unavailability.iter().enumerate().rev() {
            let Some(uid) = uid_of.get(&u.pod) else {
                continue;
            };
            if u.node.as_deref() != Some(name) || !seen.insert(u.pod.clone()) {
                continue;
            }
            let healthy_since = self.healthy.get(&u.pdb).is_some_and(|h| h.contains(uid));
            if !healthy_since {
                moved.push((index, uid.clone()));
            }
        }
        // Highest index first, so that the earlier indices stay valid.
        for (index, uid) in moved {
            let u = self.verdict.unavailability.remove(index);
            let Some(desired) = u.desired.filter(|d| u.healthy < *d) else {
                continue;
            };
            let v = Violation {
                time: u.time,
                pdb: u.pdb,
                pod: u.pod,
                pod_uid: uid,
                node: u.node,
                cause: Cause::Reboot,
                healthy: u.healthy,
                desired,
            };
            tracing::warn!(violation = %v, "PDB violation (seen once the reboot was)");
            self.note(
                now,
                format!("VIOLATION {v} (its node's reboot seen after it)"),
            );
            self.verdict.violations.push(v);
        }
    }

    fn lose(&mut self, pod: &PodFacts, node: &str, cause: Cause, now: Timestamp) {
        if !self.lost.insert(pod.uid.clone()) {
            return;
        }
        self.note(now, format!("pod {} lost on {node} ({cause})", pod.id()));
        self.verdict.pods_lost_to_reboots.push(LostPod {
            time: now,
            pod: pod.id(),
            node: node.to_string(),
            cause,
            terminating: pod.deleting,
        });
    }

    fn judge_budgets(&mut self, now: Timestamp, gone: &[Gone]) {
        let ids: Vec<String> = self.budgets.keys().cloned().collect();
        for id in ids {
            let Some(budget) = self.budgets.get(&id).cloned() else {
                continue;
            };
            let matched: Vec<&PodFacts> = self
                .pods
                .values()
                .map(|t| &t.facts)
                .filter(|p| budget.covers(p))
                .collect();
            let desired = desired_healthy(budget.rule, &matched, &self.controllers);
            let healthy = self.healthy_set(&id);
            let count = i32::try_from(healthy.len()).unwrap_or(i32::MAX);
            let departed: Vec<String> = match self.healthy.get(&id) {
                Some(before) => before.difference(&healthy).cloned().collect(),
                None => Vec::new(),
            };
            let lowest = self
                .verdict
                .budgets
                .get(&id)
                .map_or(count, |b| b.lowest_healthy.min(count));
            self.verdict.budgets.insert(
                id.clone(),
                BudgetNow {
                    healthy: count,
                    desired: desired.as_ref().ok().copied(),
                    lowest_healthy: lowest,
                },
            );
            if let Err(why) = &desired {
                let why = why.to_string();
                if self.verdict.not_computable.get(&id) != Some(&why) {
                    self.note(now, format!("PDB {id} not computable: {why}"));
                    self.verdict.not_computable.insert(id.clone(), why);
                }
            }
            for uid in departed {
                let (pod, is_gone, bound_boot) = match self.pods.get(&uid) {
                    Some(t) => (t.facts.clone(), false, t.bound_boot.clone()),
                    None => match gone
                        .iter()
                        .chain(self.recently_gone.iter().rev())
                        .find(|g| g.pod.uid == uid)
                    {
                        Some(g) => (g.pod.clone(), true, g.bound_boot.clone()),
                        None => continue,
                    },
                };
                let node = pod.node.as_ref().and_then(|n| self.nodes.get(n));
                let departure = if !is_gone && !budget.covers(&pod) {
                    Departure::Other("no longer selected by the budget".into())
                } else {
                    classify(&pod, is_gone, node, bound_boot.as_deref())
                };
                match departure {
                    Departure::Disruption(cause) => {
                        if let Ok(d) = desired
                            && count < d
                        {
                            let v = Violation {
                                time: now,
                                pdb: id.clone(),
                                pod: pod.id(),
                                pod_uid: pod.uid.clone(),
                                node: pod.node.clone(),
                                cause,
                                healthy: count,
                                desired: d,
                            };
                            tracing::warn!(violation = %v, "PDB violation");
                            self.note(now, format!("VIOLATION {v}"));
                            self.verdict.violations.push(v);
                        }
                    }
                    Departure::Other(reason) => {
                        self.note(
                            now,
                            format!("pod {} of PDB {id} unavailable: {reason}", pod.id()),
                        );
                        self.verdict.unavailability.push(Unavailability {
                            time: now,
                            pdb: id.clone(),
                            pod: pod.id(),
                            node: pod.node.clone(),
                            reason,
                            healthy: count,
                            desired: desired.as_ref().ok().copied(),
                        });
                    }
                }
            }
            self.healthy.insert(id, healthy);
        }
    }

    fn update_peaks(&mut self, now: Timestamp) {
        let unavailable: BTreeSet<String> = self
            .nodes
            .values()
            .filter(|n| n.unavailable())
            .map(|n| n.name.clone())
            .collect();
        if unavailable != self.unavailable {
            let newly: Vec<String> = unavailable.difference(&self.unavailable).cloned().collect();
            for n in newly {
                self.note(now, format!("node {n} unavailable"));
            }
            let back: Vec<String> = self.unavailable.difference(&unavailable).cloned().collect();
            for n in back {
                self.note(now, format!("node {n} available"));
            }
            self.unavailable = unavailable;
            self.verdict.unavailable_now = self.unavailable.iter().cloned().collect();
        }
        let mut pools: BTreeMap<String, Vec<String>> = BTreeMap::new();
        let mut control_plane = Vec::new();
        for name in &self.unavailable {
            if let Some(node) = self.nodes.get(name) {
                pools
                    .entry(self.pool_of(node).to_string())
                    .or_default()
                    .push(name.clone());
                if node.control_plane() {
                    control_plane.push(name.clone());
                }
            }
        }
        let all: Vec<String> = self.unavailable.iter().cloned().collect();
        let max = &mut self.verdict.max_unavailable;
        raise(&mut max.overall, all, now);
        raise(&mut max.control_plane, control_plane, now);
        for node in self.nodes.values() {
            let pool = self
                .pools
                .iter()
                .find(|p| p.selector.matches(&node.labels))
                .map_or(DEFAULT_POOL, |p| p.name.as_str());
            max.pools.entry(pool.to_string()).or_default();
        }
        for (pool, nodes) in pools {
            raise(max.pools.entry(pool).or_default(), nodes, now);
        }
    }
}

/// A pod whose loss with its node counts: a workload pod not already evicted.
fn at_risk(pod: &PodFacts) -> bool {
    pod.workload() && pod.disruption_target.as_deref() != Some("EvictionByEvictionAPI")
}

fn raise(peak: &mut Peak, nodes: Vec<String>, now: Timestamp) {
    if nodes.len() > peak.count {
        peak.count = nodes.len();
        peak.nodes = nodes;
        peak.at = Some(now);
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::model::{BudgetRule, IntOrPercent, OwnerRef, Readiness};

    fn t(s: i64) -> Timestamp {
        Timestamp::from_second(1_700_000_000 + s).unwrap()
    }

    fn pod(name: &str, node: &str) -> PodFacts {
        PodFacts {
            uid: format!("uid-{name}"),
            namespace: "ns".into(),
            name: name.into(),
            labels: [("app".to_string(), "web".to_string())].into(),
            node: Some(node.into()),
            phase: "Running".into(),
            ready: true,
            deleting: false,
            disruption_target: None,
            controller: Some(OwnerRef {
                kind: "StatefulSet".into(),
                name: "web".into(),
                uid: "sts".into(),
            }),
            mirror: false,
            resource_version: None,
        }
    }

    fn node(name: &str, pool: &str) -> NodeFacts {
        NodeFacts {
            name: name.into(),
            labels: [("pool".to_string(), pool.to_string())].into(),
            readiness: Readiness::Ready,
            unschedulable: false,
            unreachable: false,
            boot_id: format!("{name}-boot-1"),
            resource_version: None,
        }
    }

    fn budget(rule: BudgetRule) -> BudgetFacts {
        BudgetFacts {
            namespace: "ns".into(),
            name: "web".into(),
            selector: Some(Selector {
                labels: [("app".to_string(), "web".to_string())].into(),
                expressions: Vec::new(),
            }),
            rule,
        }
    }

    /// Three web pods on n1..n3 (a StatefulSet of 3), a budget of minAvailable 2, nodes in
    /// pools `a` (n1, n2) and `b` (n3, n4).
    fn tracker() -> Tracker {
        let pools = ["a", "b"]
            .map(|p| Pool {
                name: p.into(),
                selector: Selector {
                    labels: [("pool".to_string(), p.to_string())].into(),
                    expressions: Vec::new(),
                },
            })
            .to_vec();
        let mut tracker = Tracker::new(pools);
        let nodes = [
            node("n1", "a"),
            node("n2", "a"),
            node("n3", "b"),
            node("n4", "b"),
        ];
        let pods = [pod("p1", "n1"), pod("p2", "n2"), pod("p3", "n3")];
        let sts = ControllerFacts {
            kind: "StatefulSet".into(),
            namespace: "ns".into(),
            name: "web".into(),
            uid: "sts".into(),
            replicas: 3,
            controller: None,
        };
        let lists = [
            (Kind::Nodes, nodes.into_iter().map(Object::Node).collect()),
            (Kind::Pods, pods.into_iter().map(Object::Pod).collect()),
            (
                Kind::Budgets,
                vec![Object::Budget(budget(BudgetRule::MinAvailable(
                    IntOrPercent::Int(2),
                )))],
            ),
            (Kind::StatefulSets, vec![Object::Controller(sts)]),
            (Kind::Deployments, vec![]),
            (Kind::ReplicaSets, vec![]),
            (Kind::ReplicationControllers, vec![]),
        ];
        for (kind, objects) in lists {
            assert!(!tracker.ready());
            tracker.apply(Change::Relisted(kind, objects), t(0));
        }
        assert!(tracker.ready());
        tracker
    }

    fn evicted(p: PodFacts) -> PodFacts {
        PodFacts {
            deleting: true,
            disruption_target: Some("EvictionByEvictionAPI".into()),
            ..p
        }
    }

    #[test]
    fn an_allowed_eviction_and_its_late_replacement_are_fine() {
        let mut tr = tracker();
        tr.apply(Change::Applied(Object::Pod(evicted(pod("p1", "n1")))), t(1));
        tr.apply(Change::Deleted(Object::Pod(evicted(pod("p1", "n1")))), t(2));
        // The replacement arrives later, first not Ready.
        let mut p4 = pod("p4", "n2");
        p4.ready = false;
        tr.apply(Change::Applied(Object::Pod(p4.clone())), t(3));
        p4.ready = true;
        tr.apply(Change::Applied(Object::Pod(p4)), t(4));
        let v = tr.verdict();
        assert!(v.violations.is_empty(), "{v:?}");
        assert!(v.pods_lost_to_reboots.is_empty());
    }

    #[test]
    fn a_second_eviction_below_the_budget_is_a_violation() {
        let mut tr = tracker();
        tr.apply(Change::Applied(Object::Pod(evicted(pod("p1", "n1")))), t(1));
        tr.apply(Change::Applied(Object::Pod(evicted(pod("p2", "n2")))), t(2));
        let v = tr.verdict();
        assert_eq!(v.violations.len(), 1, "{v:?}");
        let found = &v.violations[0];
        assert_eq!(found.pod, "ns/p2");
        assert_eq!(found.cause, Cause::Eviction);
        assert_eq!((found.healthy, found.desired), (1, 2));
        assert_eq!(found.node.as_deref(), Some("n2"));
    }

    #[test]
    fn a_raw_delete_at_the_limit_is_a_violation_a_crash_is_not() {
        let mut tr = tracker();
        let mut crashed = pod("p1", "n1");
        crashed.ready = false;
        tr.apply(Change::Applied(Object::Pod(crashed)), t(1));
        tr.apply(Change::Deleted(Object::Pod(pod("p2", "n2"))), t(2));
        let v = tr.verdict();
        assert_eq!(v.unavailability.len(), 1, "{v:?}");
        assert_eq!(v.unavailability[0].pod, "ns/p1");
        assert_eq!(v.violations.len(), 1, "{v:?}");
        assert_eq!(v.violations[0].cause, Cause::Deletion);
        assert_eq!(v.violations[0].healthy, 1);
    }

    #[test]
    fn a_node_going_down_with_pods_bound_loses_them() {
        let mut tr = tracker();
        tr.apply(Change::Applied(Object::Pod(evicted(pod("p1", "n1")))), t(1));
        // n2 goes down with p2 bound: budget at 1 healthy.
        let mut n2 = node("n2", "a");
        n2.readiness = Readiness::Unknown;
        tr.apply(Change::Applied(Object::Node(n2.clone())), t(2));
        tr.apply(Change::Deleted(Object::Pod(pod("p2", "n2"))), t(3));
        let v = tr.verdict();
        assert_eq!(v.violations.len(), 1, "{v:?}");
        assert_eq!(v.violations[0].cause, Cause::NodeDown);
        assert_eq!(v.pods_lost_to_reboots.len(), 1);
        assert_eq!(v.pods_lost_to_reboots[0].cause, Cause::NodeDown);
        // It comes back with a new boot: one reboot counted, nothing lost twice.
        n2.readiness = Readiness::Ready;
        n2.boot_id = "n2-boot-2".into();
        tr.apply(Change::Applied(Object::Node(n2)), t(4));
        let v = tr.verdict();
        assert_eq!(v.reboots.get("n2"), Some(&1));
        assert_eq!(v.pods_lost_to_reboots.len(), 1);
        assert_eq!(v.max_unavailable.pools["a"].count, 1);
    }

    #[test]
    fn a_deletion_seen_before_its_nodes_outage_is_attributed_to_the_outage() {
        let mut tr = tracker();
        tr.apply(Change::Applied(Object::Pod(evicted(pod("p1", "n1")))), t(1));
        let mut n2 = node("n2", "a");
        n2.readiness = Readiness::Unknown;
        n2.resource_version = Some(100);
        let mut p2 = pod("p2", "n2");
        p2.resource_version = Some(101);
        tr.apply(Change::Deleted(Object::Pod(p2)), t(2));
        assert_eq!(tr.verdict().violations[0].cause, Cause::Deletion);
        tr.apply(Change::Applied(Object::Node(n2)), t(2));
        let v = tr.verdict();
        assert_eq!(v.violations[0].cause, Cause::NodeDown, "{v:?}");
        assert_eq!(v.pods_lost_to_reboots.len(), 1);
    }

    #[test]
    fn a_reboot_seen_only_as_a_new_boot_id_is_caught() {
        let mut tr = tracker();
        tr.apply(Change::Applied(Object::Pod(evicted(pod("p1", "n1")))), t(1));
        let mut n2 = node("n2", "a");
        n2.boot_id = "n2-boot-2".into();
        tr.apply(Change::Applied(Object::Node(n2)), t(2));
        let v = tr.verdict();
        assert_eq!(v.violations.len(), 1, "{v:?}");
        assert_eq!(v.violations[0].cause, Cause::Reboot);
        assert_eq!(v.pods_lost_to_reboots.len(), 1);
        assert_eq!(v.pods_lost_to_reboots[0].cause, Cause::Reboot);
        assert_eq!(v.reboots.get("n2"), Some(&1));
    }

    #[test]
    fn a_restart_seen_before_its_nodes_reboot_is_a_reboot() {
        let mut tr = tracker();
        // After an evicted p1, the budget (minAvailable 2) is at its limit. n2's kubelet,
        // back from an undrained reboot, shows p2 restarting before the node's new boot ID
        // arrives: a crash on a healthy node at first, a departure by reboot once it does.
        tr.apply(Change::Applied(Object::Pod(evicted(pod("p1", "n1")))), t(1));
        let mut p2 = pod("p2", "n2");
        p2.ready = false;
        tr.apply(Change::Applied(Object::Pod(p2.clone())), t(2));
        assert!(tr.verdict().violations.is_empty());
        assert_eq!(tr.verdict().unavailability.len(), 1);
        let mut n2 = node("n2", "a");
        n2.boot_id = "n2-boot-2".into();
        tr.apply(Change::Applied(Object::Node(n2)), t(3));
        let v = tr.verdict();
        assert_eq!(v.violations.len(), 1, "{v:?}");
        assert_eq!(v.violations[0].pod, p2.id());
        assert_eq!(v.violations[0].cause, Cause::Reboot);
        assert_eq!(
            v.violations[0].time,
            t(2),
            "when it went, not when it was understood"
        );
        assert!(v.unavailability.is_empty(), "{v:?}");
        // A crash on a node that does not reboot stays a crash.
        let mut p3 = pod("p3", "n3");
        p3.ready = false;
        tr.apply(Change::Applied(Object::Pod(p3)), t(4));
        tr.apply(Change::Applied(Object::Node(node("n3", "b"))), t(5));
        assert_eq!(tr.verdict().violations.len(), 1);
    }

    #[test]
    fn a_drained_reboot_loses_nothing() {
        let mut tr = tracker();
        // Drain n3: p3 evicted and gone (budget back at 2 = desired, fine), then reboot.
        tr.apply(Change::Applied(Object::Pod(evicted(pod("p3", "n3")))), t(1));
        tr.apply(Change::Deleted(Object::Pod(evicted(pod("p3", "n3")))), t(2));
        let mut n3 = node("n3", "b");
        n3.unschedulable = true;
        tr.apply(Change::Applied(Object::Node(n3.clone())), t(1));
        n3.readiness = Readiness::Unknown;
        tr.apply(Change::Applied(Object::Node(n3.clone())), t(3));
        n3.readiness = Readiness::Ready;
        n3.boot_id = "n3-boot-2".into();
        n3.unschedulable = false;
        tr.apply(Change::Applied(Object::Node(n3)), t(4));
        let v = tr.verdict();
        assert!(v.violations.is_empty(), "{v:?}");
        assert!(v.pods_lost_to_reboots.is_empty(), "{v:?}");
        assert_eq!(v.reboots.get("n3"), Some(&1));
        assert_eq!(v.max_unavailable.overall.count, 1);
        assert_eq!(v.max_unavailable.pools["b"].count, 1);
        assert_eq!(v.max_unavailable.pools["a"].count, 0);
    }

    #[test]
    fn max_unavailable_per_pool_and_control_plane() {
        let mut tr = tracker();
        let mut n1 = node("n1", "a");
        n1.unschedulable = true;
        n1.labels
            .insert(crate::model::CONTROL_PLANE_LABEL.into(), String::new());
        let mut n2 = node("n2", "a");
        n2.unschedulable = true;
        let mut n4 = node("n4", "b");
        n4.unreachable = true;
        tr.apply(Change::Applied(Object::Node(n1.clone())), t(1));
        tr.apply(Change::Applied(Object::Node(n2.clone())), t(2));
        tr.apply(Change::Applied(Object::Node(n4)), t(3));
        n1.unschedulable = false;
        tr.apply(Change::Applied(Object::Node(n1)), t(4));
        let v = tr.verdict();
        assert_eq!(v.max_unavailable.overall.count, 3);
        assert_eq!(v.max_unavailable.overall.nodes, ["n1", "n2", "n4"]);
        assert_eq!(v.max_unavailable.overall.at, Some(t(3)));
        assert_eq!(v.max_unavailable.pools["a"].count, 2);
        assert_eq!(v.max_unavailable.pools["b"].count, 1);
        assert_eq!(v.max_unavailable.control_plane.count, 1);
        assert!(v.render().contains("most nodes unavailable at once: 3"));
    }

    #[test]
    fn a_relist_replaces_state_and_flags_what_it_missed() {
        let mut tr = tracker();
        // The watch missed p1's deletion: the re-list shows it gone.
        let pods = [pod("p2", "n2"), pod("p3", "n3")]
            .into_iter()
            .map(Object::Pod)
            .collect();
        tr.apply(Change::Relisted(Kind::Pods, pods), t(1));
        let v = tr.verdict();
        assert!(v.lost_track);
        assert_eq!(v.watch_restarts, 1);
        assert!(v.violations.is_empty(), "2 healthy, 2 desired: {v:?}");
        // Two pods gone unseen and their replacements already Ready: the re-list judges the
        // departures before the arrivals, so the dip the watch missed is still flagged.
        let mut tr = tracker();
        let pods = [pod("p3", "n3"), pod("p4", "n4"), pod("p5", "n4")]
            .into_iter()
            .map(Object::Pod)
            .collect();
        tr.apply(Change::Relisted(Kind::Pods, pods), t(1));
        let v = tr.verdict();
        assert!(v.lost_track);
        assert_eq!(v.violations.len(), 2, "{v:?}");
        assert!(
            v.violations
                .iter()
                .all(|v| v.cause == Cause::Deletion && v.healthy == 1)
        );
        assert_eq!(v.budgets["ns/web"].healthy, 3);
        // A re-list identical to what the events showed is no lost track.
        let mut tr = tracker();
        let pods = [pod("p1", "n1"), pod("p2", "n2"), pod("p3", "n3")]
            .into_iter()
            .map(Object::Pod)
            .collect();
        tr.apply(Change::Relisted(Kind::Pods, pods), t(1));
        tr.apply(Change::WatchError(Kind::Nodes, "gone".into()), t(1));
        // Nodes that only heartbeat meanwhile (a new resourceVersion) are no lost track either.
        let nodes = [
            node("n1", "a"),
            node("n2", "a"),
            node("n3", "b"),
            node("n4", "b"),
        ]
        .into_iter()
        .map(|mut n| {
            n.resource_version = Some(999);
            Object::Node(n)
        })
        .collect();
        tr.apply(Change::Relisted(Kind::Nodes, nodes), t(2));
        let v = tr.verdict();
        assert!(!v.lost_track);
        assert_eq!(v.watch_restarts, 3);
    }

    #[test]
    fn percent_budgets_follow_the_controllers_scale() {
        let mut tr = tracker();
        tr.apply(
            Change::Applied(Object::Budget(budget(BudgetRule::MaxUnavailable(
                IntOrPercent::Percent(34),
            )))),
            t(1),
        );
        // 3 expected, ceil(1.02) = 2 may be unavailable: desired 1.
        tr.apply(Change::Applied(Object::Pod(evicted(pod("p1", "n1")))), t(2));
        tr.apply(Change::Applied(Object::Pod(evicted(pod("p2", "n2")))), t(3));
        assert!(tr.verdict().violations.is_empty());
        tr.apply(Change::Applied(Object::Pod(evicted(pod("p3", "n3")))), t(4));
        let v = tr.verdict();
        assert_eq!(v.violations.len(), 1);
        assert_eq!((v.violations[0].healthy, v.violations[0].desired), (0, 1));
        // A bare pod under a percentage: not computable, and said so.
        let mut bare = pod("bare", "n4");
        bare.controller = None;
        tr.apply(Change::Applied(Object::Pod(bare)), t(5));
        assert!(tr.verdict().not_computable.contains_key("ns/web"));
    }
}
