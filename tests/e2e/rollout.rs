//! End to end: whole rollouts of the real coordinators and agents on the emulated cluster, with
//! TLS and token authentication on, checked from the emulator's record.

// Helpers outside #[test] functions fail the test the same way the tests do.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use rota_sim::apiserver::FaultConfig;
use rota_tests::e2e::{
    assert_complete, assert_one_grant_per_node, options, print_timing, run, start,
};

/// A rolling reboot of 30 nodes, three at a time: every node done exactly once, never more
/// than three down, no PDB broken, no fencing token on two nodes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rolling_reboot_of_30_nodes() {
    let fleet = start(options(30, 11, 3, 2)).await;
    let (report, took) = run(&fleet, Duration::from_secs(300), Duration::from_secs(60)).await;
    print_timing("rolling reboot of 30 nodes", took, &report);
    println!("{}", report.render());
    assert_complete(&fleet, &report);
    assert_one_grant_per_node(&fleet);
    fleet.shutdown().await;
}

/// One API request in ten answered with 500, 429 or 503 (coordinators' and agents' identity
/// checks alike): the rollout still finishes, with every invariant.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rollout_finishes_with_ten_percent_api_errors() {
    let mut options = options(12, 12, 3, 2);
    options.faults.api = FaultConfig {
        error_rate: 0.1,
        error_codes: vec![500, 429, 503],
        latency: Duration::ZERO,
        not_ready: None,
    };
    let fleet = start(options).await;
    assert_eq!(fleet.server().unwrap().faults().config().error_rate, 0.1);
    let (report, took) = run(&fleet, Duration::from_secs(300), Duration::from_secs(90)).await;
    print_timing("10 % API errors", took, &report);
    println!("{}", report.render());
    assert_complete(&fleet, &report);
    fleet.shutdown().await;
}
