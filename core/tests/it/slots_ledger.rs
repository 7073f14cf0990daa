//! Table-style tests of the slot ledger's transitions, refusals and fencing.

use jiff::{SignedDuration, Timestamp};
use rota_core::model::{FencingToken, Operation, Origin, SlotPhase, UpgradeReboot};
use rota_core::slots::ledger::MAX_NOTE_BYTES;
use rota_core::slots::{CompletionReport, Holding, RebootEvidence};
use rota_core::slots::{Ledger, LedgerError, NodeState, Release, TransitionReason, Waiting};

const TTL: SignedDuration = SignedDuration::from_secs(60);

fn at(secs: i64) -> Timestamp {
    Timestamp::constant(1_700_000_000 + secs, 0)
}

fn report(success: bool, secs: i64) -> CompletionReport {
    CompletionReport {
        success,
        message: String::new(),
        boot_id: Some("boot-2".into()),
        rebooted: true,
        changed_packages: 3,
        changed: vec![],
        at: at(secs),
    }
}

fn upgrade() -> Operation {
    Operation::PackageUpgrade {
        security_only: true,
        reboot: UpgradeReboot::IfRequired,
        packages: vec![],
    }
}

/// Requests and admits `node`; returns its token.
fn admitted(ledger: &mut Ledger, node: &str, secs: i64) -> Result<FencingToken, LedgerError> {
    ledger.request(node, Operation::Reboot, Origin::Agent, at(secs))?;
    Ok(ledger.admit(node, at(secs + 1), None, true)?.0)
}

#[test]
fn happy_path_walks_every_phase_and_releases() {
    let mut l = Ledger::new(TTL);
    let t = l
        .request("n1", Operation::Reboot, Origin::Agent, at(0))
        .unwrap()
        .unwrap();
    assert_eq!(
        (t.from, t.to, t.reason),
        (
            NodeState::Idle,
            NodeState::Queued,
            TransitionReason::Requested
        )
    );
    assert_eq!(l.queue().count(), 1);

    let (token, t) = l.admit("n1", at(10), Some("boot-1".into()), true).unwrap();
    assert_eq!(token, FencingToken(1));
    assert_eq!(
        (t.from, t.to, t.token),
        (NodeState::Queued, NodeState::Draining, Some(token))
    );
    assert_eq!(l.queue().count(), 0);
    let slot = l.slots().next().unwrap();
    assert_eq!(slot.phase, SlotPhase::Draining);
    assert_eq!(slot.boot_id_before.as_deref(), Some("boot-1"));
    assert_eq!(slot.lease_expires_at, at(70));

    let t = l.drained("n1", token, at(20)).unwrap();
    assert_eq!((t.from, t.to), (NodeState::Draining, NodeState::Granted));
    assert_eq!(l.view("n1").token, Some(token));
    assert_eq!(l.renew("n1", token, at(50)).unwrap(), at(110));
    l.progress("n1", token, "rebooting".into(), "".into(), at(55))
        .unwrap();

    let t = l.complete("n1", token, report(true, 90)).unwrap().unwrap();
    assert_eq!(
        (t.from, t.to, t.reason),
        (
            NodeState::Granted,
            NodeState::Verifying,
            TransitionReason::Completed
        )
    );
    assert!(!t.frees_capacity());

    let t = l.verified("n1", token, at(100)).unwrap();
    assert_eq!(
        (t.from, t.to, t.reason),
        (
            NodeState::Verifying,
            NodeState::Done,
            TransitionReason::Verified
        )
    );
    assert!(t.frees_capacity());
    assert!(
        t.uncordon,
        "rota cordoned the node, so the end of the slot uncordons it"
    );
    assert_eq!(l.slots().count(), 0);
    let view = l.view("n1");
    assert_eq!((view.state, view.token), (NodeState::Done, Some(token)));
}

#[test]
fn request_is_idempotent_per_node() {
    let mut l = Ledger::new(TTL);
    l.request("n1", Operation::Reboot, Origin::Agent, at(0))
        .unwrap();
    let before = l.clone();
    assert_eq!(
        l.request("n1", Operation::Reboot, Origin::Agent, at(5))
            .unwrap(),
        None
    );
    assert_eq!(
        l, before,
        "the same request again changes nothing, not even its queue time"
    );

    // A different operation while only queued replaces it and keeps its place.
    let t = l
        .request("n1", upgrade(), Origin::Agent, at(7))
        .unwrap()
        .unwrap();
    assert_eq!(t.reason, TransitionReason::RequestReplaced);
    let queued = l.queue().next().unwrap();
    assert_eq!(
        (queued.operation.clone(), queued.requested_at),
        (upgrade(), at(0))
    );

    // A manual request for the same operation raises its priority.
    let t = l
        .request("n1", upgrade(), Origin::Manual, at(8))
        .unwrap()
        .unwrap();
    assert_eq!(t.reason, TransitionReason::RequestReplaced);
    assert_eq!(l.queue().next().unwrap().origin, Origin::Manual);

    // The agent cannot replace a human's request.
    let before = l.clone();
    let err = l
        .request("n1", Operation::Reboot, Origin::Agent, at(9))
        .unwrap_err();
    assert!(
        matches!(err, LedgerError::ManualRequestQueued { .. }),
        "{err}"
    );
    assert_eq!(l, before);
}

/// A human's reboot and the agent's package upgrade meet in the queue, in either order: one
/// request with the human's priority and the first request's place, that upgrades and then
/// always reboots. Its slot includes the agent's upgrade; withdrawing the upgrade keeps the
/// human's reboot.
#[test]
fn a_manual_reboot_and_the_agents_upgrade_become_one_maintenance() {
    let merged = Operation::PackageUpgrade {
        security_only: true,
        reboot: UpgradeReboot::Always,
        packages: vec![],
    };
    for (first, second) in [
        (
            (upgrade(), Origin::Agent),
            (Operation::Reboot, Origin::Manual),
        ),
        (
            (Operation::Reboot, Origin::Manual),
            (upgrade(), Origin::Agent),
        ),
    ] {
        let mut l = Ledger::new(TTL);
        l.request("n1", first.0.clone(), first.1, at(0)).unwrap();
        let t = l
            .request("n1", second.0.clone(), second.1, at(5))
            .unwrap()
            .unwrap();
        assert_eq!(
            (t.from, t.to, t.reason),
            (
                NodeState::Queued,
                NodeState::Queued,
                TransitionReason::RequestReplaced
            )
        );
        assert!(
            t.message.contains("upgrades, then reboots"),
            "{}",
            t.message
        );
        let queued = l.queue().next().unwrap().clone();
        assert_eq!(
            (&queued.operation, queued.origin, queued.requested_at),
            (&merged, Origin::Manual, at(0))
        );
        // Either request again changes nothing.
        let before = l.clone();
        for (op, origin) in [&first, &second] {
            assert_eq!(l.request("n1", op.clone(), *origin, at(6)).unwrap(), None);
        }
        assert_eq!(l, before);
    }

    // The slot includes the agent's upgrade: asking again is no refusal.
    let mut l = Ledger::new(TTL);
    l.request("n1", Operation::Reboot, Origin::Manual, at(0))
        .unwrap();
    l.request("n1", upgrade(), Origin::Agent, at(1)).unwrap();
    let (token, _) = l.admit("n1", at(2), None, true).unwrap();
    assert_eq!(
        l.request("n1", upgrade(), Origin::Agent, at(3)).unwrap(),
        None
    );
    assert_eq!(l.slots().next().unwrap().operation, merged);
    assert_eq!(l.view("n1").token, Some(token));

    // The agent no longer needs its upgrade: the human's reboot stays queued.
    let mut l = Ledger::new(TTL);
    l.request("n1", upgrade(), Origin::Agent, at(0)).unwrap();
    l.request("n1", Operation::Reboot, Origin::Manual, at(1))
        .unwrap();
    let t = l
        .release("n1", Release::Withdraw, "no longer needed", at(2))
        .unwrap();
    assert_eq!(t.reason, TransitionReason::RequestReplaced);
    let queued = l.queue().next().unwrap();
    assert_eq!(
        (&queued.operation, queued.origin, queued.requested_at),
        (&Operation::Reboot, Origin::Manual, at(0))
    );

    // Two agent requests do not merge: the newer replaces the older, as before.
    let mut l = Ledger::new(TTL);
    l.request("n1", Operation::Reboot, Origin::Agent, at(0))
        .unwrap();
    l.request("n1", upgrade(), Origin::Agent, at(1)).unwrap();
    assert_eq!(l.queue().next().unwrap().operation, upgrade());
}

#[test]
fn request_while_holding_a_slot() {
    let mut l = Ledger::new(TTL);
    let token = admitted(&mut l, "n1", 0).unwrap();
    let before = l.clone();
    assert_eq!(
        l.request("n1", Operation::Reboot, Origin::Agent, at(5))
            .unwrap(),
        None
    );
    let err = l
        .request("n1", upgrade(), Origin::Manual, at(5))
        .unwrap_err();
    assert_eq!(
        err,
        LedgerError::SlotHeld {
            node: "n1".into(),
            token,
            held: "reboot",
            requested: "package-upgrade"
        }
    );
    assert!(err.to_string().contains("holds slot 1 for reboot"), "{err}");
    assert_eq!(l, before);
}

#[test]
fn tokens_strictly_increase_and_are_never_reused() {
    let mut l = Ledger::new(TTL);
    let a = admitted(&mut l, "a", 0).unwrap();
    let b = admitted(&mut l, "b", 1).unwrap();
    l.release("a", Release::Holder(a), "not needed", at(5))
        .unwrap();
    let a2 = admitted(&mut l, "a", 6).unwrap();
    assert!(a < b && b < a2, "{a} {b} {a2}");
    assert_eq!(l.last_issued_token(), a2.0);
    // The old token of node a is stale for good.
    let err = l.renew("a", a, at(7)).unwrap_err();
    assert_eq!(
        err,
        LedgerError::StaleToken {
            node: "a".into(),
            presented: a,
            current: Some(a2)
        }
    );
}

#[test]
fn stale_or_foreign_tokens_are_refused_and_change_nothing() {
    let mut l = Ledger::new(TTL);
    let a = admitted(&mut l, "a", 0).unwrap();
    let b = admitted(&mut l, "b", 0).unwrap();
    l.drained("a", a, at(3)).unwrap();
    let before = l.clone();
    for wrong in [b, FencingToken(a.0 + 100), FencingToken(0)] {
        let errors = [
            l.drained("a", wrong, at(4)).unwrap_err(),
            l.renew("a", wrong, at(4)).unwrap_err(),
            l.progress("a", wrong, "x".into(), "".into(), at(4))
                .unwrap_err(),
            l.complete("a", wrong, report(true, 4)).unwrap_err(),
            l.verified("a", wrong, at(4)).unwrap_err(),
            l.fail("a", wrong, "x", at(4)).unwrap_err(),
            l.release("a", Release::Holder(wrong), "", at(4))
                .unwrap_err(),
            l.release("a", Release::Recovered(wrong), "", at(4))
                .unwrap_err(),
            l.requeue_after_drain_failure("a", wrong, at(9), "", at(4))
                .unwrap_err(),
        ];
        for err in errors {
            assert!(
                matches!(err, LedgerError::StaleToken { current: Some(t), .. } if t == a),
                "{err}"
            );
        }
        assert_eq!(l, before);
    }
    // A token for a node that holds nothing.
    let err = l.renew("idle", a, at(4)).unwrap_err();
    assert!(err.to_string().contains("holds no slot"), "{err}");
}

#[test]
fn wrong_phase_is_refused_and_changes_nothing() {
    let mut l = Ledger::new(TTL);
    let t = admitted(&mut l, "n", 0).unwrap();
    let before = l.clone();
    // Draining: not granted yet.
    assert!(matches!(
        l.complete("n", t, report(true, 2)),
        Err(LedgerError::WrongState {
            state: NodeState::Draining,
            ..
        })
    ));
    assert!(matches!(
        l.verified("n", t, at(2)),
        Err(LedgerError::WrongState { .. })
    ));
    assert!(matches!(
        l.progress("n", t, "x".into(), "".into(), at(2)),
        Err(LedgerError::WrongState { .. })
    ));
    assert!(matches!(
        l.admit("n", at(2), None, false),
        Err(LedgerError::WrongState { .. })
    ));
    assert_eq!(l, before);
    l.drained("n", t, at(3)).unwrap();
    let before = l.clone();
    assert!(matches!(
        l.drained("n", t, at(4)),
        Err(LedgerError::WrongState {
            state: NodeState::Granted,
            ..
        })
    ));
    assert!(matches!(
        l.requeue_after_drain_failure("n", t, at(9), "", at(4)),
        Err(LedgerError::WrongState { .. })
    ));
    assert!(matches!(
        l.release("n", Release::Recovered(t), "", at(4)),
        Err(LedgerError::WrongState { .. })
    ));
    assert!(matches!(
        l.release("n", Release::Withdraw, "", at(4)),
        Err(LedgerError::WrongState { .. })
    ));
    assert_eq!(l, before);
}

#[test]
fn failure_keeps_capacity_until_recovery_or_a_human() {
    let mut l = Ledger::new(TTL);
    let t = admitted(&mut l, "n", 0).unwrap();
    l.drained("n", t, at(2)).unwrap();
    let tr = l.complete("n", t, report(false, 30)).unwrap().unwrap();
    assert_eq!(
        (tr.to, tr.reason),
        (NodeState::Failed, TransitionReason::OperationFailed)
    );
    assert!(tr.reason.is_warning());
    assert!(!tr.frees_capacity());
    assert_eq!(l.slots().count(), 1);
    // The same report again is a no-op; the agent may still report rollback progress.
    assert_eq!(l.complete("n", t, report(false, 31)).unwrap(), None);
    l.progress("n", t, "rolling-back".into(), "".into(), at(32))
        .unwrap();
    // The agent cannot give a failed slot back itself.
    assert!(matches!(
        l.release("n", Release::Holder(t), "", at(33)),
        Err(LedgerError::WrongState { .. })
    ));
    let tr = l
        .release("n", Release::Recovered(t), "Ready again", at(40))
        .unwrap();
    assert_eq!(
        (tr.from, tr.to, tr.reason),
        (
            NodeState::Failed,
            NodeState::Idle,
            TransitionReason::Recovered
        )
    );
    assert!(tr.frees_capacity() && tr.uncordon);

    // A verification failure keeps capacity too, until a human releases it.
    let t = admitted(&mut l, "m", 50).unwrap();
    l.drained("m", t, at(52)).unwrap();
    l.complete("m", t, report(true, 60)).unwrap();
    let tr = l.fail("m", t, "not Ready within 10m", at(700)).unwrap();
    assert_eq!((tr.from, tr.to), (NodeState::Verifying, NodeState::Failed));
    assert!(matches!(
        l.fail("m", t, "again", at(701)),
        Err(LedgerError::WrongState { .. })
    ));
    let tr = l
        .release("m", Release::Force, "on-call: node replaced", at(800))
        .unwrap();
    assert_eq!(tr.reason, TransitionReason::ForceReleased);
    assert!(
        tr.message.contains("on-call: node replaced"),
        "{}",
        tr.message
    );
}

/// A node that did not come back within the ready timeout is failed by the coordinator before
/// its agent reports; the agent's late report is recorded (so that the controller can verify the
/// node again and release the slot), the slot stays failed meanwhile, and the report is not a
/// second failure.
#[test]
fn a_completion_after_the_coordinator_failed_the_slot_is_recorded_for_recovery() {
    let mut l = Ledger::new(TTL);
    l.request("n", Operation::Reboot, Origin::Agent, at(0))
        .unwrap();
    let (t, _) = l.admit("n", at(1), Some("boot-1".into()), true).unwrap();
    l.drained("n", t, at(2)).unwrap();
    l.fail("n", t, "the agent stopped renewing its lease", at(700))
        .unwrap();
    let held = |l: &Ledger| match &l.entry("n").unwrap().holding {
        Holding::Held(h) => h.clone(),
        other => panic!("{other:?}"),
    };
    assert_eq!(held(&l).reboot_evidence(), RebootEvidence::Pending);

    let tr = l.complete("n", t, report(true, 900)).unwrap().unwrap();
    assert_eq!(
        (tr.from, tr.to, tr.reason),
        (
            NodeState::Failed,
            NodeState::Failed,
            TransitionReason::Completed
        )
    );
    assert!(!tr.reason.is_warning() && !tr.frees_capacity());
    assert!(
        tr.message.contains("after the slot had failed"),
        "{}",
        tr.message
    );
    assert_eq!(held(&l).slot.phase, SlotPhase::Failed);
    assert_eq!(held(&l).reboot_evidence(), RebootEvidence::Confirmed);
    assert_eq!(l.view("n").message, tr.message);
    // Retried: nothing new.
    assert_eq!(l.complete("n", t, report(true, 901)).unwrap(), None);
    let tr = l.release("n", Release::Recovered(t), "", at(950)).unwrap();
    assert_eq!(tr.reason, TransitionReason::Recovered);
    assert!(tr.frees_capacity() && tr.uncordon);

    // A late failure report explains the failed slot, and is no second failure.
    let t = admitted(&mut l, "m", 1000).unwrap();
    l.drained("m", t, at(1002)).unwrap();
    l.fail("m", t, "lease", at(1700)).unwrap();
    let mut failed = report(false, 1800);
    failed.message = "apt-get failed".into();
    assert_eq!(l.complete("m", t, failed).unwrap(), None);
    assert!(l.view("m").message.contains("apt-get failed"));
    assert_eq!(l.state("m"), NodeState::Failed);
    // An agent's own failure cannot be turned into a success afterwards.
    assert!(matches!(
        l.complete("m", t, report(true, 1801)),
        Err(LedgerError::WrongState { .. })
    ));
}

#[test]
fn expired_leases_are_visible_but_free_nothing() {
    let mut l = Ledger::new(TTL);
    let t = admitted(&mut l, "n", 0).unwrap();
    l.drained("n", t, at(10)).unwrap();
    assert_eq!(l.expired_leases(at(69)).count(), 0);
    let expired: Vec<_> = l.expired_leases(at(70)).map(|s| s.token).collect();
    assert_eq!(expired, vec![t]);
    assert_eq!(
        l.slots().count(),
        1,
        "an expired lease still holds capacity"
    );
    // Renewing after expiry (the agent came back from its reboot) is fine.
    l.renew("n", t, at(500)).unwrap();
    assert_eq!(l.expired_leases(at(501)).count(), 0);
}

#[test]
fn drain_failure_requeues_with_back_off_and_keeps_the_queue_place() {
    let mut l = Ledger::new(TTL);
    l.request("n", Operation::Reboot, Origin::Manual, at(0))
        .unwrap();
    let (t, _) = l.admit("n", at(5), None, true).unwrap();
    let tr = l
        .requeue_after_drain_failure(
            "n",
            t,
            at(600),
            "PDB shop/web allows 0 disruptions",
            at(300),
        )
        .unwrap();
    assert_eq!(
        (tr.from, tr.to, tr.reason),
        (
            NodeState::Draining,
            NodeState::Queued,
            TransitionReason::DrainFailed
        )
    );
    assert!(tr.frees_capacity() && tr.uncordon);
    let queued = l.queue().next().unwrap().clone();
    assert_eq!(
        (queued.requested_at, queued.not_before, queued.origin),
        (at(0), Some(at(600)), Origin::Manual)
    );
    assert!(l.view("n").message.contains("PDB shop/web"));
    let before = l.clone();
    assert_eq!(
        l.admit("n", at(599), None, true).unwrap_err(),
        LedgerError::BackingOff {
            node: "n".into(),
            until: at(600)
        }
    );
    assert_eq!(l, before);
    let (t2, _) = l.admit("n", at(600), None, true).unwrap();
    assert!(t2 > t);
    assert!(matches!(
        l.renew("n", t, at(601)),
        Err(LedgerError::StaleToken { .. })
    ));
}

#[test]
fn withdraw_holder_release_and_node_deletion() {
    let mut l = Ledger::new(TTL);
    l.request("q", Operation::Reboot, Origin::Agent, at(0))
        .unwrap();
    let tr = l
        .release("q", Release::Withdraw, "no longer needed", at(1))
        .unwrap();
    assert_eq!(
        (tr.to, tr.reason),
        (NodeState::Idle, TransitionReason::Withdrawn)
    );
    assert!(matches!(
        l.release("q", Release::Withdraw, "", at(2)),
        Err(LedgerError::WrongState { .. })
    ));
    assert!(matches!(
        l.release("q", Release::Force, "", at(2)),
        Err(LedgerError::WrongState { .. })
    ));

    let t = admitted(&mut l, "h", 0).unwrap();
    assert!(matches!(
        l.release("h", Release::Withdraw, "", at(3)),
        Err(LedgerError::WrongState { .. })
    ));
    let tr = l.release("h", Release::Holder(t), "", at(3)).unwrap();
    assert_eq!(
        (tr.from, tr.to, tr.reason),
        (
            NodeState::Draining,
            NodeState::Idle,
            TransitionReason::Released
        )
    );

    let t = admitted(&mut l, "gone", 10).unwrap();
    l.drained("gone", t, at(12)).unwrap();
    let tr = l.node_deleted("gone", at(20)).unwrap();
    assert_eq!(
        (tr.from, tr.to, tr.token, tr.reason),
        (
            NodeState::Granted,
            NodeState::Idle,
            Some(t),
            TransitionReason::NodeDeleted
        )
    );
    assert!(tr.frees_capacity() && !tr.uncordon);
    assert_eq!(l.node_deleted("gone", at(21)), None);
    assert_eq!(l.slots().count(), 0);
    // A node that only has history produces no transition either.
    assert_eq!(l.node_deleted("q", at(22)), None);
    assert!(l.entry("q").is_none());
}

#[test]
fn waiting_feedback_shows_only_while_queued() {
    let mut l = Ledger::new(TTL);
    let waiting = Waiting {
        position: std::num::NonZeroU32::new(3),
        reasons: vec!["window closed until 22:00".into()],
    };
    assert!(
        !l.set_waiting("n", waiting.clone()),
        "an idle node has no queue place"
    );
    l.request("n", Operation::Reboot, Origin::Agent, at(0))
        .unwrap();
    assert!(l.set_waiting("n", waiting.clone()));
    assert!(
        !l.set_waiting("n", waiting.clone()),
        "unchanged feedback is not a change"
    );
    let view = l.view("n");
    assert_eq!(
        (
            view.queue_position.map(|p| p.get()),
            view.waiting_reasons.len()
        ),
        (Some(3), 1)
    );
    l.admit("n", at(1), None, false).unwrap();
    let view = l.view("n");
    assert_eq!(
        (view.queue_position, view.waiting_reasons.is_empty()),
        (None, true)
    );
    assert!(matches!(l.entry("n").unwrap().holding, Holding::Held(_)));
}

#[test]
fn rebuilt_ledger_never_reissues_a_token() {
    let mut l = Ledger::new(TTL);
    let t = admitted(&mut l, "n", 0).unwrap();
    let entries: Vec<_> = l.entries().map(|(n, e)| (n.clone(), e.clone())).collect();
    // The counter read back is older than the slot (it cannot be in practice; be safe anyway).
    let mut rebuilt = Ledger::from_persisted(TTL, 0, entries);
    assert_eq!(rebuilt, l);
    rebuilt
        .request("m", Operation::Reboot, Origin::Agent, at(5))
        .unwrap();
    let (t2, _) = rebuilt.admit("m", at(6), None, false).unwrap();
    assert!(t2 > t);
}

#[test]
fn checkpoint_rollback_restores_the_entry_but_not_the_counter() {
    let mut l = Ledger::new(TTL);
    l.request("n", Operation::Reboot, Origin::Agent, at(0))
        .unwrap();
    let cp = l.checkpoint("n");
    let (t, _) = l.admit("n", at(1), None, false).unwrap();
    l.rollback(cp);
    assert_eq!(l.state("n"), NodeState::Queued);
    let (t2, _) = l.admit("n", at(2), None, false).unwrap();
    assert!(t2 > t, "a token issued once stays burned");
}

#[test]
fn reboot_evidence_compares_boot_ids() {
    let held = |l: &Ledger| match &l.entry("n").unwrap().holding {
        Holding::Held(h) => h.reboot_evidence(),
        other => panic!("not held: {other:?}"),
    };
    let cases = [
        (
            Some("boot-1"),
            true,
            Some("boot-2"),
            RebootEvidence::Confirmed,
        ),
        (
            Some("boot-1"),
            true,
            Some("boot-1"),
            RebootEvidence::BootIdUnchanged,
        ),
        (None, true, Some("boot-2"), RebootEvidence::Unverifiable),
        (Some("boot-1"), true, None, RebootEvidence::Unverifiable),
        (
            Some("boot-1"),
            false,
            Some("boot-1"),
            RebootEvidence::NotRebooted,
        ),
    ];
    for (before, rebooted, after, expected) in cases {
        let mut l = Ledger::new(TTL);
        l.request("n", Operation::Reboot, Origin::Agent, at(0))
            .unwrap();
        let (t, _) = l
            .admit("n", at(1), before.map(str::to_owned), true)
            .unwrap();
        l.drained("n", t, at(2)).unwrap();
        assert_eq!(held(&l), RebootEvidence::Pending);
        let report = CompletionReport {
            success: true,
            message: String::new(),
            boot_id: after.map(str::to_owned),
            rebooted,
            changed_packages: 0,
            changed: vec![],
            at: at(3),
        };
        l.complete("n", t, report).unwrap();
        assert_eq!(held(&l), expected, "{before:?} {rebooted} {after:?}");
    }
}

#[test]
fn long_reasons_are_cut_to_fit_annotations() {
    let mut l = Ledger::new(TTL);
    let t = admitted(&mut l, "n", 0).unwrap();
    let reason = "PDB ä/b allows 0; ".repeat(1000);
    let tr = l
        .requeue_after_drain_failure("n", t, at(60), &reason, at(5))
        .unwrap();
    assert!(tr.message.len() <= MAX_NOTE_BYTES, "{}", tr.message.len());
    assert!(tr.message.ends_with('…'));
    assert_eq!(l.view("n").message, tr.message);
    let (t, _) = l.admit("n", at(60), None, false).unwrap();
    l.drained("n", t, at(61)).unwrap();
    l.progress("n", t, "s".into(), "x".repeat(10_000), at(62))
        .unwrap();
    let tr = l
        .complete(
            "n",
            t,
            CompletionReport {
                success: false,
                message: "é".repeat(5000),
                boot_id: None,
                rebooted: false,
                changed_packages: 0,
                changed: vec![],
                at: at(63),
            },
        )
        .unwrap()
        .unwrap();
    assert!(tr.message.len() <= MAX_NOTE_BYTES);
    let Holding::Held(held) = &l.entry("n").unwrap().holding else {
        panic!("the failed slot stays held");
    };
    assert!(held.progress.as_ref().unwrap().message.len() <= MAX_NOTE_BYTES);
    assert!(held.completion.as_ref().unwrap().message.len() <= MAX_NOTE_BYTES);
}
