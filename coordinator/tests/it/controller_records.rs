//! MaintenanceRecords against the emulated API server: the leader writes one per maintenance
//! and follows it phase by phase, a coordinator that starts later continues the same record,
//! and retention deletes what it no longer keeps (never a maintenance in progress).

use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use jiff::{SignedDuration, Timestamp};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::Api;
use kube::api::PostParams;
use rota_coordinator::kube_client::Clients;
use rota_core::clock::OffsetClock;
use rota_core::model::{NodeFacts, Operation, PackagePin, PendingPackage, UpgradeReboot};
use rota_core::records::{
    MaintenanceRecord, MaintenanceRecordSpec, RecordOrigin, RecordOutcome, RecordPhases, Retention,
};
use rota_core::slots::{Completion, NodeState};

use crate::controller_support::{Cluster, Running, settings, spec};

const WITHIN: Duration = Duration::from_secs(15);

fn records_api(cluster: &Cluster) -> Result<Api<MaintenanceRecord>> {
    Ok(Api::all(kube::Client::try_from(cluster.kube_config()?)?))
}

/// Waits until the record `name` satisfies `pred`.
async fn wait_record(
    api: &Api<MaintenanceRecord>,
    name: &str,
    pred: impl Fn(&MaintenanceRecordSpec) -> bool,
) -> Result<MaintenanceRecordSpec> {
    let deadline = tokio::time::Instant::now() + WITHIN;
    let mut last = None;
    while tokio::time::Instant::now() < deadline {
        if let Some(record) = api.get_opt(name).await? {
            if pred(&record.spec) {
                return Ok(record.spec);
            }
            last = Some(record.spec);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    anyhow::bail!("record {name} did not get there within {WITHIN:?}; last: {last:#?}")
}

fn facts(boot_id: &str) -> NodeFacts {
    NodeFacts {
        boot_id: boot_id.into(),
        kernel_running: "6.1.0-13-amd64".into(),
        kubelet_version: "1.33.1".into(),
        pending_upgrades: vec![PendingPackage {
            name: "openssl".into(),
            current_version: "3.0.11-1".into(),
            candidate_version: "3.0.15-1".into(),
            security: true,
            impact: rota_core::model::Impact::None,
            blocked: None,
        }],
        ..NodeFacts::default()
    }
}

fn upgrade() -> Operation {
    Operation::PackageUpgrade {
        security_only: true,
        reboot: UpgradeReboot::IfRequired,
        packages: vec![],
    }
}

fn changed() -> Completion {
    Completion {
        success: true,
        message: "1 package upgraded".into(),
        boot_id: Some("a-boot-1".into()),
        rebooted: false,
        changed: vec![PackagePin {
            name: "openssl".into(),
            version: "3.0.15-1".into(),
        }],
    }
}

#[tokio::test]
async fn a_maintenance_is_recorded_from_admission_to_verification() -> Result<()> {
    let cluster = Cluster::start(true).await?;
    cluster.add_node("a", &[("pool", "workers")])?;
    cluster.add_pod("web-a", "a", "web", 0)?;
    cluster.create_policy("workers", spec("workers"))?;
    let coordinator =
        Running::start(&cluster, settings(), Arc::new(OffsetClock::default())).await?;
    let api = records_api(&cluster)?;

    coordinator.report_facts("a", facts("a-boot-1")).await?;
    coordinator.request("a", upgrade()).await?;
    let token = coordinator.wait_granted("a", WITHIN).await?;
    let name = format!("a-{token}");
    let granted = wait_record(&api, &name, |r| r.phases.granted.is_some()).await?;
    assert_eq!(granted.outcome, RecordOutcome::InProgress);
    assert_eq!(granted.pods_evicted, 1);
    assert_eq!(granted.evicted_pods, ["shop/web-a"]);
    assert_eq!(granted.pending_packages.len(), 1);

    coordinator.complete_with("a", token, changed()).await?;
    coordinator
        .wait_view("a", WITHIN, |v| v.state == NodeState::Done)
        .await?;
    let record = wait_record(&api, &name, |r| r.outcome == RecordOutcome::Succeeded).await?;
    assert_eq!(record.node, "a");
    assert_eq!(record.pool.as_deref(), Some("workers"));
    assert_eq!(record.token, rota_core::records::build::token_value(token));
    assert_eq!(record.operation, "package-upgrade");
    assert_eq!(record.origin, RecordOrigin::Schedule);
    let RecordPhases {
        requested,
        admitted,
        drained,
        granted,
        completed,
        verified,
        failed,
        ended,
    } = &record.phases;
    for (phase, at) in [
        ("requested", requested),
        ("admitted", admitted),
        ("drained", drained),
        ("granted", granted),
        ("completed", completed),
        ("verified", verified),
        ("ended", ended),
    ] {
        assert!(at.is_some(), "phase {phase} missing: {:#?}", record.phases);
    }
    assert_eq!(*failed, None);
    assert!(admitted <= granted && granted <= completed && completed <= verified);
    assert_eq!(record.packages_changed.len(), 1);
    let openssl = &record.packages_changed[0];
    assert_eq!(
        (
            openssl.name.as_str(),
            openssl.from.as_str(),
            openssl.to.as_str(),
            openssl.security
        ),
        ("openssl", "3.0.11-1", "3.0.15-1", true)
    );
    assert_eq!(record.before.kubelet, "v1.33.1", "from status.nodeInfo");
    assert_eq!(
        record.before.kernel, "6.1.0-13-amd64",
        "from the agent's facts"
    );
    assert!(record.after.is_some());
    assert_eq!(record.etcd_snapshot, None);

    let text = coordinator.metrics.encode()?;
    let written = text
        .lines()
        .find_map(|l| l.strip_prefix("rota_maintenance_records_written_total "))
        .and_then(|v| v.parse::<u64>().ok())
        .context("records written metric")?;
    assert!(
        written >= 4,
        "{written} writes: admitted, granted, completed, verified"
    );
    coordinator.stop().await
}

/// A coordinator that starts after another granted the slot (a failover rebuilds the ledger
/// from its ConfigMaps) continues the record the other one started.
#[tokio::test]
async fn a_new_leader_continues_the_record() -> Result<()> {
    let cluster = Cluster::start(true).await?;
    cluster.add_node("a", &[("pool", "workers")])?;
    cluster.create_policy("workers", spec("workers"))?;
    let clock = Arc::new(OffsetClock::default());
    let first = Running::start(&cluster, settings(), clock.clone()).await?;
    let api = records_api(&cluster)?;
    first.report_facts("a", facts("a-boot-1")).await?;
    first.request("a", upgrade()).await?;
    let token = first.wait_granted("a", WITHIN).await?;
    let name = format!("a-{token}");
    let started = wait_record(&api, &name, |r| r.phases.granted.is_some()).await?;
    first.stop().await?;

    let second = Running::start(&cluster, settings(), clock).await?;
    second.report_facts("a", facts("a-boot-1")).await?;
    second.complete_with("a", token, changed()).await?;
    second
        .wait_view("a", WITHIN, |v| v.state == NodeState::Done)
        .await?;
    let record = wait_record(&api, &name, |r| r.outcome == RecordOutcome::Succeeded).await?;
    assert_eq!(record.phases.admitted, started.phases.admitted);
    assert_eq!(record.phases.granted, started.phases.granted);
    assert_eq!(record.pending_packages, started.pending_packages);
    assert_eq!(record.packages_changed.len(), 1);
    assert!(
        record.packages_changed[0].security,
        "joined with the facts at admission"
    );
    let all = api.list(&Default::default()).await?;
    assert_eq!(all.items.len(), 1, "one record per maintenance");
    second.stop().await
}

fn old_record(name: &str, days_ago: i64, ended: bool) -> Result<MaintenanceRecord> {
    let start = Timestamp::now() - SignedDuration::from_hours(24 * days_ago);
    let mut spec = MaintenanceRecordSpec {
        node: name.into(),
        operation: "reboot".into(),
        token: 1,
        ..MaintenanceRecordSpec::default()
    };
    spec.phases.admitted = Some(Time(start));
    if ended {
        spec.phases.ended = Some(Time(start + SignedDuration::from_secs(300)));
        spec.outcome = RecordOutcome::Succeeded;
    }
    Ok(MaintenanceRecord::new(name, spec))
}

#[tokio::test]
async fn retention_deletes_old_and_surplus_records_but_never_an_open_one() -> Result<()> {
    let cluster = Cluster::start(true).await?;
    let api = records_api(&cluster)?;
    for (name, days_ago, ended) in [
        ("ancient", 400, true),
        ("open-ancient", 400, false),
        ("old", 30, true),
        ("older", 31, true),
        ("recent", 1, true),
    ] {
        api.create(&PostParams::default(), &old_record(name, days_ago, ended)?)
            .await?;
    }
    let mut settings = settings();
    settings.records.retention = Retention {
        keep: 3,
        max_age: SignedDuration::from_hours(24 * 180),
    };
    let coordinator = Running::start_with(
        Clients::from_config(cluster.kube_config()?)?,
        settings,
        Arc::new(OffsetClock::default()),
    )
    .await?;
    // Newest first: recent, old, older | ancient, open-ancient. `ancient` is too old and beyond
    // the three kept; `open-ancient` has not ended.
    let deadline = tokio::time::Instant::now() + WITHIN;
    let left = loop {
        let mut names: Vec<String> = api
            .list(&Default::default())
            .await?
            .items
            .iter()
            .filter_map(|r| r.metadata.name.clone())
            .collect();
        names.sort();
        if names.len() <= 4 || tokio::time::Instant::now() >= deadline {
            break names;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(left, ["old", "older", "open-ancient", "recent"]);
    let text = coordinator.metrics.encode()?;
    assert!(
        text.contains("rota_maintenance_records_pruned_total 1"),
        "{text}"
    );
    coordinator.stop().await
}
