//! The safety monitor against the real kube-apiserver (and its real disruption controller and
//! eviction API): what it judges on the emulator it judges the same on the real thing. No
//! kubelets run here, so the pods are unbound and their status is written here as a kubelet
//! would. Skipped (with a message) when `tests/control-plane/build.sh` has not been run,
//! except under `CI=true`, where it fails.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use k8s_openapi::api::core::v1::{Node, Pod};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use kube::Api;
use kube::api::{DeleteParams, EvictParams, Patch, PatchParams, PostParams};
use rota_monitor::{Cause, Monitor, MonitorConfig};
use rota_tests::control_plane::{ControlPlane, binaries_for_test};
use serde_json::json;

const DEADLINE: Duration = Duration::from_secs(60);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_monitor_judges_the_real_api_server() {
    let Some(binaries) = binaries_for_test() else {
        return;
    };
    let cp = ControlPlane::start(binaries).await.unwrap();
    let admin = cp.admin_client().await.unwrap();
    let monitor = Monitor::start(admin.clone(), MonitorConfig::default())
        .await
        .unwrap();
    let pp = PostParams::default();

    // Three ready pods under a budget of minAvailable 2. They name a scheduler that does not
    // exist, so they stay unbound and no node's health touches them.
    let pods: Api<Pod> = Api::default_namespaced(admin.clone());
    for name in ["web-0", "web-1", "web-2"] {
        let pod = serde_json::from_value(json!({
            "metadata": {"name": name, "labels": {"app": "web"}},
            "spec": {
                "schedulerName": "nobody",
                "containers": [{"name": "main", "image": "registry.k8s.io/pause:3.10"}],
            },
        }))
        .unwrap();
        pods.create(&pp, &pod).await.unwrap();
        let ready = json!({"status": {
            "phase": "Running",
            "conditions": [{"type": "Ready", "status": "True"}],
        }});
        pods.patch_status(name, &PatchParams::default(), &Patch::Merge(ready))
            .await
            .unwrap();
    }
    let pdbs: Api<PodDisruptionBudget> = Api::default_namespaced(admin.clone());
    pdbs.create(
        &pp,
        &serde_json::from_value(json!({
            "metadata": {"name": "web"},
            "spec": {"minAvailable": 2, "selector": {"matchLabels": {"app": "web"}}},
        }))
        .unwrap(),
    )
    .await
    .unwrap();
    monitor
        .wait_for("three healthy pods under the budget", DEADLINE, |v| {
            let b = v.budgets.get("default/web")?;
            (b.healthy == 3 && b.desired == Some(2)).then_some(())
        })
        .await
        .unwrap();

    // An eviction the budget allows (once the real disruption controller has counted the
    // pods): down to exactly the desired count, not a violation.
    let deadline = tokio::time::Instant::now() + DEADLINE;
    while let Err(e) = pods.evict("web-0", &EvictParams::default()).await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "eviction refused: {e}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    monitor
        .wait_for("the eviction seen", DEADLINE, |v| {
            (v.budgets.get("default/web")?.healthy == 2).then_some(())
        })
        .await
        .unwrap();
    assert!(
        monitor.verdict().violations.is_empty(),
        "{}",
        monitor.verdict().render()
    );

    // A raw DELETE with the budget at its limit: a violation, by deletion.
    pods.delete("web-1", &DeleteParams::default())
        .await
        .unwrap();
    let verdict = monitor
        .wait_for("the delete flagged", DEADLINE, |v| {
            (!v.violations.is_empty()).then(|| v.clone())
        })
        .await
        .unwrap();
    let text = verdict.render();
    assert_eq!(verdict.violations.len(), 1, "{text}");
    let v = &verdict.violations[0];
    assert_eq!(v.pod, "default/web-1", "{text}");
    assert_eq!(v.cause, Cause::Deletion, "{text}");
    assert_eq!((v.healthy, v.desired), (1, 2), "{text}");

    // A node that never reports Ready is unavailable.
    let nodes: Api<Node> = Api::all(admin.clone());
    let node = serde_json::from_value(json!({"metadata": {"name": "silent"}})).unwrap();
    nodes.create(&pp, &node).await.unwrap();
    monitor
        .wait_for("the silent node unavailable", DEADLINE, |v| {
            (v.max_unavailable.overall.nodes == ["silent"]).then_some(())
        })
        .await
        .unwrap();
    let verdict = monitor.stop().await;
    assert!(!verdict.lost_track, "{}", verdict.render());
}
