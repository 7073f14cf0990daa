//! `rota-sim campaign`: rota through many seeded scenarios, each with a random size, PDB
//! shapes (from the scenario's seed), `maxUnavailable`, number of coordinator replicas, one or
//! two pools, and a random handful of faults — killed coordinators, a leader killed mid-drain,
//! an agent killed mid-upgrade, API errors and latency, watches dropped with the history
//! compacted (so they resume into 410 Gone), a node that never returns, a kubelet that fails
//! after its reboot, pods slow to terminate, workers short of room for evicted pods — judged
//! like the demo, by the independent safety monitor.
//!
//! Run `i` of a campaign started at seed `S` uses seed `S + i`, which decides everything about
//! it: `rota-sim campaign --runs 1 --seed S+i` replays it. A run passes when no invariant broke
//! (budgets, nodes down at once, control-plane nodes down at once, nodes maintained twice), no
//! fencing token was granted twice, and every node without an injected node fault is done —
//! or rota stopped for a reason it must stop for: its circuit breaker opened or failed nodes
//! hold its capacity, or (with the workers short of room) the nodes left are held back by
//! PodDisruptionBudgets whose pods have nowhere to go.
//! The exit status is 1 when any run failed.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::{self, Write as _};
use std::path::PathBuf;
use std::time::Duration;

use clap::Args;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, LabelSelectorRequirement};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use rota_core::model::SlotPhase;
use rota_core::policy::{Selector, conditions};
use rota_core::slots::persist::REQUEST_ANNOTATION;
use serde::Serialize;
use serde_json::Value;

use super::fleet::{Fleet, FleetOptions, Scheduler, demo_policy, slot_phase};
use super::report::{Report, Stopped};
use super::{Error, Result};
use crate::apiserver::{FaultConfig, GroupResource, ListOptions, ResourceKey, meta};
use crate::cluster::args::parse_duration;
use crate::cluster::scenario::{ZONE_LABEL, ZONES};
use crate::cluster::{Faults, Scenario};

/// Flags of `rota-sim campaign`.
#[derive(Clone, Debug, Args)]
pub struct CampaignArgs {
    /// Scenarios to run.
    #[clap(long, env = "ROTA_CAMPAIGN_RUNS", default_value_t = 10)]
    pub runs: usize,
    /// Seed of the first scenario; scenario `i` uses `seed + i`.
    #[clap(long, env = "ROTA_CAMPAIGN_SEED", default_value_t = 1)]
    pub seed: u64,
    /// Fewest nodes of a scenario.
    #[clap(long, env = "ROTA_CAMPAIGN_MIN_NODES", default_value_t = 6)]
    pub min_nodes: usize,
    /// Most nodes of a scenario.
    #[clap(long, env = "ROTA_CAMPAIGN_MAX_NODES", default_value_t = 24)]
    pub max_nodes: usize,
    /// How long one scenario may take before its unfinished nodes count as stuck.
    #[clap(long, env = "ROTA_CAMPAIGN_RUN_TIMEOUT", default_value = "4m", value_parser = parse_duration)]
    pub run_timeout: Duration,
    /// Write every run's outcome as JSON to this file.
    #[clap(long, env = "ROTA_CAMPAIGN_REPORT")]
    pub report: Option<PathBuf>,
}

impl Default for CampaignArgs {
    fn default() -> Self {
        CampaignArgs {
            runs: 10,
            seed: 1,
            min_nodes: 6,
            max_nodes: 24,
            run_timeout: Duration::from_secs(240),
            report: None,
        }
    }
}

/// One injected fault.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase", tag = "kind")]
pub enum Fault {
    /// Coordinator replica `replica` dies `after` the rollout started and stays down for `down`.
    KillCoordinator {
        /// Which replica.
        replica: usize,
        /// When, from the rollout's start.
        after: Duration,
        /// How long it stays down.
        down: Duration,
    },
    /// The leading replica dies while a node drains and stays down for `down`.
    KillLeaderMidDrain {
        /// How long it stays down.
        down: Duration,
    },
    /// The agent of a node that is upgrading (its slot granted, drained) dies and stays down
    /// for `down`.
    KillAgentMidUpgrade {
        /// How long it stays down.
        down: Duration,
    },
    /// This share of API requests fails with one of `codes`.
    ApiErrors {
        /// Share of requests, 0..1.
        rate: f64,
        /// The status codes.
        codes: Vec<u16>,
    },
    /// Every API request waits this long.
    Latency {
        /// The added latency.
        latency: Duration,
    },
    /// Every `every`, the API server forgets its watch history and drops every watch, so that
    /// clients resume from a resourceVersion that is gone (410) and list again.
    WatchDropsAndCompaction {
        /// The period.
        every: Duration,
    },
    /// The node stays down after its reboot.
    NeverReturns {
        /// The node.
        node: String,
    },
    /// The node's kubelet stays NotReady once the node has rebooted.
    KubeletFails {
        /// The node.
        node: String,
    },
    /// The pods of a Deployment take `seconds` (simulated) to stop, as if draining long-lived
    /// connections: a drain waits for them, or times out and tries again later.
    SlowTermination {
        /// The Deployment's namespace.
        namespace: String,
        /// The Deployment.
        name: String,
        /// How long each pod takes to stop, in simulated seconds.
        seconds: i64,
    },
    /// The workers have room for only this share more pods than they run: pods evicted by a
    /// drain may stay Pending, holding their budgets down.
    CapacityExhaustion {
        /// Spare room, as a share of the running pods.
        headroom: f64,
    },
}

impl Fault {
    /// The node this fault takes out for good, if any.
    fn broken_node(&self) -> Option<&str> {
        match self {
            Fault::NeverReturns { node } | Fault::KubeletFails { node } => Some(node),
            _ => None,
        }
    }
}

impl fmt::Display for Fault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = |d: &Duration| d.as_secs_f64();
        match self {
            Fault::KillCoordinator {
                replica,
                after,
                down,
            } => write!(
                f,
                "coordinator {replica} killed at {:.1} s for {:.1} s",
                s(after),
                s(down)
            ),
            Fault::KillLeaderMidDrain { down } => {
                write!(f, "leader killed mid-drain for {:.1} s", s(down))
            }
            Fault::KillAgentMidUpgrade { down } => {
                write!(f, "agent killed mid-upgrade for {:.1} s", s(down))
            }
            Fault::ApiErrors { rate, codes } => {
                write!(f, "API errors {:.0}% {codes:?}", rate * 100.0)
            }
            Fault::Latency { latency } => {
                write!(f, "API latency {} ms", latency.as_millis())
            }
            Fault::WatchDropsAndCompaction { every } => {
                write!(
                    f,
                    "watches dropped + history compacted every {:.1} s",
                    s(every)
                )
            }
            Fault::NeverReturns { node } => write!(f, "{node} never returns"),
            Fault::KubeletFails { node } => write!(f, "{node}'s kubelet fails after its reboot"),
            Fault::SlowTermination {
                namespace,
                name,
                seconds,
            } => write!(f, "pods of {namespace}/{name} take {seconds} s to stop"),
            Fault::CapacityExhaustion { headroom } => {
                write!(f, "workers with {:.0}% spare room", headroom * 100.0)
            }
        }
    }
}

/// Everything one run does, drawn from its seed.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RunPlan {
    /// The scenario's seed (replay: `--runs 1 --seed SEED`).
    pub seed: u64,
    /// Nodes of the cluster.
    pub nodes: usize,
    /// rota's `maxUnavailable`.
    pub max_unavailable: u32,
    /// Coordinator replicas.
    pub coordinators: usize,
    /// A second pool: the nodes of one zone under their own policy and `maxUnavailable`
    /// (the main policy takes the other zones).
    pub pool: Option<ZonePool>,
    /// The faults injected.
    pub faults: Vec<Fault>,
    /// The campaign's fewest and most nodes, which the plan was drawn with.
    pub size_range: (usize, usize),
}

/// A pool of the nodes of one zone.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ZonePool {
    /// The zone (`topology.kubernetes.io/zone`).
    pub zone: String,
    /// The pool's `maxUnavailable`.
    pub max_unavailable: u32,
}

impl ZonePool {
    /// The policy's name.
    fn name(&self) -> String {
        format!("pool-{}", self.zone)
    }

    /// `zone In [the zone]` (`NotIn` for the main policy).
    fn selector(&self, operator: &str) -> LabelSelector {
        LabelSelector {
            match_expressions: Some(vec![LabelSelectorRequirement {
                key: ZONE_LABEL.into(),
                operator: operator.into(),
                values: Some(vec![self.zone.clone()]),
            }]),
            ..LabelSelector::default()
        }
    }
}

/// The kinds of fault a plan draws from.
const FAULT_KINDS: usize = 10;

impl RunPlan {
    /// The plan of the run with `seed`, its size between `min_nodes` and `max_nodes`.
    pub fn draw(seed: u64, min_nodes: usize, max_nodes: usize) -> RunPlan {
        // Not the scenario's own stream: the same seed must give the demo's cluster.
        let mut rng = StdRng::seed_from_u64(seed ^ 0x5eed_ca3e_0000_0000);
        let nodes = rng.random_range(min_nodes.max(2)..=max_nodes.max(min_nodes.max(2)));
        let max_unavailable =
            rng.random_range(1..=u32::try_from(nodes / 4).unwrap_or(1).clamp(1, 4));
        let mut coordinators = rng.random_range(1..=3usize);
        // A third of the runs split the fleet into two pools.
        let pool = (nodes >= 8 && rng.random_range(0..3) == 0).then(|| ZonePool {
            zone: ZONES[rng.random_range(0..ZONES.len())].to_string(),
            max_unavailable: rng.random_range(1..=2),
        });
        let scenario = Scenario::generate(nodes, seed);
        let workers = scenario.worker_names();
        let deployments = scenario.worker_deployments();
        let mut kinds: Vec<usize> = (0..FAULT_KINDS).collect();
        let count = rng.random_range(1..=3usize);
        let mut faults = Vec::new();
        let mut broken = BTreeSet::new();
        for _ in 0..count {
            let kind = kinds.swap_remove(rng.random_range(0..kinds.len()));
            let down = Duration::from_millis(rng.random_range(500..=4000));
            let fault = match kind {
                0 => {
                    coordinators = coordinators.max(2);
                    Fault::KillCoordinator {
                        replica: rng.random_range(0..coordinators),
                        after: Duration::from_millis(rng.random_range(0..=8000)),
                        down,
                    }
                }
                1 => {
                    coordinators = coordinators.max(2);
                    Fault::KillLeaderMidDrain { down }
                }
                2 => Fault::KillAgentMidUpgrade { down },
                3 => Fault::ApiErrors {
                    rate: f64::from(rng.random_range(1..=10u32)) / 100.0,
                    codes: vec![500, 429, 503],
                },
                4 => Fault::Latency {
                    latency: Duration::from_millis(rng.random_range(2..=40)),
                },
                5 => Fault::WatchDropsAndCompaction {
                    every: Duration::from_millis(rng.random_range(1000..=5000)),
                },
                8 => {
                    if deployments.is_empty() {
                        continue;
                    }
                    let (namespace, name) =
                        deployments[rng.random_range(0..deployments.len())].clone();
                    // From 5 to 25 simulated minutes: some within the drain's timeout, some
                    // beyond it (the demo policy's 15 s stand for 15 min).
                    Fault::SlowTermination {
                        namespace,
                        name,
                        seconds: rng.random_range(300..=1500),
                    }
                }
                9 => Fault::CapacityExhaustion {
                    headroom: f64::from(rng.random_range(0..=10u32)) / 100.0,
                },
                kind => {
                    let candidates: Vec<&String> =
                        workers.iter().filter(|w| !broken.contains(*w)).collect();
                    // Leave most of the fleet healthy: at most one broken node per four.
                    if candidates.is_empty() || broken.len() >= (nodes / 4).max(1) {
                        continue;
                    }
                    let node = candidates[rng.random_range(0..candidates.len())].clone();
                    broken.insert(node.clone());
                    if kind == 6 {
                        Fault::NeverReturns { node }
                    } else {
                        Fault::KubeletFails { node }
                    }
                }
            };
            faults.push(fault);
        }
        RunPlan {
            seed,
            nodes,
            max_unavailable,
            coordinators,
            pool,
            faults,
            size_range: (min_nodes, max_nodes),
        }
    }

    /// The command that runs this plan again.
    pub fn replay(&self) -> String {
        format!(
            "rota-sim campaign --runs 1 --seed {} --min-nodes {} --max-nodes {}",
            self.seed, self.size_range.0, self.size_range.1
        )
    }

    /// Nodes a fault takes out for good: they are not expected to finish.
    pub fn broken_nodes(&self) -> BTreeSet<String> {
        self.faults
            .iter()
            .filter_map(Fault::broken_node)
            .map(str::to_string)
            .collect()
    }

    fn describe(&self) -> String {
        let faults: Vec<String> = self.faults.iter().map(ToString::to_string).collect();
        let pool = self.pool.as_ref().map_or(String::new(), |p| {
            format!(" ({} maxUnavailable {})", p.name(), p.max_unavailable)
        });
        format!(
            "{} nodes, maxUnavailable {}{pool}, {} coordinator{}; {}",
            self.nodes,
            self.max_unavailable,
            self.coordinators,
            if self.coordinators == 1 { "" } else { "s" },
            faults.join(", ")
        )
    }

    /// The scheduler: rota with the demo's policy over every node, or, with a second pool,
    /// over the other zones' nodes and the pool's own policy over its zone's.
    fn scheduler(&self) -> Scheduler {
        let mut scheduler = Scheduler::rota(self.max_unavailable);
        if let Scheduler::Rota {
            coordinators,
            policy,
            pools,
            ..
        } = &mut scheduler
        {
            coordinators.replicas = self.coordinators;
            coordinators.tls = true;
            if let (Some(pool), Some(policy)) = (&self.pool, policy.as_mut()) {
                policy.node_selector = pool.selector("NotIn");
                let mut own = demo_policy(pool.max_unavailable);
                own.node_selector = pool.selector("In");
                pools.push((pool.name(), own));
            }
        }
        scheduler
    }
}

/// What one run showed.
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RunOutcome {
    /// What was run.
    pub plan: RunPlan,
    /// The run's report (invariants, makespan, bounds).
    pub report: Report,
    /// Nodes a fault took out for good.
    pub broken: BTreeSet<String>,
    /// Nodes without a node fault that were not done when the run ended, and why.
    pub stuck: Vec<(String, String)>,
    /// rota stopped the rollout because of the broken nodes (circuit open, or failed nodes
    /// holding its capacity), as it should, before every healthy node was done.
    pub halted: bool,
    /// The workers ran out of room (a capacity fault) and rota held the remaining healthy
    /// nodes back under their budgets rather than break one: which, and how many pods were
    /// unschedulable.
    pub held_for_room: Option<String>,
    /// A fencing token was persisted on more than one node.
    pub double_grant: bool,
    /// The run's wall-clock duration, seconds.
    pub seconds: f64,
}

impl RunOutcome {
    /// Whether the run held every invariant and finished every healthy node.
    pub fn passed(&self) -> bool {
        self.report.invariant_violations.is_empty() && !self.double_grant && self.stuck.is_empty()
    }

    /// One line for the campaign's output.
    pub fn line(&self, index: usize, runs: usize) -> String {
        let r = &self.report;
        let mut line = format!(
            "run {}/{runs} seed {}: {} — {}/{} done",
            index + 1,
            self.plan.seed,
            self.plan.describe(),
            r.nodes_done,
            r.nodes,
        );
        if !self.broken.is_empty() {
            let _ = write!(line, " ({} broken by a fault)", self.broken.len());
        }
        if self.halted {
            line.push_str(", halted by rota for the broken nodes");
        }
        if let Some(why) = &self.held_for_room {
            let _ = write!(line, ", out of room: {why}");
        }
        let _ = write!(
            line,
            ", makespan {:.1} s ({:.2}× bound), most down {}/{}",
            r.makespan_seconds,
            r.makespan_over_lower_bound,
            r.max_unavailable_observed,
            r.max_unavailable
        );
        if self.passed() {
            line.push_str(": ok");
        } else {
            let mut why: Vec<String> = r.invariant_violations.clone();
            if self.double_grant {
                why.push("a fencing token was granted twice".into());
            }
            for (node, reason) in &self.stuck {
                why.push(format!("{node} stuck: {reason}"));
            }
            let _ = write!(
                line,
                ": FAILED ({}); replay: {}",
                why.join("; "),
                self.plan.replay()
            );
        }
        line
    }
}

/// Whether some node holds a slot in `phase`, and which.
fn node_in_phase(fleet: &Fleet, phase: SlotPhase) -> Option<String> {
    let nodes = fleet
        .store()
        .list(&GroupResource::core("nodes"), None, &ListOptions::default())
        .ok()?;
    nodes
        .items
        .iter()
        .find(|n| slot_phase(n) == Some(phase))
        .and_then(|n| n.pointer("/metadata/name"))
        .and_then(serde_json::Value::as_str)
        .map(str::to_string)
}

/// Waits (up to `limit`) for a node in `phase`.
async fn wait_phase(fleet: &Fleet, phase: SlotPhase, limit: Duration) -> Option<String> {
    fleet
        .wait_for(&format!("a node {}", phase.as_str()), limit, |f| {
            node_in_phase(f, phase).ok_or_else(|| "none yet".to_string())
        })
        .await
        .ok()
}

/// Injects `fault` into the running `fleet`; returns once it is over.
async fn inject(fleet: &Fleet, fault: &Fault, limit: Duration) -> Result<()> {
    match fault {
        Fault::KillCoordinator {
            replica,
            after,
            down,
        } => {
            tokio::time::sleep(*after).await;
            fleet.kill_coordinator(*replica).await?;
            tokio::time::sleep(*down).await;
            fleet.restart_coordinator(*replica).await?;
        }
        Fault::KillLeaderMidDrain { down } => {
            if wait_phase(fleet, SlotPhase::Draining, limit)
                .await
                .is_some()
                && let Some(leader) = fleet.leader()
            {
                fleet.kill_coordinator(leader).await?;
                tokio::time::sleep(*down).await;
                fleet.restart_coordinator(leader).await?;
            }
        }
        Fault::KillAgentMidUpgrade { down } => {
            if let Some(node) = wait_phase(fleet, SlotPhase::Granted, limit).await {
                fleet.kill_agent(&node).await?;
                tokio::time::sleep(*down).await;
                fleet.restart_agent(&node).await?;
            }
        }
        Fault::ApiErrors { rate, codes } => {
            let cluster = fleet.cluster()?;
            let mut faults = cluster.faults();
            faults.api.error_rate = *rate;
            faults.api.error_codes.clone_from(codes);
            cluster.set_faults(faults);
        }
        Fault::Latency { latency } => {
            let cluster = fleet.cluster()?;
            let mut faults = cluster.faults();
            faults.api.latency = *latency;
            cluster.set_faults(faults);
        }
        Fault::WatchDropsAndCompaction { every } => {
            let mut ticks = tokio::time::interval(*every);
            ticks.tick().await;
            loop {
                ticks.tick().await;
                fleet.store().compact();
                fleet.server()?.faults().drop_watches();
            }
        }
        // Set before the fleet starts: they act when the node reboots or its kubelet starts,
        // or shape the scenario.
        Fault::NeverReturns { .. }
        | Fault::KubeletFails { .. }
        | Fault::SlowTermination { .. }
        | Fault::CapacityExhaustion { .. } => {}
    }
    Ok(())
}

/// How the rollout stands, judged from the objects.
#[derive(Debug, PartialEq, Eq)]
enum Progress {
    /// Healthy nodes are still on their way.
    Running(String),
    /// Every node without a node fault is done.
    HealthyDone,
    /// rota stopped the rollout because of the broken nodes — its circuit breaker is open, or
    /// failed nodes hold all of its capacity — and every healthy node is done or untouched.
    Halted,
    /// The workers are out of room (a capacity fault): pods are Pending as unschedulable, and
    /// every healthy node left is untouched, given back because a PodDisruptionBudget would not
    /// let its drain finish — its pods have nowhere to go without breaking the budget.
    NoRoom(String),
}

/// One of rota's policies, as the campaign judges whether it halted.
struct PoolView {
    name: String,
    selector: Selector,
    max_unavailable: usize,
}

impl PoolView {
    /// `fleet`'s policies.
    fn of(fleet: &Fleet) -> Vec<PoolView> {
        fleet
            .pools()
            .into_iter()
            .map(|(name, selector, max_unavailable)| PoolView {
                name,
                selector: Selector::parse(&selector).unwrap_or_else(|_| Selector::everything()),
                max_unavailable,
            })
            .collect()
    }
}

/// Where `fleet`'s rollout stands, `broken` being the nodes a fault took out and `pools` rota's
/// policies.
fn progress(
    fleet: &Fleet,
    broken: &BTreeSet<String>,
    pools: &[PoolView],
    short_of_room: bool,
) -> Progress {
    let done = fleet.done_nodes();
    let waiting = fleet.not_done_reasons();
    let healthy_waiting: Vec<(&String, &String)> = waiting
        .iter()
        .filter(|(n, _)| !broken.contains(*n))
        .collect();
    if healthy_waiting.is_empty() {
        return Progress::HealthyDone;
    }
    let nodes = fleet
        .store()
        .list(&GroupResource::core("nodes"), None, &ListOptions::default())
        .map(|l| l.items)
        .unwrap_or_default();
    let labels = |n: &Value| -> BTreeMap<String, String> {
        n.pointer("/metadata/labels")
            .and_then(|l| serde_json::from_value(l.clone()).ok())
            .unwrap_or_default()
    };
    let pool_of = |n: &Value| {
        let labels = labels(n);
        pools.iter().position(|p| p.selector.matches(&labels))
    };
    // A pool has halted when its circuit breaker is open or its broken nodes hold all of its
    // capacity: a failed slot, or a node a fault keeps NotReady (once its slot is given back it
    // still counts as unavailable, and rightly keeps the next node waiting).
    let halted: Vec<bool> = pools
        .iter()
        .enumerate()
        .map(|(i, pool)| {
            let failed = nodes
                .iter()
                .filter(|n| {
                    pool_of(n) == Some(i)
                        && (slot_phase(n) == Some(SlotPhase::Failed)
                            || (broken.contains(meta::name(n)) && !meta::node_ready(n)))
                })
                .count();
            circuit_open(fleet, &pool.name) || failed >= pool.max_unavailable
        })
        .collect();
    let untouched: BTreeSet<String> = untouched_nodes(&nodes);
    let excused = |name: &str| {
        untouched.contains(name)
            && nodes
                .iter()
                .find(|n| meta::name(n) == name)
                .and_then(|n| pool_of(n))
                .is_some_and(|i| halted[i])
    };
    if healthy_waiting.iter().all(|(n, _)| excused(n)) {
        return Progress::Halted;
    }
    if short_of_room {
        let held_by_budget = |name: &str| {
            untouched.contains(name)
                && nodes
                    .iter()
                    .find(|n| meta::name(n) == name)
                    .is_some_and(|n| {
                        n.pointer("/metadata/annotations")
                            .and_then(|a| a.get(REQUEST_ANNOTATION))
                            .and_then(Value::as_str)
                            .is_some_and(|r| r.contains("PodDisruptionBudget"))
                    })
        };
        let unschedulable = unschedulable_pods(fleet);
        if unschedulable > 0 && healthy_waiting.iter().all(|(n, _)| held_by_budget(n)) {
            let names: Vec<&str> = healthy_waiting.iter().map(|(n, _)| n.as_str()).collect();
            return Progress::NoRoom(format!(
                "{} held back by budgets, {unschedulable} pods unschedulable",
                names.join(", ")
            ));
        }
    }
    let (node, why) = healthy_waiting[0];
    Progress::Running(format!(
        "{}/{} done; {node}: {why}",
        done.len(),
        nodes.len()
    ))
}

/// Pods Pending because the scheduler found no node with room for them.
fn unschedulable_pods(fleet: &Fleet) -> usize {
    let pods = fleet
        .store()
        .list(&GroupResource::core("pods"), None, &ListOptions::default())
        .map(|l| l.items)
        .unwrap_or_default();
    pods.iter()
        .filter(|p| {
            p.pointer("/status/conditions")
                .and_then(Value::as_array)
                .is_some_and(|conditions| {
                    conditions.iter().any(|c| {
                        c.get("type").and_then(Value::as_str) == Some("PodScheduled")
                            && c.get("reason").and_then(Value::as_str) == Some("Unschedulable")
                    })
                })
        })
        .count()
}

/// Whether the circuit breaker of MaintenancePolicy `policy` is open.
fn circuit_open(fleet: &Fleet, policy: &str) -> bool {
    let policy = fleet.store().get(&ResourceKey::new(
        GroupResource::new("rota.dev", "maintenancepolicies"),
        None,
        policy,
    ));
    policy.is_ok_and(|p| {
        p.pointer("/status/conditions")
            .and_then(Value::as_array)
            .is_some_and(|conditions| {
                conditions.iter().any(|c| {
                    c.get("type").and_then(Value::as_str) == Some(conditions::CIRCUIT_OPEN)
                        && c.get("status").and_then(Value::as_str) == Some("True")
                })
            })
    })
}

/// Nodes rota has not touched (or has given back): Ready, schedulable, holding no slot.
fn untouched_nodes(nodes: &[std::sync::Arc<Value>]) -> BTreeSet<String> {
    nodes
        .iter()
        .filter(|n| meta::node_ready(n) && !meta::node_unschedulable(n) && slot_phase(n).is_none())
        .map(|n| meta::name(n).to_string())
        .collect()
}

/// Injects `plan`'s faults until the rollout is over (healthy nodes done, or halted because of
/// broken nodes) or `timeout`; how it ended (`None`: the timeout).
async fn until_over(
    fleet: &Fleet,
    plan: &RunPlan,
    broken: &BTreeSet<String>,
    timeout: Duration,
) -> Option<Progress> {
    let pools = PoolView::of(fleet);
    let short_of_room = plan
        .faults
        .iter()
        .any(|f| matches!(f, Fault::CapacityExhaustion { .. }));
    let over = fleet.wait_for("the rollout over", timeout, |f| {
        match progress(f, broken, &pools, short_of_room) {
            Progress::Running(why) => Err(why),
            ended => Ok(ended),
        }
    });
    let injections = futures::future::join_all(
        plan.faults
            .iter()
            .map(|fault| inject(fleet, fault, timeout)),
    );
    tokio::pin!(over, injections);
    let mut injected = false;
    loop {
        tokio::select! {
            ended = &mut over => return ended.ok(),
            results = &mut injections, if !injected => {
                injected = true;
                for result in results {
                    if let Err(e) = result {
                        tracing::warn!(error = %e, "a fault could not be injected");
                    }
                }
            }
        }
    }
}

/// Runs `plan` to its end: every node without a node fault done, or `timeout`.
pub async fn run_plan(plan: &RunPlan, timeout: Duration) -> Result<RunOutcome> {
    let began = std::time::Instant::now();
    let mut options = FleetOptions::new(plan.nodes, plan.seed, plan.max_unavailable);
    options.scheduler = plan.scheduler();
    let broken = plan.broken_nodes();
    let mut faults = Faults::none();
    for fault in &plan.faults {
        match fault {
            Fault::NeverReturns { node } => faults = faults.with_never_return(node),
            Fault::KubeletFails { node } => faults = faults.with_kubelet_failure_after_reboot(node),
            Fault::SlowTermination {
                namespace,
                name,
                seconds,
            } => options
                .slow_termination
                .push((namespace.clone(), name.clone(), *seconds)),
            Fault::CapacityExhaustion { headroom } => options.tight_capacity = Some(*headroom),
            _ => {}
        }
    }
    options.faults = faults;
    let fleet = Fleet::start(options).await?;
    let ended = until_over(&fleet, plan, &broken, timeout).await;
    // The judgement reads the store directly; the API faults stop mattering here.
    if let Ok(cluster) = fleet.cluster() {
        let mut faults = cluster.faults();
        faults.api = FaultConfig::default();
        cluster.set_faults(faults);
    }
    let stopped = if fleet.done_nodes().len() == plan.nodes {
        Stopped::AllDone
    } else {
        Stopped::Deadline
    };
    let report = fleet.report(stopped);
    // Stuck: a healthy node that is neither done nor untouched when the rollout is over, or
    // any unfinished healthy node when it never got there.
    let untouched = fleet
        .store()
        .list(&GroupResource::core("nodes"), None, &ListOptions::default())
        .map(|l| untouched_nodes(&l.items))
        .unwrap_or_default();
    let stuck = fleet
        .not_done_reasons()
        .into_iter()
        .filter(|(node, _)| {
            !broken.contains(node) && (ended.is_none() || !untouched.contains(node))
        })
        .collect();
    let halted = ended == Some(Progress::Halted);
    let held_for_room = match &ended {
        Some(Progress::NoRoom(why)) => Some(why.clone()),
        _ => None,
    };
    let double_grant = report.fencing_tokens_unique == Some(false);
    fleet.shutdown().await;
    Ok(RunOutcome {
        plan: plan.clone(),
        report,
        broken,
        stuck,
        halted,
        held_for_room,
        double_grant,
        seconds: began.elapsed().as_secs_f64(),
    })
}

/// The campaign's summary of `outcomes`.
pub fn summary(outcomes: &[RunOutcome]) -> String {
    let failed: Vec<&RunOutcome> = outcomes.iter().filter(|o| !o.passed()).collect();
    let violations: usize = outcomes
        .iter()
        .map(|o| o.report.invariant_violations.len())
        .sum();
    let double_grants = outcomes.iter().filter(|o| o.double_grant).count();
    let stuck: usize = outcomes.iter().map(|o| o.stuck.len()).sum();
    let mut ratios: Vec<f64> = outcomes
        .iter()
        .filter(|o| o.report.makespan_over_lower_bound > 0.0)
        .map(|o| o.report.makespan_over_lower_bound)
        .collect();
    ratios.sort_by(f64::total_cmp);
    let median = ratios.get(ratios.len() / 2).copied().unwrap_or(0.0);
    let worst = ratios.last().copied().unwrap_or(0.0);
    let mut out = format!(
        "campaign: {} runs, {} passed, {} failed; invariant violations {violations}, double grants {double_grants}, stuck nodes {stuck}; makespan over bound median {median:.2}, worst {worst:.2}",
        outcomes.len(),
        outcomes.len() - failed.len(),
        failed.len(),
    );
    for outcome in failed {
        let _ = write!(out, "\nreplay: {}", outcome.plan.replay());
    }
    out
}

/// Runs the campaign `args` describe, printing a line per run; the outcomes.
pub async fn run_campaign(args: &CampaignArgs) -> Result<Vec<RunOutcome>> {
    if args.min_nodes > args.max_nodes {
        return Err(Error::Invalid(format!(
            "--min-nodes {} is above --max-nodes {}",
            args.min_nodes, args.max_nodes
        )));
    }
    let mut outcomes = Vec::new();
    for i in 0..args.runs {
        let seed = args.seed.wrapping_add(i as u64);
        let plan = RunPlan::draw(seed, args.min_nodes, args.max_nodes);
        let outcome = run_plan(&plan, args.run_timeout).await?;
        println!("{}", outcome.line(i, args.runs));
        outcomes.push(outcome);
    }
    Ok(outcomes)
}

/// `rota-sim campaign`: the exit status is 1 when any run failed.
pub async fn run(args: CampaignArgs) -> Result<u8> {
    let outcomes = run_campaign(&args).await?;
    println!("{}", summary(&outcomes));
    if let Some(path) = &args.report {
        let text = serde_json::to_string_pretty(&outcomes)
            .map_err(|e| Error::Invalid(format!("report: {e}")))?;
        std::fs::write(path, text + "\n")?;
    }
    Ok(u8::from(outcomes.iter().any(|o| !o.passed())))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plans_are_replayable_and_cover_every_fault() {
        assert_eq!(RunPlan::draw(7, 6, 24), RunPlan::draw(7, 6, 24));
        let plans: Vec<RunPlan> = (0..200).map(|s| RunPlan::draw(s, 6, 24)).collect();
        let kinds: BTreeSet<String> = plans
            .iter()
            .flat_map(|p| p.faults.iter())
            .map(|f| {
                serde_json::to_value(f).unwrap()["kind"]
                    .as_str()
                    .unwrap()
                    .to_string()
            })
            .collect();
        assert_eq!(kinds.len(), FAULT_KINDS, "{kinds:?}");
        for plan in &plans {
            assert!((6..=24).contains(&plan.nodes), "{plan:?}");
            assert!(!plan.faults.is_empty(), "{plan:?}");
            assert!(plan.max_unavailable >= 1);
            assert!(
                plan.broken_nodes().len() <= (plan.nodes / 4).max(1),
                "{plan:?}"
            );
            let scenario = Scenario::generate(plan.nodes, plan.seed);
            for node in plan.broken_nodes() {
                assert!(
                    scenario.worker_names().contains(&node),
                    "{node} is no worker"
                );
            }
            for fault in &plan.faults {
                if let Fault::SlowTermination {
                    namespace, name, ..
                } = fault
                {
                    assert!(
                        scenario.clone().slow_down_termination(namespace, name, 60),
                        "{fault}"
                    );
                }
            }
            let kills_leader = plan.faults.iter().any(|f| {
                matches!(
                    f,
                    Fault::KillLeaderMidDrain { .. } | Fault::KillCoordinator { .. }
                )
            });
            assert!(!kills_leader || plan.coordinators >= 2, "{plan:?}");
        }
    }

    #[test]
    fn a_failed_run_says_how_to_replay_it() {
        let plan = RunPlan::draw(3, 6, 12);
        let report = Report::example();
        let mut outcome = RunOutcome {
            plan,
            report,
            broken: BTreeSet::new(),
            stuck: Vec::new(),
            halted: false,
            held_for_room: None,
            double_grant: false,
            seconds: 1.0,
        };
        assert!(outcome.passed(), "{}", outcome.line(0, 1));
        assert!(outcome.line(0, 1).ends_with(": ok"));
        outcome.double_grant = true;
        assert!(!outcome.passed());
        let line = outcome.line(0, 1);
        assert!(line.contains("granted twice"), "{line}");
        assert!(
            line.contains(
                "replay: rota-sim campaign --runs 1 --seed 3 --min-nodes 6 --max-nodes 12"
            ),
            "{line}"
        );
        let text = summary(&[outcome]);
        assert!(
            text.contains("1 failed") && text.contains("double grants 1"),
            "{text}"
        );
    }
}
