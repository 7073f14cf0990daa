//! The TLS bootstrap against the emulated API server: the CA and serving certificate land in
//! Secrets, the CA in a ConfigMap; replicas share one CA; certificates that are due, lack
//! names or come from another CA are reissued; an operator's own CA is used, a broken one is
//! refused and left alone.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::{Ipv4Addr, SocketAddr};

use jiff::{SignedDuration, Timestamp};
use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use kube::Api;
use kube::api::PostParams;
use rota_coordinator::tls::{
    self, CA_CONFIGMAP, CA_SECRET, Ca, CertInfo, SERVING_SECRET, ServerTls, TlsOptions,
};
use rota_sim::apiserver::{ApiServer, GroupResource, ServerHandle, Store};
use serde_json::json;

const NS: &str = "rota-system";

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

fn client(server: &ServerHandle) -> kube::Client {
    kube::Client::try_from(kube::Config::new(server.url().parse().unwrap())).unwrap()
}

fn field(secret: &Secret, key: &str) -> String {
    let bytes = secret.data.as_ref().unwrap().get(key).unwrap();
    String::from_utf8(bytes.0.clone()).unwrap()
}

async fn secret(server: &ServerHandle, name: &str) -> Secret {
    Api::<Secret>::namespaced(client(server), NS)
        .get(name)
        .await
        .unwrap()
}

async fn published_ca(server: &ServerHandle) -> String {
    let cm = Api::<ConfigMap>::namespaced(client(server), NS)
        .get(CA_CONFIGMAP)
        .await
        .unwrap();
    cm.data.unwrap().remove("ca.crt").unwrap()
}

async fn start(server: &ServerHandle, options: &TlsOptions) -> ServerTls {
    tls::server_config(options, client(server), NS)
        .await
        .unwrap()
}

/// Overwrites the serving Secret's certificate and key.
async fn store_serving(server: &ServerHandle, cert_pem: &str, key_pem: &str) {
    let api = Api::<Secret>::namespaced(client(server), NS);
    let mut serving = api.get(SERVING_SECRET).await.unwrap();
    let data = serving.data.as_mut().unwrap();
    data.insert("tls.crt".into(), ByteString(cert_pem.as_bytes().to_vec()));
    data.insert("tls.key".into(), ByteString(key_pem.as_bytes().to_vec()));
    api.replace(SERVING_SECRET, &PostParams::default(), &serving)
        .await
        .unwrap();
}

async fn stored_ca(server: &ServerHandle) -> Ca {
    let ca = secret(server, CA_SECRET).await;
    Ca::from_pem(&field(&ca, "ca.crt"), &field(&ca, "ca.key")).unwrap()
}

#[tokio::test]
async fn bootstrap_creates_the_secrets_and_publishes_the_ca() {
    let server = emulator().await;
    let tls = start(&server, &TlsOptions::default()).await;

    let ca_secret = secret(&server, CA_SECRET).await;
    let ca_pem = field(&ca_secret, "ca.crt");
    assert!(field(&ca_secret, "ca.key").contains("PRIVATE KEY"));
    let ca = stored_ca(&server).await;
    assert!(ca.info().is_ca);

    let serving = secret(&server, SERVING_SECRET).await;
    assert_eq!(serving.type_.as_deref(), Some("kubernetes.io/tls"));
    assert_eq!(field(&serving, "ca.crt"), ca_pem);
    let cert = CertInfo::from_pem(&field(&serving, "tls.crt")).unwrap();
    assert!(ca.issued(&cert));
    assert_eq!(
        cert.dns_names,
        [
            "rota-coordinator",
            "rota-coordinator.rota-system",
            "rota-coordinator.rota-system.svc",
            "rota-coordinator.rota-system.svc.cluster.local",
        ]
    );
    let now = Timestamp::now();
    assert!(!tls::needs_renewal(&cert, now));
    assert!(cert.not_after > now + SignedDuration::from_hours(80 * 24));

    assert_eq!(published_ca(&server).await, ca_pem);
    assert_eq!(tls.ca_pem().as_deref(), Some(ca_pem.as_str()));
    assert_eq!(tls.cert_pem(), field(&serving, "tls.crt"));
    assert_eq!(tls.config().alpn_protocols, [b"h2".to_vec()]);
}

#[tokio::test]
async fn a_second_replica_reuses_the_ca_and_the_certificate() {
    let server = emulator().await;
    let first = start(&server, &TlsOptions::default()).await;
    let second = start(&server, &TlsOptions::default()).await;
    assert_eq!(first.ca_pem(), second.ca_pem());
    assert_eq!(first.cert_pem(), second.cert_pem());
    // Nothing is due, so a refresh changes nothing.
    assert!(!second.refresh(Timestamp::now()).await.unwrap());
}

#[tokio::test]
async fn replicas_starting_together_agree_on_one_ca() {
    for _ in 0..5 {
        let server = emulator().await;
        let options = TlsOptions::default();
        let (a, b, c) = tokio::join!(
            start(&server, &options),
            start(&server, &options),
            start(&server, &options)
        );
        let stored = field(&secret(&server, CA_SECRET).await, "ca.crt");
        for replica in [&a, &b, &c] {
            assert_eq!(replica.ca_pem().as_deref(), Some(stored.as_str()));
        }
        assert_eq!(published_ca(&server).await, stored);
        let ca = stored_ca(&server).await;
        for replica in [&a, &b, &c] {
            assert!(ca.issued(&CertInfo::from_pem(&replica.cert_pem()).unwrap()));
        }
    }
}

#[tokio::test]
async fn an_expiring_certificate_is_renewed_by_the_same_ca() {
    let server = emulator().await;
    let options = TlsOptions::default();
    let tls = start(&server, &options).await;
    let ca = stored_ca(&server).await;
    let now = Timestamp::now();
    // Issued 2 h ago for 3 h: two thirds of its lifetime are gone.
    let names = options.subject_names(NS).unwrap();
    let expiring = ca
        .issue_serving(
            &names,
            now - SignedDuration::from_hours(1),
            SignedDuration::from_hours(2),
        )
        .unwrap();
    assert!(tls::needs_renewal(
        &CertInfo::from_pem(&expiring.cert_pem).unwrap(),
        now
    ));
    store_serving(&server, &expiring.cert_pem, &expiring.key_pem).await;

    assert!(tls.refresh(now).await.unwrap());
    let renewed = field(&secret(&server, SERVING_SECRET).await, "tls.crt");
    assert_ne!(renewed, expiring.cert_pem);
    assert_eq!(tls.cert_pem(), renewed);
    let info = CertInfo::from_pem(&renewed).unwrap();
    assert!(ca.issued(&info));
    assert!(!tls::needs_renewal(&info, now));
    assert_eq!(tls.ca_pem().as_deref(), Some(ca.cert_pem()));
    // A replica starting now takes the renewed certificate as it is.
    assert_eq!(start(&server, &options).await.cert_pem(), renewed);
}

#[tokio::test]
async fn a_certificate_lacking_configured_names_or_from_another_ca_is_reissued() {
    let server = emulator().await;
    let first = start(&server, &TlsOptions::default()).await;
    let overlap = SignedDuration::from_secs(60);
    let wider = TlsOptions {
        tls_extra_sans: vec!["rota.example.com".into(), "10.0.0.7".into()],
        tls_ca_overlap: overlap.unsigned_abs(),
        ..TlsOptions::default()
    };
    // The CA's name constraints do not cover the new names: the certificate stays as it is
    // (a name outside the constraints would make agents refuse it) and a CA for the new names
    // is staged in the trust bundle.
    let second = start(&server, &wider).await;
    assert_eq!(second.cert_pem(), first.cert_pem());
    let staged = secret(&server, CA_SECRET).await;
    let next = Ca::from_pem(&field(&staged, "next.crt"), &field(&staged, "next.key")).unwrap();
    assert!(published_ca(&server).await.contains(next.cert_pem().trim()));
    // Once the bundle has held it for the overlap, it signs a certificate with every name.
    let now = Timestamp::now();
    second.refresh(now).await.unwrap();
    assert!(second.refresh(now + overlap).await.unwrap());
    let info = CertInfo::from_pem(&second.cert_pem()).unwrap();
    assert!(next.issued(&info));
    assert!(info.dns_names.contains(&"rota.example.com".to_owned()));
    assert_eq!(info.ips, ["10.0.0.7".parse::<std::net::IpAddr>().unwrap()]);

    // A certificate signed by some other CA is replaced by one of ours.
    let stranger = Ca::generate(Timestamp::now(), tls::pki::CA_VALIDITY).unwrap();
    let foreign = stranger
        .issue_serving(
            &wider.subject_names(NS).unwrap(),
            Timestamp::now(),
            tls::pki::SERVING_VALIDITY,
        )
        .unwrap();
    store_serving(&server, &foreign.cert_pem, &foreign.key_pem).await;
    assert!(second.refresh(Timestamp::now()).await.unwrap());
    let ours = stored_ca(&server).await;
    assert!(ours.issued(&CertInfo::from_pem(&second.cert_pem()).unwrap()));

    // So is one whose key was swapped for another.
    let (cert, key) = (second.cert_pem(), foreign.key_pem);
    store_serving(&server, &cert, &key).await;
    assert!(second.refresh(Timestamp::now()).await.unwrap());
    assert_ne!(second.cert_pem(), cert);
}

#[tokio::test]
async fn an_operators_own_ca_is_used_and_a_stale_published_copy_is_replaced() {
    let server = emulator().await;
    let own = Ca::generate(Timestamp::now(), tls::pki::CA_VALIDITY).unwrap();
    let secrets = Api::<Secret>::namespaced(client(&server), NS);
    let mut ca_secret = Secret::default();
    ca_secret.metadata.name = Some(CA_SECRET.into());
    ca_secret.data = Some(
        [("ca.crt", own.cert_pem()), ("ca.key", own.key_pem())]
            .into_iter()
            .map(|(k, v)| (k.to_owned(), ByteString(v.as_bytes().to_vec())))
            .collect(),
    );
    secrets
        .create(&PostParams::default(), &ca_secret)
        .await
        .unwrap();
    let mut stale = ConfigMap::default();
    stale.metadata.name = Some(CA_CONFIGMAP.into());
    stale.data = Some([("ca.crt".to_owned(), "stale".to_owned())].into());
    Api::<ConfigMap>::namespaced(client(&server), NS)
        .create(&PostParams::default(), &stale)
        .await
        .unwrap();

    let tls = start(&server, &TlsOptions::default()).await;
    assert_eq!(tls.ca_pem().as_deref(), Some(own.cert_pem()));
    assert!(own.issued(&CertInfo::from_pem(&tls.cert_pem()).unwrap()));
    assert_eq!(published_ca(&server).await, own.cert_pem());
    // Unconstrained and ten years long, but not rota's: it is never rotated.
    tls.refresh(Timestamp::now() + SignedDuration::from_hours(24 * 3000))
        .await
        .unwrap();
    let after = secret(&server, CA_SECRET).await;
    assert!(!after.data.unwrap().contains_key("next.crt"));
}

#[tokio::test]
async fn the_ca_is_made_constrained_in_a_secret_of_its_own_type() {
    let server = emulator().await;
    start(&server, &TlsOptions::default()).await;
    let stored = secret(&server, CA_SECRET).await;
    assert_eq!(stored.type_.as_deref(), Some(tls::CA_SECRET_TYPE));
    assert_eq!(
        stored.metadata.labels.as_ref().unwrap()[tls::SECRET_LABEL],
        "ca"
    );
    let ca = stored_ca(&server).await;
    let names = TlsOptions::default().subject_names(NS).unwrap();
    assert_eq!(
        ca.info().name_constraints,
        Some(tls::Constraints::for_names(&names))
    );
    let life = ca.info().not_after.duration_since(ca.info().not_before);
    assert!(life <= tls::pki::CA_VALIDITY + SignedDuration::from_hours(1));
}

#[tokio::test]
async fn the_ten_year_ca_of_earlier_releases_is_rotated_out() {
    let server = emulator().await;
    // What earlier releases made: an Opaque Secret, labelled as the coordinator's, with an
    // unconstrained ten-year CA.
    let legacy = Ca::generate(Timestamp::now(), SignedDuration::from_hours(10 * 365 * 24)).unwrap();
    let mut old = Secret::default();
    old.metadata.name = Some(CA_SECRET.into());
    old.metadata.labels = Some(
        [(
            "app.kubernetes.io/managed-by".to_owned(),
            "rota-coordinator".to_owned(),
        )]
        .into(),
    );
    old.type_ = Some("Opaque".into());
    old.data = Some(
        [("ca.crt", legacy.cert_pem()), ("ca.key", legacy.key_pem())]
            .into_iter()
            .map(|(k, v)| (k.to_owned(), ByteString(v.as_bytes().to_vec())))
            .collect(),
    );
    Api::<Secret>::namespaced(client(&server), NS)
        .create(&PostParams::default(), &old)
        .await
        .unwrap();

    let options = TlsOptions {
        tls_ca_overlap: std::time::Duration::from_secs(60),
        ..TlsOptions::default()
    };
    let tls = start(&server, &options).await;
    // It still signs (agents trust only it so far); a constrained one-year CA is staged.
    assert!(legacy.issued(&CertInfo::from_pem(&tls.cert_pem()).unwrap()));
    let staged = secret(&server, CA_SECRET).await;
    let next = Ca::from_pem(&field(&staged, "next.crt"), &field(&staged, "next.key")).unwrap();
    assert!(next.info().name_constraints.is_some());
    let now = Timestamp::now();
    tls.refresh(now).await.unwrap();
    assert!(
        tls.refresh(now + SignedDuration::from_secs(60))
            .await
            .unwrap()
    );
    assert!(next.issued(&CertInfo::from_pem(&tls.cert_pem()).unwrap()));
    assert_eq!(stored_ca(&server).await.cert_pem(), next.cert_pem());
}

#[tokio::test]
async fn a_broken_ca_secret_is_refused_and_left_alone() {
    let server = emulator().await;
    let secrets = Api::<Secret>::namespaced(client(&server), NS);
    let mut broken = Secret::default();
    broken.metadata.name = Some(CA_SECRET.into());
    broken.data = Some(
        [(
            "ca.crt".to_owned(),
            ByteString(b"not a certificate".to_vec()),
        )]
        .into(),
    );
    let created = secrets
        .create(&PostParams::default(), &broken)
        .await
        .unwrap();

    let err = tls::server_config(&TlsOptions::default(), client(&server), NS)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("ca.key"), "{err}");
    let after = secrets.get(CA_SECRET).await.unwrap();
    assert_eq!(
        after.metadata.resource_version,
        created.metadata.resource_version
    );
    assert!(
        secrets.get_opt(SERVING_SECRET).await.unwrap().is_none(),
        "nothing was issued"
    );
}
