//! PodDisruptionBudgets as the drain engine sees them: which budgets cover a pod, and whether
//! they currently allow a disruption.
//!
//! The index is plain data, fed by a watch (see [`super::watch`]); the matching rules are the API
//! server's eviction rules (upstream `pkg/registry/core/pod/storage/eviction.go`): a budget
//! covers a pod when it lives in the pod's namespace and its selector matches the pod's labels,
//! and an empty or missing selector matches nothing.

use std::collections::{BTreeMap, HashMap};
use std::fmt;

use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use kube_core::ResourceExt;
use kube_core::{Selector, SelectorExt};
use serde::Serialize;

/// A PodDisruptionBudget's name.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub struct PdbRef {
    /// Namespace of the budget.
    pub namespace: String,
    /// Name of the budget.
    pub name: String,
}

impl fmt::Display for PdbRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

/// What the drain engine keeps of one budget.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PdbEntry {
    /// Its selector; `None` when it is empty, missing or invalid (such a budget covers no pod).
    pub selector: Option<Selector>,
    /// `status.disruptionsAllowed`.
    pub disruptions_allowed: i32,
    /// `metadata.generation` (0 when absent).
    pub generation: i64,
    /// `status.observedGeneration` (0 when absent).
    pub observed_generation: i64,
    /// `metadata.resourceVersion`: changes with every write, so it tells that the status moved.
    pub resource_version: String,
}

impl PdbEntry {
    /// Extracts the fields the drain engine uses.
    pub fn from_object(pdb: &PodDisruptionBudget) -> Self {
        let selector = pdb
            .spec
            .as_ref()
            .and_then(|spec| spec.selector.clone())
            .and_then(|selector| Selector::try_from(selector).ok())
            .filter(|selector| !selector.selects_all());
        let status = pdb.status.as_ref();
        Self {
            selector,
            disruptions_allowed: status.map_or(0, |s| s.disruptions_allowed),
            generation: pdb.metadata.generation.unwrap_or(0),
            observed_generation: status.and_then(|s| s.observed_generation).unwrap_or(0),
            resource_version: pdb.resource_version().unwrap_or_default(),
        }
    }

    /// Whether an eviction under this budget can currently succeed, as far as its status says:
    /// the status is up to date with the spec and leaves at least one disruption.
    pub fn allows_disruption(&self) -> bool {
        self.observed_generation >= self.generation && self.disruptions_allowed > 0
    }

    fn covers(&self, labels: &BTreeMap<String, String>) -> bool {
        self.selector
            .as_ref()
            .is_some_and(|selector| selector.matches(labels))
    }
}

/// The budgets of the cluster, by namespace and name: a pod's budgets are found among those of
/// its namespace only, so a lookup costs what the namespace holds, not the cluster.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PdbIndex {
    by_namespace: HashMap<String, BTreeMap<String, PdbEntry>>,
}

/// A comparable summary of the budgets covering one pod: their names and resource versions.
/// It changes whenever one of them is written, appears or goes away.
pub type Fingerprint = Vec<(PdbRef, String)>;

impl PdbIndex {
    /// Builds an index from a list of budgets.
    pub fn from_objects<'a>(pdbs: impl IntoIterator<Item = &'a PodDisruptionBudget>) -> Self {
        let mut index = Self::default();
        for pdb in pdbs {
            index.apply(pdb);
        }
        index
    }

    /// Adds or replaces one budget.
    pub fn apply(&mut self, pdb: &PodDisruptionBudget) {
        let PdbRef { namespace, name } = pdb_ref(pdb);
        self.by_namespace
            .entry(namespace)
            .or_default()
            .insert(name, PdbEntry::from_object(pdb));
    }

    /// Removes one budget.
    pub fn delete(&mut self, pdb: &PodDisruptionBudget) {
        let PdbRef { namespace, name } = pdb_ref(pdb);
        if let Some(entries) = self.by_namespace.get_mut(&namespace) {
            entries.remove(&name);
            if entries.is_empty() {
                self.by_namespace.remove(&namespace);
            }
        }
    }

    /// The entry of one budget.
    pub fn get(&self, pdb: &PdbRef) -> Option<&PdbEntry> {
        self.by_namespace.get(&pdb.namespace)?.get(&pdb.name)
    }

    /// The budgets of `namespace` covering a pod with these labels, by name.
    fn covering_entries<'a>(
        &'a self,
        namespace: &str,
        labels: &'a BTreeMap<String, String>,
    ) -> impl Iterator<Item = (&'a String, &'a PdbEntry)> + 'a {
        self.by_namespace
            .get(namespace)
            .into_iter()
            .flatten()
            .filter(move |(_, entry)| entry.covers(labels))
    }

    /// The budgets covering a pod with these labels in this namespace, sorted by name.
    pub fn covering(&self, namespace: &str, labels: &BTreeMap<String, String>) -> Vec<PdbRef> {
        self.covering_entries(namespace, labels)
            .map(|(name, _)| PdbRef {
                namespace: namespace.to_owned(),
                name: name.clone(),
            })
            .collect()
    }

    /// The fingerprint of the budgets covering a pod.
    pub fn fingerprint(&self, namespace: &str, labels: &BTreeMap<String, String>) -> Fingerprint {
        self.covering_entries(namespace, labels)
            .map(|(name, entry)| {
                let pdb = PdbRef {
                    namespace: namespace.to_owned(),
                    name: name.clone(),
                };
                (pdb, entry.resource_version.clone())
            })
            .collect()
    }

    /// Whether every budget covering the pod currently allows a disruption (true when none
    /// covers it).
    pub fn allows_eviction(&self, namespace: &str, labels: &BTreeMap<String, String>) -> bool {
        self.covering_entries(namespace, labels)
            .all(|(_, entry)| entry.allows_disruption())
    }
}

fn pdb_ref(pdb: &PodDisruptionBudget) -> PdbRef {
    PdbRef {
        namespace: pdb.namespace().unwrap_or_default(),
        name: pdb.name_any(),
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use k8s_openapi::api::policy::v1::{PodDisruptionBudgetSpec, PodDisruptionBudgetStatus};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{
        LabelSelector, LabelSelectorRequirement, ObjectMeta,
    };

    use super::*;

    pub(crate) fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    pub(crate) fn pdb(
        ns: &str,
        name: &str,
        selector: Option<LabelSelector>,
        allowed: i32,
    ) -> PodDisruptionBudget {
        PodDisruptionBudget {
            metadata: ObjectMeta {
                namespace: Some(ns.into()),
                name: Some(name.into()),
                generation: Some(1),
                resource_version: Some("1".into()),
                ..ObjectMeta::default()
            },
            spec: Some(PodDisruptionBudgetSpec {
                selector,
                ..PodDisruptionBudgetSpec::default()
            }),
            status: Some(PodDisruptionBudgetStatus {
                disruptions_allowed: allowed,
                observed_generation: Some(1),
                ..PodDisruptionBudgetStatus::default()
            }),
        }
    }

    pub(crate) fn match_labels(pairs: &[(&str, &str)]) -> Option<LabelSelector> {
        Some(LabelSelector {
            match_labels: Some(labels(pairs)),
            match_expressions: None,
        })
    }

    #[test]
    fn covering_rules() {
        let expr = |op: &str, values: Option<Vec<&str>>| {
            Some(LabelSelector {
                match_labels: None,
                match_expressions: Some(vec![LabelSelectorRequirement {
                    key: "app".into(),
                    operator: op.into(),
                    values: values.map(|v| v.into_iter().map(String::from).collect()),
                }]),
            })
        };
        let web = labels(&[("app", "web"), ("tier", "front")]);
        // (case, pdb namespace, selector, covers a pod labelled `web` in namespace "a")
        let cases: Vec<(&str, &str, Option<LabelSelector>, bool)> = vec![
            (
                "matchLabels subset",
                "a",
                match_labels(&[("app", "web")]),
                true,
            ),
            (
                "matchLabels all",
                "a",
                match_labels(&[("app", "web"), ("tier", "front")]),
                true,
            ),
            (
                "matchLabels mismatch",
                "a",
                match_labels(&[("app", "db")]),
                false,
            ),
            (
                "other namespace",
                "b",
                match_labels(&[("app", "web")]),
                false,
            ),
            ("missing selector", "a", None, false),
            (
                "empty selector matches nothing",
                "a",
                Some(LabelSelector::default()),
                false,
            ),
            ("In", "a", expr("In", Some(vec!["web", "x"])), true),
            ("NotIn", "a", expr("NotIn", Some(vec!["web"])), false),
            ("Exists", "a", expr("Exists", None), true),
            ("DoesNotExist", "a", expr("DoesNotExist", None), false),
            (
                "invalid operator covers nothing",
                "a",
                expr("Bogus", None),
                false,
            ),
        ];
        for (case, ns, selector, want) in cases {
            let index = PdbIndex::from_objects([&pdb(ns, "p", selector, 1)]);
            let got = !index.covering("a", &web).is_empty();
            assert_eq!(got, want, "{case}");
        }
    }

    #[test]
    fn allows_eviction_needs_every_covering_budget() {
        let web = labels(&[("app", "web")]);
        let one = pdb("a", "one", match_labels(&[("app", "web")]), 1);
        let zero = pdb("a", "zero", match_labels(&[("app", "web")]), 0);
        let mut stale = pdb("a", "stale", match_labels(&[("app", "web")]), 3);
        stale.metadata.generation = Some(2);

        assert!(PdbIndex::default().allows_eviction("a", &web));
        assert!(PdbIndex::from_objects([&one]).allows_eviction("a", &web));
        assert!(!PdbIndex::from_objects([&zero]).allows_eviction("a", &web));
        assert!(!PdbIndex::from_objects([&one, &zero]).allows_eviction("a", &web));
        assert!(!PdbIndex::from_objects([&stale]).allows_eviction("a", &web));
    }

    #[test]
    fn fingerprint_follows_writes_and_membership() {
        let web = labels(&[("app", "web")]);
        let mut index = PdbIndex::default();
        let empty = index.fingerprint("a", &web);
        let mut budget = pdb("a", "p", match_labels(&[("app", "web")]), 0);
        index.apply(&budget);
        let added = index.fingerprint("a", &web);
        assert_ne!(empty, added);
        budget.metadata.resource_version = Some("2".into());
        budget.status.as_mut().unwrap().disruptions_allowed = 1;
        index.apply(&budget);
        let written = index.fingerprint("a", &web);
        assert_ne!(added, written);
        index.delete(&budget);
        assert_eq!(index.fingerprint("a", &web), empty);
    }
}
