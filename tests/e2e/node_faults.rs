//! End to end: nodes rota cannot finish, or must not finish too early. A node that never comes
//! back from its reboot keeps its capacity and opens the circuit breaker; a node whose pod's
//! PodDisruptionBudget allows no disruption waits, named, without holding capacity, while the
//! others finish; a node back from a reboot quicker than the node-monitor grace period is not
//! released on its DaemonSet pods' status from before the reboot. And a node rebooted behind
//! rota's back is caught by the fleet's safety monitor.

// Helpers outside #[test] functions fail the test the same way the tests do.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use jiff::{SignedDuration, Timestamp};
use rota_core::model::SlotPhase;
use rota_core::slots::persist::SLOT_ANNOTATION;
use rota_sim::apiserver::{EventType, GroupResource, ListOptions, PatchKind, ResourceKey, meta};
use rota_sim::cluster::{Faults, Timings};
use rota_sim::demo::{Stopped, slot_phase};
use rota_tests::e2e::{
    self, Timeline, WAIT, annotation, assert_safe, condition, events_about, node, options, policy,
    poll_until, print_timing, rota_settings, set_faults, slot_holders, start, tokens_by_node,
    waiting_reason,
};
use serde_json::{Value, json};
use tokio::sync::broadcast::error::RecvError;

/// When the lease of `node`'s slot expires, as persisted.
fn lease_expiry(node: &Value) -> Option<Timestamp> {
    let slot: Value = serde_json::from_str(&annotation(node, SLOT_ANNOTATION)?).ok()?;
    slot.get("leaseExpiresAt")?.as_str()?.parse().ok()
}

/// The first control-plane node to be admitted never comes back from its reboot. Its
/// verification times out, the slot fails and stays held (also once its lease expired: the
/// capacity of a broken node is not freed), the circuit breaker opens at `maxFailures: 1`, and
/// no node is admitted after that; the nodes already in maintenance finish.
///
/// Every control-plane node is set never to return, because which of them is admitted first
/// depends on which agent asks first: the first one fails, and the breaker (and the
/// control-plane limit) keep the other two from ever being rebooted, so nodes are still queued
/// when the breaker opens however the workers' slot races.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_that_never_comes_back_pauses_the_pool() {
    // Two at a time: while the lost node fails (lease and ready timeout, about 8 s), the other
    // slot works through the workers.
    let mut options = options(12, 41, 2, 2);
    options.faults = ["cp-1", "cp-2", "cp-3"]
        .into_iter()
        .fold(Faults::none(), Faults::with_never_return);
    let (coordinators, spec) = rota_settings(&mut options);
    coordinators.lease_ttl = SignedDuration::from_secs(5);
    spec.max_failures = 1;
    spec.health.ready_timeout = Some("3s".into());
    let began = std::time::Instant::now();
    let fleet = start(options).await;
    let timeline = Timeline::start(&fleet);

    fleet
        .wait_for(
            "the circuit breaker to open",
            WAIT,
            |fleet| match condition(&policy(fleet), "CircuitOpen").as_deref() {
                Some("True") => Ok(()),
                other => Err(format!("CircuitOpen is {other:?}")),
            },
        )
        .await
        .unwrap();
    let opened = poll_until(
        "the timeline to see the breaker open",
        WAIT,
        Duration::from_millis(10),
        || timeline.circuit_opened(),
    )
    .await;
    let total = fleet.scenario().nodes.len() as i64;
    let holders = slot_holders(&fleet);
    let [lost] = holders
        .iter()
        .filter(|n| n.starts_with("cp-"))
        .collect::<Vec<_>>()[..]
    else {
        panic!("one control-plane node holds a slot when the breaker opens: {holders:?}");
    };
    let lost = lost.clone();
    let lost = lost.as_str();
    // Settled: only the lost node holds a slot (failed, its lease expired), and the coordinator
    // says every other node not done waits for the breaker.
    let waiting = fleet
        .wait_for("the pool to settle behind the breaker", WAIT, |fleet| {
            let holders = slot_holders(fleet);
            let lost_node = node(fleet, lost);
            let done = fleet.done_nodes().len() as i64;
            let policy = policy(fleet);
            let circuit = waiting_reason(&policy, "CircuitOpen").map(|(count, _)| count);
            let expired = lease_expiry(&lost_node).is_some_and(|t| t < fleet.store().now());
            if holders.len() == 1
                && slot_phase(&lost_node) == Some(SlotPhase::Failed)
                && expired
                && circuit == Some(total - done - 1)
            {
                Ok(circuit.unwrap_or(0))
            } else {
                Err(format!(
                    "holders {holders:?}, {lost} {:?} (lease expired: {expired}), {done} done, waiting for the breaker: {circuit:?}",
                    slot_phase(&lost_node)
                ))
            }
        })
        .await
        .unwrap();
    let report = fleet.report(Stopped::Stalled);
    print_timing("a node that never comes back", began.elapsed(), &report);
    println!("{}", report.render());

    assert!(
        waiting > 0,
        "some nodes were still queued when the breaker opened"
    );
    let admitted_after = timeline.tokens_after(opened);
    assert!(
        admitted_after.is_empty(),
        "admitted after the breaker opened: {admitted_after:?}"
    );
    let lost_node = node(&fleet, lost);
    assert_eq!(slot_phase(&lost_node), Some(SlotPhase::Failed));
    assert!(!meta::node_ready(&lost_node), "{lost} is still down");
    assert_eq!(report.nodes_failed, 1, "{}", report.render());
    assert!(
        report.failed_nodes[0].starts_with(lost),
        "{:?}",
        report.failed_nodes
    );
    assert_eq!(report.nodes_done as i64, total - waiting - 1);
    assert_safe(&fleet, &report);
    fleet.shutdown().await;
}

/// The scenario's `license-server` pod runs on one worker under a PodDisruptionBudget with
/// `minAvailable: 1` and one replica: that node can never be drained. It waits with the budget
/// named and holds no capacity (no slot, not cordoned); every other node finishes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pdb_allowing_no_disruption_holds_back_only_its_node() {
    let mut options = options(9, 42, 2, 2);
    options.keep_blocked_pdb = true;
    let (coordinators, _) = rota_settings(&mut options);
    coordinators.drain_blocked_timeout = Duration::from_secs(2);
    let began = std::time::Instant::now();
    let fleet = start(options).await;
    let blocked = fleet.scenario().blocked_node.clone().unwrap();
    let others = fleet.scenario().nodes.len() - 1;
    fleet
        .wait_for("every other node done", WAIT, |fleet| {
            let done = fleet.done_nodes();
            if done.len() == others && !done.contains(&blocked) {
                Ok(())
            } else {
                Err(format!("not done: {:?}", fleet.not_done_reasons()))
            }
        })
        .await
        .unwrap();
    let why = fleet
        .wait_for("the blocked node to wait on its budget", WAIT, |fleet| {
            let examples = waiting_reason(&policy(fleet), "PdbBudget")
                .map(|(_, examples)| examples)
                .unwrap_or_default();
            let node = node(fleet, &blocked);
            match examples.get(&blocked) {
                Some(why) if slot_phase(&node).is_none() && !meta::node_unschedulable(&node) => {
                    Ok(why.clone())
                }
                _ => Err(format!(
                    "{blocked}: slot {:?}, waiting reasons {:?}",
                    slot_phase(&node),
                    policy(fleet).pointer("/status/waitingReasons")
                )),
            }
        })
        .await
        .unwrap();
    let report = fleet.report(Stopped::Stalled);
    print_timing("a PDB allowing no disruption", began.elapsed(), &report);
    println!("{}", report.render());
    println!(
        "{blocked} waits: {why}; grants: {:?}",
        e2e::tokens_by_node(&fleet).get(&blocked)
    );
    assert!(why.contains("license-server"), "{why}");
    assert_eq!(report.nodes_done, others, "{}", report.render());
    assert_safe(&fleet, &report);
    fleet.shutdown().await;
}

/// The same budget, relaxed (`minAvailable: 0`) until rota admits the node, then tightened
/// again while the drain starts (the API is slowed so that no eviction is served before): the
/// drain is refused, gives its slot back within the blocked timeout, uncordons the node and
/// names the budget; the node then waits on it while every other node finishes. The pod is
/// never evicted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drain_blocked_by_a_pdb_gives_its_slot_back() {
    let mut options = options(9, 43, 2, 2);
    options.keep_blocked_pdb = true;
    let (coordinators, _) = rota_settings(&mut options);
    coordinators.drain_blocked_timeout = Duration::from_secs(2);
    let began = std::time::Instant::now();
    let fleet = start(options).await;
    let blocked = fleet.scenario().blocked_node.clone().unwrap();
    let budget = ResourceKey::new(
        GroupResource::new("policy", "poddisruptionbudgets"),
        Some("legacy"),
        "license-server",
    );
    let set_min_available = |n: i64| {
        fleet
            .store()
            .patch(
                &budget,
                &PatchKind::Merge,
                &json!({"spec": {"minAvailable": n}}),
            )
            .unwrap();
    };
    set_faults(&fleet, |f| f.api.latency = Duration::from_millis(300));
    set_min_available(0);
    fleet
        .wait_node_phase(&blocked, SlotPhase::Draining, WAIT)
        .await
        .unwrap();
    set_min_available(1);
    set_faults(&fleet, |f| f.api.latency = Duration::ZERO);

    let others = fleet.scenario().nodes.len() - 1;
    let why = fleet
        .wait_for("the others done, the blocked node waiting", WAIT, |fleet| {
            let done = fleet.done_nodes();
            let node = node(fleet, &blocked);
            let examples = waiting_reason(&policy(fleet), "PdbBudget")
                .map(|(_, examples)| examples)
                .unwrap_or_default();
            // Events are recorded in the background: wait for the one of the slot given back.
            let events = events_about(fleet, &blocked);
            let given_back = events
                .iter()
                .any(|(_, note)| note.contains("license-server") && note.contains("given back"));
            // The cordon lifted after the give-back says so, not "after maintenance".
            let uncordoned = events.iter().any(|(reason, note)| {
                reason == "Uncordoned" && note.contains("gave its slot back")
            });
            match examples.get(&blocked) {
                Some(why)
                    if done.len() == others
                        && given_back
                        && uncordoned
                        && slot_phase(&node).is_none()
                        && !meta::node_unschedulable(&node) =>
                {
                    Ok(why.clone())
                }
                _ => Err(format!(
                    "{} done; {blocked}: slot {:?}, cordoned {}, slot given back {given_back}, uncordon event {uncordoned}; waiting: {:?}",
                    done.len(),
                    slot_phase(&node),
                    meta::node_unschedulable(&node),
                    policy(fleet).pointer("/status/waitingReasons")
                )),
            }
        })
        .await
        .unwrap();
    let report = fleet.report(Stopped::Stalled);
    print_timing("a drain blocked by a PDB", began.elapsed(), &report);
    println!("{}", report.render());
    let events = events_about(&fleet, &blocked);
    println!("{blocked} waits: {why}\nevents: {events:#?}");

    assert!(why.contains("license-server"), "{why}");
    assert!(
        !events
            .iter()
            .any(|(_, note)| note.contains("after maintenance")),
        "{blocked} was never maintained: {events:?}"
    );
    assert_eq!(
        tokens_by_node(&fleet).get(&blocked).map(|t| t.len()),
        Some(1),
        "{blocked} was admitted once: {:?}",
        tokens_by_node(&fleet)
    );
    assert!(
        !fleet
            .audit()
            .evictions
            .iter()
            .any(|e| e.pod.starts_with("license-server")),
        "the license server was never evicted"
    );
    assert_eq!(fleet.maintenance_counts()[&blocked], 0);
    assert_eq!(report.nodes_done, others, "{}", report.render());
    assert_safe(&fleet, &report);
    fleet.shutdown().await;
}

/// A node rebooted behind rota's back (rota paused, nothing drained): the fleet's safety
/// monitor sees the pods lost with it, and the report — which takes its safety numbers from
/// the monitor — says the invariants broke, while rota itself maintained nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reboot_behind_rotas_back_is_caught_by_the_monitor() {
    use rota_agent::host::{Host, RebootMethod};
    let mut options = options(6, 5, 1, 1);
    rota_settings(&mut options).1.paused = true;
    let fleet = start(options).await;
    let victim = e2e::workers(&fleet)
        .into_iter()
        .find(|n| {
            rota_sim::cluster::pods_on(fleet.store(), n)
                .iter()
                .any(|p| meta::namespace(p) == "web" || meta::namespace(p) == "shop")
        })
        .expect("a worker running a Deployment's pod");
    fleet
        .cluster()
        .unwrap()
        .host(&victim)
        .unwrap()
        .reboot(&RebootMethod::Systemctl)
        .unwrap();
    let verdict = fleet
        .monitor()
        .unwrap()
        .wait_for("the reboot and its lost pods", WAIT, |v| {
            (v.reboots.get(&victim) == Some(&1) && !v.pods_lost_to_reboots.is_empty())
                .then(|| v.clone())
        })
        .await
        .unwrap();
    assert!(
        verdict
            .pods_lost_to_reboots
            .iter()
            .all(|p| p.node == victim),
        "{}",
        verdict.render()
    );
    let report = fleet.report(Stopped::Stalled);
    assert_eq!(
        report.pods_lost_to_reboots,
        verdict.pods_lost_to_reboots.len()
    );
    assert!(!report.invariants_hold(), "{}", report.render());
    assert!(fleet.persisted_tokens().is_empty(), "rota granted nothing");
    fleet.shutdown().await;
}

/// A DaemonSet pod as a release found it: name, Ready, restartCount.
type DaemonPodState = (String, bool, i64);

/// What the tracker of [`the_health_gate_waits_for_daemon_pods_restarted_after_the_reboot`]
/// saw: per release, the node's DaemonSet pods then.
#[derive(Debug, Default)]
struct Releases {
    seen: Vec<(String, Vec<DaemonPodState>)>,
    /// A node was Ready with a new boot id while a DaemonSet pod of it still showed Ready from
    /// before its reboot (the window the gate must not pass in).
    stale_window: bool,
    /// The event stream lagged: the record is incomplete.
    lagged: bool,
}

fn is_daemon_pod(pod: &Value) -> bool {
    meta::controller_ref(pod).and_then(|r| r["kind"].as_str()) == Some("DaemonSet")
}

fn restart_count(pod: &Value) -> i64 {
    pod.pointer("/status/containerStatuses/0/restartCount")
        .and_then(Value::as_i64)
        .unwrap_or(0)
}

/// A reboot quicker than the node-monitor grace period never turns the node `Unknown`, so its
/// pods are never marked not Ready: after the boot the node is Ready with its new boot id while
/// its DaemonSet pods still show `Ready=True` from before, until the kubelet's first pod sync.
/// rota's health gate must not pass on that stale status: at every release, followed event by
/// event, the node's DaemonSet pods had restarted (`restartCount` ≥ 1) and were Ready again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_health_gate_waits_for_daemon_pods_restarted_after_the_reboot() {
    let mut options = options(6, 44, 1, 1);
    options.timings = Timings {
        reboot: Duration::from_millis(400),
        node_ready: Duration::from_millis(100),
        node_monitor_grace: Duration::from_secs(5),
        pod_resync: Duration::from_millis(1500),
        ..Timings::default()
    };
    let began = std::time::Instant::now();
    let fleet = start(options).await;
    let store = fleet.store().clone();
    let mut events = store.subscribe_all();
    let nodes = GroupResource::core("nodes");
    let pods = GroupResource::core("pods");
    // The state the events start from.
    let mut held: HashMap<String, bool> = HashMap::new();
    let mut boot_ids: HashMap<String, String> = HashMap::new();
    for n in store
        .list(&nodes, None, &ListOptions::default())
        .unwrap()
        .items
    {
        held.insert(
            meta::name(&n).to_string(),
            annotation(&n, SLOT_ANNOTATION).is_some(),
        );
        boot_ids.insert(
            meta::name(&n).to_string(),
            meta::str_at(&n, "/status/nodeInfo/bootID").to_string(),
        );
    }
    let mut daemon_pods: HashMap<String, Arc<Value>> = store
        .list(&pods, None, &ListOptions::default())
        .unwrap()
        .items
        .into_iter()
        .filter(|p| is_daemon_pod(p))
        .map(|p| (meta::uid(&p).to_string(), p))
        .collect();
    let mut node_objects: HashMap<String, Arc<Value>> = HashMap::new();
    let record = Arc::new(Mutex::new(Releases::default()));
    let tracker = {
        let record = record.clone();
        tokio::spawn(async move {
            loop {
                let event = match events.recv().await {
                    Ok(event) => event,
                    Err(RecvError::Lagged(_)) => {
                        record.lock().unwrap().lagged = true;
                        continue;
                    }
                    Err(RecvError::Closed) => return,
                };
                let object = event.object.clone();
                let on_node = |pods: &HashMap<String, Arc<Value>>, node: &str| -> Vec<Arc<Value>> {
                    pods.values()
                        .filter(|p| meta::str_at(p, "/spec/nodeName") == node)
                        .cloned()
                        .collect()
                };
                if event.resource == pods && is_daemon_pod(&object) {
                    if event.event_type == EventType::Deleted {
                        daemon_pods.remove(meta::uid(&object));
                    } else {
                        daemon_pods.insert(meta::uid(&object).to_string(), object.clone());
                    }
                } else if event.resource == nodes && event.event_type != EventType::Deleted {
                    let name = meta::name(&object).to_string();
                    let now_held = annotation(&object, SLOT_ANNOTATION).is_some();
                    let was_held = held.insert(name.clone(), now_held).unwrap_or(false);
                    if was_held && !now_held {
                        let state = on_node(&daemon_pods, &name)
                            .iter()
                            .map(|p| {
                                (
                                    meta::name(p).to_string(),
                                    meta::pod_ready(p),
                                    restart_count(p),
                                )
                            })
                            .collect();
                        record.lock().unwrap().seen.push((name.clone(), state));
                    }
                    node_objects.insert(name, object.clone());
                } else {
                    continue;
                }
                // The stale window: Ready with a new boot id, a DaemonSet pod Ready from before.
                for (name, node) in &node_objects {
                    let rebooted = boot_ids.get(name).map(String::as_str)
                        != Some(meta::str_at(node, "/status/nodeInfo/bootID"));
                    if rebooted
                        && meta::node_ready(node)
                        && on_node(&daemon_pods, name)
                            .iter()
                            .any(|p| meta::pod_ready(p) && restart_count(p) == 0)
                    {
                        record.lock().unwrap().stale_window = true;
                    }
                }
            }
        })
    };
    let (report, took) = e2e::run(&fleet, WAIT, Duration::from_secs(60)).await;
    print_timing(
        "the health gate after quick reboots",
        took.max(began.elapsed()),
        &report,
    );
    e2e::assert_complete(&fleet, &report);
    tracker.abort();
    let record = std::mem::take(&mut *record.lock().unwrap());
    assert!(
        !record.lagged,
        "the event stream lagged; the record is incomplete"
    );
    assert!(
        record.stale_window,
        "no node was ever Ready after its reboot with stale DaemonSet pods: the scenario did not test the gate"
    );
    assert_eq!(
        record.seen.len(),
        fleet.scenario().nodes.len(),
        "{record:?}"
    );
    for (node, pods) in &record.seen {
        assert!(
            !pods.is_empty(),
            "{node} had no DaemonSet pod at its release"
        );
        for (pod, ready, restarts) in pods {
            assert!(
                *ready && *restarts >= 1,
                "{node} was released while its DaemonSet pod {pod} showed Ready={ready} with {restarts} restarts: the gate passed on status from before the reboot"
            );
        }
    }
    fleet.shutdown().await;
}

/// Pods that take longer to stop than the drain's timeout (web/cart's: 1,000 simulated seconds
/// against the demo policy's 15 s, which stand for 15 minutes), evicted one at a time under
/// their budget, on a cluster of three workers and `maxUnavailable: 1` (seed 4 of the fault
/// campaign, where rota once gave the half-drained node back, uncordoned it, drained the next
/// node onto it and traded the same pods between two nodes until the run timed out). A drain
/// that times out after pods went keeps its slot and its cordon and drains again; a pod whose
/// eviction was accepted is waited for as long as its grace period allows (up to the drain's
/// length again): every node is done
/// once, no slot is given back, and each node's token stays the one it was admitted with.
/// (Either rule alone rescues this cluster; with neither, the test fails as the campaign did.
/// `rota_core::controller::drained` tests the first on its own.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pods_slower_to_stop_than_the_drain_timeout_are_not_traded_between_nodes() {
    let mut options = options(6, 4, 1, 1);
    options.slow_termination = vec![("web".into(), "cart".into(), 1000)];
    let fleet = start(options).await;
    let (report, took) = e2e::run(&fleet, Duration::from_secs(300), WAIT).await;
    print_timing("pods slower to stop than the drain timeout", took, &report);
    e2e::assert_complete(&fleet, &report);
    let workers = e2e::workers(&fleet);
    for worker in &workers {
        let given_back: Vec<(String, String)> = events_about(&fleet, worker)
            .into_iter()
            .filter(|(_, note)| note.contains("given back"))
            .collect();
        assert!(
            given_back.is_empty(),
            "{worker} gave its slot back: {given_back:?}"
        );
    }
    let tokens = tokens_by_node(&fleet);
    for worker in &workers {
        assert_eq!(
            tokens.get(worker).map(|t| t.len()),
            Some(1),
            "{worker} was admitted once: {tokens:?}"
        );
    }
}
