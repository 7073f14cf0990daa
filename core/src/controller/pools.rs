//! The policies in force, the circuit breaker's failure counts, and each policy's status. Pure:
//! the controller feeds it the cached `MaintenancePolicy` objects and writes what it computes.
//!
//! - A policy whose current spec is invalid keeps acting on its last valid spec (its `Valid`
//!   condition says why); only `spec.paused` is always taken from the current spec, so that a
//!   pause works even in an invalid spec. A policy never seen valid (since this coordinator
//!   started) defines no pool.
//! - Failures (agent-reported or failed verifications) count per pool and are kept in
//!   `status.failed`, so they survive a restart. At `maxFailures` the circuit breaker holds the
//!   pool (condition `CircuitOpen`). A human closes it by pausing and resuming the rollout
//!   (`spec.paused` true, then false), which resets the count, or by raising `maxFailures`.

use std::collections::BTreeMap;
use std::sync::Arc;

use jiff::Timestamp;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube_core::ResourceExt;

use crate::policy::crd::{KubernetesUpgradeStatus, WaitingReasonSummary};
use crate::policy::window::ClosedReason;
use crate::policy::{
    MaintenancePolicy, MaintenancePolicySpec, MaintenancePolicyStatus, PolicyError,
    ValidatedPolicy, conditions, validate,
};
use crate::scheduler::Pool;
use crate::upgrade::{Phase, RolloutState};

/// What changed about a policy, for Events.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PolicyChange {
    /// The current spec is invalid.
    Invalid {
        /// The policy.
        policy: String,
        /// Every problem, and what stays in force.
        message: String,
    },
    /// A human paused the rollout.
    Paused {
        /// The policy.
        policy: String,
    },
    /// A human resumed the rollout (the failure count was reset).
    Resumed {
        /// The policy.
        policy: String,
    },
    /// The policy was deleted.
    Removed {
        /// The policy.
        policy: String,
    },
}

/// The spec a pool runs on.
#[derive(Clone, Debug)]
pub struct InForce {
    /// The checked policy (`paused` from the current spec).
    pub policy: Arc<ValidatedPolicy>,
    /// The spec it came from (for what the drain engine needs in Kubernetes' own types).
    pub spec: Arc<MaintenancePolicySpec>,
    /// The generation it came from.
    pub generation: Option<i64>,
}

#[derive(Clone, Debug)]
struct Entry {
    uid: Option<String>,
    generation: Option<i64>,
    in_force: Option<InForce>,
    problems: Vec<PolicyError>,
    paused: bool,
    failures: u32,
    observed: Option<MaintenancePolicyStatus>,
    /// `resourceVersion` of the object `observed` came from.
    observed_version: Option<String>,
    /// The status last written, and the `resourceVersion` observed when it was written: until
    /// the watch delivers the write, the observed status is older than what was written.
    written: Option<(Option<String>, MaintenancePolicyStatus)>,
    /// A human resumed the pool and no status written since says so: a failed pre-flight of
    /// its Kubernetes upgrade runs again.
    resumed: bool,
}

/// A resume lets a failed pre-flight run again.
fn retry_preflight(status: &mut MaintenancePolicyStatus) {
    if let Some(rollout) = status.kubernetes_upgrade.as_mut()
        && rollout.phase == Phase::PreflightFailed.as_str()
    {
        rollout.phase = Phase::PreFlight.as_str().to_owned();
        rollout.message = "resumed: the pre-flight runs again".to_owned();
    }
}

/// Every policy the controller knows.
#[derive(Clone, Debug, Default)]
pub struct PolicyBook {
    entries: BTreeMap<String, Entry>,
}

/// A pool's node counts for its status.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PoolCounts {
    /// Nodes the policy selects.
    pub nodes: usize,
    /// Nodes whose last maintenance was verified.
    pub done: usize,
    /// Nodes holding a slot that has not failed.
    pub in_progress: usize,
    /// Queued nodes.
    pub waiting: usize,
}

fn status_paused(status: Option<&MaintenancePolicyStatus>) -> bool {
    status
        .into_iter()
        .flat_map(|s| &s.conditions)
        .any(|c| c.type_ == conditions::PAUSED && c.status == "True")
}

impl PolicyBook {
    /// An empty book.
    pub fn new() -> Self {
        Self::default()
    }

    /// Takes in the cached policies; returns what changed.
    pub fn update(
        &mut self,
        cached: &BTreeMap<String, Arc<MaintenancePolicy>>,
    ) -> Vec<PolicyChange> {
        let mut changes = Vec::new();
        self.entries.retain(|name, _| {
            let keep = cached.contains_key(name);
            if !keep {
                changes.push(PolicyChange::Removed {
                    policy: name.clone(),
                });
            }
            keep
        });
        for (name, object) in cached {
            let generation = object.metadata.generation;
            let uid = object.uid();
            let paused = object.spec.paused;
            let entry = match self.entries.get_mut(name) {
                Some(entry) if entry.uid == uid => entry,
                _ => {
                    // First sight (or the policy was recreated): take the persisted count, and
                    // treat a resume that happened while nobody watched as a resume.
                    let status = object.status.as_ref();
                    let resumed = status_paused(status) && !paused;
                    let failures = if resumed {
                        0
                    } else {
                        status.map_or(0, |s| u32::try_from(s.failed).unwrap_or(0))
                    };
                    if resumed {
                        changes.push(PolicyChange::Resumed {
                            policy: name.clone(),
                        });
                    }
                    let observed = object.status.clone().map(|mut s| {
                        if resumed {
                            retry_preflight(&mut s);
                        }
                        s
                    });
                    self.entries.insert(
                        name.clone(),
                        Entry {
                            uid: uid.clone(),
                            generation: None,
                            in_force: None,
                            problems: Vec::new(),
                            paused,
                            failures,
                            observed,
                            observed_version: None,
                            written: None,
                            resumed,
                        },
                    );
                    match self.entries.get_mut(name) {
                        Some(entry) => entry,
                        None => continue,
                    }
                }
            };
            if entry.observed_version != object.resource_version() {
                entry.observed = object.status.clone();
                entry.observed_version = object.resource_version();
                if entry.resumed {
                    // The resume is not in the status yet: a failed pre-flight runs again.
                    for status in entry.observed.iter_mut() {
                        retry_preflight(status);
                    }
                }
            }
            if entry.paused != paused {
                changes.push(if paused {
                    PolicyChange::Paused {
                        policy: name.clone(),
                    }
                } else {
                    entry.failures = 0;
                    entry.resumed = true;
                    for status in entry.observed.iter_mut() {
                        retry_preflight(status);
                    }
                    if let Some((_, written)) = entry.written.as_mut() {
                        retry_preflight(written);
                    }
                    PolicyChange::Resumed {
                        policy: name.clone(),
                    }
                });
                entry.paused = paused;
            }
            if entry.generation != generation
                || (entry.in_force.is_none() && entry.problems.is_empty())
            {
                entry.generation = generation;
                match validate(&object.spec) {
                    Ok(policy) => {
                        entry.problems.clear();
                        entry.in_force = Some(InForce {
                            policy: Arc::new(policy),
                            spec: Arc::new(object.spec.clone()),
                            generation,
                        });
                    }
                    Err(problems) => {
                        entry.problems = problems;
                        changes.push(PolicyChange::Invalid {
                            policy: name.clone(),
                            message: invalid_message(entry),
                        });
                    }
                }
            }
            if let Some(in_force) = entry.in_force.as_mut()
                && in_force.policy.paused != paused
            {
                Arc::make_mut(&mut in_force.policy).paused = paused;
            }
        }
        changes
    }

    /// The pools for the scheduler: one per policy with a spec in force.
    pub fn pools(&self) -> Vec<Pool> {
        self.entries
            .iter()
            .filter_map(|(name, entry)| {
                entry.in_force.as_ref().map(|f| Pool {
                    name: name.clone(),
                    policy: f.policy.clone(),
                    failures: entry.failures,
                    firing_alerts: Vec::new(),
                    alerts_unknown: None,
                    rollout_held: None,
                })
            })
            .collect()
    }

    /// The pool's Kubernetes upgrade rollout as last decided (written, else observed in the
    /// policy's status).
    pub fn rollout(&self, pool: &str) -> Option<RolloutState> {
        let entry = self.entries.get(pool)?;
        let status = match &entry.written {
            Some((version, written)) if *version == entry.observed_version => Some(written),
            _ => entry.observed.as_ref(),
        }?;
        let rollout = status.kubernetes_upgrade.as_ref()?;
        Some(RolloutState {
            target: rollout.target.parse().ok()?,
            phase: rollout.phase.parse().ok()?,
            message: rollout.message.clone(),
        })
    }

    /// The spec a pool runs on.
    pub fn in_force(&self, pool: &str) -> Option<&InForce> {
        self.entries.get(pool).and_then(|e| e.in_force.as_ref())
    }

    /// The policy's UID, for Events.
    pub fn uid(&self, pool: &str) -> Option<&str> {
        self.entries.get(pool).and_then(|e| e.uid.as_deref())
    }

    /// Counts a failed maintenance in `pool`; true when this failure opened the circuit breaker.
    pub fn record_failure(&mut self, pool: &str) -> bool {
        let Some(entry) = self.entries.get_mut(pool) else {
            return false;
        };
        let before = entry.failures;
        entry.failures = entry.failures.saturating_add(1);
        entry.in_force.as_ref().is_some_and(|f| {
            !f.policy.circuit_open(before) && f.policy.circuit_open(entry.failures)
        })
    }

    /// Failures counted in `pool`.
    pub fn failures(&self, pool: &str) -> u32 {
        self.entries.get(pool).map_or(0, |e| e.failures)
    }

    /// Names of every known policy.
    pub fn names(&self) -> impl Iterator<Item = &String> {
        self.entries.keys()
    }

    /// The status `pool` should have now, or `None` when it equals the one last observed (so
    /// that the controller writes only changes). Condition times move only when a condition's
    /// status changes.
    pub fn status_update(
        &self,
        pool: &str,
        counts: PoolCounts,
        waiting_reasons: Vec<WaitingReasonSummary>,
        rollout: Option<&RolloutState>,
        now: Timestamp,
    ) -> Option<MaintenancePolicyStatus> {
        let entry = self.entries.get(pool)?;
        let observed = entry.observed.clone().unwrap_or_default();
        let now = Time(Timestamp::from_second(now.as_second()).unwrap_or(now));
        let generation = entry.generation;
        let condition = |type_: &str, ok: bool, reason: &str, message: String| {
            let status = if ok { "True" } else { "False" };
            let last_transition_time = observed
                .conditions
                .iter()
                .find(|c| c.type_ == type_ && c.status == status)
                .map_or_else(|| now.clone(), |c| c.last_transition_time.clone());
            Condition {
                last_transition_time,
                message,
                observed_generation: generation,
                reason: reason.to_owned(),
                status: status.to_owned(),
                type_: type_.to_owned(),
            }
        };
        let mut conditions_now = Vec::new();
        conditions_now.push(if entry.problems.is_empty() {
            condition(conditions::VALID, true, "Valid", String::new())
        } else {
            condition(conditions::VALID, false, "Invalid", invalid_message(entry))
        });
        conditions_now.push(if entry.paused {
            condition(
                conditions::PAUSED,
                true,
                "PausedByUser",
                "spec.paused is true: no node is admitted; nodes in maintenance finish".to_owned(),
            )
        } else {
            condition(conditions::PAUSED, false, "NotPaused", String::new())
        });
        if let Some(in_force) = &entry.in_force {
            let policy = &in_force.policy;
            let open = policy.circuit_open(entry.failures);
            conditions_now.push(if open {
                condition(
                    conditions::CIRCUIT_OPEN,
                    true,
                    "TooManyFailures",
                    format!(
                        "{} failed maintenances (maxFailures {}): no node is admitted; fix the failed nodes, then pause and resume the rollout",
                        entry.failures, policy.max_failures
                    ),
                )
            } else if policy.max_failures == 0 {
                condition(
                    conditions::CIRCUIT_OPEN,
                    false,
                    "Disabled",
                    "maxFailures is 0: the circuit breaker is off".to_owned(),
                )
            } else {
                condition(
                    conditions::CIRCUIT_OPEN,
                    false,
                    "BelowMaxFailures",
                    format!(
                        "{} of {} failures allowed",
                        entry.failures, policy.max_failures
                    ),
                )
            });
            let window = policy.window_state(now.0);
            conditions_now.push(match window.reason {
                None => condition(conditions::WINDOW_OPEN, true, "InsideWindow", String::new()),
                Some(ClosedReason::OutsideWindows) => condition(
                    conditions::WINDOW_OPEN,
                    false,
                    "OutsideWindows",
                    match window.next_open {
                        Some(at) => format!("outside every maintenance window; next opens at {at}"),
                        None => "outside every maintenance window".to_owned(),
                    },
                ),
                Some(ClosedReason::Blackout { reason, until }) => condition(
                    conditions::WINDOW_OPEN,
                    false,
                    "Blackout",
                    if reason.is_empty() {
                        format!("blackout until {until}")
                    } else {
                        format!("blackout {reason:?} until {until}")
                    },
                ),
            });
        }
        let status = MaintenancePolicyStatus {
            observed_generation: generation,
            nodes: clamp(counts.nodes),
            done: clamp(counts.done),
            in_progress: clamp(counts.in_progress),
            waiting: clamp(counts.waiting),
            failed: i32::try_from(entry.failures).unwrap_or(i32::MAX),
            waiting_reasons,
            conditions: conditions_now,
            kubernetes_upgrade: rollout.map(|r| KubernetesUpgradeStatus {
                target: r.target.to_string(),
                phase: r.phase.as_str().to_owned(),
                message: r.message.clone(),
            }),
        };
        let unchanged = entry.observed.as_ref() == Some(&status)
            || entry.written.as_ref().is_some_and(|(version, written)| {
                *version == entry.observed_version && *written == status
            });
        (!unchanged).then_some(status)
    }

    /// Remembers that `status` was written for `pool`.
    pub fn mark_written(&mut self, pool: &str, status: MaintenancePolicyStatus) {
        if let Some(entry) = self.entries.get_mut(pool) {
            entry.written = Some((entry.observed_version.clone(), status));
            entry.resumed = false;
        }
    }
}

fn clamp(n: usize) -> i32 {
    i32::try_from(n).unwrap_or(i32::MAX)
}

fn invalid_message(entry: &Entry) -> String {
    let problems: Vec<String> = entry.problems.iter().map(ToString::to_string).collect();
    let keeping = match &entry.in_force {
        Some(InForce {
            generation: Some(g),
            ..
        }) => format!("the last valid spec (generation {g}) stays in force"),
        Some(_) => "the last valid spec stays in force".to_owned(),
        None => "no valid spec is known: the pool is not maintained".to_owned(),
    };
    format!("{}; {keeping}", problems.join("; "))
}
