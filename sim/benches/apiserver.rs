//! Emulated API server at fleet scale: 1,000 nodes and 30,000 pods in one process.
//! Prints each measurement with its target and PASS/FAIL.
//!
//! Run with `cargo bench -p rota-sim --bench apiserver`.

// A benchmark aborts on setup failure like a test does.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::{Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, ListParams, WatchEvent, WatchParams};
use kube::{Client, Config};
use rota_sim::apiserver::{ApiServer, GroupResource, PatchKind, ResourceKey, Store, meta};
use serde_json::json;

const NODES: usize = 1_000;
const PODS: usize = 30_000;
const WATCHERS: usize = 10;
const CHANGES: usize = 50;

fn report(name: &str, value: f64, unit: &str, target: f64) {
    let verdict = if value < target { "PASS" } else { "FAIL" };
    println!("{name:<44} {value:>10.1} {unit:<4} (target < {target} {unit})  {verdict}");
}

fn rss_mib() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .map_or(f64::NAN, |kb| kb / 1024.0)
}

fn seed(store: &Store) {
    for n in 0..NODES {
        store
            .create(
                &GroupResource::core("nodes"),
                None,
                json!({
                    "metadata": {"name": format!("node-{n:04}"), "labels": {"kubernetes.io/hostname": format!("node-{n:04}"), "topology.kubernetes.io/zone": format!("zone-{}", n % 3)}},
                    "spec": {"podCIDR": format!("10.{}.{}.0/24", n / 256, n % 256)},
                    "status": {
                        "conditions": [{"type": "Ready", "status": "True", "reason": "KubeletReady", "lastHeartbeatTime": "2025-01-01T00:00:00Z", "lastTransitionTime": "2025-01-01T00:00:00Z"}],
                        "addresses": [{"type": "InternalIP", "address": format!("192.168.{}.{}", n / 256, n % 256)}],
                        "capacity": {"cpu": "8", "memory": "32Gi", "pods": "110"},
                        "nodeInfo": {"kubeletVersion": "v1.33.1", "osImage": "Debian GNU/Linux 12 (bookworm)", "kernelVersion": "6.1.0-28-amd64", "containerRuntimeVersion": "containerd://1.7.24"}
                    }
                }),
            )
            .unwrap();
    }
    for p in 0..PODS {
        let app = format!("app-{}", p % 300);
        store
            .create(
                &GroupResource::core("pods"),
                Some("default"),
                json!({
                    "metadata": {"name": format!("{app}-{p:05}"), "labels": {"app": app, "pod-template-hash": "5d8f7c9b6"},
                        "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": format!("{app}-5d8f7c9b6"), "uid": format!("00000000-0000-4000-8000-{:012}", p % 300), "controller": true, "blockOwnerDeletion": true}]},
                    "spec": {
                        "nodeName": format!("node-{:04}", p % NODES),
                        "containers": [{"name": "app", "image": "registry.example/app:1.2.3", "ports": [{"containerPort": 8080, "protocol": "TCP"}],
                            "resources": {"requests": {"cpu": "100m", "memory": "128Mi"}}}]
                    },
                    "status": {"phase": "Running", "podIP": format!("10.{}.{}.{}", p / 65536, (p / 256) % 256, p % 256),
                        "conditions": [{"type": "Ready", "status": "True"}, {"type": "ContainersReady", "status": "True"}, {"type": "PodScheduled", "status": "True"}],
                        "containerStatuses": [{"name": "app", "ready": true, "restartCount": 0, "image": "registry.example/app:1.2.3", "imageID": "", "started": true, "state": {"running": {"startedAt": "2025-01-01T00:00:00Z"}}}]}
                }),
            )
            .unwrap();
    }
}

#[tokio::main]
async fn main() {
    let store = Store::new();
    let started = Instant::now();
    seed(&store);
    println!(
        "seeded {NODES} nodes and {PODS} pods in {:.2} s",
        started.elapsed().as_secs_f64()
    );
    report(
        "resident memory after seeding (VmRSS)",
        rss_mib(),
        "MiB",
        1024.0,
    );

    let server = ApiServer::start(store.clone(), SocketAddr::from((Ipv4Addr::LOCALHOST, 0)))
        .await
        .unwrap();
    let client = Client::try_from(Config::new(server.url().parse().unwrap())).unwrap();

    // Full pod LIST over HTTP: raw bytes (server + transfer) and typed through kube-rs.
    let mut raw_ms = Vec::new();
    let mut bytes = 0;
    for _ in 0..3 {
        let t = Instant::now();
        let body = client
            .request_text(http::Request::get("/api/v1/pods").body(Vec::new()).unwrap())
            .await
            .unwrap();
        raw_ms.push(t.elapsed().as_secs_f64() * 1000.0);
        bytes = body.len();
    }
    let pods: Api<Pod> = Api::all(client.clone());
    let t = Instant::now();
    let typed = pods.list(&ListParams::default()).await.unwrap();
    let typed_ms = t.elapsed().as_secs_f64() * 1000.0;
    assert_eq!(typed.items.len(), PODS);
    println!(
        "pod LIST response: {:.1} MiB",
        bytes as f64 / (1024.0 * 1024.0)
    );
    report(
        "full pod LIST over HTTP (raw, best of 3)",
        raw_ms.iter().copied().fold(f64::MAX, f64::min),
        "ms",
        1000.0,
    );
    report(
        "full pod LIST over HTTP (kube-rs typed)",
        typed_ms,
        "ms",
        1000.0,
    );

    // One change fanned out to 10 watchers.
    let rv = store.resource_version().to_string();
    let mut watchers = Vec::new();
    for _ in 0..WATCHERS {
        watchers.push(
            pods.watch(
                &WatchParams::default().fields("spec.nodeName=node-0007"),
                &rv,
            )
            .await
            .unwrap()
            .boxed(),
        );
    }
    let target = "app-7-00007";
    let key = ResourceKey::new(GroupResource::core("pods"), Some("default"), target);
    let mut latencies = Vec::new();
    for i in 0..CHANGES {
        let t = Instant::now();
        store
            .patch(
                &key,
                &PatchKind::Merge,
                &json!({"metadata": {"annotations": {"bench": i.to_string()}}}),
            )
            .unwrap();
        let waits = watchers.iter_mut().map(|w| async move {
            loop {
                match tokio::time::timeout(Duration::from_secs(10), w.try_next()).await {
                    Ok(Ok(Some(WatchEvent::Modified(p))))
                        if p.metadata.name.as_deref() == Some(target) =>
                    {
                        return t.elapsed();
                    }
                    Ok(Ok(Some(_))) => continue,
                    other => panic!("watch failed: {other:?}"),
                }
            }
        });
        let all = futures::future::join_all(waits).await;
        latencies.push(all.into_iter().max().unwrap_or_default().as_secs_f64() * 1000.0);
    }
    latencies.sort_by(f64::total_cmp);
    report(
        "change seen by all 10 watchers (median)",
        latencies[latencies.len() / 2],
        "ms",
        100.0,
    );
    report(
        "change seen by all 10 watchers (max)",
        latencies[latencies.len() - 1],
        "ms",
        250.0,
    );

    report(
        "resident memory with a client's typed list too",
        rss_mib(),
        "MiB",
        1024.0,
    );
    assert!(meta::name(&store.get(&key).unwrap()) == target);
    server.shutdown().await;
}
