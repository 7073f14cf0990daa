//! When the bootstrapped CA is rotated: a pure decision of (stored state, facts, policy, now)
//! → steps, and the pure application of a step. The I/O around it is in [`super::bootstrap`].
//!
//! A rotation moves through these states, one step at a time:
//!
//! 1. **Stage**: the active CA is due (less than `--tls-ca-rotation-threshold` of its lifetime
//!    left) or does not conform (no name constraints for the current names, or a validity
//!    longer than `--tls-ca-validity`, e.g. a CA from before rotation existed). A new CA is
//!    generated and kept as *next*; the trust bundle (ConfigMap `rota-ca`) now holds both.
//! 2. **Mark published**: the first round that reads the bundle back with the next CA in it
//!    records that time.
//! 3. **Promote**: `--tls-ca-overlap` after publication, every agent trusts the next CA: the
//!    kubelet has refreshed the mounted ConfigMap (about a minute) and agents read the bundle
//!    on every new connection. The next CA becomes active and signs the serving certificate;
//!    the old one is *previous*: its key is dropped, its certificate stays in the bundle so that
//!    an agent whose bundle is a little behind still accepts what it may be served.
//! 4. **Retire**: `--tls-ca-overlap` after the promotion (or when it expires, if sooner) the
//!    previous certificate leaves the bundle.
//!
//! An active CA that has already expired (the coordinator was down through the whole window)
//! is **replaced** at once: nobody can be served with it anyway.

use jiff::{SignedDuration, Timestamp};

/// How much longer than `--tls-ca-validity` a CA may live before it counts as too long-lived:
/// certificates are backdated a little against clock skew.
const LIFETIME_SLACK: SignedDuration = SignedDuration::from_hours(24);

/// When a certificate is valid.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Life {
    /// Start of validity.
    pub not_before: Timestamp,
    /// End of validity.
    pub not_after: Timestamp,
}

impl Life {
    /// Whether less than `percent_left` % of the lifetime remains at `now` (or it is over).
    pub fn due(&self, percent_left: u8, now: Timestamp) -> bool {
        let lifetime = self.not_after.duration_since(self.not_before);
        // Divided first: a lifetime near the largest duration must not overflow.
        let left = lifetime / 100 * i32::from(percent_left);
        match self.not_after.checked_sub(left) {
            Ok(rotate_at) => now >= rotate_at,
            Err(_) => true,
        }
    }

    /// The length of the validity.
    pub fn lifetime(&self) -> SignedDuration {
        self.not_after.duration_since(self.not_before)
    }
}

/// A CA as the rotation sees it.
pub trait Authority {
    /// What stays in the bundle once the CA is retired from signing (no private key).
    type Cert: Clone;
    /// Its validity.
    fn life(&self) -> Life;
    /// Its certificate.
    fn cert(&self) -> Self::Cert;
}

/// The CA being introduced.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Staged<C> {
    /// The CA, with its key.
    pub ca: C,
    /// When the bundle was first seen holding it.
    pub published_at: Option<Timestamp>,
}

/// The CA that signed until the last promotion; only its certificate is kept.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Retired<P> {
    /// Its certificate.
    pub cert: P,
    /// Its validity.
    pub life: Life,
    /// When it stopped signing.
    pub retired_at: Timestamp,
}

/// Every CA the coordinator keeps.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rotation<C: Authority> {
    /// The CA that signs the serving certificate.
    pub active: C,
    /// The CA being introduced, if a rotation is under way.
    pub next: Option<Staged<C>>,
    /// The CA that signed before the last promotion, while it stays trusted.
    pub previous: Option<Retired<C::Cert>>,
}

/// How CAs are rotated (the `--tls-ca-*` flags).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Policy {
    /// The validity of a new CA.
    pub validity: SignedDuration,
    /// Rotate when less than this percentage of the active CA's lifetime is left.
    pub threshold_percent: u8,
    /// How long a new CA is in the bundle before it signs, and an old one after it stopped.
    pub overlap: SignedDuration,
}

/// What the I/O knows besides the stored state.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Facts {
    /// The coordinator made the CA (an operator's own CA is never rotated).
    pub managed: bool,
    /// The active CA's name constraints are exactly those the current names call for.
    pub conforming: bool,
    /// The published bundle holds the next CA.
    pub next_published: bool,
}

/// One change to the stored state.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Step {
    /// Generate a next CA.
    Stage,
    /// Record that the bundle holds the next CA since now.
    MarkPublished,
    /// The next CA becomes active; the active one becomes previous.
    Promote,
    /// The previous CA leaves the bundle.
    Retire,
    /// Generate a new active CA at once (the active one has expired); nothing is kept.
    Replace,
}

impl std::fmt::Display for Step {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Step::Stage => "staged a new CA in the trust bundle",
            Step::MarkPublished => "the trust bundle holds the new CA",
            Step::Promote => "the new CA signs from now on; the old one's key is dropped",
            Step::Retire => "the old CA left the trust bundle",
            Step::Replace => "the CA had expired; replaced it at once",
        })
    }
}

impl<C: Authority> Rotation<C> {
    /// A state with only `active`.
    pub fn new(active: C) -> Self {
        Rotation {
            active,
            next: None,
            previous: None,
        }
    }

    /// The steps due at `now`, in the order they are to be applied.
    pub fn plan(&self, facts: Facts, policy: &Policy, now: Timestamp) -> Vec<Step> {
        if !facts.managed {
            return Vec::new();
        }
        if now >= self.active.life().not_after {
            let next_usable = self
                .next
                .as_ref()
                .is_some_and(|next| now < next.ca.life().not_after);
            return vec![if next_usable {
                Step::Promote
            } else {
                Step::Replace
            }];
        }
        let mut steps = Vec::new();
        let retiring = self.previous.as_ref().is_some_and(|previous| {
            now >= previous.life.not_after
                || previous
                    .retired_at
                    .checked_add(policy.overlap)
                    .is_ok_and(|end| now >= end)
        });
        if retiring {
            steps.push(Step::Retire);
        }
        let previous_gone = self.previous.is_none() || retiring;
        match &self.next {
            None => {
                let due = self.active.life().due(policy.threshold_percent, now);
                let longest = policy
                    .validity
                    .checked_add(LIFETIME_SLACK)
                    .unwrap_or(SignedDuration::MAX);
                let too_long = self.active.life().lifetime() > longest;
                if due || too_long || !facts.conforming {
                    steps.push(Step::Stage);
                }
            }
            Some(Staged {
                published_at: None, ..
            }) => {
                if facts.next_published {
                    steps.push(Step::MarkPublished);
                }
            }
            Some(Staged {
                published_at: Some(at),
                ..
            }) => {
                // A previous CA still in its overlap keeps its place: promoting now would push
                // it out of the bundle early.
                let trusted = at.checked_add(policy.overlap).is_ok_and(|end| now >= end);
                if trusted && previous_gone {
                    steps.push(Step::Promote);
                }
            }
        }
        steps
    }

    /// The state after `step` at `now`; `fresh` makes a new CA for [`Step::Stage`] and
    /// [`Step::Replace`]. A step that does not fit the state (e.g. promoting without a next
    /// CA) changes nothing.
    pub fn apply<E>(
        self,
        step: Step,
        now: Timestamp,
        fresh: impl FnOnce() -> Result<C, E>,
    ) -> Result<Self, E> {
        Ok(match step {
            Step::Stage => Rotation {
                next: Some(Staged {
                    ca: fresh()?,
                    published_at: None,
                }),
                ..self
            },
            Step::MarkPublished => Rotation {
                next: self.next.map(|next| Staged {
                    published_at: next.published_at.or(Some(now)),
                    ..next
                }),
                ..self
            },
            Step::Promote => match self.next {
                Some(next) => Rotation {
                    previous: Some(Retired {
                        cert: self.active.cert(),
                        life: self.active.life(),
                        retired_at: now,
                    }),
                    active: next.ca,
                    next: None,
                },
                None => self,
            },
            Step::Retire => Rotation {
                previous: None,
                ..self
            },
            Step::Replace => Rotation::new(fresh()?),
        })
    }

    /// The certificates clients must trust: the active CA, the next one and the previous one.
    pub fn bundle(&self) -> Vec<C::Cert> {
        std::iter::once(self.active.cert())
            .chain(self.next.as_ref().map(|next| next.ca.cert()))
            .chain(self.previous.as_ref().map(|previous| previous.cert.clone()))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use proptest::prelude::*;

    use super::*;

    /// A CA of the model: its number and validity.
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    struct Model {
        id: u32,
        life: Life,
    }

    impl Authority for Model {
        type Cert = u32;
        fn life(&self) -> Life {
            self.life
        }
        fn cert(&self) -> u32 {
            self.id
        }
    }

    const DAY: SignedDuration = SignedDuration::from_hours(24);

    fn t0() -> Timestamp {
        "2030-01-01T00:00:00Z".parse().unwrap()
    }

    fn policy() -> Policy {
        Policy {
            validity: DAY * 365,
            threshold_percent: 33,
            overlap: DAY,
        }
    }

    fn ca(id: u32, from: Timestamp, validity: SignedDuration) -> Model {
        Model {
            id,
            life: Life {
                not_before: from,
                not_after: from + validity,
            },
        }
    }

    fn facts(next_published: bool) -> Facts {
        Facts {
            managed: true,
            conforming: true,
            next_published,
        }
    }

    fn step(state: Rotation<Model>, step: Step, now: Timestamp, id: u32) -> Rotation<Model> {
        state
            .apply(step, now, || Ok::<_, ()>(ca(id, now, policy().validity)))
            .unwrap()
    }

    #[test]
    fn a_whole_rotation_step_by_step() {
        let p = policy();
        let start = t0();
        let mut state = Rotation::new(ca(1, start, p.validity));
        let young = start + DAY * 200;
        assert_eq!(state.plan(facts(false), &p, young), []);

        // 67 % of 365 days: 244.55 days.
        let due = start + DAY * 245;
        assert_eq!(state.plan(facts(false), &p, due), [Step::Stage]);
        state = step(state, Step::Stage, due, 2);
        assert_eq!(state.bundle(), [1, 2]);
        // Not in the bundle yet: nothing; once it is, its publication is recorded.
        assert_eq!(state.plan(facts(false), &p, due), []);
        assert_eq!(state.plan(facts(true), &p, due), [Step::MarkPublished]);
        state = step(state, Step::MarkPublished, due, 0);
        // The overlap runs from publication.
        assert_eq!(state.plan(facts(true), &p, due + DAY / 2), []);
        assert_eq!(state.plan(facts(true), &p, due + DAY), [Step::Promote]);
        state = step(state, Step::Promote, due + DAY, 0);
        assert_eq!(state.active.id, 2);
        assert_eq!(state.bundle(), [2, 1]);
        assert_eq!(state.plan(facts(false), &p, due + DAY + DAY / 2), []);
        assert_eq!(state.plan(facts(false), &p, due + DAY * 2), [Step::Retire]);
        state = step(state, Step::Retire, due + DAY * 2, 0);
        assert_eq!(state.bundle(), [2]);
        assert_eq!(state.plan(facts(false), &p, due + DAY * 3), []);
    }

    #[test]
    fn a_ca_is_due_when_less_than_the_threshold_of_its_life_is_left() {
        let life = ca(1, t0(), DAY * 100).life;
        let table = [
            (0, 33, false),
            (66, 33, false),
            (67, 33, true),
            (100, 33, true),
            (200, 33, true),
            (49, 50, false),
            (50, 50, true),
            (9, 90, false),
            (10, 90, true),
        ];
        for (days, percent, due) in table {
            assert_eq!(
                life.due(percent, t0() + DAY * days),
                due,
                "day {days}, {percent} %"
            );
        }
        // Not valid yet counts as not due (the clock is behind; nothing to gain by rotating).
        assert!(!life.due(33, t0() - DAY));
        let forever = Life {
            not_before: Timestamp::MIN,
            not_after: Timestamp::MAX,
        };
        assert!(
            !forever.due(10, t0()),
            "no overflow near the largest duration"
        );
    }

    #[test]
    fn an_operators_ca_is_never_rotated() {
        let p = policy();
        let state = Rotation::new(ca(1, t0(), DAY * 3650));
        let unmanaged = Facts {
            managed: false,
            conforming: false,
            next_published: false,
        };
        for days in [0, 3000, 4000] {
            assert_eq!(state.plan(unmanaged, &p, t0() + DAY * days), []);
        }
    }

    #[test]
    fn a_ca_that_does_not_conform_is_rotated_at_once() {
        let p = policy();
        // The ten-year CA of earlier releases, and a CA without the current names.
        let legacy = Rotation::new(ca(1, t0(), DAY * 3650));
        assert_eq!(legacy.plan(facts(false), &p, t0()), [Step::Stage]);
        let fresh = Rotation::new(ca(1, t0(), p.validity));
        let backdated = Rotation::new(ca(1, t0() - DAY / 24, p.validity + DAY / 24));
        assert_eq!(backdated.plan(facts(false), &p, t0()), []);
        let names_changed = Facts {
            conforming: false,
            ..facts(false)
        };
        assert_eq!(fresh.plan(names_changed, &p, t0()), [Step::Stage]);
    }

    #[test]
    fn an_expired_ca_is_replaced_or_its_successor_promoted_at_once() {
        let p = policy();
        let state = Rotation::new(ca(1, t0(), p.validity));
        let late = t0() + p.validity;
        assert_eq!(state.plan(facts(false), &p, late), [Step::Replace]);
        let replaced = step(state.clone(), Step::Replace, late, 2);
        assert_eq!(replaced.bundle(), [2]);
        let staged = step(state, Step::Stage, t0() + DAY * 300, 2);
        assert_eq!(staged.plan(facts(false), &p, late), [Step::Promote]);
    }

    #[test]
    fn a_promotion_waits_for_the_previous_ca_to_leave() {
        // A validity shorter than twice the overlap: the next rotation is due while the
        // previous CA is still in its overlap.
        let p = Policy {
            validity: DAY * 2,
            threshold_percent: 90,
            overlap: DAY,
        };
        let mut state = Rotation::new(ca(2, t0(), p.validity));
        state.previous = Some(Retired {
            cert: 1,
            life: ca(1, t0() - DAY, p.validity).life,
            retired_at: t0(),
        });
        state = step(state, Step::Stage, t0(), 3);
        state = step(state, Step::MarkPublished, t0(), 0);
        let half = t0() + DAY / 2;
        assert_eq!(state.plan(facts(true), &p, half), []);
        assert_eq!(
            state.plan(facts(true), &p, t0() + DAY),
            [Step::Retire, Step::Promote]
        );
    }

    proptest! {
        /// Rounds at random intervals (each shorter than the overlap, as the refresh interval
        /// is), with a threshold that leaves more than the overlap and two rounds: the signing
        /// CA was in the published bundle for the whole overlap before it signed; a CA leaves
        /// the bundle only once the overlap since it stopped signing has passed (or it
        /// expired); the signing CA never expires; at most three CAs are trusted.
        #[test]
        fn rotations_keep_every_agent_trusting_the_signer(
            gaps in proptest::collection::vec(1i64..(23 * 60), 1..400),
            threshold_percent in 10u8..60,
            validity_days in 4i32..30,
        ) {
            prop_assume!(validity_days * i32::from(threshold_percent) >= 300);
            let p = Policy {
                validity: DAY * validity_days,
                threshold_percent,
                overlap: DAY,
            };
            let mut now = t0();
            let mut state = Rotation::new(ca(1, now, p.validity));
            let mut published = vec![1];
            let mut next_id = 2;
            let mut lives = BTreeMap::from([(1, state.active.life)]);
            let mut in_bundle_since = BTreeMap::from([(1, now - DAY)]);
            let mut signer = 1;
            let mut stopped_at = BTreeMap::new();
            for gap in gaps {
                now += SignedDuration::from_mins(gap);
                let next_published = state
                    .next
                    .as_ref()
                    .is_some_and(|next| published.contains(&next.ca.id));
                let steps = state.plan(
                    Facts { managed: true, conforming: true, next_published },
                    &p,
                    now,
                );
                prop_assert!(!steps.contains(&Step::Replace), "the signer expired at {}", now);
                for s in steps {
                    let id = next_id;
                    state = state
                        .apply(s, now, || Ok::<_, ()>(ca(id, now, p.validity)))
                        .unwrap();
                    if s == Step::Stage {
                        lives.insert(id, ca(id, now, p.validity).life);
                        next_id += 1;
                    }
                }
                if state.active.id != signer {
                    stopped_at.insert(signer, now);
                    signer = state.active.id;
                    let since = in_bundle_since[&signer];
                    let waited = now.duration_since(since);
                    prop_assert!(waited >= p.overlap, "CA {} signed {} after publication", signer, waited);
                }
                prop_assert!(now < state.active.life.not_after);
                // The round publishes the bundle after its writes.
                let bundle = state.bundle();
                prop_assert!(bundle.len() <= 3);
                prop_assert!(bundle.contains(&signer));
                for gone in published.iter().filter(|id| !bundle.contains(id)) {
                    let expired = now >= lives[gone].not_after;
                    let stopped = stopped_at.get(gone).is_some_and(|at| now.duration_since(*at) >= p.overlap);
                    prop_assert!(expired || stopped, "CA {} left the bundle early", gone);
                }
                for id in &bundle {
                    in_bundle_since.entry(*id).or_insert(now);
                }
                published = bundle;
            }
        }
    }
}
