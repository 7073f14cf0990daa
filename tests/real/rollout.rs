//! A whole rollout of rota as shipped on the real control plane, judged by the independent
//! monitor (see [`rota_tests::real_rollout`]): 24 simulated nodes (3 control-plane) as real API
//! clients under the Node authorizer and NodeRestriction, the demo scenario's workloads and
//! budgets, the `rota-coordinator` binary under `deploy/`'s ServiceAccount, an agent per node
//! with a token bound to its DaemonSet pod. Skipped (with a message) when
//! `tests/control-plane/build.sh` has not been run, except under `CI=true`, where it fails.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeSet;
use std::time::Duration;

use rota_tests::real_rollout::{
    RealRollout, Setup, assert_each_node_maintained_once, assert_never_refused, assert_safe,
};

const NODES: usize = 24;
const MAX_UNAVAILABLE: u32 = 3;
/// Eight rounds of three nodes, each a drain, a reboot that outlasts the node-monitor grace
/// period, and the health gate; about 140 s here.
const ROLLOUT_DEADLINE: Duration = Duration::from_secs(900);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_shipped_rota_rolls_24_nodes_on_the_real_control_plane() {
    let Some(rollout) = RealRollout::start(Setup::new(NODES, 1)).await else {
        return;
    };
    let agents = rollout.begin(MAX_UNAVAILABLE).await;
    let makespan = rollout.wait_done(&BTreeSet::new(), ROLLOUT_DEADLINE).await;
    let verdict = rollout.monitor.stop().await;
    eprintln!(
        "{NODES} nodes done in {:.1}s; most unavailable {} (control plane {}); violations {}",
        makespan.as_secs_f64(),
        verdict.max_unavailable.overall.count,
        verdict.max_unavailable.control_plane.count,
        verdict.violations.len()
    );
    assert_safe(&verdict, MAX_UNAVAILABLE as usize);
    assert_each_node_maintained_once(&verdict, &agents, NODES);
    assert_never_refused(&rollout.coordinator);
    agents.shutdown().await;
    rollout.nodes.shutdown().await;
}
