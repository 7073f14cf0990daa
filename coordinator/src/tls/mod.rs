//! TLS for the agents' gRPC server (rustls, ring).
//!
//! Where the serving certificate comes from, in order:
//!
//! 1. `--tls-source=files`: `--tls-cert-file` and `--tls-key-file` (PEM), re-read every
//!    `--tls-refresh-interval` so that a rotated volume takes effect without a restart;
//! 2. `--tls-source=secret`: `tls.crt`, `tls.key` (and `ca.crt`) of the Secret `--tls-secret`,
//!    read through the API every `--tls-refresh-interval` — the Secret cert-manager writes for
//!    a `Certificate`, picked up when it is renewed, never mounted (a mounted Secret is
//!    readable by the node's kubelet);
//! 3. `--tls-source=bootstrap` (the default without certificate files, [`bootstrap`]): a CA
//!    kept in the Secret `rota-ca` (type `rota.dev/ca`), constrained to the Service's names and
//!    rotated before it expires ([`rotation`]), a serving certificate it signs in the Secret
//!    `rota-coordinator-tls` (`tls.crt`, `tls.key`, `ca.crt`), and the trust bundle published
//!    in the ConfigMap `rota-ca` (`ca.crt`) that the agents' DaemonSet mounts. Every write is
//!    create-if-absent or an update on the read `resourceVersion`, so replicas that start
//!    together agree on one CA; the serving certificate is renewed when
//!    [`pki::needs_renewal`] says so.
//!
//! `--tls-client-ca-file` turns on mutual TLS: clients must present a certificate signed by
//! that CA. The agent's bearer token still decides *which node* a caller is; the client
//! certificate only keeps everything without one off the port.
//!
//! Wiring, in the binary: [`server_config`] once at start, [`ServerTls::keep_fresh`] as a
//! supervised task, and [`ServerTls::incoming`] as the connections of the tonic server.
//!
//! ```no_run
//! # async fn wire(
//! #     options: rota_coordinator::tls::TlsOptions,
//! #     client: kube::Client,
//! #     router: tonic::transport::server::Router,
//! #     listener: tokio::net::TcpListener,
//! #     stop: tokio_util::sync::CancellationToken,
//! # ) -> Result<(), Box<dyn std::error::Error>> {
//! use rota_coordinator::tls;
//! let tls = tls::server_config(&options, client, "rota-system").await?;
//! tokio::spawn(tls.clone().keep_fresh(stop.clone().cancelled_owned()));
//! router
//!     .serve_with_incoming_shutdown(tls.incoming(listener), stop.cancelled())
//!     .await?;
//! # Ok(()) }
//! ```
//!
//! The coordinator's service account needs `get`, `create` and `update` on the Secrets
//! `rota-ca` and `rota-coordinator-tls` and the ConfigMap `rota-ca` in its namespace for the
//! bootstrap; `get` on the Secret `--tls-secret` for `--tls-source=secret`.

pub mod bootstrap;
pub mod pki;
pub mod rotation;
mod server;

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, ValueEnum};
use jiff::SignedDuration;

pub use bootstrap::{
    Bootstrap, CA_CONFIGMAP, CA_SECRET, CA_SECRET_TYPE, SECRET_LABEL, SERVING_SECRET,
};
pub use pki::{
    Ca, CertInfo, Constraints, KeyedCert, Reissue, SubjectNames, check_serving, needs_renewal,
};
pub use server::{ServerTls, server_config};

/// Why TLS could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A certificate or key file could not be read.
    #[error("reading {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// A certificate, key, name or stored object is malformed or does not fit.
    #[error("invalid {what}: {detail}")]
    Invalid {
        /// What was read.
        what: String,
        /// What is wrong with it.
        detail: String,
    },
    /// rcgen could not make a key or certificate.
    #[error("generating a certificate: {0}")]
    Generate(#[from] rcgen::Error),
    /// rustls refused the configuration (e.g. a key that does not match its certificate).
    #[error("TLS configuration: {0}")]
    Rustls(#[from] rustls::Error),
    /// The client CA cannot verify clients.
    #[error("client certificate verification: {0}")]
    ClientVerifier(#[from] rustls::server::VerifierBuilderError),
    /// The coordinator may not read or write its TLS objects.
    #[error(
        "{action}: forbidden; the coordinator's service account needs get, create and update on \
         the Secrets {CA_SECRET} and {SERVING_SECRET} and the ConfigMap {CA_CONFIGMAP}: {source}"
    )]
    Forbidden {
        /// What was attempted.
        action: String,
        /// The API server's answer.
        #[source]
        source: kube::Error,
    },
    /// Another Kubernetes API call failed.
    #[error("{action}: {source}")]
    Kube {
        /// What was attempted.
        action: String,
        /// The underlying error.
        #[source]
        source: kube::Error,
    },
    /// An object kept changing between our read and our write.
    #[error("{0} kept changing while it was being written; giving up for now")]
    Contended(String),
}

impl Error {
    pub(crate) fn invalid(what: impl Into<String>, detail: impl ToString) -> Error {
        Error::Invalid {
            what: what.into(),
            detail: detail.to_string(),
        }
    }
}

/// Result alias of this module.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Where the serving certificate comes from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum TlsSource {
    /// The coordinator's own CA in its namespace (see [`bootstrap`]).
    Bootstrap,
    /// `--tls-cert-file` and `--tls-key-file`.
    Files,
    /// The Secret `--tls-secret` (e.g. written by cert-manager), read through the API.
    Secret,
}

/// TLS flags of the coordinator's gRPC server (flatten into the command line).
#[derive(Clone, Debug, PartialEq, Eq, Args)]
pub struct TlsOptions {
    /// Where the serving certificate comes from: bootstrap, files or secret. Default: files
    /// when --tls-cert-file is given, else bootstrap.
    #[arg(long, env = "ROTA_TLS_SOURCE", value_enum)]
    pub tls_source: Option<TlsSource>,
    /// The Secret (tls.crt, tls.key, optional ca.crt) in the coordinator's namespace that
    /// --tls-source=secret serves, re-read every --tls-refresh-interval.
    #[arg(long, env = "ROTA_TLS_SECRET", default_value = SERVING_SECRET)]
    pub tls_secret: String,
    /// Certificate chain (PEM) the gRPC server presents; with --tls-key-file (implies
    /// --tls-source=files). Without both and without --tls-source, the coordinator bootstraps
    /// its own CA into Secrets of its namespace.
    #[arg(
        long,
        env = "ROTA_TLS_CERT_FILE",
        requires = "tls_key_file",
        required_if_eq("tls_source", "files")
    )]
    pub tls_cert_file: Option<PathBuf>,
    /// Private key (PEM) of --tls-cert-file.
    #[arg(long, env = "ROTA_TLS_KEY_FILE", requires = "tls_cert_file")]
    pub tls_key_file: Option<PathBuf>,
    /// CA certificates (PEM) that client certificates must chain to; turns on mutual TLS.
    #[arg(long, env = "ROTA_TLS_CLIENT_CA_FILE")]
    pub tls_client_ca_file: Option<PathBuf>,
    /// Name of the coordinator's Service; the bootstrapped certificate carries its DNS names.
    #[arg(
        long,
        env = "ROTA_TLS_SERVICE_NAME",
        default_value = "rota-coordinator"
    )]
    pub tls_service_name: String,
    /// The cluster's DNS domain, for the Service's fully qualified name.
    #[arg(long, env = "ROTA_TLS_CLUSTER_DOMAIN", default_value = "cluster.local")]
    pub tls_cluster_domain: String,
    /// More DNS names or IP addresses for the bootstrapped certificate (comma-separated).
    #[arg(
        long = "tls-extra-san",
        env = "ROTA_TLS_EXTRA_SANS",
        value_delimiter = ','
    )]
    pub tls_extra_sans: Vec<String>,
    /// How often the certificate files, or the bootstrap Secrets, are checked for changes
    /// and renewal.
    #[arg(
        long,
        env = "ROTA_TLS_REFRESH_INTERVAL",
        default_value = "1m",
        value_parser = parse_duration
    )]
    pub tls_refresh_interval: Duration,
    /// Validity of a bootstrapped CA.
    #[arg(
        long,
        env = "ROTA_TLS_CA_VALIDITY",
        default_value = "8760h",
        value_parser = parse_duration
    )]
    pub tls_ca_validity: Duration,
    /// Rotate the bootstrapped CA when less than this percentage of its lifetime is left.
    #[arg(
        long,
        env = "ROTA_TLS_CA_ROTATION_THRESHOLD",
        default_value_t = 33,
        value_parser = clap::value_parser!(u8).range(1..=90)
    )]
    pub tls_ca_rotation_threshold: u8,
    /// How long a new CA is in the trust bundle before it signs the serving certificate, and
    /// an old one stays after; at least the time a ConfigMap change takes to reach the agents'
    /// mounted files (the kubelet's sync period, about a minute).
    #[arg(
        long,
        env = "ROTA_TLS_CA_OVERLAP",
        default_value = "24h",
        value_parser = parse_duration
    )]
    pub tls_ca_overlap: Duration,
    /// Serve gRPC without TLS. Local development only: tokens travel in clear text.
    #[arg(
        long,
        env = "ROTA_GRPC_INSECURE_PLAINTEXT",
        conflicts_with_all = ["tls_cert_file", "tls_key_file", "tls_client_ca_file"]
    )]
    pub grpc_insecure_plaintext: bool,
}

impl Default for TlsOptions {
    fn default() -> Self {
        TlsOptions {
            tls_source: None,
            tls_secret: SERVING_SECRET.to_owned(),
            tls_cert_file: None,
            tls_key_file: None,
            tls_client_ca_file: None,
            tls_service_name: "rota-coordinator".to_owned(),
            tls_cluster_domain: "cluster.local".to_owned(),
            tls_extra_sans: Vec::new(),
            tls_refresh_interval: Duration::from_secs(60),
            tls_ca_validity: Duration::from_secs(365 * 24 * 3600),
            tls_ca_rotation_threshold: 33,
            tls_ca_overlap: Duration::from_secs(24 * 3600),
            grpc_insecure_plaintext: false,
        }
    }
}

impl TlsOptions {
    /// Where the serving certificate comes from (see [`TlsSource`]).
    pub fn source(&self) -> TlsSource {
        match self.tls_source {
            Some(source) => source,
            None if self.tls_cert_file.is_some() => TlsSource::Files,
            None => TlsSource::Bootstrap,
        }
    }

    /// How the bootstrapped CA is rotated.
    pub fn rotation_policy(&self) -> Result<rotation::Policy> {
        let duration = |d: Duration, flag: &str| {
            SignedDuration::try_from(d).map_err(|e| Error::invalid(flag, e))
        };
        Ok(rotation::Policy {
            validity: duration(self.tls_ca_validity, "--tls-ca-validity")?,
            threshold_percent: self.tls_ca_rotation_threshold,
            overlap: duration(self.tls_ca_overlap, "--tls-ca-overlap")?,
        })
    }

    /// The names a bootstrapped serving certificate carries for a coordinator in `namespace`.
    pub fn subject_names(&self, namespace: &str) -> Result<SubjectNames> {
        SubjectNames::for_service(
            &self.tls_service_name,
            namespace,
            &self.tls_cluster_domain,
            &self.tls_extra_sans,
        )
    }
}

/// Parses `30s`, `1m`, `PT1M` and the like.
fn parse_duration(s: &str) -> Result<Duration, String> {
    let signed: jiff::SignedDuration = s
        .parse()
        .map_err(|e| format!("not a duration ({e}); write e.g. 30s or 5m"))?;
    match Duration::try_from(signed) {
        Ok(d) if !d.is_zero() => Ok(d),
        _ => Err("the interval must be positive".to_owned()),
    }
}

#[cfg(test)]
mod tests {
    use clap::{CommandFactory, Parser};

    use super::*;

    #[derive(Debug, Parser)]
    struct Cli {
        #[command(flatten)]
        tls: TlsOptions,
    }

    #[test]
    fn flags_parse_and_every_flag_has_an_env_var() {
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
        let defaults = Cli::try_parse_from(["x"]).unwrap().tls;
        assert_eq!(defaults, TlsOptions::default());
        assert_eq!(defaults.tls_refresh_interval, Duration::from_secs(60));
        let set = Cli::try_parse_from([
            "x",
            "--tls-extra-san=rota.example.com,10.0.0.1",
            "--tls-refresh-interval=5m",
            "--tls-ca-validity=2160h",
            "--tls-ca-rotation-threshold=50",
            "--tls-ca-overlap=2h",
        ])
        .unwrap()
        .tls;
        assert_eq!(set.tls_extra_sans, ["rota.example.com", "10.0.0.1"]);
        assert_eq!(set.tls_refresh_interval, Duration::from_secs(300));
        assert_eq!(
            set.rotation_policy().unwrap(),
            rotation::Policy {
                validity: SignedDuration::from_hours(90 * 24),
                threshold_percent: 50,
                overlap: SignedDuration::from_hours(2),
            }
        );
        assert_eq!(defaults.source(), TlsSource::Bootstrap);
        assert_eq!(
            defaults.rotation_policy().unwrap().validity,
            pki::CA_VALIDITY
        );
        let files = Cli::try_parse_from(["x", "--tls-cert-file=/c", "--tls-key-file=/k"])
            .unwrap()
            .tls;
        assert_eq!(files.source(), TlsSource::Files);
        let secret = Cli::try_parse_from(["x", "--tls-source=secret"])
            .unwrap()
            .tls;
        assert_eq!(secret.source(), TlsSource::Secret);
        assert_eq!(secret.tls_secret, SERVING_SECRET);
    }

    #[test]
    fn contradictory_flags_are_refused() {
        for args in [
            &["x", "--tls-cert-file=/c"][..],
            &["x", "--tls-key-file=/k"],
            &["x", "--grpc-insecure-plaintext", "--tls-client-ca-file=/ca"],
            &["x", "--tls-refresh-interval=0s"],
            &["x", "--tls-ca-rotation-threshold=0"],
            &["x", "--tls-ca-rotation-threshold=95"],
            &["x", "--tls-source=vault"],
            &["x", "--tls-source=files"],
        ] {
            assert!(Cli::try_parse_from(args).is_err(), "{args:?} accepted");
        }
    }
}
