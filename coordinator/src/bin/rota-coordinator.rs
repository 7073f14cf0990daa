//! `rota-coordinator`: wires the library's pieces together and runs them until a signal.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use rota_coordinator::auth::TokenReviewAuthenticator;
use rota_coordinator::config::Config;
use rota_coordinator::grpc::{AgentGrpc, Authenticator};
use rota_coordinator::http::{self, Readiness};
use rota_coordinator::kube_client::Clients;
use rota_coordinator::leader::{CoreGate, LeaderElector, Leadership};
use rota_coordinator::metrics::{MeteredGrpc, Metrics};
use rota_coordinator::shutdown;
use rota_coordinator::telemetry;
use tokio::net::TcpListener;
use tokio::task::JoinSet;
use tokio_stream::wrappers::TcpListenerStream;
use tokio_util::sync::CancellationToken;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let config = Config::parse();
    telemetry::init(config.log.log_format, config.log.log_filter.as_deref())?;
    let stop = CancellationToken::new();
    let signals = shutdown::signals()?;
    let grace = config.shutdown.shutdown_grace;
    shutdown::run_until_signalled(run(config, stop.clone()), stop, signals, grace).await?
}

/// Starts every task, and supervises them: one that ends before `stop` is a failure that
/// stops the others and the process.
async fn run(config: Config, stop: CancellationToken) -> anyhow::Result<()> {
    let clients = Clients::load(&config.kube.source())
        .await
        .context("connecting to the Kubernetes API")?;
    let metrics = Metrics::new();
    let http_listener = TcpListener::bind(config.listen.http_addr)
        .await
        .with_context(|| format!("binding the HTTP address {}", config.listen.http_addr))?;
    let grpc_listener = TcpListener::bind(config.listen.grpc_addr)
        .await
        .with_context(|| format!("binding the gRPC address {}", config.listen.grpc_addr))?;
    tracing::info!(
        http = %config.listen.http_addr,
        grpc = %config.listen.grpc_addr,
        identity = %config.identity.pod_name,
        "rota-coordinator starting"
    );

    let mut tasks = JoinSet::new();
    let leadership = if config.election.leader_elect {
        let (elector, leadership) = LeaderElector::new(clients.default.clone(), config.election())?;
        let stopped = stop.clone().cancelled_owned();
        tasks.spawn(async move {
            elector.run(stopped).await;
            ("leader election", Ok(()))
        });
        leadership
    } else {
        Leadership::unconditional()
    };
    let readiness = Readiness::new(leadership.clone());
    let agents = CoreGate::new();
    let authenticator = TokenReviewAuthenticator::new(
        clients.default.clone(),
        config.agent_identity(),
        config.token_cache(),
    );

    let router = http::router(metrics.clone(), readiness.clone());
    let stopped = stop.clone().cancelled_owned();
    tasks.spawn(async move {
        let served = http::serve(http_listener, router, stopped).await;
        ("HTTP server", served.context("serving HTTP"))
    });
    let (gate, served_metrics, stopped) = (agents.clone(), metrics.clone(), stop.clone());
    tasks.spawn(async move {
        let served =
            serve_agents(gate, authenticator, served_metrics, grpc_listener, stopped).await;
        ("gRPC server", served)
    });
    tasks.spawn({
        let (leadership, metrics, stop) = (leadership.clone(), metrics.clone(), stop.clone());
        async move {
            tokio::select! {
                () = export_leadership(leadership, metrics) => {}
                () = stop.cancelled() => {}
            }
            ("leader gauge", Ok(()))
        }
    });
    // The controller loop (`coordinator/src/controller`) plugs in here, as one more task: it
    // gets `clients`, `metrics`, `leadership`, `readiness` and `agents`; while it leads it
    // installs its AgentCore with `agents.install(..)` (dropping the guard when leadership is
    // lost) and calls `readiness.set_synced(true)` once its caches are synced. Until then no
    // replica is ready and agents get UNAVAILABLE.

    supervise(tasks, stop, config.shutdown.shutdown_grace).await
}

/// Waits for every task; the first one that ends (or fails) before `stop` is cancelled stops
/// the rest, bounded by `grace`.
async fn supervise(
    mut tasks: JoinSet<(&'static str, anyhow::Result<()>)>,
    stop: CancellationToken,
    grace: Duration,
) -> anyhow::Result<()> {
    let mut failure = None;
    while let Some(joined) = tasks.join_next().await {
        let outcome = match joined {
            Ok((_, Ok(()))) if stop.is_cancelled() => continue,
            Ok((name, Ok(()))) => anyhow::anyhow!("{name} ended unexpectedly"),
            Ok((name, Err(e))) => e.context(format!("{name} failed")),
            Err(e) => anyhow::anyhow!("a task panicked or was aborted: {e}"),
        };
        tracing::error!(error = format!("{outcome:#}"), "stopping");
        failure.get_or_insert(outcome);
        stop.cancel();
        if tokio::time::timeout(grace, async { while tasks.join_next().await.is_some() {} })
            .await
            .is_err()
        {
            tracing::error!("tasks did not stop within the grace period");
        }
        break;
    }
    failure.map_or(Ok(()), Err)
}

/// Serves `rota.v1.Agent` through `gate`, metered, until `stop`; then ends the `WatchSlot`
/// streams and drains the connections.
async fn serve_agents<A: Authenticator>(
    gate: CoreGate,
    authenticator: A,
    metrics: Metrics,
    listener: TcpListener,
    stop: CancellationToken,
) -> anyhow::Result<()> {
    let agent = AgentGrpc::new(Arc::new(gate), authenticator);
    let streams = agent.shutdown_handle();
    tonic::transport::Server::builder()
        .http2_keepalive_interval(Some(Duration::from_secs(30)))
        .http2_keepalive_timeout(Some(Duration::from_secs(10)))
        .add_service(MeteredGrpc::new(agent.into_service(), metrics))
        .serve_with_incoming_shutdown(TcpListenerStream::new(listener), async move {
            stop.cancelled().await;
            streams.shutdown();
        })
        .await
        .context("serving gRPC")
}

/// Keeps `rota_leader` equal to this replica's leadership.
async fn export_leadership(leadership: Leadership, metrics: Metrics) {
    let mut changes = leadership.subscribe();
    loop {
        metrics.set_leader(changes.borrow_and_update().is_leader());
        if changes.changed().await.is_err() {
            metrics.set_leader(false);
            return;
        }
    }
}
