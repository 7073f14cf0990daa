//! The ledger objects are the truth; the node annotations only mirror them: names and data of
//! ledger objects, and what a restart adopts (and reports) when the two disagree, including the
//! one-time migration from a version that kept the ledger only in annotations.

use std::collections::BTreeMap;

use jiff::{SignedDuration, Timestamp};
use rota_core::model::{FencingToken, Operation, Origin};
use rota_core::slots::persist::{
    LEDGER_OBJECT_PREFIX, NodeAnnotations, PersistError, SLOT_ANNOTATION, encode_entry,
    ledger_object_name,
};
use rota_core::slots::{Disagreement, Ledger, Mismatch, NodeState, Release, StoredState, restore};

const TTL: SignedDuration = SignedDuration::from_secs(60);

fn at(secs: i64) -> Timestamp {
    Timestamp::constant(1_700_000_000 + secs, 0)
}

type Error = Box<dyn std::error::Error>;

/// `node` gets a granted slot with the next token in `ledger`; returns its records.
fn granted(ledger: &mut Ledger, node: &str, t: i64) -> Result<NodeAnnotations, Error> {
    ledger.request(node, Operation::Reboot, Origin::Agent, at(t))?;
    let (token, _) = ledger.admit(node, at(t + 1), None, true)?;
    ledger.drained(node, token, at(t + 2))?;
    Ok(encode_entry(node, ledger.entry(node))?)
}

fn mirror(records: &NodeAnnotations) -> BTreeMap<String, String> {
    let mut annotations = BTreeMap::from([("other.io/keep".to_owned(), "x".to_owned())]);
    records.apply_to(&mut annotations);
    annotations
}

fn dns_subdomain(name: &str) -> bool {
    name.len() <= 253
        && name.split('.').all(|label| {
            !label.is_empty()
                && label
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
                && !label.starts_with('-')
                && !label.ends_with('-')
        })
}

#[test]
fn ledger_object_names_are_valid_and_distinct_for_every_node_name() {
    assert_eq!(ledger_object_name("worker-3"), "rota-slot-worker-3");
    let fits = "a".repeat(253 - LEDGER_OBJECT_PREFIX.len());
    assert_eq!(ledger_object_name(&fits), format!("rota-slot-{fits}"));
    // Longest node names, sharing a long prefix, and cuts that would end a label badly.
    let long_a = format!("{}.a", "n".repeat(250));
    let long_b = format!("{}.b", "n".repeat(250));
    let dashed = format!("{}-{}", "d".repeat(225), "e".repeat(27));
    let dotted = format!("{}.{}", "d".repeat(225), "e".repeat(27));
    let names: Vec<String> = [&long_a, &long_b, &dashed, &dotted]
        .iter()
        .map(|n| ledger_object_name(n))
        .collect();
    for (node, name) in [&long_a, &long_b, &dashed, &dotted].iter().zip(&names) {
        assert!(dns_subdomain(name), "{node} -> {name}");
        assert!(name.starts_with(LEDGER_OBJECT_PREFIX));
        assert_eq!(ledger_object_name(node), *name, "stable");
    }
    assert_ne!(names[0], names[1]);
    assert_ne!(names[2], names[3]);
}

#[test]
fn ledger_data_round_trips_and_refuses_what_the_coordinator_never_writes() {
    let mut ledger = Ledger::new(TTL);
    let records = granted(&mut ledger, "n1", 0).unwrap();
    let data = records.to_ledger_data("n1");
    assert_eq!(data["node"], "n1");
    assert!(data.contains_key("slot"));
    assert!(!data.contains_key("request"));
    let (node, back) = NodeAnnotations::from_ledger_data("rota-slot-n1", &data).unwrap();
    assert_eq!((node.as_str(), &back), ("n1", &records));

    // An object whose name is not its node's, without a node, or with foreign keys.
    let err = NodeAnnotations::from_ledger_data("rota-slot-n2", &data).unwrap_err();
    assert!(matches!(err, PersistError::LedgerObject { .. }), "{err}");
    let mut nameless = data.clone();
    nameless.remove("node");
    assert!(NodeAnnotations::from_ledger_data("rota-slot-n1", &nameless).is_err());
    let mut foreign = data.clone();
    foreign.insert("lastToken".into(), "9".into());
    assert!(NodeAnnotations::from_ledger_data("rota-slot-n1", &foreign).is_err());
    assert!(NodeAnnotations::default().is_empty());
    assert!(!records.is_empty());
}

/// A forged granted slot on an idle node, with a token far above the counter.
fn forged(token: u64) -> String {
    format!(
        r#"{{"token":{token},"phase":"granted","operation":{{"kind":"reboot"}},"origin":"agent","requestedAt":"2024-01-01T00:00:00Z","admittedAt":"2024-01-01T00:00:00Z","since":"2024-01-01T00:00:00Z","grantedAt":"2024-01-01T00:00:00Z","leaseExpiresAt":"2099-01-01T00:00:00Z","cordonedByRota":false}}"#
    )
}

#[test]
fn a_forged_slot_is_not_adopted_and_does_not_raise_the_counter() {
    let stored = StoredState {
        last_token: 5,
        counter_version: Some("1".into()),
        nodes: BTreeMap::from([(
            "idle".to_owned(),
            BTreeMap::from([(SLOT_ANNOTATION.to_owned(), forged(777))]),
        )]),
        ledger: BTreeMap::new(),
        legacy: false,
    };
    let restored = restore(TTL, &stored).unwrap();
    assert!(restored.ledger.entry("idle").is_none());
    assert_eq!(restored.ledger.view("idle").state, NodeState::Idle);
    assert_eq!(restored.ledger.last_issued_token(), 5);
    assert_eq!(restored.mismatches.len(), 1);
    let mismatch = &restored.mismatches[0];
    assert_eq!(mismatch.node, "idle");
    assert_eq!(mismatch.why, Disagreement::Differs);
    assert_eq!(mismatch.expected, NodeAnnotations::default());
    assert_eq!(mismatch.found.slot, Some(forged(777)));
    assert!(
        mismatch.describe().contains("777"),
        "{}",
        mismatch.describe()
    );
    // Whatever was forged, the description stays one bounded, printable line.
    let huge = Mismatch {
        found: NodeAnnotations {
            slot: Some(format!("\u{1b}[2J\n{}", "x".repeat(200_000))),
            ..NodeAnnotations::default()
        },
        ..mismatch.clone()
    };
    let line = huge.describe();
    assert!(line.len() < 1024, "{}", line.len());
    assert!(!line.contains('\n') && !line.contains('\u{1b}'), "{line}");
    assert!(restored.adopted.is_empty() && !restored.migrating);
}

#[test]
fn a_replayed_genuine_annotation_is_not_adopted() {
    let mut ledger = Ledger::new(TTL);
    let old = granted(&mut ledger, "n1", 0).unwrap();
    let token = ledger.view("n1").token.unwrap();
    ledger
        .release("n1", Release::Holder(token), "done", at(10))
        .unwrap();
    let now = encode_entry("n1", ledger.entry("n1")).unwrap();
    assert_eq!(now.slot, None);
    let stored = StoredState {
        last_token: ledger.last_issued_token(),
        counter_version: Some("3".into()),
        // The node's annotations carry its earlier, genuine granted slot again.
        nodes: BTreeMap::from([("n1".to_owned(), mirror(&old))]),
        ledger: BTreeMap::from([("n1".to_owned(), now.clone())]),
        legacy: false,
    };
    let restored = restore(TTL, &stored).unwrap();
    assert_eq!(restored.ledger.view("n1").state, NodeState::Idle);
    assert_eq!(restored.ledger.entry("n1"), ledger.entry("n1"));
    assert_eq!(restored.mismatches.len(), 1);
    assert_eq!(restored.mismatches[0].expected, now);
}

#[test]
fn genuine_state_is_restored_and_orphans_are_found() {
    let mut ledger = Ledger::new(TTL);
    let held = granted(&mut ledger, "n1", 0).unwrap();
    let gone = granted(&mut ledger, "gone", 5).unwrap();
    let stored = StoredState {
        last_token: ledger.last_issued_token(),
        counter_version: Some("2".into()),
        nodes: BTreeMap::from([
            ("n1".to_owned(), mirror(&held)),
            ("n2".to_owned(), mirror(&NodeAnnotations::default())),
        ]),
        ledger: BTreeMap::from([("n1".to_owned(), held), ("gone".to_owned(), gone)]),
        legacy: false,
    };
    let restored = restore(TTL, &stored).unwrap();
    assert!(restored.mismatches.is_empty(), "{:?}", restored.mismatches);
    assert_eq!(restored.ledger.entry("n1"), ledger.entry("n1"));
    assert_eq!(restored.ledger.view("n1").state, NodeState::Granted);
    assert_eq!(restored.discard, vec!["gone".to_owned()]);
    assert!(restored.ledger.entry("gone").is_none());
    assert_eq!(restored.ledger.last_issued_token(), 2);
}

#[test]
fn migration_adopts_only_what_the_counter_issued_once() {
    let mut ledger = Ledger::new(TTL);
    let a = granted(&mut ledger, "a", 0).unwrap(); // token 1
    let b = granted(&mut ledger, "b", 3).unwrap(); // token 2
    ledger
        .request("q", Operation::Reboot, Origin::Manual, at(9))
        .unwrap();
    let queued = encode_entry("q", ledger.entry("q")).unwrap();
    let copy_of_b = mirror(&b); // another node claims b's token
    let stored = StoredState {
        last_token: 2,
        counter_version: Some("7".into()),
        nodes: BTreeMap::from([
            ("a".to_owned(), mirror(&a)),
            ("b".to_owned(), mirror(&b)),
            ("c".to_owned(), copy_of_b),
            ("q".to_owned(), mirror(&queued)),
            (
                "forged".to_owned(),
                BTreeMap::from([(SLOT_ANNOTATION.to_owned(), forged(777))]),
            ),
            (
                "garbage".to_owned(),
                BTreeMap::from([(SLOT_ANNOTATION.to_owned(), "{".to_owned())]),
            ),
            ("idle".to_owned(), BTreeMap::new()),
        ]),
        ledger: BTreeMap::new(),
        legacy: true,
    };
    let restored = restore(TTL, &stored).unwrap();
    assert!(restored.migrating);
    assert_eq!(restored.adopted, vec!["a".to_owned(), "q".to_owned()]);
    assert_eq!(restored.ledger.entry("a"), ledger.entry("a"));
    assert_eq!(restored.ledger.view("q").state, NodeState::Queued);
    for node in ["b", "c", "forged", "garbage", "idle"] {
        assert!(restored.ledger.entry(node).is_none(), "{node}");
    }
    assert_eq!(restored.ledger.last_issued_token(), 2, "never raised");
    let why: BTreeMap<&str, &Disagreement> = restored
        .mismatches
        .iter()
        .map(|m| (m.node.as_str(), &m.why))
        .collect();
    assert_eq!(why["b"], &Disagreement::Reused { token: 2 });
    assert_eq!(why["c"], &Disagreement::Reused { token: 2 });
    assert_eq!(
        why["forged"],
        &Disagreement::NotIssued {
            token: 777,
            counter: 2
        }
    );
    assert!(matches!(why["garbage"], Disagreement::Unreadable(_)));
    assert_eq!(why.len(), 4);
    assert!(
        restored
            .mismatches
            .iter()
            .all(|m| m.expected == NodeAnnotations::default())
    );
}

#[test]
fn a_migration_trusts_annotations_over_ledger_objects_left_from_before_a_downgrade() {
    // Ledger objects written before a downgrade to the annotation ledger: a held a slot, b had
    // a request queued.
    let mut before = Ledger::new(TTL);
    let stale_a = granted(&mut before, "a", 0).unwrap();
    before
        .request("b", Operation::Reboot, Origin::Agent, at(1))
        .unwrap();
    let stale_b = encode_entry("b", before.entry("b")).unwrap();
    // The downgraded version went on: a's slot ended, b's request went (its annotations were
    // cleared by hand since), c got token 2.
    let mut after = before.clone();
    after
        .release("a", Release::Holder(FencingToken(1)), "done", at(5))
        .unwrap();
    after.release("b", Release::Withdraw, "", at(5)).unwrap();
    let now_a = encode_entry("a", after.entry("a")).unwrap();
    let now_c = granted(&mut after, "c", 6).unwrap();
    let stored = StoredState {
        last_token: 2,
        counter_version: Some("9".into()),
        nodes: BTreeMap::from([
            ("a".to_owned(), mirror(&now_a)),
            ("b".to_owned(), mirror(&NodeAnnotations::default())),
            ("c".to_owned(), mirror(&now_c)),
        ]),
        ledger: BTreeMap::from([("a".to_owned(), stale_a), ("b".to_owned(), stale_b)]),
        legacy: true,
    };
    let restored = restore(TTL, &stored).unwrap();
    assert!(restored.migrating);
    assert!(restored.mismatches.is_empty(), "{:?}", restored.mismatches);
    assert_eq!(restored.adopted, vec!["a".to_owned(), "c".to_owned()]);
    assert_eq!(restored.discard, vec!["b".to_owned()]);
    for node in ["a", "c"] {
        assert_eq!(restored.ledger.entry(node), after.entry(node), "{node}");
    }
    assert_eq!(restored.ledger.entry("b"), None);
}
