//! The agent's channel to the coordinator: TLS unless plain text is asked for explicitly, and
//! the CA and client files checked when the channel is built. (The bundle read again for each
//! connection is exercised over the wire in the coordinator's `tls_rotation` suite.)

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};

use rota_agent::Error;
use rota_agent::daemon::{self, TokenAuth};
use rota_agent::tls::{self, TlsArgs};

fn write(dir: &Path, name: &str, contents: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, contents).unwrap();
    path
}

/// A self-signed CA certificate and its key, PEM.
fn ca() -> (String, String) {
    let key = rcgen::KeyPair::generate().unwrap();
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let cert = params.self_signed(&key).unwrap();
    (cert.pem(), key.serialize_pem())
}

fn with_ca(dir: &Path) -> TlsArgs {
    TlsArgs {
        ca_file: write(dir, "ca.crt", &ca().0),
        ..TlsArgs::default()
    }
}

#[track_caller]
fn refused(outcome: rota_agent::Result<impl std::fmt::Debug>, mentions: &str) {
    match outcome {
        Err(Error::Refused(why)) => assert!(why.contains(mentions), "{why:?} lacks {mentions:?}"),
        other => panic!("expected a refusal mentioning {mentions:?}, got {other:?}"),
    }
}

#[test]
fn plain_http_is_refused_without_the_flag() {
    let dir = tempfile::tempdir().unwrap();
    let tls = with_ca(dir.path());
    refused(
        tls::channel("http://rota-coordinator.rota-system.svc:9443", &tls),
        "--insecure-plaintext",
    );
    refused(
        daemon::client("http://127.0.0.1:9443", &tls, TokenAuth::default()),
        "--insecure-plaintext",
    );
}

#[tokio::test]
async fn plain_http_is_allowed_with_the_flag() {
    // No CA file is needed for plain text: none is read.
    let tls = TlsArgs {
        ca_file: PathBuf::from("/nonexistent/ca.crt"),
        insecure_plaintext: true,
        ..TlsArgs::default()
    };
    tls::channel("http://127.0.0.1:9443", &tls).unwrap();
    daemon::client("http://127.0.0.1:9443", &tls, TokenAuth::default()).unwrap();
}

#[test]
fn an_address_without_a_known_scheme_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let tls = TlsArgs {
        insecure_plaintext: true,
        ..with_ca(dir.path())
    };
    for url in [
        "rota-coordinator.rota-system.svc:9443",
        "grpc://rota:9443",
        "ftp://x",
    ] {
        refused(tls::channel(url, &tls), "https://");
    }
}

#[tokio::test]
async fn https_with_a_ca_file_builds_a_tls_endpoint() {
    let dir = tempfile::tempdir().unwrap();
    let tls = with_ca(dir.path());
    tls::channel("https://10.96.0.10:9443", &tls).unwrap();
    daemon::client("https://10.96.0.10:9443", &tls, TokenAuth::default()).unwrap();
    // The flag does not weaken an https address.
    let flagged = TlsArgs {
        insecure_plaintext: true,
        ..tls
    };
    tls::channel("https://10.96.0.10:9443", &flagged).unwrap();
}

#[tokio::test]
async fn a_missing_or_empty_ca_file_fails_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let missing = TlsArgs {
        ca_file: dir.path().join("absent.crt"),
        ..TlsArgs::default()
    };
    let err = tls::channel("https://rota:9443", &missing).unwrap_err();
    assert!(err.is_not_found(), "{err}");
    for (name, contents) in [
        ("empty.crt", ""),
        ("key.crt", &ca().1),
        ("junk.crt", "hello"),
    ] {
        let bad = TlsArgs {
            ca_file: write(dir.path(), name, contents),
            ..TlsArgs::default()
        };
        match tls::channel("https://rota:9443", &bad) {
            Err(Error::Parse { what, .. }) => assert!(what.contains(name), "{what}"),
            other => panic!("{name}: expected a parse error, got {other:?}"),
        }
    }
}

#[tokio::test]
async fn client_certificate_files_are_read_when_given() {
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = ca();
    let tls = TlsArgs {
        tls_client_cert_file: Some(write(dir.path(), "client.crt", &cert)),
        tls_client_key_file: Some(write(dir.path(), "client.key", &key)),
        ..with_ca(dir.path())
    };
    tls::channel("https://rota:9443", &tls).unwrap();
    let missing_key = TlsArgs {
        tls_client_key_file: Some(dir.path().join("absent.key")),
        ..tls
    };
    let err = tls::channel("https://rota:9443", &missing_key).unwrap_err();
    assert!(err.is_not_found(), "{err}");
}
