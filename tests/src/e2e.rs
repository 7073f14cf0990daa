//! What every end-to-end scenario shares: the fleet's settings for fast, secure runs and the
//! invariants, checked from the independent safety monitor's verdict (never from what rota
//! reports, nor from the emulator's own budget maths).
//!
//! Every fleet runs the real coordinators and agents with TLS (a CA the coordinator bootstraps
//! into Secrets) and token authentication (projected service-account tokens checked by
//! TokenReview) on; [`start`] refuses to run a fleet without them.

// These helpers run only inside tests, and fail the test the same way the tests do: by panicking.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rota_core::model::SlotPhase;
use rota_core::policy::MaintenancePolicySpec;
use rota_core::policy::conditions::CIRCUIT_OPEN;
use rota_core::slots::persist::SLOT_ANNOTATION;
use rota_proto::v1::RenewRequest;
use rota_proto::v1::agent_client::AgentClient;
use rota_sim::apiserver::{GroupResource, ListOptions, ResourceKey, Store, StoreEvent, meta};
use rota_sim::cluster::Faults;
use rota_sim::demo::{
    CoordinatorOptions, Fleet, FleetOptions, POLICY_NAME, Report, SYSTEM_NAMESPACE, Scheduler,
    Stopped,
};
use serde_json::Value;
use tokio::sync::broadcast::error::RecvError;
use tonic::Code;
use tonic::transport::{Certificate, ClientTlsConfig, Endpoint};

/// The longest any one wait of a scenario may take. Generous: debug builds on two busy cores.
pub const WAIT: Duration = Duration::from_secs(180);

/// A fleet of `nodes` nodes from `seed`, maintained by rota `max_unavailable` at a time, with
/// `replicas` coordinator replicas, TLS and token authentication on.
pub fn options(nodes: usize, seed: u64, max_unavailable: u32, replicas: usize) -> FleetOptions {
    let mut options = FleetOptions::new(nodes, seed, max_unavailable);
    if let Scheduler::Rota { coordinators, .. } = &mut options.scheduler {
        coordinators.replicas = replicas;
        coordinators.tls = true;
    }
    options
}

/// Logs to the test's output when `RUST_LOG` asks for it (to debug a failing scenario).
pub fn init_logs() {
    if std::env::var_os("RUST_LOG").is_some() {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_test_writer()
            .try_init();
    }
}

/// The name the coordinator's serving certificate is issued for (its Service's name).
const COORDINATOR_NAME: &str = "rota-coordinator.rota-system.svc";

/// Checks on the wire what the agents' connections go through: the coordinators' Service
/// refuses plaintext, and over TLS (trusting the CA the coordinator bootstrapped and published)
/// a call without a service-account token is refused as unauthenticated.
async fn assert_tls_and_tokens_enforced(fleet: &Fleet, ca: &str) {
    let addr = fleet.coordinator_address().expect("rota runs");
    let probe = RenewRequest {
        node: fleet.scenario().nodes[0].name.clone(),
        token: 1,
    };
    let plaintext = async {
        let channel = Endpoint::from_shared(format!("http://{addr}"))
            .unwrap()
            .connect_timeout(Duration::from_secs(5))
            .connect()
            .await
            .map_err(|e| e.to_string())?;
        AgentClient::new(channel)
            .renew(probe.clone())
            .await
            .map_err(|e| e.to_string())
    };
    let refused = tokio::time::timeout(WAIT, plaintext).await.unwrap();
    assert!(
        refused.is_err(),
        "a plaintext call was answered: {refused:?}"
    );

    let tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(ca))
        .domain_name(COORDINATOR_NAME);
    let channel = Endpoint::from_shared(format!("https://{addr}"))
        .unwrap()
        .tls_config(tls)
        .unwrap()
        .connect_timeout(Duration::from_secs(5))
        .connect()
        .await
        .unwrap();
    let err = AgentClient::new(channel).renew(probe).await.unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated, "{err}");
}

/// Starts the fleet and checks that the agents reach the coordinators over TLS with tokens
/// (see [`assert_tls_and_tokens_enforced`]).
pub async fn start(options: FleetOptions) -> Fleet {
    init_logs();
    let Scheduler::Rota { coordinators, .. } = &options.scheduler else {
        panic!("the end-to-end scenarios run rota");
    };
    assert!(coordinators.tls, "the end-to-end scenarios run with TLS");
    let fleet = Fleet::start(options).await.unwrap();
    let ca = ResourceKey::new(
        GroupResource::core("configmaps"),
        Some(SYSTEM_NAMESPACE),
        "rota-ca",
    );
    let ca = fleet
        .wait_for("the coordinator's CA published", WAIT, |fleet| {
            fleet
                .store()
                .get(&ca)
                .ok()
                .and_then(|cm| {
                    cm.pointer("/data/ca.crt")
                        .and_then(Value::as_str)
                        .map(str::to_string)
                })
                .ok_or_else(|| "no CA ConfigMap yet".to_string())
        })
        .await
        .unwrap();
    assert_tls_and_tokens_enforced(&fleet, &ca).await;
    fleet
}

/// Runs until every node is done (or nothing moved for `stall`, or `deadline`), and returns
/// the report with the time it took.
pub async fn run(fleet: &Fleet, deadline: Duration, stall: Duration) -> (Report, Duration) {
    let began = Instant::now();
    let stopped = fleet
        .run_to_end(deadline, stall, Duration::from_millis(200), |_| {})
        .await;
    let report = fleet.report(stopped);
    (report, began.elapsed())
}

/// The safety invariants, whatever else happened: no PDB broken, never more nodes down than
/// allowed, never two control-plane nodes down at once, no node maintained twice, no fencing token persisted on or acted with by two
/// nodes, and every token an agent acted with was persisted for its own node by a coordinator.
pub fn assert_safe(fleet: &Fleet, report: &Report) {
    let verdict = fleet.verdict();
    let text = format!("{}\n{}", report.render(), verdict.render());
    assert!(
        !verdict.lost_track,
        "the safety monitor missed changes\n{text}"
    );
    assert!(
        verdict.violations.is_empty(),
        "PDB violations: {:?}\n{text}",
        verdict.violations
    );
    assert!(
        verdict.max_unavailable.overall.count <= report.max_unavailable,
        "{:?} down at once, {} allowed\n{text}",
        verdict.max_unavailable.overall,
        report.max_unavailable
    );
    assert!(
        verdict.max_unavailable.control_plane.count <= 1,
        "{:?} control-plane nodes down at once\n{text}",
        verdict.max_unavailable.control_plane
    );
    let maintained: Vec<String> = fleet.persisted_tokens().into_values().flatten().collect();
    let lost: Vec<_> = verdict.pods_lost_on(&maintained).collect();
    assert!(
        lost.is_empty(),
        "pods lost on nodes rota maintained: {lost:?}\n{text}"
    );
    assert_eq!(
        report.pdb_violations, 0,
        "PDB violations: {:?}\n{text}",
        report.pdb_violation_details
    );
    assert!(
        report.max_unavailable_observed <= report.max_unavailable,
        "{} nodes down at once, {} allowed\n{text}",
        report.max_unavailable_observed,
        report.max_unavailable
    );
    assert!(
        report.max_control_plane_unavailable_observed <= 1,
        "{} control-plane nodes down at once\n{text}",
        report.max_control_plane_unavailable_observed
    );
    assert!(
        report.maintained_more_than_once.is_empty(),
        "maintained more than once: {:?}\n{text}",
        report.maintained_more_than_once
    );
    assert_eq!(report.fencing_tokens_unique, Some(true), "{text}");
    let persisted = fleet.persisted_tokens();
    for (token, nodes) in fleet.host_tokens() {
        let granted = persisted.get(&token).cloned().unwrap_or_default();
        assert!(
            nodes.is_subset(&granted),
            "agents of {nodes:?} acted with token {token}, persisted for {granted:?}\n{text}"
        );
    }
    assert!(report.invariants_hold(), "{text}");
}

/// [`assert_safe`], and every node done, each maintained exactly as often as planned (once,
/// or once per minor of a Kubernetes upgrade).
pub fn assert_complete(fleet: &Fleet, report: &Report) {
    assert_safe(fleet, report);
    let text = report.render();
    assert_eq!(report.stopped, Stopped::AllDone, "{text}");
    assert!(report.complete(), "{text}");
    assert!(report.maintained_exactly_once, "{text}");
    let counts = fleet.maintenance_counts();
    let planned = fleet.options().expected_maintenances();
    assert_eq!(counts.len(), report.nodes, "{counts:?}");
    assert!(counts.values().all(|c| *c == planned), "{counts:?}");
}

/// The Node object of `node`.
pub fn node(fleet: &Fleet, node: &str) -> Value {
    let key = ResourceKey::new(GroupResource::core("nodes"), None, node);
    (*fleet.store().get(&key).unwrap()).clone()
}

/// The annotation `key` of `node`, if set.
pub fn annotation(node: &Value, key: &str) -> Option<String> {
    node.pointer("/metadata/annotations")
        .and_then(|a| a.get(key))
        .and_then(Value::as_str)
        .map(str::to_string)
}

/// The scenario's worker nodes, in order.
pub fn workers(fleet: &Fleet) -> Vec<String> {
    fleet
        .scenario()
        .nodes
        .iter()
        .filter(|n| !n.control_plane)
        .map(|n| n.name.clone())
        .collect()
}

/// Nodes that were ever unavailable (NotReady or cordoned), by when they first were, from the
/// emulator's record.
pub fn first_unavailable(fleet: &Fleet) -> BTreeMap<String, jiff::Timestamp> {
    let mut first = BTreeMap::new();
    for record in fleet.audit().nodes {
        if record.unavailable() {
            first.entry(record.node.clone()).or_insert(record.time);
        }
    }
    first
}

/// Nodes currently holding a rota slot.
pub fn slot_holders(fleet: &Fleet) -> BTreeSet<String> {
    fleet
        .scenario()
        .nodes
        .iter()
        .filter(|n| rota_sim::demo::slot_phase(&node(fleet, &n.name)).is_some())
        .map(|n| n.name.clone())
        .collect()
}

/// Prints how long a scenario took, for the test log.
pub fn print_timing(name: &str, took: Duration, report: &Report) {
    println!(
        "{name}: {:.1} s wall clock; makespan {:.1} s, {} / {} nodes done, most down at once {} (allowed {})",
        took.as_secs_f64(),
        report.makespan_seconds,
        report.nodes_done,
        report.nodes,
        report.max_unavailable_observed,
        report.max_unavailable
    );
}

/// Every node's slot phase now (`None`: no slot), with its fencing token.
pub fn slot_states(fleet: &Fleet) -> BTreeMap<String, Option<(u64, SlotPhase)>> {
    fleet
        .scenario()
        .nodes
        .iter()
        .map(|n| {
            let node = node(fleet, &n.name);
            let token = annotation(&node, SLOT_ANNOTATION)
                .and_then(|s| serde_json::from_str::<Value>(&s).ok())
                .and_then(|s| s.get("token").and_then(Value::as_u64));
            let state = token.zip(rota_sim::demo::slot_phase(&node));
            (n.name.clone(), state)
        })
        .collect()
}

/// Waits until a node's slot changes (one is admitted, changes phase or is released) and
/// returns `true`, or returns `false` once every node is done.
pub async fn wait_slot_change(fleet: &Fleet) -> bool {
    let before = slot_states(fleet);
    let total = fleet.scenario().nodes.len();
    fleet
        .wait_for("a slot to change, or every node done", WAIT, |fleet| {
            if fleet.done_nodes().len() == total {
                Ok(false)
            } else if slot_states(fleet) != before {
                Ok(true)
            } else {
                Err(format!(
                    "no slot changed; not done: {:?}",
                    fleet.not_done_reasons()
                ))
            }
        })
        .await
        .unwrap()
}

/// Polls `check` every `interval` until it returns `Some`, for state outside the API server
/// (a host's files); panics with `what` at the deadline.
pub async fn poll_until<T>(
    what: &str,
    timeout: Duration,
    interval: Duration,
    mut check: impl FnMut() -> Option<T>,
) -> T {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if let Some(value) = check() {
            return value;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        tokio::time::sleep(interval).await;
    }
}

/// The fencing tokens persisted on each node's slot annotation, by node.
pub fn tokens_by_node(fleet: &Fleet) -> BTreeMap<String, BTreeSet<u64>> {
    let mut by_node: BTreeMap<String, BTreeSet<u64>> = BTreeMap::new();
    for (token, nodes) in fleet.persisted_tokens() {
        for node in nodes {
            by_node.entry(node).or_default().insert(token);
        }
    }
    by_node
}

/// Every node was granted exactly one slot: no coordinator restart, failover or agent restart
/// made rota grant a node twice.
pub fn assert_one_grant_per_node(fleet: &Fleet) {
    let by_node = tokens_by_node(fleet);
    assert_eq!(by_node.len(), fleet.scenario().nodes.len(), "{by_node:?}");
    assert!(by_node.values().all(|t| t.len() == 1), "{by_node:?}");
}

/// Changes the simulated cluster's faults (API errors and latency included) while it runs.
pub fn set_faults(fleet: &Fleet, change: impl FnOnce(&mut Faults)) {
    let cluster = fleet.cluster().unwrap();
    let mut faults = cluster.faults();
    change(&mut faults);
    cluster.set_faults(faults);
}

/// The coordinators' options and the policy of a rota fleet, to adjust before it starts.
pub fn rota_settings(
    options: &mut FleetOptions,
) -> (&mut CoordinatorOptions, &mut MaintenancePolicySpec) {
    match &mut options.scheduler {
        Scheduler::Rota {
            coordinators,
            policy: Some(policy),
            ..
        } => (coordinators, policy.as_mut()),
        _ => panic!("a rota fleet with a policy"),
    }
}

/// The fleet's MaintenancePolicy as stored.
pub fn policy(fleet: &Fleet) -> Value {
    let key = ResourceKey::new(
        GroupResource::new("rota.dev", "maintenancepolicies"),
        None,
        POLICY_NAME,
    );
    (*fleet.store().get(&key).unwrap()).clone()
}

/// Pauses or resumes the fleet's policy (`spec.paused`), retrying on write conflicts with the
/// coordinator.
pub fn set_paused(fleet: &Fleet, paused: bool) {
    let key = ResourceKey::new(
        GroupResource::new("rota.dev", "maintenancepolicies"),
        None,
        POLICY_NAME,
    );
    for _ in 0..20 {
        let mut policy = (*fleet.store().get(&key).unwrap()).clone();
        policy["spec"]["paused"] = Value::Bool(paused);
        match fleet.store().update(&key, policy) {
            Ok(_) => return,
            Err(e) if e.code() == 409 => continue,
            Err(e) => panic!("setting paused={paused} on the policy: {e}"),
        }
    }
    panic!("setting paused={paused} on the policy: conflicts all along");
}

/// The status (`True`/`False`) of the policy's condition `kind`.
pub fn condition(policy: &Value, kind: &str) -> Option<String> {
    policy
        .pointer("/status/conditions")?
        .as_array()?
        .iter()
        .find(|c| c.get("type").and_then(Value::as_str) == Some(kind))
        .and_then(|c| c.get("status").and_then(Value::as_str))
        .map(str::to_string)
}

/// The policy's waiting-reason summary of kind `kind`: how many nodes wait for it, and the
/// examples (node → reason in words).
pub fn waiting_reason(policy: &Value, kind: &str) -> Option<(i64, BTreeMap<String, String>)> {
    let reason = policy
        .pointer("/status/waitingReasons")?
        .as_array()?
        .iter()
        .find(|r| r.get("reason").and_then(Value::as_str) == Some(kind))?;
    let count = reason.get("count").and_then(Value::as_i64).unwrap_or(0);
    let examples = reason
        .get("examples")
        .and_then(Value::as_object)
        .map(|e| {
            e.iter()
                .map(|(node, why)| (node.clone(), why.as_str().unwrap_or("").to_string()))
                .collect()
        })
        .unwrap_or_default();
    Some((count, examples))
}

/// Calls `on_write` with every write `store` makes from now on, in order, on a task that ends
/// when the returned follower is dropped; [`WriteFollower::lagged`] says whether it fell behind
/// (then it missed writes, and what it concluded is not to be trusted), and
/// [`WriteFollower::caught_up`] waits until it has judged the store's last write.
pub fn follow_writes(
    store: &Store,
    mut on_write: impl FnMut(&StoreEvent) + Send + 'static,
) -> WriteFollower {
    let mut events = store.subscribe_all();
    // Subscribed first: every write after this resourceVersion reaches the task.
    let (judged, seen) = tokio::sync::watch::channel(store.resource_version());
    let lagged = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let fell_behind = lagged.clone();
    let task = tokio::spawn(async move {
        loop {
            match events.recv().await {
                Ok(event) => {
                    on_write(&event);
                    judged.send_replace(event.resource_version);
                }
                Err(RecvError::Lagged(_)) => {
                    fell_behind.store(true, std::sync::atomic::Ordering::SeqCst);
                }
                Err(RecvError::Closed) => return,
            }
        }
    });
    WriteFollower { task, lagged, seen }
}

/// A task following a store's writes ([`follow_writes`]); stopped when dropped.
pub struct WriteFollower {
    task: tokio::task::JoinHandle<()>,
    lagged: Arc<std::sync::atomic::AtomicBool>,
    /// The resourceVersion of the last write judged.
    seen: tokio::sync::watch::Receiver<u64>,
}

impl WriteFollower {
    /// Whether it fell behind and missed writes.
    pub fn lagged(&self) -> bool {
        self.lagged.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Waits until it has judged every write `store` had made when called (the store outlives
    /// the fleet's tasks, so its end is no signal), then fails the test if it missed any.
    pub async fn caught_up(&self, store: &Store) {
        let last = store.resource_version();
        let mut seen = self.seen.clone();
        let judged = tokio::time::timeout(WAIT, seen.wait_for(|rv| *rv >= last))
            .await
            .is_ok_and(|r| r.is_ok());
        let at = *seen.borrow();
        assert!(
            judged,
            "the follower judged writes up to {at}, not {last}, within {WAIT:?}"
        );
        assert!(!self.lagged(), "the follower fell behind and missed writes");
    }
}

impl Drop for WriteFollower {
    fn drop(&mut self) {
        self.task.abort();
    }
}

#[derive(Debug, Default)]
struct TimelineRecord {
    /// Token → the node it was first persisted on and the resourceVersion of that write.
    tokens: BTreeMap<u64, (String, u64)>,
    /// ResourceVersion of the first policy status with `CircuitOpen=True`.
    circuit_opened: Option<u64>,
}

/// The order in which the API server saw slots admitted and the circuit breaker open, by
/// resourceVersion (one global, increasing counter): what "after the breaker opened" means.
pub struct Timeline {
    record: Arc<Mutex<TimelineRecord>>,
    follower: WriteFollower,
}

impl Timeline {
    /// Starts following `fleet`'s store. Writes before the start are not seen; they came
    /// before anything the scenarios ask about.
    pub fn start(fleet: &Fleet) -> Timeline {
        let record = Arc::new(Mutex::new(TimelineRecord::default()));
        let shared = record.clone();
        let follower = follow_writes(fleet.store(), move |event| {
            let rv = event.resource_version;
            let mut record = shared.lock().unwrap();
            if event.resource == GroupResource::core("nodes") {
                let token = annotation(&event.object, SLOT_ANNOTATION)
                    .and_then(|s| serde_json::from_str::<Value>(&s).ok())
                    .and_then(|s| s.get("token").and_then(Value::as_u64));
                if let Some(token) = token {
                    let node = meta::name(&event.object).to_string();
                    record.tokens.entry(token).or_insert((node, rv));
                }
            } else if event.resource == GroupResource::new("rota.dev", "maintenancepolicies")
                && record.circuit_opened.is_none()
                && condition(&event.object, CIRCUIT_OPEN).as_deref() == Some("True")
            {
                record.circuit_opened = Some(rv);
            }
        });
        Timeline { record, follower }
    }

    /// Where the breaker opened, if it did.
    pub fn circuit_opened(&self) -> Option<u64> {
        self.record.lock().unwrap().circuit_opened
    }

    /// Tokens first persisted after resourceVersion `rv`, with their node.
    pub fn tokens_after(&self, rv: u64) -> Vec<(u64, String)> {
        assert!(!self.follower.lagged(), "the timeline missed writes");
        let record = self.record.lock().unwrap();
        record
            .tokens
            .iter()
            .filter(|(_, (_, at))| *at > rv)
            .map(|(token, (node, _))| (*token, node.clone()))
            .collect()
    }
}

/// Every `events.k8s.io/v1` Event in the fleet's store.
pub fn events(fleet: &Fleet) -> Vec<Arc<Value>> {
    events_in(fleet.store())
}

/// Every `events.k8s.io/v1` Event in `store`.
pub fn events_in(store: &Store) -> Vec<Arc<Value>> {
    store
        .list(
            &GroupResource::new("events.k8s.io", "events"),
            None,
            &ListOptions::default(),
        )
        .unwrap()
        .items
}

/// The Events rota recorded about `node`: (reason, note), oldest first.
pub fn events_about(fleet: &Fleet, node: &str) -> Vec<(String, String)> {
    events_about_in(fleet.store(), node)
}

/// The Events rota recorded in `store` about `node`: (reason, note), oldest first.
pub fn events_about_in(store: &Store, node: &str) -> Vec<(String, String)> {
    let mut about: Vec<(String, String, String)> = events_in(store)
        .iter()
        .filter(|e| meta::str_at(e, "/regarding/name") == node)
        .map(|e| {
            (
                meta::str_at(e, "/eventTime").to_string(),
                meta::str_at(e, "/reason").to_string(),
                meta::str_at(e, "/note").to_string(),
            )
        })
        .collect();
    about.sort();
    about
        .into_iter()
        .map(|(_, reason, note)| (reason, note))
        .collect()
}
