//! Running the emulated API server as a process (`rota-sim serve`).

use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;

use super::http::{ApiServer, ServerHandle};
use super::store::Store;

/// Options of the API server process.
#[derive(Clone, Debug, clap::Args)]
pub struct ServeOptions {
    /// Port to listen on at 127.0.0.1 (0 picks a free one).
    #[clap(long, env = "ROTA_SIM_PORT", default_value_t = 0)]
    pub port: u16,
    /// Write a kubeconfig for the server (no authentication) to this file.
    #[clap(long, env = "ROTA_SIM_KUBECONFIG")]
    pub kubeconfig: Option<PathBuf>,
}

/// Start the server for `store` and write the kubeconfig if asked. The caller keeps the handle
/// alive for as long as the server should run.
pub async fn start(store: Store, options: &ServeOptions) -> std::io::Result<ServerHandle> {
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, options.port));
    let handle = ApiServer::start(store, addr).await?;
    if let Some(path) = &options.kubeconfig {
        tokio::fs::write(path, handle.kubeconfig()).await?;
        tracing::info!(path = %path.display(), "kubeconfig written");
    }
    Ok(handle)
}
