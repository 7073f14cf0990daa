//! The per-node daemon of the simulation — rota's agent, or the kured model — run as its
//! DaemonSet pod would run it.
//!
//! A supervisor per node starts the daemon's [`Process`] once the host is up and the
//! DaemonSet's pod on the node is running, kills it when the host goes down (a reboot takes the
//! pod with it), and starts it again after the boot, with a fresh service-account token bound
//! to the new pod. The harness can also kill a node's daemon and start it again.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use clap::{CommandFactory, FromArgMatches, ValueEnum};
use k8s_openapi::api::authentication::v1::{BoundObjectReference, TokenRequest, TokenRequestSpec};
use k8s_openapi::api::core::v1::{ConfigMap, Pod, ServiceAccount};
use kube::Api;
use kube::api::{ListParams, PostParams};
use rota_agent::cli::{Cli, Command, RunArgs};
use rota_agent::daemon::machine::UpgradePolicy;
use rota_agent::host::Host;
use serde_json::Value;
use tokio::sync::broadcast::error::RecvError;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::coordinator::{SERVICE_DNS_NAME, SYSTEM_NAMESPACE, TOKEN_AUDIENCE};
use super::kured::KuredSetup;
use super::process::{CRASH_BACKOFF, Control, HostTokenLog, Process, ProcessHost, Supervisor};
use super::zincati::ZincatiSetup;
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

/// What a rota agent needs on a node of a real cluster: the kubelet's own client for each node,
/// with which it reads the agent's pod and the CA ConfigMap the pod mounts, and asks for the
/// pod-bound token the pod's projected volume names, as a kubelet does.
pub(crate) struct RemoteAgentSetup {
    pub(crate) node_clients: BTreeMap<String, kube::Client>,
    /// Where the coordinator's gRPC listener is (the Service's address in a real cluster).
    pub(crate) coordinator: std::net::SocketAddr,
    pub(crate) options: AgentOptions,
    pub(crate) token_dir: PathBuf,
    pub(crate) tokens: HostTokenLog,
}

/// The label of the shipped agent DaemonSet's pods (`deploy/base/agent.yaml`).
pub(crate) const SHIPPED_AGENT_SELECTOR: &str = "app.kubernetes.io/name=rota-agent";

/// How often a remote agent's supervisor looks for its pod.
const REMOTE_POLL: Duration = Duration::from_millis(250);

impl std::fmt::Debug for RemoteAgentSetup {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RemoteAgentSetup")
            .field("nodes", &self.node_clients.keys().collect::<Vec<_>>())
            .field("coordinator", &self.coordinator)
            .finish_non_exhaustive()
    }
}

impl RemoteAgentSetup {
    fn client(&self, node: &str) -> Result<&kube::Client> {
        self.node_clients
            .get(node)
            .ok_or_else(|| Error::Invalid(format!("no client for node {node}")))
    }

    /// The running agent pod bound to `node`, once the CA ConfigMap it mounts exists: what a
    /// kubelet waits for before it starts the container. Read as the node.
    async fn ready_pod(&self, node: &str) -> Option<String> {
        let client = self.client(node).ok()?;
        let pods: Api<Pod> = Api::all(client.clone());
        let params = ListParams::default()
            .labels(SHIPPED_AGENT_SELECTOR)
            .fields(&format!("spec.nodeName={node}"));
        let list = pods.list(&params).await.ok()?;
        let pod = list.items.into_iter().find(|p| {
            p.metadata.namespace.as_deref() == Some(SYSTEM_NAMESPACE)
                && p.metadata.deletion_timestamp.is_none()
                && p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running")
        })?;
        self.ca(client).await.ok()?;
        pod.metadata.name
    }

    /// The CA certificate in the ConfigMap the agent's pod mounts.
    async fn ca(&self, client: &kube::Client) -> Result<String> {
        let maps: Api<ConfigMap> = Api::namespaced(client.clone(), SYSTEM_NAMESPACE);
        maps.get(rota_coordinator::tls::CA_CONFIGMAP)
            .await?
            .data
            .and_then(|d| d.get("ca.crt").cloned())
            .filter(|ca| !ca.is_empty())
            .ok_or_else(|| Error::Invalid("the coordinator's CA is not published".into()))
    }

    /// Start the agent of `pod` as its kubelet would: a token bound to the pod, with the
    /// audience and expiry its projected volume asks for, requested as the node; the mounted CA.
    async fn start(&self, node: &str, pod: &str, host: &SimHost) -> Result<Process> {
        let client = self.client(node)?;
        let pods: Api<Pod> = Api::namespaced(client.clone(), SYSTEM_NAMESPACE);
        let pod = pods.get(pod).await?;
        let spec = pod.spec.clone().unwrap_or_default();
        let projected = spec
            .volumes
            .iter()
            .flatten()
            .filter_map(|v| v.projected.as_ref())
            .flat_map(|p| p.sources.iter().flatten())
            .find_map(|s| s.service_account_token.clone())
            .ok_or_else(|| Error::Invalid("the agent's pod projects no token".into()))?;
        let request = TokenRequest {
            spec: TokenRequestSpec {
                audiences: projected.audience.into_iter().collect(),
                expiration_seconds: projected.expiration_seconds,
                bound_object_ref: Some(BoundObjectReference {
                    api_version: Some("v1".into()),
                    kind: Some("Pod".into()),
                    name: pod.metadata.name.clone(),
                    uid: pod.metadata.uid.clone(),
                }),
            },
            ..TokenRequest::default()
        };
        let account = spec
            .service_account_name
            .unwrap_or_else(|| "default".into());
        let accounts: Api<ServiceAccount> = Api::namespaced(client.clone(), SYSTEM_NAMESPACE);
        let token = accounts
            .create_token_request(&account, &PostParams::default(), &request)
            .await?
            .status
            .ok_or_else(|| Error::Invalid("the token request has no status".into()))?
            .token;
        let token_file = self.token_dir.join(format!("{node}.token"));
        std::fs::write(&token_file, token)?;
        let ca_file = self.token_dir.join(format!("{node}.ca.crt"));
        std::fs::write(&ca_file, self.ca(client).await?)?;
        let flags = flags_for(
            &self.options,
            self.coordinator,
            Some(&ca_file),
            node,
            &token_file,
        )?;
        spawn_agent(run_args(flags)?, node, host, &self.tokens)
    }
}

/// Which daemon runs on the nodes.
#[derive(Clone, Debug)]
pub(crate) enum DaemonKind {
    /// rota's agent (DaemonSet `rota-system/rota-agent`).
    RotaAgent(Arc<AgentSetup>),
    /// rota's agent as `deploy/` ships it, on simulated nodes of a real control plane.
    RemoteAgent(Arc<RemoteAgentSetup>),
    /// The kured model (DaemonSet `kube-system/kured`).
    Kured(Arc<KuredSetup>),
    /// The Zincati model: a host service, not a pod (an image-based node under FleetLock).
    Zincati(Arc<ZincatiSetup>),
}

impl DaemonKind {
    /// Namespace and name of the daemon's DaemonSet.
    pub(crate) fn daemonset(&self) -> (&'static str, &'static str) {
        match self {
            // Zincati runs on the host; the agents' DaemonSet is the one the node has.
            DaemonKind::RotaAgent(_) | DaemonKind::RemoteAgent(_) | DaemonKind::Zincati(_) => {
                (SYSTEM_NAMESPACE, "rota-agent")
            }
            DaemonKind::Kured(_) => (super::kured::KURED_NAMESPACE, super::kured::KURED_NAME),
        }
    }

    /// Waits until the daemon's pod on `node` may start (see [`DaemonKind::ready_to_start`]);
    /// returns the pod's name.
    async fn wait_ready(&self, node: &str) -> String {
        match self {
            DaemonKind::RotaAgent(setup) => {
                until(&setup.store, |_| self.ready_to_start(node)).await
            }
            DaemonKind::Kured(setup) => until(setup.store(), |_| self.ready_to_start(node)).await,
            // A host service: it starts with the host.
            DaemonKind::Zincati(_) => "zincati.service".to_owned(),
            DaemonKind::RemoteAgent(setup) => loop {
                if let Some(pod) = setup.ready_pod(node).await {
                    return pod;
                }
                tokio::time::sleep(REMOTE_POLL).await;
            },
        }
    }

    /// What the daemon's pod on `node` waits for before it starts in the emulator: the pod
    /// running, and for a TLS agent the coordinator's CA published (the pod mounts it).
    fn ready_to_start(&self, node: &str) -> Option<String> {
        let store = match self {
            DaemonKind::RotaAgent(setup) => &setup.store,
            DaemonKind::Kured(setup) => setup.store(),
            DaemonKind::RemoteAgent(_) | DaemonKind::Zincati(_) => return None,
        };
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

    /// Resolves once `pod` is deleted or being deleted (a DaemonSet rolling update replaces
    /// it): its kubelet stops the container. The emulated cluster never replaces the pod of a
    /// running daemon, so only a real cluster's pods are followed.
    async fn pod_gone(&self, node: &str, pod: &str) {
        let DaemonKind::RemoteAgent(setup) = self else {
            return std::future::pending().await;
        };
        let Ok(client) = setup.client(node) else {
            return std::future::pending().await;
        };
        let pods: Api<Pod> = Api::namespaced(client.clone(), SYSTEM_NAMESPACE);
        loop {
            tokio::time::sleep(REMOTE_POLL).await;
            match pods.get(pod).await {
                Ok(p) if p.metadata.deletion_timestamp.is_some() => return,
                // Gone; the Node authorizer answers 403 for a pod no longer bound to the node.
                Err(kube::Error::Api(status)) if matches!(status.code, 403 | 404) => return,
                _ => {}
            }
        }
    }

    async fn start(&self, node: &str, pod: &str, host: &SimHost) -> Result<Process> {
        match self {
            DaemonKind::RotaAgent(setup) => start_agent(setup, node, pod, host),
            DaemonKind::RemoteAgent(setup) => setup.start(node, pod, host).await,
            DaemonKind::Kured(setup) => setup.start(node, host),
            DaemonKind::Zincati(setup) => setup.start(node, host),
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

/// The command line of the agent's container in the DaemonSet pod on `node`: the Service's
/// address, the projected token, the mounted CA (TLS), and the demo's timings.
fn agent_flags(setup: &AgentSetup, node: &str, token_file: &Path) -> Result<Vec<String>> {
    let ca_file = if setup.tls {
        // The pod mounts the CA the coordinator published (ConfigMap `rota-ca`).
        let ca = coordinator_ca(&setup.store)
            .ok_or_else(|| Error::Invalid("the coordinator's CA is not published".into()))?;
        let ca_file = setup.token_dir.join(format!("{node}.ca.crt"));
        std::fs::write(&ca_file, ca)?;
        Some(ca_file)
    } else {
        None
    };
    flags_for(
        &setup.options,
        setup.coordinator,
        ca_file.as_deref(),
        node,
        token_file,
    )
}

/// The agent's flags: plaintext unless it has the coordinator's CA in `ca_file`.
fn flags_for(
    options: &AgentOptions,
    coordinator: std::net::SocketAddr,
    ca_file: Option<&Path>,
    node: &str,
    token_file: &Path,
) -> Result<Vec<String>> {
    let upgrade = options
        .upgrade
        .to_possible_value()
        .ok_or_else(|| Error::Invalid("the agents' upgrade policy has no flag value".into()))?;
    let mut flags = vec![
        "rota-agent".to_owned(),
        "run".to_owned(),
        format!("--node={node}"),
        format!("--token-file={}", token_file.display()),
        format!("--upgrade={}", upgrade.get_name()),
        format!("--retry-interval-ms={}", options.retry_interval.as_millis()),
        // A simulated host goes down at once; no need to wait for it as for a real machine.
        "--reboot-timeout=5".to_owned(),
    ];
    if let Some(ca_file) = ca_file {
        flags.extend([
            format!("--coordinator=https://{coordinator}"),
            format!("--ca-file={}", ca_file.display()),
            format!("--tls-server-name={SERVICE_DNS_NAME}"),
        ]);
    } else {
        flags.extend([
            format!("--coordinator=http://{coordinator}"),
            "--insecure-plaintext".to_owned(),
        ]);
    }
    Ok(flags)
}

/// The agent's `run` arguments, parsed by the `rota-agent` command line itself from `flags`
/// alone: the `ROTA_*` variables of the process running the simulation are not the pod's.
fn run_args(flags: Vec<String>) -> Result<RunArgs> {
    let no_env = |arg: clap::Arg| arg.env(None::<&str>);
    let command = Cli::command()
        .mut_args(no_env)
        .mut_subcommand("run", |run| run.mut_args(no_env));
    let cli = command
        .try_get_matches_from(flags)
        .and_then(|matches| Cli::from_arg_matches(&matches))
        .map_err(|e| Error::Invalid(format!("agent flags: {e}")))?;
    match cli.command {
        Command::Run(args) => Ok(*args),
        other => Err(Error::Invalid(format!("not the agent's daemon: {other:?}"))),
    }
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
    let args = run_args(agent_flags(setup, node, &token_file)?)?;
    spawn_agent(args, node, host, &setup.tokens)
}

/// Run the agent with `args` on `node`'s host as a [`Process`].
fn spawn_agent(
    args: RunArgs,
    node: &str,
    host: &SimHost,
    tokens: &HostTokenLog,
) -> Result<Process> {
    let alive = Arc::new(AtomicBool::new(true));
    let host: Arc<dyn Host> = Arc::new(ProcessHost::new(
        host.clone(),
        alive.clone(),
        Some(args.daemon_config().exec.state_path),
        tokens.clone(),
    )?);
    let name = format!("agent-{node}");
    Process::spawn(&name, move || async move {
        let _alive = AliveGuard(alive);
        if let Err(e) = args.run(host, std::future::pending()).await {
            tracing::error!(node = %args.node, error = %e, "agent stopped");
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

/// The harness's handle on one node's daemon.
pub(crate) type NodeDaemon = Supervisor;

/// Starts the supervisor of `node`'s daemon. Its answer to a restart comes at once: the start
/// itself may wait for the host and the pod.
pub(crate) fn start_daemon(
    node: String,
    host: SimHost,
    kind: DaemonKind,
    cancel: CancellationToken,
) -> (NodeDaemon, tokio::task::JoinHandle<()>) {
    let (daemon, rx) = Supervisor::channel();
    let task = tokio::spawn(supervise(node, host, kind, rx, cancel));
    (daemon, task)
}

/// Answers the harness's `command` to a daemon that runs or waits to: whether it is to stay down
/// (`Some(true)` for a kill, `Some(false)` for a restart, which lets it run), or `None` when the
/// harness is gone.
fn answer(command: Option<Control>) -> Option<bool> {
    let (kill, ack) = match command? {
        Control::Kill(ack) => (true, ack),
        Control::Restart(ack) => (false, ack),
    };
    let _ = ack.send(());
    Some(kill)
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
                command = control.recv() => match answer(command) {
                    Some(kill) => stopped = kill,
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
                match answer(command) {
                    Some(kill) => stopped = kill,
                    None => return,
                }
                continue;
            }
            () = cancel.cancelled() => return,
        };
        let pod = tokio::select! {
            pod = kind.wait_ready(&node) => pod,
            changed = power.changed() => {
                if changed.is_err() {
                    return;
                }
                continue;
            }
            command = control.recv() => {
                match answer(command) {
                    Some(kill) => stopped = kill,
                    None => return,
                }
                continue;
            }
            () = cancel.cancelled() => return,
        };
        if *power.borrow() != boot {
            continue;
        }
        let process = match kind.start(&node, &pod, &host).await {
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
            PodGone,
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
            () = kind.pod_gone(&node, &pod) => Ended::PodGone,
            command = control.recv() => Ended::Control(command),
            () = cancel.cancelled() => Ended::Cancelled,
        };
        process.kill().await;
        match ended {
            Ended::HostDown => {}
            Ended::PodGone => {
                tracing::info!(%node, %pod, "the daemon's pod was deleted; its container stops");
            }
            Ended::Exited => {
                tracing::warn!(%node, "the node's daemon ended; starting it again");
                tokio::select! {
                    () = tokio::time::sleep(CRASH_BACKOFF) => {}
                    () = cancel.cancelled() => return,
                }
            }
            Ended::Control(command) => match answer(command) {
                Some(kill) => {
                    if kill {
                        tracing::info!(%node, "node daemon killed");
                    }
                    stopped = kill;
                }
                None => return,
            },
            Ended::Cancelled => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_agents_flags_carry_every_option() {
        let dir = tempfile::tempdir().unwrap();
        let setup = AgentSetup {
            store: Store::new(),
            coordinator: ([127, 0, 0, 1], 9443).into(),
            tls: false,
            options: AgentOptions::default(),
            token_dir: dir.path().to_path_buf(),
            tokens: HostTokenLog::default(),
        };
        let token_file = dir.path().join("n1.token");
        let args = run_args(agent_flags(&setup, "n1", &token_file).unwrap()).unwrap();
        assert_eq!(args.coordinator, "http://127.0.0.1:9443");
        assert!(args.tls.insecure_plaintext);
        assert_eq!(args.token_file.as_deref(), Some(token_file.as_path()));
        let config = args.daemon_config();
        assert_eq!(config.node, "n1");
        assert_eq!(config.upgrade, setup.options.upgrade);
        assert_eq!(config.retry_interval, setup.options.retry_interval);
        assert_eq!(config.exec.shutdown_wait, Duration::from_secs(5));
    }
}
