//! Property tests of the slot ledger: any sequence of calls keeps the fencing invariants, and
//! the persisted form rebuilds exactly the same ledger.

use std::collections::{BTreeMap, HashSet};

use jiff::{SignedDuration, Timestamp};
use proptest::prelude::*;
use rota_core::model::{FencingToken, Operation, Origin};
use rota_core::slots::CompletionReport;
use rota_core::slots::persist::encode_entry;
use rota_core::slots::{
    Ledger, LedgerError, PersistError, Release, StoredState, Transition, TransitionReason, restore,
};

const NODES: [&str; 3] = ["a", "b", "c"];

#[derive(Clone, Debug)]
enum Tok {
    /// The node's current slot token, if any.
    Current,
    /// One of the tokens issued so far (picked by index).
    Issued(usize),
    /// Anything.
    Raw(u64),
}

#[derive(Clone, Debug)]
enum Op {
    Request {
        node: usize,
        op: usize,
        manual: bool,
    },
    Admit {
        node: usize,
        cordon: bool,
    },
    Drained {
        node: usize,
        tok: Tok,
    },
    Renew {
        node: usize,
        tok: Tok,
    },
    Progress {
        node: usize,
        tok: Tok,
    },
    Complete {
        node: usize,
        tok: Tok,
        success: bool,
    },
    Verified {
        node: usize,
        tok: Tok,
    },
    Fail {
        node: usize,
        tok: Tok,
    },
    Release {
        node: usize,
        how: u8,
        tok: Tok,
    },
    Requeue {
        node: usize,
        tok: Tok,
        backoff: u16,
    },
    Deleted {
        node: usize,
    },
    Wait {
        secs: u16,
    },
}

fn tok() -> impl Strategy<Value = Tok> {
    prop_oneof![
        4 => Just(Tok::Current),
        2 => (0usize..16).prop_map(Tok::Issued),
        1 => (0u64..20).prop_map(Tok::Raw),
    ]
}

fn op() -> impl Strategy<Value = Op> {
    let node = 0usize..NODES.len();
    prop_oneof![
        3 => (node.clone(), 0usize..3, any::<bool>()).prop_map(|(node, op, manual)| Op::Request { node, op, manual }),
        3 => (node.clone(), any::<bool>()).prop_map(|(node, cordon)| Op::Admit { node, cordon }),
        3 => (node.clone(), tok()).prop_map(|(node, tok)| Op::Drained { node, tok }),
        1 => (node.clone(), tok()).prop_map(|(node, tok)| Op::Renew { node, tok }),
        1 => (node.clone(), tok()).prop_map(|(node, tok)| Op::Progress { node, tok }),
        3 => (node.clone(), tok(), any::<bool>()).prop_map(|(node, tok, success)| Op::Complete { node, tok, success }),
        2 => (node.clone(), tok()).prop_map(|(node, tok)| Op::Verified { node, tok }),
        1 => (node.clone(), tok()).prop_map(|(node, tok)| Op::Fail { node, tok }),
        2 => (node.clone(), 0u8..4, tok()).prop_map(|(node, how, tok)| Op::Release { node, how, tok }),
        1 => (node.clone(), tok(), 0u16..600).prop_map(|(node, tok, backoff)| Op::Requeue { node, tok, backoff }),
        1 => node.prop_map(|node| Op::Deleted { node }),
        2 => (0u16..120).prop_map(|secs| Op::Wait { secs }),
    ]
}

fn operation(i: usize) -> Operation {
    match i {
        0 => Operation::Reboot,
        1 => Operation::KubeletRestart,
        _ => Operation::KubernetesUpgrade {
            version: "1.33.2".into(),
            kubeadm: rota_core::model::KubeadmStep::Node,
        },
    }
}

fn current_token(ledger: &Ledger, node: &str) -> Option<FencingToken> {
    ledger.slots().find(|s| s.node == node).map(|s| s.token)
}

fn resolve(ledger: &Ledger, node: &str, tok: &Tok, issued: &[FencingToken]) -> FencingToken {
    match tok {
        Tok::Current => current_token(ledger, node).unwrap_or(FencingToken(0)),
        Tok::Issued(i) if !issued.is_empty() => issued[i % issued.len()],
        Tok::Issued(_) => FencingToken(1),
        Tok::Raw(t) => FencingToken(*t),
    }
}

/// Rebuilds the ledger from its persisted form only: ledger objects and their mirror, which
/// must agree.
fn round_trip(ledger: &Ledger, ttl: SignedDuration) -> Result<Ledger, PersistError> {
    let mut nodes = BTreeMap::new();
    let mut objects = BTreeMap::new();
    for node in NODES {
        let mut annotations = BTreeMap::new();
        annotations.insert("unrelated.io/keep".to_owned(), "x".to_owned());
        let records = encode_entry(node, ledger.entry(node))?;
        records.apply_to(&mut annotations);
        nodes.insert(node.to_owned(), annotations);
        if !records.is_empty() {
            objects.insert(node.to_owned(), records);
        }
    }
    let stored = StoredState {
        last_token: ledger.last_issued_token(),
        counter_version: Some("1".into()),
        nodes,
        ledger: objects,
        legacy: false,
    };
    let restored = restore(ttl, &stored)?;
    assert!(restored.mismatches.is_empty(), "{:?}", restored.mismatches);
    Ok(restored.ledger)
}

const FREEING: [TransitionReason; 6] = [
    TransitionReason::Verified,
    TransitionReason::Recovered,
    TransitionReason::Released,
    TransitionReason::ForceReleased,
    TransitionReason::DrainFailed,
    TransitionReason::NodeDeleted,
];

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn any_sequence_keeps_the_invariants(ops in proptest::collection::vec(op(), 1..80)) {
        let ttl = SignedDuration::from_secs(60);
        let mut ledger = Ledger::new(ttl);
        let mut now = Timestamp::constant(1_700_000_000, 0);
        let mut issued: Vec<FencingToken> = Vec::new();
        let mut retired: HashSet<FencingToken> = HashSet::new();

        for op in ops {
            let before = ledger.clone();
            let held_before = before.slots().count();
            let mut presented: Option<(&str, FencingToken)> = None;
            let mut admitted: Option<FencingToken> = None;
            let result: Result<Option<Transition>, LedgerError> = match &op {
                Op::Request { node, op, manual } => {
                    let origin = if *manual { Origin::Manual } else { Origin::Agent };
                    ledger.request(NODES[*node], operation(*op), origin, now)
                }
                Op::Admit { node, cordon } => ledger
                    .admit(NODES[*node], now, Some("boot".into()), *cordon)
                    .map(|(t, tr)| {
                        admitted = Some(t);
                        Some(tr)
                    }),
                Op::Drained { node, tok } => {
                    let t = resolve(&ledger, NODES[*node], tok, &issued);
                    presented = Some((NODES[*node], t));
                    ledger.drained(NODES[*node], t, now).map(Some)
                }
                Op::Renew { node, tok } => {
                    let t = resolve(&ledger, NODES[*node], tok, &issued);
                    presented = Some((NODES[*node], t));
                    ledger.renew(NODES[*node], t, now).map(|_| None)
                }
                Op::Progress { node, tok } => {
                    let t = resolve(&ledger, NODES[*node], tok, &issued);
                    presented = Some((NODES[*node], t));
                    ledger.progress(NODES[*node], t, "step".into(), String::new(), now).map(|()| None)
                }
                Op::Complete { node, tok, success } => {
                    let t = resolve(&ledger, NODES[*node], tok, &issued);
                    presented = Some((NODES[*node], t));
                    let report = CompletionReport {
                        success: *success,
                        message: "m".into(),
                        boot_id: Some("boot-2".into()),
                        rebooted: true,
                        changed_packages: 2,
                        changed: ["openssl", "libc6"]
                            .map(|name| rota_core::model::PackagePin {
                                name: name.into(),
                                version: "2.0".into(),
                            })
                            .into(),
                        at: now,
                    };
                    ledger.complete(NODES[*node], t, report)
                }
                Op::Verified { node, tok } => {
                    let t = resolve(&ledger, NODES[*node], tok, &issued);
                    presented = Some((NODES[*node], t));
                    ledger.verified(NODES[*node], t, now).map(Some)
                }
                Op::Fail { node, tok } => {
                    let t = resolve(&ledger, NODES[*node], tok, &issued);
                    presented = Some((NODES[*node], t));
                    ledger.fail(NODES[*node], t, "broken", now).map(Some)
                }
                Op::Release { node, how, tok } => {
                    let t = resolve(&ledger, NODES[*node], tok, &issued);
                    let by = match how {
                        0 => Release::Withdraw,
                        1 => {
                            presented = Some((NODES[*node], t));
                            Release::Holder(t)
                        }
                        2 => {
                            presented = Some((NODES[*node], t));
                            Release::Recovered(t)
                        }
                        _ => Release::Force,
                    };
                    ledger.release(NODES[*node], by, "why", now).map(Some)
                }
                Op::Requeue { node, tok, backoff } => {
                    let t = resolve(&ledger, NODES[*node], tok, &issued);
                    presented = Some((NODES[*node], t));
                    let not_before = now + SignedDuration::from_secs(i64::from(*backoff));
                    ledger.requeue_after_drain_failure(NODES[*node], t, not_before, "pdb", now).map(Some)
                }
                Op::Deleted { node } => Ok(ledger.node_deleted(NODES[*node], now)),
                Op::Wait { secs } => {
                    now += SignedDuration::from_secs(i64::from(*secs));
                    Ok(None)
                }
            };

            match &result {
                Err(_) => prop_assert_eq!(&ledger, &before, "a refused call changed the ledger: {:?}", op),
                Ok(Some(tr)) => {
                    prop_assert_eq!(tr.from, before.state(&tr.node));
                    prop_assert_eq!(tr.to, ledger.state(&tr.node));
                    if tr.frees_capacity() {
                        prop_assert!(FREEING.contains(&tr.reason), "{:?} freed capacity", tr.reason);
                    }
                }
                Ok(None) => {}
            }

            // Stale tokens are always refused.
            if let Some((node, t)) = presented {
                let current = current_token(&before, node);
                if current != Some(t) || retired.contains(&t) {
                    let stale = matches!(result, Err(LedgerError::StaleToken { .. }));
                    prop_assert!(stale, "token {} (current {:?}) was accepted by {:?}", t, current, op);
                }
            }

            // Tokens strictly increase, cluster-wide, and the counter never goes back.
            prop_assert!(ledger.last_issued_token() >= before.last_issued_token());
            if let Some(t) = admitted {
                prop_assert_eq!(t.0, before.last_issued_token() + 1);
                prop_assert!(issued.iter().all(|old| *old < t));
                issued.push(t);
            }

            // Never two holders of one token; every held token was issued.
            let held: Vec<FencingToken> = ledger.slots().map(|s| s.token).collect();
            let unique: HashSet<FencingToken> = held.iter().copied().collect();
            prop_assert_eq!(unique.len(), held.len());
            prop_assert!(held.iter().all(|t| t.0 <= ledger.last_issued_token() && !retired.contains(t)));

            // Capacity is only freed by a freeing transition (never by time passing).
            if ledger.slots().count() < held_before {
                let freed = matches!(&result, Ok(Some(tr)) if tr.frees_capacity());
                prop_assert!(freed, "capacity freed without a transition by {:?}", op);
            }

            for slot in before.slots() {
                if current_token(&ledger, &slot.node) != Some(slot.token) {
                    retired.insert(slot.token);
                }
            }

            // The persisted form rebuilds exactly this ledger.
            let rebuilt = round_trip(&ledger, ttl).map_err(|e| TestCaseError::fail(e.to_string()))?;
            prop_assert_eq!(&rebuilt, &ledger);
        }
    }
}
