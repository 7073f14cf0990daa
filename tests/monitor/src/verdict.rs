//! What the monitor concluded: a cloneable snapshot, and its rendering for humans.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use jiff::Timestamp;
use serde::Serialize;

use crate::model::Cause;

/// A moment a budget's healthy pods fell below its desired count because of a disruption.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Violation {
    /// When the monitor saw it.
    pub time: Timestamp,
    /// The PodDisruptionBudget, `namespace/name`.
    pub pdb: String,
    /// The pod that left the healthy set, `namespace/name`.
    pub pod: String,
    /// Its UID.
    pub pod_uid: String,
    /// The node it was bound to.
    pub node: Option<String>,
    /// How it left.
    pub cause: Cause,
    /// Healthy pods of the budget right after.
    pub healthy: i32,
    /// The budget's desired healthy pods.
    pub desired: i32,
}

impl std::fmt::Display for Violation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} PDB {}: {} healthy, {} desired after {} of {} on {}",
            self.time,
            self.pdb,
            self.healthy,
            self.desired,
            self.cause,
            self.pod,
            self.node.as_deref().unwrap_or("no node")
        )
    }
}

/// A budget-covered pod that left the healthy set without a disruption (it crashed, went
/// unready on a healthy node, or the kubelet or scheduler removed it).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Unavailability {
    /// When.
    pub time: Timestamp,
    /// The budget.
    pub pdb: String,
    /// The pod.
    pub pod: String,
    /// Its node.
    pub node: Option<String>,
    /// Why, in words.
    pub reason: String,
    /// Healthy pods of the budget right after.
    pub healthy: i32,
    /// Desired healthy pods (`None`: not computable).
    pub desired: Option<i32>,
}

/// The most nodes unavailable at once in one group, and which.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Peak {
    /// How many.
    pub count: usize,
    /// Which, at the first moment the peak was reached.
    pub nodes: Vec<String>,
    /// That moment.
    pub at: Option<Timestamp>,
}

/// The most nodes unavailable (NotReady, cordoned or unreachable) at once.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct MaxUnavailable {
    /// All nodes.
    pub overall: Peak,
    /// Per configured pool (nodes matching none in [`crate::DEFAULT_POOL`]).
    pub pools: BTreeMap<String, Peak>,
    /// Control-plane nodes.
    pub control_plane: Peak,
}

/// A pod that was bound to a node when the node went down or rebooted, without an eviction.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct LostPod {
    /// When the loss was confirmed.
    pub time: Timestamp,
    /// `namespace/name`.
    pub pod: String,
    /// The node.
    pub node: String,
    /// [`Cause::NodeDown`] (it was deleted while its node was down) or [`Cause::Reboot`]
    /// (still bound when the node came back with a new boot ID).
    pub cause: Cause,
    /// It was already being deleted (not evicted) when the node went.
    pub terminating: bool,
}

/// A budget as the monitor sees it now.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct BudgetNow {
    /// Healthy pods now.
    pub healthy: i32,
    /// Desired healthy pods now (`None`: not computable).
    pub desired: Option<i32>,
    /// The fewest healthy pods seen since the monitor started.
    pub lowest_healthy: i32,
}

/// One line of the monitor's timeline.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct TimelineEntry {
    /// When.
    pub time: Timestamp,
    /// What, in words.
    pub what: String,
}

/// Everything the monitor concluded so far.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Verdict {
    /// PDB violations, in order.
    pub violations: Vec<Violation>,
    /// Budget-covered pods that left the healthy set without a disruption.
    pub unavailability: Vec<Unavailability>,
    /// The most nodes unavailable at once.
    pub max_unavailable: MaxUnavailable,
    /// Pods lost to a node outage or reboot without an eviction.
    pub pods_lost_to_reboots: Vec<LostPod>,
    /// Boot ID changes seen, per node.
    pub reboots: BTreeMap<String, u32>,
    /// Budgets whose desired healthy count could not be computed at some point, with why
    /// (the latest reason).
    pub not_computable: BTreeMap<String, String>,
    /// Every budget now, by `namespace/name`.
    pub budgets: BTreeMap<String, BudgetNow>,
    /// The nodes unavailable now.
    pub unavailable_now: Vec<String>,
    /// Watch errors and re-lists after the first list.
    pub watch_restarts: u32,
    /// A re-list found objects changed or gone that no event had shown: the monitor may have
    /// missed a moment.
    pub lost_track: bool,
    /// Notable observations, in order (capped at [`TIMELINE_LIMIT`] entries).
    pub timeline: Vec<TimelineEntry>,
}

/// The most timeline entries a verdict keeps.
pub const TIMELINE_LIMIT: usize = 20_000;

impl Verdict {
    /// Pods lost to node outages on `nodes`.
    pub fn pods_lost_on<'a>(&'a self, nodes: &'a [String]) -> impl Iterator<Item = &'a LostPod> {
        self.pods_lost_to_reboots
            .iter()
            .filter(|p| nodes.contains(&p.node))
    }

    /// The verdict as text: the numbers, then every violation, loss and non-disruption.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let peak = |p: &Peak| {
            if p.count == 0 {
                "0".to_string()
            } else {
                format!("{} ({})", p.count, p.nodes.join(", "))
            }
        };
        let _ = writeln!(
            out,
            "safety monitor (independent; judged from API objects):"
        );
        let _ = writeln!(out, "  PDB violations: {}", self.violations.len());
        let _ = writeln!(
            out,
            "  most nodes unavailable at once: {}",
            peak(&self.max_unavailable.overall)
        );
        for (pool, p) in &self.max_unavailable.pools {
            let _ = writeln!(out, "    pool {pool}: {}", peak(p));
        }
        let _ = writeln!(
            out,
            "  most control-plane nodes unavailable at once: {}",
            peak(&self.max_unavailable.control_plane)
        );
        let _ = writeln!(
            out,
            "  pods lost to node outages or reboots without an eviction: {}",
            self.pods_lost_to_reboots.len()
        );
        let reboots: u32 = self.reboots.values().sum();
        let _ = writeln!(
            out,
            "  reboots seen: {reboots} on {} nodes",
            self.reboots.len()
        );
        let _ = writeln!(
            out,
            "  budget-covered pods unavailable without a disruption: {}",
            self.unavailability.len()
        );
        let _ = writeln!(
            out,
            "  watch restarts: {}; lost track: {}",
            self.watch_restarts,
            if self.lost_track { "YES" } else { "no" }
        );
        for v in &self.violations {
            let _ = writeln!(out, "  VIOLATION {v}");
        }
        for p in &self.pods_lost_to_reboots {
            let _ = writeln!(
                out,
                "  LOST {} {} on {} ({}{})",
                p.time,
                p.pod,
                p.node,
                p.cause,
                if p.terminating {
                    ", was terminating"
                } else {
                    ""
                }
            );
        }
        for u in &self.unavailability {
            let _ = writeln!(
                out,
                "  not a disruption: {} {} of PDB {} on {}: {} ({} healthy, desired {})",
                u.time,
                u.pod,
                u.pdb,
                u.node.as_deref().unwrap_or("no node"),
                u.reason,
                u.healthy,
                u.desired.map_or("?".into(), |d| d.to_string())
            );
        }
        for (pdb, why) in &self.not_computable {
            let _ = writeln!(out, "  PDB {pdb} not computable: {why}");
        }
        out
    }
}
