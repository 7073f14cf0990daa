//! Shared set-up of the controller tests: an emulated API server (`rota_sim::apiserver`), the
//! real coordinator talking to it over HTTP, and the agent side driven through the coordinator's
//! agent gate (the same `AgentCore` the gRPC edge calls). The tests play the kubelet through the
//! emulator's store (flip Ready, change boot ids, finish pod deletions).

#![allow(dead_code)]
use rota_core::clock::Clock;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use futures::StreamExt;
use k8s_openapi::api::core::v1::{
    Container, Namespace, Node, NodeCondition, NodeSpec, NodeStatus, NodeSystemInfo, Pod,
    PodCondition, PodSpec, PodStatus,
};
use k8s_openapi::api::events::v1::Event;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference, Time};
use kube::CustomResourceExt;
use rota_coordinator::controller::{Coordinator, Settings};
use rota_coordinator::core_gate::CoreGate;
use rota_coordinator::events::EventSink;
use rota_coordinator::kube_client::Clients;
use rota_coordinator::leader::Leadership;
use rota_coordinator::metrics::Metrics;
use rota_coordinator::notify::Notifier;
use rota_core::agent_api::AgentCore;
use rota_core::model::{FencingToken, NodeFacts, NodePolicy, Operation};
use rota_core::policy::{MaintenancePolicy, MaintenancePolicySpec};
use rota_core::records::MaintenanceRecord;
use rota_core::slots::{Completion, NodeState, SlotView};
use rota_sim::apiserver::{
    ApiServer, DeleteOptions, GroupResource, ListOptions, ResourceKey, ServerConfig, ServerHandle,
    Store,
};
use serde_json::{Value, json};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// Namespace of the coordinator (fencing counter).
pub const SYSTEM_NS: &str = "rota-system";
/// Namespace of the workloads.
pub const NS: &str = "shop";

/// The emulated cluster.
pub struct Cluster {
    pub store: Store,
    pub server: ServerHandle,
}

impl Cluster {
    /// A cluster with the namespaces and the MaintenancePolicy CRD; the disruption controller
    /// runs when `disruption_controller`.
    pub async fn start(disruption_controller: bool) -> Result<Cluster> {
        let store = Store::new();
        let config = ServerConfig {
            disruption_controller,
            ..ServerConfig::default()
        };
        let server = ApiServer::start_with(store.clone(), "127.0.0.1:0".parse()?, config).await?;
        for ns in [SYSTEM_NS, NS] {
            store.create_as(&Namespace {
                metadata: ObjectMeta {
                    name: Some(ns.into()),
                    ..ObjectMeta::default()
                },
                ..Namespace::default()
            })?;
        }
        for crd in [MaintenancePolicy::crd(), MaintenanceRecord::crd()] {
            let crd: CustomResourceDefinition = crd;
            store.create_as(&crd)?;
        }
        Ok(Cluster { store, server })
    }

    /// A kube config for the emulator.
    pub fn kube_config(&self) -> Result<kube::Config> {
        Ok(kube::Config::new(self.server.url().parse()?))
    }

    /// Adds a Ready node with a boot id and kubelet version.
    pub fn add_node(&self, name: &str, labels: &[(&str, &str)]) -> Result<()> {
        self.store.create_as(&Node {
            metadata: ObjectMeta {
                name: Some(name.into()),
                labels: Some(
                    labels
                        .iter()
                        .map(|(k, v)| (k.to_string(), v.to_string()))
                        .collect(),
                ),
                ..ObjectMeta::default()
            },
            spec: Some(NodeSpec::default()),
            status: Some(NodeStatus {
                conditions: Some(vec![NodeCondition {
                    type_: "Ready".into(),
                    status: "True".into(),
                    ..NodeCondition::default()
                }]),
                node_info: Some(NodeSystemInfo {
                    boot_id: format!("{name}-boot-1"),
                    kubelet_version: "v1.33.1".into(),
                    ..NodeSystemInfo::default()
                }),
                ..NodeStatus::default()
            }),
        })?;
        Ok(())
    }

    /// Plays the kubelet: sets the node's Ready condition (reported now).
    pub fn set_ready(&self, node: &str, ready: bool) -> Result<()> {
        let now = Time(self.store.now());
        self.store.modify_status_as::<Node>(None, node, |n| {
            if let Some(conditions) = n.status.as_mut().and_then(|s| s.conditions.as_mut()) {
                for c in conditions.iter_mut().filter(|c| c.type_ == "Ready") {
                    c.last_heartbeat_time = Some(now.clone());
                    c.status = if ready { "True" } else { "False" }.into();
                    c.reason = Some(
                        if ready {
                            "KubeletReady"
                        } else {
                            "NodeStatusUnknown"
                        }
                        .into(),
                    );
                }
            }
        })?;
        Ok(())
    }

    /// Plays the kubelet after a reboot: a new boot id, with a fresh status report.
    pub fn set_boot_id(&self, node: &str, boot_id: &str) -> Result<()> {
        let now = Time(self.store.now());
        self.store.modify_status_as::<Node>(None, node, |n| {
            let Some(status) = n.status.as_mut() else {
                return;
            };
            if let Some(info) = status.node_info.as_mut() {
                info.boot_id = boot_id.into();
            }
            // The kubelet that started reports the node's status at once.
            for c in status.conditions.iter_mut().flatten() {
                c.last_heartbeat_time = Some(now.clone());
            }
        })?;
        Ok(())
    }

    /// Sets or removes a node annotation (as `kubectl annotate` would).
    pub fn annotate(&self, node: &str, key: &str, value: Option<&str>) -> Result<()> {
        self.store.modify_as::<Node>(None, node, |n| {
            let annotations = n.metadata.annotations.get_or_insert_with(BTreeMap::new);
            match value {
                Some(v) => {
                    annotations.insert(key.into(), v.into());
                }
                None => {
                    annotations.remove(key);
                }
            }
        })?;
        Ok(())
    }

    /// A node's annotations.
    pub fn annotations(&self, node: &str) -> Result<BTreeMap<String, String>> {
        let node: Node = self.store.get_as(None, node)?;
        Ok(node.metadata.annotations.unwrap_or_default())
    }

    /// Cordons the node as a human would (`kubectl cordon`: no rota mark).
    pub fn cordon(&self, node: &str) -> Result<()> {
        self.store.modify_as::<Node>(None, node, |n| {
            n.spec.get_or_insert_with(Default::default).unschedulable = Some(true);
        })?;
        Ok(())
    }

    /// Whether the node is cordoned.
    pub fn cordoned(&self, node: &str) -> Result<bool> {
        let node: Node = self.store.get_as(None, node)?;
        Ok(node.spec.and_then(|s| s.unschedulable).unwrap_or(false))
    }

    /// A running, Ready pod of a ReplicaSet on `node`; `grace` seconds to stop (0: deleted at
    /// once on eviction, else it waits for the "kubelet").
    pub fn add_pod(&self, name: &str, node: &str, app: &str, grace: i64) -> Result<()> {
        self.store.create_as(&Pod {
            metadata: ObjectMeta {
                namespace: Some(NS.into()),
                name: Some(name.into()),
                labels: Some(BTreeMap::from([("app".to_string(), app.to_string())])),
                owner_references: Some(vec![OwnerReference {
                    api_version: "apps/v1".into(),
                    kind: "ReplicaSet".into(),
                    name: format!("{app}-rs"),
                    uid: format!("uid-{app}-rs"),
                    controller: Some(true),
                    block_owner_deletion: Some(true),
                }]),
                ..ObjectMeta::default()
            },
            spec: Some(PodSpec {
                node_name: Some(node.into()),
                termination_grace_period_seconds: Some(grace),
                containers: vec![Container {
                    name: "app".into(),
                    image: Some(format!("registry.example/{app}:1")),
                    ..Container::default()
                }],
                ..PodSpec::default()
            }),
            status: Some(PodStatus {
                phase: Some("Running".into()),
                conditions: Some(vec![PodCondition {
                    type_: "Ready".into(),
                    status: "True".into(),
                    ..PodCondition::default()
                }]),
                ..PodStatus::default()
            }),
        })?;
        Ok(())
    }

    /// Plays the kubelet: finishes a pod's deletion.
    pub fn finish_pod(&self, name: &str) -> Result<()> {
        self.store.delete_as::<Pod>(
            Some(NS),
            name,
            &DeleteOptions {
                grace_period_seconds: Some(0),
                ..DeleteOptions::default()
            },
        )?;
        Ok(())
    }

    /// Whether a pod exists.
    pub fn pod_exists(&self, name: &str) -> bool {
        self.store.get_as::<Pod>(Some(NS), name).is_ok()
    }

    /// Whether the pod is being deleted.
    pub fn pod_terminating(&self, name: &str) -> bool {
        self.store
            .get_as::<Pod>(Some(NS), name)
            .is_ok_and(|p| p.metadata.deletion_timestamp.is_some())
    }

    fn policy_key(name: &str) -> ResourceKey {
        ResourceKey::new(
            GroupResource::new("rota.dev", "maintenancepolicies"),
            None,
            name,
        )
    }

    /// Creates a MaintenancePolicy.
    pub fn create_policy(&self, name: &str, spec: MaintenancePolicySpec) -> Result<()> {
        let policy = MaintenancePolicy::new(name, spec);
        self.store.create(
            &GroupResource::new("rota.dev", "maintenancepolicies"),
            None,
            serde_json::to_value(&policy)?,
        )?;
        Ok(())
    }

    /// Changes a policy's spec.
    pub fn update_policy(
        &self,
        name: &str,
        change: impl Fn(&mut MaintenancePolicySpec),
    ) -> Result<()> {
        let mut policy = self.policy(name)?;
        change(&mut policy.spec);
        self.store
            .update(&Self::policy_key(name), serde_json::to_value(&policy)?)?;
        Ok(())
    }

    /// A policy as stored.
    pub fn policy(&self, name: &str) -> Result<MaintenancePolicy> {
        let value = self.store.get(&Self::policy_key(name))?;
        Ok(serde_json::from_value((*value).clone())?)
    }

    /// The status condition `type_` of a policy, as `(status, message)`.
    pub fn condition(&self, policy: &str, type_: &str) -> Option<(String, String)> {
        let policy = self.policy(policy).ok()?;
        policy
            .status?
            .conditions
            .into_iter()
            .find(|c| c.type_ == type_)
            .map(|c| (c.status, c.message))
    }

    /// Every Event (events.k8s.io) about `name`, as `(reason, note)`.
    pub fn events_about(&self, name: &str) -> Vec<(String, String)> {
        let events: Vec<Event> = self
            .store
            .list_as(None, &ListOptions::default())
            .unwrap_or_default();
        events
            .into_iter()
            .filter(|e| e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some(name))
            .map(|e| (e.reason.unwrap_or_default(), e.note.unwrap_or_default()))
            .collect()
    }

    /// Waits for an Event with this reason about `name`; returns its note.
    pub async fn wait_event(&self, name: &str, reason: &str, within: Duration) -> Result<String> {
        wait_until(&format!("{reason} event about {name}"), within, || {
            self.events_about(name)
                .into_iter()
                .find(|(r, _)| r == reason)
                .map(|(_, note)| note)
        })
        .await
    }

    /// The node's persisted slot: `(token, phase)`.
    pub fn slot(&self, node: &str) -> Option<(u64, String)> {
        let annotations = self.annotations(node).ok()?;
        let slot: Value = serde_json::from_str(annotations.get("rota.dev/slot")?).ok()?;
        Some((
            slot.get("token")?.as_u64()?,
            slot.get("phase")?.as_str()?.to_owned(),
        ))
    }

    /// The fencing counter.
    pub fn counter(&self) -> Option<u64> {
        let cm: k8s_openapi::api::core::v1::ConfigMap =
            self.store.get_as(Some(SYSTEM_NS), "rota-fencing").ok()?;
        cm.data?.get("lastToken")?.parse().ok()
    }
}

/// Settings for tests: fast passes, a short blocked timeout.
pub fn settings() -> Settings {
    let mut settings = Settings::new(SYSTEM_NS);
    settings.pass_interval = Duration::from_millis(20);
    settings.drain_blocked_timeout = Duration::from_secs(1);
    settings
}

/// A policy spec selecting nodes labelled `pool=<pool>`, one node at a time, no windows.
pub fn spec(pool: &str) -> MaintenancePolicySpec {
    serde_json::from_value(json!({
        "nodeSelector": {"matchLabels": {"pool": pool}},
        "maxUnavailable": 1,
        "maxFailures": 0,
    }))
    .unwrap_or_default()
}

/// A running coordinator and its agent gate.
pub struct Running {
    pub agents: CoreGate,
    pub metrics: Metrics,
    pub notifier: Notifier,
    stop: CancellationToken,
    task: JoinHandle<rota_coordinator::controller::Result<()>>,
}

impl Running {
    /// Starts a coordinator against `cluster`.
    pub async fn start(
        cluster: &Cluster,
        settings: Settings,
        clock: Arc<dyn Clock>,
    ) -> Result<Running> {
        let clients = Clients::from_config(cluster.kube_config()?)?;
        Self::start_with(clients, settings, clock).await
    }

    /// Starts a coordinator using `clients`.
    pub async fn start_with(
        clients: Clients,
        settings: Settings,
        clock: Arc<dyn Clock>,
    ) -> Result<Running> {
        Self::start_notifying(clients, settings, clock, Notifier::disabled()).await
    }

    /// Starts a coordinator using `clients` that notifies through `notifier`.
    pub async fn start_notifying(
        clients: Clients,
        settings: Settings,
        clock: Arc<dyn Clock>,
        notifier: Notifier,
    ) -> Result<Running> {
        let events = EventSink::new(clients.default.clone(), "rota-coordinator-test");
        let agents = CoreGate::new();
        let metrics = Metrics::new();
        let coordinator = Coordinator::new(
            clients,
            settings,
            events,
            metrics.clone(),
            Leadership::unconditional(),
            agents.clone(),
        )
        .with_clock(clock)
        .with_notifier(notifier.clone());
        let stop = CancellationToken::new();
        let task = tokio::spawn(coordinator.run(stop.clone()));
        Ok(Running {
            agents,
            metrics,
            notifier,
            stop,
            task,
        })
    }

    /// Stops it and waits until it has stopped.
    pub async fn stop(self) -> Result<()> {
        self.stop.cancel();
        self.task.await??;
        Ok(())
    }

    /// The agent of `node` reports facts with this boot id (retrying until the coordinator
    /// serves agents); returns the node's policy as the coordinator answers.
    pub async fn report(&self, node: &str, boot_id: &str) -> Result<Option<NodePolicy>> {
        let facts = NodeFacts {
            boot_id: boot_id.into(),
            kubelet_version: "v1.33.1".into(),
            ..NodeFacts::default()
        };
        self.report_facts(node, facts).await
    }

    /// The agent of `node` reports `facts` (retrying until the coordinator serves agents).
    pub async fn report_facts(&self, node: &str, facts: NodeFacts) -> Result<Option<NodePolicy>> {
        retry(|| async { self.agents.report_facts(node, facts.clone()).await }).await
    }

    /// The agent of `node` asks for a slot.
    pub async fn request(&self, node: &str, operation: Operation) -> Result<SlotView> {
        retry(|| async { self.agents.request_slot(node, operation.clone()).await }).await
    }

    /// Waits until the node's view satisfies `pred`.
    pub async fn wait_view(
        &self,
        node: &str,
        within: Duration,
        pred: impl Fn(&SlotView) -> bool,
    ) -> Result<SlotView> {
        let deadline = Instant::now() + within;
        let mut views = loop {
            match self.agents.watch_slot(node) {
                Ok(views) => break views,
                Err(_) if Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
                Err(e) => bail!("no view of {node}: {e}"),
            }
        };
        let mut last = None;
        let wait = async {
            while let Some(view) = views.next().await {
                if pred(&view) {
                    return Ok(view);
                }
                last = Some(view);
            }
            Err("the view closed")
        };
        let outcome = tokio::time::timeout_at(deadline, wait)
            .await
            .unwrap_or(Err("timed out"));
        outcome.or_else(|why| {
            bail!("{node}: condition not met within {within:?} ({why}); last view: {last:?}")
        })
    }

    /// Waits until the node's slot is granted; returns its token.
    pub async fn wait_granted(&self, node: &str, within: Duration) -> Result<FencingToken> {
        let view = self
            .wait_view(node, within, |v| v.state == NodeState::Granted)
            .await?;
        view.token.context("a granted view carries its token")
    }

    /// The agent reports completion.
    pub async fn complete(
        &self,
        node: &str,
        token: FencingToken,
        success: bool,
        boot_id_after: Option<&str>,
    ) -> Result<SlotView> {
        let completion = Completion {
            success,
            message: String::new(),
            boot_id: boot_id_after.map(str::to_owned),
            rebooted: boot_id_after.is_some(),
            changed: Vec::new(),
        };
        self.complete_with(node, token, completion).await
    }

    /// The agent reports `completion`.
    pub async fn complete_with(
        &self,
        node: &str,
        token: FencingToken,
        completion: Completion,
    ) -> Result<SlotView> {
        retry(|| async { self.agents.complete(node, token, completion.clone()).await }).await
    }
}

/// Retries an agent call while the coordinator is not serving agents yet.
async fn retry<T, F, Fut>(call: F) -> Result<T>
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = rota_core::slots::Result<T>>,
{
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match call().await {
            Ok(value) => return Ok(value),
            Err(e) if Instant::now() < deadline => {
                let unavailable = matches!(
                    e,
                    rota_core::slots::Error::NotLeading
                        | rota_core::slots::Error::Store(_)
                        | rota_core::slots::Error::UnknownNode(_)
                );
                if !unavailable {
                    bail!("agent call refused: {e}");
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            Err(e) => bail!("agent call failed: {e}"),
        }
    }
}

/// Polls `condition` every few milliseconds until it holds or `within` passes.
pub async fn wait_until<T>(
    what: &str,
    within: Duration,
    mut condition: impl FnMut() -> Option<T>,
) -> Result<T> {
    let deadline = Instant::now() + within;
    loop {
        if let Some(value) = condition() {
            return Ok(value);
        }
        if Instant::now() > deadline {
            bail!("{what}: not within {within:?}");
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// A chat webhook that accepts every POST and keeps the message texts.
pub struct Webhook {
    pub url: String,
    texts: Arc<std::sync::Mutex<Vec<String>>>,
    _server: JoinHandle<()>,
}

impl Webhook {
    /// Listens on a free local port.
    pub async fn start() -> Result<Webhook> {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let url = format!("http://{}/hook", listener.local_addr()?);
        let texts = Arc::new(std::sync::Mutex::new(Vec::new()));
        let seen = texts.clone();
        let server = tokio::spawn(async move {
            while let Ok((mut conn, _)) = listener.accept().await {
                let seen = seen.clone();
                tokio::spawn(async move {
                    let mut buf = Vec::new();
                    let mut chunk = [0u8; 4096];
                    loop {
                        let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
                            match conn.read(&mut chunk).await {
                                Ok(0) | Err(_) => return,
                                Ok(n) => buf.extend_from_slice(&chunk[..n]),
                            }
                            continue;
                        };
                        let head = String::from_utf8_lossy(&buf[..end]).to_lowercase();
                        let length = head
                            .lines()
                            .find_map(|l| l.strip_prefix("content-length:"))
                            .and_then(|v| v.trim().parse::<usize>().ok())
                            .unwrap_or(0);
                        while buf.len() < end + 4 + length {
                            match conn.read(&mut chunk).await {
                                Ok(0) | Err(_) => return,
                                Ok(n) => buf.extend_from_slice(&chunk[..n]),
                            }
                        }
                        let body: Vec<u8> = buf.drain(..end + 4 + length).skip(end + 4).collect();
                        if let Ok(message) = serde_json::from_slice::<Value>(&body)
                            && let Some(text) = message.get("text").and_then(Value::as_str)
                        {
                            seen.lock()
                                .unwrap_or_else(std::sync::PoisonError::into_inner)
                                .push(text.to_owned());
                        }
                        let reply = b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n";
                        if conn.write_all(reply).await.is_err() {
                            return;
                        }
                    }
                });
            }
        });
        Ok(Webhook {
            url,
            texts,
            _server: server,
        })
    }

    /// The texts received so far.
    pub fn texts(&self) -> Vec<String> {
        self.texts
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }
}
