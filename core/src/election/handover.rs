//! The leader hands its Lease over when its own node is cordoned, so that the node can drain.
//!
//! Only the leader is Ready, and the coordinator's PodDisruptionBudget never lets the only
//! Ready replica go; a leader that kept leading on a cordoned node would block that node's
//! drain (rota's own or `kubectl drain`) forever. So a leader whose node becomes unschedulable
//! releases the Lease as on shutdown; a standby takes the free Lease on its next poll, the old
//! leader turns unready, and the budget (unhealthy pods always evictable) lets it be evicted.
//! The new leader resumes the drain from the state persisted in the API.
//!
//! # The rule when nobody else is there
//!
//! The Lease does not list candidates, so a leader cannot know whether a standby exists. It
//! releases anyway, and a cordoned replica stands by only: it takes a free or expired Lease
//! only once that Lease has stayed free for one more lease duration than an uncordoned
//! replica would wait (every uncordoned standby polls every retry period, so it has had many
//! chances by then). If nobody took it, the cordoned replica leads again (a single replica
//! must not stop the rollout) and tries the handover again every `retry` while its node stays
//! cordoned: a standby that appears later (say, rescheduled after the drain evicted it) still
//! gets the Lease. Each attempt that finds no taker costs at most one lease duration plus one
//! retry period without a leader; agents retry meanwhile. An uncordoned node resets the rule:
//! the next cordon hands over at once.
//!
//! The rule is the pure function [`decide`], applied to the plain [`super::decide`] of each
//! round; the coordinator's elector feeds it whether its node is cordoned.

use std::time::{Duration, Instant};

use super::{Decision, Error, Result, Timings, View};

/// What an elector knows about its own node and its past handovers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Standing {
    /// Whether this replica's node is cordoned (`spec.unschedulable`).
    pub cordoned: bool,
    /// While cordoned: when this replica last released the Lease to hand it over, or took it
    /// back because nobody else did (its own monotonic clock); `None` after an uncordon.
    pub last_attempt: Option<Instant>,
}

/// Checks the time between two handover attempts: at least the lease duration, since a shorter
/// one would release again before a standby could have been told apart from no standby.
pub fn validate_retry(retry: Duration, timings: &Timings) -> Result<()> {
    if retry < timings.lease_duration {
        return Err(Error::Timings(format!(
            "the handover retry ({retry:?}) must be at least the lease duration ({:?})",
            timings.lease_duration
        )));
    }
    Ok(())
}

/// Applies the handover rule to the plain election `decision` of one round: a leader on a
/// cordoned node releases (at most once per `retry`), and a cordoned follower takes a free or
/// expired lease one lease duration later than the plain rule would.
pub fn decide(
    decision: Decision,
    view: &View<'_>,
    standing: Standing,
    now: Instant,
    timings: &Timings,
    retry: Duration,
) -> Decision {
    if !standing.cordoned {
        return decision;
    }
    match decision {
        Decision::Renew => match standing.last_attempt {
            Some(last) if now < last + retry => Decision::Renew,
            _ => Decision::Release,
        },
        Decision::Acquire => {
            let until = acquirable_since(view) + timings.lease_duration;
            if now >= until {
                Decision::Acquire
            } else {
                Decision::Wait { until }
            }
        }
        other => other,
    }
}

/// When the lease became free for the taking, by our clock: when we first saw it absent or
/// free, or when a foreign holder's lease expired.
fn acquirable_since(view: &View<'_>) -> Instant {
    match view.lease {
        Some(lease) if lease.holder.is_some() => view.seen_at + lease.lease_duration,
        _ => view.seen_at,
    }
}
