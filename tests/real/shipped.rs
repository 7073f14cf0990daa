//! rota as shipped, against the real control plane: `deploy/` applied with the built kubectl
//! (the real server validates every manifest and the CRD's structural schema), then the
//! `rota-coordinator` *binary* run as a process with a token of the ServiceAccount `deploy/`
//! creates — so the ClusterRole and Roles in `deploy/` are exactly what it has. It must lead
//! (its Lease), bootstrap its CA into the Secrets and ConfigMap its Role names, load its slot
//! ledger (a list of its namespace's ledger ConfigMaps) and repair a forged slot annotation on a
//! Node (with a `LedgerMismatch` Event), patch the MaintenancePolicy's status, answer
//! `/readyz`, and never be refused a call. The same binary
//! with a ServiceAccount `deploy/` grants nothing must be refused, and say so: the check can
//! fail.

// Helpers outside #[test] functions fail the test the same way the tests do.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{ConfigMap, Node, Secret};
use k8s_openapi::api::events::v1::Event;
use kube::api::{ApiResource, DynamicObject, GroupVersionKind, PostParams};
use kube::{Api, ResourceExt};
use rota_tests::control_plane::{ControlPlane, binaries_for_test};
use rota_tests::kubectl::Kubectl;
use rota_tests::shipped::{
    Coordinator, NAMESPACE, apply_deploy, deploy_dir, eventually, kubeconfig_as, readyz,
};
use serde_json::{Value, json};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_shipped_coordinator_runs_with_the_shipped_permissions() {
    let Some(binaries) = binaries_for_test() else {
        return;
    };
    let cp = ControlPlane::start(binaries).await.unwrap();
    let admin = cp.admin_client().await.unwrap();
    let kubectl = Kubectl::new(&std::fs::read_to_string(cp.admin_kubeconfig()).unwrap());

    apply_deploy(&kubectl).await;
    let example = format!("{}/crd/examples/maintenancepolicy.yaml", deploy_dir());
    kubectl.run(&["apply", "-f", &example]).await;

    // Without rota's permissions (the namespace's default account) the coordinator is refused
    // its Lease, never leads, and says why.
    let unprivileged = kubeconfig_as(&cp, &admin, "default").await;
    let mut refused = Coordinator::start(&cp, &unprivileged, "unprivileged");
    let log = refused.log_path().to_path_buf();
    eventually(&mut refused, "the refusal in the log", || {
        let log = std::fs::read_to_string(&log).unwrap_or_default();
        async move { log.to_lowercase().contains("forbidden").then_some(()) }
    })
    .await;
    assert_ne!(readyz(refused.http).await, Some(200), "{}", refused.log());
    drop(refused);

    // Someone with Node patch rights forged a granted slot with token 777 on a Node.
    let nodes: Api<Node> = Api::all(admin.clone());
    let forged = json!({
        "token": 777, "phase": "granted", "operation": {"kind": "reboot"}, "origin": "agent",
        "requestedAt": "2024-01-01T00:00:00Z", "admittedAt": "2024-01-01T00:00:00Z",
        "since": "2024-01-01T00:00:00Z", "grantedAt": "2024-01-01T00:00:00Z",
        "leaseExpiresAt": "2099-01-01T00:00:00Z", "cordonedByRota": false
    });
    let node: Node = serde_json::from_value(json!({
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {"name": "worker-forged", "annotations": {"rota.dev/slot": forged.to_string()}}
    }))
    .unwrap();
    nodes.create(&PostParams::default(), &node).await.unwrap();

    // With the shipped account it leads, bootstraps its CA and reports on the policy.
    let kubeconfig = kubeconfig_as(&cp, &admin, "rota-coordinator").await;
    let mut coordinator = Coordinator::start(&cp, &kubeconfig, "rota-coordinator-0");
    let leases: Api<Lease> = Api::namespaced(admin.clone(), NAMESPACE);
    eventually(&mut coordinator, "the leader Lease", || {
        let leases = leases.clone();
        async move {
            let lease = leases.get("rota-coordinator").await.ok()?;
            (lease.spec?.holder_identity.as_deref() == Some("rota-coordinator-0")).then_some(())
        }
    })
    .await;
    let http = coordinator.http;
    eventually(
        &mut coordinator,
        "/readyz 200 (leading, caches synced)",
        || async move { (readyz(http).await == Some(200)).then_some(()) },
    )
    .await;
    let config_maps: Api<ConfigMap> = Api::namespaced(admin.clone(), NAMESPACE);
    let secrets: Api<Secret> = Api::namespaced(admin.clone(), NAMESPACE);
    eventually(&mut coordinator, "the CA published", || {
        let (config_maps, secrets) = (config_maps.clone(), secrets.clone());
        async move {
            config_maps.get("rota-ca").await.ok()?;
            secrets.get("rota-ca").await.ok()?;
            secrets.get("rota-coordinator-tls").await.ok()
        }
    })
    .await;
    let resource = ApiResource::from_gvk(&GroupVersionKind::gvk(
        "rota.dev",
        "v1alpha1",
        "MaintenancePolicy",
    ));
    let policies: Api<DynamicObject> = Api::all_with(admin.clone(), &resource);
    let conditions = eventually(&mut coordinator, "the policy's status", || {
        let policies = policies.clone();
        async move {
            let list = policies.list(&Default::default()).await.ok()?;
            let policy = list.items.into_iter().next()?;
            let conditions = policy
                .data
                .pointer("/status/conditions")?
                .as_array()?
                .clone();
            (!conditions.is_empty()).then_some(conditions)
        }
    })
    .await;
    eprintln!(
        "policy conditions: {:?}",
        conditions
            .iter()
            .map(|c| (c["type"].clone(), c["status"].clone()))
            .collect::<Vec<(Value, Value)>>()
    );
    // The forged slot was not adopted: the annotation is gone, an Event says why, and the
    // fencing counter never saw the token.
    eventually(&mut coordinator, "the forged annotation repaired", || {
        let nodes = nodes.clone();
        async move {
            let node = nodes.get("worker-forged").await.ok()?;
            (!node.annotations().contains_key("rota.dev/slot")).then_some(())
        }
    })
    .await;
    let events: Api<Event> = Api::namespaced(admin.clone(), "default");
    eventually(&mut coordinator, "the LedgerMismatch Event", || {
        let events = events.clone();
        async move {
            let list = events.list(&Default::default()).await.ok()?;
            list.items
                .into_iter()
                .any(|e| {
                    e.reason.as_deref() == Some("LedgerMismatch")
                        && e.regarding.and_then(|r| r.name).as_deref() == Some("worker-forged")
                })
                .then_some(())
        }
    })
    .await;
    let counter = config_maps
        .get_opt("rota-fencing")
        .await
        .unwrap()
        .and_then(|cm| cm.data?.get("lastToken").cloned());
    assert_ne!(counter.as_deref(), Some("777"));
    let log = coordinator.log();
    assert!(
        !log.to_lowercase().contains("forbidden"),
        "the shipped coordinator was refused a call:\n{log}"
    );
}
