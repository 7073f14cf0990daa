//! The cluster as rota last saw it: Nodes, Pods, PodDisruptionBudgets, DaemonSets and
//! MaintenancePolicies, indexed for the questions the controller asks (the pods of a node), and
//! the API server's version. Plain data: the coordinator keeps it current from watches, and the
//! decisions read it.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::fmt;
use std::sync::Arc;

use k8s_openapi::api::apps::v1::DaemonSet;
use k8s_openapi::api::core::v1::{Node, Pod};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use kube_core::{Resource, ResourceExt};
use serde::de::DeserializeOwned;

use crate::drain::pdb::PdbIndex;
use crate::policy::{KubeVersion, MaintenancePolicy, NamespacedName};

/// A kind of object the cache follows.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Kind {
    /// Nodes.
    Nodes,
    /// Pods (all namespaces).
    Pods,
    /// PodDisruptionBudgets (all namespaces).
    PodDisruptionBudgets,
    /// DaemonSets (all namespaces).
    DaemonSets,
    /// MaintenancePolicies.
    MaintenancePolicies,
}

impl Kind {
    /// Every kind.
    pub const ALL: [Kind; 5] = [
        Kind::Nodes,
        Kind::Pods,
        Kind::PodDisruptionBudgets,
        Kind::DaemonSets,
        Kind::MaintenancePolicies,
    ];
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Kind::Nodes => "nodes",
            Kind::Pods => "pods",
            Kind::PodDisruptionBudgets => "poddisruptionbudgets",
            Kind::DaemonSets => "daemonsets",
            Kind::MaintenancePolicies => "maintenancepolicies",
        })
    }
}

/// The cluster as last seen: every object of the kinds rota follows, with pods also indexed by
/// node, and the API server's version. The coordinator's cache keeps one current from watches.
#[derive(Debug, Default)]
pub struct ClusterState {
    nodes: BTreeMap<String, Arc<Node>>,
    pods: HashMap<NamespacedName, Arc<Pod>>,
    pods_by_node: HashMap<String, BTreeSet<NamespacedName>>,
    pdbs: BTreeMap<NamespacedName, Arc<PodDisruptionBudget>>,
    /// Which budgets cover which pods: the one index the scheduler's snapshot and every drain
    /// read, kept in step with `pdbs`.
    pdb_index: PdbIndex,
    daemon_sets: BTreeMap<NamespacedName, Arc<DaemonSet>>,
    policies: BTreeMap<String, Arc<MaintenancePolicy>>,
    api_server_version: Option<KubeVersion>,
    synced: HashSet<Kind>,
}

impl ClusterState {
    /// Every pod of `namespace` (a scan of every pod: for occasional checks, not every pass).
    pub fn pods_in<'a>(&'a self, namespace: &'a str) -> impl Iterator<Item = &'a Arc<Pod>> + 'a {
        self.pods
            .iter()
            .filter(move |(key, _)| key.namespace == namespace)
            .map(|(_, pod)| pod)
    }

    /// Every Node, by name.
    pub fn nodes(&self) -> &BTreeMap<String, Arc<Node>> {
        &self.nodes
    }

    /// One Node.
    pub fn node(&self, name: &str) -> Option<&Arc<Node>> {
        self.nodes.get(name)
    }

    /// The pods bound to a node.
    pub fn pods_on<'a>(&'a self, node: &str) -> impl Iterator<Item = &'a Arc<Pod>> + 'a {
        self.pods_by_node
            .get(node)
            .into_iter()
            .flatten()
            .filter_map(|key| self.pods.get(key))
    }

    /// How many pods are cached.
    pub fn pod_count(&self) -> usize {
        self.pods.len()
    }

    /// Every PodDisruptionBudget.
    pub fn pdbs(&self) -> impl Iterator<Item = &Arc<PodDisruptionBudget>> {
        self.pdbs.values()
    }

    /// Every DaemonSet, by namespace and name.
    pub fn daemon_sets(&self) -> &BTreeMap<NamespacedName, Arc<DaemonSet>> {
        &self.daemon_sets
    }

    /// Every MaintenancePolicy, by name.
    pub fn policies(&self) -> &BTreeMap<String, Arc<MaintenancePolicy>> {
        &self.policies
    }

    /// The API server's version, once read.
    pub fn api_server_version(&self) -> Option<KubeVersion> {
        self.api_server_version
    }

    /// Which budgets cover which pods, and whether they allow a disruption now.
    pub fn pdb_index(&self) -> &PdbIndex {
        &self.pdb_index
    }

    /// Whether `kind` has been listed in full.
    pub fn is_listed(&self, kind: Kind) -> bool {
        self.synced.contains(&kind)
    }

    /// Whether every kind has been listed once.
    pub fn is_synced(&self) -> bool {
        Kind::ALL.iter().all(|k| self.synced.contains(k))
    }

    /// Records that a kind has been listed in full.
    pub fn mark_synced(&mut self, kind: Kind) {
        self.synced.insert(kind);
    }

    /// Records the API server's version; returns whether it changed.
    pub fn set_api_server_version(&mut self, version: KubeVersion) -> bool {
        let changed = self.api_server_version != Some(version);
        self.api_server_version = Some(version);
        changed
    }
}

fn key_of<K: Resource>(obj: &K) -> NamespacedName {
    NamespacedName::new(
        obj.meta().namespace.clone().unwrap_or_default(),
        obj.meta().name.clone().unwrap_or_default(),
    )
}

/// A kind of object the cluster state holds, and where its objects go in it.
pub trait Indexed:
    Resource<DynamicType = ()> + Clone + DeserializeOwned + fmt::Debug + Send + Sync
{
    /// Which kind it is.
    const KIND: Kind;
    /// Adds or replaces the object.
    fn insert(state: &mut ClusterState, obj: Self);
    /// Removes the object.
    fn remove(state: &mut ClusterState, obj: &Self);
    /// Forgets every object of the kind (before a relist).
    fn clear(state: &mut ClusterState);
}

impl Indexed for Node {
    const KIND: Kind = Kind::Nodes;
    fn insert(state: &mut ClusterState, mut obj: Self) {
        // Image lists are large and of no use to rota.
        if let Some(status) = obj.status.as_mut() {
            status.images = None;
        }
        state.nodes.insert(obj.name_any(), Arc::new(obj));
    }
    fn remove(state: &mut ClusterState, obj: &Self) {
        state.nodes.remove(&obj.name_any());
    }
    fn clear(state: &mut ClusterState) {
        state.nodes.clear();
    }
}

impl Indexed for Pod {
    const KIND: Kind = Kind::Pods;
    fn insert(state: &mut ClusterState, obj: Self) {
        let key = key_of(&obj);
        let node = obj.spec.as_ref().and_then(|s| s.node_name.clone());
        let previous = state.pods.insert(key.clone(), Arc::new(obj));
        let previous_node =
            previous.and_then(|p| p.spec.as_ref().and_then(|s| s.node_name.clone()));
        if previous_node != node
            && let Some(old) = previous_node
        {
            unindex(&mut state.pods_by_node, &old, &key);
        }
        if let Some(node) = node {
            state.pods_by_node.entry(node).or_default().insert(key);
        }
    }
    fn remove(state: &mut ClusterState, obj: &Self) {
        let key = key_of(obj);
        if let Some(previous) = state.pods.remove(&key)
            && let Some(node) = previous.spec.as_ref().and_then(|s| s.node_name.as_ref())
        {
            unindex(&mut state.pods_by_node, node, &key);
        }
    }
    fn clear(state: &mut ClusterState) {
        state.pods.clear();
        state.pods_by_node.clear();
    }
}

fn unindex(
    index: &mut HashMap<String, BTreeSet<NamespacedName>>,
    node: &str,
    key: &NamespacedName,
) {
    if let Some(keys) = index.get_mut(node) {
        keys.remove(key);
        if keys.is_empty() {
            index.remove(node);
        }
    }
}

impl Indexed for PodDisruptionBudget {
    const KIND: Kind = Kind::PodDisruptionBudgets;
    fn insert(state: &mut ClusterState, obj: Self) {
        state.pdb_index.apply(&obj);
        state.pdbs.insert(key_of(&obj), Arc::new(obj));
    }
    fn remove(state: &mut ClusterState, obj: &Self) {
        state.pdb_index.delete(obj);
        state.pdbs.remove(&key_of(obj));
    }
    fn clear(state: &mut ClusterState) {
        state.pdb_index = PdbIndex::default();
        state.pdbs.clear();
    }
}

impl Indexed for DaemonSet {
    const KIND: Kind = Kind::DaemonSets;
    fn insert(state: &mut ClusterState, obj: Self) {
        state.daemon_sets.insert(key_of(&obj), Arc::new(obj));
    }
    fn remove(state: &mut ClusterState, obj: &Self) {
        state.daemon_sets.remove(&key_of(obj));
    }
    fn clear(state: &mut ClusterState) {
        state.daemon_sets.clear();
    }
}

impl Indexed for MaintenancePolicy {
    const KIND: Kind = Kind::MaintenancePolicies;
    fn insert(state: &mut ClusterState, obj: Self) {
        state.policies.insert(obj.name_any(), Arc::new(obj));
    }
    fn remove(state: &mut ClusterState, obj: &Self) {
        state.policies.remove(&obj.name_any());
    }
    fn clear(state: &mut ClusterState) {
        state.policies.clear();
    }
}
