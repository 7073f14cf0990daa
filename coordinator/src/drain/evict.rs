//! Evicting one pod: the `policy/v1` Eviction request, what its answer means, and the task that
//! retries it until the pod is gone, the budget keeps refusing for too long, the deadline
//! passes, or the drain is cancelled.

use std::sync::Arc;
use std::time::Duration;

use jiff::Timestamp;
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::api::policy::v1::Eviction;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{DeleteOptions, ObjectMeta, Preconditions};
use kube::api::PostParams;
use kube::{Api, Client};
use tokio::sync::{Semaphore, watch};
use tokio::time::{Instant, sleep, sleep_until};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use super::node_pods::NodePods;
use crate::store::Synced;
use rota_core::clock::{Clock, SharedClock};
use rota_core::drain::filter::PodToEvict;
use rota_core::drain::pdb::{Fingerprint, PdbIndex, PdbRef};
use rota_core::drain::{BlockReason, DrainProgress, DrainStats, PodProgress, PodRef};

/// The message the API server gives when a pod is covered by several budgets.
const MULTIPLE_PDBS: &str = "more than one PodDisruptionBudget";

/// The cause type the API server attaches to a budget's 429.
const DISRUPTION_BUDGET_CAUSE: &str = "DisruptionBudget";

/// First back-off after a transient failure (connection refused, 5xx); doubles up to the
/// drain's retry fallback.
const FIRST_TRANSIENT_BACKOFF: Duration = Duration::from_millis(250);

/// The Eviction to post for a pod.
///
/// Built by hand rather than through `Api::evict`, whose body carries a snake_case
/// `delete_options` that a real API server ignores. The UID precondition keeps the eviction from
/// hitting a replacement pod that took the same name.
pub fn eviction_body(pod: &PodRef, grace_period_seconds: Option<i64>) -> Eviction {
    Eviction {
        metadata: ObjectMeta {
            name: Some(pod.name.clone()),
            namespace: Some(pod.namespace.clone()),
            ..ObjectMeta::default()
        },
        delete_options: Some(DeleteOptions {
            grace_period_seconds,
            preconditions: Some(Preconditions {
                uid: Some(pod.uid.clone()),
                resource_version: None,
            }),
            ..DeleteOptions::default()
        }),
    }
}

/// What the API server said to one eviction request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum EvictResponse {
    /// 2xx: the pod is being deleted.
    Accepted,
    /// 404: the pod is already gone.
    Gone,
    /// 429: not now. `budget` tells a PodDisruptionBudget refusal from API throttling.
    TooManyRequests {
        /// The server's message.
        message: String,
        /// Whether a disruption budget refused it.
        budget: bool,
        /// The server's suggested wait, if any.
        retry_after: Option<Duration>,
    },
    /// 500 "more than one PodDisruptionBudget": the eviction API cannot evict this pod.
    MultiplePdbs {
        /// The server's message.
        message: String,
    },
    /// A client error that retrying does not cure (403 for a budget below zero, 400, ...).
    Refused {
        /// HTTP status code.
        code: u16,
        /// The server's message.
        message: String,
    },
    /// Anything else (conflicts, 5xx, connection errors): retried after a back-off.
    Transient {
        /// What went wrong.
        message: String,
    },
}

impl EvictResponse {
    /// Interprets the result of an eviction request.
    pub fn classify<T>(result: &Result<T, kube::Error>) -> Self {
        let status = match result {
            Ok(_) => return EvictResponse::Accepted,
            Err(kube::Error::Api(status)) => status,
            Err(other) => {
                return EvictResponse::Transient {
                    message: other.to_string(),
                };
            }
        };
        let message = status.message.clone();
        match status.code {
            404 => EvictResponse::Gone,
            429 => {
                let details = status.details.as_ref();
                let budget = details.is_some_and(|d| {
                    d.causes
                        .iter()
                        .any(|cause| cause.reason == DISRUPTION_BUDGET_CAUSE)
                }) || message.contains("disruption budget");
                let retry_after = details
                    .map(|d| d.retry_after_seconds)
                    .filter(|secs| *secs > 0)
                    .map(|secs| Duration::from_secs(u64::from(secs)));
                EvictResponse::TooManyRequests {
                    message,
                    budget,
                    retry_after,
                }
            }
            500 if message.contains(MULTIPLE_PDBS) => EvictResponse::MultiplePdbs { message },
            // 408 (request timeout) and 409 (the budget or the pod changed under the request;
            // the next attempt finds out whether the pod is still ours) are worth retrying.
            code @ 400..=499 if code != 408 && code != 409 => {
                EvictResponse::Refused { code, message }
            }
            _ => EvictResponse::Transient {
                message: if message.is_empty() {
                    format!("HTTP {}", status.code)
                } else {
                    message
                },
            },
        }
    }
}

/// How one pod's eviction ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Finish {
    /// The pod is gone from the node.
    Evicted,
    /// The pod cannot be evicted.
    Blocked {
        /// Why.
        reason: BlockReason,
        /// The budgets covering it.
        pdbs: Vec<PdbRef>,
        /// The server's message.
        message: String,
    },
    /// The deadline passed first.
    TimedOut,
    /// The drain was cancelled first.
    Cancelled,
    /// How the eviction ended cannot be told (the pod watch stopped, or the task failed).
    Unobserved,
}

/// The report of one pod's eviction task.
#[derive(Clone, Debug)]
pub(crate) struct PodReport {
    /// The pod.
    pub pod: PodRef,
    /// How it ended.
    pub finish: Finish,
    /// Where it stood when it ended (tells what a timed-out pod was waiting for).
    pub progress: PodProgress,
    /// Requests this task made.
    pub stats: DrainStats,
}

/// What every eviction task of one drain shares.
#[derive(Clone)]
pub(crate) struct EvictionContext {
    /// Client without kube's 429 retry.
    pub client: Client,
    /// `deleteOptions.gracePeriodSeconds`; `None` for the pod's own.
    pub grace_period_seconds: Option<i64>,
    /// Longest wait between two attempts when nothing signals a change.
    pub retry_fallback: Duration,
    /// How long a budget may keep refusing a pod before the drain gives up on it.
    pub blocked_timeout: Duration,
    /// A pod deleted longer ago than this counts as gone (kubectl's skip-wait-for-delete).
    pub skip_wait_for_delete_timeout: Option<Duration>,
    /// Bounds concurrent eviction requests.
    pub requests: Arc<Semaphore>,
    /// The wall clock (how long ago a pod was deleted).
    pub clock: SharedClock,
    /// The node's pods.
    pub pods: watch::Receiver<Synced<NodePods>>,
    /// The cluster's budgets.
    pub pdbs: watch::Receiver<Synced<PdbIndex>>,
    /// Ends the drain early.
    pub cancel: CancellationToken,
    /// When the drain gives up.
    pub deadline: Instant,
    /// The latest a pod whose eviction was accepted is waited for (its grace period allowing).
    pub stopping_deadline: Instant,
    /// Where to publish progress, if anyone follows it.
    pub progress: Option<watch::Sender<DrainProgress>>,
}

/// One pod's progress and counters, mirrored into the drain's published progress.
struct Tracker {
    pod: PodRef,
    progress: PodProgress,
    stats: DrainStats,
    sink: Option<watch::Sender<DrainProgress>>,
}

impl Tracker {
    fn set(&mut self, progress: PodProgress) {
        if let Some(sink) = &self.sink {
            sink.send_modify(|drain| {
                drain.pods.insert(self.pod.clone(), progress.clone());
            });
        }
        self.progress = progress;
    }

    fn count(&mut self, counter: fn(&mut DrainStats) -> &mut u64) {
        *counter(&mut self.stats) += 1;
        if let Some(sink) = &self.sink {
            sink.send_modify(|drain| *counter(&mut drain.stats) += 1);
        }
    }
}

/// Evicts one pod and reports how it went. Never panics; stops at the deadline or on
/// cancellation.
pub(crate) async fn evict_pod(ctx: EvictionContext, pod: PodToEvict) -> PodReport {
    let mut tracker = Tracker {
        pod: pod.pod.clone(),
        progress: PodProgress::Evicting,
        stats: DrainStats::default(),
        sink: ctx.progress.clone(),
    };
    // The drain's deadline, unless the pod's eviction is accepted: then the kubelet has the
    // pod's grace period to stop it, and the wait for that is not cut short (see `run`), up to
    // the context's `stopping_deadline`.
    let (deadline_tx, deadline_rx) = watch::channel(ctx.deadline);
    let finish = tokio::select! {
        finish = run(&ctx, &pod, &mut tracker, &deadline_tx) => finish,
        () = until_deadline(deadline_rx) => Finish::TimedOut,
        () = ctx.cancel.cancelled() => Finish::Cancelled,
    };
    let progress = tracker.progress.clone();
    match &finish {
        Finish::Evicted => {
            info!("pod evicted");
            tracker.set(PodProgress::Evicted);
        }
        Finish::Blocked {
            reason,
            pdbs,
            message,
        } => {
            warn!(?reason, pdb = %join(pdbs), %message, "pod cannot be evicted");
            tracker.set(PodProgress::NotEvicted {
                reason: reason.clone(),
                message: message.clone(),
            });
        }
        Finish::TimedOut => warn!(?progress, "deadline passed before the pod was evicted"),
        Finish::Cancelled => info!(?progress, "eviction cancelled"),
        Finish::Unobserved => warn!("pod watch ended; cannot tell whether the pod is gone"),
    }
    PodReport {
        pod: pod.pod,
        finish,
        progress,
        stats: tracker.stats,
    }
}

/// Sleeps until the deadline `deadline` holds, following its changes.
async fn until_deadline(mut deadline: watch::Receiver<Instant>) {
    loop {
        let at = *deadline.borrow_and_update();
        tokio::select! {
            () = sleep_until(at) => return,
            changed = deadline.changed() => {
                if changed.is_err() {
                    sleep_until(at).await;
                    return;
                }
            }
        }
    }
}

/// How long after its eviction was accepted a pod may take to go: its grace period (the
/// drain's override, or the pod's own, or Kubernetes' default of 30 s) and as much again, at
/// least a minute, for the kubelet to report it gone.
fn termination_allowance(grace_period_seconds: Option<i64>) -> Duration {
    let grace = Duration::from_secs(u64::try_from(grace_period_seconds.unwrap_or(30)).unwrap_or(0));
    grace + grace.max(Duration::from_secs(60))
}

async fn run(
    ctx: &EvictionContext,
    target: &PodToEvict,
    tracker: &mut Tracker,
    deadline: &watch::Sender<Instant>,
) -> Finish {
    let pod = &target.pod;
    let api: Api<Pod> = Api::namespaced(ctx.client.clone(), &pod.namespace);
    let body = eviction_body(pod, ctx.grace_period_seconds);
    let mut pdbs = ctx.pdbs.clone();
    let mut pods = ctx.pods.clone();
    let mut retried_on: Option<Fingerprint> = None;
    let mut blocked_since: Option<Instant> = None;
    let mut backoff = FIRST_TRANSIENT_BACKOFF;

    loop {
        // The pod may have gone (or been replaced) while we waited: nothing left to evict.
        if pods.borrow().index.is_gone(pod) {
            return Finish::Evicted;
        }
        let response = {
            // The semaphore is never closed; if it were, evicting unbounded is still correct.
            let _permit = ctx.requests.acquire().await.ok();
            tracker.count(|s| &mut s.evictions_attempted);
            let result = api
                .create_subresource::<_, serde_json::Value>(
                    "eviction",
                    &pod.name,
                    &PostParams::default(),
                    &body,
                )
                .await;
            EvictResponse::classify(&result)
        };
        let covering = || pdbs.borrow().index.covering(&pod.namespace, &target.labels);
        match response {
            EvictResponse::Accepted => {
                tracker.count(|s| &mut s.evictions_succeeded);
                debug!("eviction accepted; waiting for the pod to go");
                tracker.set(PodProgress::WaitingForDeletion);
                // The pod is stopping: a drain that gave up now would leave the node
                // half-drained and gain nothing, so the wait lasts as long as the kubelet may
                // take, and longer than the drain's timeout if need be.
                let grace = ctx.grace_period_seconds.or_else(|| {
                    pods.borrow()
                        .index
                        .get(&pod.namespace, &pod.name)
                        .and_then(|p| p.spec.as_ref())
                        .and_then(|spec| spec.termination_grace_period_seconds)
                });
                let stopped_by =
                    (Instant::now() + termination_allowance(grace)).min(ctx.stopping_deadline);
                deadline.send_if_modified(|at| {
                    let later = stopped_by > *at;
                    if later {
                        *at = stopped_by;
                    }
                    later
                });
                let timeout = ctx.skip_wait_for_delete_timeout;
                return wait_gone(&mut pods, pod, timeout, ctx.clock.as_ref()).await;
            }
            EvictResponse::Gone => return Finish::Evicted,
            EvictResponse::TooManyRequests {
                message,
                budget,
                retry_after,
            } => {
                let now = Instant::now();
                let fallback = retry_after
                    .unwrap_or(ctx.retry_fallback)
                    .min(ctx.retry_fallback);
                let mut until = now + fallback;
                if budget {
                    tracker.count(|s| &mut s.evictions_blocked_by_pdb);
                    let covering = covering();
                    debug!(pdb = %join(&covering), %message, "eviction refused by budget");
                    let give_up_at = *blocked_since.get_or_insert(now) + ctx.blocked_timeout;
                    if now >= give_up_at {
                        return Finish::Blocked {
                            reason: BlockReason::DisruptionBudget,
                            pdbs: covering,
                            message,
                        };
                    }
                    until = until.min(give_up_at);
                    tracker.set(PodProgress::BlockedByPdb {
                        pdbs: covering,
                        message,
                    });
                    wait_for_budget(&mut pdbs, target, &mut retried_on, until).await;
                } else {
                    // API throttling, not a budget: budget changes say nothing about it, the
                    // server's Retry-After does.
                    debug!(%message, "eviction throttled");
                    sleep_until(until).await;
                }
            }
            EvictResponse::MultiplePdbs { message } => {
                tracker.count(|s| &mut s.eviction_errors);
                return Finish::Blocked {
                    reason: BlockReason::MultiplePdbs,
                    pdbs: covering(),
                    message,
                };
            }
            EvictResponse::Refused { code, message } => {
                tracker.count(|s| &mut s.eviction_errors);
                return Finish::Blocked {
                    reason: BlockReason::Refused { code },
                    pdbs: covering(),
                    message,
                };
            }
            EvictResponse::Transient { message } => {
                tracker.count(|s| &mut s.eviction_errors);
                warn!(%message, backoff_ms = backoff.as_millis(), "eviction failed; retrying");
                sleep(backoff).await;
                backoff = (backoff * 2).min(ctx.retry_fallback);
            }
        }
    }
}

/// Waits after a 429 until a retry has a chance: the budgets covering the pod changed since the
/// last retry and now allow a disruption, or `until` passes (the fallback for changes that the
/// index does not show, such as the pod turning unhealthy, or a lost watch).
async fn wait_for_budget(
    pdbs: &mut watch::Receiver<Synced<PdbIndex>>,
    target: &PodToEvict,
    retried_on: &mut Option<Fingerprint>,
    until: Instant,
) {
    let namespace = &target.pod.namespace;
    let fallback = sleep_until(until);
    let mut fallback = std::pin::pin!(fallback);
    loop {
        {
            let state = pdbs.borrow_and_update();
            let fingerprint = state.index.fingerprint(namespace, &target.labels);
            // Retrying once per observed budget state: a stale index that still shows the
            // allowance the refused request just lost cannot make this spin.
            if retried_on.as_ref() != Some(&fingerprint)
                && state.index.allows_eviction(namespace, &target.labels)
            {
                debug!(pdb = %fingerprint_names(&fingerprint), "budget allows a disruption; retrying");
                *retried_on = Some(fingerprint);
                return;
            }
        }
        tokio::select! {
            changed = pdbs.changed() => {
                if changed.is_err() {
                    // The budget watch is gone; only the fallback is left.
                    fallback.await;
                    return;
                }
            }
            () = &mut fallback => return,
        }
    }
}

/// Waits until the pod is deleted or replaced. A pod deleted longer ago than the
/// skip-wait-for-delete timeout counts as gone (a node that stopped reporting never finishes
/// its deletion).
async fn wait_gone(
    pods: &mut watch::Receiver<Synced<NodePods>>,
    pod: &PodRef,
    skip_wait_for_delete_timeout: Option<Duration>,
    clock: &dyn Clock,
) -> Finish {
    loop {
        let deleted_at = {
            let state = pods.borrow_and_update();
            if state.index.is_gone(pod) {
                return Finish::Evicted;
            }
            state
                .index
                .get(&pod.namespace, &pod.name)
                .and_then(|current| current.metadata.deletion_timestamp.as_ref())
                .map(|t| t.0)
        };
        let skip_after = match (deleted_at, skip_wait_for_delete_timeout) {
            (Some(since), Some(timeout)) if !timeout.is_zero() => {
                Some(remaining_until(since, timeout, clock.now()))
            }
            _ => None,
        };
        tokio::select! {
            changed = pods.changed() => {
                if changed.is_err() {
                    return Finish::Unobserved;
                }
            }
            () = sleep(skip_after.unwrap_or_default()), if skip_after.is_some() => {
                debug!("pod deleted longer ago than the skip-wait-for-delete timeout");
                return Finish::Evicted;
            }
        }
    }
}

/// How long from `now` until `timeout` has passed since `since` (zero when it already has).
fn remaining_until(since: Timestamp, timeout: Duration, now: Timestamp) -> Duration {
    let elapsed = now.duration_since(since);
    let elapsed = Duration::try_from(elapsed).unwrap_or(Duration::ZERO);
    timeout.saturating_sub(elapsed)
}

fn join(pdbs: &[PdbRef]) -> String {
    let names: Vec<String> = pdbs.iter().map(ToString::to_string).collect();
    names.join(",")
}

fn fingerprint_names(fingerprint: &Fingerprint) -> String {
    let names: Vec<String> = fingerprint.iter().map(|(pdb, _)| pdb.to_string()).collect();
    names.join(",")
}

#[cfg(test)]
mod tests {
    use kube::core::Status;
    use kube::core::response::StatusDetails;

    use super::*;

    #[test]
    fn an_accepted_eviction_is_waited_for_as_long_as_the_grace_period_allows() {
        // Kubernetes' default grace, a minute for the kubelet to report the pod gone.
        assert_eq!(termination_allowance(None), Duration::from_secs(90));
        assert_eq!(termination_allowance(Some(0)), Duration::from_secs(60));
        // A long grace gets as much again.
        assert_eq!(termination_allowance(Some(1800)), Duration::from_secs(3600));
        // A negative grace (refused by the API server anyway) counts as none.
        assert_eq!(termination_allowance(Some(-5)), Duration::from_secs(60));
    }

    fn api_error(
        code: u16,
        message: &str,
        details: Option<StatusDetails>,
    ) -> Result<(), kube::Error> {
        let mut status = Status::failure(message, "").with_code(code);
        status.details = details;
        Err(kube::Error::Api(status.boxed()))
    }

    fn budget_cause() -> Option<StatusDetails> {
        // StatusDetails has no Default; the server's JSON is the natural way to build one.
        serde_json::from_value(serde_json::json!({
            "causes": [{
                "reason": "DisruptionBudget",
                "message": "The disruption budget web needs 2 healthy pods and has 2 currently",
            }],
        }))
        .ok()
    }

    #[test]
    fn body_is_camel_case_policy_v1_eviction() {
        let pod = PodRef {
            namespace: "a".into(),
            name: "p".into(),
            uid: "u1".into(),
        };
        let json = serde_json::to_value(eviction_body(&pod, Some(30))).unwrap();
        assert_eq!(
            json,
            serde_json::json!({
                "apiVersion": "policy/v1",
                "kind": "Eviction",
                "metadata": {"name": "p", "namespace": "a"},
                "deleteOptions": {"gracePeriodSeconds": 30, "preconditions": {"uid": "u1"}},
            })
        );
        let own_grace = serde_json::to_value(eviction_body(&pod, None)).unwrap();
        assert!(
            own_grace["deleteOptions"]
                .get("gracePeriodSeconds")
                .is_none()
        );
    }

    #[test]
    fn responses() {
        let throttled: Option<StatusDetails> =
            serde_json::from_value(serde_json::json!({"retryAfterSeconds": 2})).ok();
        let pdb_message = "Cannot evict pod as it would violate the pod's disruption budget.";
        let multi = "This pod has more than one PodDisruptionBudget, which the eviction subresource does not support.";
        let cases: Vec<(&str, Result<(), kube::Error>, EvictResponse)> = vec![
            ("201", Ok(()), EvictResponse::Accepted),
            (
                "404",
                api_error(404, "pods \"p\" not found", None),
                EvictResponse::Gone,
            ),
            (
                "429 with budget cause",
                api_error(429, pdb_message, budget_cause()),
                EvictResponse::TooManyRequests {
                    message: pdb_message.into(),
                    budget: true,
                    retry_after: None,
                },
            ),
            (
                "429 budget message without cause",
                api_error(429, pdb_message, None),
                EvictResponse::TooManyRequests {
                    message: pdb_message.into(),
                    budget: true,
                    retry_after: None,
                },
            ),
            (
                "429 throttling",
                api_error(429, "too many requests", throttled),
                EvictResponse::TooManyRequests {
                    message: "too many requests".into(),
                    budget: false,
                    retry_after: Some(Duration::from_secs(2)),
                },
            ),
            (
                "500 two budgets",
                api_error(500, multi, None),
                EvictResponse::MultiplePdbs {
                    message: multi.into(),
                },
            ),
            (
                "500 other",
                api_error(500, "etcd is sad", None),
                EvictResponse::Transient {
                    message: "etcd is sad".into(),
                },
            ),
            (
                "503 without message",
                api_error(503, "", None),
                EvictResponse::Transient {
                    message: "HTTP 503".into(),
                },
            ),
            (
                "403 negative budget",
                api_error(403, "budget is negative", None),
                EvictResponse::Refused {
                    code: 403,
                    message: "budget is negative".into(),
                },
            ),
            (
                "400 bad body",
                api_error(400, "name mismatch", None),
                EvictResponse::Refused {
                    code: 400,
                    message: "name mismatch".into(),
                },
            ),
            (
                "409 conflict is retried",
                api_error(409, "conflict", None),
                EvictResponse::Transient {
                    message: "conflict".into(),
                },
            ),
            (
                "408 is retried",
                api_error(408, "timeout", None),
                EvictResponse::Transient {
                    message: "timeout".into(),
                },
            ),
        ];
        for (case, result, want) in cases {
            assert_eq!(EvictResponse::classify(&result), want, "{case}");
        }
        let transport: Result<(), kube::Error> =
            Err(kube::Error::Service("connection refused".into()));
        assert!(matches!(
            EvictResponse::classify(&transport),
            EvictResponse::Transient { .. }
        ));
    }

    #[test]
    fn skip_wait_remaining() {
        let since: Timestamp = "2025-06-01T12:00:00Z".parse().unwrap();
        let at = |secs: i64| since + jiff::SignedDuration::from_secs(secs);
        let timeout = Duration::from_secs(60);
        assert_eq!(remaining_until(since, timeout, at(0)), timeout);
        assert_eq!(
            remaining_until(since, timeout, at(45)),
            Duration::from_secs(15)
        );
        assert_eq!(remaining_until(since, timeout, at(90)), Duration::ZERO);
        // A deletion timestamp in the future (clock skew) waits the whole timeout.
        assert_eq!(remaining_until(since, timeout, at(-5)), timeout);
    }
}
