//! How the agent reaches the coordinator: TLS by default, trusting every CA of the bundle the
//! coordinator publishes (the `rota-ca` ConfigMap, mounted at [`DEFAULT_CA_FILE`]) and
//! checking the coordinator's name; optionally with a client certificate (when the
//! coordinator requires mutual TLS). Plain-text `http://` is refused unless
//! `--insecure-plaintext` says this is a development setup.
//!
//! The bundle (and the client certificate) is read again for **every new connection**, so a
//! CA rotation reaches a running agent without a restart: the kubelet rewrites the mounted
//! ConfigMap within about a minute, established connections keep the certificate they
//! verified, and the next connection trusts the new bundle.

use std::future::Future;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use clap::Args;
use hyper_util::rt::TokioIo;
use rustls::RootCertStore;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;
use tonic::codegen::Service;
use tonic::codegen::http::Uri;
use tonic::transport::{Channel, Endpoint};

use crate::{Error, Result};

/// Where the DaemonSet mounts the coordinator's CA certificate.
pub const DEFAULT_CA_FILE: &str = "/etc/rota/ca/ca.crt";

/// The name the coordinator's certificate must carry: its Service in the default namespace.
pub const DEFAULT_SERVER_NAME: &str = "rota-coordinator.rota-system.svc";

/// How long the TLS handshake with the coordinator may take.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// TLS settings of the agent's connection to the coordinator.
#[derive(Clone, Debug, PartialEq, Eq, Args)]
pub struct TlsArgs {
    /// CA certificate(s) (PEM) the coordinator's certificate must chain to.
    #[arg(long, env = "ROTA_CA_FILE", default_value = DEFAULT_CA_FILE)]
    pub ca_file: PathBuf,
    /// The name the coordinator's certificate must carry (whatever host the address names).
    #[arg(long, env = "ROTA_TLS_SERVER_NAME", default_value = DEFAULT_SERVER_NAME)]
    pub tls_server_name: String,
    /// Client certificate (PEM) for a coordinator that requires mutual TLS.
    #[arg(
        long,
        env = "ROTA_TLS_CLIENT_CERT_FILE",
        requires = "tls_client_key_file"
    )]
    pub tls_client_cert_file: Option<PathBuf>,
    /// Private key (PEM) of --tls-client-cert-file.
    #[arg(
        long,
        env = "ROTA_TLS_CLIENT_KEY_FILE",
        requires = "tls_client_cert_file"
    )]
    pub tls_client_key_file: Option<PathBuf>,
    /// Allow a plain-text `http://` coordinator. Local development only: the node's token
    /// and every message cross the network readable and forgeable.
    #[arg(long, env = "ROTA_INSECURE_PLAINTEXT")]
    pub insecure_plaintext: bool,
}

impl Default for TlsArgs {
    fn default() -> Self {
        TlsArgs {
            ca_file: PathBuf::from(DEFAULT_CA_FILE),
            tls_server_name: DEFAULT_SERVER_NAME.to_owned(),
            tls_client_cert_file: None,
            tls_client_key_file: None,
            insecure_plaintext: false,
        }
    }
}

/// How long connecting to the coordinator may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// How often an idle connection is probed, so a dead coordinator is noticed.
const KEEP_ALIVE_INTERVAL: Duration = Duration::from_secs(30);

/// A channel to the coordinator at `url` that connects lazily (the agent starts even while the
/// coordinator is down): TLS for `https://`, reading the CA bundle on every new connection;
/// `http://` only with `--insecure-plaintext` (and a loud warning); anything else is refused.
/// Reads and checks the CA and client files now, so a missing mount fails at start, not at
/// the first call.
pub fn channel(url: &str, tls: &TlsArgs) -> Result<Channel> {
    if let Some(rest) = url.strip_prefix("https://") {
        let connector = ReloadingTls::new(tls)?;
        // The connector does TLS itself; tonic must not (it would with an https URI).
        let endpoint = Endpoint::from_shared(format!("http://{rest}"))?;
        return Ok(configure(endpoint).connect_with_connector_lazy(connector));
    }
    if !url.starts_with("http://") {
        return Err(Error::Refused(format!(
            "coordinator address {url:?} must start with https://"
        )));
    }
    if !tls.insecure_plaintext {
        return Err(Error::Refused(format!(
            "coordinator address {url:?} is plain-text http://; use https:// (or pass \
             --insecure-plaintext in a local development setup)"
        )));
    }
    tracing::warn!(
        coordinator = url,
        "INSECURE: --insecure-plaintext: talking to the coordinator without TLS; this node's \
         token and all its messages can be read and forged on the network. Never run this \
         outside local development."
    );
    Ok(configure(Endpoint::from_shared(url.to_owned())?).connect_lazy())
}

fn configure(endpoint: Endpoint) -> Endpoint {
    endpoint
        .connect_timeout(CONNECT_TIMEOUT)
        .http2_keep_alive_interval(KEEP_ALIVE_INTERVAL)
}

/// Connects over TLS with the CA bundle and client certificate as the files hold them at
/// the time of the connection.
#[derive(Clone, Debug)]
struct ReloadingTls {
    tls: Arc<TlsArgs>,
}

impl ReloadingTls {
    fn new(tls: &TlsArgs) -> Result<ReloadingTls> {
        ServerName::try_from(tls.tls_server_name.clone()).map_err(|e| {
            Error::Refused(format!(
                "--tls-server-name {:?} is not a DNS name or IP address: {e}",
                tls.tls_server_name
            ))
        })?;
        client_config(tls)?;
        Ok(ReloadingTls {
            tls: Arc::new(tls.clone()),
        })
    }

    async fn connect(tls: Arc<TlsArgs>, uri: Uri) -> Result<TokioIo<TlsStream<TcpStream>>> {
        let failed = |what: &str, detail: String| Error::Connect(format!("{what} {uri}: {detail}"));
        let host = uri
            .host()
            .map(|h| h.trim_start_matches('[').trim_end_matches(']').to_owned())
            .ok_or_else(|| failed("no host in", String::new()))?;
        let port = uri.port_u16().unwrap_or(443);
        let config = {
            let tls = tls.clone();
            tokio::task::spawn_blocking(move || client_config(&tls))
                .await
                .map_err(|e| failed("reading the CA bundle for", e.to_string()))??
        };
        let name = ServerName::try_from(tls.tls_server_name.clone())
            .map_err(|e| failed("server name for", e.to_string()))?;
        let tcp = TcpStream::connect((host.as_str(), port))
            .await
            .map_err(|e| failed("connecting to", e.to_string()))?;
        // gRPC's small frames must not wait for Nagle.
        if let Err(e) = tcp.set_nodelay(true) {
            tracing::debug!(error = %e, "cannot set TCP_NODELAY");
        }
        let handshake = TlsConnector::from(Arc::new(config)).connect(name, tcp);
        let stream = tokio::time::timeout(HANDSHAKE_TIMEOUT, handshake)
            .await
            .map_err(|_| failed("TLS handshake timed out with", String::new()))?
            .map_err(|e| failed("TLS handshake with", e.to_string()))?;
        Ok(TokioIo::new(stream))
    }
}

impl Service<Uri> for ReloadingTls {
    type Response = TokioIo<TlsStream<TcpStream>>;
    type Error = Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        Box::pin(ReloadingTls::connect(self.tls.clone(), uri))
    }
}

/// The rustls client configuration of `tls` as its files are now: every certificate of the
/// CA bundle trusted, HTTP/2 by ALPN, the client certificate when configured.
fn client_config(tls: &TlsArgs) -> Result<rustls::ClientConfig> {
    let invalid = |what: &str, e: &dyn std::fmt::Display| Error::parse(what, e.to_string());
    let mut roots = RootCertStore::empty();
    for cert in certificates(&read_certificates(&tls.ca_file)?) {
        roots
            .add(cert)
            .map_err(|e| invalid(&format!("CA certificate in {}", tls.ca_file.display()), &e))?;
    }
    let builder = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| invalid("TLS protocol versions", &e))?
    .with_root_certificates(roots);
    let mut config = match (&tls.tls_client_cert_file, &tls.tls_client_key_file) {
        (Some(cert), Some(key)) => {
            let chain = certificates(&read_certificates(cert)?);
            let pem = std::fs::read(key).map_err(|e| Error::io("read", key, e))?;
            let key_der = PrivateKeyDer::from_pem_slice(&pem)
                .map_err(|e| invalid(&format!("private key in {}", key.display()), &e))?;
            builder
                .with_client_auth_cert(chain, key_der)
                .map_err(|e| invalid(&format!("client certificate {}", cert.display()), &e))?
        }
        _ => builder.with_no_client_auth(),
    };
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(config)
}

/// The certificates of PEM text [`read_certificates`] checked.
fn certificates(pem: &[u8]) -> Vec<CertificateDer<'static>> {
    CertificateDer::pem_slice_iter(pem).flatten().collect()
}

/// A PEM file with at least one certificate, all of them well-formed.
fn read_certificates(path: &Path) -> Result<Vec<u8>> {
    let pem = std::fs::read(path).map_err(|e| Error::io("read", path, e))?;
    let mut count = 0;
    for cert in CertificateDer::pem_slice_iter(&pem) {
        cert.map_err(|e| {
            Error::parse(format!("certificates in {}", path.display()), e.to_string())
        })?;
        count += 1;
    }
    if count == 0 {
        return Err(Error::parse(
            format!("certificates in {}", path.display()),
            "no PEM CERTIFICATE block",
        ));
    }
    Ok(pem)
}

#[cfg(test)]
mod tests {
    use clap::{CommandFactory, Parser};

    use super::*;

    #[derive(Debug, Parser)]
    struct Cli {
        #[command(flatten)]
        tls: TlsArgs,
    }

    #[test]
    fn flags_have_env_vars_and_defaults() {
        Cli::command().debug_assert();
        for arg in Cli::command().get_arguments() {
            let id = arg.get_id().as_str();
            if id == "help" {
                continue;
            }
            let env = arg
                .get_env()
                .unwrap_or_else(|| panic!("--{id} has no env var"));
            assert!(env.to_string_lossy().starts_with("ROTA_"), "{id}: {env:?}");
        }
        let parsed = Cli::try_parse_from(["x"]).unwrap().tls;
        assert_eq!(parsed, TlsArgs::default());
        assert_eq!(parsed.ca_file, Path::new(DEFAULT_CA_FILE));
        assert_eq!(parsed.tls_server_name, DEFAULT_SERVER_NAME);
        assert!(!parsed.insecure_plaintext);
        assert!(Cli::try_parse_from(["x", "--tls-client-cert-file=/c"]).is_err());
    }
}
