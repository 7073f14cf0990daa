//! The TokenReview authenticator against the emulated API server, alone and behind the real
//! gRPC edge: each way an agent's token is accepted or refused.

#![allow(clippy::unwrap_used, clippy::expect_used)]
use rota_coordinator::slot_service::{SlotService, SlotServiceConfig};
use rota_core::clock::{Clock, OffsetClock, SystemClock};

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use jiff::{SignedDuration, Timestamp};
use rota_coordinator::auth::{AgentIdentity, CacheConfig, TokenReviewAuthenticator};
use rota_coordinator::grpc::{AgentGrpc, AuthError, Authenticator, serve};
use rota_core::slots::MemoryStore;
use rota_proto::v1 as pb;
use rota_proto::v1::agent_client::AgentClient;
use rota_sim::apiserver::{
    ApiServer, DeleteOptions, GroupResource, ResourceKey, ServerHandle, Store,
};
use serde_json::json;
use tokio::net::TcpListener;
use tokio_stream::wrappers::TcpListenerStream;
use tonic::Code;
use tonic::metadata::{MetadataMap, MetadataValue};

const NS: &str = "rota-system";
const HOUR: Duration = Duration::from_secs(3600);

/// The emulated cluster: nodes n1 and n2, agent pods on each, a pod of another service account,
/// and an agent pod not scheduled yet. Its clock can be moved forward.
struct Cluster {
    store: Store,
    server: ServerHandle,
    skew: Arc<OffsetClock>,
}

impl Cluster {
    async fn start() -> Cluster {
        let skew = Arc::new(OffsetClock::default());
        let store = Store::with_config(10_000, skew.clone());
        let create = |resource: &str, ns: Option<&str>, obj: serde_json::Value| {
            store
                .create(&GroupResource::core(resource), ns, obj)
                .unwrap();
        };
        create("namespaces", None, json!({"metadata": {"name": NS}}));
        for node in ["n1", "n2"] {
            create("nodes", None, json!({"metadata": {"name": node}}));
        }
        create(
            "serviceaccounts",
            Some(NS),
            json!({"metadata": {"name": "rota-agent"}}),
        );
        let pod = |name: &str, sa: &str, node: Option<&str>| {
            let mut spec = json!({"serviceAccountName": sa, "containers": [{"name": "agent", "image": "rota-agent"}]});
            if let Some(node) = node {
                spec["nodeName"] = json!(node);
            }
            // Agents are the pods of the agents' DaemonSet.
            let owners = match sa {
                "rota-agent" => {
                    json!([{"apiVersion": "apps/v1", "kind": "DaemonSet", "name": "rota-agent", "uid": "ds-uid", "controller": true}])
                }
                _ => json!([]),
            };
            json!({"metadata": {"name": name, "ownerReferences": owners}, "spec": spec})
        };
        create("pods", Some(NS), pod("agent-n1", "rota-agent", Some("n1")));
        create("pods", Some(NS), pod("agent-n2", "rota-agent", Some("n2")));
        create("pods", Some(NS), pod("intruder", "default", Some("n1")));
        create("pods", Some(NS), pod("agent-pending", "rota-agent", None));
        let server = ApiServer::start(store.clone(), SocketAddr::from((Ipv4Addr::LOCALHOST, 0)))
            .await
            .unwrap();
        Cluster {
            store,
            server,
            skew,
        }
    }

    fn token(&self, pod: &str, audience: &str, ttl: Duration) -> String {
        self.store
            .issue_service_account_token(NS, pod, audience, ttl)
            .unwrap()
    }

    fn advance(&self, by: Duration) {
        let ahead = self.skew.now().duration_since(Timestamp::now());
        let by = SignedDuration::try_from(by).unwrap();
        self.skew.set_offset(ahead.checked_add(by).unwrap());
    }

    fn authenticator(&self, cache: CacheConfig) -> TokenReviewAuthenticator {
        let client =
            kube::Client::try_from(kube::Config::new(self.server.url().parse().unwrap())).unwrap();
        TokenReviewAuthenticator::new(
            client,
            AgentIdentity {
                audience: "rota".into(),
                namespace: NS.into(),
                service_account: "rota-agent".into(),
                daemon_set: "rota-agent".into(),
            },
            cache,
        )
    }

    fn delete_pod(&self, name: &str) {
        self.store
            .delete(
                &ResourceKey::new(GroupResource::core("pods"), Some(NS), name),
                &DeleteOptions {
                    grace_period_seconds: Some(0),
                    ..DeleteOptions::default()
                },
            )
            .unwrap();
    }
}

fn no_cache() -> CacheConfig {
    CacheConfig {
        ttl: Duration::ZERO,
        failure_ttl: Duration::ZERO,
        capacity: 0,
        refusal_budget: 0,
    }
}

fn bearer(token: &str) -> MetadataMap {
    let mut metadata = MetadataMap::new();
    metadata.insert(
        "authorization",
        MetadataValue::try_from(format!("Bearer {token}")).unwrap(),
    );
    metadata
}

#[track_caller]
fn refused(outcome: Result<String, AuthError>, mentions: &str) {
    match outcome {
        Err(AuthError::Unauthenticated(why)) => {
            assert!(
                why.contains(mentions),
                "{why:?} should mention {mentions:?}"
            )
        }
        other => panic!("expected a refusal mentioning {mentions:?}, got {other:?}"),
    }
}

#[tokio::test]
async fn an_agent_token_names_its_node() {
    let cluster = Cluster::start().await;
    let auth = cluster.authenticator(CacheConfig::default());
    let t1 = cluster.token("agent-n1", "rota", HOUR);
    let t2 = cluster.token("agent-n2", "rota", HOUR);
    assert_eq!(auth.authenticate(&bearer(&t1)).await.unwrap(), "n1");
    assert_eq!(auth.authenticate(&bearer(&t2)).await.unwrap(), "n2");
}

#[tokio::test]
async fn no_token_or_a_malformed_header_is_refused() {
    let cluster = Cluster::start().await;
    let auth = cluster.authenticator(CacheConfig::default());
    refused(auth.authenticate(&MetadataMap::new()).await, "missing");
    let mut basic = MetadataMap::new();
    basic.insert(
        "authorization",
        MetadataValue::from_static("Basic dXNlcjpwdw=="),
    );
    refused(auth.authenticate(&basic).await, "Bearer");
    refused(
        auth.authenticate(&bearer("made-up")).await,
        "invalid bearer token",
    );
}

#[tokio::test]
async fn a_token_for_another_audience_is_refused() {
    let cluster = Cluster::start().await;
    let auth = cluster.authenticator(CacheConfig::default());
    let api_token = cluster.token(
        "agent-n1",
        "https://kubernetes.default.svc.cluster.local",
        HOUR,
    );
    refused(auth.authenticate(&bearer(&api_token)).await, "audiences");
}

#[tokio::test]
async fn an_expired_token_is_refused() {
    let cluster = Cluster::start().await;
    let auth = cluster.authenticator(CacheConfig::default());
    let token = cluster.token("agent-n1", "rota", Duration::from_secs(600));
    cluster.advance(Duration::from_secs(601));
    refused(auth.authenticate(&bearer(&token)).await, "expired");
}

#[tokio::test]
async fn another_service_account_is_refused() {
    let cluster = Cluster::start().await;
    let auth = cluster.authenticator(CacheConfig::default());
    let token = cluster.token("intruder", "rota", HOUR);
    refused(
        auth.authenticate(&bearer(&token)).await,
        "system:serviceaccount:rota-system:default",
    );
}

#[tokio::test]
async fn a_token_whose_pod_is_gone_is_refused() {
    let cluster = Cluster::start().await;
    let auth = cluster.authenticator(no_cache());
    let token = cluster.token("agent-n1", "rota", HOUR);
    assert_eq!(auth.authenticate(&bearer(&token)).await.unwrap(), "n1");
    cluster.delete_pod("agent-n1");
    refused(auth.authenticate(&bearer(&token)).await, "not found");
}

#[tokio::test]
async fn accepted_tokens_are_cached_refusals_only_briefly() {
    let cluster = Cluster::start().await;
    let auth = cluster.authenticator(CacheConfig {
        ttl: Duration::from_secs(60),
        failure_ttl: Duration::ZERO,
        capacity: 16,
        ..CacheConfig::default()
    });
    let token = cluster.token("agent-n1", "rota", HOUR);
    assert_eq!(auth.authenticate(&bearer(&token)).await.unwrap(), "n1");
    // Within the TTL the answer comes from the cache: the pod's deletion is not seen yet.
    cluster.delete_pod("agent-n1");
    assert_eq!(auth.authenticate(&bearer(&token)).await.unwrap(), "n1");
    // Without a negative cache, a refused token is reviewed again and accepted once valid:
    // here an agent pod is bound after its first attempt.
    let pending = cluster.token("agent-pending", "rota", HOUR);
    refused(auth.authenticate(&bearer(&pending)).await, "not scheduled");
    bind(&cluster, "agent-pending", "n2");
    assert_eq!(auth.authenticate(&bearer(&pending)).await.unwrap(), "n2");
}

/// Sets the pod's `spec.nodeName` (what the scheduler's binding does).
fn bind(cluster: &Cluster, pod: &str, node: &str) {
    let key = ResourceKey::new(GroupResource::core("pods"), Some(NS), pod);
    let mut obj = (*cluster.store.get(&key).unwrap()).clone();
    obj["spec"]["nodeName"] = json!(node);
    cluster.store.update(&key, obj).unwrap();
}

#[tokio::test]
async fn without_a_node_claim_the_pod_tells_the_node() {
    // A token issued before its pod was scheduled carries no node-name claim (as on clusters
    // before Kubernetes 1.30): the pod's spec.nodeName decides.
    let cluster = Cluster::start().await;
    let auth = cluster.authenticator(no_cache());
    let token = cluster.token("agent-pending", "rota", HOUR);
    refused(auth.authenticate(&bearer(&token)).await, "not scheduled");
    bind(&cluster, "agent-pending", "n1");
    assert_eq!(auth.authenticate(&bearer(&token)).await.unwrap(), "n1");
}

#[tokio::test]
async fn an_unreachable_api_server_is_unavailable_not_a_refusal() {
    let cluster = Cluster::start().await;
    let auth = cluster.authenticator(CacheConfig::default());
    let token = cluster.token("agent-n1", "rota", HOUR);
    cluster.server.shutdown().await;
    match auth.authenticate(&bearer(&token)).await {
        Err(AuthError::Unavailable(_)) => {}
        other => panic!("expected UNAVAILABLE, got {other:?}"),
    }
}

#[tokio::test]
async fn the_edge_refuses_a_token_of_a_pod_on_another_node() {
    let cluster = Cluster::start().await;
    let auth = cluster.authenticator(CacheConfig::default());
    let (core, _events) = SlotService::load(
        MemoryStore::with_nodes(["n1", "n2"]),
        SlotServiceConfig::default(),
        Arc::new(SystemClock),
    )
    .await
    .unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(serve(
        AgentGrpc::new(Arc::new(core), auth),
        TcpListenerStream::new(listener),
        async {
            let _ = stopped.await;
        },
    ));
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut client = AgentClient::new(channel);
    let call = |node: &str, token: Option<&str>| {
        let mut request = tonic::Request::new(pb::ReportFactsRequest {
            node: node.into(),
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
    let n2_token = cluster.token("agent-n2", "rota", HOUR);
    client
        .report_facts(call("n2", Some(&n2_token)))
        .await
        .unwrap();
    let denied = client
        .report_facts(call("n1", Some(&n2_token)))
        .await
        .unwrap_err();
    assert_eq!(denied.code(), Code::PermissionDenied, "{denied:?}");
    let missing = client.report_facts(call("n1", None)).await.unwrap_err();
    assert_eq!(missing.code(), Code::Unauthenticated, "{missing:?}");
    let intruder = cluster.token("intruder", "rota", HOUR);
    let foreign = client
        .report_facts(call("n1", Some(&intruder)))
        .await
        .unwrap_err();
    assert_eq!(foreign.code(), Code::Unauthenticated, "{foreign:?}");
    let _ = stop.send(());
    server.await.unwrap().unwrap();
}

/// Finding 3 of #14: a pod running as the agents' service account on a node, but not a pod of
/// the agents' DaemonSet (a debug pod, a copy of the agent someone started), is refused.
#[tokio::test]
async fn a_pod_not_run_by_the_agents_daemonset_is_refused() {
    let cluster = Cluster::start().await;
    let auth = cluster.authenticator(no_cache());
    let pod = |name: &str, owners: serde_json::Value| {
        json!({"metadata": {"name": name, "ownerReferences": owners},
               "spec": {"nodeName": "n1", "serviceAccountName": "rota-agent",
                        "containers": [{"name": "agent", "image": "rota-agent"}]}})
    };
    let owner = |kind: &str, name: &str, controller: bool| json!([{"apiVersion": "apps/v1", "kind": kind, "name": name, "uid": "x", "controller": controller}]);
    let impostors = [
        ("bare", json!([])),
        ("other-ds", owner("DaemonSet", "node-exporter", true)),
        ("replicaset", owner("ReplicaSet", "rota-agent", true)),
        ("not-controller", owner("DaemonSet", "rota-agent", false)),
    ];
    for (name, owners) in impostors {
        cluster
            .store
            .create(&GroupResource::core("pods"), Some(NS), pod(name, owners))
            .unwrap();
        let token = cluster.token(name, "rota", HOUR);
        refused(
            auth.authenticate(&bearer(&token)).await,
            "not run by the DaemonSet rota-agent",
        );
    }
    // The DaemonSet's own pod on that node is accepted.
    let token = cluster.token("agent-n1", "rota", HOUR);
    assert_eq!(auth.authenticate(&bearer(&token)).await.unwrap(), "n1");
}

/// Finding 4 of #14: with the pod watch running, a cached identity is refused as soon as the
/// watch sees its pod deleted (before: accepted until the cache entry expired, a minute).
#[tokio::test]
async fn a_deleted_pods_token_is_refused_once_the_deletion_is_seen() {
    let cluster = Cluster::start().await;
    let auth = Arc::new(cluster.authenticator(CacheConfig {
        ttl: Duration::from_secs(300),
        ..CacheConfig::default()
    }));
    let watch = tokio::spawn(auth.watch_pods());
    let token = cluster.token("agent-n1", "rota", HOUR);
    assert_eq!(auth.authenticate(&bearer(&token)).await.unwrap(), "n1");
    // The cache answers now (a review would fail once the pod is gone; the cache would not).
    cluster.delete_pod("agent-n1");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        match auth.authenticate(&bearer(&token)).await {
            Err(AuthError::Unauthenticated(why)) => {
                assert!(why.contains("is gone"), "{why}");
                break;
            }
            Ok(node) => assert_eq!(node, "n1"),
            Err(other) => panic!("{other:?}"),
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the deleted pod's token is still accepted"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // And it stays refused; the other agent is unaffected.
    refused(auth.authenticate(&bearer(&token)).await, "");
    let other = cluster.token("agent-n2", "rota", HOUR);
    assert_eq!(auth.authenticate(&bearer(&other)).await.unwrap(), "n2");
    watch.abort();
}

/// A pod deleted and re-created under the same name (a DaemonSet rollout does this) does not
/// inherit the old pod's cached identity: its UID differs.
#[tokio::test]
async fn a_replaced_pods_old_token_is_refused() {
    let cluster = Cluster::start().await;
    let auth = Arc::new(cluster.authenticator(CacheConfig::default()));
    let watch = tokio::spawn(auth.watch_pods());
    let old = cluster.token("agent-n2", "rota", HOUR);
    assert_eq!(auth.authenticate(&bearer(&old)).await.unwrap(), "n2");
    cluster.delete_pod("agent-n2");
    cluster
        .store
        .create(
            &GroupResource::core("pods"),
            Some(NS),
            json!({"metadata": {"name": "agent-n2", "ownerReferences": [
                     {"apiVersion": "apps/v1", "kind": "DaemonSet", "name": "rota-agent", "uid": "ds-uid", "controller": true}]},
                   "spec": {"nodeName": "n2", "serviceAccountName": "rota-agent",
                            "containers": [{"name": "agent", "image": "rota-agent"}]}}),
        )
        .unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while auth.authenticate(&bearer(&old)).await.is_ok() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the replaced pod's token is still accepted"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let new = cluster.token("agent-n2", "rota", HOUR);
    assert_eq!(auth.authenticate(&bearer(&new)).await.unwrap(), "n2");
    watch.abort();
}
