//! The persisted form of the ledger: annotation JSON, merge patches, the counter, and refusals
//! of state that cannot be trusted.

use std::collections::BTreeMap;

use jiff::{SignedDuration, Timestamp};
use rota_core::model::{Operation, Origin};
use rota_core::slots::persist::NodeAnnotations;
use rota_core::slots::persist::{
    LAST_ANNOTATION, REQUEST_ANNOTATION, SLOT_ANNOTATION, decode_counter, decode_entry,
    encode_counter, encode_entry,
};
use rota_core::slots::{Ledger, PersistError, Release, StoredState, restore};
use serde_json::{Value, json};

const TTL: SignedDuration = SignedDuration::from_secs(60);

fn at(secs: i64) -> Timestamp {
    Timestamp::constant(1_700_000_000 + secs, 0)
}

#[test]
fn slot_annotation_carries_what_a_restart_needs() {
    let mut l = Ledger::new(TTL);
    l.request("n1", Operation::Reboot, Origin::Manual, at(0))
        .unwrap();
    let (token, _) = l.admit("n1", at(5), Some("boot-a".into()), true).unwrap();
    l.drained("n1", token, at(9)).unwrap();
    let annotations = encode_entry("n1", l.entry("n1")).unwrap();
    assert_eq!(annotations.request, None);
    assert_eq!(annotations.last, None);
    let slot = serde_json::from_str::<Value>(annotations.slot.as_deref().unwrap()).unwrap();
    assert_eq!(slot["token"], json!(1));
    assert_eq!(slot["phase"], json!("granted"));
    assert_eq!(slot["operation"], json!({"kind": "reboot"}));
    assert_eq!(slot["origin"], json!("manual"));
    assert_eq!(slot["requestedAt"], json!("2023-11-14T22:13:20Z"));
    assert_eq!(slot["since"], json!("2023-11-14T22:13:29Z"));
    assert_eq!(slot["leaseExpiresAt"], json!("2023-11-14T22:14:29Z"));
    assert_eq!(slot["bootIdBefore"], json!("boot-a"));
    assert_eq!(slot["cordonedByRota"], json!(true));

    // The merge patch sets the slot and removes the request and outcome keys.
    let patch = annotations.merge_patch();
    let written = &patch["metadata"]["annotations"];
    assert!(written[SLOT_ANNOTATION].is_string());
    assert_eq!(written[REQUEST_ANNOTATION], Value::Null);
    assert_eq!(written[LAST_ANNOTATION], Value::Null);
}

#[test]
fn request_and_outcome_annotations() {
    let mut l = Ledger::new(TTL);
    l.request(
        "n1",
        Operation::KubernetesUpgrade {
            version: "1.33.2".into(),
            kubeadm: rota_core::model::KubeadmStep::Node,
        },
        Origin::Agent,
        at(0),
    )
    .unwrap();
    let request = encode_entry("n1", l.entry("n1")).unwrap().request.unwrap();
    let request = serde_json::from_str::<Value>(&request).unwrap();
    assert_eq!(
        request["operation"],
        json!({"kind": "kubernetesUpgrade", "version": "1.33.2"})
    );
    assert_eq!(request["origin"], json!("agent"));
    assert!(request.get("notBefore").is_none());

    l.release("n1", Release::Withdraw, "agent restarted", at(3))
        .unwrap();
    let annotations = encode_entry("n1", l.entry("n1")).unwrap();
    assert_eq!(
        (annotations.request.is_none(), annotations.slot.is_none()),
        (true, true)
    );
    let last = serde_json::from_str::<Value>(annotations.last.as_deref().unwrap()).unwrap();
    assert_eq!(last["outcome"], json!("SlotRequestWithdrawn"));
    assert!(last.get("token").is_none());

    // A node with no entry writes nothing and removes every ledger key.
    let none = encode_entry("n2", None).unwrap();
    let mut annotations = BTreeMap::from([
        (SLOT_ANNOTATION.to_owned(), "{}".to_owned()),
        ("team".to_owned(), "infra".to_owned()),
    ]);
    none.apply_to(&mut annotations);
    assert_eq!(
        annotations,
        BTreeMap::from([("team".to_owned(), "infra".to_owned())])
    );
}

#[test]
fn decode_ignores_foreign_annotations_and_round_trips() {
    let mut l = Ledger::new(TTL);
    l.request("n1", Operation::KubeletRestart, Origin::Agent, at(0))
        .unwrap();
    let (t, _) = l.admit("n1", at(1), None, false).unwrap();
    l.requeue_after_drain_failure("n1", t, at(300), "PDB a/b", at(100))
        .unwrap();
    let mut annotations =
        BTreeMap::from([("node.alpha.kubernetes.io/ttl".to_owned(), "0".to_owned())]);
    encode_entry("n1", l.entry("n1"))
        .unwrap()
        .apply_to(&mut annotations);
    let decoded = decode_entry("n1", &annotations).unwrap().unwrap();
    assert_eq!(&decoded, l.entry("n1").unwrap());
    assert_eq!(
        decode_entry("n1", &BTreeMap::from([("a".to_owned(), "b".to_owned())])).unwrap(),
        None
    );
}

#[test]
fn untrustworthy_state_is_refused_with_the_node_and_key() {
    let garbage = BTreeMap::from([(SLOT_ANNOTATION.to_owned(), "{not json".to_owned())]);
    let err = decode_entry("n7", &garbage).unwrap_err();
    assert!(matches!(
        err,
        PersistError::Annotation {
            key: SLOT_ANNOTATION,
            ..
        }
    ));
    assert!(
        err.to_string()
            .contains("node n7: annotation rota.dev/slot is invalid"),
        "{err}"
    );

    let mut l = Ledger::new(TTL);
    l.request("n7", Operation::Reboot, Origin::Agent, at(0))
        .unwrap();
    let request = encode_entry("n7", l.entry("n7")).unwrap().request.unwrap();
    l.admit("n7", at(1), None, false).unwrap();
    let slot = encode_entry("n7", l.entry("n7")).unwrap().slot.unwrap();
    let both = BTreeMap::from([
        (REQUEST_ANNOTATION.to_owned(), request),
        (SLOT_ANNOTATION.to_owned(), slot),
    ]);
    assert!(matches!(
        decode_entry("n7", &both),
        Err(PersistError::Inconsistent { .. })
    ));

    let outcome = BTreeMap::from([(
        LAST_ANNOTATION.to_owned(),
        r#"{"operation":{"kind":"reboot"},"outcome":"Exploded","at":"2024-01-01T00:00:00Z"}"#
            .to_owned(),
    )]);
    assert!(matches!(
        decode_entry("n7", &outcome),
        Err(PersistError::UnknownOutcome { .. })
    ));

    // A whole store with one bad ledger object does not rebuild: the coordinator must not
    // guess.
    let stored = StoredState {
        last_token: 4,
        counter_version: None,
        nodes: BTreeMap::from([("n7".to_owned(), BTreeMap::new())]),
        ledger: BTreeMap::from([("n7".to_owned(), NodeAnnotations::from_annotations(&garbage))]),
        legacy: false,
    };
    assert!(restore(TTL, &stored).is_err());
    // The same garbage in the annotation mirror only is a mismatch: a Node patcher must not be
    // able to stop the coordinator.
    let stored = StoredState {
        nodes: BTreeMap::from([("n7".to_owned(), garbage)]),
        ledger: BTreeMap::new(),
        ..stored
    };
    let restored = restore(TTL, &stored).unwrap();
    assert_eq!(restored.mismatches.len(), 1);
    assert!(restored.ledger.entry("n7").is_none());
}

#[test]
fn counter_encoding() {
    assert_eq!(encode_counter(42), "42");
    assert_eq!(decode_counter(" 42\n").unwrap(), 42);
    assert_eq!(decode_counter(&encode_counter(u64::MAX)).unwrap(), u64::MAX);
    for bad in ["", "-1", "4x", "18446744073709551616"] {
        let err = decode_counter(bad).unwrap_err();
        assert!(matches!(err, PersistError::Counter { .. }), "{bad}: {err}");
    }
}
