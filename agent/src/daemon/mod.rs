//! `rota-agent run`: the daemon. It reports the node's facts to the coordinator, asks for a
//! slot when the node needs something, follows the slot on `WatchSlot`, performs the granted
//! operation with its fencing token (renewing the lease meanwhile), and reports completion —
//! after a reboot, from the new boot.
//!
//! Event-driven: detection runs at start, when a sentinel file appears or disappears
//! (inotify on its directory), after an operation, when the pool's policy changes what it looks
//! at, and on the package-refresh timer; nothing polls. The pool's policy comes with every
//! answer to a facts report and with the grant; the agent's flags are only defaults under it
//! ([`crate::settings`]). The decisions are in [`machine`]; this module only performs them.

pub mod machine;
pub mod proto;
mod watch;
use rota_core::model::{NodeFacts, NodePolicy, Operation};

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use rota_core::text::printable_within;
use rota_proto::convert::MAX_TEXT_BYTES;
use rota_proto::v1 as pb;
use rota_proto::v1::agent_client::AgentClient;
use tokio::sync::mpsc;
use tonic::service::Interceptor;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;

use crate::detect::{self, DetectConfig};
use crate::host::Host;
use crate::kubernetes::etcd;
use crate::ops::{CompleteAck, Completion, Executor, ExecutorConfig, Reporter};
use crate::settings::Own;
use crate::tls::{self, TlsArgs};
use crate::{Error, Result, state};
use machine::{Action, Daemon, Input, UpgradePolicy};
use proto::SlotView;
use tracing::Instrument;
use watch::SentinelWatch;

/// What the daemon needs besides its host and client.
#[derive(Clone, Debug)]
pub struct DaemonConfig {
    /// The node's name.
    pub node: String,
    /// Which upgrades to ask for (the pool's policy overrides it).
    pub upgrade: UpgradePolicy,
    /// Detection (the pool's policy overrides the sentinels and adds holds).
    pub detect: DetectConfig,
    /// Execution (the pool's policy overrides the reboot method).
    pub exec: ExecutorConfig,
    /// Interval of package list refreshes.
    pub refresh_interval: Duration,
    /// Back-off before reconnecting a broken watch or retrying a failed completion.
    pub retry_interval: Duration,
}

impl DaemonConfig {
    /// The agent's own values of what the pool's policy overrides.
    pub fn own(&self) -> Own {
        Own {
            upgrade: self.upgrade,
            sentinel_files: self.detect.sentinel_files.clone(),
            sentinel_command: self.detect.sentinel_command.clone(),
            reboot_method: self.exec.reboot_method.clone(),
        }
    }
}

/// Adds the agent's bearer token to every call.
#[derive(Clone, Debug, Default)]
pub struct TokenAuth {
    /// File holding the token; `None` sends no token (tests, plain-text development setups).
    pub token_file: Option<PathBuf>,
}

impl Interceptor for TokenAuth {
    fn call(&mut self, mut req: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        let Some(path) = &self.token_file else {
            return Ok(req);
        };
        let token = std::fs::read_to_string(path).map_err(|e| {
            tonic::Status::unauthenticated(format!("cannot read {}: {e}", path.display()))
        })?;
        let value = format!("Bearer {}", token.trim())
            .parse()
            .map_err(|_| tonic::Status::unauthenticated("token is not a valid header value"))?;
        req.metadata_mut().insert("authorization", value);
        Ok(req)
    }
}

/// The coordinator client the daemon uses.
pub type Client = AgentClient<InterceptedService<Channel, TokenAuth>>;

/// A client for `url` that connects lazily (the agent starts even while the coordinator is
/// down). TLS as [`tls::channel`] decides: `http://` is refused without
/// `--insecure-plaintext`, and the CA bundle is read again for every new connection.
pub fn client(url: &str, tls: &TlsArgs, auth: TokenAuth) -> Result<Client> {
    Ok(AgentClient::with_interceptor(tls::channel(url, tls)?, auth))
}

/// What the daemon's tasks tell its loop.
#[derive(Clone)]
enum Event {
    Detect {
        refresh: bool,
    },
    Facts(Box<NodeFacts>),
    Slot(SlotView),
    OperationEnded(u64),
    AwaitingVerdict(u64),
    ResendFacts,
    /// A facts report failed (the coordinator does not lead yet, or cannot be reached).
    FactsNotReported,
    /// Report the facts again after a failed report.
    RetryFacts,
    RequestFailed,
    Policy(Option<NodePolicy>),
    SnapshotEnded {
        ok: bool,
        snapshot: Option<rota_core::model::EtcdSnapshot>,
    },
    SnapshotRetry,
}

/// How often the facts are sent again even when unchanged (the protocol's 30 s).
const FACTS_RESEND_INTERVAL: Duration = Duration::from_secs(30);

/// Runs the daemon against `client` until `shutdown` completes. An operation in flight at
/// shutdown is resumed from the persisted state at the next start.
pub async fn run(
    config: DaemonConfig,
    host: Arc<dyn Host>,
    client: Client,
    shutdown: impl std::future::Future<Output = ()>,
) -> Result<()> {
    let config = Arc::new(config);
    let (tx, mut rx) = mpsc::channel::<Event>(64);
    let resumed = {
        let host = host.clone();
        let path = config.exec.state_path.clone();
        tokio::task::spawn_blocking(move || state::load(host.as_ref(), &path))
            .await
            .map_err(|e| Error::State {
                path: config.exec.state_path.clone(),
                detail: e.to_string(),
            })??
    };
    let mut daemon = Daemon::new(config.own(), resumed.as_ref().map(|r| r.token));
    let mut tasks = tokio::task::JoinSet::new();
    let lease_ttl = Arc::new(std::sync::atomic::AtomicU32::new(60));
    if let Some(record) = resumed {
        tracing::info!(token = record.token, phase = ?record.phase, "resuming the persisted operation");
        spawn_operation(
            &mut tasks,
            &config,
            &host,
            &client,
            &tx,
            &lease_ttl,
            record.token,
            Run::Resume,
        );
    }
    tasks.spawn(watch_slot(config.clone(), client.clone(), tx.clone()));
    let mut _sentinel_watch = SentinelWatch::start(
        host.clone(),
        config.detect.sentinel_files.clone(),
        tx.clone(),
    )?;
    tasks.spawn(refresh_timer(
        config.refresh_interval,
        tx.clone(),
        Event::Detect { refresh: true },
    ));
    tasks.spawn(refresh_timer(
        FACTS_RESEND_INTERVAL,
        tx.clone(),
        Event::ResendFacts,
    ));
    let _ = tx.send(Event::Detect { refresh: false }).await;

    let mut detecting = false;
    let mut detect_again: Option<bool> = None;
    // A failed facts report is retried after the retry interval, not only at the next
    // periodic resend: until its first report is answered the agent knows no policy and asks
    // for nothing. One retry is pending at a time.
    let mut facts_retry_pending = false;
    tokio::pin!(shutdown);
    loop {
        let event = tokio::select! {
            _ = &mut shutdown => break,
            event = rx.recv() => event,
        };
        let Some(event) = event else { break };
        let input = match event {
            Event::Detect { refresh } => {
                if detecting {
                    let pending = detect_again.unwrap_or(false);
                    detect_again = Some(pending || refresh);
                } else {
                    detecting = true;
                    spawn_detect(&host, daemon.detect_config(&config.detect), refresh, &tx);
                }
                continue;
            }
            Event::Facts(facts) => {
                detecting = false;
                if let Some(refresh) = detect_again.take() {
                    detecting = true;
                    spawn_detect(&host, daemon.detect_config(&config.detect), refresh, &tx);
                }
                Input::Facts(facts)
            }
            Event::Slot(slot) => {
                if slot.lease_ttl_seconds > 0 {
                    lease_ttl.store(slot.lease_ttl_seconds, std::sync::atomic::Ordering::Relaxed);
                }
                Input::Slot(slot)
            }
            Event::OperationEnded(token) => {
                let _ = tx.try_send(Event::Detect { refresh: false });
                Input::OperationEnded(token)
            }
            Event::AwaitingVerdict(token) => Input::AwaitingVerdict(token),
            Event::ResendFacts => Input::ResendFacts,
            Event::FactsNotReported => {
                if !facts_retry_pending {
                    facts_retry_pending = true;
                    let (tx, retry) = (tx.clone(), config.retry_interval);
                    tasks.spawn(async move {
                        tokio::time::sleep(retry).await;
                        let _ = tx.send(Event::RetryFacts).await;
                    });
                }
                continue;
            }
            Event::RetryFacts => {
                facts_retry_pending = false;
                Input::ResendFacts
            }
            Event::RequestFailed => Input::RequestFailed,
            Event::Policy(policy) => Input::Policy(policy),
            Event::SnapshotEnded { ok, snapshot } => {
                if !ok {
                    let (tx, retry) = (tx.clone(), config.retry_interval);
                    tasks.spawn(async move {
                        tokio::time::sleep(retry).await;
                        let _ = tx.send(Event::SnapshotRetry).await;
                    });
                }
                Input::SnapshotEnded { ok, snapshot }
            }
            Event::SnapshotRetry => Input::SnapshotRetry,
        };
        for action in daemon.on(input) {
            match action {
                Action::WatchSentinels(files) => {
                    tracing::info!(?files, "watching the policy's sentinel files");
                    _sentinel_watch = SentinelWatch::start(host.clone(), files, tx.clone())?;
                }
                action => {
                    perform(action, &mut tasks, &config, &host, &client, &tx, &lease_ttl).await;
                }
            }
        }
    }
    tasks.abort_all();
    Ok(())
}

fn spawn_detect(
    host: &Arc<dyn Host>,
    mut detect: DetectConfig,
    refresh: bool,
    tx: &mpsc::Sender<Event>,
) {
    let host = host.clone();
    detect.refresh = refresh;
    let tx = tx.clone();
    tokio::task::spawn_blocking(move || {
        let facts = detect::detect(host.as_ref(), &detect);
        if !facts.errors.is_empty() {
            tracing::warn!(errors = ?facts.errors, "detection errors");
        }
        let _ = tx.blocking_send(Event::Facts(Box::new(facts)));
    });
}

#[allow(clippy::too_many_arguments)]
async fn perform(
    action: Action,
    tasks: &mut tokio::task::JoinSet<()>,
    config: &Arc<DaemonConfig>,
    host: &Arc<dyn Host>,
    client: &Client,
    tx: &mpsc::Sender<Event>,
    lease_ttl: &Arc<std::sync::atomic::AtomicU32>,
) {
    let mut c = client.clone();
    let node = config.node.clone();
    match action {
        Action::ReportFacts(facts) => {
            let req = pb::ReportFactsRequest {
                node,
                facts: Some(pb::NodeFacts::from(facts.as_ref())),
            };
            match c.report_facts(req).await {
                Ok(resp) => {
                    let policy = resp
                        .into_inner()
                        .policy
                        .map(|p| rota_proto::convert::node_policy("policy", p))
                        .transpose();
                    match policy {
                        Ok(policy) => {
                            let _ = tx.send(Event::Policy(policy)).await;
                        }
                        Err(e) => tracing::warn!(
                            error = %e,
                            "the coordinator sent an invalid policy; keeping the previous one"
                        ),
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, "reporting facts failed; retrying");
                    let _ = tx.try_send(Event::FactsNotReported);
                }
            }
        }
        Action::RequestSlot(op) => {
            tracing::info!(operation = op.name(), "requesting a slot");
            let req = pb::RequestSlotRequest {
                node,
                operation: Some(pb::Operation::from(&op)),
            };
            match c.request_slot(req).await {
                Ok(resp) => match SlotView::try_from(resp.get_ref()) {
                    Ok(slot) => {
                        let _ = tx.send(Event::Slot(slot)).await;
                    }
                    Err(e) => tracing::warn!(error = %e, "invalid slot status"),
                },
                Err(e) => {
                    tracing::warn!(error = %e, "requesting a slot failed; retrying with the next facts report");
                    let _ = tx.send(Event::RequestFailed).await;
                }
            }
        }
        Action::Withdraw => {
            let req = pb::ReleaseRequest {
                node,
                token: 0,
                reason: "no longer needed".into(),
            };
            if let Err(e) = c.release(req).await {
                tracing::warn!(error = %e, "withdrawing the request failed");
            }
        }
        Action::Start { .. } | Action::RollBack { .. } => {
            let (token, run) = match action {
                Action::Start {
                    token,
                    operation,
                    policy,
                } => {
                    tracing::info!(
                        token,
                        operation = operation.name(),
                        policy = policy.as_ref().map(|p| p.name.as_str()),
                        "slot granted; starting"
                    );
                    (token, Run::Start(operation, policy))
                }
                Action::RollBack { token } => {
                    tracing::warn!(
                        token,
                        "the coordinator's health gate failed the slot after completion; rolling the packages back"
                    );
                    (token, Run::RollBack)
                }
                _ => return,
            };
            spawn_operation(tasks, config, host, client, tx, lease_ttl, token, run);
        }
        Action::AcceptVerdict { token } => {
            let (host, config) = (host.clone(), config.clone());
            let forgotten = tokio::task::spawn_blocking(move || {
                Executor::accept_verdict(host.as_ref(), &config.exec, token)
            })
            .await;
            match forgotten {
                Ok(Ok(true)) => {
                    tracing::info!(
                        token,
                        "slot ended without a failed verdict; rollback data dropped"
                    );
                }
                Ok(Ok(false)) => {}
                Ok(Err(e)) => tracing::error!(token, error = %e, "cannot drop the rollback data"),
                Err(e) => tracing::error!(token, error = %e, "dropping the rollback data failed"),
            }
        }
        Action::Decline { token, reason } => {
            tracing::warn!(token, %reason, "giving the granted slot back");
            let req = pb::ReleaseRequest {
                node,
                token,
                reason: printable_within(&reason, MAX_TEXT_BYTES),
            };
            if let Err(e) = c.release(req).await {
                tracing::warn!(token, error = %e, "giving the slot back failed");
            }
        }
        Action::Detect => {
            let _ = tx.send(Event::Detect { refresh: false }).await;
        }
        Action::EnsureEtcdSnapshot { max_age_seconds } => {
            let (host, config, tx) = (host.clone(), config.clone(), tx.clone());
            tasks.spawn(
                async move {
                    // etcdctl takes seconds to minutes: off the runtime's only worker thread.
                    let result = tokio::task::spawn_blocking(move || {
                        let k8s = &config.detect.kubernetes;
                        etcd::ensure_fresh(
                            host.as_ref(),
                            &k8s.manifests,
                            &k8s.etcd,
                            Duration::from_secs(max_age_seconds),
                            jiff::Timestamp::now(),
                        )
                    })
                    .await;
                    let (ok, snapshot) = match result {
                        Ok(Ok(snapshot)) => {
                            tracing::info!(
                                path = snapshot.as_ref().map(|s| s.path.as_str()),
                                "a fresh etcd snapshot is ready for the queued operation"
                            );
                            (true, snapshot)
                        }
                        Ok(Err(e)) => {
                            tracing::warn!(error = %e, "etcd snapshot for the queued operation failed; retrying");
                            (false, None)
                        }
                        Err(e) => {
                            tracing::error!(error = %e, "etcd snapshot task failed");
                            (false, None)
                        }
                    };
                    let _ = tx.send(Event::SnapshotEnded { ok, snapshot }).await;
                }
                .instrument(tracing::info_span!("etcd_snapshot", max_age_seconds)),
            );
        }
        Action::WatchSentinels(_) => {
            // Performed by the loop, which owns the watcher.
        }
    }
}

/// Which way an operation's thread drives its record.
enum Run {
    /// A new grant, under its policy.
    Start(Operation, Option<NodePolicy>),
    /// The persisted operation, after an agent restart or a reboot.
    Resume,
    /// The persisted operation that awaits the verdict: the health gate failed its slot.
    RollBack,
}

/// Runs an operation (see [`Run`]) on a blocking thread, renewing the lease meanwhile.
#[allow(clippy::too_many_arguments)]
fn spawn_operation(
    tasks: &mut tokio::task::JoinSet<()>,
    config: &Arc<DaemonConfig>,
    host: &Arc<dyn Host>,
    client: &Client,
    tx: &mpsc::Sender<Event>,
    lease_ttl: &Arc<std::sync::atomic::AtomicU32>,
    token: u64,
    run: Run,
) {
    let renew = tokio::spawn(renew_lease(
        config.clone(),
        client.clone(),
        token,
        lease_ttl.clone(),
    ));
    let reporter = GrpcReporter {
        runtime: tokio::runtime::Handle::current(),
        client: client.clone(),
        node: config.node.clone(),
    };
    let (config, host, tx) = (config.clone(), host.clone(), tx.clone());
    tasks.spawn(async move {
        let cfg = config.clone();
        let result = tokio::task::spawn_blocking(move || {
            execute(&cfg, host.as_ref(), &reporter, token, run)
        })
        .await;
        renew.abort();
        let awaiting_verdict = match result {
            Ok(Ok(awaiting)) => {
                tracing::info!(token, awaiting_verdict = awaiting, "operation ended");
                awaiting
            }
            Ok(Err(e)) => {
                tracing::error!(token, error = %e, "operation aborted");
                false
            }
            Err(e) => {
                tracing::error!(token, error = %e, "operation task failed");
                false
            }
        };
        let _ = tx.send(Event::OperationEnded(token)).await;
        if awaiting_verdict {
            let _ = tx.send(Event::AwaitingVerdict(token)).await;
        }
    });
}

/// Runs the operation to its end on this (blocking) thread; returns whether it awaits the
/// coordinator's verdict. A completion that cannot be delivered is retried from the persisted
/// state.
fn execute(
    config: &DaemonConfig,
    host: &dyn Host,
    reporter: &GrpcReporter,
    token: u64,
    run: Run,
) -> Result<bool> {
    let first = match run {
        Run::Start(op, policy) => Some(Executor::start_granted(
            host,
            &config.exec,
            reporter,
            token,
            op,
            policy,
            jiff::Timestamp::now(),
        )?),
        Run::RollBack => {
            match Executor::roll_back_after_gate_failure(host, &config.exec, reporter, token)? {
                Some(ex) => Some(ex),
                None => return Ok(false),
            }
        }
        Run::Resume => None,
    };
    if let Some(mut ex) = first {
        ex.run()?;
        return Ok(ex.record().awaits_verdict());
    }
    loop {
        let Some(mut ex) = Executor::resume(host, &config.exec, reporter)? else {
            return Ok(false);
        };
        match ex.run() {
            Ok(()) => return Ok(ex.record().awaits_verdict()),
            Err(e @ (Error::Rpc(_) | Error::Transport(_))) => {
                tracing::warn!(error = %e, "reporting to the coordinator failed; retrying");
                std::thread::sleep(config.retry_interval);
            }
            Err(e) => return Err(e),
        }
    }
}

/// Reports progress and completion over gRPC from the operation's blocking thread.
struct GrpcReporter {
    runtime: tokio::runtime::Handle,
    client: Client,
    node: String,
}

impl Reporter for GrpcReporter {
    fn progress(&self, token: u64, step: &str, message: &str) {
        let mut c = self.client.clone();
        let req = pb::ReportProgressRequest {
            node: self.node.clone(),
            token,
            step: printable_within(step, MAX_TEXT_BYTES),
            message: printable_within(message, MAX_TEXT_BYTES),
        };
        if let Err(e) = self.runtime.block_on(c.report_progress(req)) {
            tracing::warn!(error = %e, step, "reporting progress failed");
        }
    }

    fn complete(&self, token: u64, done: &Completion) -> Result<CompleteAck> {
        let mut c = self.client.clone();
        let req = pb::CompleteRequest {
            node: self.node.clone(),
            token,
            success: done.success,
            message: printable_within(&done.message, MAX_TEXT_BYTES),
            boot_id: done.boot_id.clone(),
            rebooted: done.rebooted,
            changed: done.changed.iter().map(pb::PackagePin::from).collect(),
        };
        match self.runtime.block_on(c.complete(req)) {
            // Verifying now: the health gate may still fail the slot. A slot that had failed
            // already (the node came back late) is no verdict on this completion.
            Ok(resp)
                if resp.get_ref().phase == pb::SlotPhase::Verifying as i32
                    && resp.get_ref().token == token =>
            {
                Ok(CompleteAck::Verifying)
            }
            Ok(_) => Ok(CompleteAck::Accepted),
            Err(s) if s.code() == tonic::Code::FailedPrecondition => Ok(CompleteAck::Stale),
            Err(s) => Err(Error::Rpc(Box::new(s))),
        }
    }
}

/// Renews the lease at a third of its time-to-live until aborted.
async fn renew_lease(
    config: Arc<DaemonConfig>,
    mut client: Client,
    token: u64,
    ttl: Arc<std::sync::atomic::AtomicU32>,
) {
    loop {
        let secs = ttl.load(std::sync::atomic::Ordering::Relaxed).max(3) / 3;
        tokio::time::sleep(Duration::from_secs(u64::from(secs))).await;
        let req = pb::RenewRequest {
            node: config.node.clone(),
            token,
        };
        match client.renew(req).await {
            Ok(resp) if resp.get_ref().lease_ttl_seconds > 0 => ttl.store(
                resp.get_ref().lease_ttl_seconds,
                std::sync::atomic::Ordering::Relaxed,
            ),
            Ok(_) => {}
            Err(s) if s.code() == tonic::Code::FailedPrecondition => {
                tracing::error!(
                    token,
                    "the coordinator refused the lease renewal: token is stale"
                );
                return;
            }
            Err(e) => tracing::warn!(token, error = %e, "lease renewal failed"),
        }
    }
}

/// Follows the slot, reconnecting after a back-off when the stream ends or breaks.
async fn watch_slot(config: Arc<DaemonConfig>, mut client: Client, tx: mpsc::Sender<Event>) {
    loop {
        let req = pb::WatchSlotRequest {
            node: config.node.clone(),
        };
        match client.watch_slot(req).await {
            Ok(resp) => {
                let mut stream = resp.into_inner();
                loop {
                    match stream.message().await {
                        Ok(Some(status)) => match SlotView::try_from(&status) {
                            Ok(slot) => {
                                if tx.send(Event::Slot(slot)).await.is_err() {
                                    return;
                                }
                            }
                            Err(e) => tracing::warn!(error = %e, "invalid slot status"),
                        },
                        Ok(None) => break,
                        Err(e) => {
                            tracing::warn!(error = %e, "slot watch broke");
                            break;
                        }
                    }
                }
            }
            Err(e) => tracing::warn!(error = %e, "cannot watch the slot"),
        }
        tokio::time::sleep(config.retry_interval).await;
    }
}

/// Sends `event` at every interval (not at once: start-up work is sent separately).
async fn refresh_timer(interval: Duration, tx: mpsc::Sender<Event>, event: Event) {
    let mut timer = tokio::time::interval(interval);
    timer.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    timer.tick().await;
    loop {
        timer.tick().await;
        if tx.send(event.clone()).await.is_err() {
            return;
        }
    }
}
