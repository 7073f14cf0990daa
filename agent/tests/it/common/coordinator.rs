//! A fake coordinator for `rota-agent run`: a tonic server on a loopback port in the test's
//! process that records what the agent says, answers facts reports with a scripted policy, and
//! grants requests at once (with that policy) unless told to keep them queued. And the agent
//! daemon itself, started against it.

use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use rota_agent::daemon::{self, DaemonConfig, TokenAuth};
use rota_agent::host::Host;
use rota_proto::v1 as pb;
use rota_proto::v1::agent_server::{Agent, AgentServer};
use tokio::sync::{Notify, watch};
use tokio_stream::Stream;
use tonic::{Request, Response, Status};

/// Everything the agent said.
#[derive(Default)]
pub struct Seen {
    pub facts: Vec<pb::NodeFacts>,
    pub requests: Vec<pb::Operation>,
    pub progress: Vec<String>,
    pub progress_messages: Vec<String>,
    pub completes: Vec<pb::CompleteRequest>,
    pub releases: Vec<pb::ReleaseRequest>,
    pub tokens: Vec<String>,
}

/// How the fake answers.
#[derive(Clone, Debug)]
pub struct Script {
    /// The node's policy: in every facts answer and with every grant.
    pub policy: Option<pb::NodePolicy>,
    /// Grant requests at once (else they stay queued).
    pub grant_requests: bool,
    /// The token of grants.
    pub token: u64,
    /// Grant this operation instead of the requested one (as when a human's request replaced
    /// the agent's).
    pub grant: Option<pb::Operation>,
    /// The health gate fails the slot after a completion (VERIFYING, then FAILED on the
    /// watch) rather than releasing it (DONE).
    pub gate_fails: bool,
}

impl Default for Script {
    fn default() -> Self {
        Script {
            policy: None,
            grant_requests: true,
            token: 7,
            grant: None,
            gate_fails: false,
        }
    }
}

struct Service {
    seen: Arc<Mutex<Seen>>,
    slot: watch::Sender<pb::SlotStatus>,
    completed: Arc<Notify>,
    script: Script,
}

impl Service {
    fn record(&self, meta: &tonic::metadata::MetadataMap, f: impl FnOnce(&mut Seen)) {
        let token = meta
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string();
        let mut seen = self.seen.lock().unwrap();
        seen.tokens.push(token);
        f(&mut seen);
    }
}

#[tonic::async_trait]
impl Agent for Service {
    async fn report_facts(
        &self,
        req: Request<pb::ReportFactsRequest>,
    ) -> Result<Response<pb::ReportFactsResponse>, Status> {
        let (meta, _, req) = req.into_parts();
        self.record(&meta, |s| s.facts.push(req.facts.unwrap_or_default()));
        Ok(Response::new(pb::ReportFactsResponse {
            policy: self.script.policy.clone(),
        }))
    }

    async fn request_slot(
        &self,
        req: Request<pb::RequestSlotRequest>,
    ) -> Result<Response<pb::SlotStatus>, Status> {
        let (meta, _, req) = req.into_parts();
        let op = req.operation.clone().unwrap_or_default();
        self.record(&meta, |s| s.requests.push(op.clone()));
        let status = if self.script.grant_requests {
            pb::SlotStatus {
                node: req.node,
                phase: pb::SlotPhase::Granted as i32,
                operation: Some(self.script.grant.clone().unwrap_or(op)),
                token: self.script.token,
                lease_ttl_seconds: 30,
                policy: self.script.policy.clone(),
                ..Default::default()
            }
        } else {
            pb::SlotStatus {
                node: req.node,
                phase: pb::SlotPhase::Queued as i32,
                operation: Some(op),
                policy: self.script.policy.clone(),
                ..Default::default()
            }
        };
        self.slot.send_replace(status.clone());
        Ok(Response::new(status))
    }

    type WatchSlotStream = Pin<Box<dyn Stream<Item = Result<pb::SlotStatus, Status>> + Send>>;

    async fn watch_slot(
        &self,
        req: Request<pb::WatchSlotRequest>,
    ) -> Result<Response<Self::WatchSlotStream>, Status> {
        self.record(req.metadata(), |_| {});
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
        let mut seen = self.seen.lock().unwrap();
        seen.progress.push(r.step);
        seen.progress_messages.push(r.message);
        Ok(Response::new(pb::ReportProgressResponse {}))
    }

    async fn complete(
        &self,
        req: Request<pb::CompleteRequest>,
    ) -> Result<Response<pb::SlotStatus>, Status> {
        let r = req.into_inner();
        let status = |phase: pb::SlotPhase| pb::SlotStatus {
            node: r.node.clone(),
            phase: phase as i32,
            token: r.token,
            ..Default::default()
        };
        let (answer, then) = if self.script.gate_fails {
            (
                status(pb::SlotPhase::Verifying),
                status(pb::SlotPhase::Failed),
            )
        } else {
            (status(pb::SlotPhase::Done), status(pb::SlotPhase::Done))
        };
        self.seen.lock().unwrap().completes.push(r);
        self.slot.send_replace(then);
        self.completed.notify_one();
        Ok(Response::new(answer))
    }

    async fn release(
        &self,
        req: Request<pb::ReleaseRequest>,
    ) -> Result<Response<pb::ReleaseResponse>, Status> {
        let r = req.into_inner();
        let idle = pb::SlotStatus {
            node: r.node.clone(),
            phase: pb::SlotPhase::Idle as i32,
            ..Default::default()
        };
        self.seen.lock().unwrap().releases.push(r);
        self.slot.send_replace(idle);
        Ok(Response::new(pb::ReleaseResponse {}))
    }
}

/// A running fake coordinator.
pub struct FakeCoordinator {
    pub url: String,
    seen: Arc<Mutex<Seen>>,
    slot: watch::Sender<pb::SlotStatus>,
    pub completed: Arc<Notify>,
}

impl FakeCoordinator {
    /// Serves `node` on a loopback port, answering as `script` says.
    pub async fn start(node: &str, script: Script) -> FakeCoordinator {
        let seen = Arc::new(Mutex::new(Seen::default()));
        let completed = Arc::new(Notify::new());
        let (slot, _) = watch::channel(pb::SlotStatus {
            node: node.into(),
            phase: pb::SlotPhase::Idle as i32,
            policy: script.policy.clone(),
            ..Default::default()
        });
        let service = Service {
            seen: seen.clone(),
            slot: slot.clone(),
            completed: completed.clone(),
            script,
        };
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(AgentServer::new(service))
                .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
        );
        FakeCoordinator {
            url,
            seen,
            slot,
            completed,
        }
    }

    /// What the agent said so far.
    pub fn seen(&self) -> MutexGuard<'_, Seen> {
        self.seen.lock().unwrap()
    }

    /// Shows the agent this status (e.g. a grant the agent did not ask for: a human's).
    pub fn push(&self, status: pb::SlotStatus) {
        self.slot.send_replace(status);
    }

    /// Waits until what the agent said satisfies `done`; panics with `what` after `within`.
    pub async fn wait(&self, what: &str, within: Duration, done: impl Fn(&Seen) -> bool) {
        let deadline = tokio::time::Instant::now() + within;
        while !done(&self.seen()) {
            assert!(
                tokio::time::Instant::now() < deadline,
                "not within {within:?}: {what}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Starts `rota-agent run`'s daemon on `host` against this coordinator.
    pub fn run_agent(
        &self,
        host: Arc<dyn Host>,
        cfg: DaemonConfig,
        auth: TokenAuth,
    ) -> RunningAgent {
        let plaintext = rota_agent::tls::TlsArgs {
            insecure_plaintext: true,
            ..Default::default()
        };
        let client = daemon::client(&self.url, &plaintext, auth).unwrap();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(daemon::run(cfg, host, client, async move {
            let _ = stopped.await;
        }));
        RunningAgent { stop, task }
    }
}

impl FakeCoordinator {
    /// Runs the daemon on `host` until this coordinator got a completion and the agent cleared
    /// its state (the executor does right after the coordinator took the completion).
    pub async fn run_until_complete(
        &self,
        host: Arc<dyn Host>,
        cfg: DaemonConfig,
        auth: TokenAuth,
    ) {
        let state_path = cfg.exec.state_path.clone();
        let agent = self.run_agent(host.clone(), cfg, auth);
        tokio::time::timeout(Duration::from_secs(60), self.completed.notified())
            .await
            .expect("no completion within 60 s");
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while host.exists(&state_path).unwrap() {
            assert!(
                tokio::time::Instant::now() < deadline,
                "state not cleared within 10 s"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        agent.stop().await;
    }
}

/// A running agent daemon.
pub struct RunningAgent {
    stop: tokio::sync::oneshot::Sender<()>,
    task: tokio::task::JoinHandle<rota_agent::Result<()>>,
}

impl RunningAgent {
    /// Stops it; it must end cleanly.
    pub async fn stop(self) {
        self.stop.send(()).unwrap();
        self.task.await.unwrap().unwrap();
    }
}
