//! What follows the end of a drain: grant the slot, leave it (the drain was stopped on purpose),
//! drain again at once while the drain makes progress, or give it back with a back-off that
//! doubles with every failed attempt of the node, and say why — which budget held the drain, or
//! what failed.
//!
//! A drain that timed out after some of its pods went keeps its slot and starts again: giving
//! the slot back would uncordon a half-drained node, the pods evicted from the next node would
//! land on it, and two nodes whose pods take longer to stop (one at a time under their budget)
//! than `drain.timeout` would trade the same pods for ever, each trade a disruption. The node
//! stays cordoned, so nothing new lands on it and each round has fewer pods left; the rounds in
//! a row are bounded all the same ([`MAX_ROUNDS_IN_A_ROW`]), for pods that a controller binds
//! to the node directly.

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

/// How many drains of one slot may follow each other, each having made progress, before the
/// slot is given back anyway.
pub const MAX_ROUNDS_IN_A_ROW: u32 = 10;

/// What to do with the slot after its drain.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AfterDrain {
    /// The node is drained: grant the slot; the node's failed attempts are forgotten.
    Grant,
    /// Nothing: the drain was cancelled (the slot left `Draining` for another reason) or is moot.
    Nothing,
    /// The drain timed out, but pods went: keep the slot (and the cordon) and drain again now,
    /// with a fresh timeout.
    DrainAgain {
        /// What the drain that ended left, for the logs.
        why: String,
    },
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

/// Decides what follows a drain of a node that failed `attempts` times before, the drain being
/// the `round`-th in a row of its slot (1 for the first), under the pool's `backoff`, at `now`.
pub fn after_drain(
    end: DrainEnd<'_>,
    attempts: u32,
    round: u32,
    backoff: Backoff,
    now: Timestamp,
) -> AfterDrain {
    let why = match end {
        DrainEnd::Outcome(outcome) if outcome.is_drained() => return AfterDrain::Grant,
        DrainEnd::Outcome(DrainOutcome::Cancelled { .. }) | DrainEnd::Moot => {
            return AfterDrain::Nothing;
        }
        DrainEnd::Outcome(
            outcome @ DrainOutcome::TimedOut {
                evicted_so_far: evicted,
                ..
            },
        ) if !evicted.is_empty() && round < MAX_ROUNDS_IN_A_ROW => {
            return AfterDrain::DrainAgain {
                why: format!("{outcome} after {} went", evicted.len()),
            };
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
            after_drain(DrainEnd::Outcome(&drained), 3, 1, backoff(), now),
            AfterDrain::Grant
        );
        let cancelled = DrainOutcome::Cancelled {
            remaining: vec![pod("a")],
            evicted_so_far: Vec::new(),
        };
        assert_eq!(
            after_drain(DrainEnd::Outcome(&cancelled), 0, 1, backoff(), now),
            AfterDrain::Nothing
        );
        assert_eq!(
            after_drain(DrainEnd::Moot, 0, 1, backoff(), now),
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
            evicted_so_far: Vec::new(),
        };
        let delays: Vec<(SignedDuration, u32)> = (0..6)
            .map(|attempts| {
                match after_drain(DrainEnd::Outcome(&timed_out), attempts, 1, backoff(), now) {
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
        match after_drain(DrainEnd::Failed("HTTP 500".into()), 0, 1, backoff(), now) {
            AfterDrain::GiveBack { why, .. } => assert_eq!(why, "drain failed: HTTP 500"),
            other => panic!("expected a give-back, got {other:?}"),
        }
    }

    #[test]
    fn a_drain_that_timed_out_after_pods_went_drains_again_a_bounded_number_of_rounds() {
        let now = Timestamp::UNIX_EPOCH;
        let progressed = DrainOutcome::TimedOut {
            remaining: vec![pod("slow")],
            blocking_pdbs: Vec::new(),
            evicted_so_far: vec![pod("a"), pod("b")],
        };
        for round in 1..MAX_ROUNDS_IN_A_ROW {
            match after_drain(DrainEnd::Outcome(&progressed), 2, round, backoff(), now) {
                AfterDrain::DrainAgain { why } => {
                    assert_eq!(why, "timed out with 1 pods left after 2 went");
                }
                other => panic!("round {round}: expected another drain, got {other:?}"),
            }
        }
        // Past the bound, or without progress, the slot goes back as before.
        let last = after_drain(
            DrainEnd::Outcome(&progressed),
            2,
            MAX_ROUNDS_IN_A_ROW,
            backoff(),
            now,
        );
        assert!(
            matches!(last, AfterDrain::GiveBack { attempts: 3, .. }),
            "{last:?}"
        );
        let stuck = DrainOutcome::TimedOut {
            remaining: vec![pod("slow")],
            blocking_pdbs: Vec::new(),
            evicted_so_far: Vec::new(),
        };
        assert!(matches!(
            after_drain(DrainEnd::Outcome(&stuck), 0, 1, backoff(), now),
            AfterDrain::GiveBack { .. }
        ));
        // A blocked drain (a budget that refused for its whole blocked timeout) is no progress
        // to build on either, whatever went before it.
        let blocked = DrainOutcome::Blocked {
            by: Vec::new(),
            evicted_so_far: vec![pod("a")],
        };
        assert!(matches!(
            after_drain(DrainEnd::Outcome(&blocked), 0, 1, backoff(), now),
            AfterDrain::GiveBack { .. }
        ));
    }
}
