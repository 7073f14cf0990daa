//! rota's coordinator replicas in the simulation, and the Service the agents reach them by.
//!
//! A replica is the `rota-coordinator` binary's replica — its [`Config`] parsed from the flags
//! a Deployment would pass, built and supervised by [`replica::Replica`] exactly as the binary does
//! (leader election with the cordon handover when it is given a node, controller, metered gRPC
//! server with TokenReview authentication and TLS bootstrapped into Secrets unless turned
//! off, `/metrics` and probes) — in its own [`Process`], talking to the emulated API server
//! over HTTP like a pod would. A supervisor per replica restarts one that ended by itself (as a
//! Deployment does) and kills or restarts it on request.
//!
//! The agents connect to one address, a TCP proxy standing in for the coordinator's Service:
//! a new connection goes to the replica that leads (else to any live one, which answers
//! `UNAVAILABLE` until it leads); a proxied connection ends when its replica dies, or when it
//! no longer leads while another replica does (endpoints follow `/readyz`, which only the
//! leader passes), so agents reconnect to the leader.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use clap::{CommandFactory, FromArgMatches};
use jiff::SignedDuration;
use rota_coordinator::config::Config;
use rota_coordinator::replica;
use rota_core::election::Timings;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, oneshot, watch};
use tokio_util::sync::CancellationToken;

use super::process::{CRASH_BACKOFF, Control, Process, Supervisor};
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
    /// The nodes the replicas run on, by index (`--node-name`): a leader hands its Lease over
    /// while its node is cordoned. A replica past the end runs on no known node and keeps
    /// the Lease (the default: the demo's replicas run outside the simulated cluster).
    pub nodes: Vec<String>,
    /// Serve FleetLock (`--fleetlock-addr`) with the group tokens in this directory
    /// (`--fleetlock-tokens-dir`); over TLS when `tls` is on.
    pub fleetlock_tokens: Option<std::path::PathBuf>,
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
            nodes: Vec::new(),
            fleetlock_tokens: None,
        }
    }
}

/// Where a replica listens.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ReplicaAddrs {
    /// The agents' gRPC server.
    pub grpc: SocketAddr,
    /// The metrics and probes server.
    pub http: SocketAddr,
}

/// A replica the proxy can route to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Backend {
    generation: u64,
    addrs: ReplicaAddrs,
    /// Its FleetLock endpoint, when it serves one.
    fleetlock: Option<SocketAddr>,
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

    /// Where FleetLock clients are sent (as a Service routes by readiness): the leader's
    /// FleetLock endpoint, else any live replica's (which answers `not_leader`).
    pub(crate) fn fleetlock(&self) -> Option<SocketAddr> {
        self.pick().and_then(|(_, backend)| backend.fleetlock)
    }

    /// Replica `index`'s FleetLock endpoint, if it lives and serves one.
    pub(crate) fn fleetlock_of(&self, index: usize) -> Option<SocketAddr> {
        self.backends.get(&index).and_then(|b| b.fleetlock)
    }

    /// Where the live replica `index` listens.
    pub(crate) fn addrs(&self, index: usize) -> Option<ReplicaAddrs> {
        self.backends.get(&index).map(|b| b.addrs)
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
    /// How the replica reaches the API server (and as whom).
    kube: kube::Config,
    options: CoordinatorOptions,
    routes: watch::Sender<Routes>,
}

impl ReplicaContext {
    fn identity(&self) -> String {
        format!("rota-coordinator-{}", self.index)
    }
}

/// The replica's command line: what the `rota-coordinator` Deployment would pass, with the
/// demo's timings.
fn flags(ctx: &ReplicaContext) -> Vec<String> {
    let options = &ctx.options;
    let duration = |d: Duration| {
        // Every flag duration parses jiff's friendly format; sub-second values stay exact.
        let d = jiff::SignedDuration::try_from(d).unwrap_or(jiff::SignedDuration::MAX);
        format!("{d:#}")
    };
    let mut flags = vec![
        "rota-coordinator".to_owned(),
        format!("--pod-name={}", ctx.identity()),
        format!("--namespace={SYSTEM_NAMESPACE}"),
        format!("--agent-service-account={AGENT_SERVICE_ACCOUNT}"),
        format!("--token-audience={TOKEN_AUDIENCE}"),
        // Port 0: the proxy learns each replica's address from the replica itself.
        "--grpc-addr=127.0.0.1:0".to_owned(),
        "--http-addr=127.0.0.1:0".to_owned(),
        format!(
            "--lease-duration={}",
            duration(options.election.lease_duration)
        ),
        format!(
            "--renew-deadline={}",
            duration(options.election.renew_deadline)
        ),
        format!("--retry-period={}", duration(options.election.retry_period)),
        format!("--pass-interval={}", duration(options.pass_interval)),
        format!("--slot-lease-ttl={:#}", options.lease_ttl),
        format!(
            "--drain-blocked-timeout={}",
            duration(options.drain_blocked_timeout)
        ),
    ];
    if !options.tls {
        flags.push("--grpc-insecure-plaintext".to_owned());
    }
    if let Some(node) = options.nodes.get(ctx.index) {
        flags.push(format!("--node-name={node}"));
    }
    if let Some(tokens) = &options.fleetlock_tokens {
        flags.push("--fleetlock-addr=127.0.0.1:0".to_owned());
        flags.push(format!("--fleetlock-tokens-dir={}", tokens.display()));
    }
    flags
}

/// The replica's [`Config`], parsed by the binary's own command line from [`flags`] alone:
/// the `ROTA_*` variables of the process running the simulation are not the replica's.
fn config(ctx: &ReplicaContext) -> Result<Config> {
    let command = Config::command().mut_args(|arg| arg.env(None::<&str>));
    command
        .try_get_matches_from(flags(ctx))
        .and_then(|matches| Config::from_arg_matches(&matches))
        .map_err(|e| Error::Invalid(format!("coordinator flags: {e}")))
}

/// Runs one replica, built as the `rota-coordinator` binary builds it, until it fails (the
/// process is normally killed, never stopped).
async fn run_replica(ctx: ReplicaContext) -> Result<()> {
    let replica = replica::Replica::builder(config(&ctx)?)
        .kube_config(ctx.kube.clone())
        .start()
        .await?;
    let addrs = ReplicaAddrs {
        grpc: replica.grpc_addr(),
        http: replica.http_addr(),
    };
    let fleetlock = replica.fleetlock_addr();
    let (index, generation) = (ctx.index, ctx.generation);
    ctx.routes.send_modify(|r| {
        r.backends.insert(
            index,
            Backend {
                generation,
                addrs,
                fleetlock,
                leader: false,
            },
        );
    });
    let mut leader_changes = replica.leadership().subscribe();
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
    tracing::info!(replica = %ctx.identity(), grpc = %addrs.grpc, http = %addrs.http, "coordinator replica started");
    replica.run().await?;
    Err(Error::Coordinator("the replica stopped".into()))
}

/// The harness's handle on one replica's supervisor.
pub(crate) type Replica = Supervisor;

/// The coordinator's replicas of a simulation, each supervised, and the Service in front of
/// them.
pub(crate) struct Replicas {
    /// Where the agents connect: the Service.
    pub(crate) service: SocketAddr,
    /// Where each replica listens, and which leads.
    pub(crate) routes: watch::Receiver<Routes>,
    /// The supervisors, by index.
    pub(crate) replicas: Vec<Replica>,
    /// The Service's and the supervisors' tasks.
    pub(crate) tasks: Vec<tokio::task::JoinHandle<()>>,
}

/// Starts `options.replicas` replicas (at least one) reaching the API server through `kube`,
/// and their Service, until `cancel`.
pub(crate) async fn start_replicas(
    kube: kube::Config,
    options: &CoordinatorOptions,
    cancel: &CancellationToken,
) -> Result<Replicas> {
    let (routes_tx, routes) = watch::channel(Routes::default());
    let listener = TcpListener::bind((std::net::Ipv4Addr::LOCALHOST, 0)).await?;
    let service = listener.local_addr()?;
    let mut tasks = vec![tokio::spawn(serve_proxy(
        listener,
        routes.clone(),
        cancel.clone(),
    ))];
    let mut replicas = Vec::new();
    for index in 0..options.replicas.max(1) {
        let (replica, rx) = Supervisor::channel();
        let ctx = ReplicaContext {
            index,
            generation: 0,
            kube: kube.clone(),
            options: options.clone(),
            routes: routes_tx.clone(),
        };
        tasks.push(tokio::spawn(supervise(ctx, rx, cancel.clone())));
        replicas.push(replica);
    }
    Ok(Replicas {
        service,
        routes,
        replicas,
        tasks,
    })
}

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
                tracing::error!(
                    error = &e as &dyn std::error::Error,
                    "coordinator replica stopped"
                );
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

/// The coordinator's Service in front of replicas that run elsewhere (the `rota-coordinator`
/// binary as processes, against a real API server): the caller says where each replica listens
/// and whether it passes `/readyz` (leads), as the endpoints controller does from readiness
/// probes, and connections are routed as for the simulation's own replicas. Stops when dropped.
pub struct Service {
    routes: watch::Sender<Routes>,
    addr: SocketAddr,
    cancel: CancellationToken,
}

impl Service {
    /// Listens on a free loopback port; no endpoints yet (connections are refused).
    pub async fn start() -> Result<Service> {
        let listener = TcpListener::bind((std::net::Ipv4Addr::LOCALHOST, 0)).await?;
        let addr = listener.local_addr()?;
        let (routes, rx) = watch::channel(Routes::default());
        let cancel = CancellationToken::new();
        tokio::spawn(serve_proxy(listener, rx, cancel.clone()));
        Ok(Service {
            routes,
            addr,
            cancel,
        })
    }

    /// Where the agents connect.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Replica `index`, in its `generation` (a new one each time it starts), listens at
    /// `addrs` and leads or not; `None` when it does not answer at all, which ends its
    /// connections. A replica that stops leading while another leads loses its connections too.
    pub fn set_endpoint(&self, index: usize, endpoint: Option<(u64, ReplicaAddrs, bool)>) {
        self.routes.send_if_modified(|r| {
            let before = r.backends.get(&index).copied();
            match endpoint {
                Some((generation, addrs, leader)) => {
                    r.backends.insert(
                        index,
                        Backend {
                            generation,
                            addrs,
                            fleetlock: None,
                            leader,
                        },
                    );
                }
                None => {
                    r.backends.remove(&index);
                }
            }
            r.backends.get(&index).copied() != before
        });
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        self.cancel.cancel();
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
    let Ok(mut outbound) = TcpStream::connect(backend.addrs.grpc).await else {
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
        let addr = SocketAddr::from((std::net::Ipv4Addr::LOCALHOST, port));
        Backend {
            generation,
            addrs: ReplicaAddrs {
                grpc: addr,
                http: addr,
            },
            fleetlock: None,
            leader,
        }
    }

    #[test]
    fn the_replicas_flags_carry_every_option() {
        let options = CoordinatorOptions {
            tls: false,
            nodes: vec!["node-a".into()],
            ..CoordinatorOptions::default()
        };
        let (routes, _) = watch::channel(Routes::default());
        let ctx = |index| ReplicaContext {
            index,
            generation: 1,
            kube: kube::Config::new("http://127.0.0.1:1".parse().unwrap()),
            options: options.clone(),
            routes: routes.clone(),
        };
        let config = config(&ctx(0)).unwrap();
        let election = config.election();
        assert_eq!(election.identity, "rota-coordinator-0");
        assert_eq!(election.namespace, SYSTEM_NAMESPACE);
        assert_eq!(election.timings, options.election);
        let settings = config.controller();
        assert_eq!(settings.pass_interval, options.pass_interval);
        assert_eq!(settings.lease_ttl, options.lease_ttl);
        assert_eq!(
            settings.drain_blocked_timeout,
            options.drain_blocked_timeout
        );
        let agents = config.agent_identity();
        assert_eq!(agents.audience, TOKEN_AUDIENCE);
        assert_eq!(agents.service_account, AGENT_SERVICE_ACCOUNT);
        assert!(config.tls.grpc_insecure_plaintext);
        assert_eq!(config.identity.node_name.as_deref(), Some("node-a"));
        let second = super::config(&ctx(1)).unwrap();
        assert_eq!(second.identity.node_name, None, "no node given");
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
