//! The kured model on the demo's scenario: it completes, its numbers are plausible, and it holds
//! its lock while a PodDisruptionBudget keeps its drain waiting.

use std::time::Duration;

use rota_sim::apiserver::{GroupResource, ResourceKey, meta};
use rota_sim::demo::kured::{KURED_NAME, KURED_NAMESPACE, LOCK_ANNOTATION};
use rota_sim::demo::{Fleet, FleetOptions, KuredOptions, Scheduler, Stopped};
use serde_json::Value;

/// kured with a short period, so that a test does not wait for the scaled hour.
fn kured(period: Duration) -> Scheduler {
    Scheduler::Kured(KuredOptions {
        period,
        ..KuredOptions::default()
    })
}

fn lock_holder(fleet: &Fleet) -> Option<String> {
    let key = ResourceKey::new(
        GroupResource::new("apps", "daemonsets"),
        Some(KURED_NAMESPACE),
        KURED_NAME,
    );
    let ds = fleet.store().get(&key).ok()?;
    let lock = ds
        .pointer("/metadata/annotations")?
        .get(LOCK_ANNOTATION)?
        .as_str()?;
    let value: Value = serde_json::from_str(lock).ok()?;
    value.get("nodeID")?.as_str().map(str::to_string)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kured_reboots_every_node_one_at_a_time() {
    let mut options = FleetOptions::new(6, 7, 3);
    options.scheduler = kured(Duration::from_secs(3));
    let fleet = Fleet::start(options).await.unwrap();
    fleet.wait_all_done(Duration::from_secs(240)).await.unwrap();
    let report = fleet.report(Stopped::AllDone);
    fleet.shutdown().await;

    assert!(report.complete(), "{}", report.render());
    assert!(report.invariants_hold(), "{}", report.render());
    assert_eq!(report.scheduler, "kured");
    assert_eq!(report.max_unavailable, 1, "kured's default concurrency");
    assert_eq!(report.max_unavailable_observed, 1, "{}", report.render());
    assert_eq!(report.pdb_violations, 0, "{}", report.render());
    assert!(report.maintained_exactly_once, "{}", report.render());
    assert_eq!(
        report.fencing_tokens_unique, None,
        "kured has no fencing tokens"
    );
    // One node at a time, each waiting for a period tick: never faster than the bound.
    assert!(
        report.makespan_seconds >= report.lower_bound_seconds,
        "{}",
        report.render()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kured_holds_the_lock_while_a_budget_blocks_its_drain() {
    let mut options = FleetOptions::new(6, 7, 3);
    options.keep_blocked_pdb = true;
    options.scheduler = kured(Duration::from_secs(2));
    let blocked = rota_sim::cluster::Scenario::generate(6, 7)
        .blocked_node
        .expect("the scenario pins its zero-budget pod to a worker");
    let fleet = Fleet::start(options).await.unwrap();
    fleet
        .wait_for(
            "the blocked node to take the lock and cordon",
            Duration::from_secs(120),
            |f| {
                let node = f
                    .store()
                    .get(&ResourceKey::new(
                        GroupResource::core("nodes"),
                        None,
                        &blocked,
                    ))
                    .map_err(|e| e.to_string())?;
                match lock_holder(f) {
                    Some(holder) if holder == blocked && meta::node_unschedulable(&node) => Ok(()),
                    holder => Err(format!("lock held by {holder:?}")),
                }
            },
        )
        .await
        .unwrap();
    // Two kured periods later the drain still waits on the budget, with the lock held: no
    // other node may start, even though every other node needs its reboot.
    let nobody_else = fleet
        .wait_for(
            "the lock to move or another node to go down",
            Duration::from_secs(5),
            |f| {
                let holder = lock_holder(f);
                let down = f
                    .snapshot()
                    .nodes
                    .iter()
                    .filter(|n| n.name != blocked && n.state != rota_sim::demo::NodeState::Done)
                    .any(|n| {
                        matches!(
                            n.state,
                            rota_sim::demo::NodeState::Draining
                                | rota_sim::demo::NodeState::Rebooting
                        )
                    });
                if holder.as_deref() != Some(blocked.as_str()) || down {
                    Ok(())
                } else {
                    Err("still blocked".to_string())
                }
            },
        )
        .await;
    assert!(
        nobody_else.is_err(),
        "the lock moved while the drain waited"
    );
    let report = fleet.report(Stopped::Stalled);
    fleet.shutdown().await;
    assert_eq!(report.pdb_violations, 0, "{}", report.render());
    assert!(!report.complete());
    assert!(
        report.failed_nodes.iter().any(|n| n.starts_with(&blocked)),
        "{}",
        report.render()
    );
}
