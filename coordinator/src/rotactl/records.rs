//! `rotactl history` (the MaintenanceRecords half) and `rotactl report`: what the records say,
//! as a table, JSON or CSV, and the change report per pool.

use std::io::Write;

use jiff::Timestamp;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::ListParams;
use kube::{Api, Client, ResourceExt};
use serde::Serialize;

use super::status::plain_table;
use super::{Error, Result, age};
use crate::records::{NODE_LABEL, is_label_value};
use rota_core::records::build::format_duration;
use rota_core::records::report::started_since;
use rota_core::records::{MaintenanceRecord, MaintenanceRecordSpec, PoolReport};
use rota_core::text::printable;

/// One record with its object name.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct NamedRecord {
    /// The object's name.
    pub name: String,
    /// What it says.
    #[serde(flatten)]
    pub spec: MaintenanceRecordSpec,
}

/// The records of `node` (every node when `None`) admitted at or after `since`, oldest first.
/// A cluster without the MaintenanceRecord CRD has none.
pub async fn fetch(
    client: &Client,
    node: Option<&str>,
    since: Option<Timestamp>,
) -> Result<Vec<NamedRecord>> {
    let api: Api<MaintenanceRecord> = Api::all(client.clone());
    let params = match node {
        Some(node) if is_label_value(node) => {
            ListParams::default().labels(&format!("{NODE_LABEL}={node}"))
        }
        _ => ListParams::default(),
    };
    let listed = match api.list(&params).await {
        Ok(list) => list.items,
        Err(kube::Error::Api(status)) if status.code == 404 => Vec::new(),
        Err(e) => return Err(Error::kube("listing MaintenanceRecords", e)),
    };
    let mut records: Vec<NamedRecord> = listed
        .into_iter()
        .filter(|r| node.is_none_or(|n| r.spec.node == n))
        .filter(|r| since.is_none_or(|s| started_since(&r.spec, s)))
        .map(|r| NamedRecord {
            name: r.name_any(),
            spec: r.spec,
        })
        .collect();
    records.sort_by(|a, b| {
        a.spec
            .phases
            .admitted
            .cmp(&b.spec.phases.admitted)
            .then_with(|| a.name.cmp(&b.name))
    });
    Ok(records)
}

fn time(at: Option<&Time>) -> String {
    at.map_or_else(String::new, |Time(t)| t.to_string())
}

fn security_updates(spec: &MaintenanceRecordSpec) -> usize {
    spec.packages_changed.iter().filter(|p| p.security).count()
}

/// The records as a table.
pub fn print_table(out: &mut dyn Write, records: &[NamedRecord], now: Timestamp) -> Result<()> {
    if records.is_empty() {
        writeln!(out, "no maintenance records")?;
        return Ok(());
    }
    let mut table = plain_table(&[
        "STARTED",
        "NODE",
        "POOL",
        "OPERATION",
        "ORIGIN",
        "TOKEN",
        "OUTCOME",
        "DURATION",
        "PODS",
        "PACKAGES",
        "SECURITY",
        "KERNEL",
        "REASON",
    ]);
    for record in records {
        let spec = &record.spec;
        let origin = if spec.requested_by.is_empty() {
            spec.origin.as_str().to_owned()
        } else {
            format!("{} ({})", spec.origin.as_str(), spec.requested_by)
        };
        let kernel = match &spec.after {
            Some(after) if after.kernel != spec.before.kernel => {
                format!("{} -> {}", spec.before.kernel, after.kernel)
            }
            _ => spec.before.kernel.clone(),
        };
        table.add_row(vec![
            spec.phases
                .admitted
                .as_ref()
                .map_or_else(|| "-".to_owned(), |Time(t)| format!("{} ago", age(*t, now))),
            printable(&spec.node),
            printable(spec.pool.as_deref().unwrap_or("-")),
            printable(&spec.operation),
            printable(&origin),
            spec.token.to_string(),
            spec.outcome.as_str().to_owned(),
            if spec.duration.is_empty() {
                "-".to_owned()
            } else {
                printable(&spec.duration)
            },
            spec.pods_evicted.to_string(),
            spec.packages_changed_count.to_string(),
            security_updates(spec).to_string(),
            printable(&kernel),
            printable(&spec.reason),
        ]);
    }
    writeln!(out, "{}", table.trim_fmt())?;
    Ok(())
}

/// The records as CSV (RFC 4180), one line per record, with a header.
pub fn print_csv(out: &mut dyn Write, records: &[NamedRecord]) -> Result<()> {
    const HEADER: [&str; 25] = [
        "name",
        "node",
        "pool",
        "operation",
        "operationDetail",
        "origin",
        "requestedBy",
        "token",
        "outcome",
        "requested",
        "admitted",
        "drained",
        "granted",
        "completed",
        "verified",
        "failed",
        "ended",
        "duration",
        "podsEvicted",
        "packagesChanged",
        "securityUpdates",
        "kernelBefore",
        "kernelAfter",
        "kubeletBefore",
        "kubeletAfter",
    ];
    writeln!(out, "{},reason", HEADER.join(","))?;
    for record in records {
        let spec = &record.spec;
        let phases = &spec.phases;
        let after = spec.after.clone().unwrap_or_default();
        let cells = [
            record.name.clone(),
            spec.node.clone(),
            spec.pool.clone().unwrap_or_default(),
            spec.operation.clone(),
            spec.operation_detail.clone(),
            spec.origin.as_str().to_owned(),
            spec.requested_by.clone(),
            spec.token.to_string(),
            spec.outcome.as_str().to_owned(),
            time(phases.requested.as_ref()),
            time(phases.admitted.as_ref()),
            time(phases.drained.as_ref()),
            time(phases.granted.as_ref()),
            time(phases.completed.as_ref()),
            time(phases.verified.as_ref()),
            time(phases.failed.as_ref()),
            time(phases.ended.as_ref()),
            spec.duration.clone(),
            spec.pods_evicted.to_string(),
            spec.packages_changed_count.to_string(),
            security_updates(spec).to_string(),
            spec.before.kernel.clone(),
            after.kernel,
            spec.before.kubelet.clone(),
            after.kubelet,
            spec.reason.clone(),
        ];
        let line: Vec<String> = cells.iter().map(|c| csv_cell(c)).collect();
        writeln!(out, "{}", line.join(","))?;
    }
    Ok(())
}

/// One CSV cell: quoted when it holds a comma, quote or line break (quotes doubled); a cell a
/// spreadsheet would run as a formula (`=`, `+`, `-`, `@` first) gets a leading `'`.
pub fn csv_cell(value: &str) -> String {
    let value = if value.starts_with(['=', '+', '-', '@']) {
        format!("'{value}")
    } else {
        value.to_owned()
    };
    if value.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", value.replace('"', "\"\""))
    } else {
        value
    }
}

/// The change report as a table: one line per pool, and what it covers.
pub fn print_report(
    out: &mut dyn Write,
    report: &[PoolReport],
    since: Timestamp,
    now: Timestamp,
) -> Result<()> {
    writeln!(
        out,
        "maintenance since {} ({} ago), by pool:",
        since.strftime("%F %T UTC"),
        age(since, now)
    )?;
    if report.is_empty() {
        writeln!(out, "no maintenance records in this period")?;
        return Ok(());
    }
    let mut table = plain_table(&[
        "POOL",
        "MAINTENANCES",
        "NODES MAINTAINED",
        "SUCCEEDED",
        "FAILURES",
        "IN PROGRESS",
        "NOT PERFORMED",
        "MEDIAN CYCLE",
        "PACKAGES",
        "SECURITY UPDATES",
    ]);
    for line in report {
        table.add_row(vec![
            printable(&line.pool),
            line.maintenances.to_string(),
            line.nodes_maintained.to_string(),
            line.succeeded.to_string(),
            line.failures.to_string(),
            line.in_progress.to_string(),
            line.not_performed.to_string(),
            line.median_cycle_seconds.map_or_else(
                || "-".to_owned(),
                |s| format_duration(jiff::SignedDuration::from_secs(s)),
            ),
            line.packages_changed.to_string(),
            line.security_updates_applied.to_string(),
        ]);
    }
    writeln!(out, "{}", table.trim_fmt())?;
    Ok(())
}

/// The report as JSON: the period and one object per pool.
pub fn print_report_json(
    out: &mut dyn Write,
    report: &[PoolReport],
    since: Timestamp,
) -> Result<()> {
    #[derive(Serialize)]
    struct Report<'a> {
        since: Timestamp,
        pools: &'a [PoolReport],
    }
    serde_json::to_writer_pretty(
        &mut *out,
        &Report {
            since,
            pools: report,
        },
    )?;
    writeln!(out)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csv_cells_are_quoted_and_defused() {
        assert_eq!(csv_cell("plain"), "plain");
        assert_eq!(csv_cell("a,b"), "\"a,b\"");
        assert_eq!(csv_cell("say \"hi\""), "\"say \"\"hi\"\"\"");
        assert_eq!(csv_cell("two\nlines"), "\"two\nlines\"");
        assert_eq!(csv_cell("=cmd()"), "'=cmd()");
        assert_eq!(csv_cell(""), "");
    }
}
