//! Leader election on a `coordination.k8s.io/v1` Lease, and the [`Leadership`] that keeps
//! leader-only work (the controller, its writes, the agents' calls) on the replica that holds it.
//!
//! # Timings
//!
//! Defaults: lease **10 s**, renew deadline **7 s**, retry period **2 s**.
//!
//! - The leader renews every retry period. It stops acting (its [`LeaderState`] turns to
//!   follower, [`Leadership::lost`] resolves) when no renewal *started* within the last renew
//!   deadline succeeded — 7 s after the last good one at the latest, even while a request hangs.
//! - A standby measures expiry on its own monotonic clock from the moment it first saw the
//!   current lease record (as client-go does; clocks of the replicas need not agree): it takes
//!   over `leaseDurationSeconds` after that moment. It polls every retry period, so it sees the
//!   leader's last renewal (at `r`) by `r + 2 s` and takes over by `r + 2 s + 10 s`: **within
//!   12 s (plus one API round trip) of the leader dying**, inside the 15 s bound.
//! - The old leader stops by `r + 7 s`, before the standby can act (no earlier than `r + 10 s`):
//!   3 s of margin for clock-rate differences and slow requests.
//! - Graceful shutdown clears `holderIdentity`; a standby takes a free lease on its next poll
//!   (within one retry period).
//! - A leader whose node is cordoned releases the lease the same way, and does not take it back
//!   while its node stays cordoned unless nobody else does: see [`crate::handover`].
//!
//! The decision of each round is the pure function [`decide`]; [`LeaderElector`] does the I/O.
//! Writes use optimistic concurrency: a 409 means someone else wrote, and the elector re-reads.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use jiff::Timestamp;
use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use kube::api::{Api, PostParams};
use tokio::sync::watch;
use tokio::time::Instant;

use crate::handover::{self, Handover, Standing};

/// The refusal of work that only the leader may do (a write to the API, say), on a replica
/// that does not lead now.
#[derive(Debug, thiserror::Error)]
#[error("this coordinator replica does not lead (or is still starting); retry")]
pub struct NotLeading;

/// Errors of leader election.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The timings cannot give a safe election.
    #[error("invalid leader-election timings: {0}")]
    Timings(String),
}

/// Result alias of this module.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// How long a lease lasts, how long a leader keeps trying to renew it, and how often
/// replicas act.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Timings {
    /// How long a lease is valid after its last renewal (written as whole seconds, rounded up).
    pub lease_duration: Duration,
    /// The leader stops acting when no renewal started within this much time succeeded.
    pub renew_deadline: Duration,
    /// How often the leader renews and a standby polls.
    pub retry_period: Duration,
}

impl Default for Timings {
    fn default() -> Self {
        Timings {
            lease_duration: Duration::from_secs(10),
            renew_deadline: Duration::from_secs(7),
            retry_period: Duration::from_secs(2),
        }
    }
}

impl Timings {
    /// Checks `0 < retry_period < renew_deadline < lease_duration`, which keeps an old leader
    /// from acting once a standby may take over.
    pub fn validate(&self) -> Result<()> {
        if self.retry_period.is_zero() {
            return Err(Error::Timings("the retry period must be positive".into()));
        }
        if self.retry_period >= self.renew_deadline {
            return Err(Error::Timings(format!(
                "the retry period ({:?}) must be shorter than the renew deadline ({:?})",
                self.retry_period, self.renew_deadline
            )));
        }
        if self.renew_deadline >= self.lease_duration {
            return Err(Error::Timings(format!(
                "the renew deadline ({:?}) must be shorter than the lease duration ({:?})",
                self.renew_deadline, self.lease_duration
            )));
        }
        if lease_seconds(self.lease_duration) == i32::MAX {
            return Err(Error::Timings("the lease duration is too long".into()));
        }
        Ok(())
    }
}

/// `leaseDurationSeconds` for a duration: whole seconds, rounded up.
fn lease_seconds(duration: Duration) -> i32 {
    let secs = duration
        .as_secs()
        .saturating_add(u64::from(duration.subsec_nanos() > 0));
    i32::try_from(secs).unwrap_or(i32::MAX)
}

/// The part of a Lease that election decisions read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LeaseRecord {
    /// Who holds the lease; `None` (or empty in the object) when it is free.
    pub holder: Option<String>,
    /// `leaseDurationSeconds` as written by the holder.
    pub lease_duration: Duration,
    /// `leaseTransitions`: how many times the lease changed hands.
    pub transitions: i32,
}

impl LeaseRecord {
    /// Reads the record out of a Lease object (missing fields: free, zero).
    pub fn from_lease(lease: &Lease) -> Self {
        let spec = lease.spec.as_ref();
        let holder = spec
            .and_then(|s| s.holder_identity.clone())
            .filter(|h| !h.is_empty());
        let secs = spec.and_then(|s| s.lease_duration_seconds).unwrap_or(0);
        LeaseRecord {
            holder,
            lease_duration: Duration::from_secs(u64::try_from(secs).unwrap_or(0)),
            transitions: spec.and_then(|s| s.lease_transitions).unwrap_or(0),
        }
    }
}

/// What one replica knows when it decides.
#[derive(Clone, Copy, Debug)]
pub struct View<'a> {
    /// The lease as last read; `None` when it does not exist.
    pub lease: Option<&'a LeaseRecord>,
    /// When this replica first saw the current version of the lease (its own clock).
    pub seen_at: Instant,
    /// When the last successful acquisition or renewal by this replica was *started*, while it
    /// leads; `None` when it does not.
    pub renewed_at: Option<Instant>,
}

/// What to do this round.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Decision {
    /// Take the lease (create it, take a free or expired one, or reclaim our own).
    Acquire,
    /// Extend our lease.
    Renew,
    /// Another replica holds a valid lease: poll again, at the latest at `until` (its expiry).
    Wait {
        /// When the current holder's lease expires, by our clock.
        until: Instant,
    },
    /// We led but may no longer act: the deadline passed or someone else holds the lease.
    Lost,
    /// We lead but hand the lease over: stop acting and release it (our node is cordoned;
    /// see [`crate::handover`]). The plain rule [`decide`] never returns it.
    Release,
}

/// The election rule for one round, a pure function of what `me` knows at `now`.
pub fn decide(view: View<'_>, me: &str, now: Instant, timings: &Timings) -> Decision {
    let holder = view.lease.and_then(|l| l.holder.as_deref());
    if let Some(renewed_at) = view.renewed_at {
        if now >= renewed_at + timings.renew_deadline || holder != Some(me) {
            return Decision::Lost;
        }
        return Decision::Renew;
    }
    match (view.lease, holder) {
        (None, _) | (Some(_), None) => Decision::Acquire,
        // Our own record, but we are not leading (we missed the deadline, or restarted with
        // the same identity): nobody else may act before it expires, and the write's
        // resourceVersion check fails if someone else took it meanwhile.
        (Some(_), Some(h)) if h == me => Decision::Acquire,
        (Some(lease), Some(_)) => {
            let until = view.seen_at + lease.lease_duration;
            if now >= until {
                Decision::Acquire
            } else {
                Decision::Wait { until }
            }
        }
    }
}

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

/// Runs leader election for one replica: reads the Lease, [`decide`]s, writes, and publishes
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
        if handover.retry < self.config.timings.lease_duration {
            return Err(Error::Timings(format!(
                "the handover retry ({:?}) must be at least the lease duration ({:?})",
                handover.retry, self.config.timings.lease_duration
            )));
        }
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
        let view = View {
            lease: record.as_ref(),
            seen_at,
            renewed_at: self.renewed_at,
        };
        let standing = self.standing();
        let plain = decide(view, &self.config.identity, now, &timings);
        let decision = match &self.handover {
            Some(h) => handover::decide(plain, &view, standing, now, &timings, h.retry),
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
                    .min(until.saturating_duration_since(now))
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
            last_attempt: self.last_attempt,
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
                        lease_duration_seconds: Some(lease_seconds(
                            self.config.timings.lease_duration,
                        )),
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
                spec.lease_duration_seconds =
                    Some(lease_seconds(self.config.timings.lease_duration));
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

    const ME: &str = "me";

    fn record(holder: Option<&str>, secs: u64) -> LeaseRecord {
        LeaseRecord {
            holder: holder.map(str::to_owned),
            lease_duration: Duration::from_secs(secs),
            transitions: 3,
        }
    }

    #[test]
    fn decision_table() {
        let t = Timings::default();
        let base = Instant::now();
        let s = Duration::from_secs;
        let theirs = record(Some("other"), 10);
        let mine = record(Some(ME), 10);
        let free = record(None, 1);
        // (what, lease, seen_at offset, renewed_at offset, now offset, expected)
        type Case<'a> = (
            &'a str,
            Option<&'a LeaseRecord>,
            u64,
            Option<u64>,
            u64,
            Decision,
        );
        let cases: Vec<Case<'_>> = vec![
            ("no lease: create it", None, 0, None, 0, Decision::Acquire),
            (
                "released lease: take it",
                Some(&free),
                0,
                None,
                0,
                Decision::Acquire,
            ),
            (
                "valid foreign lease: wait for its expiry",
                Some(&theirs),
                5,
                None,
                7,
                Decision::Wait {
                    until: base + s(15),
                },
            ),
            (
                "foreign lease just before expiry",
                Some(&theirs),
                5,
                None,
                14,
                Decision::Wait {
                    until: base + s(15),
                },
            ),
            (
                "foreign lease expired: take it",
                Some(&theirs),
                5,
                None,
                15,
                Decision::Acquire,
            ),
            (
                "leader within deadline: renew",
                Some(&mine),
                0,
                Some(2),
                8,
                Decision::Renew,
            ),
            (
                "leader at its deadline: lost",
                Some(&mine),
                0,
                Some(2),
                9,
                Decision::Lost,
            ),
            (
                "leader whose lease was taken: lost",
                Some(&theirs),
                0,
                Some(2),
                3,
                Decision::Lost,
            ),
            (
                "leader whose lease was released: lost",
                Some(&free),
                0,
                Some(2),
                3,
                Decision::Lost,
            ),
            (
                "leader whose lease was deleted: lost",
                None,
                0,
                Some(2),
                3,
                Decision::Lost,
            ),
            (
                "own record while not leading: reclaim",
                Some(&mine),
                0,
                None,
                1,
                Decision::Acquire,
            ),
        ];
        for (what, lease, seen, renewed, now, expected) in cases {
            let view = View {
                lease,
                seen_at: base + s(seen),
                renewed_at: renewed.map(|r| base + s(r)),
            };
            assert_eq!(decide(view, ME, base + s(now), &t), expected, "{what}");
        }
    }

    #[test]
    fn expiry_uses_the_recorded_duration_not_ours() {
        let t = Timings::default();
        let base = Instant::now();
        let long = record(Some("other"), 60);
        let view = View {
            lease: Some(&long),
            seen_at: base,
            renewed_at: None,
        };
        assert_eq!(
            decide(view, ME, base + Duration::from_secs(30), &t),
            Decision::Wait {
                until: base + Duration::from_secs(60)
            }
        );
    }

    #[test]
    fn default_timings_hand_over_within_fifteen_seconds() {
        let t = Timings::default();
        t.validate().unwrap();
        // Worst case: the leader renews at r and dies; a standby sees that renewal up to one
        // poll later and takes over one lease duration after seeing it.
        assert!(t.retry_period + t.lease_duration < Duration::from_secs(15));
        // The old leader has stopped before a standby can take over.
        assert!(t.renew_deadline < t.lease_duration);
    }

    #[test]
    fn unsafe_timings_are_refused() {
        let s = Duration::from_secs;
        let bad = [
            (s(10), s(10), s(2)),
            (s(10), s(12), s(2)),
            (s(10), s(7), s(7)),
            (s(10), s(7), Duration::ZERO),
        ];
        for (lease_duration, renew_deadline, retry_period) in bad {
            let t = Timings {
                lease_duration,
                renew_deadline,
                retry_period,
            };
            assert!(t.validate().is_err(), "{t:?}");
        }
    }

    #[test]
    fn lease_seconds_round_up() {
        assert_eq!(lease_seconds(Duration::from_millis(1500)), 2);
        assert_eq!(lease_seconds(Duration::from_secs(10)), 10);
    }

    #[test]
    fn record_reads_an_empty_holder_as_free() {
        let lease = Lease {
            spec: Some(LeaseSpec {
                holder_identity: Some(String::new()),
                lease_duration_seconds: Some(10),
                lease_transitions: Some(4),
                ..LeaseSpec::default()
            }),
            ..Lease::default()
        };
        assert_eq!(
            LeaseRecord::from_lease(&lease),
            record(None, 10).with_transitions(4)
        );
    }

    impl LeaseRecord {
        fn with_transitions(mut self, n: i32) -> Self {
            self.transitions = n;
            self
        }
    }

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
