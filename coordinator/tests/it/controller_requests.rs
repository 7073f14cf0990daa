//! At steady state the controller's API requests per minute do not grow with the number of
//! nodes: it follows the cluster with watches (re-established every `watch_timeout`) and writes
//! only changes, however often the kubelets' heartbeats change the Nodes. Counted by a layer in
//! the coordinator's own kube clients; the numbers are printed.

use rota_core::clock::OffsetClock;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context as TaskContext, Poll};
use std::time::Duration;

use anyhow::Result;
use jiff::tz::TimeZone;
use jiff::{SignedDuration, Timestamp};
use k8s_openapi::api::core::v1::Node;
use k8s_openapi::api::policy::v1::{PodDisruptionBudget, PodDisruptionBudgetSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta, Time};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::client::ClientBuilder;
use rota_coordinator::kube_client::Clients;
use rota_core::model::Operation;
use rota_core::policy::crd::MaintenanceWindow;
use tokio::time::Instant;

use crate::controller_support::{Cluster, NS, Running, settings, spec, wait_until};

/// Counts the requests a client sends, and remembers what they were.
#[derive(Clone, Default)]
struct Counter {
    count: Arc<AtomicU64>,
    log: Arc<Mutex<Vec<String>>>,
}

impl Counter {
    fn count(&self) -> u64 {
        self.count.load(Ordering::SeqCst)
    }

    fn log_since(&self, from: usize) -> Vec<String> {
        self.log.lock().unwrap_or_else(PoisonError::into_inner)[from..].to_vec()
    }

    fn logged(&self) -> usize {
        self.log
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
    }
}

impl<S> tower::Layer<S> for Counter {
    type Service = Counting<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Counting {
            inner,
            counter: self.clone(),
        }
    }
}

#[derive(Clone)]
struct Counting<S> {
    inner: S,
    counter: Counter,
}

impl<S, B> tower::Service<http::Request<B>> for Counting<S>
where
    S: tower::Service<http::Request<B>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn poll_ready(&mut self, cx: &mut TaskContext<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        self.counter.count.fetch_add(1, Ordering::SeqCst);
        let path = request
            .uri()
            .path_and_query()
            .map_or_else(String::new, ToString::to_string);
        self.counter
            .log
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(format!("{} {path}", request.method()));
        self.inner.call(request)
    }
}

fn counting_clients(cluster: &Cluster, counter: &Counter) -> Result<Clients> {
    let build = |retry: bool| -> Result<kube::Client> {
        let mut config = cluster.kube_config()?;
        config.default_retry = retry;
        Ok(ClientBuilder::try_from(config)?.with_layer(counter).build())
    };
    Ok(Clients {
        default: build(true)?,
        eviction: build(false)?,
    })
}

struct Measurement {
    nodes: usize,
    sync_requests: u64,
    window_requests: u64,
    window: Duration,
    heartbeats: usize,
    requests: Vec<String>,
}

impl Measurement {
    fn per_minute(&self) -> f64 {
        self.window_requests as f64 * 60.0 / self.window.as_secs_f64()
    }
}

/// Watches are re-established every this many seconds, so that the window sees them.
const WATCH_TIMEOUT: u32 = 4;
const WINDOW: Duration = Duration::from_secs(12);
const HEARTBEAT: Duration = Duration::from_millis(500);

/// A cluster of `nodes` nodes with a pod each, half of them queued behind a closed window:
/// the requests the coordinator sends during [`WINDOW`] while every node heartbeats.
async fn measure(nodes: usize) -> Result<Measurement> {
    let cluster = Cluster::start(true).await?;
    let names: Vec<String> = (0..nodes).map(|i| format!("n{i:03}")).collect();
    for (i, name) in names.iter().enumerate() {
        cluster.add_node(name, &[("pool", "workers")])?;
        cluster.add_pod(&format!("web-{i}"), name, "web", 0)?;
    }
    cluster.store.create_as(&PodDisruptionBudget {
        metadata: ObjectMeta {
            namespace: Some(NS.into()),
            name: Some("web".into()),
            ..ObjectMeta::default()
        },
        spec: Some(PodDisruptionBudgetSpec {
            max_unavailable: Some(IntOrString::Int(1)),
            selector: Some(LabelSelector {
                match_labels: Some([("app".to_string(), "web".to_string())].into()),
                match_expressions: None,
            }),
            ..PodDisruptionBudgetSpec::default()
        }),
        status: None,
    })?;
    let opens = Timestamp::now()
        .checked_add(SignedDuration::from_hours(12))?
        .to_zoned(TimeZone::UTC);
    let mut policy = spec("workers");
    policy.windows = vec![MaintenanceWindow {
        days: Vec::new(),
        start: opens.strftime("%H:%M").to_string(),
        end: (opens.checked_add(SignedDuration::from_hours(1))?)
            .strftime("%H:%M")
            .to_string(),
        time_zone: Some("UTC".into()),
    }];
    cluster.create_policy("workers", policy)?;

    let counter = Counter::default();
    let mut settings = settings();
    settings.pass_interval = Duration::from_millis(50);
    settings.cache.watch_timeout = Some(WATCH_TIMEOUT);
    let coordinator = Running::start_with(
        counting_clients(&cluster, &counter)?,
        settings,
        Arc::new(OffsetClock::default()),
    )
    .await?;
    for (i, name) in names.iter().enumerate() {
        coordinator.report(name, &format!("{name}-boot-1")).await?;
        if i % 2 == 0 {
            coordinator.request(name, Operation::Reboot).await?;
        }
    }
    let queued = nodes.div_ceil(2);
    wait_until("the policy status", Duration::from_secs(20), || {
        let status = cluster.policy("workers").ok()?.status?;
        let waiting = usize::try_from(status.waiting).ok()?;
        (waiting == queued && status.nodes == i32::try_from(nodes).ok()?).then_some(())
    })
    .await?;
    // The queue's Events (one `SlotQueued` per request) may be posted after the status that
    // shows the queue: the start-up is over once they are all in, and then the steady state
    // begins.
    wait_until("the queue's Events", Duration::from_secs(20), || {
        let posted = names
            .iter()
            .filter(|n| {
                cluster
                    .events_about(n)
                    .iter()
                    .any(|(reason, _)| reason == "SlotQueued")
            })
            .count();
        (posted == queued).then_some(())
    })
    .await?;
    let sync_requests = counter.count();

    let start = counter.count();
    let logged = counter.logged();
    let began = Instant::now();
    let mut heartbeats = 0;
    while began.elapsed() < WINDOW {
        let beat = Time(Timestamp::now());
        for name in &names {
            cluster.store.modify_status_as::<Node>(None, name, |n| {
                if let Some(conditions) = n.status.as_mut().and_then(|s| s.conditions.as_mut()) {
                    for c in conditions.iter_mut() {
                        c.last_heartbeat_time = Some(beat.clone());
                    }
                }
            })?;
        }
        heartbeats += 1;
        tokio::time::sleep(HEARTBEAT).await;
    }
    let window = began.elapsed();
    let window_requests = counter.count() - start;
    let requests = counter.log_since(logged);
    coordinator.stop().await?;
    Ok(Measurement {
        nodes,
        sync_requests,
        window_requests,
        window,
        heartbeats,
        requests,
    })
}

#[tokio::test]
async fn steady_state_requests_per_minute_do_not_grow_with_nodes() -> Result<()> {
    let small = measure(10).await?;
    let large = measure(100).await?;
    for m in [&small, &large] {
        println!(
            "{:>3} nodes: {} requests to list and settle; steady state {} requests in {:.1} s \
             ({:.0}/min) while {} heartbeat rounds changed every Node",
            m.nodes,
            m.sync_requests,
            m.window_requests,
            m.window.as_secs_f64(),
            m.per_minute(),
            m.heartbeats
        );
    }
    println!("requests of the 100-node window: {:#?}", large.requests);
    assert!(
        large
            .requests
            .iter()
            .all(|r| r.starts_with("GET ") && r.contains("watch=true")),
        "at steady state only watches are (re-)established: {:#?}",
        large.requests
    );
    // Five watches re-established every few seconds; a node-proportional cost would be
    // hundreds of requests here (100 nodes × 24 heartbeats).
    let slack = 6;
    assert!(
        large.window_requests <= small.window_requests + slack,
        "requests grow with nodes: {} for 10 nodes, {} for 100",
        small.window_requests,
        large.window_requests
    );
    assert!(
        large.window_requests > 0,
        "the watches are re-established in the window"
    );
    Ok(())
}
