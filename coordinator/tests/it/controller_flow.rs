//! The controller loop against the emulated API server: a node's whole maintenance, drains
//! blocked by a budget, restarts mid-drain, node deletion and expired leases.

use std::sync::Arc;

use rota_core::clock::OffsetClock;

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use anyhow::Result;
use jiff::SignedDuration;
use k8s_openapi::api::core::v1::Node;
use k8s_openapi::api::policy::v1::{PodDisruptionBudget, PodDisruptionBudgetSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use rota_core::model::Operation;
use rota_core::slots::NodeState;
use rota_sim::apiserver::DeleteOptions;

use crate::controller_support::{Cluster, NS, Running, Webhook, settings, spec, wait_until};
use rota_coordinator::kube_client::Clients;
use rota_coordinator::notify::{Notifier, NotifierConfig};
use tokio_util::sync::CancellationToken;

const WITHIN: Duration = Duration::from_secs(15);

#[tokio::test]
async fn a_node_is_drained_granted_verified_and_released() -> Result<()> {
    let cluster = Cluster::start(true).await?;
    cluster.add_node("a", &[("pool", "workers")])?;
    cluster.add_pod("web-a", "a", "web", 0)?;
    cluster.create_policy("workers", spec("workers"))?;
    let webhook = Webhook::start().await?;
    let stop_notifier = CancellationToken::new();
    let (notifier, _delivery) =
        Notifier::spawn(NotifierConfig::new(&webhook.url), stop_notifier.clone())?;
    let coordinator = Running::start_notifying(
        Clients::from_config(cluster.kube_config()?)?,
        settings(),
        Arc::new(OffsetClock::default()),
        notifier,
    )
    .await?;

    coordinator.report("a", "a-boot-1").await?;
    coordinator.request("a", Operation::Reboot).await?;
    let token = coordinator.wait_granted("a", WITHIN).await?;
    assert!(cluster.cordoned("a")?, "rota cordons before it grants");
    assert!(!cluster.pod_exists("web-a"), "the drain evicted the pod");

    cluster.set_boot_id("a", "a-boot-2")?;
    coordinator
        .complete("a", token, true, Some("a-boot-2"))
        .await?;
    coordinator
        .wait_view("a", WITHIN, |v| v.state == NodeState::Done)
        .await?;
    wait_until("uncordon", WITHIN, || {
        (!cluster.cordoned("a").ok()?).then_some(())
    })
    .await?;
    assert!(
        !cluster.annotations("a")?.contains_key("rota.dev/cordoned"),
        "the cordon mark goes with the cordon"
    );
    let reasons: BTreeSet<String> = wait_until("events", WITHIN, || {
        let reasons: BTreeSet<String> = cluster
            .events_about("a")
            .into_iter()
            .map(|(r, _)| r)
            .collect();
        reasons.contains("Uncordoned").then_some(reasons)
    })
    .await?;
    for reason in [
        "SlotQueued",
        "SlotAdmitted",
        "Cordoned",
        "Granted",
        "Verifying",
        "MaintenanceSucceeded",
        "Uncordoned",
    ] {
        assert!(
            reasons.contains(reason),
            "event {reason} missing: {reasons:?}"
        );
    }
    wait_until("status", WITHIN, || {
        let status = cluster.policy("workers").ok()?.status?;
        (status.done == 1 && status.nodes == 1 && status.in_progress == 0).then_some(())
    })
    .await?;
    let texts = wait_until("chat notifications", WITHIN, || {
        let texts = webhook.texts();
        (texts.len() >= 2).then_some(texts)
    })
    .await?;
    assert_eq!(
        texts,
        vec![
            "rota: rollout started in pool workers: 1 node to maintain".to_string(),
            "rota: rollout done in pool workers: 1 node maintained".to_string(),
        ]
    );
    stop_notifier.cancel();
    coordinator.stop().await
}

fn pdb(name: &str, app: &str) -> PodDisruptionBudget {
    PodDisruptionBudget {
        metadata: ObjectMeta {
            namespace: Some(NS.into()),
            name: Some(name.into()),
            ..ObjectMeta::default()
        },
        spec: Some(PodDisruptionBudgetSpec {
            min_available: Some(IntOrString::Int(1)),
            selector: Some(LabelSelector {
                match_labels: Some(BTreeMap::from([("app".to_string(), app.to_string())])),
                match_expressions: None,
            }),
            ..PodDisruptionBudgetSpec::default()
        }),
        status: None,
    }
}

/// A budget over the pods labelled `app=<app>` whose status allows one disruption while the API
/// server keeps refusing the eviction (its status lags its spec: the disruption controller of
/// this cluster is off): a drain of its pod cannot finish.
fn stuck_pdb(cluster: &Cluster, app: &str) -> Result<()> {
    cluster.store.create_as(&pdb(app, app))?;
    cluster
        .store
        .modify_status_as::<PodDisruptionBudget>(Some(NS), app, |p| {
            let status = p.status.get_or_insert_with(Default::default);
            status.disruptions_allowed = 1;
            status.current_healthy = 1;
            status.desired_healthy = 0;
            status.expected_pods = 1;
            status.observed_generation = Some(0);
        })?;
    Ok(())
}

/// A drain that gave its slot back is not retried within the test.
fn backoff_an_hour(policy: &mut rota_core::policy::MaintenancePolicySpec) {
    policy.drain.backoff.initial = Some("1h".into());
    policy.drain.backoff.max = Some("2h".into());
}

/// A budget the scheduler saw allowing one disruption but whose eviction the API server keeps
/// refusing (its status lags its spec: the disruption controller is stuck): the drain of `a`
/// cannot finish, gives its slot back with the budget named, and `b` goes.
#[tokio::test]
async fn a_drain_blocked_by_a_pdb_yields_its_slot_to_another_node() -> Result<()> {
    let cluster = Cluster::start(false).await?;
    cluster.add_node("a", &[("pool", "workers")])?;
    cluster.add_node("b", &[("pool", "workers")])?;
    cluster.add_pod("db-0", "a", "db", 0)?;
    cluster.add_pod("web-b", "b", "web", 0)?;
    stuck_pdb(&cluster, "db")?;
    let mut policy = spec("workers");
    backoff_an_hour(&mut policy);
    cluster.create_policy("workers", policy)?;
    let coordinator =
        Running::start(&cluster, settings(), Arc::new(OffsetClock::default())).await?;

    coordinator.report("a", "a-boot-1").await?;
    coordinator.report("b", "b-boot-1").await?;
    coordinator.request("a", Operation::Reboot).await?;
    coordinator
        .wait_view("a", WITHIN, |v| v.state == NodeState::Draining)
        .await?;
    coordinator.request("b", Operation::Reboot).await?;

    let b_token = coordinator.wait_granted("b", WITHIN).await?;
    let a = coordinator
        .wait_view("a", WITHIN, |v| {
            v.state == NodeState::Queued && !v.waiting_reasons.is_empty()
        })
        .await?;
    assert!(cluster.pod_exists("db-0"), "the budget kept the pod");
    assert!(
        a.waiting_reasons
            .iter()
            .any(|r| r.contains("backing off") && r.contains("shop/db")),
        "the waiting reason names the budget: {:?}",
        a.waiting_reasons
    );
    assert!(!cluster.cordoned("a")?, "a's cordon (rota's) was undone");
    assert!(b_token.0 > 1, "b got a fresh token: {b_token}");
    // DrainBlocked said what the drain waited for; DrainFailed why it gave up.
    for wanted in ["DrainBlocked", "DrainFailed"] {
        wait_until(wanted, WITHIN, || {
            cluster
                .events_about("a")
                .iter()
                .any(|(reason, note)| reason == wanted && note.contains("shop/db"))
                .then_some(())
        })
        .await?;
    }
    coordinator.stop().await
}

/// A coordinator stopped while a pod is still terminating; the next one resumes the drain with
/// the same token, and every token is issued once.
#[tokio::test]
async fn a_restarted_coordinator_resumes_the_drain_and_grants_nothing_twice() -> Result<()> {
    let cluster = Cluster::start(true).await?;
    cluster.add_node("a", &[("pool", "workers")])?;
    cluster.add_node("b", &[("pool", "workers")])?;
    cluster.add_pod("slow", "a", "slow", 30)?;
    cluster.create_policy("workers", spec("workers"))?;
    let mut tokens = cluster.store.subscribe_all();

    let first = Running::start(&cluster, settings(), Arc::new(OffsetClock::default())).await?;
    first.report("a", "a-boot-1").await?;
    first.request("a", Operation::Reboot).await?;
    wait_until("the eviction", WITHIN, || {
        cluster.pod_terminating("slow").then_some(())
    })
    .await?;
    assert_eq!(cluster.slot("a").map(|s| s.1), Some("draining".into()));
    first.stop().await?;

    let second = Running::start(&cluster, settings(), Arc::new(OffsetClock::default())).await?;
    second
        .wait_view("a", WITHIN, |v| v.state == NodeState::Draining)
        .await?;
    cluster.finish_pod("slow")?;
    let token = second.wait_granted("a", WITHIN).await?;
    assert_eq!(
        token.0, 1,
        "the resumed drain grants the slot admitted before"
    );

    second.report("a", "a-boot-1").await?;
    cluster.set_boot_id("a", "a-boot-2")?;
    second.complete("a", token, true, Some("a-boot-2")).await?;
    second
        .wait_view("a", WITHIN, |v| v.state == NodeState::Done)
        .await?;
    second.report("b", "b-boot-1").await?;
    second.request("b", Operation::KubeletRestart).await?;
    let b_token = second.wait_granted("b", WITHIN).await?;
    assert_eq!(b_token.0, 2);
    assert_eq!(cluster.counter(), Some(2));
    second.stop().await?;

    // Every slot annotation ever written: one node per token.
    let mut holders: BTreeMap<u64, BTreeSet<String>> = BTreeMap::new();
    while let Ok(event) = tokens.try_recv() {
        let object = &event.object;
        if object.get("kind").and_then(|k| k.as_str()) != Some("Node") {
            continue;
        }
        let node: Node = serde_json::from_value((**object).clone())?;
        let slot = node
            .metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get("rota.dev/slot"));
        if let Some(slot) = slot {
            let slot: serde_json::Value = serde_json::from_str(slot)?;
            if let Some(token) = slot.get("token").and_then(serde_json::Value::as_u64) {
                holders
                    .entry(token)
                    .or_default()
                    .insert(node.metadata.name.clone().unwrap_or_default());
            }
        }
    }
    assert_eq!(
        holders,
        BTreeMap::from([
            (1, BTreeSet::from(["a".to_string()])),
            (2, BTreeSet::from(["b".to_string()])),
        ])
    );
    Ok(())
}

#[tokio::test]
async fn a_deleted_node_frees_its_slot() -> Result<()> {
    let cluster = Cluster::start(true).await?;
    cluster.add_node("a", &[("pool", "workers")])?;
    cluster.add_node("b", &[("pool", "workers")])?;
    cluster.create_policy("workers", spec("workers"))?;
    let coordinator =
        Running::start(&cluster, settings(), Arc::new(OffsetClock::default())).await?;
    coordinator.report("a", "a-boot-1").await?;
    coordinator.report("b", "b-boot-1").await?;
    coordinator.request("a", Operation::Reboot).await?;
    coordinator.wait_granted("a", WITHIN).await?;
    coordinator.request("b", Operation::Reboot).await?;
    let b = coordinator
        .wait_view("b", WITHIN, |v| !v.waiting_reasons.is_empty())
        .await?;
    assert!(
        b.waiting_reasons
            .iter()
            .any(|r| r.contains("maxUnavailable")),
        "{:?}",
        b.waiting_reasons
    );

    cluster
        .store
        .delete_as::<Node>(None, "a", &DeleteOptions::default())?;
    coordinator.wait_granted("b", WITHIN).await?;
    coordinator.stop().await
}

/// The agent of a granted node stops renewing (the node went down for its reboot): the lease
/// expires, an Event says so, and the capacity stays taken.
#[tokio::test]
async fn an_expired_lease_of_a_node_that_is_down_keeps_its_capacity() -> Result<()> {
    let cluster = Cluster::start(true).await?;
    cluster.add_node("a", &[("pool", "workers")])?;
    cluster.add_node("b", &[("pool", "workers")])?;
    cluster.create_policy("workers", spec("workers"))?;
    let mut settings = settings();
    settings.lease_ttl = SignedDuration::from_secs(1);
    let coordinator = Running::start(&cluster, settings, Arc::new(OffsetClock::default())).await?;
    coordinator.report("a", "a-boot-1").await?;
    coordinator.report("b", "b-boot-1").await?;
    coordinator.request("a", Operation::Reboot).await?;
    coordinator.wait_granted("a", WITHIN).await?;
    cluster.set_ready("a", false)?;
    coordinator.request("b", Operation::Reboot).await?;

    wait_until("LeaseExpired event", WITHIN, || {
        cluster
            .events_about("a")
            .iter()
            .any(|(reason, _)| reason == "LeaseExpired")
            .then_some(())
    })
    .await?;
    let b = coordinator
        .wait_view("b", WITHIN, |v| !v.waiting_reasons.is_empty())
        .await?;
    assert_eq!(b.state, NodeState::Queued);
    assert!(
        b.waiting_reasons
            .iter()
            .any(|r| r.contains("maxUnavailable")),
        "{:?}",
        b.waiting_reasons
    );
    assert_eq!(cluster.slot("a").map(|s| s.1), Some("granted".into()));
    coordinator.stop().await
}

/// A node that does not come back from its reboot within `health.readyTimeout` fails its slot
/// (the breaker counts it). When it does come back and its agent reports the reboot from the new
/// boot, the controller verifies the node again, releases the slot with a `NodeRecovered`
/// Event and lifts its own cordon; the failure stays counted.
#[tokio::test]
async fn a_node_that_came_back_too_late_is_verified_again_and_released() -> Result<()> {
    let cluster = Cluster::start(true).await?;
    cluster.add_node("a", &[("pool", "workers")])?;
    let mut policy = spec("workers");
    policy.max_failures = 3;
    policy.health.ready_timeout = Some("1s".into());
    cluster.create_policy("workers", policy)?;
    let mut settings = settings();
    settings.lease_ttl = SignedDuration::from_secs(1);
    let coordinator = Running::start(&cluster, settings, Arc::new(OffsetClock::default())).await?;
    coordinator.report("a", "a-boot-1").await?;
    coordinator.request("a", Operation::Reboot).await?;
    let token = coordinator.wait_granted("a", WITHIN).await?;
    cluster.set_ready("a", false)?;
    let failed = coordinator
        .wait_view("a", WITHIN, |v| v.state == NodeState::Failed)
        .await?;
    assert!(
        failed.message.contains("stopped renewing"),
        "{}",
        failed.message
    );
    wait_until("the failure counted", WITHIN, || {
        (cluster.policy("workers").ok()?.status?.failed == 1).then_some(())
    })
    .await?;

    // Back, at last: the kubelet reports the new boot, the agent completes from it.
    cluster.set_boot_id("a", "a-boot-2")?;
    cluster.set_ready("a", true)?;
    let view = coordinator
        .complete("a", token, true, Some("a-boot-2"))
        .await?;
    assert_ne!(
        view.state,
        NodeState::Verifying,
        "no second verification run"
    );
    coordinator
        .wait_view("a", WITHIN, |v| v.state == NodeState::Idle)
        .await?;
    wait_until("uncordon", WITHIN, || {
        (!cluster.cordoned("a").ok()?).then_some(())
    })
    .await?;
    let recovered = cluster.wait_event("a", "NodeRecovered", WITHIN).await?;
    assert!(recovered.contains("healthy again"), "{recovered}");
    assert_eq!(cluster.slot("a"), None);
    let status = cluster.policy("workers")?.status.unwrap_or_default();
    assert_eq!(
        status.failed, 1,
        "a recovery does not undo the failure count"
    );
    coordinator.stop().await
}

/// A node a human cordoned before rota admitted it stays cordoned: after its maintenance, and
/// after a drain that could not finish gave its slot back. Both through the controller's own
/// cordon path (the admission, the drain task's cordon, the uncordon of leftover cordons).
#[tokio::test]
async fn a_humans_cordon_outlives_the_maintenance_and_a_drain_that_gave_up() -> Result<()> {
    let cluster = Cluster::start(false).await?;
    cluster.add_node("a", &[("pool", "workers")])?;
    cluster.add_node("b", &[("pool", "workers")])?;
    cluster.add_pod("db-0", "b", "db", 0)?;
    stuck_pdb(&cluster, "db")?;
    cluster.cordon("a")?;
    cluster.cordon("b")?;
    let mut policy = spec("workers");
    policy.max_unavailable = Some(IntOrString::Int(2));
    backoff_an_hour(&mut policy);
    cluster.create_policy("workers", policy)?;
    let coordinator =
        Running::start(&cluster, settings(), Arc::new(OffsetClock::default())).await?;
    coordinator.report("a", "a-boot-1").await?;
    coordinator.report("b", "b-boot-1").await?;

    // a: a whole maintenance.
    coordinator.request("a", Operation::Reboot).await?;
    let token = coordinator.wait_granted("a", WITHIN).await?;
    cluster.set_boot_id("a", "a-boot-2")?;
    coordinator
        .complete("a", token, true, Some("a-boot-2"))
        .await?;
    coordinator
        .wait_view("a", WITHIN, |v| v.state == NodeState::Done)
        .await?;

    // b: a drain the budget never lets finish gives its slot back. Its waiting reasons come
    // from a pass that saw it queued again, after that pass lifted rota's leftover cordons.
    coordinator.request("b", Operation::Reboot).await?;
    coordinator
        .wait_view("b", WITHIN, |v| v.state == NodeState::Draining)
        .await?;
    coordinator
        .wait_view("b", WITHIN, |v| {
            v.state == NodeState::Queued && !v.waiting_reasons.is_empty()
        })
        .await?;
    cluster.wait_event("b", "DrainFailed", WITHIN).await?;

    for node in ["a", "b"] {
        assert!(cluster.cordoned(node)?, "{node}: the human's cordon stays");
        assert!(
            !cluster.annotations(node)?.contains_key("rota.dev/cordoned"),
            "{node}: rota never called the cordon its own"
        );
        let events = cluster.events_about(node);
        assert!(
            !events
                .iter()
                .any(|(reason, _)| reason == "Cordoned" || reason == "Uncordoned"),
            "{node}: {events:?}"
        );
    }
    coordinator.stop().await
}
