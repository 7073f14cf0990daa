//! What follows the end of a drain: grant the slot, leave it (the drain was stopped on purpose),
//! or give it back with a back-off that doubles with every failed attempt of the node, and say
//! why — which budget held the drain, or what failed.

use jiff::Timestamp;

use crate::drain::DrainOutcome;
use crate::policy::Backoff;

/// How a drain task ended, as far as the decision cares.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DrainEnd<'a> {
    /// The drain ran to an outcome.
    Outcome(&'a DrainOutcome),
    /// The drain stopped without an outcome because this replica no longer leads, or the node
    /// is gone: the next leader (or the node's deletion) takes it from here.
    Moot,
    /// The drain could not run (an API error), with the error's text.
    Failed(String),
}

/// What to do with the slot after its drain.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AfterDrain {
    /// The node is drained: grant the slot; the node's failed attempts are forgotten.
    Grant,
    /// Nothing: the drain was cancelled (the slot left `Draining` for another reason) or is moot.
    Nothing,
    /// Give the slot back and requeue the request, not before `not_before`.
    GiveBack {
        /// Earliest time of the next admission.
        not_before: Timestamp,
        /// Why, for the request's note, the Event and the logs.
        why: String,
        /// The node's failed attempts after this one.
        attempts: u32,
    },
}

/// Decides what follows a drain of a node that failed `attempts` times before, under the pool's
/// `backoff`, at `now`.
pub fn after_drain(
    end: DrainEnd<'_>,
    attempts: u32,
    backoff: Backoff,
    now: Timestamp,
) -> AfterDrain {
    let why = match end {
        DrainEnd::Outcome(outcome) if outcome.is_drained() => return AfterDrain::Grant,
        DrainEnd::Outcome(DrainOutcome::Cancelled { .. }) | DrainEnd::Moot => {
            return AfterDrain::Nothing;
        }
        DrainEnd::Outcome(outcome) => outcome.to_string(),
        DrainEnd::Failed(error) => format!("drain failed: {error}"),
    };
    let not_before = now
        .saturating_add(backoff.delay(attempts))
        .unwrap_or(Timestamp::MAX);
    AfterDrain::GiveBack {
        not_before,
        why,
        attempts: attempts.saturating_add(1),
    }
}

#[cfg(test)]
mod tests {
    use jiff::SignedDuration;

    use super::*;
    use crate::drain::{PdbRef, PodRef};

    fn backoff() -> Backoff {
        Backoff {
            initial: SignedDuration::from_secs(30),
            max: SignedDuration::from_mins(5),
        }
    }

    fn pod(name: &str) -> PodRef {
        PodRef {
            namespace: "shop".into(),
            name: name.into(),
            uid: format!("uid-{name}"),
        }
    }

    #[test]
    fn drained_grants_cancelled_and_moot_do_nothing() {
        let now = Timestamp::UNIX_EPOCH;
        let drained = DrainOutcome::Drained {
            evicted: vec![pod("a")],
            skipped: Vec::new(),
        };
        assert_eq!(
            after_drain(DrainEnd::Outcome(&drained), 3, backoff(), now),
            AfterDrain::Grant
        );
        let cancelled = DrainOutcome::Cancelled {
            remaining: vec![pod("a")],
            evicted_so_far: Vec::new(),
        };
        assert_eq!(
            after_drain(DrainEnd::Outcome(&cancelled), 0, backoff(), now),
            AfterDrain::Nothing
        );
        assert_eq!(
            after_drain(DrainEnd::Moot, 0, backoff(), now),
            AfterDrain::Nothing
        );
    }

    #[test]
    fn a_stuck_drain_gives_back_with_a_doubling_capped_backoff_naming_the_budget() {
        let now = Timestamp::UNIX_EPOCH;
        let timed_out = DrainOutcome::TimedOut {
            remaining: vec![pod("b")],
            blocking_pdbs: vec![PdbRef {
                namespace: "shop".into(),
                name: "cart".into(),
            }],
            evicted_so_far: vec![pod("a")],
        };
        let delays: Vec<(SignedDuration, u32)> = (0..6)
            .map(|attempts| {
                match after_drain(DrainEnd::Outcome(&timed_out), attempts, backoff(), now) {
                    AfterDrain::GiveBack {
                        not_before,
                        why,
                        attempts,
                    } => {
                        assert!(why.contains("shop/cart"), "{why}");
                        (not_before.duration_since(now), attempts)
                    }
                    other => panic!("expected a give-back, got {other:?}"),
                }
            })
            .collect();
        let secs: Vec<i64> = delays.iter().map(|(d, _)| d.as_secs()).collect();
        assert_eq!(secs, [30, 60, 120, 240, 300, 300]);
        assert_eq!(
            delays.iter().map(|(_, a)| *a).collect::<Vec<_>>(),
            [1, 2, 3, 4, 5, 6]
        );
        match after_drain(DrainEnd::Failed("HTTP 500".into()), 0, backoff(), now) {
            AfterDrain::GiveBack { why, .. } => assert_eq!(why, "drain failed: HTTP 500"),
            other => panic!("expected a give-back, got {other:?}"),
        }
    }
}
