//! A sequential drain against the emulated API server: two replicas of an app whose budget
//! allows one disruption run on the same node. The node is admitted anyway (it has the budget
//! to itself), evicts one pod, waits for the budget to recover (the test plays the disruption
//! controller: the replacement became Ready), evicts the other, and only then does another node
//! with a pod of that app get the budget.

use std::sync::Arc;

use rota_core::clock::OffsetClock;

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::Result;
use k8s_openapi::api::policy::v1::{PodDisruptionBudget, PodDisruptionBudgetSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use rota_core::model::Operation;
use rota_core::slots::NodeState;

use crate::controller_support::{Cluster, NS, Running, settings, spec, wait_until};

const WITHIN: Duration = Duration::from_secs(15);

/// Plays the disruption controller: the budget allows `allowed` disruptions now.
fn set_allowed(cluster: &Cluster, allowed: i32) -> Result<()> {
    cluster
        .store
        .modify_status_as::<PodDisruptionBudget>(Some(NS), "web", |p| {
            let status = p.status.get_or_insert_with(Default::default);
            status.disruptions_allowed = allowed;
            status.current_healthy = 3;
            status.desired_healthy = 3 - allowed;
            status.expected_pods = 3;
            // A status older than the spec makes the eviction API refuse every eviction.
            status.observed_generation = p.metadata.generation;
            status.disrupted_pods = None;
        })?;
    Ok(())
}

#[tokio::test]
async fn two_replicas_on_one_node_are_evicted_one_after_the_other() -> Result<()> {
    let cluster = Cluster::start(false).await?;
    cluster.add_node("a", &[("pool", "workers")])?;
    cluster.add_node("b", &[("pool", "workers")])?;
    cluster.add_pod("web-0", "a", "web", 0)?;
    cluster.add_pod("web-1", "a", "web", 0)?;
    cluster.add_pod("web-2", "b", "web", 0)?;
    cluster.store.create_as(&PodDisruptionBudget {
        metadata: ObjectMeta {
            namespace: Some(NS.into()),
            name: Some("web".into()),
            ..ObjectMeta::default()
        },
        spec: Some(PodDisruptionBudgetSpec {
            max_unavailable: Some(IntOrString::Int(1)),
            selector: Some(LabelSelector {
                match_labels: Some(BTreeMap::from([("app".to_owned(), "web".to_owned())])),
                match_expressions: None,
            }),
            ..PodDisruptionBudgetSpec::default()
        }),
        status: None,
    })?;
    set_allowed(&cluster, 1)?;
    let mut policy = spec("workers");
    policy.max_unavailable = Some(IntOrString::Int(2));
    cluster.create_policy("workers", policy)?;
    let mut settings = settings();
    // Each round of a sequential drain may wait this long for the budget.
    settings.drain_blocked_timeout = Duration::from_secs(5);
    let coordinator = Running::start(&cluster, settings, Arc::new(OffsetClock::default())).await?;
    coordinator.report("a", "a-boot-1").await?;
    coordinator.report("b", "b-boot-1").await?;

    coordinator.request("a", Operation::Reboot).await?;
    coordinator
        .wait_view("a", WITHIN, |v| v.state == NodeState::Draining)
        .await?;
    // One pod goes; the budget refuses the other until the first one's replacement is Ready.
    wait_until("one replica evicted", WITHIN, || {
        (cluster.pod_exists("web-0") != cluster.pod_exists("web-1")).then_some(())
    })
    .await?;

    // Meanwhile b, whose pod the budget also covers, waits: a has the budget to itself.
    coordinator.request("b", Operation::Reboot).await?;
    let b = coordinator
        .wait_view("b", WITHIN, |v| {
            v.waiting_reasons.iter().any(|r| r.contains("PDB shop/web"))
        })
        .await?;
    assert!(
        b.waiting_reasons
            .iter()
            .any(|r| r.contains("still being evicted from draining nodes")),
        "{:?}",
        b.waiting_reasons
    );
    assert_eq!(
        coordinator.wait_view("a", WITHIN, |_| true).await?.state,
        NodeState::Draining,
        "the second replica waits for the budget"
    );
    assert!(cluster.pod_exists("web-2"));

    // The replacement is Ready: the budget allows one disruption again, and a's drain goes on.
    set_allowed(&cluster, 1)?;
    coordinator.wait_granted("a", WITHIN).await?;
    assert!(!cluster.pod_exists("web-0") && !cluster.pod_exists("web-1"));

    // a's evictions are done; once the budget recovers again, b gets it.
    set_allowed(&cluster, 1)?;
    coordinator.wait_granted("b", WITHIN).await?;
    assert!(!cluster.pod_exists("web-2"));
    coordinator.stop().await
}
