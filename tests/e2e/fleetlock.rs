//! End to end: image-based hosts that update themselves (Zincati, over FleetLock) and nodes
//! with rota's agent in one pool, under one `maxUnavailable`, judged by the independent
//! monitor; and the FleetLock endpoint's answers to bad requests, which change nothing.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rota_agent::host::Host;
use rota_coordinator::fleetlock::hosts::HOSTS_CONFIGMAP;
use rota_core::fleetlock::{PRE_REBOOT, PROTOCOL_HEADER, STEADY_STATE};
use rota_core::policy::MaintenancePolicySpec;
use rota_core::slots::persist::{LEDGER_ANNOTATIONS, REQUEST_ANNOTATION};
use rota_sim::apiserver::{GroupResource, ResourceKey, meta};
use rota_sim::demo::{Fleet, Scheduler};
use rota_tests::e2e::{
    self, WAIT, WriteFollower, annotation, assert_complete, node, options, print_timing, run,
    start, tokens_by_node,
};
use serde_json::Value;

/// Where Zincati marks the update it rebooted into (`rota_sim`'s Zincati model).
const FINALIZED: &str = "/var/lib/zincati/finalized";

/// Zincati's id of `node`'s host: its machine id made app-specific, as Zincati computes it.
fn zincati_id(fleet: &Fleet, node: &str) -> String {
    let hosts = fleet.cluster().unwrap().hosts();
    let machine_id = hosts[node].machine_id();
    rota_coordinator::fleetlock::zincati_id(&machine_id).unwrap()
}

/// A refused request: what it is, its headers and body, the status and error kind expected.
type Case<'a> = (&'a str, Vec<(&'a str, &'a str)>, String, u16, &'a str);

fn body(id: &str, group: &str) -> String {
    serde_json::json!({"client_params": {"id": id, "group": group}}).to_string()
}

/// Three of nine nodes run Zincati; the others run rota's agent; all in one pool, two at a
/// time. Every node is maintained once, the monitor sees no budget broken and never more than
/// two nodes (of either kind) unavailable, and each Zincati host rebooted into its update
/// with one rota slot.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fleetlock_hosts_and_agent_nodes_share_one_pool() {
    let mut options = options(9, 7, 2, 2);
    options.fleetlock_hosts = 3;
    let fleet = start(options).await;
    let (report, took) = run(&fleet, Duration::from_secs(400), Duration::from_secs(90)).await;
    print_timing(
        "fleetlock_hosts_and_agent_nodes_share_one_pool",
        took,
        &report,
    );
    assert_complete(&fleet, &report);
    assert_eq!(report.max_unavailable, 2, "{}", report.render());
    let tokens = tokens_by_node(&fleet);
    let hosts = fleet.cluster().unwrap().hosts();
    assert_eq!(fleet.fleetlock_nodes().len(), 3);
    for name in fleet.fleetlock_nodes() {
        assert_eq!(
            tokens.get(name).map(|t| t.len()),
            Some(1),
            "{name}: {tokens:?}"
        );
        assert!(
            hosts[name].exists(Path::new(FINALIZED)).unwrap(),
            "{name} did not reboot into its update"
        );
    }
    fleet.shutdown().await;
}

/// Every malformed, unauthenticated or misdirected request is refused with the protocol's
/// error body and leaves the node's ledger as it was; a standby answers `not_leader`. A valid
/// pre-reboot while the pool is paused says why it waits; a valid steady-state withdraws the
/// request.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_fleetlock_requests_change_nothing() {
    let tokens = tempfile::tempdir().unwrap();
    std::fs::write(tokens.path().join("fleet"), "fleet-token\n").unwrap();
    std::fs::write(tokens.path().join("other"), "other-token\n").unwrap();
    let mut options = options(6, 11, 1, 2);
    options.fleetlock_hosts = 1;
    if let Scheduler::Rota {
        coordinators,
        policy: Some(policy),
        ..
    } = &mut options.scheduler
    {
        coordinators.fleetlock_tokens = Some(tokens.path().to_path_buf());
        policy.paused = true;
    }
    let fleet = start(options).await;
    let host = fleet.fleetlock_nodes().iter().next().unwrap().clone();
    // Zincati asks, and its request waits in the paused pool.
    fleet
        .wait_for("Zincati's reboot request queued", WAIT, |fleet| {
            annotation(&node(fleet, &host), REQUEST_ANNOTATION)
                .filter(|r| r.contains("reboot"))
                .map(|_| ())
                .ok_or_else(|| "not queued yet".to_owned())
        })
        .await
        .unwrap();
    fleet.kill_agent(&host).await.unwrap();
    let ledger = |fleet: &Fleet| -> Vec<Option<String>> {
        let node = node(fleet, &host);
        LEDGER_ANNOTATIONS
            .iter()
            .map(|key| annotation(&node, key))
            .collect()
    };
    let before = ledger(&fleet);

    let id = zincati_id(&fleet, &host);
    let good = body(&id, "fleet");
    let bearer = "Bearer fleet-token";
    let cases: Vec<Case> = vec![
        (
            "no protocol header",
            vec![("Authorization", bearer)],
            good.clone(),
            400,
            "missing_protocol_header",
        ),
        (
            "not the protocol's body",
            vec![(PROTOCOL_HEADER, "true"), ("Authorization", bearer)],
            r#"{"id": "x"}"#.to_owned(),
            400,
            "bad_request",
        ),
        (
            "a group that is not a group name",
            vec![(PROTOCOL_HEADER, "true"), ("Authorization", bearer)],
            body(&id, "../fleet"),
            400,
            "bad_request",
        ),
        (
            "no credentials",
            vec![(PROTOCOL_HEADER, "true")],
            good.clone(),
            401,
            "unauthorized",
        ),
        (
            "another group's token",
            vec![
                (PROTOCOL_HEADER, "true"),
                ("Authorization", "Bearer other-token"),
            ],
            good.clone(),
            401,
            "unauthorized",
        ),
        (
            "a group without a token",
            vec![(PROTOCOL_HEADER, "true"), ("Authorization", bearer)],
            body(&id, "nobody"),
            401,
            "unauthorized",
        ),
        (
            "a group that is not the node's pool",
            vec![
                (PROTOCOL_HEADER, "true"),
                ("Authorization", "Bearer other-token"),
            ],
            body(&id, "other"),
            409,
            "wrong_group",
        ),
        (
            "an unknown id",
            vec![(PROTOCOL_HEADER, "true"), ("Authorization", bearer)],
            body("00000000000000000000000000000000", "fleet"),
            404,
            "unknown_id",
        ),
    ];
    for (case, headers, request, status, kind) in &cases {
        for path in [PRE_REBOOT, STEADY_STATE] {
            let (got, answer) = fleet
                .fleetlock_post(None, path, headers, request)
                .await
                .unwrap();
            let answer: Value = serde_json::from_str(&answer)
                .unwrap_or_else(|e| panic!("{case} {path}: {e}: {answer}"));
            assert_eq!(
                (got, answer["kind"].as_str()),
                (*status, Some(*kind)),
                "{case} {path}: {answer}"
            );
            assert!(
                answer["value"].as_str().is_some_and(|v| !v.is_empty()),
                "{case}: {answer}"
            );
            assert_eq!(ledger(&fleet), before, "{case} {path} changed the ledger");
        }
    }

    // A standby refuses, whatever the request.
    let leader = fleet.leader().unwrap();
    let headers = [(PROTOCOL_HEADER, "true"), ("Authorization", bearer)];
    let (got, answer) = fleet
        .fleetlock_post(Some(1 - leader), PRE_REBOOT, &headers, &good)
        .await
        .unwrap();
    assert_eq!(got, 503, "{answer}");
    assert!(answer.contains("not_leader"), "{answer}");
    assert_eq!(ledger(&fleet), before);

    // The valid request waits in the paused pool, and says why; asking again changes nothing.
    let (got, answer) = fleet
        .fleetlock_post(None, PRE_REBOOT, &headers, &good)
        .await
        .unwrap();
    assert_eq!(got, 423, "{answer}");
    assert!(answer.contains("failed_lock_queued"), "{answer}");
    assert_eq!(ledger(&fleet), before);

    // Steady state: the client wants nothing any more; its request goes.
    let (got, answer) = fleet
        .fleetlock_post(None, STEADY_STATE, &headers, &good)
        .await
        .unwrap();
    assert_eq!((got, answer.as_str()), (200, "{}"));
    assert_eq!(annotation(&node(&fleet, &host), REQUEST_ANNOTATION), None);
    fleet.shutdown().await;
}

/// What the emulator's record shows at one write.
#[derive(Debug, Default)]
struct Unavailable {
    /// Nodes of the pool cordoned or not Ready, by name.
    nodes: BTreeSet<String>,
    /// Hosts holding a lock, from the hosts' ConfigMap.
    hosts: BTreeSet<String>,
}

/// The most nodes and hosts unavailable at once so far (with an example).
#[derive(Debug, Default)]
struct MostUnavailable {
    now: Unavailable,
    most: usize,
    example: String,
}

/// Follows every write the emulated API server makes, in order, judging the nodes and hosts
/// unavailable at once from Node objects (cordoned or not Ready) and the hosts' lock ConfigMap
/// — not from rota's scheduler.
fn follow_unavailable(fleet: &Fleet) -> (Arc<Mutex<MostUnavailable>>, WriteFollower) {
    let record = Arc::new(Mutex::new(MostUnavailable::default()));
    let shared = record.clone();
    let follower = e2e::follow_writes(fleet.store(), move |event| {
        let mut r = shared.lock().unwrap();
        let object = &event.object;
        if event.resource == GroupResource::core("nodes") {
            let name = meta::name(object).to_owned();
            if meta::node_unschedulable(object) || !meta::node_ready(object) {
                r.now.nodes.insert(name);
            } else {
                r.now.nodes.remove(&name);
            }
        } else if event.resource == GroupResource::core("configmaps")
            && meta::name(object) == HOSTS_CONFIGMAP
        {
            r.now.hosts = object
                .pointer("/data/fleet")
                .and_then(Value::as_str)
                .and_then(|held| serde_json::from_str::<BTreeMap<String, Value>>(held).ok())
                .map(|held| held.into_keys().collect())
                .unwrap_or_default();
        } else {
            return;
        }
        let count = r.now.nodes.len() + r.now.hosts.len();
        if count > r.most {
            r.most = count;
            r.example = format!("{:?}", r.now);
        }
    });
    (record, follower)
}

/// One host that is not a Kubernetes node, as Zincati on it behaves: pre-reboot until 200,
/// a reboot, steady-state until 200. Returns how often it was refused.
async fn plain_host(fleet: &Fleet, id: &str) -> usize {
    let headers = [
        (PROTOCOL_HEADER, "true"),
        ("Authorization", "Bearer fleet-token"),
    ];
    let request = body(id, "fleet");
    let mut refused = 0;
    for (path, then) in [
        (PRE_REBOOT, Duration::from_secs(2)),
        (STEADY_STATE, Duration::ZERO),
    ] {
        let answered = tokio::time::timeout(WAIT, async {
            loop {
                match fleet.fleetlock_post(None, path, &headers, &request).await {
                    Ok((200, _)) => break,
                    Ok((status, answer)) => {
                        assert!(
                            [423, 503].contains(&status),
                            "{id} {path}: {status} {answer}"
                        );
                        refused += 1;
                    }
                    Err(_) => refused += 1,
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        })
        .await;
        assert!(answered.is_ok(), "{id}: {path} never answered 200");
        // The host reboots (it is no Kubernetes node: nothing in the cluster shows it).
        tokio::time::sleep(then).await;
    }
    refused
}

/// Hosts that are not Kubernetes nodes, listed by the pool's policy, a Zincati node and agent
/// nodes share one `maxUnavailable: 2`: the emulator's record — Node objects and the hosts'
/// lock ConfigMap, every write in order — never shows more than two of them unavailable at
/// once, every host got its lock and gave it back, and every node was maintained once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hosts_that_are_no_nodes_share_the_pools_max_unavailable() {
    let tokens = tempfile::tempdir().unwrap();
    std::fs::write(tokens.path().join("fleet"), "fleet-token\n").unwrap();
    let hosts = [
        "0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a",
        "0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b",
        "0c0c0c0c0c0c0c0c0c0c0c0c0c0c0c0c",
    ];
    let mut options = options(7, 5, 2, 2);
    options.fleetlock_hosts = 1;
    if let Scheduler::Rota {
        coordinators,
        policy: Some(policy),
        ..
    } = &mut options.scheduler
    {
        coordinators.fleetlock_tokens = Some(tokens.path().to_path_buf());
        policy.fleet_lock.hosts = hosts.iter().map(|h| (*h).to_owned()).collect();
    }
    let fleet = start(options).await;
    let (record, follower) = follow_unavailable(&fleet);
    let began = std::time::Instant::now();
    let (rollout, refusals) = tokio::join!(
        run(&fleet, Duration::from_secs(400), Duration::from_secs(90)),
        futures::future::join_all(hosts.iter().map(|id| plain_host(&fleet, id))),
    );
    let (report, took) = rollout;
    print_timing(
        "hosts_that_are_no_nodes_share_the_pools_max_unavailable",
        took,
        &report,
    );
    println!(
        "hosts done after {:?}, refused {refusals:?} times before their answers",
        began.elapsed()
    );
    assert_complete(&fleet, &report);
    // Every host gave its lock back.
    let held = fleet
        .store()
        .get(&ResourceKey::new(
            GroupResource::core("configmaps"),
            Some("rota-system"),
            HOSTS_CONFIGMAP,
        ))
        .unwrap();
    assert_eq!(held.pointer("/data/fleet"), None, "{held}");
    // An Event on the policy for every lock given and given back (recorded after the writes).
    fleet
        .wait_for("an Event for every host lock", WAIT, |fleet| {
            let events = e2e::events(fleet);
            // Repeats of one reason on one object are folded into a series.
            let count = |reason: &str| -> u64 {
                events
                    .iter()
                    .filter(|e| meta::str_at(e, "/reason") == reason)
                    .filter(|e| meta::str_at(e, "/regarding/kind") == "MaintenancePolicy")
                    .map(|e| {
                        e.pointer("/series/count")
                            .and_then(Value::as_u64)
                            .unwrap_or(1)
                    })
                    .sum()
            };
            let counts = (count("FleetLockHostLocked"), count("FleetLockHostUnlocked"));
            if counts == (hosts.len() as u64, hosts.len() as u64) {
                Ok(())
            } else {
                Err(format!("(locked, unlocked) Events: {counts:?}"))
            }
        })
        .await
        .unwrap();
    // The verdict once the follower judged the last write.
    follower.caught_up(fleet.store()).await;
    let (most, example) = {
        let r = record.lock().unwrap();
        (r.most, r.example.clone())
    };
    assert!(most <= 2, "{most} unavailable at once: {example}");
    fleet.shutdown().await;
}

/// A pool of plain hosts with its own `maxUnavailable: 1` (a policy that selects no node and
/// lists two hosts): the first host's lock survives the leader's death — the new leader, which
/// read it from the API, holds the second host back naming the first — and passes to the second
/// host once the first reaches steady state.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plain_hosts_lock_survives_a_leader_failover() {
    let tokens = tempfile::tempdir().unwrap();
    std::fs::write(tokens.path().join("edge"), "edge-token\n").unwrap();
    let (first, second) = (
        "1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a",
        "2b2b2b2b2b2b2b2b2b2b2b2b2b2b2b2b",
    );
    let mut options = options(4, 3, 1, 2);
    if let Scheduler::Rota {
        coordinators,
        pools,
        ..
    } = &mut options.scheduler
    {
        coordinators.fleetlock_tokens = Some(tokens.path().to_path_buf());
        let edge: MaintenancePolicySpec = serde_json::from_value(serde_json::json!({
            "nodeSelector": {"matchLabels": {"rota.dev/pool": "edge-hosts-only"}},
            "maxUnavailable": 1,
            "fleetLock": {"hosts": [first, second]},
        }))
        .unwrap();
        pools.push(("edge".to_owned(), edge));
    }
    let fleet = start(options).await;
    let headers = [
        (PROTOCOL_HEADER, "true"),
        ("Authorization", "Bearer edge-token"),
    ];
    let ask = |path: &'static str, id: &'static str| {
        let fleet = &fleet;
        async move {
            fleet
                .fleetlock_post(None, path, &headers, &body(id, "edge"))
                .await
                .map_err(|e| e.to_string())
        }
    };
    let until_granted = |path: &'static str, id: &'static str| async move {
        for _ in 0..600 {
            if let Ok((200, _)) = ask(path, id).await {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("{id}: {path} never answered 200");
    };
    until_granted(PRE_REBOOT, first).await;

    let leader = fleet.leader().unwrap();
    fleet.kill_coordinator(leader).await.unwrap();
    fleet
        .wait_for("another leader", WAIT, |f| match f.leader() {
            Some(l) if l != leader => Ok(l),
            other => Err(format!("leader {other:?}")),
        })
        .await
        .unwrap();
    // The new leader answers the second host, and holds it back because of the first.
    let mut last = String::new();
    let held_back = tokio::time::timeout(WAIT, async {
        loop {
            if let Ok((status, answer)) = ask(PRE_REBOOT, second).await {
                assert_ne!(
                    status, 200,
                    "the second host got a lock while the first held one"
                );
                if status == 423 && answer.contains(first) {
                    return answer;
                }
                last = answer;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await
    .unwrap_or_else(|_| panic!("the new leader never named the first host's lock: {last}"));
    assert!(held_back.contains("failed_lock_queued"), "{held_back}");

    // The first host is back: its lock goes to the second.
    until_granted(STEADY_STATE, first).await;
    until_granted(PRE_REBOOT, second).await;
    until_granted(STEADY_STATE, second).await;
    fleet.shutdown().await;
}
