//! Fencing across coordinators: two that both believe they lead never issue one token twice,
//! and a coordinator that loses its leadership stops serving at once.

use rota_core::clock::OffsetClock;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Result;
use k8s_openapi::api::core::v1::Node;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use rota_coordinator::controller::Coordinator;
use rota_coordinator::core_gate::CoreGate;
use rota_coordinator::events::EventSink;
use rota_coordinator::kube_client::Clients;
use rota_coordinator::leader::{ElectionConfig, LeaderElector};
use rota_coordinator::metrics::Metrics;
use rota_core::agent_api::AgentCore;
use rota_core::election::Timings;
use rota_core::model::{NodeFacts, Operation};
use rota_sim::apiserver::Store;
use tokio::sync::oneshot;
use tokio_util::sync::CancellationToken;

use crate::controller_support::{Cluster, Running, SYSTEM_NS, settings, spec, wait_until};

const WITHIN: Duration = Duration::from_secs(20);

/// Every `rota.dev/slot` token ever written on a Node, with the nodes that carried it.
fn token_holders(
    events: &mut tokio::sync::broadcast::Receiver<Arc<rota_sim::apiserver::StoreEvent>>,
) -> Result<BTreeMap<u64, BTreeSet<String>>> {
    let mut holders: BTreeMap<u64, BTreeSet<String>> = BTreeMap::new();
    while let Ok(event) = events.try_recv() {
        if event.object.get("kind").and_then(|k| k.as_str()) != Some("Node") {
            continue;
        }
        let node: Node = serde_json::from_value((*event.object).clone())?;
        let Some(slot) = node
            .metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get("rota.dev/slot"))
        else {
            continue;
        };
        let slot: serde_json::Value = serde_json::from_str(slot)?;
        if let Some(token) = slot.get("token").and_then(serde_json::Value::as_u64) {
            holders
                .entry(token)
                .or_default()
                .insert(node.metadata.name.clone().unwrap_or_default());
        }
    }
    Ok(holders)
}

fn slots_held(store: &Store, nodes: &[String]) -> bool {
    nodes.iter().all(|n| {
        store
            .get_as::<Node>(None, n)
            .ok()
            .and_then(|node| node.metadata.annotations)
            .is_some_and(|a| a.contains_key("rota.dev/slot"))
    })
}

/// A split brain: two coordinators both act as leader. The fencing counter's optimistic
/// concurrency makes one of them fail, re-read and continue from the other's tokens.
#[tokio::test]
async fn two_coordinators_racing_never_issue_a_token_twice() -> Result<()> {
    let cluster = Cluster::start(true).await?;
    let nodes: Vec<String> = (0..8).map(|i| format!("n{i}")).collect();
    for node in &nodes {
        cluster.add_node(node, &[("pool", "workers")])?;
    }
    let mut policy = spec("workers");
    policy.max_unavailable = Some(IntOrString::Int(8));
    cluster.create_policy("workers", policy)?;
    let mut events = cluster.store.subscribe_all();

    let first = Running::start(&cluster, settings(), Arc::new(OffsetClock::default())).await?;
    let second = Running::start(&cluster, settings(), Arc::new(OffsetClock::default())).await?;
    for (i, node) in nodes.iter().enumerate() {
        let coordinator = if i % 2 == 0 { &first } else { &second };
        coordinator.report(node, &format!("{node}-boot-1")).await?;
        coordinator.request(node, Operation::Reboot).await?;
    }
    wait_until("every node holds a slot", WITHIN, || {
        slots_held(&cluster.store, &nodes).then_some(())
    })
    .await?;
    first.stop().await?;
    second.stop().await?;

    let holders = token_holders(&mut events)?;
    for (token, nodes) in &holders {
        assert_eq!(nodes.len(), 1, "token {token} was held by {nodes:?}");
    }
    let highest = holders.keys().max().copied().unwrap_or_default();
    assert!(holders.len() >= nodes.len(), "{holders:?}");
    assert_eq!(
        cluster.counter(),
        Some(highest),
        "the counter holds the highest token ever issued"
    );
    Ok(())
}

/// A coordinator whose leader election stops (here: gracefully, releasing the lease) closes
/// the agents' gate at once and acts no more.
#[tokio::test]
async fn losing_leadership_closes_the_agents_gate_at_once() -> Result<()> {
    let cluster = Cluster::start(true).await?;
    cluster.add_node("a", &[("pool", "workers")])?;
    cluster.create_policy("workers", spec("workers"))?;
    let clients = Clients::from_config(cluster.kube_config()?)?;
    let (elector, leadership) = LeaderElector::new(
        clients.default.clone(),
        ElectionConfig {
            namespace: SYSTEM_NS.into(),
            lease_name: "rota-coordinator".into(),
            identity: "replica-0".into(),
            timings: Timings {
                lease_duration: Duration::from_secs(3),
                renew_deadline: Duration::from_secs(2),
                retry_period: Duration::from_millis(500),
            },
        },
    )?;
    let (resign, resigned) = oneshot::channel::<()>();
    let election = tokio::spawn(elector.run(async {
        let _ = resigned.await;
    }));
    let agents = CoreGate::new();
    let coordinator = Coordinator::new(
        clients.clone(),
        settings(),
        EventSink::new(clients.default.clone(), "replica-0"),
        Metrics::new(),
        leadership.clone(),
        agents.clone(),
    );
    let stop = CancellationToken::new();
    let task = tokio::spawn(coordinator.run(stop.clone()));

    wait_until("the gate opens while leading", WITHIN, || {
        agents.is_open().then_some(())
    })
    .await?;
    let facts = NodeFacts {
        boot_id: "a-boot-1".into(),
        ..NodeFacts::default()
    };
    agents.report_facts("a", facts.clone()).await?;

    let _ = resign.send(());
    election.await?;
    assert!(!leadership.is_leader());
    wait_until("the gate closes", Duration::from_secs(2), || {
        (!agents.is_open()).then_some(())
    })
    .await?;
    assert!(
        agents.request_slot("a", Operation::Reboot).await.is_err(),
        "a replica that does not lead refuses agents"
    );
    stop.cancel();
    task.await??;
    assert_eq!(cluster.slot("a"), None, "nothing was admitted");
    Ok(())
}
