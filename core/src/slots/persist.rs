//! The ledger's persisted form, and the rebuild a restarted coordinator does.
//!
//! State lives in the Kubernetes API, never only in memory:
//! - each node's entry as JSON annotations on its Node: [`REQUEST_ANNOTATION`] (a queued
//!   request), [`SLOT_ANNOTATION`] (a held slot: token, phase, operation, since, lease expiry,
//!   boot id before, cordoned-by-rota) and [`LAST_ANNOTATION`] (how the latest slot ended);
//! - the cluster-wide fencing counter as the [`COUNTER_KEY`] of the ConfigMap
//!   [`COUNTER_CONFIGMAP`], updated with optimistic concurrency (`metadata.resourceVersion`), so
//!   two coordinators can never issue the same token.
//!
//! Everything here is pure encode/decode; the writes happen behind [`super::LedgerStore`].

use std::collections::BTreeMap;

use jiff::{SignedDuration, Timestamp};
use serde::{Deserialize, Serialize};

use super::entry::{
    CompletionReport, Finished, HeldSlot, Holding, NodeEntry, ProgressNote, QueuedRequest, Waiting,
};
use super::ledger::Ledger;
use super::transition::TransitionReason;
use crate::model::{FencingToken, NodeName, Operation, Origin, Slot, SlotPhase, SlotRequest};

/// Everything the ledger persisted, as read back by [`super::LedgerStore::load`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct StoredState {
    /// The fencing counter: the last issued token (0 when the counter does not exist yet).
    pub last_token: u64,
    /// The counter object's `resourceVersion`; `None` when it does not exist yet.
    pub counter_version: Option<String>,
    /// Every Node with its annotations (the ledger reads only its own `rota.dev/` keys).
    pub nodes: BTreeMap<NodeName, BTreeMap<String, String>>,
}

/// Node annotation holding a queued request.
pub const REQUEST_ANNOTATION: &str = "rota.dev/request";
/// Node annotation holding a held slot.
pub const SLOT_ANNOTATION: &str = "rota.dev/slot";
/// Node annotation recording how the node's latest slot or request ended.
pub const LAST_ANNOTATION: &str = "rota.dev/last-maintenance";
/// Every annotation the ledger owns.
pub const LEDGER_ANNOTATIONS: [&str; 3] = [REQUEST_ANNOTATION, SLOT_ANNOTATION, LAST_ANNOTATION];
/// Name of the ConfigMap (in the coordinator's namespace) holding the fencing counter.
pub const COUNTER_CONFIGMAP: &str = "rota-fencing";
/// Data key of the fencing counter in [`COUNTER_CONFIGMAP`]: the last issued token, decimal.
pub const COUNTER_KEY: &str = "lastToken";

/// Persisted state that cannot be encoded or decoded.
#[derive(Debug, thiserror::Error)]
pub enum PersistError {
    /// An annotation does not hold valid JSON of the expected shape.
    #[error("node {node}: annotation {key} is invalid ({source}); fix or remove it")]
    Annotation {
        /// The node.
        node: NodeName,
        /// The annotation key.
        key: &'static str,
        /// Why.
        source: serde_json::Error,
    },
    /// A node carries both a request and a slot, which the coordinator never writes.
    #[error(
        "node {node} carries both {REQUEST_ANNOTATION} and {SLOT_ANNOTATION}; remove the one that is wrong"
    )]
    Inconsistent {
        /// The node.
        node: NodeName,
    },
    /// An outcome name this version does not know.
    #[error("node {node}: annotation {LAST_ANNOTATION} has unknown outcome {outcome:?}")]
    UnknownOutcome {
        /// The node.
        node: NodeName,
        /// The outcome found.
        outcome: String,
    },
    /// The fencing counter is not a decimal `u64`.
    #[error("fencing counter {COUNTER_CONFIGMAP}/{COUNTER_KEY} is {value:?}, not a number")]
    Counter {
        /// The value found.
        value: String,
    },
    /// Encoding to JSON failed.
    #[error("encoding {key} for node {node}: {source}")]
    Encode {
        /// The node.
        node: NodeName,
        /// The annotation key.
        key: &'static str,
        /// Why.
        source: serde_json::Error,
    },
}

/// `rota.dev/request`.
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct RequestRecord {
    operation: Operation,
    origin: Origin,
    requested_at: Timestamp,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    not_before: Option<Timestamp>,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    note: String,
}

/// `rota.dev/slot`.
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct SlotRecord {
    token: FencingToken,
    phase: SlotPhase,
    operation: Operation,
    origin: Origin,
    requested_at: Timestamp,
    admitted_at: Timestamp,
    since: Timestamp,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    granted_at: Option<Timestamp>,
    lease_expires_at: Timestamp,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    boot_id_before: Option<String>,
    cordoned_by_rota: bool,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    note: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    progress: Option<ProgressRecord>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    completion: Option<CompletionRecord>,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct ProgressRecord {
    step: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    message: String,
    at: Timestamp,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct CompletionRecord {
    success: bool,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    message: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    boot_id: Option<String>,
    rebooted: bool,
    #[serde(default)]
    changed_packages: u32,
    at: Timestamp,
}

/// `rota.dev/last-maintenance`.
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct LastRecord {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    token: Option<FencingToken>,
    operation: Operation,
    outcome: String,
    at: Timestamp,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    message: String,
}

/// The ledger's annotations for one node: `Some` sets the key, `None` removes it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NodeAnnotations {
    /// [`REQUEST_ANNOTATION`].
    pub request: Option<String>,
    /// [`SLOT_ANNOTATION`].
    pub slot: Option<String>,
    /// [`LAST_ANNOTATION`].
    pub last: Option<String>,
}

impl NodeAnnotations {
    /// `(key, value)` for every ledger annotation; `None` means "remove".
    pub fn entries(&self) -> [(&'static str, Option<&str>); 3] {
        [
            (REQUEST_ANNOTATION, self.request.as_deref()),
            (SLOT_ANNOTATION, self.slot.as_deref()),
            (LAST_ANNOTATION, self.last.as_deref()),
        ]
    }

    /// The body of a merge patch (JSON or strategic) on the Node that writes these annotations,
    /// with `null` for the ones to remove.
    pub fn merge_patch(&self) -> serde_json::Value {
        let annotations: serde_json::Map<String, serde_json::Value> = self
            .entries()
            .into_iter()
            .map(|(key, value)| {
                let value = value.map_or(serde_json::Value::Null, |v| v.to_owned().into());
                (key.to_owned(), value)
            })
            .collect();
        serde_json::json!({ "metadata": { "annotations": annotations } })
    }

    /// Applies them to a Node's annotation map the way the API server applies the merge patch.
    pub fn apply_to(&self, annotations: &mut BTreeMap<String, String>) {
        for (key, value) in self.entries() {
            match value {
                Some(value) => {
                    annotations.insert(key.to_owned(), value.to_owned());
                }
                None => {
                    annotations.remove(key);
                }
            }
        }
    }
}

/// Encodes a node's entry (`None`: no entry, every ledger annotation removed).
pub fn encode_entry(
    node: &str,
    entry: Option<&NodeEntry>,
) -> Result<NodeAnnotations, PersistError> {
    let Some(entry) = entry else {
        return Ok(NodeAnnotations::default());
    };
    let mut out = NodeAnnotations::default();
    match &entry.holding {
        Holding::Idle => {}
        Holding::Queued(queued) => {
            let record = RequestRecord {
                operation: queued.request.operation.clone(),
                origin: queued.request.origin,
                requested_at: queued.request.requested_at,
                not_before: queued.request.not_before,
                note: queued.note.clone(),
            };
            out.request = Some(to_json(node, REQUEST_ANNOTATION, &record)?);
        }
        Holding::Held(held) => {
            let slot = &held.slot;
            let record = SlotRecord {
                token: slot.token,
                phase: slot.phase,
                operation: slot.operation.clone(),
                origin: slot.origin,
                requested_at: held.requested_at,
                admitted_at: slot.admitted_at,
                since: slot.phase_since,
                granted_at: slot.granted_at,
                lease_expires_at: slot.lease_expires_at,
                boot_id_before: slot.boot_id_before.clone(),
                cordoned_by_rota: slot.cordoned_by_rota,
                note: held.note.clone(),
                progress: held.progress.as_ref().map(|p| ProgressRecord {
                    step: p.step.clone(),
                    message: p.message.clone(),
                    at: p.at,
                }),
                completion: held.completion.as_ref().map(|c| CompletionRecord {
                    success: c.success,
                    message: c.message.clone(),
                    boot_id: c.boot_id.clone(),
                    rebooted: c.rebooted,
                    changed_packages: c.changed_packages,
                    at: c.at,
                }),
            };
            out.slot = Some(to_json(node, SLOT_ANNOTATION, &record)?);
        }
    }
    if let Some(last) = &entry.last {
        let record = LastRecord {
            token: last.token,
            operation: last.operation.clone(),
            outcome: last.reason.as_str().to_owned(),
            at: last.at,
            message: last.message.clone(),
        };
        out.last = Some(to_json(node, LAST_ANNOTATION, &record)?);
    }
    Ok(out)
}

/// Decodes a node's entry from its annotations (other annotations are ignored). `None` when
/// the node carries no ledger annotation.
pub fn decode_entry(
    node: &str,
    annotations: &BTreeMap<String, String>,
) -> Result<Option<NodeEntry>, PersistError> {
    let request: Option<RequestRecord> = from_json(node, REQUEST_ANNOTATION, annotations)?;
    let slot: Option<SlotRecord> = from_json(node, SLOT_ANNOTATION, annotations)?;
    let last: Option<LastRecord> = from_json(node, LAST_ANNOTATION, annotations)?;
    let holding = match (request, slot) {
        (Some(_), Some(_)) => {
            return Err(PersistError::Inconsistent {
                node: node.to_owned(),
            });
        }
        (Some(r), None) => Holding::Queued(QueuedRequest {
            request: SlotRequest {
                node: node.to_owned(),
                operation: r.operation,
                origin: r.origin,
                requested_at: r.requested_at,
                not_before: r.not_before,
            },
            note: r.note,
        }),
        (None, Some(s)) => Holding::Held(HeldSlot {
            slot: Slot {
                node: node.to_owned(),
                operation: s.operation,
                origin: s.origin,
                token: s.token,
                phase: s.phase,
                admitted_at: s.admitted_at,
                phase_since: s.since,
                granted_at: s.granted_at,
                lease_expires_at: s.lease_expires_at,
                boot_id_before: s.boot_id_before,
                cordoned_by_rota: s.cordoned_by_rota,
            },
            requested_at: s.requested_at,
            note: s.note,
            progress: s.progress.map(|p| ProgressNote {
                step: p.step,
                message: p.message,
                at: p.at,
            }),
            completion: s.completion.map(|c| CompletionReport {
                success: c.success,
                message: c.message,
                boot_id: c.boot_id,
                rebooted: c.rebooted,
                changed_packages: c.changed_packages,
                at: c.at,
            }),
        }),
        (None, None) => Holding::Idle,
    };
    let last = match last {
        Some(l) => {
            let reason = TransitionReason::parse(&l.outcome).ok_or_else(|| {
                PersistError::UnknownOutcome {
                    node: node.to_owned(),
                    outcome: l.outcome.clone(),
                }
            })?;
            Some(Finished {
                token: l.token,
                operation: l.operation,
                reason,
                at: l.at,
                message: l.message,
            })
        }
        None => None,
    };
    if matches!(holding, Holding::Idle) && last.is_none() {
        return Ok(None);
    }
    Ok(Some(NodeEntry {
        holding,
        last,
        waiting: Waiting::default(),
    }))
}

/// Encodes the fencing counter's value.
pub fn encode_counter(last_token: u64) -> String {
    last_token.to_string()
}

/// Decodes the fencing counter's value (a missing ConfigMap or key means 0: nothing issued).
pub fn decode_counter(value: &str) -> Result<u64, PersistError> {
    value.trim().parse().map_err(|_| PersistError::Counter {
        value: value.to_owned(),
    })
}

impl Ledger {
    /// Rebuilds the ledger from everything a store holds (what a restarted coordinator does).
    ///
    /// Fails closed: an unreadable annotation is an error naming the node and key, because
    /// ignoring a slot that might be held could break `maxUnavailable`.
    pub fn from_stored(
        lease_ttl: SignedDuration,
        stored: &StoredState,
    ) -> Result<Ledger, PersistError> {
        let mut entries = Vec::new();
        for (node, annotations) in &stored.nodes {
            if let Some(entry) = decode_entry(node, annotations)? {
                entries.push((node.clone(), entry));
            }
        }
        Ok(Ledger::from_persisted(
            lease_ttl,
            stored.last_token,
            entries,
        ))
    }
}

fn to_json<T: Serialize>(node: &str, key: &'static str, value: &T) -> Result<String, PersistError> {
    serde_json::to_string(value).map_err(|source| PersistError::Encode {
        node: node.to_owned(),
        key,
        source,
    })
}

fn from_json<T: for<'de> Deserialize<'de>>(
    node: &str,
    key: &'static str,
    annotations: &BTreeMap<String, String>,
) -> Result<Option<T>, PersistError> {
    annotations
        .get(key)
        .map(|raw| {
            serde_json::from_str(raw).map_err(|source| PersistError::Annotation {
                node: node.to_owned(),
                key,
                source,
            })
        })
        .transpose()
}
