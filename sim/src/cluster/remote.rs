//! Simulated nodes against a real kube-apiserver.
//!
//! The same kubelets and hosts as in the emulated cluster, but each kubelet is a client of a
//! real API server under its node's own identity (`system:node:<name>` in `system:nodes`), so
//! the Node authorizer and the NodeRestriction admission plugin judge every call it makes, and
//! the real scheduler, controllers and node-lifecycle controller do the rest: nothing of the
//! emulator's controllers runs here. Each kubelet follows its pods with a watch of
//! `spec.nodeName=NODE`, as a real kubelet does.
//!
//! Registration happens as it does with kubeadm: the kubelet registers its Node with the labels
//! a kubelet may set on itself; the labels NodeRestriction keeps from it (the `node-role`
//! labels) are then set with the administrator's client, as `kubeadm init`'s
//! mark-control-plane phase does.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::WatchStreamExt;
use kube::runtime::watcher::{self, Event};
use serde_json::{Value, json};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::faults::Faults;
use super::host::{KubeletCommand, SimHost};
use super::kubeadm::KubeadmCluster;
use super::kubelet::{self, KubeletContext, PodSender, PodUpdate};
use super::node_api::{CallError, CallResult, NodeApi, bound_to};
use super::scenario::NodeSpec;
use super::{Error, Result, Timings};
use crate::apiserver::{DeleteOptions, GroupResource, Part, ResourceKey};

/// How often a read-modify-write is tried before a conflict is given up on.
const CONFLICT_ATTEMPTS: usize = 5;

/// Whether NodeRestriction lets a kubelet set label `key` on its own Node: labels outside
/// the `kubernetes.io` and `k8s.io` namespaces, and within them only the well-known node
/// labels and the `kubelet.kubernetes.io/` and `node.kubernetes.io/` prefixes.
pub fn kubelet_may_set_label(key: &str) -> bool {
    const ALLOWED: [&str; 10] = [
        "kubernetes.io/hostname",
        "kubernetes.io/arch",
        "kubernetes.io/os",
        "beta.kubernetes.io/arch",
        "beta.kubernetes.io/os",
        "beta.kubernetes.io/instance-type",
        "node.kubernetes.io/instance-type",
        "failure-domain.beta.kubernetes.io/region",
        "failure-domain.beta.kubernetes.io/zone",
        "topology.kubernetes.io/zone",
    ];
    let Some((prefix, _)) = key.split_once('/') else {
        return true;
    };
    let restricted = |domain: &str| prefix == domain || prefix.ends_with(&format!(".{domain}"));
    if !restricted("kubernetes.io") && !restricted("k8s.io") {
        return true;
    }
    ALLOWED.contains(&key)
        || key == "topology.kubernetes.io/region"
        || matches!(prefix, "kubelet.kubernetes.io" | "node.kubernetes.io")
        || prefix.ends_with(".kubelet.kubernetes.io")
        || prefix.ends_with(".node.kubernetes.io")
}

/// The API path of `resource` (all at `v1`), in `namespace`, optionally one object and a
/// subresource of it.
fn path(
    resource: &GroupResource,
    namespace: Option<&str>,
    name: Option<&str>,
    sub: Option<&str>,
) -> String {
    let mut path = if resource.group.is_empty() {
        "/api/v1".to_owned()
    } else {
        format!("/apis/{}/v1", resource.group)
    };
    if let Some(ns) = namespace {
        path.push_str(&format!("/namespaces/{ns}"));
    }
    path.push_str(&format!("/{}", resource.resource));
    for part in [name, sub].into_iter().flatten() {
        path.push('/');
        path.push_str(part);
    }
    path
}

fn call_error(e: kube::Error) -> CallError {
    match e {
        kube::Error::Api(status) => CallError {
            code: status.code,
            message: status.message,
        },
        other => CallError {
            code: 0,
            message: other.to_string(),
        },
    }
}

/// A kubelet's view of a real API server: a client authenticated as the node.
#[derive(Clone)]
pub struct RemoteApi {
    client: kube::Client,
}

impl RemoteApi {
    /// The API as `client` (which should authenticate as `system:node:<name>`) sees it.
    pub fn new(client: kube::Client) -> Self {
        RemoteApi { client }
    }

    async fn send(
        &self,
        method: http::Method,
        path: &str,
        body: Option<&Value>,
    ) -> CallResult<Value> {
        let bytes = match body {
            Some(body) => serde_json::to_vec(body).map_err(|e| CallError {
                code: 0,
                message: e.to_string(),
            })?,
            None => Vec::new(),
        };
        let request = http::Request::builder()
            .method(method)
            .uri(path)
            .header(http::header::CONTENT_TYPE, "application/json")
            .body(bytes)
            .map_err(|e| CallError {
                code: 0,
                message: e.to_string(),
            })?;
        self.client
            .request::<Value>(request)
            .await
            .map_err(call_error)
    }
}

impl NodeApi for RemoteApi {
    fn now(&self) -> jiff::Timestamp {
        jiff::Timestamp::now()
    }

    fn registration(&self, mut node: Value) -> Value {
        if let Some(labels) = node
            .pointer_mut("/metadata/labels")
            .and_then(Value::as_object_mut)
        {
            labels.retain(|key, _| kubelet_may_set_label(key));
        }
        node
    }

    async fn create(
        &self,
        resource: &GroupResource,
        namespace: Option<&str>,
        obj: Value,
    ) -> CallResult<Arc<Value>> {
        let path = path(resource, namespace, None, None);
        self.send(http::Method::POST, &path, Some(&obj))
            .await
            .map(Arc::new)
    }

    async fn get(&self, key: &ResourceKey) -> CallResult<Arc<Value>> {
        let path = path(
            &key.resource,
            key.namespace.as_deref(),
            Some(&key.name),
            None,
        );
        self.send(http::Method::GET, &path, None)
            .await
            .map(Arc::new)
    }

    async fn pods_on(&self, node: &str) -> CallResult<Vec<Arc<Value>>> {
        let selector = bound_to(node).replace('=', "%3D");
        let path = format!("/api/v1/pods?fieldSelector={selector}");
        let list = self.send(http::Method::GET, &path, None).await?;
        Ok(list
            .get("items")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .map(|pod| Arc::new(pod.clone()))
            .collect())
    }

    async fn delete(&self, key: &ResourceKey, opts: &DeleteOptions) -> CallResult<()> {
        let path = path(
            &key.resource,
            key.namespace.as_deref(),
            Some(&key.name),
            None,
        );
        let mut body = json!({"apiVersion": "v1", "kind": "DeleteOptions"});
        if let Some(grace) = opts.grace_period_seconds {
            body["gracePeriodSeconds"] = json!(grace);
        }
        if let Some(uid) = &opts.preconditions.uid {
            body["preconditions"]["uid"] = json!(uid);
        }
        if let Some(rv) = &opts.preconditions.resource_version {
            body["preconditions"]["resourceVersion"] = json!(rv);
        }
        self.send(http::Method::DELETE, &path, Some(&body)).await?;
        Ok(())
    }

    async fn modify<F>(&self, key: &ResourceKey, part: Part, mut edit: F) -> CallResult<()>
    where
        F: FnMut(&mut Value) -> bool + Send,
    {
        let sub = match part {
            Part::Main => None,
            Part::Status => Some("status"),
        };
        let path = path(
            &key.resource,
            key.namespace.as_deref(),
            Some(&key.name),
            sub,
        );
        let mut last = None;
        for _ in 0..CONFLICT_ATTEMPTS {
            let mut object = (*self.get(key).await?).clone();
            if !edit(&mut object) {
                return Ok(());
            }
            match self.send(http::Method::PUT, &path, Some(&object)).await {
                Ok(_) => return Ok(()),
                Err(e) if e.code == 409 => last = Some(e),
                Err(e) => return Err(e),
            }
        }
        Err(last.unwrap_or(CallError {
            code: 409,
            message: "conflict".to_owned(),
        }))
    }
}

/// Follow the pods bound to `node` with a watch, as a kubelet does, and hand them to its
/// kubelet; after every (re-)list the kubelet lists them again itself.
async fn watch_pods(client: kube::Client, node: String, tx: PodSender, cancel: CancellationToken) {
    let pods: Api<Pod> = Api::all(client);
    let config = watcher::Config::default().fields(&bound_to(&node));
    let mut events = watcher::watcher(pods, config).default_backoff().boxed();
    loop {
        let event = tokio::select! {
            _ = cancel.cancelled() => return,
            event = events.next() => event,
        };
        let update = match event {
            None => return,
            Some(Err(e)) => {
                tracing::debug!(%node, error = %e, "kubelet pod watch failed; it retries");
                continue;
            }
            Some(Ok(Event::Apply(pod))) => {
                serde_json::to_value(pod).map(|p| PodUpdate::Present(Arc::new(p)))
            }
            Some(Ok(Event::Delete(pod))) => {
                serde_json::to_value(pod).map(|p| PodUpdate::Gone(Arc::new(p)))
            }
            Some(Ok(Event::InitDone)) => Ok(PodUpdate::Resync),
            Some(Ok(Event::Init | Event::InitApply(_))) => continue,
        };
        match update {
            Ok(update) => {
                if tx.send(update).is_err() {
                    return;
                }
            }
            Err(e) => tracing::warn!(%node, error = %e, "a watched pod does not serialise"),
        }
    }
}

/// Simulated nodes running against a real API server. Dropping it stops them (their Node
/// objects stay, and go `Unknown` as the real node-lifecycle controller sees them fall silent).
pub struct RemoteNodes {
    hosts: BTreeMap<String, SimHost>,
    faults: watch::Sender<Faults>,
    cancel: CancellationToken,
    tasks: Vec<JoinHandle<()>>,
}

impl std::fmt::Debug for RemoteNodes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RemoteNodes")
            .field("nodes", &self.hosts.keys().collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}

impl RemoteNodes {
    /// Register each node with its own client (authenticated as `system:node:<name>`), set
    /// the labels NodeRestriction keeps from a kubelet with `admin`, and run the kubelets.
    pub async fn start(
        nodes: Vec<(NodeSpec, kube::Client)>,
        admin: &kube::Client,
        timings: Timings,
        faults: Faults,
    ) -> Result<RemoteNodes> {
        let (faults, _) = watch::channel(faults);
        let cancel = CancellationToken::new();
        let mut hosts = BTreeMap::new();
        let mut tasks = Vec::new();
        let node_api: Api<k8s_openapi::api::core::v1::Node> = Api::all(admin.clone());
        // No access to the real etcd's data: the snapshots count revisions of their own.
        let kubeadm = KubeadmCluster::new(
            nodes
                .iter()
                .find_map(|(n, _)| n.host.control_plane.as_ref())
                .and_then(|cp| cp.version.parse().ok()),
            None,
        );
        for (spec, client) in nodes {
            let (host, commands) =
                SimHost::new(&spec.name, &spec.host, &kubeadm, faults.subscribe());
            let api = RemoteApi::new(client.clone());
            let failed = |source: CallError| Error::Remote {
                node: spec.name.clone(),
                source,
            };
            kubelet::register(&api, &spec, &host)
                .await
                .map_err(failed)?;
            let kept: BTreeMap<&String, &String> = spec
                .labels
                .iter()
                .filter(|(key, _)| !kubelet_may_set_label(key))
                .collect();
            if !kept.is_empty() {
                let patch = json!({"metadata": {"labels": kept}});
                node_api
                    .patch(&spec.name, &PatchParams::default(), &Patch::Merge(&patch))
                    .await
                    .map_err(|e| failed(call_error(e)))?;
            }
            let (tx, rx) = mpsc::unbounded_channel();
            tasks.push(tokio::spawn(watch_pods(
                client,
                spec.name.clone(),
                tx,
                cancel.clone(),
            )));
            let ctx = KubeletContext {
                api,
                spec: spec.clone(),
                host: host.clone(),
                timings: timings.clone(),
                faults: faults.subscribe(),
                cancel: cancel.clone(),
            };
            tasks.push(tokio::spawn(kubelet::run(ctx, commands, rx)));
            hosts.insert(spec.name.clone(), host);
        }
        tracing::info!(
            nodes = hosts.len(),
            "simulated nodes started against a real API server"
        );
        Ok(RemoteNodes {
            hosts,
            faults,
            cancel,
            tasks,
        })
    }

    /// Every node's host, by node name.
    pub fn hosts(&self) -> &BTreeMap<String, SimHost> {
        &self.hosts
    }

    /// The host of `node`.
    pub fn host(&self, node: &str) -> Result<&SimHost> {
        self.hosts
            .get(node)
            .ok_or_else(|| Error::UnknownNode(node.to_string()))
    }

    /// Change the faults; node faults apply from the next reboot or kubelet start.
    pub fn set_faults(&self, faults: Faults) {
        self.faults.send_replace(faults);
    }

    /// Power on a node that stayed down after a reboot.
    pub fn power_on(&self, node: &str) -> Result<()> {
        self.host(node)?
            .send(KubeletCommand::PowerOn)
            .map_err(|_| Error::Stopped)
    }

    /// Stop every kubelet and wait for it to finish.
    pub async fn shutdown(mut self) {
        self.cancel.cancel();
        super::handle::join_all(std::mem::take(&mut self.tasks)).await;
    }
}

impl Drop for RemoteNodes {
    fn drop(&mut self) {
        self.cancel.cancel();
    }
}

impl Timings {
    /// Timings for nodes against a real control plane, whose controllers count in real
    /// seconds: one object second is one second; Lease renewals come four times per
    /// `node_monitor_grace` (the controller-manager's `--node-monitor-grace-period`), and a
    /// reboot outlasts it by half, so the node-lifecycle controller sees the node fall silent.
    pub fn for_real_control_plane(node_monitor_grace: Duration) -> Timings {
        Timings {
            pod_start: Duration::from_millis(500),
            pod_stop: Duration::from_millis(300),
            reboot: node_monitor_grace.mul_f64(1.5),
            node_ready: Duration::from_millis(500),
            pod_resync: Duration::from_millis(500),
            heartbeat: node_monitor_grace / 4,
            node_status_report: Duration::from_secs(60),
            node_monitor_grace,
            kube_second: Duration::from_secs(1),
            pod_sync: Duration::from_secs(2),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_restriction_label_rules() {
        for allowed in [
            "topology.kubernetes.io/zone",
            "kubernetes.io/hostname",
            "node.kubernetes.io/exclude-from-external-load-balancers",
            "kubelet.kubernetes.io/anything",
            "example.com/pool",
            "pool",
        ] {
            assert!(kubelet_may_set_label(allowed), "{allowed}");
        }
        for kept in [
            "node-role.kubernetes.io/control-plane",
            "node-role.kubernetes.io/worker",
            "kubernetes.io/role",
            "rota.k8s.io/anything",
        ] {
            assert!(!kubelet_may_set_label(kept), "{kept}");
        }
    }

    #[test]
    fn api_paths() {
        let pods = GroupResource::core("pods");
        assert_eq!(
            path(&pods, Some("shop"), Some("web-1"), Some("status")),
            "/api/v1/namespaces/shop/pods/web-1/status"
        );
        let leases = GroupResource::new("coordination.k8s.io", "leases");
        assert_eq!(
            path(&leases, Some("kube-node-lease"), Some("n1"), None),
            "/apis/coordination.k8s.io/v1/namespaces/kube-node-lease/leases/n1"
        );
        assert_eq!(
            path(&GroupResource::core("nodes"), None, None, None),
            "/api/v1/nodes"
        );
    }
}
