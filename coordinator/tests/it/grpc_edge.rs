//! The gRPC edge against a hostile network (#14): the real `rota.v1.Agent` service over TLS,
//! with the TokenReview authenticator against the emulated API server, served as the
//! coordinator serves it (`edge::server`, `edge::limit_connections`). A caller without a valid
//! token never has its body read; a flood of garbage tokens makes at most the rate limit's
//! TokenReviews; the concurrency and connection caps hold; an agent that was known before the
//! flood keeps working through it. Only a pod of the agents' DaemonSet speaks for its node, and
//! only while that pod exists.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context as TaskContext, Poll};
use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;
use http_body::Frame;
use http_body_util::{BodyExt, StreamBody};
use jiff::SignedDuration;
use kube::client::ClientBuilder;
use rota_coordinator::auth::{AgentIdentity, CacheConfig, RateLimit, TokenReviewAuthenticator};
use rota_coordinator::grpc::{AgentGrpc, EdgeLimits, edge};
use rota_coordinator::slot_service::{SlotService, SlotServiceConfig};
use rota_coordinator::tls::{self, ServerTls, TlsOptions};
use rota_core::agent_api::AgentCore;
use rota_core::clock::SystemClock;
use rota_core::model::{FencingToken, NodeFacts, NodePolicy, Operation};
use rota_core::slots::{self, Completion, MemoryStore, Release, SlotView};
use rota_proto::v1 as pb;
use rota_proto::v1::agent_client::AgentClient;
use rota_sim::apiserver::{
    ApiServer, DeleteOptions, GroupResource, ResourceKey, ServerHandle, Store,
};
use serde_json::json;
use tokio::net::TcpListener;
use tokio::sync::{RwLock, oneshot};
use tonic::Code;
use tonic::metadata::MetadataValue;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint};

const NS: &str = "rota-system";
const SERVICE_NAME: &str = "rota-coordinator.rota-system.svc";
const DEADLINE: Duration = Duration::from_secs(20);

/// The slot service, with `report_facts` held while the test holds `gate`'s write lock.
struct Held {
    inner: SlotService<MemoryStore>,
    gate: Arc<RwLock<()>>,
    entered: Arc<AtomicUsize>,
}

impl AgentCore for Held {
    type SlotUpdates = <SlotService<MemoryStore> as AgentCore>::SlotUpdates;

    async fn report_facts(
        &self,
        node: &str,
        facts: NodeFacts,
    ) -> slots::Result<Option<NodePolicy>> {
        self.entered.fetch_add(1, Ordering::SeqCst);
        let _open = self.gate.read().await;
        AgentCore::report_facts(&self.inner, node, facts).await
    }

    async fn request_slot(&self, node: &str, operation: Operation) -> slots::Result<SlotView> {
        AgentCore::request_slot(&self.inner, node, operation).await
    }

    fn watch_slot(&self, node: &str) -> slots::Result<Self::SlotUpdates> {
        AgentCore::watch_slot(&self.inner, node)
    }

    async fn renew(&self, node: &str, token: FencingToken) -> slots::Result<SignedDuration> {
        AgentCore::renew(&self.inner, node, token).await
    }

    async fn report_progress(
        &self,
        node: &str,
        token: FencingToken,
        step: String,
        message: String,
    ) -> slots::Result<()> {
        AgentCore::report_progress(&self.inner, node, token, step, message).await
    }

    async fn complete(
        &self,
        node: &str,
        token: FencingToken,
        completion: Completion,
    ) -> slots::Result<SlotView> {
        AgentCore::complete(&self.inner, node, token, completion).await
    }

    async fn release(&self, node: &str, release: Release, reason: String) -> slots::Result<()> {
        AgentCore::release(&self.inner, node, release, reason).await
    }
}

/// Counts the TokenReviews a client sends.
#[derive(Clone, Default)]
struct Reviews(Arc<AtomicUsize>);

impl<S> tower::Layer<S> for Reviews {
    type Service = Counting<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Counting {
            inner,
            reviews: self.0.clone(),
        }
    }
}

#[derive(Clone)]
struct Counting<S> {
    inner: S,
    reviews: Arc<AtomicUsize>,
}

impl<S, B> tower::Service<http::Request<B>> for Counting<S>
where
    S: tower::Service<http::Request<B>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn poll_ready(&mut self, cx: &mut TaskContext<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        if request.uri().path().ends_with("/tokenreviews") {
            self.reviews.fetch_add(1, Ordering::SeqCst);
        }
        self.inner.call(request)
    }
}

/// The emulated cluster, the coordinator's edge over TLS, and what the test observes.
struct Harness {
    store: Store,
    _cluster: ServerHandle,
    addr: SocketAddr,
    ca_pem: String,
    reviews: Reviews,
    gate: Arc<RwLock<()>>,
    entered: Arc<AtomicUsize>,
    stop: Option<oneshot::Sender<()>>,
}

impl Harness {
    async fn start(limits: EdgeLimits, review_limit: RateLimit) -> Harness {
        let store = Store::new();
        let create = |resource: &str, ns: Option<&str>, obj: serde_json::Value| {
            store
                .create(&GroupResource::core(resource), ns, obj)
                .unwrap();
        };
        create("namespaces", None, json!({"metadata": {"name": NS}}));
        create(
            "serviceaccounts",
            Some(NS),
            json!({"metadata": {"name": "rota-agent"}}),
        );
        for node in ["n1", "n2"] {
            create("nodes", None, json!({"metadata": {"name": node}}));
            create(
                "pods",
                Some(NS),
                json!({
                    "metadata": {"name": format!("agent-{node}"), "ownerReferences": [
                        {"apiVersion": "apps/v1", "kind": "DaemonSet", "name": "rota-agent", "uid": "ds-uid", "controller": true}
                    ]},
                    "spec": {"nodeName": node, "serviceAccountName": "rota-agent",
                             "containers": [{"name": "agent", "image": "rota-agent"}]}
                }),
            );
        }
        let cluster = ApiServer::start(store.clone(), SocketAddr::from((Ipv4Addr::LOCALHOST, 0)))
            .await
            .unwrap();
        let config = || kube::Config::new(cluster.url().parse().unwrap());
        let plain = kube::Client::try_from(config()).unwrap();
        let tls = tls::server_config(&TlsOptions::default(), plain, NS)
            .await
            .unwrap();
        let ca_pem = tls.ca_pem().unwrap().to_owned();

        let reviews = Reviews::default();
        let counted = ClientBuilder::try_from(config())
            .unwrap()
            .with_layer(&reviews)
            .build();
        let auth = TokenReviewAuthenticator::new(
            counted,
            AgentIdentity {
                audience: "rota".into(),
                namespace: NS.into(),
                service_account: "rota-agent".into(),
                daemon_set: "rota-agent".into(),
            },
            CacheConfig::default(),
        )
        .with_review_limit(review_limit);
        tokio::spawn(auth.watch_pods());

        let (inner, _events) = SlotService::load(
            MemoryStore::with_nodes(["n1", "n2"]),
            SlotServiceConfig::default(),
            Arc::new(SystemClock),
        )
        .await
        .unwrap();
        let gate = Arc::new(RwLock::new(()));
        let entered = Arc::new(AtomicUsize::new(0));
        let core = Held {
            inner,
            gate: gate.clone(),
            entered: entered.clone(),
        };
        let agent = AgentGrpc::new(Arc::new(core), auth).with_limits(limits);
        let streams = agent.shutdown_handle();
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop, stopped) = oneshot::channel::<()>();
        let incoming = edge::limit_connections(
            ServerTls::incoming(&tls, listener),
            limits.max_connections,
            None,
        );
        tokio::spawn(
            edge::server(&limits)
                .add_service(agent.into_service())
                .serve_with_incoming_shutdown(incoming, async move {
                    let _ = stopped.await;
                    streams.shutdown();
                }),
        );
        Harness {
            store,
            _cluster: cluster,
            addr,
            ca_pem,
            reviews,
            gate,
            entered,
            stop: Some(stop),
        }
    }

    fn endpoint(&self) -> Endpoint {
        Endpoint::from_shared(format!("https://{}", self.addr))
            .unwrap()
            .connect_timeout(DEADLINE)
            .timeout(DEADLINE)
            .tls_config(
                ClientTlsConfig::new()
                    .ca_certificate(Certificate::from_pem(&self.ca_pem))
                    .domain_name(SERVICE_NAME),
            )
            .unwrap()
    }

    async fn channel(&self) -> Channel {
        self.endpoint().connect().await.unwrap()
    }

    fn token(&self, node: &str) -> String {
        self.store
            .issue_service_account_token(
                NS,
                &format!("agent-{node}"),
                "rota",
                Duration::from_secs(3600),
            )
            .unwrap()
    }

    fn reviews(&self) -> usize {
        self.reviews.0.load(Ordering::SeqCst)
    }
}

impl Drop for Harness {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

fn facts(node: &str) -> pb::ReportFactsRequest {
    pb::ReportFactsRequest {
        node: node.into(),
        facts: Some(pb::NodeFacts {
            boot_id: "boot-1".into(),
            ..pb::NodeFacts::default()
        }),
    }
}

/// A `ReportFacts` call of `node` with `token` on `channel`.
async fn report(channel: Channel, node: &str, token: &str) -> Result<(), tonic::Status> {
    let mut request = tonic::Request::new(facts(node));
    request.metadata_mut().insert(
        "authorization",
        MetadataValue::try_from(format!("Bearer {token}")).unwrap(),
    );
    AgentClient::new(channel)
        .report_facts(request)
        .await
        .map(drop)
}

/// Sends `body` as the raw body of a `ReportFacts` call (no codec on the client side), with
/// `token` if given; the call's status code, read from the response headers or trailers.
async fn raw_call(channel: &mut Channel, token: Option<&str>, body: tonic::body::Body) -> Code {
    raw_call_to(channel, "/rota.v1.Agent/ReportFacts", token, body).await
}

/// [`raw_call`] to another path.
async fn raw_call_to(
    channel: &mut Channel,
    path: &str,
    token: Option<&str>,
    body: tonic::body::Body,
) -> Code {
    let mut request = http::Request::builder()
        .method("POST")
        .uri(path)
        .header("content-type", "application/grpc")
        .header("te", "trailers");
    if let Some(token) = token {
        request = request.header("authorization", format!("Bearer {token}"));
    }
    let request = request.body(body).unwrap();
    futures::future::poll_fn(|cx| tower::Service::poll_ready(channel, cx))
        .await
        .unwrap();
    let response = tower::Service::call(channel, request).await.unwrap();
    if let Some(status) = tonic::Status::from_header_map(response.headers()) {
        return status.code();
    }
    let trailers = response
        .into_body()
        .collect()
        .await
        .unwrap()
        .trailers()
        .cloned()
        .unwrap_or_default();
    tonic::Status::from_header_map(&trailers).map_or(Code::Ok, |s| s.code())
}

/// A body that sends `first` and then never ends: a server that reads it waits forever.
fn never_ending(first: Vec<u8>) -> tonic::body::Body {
    let frames = futures::stream::once(async move {
        Ok::<_, std::convert::Infallible>(Frame::data(Bytes::from(first)))
    })
    .chain(futures::stream::pending());
    tonic::body::Body::new(StreamBody::new(frames))
}

fn full(bytes: Vec<u8>) -> tonic::body::Body {
    tonic::body::Body::new(http_body_util::Full::new(Bytes::from(bytes)))
}

/// A gRPC frame: uncompressed, the given length prefix, then `payload`.
fn frame(length: u32, payload: &[u8]) -> Vec<u8> {
    let mut out = vec![0];
    out.extend_from_slice(&length.to_be_bytes());
    out.extend_from_slice(payload);
    out
}

fn garbage_token(i: usize) -> String {
    format!("eyJhbGciOiJSUzI1NiJ9.eyJnYXJiYWdlIjo{i:08x}.c2lnbmF0dXJl")
}

/// Without a token, a body is answered UNAUTHENTICATED without being read: a 2 GB length
/// prefix whose body never comes, 100,000 nested groups, a frame of 1 MiB. (Before, the body
/// was decoded first: OUT_OF_RANGE, INVALID_ARGUMENT, or a wait for the rest of the body.)
#[tokio::test]
async fn an_unauthenticated_body_is_never_read() {
    let harness = Harness::start(EdgeLimits::default(), RateLimit::default()).await;
    let mut channel = harness.channel().await;
    let nested = vec![0x0B; 100_000];
    let garbage = garbage_token(1);
    let cases = [
        (None, never_ending(frame(u32::MAX >> 1, b"\x0a\x02n1"))),
        (None, never_ending(frame(100_000, &nested))),
        (None, full(frame(1 << 20, &vec![0; 1 << 20]))),
        (Some("bad token!"), never_ending(frame(u32::MAX, &[]))),
        (
            Some(garbage.as_str()),
            never_ending(frame(100_000, &nested)),
        ),
    ];
    for (i, (token, body)) in cases.into_iter().enumerate() {
        let code = tokio::time::timeout(DEADLINE, raw_call(&mut channel, token, body))
            .await
            .unwrap_or_else(|_| panic!("case {i}: the server waited for the body"));
        assert_eq!(code, Code::Unauthenticated, "case {i}");
    }
    // The garbage token was reviewed once; the malformed ones never.
    assert_eq!(harness.reviews(), 1);
    // A made-up method is UNIMPLEMENTED before any check, as the generated service answers
    // it (the call metrics count all of them under one label).
    let made_up = raw_call_to(&mut channel, "/rota.v1.Agent/MadeUp", None, full(vec![])).await;
    assert_eq!(made_up, Code::Unimplemented);
    // A real agent's call on the same connection still goes through.
    report(channel, "n1", &harness.token("n1")).await.unwrap();
}

/// Authenticated calls are cut at their method's size: a 2 GB length prefix gets OUT_OF_RANGE.
#[tokio::test]
async fn an_authenticated_body_is_cut_at_its_methods_size() {
    let harness = Harness::start(EdgeLimits::default(), RateLimit::default()).await;
    let mut channel = harness.channel().await;
    let token = harness.token("n1");
    let code = tokio::time::timeout(
        DEADLINE,
        raw_call(
            &mut channel,
            Some(&token),
            full(frame(u32::MAX >> 1, &vec![0; 2 << 20])),
        ),
    )
    .await
    .unwrap();
    assert_eq!(code, Code::OutOfRange);
}

/// 400 concurrent calls with unique garbage tokens and 64 KiB bodies, over 50 connections:
/// at most the bucket's burst plus its rate over the flood's duration reach the TokenReview
/// API (before: one review each); none gets through; an agent known before the flood keeps
/// working during it.
#[tokio::test]
async fn a_flood_of_garbage_tokens_makes_at_most_the_rate_limits_reviews() {
    let limit = RateLimit {
        rate: 2.0,
        burst: 10,
    };
    let harness = Harness::start(EdgeLimits::default(), limit).await;
    let agent_token = harness.token("n1");
    let agent = harness.channel().await;
    report(agent.clone(), "n1", &agent_token).await.unwrap();
    let before = harness.reviews();
    assert_eq!(before, 1);

    let started = tokio::time::Instant::now();
    let mut channels = Vec::new();
    // Eight calls per connection: within its stream and call limits, so that every call
    // reaches the authenticator.
    for _ in 0..50 {
        channels.push(harness.channel().await);
    }
    let payload = vec![0x42; 64 * 1024];
    let flood = futures::stream::iter(0..400)
        .map(|i| {
            let mut channel = channels[i % channels.len()].clone();
            let body = full(frame(u32::try_from(payload.len()).unwrap(), &payload));
            async move { raw_call(&mut channel, Some(&garbage_token(i)), body).await }
        })
        .buffer_unordered(400)
        .collect::<Vec<Code>>();
    let during = async {
        // The known agent, while the flood runs.
        report(agent.clone(), "n1", &agent_token).await
    };
    let (codes, during) = tokio::time::timeout(DEADLINE, futures::future::join(flood, during))
        .await
        .unwrap();
    during.unwrap();
    let elapsed = started.elapsed().as_secs_f64();
    for code in &codes {
        assert!(
            matches!(
                code,
                Code::Unauthenticated | Code::Unavailable | Code::ResourceExhausted
            ),
            "{code:?}"
        );
    }
    let reviews = harness.reviews() - before;
    let bound = f64::from(limit.burst) + limit.rate * elapsed + 1.0;
    assert!(
        (reviews as f64) <= bound,
        "{reviews} TokenReviews for 400 garbage tokens in {elapsed:.1}s (at most {bound:.0})"
    );
    let throttled = codes.iter().filter(|c| **c == Code::Unavailable).count();
    assert!(
        throttled + reviews >= 400,
        "{throttled} throttled, {reviews} reviewed: every call was one or the other"
    );
    report(agent, "n1", &agent_token).await.unwrap();
}

/// Waits until `check` holds, failing after [`DEADLINE`].
async fn until(what: &str, mut check: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + DEADLINE;
    while !check() {
        assert!(tokio::time::Instant::now() < deadline, "timed out: {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// The global limit on calls being handled and the per-connection one hold: the call over
/// either gets RESOURCE_EXHAUSTED at once, and calls go through again once the others end.
#[tokio::test]
async fn concurrency_caps_hold() {
    let limits = EdgeLimits {
        max_concurrent_calls: 2,
        max_calls_per_connection: 2,
        ..EdgeLimits::default()
    };
    let harness = Harness::start(limits, RateLimit::default()).await;
    let (t1, t2) = (harness.token("n1"), harness.token("n2"));
    let (c1, c2, c3) = (
        harness.channel().await,
        harness.channel().await,
        harness.channel().await,
    );

    // Global: two held calls on two connections; a third on a third connection is refused.
    let hold = harness.gate.write().await;
    let first = spawn_report(c1.clone(), "n1", &t1);
    let second = spawn_report(c2.clone(), "n2", &t2);
    until("two calls are being handled", || {
        harness.entered.load(Ordering::SeqCst) == 2
    })
    .await;
    let over = report(c3.clone(), "n1", &t1).await.unwrap_err();
    assert_eq!(over.code(), Code::ResourceExhausted, "{over:?}");
    drop(hold);
    first.await.unwrap().unwrap();
    second.await.unwrap().unwrap();
    report(c3.clone(), "n1", &t1).await.unwrap();

    // Per connection: two held calls on one connection; a third on it is refused, while
    // another connection is not concerned (its call waits for the gate, and then passes).
    let limits_per_connection = EdgeLimits {
        max_concurrent_calls: 100,
        max_calls_per_connection: 2,
        ..EdgeLimits::default()
    };
    let harness = Harness::start(limits_per_connection, RateLimit::default()).await;
    let t1 = harness.token("n1");
    let (c1, c2) = (harness.channel().await, harness.channel().await);
    let hold = harness.gate.write().await;
    let held: Vec<_> = (0..2)
        .map(|_| spawn_report(c1.clone(), "n1", &t1))
        .collect();
    until("two calls on one connection", || {
        harness.entered.load(Ordering::SeqCst) == 2
    })
    .await;
    let over = report(c1.clone(), "n1", &t1).await.unwrap_err();
    assert_eq!(over.code(), Code::ResourceExhausted, "{over:?}");
    let other = spawn_report(c2.clone(), "n1", &t1);
    until("the other connection's call is handled", || {
        harness.entered.load(Ordering::SeqCst) == 3
    })
    .await;
    drop(hold);
    for call in held {
        call.await.unwrap().unwrap();
    }
    other.await.unwrap().unwrap();
}

/// Over the connection cap, a new connection is closed at once; once one closes, a new one
/// is accepted.
#[tokio::test]
async fn the_connection_cap_holds() {
    let limits = EdgeLimits {
        max_connections: 2,
        ..EdgeLimits::default()
    };
    let harness = Harness::start(limits, RateLimit::default()).await;
    let token = harness.token("n1");
    let first = harness.channel().await;
    let second = harness.channel().await;
    report(first.clone(), "n1", &token).await.unwrap();
    report(second.clone(), "n1", &token).await.unwrap();
    let third = match harness.endpoint().connect().await {
        Ok(channel) => report(channel, "n1", &token).await.map_err(|s| s.code()),
        Err(_) => Err(Code::Unavailable),
    };
    assert!(third.is_err(), "a third connection got through");
    drop(first);
    let deadline = tokio::time::Instant::now() + DEADLINE;
    loop {
        if let Ok(channel) = harness.endpoint().connect().await
            && report(channel, "n1", &token).await.is_ok()
        {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no connection accepted after one closed"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    report(second, "n1", &token).await.unwrap();
}

/// [`report`] on a task of its own.
fn spawn_report(
    channel: Channel,
    node: &'static str,
    token: &str,
) -> tokio::task::JoinHandle<Result<(), tonic::Status>> {
    let token = token.to_owned();
    tokio::spawn(async move { report(channel, node, &token).await })
}

/// Through the edge: a pod running as the agents' service account on n1 but not controlled by
/// the agents' DaemonSet is refused (#14 finding 3); the agent of n2, known and cached, is
/// refused as soon as its pod's deletion is seen (finding 4).
#[tokio::test]
async fn an_impostor_pod_and_a_deleted_agent_are_refused_at_the_edge() {
    let harness = Harness::start(EdgeLimits::default(), RateLimit::default()).await;
    harness
        .store
        .create(
            &GroupResource::core("pods"),
            Some(NS),
            json!({"metadata": {"name": "debug-n1"},
                   "spec": {"nodeName": "n1", "serviceAccountName": "rota-agent",
                            "containers": [{"name": "shell", "image": "busybox"}]}}),
        )
        .unwrap();
    let impostor = harness
        .store
        .issue_service_account_token(NS, "debug-n1", "rota", Duration::from_secs(3600))
        .unwrap();
    let channel = harness.channel().await;
    let refused = report(channel.clone(), "n1", &impostor).await.unwrap_err();
    assert_eq!(refused.code(), Code::Unauthenticated, "{refused:?}");
    assert!(
        refused.message().contains("not run by the DaemonSet"),
        "{refused:?}"
    );

    let agent = harness.token("n2");
    report(channel.clone(), "n2", &agent).await.unwrap();
    harness
        .store
        .delete(
            &ResourceKey::new(GroupResource::core("pods"), Some(NS), "agent-n2"),
            &DeleteOptions {
                grace_period_seconds: Some(0),
                ..DeleteOptions::default()
            },
        )
        .unwrap();
    let deadline = tokio::time::Instant::now() + DEADLINE;
    loop {
        match report(channel.clone(), "n2", &agent).await {
            Ok(()) => {}
            Err(status) => {
                assert_eq!(status.code(), Code::Unauthenticated, "{status:?}");
                break;
            }
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the deleted agent is still accepted"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // The other agent is unaffected.
    report(channel, "n1", &harness.token("n1")).await.unwrap();
}
