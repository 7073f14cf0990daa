//! A model of Zincati, the update agent of Fedora CoreOS, on a simulated host: what an
//! image-based node runs instead of rota's agent. It speaks FleetLock to the coordinator as
//! Zincati does — the header, the body, its app-specific machine id, the group, HTTP basic
//! authentication from the `base_url`'s user info, and a retry of every non-200 answer:
//!
//! 1. **initialization**: `POST /v1/steady-state` until it answers 200 (a lock held from before
//!    a reboot is released only once rota has verified the node);
//! 2. when an update is found, it is staged (here: every pending package is installed, as
//!    rpm-ostree deploys the next image) and **pre-reboot** `POST /v1/pre-reboot` is asked until
//!    it answers 200;
//! 3. **finalization**: it marks the update finalized on the host and reboots it.
//!
//! After the boot, the next process starts again at 1 and, the update being in place, stays in
//! its steady state.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use base64::Engine;
use rota_agent::host::{Host, RebootMethod};
use rota_core::fleetlock::{PRE_REBOOT, PROTOCOL_HEADER, STEADY_STATE};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::watch;

use super::coordinator::{Routes, SERVICE_DNS_NAME};
use super::process::{HostTokenLog, Process, ProcessHost};
use super::{Error, Result};
use crate::apiserver::Store;
use crate::cluster::SimHost;

/// Where Zincati marks the update it rebooted into.
pub(crate) const FINALIZED: &str = "/var/lib/zincati/finalized";

/// What the Zincati processes of a simulation share.
pub(crate) struct ZincatiSetup {
    /// Where the coordinator's replicas listen (a Service routes to the leader).
    pub(crate) routes: watch::Receiver<Routes>,
    /// The reboot group (the pool's name).
    pub(crate) group: String,
    /// The group's token.
    pub(crate) token: String,
    /// Whether the coordinator serves TLS (its CA is read from the cluster).
    pub(crate) tls: bool,
    pub(crate) store: Store,
    /// Between two attempts.
    pub(crate) retry: Duration,
}

impl std::fmt::Debug for ZincatiSetup {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ZincatiSetup")
            .field("group", &self.group)
            .field("tls", &self.tls)
            .finish_non_exhaustive()
    }
}

impl ZincatiSetup {
    /// Starts Zincati on `host` for its current boot.
    pub(crate) fn start(self: &Arc<Self>, node: &str, host: &SimHost) -> Result<Process> {
        let alive = Arc::new(AtomicBool::new(true));
        let process_host =
            ProcessHost::new(host.clone(), alive.clone(), None, HostTokenLog::default())?;
        let sim_host = host.clone();
        let setup = self.clone();
        let node = node.to_owned();
        Process::spawn(&format!("zincati-{node}"), move || async move {
            let _alive = super::nodes::AliveGuard(alive);
            if let Err(e) = run(&setup, &node, &sim_host, Arc::new(process_host)).await {
                tracing::warn!(%node, error = %e, "zincati stopped");
            }
        })
    }

    /// Asks `path` until it answers 200.
    async fn until_granted(&self, node: &str, path: &str, id: &str) {
        loop {
            match self.ask(path, id).await {
                Ok((200, _)) => return,
                Ok((status, body)) => {
                    tracing::debug!(%node, path, status, %body, "zincati: FleetLock refused; retrying");
                }
                Err(e) => {
                    tracing::debug!(%node, path, error = %e, "zincati: FleetLock unreachable; retrying")
                }
            }
            tokio::time::sleep(self.retry).await;
        }
    }

    /// One FleetLock request: status and body.
    async fn ask(&self, path: &str, id: &str) -> Result<(u16, String)> {
        let addr = self
            .routes
            .borrow()
            .fleetlock()
            .ok_or_else(|| Error::Coordinator("no replica serves FleetLock".into()))?;
        let body =
            serde_json::json!({"client_params": {"id": id, "group": self.group}}).to_string();
        let credentials = base64::engine::general_purpose::STANDARD
            .encode(format!("{}:{}", self.group, self.token));
        let authorization = format!("Basic {credentials}");
        let headers = [
            (PROTOCOL_HEADER, "true"),
            ("Authorization", authorization.as_str()),
        ];
        let tls = if self.tls {
            Some(client_config(&self.store)?)
        } else {
            None
        };
        post(addr, tls, path, &headers, &body).await
    }
}

/// A client configuration that trusts the coordinator's CA, as published in the cluster.
pub(crate) fn client_config(store: &Store) -> Result<Arc<rustls::ClientConfig>> {
    let ca = super::nodes::coordinator_ca(store)
        .ok_or_else(|| Error::Coordinator("the coordinator has not published its CA".into()))?;
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls::pki_types::pem::PemObject::pem_slice_iter(ca.as_bytes()) {
        let cert = cert.map_err(|e| Error::Invalid(format!("the coordinator's CA: {e}")))?;
        roots
            .add(cert)
            .map_err(|e| Error::Invalid(format!("the coordinator's CA: {e}")))?;
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| Error::Invalid(format!("TLS: {e}")))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(config))
}

/// One HTTP/1.1 `POST` with `headers` and a JSON `body` to `addr` (over TLS to the
/// coordinator's Service name when `tls` is given): the status and the body of the answer.
pub(crate) async fn post(
    addr: SocketAddr,
    tls: Option<Arc<rustls::ClientConfig>>,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> Result<(u16, String)> {
    let mut request = format!("POST {path} HTTP/1.1\r\nHost: {SERVICE_DNS_NAME}\r\n");
    for (name, value) in headers {
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    request.push_str(&format!(
        "Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    ));
    let tcp = TcpStream::connect(addr).await?;
    let Some(tls) = tls else {
        return exchange(tcp, &request).await;
    };
    let name = rustls::pki_types::ServerName::try_from(SERVICE_DNS_NAME)
        .map_err(|e| Error::Invalid(format!("server name: {e}")))?;
    let stream = tokio_rustls::TlsConnector::from(tls)
        .connect(name, tcp)
        .await?;
    exchange(stream, &request).await
}

/// Sends `request` and reads the whole answer (the server closes the connection).
async fn exchange<S: AsyncRead + AsyncWrite + Unpin>(
    mut stream: S,
    request: &str,
) -> Result<(u16, String)> {
    stream.write_all(request.as_bytes()).await?;
    stream.flush().await?;
    let mut answer = Vec::new();
    // A TLS peer may close without close_notify after a complete answer: keep what came.
    if let Err(e) = stream.read_to_end(&mut answer).await
        && answer.is_empty()
    {
        return Err(e.into());
    }
    let text = String::from_utf8_lossy(&answer);
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| Error::Invalid(format!("not an HTTP answer: {text:?}")))?;
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    Ok((status, body))
}

/// One boot of Zincati.
async fn run(
    setup: &ZincatiSetup,
    node: &str,
    sim_host: &SimHost,
    host: Arc<ProcessHost>,
) -> Result<()> {
    let machine_id = String::from_utf8_lossy(&host.read_file(Path::new("/etc/machine-id"))?)
        .trim()
        .to_owned();
    let id = rota_coordinator::fleetlock::zincati_id(&machine_id)
        .ok_or_else(|| Error::Invalid(format!("{node}: machine id {machine_id:?}")))?;
    setup.until_granted(node, STEADY_STATE, &id).await;
    if host.exists(Path::new(FINALIZED))? {
        tracing::debug!(%node, "zincati: up to date");
        std::future::pending::<()>().await;
    }
    // An update is found and staged for the next boot.
    super::kured::unattended_upgrade(sim_host)?;
    setup.until_granted(node, PRE_REBOOT, &id).await;
    host.write_file_atomic(Path::new(FINALIZED), b"finalized\n")?;
    tracing::info!(%node, "zincati: reboot slot granted; finalizing the update and rebooting");
    // The reboot call returns only once this process is gone: off the runtime's thread, so
    // that the host going down can end the process.
    let rebooting = host.clone();
    let _ = tokio::task::spawn_blocking(move || rebooting.reboot(&RebootMethod::Systemctl)).await;
    std::future::pending::<()>().await;
    Ok(())
}
