//! rota-sim's simulated nodes against the real control plane: each kubelet is a client of the
//! real kube-apiserver as `system:node:<name>`, so the Node authorizer and NodeRestriction
//! judge what it does, while the real scheduler binds the pods, the real workload controllers
//! count them and the real node-lifecycle controller watches the Leases. Skipped (with a
//! message) when `tests/control-plane/build.sh` has not been run, except under `CI=true`, where
//! it fails.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::Api;
use kube::api::{DeleteParams, ListParams, Patch, PatchParams, PostParams};
use rota_agent::host::{Host, RebootMethod};
use rota_sim::cluster::{Faults, RemoteNodes, Scenario, Timings};
use rota_tests::control_plane::{
    ControlPlane, NODE_MONITOR_GRACE_PERIOD, binaries_for_test, eventually,
};
use serde_json::json;

const CONTROL_PLANE_ROLE: &str = "node-role.kubernetes.io/control-plane";

fn condition(node: &Node, kind: &str) -> Option<String> {
    node.status
        .as_ref()?
        .conditions
        .as_ref()?
        .iter()
        .find(|c| c.type_ == kind)
        .map(|c| c.status.clone())
}

fn pod_ready(pod: &Pod) -> bool {
    pod.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

fn boot_id(node: &Node) -> String {
    node.status
        .as_ref()
        .and_then(|s| s.node_info.as_ref())
        .map(|i| i.boot_id.clone())
        .unwrap_or_default()
}

fn code(e: kube::Error) -> u16 {
    match e {
        kube::Error::Api(status) => status.code,
        other => panic!("expected a refusal, got {other}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn simulated_nodes_are_real_api_clients_under_node_restriction() {
    let Some(binaries) = binaries_for_test() else {
        return;
    };
    let cp = ControlPlane::start(binaries).await.unwrap();
    let admin = cp.admin_client().await.unwrap();
    let scenario = Scenario::generate(6, 1);
    let mut identities = Vec::new();
    for spec in &scenario.nodes {
        let user = format!("system:node:{}", spec.name);
        let client = cp.client_for(&user, &["system:nodes"]).await.unwrap();
        identities.push((spec.clone(), client));
    }
    let node_clients: Vec<kube::Client> = identities.iter().map(|(_, c)| c.clone()).collect();
    let started = std::time::Instant::now();
    let timings = Timings::for_real_control_plane(NODE_MONITOR_GRACE_PERIOD);
    let sim = RemoteNodes::start(identities, &admin, timings.clone(), Faults::default())
        .await
        .unwrap();

    // Registered, Ready, and the control-plane nodes labelled as kubeadm labels them.
    let nodes: Api<Node> = Api::all(admin.clone());
    eventually("six Ready nodes", || async {
        let list = nodes.list(&ListParams::default()).await.ok()?;
        (list.items.len() == 6
            && list
                .items
                .iter()
                .all(|n| condition(n, "Ready").as_deref() == Some("True")))
        .then_some(())
    })
    .await;
    eprintln!(
        "six simulated nodes Ready after {:.1}s",
        started.elapsed().as_secs_f64()
    );
    let control_planes = scenario.control_plane_names();
    assert_eq!(control_planes.len(), 3);
    for name in &control_planes {
        let node = nodes.get(name).await.unwrap();
        let labels = node.metadata.labels.unwrap_or_default();
        assert!(
            labels.contains_key(CONTROL_PLANE_ROLE),
            "{name}: {labels:?}"
        );
    }

    // The control-plane nodes publish kubeadm's mirror pods, which the real API accepts only
    // from the node they are bound to, owned by its Node.
    let system: Api<Pod> = Api::namespaced(admin.clone(), "kube-system");
    eventually("twelve Ready mirror pods", || async {
        let list = system
            .list(&ListParams::default().labels("tier=control-plane"))
            .await
            .ok()?;
        (list.items.len() == 12 && list.items.iter().all(pod_ready)).then_some(())
    })
    .await;

    // A Deployment: the real scheduler binds its pods to the workers, the kubelets run them,
    // the real Deployment controller counts them ready.
    let deployments: Api<Deployment> = Api::namespaced(admin.clone(), "default");
    let deployment = serde_json::from_value(json!({
        "metadata": {"name": "web"},
        "spec": {
            "replicas": 4,
            "selector": {"matchLabels": {"app": "web"}},
            "template": {
                "metadata": {"labels": {"app": "web"}},
                "spec": {
                    "terminationGracePeriodSeconds": 30,
                    "containers": [{"name": "web", "image": "registry.k8s.io/pause:3.10"}],
                },
            },
        },
    }))
    .unwrap();
    deployments
        .create(&PostParams::default(), &deployment)
        .await
        .unwrap();
    let ready_replicas = || async {
        let d = deployments.get("web").await.ok()?;
        (d.status?.ready_replicas? == 4).then_some(())
    };
    eventually("four ready replicas of web", ready_replicas).await;
    let pods: Api<Pod> = Api::namespaced(admin.clone(), "default");
    let web = pods
        .list(&ListParams::default().labels("app=web"))
        .await
        .unwrap()
        .items;
    for pod in &web {
        let node = pod.spec.as_ref().and_then(|s| s.node_name.clone());
        let node = node.unwrap();
        assert!(
            !control_planes.contains(&node),
            "{node} is a tainted control-plane node"
        );
    }

    // NodeRestriction and the Node authorizer: a node may not touch another node, give itself
    // a role, or write the status of a pod bound elsewhere.
    let workers = scenario.worker_names();
    let (a, b) = (&workers[0], &workers[1]);
    let a_index = scenario.nodes.iter().position(|n| &n.name == a).unwrap();
    let as_a: Api<Node> = Api::all(node_clients[a_index].clone());
    let label = |key: &str| json!({"metadata": {"labels": {key: "true"}}});
    let refused = as_a
        .patch(b, &PatchParams::default(), &Patch::Merge(label("pool")))
        .await
        .unwrap_err();
    assert_eq!(code(refused), 403);
    let refused = as_a
        .patch(
            a,
            &PatchParams::default(),
            &Patch::Merge(label(CONTROL_PLANE_ROLE)),
        )
        .await
        .unwrap_err();
    assert_eq!(code(refused), 403);
    let elsewhere = web
        .iter()
        .find(|p| p.spec.as_ref().and_then(|s| s.node_name.as_deref()) != Some(a.as_str()))
        .unwrap();
    let pods_as_a: Api<Pod> = Api::namespaced(node_clients[a_index].clone(), "default");
    let status = json!({"status": {"phase": "Failed"}});
    let refused = pods_as_a
        .patch_status(
            elsewhere.metadata.name.as_deref().unwrap(),
            &PatchParams::default(),
            &Patch::Merge(status),
        )
        .await
        .unwrap_err();
    assert_eq!(code(refused), 403);

    // Graceful deletion: the pod's kubelet stops it and removes it, the ReplicaSet replaces it.
    let victim = web[0].metadata.name.clone().unwrap();
    pods.delete(&victim, &DeleteParams::default())
        .await
        .unwrap();
    eventually("the deleted pod removed by its kubelet", || async {
        pods.get_opt(&victim)
            .await
            .ok()
            .and_then(|p| p.is_none().then_some(()))
    })
    .await;
    eventually("web back to four ready replicas", ready_replicas).await;

    // A reboot: the kubelet goes silent, the real node-lifecycle controller marks the node
    // Unknown; after the boot it reports Ready with a new boot id.
    let rebooted = web[1]
        .spec
        .as_ref()
        .and_then(|s| s.node_name.clone())
        .unwrap();
    let before = boot_id(&nodes.get(&rebooted).await.unwrap());
    sim.host(&rebooted)
        .unwrap()
        .reboot(&RebootMethod::Systemctl)
        .unwrap();
    eventually("the rebooting node marked Unknown", || async {
        let node = nodes.get(&rebooted).await.ok()?;
        (condition(&node, "Ready").as_deref() == Some("Unknown")).then_some(())
    })
    .await;
    eventually("the rebooted node Ready with a new boot id", || async {
        let node = nodes.get(&rebooted).await.ok()?;
        (condition(&node, "Ready").as_deref() == Some("True") && boot_id(&node) != before)
            .then_some(())
    })
    .await;
    eventually("web four ready replicas after the reboot", ready_replicas).await;

    sim.shutdown().await;
}
