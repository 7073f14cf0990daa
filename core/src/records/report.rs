//! The change report: per pool, what the maintenance records since a time say (for a change
//! ticket): nodes maintained, failures, the median cycle time, security updates applied.

use std::collections::{BTreeMap, BTreeSet};

use jiff::{SignedDuration, Timestamp};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use serde::{Deserialize, Serialize};

use super::crd::{MaintenanceRecordSpec, RecordOutcome};

/// The pool name the report uses for records of nodes that no pool selected.
pub const NO_POOL: &str = "(none)";

/// One pool's line of the report.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PoolReport {
    /// The pool (MaintenancePolicy), or [`NO_POOL`].
    pub pool: String,
    /// Maintenances started in the period.
    pub maintenances: u32,
    /// Distinct nodes with at least one successful maintenance.
    pub nodes_maintained: u32,
    /// Successful maintenances.
    pub succeeded: u32,
    /// Failed maintenances (also those whose node recovered afterwards).
    pub failures: u32,
    /// Maintenances still holding their slot (not failed).
    pub in_progress: u32,
    /// Maintenances that ended without the operation (drain given back, released, node
    /// deleted).
    pub not_performed: u32,
    /// Median time from admission to verification of the successful maintenances, in seconds.
    pub median_cycle_seconds: Option<i64>,
    /// Packages changed.
    pub packages_changed: u32,
    /// Packages changed to a version from a security source.
    pub security_updates_applied: u32,
}

/// Whether the record started at or after `since` (by admission).
pub fn started_since(record: &MaintenanceRecordSpec, since: Timestamp) -> bool {
    record
        .phases
        .admitted
        .as_ref()
        .is_some_and(|Time(at)| *at >= since)
}

/// The report of every pool with a record admitted at or after `since`, by pool name.
pub fn report<'a>(
    records: impl IntoIterator<Item = &'a MaintenanceRecordSpec>,
    since: Timestamp,
) -> Vec<PoolReport> {
    let mut pools: BTreeMap<String, (PoolReport, BTreeSet<&str>, Vec<SignedDuration>)> =
        BTreeMap::new();
    for record in records.into_iter().filter(|r| started_since(r, since)) {
        let pool = record.pool.clone().unwrap_or_else(|| NO_POOL.to_owned());
        let (line, nodes, cycles) = pools.entry(pool.clone()).or_insert_with(|| {
            (
                PoolReport {
                    pool,
                    ..PoolReport::default()
                },
                BTreeSet::new(),
                Vec::new(),
            )
        });
        line.maintenances += 1;
        match record.outcome {
            RecordOutcome::Succeeded => {
                line.succeeded += 1;
                nodes.insert(&record.node);
                if let (Some(Time(start)), Some(Time(end))) =
                    (&record.phases.admitted, &record.phases.verified)
                {
                    cycles.push(end.duration_since(*start));
                }
            }
            outcome if outcome.is_failure() => line.failures += 1,
            RecordOutcome::InProgress => line.in_progress += 1,
            _ => line.not_performed += 1,
        }
        let changed = u32::try_from(record.packages_changed.len()).unwrap_or(u32::MAX);
        let counted = u32::try_from(record.packages_changed_count).unwrap_or(0);
        line.packages_changed += counted.max(changed);
        line.security_updates_applied += u32::try_from(
            record
                .packages_changed
                .iter()
                .filter(|p| p.security)
                .count(),
        )
        .unwrap_or(u32::MAX);
    }
    pools
        .into_values()
        .map(|(mut line, nodes, mut cycles)| {
            line.nodes_maintained = u32::try_from(nodes.len()).unwrap_or(u32::MAX);
            line.median_cycle_seconds = median(&mut cycles).map(|d| d.as_secs());
            line
        })
        .collect()
}

/// The median (the mean of the two middle ones for an even count).
pub fn median(values: &mut [SignedDuration]) -> Option<SignedDuration> {
    values.sort();
    let n = values.len();
    match n {
        0 => None,
        n if n % 2 == 1 => values.get(n / 2).copied(),
        n => {
            let (a, b) = (values.get(n / 2 - 1)?, values.get(n / 2)?);
            Some(*a + (*b - *a) / 2)
        }
    }
}
