//! Scenario generation: the same seed gives the same cluster, different seeds differ, and
//! every generated cluster has the shape the end-to-end tests rely on.

// Helpers outside #[test] functions fail the test the same way the tests do.
#![allow(clippy::unwrap_used, clippy::expect_used)]
use rota_core::model::{Blocked, Impact};

use std::collections::BTreeSet;

use rota_agent::host::Host;

use rota_sim::apiserver::{GroupResource, ListOptions, Store, meta};
use rota_sim::cluster::scenario::{
    CONTROL_PLANE_LABEL, HOSTNAME_LABEL, KUBELET_PATCH, ZONE_LABEL, ZONES,
};
use rota_sim::cluster::{Cluster, Faults, Scenario, Timings};
use serde_json::{Value, json};

#[test]
fn the_same_seed_gives_the_same_scenario_and_others_differ() {
    assert_eq!(Scenario::generate(24, 7), Scenario::generate(24, 7));
    assert_ne!(Scenario::generate(24, 7), Scenario::generate(24, 8));
    let a = Scenario::generate(24, 7);
    let b = Scenario::generate(24, 8);
    assert_ne!(
        (a.deployments, a.blocked_node, a.nodes[0].host.clone()),
        (b.deployments, b.blocked_node, b.nodes[0].host.clone())
    );
}

/// The generated objects as the store holds them, without what the store adds (uids, times,
/// resourceVersions) or what controllers write (status).
fn snapshot(store: &Store) -> Vec<Value> {
    let mut out = Vec::new();
    for resource in [
        GroupResource::core("nodes"),
        GroupResource::core("namespaces"),
        GroupResource::new("apps", "deployments"),
        GroupResource::new("apps", "statefulsets"),
        GroupResource::new("apps", "daemonsets"),
        GroupResource::new("policy", "poddisruptionbudgets"),
    ] {
        for obj in store
            .list(&resource, None, &ListOptions::default())
            .unwrap()
            .items
        {
            let mut obj = (*obj).clone();
            let md = obj["metadata"].as_object_mut().unwrap();
            for volatile in ["uid", "resourceVersion", "creationTimestamp", "generation"] {
                md.remove(volatile);
            }
            obj.as_object_mut().unwrap().remove("status");
            out.push(obj);
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_seed_creates_the_same_objects() {
    let start = |seed| {
        let store = Store::new();
        let cluster = Cluster::start(
            store.clone(),
            &Scenario::generate(12, seed),
            Timings::default(),
            Faults::none(),
        )
        .unwrap();
        (store, cluster)
    };
    let (a, ca) = start(42);
    let (b, cb) = start(42);
    let (c, cc) = start(43);
    let (sa, sb, sc) = (snapshot(&a), snapshot(&b), snapshot(&c));
    assert!(sa.len() > 20);
    assert_eq!(sa, sb);
    assert_ne!(sa, sc);
    for cluster in [ca, cb, cc] {
        cluster.shutdown().await;
    }
}

#[test]
fn nodes_zones_and_roles() {
    for (n, control_planes) in [(1, 1), (3, 1), (5, 1), (6, 3), (24, 3)] {
        let s = Scenario::generate(n, 1);
        assert_eq!(s.nodes.len(), n);
        assert_eq!(s.control_plane_names().len(), control_planes, "{n} nodes");
        let names: BTreeSet<&str> = s.nodes.iter().map(|n| n.name.as_str()).collect();
        assert_eq!(names.len(), n, "names are unique");
        for node in &s.nodes {
            assert_eq!(node.labels[HOSTNAME_LABEL], node.name);
            assert_eq!(node.labels[ZONE_LABEL], node.zone);
            assert_eq!(
                node.labels.contains_key(CONTROL_PLANE_LABEL),
                node.control_plane
            );
        }
    }
    let s = Scenario::generate(24, 1);
    let zones: BTreeSet<&str> = s.nodes.iter().map(|n| n.zone.as_str()).collect();
    assert_eq!(zones, ZONES.into_iter().collect());
    for cp in s.nodes.iter().filter(|n| n.control_plane) {
        assert_eq!(
            cp.taints,
            vec![json!({"key": CONTROL_PLANE_LABEL, "effect": "NoSchedule"})]
        );
    }
}

#[test]
fn workloads_cover_every_shape_with_exactly_one_blocking_budget() {
    let mut shapes = BTreeSet::new();
    let mut empty_dir_deployments = 0;
    for seed in 0..20 {
        let s = Scenario::generate(24, seed);
        assert_eq!(s.daemonsets.len(), 2);
        assert!(s.deployments.len() >= 10);
        assert!(!s.statefulsets.is_empty());
        assert_eq!(s.pods.len(), 2);
        let empty_dir = |spec: &Value| spec.pointer("/volumes/0/emptyDir").is_some();
        empty_dir_deployments += s
            .deployments
            .iter()
            .filter(|d| empty_dir(&d["spec"]["template"]["spec"]))
            .count();
        assert!(s.pods.iter().any(|p| empty_dir(&p["spec"])), "seed {seed}");
        let blocking: Vec<_> = s
            .expected_pdbs
            .iter()
            .filter(|e| e.disruptions_allowed == 0)
            .collect();
        assert_eq!(blocking.len(), 1, "seed {seed}");
        let blocked = s.blocked_node.clone().unwrap();
        assert!(s.worker_names().contains(&blocked));
        let pinned = s
            .deployments
            .iter()
            .find(|d| meta::name(d) == blocking[0].name)
            .unwrap();
        assert_eq!(
            pinned["spec"]["template"]["spec"]["nodeSelector"][HOSTNAME_LABEL],
            blocked.as_str()
        );
        assert_ne!(s.unmanaged_pods_node, s.blocked_node);
        for pdb in &s.pdbs {
            let spec = pdb["spec"].as_object().unwrap();
            for (field, value) in spec.iter().filter(|(k, _)| *k != "selector") {
                shapes.insert(format!(
                    "{field}:{}",
                    if value.is_string() { "%" } else { "int" }
                ));
            }
        }
    }
    let expected: BTreeSet<String> = [
        "maxUnavailable:int",
        "maxUnavailable:%",
        "minAvailable:int",
        "minAvailable:%",
    ]
    .into_iter()
    .map(String::from)
    .collect();
    assert_eq!(shapes, expected);
    assert!(empty_dir_deployments > 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_host_has_a_kernel_update_and_some_have_more() {
    let scenario = Scenario::generate(24, 5);
    let cluster =
        Cluster::start(Store::new(), &scenario, Timings::default(), Faults::none()).unwrap();
    let mut kubelet_patches = 0;
    let mut security = 0;
    let mut ordinary = 0;
    for (name, host) in cluster.hosts() {
        let pending = host.packages().unwrap().upgradable().unwrap();
        let kernel = pending
            .iter()
            .find(|p| p.name == "linux-image-amd64")
            .unwrap_or_else(|| panic!("{name} has no kernel update"));
        assert_eq!(kernel.impact, Impact::Reboot);
        assert!(kernel.security);
        if let Some(kubelet) = pending.iter().find(|p| p.name == "kubelet") {
            assert_eq!(kubelet.candidate_version, KUBELET_PATCH);
            assert_eq!(kubelet.impact, Impact::ServiceRestart);
            assert_eq!(kubelet.blocked, Some(Blocked::KubernetesPin));
            kubelet_patches += 1;
        }
        security += pending
            .iter()
            .filter(|p| p.security && p.impact == Impact::None)
            .count();
        ordinary += pending.iter().filter(|p| !p.security).count();
        assert!(
            host.exists(std::path::Path::new("/etc/os-release"))
                .unwrap()
        );
    }
    assert!(
        kubelet_patches > 0 && kubelet_patches < 24,
        "{kubelet_patches}"
    );
    assert!(security > 0);
    assert!(ordinary > 0);
    cluster.shutdown().await;
}
