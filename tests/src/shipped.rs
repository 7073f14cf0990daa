//! rota as `deploy/` ships it, on the real control plane: applying `deploy/` with the built
//! kubectl, and running the `rota-coordinator` binary as a process with a token of a
//! ServiceAccount `deploy/` creates, so the RBAC in `deploy/` is exactly what it has.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::future::Future;
use std::net::{Ipv4Addr, SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use rota_sim::demo::{ReplicaAddrs, Service};
use rota_sim::real::rollout;
use tokio::process::{Child, Command};

use crate::control_plane::ControlPlane;
use crate::kubectl::Kubectl;

pub use rota_sim::real::rollout::NAMESPACE;
/// How long the coordinator may take to lead and settle.
pub const DEADLINE: Duration = Duration::from_secs(60);

/// The `rota-coordinator` binary of this build: `cargo test --workspace` builds it (the
/// coordinator's own integration tests need it) next to this test's executable.
pub fn coordinator_binary() -> PathBuf {
    workspace_binary("rota-coordinator", "rota-coordinator")
}

/// Binary `name` of package `package` of this build, which `cargo test --workspace` builds
/// (for the package's own integration tests) next to this test's executable.
pub fn workspace_binary(package: &str, name: &str) -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let dir = exe.parent().and_then(Path::parent).unwrap();
    let binary = dir.join(name);
    assert!(
        binary.exists(),
        "{} is not built: run `cargo build -p {package}` (cargo test --workspace does)",
        binary.display()
    );
    binary
}

pub fn free_port() -> u16 {
    TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A kubeconfig with a fresh API token of ServiceAccount `account` in rota's namespace.
pub async fn kubeconfig_as(cp: &ControlPlane, admin: &kube::Client, account: &str) -> PathBuf {
    rollout::service_account_kubeconfig(cp, admin, account)
        .await
        .unwrap()
}

/// A running coordinator process and where it logs.
pub struct Coordinator {
    child: Child,
    log: PathBuf,
    kubeconfig: PathBuf,
    pod: String,
    /// Its HTTP listener (metrics, health).
    pub http: SocketAddr,
    /// Its gRPC listener (the agents').
    pub grpc: SocketAddr,
}

impl Coordinator {
    /// Start the binary as `pod`, with `kubeconfig`; it logs to a file in the control plane's
    /// directory and is killed when dropped.
    pub fn start(cp: &ControlPlane, kubeconfig: &Path, pod: &str) -> Coordinator {
        Self::start_logging_to(cp.dir(), kubeconfig, pod)
    }

    /// Start the binary as `pod`, with `kubeconfig` (any API server's: the real one's or the
    /// emulator's); it logs to `POD.log` in `dir` and is killed when dropped.
    pub fn start_logging_to(dir: &Path, kubeconfig: &Path, pod: &str) -> Coordinator {
        let log = dir.join(format!("{pod}.log"));
        let http = SocketAddr::from((Ipv4Addr::LOCALHOST, free_port()));
        let grpc = SocketAddr::from((Ipv4Addr::LOCALHOST, free_port()));
        let child = Self::spawn(kubeconfig, pod, &log, http, grpc);
        Coordinator {
            child,
            log,
            kubeconfig: kubeconfig.to_path_buf(),
            pod: pod.to_owned(),
            http,
            grpc,
        }
    }

    fn spawn(
        kubeconfig: &Path,
        pod: &str,
        log: &Path,
        http: SocketAddr,
        grpc: SocketAddr,
    ) -> Child {
        let out = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .unwrap();
        Command::new(coordinator_binary())
            .arg("--kubeconfig")
            .arg(kubeconfig)
            .args(["--pod-name", pod, "--namespace", NAMESPACE])
            .args(["--grpc-addr", &grpc.to_string()])
            .args(["--http-addr", &http.to_string()])
            .env("ROTA_LOG", "info")
            .env_remove("ROTA_IN_CLUSTER")
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .stdin(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .unwrap()
    }

    /// Kill the process (SIGKILL, as a node failure or an OOM kill does) for good.
    pub async fn kill(&mut self) {
        self.child.kill().await.unwrap();
    }

    /// Kill the process (SIGKILL, as a node failure or an OOM kill does) and start it again on
    /// the same addresses, as its Deployment's next pod would be reached through the Service.
    pub async fn kill_and_restart(&mut self) {
        self.child.kill().await.unwrap();
        self.child = Self::spawn(&self.kubeconfig, &self.pod, &self.log, self.http, self.grpc);
    }

    /// Where it logs.
    pub fn log_path(&self) -> &Path {
        &self.log
    }

    /// What it logged so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

/// The coordinator's Service in front of its replica processes: each replica's `/readyz` is
/// probed every 250 ms and the endpoints follow (see [`Service`]); a replica that answers again
/// after not answering is a new pod (a new generation). Stops probing when dropped.
pub struct CoordinatorService {
    service: std::sync::Arc<Service>,
    prober: tokio::task::JoinHandle<()>,
}

impl CoordinatorService {
    /// The Service in front of `replicas` (their addresses stay when they are restarted).
    pub async fn start(replicas: &[&Coordinator]) -> CoordinatorService {
        let service = std::sync::Arc::new(Service::start().await.unwrap());
        let endpoints: Vec<ReplicaAddrs> = replicas
            .iter()
            .map(|c| ReplicaAddrs {
                grpc: c.grpc,
                http: c.http,
            })
            .collect();
        let routes = service.clone();
        let prober = tokio::spawn(async move {
            let mut generations = vec![(0_u64, false); endpoints.len()];
            loop {
                for (index, addrs) in endpoints.iter().enumerate() {
                    let answer = readyz(addrs.http).await;
                    let (generation, answered) = &mut generations[index];
                    if answer.is_some() && !*answered {
                        *generation += 1;
                    }
                    *answered = answer.is_some();
                    routes.set_endpoint(
                        index,
                        answer.map(|status| (*generation, *addrs, status == 200)),
                    );
                }
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
        });
        CoordinatorService { service, prober }
    }

    /// Where the agents connect.
    pub fn addr(&self) -> SocketAddr {
        self.service.addr()
    }
}

impl Drop for CoordinatorService {
    fn drop(&mut self) {
        self.prober.abort();
    }
}

/// The status `GET /readyz` on `addr` answers, if it answers.
pub async fn readyz(addr: SocketAddr) -> Option<u16> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr).await.ok()?;
    stream
        .write_all(b"GET /readyz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await
        .ok()?;
    let mut answer = String::new();
    stream.read_to_string(&mut answer).await.ok()?;
    answer.split_whitespace().nth(1)?.parse().ok()
}

/// Polls `check` until it returns `Some`, failing with `what` and the coordinator's log at the
/// deadline, or at once when the process exited.
pub async fn eventually<T, F: Future<Output = Option<T>>>(
    coordinator: &mut Coordinator,
    what: &str,
    mut check: impl FnMut() -> F,
) -> T {
    let deadline = tokio::time::Instant::now() + DEADLINE;
    loop {
        if let Some(value) = check().await {
            return value;
        }
        let exited = coordinator.child.try_wait().unwrap();
        assert!(
            exited.is_none() && tokio::time::Instant::now() < deadline,
            "waiting for {what}: {}\n{}",
            exited.map_or("timed out".to_string(), |s| format!(
                "the coordinator exited ({s})"
            )),
            coordinator.log()
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// The repository's `deploy/`.
pub fn deploy_dir() -> &'static str {
    concat!(env!("CARGO_MANIFEST_DIR"), "/../deploy")
}

/// Apply `deploy/` as a user does: the CRD (and wait until it is established), the base
/// (namespace, accounts, RBAC, the coordinator's Deployment and Service, the agents' DaemonSet).
pub async fn apply_deploy(kubectl: &Kubectl) {
    let applied = rollout::install(&kubectl.shared()).await.unwrap();
    for object in [
        "namespace/rota-system",
        "serviceaccount/rota-coordinator",
        "clusterrole.rbac.authorization.k8s.io/rota-coordinator",
        "deployment.apps/rota-coordinator",
        "daemonset.apps/rota-agent",
    ] {
        assert!(applied.contains(object), "{object} not applied:\n{applied}");
    }
}
