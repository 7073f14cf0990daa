//! A short fault campaign in CI: `rota-sim campaign` as the binary runs it, on a few small
//! seeded scenarios with random faults (coordinator, leader and agent kills, API errors and
//! latency, watch drops into 410s, nodes that never return or whose kubelet fails). Every run
//! must hold every invariant, grant no token twice and leave no healthy node half-way.

// Helpers outside #[test] functions fail the test the same way the tests do.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use rota_sim::demo::campaign::{CampaignArgs, run_campaign, summary};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_short_campaign_finds_nothing() {
    rota_tests::e2e::init_logs();
    let args = CampaignArgs {
        runs: 3,
        seed: 2026,
        min_nodes: 6,
        max_nodes: 9,
        run_timeout: Duration::from_secs(240),
        report: None,
    };
    let outcomes = run_campaign(&args).await.unwrap();
    let text = summary(&outcomes);
    println!("{text}");
    assert_eq!(outcomes.len(), 3);
    for (i, outcome) in outcomes.iter().enumerate() {
        assert!(
            outcome.passed(),
            "{}\n{text}",
            outcome.line(i, outcomes.len())
        );
        // Positive evidence that each run did its work, not only that nothing broke.
        assert!(outcome.report.nodes_done > 0, "{}", outcome.line(i, 3));
    }
    let faults: usize = outcomes.iter().map(|o| o.plan.faults.len()).sum();
    assert!(faults >= 3, "every run injects at least one fault");
}
