//! The demo's scenario at a small size, maintained by the real coordinator and agents: every
//! node done, and the invariants hold by the emulator's own record.

use std::time::Duration;

use rota_sim::demo::{Fleet, FleetOptions, Report, Stopped};

const FIELDS: [&str; 26] = [
    "scheduler",
    "seed",
    "nodes",
    "maxUnavailable",
    "timeScale",
    "stopped",
    "makespanSeconds",
    "perNodeCycleSeconds",
    "perNodeCycleDefinition",
    "lowerBoundSeconds",
    "lowerBoundFormula",
    "makespanOverLowerBound",
    "maxUnavailableObserved",
    "pdbViolations",
    "pdbViolationDetails",
    "evictions",
    "podsDisrupted",
    "nodesDone",
    "nodesFailed",
    "failedNodes",
    "nodesNotStarted",
    "maintainedExactlyOnce",
    "maintainedMoreThanOnce",
    "fencingTokensUnique",
    "fencingTokensIssued",
    "invariantViolations",
];

fn assert_invariants(report: &Report, max_unavailable: usize) {
    assert!(report.invariants_hold(), "{}", report.render());
    assert_eq!(report.pdb_violations, 0, "{}", report.render());
    assert!(
        report.max_unavailable_observed <= max_unavailable,
        "{}",
        report.render()
    );
    assert!(report.maintained_exactly_once, "{}", report.render());
    assert_eq!(
        report.fencing_tokens_unique,
        Some(true),
        "{}",
        report.render()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nine_nodes_are_maintained_once_within_the_budgets() {
    let fleet = Fleet::start(FleetOptions::new(9, 7, 3)).await.unwrap();
    fleet.wait_all_done(Duration::from_secs(180)).await.unwrap();
    fleet
        .wait_records_settled(Duration::from_secs(30))
        .await
        .unwrap();
    let report = fleet.report(Stopped::AllDone);
    fleet.shutdown().await;

    // A MaintenanceRecord for every maintenance, and the change report made from them.
    let records = report.maintenance_records.as_ref().unwrap();
    assert!(
        records.maintenances_without_record.is_empty(),
        "{records:?}"
    );
    assert!(records.records >= 9, "{records:?}");
    let maintained: u32 = records
        .change_report
        .iter()
        .map(|p| p.nodes_maintained)
        .sum();
    assert_eq!(maintained, 9, "{}", report.render());
    assert!(
        report.render().contains("MEDIAN CYCLE"),
        "the demo prints the rotactl report: {}",
        report.render()
    );

    assert_invariants(&report, 3);
    assert!(report.complete(), "{}", report.render());
    assert_eq!(report.nodes_failed, 0);
    assert_eq!(report.fencing_tokens_issued, Some(9), "{}", report.render());
    assert!(report.evictions > 0, "workloads were drained");
    assert!(report.per_node_cycle_seconds > 0.0);
    assert!(
        report.makespan_seconds >= report.lower_bound_seconds * 0.9,
        "a makespan far below the lower bound means the bound is measured wrong: {}",
        report.render()
    );

    let json = serde_json::to_value(&report).unwrap();
    for field in FIELDS {
        assert!(
            json.get(field).is_some(),
            "report JSON lacks {field}: {json}"
        );
    }
    assert_eq!(json["scheduler"], "rota");
    assert_eq!(json["nodesDone"], 9);
    assert_eq!(json["fencingTokensUnique"], true);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_rollout_survives_its_leader_being_killed() {
    let fleet = Fleet::start(FleetOptions::new(6, 11, 2)).await.unwrap();
    let leader = fleet
        .wait_for("a leader", Duration::from_secs(30), |f| {
            f.leader().ok_or_else(|| "no leader".to_string())
        })
        .await
        .unwrap();
    fleet
        .wait_for("maintenance under way", Duration::from_secs(60), |f| {
            let started = f.persisted_tokens().len();
            (started > 0).then_some(()).ok_or("no slot yet".to_string())
        })
        .await
        .unwrap();
    fleet.kill_coordinator(leader).await.unwrap();
    let successor = fleet
        .wait_for("another leader", Duration::from_secs(30), |f| {
            match f.leader() {
                Some(l) if l != leader => Ok(l),
                other => Err(format!("leader {other:?}")),
            }
        })
        .await
        .unwrap();
    assert_ne!(successor, leader);
    fleet.restart_coordinator(leader).await.unwrap();
    fleet.wait_all_done(Duration::from_secs(180)).await.unwrap();
    fleet
        .wait_records_settled(Duration::from_secs(30))
        .await
        .unwrap();
    let report = fleet.report(Stopped::AllDone);
    fleet.shutdown().await;
    assert_invariants(&report, 2);
    let records = report.maintenance_records.as_ref().unwrap();
    assert!(
        records.maintenances_without_record.is_empty(),
        "the new leader continued the records: {records:?}"
    );
    assert!(report.complete(), "{}", report.render());
}
