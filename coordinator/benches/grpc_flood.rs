//! The gRPC edge under the flood of #14's finding 1: many concurrent callers, each with a
//! unique garbage bearer token and a large body, against a coordinator serving agents over TLS
//! with the TokenReview authenticator (on the emulated API server), while one authenticated
//! agent keeps calling `ReportFacts`.
//!
//! The coordinator's edge runs in a child process (this binary, re-run with
//! `ROTA_FLOOD_ROLE=server`), so that its peak RSS (`VmHWM`) is its own, not the flooders'. On
//! a machine with two cores or more the server is pinned to the first and the flood to the
//! others (the attacker's CPU is not the coordinator's); the agent calls from a thread and
//! runtime of its own, so that its latency is the server's, not its place in the flooders'
//! queue.
//! Prints the server's peak RSS (target: under 256 MiB) and the agent's p50/p99 latency before
//! and during the flood (target: p99 under 50 ms), with the ratio to each target; nothing is
//! asserted on timing.
//!
//! Run: `cargo bench -p rota-coordinator --bench grpc_flood`. Knobs (environment):
//! `ROTA_FLOOD_CALLERS` (1000 concurrent), `ROTA_FLOOD_BODY_KB` (550),
//! `ROTA_FLOOD_CONNECTIONS` (100), `ROTA_FLOOD_SECS` (10).

use std::io::{BufRead, BufReader, Write};
use std::net::{Ipv4Addr, SocketAddr};
use std::process::{Command, ExitCode, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use k8s_openapi::api::core::v1::ConfigMap;
use nix::sched::{CpuSet, sched_setaffinity};
use nix::unistd::Pid;
use rota_coordinator::auth::{AgentIdentity, CacheConfig, RateLimit, TokenReviewAuthenticator};
use rota_coordinator::grpc::{AgentGrpc, EdgeLimits, edge};
use rota_coordinator::slot_service::{SlotService, SlotServiceConfig};
use rota_coordinator::tls::{self, CA_CONFIGMAP, TlsOptions};
use rota_core::clock::SystemClock;
use rota_core::slots::MemoryStore;
use rota_proto::v1 as pb;
use rota_proto::v1::agent_client::AgentClient;
use rota_sim::apiserver::{ApiServer, GroupResource, Store};
use serde_json::json;
use tokio::net::TcpListener;
use tonic::Code;
use tonic::metadata::MetadataValue;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint};

const NS: &str = "rota-system";
const SERVICE_NAME: &str = "rota-coordinator.rota-system.svc";
const TARGET_RSS_MIB: f64 = 256.0;
const TARGET_P99: Duration = Duration::from_millis(50);

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> anyhow::Result<T> {
    match std::env::var(name) {
        Ok(v) => v
            .parse()
            .map_err(|_| anyhow::anyhow!("{name}={v:?} is not a valid value")),
        Err(_) => Ok(default),
    }
}

/// Pins this process to `cpus` (all its threads, including those started later).
fn pin_to(cpus: impl IntoIterator<Item = usize>) -> anyhow::Result<()> {
    let mut set = CpuSet::new();
    for cpu in cpus {
        set.set(cpu)?;
    }
    sched_setaffinity(Pid::from_raw(0), &set)?;
    Ok(())
}

fn main() -> ExitCode {
    let role = std::env::var("ROTA_FLOOD_ROLE").unwrap_or_default();
    let cores = std::thread::available_parallelism().map_or(1, usize::from);
    if cores >= 2 {
        let pinned = if role == "server" {
            pin_to([0])
        } else {
            pin_to(1..cores)
        };
        if let Err(e) = pinned {
            eprintln!("grpc_flood: cannot pin to cores ({e}); running unpinned");
        }
    }
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("grpc_flood: {e}");
            return ExitCode::FAILURE;
        }
    };
    let ran = if role == "server" {
        runtime.block_on(server())
    } else {
        runtime.block_on(flood())
    };
    match ran {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("grpc_flood: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// The peak resident set of this process, in KiB.
fn peak_rss_kib() -> anyhow::Result<u64> {
    let status = std::fs::read_to_string("/proc/self/status")?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .context("no VmHWM in /proc/self/status")
}

fn kube_client(url: &str) -> anyhow::Result<kube::Client> {
    Ok(kube::Client::try_from(kube::Config::new(url.parse()?))?)
}

/// The child: the coordinator's edge as it is deployed (TLS bootstrapped into the emulator,
/// TokenReview authenticator with its pod watch, default limits). Prints `READY <port>`, then
/// on a line on stdin prints `VMHWM <KiB>` and exits.
async fn server() -> anyhow::Result<()> {
    let url = std::env::var("ROTA_FLOOD_KUBE_URL").context("ROTA_FLOOD_KUBE_URL")?;
    let client = kube_client(&url)?;
    let tls = tls::server_config(&TlsOptions::default(), client.clone(), NS).await?;
    let auth = TokenReviewAuthenticator::new(
        client,
        AgentIdentity {
            audience: "rota".into(),
            namespace: NS.into(),
            service_account: "rota-agent".into(),
            daemon_set: "rota-agent".into(),
        },
        CacheConfig::default(),
    )
    .with_review_limit(RateLimit::default());
    tokio::spawn(auth.watch_pods());
    let (core, _events) = SlotService::load(
        MemoryStore::with_nodes(["n1"]),
        SlotServiceConfig::default(),
        Arc::new(SystemClock),
    )
    .await?;
    let limits = EdgeLimits::default();
    let agent = AgentGrpc::new(Arc::new(core), auth).with_limits(limits);
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await?;
    let port = listener.local_addr()?.port();
    let incoming = edge::limit_connections(tls.incoming(listener), limits.max_connections, None);
    let served = tokio::spawn(
        edge::server(&limits)
            .add_service(agent.into_service())
            .serve_with_incoming(incoming),
    );
    println!("READY {port}");
    std::io::stdout().flush()?;
    let mut line = String::new();
    tokio::task::spawn_blocking(move || std::io::stdin().read_line(&mut line)).await??;
    println!("VMHWM {}", peak_rss_kib()?);
    std::io::stdout().flush()?;
    served.abort();
    Ok(())
}

/// Latencies, sorted.
fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    #[allow(
        clippy::cast_possible_truncation,
        clippy::cast_sign_loss,
        clippy::cast_precision_loss
    )]
    let rank = ((sorted.len() as f64) * p).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

fn garbage_token(i: u64) -> String {
    format!("eyJhbGciOiJSUzI1NiJ9.eyJnYXJiYWdlIjo{i:012x}.c2lnbmF0dXJl")
}

/// One flood call: a unique garbage token and `body` as the raw request body.
async fn garbage_call(mut channel: Channel, token: String, body: Bytes) -> Code {
    let request = http::Request::builder()
        .method("POST")
        .uri("/rota.v1.Agent/ReportFacts")
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .header("authorization", format!("Bearer {token}"))
        .body(tonic::body::Body::new(Full::new(body)));
    let Ok(request) = request else {
        return Code::Internal;
    };
    if futures::future::poll_fn(|cx| tower::Service::poll_ready(&mut channel, cx))
        .await
        .is_err()
    {
        return Code::Unavailable;
    }
    let Ok(response) = tower::Service::call(&mut channel, request).await else {
        return Code::Unavailable;
    };
    if let Some(status) = tonic::Status::from_header_map(response.headers()) {
        return status.code();
    }
    match response.into_body().collect().await {
        Ok(collected) => collected
            .trailers()
            .and_then(tonic::Status::from_header_map)
            .map_or(Code::Ok, |s| s.code()),
        Err(_) => Code::Unavailable,
    }
}

/// [`agent_calls`] on a thread and current-thread runtime of its own.
fn agent_thread(
    endpoint: Endpoint,
    token: String,
    stop: Arc<AtomicBool>,
) -> std::thread::JoinHandle<anyhow::Result<Vec<Duration>>> {
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        runtime.block_on(async move {
            let channel = endpoint.connect().await?;
            Ok(agent_calls(channel, token, stop).await)
        })
    })
}

fn joined(
    thread: std::thread::JoinHandle<anyhow::Result<Vec<Duration>>>,
) -> anyhow::Result<Vec<Duration>> {
    thread
        .join()
        .map_err(|_| anyhow::anyhow!("the agent thread panicked"))?
}

/// The agent's `ReportFacts` calls, one after the other, until `stop`; their latencies.
async fn agent_calls(channel: Channel, token: String, stop: Arc<AtomicBool>) -> Vec<Duration> {
    let mut client = AgentClient::with_interceptor(channel, move |mut req: tonic::Request<()>| {
        if let Ok(value) = MetadataValue::try_from(format!("Bearer {token}")) {
            req.metadata_mut().insert("authorization", value);
        }
        Ok(req)
    });
    let mut latencies = Vec::new();
    while !stop.load(Ordering::Relaxed) {
        let started = Instant::now();
        let called = client
            .report_facts(pb::ReportFactsRequest {
                node: "n1".into(),
                facts: Some(pb::NodeFacts {
                    boot_id: "boot-1".into(),
                    kernel_running: "6.1.0-13-amd64".into(),
                    ..pb::NodeFacts::default()
                }),
            })
            .await;
        match called {
            Ok(_) => latencies.push(started.elapsed()),
            Err(status) => eprintln!("the agent's call failed: {status:?}"),
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    latencies
}

fn summary(what: &str, mut latencies: Vec<Duration>) -> Duration {
    latencies.sort_unstable();
    let p50 = percentile(&latencies, 0.50);
    let p99 = percentile(&latencies, 0.99);
    println!(
        "agent ReportFacts {what}: {} calls, p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
        latencies.len(),
        p50.as_secs_f64() * 1e3,
        p99.as_secs_f64() * 1e3,
        latencies.last().copied().unwrap_or_default().as_secs_f64() * 1e3,
    );
    p99
}

async fn flood() -> anyhow::Result<()> {
    let callers: usize = env_or("ROTA_FLOOD_CALLERS", 1000)?;
    let body_kb: usize = env_or("ROTA_FLOOD_BODY_KB", 550)?;
    let connections: usize = env_or("ROTA_FLOOD_CONNECTIONS", 100)?;
    let secs: u64 = env_or("ROTA_FLOOD_SECS", 10)?;

    // The emulated cluster: one node and its agent, a pod of the agents' DaemonSet.
    let store = Store::new();
    let create = |resource: &str, ns: Option<&str>, obj: serde_json::Value| {
        store.create(&GroupResource::core(resource), ns, obj)
    };
    create("namespaces", None, json!({"metadata": {"name": NS}}))?;
    create("nodes", None, json!({"metadata": {"name": "n1"}}))?;
    create(
        "serviceaccounts",
        Some(NS),
        json!({"metadata": {"name": "rota-agent"}}),
    )?;
    create(
        "pods",
        Some(NS),
        json!({"metadata": {"name": "agent-n1", "ownerReferences": [
                 {"apiVersion": "apps/v1", "kind": "DaemonSet", "name": "rota-agent", "uid": "ds", "controller": true}]},
               "spec": {"nodeName": "n1", "serviceAccountName": "rota-agent",
                        "containers": [{"name": "agent", "image": "rota-agent"}]}}),
    )?;
    let api = ApiServer::start(store.clone(), SocketAddr::from((Ipv4Addr::LOCALHOST, 0))).await?;
    let token =
        store.issue_service_account_token(NS, "agent-n1", "rota", Duration::from_secs(3600))?;

    let mut child = Command::new(std::env::current_exe()?)
        .env("ROTA_FLOOD_ROLE", "server")
        .env("ROTA_FLOOD_KUBE_URL", api.url())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()?;
    let mut stdin = child.stdin.take().context("child stdin")?;
    let mut lines = BufReader::new(child.stdout.take().context("child stdout")?).lines();
    let ready = lines.next().context("the server said nothing")??;
    let port: u16 = ready
        .strip_prefix("READY ")
        .and_then(|p| p.parse().ok())
        .with_context(|| format!("unexpected {ready:?}"))?;

    let ca = kube::Api::<ConfigMap>::namespaced(kube_client(&api.url())?, NS)
        .get(CA_CONFIGMAP)
        .await?
        .data
        .and_then(|mut d| d.remove("ca.crt"))
        .context("no published CA")?;
    let endpoint = Endpoint::from_shared(format!("https://127.0.0.1:{port}"))?
        .timeout(Duration::from_secs(30))
        .tls_config(
            ClientTlsConfig::new()
                .ca_certificate(Certificate::from_pem(&ca))
                .domain_name(SERVICE_NAME),
        )?;

    // Before the flood.
    let stop = Arc::new(AtomicBool::new(false));
    let calm = agent_thread(endpoint.clone(), token.clone(), stop.clone());
    tokio::time::sleep(Duration::from_secs(2)).await;
    stop.store(true, Ordering::Relaxed);
    let calm = joined(calm)?;

    // The flood.
    let mut channels = Vec::with_capacity(connections);
    for _ in 0..connections {
        channels.push(endpoint.connect().await?);
    }
    let body = {
        let payload = vec![0x42_u8; body_kb * 1024];
        let mut framed = vec![0_u8];
        framed.extend_from_slice(&u32::try_from(payload.len())?.to_be_bytes());
        framed.extend_from_slice(&payload);
        Bytes::from(framed)
    };
    let stop = Arc::new(AtomicBool::new(false));
    let during = agent_thread(endpoint.clone(), token.clone(), stop.clone());
    let next = Arc::new(AtomicU64::new(0));
    let counts: Arc<std::sync::Mutex<std::collections::BTreeMap<String, u64>>> = Arc::default();
    let deadline = Instant::now() + Duration::from_secs(secs);
    let mut workers = Vec::with_capacity(callers);
    for w in 0..callers {
        let channel = channels[w % channels.len()].clone();
        let (body, next, counts) = (body.clone(), next.clone(), counts.clone());
        workers.push(tokio::spawn(async move {
            while Instant::now() < deadline {
                let i = next.fetch_add(1, Ordering::Relaxed);
                let code = garbage_call(channel.clone(), garbage_token(i), body.clone()).await;
                if let Ok(mut counts) = counts.lock() {
                    *counts.entry(format!("{code:?}")).or_default() += 1;
                }
            }
        }));
    }
    for worker in workers {
        worker.await?;
    }
    stop.store(true, Ordering::Relaxed);
    let during = joined(during)?;

    writeln!(stdin, "report")?;
    let reported = lines.next().context("the server did not report")??;
    let peak_kib: u64 = reported
        .strip_prefix("VMHWM ")
        .and_then(|p| p.parse().ok())
        .with_context(|| format!("unexpected {reported:?}"))?;
    let _ = child.wait();

    let sent = next.load(Ordering::Relaxed);
    println!(
        "flood: {callers} concurrent callers over {connections} connections, unique garbage \
         tokens, {body_kb} KiB bodies, {secs} s: {sent} calls ({:.0}/s)",
        sent as f64 / secs as f64
    );
    if let Ok(counts) = counts.lock() {
        println!("flood answers: {counts:?}");
    }
    summary("before the flood", calm);
    let p99 = summary("during the flood", during);
    #[allow(clippy::cast_precision_loss)]
    let peak_mib = peak_kib as f64 / 1024.0;
    println!(
        "server peak RSS (VmHWM): {peak_mib:.1} MiB — {:.2} of the {TARGET_RSS_MIB} MiB target",
        peak_mib / TARGET_RSS_MIB
    );
    println!(
        "agent p99 during the flood: {:.2} of the {} ms target",
        p99.as_secs_f64() / TARGET_P99.as_secs_f64(),
        TARGET_P99.as_millis()
    );
    if p99.is_zero() {
        bail!("the agent made no successful call during the flood");
    }
    Ok(())
}
