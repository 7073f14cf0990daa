//! `rota-coordinator`: wires the library's pieces together and runs them until a signal.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use futures::Stream;
use k8s_openapi::api::core::v1::Node;
use kube::Api;
use rota_coordinator::auth::TokenReviewAuthenticator;
use rota_coordinator::config::Config;
use rota_coordinator::controller::Coordinator;
use rota_coordinator::core_gate::CoreGate;
use rota_coordinator::events::EventSink;
use rota_coordinator::grpc::{AgentGrpc, Authenticator};
use rota_coordinator::handover::{self, Handover};
use rota_coordinator::http::{self, Readiness};
use rota_coordinator::kube_client::Clients;
use rota_coordinator::leader::{LeaderElector, Leadership};
use rota_coordinator::metrics::{MeteredGrpc, Metrics};
use rota_coordinator::notify::Notifier;
use rota_coordinator::{shutdown, telemetry, tls};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio_stream::wrappers::TcpListenerStream;
use tokio_util::sync::CancellationToken;
use tonic::transport::server::Connected;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let config = Config::parse();
    telemetry::init(config.log.log_format, config.log.log_filter.as_deref())?;
    let stop = CancellationToken::new();
    let signals = shutdown::signals()?;
    let grace = config.shutdown.shutdown_grace;
    shutdown::run_until_signalled(run(config, stop.clone()), stop, signals, grace).await?
}

type Tasks = JoinSet<(&'static str, anyhow::Result<()>)>;

/// Starts every task, and supervises them: one that ends before `stop` is a failure that
/// stops the others and the process.
async fn run(config: Config, stop: CancellationToken) -> anyhow::Result<()> {
    let namespace = config.identity.namespace.clone();
    let identity = config.identity.pod_name.clone();
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
    let server_tls = if config.tls.grpc_insecure_plaintext {
        tracing::warn!(
            "serving gRPC WITHOUT TLS (--grpc-insecure-plaintext): agents' tokens travel in clear text; never do this outside local development"
        );
        None
    } else {
        let tls = tls::server_config(&config.tls, clients.default.clone(), &namespace)
            .await
            .context("setting up TLS for the gRPC server")?;
        Some(tls)
    };
    tracing::info!(
        http = %config.listen.http_addr,
        grpc = %config.listen.grpc_addr,
        tls = server_tls.is_some(),
        %identity,
        %namespace,
        "rota-coordinator starting"
    );

    let mut tasks = Tasks::new();
    let leadership = if config.election.leader_elect {
        let (mut elector, leadership) =
            LeaderElector::new(clients.default.clone(), config.election())?;
        match config.identity.node_name.clone() {
            Some(node) => {
                // Hand the Lease over while our node is cordoned, so that it can drain.
                let (cordoned, follow) = watch::channel(false);
                elector = elector.with_handover(Handover {
                    cordoned: follow,
                    retry: config.election.handover_retry,
                })?;
                let nodes = Api::<Node>::all(clients.default.clone());
                let stopped = stop.clone();
                tasks.spawn(async move {
                    tokio::select! {
                        () = handover::follow_node(nodes, node, cordoned) => {}
                        () = stopped.cancelled() => {}
                    }
                    ("node watch", Ok(()))
                });
            }
            None => tracing::warn!(
                "no --node-name (ROTA_NODE_NAME): the leader keeps the Lease when its node is cordoned, and that node drains only after a failover"
            ),
        }
        let stopped = stop.clone().cancelled_owned();
        tasks.spawn(async move {
            elector.run(stopped).await;
            ("leader election", Ok(()))
        });
        leadership
    } else {
        Leadership::unconditional()
    };
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

    let readiness = Readiness::new(leadership.clone());
    let router = http::router(metrics.clone(), readiness.clone());
    let stopped = stop.clone().cancelled_owned();
    tasks.spawn(async move {
        let served = http::serve(http_listener, router, stopped).await;
        ("HTTP server", served.context("serving HTTP"))
    });

    // The agents' calls reach the controller's slot service through this gate while this
    // replica leads; otherwise they get UNAVAILABLE.
    let agents = CoreGate::new();
    let authenticator = TokenReviewAuthenticator::new(
        clients.default.clone(),
        config.agent_identity(),
        config.token_cache(),
    );
    let grpc = (agents.clone(), metrics.clone(), stop.clone());
    match server_tls {
        Some(server_tls) => {
            let incoming = server_tls.incoming(grpc_listener);
            tasks.spawn({
                let stopped = stop.clone().cancelled_owned();
                async move {
                    server_tls.keep_fresh(stopped).await;
                    ("TLS refresh", Ok(()))
                }
            });
            tasks.spawn(async move {
                let (gate, metrics, stop) = grpc;
                let served = serve_agents(gate, authenticator, metrics, incoming, stop).await;
                ("gRPC server", served)
            });
        }
        None => {
            tasks.spawn(async move {
                let (gate, metrics, stop) = grpc;
                let incoming = TcpListenerStream::new(grpc_listener);
                let served = serve_agents(gate, authenticator, metrics, incoming, stop).await;
                ("gRPC server", served)
            });
        }
    }

    let notifier = match config.notify.config() {
        Some(notify) => {
            let (notifier, delivery) = Notifier::spawn(notify, stop.clone())?;
            tasks.spawn(async move {
                let ended = delivery.await.context("the notifier task failed");
                ("notifier", ended)
            });
            notifier
        }
        None => Notifier::disabled(),
    };
    let controller = Coordinator::new(
        clients.clone(),
        config.controller(),
        EventSink::new(clients.default.clone(), &identity),
        metrics,
        leadership,
        agents,
    )
    .with_readiness(readiness)
    .with_notifier(notifier);
    let stopped = stop.clone();
    tasks.spawn(async move {
        let ran = controller.run(stopped).await;
        ("controller", ran.context("the controller stopped"))
    });

    supervise(tasks, stop, config.shutdown.shutdown_grace).await
}

/// Waits for every task; the first one that ends (or fails) before `stop` is cancelled stops
/// the rest, bounded by `grace`.
async fn supervise(
    mut tasks: Tasks,
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
        failure = Some(outcome);
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

/// Serves `rota.v1.Agent` through `gate`, metered, on `incoming` connections until `stop`;
/// then ends the `WatchSlot` streams and drains the connections.
async fn serve_agents<A, I, IO, IE>(
    gate: CoreGate,
    authenticator: A,
    metrics: Metrics,
    incoming: I,
    stop: CancellationToken,
) -> anyhow::Result<()>
where
    A: Authenticator,
    I: Stream<Item = Result<IO, IE>>,
    IO: AsyncRead + AsyncWrite + Connected + Unpin + Send + 'static,
    IE: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let agent = AgentGrpc::new(Arc::new(gate), authenticator);
    let streams = agent.shutdown_handle();
    tonic::transport::Server::builder()
        .http2_keepalive_interval(Some(Duration::from_secs(30)))
        .http2_keepalive_timeout(Some(Duration::from_secs(10)))
        .add_service(MeteredGrpc::new(agent.into_service(), metrics))
        .serve_with_incoming_shutdown(incoming, async move {
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
