//! The `rota.v1.Agent` gRPC edge, in process on port 0, driven by a real tonic client.
use rota_coordinator::slot_service::{SlotService, SlotServiceConfig};
use rota_core::clock::SystemClock;

use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Duration;

use rota_coordinator::grpc::{AgentGrpc, StaticAuthenticator, serve};
use rota_core::slots::{MemoryStore, NodeState, Waiting};
use rota_proto::v1 as pb;
use rota_proto::v1::agent_client::AgentClient;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokio_stream::wrappers::TcpListenerStream;
use tonic::metadata::MetadataValue;
use tonic::service::Interceptor;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;
use tonic::{Code, Request, Status, Streaming};

const DEADLINE: Duration = Duration::from_secs(10);

type BoxError = Box<dyn std::error::Error + Send + Sync>;

type Core = SlotService<MemoryStore>;
type Client = AgentClient<InterceptedService<Channel, Bearer>>;

#[derive(Clone)]
struct Bearer(Option<String>);

impl Interceptor for Bearer {
    fn call(&mut self, mut request: Request<()>) -> Result<Request<()>, Status> {
        if let Some(token) = &self.0 {
            let value = MetadataValue::try_from(format!("Bearer {token}"))
                .map_err(|e| Status::internal(e.to_string()))?;
            request.metadata_mut().insert("authorization", value);
        }
        Ok(request)
    }
}

struct Harness {
    core: Arc<Core>,
    channel: Channel,
    stop: Option<oneshot::Sender<()>>,
    server: JoinHandle<Result<(), tonic::transport::Error>>,
}

impl Harness {
    async fn start() -> Result<Harness, BoxError> {
        let store = MemoryStore::with_nodes(["n1", "n2"]);
        let (core, _events) =
            SlotService::load(store, SlotServiceConfig::default(), Arc::new(SystemClock)).await?;
        let core = Arc::new(core);
        let auth = StaticAuthenticator::new([
            ("token-n1", "n1"),
            ("token-n2", "n2"),
            ("token-ghost", "ghost"),
        ]);
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let (stop, stopped) = oneshot::channel::<()>();
        let agent = AgentGrpc::new(core.clone(), auth);
        let server = tokio::spawn(serve(agent, TcpListenerStream::new(listener), async {
            let _ = stopped.await;
        }));
        let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))?
            .connect()
            .await?;
        Ok(Harness {
            core,
            channel,
            stop: Some(stop),
            server,
        })
    }

    fn client(&self, token: Option<&str>) -> Client {
        AgentClient::with_interceptor(self.channel.clone(), Bearer(token.map(str::to_owned)))
    }

    async fn shutdown(mut self) -> Result<(), BoxError> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        tokio::time::timeout(DEADLINE, self.server).await???;
        Ok(())
    }
}

fn reboot() -> Option<pb::Operation> {
    Some(pb::Operation {
        kind: Some(pb::operation::Kind::Reboot(pb::Reboot {})),
    })
}

fn kubelet_restart() -> Option<pb::Operation> {
    Some(pb::Operation {
        kind: Some(pb::operation::Kind::KubeletRestart(pb::KubeletRestart {})),
    })
}

fn request(node: &str, operation: Option<pb::Operation>) -> pb::RequestSlotRequest {
    pb::RequestSlotRequest {
        node: node.into(),
        operation,
    }
}

fn facts(node: &str, boot_id: &str) -> pb::ReportFactsRequest {
    pb::ReportFactsRequest {
        node: node.into(),
        facts: Some(pb::NodeFacts {
            boot_id: boot_id.into(),
            kernel_running: "6.1.0-13-amd64".into(),
            reboot_required: true,
            reboot_reasons: vec!["sentinel /var/run/reboot-required".into()],
            ..pb::NodeFacts::default()
        }),
    }
}

async fn next(stream: &mut Streaming<pb::SlotStatus>) -> Result<pb::SlotStatus, BoxError> {
    let status = tokio::time::timeout(DEADLINE, stream.message()).await??;
    status.ok_or_else(|| "the stream ended".into())
}

/// Reads the stream until a status in `phase` arrives (intermediate states may be coalesced).
async fn until_phase(
    stream: &mut Streaming<pb::SlotStatus>,
    phase: pb::SlotPhase,
) -> Result<pb::SlotStatus, BoxError> {
    loop {
        let status = next(stream).await?;
        if status.phase() == phase {
            return Ok(status);
        }
    }
}

#[tokio::test]
async fn a_slot_from_request_to_verified() {
    let h = Harness::start().await.unwrap();
    let mut n1 = h.client(Some("token-n1"));
    n1.report_facts(facts("n1", "boot-a")).await.unwrap();
    assert_eq!(h.core.facts("n1").unwrap().boot_id, "boot-a");

    let status = n1
        .request_slot(request("n1", reboot()))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(status.phase(), pb::SlotPhase::Queued);
    assert_eq!((status.token, status.queue_position), (0, 0));
    assert_eq!(status.operation, reboot());

    let mut watch = n1
        .watch_slot(pb::WatchSlotRequest { node: "n1".into() })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        next(&mut watch).await.unwrap().phase(),
        pb::SlotPhase::Queued
    );

    // The scheduler places it and says why it waits.
    h.core
        .set_waiting([(
            "n1".to_owned(),
            Waiting {
                position: NonZeroU32::new(2),
                reasons: vec!["maintenance window closed until 22:00".into()],
            },
        )])
        .await;
    let status = next(&mut watch).await.unwrap();
    assert_eq!(status.queue_position, 2);
    assert_eq!(
        status.waiting_reasons,
        ["maintenance window closed until 22:00"]
    );

    // Admission and drain (the controller's job) show on the stream with the token.
    let token = h.core.admit("n1", true).await.unwrap();
    h.core.drained("n1", token).await.unwrap();
    let granted = until_phase(&mut watch, pb::SlotPhase::Granted)
        .await
        .unwrap();
    assert_eq!(granted.token, token.0);
    assert_eq!(granted.lease_ttl_seconds, 90);
    assert_eq!(
        h.core
            .read(|l| l.slots().next().unwrap().boot_id_before.clone())
            .await
            .as_deref(),
        Some("boot-a")
    );

    let renewed = n1
        .renew(pb::RenewRequest {
            node: "n1".into(),
            token: token.0,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(renewed.lease_ttl_seconds, 90);
    n1.report_progress(pb::ReportProgressRequest {
        node: "n1".into(),
        token: token.0,
        step: "rebooting".into(),
        message: String::new(),
    })
    .await
    .unwrap();

    let complete = pb::CompleteRequest {
        node: "n1".into(),
        token: token.0,
        success: true,
        message: "rebooted".into(),
        boot_id: "boot-b".into(),
        rebooted: true,
        changed: vec![pb::PackagePin {
            name: "linux-image-amd64".into(),
            version: "6.1.0-20".into(),
        }],
    };
    let status = n1.complete(complete.clone()).await.unwrap().into_inner();
    assert_eq!(status.phase(), pb::SlotPhase::Verifying);
    // A retried Complete (lost answer) is harmless.
    assert_eq!(
        n1.complete(complete).await.unwrap().into_inner().phase(),
        pb::SlotPhase::Verifying
    );

    h.core.verified("n1", token).await.unwrap();
    let done = until_phase(&mut watch, pb::SlotPhase::Done).await.unwrap();
    assert_eq!(done.token, token.0);
    drop(watch);
    h.shutdown().await.unwrap();
}

#[tokio::test]
async fn requests_are_idempotent_per_node() {
    let h = Harness::start().await.unwrap();
    let mut n1 = h.client(Some("token-n1"));
    let first = n1
        .request_slot(request("n1", reboot()))
        .await
        .unwrap()
        .into_inner();
    let writes = h.core.store().writes();
    let again = n1
        .request_slot(request("n1", reboot()))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(first, again);
    assert_eq!(
        h.core.store().writes(),
        writes,
        "the same request again writes nothing"
    );

    let replaced = n1
        .request_slot(request("n1", kubelet_restart()))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        (replaced.phase(), replaced.operation),
        (pb::SlotPhase::Queued, kubelet_restart())
    );
    assert_eq!(h.core.read(|l| l.queue().count()).await, 1);

    // Once a slot is held, the same operation returns it; another one is refused.
    let token = h.core.admit("n1", true).await.unwrap();
    let held = n1
        .request_slot(request("n1", kubelet_restart()))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        (held.phase(), held.token),
        (pb::SlotPhase::Draining, token.0)
    );
    let err = n1.request_slot(request("n1", reboot())).await.unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition);
    assert!(err.message().contains("holds slot"), "{}", err.message());
    h.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_stale_token_is_refused_and_changes_nothing() {
    let h = Harness::start().await.unwrap();
    let mut n1 = h.client(Some("token-n1"));
    n1.request_slot(request("n1", reboot())).await.unwrap();
    let old = h.core.admit("n1", true).await.unwrap();
    h.core
        .requeue_after_drain_failure("n1", old, jiff::Timestamp::now(), "PDB shop/web")
        .await
        .unwrap();
    let token = h.core.admit("n1", true).await.unwrap();
    h.core.drained("n1", token).await.unwrap();

    let before = h.core.view("n1").await.unwrap();
    let writes = h.core.store().writes();
    let stale = [
        n1.renew(pb::RenewRequest {
            node: "n1".into(),
            token: old.0,
        })
        .await
        .map(|_| ()),
        n1.complete(pb::CompleteRequest {
            node: "n1".into(),
            token: old.0,
            success: true,
            ..Default::default()
        })
        .await
        .map(|_| ()),
        n1.release(pb::ReleaseRequest {
            node: "n1".into(),
            token: old.0,
            reason: String::new(),
        })
        .await
        .map(|_| ()),
        n1.renew(pb::RenewRequest {
            node: "n1".into(),
            token: token.0 + 1,
        })
        .await
        .map(|_| ()),
    ];
    for result in stale {
        let err = result.unwrap_err();
        assert_eq!(err.code(), Code::FailedPrecondition, "{err:?}");
        assert!(err.message().contains("stale"), "{}", err.message());
    }
    assert_eq!(h.core.view("n1").await.unwrap(), before);
    assert_eq!(h.core.store().writes(), writes);
    h.shutdown().await.unwrap();
}

#[tokio::test]
async fn identity_is_checked_before_anything_else() {
    let h = Harness::start().await.unwrap();
    // n1's agent acting for n2.
    let mut n1 = h.client(Some("token-n1"));
    let err = n1.request_slot(request("n2", reboot())).await.unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied);
    let err = n1
        .watch_slot(pb::WatchSlotRequest { node: "n2".into() })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied);
    assert_eq!(h.core.view("n2").await.unwrap().state, NodeState::Idle);

    // No credential, or one nobody issued.
    let err = h
        .client(None)
        .request_slot(request("n1", reboot()))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated);
    let err = h
        .client(Some("forged"))
        .request_slot(request("n1", reboot()))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated);

    // A caller whose node is not in the cluster.
    let mut ghost = h.client(Some("token-ghost"));
    let err = ghost
        .request_slot(request("ghost", reboot()))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
    let err = ghost.report_facts(facts("ghost", "b")).await.unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
    assert_eq!(h.core.store().writes(), 0);
    h.shutdown().await.unwrap();
}

#[tokio::test]
async fn malformed_requests_are_refused() {
    let h = Harness::start().await.unwrap();
    let mut n1 = h.client(Some("token-n1"));
    let cases: Vec<(&str, Result<(), Status>)> = vec![
        (
            "unset operation",
            n1.request_slot(request("n1", None)).await.map(|_| ()),
        ),
        (
            "empty operation",
            n1.request_slot(request("n1", Some(pb::Operation { kind: None })))
                .await
                .map(|_| ()),
        ),
        (
            "bad version",
            n1.request_slot(request(
                "n1",
                Some(pb::Operation {
                    kind: Some(pb::operation::Kind::KubernetesUpgrade(
                        pb::KubernetesUpgrade {
                            version: "latest".into(),
                            kubeadm: 0,
                        },
                    )),
                }),
            ))
            .await
            .map(|_| ()),
        ),
        (
            "missing token",
            n1.renew(pb::RenewRequest {
                node: "n1".into(),
                token: 0,
            })
            .await
            .map(|_| ()),
        ),
        (
            "missing facts",
            n1.report_facts(pb::ReportFactsRequest {
                node: "n1".into(),
                facts: None,
            })
            .await
            .map(|_| ()),
        ),
        (
            "missing boot id",
            n1.report_facts(facts("n1", "")).await.map(|_| ()),
        ),
        (
            "a reason that forges a log line and drives a terminal",
            n1.release(pb::ReleaseRequest {
                node: "n1".into(),
                token: 0,
                reason: "done\n2026-12-05T00:00:00Z INFO forged\u{1b}[2J".into(),
            })
            .await
            .map(|_| ()),
        ),
        (
            "a boot id with NUL and ESC",
            n1.report_facts(facts("n1", "boot\u{0}\u{1b}[31m"))
                .await
                .map(|_| ()),
        ),
        (
            "a progress step with a newline",
            n1.report_progress(pb::ReportProgressRequest {
                node: "n1".into(),
                token: 1,
                step: "rebooting\nDONE".into(),
                message: String::new(),
            })
            .await
            .map(|_| ()),
        ),
        (
            "long reason",
            n1.release(pb::ReleaseRequest {
                node: "n1".into(),
                token: 0,
                reason: "x".repeat(5000),
            })
            .await
            .map(|_| ()),
        ),
    ];
    for (what, result) in cases {
        let err = result.unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument, "{what}: {err:?}");
    }
    // A malformed node name is refused, also when it is not the caller's.
    let err = n1
        .request_slot(request("N1_bad", reboot()))
        .await
        .unwrap_err();
    assert!(
        matches!(err.code(), Code::InvalidArgument | Code::PermissionDenied),
        "{err:?}"
    );
    assert_eq!(
        h.core.store().writes(),
        0,
        "nothing was written for a malformed request"
    );
    h.shutdown().await.unwrap();
}

/// Bytes, sent and received as they are: a client that can send what no generated client would.
#[derive(Clone, Copy, Default)]
struct RawCodec;

struct RawBytes;

impl tonic::codec::Codec for RawCodec {
    type Encode = Vec<u8>;
    type Decode = Vec<u8>;
    type Encoder = RawBytes;
    type Decoder = RawBytes;

    fn encoder(&mut self) -> RawBytes {
        RawBytes
    }

    fn decoder(&mut self) -> RawBytes {
        RawBytes
    }
}

impl tonic::codec::Encoder for RawBytes {
    type Item = Vec<u8>;
    type Error = Status;

    fn encode(
        &mut self,
        item: Vec<u8>,
        buf: &mut tonic::codec::EncodeBuf<'_>,
    ) -> Result<(), Status> {
        bytes::BufMut::put_slice(buf, &item);
        Ok(())
    }
}

impl tonic::codec::Decoder for RawBytes {
    type Item = Vec<u8>;
    type Error = Status;

    fn decode(&mut self, buf: &mut tonic::codec::DecodeBuf<'_>) -> Result<Option<Vec<u8>>, Status> {
        let bytes = bytes::Buf::copy_to_bytes(buf, bytes::Buf::remaining(buf));
        Ok(Some(bytes.to_vec()))
    }
}

/// A body that is not a protobuf message is a malformed request (INVALID_ARGUMENT), not a fault
/// of the coordinator (INTERNAL), and changes nothing.
#[tokio::test]
async fn an_undecodable_request_is_invalid_argument() {
    let h = Harness::start().await.unwrap();
    let mut grpc = tonic::client::Grpc::new(h.channel.clone());
    // Field 1 (node) as a length-delimited string claiming 100 bytes, with 2 there.
    let garbage = vec![0x0a, 0x64, b'n', b'1'];
    for method in ["RequestSlot", "ReportFacts", "Release"] {
        grpc.ready().await.unwrap();
        let mut request = Request::new(garbage.clone());
        request.metadata_mut().insert(
            "authorization",
            MetadataValue::try_from("Bearer token-n1").unwrap(),
        );
        let path = format!("/rota.v1.Agent/{method}").parse().unwrap();
        let err = grpc
            .unary::<Vec<u8>, Vec<u8>, RawCodec>(request, path, RawCodec)
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument, "{method}: {err:?}");
        assert!(err.message().contains("malformed message"), "{err:?}");
    }
    assert_eq!(h.core.store().writes(), 0);
    h.shutdown().await.unwrap();
}

#[tokio::test]
async fn an_oversized_message_is_refused_before_parsing() {
    let h = Harness::start().await.unwrap();
    let mut n1 = h.client(Some("token-n1"));
    let mut big = facts("n1", "boot-a");
    if let Some(f) = big.facts.as_mut() {
        f.errors = vec!["e".repeat(1000); 2000];
    }
    let err = n1.report_facts(big).await.unwrap_err();
    assert_eq!(err.code(), Code::OutOfRange, "{err:?}");
    assert!(h.core.facts("n1").is_none());
    // The connection is still usable afterwards.
    n1.report_facts(facts("n1", "boot-a")).await.unwrap();
    h.shutdown().await.unwrap();
}

#[tokio::test]
async fn watch_streams_end_cleanly_on_shutdown_and_node_deletion() {
    let h = Harness::start().await.unwrap();
    let mut n1 = h.client(Some("token-n1"));
    let mut n2 = h.client(Some("token-n2"));
    let mut w1 = n1
        .watch_slot(pb::WatchSlotRequest { node: "n1".into() })
        .await
        .unwrap()
        .into_inner();
    let mut w2 = n2
        .watch_slot(pb::WatchSlotRequest { node: "n2".into() })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(next(&mut w1).await.unwrap().phase(), pb::SlotPhase::Idle);
    assert_eq!(next(&mut w2).await.unwrap().phase(), pb::SlotPhase::Idle);

    h.core.node_deleted("n2").await;
    let end = tokio::time::timeout(DEADLINE, w2.message())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        end, None,
        "the stream ends without an error when the node is deleted"
    );

    let Harness { stop, server, .. } = h;
    if let Some(stop) = stop {
        let _ = stop.send(());
    }
    let end = tokio::time::timeout(DEADLINE, w1.message())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(end, None, "the stream ends without an error on shutdown");
    tokio::time::timeout(DEADLINE, server)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
}

#[tokio::test]
async fn release_withdraws_a_request_or_gives_a_slot_back() {
    let h = Harness::start().await.unwrap();
    let mut n1 = h.client(Some("token-n1"));
    n1.request_slot(request("n1", reboot())).await.unwrap();
    n1.release(pb::ReleaseRequest {
        node: "n1".into(),
        token: 0,
        reason: "no longer required".into(),
    })
    .await
    .unwrap();
    assert_eq!(h.core.view("n1").await.unwrap().state, NodeState::Idle);

    n1.request_slot(request("n1", reboot())).await.unwrap();
    let token = h.core.admit("n1", true).await.unwrap();
    // Withdrawing needs a queued request; a held slot needs its token.
    let err = n1
        .release(pb::ReleaseRequest {
            node: "n1".into(),
            token: 0,
            reason: String::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition);
    // Progress before the grant is refused; after it, accepted.
    let progress = pb::ReportProgressRequest {
        node: "n1".into(),
        token: token.0,
        step: "upgrading".into(),
        message: String::new(),
    };
    let err = n1.report_progress(progress.clone()).await.unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition);
    h.core.drained("n1", token).await.unwrap();
    n1.report_progress(progress).await.unwrap();
    n1.release(pb::ReleaseRequest {
        node: "n1".into(),
        token: token.0,
        reason: "operation not needed any more".into(),
    })
    .await
    .unwrap();
    let view = h.core.view("n1").await.unwrap();
    assert_eq!(view.state, NodeState::Idle);
    assert!(
        view.message.contains("operation not needed"),
        "{}",
        view.message
    );
    assert_eq!(h.core.read(|l| l.slots().count()).await, 0);
    h.shutdown().await.unwrap();
}

/// The pool's policy reaches the agent: with every `ReportFacts` answer, and with a grant the
/// policy in force at the grant, even when the pool's policy changes while the slot is held.
#[tokio::test]
async fn the_nodes_policy_comes_with_facts_answers_and_grants() {
    use rota_core::model::NodePolicy;
    use rota_core::policy::crd::{RebootMode, UpgradeMode};
    use std::collections::HashMap;

    let h = Harness::start().await.unwrap();
    let mut n1 = h.client(Some("token-n1"));
    let answer = n1.report_facts(facts("n1", "boot-a")).await.unwrap();
    assert_eq!(answer.into_inner().policy, None, "no pool selects n1 yet");

    let at_grant = NodePolicy {
        name: "workers".into(),
        upgrade_mode: UpgradeMode::None,
        holds: vec!["openssl".into()],
        sentinel_files: Some(vec!["/run/needs-reboot".into()]),
        sentinel_command: vec![],
        reboot_command: vec!["/usr/local/sbin/reboot-now".into()],
        reboot_mode: RebootMode::Never,
        etcd: Default::default(),
    };
    let policies = HashMap::from([("n1".to_owned(), Arc::new(at_grant.clone()))]);
    h.core.set_policies(&policies).await;
    let answer = n1.report_facts(facts("n1", "boot-a")).await.unwrap();
    assert_eq!(
        answer.into_inner().policy,
        Some(pb::NodePolicy::from(&at_grant))
    );

    n1.request_slot(request("n1", reboot())).await.unwrap();
    let mut watch = n1
        .watch_slot(pb::WatchSlotRequest { node: "n1".into() })
        .await
        .unwrap()
        .into_inner();
    let token = h.core.admit("n1", true).await.unwrap();
    h.core.drained("n1", token).await.unwrap();
    let granted = until_phase(&mut watch, pb::SlotPhase::Granted)
        .await
        .unwrap();
    let policy = rota_proto::convert::node_policy("policy", granted.policy.unwrap()).unwrap();
    assert_eq!(policy, at_grant);

    // The pool's policy changes while the slot is held: facts answers follow it, the grant keeps
    // the one it was made under.
    let changed = NodePolicy {
        upgrade_mode: UpgradeMode::All,
        reboot_mode: RebootMode::WhenRequired,
        ..at_grant.clone()
    };
    let policies = HashMap::from([("n1".to_owned(), Arc::new(changed.clone()))]);
    h.core.set_policies(&policies).await;
    let answer = n1.report_facts(facts("n1", "boot-a")).await.unwrap();
    assert_eq!(
        answer.into_inner().policy,
        Some(pb::NodePolicy::from(&changed))
    );
    let view = h.core.view("n1").await.unwrap();
    assert_eq!(view.state, NodeState::Granted);
    assert_eq!(view.policy, Some(at_grant));

    // A node no pool selects any more gets none.
    h.core.set_policies(&HashMap::new()).await;
    let answer = n1.report_facts(facts("n1", "boot-a")).await.unwrap();
    assert_eq!(answer.into_inner().policy, None);
    h.shutdown().await.unwrap();
}
