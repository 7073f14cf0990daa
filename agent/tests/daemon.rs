//! `rota-agent run` against a fake coordinator: a tonic server on a loopback port in this
//! process that grants every request at once and records what the agent says. The node is an
//! in-memory host.

#![allow(clippy::unwrap_used, clippy::expect_used)]
use rota_core::model::Operation;

use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rota_agent::daemon::{self, DaemonConfig, TokenAuth, machine::UpgradePolicy};
use rota_agent::detect::DetectConfig;
use rota_agent::host::memory::exited;
use rota_agent::host::{Host, MemoryHost};
use rota_agent::ops::{ExecutorConfig, OperationRecord, Outcome};
use rota_agent::state;
use rota_proto::v1 as pb;
use rota_proto::v1::agent_server::{Agent, AgentServer};
use tokio::sync::{Notify, watch};
use tokio_stream::Stream;
use tonic::{Request, Response, Status};

#[derive(Default)]
struct Seen {
    facts: Vec<pb::NodeFacts>,
    requests: Vec<pb::Operation>,
    progress: Vec<String>,
    completes: Vec<pb::CompleteRequest>,
    tokens: Vec<String>,
}

struct FakeCoordinator {
    seen: Arc<Mutex<Seen>>,
    slot: watch::Sender<pb::SlotStatus>,
    completed: Arc<Notify>,
    next_token: u64,
}

impl FakeCoordinator {
    fn auth(&self, meta: &tonic::metadata::MetadataMap) {
        let token = meta
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string();
        self.seen.lock().unwrap().tokens.push(token);
    }
}

#[tonic::async_trait]
impl Agent for FakeCoordinator {
    async fn report_facts(
        &self,
        req: Request<pb::ReportFactsRequest>,
    ) -> Result<Response<pb::ReportFactsResponse>, Status> {
        self.auth(req.metadata());
        let facts = req.into_inner().facts.unwrap_or_default();
        self.seen.lock().unwrap().facts.push(facts);
        Ok(Response::new(pb::ReportFactsResponse::default()))
    }

    async fn request_slot(
        &self,
        req: Request<pb::RequestSlotRequest>,
    ) -> Result<Response<pb::SlotStatus>, Status> {
        self.auth(req.metadata());
        let req = req.into_inner();
        let op = req.operation.clone().unwrap_or_default();
        self.seen.lock().unwrap().requests.push(op.clone());
        let granted = pb::SlotStatus {
            node: req.node,
            phase: pb::SlotPhase::Granted as i32,
            operation: Some(op),
            token: self.next_token,
            lease_ttl_seconds: 30,
            ..Default::default()
        };
        self.slot.send_replace(granted.clone());
        Ok(Response::new(granted))
    }

    type WatchSlotStream = Pin<Box<dyn Stream<Item = Result<pb::SlotStatus, Status>> + Send>>;

    async fn watch_slot(
        &self,
        req: Request<pb::WatchSlotRequest>,
    ) -> Result<Response<Self::WatchSlotStream>, Status> {
        self.auth(req.metadata());
        let stream = tokio_stream::StreamExt::map(
            tokio_stream::wrappers::WatchStream::new(self.slot.subscribe()),
            Ok,
        );
        Ok(Response::new(Box::pin(stream)))
    }

    async fn renew(
        &self,
        _req: Request<pb::RenewRequest>,
    ) -> Result<Response<pb::RenewResponse>, Status> {
        Ok(Response::new(pb::RenewResponse {
            lease_ttl_seconds: 30,
        }))
    }

    async fn report_progress(
        &self,
        req: Request<pb::ReportProgressRequest>,
    ) -> Result<Response<pb::ReportProgressResponse>, Status> {
        let r = req.into_inner();
        self.seen.lock().unwrap().progress.push(r.step);
        Ok(Response::new(pb::ReportProgressResponse {}))
    }

    async fn complete(
        &self,
        req: Request<pb::CompleteRequest>,
    ) -> Result<Response<pb::SlotStatus>, Status> {
        let r = req.into_inner();
        let done = pb::SlotStatus {
            node: r.node.clone(),
            phase: pb::SlotPhase::Done as i32,
            ..Default::default()
        };
        self.seen.lock().unwrap().completes.push(r);
        self.slot.send_replace(done.clone());
        self.completed.notify_one();
        Ok(Response::new(done))
    }

    async fn release(
        &self,
        _req: Request<pb::ReleaseRequest>,
    ) -> Result<Response<pb::ReleaseResponse>, Status> {
        Ok(Response::new(pb::ReleaseResponse {}))
    }
}

struct Harness {
    seen: Arc<Mutex<Seen>>,
    completed: Arc<Notify>,
    url: String,
}

async fn start_coordinator(token: u64) -> Harness {
    let seen = Arc::new(Mutex::new(Seen::default()));
    let completed = Arc::new(Notify::new());
    let (slot, _) = watch::channel(pb::SlotStatus {
        node: "node-a".into(),
        phase: pb::SlotPhase::Idle as i32,
        ..Default::default()
    });
    let fake = FakeCoordinator {
        seen: seen.clone(),
        slot,
        completed: completed.clone(),
        next_token: token,
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(AgentServer::new(fake))
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
    );
    Harness {
        seen,
        completed,
        url,
    }
}

fn config(policy: UpgradePolicy) -> DaemonConfig {
    DaemonConfig {
        node: "node-a".into(),
        upgrade: policy,
        detect: DetectConfig::default(),
        exec: ExecutorConfig {
            health_command: vec!["health".into()],
            shutdown_wait: Duration::ZERO,
            ..ExecutorConfig::default()
        },
        refresh_interval: Duration::from_secs(3600),
        retry_interval: Duration::from_millis(100),
    }
}

fn node() -> MemoryHost {
    let host = MemoryHost::debian();
    host.install("curl", "7.88.1-10");
    host.add_available("curl", "7.88.1-10", false);
    host.add_available("curl", "7.88.1-10+deb12u5", true);
    host.on_command("health", |_| Ok(exited(0, "")));
    host
}

/// Runs the daemon until the fake coordinator got a completion (or a deadline passes).
async fn run_until_complete(
    host: MemoryHost,
    harness: &Harness,
    cfg: DaemonConfig,
    auth: TokenAuth,
) {
    let plaintext = rota_agent::tls::TlsArgs {
        insecure_plaintext: true,
        ..Default::default()
    };
    let client = daemon::client(&harness.url, &plaintext, auth).unwrap();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let shared: Arc<dyn Host> = Arc::new(host.clone());
    let agent = tokio::spawn(daemon::run(cfg, shared, client, async move {
        let _ = stop_rx.await;
    }));
    tokio::time::timeout(Duration::from_secs(30), harness.completed.notified())
        .await
        .expect("no completion within 30 s");
    // The executor removes its state right after the coordinator took the completion.
    let state_path = std::path::Path::new(state::DEFAULT_STATE_PATH);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while host.exists(state_path).unwrap() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "state not cleared within 10 s"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    stop_tx.send(()).unwrap();
    agent.await.unwrap().unwrap();
}

#[tokio::test]
async fn a_security_upgrade_is_requested_granted_performed_and_completed() {
    let harness = start_coordinator(7).await;
    let token_file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(token_file.path(), "t0ken\n").unwrap();
    let host = node();
    run_until_complete(
        host.clone(),
        &harness,
        config(UpgradePolicy::Security),
        TokenAuth {
            token_file: Some(token_file.path().to_path_buf()),
        },
    )
    .await;
    let seen = harness.seen.lock().unwrap();
    let facts = &seen.facts[0];
    assert_eq!(facts.boot_id, "boot-1");
    assert_eq!(facts.pending_upgrades.len(), 1);
    assert!(facts.pending_upgrades[0].security);
    let expected = pb::Operation::from(&Operation::PackageUpgrade {
        security_only: true,
        reboot_if_required: true,
        packages: vec![],
    });
    // The watch may deliver the initial IDLE after the request went out; the agent then asks
    // again, which the protocol makes idempotent. Never for anything else, never started twice.
    assert!(!seen.requests.is_empty());
    assert!(
        seen.requests.iter().all(|r| r == &expected),
        "{:?}",
        seen.requests
    );
    assert_eq!(seen.completes.len(), 1);
    let done = &seen.completes[0];
    assert!(done.success, "{done:?}");
    assert_eq!(done.token, 7);
    assert!(!done.rebooted);
    assert_eq!(done.changed.len(), 1);
    assert_eq!(done.changed[0].version, "7.88.1-10+deb12u5");
    assert!(
        seen.progress.contains(&"completing".to_string()),
        "{:?}",
        seen.progress
    );
    assert!(
        seen.tokens.iter().all(|t| t == "Bearer t0ken"),
        "{:?}",
        seen.tokens
    );
    assert_eq!(host.installed("curl").unwrap(), "7.88.1-10+deb12u5");
    assert!(
        !host
            .exists(std::path::Path::new(state::DEFAULT_STATE_PATH))
            .unwrap()
    );
}

#[tokio::test]
async fn after_a_reboot_the_agent_resumes_and_completes_with_the_persisted_token() {
    let harness = start_coordinator(99).await;
    let host = node();
    // The previous boot persisted a reboot in flight under token 5.
    let mut record = OperationRecord::new(
        5,
        Operation::Reboot,
        "boot-0".into(),
        jiff::Timestamp::UNIX_EPOCH,
    );
    record.on(Outcome::Done);
    state::save(
        &host,
        std::path::Path::new(state::DEFAULT_STATE_PATH),
        &record,
    )
    .unwrap();
    run_until_complete(
        host.clone(),
        &harness,
        config(UpgradePolicy::None),
        TokenAuth::default(),
    )
    .await;
    let seen = harness.seen.lock().unwrap();
    assert_eq!(seen.completes.len(), 1);
    let done = &seen.completes[0];
    assert_eq!(done.token, 5);
    assert!(done.success && done.rebooted, "{done:?}");
    assert_eq!(done.boot_id, "boot-1");
    assert_eq!(host.reboot_requests(), 0, "no second reboot");
    assert!(seen.requests.is_empty(), "{:?}", seen.requests);
}
