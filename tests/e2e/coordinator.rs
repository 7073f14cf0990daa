//! End to end: coordinators dying during a rollout. All state lives in the Kubernetes API, so a
//! restarted coordinator, or the standby taking over, loses no slot and grants nothing twice.

// Helpers outside #[test] functions fail the test the same way the tests do.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeSet;
use std::time::Duration;

use rota_tests::e2e::{
    self, WAIT, assert_complete, assert_one_grant_per_node, options, print_timing, run,
    slot_states, start, wait_slot_change,
};

/// The single coordinator replica killed (no graceful step) and started again every few
/// seconds, at varied points after a slot changed — mid-drain, mid-operation, mid-verification.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn coordinator_killed_every_few_seconds() {
    let fleet = start(options(12, 21, 3, 1)).await;
    let killer = async {
        let paces = [
            Duration::ZERO,
            Duration::from_millis(1500),
            Duration::from_secs(3),
        ];
        // What the slots were doing at each kill.
        let mut kills: Vec<BTreeSet<&'static str>> = Vec::new();
        while wait_slot_change(&fleet).await {
            // Varied distance from the last write; this paces the faults, nothing waits on it.
            tokio::time::sleep(paces[kills.len() % paces.len()]).await;
            let in_flight = slot_states(&fleet)
                .into_values()
                .flatten()
                .map(|(_, phase)| phase.as_str())
                .collect();
            fleet.restart_coordinator(0).await.unwrap();
            kills.push(in_flight);
        }
        kills
    };
    let (kills, (report, took)) = tokio::join!(
        killer,
        run(&fleet, Duration::from_secs(400), Duration::from_secs(90))
    );
    print_timing(&format!("{} coordinator kills", kills.len()), took, &report);
    println!("slot phases at each kill: {kills:?}");
    println!("{}", report.render());
    assert_complete(&fleet, &report);
    assert_one_grant_per_node(&fleet);
    assert!(
        kills.len() >= 6,
        "only {} kills during the rollout",
        kills.len()
    );
    let mid_maintenance = kills.iter().filter(|k| !k.is_empty()).count();
    assert!(
        mid_maintenance >= 3,
        "only {mid_maintenance} kills while slots were held: {kills:?}"
    );
    fleet.shutdown().await;
}

/// Two replicas; the leader is killed while a slot is in flight and stays down: the standby
/// takes over and finishes the rollout. Then the killed replica comes back as the standby, and
/// the new leader is killed too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leader_killed_while_a_standby_runs() {
    let fleet = start(options(12, 22, 3, 2)).await;
    let failovers = async {
        let mut leaders = Vec::new();
        for round in 0..2 {
            // Kill while slots are held (the second time, later in the rollout).
            let in_flight = 1 + round * 2;
            fleet
                .wait_for("slots in flight", WAIT, |fleet| {
                    let held = e2e::slot_holders(fleet).len();
                    let done = fleet.done_nodes().len();
                    if held > 0 && done >= in_flight - 1 {
                        Ok(())
                    } else {
                        Err(format!("{held} slots held, {done} nodes done"))
                    }
                })
                .await
                .unwrap();
            let leader = fleet.leader().expect("a replica leads");
            fleet.kill_coordinator(leader).await.unwrap();
            leaders.push(leader);
            fleet
                .wait_for("the standby to lead", WAIT, |fleet| match fleet.leader() {
                    Some(now) if now != leader => Ok(now),
                    other => Err(format!("leader: {other:?}")),
                })
                .await
                .unwrap();
            fleet.restart_coordinator(leader).await.unwrap();
        }
        leaders
    };
    let (leaders, (report, took)) = tokio::join!(
        failovers,
        run(&fleet, Duration::from_secs(400), Duration::from_secs(90))
    );
    print_timing("two leader kills", took, &report);
    println!("{}", report.render());
    assert_ne!(
        leaders[0], leaders[1],
        "each replica led and was killed once"
    );
    assert_complete(&fleet, &report);
    assert_one_grant_per_node(&fleet);
    fleet.shutdown().await;
}
