//! The summary of a rollout, computed from rota's independent safety monitor, the emulator's
//! own record and the simulated hosts — never from what rota (or the kured model) reports
//! about itself.
//!
//! The safety numbers — PDB violations, the most nodes (and control-plane nodes) unavailable at
//! once, pods lost to node outages or reboots without an eviction — come from the **safety
//! monitor's verdict** ([`rota_monitor`]): it watched the emulator's API like any client and
//! judged from the objects, sharing no code with the emulator's eviction gate, disruption
//! controller or audit. The emulator audit's own counts are kept as a labelled secondary
//! cross-check (`auditCrossCheck`).
//!
//! Definitions (also printed with the numbers):
//! - a node's **cycle** is the total time the emulator saw it unavailable (NotReady or
//!   cordoned) during the rollout; the **per-node cycle** is the median cycle of the nodes
//!   that finished;
//! - the **makespan** runs from the rollout's start (the MaintenancePolicy applied, or the kured
//!   DaemonSet created) to the moment the last finished node became available again (to the
//!   end of the run when some node never finished);
//! - the **lower bound** is `ceil(N / maxUnavailable) × per-node cycle`: no scheduler can do
//!   better with `maxUnavailable` nodes down at a time and cycles that long;
//! - **pods disrupted** counts distinct (pod, node) pairs the emulator saw deleted during the
//!   rollout, by eviction or because their node went down;
//! - a node is **maintained** once per reboot or kubelet restart its host performed (the host's
//!   own record); **done** means the emulator shows it Ready, schedulable, on the new kernel and
//!   the expected kubelet, with nothing held or queued for it.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;

use comfy_table::{ContentArrangement, Table, presets::UTF8_FULL_CONDENSED};
use jiff::Timestamp;
use serde::{Deserialize, Serialize};

use rota_monitor::Verdict;

use super::bound::{NodeCycle, lower_bound};

use crate::apiserver::{AuditLog, NodeRecord};

/// Why a run ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum Stopped {
    /// Every node is done.
    AllDone,
    /// Nothing changed for the stall timeout.
    Stalled,
    /// The run's deadline passed.
    Deadline,
}

impl Stopped {
    fn describe(self) -> &'static str {
        match self {
            Stopped::AllDone => "every node done",
            Stopped::Stalled => "stalled (nothing changed for the stall timeout)",
            Stopped::Deadline => "deadline reached",
        }
    }
}

/// Everything a report is computed from.
#[derive(Debug)]
pub struct ReportInput<'a> {
    /// `rota` or `kured`.
    pub scheduler: &'a str,
    /// The scenario's seed.
    pub seed: u64,
    /// Nodes of the cluster.
    pub nodes: Vec<String>,
    /// Most nodes the scheduler may take down at once (rota's `maxUnavailable`, kured's
    /// `--concurrency`).
    pub max_unavailable: usize,
    /// Each pool's own limit, by the pool's name in the monitor's verdict (rota's policies;
    /// empty for kured).
    pub pool_limits: BTreeMap<String, usize>,
    /// The control-plane nodes (at most one may be unavailable at a time).
    pub control_plane: BTreeSet<String>,
    /// The emulator's audit record.
    pub audit: &'a AuditLog,
    /// The safety monitor's verdict.
    pub verdict: &'a Verdict,
    /// Reboots plus kubelet restarts per node, from the hosts.
    pub maintenance_counts: BTreeMap<String, u32>,
    /// How many maintenances each node should have: 1, or one per minor of a Kubernetes
    /// upgrade.
    pub expected_maintenances: u32,
    /// Each node's Kubernetes versions at the end, in words (empty: no Kubernetes upgrade).
    pub kubernetes_versions: BTreeMap<String, String>,
    /// Nodes done at the end.
    pub done: BTreeSet<String>,
    /// Why the others are not.
    pub reasons: BTreeMap<String, String>,
    /// Start of the rollout.
    pub started: Timestamp,
    /// End of the run.
    pub ended: Timestamp,
    /// Why the run ended.
    pub stopped: Stopped,
    /// Each rebooting node's intrinsic cycle, from the scenario's timings.
    pub intrinsic_cycles: &'a [NodeCycle],
    /// Fencing tokens persisted on Nodes (`None`: the scheduler has none), and whether that
    /// record is complete.
    pub api_tokens: Option<(BTreeMap<u64, BTreeSet<String>>, bool)>,
    /// Fencing tokens the agents acted with on their hosts.
    pub host_tokens: Option<BTreeMap<u64, BTreeSet<String>>>,
}

/// The summary of one rollout (also the `--report` JSON).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Report {
    /// `rota` or `kured`.
    pub scheduler: String,
    /// The scenario's seed.
    pub seed: u64,
    /// Nodes of the cluster.
    pub nodes: usize,
    /// Most nodes allowed down at once.
    pub max_unavailable: usize,
    /// What one simulated second stands for.
    pub time_scale: String,
    /// Why the run ended.
    pub stopped: Stopped,
    /// Rollout start to the last finished node available again, seconds.
    pub makespan_seconds: f64,
    /// Median cycle of the finished nodes, seconds.
    pub per_node_cycle_seconds: f64,
    /// How the per-node cycle is measured.
    pub per_node_cycle_definition: String,
    /// The intrinsic lower bound, seconds: what no scheduler could beat, from the scenario's
    /// timings ([`super::bound`]).
    pub lower_bound_seconds: f64,
    /// The lower bound's formula with the numbers.
    pub lower_bound_formula: String,
    /// `ceil(N / maxUnavailable) × the measured per-node cycle`, seconds: how busy the slots
    /// were, not how close to optimal the rollout was (it grows with whatever slows a cycle).
    pub measured_lower_bound_seconds: f64,
    /// Its formula with the numbers.
    pub measured_lower_bound_formula: String,
    /// Makespan over lower bound (0 when the lower bound is 0).
    pub makespan_over_lower_bound: f64,
    /// The most nodes unavailable at any moment, from the safety monitor.
    pub max_unavailable_observed: usize,
    /// The most control-plane nodes unavailable at any moment (more than one risks etcd's
    /// quorum), from the safety monitor.
    pub max_control_plane_unavailable_observed: usize,
    /// Moments a PDB fell below its desired healthy pods because of a disruption (eviction,
    /// deletion, node outage or reboot), from the safety monitor.
    pub pdb_violations: usize,
    /// One line per violation.
    pub pdb_violation_details: Vec<String>,
    /// Pods lost to a node outage or reboot without an eviction, from the safety monitor.
    pub pods_lost_to_reboots: usize,
    /// One line per lost pod.
    pub pods_lost_details: Vec<String>,
    /// The safety monitor's watch errors and re-lists.
    pub monitor_watch_restarts: u32,
    /// The safety monitor missed changes (a re-list showed what no event had).
    pub monitor_lost_track: bool,
    /// The emulator audit's own numbers: a secondary cross-check of the monitor, not the
    /// verdict.
    pub audit_cross_check: AuditCrossCheck,
    /// Accepted evictions.
    pub evictions: usize,
    /// Distinct (pod, node) pairs deleted during the rollout.
    pub pods_disrupted: usize,
    /// Nodes done.
    pub nodes_done: usize,
    /// Nodes whose maintenance started (they were unavailable or rebooted) but did not finish.
    pub nodes_failed: usize,
    /// Their names, each with why it is not done.
    pub failed_nodes: Vec<String>,
    /// Nodes never touched.
    pub nodes_not_started: usize,
    /// Whether every node was maintained (rebooted or kubelet-restarted) exactly as often as
    /// planned: once, or once per minor of a Kubernetes upgrade.
    pub maintained_exactly_once: bool,
    /// Nodes maintained more often than planned, with the count.
    pub maintained_more_than_once: BTreeMap<String, u32>,
    /// Whether no fencing token was persisted on, or acted with by, two nodes (`None`: the
    /// scheduler has no fencing tokens).
    pub fencing_tokens_unique: Option<bool>,
    /// Tokens persisted on Nodes.
    pub fencing_tokens_issued: Option<usize>,
    /// Broken invariants, in words; empty when every invariant held.
    pub invariant_violations: Vec<String>,
    /// What rota's MaintenanceRecords say (`None`: the scheduler writes none).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub maintenance_records: Option<RecordsSummary>,
    /// After a Kubernetes upgrade: each node's kubelet and control-plane versions at the end.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub kubernetes_versions: BTreeMap<String, String>,
}

/// The MaintenanceRecords of a rollout: whether every maintenance has one, and the change
/// report `rotactl report` prints from them.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RecordsSummary {
    /// Records written.
    pub records: usize,
    /// Maintenances the agents performed (a fencing token they acted with on their host) that
    /// have no record, as `node (token N)`.
    pub maintenances_without_record: Vec<String>,
    /// The change report per pool (`rotactl report`).
    pub change_report: Vec<rota_core::records::PoolReport>,
    /// Its period: the rollout's start ...
    pub since: Option<Timestamp>,
    /// ... to the report.
    pub until: Option<Timestamp>,
}

impl RecordsSummary {
    /// Compares the records with the maintenances the agents performed (each fencing token an
    /// agent acted with, and its node: `host_tokens`), and reports them.
    pub fn of(
        records: &[rota_core::records::MaintenanceRecordSpec],
        host_tokens: &BTreeMap<u64, BTreeSet<String>>,
        since: Timestamp,
        until: Timestamp,
    ) -> Self {
        let recorded: BTreeSet<(&str, i64)> =
            records.iter().map(|r| (r.node.as_str(), r.token)).collect();
        let maintenances_without_record = host_tokens
            .iter()
            .flat_map(|(token, nodes)| nodes.iter().map(move |node| (node, *token)))
            .filter(|(node, token)| {
                let token = i64::try_from(*token).unwrap_or(i64::MAX);
                !recorded.contains(&(node.as_str(), token))
            })
            .map(|(node, token)| format!("{node} (token {token})"))
            .collect();
        RecordsSummary {
            records: records.len(),
            maintenances_without_record,
            change_report: rota_core::records::report(records, since),
            since: Some(since),
            until: Some(until),
        }
    }
}

impl Report {
    /// Adds what the MaintenanceRecords say; a maintenance without a record breaks an
    /// invariant.
    pub fn with_records(mut self, summary: RecordsSummary) -> Self {
        if !summary.maintenances_without_record.is_empty() {
            self.invariant_violations.push(format!(
                "maintenances without a MaintenanceRecord: {}",
                summary.maintenances_without_record.join("; ")
            ));
        }
        self.maintenance_records = Some(summary);
        self
    }
}

/// What the emulator's audit record says, beside the monitor: evictions it accepted that left a
/// PDB short, and the unavailability peaks it recorded.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AuditCrossCheck {
    /// Accepted evictions that left a PDB below its desired healthy pods.
    pub pdb_violations: usize,
    /// The most nodes unavailable at once.
    pub max_unavailable: usize,
    /// The most control-plane nodes unavailable at once.
    pub max_control_plane_unavailable: usize,
}

fn seconds(d: jiff::SignedDuration) -> f64 {
    d.as_secs_f64()
}

/// A node's unavailable intervals within `[started, ended]`; an interval still open at the end
/// closes at `ended`.
fn unavailable_intervals(
    records: &[&NodeRecord],
    started: Timestamp,
    ended: Timestamp,
) -> Vec<(Timestamp, Timestamp)> {
    let mut out = Vec::new();
    let mut since: Option<Timestamp> = None;
    for record in records {
        match (since, record.unavailable()) {
            (None, true) => since = Some(record.time.max(started)),
            (Some(from), false) => {
                if record.time > started {
                    out.push((from, record.time));
                }
                since = None;
            }
            _ => {}
        }
    }
    if let Some(from) = since {
        out.push((from, ended.max(from)));
    }
    out
}

fn median(mut values: Vec<f64>) -> f64 {
    if values.is_empty() {
        return 0.0;
    }
    values.sort_by(f64::total_cmp);
    let mid = values.len() / 2;
    if values.len() % 2 == 1 {
        values[mid]
    } else {
        (values[mid - 1] + values[mid]) / 2.0
    }
}

/// The time scale every duration of the simulation follows.
pub const TIME_SCALE: &str = "1 simulated second = 1 real minute";

impl Report {
    /// Computes the report.
    pub fn compute(input: &ReportInput<'_>) -> Report {
        let mut per_node: BTreeMap<&str, Vec<&NodeRecord>> = BTreeMap::new();
        for record in &input.audit.nodes {
            per_node
                .entry(record.node.as_str())
                .or_default()
                .push(record);
        }
        let mut cycles = Vec::new();
        let mut end = input.started;
        let mut touched = BTreeSet::new();
        for node in &input.nodes {
            let records = per_node.get(node.as_str()).cloned().unwrap_or_default();
            let intervals = unavailable_intervals(&records, input.started, input.ended);
            if !intervals.is_empty() {
                touched.insert(node.clone());
            }
            if input.done.contains(node) {
                let cycle: f64 = intervals
                    .iter()
                    .map(|(a, b)| seconds(b.duration_since(*a)))
                    .sum();
                cycles.push(cycle);
                if let Some((_, last)) = intervals.last() {
                    end = end.max(*last);
                }
            }
        }
        for (node, count) in &input.maintenance_counts {
            if *count > 0 {
                touched.insert(node.clone());
            }
        }
        let all_done = input.nodes.iter().all(|n| input.done.contains(n));
        if !all_done {
            end = input.ended;
        }
        let makespan = seconds(end.duration_since(input.started)).max(0.0);
        let cycle = median(cycles);
        let n = input.nodes.len();
        let k = input.max_unavailable.max(1);
        let rounds = n.div_ceil(k);
        let measured_lower_bound = rounds as f64 * cycle;
        let bound = lower_bound(input.intrinsic_cycles, k);
        let lower_bound = bound.seconds;
        let ratio = if lower_bound > 0.0 {
            makespan / lower_bound
        } else {
            0.0
        };
        let lower_bound_formula = bound.formula;
        let measured_lower_bound_formula = format!(
            "ceil(N / maxUnavailable) × measured per-node cycle = ceil({n} / {k}) × {cycle:.2} s = {rounds} × {cycle:.2} s = {measured_lower_bound:.2} s"
        );

        let verdict = input.verdict;
        let pdb_violation_details: Vec<String> =
            verdict.violations.iter().map(ToString::to_string).collect();
        let pods_lost_details: Vec<String> = verdict
            .pods_lost_to_reboots
            .iter()
            .map(|p| {
                format!(
                    "{} on {} ({}{})",
                    p.pod,
                    p.node,
                    p.cause,
                    if p.terminating {
                        ", was terminating"
                    } else {
                        ""
                    }
                )
            })
            .collect();
        let audit_cross_check = AuditCrossCheck {
            pdb_violations: input.audit.pdb_violations().len(),
            max_unavailable: input
                .audit
                .unavailable_timeline()
                .iter()
                .map(|p| p.unavailable)
                .max()
                .unwrap_or(0),
            max_control_plane_unavailable: input.audit.max_unavailable_among(&input.control_plane),
        };
        let pods_disrupted = input
            .audit
            .pod_deletions
            .iter()
            .filter(|d| d.time >= input.started)
            .map(|d| (&d.namespace, &d.pod, &d.node))
            .collect::<BTreeSet<_>>()
            .len();
        let max_unavailable_observed = verdict.max_unavailable.overall.count;
        let max_control_plane_unavailable_observed = verdict.max_unavailable.control_plane.count;

        let failed_nodes: Vec<String> = input
            .nodes
            .iter()
            .filter(|n| !input.done.contains(*n) && touched.contains(*n))
            .map(|n| match input.reasons.get(n) {
                Some(why) => format!("{n} ({why})"),
                None => n.clone(),
            })
            .collect();
        let nodes_not_started = input
            .nodes
            .iter()
            .filter(|n| !input.done.contains(*n) && !touched.contains(*n))
            .count();
        let planned = input.expected_maintenances.max(1);
        let maintained_more_than_once: BTreeMap<String, u32> = input
            .maintenance_counts
            .iter()
            .filter(|(_, c)| **c > planned)
            .map(|(n, c)| (n.clone(), *c))
            .collect();
        let maintained_exactly_once = input
            .nodes
            .iter()
            .all(|n| input.maintenance_counts.get(n).copied().unwrap_or(0) == planned);

        let mut invariant_violations = Vec::new();
        if !verdict.violations.is_empty() {
            invariant_violations.push(format!("{} PDB violation(s)", verdict.violations.len()));
        }
        if !verdict.pods_lost_to_reboots.is_empty() {
            invariant_violations.push(format!(
                "{} pod(s) lost to a node outage or reboot without an eviction",
                verdict.pods_lost_to_reboots.len()
            ));
        }
        if verdict.lost_track {
            invariant_violations
                .push("the safety monitor missed changes; it cannot vouch for the run".into());
        }
        if max_unavailable_observed > k {
            invariant_violations.push(format!(
                "{max_unavailable_observed} nodes unavailable at once, more than {k}"
            ));
        }
        for (pool, limit) in &input.pool_limits {
            let peak = verdict
                .max_unavailable
                .pools
                .get(pool)
                .map_or(0, |p| p.count);
            if peak > *limit {
                invariant_violations.push(format!(
                    "{peak} nodes of pool {pool} unavailable at once, more than {limit}"
                ));
            }
        }
        if max_control_plane_unavailable_observed > 1 {
            invariant_violations.push(format!(
                "{max_control_plane_unavailable_observed} control-plane nodes unavailable at once"
            ));
        }
        if !maintained_more_than_once.is_empty() {
            invariant_violations.push(format!(
                "nodes maintained more than once: {}",
                maintained_more_than_once
                    .iter()
                    .map(|(n, c)| format!("{n} ×{c}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            ));
        }
        let mut fencing_tokens_unique = None;
        let mut fencing_tokens_issued = None;
        if let Some((api, complete)) = &input.api_tokens {
            let mut shared = Vec::new();
            let host = input.host_tokens.clone().unwrap_or_default();
            for (token, nodes) in api.iter().chain(host.iter()) {
                if nodes.len() > 1 {
                    shared.push(format!(
                        "token {token} on {}",
                        nodes.iter().cloned().collect::<Vec<_>>().join(" and ")
                    ));
                }
            }
            for (token, nodes) in &host {
                if let Some(api_nodes) = api.get(token)
                    && api_nodes != nodes
                {
                    shared.push(format!(
                        "token {token} persisted for {api_nodes:?}, acted with on {nodes:?}"
                    ));
                }
            }
            if !shared.is_empty() {
                invariant_violations.push(format!(
                    "fencing tokens held by two nodes: {}",
                    shared.join("; ")
                ));
            }
            if !complete {
                invariant_violations.push(
                    "the fencing record missed API writes; it cannot vouch for the tokens".into(),
                );
            }
            fencing_tokens_unique = Some(shared.is_empty());
            fencing_tokens_issued = Some(api.len());
        }

        Report {
            scheduler: input.scheduler.to_string(),
            seed: input.seed,
            nodes: n,
            max_unavailable: k,
            time_scale: TIME_SCALE.into(),
            stopped: input.stopped,
            makespan_seconds: makespan,
            per_node_cycle_seconds: cycle,
            per_node_cycle_definition: "median, over the finished nodes, of the total time the emulator saw each one NotReady or cordoned".into(),
            lower_bound_seconds: lower_bound,
            lower_bound_formula,
            measured_lower_bound_seconds: measured_lower_bound,
            measured_lower_bound_formula,
            makespan_over_lower_bound: ratio,
            max_unavailable_observed,
            max_control_plane_unavailable_observed,
            pdb_violations: verdict.violations.len(),
            pdb_violation_details,
            pods_lost_to_reboots: verdict.pods_lost_to_reboots.len(),
            pods_lost_details,
            monitor_watch_restarts: verdict.watch_restarts,
            monitor_lost_track: verdict.lost_track,
            audit_cross_check,
            evictions: input.audit.evictions.len(),
            pods_disrupted,
            nodes_done: input.done.len(),
            nodes_failed: failed_nodes.len(),
            failed_nodes,
            nodes_not_started,
            maintained_exactly_once,
            maintained_more_than_once,
            fencing_tokens_unique,
            fencing_tokens_issued,
            invariant_violations,
            maintenance_records: None,
            kubernetes_versions: input.kubernetes_versions.clone(),
        }
    }

    /// Whether every invariant held.
    pub fn invariants_hold(&self) -> bool {
        self.invariant_violations.is_empty()
    }

    /// Whether every node is done.
    pub fn complete(&self) -> bool {
        self.nodes_done == self.nodes
    }

    fn rows(&self) -> Vec<(&'static str, String)> {
        let yes_no = |b: bool| if b { "yes" } else { "NO" }.to_string();
        vec![
            ("ended", self.stopped.describe().to_string()),
            ("makespan", format!("{:.1} s", self.makespan_seconds)),
            (
                "per-node cycle (median)",
                format!("{:.2} s", self.per_node_cycle_seconds),
            ),
            (
                "lower bound (intrinsic)",
                if self.has_intrinsic_bound() {
                    format!("{:.1} s", self.lower_bound_seconds)
                } else {
                    "n/a (no reboot cycles in this scenario)".to_owned()
                },
            ),
            (
                "ceil(N / k) × measured cycle",
                format!("{:.1} s", self.measured_lower_bound_seconds),
            ),
            (
                "makespan / lower bound",
                if self.has_intrinsic_bound() {
                    format!("{:.2}", self.makespan_over_lower_bound)
                } else {
                    "n/a".to_owned()
                },
            ),
            (
                "most nodes unavailable at once (monitor)",
                format!(
                    "{} (allowed {})",
                    self.max_unavailable_observed, self.max_unavailable
                ),
            ),
            (
                "most control-plane nodes unavailable at once (monitor)",
                format!(
                    "{} (allowed 1)",
                    self.max_control_plane_unavailable_observed
                ),
            ),
            ("PDB violations (monitor)", self.pdb_violations.to_string()),
            (
                "pods lost to reboots without eviction (monitor)",
                self.pods_lost_to_reboots.to_string(),
            ),
            (
                "emulator audit cross-check",
                format!(
                    "{} PDB violations, most down {}, control plane {}",
                    self.audit_cross_check.pdb_violations,
                    self.audit_cross_check.max_unavailable,
                    self.audit_cross_check.max_control_plane_unavailable
                ),
            ),
            ("evictions", self.evictions.to_string()),
            ("pods disrupted", self.pods_disrupted.to_string()),
            (
                "nodes done",
                format!("{} / {}", self.nodes_done, self.nodes),
            ),
            ("nodes failed", self.nodes_failed.to_string()),
            ("nodes not started", self.nodes_not_started.to_string()),
            (
                "every node maintained exactly once",
                yes_no(self.maintained_exactly_once),
            ),
            (
                "no fencing token held by two nodes",
                match self.fencing_tokens_unique {
                    Some(unique) => format!(
                        "{} ({} tokens issued)",
                        yes_no(unique),
                        self.fencing_tokens_issued.unwrap_or(0)
                    ),
                    None => "n/a (no fencing tokens)".into(),
                },
            ),
        ]
    }

    /// The summary as text: a table, the formula, the definitions and any broken invariant.
    pub fn render(&self) -> String {
        let mut table = Table::new();
        table
            .load_preset(UTF8_FULL_CONDENSED)
            .set_content_arrangement(ContentArrangement::Dynamic)
            .set_header(vec![
                format!(
                    "{} — {} nodes, seed {}",
                    self.scheduler, self.nodes, self.seed
                ),
                String::new(),
            ]);
        for (label, value) in self.rows() {
            table.add_row(vec![label.to_string(), value]);
        }
        let mut out = format!("{table}\n");
        self.notes(&mut out);
        if !self.kubernetes_versions.is_empty() {
            let _ = writeln!(out, "\nKubernetes versions at the end:");
            for (node, versions) in &self.kubernetes_versions {
                let _ = writeln!(out, "  {node:<10} {versions}");
            }
        }
        if let Some(records) = &self.maintenance_records {
            let _ = writeln!(
                out,
                "\n{} MaintenanceRecords; the change report (`rotactl report`):",
                records.records
            );
            let mut text = Vec::new();
            let since = records.since.unwrap_or_default();
            let printed = rota_coordinator::rotactl::records::print_report(
                &mut text,
                &records.change_report,
                since,
                records.until.unwrap_or(since),
            );
            if printed.is_ok() {
                out.push_str(&String::from_utf8_lossy(&text));
            }
        }
        out
    }

    /// Whether the scenario's timings give a lower bound: its cycles are reboots; a Kubernetes
    /// upgrade restarts kubelets, which the scenario does not time.
    fn has_intrinsic_bound(&self) -> bool {
        self.lower_bound_seconds > 0.0
    }

    fn notes(&self, out: &mut String) {
        if self.has_intrinsic_bound() {
            let _ = writeln!(out, "lower bound: {}", self.lower_bound_formula);
        }
        let _ = writeln!(
            out,
            "measured-cycle bound (how busy the slots were): {}",
            self.measured_lower_bound_formula
        );
        let _ = writeln!(out, "per-node cycle: {}", self.per_node_cycle_definition);
        let _ = writeln!(out, "time scale: {}", self.time_scale);
        if !self.failed_nodes.is_empty() {
            let _ = writeln!(out, "failed nodes: {}", self.failed_nodes.join(", "));
        }
        let _ = writeln!(
            out,
            "safety: judged by the independent safety monitor from API objects (watch restarts {}, lost track: {}); the emulator audit's numbers are a secondary cross-check",
            self.monitor_watch_restarts,
            if self.monitor_lost_track { "YES" } else { "no" }
        );
        for detail in &self.pdb_violation_details {
            let _ = writeln!(out, "PDB violation: {detail}");
        }
        for detail in &self.pods_lost_details {
            let _ = writeln!(out, "pod lost without eviction: {detail}");
        }
        for violation in &self.invariant_violations {
            let _ = writeln!(out, "INVARIANT BROKEN: {violation}");
        }
    }
}

/// How many times as long `other` took as `rota` (0 when rota's makespan is 0).
pub fn makespan_ratio(rota: &Report, other: &Report) -> f64 {
    if rota.makespan_seconds > 0.0 {
        other.makespan_seconds / rota.makespan_seconds
    } else {
        0.0
    }
}

/// rota's report beside `others`' (each named by its scheduler label, which for kured carries
/// its concurrency and period), with each one's makespan over rota's.
pub fn render_comparison(rota: &Report, others: &[&Report]) -> String {
    let mut table = Table::new();
    let mut header = vec![
        format!("{} nodes, seed {}", rota.nodes, rota.seed),
        rota.scheduler.clone(),
    ];
    header.extend(others.iter().map(|o| o.scheduler.clone()));
    table
        .load_preset(UTF8_FULL_CONDENSED)
        .set_content_arrangement(ContentArrangement::Dynamic)
        .set_header(header);
    let columns: Vec<Vec<(&'static str, String)>> = std::iter::once(rota)
        .chain(others.iter().copied())
        .map(Report::rows)
        .collect();
    for (i, (label, _)) in columns[0].iter().enumerate() {
        let mut row = vec![label.to_string()];
        row.extend(columns.iter().map(|c| c[i].1.clone()));
        table.add_row(row);
    }
    let mut out = format!("{table}\n");
    for other in others {
        let _ = writeln!(
            out,
            "makespan: {} {:.1} s, {} {:.1} s — {:.1}× as long as {}",
            rota.scheduler,
            rota.makespan_seconds,
            other.scheduler,
            other.makespan_seconds,
            makespan_ratio(rota, other),
            rota.scheduler
        );
    }
    for report in std::iter::once(rota).chain(others.iter().copied()) {
        let _ = writeln!(
            out,
            "{}: lower bound {}",
            report.scheduler, report.lower_bound_formula
        );
    }
    let _ = writeln!(out, "time scale: {TIME_SCALE}");
    for report in std::iter::once(rota).chain(others.iter().copied()) {
        for violation in &report.invariant_violations {
            let _ = writeln!(out, "INVARIANT BROKEN ({}): {violation}", report.scheduler);
        }
    }
    out
}

#[cfg(test)]
impl Report {
    /// A report of a finished two-node rollout that held every invariant, for tests to vary.
    pub(crate) fn example() -> Report {
        Report {
            scheduler: "rota".into(),
            seed: 1,
            nodes: 2,
            max_unavailable: 1,
            time_scale: String::new(),
            stopped: Stopped::AllDone,
            makespan_seconds: 1.0,
            per_node_cycle_seconds: 1.0,
            per_node_cycle_definition: String::new(),
            lower_bound_seconds: 1.0,
            lower_bound_formula: String::new(),
            measured_lower_bound_seconds: 1.0,
            measured_lower_bound_formula: String::new(),
            makespan_over_lower_bound: 1.0,
            max_unavailable_observed: 1,
            max_control_plane_unavailable_observed: 1,
            pdb_violations: 0,
            pdb_violation_details: Vec::new(),
            pods_lost_to_reboots: 0,
            pods_lost_details: Vec::new(),
            monitor_watch_restarts: 0,
            monitor_lost_track: false,
            audit_cross_check: Default::default(),
            evictions: 0,
            pods_disrupted: 0,
            nodes_done: 2,
            nodes_failed: 0,
            failed_nodes: Vec::new(),
            nodes_not_started: 0,
            maintained_exactly_once: true,
            maintained_more_than_once: Default::default(),
            fencing_tokens_unique: Some(true),
            fencing_tokens_issued: Some(2),
            invariant_violations: Vec::new(),
            maintenance_records: None,
            kubernetes_versions: BTreeMap::new(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: i64) -> Timestamp {
        Timestamp::from_second(1_700_000_000 + s).unwrap()
    }

    fn record(t: i64, node: &str, ready: bool, cordoned: bool) -> NodeRecord {
        NodeRecord {
            time: at(t),
            resource_version: t as u64,
            node: node.into(),
            ready,
            unschedulable: cordoned,
            deleted: false,
        }
    }

    #[test]
    fn intervals_follow_the_nodes_availability() {
        let records = [
            record(0, "a", true, false),
            record(10, "a", true, true),
            record(12, "a", false, true),
            record(15, "a", true, true),
            record(16, "a", true, false),
            record(20, "a", true, true),
        ];
        let refs: Vec<&NodeRecord> = records.iter().collect();
        let intervals = unavailable_intervals(&refs, at(5), at(30));
        assert_eq!(intervals, vec![(at(10), at(16)), (at(20), at(30))]);
    }

    #[test]
    fn report_numbers_and_invariants() {
        let mut audit = AuditLog::default();
        for (t, node, ready, cordoned) in [
            (0, "a", true, false),
            (0, "b", true, false),
            (0, "c", true, false),
            (10, "a", true, true),
            (10, "b", true, true),
            (14, "a", true, false),
            (16, "b", true, false),
            (16, "c", true, true),
            (20, "c", true, false),
        ] {
            audit.record_node(record(t, node, ready, cordoned));
        }
        let done: BTreeSet<String> = ["a", "b", "c"].map(String::from).into();
        let mut verdict = Verdict::default();
        verdict.max_unavailable.overall.count = 2;
        for (pool, count) in [("x", 2), ("y", 1)] {
            verdict.max_unavailable.pools.insert(
                pool.into(),
                rota_monitor::Peak {
                    count,
                    ..Default::default()
                },
            );
        }
        let input = ReportInput {
            scheduler: "rota",
            seed: 1,
            nodes: vec!["a".into(), "b".into(), "c".into()],
            max_unavailable: 2,
            pool_limits: [("x".to_string(), 1), ("y".to_string(), 1)].into(),
            control_plane: BTreeSet::from(["a".to_string()]),
            audit: &audit,
            verdict: &verdict,
            expected_maintenances: 1,
            kubernetes_versions: BTreeMap::new(),
            maintenance_counts: [("a", 1), ("b", 1), ("c", 2)]
                .map(|(n, c)| (n.to_string(), c))
                .into(),
            done,
            reasons: BTreeMap::new(),
            started: at(5),
            ended: at(30),
            stopped: Stopped::AllDone,
            intrinsic_cycles: &[
                NodeCycle::new("a", true, std::time::Duration::from_secs(3)),
                NodeCycle::new("b", false, std::time::Duration::from_secs(3)),
                NodeCycle::new("c", false, std::time::Duration::from_secs(3)),
            ],
            api_tokens: Some((
                [
                    (1, BTreeSet::from(["a".to_string()])),
                    (2, BTreeSet::from(["b".to_string(), "c".to_string()])),
                ]
                .into(),
                true,
            )),
            host_tokens: Some(BTreeMap::new()),
        };
        let report = Report::compute(&input);
        assert_eq!(report.makespan_seconds, 15.0);
        assert_eq!(report.per_node_cycle_seconds, 4.0);
        assert_eq!(report.measured_lower_bound_seconds, 8.0);
        assert!(report.measured_lower_bound_formula.contains("ceil(3 / 2)"));
        // Intrinsic: max(3, 9 / 2, 3) = 4.5.
        assert_eq!(report.lower_bound_seconds, 4.5);
        assert!((report.makespan_over_lower_bound - 15.0 / 4.5).abs() < 1e-9);
        assert_eq!(report.max_unavailable_observed, 2);
        assert!(!report.maintained_exactly_once);
        assert_eq!(report.fencing_tokens_unique, Some(false));
        assert_eq!(
            report.invariant_violations.len(),
            3,
            "{:?}",
            report.invariant_violations
        );
        assert!(
            report
                .invariant_violations
                .contains(&"2 nodes of pool x unavailable at once, more than 1".to_string()),
            "{:?}",
            report.invariant_violations
        );
        assert!(report.complete());
        assert!(report.render().contains("makespan / lower bound"));
        let json = serde_json::to_value(&report).unwrap();
        assert_eq!(json["makespanSeconds"], 15.0);
        let mut slower = report.clone();
        slower.scheduler = "kured (concurrency 2, period 60 s)".into();
        slower.makespan_seconds = 30.0;
        let text = render_comparison(&report, &[&report, &slower]);
        assert!(text.contains("1.0× as long"), "{text}");
        assert!(
            text.contains("kured (concurrency 2, period 60 s) 30.0 s — 2.0× as long"),
            "{text}"
        );
    }

    #[test]
    fn every_maintenance_an_agent_performed_needs_a_record() {
        use rota_core::records::{MaintenanceRecordSpec, RecordOutcome};
        let record = |node: &str, token: i64| MaintenanceRecordSpec {
            node: node.into(),
            token,
            pool: Some("fleet".into()),
            outcome: RecordOutcome::Succeeded,
            ..MaintenanceRecordSpec::default()
        };
        let records = [record("n1", 1), record("n2", 2)];
        let performed = BTreeMap::from([
            (1, BTreeSet::from(["n1".to_string()])),
            (2, BTreeSet::from(["n2".to_string()])),
        ]);
        let complete = RecordsSummary::of(&records, &performed, at(0), at(60));
        assert!(complete.maintenances_without_record.is_empty());
        let report = Report::example().with_records(complete);
        assert!(report.invariants_hold(), "{}", report.render());
        assert!(
            report.render().contains("2 MaintenanceRecords"),
            "{}",
            report.render()
        );

        let mut more = performed.clone();
        more.insert(3, BTreeSet::from(["n3".to_string()]));
        let gaps = RecordsSummary::of(&records, &more, at(0), at(60));
        assert_eq!(gaps.maintenances_without_record, ["n3 (token 3)"]);
        let report = Report::example().with_records(gaps);
        assert!(!report.invariants_hold());
    }

    #[test]
    fn safety_comes_from_the_monitor_with_the_audit_as_a_cross_check() {
        let mut audit = AuditLog::default();
        audit.record_node(record(0, "a", true, false));
        audit.record_node(record(1, "a", false, true));
        let mut verdict = Verdict::default();
        verdict.max_unavailable.overall.count = 2;
        verdict.max_unavailable.control_plane.count = 2;
        verdict.violations.push(rota_monitor::Violation {
            time: at(1),
            pdb: "web/api".into(),
            pod: "web/api-1".into(),
            pod_uid: "u1".into(),
            node: Some("a".into()),
            cause: rota_monitor::Cause::NodeDown,
            healthy: 1,
            desired: 2,
        });
        verdict.pods_lost_to_reboots.push(rota_monitor::LostPod {
            time: at(1),
            pod: "web/api-1".into(),
            node: "a".into(),
            cause: rota_monitor::Cause::NodeDown,
            terminating: false,
        });
        verdict.lost_track = true;
        let input = ReportInput {
            scheduler: "rota",
            seed: 1,
            nodes: vec!["a".into(), "b".into()],
            max_unavailable: 1,
            pool_limits: BTreeMap::new(),
            control_plane: BTreeSet::from(["a".to_string()]),
            audit: &audit,
            verdict: &verdict,
            maintenance_counts: BTreeMap::new(),
            expected_maintenances: 1,
            kubernetes_versions: BTreeMap::new(),
            done: BTreeSet::new(),
            reasons: BTreeMap::new(),
            started: at(0),
            ended: at(5),
            stopped: Stopped::Stalled,
            intrinsic_cycles: &[],
            api_tokens: None,
            host_tokens: None,
        };
        let report = Report::compute(&input);
        assert_eq!(report.pdb_violations, 1);
        assert!(report.pdb_violation_details[0].contains("node down"));
        assert_eq!(report.pods_lost_to_reboots, 1);
        assert_eq!(report.max_unavailable_observed, 2);
        assert_eq!(report.max_control_plane_unavailable_observed, 2);
        assert!(report.monitor_lost_track);
        // The audit saw no violation and one node down: kept, labelled, not the verdict.
        assert_eq!(report.audit_cross_check.pdb_violations, 0);
        assert_eq!(report.audit_cross_check.max_unavailable, 1);
        assert_eq!(
            report.invariant_violations.len(),
            5,
            "{:?}",
            report.invariant_violations
        );
        let text = report.render();
        assert!(text.contains("PDB violations (monitor)"), "{text}");
        assert!(text.contains("emulator audit cross-check"), "{text}");
        assert!(
            text.contains("pod lost without eviction: web/api-1 on a"),
            "{text}"
        );
    }
}
