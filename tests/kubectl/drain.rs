//! The real `kubectl drain` and `kubectl get pods -w` against the emulated API server with the
//! simulated cluster running: the drain waits on a PodDisruptionBudget (kubectl's own retry
//! message) and finishes once the replacements are Ready.

// Helpers outside #[test] functions fail the test the same way the tests do.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::{Ipv4Addr, SocketAddr};
use std::process::Stdio;
use std::time::Duration;

use rota_sim::apiserver::{
    ApiServer, DeleteOptions, GroupResource, ListOptions, ResourceKey, ServerHandle, Store, meta,
};
use rota_sim::cluster::{Cluster, ClusterHandle, Faults, Scenario, Timings, pods_on};
use rota_tests::kubectl::Kubectl;
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::Command;

const SETTLE: Duration = Duration::from_secs(60);
const PDB_RETRY: &str = "Cannot evict pod as it would violate the pod's disruption budget";

struct Env {
    scenario: Scenario,
    cluster: ClusterHandle,
    server: ServerHandle,
    kubectl: Kubectl,
}

impl Env {
    /// The emulated cluster and a kubectl for it; `None` (skipped) when kubectl is not built
    /// and `CI` is unset.
    async fn start(nodes: usize, seed: u64) -> Option<Env> {
        let store = Store::new();
        let server = ApiServer::start(store.clone(), SocketAddr::from((Ipv4Addr::LOCALHOST, 0)))
            .await
            .unwrap();
        let scenario = Scenario::generate(nodes, seed);
        let cluster = Cluster::start(store, &scenario, Timings::default(), Faults::none()).unwrap();
        let Some(kubectl) = Kubectl::for_test(&server.kubeconfig()) else {
            cluster.shutdown().await;
            server.shutdown().await;
            return None;
        };
        Some(Env {
            scenario,
            cluster,
            server,
            kubectl,
        })
    }

    fn kubectl(&self, args: &[&str]) -> Command {
        self.kubectl.command(args)
    }

    fn store(&self) -> &Store {
        self.cluster.store()
    }

    async fn shutdown(self) {
        self.cluster.shutdown().await;
        self.server.shutdown().await;
    }
}

/// A worker that neither the blocking budget nor the bare pods pin anything to.
fn drainable_worker(scenario: &Scenario) -> String {
    let pinned = [&scenario.blocked_node, &scenario.unmanaged_pods_node];
    scenario
        .worker_names()
        .into_iter()
        .find(|w| pinned.iter().all(|p| p.as_deref() != Some(w.as_str())))
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_drain_waits_on_a_budget_and_finishes_when_replacements_are_ready() {
    let Some(env) = Env::start(8, 17).await else {
        return;
    };
    let workers = env.scenario.worker_names().len();
    // Two pods of one Deployment on every worker, at most one of them unavailable: the drain
    // evicts one, is refused the other until the first one's replacement is Ready.
    env.store()
        .create(
            &GroupResource::new("apps", "deployments"),
            Some("web"),
            json!({
                "metadata": {"name": "spread", "namespace": "web"},
                "spec": {
                    "replicas": 2 * workers,
                    "selector": {"matchLabels": {"app": "spread"}},
                    "template": {
                        "metadata": {"labels": {"app": "spread"}},
                        "spec": {"containers": [{"name": "web", "image": "nginx"}]},
                    },
                },
            }),
        )
        .unwrap();
    env.store()
        .create(
            &GroupResource::new("policy", "poddisruptionbudgets"),
            Some("web"),
            json!({
                "metadata": {"name": "spread", "namespace": "web"},
                "spec": {"maxUnavailable": 1, "selector": {"matchLabels": {"app": "spread"}}},
            }),
        )
        .unwrap();
    env.cluster.wait_settled(SETTLE).await.unwrap();
    let node = drainable_worker(&env.scenario);
    let spread_here = pods_on(env.store(), &node)
        .iter()
        .filter(|p| p["metadata"]["labels"]["app"] == "spread")
        .count();
    assert_eq!(spread_here, 2);

    let out = tokio::time::timeout(
        Duration::from_secs(120),
        env.kubectl(&[
            "drain",
            "--ignore-daemonsets",
            "--delete-emptydir-data",
            &node,
        ])
        .output(),
    )
    .await
    .expect("kubectl drain did not finish")
    .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "drain failed:\n{stdout}\n{stderr}");
    let output = format!("{stdout}{stderr}");
    assert!(output.contains(PDB_RETRY), "no PDB retry in:\n{output}");
    assert!(output.contains(&format!("node/{node} drained")), "{output}");
    assert!(
        output.contains(&format!("node/{node} cordoned")),
        "{output}"
    );

    // Only daemon pods are left; every workload is whole again elsewhere; no budget broken.
    for pod in pods_on(env.store(), &node) {
        let kind = meta::controller_ref(&pod).and_then(|r| r["kind"].as_str().map(String::from));
        assert_eq!(
            kind.as_deref(),
            Some("DaemonSet"),
            "{} left",
            meta::name(&pod)
        );
    }
    env.cluster.wait_settled(SETTLE).await.unwrap();
    assert!(env.store().pdb_violations().is_empty());
    let evicted: Vec<_> = env
        .store()
        .evictions()
        .into_iter()
        .filter(|e| e.node.as_deref() == Some(node.as_str()))
        .collect();
    assert!(evicted.len() >= 2, "{evicted:?}");

    let uncordon = env.kubectl(&["uncordon", &node]).output().await.unwrap();
    assert!(uncordon.status.success());
    env.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_get_pods_watch_streams_the_simulated_changes() {
    let Some(env) = Env::start(4, 6).await else {
        return;
    };
    env.cluster.wait_settled(SETTLE).await.unwrap();
    let deployment = &env.scenario.deployments[0];
    let ns = meta::namespace(deployment).to_string();
    let app = meta::name(deployment).to_string();

    let mut child = env
        .kubectl(&["get", "pods", "-n", &ns, "-w"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    // The initial table first: its header and one row per pod.
    let header = tokio::time::timeout(SETTLE, lines.next_line())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert!(header.starts_with("NAME"), "{header}");

    let before: Vec<Value> = env
        .store()
        .list(
            &GroupResource::core("pods"),
            Some(&ns),
            &ListOptions::labels(&format!("app={app}")),
        )
        .unwrap()
        .items
        .iter()
        .map(|p| p.as_ref().clone())
        .collect();
    let existing: Vec<&str> = before.iter().map(meta::name).collect();
    let victim = existing[0].to_string();
    env.store()
        .delete(
            &ResourceKey::new(GroupResource::core("pods"), Some(&ns), &victim),
            &DeleteOptions::default(),
        )
        .unwrap();

    // The deleted pod is shown terminating, and a replacement appears and turns 1/1 Running.
    let mut saw_terminating = false;
    let mut saw_replacement_running = false;
    let seen = async {
        while let Some(line) = lines.next_line().await.unwrap() {
            let cols: Vec<&str> = line.split_whitespace().collect();
            let [name, ready, status, ..] = cols[..] else {
                continue;
            };
            saw_terminating |= name == victim && status == "Terminating";
            saw_replacement_running |= !existing.contains(&name)
                && name.starts_with(&format!("{app}-"))
                && ready == "1/1"
                && status == "Running";
            if saw_terminating && saw_replacement_running {
                return;
            }
        }
    };
    tokio::time::timeout(SETTLE, seen)
        .await
        .expect("kubectl get -w did not stream the changes");
    child.kill().await.unwrap();
    env.shutdown().await;
}
