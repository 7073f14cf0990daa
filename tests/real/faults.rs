//! rota as shipped on the real control plane through faults, judged by the independent
//! monitor (see [`rota_tests::real_rollout`]): a PodDisruptionBudget that allows no disruption
//! pinned to one worker, a worker that never comes back from its reboot, and the coordinator's
//! process killed (SIGKILL) while a node drains and started again. Every other node must be
//! done, no budget broken, never more than `maxUnavailable` nodes (and one control-plane node)
//! unavailable, no fencing token used on two nodes. Skipped (with a message) when
//! `tests/control-plane/build.sh` has not been run, except under `CI=true`, where it fails.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeSet;
use std::time::Duration;

use kube::ResourceExt;
use rota_sim::cluster::Faults;
use rota_tests::control_plane::eventually;
use rota_tests::real_rollout::{
    RealRollout, SLOT_ANNOTATION, Setup, assert_never_refused, assert_one_token_per_node,
    assert_safe,
};

const NODES: usize = 12;
const MAX_UNAVAILABLE: u32 = 3;
const ROLLOUT_DEADLINE: Duration = Duration::from_secs(900);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_shipped_rota_keeps_its_promises_through_faults_on_the_real_control_plane() {
    let Some(mut rollout) = RealRollout::start(Setup {
        keep_blocked: true,
        ..Setup::new(NODES, 2)
    })
    .await
    else {
        return;
    };
    let blocked = rollout.scenario.blocked_node.clone().unwrap();
    let lost = rollout
        .scenario
        .worker_names()
        .into_iter()
        .find(|w| *w != blocked)
        .unwrap();
    rollout
        .nodes
        .set_faults(Faults::default().with_never_return(&lost));
    let agents = rollout.begin(MAX_UNAVAILABLE).await;

    // The leader's process dies while a node drains; the Deployment's next pod takes over.
    let draining = eventually("a node draining", || async {
        rollout.node_objects().await.into_iter().find_map(|n| {
            let slot = n.annotations().get(SLOT_ANNOTATION)?.clone();
            slot.contains("\"phase\":\"draining\"")
                .then(|| n.name_any())
        })
    })
    .await;
    rollout.coordinator.kill_and_restart().await;
    eprintln!("coordinator killed while {draining} drained, and started again");

    let except: BTreeSet<String> = [blocked.clone(), lost.clone()].into();
    let makespan = rollout.wait_done(&except, ROLLOUT_DEADLINE).await;
    let verdict = rollout.monitor.stop().await;
    eprintln!(
        "{} of {NODES} nodes done in {:.1}s (held: {blocked} by its budget, {lost} never back); \
         most unavailable {} (control plane {}); violations {}",
        NODES - except.len(),
        makespan.as_secs_f64(),
        verdict.max_unavailable.overall.count,
        verdict.max_unavailable.control_plane.count,
        verdict.violations.len()
    );
    assert_safe(&verdict, MAX_UNAVAILABLE as usize);
    assert_eq!(
        verdict.reboots.get(&blocked),
        None,
        "the node whose budget allows no disruption was never rebooted"
    );
    let acted = assert_one_token_per_node(&agents);
    assert!(
        !acted.contains(&blocked) && acted.contains(&lost),
        "{acted:?}"
    );
    assert_eq!(acted.len(), NODES - 1, "{acted:?}");
    assert_never_refused(&rollout.coordinator);
    agents.shutdown().await;
    rollout.nodes.shutdown().await;
}
