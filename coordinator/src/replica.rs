//! Where the coordinator process is put together: one replica, from its [`Config`].
//!
//! [`ReplicaBuilder::start`] builds and starts every piece a `rota-coordinator` replica runs —
//! Kubernetes clients, metrics, the HTTP server (`/metrics`, `/healthz`, `/readyz`), TLS (or
//! plain text when asked), leader election with the cordon handover when the node name is
//! known, the `rota_leader` gauge, the agents' metered gRPC server, the notifier and the
//! controller — and [`Replica::run`] supervises them: a task that ends before the replica is
//! stopped is a failure that stops the rest. The binary, the simulator's demo and the tests all
//! build their replicas here, so what they run is what ships; the builder's methods are the
//! only seams (a client configuration instead of the kubeconfig flags, pre-bound listeners, the
//! stop token).
//!
//! ```no_run
//! # async fn replica(config: rota_coordinator::config::Config) -> Result<(), rota_coordinator::replica::Error> {
//! use rota_coordinator::replica::Replica;
//! let replica = Replica::builder(config).start().await?;
//! println!("gRPC on {}, HTTP on {}", replica.grpc_addr(), replica.http_addr());
//! replica.run().await
//! # }
//! ```

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use futures::Stream;
use k8s_openapi::api::core::v1::Node;
use kube::Api;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::{JoinError, JoinSet};
use tokio_stream::wrappers::TcpListenerStream;
use tokio_util::sync::CancellationToken;
use tonic::transport::server::Connected;

use crate::auth::TokenReviewAuthenticator;
use crate::config::Config;
use crate::controller::Coordinator;
use crate::core_gate::CoreGate;
use crate::events::EventSink;
use crate::fleetlock;
use crate::grpc::{AgentGrpc, Authenticator, EdgeLimits, edge};
use crate::handover::{self, Handover};
use crate::http::{self, Readiness};
use crate::kube_client::{self, Clients};
use crate::leader::{LeaderElector, Leadership};
use crate::metrics::{MeteredGrpc, Metrics};
use crate::notify::{self, Notifier};
use crate::tls::{self, ServerTls};

/// The error a task ended with.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Why a replica could not start, or stopped.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The Kubernetes client configuration could not be loaded or used.
    #[error("connecting to the Kubernetes API")]
    Kube(#[source] kube_client::Error),
    /// A listen address could not be bound (or read back).
    #[error("binding the {what} address {addr}")]
    Bind {
        /// `HTTP`, `gRPC` or `FleetLock`.
        what: &'static str,
        /// The address asked for.
        addr: String,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// The gRPC server's TLS could not be set up.
    #[error("setting up TLS for the gRPC server")]
    Tls(#[source] tls::Error),
    /// The leader election settings are unusable.
    #[error("setting up leader election")]
    Election(#[source] rota_core::election::Error),
    /// The notifier could not be set up.
    #[error("setting up notifications")]
    Notifier(#[source] notify::Error),
    /// A task ended by itself before the replica was stopped.
    #[error("{task} ended unexpectedly")]
    Ended {
        /// The task.
        task: &'static str,
    },
    /// A task failed.
    #[error("{task} failed")]
    Failed {
        /// The task.
        task: &'static str,
        /// Why.
        #[source]
        source: BoxError,
    },
    /// A task panicked (or was aborted).
    #[error("a task panicked or was aborted")]
    Panicked(#[source] JoinError),
}

/// Result alias of this module.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What a supervised task ended with.
type Outcome = (&'static str, Result<(), BoxError>);

/// Where the Kubernetes clients come from.
enum KubeSource {
    /// `--kubeconfig`, `--in-cluster` or inferred, as the flags say.
    Flags,
    /// A loaded configuration.
    Config(Box<kube::Config>),
}

/// Builds one coordinator replica from its [`Config`]; see the [module docs](self).
pub struct ReplicaBuilder {
    config: Config,
    kube: KubeSource,
    grpc_listener: Option<TcpListener>,
    http_listener: Option<TcpListener>,
    stop: CancellationToken,
}

impl std::fmt::Debug for ReplicaBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReplicaBuilder")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl ReplicaBuilder {
    /// A replica configured by `config` alone.
    pub fn new(config: Config) -> Self {
        ReplicaBuilder {
            config,
            kube: KubeSource::Flags,
            grpc_listener: None,
            http_listener: None,
            stop: CancellationToken::new(),
        }
    }

    /// Reaches the Kubernetes API with `config` instead of what the kubeconfig flags say.
    pub fn kube_config(mut self, config: kube::Config) -> Self {
        self.kube = KubeSource::Config(Box::new(config));
        self
    }

    /// Serves gRPC on `listener` instead of binding `--grpc-addr`.
    pub fn grpc_listener(mut self, listener: TcpListener) -> Self {
        self.grpc_listener = Some(listener);
        self
    }

    /// Serves HTTP on `listener` instead of binding `--http-addr`.
    pub fn http_listener(mut self, listener: TcpListener) -> Self {
        self.http_listener = Some(listener);
        self
    }

    /// Cancelling `stop` stops the replica gracefully: the leader releases its Lease, the
    /// servers finish their requests and [`Replica::run`] returns.
    pub fn stop(mut self, stop: CancellationToken) -> Self {
        self.stop = stop;
        self
    }

    /// Connects, binds, sets up TLS and starts every task of the replica. The replica serves
    /// once this returns; [`Replica::run`] supervises it (dropping the [`Replica`] instead
    /// aborts its tasks).
    pub async fn start(self) -> Result<Replica> {
        let ReplicaBuilder {
            config,
            kube,
            grpc_listener,
            http_listener,
            stop,
        } = self;
        let namespace = config.identity.namespace.clone();
        let identity = config.identity.pod_name.clone();
        let clients = match kube {
            KubeSource::Flags => Clients::load(&config.kube.source()).await,
            KubeSource::Config(kube) => Clients::from_config(*kube),
        }
        .map_err(Error::Kube)?;
        let metrics = Metrics::new();
        let http_listener = bind("HTTP", http_listener, config.listen.http_addr).await?;
        let grpc_listener = bind("gRPC", grpc_listener, config.listen.grpc_addr).await?;
        let http_addr = local_addr("HTTP", &http_listener)?;
        let grpc_addr = local_addr("gRPC", &grpc_listener)?;
        let server_tls = if config.tls.grpc_insecure_plaintext {
            tracing::warn!(
                "serving gRPC WITHOUT TLS (--grpc-insecure-plaintext): agents' tokens travel in clear text; never do this outside local development"
            );
            None
        } else {
            let tls = tls::server_config(&config.tls, clients.default.clone(), &namespace)
                .await
                .map_err(Error::Tls)?;
            Some(tls)
        };
        tracing::info!(
            http = %http_addr,
            grpc = %grpc_addr,
            tls = server_tls.is_some(),
            %identity,
            %namespace,
            "rota-coordinator starting"
        );

        let mut tasks = JoinSet::new();
        let leadership = elect(&config, &clients, &stop, &mut tasks)?;
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
            ("HTTP server", served.map_err(BoxError::from))
        });

        // The agents' calls reach the controller's slot service through this gate while this
        // replica leads; otherwise they get UNAVAILABLE.
        let agents = CoreGate::new();
        let authenticator = TokenReviewAuthenticator::new(
            clients.default.clone(),
            config.agent_identity(),
            config.token_cache(),
        )
        .with_review_limit(config.token_reviews());
        // Revokes cached agent identities when their pods go; ends only with the replica.
        let pod_watch = authenticator.watch_pods();
        let stopped = stop.clone();
        tasks.spawn(async move {
            tokio::select! {
                ended = pod_watch => ("agent pod watch", Err(BoxError::from(ended))),
                () = stopped.cancelled() => ("agent pod watch", Ok(())),
            }
        });
        let fleetlock = fleetlock::Gate::default();
        let fleetlock_tokens = config
            .fleetlock
            .tokens(&clients.default, &config.identity.namespace);
        let fleetlock_addr = match (&config.fleetlock.fleetlock_addr, fleetlock_tokens) {
            (Some(addr), Some(tokens)) => {
                let listener = bind("FleetLock", None, *addr).await?;
                let addr = local_addr("FleetLock", &listener)?;
                let router = fleetlock::router(fleetlock.clone(), tokens, metrics.clone());
                let stopped = stop.clone().cancelled_owned();
                let tls = server_tls
                    .clone()
                    .filter(|_| !config.fleetlock.fleetlock_insecure_plaintext);
                match tls {
                    Some(tls) => {
                        let incoming = Box::pin(tls.incoming_http1(listener));
                        tasks.spawn(async move {
                            let served =
                                fleetlock::serve_incoming(incoming, addr, router, stopped).await;
                            ("FleetLock server", served.map_err(BoxError::from))
                        });
                    }
                    None => {
                        tracing::warn!(%addr, "serving FleetLock WITHOUT TLS: tokens travel in clear text");
                        tasks.spawn(async move {
                            let served = fleetlock::serve(listener, router, stopped).await;
                            ("FleetLock server", served.map_err(BoxError::from))
                        });
                    }
                }
                tracing::info!(%addr, "serving FleetLock");
                Some(addr)
            }
            _ => None,
        };
        serve_grpc(
            &mut tasks,
            server_tls,
            grpc_listener,
            AgentServer {
                gate: agents.clone(),
                authenticator,
                limits: config.edge_limits(),
                metrics: metrics.clone(),
                stop: stop.clone(),
            },
        );

        let notifier = match config.notify.config() {
            Some(notify) => {
                let (notifier, delivery) =
                    Notifier::spawn(notify, stop.clone()).map_err(Error::Notifier)?;
                tasks.spawn(async move {
                    let ended = delivery.await.map_err(BoxError::from);
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
            leadership.clone(),
            agents,
        )
        .with_readiness(readiness)
        .with_notifier(notifier)
        .with_fleetlock(fleetlock);
        let stopped = stop.clone();
        tasks.spawn(async move {
            let ran = controller.run(stopped).await;
            ("controller", ran.map_err(BoxError::from))
        });

        Ok(Replica {
            leadership,
            grpc_addr,
            http_addr,
            fleetlock_addr,
            tasks,
            stop,
            grace: config.shutdown.shutdown_grace,
        })
    }
}

/// A started coordinator replica.
pub struct Replica {
    leadership: Leadership,
    grpc_addr: SocketAddr,
    http_addr: SocketAddr,
    fleetlock_addr: Option<SocketAddr>,
    tasks: JoinSet<Outcome>,
    stop: CancellationToken,
    grace: Duration,
}

impl std::fmt::Debug for Replica {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Replica")
            .field("grpc_addr", &self.grpc_addr)
            .field("http_addr", &self.http_addr)
            .field("leader", &self.leadership.is_leader())
            .finish_non_exhaustive()
    }
}

impl Replica {
    /// A builder for a replica configured by `config`.
    pub fn builder(config: Config) -> ReplicaBuilder {
        ReplicaBuilder::new(config)
    }

    /// Whether this replica leads, and its changes.
    pub fn leadership(&self) -> &Leadership {
        &self.leadership
    }

    /// The address the agents' gRPC server listens on.
    pub fn grpc_addr(&self) -> SocketAddr {
        self.grpc_addr
    }

    /// The address of the metrics and probes server.
    pub fn http_addr(&self) -> SocketAddr {
        self.http_addr
    }

    /// The address of the FleetLock endpoint, when it is served (`--fleetlock-addr`).
    pub fn fleetlock_addr(&self) -> Option<SocketAddr> {
        self.fleetlock_addr
    }

    /// Supervises the replica's tasks until it is stopped: `Ok` once every task ended after
    /// the stop token was cancelled. The first task that ends (or fails) before that cancels
    /// the token, the rest get the shutdown grace period to end, and its error is returned.
    pub async fn run(self) -> Result<()> {
        let Replica {
            mut tasks,
            stop,
            grace,
            ..
        } = self;
        while let Some(joined) = tasks.join_next().await {
            let failure = match joined {
                Ok((_, Ok(()))) if stop.is_cancelled() => continue,
                Ok((task, Ok(()))) => Error::Ended { task },
                Ok((task, Err(source))) => Error::Failed { task, source },
                Err(e) => Error::Panicked(e),
            };
            tracing::error!(error = &failure as &dyn std::error::Error, "stopping");
            stop.cancel();
            if tokio::time::timeout(grace, async { while tasks.join_next().await.is_some() {} })
                .await
                .is_err()
            {
                tracing::error!("tasks did not stop within the grace period");
            }
            return Err(failure);
        }
        Ok(())
    }
}

/// `listener`, or a new one bound to `addr`.
async fn bind(
    what: &'static str,
    listener: Option<TcpListener>,
    addr: SocketAddr,
) -> Result<TcpListener> {
    match listener {
        Some(listener) => Ok(listener),
        None => TcpListener::bind(addr).await.map_err(|source| Error::Bind {
            what,
            addr: addr.to_string(),
            source,
        }),
    }
}

fn local_addr(what: &'static str, listener: &TcpListener) -> Result<SocketAddr> {
    listener.local_addr().map_err(|source| Error::Bind {
        what,
        addr: "(pre-bound)".to_owned(),
        source,
    })
}

/// Starts leader election as `config` says (with the cordon handover when the node name is
/// known), or leads unconditionally without it.
fn elect(
    config: &Config,
    clients: &Clients,
    stop: &CancellationToken,
    tasks: &mut JoinSet<Outcome>,
) -> Result<Leadership> {
    if !config.election.leader_elect {
        return Ok(Leadership::unconditional());
    }
    let (mut elector, leadership) =
        LeaderElector::new(clients.default.clone(), config.election()).map_err(Error::Election)?;
    match config.identity.node_name.clone() {
        Some(node) => {
            // Hand the Lease over while our node is cordoned, so that it can drain.
            let (cordoned, follow) = watch::channel(false);
            elector = elector
                .with_handover(Handover {
                    cordoned: follow,
                    retry: config.election.handover_retry,
                })
                .map_err(Error::Election)?;
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
    Ok(leadership)
}

/// What the agents' gRPC server serves.
struct AgentServer<A> {
    gate: CoreGate,
    authenticator: A,
    limits: EdgeLimits,
    metrics: Metrics,
    stop: CancellationToken,
}

/// Starts the agents' gRPC server on `listener`, over TLS (kept fresh by a task of its own)
/// unless `server_tls` is `None`.
fn serve_grpc<A: Authenticator>(
    tasks: &mut JoinSet<Outcome>,
    server_tls: Option<ServerTls>,
    listener: TcpListener,
    server: AgentServer<A>,
) {
    match server_tls {
        Some(server_tls) => {
            let incoming = server_tls.incoming(listener);
            let stopped = server.stop.clone().cancelled_owned();
            tasks.spawn(async move {
                server_tls.keep_fresh(stopped).await;
                ("TLS refresh", Ok(()))
            });
            tasks.spawn(async move { ("gRPC server", serve_agents(server, incoming).await) });
        }
        None => {
            let incoming = TcpListenerStream::new(listener);
            tasks.spawn(async move { ("gRPC server", serve_agents(server, incoming).await) });
        }
    }
}

/// Serves `rota.v1.Agent` through the gate, metered, on `incoming` connections until the stop
/// token; then ends the `WatchSlot` streams and drains the connections.
async fn serve_agents<A, I, IO, IE>(server: AgentServer<A>, incoming: I) -> Result<(), BoxError>
where
    A: Authenticator,
    I: Stream<Item = Result<IO, IE>>,
    IO: AsyncRead + AsyncWrite + Connected + Unpin + Send + 'static,
    IE: Into<BoxError>,
{
    let AgentServer {
        gate,
        authenticator,
        limits,
        metrics,
        stop,
    } = server;
    let agent = AgentGrpc::new(Arc::new(gate), authenticator)
        .with_limits(limits)
        .with_metrics(metrics.clone());
    let streams = agent.shutdown_handle();
    let incoming = edge::limit_connections(incoming, limits.max_connections, Some(metrics.clone()));
    edge::server(&limits)
        .add_service(MeteredGrpc::new(agent.into_service(), metrics))
        .serve_with_incoming_shutdown(incoming, async move {
            stop.cancelled().await;
            streams.shutdown();
        })
        .await
        .map_err(BoxError::from)
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
