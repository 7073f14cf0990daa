//! Property tests of the scheduler's safety invariants on random snapshots:
//! - never more than `maxUnavailable` unavailable nodes in a pool it admits to;
//! - never a set of drains that, with in-flight evictions, exceeds a PDB's `disruptionsAllowed` —
//!   except one drain alone on a budget that allows a disruption (a sequential drain): a PDB is
//!   never shared by two draining nodes when one of them needs more than the allowance;
//! - the control-plane quorum guard, across pools: an admitted control-plane node leaves at most
//!   the smallest `controlPlane.maxUnavailable` of the pools selecting control-plane nodes
//!   unavailable, was admitted only while every other control-plane node and its static pods
//!   were healthy, and never leaves fewer than a quorum of etcd members up (an etcd of one or two
//!   members loses a member only when every such pool allows it, and then one at a time);
//! - never a node admitted twice, nor one holding a slot, nor one a gate holds back (including
//!   an operation its policy forbids);
//! - no starvation: a waiting node that no gate holds back would break capacity or a budget if it
//!   were admitted on top of what was admitted (so only what went ahead of it keeps it waiting);
//! - the plan is deterministic and does not depend on the order of the snapshot's lists.

// Test helpers panic on bad fixtures, like the tests that call them.
#![allow(clippy::expect_used, clippy::unwrap_used)]

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

use jiff::{SignedDuration, Timestamp};
use proptest::prelude::*;
use rota_core::model::{
    FencingToken, Operation, Origin, Slot, SlotPhase, SlotRequest, UpgradeReboot,
};
use rota_core::policy::{KubeVersion, MaintenancePolicySpec, NamespacedName, validate};
use rota_core::scheduler::{
    ControlPlanePod, EvictablePod, NodeState, PdbState, Plan, Pool, Snapshot, schedule,
};
use serde_json::json;

const PDBS: usize = 4;

fn now() -> Timestamp {
    "2025-06-04T12:00:00Z".parse().unwrap()
}

#[derive(Clone, Debug)]
enum Max {
    Count(u32),
    Percent(u32),
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum WindowMode {
    AlwaysOpen,
    Closed,
    Blackout,
}

#[derive(Clone, Debug)]
struct PoolCase {
    max: Max,
    paused: bool,
    window: WindowMode,
    max_failures: u32,
    failures: u32,
    alert: bool,
    /// Its Prometheus could not be asked.
    alerts_unknown: bool,
    /// `controlPlane.maxUnavailable`.
    control_plane_max: u32,
    /// `controlPlane.allowEtcdQuorumLoss`.
    allow_quorum_loss: bool,
    /// `upgrade.mode: none`.
    upgrade_none: bool,
    /// `reboot.mode: never`.
    reboot_never: bool,
}

#[derive(Clone, Debug)]
struct NodeCase {
    /// Indices into the pools (several different: ambiguous; none: uncovered; the same twice:
    /// one pool listed twice).
    pools: Vec<usize>,
    ready: bool,
    unschedulable: bool,
    cordoned_by_rota: bool,
    control_plane: bool,
    /// A control-plane node's etcd member: `Some(ready)`.
    etcd: Option<bool>,
    /// A control-plane node's other static pods are Ready.
    static_pods_ready: bool,
    kubelet_minor: Option<u32>,
    blocking: bool,
    /// Per pod: indices of covering PDBs (`PDBS` = a PDB missing from the snapshot).
    pods: Vec<Vec<usize>>,
    slot: Option<SlotPhase>,
}

#[derive(Clone, Debug)]
struct RequestCase {
    /// Index into the nodes; one past the end names a node that does not exist.
    node: usize,
    manual: bool,
    minute: i64,
    upgrade_minor: Option<u32>,
    /// A package upgrade (when not a Kubernetes upgrade).
    package: bool,
    backoff: Option<i64>,
}

#[derive(Clone, Debug)]
struct Case {
    pools: Vec<PoolCase>,
    nodes: Vec<NodeCase>,
    pdb_allowed: Vec<i32>,
    queue: Vec<RequestCase>,
    api_server_minor: Option<u32>,
}

impl NodeCase {
    /// The static control-plane pods of node `i`.
    fn static_pods(&self, i: usize) -> Vec<ControlPlanePod> {
        if !self.control_plane {
            return Vec::new();
        }
        let pod = |component: &str, ready: bool| ControlPlanePod {
            pod: NamespacedName::new("kube-system", format!("{component}-{}", node_name(i))),
            component: component.to_owned(),
            ready,
            version: None,
        };
        let mut pods = vec![pod("kube-apiserver", self.static_pods_ready)];
        pods.extend(self.etcd.map(|ready| pod("etcd", ready)));
        pods
    }

    /// A control-plane node that is not Ready or whose static pods are not.
    fn unhealthy(&self) -> bool {
        self.control_plane && (!self.ready || !self.static_pods_ready || self.etcd == Some(false))
    }

    fn distinct_pools(&self) -> Vec<usize> {
        let mut pools = self.pools.clone();
        pools.sort_unstable();
        pools.dedup();
        pools
    }
}

fn pool_case() -> impl Strategy<Value = PoolCase> {
    (
        prop_oneof![
            (1u32..=3).prop_map(Max::Count),
            (10u32..=60).prop_map(Max::Percent)
        ],
        0u8..10,
        prop_oneof![
            6 => Just(WindowMode::AlwaysOpen),
            2 => Just(WindowMode::Closed),
            1 => Just(WindowMode::Blackout)
        ],
        0u32..=2,
        0u32..=2,
        0u8..10,
        0u8..10,
        (
            prop_oneof![4 => Just(1u32), 1 => 2u32..=3],
            0u8..3,
            0u8..10,
            0u8..10,
        ),
    )
        .prop_map(
            |(max, paused, window, max_failures, failures, alert, unknown, control_plane)| {
                let (control_plane_max, allow, upgrade_none, reboot_never) = control_plane;
                PoolCase {
                    max,
                    paused: paused == 0,
                    window,
                    max_failures,
                    failures,
                    alert: alert == 0,
                    alerts_unknown: unknown == 0,
                    control_plane_max,
                    allow_quorum_loss: allow == 0,
                    upgrade_none: upgrade_none == 0,
                    reboot_never: reboot_never == 0,
                }
            },
        )
}

fn node_case(pools: usize) -> impl Strategy<Value = NodeCase> {
    let pod = prop_oneof![
        3 => Just(Vec::new()),
        8 => (0..PDBS).prop_map(|p| vec![p]),
        1 => (0..PDBS, 0..PDBS).prop_map(|(a, b)| vec![a, (a + 1 + b % (PDBS - 1)) % PDBS]),
        1 => Just(vec![PDBS]),
    ];
    let membership = prop_oneof![
        1 => Just(Vec::new()),
        12 => (0..pools).prop_map(|p| vec![p]),
        1 => (0..pools, 0..pools).prop_map(|(a, b)| vec![a, b]),
    ];
    (
        membership,
        (0u8..10, 0u8..10, any::<bool>(), 0u8..4),
        (
            prop_oneof![1 => Just(None), 4 => Just(Some(true)), 1 => Just(Some(false))],
            0u8..8,
        ),
        prop_oneof![4 => (32u32..=34).prop_map(Some), 1 => Just(None)],
        0u8..10,
        prop::collection::vec(pod, 0..4),
        prop_oneof![
            6 => Just(None),
            1 => Just(Some(SlotPhase::Draining)),
            1 => Just(Some(SlotPhase::Granted)),
            1 => Just(Some(SlotPhase::Failed)),
        ],
    )
        .prop_map(
            |(
                pools,
                (ready, unsched, by_rota, cp),
                (etcd, statics),
                kubelet_minor,
                blocking,
                pods,
                slot,
            )| {
                let control_plane = cp == 0;
                NodeCase {
                    pools,
                    ready: ready != 0,
                    unschedulable: unsched == 0,
                    cordoned_by_rota: by_rota,
                    control_plane,
                    etcd: etcd.filter(|_| control_plane),
                    static_pods_ready: statics != 0,
                    kubelet_minor,
                    blocking: blocking == 0,
                    pods,
                    slot,
                }
            },
        )
}

fn request_case(nodes: usize) -> impl Strategy<Value = RequestCase> {
    (
        0..=nodes,
        0u8..5,
        0i64..6,
        prop_oneof![4 => Just(None), 1 => (32u32..=35).prop_map(Some)],
        prop_oneof![4 => Just(None), 1 => (-10i64..10).prop_map(Some)],
        0u8..4,
    )
        .prop_map(
            |(node, manual, minute, upgrade_minor, backoff, package)| RequestCase {
                node,
                manual: manual == 0,
                minute,
                upgrade_minor,
                package: package == 0,
                backoff,
            },
        )
}

fn case() -> impl Strategy<Value = Case> {
    (1usize..=3, 1usize..=14).prop_flat_map(|(pools, nodes)| {
        (
            prop::collection::vec(pool_case(), pools),
            prop::collection::vec(node_case(pools), nodes),
            prop::collection::vec(0i32..=3, PDBS),
            prop::collection::vec(request_case(nodes), 0..=18),
            prop_oneof![4 => Just(Some(33u32)), 1 => Just(None)],
        )
            .prop_map(
                |(pools, nodes, pdb_allowed, queue, api_server_minor)| Case {
                    pools,
                    nodes,
                    pdb_allowed,
                    queue,
                    api_server_minor,
                },
            )
    })
}

fn pool_name(i: usize) -> String {
    format!("pool-{i}")
}

fn node_name(i: usize) -> String {
    format!("node-{i:02}")
}

fn pdb_key(i: usize) -> NamespacedName {
    NamespacedName::new("apps", format!("pdb-{i}"))
}

impl Case {
    fn snapshot(&self) -> Snapshot {
        let pools = self
            .pools
            .iter()
            .enumerate()
            .map(|(i, p)| {
                let max = match p.max {
                    Max::Count(n) => json!(n),
                    Max::Percent(n) => json!(format!("{n}%")),
                };
                let mut spec = json!({
                    "maxUnavailable": max,
                    "paused": p.paused,
                    "maxFailures": p.max_failures,
                    "blockers": {"prometheus": {"url": "http://prometheus:9090"}},
                    "controlPlane": {
                        "maxUnavailable": p.control_plane_max,
                        "allowEtcdQuorumLoss": p.allow_quorum_loss,
                    },
                    "upgrade": {"mode": if p.upgrade_none { "none" } else { "all" }},
                    "reboot": {"mode": if p.reboot_never { "never" } else { "whenRequired" }},
                });
                match p.window {
                    WindowMode::AlwaysOpen => {}
                    WindowMode::Closed => {
                        spec["windows"] = json!([{"start": "00:00", "end": "01:00"}]);
                    }
                    WindowMode::Blackout => {
                        spec["blackouts"] = json!([{
                            "start": "2025-06-04T00:00:00Z", "end": "2025-06-05T00:00:00Z"
                        }]);
                    }
                }
                let spec: MaintenancePolicySpec = serde_json::from_value(spec).unwrap();
                Pool {
                    name: pool_name(i),
                    policy: Arc::new(validate(&spec).unwrap()),
                    failures: p.failures,
                    firing_alerts: if p.alert {
                        vec!["NodeDown".into()]
                    } else {
                        Vec::new()
                    },
                    alerts_unknown: p.alerts_unknown.then(|| "connection refused".to_owned()),
                    rollout_held: None,
                }
            })
            .collect();
        let nodes = self
            .nodes
            .iter()
            .enumerate()
            .map(|(i, n)| NodeState {
                name: node_name(i),
                pools: n.pools.iter().map(|&p| pool_name(p)).collect(),
                ready: n.ready,
                unschedulable: n.unschedulable,
                cordoned_by_rota: n.unschedulable && n.cordoned_by_rota,
                control_plane: n.control_plane,
                control_plane_pods: n.static_pods(i),
                kubelet_version: n.kubelet_minor.map(|m| KubeVersion::new(1, m, 0)),
                zone: None,
                evictable_pods: n
                    .pods
                    .iter()
                    .enumerate()
                    .map(|(j, pdbs)| EvictablePod {
                        pod: NamespacedName::new("apps", format!("{}-pod-{j}", node_name(i))),
                        pdbs: pdbs.iter().map(|&p| pdb_key(p)).collect(),
                    })
                    .collect(),
                blocking_pods: if n.blocking {
                    vec![NamespacedName::new(
                        "db",
                        format!("{}-primary", node_name(i)),
                    )]
                } else {
                    Vec::new()
                },
                etcd: Default::default(),
            })
            .collect();
        let slots = self
            .nodes
            .iter()
            .enumerate()
            .filter_map(|(i, n)| {
                n.slot.map(|phase| Slot {
                    node: node_name(i),
                    operation: Operation::Reboot,
                    origin: Origin::Agent,
                    token: FencingToken(i as u64 + 1),
                    phase,
                    admitted_at: now(),
                    phase_since: now(),
                    granted_at: None,
                    lease_expires_at: now(),
                    boot_id_before: None,
                    cordoned_by_rota: true,
                })
            })
            .collect();
        let queue = self
            .queue
            .iter()
            .map(|r| SlotRequest {
                node: node_name(r.node),
                operation: match r.upgrade_minor {
                    Some(minor) => Operation::KubernetesUpgrade {
                        version: format!("1.{minor}.0"),
                        kubeadm: rota_core::model::KubeadmStep::Node,
                    },
                    None if r.package => Operation::PackageUpgrade {
                        security_only: false,
                        reboot: UpgradeReboot::IfRequired,
                        packages: Vec::new(),
                    },
                    None => Operation::Reboot,
                },
                origin: if r.manual {
                    Origin::Manual
                } else {
                    Origin::Agent
                },
                requested_at: now() - SignedDuration::from_mins(10 - r.minute),
                not_before: r.backoff.map(|m| now() + SignedDuration::from_mins(m)),
            })
            .collect();
        Snapshot {
            pools,
            nodes,
            api_server_version: self.api_server_minor.map(|m| KubeVersion::new(1, m, 0)),
            slots,
            queue,
            pdbs: self
                .pdb_allowed
                .iter()
                .enumerate()
                .map(|(i, &allowed)| PdbState {
                    key: pdb_key(i),
                    disruptions_allowed: allowed,
                })
                .collect(),
        }
    }

    fn node_index(&self, name: &str) -> Option<usize> {
        (0..self.nodes.len()).find(|&i| node_name(i) == name)
    }

    fn max_unavailable(&self, pool: usize) -> usize {
        let size = self
            .nodes
            .iter()
            .filter(|n| n.pools.contains(&pool))
            .count();
        match self.pools[pool].max {
            Max::Count(n) => n as usize,
            Max::Percent(p) => (size * p as usize / 100).max(1),
        }
    }

    /// Unavailable nodes of `pool` once `admitted` are admitted.
    fn unavailable_after(&self, pool: usize, admitted: &BTreeSet<usize>) -> BTreeSet<usize> {
        (0..self.nodes.len())
            .filter(|&i| {
                let n = &self.nodes[i];
                n.pools.contains(&pool)
                    && (n.slot.is_some() || !n.ready || n.unschedulable || admitted.contains(&i))
            })
            .collect()
    }

    /// Control-plane nodes unavailable in the whole cluster once `admitted` are admitted.
    fn control_plane_unavailable_after(&self, admitted: &BTreeSet<usize>) -> BTreeSet<usize> {
        (0..self.nodes.len())
            .filter(|&i| {
                let n = &self.nodes[i];
                n.control_plane
                    && (n.slot.is_some() || !n.ready || n.unschedulable || admitted.contains(&i))
            })
            .collect()
    }

    /// The pools selecting a control-plane node (each once).
    fn control_plane_pools(&self) -> BTreeSet<usize> {
        self.nodes
            .iter()
            .filter(|n| n.control_plane)
            .flat_map(|n| n.distinct_pools())
            .collect()
    }

    /// The cluster's control-plane limit: the smallest of those pools' (default 1).
    fn control_plane_max(&self) -> usize {
        self.control_plane_pools()
            .into_iter()
            .map(|p| self.pools[p].control_plane_max as usize)
            .min()
            .unwrap_or(1)
    }

    /// Etcd members.
    fn etcd_members(&self) -> usize {
        self.nodes.iter().filter(|n| n.etcd.is_some()).count()
    }

    /// Most etcd members down at once: ⌊(m−1)/2⌋, or one for an etcd of one or two members
    /// when every pool selecting control-plane nodes allows losing quorum.
    fn etcd_max_down(&self) -> usize {
        let spare = self.etcd_members().saturating_sub(1) / 2;
        let pools = self.control_plane_pools();
        let allow = !pools.is_empty() && pools.iter().all(|&p| self.pools[p].allow_quorum_loss);
        if spare == 0 && allow { 1 } else { spare }
    }

    /// Etcd members down once `admitted` are admitted: holding a slot, NotReady, etcd pod not
    /// Ready, or admitted.
    fn etcd_down_after(&self, admitted: &BTreeSet<usize>) -> BTreeSet<usize> {
        (0..self.nodes.len())
            .filter(|&i| {
                let n = &self.nodes[i];
                n.etcd.is_some()
                    && (n.slot.is_some()
                        || !n.ready
                        || n.etcd == Some(false)
                        || admitted.contains(&i))
            })
            .collect()
    }

    /// Whether the control-plane guard holds node `i` back with `admitted` admitted.
    fn control_plane_blocks(&self, i: usize, admitted: &BTreeSet<usize>) -> bool {
        let n = &self.nodes[i];
        if !n.control_plane {
            return false;
        }
        let mut with_it = admitted.clone();
        with_it.insert(i);
        let others_unhealthy = (0..self.nodes.len()).any(|j| j != i && self.nodes[j].unhealthy());
        let etcd_over =
            n.etcd.is_some() && self.etcd_down_after(&with_it).len() > self.etcd_max_down();
        let over = self.control_plane_unavailable_after(&with_it).len() > self.control_plane_max();
        others_unhealthy || etcd_over || over
    }

    /// Pods per PDB still to be evicted from slot holders, plus those of `admitted` nodes.
    fn pdb_usage(&self, admitted: &BTreeSet<usize>) -> HashMap<usize, i64> {
        let mut usage = HashMap::new();
        for (i, n) in self.nodes.iter().enumerate() {
            if n.slot.is_some() {
                for pdb in n.pods.iter().flatten() {
                    *usage.entry(*pdb).or_default() += 1;
                }
            } else if admitted.contains(&i) {
                for pod in &n.pods {
                    if let [pdb] = pod.as_slice() {
                        *usage.entry(*pdb).or_default() += 1;
                    }
                }
            }
        }
        usage
    }

    /// Nodes that use `pdb`: slot holders with pods it covers (their evictions are still to
    /// come), and `admitted` nodes with pods it alone covers.
    fn pdb_users(&self, pdb: usize, admitted: &BTreeSet<usize>) -> BTreeSet<usize> {
        (0..self.nodes.len())
            .filter(|&i| {
                let n = &self.nodes[i];
                if n.slot.is_some() {
                    n.pods.iter().flatten().any(|p| *p == pdb)
                } else {
                    admitted.contains(&i) && n.pods.iter().any(|p| p.as_slice() == [pdb])
                }
            })
            .collect()
    }

    /// Pods of `pdb` (alone covering them) on node `i`.
    fn pods_of(&self, i: usize, pdb: usize) -> u32 {
        self.nodes[i]
            .pods
            .iter()
            .filter(|p| p.as_slice() == [pdb])
            .count() as u32
    }

    /// Whether `pdb`'s budget is broken with `admitted` admitted: its users together need more
    /// than it allows, unless a single admitted node has a budget that allows a disruption to
    /// itself (a sequential drain).
    fn over_budget(&self, pdb: usize, admitted: &BTreeSet<usize>) -> bool {
        let allowed = i64::from(self.pdb_allowed[pdb]);
        if self.pdb_usage(admitted)[&pdb] <= allowed {
            return false;
        }
        let users = self.pdb_users(pdb, admitted);
        let alone = users.len() == 1 && users.iter().all(|i| admitted.contains(i));
        !(alone && allowed >= 1)
    }

    /// Whether something other than capacity or a PDB budget holds `request` back.
    fn gated(&self, request: &RequestCase) -> bool {
        let Some(n) = self.nodes.get(request.node) else {
            return true;
        };
        let [pool] = n.distinct_pools()[..] else {
            return true;
        };
        let p = &self.pools[pool];
        let forbidden = match (request.upgrade_minor, request.package) {
            (Some(_), _) => false,
            (None, true) => p.upgrade_none,
            (None, false) => p.reboot_never,
        };
        n.slot.is_some()
            || forbidden
            || p.paused
            || (p.max_failures > 0 && p.failures >= p.max_failures)
            || p.alert
            || p.alerts_unknown
            || p.window == WindowMode::Blackout
            || (p.window == WindowMode::Closed && !request.manual)
            || request.backoff.is_some_and(|m| m > 0)
            || n.blocking
            || request.upgrade_minor.is_some()
            || n.pods
                .iter()
                .any(|pdbs| pdbs.len() > 1 || pdbs.contains(&PDBS))
    }
}

fn admitted_indices(case: &Case, plan: &Plan) -> BTreeSet<usize> {
    plan.admit
        .iter()
        .map(|a| case.node_index(&a.node).expect("admitted node exists"))
        .collect()
}

fn reordered(snapshot: &Snapshot, rotate: usize) -> Snapshot {
    fn shuffle<T: Clone>(items: &[T], rotate: usize) -> Vec<T> {
        let mut items = items.to_vec();
        items.reverse();
        if !items.is_empty() {
            let k = rotate % items.len();
            items.rotate_left(k);
        }
        items
    }
    Snapshot {
        pools: shuffle(&snapshot.pools, rotate),
        nodes: shuffle(&snapshot.nodes, rotate),
        api_server_version: snapshot.api_server_version,
        slots: shuffle(&snapshot.slots, rotate),
        queue: shuffle(&snapshot.queue, rotate),
        pdbs: shuffle(&snapshot.pdbs, rotate),
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn plans_keep_the_invariants(case in case(), rotate in 0usize..20) {
        let snapshot = case.snapshot();
        let plan = schedule(&snapshot, now());
        let admitted = admitted_indices(&case, &plan);

        // Each node at most once, only existing nodes without a slot, in exactly one pool.
        prop_assert_eq!(admitted.len(), plan.admit.len(), "a node admitted twice");
        for &i in &admitted {
            let n = &case.nodes[i];
            prop_assert!(n.slot.is_none(), "{} holds a slot", node_name(i));
            prop_assert_eq!(n.distinct_pools().len(), 1);
            prop_assert!(!plan.waiting.contains_key(&node_name(i)));
        }
        for a in &plan.admit {
            let request = case
                .queue
                .iter()
                .find(|r| node_name(r.node) == a.node && !case.gated(r))
                .or_else(|| case.queue.iter().find(|r| node_name(r.node) == a.node));
            let request = request.expect("admitted nodes were queued");
            let n = &case.nodes[request.node];
            let p = &case.pools[n.distinct_pools()[0]];
            prop_assert!(!p.paused && !p.alert && !p.alerts_unknown);
            prop_assert!(p.window != WindowMode::Blackout);
            prop_assert!(p.max_failures == 0 || p.failures < p.max_failures);
            prop_assert!(!n.blocking);
            prop_assert!(a.request.not_before.is_none_or(|t| t <= now()));
            prop_assert!(p.window != WindowMode::Closed || a.request.origin == Origin::Manual);
        }

        // Capacity in every pool that got an admission.
        for pool in 0..case.pools.len() {
            let admitted_here = admitted.iter().any(|&i| case.nodes[i].distinct_pools() == [pool]);
            if admitted_here {
                let unavailable = case.unavailable_after(pool, &admitted);
                prop_assert!(
                    unavailable.len() <= case.max_unavailable(pool),
                    "pool {} has {} unavailable > max {}", pool, unavailable.len(),
                    case.max_unavailable(pool)
                );
            }
        }

        // The control-plane guard, across pools: an admitted control-plane node leaves at most
        // the cluster's limit of control-plane nodes unavailable, and was admitted only while
        // every other control-plane node was healthy.
        let control_plane_admitted: Vec<usize> =
            admitted.iter().copied().filter(|&i| case.nodes[i].control_plane).collect();
        if !control_plane_admitted.is_empty() {
            let unavailable = case.control_plane_unavailable_after(&admitted);
            prop_assert!(
                unavailable.len() <= case.control_plane_max(),
                "control-plane nodes {:?} unavailable at once (limit {})",
                unavailable, case.control_plane_max()
            );
            if case.pools.iter().all(|p| p.control_plane_max == 1) {
                prop_assert!(unavailable.len() <= 1);
            }
            for &i in &control_plane_admitted {
                let unhealthy: Vec<usize> = (0..case.nodes.len())
                    .filter(|&j| j != i && case.nodes[j].unhealthy())
                    .collect();
                prop_assert!(
                    unhealthy.is_empty(),
                    "{} admitted while {:?} are unhealthy", node_name(i), unhealthy
                );
            }
        }
        // Etcd quorum: an admitted member never leaves fewer than a quorum of members up.
        if admitted.iter().any(|&i| case.nodes[i].etcd.is_some()) {
            let members = case.etcd_members();
            let down = case.etcd_down_after(&admitted);
            prop_assert!(
                down.len() <= case.etcd_max_down(),
                "etcd members {:?} of {} down at once", down, members
            );
            let allowed_loss = members < 3 && case.etcd_max_down() == 1;
            if !allowed_loss {
                prop_assert!(
                    members - down.len() > members / 2,
                    "etcd below quorum: {:?} of {} down", down, members
                );
            }
        }

        // PDBs touched by an admission stay within budget, or one admitted node has the budget
        // to itself (and the plan says so); no admitted node has a pod the eviction API would
        // refuse.
        let usage = case.pdb_usage(&admitted);
        for a in &plan.admit {
            let i = case.node_index(&a.node).expect("admitted node exists");
            for pod in &case.nodes[i].pods {
                prop_assert!(pod.len() <= 1 && !pod.contains(&PDBS));
                if let [pdb] = pod.as_slice() {
                    let allowed = i64::from(case.pdb_allowed[*pdb]);
                    prop_assert!(
                        !case.over_budget(*pdb, &admitted),
                        "PDB {} used {} > allowed {} by {:?}",
                        pdb, usage[pdb], allowed, case.pdb_users(*pdb, &admitted)
                    );
                }
            }
            // Sequential: exactly the budgets its own pods outnumber.
            let mut expected: Vec<(NamespacedName, u32, u32)> = (0..PDBS)
                .filter(|&p| i64::from(case.pods_of(i, p)) > i64::from(case.pdb_allowed[p]))
                .map(|p| (pdb_key(p), case.pdb_allowed[p] as u32, case.pods_of(i, p)))
                .collect();
            expected.sort();
            let mut sequential: Vec<(NamespacedName, u32, u32)> = a
                .sequential
                .iter()
                .map(|s| (s.pdb.clone(), s.allowed, s.pods))
                .collect();
            sequential.sort();
            prop_assert_eq!(sequential, expected, "{}", a.node);
        }

        // Every distinct queued node is either admitted or waiting with a reason.
        let queued: BTreeSet<String> = case.queue.iter().map(|r| node_name(r.node)).collect();
        let decided: BTreeSet<String> = plan
            .admit
            .iter()
            .map(|a| a.node.clone())
            .chain(plan.waiting.keys().cloned())
            .collect();
        prop_assert_eq!(&queued, &decided);
        prop_assert!(plan.waiting.values().all(|w| !w.reasons.is_empty()));
        let mut positions: BTreeMap<Option<String>, Vec<u32>> = BTreeMap::new();
        for w in plan.waiting.values() {
            positions.entry(w.pool.clone()).or_default().push(w.position);
        }
        for mut p in positions.into_values() {
            p.sort_unstable();
            prop_assert_eq!(p.clone(), (1..=p.len() as u32).collect::<Vec<_>>());
        }

        // No starvation: an ungated node queued once waits only if admitting it now would break
        // capacity or a budget.
        for (node, waiting) in &plan.waiting {
            let requests: Vec<&RequestCase> =
                case.queue.iter().filter(|r| &node_name(r.node) == node).collect();
            let [request] = requests.as_slice() else { continue };
            if case.gated(request) {
                continue;
            }
            let i = request.node;
            let pool = case.nodes[i].distinct_pools()[0];
            let mut with_it = admitted.clone();
            with_it.insert(i);
            let over_capacity = case.unavailable_after(pool, &with_it).len() > case.max_unavailable(pool);
            let over_budget = case.nodes[i].pods.iter().any(|pod| match pod.as_slice() {
                [pdb] => case.over_budget(*pdb, &with_it),
                _ => false,
            });
            let over_control_plane = case.control_plane_blocks(i, &admitted);
            prop_assert!(
                over_capacity || over_budget || over_control_plane,
                "{} starves: {:?}", node, waiting.reasons
            );
        }

        // Deterministic, whatever the order of the snapshot's lists.
        prop_assert_eq!(&schedule(&snapshot, now()), &plan);
        prop_assert_eq!(&schedule(&reordered(&snapshot, rotate), now()), &plan);
    }
}
