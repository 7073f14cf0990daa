//! rota installed, upgraded and removed with the real `helm` on the real control plane, in the
//! middle of a rollout, judged by the independent monitor (see [`rota_tests::real_rollout`]):
//! `helm install` of `deploy/helm/rota`, a rollout of 12 simulated nodes, `helm upgrade` with
//! changed values while nodes are being maintained (the agents' DaemonSet rolls its pods, the
//! coordinator's pod is replaced), then `helm uninstall`. No slot may be lost, no node maintained
//! twice, no budget broken; what the uninstall leaves is exactly what `deploy/README.md` says.
//! Skipped (with a message) when `tests/control-plane/build.sh` has not been run, except under
//! `CI=true`, where it fails.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use k8s_openapi::api::apps::v1::DaemonSet;
use k8s_openapi::api::core::v1::{ConfigMap, Node, Secret};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::ListParams;
use kube::{Api, ResourceExt};
use rota_tests::control_plane::eventually;
use rota_tests::helm::{Helm, NAMESPACE};
use rota_tests::real_rollout::{
    Install, RealRollout, Setup, assert_each_node_maintained_once, assert_never_refused,
    assert_safe, not_done,
};

const NODES: usize = 12;
const MAX_UNAVAILABLE: u32 = 3;
const ROLLOUT_DEADLINE: Duration = Duration::from_secs(900);
/// A bare cluster has no Prometheus operator, so no ServiceMonitor or PrometheusRule kinds.
const VALUES: &str = "monitoring:\n  enabled: false\n";
/// What the upgrade changes: the coordinator's log filter (its pod template) and the agents'
/// requests (their DaemonSet's template, so the DaemonSet controller replaces every agent pod).
const UPGRADED: &str = "monitoring:\n  enabled: false\ncoordinator:\n  logFilter: debug\n\
agent:\n  resources:\n    requests:\n      cpu: 20m\n      memory: 48Mi\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn helm_install_upgrade_mid_rollout_and_uninstall_on_the_real_control_plane() {
    let Some(mut rollout) = RealRollout::start(Setup {
        install: Install::Helm(VALUES.to_owned()),
        ..Setup::new(NODES, 3)
    })
    .await
    else {
        return;
    };
    let helm = Helm::for_test().unwrap();
    let kubeconfig = rollout.cp.admin_kubeconfig();
    let kubeconfig_arg = kubeconfig.display().to_string();
    let agents = rollout.begin(MAX_UNAVAILABLE).await;

    // Once a few nodes are done and others are on their way: helm upgrade.
    eventually("four nodes done", || async {
        let reboots = rollout.monitor.verdict().reboots;
        let nodes = rollout.node_objects().await;
        let done = nodes
            .iter()
            .filter(|n| not_done(n, &reboots).is_none())
            .count();
        (4..NODES).contains(&done).then_some(())
    })
    .await;
    let upgrade_began = jiff::Timestamp::now();
    let upgraded = helm.run(
        &["upgrade", "rota", "--kubeconfig", &kubeconfig_arg],
        UPGRADED,
    );
    assert!(upgraded.is_ok(), "helm upgrade: {upgraded:?}");
    // The Deployment's new pod replaces the coordinator's: the process is killed and started.
    rollout.coordinator.kill_and_restart().await;
    eprintln!("helm upgrade mid-rollout; coordinator replaced");

    let makespan = rollout.wait_done(&BTreeSet::new(), ROLLOUT_DEADLINE).await;
    // The DaemonSet controller replaced every agent pod with one of the new template.
    let daemon_sets: Api<DaemonSet> = Api::namespaced(rollout.admin.clone(), NAMESPACE);
    eventually("every agent pod of the upgraded template", || async {
        let ds = daemon_sets.get("rota-agent").await.ok()?;
        let status = ds.status?;
        (status.observed_generation == ds.metadata.generation
            && status.updated_number_scheduled == Some(NODES as i32))
        .then_some(())
    })
    .await;
    let mut verdict = rollout.monitor.stop().await;
    // The coordinator's Deployment is `Recreate` (only the leader is ever Ready, so a rolling
    // update would never finish; deploy/README.md): the upgrade deletes both coordinator pods
    // at once, below their own budget. PodDisruptionBudgets do not govern a Deployment's
    // rollout, and that one is the upgrade's, not rota's; any other budget broken is a failure.
    let (recreated, others): (Vec<_>, Vec<_>) = verdict
        .violations
        .into_iter()
        .partition(|v| v.pdb == format!("{NAMESPACE}/rota-coordinator"));
    assert!(
        recreated.iter().all(|v| v.time >= upgrade_began),
        "the coordinator's budget broken before the upgrade: {recreated:?}"
    );
    verdict.violations = others;
    eprintln!(
        "{NODES} nodes done in {:.1}s across the upgrade; most unavailable {} (control plane {}); \
         violations {}",
        makespan.as_secs_f64(),
        verdict.max_unavailable.overall.count,
        verdict.max_unavailable.control_plane.count,
        verdict.violations.len()
    );
    assert_safe(&verdict, MAX_UNAVAILABLE as usize);
    assert_each_node_maintained_once(&verdict, &agents, NODES);
    assert_never_refused(&rollout.coordinator);

    // helm uninstall: what helm made goes; what stays is what deploy/README.md lists.
    let removed = helm.on_cluster(&["uninstall", "rota", "--wait"], &kubeconfig);
    assert!(removed.is_ok(), "helm uninstall: {removed:?}");
    drop(rollout.coordinator);
    agents.shutdown().await;
    assert!(
        daemon_sets.get_opt("rota-agent").await.unwrap().is_none(),
        "the agents' DaemonSet is gone"
    );
    let crds: Api<CustomResourceDefinition> = Api::all(rollout.admin.clone());
    assert!(
        crds.get_opt("maintenancepolicies.rota.dev")
            .await
            .unwrap()
            .is_some(),
        "helm keeps the CRD (and so the MaintenancePolicies)"
    );
    let nodes: Api<Node> = Api::all(rollout.admin.clone());
    for node in nodes.list(&ListParams::default()).await.unwrap().items {
        let name = node.name_any();
        assert_ne!(
            node.spec.as_ref().and_then(|s| s.unschedulable),
            Some(true),
            "{name} left cordoned"
        );
        let rota: BTreeMap<&String, &String> = node
            .annotations()
            .iter()
            .filter(|(k, _)| k.starts_with("rota.dev/"))
            .collect();
        let keys: Vec<&str> = rota.keys().map(|k| k.as_str()).collect();
        assert_eq!(keys, ["rota.dev/last-maintenance"], "{name}: {rota:?}");
    }
    let config_maps: Api<ConfigMap> = Api::namespaced(rollout.admin.clone(), NAMESPACE);
    let left: BTreeSet<String> = config_maps
        .list(&ListParams::default())
        .await
        .unwrap()
        .items
        .iter()
        .map(|c| c.name_any())
        .collect();
    let mut expected: BTreeSet<String> = ["kube-root-ca.crt", "rota-ca", "rota-fencing"]
        .into_iter()
        .map(str::to_owned)
        .collect();
    expected.extend(
        rollout
            .scenario
            .nodes
            .iter()
            .map(|n| format!("rota-slot-{}", n.name)),
    );
    assert_eq!(left, expected, "the ConfigMaps left in {NAMESPACE}");
    let secrets: Api<Secret> = Api::namespaced(rollout.admin.clone(), NAMESPACE);
    let left: BTreeSet<String> = secrets
        .list(&ListParams::default())
        .await
        .unwrap()
        .items
        .iter()
        .map(|s| s.name_any())
        .collect();
    let expected: BTreeSet<String> = ["rota-ca", "rota-coordinator-tls"]
        .into_iter()
        .map(str::to_owned)
        .collect();
    assert_eq!(left, expected, "the Secrets left in {NAMESPACE}");
    rollout.nodes.shutdown().await;
}
