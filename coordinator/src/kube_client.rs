//! Building Kubernetes API clients.
//!
//! The coordinator needs two flavours of [`kube::Client`]:
//!
//! - the default one, which retries 429/503/504 responses with exponential backoff (fine for
//!   watches and ordinary reads and writes);
//! - one **without** that retry, for evictions: a PodDisruptionBudget refusal is an HTTP 429, and
//!   the drain engine must see it at once to react to the budget's status instead of stalling
//!   invisibly inside kube's retry layer for minutes.
//!
//! kube 5 stacks its retry layer only when [`kube::Config::default_retry`] is set, so the
//! eviction client is the default stack built from a config with that flag cleared.

use std::path::PathBuf;

use kube::Client;
use kube::config::{
    InClusterError, InferConfigError, KubeConfigOptions, Kubeconfig, KubeconfigError,
};

/// Why a client could not be built.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The kubeconfig file could not be read or used.
    #[error("loading kubeconfig: {0}")]
    Kubeconfig(#[from] KubeconfigError),
    /// The in-cluster service-account configuration is missing or broken.
    #[error("loading in-cluster config: {0}")]
    InCluster(#[from] InClusterError),
    /// Neither `KUBECONFIG`/`~/.kube/config` nor an in-cluster config was usable.
    #[error("inferring a Kubernetes config: {0}")]
    Infer(#[from] InferConfigError),
    /// The HTTP client stack could not be built (TLS material, auth plugin, ...).
    #[error("building the Kubernetes client: {0}")]
    Build(#[from] kube::Error),
}

/// Result alias of this module.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Where the client configuration comes from.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum ConfigSource {
    /// `KUBECONFIG` or `~/.kube/config`, else the in-cluster service account (like kubectl).
    #[default]
    Infer,
    /// This kubeconfig file, with an optional context (else its current context).
    Kubeconfig {
        /// Path of the kubeconfig file.
        path: PathBuf,
        /// Context to use instead of the file's current context.
        context: Option<String>,
    },
    /// The pod's service account (`KUBERNETES_SERVICE_HOST`, the mounted token and CA).
    InCluster,
}

/// Whether the client retries 429/503/504 responses by itself.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Retry {
    /// kube's default: retry with exponential backoff before returning the error.
    Default,
    /// Return every 429/503/504 to the caller at once (for evictions).
    Disabled,
}

/// Loads the [`kube::Config`] described by `source`.
pub async fn load_config(source: &ConfigSource) -> Result<kube::Config> {
    Ok(match source {
        ConfigSource::Infer => kube::Config::infer().await?,
        ConfigSource::InCluster => kube::Config::incluster()?,
        ConfigSource::Kubeconfig { path, context } => {
            let kubeconfig = Kubeconfig::read_from(path)?;
            let options = KubeConfigOptions {
                context: context.clone(),
                ..KubeConfigOptions::default()
            };
            kube::Config::from_custom_kubeconfig(kubeconfig, &options).await?
        }
    })
}

/// Builds a client from an already loaded config, with or without kube's built-in retry.
pub fn client_from_config(mut config: kube::Config, retry: Retry) -> Result<Client> {
    config.default_retry = retry == Retry::Default;
    Ok(Client::try_from(config)?)
}

/// The pair of clients the coordinator runs with.
#[derive(Clone)]
pub struct Clients {
    /// Default client (retries transient failures itself).
    pub default: Client,
    /// Client without kube's retry of 429/503/504; the drain engine uses it.
    pub eviction: Client,
}

impl std::fmt::Debug for Clients {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Clients").finish_non_exhaustive()
    }
}

impl Clients {
    /// Loads the configuration once and builds both clients from it.
    pub async fn load(source: &ConfigSource) -> Result<Self> {
        let config = load_config(source).await?;
        Self::from_config(config)
    }

    /// Builds both clients from one config.
    pub fn from_config(config: kube::Config) -> Result<Self> {
        Ok(Self {
            default: client_from_config(config.clone(), Retry::Default)?,
            eviction: client_from_config(config, Retry::Disabled)?,
        })
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use k8s_openapi::api::core::v1::Pod;
    use kube::Api;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    use super::*;

    /// Serves HTTP 429 to every request and counts them.
    async fn always_429() -> (String, Arc<AtomicUsize>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let hits = Arc::new(AtomicUsize::new(0));
        let counter = hits.clone();
        tokio::spawn(async move {
            loop {
                let Ok((mut conn, _)) = listener.accept().await else {
                    return;
                };
                let counter = counter.clone();
                tokio::spawn(async move {
                    let mut buf = vec![0u8; 16 * 1024];
                    let mut seen = Vec::new();
                    loop {
                        let Ok(n) = conn.read(&mut buf).await else {
                            return;
                        };
                        if n == 0 {
                            return;
                        }
                        seen.extend_from_slice(&buf[..n]);
                        // Requests here are GETs without a body: the head ends the request.
                        while let Some(end) = seen.windows(4).position(|w| w == b"\r\n\r\n") {
                            seen.drain(..end + 4);
                            counter.fetch_add(1, Ordering::SeqCst);
                            let body = r#"{"kind":"Status","apiVersion":"v1","status":"Failure","message":"slow down","reason":"TooManyRequests","code":429}"#;
                            let response = format!(
                                "HTTP/1.1 429 Too Many Requests\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{}",
                                body.len(),
                                body
                            );
                            if conn.write_all(response.as_bytes()).await.is_err() {
                                return;
                            }
                        }
                    }
                });
            }
        });
        (url, hits)
    }

    #[tokio::test]
    async fn eviction_client_returns_429_at_once() {
        let (url, hits) = always_429().await;
        let config = kube::Config::new(url.parse().unwrap());
        let client = client_from_config(config, Retry::Disabled).unwrap();
        let err = Api::<Pod>::namespaced(client, "default")
            .get("p")
            .await
            .unwrap_err();
        match err {
            kube::Error::Api(status) => assert_eq!(status.code, 429),
            other => panic!("unexpected error {other:?}"),
        }
        assert_eq!(hits.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn default_client_retries_429() {
        let (url, hits) = always_429().await;
        let config = kube::Config::new(url.parse().unwrap());
        let client = client_from_config(config, Retry::Default).unwrap();
        let api = Api::<Pod>::namespaced(client, "default");
        // The default stack keeps retrying far longer than this test wants to wait; seeing a
        // second request proves the retry layer is there.
        let request = tokio::spawn(async move { api.get("p").await });
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
        while hits.load(Ordering::SeqCst) < 2 {
            assert!(tokio::time::Instant::now() < deadline, "no retry seen");
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
        request.abort();
    }
}
