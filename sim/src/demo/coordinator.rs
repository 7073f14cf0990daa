//! rota's coordinator replicas in the simulation, and the Service the agents reach them by.
//!
//! A replica is the real coordinator — [`LeaderElector`] on the `rota-coordinator` Lease,
//! [`Coordinator::run`] (cluster cache, slot ledger, drains, verification) and the agents' gRPC
//! server with TokenReview authentication and, when asked, TLS bootstrapped into Secrets — in
//! its own [`Process`], talking to the emulated API server over HTTP like a pod would. A
//! supervisor per replica restarts one that ended by itself (as a Deployment does) and kills or
//! restarts it on request.
//!
//! The agents connect to one address, a TCP proxy standing in for the coordinator's Service:
//! a new connection goes to the replica that leads (else to any live one, which answers
//! `UNAVAILABLE` until it leads); a proxied connection ends when its replica dies, or when it
//! no longer leads while another replica does (endpoints follow `/readyz`, which only the
//! leader passes), so agents reconnect to the leader.

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use jiff::{SignedDuration, Timestamp};
use rota_coordinator::auth::{AgentIdentity, CacheConfig, TokenReviewAuthenticator};
use rota_coordinator::controller::{Coordinator, Settings};
use rota_coordinator::core_gate::CoreGate;
use rota_coordinator::events::EventSink;
use rota_coordinator::grpc::AgentGrpc;
use rota_coordinator::kube_client::Clients;
use rota_coordinator::leader::{ElectionConfig, LeaderElector};
use rota_coordinator::metrics::Metrics;
use rota_coordinator::tls::{ServerTls, TlsOptions};
use rota_core::election::Timings;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, oneshot, watch};
use tokio_stream::wrappers::TcpListenerStream;
use tokio_util::sync::CancellationToken;

use super::process::Process;
use super::{Error, Result};

/// The coordinator's namespace (its leader Lease, fencing counter and TLS objects live there).
pub const SYSTEM_NAMESPACE: &str = "rota-system";
/// The agents' service account.
pub const AGENT_SERVICE_ACCOUNT: &str = "rota-agent";
/// The audience of the agents' tokens.
pub const TOKEN_AUDIENCE: &str = "rota";
/// The name the agents verify the coordinator's certificate against (its Service's name).
pub const SERVICE_DNS_NAME: &str = "rota-coordinator.rota-system.svc";

/// How the coordinator replicas run.
#[derive(Clone, Debug)]
pub struct CoordinatorOptions {
    /// Replicas (one leads, the others stand by).
    pub replicas: usize,
    /// Serve the agents over TLS (CA bootstrapped into Secrets by the coordinator).
    pub tls: bool,
    /// Leader election timings.
    pub election: Timings,
    /// Shortest time between two controller passes.
    pub pass_interval: Duration,
    /// Lease time-to-live of a slot.
    pub lease_ttl: SignedDuration,
    /// Longest a PodDisruptionBudget may refuse one pod before a drain gives its slot back.
    pub drain_blocked_timeout: Duration,
}

impl Default for CoordinatorOptions {
    fn default() -> Self {
        CoordinatorOptions {
            replicas: 2,
            tls: true,
            election: Timings {
                lease_duration: Duration::from_secs(3),
                renew_deadline: Duration::from_secs(2),
                retry_period: Duration::from_millis(500),
            },
            pass_interval: Duration::from_millis(100),
            lease_ttl: SignedDuration::from_secs(30),
            drain_blocked_timeout: Duration::from_secs(10),
        }
    }
}

/// A replica the proxy can route to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Backend {
    generation: u64,
    addr: SocketAddr,
    leader: bool,
}

/// The live replicas by index.
#[derive(Clone, Debug, Default)]
pub(crate) struct Routes {
    backends: BTreeMap<usize, Backend>,
}

impl Routes {
    /// The replica that leads, if any.
    pub(crate) fn leader(&self) -> Option<usize> {
        self.backends
            .iter()
            .find(|(_, b)| b.leader)
            .map(|(index, _)| *index)
    }

    /// Where a new connection goes: the leader, else the first live replica.
    fn pick(&self) -> Option<(usize, Backend)> {
        let leader = self.backends.iter().find(|(_, b)| b.leader);
        leader
            .or_else(|| self.backends.iter().next())
            .map(|(index, backend)| (*index, *backend))
    }

    /// Whether a connection to `index` (of `generation`) may stay: the replica lives and leads,
    /// or nobody leads.
    fn keeps(&self, index: usize, generation: u64) -> bool {
        match self.backends.get(&index) {
            Some(b) if b.generation == generation => b.leader || self.leader().is_none(),
            _ => false,
        }
    }
}

/// What a replica process needs.
#[derive(Clone)]
struct ReplicaContext {
    index: usize,
    generation: u64,
    api_url: String,
    options: CoordinatorOptions,
    routes: watch::Sender<Routes>,
}

impl ReplicaContext {
    fn identity(&self) -> String {
        format!("rota-coordinator-{}", self.index)
    }
}

/// Runs one replica until it fails (the process is normally killed, never stopped).
async fn run_replica(ctx: ReplicaContext) -> Result<()> {
    let url = ctx
        .api_url
        .parse()
        .map_err(|e| Error::Invalid(format!("API server URL {}: {e}", ctx.api_url)))?;
    let clients = Clients::from_config(kube::Config::new(url))
        .map_err(|e| Error::Coordinator(e.to_string()))?;
    let identity = ctx.identity();
    let (elector, leadership) = LeaderElector::new(
        clients.default.clone(),
        ElectionConfig {
            namespace: SYSTEM_NAMESPACE.into(),
            lease_name: "rota-coordinator".into(),
            identity: identity.clone(),
            timings: ctx.options.election,
        },
    )
    .map_err(|e| Error::Coordinator(e.to_string()))?;
    let gate = CoreGate::new();
    let authenticator = TokenReviewAuthenticator::new(
        clients.default.clone(),
        AgentIdentity {
            audience: TOKEN_AUDIENCE.into(),
            namespace: SYSTEM_NAMESPACE.into(),
            service_account: AGENT_SERVICE_ACCOUNT.into(),
        },
        CacheConfig::default(),
    );
    let mut settings = Settings::new(SYSTEM_NAMESPACE);
    settings.pass_interval = ctx.options.pass_interval;
    settings.lease_ttl = ctx.options.lease_ttl;
    settings.drain_blocked_timeout = ctx.options.drain_blocked_timeout;
    let coordinator = Coordinator::new(
        clients.clone(),
        settings,
        EventSink::new(clients.default.clone(), &identity),
        Metrics::new(),
        leadership.clone(),
        gate.clone(),
    );
    let tls = if ctx.options.tls {
        let options = TlsOptions::default();
        Some(
            ServerTls::start(
                &options,
                clients.default.clone(),
                SYSTEM_NAMESPACE,
                Timestamp::now(),
            )
            .await
            .map_err(|e| Error::Coordinator(format!("TLS: {e}")))?,
        )
    } else {
        None
    };
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await?;
    let addr = listener.local_addr()?;
    let (index, generation) = (ctx.index, ctx.generation);
    ctx.routes.send_modify(|r| {
        r.backends.insert(
            index,
            Backend {
                generation,
                addr,
                leader: false,
            },
        );
    });
    let mut leader_changes = leadership.subscribe();
    let routes = ctx.routes.clone();
    tokio::spawn(async move {
        loop {
            let leads = leader_changes.borrow_and_update().is_leader();
            routes.send_modify(|r| {
                if let Some(b) = r.backends.get_mut(&index)
                    && b.generation == generation
                {
                    b.leader = leads;
                }
            });
            if leader_changes.changed().await.is_err() {
                return;
            }
        }
    });
    tracing::info!(replica = %identity, %addr, tls = tls.is_some(), "coordinator replica started");

    let agent = AgentGrpc::new(Arc::new(gate), authenticator).into_service();
    let router = tonic::transport::Server::builder()
        .http2_keepalive_interval(Some(Duration::from_secs(30)))
        .add_service(agent);
    let serve = async move {
        match tls {
            Some(tls) => router.serve_with_incoming(tls.incoming(listener)).await,
            None => {
                router
                    .serve_with_incoming(TcpListenerStream::new(listener))
                    .await
            }
        }
    };
    let never = CancellationToken::new();
    tokio::select! {
        () = elector.run(std::future::pending::<()>()) => {
            Err(Error::Coordinator("leader election ended".into()))
        }
        result = coordinator.run(never) => match result {
            Ok(()) => Err(Error::Coordinator("the controller ended".into())),
            Err(e) => Err(Error::Coordinator(format!("the controller failed: {e}"))),
        },
        result = serve => Err(Error::Coordinator(match result {
            Ok(()) => "the gRPC server ended".into(),
            Err(e) => format!("the gRPC server failed: {e}"),
        })),
    }
}

/// What the harness asks of a replica's supervisor.
#[derive(Debug)]
pub(crate) enum Control {
    /// Kill the process and keep it down; answers once it is dead.
    Kill(oneshot::Sender<()>),
    /// Kill the process if it runs and start a new one; answers once the new one started.
    Restart(oneshot::Sender<()>),
}

/// The harness's handle on one replica's supervisor.
#[derive(Debug)]
pub(crate) struct Replica {
    control: mpsc::Sender<Control>,
}

impl Replica {
    /// Starts the supervisor of replica `index`, which starts the replica at once.
    pub(crate) fn start(
        index: usize,
        api_url: String,
        options: CoordinatorOptions,
        routes: watch::Sender<Routes>,
        cancel: CancellationToken,
    ) -> (Replica, tokio::task::JoinHandle<()>) {
        let (control, rx) = mpsc::channel(4);
        let ctx = ReplicaContext {
            index,
            generation: 0,
            api_url,
            options,
            routes,
        };
        let task = tokio::spawn(supervise(ctx, rx, cancel));
        (Replica { control }, task)
    }

    async fn ask(&self, make: impl FnOnce(oneshot::Sender<()>) -> Control) -> Result<()> {
        let (tx, rx) = oneshot::channel();
        self.control
            .send(make(tx))
            .await
            .map_err(|_| Error::Stopped)?;
        rx.await.map_err(|_| Error::Stopped)
    }

    /// Kills the replica (as a process dies: no graceful step) and keeps it down.
    pub(crate) async fn kill(&self) -> Result<()> {
        self.ask(Control::Kill).await
    }

    /// Starts the replica again (killing it first if it runs).
    pub(crate) async fn restart(&self) -> Result<()> {
        self.ask(Control::Restart).await
    }
}

/// How long a replica that ended by itself stays down before it is started again.
const CRASH_BACKOFF: Duration = Duration::from_secs(1);

async fn supervise(
    mut ctx: ReplicaContext,
    mut control: mpsc::Receiver<Control>,
    cancel: CancellationToken,
) {
    let mut pending_ack: Option<oneshot::Sender<()>> = None;
    loop {
        ctx.generation += 1;
        let name = ctx.identity();
        let process_ctx = ctx.clone();
        let process = match Process::spawn(&name, move || async move {
            if let Err(e) = run_replica(process_ctx).await {
                tracing::error!(error = %e, "coordinator replica stopped");
            }
        }) {
            Ok(process) => process,
            Err(e) => {
                tracing::error!(replica = %name, error = %e, "cannot start a coordinator replica");
                return;
            }
        };
        if let Some(ack) = pending_ack.take() {
            let _ = ack.send(());
        }
        let (index, generation) = (ctx.index, ctx.generation);
        let forget = |routes: &watch::Sender<Routes>| {
            routes.send_modify(|r| {
                if r.backends
                    .get(&index)
                    .is_some_and(|b| b.generation == generation)
                {
                    r.backends.remove(&index);
                }
            });
        };
        let command = tokio::select! {
            () = process.exited() => None,
            command = control.recv() => command,
            () = cancel.cancelled() => {
                process.kill().await;
                forget(&ctx.routes);
                return;
            }
        };
        process.kill().await;
        forget(&ctx.routes);
        match command {
            None if control.is_closed() => return,
            None => {
                tracing::warn!(replica = %name, "coordinator replica ended; restarting it");
                tokio::select! {
                    () = tokio::time::sleep(CRASH_BACKOFF) => {}
                    () = cancel.cancelled() => return,
                }
            }
            Some(Control::Restart(ack)) => pending_ack = Some(ack),
            Some(Control::Kill(ack)) => {
                tracing::info!(replica = %name, "coordinator replica killed");
                let _ = ack.send(());
                // Down until asked to start again; a second kill is answered at once.
                loop {
                    tokio::select! {
                        command = control.recv() => match command {
                            Some(Control::Restart(ack)) => {
                                pending_ack = Some(ack);
                                break;
                            }
                            Some(Control::Kill(ack)) => {
                                let _ = ack.send(());
                            }
                            None => return,
                        },
                        () = cancel.cancelled() => return,
                    }
                }
            }
        }
    }
}

/// Accepts the agents' connections on `listener` and forwards each to a replica as
/// [`Routes`] say (see the module docs), until `cancel`.
pub(crate) async fn serve_proxy(
    listener: TcpListener,
    routes: watch::Receiver<Routes>,
    cancel: CancellationToken,
) {
    let mut connections = tokio::task::JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((inbound, _)) => {
                    connections.spawn(proxy_connection(inbound, routes.clone()));
                }
                Err(e) => {
                    tracing::warn!(error = %e, "the coordinator Service could not accept");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            },
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
            () = cancel.cancelled() => return,
        }
    }
}

async fn proxy_connection(mut inbound: TcpStream, mut routes: watch::Receiver<Routes>) {
    let Some((index, backend)) = routes.borrow_and_update().pick() else {
        // No replica: the connection is refused, the agent retries.
        return;
    };
    let Ok(mut outbound) = TcpStream::connect(backend.addr).await else {
        return;
    };
    let _ = inbound.set_nodelay(true);
    let _ = outbound.set_nodelay(true);
    let copy = tokio::io::copy_bidirectional(&mut inbound, &mut outbound);
    tokio::pin!(copy);
    loop {
        tokio::select! {
            _ = &mut copy => return,
            changed = routes.changed() => {
                if changed.is_err() || !routes.borrow_and_update().keeps(index, backend.generation) {
                    return;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn backend(generation: u64, port: u16, leader: bool) -> Backend {
        Backend {
            generation,
            addr: SocketAddr::from((Ipv4Addr::LOCALHOST, port)),
            leader,
        }
    }

    #[test]
    fn connections_go_to_the_leader_and_leave_a_replica_that_stopped_leading() {
        let mut routes = Routes::default();
        assert_eq!(routes.pick(), None);
        routes.backends.insert(0, backend(1, 1000, false));
        routes.backends.insert(1, backend(1, 1001, false));
        assert_eq!(routes.pick().map(|(i, _)| i), Some(0));
        assert!(routes.keeps(0, 1), "nobody leads: stay");
        routes.backends.insert(1, backend(1, 1001, true));
        assert_eq!(routes.pick().map(|(i, _)| i), Some(1));
        assert_eq!(routes.leader(), Some(1));
        assert!(!routes.keeps(0, 1), "another replica leads: reconnect");
        assert!(routes.keeps(1, 1));
        assert!(
            !routes.keeps(1, 2),
            "a restarted replica is another process"
        );
        routes.backends.remove(&1);
        assert!(!routes.keeps(1, 1));
    }
}
