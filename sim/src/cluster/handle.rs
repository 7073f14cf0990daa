//! Starting a simulated cluster, and the handle that tests and the demo hold.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;
use tokio::sync::broadcast::error::{RecvError, TryRecvError};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::faults::{self, Faults};
use super::host::{KubeletCommand, SimHost};
use super::kubeadm::KubeadmCluster;
use super::kubelet::{self, KubeletContext};
use super::objects::{self, apps, nodes, pods};
use super::scenario::Scenario;
use super::{Error, Result, Timings, lifecycle, scheduler, workloads};
use crate::apiserver::{
    Faults as ApiFaults, GroupResource, ListOptions, ResourceKey, Store, disruption, meta,
};

/// Starts simulated clusters.
#[derive(Debug)]
pub struct Cluster;

/// A running simulated cluster. Dropping it stops every simulated component (the store and
/// its objects stay).
pub struct ClusterHandle {
    store: Store,
    hosts: BTreeMap<String, SimHost>,
    timings: Timings,
    faults: watch::Sender<Faults>,
    cancel: CancellationToken,
    runtime: tokio::runtime::Handle,
    tasks: Vec<JoinHandle<()>>,
    /// Tasks that do not watch `cancel` (the API server's disruption controller): aborted.
    foreign: Vec<JoinHandle<()>>,
}

impl std::fmt::Debug for ClusterHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClusterHandle")
            .field("nodes", &self.hosts.keys().collect::<Vec<_>>())
            .field("timings", &self.timings)
            .finish_non_exhaustive()
    }
}

fn create_all(store: &Store, resource: GroupResource, objects: &[Value]) -> Result<()> {
    for obj in objects {
        store.create(&resource, meta::namespace_opt(obj), obj.clone())?;
    }
    Ok(())
}

impl Cluster {
    /// Create `scenario`'s nodes (registered and Ready, as in a cluster that is already
    /// running) and objects in `store`, and start the kubelets, the workload controllers, the
    /// node-lifecycle controller and the scheduler. Must be called inside a Tokio runtime.
    ///
    /// The disruption controller belongs to the API server; an in-process set-up without the
    /// HTTP server can start it with [`Cluster::start_with_disruption_controller`].
    pub fn start(
        store: Store,
        scenario: &Scenario,
        timings: Timings,
        faults: Faults,
    ) -> Result<ClusterHandle> {
        let runtime = tokio::runtime::Handle::try_current().map_err(|_| Error::NoRuntime)?;
        // Before any pod exists, so that the router misses nothing the kubelets do not list.
        let pod_events = store.subscribe_all();
        let cancel = CancellationToken::new();
        let mut routes = HashMap::new();
        let (faults, _) = watch::channel(faults);
        let mut hosts = BTreeMap::new();
        let mut kubelets = Vec::new();
        // The snapshots of the control plane's etcd hold what the API server holds.
        let etcd = store.clone();
        let kubeadm = KubeadmCluster::new(
            scenario.control_plane_version(),
            Some(Arc::new(move || {
                let keys = u64::try_from(etcd.object_count()).unwrap_or(u64::MAX);
                (etcd.resource_version(), keys)
            })),
        );
        for spec in &scenario.nodes {
            let (host, commands) =
                SimHost::new(&spec.name, &spec.host, &kubeadm, faults.subscribe());
            kubelet::register_in(&store, spec, &host)?;
            let (pod_tx, pod_rx) = tokio::sync::mpsc::unbounded_channel();
            routes.insert(spec.name.clone(), pod_tx);
            kubelets.push((
                KubeletContext {
                    api: store.clone(),
                    spec: spec.clone(),
                    host: host.clone(),
                    timings: timings.clone(),
                    faults: faults.subscribe(),
                    cancel: cancel.clone(),
                },
                commands,
                pod_rx,
            ));
            hosts.insert(spec.name.clone(), host);
        }
        for ns in &scenario.namespaces {
            match store.create(&GroupResource::core("namespaces"), None, ns.clone()) {
                Ok(_) => {}
                Err(e) if e.code() == 409 => {}
                Err(e) => return Err(e.into()),
            }
        }
        create_all(&store, apps("daemonsets"), &scenario.daemonsets)?;
        create_all(&store, apps("deployments"), &scenario.deployments)?;
        create_all(&store, apps("statefulsets"), &scenario.statefulsets)?;
        create_all(
            &store,
            GroupResource::new("policy", "poddisruptionbudgets"),
            &scenario.pdbs,
        )?;
        create_all(&store, pods(), &scenario.pods)?;

        let mut tasks = Vec::new();
        tasks.push(runtime.spawn(kubelet::route_pods(pod_events, routes, cancel.clone())));
        for (ctx, commands, updates) in kubelets {
            tasks.push(runtime.spawn(kubelet::run(ctx, commands, updates)));
        }
        tasks.push(runtime.spawn(workloads::run(store.clone(), cancel.clone())));
        tasks.push(runtime.spawn(scheduler::run(store.clone(), cancel.clone())));
        tasks.push(runtime.spawn(lifecycle::run(
            store.clone(),
            timings.clone(),
            cancel.clone(),
        )));
        tracing::info!(
            nodes = scenario.nodes.len(),
            seed = scenario.seed,
            "simulated cluster started"
        );
        Ok(ClusterHandle {
            store,
            hosts,
            timings,
            faults,
            cancel,
            runtime,
            tasks,
            foreign: Vec::new(),
        })
    }

    /// [`Cluster::start`] plus the API server's disruption controller, for tests that use the
    /// store without the HTTP server.
    pub fn start_with_disruption_controller(
        store: Store,
        scenario: &Scenario,
        timings: Timings,
        faults: Faults,
    ) -> Result<ClusterHandle> {
        let mut handle = Self::start(store.clone(), scenario, timings, faults)?;
        handle.foreign.push(disruption::spawn(store));
        Ok(handle)
    }
}

impl ClusterHandle {
    /// The store the cluster runs on.
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// The timings in effect.
    pub fn timings(&self) -> &Timings {
        &self.timings
    }

    /// Names of the simulated nodes.
    pub fn node_names(&self) -> Vec<String> {
        self.hosts.keys().cloned().collect()
    }

    /// The host of `node`.
    pub fn host(&self, node: &str) -> Result<&SimHost> {
        self.hosts
            .get(node)
            .ok_or_else(|| Error::UnknownNode(node.to_string()))
    }

    /// Every node's host, by node name.
    pub fn hosts(&self) -> &BTreeMap<String, SimHost> {
        &self.hosts
    }

    /// The faults in effect.
    pub fn faults(&self) -> Faults {
        self.faults.borrow().clone()
    }

    /// Change the faults; node faults apply from the next reboot or kubelet start.
    pub fn set_faults(&self, faults: Faults) {
        self.faults.send_replace(faults);
    }

    /// Keep `api` (the HTTP server's fault controls) in step with [`Faults::api`] and
    /// [`Faults::drop_watches_every`] for as long as the cluster runs.
    pub fn drive_api_faults(&mut self, api: ApiFaults) {
        let task = self.runtime.spawn(faults::drive_api_faults(
            self.faults.subscribe(),
            api,
            self.cancel.clone(),
        ));
        self.tasks.push(task);
    }

    /// Power on a node that stayed down after a reboot (the "never returns" fault): it boots.
    pub fn power_on(&self, node: &str) -> Result<()> {
        self.host(node)?
            .send(KubeletCommand::PowerOn)
            .map_err(|_| Error::Stopped)
    }

    /// Remove a node from the cluster, as an autoscaler scale-down does: its host goes down for
    /// good, its pods and its Node object are deleted.
    pub fn remove_node(&self, node: &str) -> Result<()> {
        self.host(node)?
            .send(KubeletCommand::Remove)
            .map_err(|_| Error::Stopped)
    }

    /// Wait until `check` returns `Ok`, re-evaluating it after every batch of store changes;
    /// `Err(reason)` means "not yet". Fails with [`Error::Timeout`] (carrying the last reason)
    /// after `timeout`.
    pub async fn wait_for<T>(
        &self,
        what: &str,
        timeout: Duration,
        check: impl FnMut(&Store) -> std::result::Result<T, String>,
    ) -> Result<T> {
        wait_for(&self.store, what, timeout, check).await
    }

    /// Wait until `condition` holds (see [`ClusterHandle::wait_for`]).
    pub async fn wait_until(
        &self,
        what: &str,
        timeout: Duration,
        mut condition: impl FnMut(&Store) -> bool,
    ) -> Result<()> {
        self.wait_for(what, timeout, |store| {
            condition(store)
                .then_some(())
                .ok_or_else(|| "not yet".to_string())
        })
        .await
    }

    /// Wait until `node` is Ready; returns its `bootID`.
    pub async fn wait_node_ready(&self, node: &str, timeout: Duration) -> Result<String> {
        let key = ResourceKey::new(nodes(), None, node);
        self.wait_for(&format!("node {node} Ready"), timeout, |store| {
            let n = store.get(&key).map_err(|e| e.to_string())?;
            if meta::node_ready(&n) {
                Ok(meta::str_at(&n, "/status/nodeInfo/bootID").to_string())
            } else {
                Err(format!("node {node} is not Ready"))
            }
        })
        .await
    }

    /// Wait until the whole cluster settled (see [`settled`]).
    pub async fn wait_settled(&self, timeout: Duration) -> Result<()> {
        self.wait_for("the cluster to settle", timeout, settled)
            .await
    }

    /// Stop every simulated component and wait for it to finish.
    pub async fn shutdown(mut self) {
        self.cancel.cancel();
        for task in &self.foreign {
            task.abort();
        }
        join_all(std::mem::take(&mut self.tasks)).await;
    }
}

/// Wait for `tasks` to end, logging those that panicked.
pub(super) async fn join_all(tasks: Vec<JoinHandle<()>>) {
    for task in tasks {
        if let Err(e) = task.await
            && e.is_panic()
        {
            tracing::error!(error = %e, "a simulated cluster task panicked");
        }
    }
}

impl Drop for ClusterHandle {
    fn drop(&mut self) {
        self.cancel.cancel();
        for task in &self.foreign {
            task.abort();
        }
    }
}

/// Wait on `store` until `check` returns `Ok` (see [`ClusterHandle::wait_for`]).
pub async fn wait_for<T>(
    store: &Store,
    what: &str,
    timeout: Duration,
    mut check: impl FnMut(&Store) -> std::result::Result<T, String>,
) -> Result<T> {
    let mut rx = store.subscribe_all();
    let deadline = tokio::time::Instant::now() + timeout;
    let timed_out = |last: String| Error::Timeout {
        what: what.to_string(),
        timeout,
        last,
    };
    loop {
        let last = match check(store) {
            Ok(value) => return Ok(value),
            Err(reason) => reason,
        };
        // A busy store keeps `recv` ready, so the deadline is checked before waiting too.
        if tokio::time::Instant::now() >= deadline {
            return Err(timed_out(last));
        }
        match tokio::time::timeout_at(deadline, rx.recv()).await {
            Err(_) => return Err(timed_out(last)),
            Ok(Err(RecvError::Closed)) => return Err(Error::Stopped),
            Ok(Ok(_) | Err(RecvError::Lagged(_))) => {
                // Evaluate once per batch, not once per event.
                while !matches!(
                    rx.try_recv(),
                    Err(TryRecvError::Empty | TryRecvError::Closed)
                ) {}
            }
        }
    }
}

/// Whether the cluster settled: every node Ready; every Deployment, StatefulSet and DaemonSet
/// observed and fully Ready; no pod terminating; every bound pod Running and Ready; every PDB
/// status current. `Err` says what is still moving.
pub fn settled(store: &Store) -> std::result::Result<(), String> {
    let list = |resource: GroupResource| {
        store
            .list(&resource, None, &ListOptions::default())
            .map(|l| l.items)
            .map_err(|e| e.to_string())
    };
    let int = |obj: &Value, pointer: &str| obj.pointer(pointer).and_then(Value::as_i64);
    let observed =
        |obj: &Value| int(obj, "/status/observedGeneration") == int(obj, "/metadata/generation");
    let id = |obj: &Value| format!("{}/{}", meta::namespace(obj), meta::name(obj));
    for node in list(nodes())? {
        if !meta::node_ready(&node) {
            return Err(format!("node {} is not Ready", meta::name(&node)));
        }
    }
    for kind in ["deployments", "statefulsets"] {
        for obj in list(apps(kind))? {
            let want = int(&obj, "/spec/replicas").unwrap_or(1);
            let ready = int(&obj, "/status/readyReplicas").unwrap_or(0);
            let total = int(&obj, "/status/replicas").unwrap_or(0);
            if !observed(&obj) || ready != want || total != want {
                return Err(format!("{kind} {}: {ready}/{want} ready", id(&obj)));
            }
        }
    }
    for ds in list(apps("daemonsets"))? {
        let desired = int(&ds, "/status/desiredNumberScheduled");
        let ready = int(&ds, "/status/numberReady");
        if !observed(&ds) || desired.is_none() || desired != ready {
            return Err(format!(
                "daemonset {}: {}/{} ready",
                id(&ds),
                ready.unwrap_or(0),
                desired.unwrap_or(0)
            ));
        }
    }
    for pod in list(pods())? {
        if meta::is_terminating(&pod) {
            return Err(format!("pod {} is terminating", id(&pod)));
        }
        let bound = !meta::str_at(&pod, "/spec/nodeName").is_empty();
        if bound && !meta::pod_terminal(&pod) && !meta::pod_ready(&pod) {
            return Err(format!("pod {} is not Ready", id(&pod)));
        }
    }
    for pdb in list(GroupResource::new("policy", "poddisruptionbudgets"))? {
        if !observed(&pdb) {
            return Err(format!("pdb {} status not current", id(&pdb)));
        }
    }
    for rs in list(apps("replicasets"))? {
        let want = int(&rs, "/spec/replicas").unwrap_or(1);
        if objects::controller_uid(&rs).is_some() && int(&rs, "/status/replicas") != Some(want) {
            return Err(format!("replicaset {} not scaled", id(&rs)));
        }
    }
    Ok(())
}

/// The pods bound to `node` (a convenience for tests and the demo).
pub fn pods_on(store: &Store, node: &str) -> Vec<Arc<Value>> {
    store
        .list(
            &pods(),
            None,
            &ListOptions::fields(&format!("spec.nodeName={node}")),
        )
        .map(|l| l.items)
        .unwrap_or_default()
}
