//! The gRPC edge's defences, in front of the `rota.v1.Agent` handlers: what an unauthenticated
//! caller can make the coordinator do is bounded.
//!
//! - [`Edge`] authenticates every call from its headers **before its body is read**: a caller
//!   without a valid token never gets a byte decoded, whatever length prefix or nesting it
//!   sends. Refusals are counted (`rota_grpc_auth_refusals_total`), logged at debug level, and
//!   summed up in one warning per [`SUMMARY_INTERVAL`] ([`RefusalLog`]).
//! - Authenticated calls then take a permit of a global limit ([`EdgeLimits::max_concurrent_calls`],
//!   beyond it `RESOURCE_EXHAUSTED`) and their body is cut at the size their method's messages
//!   can have ([`request_limit`]; beyond it `OUT_OF_RANGE`).
//! - [`server`] sets the HTTP/2 limits (streams and calls per connection, small flow-control
//!   windows so a connection cannot park much unread data) and [`limit_connections`] caps the
//!   open connections.

use std::collections::BTreeMap;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::Duration;

use futures::future::BoxFuture;
use futures::{Stream, StreamExt};
use http_body::{Body, Frame, SizeHint};
use http_body_util::{LengthLimitError, Limited};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;
use tonic::Status;
use tonic::codegen::Service;
use tonic::metadata::MetadataMap;
use tonic::server::NamedService;
use tonic::transport::server::Connected;

use super::auth::Authenticator;
use super::{MAX_MESSAGE_BYTES, status};
use crate::metrics::Metrics;
use rota_core::model::NodeName;

/// How often the HTTP/2 server pings an idle agent connection.
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(30);
/// How long a ping may go unanswered before the connection is dropped: a vanished agent (its
/// node rebooted) frees its `WatchSlot` stream within a minute, not when TCP gives up.
const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(10);
/// HTTP/2 receive window of one stream: what a client may send before the server reads. Agent
/// messages are small; a large `ReportFacts` just takes a few more round trips.
const STREAM_WINDOW: u32 = 64 * 1024;
/// HTTP/2 receive window of one connection, all streams together.
const CONNECTION_WINDOW: u32 = 128 * 1024;
/// Largest header block accepted (the bearer token is at most 8 KiB).
const MAX_HEADER_LIST_BYTES: u32 = 16 * 1024;
/// Largest request of the methods whose messages only carry a node name, a token and short
/// texts (`WatchSlot`, `Renew`, `ReportProgress`, `Release`): two 1 KiB texts and change.
pub const SMALL_REQUEST_BYTES: usize = 8 * 1024;
/// How often refusals are summed up in one warning (when there were any).
pub const SUMMARY_INTERVAL: Duration = Duration::from_secs(60);

/// The edge's limits.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EdgeLimits {
    /// Most open connections; more are closed as soon as they are accepted.
    pub max_connections: usize,
    /// Most authenticated calls handled at once (the `WatchSlot` streams count until they are
    /// set up, not for their lifetime).
    pub max_concurrent_calls: usize,
    /// Most concurrent HTTP/2 streams of one connection (an agent needs two: its `WatchSlot`
    /// and one call).
    pub max_streams_per_connection: u32,
    /// Most calls of one connection handled at once; more get `RESOURCE_EXHAUSTED`.
    pub max_calls_per_connection: usize,
}

impl Default for EdgeLimits {
    fn default() -> Self {
        EdgeLimits {
            max_connections: 4096,
            max_concurrent_calls: 256,
            max_streams_per_connection: 16,
            max_calls_per_connection: 8,
        }
    }
}

/// The tonic server with the edge's HTTP/2 settings and per-connection limits.
pub fn server(limits: &EdgeLimits) -> tonic::transport::Server {
    tonic::transport::Server::builder()
        .http2_keepalive_interval(Some(KEEPALIVE_INTERVAL))
        .http2_keepalive_timeout(Some(KEEPALIVE_TIMEOUT))
        .max_concurrent_streams(limits.max_streams_per_connection)
        .concurrency_limit_per_connection(limits.max_calls_per_connection)
        // Over the per-connection limit: RESOURCE_EXHAUSTED at once, not a queue.
        .load_shed(true)
        .initial_stream_window_size(STREAM_WINDOW)
        .initial_connection_window_size(CONNECTION_WINDOW)
        .http2_max_header_list_size(MAX_HEADER_LIST_BYTES)
}

/// The most bytes (length prefix included) the request body of the method at `path` may have:
/// the methods whose messages carry package lists get [`MAX_MESSAGE_BYTES`], the others
/// [`SMALL_REQUEST_BYTES`]; `None` for a path that is no method of `rota.v1.Agent`.
pub fn request_limit(path: &str) -> Option<usize> {
    let method = path.strip_prefix("/rota.v1.Agent/")?;
    match method {
        "ReportFacts" | "RequestSlot" | "Complete" => Some(MAX_MESSAGE_BYTES + 5),
        "WatchSlot" | "Renew" | "ReportProgress" | "Release" => Some(SMALL_REQUEST_BYTES),
        _ => None,
    }
}

/// The authenticated caller's node, put in the request's extensions by [`Edge`].
#[derive(Clone, Debug)]
pub struct Caller(pub NodeName);

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// A request body cut at its method's limit: past it, the body fails with `OUT_OF_RANGE`
/// (tonic passes a body's `Status` error on as the call's status).
pub struct LimitedBody<B> {
    inner: Pin<Box<Limited<B>>>,
}

impl<B> LimitedBody<B> {
    fn new(body: B, limit: usize) -> Self {
        LimitedBody {
            inner: Box::pin(Limited::new(body, limit)),
        }
    }
}

impl<B> Body for LimitedBody<B>
where
    B: Body,
    B::Error: Into<BoxError>,
{
    type Data = B::Data;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        self.inner.as_mut().poll_frame(cx).map_err(|err| {
            if err.is::<LengthLimitError>() {
                Box::new(Status::out_of_range(
                    "the request is larger than this method's messages can be",
                )) as BoxError
            } else {
                err
            }
        })
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// Authenticates calls before their body is read, then limits them (see the module docs).
pub struct Edge<A, S> {
    auth: Arc<A>,
    inner: S,
    calls: Arc<Semaphore>,
    refusals: Arc<Refusals>,
}

impl<A, S: Clone> Clone for Edge<A, S> {
    fn clone(&self) -> Self {
        Edge {
            auth: self.auth.clone(),
            inner: self.inner.clone(),
            calls: self.calls.clone(),
            refusals: self.refusals.clone(),
        }
    }
}

impl<A, S> Edge<A, S> {
    /// `inner` behind `auth`, with at most `max_concurrent_calls` calls at once; refusals are
    /// counted into `metrics` when given.
    pub fn new(
        auth: Arc<A>,
        inner: S,
        max_concurrent_calls: usize,
        metrics: Option<Metrics>,
    ) -> Self {
        Edge {
            auth,
            inner,
            calls: Arc::new(Semaphore::new(max_concurrent_calls)),
            refusals: Arc::new(Refusals::new(metrics)),
        }
    }
}

impl<A, S: NamedService> NamedService for Edge<A, S> {
    const NAME: &'static str = S::NAME;
}

impl<A, S, B> Service<http::Request<B>> for Edge<A, S>
where
    A: Authenticator,
    S: Service<http::Request<LimitedBody<B>>, Response = http::Response<tonic::body::Body>>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
    B: Body + Send + 'static,
    B::Error: Into<BoxError>,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = S::Error;
    type Future = BoxFuture<'static, Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        // The generated service is always ready; each call drives a clone of it.
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let auth = self.auth.clone();
        let calls = self.calls.clone();
        let refusals = self.refusals.clone();
        let mut inner = self.inner.clone();
        Box::pin(async move {
            let (mut parts, body) = request.into_parts();
            // Answered before anything else, as the generated service would: the metrics then
            // count every unknown path under one label, not one per path a client makes up.
            let Some(limit) = request_limit(parts.uri.path()) else {
                return Ok(Status::unimplemented("no such method").into_http());
            };
            let metadata = MetadataMap::from_headers(std::mem::take(&mut parts.headers));
            let caller = auth.authenticate(&metadata).await;
            parts.headers = metadata.into_headers();
            let caller = match caller {
                Ok(caller) => caller,
                Err(err) => {
                    refusals.refused(err.reason(), &err);
                    // The body is dropped unread: HTTP/2 resets the stream.
                    return Ok(status::unauthenticated(&err).into_http());
                }
            };
            let Ok(permit) = calls.try_acquire_owned() else {
                refusals.refused("busy", &"too many calls at once");
                return Ok(Status::resource_exhausted(
                    "the coordinator handles too many calls at once; retry",
                )
                .into_http());
            };
            parts.extensions.insert(Caller(caller));
            let body = LimitedBody::new(body, limit);
            let response = inner.call(http::Request::from_parts(parts, body)).await;
            drop(permit);
            response
        })
    }
}

/// Counts and logs refusals.
#[derive(Debug)]
struct Refusals {
    metrics: Option<Metrics>,
    log: Mutex<RefusalLog>,
}

impl Refusals {
    fn new(metrics: Option<Metrics>) -> Self {
        Refusals {
            metrics,
            log: Mutex::new(RefusalLog::new(SUMMARY_INTERVAL)),
        }
    }

    fn refused(&self, reason: &'static str, why: &dyn std::fmt::Display) {
        tracing::debug!(reason, error = %why, "agent call refused");
        if let Some(metrics) = &self.metrics {
            metrics.grpc_refused(reason);
        }
        let summary = self
            .log
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .record(reason, Instant::now());
        if let Some(summary) = summary {
            tracing::warn!(
                refused = ?summary.counts,
                over_seconds = summary.over.as_secs(),
                "agent calls refused (bad or unknown credentials, over the limits, or the TokenReview API failing)"
            );
        }
    }
}

/// Refusals summed up over a period.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Summary {
    /// Refusals by reason.
    pub counts: BTreeMap<&'static str, u64>,
    /// The period they were counted over.
    pub over: Duration,
}

/// Counts refusals and hands out a [`Summary`] at most once per interval (pure: explicit now).
#[derive(Debug)]
pub struct RefusalLog {
    interval: Duration,
    since: Option<Instant>,
    counts: BTreeMap<&'static str, u64>,
}

impl RefusalLog {
    /// A log summing up every `interval`.
    pub fn new(interval: Duration) -> Self {
        RefusalLog {
            interval,
            since: None,
            counts: BTreeMap::new(),
        }
    }

    /// Counts one refusal at `now`; returns the summary of the period when it is over (the
    /// first refusal after a quiet spell is reported at once).
    pub fn record(&mut self, reason: &'static str, now: Instant) -> Option<Summary> {
        *self.counts.entry(reason).or_default() += 1;
        let since = *self.since.get_or_insert(now);
        let over = now.saturating_duration_since(since);
        let first = self.counts.values().sum::<u64>() == 1 && over.is_zero();
        if !first && over < self.interval {
            return None;
        }
        self.since = Some(now);
        Some(Summary {
            counts: std::mem::take(&mut self.counts),
            over,
        })
    }
}

/// A connection that holds one of [`limit_connections`]' permits while it is open.
#[derive(Debug)]
pub struct Counted<IO> {
    io: IO,
    _permit: OwnedSemaphorePermit,
}

impl<IO: AsyncRead + Unpin> AsyncRead for Counted<IO> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl<IO: AsyncWrite + Unpin> AsyncWrite for Counted<IO> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }
}

impl<IO: Connected> Connected for Counted<IO> {
    type ConnectInfo = IO::ConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.io.connect_info()
    }
}

/// The connections of `incoming`, at most `max` open at once: one over the cap is closed as
/// soon as it is accepted (and counted as a refusal).
pub fn limit_connections<I, IO, IE>(
    incoming: I,
    max: usize,
    metrics: Option<Metrics>,
) -> impl Stream<Item = Result<Counted<IO>, IE>>
where
    I: Stream<Item = Result<IO, IE>>,
{
    let open = Arc::new(Semaphore::new(max));
    let refusals = Arc::new(Refusals::new(metrics));
    incoming.filter_map(move |connection| {
        let admitted = match connection {
            Ok(io) => match open.clone().try_acquire_owned() {
                Ok(permit) => Some(Ok(Counted {
                    io,
                    _permit: permit,
                })),
                Err(_) => {
                    refusals.refused("connections", &"too many open connections");
                    None
                }
            },
            Err(e) => Some(Err(e)),
        };
        futures::future::ready(admitted)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_limits_follow_the_messages() {
        for big in ["ReportFacts", "RequestSlot", "Complete"] {
            assert_eq!(
                request_limit(&format!("/rota.v1.Agent/{big}")),
                Some(MAX_MESSAGE_BYTES + 5)
            );
        }
        for small in ["WatchSlot", "Renew", "ReportProgress", "Release"] {
            assert_eq!(
                request_limit(&format!("/rota.v1.Agent/{small}")),
                Some(SMALL_REQUEST_BYTES)
            );
        }
        for unknown in ["/rota.v1.Agent/Nope", "/other.Service/ReportFacts", "/"] {
            assert_eq!(request_limit(unknown), None, "{unknown}");
        }
    }

    #[test]
    fn refusals_are_summed_up_once_per_interval() {
        let now = Instant::now();
        let mut log = RefusalLog::new(Duration::from_secs(60));
        let first = log.record("unauthenticated", now).unwrap();
        assert_eq!(first.counts, BTreeMap::from([("unauthenticated", 1)]));
        for s in 1..60 {
            let at = now + Duration::from_secs(s);
            assert_eq!(log.record("throttled", at), None);
            assert_eq!(log.record("unauthenticated", at), None);
        }
        let summary = log
            .record("throttled", now + Duration::from_secs(61))
            .unwrap();
        assert_eq!(
            summary.counts,
            BTreeMap::from([("throttled", 60), ("unauthenticated", 59)])
        );
        assert_eq!(summary.over, Duration::from_secs(61));
        assert_eq!(log.record("throttled", now + Duration::from_secs(62)), None);
    }
}
