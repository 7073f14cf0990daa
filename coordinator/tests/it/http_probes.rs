//! The metrics and probes server over real HTTP: `/healthz`, `/readyz` following leader
//! election against the emulated API server, `/metrics` in OpenMetrics format with the gRPC
//! calls counted by `MeteredGrpc` and refused by a closed `CoreGate`.

#![allow(clippy::unwrap_used, clippy::expect_used)]
use rota_coordinator::slot_service::{SlotService, SlotServiceConfig};
use rota_core::clock::SystemClock;

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use rota_coordinator::core_gate::CoreGate;
use rota_coordinator::grpc::{AgentGrpc, StaticAuthenticator};
use rota_coordinator::http::{self, Readiness};
use rota_coordinator::leader::{ElectionConfig, LeaderElector, Leadership};
use rota_coordinator::metrics::{MeteredGrpc, Metrics};
use rota_core::election::Timings;
use rota_core::slots::MemoryStore;
use rota_proto::v1 as pb;
use rota_proto::v1::agent_client::AgentClient;
use rota_sim::apiserver::{ApiServer, Store};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;
use tokio::time::Instant;
use tokio_stream::wrappers::TcpListenerStream;
use tonic::Code;
use tonic::metadata::MetadataValue;

/// A minimal HTTP/1.1 GET: status code, content type and body.
async fn get(addr: SocketAddr, path: &str) -> (u16, String, String) {
    let mut conn = TcpStream::connect(addr).await.unwrap();
    let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    conn.write_all(request.as_bytes()).await.unwrap();
    let mut raw = Vec::new();
    conn.read_to_end(&mut raw).await.unwrap();
    let text = String::from_utf8(raw).unwrap();
    let (head, body) = text.split_once("\r\n\r\n").unwrap();
    let status = head.split(' ').nth(1).unwrap().parse().unwrap();
    let content_type = head
        .lines()
        .find_map(|l| {
            l.to_ascii_lowercase()
                .strip_prefix("content-type: ")
                .map(str::to_owned)
        })
        .unwrap_or_default();
    (status, content_type, body.to_owned())
}

async fn start_http(metrics: Metrics, readiness: Readiness) -> (SocketAddr, oneshot::Sender<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = oneshot::channel::<()>();
    tokio::spawn(http::serve(
        listener,
        http::router(metrics, readiness),
        async {
            let _ = stopped.await;
        },
    ));
    (addr, stop)
}

async fn until_status(addr: SocketAddr, path: &str, status: u16) -> String {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let (code, _, body) = get(addr, path).await;
        if code == status {
            return body;
        }
        assert!(Instant::now() < deadline, "{path} stayed {code}: {body}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn readyz_follows_leadership_and_cache_sync() {
    let server = ApiServer::start(Store::new(), SocketAddr::from((Ipv4Addr::LOCALHOST, 0)))
        .await
        .unwrap();
    let client = kube::Client::try_from(kube::Config::new(server.url().parse().unwrap())).unwrap();
    let (elector, leadership) = LeaderElector::new(
        client,
        ElectionConfig {
            namespace: "kube-system".into(),
            lease_name: "rota-coordinator".into(),
            identity: "coord-0".into(),
            timings: Timings {
                lease_duration: Duration::from_secs(1),
                renew_deadline: Duration::from_millis(600),
                retry_period: Duration::from_millis(100),
            },
        },
    )
    .unwrap();
    let readiness = Readiness::new(leadership.clone());
    let (addr, _stop) = start_http(Metrics::new(), readiness.clone()).await;

    assert_eq!(get(addr, "/healthz").await.0, 200);
    let (code, _, body) = get(addr, "/readyz").await;
    assert_eq!(code, 503);
    assert!(body.contains("not the leader"), "{body}");

    let (stop_election, stopped) = oneshot::channel::<()>();
    let election = tokio::spawn(elector.run(async {
        let _ = stopped.await;
    }));
    tokio::time::timeout(Duration::from_secs(5), leadership.acquired())
        .await
        .unwrap()
        .unwrap();
    let (code, _, body) = get(addr, "/readyz").await;
    assert_eq!(code, 503);
    assert!(body.contains("caches are not synced"), "{body}");
    readiness.set_synced(true);
    assert_eq!(until_status(addr, "/readyz", 200).await, "ready\n");

    // Losing leadership makes the replica unready at once; liveness is unaffected.
    let _ = stop_election.send(());
    election.await.unwrap();
    assert!(
        until_status(addr, "/readyz", 503)
            .await
            .contains("not the leader")
    );
    assert_eq!(get(addr, "/healthz").await.0, 200);
    assert_eq!(get(addr, "/nothing-here").await.0, 404);
}

#[tokio::test]
async fn metrics_count_grpc_calls_through_the_gate() {
    let metrics = Metrics::new();
    let leadership = Leadership::unconditional();
    metrics.set_leader(leadership.is_leader());
    let (http_addr, _stop_http) = start_http(metrics.clone(), Readiness::new(leadership)).await;

    let gate = CoreGate::new();
    let auth = StaticAuthenticator::new([("token-n1", "n1")]);
    let agent = AgentGrpc::new(Arc::new(gate.clone()), auth);
    let streams = agent.shutdown_handle();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let grpc_addr = listener.local_addr().unwrap();
    let (stop_grpc, stopped) = oneshot::channel::<()>();
    let server = tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(MeteredGrpc::new(agent.into_service(), metrics.clone()))
            .serve_with_incoming_shutdown(TcpListenerStream::new(listener), async move {
                let _ = stopped.await;
                streams.shutdown();
            }),
    );
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{grpc_addr}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut client = AgentClient::new(channel);
    let facts = |token: Option<&str>| {
        let mut request = tonic::Request::new(pb::ReportFactsRequest {
            node: "n1".into(),
            facts: Some(pb::NodeFacts {
                boot_id: "boot-1".into(),
                ..pb::NodeFacts::default()
            }),
        });
        if let Some(token) = token {
            request.metadata_mut().insert(
                "authorization",
                MetadataValue::try_from(format!("Bearer {token}")).unwrap(),
            );
        }
        request
    };

    // No core installed (not leading yet): UNAVAILABLE, so agents retry elsewhere.
    let closed = client
        .report_facts(facts(Some("token-n1")))
        .await
        .unwrap_err();
    assert_eq!(closed.code(), Code::Unavailable, "{closed:?}");
    assert!(closed.message().contains("does not lead"), "{closed:?}");

    let (core, _events) = SlotService::load(
        MemoryStore::with_nodes(["n1"]),
        SlotServiceConfig::default(),
        Arc::new(SystemClock),
    )
    .await
    .unwrap();
    let core = Arc::new(core);
    let installed = gate.install(core.clone());
    client.report_facts(facts(Some("token-n1"))).await.unwrap();
    client.report_facts(facts(Some("token-n1"))).await.unwrap();
    assert_eq!(core.facts("n1").unwrap().boot_id, "boot-1");
    let refused = client.report_facts(facts(None)).await.unwrap_err();
    assert_eq!(refused.code(), Code::Unauthenticated);
    // A server-streaming call counts when its stream ends.
    let mut watch = client
        .watch_slot(with_token(pb::WatchSlotRequest { node: "n1".into() }))
        .await
        .unwrap()
        .into_inner();
    watch.message().await.unwrap().unwrap();

    // Leadership lost: the core is gone again.
    drop(installed);
    let closed = client
        .report_facts(facts(Some("token-n1")))
        .await
        .unwrap_err();
    assert_eq!(closed.code(), Code::Unavailable);

    let _ = stop_grpc.send(());
    // Graceful shutdown ends the open WatchSlot stream; then the client lets go of its
    // connection so that the server can finish.
    let ended = tokio::time::timeout(Duration::from_secs(5), async {
        while watch.message().await.ok().flatten().is_some() {}
    });
    ended.await.unwrap();
    drop((watch, client));
    tokio::time::timeout(Duration::from_secs(5), server)
        .await
        .unwrap()
        .unwrap()
        .unwrap();

    let (code, content_type, text) = get(http_addr, "/metrics").await;
    assert_eq!(code, 200);
    assert!(
        content_type.starts_with("application/openmetrics-text"),
        "{content_type}"
    );
    for expected in [
        "rota_grpc_requests_total{method=\"ReportFacts\",code=\"Ok\"} 2",
        "rota_grpc_requests_total{method=\"ReportFacts\",code=\"Unavailable\"} 2",
        "rota_grpc_requests_total{method=\"ReportFacts\",code=\"Unauthenticated\"} 1",
        "rota_grpc_requests_total{method=\"WatchSlot\",code=\"Ok\"} 1",
        "rota_grpc_request_duration_seconds_count{method=\"ReportFacts\"} 5",
        "rota_leader 1",
        "# EOF",
    ] {
        assert!(text.contains(expected), "missing {expected:?} in\n{text}");
    }
}

fn with_token<T>(message: T) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    request.metadata_mut().insert(
        "authorization",
        MetadataValue::from_static("Bearer token-n1"),
    );
    request
}
