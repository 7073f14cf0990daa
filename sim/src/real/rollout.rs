//! The steps of a rollout of rota on the real control plane, shared by
//! `rota-sim demo --control-plane real` and the `real_*` suites: rota installed from `deploy/`
//! with the built `kubectl`, the demo scenario's nodes as real API clients
//! (`system:node:<name>`) running its workloads under its budgets, a ServiceAccount's
//! kubeconfig for the coordinator, the policy that starts the rollout, and what "done" means for
//! a node, read from the Node objects and the independent monitor's count of reboots.

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use k8s_openapi::api::authentication::v1::TokenRequest;
use k8s_openapi::api::core::v1::{Node, Pod, ServiceAccount};
use kube::api::{ApiResource, DynamicObject, GroupVersionKind, ListParams, PostParams};
use kube::{Api, ResourceExt};
use rota_core::policy::{MaintenancePolicy, MaintenancePolicySpec};
use rota_monitor::Monitor;
use serde_json::Value;

#[cfg(doc)]
use super::control_plane::Binaries;
use super::control_plane::{self, ControlPlane};
use crate::cluster::{Faults, RemoteNodes, Scenario, Timings};
use crate::demo::POLICY_NAME;

/// rota's namespace, as `deploy/` creates it.
pub const NAMESPACE: &str = "rota-system";
/// The coordinator's ServiceAccount in `deploy/`.
pub const COORDINATOR_ACCOUNT: &str = "rota-coordinator";
/// The slot mirror on a Node.
pub const SLOT_ANNOTATION: &str = "rota.dev/slot";
/// The CRD `deploy/crd` installs.
const CRD: &str = "maintenancepolicies.rota.dev";

/// What can go wrong.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The control plane could not be started or used.
    #[error(transparent)]
    ControlPlane(#[from] control_plane::Error),
    /// A call to the API server failed.
    #[error("{what}: {source}")]
    Kube {
        /// What was being done.
        what: String,
        /// Why it failed.
        source: kube::Error,
    },
    /// `kubectl` failed.
    #[error("kubectl {args}: {message}")]
    Kubectl {
        /// Its arguments.
        args: String,
        /// What it printed on stderr, or why it did not run.
        message: String,
    },
    /// A condition did not come true in time.
    #[error("timed out after {timeout:?} waiting for {what}")]
    Timeout {
        /// The condition.
        what: String,
        /// How long it had.
        timeout: Duration,
    },
    /// The simulated nodes failed.
    #[error("simulated nodes: {0}")]
    Nodes(String),
    /// A file could not be read or written.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// Why it failed.
        source: std::io::Error,
    },
}

/// The result of a step.
pub type Result<T, E = Error> = std::result::Result<T, E>;

fn kube_error(what: impl Into<String>) -> impl FnOnce(kube::Error) -> Error {
    let what = what.into();
    move |source| Error::Kube { what, source }
}

/// The repository's `deploy/`.
pub fn deploy_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy")
}

/// Polls `check` every 200 ms until it returns `Some`, for at most `timeout`.
pub async fn poll<T, F: Future<Output = Option<T>>>(
    what: &str,
    timeout: Duration,
    mut check: impl FnMut() -> F,
) -> Result<T> {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if let Some(value) = check().await {
            return Ok(value);
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(Error::Timeout {
                what: what.to_owned(),
                timeout,
            });
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The built `kubectl` with `kubeconfig`, its home (discovery cache) in `home`.
#[derive(Clone, Debug)]
pub struct Kubectl {
    binary: PathBuf,
    kubeconfig: PathBuf,
    home: PathBuf,
}

impl Kubectl {
    /// The kubectl `binary` (the built one: [`Binaries::kubectl`]) against the cluster of
    /// `kubeconfig`, keeping its cache in `home`.
    pub fn new(binary: &Path, kubeconfig: &Path, home: &Path) -> Kubectl {
        Kubectl {
            binary: binary.to_owned(),
            kubeconfig: kubeconfig.to_owned(),
            home: home.to_owned(),
        }
    }

    /// `kubectl ARGS`: what it printed, or what went wrong.
    pub async fn run(&self, args: &[&str]) -> Result<String> {
        let failed = |message: String| Error::Kubectl {
            args: args.join(" "),
            message,
        };
        let output = tokio::process::Command::new(&self.binary)
            .arg("--kubeconfig")
            .arg(&self.kubeconfig)
            .args(args)
            .env("HOME", &self.home)
            .env("KUBECACHEDIR", self.home.join("kubectl-cache"))
            .kill_on_drop(true)
            .output()
            .await
            .map_err(|e| failed(e.to_string()))?;
        if output.status.success() {
            Ok(String::from_utf8_lossy(&output.stdout).into_owned())
        } else {
            Err(failed(format!(
                "{}: {}",
                output.status,
                String::from_utf8_lossy(&output.stderr).trim()
            )))
        }
    }
}

/// Installs rota as a user does: `kubectl apply -k deploy/crd`, waits until the CRD is
/// established, then `kubectl apply -k deploy/base` (namespace, accounts, RBAC, the
/// coordinator's Deployment and Service, the agents' DaemonSet). Returns what `apply` printed.
pub async fn install(kubectl: &Kubectl) -> Result<String> {
    let deploy = deploy_dir();
    let mut printed = kubectl
        .run(&["apply", "-k", &deploy.join("crd").display().to_string()])
        .await?;
    kubectl
        .run(&[
            "wait",
            "--for=condition=Established",
            "--timeout=60s",
            &format!("crd/{CRD}"),
        ])
        .await?;
    printed.push_str(
        &kubectl
            .run(&["apply", "-k", &deploy.join("base").display().to_string()])
            .await?,
    );
    Ok(printed)
}

/// The simulated nodes' timings against the real control plane whose node-lifecycle
/// controller has `node_monitor_grace` (see [`Timings::for_real_control_plane`]); pods' own
/// seconds (grace periods, preStop sleeps, probe delays) run ten times faster, the real
/// controllers' do not.
pub fn node_timings(node_monitor_grace: Duration) -> Timings {
    Timings {
        kube_second: Duration::from_millis(100),
        ..Timings::for_real_control_plane(node_monitor_grace)
    }
}

/// The scenario's nodes, running against the control plane.
pub struct Nodes {
    /// The simulated kubelets and hosts.
    pub sim: RemoteNodes,
    /// Each node's own client (`system:node:<name>` in `system:nodes`).
    pub clients: BTreeMap<String, kube::Client>,
}

/// Registers and runs `scenario`'s nodes, each as its own identity, with `timings`.
pub async fn start_nodes(
    cp: &ControlPlane,
    admin: &kube::Client,
    scenario: &Scenario,
    timings: Timings,
) -> Result<Nodes> {
    let mut identities = Vec::new();
    let mut clients = BTreeMap::new();
    for spec in &scenario.nodes {
        let user = format!("system:node:{}", spec.name);
        let client = cp.client_for(&user, &["system:nodes"]).await?;
        clients.insert(spec.name.clone(), client.clone());
        identities.push((spec.clone(), client));
    }
    let sim = RemoteNodes::start(identities, admin, timings, Faults::default())
        .await
        .map_err(|e| Error::Nodes(e.to_string()))?;
    Ok(Nodes { sim, clients })
}

/// Creates `objects` (each with its `apiVersion` and `kind`) as the administrator, retrying
/// each for up to `timeout`: a new namespace refuses pods until its ServiceAccount exists.
/// Objects that exist already are left as they are.
pub async fn create_all(admin: &kube::Client, objects: &[Value], timeout: Duration) -> Result<()> {
    for object in objects {
        let api_version = object
            .get("apiVersion")
            .and_then(Value::as_str)
            .unwrap_or("v1");
        let kind = object.get("kind").and_then(Value::as_str).unwrap_or("");
        let (group, version) = api_version.split_once('/').unwrap_or(("", api_version));
        let gvk = GroupVersionKind::gvk(group, version, kind);
        let resource = ApiResource::from_gvk(&gvk);
        let object: DynamicObject =
            serde_json::from_value(object.clone()).map_err(|e| Error::Kubectl {
                args: format!("create {kind}"),
                message: format!("not an object: {e}"),
            })?;
        let api: Api<DynamicObject> = match object.namespace() {
            Some(ns) => Api::namespaced_with(admin.clone(), &ns, &resource),
            None => Api::all_with(admin.clone(), &resource),
        };
        let what = format!("{kind} {} created", object.name_any());
        poll(&what, timeout, || async {
            match api.create(&PostParams::default(), &object).await {
                Ok(_) => Some(()),
                Err(kube::Error::Api(status)) if status.code == 409 => Some(()),
                Err(_) => None,
            }
        })
        .await?;
    }
    Ok(())
}

/// Creates `scenario`'s workloads: namespaces, DaemonSets, Deployments, StatefulSets, budgets
/// and bare pods.
pub async fn create_workloads(
    admin: &kube::Client,
    scenario: &Scenario,
    timeout: Duration,
) -> Result<()> {
    for objects in [
        &scenario.namespaces,
        &scenario.daemonsets,
        &scenario.deployments,
        &scenario.statefulsets,
        &scenario.pdbs,
        &scenario.pods,
    ] {
        create_all(admin, objects, timeout).await?;
    }
    Ok(())
}

/// Waits until the scenario's pods run and are Ready and the monitor knows every budget's
/// desired count (from the real disruption controller).
pub async fn wait_workloads_ready(
    admin: &kube::Client,
    monitor: &Monitor,
    scenario: &Scenario,
    timeout: Duration,
) -> Result<()> {
    let expected = scenario.expected_pod_count();
    let pods: Api<Pod> = Api::all(admin.clone());
    poll("the scenario's pods running and ready", timeout, || async {
        let budgets = monitor.verdict().budgets;
        let list = pods.list(&ListParams::default()).await.ok()?;
        let ready = list.items.iter().filter(|p| is_ready(p)).count();
        (ready >= expected && budgets.values().all(|b| b.desired.is_some())).then_some(())
    })
    .await
}

fn is_ready(pod: &Pod) -> bool {
    pod.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

/// A kubeconfig in the control plane's directory with a fresh API token of ServiceAccount
/// `account` in rota's namespace: whoever uses it has exactly the RBAC `deploy/` grants.
pub async fn service_account_kubeconfig(
    cp: &ControlPlane,
    admin: &kube::Client,
    account: &str,
) -> Result<PathBuf> {
    let accounts: Api<ServiceAccount> = Api::namespaced(admin.clone(), NAMESPACE);
    let token = accounts
        .create_token_request(account, &PostParams::default(), &TokenRequest::default())
        .await
        .map_err(kube_error(format!("request a token of {account}")))?
        .status
        .map(|s| s.token)
        .ok_or_else(|| Error::Nodes(format!("the token request of {account} has no status")))?;
    Ok(cp.kubeconfig_with_token(account, &token)?)
}

/// Creates the demo's MaintenancePolicy with `spec`: the rollout begins.
pub async fn create_policy(admin: &kube::Client, spec: MaintenancePolicySpec) -> Result<()> {
    let policies: Api<MaintenancePolicy> = Api::all(admin.clone());
    policies
        .create(
            &PostParams::default(),
            &MaintenancePolicy::new(POLICY_NAME, spec),
        )
        .await
        .map_err(kube_error("create the MaintenancePolicy"))?;
    Ok(())
}

/// Why `node` is not done yet, if it is not: rebooted (as the monitor counts `reboots`), Ready,
/// uncordoned, no slot.
pub fn not_done(node: &Node, reboots: &BTreeMap<String, u32>) -> Option<String> {
    let name = node.name_any();
    let is_ready = node
        .status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"));
    if reboots.get(&name).copied().unwrap_or(0) == 0 {
        Some(format!("{name}: not rebooted"))
    } else if !is_ready {
        Some(format!("{name}: not Ready"))
    } else if node.spec.as_ref().and_then(|s| s.unschedulable) == Some(true) {
        Some(format!("{name}: cordoned"))
    } else if node.annotations().contains_key(SLOT_ANNOTATION) {
        Some(format!("{name}: holds a slot"))
    } else {
        None
    }
}

/// The nodes not done yet (why, for each), but `except`.
pub async fn pending(
    admin: &kube::Client,
    monitor: &Monitor,
    except: &BTreeSet<String>,
) -> Result<Vec<String>> {
    let reboots = monitor.verdict().reboots;
    let nodes: Api<Node> = Api::all(admin.clone());
    let list = nodes
        .list(&ListParams::default())
        .await
        .map_err(kube_error("list the nodes"))?;
    Ok(list
        .items
        .iter()
        .filter(|n| !except.contains(&n.name_any()))
        .filter_map(|n| not_done(n, &reboots))
        .collect())
}

/// Waits until every node but `except` is done; how long it took, or the pending nodes after
/// `timeout`. A failed list is retried (the API server may be restarting).
pub async fn wait_done(
    admin: &kube::Client,
    monitor: &Monitor,
    except: &BTreeSet<String>,
    timeout: Duration,
) -> Result<Duration, Vec<String>> {
    let started = Instant::now();
    let mut last = Vec::new();
    while started.elapsed() < timeout {
        match pending(admin, monitor, except).await {
            Ok(left) if left.is_empty() => return Ok(started.elapsed()),
            Ok(left) => last = left,
            Err(e) => last = vec![e.to_string()],
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    Err(last)
}
