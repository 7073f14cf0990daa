//! The controller honours its policies and its humans: windows, pause, the circuit breaker, and
//! the `rota.dev/` annotations on Nodes.

use std::sync::Arc;

use rota_core::clock::OffsetClock;

use std::time::Duration;

use anyhow::{Context, Result};
use jiff::Timestamp;
use jiff::civil::Time;
use jiff::tz::TimeZone;
use rota_core::model::{Operation, UpgradeReboot};
use rota_core::policy::crd::MaintenanceWindow;
use rota_core::slots::NodeState;

use crate::controller_support::{Cluster, Running, settings, spec, wait_until};

const WITHIN: Duration = Duration::from_secs(15);

/// Today's instant at `hh:mm:ss` UTC.
fn today_utc(time: &str) -> Result<Timestamp> {
    let time: Time = time.parse()?;
    let today = Timestamp::now().to_zoned(TimeZone::UTC).date();
    Ok(today.to_datetime(time).to_zoned(TimeZone::UTC)?.timestamp())
}

#[tokio::test]
async fn a_closed_window_admits_nothing_and_its_opening_admits() -> Result<()> {
    let cluster = Cluster::start(true).await?;
    cluster.add_node("a", &[("pool", "workers")])?;
    let mut policy = spec("workers");
    policy.windows = vec![MaintenanceWindow {
        days: Vec::new(),
        start: "22:00".into(),
        end: "23:00".into(),
        time_zone: Some("UTC".into()),
    }];
    cluster.create_policy("workers", policy)?;
    let opens = today_utc("22:00:00")?;
    // The controller's clock reads six seconds before the window opens.
    let clock = Arc::new(OffsetClock::reading(today_utc("21:59:54")?));
    let coordinator = Running::start(&cluster, settings(), clock).await?;
    coordinator.report("a", "a-boot-1").await?;
    coordinator.request("a", Operation::Reboot).await?;

    let waiting = coordinator
        .wait_view("a", WITHIN, |v| !v.waiting_reasons.is_empty())
        .await?;
    assert_eq!(waiting.state, NodeState::Queued);
    assert!(
        waiting
            .waiting_reasons
            .iter()
            .any(|r| r.contains("maintenance window closed until")),
        "{:?}",
        waiting.waiting_reasons
    );
    let (status, message) = cluster
        .condition("workers", "WindowOpen")
        .context("WindowOpen condition")?;
    assert_eq!(status, "False", "{message}");

    // Nothing but the controller's own timer wakes it at the opening.
    coordinator.wait_granted("a", WITHIN).await?;
    let slot: serde_json::Value = serde_json::from_str(
        cluster
            .annotations("a")?
            .get("rota.dev/slot")
            .context("slot annotation")?,
    )?;
    let admitted: Timestamp = slot["admittedAt"].as_str().context("admittedAt")?.parse()?;
    assert!(
        admitted >= opens,
        "admitted at {admitted}, the window opens at {opens}"
    );
    coordinator.stop().await
}

#[tokio::test]
async fn a_paused_rollout_admits_nothing_until_resumed() -> Result<()> {
    let cluster = Cluster::start(true).await?;
    cluster.add_node("a", &[("pool", "workers")])?;
    let mut policy = spec("workers");
    policy.paused = true;
    cluster.create_policy("workers", policy)?;
    let coordinator =
        Running::start(&cluster, settings(), Arc::new(OffsetClock::default())).await?;
    coordinator.report("a", "a-boot-1").await?;
    coordinator.request("a", Operation::Reboot).await?;
    let waiting = coordinator
        .wait_view("a", WITHIN, |v| !v.waiting_reasons.is_empty())
        .await?;
    assert_eq!(waiting.waiting_reasons, vec!["rollout paused".to_string()]);
    wait_until("Paused condition", WITHIN, || {
        let (status, _) = cluster.condition("workers", "Paused")?;
        (status == "True").then_some(())
    })
    .await?;
    assert_eq!(cluster.slot("a"), None);

    cluster.update_policy("workers", |s| s.paused = false)?;
    coordinator.wait_granted("a", WITHIN).await?;
    wait_until("PoolResumed event", WITHIN, || {
        cluster
            .events_about("workers")
            .iter()
            .any(|(reason, _)| reason == "PoolResumed")
            .then_some(())
    })
    .await?;
    coordinator.stop().await
}

/// Two failures (a reboot that did not change the boot id; a node that stays NotReady past
/// `readyTimeout`) keep their slots and open the breaker at `maxFailures: 2`. A human releases
/// the first, the second recovers by itself, and pausing and resuming closes the breaker.
#[tokio::test]
async fn failed_verifications_keep_their_slots_and_trip_the_breaker() -> Result<()> {
    let cluster = Cluster::start(true).await?;
    for node in ["a", "b", "c"] {
        cluster.add_node(node, &[("pool", "workers")])?;
    }
    let mut policy = spec("workers");
    policy.max_unavailable =
        Some(k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::Int(3));
    policy.max_failures = 2;
    policy.health.ready_timeout = Some("2s".into());
    cluster.create_policy("workers", policy)?;
    let coordinator =
        Running::start(&cluster, settings(), Arc::new(OffsetClock::default())).await?;
    for node in ["a", "b", "c"] {
        coordinator.report(node, &format!("{node}-boot-1")).await?;
    }

    coordinator.request("a", Operation::Reboot).await?;
    let a = coordinator.wait_granted("a", WITHIN).await?;
    coordinator.complete("a", a, true, Some("a-boot-1")).await?;
    let failed = coordinator
        .wait_view("a", WITHIN, |v| v.state == NodeState::Failed)
        .await?;
    assert!(failed.message.contains("boot id"), "{}", failed.message);

    coordinator.request("b", Operation::KubeletRestart).await?;
    let b = coordinator.wait_granted("b", WITHIN).await?;
    cluster.set_ready("b", false)?;
    coordinator.complete("b", b, true, None).await?;
    coordinator
        .wait_view("b", WITHIN, |v| v.state == NodeState::Verifying)
        .await?;
    let failed = coordinator
        .wait_view("b", WITHIN, |v| v.state == NodeState::Failed)
        .await?;
    assert!(failed.message.contains("not Ready"), "{}", failed.message);

    coordinator.request("c", Operation::Reboot).await?;
    let c = coordinator
        .wait_view("c", WITHIN, |v| !v.waiting_reasons.is_empty())
        .await?;
    assert!(
        c.waiting_reasons
            .iter()
            .any(|r| r.contains("circuit breaker open after 2 failures")),
        "{:?}",
        c.waiting_reasons
    );
    assert_eq!(cluster.slot("a").map(|s| s.1), Some("failed".into()));
    assert_eq!(cluster.slot("b").map(|s| s.1), Some("failed".into()));
    assert!(cluster.cordoned("a")? && cluster.cordoned("b")?);
    wait_until("CircuitOpen condition", WITHIN, || {
        let policy = cluster.policy("workers").ok()?;
        let (status, _) = cluster.condition("workers", "CircuitOpen")?;
        (status == "True" && policy.status?.failed == 2).then_some(())
    })
    .await?;
    wait_until("CircuitOpen event", WITHIN, || {
        cluster
            .events_about("workers")
            .iter()
            .any(|(reason, _)| reason == "CircuitOpen")
            .then_some(())
    })
    .await?;

    // b was only unhealthy: Ready again, it is released by itself. a needs a human.
    cluster.set_ready("b", true)?;
    coordinator
        .wait_view("b", WITHIN, |v| v.state == NodeState::Idle)
        .await?;
    wait_until("b uncordoned", WITHIN, || {
        (!cluster.cordoned("b").ok()?).then_some(())
    })
    .await?;
    assert_eq!(cluster.slot("a").map(|s| s.1), Some("failed".into()));
    cluster.annotate("a", "rota.dev/release", Some("true"))?;
    coordinator
        .wait_view("a", WITHIN, |v| v.state == NodeState::Idle)
        .await?;
    wait_until("release acknowledged", WITHIN, || {
        let annotations = cluster.annotations("a").ok()?;
        (!annotations.contains_key("rota.dev/release") && !cluster.cordoned("a").ok()?)
            .then_some(())
    })
    .await?;

    // The breaker holds until the rollout is paused and resumed.
    let c = coordinator
        .wait_view("c", WITHIN, |v| !v.waiting_reasons.is_empty())
        .await?;
    assert_eq!(c.state, NodeState::Queued);
    cluster.update_policy("workers", |s| s.paused = true)?;
    wait_until("Paused condition", WITHIN, || {
        let (status, _) = cluster.condition("workers", "Paused")?;
        (status == "True").then_some(())
    })
    .await?;
    cluster.update_policy("workers", |s| s.paused = false)?;
    coordinator.wait_granted("c", WITHIN).await?;
    coordinator.stop().await
}

/// A paused pool `workers` of these nodes, one at a time, with a running coordinator whose
/// agents have reported.
async fn paused_pool(nodes: &[&str]) -> Result<(Cluster, Running)> {
    let cluster = Cluster::start(true).await?;
    for node in nodes {
        cluster.add_node(node, &[("pool", "workers")])?;
    }
    let mut policy = spec("workers");
    policy.paused = true;
    cluster.create_policy("workers", policy)?;
    let coordinator =
        Running::start(&cluster, settings(), Arc::new(OffsetClock::default())).await?;
    for node in nodes {
        coordinator.report(node, &format!("{node}-boot-1")).await?;
    }
    Ok((cluster, coordinator))
}

#[tokio::test]
async fn a_manual_annotation_goes_before_agent_requests() -> Result<()> {
    let (cluster, coordinator) = paused_pool(&["a", "b", "c"]).await?;
    coordinator.request("a", Operation::Reboot).await?;
    coordinator
        .wait_view("a", WITHIN, |v| !v.waiting_reasons.is_empty())
        .await?;

    cluster.annotate(
        "b",
        "rota.dev/maintenance-requested",
        Some("kubelet-restart"),
    )?;
    cluster.annotate("c", "rota.dev/maintenance-requested", Some("reboot-now"))?;
    wait_until("manual request acknowledged", WITHIN, || {
        let annotations = cluster.annotations("b").ok()?;
        (!annotations.contains_key("rota.dev/maintenance-requested")).then_some(())
    })
    .await?;
    let b = coordinator
        .wait_view("b", WITHIN, |v| v.state == NodeState::Queued)
        .await?;
    assert_eq!(b.operation, Some(Operation::KubeletRestart));
    let c_events = wait_until("InvalidRequest event", WITHIN, || {
        let events = cluster.events_about("c");
        events
            .iter()
            .any(|(reason, _)| reason == "InvalidRequest")
            .then_some(events)
    })
    .await?;
    assert!(
        c_events
            .iter()
            .any(|(_, note)| note.contains("\"reboot-now\"")),
        "{c_events:?}"
    );
    assert_eq!(
        cluster
            .annotations("c")?
            .get("rota.dev/maintenance-requested")
            .map(String::as_str),
        Some("reboot-now"),
        "an invalid request changes nothing"
    );
    assert_eq!(
        coordinator.wait_view("c", WITHIN, |_| true).await?.state,
        NodeState::Idle
    );
    wait_until("MaintenanceRequested event", WITHIN, || {
        cluster
            .events_about("b")
            .iter()
            .any(|(reason, _)| reason == "MaintenanceRequested")
            .then_some(())
    })
    .await?;

    cluster.update_policy("workers", |s| s.paused = false)?;
    coordinator.wait_granted("b", WITHIN).await?;
    let a = coordinator
        .wait_view("a", WITHIN, |v| {
            v.waiting_reasons
                .iter()
                .any(|r| r.contains("maxUnavailable"))
        })
        .await?;
    assert_eq!(a.state, NodeState::Queued);
    coordinator.stop().await
}

/// A human's `reboot` annotation meets the agent's pending package upgrade on node `b`: one
/// request with the human's priority (before `a`, which asked first), and one slot that
/// upgrades, then always reboots.
#[tokio::test]
async fn a_manual_reboot_and_a_pending_upgrade_become_one_maintenance() -> Result<()> {
    let (cluster, coordinator) = paused_pool(&["a", "b"]).await?;
    let upgrade = Operation::PackageUpgrade {
        security_only: true,
        reboot: UpgradeReboot::IfRequired,
        packages: vec![],
    };
    let merged = Operation::PackageUpgrade {
        security_only: true,
        reboot: UpgradeReboot::Always,
        packages: vec![],
    };
    coordinator.request("a", Operation::Reboot).await?;
    coordinator.request("b", upgrade.clone()).await?;
    cluster.annotate("b", "rota.dev/maintenance-requested", Some("reboot"))?;
    let b = coordinator
        .wait_view("b", WITHIN, |v| v.operation.as_ref() == Some(&merged))
        .await?;
    assert_eq!(b.state, NodeState::Queued);
    assert!(
        b.message.contains("upgrades, then reboots"),
        "{}",
        b.message
    );
    // The agent asks again (a retry, a restart): nothing changes.
    let again = coordinator.request("b", upgrade).await?;
    assert_eq!(again.operation, Some(merged.clone()));

    cluster.update_policy("workers", |s| s.paused = false)?;
    let token = coordinator.wait_granted("b", WITHIN).await?;
    let granted = coordinator.wait_view("b", WITHIN, |_| true).await?;
    assert_eq!(granted.operation, Some(merged));
    assert_eq!(
        coordinator.wait_view("a", WITHIN, |_| true).await?.state,
        NodeState::Queued,
        "the merged request kept the human's priority"
    );
    cluster.set_boot_id("b", "b-boot-2")?;
    coordinator
        .complete("b", token, true, Some("b-boot-2"))
        .await?;
    coordinator
        .wait_view("b", WITHIN, |v| v.state == NodeState::Done)
        .await?;
    coordinator.wait_granted("a", WITHIN).await?;
    coordinator.stop().await
}

/// The controller resolves each node's pool: its agent gets the pool's policy with every facts
/// answer and with the grant; a node no pool selects gets none.
#[tokio::test]
async fn agents_get_their_pools_policy_with_facts_and_grants() -> Result<()> {
    use rota_core::model::NodePolicy;
    use rota_core::policy::crd::{RebootMode, UpgradeMode};

    let cluster = Cluster::start(true).await?;
    cluster.add_node("a", &[("pool", "workers")])?;
    cluster.add_node("stray", &[("pool", "nobody")])?;
    let mut workers = spec("workers");
    workers.upgrade.mode = UpgradeMode::All;
    workers.upgrade.holds = vec!["openssl".into()];
    workers.reboot.mode = RebootMode::Never;
    workers.reboot.sentinel_files = Some(vec!["/run/needs-reboot".into()]);
    workers.reboot.sentinel_command = vec!["/usr/local/bin/needs-reboot".into()];
    workers.reboot.command = vec!["/usr/local/sbin/reboot-now".into()];
    cluster.create_policy("workers", workers)?;
    let coordinator = Running::start(
        &cluster,
        settings(),
        Arc::new(rota_core::clock::SystemClock),
    )
    .await?;
    let want = NodePolicy {
        name: "workers".into(),
        upgrade_mode: UpgradeMode::All,
        holds: vec!["openssl".into()],
        sentinel_files: Some(vec!["/run/needs-reboot".into()]),
        sentinel_command: vec!["/usr/local/bin/needs-reboot".into()],
        reboot_command: vec!["/usr/local/sbin/reboot-now".into()],
        reboot_mode: RebootMode::Never,
        etcd: Default::default(),
    };
    // The first pass resolves the pools; until then the answer may carry none.
    let deadline = tokio::time::Instant::now() + WITHIN;
    while coordinator.report("a", "a-boot-1").await?.as_ref() != Some(&want) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the pool's policy never came with a facts answer"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(coordinator.report("stray", "s-boot-1").await?, None);

    coordinator.request("a", Operation::KubeletRestart).await?;
    let granted = coordinator
        .wait_view("a", WITHIN, |v| v.state == NodeState::Granted)
        .await?;
    assert_eq!(granted.policy.as_ref(), Some(&want));
    coordinator.stop().await
}
