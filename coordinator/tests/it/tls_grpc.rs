//! The real `rota.v1.Agent` service served over TLS (`tls::ServerTls::incoming`, port 0),
//! with certificates bootstrapped in the emulated API server or read from files: clients that
//! trust the CA and name the Service get through, the agent's own client included; another
//! CA, another name, or (with mutual TLS) no or a foreign client certificate are refused; a
//! renewed or reloaded certificate reaches new connections; agents keep working through a CA
//! rotation; a certificate from a Secret (cert-manager's) is served and its renewal picked up.

#![allow(clippy::unwrap_used, clippy::expect_used)]
use rota_coordinator::slot_service::{SlotService, SlotServiceConfig};
use rota_core::clock::SystemClock;

use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use jiff::{SignedDuration, Timestamp};
use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use kube::Api;
use kube::api::PostParams;
use rota_coordinator::grpc::{AgentGrpc, StaticAuthenticator};
use rota_coordinator::tls::{
    self, CA_CONFIGMAP, CA_SECRET, Ca, CertInfo, SERVING_SECRET, ServerTls, TlsOptions, TlsSource,
};
use rota_core::slots::MemoryStore;
use rota_proto::v1 as pb;
use rota_proto::v1::agent_client::AgentClient;
use rota_sim::apiserver::{ApiServer, GroupResource, ServerHandle, Store};
use serde_json::json;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tonic::metadata::MetadataValue;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};

const NS: &str = "rota-system";
const SERVICE_NAME: &str = "rota-coordinator.rota-system.svc";
const DEADLINE: Duration = Duration::from_secs(10);

async fn emulator() -> ServerHandle {
    let store = Store::new();
    store
        .create(
            &GroupResource::core("namespaces"),
            None,
            json!({"metadata": {"name": NS}}),
        )
        .unwrap();
    ApiServer::start(store, SocketAddr::from((Ipv4Addr::LOCALHOST, 0)))
        .await
        .unwrap()
}

fn kube_client(server: &ServerHandle) -> kube::Client {
    kube::Client::try_from(kube::Config::new(server.url().parse().unwrap())).unwrap()
}

/// The agent service on a loopback port over `tls`, until dropped or stopped.
struct Served {
    addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<Result<(), tonic::transport::Error>>,
}

impl Served {
    async fn start(tls: &ServerTls) -> Served {
        Served::start_at(tls, SocketAddr::from((Ipv4Addr::LOCALHOST, 0))).await
    }

    /// The server stopped (its connections closed) and started again on the same address, as
    /// a restarted coordinator behind its Service: clients must connect anew.
    async fn restart(self, tls: &ServerTls) -> Served {
        let addr = self.addr;
        self.shutdown().await;
        Served::start_at(tls, addr).await
    }

    async fn start_at(tls: &ServerTls, addr: SocketAddr) -> Served {
        let store = MemoryStore::with_nodes(["n1"]);
        let (core, _events) =
            SlotService::load(store, SlotServiceConfig::default(), Arc::new(SystemClock))
                .await
                .unwrap();
        let agent = AgentGrpc::new(
            Arc::new(core),
            StaticAuthenticator::new([("token-n1", "n1")]),
        );
        let streams = agent.shutdown_handle();
        let listener = TcpListener::bind(addr).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(agent.into_service())
                .serve_with_incoming_shutdown(tls.incoming(listener), async move {
                    let _ = stopped.await;
                    streams.shutdown();
                }),
        );
        Served {
            addr,
            stop: Some(stop),
            task,
        }
    }

    fn url(&self) -> String {
        format!("https://{}", self.addr)
    }

    /// An endpoint trusting `ca_pem` and expecting `name`.
    fn endpoint(&self, ca_pem: &str, name: &str) -> Endpoint {
        self.endpoint_with(
            ClientTlsConfig::new()
                .ca_certificate(Certificate::from_pem(ca_pem))
                .domain_name(name),
        )
    }

    fn endpoint_with(&self, config: ClientTlsConfig) -> Endpoint {
        Endpoint::from_shared(self.url())
            .unwrap()
            .connect_timeout(DEADLINE)
            .timeout(DEADLINE)
            .tls_config(config)
            .unwrap()
    }

    async fn shutdown(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        tokio::time::timeout(DEADLINE, self.task)
            .await
            .unwrap()
            .unwrap()
            .unwrap();
    }
}

fn facts() -> pb::ReportFactsRequest {
    pb::ReportFactsRequest {
        node: "n1".into(),
        facts: Some(pb::NodeFacts {
            boot_id: "boot-1".into(),
            kernel_running: "6.1.0-13-amd64".into(),
            ..pb::NodeFacts::default()
        }),
    }
}

/// One authenticated call on `channel`.
async fn call(channel: Channel) -> Result<(), String> {
    let mut client = AgentClient::with_interceptor(channel, |mut req: tonic::Request<()>| {
        req.metadata_mut().insert(
            "authorization",
            MetadataValue::from_static("Bearer token-n1"),
        );
        Ok(req)
    });
    client
        .report_facts(facts())
        .await
        .map(drop)
        .map_err(|status| format!("{status:?}"))
}

/// Connects and makes one call; the error, with its sources, as text.
async fn connect_and_call(endpoint: Endpoint) -> Result<(), String> {
    let channel = endpoint.connect().await.map_err(|e| format!("{e:?}"))?;
    call(channel).await
}

#[track_caller]
fn refused(outcome: Result<(), String>, mentions: &str) {
    match outcome {
        Err(why) => assert!(why.contains(mentions), "{why} lacks {mentions:?}"),
        Ok(()) => panic!("the call got through; expected a refusal mentioning {mentions:?}"),
    }
}

/// The certificate a new TLS connection to `addr` is shown (DER), trusting `ca_pem`.
async fn served_certificate(addr: SocketAddr, ca_pem: &str) -> Vec<u8> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, ServerName};
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
        roots.add(cert.unwrap()).unwrap();
    }
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let tcp = TcpStream::connect(addr).await.unwrap();
    let name = ServerName::try_from(SERVICE_NAME).unwrap();
    let stream = tokio::time::timeout(DEADLINE, connector.connect(name, tcp))
        .await
        .unwrap()
        .unwrap();
    stream.get_ref().1.peer_certificates().unwrap()[0].to_vec()
}

fn der(pem: &str) -> Vec<u8> {
    tls::pki::first_certificate(pem).unwrap().to_vec()
}

fn write(dir: &Path, name: &str, contents: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, contents).unwrap();
    path
}

/// A client certificate (PEM cert, PEM key) signed by `ca`.
fn client_identity(ca: &Ca) -> Identity {
    let issuer = rcgen::Issuer::from_ca_cert_pem(
        ca.cert_pem(),
        rcgen::KeyPair::from_pem(ca.key_pem()).unwrap(),
    )
    .unwrap();
    let key = rcgen::KeyPair::generate().unwrap();
    let mut params = rcgen::CertificateParams::new(vec!["agent-n1".to_owned()]).unwrap();
    params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth];
    let cert = params.signed_by(&key, &issuer).unwrap();
    Identity::from_pem(cert.pem(), key.serialize_pem())
}

/// A server serving `cert` from the files `tls.crt` and `tls.key` in `dir`.
async fn files_tls(dir: &Path, cert: &tls::KeyedCert) -> ServerTls {
    let options = TlsOptions {
        tls_cert_file: Some(write(dir, "tls.crt", &cert.cert_pem)),
        tls_key_file: Some(write(dir, "tls.key", &cert.key_pem)),
        ..TlsOptions::default()
    };
    // No Kubernetes API is needed with files: this client points nowhere.
    let nowhere =
        kube::Client::try_from(kube::Config::new("http://127.0.0.1:1".parse().unwrap())).unwrap();
    tls::server_config(&options, nowhere, NS).await.unwrap()
}

fn new_ca() -> Ca {
    Ca::generate(Timestamp::now(), tls::pki::CA_VALIDITY).unwrap()
}

#[tokio::test]
async fn an_agent_trusting_the_published_ca_talks_over_tls() {
    let cluster = emulator().await;
    let tls = tls::server_config(&TlsOptions::default(), kube_client(&cluster), NS)
        .await
        .unwrap();
    let served = Served::start(&tls).await;
    // What the agent DaemonSet mounts: the ConfigMap's ca.crt.
    let published = Api::<ConfigMap>::namespaced(kube_client(&cluster), NS)
        .get(CA_CONFIGMAP)
        .await
        .unwrap()
        .data
        .unwrap()
        .remove("ca.crt")
        .unwrap();

    connect_and_call(served.endpoint(&published, SERVICE_NAME))
        .await
        .unwrap();
    for name in [
        "rota-coordinator",
        "rota-coordinator.rota-system",
        "rota-coordinator.rota-system.svc.cluster.local",
    ] {
        connect_and_call(served.endpoint(&published, name))
            .await
            .unwrap();
    }

    // The agent's own client, configured as the DaemonSet configures it.
    let dir = tempfile::tempdir().unwrap();
    let agent_tls = rota_agent::tls::TlsArgs {
        ca_file: write(dir.path(), "ca.crt", &published),
        ..rota_agent::tls::TlsArgs::default()
    };
    let auth = rota_agent::daemon::TokenAuth {
        token_file: Some(write(dir.path(), "token", "token-n1\n")),
    };
    let mut agent = rota_agent::daemon::client(&served.url(), &agent_tls, auth).unwrap();
    tokio::time::timeout(DEADLINE, agent.report_facts(facts()))
        .await
        .unwrap()
        .unwrap();
    served.shutdown().await;
}

#[tokio::test]
async fn a_client_trusting_another_ca_or_expecting_another_name_is_refused() {
    let cluster = emulator().await;
    let tls = tls::server_config(&TlsOptions::default(), kube_client(&cluster), NS)
        .await
        .unwrap();
    let served = Served::start(&tls).await;
    let ca = tls.ca_pem().unwrap();

    refused(
        connect_and_call(served.endpoint(new_ca().cert_pem(), SERVICE_NAME)).await,
        "UnknownIssuer",
    );
    refused(
        connect_and_call(served.endpoint(&ca, "rota-coordinator.evil.svc")).await,
        "NotValidForName",
    );
    // The agent refuses the same way with a wrong --tls-server-name.
    let dir = tempfile::tempdir().unwrap();
    let agent_tls = rota_agent::tls::TlsArgs {
        ca_file: write(dir.path(), "ca.crt", &ca),
        tls_server_name: "coordinator.example.com".into(),
        ..rota_agent::tls::TlsArgs::default()
    };
    let mut agent = rota_agent::daemon::client(
        &served.url(),
        &agent_tls,
        rota_agent::daemon::TokenAuth::default(),
    )
    .unwrap();
    let status = agent.report_facts(facts()).await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::Unavailable, "{status:?}");

    // Failed handshakes do not disturb the server.
    connect_and_call(served.endpoint(&ca, SERVICE_NAME))
        .await
        .unwrap();
    served.shutdown().await;
}

#[tokio::test]
async fn with_a_client_ca_only_clients_with_its_certificates_get_through() {
    let cluster = emulator().await;
    let dir = tempfile::tempdir().unwrap();
    let client_ca = new_ca();
    let options = TlsOptions {
        tls_client_ca_file: Some(write(dir.path(), "client-ca.crt", client_ca.cert_pem())),
        ..TlsOptions::default()
    };
    let tls = tls::server_config(&options, kube_client(&cluster), NS)
        .await
        .unwrap();
    let served = Served::start(&tls).await;
    let ca = tls.ca_pem().unwrap();
    let trusting = || {
        ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(&ca))
            .domain_name(SERVICE_NAME)
    };

    refused(
        connect_and_call(served.endpoint_with(trusting())).await,
        "CertificateRequired",
    );
    let stranger = client_identity(&new_ca());
    refused(
        connect_and_call(served.endpoint_with(trusting().identity(stranger))).await,
        "UnknownCA",
    );
    let member = client_identity(&client_ca);
    connect_and_call(served.endpoint_with(trusting().identity(member)))
        .await
        .unwrap();

    // The agent with --tls-client-cert-file / --tls-client-key-file.
    let issuer = rcgen::Issuer::from_ca_cert_pem(
        client_ca.cert_pem(),
        rcgen::KeyPair::from_pem(client_ca.key_pem()).unwrap(),
    )
    .unwrap();
    let key = rcgen::KeyPair::generate().unwrap();
    let mut params = rcgen::CertificateParams::new(vec!["agent-n1".to_owned()]).unwrap();
    params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth];
    let cert = params.signed_by(&key, &issuer).unwrap();
    let agent_tls = rota_agent::tls::TlsArgs {
        ca_file: write(dir.path(), "ca.crt", &ca),
        tls_client_cert_file: Some(write(dir.path(), "agent.crt", &cert.pem())),
        tls_client_key_file: Some(write(dir.path(), "agent.key", &key.serialize_pem())),
        ..rota_agent::tls::TlsArgs::default()
    };
    let auth = rota_agent::daemon::TokenAuth {
        token_file: Some(write(dir.path(), "token", "token-n1")),
    };
    let mut agent = rota_agent::daemon::client(&served.url(), &agent_tls, auth).unwrap();
    agent.report_facts(facts()).await.unwrap();
    served.shutdown().await;
}

#[tokio::test]
async fn a_renewed_certificate_reaches_new_connections_and_old_ones_keep_working() {
    let cluster = emulator().await;
    let options = TlsOptions::default();
    let tls = tls::server_config(&options, kube_client(&cluster), NS)
        .await
        .unwrap();
    let served = Served::start(&tls).await;
    let ca_pem = tls.ca_pem().unwrap();
    assert_eq!(
        served_certificate(served.addr, &ca_pem).await,
        der(&tls.cert_pem())
    );
    let open = served
        .endpoint(&ca_pem, SERVICE_NAME)
        .connect()
        .await
        .unwrap();
    call(open.clone()).await.unwrap();

    // The stored certificate is about to expire; the next refresh renews it.
    let secrets = Api::<Secret>::namespaced(kube_client(&cluster), NS);
    let ca_secret = secrets.get(CA_SECRET).await.unwrap();
    let text =
        |s: &Secret, k: &str| String::from_utf8(s.data.as_ref().unwrap()[k].0.clone()).unwrap();
    let ca = Ca::from_pem(&text(&ca_secret, "ca.crt"), &text(&ca_secret, "ca.key")).unwrap();
    let now = Timestamp::now();
    let expiring = ca
        .issue_serving(
            &options.subject_names(NS).unwrap(),
            now,
            SignedDuration::from_mins(30),
        )
        .unwrap();
    let mut serving = secrets.get(SERVING_SECRET).await.unwrap();
    let data = serving.data.as_mut().unwrap();
    data.insert(
        "tls.crt".into(),
        ByteString(expiring.cert_pem.clone().into_bytes()),
    );
    data.insert(
        "tls.key".into(),
        ByteString(expiring.key_pem.clone().into_bytes()),
    );
    secrets
        .replace(SERVING_SECRET, &PostParams::default(), &serving)
        .await
        .unwrap();
    assert!(tls.refresh(now).await.unwrap());
    assert!(!tls.refresh(now).await.unwrap(), "renewed once only");
    let renewed = tls.cert_pem();
    assert_ne!(renewed, expiring.cert_pem);
    assert_eq!(
        served_certificate(served.addr, &ca_pem).await,
        der(&renewed)
    );

    // The connection opened before the renewal still works, and so do new ones.
    call(open).await.unwrap();
    connect_and_call(served.endpoint(&ca_pem, SERVICE_NAME))
        .await
        .unwrap();
    served.shutdown().await;
}

#[tokio::test]
async fn certificate_files_are_served_and_reloaded_when_they_change() {
    let dir = tempfile::tempdir().unwrap();
    let names = TlsOptions::default().subject_names(NS).unwrap();
    let now = Timestamp::now();
    let first_ca = new_ca();
    let first = first_ca
        .issue_serving(&names, now, tls::pki::SERVING_VALIDITY)
        .unwrap();
    let tls = files_tls(dir.path(), &first).await;
    assert_eq!(tls.ca_pem(), None);
    let served = Served::start(&tls).await;
    connect_and_call(served.endpoint(first_ca.cert_pem(), SERVICE_NAME))
        .await
        .unwrap();
    assert!(!tls.refresh(now).await.unwrap());

    // cert-manager (or an operator) rotates to a certificate of another CA.
    let second_ca = new_ca();
    let second = second_ca
        .issue_serving(&names, now, tls::pki::SERVING_VALIDITY)
        .unwrap();
    write(dir.path(), "tls.crt", &second.cert_pem);
    write(dir.path(), "tls.key", &second.key_pem);
    assert!(tls.refresh(now).await.unwrap());
    connect_and_call(served.endpoint(second_ca.cert_pem(), SERVICE_NAME))
        .await
        .unwrap();
    refused(
        connect_and_call(served.endpoint(first_ca.cert_pem(), SERVICE_NAME)).await,
        "UnknownIssuer",
    );

    // A half-written rotation (key of another certificate) is refused; the server keeps
    // serving the last good one.
    write(dir.path(), "tls.key", &first.key_pem);
    assert!(tls.refresh(now).await.is_err());
    connect_and_call(served.endpoint(second_ca.cert_pem(), SERVICE_NAME))
        .await
        .unwrap();
    served.shutdown().await;
}

#[tokio::test]
async fn keep_fresh_picks_up_rotated_files_until_stopped() {
    let dir = tempfile::tempdir().unwrap();
    let names = TlsOptions::default().subject_names(NS).unwrap();
    let ca = new_ca();
    let first = ca
        .issue_serving(&names, Timestamp::now(), tls::pki::SERVING_VALIDITY)
        .unwrap();
    let options = TlsOptions {
        tls_cert_file: Some(write(dir.path(), "tls.crt", &first.cert_pem)),
        tls_key_file: Some(write(dir.path(), "tls.key", &first.key_pem)),
        tls_refresh_interval: Duration::from_millis(20),
        ..TlsOptions::default()
    };
    let nowhere =
        kube::Client::try_from(kube::Config::new("http://127.0.0.1:1".parse().unwrap())).unwrap();
    let tls = tls::server_config(&options, nowhere, NS).await.unwrap();
    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(tls.clone().keep_fresh(async {
        let _ = stopped.await;
    }));

    let second = ca
        .issue_serving(&names, Timestamp::now(), tls::pki::SERVING_VALIDITY)
        .unwrap();
    // The key first, then the certificate, as a careless rotation would: a refresh that
    // lands in between fails (mismatched pair), keeps the first certificate, and the next one
    // picks the pair up.
    write(dir.path(), "tls.key", &second.key_pem);
    write(dir.path(), "tls.crt", &second.cert_pem);
    let deadline = tokio::time::Instant::now() + DEADLINE;
    while tls.cert_pem() != second.cert_pem {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the rotated certificate was not picked up"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    stop.send(()).unwrap();
    tokio::time::timeout(DEADLINE, task).await.unwrap().unwrap();
}

/// The agent's own client for `served`, trusting the bundle in `ca_file` (re-read for every
/// new connection, as the DaemonSet's mounted ConfigMap is).
fn agent_client(served: &Served, ca_file: &Path) -> rota_agent::daemon::Client {
    let dir = ca_file.parent().unwrap();
    let agent_tls = rota_agent::tls::TlsArgs {
        ca_file: ca_file.to_owned(),
        ..rota_agent::tls::TlsArgs::default()
    };
    let auth = rota_agent::daemon::TokenAuth {
        token_file: Some(write(dir, "token", "token-n1\n")),
    };
    rota_agent::daemon::client(&served.url(), &agent_tls, auth).unwrap()
}

/// One call of `agent`; the error as text.
async fn agent_call(agent: &mut rota_agent::daemon::Client) -> Result<(), String> {
    match tokio::time::timeout(DEADLINE, agent.report_facts(facts())).await {
        Ok(outcome) => outcome.map(drop).map_err(|status| format!("{status:?}")),
        Err(_) => Err("timed out".to_owned()),
    }
}

/// Calls until one gets through (a channel learns that its connection closed on the call after
/// the close), or the deadline passes; the last error.
async fn agent_call_until_ok(agent: &mut rota_agent::daemon::Client) -> Result<(), String> {
    let deadline = tokio::time::Instant::now() + DEADLINE;
    loop {
        let outcome = agent_call(agent).await;
        if outcome.is_ok() || tokio::time::Instant::now() >= deadline {
            return outcome;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn published_bundle(cluster: &ServerHandle) -> String {
    Api::<ConfigMap>::namespaced(kube_client(cluster), NS)
        .get(CA_CONFIGMAP)
        .await
        .unwrap()
        .data
        .unwrap()
        .remove("ca.crt")
        .unwrap()
}

async fn ca_secret_data(cluster: &ServerHandle) -> std::collections::BTreeMap<String, String> {
    let secret = Api::<Secret>::namespaced(kube_client(cluster), NS)
        .get(CA_SECRET)
        .await
        .unwrap();
    secret
        .data
        .unwrap()
        .into_iter()
        .map(|(k, v)| (k, String::from_utf8(v.0).unwrap()))
        .collect()
}

#[tokio::test]
async fn agents_keep_working_through_a_whole_ca_rotation() {
    let cluster = emulator().await;
    let overlap = SignedDuration::from_secs(60);
    let options = TlsOptions {
        tls_ca_overlap: overlap.unsigned_abs(),
        ..TlsOptions::default()
    };
    let now = Timestamp::now();
    // The CA was made 250 days ago; with a year's validity and a third left, rotation is due
    // since day 245. Its serving certificate was renewed six days ago.
    let day = SignedDuration::from_hours(24);
    let tls = ServerTls::start(&options, kube_client(&cluster), NS, now - day * 250)
        .await
        .unwrap();
    tls.refresh(now - day * 6).await.unwrap();
    let stored = ca_secret_data(&cluster).await;
    let old = Ca::from_pem(&stored["ca.crt"], &stored["ca.key"]).unwrap();
    assert_eq!(published_bundle(&cluster).await, old.cert_pem());
    let mut served = Served::start(&tls).await;
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("early")).unwrap();
    let early_file = write(&dir.path().join("early"), "ca.crt", old.cert_pem());
    let mut early = agent_client(&served, &early_file);
    agent_call(&mut early).await.unwrap();

    // Stage: the bundle holds both CAs; the old one still signs.
    assert!(tls.refresh(now).await.unwrap());
    let stored = ca_secret_data(&cluster).await;
    let new = Ca::from_pem(&stored["next.crt"], &stored["next.key"]).unwrap();
    let both = published_bundle(&cluster).await;
    assert!(both.contains(old.cert_pem().trim()) && both.contains(new.cert_pem().trim()));
    assert!(old.issued(&CertInfo::from_pem(&tls.cert_pem()).unwrap()));
    // An agent started mid-rotation gets the two-CA bundle and gets through.
    std::fs::create_dir(dir.path().join("mid")).unwrap();
    let mut mid = agent_client(&served, &write(&dir.path().join("mid"), "ca.crt", &both));
    agent_call(&mut mid).await.unwrap();

    // The bundle is seen published; an overlap later the new CA signs.
    tls.refresh(now).await.unwrap();
    assert!(
        ca_secret_data(&cluster)
            .await
            .contains_key("next.published-at")
    );
    assert!(!tls.refresh(now + overlap / 2).await.unwrap(), "too early");
    assert!(tls.refresh(now + overlap).await.unwrap());
    assert!(new.issued(&CertInfo::from_pem(&tls.cert_pem()).unwrap()));
    assert_eq!(
        served_certificate(served.addr, &both).await,
        der(&tls.cert_pem())
    );
    let stored = ca_secret_data(&cluster).await;
    assert_eq!(stored["ca.crt"], new.cert_pem());
    assert_eq!(stored["previous.crt"], old.cert_pem());
    for (key, value) in &stored {
        assert!(
            Ca::from_pem(old.cert_pem(), value).is_err(),
            "{key} is the old CA's key"
        );
    }
    assert!(!stored.contains_key("next.crt") && !stored.contains_key("next.key"));

    // The early agent's connection, opened under the old CA, keeps working.
    agent_call(&mut early).await.unwrap();
    // The kubelet has refreshed its bundle; after a coordinator restart it connects anew, as
    // does the agent started mid-rotation.
    let after_switch = published_bundle(&cluster).await;
    write(&dir.path().join("early"), "ca.crt", &after_switch);
    served = served.restart(&tls).await;
    agent_call_until_ok(&mut early).await.unwrap();
    agent_call_until_ok(&mut mid).await.unwrap();
    // An agent that never got a bundle with the new CA is refused: the overlap is what lets
    // every agent learn it first.
    std::fs::create_dir(dir.path().join("stale")).unwrap();
    let mut stale = agent_client(
        &served,
        &write(&dir.path().join("stale"), "ca.crt", old.cert_pem()),
    );
    let refused = agent_call(&mut stale).await.unwrap_err();
    assert!(refused.contains("UnknownIssuer"), "{refused}");

    // An overlap after the switch the old CA leaves the bundle and the Secret.
    tls.refresh(now + overlap * 2).await.unwrap();
    assert_eq!(published_bundle(&cluster).await, new.cert_pem());
    let stored = ca_secret_data(&cluster).await;
    assert_eq!(
        stored.keys().map(String::as_str).collect::<Vec<_>>(),
        ["ca.crt", "ca.key"]
    );
    write(&dir.path().join("early"), "ca.crt", new.cert_pem());
    served = served.restart(&tls).await;
    agent_call_until_ok(&mut early).await.unwrap();
    served.shutdown().await;
}

#[tokio::test]
async fn a_certificate_from_a_secret_is_served_and_its_renewal_picked_up() {
    let cluster = emulator().await;
    let options = TlsOptions {
        tls_source: Some(TlsSource::Secret),
        ..TlsOptions::default()
    };
    // What cert-manager writes for a Certificate: a kubernetes.io/tls Secret with ca.crt.
    let names = options.subject_names(NS).unwrap();
    let now = Timestamp::now();
    let issuer = Ca::generate_for(&names, now, tls::pki::CA_VALIDITY).unwrap();
    let first = issuer
        .issue_serving(&names, now, tls::pki::SERVING_VALIDITY)
        .unwrap();
    let secrets = Api::<Secret>::namespaced(kube_client(&cluster), NS);
    let as_data = |cert: &tls::KeyedCert| {
        [
            ("tls.crt", cert.cert_pem.as_str()),
            ("tls.key", cert.key_pem.as_str()),
            ("ca.crt", issuer.cert_pem()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), ByteString(v.as_bytes().to_vec())))
        .collect()
    };
    let mut secret = Secret::default();
    secret.metadata.name = Some(SERVING_SECRET.into());
    secret.type_ = Some("kubernetes.io/tls".into());
    secret.data = Some(as_data(&first));
    secrets
        .create(&PostParams::default(), &secret)
        .await
        .unwrap();

    let tls = tls::server_config(&options, kube_client(&cluster), NS)
        .await
        .unwrap();
    assert_eq!(tls.ca_pem().as_deref(), Some(issuer.cert_pem()));
    let served = Served::start(&tls).await;
    assert_eq!(
        served_certificate(served.addr, issuer.cert_pem()).await,
        der(&first.cert_pem)
    );
    let dir = tempfile::tempdir().unwrap();
    let mut agent = agent_client(&served, &write(dir.path(), "ca.crt", issuer.cert_pem()));
    agent_call(&mut agent).await.unwrap();
    // Nothing of the bootstrap is made.
    assert!(secrets.get_opt(CA_SECRET).await.unwrap().is_none());
    assert!(
        Api::<ConfigMap>::namespaced(kube_client(&cluster), NS)
            .get_opt(CA_CONFIGMAP)
            .await
            .unwrap()
            .is_none()
    );

    // cert-manager renews: the next refresh serves the new certificate to new connections.
    let renewed = issuer
        .issue_serving(&names, now, tls::pki::SERVING_VALIDITY)
        .unwrap();
    let mut stored = secrets.get(SERVING_SECRET).await.unwrap();
    stored.data = Some(as_data(&renewed));
    secrets
        .replace(SERVING_SECRET, &PostParams::default(), &stored)
        .await
        .unwrap();
    assert!(tls.refresh(Timestamp::now()).await.unwrap());
    assert_eq!(
        served_certificate(served.addr, issuer.cert_pem()).await,
        der(&renewed.cert_pem)
    );
    agent_call(&mut agent).await.unwrap();
    served.shutdown().await;

    // A Secret that is not there fails the start, naming it.
    let absent = TlsOptions {
        tls_secret: "absent-tls".into(),
        ..options
    };
    let err = tls::server_config(&absent, kube_client(&cluster), NS)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("absent-tls"), "{err}");
    // Certificate files with another source are a contradiction, not silently ignored.
    let both = TlsOptions {
        tls_cert_file: Some("/c".into()),
        tls_key_file: Some("/k".into()),
        ..absent
    };
    let err = tls::server_config(&both, kube_client(&cluster), NS)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("--tls-source=files"), "{err}");
}

#[tokio::test]
async fn the_agent_refuses_a_certificate_outside_the_cas_name_constraints() {
    let dir = tempfile::tempdir().unwrap();
    let names = TlsOptions::default().subject_names(NS).unwrap();
    let now = Timestamp::now();
    // A CA as the bootstrap makes it, its key used (as a thief would) for a certificate that
    // also names another host.
    let ca = Ca::generate_for(&names, now, tls::pki::CA_VALIDITY).unwrap();
    let wider = tls::SubjectNames::for_service(
        "rota-coordinator",
        NS,
        "cluster.local",
        &["kubernetes.default.svc".into()],
    )
    .unwrap();
    let outside = ca
        .issue_serving(&wider, now, tls::pki::SERVING_VALIDITY)
        .unwrap();
    let tls = files_tls(dir.path(), &outside).await;
    let served = Served::start(&tls).await;
    let mut agent = agent_client(&served, &write(dir.path(), "ca.crt", ca.cert_pem()));
    let refused = agent_call(&mut agent).await.unwrap_err();
    assert!(refused.contains("NameConstraint"), "{refused}");

    // The same CA's certificate for the coordinator's names only is accepted, on the agent's
    // next connection.
    let inside = ca
        .issue_serving(&names, now, tls::pki::SERVING_VALIDITY)
        .unwrap();
    write(dir.path(), "tls.crt", &inside.cert_pem);
    write(dir.path(), "tls.key", &inside.key_pem);
    assert!(tls.refresh(now).await.unwrap());
    agent_call_until_ok(&mut agent).await.unwrap();
    served.shutdown().await;
}
