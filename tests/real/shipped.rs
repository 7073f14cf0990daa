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

use std::net::{Ipv4Addr, SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use k8s_openapi::api::authentication::v1::TokenRequest;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{ConfigMap, Node, Secret, ServiceAccount};
use k8s_openapi::api::events::v1::Event;
use kube::api::{ApiResource, DynamicObject, GroupVersionKind, PostParams};
use kube::{Api, ResourceExt};
use rota_tests::control_plane::{Binaries, ControlPlane};
use rota_tests::kubectl::Kubectl;
use serde_json::{Value, json};
use tokio::process::{Child, Command};

/// rota's namespace, as `deploy/` creates it.
const NAMESPACE: &str = "rota-system";
/// How long the coordinator may take to lead and settle.
const DEADLINE: Duration = Duration::from_secs(60);

/// The `rota-coordinator` binary of this build: `cargo test --workspace` builds it (the
/// coordinator's own integration tests need it) next to this test's executable.
fn coordinator_binary() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let dir = exe.parent().and_then(Path::parent).unwrap();
    let binary = dir.join("rota-coordinator");
    assert!(
        binary.exists(),
        "{} is not built: run `cargo build -p rota-coordinator` (cargo test --workspace does)",
        binary.display()
    );
    binary
}

fn free_port() -> u16 {
    TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A kubeconfig with a fresh API token of ServiceAccount `account` in rota's namespace.
async fn kubeconfig_as(cp: &ControlPlane, admin: &kube::Client, account: &str) -> PathBuf {
    let accounts: Api<ServiceAccount> = Api::namespaced(admin.clone(), NAMESPACE);
    let token = accounts
        .create_token_request(account, &PostParams::default(), &TokenRequest::default())
        .await
        .unwrap()
        .status
        .unwrap()
        .token;
    cp.kubeconfig_with_token(account, &token).unwrap()
}

/// A running coordinator process and where it logs.
struct Coordinator {
    child: Child,
    log: PathBuf,
    http: SocketAddr,
}

impl Coordinator {
    fn start(cp: &ControlPlane, kubeconfig: &Path, pod: &str) -> Coordinator {
        let log = cp.dir().join(format!("{pod}.log"));
        let out = std::fs::File::create(&log).unwrap();
        let http = SocketAddr::from((Ipv4Addr::LOCALHOST, free_port()));
        let grpc = SocketAddr::from((Ipv4Addr::LOCALHOST, free_port()));
        let child = Command::new(coordinator_binary())
            .arg("--kubeconfig")
            .arg(kubeconfig)
            .args(["--pod-name", pod, "--namespace", NAMESPACE])
            .args(["--grpc-addr", &grpc.to_string()])
            .args(["--http-addr", &http.to_string()])
            .env("ROTA_LOG", "info")
            .env_remove("ROTA_IN_CLUSTER")
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .stdin(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        Coordinator { child, log, http }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

/// The status `GET /readyz` on `addr` answers, if it answers.
async fn readyz(addr: SocketAddr) -> Option<u16> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr).await.ok()?;
    stream
        .write_all(b"GET /readyz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await
        .ok()?;
    let mut answer = String::new();
    stream.read_to_string(&mut answer).await.ok()?;
    answer.split_whitespace().nth(1)?.parse().ok()
}

/// Polls `check` until it returns `Some`, failing with `what` and the coordinator's log at the
/// deadline, or at once when the process exited.
async fn eventually<T, F: Future<Output = Option<T>>>(
    coordinator: &mut Coordinator,
    what: &str,
    mut check: impl FnMut() -> F,
) -> T {
    let deadline = tokio::time::Instant::now() + DEADLINE;
    loop {
        if let Some(value) = check().await {
            return value;
        }
        let exited = coordinator.child.try_wait().unwrap();
        assert!(
            exited.is_none() && tokio::time::Instant::now() < deadline,
            "waiting for {what}: {}\n{}",
            exited.map_or("timed out".to_string(), |s| format!(
                "the coordinator exited ({s})"
            )),
            coordinator.log()
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_shipped_coordinator_runs_with_the_shipped_permissions() {
    let Some(binaries) = Binaries::for_test() else {
        return;
    };
    let cp = ControlPlane::start(binaries).await.unwrap();
    let admin = cp.admin_client().await.unwrap();
    let kubectl = Kubectl::new(&std::fs::read_to_string(cp.admin_kubeconfig()).unwrap());
    let deploy = concat!(env!("CARGO_MANIFEST_DIR"), "/../deploy");

    // deploy/ as a user applies it: the CRD, then the base (namespace, accounts, RBAC, the
    // coordinator's Deployment and Service, the agents' DaemonSet), then a policy.
    kubectl
        .run(&["apply", "-k", &format!("{deploy}/crd")])
        .await;
    kubectl
        .run(&[
            "wait",
            "--for=condition=Established",
            "--timeout=60s",
            "crd/maintenancepolicies.rota.dev",
        ])
        .await;
    let applied = kubectl
        .run(&["apply", "-k", &format!("{deploy}/base")])
        .await;
    for object in [
        "namespace/rota-system",
        "serviceaccount/rota-coordinator",
        "clusterrole.rbac.authorization.k8s.io/rota-coordinator",
        "deployment.apps/rota-coordinator",
        "daemonset.apps/rota-agent",
    ] {
        assert!(applied.contains(object), "{object} not applied:\n{applied}");
    }
    kubectl
        .run(&[
            "apply",
            "-f",
            &format!("{deploy}/crd/examples/maintenancepolicy.yaml"),
        ])
        .await;

    // Without rota's permissions (the namespace's default account) the coordinator is refused
    // its Lease, never leads, and says why.
    let unprivileged = kubeconfig_as(&cp, &admin, "default").await;
    let mut refused = Coordinator::start(&cp, &unprivileged, "unprivileged");
    let log = refused.log.clone();
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
