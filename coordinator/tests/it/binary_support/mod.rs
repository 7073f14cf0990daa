//! Shared by the tests that run the `rota-coordinator` binary: starting it against an emulated
//! API server, asking its HTTP server (probes, metrics) until it says what is expected, and
//! reaching its gRPC server as an agent does.

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::future::Future;
use std::net::{Ipv4Addr, SocketAddr, TcpListener as StdListener};
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use k8s_openapi::api::core::v1::ConfigMap;
use kube::{Api, CustomResourceExt};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use rota_core::policy::MaintenancePolicy;
use rota_sim::apiserver::{ApiServer, GroupResource, ServerHandle, Store};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::process::{Child, Command};
use tokio::time::Instant;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint};

/// How long anything the tests wait for may take.
pub const WITHIN: Duration = Duration::from_secs(15);

/// An address nothing listens on (yet).
pub fn free_addr() -> SocketAddr {
    let listener = StdListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
    listener.local_addr().unwrap()
}

/// A store with what a coordinator in `namespace` needs: the MaintenancePolicy CRD, the
/// namespace, and the Nodes `nodes`.
pub fn coordinator_store(namespace: &str, nodes: &[&str]) -> Store {
    let store = Store::new();
    store.create_as(&MaintenancePolicy::crd()).unwrap();
    let namespaces = GroupResource::core("namespaces");
    let created = store.create(&namespaces, None, json!({"metadata": {"name": namespace}}));
    // The store starts with the well-known namespaces (`kube-system`, ...).
    if let Err(e) = created {
        assert_eq!(e.code(), 409, "{e}");
    }
    for node in nodes {
        store
            .create(
                &GroupResource::core("nodes"),
                None,
                json!({"metadata": {"name": node}}),
            )
            .unwrap();
    }
    store
}

/// The emulated API server, and a kubeconfig file for it.
pub struct Emulator {
    pub server: ServerHandle,
    pub kubeconfig: PathBuf,
    _dir: tempfile::TempDir,
}

/// Serves `store` on a free port.
pub async fn emulator(store: Store) -> Emulator {
    let server = ApiServer::start(store, SocketAddr::from((Ipv4Addr::LOCALHOST, 0)))
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let kubeconfig = dir.path().join("kubeconfig");
    std::fs::write(&kubeconfig, server.kubeconfig()).unwrap();
    Emulator {
        server,
        kubeconfig,
        _dir: dir,
    }
}

/// A running `rota-coordinator` process and its addresses.
pub struct Binary {
    pub child: Child,
    pub http: SocketAddr,
    pub grpc: SocketAddr,
}

/// Starts `rota-coordinator` as pod `name` with the kubeconfig at `kubeconfig`, fast election
/// timings, and `env` on top (e.g. `ROTA_NAMESPACE`, `ROTA_NODE_NAME`).
pub fn start_binary(kubeconfig: &Path, name: &str, env: &[(&str, &str)]) -> Binary {
    let (http, grpc) = (free_addr(), free_addr());
    let child = Command::new(env!("CARGO_BIN_EXE_rota-coordinator"))
        .env_remove("KUBECONFIG")
        .env("ROTA_KUBECONFIG", kubeconfig)
        .env("ROTA_POD_NAME", name)
        .env("ROTA_HTTP_ADDR", http.to_string())
        .env("ROTA_GRPC_ADDR", grpc.to_string())
        .env("ROTA_LEASE_DURATION", "2s")
        .env("ROTA_RENEW_DEADLINE", "1s")
        .env("ROTA_RETRY_PERIOD", "100ms")
        .env("ROTA_SHUTDOWN_GRACE", "5s")
        .env("ROTA_LOG_FORMAT", "json")
        .env("ROTA_LOG", "info")
        .envs(env.iter().copied())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    Binary { child, http, grpc }
}

impl Binary {
    pub fn signal(&self, signal: Signal) {
        let pid = i32::try_from(self.child.id().unwrap()).unwrap();
        kill(Pid::from_raw(pid), signal).unwrap();
    }

    pub async fn exit(&mut self) -> ExitStatus {
        tokio::time::timeout(WITHIN, self.child.wait())
            .await
            .expect("the process must exit")
            .unwrap()
    }
}

/// `GET path`: status and body, or `None` while nothing listens.
pub async fn get(addr: SocketAddr, path: &str) -> Option<(u16, String)> {
    let mut conn = TcpStream::connect(addr).await.ok()?;
    let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    conn.write_all(request.as_bytes()).await.ok()?;
    let mut raw = Vec::new();
    conn.read_to_end(&mut raw).await.ok()?;
    let text = String::from_utf8(raw).ok()?;
    let (head, body) = text.split_once("\r\n\r\n")?;
    Some((head.split(' ').nth(1)?.parse().ok()?, body.to_owned()))
}

/// Polls `probe` until it gives a value, for at most [`WITHIN`]; the panic says `what` was
/// awaited and the last thing `probe` reported.
pub async fn eventually<T, F, Fut>(what: &str, mut probe: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, String>>,
{
    let deadline = Instant::now() + WITHIN;
    loop {
        let last = match probe().await {
            Ok(value) => return value,
            Err(last) => last,
        };
        assert!(Instant::now() < deadline, "{what}; last: {last}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Polls `path` until its body contains `needle` with status `status`.
pub async fn until(addr: SocketAddr, path: &str, status: u16, needle: &str) {
    let what = format!("{addr}{path} never answered {status} with {needle:?}");
    eventually(&what, || async {
        match get(addr, path).await {
            Some((code, body)) if code == status && body.contains(needle) => Ok(()),
            last => Err(format!("{last:?}")),
        }
    })
    .await;
}

/// A TLS channel to the coordinator's gRPC server at `grpc`, trusting the CA it published in
/// `namespace` (ConfigMap `rota-ca`) and checking its Service's name, as the agents do.
pub async fn agent_channel(client: &kube::Client, namespace: &str, grpc: SocketAddr) -> Channel {
    let ca = Api::<ConfigMap>::namespaced(client.clone(), namespace)
        .get("rota-ca")
        .await
        .unwrap()
        .data
        .unwrap()
        .remove("ca.crt")
        .unwrap();
    Endpoint::from_shared(format!("https://{grpc}"))
        .unwrap()
        .tls_config(
            ClientTlsConfig::new()
                .ca_certificate(Certificate::from_pem(&ca))
                .domain_name(format!("rota-coordinator.{namespace}.svc")),
        )
        .unwrap()
        .connect()
        .await
        .unwrap()
}
