//! The live slot service over the in-memory store: persist before acknowledging, undo what
//! cannot be persisted, survive a restart, publish views and events.
use rota_coordinator::slot_service::{SlotEvent, SlotService, SlotServiceConfig};
use rota_core::clock::{Clock, ManualClock};

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use jiff::{SignedDuration, Timestamp};
use rota_core::model::{FencingToken, NodeFacts, Operation, Origin, PackagePin};
use rota_core::slots::persist::SLOT_ANNOTATION;
use rota_core::slots::{
    Completion, Error, LedgerError, MemoryStore, NodeState, Release, StoreError, TransitionReason,
};
use tokio::sync::mpsc::UnboundedReceiver;

fn clock() -> Arc<ManualClock> {
    Arc::new(ManualClock::new(Timestamp::constant(1_700_000_000, 0)))
}

async fn service(
    store: MemoryStore,
    clock: Arc<ManualClock>,
) -> Result<(SlotService<MemoryStore>, UnboundedReceiver<SlotEvent>), Error> {
    SlotService::load(store, SlotServiceConfig::default(), clock).await
}

fn facts(boot_id: &str) -> NodeFacts {
    NodeFacts {
        boot_id: boot_id.into(),
        reboot_required: true,
        ..NodeFacts::default()
    }
}

fn transitions(events: &mut UnboundedReceiver<SlotEvent>) -> Vec<TransitionReason> {
    let mut out = Vec::new();
    while let Ok(event) = events.try_recv() {
        if let SlotEvent::Transition(t) = event {
            out.push(t.reason);
        }
    }
    out
}

#[tokio::test]
async fn every_change_is_persisted_and_survives_a_restart() {
    let clock = clock();
    let (svc, mut events) = service(MemoryStore::with_nodes(["n1", "n2"]), clock.clone())
        .await
        .unwrap();
    svc.report_facts("n1", facts("boot-a")).unwrap();
    svc.request("n1", Operation::Reboot, Origin::Agent)
        .await
        .unwrap();
    let token = svc.admit("n1", true).await.unwrap();
    assert_eq!(token, FencingToken(1));
    let stored = svc.store().snapshot();
    assert_eq!(
        stored.last_token, 1,
        "the counter is persisted with the admission"
    );
    assert!(stored.nodes["n1"][SLOT_ANNOTATION].contains("\"bootIdBefore\":\"boot-a\""));
    svc.drained("n1", token).await.unwrap();
    assert_eq!(
        transitions(&mut events),
        [
            TransitionReason::Requested,
            TransitionReason::Admitted,
            TransitionReason::Drained
        ]
    );

    // A restarted coordinator (or the standby replica) reads the same state back.
    let snapshot = svc.store().snapshot();
    drop(svc);
    let (again, _) = service(MemoryStore::from_state(snapshot), clock.clone())
        .await
        .unwrap();
    let view = again.view("n1").await.unwrap();
    assert_eq!((view.state, view.token), (NodeState::Granted, Some(token)));
    // It continues the counter: no token is issued twice.
    again
        .request("n2", Operation::Reboot, Origin::Agent)
        .await
        .unwrap();
    assert_eq!(again.admit("n2", false).await.unwrap(), FencingToken(2));
    // And the old slot keeps working with its token only.
    again.renew("n1", token).await.unwrap();
    let err = again.renew("n1", FencingToken(2)).await.unwrap_err();
    assert!(
        matches!(err, Error::Ledger(LedgerError::StaleToken { .. })),
        "{err}"
    );
}

#[tokio::test]
async fn a_change_that_cannot_be_persisted_is_undone() {
    let (svc, mut events) = service(MemoryStore::with_nodes(["n1"]), clock())
        .await
        .unwrap();
    svc.store().set_failing(true);
    let err = svc
        .request("n1", Operation::Reboot, Origin::Agent)
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Store(StoreError::Backend(_))), "{err}");
    assert_eq!(svc.view("n1").await.unwrap().state, NodeState::Idle);

    svc.store().set_failing(false);
    svc.request("n1", Operation::Reboot, Origin::Agent)
        .await
        .unwrap();
    svc.store().set_failing(true);
    assert!(svc.admit("n1", true).await.is_err());
    assert_eq!(svc.view("n1").await.unwrap().state, NodeState::Queued);
    assert_eq!(svc.read(|l| l.slots().count()).await, 0);
    assert_eq!(transitions(&mut events), [TransitionReason::Requested]);

    svc.store().set_failing(false);
    let token = svc.admit("n1", true).await.unwrap();
    assert_eq!(
        token,
        FencingToken(2),
        "token 1 may have reached the store: it stays burned"
    );
    assert_eq!(svc.store().snapshot().last_token, 2);
}

#[tokio::test]
async fn another_writer_of_the_counter_stops_admissions() {
    let (svc, mut events) = service(MemoryStore::with_nodes(["n1"]), clock())
        .await
        .unwrap();
    svc.request("n1", Operation::Reboot, Origin::Agent)
        .await
        .unwrap();
    svc.store().write_counter_externally(10);
    let err = svc.admit("n1", true).await.unwrap_err();
    assert!(
        matches!(err, Error::Store(StoreError::Conflict { .. })),
        "{err}"
    );
    assert_eq!(svc.view("n1").await.unwrap().state, NodeState::Queued);
    assert_eq!(svc.store().snapshot().last_token, 10);
    // The controller hears of it whichever call met the conflict (it ends its term and
    // reloads).
    let mut conflicts = 0;
    while let Ok(event) = events.try_recv() {
        if let SlotEvent::Conflict(what) = event {
            assert!(what.contains("fencing counter"), "{what}");
            conflicts += 1;
        }
    }
    assert_eq!(conflicts, 1);
}

#[tokio::test]
async fn a_restart_reports_and_repairs_a_disagreeing_mirror() {
    let store = MemoryStore::with_nodes(["n1", "n2"]);
    let mut forged = BTreeMap::new();
    forged.insert(SLOT_ANNOTATION.to_owned(), "{not even json".to_owned());
    let mut state = store.snapshot();
    state.nodes.insert("n2".into(), forged);
    let (svc, mut events) = service(MemoryStore::from_state(state), clock())
        .await
        .unwrap();
    let Ok(SlotEvent::Mismatch(mismatch)) = events.try_recv() else {
        panic!("no mismatch reported");
    };
    assert_eq!(mismatch.node, "n2");
    assert_eq!(svc.view("n2").await.unwrap().state, NodeState::Idle);
    assert!(svc.store().snapshot().nodes["n2"].is_empty(), "repaired");
    assert!(events.try_recv().is_err(), "only n2 disagreed");
}

#[tokio::test]
async fn watchers_see_changes_and_end_when_the_node_is_deleted() {
    let (svc, mut events) = service(MemoryStore::with_nodes(["n1"]), clock())
        .await
        .unwrap();
    let mut rx = svc.watch("n1").unwrap();
    assert_eq!(rx.borrow_and_update().state, NodeState::Idle);
    let deadline = Duration::from_secs(5);

    svc.request("n1", Operation::Reboot, Origin::Agent)
        .await
        .unwrap();
    tokio::time::timeout(deadline, rx.changed())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(rx.borrow_and_update().state, NodeState::Queued);

    let waiting = rota_core::slots::Waiting {
        position: std::num::NonZeroU32::new(2),
        reasons: vec!["maxUnavailable 1/1 reached (unavailable: n0)".into()],
    };
    svc.set_waiting([("n1".to_owned(), waiting)]).await;
    tokio::time::timeout(deadline, rx.changed())
        .await
        .unwrap()
        .unwrap();
    let view = rx.borrow_and_update().clone();
    assert_eq!(view.queue_position.map(|p| p.get()), Some(2));
    assert_eq!(view.waiting_reasons.len(), 1);

    let token = svc.admit("n1", false).await.unwrap();
    tokio::time::timeout(deadline, rx.changed())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(rx.borrow_and_update().token, Some(token));

    let t = svc.node_deleted("n1").await.unwrap();
    assert_eq!(
        (t.reason, t.frees_capacity()),
        (TransitionReason::NodeDeleted, true)
    );
    let closed = tokio::time::timeout(deadline, rx.changed()).await.unwrap();
    assert!(closed.is_err(), "the channel closes with the node");
    assert!(matches!(svc.watch("n1"), Err(Error::UnknownNode(_))));
    assert_eq!(
        transitions(&mut events).last(),
        Some(&TransitionReason::NodeDeleted)
    );
}

#[tokio::test]
async fn unknown_nodes_and_facts() {
    let (svc, mut events) = service(MemoryStore::with_nodes(["n1"]), clock())
        .await
        .unwrap();
    assert!(matches!(
        svc.request("ghost", Operation::Reboot, Origin::Agent).await,
        Err(Error::UnknownNode(n)) if n == "ghost"
    ));
    assert!(matches!(
        svc.report_facts("ghost", facts("b")),
        Err(Error::UnknownNode(_))
    ));

    svc.report_facts("n1", facts("b1")).unwrap();
    svc.report_facts("n1", facts("b1")).unwrap();
    svc.report_facts("n1", facts("b2")).unwrap();
    let mut changed = 0;
    while let Ok(event) = events.try_recv() {
        assert_eq!(event, SlotEvent::FactsChanged("n1".into()));
        changed += 1;
    }
    assert_eq!(changed, 2, "identical facts are not a change");
    assert_eq!(svc.facts("n1").unwrap().boot_id, "b2");

    // A node added later by the Node watch is usable at once.
    svc.node_added("n9").await;
    svc.store().add_node("n9");
    svc.request("n9", Operation::KubeletRestart, Origin::Manual)
        .await
        .unwrap();
    assert_eq!(svc.read(|l| l.queue().count()).await, 1);
}

#[tokio::test]
async fn completion_verification_and_lease_expiry() {
    let clock = clock();
    let (svc, mut events) = service(MemoryStore::with_nodes(["n1"]), clock.clone())
        .await
        .unwrap();
    svc.request("n1", Operation::Reboot, Origin::Agent)
        .await
        .unwrap();
    let token = svc.admit("n1", true).await.unwrap();
    svc.drained("n1", token).await.unwrap();
    svc.progress("n1", token, "rebooting".into(), String::new())
        .await
        .unwrap();

    // The node is away longer than the lease: visible, but the slot is still held.
    clock.advance(SignedDuration::from_secs(600));
    let now = clock.now();
    assert_eq!(svc.read(|l| l.expired_leases(now).count()).await, 1);
    assert_eq!(svc.read(|l| l.slots().count()).await, 1);

    let completion = Completion {
        success: true,
        message: "rebooted into 6.1.0-20".into(),
        boot_id: Some("boot-b".into()),
        rebooted: true,
        changed: vec![PackagePin {
            name: "linux-image-amd64".into(),
            version: "6.1.0-20".into(),
        }],
    };
    let view = svc.complete("n1", token, completion.clone()).await.unwrap();
    assert_eq!(view.state, NodeState::Verifying);
    // Retrying the same report (a lost answer) is harmless.
    assert_eq!(
        svc.complete("n1", token, completion).await.unwrap().state,
        NodeState::Verifying
    );
    let view = svc.verified("n1", token).await.unwrap();
    assert_eq!(view.state, NodeState::Done);
    let err = svc
        .release("n1", Release::Holder(token), "late")
        .await
        .unwrap_err();
    assert!(
        matches!(err, Error::Ledger(LedgerError::StaleToken { .. })),
        "{err}"
    );
    assert_eq!(
        transitions(&mut events),
        [
            TransitionReason::Requested,
            TransitionReason::Admitted,
            TransitionReason::Drained,
            TransitionReason::Completed,
            TransitionReason::Verified
        ]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_admissions_never_share_a_token() {
    let nodes: Vec<String> = (0..64).map(|i| format!("n{i}")).collect();
    let (svc, _) = service(MemoryStore::with_nodes(nodes.clone()), clock())
        .await
        .unwrap();
    let svc = Arc::new(svc);
    let tasks: Vec<_> = nodes
        .iter()
        .cloned()
        .map(|node| {
            let svc = svc.clone();
            tokio::spawn(async move {
                svc.request(&node, Operation::Reboot, Origin::Agent).await?;
                svc.admit(&node, true).await
            })
        })
        .collect();
    let mut tokens = Vec::new();
    for task in tasks {
        tokens.push(task.await.unwrap().unwrap().0);
    }
    tokens.sort_unstable();
    assert_eq!(tokens, (1..=64).collect::<Vec<u64>>());
    assert_eq!(svc.store().snapshot().last_token, 64);
    assert_eq!(svc.read(|l| l.slots().count()).await, 64);
}

#[tokio::test]
async fn admission_takes_the_kubelets_boot_id_only_when_the_agents_is_unknown() {
    let clock = clock();
    let (svc, _events) = service(MemoryStore::with_nodes(["n1", "n2"]), clock)
        .await
        .unwrap();
    // n1's agent reported; n2's facts have not arrived (it started before the coordinator led).
    svc.report_facts("n1", facts("agent-boot")).unwrap();
    for node in ["n1", "n2"] {
        svc.request(node, Operation::Reboot, Origin::Agent)
            .await
            .unwrap();
        svc.admit_with_boot_id(node, true, Some("kubelet-boot".into()))
            .await
            .unwrap();
    }
    let stored = svc.store().snapshot();
    assert!(stored.nodes["n1"][SLOT_ANNOTATION].contains("\"bootIdBefore\":\"agent-boot\""));
    assert!(stored.nodes["n2"][SLOT_ANNOTATION].contains("\"bootIdBefore\":\"kubelet-boot\""));
}
