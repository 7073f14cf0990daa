//! The emulated API server driven by the real `kubectl`.

// Helpers outside #[test] functions fail the test the same way the tests do.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use rota_sim::apiserver::{ApiServer, GroupResource, ResourceKey, ServerHandle, Store, meta};
use rota_tests::kubectl::Kubectl;
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::Command;

struct Cluster {
    store: Store,
    _server: ServerHandle,
    kubectl: Kubectl,
}

impl Cluster {
    /// The emulated API server and a kubectl for it; `None` (skipped) when kubectl is not
    /// built and `CI` is unset.
    async fn start(store: Store) -> Option<Self> {
        let server = ApiServer::start(store.clone(), SocketAddr::from((Ipv4Addr::LOCALHOST, 0)))
            .await
            .unwrap();
        let kubectl = Kubectl::for_test(&server.kubeconfig())?;
        Some(Cluster {
            store,
            _server: server,
            kubectl,
        })
    }

    fn command(&self, args: &[&str]) -> Command {
        self.kubectl.command(args)
    }

    /// Run kubectl, requiring success; returns stdout.
    async fn kubectl(&self, args: &[&str]) -> String {
        self.kubectl.run(args).await
    }

    fn get(&self, resource: GroupResource, ns: Option<&str>, name: &str) -> Option<Value> {
        self.store
            .get(&ResourceKey::new(resource, ns, name))
            .ok()
            .map(|v| (*v).clone())
    }

    fn write(&self, name: &str, content: &str) -> PathBuf {
        let path = self.kubectl.dir().join(name);
        std::fs::write(&path, content).unwrap();
        path
    }
}

fn rows(output: &str) -> Vec<Vec<String>> {
    output
        .lines()
        .map(|l| l.split_whitespace().map(str::to_string).collect())
        .collect()
}

/// Poll `check` until it holds, failing after a deadline.
async fn eventually(what: &str, mut check: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    while !check() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn seed() -> Store {
    let store = Store::new();
    for (name, ready, ip) in [("node-a", true, "10.0.0.1"), ("node-b", false, "10.0.0.2")] {
        store
            .create(
                &GroupResource::core("nodes"),
                None,
                json!({
                    "metadata": {"name": name, "labels": {"node-role.kubernetes.io/worker": ""}},
                    "status": {
                        "conditions": [{"type": "Ready", "status": if ready { "True" } else { "False" }}],
                        "addresses": [{"type": "InternalIP", "address": ip}],
                        "nodeInfo": {"kubeletVersion": "v1.33.1", "osImage": "Debian GNU/Linux 12 (bookworm)", "kernelVersion": "6.1.0", "containerRuntimeVersion": "containerd://1.7.24"}
                    }
                }),
            )
            .unwrap();
    }
    let rs = store
        .create(
            &GroupResource::new("apps", "replicasets"),
            Some("default"),
            json!({"metadata": {"name": "web"}, "spec": {"replicas": 3, "selector": {"matchLabels": {"app": "web"}}}}),
        )
        .unwrap();
    for (i, node) in ["node-a", "node-a", "node-b"].iter().enumerate() {
        store
            .create(
                &GroupResource::core("pods"),
                Some("default"),
                json!({
                    "metadata": {"name": format!("web-{i}"), "labels": {"app": "web"},
                        "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "web", "uid": meta::uid(&rs), "controller": true}]},
                    "spec": {"nodeName": node, "containers": [{"name": "web", "image": "nginx"}]},
                    "status": {"phase": "Running", "podIP": format!("10.1.0.{i}"),
                        "conditions": [{"type": "Ready", "status": "True"}],
                        "containerStatuses": [{"name": "web", "ready": true, "restartCount": i, "image": "nginx", "imageID": "", "state": {"running": {}}}]}
                }),
            )
            .unwrap();
    }
    store
        .create(
            &GroupResource::core("pods"),
            Some("kube-system"),
            json!({"metadata": {"name": "pending"}, "spec": {"containers": [{"name": "c", "image": "i"}]}}),
        )
        .unwrap();
    store
        .create(
            &GroupResource::new("policy", "poddisruptionbudgets"),
            Some("default"),
            json!({"metadata": {"name": "web"}, "spec": {"maxUnavailable": 1, "selector": {"matchLabels": {"app": "web"}}}}),
        )
        .unwrap();
    store
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_get_renders_tables() {
    let Some(c) = Cluster::start(seed()).await else {
        return;
    };
    eventually("the PDB status", || {
        c.get(
            GroupResource::new("policy", "poddisruptionbudgets"),
            Some("default"),
            "web",
        )
        .is_some_and(|p| p.pointer("/status/observedGeneration") == Some(&json!(1)))
    })
    .await;

    let nodes = rows(&c.kubectl(&["get", "nodes"]).await);
    assert_eq!(nodes[0], ["NAME", "STATUS", "ROLES", "AGE", "VERSION"]);
    assert_eq!(
        (
            nodes[1][0].as_str(),
            nodes[1][1].as_str(),
            nodes[1][2].as_str()
        ),
        ("node-a", "Ready", "worker")
    );
    assert_eq!(nodes[2][1], "NotReady");
    assert_eq!(nodes[1][4], "v1.33.1");

    let pods = rows(&c.kubectl(&["get", "pods", "-A", "-o", "wide"]).await);
    assert_eq!(
        pods[0],
        [
            "NAMESPACE",
            "NAME",
            "READY",
            "STATUS",
            "RESTARTS",
            "AGE",
            "IP",
            "NODE",
            "NOMINATED",
            "NODE",
            "READINESS",
            "GATES"
        ]
    );
    let web2 = pods.iter().find(|r| r[1] == "web-2").unwrap();
    assert_eq!(&web2[..5], ["default", "web-2", "1/1", "Running", "2"]);
    assert_eq!((web2[6].as_str(), web2[7].as_str()), ("10.1.0.2", "node-b"));
    let pending = pods.iter().find(|r| r[1] == "pending").unwrap();
    assert_eq!(
        (
            pending[0].as_str(),
            pending[3].as_str(),
            pending[7].as_str()
        ),
        ("kube-system", "Pending", "<none>")
    );

    let pdbs = rows(&c.kubectl(&["get", "pdb", "-A"]).await);
    assert_eq!(
        pdbs[0],
        [
            "NAMESPACE",
            "NAME",
            "MIN",
            "AVAILABLE",
            "MAX",
            "UNAVAILABLE",
            "ALLOWED",
            "DISRUPTIONS",
            "AGE"
        ]
    );
    assert_eq!(&pdbs[1][..5], ["default", "web", "N/A", "1", "1"]);

    // A pod going unready uses up the budget; kubectl shows it.
    c.store
        .patch_status(
            &ResourceKey::new(GroupResource::core("pods"), Some("default"), "web-0"),
            &rota_sim::apiserver::PatchKind::Merge,
            &json!({"status": {"conditions": [{"type": "Ready", "status": "False"}]}}),
        )
        .unwrap();
    eventually("the PDB to react", || {
        c.get(
            GroupResource::new("policy", "poddisruptionbudgets"),
            Some("default"),
            "web",
        )
        .is_some_and(|p| p.pointer("/status/disruptionsAllowed") == Some(&json!(0)))
    })
    .await;
    let pdbs = rows(&c.kubectl(&["get", "pdb", "-n", "default", "web"]).await);
    assert_eq!(pdbs[1][3], "0");

    let json_out: Value =
        serde_json::from_str(&c.kubectl(&["get", "node", "node-a", "-o", "json"]).await).unwrap();
    assert_eq!(json_out["metadata"]["name"], "node-a");
    assert_eq!(c.kubectl(&["get", "--raw", "/healthz"]).await.trim(), "ok");
    assert_eq!(c.kubectl(&["get", "--raw", "/readyz"]).await.trim(), "ok");
    let version = c.kubectl(&["version", "-o", "json"]).await;
    assert!(version.contains("v1.33.1"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_cordon_label_annotate() {
    let Some(c) = Cluster::start(seed()).await else {
        return;
    };
    let node = || c.get(GroupResource::core("nodes"), None, "node-a").unwrap();
    c.kubectl(&["cordon", "node-a"]).await;
    assert_eq!(node()["spec"]["unschedulable"], true);
    let nodes = rows(&c.kubectl(&["get", "nodes"]).await);
    assert_eq!(nodes[1][1], "Ready,SchedulingDisabled");
    c.kubectl(&["uncordon", "node-a"]).await;
    assert!(
        node()["spec"]
            .get("unschedulable")
            .is_none_or(|u| u == false)
    );
    c.kubectl(&[
        "annotate",
        "node",
        "node-a",
        "rota.dev/maintenance-requested=reboot",
    ])
    .await;
    assert_eq!(
        node()["metadata"]["annotations"]["rota.dev/maintenance-requested"],
        "reboot"
    );
    c.kubectl(&[
        "annotate",
        "node",
        "node-a",
        "rota.dev/maintenance-requested-",
    ])
    .await;
    assert!(
        node()["metadata"]["annotations"]
            .get("rota.dev/maintenance-requested")
            .is_none()
    );
    c.kubectl(&["label", "node", "node-a", "pool=workers"])
        .await;
    assert_eq!(node()["metadata"]["labels"]["pool"], "workers");
    let selected = rows(
        &c.kubectl(&["get", "nodes", "-l", "pool=workers", "-o", "name"])
            .await,
    );
    assert_eq!(selected, vec![vec!["node/node-a".to_string()]]);
    c.kubectl(&["label", "node", "node-a", "pool-"]).await;
    assert!(node()["metadata"]["labels"].get("pool").is_none());
    // Two cordons and uncordons show in the audit's unavailable-node timeline (node-b is NotReady).
    assert_eq!(c.store.max_unavailable_nodes(), 2);
}

const MANIFEST: &str = r#"apiVersion: apps/v1
kind: Deployment
metadata:
  name: api
  namespace: default
spec:
  replicas: REPLICAS
  selector:
    matchLabels: {app: api}
  template:
    metadata:
      labels: {app: api}
    spec:
      containers:
      - name: api
        image: api:IMAGE
---
apiVersion: v1
kind: ConfigMap
metadata:
  name: api-config
  namespace: default
data:
  mode: MODE
"#;

const CRD: &str = r#"apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata:
  name: maintenancepolicies.rota.dev
spec:
  group: rota.dev
  scope: Cluster
  names:
    plural: maintenancepolicies
    singular: maintenancepolicy
    kind: MaintenancePolicy
    shortNames: [mp]
  versions:
  - name: v1alpha1
    served: true
    storage: true
    subresources: {status: {}}
    additionalPrinterColumns:
    - {name: Paused, type: boolean, jsonPath: .spec.paused}
    schema:
      openAPIV3Schema: {type: object, x-kubernetes-preserve-unknown-fields: true}
"#;

fn manifest(replicas: u32, image: &str, mode: &str) -> String {
    MANIFEST
        .replace("REPLICAS", &replicas.to_string())
        .replace("IMAGE", image)
        .replace("MODE", mode)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_apply_creates_then_updates() {
    let Some(c) = Cluster::start(Store::new()).await else {
        return;
    };
    let file = c.write("app.yaml", &manifest(2, "v1", "a"));
    let out = c.kubectl(&["apply", "-f", file.to_str().unwrap()]).await;
    assert!(out.contains("deployment.apps/api created"), "{out}");
    assert!(out.contains("configmap/api-config created"), "{out}");
    let dep = c
        .get(
            GroupResource::new("apps", "deployments"),
            Some("default"),
            "api",
        )
        .unwrap();
    assert!(
        dep["metadata"]["annotations"]["kubectl.kubernetes.io/last-applied-configuration"]
            .is_string()
    );
    assert_eq!(dep["metadata"]["generation"], 1);

    let file = c.write("app.yaml", &manifest(3, "v2", "b"));
    let out = c.kubectl(&["apply", "-f", file.to_str().unwrap()]).await;
    assert!(out.contains("deployment.apps/api configured"), "{out}");
    let dep = c
        .get(
            GroupResource::new("apps", "deployments"),
            Some("default"),
            "api",
        )
        .unwrap();
    assert_eq!(dep["spec"]["replicas"], 3);
    assert_eq!(
        dep["spec"]["template"]["spec"]["containers"][0]["image"],
        "api:v2"
    );
    assert_eq!(
        dep["spec"]["template"]["spec"]["containers"]
            .as_array()
            .unwrap()
            .len(),
        1
    );
    assert_eq!(dep["metadata"]["generation"], 2);
    let cm = c
        .get(
            GroupResource::core("configmaps"),
            Some("default"),
            "api-config",
        )
        .unwrap();
    assert_eq!(cm["data"]["mode"], "b");
    let out = c.kubectl(&["apply", "-f", file.to_str().unwrap()]).await;
    assert!(out.contains("deployment.apps/api unchanged"), "{out}");

    // A CRD, then a custom resource of its kind, listed with its printer column.
    let crd = c.write("crd.yaml", CRD);
    c.kubectl(&["apply", "-f", crd.to_str().unwrap()]).await;
    let mp = c.write("mp.yaml", "apiVersion: rota.dev/v1alpha1\nkind: MaintenancePolicy\nmetadata:\n  name: workers\nspec:\n  paused: true\n");
    c.kubectl(&["apply", "-f", mp.to_str().unwrap()]).await;
    let listed = rows(&c.kubectl(&["get", "maintenancepolicies"]).await);
    assert_eq!(listed[0], ["NAME", "PAUSED", "AGE"]);
    assert_eq!(&listed[1][..2], ["workers", "true"]);
    let short = rows(&c.kubectl(&["get", "mp", "-o", "name"]).await);
    assert_eq!(short[0][0], "maintenancepolicy.rota.dev/workers");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_get_watch_streams_changes() {
    let Some(c) = Cluster::start(seed()).await else {
        return;
    };
    let mut child = c
        .command(&["get", "pods", "-n", "default", "-w"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut next_line = async || -> String {
        tokio::time::timeout(Duration::from_secs(30), lines.next_line())
            .await
            .expect("kubectl -w printed nothing")
            .unwrap()
            .unwrap_or_default()
    };
    assert!(next_line().await.starts_with("NAME"));
    for _ in 0..3 {
        assert!(next_line().await.starts_with("web-"));
    }
    c.store
        .create(
            &GroupResource::core("pods"),
            Some("default"),
            json!({"metadata": {"name": "newcomer"}, "spec": {"containers": [{"name": "c", "image": "i"}]}}),
        )
        .unwrap();
    let line = next_line().await;
    assert!(line.starts_with("newcomer"), "{line}");
    assert!(line.contains("Pending"), "{line}");
    c.store
        .delete(
            &ResourceKey::new(GroupResource::core("pods"), Some("default"), "web-1"),
            &Default::default(),
        )
        .unwrap();
    let line = next_line().await;
    assert!(
        line.starts_with("web-1") && line.contains("Terminating"),
        "{line}"
    );
    child.kill().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_delete_pod() {
    let Some(c) = Cluster::start(seed()).await else {
        return;
    };
    let out = c
        .kubectl(&["delete", "pod", "-n", "kube-system", "pending"])
        .await;
    assert!(out.contains("pod \"pending\" deleted"), "{out}");
    assert!(
        c.get(GroupResource::core("pods"), Some("kube-system"), "pending")
            .is_none()
    );
    // A scheduled pod only starts terminating (its kubelet would finish the deletion).
    c.kubectl(&["delete", "pod", "web-0", "--wait=false"]).await;
    let pod = c
        .get(GroupResource::core("pods"), Some("default"), "web-0")
        .unwrap();
    assert!(meta::is_terminating(&pod));
    c.kubectl(&["delete", "pod", "web-1", "--grace-period=0", "--force"])
        .await;
    assert!(
        c.get(GroupResource::core("pods"), Some("default"), "web-1")
            .is_none()
    );
    let deletions = c.store.pod_deletions();
    assert_eq!(deletions.len(), 3);
    assert!(deletions.iter().all(|d| !d.via_eviction));
}
