//! The drain engine: evict a cordoned node's pods with `kubectl drain` semantics without ever
//! breaking a PodDisruptionBudget. (The controller cordons and uncordons: `controller::cordon`.)
//!
//! - what to evict, skip or refuse is decided purely by `rota_core::drain::filter`, under the
//!   budgets of `rota_core::drain::pdb`;
//! - the node's pods and the budgets come from the controller's cluster cache (one index, no
//!   watch of the drain's own): `node_pods` follows the node's pods there;
//! - `evict` runs one task per pod: post the Eviction, react to 429s when the budget moves
//!   (the cache's budget feed, not a blind sleep), wait for the pod to go;
//! - [`Drainer::drain`] ties them together under a per-node deadline and a cancellation token,
//!   and reports a [`DrainOutcome`] that tells the controller whether to proceed, or to give the
//!   slot back and name the budget that blocked.

pub mod evict;
mod node_pods;

use std::collections::{BTreeSet, HashMap};
use std::fmt;
use std::sync::Arc;

use kube::Client;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio::time::{Instant, sleep_until};
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, info, info_span, instrument, warn};

use rota_core::drain::{
    BlockedBy, DrainOutcome, DrainProgress, DrainReport, DrainSpec, DrainStats, PodProgress,
    PodRef, filter,
};

use rota_core::clock::SharedClock;

use crate::kube_client::Clients;
use evict::{EvictionContext, Finish, PodReport};
use filter::SkippedPod;

use crate::store::{ClusterCache, Synced};

/// Errors of the drain engine's API calls. A drain that runs but cannot finish is not an error:
/// it is a [`DrainOutcome`].
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The node does not exist.
    #[error("node {0} not found")]
    NodeNotFound(String),
    /// Other writers kept changing the node while rota tried to cordon it.
    #[error("node {0} kept changing while rota tried to cordon it")]
    Conflict(String),
    /// The watch of the node's pods or of the budgets gave no complete list before the deadline.
    #[error("could not list {0} before the drain's deadline")]
    NotListed(&'static str),
    /// The API server refused or failed a request.
    #[error("Kubernetes API: {0}")]
    Kube(#[from] kube::Error),
}

/// Result alias of the drain engine.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What bounds a running drain, and who follows it.
#[derive(Clone, Debug)]
pub struct DrainControl {
    /// When the drain gives up with [`DrainOutcome::TimedOut`].
    pub deadline: Instant,
    /// Fires to stop the drain with [`DrainOutcome::Cancelled`].
    pub cancel: CancellationToken,
    progress: Option<tokio::sync::watch::Sender<DrainProgress>>,
}

impl DrainControl {
    /// A drain bounded by `deadline`, with its own cancellation token.
    pub fn new(deadline: Instant) -> Self {
        Self {
            deadline,
            cancel: CancellationToken::new(),
            progress: None,
        }
    }

    /// Uses `cancel` to stop the drain (for example a child of the controller's shutdown token).
    pub fn with_cancel(mut self, cancel: CancellationToken) -> Self {
        self.cancel = cancel;
        self
    }

    /// Follows the drain's progress: the receiver sees every change while it runs.
    pub fn progress(&mut self) -> tokio::sync::watch::Receiver<DrainProgress> {
        match &self.progress {
            Some(sender) => sender.subscribe(),
            None => {
                let (sender, receiver) = tokio::sync::watch::channel(DrainProgress::default());
                self.progress = Some(sender);
                receiver
            }
        }
    }
}

/// Cordons, drains and uncordons nodes.
#[derive(Clone)]
pub struct Drainer {
    /// Evictions: without kube's 429 retry, so budget refusals reach the engine at once.
    eviction_client: Client,
    /// The wall clock the drain's decisions read (pods deleted how long ago), the controller's.
    clock: SharedClock,
    /// The controller's cache: the node's pods and the budgets, as the scheduler sees them.
    cache: ClusterCache,
}

impl fmt::Debug for Drainer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Drainer").finish_non_exhaustive()
    }
}

impl Drainer {
    /// A drainer using the coordinator's clients, clock and cluster cache.
    pub fn new(clients: &Clients, clock: SharedClock, cache: ClusterCache) -> Self {
        Self {
            eviction_client: clients.eviction.clone(),
            clock,
            cache,
        }
    }

    /// Evicts the node's pods until they are gone, the drain is blocked, the control's deadline
    /// passes, or its token is cancelled. Dropping the returned future stops every task it
    /// started.
    ///
    /// The node should be cordoned first, or evicted pods may come back.
    #[instrument(skip(self, spec, control), fields(node = %node))]
    pub async fn drain(
        &self,
        node: &str,
        spec: &DrainSpec,
        control: DrainControl,
    ) -> Result<DrainReport> {
        let DrainControl {
            deadline,
            cancel,
            progress,
        } = control;
        let started = Instant::now();
        let report = |outcome: DrainOutcome, stats: DrainStats| DrainReport {
            node: node.to_owned(),
            outcome,
            stats,
            elapsed: started.elapsed(),
        };

        // Dropping this set (on return, or when the caller drops the future) stops following.
        let mut followers = JoinSet::new();
        let mut pods = node_pods::follow(&mut followers, &self.cache, node);
        let mut pdbs = self.cache.pdb_feed();

        let mut listing = (
            wait_listed(&mut pods, deadline, &cancel).await,
            "the node's pods",
        );
        if matches!(listing.0, Listing::Listed) {
            listing = (
                wait_listed(&mut pdbs, deadline, &cancel).await,
                "PodDisruptionBudgets",
            );
        }
        match listing {
            (Listing::Listed, _) => {}
            (Listing::TimedOut, what) => return Err(Error::NotListed(what)),
            (Listing::Cancelled, _) => {
                let outcome = DrainOutcome::Cancelled {
                    remaining: Vec::new(),
                    evicted_so_far: Vec::new(),
                };
                return Ok(report(outcome, DrainStats::default()));
            }
        }

        // Rounds: evict what the plan names, then plan again from the cache. A pod bound to the
        // node around its cordon (a scheduler that had not seen it yet) may reach the cache
        // only after the first plan; it is evicted in the next round rather than lost with the
        // node. The drain is done when a round finds nothing new.
        let ctx = EvictionContext {
            client: self.eviction_client.clone(),
            grace_period_seconds: spec.grace_period_seconds,
            retry_fallback: spec.retry_fallback,
            blocked_timeout: spec.blocked_timeout,
            skip_wait_for_delete_timeout: spec.skip_wait_for_delete_timeout,
            requests: Arc::new(Semaphore::new(spec.max_parallel.max(1))),
            clock: self.clock.clone(),
            pods: pods.clone(),
            pdbs: pdbs.clone(),
            cancel: cancel.clone(),
            deadline,
            // A pod already stopping may be waited for past the deadline, by at most the
            // drain's own length again: a node whose kubelet is gone never finishes it.
            stopping_deadline: deadline + deadline.saturating_duration_since(Instant::now()),
            progress,
        };
        let mut handled: BTreeSet<PodRef> = BTreeSet::new();
        let mut reports: Vec<PodReport> = Vec::new();
        let mut skipped: Vec<SkippedPod> = Vec::new();
        loop {
            let plan = {
                let pods = pods.borrow().index.pods();
                filter::plan(&pods, &pdbs.borrow().index, spec, self.clock.now())
            };
            if !plan.refusals.is_empty() {
                let outcome = DrainOutcome::Refused {
                    errors: plan.refusals,
                };
                warn!(%outcome, "drain refused");
                return Ok(report(outcome, DrainStats::default()));
            }
            for skip in plan.skipped {
                if handled.insert(skip.pod.clone()) {
                    info!(pod = %skip.pod, reason = %skip.reason, "pod skipped");
                    skipped.push(skip);
                }
            }
            let targets: Vec<_> = plan
                .evict
                .into_iter()
                .filter(|t| handled.insert(t.pod.clone()))
                .collect();
            if targets.is_empty() {
                // The cache may lag the API: ask the API itself which pods are bound to the
                // node; one the cache has not shown yet is waited for and planned next round.
                let unseen = self.unseen_pods(node, &handled).await;
                if unseen.is_empty() {
                    break;
                }
                info!(pods = ?unseen, "pods on the node the cache has not shown yet");
                tokio::select! {
                    _ = pods.changed() => continue,
                    () = sleep_until(deadline) => break,
                    () = cancel.cancelled() => break,
                }
            }
            if !reports.is_empty() {
                info!(
                    pods = targets.len(),
                    "pods bound to the node during the drain: evicting them too"
                );
            }
            let round = evict_round(&ctx, node, targets).await;
            let finished = round.iter().all(|r| r.finish == Finish::Evicted);
            reports.extend(round);
            if !finished || cancel.is_cancelled() {
                break;
            }
        }
        drop(ctx);

        let mut stats = DrainStats::default();
        for pod_report in &reports {
            stats += pod_report.stats;
        }
        let outcome = outcome(reports, skipped);
        info!(%outcome, ?stats, "drain finished");
        Ok(report(outcome, stats))
    }
}

impl Drainer {
    /// The pods the API server has bound to `node`, not finished and not `handled` (planned to
    /// be evicted or skipped) yet, by name. Empty when the API cannot be asked (the cache's
    /// view stands then).
    async fn unseen_pods(&self, node: &str, handled: &BTreeSet<PodRef>) -> Vec<String> {
        let pods: kube::Api<k8s_openapi::api::core::v1::Pod> =
            kube::Api::all(self.eviction_client.clone());
        let params = kube::api::ListParams::default().fields(&format!("spec.nodeName={node}"));
        let Ok(list) = pods.list(&params).await else {
            return Vec::new();
        };
        list.items
            .iter()
            .filter(|pod| {
                let phase = pod.status.as_ref().and_then(|s| s.phase.as_deref());
                !matches!(phase, Some("Succeeded" | "Failed"))
                    && pod.metadata.deletion_timestamp.is_none()
                    && !handled.contains(&PodRef::of(pod))
            })
            .map(|pod| {
                format!(
                    "{}/{}",
                    pod.metadata.namespace.as_deref().unwrap_or(""),
                    pod.metadata.name.as_deref().unwrap_or("")
                )
            })
            .collect()
    }
}

/// Evicts `targets` from `node`, one task per pod under `ctx`, and reports each pod.
async fn evict_round(
    ctx: &EvictionContext,
    node: &str,
    targets: Vec<filter::PodToEvict>,
) -> Vec<PodReport> {
    for target in targets.iter().filter(|t| !t.warnings.is_empty()) {
        warn!(pod = %target.pod, warnings = ?target.warnings, "evicting pod");
    }
    info!(evict = targets.len(), "draining");
    if let Some(progress) = &ctx.progress {
        progress.send_modify(|view| {
            view.pods.extend(
                targets
                    .iter()
                    .map(|target| (target.pod.clone(), PodProgress::Evicting)),
            );
        });
    }
    let mut tasks = JoinSet::new();
    let mut task_pods = HashMap::new();
    for target in targets {
        let pod = target.pod.clone();
        let span = info_span!("evict", node = %node, pod = %pod);
        let handle = tasks.spawn(evict::evict_pod(ctx.clone(), target).instrument(span));
        task_pods.insert(handle.id(), pod);
    }
    let mut reports = Vec::with_capacity(task_pods.len());
    while let Some(joined) = tasks.join_next_with_id().await {
        match joined {
            Ok((_, pod_report)) => reports.push(pod_report),
            Err(error) => {
                // Tasks do not panic and are not aborted while this loop runs; should one
                // still end that way, its pod counts as not evicted rather than as drained.
                warn!(%error, "eviction task failed");
                if let Some(pod) = task_pods.remove(&error.id()) {
                    reports.push(PodReport {
                        pod,
                        finish: Finish::Unobserved,
                        progress: PodProgress::Evicting,
                        stats: DrainStats::default(),
                    });
                }
            }
        }
    }
    reports
}

/// How waiting for a watch's first list ended.
enum Listing {
    Listed,
    TimedOut,
    Cancelled,
}

/// Waits until a watch has listed its objects once, the deadline passes, or the drain is
/// cancelled.
async fn wait_listed<T>(
    rx: &mut tokio::sync::watch::Receiver<Synced<T>>,
    deadline: Instant,
    cancel: &CancellationToken,
) -> Listing {
    tokio::select! {
        listed = async { rx.wait_for(|state| state.listed).await.is_ok() } => {
            if listed {
                return Listing::Listed;
            }
            // The watch task is gone; only the deadline or the cancellation can end the wait.
            tokio::select! {
                () = sleep_until(deadline) => Listing::TimedOut,
                () = cancel.cancelled() => Listing::Cancelled,
            }
        }
        () = sleep_until(deadline) => Listing::TimedOut,
        () = cancel.cancelled() => Listing::Cancelled,
    }
}

/// Folds the pods' reports into the drain's outcome. Cancellation wins, then the deadline, then
/// blocked pods; only a drain whose every pod is gone is [`DrainOutcome::Drained`].
fn outcome(mut reports: Vec<PodReport>, skipped: Vec<SkippedPod>) -> DrainOutcome {
    reports.sort_by(|a, b| a.pod.cmp(&b.pod));
    let mut evicted = Vec::new();
    let mut blocked = Vec::new();
    let mut unfinished = Vec::new();
    let mut blocking_pdbs = BTreeSet::new();
    let mut cancelled = false;
    for report in reports {
        match report.finish {
            Finish::Evicted => evicted.push(report.pod),
            Finish::Blocked {
                reason,
                pdbs,
                message,
            } => {
                blocking_pdbs.extend(pdbs.iter().cloned());
                blocked.push(BlockedBy {
                    pod: report.pod,
                    pdbs,
                    reason,
                    message,
                });
            }
            Finish::TimedOut | Finish::Cancelled | Finish::Unobserved => {
                cancelled |= report.finish == Finish::Cancelled;
                if let PodProgress::BlockedByPdb { pdbs, .. } = report.progress {
                    blocking_pdbs.extend(pdbs);
                }
                unfinished.push(report.pod);
            }
        }
    }
    if cancelled || !unfinished.is_empty() {
        let mut remaining = unfinished;
        remaining.extend(blocked.into_iter().map(|b| b.pod));
        remaining.sort();
        return if cancelled {
            DrainOutcome::Cancelled {
                remaining,
                evicted_so_far: evicted,
            }
        } else {
            DrainOutcome::TimedOut {
                remaining,
                blocking_pdbs: blocking_pdbs.into_iter().collect(),
                evicted_so_far: evicted,
            }
        };
    }
    if !blocked.is_empty() {
        return DrainOutcome::Blocked {
            by: blocked,
            evicted_so_far: evicted,
        };
    }
    DrainOutcome::Drained { evicted, skipped }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rota_core::drain::{BlockReason, PdbRef, PodRef, PodRefusal, RefusalReason, SkipReason};

    fn pod(name: &str) -> PodRef {
        PodRef {
            namespace: "a".into(),
            name: name.into(),
            uid: format!("uid-{name}"),
        }
    }

    fn pdb(name: &str) -> PdbRef {
        PdbRef {
            namespace: "a".into(),
            name: name.into(),
        }
    }

    fn report(name: &str, finish: Finish, progress: PodProgress) -> PodReport {
        PodReport {
            pod: pod(name),
            finish,
            progress,
            stats: DrainStats::default(),
        }
    }

    fn evicted(name: &str) -> PodReport {
        report(name, Finish::Evicted, PodProgress::WaitingForDeletion)
    }

    fn blocked(name: &str, by: &str) -> PodReport {
        report(
            name,
            Finish::Blocked {
                reason: BlockReason::DisruptionBudget,
                pdbs: vec![pdb(by)],
                message: "would violate".into(),
            },
            PodProgress::BlockedByPdb {
                pdbs: vec![pdb(by)],
                message: "would violate".into(),
            },
        )
    }

    fn waiting_on(name: &str, by: &str, finish: Finish) -> PodReport {
        report(
            name,
            finish,
            PodProgress::BlockedByPdb {
                pdbs: vec![pdb(by)],
                message: "would violate".into(),
            },
        )
    }

    #[test]
    fn outcome_table() {
        let skipped = vec![SkippedPod {
            pod: pod("ds"),
            reason: SkipReason::MirrorPod,
        }];
        let cases: Vec<(&str, Vec<PodReport>, DrainOutcome)> = vec![
            (
                "nothing to evict",
                vec![],
                DrainOutcome::Drained {
                    evicted: vec![],
                    skipped: skipped.clone(),
                },
            ),
            (
                "all evicted, sorted",
                vec![evicted("b"), evicted("a")],
                DrainOutcome::Drained {
                    evicted: vec![pod("a"), pod("b")],
                    skipped: skipped.clone(),
                },
            ),
            (
                "one blocked",
                vec![evicted("a"), blocked("b", "web")],
                DrainOutcome::Blocked {
                    by: vec![BlockedBy {
                        pod: pod("b"),
                        pdbs: vec![pdb("web")],
                        reason: BlockReason::DisruptionBudget,
                        message: "would violate".into(),
                    }],
                    evicted_so_far: vec![pod("a")],
                },
            ),
            (
                "timed out waiting on a budget, another blocked",
                vec![
                    evicted("a"),
                    waiting_on("b", "web", Finish::TimedOut),
                    blocked("c", "db"),
                    report("d", Finish::TimedOut, PodProgress::WaitingForDeletion),
                ],
                DrainOutcome::TimedOut {
                    remaining: vec![pod("b"), pod("c"), pod("d")],
                    blocking_pdbs: vec![pdb("db"), pdb("web")],
                    evicted_so_far: vec![pod("a")],
                },
            ),
            (
                "lost watch counts as unfinished",
                vec![report(
                    "a",
                    Finish::Unobserved,
                    PodProgress::WaitingForDeletion,
                )],
                DrainOutcome::TimedOut {
                    remaining: vec![pod("a")],
                    blocking_pdbs: vec![],
                    evicted_so_far: vec![],
                },
            ),
            (
                "cancelled wins",
                vec![
                    evicted("a"),
                    waiting_on("b", "web", Finish::Cancelled),
                    report("c", Finish::TimedOut, PodProgress::Evicting),
                ],
                DrainOutcome::Cancelled {
                    remaining: vec![pod("b"), pod("c")],
                    evicted_so_far: vec![pod("a")],
                },
            ),
        ];
        for (case, reports, want) in cases {
            assert_eq!(outcome(reports, skipped.clone()), want, "{case}");
        }
    }

    #[test]
    fn blocking_pdbs_and_summary() {
        let blocked = outcome(vec![blocked("a", "web"), blocked("b", "web")], vec![]);
        assert_eq!(blocked.blocking_pdbs(), vec![pdb("web")]);
        assert_eq!(
            blocked.to_string(),
            "blocked by PodDisruptionBudget a/web: a/a: would violate; a/b: would violate"
        );
        let forbidden = DrainOutcome::Blocked {
            by: vec![BlockedBy {
                pod: pod("p"),
                pdbs: vec![],
                reason: BlockReason::Refused { code: 403 },
                message: "forbidden".into(),
            }],
            evicted_so_far: vec![],
        };
        assert_eq!(forbidden.to_string(), "blocked: a/p: forbidden");
        let refused = DrainOutcome::Refused {
            errors: vec![PodRefusal {
                pod: pod("p"),
                reason: RefusalReason::MultiplePdbs {
                    pdbs: vec![pdb("one"), pdb("two")],
                },
            }],
        };
        assert_eq!(refused.blocking_pdbs(), vec![pdb("one"), pdb("two")]);
        assert!(!refused.is_drained());
    }
}
