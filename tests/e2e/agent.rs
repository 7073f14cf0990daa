//! End to end: agents killed in the middle of their node's maintenance. The agent persists its
//! operation on the host before every step, so a restarted agent resumes the same grant and
//! the node is still maintained exactly once.

// Helpers outside #[test] functions fail the test the same way the tests do.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::time::Duration;

use rota_agent::host::memory::PackageFaults;
use rota_agent::ops::Phase;
use rota_core::model::SlotPhase;
use rota_sim::cluster::host::KERNEL_PACKAGE;
use rota_sim::demo::{Fleet, slot_phase};
use rota_tests::e2e::{
    self, WAIT, assert_complete, assert_one_grant_per_node, options, poll_until, print_timing, run,
    set_faults, start, tokens_by_node,
};

/// Latency added to every API request while an agent is caught at a step: the coordinator's
/// writes (the drain's evictions, the progress an agent reports and waits for) take at least
/// this long, which keeps the step open while the test kills the agent.
const SLOW_API: Duration = Duration::from_millis(400);

/// The phase of the operation the agent of `node` persisted on its host, if any, read the
/// way the agent reads it.
fn persisted_phase(fleet: &Fleet, node: &str) -> Option<Phase> {
    let host = fleet.cluster().unwrap().host(node).unwrap();
    rota_agent::state::load(host, Path::new(rota_agent::state::DEFAULT_STATE_PATH))
        .unwrap()
        .map(|record| record.phase)
}

/// A node whose slot is in `phase` now, other than `except`.
async fn node_in_phase(fleet: &Fleet, phase: SlotPhase, except: &[String]) -> String {
    fleet
        .wait_for(&format!("a node {}", phase.as_str()), WAIT, |fleet| {
            fleet
                .scenario()
                .nodes
                .iter()
                .map(|n| n.name.clone())
                .find(|n| !except.contains(n) && slot_phase(&e2e::node(fleet, n)) == Some(phase))
                .ok_or_else(|| format!("no node {}", phase.as_str()))
        })
        .await
        .unwrap()
}

fn slow_api(fleet: &Fleet, on: bool) {
    set_faults(fleet, |f| {
        f.api.latency = if on { SLOW_API } else { Duration::ZERO };
    });
}

/// One agent killed while the coordinator drains its node (the grant arrives while it is down)
/// and another killed with its package upgrade under way (dpkg interrupted with it); both are
/// started again, resume from their persisted state, and every node is maintained exactly once
/// under one grant.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agents_killed_mid_drain_and_mid_upgrade() {
    let fleet = start(options(9, 31, 2, 2)).await;
    let scenario = async {
        // Mid-drain: the agent dies while its node drains; the grant comes while it is down.
        slow_api(&fleet, true);
        let draining = node_in_phase(&fleet, SlotPhase::Draining, &[]).await;
        fleet.kill_agent(&draining).await.unwrap();
        let phase_at_kill = slot_phase(&e2e::node(&fleet, &draining));
        slow_api(&fleet, false);
        fleet
            .wait_node_phase(&draining, SlotPhase::Granted, WAIT)
            .await
            .unwrap();
        assert_eq!(
            persisted_phase(&fleet, &draining),
            None,
            "it had started nothing"
        );
        fleet.restart_agent(&draining).await.unwrap();

        // Mid-upgrade: the agent persisted the package change and reports it (the report waits
        // on the slowed API) when it dies; dpkg dies with it and leaves its database
        // interrupted.
        let upgrading =
            node_in_phase(&fleet, SlotPhase::Draining, std::slice::from_ref(&draining)).await;
        slow_api(&fleet, true);
        poll_until(
            &format!("the agent of {upgrading} to persist its package change"),
            WAIT,
            Duration::from_millis(5),
            || (persisted_phase(&fleet, &upgrading) == Some(Phase::ChangePackages)).then_some(()),
        )
        .await;
        fleet.kill_agent(&upgrading).await.unwrap();
        slow_api(&fleet, false);
        let host = fleet.cluster().unwrap().host(&upgrading).unwrap();
        let kernel_at_kill = host.memory().installed(KERNEL_PACKAGE);
        host.memory().set_package_faults(PackageFaults {
            fail_next_upgrade: false,
            interrupted: true,
        });
        assert_eq!(
            persisted_phase(&fleet, &upgrading),
            Some(Phase::ChangePackages)
        );
        fleet.restart_agent(&upgrading).await.unwrap();
        (draining, phase_at_kill, upgrading, kernel_at_kill)
    };
    let ((draining, phase_at_kill, upgrading, kernel_at_kill), (report, took)) = tokio::join!(
        scenario,
        run(&fleet, Duration::from_secs(400), Duration::from_secs(90))
    );
    print_timing("agents killed mid-drain and mid-upgrade", took, &report);
    println!("{}", report.render());
    assert_eq!(
        phase_at_kill,
        Some(SlotPhase::Draining),
        "{draining} was killed mid-drain"
    );
    let initial_kernel = fleet
        .scenario()
        .nodes
        .iter()
        .find(|n| n.name == upgrading)
        .and_then(|n| n.host.installed.get(KERNEL_PACKAGE).cloned());
    assert_eq!(
        kernel_at_kill, initial_kernel,
        "{upgrading} was killed before its upgrade ran"
    );
    assert_complete(&fleet, &report);
    assert_one_grant_per_node(&fleet);
    // The restarted agents acted with the grant they had, not a new one.
    let persisted = tokens_by_node(&fleet);
    let host_tokens = fleet.host_tokens();
    for node in [&draining, &upgrading] {
        let acted: Vec<u64> = host_tokens
            .iter()
            .filter(|(_, nodes)| nodes.contains(node))
            .map(|(token, _)| *token)
            .collect();
        assert_eq!(
            acted
                .iter()
                .copied()
                .collect::<std::collections::BTreeSet<_>>(),
            persisted[node],
            "{node}"
        );
    }
    fleet.shutdown().await;
}
