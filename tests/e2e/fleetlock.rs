//! End to end: image-based hosts that update themselves (Zincati, over FleetLock) and nodes
//! with rota's agent in one pool, under one `maxUnavailable`, judged by the independent
//! monitor; and the FleetLock endpoint's answers to bad requests, which change nothing.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::time::Duration;

use rota_agent::host::Host;
use rota_core::fleetlock::{PRE_REBOOT, PROTOCOL_HEADER, STEADY_STATE};
use rota_core::slots::persist::{LEDGER_ANNOTATIONS, REQUEST_ANNOTATION};
use rota_sim::demo::{Fleet, Scheduler};
use rota_tests::e2e::{
    WAIT, annotation, assert_complete, node, options, print_timing, run, start, tokens_by_node,
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
