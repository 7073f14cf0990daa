//! The coordinator's Prometheus metrics (`rota_*`), and a tower wrapper that counts and times
//! the agents' gRPC calls.
//!
//! Families (per-pool ones are labelled `pool`, the MaintenancePolicy's name):
//!
//! | metric | type | labels | meaning |
//! |---|---|---|---|
//! | `rota_slots_held` | gauge | pool | nodes holding a maintenance slot (draining, granted, verifying, failed) |
//! | `rota_slots_queued` | gauge | pool | nodes waiting for a slot |
//! | `rota_drains_in_progress` | gauge | pool | drains running now |
//! | `rota_evictions_total` | counter | pool | evictions accepted by the API server |
//! | `rota_evictions_blocked_total` | counter | pool | evictions refused because of a PodDisruptionBudget (HTTP 429) |
//! | `rota_maintenance_outcomes_total` | counter | pool, operation, outcome | finished maintenances: `outcome` is `done` or `failed` |
//! | `rota_pool_paused` | gauge | pool | 1 while the pool's rollout is paused (by a human or the circuit breaker) |
//! | `rota_pool_circuit_open` | gauge | pool | 1 while the circuit breaker holds the pool (too many failures) |
//! | `rota_rollout_nodes_done` | gauge | pool | nodes of the rollout finished |
//! | `rota_rollout_nodes_total` | gauge | pool | nodes the rollout covers |
//! | `rota_kubernetes_upgrade_phase` | gauge | pool, phase | 1 for the phase the pool's Kubernetes upgrade rollout is in (`PreFlight`, `PreflightFailed`, `Refused`, `ControlPlane`, `Workers`, `Verifying`, `Verified`), 0 for the others |
//! | `rota_slot_leases_expired_total` | counter | pool | slot leases that expired while held (the agent stopped renewing) |
//! | `rota_leader` | gauge | | 1 while this replica leads |
//! | `rota_grpc_requests_total` | counter | method, code | agents' gRPC calls by method and final status code |
//! | `rota_grpc_request_duration_seconds` | histogram | method | duration of a call until its final status (for the `WatchSlot` stream: its lifetime) |
//! | `rota_ledger_mismatches_total` | counter | reason | nodes whose `rota.dev/` slot annotations disagreed with their ledger object when the leader loaded the ledger, and were not adopted but repaired: `differs` (forged, replayed or stale), and in the one-time migration from annotations `unreadable`, `not_issued` (a token above the fencing counter), `reused` (a token named by two nodes) |
//! | `rota_fleetlock_requests_total` | counter | endpoint, group, result | FleetLock requests (`pre-reboot`, `steady-state`) by result: `ok` or the protocol error kind; `group` is empty until the caller proved it belongs to a configured group |
//! | `rota_maintenance_records_written_total` | counter | | MaintenanceRecords created or updated |
//! | `rota_maintenance_records_pruned_total` | counter | | MaintenanceRecords deleted by retention (count and age) |
//! | `rota_maintenance_record_failures_total` | counter | action | MaintenanceRecord writes given up after retries (`write`), and prune rounds that failed (`prune`) |
//! | `rota_grpc_auth_refusals_total` | counter | reason | calls and connections the gRPC edge refused before any handler ran: `unauthenticated` (bad, unknown or foreign credential), `throttled` (too many new tokens to review), `unavailable` (the TokenReview API failed), `busy` (over the concurrent-call limit), `connections` (over the connection cap) |

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::future::BoxFuture;
use http_body::{Body, Frame, SizeHint};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::{Registry, Unit};
use tonic::Code;
use tonic::codegen::Service;
use tonic::server::NamedService;

use rota_core::model::Operation;

/// The content type of [`Metrics::encode`]'s output.
pub const OPENMETRICS_CONTENT_TYPE: &str =
    "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Labels of per-pool families.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PoolLabels {
    pool: String,
}

/// Labels of a pool's Kubernetes upgrade phase.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PhaseLabels {
    pool: String,
    phase: String,
}

/// Labels of maintenance outcomes.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabels {
    pool: String,
    operation: String,
    outcome: &'static str,
}

/// Labels of gRPC request counts.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct GrpcLabels {
    method: String,
    code: String,
}

/// Labels of the edge's refusals.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabels {
    reason: &'static str,
}

/// Labels of failed record work.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ActionLabels {
    action: &'static str,
}

/// Labels of gRPC durations.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct MethodLabels {
    method: String,
}

/// How a maintenance ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Verified healthy; the slot was released.
    Done,
    /// Declared failed (the slot stays held).
    Failed,
}

impl Outcome {
    fn as_str(self) -> &'static str {
        match self {
            Outcome::Done => "done",
            Outcome::Failed => "failed",
        }
    }
}

type HistogramFamily<L> = Family<L, Histogram, fn() -> Histogram>;

fn grpc_histogram() -> Histogram {
    // 1 ms to ~33 s; a WatchSlot stream that lives longer lands in +Inf.
    Histogram::new(exponential_buckets(0.001, 2.0, 16))
}

struct Families {
    registry: Registry,
    slots_held: Family<PoolLabels, Gauge>,
    slots_queued: Family<PoolLabels, Gauge>,
    drains_in_progress: Family<PoolLabels, Gauge>,
    evictions: Family<PoolLabels, Counter>,
    evictions_blocked: Family<PoolLabels, Counter>,
    outcomes: Family<OutcomeLabels, Counter>,
    pool_paused: Family<PoolLabels, Gauge>,
    circuit_open: Family<PoolLabels, Gauge>,
    kubernetes_phase: Family<PhaseLabels, Gauge>,
    rollout_done: Family<PoolLabels, Gauge>,
    rollout_total: Family<PoolLabels, Gauge>,
    leases_expired: Family<PoolLabels, Counter>,
    leader: Gauge,
    grpc_requests: Family<GrpcLabels, Counter>,
    grpc_duration: HistogramFamily<MethodLabels>,
    grpc_refusals: Family<ReasonLabels, Counter>,
    ledger_mismatches: Family<ReasonLabels, Counter>,
    fleetlock_requests: Family<FleetLockLabels, Counter>,
    records_written: Counter,
    records_pruned: Counter,
    record_failures: Family<ActionLabels, Counter>,
}

/// Labels of FleetLock requests.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct FleetLockLabels {
    endpoint: &'static str,
    group: String,
    result: &'static str,
}

/// The coordinator's metrics; clones share them. Every setter is cheap and never fails.
#[derive(Clone)]
pub struct Metrics {
    inner: Arc<Families>,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// A registry holding every `rota_*` family, all empty (the leader gauge at 0).
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("rota");
        let slots_held = Family::<PoolLabels, Gauge>::default();
        registry.register(
            "slots_held",
            "Nodes holding a maintenance slot (draining, granted, verifying or failed)",
            slots_held.clone(),
        );
        let slots_queued = Family::<PoolLabels, Gauge>::default();
        registry.register(
            "slots_queued",
            "Nodes waiting for a slot",
            slots_queued.clone(),
        );
        let drains_in_progress = Family::<PoolLabels, Gauge>::default();
        registry.register(
            "drains_in_progress",
            "Drains running now",
            drains_in_progress.clone(),
        );
        let evictions = Family::<PoolLabels, Counter>::default();
        registry.register(
            "evictions",
            "Pod evictions accepted by the API server",
            evictions.clone(),
        );
        let evictions_blocked = Family::<PoolLabels, Counter>::default();
        registry.register(
            "evictions_blocked",
            "Pod evictions refused because of a PodDisruptionBudget",
            evictions_blocked.clone(),
        );
        let outcomes = Family::<OutcomeLabels, Counter>::default();
        registry.register(
            "maintenance_outcomes",
            "Finished maintenances by pool, operation and outcome (done or failed)",
            outcomes.clone(),
        );
        let pool_paused = Family::<PoolLabels, Gauge>::default();
        registry.register(
            "pool_paused",
            "1 while the pool's rollout is paused",
            pool_paused.clone(),
        );
        let circuit_open = Family::<PoolLabels, Gauge>::default();
        registry.register(
            "pool_circuit_open",
            "1 while the pool's circuit breaker is open after too many failures",
            circuit_open.clone(),
        );
        let kubernetes_phase = Family::<PhaseLabels, Gauge>::default();
        registry.register(
            "kubernetes_upgrade_phase",
            "1 for the phase the pool's Kubernetes upgrade rollout is in, 0 for the others",
            kubernetes_phase.clone(),
        );
        let rollout_done = Family::<PoolLabels, Gauge>::default();
        registry.register(
            "rollout_nodes_done",
            "Nodes of the pool's rollout that are finished",
            rollout_done.clone(),
        );
        let rollout_total = Family::<PoolLabels, Gauge>::default();
        registry.register(
            "rollout_nodes_total",
            "Nodes the pool's rollout covers",
            rollout_total.clone(),
        );
        let leases_expired = Family::<PoolLabels, Counter>::default();
        registry.register(
            "slot_leases_expired",
            "Slot leases that expired while held (the agent stopped renewing)",
            leases_expired.clone(),
        );
        let leader = Gauge::default();
        registry.register("leader", "1 while this replica leads", leader.clone());
        let grpc_requests = Family::<GrpcLabels, Counter>::default();
        registry.register(
            "grpc_requests",
            "Agents' gRPC calls by method and final status code",
            grpc_requests.clone(),
        );
        let grpc_duration: HistogramFamily<MethodLabels> =
            Family::new_with_constructor(grpc_histogram);
        registry.register_with_unit(
            "grpc_request_duration",
            "Duration of agents' gRPC calls until their final status",
            Unit::Seconds,
            grpc_duration.clone(),
        );
        let grpc_refusals = Family::<ReasonLabels, Counter>::default();
        registry.register(
            "grpc_auth_refusals",
            "Calls and connections the agents' gRPC edge refused before any handler ran, by reason",
            grpc_refusals.clone(),
        );
        let ledger_mismatches = Family::<ReasonLabels, Counter>::default();
        registry.register(
            "ledger_mismatches",
            "Nodes whose slot annotations disagreed with their ledger object on load (not adopted, repaired), by reason",
            ledger_mismatches.clone(),
        );
        let fleetlock_requests = Family::<FleetLockLabels, Counter>::default();
        registry.register(
            "fleetlock_requests",
            "FleetLock requests by endpoint, group and result (ok or the protocol error kind)",
            fleetlock_requests.clone(),
        );
        let records_written = Counter::default();
        registry.register(
            "maintenance_records_written",
            "MaintenanceRecords created or updated",
            records_written.clone(),
        );
        let records_pruned = Counter::default();
        registry.register(
            "maintenance_records_pruned",
            "MaintenanceRecords deleted by retention",
            records_pruned.clone(),
        );
        let record_failures = Family::<ActionLabels, Counter>::default();
        registry.register(
            "maintenance_record_failures",
            "MaintenanceRecord writes given up after retries (write) and failed prune rounds (prune)",
            record_failures.clone(),
        );
        Metrics {
            inner: Arc::new(Families {
                registry,
                slots_held,
                slots_queued,
                drains_in_progress,
                evictions,
                evictions_blocked,
                outcomes,
                pool_paused,
                circuit_open,
                kubernetes_phase,
                rollout_done,
                rollout_total,
                leases_expired,
                leader,
                grpc_requests,
                grpc_duration,
                grpc_refusals,
                ledger_mismatches,
                fleetlock_requests,
                records_written,
                records_pruned,
                record_failures,
            }),
        }
    }

    /// Everything in the OpenMetrics text format ([`OPENMETRICS_CONTENT_TYPE`]).
    pub fn encode(&self) -> Result<String, std::fmt::Error> {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.inner.registry)?;
        Ok(out)
    }

    /// Slots held and requests queued in `pool` now.
    pub fn set_slots(&self, pool: &str, held: usize, queued: usize) {
        let labels = pool_labels(pool);
        self.inner
            .slots_held
            .get_or_create(&labels)
            .set(gauge_value(held));
        self.inner
            .slots_queued
            .get_or_create(&labels)
            .set(gauge_value(queued));
    }

    /// Drains running in `pool` now.
    pub fn set_drains_in_progress(&self, pool: &str, drains: usize) {
        self.inner
            .drains_in_progress
            .get_or_create(&pool_labels(pool))
            .set(gauge_value(drains));
    }

    /// One eviction accepted.
    pub fn eviction(&self, pool: &str) {
        self.inner.evictions.get_or_create(&pool_labels(pool)).inc();
    }

    /// One eviction refused by a PodDisruptionBudget.
    pub fn eviction_blocked(&self, pool: &str) {
        self.inner
            .evictions_blocked
            .get_or_create(&pool_labels(pool))
            .inc();
    }

    /// A maintenance of `operation` in `pool` ended with `outcome`.
    pub fn maintenance_outcome(&self, pool: &str, operation: &Operation, outcome: Outcome) {
        self.inner
            .outcomes
            .get_or_create(&OutcomeLabels {
                pool: pool.to_owned(),
                operation: operation.name().to_owned(),
                outcome: outcome.as_str(),
            })
            .inc();
    }

    /// Whether `pool`'s rollout is paused, and whether its circuit breaker is open.
    pub fn set_pool_state(&self, pool: &str, paused: bool, circuit_open: bool) {
        let labels = pool_labels(pool);
        self.inner
            .pool_paused
            .get_or_create(&labels)
            .set(i64::from(paused));
        self.inner
            .circuit_open
            .get_or_create(&labels)
            .set(i64::from(circuit_open));
    }

    /// `pool`'s Kubernetes upgrade rollout is in `phase` (`None`: the pool has no target).
    pub fn set_kubernetes_upgrade_phase(&self, pool: &str, phase: Option<&str>) {
        for each in rota_core::upgrade::Phase::ALL {
            let labels = PhaseLabels {
                pool: pool.to_owned(),
                phase: each.as_str().to_owned(),
            };
            match phase {
                Some(now) => {
                    self.inner
                        .kubernetes_phase
                        .get_or_create(&labels)
                        .set(i64::from(now == each.as_str()));
                }
                None => {
                    self.inner.kubernetes_phase.remove(&labels);
                }
            }
        }
    }

    /// `done` of `total` nodes of `pool`'s rollout are finished.
    pub fn set_rollout_progress(&self, pool: &str, done: usize, total: usize) {
        let labels = pool_labels(pool);
        self.inner
            .rollout_done
            .get_or_create(&labels)
            .set(gauge_value(done));
        self.inner
            .rollout_total
            .get_or_create(&labels)
            .set(gauge_value(total));
    }

    /// A slot lease in `pool` expired while held.
    pub fn lease_expired(&self, pool: &str) {
        self.inner
            .leases_expired
            .get_or_create(&pool_labels(pool))
            .inc();
    }

    /// Whether this replica leads.
    pub fn set_leader(&self, leader: bool) {
        self.inner.leader.set(i64::from(leader));
    }

    /// Drops every series of a pool that no longer exists (its policy was deleted), so that
    /// its gauges do not report stale values forever.
    pub fn forget_pool(&self, pool: &str) {
        let labels = pool_labels(pool);
        let f = &self.inner;
        for family in [
            &f.slots_held,
            &f.slots_queued,
            &f.drains_in_progress,
            &f.pool_paused,
            &f.circuit_open,
            &f.rollout_done,
            &f.rollout_total,
        ] {
            family.remove(&labels);
        }
        for family in [&f.evictions, &f.evictions_blocked, &f.leases_expired] {
            family.remove(&labels);
        }
        self.set_kubernetes_upgrade_phase(pool, None);
    }

    /// A node's slot annotations disagreed with its ledger object on load, for `reason` (a
    /// fixed label).
    pub fn ledger_mismatch(&self, reason: &'static str) {
        self.inner
            .ledger_mismatches
            .get_or_create(&ReasonLabels { reason })
            .inc();
    }

    /// A FleetLock request to `endpoint` ended with `result` (`ok` or a protocol error kind);
    /// `group` only once the caller proved it belongs to it (else empty), so that callers
    /// cannot grow the label set.
    pub fn fleetlock_request(&self, endpoint: &'static str, group: &str, result: &'static str) {
        self.inner
            .fleetlock_requests
            .get_or_create(&FleetLockLabels {
                endpoint,
                group: group.to_owned(),
                result,
            })
            .inc();
    }

    /// A MaintenanceRecord was created or updated.
    pub fn record_written(&self) {
        self.inner.records_written.inc();
    }

    /// `n` MaintenanceRecords were deleted by retention.
    pub fn records_pruned(&self, n: usize) {
        self.inner
            .records_pruned
            .inc_by(u64::try_from(n).unwrap_or(u64::MAX));
    }

    /// A MaintenanceRecord write was given up (`"write"`) or a prune round failed
    /// (`"prune"`).
    pub fn record_failed(&self, action: &'static str) {
        self.inner
            .record_failures
            .get_or_create(&ActionLabels { action })
            .inc();
    }

    /// The gRPC edge refused a call or connection for `reason` (a fixed label).
    pub fn grpc_refused(&self, reason: &'static str) {
        self.inner
            .grpc_refusals
            .get_or_create(&ReasonLabels { reason })
            .inc();
    }

    /// One gRPC call of `method` ended with `code` after `elapsed`.
    pub fn grpc_request(&self, method: &str, code: Code, elapsed: Duration) {
        self.inner
            .grpc_requests
            .get_or_create(&GrpcLabels {
                method: method.to_owned(),
                code: format!("{code:?}"),
            })
            .inc();
        self.inner
            .grpc_duration
            .get_or_create(&MethodLabels {
                method: method.to_owned(),
            })
            .observe(elapsed.as_secs_f64());
    }
}

fn pool_labels(pool: &str) -> PoolLabels {
    PoolLabels {
        pool: pool.to_owned(),
    }
}

fn gauge_value(n: usize) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

/// Wraps a tonic service (e.g. `AgentGrpc::into_service()`) to record
/// `rota_grpc_requests_total` and `rota_grpc_request_duration_seconds` for every call. The
/// final status is read where gRPC puts it: the response headers of a trailers-only response,
/// else the trailers at the end of the body; a call whose body is dropped early (the client
/// went away) counts as `Cancelled`.
#[derive(Clone, Debug)]
pub struct MeteredGrpc<S> {
    inner: S,
    metrics: Metrics,
}

impl<S> MeteredGrpc<S> {
    /// Meters `inner` into `metrics`.
    pub fn new(inner: S, metrics: Metrics) -> Self {
        MeteredGrpc { inner, metrics }
    }
}

impl<S: NamedService> NamedService for MeteredGrpc<S> {
    const NAME: &'static str = S::NAME;
}

impl<S, ReqBody, ResBody> Service<http::Request<ReqBody>> for MeteredGrpc<S>
where
    S: Service<http::Request<ReqBody>, Response = http::Response<ResBody>>,
    S::Future: Send + 'static,
    ResBody: Body,
{
    type Response = http::Response<MeteredBody<ResBody>>;
    type Error = S::Error;
    type Future = BoxFuture<'static, Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<ReqBody>) -> Self::Future {
        let method = request
            .uri()
            .path()
            .rsplit('/')
            .next()
            .unwrap_or_default()
            .to_owned();
        let mut call = Call {
            metrics: self.metrics.clone(),
            method,
            started: Instant::now(),
            done: false,
        };
        let response = self.inner.call(request);
        Box::pin(async move {
            let response = response.await?;
            let (parts, body) = response.into_parts();
            if let Some(code) = grpc_status(&parts.headers) {
                call.finish(code);
            }
            Ok(http::Response::from_parts(
                parts,
                MeteredBody { inner: body, call },
            ))
        })
    }
}

/// One call being metered; records exactly once.
#[derive(Debug)]
struct Call {
    metrics: Metrics,
    method: String,
    started: Instant,
    done: bool,
}

impl Call {
    fn finish(&mut self, code: Code) {
        if std::mem::replace(&mut self.done, true) {
            return;
        }
        // Unknown paths get UNIMPLEMENTED: one label value for all of them keeps a client
        // from creating series at will.
        let method = if code == Code::Unimplemented {
            "unknown"
        } else {
            self.method.as_str()
        };
        self.metrics
            .grpc_request(method, code, self.started.elapsed());
    }
}

impl Drop for Call {
    fn drop(&mut self) {
        self.finish(Code::Cancelled);
    }
}

fn grpc_status(headers: &http::HeaderMap) -> Option<Code> {
    let value = headers.get("grpc-status")?.to_str().ok()?;
    value.parse::<i32>().ok().map(Code::from_i32)
}

/// A response body that records the call's status when its trailers pass.
#[derive(Debug)]
pub struct MeteredBody<B> {
    inner: B,
    call: Call,
}

impl<B: Body<Data = Bytes> + Unpin> Body for MeteredBody<B> {
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let this = &mut *self;
        let polled = Pin::new(&mut this.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(code) = frame.trailers_ref().and_then(grpc_status) {
                    this.call.finish(code);
                }
            }
            Poll::Ready(Some(Err(_))) => this.call.finish(Code::Internal),
            Poll::Ready(None) => this.call.finish(Code::Unknown),
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rota_core::model::Operation;

    #[test]
    fn families_are_named_rota_and_typed() {
        let m = Metrics::new();
        m.set_slots("workers", 2, 5);
        m.set_drains_in_progress("workers", 1);
        m.eviction("workers");
        m.eviction_blocked("workers");
        m.maintenance_outcome("workers", &Operation::Reboot, Outcome::Done);
        m.maintenance_outcome("workers", &Operation::Reboot, Outcome::Failed);
        m.set_pool_state("workers", true, false);
        m.set_rollout_progress("workers", 3, 10);
        m.lease_expired("workers");
        m.set_leader(true);
        m.grpc_request("RequestSlot", Code::Ok, Duration::from_millis(3));
        m.record_written();
        m.records_pruned(3);
        m.record_failed("write");
        let text = m.encode().unwrap();
        for expected in [
            "# TYPE rota_slots_held gauge",
            "rota_slots_held{pool=\"workers\"} 2",
            "rota_slots_queued{pool=\"workers\"} 5",
            "rota_drains_in_progress{pool=\"workers\"} 1",
            "# TYPE rota_evictions counter",
            "rota_evictions_total{pool=\"workers\"} 1",
            "rota_evictions_blocked_total{pool=\"workers\"} 1",
            "rota_maintenance_outcomes_total{pool=\"workers\",operation=\"reboot\",outcome=\"done\"} 1",
            "rota_maintenance_outcomes_total{pool=\"workers\",operation=\"reboot\",outcome=\"failed\"} 1",
            "rota_pool_paused{pool=\"workers\"} 1",
            "rota_pool_circuit_open{pool=\"workers\"} 0",
            "rota_rollout_nodes_done{pool=\"workers\"} 3",
            "rota_rollout_nodes_total{pool=\"workers\"} 10",
            "rota_slot_leases_expired_total{pool=\"workers\"} 1",
            "rota_leader 1",
            "rota_grpc_requests_total{method=\"RequestSlot\",code=\"Ok\"} 1",
            "# TYPE rota_grpc_request_duration_seconds histogram",
            "rota_grpc_request_duration_seconds_count{method=\"RequestSlot\"} 1",
            "rota_maintenance_records_written_total 1",
            "rota_maintenance_records_pruned_total 3",
            "rota_maintenance_record_failures_total{action=\"write\"} 1",
        ] {
            assert!(text.contains(expected), "missing {expected:?} in\n{text}");
        }
        assert!(text.ends_with("# EOF\n"));
    }

    #[test]
    fn a_forgotten_pool_disappears() {
        let m = Metrics::new();
        m.set_slots("gone", 1, 1);
        m.eviction("gone");
        m.set_slots("kept", 1, 0);
        m.forget_pool("gone");
        let text = m.encode().unwrap();
        assert!(!text.contains("pool=\"gone\""), "{text}");
        assert!(text.contains("pool=\"kept\""), "{text}");
    }

    #[test]
    fn a_call_records_once() {
        let m = Metrics::new();
        let mut call = Call {
            metrics: m.clone(),
            method: "Renew".into(),
            started: Instant::now(),
            done: false,
        };
        call.finish(Code::FailedPrecondition);
        drop(call);
        let text = m.encode().unwrap();
        assert!(
            text.contains(
                "rota_grpc_requests_total{method=\"Renew\",code=\"FailedPrecondition\"} 1"
            )
        );
        assert!(!text.contains("Cancelled"), "{text}");
    }
}
