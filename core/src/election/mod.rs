//! The rules of leader election on a `coordination.k8s.io/v1` Lease: what one replica does
//! each round, as a pure function of what it knows and an explicit `now` of its own monotonic
//! clock. The coordinator's `leader` module reads and writes the Lease and applies them.
//!
//! # Timings
//!
//! Defaults: lease **10 s**, renew deadline **7 s**, retry period **2 s**.
//!
//! - The leader renews every retry period. It stops acting ([`Decision::Lost`]) when no
//!   renewal *started* within the last renew deadline succeeded — 7 s after the last good one at
//!   the latest, even while a request hangs.
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
//!   while its node stays cordoned unless nobody else does: see [`handover`].

pub mod handover;

use std::time::{Duration, Instant};

use k8s_openapi::api::coordination::v1::Lease;

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
        if self.lease_duration_seconds() == i32::MAX {
            return Err(Error::Timings("the lease duration is too long".into()));
        }
        Ok(())
    }

    /// `leaseDurationSeconds` to write: the lease duration in whole seconds, rounded up (so
    /// that nobody takes the lease before the holder thinks it expires).
    pub fn lease_duration_seconds(&self) -> i32 {
        let duration = self.lease_duration;
        let secs = duration
            .as_secs()
            .saturating_add(u64::from(duration.subsec_nanos() > 0));
        i32::try_from(secs).unwrap_or(i32::MAX)
    }
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

/// What one replica knows when it decides. Instants are of this replica's monotonic clock.
#[derive(Clone, Copy, Debug)]
pub struct View<'a> {
    /// The lease as last read; `None` when it does not exist.
    pub lease: Option<&'a LeaseRecord>,
    /// When this replica first saw the current version of the lease.
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
    /// see [`handover`]). The plain rule [`decide`] never returns it.
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
