//! The emulator's own record of disruptive events, independent of anything a client reports:
//! evictions (with the PDB's health right after, computed from the emulator's pod state), pod
//! deletions, and node readiness/cordon changes. Demos and end-to-end tests read it to prove
//! that no PodDisruptionBudget was broken and to report the most nodes unavailable at once.

use std::collections::{BTreeMap, BTreeSet};

use jiff::Timestamp;

/// One accepted (non-dry-run) eviction.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EvictionRecord {
    /// When the eviction was accepted.
    pub time: Timestamp,
    /// The store's resourceVersion after the eviction's writes.
    pub resource_version: u64,
    /// Pod namespace.
    pub namespace: String,
    /// Pod name.
    pub pod: String,
    /// `spec.nodeName` of the pod.
    pub node: Option<String>,
    /// The PDB covering the pod, if one did.
    pub pdb: Option<String>,
    /// Whether the pod counted towards the PDB's healthy pods before the eviction.
    pub pod_was_healthy: bool,
    /// The PDB's healthy pods right after the eviction (emulator's own computation).
    pub current_healthy: Option<i32>,
    /// The PDB's desired healthy pods right after the eviction.
    pub desired_healthy: Option<i32>,
}

impl EvictionRecord {
    /// Whether this eviction removed a healthy pod and left its PDB below `desiredHealthy`.
    pub fn violates_pdb(&self) -> bool {
        match (self.current_healthy, self.desired_healthy) {
            (Some(current), Some(desired)) => self.pod_was_healthy && current < desired,
            _ => false,
        }
    }
}

/// One pod deletion request that the store accepted.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PodDeletionRecord {
    /// When.
    pub time: Timestamp,
    /// The store's resourceVersion after the write.
    pub resource_version: u64,
    /// Pod namespace.
    pub namespace: String,
    /// Pod name.
    pub pod: String,
    /// `spec.nodeName`.
    pub node: Option<String>,
    /// Grace period applied (0: removed at once).
    pub grace_period_seconds: i64,
    /// Whether the deletion came from the eviction API.
    pub via_eviction: bool,
}

/// A change of a node's readiness or schedulability (or its creation/deletion).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeRecord {
    /// When.
    pub time: Timestamp,
    /// The store's resourceVersion of the write.
    pub resource_version: u64,
    /// Node name.
    pub node: String,
    /// Ready condition is True.
    pub ready: bool,
    /// `spec.unschedulable`.
    pub unschedulable: bool,
    /// The node object was deleted.
    pub deleted: bool,
}

impl NodeRecord {
    /// NotReady or cordoned (and still present).
    pub fn unavailable(&self) -> bool {
        !self.deleted && (!self.ready || self.unschedulable)
    }
}

/// The number of unavailable nodes from `time` on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UnavailablePoint {
    /// When the count changed.
    pub time: Timestamp,
    /// The store's resourceVersion of the change.
    pub resource_version: u64,
    /// Nodes NotReady or unschedulable from then on.
    pub unavailable: usize,
}

/// All audit records, in store order.
#[derive(Clone, Debug, Default)]
pub struct AuditLog {
    /// Accepted evictions.
    pub evictions: Vec<EvictionRecord>,
    /// Pod deletion requests.
    pub pod_deletions: Vec<PodDeletionRecord>,
    /// Node readiness/cordon changes.
    pub nodes: Vec<NodeRecord>,
    node_state: BTreeMap<String, (bool, bool)>,
    timeline: Vec<UnavailablePoint>,
}

impl AuditLog {
    /// Record a node write; only changes of (ready, unschedulable), creations and deletions are
    /// kept.
    pub fn record_node(&mut self, record: NodeRecord) {
        let state = (record.ready, record.unschedulable);
        let changed = if record.deleted {
            self.node_state.remove(&record.node).is_some()
        } else {
            self.node_state.insert(record.node.clone(), state) != Some(state)
        };
        if !changed {
            return;
        }
        let unavailable = self
            .node_state
            .values()
            .filter(|(ready, cordoned)| !ready || *cordoned)
            .count();
        if self.timeline.last().map(|p| p.unavailable) != Some(unavailable) {
            self.timeline.push(UnavailablePoint {
                time: record.time,
                resource_version: record.resource_version,
                unavailable,
            });
        }
        self.nodes.push(record);
    }

    /// Evictions that took a PDB below its desired healthy count.
    pub fn pdb_violations(&self) -> Vec<EvictionRecord> {
        self.evictions
            .iter()
            .filter(|e| e.violates_pdb())
            .cloned()
            .collect()
    }

    /// How many nodes were unavailable, each time the number changed.
    pub fn unavailable_timeline(&self) -> &[UnavailablePoint] {
        &self.timeline
    }

    /// The most of `nodes` (say, the control-plane nodes) unavailable at any moment, replayed
    /// from the node records.
    pub fn max_unavailable_among(&self, nodes: &BTreeSet<String>) -> usize {
        let mut down: BTreeSet<&str> = BTreeSet::new();
        let mut most = 0;
        for record in self.nodes.iter().filter(|r| nodes.contains(&r.node)) {
            if !record.deleted && (!record.ready || record.unschedulable) {
                down.insert(record.node.as_str());
            } else {
                down.remove(record.node.as_str());
            }
            most = most.max(down.len());
        }
        most
    }

    /// The most nodes unavailable at any moment.
    pub fn max_unavailable(&self) -> usize {
        self.timeline
            .iter()
            .map(|p| p.unavailable)
            .max()
            .unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(t: i64, rv: u64, name: &str, ready: bool, unschedulable: bool) -> NodeRecord {
        NodeRecord {
            time: Timestamp::from_second(t).unwrap(),
            resource_version: rv,
            node: name.into(),
            ready,
            unschedulable,
            deleted: false,
        }
    }

    #[test]
    fn timeline_counts_unavailable_nodes() {
        let mut log = AuditLog::default();
        log.record_node(node(0, 1, "a", true, false));
        log.record_node(node(0, 2, "b", true, false));
        log.record_node(node(1, 3, "a", true, true));
        log.record_node(node(2, 4, "b", false, false));
        log.record_node(node(2, 5, "b", false, false));
        log.record_node(node(3, 6, "a", true, false));
        let a = BTreeSet::from(["a".to_owned()]);
        assert_eq!(log.max_unavailable_among(&a), 1);
        let both = BTreeSet::from(["a".to_owned(), "b".to_owned()]);
        assert_eq!(log.max_unavailable_among(&both), 2);
        assert_eq!(log.max_unavailable_among(&BTreeSet::new()), 0);
        let counts: Vec<usize> = log
            .unavailable_timeline()
            .iter()
            .map(|p| p.unavailable)
            .collect();
        assert_eq!(counts, vec![0, 1, 2, 1]);
        assert_eq!(log.max_unavailable(), 2);
        assert_eq!(log.nodes.len(), 5);
    }

    #[test]
    fn violation_needs_a_healthy_pod_and_a_deficit() {
        let base = EvictionRecord {
            time: Timestamp::UNIX_EPOCH,
            resource_version: 1,
            namespace: "ns".into(),
            pod: "p".into(),
            node: None,
            pdb: Some("pdb".into()),
            pod_was_healthy: true,
            current_healthy: Some(1),
            desired_healthy: Some(2),
        };
        assert!(base.violates_pdb());
        assert!(
            !EvictionRecord {
                pod_was_healthy: false,
                ..base.clone()
            }
            .violates_pdb()
        );
        assert!(
            !EvictionRecord {
                current_healthy: Some(2),
                ..base
            }
            .violates_pdb()
        );
    }
}
