//! The `rota.v1.Agent` service over an [`AgentCore`].

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use futures::{Stream, StreamExt};
use rota_proto::convert as wire;
use rota_proto::v1 as pb;
use rota_proto::v1::agent_server::{Agent, AgentServer};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::watch;
use tonic::transport::server::Connected;
use tonic::{Request, Response, Status};

use super::auth::Authenticator;
use super::edge::{self, Caller, Edge, EdgeLimits};
use super::{MAX_MESSAGE_BYTES, convert, status};
use crate::metrics::Metrics;
use rota_core::agent_api::AgentCore;
use rota_core::model::NodeName;
use rota_core::slots::{Release, SlotView};

/// The `rota.v1.Agent` gRPC service: authenticates (before any body is read, see
/// [`edge`](super::edge)), validates and forwards to the core.
///
/// [`serve`] runs it on plain connections. With TLS or other server settings, build the tonic
/// server yourself — from [`edge::server`] to keep the edge's HTTP/2 limits —:
/// `edge::server(&limits).tls_config(..)?.add_service(agent.into_service())
/// .serve_with_incoming_shutdown(edge::limit_connections(incoming, ..), async { signal.await;
/// handle.shutdown() })`, with `handle` taken from [`AgentGrpc::shutdown_handle`] before
/// `into_service`.
pub struct AgentGrpc<C, A> {
    handler: Handler<C>,
    auth: Arc<A>,
    limits: EdgeLimits,
    metrics: Option<Metrics>,
}

/// The service [`AgentGrpc::into_service`] builds: the edge in front of the handlers.
pub type AgentService<C, A> = Edge<A, AgentServer<Handler<C>>>;

impl<C: AgentCore, A: Authenticator> AgentGrpc<C, A> {
    /// A service over `core` that identifies callers with `auth`, with the default
    /// [`EdgeLimits`].
    pub fn new(core: Arc<C>, auth: A) -> Self {
        AgentGrpc {
            handler: Handler {
                core,
                shutdown: watch::Sender::new(false),
            },
            auth: Arc::new(auth),
            limits: EdgeLimits::default(),
            metrics: None,
        }
    }

    /// With these limits.
    #[must_use]
    pub fn with_limits(self, limits: EdgeLimits) -> Self {
        AgentGrpc { limits, ..self }
    }

    /// Counting the edge's refusals into `metrics`.
    #[must_use]
    pub fn with_metrics(self, metrics: Metrics) -> Self {
        AgentGrpc {
            metrics: Some(metrics),
            ..self
        }
    }

    /// The limits the service was built with (for [`edge::server`] and
    /// [`edge::limit_connections`]).
    pub fn limits(&self) -> EdgeLimits {
        self.limits
    }

    /// A handle that ends every open `WatchSlot` stream (call it when the server shuts down, so
    /// that graceful shutdown does not wait on streams that never end).
    pub fn shutdown_handle(&self) -> ShutdownHandle {
        ShutdownHandle(self.handler.shutdown.clone())
    }

    /// The tonic service with rota's edge and message-size limits.
    pub fn into_service(self) -> AgentService<C, A> {
        let server = AgentServer::new(self.handler)
            .max_decoding_message_size(MAX_MESSAGE_BYTES)
            .max_encoding_message_size(MAX_MESSAGE_BYTES);
        Edge::new(
            self.auth,
            server,
            self.limits.max_concurrent_calls,
            self.metrics,
        )
    }
}

/// The `rota.v1.Agent` handlers, behind the [`Edge`] that authenticated the caller.
pub struct Handler<C> {
    core: Arc<C>,
    shutdown: watch::Sender<bool>,
}

impl<C: AgentCore> Handler<C> {
    /// Validates the node a request names and checks that it is the caller's own.
    fn authorize<T>(request: &Request<T>, node: &str) -> Result<NodeName, Status> {
        // Set by the edge for every call it lets through.
        let Some(Caller(caller)) = request.extensions().get::<Caller>() else {
            return Err(Status::unauthenticated("the caller is not authenticated"));
        };
        let node = wire::node_name("node", node).map_err(|e| status::invalid_argument(&e))?;
        if *caller != node {
            return Err(status::permission_denied(caller, &node));
        }
        Ok(node)
    }
}

/// Ends every `WatchSlot` stream of one [`AgentGrpc`].
#[derive(Clone, Debug)]
pub struct ShutdownHandle(watch::Sender<bool>);

impl ShutdownHandle {
    /// Ends the streams; new `WatchSlot` calls get `UNAVAILABLE`.
    pub fn shutdown(&self) {
        self.0.send_replace(true);
    }
}

/// Serves `agent` on `incoming` connections until `signal` completes, then ends the open
/// `WatchSlot` streams and drains the connections. HTTP/2 keep-alives detect dead agents.
pub async fn serve<C, A, I, IO, IE>(
    agent: AgentGrpc<C, A>,
    incoming: I,
    signal: impl Future<Output = ()>,
) -> Result<(), tonic::transport::Error>
where
    C: AgentCore,
    A: Authenticator,
    I: Stream<Item = Result<IO, IE>>,
    IO: AsyncRead + AsyncWrite + Connected + Unpin + Send + 'static,
    IE: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let handle = agent.shutdown_handle();
    let limits = agent.limits();
    let incoming = edge::limit_connections(incoming, limits.max_connections, agent.metrics.clone());
    edge::server(&limits)
        .add_service(agent.into_service())
        .serve_with_incoming_shutdown(incoming, async move {
            signal.await;
            handle.shutdown();
        })
        .await
}

type SlotStream = Pin<Box<dyn Stream<Item = Result<pb::SlotStatus, Status>> + Send + 'static>>;

/// The core's `views` on the wire: the node's current view at once, then every change (as
/// [`AgentCore::SlotUpdates`] promises); ends when the node is deleted (the views end) or the
/// server shuts down.
fn slot_stream<V>(views: V, mut shutdown: watch::Receiver<bool>) -> SlotStream
where
    V: Stream<Item = SlotView> + Send + 'static,
{
    // A dropped sender (the service is gone) ends the stream as a shutdown does.
    let stopped = async move {
        let _ = shutdown.wait_for(|stop| *stop).await;
    };
    let stream = views
        .take_until(stopped)
        .map(|view| Ok(convert::slot_status(&view)));
    Box::pin(stream.fuse())
}

#[tonic::async_trait]
impl<C: AgentCore> Agent for Handler<C> {
    async fn report_facts(
        &self,
        request: Request<pb::ReportFactsRequest>,
    ) -> Result<Response<pb::ReportFactsResponse>, Status> {
        let node = Self::authorize(&request, &request.get_ref().node)?;
        let facts =
            wire::facts(request.into_inner().facts).map_err(|e| status::invalid_argument(&e))?;
        let policy = self
            .core
            .report_facts(&node, facts)
            .await
            .map_err(|e| status::from_slots(&e))?;
        Ok(Response::new(pb::ReportFactsResponse {
            policy: policy.as_ref().map(pb::NodePolicy::from),
        }))
    }

    async fn request_slot(
        &self,
        request: Request<pb::RequestSlotRequest>,
    ) -> Result<Response<pb::SlotStatus>, Status> {
        let node = Self::authorize(&request, &request.get_ref().node)?;
        let operation = wire::operation(request.into_inner().operation)
            .map_err(|e| status::invalid_argument(&e))?;
        let view = self
            .core
            .request_slot(&node, operation)
            .await
            .map_err(|e| status::from_slots(&e))?;
        Ok(Response::new(convert::slot_status(&view)))
    }

    type WatchSlotStream = SlotStream;

    async fn watch_slot(
        &self,
        request: Request<pb::WatchSlotRequest>,
    ) -> Result<Response<Self::WatchSlotStream>, Status> {
        let node = Self::authorize(&request, &request.get_ref().node)?;
        let shutdown = self.shutdown.subscribe();
        if *shutdown.borrow() {
            return Err(Status::unavailable("the coordinator is shutting down"));
        }
        let views = self
            .core
            .watch_slot(&node)
            .map_err(|e| status::from_slots(&e))?;
        Ok(Response::new(slot_stream(views, shutdown)))
    }

    async fn renew(
        &self,
        request: Request<pb::RenewRequest>,
    ) -> Result<Response<pb::RenewResponse>, Status> {
        let node = Self::authorize(&request, &request.get_ref().node)?;
        let token = wire::token("token", request.get_ref().token)
            .map_err(|e| status::invalid_argument(&e))?;
        let ttl = self
            .core
            .renew(&node, token)
            .await
            .map_err(|e| status::from_slots(&e))?;
        Ok(Response::new(pb::RenewResponse {
            lease_ttl_seconds: convert::ttl_seconds(ttl),
        }))
    }

    async fn report_progress(
        &self,
        request: Request<pb::ReportProgressRequest>,
    ) -> Result<Response<pb::ReportProgressResponse>, Status> {
        let node = Self::authorize(&request, &request.get_ref().node)?;
        let req = request.into_inner();
        let parsed = wire::token("token", req.token).and_then(|token| {
            let step = wire::text("step", req.step, wire::MAX_IDENT_BYTES)?;
            let message = wire::text("message", req.message, wire::MAX_TEXT_BYTES)?;
            Ok((token, step, message))
        });
        let (token, step, message) = parsed.map_err(|e| status::invalid_argument(&e))?;
        self.core
            .report_progress(&node, token, step, message)
            .await
            .map_err(|e| status::from_slots(&e))?;
        Ok(Response::new(pb::ReportProgressResponse {}))
    }

    async fn complete(
        &self,
        request: Request<pb::CompleteRequest>,
    ) -> Result<Response<pb::SlotStatus>, Status> {
        let node = Self::authorize(&request, &request.get_ref().node)?;
        let req = request.into_inner();
        let parsed =
            wire::token("token", req.token).and_then(|t| Ok((t, convert::completion(req)?)));
        let (token, completion) = parsed.map_err(|e| status::invalid_argument(&e))?;
        let view = self
            .core
            .complete(&node, token, completion)
            .await
            .map_err(|e| status::from_slots(&e))?;
        Ok(Response::new(convert::slot_status(&view)))
    }

    async fn release(
        &self,
        request: Request<pb::ReleaseRequest>,
    ) -> Result<Response<pb::ReleaseResponse>, Status> {
        let node = Self::authorize(&request, &request.get_ref().node)?;
        let req = request.into_inner();
        let release = match req.token {
            0 => Release::Withdraw,
            token => Release::Holder(rota_core::model::FencingToken(token)),
        };
        let reason = wire::text("reason", req.reason, wire::MAX_TEXT_BYTES)
            .map_err(|e| status::invalid_argument(&e))?;
        self.core
            .release(&node, release, reason)
            .await
            .map_err(|e| status::from_slots(&e))?;
        Ok(Response::new(pb::ReleaseResponse {}))
    }
}
