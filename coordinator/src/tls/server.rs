//! The server side: a rustls configuration that can be swapped while serving, the task that
//! keeps it fresh, and the stream of TLS connections tonic serves.

use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::{Arc, PoisonError, RwLock};
use std::time::Duration;

use futures::Stream;
use jiff::Timestamp;
use rustls::RootCertStore;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinSet;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;

use k8s_openapi::api::core::v1::Secret;
use kube::Api;

use super::bootstrap::{Bootstrap, secret_field};
use super::pki::CertInfo;
use super::{Error, Result, TlsOptions, TlsSource};

/// How long a client may take to finish its TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Most handshakes in flight; the listener waits for one to finish beyond that, so a flood
/// of idle connections cannot make the server hold unbounded state.
const MAX_PENDING_HANDSHAKES: usize = 1024;

/// After a failed `accept` that is not about one connection (e.g. too many open files), wait
/// this long instead of spinning.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(500);

/// Builds the gRPC server's TLS from `options`: the certificate files when given, else the
/// bootstrap in `namespace` through `client` (see the [module docs](super)). Fails when the
/// files are unreadable or the bootstrap objects cannot be read or written.
pub async fn server_config(
    options: &TlsOptions,
    client: kube::Client,
    namespace: &str,
) -> Result<ServerTls> {
    ServerTls::start(options, client, namespace, Timestamp::now()).await
}

/// Where the serving certificate comes from.
#[derive(Debug)]
enum Source {
    Files {
        cert: PathBuf,
        key: PathBuf,
    },
    Secret {
        secrets: Box<Api<Secret>>,
        name: String,
    },
    Bootstrap(Box<Bootstrap>),
}

/// What the current configuration was built from; a refresh that reads the same rebuilds
/// nothing.
#[derive(Clone, PartialEq, Eq)]
struct Material {
    cert_pem: String,
    key_pem: String,
    client_ca_pem: Option<String>,
    ca_pem: Option<String>,
}

struct Current {
    config: Arc<rustls::ServerConfig>,
    material: Material,
}

struct Inner {
    source: Source,
    client_ca: Option<PathBuf>,
    refresh_interval: Duration,
    current: RwLock<Current>,
}

/// The gRPC server's TLS: the current rustls configuration (new connections use the latest;
/// established ones keep theirs) and where it is refreshed from. Cheap to clone.
#[derive(Clone)]
pub struct ServerTls {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for ServerTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerTls")
            .field("source", &self.inner.source)
            .field("client_ca", &self.inner.client_ca)
            .finish_non_exhaustive()
    }
}

impl ServerTls {
    /// Loads (or bootstraps, at `now`) the certificate and builds the first configuration.
    pub async fn start(
        options: &TlsOptions,
        client: kube::Client,
        namespace: &str,
        now: Timestamp,
    ) -> Result<ServerTls> {
        let files = (&options.tls_cert_file, &options.tls_key_file);
        let source = match (options.source(), files) {
            (TlsSource::Files, (Some(cert), Some(key))) => Source::Files {
                cert: cert.clone(),
                key: key.clone(),
            },
            (TlsSource::Files, _) => {
                return Err(Error::invalid(
                    "--tls-source=files",
                    "needs --tls-cert-file and --tls-key-file",
                ));
            }
            (TlsSource::Secret | TlsSource::Bootstrap, (Some(_), _) | (_, Some(_))) => {
                return Err(Error::invalid(
                    "--tls-cert-file",
                    "only goes with --tls-source=files",
                ));
            }
            (TlsSource::Secret, _) => Source::Secret {
                secrets: Box::new(Api::namespaced(client, namespace)),
                name: options.tls_secret.clone(),
            },
            (TlsSource::Bootstrap, _) => Source::Bootstrap(Box::new(Bootstrap::new(
                client,
                namespace,
                options.subject_names(namespace)?,
                options.rotation_policy()?,
            ))),
        };
        let client_ca = options.tls_client_ca_file.clone();
        let material = load(&source, client_ca.as_deref(), now).await?;
        let config = build(&material)?;
        log_loaded(&material, "TLS certificate loaded");
        Ok(ServerTls {
            inner: Arc::new(Inner {
                source,
                client_ca,
                refresh_interval: options.tls_refresh_interval,
                current: RwLock::new(Current { config, material }),
            }),
        })
    }

    /// The configuration new connections get.
    pub fn config(&self) -> Arc<rustls::ServerConfig> {
        self.current().config.clone()
    }

    /// The CA certificates (PEM) clients should trust: the bootstrap's trust bundle, or the
    /// Secret's `ca.crt`; `None` with certificate files.
    pub fn ca_pem(&self) -> Option<String> {
        self.current().material.ca_pem.clone()
    }

    /// The serving certificate chain (PEM) in use.
    pub fn cert_pem(&self) -> String {
        self.current().material.cert_pem.clone()
    }

    fn current(&self) -> std::sync::RwLockReadGuard<'_, Current> {
        // A panic while swapping cannot leave a half-written value: the swap is one assignment.
        self.inner
            .current
            .read()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Reads the source again (renewing a bootstrapped certificate that is due at `now`) and
    /// switches new connections to it when it changed. Returns whether it changed. On error
    /// the current configuration stays.
    pub async fn refresh(&self, now: Timestamp) -> Result<bool> {
        let material = load(&self.inner.source, self.inner.client_ca.as_deref(), now).await?;
        if self.current().material == material {
            return Ok(false);
        }
        let config = build(&material)?;
        log_loaded(&material, "TLS certificate changed; new connections use it");
        *self
            .inner
            .current
            .write()
            .unwrap_or_else(PoisonError::into_inner) = Current { config, material };
        Ok(true)
    }

    /// Refreshes every `--tls-refresh-interval` until `stop` completes. Failures are logged
    /// and retried at the next interval; the server keeps its current certificate meanwhile.
    pub async fn keep_fresh(self, stop: impl Future<Output = ()>) {
        tokio::pin!(stop);
        let mut ticks = tokio::time::interval(self.inner.refresh_interval);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        ticks.tick().await;
        loop {
            tokio::select! {
                () = &mut stop => return,
                _ = ticks.tick() => {}
            }
            if let Err(e) = self.refresh(Timestamp::now()).await {
                tracing::warn!(error = %e, "refreshing the TLS certificate failed; keeping the current one");
            }
        }
    }

    /// The TLS connections accepted on `listener`, for tonic's `serve_with_incoming*`.
    /// Handshakes run concurrently (bounded in number and time) so a slow client holds up
    /// nobody; failed handshakes are logged and skipped, and accept errors are retried, so the
    /// stream only ever yields connections.
    pub fn incoming(
        &self,
        listener: TcpListener,
    ) -> impl Stream<Item = std::io::Result<TlsStream<TcpStream>>> + Send + 'static {
        self.incoming_for(listener, None)
    }

    /// [`ServerTls::incoming`] for an HTTP/1.1 server (the FleetLock endpoint): the same
    /// certificate, offering `http/1.1` instead of gRPC's `h2` in ALPN.
    pub fn incoming_http1(
        &self,
        listener: TcpListener,
    ) -> impl Stream<Item = std::io::Result<TlsStream<TcpStream>>> + Send + 'static {
        self.incoming_for(listener, Some(b"http/1.1".to_vec()))
    }

    fn incoming_for(
        &self,
        listener: TcpListener,
        alpn: Option<Vec<u8>>,
    ) -> impl Stream<Item = std::io::Result<TlsStream<TcpStream>>> + Send + 'static {
        let tls = self.clone();
        let handshakes = JoinSet::new();
        futures::stream::unfold(
            (listener, handshakes, tls, alpn),
            |(listener, mut handshakes, tls, alpn)| async move {
                loop {
                    tokio::select! {
                        accepted = listener.accept(), if handshakes.len() < MAX_PENDING_HANDSHAKES => {
                            match accepted {
                                Ok((tcp, peer)) => {
                                    let config = match &alpn {
                                        Some(protocol) => {
                                            let mut config = (*tls.config()).clone();
                                            config.alpn_protocols = vec![protocol.clone()];
                                            Arc::new(config)
                                        }
                                        None => tls.config(),
                                    };
                                    let acceptor = TlsAcceptor::from(config);
                                    handshakes.spawn(handshake(acceptor, tcp, peer));
                                }
                                Err(e) => accept_failed(e).await,
                            }
                        }
                        Some(done) = handshakes.join_next(), if !handshakes.is_empty() => {
                            if let Ok(Some(stream)) = done {
                                return Some((Ok(stream), (listener, handshakes, tls, alpn)));
                            }
                        }
                    }
                }
            },
        )
    }
}

async fn handshake(
    acceptor: TlsAcceptor,
    tcp: TcpStream,
    peer: std::net::SocketAddr,
) -> Option<TlsStream<TcpStream>> {
    // gRPC's small frames must not wait for Nagle.
    if let Err(e) = tcp.set_nodelay(true) {
        tracing::debug!(%peer, error = %e, "cannot set TCP_NODELAY");
    }
    match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
        Ok(Ok(stream)) => Some(stream),
        Ok(Err(e)) => {
            tracing::debug!(%peer, error = %e, "TLS handshake failed");
            None
        }
        Err(_) => {
            tracing::debug!(%peer, "TLS handshake timed out");
            None
        }
    }
}

async fn accept_failed(error: std::io::Error) {
    use std::io::ErrorKind::{ConnectionAborted, ConnectionReset, Interrupted};
    if matches!(
        error.kind(),
        ConnectionAborted | ConnectionReset | Interrupted
    ) {
        return;
    }
    tracing::warn!(%error, "accepting a connection failed");
    tokio::time::sleep(ACCEPT_BACKOFF).await;
}

async fn load(source: &Source, client_ca: Option<&Path>, now: Timestamp) -> Result<Material> {
    let client_ca_pem = match client_ca {
        Some(path) => Some(read(path).await?),
        None => None,
    };
    match source {
        Source::Files { cert, key } => Ok(Material {
            cert_pem: read(cert).await?,
            key_pem: read(key).await?,
            client_ca_pem,
            ca_pem: None,
        }),
        Source::Secret { secrets, name } => {
            let secret = secrets.get(name).await.map_err(|source| Error::Kube {
                action: format!("reading Secret {name}"),
                source,
            })?;
            let ca_pem = match secret.data.as_ref().and_then(|data| data.get("ca.crt")) {
                Some(_) => Some(secret_field(&secret, name, "ca.crt")?),
                None => None,
            };
            Ok(Material {
                cert_pem: secret_field(&secret, name, "tls.crt")?,
                key_pem: secret_field(&secret, name, "tls.key")?,
                client_ca_pem,
                ca_pem,
            })
        }
        Source::Bootstrap(bootstrap) => {
            let done = bootstrap.ensure(now).await?;
            Ok(Material {
                cert_pem: done.serving.cert_pem,
                key_pem: done.serving.key_pem,
                client_ca_pem,
                ca_pem: Some(done.ca_pem),
            })
        }
    }
}

async fn read(path: &Path) -> Result<String> {
    tokio::fs::read_to_string(path)
        .await
        .map_err(|source| Error::Read {
            path: path.to_owned(),
            source,
        })
}

fn log_loaded(material: &Material, message: &str) {
    let not_after = CertInfo::from_pem(&material.cert_pem)
        .map(|info| info.not_after.to_string())
        .unwrap_or_default();
    tracing::info!(
        not_after,
        mutual = material.client_ca_pem.is_some(),
        "{message}"
    );
}

/// The rustls configuration for `material`: TLS 1.2 and 1.3 with ring, HTTP/2 only, client
/// certificates required when a client CA is set.
fn build(material: &Material) -> Result<Arc<rustls::ServerConfig>> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let chain = certificates(&material.cert_pem, "server certificate")?;
    let key = PrivateKeyDer::from_pem_slice(material.key_pem.as_bytes())
        .map_err(|e| Error::invalid("server private key", e))?;
    let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()?;
    let builder = match &material.client_ca_pem {
        Some(pem) => {
            let mut roots = RootCertStore::empty();
            for cert in certificates(pem, "client CA")? {
                roots.add(cert)?;
            }
            let verifier =
                WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider).build()?;
            builder.with_client_cert_verifier(verifier)
        }
        None => builder.with_no_client_auth(),
    };
    let mut config = builder.with_single_cert(chain, key)?;
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(Arc::new(config))
}

fn certificates(pem: &str, what: &str) -> Result<Vec<CertificateDer<'static>>> {
    let certs = CertificateDer::pem_slice_iter(pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| Error::invalid(what, e))?;
    if certs.is_empty() {
        return Err(Error::invalid(what, "no PEM CERTIFICATE block"));
    }
    Ok(certs)
}
