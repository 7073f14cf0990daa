//! The per-node daemon of the simulation — rota's agent, or the kured model — run as its
//! DaemonSet pod would run it.
//!
//! A supervisor per node starts the daemon's [`Process`] once the host is up and the
//! DaemonSet's pod on the node is running, kills it when the host goes down (a reboot takes the
//! pod with it), and starts it again after the boot, with a fresh service-account token bound
//! to the new pod. The harness can also kill a node's daemon and start it again.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use rota_agent::daemon::machine::UpgradePolicy;
use rota_agent::daemon::{self, Client, DaemonConfig, TokenAuth};
use rota_agent::detect::DetectConfig;
use rota_agent::host::Host;
use rota_agent::ops::ExecutorConfig;
use rota_proto::v1::agent_client::AgentClient;
use serde_json::Value;
use tokio::sync::broadcast::error::RecvError;
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use super::coordinator::{SERVICE_DNS_NAME, SYSTEM_NAMESPACE, TOKEN_AUDIENCE};
use super::kured::KuredSetup;
use super::process::{HostTokenLog, Process, ProcessHost};
use super::{Error, Result};
use crate::apiserver::{GroupResource, ListOptions, ResourceKey, Store, meta};
use crate::cluster::{PowerState, SimHost};

/// How rota's agents run.
#[derive(Clone, Debug)]
pub struct AgentOptions {
    /// Which upgrades the agents ask slots for.
    pub upgrade: UpgradePolicy,
    /// Back-off before an agent reconnects a broken watch or retries a failed completion.
    pub retry_interval: Duration,
}

impl Default for AgentOptions {
    fn default() -> Self {
        AgentOptions {
            upgrade: UpgradePolicy::All,
            retry_interval: Duration::from_millis(500),
        }
    }
}

/// What an agent process needs besides its node.
#[derive(Debug)]
pub(crate) struct AgentSetup {
    pub(crate) store: Store,
    /// The coordinator Service's address.
    pub(crate) coordinator: std::net::SocketAddr,
    pub(crate) tls: bool,
    pub(crate) options: AgentOptions,
    /// Where the agents' projected tokens are written.
    pub(crate) token_dir: PathBuf,
    pub(crate) tokens: HostTokenLog,
}

/// Which daemon runs on the nodes.
#[derive(Clone, Debug)]
pub(crate) enum DaemonKind {
    /// rota's agent (DaemonSet `rota-system/rota-agent`).
    RotaAgent(Arc<AgentSetup>),
    /// The kured model (DaemonSet `kube-system/kured`).
    Kured(Arc<KuredSetup>),
}

impl DaemonKind {
    /// Namespace and name of the daemon's DaemonSet.
    pub(crate) fn daemonset(&self) -> (&'static str, &'static str) {
        match self {
            DaemonKind::RotaAgent(_) => (SYSTEM_NAMESPACE, "rota-agent"),
            DaemonKind::Kured(_) => (super::kured::KURED_NAMESPACE, super::kured::KURED_NAME),
        }
    }

    fn store(&self) -> &Store {
        match self {
            DaemonKind::RotaAgent(setup) => &setup.store,
            DaemonKind::Kured(setup) => setup.store(),
        }
    }

    /// What the daemon's pod on `node` waits for before it starts: the pod running, and for
    /// a TLS agent the coordinator's CA published (the pod mounts it). Returns the pod's name.
    fn ready_to_start(&self, node: &str) -> Option<String> {
        let store = self.store();
        let (namespace, app) = self.daemonset();
        let pod = daemon_pod(store, namespace, app, node)?;
        if let DaemonKind::RotaAgent(setup) = self
            && setup.tls
            && coordinator_ca(store).is_none()
        {
            return None;
        }
        Some(pod)
    }

    fn start(&self, node: &str, pod: &str, host: &SimHost) -> Result<Process> {
        match self {
            DaemonKind::RotaAgent(setup) => start_agent(setup, node, pod, host),
            DaemonKind::Kured(setup) => setup.start(node, host),
        }
    }
}

/// The running, not terminating pod of DaemonSet `app` in `namespace` on `node`.
fn daemon_pod(store: &Store, namespace: &str, app: &str, node: &str) -> Option<String> {
    let pods = store
        .list(
            &GroupResource::core("pods"),
            Some(namespace),
            &ListOptions {
                label_selector: Some(format!("app={app}")),
                field_selector: Some(format!("spec.nodeName={node}")),
                ..ListOptions::default()
            },
        )
        .ok()?;
    pods.items
        .iter()
        .find(|p| !meta::is_terminating(p) && meta::pod_phase(p) == "Running")
        .map(|p| meta::name(p).to_string())
}

/// The CA certificate the coordinator published for the agents (ConfigMap `rota-ca`).
pub(crate) fn coordinator_ca(store: &Store) -> Option<String> {
    let key = ResourceKey::new(
        GroupResource::core("configmaps"),
        Some(SYSTEM_NAMESPACE),
        rota_coordinator::tls::CA_CONFIGMAP,
    );
    let cm = store.get(&key).ok()?;
    cm.pointer("/data/ca.crt")
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
        .map(str::to_string)
}

/// Marks a process's host view dead when the process goes away, however it goes.
pub(crate) struct AliveGuard(pub(crate) Arc<AtomicBool>);

impl Drop for AliveGuard {
    fn drop(&mut self) {
        self.0.store(false, Ordering::SeqCst);
    }
}

/// The agent's gRPC client to the coordinator Service (TLS: the published CA, the Service's
/// name).
fn agent_client(setup: &AgentSetup, token_file: &Path) -> Result<Client> {
    let auth = TokenAuth {
        token_file: Some(token_file.to_path_buf()),
    };
    let scheme = if setup.tls { "https" } else { "http" };
    let mut endpoint =
        tonic::transport::Endpoint::from_shared(format!("{scheme}://{}", setup.coordinator))
            .map_err(|e| Error::Invalid(format!("coordinator address: {e}")))?
            .connect_timeout(Duration::from_secs(5));
    if setup.tls {
        let ca = coordinator_ca(&setup.store)
            .ok_or_else(|| Error::Invalid("the coordinator's CA is not published".into()))?;
        let tls = tonic::transport::ClientTlsConfig::new()
            .ca_certificate(tonic::transport::Certificate::from_pem(ca))
            .domain_name(SERVICE_DNS_NAME);
        endpoint = endpoint
            .tls_config(tls)
            .map_err(|e| Error::Invalid(format!("agent TLS: {e}")))?;
    }
    Ok(AgentClient::with_interceptor(endpoint.connect_lazy(), auth))
}

fn start_agent(setup: &Arc<AgentSetup>, node: &str, pod: &str, host: &SimHost) -> Result<Process> {
    // The kubelet projects a fresh token, bound to this pod, into the new container.
    let token = setup.store.issue_service_account_token(
        SYSTEM_NAMESPACE,
        pod,
        TOKEN_AUDIENCE,
        Duration::from_secs(3600),
    )?;
    let token_file = setup.token_dir.join(format!("{node}.token"));
    std::fs::write(&token_file, token)?;
    let exec = ExecutorConfig {
        shutdown_wait: Duration::from_secs(5),
        ..ExecutorConfig::default()
    };
    let config = DaemonConfig {
        node: node.to_string(),
        policy: setup.options.upgrade,
        detect: DetectConfig::default(),
        exec: exec.clone(),
        refresh_interval: Duration::from_secs(3600),
        retry_interval: setup.options.retry_interval,
    };
    let alive = Arc::new(AtomicBool::new(true));
    let host: Arc<dyn Host> = Arc::new(ProcessHost::new(
        host.clone(),
        alive.clone(),
        Some(exec.state_path),
        setup.tokens.clone(),
    )?);
    let setup = setup.clone();
    let name = format!("agent-{node}");
    Process::spawn(&name, move || async move {
        let _alive = AliveGuard(alive);
        let client = match agent_client(&setup, &token_file) {
            Ok(client) => client,
            Err(e) => {
                tracing::error!(node = %config.node, error = %e, "agent cannot build its client");
                return;
            }
        };
        let node = config.node.clone();
        if let Err(e) = daemon::run(config, host, client, std::future::pending()).await {
            tracing::error!(%node, error = %e, "agent stopped");
        }
    })
}

/// Resolves with `check`'s value once it returns one, re-evaluating after store changes.
pub(crate) async fn until<T>(store: &Store, mut check: impl FnMut(&Store) -> Option<T>) -> T {
    let mut rx = store.subscribe_all();
    loop {
        if let Some(value) = check(store) {
            return value;
        }
        match rx.recv().await {
            Ok(_) | Err(RecvError::Lagged(_)) => while rx.try_recv().is_ok() {},
            Err(RecvError::Closed) => std::future::pending::<()>().await,
        }
    }
}

/// What the harness asks of a node daemon's supervisor.
#[derive(Debug)]
enum Control {
    Kill(oneshot::Sender<()>),
    Restart(oneshot::Sender<()>),
}

/// The harness's handle on one node's daemon.
#[derive(Debug)]
pub(crate) struct NodeDaemon {
    control: mpsc::Sender<Control>,
}

/// How long a daemon that ended by itself stays down before it is started again.
const CRASH_BACKOFF: Duration = Duration::from_secs(1);

impl NodeDaemon {
    /// Starts the supervisor of `node`'s daemon.
    pub(crate) fn start(
        node: String,
        host: SimHost,
        kind: DaemonKind,
        cancel: CancellationToken,
    ) -> (NodeDaemon, tokio::task::JoinHandle<()>) {
        let (control, rx) = mpsc::channel(4);
        let task = tokio::spawn(supervise(node, host, kind, rx, cancel));
        (NodeDaemon { control }, task)
    }

    async fn ask(&self, make: impl FnOnce(oneshot::Sender<()>) -> Control) -> Result<()> {
        let (tx, rx) = oneshot::channel();
        self.control
            .send(make(tx))
            .await
            .map_err(|_| Error::Stopped)?;
        rx.await.map_err(|_| Error::Stopped)
    }

    /// Kills the daemon and keeps it down (answers once it is dead).
    pub(crate) async fn kill(&self) -> Result<()> {
        self.ask(Control::Kill).await
    }

    /// Lets the daemon run again: killed first if it runs, started as soon as its host and pod
    /// allow (answers at once; the start may wait for the host).
    pub(crate) async fn restart(&self) -> Result<()> {
        self.ask(Control::Restart).await
    }
}

async fn supervise(
    node: String,
    host: SimHost,
    kind: DaemonKind,
    mut control: mpsc::Receiver<Control>,
    cancel: CancellationToken,
) {
    let mut power = host.power();
    let mut stopped = false;
    loop {
        if stopped {
            tokio::select! {
                command = control.recv() => match command {
                    Some(Control::Restart(ack)) => {
                        stopped = false;
                        let _ = ack.send(());
                    }
                    Some(Control::Kill(ack)) => {
                        let _ = ack.send(());
                    }
                    None => return,
                },
                () = cancel.cancelled() => return,
            }
            continue;
        }
        // Wait for the host to run and the pod to be running.
        let boot = tokio::select! {
            up = power.wait_for(PowerState::is_up) => match up {
                Ok(state) => state.clone(),
                Err(_) => return,
            },
            command = control.recv() => {
                match command {
                    Some(Control::Kill(ack)) => {
                        stopped = true;
                        let _ = ack.send(());
                    }
                    Some(Control::Restart(ack)) => {
                        let _ = ack.send(());
                    }
                    None => return,
                }
                continue;
            }
            () = cancel.cancelled() => return,
        };
        let pod = tokio::select! {
            pod = until(kind.store(), |_| kind.ready_to_start(&node)) => pod,
            changed = power.changed() => {
                if changed.is_err() {
                    return;
                }
                continue;
            }
            command = control.recv() => {
                match command {
                    Some(Control::Kill(ack)) => {
                        stopped = true;
                        let _ = ack.send(());
                    }
                    Some(Control::Restart(ack)) => {
                        let _ = ack.send(());
                    }
                    None => return,
                }
                continue;
            }
            () = cancel.cancelled() => return,
        };
        if *power.borrow() != boot {
            continue;
        }
        let process = match kind.start(&node, &pod, &host) {
            Ok(process) => process,
            Err(e) => {
                tracing::warn!(%node, error = %e, "the node's daemon could not start; retrying");
                tokio::select! {
                    () = tokio::time::sleep(CRASH_BACKOFF) => continue,
                    () = cancel.cancelled() => return,
                }
            }
        };
        tracing::debug!(%node, process = process.name(), %pod, "node daemon started");
        // Run until the host leaves this boot, the harness intervenes, or the process ends.
        enum Ended {
            HostDown,
            Exited,
            Control(Option<Control>),
            Cancelled,
        }
        let ended = tokio::select! {
            changed = power.wait_for(|s| *s != boot) => match changed {
                Ok(_) => Ended::HostDown,
                Err(_) => Ended::Cancelled,
            },
            () = process.exited() => Ended::Exited,
            command = control.recv() => Ended::Control(command),
            () = cancel.cancelled() => Ended::Cancelled,
        };
        process.kill().await;
        match ended {
            Ended::HostDown => {}
            Ended::Exited => {
                tracing::warn!(%node, "the node's daemon ended; starting it again");
                tokio::select! {
                    () = tokio::time::sleep(CRASH_BACKOFF) => {}
                    () = cancel.cancelled() => return,
                }
            }
            Ended::Control(Some(Control::Kill(ack))) => {
                tracing::info!(%node, "node daemon killed");
                stopped = true;
                let _ = ack.send(());
            }
            Ended::Control(Some(Control::Restart(ack))) => {
                let _ = ack.send(());
            }
            Ended::Control(None) | Ended::Cancelled => return,
        }
    }
}
