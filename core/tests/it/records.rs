//! Maintenance records: the fold of a slot's transitions (driven by the real ledger), the
//! retention decision, the change report and the requester from `managedFields`.

use jiff::{SignedDuration, Timestamp};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{FieldsV1, ManagedFieldsEntry, Time};
use proptest::prelude::*;
use rota_core::model::{
    FencingToken, Impact, NodeFacts, Operation, Origin, PackagePin, PendingPackage, UpgradeReboot,
};
use rota_core::records::origin::annotation_manager;
use rota_core::records::{
    self, Kept, MaintenanceRecordSpec, NodeVersions, PackageChange, RecordContext, RecordOrigin,
    RecordOutcome, Retention, record_name, to_prune,
};
use rota_core::slots::{CompletionReport, Ledger, Release, Transition, TransitionReason};
use serde_json::json;

type TestResult = Result<(), Box<dyn std::error::Error>>;

fn at(secs: i64) -> Timestamp {
    Timestamp::constant(1_700_000_000 + secs, 0)
}

fn upgrade() -> Operation {
    Operation::PackageUpgrade {
        security_only: false,
        reboot: UpgradeReboot::IfRequired,
        packages: vec![],
    }
}

fn pending(name: &str, from: &str, to: &str, security: bool) -> PendingPackage {
    PendingPackage {
        name: name.into(),
        current_version: from.into(),
        candidate_version: to.into(),
        security,
        impact: Impact::of_package(name),
        blocked: None,
    }
}

fn facts() -> NodeFacts {
    NodeFacts {
        boot_id: "boot-1".into(),
        kernel_running: "6.1.0-13-amd64".into(),
        kubelet_version: "1.32.1".into(),
        os_image: "Debian GNU/Linux 12".into(),
        pending_upgrades: vec![
            pending("openssl", "3.0.11-1", "3.0.15-1", true),
            pending("linux-image-amd64", "6.1.0-13", "6.1.0-18", true),
            pending("curl", "7.88.1-10", "7.88.1-11", false),
        ],
        ..NodeFacts::default()
    }
}

fn node_info(kernel: &str) -> NodeVersions {
    NodeVersions {
        kernel: kernel.into(),
        kubelet: "v1.32.1".into(),
        os_image: "Debian GNU/Linux 12 (bookworm)".into(),
    }
}

fn completion(success: bool, secs: i64) -> CompletionReport {
    CompletionReport {
        success,
        message: "upgraded".into(),
        boot_id: Some("boot-2".into()),
        rebooted: true,
        changed_packages: 3,
        changed: vec![
            PackagePin {
                name: "openssl".into(),
                version: "3.0.15-1".into(),
            },
            PackagePin {
                name: "linux-image-amd64".into(),
                version: "6.1.0-18".into(),
            },
            PackagePin {
                name: "libfoo".into(),
                version: "2.0".into(),
            },
        ],
        at: at(secs),
    }
}

/// Every transition of a manual package upgrade that succeeds, each with the context the
/// coordinator would give it.
fn successful_maintenance() -> Result<Vec<(Transition, RecordContext)>, Box<dyn std::error::Error>>
{
    let mut ledger = Ledger::new(SignedDuration::from_secs(60));
    let mut steps = Vec::new();
    let requested = ledger
        .request("n1", upgrade(), Origin::Manual, at(0))?
        .ok_or("no transition")?;
    steps.push((requested, RecordContext::default()));
    let (token, admitted) = ledger.admit("n1", at(10), Some("boot-1".into()), true)?;
    assert_eq!(token, FencingToken(1));
    steps.push((
        admitted,
        RecordContext {
            pool: Some("workers".into()),
            requested_by: Some("kubectl-annotate".into()),
            facts: Some(facts()),
            node: Some(node_info("6.1.0-13-amd64")),
            ..RecordContext::default()
        },
    ));
    let drained = ledger.drained("n1", token, at(40))?;
    steps.push((
        drained,
        RecordContext {
            pool: Some("workers".into()),
            evicted: Some(vec!["default/web-1".into(), "default/web-2".into()]),
            drained_at: Some(at(39)),
            ..RecordContext::default()
        },
    ));
    let completed = ledger
        .complete("n1", token, completion(true, 100))?
        .ok_or("no transition")?;
    steps.push((completed, RecordContext::default()));
    let verified = ledger.verified("n1", token, at(130))?;
    steps.push((
        verified,
        RecordContext {
            node: Some(node_info("6.1.0-18-amd64")),
            ..RecordContext::default()
        },
    ));
    Ok(steps)
}

fn fold(steps: &[(Transition, RecordContext)]) -> Option<MaintenanceRecordSpec> {
    let mut record: Option<MaintenanceRecordSpec> = None;
    for (transition, context) in steps {
        match &mut record {
            Some(spec) => records::apply(spec, transition, context),
            None => record = records::start(transition, context),
        }
    }
    record
}

#[test]
fn the_etcd_snapshot_the_admission_waited_for_is_recorded() -> TestResult {
    let mut steps = successful_maintenance()?;
    let snapshot = rota_core::model::EtcdSnapshot {
        path: "/var/lib/rota/etcd-snapshots/etcd-snapshot-20231114T221325Z.db".into(),
        size_bytes: 2_097_152,
        revision: 48_211,
        hash: 0x9d2c_41f0,
        total_keys: 1_312,
        taken_at: at(5),
    };
    if let Some(facts) = steps[1].1.facts.as_mut() {
        facts.etcd = rota_core::model::EtcdFacts {
            member: rota_core::model::EtcdMember::Stacked,
            snapshot: Some(snapshot),
            snapshot_error: None,
        };
    }
    let spec = fold(&steps).ok_or("no record")?;
    assert_eq!(
        spec.etcd_snapshot.as_deref(),
        Some(
            "/var/lib/rota/etcd-snapshots/etcd-snapshot-20231114T221325Z.db (saved \
             2023-11-14T22:13:25Z, revision 48211, 1312 keys, hash 9d2c41f0, 2097152 bytes)"
        )
    );
    Ok(())
}

#[test]
fn a_successful_maintenance_is_recorded_phase_by_phase() -> TestResult {
    let spec = fold(&successful_maintenance()?).ok_or("no record")?;
    assert_eq!(spec.node, "n1");
    assert_eq!(spec.token, 1);
    assert_eq!(spec.pool.as_deref(), Some("workers"));
    assert_eq!(spec.operation, "package-upgrade");
    assert_eq!(spec.operation_detail, "all updates; reboot if required");
    assert_eq!(spec.origin, RecordOrigin::Manual);
    assert_eq!(spec.requested_by, "kubectl-annotate");
    let time = |s| Some(Time(at(s)));
    assert_eq!(spec.phases.requested, time(0));
    assert_eq!(spec.phases.admitted, time(10));
    assert_eq!(spec.phases.drained, time(39));
    assert_eq!(spec.phases.granted, time(40));
    assert_eq!(spec.phases.completed, time(100));
    assert_eq!(spec.phases.verified, time(130));
    assert_eq!(spec.phases.ended, time(130));
    assert_eq!(spec.phases.failed, None);
    assert_eq!(spec.pods_evicted, 2);
    assert_eq!(spec.evicted_pods, ["default/web-1", "default/web-2"]);
    assert_eq!(spec.before.kernel, "6.1.0-13-amd64");
    assert_eq!(spec.before.kubelet, "v1.32.1");
    assert_eq!(
        spec.after.as_ref().map(|a| a.kernel.as_str()),
        Some("6.1.0-18-amd64")
    );
    assert_eq!(spec.pending_packages.len(), 3);
    let change = |name: &str, from: &str, to: &str, security| PackageChange {
        name: name.into(),
        from: from.into(),
        to: to.into(),
        security,
    };
    assert_eq!(
        spec.packages_changed,
        [
            change("openssl", "3.0.11-1", "3.0.15-1", true),
            change("linux-image-amd64", "6.1.0-13", "6.1.0-18", true),
            change("libfoo", "", "2.0", false),
        ]
    );
    assert_eq!(spec.packages_changed_count, 3);
    assert_eq!(spec.rebooted, Some(true));
    assert_eq!(
        spec.etcd_snapshot, None,
        "a worker: no etcd member, no snapshot"
    );
    assert_eq!(spec.outcome, RecordOutcome::Succeeded);
    assert_eq!(spec.duration, "2m0s");
    assert!(spec.reason.contains("verified"), "{}", spec.reason);
    Ok(())
}

#[test]
fn applying_a_transition_again_changes_nothing() -> TestResult {
    let steps = successful_maintenance()?;
    let once = fold(&steps);
    let twice: Vec<_> = steps.iter().flat_map(|s| [s.clone(), s.clone()]).collect();
    assert_eq!(fold(&twice), once);
    Ok(())
}

/// A coordinator that took over reads the stored record and applies the transitions it sees:
/// the record ends as if one coordinator had written it.
#[test]
fn a_new_leader_continues_the_stored_record() -> TestResult {
    let steps = successful_maintenance()?;
    let whole = fold(&steps).ok_or("no record")?;
    for split in 2..steps.len() {
        let first = fold(&steps[..split]).ok_or("no record")?;
        let stored: MaintenanceRecordSpec = serde_json::from_value(serde_json::to_value(&first)?)?;
        let mut continued = stored;
        for (transition, context) in &steps[split..] {
            records::apply(&mut continued, transition, context);
        }
        assert_eq!(continued, whole, "split after {split} transitions");
    }
    // A leader that never saw the admission still learns origin and phase times from the slot.
    let late = fold(&steps[2..]).ok_or("no record")?;
    assert_eq!(late.origin, RecordOrigin::Manual);
    assert_eq!(late.phases.requested, whole.phases.requested);
    assert_eq!(late.phases.admitted, whole.phases.admitted);
    assert_eq!(late.outcome, RecordOutcome::Succeeded);
    Ok(())
}

#[test]
fn failures_releases_and_drain_give_backs_end_the_record_as_they_should() -> TestResult {
    let mut ledger = Ledger::new(SignedDuration::from_secs(60));
    let none = RecordContext::default();

    // Failed by the coordinator, then healthy again: Recovered, still a failure.
    ledger.request("n1", Operation::Reboot, Origin::Agent, at(0))?;
    let (t1, admitted) = ledger.admit("n1", at(1), None, true)?;
    let mut spec = records::start(&admitted, &none).ok_or("no record")?;
    assert_eq!(spec.origin, RecordOrigin::Schedule);
    assert_eq!(spec.outcome, RecordOutcome::InProgress);
    records::apply(&mut spec, &ledger.drained("n1", t1, at(2))?, &none);
    records::apply(
        &mut spec,
        &ledger.fail("n1", t1, "not Ready", at(300))?,
        &none,
    );
    assert_eq!(spec.outcome, RecordOutcome::Failed);
    assert_eq!(spec.phases.failed, Some(Time(at(300))));
    assert_eq!(spec.phases.ended, None, "a failed slot stays held");
    let recovered = ledger.release("n1", Release::Recovered(t1), "", at(400))?;
    records::apply(&mut spec, &recovered, &none);
    assert_eq!(spec.outcome, RecordOutcome::Recovered);
    assert!(spec.outcome.is_failure());
    assert_eq!(spec.duration, "6m39s");

    // A transition of another slot is not this record's.
    ledger.request("n1", Operation::Reboot, Origin::Agent, at(500))?;
    let (t2, admitted) = ledger.admit("n1", at(501), None, true)?;
    let before = spec.clone();
    records::apply(&mut spec, &admitted, &none);
    assert_eq!(spec, before);

    // The drain gives the slot back: DrainFailed, and the next admission is another record.
    let mut second = records::start(&admitted, &none).ok_or("no record")?;
    let requeued = ledger.requeue_after_drain_failure("n1", t2, at(900), "pdb web", at(600))?;
    records::apply(&mut second, &requeued, &none);
    assert_eq!(second.outcome, RecordOutcome::DrainFailed);
    assert_ne!(record_name("n1", t1), record_name("n1", t2));

    // The agent fails the operation; a human releases the slot.
    let (t3, admitted) = ledger.admit("n1", at(901), None, true)?;
    let mut third = records::start(&admitted, &none).ok_or("no record")?;
    records::apply(&mut third, &ledger.drained("n1", t3, at(902))?, &none);
    let failed = ledger
        .complete("n1", t3, completion(false, 950))?
        .ok_or("no transition")?;
    assert_eq!(failed.reason, TransitionReason::OperationFailed);
    records::apply(&mut third, &failed, &none);
    assert_eq!(third.outcome, RecordOutcome::Failed);
    assert_eq!(third.phases.completed, Some(Time(at(950))));
    let released = ledger.release("n1", Release::Force, "stuck", at(1000))?;
    records::apply(&mut third, &released, &none);
    assert_eq!(third.outcome, RecordOutcome::ForceReleased);

    // The node goes away.
    ledger.request("n1", Operation::KubeletRestart, Origin::Agent, at(1100))?;
    let (_, admitted) = ledger.admit("n1", at(1101), None, true)?;
    let mut fourth = records::start(&admitted, &none).ok_or("no record")?;
    records::apply(
        &mut fourth,
        &ledger.node_deleted("n1", at(1200)).ok_or("no transition")?,
        &none,
    );
    assert_eq!(fourth.outcome, RecordOutcome::NodeDeleted);
    Ok(())
}

#[test]
fn requests_make_no_record() -> TestResult {
    let mut ledger = Ledger::new(SignedDuration::from_secs(60));
    let requested = ledger
        .request("n1", Operation::Reboot, Origin::Agent, at(0))?
        .ok_or("no transition")?;
    assert_eq!(records::start(&requested, &RecordContext::default()), None);
    Ok(())
}

#[test]
fn record_names_are_valid_and_unique_per_token() {
    assert_eq!(record_name("worker-1", FencingToken(42)), "worker-1-42");
    let long = format!("{}.example", "a".repeat(250));
    let name = record_name(&long, FencingToken(123_456));
    assert!(name.len() <= 253, "{}", name.len());
    assert!(name.ends_with("-123456"));
    // Kubernetes names (DNS subdomains): at most 253 characters, labels that start and end
    // with a letter or digit.
    let dotted = format!("{}.b", "a".repeat(245));
    let name = record_name(&dotted, FencingToken(1_234_567));
    assert!(name.len() <= 253, "{}", name.len());
    assert!(
        name.split('.').all(|label| {
            label.starts_with(|c: char| c.is_ascii_alphanumeric())
                && label.ends_with(|c: char| c.is_ascii_alphanumeric())
        }),
        "{name}"
    );
    let cut_at_dot = format!("{}.bcdefgh", "a".repeat(245));
    let name = record_name(&cut_at_dot, FencingToken(1_234_567));
    assert!(!name.contains(".-"), "{name}");
}

// ---------------------------------------------------------------------------------------------
// Retention

fn kept(name: &str, started: i64, ended: Option<i64>) -> Kept {
    Kept {
        name: name.into(),
        started: at(started),
        ended: ended.map(at),
    }
}

#[test]
fn retention_by_count_and_age() {
    let day = 86_400;
    let records = [
        kept("a", 0, Some(100)),
        kept("b", day, Some(day + 100)),
        kept("c", 2 * day, None),
        kept("d", 3 * day, Some(3 * day + 100)),
        kept("e", 4 * day, Some(4 * day + 100)),
    ];
    let now = at(5 * day);
    let retention = |keep, days: i64| Retention {
        keep,
        max_age: SignedDuration::from_hours(24 * days),
    };
    assert_eq!(
        to_prune(&records, retention(0, 0), now),
        Vec::<String>::new()
    );
    assert_eq!(
        to_prune(&records, retention(10, 30), now),
        Vec::<String>::new()
    );
    // The three newest stay: e, d and the open c; a and b go.
    assert_eq!(to_prune(&records, retention(3, 0), now), ["a", "b"]);
    // Only one kept by count, but c never goes while open.
    assert_eq!(to_prune(&records, retention(1, 0), now), ["a", "b", "d"]);
    // Ended more than 3 days ago: a and b (ended at day 0 and 1); c is open.
    assert_eq!(to_prune(&records, retention(0, 3), now), ["a", "b"]);
    assert_eq!(
        Retention::default(),
        retention(5000, 180),
        "the documented defaults"
    );
}

proptest! {
    #[test]
    fn retention_never_deletes_open_or_recent_records_beyond_what_it_must(
        raw in prop::collection::vec((0i64..1000, prop::option::of(0i64..500)), 0..40),
        keep in 0usize..20,
        max_age in 0i64..1500,
    ) {
        let records: Vec<Kept> = raw
            .iter()
            .enumerate()
            .map(|(i, (start, len))| kept(&format!("r{i}"), *start, len.map(|l| start + l)))
            .collect();
        let now = at(1500);
        let retention = Retention { keep, max_age: SignedDuration::from_secs(max_age) };
        let pruned = to_prune(&records, retention, now);
        let left: Vec<&Kept> = records.iter().filter(|r| !pruned.contains(&r.name)).collect();
        for record in &records {
            let gone = pruned.contains(&record.name);
            prop_assert!(!(gone && record.ended.is_none()), "an open record was deleted");
            if gone {
                let newer = records
                    .iter()
                    .filter(|r| (r.started, &r.name) > (record.started, &record.name))
                    .count();
                let old = max_age > 0
                    && record.ended.is_some_and(|e| e < now - SignedDuration::from_secs(max_age));
                prop_assert!(old || (keep > 0 && newer >= keep), "{} deleted without cause", record.name);
            }
        }
        if keep > 0 {
            let ended_left = left.iter().filter(|r| r.ended.is_some()).count();
            prop_assert!(ended_left <= keep, "{ended_left} ended records left, keep {keep}");
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Report

#[test]
fn the_report_summarises_each_pool() -> TestResult {
    let succeeded = fold(&successful_maintenance()?).ok_or("no record")?;
    let mut slower = succeeded.clone();
    slower.node = "n2".into();
    slower.phases.verified = Some(Time(at(310)));
    let mut again = succeeded.clone();
    again.token = 7;
    again.phases.verified = Some(Time(at(70)));
    let mut failed = succeeded.clone();
    failed.node = "n3".into();
    failed.outcome = RecordOutcome::Failed;
    failed.packages_changed.clear();
    failed.packages_changed_count = 0;
    let mut other_pool = succeeded.clone();
    other_pool.pool = None;
    other_pool.outcome = RecordOutcome::DrainFailed;
    other_pool.packages_changed.clear();
    other_pool.packages_changed_count = 0;
    let mut too_old = succeeded.clone();
    too_old.phases.admitted = Some(Time(at(-10)));

    let all = [succeeded, slower, again, failed, other_pool, too_old];
    let report = records::report(&all, at(0));
    assert_eq!(report.len(), 2);
    let none = &report[0];
    assert_eq!(none.pool, records::report::NO_POOL);
    assert_eq!((none.maintenances, none.not_performed), (1, 1));
    let workers = &report[1];
    assert_eq!(workers.pool, "workers");
    assert_eq!(workers.maintenances, 4);
    assert_eq!(workers.succeeded, 3);
    assert_eq!(workers.nodes_maintained, 2, "n1 twice and n2");
    assert_eq!(workers.failures, 1);
    // Cycles admitted (10) → verified: 60 s, 120 s and 300 s.
    assert_eq!(workers.median_cycle_seconds, Some(120));
    assert_eq!(workers.packages_changed, 9);
    assert_eq!(workers.security_updates_applied, 6);
    Ok(())
}

#[test]
fn medians() {
    let secs = |v: &[i64]| -> Option<i64> {
        let mut d: Vec<SignedDuration> = v.iter().map(|s| SignedDuration::from_secs(*s)).collect();
        records::report::median(&mut d).map(|d| d.as_secs())
    };
    assert_eq!(secs(&[]), None);
    assert_eq!(secs(&[5]), Some(5));
    assert_eq!(secs(&[30, 10, 20]), Some(20));
    assert_eq!(secs(&[40, 10, 20, 30]), Some(25));
}

// ---------------------------------------------------------------------------------------------
// Requester

fn managed(manager: &str, secs: i64, fields: serde_json::Value) -> ManagedFieldsEntry {
    ManagedFieldsEntry {
        manager: Some(manager.into()),
        operation: Some("Update".into()),
        time: Some(Time(at(secs))),
        fields_v1: Some(FieldsV1(fields)),
        fields_type: Some("FieldsV1".into()),
        api_version: Some("v1".into()),
        subresource: None,
    }
}

#[test]
fn the_requester_is_the_manager_that_owns_the_annotation() {
    let key = "rota.dev/maintenance-requested";
    let entries = [
        managed(
            "kubelet",
            0,
            json!({"f:status": {"f:conditions": {}}, "f:metadata": {"f:annotations": {"f:node.alpha.kubernetes.io/ttl": {}}}}),
        ),
        managed(
            "rotactl",
            5,
            json!({"f:metadata": {"f:annotations": {"f:rota.dev/maintenance-requested": {}}}}),
        ),
        managed(
            "kubectl-annotate",
            3,
            json!({"f:metadata": {"f:annotations": {"f:rota.dev/maintenance-requested": {}}}}),
        ),
    ];
    assert_eq!(
        annotation_manager(&entries, key).as_deref(),
        Some("rotactl"),
        "the latest writer"
    );
    assert_eq!(
        annotation_manager(&entries[..1], key),
        None,
        "nobody owns the annotation"
    );
    assert_eq!(annotation_manager(&[], key), None);
}
