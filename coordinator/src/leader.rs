//! Leader election on a `coordination.k8s.io/v1` Lease: the I/O that applies
//! [`rota_core::election`]'s rules, and the [`Leadership`] that keeps leader-only work (the
//! controller, its writes, the agents' calls) on the replica that holds it.
//!
//! Each round the [`LeaderElector`] reads the Lease, asks [`election::decide`] (and, while its
//! node is cordoned, [`election::handover::decide`]) what to do on its own monotonic clock,
//! writes, and publishes the outcome: its [`LeaderState`] turns to follower and
//! [`Leadership::lost`] resolves as soon as the rules say it may no longer act. The timings and
//! why they are safe are documented with the rules. Writes use optimistic concurrency: a 409
//! means someone else wrote, and the elector re-reads. A leader whose node is cordoned hands
//! the lease over; whether it is comes from [`crate::handover`].

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use jiff::Timestamp;
use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use kube::api::{Api, PostParams};
use tokio::sync::watch;
use tokio::time::Instant;

use crate::handover::Handover;
use rota_core::election::handover::Standing;
use rota_core::election::{self, Decision, LeaseRecord, Result, Timings, View};

/// The refusal of work that only the leader may do (a write to the API, say), on a replica
/// that does not lead now.
#[derive(Debug, thiserror::Error)]
#[error("this coordinator replica does not lead (or is still starting); retry")]
pub struct NotLeading;

/// This replica's role, published on a watch channel.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LeaderState {
    /// Not leading; `holder` is the current leader when known.
    Follower {
        /// The identity holding the lease, if any.
        holder: Option<String>,
    },
    /// Leading. `term` is the lease's `leaseTransitions` when it was acquired: it grows with
    /// every change of leader.
    Leader {
        /// The term of this leadership.
        term: i32,
    },
}

impl LeaderState {
    /// Whether this replica leads.
    pub fn is_leader(&self) -> bool {
        matches!(self, LeaderState::Leader { .. })
    }
}

/// A view of this replica's leadership that leader-only work follows.
///
/// When the elector stops (shutdown, or its task died), the replica no longer leads:
/// [`Leadership::lost`] resolves and [`Leadership::is_leader`] turns false.
#[derive(Clone, Debug)]
pub struct Leadership {
    rx: watch::Receiver<LeaderState>,
    // Keeps the channel open for a replica that leads without election.
    _fixed: Option<Arc<watch::Sender<LeaderState>>>,
}

impl Leadership {
    /// A replica that always leads (leader election turned off: a single replica).
    pub fn unconditional() -> Self {
        let (tx, rx) = watch::channel(LeaderState::Leader { term: 0 });
        Leadership {
            rx,
            _fixed: Some(Arc::new(tx)),
        }
    }

    /// The current state (follower once the elector has stopped).
    pub fn state(&self) -> LeaderState {
        if self.rx.has_changed().is_err() {
            return LeaderState::Follower { holder: None };
        }
        self.rx.borrow().clone()
    }

    /// Whether this replica leads now.
    pub fn is_leader(&self) -> bool {
        self.state().is_leader()
    }

    /// A receiver of every change (closed when the elector stops).
    pub fn subscribe(&self) -> watch::Receiver<LeaderState> {
        self.rx.clone()
    }

    /// Waits until this replica leads and returns the term; `None` when the elector stopped.
    pub async fn acquired(&self) -> Option<i32> {
        let mut rx = self.rx.clone();
        loop {
            // A stopped elector's last state may still say leader: it no longer holds.
            rx.has_changed().ok()?;
            if let LeaderState::Leader { term } = *rx.borrow_and_update() {
                return Some(term);
            }
            rx.changed().await.ok()?;
        }
    }

    /// Resolves as soon as this replica does not lead (at once if it does not now). Leader-only
    /// work races against it and stops when it resolves.
    pub async fn lost(&self) {
        let mut rx = self.rx.clone();
        // An error means the elector is gone, which also ends leadership.
        let _ = rx.wait_for(|s| !s.is_leader()).await;
    }
}

/// Where the lease lives and who we are.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ElectionConfig {
    /// Namespace of the Lease.
    pub namespace: String,
    /// Name of the Lease.
    pub lease_name: String,
    /// This replica's identity (its pod name).
    pub identity: String,
    /// Timings.
    pub timings: Timings,
}

/// What this replica last saw of the lease.
#[derive(Clone, Debug)]
struct Observed {
    record: Option<LeaseRecord>,
    lease: Option<Lease>,
    resource_version: Option<String>,
    seen_at: Instant,
}

/// Runs leader election for one replica: reads the Lease, [`election::decide`]s, writes, and publishes
/// the outcome on its [`Leadership`].
pub struct LeaderElector {
    api: Api<Lease>,
    config: ElectionConfig,
    state: watch::Sender<LeaderState>,
    observed: Option<Observed>,
    renewed_at: Option<Instant>,
    handover: Option<Handover>,
    /// See [`Standing::last_attempt`].
    last_attempt: Option<Instant>,
}

impl std::fmt::Debug for LeaderElector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LeaderElector")
            .field("config", &self.config)
            .field("renewed_at", &self.renewed_at)
            .field("handover", &self.handover)
            .field("last_attempt", &self.last_attempt)
            .finish_non_exhaustive()
    }
}

/// Why a write did not take the lease.
enum WriteError {
    /// Someone else wrote first (409): re-read.
    Conflict,
    /// Anything else: try again next round.
    Other(String),
}

impl LeaderElector {
    /// An elector for `config`, and the view of its leadership. It does nothing until
    /// [`LeaderElector::run`].
    pub fn new(client: kube::Client, config: ElectionConfig) -> Result<(Self, Leadership)> {
        config.timings.validate()?;
        let api = Api::namespaced(client, &config.namespace);
        let (state, rx) = watch::channel(LeaderState::Follower { holder: None });
        let elector = LeaderElector {
            api,
            config,
            state,
            observed: None,
            renewed_at: None,
            handover: None,
            last_attempt: None,
        };
        Ok((elector, Leadership { rx, _fixed: None }))
    }

    /// Hands the lease over while this replica's node is cordoned (see [`crate::handover`]).
    /// The retry must be at least the lease duration: a shorter one would release again
    /// before a standby could have been told apart from no standby.
    pub fn with_handover(mut self, handover: Handover) -> Result<Self> {
        election::handover::validate_retry(handover.retry, &self.config.timings)?;
        self.handover = Some(handover);
        Ok(self)
    }

    /// Takes part in the election until `shutdown` resolves, then stops acting and, if it held
    /// the lease, releases it so that a standby takes over at once. API failures are logged and
    /// retried; they end leadership only through the renew deadline.
    #[tracing::instrument(skip_all, fields(lease = %self.config.lease_name, identity = %self.config.identity))]
    pub async fn run(mut self, shutdown: impl Future<Output = ()>) {
        tokio::pin!(shutdown);
        loop {
            let pause = tokio::select! {
                biased;
                () = &mut shutdown => break,
                pause = self.round() => pause,
            };
            let cordon = self.handover.as_mut().map(|h| &mut h.cordoned);
            tokio::select! {
                biased;
                () = &mut shutdown => break,
                () = tokio::time::sleep(pause) => {}
                // A cordon is acted on at once, not at the next renewal.
                () = cordon_changed(cordon) => {}
            }
        }
        self.step_down();
        self.release().await;
    }

    /// One round: read, decide, act. Returns how long to wait before the next round.
    async fn round(&mut self) -> Duration {
        let timings = self.config.timings;
        let budget = self.call_budget();
        match tokio::time::timeout(budget, self.api.get_opt(&self.config.lease_name)).await {
            Ok(Ok(lease)) => self.observe(lease),
            Ok(Err(e)) => tracing::warn!(error = %e, "reading the leader lease failed"),
            Err(_) => tracing::warn!("reading the leader lease timed out"),
        }
        let now = Instant::now();
        let record = self.observed.as_ref().and_then(|o| o.record.clone());
        let seen_at = self.observed.as_ref().map_or(now, |o| o.seen_at);
        // The rules take std instants; tokio's are std instants underneath (shifted while the
        // clock is paused in tests), so converting keeps one monotonic clock throughout.
        let now_std = now.into_std();
        let view = View {
            lease: record.as_ref(),
            seen_at: seen_at.into_std(),
            renewed_at: self.renewed_at.map(Instant::into_std),
        };
        let standing = self.standing();
        let plain = election::decide(view, &self.config.identity, now_std, &timings);
        let decision = match &self.handover {
            Some(h) => {
                election::handover::decide(plain, &view, standing, now_std, &timings, h.retry)
            }
            None => plain,
        };
        match decision {
            Decision::Release => {
                tracing::info!("this replica's node is cordoned: handing leadership over");
                self.step_down();
                self.release().await;
                self.last_attempt = Some(now);
                timings.retry_period
            }
            Decision::Lost => {
                tracing::warn!(holder = ?record.and_then(|r| r.holder), "leadership lost");
                self.step_down();
                Duration::ZERO
            }
            Decision::Wait { until } => {
                let holder = record.and_then(|r| r.holder);
                self.state.send_if_modified(|s| {
                    let next = LeaderState::Follower { holder };
                    let changed = *s != next;
                    *s = next;
                    changed
                });
                timings
                    .retry_period
                    .min(until.saturating_duration_since(now_std))
            }
            decision @ (Decision::Acquire | Decision::Renew) => {
                let started = Instant::now();
                match self.write(decision == Decision::Acquire).await {
                    Ok(term) => {
                        if self.renewed_at.is_none() {
                            tracing::info!(term, "leadership acquired");
                            if standing.cordoned {
                                // Nobody took the lease: lead, and try again after the retry.
                                tracing::info!(
                                    "this replica's node is cordoned but no other replica took the lease: leading until the next handover attempt"
                                );
                                self.last_attempt = Some(started);
                            }
                        }
                        self.renewed_at = Some(started);
                        self.state.send_if_modified(|s| {
                            let next = LeaderState::Leader { term };
                            let changed = *s != next;
                            *s = next;
                            changed
                        });
                        timings.retry_period
                    }
                    // Someone else wrote: re-read at once.
                    Err(WriteError::Conflict) => Duration::ZERO,
                    Err(WriteError::Other(e)) => {
                        tracing::warn!(error = %e, ?decision, "writing the leader lease failed");
                        self.until_deadline_or(timings.retry_period)
                    }
                }
            }
        }
    }

    /// Whether our node is cordoned now; an uncordon forgets past handover attempts.
    fn standing(&mut self) -> Standing {
        let cordoned = self
            .handover
            .as_mut()
            .is_some_and(|h| *h.cordoned.borrow_and_update());
        if !cordoned {
            self.last_attempt = None;
        }
        Standing {
            cordoned,
            last_attempt: self.last_attempt.map(Instant::into_std),
        }
    }

    /// How long an API call may take: a leader's calls end at its renew deadline, so that it
    /// notices the lost leadership on time even when the API server hangs.
    fn call_budget(&self) -> Duration {
        let timings = self.config.timings;
        match self.renewed_at {
            Some(renewed) => (renewed + timings.renew_deadline)
                .saturating_duration_since(Instant::now())
                .max(Duration::from_millis(1)),
            None => timings.renew_deadline,
        }
    }

    /// `pause`, cut short at a leader's renew deadline.
    fn until_deadline_or(&self, pause: Duration) -> Duration {
        match self.renewed_at {
            Some(renewed) => pause.min(
                (renewed + self.config.timings.renew_deadline)
                    .saturating_duration_since(Instant::now()),
            ),
            None => pause,
        }
    }

    fn observe(&mut self, lease: Option<Lease>) {
        let resource_version = lease
            .as_ref()
            .and_then(|l| l.metadata.resource_version.clone());
        let unchanged = self.observed.as_ref().is_some_and(|o| {
            o.lease.is_some() == lease.is_some() && o.resource_version == resource_version
        });
        if unchanged {
            return;
        }
        self.observed = Some(Observed {
            record: lease.as_ref().map(LeaseRecord::from_lease),
            lease,
            resource_version,
            seen_at: Instant::now(),
        });
    }

    /// Stops acting as leader (publishes follower).
    fn step_down(&mut self) {
        self.renewed_at = None;
        let holder = self
            .observed
            .as_ref()
            .and_then(|o| o.record.as_ref())
            .and_then(|r| r.holder.clone())
            .filter(|h| *h != self.config.identity);
        self.state.send_if_modified(|s| {
            let next = LeaderState::Follower { holder };
            let changed = *s != next;
            *s = next;
            changed
        });
    }

    /// Creates or updates the lease with us as holder; returns the term.
    async fn write(&mut self, acquire: bool) -> Result<i32, WriteError> {
        let identity = self.config.identity.clone();
        let now = MicroTime(Timestamp::now());
        let current = self.observed.as_ref().and_then(|o| o.lease.clone());
        let budget = self.call_budget();
        let pp = PostParams::default();
        let (result, term) = match current {
            None => {
                let lease = Lease {
                    metadata: ObjectMeta {
                        name: Some(self.config.lease_name.clone()),
                        namespace: Some(self.config.namespace.clone()),
                        ..ObjectMeta::default()
                    },
                    spec: Some(LeaseSpec {
                        holder_identity: Some(identity),
                        lease_duration_seconds: Some(self.config.timings.lease_duration_seconds()),
                        acquire_time: Some(now.clone()),
                        renew_time: Some(now),
                        lease_transitions: Some(0),
                        ..LeaseSpec::default()
                    }),
                };
                let call = self.api.create(&pp, &lease);
                (tokio::time::timeout(budget, call).await, 0)
            }
            Some(mut lease) => {
                let spec = lease.spec.get_or_insert_with(LeaseSpec::default);
                let previous = spec.holder_identity.clone().unwrap_or_default();
                let mut term = spec.lease_transitions.unwrap_or(0);
                if acquire && previous != identity {
                    term = term.saturating_add(1);
                    spec.acquire_time = Some(now.clone());
                }
                if acquire && previous == identity && spec.acquire_time.is_none() {
                    spec.acquire_time = Some(now.clone());
                }
                spec.holder_identity = Some(identity);
                spec.lease_duration_seconds = Some(self.config.timings.lease_duration_seconds());
                spec.renew_time = Some(now);
                spec.lease_transitions = Some(term);
                let call = self.api.replace(&self.config.lease_name, &pp, &lease);
                (tokio::time::timeout(budget, call).await, term)
            }
        };
        match result {
            Ok(Ok(written)) => {
                self.observe(Some(written));
                Ok(term)
            }
            Ok(Err(kube::Error::Api(status))) if status.code == 409 => Err(WriteError::Conflict),
            Ok(Err(e)) => Err(WriteError::Other(e.to_string())),
            Err(_) => Err(WriteError::Other("timed out".into())),
        }
    }

    /// Clears `holderIdentity` if we still hold the lease, so that a standby takes it on its
    /// next poll instead of waiting for expiry. Bounded by the renew deadline.
    async fn release(&mut self) {
        let budget = self.config.timings.renew_deadline;
        let outcome = tokio::time::timeout(budget, async {
            // A conflict means the lease changed under us: look again (it may be someone
            // else's by now, then there is nothing to release).
            for _ in 0..3 {
                let Some(mut lease) = self.api.get_opt(&self.config.lease_name).await? else {
                    return Ok(false);
                };
                let spec = lease.spec.get_or_insert_with(LeaseSpec::default);
                if spec.holder_identity.as_deref() != Some(self.config.identity.as_str()) {
                    return Ok(false);
                }
                spec.holder_identity = None;
                spec.lease_duration_seconds = Some(1);
                spec.renew_time = Some(MicroTime(Timestamp::now()));
                match self
                    .api
                    .replace(&self.config.lease_name, &PostParams::default(), &lease)
                    .await
                {
                    Ok(written) => {
                        // A handover goes on electing: it measures from this version.
                        self.observe(Some(written));
                        return Ok(true);
                    }
                    Err(kube::Error::Api(status)) if status.code == 409 => continue,
                    Err(e) => return Err(e),
                }
            }
            Ok(false)
        })
        .await;
        match outcome {
            Ok(Ok(true)) => tracing::info!("leader lease released"),
            Ok(Ok(false)) => {}
            Ok(Err(e)) => tracing::warn!(error = %e, "releasing the leader lease failed"),
            Err(_) => tracing::warn!("releasing the leader lease timed out"),
        }
    }
}

/// Resolves when the cordon flag changes; never when there is none or its sender is gone (the
/// last value stays in force).
async fn cordon_changed(cordon: Option<&mut watch::Receiver<bool>>) {
    if let Some(rx) = cordon
        && rx.changed().await.is_ok()
    {
        return;
    }
    std::future::pending().await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn leadership_of_a_stopped_elector_is_lost() {
        let (tx, rx) = watch::channel(LeaderState::Leader { term: 1 });
        let leadership = Leadership { rx, _fixed: None };
        assert!(leadership.is_leader());
        drop(tx);
        assert!(!leadership.is_leader());
        leadership.lost().await;
        assert_eq!(leadership.acquired().await, None);
    }

    #[tokio::test]
    async fn unconditional_leadership_stays() {
        let leadership = Leadership::unconditional();
        assert_eq!(leadership.acquired().await, Some(0));
        assert!(leadership.is_leader());
    }
}
