//! Drain planning: what a drain of a node must do and how it ended, with `kubectl drain`
//! semantics — pure, so the controller's decisions and the drain engine's I/O share one model.
//!
//! - [`filter`] decides which pods are evicted, skipped, or keep the drain from starting;
//! - [`pdb`] knows which budgets cover a pod and whether they allow a disruption;
//! - [`DrainOutcome`] is how a drain ended, and names the budgets that blocked it.
//!
//! The engine that cordons, evicts and waits lives in the coordinator (`rota_coordinator::drain`).

pub mod filter;
pub mod pdb;

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;
use kube_core::{ResourceExt, Selector};
use serde::Serialize;

pub use filter::{PodRefusal, RefusalReason, SkipReason, SkippedPod};
pub use pdb::PdbRef;

/// A pod, by namespace, name and UID (the UID tells a pod from its same-named replacement).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub struct PodRef {
    /// Namespace.
    pub namespace: String,
    /// Name.
    pub name: String,
    /// UID.
    pub uid: String,
}

impl PodRef {
    /// The reference of a pod object.
    pub fn of(pod: &Pod) -> Self {
        Self {
            namespace: pod.namespace().unwrap_or_default(),
            name: pod.name_any(),
            uid: pod.uid().unwrap_or_default(),
        }
    }
}

impl fmt::Display for PodRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

/// How to drain a node (the policy's `drain` section, plus the engine's pacing).
#[derive(Clone, Debug)]
pub struct DrainSpec {
    /// Evict pods with emptyDir volumes (their data is lost), like `--delete-emptydir-data`.
    pub delete_empty_dir_data: bool,
    /// Evict pods that no controller recreates, like `--force`.
    pub force: bool,
    /// Only pods matching this selector are evicted, like `--pod-selector`.
    pub pod_selector: Option<Selector>,
    /// `deleteOptions.gracePeriodSeconds`; `None` leaves each pod its own (`--grace-period=-1`).
    pub grace_period_seconds: Option<i64>,
    /// Pods deleted longer ago than this are skipped, and count as gone while waiting, like
    /// `--skip-wait-for-delete-timeout`; `None` or zero never skips.
    pub skip_wait_for_delete_timeout: Option<Duration>,
    /// Most eviction requests in flight at once.
    pub max_parallel: usize,
    /// Longest wait before retrying a refused eviction when no budget change arrives (kubectl
    /// always waits this long; rota retries as soon as the budget allows).
    pub retry_fallback: Duration,
    /// How long a budget may keep refusing a pod before the drain gives up with
    /// [`DrainOutcome::Blocked`], so that a stuck drain hands its capacity back.
    pub blocked_timeout: Duration,
}

impl Default for DrainSpec {
    fn default() -> Self {
        Self {
            delete_empty_dir_data: false,
            force: false,
            pod_selector: None,
            grace_period_seconds: None,
            skip_wait_for_delete_timeout: None,
            max_parallel: 16,
            retry_fallback: Duration::from_secs(5),
            blocked_timeout: Duration::from_secs(120),
        }
    }
}

/// Counters of one drain, for the controller's metrics.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct DrainStats {
    /// Eviction requests sent.
    pub evictions_attempted: u64,
    /// Eviction requests the API server accepted.
    pub evictions_succeeded: u64,
    /// Eviction requests refused by a PodDisruptionBudget (HTTP 429).
    pub evictions_blocked_by_pdb: u64,
    /// Eviction requests that failed otherwise (transport errors, 5xx, refusals).
    pub eviction_errors: u64,
}

impl std::ops::AddAssign for DrainStats {
    fn add_assign(&mut self, other: Self) {
        self.evictions_attempted += other.evictions_attempted;
        self.evictions_succeeded += other.evictions_succeeded;
        self.evictions_blocked_by_pdb += other.evictions_blocked_by_pdb;
        self.eviction_errors += other.eviction_errors;
    }
}

/// A live view of a running drain, for status pages and `rotactl`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct DrainProgress {
    /// The pods being evicted and where each stands.
    pub pods: BTreeMap<PodRef, PodProgress>,
    /// Counters so far.
    pub stats: DrainStats,
}

/// Why a pod could not be evicted.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "camelCase")]
pub enum BlockReason {
    /// Its budget kept refusing (HTTP 429) for the drain's blocked timeout.
    DisruptionBudget,
    /// Several budgets cover it (HTTP 500).
    MultiplePdbs,
    /// The API server refused the eviction outright.
    Refused {
        /// HTTP status code.
        code: u16,
    },
}

/// Where one pod's eviction stands.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "state", rename_all = "camelCase")]
pub enum PodProgress {
    /// No eviction accepted yet.
    Evicting,
    /// The last attempt was refused by these budgets.
    BlockedByPdb {
        /// The budgets covering the pod when it was refused.
        pdbs: Vec<PdbRef>,
        /// The server's message.
        message: String,
    },
    /// The eviction was accepted; waiting for the pod to go.
    WaitingForDeletion,
    /// The pod is gone.
    Evicted,
    /// The drain gave up on the pod.
    NotEvicted {
        /// Why.
        reason: BlockReason,
        /// The server's message.
        message: String,
    },
}

/// A pod the drain could not evict, and what stood in the way.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct BlockedBy {
    /// The pod.
    pub pod: PodRef,
    /// The budgets covering it (empty when the refusal was not about budgets).
    pub pdbs: Vec<PdbRef>,
    /// Why it could not be evicted.
    pub reason: BlockReason,
    /// The API server's message.
    pub message: String,
}

/// How a drain ended.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "result", rename_all = "camelCase")]
pub enum DrainOutcome {
    /// Every pod to evict is gone: the node may be disrupted.
    #[serde(rename_all = "camelCase")]
    Drained {
        /// Pods evicted (or found gone).
        evicted: Vec<PodRef>,
        /// Pods left on the node, and why.
        skipped: Vec<SkippedPod>,
    },
    /// The drain did not start: these pods cannot be evicted under the policy. Nothing was
    /// evicted.
    Refused {
        /// Which pods, and why.
        errors: Vec<PodRefusal>,
    },
    /// Some pods cannot be evicted (a budget kept refusing past the blocked timeout, or the API
    /// refused outright). The other pods were handled.
    #[serde(rename_all = "camelCase")]
    Blocked {
        /// Which pods, and which budgets.
        by: Vec<BlockedBy>,
        /// Pods evicted before the drain gave up.
        evicted_so_far: Vec<PodRef>,
    },
    /// The deadline passed with pods still on the node.
    #[serde(rename_all = "camelCase")]
    TimedOut {
        /// Pods not evicted.
        remaining: Vec<PodRef>,
        /// Budgets that were refusing the remaining pods.
        blocking_pdbs: Vec<PdbRef>,
        /// Pods evicted before the deadline.
        evicted_so_far: Vec<PodRef>,
    },
    /// The drain was cancelled.
    #[serde(rename_all = "camelCase")]
    Cancelled {
        /// Pods not evicted.
        remaining: Vec<PodRef>,
        /// Pods evicted before the cancellation.
        evicted_so_far: Vec<PodRef>,
    },
}

impl DrainOutcome {
    /// Whether the node is drained.
    pub fn is_drained(&self) -> bool {
        matches!(self, DrainOutcome::Drained { .. })
    }

    /// The budgets that kept the drain from finishing (sorted, without duplicates).
    pub fn blocking_pdbs(&self) -> Vec<PdbRef> {
        match self {
            DrainOutcome::Blocked { by, .. } => by
                .iter()
                .flat_map(|blocked| blocked.pdbs.iter().cloned())
                .collect::<BTreeSet<_>>()
                .into_iter()
                .collect(),
            DrainOutcome::TimedOut { blocking_pdbs, .. } => blocking_pdbs.clone(),
            DrainOutcome::Refused { errors } => errors
                .iter()
                .flat_map(|error| match &error.reason {
                    RefusalReason::MultiplePdbs { pdbs } => pdbs.clone(),
                    _ => Vec::new(),
                })
                .collect::<BTreeSet<_>>()
                .into_iter()
                .collect(),
            DrainOutcome::Drained { .. } | DrainOutcome::Cancelled { .. } => Vec::new(),
        }
    }
}

impl fmt::Display for DrainOutcome {
    /// One line for events and logs.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let pdbs = || {
            let names: Vec<String> = self
                .blocking_pdbs()
                .iter()
                .map(ToString::to_string)
                .collect();
            names.join(", ")
        };
        match self {
            DrainOutcome::Drained { evicted, skipped } => write!(
                f,
                "drained: {} pods evicted, {} skipped",
                evicted.len(),
                skipped.len()
            ),
            DrainOutcome::Refused { errors } => {
                let lines: Vec<String> = errors.iter().map(ToString::to_string).collect();
                write!(f, "refused: {}", lines.join("; "))
            }
            DrainOutcome::Blocked { by, .. } => {
                let lines: Vec<String> = by
                    .iter()
                    .map(|b| format!("{}: {}", b.pod, b.message))
                    .collect();
                if by.iter().all(|b| b.pdbs.is_empty()) {
                    write!(f, "blocked: {}", lines.join("; "))
                } else {
                    write!(
                        f,
                        "blocked by PodDisruptionBudget {}: {}",
                        pdbs(),
                        lines.join("; ")
                    )
                }
            }
            DrainOutcome::TimedOut {
                remaining,
                blocking_pdbs,
                ..
            } => {
                write!(f, "timed out with {} pods left", remaining.len())?;
                if !blocking_pdbs.is_empty() {
                    write!(f, " (blocked by PodDisruptionBudget {})", pdbs())?;
                }
                Ok(())
            }
            DrainOutcome::Cancelled { remaining, .. } => {
                write!(f, "cancelled with {} pods left", remaining.len())
            }
        }
    }
}

/// A drain's outcome with its counters.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct DrainReport {
    /// The node.
    pub node: String,
    /// How it ended.
    pub outcome: DrainOutcome,
    /// Eviction counters.
    pub stats: DrainStats,
    /// How long it took.
    pub elapsed: Duration,
}
