//! What blockers outside Kubernetes said last: the firing alerts of each Prometheus the
//! policies name. The coordinator asks them; the scheduler's pools read the answers here.

use std::collections::{BTreeMap, BTreeSet};

use crate::scheduler::Pool;

/// Why a pool whose Prometheus has not been asked yet waits.
pub const NOT_ASKED_YET: &str = "no answer yet";

/// What one Prometheus said last.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AlertReport {
    /// The names of its firing alerts, sorted, each once (before any policy's filter).
    Firing(Vec<String>),
    /// Its alerts are not known, and why.
    Unknown(String),
}

/// What every Prometheus asked said last, by URL (as the policies spell it).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AlertReports {
    by_url: BTreeMap<String, AlertReport>,
}

impl AlertReports {
    /// Reports from `(url, report)` pairs.
    pub fn from_reports(reports: impl IntoIterator<Item = (String, AlertReport)>) -> Self {
        AlertReports {
            by_url: reports.into_iter().collect(),
        }
    }

    /// Every URL asked, with what it said last.
    pub fn iter(&self) -> impl Iterator<Item = (&String, &AlertReport)> {
        self.by_url.iter()
    }

    /// Whether the Prometheus at `url` was asked.
    pub fn contains(&self, url: &str) -> bool {
        self.by_url.contains_key(url)
    }

    /// What the Prometheus at `url` said last, if it was asked.
    pub fn get(&self, url: &str) -> Option<&AlertReport> {
        self.by_url.get(url)
    }

    /// Fills in the alerts of every pool with a Prometheus blocker: its firing alerts, or why
    /// they are not known — including a Prometheus not asked yet, so that a pool is never
    /// admitted to before its Prometheus answered.
    pub fn apply(&self, pools: &mut [Pool]) {
        for pool in pools {
            let Some(source) = &pool.policy.blockers.prometheus else {
                continue;
            };
            let (firing, unknown) = match self.by_url.get(&source.url) {
                Some(AlertReport::Firing(names)) => (names.clone(), None),
                Some(AlertReport::Unknown(why)) => (Vec::new(), Some(why.clone())),
                None => (Vec::new(), Some(NOT_ASKED_YET.to_owned())),
            };
            pool.firing_alerts = firing;
            pool.alerts_unknown = unknown;
        }
    }
}

/// The Prometheus URLs the pools' blockers name, each once.
pub fn urls(pools: &[Pool]) -> BTreeSet<String> {
    pools
        .iter()
        .filter_map(|p| p.policy.blockers.prometheus.as_ref())
        .map(|source| source.url.clone())
        .collect()
}
