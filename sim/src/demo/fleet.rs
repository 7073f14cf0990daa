//! The fleet harness: a whole emulated cluster maintained by rota (or by the kured model), in
//! one process.
//!
//! [`Fleet::start`] starts the emulated API server on `127.0.0.1:0`, the simulated cluster of
//! a seeded [`Scenario`] (kubelets, workload controllers, scheduler, hosts), and then the
//! scheduler under test:
//!
//! - **rota**: the MaintenancePolicy CRD and a policy, N real coordinator replicas (leader
//!   election, controller, gRPC edge with TokenReview and TLS) behind a proxy standing in for
//!   their Service, and the `rota-agent` DaemonSet whose pod on each node runs the real agent
//!   daemon on the node's simulated host, authenticated by a token the emulator issued for
//!   that pod;
//! - **kured**: the `kured` DaemonSet, with the kured model on each node (see
//!   [`super::kured`]).
//!
//! Every coordinator and every node daemon is a [`Process`](super::process) of its own: killing
//! one (`kill_coordinator`, `kill_agent`) drops everything it had in memory and every
//! connection it held. The helpers wait on the store with deadlines.
//!
//! Before the scheduler starts, the fleet starts rota's independent safety monitor
//! ([`rota_monitor`]) against the emulator's HTTP API, like any client — through its own
//! fault-free front of the same store, so that injected API faults blind rota, not the judge.
//! [`Fleet::report`] takes its PDB violations and unavailability peaks from the monitor's
//! verdict, and the rest from the hosts and the emulator's record (see [`super::report`]).

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;
use std::sync::Arc;
use std::time::Duration;

use jiff::Timestamp;
use k8s_openapi::api::core::v1::{Namespace, ServiceAccount};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::CustomResourceExt;
use rota_agent::daemon::machine::UpgradePolicy;
use rota_core::model::SlotPhase;
use rota_core::policy::crd::{BackoffSpec, DrainSpec, HealthSpec, UpgradeMode, UpgradeSpec};
use rota_core::policy::{MaintenancePolicy, MaintenancePolicySpec, Selector};
use rota_core::slots::persist::{REQUEST_ANNOTATION, SLOT_ANNOTATION};
use rota_monitor::{Monitor, MonitorConfig, PoolConfig, Verdict};
use serde_json::{Value, json};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::bound::NodeCycle;
use super::coordinator::{
    self, CoordinatorOptions, Replica, ReplicaAddrs, Routes, SYSTEM_NAMESPACE,
};
use super::kured::{self, KuredOptions, KuredSetup};
use super::nodes::{self, AgentOptions, AgentSetup, DaemonKind, NodeDaemon};
use super::process::HostTokenLog;
use super::progress::{NodeState, NodeView, Snapshot};
use super::record::SlotRecord;
use super::report::{RecordsSummary, Report, ReportInput, Stopped};
use super::zincati::ZincatiSetup;
use super::{Error, Result};
use crate::apiserver::{
    ApiServer, AuditLog, GroupResource, ListOptions, ResourceKey, ServerHandle, Store, meta,
};
use crate::cluster::host::KERNEL_PACKAGE;
use crate::cluster::scenario::{BLOCKED_WORKLOAD, INITIAL_KUBELET, KERNEL_UPDATE, KubernetesSetup};
use crate::cluster::{Cluster, ClusterHandle, Faults, Scenario, Timings};
use rota_core::policy::KubeVersion;

/// The name of the MaintenancePolicy the fleet applies.
pub const POLICY_NAME: &str = "fleet";

/// Which scheduler maintains the fleet.
#[derive(Clone, Debug)]
pub enum Scheduler {
    /// rota: coordinators, agents and a MaintenancePolicy.
    Rota {
        /// The coordinator replicas.
        coordinators: CoordinatorOptions,
        /// The agents.
        agents: AgentOptions,
        /// The policy applied at start (`None`: call [`Fleet::apply_policy`] later).
        policy: Option<Box<MaintenancePolicySpec>>,
        /// More pools, each its own MaintenancePolicy (name, spec) applied at start; their
        /// node selectors and the main policy's should not overlap.
        pools: Vec<(String, MaintenancePolicySpec)>,
    },
    /// The kured model.
    Kured(KuredOptions),
}

impl Scheduler {
    /// rota with the demo's settings for `max_unavailable` nodes at a time.
    pub fn rota(max_unavailable: u32) -> Scheduler {
        Scheduler::Rota {
            coordinators: CoordinatorOptions::default(),
            agents: AgentOptions::default(),
            policy: Some(Box::new(demo_policy(max_unavailable))),
            pools: Vec::new(),
        }
    }

    /// Short name: `rota` or `kured`.
    pub fn name(&self) -> &'static str {
        match self {
            Scheduler::Rota { .. } => "rota",
            Scheduler::Kured(_) => "kured",
        }
    }

    fn upgrade(&self) -> UpgradePolicy {
        match self {
            Scheduler::Rota { agents, .. } => agents.upgrade,
            // unattended-upgrades installs everything before kured looks at the sentinel.
            Scheduler::Kured(_) => UpgradePolicy::All,
        }
    }

    /// Most nodes the scheduler may take down at once, `nodes` being the fleet's nodes: for
    /// rota, the sum over its pools (see [`Scheduler::pool_limits`]), percentages taken of
    /// every node.
    pub fn max_unavailable(&self, nodes: usize) -> usize {
        match self {
            Scheduler::Rota { .. } => self
                .pool_limits(&|_: &LabelSelector| nodes)
                .iter()
                .map(|(_, _, k)| k)
                .sum::<usize>()
                .max(1),
            Scheduler::Kured(options) => options.concurrency.max(1),
        }
    }

    /// Each of rota's policies (the main one first): its name, node selector and most nodes
    /// unavailable at once, a percentage taken of the `pool_size` nodes its selector matches.
    pub fn pool_limits(
        &self,
        pool_size: &dyn Fn(&LabelSelector) -> usize,
    ) -> Vec<(String, LabelSelector, usize)> {
        let Scheduler::Rota { policy, pools, .. } = self else {
            return Vec::new();
        };
        let limit = |spec: &MaintenancePolicySpec| match &spec.max_unavailable {
            Some(IntOrString::Int(n)) => usize::try_from(*n).unwrap_or(1),
            Some(IntOrString::String(p)) => {
                let percent: usize = p.trim_end_matches('%').parse().unwrap_or(0);
                (pool_size(&spec.node_selector) * percent / 100).max(1)
            }
            None => 1,
        };
        policy
            .iter()
            .map(|spec| (POLICY_NAME.to_string(), spec.as_ref()))
            .chain(pools.iter().map(|(name, spec)| (name.clone(), spec)))
            .map(|(name, spec)| (name, spec.node_selector.clone(), limit(spec)))
            .collect()
    }
}

/// The demo's MaintenancePolicy: every node, `max_unavailable` at a time, every upgrade, drains
/// that may delete emptyDir data and bare pods (as kured's do), health checked on the CNI and
/// agent DaemonSets. Durations follow the simulation's scale (1 s stands for 1 min).
pub fn demo_policy(max_unavailable: u32) -> MaintenancePolicySpec {
    MaintenancePolicySpec {
        max_unavailable: Some(IntOrString::Int(
            i32::try_from(max_unavailable).unwrap_or(i32::MAX),
        )),
        upgrade: UpgradeSpec {
            mode: UpgradeMode::All,
            ..UpgradeSpec::default()
        },
        drain: DrainSpec {
            timeout: Some("15s".into()),
            force: true,
            delete_empty_dir_data: true,
            backoff: BackoffSpec {
                initial: Some("1s".into()),
                max: Some("30s".into()),
            },
            ..DrainSpec::default()
        },
        health: HealthSpec {
            ready_timeout: Some("15s".into()),
            required_daemon_sets: vec![
                "kube-system/sim-cni".into(),
                format!("{SYSTEM_NAMESPACE}/rota-agent"),
            ],
        },
        max_failures: 3,
        ..MaintenancePolicySpec::default()
    }
}

/// What to start.
#[derive(Clone, Debug)]
pub struct FleetOptions {
    /// Nodes of the generated cluster.
    pub nodes: usize,
    /// Seed of the generated cluster.
    pub seed: u64,
    /// How long simulated things take.
    pub timings: Timings,
    /// Faults to inject (changeable later through [`Fleet::cluster`]).
    pub faults: Faults,
    /// Keep the scenario's PodDisruptionBudget that allows no disruption (its node can never be
    /// drained). The demo leaves it out; fault tests keep it.
    pub keep_blocked_pdb: bool,
    /// Who maintains the fleet.
    pub scheduler: Scheduler,
    /// How long the cluster may take to settle before the scheduler starts.
    pub settle_timeout: Duration,
    /// Leave the workers only this share of spare CPU (see [`Scenario::tighten_capacity`]).
    pub tight_capacity: Option<f64>,
    /// Deployments (`namespace`, `name`) whose pods take this many (simulated) seconds to stop
    /// (see [`Scenario::slow_down_termination`]).
    pub slow_termination: Vec<(String, String, i64)>,
    /// How many workers (the last ones) are image-based hosts that run Zincati instead of
    /// rota's agent and ask the coordinator's FleetLock endpoint before they reboot, in the
    /// group named after the main policy's pool. rota only.
    pub fleetlock_hosts: usize,
    /// Make the cluster a kubeadm cluster and upgrade its Kubernetes version (see
    /// [`FleetOptions::with_kubernetes_upgrade`]).
    pub kubernetes: Option<KubernetesUpgrade>,
}

/// A node's Kubernetes versions as the API shows them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeVersions {
    /// `status.nodeInfo.kubeletVersion`.
    pub kubelet: String,
    /// Its control-plane mirror pods' image tags, by component (empty on a worker).
    pub control_plane: BTreeMap<String, String>,
}

impl std::fmt::Display for NodeVersions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "kubelet {}", self.kubelet)?;
        for (component, version) in &self.control_plane {
            write!(f, ", {component} {version}")?;
        }
        Ok(())
    }
}

/// A Kubernetes upgrade of the whole fleet: the cluster as `setup` describes it, the policy's
/// `upgrade.kubernetesVersion` at `target`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KubernetesUpgrade {
    /// The cluster's version and package repositories.
    pub setup: KubernetesSetup,
    /// The version every node must reach.
    pub target: KubeVersion,
}

impl KubernetesUpgrade {
    /// How many times each node is maintained: once per minor (one minor at a time), once
    /// for a patch upgrade, never when it is at the target already.
    pub fn steps(&self) -> u32 {
        let from = self.setup.version;
        if self.target <= from {
            0
        } else {
            (self.target.minor - from.minor).max(1)
        }
    }
}

impl FleetOptions {
    /// `nodes` nodes from `seed`, maintained by rota, `max_unavailable` at a time.
    pub fn new(nodes: usize, seed: u64, max_unavailable: u32) -> FleetOptions {
        FleetOptions {
            nodes,
            seed,
            timings: Timings::default(),
            faults: Faults::none(),
            keep_blocked_pdb: false,
            scheduler: Scheduler::rota(max_unavailable),
            settle_timeout: Duration::from_secs(60),
            tight_capacity: None,
            slow_termination: Vec::new(),
            fleetlock_hosts: 0,
            kubernetes: None,
        }
    }

    /// Makes the fleet a kubeadm cluster as `setup` describes it (stacked etcd on every
    /// control-plane node) and has rota upgrade it to `target`: the main policy's
    /// `upgrade.kubernetesVersion`, and no package upgrades (policy and agents), so that what
    /// moves is the Kubernetes upgrade alone.
    pub fn with_kubernetes_upgrade(mut self, setup: KubernetesSetup, target: KubeVersion) -> Self {
        if let Scheduler::Rota { agents, policy, .. } = &mut self.scheduler {
            agents.upgrade = UpgradePolicy::None;
            if let Some(policy) = policy {
                policy.upgrade.mode = UpgradeMode::None;
                policy.upgrade.kubernetes_version = Some(target.to_string());
            }
        }
        self.kubernetes = Some(KubernetesUpgrade { setup, target });
        self
    }

    /// How many maintenances each node should have at the end: once per Kubernetes upgrade
    /// step, else once.
    pub fn expected_maintenances(&self) -> u32 {
        self.kubernetes.as_ref().map_or(1, KubernetesUpgrade::steps)
    }
}

/// What a node must show to count as done.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Expectation {
    kernel: String,
    kubelet: String,
}

/// What each node must show once maintained. The kernel update is installed when the upgrade
/// policy covers it (it is a security update); in a Kubernetes upgrade the kubelet is at the
/// target, else it stays at its version: `kubelet`,
/// `kubeadm` and `kubectl` never move in a package upgrade (rota moves them only through a
/// `KubernetesUpgrade`, and unattended-upgrades is configured the same way), so the kubelet
/// patch some hosts have pending stays pending.
fn expectations(
    scenario: &Scenario,
    upgrade: UpgradePolicy,
    fleetlock: &BTreeSet<String>,
    kubernetes: Option<&KubernetesUpgrade>,
) -> BTreeMap<String, Expectation> {
    let kubelet = match kubernetes {
        Some(k) => format!("v{}", k.target),
        None => format!("v{}", rota_agent::detect::upstream_version(INITIAL_KUBELET)),
    };
    scenario
        .nodes
        .iter()
        .map(|n| {
            // Zincati stages the whole next image, whatever rota's policy says.
            let upgrade = if fleetlock.contains(&n.name) {
                UpgradePolicy::All
            } else {
                upgrade
            };
            let kernel_offered = n.host.available.iter().any(|a| {
                a.name == KERNEL_PACKAGE
                    && !n.host.holds.iter().any(|h| h == KERNEL_PACKAGE)
                    && match upgrade {
                        UpgradePolicy::None => false,
                        UpgradePolicy::Security => a.security,
                        UpgradePolicy::All => true,
                    }
            });
            let kernel = if kernel_offered {
                KERNEL_UPDATE.0.to_string()
            } else {
                n.host.kernel.clone()
            };
            (
                n.name.clone(),
                Expectation {
                    kernel,
                    kubelet: kubelet.clone(),
                },
            )
        })
        .collect()
}

/// Why `node` (as stored) is not done: not Ready, cordoned, not on the expected kernel or
/// kubelet, or the scheduler still holds or queues something for it (`busy`). `None`: done.
fn not_done(node: &Value, expect: &Expectation, busy: bool) -> Option<String> {
    let kernel = meta::str_at(node, "/status/nodeInfo/kernelVersion");
    let kubelet = meta::str_at(node, "/status/nodeInfo/kubeletVersion");
    if !meta::node_ready(node) {
        Some("not Ready".into())
    } else if meta::node_unschedulable(node) {
        Some("cordoned".into())
    } else if kernel != expect.kernel {
        Some(format!("runs kernel {kernel}, not {}", expect.kernel))
    } else if kubelet != expect.kubelet {
        Some(format!("runs kubelet {kubelet}, not {}", expect.kubelet))
    } else if busy {
        Some("maintenance pending".into())
    } else {
        None
    }
}

fn node_done(node: &Value, expect: &Expectation, busy: bool) -> bool {
    not_done(node, expect, busy).is_none()
}

/// The last `count` workers of the scenario: the nodes that run Zincati.
fn fleetlock_nodes(scenario: &Scenario, count: usize) -> BTreeSet<String> {
    let workers: Vec<&String> = scenario
        .nodes
        .iter()
        .filter(|n| !n.control_plane)
        .map(|n| &n.name)
        .collect();
    workers
        .iter()
        .rev()
        .take(count)
        .map(|n| (*n).clone())
        .collect()
}

fn annotation<'a>(node: &'a Value, key: &str) -> Option<&'a str> {
    node.pointer("/metadata/annotations")
        .and_then(|a| a.get(key))
        .and_then(Value::as_str)
}

/// The phase of the node's rota slot, if it holds one.
pub fn slot_phase(node: &Value) -> Option<SlotPhase> {
    let slot: Value = serde_json::from_str(annotation(node, SLOT_ANNOTATION)?).ok()?;
    serde_json::from_value(slot.get("phase")?.clone()).ok()
}

fn daemonset(namespace: &str, name: &str, service_account: &str, image: &str) -> Value {
    json!({
        "apiVersion": "apps/v1",
        "kind": "DaemonSet",
        "metadata": {"name": name, "namespace": namespace, "labels": {"app": name}},
        "spec": {
            "selector": {"matchLabels": {"app": name}},
            "template": {
                "metadata": {"labels": {"app": name}},
                "spec": {
                    "serviceAccountName": service_account,
                    "hostNetwork": true,
                    "hostPID": true,
                    "priorityClassName": "system-node-critical",
                    "tolerations": [{"operator": "Exists"}],
                    "terminationGracePeriodSeconds": 30,
                    "containers": [{
                        "name": name,
                        "image": image,
                        "securityContext": {"privileged": true},
                        "resources": {"requests": {"cpu": "10m", "memory": "32Mi"}},
                    }],
                },
            },
        },
    })
}

fn create_namespace(store: &Store, name: &str) -> Result<()> {
    match store.create_as(&Namespace {
        metadata: ObjectMeta {
            name: Some(name.into()),
            ..ObjectMeta::default()
        },
        ..Namespace::default()
    }) {
        Ok(_) => Ok(()),
        Err(e) if e.code() == 409 => Ok(()),
        Err(e) => Err(e.into()),
    }
}

fn create_service_account(store: &Store, namespace: &str, name: &str) -> Result<()> {
    match store.create_as(&ServiceAccount {
        metadata: ObjectMeta {
            name: Some(name.into()),
            namespace: Some(namespace.into()),
            ..ObjectMeta::default()
        },
        ..ServiceAccount::default()
    }) {
        Ok(_) => Ok(()),
        Err(e) if e.code() == 409 => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// A running fleet. [`Fleet::shutdown`] stops it; dropping it stops the harness's tasks too.
pub struct Fleet {
    options: FleetOptions,
    scenario: Scenario,
    store: Store,
    server: Option<ServerHandle>,
    /// A second HTTP front of the same store, with no injected faults, that only the safety
    /// monitor uses: the observer must not lose sight of the cluster through the faults the
    /// system under test is put through (errors, latency, dropped watches).
    observer_server: Option<ServerHandle>,
    cluster: Option<ClusterHandle>,
    cancel: CancellationToken,
    tasks: Vec<JoinHandle<()>>,
    /// The node daemons: cancelled first at shutdown, so no agent sees its coordinator vanish.
    daemon_cancel: CancellationToken,
    daemon_tasks: Vec<JoinHandle<()>>,
    routes: watch::Receiver<Routes>,
    service: Option<std::net::SocketAddr>,
    replicas: Vec<Replica>,
    daemons: BTreeMap<String, NodeDaemon>,
    slot_record: SlotRecord,
    host_tokens: HostTokenLog,
    expectations: BTreeMap<String, Expectation>,
    /// The image-based nodes that run Zincati instead of rota's agent.
    fleetlock_nodes: BTreeSet<String>,
    zincati: Option<Arc<ZincatiSetup>>,
    /// Whether the coordinators serve FleetLock over TLS.
    fleetlock_tls: bool,
    rollout_started: Option<Timestamp>,
    /// Each rebooting node's intrinsic cycle, from the settled cluster before the rollout.
    intrinsic_cycles: Vec<NodeCycle>,
    kured: Option<Arc<KuredSetup>>,
    /// The independent safety monitor, started before the scheduler.
    monitor: Option<Monitor>,
    /// Holds the agents' token files.
    workdir: tempfile::TempDir,
}

impl std::fmt::Debug for Fleet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Fleet")
            .field("scheduler", &self.options.scheduler.name())
            .field("nodes", &self.options.nodes)
            .field("seed", &self.options.seed)
            .finish_non_exhaustive()
    }
}

impl Fleet {
    /// Starts everything `options` describes (see the module docs). Must run inside a
    /// multi-threaded Tokio runtime.
    pub async fn start(options: FleetOptions) -> Result<Fleet> {
        let store = Store::new();
        let server = ApiServer::start(store.clone(), (Ipv4Addr::LOCALHOST, 0).into()).await?;
        let mut scenario = Scenario::generate(options.nodes, options.seed);
        if let Some(kubernetes) = &options.kubernetes {
            scenario.with_kubernetes(&kubernetes.setup);
        }
        if !options.keep_blocked_pdb {
            remove_blocked_workload(&mut scenario);
        }
        if let Some(headroom) = options.tight_capacity {
            scenario.tighten_capacity(headroom);
        }
        for (namespace, name, seconds) in &options.slow_termination {
            if !scenario.slow_down_termination(namespace, name, *seconds) {
                return Err(Error::Invalid(format!(
                    "no Deployment {namespace}/{name} to slow down"
                )));
            }
        }
        let fleetlock = fleetlock_nodes(&scenario, options.fleetlock_hosts);
        let mut cluster = Cluster::start(
            store.clone(),
            &scenario,
            options.timings.clone(),
            options.faults.clone(),
        )?;
        cluster.drive_api_faults(server.faults().clone());
        cluster.wait_settled(options.settle_timeout).await?;
        let expectations = expectations(
            &scenario,
            options.scheduler.upgrade(),
            &fleetlock,
            options.kubernetes.as_ref(),
        );
        let intrinsic_cycles = intrinsic_cycles(&store, &scenario, &expectations, &options.timings);
        let observer_server =
            ApiServer::start(store.clone(), (Ipv4Addr::LOCALHOST, 0).into()).await?;
        let monitor = start_monitor(&observer_server.url(), &options).await?;

        let cancel = CancellationToken::new();
        let (slot_record, record_task) = SlotRecord::start(&store, cancel.clone());
        let workdir = tempfile::tempdir()?;
        let (_, idle_routes) = watch::channel(Routes::default());
        let mut fleet = Fleet {
            expectations,
            fleetlock_nodes: fleetlock,
            zincati: None,
            fleetlock_tls: false,
            options,
            scenario,
            store,
            server: Some(server),
            observer_server: Some(observer_server),
            cluster: Some(cluster),
            cancel: cancel.clone(),
            tasks: vec![record_task],
            daemon_cancel: cancel.child_token(),
            daemon_tasks: Vec::new(),
            routes: idle_routes,
            service: None,
            replicas: Vec::new(),
            daemons: BTreeMap::new(),
            slot_record,
            host_tokens: HostTokenLog::default(),
            rollout_started: None,
            intrinsic_cycles,
            kured: None,
            monitor: Some(monitor),
            workdir,
        };
        match fleet.options.scheduler.clone() {
            Scheduler::Rota {
                coordinators,
                agents,
                policy,
                pools,
            } => {
                fleet
                    .start_rota(coordinators, agents, policy, pools)
                    .await?
            }
            Scheduler::Kured(kured) => fleet.start_kured(kured)?,
        }
        Ok(fleet)
    }

    async fn start_rota(
        &mut self,
        coordinators: CoordinatorOptions,
        agents: AgentOptions,
        policy: Option<Box<MaintenancePolicySpec>>,
        pools: Vec<(String, MaintenancePolicySpec)>,
    ) -> Result<()> {
        let store = self.store.clone();
        create_namespace(&store, SYSTEM_NAMESPACE)?;
        create_service_account(&store, SYSTEM_NAMESPACE, coordinator::AGENT_SERVICE_ACCOUNT)?;
        store.create_as(&MaintenancePolicy::crd())?;
        store.create_as(&rota_core::records::MaintenanceRecord::crd())?;
        if let Some(spec) = policy {
            self.apply_policy(*spec)?;
        }
        for (name, spec) in pools {
            self.apply_named_policy(&name, spec)?;
        }

        let mut coordinators = coordinators;
        let fleetlock_token = if self.fleetlock_nodes.is_empty() {
            None
        } else {
            // The group's token: the caller's, or a new one.
            let dir = coordinators
                .fleetlock_tokens
                .clone()
                .unwrap_or_else(|| self.workdir.path().join("fleetlock-tokens"));
            std::fs::create_dir_all(&dir)?;
            let file = dir.join(POLICY_NAME);
            let token = match std::fs::read_to_string(&file) {
                Ok(token) => token.trim().to_owned(),
                Err(_) => {
                    let token = format!("zincati-{:016x}", rand::random::<u64>());
                    std::fs::write(&file, format!("{token}\n"))?;
                    token
                }
            };
            coordinators.fleetlock_tokens = Some(dir);
            Some(token)
        };
        self.fleetlock_tls = coordinators.tls;
        let api_url = self.api_url()?;
        let url = api_url
            .parse()
            .map_err(|e| Error::Invalid(format!("API server URL {api_url}: {e}")))?;
        let started =
            coordinator::start_replicas(kube::Config::new(url), &coordinators, &self.cancel)
                .await?;
        let service = started.service;
        self.service = Some(service);
        self.routes = started.routes;
        self.replicas = started.replicas;
        self.tasks.extend(started.tasks);
        // The agents' DaemonSet goes in once a coordinator leads (deployed in that order, the
        // agents do not start by retrying against nobody).
        let mut leading = self.routes.clone();
        tokio::time::timeout(
            self.options.settle_timeout,
            leading.wait_for(|r| r.leader().is_some()),
        )
        .await
        .map_err(|_| Error::Coordinator("no coordinator replica became the leader".into()))?
        .map_err(|_| Error::Stopped)?;
        let setup = Arc::new(AgentSetup {
            store: store.clone(),
            coordinator: service,
            tls: coordinators.tls,
            options: agents,
            token_dir: self.workdir.path().to_path_buf(),
            tokens: self.host_tokens.clone(),
        });
        if let Some(token) = fleetlock_token {
            self.zincati = Some(Arc::new(ZincatiSetup {
                routes: self.routes.clone(),
                group: POLICY_NAME.to_owned(),
                token,
                tls: coordinators.tls,
                store: store.clone(),
                retry: Duration::from_millis(250),
            }));
        }
        self.start_daemons(DaemonKind::RotaAgent(setup))?;
        Ok(())
    }

    fn start_kured(&mut self, options: KuredOptions) -> Result<()> {
        // Before kured looks: unattended-upgrades installed every pending update on every host,
        // leaving the reboot sentinel behind (it does not coordinate with anyone).
        for host in self.cluster()?.hosts().values() {
            kured::unattended_upgrade(host)?;
        }
        let setup = Arc::new(KuredSetup::new(
            self.store.clone(),
            self.api_url()?,
            options,
        ));
        self.kured = Some(setup.clone());
        self.start_daemons(DaemonKind::Kured(setup))?;
        Ok(())
    }

    /// Creates the daemon's DaemonSet and one supervisor per node.
    fn start_daemons(&mut self, kind: DaemonKind) -> Result<()> {
        let (namespace, name) = kind.daemonset();
        let store = self.store.clone();
        create_namespace(&store, namespace)?;
        create_service_account(&store, namespace, name)?;
        let image = format!("registry.local/{name}:sim");
        let mut ds = daemonset(namespace, name, name, &image);
        if let DaemonKind::Kured(setup) = &kind {
            ds["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] = json!(0);
            setup.prepare(&mut ds);
        }
        store.create(
            &GroupResource::new("apps", "daemonsets"),
            Some(namespace),
            ds,
        )?;
        if matches!(kind, DaemonKind::Kured(_)) {
            self.rollout_started = Some(store.now());
        }
        let hosts = self.cluster()?.hosts().clone();
        for (node, host) in hosts {
            let kind = match &self.zincati {
                Some(zincati) if self.fleetlock_nodes.contains(&node) => {
                    DaemonKind::Zincati(zincati.clone())
                }
                _ => kind.clone(),
            };
            let (daemon, task) =
                nodes::start_daemon(node.clone(), host, kind, self.daemon_cancel.clone());
            self.daemons.insert(node, daemon);
            self.daemon_tasks.push(task);
        }
        Ok(())
    }

    /// Creates (or replaces the spec of) the fleet's MaintenancePolicy; the rollout starts now.
    pub fn apply_policy(&mut self, spec: MaintenancePolicySpec) -> Result<()> {
        self.apply_named_policy(POLICY_NAME, spec)
    }

    /// Creates (or replaces the spec of) the MaintenancePolicy `name`; the rollout starts now.
    pub fn apply_named_policy(&mut self, name: &str, spec: MaintenancePolicySpec) -> Result<()> {
        let resource = GroupResource::new("rota.dev", "maintenancepolicies");
        let key = ResourceKey::new(resource.clone(), None, name);
        match self.store.get(&key) {
            Ok(existing) => {
                let mut updated = (*existing).clone();
                updated["spec"] = serde_json::to_value(&spec)
                    .map_err(|e| Error::Invalid(format!("policy: {e}")))?;
                self.store.update(&key, updated)?;
            }
            Err(_) => {
                let policy = serde_json::to_value(MaintenancePolicy::new(name, spec))
                    .map_err(|e| Error::Invalid(format!("policy: {e}")))?;
                self.store.create(&resource, None, policy)?;
            }
        }
        self.rollout_started.get_or_insert(self.store.now());
        Ok(())
    }

    /// Each of rota's policies (the main one first): its name, node selector and the most
    /// nodes it may take down at once (a percentage taken of the scenario's nodes it selects).
    pub fn pools(&self) -> Vec<(String, LabelSelector, usize)> {
        let size = |selector: &LabelSelector| match Selector::parse(selector) {
            Ok(selector) => self
                .scenario
                .nodes
                .iter()
                .filter(|n| selector.matches(&n.labels))
                .count(),
            Err(_) => 0,
        };
        self.options.scheduler.pool_limits(&size)
    }

    /// Each of rota's policies by name, with the most nodes it may take down at once.
    pub fn pool_limits(&self) -> BTreeMap<String, usize> {
        self.pools()
            .into_iter()
            .map(|(name, _, limit)| (name, limit))
            .collect()
    }

    /// The in-process store of the emulated API server.
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// The simulated cluster (hosts, faults, `power_on`, ...).
    pub fn cluster(&self) -> Result<&ClusterHandle> {
        self.cluster.as_ref().ok_or(Error::Stopped)
    }

    /// The emulated API server (its address, its HTTP fault controls).
    pub fn server(&self) -> Result<&ServerHandle> {
        self.server.as_ref().ok_or(Error::Stopped)
    }

    /// The API server's URL.
    pub fn api_url(&self) -> Result<String> {
        Ok(self.server()?.url())
    }

    /// The scenario the cluster was generated from (without the blocked workload unless kept).
    pub fn scenario(&self) -> &Scenario {
        &self.scenario
    }

    /// The nodes that run Zincati instead of rota's agent ([`FleetOptions::fleetlock_hosts`]).
    pub fn fleetlock_nodes(&self) -> &BTreeSet<String> {
        &self.fleetlock_nodes
    }

    /// Sends a FleetLock request to replica `index`'s endpoint (the leader's when `None`),
    /// as any client would (over TLS when the coordinators serve it): the status and body.
    pub async fn fleetlock_post(
        &self,
        index: Option<usize>,
        path: &str,
        headers: &[(&str, &str)],
        body: &str,
    ) -> Result<(u16, String)> {
        let routes = self.routes.borrow().clone();
        let addr = match index {
            Some(index) => routes.fleetlock_of(index),
            None => routes.fleetlock(),
        }
        .ok_or_else(|| Error::Coordinator("no such FleetLock endpoint".into()))?;
        let tls = if self.fleetlock_tls {
            Some(super::zincati::client_config(&self.store)?)
        } else {
            None
        };
        super::zincati::post(addr, tls, path, headers, body).await
    }

    /// The options the fleet started with.
    pub fn options(&self) -> &FleetOptions {
        &self.options
    }

    /// When the rollout started (policy applied, or kured's DaemonSet created).
    pub fn rollout_started(&self) -> Option<Timestamp> {
        self.rollout_started
    }

    /// The emulator's audit record so far.
    pub fn audit(&self) -> AuditLog {
        self.store.audit()
    }

    /// The safety monitor (until [`Fleet::shutdown`]).
    pub fn monitor(&self) -> Result<&Monitor> {
        self.monitor.as_ref().ok_or(Error::Stopped)
    }

    /// The safety monitor's verdict so far (an empty one once the fleet is shut down).
    pub fn verdict(&self) -> Verdict {
        self.monitor
            .as_ref()
            .map(Monitor::verdict)
            .unwrap_or_default()
    }

    /// The fencing tokens persisted on Nodes so far, as the store saw them.
    pub fn persisted_tokens(&self) -> BTreeMap<u64, BTreeSet<String>> {
        self.slot_record.tokens()
    }

    /// The fencing tokens each node's agent acted with on its host.
    pub fn host_tokens(&self) -> BTreeMap<u64, BTreeSet<String>> {
        self.host_tokens.tokens()
    }

    /// The address the agents reach the coordinators by (their Service), when rota runs.
    pub fn coordinator_address(&self) -> Option<std::net::SocketAddr> {
        self.service
    }

    /// Where coordinator replica `index` listens while it runs: its own gRPC server (not the
    /// Service) and its metrics and probes.
    pub fn coordinator_replica_addrs(&self, index: usize) -> Option<ReplicaAddrs> {
        self.routes.borrow().addrs(index)
    }

    /// Index of the coordinator replica that leads now.
    pub fn leader(&self) -> Option<usize> {
        self.routes.borrow().leader()
    }

    fn replica(&self, index: usize) -> Result<&Replica> {
        self.replicas
            .get(index)
            .ok_or_else(|| Error::Invalid(format!("no coordinator replica {index}")))
    }

    /// Kills coordinator replica `index` like a dying process (nothing graceful runs, its
    /// connections drop) and keeps it down.
    pub async fn kill_coordinator(&self, index: usize) -> Result<()> {
        self.replica(index)?.kill().await
    }

    /// Starts coordinator replica `index` again (killing it first if it runs).
    pub async fn restart_coordinator(&self, index: usize) -> Result<()> {
        self.replica(index)?.restart().await
    }

    fn daemon(&self, node: &str) -> Result<&NodeDaemon> {
        self.daemons
            .get(node)
            .ok_or_else(|| Error::Invalid(format!("no node {node}")))
    }

    /// Kills the agent (or kured daemon) of `node` and keeps it down.
    pub async fn kill_agent(&self, node: &str) -> Result<()> {
        self.daemon(node)?.kill().await
    }

    /// Lets the agent of `node` run again (it starts once its host and pod allow).
    pub async fn restart_agent(&self, node: &str) -> Result<()> {
        self.daemon(node)?.restart().await
    }

    /// Whether the scheduler still holds or queues anything for `node`.
    fn busy(&self, node: &Value) -> bool {
        match &self.kured {
            Some(kured) => kured.holds_lock(meta::name(node)),
            None => {
                annotation(node, SLOT_ANNOTATION).is_some()
                    || annotation(node, REQUEST_ANNOTATION).is_some()
            }
        }
    }

    fn nodes_now(&self) -> Vec<Value> {
        self.store
            .list(&GroupResource::core("nodes"), None, &ListOptions::default())
            .map(|l| l.items.iter().map(|n| (**n).clone()).collect())
            .unwrap_or_default()
    }

    /// The nodes done now: Ready, schedulable, on the new kernel and kubelet, nothing pending.
    pub fn done_nodes(&self) -> BTreeSet<String> {
        self.nodes_now()
            .iter()
            .filter(|n| {
                self.expectations
                    .get(meta::name(n))
                    .is_some_and(|e| node_done(n, e, self.busy(n)))
            })
            .map(|n| meta::name(n).to_string())
            .collect()
    }

    /// Why each node that is not done is not, by node.
    pub fn not_done_reasons(&self) -> BTreeMap<String, String> {
        self.nodes_now()
            .iter()
            .filter_map(|n| {
                let name = meta::name(n).to_string();
                let why = match self.expectations.get(&name) {
                    Some(e) => not_done(n, e, self.busy(n))?,
                    None => "not part of the scenario".into(),
                };
                Some((name, why))
            })
            .collect()
    }

    /// Waits until every node is done.
    pub async fn wait_all_done(&self, timeout: Duration) -> Result<()> {
        let total = self.expectations.len();
        self.wait_for("every node done", timeout, |fleet| {
            let done = fleet.done_nodes().len();
            if done == total {
                Ok(())
            } else {
                Err(format!("{done}/{total} nodes done"))
            }
        })
        .await
    }

    /// Waits until `node` holds a rota slot in `phase`.
    pub async fn wait_node_phase(
        &self,
        node: &str,
        phase: SlotPhase,
        timeout: Duration,
    ) -> Result<()> {
        let key = ResourceKey::new(GroupResource::core("nodes"), None, node);
        self.wait_for(
            &format!("{node} in phase {}", phase.as_str()),
            timeout,
            |fleet| {
                let obj = fleet.store.get(&key).map_err(|e| e.to_string())?;
                match slot_phase(&obj) {
                    Some(p) if p == phase => Ok(()),
                    other => Err(format!("{node} is {other:?}")),
                }
            },
        )
        .await
    }

    /// Waits until `check` returns `Ok`, re-evaluating it after store changes; `Err(reason)`
    /// means "not yet", and the last reason is in the timeout error.
    pub async fn wait_for<T>(
        &self,
        what: &str,
        timeout: Duration,
        mut check: impl FnMut(&Fleet) -> std::result::Result<T, String>,
    ) -> Result<T> {
        Ok(crate::cluster::wait_for(&self.store, what, timeout, |_| check(self)).await?)
    }

    /// Each node's Kubernetes versions now, from the API: the kubelet its Node reports, and the
    /// images of its control-plane mirror pods.
    pub fn kubernetes_versions(&self) -> BTreeMap<String, NodeVersions> {
        let mirror_pods = self
            .store
            .list(
                &GroupResource::core("pods"),
                Some("kube-system"),
                &ListOptions {
                    label_selector: Some("tier=control-plane".into()),
                    ..ListOptions::default()
                },
            )
            .map(|l| l.items)
            .unwrap_or_default();
        self.nodes_now()
            .iter()
            .map(|node| {
                let name = meta::name(node).to_string();
                let control_plane = mirror_pods
                    .iter()
                    .filter(|p| meta::str_at(p, "/spec/nodeName") == name)
                    .map(|p| {
                        let image = meta::str_at(p, "/spec/containers/0/image");
                        let tag = image.rsplit_once(':').map_or(image, |(_, tag)| tag);
                        (
                            meta::str_at(p, "/metadata/labels/component").to_string(),
                            tag.to_string(),
                        )
                    })
                    .collect();
                let versions = NodeVersions {
                    kubelet: meta::str_at(node, "/status/nodeInfo/kubeletVersion").to_string(),
                    control_plane,
                };
                (name, versions)
            })
            .collect()
    }

    /// Reboots plus kubelet restarts each host performed.
    pub fn maintenance_counts(&self) -> BTreeMap<String, u32> {
        let Some(cluster) = &self.cluster else {
            return BTreeMap::new();
        };
        cluster
            .hosts()
            .iter()
            .map(|(node, host)| {
                let memory = host.memory();
                let restarts = memory
                    .events()
                    .iter()
                    .filter(|e| e.trim_end_matches(".service") == "restart kubelet")
                    .count();
                let count = memory.boots().saturating_sub(1) as usize + restarts;
                (node.clone(), u32::try_from(count).unwrap_or(u32::MAX))
            })
            .collect()
    }

    /// What every node is doing now, for the live display.
    pub fn snapshot(&self) -> Snapshot {
        let now = self.store.now();
        let started = self.rollout_started.unwrap_or(now);
        let nodes = self.nodes_now();
        let mut views = Vec::new();
        for node in &nodes {
            let name = meta::name(node).to_string();
            let done = self
                .expectations
                .get(&name)
                .is_some_and(|e| node_done(node, e, self.busy(node)));
            let ready = meta::node_ready(node);
            let (state, detail) = match &self.kured {
                Some(kured) => kured::node_view(kured, node, done, ready),
                None => rota_node_view(node, done, ready),
            };
            views.push(NodeView {
                name,
                state,
                detail,
            });
        }
        let blockers = match &self.kured {
            Some(kured) => kured.blockers(),
            None => self.rota_blockers(),
        };
        let holders = views
            .iter()
            .filter(|v| {
                matches!(
                    v.state,
                    NodeState::Draining
                        | NodeState::Upgrading
                        | NodeState::Rebooting
                        | NodeState::Verifying
                        | NodeState::Failed
                )
            })
            .count();
        let queued = views
            .iter()
            .filter(|v| v.state == NodeState::Queued)
            .count();
        Snapshot {
            scheduler: self.options.scheduler.name().into(),
            elapsed: now.duration_since(started).as_secs_f64().max(0.0),
            slots_in_use: holders,
            max_unavailable: self
                .options
                .scheduler
                .max_unavailable(self.expectations.len()),
            queued,
            unavailable_now: nodes
                .iter()
                .filter(|n| !meta::node_ready(n) || meta::node_unschedulable(n))
                .count(),
            leader: self.leader(),
            nodes: views,
            blockers,
        }
    }

    /// Why queued nodes wait, from the policy's status.
    fn rota_blockers(&self) -> Vec<String> {
        let key = ResourceKey::new(
            GroupResource::new("rota.dev", "maintenancepolicies"),
            None,
            POLICY_NAME,
        );
        let Ok(policy) = self.store.get(&key) else {
            return Vec::new();
        };
        policy
            .pointer("/status/waitingReasons")
            .and_then(Value::as_array)
            .map(|reasons| {
                reasons
                    .iter()
                    .map(|r| {
                        let example = r
                            .get("examples")
                            .and_then(Value::as_object)
                            .and_then(|e| e.iter().next())
                            .map(|(node, why)| format!(" — {node}: {}", why.as_str().unwrap_or("")))
                            .unwrap_or_default();
                        format!(
                            "{} ×{}{example}",
                            meta::str_at(r, "/reason"),
                            r.get("count").and_then(Value::as_i64).unwrap_or(0)
                        )
                    })
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Runs until every node is done, nothing changed for `stall`, or `deadline` passed;
    /// `on_tick` sees a snapshot every `tick`.
    pub async fn run_to_end(
        &self,
        deadline: Duration,
        stall: Duration,
        tick: Duration,
        mut on_tick: impl FnMut(&Snapshot),
    ) -> Stopped {
        let give_up = tokio::time::Instant::now() + deadline;
        let mut last_change = tokio::time::Instant::now();
        let mut last: Option<Vec<(String, NodeState)>> = None;
        let mut ticker = tokio::time::interval(tick);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticker.tick().await;
            let snapshot = self.snapshot();
            on_tick(&snapshot);
            if snapshot.nodes.iter().all(|n| n.state == NodeState::Done)
                && snapshot.nodes.len() == self.expectations.len()
            {
                return Stopped::AllDone;
            }
            let states: Vec<(String, NodeState)> = snapshot
                .nodes
                .iter()
                .map(|n| (n.name.clone(), n.state))
                .collect();
            let now = tokio::time::Instant::now();
            if last.as_ref() != Some(&states) {
                last = Some(states);
                last_change = now;
            } else if now.duration_since(last_change) >= stall {
                return Stopped::Stalled;
            }
            if now >= give_up {
                return Stopped::Deadline;
            }
        }
    }

    /// The report of the rollout so far: safety from the monitor's verdict, the rest from the
    /// emulator's record and the hosts.
    pub fn report(&self, stopped: Stopped) -> Report {
        let audit = self.store.audit();
        let verdict = self.verdict();
        let started = self.rollout_started.unwrap_or_else(|| self.store.now());
        let rota = self.kured.is_none();
        let input = ReportInput {
            scheduler: self.options.scheduler.name(),
            seed: self.options.seed,
            nodes: self.expectations.keys().cloned().collect(),
            max_unavailable: self
                .options
                .scheduler
                .max_unavailable(self.expectations.len()),
            pool_limits: self.pool_limits(),
            control_plane: self.scenario.control_plane_names().into_iter().collect(),
            audit: &audit,
            verdict: &verdict,
            maintenance_counts: self.maintenance_counts(),
            expected_maintenances: self.options.expected_maintenances(),
            kubernetes_versions: if self.options.kubernetes.is_some() {
                self.kubernetes_versions()
                    .into_iter()
                    .map(|(node, v)| (node, v.to_string()))
                    .collect()
            } else {
                BTreeMap::new()
            },
            done: self.done_nodes(),
            reasons: self.not_done_reasons(),
            started,
            ended: self.store.now(),
            stopped,
            intrinsic_cycles: &self.intrinsic_cycles,
            api_tokens: rota.then(|| (self.slot_record.tokens(), !self.slot_record.incomplete())),
            host_tokens: rota.then(|| self.host_tokens.tokens()),
        };
        let report = Report::compute(&input);
        if rota {
            let records = self.maintenance_records();
            // The cluster's every record is this rollout's, also those admitted before the
            // rollout's start was noticed.
            let since = records
                .iter()
                .filter_map(|r| r.phases.admitted.as_ref().map(|t| t.0))
                .min()
                .map_or(started, |first| first.min(started));
            report.with_records(RecordsSummary::of(
                &records,
                &self.host_tokens.tokens(),
                since,
                input.ended,
            ))
        } else {
            report
        }
    }

    /// Waits (up to `timeout`) until the records are settled: none in progress, and every
    /// maintenance the agents performed recorded. Records are written by a task of the
    /// leader after each transition, so the last ones may trail the rollout by a moment.
    pub async fn wait_records_settled(&self, timeout: Duration) -> Result<()> {
        self.wait_for("maintenance records settled", timeout, |fleet| {
            let records = fleet.maintenance_records();
            let open = records
                .iter()
                .filter(|r| r.outcome == rota_core::records::RecordOutcome::InProgress)
                .count();
            let summary = RecordsSummary::of(
                &records,
                &fleet.host_tokens(),
                Timestamp::MIN,
                Timestamp::MIN,
            );
            if open == 0 && summary.maintenances_without_record.is_empty() {
                Ok(())
            } else {
                Err(format!(
                    "{open} records in progress; {:?}",
                    summary.maintenances_without_record
                ))
            }
        })
        .await
    }

    /// Every MaintenanceRecord the coordinators wrote.
    pub fn maintenance_records(&self) -> Vec<rota_core::records::MaintenanceRecordSpec> {
        let resource = GroupResource::new("rota.dev", "maintenancerecords");
        self.store
            .list(&resource, None, &ListOptions::default())
            .map(|list| {
                list.items
                    .iter()
                    .filter_map(|v| {
                        serde_json::from_value::<rota_core::records::MaintenanceRecord>(
                            (**v).clone(),
                        )
                        .ok()
                    })
                    .map(|r| r.spec)
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Stops every process, the cluster and the API server.
    pub async fn shutdown(mut self) {
        if let Some(monitor) = self.monitor.take() {
            monitor.stop().await;
        }
        self.daemon_cancel.cancel();
        for task in std::mem::take(&mut self.daemon_tasks) {
            let _ = task.await;
        }
        self.cancel.cancel();
        for task in std::mem::take(&mut self.tasks) {
            let _ = task.await;
        }
        if let Some(cluster) = self.cluster.take() {
            cluster.shutdown().await;
        }
        for server in [self.server.take(), self.observer_server.take()]
            .into_iter()
            .flatten()
        {
            server.shutdown().await;
        }
    }
}

impl Drop for Fleet {
    fn drop(&mut self) {
        self.cancel.cancel();
    }
}

/// Starts the safety monitor against the API server at `url`, counting each policy's nodes as
/// one pool.
async fn start_monitor(url: &str, options: &FleetOptions) -> Result<Monitor> {
    let url = url
        .parse()
        .map_err(|e| Error::Invalid(format!("API server URL {url}: {e}")))?;
    let client = kube::Client::try_from(kube::Config::new(url))?;
    let pools = options
        .scheduler
        .pool_limits(&|_: &LabelSelector| 0)
        .into_iter()
        .map(|(name, selector, _)| PoolConfig { name, selector })
        .collect();
    Ok(Monitor::start(
        client,
        MonitorConfig {
            pools,
            initial_sync_timeout: options.settle_timeout,
        },
    )
    .await?)
}

/// The intrinsic cycle ([`Timings::node_cycle`]) of every node that must reboot (its expected
/// kernel is not the one it runs), from the pods bound to it now.
fn intrinsic_cycles(
    store: &Store,
    scenario: &Scenario,
    expectations: &BTreeMap<String, Expectation>,
    timings: &Timings,
) -> Vec<NodeCycle> {
    let pods = store
        .list(&GroupResource::core("pods"), None, &ListOptions::default())
        .map(|l| l.items)
        .unwrap_or_default();
    scenario
        .nodes
        .iter()
        .filter(|n| {
            expectations
                .get(&n.name)
                .is_some_and(|e| e.kernel != n.host.kernel)
        })
        .map(|n| {
            let on_node = pods
                .iter()
                .filter(|p| meta::str_at(p, "/spec/nodeName") == n.name)
                .map(|p| &**p);
            NodeCycle::new(&n.name, n.control_plane, timings.node_cycle(on_node))
        })
        .collect()
}

/// The scenario without its workload whose PodDisruptionBudget allows no disruption.
pub fn remove_blocked_workload(scenario: &mut Scenario) {
    scenario
        .deployments
        .retain(|d| meta::name(d) != BLOCKED_WORKLOAD);
    scenario.pdbs.retain(|p| meta::name(p) != BLOCKED_WORKLOAD);
    scenario
        .expected_pdbs
        .retain(|p| p.name != BLOCKED_WORKLOAD);
    scenario.blocked_node = None;
}

fn rota_node_view(node: &Value, done: bool, ready: bool) -> (NodeState, String) {
    if done {
        return (NodeState::Done, String::new());
    }
    let phase = slot_phase(node);
    let state = match phase {
        Some(SlotPhase::Failed) => NodeState::Failed,
        _ if !ready => NodeState::Rebooting,
        Some(SlotPhase::Draining) => NodeState::Draining,
        Some(SlotPhase::Granted) => NodeState::Upgrading,
        Some(SlotPhase::Verifying) => NodeState::Verifying,
        None if annotation(node, REQUEST_ANNOTATION).is_some() => NodeState::Queued,
        None => NodeState::Idle,
    };
    let detail = annotation(node, SLOT_ANNOTATION)
        .and_then(|s| serde_json::from_str::<Value>(s).ok())
        .and_then(|s| {
            s.pointer("/progress/step")
                .and_then(Value::as_str)
                .map(str::to_string)
        })
        .unwrap_or_default();
    (state, detail)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_demo_policy_is_valid() {
        let spec = demo_policy(3);
        rota_core::policy::validate(&spec).unwrap();
        assert_eq!(Scheduler::rota(3).max_unavailable(24), 3);
    }

    #[test]
    fn expectations_follow_the_offered_updates() {
        let scenario = Scenario::generate(6, 3);
        let all = expectations(&scenario, UpgradePolicy::All, &BTreeSet::new(), None);
        let none = expectations(&scenario, UpgradePolicy::None, &BTreeSet::new(), None);
        for node in &scenario.nodes {
            assert_eq!(all[&node.name].kernel, KERNEL_UPDATE.0);
            assert_eq!(all[&node.name].kubelet, "v1.33.0");
            assert_eq!(none[&node.name].kernel, node.host.kernel);
        }
    }

    #[test]
    fn a_node_is_done_when_ready_uncordoned_and_updated() {
        let expect = Expectation {
            kernel: "k2".into(),
            kubelet: "v1.33.1".into(),
        };
        let node = |kernel: &str, cordoned: bool| {
            json!({
                "metadata": {"name": "n"},
                "spec": {"unschedulable": cordoned},
                "status": {
                    "conditions": [{"type": "Ready", "status": "True"}],
                    "nodeInfo": {"kernelVersion": kernel, "kubeletVersion": "v1.33.1"},
                },
            })
        };
        assert!(node_done(&node("k2", false), &expect, false));
        assert!(!node_done(&node("k2", false), &expect, true));
        assert!(!node_done(&node("k1", false), &expect, false));
        assert!(!node_done(&node("k2", true), &expect, false));
    }
}
