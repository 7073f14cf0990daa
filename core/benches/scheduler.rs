//! One scheduling decision over a large fleet: 5,000 nodes, 150,000 evictable pods, 2,000 PDBs
//! and 500 queued requests. Target: median and p99 under 50 ms.
//!
//! Run: `cargo bench -p rota-coordinator --bench scheduler`.

use std::collections::BTreeMap;
use std::hint::black_box;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use jiff::{SignedDuration, Timestamp};
use k8s_openapi::api::policy::v1::{PodDisruptionBudget, PodDisruptionBudgetSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use rota_core::drain::pdb::PdbIndex;
use rota_core::model::{
    FencingToken, Operation, Origin, Slot, SlotPhase, SlotRequest, UpgradeReboot,
};
use rota_core::policy::{KubeVersion, MaintenancePolicySpec, NamespacedName, validate};
use rota_core::scheduler::{
    ControlPlanePod, EvictablePod, NodeState, PdbState, Pool, Snapshot, schedule,
};

const NODES: usize = 5_000;
const PODS_PER_NODE: usize = 30;
const NAMESPACES: usize = 400;
const PDBS_PER_NAMESPACE: usize = 5;
const APPS_PER_NAMESPACE: usize = 7;
const QUEUED: usize = 500;
const HELD_SLOTS: usize = 40;
const RUNS: usize = 20;
const TARGET: Duration = Duration::from_millis(50);

/// xorshift64*: a fixed, dependency-free pseudo-random sequence so every run sees the same fleet.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

fn app_labels(app: usize) -> BTreeMap<String, String> {
    [("app".to_owned(), format!("app-{app}"))].into()
}

/// The fleet, with PDB coverage computed the way the controller would (through [`PdbIndex`]).
fn fleet(now: Timestamp) -> (Snapshot, Duration) {
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
    let spec = |max: serde_json::Value| -> MaintenancePolicySpec {
        serde_json::from_value(serde_json::json!({
            "maxUnavailable": max,
            "windows": [{"start": "00:00", "end": "23:59", "timeZone": "Europe/Berlin"}],
            "blackouts": [{"start": "2025-12-20T00:00:00Z", "end": "2026-01-05T00:00:00Z"}],
            "blockers": {"prometheus": {"url": "http://prometheus:9090", "alertFilter": "^Watchdog$"}},
        }))
        .unwrap_or_else(|e| panic!("benchmark policy does not parse: {e}"))
    };
    let pools: Vec<Pool> = [
        ("control-plane", serde_json::json!(1)),
        ("workers-a", serde_json::json!("10%")),
        ("workers-b", serde_json::json!("10%")),
        ("workers-c", serde_json::json!("5%")),
    ]
    .into_iter()
    .map(|(name, max)| Pool {
        name: name.to_owned(),
        policy: Arc::new(
            validate(&spec(max))
                .unwrap_or_else(|errors| panic!("benchmark policy is invalid: {errors:?}")),
        ),
        failures: 0,
        firing_alerts: vec!["Watchdog".to_owned()],
        alerts_unknown: None,
        rollout_held: None,
    })
    .collect();

    // PDBs: each covers one app of its namespace; two apps per namespace have none.
    let mut index = PdbIndex::default();
    let mut pdbs = Vec::new();
    for ns in 0..NAMESPACES {
        for app in 0..PDBS_PER_NAMESPACE {
            let key = NamespacedName::new(format!("ns-{ns}"), format!("pdb-{app}"));
            index.apply(&PodDisruptionBudget {
                metadata: ObjectMeta {
                    namespace: Some(key.namespace.clone()),
                    name: Some(key.name.clone()),
                    ..ObjectMeta::default()
                },
                spec: Some(PodDisruptionBudgetSpec {
                    selector: Some(LabelSelector {
                        match_labels: Some(app_labels(app)),
                        match_expressions: None,
                    }),
                    ..PodDisruptionBudgetSpec::default()
                }),
                status: None,
            });
            pdbs.push(PdbState {
                key,
                disruptions_allowed: 1 + rng.below(5) as i32,
            });
        }
    }

    let started = Instant::now();
    let mut nodes = Vec::with_capacity(NODES);
    for i in 0..NODES {
        let control_plane = i < 5;
        let pool = if control_plane {
            "control-plane"
        } else {
            ["workers-a", "workers-b", "workers-c"][i % 3]
        };
        let evictable_pods = (0..PODS_PER_NODE)
            .map(|p| {
                let ns = rng.below(NAMESPACES);
                let app = rng.below(APPS_PER_NAMESPACE);
                let namespace = format!("ns-{ns}");
                let pdbs = index
                    .covering(&namespace, &app_labels(app))
                    .into_iter()
                    .map(|pdb| NamespacedName::new(pdb.namespace, pdb.name))
                    .collect();
                EvictablePod {
                    pod: NamespacedName::new(namespace, format!("app-{app}-{i}-{p}")),
                    pdbs,
                }
            })
            .collect();
        nodes.push(NodeState {
            name: format!("node-{i:04}"),
            pools: vec![pool.to_owned()],
            ready: rng.below(200) != 0,
            unschedulable: rng.below(300) == 0,
            cordoned_by_rota: false,
            control_plane,
            control_plane_pods: if control_plane {
                ControlPlanePod::COMPONENTS
                    .iter()
                    .map(|component| ControlPlanePod {
                        pod: NamespacedName::new("kube-system", format!("{component}-{i}")),
                        component: (*component).to_owned(),
                        ready: true,
                        version: None,
                    })
                    .collect()
            } else {
                Vec::new()
            },
            kubelet_version: Some(KubeVersion::new(1, 33, 1)),
            zone: Some(format!("zone-{}", i % 3)),
            evictable_pods,
            blocking_pods: Vec::new(),
            etcd: Default::default(),
        });
    }
    let coverage = started.elapsed();

    let slots = (0..HELD_SLOTS)
        .map(|k| {
            let node = 100 + k * 97;
            Slot {
                node: format!("node-{node:04}"),
                operation: Operation::Reboot,
                origin: Origin::Agent,
                token: FencingToken(k as u64 + 1),
                phase: if k % 2 == 0 {
                    SlotPhase::Draining
                } else {
                    SlotPhase::Granted
                },
                admitted_at: now,
                phase_since: now,
                granted_at: None,
                lease_expires_at: now,
                boot_id_before: None,
                cordoned_by_rota: true,
            }
        })
        .collect();
    let queue = (0..QUEUED)
        .map(|k| {
            let node = (k * 10 + 3) % NODES;
            SlotRequest {
                node: format!("node-{node:04}"),
                operation: Operation::PackageUpgrade {
                    security_only: true,
                    reboot: UpgradeReboot::IfRequired,
                    packages: Vec::new(),
                },
                origin: if k % 50 == 0 {
                    Origin::Manual
                } else {
                    Origin::Agent
                },
                requested_at: now - SignedDuration::from_secs(rng.below(86_400) as i64),
                not_before: None,
            }
        })
        .collect();
    let snapshot = Snapshot {
        pools,
        nodes,
        api_server_version: Some(KubeVersion::new(1, 33, 1)),
        slots,
        queue,
        pdbs,
    };
    (snapshot, coverage)
}

fn main() -> ExitCode {
    let now: Timestamp = match "2025-06-04T12:00:00Z".parse() {
        Ok(t) => t,
        Err(e) => panic!("benchmark timestamp: {e}"),
    };
    let (snapshot, coverage) = fleet(now);
    let pods: usize = snapshot.nodes.iter().map(|n| n.evictable_pods.len()).sum();
    println!(
        "fleet: {} nodes, {pods} pods, {} PDBs, {} queued, {} slots held",
        snapshot.nodes.len(),
        snapshot.pdbs.len(),
        snapshot.queue.len(),
        snapshot.slots.len()
    );
    println!(
        "PDB coverage of {pods} pods via PdbIndex: {coverage:.1?} (controller side, informational)"
    );

    let warm_up = schedule(&snapshot, now);
    println!(
        "plan: {} admitted, {} waiting",
        warm_up.admit.len(),
        warm_up.waiting.len()
    );
    for pool in &snapshot.pools {
        let reasons: Vec<String> = warm_up
            .waiting_summary(&pool.name)
            .iter()
            .map(|s| format!("{} {}", s.reason, s.count))
            .collect();
        println!("  {} waiting: {}", pool.name, reasons.join(", "));
    }
    let mut samples: Vec<Duration> = (0..RUNS)
        .map(|_| {
            let started = Instant::now();
            let plan = schedule(black_box(&snapshot), black_box(now));
            let elapsed = started.elapsed();
            black_box(plan);
            elapsed
        })
        .collect();
    samples.sort_unstable();
    let median = samples[RUNS / 2];
    let p99 = samples[((RUNS * 99).div_ceil(100)).saturating_sub(1)];
    let pass = median < TARGET && p99 < TARGET;
    println!(
        "schedule(): median {median:.2?}, p99 {p99:.2?}, min {:.2?} over {RUNS} runs; target < {TARGET:?}: {}",
        samples[0],
        if pass { "PASS" } else { "FAIL" }
    );
    if pass {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
