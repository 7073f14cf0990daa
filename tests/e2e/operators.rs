//! End to end: what operators do to a rollout. An on-call engineer's manual request
//! (`kubectl annotate node X rota.dev/maintenance-requested=...`) goes first; a closed
//! maintenance window starts nothing, and opening it starts the rollout.

// Helpers outside #[test] functions fail the test the same way the tests do.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use jiff::{SignedDuration, Timestamp, tz::TimeZone};
use rota_core::controller::annotations::MAINTENANCE_REQUESTED;
use rota_core::policy::MaintenancePolicySpec;
use rota_core::policy::crd::MaintenanceWindow;
use rota_core::slots::persist::SLOT_ANNOTATION;
use rota_sim::demo::Fleet;
use rota_tests::e2e::{
    self, WAIT, annotation, assert_complete, assert_one_grant_per_node, condition, node, options,
    policy, print_timing, rota_settings, run, start, tokens_by_node, waiting_reason,
};
use rota_tests::kubectl::Kubectl;
use serde_json::Value;

/// The fleet's policy as it is in force now.
fn spec(fleet: &Fleet) -> MaintenancePolicySpec {
    serde_json::from_value(policy(fleet)["spec"].clone()).unwrap()
}

/// Waits until the coordinator reports every node waiting for `kind`.
async fn wait_all_waiting(fleet: &Fleet, kind: &str) {
    let total = fleet.scenario().nodes.len() as i64;
    fleet
        .wait_for(
            &format!("every node waiting: {kind}"),
            WAIT,
            |fleet| match waiting_reason(&policy(fleet), kind) {
                Some((count, _)) if count == total => Ok(()),
                other => Err(format!(
                    "{kind}: {other:?}; waiting reasons {:?}",
                    policy(fleet).pointer("/status/waitingReasons")
                )),
            },
        )
        .await
        .unwrap();
}

/// `kubectl annotate` against the fleet's API server, as the on-call engineer runs it.
async fn kubectl_annotate(fleet: &Fleet, node: &str, annotation: &str) {
    Kubectl::new(&fleet.server().unwrap().kubeconfig())
        .run(&["annotate", "node", node, annotation])
        .await;
}

/// The rollout is paused while every agent queues its request; the on-call engineer then asks
/// for the last worker in the queue with `kubectl annotate`. Once resumed, with one node at a
/// time, that node is admitted first — before the control-plane nodes and every agent request
/// queued before it — and the rollout finishes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_manual_request_goes_first() {
    if rota_tests::control_plane::binaries_for_test().is_none() {
        return;
    }
    let mut options = options(6, 51, 1, 2);
    rota_settings(&mut options).1.paused = true;
    let began = std::time::Instant::now();
    let mut fleet = start(options).await;
    wait_all_waiting(&fleet, "Paused").await;
    let urgent = e2e::workers(&fleet).last().cloned().unwrap();

    kubectl_annotate(&fleet, &urgent, &format!("{MAINTENANCE_REQUESTED}=upgrade")).await;
    // The coordinator takes the request into its ledger and removes the annotation.
    fleet
        .wait_for("the manual request taken", WAIT, |fleet| {
            let node = node(fleet, &urgent);
            match annotation(&node, MAINTENANCE_REQUESTED) {
                None => Ok(()),
                Some(value) => Err(format!("still annotated {value:?}")),
            }
        })
        .await
        .unwrap();
    assert!(
        fleet.persisted_tokens().is_empty(),
        "nothing admitted while paused"
    );

    let mut resumed = spec(&fleet);
    resumed.paused = false;
    fleet.apply_policy(resumed).unwrap();
    let origin = fleet
        .wait_for("a node admitted", WAIT, |fleet| {
            let admitted = tokens_by_node(fleet);
            match admitted.get(&urgent) {
                Some(_) => {
                    let slot: Value = serde_json::from_str(
                        &annotation(&node(fleet, &urgent), SLOT_ANNOTATION).unwrap_or_default(),
                    )
                    .unwrap_or_default();
                    Ok(slot["origin"].as_str().unwrap_or_default().to_string())
                }
                None if admitted.is_empty() => Err("nothing admitted yet".into()),
                None => Err(format!("admitted first: {admitted:?}")),
            }
        })
        .await
        .unwrap();
    let (report, _) = run(&fleet, Duration::from_secs(300), Duration::from_secs(90)).await;
    print_timing("a manual request", began.elapsed(), &report);
    println!("{}", report.render());

    assert_eq!(origin, "manual", "{urgent}'s slot came from the annotation");
    let first = fleet.persisted_tokens().into_iter().next().unwrap();
    assert_eq!(
        first.1.into_iter().collect::<Vec<_>>(),
        vec![urgent.clone()],
        "the first token went to {urgent}"
    );
    let first_down = e2e::first_unavailable(&fleet)
        .into_iter()
        .min_by_key(|(_, at)| *at)
        .map(|(node, _)| node);
    assert_eq!(first_down.as_deref(), Some(urgent.as_str()));
    assert_complete(&fleet, &report);
    assert_one_grant_per_node(&fleet);
    fleet.shutdown().await;
}

/// `HH:MM` in UTC of `now + offset`.
fn utc_hhmm(now: Timestamp, offset: SignedDuration) -> String {
    let at = now.checked_add(offset).unwrap().to_zoned(TimeZone::UTC);
    format!("{:02}:{:02}", at.hour(), at.minute())
}

/// A window that opens in two hours starts nothing: every agent queues, the coordinator says
/// each node waits for the window, no node is admitted, cordoned or drained. Opening the window
/// (the policy edited to one around now) starts the rollout, which finishes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_closed_window_starts_nothing_until_it_opens() {
    let now = Timestamp::now();
    let window = |from: i64, to: i64| MaintenanceWindow {
        days: Vec::new(),
        start: utc_hhmm(now, SignedDuration::from_hours(from)),
        end: utc_hhmm(now, SignedDuration::from_hours(to)),
        time_zone: None,
    };
    let mut options = options(9, 52, 3, 2);
    rota_settings(&mut options).1.windows = vec![window(2, 3)];
    let began = std::time::Instant::now();
    let mut fleet = start(options).await;
    wait_all_waiting(&fleet, "WindowClosed").await;
    let closed = policy(&fleet);
    assert_eq!(condition(&closed, "WindowOpen").as_deref(), Some("False"));

    let started = fleet.rollout_started().unwrap();
    let audit = fleet.audit();
    let disrupted: Vec<_> = audit
        .nodes
        .iter()
        .filter(|r| r.time >= started && r.unavailable())
        .map(|r| r.node.clone())
        .collect();
    assert!(disrupted.is_empty(), "nodes taken down: {disrupted:?}");
    assert!(audit.evictions.is_empty(), "{:?}", audit.evictions);
    assert!(fleet.persisted_tokens().is_empty(), "nothing admitted");

    let mut open = spec(&fleet);
    open.windows = vec![window(-1, 1)];
    fleet.apply_policy(open).unwrap();
    let (report, took) = run(&fleet, Duration::from_secs(300), Duration::from_secs(90)).await;
    print_timing("a window opened", began.elapsed(), &report);
    println!(
        "rollout after the window opened: {:.1} s",
        took.as_secs_f64()
    );
    println!("{}", report.render());
    assert_eq!(
        condition(&policy(&fleet), "WindowOpen").as_deref(),
        Some("True")
    );
    assert_complete(&fleet, &report);
    assert_one_grant_per_node(&fleet);
    fleet.shutdown().await;
}
