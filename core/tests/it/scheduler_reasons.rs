//! Table tests of the scheduler: every wait reason (and its text), ordering, packing, PDB
//! look-ahead, windows and version skew.

// Test helpers panic on bad fixtures, like the tests that call them.
#![allow(clippy::expect_used, clippy::unwrap_used)]

use std::sync::Arc;

use jiff::{SignedDuration, Timestamp};
use k8s_openapi::api::policy::v1::{PodDisruptionBudget, PodDisruptionBudgetSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use rota_core::drain::PdbRef;
use rota_core::drain::pdb::PdbIndex;
use rota_core::model::{
    FencingToken, Operation, Origin, Slot, SlotPhase, SlotRequest, UpgradeReboot,
};
use rota_core::policy::{
    KubeVersion, MaintenancePolicySpec, NamespacedName, ValidatedPolicy, validate,
};
use rota_core::scheduler::{
    ControlPlanePod, EvictablePod, NodeState, PdbState, Plan, Pool, SequentialPdb, Snapshot,
    WaitReason, schedule,
};
use serde_json::json;

/// Wednesday 2025-06-04 12:00 UTC.
fn now() -> Timestamp {
    "2025-06-04T12:00:00Z".parse().unwrap()
}

fn policy(spec: serde_json::Value) -> Arc<ValidatedPolicy> {
    let spec: MaintenancePolicySpec = serde_json::from_value(spec).unwrap();
    Arc::new(validate(&spec).unwrap())
}

fn pool(name: &str, spec: serde_json::Value) -> Pool {
    Pool {
        name: name.into(),
        policy: policy(spec),
        failures: 0,
        firing_alerts: Vec::new(),
        alerts_unknown: None,
        rollout_held: None,
    }
}

fn node(name: &str, pool: &str) -> NodeState {
    NodeState {
        name: name.into(),
        pools: vec![pool.into()],
        ready: true,
        kubelet_version: Some(KubeVersion::new(1, 33, 1)),
        ..NodeState::default()
    }
}

fn request(node: &str, minute: i64) -> SlotRequest {
    SlotRequest {
        node: node.into(),
        operation: Operation::Reboot,
        origin: Origin::Agent,
        requested_at: now() - SignedDuration::from_mins(60 - minute),
        not_before: None,
    }
}

fn manual(node: &str, minute: i64) -> SlotRequest {
    SlotRequest {
        origin: Origin::Manual,
        ..request(node, minute)
    }
}

fn upgrade(node: &str, minute: i64, version: &str) -> SlotRequest {
    SlotRequest {
        operation: Operation::KubernetesUpgrade {
            version: version.into(),
            kubeadm: rota_core::model::KubeadmStep::Node,
        },
        ..request(node, minute)
    }
}

fn apply(node: &str, minute: i64, version: &str) -> SlotRequest {
    SlotRequest {
        operation: Operation::KubernetesUpgrade {
            version: version.into(),
            kubeadm: rota_core::model::KubeadmStep::Apply,
        },
        ..request(node, minute)
    }
}

fn slot(node: &str, phase: SlotPhase) -> Slot {
    Slot {
        node: node.into(),
        operation: Operation::Reboot,
        origin: Origin::Agent,
        token: FencingToken(7),
        phase,
        admitted_at: now(),
        phase_since: now(),
        granted_at: None,
        lease_expires_at: now(),
        boot_id_before: None,
        cordoned_by_rota: true,
    }
}

fn pdb(ns: &str, name: &str) -> NamespacedName {
    NamespacedName::new(ns, name)
}

fn pod(ns: &str, name: &str, pdbs: &[NamespacedName]) -> EvictablePod {
    EvictablePod {
        pod: NamespacedName::new(ns, name),
        pdbs: pdbs.to_vec(),
    }
}

fn admitted(plan: &Plan) -> Vec<&str> {
    plan.admit.iter().map(|a| a.node.as_str()).collect()
}

fn reasons(plan: &Plan, node: &str) -> Vec<String> {
    plan.waiting[node]
        .reasons
        .iter()
        .map(ToString::to_string)
        .collect()
}

fn snapshot(pools: Vec<Pool>, nodes: Vec<NodeState>, queue: Vec<SlotRequest>) -> Snapshot {
    Snapshot {
        pools,
        nodes,
        api_server_version: Some(KubeVersion::new(1, 33, 1)),
        queue,
        ..Snapshot::default()
    }
}

#[test]
fn packs_past_a_blocked_head_up_to_max_unavailable() {
    let mut nodes: Vec<NodeState> = ["a", "b", "c", "d"].iter().map(|n| node(n, "w")).collect();
    nodes[0].blocking_pods = vec![NamespacedName::new("db", "primary-0")];
    let snap = snapshot(
        vec![pool("w", json!({"maxUnavailable": 2}))],
        nodes,
        vec![
            request("a", 0),
            request("b", 1),
            request("c", 2),
            request("d", 3),
        ],
    );
    let plan = schedule(&snap, now());
    assert_eq!(admitted(&plan), ["b", "c"]);
    assert_eq!(reasons(&plan, "a"), ["blocking pod db/primary-0"]);
    assert_eq!(
        reasons(&plan, "d"),
        ["maxUnavailable 2/2 reached (unavailable: b (admitted now), c (admitted now))"]
    );
    assert_eq!(plan.waiting["a"].position, 1);
    assert_eq!(plan.waiting["d"].position, 2);
}

#[test]
fn unavailable_counts_slots_not_ready_and_cordons_by_anyone() {
    let mut nodes: Vec<NodeState> = ["a", "b", "c", "d", "e"]
        .iter()
        .map(|n| node(n, "w"))
        .collect();
    nodes[1].ready = false;
    nodes[2].unschedulable = true;
    nodes[3].unschedulable = true;
    nodes[3].cordoned_by_rota = true;
    let mut snap = snapshot(
        vec![pool("w", json!({"maxUnavailable": 4}))],
        nodes,
        vec![request("e", 0), request("c", 1)],
    );
    snap.slots = vec![slot("a", SlotPhase::Granted)];
    let plan = schedule(&snap, now());
    // e would make five unavailable; c is already unavailable (cordoned), so it adds nothing.
    assert_eq!(admitted(&plan), ["c"]);
    assert_eq!(
        reasons(&plan, "e"),
        [
            "maxUnavailable 4/4 reached (unavailable: a (holds a slot), b (NotReady), c (cordoned), \
             d (cordoned by rota))"
        ]
    );
}

#[test]
fn percent_max_unavailable_lists_five_and_counts_the_rest() {
    let nodes: Vec<NodeState> = (0..20).map(|i| node(&format!("n{i:02}"), "w")).collect();
    let mut snap = snapshot(
        vec![pool("w", json!({"maxUnavailable": "35%"}))],
        nodes,
        vec![request("n19", 0)],
    );
    snap.slots = (0..7)
        .map(|i| slot(&format!("n{i:02}"), SlotPhase::Draining))
        .collect();
    let plan = schedule(&snap, now());
    assert_eq!(
        reasons(&plan, "n19"),
        [
            "maxUnavailable 7/7 reached (unavailable: n00 (holds a slot), n01 (holds a slot), n02 \
             (holds a slot), n03 (holds a slot), n04 (holds a slot) and 2 more)"
        ]
    );
}

#[test]
fn order_is_manual_then_control_plane_then_fifo_then_name() {
    let mut nodes: Vec<NodeState> = ["w1", "w2", "w3", "cp1", "w0"]
        .iter()
        .map(|n| node(n, "all"))
        .collect();
    nodes[3].control_plane = true;
    let snap = snapshot(
        vec![pool("all", json!({"maxUnavailable": 1}))],
        nodes,
        vec![
            request("w1", 0),
            request("cp1", 5),
            manual("w2", 9),
            request("w3", 0),
            request("w0", 3),
        ],
    );
    let plan = schedule(&snap, now());
    assert_eq!(admitted(&plan), ["w2"]);
    let order: Vec<(&str, u32)> = ["cp1", "w1", "w3", "w0"]
        .iter()
        .map(|n| (*n, plan.waiting[*n].position))
        .collect();
    assert_eq!(order, [("cp1", 1), ("w1", 2), ("w3", 3), ("w0", 4)]);
}

#[test]
fn pdb_look_ahead_counts_in_flight_and_admitted_evictions() {
    let web = pdb("shop", "web");
    let db = pdb("shop", "db");
    let mut nodes: Vec<NodeState> = ["draining", "a", "b", "c"]
        .iter()
        .map(|n| node(n, "w"))
        .collect();
    nodes[0].evictable_pods = vec![pod("shop", "web-0", std::slice::from_ref(&web))];
    nodes[1].evictable_pods = vec![
        pod("shop", "web-1", std::slice::from_ref(&web)),
        pod("kube-system", "coredns-x", &[]),
    ];
    nodes[2].evictable_pods = vec![pod("shop", "web-2", std::slice::from_ref(&web))];
    nodes[3].evictable_pods = vec![
        pod("shop", "db-0", std::slice::from_ref(&db)),
        pod("shop", "db-1", std::slice::from_ref(&db)),
    ];
    let mut snap = snapshot(
        vec![pool("w", json!({"maxUnavailable": 10}))],
        nodes,
        vec![request("a", 0), request("b", 1), request("c", 2)],
    );
    snap.slots = vec![slot("draining", SlotPhase::Draining)];
    snap.pdbs = vec![
        PdbState {
            key: web.clone(),
            disruptions_allowed: 2,
        },
        PdbState {
            key: db.clone(),
            disruptions_allowed: 1,
        },
    ];
    let plan = schedule(&snap, now());
    // c's two db pods outnumber the budget, but nobody else uses it: c drains them in turn.
    assert_eq!(admitted(&plan), ["a", "c"]);
    assert!(plan.admit[0].sequential.is_empty());
    assert_eq!(
        plan.admit[1].sequential,
        [SequentialPdb {
            pdb: db.clone(),
            allowed: 1,
            pods: 2
        }]
    );
    assert_eq!(
        reasons(&plan, "b"),
        [
            "PDB shop/web allows 0 of 1 needed (disruptionsAllowed 2; 1 still being evicted from \
             draining nodes, 1 taken by nodes admitted now)"
        ]
    );
}

/// A PDB a drain has to itself, as `(name, allowed, pods)`.
type Sequential = (&'static str, u32, u32);
/// An admitted node with its sequential PDBs, as compared.
type AdmittedRow = (String, Vec<(String, u32, u32)>);

/// One row: PDB `shop/p` allows `allowed`; `holders` hold slots with that many of its pods
/// still to evict; `queue` lists queued nodes in order with their pods of `shop/p` and of
/// `shop/q` (which allows 5 unless `q_allowed` says otherwise).
struct SequentialCase {
    name: &'static str,
    allowed: i32,
    q_allowed: i32,
    holders: &'static [(&'static str, usize)],
    queue: &'static [(&'static str, usize, usize)],
    /// Admitted nodes with their sequential PDBs as `(name, allowed, pods)`.
    admitted: &'static [(&'static str, &'static [Sequential])],
    /// Waiting nodes with their reasons.
    waiting: &'static [(&'static str, &'static [&'static str])],
}

#[test]
fn a_pdb_outnumbered_on_one_node_drains_sequentially_when_the_node_has_it_to_itself() {
    let cases = [
        SequentialCase {
            name: "two replicas of a maxUnavailable 1 app on one node",
            allowed: 1,
            q_allowed: 5,
            holders: &[],
            queue: &[("x", 2, 0)],
            admitted: &[("x", &[("p", 1, 2)])],
            waiting: &[],
        },
        SequentialCase {
            name: "a budget that allows nothing is never taken",
            allowed: 0,
            q_allowed: 5,
            holders: &[],
            queue: &[("x", 2, 0)],
            admitted: &[],
            waiting: &[("x", &["PDB shop/p allows 0 of 2 needed"])],
        },
        SequentialCase {
            name: "a draining node still evicting from the budget keeps it",
            allowed: 1,
            q_allowed: 5,
            holders: &[("y", 1)],
            queue: &[("x", 2, 0)],
            admitted: &[],
            waiting: &[(
                "x",
                &[
                    "PDB shop/p allows 0 of 2 needed (disruptionsAllowed 1; 1 still being evicted \
                   from draining nodes)",
                ],
            )],
        },
        SequentialCase {
            name: "a draining node that already evicted its pods of the budget does not keep it",
            allowed: 1,
            q_allowed: 5,
            holders: &[("y", 0)],
            queue: &[("x", 2, 0)],
            admitted: &[("x", &[("p", 1, 2)])],
            waiting: &[],
        },
        SequentialCase {
            name: "an earlier admission that fits takes the budget first",
            allowed: 2,
            q_allowed: 5,
            holders: &[],
            queue: &[("z", 1, 0), ("x", 3, 0)],
            admitted: &[("z", &[])],
            waiting: &[(
                "x",
                &[
                    "PDB shop/p allows 1 of 3 needed (disruptionsAllowed 2; 1 taken by nodes \
                   admitted now)",
                ],
            )],
        },
        SequentialCase {
            name: "a sequential drain keeps later admissions off its budget",
            allowed: 1,
            q_allowed: 5,
            holders: &[],
            queue: &[("x", 2, 0), ("z", 1, 0), ("w", 0, 1)],
            admitted: &[("x", &[("p", 1, 2)]), ("w", &[])],
            waiting: &[(
                "z",
                &[
                    "PDB shop/p allows 0 of 1 needed (disruptionsAllowed 1; 2 taken by nodes \
                   admitted now)",
                ],
            )],
        },
        SequentialCase {
            name: "other budgets of the node still have to fit",
            allowed: 1,
            q_allowed: 0,
            holders: &[],
            queue: &[("x", 2, 1)],
            admitted: &[],
            waiting: &[("x", &["PDB shop/q allows 0 of 1 needed"])],
        },
        SequentialCase {
            name: "two outnumbered budgets on one node, each to itself",
            allowed: 1,
            q_allowed: 2,
            holders: &[],
            queue: &[("x", 3, 5)],
            admitted: &[("x", &[("p", 1, 3), ("q", 2, 5)])],
            waiting: &[],
        },
    ];
    for case in &cases {
        let p = pdb("shop", "p");
        let q = pdb("shop", "q");
        let pods = |node: &str, of_p: usize, of_q: usize| {
            let mut pods: Vec<EvictablePod> = (0..of_p)
                .map(|i| pod("shop", &format!("{node}-p-{i}"), std::slice::from_ref(&p)))
                .collect();
            pods.extend(
                (0..of_q).map(|i| pod("shop", &format!("{node}-q-{i}"), std::slice::from_ref(&q))),
            );
            pods
        };
        let mut nodes = Vec::new();
        for &(name, of_p) in case.holders {
            let mut n = node(name, "w");
            n.evictable_pods = pods(name, of_p, 0);
            nodes.push(n);
        }
        for &(name, of_p, of_q) in case.queue {
            let mut n = node(name, "w");
            n.evictable_pods = pods(name, of_p, of_q);
            nodes.push(n);
        }
        let queue = case
            .queue
            .iter()
            .zip(0..)
            .map(|(&(name, _, _), minute)| request(name, minute))
            .collect();
        let mut snap = snapshot(vec![pool("w", json!({"maxUnavailable": 10}))], nodes, queue);
        snap.slots = case
            .holders
            .iter()
            .map(|&(name, _)| slot(name, SlotPhase::Draining))
            .collect();
        snap.pdbs = vec![
            PdbState {
                key: p.clone(),
                disruptions_allowed: case.allowed,
            },
            PdbState {
                key: q.clone(),
                disruptions_allowed: case.q_allowed,
            },
        ];
        let plan = schedule(&snap, now());
        let got: Vec<AdmittedRow> = plan
            .admit
            .iter()
            .map(|a| {
                let sequential = a
                    .sequential
                    .iter()
                    .map(|s| (s.pdb.name.clone(), s.allowed, s.pods))
                    .collect();
                (a.node.clone(), sequential)
            })
            .collect();
        let want: Vec<AdmittedRow> = case
            .admitted
            .iter()
            .map(|&(node, sequential)| {
                let sequential = sequential
                    .iter()
                    .map(|&(pdb, allowed, pods)| (pdb.to_owned(), allowed, pods))
                    .collect();
                (node.to_owned(), sequential)
            })
            .collect();
        assert_eq!(got, want, "{}", case.name);
        assert_eq!(plan.waiting.len(), case.waiting.len(), "{}", case.name);
        for &(node, expected) in case.waiting {
            assert_eq!(reasons(&plan, node), expected, "{}", case.name);
        }
    }
}

#[test]
fn sequential_rounds_follow_the_allowance() {
    let seq = |allowed, pods| SequentialPdb {
        pdb: pdb("shop", "p"),
        allowed,
        pods,
    };
    assert_eq!(seq(1, 2).rounds(), 2);
    assert_eq!(seq(1, 5).rounds(), 5);
    assert_eq!(seq(2, 5).rounds(), 3);
    assert_eq!(seq(3, 4).rounds(), 2);
}

#[test]
fn pods_with_several_or_unknown_pdbs_hold_the_node() {
    let mut n = node("a", "w");
    n.evictable_pods = vec![
        pod("shop", "web-0", &[pdb("shop", "b"), pdb("shop", "a")]),
        pod("shop", "cache-0", &[pdb("shop", "gone")]),
    ];
    let snap = snapshot(vec![pool("w", json!({}))], vec![n], vec![request("a", 0)]);
    let plan = schedule(&snap, now());
    assert_eq!(
        reasons(&plan, "a"),
        [
            "pod shop/web-0 is covered by several PDBs (shop/a, shop/b); the eviction API refuses it",
            "PDB shop/gone covers a pod but its budget is unknown",
        ]
    );
}

#[test]
fn node_and_pool_problems() {
    let mut ambiguous = node("both", "x");
    ambiguous.pools = vec!["y".into(), "x".into()];
    let mut orphan = node("orphan", "x");
    orphan.pools.clear();
    let mut snap = snapshot(
        vec![
            pool("x", json!({"maxUnavailable": 5})),
            pool("y", json!({})),
        ],
        vec![ambiguous, orphan, node("busy", "x"), node("ok", "x")],
        vec![
            request("ghost", 0),
            request("both", 1),
            request("orphan", 2),
            request("busy", 3),
            request("ok", 4),
            SlotRequest {
                operation: Operation::KubeletRestart,
                ..request("ok", 4)
            },
        ],
    );
    snap.slots = vec![slot("busy", SlotPhase::Verifying)];
    let plan = schedule(&snap, now());
    assert_eq!(
        admitted(&plan),
        ["ok"],
        "one admission per node, however often it is queued"
    );
    assert_eq!(reasons(&plan, "ghost"), ["node not found"]);
    assert_eq!(
        reasons(&plan, "both"),
        ["several MaintenancePolicies select this node: x, y"]
    );
    assert_eq!(
        reasons(&plan, "orphan"),
        ["no MaintenancePolicy selects this node"]
    );
    assert_eq!(reasons(&plan, "busy"), ["already holds a slot (verifying)"]);
    assert_eq!(plan.waiting["ghost"].pool, None);
    assert_eq!(plan.waiting["busy"].pool.as_deref(), Some("x"));
}

#[test]
fn pool_gates_pause_breaker_alerts_and_backoff() {
    let mut paused = pool(
        "p",
        json!({
            "paused": true,
            "maxFailures": 2,
            "blockers": {"prometheus": {"url": "http://prom:9090", "alertFilter": "^Watchdog$"}},
        }),
    );
    paused.failures = 3;
    paused.firing_alerts = vec!["Watchdog".into(), "NodeDown".into(), "EtcdNoLeader".into()];
    let mut snap = snapshot(
        vec![paused],
        vec![node("a", "p"), node("b", "p")],
        vec![
            request("a", 0),
            SlotRequest {
                not_before: Some(now() + SignedDuration::from_mins(5)),
                ..request("b", 1)
            },
        ],
    );
    let plan = schedule(&snap, now());
    assert_eq!(
        reasons(&plan, "a"),
        [
            "rollout paused",
            "circuit breaker open after 3 failures (maxFailures 2)",
            "alert EtcdNoLeader firing",
            "alert NodeDown firing",
        ]
    );
    assert_eq!(
        reasons(&plan, "b").last().map(String::as_str),
        Some("backing off until 2025-06-04T12:05:00Z")
    );

    // Without pause, breaker and alerts, and with the back-off expired, both go.
    snap.pools = vec![pool("p", json!({"maxUnavailable": 2, "maxFailures": 0}))];
    snap.pools[0].failures = 50;
    let plan = schedule(&snap, now() + SignedDuration::from_mins(5));
    assert_eq!(admitted(&plan), ["a", "b"]);
}

#[test]
fn windows_hold_agent_requests_but_not_manual_ones_and_blackouts_hold_both() {
    let closed = pool(
        "night",
        json!({"windows": [{"start": "22:00", "end": "04:00"}], "maxUnavailable": 5}),
    );
    let snap = snapshot(
        vec![closed],
        vec![node("a", "night"), node("b", "night")],
        vec![request("a", 0), manual("b", 1)],
    );
    let plan = schedule(&snap, now());
    assert_eq!(admitted(&plan), ["b"]);
    assert_eq!(
        reasons(&plan, "a"),
        ["maintenance window closed until 2025-06-04T22:00:00Z"]
    );

    let frozen = pool(
        "night",
        json!({"blackouts": [{
            "start": "2025-06-01T00:00:00Z", "end": "2025-06-10T00:00:00Z", "reason": "release week",
        }]}),
    );
    let snap = Snapshot {
        pools: vec![frozen],
        ..snap
    };
    let plan = schedule(&snap, now());
    assert!(plan.admit.is_empty());
    let expected = "blackout \"release week\" until 2025-06-10T00:00:00Z";
    assert_eq!(reasons(&plan, "a"), [expected]);
    assert_eq!(reasons(&plan, "b"), [expected]);
}

#[test]
fn version_skew_rules() {
    let mut cp1 = node("cp1", "all");
    cp1.control_plane = true;
    let mut cp2 = node("cp2", "all");
    cp2.control_plane = true;
    cp2.kubelet_version = Some(KubeVersion::new(1, 34, 0));
    let mut unknown = node("unknown", "all");
    unknown.kubelet_version = None;
    let nodes = vec![cp1, cp2, node("w1", "all"), unknown];
    let queue = vec![
        apply("cp1", 0, "v1.35.0"),
        upgrade("w1", 1, "1.34.0"),
        upgrade("unknown", 2, "1.33.2"),
        upgrade("cp2", 3, "1.33.0"),
    ];
    let snap = snapshot(
        vec![pool("all", json!({"maxUnavailable": 4}))],
        nodes,
        queue,
    );
    let plan = schedule(&snap, now());
    assert!(plan.admit.is_empty());
    assert_eq!(
        reasons(&plan, "cp1"),
        [
            "version skew: 1.33.1 to 1.35.0 skips a minor version (one minor at a time)",
            "version skew: control plane 1.35 would be more than one minor ahead of API server 1.33",
            "version skew: the control plane moves one minor at a time (1.33.1 still runs on it, \
             1.35.0 would be two minors ahead)",
        ]
    );
    assert_eq!(
        reasons(&plan, "w1"),
        [
            "version skew: kubelet 1.34 would be newer than API server 1.33",
            "version skew: control-plane nodes first (cp1 not at 1.34.0 yet)",
        ]
    );
    assert_eq!(
        reasons(&plan, "unknown"),
        [
            "version skew: kubelet version of the node unknown",
            "version skew: control-plane nodes first (cp1 not at 1.33.2 yet)",
        ]
    );
    assert_eq!(
        reasons(&plan, "cp2"),
        ["version skew: 1.33.0 would downgrade the kubelet from 1.34.0"]
    );

    // The allowed path: the first control-plane node applies one minor ahead of the API
    // server; `kubeadm upgrade node` elsewhere waits for it; workers wait for the control plane.
    let mut snap = snap;
    snap.nodes.pop();
    snap.nodes[1].kubelet_version = Some(KubeVersion::new(1, 33, 1));
    snap.queue = vec![
        apply("cp1", 0, "1.34.0"),
        upgrade("cp2", 1, "1.34.0"),
        upgrade("w1", 2, "1.33.5"),
    ];
    let plan = schedule(&snap, now());
    assert_eq!(admitted(&plan), ["cp1"]);
    assert_eq!(
        reasons(&plan, "cp2"),
        [
            "kubeadm: `kubeadm upgrade apply v1.34.0` must run on the first control-plane node \
             before `kubeadm upgrade node`",
            "control plane: at most 1 control-plane node unavailable at a time (unavailable: cp1 \
             (admitted now))",
        ]
    );
    assert_eq!(
        reasons(&plan, "w1"),
        ["version skew: control-plane nodes first (cp1, cp2 not at 1.33.5 yet)"]
    );
    // Once cp1's kube-apiserver runs 1.34.0 (its static pod's image), cp2 follows with
    // `kubeadm upgrade node`; a worker asking for `apply` is refused.
    snap.nodes[0].kubelet_version = Some(KubeVersion::new(1, 34, 0));
    snap.nodes[0].control_plane_pods = vec![static_pod("cp1", "kube-apiserver", "v1.34.0")];
    snap.queue = vec![upgrade("cp2", 1, "1.34.0"), apply("w1", 2, "1.34.0")];
    let plan = schedule(&snap, now());
    assert_eq!(admitted(&plan), ["cp2"]);
    assert_eq!(
        reasons(&plan, "w1"),
        [
            "kubeadm: `kubeadm upgrade apply` runs on control-plane nodes only",
            "version skew: kubelet 1.34 would be newer than API server 1.33",
            "version skew: control-plane nodes first (cp2 not at 1.34.0 yet)",
        ]
    );
    // The whole control plane at 1.34: workers follow; the control plane may not go to 1.35
    // while a kubelet is more than three minors behind it.
    snap.nodes[1].kubelet_version = Some(KubeVersion::new(1, 34, 0));
    snap.nodes[1].control_plane_pods = vec![static_pod("cp2", "kube-apiserver", "v1.34.0")];
    snap.api_server_version = Some(KubeVersion::new(1, 34, 0));
    snap.nodes[2].kubelet_version = Some(KubeVersion::new(1, 31, 9));
    snap.queue = vec![apply("cp1", 0, "1.35.0"), upgrade("w1", 1, "1.32.0")];
    let plan = schedule(&snap, now());
    assert_eq!(admitted(&plan), ["w1"]);
    assert_eq!(
        reasons(&plan, "cp1"),
        [
            "version skew: kubelets of w1 would be more than 3 minors behind kube-apiserver 1.35; \
          upgrade them first"
        ]
    );

    snap.api_server_version = None;
    snap.nodes[0].control_plane_pods.clear();
    snap.nodes[1].control_plane_pods.clear();
    snap.queue = vec![
        upgrade("w1", 0, "1.34.0"),
        upgrade("cp1", 1, "not-a-version"),
    ];
    let plan = schedule(&snap, now());
    assert!(reasons(&plan, "w1").contains(&"version skew: API server version unknown".to_owned()));
    assert_eq!(
        reasons(&plan, "cp1"),
        ["version skew: \"not-a-version\" is not a Kubernetes version"]
    );
}

fn static_pod(node: &str, component: &str, tag: &str) -> ControlPlanePod {
    ControlPlanePod {
        pod: NamespacedName::new("kube-system", format!("{component}-{node}")),
        component: component.into(),
        ready: true,
        version: tag.parse().ok(),
    }
}

#[test]
fn kubernetes_upgrades_go_to_the_pool_target_only() {
    // The API server already runs 1.34, so the skew policy lets workers move to it.
    let with_target = |target: Option<&str>| {
        let spec = match target {
            Some(t) => json!({"maxUnavailable": 10, "upgrade": {"kubernetesVersion": t}}),
            None => json!({"maxUnavailable": 10}),
        };
        pool("w", spec)
    };
    let cases: [(Option<&str>, &str, &[&str]); 8] = [
        (Some("v1.34.2"), "1.34.2", &[]),
        (Some("v1.34.2"), "v1.34.2", &[]),
        (Some("1.34.2"), "v1.34.2-eks-8a2f", &[]),
        (
            Some("v1.34.2"),
            "1.34.1",
            &["Kubernetes upgrade to 1.34.1 requested, but the policy's \
               upgrade.kubernetesVersion is 1.34.2"],
        ),
        // A target without a patch means patch 0.
        (
            Some("1.34"),
            "1.34.2",
            &["Kubernetes upgrade to 1.34.2 requested, but the policy's \
               upgrade.kubernetesVersion is 1.34.0"],
        ),
        // Both rules are reported.
        (
            Some("1.34.2"),
            "1.35.0",
            &[
                "Kubernetes upgrade to 1.35.0 requested, but the policy's \
                 upgrade.kubernetesVersion is 1.34.2",
                "version skew: 1.33.1 to 1.35.0 skips a minor version (one minor at a time)",
                "version skew: kubelet 1.35 would be newer than API server 1.34",
            ],
        ),
        // Without a target, only the skew policy decides.
        (None, "1.34.1", &[]),
        // A version that does not parse is the skew check's to report, once.
        (
            Some("1.34.2"),
            "latest",
            &["version skew: \"latest\" is not a Kubernetes version"],
        ),
    ];
    for (target, requested, expected) in cases {
        let mut snap = snapshot(
            vec![with_target(target)],
            vec![node("a", "w")],
            vec![upgrade("a", 0, requested)],
        );
        snap.api_server_version = Some(KubeVersion::new(1, 34, 2));
        let plan = schedule(&snap, now());
        let what = format!("target {target:?}, requested {requested}");
        if expected.is_empty() {
            assert_eq!(admitted(&plan), ["a"], "{what}: {:?}", plan.waiting);
        } else {
            assert_eq!(reasons(&plan, "a"), expected, "{what}");
            let kinds: Vec<&str> = plan.waiting["a"]
                .reasons
                .iter()
                .map(WaitReason::kind)
                .collect();
            assert_eq!(
                kinds.contains(&"NotTargetVersion"),
                expected[0].starts_with("Kubernetes upgrade"),
                "{what}"
            );
        }
    }
    // Other operations are not upgrades: the target does not concern them.
    let snap = snapshot(
        vec![with_target(Some("1.34.2"))],
        vec![node("a", "w")],
        vec![request("a", 0)],
    );
    assert_eq!(admitted(&schedule(&snap, now())), ["a"]);
}

#[test]
fn alerts_that_cannot_be_checked_hold_the_pool() {
    let prometheus = json!({
        "maxUnavailable": 5,
        "blockers": {"prometheus": {"url": "http://prom:9090", "alertFilter": "^Watchdog$"}},
    });
    let mut unknown = pool("p", prometheus.clone());
    unknown.alerts_unknown = Some("connection refused".into());
    let snap = snapshot(
        vec![unknown],
        vec![node("a", "p"), node("b", "p")],
        vec![request("a", 0), manual("b", 1)],
    );
    let plan = schedule(&snap, now());
    assert!(plan.admit.is_empty(), "manual requests wait too");
    for node in ["a", "b"] {
        assert_eq!(
            reasons(&plan, node),
            ["cannot reach Prometheus at http://prom:9090: connection refused"]
        );
        assert_eq!(plan.waiting[node].reasons[0].kind(), "AlertsUnknown");
    }

    // Known alerts: the filter ignores Watchdog, nothing else fires.
    let mut known = pool("p", prometheus);
    known.firing_alerts = vec!["Watchdog".into()];
    let snap = Snapshot {
        pools: vec![known],
        ..snap.clone()
    };
    assert_eq!(admitted(&schedule(&snap, now())), ["b", "a"]);

    // Without a Prometheus blocker, an unknown state (stale or irrelevant) changes nothing.
    let mut plain = pool("p", json!({"maxUnavailable": 5}));
    plain.alerts_unknown = Some("no answer yet".into());
    let snap = Snapshot {
        pools: vec![plain],
        ..snap
    };
    assert_eq!(admitted(&schedule(&snap, now())), ["b", "a"]);
}

#[test]
fn waiting_summary_groups_by_kind() {
    let mut nodes: Vec<NodeState> = (0..8).map(|i| node(&format!("n{i}"), "w")).collect();
    nodes[7].blocking_pods = vec![NamespacedName::new("a", "b")];
    let queue = (0..8).map(|i| request(&format!("n{i}"), i)).collect();
    let plan = schedule(&snapshot(vec![pool("w", json!({}))], nodes, queue), now());
    assert_eq!(admitted(&plan), ["n0"]);
    let summary = plan.waiting_summary("w");
    let kinds: Vec<(&str, i32, usize)> = summary
        .iter()
        .map(|s| (s.reason.as_str(), s.count, s.examples.len()))
        .collect();
    assert_eq!(kinds, [("BlockingPod", 1, 1), ("MaxUnavailable", 7, 5)]);
    assert!(summary[1].examples.contains_key("n1") && !summary[1].examples.contains_key("n6"));
    assert!(plan.waiting_summary("other").is_empty());
}

#[test]
fn reason_kinds_are_stable() {
    let kinds: Vec<&str> = [
        WaitReason::NodeNotFound,
        WaitReason::NoPool,
        WaitReason::Paused,
        WaitReason::WindowClosed { next_open: None },
    ]
    .iter()
    .map(WaitReason::kind)
    .collect();
    assert_eq!(kinds, ["NodeNotFound", "NoPool", "Paused", "WindowClosed"]);
    assert_eq!(
        WaitReason::WindowClosed { next_open: None }.to_string(),
        "maintenance window closed"
    );
    assert_eq!(
        WaitReason::Blackout {
            reason: String::new(),
            until: now()
        }
        .to_string(),
        "blackout until 2025-06-04T12:00:00Z"
    );
}

#[test]
fn pools_select_nodes_by_label() {
    let workers = pool(
        "workers",
        json!({"nodeSelector": {"matchExpressions": [
            {"key": "node-role.kubernetes.io/control-plane", "operator": "DoesNotExist"},
        ]}}),
    );
    let control_plane = [(
        "node-role.kubernetes.io/control-plane".to_owned(),
        String::new(),
    )]
    .into();
    assert!(workers.selects(&Default::default()));
    assert!(!workers.selects(&control_plane));
}

/// The one budget index (the scheduler's snapshot and every drain read it) follows the eviction
/// API's rules: budgets in the pod's namespace whose selector matches; an empty, missing or
/// invalid selector covers nothing.
#[test]
fn pdb_index_follows_the_eviction_api() {
    let selector = |pairs: &[(&str, &str)]| LabelSelector {
        match_labels: Some(
            pairs
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
        ),
        match_expressions: None,
    };
    let budget =
        |namespace: &str, name: &str, selector: Option<LabelSelector>| PodDisruptionBudget {
            metadata: ObjectMeta {
                namespace: Some(namespace.to_owned()),
                name: Some(name.to_owned()),
                ..ObjectMeta::default()
            },
            spec: Some(PodDisruptionBudgetSpec {
                selector,
                ..PodDisruptionBudgetSpec::default()
            }),
            status: None,
        };
    let pdb_ref = |namespace: &str, name: &str| PdbRef {
        namespace: namespace.to_owned(),
        name: name.to_owned(),
    };
    let mut index = PdbIndex::from_objects(&[
        budget("shop", "web", Some(selector(&[("app", "web")]))),
        budget("shop", "all", Some(LabelSelector::default())),
        budget("shop", "none", None),
        budget("other", "web", Some(selector(&[("app", "web")]))),
        budget("shop", "tier", Some(selector(&[("tier", "front")]))),
    ]);
    let labels = [
        ("app".to_owned(), "web".to_owned()),
        ("tier".to_owned(), "front".to_owned()),
    ]
    .into();
    assert_eq!(
        index.covering("shop", &labels),
        [pdb_ref("shop", "tier"), pdb_ref("shop", "web")]
    );
    index.apply(&budget("shop", "tier", None));
    assert_eq!(index.covering("shop", &labels), [pdb_ref("shop", "web")]);
    assert!(index.covering("empty", &labels).is_empty());
    let bad = LabelSelector {
        match_expressions: Some(vec![Default::default()]),
        match_labels: None,
    };
    index.apply(&budget("shop", "bad", Some(bad)));
    assert_eq!(index.covering("shop", &labels), [pdb_ref("shop", "web")]);
    index.delete(&budget("shop", "web", None));
    assert!(index.covering("shop", &labels).is_empty());
}

/// A control-plane node with kubeadm's static pods; `etcd` adds an etcd member whose pod is
/// Ready or not.
fn control_plane(name: &str, pool: &str, etcd: Option<bool>) -> NodeState {
    let static_pod = |component: &str, ready: bool| ControlPlanePod {
        pod: NamespacedName::new("kube-system", format!("{component}-{name}")),
        component: component.into(),
        ready,
        version: None,
    };
    let mut pods = vec![
        static_pod("kube-apiserver", true),
        static_pod("kube-controller-manager", true),
        static_pod("kube-scheduler", true),
    ];
    pods.extend(etcd.map(|ready| static_pod("etcd", ready)));
    NodeState {
        control_plane: true,
        control_plane_pods: pods,
        ..node(name, pool)
    }
}

#[test]
fn one_control_plane_node_at_a_time_by_default_whatever_max_unavailable_says() {
    let nodes = ["cp-1", "cp-2", "cp-3"]
        .iter()
        .map(|n| control_plane(n, "all", Some(true)))
        .collect();
    let snap = snapshot(
        vec![pool("all", json!({"maxUnavailable": 3}))],
        nodes,
        vec![request("cp-1", 0), request("cp-2", 1), request("cp-3", 2)],
    );
    let plan = schedule(&snap, now());
    assert_eq!(admitted(&plan), ["cp-1"]);
    assert_eq!(
        reasons(&plan, "cp-2"),
        [
            "control plane: at most 1 control-plane node unavailable at a time (unavailable: \
             cp-1 (admitted now))",
            "etcd quorum: at most 1 of 3 members down at a time (down: cp-1 (admitted now))"
        ]
    );
}

#[test]
fn control_plane_max_unavailable_is_the_smallest_of_the_pools_selecting_control_plane_nodes() {
    let nodes: Vec<NodeState> = (1..=5)
        .map(|i| {
            control_plane(
                &format!("cp-{i}"),
                if i <= 3 { "a" } else { "b" },
                Some(true),
            )
        })
        .collect();
    let queue: Vec<SlotRequest> = (1..=5).map(|i| request(&format!("cp-{i}"), i)).collect();
    let two = json!({"maxUnavailable": 3, "controlPlane": {"maxUnavailable": 2}});
    let three = json!({"maxUnavailable": 3, "controlPlane": {"maxUnavailable": 3}});
    // Five etcd members keep quorum with two down: both pools say at least 2, so 2 go.
    let snap = snapshot(
        vec![pool("a", two.clone()), pool("b", three)],
        nodes.clone(),
        queue.clone(),
    );
    assert_eq!(admitted(&schedule(&snap, now())), ["cp-1", "cp-2"]);
    // A second pool that says 1 holds the first one to 1 as well.
    let snap = snapshot(
        vec![pool("a", two), pool("b", json!({"maxUnavailable": 3}))],
        nodes,
        queue,
    );
    let plan = schedule(&snap, now());
    assert_eq!(admitted(&plan), ["cp-1"]);
    assert!(reasons(&plan, "cp-2")[0].starts_with("control plane: at most 1 control-plane node"));
}

#[test]
fn etcd_quorum_caps_control_plane_max_unavailable() {
    // Three members keep quorum with one down, whatever controlPlane.maxUnavailable says.
    let nodes = ["cp-1", "cp-2", "cp-3"]
        .iter()
        .map(|n| control_plane(n, "all", Some(true)))
        .collect();
    let snap = snapshot(
        vec![pool(
            "all",
            json!({"maxUnavailable": 3, "controlPlane": {"maxUnavailable": 3}}),
        )],
        nodes,
        vec![request("cp-1", 0), request("cp-2", 1)],
    );
    let plan = schedule(&snap, now());
    assert_eq!(admitted(&plan), ["cp-1"]);
    assert_eq!(
        reasons(&plan, "cp-2"),
        ["etcd quorum: at most 1 of 3 members down at a time (down: cp-1 (admitted now))"]
    );
}

#[test]
fn an_unhealthy_etcd_member_or_static_pod_elsewhere_holds_control_plane_nodes() {
    let mut cp3 = control_plane("cp-3", "all", Some(true));
    cp3.control_plane_pods[0].ready = false;
    let nodes = vec![
        control_plane("cp-1", "all", Some(true)),
        control_plane("cp-2", "all", Some(false)),
        cp3,
        node("w-1", "all"),
    ];
    let snap = snapshot(
        vec![pool("all", json!({"maxUnavailable": 3}))],
        nodes,
        vec![request("cp-1", 0), request("w-1", 1)],
    );
    let plan = schedule(&snap, now());
    // Workers are not held.
    assert_eq!(admitted(&plan), ["w-1"]);
    assert_eq!(
        reasons(&plan, "cp-1"),
        [
            "control plane: every other control-plane node must be healthy first (unhealthy: \
             cp-2 (etcd-cp-2 not Ready), cp-3 (kube-apiserver-cp-3 not Ready))",
            "etcd quorum: at most 1 of 3 members down at a time (down: cp-2 (etcd pod not \
             Ready))"
        ]
    );
    assert_eq!(
        plan.waiting["cp-1"].reasons[0].kind(),
        "ControlPlaneUnhealthy"
    );
    assert_eq!(plan.waiting["cp-1"].reasons[1].kind(), "EtcdQuorum");
}

#[test]
fn a_node_running_static_control_plane_pods_is_guarded_without_the_label() {
    let mut unlabelled = control_plane("cp-2", "all", Some(true));
    unlabelled.control_plane = true; // set by the snapshot from its static pods
    let nodes = vec![control_plane("cp-1", "all", Some(true)), unlabelled];
    let mut slots = vec![slot("cp-1", SlotPhase::Granted)];
    slots[0].node = "cp-1".into();
    let snap = Snapshot {
        slots,
        ..snapshot(
            vec![pool("all", json!({"maxUnavailable": 3}))],
            nodes,
            vec![request("cp-2", 0)],
        )
    };
    let plan = schedule(&snap, now());
    assert!(plan.admit.is_empty());
    assert_eq!(
        plan.waiting["cp-2"].reasons[0].kind(),
        "ControlPlaneUnavailable"
    );
}

#[test]
fn a_one_member_etcd_waits_unless_the_policy_allows_losing_quorum() {
    let snap = |spec: serde_json::Value| {
        snapshot(
            vec![pool("all", spec)],
            vec![control_plane("cp-1", "all", Some(true)), node("w-1", "all")],
            vec![request("cp-1", 0)],
        )
    };
    let plan = schedule(&snap(json!({})), now());
    assert!(plan.admit.is_empty());
    assert_eq!(
        reasons(&plan, "cp-1"),
        [
            "etcd quorum: 1 member(s), none to spare; maintaining this one takes the API server \
             down (controlPlane.allowEtcdQuorumLoss allows it)"
        ]
    );
    let plan = schedule(
        &snap(json!({"controlPlane": {"allowEtcdQuorumLoss": true}})),
        now(),
    );
    assert_eq!(admitted(&plan), ["cp-1"]);
}

#[test]
fn a_control_plane_without_stacked_etcd_is_held_by_the_count_only() {
    let nodes = vec![
        control_plane("cp-1", "all", None),
        control_plane("cp-2", "all", None),
    ];
    let snap = snapshot(
        vec![pool(
            "all",
            json!({"controlPlane": {"maxUnavailable": 2}, "maxUnavailable": 2}),
        )],
        nodes,
        vec![request("cp-1", 0), request("cp-2", 1)],
    );
    assert_eq!(admitted(&schedule(&snap, now())), ["cp-1", "cp-2"]);
}

#[test]
fn upgrade_mode_none_refuses_package_upgrades_from_any_origin() {
    let package = |node: &str, origin: Origin| SlotRequest {
        operation: Operation::PackageUpgrade {
            security_only: true,
            reboot: UpgradeReboot::IfRequired,
            packages: Vec::new(),
        },
        origin,
        ..request(node, 0)
    };
    let snap = |mode: &str| {
        snapshot(
            vec![pool(
                "w",
                json!({"maxUnavailable": 3, "upgrade": {"mode": mode}}),
            )],
            vec![node("a", "w"), node("b", "w"), node("c", "w")],
            vec![
                package("a", Origin::Agent),
                package("b", Origin::Manual),
                request("c", 1),
            ],
        )
    };
    let plan = schedule(&snap("none"), now());
    assert_eq!(admitted(&plan), ["c"]);
    for node in ["a", "b"] {
        assert_eq!(
            reasons(&plan, node),
            ["the policy forbids it: upgrade.mode is none"]
        );
        assert_eq!(plan.waiting[node].reasons[0].kind(), "ForbiddenByPolicy");
    }
    assert_eq!(
        admitted(&schedule(&snap("security"), now())),
        ["b", "a", "c"]
    );
}

#[test]
fn reboot_mode_never_refuses_reboots_from_any_origin() {
    let snap = |mode: &str| {
        snapshot(
            vec![pool(
                "w",
                json!({"maxUnavailable": 3, "reboot": {"mode": mode}}),
            )],
            vec![node("a", "w"), node("b", "w"), node("c", "w")],
            vec![
                request("a", 0),
                manual("b", 1),
                SlotRequest {
                    operation: Operation::KubeletRestart,
                    ..request("c", 2)
                },
            ],
        )
    };
    let plan = schedule(&snap("never"), now());
    assert_eq!(admitted(&plan), ["c"]);
    for node in ["a", "b"] {
        assert_eq!(
            reasons(&plan, node),
            ["the policy forbids it: reboot.mode is never"]
        );
    }
    assert_eq!(
        admitted(&schedule(&snap("whenRequired"), now())),
        ["b", "a", "c"]
    );
}

#[test]
fn a_stacked_etcd_member_waits_for_a_fresh_verified_snapshot() {
    use rota_core::model::{EtcdFacts, EtcdMember, EtcdSnapshot};
    let saved = |minutes_old: i64| EtcdSnapshot {
        path: "/var/lib/rota/etcd-snapshots/etcd-snapshot-1.db".into(),
        size_bytes: 1024,
        revision: 9,
        hash: 1,
        total_keys: 3,
        taken_at: now() - SignedDuration::from_mins(minutes_old),
    };
    let member = |name: &str, etcd: EtcdFacts| {
        let mut n = node(name, "cp");
        n.etcd = etcd;
        n
    };
    let stacked = |taken: Option<EtcdSnapshot>, error: Option<&str>| EtcdFacts {
        member: EtcdMember::Stacked,
        snapshot: taken,
        snapshot_error: error.map(str::to_owned),
    };
    let nodes = vec![
        member("none", stacked(None, None)),
        member("stale", stacked(Some(saved(45)), None)),
        member(
            "failed",
            stacked(Some(saved(45)), Some("etcdctl: context deadline exceeded")),
        ),
        member("fresh", stacked(Some(saved(5)), None)),
        member(
            "external",
            EtcdFacts {
                member: EtcdMember::External,
                ..EtcdFacts::default()
            },
        ),
        node("worker", "cp"),
    ];
    let queue = ["none", "stale", "failed", "fresh", "external", "worker"]
        .iter()
        .enumerate()
        .map(|(i, n)| request(n, i64::try_from(i).unwrap()))
        .collect();
    let spec = |before: &str| json!({"maxUnavailable": 10, "etcd": {"snapshotBefore": before, "maxSnapshotAge": "30m"}});
    let snap = snapshot(vec![pool("cp", spec("allOperations"))], nodes, queue);
    let plan = schedule(&snap, now());
    assert_eq!(admitted(&plan), ["fresh", "external", "worker"]);
    assert_eq!(
        reasons(&plan, "none"),
        ["etcd snapshot: waiting for the agent to save and verify one of this stacked etcd member"]
    );
    assert_eq!(
        reasons(&plan, "stale"),
        [
            "etcd snapshot: the newest verified one (2025-06-04T11:15:00Z) is older than \
          etcd.maxSnapshotAge (1800 s); the agent takes a new one"
        ]
    );
    assert_eq!(
        reasons(&plan, "failed"),
        ["etcd snapshot failed: etcdctl: context deadline exceeded"]
    );
    // A reboot is not a Kubernetes upgrade: `kubernetesUpgrades` lets it go without one.
    let mut snap = snap;
    snap.pools = vec![pool("cp", spec("kubernetesUpgrades"))];
    assert_eq!(schedule(&snap, now()).admit.len(), 6);
    snap.pools = vec![pool("cp", spec("never"))];
    assert_eq!(schedule(&snap, now()).admit.len(), 6);
}
