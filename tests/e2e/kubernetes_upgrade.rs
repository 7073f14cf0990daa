//! End to end: a Kubernetes upgrade the kubeadm way, 1.30 to 1.32 one minor at a time, by the
//! real coordinator and agents on an emulated kubeadm cluster (three control-plane nodes with
//! stacked etcd, six workers; the simulated hosts answer `kubeadm`, `etcdctl`/`etcdutl` and
//! follow their apt source list, see `rota_sim::cluster::kubeadm`).
//!
//! Judged from the simulation's record, never from rota's view: every write the emulated API
//! server took (Nodes' kubelet versions, the control-plane mirror pods' images) replayed
//! against the version skew policy, the hosts' record of what kubeadm and the etcd tools did
//! and when, the emulator's node record and the independent safety monitor.

// Helpers outside #[test] functions fail the test the same way the tests do.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use jiff::Timestamp;
use rota_core::model::SlotPhase;
use rota_core::policy::KubeVersion;
use rota_core::policy::conditions::{CIRCUIT_OPEN, PAUSED};
use rota_sim::apiserver::{EventType, GroupResource, ListOptions, meta};
use rota_sim::cluster::{Faults, KubernetesSetup, ToolAction, ToolRecord};
use rota_sim::demo::{Fleet, FleetOptions, Stopped, slot_phase};
use rota_tests::e2e::{
    WAIT, WriteFollower, assert_complete, assert_safe, condition, first_unavailable, follow_writes,
    node, options, policy, print_timing, rota_settings, run, set_paused, slot_holders, start,
};
use serde_json::Value;

/// The cluster's version at first.
const FROM: KubeVersion = KubeVersion::new(1, 30, 10);

/// The repositories carry 1.30 to 1.32; the policy targets 1.32's newest patch.
fn setup() -> KubernetesSetup {
    KubernetesSetup {
        version: FROM,
        newest_minor: KubeVersion::new(1, 32, 0),
    }
}

/// The policy's `etcd.maxSnapshotAge`: short, against a rollout of seconds, so that each
/// maintenance of a control-plane node needs a snapshot of its own moments.
const MAX_SNAPSHOT_AGE_SECONDS: i64 = 3;

/// 9 nodes (3 control-plane, 6 workers), 3 at a time, the policy paused until the recorder runs.
fn fleet_options(seed: u64) -> FleetOptions {
    let setup = setup();
    let target = setup.newest();
    let mut options = options(9, seed, 3, 1).with_kubernetes_upgrade(setup, target);
    let (_, spec) = rota_settings(&mut options);
    spec.paused = true;
    spec.etcd.max_snapshot_age = Some(format!("{MAX_SNAPSHOT_AGE_SECONDS}s"));
    options
}

/// The control-plane components whose versions the skew policy constrains.
const APISERVER: &str = "kube-apiserver";
const MANAGERS: [&str; 2] = ["kube-controller-manager", "kube-scheduler"];

/// The versions the API shows at one moment.
#[derive(Clone, Debug, Default)]
struct Versions {
    /// Node → its kubelet.
    kubelets: BTreeMap<String, KubeVersion>,
    /// (node, component) → the image of its mirror pod.
    components: BTreeMap<(String, String), KubeVersion>,
}

impl Versions {
    fn apiservers(&self) -> impl Iterator<Item = (&String, KubeVersion)> {
        self.components
            .iter()
            .filter(|((_, c), _)| c == APISERVER)
            .map(|((n, _), v)| (n, *v))
    }

    /// Each rule of the skew policy this moment breaks. The kubelet rule is the one a kubeadm
    /// cluster lives by: a worker's kubelet never newer than the oldest kube-apiserver; a
    /// control-plane node's kubelet never newer than its own node's kube-apiserver (kubeadm
    /// upgrades a control-plane node's kubelet right after its control plane, as its upgrade
    /// guide does node by node, before the other control-plane nodes' API servers moved). The
    /// strict reading for control-plane kubelets too is in [`Versions::strict_kubelet_skew`].
    fn violations(&self, control_plane: &BTreeSet<String>) -> Vec<String> {
        let mut out = Vec::new();
        let (Some(oldest), Some(newest)) = (
            self.apiservers().map(|(_, v)| v).min(),
            self.apiservers().map(|(_, v)| v).max(),
        ) else {
            return out;
        };
        if newest.minor > oldest.minor + 1 {
            out.push(format!(
                "kube-apiservers {oldest} and {newest} are more than one minor apart"
            ));
        }
        for (node, kubelet) in &self.kubelets {
            let bound = if control_plane.contains(node) {
                self.components
                    .get(&(node.clone(), APISERVER.to_owned()))
                    .copied()
                    .unwrap_or(oldest)
            } else {
                oldest
            };
            if kubelet.minor > bound.minor {
                out.push(format!(
                    "kubelet {kubelet} on {node} is newer than kube-apiserver {bound}"
                ));
            }
            if kubelet.minor + 3 < newest.minor {
                out.push(format!(
                    "kubelet {kubelet} on {node} is more than three minors older than kube-apiserver {newest}"
                ));
            }
        }
        for ((node, component), version) in &self.components {
            if !MANAGERS.contains(&component.as_str()) {
                continue;
            }
            // kubeadm points the controller-manager and the scheduler at their node's API server.
            let local = self
                .components
                .get(&(node.clone(), APISERVER.to_owned()))
                .copied()
                .unwrap_or(oldest);
            if version.minor > local.minor {
                out.push(format!(
                    "{component} {version} on {node} is newer than its kube-apiserver {local}"
                ));
            }
            if version.minor + 1 < newest.minor {
                out.push(format!(
                    "{component} {version} on {node} is more than one minor older than kube-apiserver {newest}"
                ));
            }
        }
        out
    }

    /// Control-plane kubelets newer than the oldest kube-apiserver (the strict reading).
    fn strict_kubelet_skew(&self, control_plane: &BTreeSet<String>) -> Vec<String> {
        let Some(oldest) = self.apiservers().map(|(_, v)| v).min() else {
            return Vec::new();
        };
        self.kubelets
            .iter()
            .filter(|(n, v)| control_plane.contains(*n) && v.minor > oldest.minor)
            .map(|(n, v)| format!("kubelet {v} on {n}, oldest kube-apiserver {oldest}"))
            .collect()
    }
}

/// Replays every write the emulated API server takes against the skew policy, and notes when
/// each node's kubelet and each control-plane component first reached each minor.
#[derive(Clone, Debug, Default)]
struct VersionRecord {
    now: Versions,
    writes: usize,
    violations: Vec<String>,
    strict: Vec<String>,
    /// (node, component or "kubelet", minor) → when the API first showed it.
    reached: BTreeMap<(String, String, u32), Timestamp>,
}

impl VersionRecord {
    fn reach(&mut self, node: &str, what: &str, version: KubeVersion, at: Timestamp) {
        self.reached
            .entry((node.to_owned(), what.to_owned(), version.minor))
            .or_insert(at);
    }

    fn apply(
        &mut self,
        resource: &GroupResource,
        kind: EventType,
        obj: &Value,
        at: Timestamp,
    ) -> bool {
        if *resource == GroupResource::core("nodes") {
            let name = meta::name(obj).to_owned();
            if kind == EventType::Deleted {
                return self.now.kubelets.remove(&name).is_some();
            }
            let Ok(version) = meta::str_at(obj, "/status/nodeInfo/kubeletVersion").parse() else {
                return false;
            };
            self.reach(&name, "kubelet", version, at);
            return self.now.kubelets.insert(name, version) != Some(version);
        }
        if *resource != GroupResource::core("pods")
            || meta::namespace(obj) != "kube-system"
            || meta::str_at(obj, "/metadata/labels/tier") != "control-plane"
        {
            return false;
        }
        let key = (
            meta::str_at(obj, "/spec/nodeName").to_owned(),
            meta::str_at(obj, "/metadata/labels/component").to_owned(),
        );
        if kind == EventType::Deleted {
            return self.now.components.remove(&key).is_some();
        }
        let image = meta::str_at(obj, "/spec/containers/0/image");
        let Some(version) = rota_core::upgrade::image_version(image) else {
            return false;
        };
        self.reach(&key.0, &key.1, version, at);
        self.now.components.insert(key, version) != Some(version)
    }
}

/// Follows the fleet's store from now on (after reading what it holds now).
struct Recorder {
    record: Arc<Mutex<VersionRecord>>,
    follower: WriteFollower,
}

impl Recorder {
    fn start(fleet: &Fleet) -> Recorder {
        let control_plane: BTreeSet<String> =
            fleet.scenario().control_plane_names().into_iter().collect();
        let record = Arc::new(Mutex::new(VersionRecord::default()));
        let shared = record.clone();
        // Subscribed before the listing, so that no write falls between the two.
        let follower = follow_writes(fleet.store(), move |event| {
            let at = Timestamp::now();
            let mut r = shared.lock().unwrap();
            r.writes += 1;
            if !r.apply(&event.resource, event.event_type, &event.object, at) {
                return;
            }
            for v in r.now.violations(&control_plane) {
                let line = format!("rv {}: {v}", event.resource_version);
                r.violations.push(line);
            }
            for v in r.now.strict_kubelet_skew(&control_plane) {
                let line = format!("rv {}: {v}", event.resource_version);
                r.strict.push(line);
            }
        });
        {
            let mut r = record.lock().unwrap();
            let now = fleet.store().now();
            for resource in [GroupResource::core("nodes"), GroupResource::core("pods")] {
                for obj in fleet
                    .store()
                    .list(&resource, None, &ListOptions::default())
                    .unwrap()
                    .items
                {
                    r.apply(&resource, EventType::Added, &obj, now);
                }
            }
            let control_plane: BTreeSet<String> =
                fleet.scenario().control_plane_names().into_iter().collect();
            let initial = r.now.violations(&control_plane);
            assert!(
                initial.is_empty(),
                "the cluster breaks the skew policy at first: {initial:?}"
            );
        }
        Recorder { record, follower }
    }

    /// The record once it has judged every write the fleet's store made.
    async fn take(&self, fleet: &Fleet) -> VersionRecord {
        self.follower.caught_up(fleet.store()).await;
        self.record.lock().unwrap().clone()
    }
}

/// Every host's tool record, by node.
fn tool_logs(fleet: &Fleet) -> BTreeMap<String, Vec<ToolRecord>> {
    fleet
        .cluster()
        .unwrap()
        .hosts()
        .iter()
        .map(|(n, h)| (n.clone(), h.tool_log()))
        .collect()
}

fn minor_of(version: &str) -> u32 {
    version.parse::<KubeVersion>().map(|v| v.minor).unwrap_or(0)
}

/// The spans during which `node` was unavailable (NotReady or cordoned), from the emulator's
/// node record; an open span ends now.
fn unavailable_spans(fleet: &Fleet, node: &str) -> Vec<(Timestamp, Timestamp)> {
    let mut spans = Vec::new();
    let mut open: Option<Timestamp> = None;
    for record in fleet.audit().nodes.iter().filter(|r| r.node == node) {
        match (record.unavailable(), open) {
            (true, None) => open = Some(record.time),
            (false, Some(from)) => {
                spans.push((from, record.time));
                open = None;
            }
            _ => {}
        }
    }
    if let Some(from) = open {
        spans.push((from, fleet.store().now()));
    }
    spans
}

/// 1.30.10 → 1.32.x across 3 control-plane nodes and 6 workers: the first control-plane node
/// applies each minor, the other control-plane nodes follow with `kubeadm upgrade node`, the
/// workers only after the whole control plane of that minor; a verified etcd snapshot on each
/// control-plane node before each of its maintenances; never two control-plane nodes down; the
/// skew policy held over every write; every node at the target at the end.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kubeadm_cluster_is_upgraded_two_minors_control_plane_first() {
    let options = fleet_options(11);
    let target = options.kubernetes.as_ref().unwrap().target;
    let fleet = start(options).await;
    let control_plane: BTreeSet<String> =
        fleet.scenario().control_plane_names().into_iter().collect();
    let workers: BTreeSet<String> = rota_tests::e2e::workers(&fleet).into_iter().collect();
    assert_eq!((control_plane.len(), workers.len()), (3, 6));
    let recorder = Recorder::start(&fleet);
    set_paused(&fleet, false);

    let (report, took) = run(&fleet, Duration::from_secs(600), Duration::from_secs(120)).await;
    fleet
        .wait_records_settled(Duration::from_secs(30))
        .await
        .unwrap();
    let report = fleet.report(report.stopped);
    print_timing("kubernetes upgrade 1.30 → 1.32", took, &report);
    println!("{}", report.render());
    let record = recorder.take(&fleet).await;
    let logs = tool_logs(&fleet);
    println!(
        "{} writes replayed; control-plane kubelets newer than the oldest kube-apiserver (kubeadm's node-by-node order): {:?}",
        record.writes, record.strict
    );
    assert_complete(&fleet, &report);

    // The skew policy at every write.
    assert!(
        record.violations.is_empty(),
        "skew broken: {:#?}",
        record.violations
    );

    // Every node at the target: kubelet and control plane, and the API server says so.
    for (name, versions) in fleet.kubernetes_versions() {
        assert_eq!(versions.kubelet, format!("v{target}"), "{name}: {versions}");
        if control_plane.contains(&name) {
            for component in [APISERVER, MANAGERS[0], MANAGERS[1]] {
                assert_eq!(
                    versions.control_plane.get(component).map(String::as_str),
                    Some(format!("v{target}").as_str()),
                    "{name}: {versions}"
                );
            }
        } else {
            assert!(versions.control_plane.is_empty(), "{name}: {versions}");
        }
    }

    // Each minor: one control-plane node applies it first, the others follow with
    // `kubeadm upgrade node`, all control-plane nodes before any of them goes on to the next
    // minor, and every worker's kubelet after the whole control plane of that minor.
    let reached = |node: &str, what: &str, minor: u32| {
        record
            .reached
            .get(&(node.to_owned(), what.to_owned(), minor))
            .copied()
            .unwrap_or_else(|| panic!("{node}'s {what} never reached 1.{minor}"))
    };
    for minor in FROM.minor + 1..=target.minor {
        let mut order: Vec<(Timestamp, &String)> = control_plane
            .iter()
            .map(|n| (reached(n, APISERVER, minor), n))
            .collect();
        order.sort();
        let first = order[0].1;
        let applied: Vec<&String> = logs
            .iter()
            .filter(|(_, log)| {
                log.iter().any(|r| {
                    r.success
                        && matches!(&r.action, ToolAction::UpgradeApply { version } if minor_of(version) == minor)
                })
            })
            .map(|(n, _)| n)
            .collect();
        assert_eq!(
            applied,
            vec![first],
            "1.{minor} applied on {applied:?}, first API server on {first}"
        );
        for (_, other) in &order[1..] {
            let followed = logs[*other].iter().any(|r| {
                r.success
                    && matches!(&r.action, ToolAction::UpgradeNode { control_plane: Some(v) } if minor_of(v) == minor)
            });
            assert!(
                followed,
                "{other} never ran kubeadm upgrade node to 1.{minor}: {:?}",
                logs[*other]
            );
        }
        let control_plane_done = order.last().unwrap().0;
        for worker in &workers {
            let at = reached(worker, "kubelet", minor);
            assert!(
                at > control_plane_done,
                "{worker}'s kubelet reached 1.{minor} at {at}, before the control plane ({control_plane_done})"
            );
        }
        if minor < target.minor {
            let next = control_plane
                .iter()
                .map(|n| reached(n, APISERVER, minor + 1))
                .min()
                .unwrap();
            assert!(
                next > control_plane_done,
                "a control plane went to 1.{} at {next} before all were at 1.{minor} ({control_plane_done})",
                minor + 1
            );
        }
    }
    // Workers never ran plan or apply.
    for worker in &workers {
        let planned = logs[worker]
            .iter()
            .filter(|r| {
                matches!(
                    r.action,
                    ToolAction::UpgradePlan { .. } | ToolAction::UpgradeApply { .. }
                )
            })
            .count();
        assert_eq!(planned, 0, "{worker}: {:?}", logs[worker]);
    }

    // Before each of its maintenances, each control-plane node had saved an etcd snapshot and
    // verified it, no older than the policy's maxSnapshotAge when the node went down (the
    // coordinator admits, then cordons, within moments: half a second of slack).
    let max_age = jiff::SignedDuration::from_secs(MAX_SNAPSHOT_AGE_SECONDS)
        + jiff::SignedDuration::from_millis(500);
    for cp in &control_plane {
        let spans = unavailable_spans(&fleet, cp);
        assert_eq!(
            spans.len() as u32,
            fleet.options().expected_maintenances(),
            "{cp} was unavailable {spans:?}"
        );
        let log = &logs[cp];
        for (down, _) in spans {
            let saved = log
                .iter()
                .filter(|r| r.success && r.time <= down)
                .filter_map(|r| match &r.action {
                    ToolAction::SnapshotSave { path } => Some((path.clone(), r.time)),
                    _ => None,
                })
                .next_back();
            let Some((path, saved_at)) = saved else {
                panic!("no etcd snapshot on {cp} before its maintenance at {down}: {log:?}");
            };
            assert!(
                down.duration_since(saved_at) <= max_age,
                "{cp}'s newest snapshot before its maintenance at {down} was saved at {saved_at}"
            );
            let verified = log.iter().any(|r| {
                r.success
                    && r.time >= saved_at
                    && r.time <= down
                    && r.action == ToolAction::SnapshotStatus { path: path.clone() }
            });
            assert!(
                verified,
                "{cp}'s snapshot {path} was not verified before {down}: {log:?}"
            );
        }
    }
    // Workers have no etcd member: no snapshot there.
    for worker in &workers {
        assert!(
            !logs[worker]
                .iter()
                .any(|r| matches!(r.action, ToolAction::SnapshotSave { .. })),
            "{worker}: {:?}",
            logs[worker]
        );
    }
    fleet.shutdown().await;
}

/// `kubeadm upgrade apply` fails on the first control-plane node (every control-plane node has
/// the fault, since which one goes first is the coordinator's choice): the rollout stops with
/// the pool's breaker open or paused, the node keeps its slot, and nothing else was touched.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_kubeadm_apply_stops_the_rollout() {
    let mut options = fleet_options(12);
    let (_, spec) = rota_settings(&mut options);
    spec.max_failures = 1;
    let control_plane: Vec<String> = vec!["cp-1".into(), "cp-2".into(), "cp-3".into()];
    options.faults = control_plane
        .iter()
        .fold(Faults::none(), |f, n| f.with_kubeadm_apply_failure(n));
    let began = std::time::Instant::now();
    let fleet = start(options).await;
    assert_eq!(fleet.scenario().control_plane_names(), control_plane);
    let before: BTreeMap<String, String> = fleet
        .kubernetes_versions()
        .into_iter()
        .map(|(n, v)| (n, v.to_string()))
        .collect();
    set_paused(&fleet, false);

    let stopped = fleet
        .wait_for("the rollout to stop behind the failed apply", WAIT, |fleet| {
            let policy = policy(fleet);
            let circuit = condition(&policy, CIRCUIT_OPEN);
            let paused = condition(&policy, PAUSED);
            let holders = slot_holders(fleet);
            let failed: Vec<&String> = holders
                .iter()
                .filter(|n| slot_phase(&node(fleet, n)) == Some(SlotPhase::Failed))
                .collect();
            let stopped = circuit.as_deref() == Some("True") || paused.as_deref() == Some("True");
            if stopped && holders.len() == 1 && failed.len() == 1 {
                Ok(failed[0].clone())
            } else {
                Err(format!(
                    "CircuitOpen {circuit:?}, Paused {paused:?}, holders {holders:?}, failed {failed:?}"
                ))
            }
        })
        .await
        .unwrap();
    let report = fleet.report(Stopped::Stalled);
    print_timing("a failing kubeadm upgrade apply", began.elapsed(), &report);
    println!("{}", report.render());
    assert!(
        control_plane.contains(&stopped),
        "{stopped} failed, not a control-plane node"
    );

    // The failed node ran apply, which failed, and nothing after it.
    let logs = tool_logs(&fleet);
    let applies: Vec<&ToolRecord> = logs[&stopped]
        .iter()
        .filter(|r| matches!(r.action, ToolAction::UpgradeApply { .. }))
        .collect();
    assert!(
        !applies.is_empty() && applies.iter().all(|r| !r.success),
        "{applies:?}"
    );
    // Nothing else touched: no other node cordoned or down, no kubeadm upgrade anywhere else,
    // no other slot, every version as it was (the failed node's control plane too: kubeadm
    // rolled it back).
    let touched: BTreeSet<String> = first_unavailable(&fleet).into_keys().collect();
    assert_eq!(touched, BTreeSet::from([stopped.clone()]));
    for (name, log) in &logs {
        if *name == stopped {
            continue;
        }
        let upgrades: Vec<&ToolRecord> = log
            .iter()
            .filter(|r| {
                matches!(
                    r.action,
                    ToolAction::UpgradeApply { .. } | ToolAction::UpgradeNode { .. }
                )
            })
            .collect();
        assert!(upgrades.is_empty(), "{name} ran {upgrades:?}");
    }
    let tokens: BTreeSet<String> = fleet.persisted_tokens().into_values().flatten().collect();
    assert_eq!(tokens, BTreeSet::from([stopped.clone()]));
    let after: BTreeMap<String, String> = fleet
        .kubernetes_versions()
        .into_iter()
        .map(|(n, v)| (n, v.to_string()))
        .collect();
    for (name, versions) in &after {
        if *name != stopped {
            assert_eq!(Some(versions), before.get(name), "{name} changed");
        }
    }
    let failed = &after[&stopped];
    assert!(
        failed.contains(&format!("kube-apiserver v{FROM}")),
        "{stopped}'s control plane moved: {failed}"
    );
    assert_safe(&fleet, &report);
    fleet.shutdown().await;
}
