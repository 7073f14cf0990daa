//! The real control plane itself, before anything of rota runs on it: it starts, answers
//! `/readyz`, and enforces what the emulator does not — ServiceAccount JWTs checked by
//! TokenReview, the Node authorizer, NodeRestriction admission, the real disruption controller
//! and eviction, and the structural schema of rota's CRD. Skipped (with a message) when
//! `tests/control-plane/build.sh` has not been run, except under `CI=true`, where it fails.

// Helpers outside #[test] functions fail the test the same way the tests do.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use k8s_openapi::api::authentication::v1::{
    BoundObjectReference, TokenRequest, TokenRequestSpec, TokenReview, TokenReviewSpec,
};
use k8s_openapi::api::core::v1::{Node, Pod, Secret, ServiceAccount};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use kube::Api;
use kube::api::{
    ApiResource, DynamicObject, EvictParams, GroupVersionKind, Patch, PatchParams, PostParams,
};
use rota_tests::control_plane::{ControlPlane, binaries_for_test, eventually};
use rota_tests::kubectl::Kubectl;
use serde_json::{Value, json};

fn from_json<T: k8s_openapi::serde::de::DeserializeOwned>(value: Value) -> T {
    serde_json::from_value(value).unwrap()
}

/// The HTTP status of a refused call.
fn refused<T: std::fmt::Debug>(result: kube::Result<T>) -> (u16, String) {
    match result {
        Err(kube::Error::Api(status)) => (status.code, status.message),
        other => panic!("expected the API server to refuse, got {other:?}"),
    }
}

fn pod(name: &str, node: Option<&str>, extra: Value) -> Pod {
    let mut pod = json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": "default"},
        "spec": {"containers": [{"name": "main", "image": "registry.k8s.io/pause:3.10"}]},
    });
    if let Some(node) = node {
        pod["spec"]["nodeName"] = json!(node);
    }
    json_merge(&mut pod, extra);
    from_json(pod)
}

fn json_merge(into: &mut Value, from: Value) {
    match (into, from) {
        (Value::Object(into), Value::Object(from)) => {
            for (key, value) in from {
                json_merge(into.entry(key).or_insert(Value::Null), value);
            }
        }
        (into, from) => *into = from,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_real_control_plane_enforces_what_a_cluster_does() {
    let Some(binaries) = binaries_for_test() else {
        return;
    };
    let mut cp = ControlPlane::start(binaries).await.unwrap();
    let started = std::time::Instant::now();
    let done = |what: &str| eprintln!("[{:5.1}s] done: {what}", started.elapsed().as_secs_f64());
    let admin = cp.admin_client().await.unwrap();
    let pp = PostParams::default();

    // Ready, and the pinned version.
    let readyz = admin
        .request_text(http::Request::get("/readyz").body(Vec::new()).unwrap())
        .await
        .unwrap();
    assert_eq!(readyz, "ok");
    let (kubernetes, _) = rota_tests::control_plane::pinned_versions().unwrap();
    assert_eq!(
        admin.apiserver_version().await.unwrap().git_version,
        kubernetes
    );

    // Nodes and a pod bound to one of them, running as a ServiceAccount with a mounted Secret.
    let nodes: Api<Node> = Api::all(admin.clone());
    for name in ["a", "b"] {
        let node =
            from_json(json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": name}}));
        nodes.create(&pp, &node).await.unwrap();
    }
    let accounts: Api<ServiceAccount> = Api::default_namespaced(admin.clone());
    accounts
        .create(&pp, &from_json(json!({"metadata": {"name": "agent"}})))
        .await
        .unwrap();
    let secrets: Api<Secret> = Api::default_namespaced(admin.clone());
    for name in ["mounted", "elsewhere"] {
        secrets
            .create(
                &pp,
                &from_json(json!({"metadata": {"name": name}, "stringData": {"k": "v"}})),
            )
            .await
            .unwrap();
    }
    let pods: Api<Pod> = Api::default_namespaced(admin.clone());
    let agent_pod = pods
        .create(
            &pp,
            &pod(
                "agent-a",
                Some("a"),
                json!({"spec": {
                    "serviceAccountName": "agent",
                    "volumes": [{"name": "s", "secret": {"secretName": "mounted"}}],
                }}),
            ),
        )
        .await
        .unwrap();
    assert_eq!(
        pods.get("agent-a")
            .await
            .unwrap()
            .spec
            .unwrap()
            .node_name
            .as_deref(),
        Some("a")
    );

    done("nodes, pods, secrets");
    // A pod-bound token with rota's audience, checked by TokenReview: the user, and the node.
    let request = TokenRequest {
        spec: TokenRequestSpec {
            audiences: vec!["rota".to_owned()],
            expiration_seconds: Some(600),
            bound_object_ref: Some(BoundObjectReference {
                api_version: Some("v1".to_owned()),
                kind: Some("Pod".to_owned()),
                name: Some("agent-a".to_owned()),
                uid: agent_pod.metadata.uid.clone(),
            }),
        },
        ..TokenRequest::default()
    };
    let token = accounts
        .create_token_request("agent", &pp, &request)
        .await
        .unwrap()
        .status
        .unwrap()
        .token;
    assert_eq!(token.split('.').count(), 3, "a JWT");
    let reviews: Api<TokenReview> = Api::all(admin.clone());
    let review = |token: String, audience: &str| TokenReview {
        spec: TokenReviewSpec {
            token: Some(token),
            audiences: Some(vec![audience.to_owned()]),
        },
        ..TokenReview::default()
    };
    let status = reviews
        .create(&pp, &review(token.clone(), "rota"))
        .await
        .unwrap()
        .status
        .unwrap();
    assert_eq!(status.authenticated, Some(true), "{status:?}");
    let user = status.user.unwrap();
    assert_eq!(
        user.username.as_deref(),
        Some("system:serviceaccount:default:agent")
    );
    assert_eq!(
        user.extra.unwrap()["authentication.kubernetes.io/node-name"],
        vec!["a".to_owned()]
    );
    // The same token for another audience is not authenticated.
    let other = reviews
        .create(&pp, &review(token, "someone-else"))
        .await
        .unwrap()
        .status
        .unwrap();
    assert_ne!(other.authenticated, Some(true), "{other:?}");

    done("token request and review");
    // The same ServiceAccount's token for the API server itself (no audience asked for): RBAC,
    // which grants it nothing, refuses it the Nodes.
    let api_token = accounts
        .create_token_request("agent", &pp, &TokenRequest::default())
        .await
        .unwrap()
        .status
        .unwrap()
        .token;
    let as_agent = cp.kubeconfig_with_token("agent", &api_token).unwrap();
    let kubectl_as_agent = Kubectl::new(&std::fs::read_to_string(as_agent).unwrap());
    let out = kubectl_as_agent
        .command(&["get", "nodes"])
        .output()
        .await
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains("\"system:serviceaccount:default:agent\" cannot list resource \"nodes\""),
        "{stderr}"
    );

    // The Node authorizer: node a reads the Secret its pod mounts (once its graph has the pod),
    // and is refused any other.
    let node_a = cp
        .client_for("system:node:a", &["system:nodes"])
        .await
        .unwrap();
    let node_a_secrets: Api<Secret> = Api::default_namespaced(node_a.clone());
    eventually("node a may read the Secret its pod mounts", || async {
        node_a_secrets.get("mounted").await.ok()
    })
    .await;
    let (code, message) = refused(node_a_secrets.get("elsewhere").await);
    assert_eq!(code, 403, "{message}");
    assert!(
        message.contains("no relationship found between node 'a' and this object"),
        "{message}"
    );

    done("node authorizer");
    // NodeRestriction: node a labels itself, but may not modify node b.
    let node_a_nodes: Api<Node> = Api::all(node_a);
    let label =
        |value: &str| Patch::Merge(json!({"metadata": {"labels": {"example.com/x": value}}}));
    node_a_nodes
        .patch("a", &PatchParams::default(), &label("mine"))
        .await
        .unwrap();
    let (code, message) = refused(
        node_a_nodes
            .patch("b", &PatchParams::default(), &label("yours"))
            .await,
    );
    assert_eq!(code, 403, "{message}");
    assert!(
        message.contains("node \"a\" is not allowed to modify node \"b\""),
        "{message}"
    );

    done("node restriction");
    // The real disruption controller computes a PDB's status; the eviction API spends it. The
    // pods name a scheduler that does not exist, so they stay unbound and no node's health
    // touches them, and their status is written here as a kubelet would.
    for name in ["web-0", "web-1"] {
        pods.create(
            &pp,
            &pod(
                name,
                None,
                json!({"metadata": {"labels": {"app": "web"}}, "spec": {"schedulerName": "nobody"}}),
            ),
        )
        .await
        .unwrap();
    }
    let pdbs: Api<PodDisruptionBudget> = Api::default_namespaced(admin.clone());
    pdbs.create(
        &pp,
        &from_json(json!({
            "metadata": {"name": "web"},
            "spec": {"minAvailable": 1, "selector": {"matchLabels": {"app": "web"}}},
        })),
    )
    .await
    .unwrap();
    let pdb_status = |want: (i32, i32, i32, i32, &'static str)| {
        let pdbs = pdbs.clone();
        async move {
            let status = pdbs.get("web").await.ok()?.status?;
            let allowed = status
                .conditions?
                .into_iter()
                .find(|c| c.type_ == "DisruptionAllowed")?;
            let got = (
                status.expected_pods,
                status.current_healthy,
                status.desired_healthy,
                status.disruptions_allowed,
                allowed.reason.as_str(),
            );
            (status.observed_generation == Some(1) && got == want).then_some(())
        }
    };
    eventually("the PDB's status over two unready pods", || {
        pdb_status((2, 0, 1, 0, "InsufficientPods"))
    })
    .await;
    for name in ["web-0", "web-1"] {
        let ready = json!({"status": {
            "phase": "Running",
            "conditions": [{"type": "Ready", "status": "True"}],
        }});
        pods.patch_status(name, &PatchParams::default(), &Patch::Merge(ready))
            .await
            .unwrap();
    }
    eventually("the PDB's status over two ready pods", || {
        pdb_status((2, 2, 1, 1, "SufficientPods"))
    })
    .await;
    pods.evict("web-0", &EvictParams::default()).await.unwrap();
    let (code, message) = refused(pods.evict("web-1", &EvictParams::default()).await);
    assert_eq!(code, 429, "{message}");
    assert!(message.contains("disruption budget"), "{message}");

    done("PDB status and eviction");
    // rota's CRD: accepted by the real server, its example policy valid, a bad one refused by
    // the structural schema. The built kubectl applies it.
    let kubectl = Kubectl::new(&std::fs::read_to_string(cp.admin_kubeconfig()).unwrap());
    let deploy = concat!(env!("CARGO_MANIFEST_DIR"), "/../deploy/crd");
    kubectl
        .run(&["apply", "-f", &format!("{deploy}/maintenancepolicy.yaml")])
        .await;
    kubectl
        .wait_established(&["maintenancepolicies.rota.dev"])
        .await;
    kubectl
        .run(&[
            "apply",
            "-f",
            &format!("{deploy}/examples/maintenancepolicy.yaml"),
        ])
        .await;
    let resource = ApiResource::from_gvk(&GroupVersionKind::gvk(
        "rota.dev",
        "v1alpha1",
        "MaintenancePolicy",
    ));
    let policies: Api<DynamicObject> = Api::all_with(admin.clone(), &resource);
    let bad: DynamicObject = from_json(json!({
        "apiVersion": "rota.dev/v1alpha1",
        "kind": "MaintenancePolicy",
        "metadata": {"name": "bad"},
        "spec": {"upgrade": {"mode": "sometimes"}},
    }));
    let (code, message) = refused(policies.create(&pp, &bad).await);
    assert_eq!(code, 422, "{message}");
    assert!(message.contains("spec.upgrade.mode"), "{message}");
    assert_eq!(
        policies
            .list(&Default::default())
            .await
            .unwrap()
            .items
            .len(),
        1
    );

    done("CRD");

    // An API server restart (same port, same flags) keeps every object: they live in etcd. Ready
    // does not mean every resource is served yet: a custom resource's storage answers 429
    // "storage is (re)initializing" for a moment after /readyz is ok.
    let away = cp.restart_apiserver().await.unwrap();
    eprintln!("kube-apiserver restarted in {:.1}s", away.as_secs_f64());
    let admin = cp.admin_client().await.unwrap();
    Api::<Node>::all(admin.clone()).get("a").await.unwrap();
    let policies: Api<DynamicObject> = Api::all_with(admin, &resource);
    let listed = eventually("the MaintenancePolicies after the restart", || async {
        match policies.list(&Default::default()).await {
            Ok(list) => Some(list.items.len()),
            Err(kube::Error::Api(status)) if status.code == 429 => None,
            Err(e) => panic!("listing MaintenancePolicies: {e}"),
        }
    })
    .await;
    assert_eq!(listed, 1);
    done("kube-apiserver restart");

    // The built kubectl is the pinned version, as is the server it talks to.
    let version: Value =
        serde_json::from_str(&kubectl.run(&["version", "-o", "json"]).await).unwrap();
    assert_eq!(version["clientVersion"]["gitVersion"], json!(kubernetes));
    assert_eq!(version["serverVersion"]["gitVersion"], json!(kubernetes));
    done("kubectl version");
}
