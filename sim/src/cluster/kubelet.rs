//! One simulated kubelet per node.
//!
//! It registers its Node (labels, taints, addresses, capacity, `nodeInfo` read from the host)
//! and renews its Lease every [`Timings::heartbeat`]; it writes the node's status when it
//! changes, when the API shows another Ready status than the kubelet's own (the node-lifecycle
//! controller marked it `Unknown`), again at the next pod sync or heartbeat when a write failed,
//! and otherwise every [`Timings::node_status_report`]. It
//! runs the pods bound to it, following a watch of `spec.nodeName=NODE`: a new pod is
//! `Running` at once and `Ready` after [`Timings::pod_start_time`]; a pod with a
//! `deletionTimestamp` is removed (deleted with grace 0) after [`Timings::pod_stop_time`].
//!
//! Its host drives the rest. A power-off silences the kubelet and changes nothing in the API:
//! the node keeps its last status until the node-lifecycle controller ([`super::lifecycle`])
//! marks it `Unknown`, and its pods stay bound with their stale status (still Ready) unless that
//! controller marks them not Ready or evicts them. After [`Timings::reboot`] the host boots (new
//! boot id, newest kernel) and the kubelet starts again; [`Timings::pod_resync`] later it
//! resyncs every pod bound to it (until then they show their status from before): pods
//! deleted meanwhile are finished off, the others (DaemonSet and mirror pods included) have
//! their containers restarted (`restartCount` + 1, Ready `False`, then `True` again after their
//! start-up time). A kubelet restart keeps the containers running and reports the installed
//! kubelet version. After a start the node is Ready once [`Timings::node_ready`] passed, unless
//! a fault keeps it down.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;

use serde_json::{Value, json};
use tokio::sync::broadcast::error::RecvError;
use tokio::sync::{broadcast, mpsc, watch};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::Timings;
use super::faults::Faults;
use super::host::{KubeletCommand, PowerState, SimHost};
use super::kubeadm::StaticPod;
use super::node_api::{CallResult, NodeApi};
use super::objects::{self, leases, nodes, pods};
use super::scenario::NodeSpec;
use crate::apiserver::{
    DeleteOptions, EventType, Part, Preconditions, ResourceKey, Store, StoreEvent, meta,
};

/// Where kubelets keep their Leases.
const NODE_LEASES: &str = "kube-node-lease";
/// Pods a node accepts (the kubelet's default `maxPods`).
pub(crate) const MAX_PODS: u32 = 110;
/// Lease duration the kubelet announces.
const LEASE_SECONDS: i64 = 40;

/// Everything a kubelet needs.
pub(crate) struct KubeletContext<A> {
    /// The API server, as the node sees it.
    pub(crate) api: A,
    pub(crate) spec: NodeSpec,
    pub(crate) host: SimHost,
    pub(crate) timings: Timings,
    pub(crate) faults: watch::Receiver<Faults>,
    pub(crate) cancel: CancellationToken,
}

/// Timers, earliest first; equal deadlines fire in insertion order.
struct Timers<T> {
    queue: BTreeMap<(Instant, u64), T>,
    seq: u64,
}

impl<T> Timers<T> {
    fn new() -> Self {
        Timers {
            queue: BTreeMap::new(),
            seq: 0,
        }
    }

    fn add(&mut self, at: Instant, timer: T) {
        self.seq += 1;
        self.queue.insert((at, self.seq), timer);
    }

    fn next(&self) -> Option<Instant> {
        self.queue.keys().next().map(|(at, _)| *at)
    }

    fn pop_due(&mut self, now: Instant) -> Option<T> {
        let first = *self.queue.keys().next()?;
        if first.0 > now {
            return None;
        }
        self.queue.remove(&first)
    }

    fn clear(&mut self) {
        self.queue.clear();
    }
}

enum Timer {
    PodReady {
        key: ResourceKey,
        uid: String,
    },
    PodStopped {
        key: ResourceKey,
        uid: String,
    },
    Heartbeat {
        epoch: u64,
    },
    /// The periodic sync of the node's pods (upstream `syncFrequency`).
    PodSync {
        epoch: u64,
    },
    NodeReady {
        epoch: u64,
    },
    Boot {
        epoch: u64,
    },
    PodResync {
        epoch: u64,
    },
}

/// The Ready condition's possible states as a kubelet reports them, with upstream's reasons
/// and messages (`Unknown` is the node-lifecycle controller's).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Readiness {
    Ready,
    Starting,
    Failed,
}

impl Readiness {
    fn condition(self) -> (&'static str, &'static str, &'static str) {
        match self {
            Readiness::Ready => ("True", "KubeletReady", "kubelet is posting ready status"),
            Readiness::Starting => (
                "False",
                "KubeletNotReady",
                "container runtime status check may not have completed yet",
            ),
            Readiness::Failed => (
                "False",
                "KubeletNotReady",
                "PLEG is not healthy: pleg has yet to be successful",
            ),
        }
    }
}

/// The node's status `nodeInfo` from its host.
fn node_info(spec: &NodeSpec, host: &SimHost) -> Value {
    use rota_agent::host::Host;
    let version = host.kubelet_version().unwrap_or_default();
    json!({
        "architecture": "amd64",
        "bootID": host.boot_id().unwrap_or_default(),
        "containerRuntimeVersion": host.container_runtime_version(),
        "kernelVersion": host.kernel_release().unwrap_or_default(),
        "kubeletVersion": version,
        "machineID": host.machine_id(),
        "operatingSystem": "linux",
        "osImage": host.os_image(),
        "systemUUID": spec.system_uuid,
    })
}

/// The pressure conditions a healthy kubelet reports: type, reason, message.
const PRESSURE_CONDITIONS: [(&str, &str, &str); 3] = [
    (
        "MemoryPressure",
        "KubeletHasSufficientMemory",
        "kubelet has sufficient memory available",
    ),
    (
        "DiskPressure",
        "KubeletHasNoDiskPressure",
        "kubelet has no disk pressure",
    ),
    (
        "PIDPressure",
        "KubeletHasSufficientPID",
        "kubelet has sufficient PID available",
    ),
];

fn node_conditions(readiness: Readiness, now: &str) -> Value {
    let mut conditions: Vec<Value> = PRESSURE_CONDITIONS
        .iter()
        .map(|&(kind, reason, message)| {
            json!({"type": kind, "status": "False", "reason": reason, "message": message,
                   "lastHeartbeatTime": now, "lastTransitionTime": now})
        })
        .collect();
    let (status, reason, message) = readiness.condition();
    conditions.push(
        json!({"type": "Ready", "status": status, "reason": reason, "message": message,
                           "lastHeartbeatTime": now, "lastTransitionTime": now}),
    );
    Value::Array(conditions)
}

/// The Node object a kubelet registers, Ready (a cluster that is already running).
fn node_object(spec: &NodeSpec, host: &SimHost, now: jiff::Timestamp) -> Value {
    let now = meta::format_time(now);
    let capacity = json!({
        "cpu": "4", "memory": "16374584Ki", "pods": MAX_PODS.to_string(),
        "ephemeral-storage": "101430960Ki", "hugepages-2Mi": "0",
    });
    let allocatable = json!({
        "cpu": spec.allocatable_cpu, "memory": spec.allocatable_memory, "pods": MAX_PODS.to_string(),
        "ephemeral-storage": "93478772582", "hugepages-2Mi": "0",
    });
    let mut node = json!({
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {
            "name": spec.name,
            "labels": spec.labels,
            "annotations": {
                "node.alpha.kubernetes.io/ttl": "0",
                "volumes.kubernetes.io/controller-managed-attach-detach": "true",
            },
        },
        "spec": {
            "podCIDR": spec.pod_cidr,
            "podCIDRs": [spec.pod_cidr],
            "providerID": format!("sim://{}/{}", spec.zone, spec.name),
        },
        "status": {
            "capacity": capacity,
            "allocatable": allocatable,
            "conditions": node_conditions(Readiness::Ready, &now),
            "addresses": [
                {"type": "InternalIP", "address": spec.internal_ip},
                {"type": "Hostname", "address": spec.name},
            ],
            "daemonEndpoints": {"kubeletEndpoint": {"Port": 10250}},
            "nodeInfo": node_info(spec, host),
        },
    });
    if !spec.taints.is_empty() {
        node["spec"]["taints"] = json!(spec.taints);
    }
    node
}

/// Where kubeadm's static pods run.
const KUBE_SYSTEM: &str = "kube-system";

/// The mirror pods of a kubeadm control-plane node, one per static pod manifest on its host
/// (etcd, kube-apiserver, kube-controller-manager, kube-scheduler): labelled `component` and
/// `tier: control-plane`, annotated `kubernetes.io/config.mirror` with the manifest's hash and
/// owned by the Node, as the kubelet publishes them. Their images are the manifests': kubeadm
/// moves them, not the kubelet package.
fn static_pods(node: &Value, manifests: &BTreeMap<String, StaticPod>) -> Vec<Value> {
    let name = meta::name(node);
    manifests
        .values()
        .map(|pod| {
            let component = &pod.component;
            json!({
                "apiVersion": "v1",
                "kind": "Pod",
                "metadata": {
                    "name": format!("{component}-{name}"),
                    "namespace": KUBE_SYSTEM,
                    "labels": {"component": component, "tier": "control-plane"},
                    "annotations": {
                        "kubernetes.io/config.hash": pod.hash,
                        "kubernetes.io/config.mirror": pod.hash,
                        "kubernetes.io/config.source": "file",
                    },
                    "ownerReferences": [{
                        "apiVersion": "v1", "kind": "Node", "name": name,
                        "uid": meta::uid(node), "controller": true,
                    }],
                },
                "spec": {
                    "nodeName": name,
                    "hostNetwork": true,
                    "priorityClassName": "system-node-critical",
                    "priority": 2_000_001_000,
                    "containers": [{"name": component, "image": pod.image}],
                    "tolerations": [{"operator": "Exists", "effect": "NoExecute"}],
                },
                "status": {"phase": "Pending"},
            })
        })
        .collect()
}

fn lease_object(node: &Value, now: jiff::Timestamp) -> Value {
    json!({
        "apiVersion": "coordination.k8s.io/v1",
        "kind": "Lease",
        "metadata": {
            "name": meta::name(node),
            "namespace": NODE_LEASES,
            "ownerReferences": [{"apiVersion": "v1", "kind": "Node", "name": meta::name(node), "uid": meta::uid(node)}],
        },
        "spec": {
            "holderIdentity": meta::name(node),
            "leaseDurationSeconds": LEASE_SECONDS,
            "renewTime": meta::format_micro_time(now),
        },
    })
}

/// Register the node (Ready) and its Lease.
pub(crate) async fn register<A: NodeApi>(
    api: &A,
    spec: &NodeSpec,
    host: &SimHost,
) -> CallResult<()> {
    let now = api.now();
    let node = api.registration(node_object(spec, host, now));
    let node = api.create(&nodes(), None, node).await?;
    api.create(&leases(), Some(NODE_LEASES), lease_object(&node, now))
        .await?;
    Ok(())
}

/// [`register`] in the emulator's store, without waiting.
pub(crate) fn register_in(store: &Store, spec: &NodeSpec, host: &SimHost) -> super::Result<()> {
    let now = store.now();
    let node = store.create(&nodes(), None, node_object(spec, host, now))?;
    store.create(&leases(), Some(NODE_LEASES), lease_object(&node, now))?;
    Ok(())
}

/// What the pod router tells a kubelet about its node's pods.
#[derive(Clone, Debug)]
pub(crate) enum PodUpdate {
    /// The pod is bound to the node (new or changed).
    Present(Arc<Value>),
    /// The pod left the node (deleted, or bound elsewhere).
    Gone(Arc<Value>),
    /// Changes were missed: list the node's pods again.
    Resync,
}

/// The sending end of a kubelet's pod updates.
pub(crate) type PodSender = mpsc::UnboundedSender<PodUpdate>;

fn node_name_of(pod: &Value) -> &str {
    meta::str_at(pod, "/spec/nodeName")
}

fn route(kubelets: &HashMap<String, PodSender>, event: &StoreEvent) {
    if !(event.resource.group.is_empty() && event.resource.resource == "pods") {
        return;
    }
    let send = |node: &str, update: PodUpdate| {
        if let Some(tx) = kubelets.get(node) {
            // A kubelet that is gone (removed node) needs no updates.
            let _ = tx.send(update);
        }
    };
    let node = node_name_of(&event.object);
    match event.event_type {
        EventType::Deleted => send(node, PodUpdate::Gone(event.object.clone())),
        EventType::Added => send(node, PodUpdate::Present(event.object.clone())),
        EventType::Modified => {
            if let Some(before) = event.previous.as_deref().map(node_name_of)
                && before != node
            {
                send(before, PodUpdate::Gone(event.object.clone()));
            }
            send(node, PodUpdate::Present(event.object.clone()));
        }
    }
}

/// Route every pod change to the kubelet of the node the pod is bound to, until `cancel`: one
/// store subscription for all kubelets rather than one filtered watch each, so the cost of a
/// change does not grow with the number of nodes. `events` must be subscribed before the
/// kubelets list their pods.
pub(crate) async fn route_pods(
    mut events: broadcast::Receiver<Arc<StoreEvent>>,
    kubelets: HashMap<String, PodSender>,
    cancel: CancellationToken,
) {
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            event = events.recv() => match event {
                Ok(event) => route(&kubelets, &event),
                Err(RecvError::Lagged(_)) => {
                    for tx in kubelets.values() {
                        let _ = tx.send(PodUpdate::Resync);
                    }
                }
                Err(RecvError::Closed) => return,
            },
        }
    }
}

#[derive(Default)]
struct Tracked {
    stopping: bool,
    /// Its containers stopped and the kubelet asked the API to remove it: while the pod is
    /// still listed, every pod sync asks again, as a real kubelet's status manager does until
    /// the object is gone (an answer may be lost, or a conflict, across an API server restart).
    stopped: bool,
}

struct Kubelet<A> {
    ctx: KubeletContext<A>,
    node_key: ResourceKey,
    up: bool,
    /// The Ready status the kubelet reports.
    readiness: Readiness,
    /// Whether the kubelet follows its pods; false from a boot until its first pod sync.
    synced: bool,
    /// The pods whose restart after the last boot the API server took (the first pod sync
    /// after a boot is retried until every pod's is).
    restarted: HashSet<String>,
    /// When it last wrote the node's status.
    last_report: Instant,
    /// The last status write failed (the API server was away, say): the next heartbeat or pod
    /// sync writes it again, whatever the API shows.
    status_owed: bool,
    /// Changes at every kubelet start and power-off; timers of an older epoch are stale.
    epoch: u64,
    pods: HashMap<String, Tracked>,
    timers: Timers<Timer>,
    /// The kubelet version the node started with (a different one is an upgrade).
    first_version: Option<String>,
    /// The node has booted since the simulation started it.
    rebooted: bool,
    /// The `nodeInfo` of the running kubelet (boot id, versions), sent with every status
    /// write: a write that failed is made good by the next one.
    info: Value,
    next_ip: u32,
}

/// Run a node's kubelet until `ctx.cancel`, the command channel closes, or the node is removed.
/// The node must be registered ([`register`]); `updates` come from [`route_pods`].
pub(crate) async fn run<A: NodeApi>(
    ctx: KubeletContext<A>,
    mut commands: mpsc::UnboundedReceiver<KubeletCommand>,
    mut updates: mpsc::UnboundedReceiver<PodUpdate>,
) {
    let cancel = ctx.cancel.clone();
    let mut kubelet = Kubelet {
        node_key: ResourceKey::new(nodes(), None, &ctx.spec.name),
        first_version: ctx.host.kubelet_version(),
        rebooted: false,
        info: node_info(&ctx.spec, &ctx.host),
        ctx,
        up: true,
        readiness: Readiness::Ready,
        synced: true,
        restarted: HashSet::new(),
        last_report: Instant::now(),
        status_owed: false,
        epoch: 0,
        pods: HashMap::new(),
        timers: Timers::new(),
        next_ip: 0,
    };
    kubelet.ensure_static_pods().await;
    kubelet.resync().await;
    kubelet.schedule_heartbeat();
    kubelet.schedule_pod_sync();
    loop {
        let next = kubelet.timers.next();
        tokio::select! {
            _ = cancel.cancelled() => return,
            command = commands.recv() => match command {
                Some(KubeletCommand::Remove) => {
                    kubelet.remove().await;
                    return;
                }
                Some(command) => kubelet.on_command(command).await,
                None => return,
            },
            update = updates.recv() => match update {
                // A kubelet that is down (or not yet synced after a boot) sees nothing; it
                // lists its pods when it syncs.
                Some(_) if !kubelet.up || !kubelet.synced => {}
                Some(PodUpdate::Present(pod)) => kubelet.on_pod(&pod).await,
                Some(PodUpdate::Gone(pod)) => {
                    kubelet.pods.remove(meta::uid(&pod));
                }
                Some(PodUpdate::Resync) => kubelet.resync().await,
                None => return,
            },
            _ = sleep_until(next) => kubelet.fire_due().await,
        }
    }
}

async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

impl<A: NodeApi> Kubelet<A> {
    fn node(&self) -> &str {
        &self.ctx.spec.name
    }

    fn faults(&self) -> Faults {
        self.ctx.faults.borrow().clone()
    }

    /// Take the node's pods as they are now (at start and after missed updates).
    async fn resync(&mut self) {
        match self.ctx.api.pods_on(self.node()).await {
            Ok(list) => {
                let present: Vec<&str> = list.iter().map(|p| meta::uid(p)).collect();
                self.pods.retain(|uid, _| present.contains(&uid.as_str()));
                for pod in &list {
                    self.on_pod(pod).await;
                }
            }
            Err(e) => {
                tracing::warn!(node = self.node(), error = %e, "kubelet cannot list its pods")
            }
        }
    }

    async fn on_command(&mut self, command: KubeletCommand) {
        match command {
            KubeletCommand::Reboot if self.up => {
                tracing::info!(node = self.node(), "node rebooting");
                self.power_off();
                if !self.faults().never_returns(self.node()) {
                    let at = Instant::now() + self.ctx.timings.reboot;
                    self.timers.add(at, Timer::Boot { epoch: self.epoch });
                } else {
                    tracing::warn!(
                        node = self.node(),
                        "fault: node does not come back from reboot"
                    );
                }
            }
            KubeletCommand::RestartKubelet if self.up => {
                tracing::info!(node = self.node(), "kubelet restarting");
                self.start_kubelet(false).await;
            }
            KubeletCommand::PowerOn if !self.up => self.boot().await,
            KubeletCommand::StaticPodsChanged if self.up => {
                tracing::info!(node = self.node(), "static pod manifests changed");
                self.ensure_static_pods().await;
            }
            _ => {}
        }
    }

    async fn fire_due(&mut self) {
        while let Some(timer) = self.timers.pop_due(Instant::now()) {
            match timer {
                Timer::PodReady { key, uid } => self.pod_ready(&key, &uid).await,
                Timer::PodStopped { key, uid } => self.pod_stopped(&key, &uid).await,
                Timer::Heartbeat { epoch } if epoch == self.epoch && self.up => {
                    self.heartbeat().await;
                    self.schedule_heartbeat();
                }
                Timer::PodSync { epoch } if epoch == self.epoch && self.up => {
                    if self.status_owed {
                        self.set_readiness(self.readiness, None).await;
                    }
                    if self.synced {
                        self.resync().await;
                    }
                    self.schedule_pod_sync();
                }
                Timer::NodeReady { epoch } if epoch == self.epoch && self.up => {
                    self.set_readiness(Readiness::Ready, None).await;
                }
                Timer::Boot { epoch } if epoch == self.epoch && !self.up => self.boot().await,
                Timer::PodResync { epoch } if epoch == self.epoch && self.up => {
                    if self.restart_pods_after_boot().await {
                        self.synced = true;
                        self.resync().await;
                    } else {
                        // The API server did not take it all (it is away): until it does, the
                        // pods must not be adopted with their status from before the boot.
                        let at = Instant::now() + self.ctx.timings.pod_sync;
                        self.timers.add(at, Timer::PodResync { epoch });
                    }
                }
                _ => {}
            }
        }
    }

    fn schedule_pod_sync(&mut self) {
        let at = Instant::now() + self.ctx.timings.pod_sync;
        self.timers.add(at, Timer::PodSync { epoch: self.epoch });
    }

    fn schedule_heartbeat(&mut self) {
        let at = Instant::now() + self.ctx.timings.heartbeat;
        self.timers.add(at, Timer::Heartbeat { epoch: self.epoch });
    }

    /// The host goes down: the kubelet falls silent and its containers stop. Nothing is
    /// written: the node and its pods keep their last status.
    fn power_off(&mut self) {
        self.up = false;
        self.epoch += 1;
        self.pods.clear();
        self.timers.clear();
        self.ctx.host.set_power(PowerState::Down);
    }

    async fn boot(&mut self) {
        let boot_id = self.ctx.host.boot();
        tracing::info!(node = self.node(), %boot_id, "node booted");
        self.ctx.host.set_power(PowerState::Up { boot_id });
        self.rebooted = true;
        self.start_kubelet(true).await;
    }

    /// A kubelet process starts: fresh node info, NotReady until `node_ready` passed (or for
    /// good when the upgrade fault hits), pods followed again; after a boot (`rebooted`) their
    /// containers start anew.
    async fn start_kubelet(&mut self, rebooted: bool) {
        // A restart before the first pod sync after a boot still owes that sync.
        let rebooted = rebooted || !self.synced;
        self.up = true;
        self.epoch += 1;
        let version = self.ctx.host.kubelet_version();
        let faults = self.faults();
        let upgraded = version != self.first_version;
        let failed = (faults.kubelet_fails(self.node()) && upgraded)
            || (faults.kubelet_fails_after_reboot(self.node()) && self.rebooted);
        let info = node_info(&self.ctx.spec, &self.ctx.host);
        if failed {
            tracing::warn!(
                node = self.node(),
                ?version,
                upgraded,
                rebooted = self.rebooted,
                "fault: the kubelet fails"
            );
            self.set_readiness(Readiness::Failed, Some(info)).await;
        } else {
            self.set_readiness(Readiness::Starting, Some(info)).await;
            let at = Instant::now() + self.ctx.timings.node_ready;
            self.timers.add(at, Timer::NodeReady { epoch: self.epoch });
        }
        self.heartbeat().await;
        self.schedule_heartbeat();
        self.schedule_pod_sync();
        self.ensure_static_pods().await;
        if rebooted {
            self.synced = false;
            self.restarted.clear();
            let at = Instant::now() + self.ctx.timings.pod_resync;
            self.timers.add(at, Timer::PodResync { epoch: self.epoch });
        } else {
            self.resync().await;
        }
    }

    /// The first pod sync after a boot ([`Timings::pod_resync`] after the kubelet started): no
    /// container of the node runs, so pods deleted while it was down are finished off and the
    /// others (DaemonSet and mirror pods too) restart in place. False when a call failed: the
    /// pass is made again, skipping the pods whose restart was written.
    async fn restart_pods_after_boot(&mut self) -> bool {
        self.ensure_static_pods().await;
        let list = match self.ctx.api.pods_on(self.node()).await {
            Ok(list) => list,
            Err(e) => {
                tracing::warn!(node = self.node(), error = %e, "kubelet cannot list its pods");
                return false;
            }
        };
        let mut complete = true;
        let now = self.ctx.api.now();
        for pod in list {
            let key = ResourceKey::for_object(pods(), &pod);
            let uid = meta::uid(&pod).to_string();
            if meta::pod_terminal(&pod) {
                continue;
            }
            if meta::is_terminating(&pod) {
                self.pod_stopped(&key, &uid).await;
                continue;
            }
            if pod.pointer("/status/containerStatuses").is_none() || self.restarted.contains(&uid) {
                // Never started (the resync starts it), or restarted already.
                continue;
            }
            if !self
                .write_pod_status(&key, &uid, "restarting pod", |p| restarted_status(p, now))
                .await
            {
                complete = false;
                continue;
            }
            self.restarted.insert(uid.clone());
            self.pods.insert(uid.clone(), Tracked::default());
            let at = Instant::now() + self.ctx.timings.pod_start_time(&pod);
            self.timers.add(at, Timer::PodReady { key, uid });
        }
        complete
    }

    /// A control-plane node's kubelet runs kubeadm's static pods from its manifest directory
    /// and publishes a mirror pod for each: created here when missing (at start, and after a
    /// reboot removed them), then started like any other pod of the node. A mirror pod whose
    /// manifest changed (another hash) is the old pod: the kubelet stops it and publishes the
    /// new one, which starts afresh.
    async fn ensure_static_pods(&self) {
        let manifests = self.ctx.host.static_pods();
        if manifests.is_empty() {
            return;
        }
        let api = &self.ctx.api;
        let Ok(node) = api.get(&self.node_key).await else {
            return;
        };
        for pod in static_pods(&node, &manifests) {
            let key = ResourceKey::for_object(pods(), &pod);
            if let Ok(current) = api.get(&key).await {
                let hash = "/metadata/annotations/kubernetes.io~1config.hash";
                if current.pointer(hash) == pod.pointer(hash) {
                    continue;
                }
                let opts = DeleteOptions {
                    grace_period_seconds: Some(0),
                    preconditions: Preconditions {
                        uid: Some(meta::uid(&current).to_string()),
                        ..Default::default()
                    },
                    ..Default::default()
                };
                if let Err(e) = api.delete(&key, &opts).await
                    && !e.not_found()
                {
                    tracing::warn!(node = self.node(), pod = meta::name(&pod), error = %e, "replacing a mirror pod failed");
                    continue;
                }
            }
            match api.create(&pods(), Some(KUBE_SYSTEM), pod).await {
                Ok(_) => {}
                Err(e) if e.code == 409 => {}
                Err(e) => {
                    tracing::warn!(node = self.node(), error = %e, "creating a mirror pod failed")
                }
            }
        }
    }

    /// The node leaves the cluster: its host goes down for good, and its pods go with its Node
    /// object (as the pod garbage collector deletes the pods of a node that is gone).
    async fn remove(&mut self) {
        if self.up {
            self.power_off();
        }
        // The Node first: while it exists, the DaemonSet controller recreates the pods deleted
        // below on it, and nothing would ever remove those.
        let api = &self.ctx.api;
        let lease = ResourceKey::new(leases(), Some(NODE_LEASES), self.node());
        for key in [lease, self.node_key.clone()] {
            if let Err(e) = api.delete(&key, &DeleteOptions::default()).await
                && !e.not_found()
            {
                tracing::warn!(node = self.node(), error = %e, "removing the node failed");
            }
        }
        self.delete_all_pods().await;
        tracing::info!(node = self.node(), "node removed");
    }

    async fn delete_all_pods(&self) {
        let api = &self.ctx.api;
        let list = match api.pods_on(self.node()).await {
            Ok(list) => list,
            Err(e) => {
                tracing::warn!(node = self.node(), error = %e, "listing pods failed");
                return;
            }
        };
        for pod in list {
            let opts = DeleteOptions {
                grace_period_seconds: Some(0),
                preconditions: Preconditions {
                    uid: Some(meta::uid(&pod).to_string()),
                    ..Default::default()
                },
                ..Default::default()
            };
            if let Err(e) = api
                .delete(&ResourceKey::for_object(pods(), &pod), &opts)
                .await
                && !e.not_found()
            {
                tracing::warn!(node = self.node(), pod = meta::name(&pod), error = %e, "deleting pod failed");
            }
        }
    }

    /// Read-modify-write of the node's status; `f` gets the status and the formatted time.
    /// Whether it was written.
    async fn write_node_status(&self, mut f: impl FnMut(&mut Value, &str) + Send) -> bool {
        let now = meta::format_time(self.ctx.api.now());
        let result = self
            .ctx
            .api
            .modify(&self.node_key, Part::Status, |node| {
                if !node.get("status").is_some_and(Value::is_object) {
                    node["status"] = json!({});
                }
                f(&mut node["status"], &now);
                true
            })
            .await;
        match result {
            Ok(_) => true,
            Err(e) if e.not_found() && self.up => {
                // Someone deleted the Node: a running kubelet registers it again (and owes
                // the new object its status).
                tracing::info!(node = self.node(), "node object gone, registering again");
                if let Err(e) = register(&self.ctx.api, &self.ctx.spec, &self.ctx.host).await {
                    tracing::warn!(node = self.node(), error = %e, "registering the node failed");
                }
                false
            }
            Err(e) => {
                tracing::warn!(node = self.node(), error = %e, "updating node status failed");
                false
            }
        }
    }

    /// Write the node's conditions for `readiness` and the running kubelet's `nodeInfo` (a new
    /// one, from a kubelet start, in the same write, so nobody sees the new version with the
    /// old readiness).
    async fn set_readiness(&mut self, readiness: Readiness, info: Option<Value>) {
        self.readiness = readiness;
        if let Some(info) = info {
            self.info = info;
        }
        let info = self.info.clone();
        let store_now = self.ctx.api.now();
        let written = self
            .write_node_status(|status, now| {
                status["nodeInfo"] = info.clone();
                let (ready, reason, message) = readiness.condition();
                objects::set_condition(
                    status,
                    "Ready",
                    ready,
                    Some(reason),
                    Some(message),
                    store_now,
                );
                for (kind, reason, message) in PRESSURE_CONDITIONS {
                    objects::set_condition(
                        status,
                        kind,
                        "False",
                        Some(reason),
                        Some(message),
                        store_now,
                    );
                }
                stamp_heartbeats(status, now);
            })
            .await;
        self.status_owed = !written;
        if written {
            self.last_report = Instant::now();
        }
    }

    /// Renew the Lease, and write the node's status when the API shows another Ready status
    /// than the kubelet reports, a write failed, or the report is due.
    async fn heartbeat(&mut self) {
        let reported = self.readiness.condition().0;
        let shown = self.ctx.api.get(&self.node_key).await.ok().and_then(|n| {
            n.pointer("/status/conditions")
                .and_then(Value::as_array)
                .and_then(|cs| cs.iter().find(|c| meta::str_at(c, "/type") == "Ready"))
                .map(|c| meta::str_at(c, "/status").to_string())
        });
        if shown.as_deref() != Some(reported)
            || self.status_owed
            || self.last_report.elapsed() >= self.ctx.timings.node_status_report
        {
            self.set_readiness(self.readiness, None).await;
        }
        let api = &self.ctx.api;
        let lease = ResourceKey::new(leases(), Some(NODE_LEASES), self.node());
        let renew = meta::format_micro_time(api.now());
        let result = api
            .modify(&lease, Part::Main, |l| {
                l["spec"]["renewTime"] = json!(renew);
                true
            })
            .await;
        if let Err(e) = result {
            if e.not_found() {
                if let Ok(node) = api.get(&self.node_key).await
                    && let Err(e) = api
                        .create(&leases(), Some(NODE_LEASES), lease_object(&node, api.now()))
                        .await
                {
                    tracing::warn!(node = self.node(), error = %e, "creating the node lease failed");
                }
            } else {
                tracing::warn!(node = self.node(), error = %e, "renewing the node lease failed");
            }
        }
    }

    async fn on_pod(&mut self, pod: &Value) {
        if meta::pod_terminal(pod) {
            return;
        }
        let uid = meta::uid(pod).to_string();
        let key = ResourceKey::for_object(pods(), pod);
        if meta::is_terminating(pod) {
            let tracked = self.pods.entry(uid.clone()).or_default();
            if tracked.stopped {
                self.pod_stopped(&key, &uid).await;
                return;
            }
            if !tracked.stopping {
                tracked.stopping = true;
                let grace = pod
                    .pointer("/metadata/deletionGracePeriodSeconds")
                    .and_then(Value::as_i64)
                    .unwrap_or(0)
                    .max(0);
                let at = Instant::now() + self.ctx.timings.pod_stop_time(pod, grace);
                self.timers.add(at, Timer::PodStopped { key, uid });
            }
            return;
        }
        if self.pods.contains_key(&uid) {
            return;
        }
        self.pods.insert(uid.clone(), Tracked::default());
        if meta::pod_ready(pod) {
            // Already running (the kubelet restarted): adopt it.
            return;
        }
        if !self.start_pod(&key, &uid, pod).await {
            // Not tracked, so the next pod sync starts it again.
            self.pods.remove(&uid);
            return;
        }
        let at = Instant::now() + self.ctx.timings.pod_start_time(pod);
        self.timers.add(at, Timer::PodReady { key, uid });
    }

    fn pod_ip(&mut self, pod: &Value) -> String {
        if pod.pointer("/spec/hostNetwork").and_then(Value::as_bool) == Some(true) {
            return self.ctx.spec.internal_ip.clone();
        }
        if let Some(ip) = pod.pointer("/status/podIP").and_then(Value::as_str) {
            return ip.to_string();
        }
        self.next_ip = self.next_ip % 250 + 1;
        let prefix = self
            .ctx
            .spec
            .pod_cidr
            .rsplit_once('.')
            .map_or("10.244.0", |(p, _)| p);
        format!("{prefix}.{}", self.next_ip + 1)
    }

    /// The pod's containers start: `Running`, not yet Ready. False when the API did not take
    /// the pod's new status.
    async fn start_pod(&mut self, key: &ResourceKey, uid: &str, pod: &Value) -> bool {
        let pod_ip = self.pod_ip(pod);
        let host_ip = self.ctx.spec.internal_ip.clone();
        let now = self.ctx.api.now();
        self.write_pod_status(key, uid, "starting pod", |p| {
            running_status(p, &host_ip, &pod_ip, now)
        })
        .await
    }

    async fn pod_ready(&mut self, key: &ResourceKey, uid: &str) {
        if !self.up || self.pods.get(uid).is_none_or(|t| t.stopping) {
            return;
        }
        let now = self.ctx.api.now();
        if !self
            .write_pod_status(key, uid, "marking pod ready", |p| ready_status(p, now))
            .await
        {
            let at = Instant::now() + self.ctx.timings.pod_sync;
            let (key, uid) = (key.clone(), uid.to_string());
            self.timers.add(at, Timer::PodReady { key, uid });
        }
    }

    /// Change the status of the pod `uid` at `key` with `f`, unless the pod was replaced or is
    /// terminating meanwhile (a pod that is gone needs nothing). False, and logged, when the
    /// write failed.
    async fn write_pod_status(
        &self,
        key: &ResourceKey,
        uid: &str,
        action: &str,
        mut f: impl FnMut(&mut Value) + Send,
    ) -> bool {
        let result = self
            .ctx
            .api
            .modify(key, Part::Status, |p| {
                if meta::uid(p) != uid || meta::is_terminating(p) {
                    return false;
                }
                f(p);
                true
            })
            .await;
        match result {
            Err(e) if !e.not_found() => {
                tracing::warn!(node = self.node(), pod = %key.name, error = %e, "{action} failed");
                false
            }
            _ => true,
        }
    }

    /// The pod's containers stopped: the kubelet removes it for good (retrying while the API
    /// server does not take it).
    async fn pod_stopped(&mut self, key: &ResourceKey, uid: &str) {
        if let Some(tracked) = self.pods.get_mut(uid) {
            tracked.stopped = true;
        }
        let opts = DeleteOptions {
            grace_period_seconds: Some(0),
            preconditions: Preconditions {
                uid: Some(uid.to_string()),
                ..Default::default()
            },
            ..Default::default()
        };
        match self.ctx.api.delete(key, &opts).await {
            Ok(_) => {}
            Err(e) if e.not_found() || e.code == 409 => {}
            Err(e) => {
                // Asked again at the next pod sync (see `Tracked::stopped`).
                tracing::warn!(node = self.node(), pod = %key.name, error = %e, "removing pod failed")
            }
        }
    }
}

fn stamp_heartbeats(status: &mut Value, now: &str) {
    if let Some(conditions) = status.get_mut("conditions").and_then(Value::as_array_mut) {
        for c in conditions {
            c["lastHeartbeatTime"] = json!(now);
        }
    }
}

fn container_id() -> String {
    let a: u128 = rand::random();
    let b: u128 = rand::random();
    format!("containerd://{a:032x}{b:032x}")
}

fn running_status(pod: &mut Value, host_ip: &str, pod_ip: &str, now: jiff::Timestamp) {
    let time = meta::format_time(now);
    let containers: Vec<Value> = pod
        .pointer("/spec/containers")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let has_requests = containers.iter().any(|c| {
        c.pointer("/resources/requests")
            .is_some_and(|r| !r.is_null())
    });
    let statuses: Vec<Value> = containers
        .iter()
        .map(|c| {
            let image = meta::str_at(c, "/image");
            json!({
                "name": meta::str_at(c, "/name"),
                "image": image,
                "imageID": format!("{image}@sha256:{}", &container_id()[13..77]),
                "containerID": container_id(),
                "ready": false,
                "started": true,
                "restartCount": 0,
                "state": {"running": {"startedAt": time}},
            })
        })
        .collect();
    let names: Vec<&str> = containers
        .iter()
        .map(|c| meta::str_at(c, "/name"))
        .collect();
    let unready = format!("containers with unready status: [{}]", names.join(" "));
    if !pod.get("status").is_some_and(Value::is_object) {
        pod["status"] = json!({});
    }
    let status = &mut pod["status"];
    for (kind, value, reason, message) in [
        ("PodReadyToStartContainers", "True", None, None),
        ("Initialized", "True", None, None),
        (
            "Ready",
            "False",
            Some("ContainersNotReady"),
            Some(unready.as_str()),
        ),
        (
            "ContainersReady",
            "False",
            Some("ContainersNotReady"),
            Some(unready.as_str()),
        ),
        ("PodScheduled", "True", None, None),
    ] {
        objects::set_condition(status, kind, value, reason, message, now);
    }
    status["phase"] = json!("Running");
    status["hostIP"] = json!(host_ip);
    status["hostIPs"] = json!([{"ip": host_ip}]);
    status["podIP"] = json!(pod_ip);
    status["podIPs"] = json!([{"ip": pod_ip}]);
    status["startTime"] = json!(time);
    status["qosClass"] = json!(if has_requests {
        "Burstable"
    } else {
        "BestEffort"
    });
    status["containerStatuses"] = json!(statuses);
}

/// The pod's containers started again after the node rebooted: each one's `restartCount`
/// grows, the last run is recorded as terminated, and the pod is not Ready until its start-up
/// time passed.
fn restarted_status(pod: &mut Value, now: jiff::Timestamp) {
    let time = meta::format_time(now);
    let status = &mut pod["status"];
    let names: Vec<String> = status
        .get("containerStatuses")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .map(|c| meta::str_at(c, "/name").to_string())
        .collect();
    let unready = format!("containers with unready status: [{}]", names.join(" "));
    for kind in ["Ready", "ContainersReady"] {
        objects::set_condition(
            status,
            kind,
            "False",
            Some("ContainersNotReady"),
            Some(&unready),
            now,
        );
    }
    if let Some(statuses) = status
        .get_mut("containerStatuses")
        .and_then(Value::as_array_mut)
    {
        for s in statuses {
            let started = s
                .pointer("/state/running/startedAt")
                .cloned()
                .unwrap_or(Value::Null);
            let restarts = s.get("restartCount").and_then(Value::as_i64).unwrap_or(0);
            s["lastState"] = json!({"terminated": {
                "exitCode": 255, "reason": "Unknown", "startedAt": started, "finishedAt": time,
                "containerID": s.get("containerID").cloned().unwrap_or(Value::Null),
            }});
            s["state"] = json!({"running": {"startedAt": time}});
            s["restartCount"] = json!(restarts + 1);
            s["containerID"] = json!(container_id());
            s["ready"] = json!(false);
        }
    }
}

fn ready_status(pod: &mut Value, now: jiff::Timestamp) {
    let status = &mut pod["status"];
    objects::set_condition(status, "Ready", "True", None, None, now);
    objects::set_condition(status, "ContainersReady", "True", None, None, now);
    if let Some(statuses) = status
        .get_mut("containerStatuses")
        .and_then(Value::as_array_mut)
    {
        for s in statuses {
            s["ready"] = json!(true);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::apiserver::GroupResource;
    use crate::cluster::node_api::CallError;
    use std::time::Duration;

    #[test]
    fn timers_fire_in_order() {
        let mut timers = Timers::new();
        let now = Instant::now();
        timers.add(now + Duration::from_secs(2), "b");
        timers.add(now + Duration::from_secs(1), "a");
        timers.add(now + Duration::from_secs(1), "a2");
        assert_eq!(timers.next(), Some(now + Duration::from_secs(1)));
        assert_eq!(timers.pop_due(now), None);
        let later = now + Duration::from_secs(1);
        assert_eq!(timers.pop_due(later), Some("a"));
        assert_eq!(timers.pop_due(later), Some("a2"));
        assert_eq!(timers.pop_due(later), None);
        timers.clear();
        assert_eq!(timers.next(), None);
    }

    #[test]
    fn pod_status_goes_running_then_ready() {
        let t = jiff::Timestamp::from_second(1_700_000_000).unwrap_or(jiff::Timestamp::UNIX_EPOCH);
        let mut pod = json!({
            "metadata": {"name": "p", "namespace": "default"},
            "spec": {"containers": [{"name": "c", "image": "i", "resources": {"requests": {"cpu": "1"}}}]},
            "status": {"phase": "Pending", "conditions": [{"type": "DisruptionTarget", "status": "True"}]},
        });
        running_status(&mut pod, "10.0.0.1", "10.244.0.2", t);
        assert_eq!(meta::pod_phase(&pod), "Running");
        assert!(!meta::pod_ready(&pod));
        assert_eq!(pod["status"]["qosClass"], "Burstable");
        assert!(meta::condition_true(&pod, "DisruptionTarget"));
        assert!(meta::condition_true(&pod, "PodScheduled"));
        ready_status(&mut pod, t);
        assert!(meta::pod_ready(&pod));
        assert_eq!(pod["status"]["containerStatuses"][0]["ready"], true);
    }

    #[test]
    fn a_reboot_restarts_containers_and_unreadies_the_pod() {
        let t = jiff::Timestamp::from_second(1_700_000_000).unwrap_or(jiff::Timestamp::UNIX_EPOCH);
        let later = jiff::Timestamp::from_second(1_700_000_100).unwrap_or(t);
        let mut pod = json!({
            "metadata": {"name": "p", "namespace": "default"},
            "spec": {"containers": [{"name": "c", "image": "i"}]},
        });
        running_status(&mut pod, "10.0.0.1", "10.244.0.2", t);
        ready_status(&mut pod, t);
        let id = pod["status"]["containerStatuses"][0]["containerID"].clone();
        restarted_status(&mut pod, later);
        assert!(!meta::pod_ready(&pod));
        let c = &pod["status"]["containerStatuses"][0];
        assert_eq!(c["restartCount"], 1);
        assert_eq!(c["ready"], false);
        assert_eq!(c["lastState"]["terminated"]["containerID"], id);
        assert_ne!(c["containerID"], id);
        assert_eq!(c["state"]["running"]["startedAt"], meta::format_time(later));
        ready_status(&mut pod, later);
        assert!(meta::pod_ready(&pod));
        let ready = pod["status"]["conditions"]
            .as_array()
            .and_then(|cs| cs.iter().find(|c| c["type"] == "Ready"))
            .cloned()
            .unwrap_or_default();
        assert_eq!(ready["lastTransitionTime"], meta::format_time(later));
    }

    /// The emulator's store behind an API server that can be away: every call fails with no
    /// answer (code 0) while it is.
    #[derive(Clone)]
    struct Away {
        store: Store,
        away: Arc<std::sync::atomic::AtomicBool>,
        refused: Arc<std::sync::atomic::AtomicUsize>,
        refused_deletes: Arc<std::sync::atomic::AtomicUsize>,
    }

    impl Away {
        fn check(&self) -> CallResult<()> {
            if self.away.load(std::sync::atomic::Ordering::SeqCst) {
                self.refused
                    .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                Err(CallError {
                    code: 0,
                    message: "connection refused".into(),
                })
            } else {
                Ok(())
            }
        }
    }

    impl NodeApi for Away {
        fn now(&self) -> jiff::Timestamp {
            self.store.now()
        }
        async fn create(
            &self,
            resource: &GroupResource,
            namespace: Option<&str>,
            obj: Value,
        ) -> CallResult<Arc<Value>> {
            self.check()?;
            NodeApi::create(&self.store, resource, namespace, obj).await
        }
        async fn get(&self, key: &ResourceKey) -> CallResult<Arc<Value>> {
            self.check()?;
            NodeApi::get(&self.store, key).await
        }
        async fn pods_on(&self, node: &str) -> CallResult<Vec<Arc<Value>>> {
            self.check()?;
            self.store.pods_on(node).await
        }
        async fn delete(&self, key: &ResourceKey, opts: &DeleteOptions) -> CallResult<()> {
            self.check().inspect_err(|_| {
                self.refused_deletes
                    .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            })?;
            NodeApi::delete(&self.store, key, opts).await
        }
        async fn modify<F>(&self, key: &ResourceKey, part: Part, edit: F) -> CallResult<()>
        where
            F: FnMut(&mut Value) -> bool + Send,
        {
            self.check()?;
            NodeApi::modify(&self.store, key, part, edit).await
        }
    }

    fn boot_id(store: &Store, node: &str) -> String {
        let node = store.get(&ResourceKey::new(nodes(), None, node));
        node.map(|n| meta::str_at(&n, "/status/nodeInfo/bootID").to_string())
            .unwrap_or_default()
    }

    /// The API server away when the kubelet has something to write. A pod whose containers
    /// stopped while it is away is removed once it is back. A reboot while it is away: the
    /// kubelet's writes after the boot fail, and the node and its pod still show Ready from
    /// before, so only the failed writes say what is owed. Within a pod sync of the API
    /// server's return, not a status report period later, the node shows the new boot id and
    /// the pod its restart.
    #[tokio::test]
    async fn writes_refused_while_the_api_server_is_away_are_made_good() {
        let store = Store::new();
        let api = Away {
            store: store.clone(),
            away: Arc::default(),
            refused: Arc::default(),
            refused_deletes: Arc::default(),
        };
        let spec = crate::cluster::Scenario::generate(1, 7).nodes[0].clone();
        let (faults, _) = watch::channel(Faults::default());
        let (host, commands) = SimHost::new(
            &spec.name,
            &spec.host,
            &crate::cluster::KubeadmCluster::default(),
            faults.subscribe(),
        );
        register(&api, &spec, &host).await.unwrap();
        let timings = Timings {
            reboot: Duration::from_millis(50),
            node_ready: Duration::from_millis(10),
            heartbeat: Duration::from_secs(600),
            node_status_report: Duration::from_secs(600),
            pod_sync: Duration::from_millis(100),
            ..Timings::for_real_control_plane(Duration::from_secs(40))
        };
        let cancel = CancellationToken::new();
        let ctx = KubeletContext {
            api: api.clone(),
            spec: spec.clone(),
            host: host.clone(),
            timings,
            faults: faults.subscribe(),
            cancel: cancel.clone(),
        };
        let (updates, rx) = mpsc::unbounded_channel();
        let kubelet = tokio::spawn(run(ctx, commands, rx));
        let before = boot_id(&store, &spec.name);
        assert!(!before.is_empty());
        let pod = json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": "web", "namespace": "default"},
            "spec": {"nodeName": spec.name, "containers": [{"name": "c", "image": "i"}]},
        });
        store.create(&pods(), Some("default"), pod).unwrap();
        let pod_key = ResourceKey::new(pods(), Some("default"), "web");
        let restarts_of = |key: &ResourceKey| {
            let pod = store.get(key).unwrap();
            let restarts = pod.pointer("/status/containerStatuses/0/restartCount");
            (meta::pod_ready(&pod), restarts.and_then(Value::as_i64))
        };
        let restarts = || restarts_of(&pod_key);
        let db = json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": "db", "namespace": "default"},
            "spec": {"nodeName": spec.name, "terminationGracePeriodSeconds": 30,
                     "containers": [{"name": "c", "image": "i"}]},
        });
        store.create(&pods(), Some("default"), db).unwrap();
        let db_key = ResourceKey::new(pods(), Some("default"), "db");
        let deadline = Instant::now() + Duration::from_secs(5);
        while restarts() != (true, Some(0)) || restarts_of(&db_key) != (true, Some(0)) {
            assert!(
                Instant::now() < deadline,
                "the pods never ran: {:?}",
                restarts()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }

        // The kubelet learns of the deletion, then the API server goes away before the
        // containers stop (300 ms).
        store
            .delete(
                &db_key,
                &DeleteOptions {
                    grace_period_seconds: Some(30),
                    ..Default::default()
                },
            )
            .unwrap();
        api.away.store(true, std::sync::atomic::Ordering::SeqCst);
        updates
            .send(PodUpdate::Present(store.get(&db_key).unwrap()))
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(5);
        while api
            .refused_deletes
            .load(std::sync::atomic::Ordering::SeqCst)
            == 0
        {
            assert!(
                Instant::now() < deadline,
                "the kubelet never removed the pod"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        api.away.store(false, std::sync::atomic::Ordering::SeqCst);
        let deadline = Instant::now() + Duration::from_secs(5);
        while store.get(&db_key).is_ok() {
            assert!(
                Instant::now() < deadline,
                "the stopped pod was never removed"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let refused_before = api.refused.load(std::sync::atomic::Ordering::SeqCst);

        api.away.store(true, std::sync::atomic::Ordering::SeqCst);
        host.send(KubeletCommand::Reboot).unwrap();
        let mut power = host.power();
        tokio::time::timeout(
            Duration::from_secs(10),
            power.wait_for(|p| matches!(p, PowerState::Up { boot_id } if *boot_id != before)),
        )
        .await
        .unwrap()
        .unwrap();
        // The kubelet's calls after the boot were refused for a while: its status writes
        // (NotReady, then Ready 10 ms later) and several pod syncs.
        let deadline = Instant::now() + Duration::from_secs(5);
        while api.refused.load(std::sync::atomic::Ordering::SeqCst) < refused_before + 12 {
            assert!(
                Instant::now() < deadline,
                "the kubelet wrote nothing after the boot"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(boot_id(&store, &spec.name), before);

        assert_eq!(restarts(), (true, Some(0)));

        api.away.store(false, std::sync::atomic::Ordering::SeqCst);
        let deadline = Instant::now() + Duration::from_secs(5);
        while boot_id(&store, &spec.name) == before || restarts() != (true, Some(1)) {
            assert!(
                Instant::now() < deadline,
                "the new boot id and the pod's restart were never written: {:?}",
                restarts()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        cancel.cancel();
        kubelet.await.unwrap();
    }

    #[test]
    fn readiness_conditions() {
        let c = node_conditions(Readiness::Ready, "t");
        assert_eq!(c[3]["status"], "True");
        assert_eq!(c[0]["status"], "False");
    }
}
