//! The `rotactl` binary against the emulated API server, through a kubeconfig the test writes:
//! what `status`, `history`, `report` and `watch` show, and what `reboot`, `upgrade`, `pause`,
//! `resume` and `release` write.

// Test helpers panic on failure, like the tests that call them.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use jiff::{SignedDuration, Timestamp};
use k8s_openapi::api::core::v1::{Event as CoreEvent, Node, ObjectReference};
use k8s_openapi::api::events::v1::Event;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, MicroTime, ObjectMeta, Time};
use kube::api::{Patch, PatchParams, PostParams};
use kube::{Api, Client, CustomResourceExt};
use rota_core::model::{
    FencingToken, Operation, Origin, Slot, SlotPhase, SlotRequest, UpgradeReboot,
};
use rota_core::policy::crd::WaitingReasonSummary;
use rota_core::policy::{MaintenancePolicy, MaintenancePolicySpec, MaintenancePolicyStatus};
use rota_core::records::{
    MaintenanceRecord, MaintenanceRecordSpec, NodeVersions, PackageChange, RecordOrigin,
    RecordOutcome,
};
use rota_core::slots::persist::encode_entry;
use rota_core::slots::{
    Finished, HeldSlot, Holding, NodeEntry, QueuedRequest, TransitionReason, Waiting,
};
use rota_sim::apiserver::{ApiServer, ServerHandle, Store};
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::Command;

/// An emulated cluster with the CRD installed and a kubeconfig for it.
struct Cluster {
    store: Store,
    client: Client,
    kubeconfig: PathBuf,
    _dir: tempfile::TempDir,
    _server: ServerHandle,
}

async fn cluster() -> Cluster {
    let store = Store::new();
    let server = ApiServer::start(store.clone(), SocketAddr::from((Ipv4Addr::LOCALHOST, 0)))
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let kubeconfig = dir.path().join("kubeconfig");
    std::fs::write(&kubeconfig, server.kubeconfig()).unwrap();
    let client = Client::try_from(kube::Config::new(server.url().parse().unwrap())).unwrap();
    for crd in [MaintenancePolicy::crd(), MaintenanceRecord::crd()] {
        Api::<CustomResourceDefinition>::all(client.clone())
            .create(&PostParams::default(), &crd)
            .await
            .unwrap();
    }
    Cluster {
        store,
        client,
        kubeconfig,
        _dir: dir,
        _server: server,
    }
}

/// What a run of rotactl left.
struct Run {
    code: i32,
    stdout: String,
    stderr: String,
}

impl Cluster {
    fn command(&self, args: &[&str]) -> Command {
        let mut command = Command::new(env!("CARGO_BIN_EXE_rotactl"));
        command
            .arg("--kubeconfig")
            .arg(&self.kubeconfig)
            .args(args)
            .stdin(Stdio::null())
            .kill_on_drop(true);
        command
    }

    async fn rotactl(&self, args: &[&str]) -> Run {
        let output = tokio::time::timeout(Duration::from_secs(60), self.command(args).output())
            .await
            .expect("rotactl finishes")
            .unwrap();
        Run {
            code: output.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
        }
    }

    async fn ok(&self, args: &[&str]) -> String {
        let run = self.rotactl(args).await;
        assert_eq!(run.code, 0, "rotactl {args:?} failed: {}", run.stderr);
        run.stdout
    }

    fn node(&self, name: &str, labels: &[&str], entry: Option<&NodeEntry>) {
        let annotations = encode_entry(name, entry).unwrap();
        let mut map = BTreeMap::new();
        annotations.apply_to(&mut map);
        let node: Node = serde_json::from_value(json!({
            "metadata": {
                "name": name,
                "labels": labels.iter().map(|l| (l.to_string(), String::new())).collect::<BTreeMap<_, _>>(),
                "annotations": map,
            },
            "status": {"conditions": [{"type": "Ready", "status": "True"}]}
        }))
        .unwrap();
        self.store.create_as(&node).unwrap();
    }

    fn annotations(&self, node: &str) -> BTreeMap<String, String> {
        self.store
            .get_as::<Node>(None, node)
            .unwrap()
            .metadata
            .annotations
            .unwrap_or_default()
    }

    fn set_annotations(&self, node: &str, entry: Option<&NodeEntry>) {
        let annotations = encode_entry(node, entry).unwrap();
        self.store
            .modify_as::<Node>(None, node, |n| {
                annotations.apply_to(n.metadata.annotations.get_or_insert_default());
            })
            .unwrap();
    }

    async fn policy(&self, name: &str, spec: MaintenancePolicySpec) {
        let policy = MaintenancePolicy::new(name, spec);
        self.policies()
            .create(&PostParams::default(), &policy)
            .await
            .unwrap();
    }

    async fn policy_status(&self, name: &str, status: MaintenancePolicyStatus) {
        self.policies()
            .patch_status(
                name,
                &PatchParams::default(),
                &Patch::Merge(json!({ "status": status })),
            )
            .await
            .unwrap();
    }

    fn policies(&self) -> Api<MaintenancePolicy> {
        Api::all(self.client.clone())
    }

    async fn paused(&self, name: &str) -> bool {
        self.policies().get(name).await.unwrap().spec.paused
    }
}

fn at(seconds_ago: i64) -> Timestamp {
    Timestamp::now() - SignedDuration::from_secs(seconds_ago)
}

fn queued(node: &str, origin: Origin, seconds_ago: i64) -> NodeEntry {
    NodeEntry {
        holding: Holding::Queued(QueuedRequest {
            request: SlotRequest {
                node: node.into(),
                operation: Operation::Reboot,
                origin,
                requested_at: at(seconds_ago),
                not_before: None,
            },
            note: String::new(),
        }),
        last: None,
        waiting: Waiting::default(),
    }
}

fn held(node: &str, phase: SlotPhase, token: u64) -> NodeEntry {
    NodeEntry {
        holding: Holding::Held(HeldSlot {
            slot: Slot {
                node: node.into(),
                operation: Operation::PackageUpgrade {
                    security_only: true,
                    reboot: UpgradeReboot::IfRequired,
                    packages: Vec::new(),
                },
                origin: Origin::Agent,
                token: FencingToken(token),
                phase,
                admitted_at: at(600),
                phase_since: at(300),
                granted_at: None,
                lease_expires_at: at(-60),
                boot_id_before: Some("boot-1".into()),
                cordoned_by_rota: true,
            },
            requested_at: at(900),
            note: String::new(),
            progress: None,
            completion: None,
        }),
        last: None,
        waiting: Waiting::default(),
    }
}

fn done(token: u64) -> NodeEntry {
    NodeEntry {
        holding: Holding::Idle,
        last: Some(Finished {
            token: Some(FencingToken(token)),
            operation: Operation::Reboot,
            reason: TransitionReason::Verified,
            at: at(3600),
            message: "healthy".into(),
        }),
        waiting: Waiting::default(),
    }
}

/// The next line of a child's output, within a deadline.
async fn next_line(lines: &mut tokio::io::Lines<BufReader<tokio::process::ChildStdout>>) -> String {
    tokio::time::timeout(Duration::from_secs(30), lines.next_line())
        .await
        .expect("a line within the deadline")
        .unwrap()
        .expect("more output")
}

fn node_json<'a>(status: &'a Value, name: &str) -> &'a Value {
    status["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|n| n["node"] == name)
        .unwrap_or_else(|| panic!("node {name} in {status}"))
}

#[tokio::test]
async fn status_shows_slots_queue_positions_and_why_nodes_wait() {
    let c = cluster().await;
    c.node("n1", &[], Some(&held("n1", SlotPhase::Granted, 7)));
    c.node("n2", &[], Some(&queued("n2", Origin::Agent, 500)));
    c.node("n3", &[], Some(&queued("n3", Origin::Manual, 10)));
    c.node(
        "cp1",
        &["node-role.kubernetes.io/control-plane"],
        Some(&queued("cp1", Origin::Agent, 20)),
    );
    c.node("n4", &[], Some(&done(3)));
    c.node("n5", &[], None);
    c.policy("workers", MaintenancePolicySpec::default()).await;
    c.policy_status(
        "workers",
        MaintenancePolicyStatus {
            waiting_reasons: vec![WaitingReasonSummary {
                reason: "MaxUnavailable".into(),
                count: 1,
                examples: BTreeMap::from([(
                    "n2".to_owned(),
                    "maxUnavailable 1 reached (n1 holds a slot)".to_owned(),
                )]),
            }],
            ..MaintenancePolicyStatus::default()
        },
    )
    .await;

    let status: Value = serde_json::from_str(&c.ok(&["status", "-o", "json"]).await).unwrap();
    let n1 = node_json(&status, "n1");
    assert_eq!(n1["state"], "granted");
    assert_eq!(n1["token"], 7);
    assert_eq!(n1["operation"], "security-upgrade");
    assert_eq!(n1["pools"], json!(["workers"]));
    // Manual first, then control-plane, then first come first served.
    assert_eq!(node_json(&status, "n3")["queuePosition"], 1);
    assert_eq!(node_json(&status, "cp1")["queuePosition"], 2);
    let n2 = node_json(&status, "n2");
    assert_eq!(n2["queuePosition"], 3);
    assert_eq!(
        n2["detail"],
        json!(["maxUnavailable 1 reached (n1 holds a slot)"])
    );
    assert_eq!(node_json(&status, "n4")["state"], "done");
    assert_eq!(node_json(&status, "n5")["state"], "idle");
    let pool = &status["pools"][0];
    assert_eq!(
        (
            &pool["nodes"],
            &pool["done"],
            &pool["inProgress"],
            &pool["waiting"]
        ),
        (&json!(6), &json!(1), &json!(1), &json!(3))
    );
    assert_eq!(pool["waitingReasons"], json!(["MaxUnavailable: 1"]));

    let table = c.ok(&["status", "--active"]).await;
    let header = table
        .lines()
        .find(|l| l.starts_with("NODE"))
        .expect("a node table");
    for column in [
        "POOL",
        "STATE",
        "OPERATION",
        "TOKEN",
        "SINCE",
        "QUEUE",
        "DETAIL",
    ] {
        assert!(header.contains(column), "{header}");
    }
    let n1_line = table.lines().find(|l| l.starts_with("n1 ")).unwrap();
    assert!(
        n1_line.contains("granted") && n1_line.contains(" 7 "),
        "{n1_line}"
    );
    assert!(
        !table.lines().any(|l| l.starts_with("n5 ")),
        "--active hides idle nodes"
    );
    assert!(table.contains("workers"), "{table}");
}

#[tokio::test]
async fn status_explains_nodes_without_or_with_two_pools() {
    let c = cluster().await;
    c.node("lonely", &[], Some(&queued("lonely", Origin::Agent, 5)));
    c.node("both", &["gpu"], Some(&queued("both", Origin::Agent, 5)));
    let gpu = |key: &str| MaintenancePolicySpec {
        node_selector: serde_json::from_value(json!({"matchLabels": {key: ""}})).unwrap(),
        ..MaintenancePolicySpec::default()
    };
    c.policy("gpu-a", gpu("gpu")).await;
    c.policy("gpu-b", gpu("gpu")).await;
    let status: Value = serde_json::from_str(&c.ok(&["status", "-o", "json"]).await).unwrap();
    let lonely = node_json(&status, "lonely")["detail"].to_string();
    assert!(lonely.contains("no MaintenancePolicy selects"), "{lonely}");
    let both = node_json(&status, "both")["detail"].to_string();
    assert!(
        both.contains("several MaintenancePolicies (gpu-a, gpu-b)"),
        "{both}"
    );

    let only_a: Value =
        serde_json::from_str(&c.ok(&["status", "-o", "json", "--pool", "gpu-a"]).await).unwrap();
    assert_eq!(only_a["pools"].as_array().unwrap().len(), 1);
    assert_eq!(only_a["nodes"].as_array().unwrap().len(), 1);
}

#[tokio::test]
async fn reboot_and_upgrade_write_the_annotation_the_controller_reads() {
    let c = cluster().await;
    c.node("n1", &[], None);
    let said = c.ok(&["reboot", "n1"]).await;
    assert!(said.contains("reboot requested"), "{said}");
    assert_eq!(
        c.annotations("n1")["rota.dev/maintenance-requested"],
        "reboot"
    );
    c.ok(&["upgrade", "n1", "--security-only"]).await;
    assert_eq!(
        c.annotations("n1")["rota.dev/maintenance-requested"],
        "security-upgrade"
    );
    c.ok(&["upgrade", "n1"]).await;
    assert_eq!(
        c.annotations("n1")["rota.dev/maintenance-requested"],
        "upgrade"
    );
    c.ok(&["kubelet-restart", "n1"]).await;
    assert_eq!(
        c.annotations("n1")["rota.dev/maintenance-requested"],
        "kubelet-restart"
    );
    let status: Value = serde_json::from_str(&c.ok(&["status", "-o", "json"]).await).unwrap();
    assert_eq!(node_json(&status, "n1")["requested"], "kubelet-restart");

    assert!(
        c.ok(&["history", "n1"])
            .await
            .contains("no Events about this node")
    );

    let missing = c.rotactl(&["reboot", "nope"]).await;
    assert_eq!(missing.code, 1);
    assert!(
        missing.stderr.contains("node nope not found"),
        "{}",
        missing.stderr
    );
}

#[tokio::test]
async fn pause_and_resume_patch_spec_paused() {
    let c = cluster().await;
    c.policy("workers", MaintenancePolicySpec::default()).await;
    // With one policy its name may be left out.
    assert!(c.ok(&["pause"]).await.contains("pool workers paused"));
    assert!(c.paused("workers").await);
    assert!(c.ok(&["pause", "workers"]).await.contains("already paused"));
    assert!(c.ok(&["resume", "workers"]).await.contains("resumed"));
    assert!(!c.paused("workers").await);
    assert!(c.ok(&["resume"]).await.contains("not paused"));

    c.policy("db", MaintenancePolicySpec::default()).await;
    let ambiguous = c.rotactl(&["pause"]).await;
    assert_eq!(ambiguous.code, 1);
    assert!(
        ambiguous
            .stderr
            .contains("several MaintenancePolicies (db, workers)"),
        "{}",
        ambiguous.stderr
    );
    let unknown = c.rotactl(&["pause", "web"]).await;
    assert_eq!(unknown.code, 1);
    assert!(
        unknown.stderr.contains("MaintenancePolicy web not found"),
        "{}",
        unknown.stderr
    );
}

fn condition(kind: &str, status: bool) -> Condition {
    Condition {
        type_: kind.into(),
        status: if status { "True" } else { "False" }.into(),
        reason: "Test".into(),
        message: String::new(),
        last_transition_time: Time(Timestamp::now()),
        observed_generation: None,
    }
}

#[tokio::test]
async fn resume_closes_an_open_circuit_breaker_through_a_seen_pause() {
    let c = cluster().await;
    c.policy("workers", MaintenancePolicySpec::default()).await;
    c.policy_status(
        "workers",
        MaintenancePolicyStatus {
            observed_generation: Some(1),
            failed: 2,
            conditions: vec![condition("CircuitOpen", true), condition("Paused", false)],
            ..MaintenancePolicyStatus::default()
        },
    )
    .await;
    let resume = tokio::spawn({
        let command = c.command(&["resume", "workers", "--timeout", "30s"]);
        async move {
            let mut command = command;
            command.output().await.unwrap()
        }
    });
    // Play the coordinator: once the pause is written, report it.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while !c.paused("workers").await {
        assert!(tokio::time::Instant::now() < deadline, "no pause written");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let generation = c
        .policies()
        .get("workers")
        .await
        .unwrap()
        .metadata
        .generation;
    c.policy_status(
        "workers",
        MaintenancePolicyStatus {
            observed_generation: generation,
            conditions: vec![condition("CircuitOpen", false), condition("Paused", true)],
            ..MaintenancePolicyStatus::default()
        },
    )
    .await;
    let output = tokio::time::timeout(Duration::from_secs(60), resume)
        .await
        .unwrap()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{stdout} {}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(stdout.contains("circuit breaker is open"), "{stdout}");
    assert!(
        !c.paused("workers").await,
        "resumed after the pause was seen"
    );
}

#[tokio::test]
async fn release_asks_unless_told_yes() {
    let c = cluster().await;
    c.node("stuck", &[], Some(&held("stuck", SlotPhase::Failed, 12)));
    c.node("idle", &[], None);

    // stdin is not a terminal: no answer is possible, nothing is written.
    let refused = c.rotactl(&["release", "stuck"]).await;
    assert_eq!(refused.code, 1);
    assert!(
        refused.stderr.contains("not confirmed"),
        "{}",
        refused.stderr
    );
    assert!(!c.annotations("stuck").contains_key("rota.dev/release"));

    let said = c.ok(&["release", "stuck", "--yes"]).await;
    assert!(said.contains("failed, token 12"), "{said}");
    assert_eq!(c.annotations("stuck")["rota.dev/release"], "true");

    let nothing = c.ok(&["release", "idle", "-y"]).await;
    assert!(nothing.contains("holds no slot"), "{nothing}");
    assert!(!c.annotations("idle").contains_key("rota.dev/release"));
}

fn new_event(name: &str, node: &str, reason: &str, seconds_ago: i64) -> Event {
    Event {
        metadata: ObjectMeta {
            name: Some(name.into()),
            namespace: Some("default".into()),
            ..ObjectMeta::default()
        },
        event_time: Some(MicroTime(at(seconds_ago))),
        regarding: Some(ObjectReference {
            kind: Some("Node".into()),
            name: Some(node.into()),
            api_version: Some("v1".into()),
            ..ObjectReference::default()
        }),
        reason: Some(reason.into()),
        note: Some(format!("{reason} on {node}")),
        type_: Some("Normal".into()),
        reporting_controller: Some("rota-coordinator".into()),
        reporting_instance: Some("rota-coordinator-0".into()),
        action: Some("Maintain".into()),
        ..Event::default()
    }
}

#[tokio::test]
async fn history_merges_both_event_apis_oldest_first() {
    let c = cluster().await;
    c.node("n1", &[], None);
    c.store
        .create_as(&new_event("e1", "n1", "SlotAdmitted", 300))
        .unwrap();
    c.store
        .create_as(&new_event("e2", "n1", "MaintenanceSucceeded", 60))
        .unwrap();
    c.store
        .create_as(&new_event("e3", "other", "SlotAdmitted", 200))
        .unwrap();
    c.store
        .create_as(&CoreEvent {
            metadata: ObjectMeta {
                name: Some("k1".into()),
                namespace: Some("default".into()),
                ..ObjectMeta::default()
            },
            involved_object: ObjectReference {
                kind: Some("Node".into()),
                name: Some("n1".into()),
                ..ObjectReference::default()
            },
            reason: Some("NodeNotReady".into()),
            message: Some("Node n1 status is now: NodeNotReady".into()),
            type_: Some("Normal".into()),
            last_timestamp: Some(Time(at(120))),
            count: Some(2),
            ..CoreEvent::default()
        })
        .unwrap();

    let history: Value =
        serde_json::from_str(&c.ok(&["history", "n1", "-o", "json"]).await).unwrap();
    assert_eq!(history["records"], json!([]));
    let events = &history["events"];
    let reasons: Vec<&str> = events
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["reason"].as_str().unwrap())
        .collect();
    assert_eq!(
        reasons,
        ["SlotAdmitted", "NodeNotReady", "MaintenanceSucceeded"]
    );
    assert_eq!(events[1]["count"], 2);
    assert_eq!(events[0]["source"], "rota-coordinator");

    let table = c.ok(&["history", "n1"]).await;
    let mut lines = table.lines().skip_while(|l| !l.starts_with("AGE"));
    assert!(lines.next().is_some(), "{table}");
    assert_eq!(lines.count(), 3, "{table}");
    assert!(table.starts_with("no maintenance records"), "{table}");
}

fn record(node: &str, token: i64, days_ago: i64, outcome: RecordOutcome) -> MaintenanceRecord {
    let admitted = at(days_ago * 86_400);
    let mut spec = MaintenanceRecordSpec {
        node: node.into(),
        pool: Some("workers".into()),
        operation: "package-upgrade".into(),
        origin: RecordOrigin::Manual,
        requested_by: "rotactl".into(),
        token,
        outcome,
        reason: "package-upgrade verified, \"all good\"".into(),
        before: NodeVersions {
            kernel: "6.1.0-13".into(),
            ..NodeVersions::default()
        },
        after: Some(NodeVersions {
            kernel: "6.1.0-18".into(),
            ..NodeVersions::default()
        }),
        packages_changed: vec![
            PackageChange {
                name: "openssl".into(),
                from: "3.0.11".into(),
                to: "3.0.15".into(),
                security: true,
            },
            PackageChange {
                name: "curl".into(),
                from: "7.88.1-10".into(),
                to: "7.88.1-11".into(),
                security: false,
            },
        ],
        packages_changed_count: 2,
        ..MaintenanceRecordSpec::default()
    };
    spec.phases.admitted = Some(Time(admitted));
    if outcome == RecordOutcome::Succeeded {
        spec.phases.verified = Some(Time(admitted + SignedDuration::from_secs(300)));
        spec.phases.ended = spec.phases.verified.clone();
        spec.duration = "5m0s".into();
    } else {
        spec.phases.failed = Some(Time(admitted + SignedDuration::from_secs(600)));
    }
    MaintenanceRecord::new(&format!("{node}-{token}"), spec)
}

#[tokio::test]
async fn history_and_report_read_the_maintenance_records() {
    let c = cluster().await;
    c.node("n1", &[], None);
    let api: Api<MaintenanceRecord> = Api::all(c.client.clone());
    for r in [
        record("n1", 1, 40, RecordOutcome::Succeeded),
        record("n1", 5, 2, RecordOutcome::Succeeded),
        record("n2", 6, 1, RecordOutcome::Failed),
    ] {
        let mut r = r;
        r.metadata.labels = Some(BTreeMap::from([(
            "rota.dev/node".to_string(),
            r.spec.node.clone(),
        )]));
        api.create(&PostParams::default(), &r).await.unwrap();
    }

    // A node's history: its records (oldest first), then its Events.
    let table = c.ok(&["history", "n1"]).await;
    let first = table.lines().next().unwrap();
    assert!(first.starts_with("STARTED"), "{table}");
    let rows: Vec<&str> = table
        .lines()
        .skip(1)
        .take_while(|l| !l.is_empty())
        .collect();
    assert_eq!(rows.len(), 2, "{table}");
    assert!(
        rows[0].contains("40d ago") && rows[1].contains("2d ago"),
        "{table}"
    );
    assert!(rows[1].contains("manual (rotactl)"), "{table}");
    assert!(rows[1].contains("6.1.0-13 -> 6.1.0-18"), "{table}");
    assert!(table.contains("no Events about this node"), "{table}");

    // Every node's records of the last week, as JSON and CSV.
    let json: Value =
        serde_json::from_str(&c.ok(&["history", "--since", "7d", "-o", "json"]).await).unwrap();
    let names: Vec<&str> = json["records"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["n1-5", "n2-6"]);
    assert_eq!(json["records"][0]["packagesChanged"][0]["from"], "3.0.11");
    let csv = c.ok(&["history", "--since", "7d", "-o", "csv"]).await;
    let lines: Vec<&str> = csv.lines().collect();
    assert_eq!(lines.len(), 3, "{csv}");
    assert!(lines[0].starts_with("name,node,pool,operation,"), "{csv}");
    assert!(
        lines[1].starts_with("n1-5,n1,workers,package-upgrade,"),
        "{csv}"
    );
    assert!(
        lines[1].ends_with(",\"package-upgrade verified, \"\"all good\"\"\""),
        "quoted: {csv}"
    );

    // The change report: the last 30 days, per pool.
    let report: Value =
        serde_json::from_str(&c.ok(&["report", "--since", "30d", "-o", "json"]).await).unwrap();
    let pools = report["pools"].as_array().unwrap();
    assert_eq!(pools.len(), 1, "{report}");
    let workers = &pools[0];
    assert_eq!(workers["pool"], "workers");
    assert_eq!(workers["maintenances"], 2);
    assert_eq!(workers["nodesMaintained"], 1);
    assert_eq!(workers["failures"], 1);
    assert_eq!(workers["medianCycleSeconds"], 300);
    // Packages changed also in the failed maintenance: they were applied all the same.
    assert_eq!(workers["securityUpdatesApplied"], 2);
    assert_eq!(workers["packagesChanged"], 4);
    let table = c.ok(&["report"]).await;
    assert!(table.contains("MEDIAN CYCLE"), "{table}");
    assert!(
        table
            .lines()
            .any(|l| l.starts_with("workers") && l.contains("5m0s")),
        "{table}"
    );
    let everything: Value =
        serde_json::from_str(&c.ok(&["report", "--since", "60d", "-o", "json"]).await).unwrap();
    assert_eq!(everything["pools"][0]["maintenances"], 3);
}

#[tokio::test]
async fn watch_follows_the_rollout_until_done() {
    let c = cluster().await;
    c.node("n1", &[], Some(&held("n1", SlotPhase::Draining, 4)));
    c.node("n2", &[], Some(&done(2)));
    c.policy("workers", MaintenancePolicySpec::default()).await;

    let mut child = c
        .command(&["watch", "--until-done", "--timeout", "60s"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let first = next_line(&mut lines).await;
    assert!(
        first.ends_with(
            "workers  [##########----------]  1/2 done, 1 in progress, 0 waiting, 0 failed"
        ),
        "{first}"
    );
    // The slot finishes: the watch sees it, reports the pool done, and exits.
    c.set_annotations("n1", Some(&done(4)));
    let second = next_line(&mut lines).await;
    assert!(second.contains("2/2 done, 0 in progress"), "{second}");
    assert_eq!(
        next_line(&mut lines).await,
        "rollout done: no node is queued or in maintenance"
    );
    let status = tokio::time::timeout(Duration::from_secs(30), child.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(status.success());
}

#[tokio::test]
async fn watch_gives_up_at_its_timeout() {
    let c = cluster().await;
    c.node("n1", &[], Some(&held("n1", SlotPhase::Failed, 4)));
    let run = c
        .rotactl(&["watch", "--until-done", "--timeout", "2s"])
        .await;
    assert_eq!(run.code, 1);
    assert!(run.stderr.contains("not done within 2s"), "{}", run.stderr);
}

/// Text from annotations (anyone with Node patch rights) and from agents (through their
/// reports) never reaches the terminal raw: no escape sequence, no forged line. Names that are
/// not Kubernetes object names (`worker-03/status` would be another API path) are refused
/// before any request, and change nothing.
#[tokio::test]
async fn hostile_text_and_names_never_reach_the_terminal_raw() {
    let c = cluster().await;
    let mut entry = queued("n1", Origin::Agent, 60);
    if let Holding::Queued(q) = &mut entry.holding {
        q.note = "waiting\n2026-12-05 INFO node n2 released\u{1b}[2J".into();
    }
    c.node("n1", &[], Some(&entry));
    c.store
        .modify_as::<Node>(None, "n1", |n| {
            n.metadata.annotations.get_or_insert_default().insert(
                "rota.dev/maintenance-requested".into(),
                "reboot\u{1b}]0;owned\u{7}".into(),
            );
        })
        .unwrap();
    let mut event = new_event("e1", "n1", "SlotAdmitted", 30);
    event.note = Some("admitted\n\u{1b}[31mFORGED ROW\u{1b}[0m".into());
    c.store.create_as(&event).unwrap();
    c.policy("workers", MaintenancePolicySpec::default()).await;

    for args in [&["status"][..], &["history", "n1"][..]] {
        let out = c.ok(args).await;
        assert!(
            !out.chars().any(|ch| ch.is_control() && ch != '\n'),
            "rotactl {args:?} printed a control character:\n{out:?}"
        );
        assert!(
            !out.lines()
                .any(|l| l.starts_with("2026-12-05") || l.starts_with("FORGED")),
            "rotactl {args:?} printed a forged line:\n{out}"
        );
    }
    assert!(c.ok(&["status"]).await.contains("\\u{1b}[2J"));

    for args in [
        &["reboot", "n1/status"][..],
        &["release", "-y", "n1/../n2"][..],
        &["pause", "workers/status"][..],
        &["status", "--pool", "Workers"][..],
    ] {
        let run = c.rotactl(args).await;
        assert_ne!(run.code, 0, "rotactl {args:?} was accepted");
        assert!(
            run.stderr.contains("not a valid Kubernetes object name"),
            "rotactl {args:?}: {}",
            run.stderr
        );
    }
    assert!(!c.paused("workers").await);
    assert_eq!(
        c.annotations("n1")
            .get("rota.dev/maintenance-requested")
            .map(String::as_str),
        Some("reboot\u{1b}]0;owned\u{7}"),
        "the refused reboot wrote nothing"
    );
}

/// A kubeadm node at `version`: control-plane nodes with their static kube-apiserver and etcd
/// mirror pods.
fn kubeadm_node(cluster: &Cluster, name: &str, control_plane: bool, version: &str) {
    let mut labels = BTreeMap::from([("pool".to_owned(), "all".to_owned())]);
    if control_plane {
        labels.insert(
            "node-role.kubernetes.io/control-plane".to_owned(),
            String::new(),
        );
    }
    let node: Node = serde_json::from_value(json!({
        "metadata": {"name": name, "labels": labels},
        "status": {
            "conditions": [{"type": "Ready", "status": "True"}],
            "nodeInfo": {"kubeletVersion": format!("v{version}"), "machineID": "", "systemUUID": "",
                "bootID": "b", "kernelVersion": "", "osImage": "", "containerRuntimeVersion": "",
                "kubeProxyVersion": "", "operatingSystem": "linux", "architecture": "amd64"},
        }
    }))
    .unwrap();
    cluster.store.create_as(&node).unwrap();
    if !control_plane {
        return;
    }
    for (component, image) in [
        (
            "kube-apiserver",
            format!("registry.k8s.io/kube-apiserver:v{version}"),
        ),
        ("etcd", "registry.k8s.io/etcd:3.5.15-0".to_owned()),
    ] {
        let pod: k8s_openapi::api::core::v1::Pod = serde_json::from_value(json!({
            "metadata": {"name": format!("{component}-{name}"), "namespace": "kube-system",
                "labels": {"component": component, "tier": "control-plane"}},
            "spec": {"nodeName": name, "containers": [{"name": component, "image": image}]},
            "status": {"phase": "Running", "conditions": [{"type": "Ready", "status": "True"}]},
        }))
        .unwrap();
        cluster.store.create_as(&pod).unwrap();
    }
}

#[tokio::test]
async fn plan_shows_the_rollout_order_and_kubernetes_upgrade_refuses_a_downgrade() {
    let cluster = cluster().await;
    for (name, control_plane) in [("cp-2", true), ("cp-1", true), ("w-1", false)] {
        kubeadm_node(&cluster, name, control_plane, "1.30.9");
    }
    cluster
        .policy(
            "all",
            serde_json::from_value(json!({
                "nodeSelector": {"matchLabels": {"pool": "all"}},
                "maxUnavailable": 2,
                "controlPlane": {"allowEtcdQuorumLoss": true},
            }))
            .unwrap(),
        )
        .await;
    let nothing = cluster.ok(&["plan"]).await;
    assert!(
        nothing.contains("no pool sets upgrade.kubernetesVersion"),
        "{nothing}"
    );

    // A downgrade changes nothing.
    let run = cluster
        .rotactl(&["kubernetes-upgrade", "--to", "1.29.3", "all"])
        .await;
    assert_eq!(run.code, 1, "{}", run.stdout);
    assert!(
        run.stderr
            .contains("cp-1 runs 1.30.9, newer than the target 1.29.3"),
        "{}",
        run.stderr
    );
    let policy = cluster.policies().get("all").await.unwrap();
    assert_eq!(policy.spec.upgrade.kubernetes_version, None);

    let set = cluster
        .ok(&["kubernetes-upgrade", "--to", "1.32.4", "all"])
        .await;
    assert!(
        set.contains("upgrade.kubernetesVersion set to 1.32.4"),
        "{set}"
    );
    let policy = cluster.policies().get("all").await.unwrap();
    assert_eq!(
        policy.spec.upgrade.kubernetes_version.as_deref(),
        Some("1.32.4")
    );

    let plan = cluster.ok(&["plan", "all", "-o", "json"]).await;
    let plans: Value = serde_json::from_str(&plan).unwrap();
    let rows = plans[0]["rows"].as_array().unwrap();
    let order: Vec<(&str, &str, &str, &str)> = rows
        .iter()
        .map(|r| {
            (
                r["node"].as_str().unwrap(),
                r["to"].as_str().unwrap(),
                r["kubeadm"].as_str().unwrap(),
                r["state"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        order,
        [
            ("cp-1", "1.31", "apply", "next"),
            ("cp-2", "1.31", "node", "waiting"),
            ("w-1", "1.31", "node", "waiting"),
        ]
    );
    assert_eq!(rows[0]["snapshot"], true, "{plan}");
    assert_eq!(rows[2]["snapshot"], false, "{plan}");
    let why = |i: usize| rows[i]["blocked"].to_string();
    assert!(
        why(1).contains("kubeadm upgrade apply v1.31.0"),
        "{}",
        why(1)
    );
    assert!(why(2).contains("control-plane nodes first"), "{}", why(2));

    let table = cluster.ok(&["plan"]).await;
    assert!(
        table.contains("pool all: Kubernetes 1.32.4 — not started"),
        "{table}"
    );
    assert!(table.contains("control-plane"), "{table}");
    let status = cluster.ok(&["status"]).await;
    assert!(status.contains("KUBERNETES UPGRADE"), "{status}");
    assert!(status.contains("1.32.4 PreFlight"), "{status}");
}
