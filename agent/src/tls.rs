//! How the agent reaches the coordinator: TLS by default, trusting the CA the coordinator
//! publishes (the `rota-ca` ConfigMap, mounted at [`DEFAULT_CA_FILE`]) and checking the
//! coordinator's name; optionally with a client certificate (when the coordinator requires
//! mutual TLS). Plain-text `http://` is refused unless `--insecure-plaintext` says this is a
//! development setup.

use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::Args;
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;
use tonic::transport::{Certificate, ClientTlsConfig, Endpoint, Identity};

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

/// The endpoint for the coordinator at `url`: TLS for `https://`; `http://` only with
/// `--insecure-plaintext` (and a loud warning); anything else is refused. Reads and checks
/// the CA and client files now, so a missing mount fails at start, not at the first call.
pub fn endpoint(url: &str, tls: &TlsArgs) -> Result<Endpoint> {
    if url.starts_with("https://") {
        return Ok(Endpoint::from_shared(url.to_owned())?.tls_config(client_config(tls)?)?);
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
    Ok(Endpoint::from_shared(url.to_owned())?)
}

/// The TLS client configuration of `tls`.
fn client_config(tls: &TlsArgs) -> Result<ClientTlsConfig> {
    let ca = read_certificates(&tls.ca_file)?;
    let mut config = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(ca))
        .domain_name(tls.tls_server_name.clone())
        .timeout(HANDSHAKE_TIMEOUT);
    if let (Some(cert), Some(key)) = (&tls.tls_client_cert_file, &tls.tls_client_key_file) {
        let cert = read_certificates(cert)?;
        let key = std::fs::read(key).map_err(|e| Error::io("read", key, e))?;
        config = config.identity(Identity::from_pem(cert, key));
    }
    Ok(config)
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
