//! Seeded scenarios: the same seed gives the same cluster.
//!
//! [`Scenario::generate`] builds N nodes (three control-plane nodes from six nodes on, else
//! one; the rest workers; spread over three zones) and a realistic mix of workloads: two
//! DaemonSets on every node (a CNI and a log agent), Deployments with PodDisruptionBudgets of
//! every shape (`maxUnavailable: 1`, `minAvailable: N-1`, percentages, none), some with
//! `emptyDir` volumes, StatefulSets with PDBs, bare pods, and exactly one PDB that allows no
//! disruption, whose only pod is pinned to one worker ([`Scenario::blocked_node`]). Every host
//! has a kernel update pending (reboot required after install); some a kubelet patch, a
//! container runtime update, security and ordinary updates, a held package.
//!
//! Objects are API objects in JSON, as the store keeps them.

use rota_core::scheduler::ControlPlanePod;
use std::collections::BTreeMap;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{Value, json};

use super::host::{CONTAINERD_PACKAGE, KERNEL_PACKAGE, KUBELET_PACKAGE};
use super::kubeadm::{
    ControlPlaneHost, EtcdLayout, KUBERNETES_PACKAGES, KubernetesSources, PACKAGES_BASE,
};
use crate::apiserver::meta;
use rota_core::policy::KubeVersion;

/// The zones nodes are spread over.
pub const ZONES: [&str; 3] = ["zone-a", "zone-b", "zone-c"];
/// The region label of every node.
pub const REGION: &str = "sim-1";
/// The kubelet version every node starts with.
pub const INITIAL_KUBELET: &str = "1.33.0-1.1";
/// The kubelet patch some nodes have pending (it is the API server's version, so the version
/// skew policy allows it).
pub const KUBELET_PATCH: &str = "1.33.1-1.1";
/// The kernel every node runs at first, and its metapackage version.
pub const INITIAL_KERNEL: (&str, &str) = ("6.1.0-28-amd64", "6.1.119-1");
/// The kernel update every node has pending, and its metapackage version.
pub const KERNEL_UPDATE: (&str, &str) = ("6.1.0-31-amd64", "6.1.129-1");
/// The label of a control-plane node.
pub const CONTROL_PLANE_LABEL: &str = "node-role.kubernetes.io/control-plane";
/// The zone label.
pub const ZONE_LABEL: &str = "topology.kubernetes.io/zone";
/// The Deployment (in namespace `legacy`) whose PodDisruptionBudget allows no disruption.
pub const BLOCKED_WORKLOAD: &str = "license-server";
/// The hostname label.
pub const HOSTNAME_LABEL: &str = "kubernetes.io/hostname";
/// A node's allocatable CPU unless [`Scenario::tighten_capacity`] lowered it (4 cores less
/// what kubeadm reserves).
pub const DEFAULT_ALLOCATABLE_CPU: &str = "3800m";
/// A node's allocatable memory.
pub const DEFAULT_ALLOCATABLE_MEMORY: &str = "15862584Ki";
/// Added to the seed for the draws of pod start-up and termination times, so that they leave
/// the rest of a seed's scenario as it was before they existed.
const TIMING_SEED: u64 = 0x7469_6d69_6e67;

const DEBIAN_OS_RELEASE: &str = "PRETTY_NAME=\"Debian GNU/Linux 12 (bookworm)\"\nNAME=\"Debian GNU/Linux\"\nVERSION_ID=\"12\"\nVERSION=\"12 (bookworm)\"\nVERSION_CODENAME=bookworm\nID=debian\n";

/// A package version the repositories offer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AvailablePackage {
    /// Package name.
    pub name: String,
    /// Version.
    pub version: String,
    /// From a security source.
    pub security: bool,
}

/// The host under a node.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HostSpec {
    /// Content of `/etc/os-release`.
    pub os_release: String,
    /// The running kernel release.
    pub kernel: String,
    /// Installed packages and versions.
    pub installed: BTreeMap<String, String>,
    /// Newer versions the repositories offer.
    pub available: Vec<AvailablePackage>,
    /// Held packages.
    pub holds: Vec<String>,
    /// Kernel metapackage version → the kernel release it installs.
    pub kernel_releases: BTreeMap<String, String>,
    /// `/etc/machine-id`.
    pub machine_id: String,
    /// A kubeadm control-plane host's static pods and etcd (`None`: a worker).
    pub control_plane: Option<ControlPlaneHost>,
    /// The Kubernetes package repositories the host installs kubeadm, kubelet and kubectl
    /// from (`None`: they are in [`HostSpec::available`] like any package).
    pub kubernetes: Option<KubernetesSources>,
}

/// One node.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeSpec {
    /// Node (and host) name.
    pub name: String,
    /// Its zone.
    pub zone: String,
    /// Whether it is a control-plane node.
    pub control_plane: bool,
    /// Node labels.
    pub labels: BTreeMap<String, String>,
    /// Node taints (JSON `Taint`s).
    pub taints: Vec<Value>,
    /// `InternalIP` address.
    pub internal_ip: String,
    /// Pod CIDR (`/24`); pod IPs come from it.
    pub pod_cidr: String,
    /// `nodeInfo.systemUUID`.
    pub system_uuid: String,
    /// Allocatable CPU (a quantity: `3800m`) the scheduler fits requests into.
    pub allocatable_cpu: String,
    /// Allocatable memory (a quantity: `15862584Ki`).
    pub allocatable_memory: String,
    /// The host.
    pub host: HostSpec,
}

/// What a PodDisruptionBudget's `disruptionsAllowed` settles to once every pod runs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PdbExpectation {
    /// Namespace.
    pub namespace: String,
    /// PDB name.
    pub name: String,
    /// Expected `status.disruptionsAllowed`.
    pub disruptions_allowed: i32,
}

/// How a workload's pods start and stop, drawn per workload: the simulated kubelet reads them
/// from the pod spec (see [`Timings::pod_start_time`](super::Timings::pod_start_time) and
/// [`Timings::pod_stop_time`](super::Timings::pod_stop_time)), so a drain of a node with a
/// slow workload is slow.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PodTiming {
    /// The readiness probe's `initialDelaySeconds` (0: no probe).
    pub readiness_delay: i64,
    /// The `preStop` hook's sleep in seconds (0: no hook): how long the pod takes to stop.
    pub pre_stop: i64,
    /// `terminationGracePeriodSeconds`.
    pub grace: i64,
}

impl PodTiming {
    /// A stateless workload's: most start within seconds and stop at once; some have a slow
    /// readiness probe (a JVM warming up), some drain connections for a long time.
    fn stateless(rng: &mut StdRng, grace: i64) -> PodTiming {
        let readiness_delay = match rng.random_range(0..10) {
            0..=5 => rng.random_range(0..=5),
            6..=8 => rng.random_range(10..=20),
            _ => rng.random_range(30..=60),
        };
        let (pre_stop, grace) = match rng.random_range(0..20) {
            0..=11 => (0, grace),
            12..=16 => {
                let pre_stop = rng.random_range(2..=10);
                (pre_stop, grace.max(pre_stop + 5))
            }
            _ => {
                let pre_stop = rng.random_range(20..=45);
                (pre_stop, grace.max(pre_stop + 15))
            }
        };
        PodTiming {
            readiness_delay,
            pre_stop,
            grace,
        }
    }

    /// A database's: slow to become Ready and to stop.
    fn stateful(rng: &mut StdRng) -> PodTiming {
        PodTiming {
            readiness_delay: rng.random_range(15..=40),
            pre_stop: rng.random_range(10..=30),
            grace: 60,
        }
    }

    /// Write these into a pod template (its first container).
    fn apply(self, template: &mut Value) {
        template["spec"]["terminationGracePeriodSeconds"] = json!(self.grace);
        let container = &mut template["spec"]["containers"][0];
        if self.readiness_delay > 0 {
            container["readinessProbe"] = json!({
                "httpGet": {"path": "/healthz", "port": 8080},
                "initialDelaySeconds": self.readiness_delay,
                "periodSeconds": 5,
            });
        }
        if self.pre_stop > 0 {
            container["lifecycle"] = json!({"preStop": {"sleep": {"seconds": self.pre_stop}}});
        }
    }
}

/// A generated cluster.
#[derive(Clone, Debug, PartialEq)]
pub struct Scenario {
    /// The seed it came from.
    pub seed: u64,
    /// Nodes, control-plane nodes first.
    pub nodes: Vec<NodeSpec>,
    /// Namespaces to create.
    pub namespaces: Vec<Value>,
    /// Deployments.
    pub deployments: Vec<Value>,
    /// StatefulSets.
    pub statefulsets: Vec<Value>,
    /// DaemonSets.
    pub daemonsets: Vec<Value>,
    /// PodDisruptionBudgets.
    pub pdbs: Vec<Value>,
    /// Pods without a controller.
    pub pods: Vec<Value>,
    /// Every PDB's `disruptionsAllowed` once the cluster settled.
    pub expected_pdbs: Vec<PdbExpectation>,
    /// The node the zero-disruption PDB's pod is pinned to: its drain cannot finish.
    pub blocked_node: Option<String>,
    /// The node the bare pods are pinned to: draining it needs `--force` (or a policy).
    pub unmanaged_pods_node: Option<String>,
}

/// A kubeadm cluster to upgrade: every node at `version`, the `pkgs.k8s.io` repositories
/// carrying every minor from the nodes' up to `newest_minor`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KubernetesSetup {
    /// The version every node (kubelet, kubeadm, kubectl, control plane) runs at first.
    pub version: KubeVersion,
    /// The newest minor the repositories carry.
    pub newest_minor: KubeVersion,
}

impl KubernetesSetup {
    /// The repositories: for each minor, every patch release up to the newest one
    /// ([`latest_patch`]), packaged as pkgs.k8s.io does (`1.31.4-1.1`).
    pub fn sources(&self) -> KubernetesSources {
        let releases = (self.version.minor..=self.newest_minor.minor.max(self.version.minor))
            .map(|minor| {
                let versions = (0..=latest_patch(minor))
                    .map(|patch| format!("{}.{minor}.{patch}-1.1", self.version.major))
                    .collect();
                (format!("{}.{minor}", self.version.major), versions)
            })
            .collect();
        KubernetesSources {
            base: PACKAGES_BASE.to_owned(),
            minor: self.version.short(),
            releases,
        }
    }

    /// The newest version the repositories offer: `newest_minor`'s latest patch.
    pub fn newest(&self) -> KubeVersion {
        let minor = self.newest_minor.minor.max(self.version.minor);
        KubeVersion::new(self.version.major, minor, latest_patch(minor))
    }
}

/// The latest patch release of a 1.x minor that the simulated repositories carry (the
/// upstream patch lines as of mid 2025; later minors get three patches).
pub fn latest_patch(minor: u32) -> u32 {
    match minor {
        ..=29 => 15,
        30 => 14,
        31 => 11,
        32 => 7,
        33 => 3,
        _ => 2,
    }
}

/// How a generated workload's PDB is shaped.
#[derive(Clone, Copy, Debug)]
enum Budget {
    MaxUnavailable(i32),
    MinAvailable(i32),
    MaxUnavailablePercent(i32),
    MinAvailablePercent(i32),
}

impl Budget {
    fn spec(self) -> (&'static str, Value) {
        match self {
            Budget::MaxUnavailable(n) => ("maxUnavailable", json!(n)),
            Budget::MinAvailable(n) => ("minAvailable", json!(n)),
            Budget::MaxUnavailablePercent(p) => ("maxUnavailable", json!(format!("{p}%"))),
            Budget::MinAvailablePercent(p) => ("minAvailable", json!(format!("{p}%"))),
        }
    }

    /// `disruptionsAllowed` with `replicas` healthy pods of one controller.
    fn allowed(self, replicas: i32) -> i32 {
        let ceil_percent = |p: i32| (p * replicas + 99) / 100;
        let allowed = match self {
            Budget::MaxUnavailable(n) => n.min(replicas),
            Budget::MinAvailable(n) => replicas - n,
            Budget::MaxUnavailablePercent(p) => ceil_percent(p).min(replicas),
            Budget::MinAvailablePercent(p) => replicas - ceil_percent(p),
        };
        allowed.max(0)
    }
}

const DEPLOYMENT_NAMES: [&str; 20] = [
    "frontend",
    "checkout",
    "cart",
    "catalog",
    "search",
    "payments",
    "auth",
    "gateway",
    "notifications",
    "recommendations",
    "reports",
    "ads",
    "shipping",
    "currency",
    "email",
    "inventory",
    "reviews",
    "profile",
    "media",
    "pricing",
];

const STATEFULSET_NAMES: [&str; 6] = [
    "postgres",
    "redis",
    "kafka",
    "zookeeper",
    "elasticsearch",
    "rabbitmq",
];

fn nth_name(names: &[&str], i: usize) -> String {
    let base = names[i % names.len()];
    match i / names.len() {
        0 => base.to_string(),
        round => format!("{base}-{}", round + 1),
    }
}

fn hex(rng: &mut StdRng, digits: usize) -> String {
    (0..digits)
        .map(|_| char::from(b"0123456789abcdef"[rng.random_range(0..16)]))
        .collect()
}

fn uuid(rng: &mut StdRng) -> String {
    let h = hex(rng, 32);
    format!(
        "{}-{}-{}-{}-{}",
        &h[0..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    )
}

fn container(name: &str, image: &str) -> Value {
    json!({
        "name": name,
        "image": image,
        "imagePullPolicy": "IfNotPresent",
        "resources": {"requests": {"cpu": "100m", "memory": "128Mi"}},
    })
}

fn namespace(name: &str) -> Value {
    json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}})
}

fn pdb(ns: &str, name: &str, budget: Budget) -> Value {
    let (field, value) = budget.spec();
    let mut spec = json!({"selector": {"matchLabels": {"app": name}}});
    spec[field] = value;
    json!({
        "apiVersion": "policy/v1",
        "kind": "PodDisruptionBudget",
        "metadata": {"name": name, "namespace": ns},
        "spec": spec,
    })
}

impl Scenario {
    /// A cluster of `nodes` nodes generated from `seed`.
    pub fn generate(nodes: usize, seed: u64) -> Scenario {
        let mut rng = StdRng::seed_from_u64(seed);
        let mut timing_rng = StdRng::seed_from_u64(seed.wrapping_add(TIMING_SEED));
        let control_planes = if nodes >= 6 { 3 } else { nodes.min(1) };
        let workers = nodes - control_planes;
        let node_specs = generate_nodes(&mut rng, control_planes, workers);
        let worker_names: Vec<String> = node_specs
            .iter()
            .filter(|n| !n.control_plane || workers == 0)
            .map(|n| n.name.clone())
            .collect();
        let blocked_node = (!worker_names.is_empty())
            .then(|| worker_names[rng.random_range(0..worker_names.len())].clone());
        let unmanaged_pods_node = match worker_names.len() {
            0 => None,
            1 => blocked_node.clone(),
            n => {
                let others: Vec<&String> = worker_names
                    .iter()
                    .filter(|w| Some(*w) != blocked_node.as_ref())
                    .collect();
                Some(others[rng.random_range(0..n - 1)].clone())
            }
        };

        let mut scenario = Scenario {
            seed,
            nodes: node_specs,
            namespaces: ["web", "shop", "data", "batch", "logging", "legacy"]
                .into_iter()
                .map(namespace)
                .collect(),
            deployments: Vec::new(),
            statefulsets: Vec::new(),
            daemonsets: vec![
                daemonset(
                    "kube-system",
                    "sim-cni",
                    "registry.local/sim-cni:1.16.5",
                    true,
                ),
                daemonset(
                    "logging",
                    "log-agent",
                    "registry.local/log-agent:3.2.1",
                    false,
                ),
            ],
            pdbs: Vec::new(),
            pods: Vec::new(),
            expected_pdbs: Vec::new(),
            blocked_node: blocked_node.clone(),
            unmanaged_pods_node: unmanaged_pods_node.clone(),
        };

        for i in 0..(2 + workers / 2) {
            let name = nth_name(&DEPLOYMENT_NAMES, i);
            let ns = if i % 2 == 0 { "web" } else { "shop" };
            let replicas: i32 = rng.random_range(2..=5);
            let empty_dir = rng.random_bool(0.3);
            let grace = [30, 30, 30, 10, 60][rng.random_range(0..5)];
            let image = format!("registry.local/{name}:1.{}.0", rng.random_range(0..20));
            let mut workload = deployment(ns, &name, replicas, &image, grace, empty_dir, None);
            PodTiming::stateless(&mut timing_rng, grace).apply(&mut workload["spec"]["template"]);
            scenario.deployments.push(workload);
            let budget = match rng.random_range(0..5) {
                0 => Some(Budget::MaxUnavailable(1)),
                1 => Some(Budget::MinAvailable(replicas - 1)),
                2 => Some(Budget::MaxUnavailablePercent(25)),
                3 => Some(Budget::MinAvailablePercent(50)),
                _ => None,
            };
            if let Some(budget) = budget {
                scenario.add_pdb(ns, &name, budget, replicas);
            }
        }

        for i in 0..(1 + workers / 8) {
            let name = nth_name(&STATEFULSET_NAMES, i);
            let parallel = rng.random_bool(0.25);
            let image = format!(
                "registry.local/{name}:{}.{}",
                10 + i,
                rng.random_range(0..10)
            );
            let mut workload = statefulset("data", &name, 3, &image, parallel);
            PodTiming::stateful(&mut timing_rng).apply(&mut workload["spec"]["template"]);
            scenario.statefulsets.push(workload);
            let budget = if rng.random_bool(0.5) {
                Budget::MaxUnavailable(1)
            } else {
                Budget::MinAvailable(2)
            };
            scenario.add_pdb("data", &name, budget, 3);
        }

        let pin = |node: &Option<String>| {
            node.as_ref()
                .map(|n| json!({HOSTNAME_LABEL: n}))
                .unwrap_or(Value::Null)
        };
        scenario.deployments.push(deployment(
            "legacy",
            BLOCKED_WORKLOAD,
            1,
            "registry.local/license-server:4.2",
            30,
            false,
            Some(pin(&blocked_node)),
        ));
        scenario.add_pdb("legacy", BLOCKED_WORKLOAD, Budget::MinAvailable(1), 1);

        scenario.pods.push(bare_pod(
            "batch",
            "debug-toolbox",
            "registry.local/toolbox:1.0",
            false,
            pin(&unmanaged_pods_node),
        ));
        scenario.pods.push(bare_pod(
            "batch",
            "adhoc-report",
            "registry.local/reports:0.9",
            true,
            pin(&unmanaged_pods_node),
        ));
        scenario
    }

    /// Makes the cluster a kubeadm cluster at `setup.version`: every node's kubeadm, kubelet
    /// and kubectl at that version, held (as kubeadm's install instructions do) and installed
    /// from per-minor repositories up to `setup.newest_minor`, and the control plane's static
    /// pods at that version, each control-plane node with a stacked etcd member.
    pub fn with_kubernetes(&mut self, setup: &KubernetesSetup) {
        let sources = setup.sources();
        let package = format!("{}-1.1", setup.version);
        for node in &mut self.nodes {
            let host = &mut node.host;
            host.available
                .retain(|a| !KUBERNETES_PACKAGES.contains(&a.name.as_str()));
            for name in KUBERNETES_PACKAGES {
                host.installed.insert(name.to_owned(), package.clone());
                if !host.holds.iter().any(|h| h == name) {
                    host.holds.push(name.to_owned());
                }
            }
            host.kubernetes = Some(sources.clone());
            host.control_plane = node.control_plane.then(|| ControlPlaneHost {
                version: format!("v{}", setup.version),
                etcd: EtcdLayout::Stacked,
                etcdutl: true,
            });
        }
    }

    /// The version kubeadm deployed the control plane at (the first control-plane host's).
    pub fn control_plane_version(&self) -> Option<KubeVersion> {
        self.nodes
            .iter()
            .find_map(|n| n.host.control_plane.as_ref())
            .and_then(|cp| cp.version.parse().ok())
    }

    /// The Deployments that run on workers (`(namespace, name)`), the blocked one aside.
    pub fn worker_deployments(&self) -> Vec<(String, String)> {
        self.deployments
            .iter()
            .filter(|d| meta::name(d) != BLOCKED_WORKLOAD)
            .map(|d| (meta::namespace(d).to_string(), meta::name(d).to_string()))
            .collect()
    }

    /// Make the pods of Deployment `namespace/name` take `seconds` to stop (a `preStop` hook
    /// that long, draining long-lived connections, and a grace period 15 s beyond it). Returns
    /// whether the Deployment exists.
    pub fn slow_down_termination(&mut self, namespace: &str, name: &str, seconds: i64) -> bool {
        let Some(deployment) = self
            .deployments
            .iter_mut()
            .find(|d| meta::namespace(d) == namespace && meta::name(d) == name)
        else {
            return false;
        };
        let spec = &mut deployment["spec"]["template"]["spec"];
        spec["terminationGracePeriodSeconds"] = json!(seconds + 15);
        spec["containers"][0]["lifecycle"] = json!({"preStop": {"sleep": {"seconds": seconds}}});
        true
    }

    /// Lower the workers' allocatable CPU so that they have room for the workloads' pods and
    /// `headroom` more (0.1: 10 % more pods, counted in pods of the largest request and dealt
    /// out over the workers): taking a few workers out (a rollout draining them) can leave pods
    /// `Pending` as `Unschedulable`. Control-plane nodes keep theirs.
    pub fn tighten_capacity(&mut self, headroom: f64) {
        let workers = self.nodes.iter().filter(|n| !n.control_plane).count();
        if workers == 0 {
            return;
        }
        let cpu =
            |template: &Value| super::objects::pod_requests(&json!({"spec": template["spec"]})).0;
        let replicated = |objs: &[Value]| -> u128 {
            objs.iter()
                .map(|o| {
                    let replicas = o
                        .pointer("/spec/replicas")
                        .and_then(Value::as_u64)
                        .unwrap_or(1);
                    u128::from(replicas) * cpu(&o["spec"]["template"])
                })
                .sum()
        };
        let workload = replicated(&self.deployments)
            + replicated(&self.statefulsets)
            + self.pods.iter().map(cpu).sum::<u128>();
        // Room is counted in pods of the largest request, since a node's spare CPU smaller
        // than a pod is no room at all.
        let pod = self
            .deployments
            .iter()
            .chain(&self.statefulsets)
            .map(|o| cpu(&o["spec"]["template"]))
            .chain(self.pods.iter().map(cpu))
            .max()
            .unwrap_or(0)
            .max(1);
        let daemons: u128 = self
            .daemonsets
            .iter()
            .map(|d| cpu(&d["spec"]["template"]))
            .sum();
        let headroom = if headroom.is_finite() {
            headroom.max(0.0)
        } else {
            0.0
        };
        // Room for this many pods in all, dealt out over the workers (some get one more).
        let room = (workload as f64 * (1.0 + headroom) / pod as f64).ceil() as u128;
        let workers = workers as u128;
        for (i, node) in self
            .nodes
            .iter_mut()
            .filter(|n| !n.control_plane)
            .enumerate()
        {
            let pods = room / workers + u128::from((i as u128) < room % workers);
            // Half a pod more leaves room for small DaemonSets added later (rota's agent).
            node.allocatable_cpu = format!("{}m", daemons + pods * pod + pod / 2);
        }
    }

    fn add_pdb(&mut self, ns: &str, name: &str, budget: Budget, replicas: i32) {
        self.pdbs.push(pdb(ns, name, budget));
        self.expected_pdbs.push(PdbExpectation {
            namespace: ns.to_string(),
            name: name.to_string(),
            disruptions_allowed: budget.allowed(replicas),
        });
    }

    /// The node called `name`.
    pub fn node(&self, name: &str) -> Option<&NodeSpec> {
        self.nodes.iter().find(|n| n.name == name)
    }

    /// Names of the control-plane nodes.
    pub fn control_plane_names(&self) -> Vec<String> {
        self.nodes
            .iter()
            .filter(|n| n.control_plane)
            .map(|n| n.name.clone())
            .collect()
    }

    /// Names of the worker nodes.
    pub fn worker_names(&self) -> Vec<String> {
        self.nodes
            .iter()
            .filter(|n| !n.control_plane)
            .map(|n| n.name.clone())
            .collect()
    }

    /// Pods the cluster runs once settled: replicas of Deployments and StatefulSets, one pod
    /// per node and DaemonSet, the bare pods, and the control-plane nodes' static pods.
    pub fn expected_pod_count(&self) -> usize {
        let replicas = |objs: &[Value]| -> usize {
            objs.iter()
                .map(|o| {
                    o.pointer("/spec/replicas")
                        .and_then(Value::as_u64)
                        .unwrap_or(1) as usize
                })
                .sum()
        };
        replicas(&self.deployments)
            + replicas(&self.statefulsets)
            + self.daemonsets.len() * self.nodes.len()
            + self.pods.len()
            + ControlPlanePod::COMPONENTS.len() * self.control_plane_names().len()
    }
}

fn generate_nodes(rng: &mut StdRng, control_planes: usize, workers: usize) -> Vec<NodeSpec> {
    let mut nodes = Vec::with_capacity(control_planes + workers);
    let names = (1..=control_planes)
        .map(|i| (format!("cp-{i}"), true, i - 1))
        .chain((1..=workers).map(|i| (format!("worker-{i:02}"), false, i - 1)));
    for (index, (name, control_plane, in_group)) in names.enumerate() {
        let zone_index = in_group % ZONES.len();
        let zone = ZONES[zone_index].to_string();
        let mut labels: BTreeMap<String, String> = [
            (HOSTNAME_LABEL, name.as_str()),
            ("kubernetes.io/os", "linux"),
            ("kubernetes.io/arch", "amd64"),
            ("beta.kubernetes.io/os", "linux"),
            ("beta.kubernetes.io/arch", "amd64"),
            (ZONE_LABEL, &zone),
            ("topology.kubernetes.io/region", REGION),
            ("node.kubernetes.io/instance-type", "sim.large"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        let mut taints = Vec::new();
        if control_plane {
            labels.insert(CONTROL_PLANE_LABEL.into(), String::new());
            labels.insert(
                "node.kubernetes.io/exclude-from-external-load-balancers".into(),
                String::new(),
            );
            // A lone control-plane node also runs the workloads (as kubeadm's single-node
            // set-up does after removing the taint).
            if workers > 0 {
                taints.push(json!({"key": CONTROL_PLANE_LABEL, "effect": "NoSchedule"}));
            }
        }
        let mut host = generate_host(rng, index == 0);
        if control_plane {
            // kubeadm deployed the control plane at the kubelets' version.
            host.control_plane = Some(ControlPlaneHost {
                version: format!("v{}", rota_agent::detect::upstream_version(INITIAL_KUBELET)),
                etcd: EtcdLayout::Stacked,
                etcdutl: true,
            });
        }
        nodes.push(NodeSpec {
            internal_ip: format!("10.0.{zone_index}.{}", 10 + index),
            pod_cidr: format!("10.{}.{}.0/24", 244 + index / 256, index % 256),
            system_uuid: uuid(rng),
            allocatable_cpu: DEFAULT_ALLOCATABLE_CPU.to_string(),
            allocatable_memory: DEFAULT_ALLOCATABLE_MEMORY.to_string(),
            name,
            zone,
            control_plane,
            labels,
            taints,
            host,
        });
    }
    nodes
}

/// Pending updates for one host. `first` guarantees that at least one host of every cluster
/// has each kind of update.
fn generate_host(rng: &mut StdRng, first: bool) -> HostSpec {
    let mut installed: BTreeMap<String, String> = BTreeMap::new();
    let mut available = Vec::new();
    let offer = |available: &mut Vec<AvailablePackage>, name: &str, version: &str, security| {
        available.push(AvailablePackage {
            name: name.into(),
            version: version.into(),
            security,
        });
    };
    let (kernel, kernel_pkg) = INITIAL_KERNEL;
    installed.insert(KERNEL_PACKAGE.into(), kernel_pkg.into());
    installed.insert(format!("linux-image-{kernel}"), kernel_pkg.into());
    offer(&mut available, KERNEL_PACKAGE, KERNEL_UPDATE.1, true);

    for pkg in ["kubelet", "kubeadm", "kubectl"] {
        installed.insert(pkg.into(), INITIAL_KUBELET.into());
    }
    if first || rng.random_bool(0.4) {
        for pkg in [KUBELET_PACKAGE, "kubeadm", "kubectl"] {
            offer(&mut available, pkg, KUBELET_PATCH, false);
        }
    }
    installed.insert(CONTAINERD_PACKAGE.into(), "1.7.24-1".into());
    if rng.random_bool(0.3) {
        offer(&mut available, CONTAINERD_PACKAGE, "1.7.25-1", false);
    }
    let groups: [(&[&str], &str, &str, bool, f64); 6] = [
        (
            &["openssl", "libssl3"],
            "3.0.15-1~deb12u1",
            "3.0.16-1~deb12u1",
            true,
            0.5,
        ),
        (
            &["curl", "libcurl4"],
            "7.88.1-10+deb12u8",
            "7.88.1-10+deb12u12",
            true,
            0.4,
        ),
        (
            &["libc6", "libc-bin"],
            "2.36-9+deb12u9",
            "2.36-9+deb12u10",
            true,
            0.2,
        ),
        (
            &["tzdata"],
            "2024a-0+deb12u1",
            "2025b-0+deb12u1",
            false,
            0.5,
        ),
        (
            &["vim", "vim-runtime"],
            "2:9.0.1378-2",
            "2:9.0.1378-2+deb12u2",
            false,
            0.3,
        ),
        (
            &["systemd", "libsystemd0"],
            "252.33-1~deb12u1",
            "252.36-1~deb12u1",
            false,
            0.15,
        ),
    ];
    for (i, (names, current, newer, security, p)) in groups.into_iter().enumerate() {
        let forced = first && (i == 0 || i == 3);
        let pending = rng.random_bool(p) || forced;
        for name in names {
            installed.insert(name.to_string(), current.to_string());
            if pending {
                offer(&mut available, name, newer, security);
            }
        }
    }
    installed.insert("ca-certificates".into(), "20230311".into());
    let holds = if rng.random_bool(0.15) {
        vec![CONTAINERD_PACKAGE.to_string()]
    } else {
        Vec::new()
    };
    HostSpec {
        os_release: DEBIAN_OS_RELEASE.into(),
        kernel: kernel.into(),
        installed,
        available,
        holds,
        kernel_releases: BTreeMap::from([
            (kernel_pkg.to_string(), kernel.to_string()),
            (KERNEL_UPDATE.1.to_string(), KERNEL_UPDATE.0.to_string()),
        ]),
        machine_id: hex(rng, 32),
        control_plane: None,
        kubernetes: None,
    }
}

fn pod_template(
    name: &str,
    image: &str,
    grace: i64,
    empty_dir: bool,
    node_selector: Option<Value>,
) -> Value {
    let mut spec = json!({
        "containers": [container(name, image)],
        "terminationGracePeriodSeconds": grace,
    });
    if empty_dir {
        spec["volumes"] = json!([{"name": "cache", "emptyDir": {}}]);
        spec["containers"][0]["volumeMounts"] = json!([{"name": "cache", "mountPath": "/cache"}]);
    }
    if let Some(selector) = node_selector.filter(|s| !s.is_null()) {
        spec["nodeSelector"] = selector;
    }
    json!({"metadata": {"labels": {"app": name}}, "spec": spec})
}

fn deployment(
    ns: &str,
    name: &str,
    replicas: i32,
    image: &str,
    grace: i64,
    empty_dir: bool,
    node_selector: Option<Value>,
) -> Value {
    json!({
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name, "namespace": ns, "labels": {"app": name}},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": {"app": name}},
            "template": pod_template(name, image, grace, empty_dir, node_selector),
        },
    })
}

fn statefulset(ns: &str, name: &str, replicas: i32, image: &str, parallel: bool) -> Value {
    json!({
        "apiVersion": "apps/v1",
        "kind": "StatefulSet",
        "metadata": {"name": name, "namespace": ns, "labels": {"app": name}},
        "spec": {
            "replicas": replicas,
            "serviceName": name,
            "podManagementPolicy": if parallel { "Parallel" } else { "OrderedReady" },
            "selector": {"matchLabels": {"app": name}},
            "template": pod_template(name, image, 30, false, None),
        },
    })
}

fn daemonset(ns: &str, name: &str, image: &str, host_network: bool) -> Value {
    let mut template = pod_template(name, image, 30, false, None);
    template["spec"]["tolerations"] = json!([{"operator": "Exists"}]);
    template["spec"]["priorityClassName"] = json!("system-node-critical");
    if host_network {
        template["spec"]["hostNetwork"] = json!(true);
    } else {
        template["spec"]["volumes"] =
            json!([{"name": "varlog", "hostPath": {"path": "/var/log", "type": ""}}]);
    }
    json!({
        "apiVersion": "apps/v1",
        "kind": "DaemonSet",
        "metadata": {"name": name, "namespace": ns, "labels": {"app": name}},
        "spec": {
            "selector": {"matchLabels": {"app": name}},
            "template": template,
        },
    })
}

fn bare_pod(ns: &str, name: &str, image: &str, empty_dir: bool, node_selector: Value) -> Value {
    let template = pod_template(name, image, 30, empty_dir, Some(node_selector));
    json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": ns, "labels": template["metadata"]["labels"]},
        "spec": template["spec"],
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn budgets_round_like_the_disruption_controller() {
        assert_eq!(Budget::MaxUnavailable(1).allowed(3), 1);
        assert_eq!(Budget::MinAvailable(2).allowed(3), 1);
        assert_eq!(Budget::MinAvailable(1).allowed(1), 0);
        assert_eq!(Budget::MaxUnavailablePercent(25).allowed(2), 1);
        assert_eq!(Budget::MaxUnavailablePercent(25).allowed(5), 2);
        assert_eq!(Budget::MinAvailablePercent(50).allowed(5), 2);
        assert_eq!(Budget::MinAvailablePercent(50).allowed(2), 1);
    }

    #[test]
    fn control_plane_size_and_zones() {
        let small = Scenario::generate(5, 1);
        assert_eq!(small.control_plane_names(), vec!["cp-1"]);
        assert_eq!(small.worker_names().len(), 4);
        let big = Scenario::generate(9, 1);
        assert_eq!(big.control_plane_names().len(), 3);
        for zone in ZONES {
            assert!(
                big.nodes
                    .iter()
                    .filter(|n| n.control_plane)
                    .any(|n| n.zone == zone)
            );
            assert!(
                big.nodes
                    .iter()
                    .filter(|n| !n.control_plane)
                    .any(|n| n.zone == zone)
            );
        }
        let single = Scenario::generate(1, 1);
        assert!(single.nodes[0].taints.is_empty());
        assert_eq!(single.blocked_node.as_deref(), Some("cp-1"));
    }

    #[test]
    fn workloads_draw_their_start_and_stop_times_from_the_seed() {
        let a = Scenario::generate(24, 7);
        assert_eq!(a, Scenario::generate(24, 7));
        let probes = a
            .deployments
            .iter()
            .chain(&a.statefulsets)
            .filter(|w| {
                w.pointer("/spec/template/spec/containers/0/readinessProbe")
                    .is_some()
            })
            .count();
        assert!(probes > 0);
        for w in a.deployments.iter().chain(&a.statefulsets) {
            let spec = &w["spec"]["template"]["spec"];
            let pre_stop = spec
                .pointer("/containers/0/lifecycle/preStop/sleep/seconds")
                .and_then(Value::as_i64)
                .unwrap_or(0);
            let grace = spec["terminationGracePeriodSeconds"].as_i64().unwrap_or(0);
            assert!(pre_stop < grace, "{w}");
        }
        let b = Scenario::generate(24, 8);
        assert_ne!(a.deployments, b.deployments);
    }

    #[test]
    fn tight_capacity_leaves_little_room() {
        let mut s = Scenario::generate(24, 1);
        s.tighten_capacity(0.15);
        let cp = s.nodes.iter().find(|n| n.control_plane).unwrap();
        assert_eq!(cp.allocatable_cpu, DEFAULT_ALLOCATABLE_CPU);
        let pods: u128 = s
            .deployments
            .iter()
            .chain(&s.statefulsets)
            .map(|w| w["spec"]["replicas"].as_u64().unwrap() as u128)
            .sum::<u128>()
            + s.pods.len() as u128;
        // Every pod of the scenario requests 100m; the two DaemonSets 200m per node.
        let room: u128 = s
            .nodes
            .iter()
            .filter(|n| !n.control_plane)
            .map(|n| {
                let millis: u128 = n.allocatable_cpu.trim_end_matches('m').parse().unwrap();
                (millis - 200) / 100
            })
            .sum();
        assert!(room >= pods, "room for {room} pods, {pods} to run");
        assert!(
            room <= pods + pods * 15 / 100 + 1,
            "room for {room} pods, {pods} to run"
        );
    }

    #[test]
    fn names_past_the_list_get_a_round_suffix() {
        assert_eq!(nth_name(&["a", "b"], 1), "b");
        assert_eq!(nth_name(&["a", "b"], 2), "a-2");
        assert_eq!(nth_name(&["a", "b"], 5), "b-3");
    }
}
