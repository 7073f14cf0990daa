//! The MaintenanceRecord writer: one record per maintenance, written by the leader.
//!
//! The controller's term hands every slot transition, with what it knew when it happened, to
//! [`write_records`], a task of the term: it applies the transition to the stored record
//! ([`rota_core::records::apply`], idempotent) and writes it back, in order, while the write
//! gate is open, so that a slow or failing API never holds up a controller pass. A failed write
//! is retried a few times, then given up with a log line and a metric: records are an audit
//! trail, never a reason to stop maintaining nodes. The same task deletes, now and then, the
//! records retention no longer keeps.
//!
//! A record's name is `<node>-<token>` ([`rota_core::records::record_name`]): the replica that
//! takes over after a failover continues the same object.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::{DeleteParams, ListParams, PostParams};
use kube::{Api, Client, ResourceExt};
use tokio::sync::mpsc;
use tracing::{debug, info, warn};

use crate::metrics::Metrics;
use crate::store::WriteGate;
use rota_core::clock::Clock;
use rota_core::records::{
    Kept, MaintenanceRecord, RecordContext, Retention, apply, record_name, start, to_prune,
};
use rota_core::slots::Transition;

/// Label on every record: its node (when the name fits a label value).
pub const NODE_LABEL: &str = "rota.dev/node";
/// Label on every record: its pool (when it has one that fits a label value).
pub const POOL_LABEL: &str = "rota.dev/pool";

/// Attempts of one record write before it is given up.
const ATTEMPTS: u32 = 4;
/// Pause before the first retry; doubled for each one after.
const FIRST_RETRY: Duration = Duration::from_millis(250);

/// Retention and pruning of the records.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RecordSettings {
    /// How many records to keep, and how long.
    pub retention: Retention,
    /// How often the leader prunes (and once when its term starts).
    pub prune_interval: Duration,
}

impl Default for RecordSettings {
    /// [`Retention::default`], pruned every 10 minutes.
    fn default() -> Self {
        RecordSettings {
            retention: Retention::default(),
            prune_interval: Duration::from_secs(600),
        }
    }
}

/// One transition to record, with what the controller knew when it happened.
#[derive(Clone, Debug)]
pub struct RecordJob {
    /// The transition (of a slot: it carries a fencing token).
    pub transition: Transition,
    /// The rest.
    pub context: RecordContext,
}

/// Writes the records of a term, in order, while `gate` is open; prunes every
/// `settings.prune_interval`. Ends when the term drops the sender.
pub async fn write_records(
    client: Client,
    gate: WriteGate,
    metrics: Metrics,
    clock: Arc<dyn Clock>,
    settings: RecordSettings,
    mut jobs: mpsc::UnboundedReceiver<RecordJob>,
) {
    let writer = Writer {
        api: Api::all(client),
        gate,
        metrics,
    };
    let mut prune = tokio::time::interval(settings.prune_interval.max(Duration::from_secs(1)));
    prune.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            biased;
            job = jobs.recv() => match job {
                Some(job) => writer.write(&job).await,
                None => return,
            },
            _ = prune.tick() => writer.prune(settings.retention, clock.now()).await,
        }
    }
}

struct Writer {
    api: Api<MaintenanceRecord>,
    gate: WriteGate,
    metrics: Metrics,
}

impl Writer {
    /// Applies the job to its record and writes it, retrying a few times.
    async fn write(&self, job: &RecordJob) {
        let transition = &job.transition;
        let Some(token) = transition.token else {
            return;
        };
        let name = record_name(&transition.node, token);
        let mut pause = FIRST_RETRY;
        for attempt in 1..=ATTEMPTS {
            if !self.gate.is_open() {
                return;
            }
            match self.write_once(&name, job).await {
                Ok(true) => {
                    self.metrics.record_written();
                    debug!(
                        record = name,
                        reason = transition.reason.as_str(),
                        "maintenance record written"
                    );
                    return;
                }
                Ok(false) => return,
                Err(error) if attempt < ATTEMPTS => {
                    debug!(record = name, attempt, %error, "maintenance record not written; retrying");
                    tokio::time::sleep(pause).await;
                    pause *= 2;
                }
                Err(error) => {
                    warn!(
                        record = name,
                        node = transition.node,
                        reason = transition.reason.as_str(),
                        %error,
                        "maintenance record not written; giving up on this transition"
                    );
                    self.metrics.record_failed("write");
                }
            }
        }
    }

    /// Reads the record, applies the transition and writes it back (at the `resourceVersion`
    /// read: a concurrent change is a conflict, retried from a fresh read). `Ok(false)` when
    /// nothing changed.
    async fn write_once(&self, name: &str, job: &RecordJob) -> Result<bool, kube::Error> {
        let (transition, context) = (&job.transition, &job.context);
        match self.api.get_opt(name).await? {
            Some(mut record) => {
                let before = record.spec.clone();
                apply(&mut record.spec, transition, context);
                if record.spec == before {
                    return Ok(false);
                }
                label(&mut record);
                self.api
                    .replace(name, &PostParams::default(), &record)
                    .await?;
                Ok(true)
            }
            None => {
                let Some(spec) = start(transition, context) else {
                    return Ok(false);
                };
                let mut record = MaintenanceRecord::new(name, spec);
                label(&mut record);
                self.api.create(&PostParams::default(), &record).await?;
                Ok(true)
            }
        }
    }

    /// Deletes the records retention no longer keeps.
    async fn prune(&self, retention: Retention, now: jiff::Timestamp) {
        if !self.gate.is_open() {
            return;
        }
        let listed = match self.api.list(&ListParams::default()).await {
            Ok(list) => list.items,
            Err(error) => {
                warn!(%error, "listing maintenance records to prune failed; trying again later");
                self.metrics.record_failed("prune");
                return;
            }
        };
        let kept: Vec<Kept> = listed
            .iter()
            .filter_map(|record| {
                let started = record
                    .spec
                    .phases
                    .admitted
                    .as_ref()
                    .or(record.metadata.creation_timestamp.as_ref())?;
                Some(Kept {
                    name: record.name_any(),
                    started: started.0,
                    ended: record.spec.phases.ended.as_ref().map(|Time(at)| *at),
                })
            })
            .collect();
        let doomed = to_prune(&kept, retention, now);
        let mut pruned = 0;
        for name in &doomed {
            if !self.gate.is_open() {
                break;
            }
            match self.api.delete(name, &DeleteParams::default()).await {
                Ok(_) => pruned += 1,
                Err(kube::Error::Api(status)) if status.code == 404 => {}
                Err(error) => {
                    warn!(record = name, %error, "deleting a maintenance record failed; trying again later");
                    self.metrics.record_failed("prune");
                    break;
                }
            }
        }
        if pruned > 0 {
            self.metrics.records_pruned(pruned);
            info!(
                pruned,
                left = listed.len() - pruned,
                keep = retention.keep,
                max_age = %retention.max_age,
                "pruned maintenance records"
            );
        }
    }
}

/// Labels the record with its node and pool, so that `kubectl get -l` and `rotactl` can select
/// them (values too long for a label are left out; the spec has them all).
fn label(record: &mut MaintenanceRecord) {
    let mut labels: BTreeMap<String, String> = record.labels().clone();
    for (key, value) in [
        (NODE_LABEL, Some(record.spec.node.as_str())),
        (POOL_LABEL, record.spec.pool.as_deref()),
    ] {
        match value {
            Some(v) if is_label_value(v) => {
                labels.insert(key.to_owned(), v.to_owned());
            }
            _ => {
                labels.remove(key);
            }
        }
    }
    record.metadata.labels = Some(labels);
}

/// Whether `value` may be a label value (at most 63 characters: alphanumerics, `-`, `_`, `.`,
/// starting and ending with an alphanumeric).
pub fn is_label_value(value: &str) -> bool {
    value.len() <= 63
        && value
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
        && value
            .bytes()
            .next()
            .is_some_and(|b| b.is_ascii_alphanumeric())
        && value
            .bytes()
            .last()
            .is_some_and(|b| b.is_ascii_alphanumeric())
}
