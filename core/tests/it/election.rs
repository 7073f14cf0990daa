//! Table tests of the leader-election rules: the plain rule of each round and the handover of
//! a leader whose node is cordoned.

use std::time::{Duration, Instant};

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use rota_core::election::handover::{self, Standing};
use rota_core::election::{Decision, LeaseRecord, Timings, View, decide};

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
    let with = |lease_duration| Timings {
        lease_duration,
        ..Timings::default()
    };
    assert_eq!(
        with(Duration::from_millis(1500)).lease_duration_seconds(),
        2
    );
    assert_eq!(with(Duration::from_secs(10)).lease_duration_seconds(), 10);
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
    let expected = LeaseRecord {
        transitions: 4,
        ..record(None, 10)
    };
    assert_eq!(LeaseRecord::from_lease(&lease), expected);
}

#[test]
fn handover_retry_shorter_than_a_lease_is_refused() {
    let t = Timings::default();
    assert!(handover::validate_retry(t.lease_duration - Duration::from_secs(1), &t).is_err());
    assert!(handover::validate_retry(t.lease_duration, &t).is_ok());
}

#[test]
fn handover_decision_table() {
    let t = Timings::default();
    let retry = Duration::from_secs(60);
    let base = Instant::now();
    let s = Duration::from_secs;
    let theirs = record(Some("other"), 10);
    let mine = record(Some(ME), 10);
    let free = record(None, 1);
    // (what, plain decision, lease, seen_at offset, cordoned, last attempt offset, now
    // offset, expected)
    type Case<'a> = (
        &'a str,
        Decision,
        Option<&'a LeaseRecord>,
        u64,
        bool,
        Option<u64>,
        u64,
        Decision,
    );
    let cases: Vec<Case<'_>> = vec![
        (
            "uncordoned leader renews",
            Decision::Renew,
            Some(&mine),
            0,
            false,
            None,
            3,
            Decision::Renew,
        ),
        (
            "uncordoned follower takes a free lease at once",
            Decision::Acquire,
            Some(&free),
            0,
            false,
            None,
            0,
            Decision::Acquire,
        ),
        (
            "cordoned leader hands over",
            Decision::Renew,
            Some(&mine),
            0,
            true,
            None,
            3,
            Decision::Release,
        ),
        (
            "cordoned leader that took the lease back keeps it until the retry",
            Decision::Renew,
            Some(&mine),
            0,
            true,
            Some(10),
            69,
            Decision::Renew,
        ),
        (
            "cordoned leader tries again after the retry",
            Decision::Renew,
            Some(&mine),
            0,
            true,
            Some(10),
            70,
            Decision::Release,
        ),
        (
            "cordoned follower leaves a just-released lease to the others",
            Decision::Acquire,
            Some(&free),
            5,
            true,
            Some(5),
            6,
            Decision::Wait {
                until: base + s(15),
            },
        ),
        (
            "cordoned follower takes a lease nobody took for a lease duration",
            Decision::Acquire,
            Some(&free),
            5,
            true,
            Some(5),
            15,
            Decision::Acquire,
        ),
        (
            "cordoned follower waits a lease duration past a foreign expiry",
            Decision::Acquire,
            Some(&theirs),
            0,
            true,
            None,
            12,
            Decision::Wait {
                until: base + s(20),
            },
        ),
        (
            "cordoned follower takes an expired lease nobody took",
            Decision::Acquire,
            Some(&theirs),
            0,
            true,
            None,
            20,
            Decision::Acquire,
        ),
        (
            "cordoned follower does not create a missing lease at once",
            Decision::Acquire,
            None,
            0,
            true,
            None,
            9,
            Decision::Wait {
                until: base + s(10),
            },
        ),
        (
            "cordoned follower waits on a valid foreign lease as usual",
            Decision::Wait { until: base + s(8) },
            Some(&theirs),
            0,
            true,
            None,
            3,
            Decision::Wait { until: base + s(8) },
        ),
        (
            "a cordoned leader that lost the lease has lost it",
            Decision::Lost,
            Some(&theirs),
            0,
            true,
            None,
            3,
            Decision::Lost,
        ),
    ];
    for (what, plain, lease, seen, cordoned, last, now, expected) in cases {
        let view = View {
            lease,
            seen_at: base + s(seen),
            renewed_at: None,
        };
        let standing = Standing {
            cordoned,
            last_attempt: last.map(|l| base + s(l)),
        };
        assert_eq!(
            handover::decide(plain, &view, standing, base + s(now), &t, retry),
            expected,
            "{what}"
        );
    }
}
