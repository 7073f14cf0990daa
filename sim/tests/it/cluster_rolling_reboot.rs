//! A rolling kernel upgrade of a generated 24-node cluster, three nodes at a time, done the way
//! rota does it (cordon, PDB-respecting evictions, package upgrade and reboot through the host,
//! wait for Ready with a new boot id and the DaemonSet pods, uncordon). It checks that the
//! simulation holds together over a whole rollout and prints how long the rollout took with
//! the default timings.

// Helpers outside #[test] functions fail the test the same way the tests do.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};

use futures::StreamExt;
use rota_agent::host::{Host, RebootMethod};
use rota_agent::packages::UpgradeScope;
use rota_sim::apiserver::{DeleteOptions, GroupResource, PatchKind, ResourceKey, Store, meta};
use rota_sim::cluster::scenario::KERNEL_UPDATE;
use rota_sim::cluster::{Cluster, ClusterHandle, Faults, Scenario, Timings, pods_on};
use serde_json::json;

const MAX_UNAVAILABLE: usize = 3;
const STEP: Duration = Duration::from_secs(60);

fn cordon(store: &Store, node: &str, on: bool) {
    store
        .patch(
            &ResourceKey::new(GroupResource::core("nodes"), None, node),
            &PatchKind::StrategicMerge,
            &json!({"spec": {"unschedulable": if on { json!(true) } else { json!(null) }}}),
        )
        .unwrap();
}

fn is_daemon_pod(pod: &serde_json::Value) -> bool {
    meta::controller_ref(pod).and_then(|r| r["kind"].as_str()) == Some("DaemonSet")
}

async fn maintain(cluster: &ClusterHandle, node: &str, daemonsets: usize) {
    let store = cluster.store();
    cordon(store, node, true);
    let pods: Vec<_> = pods_on(store, node)
        .into_iter()
        .filter(|p| !is_daemon_pod(p))
        .collect();
    let evictions = pods.iter().map(|pod| async move {
        let ns = meta::namespace(pod).to_string();
        let name = meta::name(pod).to_string();
        let uid = meta::uid(pod).to_string();
        if meta::controller_ref(pod).is_none() {
            // Unmanaged pods go the `--force` way.
            let key = ResourceKey::new(GroupResource::core("pods"), Some(&ns), &name);
            store.delete(&key, &DeleteOptions::default()).unwrap();
        } else {
            // Retry on 429 whenever the store changed (a PDB's status may have moved).
            let eviction = json!({"apiVersion": "policy/v1", "kind": "Eviction", "metadata": {"name": name, "namespace": ns}});
            cluster
                .wait_for(&format!("evicting {ns}/{name}"), STEP, |store| {
                    match store.evict(&ns, &name, &eviction, false) {
                        Ok(_) => Ok(()),
                        Err(e) if e.code() == 404 => Ok(()),
                        Err(e) if e.code() == 429 => Err(e.to_string()),
                        Err(e) => panic!("eviction of {ns}/{name} failed: {e}"),
                    }
                })
                .await
                .unwrap();
        }
        let key = ResourceKey::new(GroupResource::core("pods"), Some(&ns), &name);
        cluster
            .wait_until(&format!("{ns}/{name} to be gone"), STEP, |store| {
                store.get(&key).map_or(true, |p| meta::uid(&p) != uid)
            })
            .await
            .unwrap();
    });
    futures::future::join_all(evictions).await;

    let host = cluster.host(node).unwrap();
    let old_boot = host.boot_id().unwrap();
    host.packages()
        .unwrap()
        .upgrade(&UpgradeScope::SecurityOnly.into())
        .unwrap();
    host.reboot(&RebootMethod::Systemctl).unwrap();
    let key = ResourceKey::new(GroupResource::core("nodes"), None, node);
    cluster
        .wait_until(&format!("{node} back with a new boot id"), STEP, |store| {
            let n = store.get(&key).unwrap();
            meta::node_ready(&n) && meta::str_at(&n, "/status/nodeInfo/bootID") != old_boot
        })
        .await
        .unwrap();
    cluster
        .wait_until(&format!("{node}'s daemon pods"), STEP, |store| {
            let daemons: Vec<_> = pods_on(store, node)
                .into_iter()
                .filter(|p| is_daemon_pod(p))
                .collect();
            daemons.len() == daemonsets && daemons.iter().all(|p| meta::pod_ready(p))
        })
        .await
        .unwrap();
    cordon(store, node, false);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rolling_kernel_upgrade_of_24_nodes_three_at_a_time() {
    let scenario = Scenario::generate(24, 7);
    let cluster = Cluster::start_with_disruption_controller(
        Store::new(),
        &scenario,
        Timings::default(),
        Faults::none(),
    )
    .unwrap();
    cluster.wait_settled(STEP).await.unwrap();
    let blocked = scenario.blocked_node.clone().unwrap();
    let order: Vec<String> = scenario
        .nodes
        .iter()
        .map(|n| n.name.clone())
        .filter(|n| *n != blocked)
        .collect();

    let started = Instant::now();
    futures::stream::iter(order.iter())
        .map(|node| maintain(&cluster, node, scenario.daemonsets.len()))
        .buffer_unordered(MAX_UNAVAILABLE)
        .collect::<Vec<()>>()
        .await;
    let elapsed = started.elapsed();
    cluster.wait_settled(STEP).await.unwrap();
    println!(
        "rolling kernel upgrade of {} nodes, {MAX_UNAVAILABLE} at a time: {:.1} s",
        order.len(),
        elapsed.as_secs_f64()
    );

    let store = cluster.store();
    for node in &order {
        let n = store
            .get(&ResourceKey::new(GroupResource::core("nodes"), None, node))
            .unwrap();
        assert_eq!(
            n["status"]["nodeInfo"]["kernelVersion"], KERNEL_UPDATE.0,
            "{node}"
        );
    }
    assert!(
        store.pdb_violations().is_empty(),
        "{:?}",
        store.pdb_violations()
    );
    assert!(
        store.max_unavailable_nodes() <= MAX_UNAVAILABLE,
        "{} nodes were unavailable at once",
        store.max_unavailable_nodes()
    );
    cluster.shutdown().await;
}
