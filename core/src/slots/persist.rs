//! The ledger's persisted form.
//!
//! State lives in the Kubernetes API, never only in memory:
//! - each node's entry as three JSON records: [`REQUEST_ANNOTATION`] (a queued request),
//!   [`SLOT_ANNOTATION`] (a held slot: token, phase, operation, since, lease expiry, boot id
//!   before, cordoned-by-rota) and [`LAST_ANNOTATION`] (how the latest slot ended). The
//!   authoritative copy is the node's *ledger object*, a ConfigMap named
//!   [`ledger_object_name`] in the coordinator's namespace, where only the coordinator's
//!   ServiceAccount may write ([`NodeAnnotations::to_ledger_data`]); the same records as
//!   annotations on the Node are a readable mirror (rotactl, `kubectl describe`), written after
//!   the ledger object and never trusted: anyone who may patch a Node (its own kubelet) can
//!   write them. [`super::restore`] compares the two on load;
//! - the cluster-wide fencing counter as the [`COUNTER_KEY`] of the ConfigMap
//!   [`COUNTER_CONFIGMAP`], updated with optimistic concurrency (`metadata.resourceVersion`), so
//!   two coordinators can never issue the same token. Its [`COUNTER_LEDGER_KEY`] marks a
//!   counter written by a version that keeps ledger objects: a counter without it was left by
//!   a version that kept the ledger only in annotations (see [`super::restore`] on migration).
//!
//! Everything here is pure encode/decode; the writes happen behind [`super::LedgerStore`].

use std::collections::BTreeMap;

use jiff::Timestamp;
use serde::{Deserialize, Serialize};

use super::entry::{
    CompletionReport, Finished, HeldSlot, Holding, NodeEntry, ProgressNote, QueuedRequest, Waiting,
};
use super::transition::TransitionReason;
use crate::model::{
    FencingToken, NodeName, Operation, Origin, PackagePin, Slot, SlotPhase, SlotRequest,
};

/// Everything the ledger persisted, as read back by [`super::LedgerStore::load`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct StoredState {
    /// The fencing counter: the last issued token (0 when the counter does not exist yet).
    pub last_token: u64,
    /// The counter object's `resourceVersion`; `None` when it does not exist yet.
    pub counter_version: Option<String>,
    /// Every Node with its annotations (the ledger reads only its own `rota.dev/` keys: the
    /// mirror).
    pub nodes: BTreeMap<NodeName, BTreeMap<String, String>>,
    /// The authoritative records of every node with a ledger object (also of nodes that no
    /// longer exist).
    pub ledger: BTreeMap<NodeName, NodeAnnotations>,
    /// The counter exists without [`COUNTER_LEDGER_KEY`]: a version that kept the ledger only in
    /// annotations wrote it, and this load migrates.
    pub legacy: bool,
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
/// Data key of [`COUNTER_CONFIGMAP`] saying where the ledger lives; its value is
/// [`COUNTER_LEDGER_VALUE`].
pub const COUNTER_LEDGER_KEY: &str = "ledger";
/// Value of [`COUNTER_LEDGER_KEY`]: the ledger lives in per-node ledger objects.
pub const COUNTER_LEDGER_VALUE: &str = "objects";
/// Prefix of every ledger object's name.
pub const LEDGER_OBJECT_PREFIX: &str = "rota-slot-";
/// Label every ledger object carries (with [`LEDGER_COMPONENT_LABEL`]); the load lists by both.
pub const MANAGED_BY_LABEL: &str = "app.kubernetes.io/managed-by";
/// Value of [`MANAGED_BY_LABEL`].
pub const MANAGED_BY: &str = "rota";
/// Label telling ledger objects from rota's other ConfigMaps.
pub const LEDGER_COMPONENT_LABEL: &str = "app.kubernetes.io/component";
/// Value of [`LEDGER_COMPONENT_LABEL`].
pub const LEDGER_COMPONENT: &str = "slot-ledger";
/// Data key of a ledger object holding the real node name (the object's name may be cut).
pub const LEDGER_NODE_KEY: &str = "node";
/// Data keys of a ledger object's records, in the order of [`NodeAnnotations::entries`]
/// (ConfigMap keys cannot hold the annotations' `/`).
pub const LEDGER_RECORD_KEYS: [&str; 3] = ["request", "slot", "last-maintenance"];

/// Longest Kubernetes object name (a DNS subdomain).
const MAX_NAME: usize = 253;
/// Hex digits of the hash that keeps cut names apart.
const HASH_DIGITS: usize = 16;

/// The name of `node`'s ledger object: [`LEDGER_OBJECT_PREFIX`] and the node name; a name too
/// long for that (Node names may have 253 characters) is cut and ends with a hash of the whole
/// name instead, so that two long names sharing a prefix stay apart. The object also holds the
/// real name under [`LEDGER_NODE_KEY`].
pub fn ledger_object_name(node: &str) -> String {
    let whole = format!("{LEDGER_OBJECT_PREFIX}{node}");
    if whole.len() <= MAX_NAME {
        return whole;
    }
    let keep = MAX_NAME - LEDGER_OBJECT_PREFIX.len() - 1 - HASH_DIGITS;
    // Node names are ASCII (DNS subdomains); a cut must not leave a label ending in '-' or '.'.
    let cut = node.get(..keep).unwrap_or(node);
    let cut = cut.trim_end_matches(['-', '.']);
    format!(
        "{LEDGER_OBJECT_PREFIX}{cut}-{:0width$x}",
        fnv1a(node.as_bytes()),
        width = HASH_DIGITS
    )
}

/// 64-bit FNV-1a: stable across Rust versions and platforms (object names must not change
/// with the compiler, as `std`'s hasher may).
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |hash, b| {
        (hash ^ u64::from(*b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

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
    /// A ledger object's data is not what the coordinator writes (only the coordinator, or an
    /// administrator of its namespace, can write there).
    #[error("ledger object {object}: {why}; fix or delete it")]
    LedgerObject {
        /// The object's name.
        object: String,
        /// What is wrong.
        why: String,
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
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    changed: Vec<PackagePin>,
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

    /// The ledger's annotations in a Node's annotation map (the mirror); other keys are ignored.
    pub fn from_annotations(annotations: &BTreeMap<String, String>) -> Self {
        let get = |key: &str| annotations.get(key).cloned();
        NodeAnnotations {
            request: get(REQUEST_ANNOTATION),
            slot: get(SLOT_ANNOTATION),
            last: get(LAST_ANNOTATION),
        }
    }

    /// Whether no record is set (the node has no entry: its ledger object is deleted).
    pub fn is_empty(&self) -> bool {
        self.entries().iter().all(|(_, value)| value.is_none())
    }

    /// The data of `node`'s ledger object: the set records under [`LEDGER_RECORD_KEYS`] and the
    /// node's name under [`LEDGER_NODE_KEY`].
    pub fn to_ledger_data(&self, node: &str) -> BTreeMap<String, String> {
        let mut data = BTreeMap::from([(LEDGER_NODE_KEY.to_owned(), node.to_owned())]);
        for ((_, value), key) in self.entries().into_iter().zip(LEDGER_RECORD_KEYS) {
            if let Some(value) = value {
                data.insert(key.to_owned(), value.to_owned());
            }
        }
        data
    }

    /// The node and its records from the data of the ledger object `object`, which must be
    /// the name [`ledger_object_name`] gives that node. The records themselves are decoded by
    /// [`decode_records`].
    pub fn from_ledger_data(
        object: &str,
        data: &BTreeMap<String, String>,
    ) -> Result<(NodeName, NodeAnnotations), PersistError> {
        let wrong = |why: String| PersistError::LedgerObject {
            object: object.to_owned(),
            why,
        };
        let node = data
            .get(LEDGER_NODE_KEY)
            .ok_or_else(|| wrong(format!("no {LEDGER_NODE_KEY:?} key")))?;
        if ledger_object_name(node) != object {
            return Err(wrong(format!(
                "it names node {node:?}, whose ledger object is {}",
                ledger_object_name(node)
            )));
        }
        if let Some(unknown) = data
            .keys()
            .find(|k| *k != LEDGER_NODE_KEY && !LEDGER_RECORD_KEYS.contains(&k.as_str()))
        {
            return Err(wrong(format!("unknown key {unknown:?}")));
        }
        let get = |i: usize| data.get(LEDGER_RECORD_KEYS[i]).cloned();
        Ok((
            node.clone(),
            NodeAnnotations {
                request: get(0),
                slot: get(1),
                last: get(2),
            },
        ))
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
                    changed: c.changed.clone(),
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
    decode_records(node, &NodeAnnotations::from_annotations(annotations))
}

/// Decodes a node's entry from its records (from its ledger object or its annotations).
/// `None` when no record is set.
pub fn decode_records(
    node: &str,
    records: &NodeAnnotations,
) -> Result<Option<NodeEntry>, PersistError> {
    let request: Option<RequestRecord> =
        from_json(node, REQUEST_ANNOTATION, records.request.as_deref())?;
    let slot: Option<SlotRecord> = from_json(node, SLOT_ANNOTATION, records.slot.as_deref())?;
    let last: Option<LastRecord> = from_json(node, LAST_ANNOTATION, records.last.as_deref())?;
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
                changed: c.changed,
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
    raw: Option<&str>,
) -> Result<Option<T>, PersistError> {
    raw.map(|raw| {
        serde_json::from_str(raw).map_err(|source| PersistError::Annotation {
            node: node.to_owned(),
            key,
            source,
        })
    })
    .transpose()
}
