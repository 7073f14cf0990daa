//! The rebuild a starting (or failed-over) coordinator does: the ledger from the authoritative
//! ledger objects, and every Node whose annotation mirror disagrees with them.
//!
//! The mirror is never adopted. Anyone who may patch a Node (every kubelet may patch its own)
//! can write `rota.dev/slot`: a forged slot, or the replay of one the node really held earlier,
//! would otherwise hold capacity without cordon, drain or budget checks, and could drive the
//! fencing counter up. A disagreement is reported ([`Mismatch`]) and the mirror is rewritten
//! from the ledger object (or removed), so what humans read is the truth again.
//!
//! # Migration
//!
//! A version that kept the ledger only in annotations left the fencing counter without the
//! ledger marker ([`StoredState::legacy`]). Only that load adopts annotations, and only those
//! that could have been the coordinator's own: every token they name at most the counter (which
//! only the coordinator writes), no token named by two nodes, every record readable. Anything
//! else is a [`Mismatch`] and is removed. The coordinator then writes a ledger object for every
//! adopted entry, deletes every other ledger object, and marks the counter, so no later load
//! adopts an annotation again. Ledger objects found in a migration are not trusted over the
//! annotations: they are older than the counter's last write (left before a downgrade to the
//! annotation ledger, which then went on without them), or written by a migration interrupted
//! before it marked the counter, and then equal to the annotations it adopted. A cluster that
//! never issued a token (no counter) has nothing to migrate: its annotations cannot be the
//! coordinator's slots.
//!
//! What this cannot tell apart: a slot forged before the upgrade with a token the counter had
//! issued to nobody else on another node. The upgrade's Events and the
//! `rota_ledger_mismatches_total` metric show the rest; `rotactl status` before upgrading shows
//! every slot the migration will adopt.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use jiff::SignedDuration;

use super::entry::NodeEntry;
use super::ledger::Ledger;
use super::persist::{NodeAnnotations, PersistError, StoredState, decode_records};
use crate::model::NodeName;
use crate::text::printable_within;

/// Why a node's mirror was not adopted.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Disagreement {
    /// The annotations differ from the node's ledger object (or the node has none): forged,
    /// replayed from an earlier slot, or left by a write interrupted between the two.
    Differs,
    /// Migration: the annotations cannot be decoded.
    Unreadable(String),
    /// Migration: the annotations name a token the fencing counter never issued.
    NotIssued {
        /// The highest token named.
        token: u64,
        /// The counter.
        counter: u64,
    },
    /// Migration: another node's annotations name the same token (tokens are never reused).
    Reused {
        /// The token.
        token: u64,
    },
}

impl Disagreement {
    /// A short fixed name (a metric label).
    pub fn as_str(&self) -> &'static str {
        match self {
            Disagreement::Differs => "differs",
            Disagreement::Unreadable(_) => "unreadable",
            Disagreement::NotIssued { .. } => "not_issued",
            Disagreement::Reused { .. } => "reused",
        }
    }
}

impl fmt::Display for Disagreement {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Disagreement::Differs => f.write_str(
                "the node's rota.dev/ annotations differ from its ledger object (forged, replayed, or a write interrupted)",
            ),
            Disagreement::Unreadable(why) => {
                write!(f, "migration: the annotations are unreadable ({why})")
            }
            Disagreement::NotIssued { token, counter } => write!(
                f,
                "migration: token {token} was never issued (the fencing counter is at {counter})"
            ),
            Disagreement::Reused { token } => {
                write!(f, "migration: token {token} is named by another node too")
            }
        }
    }
}

/// A node whose annotations were not adopted.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Mismatch {
    /// The node.
    pub node: NodeName,
    /// Why.
    pub why: Disagreement,
    /// The ledger's annotations the node carried.
    pub found: NodeAnnotations,
    /// What they must be (the authoritative records; all `None`: remove them).
    pub expected: NodeAnnotations,
}

/// The most of one record a [`Mismatch::describe`] quotes (annotations can be 256 KiB).
const QUOTE: usize = 300;

impl Mismatch {
    /// A one-line description for logs and Events: printable, and bounded however large the
    /// annotations found were.
    pub fn describe(&self) -> String {
        let slot = |a: &NodeAnnotations| {
            let record = a.slot.as_deref().or(a.request.as_deref()).unwrap_or("none");
            printable_within(record, QUOTE)
        };
        format!(
            "{}; not adopted, annotations rewritten from the ledger (found {}, ledger holds {})",
            printable_within(&self.why.to_string(), QUOTE),
            slot(&self.found),
            slot(&self.expected)
        )
    }
}

/// What a load rebuilt, and what the coordinator must write before it acts.
#[derive(Debug)]
pub struct Restored {
    /// The ledger.
    pub ledger: Ledger,
    /// Nodes whose mirror must be repaired (rewritten to `expected`), to be reported.
    pub mismatches: Vec<Mismatch>,
    /// Migration: nodes whose adopted entry needs its ledger object, and the counter its
    /// marker. Empty and `false` outside a migration.
    pub adopted: Vec<NodeName>,
    /// Whether this load migrates (the counter must be written with its marker).
    pub migrating: bool,
    /// Ledger objects to delete: of nodes that no longer exist (deleted while no coordinator
    /// led), so that a new Node of that name starts clean; in a migration, every one whose node
    /// adopted nothing.
    pub discard: Vec<NodeName>,
}

/// Rebuilds the ledger from `stored` (what a starting coordinator does).
///
/// Fails closed on an unreadable ledger object: only the coordinator writes them, and ignoring
/// a slot that might be held could break `maxUnavailable`. An unreadable *annotation* is only a
/// [`Mismatch`]: a Node patcher must not be able to stop the coordinator.
pub fn restore(lease_ttl: SignedDuration, stored: &StoredState) -> Result<Restored, PersistError> {
    let mut entries = Vec::new();
    let mut mismatches = Vec::new();
    let mut candidates = Vec::new();
    for (node, annotations) in &stored.nodes {
        let found = NodeAnnotations::from_annotations(annotations);
        if stored.legacy {
            candidates.push((node, found));
            continue;
        }
        // No ledger object: no entry.
        let expected = stored.ledger.get(node).cloned().unwrap_or_default();
        if let Some(entry) = decode_records(node, &expected)? {
            entries.push((node.clone(), entry));
        }
        if found != expected {
            mismatches.push(Mismatch {
                node: node.clone(),
                why: Disagreement::Differs,
                found,
                expected,
            });
        }
    }
    let adopted = migrate(stored.last_token, candidates, &mut entries, &mut mismatches);
    let discard = stored
        .ledger
        .keys()
        .filter(|node| {
            !stored.nodes.contains_key(*node) || (stored.legacy && !adopted.contains(*node))
        })
        .cloned()
        .collect();
    Ok(Restored {
        ledger: Ledger::from_persisted(lease_ttl, stored.last_token, entries),
        mismatches,
        adopted,
        migrating: stored.legacy,
        discard,
    })
}

/// Every token an entry names (its slot's and its last outcome's).
fn tokens(entry: &NodeEntry) -> impl Iterator<Item = u64> {
    [
        entry.token(),
        entry.last.as_ref().and_then(|last| last.token),
    ]
    .into_iter()
    .flatten()
    .map(|token| token.0)
}

/// Adopts the annotations a previous version could have written (see the module's docs):
/// `candidates` are every node's annotations in a migration (none otherwise). Returns the
/// adopted nodes.
fn migrate(
    counter: u64,
    candidates: Vec<(&NodeName, NodeAnnotations)>,
    entries: &mut Vec<(NodeName, NodeEntry)>,
    mismatches: &mut Vec<Mismatch>,
) -> Vec<NodeName> {
    let mut named: BTreeMap<u64, BTreeSet<NodeName>> = BTreeMap::new();
    for (node, entry) in entries.iter() {
        for token in tokens(entry) {
            named.entry(token).or_default().insert(node.clone());
        }
    }
    let decoded: Vec<_> = candidates
        .into_iter()
        .map(|(node, found)| {
            let entry = decode_records(node, &found);
            if let Ok(Some(entry)) = &entry {
                for token in tokens(entry) {
                    named.entry(token).or_default().insert(node.clone());
                }
            }
            (node, found, entry)
        })
        .collect();
    let mut adopted = Vec::new();
    for (node, found, entry) in decoded {
        let why = match entry {
            Ok(None) => continue,
            Err(error) => Disagreement::Unreadable(error.to_string()),
            Ok(Some(entry)) => {
                let highest = tokens(&entry).max().unwrap_or(0);
                let reused = tokens(&entry).find(|t| named.get(t).is_some_and(|n| n.len() > 1));
                match reused {
                    _ if highest > counter => Disagreement::NotIssued {
                        token: highest,
                        counter,
                    },
                    Some(token) => Disagreement::Reused { token },
                    None => {
                        entries.push((node.clone(), entry));
                        adopted.push(node.clone());
                        continue;
                    }
                }
            }
        };
        mismatches.push(Mismatch {
            node: node.clone(),
            why,
            found,
            expected: NodeAnnotations::default(),
        });
    }
    adopted
}
